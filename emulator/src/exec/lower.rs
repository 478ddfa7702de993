//! Lowering: turns one parsed kernel ([`ir::Kernel`]) into its executable form ([`Program`]):
//! register indices, immediates and symbol addresses resolved, opcodes decoded into [`Op`],
//! branch targets as instruction indices. Everything that is neither an engine op (memory,
//! control, collectives) nor an ALU op (`alu::lower`) fails the load with an error naming the
//! opcode, the kernel and the PTX line.
use super::memory::{PARAM_WINDOW, SHARED_WINDOW};
use super::{alu_glue, CudaCode, EmuError, EmuResult};
use crate::ptx::ir::{self, AddrBase, Operand, Space, Special, SymbolRef, Type};

/// A source value of an instruction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Src {
    /// A register (index into the flat register file).
    Reg(u32),
    /// A negated predicate register (`!%p`).
    NotReg(u32),
    /// An immediate, in raw bits.
    Imm(u64),
}

/// The state space of a memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemSpace {
    Global,
    Shared,
    Local,
    Param,
    Const,
    Generic,
}

impl MemSpace {
    pub fn name(self) -> &'static str {
        match self {
            MemSpace::Global => "global",
            MemSpace::Shared => "shared",
            MemSpace::Local => "local",
            MemSpace::Param => "param",
            MemSpace::Const => "const",
            MemSpace::Generic => "generic",
        }
    }
}

/// An address: base register (or none) plus a constant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Addr {
    pub base: Option<u32>,
    pub offset: u64,
}

/// Atomic operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomOp {
    Add,
    Min,
    Max,
    And,
    Or,
    Xor,
    Exch,
    Cas,
    Inc,
    Dec,
}

/// The arithmetic type of an atomic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomTy {
    U32,
    S32,
    U64,
    S64,
    F32,
    F64,
}

/// `shfl.sync` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

/// `vote.sync` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteMode {
    All,
    Any,
    Uni,
    Ballot,
}

/// A decoded instruction.
#[derive(Debug)]
pub enum Op {
    /// A per-lane ALU instruction.
    Alu(alu_glue::AluOp),
    /// Read a special register into `dst`.
    Special { dst: u32, sp: Special },
    /// A load of `elems` elements of `size` bytes; `dsts[i]` is `None` for a sink.
    Ld {
        space: MemSpace,
        addr: Addr,
        size: u8,
        signed: bool,
        dsts: Vec<Option<u32>>,
    },
    /// A store of `srcs.len()` elements of `size` bytes.
    St {
        space: MemSpace,
        addr: Addr,
        size: u8,
        srcs: Vec<Src>,
    },
    /// `atom` (with `dst`) and `red` (without).
    Atom {
        space: MemSpace,
        addr: Addr,
        op: AtomOp,
        ty: AtomTy,
        size: u8,
        dst: Option<u32>,
        b: Src,
        c: Option<Src>,
    },
    /// `cvta` (`to`: generic to space) for shared/local/param; global is the identity.
    Cvta {
        dst: u32,
        src: Src,
        space: MemSpace,
        to: bool,
    },
    /// `bra`.
    Bra { target: u32 },
    /// `ret` / `exit`.
    Exit,
    /// `trap`.
    Trap,
    /// `bar.sync` / `barrier.sync`; `arrive`: `bar.arrive` (does not wait).
    Bar {
        id: Src,
        count: Option<Src>,
        arrive: bool,
    },
    /// `bar.warp.sync mask`.
    WarpSync { mask: Src },
    /// `membar`, `fence`: the emulator is sequentially consistent.
    Nop,
    /// `nanosleep`: ends the warp's time slice.
    Nanosleep,
    /// `shfl.sync`.
    Shfl {
        mode: ShflMode,
        dst: Option<u32>,
        pred: Option<u32>,
        a: Src,
        b: Src,
        c: Src,
        mask: Src,
    },
    /// `vote.sync`.
    Vote {
        mode: VoteMode,
        dst: u32,
        a: Src,
        mask: Src,
    },
    /// `activemask.b32`.
    ActiveMask { dst: u32 },
    /// A warp-level matrix instruction (`mma.sync`, `wmma.*`).
    Matrix(Box<super::mma_glue::MatrixOp>),
}

