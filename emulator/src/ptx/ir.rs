//! The parsed form of a PTX module: the contract between the parser (`ptx::parse`) and the
//! interpreter (`exec`).
//!
//! The parser understands PTX *syntax* only: directives, declarations, operands, labels and
//! `.loc` line info. It does not interpret opcodes: an instruction keeps its full dotted opcode
//! text (`"mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"`) and the interpreter's lowering
//! pass decides what it means, or rejects it with an error naming the form and the kernel.
//!
//! Everything is resolved by the parser: register names become [`RegId`]s (indices into one flat
//! per-thread register file of the kernel, scoped `{ .reg ... }` blocks included: each scope's
//! declarations get fresh ids), labels become instruction indices, and symbol names become
//! [`SymbolRef`]s into the kernel's or module's declarations.

/// A PTX fundamental type, as written in a declaration or an opcode suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    Pred,
    B8,
    B16,
    B32,
    B64,
    B128,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    F16x2,
    Bf16,
    Bf16x2,
    F32,
    F64,
}

impl Type {
    /// Parses a type name without its dot (`"u32"`, `"f16x2"`, `"pred"`).
    pub fn from_name(name: &str) -> Option<Type> {
        Some(match name {
            "pred" => Type::Pred,
            "b8" => Type::B8,
            "b16" => Type::B16,
            "b32" => Type::B32,
            "b64" => Type::B64,
            "b128" => Type::B128,
            "u8" => Type::U8,
            "u16" => Type::U16,
            "u32" => Type::U32,
            "u64" => Type::U64,
            "s8" => Type::S8,
            "s16" => Type::S16,
            "s32" => Type::S32,
            "s64" => Type::S64,
            "f16" => Type::F16,
            "f16x2" => Type::F16x2,
            "bf16" => Type::Bf16,
            "bf16x2" => Type::Bf16x2,
            "f32" => Type::F32,
            "f64" => Type::F64,
            _ => return None,
        })
    }

    /// Size in bytes (a predicate counts as 1).
    pub fn size(self) -> usize {
        match self {
            Type::Pred | Type::B8 | Type::U8 | Type::S8 => 1,
            Type::B16 | Type::U16 | Type::S16 | Type::F16 | Type::Bf16 => 2,
            Type::B32 | Type::U32 | Type::S32 | Type::F32 | Type::F16x2 | Type::Bf16x2 => 4,
            Type::B64 | Type::U64 | Type::S64 | Type::F64 => 8,
            Type::B128 => 16,
        }
    }
}

/// A state space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    Global,
    Shared,
    Local,
    Param,
    Const,
}

/// A register of the kernel: an index into its flat per-thread register file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegId(pub u32);

/// One declared register.
#[derive(Clone, Debug, PartialEq)]
pub struct RegDecl {
    /// The name as written, with its index for ranges (`%r12`, `%tmp`).
    pub name: String,
    pub ty: Type,
}

/// A special (read-only) register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Special {
    /// `%tid.x/y/z`
    Tid(u8),
    /// `%ntid.x/y/z`
    Ntid(u8),
    /// `%ctaid.x/y/z`
    Ctaid(u8),
    /// `%nctaid.x/y/z`
    Nctaid(u8),
    /// `%laneid`
    LaneId,
    /// `%warpid`
    WarpId,
    /// `%nwarpid`
    NWarpId,
    /// `%smid`
    SmId,
    /// `%nsmid`
    NSmId,
    /// `%lanemask_eq`, `_le`, `_lt`, `_ge`, `_gt`
    LaneMaskEq,
    LaneMaskLe,
    LaneMaskLt,
    LaneMaskGe,
    LaneMaskGt,
    /// `%clock`, `%clock64`, `%globaltimer`
    Clock,
    Clock64,
    GlobalTimer,
    /// `%dynamic_smem_size`, `%total_smem_size`
    DynamicSmemSize,
    TotalSmemSize,
}

/// What a symbol name refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SymbolRef {
    /// The kernel's parameter at this index in [`Kernel::params`].
    Param(u32),
    /// The kernel's variable at this index in [`Kernel::vars`] (shared, local, ...).
    KernelVar(u32),
    /// The module's variable at this index in [`Module::vars`] (global, const, shared extern ...).
    ModuleVar(u32),
}

/// The base of an address operand `[base+offset]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AddrBase {
    Reg(RegId),
    Symbol(SymbolRef),
    /// `[0x1234]`: an absolute address (offset holds it).
    Absolute,
}