/// One executable instruction.
#[derive(Debug)]
pub struct Inst {
    pub guard: Option<(u32, bool)>,
    pub op: Op,
    pub loc: Option<ir::Loc>,
    /// Where the kernel's own body called the (inlined) function holding `loc`, when the parser
    /// recorded it.
    pub call_site: Option<ir::Loc>,
    pub ptx_line: u32,
    /// The instruction's class and cache operator (for the profile counters).
    pub class: super::profile::InstClass,
    pub cache: super::profile::CacheOp,
}

/// A kernel in executable form.
#[derive(Debug)]
pub struct Program {
    pub name: String,
    pub insts: Vec<Inst>,
    pub nregs: usize,
    /// Bits of each register (`u64::MAX` for 64-bit, 1 for predicates).
    pub reg_mask: Vec<u64>,
    pub reg_names: Vec<String>,
    /// (offset, size, align) of each parameter in the parameter buffer.
    pub params: Vec<(u64, u64, u32)>,
    pub param_bytes: u64,
    /// Static shared bytes; dynamic shared memory starts at `dyn_shared_offset`.
    pub shared_bytes: u64,
    pub dyn_shared_offset: u64,
    pub local_bytes: u64,
    /// `.file` index to its short path (the last components).
    pub files: Vec<(u32, String)>,
    pub max_threads: u32,
    /// Instruction index of each `.sync` matrix op, for statistics.
    pub has_matrix: bool,
}

impl Program {
    /// `file:line` of instruction `pc` (with the PTX line).
    pub fn location(&self, pc: usize) -> String {
        let Some(inst) = self.insts.get(pc) else {
            return "<end of kernel>".into();
        };
        let pos = |l: ir::Loc| {
            let file = self
                .files
                .iter()
                .find(|(i, _)| *i == l.file)
                .map(|(_, p)| p.as_str())
                .unwrap_or("<unknown file>");
            format!("{}:{}", file, l.line)
        };
        match (inst.loc, inst.call_site) {
            (Some(l), Some(c)) if l.line != 0 && c.line != 0 => format!(
                "{} (inlined code at {}) (PTX line {})",
                pos(c),
                pos(l),
                inst.ptx_line
            ),
            (Some(l), _) if l.line != 0 => format!("{} (PTX line {})", pos(l), inst.ptx_line),
            _ => format!("PTX line {}", inst.ptx_line),
        }
    }
}

/// The last two components of a path.
pub fn short_path(p: &str) -> String {
    let parts: Vec<&str> = p.split(['/', '\\']).filter(|s| !s.is_empty()).collect();
    let n = parts.len();
    if n >= 2 {
        format!("{}/{}", parts[n - 2], parts[n - 1])
    } else {
        p.to_string()
    }
}

/// Where each module-scope symbol lives, fixed at load time.
pub struct ModuleLayout {
    /// Device address of each module variable in global/const space (0 for shared ones).
    pub var_addr: Vec<u64>,
}

fn type_mask(t: Type) -> u64 {
    match t {
        Type::Pred => 1,
        _ => {
            let bits = (t.size() * 8) as u32;
            if bits >= 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            }
        }
    }
}

fn is_signed(t: Type) -> bool {
    matches!(t, Type::S8 | Type::S16 | Type::S32 | Type::S64)
}

struct Ctx<'a> {
    module: &'a ir::Module,
    kernel: &'a ir::Kernel,
    layout: &'a ModuleLayout,
    /// Shared offset of each kernel var (shared ones) / local offset (local ones).
    kvar_off: Vec<u64>,
    /// Shared offset of each module var used as shared.
    mvar_shared_off: Vec<Option<u64>>,
    param_off: Vec<u64>,
}

fn err(kernel: &ir::Kernel, inst: &ir::Instruction, code: CudaCode, what: &str) -> EmuError {
    EmuError::new(
        code,
        format!(
            "kernel {}: PTX line {}: `{}`: {}",
            kernel.name, inst.ptx_line, inst.opcode, what
        ),
    )
}

fn align_up(x: u64, a: u64) -> u64 {
    let a = a.max(1);
    x.div_ceil(a) * a
}