/// One operand as written.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    Reg(RegId),
    /// A register with a negation (`!%p1`), only in predicate operands of some instructions.
    NotReg(RegId),
    /// `%r1|%p2`: a destination pair (shfl, setp with two destinations).
    RegPair(RegId, RegId),
    /// An integer immediate, sign-extended to 64 bits as written (`-1`, `0x7f`, `30212`).
    Int(i64),
    /// A floating-point immediate in its raw bits: `0f3F800000` gives `F32(0x3F80_0000)`.
    F32(u32),
    /// `0d3FF0000000000000`.
    F64(u64),
    /// A special register.
    Special(Special),
    /// `{a, b, c, d}`; elements are `Reg`, `Int`, `F32` or `Sink`.
    Vector(Vec<Operand>),
    /// `_`, a sink register.
    Sink,
    /// `[base+offset]`.
    Address {
        base: AddrBase,
        offset: i64,
    },
    /// A symbol used as a value (`mov.u64 %rd1, smem;` or `mov.b64 %rd1, kernel_param_0;`):
    /// the symbol's address in its own state space.
    Symbol(SymbolRef),
    /// A branch target: the index into [`Kernel::body`] of the first instruction after the label.
    Label(u32),
}

/// A source position from `.loc file line column`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Loc {
    pub file: u32,
    pub line: u32,
    pub column: u32,
}

/// One instruction.
#[derive(Clone, Debug, PartialEq)]
pub struct Instruction {
    /// `@%p1` (`negate = false`) or `@!%p1` (`negate = true`).
    pub guard: Option<(RegId, bool)>,
    /// The full dotted opcode as written, e.g. `"ld.global.nc.v4.u32"`.
    pub opcode: String,
    pub operands: Vec<Operand>,
    /// The innermost `.loc` in force (its `inlined_at` chain is in [`Module::call_sites`] and
    /// [`Module::inline_chains`]); `None` before any `.loc`.
    pub loc: Option<Loc>,
    /// The source line of the PTX text (1-based), for error messages.
    pub ptx_line: u32,
}

/// A variable declaration (`.shared .align 16 .b8 tile[4096];`, `.global .u32 counter;`).
#[derive(Clone, Debug, PartialEq)]
pub struct VarDecl {
    pub name: String,
    pub space: Space,
    pub ty: Type,
    pub align: u32,
    /// Total size in bytes (element size times the product of the array dimensions); 0 for an
    /// `.extern` unsized array (dynamic shared memory).
    pub size: u64,
    pub is_extern: bool,
    /// Initial bytes (`= {1, 2, 3}`), if any, `size` long.
    pub init: Option<Vec<u8>>,
}

/// A kernel parameter (`.param .align 8 .b8 name[288]`, `.param .u64 name`).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub name: String,
    pub ty: Type,
    pub align: u32,
    /// Size in bytes.
    pub size: u64,
}

/// Performance directives of an entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EntryDirectives {
    pub maxntid: Option<[u32; 3]>,
    pub reqntid: Option<[u32; 3]>,
    pub minnctapersm: Option<u32>,
    pub maxnreg: Option<u32>,
}

/// One `.entry` (a kernel). `.func` bodies are not supported (the parser rejects them with an
/// error naming the function).
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<ParamDecl>,
    /// Every register of every scope, indexed by [`RegId`].
    pub regs: Vec<RegDecl>,
    /// Variables declared inside the body (shared, local).
    pub vars: Vec<VarDecl>,
    pub body: Vec<Instruction>,
    pub directives: EntryDirectives,
    /// The PTX line of the `.entry` directive.
    pub ptx_line: u32,
}

/// A parsed PTX module.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Module {
    /// `.version` as (major, minor).
    pub version: (u32, u32),
    /// `.target` names (`sm_80`).
    pub target: Vec<String>,
    pub address_size: u32,
    /// `.file` index to path.
    pub files: Vec<(u32, String)>,
    /// Module-scope variables.
    pub vars: Vec<VarDecl>,
    pub kernels: Vec<Kernel>,
    /// ADDITION (engine): the `inlined_at F L C` of each instruction's `.loc`, as
    /// `call_sites[kernel index][instruction index]` (`None`: not inlined). Empty when the
    /// parser does not record them; the interpreter then reports the innermost position only.
    pub call_sites: Vec<Vec<Option<Loc>>>,
    /// ADDITION (parser): the whole inlining chain of each instruction's `.loc`, as
    /// `inline_chains[kernel index][instruction index]`, indexed like [`Module::call_sites`]:
    /// the call sites from the innermost (the `.loc`'s own `inlined_at`, the same as
    /// `call_sites`) to the outermost last (a position in the kernel's own body); `None`: not
    /// inlined. nvcc nests inlining (`.loc 1 83 9, ..., inlined_at 1 518 5` inside a function
    /// that is itself inlined: an earlier `.loc 1 518 5, ..., inlined_at 1 574 85`), so the
    /// parser follows each call site to the latest `.loc` at that position in the same kernel.
    /// Chains are shared (`Arc`) by the instructions of one `.loc`. Empty when not recorded.
    pub inline_chains: Vec<Vec<Option<std::sync::Arc<[Loc]>>>>,
}

impl Module {
    /// The path of `.file` number `index`, if declared.
    pub fn file(&self, index: u32) -> Option<&str> {
        self.files
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, p)| p.as_str())
    }
}

/// A parse error: the PTX line and what was wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseError {
    pub line: u32,
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PTX line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}