fn symbols_in(ops: &[Operand], out: &mut Vec<SymbolRef>) {
    for o in ops {
        match o {
            Operand::Symbol(s) => out.push(*s),
            Operand::Address {
                base: AddrBase::Symbol(s),
                ..
            } => out.push(*s),
            Operand::Vector(v) => symbols_in(v, out),
            _ => {}
        }
    }
}

impl Ctx<'_> {
    fn reg_type(&self, r: ir::RegId) -> Type {
        self.kernel
            .regs
            .get(r.0 as usize)
            .map(|d| d.ty)
            .unwrap_or(Type::B64)
    }

    /// The symbol's address in its own state space, and that space.
    fn sym_addr(&self, s: SymbolRef) -> Option<(MemSpace, u64)> {
        match s {
            SymbolRef::Param(i) => Some((
                MemSpace::Param,
                PARAM_WINDOW + *self.param_off.get(i as usize)?,
            )),
            SymbolRef::KernelVar(i) => {
                let v = self.kernel.vars.get(i as usize)?;
                let off = *self.kvar_off.get(i as usize)?;
                match v.space {
                    Space::Shared => Some((MemSpace::Shared, off)),
                    Space::Local => Some((MemSpace::Local, off)),
                    _ => None,
                }
            }
            SymbolRef::ModuleVar(i) => {
                let v = self.module.vars.get(i as usize)?;
                match v.space {
                    Space::Shared => {
                        Some((MemSpace::Shared, (*self.mvar_shared_off.get(i as usize)?)?))
                    }
                    Space::Global => {
                        Some((MemSpace::Global, *self.layout.var_addr.get(i as usize)?))
                    }
                    Space::Const => Some((MemSpace::Const, *self.layout.var_addr.get(i as usize)?)),
                    _ => None,
                }
            }
        }
    }

    /// A symbol's address as seen by an access in `space` (generic: its generic address).
    fn sym_addr_in(&self, s: SymbolRef, space: MemSpace) -> Option<u64> {
        let (own, a) = self.sym_addr(s)?;
        if space == MemSpace::Generic {
            Some(match own {
                MemSpace::Shared => a + SHARED_WINDOW,
                MemSpace::Local => a + super::memory::LOCAL_WINDOW,
                _ => a,
            })
        } else {
            Some(a)
        }
    }

    fn src(&self, o: &Operand) -> Option<Src> {
        Some(match o {
            Operand::Reg(r) => Src::Reg(r.0),
            Operand::NotReg(r) => Src::NotReg(r.0),
            Operand::Int(v) => Src::Imm(*v as u64),
            Operand::F32(b) => Src::Imm(*b as u64),
            Operand::F64(b) => Src::Imm(*b),
            Operand::Symbol(s) => Src::Imm(self.sym_addr(*s)?.1),
            _ => return None,
        })
    }

    fn addr(&self, o: &Operand, space: MemSpace) -> Option<Addr> {
        match o {
            Operand::Address { base, offset } => Some(match base {
                AddrBase::Reg(r) => Addr {
                    base: Some(r.0),
                    offset: *offset as u64,
                },
                AddrBase::Absolute => Addr {
                    base: None,
                    offset: *offset as u64,
                },
                AddrBase::Symbol(s) => Addr {
                    base: None,
                    offset: self.sym_addr_in(*s, space)?.wrapping_add(*offset as u64),
                },
            }),
            _ => None,
        }
    }
}

fn parse_space(t: &str) -> Option<MemSpace> {
    Some(match t {
        "global" => MemSpace::Global,
        "shared" | "shared::cta" => MemSpace::Shared,
        "local" => MemSpace::Local,
        "param" | "param::entry" | "param::func" => MemSpace::Param,
        "const" => MemSpace::Const,
        _ => return None,
    })
}

/// Lowers `kernel` of `module`.
pub fn lower_kernel(
    module: &ir::Module,
    kernel: &ir::Kernel,
    kernel_index: usize,
    layout: &ModuleLayout,
) -> EmuResult<Program> {
    let call_sites = module.call_sites.get(kernel_index);
    let chains = module.inline_chains.get(kernel_index);
    // Parameters.
    let mut param_off = Vec::new();
    let mut params = Vec::new();
    let mut pb = 0u64;
    for p in &kernel.params {
        let a = u64::from(p.align.max(1)).max(if p.size >= 8 { 8 } else { p.size.max(1) }.min(8));
        let a = if p.align > 0 { u64::from(p.align) } else { a };
        pb = align_up(pb, a);
        param_off.push(pb);
        params.push((pb, p.size, a as u32));
        pb += p.size;
    }
    // Shared layout: the module's shared variables this kernel names, then its own.
    let mut used = Vec::new();
    for inst in &kernel.body {
        symbols_in(&inst.operands, &mut used);
    }
    let mut shared = 0u64;
    let mut dyn_align = 16u64;
    let mut mvar_shared_off = vec![None; module.vars.len()];
    let mut extern_vars = Vec::new();
    for (i, v) in module.vars.iter().enumerate() {
        if v.space != Space::Shared || !used.contains(&SymbolRef::ModuleVar(i as u32)) {
            continue;
        }
        if v.is_extern || v.size == 0 {
            extern_vars.push((true, i));
            dyn_align = dyn_align.max(u64::from(v.align));
            continue;
        }
        shared = align_up(shared, u64::from(v.align.max(1)));
        mvar_shared_off[i] = Some(shared);
        shared += v.size;
    }
    let mut kvar_off = vec![0u64; kernel.vars.len()];
    let mut local = 0u64;
    for (i, v) in kernel.vars.iter().enumerate() {
        match v.space {
            Space::Shared => {
                if v.is_extern || v.size == 0 {
                    extern_vars.push((false, i));
                    dyn_align = dyn_align.max(u64::from(v.align));
                    continue;
                }
                shared = align_up(shared, u64::from(v.align.max(1)));
                kvar_off[i] = shared;
                shared += v.size;
            }
            Space::Local => {
                local = align_up(local, u64::from(v.align.max(1)));
                kvar_off[i] = local;
                local += v.size;
            }
            other => {
                return Err(EmuError::new(
                    CudaCode::NotSupported,
                    format!(
                        "kernel {}: variable {} in {:?} space inside a kernel is not supported",
                        kernel.name, v.name, other
                    ),
                ))
            }
        }
    }
    let dyn_off = align_up(shared, dyn_align);
    for (is_mod, i) in extern_vars {
        if is_mod {
            mvar_shared_off[i] = Some(dyn_off);
        } else {
            kvar_off[i] = dyn_off;
        }
    }
    let ctx = Ctx {
        module,
        kernel,
        layout,
        kvar_off,
        mvar_shared_off,
        param_off,
    };
    let mut insts = Vec::with_capacity(kernel.body.len());
    let mut has_matrix = false;
    for (i, inst) in kernel.body.iter().enumerate() {
        let op = lower_inst(&ctx, inst)?;
        if matches!(op, Op::Matrix(_)) {
            has_matrix = true;
        }
        let guard = inst.guard.map(|(r, neg)| (r.0, neg));
        let (class, cache) = super::profile::classify(&inst.opcode);
        insts.push(Inst {
            class,
            cache,
            guard,
            op,
            loc: inst.loc,
            // The outermost call site (a line of the kernel's own body) when the chain is
            // known, else the immediate one.
            call_site: chains
                .and_then(|c| c.get(i))
                .and_then(|c| c.as_ref())
                .and_then(|c| c.last().copied())
                .or_else(|| call_sites.and_then(|c| c.get(i).copied().flatten())),
            ptx_line: inst.ptx_line,
        });
    }
    let nregs = kernel.regs.len();
    let max_threads = kernel
        .directives
        .reqntid
        .or(kernel.directives.maxntid)
        .map(|d| d[0].max(1) * d[1].max(1) * d[2].max(1))
        .unwrap_or(1024)
        .min(1024);
    Ok(Program {
        name: kernel.name.clone(),
        insts,
        nregs,
        reg_mask: kernel.regs.iter().map(|r| type_mask(r.ty)).collect(),
        reg_names: kernel.regs.iter().map(|r| r.name.clone()).collect(),
        params,
        param_bytes: pb,
        shared_bytes: shared,
        dyn_shared_offset: dyn_off,
        local_bytes: local,
        files: module
            .files
            .iter()
            .map(|(i, p)| (*i, short_path(p)))
            .collect(),
        max_threads,
        has_matrix,
    })
}

fn lower_inst(ctx: &Ctx, inst: &ir::Instruction) -> EmuResult<Op> {
    let k = ctx.kernel;
    let bad = |what: &str| err(k, inst, CudaCode::InvalidPtx, what);
    let unsupported = |what: &str| err(k, inst, CudaCode::NotSupported, what);
    let toks: Vec<&str> = inst.opcode.split('.').collect();
    let ops = &inst.operands;
    let reg = |o: &Operand| -> Option<u32> {
        match o {
            Operand::Reg(r) => Some(r.0),
            _ => None,
        }
    };
    let src = |i: usize| -> EmuResult<Src> {
        ops.get(i)
            .and_then(|o| ctx.src(o))
            .ok_or_else(|| bad(&format!("operand {} is not a register or immediate", i + 1)))
    };
    let addr_at = |i: usize, space: MemSpace| -> EmuResult<Addr> {
        ops.get(i)
            .and_then(|o| ctx.addr(o, space))
            .ok_or_else(|| bad("bad address operand"))
    };
    match toks[0] {
        "ld" | "ldu" | "st" => {
            let is_st = toks[0] == "st";
            let mut space = MemSpace::Generic;
            let mut vec = 1usize;
            let mut ty = None;
            for t in &toks[1..] {
                if let Some(s) = parse_space(t) {
                    space = s;
                } else if let Some(tt) = Type::from_name(t) {
                    ty = Some(tt);
                } else if *t == "v2" {
                    vec = 2;
                } else if *t == "v4" {
                    vec = 4;
                } else if *t == "v8" {
                    vec = 8;
                } else if matches!(
                    *t,
                    "weak"
                        | "volatile"
                        | "relaxed"
                        | "acquire"
                        | "release"
                        | "cta"
                        | "gpu"
                        | "sys"
                        | "ca"
                        | "cg"
                        | "cs"
                        | "lu"
                        | "cv"
                        | "wb"
                        | "wt"
                        | "nc"
                ) || t.starts_with("L1::")
                    || t.starts_with("L2::")
                {
                } else {
                    return Err(unsupported(&format!("unsupported qualifier .{}", t)));
                }
            }
            let ty = ty.ok_or_else(|| bad("no type"))?;
            if ty == Type::Pred {
                return Err(bad("predicate type in a memory access"));
            }
            let size = ty.size() as u8;
            let (data_i, addr_i) = if is_st { (1, 0) } else { (0, 1) };
            let data_op = ops.get(data_i);
            let addr = addr_at(addr_i, space)?;
            let data: Vec<&Operand> = match data_op {
                Some(Operand::Vector(v)) => v.iter().collect(),
                Some(o) => vec![o],
                None => return Err(bad("missing operand")),
            };
            if data.len() != vec {
                return Err(bad("vector length does not match the operand"));
            }
            if is_st {
                if space == MemSpace::Param || space == MemSpace::Const {
                    return Err(unsupported("stores to the param/const space"));
                }
                let srcs = data
                    .iter()
                    .map(|o| ctx.src(o).ok_or_else(|| bad("bad store source")))
                    .collect::<EmuResult<Vec<_>>>()?;
                Ok(Op::St {
                    space,
                    addr,
                    size,
                    srcs,
                })
            } else {
                let dsts = data
                    .iter()
                    .map(|o| match o {
                        Operand::Reg(r) => Ok(Some(r.0)),
                        Operand::Sink => Ok(None),
                        _ => Err(bad("bad load destination")),
                    })
                    .collect::<EmuResult<Vec<_>>>()?;
                Ok(Op::Ld {
                    space,
                    addr,
                    size,
                    signed: is_signed(ty),
                    dsts,
                })
            }
        }
        "atom" | "red" => {
            let is_red = toks[0] == "red";
            let mut space = MemSpace::Generic;
            let mut op = None;
            let mut ty = None;
            for t in &toks[1..] {
                if let Some(s) = parse_space(t) {
                    space = s;
                } else if let Some(tt) = Type::from_name(t) {
                    ty = Some(tt);
                } else if let Some(o) = match *t {
                    "add" => Some(AtomOp::Add),
                    "min" => Some(AtomOp::Min),
                    "max" => Some(AtomOp::Max),
                    "and" => Some(AtomOp::And),
                    "or" => Some(AtomOp::Or),
                    "xor" => Some(AtomOp::Xor),
                    "exch" => Some(AtomOp::Exch),
                    "cas" => Some(AtomOp::Cas),
                    "inc" => Some(AtomOp::Inc),
                    "dec" => Some(AtomOp::Dec),
                    _ => None,
                } {
                    op = Some(o);
                } else if matches!(
                    *t,
                    "relaxed" | "acquire" | "release" | "acq_rel" | "cta" | "gpu" | "sys"
                ) || t.starts_with("L2::")
                {
                } else {
                    return Err(unsupported(&format!("unsupported qualifier .{}", t)));
                }
            }
            let op = op.ok_or_else(|| bad("no atomic operation"))?;
            let ty = ty.ok_or_else(|| bad("no type"))?;
            if !matches!(
                space,
                MemSpace::Global | MemSpace::Shared | MemSpace::Generic
            ) {
                return Err(bad("atomics only on global, shared or generic addresses"));
            }
            let aty = match (ty, op) {
                (Type::F32, AtomOp::Add | AtomOp::Exch | AtomOp::Min | AtomOp::Max) => AtomTy::F32,
                (Type::F64, AtomOp::Add | AtomOp::Exch) => AtomTy::F64,
                (Type::U32 | Type::B32, _) => AtomTy::U32,
                (Type::S32, _) => AtomTy::S32,
                (Type::U64 | Type::B64, _) => AtomTy::U64,
                (Type::S64, _) => AtomTy::S64,
                _ => return Err(unsupported("this atomic type")),
            };
            if matches!(op, AtomOp::Inc | AtomOp::Dec) && aty != AtomTy::U32 {
                return Err(bad("atom.inc/dec need .u32"));
            }
            let base = if is_red { 0 } else { 1 };
            let dst = if is_red {
                None
            } else {
                Some(
                    ops.first()
                        .and_then(reg)
                        .ok_or_else(|| bad("bad destination"))?,
                )
            };
            let addr = addr_at(base, space)?;
            let b = src(base + 1)?;
            let c = if op == AtomOp::Cas {
                Some(src(base + 2)?)
            } else {
                None
            };
            Ok(Op::Atom {
                space,
                addr,
                op,
                ty: aty,
                size: ty.size() as u8,
                dst,
                b,
                c,
            })
        }
        "cvta" => {
            let to = toks.get(1) == Some(&"to");
            let sp = toks.get(if to { 2 } else { 1 }).copied().unwrap_or("");
            let space = parse_space(sp).ok_or_else(|| bad("bad cvta space"))?;
            let dst = ops
                .first()
                .and_then(reg)
                .ok_or_else(|| bad("bad destination"))?;
            let s = src(1)?;
            Ok(Op::Cvta {
                dst,
                src: s,
                space,
                to,
            })
        }
        "mov" if matches!(ops.get(1), Some(Operand::Special(_))) => {
            let dst = ops
                .first()
                .and_then(reg)
                .ok_or_else(|| bad("bad destination"))?;
            let Some(Operand::Special(sp)) = ops.get(1) else {
                return Err(bad("bad special register"));
            };
            Ok(Op::Special { dst, sp: *sp })
        }
        "bra" => {
            if toks.len() > 2 || (toks.len() == 2 && toks[1] != "uni") {
                return Err(unsupported("this branch form"));
            }
            match ops.first() {
                Some(Operand::Label(t)) => Ok(Op::Bra { target: *t }),
                _ => Err(bad("branch target is not a label")),
            }
        }
        "ret" | "exit" => Ok(Op::Exit),
        "trap" => Ok(Op::Trap),
        "bar" | "barrier" => {
            let rest: Vec<&str> = toks[1..]
                .iter()
                .copied()
                .filter(|t| *t != "cta" && *t != "aligned")
                .collect();
            match rest.as_slice() {
                ["warp", "sync"] => Ok(Op::WarpSync { mask: src(0)? }),
                ["sync"] | ["arrive"] => {
                    let id = src(0)?;
                    let count = if ops.len() > 1 { Some(src(1)?) } else { None };
                    Ok(Op::Bar {
                        id,
                        count,
                        arrive: rest[0] == "arrive",
                    })
                }
                _ => Err(unsupported("this barrier form")),
            }
        }
        "membar" | "fence" => Ok(Op::Nop),
        "nanosleep" => Ok(Op::Nanosleep),
        "activemask" => Ok(Op::ActiveMask {
            dst: ops
                .first()
                .and_then(reg)
                .ok_or_else(|| bad("bad destination"))?,
        }),
        "shfl" => {
            if toks.len() != 4 || toks[1] != "sync" || toks[3] != "b32" {
                return Err(unsupported("this shfl form (only shfl.sync.MODE.b32)"));
            }
            let mode = match toks[2] {
                "up" => ShflMode::Up,
                "down" => ShflMode::Down,
                "bfly" => ShflMode::Bfly,
                "idx" => ShflMode::Idx,
                _ => return Err(bad("bad shfl mode")),
            };
            let (dst, pred) = match ops.first() {
                Some(Operand::Reg(r)) => (Some(r.0), None),
                Some(Operand::RegPair(r, p)) => (Some(r.0), Some(p.0)),
                Some(Operand::Sink) => (None, None),
                _ => return Err(bad("bad destination")),
            };
            if ops.len() != 5 {
                return Err(bad("shfl.sync takes d, a, b, c, membermask"));
            }
            Ok(Op::Shfl {
                mode,
                dst,
                pred,
                a: src(1)?,
                b: src(2)?,
                c: src(3)?,
                mask: src(4)?,
            })
        }
        "vote" => {
            if toks.get(1) != Some(&"sync") || toks.len() != 4 {
                return Err(unsupported("this vote form (only vote.sync)"));
            }
            let mode = match (toks[2], toks[3]) {
                ("all", "pred") => VoteMode::All,
                ("any", "pred") => VoteMode::Any,
                ("uni", "pred") => VoteMode::Uni,
                ("ballot", "b32") => VoteMode::Ballot,
                _ => return Err(bad("bad vote mode")),
            };
            let dst = ops
                .first()
                .and_then(reg)
                .ok_or_else(|| bad("bad destination"))?;
            Ok(Op::Vote {
                mode,
                dst,
                a: src(1)?,
                mask: src(2)?,
            })
        }
        "mma" | "wmma" => {
            let m = super::mma_glue::lower(ctx_for_matrix(ctx), inst)
                .map_err(|e| err(k, inst, CudaCode::NotSupported, &e))?;
            Ok(Op::Matrix(Box::new(m)))
        }
        _ => {
            // Symbols used as values become immediates before the ALU sees them.
            let mut resolved = Vec::with_capacity(ops.len());
            for o in ops {
                resolved.push(match o {
                    Operand::Symbol(s) => Operand::Int(
                        ctx.sym_addr(*s).ok_or_else(|| bad("unknown symbol"))?.1 as i64,
                    ),
                    Operand::Special(_) => {
                        return Err(unsupported(
                            "a special register outside `mov` is not supported",
                        ))
                    }
                    o => o.clone(),
                });
            }
            match alu_glue::lower(&inst.opcode, &resolved, |r| ctx.reg_type(r)) {
                Ok(Some(a)) => Ok(Op::Alu(a)),
                Ok(None) => Err(unsupported("unknown or unsupported instruction")),
                Err(e) => Err(bad(&e)),
            }
        }
    }
}

/// What the matrix lowering needs from the lowering context.
pub struct MatrixCtx<'a> {
    pub reg_type: &'a dyn Fn(ir::RegId) -> Type,
    pub addr: &'a dyn Fn(&Operand, MemSpace) -> Option<Addr>,
}

fn ctx_for_matrix<'a>(ctx: &'a Ctx<'a>) -> MatrixCtxOwned<'a> {
    MatrixCtxOwned { ctx }
}

/// A matrix-lowering view of the context.
pub struct MatrixCtxOwned<'a> {
    ctx: &'a Ctx<'a>,
}

impl MatrixCtxOwned<'_> {
    /// The declared type of a register.
    pub fn reg_type(&self, r: ir::RegId) -> Type {
        self.ctx.reg_type(r)
    }
    /// An address operand for an access in `space`.
    pub fn addr(&self, o: &Operand, space: MemSpace) -> Option<Addr> {
        self.ctx.addr(o, space)
    }
    /// A source operand.
    pub fn src(&self, o: &Operand) -> Option<Src> {
        self.ctx.src(o)
    }
}
