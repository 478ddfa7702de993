//! Per-lane, non-memory, non-control PTX instructions: lowering from the parsed form into a
//! pre-decoded [`AluInst`], and evaluation of one lane.
//!
//! Semantics are from NVIDIA's PTX ISA manual (integer, floating-point, comparison, logic,
//! shift, data-movement and conversion instructions).
//!
//! # Register convention
//! Every register holds its value's bits in a `u64`, zero-extended: an `.s32` value -1 is
//! `0x0000_0000_FFFF_FFFF`, an `.f32` is its IEEE bits in the low 32 bits, a predicate is 0 or 1.
//! An instruction writing a type narrower than 64 bits writes its result zero-extended. A source
//! wider than the instruction type is read through its low bits (sign-extended when the
//! instruction type is signed), so immediates (sign-extended to 64 bits by the parser) and
//! registers of a wider declared type both work.
//!
//! # Calling protocol (the engine's side)
//! [`lower`] turns one instruction into an [`AluInst`] (or `Ok(None)` when the opcode belongs to
//! the engine: memory, control flow, collectives, `mov` of special registers). Symbols used as
//! values must already be replaced by [`crate::ptx::ir::Operand::Int`] immediates and special registers are
//! not accepted here. To run one lane, the engine builds `src[i]` = the bits of `inst.src[i]`
//! (the register's value or the immediate), calls [`AluInst::eval`] with a `dst` slice of
//! `inst.dst.len()` entries, and writes `dst[i]` to `inst.dst[i]` where that is `Some` (a `None`
//! is a sink `_`). A negated predicate source (`!%p`) is recorded in [`AluInst::negate`] and
//! applied inside `eval`, so `src[i]` is always the plain register value.
//!
//! [`AluInst::eval_warp`] does the same for all 32 lanes in one call (sources as `[u64; 32]`
//! lane arrays, which the engine's lane-major register file provides by copying): the decode is
//! hoisted out of the lane loop and the frequent forms run as tight loops, several times faster
//! than 32 calls of `eval`. A test checks the two agree lane by lane.
//!
//! # Floating point
//! IEEE results as written (`.rn` default where the manual makes rounding optional for
//! arithmetic, `.rz/.rm/.rp` through [`super::float`]); `fma` and `mad.f32` are fused; `.ftz`
//! flushes f32 subnormal inputs and results to zero of the same sign; `.sat` clamps to [0, 1]
//! (NaN gives +0). NaN results are the canonical NaN (`0x7FFF_FFFF`, f64 `0x7FFF_FFFF_FFFF_FFFF`).
//! `.approx` and `.full` forms (`div`, `rcp`, `sqrt`, `rsqrt`, `ex2`, `lg2`, `sin`, `cos`,
//! `tanh`) are computed in f64 and rounded once to f32, which is within (far inside) the
//! manual's documented error bounds; the documented special behaviour of `div.approx` for huge
//! divisors (2^126 < |b| < 2^128 gives 0, or NaN for an infinite dividend) is reproduced.
//!
//! # Integer corner cases
//! Shift amounts at or beyond the width clamp to the width (manual: "Shift amounts greater
//! than the register width N are clamped to N"). Division by zero is undefined in the manual;
//! here the quotient is all ones and the remainder is the dividend. `MIN / -1` wraps to `MIN`.
use super::float::{self, Fmt, Rnd};
use crate::ptx::ir::{Operand, RegId, Type};

/// A source of an ALU instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    /// A register's value.
    Reg(RegId),
    /// An immediate in the register convention (raw bits; float immediates already converted
    /// to the instruction's float type).
    Imm(u64),
}

/// A lowered ALU instruction.
#[derive(Clone, Debug, PartialEq)]
pub struct AluInst {
    /// What to compute.
    pub op: AluOp,
    /// Destinations, in the order of `eval`'s `dst`; `None` for a sink `_`.
    pub dst: Vec<Option<RegId>>,
    /// Sources, in the order of `eval`'s `src`.
    pub src: Vec<Src>,
    /// Bit i set: source i is a negated predicate (`!%p`), inverted inside `eval`.
    pub negate: u8,
}

/// Integer comparison / float comparison operators of `setp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// Unsigned variants (`lo ls hi hs`).
    Lo,
    Ls,
    Hi,
    Hs,
    /// Unordered float variants.
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

/// `setp` operand types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpTy {
    Int { w: u8, signed: bool },
    F32,
    F64,
}

/// Boolean combination of `setp.CmpOp.BoolOp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoolOp {
    And,
    Or,
    Xor,
}

/// `prmt` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrmtMode {
    Generic,
    F4e,
    B4e,
    Rc8,
    Ecl,
    Ecr,
    Rc16,
}

/// Floating-point operations (f32 or f64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FOp {
    Add,
    Sub,
    Mul,
    Fma,
    /// IEEE division (`div.rn/rz/rm/rp`).
    Div,
    /// `div.full.f32`: a full-range approximation with at most 2 ulp error per the manual;
    /// correctly rounded here.
    DivFull,
    /// `div.approx.f32`: correctly rounded here for |b| <= 2^126, with the manual's behaviour
    /// for 2^126 < |b| < 2^128 (0, or NaN for an infinite dividend).
    DivApprox,
    Rcp,
    RcpApprox,
    Sqrt,
    SqrtApprox,
    RsqrtApprox,
    Ex2Approx,
    Lg2Approx,
    SinApprox,
    CosApprox,
    TanhApprox,
    Abs,
    Neg,
    Min {
        nan: bool,
    },
    Max {
        nan: bool,
    },
    /// `copysign d, a, b`: b's magnitude with a's sign.
    Copysign,
}

/// Half-precision operations (always round-to-nearest-even: `.rn` is the only rounding the
/// manual offers for them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HOp {
    Add,
    Sub,
    Mul,
    Fma,
    Neg,
    Abs,
    Min { nan: bool },
    Max { nan: bool },
}

/// `testp` properties.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestP {
    Finite,
    Infinite,
    Number,
    NotANumber,
    Normal,
    Subnormal,
}

/// A numeric type of `cvt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumTy {
    Int { w: u8, signed: bool },
    F16,
    Bf16,
    F32,
    F64,
}

/// Integer rounding of `cvt` (`.rni .rzi .rmi .rpi`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IRnd {
    Rni,
    Rzi,
    Rmi,
    Rpi,
}

/// A decoded `cvt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cvt {
    pub from: NumTy,
    pub to: NumTy,
    pub frnd: Rnd,
    pub irnd: Option<IRnd>,
    pub ftz: bool,
    pub sat: bool,
    pub relu: bool,
    pub satfinite: bool,
    /// `.f16x2`/`.bf16x2` destination from two f32 sources: `d = cvt(a) << 16 | cvt(b)`.
    pub pack2: bool,
}

/// The pre-decoded operation. `w` is the operand width in bits (1 for predicates), `s` whether
/// the instruction type is signed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AluOp {
    Mov {
        w: u8,
    },
    /// `mov.bN d, {e0, e1, ..}`: element 0 in the low bits.
    Pack {
        elem: u8,
        n: u8,
    },
    /// `mov.bN {e0, e1, ..}, a`.
    Unpack {
        elem: u8,
        n: u8,
    },
    Add {
        w: u8,
    },
    Sub {
        w: u8,
    },
    AddSat,
    SubSat,
    MulLo {
        w: u8,
    },
    MulHi {
        w: u8,
        s: bool,
    },
    MulWide {
        w: u8,
        s: bool,
    },
    MadLo {
        w: u8,
    },
    MadHi {
        w: u8,
        s: bool,
    },
    MadWide {
        w: u8,
        s: bool,
    },
    Mul24Lo {
        s: bool,
    },
    Mul24Hi {
        s: bool,
    },
    Mad24Lo {
        s: bool,
    },
    Sad {
        w: u8,
        s: bool,
    },
    Div {
        w: u8,
        s: bool,
    },
    Rem {
        w: u8,
        s: bool,
    },
    Abs {
        w: u8,
    },
    Neg {
        w: u8,
    },
    Min {
        w: u8,
        s: bool,
    },
    Max {
        w: u8,
        s: bool,
    },
    And {
        w: u8,
    },
    Or {
        w: u8,
    },
    Xor {
        w: u8,
    },
    Not {
        w: u8,
    },
    Cnot {
        w: u8,
    },
    Shl {
        w: u8,
    },
    Shr {
        w: u8,
        s: bool,
    },
    Popc {
        w: u8,
    },
    Clz {
        w: u8,
    },
    Brev {
        w: u8,
    },
    Bfind {
        w: u8,
        s: bool,
        shiftamt: bool,
    },
    Bfe {
        w: u8,
        s: bool,
    },
    Bfi {
        w: u8,
    },
    Prmt {
        mode: PrmtMode,
    },
    Lop3,
    Shf {
        left: bool,
        clamp: bool,
    },
    Selp {
        w: u8,
    },
    Setp {
        cmp: Cmp,
        ty: CmpTy,
        ftz: bool,
        bop: Option<BoolOp>,
    },
    F32 {
        op: FOp,
        rnd: Rnd,
        ftz: bool,
        sat: bool,
    },
    F64 {
        op: FOp,
        rnd: Rnd,
    },
    /// f16/bf16 arithmetic (`add sub mul fma neg abs min max`), packed `x2` forms applying
    /// the operation to both halves independently.
    Half {
        op: HOp,
        bf: bool,
        x2: bool,
        ftz: bool,
        sat: bool,
        relu: bool,
    },
    Testp {
        prop: TestP,
        f64: bool,
    },
    Cvt(Cvt),
}

#[inline(always)]
fn mask(w: u8) -> u64 {
    if w >= 64 {
        u64::MAX
    } else {
        (1u64 << w) - 1
    }
}

/// Sign-extends the low `w` bits.
#[inline(always)]
fn sx(v: u64, w: u8) -> i64 {
    if w >= 64 {
        v as i64
    } else {
        let sh = 64 - w as u32;
        ((v << sh) as i64) >> sh
    }
}

/// The value of the low `w` bits as i128, signed or not.
#[inline(always)]
fn ival(v: u64, w: u8, s: bool) -> i128 {
    if s {
        sx(v, w) as i128
    } else {
        (v & mask(w)) as i128
    }
}

#[inline(always)]
fn f32_of(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

#[inline(always)]
fn f64_of(v: u64) -> f64 {
    f64::from_bits(v)
}

#[inline(always)]
fn b32(x: f32) -> u64 {
    x.to_bits() as u64
}

impl AluInst {
    /// Evaluates one lane: `src[i]` holds the bits of source i, `dst[i]` receives destination i.
    #[inline]
    pub fn eval(&self, src: &[u64], dst: &mut [u64]) {
        if self.negate != 0 {
            let mut s = [0u64; 8];
            for (i, v) in src.iter().enumerate().take(8) {
                s[i] = if self.negate >> i & 1 != 0 {
                    (*v == 0) as u64
                } else {
                    *v
                };
            }
            self.op.eval(&s[..src.len().min(8)], dst);
        } else {
            self.op.eval(src, dst);
        }
    }

    /// Evaluates all 32 lanes at once (the decode is hoisted out of the lane loop, and the
    /// common forms run as tight loops): `src[i][lane]` holds source i of `lane` (an immediate
    /// broadcast to all lanes), `dst[i][lane]` receives destination i. Every lane is computed;
    /// the caller writes back only the active ones (ALU ops are pure, so inactive lanes'
    /// garbage results are harmless). `src` is taken mutably because negated predicate sources
    /// are inverted in place. `src.len()` must be `self.src.len()` and `dst.len()`
    /// `self.dst.len()`.
    pub fn eval_warp(&self, src: &mut [[u64; 32]], dst: &mut [[u64; 32]]) {
        if self.negate != 0 {
            for (i, s) in src.iter_mut().enumerate() {
                if self.negate >> i & 1 != 0 {
                    for v in s.iter_mut() {
                        *v = (*v == 0) as u64;
                    }
                }
            }
        }
        macro_rules! lanes1 {
            (|$a:ident| $e:expr) => {{
                let (s0, d0) = (&src[0], &mut dst[0]);
                for l in 0..32 {
                    let $a = s0[l];
                    d0[l] = $e;
                }
            }};
        }
        macro_rules! lanes2 {
            (|$a:ident, $b:ident| $e:expr) => {{
                let (s0, s1, d0) = (&src[0], &src[1], &mut dst[0]);
                for l in 0..32 {
                    let ($a, $b) = (s0[l], s1[l]);
                    d0[l] = $e;
                }
            }};
        }
        macro_rules! lanes3 {
            (|$a:ident, $b:ident, $c:ident| $e:expr) => {{
                let (s0, s1, s2, d0) = (&src[0], &src[1], &src[2], &mut dst[0]);
                for l in 0..32 {
                    let ($a, $b, $c) = (s0[l], s1[l], s2[l]);
                    d0[l] = $e;
                }
            }};
        }
        match self.op {
            AluOp::Mov { w } => {
                let m = mask(w);
                lanes1!(|a| a & m)
            }
            AluOp::Add { w } => {
                let m = mask(w);
                lanes2!(|a, b| a.wrapping_add(b) & m)
            }
            AluOp::Sub { w } => {
                let m = mask(w);
                lanes2!(|a, b| a.wrapping_sub(b) & m)
            }
            AluOp::MulLo { w } => {
                let m = mask(w);
                lanes2!(|a, b| a.wrapping_mul(b) & m)
            }
            AluOp::MadLo { w } => {
                let m = mask(w);
                lanes3!(|a, b, c| a.wrapping_mul(b).wrapping_add(c) & m)
            }
            AluOp::MulWide { w: 32, s: true } => {
                lanes2!(|a, b| ((a as i32 as i64) * (b as i32 as i64)) as u64)
            }
            AluOp::MulWide { w: 32, s: false } => {
                lanes2!(|a, b| (a & 0xFFFF_FFFF) * (b & 0xFFFF_FFFF))
            }
            AluOp::And { w } => {
                let m = mask(w);
                lanes2!(|a, b| a & b & m)
            }
            AluOp::Or { w } => {
                let m = mask(w);
                lanes2!(|a, b| (a | b) & m)
            }
            AluOp::Xor { w } => {
                let m = mask(w);
                lanes2!(|a, b| (a ^ b) & m)
            }
            AluOp::Shl { w } => {
                let m = mask(w);
                lanes2!(|a, b| if b as u32 >= w as u32 {
                    0
                } else {
                    (a << (b as u32)) & m
                })
            }
            AluOp::Selp { w } => {
                let m = mask(w);
                lanes3!(|a, b, c| if c != 0 { a & m } else { b & m })
            }
            AluOp::Setp {
                cmp,
                ty,
                ftz,
                bop: None,
            } => {
                let has_q = dst.len() > 1;
                for l in 0..32 {
                    let t = compare(cmp, ty, ftz, src[0][l], src[1][l]);
                    dst[0][l] = t as u64;
                    if has_q {
                        dst[1][l] = !t as u64;
                    }
                }
            }
            AluOp::F32 {
                op: FOp::Fma,
                rnd: Rnd::Rn,
                ftz: false,
                sat: false,
            } => lanes3!(|a, b, c| b32(float::canon32(float::fma32(
                f32_of(a),
                f32_of(b),
                f32_of(c),
                Rnd::Rn
            )))),
            AluOp::F32 {
                op: FOp::Add,
                rnd: Rnd::Rn,
                ftz: false,
                sat: false,
            } => lanes2!(|a, b| b32(float::canon32(f32_of(a) + f32_of(b)))),
            AluOp::F32 {
                op: FOp::Mul,
                rnd: Rnd::Rn,
                ftz: false,
                sat: false,
            } => lanes2!(|a, b| b32(float::canon32(f32_of(a) * f32_of(b)))),
            AluOp::Cvt(c) if !c.pack2 => {
                let plain = !c.ftz && !c.sat && !c.relu && !c.satfinite && c.irnd.is_none();
                match (c.from, c.to) {
                    (NumTy::F32, NumTy::F16) if plain && c.frnd == Rnd::Rn => {
                        lanes1!(|a| float::f32_to_f16_rn(f32_of(a)) as u64)
                    }
                    (NumTy::F32, NumTy::Bf16) if plain && c.frnd == Rnd::Rn => {
                        lanes1!(|a| float::f32_to_bf16_rn(f32_of(a)) as u64)
                    }
                    (NumTy::F16, NumTy::F32) if plain => {
                        lanes1!(|a| b32(float::f16_to_f32(a as u16)))
                    }
                    (NumTy::Bf16, NumTy::F32) if plain => {
                        lanes1!(|a| b32(float::bf16_to_f32(a as u16)))
                    }
                    (
                        NumTy::Int {
                            w: fw,
                            signed: true,
                        },
                        NumTy::Int { w: tw, .. },
                    ) if !c.sat => {
                        let m = mask(tw);
                        lanes1!(|a| sx(a, fw) as u64 & m)
                    }
                    (
                        NumTy::Int {
                            w: fw,
                            signed: false,
                        },
                        NumTy::Int { w: tw, .. },
                    ) if !c.sat => {
                        let m = mask(fw) & mask(tw);
                        lanes1!(|a| a & m)
                    }
                    (NumTy::Int { w, signed }, NumTy::F32)
                        if w <= 32 && plain && c.frnd == Rnd::Rn =>
                    {
                        lanes1!(|a| b32(ival(a, w, signed) as f64 as f32))
                    }
                    _ => lanes1!(|a| cvt(&c, a)),
                }
            }
            op => {
                let (ns, nd) = (src.len().min(8), dst.len().min(8));
                let mut s = [0u64; 8];
                let mut d = [0u64; 8];
                for l in 0..32 {
                    for i in 0..ns {
                        s[i] = src[i][l];
                    }
                    op.eval(&s[..ns], &mut d[..nd]);
                    for i in 0..nd {
                        dst[i][l] = d[i];
                    }
                }
            }
        }
    }
}

impl AluOp {
    /// Evaluates one lane (sources already un-negated).
    #[inline]
    pub fn eval(&self, src: &[u64], dst: &mut [u64]) {
        use AluOp::*;
        let r = match *self {
            Mov { w } => src[0] & mask(w),
            Pack { elem, n } => src[..n as usize]
                .iter()
                .enumerate()
                .fold(0u64, |v, (i, x)| {
                    v | (x & mask(elem)) << (i as u32 * elem as u32)
                }),
            Unpack { elem, n } => {
                for (i, d) in dst[..n as usize].iter_mut().enumerate() {
                    *d = (src[0] >> (i as u32 * elem as u32)) & mask(elem);
                }
                return;
            }
            Add { w } => src[0].wrapping_add(src[1]) & mask(w),
            Sub { w } => src[0].wrapping_sub(src[1]) & mask(w),
            AddSat => {
                (sx(src[0], 32) + sx(src[1], 32)).clamp(i32::MIN as i64, i32::MAX as i64) as u64
                    & mask(32)
            }
            SubSat => {
                (sx(src[0], 32) - sx(src[1], 32)).clamp(i32::MIN as i64, i32::MAX as i64) as u64
                    & mask(32)
            }
            MulLo { w } => src[0].wrapping_mul(src[1]) & mask(w),
            MulHi { w, s } => {
                let p = ival(src[0], w, s).wrapping_mul(ival(src[1], w, s));
                ((p >> w) as u64) & mask(w)
            }
            MulWide { w, s } => {
                let p = ival(src[0], w, s) * ival(src[1], w, s);
                (p as u64) & mask(2 * w)
            }
            MadLo { w } => src[0].wrapping_mul(src[1]).wrapping_add(src[2]) & mask(w),
            MadHi { w, s } => {
                let p = ival(src[0], w, s).wrapping_mul(ival(src[1], w, s));
                ((p >> w) as u64).wrapping_add(src[2]) & mask(w)
            }
            MadWide { w, s } => {
                let p = ival(src[0], w, s) * ival(src[1], w, s);
                (p as u64).wrapping_add(src[2]) & mask(2 * w)
            }
            Mul24Lo { s } => {
                let p = ival(src[0], 24, s) * ival(src[1], 24, s);
                (p as u64) & mask(32)
            }
            Mul24Hi { s } => {
                // The high 32 bits of the 48-bit product.
                let p = ival(src[0], 24, s) * ival(src[1], 24, s);
                ((p >> 16) as u64) & mask(32)
            }
            Mad24Lo { s } => {
                let p = ival(src[0], 24, s) * ival(src[1], 24, s);
                (p as u64).wrapping_add(src[2]) & mask(32)
            }
            Sad { w, s } => {
                let (a, b) = (ival(src[0], w, s), ival(src[1], w, s));
                ((a - b).unsigned_abs() as u64).wrapping_add(src[2]) & mask(w)
            }
            Div { w, s } => {
                let (a, b) = (ival(src[0], w, s), ival(src[1], w, s));
                if b == 0 {
                    mask(w)
                } else {
                    (a / b) as u64 & mask(w) // i128: MIN/-1 does not overflow, wraps on mask
                }
            }
            Rem { w, s } => {
                let (a, b) = (ival(src[0], w, s), ival(src[1], w, s));
                if b == 0 {
                    a as u64 & mask(w)
                } else {
                    (a % b) as u64 & mask(w)
                }
            }
            Abs { w } => (sx(src[0], w).wrapping_abs() as u64) & mask(w),
            Neg { w } => (src[0].wrapping_neg()) & mask(w),
            Min { w, s } => {
                let (a, b) = (ival(src[0], w, s), ival(src[1], w, s));
                a.min(b) as u64 & mask(w)
            }
            Max { w, s } => {
                let (a, b) = (ival(src[0], w, s), ival(src[1], w, s));
                a.max(b) as u64 & mask(w)
            }
            And { w } => src[0] & src[1] & mask(w),
            Or { w } => (src[0] | src[1]) & mask(w),
            Xor { w } => (src[0] ^ src[1]) & mask(w),
            Not { w } => !src[0] & mask(w),
            Cnot { w } => (src[0] & mask(w) == 0) as u64,
            Shl { w } => {
                let n = src[1] as u32;
                if n >= w as u32 {
                    0
                } else {
                    (src[0] << n) & mask(w)
                }
            }
            Shr { w, s } => {
                let n = (src[1] as u32).min(w as u32);
                if s {
                    let v = sx(src[0], w);
                    ((v >> n.min(63)) as u64) & mask(w)
                } else if n >= w as u32 {
                    0
                } else {
                    (src[0] & mask(w)) >> n
                }
            }
            Popc { w } => (src[0] & mask(w)).count_ones() as u64,
            Clz { w } => {
                let v = src[0] & mask(w);
                (v.leading_zeros() - (64 - w as u32)) as u64
            }
            Brev { w } => (src[0] & mask(w)).reverse_bits() >> (64 - w as u32),
            Bfind { w, s, shiftamt } => {
                let mut a = src[0] & mask(w);
                if s && (a >> (w - 1)) & 1 == 1 {
                    a = !a & mask(w);
                }
                if a == 0 {
                    0xFFFF_FFFF
                } else {
                    let d = 63 - a.leading_zeros() as u64;
                    if shiftamt {
                        (w as u64 - 1) - d
                    } else {
                        d
                    }
                }
            }
            Bfe { w, s } => {
                let a = src[0] & mask(w);
                let pos = (src[1] & 0xff) as u32;
                let len = (src[2] & 0xff) as u32;
                let msb = w as u32 - 1;
                let sbit = if !s || len == 0 {
                    0
                } else {
                    (a >> (pos + len - 1).min(msb)) & 1
                };
                let mut d = 0u64;
                for i in 0..=msb {
                    let bit = if i < len && pos + i <= msb {
                        (a >> (pos + i)) & 1
                    } else {
                        sbit
                    };
                    d |= bit << i;
                }
                d
            }
            Bfi { w } => {
                let (a, mut f) = (src[0], src[1] & mask(w));
                let pos = (src[2] & 0xff) as u32;
                let len = (src[3] & 0xff) as u32;
                let msb = w as u32 - 1;
                let mut i = 0;
                while i < len && pos + i <= msb {
                    let bit = (a >> i) & 1;
                    f = (f & !(1 << (pos + i))) | (bit << (pos + i));
                    i += 1;
                }
                f
            }
            Prmt { mode } => prmt(src[0] as u32, src[1] as u32, src[2] as u32, mode) as u64,
            Lop3 => {
                let (a, b, c, lut) = (src[0], src[1], src[2], src[3] as u8);
                let mut d = 0u64;
                for i in 0..8u8 {
                    if lut >> i & 1 == 1 {
                        let ma = if i & 4 != 0 { a } else { !a };
                        let mb = if i & 2 != 0 { b } else { !b };
                        let mc = if i & 1 != 0 { c } else { !c };
                        d |= ma & mb & mc;
                    }
                }
                d & mask(32)
            }
            Shf { left, clamp } => {
                let (a, b, c) = (src[0] & mask(32), src[1] & mask(32), src[2] as u32);
                let n = if clamp { c.min(32) } else { c & 31 };
                let cat = (b << 32) | a;
                if left {
                    ((cat << n) >> 32) & mask(32)
                } else {
                    (cat >> n) & mask(32)
                }
            }
            Selp { w } => {
                if src[2] != 0 {
                    src[0] & mask(w)
                } else {
                    src[1] & mask(w)
                }
            }
            Setp { cmp, ty, ftz, bop } => {
                let t = compare(cmp, ty, ftz, src[0], src[1]);
                let (p, q) = match bop {
                    None => (t, !t),
                    Some(op) => {
                        let c = src[2] != 0;
                        let f = |x: bool| match op {
                            BoolOp::And => x & c,
                            BoolOp::Or => x | c,
                            BoolOp::Xor => x ^ c,
                        };
                        (f(t), f(!t))
                    }
                };
                dst[0] = p as u64;
                if dst.len() > 1 {
                    dst[1] = q as u64;
                }
                return;
            }
            F32 { op, rnd, ftz, sat } => b32(eval_f32(op, rnd, ftz, sat, src)),
            F64 { op, rnd } => eval_f64(op, rnd, src).to_bits(),
            Half {
                op,
                bf,
                x2,
                ftz,
                sat,
                relu,
            } => {
                let h = |sh: u32| {
                    let g = |i: usize| ((src[i] >> sh) & 0xFFFF) as u16;
                    let b = if src.len() > 1 { g(1) } else { 0 };
                    let c = if src.len() > 2 { g(2) } else { 0 };
                    eval_half(op, bf, ftz, sat, relu, g(0), b, c) as u64
                };
                if x2 {
                    h(0) | (h(16) << 16)
                } else {
                    h(0)
                }
            }
            Testp { prop, f64 } => {
                let x = if f64 {
                    f64_of(src[0])
                } else {
                    f32_of(src[0]) as f64
                };
                let sub = if f64 {
                    x.is_subnormal()
                } else {
                    f32_of(src[0]).is_subnormal()
                };
                (match prop {
                    TestP::Finite => x.is_finite(),
                    TestP::Infinite => x.is_infinite(),
                    TestP::Number => !x.is_nan(),
                    TestP::NotANumber => x.is_nan(),
                    TestP::Normal => x.is_finite() && !sub,
                    TestP::Subnormal => sub,
                }) as u64
            }
            Cvt(c) => {
                if c.pack2 {
                    (cvt(&c, src[0]) << 16) | cvt(&c, src[1])
                } else {
                    cvt(&c, src[0])
                }
            }
        };
        dst[0] = r;
    }
}

/// `prmt.b32{.mode} d, a, b, c` per the manual's semantics and mode table.
pub fn prmt(a: u32, b: u32, c: u32, mode: PrmtMode) -> u32 {
    let tmp = ((b as u64) << 32) | a as u64;
    let byte = |i: u32| ((tmp >> (8 * (i & 7))) & 0xff) as u32;
    // For the modes, the byte indices of (d.b0, d.b1, d.b2, d.b3) by c[1:0].
    let sel: [u32; 4] = match mode {
        PrmtMode::Generic => {
            let mut d = 0u32;
            for k in 0..4 {
                let ctl = (c >> (4 * k)) & 0xf;
                let v = byte(ctl & 7);
                let v = if ctl & 8 != 0 {
                    if v & 0x80 != 0 {
                        0xff
                    } else {
                        0
                    }
                } else {
                    v
                };
                d |= v << (8 * k);
            }
            return d;
        }
        PrmtMode::F4e => {
            let s = c & 3;
            [s, s + 1, s + 2, s + 3]
        }
        PrmtMode::B4e => match c & 3 {
            0 => [0, 7, 6, 5],
            1 => [1, 0, 7, 6],
            2 => [2, 1, 0, 7],
            _ => [3, 2, 1, 0],
        },
        PrmtMode::Rc8 => {
            let s = c & 3;
            [s, s, s, s]
        }
        PrmtMode::Ecl => match c & 3 {
            0 => [0, 1, 2, 3],
            1 => [1, 1, 2, 3],
            2 => [2, 2, 2, 3],
            _ => [3, 3, 3, 3],
        },
        PrmtMode::Ecr => match c & 3 {
            0 => [0, 0, 0, 0],
            1 => [0, 1, 1, 1],
            2 => [0, 1, 2, 2],
            _ => [0, 1, 2, 3],
        },
        PrmtMode::Rc16 => match c & 1 {
            0 => [0, 1, 0, 1],
            _ => [2, 3, 2, 3],
        },
    };
    sel.iter()
        .enumerate()
        .fold(0, |d, (k, &i)| d | (byte(i) << (8 * k)))
}

#[inline]
fn compare(cmp: Cmp, ty: CmpTy, ftz: bool, a: u64, b: u64) -> bool {
    match ty {
        CmpTy::Int { w, signed } => {
            let (sa, sb) = (ival(a, w, signed), ival(b, w, signed));
            let (ua, ub) = (a & mask(w), b & mask(w));
            match cmp {
                Cmp::Eq => ua == ub,
                Cmp::Ne => ua != ub,
                Cmp::Lt => sa < sb,
                Cmp::Le => sa <= sb,
                Cmp::Gt => sa > sb,
                Cmp::Ge => sa >= sb,
                Cmp::Lo => ua < ub,
                Cmp::Ls => ua <= ub,
                Cmp::Hi => ua > ub,
                Cmp::Hs => ua >= ub,
                // Rejected at lowering.
                _ => false,
            }
        }
        CmpTy::F32 => {
            let (mut x, mut y) = (f32_of(a), f32_of(b));
            if ftz {
                x = float::ftz32(x);
                y = float::ftz32(y);
            }
            fcmp(cmp, x as f64, y as f64)
        }
        CmpTy::F64 => fcmp(cmp, f64_of(a), f64_of(b)),
    }
}

#[inline]
fn fcmp(cmp: Cmp, x: f64, y: f64) -> bool {
    let un = x.is_nan() || y.is_nan();
    match cmp {
        Cmp::Eq => x == y,
        Cmp::Ne => !un && x != y,
        Cmp::Lt => x < y,
        Cmp::Le => x <= y,
        Cmp::Gt => x > y,
        Cmp::Ge => x >= y,
        Cmp::Equ => un || x == y,
        Cmp::Neu => un || x != y,
        Cmp::Ltu => un || x < y,
        Cmp::Leu => un || x <= y,
        Cmp::Gtu => un || x > y,
        Cmp::Geu => un || x >= y,
        Cmp::Num => !un,
        Cmp::Nan => un,
        // Unsigned integer forms are rejected for floats at lowering.
        _ => false,
    }
}

/// min/max with the manual's NaN rules: a NaN input is ignored unless both are NaN (or `.NaN`
/// is given, when any NaN gives the canonical NaN); -0 is less than +0.
#[inline]
fn fminmax(a: f64, b: f64, max: bool, nan: bool) -> f64 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => return f64::NAN,
        (true, false) | (false, true) if nan => return f64::NAN,
        (true, false) => return b,
        (false, true) => return a,
        _ => {}
    }
    if a == b {
        // Equal values, possibly zeros of different signs.
        let neg = if max {
            a.is_sign_negative() && b.is_sign_negative()
        } else {
            a.is_sign_negative() || b.is_sign_negative()
        };
        return if neg { -a.abs() } else { a.abs() };
    }
    if (a > b) == max {
        a
    } else {
        b
    }
}

#[inline]
fn eval_f32(op: FOp, rnd: Rnd, ftz: bool, sat: bool, src: &[u64]) -> f32 {
    let rd = |i: usize| {
        let x = f32_of(src[i]);
        if ftz {
            float::ftz32(x)
        } else {
            x
        }
    };
    let a = rd(0);
    let r = match op {
        FOp::Add => float::add32(a, rd(1), rnd),
        FOp::Sub => float::add32(a, -rd(1), rnd),
        FOp::Mul => float::mul32(a, rd(1), rnd),
        FOp::Fma => float::fma32(a, rd(1), rd(2), rnd),
        FOp::Div => float::div32(a, rd(1), rnd),
        FOp::DivApprox => {
            let b = rd(1);
            let big = b.is_finite() && b.abs() > 2f32.powi(126);
            if big {
                if a.is_infinite() {
                    float::F32_NAN
                } else {
                    0.0
                }
            } else {
                float::div32(a, b, Rnd::Rn)
            }
        }
        FOp::DivFull => float::div32(a, rd(1), Rnd::Rn),
        FOp::Rcp => float::div32(1.0, a, rnd),
        FOp::RcpApprox => float::div32(1.0, a, Rnd::Rn),
        FOp::Sqrt => float::sqrt32(a, rnd),
        FOp::SqrtApprox => float::sqrt32(a, Rnd::Rn),
        FOp::RsqrtApprox => (1.0 / (a as f64).sqrt()) as f32,
        FOp::Ex2Approx => (a as f64).exp2() as f32,
        FOp::Lg2Approx => (a as f64).log2() as f32,
        FOp::SinApprox => (a as f64).sin() as f32,
        FOp::CosApprox => (a as f64).cos() as f32,
        FOp::TanhApprox => (a as f64).tanh() as f32,
        // abs/neg/copysign are bit operations (NaN payloads kept, as the manual describes).
        FOp::Abs => f32::from_bits(a.to_bits() & 0x7FFF_FFFF),
        FOp::Neg => f32::from_bits(a.to_bits() ^ 0x8000_0000),
        FOp::Copysign => {
            let b = f32_of(src[1]);
            f32::from_bits((b.to_bits() & 0x7FFF_FFFF) | (a.to_bits() & 0x8000_0000))
        }
        FOp::Min { nan } => fminmax(a as f64, rd(1) as f64, false, nan) as f32,
        FOp::Max { nan } => fminmax(a as f64, rd(1) as f64, true, nan) as f32,
    };
    let mut r = match op {
        FOp::Abs | FOp::Neg | FOp::Copysign => r,
        _ => float::canon32(r),
    };
    if ftz {
        r = float::ftz32(r);
    }
    if sat {
        r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
        // clamp keeps -0.0; .sat gives +0 for negative inputs.
        if r == 0.0 {
            r = 0.0;
        }
    }
    r
}

/// One f16/bf16 operation: exact operands in f64, the exact result as (value, residual sign)
/// by error-free transformations, rounded once to nearest even. NaN results are canonical.
#[allow(clippy::too_many_arguments)]
fn eval_half(op: HOp, bf: bool, ftz: bool, sat: bool, relu: bool, a: u16, b: u16, c: u16) -> u16 {
    let fmt = if bf { Fmt::Bf16 } else { Fmt::F16 };
    // Exponent field mask: a nonzero value with a zero exponent field is subnormal.
    let emask: u16 = if bf { 0x7F80 } else { 0x7C00 };
    let flush = |h: u16| {
        if ftz && h & emask == 0 {
            h & 0x8000
        } else {
            h
        }
    };
    let (a, b, c) = (flush(a), flush(b), flush(c));
    let v = |h: u16| fmt.to_f64(h as u32);
    let r = match op {
        HOp::Neg => return a ^ 0x8000,
        HOp::Abs => return a & 0x7FFF,
        HOp::Add | HOp::Sub => {
            let y = if op == HOp::Sub { -v(b) } else { v(b) };
            let x = v(a);
            let (s, e) = float::two_sum(x, y);
            if s.is_nan() || (x + y).is_nan() {
                fmt.canonical_nan()
            } else if s == 0.0 && e == 0.0 {
                // Exact zero: -0 only for (-0) + (-0).
                if x.is_sign_negative() && y.is_sign_negative() {
                    0x8000
                } else {
                    0
                }
            } else if !s.is_finite() {
                float::round_f64(x + y, 0, fmt, Rnd::Rn)
            } else {
                float::round_f64(s, float::sgn(e), fmt, Rnd::Rn)
            }
        }
        HOp::Mul => float::round_f64(v(a) * v(b), 0, fmt, Rnd::Rn),
        HOp::Fma => {
            let (p, z) = (v(a) * v(b), v(c)); // the product is exact in f64
            let (s, e) = float::two_sum(p, z);
            if (p + z).is_nan() {
                fmt.canonical_nan()
            } else if !s.is_finite() {
                float::round_f64(p + z, 0, fmt, Rnd::Rn)
            } else if s == 0.0 && e == 0.0 {
                if p.is_sign_negative() && z.is_sign_negative() {
                    0x8000
                } else {
                    0
                }
            } else {
                float::round_f64(s, float::sgn(e), fmt, Rnd::Rn)
            }
        }
        HOp::Min { nan } | HOp::Max { nan } => {
            let m = fminmax(v(a), v(b), matches!(op, HOp::Max { .. }), nan);
            if m.is_nan() {
                fmt.canonical_nan()
            } else {
                // The result is one of the operands, exactly.
                float::round_f64(m, 0, fmt, Rnd::Rn)
            }
        }
    } as u16;
    let mut r = flush(r);
    let is_nan = (r & 0x7FFF) as u32 > fmt.inf();
    if relu && (is_nan || r & 0x8000 != 0) {
        // .relu: negative results (and -0) become +0; NaN stays the canonical NaN.
        r = if is_nan {
            fmt.canonical_nan() as u16
        } else {
            0
        };
    }
    if sat {
        let x = v(r);
        r = if is_nan || x <= 0.0 {
            0
        } else if x >= 1.0 {
            float::round_f64(1.0, 0, fmt, Rnd::Rn) as u16
        } else {
            r
        };
    }
    r
}

#[inline]
fn eval_f64(op: FOp, rnd: Rnd, src: &[u64]) -> f64 {
    let a = f64_of(src[0]);
    let b = || f64_of(src[1]);
    let r = match op {
        FOp::Add => float::add64(a, b(), rnd),
        FOp::Sub => float::add64(a, -b(), rnd),
        FOp::Mul => float::mul64(a, b(), rnd),
        FOp::Fma => a.mul_add(b(), f64_of(src[2])),
        FOp::Div | FOp::DivFull | FOp::DivApprox => float::div64(a, b(), rnd),
        FOp::Rcp | FOp::RcpApprox => float::div64(1.0, a, rnd),
        FOp::Sqrt | FOp::SqrtApprox => float::sqrt64(a, rnd),
        FOp::RsqrtApprox => 1.0 / a.sqrt(),
        FOp::Ex2Approx => a.exp2(),
        FOp::Lg2Approx => a.log2(),
        FOp::SinApprox => a.sin(),
        FOp::CosApprox => a.cos(),
        FOp::TanhApprox => a.tanh(),
        FOp::Abs => return f64::from_bits(a.to_bits() & !(1 << 63)),
        FOp::Neg => return f64::from_bits(a.to_bits() ^ (1 << 63)),
        FOp::Copysign => {
            return f64::from_bits((b().to_bits() & !(1 << 63)) | (a.to_bits() & (1 << 63)))
        }
        FOp::Min { nan } => fminmax(a, b(), false, nan),
        FOp::Max { nan } => fminmax(a, b(), true, nan),
    };
    float::canon64(r)
}

/// The exact value of a float source as f64 (NaN stays NaN); `.ftz` flushes f32 subnormals.
#[inline]
fn float_in(ty: NumTy, v: u64, ftz: bool) -> f64 {
    match ty {
        NumTy::F16 => float::f16_to_f32(v as u16) as f64,
        NumTy::Bf16 => Fmt::Bf16.to_f64(v as u32 & 0xFFFF),
        NumTy::F32 => {
            let x = f32_of(v);
            (if ftz { float::ftz32(x) } else { x }) as f64
        }
        NumTy::F64 => f64_of(v),
        NumTy::Int { .. } => unreachable!("float_in on an integer type"),
    }
}

/// Rounds an f64 to an integral value.
#[inline]
fn round_int(x: f64, r: IRnd) -> f64 {
    match r {
        IRnd::Rni => x.round_ties_even(),
        IRnd::Rzi => x.trunc(),
        IRnd::Rmi => x.floor(),
        IRnd::Rpi => x.ceil(),
    }
}

/// Encodes the exact value `x + r` (r of sign `resid`) in a float destination.
fn float_out(c: &Cvt, x: f64, resid: i8) -> u64 {
    let mut x = x;
    let mut resid = resid;
    if c.relu && (x < 0.0 || (x == 0.0 && resid < 0)) {
        x = 0.0;
        resid = 0;
    }
    if c.sat {
        if x.is_nan() {
            x = 0.0;
        } else if x < 0.0 || (x == 0.0 && (resid < 0 || x.is_sign_negative())) {
            x = 0.0;
            resid = 0;
        } else if x > 1.0 || (x == 1.0 && resid > 0) {
            x = 1.0;
            resid = 0;
        }
    }
    let bits = match c.to {
        NumTy::F64 => {
            if x.is_nan() {
                return float::F64_NAN.to_bits();
            }
            // Sources with a residual (64-bit integers) need the directed step.
            if resid != 0 && c.frnd != Rnd::Rn {
                return step_i(x, resid, c.frnd).to_bits();
            }
            return x.to_bits();
        }
        NumTy::F32 => {
            let r = if c.frnd == Rnd::Rn && resid == 0 {
                float::canon32(x as f32)
            } else {
                f32::from_bits(float::round_f64(x, resid, Fmt::F32, c.frnd))
            };
            let r = if c.ftz { float::ftz32(r) } else { r };
            r.to_bits()
        }
        NumTy::F16 | NumTy::Bf16 if c.frnd == Rnd::Rn && resid == 0 && c.from == NumTy::F32 => {
            // An f32 source: the bit-level round-to-nearest-even fast path.
            if c.to == NumTy::F16 {
                float::f32_to_f16_rn(x as f32) as u32
            } else {
                float::f32_to_bf16_rn(x as f32) as u32
            }
        }
        NumTy::F16 => float::round_f64(x, resid, Fmt::F16, c.frnd),
        NumTy::Bf16 => float::round_f64(x, resid, Fmt::Bf16, c.frnd),
        NumTy::Int { .. } => unreachable!("float_out to an integer type"),
    };
    let fmt = match c.to {
        NumTy::F16 => Fmt::F16,
        NumTy::Bf16 => Fmt::Bf16,
        _ => Fmt::F32,
    };
    if c.satfinite && (bits & !fmt.sign_bit()) == fmt.inf() {
        return ((bits & fmt.sign_bit()) | fmt.max_finite()) as u64;
    }
    bits as u64
}

/// Directed step of an f64 for a residual sign (used by 64-bit integer to f64).
fn step_i(x: f64, resid: i8, rnd: Rnd) -> f64 {
    // x + tiny*resid rounded in rnd: reuse f64 addition of a tiny value in that mode.
    float::add64(x, resid as f64 * f64::from_bits(1), rnd)
}

fn cvt(c: &Cvt, v: u64) -> u64 {
    match (c.from, c.to) {
        (NumTy::Int { w: fw, signed: fs }, NumTy::Int { w: tw, signed: ts }) => {
            let x = ival(v, fw, fs);
            let x = if c.sat {
                let (lo, hi) = int_range(tw, ts);
                x.clamp(lo, hi)
            } else {
                x
            };
            (x as u64) & mask(tw)
        }
        (NumTy::Int { w, signed }, _) => {
            let x = ival(v, w, signed);
            let f = x as f64;
            let back = f as i128; // exact: |f| < 2^64
            let resid = (x - back).signum() as i8;
            float_out(c, f, resid)
        }
        (from, NumTy::Int { w, signed }) => {
            let x = float_in(from, v, c.ftz);
            if x.is_nan() {
                return 0;
            }
            let r = round_int(x, c.irnd.unwrap_or(IRnd::Rzi));
            let (lo, hi) = int_range(w, signed);
            let i = if r <= lo as f64 {
                lo
            } else if r >= hi as f64 {
                hi
            } else {
                r as i128
            };
            (i as u64) & mask(w)
        }
        (from, _) => {
            let x = float_in(from, v, c.ftz);
            let x = match c.irnd {
                Some(r) => round_int(x, r),
                None => x,
            };
            float_out(c, x, 0)
        }
    }
}

fn int_range(w: u8, signed: bool) -> (i128, i128) {
    if signed {
        (-(1i128 << (w - 1)), (1i128 << (w - 1)) - 1)
    } else {
        (0, (1i128 << w) - 1)
    }
}

// ---------------------------------------------------------------------------------------------
// Lowering
// ---------------------------------------------------------------------------------------------

/// The base opcodes this module owns.
const ALU_OPCODES: &[&str] = &[
    "mov", "add", "sub", "mul", "mad", "mul24", "mad24", "sad", "fma", "div", "rem", "abs", "neg",
    "min", "max", "and", "or", "xor", "not", "cnot", "shl", "shr", "popc", "clz", "brev", "bfind",
    "bfe", "bfi", "prmt", "lop3", "shf", "selp", "setp", "rcp", "sqrt", "rsqrt", "ex2", "lg2",
    "sin", "cos", "tanh", "copysign", "testp", "cvt",
];

/// How immediates of an operand are converted.
#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Bits,
    F32,
    F64,
}

struct Builder<'a> {
    form: &'a str,
    src: Vec<Src>,
    negate: u8,
}

impl Builder<'_> {
    fn err(&self, why: impl std::fmt::Display) -> String {
        format!("unsupported instruction form `{}`: {why}", self.form)
    }

    /// [`Self::push`] of each of `ops`, in order, all read in `ctx`.
    fn push_all(&mut self, ops: &[Operand], ctx: Ctx) -> Result<(), String> {
        for o in ops {
            self.push(o, ctx)?;
        }
        Ok(())
    }

    fn push(&mut self, o: &Operand, ctx: Ctx) -> Result<(), String> {
        let i = self.src.len();
        if i >= 8 {
            return Err(self.err("too many source operands"));
        }
        let s = match *o {
            Operand::Reg(r) => Src::Reg(r),
            Operand::NotReg(r) => {
                self.negate |= 1 << i;
                Src::Reg(r)
            }
            Operand::Int(v) => Src::Imm(match ctx {
                Ctx::Bits => v as u64,
                Ctx::F32 => (v as f32).to_bits() as u64,
                Ctx::F64 => (v as f64).to_bits(),
            }),
            Operand::F32(b) => Src::Imm(match ctx {
                Ctx::F64 => (f32::from_bits(b) as f64).to_bits(),
                _ => b as u64,
            }),
            Operand::F64(b) => Src::Imm(match ctx {
                Ctx::F32 => (f64::from_bits(b) as f32).to_bits() as u64,
                _ => b,
            }),
            ref other => {
                return Err(self.err(format!("source operand {other:?} is not a value")));
            }
        };
        self.src.push(s);
        Ok(())
    }
}

fn int_type(t: Type) -> Option<(u8, bool)> {
    Some(match t {
        Type::Pred => (1, false),
        Type::B8 | Type::U8 => (8, false),
        Type::S8 => (8, true),
        Type::B16 | Type::U16 => (16, false),
        Type::S16 => (16, true),
        Type::B32 | Type::U32 => (32, false),
        Type::S32 => (32, true),
        Type::B64 | Type::U64 => (64, false),
        Type::S64 => (64, true),
        _ => return None,
    })
}

fn dst_of(o: &Operand, form: &str) -> Result<Vec<Option<RegId>>, String> {
    match *o {
        Operand::Reg(r) => Ok(vec![Some(r)]),
        Operand::Sink => Ok(vec![None]),
        Operand::RegPair(p, q) => Ok(vec![Some(p), Some(q)]),
        Operand::Vector(ref v) => v
            .iter()
            .map(|e| match *e {
                Operand::Reg(r) => Ok(Some(r)),
                Operand::Sink => Ok(None),
                ref other => Err(format!(
                    "unsupported instruction form `{form}`: destination element {other:?}"
                )),
            })
            .collect(),
        ref other => Err(format!(
            "unsupported instruction form `{form}`: destination {other:?}"
        )),
    }
}

/// Lowers one instruction. `Ok(None)` when `opcode` is not an ALU instruction (memory, control,
/// collectives, matrix: the engine's), an error naming the form when it is one of ours but the
/// form or its operands are not supported. `reg_type` gives a register's declared type.
pub fn lower(
    opcode: &str,
    operands: &[Operand],
    reg_type: impl Fn(RegId) -> Type,
) -> Result<Option<AluInst>, String> {
    let mut parts = opcode.split('.');
    let base = parts.next().unwrap_or("");
    if !ALU_OPCODES.contains(&base) {
        return Ok(None);
    }
    let mods: Vec<&str> = parts.collect();
    let form = opcode;
    let err = |why: &str| format!("unsupported instruction form `{form}`: {why}");
    // Split the modifiers into types (in order) and flags.
    let mut types = Vec::new();
    let mut flags = Vec::new();
    for m in &mods {
        match Type::from_name(m) {
            Some(t) => types.push(t),
            None => flags.push(*m),
        }
    }
    let has = |f: &str| flags.contains(&f);
    let only = |allowed: &[&str]| -> Result<(), String> {
        for f in &flags {
            if !allowed.contains(f) {
                return Err(err(&format!("modifier .{f}")));
            }
        }
        Ok(())
    };
    if operands.is_empty() {
        return Err(err("no operands"));
    }
    let mut dst = dst_of(&operands[0], form)?;
    let srcs = &operands[1..];
    let mut b = Builder {
        form,
        src: Vec::new(),
        negate: 0,
    };
    let nsrc = |n: usize| -> Result<(), String> {
        if srcs.len() != n {
            Err(err(&format!(
                "expected {n} source operands, found {}",
                srcs.len()
            )))
        } else {
            Ok(())
        }
    };
    let one_type = || -> Result<Type, String> {
        match types.as_slice() {
            [t] => Ok(*t),
            _ => Err(err("expected exactly one type")),
        }
    };
    let ctx_of = |t: Type| match t {
        Type::F32 => Ctx::F32,
        Type::F64 => Ctx::F64,
        _ => Ctx::Bits,
    };

    let op: AluOp = match base {
        "mov" => {
            only(&[])?;
            let t = one_type()?;
            let w = (t.size() * 8) as u8;
            let w = if t == Type::Pred { 1 } else { w };
            nsrc(1)?;
            match (&operands[0], &srcs[0]) {
                (_, Operand::Vector(v)) => {
                    let n = v.len();
                    if n < 2 || (w as usize) % n != 0 || dst.len() != 1 {
                        return Err(err("bad vector pack"));
                    }
                    for e in v {
                        b.push(e, Ctx::Bits)?;
                    }
                    AluOp::Pack {
                        elem: (w as usize / n) as u8,
                        n: n as u8,
                    }
                }
                (Operand::Vector(v), s) => {
                    let n = v.len();
                    if n < 2 || (w as usize) % n != 0 {
                        return Err(err("bad vector unpack"));
                    }
                    b.push(s, Ctx::Bits)?;
                    AluOp::Unpack {
                        elem: (w as usize / n) as u8,
                        n: n as u8,
                    }
                }
                (_, s) => {
                    b.push(s, ctx_of(t))?;
                    AluOp::Mov { w }
                }
            }
        }
        "add" | "sub" | "mul" | "mad" | "fma" | "div" | "rem" | "min" | "max" | "abs" | "neg"
        | "rcp" | "sqrt" | "rsqrt" | "ex2" | "lg2" | "sin" | "cos" | "tanh" | "copysign" => {
            let t = one_type()?;
            match t {
                Type::F32 | Type::F64 => lower_float(base, t, &flags, srcs, &mut b, &err)?,
                Type::F16 | Type::F16x2 | Type::Bf16 | Type::Bf16x2 => {
                    lower_half(base, t, &flags, srcs, &mut b, &err)?
                }
                _ => {
                    let (w, s) = int_type(t)
                        .filter(|&(w, _)| w >= 16)
                        .ok_or_else(|| err("type"))?;
                    lower_int(base, w, s, &flags, srcs, &mut b, &err)?
                }
            }
        }
        "mul24" | "mad24" => {
            let t = one_type()?;
            let s = match t {
                Type::S32 => true,
                Type::U32 => false,
                _ => return Err(err("type")),
            };
            let hi = has("hi");
            only(&["lo", "hi"])?;
            let n = if base == "mad24" { 3 } else { 2 };
            nsrc(n)?;
            b.push_all(srcs, Ctx::Bits)?;
            match (base, hi) {
                ("mul24", false) => AluOp::Mul24Lo { s },
                ("mul24", true) => AluOp::Mul24Hi { s },
                ("mad24", false) => AluOp::Mad24Lo { s },
                _ => return Err(err("mad24.hi")),
            }
        }
        "sad" => {
            only(&[])?;
            let (w, s) = int_type(one_type()?).ok_or_else(|| err("type"))?;
            nsrc(3)?;
            b.push_all(srcs, Ctx::Bits)?;
            AluOp::Sad { w, s }
        }
        "and" | "or" | "xor" | "not" | "cnot" => {
            only(&[])?;
            let t = one_type()?;
            let (w, _) = int_type(t)
                .filter(|&(w, _)| w != 8)
                .ok_or_else(|| err("type"))?;
            let n = if base == "not" || base == "cnot" {
                1
            } else {
                2
            };
            nsrc(n)?;
            b.push_all(srcs, Ctx::Bits)?;
            match base {
                "and" => AluOp::And { w },
                "or" => AluOp::Or { w },
                "xor" => AluOp::Xor { w },
                "not" => AluOp::Not { w },
                _ => AluOp::Cnot { w },
            }
        }
        "shl" | "shr" => {
            only(&[])?;
            let (w, s) = int_type(one_type()?)
                .filter(|&(w, _)| w >= 16)
                .ok_or_else(|| err("type"))?;
            nsrc(2)?;
            b.push(&srcs[0], Ctx::Bits)?;
            b.push(&srcs[1], Ctx::Bits)?;
            // The shift amount is an unsigned 32-bit value.
            if base == "shl" {
                AluOp::Shl { w }
            } else {
                AluOp::Shr { w, s }
            }
        }
        "popc" | "clz" | "brev" | "bfind" => {
            let (w, s) = int_type(one_type()?)
                .filter(|&(w, _)| w == 32 || w == 64)
                .ok_or_else(|| err("type"))?;
            if base == "bfind" {
                only(&["shiftamt"])?;
            } else {
                only(&[])?;
            }
            nsrc(1)?;
            b.push(&srcs[0], Ctx::Bits)?;
            match base {
                "popc" => AluOp::Popc { w },
                "clz" => AluOp::Clz { w },
                "brev" => AluOp::Brev { w },
                _ => AluOp::Bfind {
                    w,
                    s,
                    shiftamt: has("shiftamt"),
                },
            }
        }
        "bfe" | "bfi" => {
            only(&[])?;
            let (w, s) = int_type(one_type()?)
                .filter(|&(w, _)| w == 32 || w == 64)
                .ok_or_else(|| err("type"))?;
            nsrc(if base == "bfe" { 3 } else { 4 })?;
            b.push_all(srcs, Ctx::Bits)?;
            if base == "bfe" {
                AluOp::Bfe { w, s }
            } else {
                AluOp::Bfi { w }
            }
        }
        "prmt" => {
            if one_type()? != Type::B32 {
                return Err(err("type"));
            }
            let mode = match flags.as_slice() {
                [] => PrmtMode::Generic,
                ["f4e"] => PrmtMode::F4e,
                ["b4e"] => PrmtMode::B4e,
                ["rc8"] => PrmtMode::Rc8,
                ["ecl"] => PrmtMode::Ecl,
                ["ecr"] => PrmtMode::Ecr,
                ["rc16"] => PrmtMode::Rc16,
                _ => return Err(err("mode")),
            };
            nsrc(3)?;
            b.push_all(srcs, Ctx::Bits)?;
            AluOp::Prmt { mode }
        }
        "lop3" => {
            only(&[])?;
            if one_type()? != Type::B32 {
                return Err(err("type"));
            }
            nsrc(4)?;
            b.push_all(srcs, Ctx::Bits)?;
            AluOp::Lop3
        }
        "shf" => {
            if one_type()? != Type::B32 {
                return Err(err("type"));
            }
            let left = match (has("l"), has("r")) {
                (true, false) => true,
                (false, true) => false,
                _ => return Err(err("direction")),
            };
            let clamp = match (has("wrap"), has("clamp")) {
                (true, false) => false,
                (false, true) => true,
                _ => return Err(err("mode")),
            };
            only(&["l", "r", "wrap", "clamp"])?;
            nsrc(3)?;
            b.push_all(srcs, Ctx::Bits)?;
            AluOp::Shf { left, clamp }
        }
        "selp" => {
            only(&[])?;
            let t = one_type()?;
            let w = match t {
                Type::Pred => return Err(err("type")),
                t => (t.size() * 8) as u8,
            };
            nsrc(3)?;
            b.push(&srcs[0], ctx_of(t))?;
            b.push(&srcs[1], ctx_of(t))?;
            b.push(&srcs[2], Ctx::Bits)?;
            AluOp::Selp { w }
        }
        "setp" => {
            let t = one_type()?;
            let mut cmp = None;
            let mut bop = None;
            let mut ftz = false;
            for f in &flags {
                let c = match *f {
                    "eq" => Cmp::Eq,
                    "ne" => Cmp::Ne,
                    "lt" => Cmp::Lt,
                    "le" => Cmp::Le,
                    "gt" => Cmp::Gt,
                    "ge" => Cmp::Ge,
                    "lo" => Cmp::Lo,
                    "ls" => Cmp::Ls,
                    "hi" => Cmp::Hi,
                    "hs" => Cmp::Hs,
                    "equ" => Cmp::Equ,
                    "neu" => Cmp::Neu,
                    "ltu" => Cmp::Ltu,
                    "leu" => Cmp::Leu,
                    "gtu" => Cmp::Gtu,
                    "geu" => Cmp::Geu,
                    "num" => Cmp::Num,
                    "nan" => Cmp::Nan,
                    "and" | "or" | "xor" if bop.is_none() => {
                        bop = Some(match *f {
                            "and" => BoolOp::And,
                            "or" => BoolOp::Or,
                            _ => BoolOp::Xor,
                        });
                        continue;
                    }
                    "ftz" => {
                        ftz = true;
                        continue;
                    }
                    _ => return Err(err(&format!("modifier .{f}"))),
                };
                if cmp.replace(c).is_some() {
                    return Err(err("two comparison operators"));
                }
            }
            let cmp = cmp.ok_or_else(|| err("no comparison operator"))?;
            let ty = match t {
                Type::F32 => CmpTy::F32,
                Type::F64 => CmpTy::F64,
                t => {
                    let (w, signed) = int_type(t)
                        .filter(|&(w, _)| w >= 16)
                        .ok_or_else(|| err("type"))?;
                    CmpTy::Int { w, signed }
                }
            };
            let float = matches!(ty, CmpTy::F32 | CmpTy::F64);
            let unsigned_cmp = matches!(cmp, Cmp::Lo | Cmp::Ls | Cmp::Hi | Cmp::Hs);
            if (float && unsigned_cmp) || (!float && !unsigned_cmp && cmp as u8 > Cmp::Ge as u8) {
                return Err(err("comparison operator for this type"));
            }
            if ftz && t != Type::F32 {
                return Err(err(".ftz on a non-f32 type"));
            }
            nsrc(if bop.is_some() { 3 } else { 2 })?;
            b.push(&srcs[0], ctx_of(t))?;
            b.push(&srcs[1], ctx_of(t))?;
            if bop.is_some() {
                b.push(&srcs[2], Ctx::Bits)?;
            }
            if dst.len() > 2 {
                return Err(err("destination"));
            }
            AluOp::Setp { cmp, ty, ftz, bop }
        }
        "testp" => {
            let t = one_type()?;
            let prop = match flags.as_slice() {
                ["finite"] => TestP::Finite,
                ["infinite"] => TestP::Infinite,
                ["number"] => TestP::Number,
                ["notanumber"] => TestP::NotANumber,
                ["normal"] => TestP::Normal,
                ["subnormal"] => TestP::Subnormal,
                _ => return Err(err("property")),
            };
            let f64 = match t {
                Type::F32 => false,
                Type::F64 => true,
                _ => return Err(err("type")),
            };
            nsrc(1)?;
            b.push(&srcs[0], ctx_of(t))?;
            AluOp::Testp { prop, f64 }
        }
        "cvt" => {
            let c = lower_cvt(&types, &flags, &err)?;
            let n = if c.pack2 { 2 } else { 1 };
            nsrc(n)?;
            let ctx = match c.from {
                NumTy::F32 => Ctx::F32,
                NumTy::F64 => Ctx::F64,
                _ => Ctx::Bits,
            };
            b.push_all(srcs, ctx)?;
            AluOp::Cvt(c)
        }
        _ => return Ok(None),
    };
    // Single-destination ops take exactly one destination register.
    let ndst = match op {
        AluOp::Unpack { n, .. } => n as usize,
        AluOp::Setp { .. } => dst.len(),
        _ => 1,
    };
    if dst.len() != ndst {
        return Err(err("destination operand count"));
    }
    if matches!(op, AluOp::Setp { .. }) && dst.is_empty() {
        dst.push(None);
    }
    let _ = &reg_type; // the instruction types carry all widths needed
    Ok(Some(AluInst {
        op,
        dst,
        src: b.src,
        negate: b.negate,
    }))
}

fn lower_int(
    base: &str,
    w: u8,
    s: bool,
    flags: &[&str],
    srcs: &[Operand],
    b: &mut Builder,
    err: &dyn Fn(&str) -> String,
) -> Result<AluOp, String> {
    let n = match base {
        "abs" | "neg" => 1,
        "mad" => 3,
        _ => 2,
    };
    if srcs.len() != n {
        return Err(err("source operand count"));
    }
    b.push_all(srcs, Ctx::Bits)?;
    let f: Vec<&str> = flags.to_vec();
    let op = match (base, f.as_slice()) {
        ("add", []) => AluOp::Add { w },
        ("sub", []) => AluOp::Sub { w },
        ("add", ["sat"]) if w == 32 && s => AluOp::AddSat,
        ("sub", ["sat"]) if w == 32 && s => AluOp::SubSat,
        ("mul", ["lo"]) => AluOp::MulLo { w },
        ("mul", ["hi"]) => AluOp::MulHi { w, s },
        ("mul", ["wide"]) if w <= 32 => AluOp::MulWide { w, s },
        ("mad", ["lo"]) => AluOp::MadLo { w },
        ("mad", ["hi"]) => AluOp::MadHi { w, s },
        ("mad", ["wide"]) if w <= 32 => AluOp::MadWide { w, s },
        ("div", []) => AluOp::Div { w, s },
        ("rem", []) => AluOp::Rem { w, s },
        ("abs", []) if s => AluOp::Abs { w },
        ("neg", []) if s => AluOp::Neg { w },
        ("min", []) => AluOp::Min { w, s },
        ("max", []) => AluOp::Max { w, s },
        _ => return Err(err("modifiers or type for an integer operation")),
    };
    Ok(op)
}

fn lower_float(
    base: &str,
    t: Type,
    flags: &[&str],
    srcs: &[Operand],
    b: &mut Builder,
    err: &dyn Fn(&str) -> String,
) -> Result<AluOp, String> {
    let is64 = t == Type::F64;
    let mut rnd = None;
    let (mut ftz, mut sat, mut approx, mut full, mut nan) = (false, false, false, false, false);
    for f in flags {
        match *f {
            "rn" | "rz" | "rm" | "rp" => {
                if rnd.is_some() {
                    return Err(err("two rounding modifiers"));
                }
                rnd = Some(match *f {
                    "rn" => Rnd::Rn,
                    "rz" => Rnd::Rz,
                    "rm" => Rnd::Rm,
                    _ => Rnd::Rp,
                });
            }
            "ftz" if !is64 => ftz = true,
            "sat" if !is64 => sat = true,
            "approx" => approx = true,
            "full" if !is64 => full = true,
            "NaN" => nan = true,
            _ => return Err(err(&format!("modifier .{f}"))),
        }
    }
    let n = match base {
        "fma" | "mad" => 3,
        "add" | "sub" | "mul" | "div" | "min" | "max" | "copysign" => 2,
        _ => 1,
    };
    if srcs.len() != n {
        return Err(err("source operand count"));
    }
    let ctx = if is64 { Ctx::F64 } else { Ctx::F32 };
    b.push_all(srcs, ctx)?;
    let r = rnd.unwrap_or(Rnd::Rn);
    let plain = |ok: bool| if ok { Ok(()) } else { Err(err("modifiers")) };
    let op = match base {
        "add" => {
            plain(!approx && !full && !nan)?;
            FOp::Add
        }
        "sub" => {
            plain(!approx && !full && !nan)?;
            FOp::Sub
        }
        "mul" => {
            plain(!approx && !full && !nan)?;
            FOp::Mul
        }
        "fma" | "mad" => {
            // fma requires a rounding modifier; mad.f32 without one is the sm_1x form.
            plain(!approx && !full && !nan && rnd.is_some())?;
            if is64 && r != Rnd::Rn {
                return Err(err("directed rounding of fma.f64"));
            }
            FOp::Fma
        }
        "div" => {
            plain(!nan && !sat)?;
            match (approx, full, rnd) {
                (false, false, Some(_)) => FOp::Div,
                (true, false, None) if !is64 => FOp::DivApprox,
                (false, true, None) if !is64 => FOp::DivFull,
                _ => return Err(err("division kind")),
            }
        }
        "rcp" => {
            plain(!nan && !sat && !full)?;
            match (approx, rnd) {
                (false, Some(_)) => FOp::Rcp,
                (true, None) => FOp::RcpApprox,
                _ => return Err(err("rcp kind")),
            }
        }
        "sqrt" => {
            plain(!nan && !sat && !full)?;
            match (approx, rnd) {
                (false, Some(_)) => FOp::Sqrt,
                (true, None) if !is64 => FOp::SqrtApprox,
                _ => return Err(err("sqrt kind")),
            }
        }
        "rsqrt" | "ex2" | "lg2" | "sin" | "cos" | "tanh" => {
            plain(approx && rnd.is_none() && !sat && !full && !nan)?;
            if is64 && base != "rsqrt" {
                return Err(err("f64 approximate function"));
            }
            match base {
                "rsqrt" => FOp::RsqrtApprox,
                "ex2" => FOp::Ex2Approx,
                "lg2" => FOp::Lg2Approx,
                "sin" => FOp::SinApprox,
                "cos" => FOp::CosApprox,
                _ => FOp::TanhApprox,
            }
        }
        "abs" | "neg" => {
            plain(!approx && !full && !nan && !sat && rnd.is_none())?;
            if base == "abs" {
                FOp::Abs
            } else {
                FOp::Neg
            }
        }
        "copysign" => {
            plain(!approx && !full && !nan && !sat && !ftz && rnd.is_none())?;
            FOp::Copysign
        }
        "min" | "max" => {
            plain(!approx && !full && !sat && rnd.is_none())?;
            if base == "min" {
                FOp::Min { nan }
            } else {
                FOp::Max { nan }
            }
        }
        _ => return Err(err("float operation")),
    };
    Ok(if is64 {
        AluOp::F64 { op, rnd: r }
    } else {
        AluOp::F32 {
            op,
            rnd: r,
            ftz,
            sat,
        }
    })
}

fn lower_half(
    base: &str,
    t: Type,
    flags: &[&str],
    srcs: &[Operand],
    b: &mut Builder,
    err: &dyn Fn(&str) -> String,
) -> Result<AluOp, String> {
    let bf = matches!(t, Type::Bf16 | Type::Bf16x2);
    let x2 = matches!(t, Type::F16x2 | Type::Bf16x2);
    let (mut rn, mut ftz, mut sat, mut relu, mut nan) = (false, false, false, false, false);
    for f in flags {
        match *f {
            "rn" => rn = true,
            "ftz" => ftz = true,
            "sat" => sat = true,
            "relu" => relu = true,
            "NaN" => nan = true,
            _ => return Err(err(&format!("modifier .{f}"))),
        }
    }
    let (op, n) = match base {
        "add" => (HOp::Add, 2),
        "sub" => (HOp::Sub, 2),
        "mul" => (HOp::Mul, 2),
        "fma" if rn => (HOp::Fma, 3),
        "neg" => (HOp::Neg, 1),
        "abs" => (HOp::Abs, 1),
        "min" => (HOp::Min { nan }, 2),
        "max" => (HOp::Max { nan }, 2),
        _ => return Err(err("half-precision operation")),
    };
    let ok = match op {
        HOp::Add | HOp::Sub | HOp::Mul => !relu && !nan,
        HOp::Fma => !(nan || (relu && sat)),
        HOp::Neg | HOp::Abs => !rn && !sat && !relu && !nan,
        HOp::Min { .. } | HOp::Max { .. } => !rn && !sat,
    };
    if !ok || (bf && ftz) {
        return Err(err("modifiers"));
    }
    if srcs.len() != n {
        return Err(err("source operand count"));
    }
    for o in srcs {
        if matches!(o, Operand::F32(_) | Operand::F64(_)) {
            return Err(err("float immediate for a half-precision operand"));
        }
        b.push(o, Ctx::Bits)?;
    }
    Ok(AluOp::Half {
        op,
        bf,
        x2,
        ftz,
        sat,
        relu,
    })
}

fn num_ty(t: Type) -> Option<NumTy> {
    Some(match t {
        Type::F16 => NumTy::F16,
        Type::Bf16 => NumTy::Bf16,
        Type::F32 => NumTy::F32,
        Type::F64 => NumTy::F64,
        Type::U8
        | Type::U16
        | Type::U32
        | Type::U64
        | Type::S8
        | Type::S16
        | Type::S32
        | Type::S64 => {
            let (w, signed) = int_type(t)?;
            NumTy::Int { w, signed }
        }
        _ => return None,
    })
}

fn lower_cvt(types: &[Type], flags: &[&str], err: &dyn Fn(&str) -> String) -> Result<Cvt, String> {
    let [to_t, from_t] = types else {
        return Err(err("expected a destination and a source type"));
    };
    let (to, pack2) = match to_t {
        Type::F16x2 => (NumTy::F16, true),
        Type::Bf16x2 => (NumTy::Bf16, true),
        t => (num_ty(*t).ok_or_else(|| err("destination type"))?, false),
    };
    let from = num_ty(*from_t).ok_or_else(|| err("source type"))?;
    if pack2 && from != NumTy::F32 {
        return Err(err("packed conversion from a non-f32 type"));
    }
    let mut c = Cvt {
        from,
        to,
        frnd: Rnd::Rn,
        irnd: None,
        ftz: false,
        sat: false,
        relu: false,
        satfinite: false,
        pack2,
    };
    let mut frnd = None;
    for f in flags {
        match *f {
            "rn" | "rz" | "rm" | "rp" if frnd.is_none() && c.irnd.is_none() => {
                frnd = Some(match *f {
                    "rn" => Rnd::Rn,
                    "rz" => Rnd::Rz,
                    "rm" => Rnd::Rm,
                    _ => Rnd::Rp,
                })
            }
            "rni" | "rzi" | "rmi" | "rpi" if frnd.is_none() && c.irnd.is_none() => {
                c.irnd = Some(match *f {
                    "rni" => IRnd::Rni,
                    "rzi" => IRnd::Rzi,
                    "rmi" => IRnd::Rmi,
                    _ => IRnd::Rpi,
                })
            }
            "ftz" => c.ftz = true,
            "sat" => c.sat = true,
            "relu" => c.relu = true,
            "satfinite" => c.satfinite = true,
            _ => return Err(err(&format!("modifier .{f}"))),
        }
    }
    let is_int = |t: NumTy| matches!(t, NumTy::Int { .. });
    let rank = |t: NumTy| match t {
        NumTy::F16 | NumTy::Bf16 => 1,
        NumTy::F32 => 2,
        NumTy::F64 => 3,
        NumTy::Int { .. } => 0,
    };
    match (is_int(from), is_int(to)) {
        (true, true) => {
            if frnd.is_some() || c.irnd.is_some() || c.relu || c.satfinite {
                return Err(err("rounding of an integer conversion"));
            }
        }
        (false, true) => {
            if c.irnd.is_none() {
                return Err(err("float-to-integer conversion needs an integer rounding"));
            }
            if c.sat || c.relu || c.satfinite {
                // Float-to-integer conversions always saturate; `.sat` is redundant but legal.
                if c.relu || c.satfinite {
                    return Err(err("modifier on a float-to-integer conversion"));
                }
            }
        }
        (true, false) => {
            if c.irnd.is_some() {
                return Err(err("integer rounding of an integer-to-float conversion"));
            }
        }
        (false, false) => {
            if let Some(_r) = c.irnd {
                if from != to {
                    return Err(err("integer rounding between different float types"));
                }
            } else if rank(to) < rank(from) || (rank(to) == 1 && from != to) {
                if frnd.is_none() {
                    return Err(err("narrowing float conversion needs a rounding modifier"));
                }
            } else if frnd.is_some() {
                return Err(err("rounding modifier on a widening float conversion"));
            }
        }
    }
    if c.ftz && from != NumTy::F32 && to != NumTy::F32 {
        return Err(err(".ftz without an f32 operand"));
    }
    c.frnd = frnd.unwrap_or(Rnd::Rn);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(i: u32) -> Operand {
        Operand::Reg(RegId(i))
    }

    /// Lowers with register operands %0..; `imms` replaces sources with immediates.
    fn inst(opcode: &str, ops: Vec<Operand>) -> AluInst {
        lower(opcode, &ops, |_| Type::B32)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{opcode} not an ALU op"))
    }

    /// Runs a one-destination op on source values.
    fn run(opcode: &str, srcs: &[u64]) -> u64 {
        let mut ops = vec![reg(0)];
        ops.extend((0..srcs.len()).map(|i| reg(i as u32 + 1)));
        let i = inst(opcode, ops);
        let mut d = vec![0u64; i.dst.len()];
        i.eval(srcs, &mut d);
        d[0]
    }

    fn f(x: f32) -> u64 {
        x.to_bits() as u64
    }

    #[test]
    fn not_ours() {
        for op in [
            "ld.global.u32",
            "bra",
            "bar.sync",
            "shfl.sync.down.b32",
            "mma.sync.aligned",
        ] {
            assert!(lower(op, &[reg(0)], |_| Type::B32).unwrap().is_none());
        }
        let e = lower("add.cc.s32", &[reg(0), reg(1), reg(2)], |_| Type::B32).unwrap_err();
        assert!(e.contains("add.cc.s32"), "{e}");
    }

    #[test]
    fn integer_basics_and_widths() {
        assert_eq!(run("add.s32", &[0xFFFF_FFFF, 1]), 0);
        assert_eq!(run("sub.s32", &[0, 1]), 0xFFFF_FFFF);
        assert_eq!(run("add.s64", &[u64::MAX, 2]), 1);
        assert_eq!(run("add.s16", &[0x7FFF, 1]), 0x8000);
        // mul.lo / mul.hi / mul.wide, signed and unsigned.
        assert_eq!(run("mul.lo.s32", &[0xFFFF_FFFF, 3]), 0xFFFF_FFFD);
        assert_eq!(run("mul.hi.s32", &[0xFFFF_FFFF, 3]), 0xFFFF_FFFF); // -3 >> 32 = -1
        assert_eq!(run("mul.hi.u32", &[0xFFFF_FFFF, 3]), 2);
        assert_eq!(run("mul.wide.s32", &[0xFFFF_FFFF, 3]), (-3i64) as u64);
        assert_eq!(run("mul.wide.u32", &[0xFFFF_FFFF, 3]), 0x2_FFFF_FFFD);
        assert_eq!(run("mul.wide.u16", &[0xFFFF, 4]), 0x3_FFFC);
        assert_eq!(run("mul.wide.s16", &[0xFFFF, 4]), 0xFFFF_FFFC);
        assert_eq!(run("mul.hi.u64", &[u64::MAX, u64::MAX]), u64::MAX - 1);
        assert_eq!(run("mul.hi.s64", &[u64::MAX, u64::MAX]), 0); // (-1)(-1) = 1
        assert_eq!(run("mul.lo.s64", &[1 << 40, 1 << 30]), 0); // 2^70 wraps to 0
        assert_eq!(run("mad.lo.s32", &[7, 0xFFFF_FFFF, 10]), 3);
        assert_eq!(run("mad.wide.s32", &[0xFFFF_FFFF, 2, 5]), 3);
        assert_eq!(run("mad.hi.u32", &[0x8000_0000, 4, 1]), 3);
        // Sources from wider registers use their low bits; immediates are sign-extended.
        assert_eq!(
            run("add.s32", &[0xDEAD_0000_0000_0005, (-7i64) as u64]),
            0xFFFF_FFFE
        );
        // Division and remainder, signed truncation toward zero.
        assert_eq!(
            run("div.s32", &[(-7i32) as u32 as u64, 2]),
            (-3i32) as u32 as u64
        );
        assert_eq!(run("rem.s32", &[(-7i32) as u32 as u64, 2]), 0xFFFF_FFFF);
        assert_eq!(run("div.u32", &[0xFFFF_FFF9, 2]), 0x7FFF_FFFC);
        assert_eq!(run("div.s64", &[(-9i64) as u64, 4]), (-2i64) as u64);
        assert_eq!(run("div.u64", &[u64::MAX, 16]), u64::MAX >> 4);
        assert_eq!(run("div.s32", &[0x8000_0000, 0xFFFF_FFFF]), 0x8000_0000);
        assert_eq!(run("div.u32", &[5, 0]), 0xFFFF_FFFF);
        assert_eq!(run("min.s32", &[0xFFFF_FFFF, 1]), 0xFFFF_FFFF);
        assert_eq!(run("min.u32", &[0xFFFF_FFFF, 1]), 1);
        assert_eq!(run("max.s64", &[(-5i64) as u64, 3]), 3);
        assert_eq!(
            run("max.s32", &[(-5i32) as u32 as u64, (-9i32) as u32 as u64]),
            0xFFFF_FFFB
        );
        assert_eq!(run("abs.s32", &[0xFFFF_FFF6]), 10);
        assert_eq!(run("neg.s32", &[1]), 0xFFFF_FFFF);
        assert_eq!(run("popc.b32", &[0xF0F0_0001]), 9);
        assert_eq!(run("clz.b32", &[0x0000_8000]), 16);
        assert_eq!(run("clz.b32", &[0]), 32);
        assert_eq!(run("brev.b32", &[1]), 0x8000_0000);
        assert_eq!(run("bfind.u32", &[0x0000_0900]), 11);
        assert_eq!(run("bfind.s32", &[0xFFFF_F000]), 11);
        assert_eq!(run("bfind.u32", &[0]), 0xFFFF_FFFF);
        assert_eq!(run("bfind.shiftamt.u32", &[0x0000_0900]), 20);
    }

    #[test]
    fn shifts_clamp_beyond_width() {
        assert_eq!(run("shl.b32", &[1, 31]), 0x8000_0000);
        assert_eq!(run("shl.b32", &[1, 32]), 0);
        assert_eq!(run("shl.b32", &[1, 1000]), 0);
        assert_eq!(run("shl.b64", &[1, 63]), 1 << 63);
        assert_eq!(run("shl.b64", &[1, 64]), 0);
        assert_eq!(run("shl.b16", &[0x00FF, 12]), 0xF000);
        assert_eq!(run("shr.u32", &[0x8000_0000, 31]), 1);
        assert_eq!(run("shr.u32", &[0x8000_0000, 32]), 0);
        assert_eq!(run("shr.s32", &[0x8000_0000, 31]), 0xFFFF_FFFF);
        assert_eq!(run("shr.s32", &[0x8000_0000, 40]), 0xFFFF_FFFF);
        assert_eq!(run("shr.s32", &[0x4000_0000, 40]), 0);
        assert_eq!(run("shr.s64", &[1 << 63, 64]), u64::MAX);
        assert_eq!(run("shr.s16", &[0x8000, 15]), 0xFFFF);
        assert_eq!(run("shr.u16", &[0x8000, 15]), 1);
        assert_eq!(run("shr.b32", &[0x8000_0000, 4]), 0x0800_0000);
    }

    #[test]
    fn logic_and_predicates() {
        assert_eq!(run("and.b32", &[0xFF00_FF00, 0x0FF0_0FF0]), 0x0F00_0F00);
        assert_eq!(run("or.b64", &[1 << 40, 1]), (1 << 40) | 1);
        assert_eq!(run("xor.b16", &[0xFFFF, 0x00FF]), 0xFF00);
        assert_eq!(run("not.b32", &[0]), 0xFFFF_FFFF);
        assert_eq!(run("not.pred", &[1]), 0);
        assert_eq!(run("not.pred", &[0]), 1);
        assert_eq!(run("and.pred", &[1, 0]), 0);
        assert_eq!(run("or.pred", &[1, 0]), 1);
        assert_eq!(run("xor.pred", &[1, 1]), 0);
        assert_eq!(run("cnot.b32", &[0]), 1);
        assert_eq!(run("cnot.b32", &[5]), 0);
        // A negated predicate source.
        let i = inst("and.pred", vec![reg(0), reg(1), Operand::NotReg(RegId(2))]);
        let mut d = [0];
        i.eval(&[1, 0], &mut d);
        assert_eq!(d[0], 1);
        i.eval(&[1, 1], &mut d);
        assert_eq!(d[0], 0);
        assert_eq!(run("selp.b32", &[7, 9, 1]), 7);
        assert_eq!(run("selp.u16", &[7, 9, 0]), 9);
        assert_eq!(run("selp.f32", &[f(1.5), f(2.5), 0]), f(2.5));
    }

    #[test]
    fn prmt_and_bfi_and_bfe_from_the_manual() {
        // Generic mode: {b, a} = {{b7..b4}, {b3..b0}}; selector nibbles pick bytes.
        let (a, b) = (0x0302_0100u64, 0x0706_0504u64);
        assert_eq!(run("prmt.b32", &[a, b, 0x7531]), 0x0705_0301);
        assert_eq!(run("prmt.b32", &[a, b, 0x3210]), 0x0302_0100);
        assert_eq!(run("prmt.b32", &[a, b, 0x4567]), 0x0405_0607);
        // 30212 = 0x7604: d.b0 = b4, d.b1 = b0, d.b2 = b6, d.b3 = b7.
        assert_eq!(
            run("prmt.b32", &[0xAABB_CCDD, 0x1122_3344, 30212]),
            0x1122_DD44
        );
        // The msb of a nibble replicates the byte's sign bit.
        // (Nibbles 1..3 are 0: byte 0 copied.)
        assert_eq!(run("prmt.b32", &[0x0000_8001, 0, 0x0009]), 0x0101_01FF);
        assert_eq!(run("prmt.b32", &[0x0000_8001, 0, 0x0008]), 0x0101_0100);
        // Modes.
        assert_eq!(run("prmt.b32.f4e", &[a, b, 1]), 0x0403_0201);
        assert_eq!(run("prmt.b32.b4e", &[a, b, 0]), 0x0506_0700);
        assert_eq!(run("prmt.b32.rc8", &[a, b, 2]), 0x0202_0202);
        assert_eq!(run("prmt.b32.ecl", &[a, b, 1]), 0x0302_0101);
        assert_eq!(run("prmt.b32.ecr", &[a, b, 2]), 0x0202_0100);
        assert_eq!(run("prmt.b32.rc16", &[a, b, 1]), 0x0302_0302);
        // bfi: insert the low `len` bits of a into b at `pos`.
        assert_eq!(run("bfi.b32", &[0xF, 0x0000_0000, 4, 4]), 0x0000_00F0);
        assert_eq!(run("bfi.b32", &[0x1FF, 0xFFFF_FFFF, 7, 25]), 0x0000_FFFF);
        assert_eq!(run("bfi.b32", &[0xFFFF, 0x1234_5678, 28, 8]), 0xF234_5678);
        assert_eq!(run("bfi.b32", &[0xFFFF, 0x1234_5678, 4, 0]), 0x1234_5678);
        assert_eq!(run("bfi.b32", &[0xFFFF, 0x1234_5678, 32, 4]), 0x1234_5678);
        // bfe: signed extraction replicates the field's top bit.
        assert_eq!(run("bfe.u32", &[0x0000_0F00, 8, 4]), 0xF);
        assert_eq!(run("bfe.s32", &[0x0000_0F00, 8, 4]), 0xFFFF_FFFF);
        assert_eq!(run("bfe.s32", &[0x0000_0700, 8, 4]), 7);
        assert_eq!(run("bfe.s32", &[0x8000_0000, 31, 8]), 0xFFFF_FFFF);
        assert_eq!(run("bfe.u32", &[0x8000_0000, 31, 8]), 1);
        assert_eq!(run("bfe.s32", &[0x8000_0000, 4, 0]), 0);
        // lop3 with 0xE8 is majority(a, b, c); shf funnels.
        assert_eq!(run("lop3.b32", &[0b1100, 0b1010, 0b0110, 0xE8]), 0b1110);
        assert_eq!(run("shf.l.wrap.b32", &[0x8000_0000, 0x1, 4]), 0x18);
        assert_eq!(run("shf.r.clamp.b32", &[0x0, 0x1, 40]), 0x1);
    }

    fn setp(opcode: &str, a: u64, b: u64) -> (u64, u64) {
        let i = inst(
            opcode,
            vec![Operand::RegPair(RegId(0), RegId(1)), reg(2), reg(3)],
        );
        let mut d = [9, 9];
        i.eval(&[a, b], &mut d);
        (d[0], d[1])
    }

    #[test]
    fn setp_all_comparisons() {
        let m1 = (-1i32) as u32 as u64;
        assert_eq!(setp("setp.lt.s32", m1, 1), (1, 0));
        assert_eq!(setp("setp.lt.u32", m1, 1), (0, 1));
        assert_eq!(setp("setp.lo.s32", m1, 1), (0, 1));
        assert_eq!(setp("setp.hi.s32", m1, 1), (1, 0));
        assert_eq!(setp("setp.hs.u32", 1, 1), (1, 0));
        assert_eq!(setp("setp.ls.u32", 2, 1), (0, 1));
        assert_eq!(setp("setp.ge.s32", 5, 5), (1, 0));
        assert_eq!(setp("setp.gt.s64", (-1i64) as u64, 0), (0, 1));
        assert_eq!(setp("setp.eq.b64", 1 << 40, 1 << 40), (1, 0));
        assert_eq!(setp("setp.ne.s16", 0xFFFF, 0xFFFF_FFFF), (0, 1));
        assert_eq!(setp("setp.le.s32", 4, 5), (1, 0));
        let nan = f(f32::NAN);
        let one = f(1.0);
        // Ordered comparisons are false with a NaN; unordered ones are true.
        for (c, ordered_nan, unordered_nan) in [
            ("eq", 0, 1),
            ("ne", 0, 1),
            ("lt", 0, 1),
            ("le", 0, 1),
            ("gt", 0, 1),
            ("ge", 0, 1),
        ] {
            assert_eq!(
                setp(&format!("setp.{c}.f32"), nan, one).0,
                ordered_nan,
                "{c}"
            );
            assert_eq!(
                setp(&format!("setp.{c}u.f32"), one, nan).0,
                unordered_nan,
                "{c}u"
            );
        }
        assert_eq!(setp("setp.ltu.f32", f(1.0), f(2.0)).0, 1);
        assert_eq!(setp("setp.ltu.f32", f(3.0), f(2.0)).0, 0);
        assert_eq!(
            setp("setp.geu.f32", f(f32::INFINITY), f(f32::INFINITY)).0,
            1
        );
        assert_eq!(setp("setp.num.f32", one, one).0, 1);
        assert_eq!(setp("setp.num.f32", one, nan).0, 0);
        assert_eq!(setp("setp.nan.f32", nan, one).0, 1);
        assert_eq!(setp("setp.eq.f32", f(0.0), f(-0.0)).0, 1);
        assert_eq!(setp("setp.lt.f64", (-1.0f64).to_bits(), 0), (1, 0));
        // .ftz: subnormals compare as zero.
        let sub = f(f32::from_bits(1));
        assert_eq!(setp("setp.gt.f32", sub, f(0.0)).0, 1);
        assert_eq!(setp("setp.gt.ftz.f32", sub, f(0.0)).0, 0);
        // BoolOp combination with a (negated) third source.
        let i = inst(
            "setp.lt.and.s32",
            vec![
                Operand::RegPair(RegId(0), RegId(1)),
                reg(2),
                reg(3),
                Operand::NotReg(RegId(4)),
            ],
        );
        let mut d = [0, 0];
        i.eval(&[1, 2, 0], &mut d);
        assert_eq!(d, [1, 0]);
        i.eval(&[1, 2, 1], &mut d);
        assert_eq!(d, [0, 0]);
        let i = inst("setp.ge.or.u32", vec![reg(0), reg(1), reg(2), reg(3)]);
        let mut d = [0];
        i.eval(&[1, 2, 1], &mut d);
        assert_eq!(d, [1]);
        // Unsigned operators on floats are rejected.
        assert!(lower("setp.lo.f32", &[reg(0), reg(1), reg(2)], |_| Type::F32).is_err());
    }

    #[test]
    fn mov_pack_unpack() {
        let i = inst(
            "mov.b32",
            vec![reg(0), Operand::Vector(vec![reg(1), reg(2)])],
        );
        let mut d = [0];
        i.eval(&[0xAAAA_1234, 0x5678], &mut d);
        assert_eq!(d[0], 0x5678_1234);
        // {0, %rs}: immediates in a vector.
        let i = inst(
            "mov.b32",
            vec![reg(0), Operand::Vector(vec![Operand::Int(0), reg(2)])],
        );
        i.eval(&[0, 0x3C00], &mut d);
        assert_eq!(d[0], 0x3C00_0000);
        let i = inst(
            "mov.b32",
            vec![Operand::Vector(vec![reg(1), Operand::Sink]), reg(0)],
        );
        assert_eq!(i.dst, vec![Some(RegId(1)), None]);
        let mut d = [0, 0];
        i.eval(&[0x5678_1234], &mut d);
        assert_eq!(d, [0x1234, 0x5678]);
        let i = inst(
            "mov.b64",
            vec![Operand::Vector(vec![reg(1), reg(2)]), reg(0)],
        );
        i.eval(&[0x1111_2222_3333_4444], &mut d);
        assert_eq!(d, [0x3333_4444, 0x1111_2222]);
        let i = inst(
            "mov.b64",
            vec![reg(0), Operand::Vector(vec![reg(1), reg(2)])],
        );
        let mut d = [0];
        i.eval(&[0x3333_4444, 0x1111_2222], &mut d);
        assert_eq!(d[0], 0x1111_2222_3333_4444);
        let i = inst("mov.f32", vec![reg(0), Operand::F32(0x3F80_0000)]);
        i.eval(&[0x3F80_0000], &mut d);
        assert_eq!(i.src, vec![Src::Imm(0x3F80_0000)]);
        assert_eq!(run("mov.u16", &[0x1_FFFF]), 0xFFFF);
        assert_eq!(run("mov.pred", &[1]), 1);
    }

    #[test]
    fn float_arithmetic() {
        assert_eq!(run("add.f32", &[f(1.0), f(2.0)]), f(3.0));
        assert_eq!(run("sub.f32", &[f(1.0), f(2.0)]), f(-1.0));
        assert_eq!(run("mul.f32", &[f(1.5), f(-2.0)]), f(-3.0));
        assert_eq!(run("fma.rn.f32", &[f(2.0), f(3.0), f(1.0)]), f(7.0));
        // div.rn.f32 is correctly rounded: 1/3, 2/3, 1/10, x/127.
        assert_eq!(run("div.rn.f32", &[f(1.0), f(3.0)]), 0x3EAA_AAAB);
        assert_eq!(run("div.rn.f32", &[f(2.0), f(3.0)]), 0x3F2A_AAAB);
        assert_eq!(run("div.rn.f32", &[f(1.0), f(10.0)]), 0x3DCC_CCCD);
        for k in [-500i32, -127, -1, 1, 3, 77, 126, 127, 1000] {
            let x = k as f32 * 0.37;
            let exact = x as f64 / 127.0;
            let got = f32::from_bits(run("div.rn.f32", &[f(x), f(127.0)]) as u32);
            // Correct rounding: no f32 is closer to the exact quotient.
            for n in [got.next_up(), got.next_down()] {
                assert!(((n as f64) - exact).abs() >= ((got as f64) - exact).abs());
            }
        }
        assert_eq!(run("div.rn.f32", &[f(1.0), f(0.0)]), f(f32::INFINITY));
        assert_eq!(run("div.rn.f32", &[f(0.0), f(0.0)]), 0x7FFF_FFFF);
        assert_eq!(run("div.rz.f32", &[f(1.0), f(3.0)]), 0x3EAA_AAAA);
        assert_eq!(
            run("div.rn.f64", &[1.0f64.to_bits(), 3.0f64.to_bits()]),
            (1.0f64 / 3.0).to_bits()
        );
        assert_eq!(run("div.full.f32", &[f(1.0), f(4.0)]), f(0.25));
        assert_eq!(run("div.approx.f32", &[f(1.0), f(2f32.powi(127))]), f(0.0));
        assert_eq!(
            run("div.approx.f32", &[f(f32::INFINITY), f(2f32.powi(127))]),
            0x7FFF_FFFF
        );
        assert_eq!(
            run("div.full.f32", &[f(1.0), f(2f32.powi(127))]),
            f(2f32.powi(-127))
        );
        assert_eq!(run("rcp.rn.f32", &[f(4.0)]), f(0.25));
        assert_eq!(run("rcp.rn.f32", &[f(3.0)]), 0x3EAA_AAAB);
        assert_eq!(run("sqrt.rn.f32", &[f(2.0)]), 0x3FB5_04F3);
        assert_eq!(run("sqrt.rn.f32", &[f(-1.0)]), 0x7FFF_FFFF);
        assert_eq!(
            run("add.f64", &[1.5f64.to_bits(), 2.25f64.to_bits()]),
            3.75f64.to_bits()
        );
        assert_eq!(run("abs.f32", &[f(-2.0)]), f(2.0));
        assert_eq!(run("neg.f32", &[f(2.0)]), f(-2.0));
        assert_eq!(run("neg.f32", &[f(0.0)]), 0x8000_0000);
        assert_eq!(run("copysign.f32", &[f(-1.0), f(3.0)]), f(-3.0));
        // .ftz and .sat.
        let sub = f(f32::from_bits(0x0000_0100));
        assert_eq!(run("add.f32", &[sub, f(0.0)]), sub);
        assert_eq!(run("add.ftz.f32", &[sub, f(0.0)]), 0);
        assert_eq!(
            run("mul.ftz.f32", &[f(2f32.powi(-70)), f(2f32.powi(-70))]),
            0
        );
        assert_eq!(run("add.sat.f32", &[f(0.75), f(0.5)]), f(1.0));
        assert_eq!(run("add.sat.f32", &[f(-0.75), f(0.5)]), 0);
        assert_eq!(run("mul.sat.f32", &[f(f32::NAN), f(1.0)]), 0);
        // NaN results are canonical.
        assert_eq!(run("add.f32", &[0x7FC0_0001, f(1.0)]), 0x7FFF_FFFF);
        assert_eq!(run("ex2.approx.ftz.f32", &[f(3.0)]), f(8.0));
        assert_eq!(run("lg2.approx.f32", &[f(8.0)]), f(3.0));
        assert_eq!(run("rsqrt.approx.f32", &[f(4.0)]), f(0.5));
        let t = f32::from_bits(run("tanh.approx.f32", &[f(0.5)]) as u32);
        assert!((t - 0.5f32.tanh()).abs() < 1e-6);
    }

    #[test]
    fn float_min_max_nan_rules() {
        let nan = f(f32::NAN);
        assert_eq!(run("max.f32", &[nan, f(1.0)]), f(1.0));
        assert_eq!(run("max.f32", &[f(1.0), nan]), f(1.0));
        assert_eq!(run("min.f32", &[nan, f(-1.0)]), f(-1.0));
        assert_eq!(run("min.f32", &[nan, nan]), 0x7FFF_FFFF);
        assert_eq!(run("max.NaN.f32", &[nan, f(1.0)]), 0x7FFF_FFFF);
        assert_eq!(run("max.f32", &[f(-0.0), f(0.0)]), 0);
        assert_eq!(run("max.f32", &[f(0.0), f(-0.0)]), 0);
        assert_eq!(run("min.f32", &[f(0.0), f(-0.0)]), 0x8000_0000);
        assert_eq!(run("min.f32", &[f(-3.0), f(2.0)]), f(-3.0));
        assert_eq!(run("max.f32", &[f(-3.0), f(2.0)]), f(2.0));
        assert_eq!(
            run("max.f64", &[f64::NAN.to_bits(), 2.0f64.to_bits()]),
            2.0f64.to_bits()
        );
    }

    #[test]
    fn cvt_forms() {
        let h = |x: u64| x & 0xFFFF;
        // f32 -> f16 / bf16 at ties (see float.rs for the full set).
        assert_eq!(h(run("cvt.rn.f16.f32", &[f(1.0 + 2f32.powi(-11))])), 0x3C00);
        assert_eq!(
            h(run("cvt.rn.f16.f32", &[f(1.0 + 3.0 * 2f32.powi(-11))])),
            0x3C02
        );
        assert_eq!(run("cvt.rn.f16.f32", &[f(65520.0)]), 0x7C00);
        assert_eq!(run("cvt.rz.f16.f32", &[f(65520.0)]), 0x7BFF);
        assert_eq!(run("cvt.rn.satfinite.f16.f32", &[f(1e9)]), 0x7BFF);
        assert_eq!(run("cvt.rn.relu.f16.f32", &[f(-2.0)]), 0);
        assert_eq!(run("cvt.rn.f16.f32", &[f(f32::NAN)]), 0x7FFF);
        assert_eq!(run("cvt.rn.bf16.f32", &[0x3F80_8000]), 0x3F80);
        assert_eq!(run("cvt.rn.bf16.f32", &[0x3F81_8000]), 0x3F82);
        assert_eq!(run("cvt.rn.bf16.f32", &[f(f32::NAN)]), 0x7FFF);
        assert_eq!(run("cvt.f32.f16", &[0x3C00]), f(1.0));
        assert_eq!(run("cvt.f32.f16", &[0x0001]), f(2f32.powi(-24)));
        assert_eq!(run("cvt.f32.f16", &[0xFC00]), f(f32::NEG_INFINITY));
        assert_eq!(run("cvt.f32.f16", &[0x7E00]), 0x7FFF_FFFF);
        assert_eq!(run("cvt.f32.bf16", &[0xC049]), 0xC049_0000);
        // Packed: a in the upper half, b in the lower.
        assert_eq!(run("cvt.rn.f16x2.f32", &[f(1.0), f(2.0)]), 0x3C00_4000);
        assert_eq!(run("cvt.rn.bf16x2.f32", &[f(1.0), f(2.0)]), 0x3F80_4000);
        // Integer -> float.
        assert_eq!(run("cvt.rn.f32.s32", &[0xFFFF_FFFF]), f(-1.0));
        assert_eq!(run("cvt.rn.f32.s16", &[0xFFFE]), f(-2.0));
        assert_eq!(run("cvt.rn.f32.u32", &[0xFFFF_FFFF]), f(4294967296.0));
        assert_eq!(run("cvt.rz.f32.u32", &[0xFFFF_FFFF]), f(4294967040.0));
        // 2^24 + 1 ties to even (2^24); 2^24 + 3 ties up.
        assert_eq!(run("cvt.rn.f32.s32", &[(1 << 24) + 1]), f(16777216.0));
        assert_eq!(run("cvt.rn.f32.s32", &[(1 << 24) + 3]), f(16777220.0));
        assert_eq!(
            run("cvt.rn.f64.s32", &[0x8000_0000]),
            (-2147483648.0f64).to_bits()
        );
        assert_eq!(
            run("cvt.rn.f64.u64", &[u64::MAX]),
            18446744073709551616.0f64.to_bits()
        );
        assert_eq!(
            run("cvt.rz.f64.u64", &[u64::MAX]),
            ((u64::MAX - 2047) as f64).to_bits()
        );
        assert_eq!(run("cvt.rn.f16.s32", &[2049]), 0x6800); // 2049 ties to 2048
                                                            // Float -> integer: rounding, saturation, NaN -> 0.
        assert_eq!(run("cvt.rzi.s32.f32", &[f(-2.7)]), (-2i32) as u32 as u64);
        assert_eq!(run("cvt.rni.s32.f32", &[f(2.5)]), 2);
        assert_eq!(run("cvt.rni.s32.f32", &[f(3.5)]), 4);
        assert_eq!(run("cvt.rmi.s32.f32", &[f(-2.1)]), (-3i32) as u32 as u64);
        assert_eq!(run("cvt.rpi.s32.f32", &[f(2.1)]), 3);
        assert_eq!(run("cvt.rzi.s32.f32", &[f(3e9)]), 0x7FFF_FFFF);
        assert_eq!(run("cvt.rzi.s32.f32", &[f(-3e9)]), 0x8000_0000);
        assert_eq!(run("cvt.rzi.u32.f32", &[f(-5.0)]), 0);
        assert_eq!(run("cvt.rzi.s32.f32", &[f(f32::NAN)]), 0);
        assert_eq!(run("cvt.rzi.s8.f32", &[f(-300.0)]), 0x80);
        assert_eq!(run("cvt.rzi.s32.f32", &[f(f32::INFINITY)]), 0x7FFF_FFFF);
        // Float -> float.
        assert_eq!(run("cvt.rni.f32.f32", &[f(2.5)]), f(2.0));
        assert_eq!(run("cvt.rni.f32.f32", &[f(-3.5)]), f(-4.0));
        assert_eq!(run("cvt.rzi.f32.f32", &[f(-3.7)]), f(-3.0));
        assert_eq!(run("cvt.f64.f32", &[f(0.1)]), (0.1f32 as f64).to_bits());
        assert_eq!(run("cvt.rn.f32.f64", &[0.1f64.to_bits()]), f(0.1));
        assert_eq!(
            run("cvt.rz.f32.f64", &[(1.0f64 + 2f64.powi(-30)).to_bits()]),
            f(1.0)
        );
        assert_eq!(
            run("cvt.rp.f32.f64", &[(1.0f64 + 2f64.powi(-30)).to_bits()]),
            f(1.0 + 2f32.powi(-23))
        );
        assert_eq!(run("cvt.ftz.f32.f32", &[1]), 0);
        assert_eq!(run("cvt.sat.f32.f32", &[f(1.5)]), f(1.0));
        assert_eq!(run("cvt.rn.f16.f64", &[1.0f64.to_bits()]), 0x3C00);
        // Integer <-> integer: sign extension, truncation, saturation.
        assert_eq!(run("cvt.s64.s32", &[0xFFFF_FFFF]), u64::MAX);
        assert_eq!(run("cvt.u64.u32", &[0xFFFF_FFFF]), 0xFFFF_FFFF);
        assert_eq!(run("cvt.u32.u64", &[0x1_2345_6789]), 0x2345_6789);
        assert_eq!(run("cvt.u16.u32", &[0x1_2345]), 0x2345);
        assert_eq!(run("cvt.u16.u64", &[u64::MAX]), 0xFFFF);
        assert_eq!(run("cvt.s16.s8", &[0x80]), 0xFF80);
        assert_eq!(run("cvt.s32.s16", &[0x8000]), 0xFFFF_8000);
        assert_eq!(run("cvt.u32.u16", &[0xFFFF_8000]), 0x8000);
        assert_eq!(run("cvt.sat.s8.s32", &[1000]), 0x7F);
        assert_eq!(run("cvt.sat.u8.s32", &[(-5i32) as u32 as u64]), 0);
        assert_eq!(run("cvt.sat.s32.u32", &[0xFFFF_FFFF]), 0x7FFF_FFFF);
        // Rejected forms name themselves.
        let e = lower("cvt.f16.f32", &[reg(0), reg(1)], |_| Type::F32).unwrap_err();
        assert!(e.contains("cvt.f16.f32"), "{e}");
        assert!(lower("cvt.s32.f32", &[reg(0), reg(1)], |_| Type::F32).is_err());
    }

    #[test]
    fn immediates_follow_the_instruction_type() {
        // An f32 immediate of a f64 op is converted to f64.
        let i = inst("add.f64", vec![reg(0), reg(1), Operand::F32(0x3F80_0000)]);
        assert_eq!(i.src[1], Src::Imm(1.0f64.to_bits()));
        let i = inst(
            "div.rn.f32",
            vec![reg(0), reg(1), Operand::F32(0x42FE_0000)],
        );
        let mut d = [0];
        i.eval(&[f(254.0), 0x42FE_0000], &mut d);
        assert_eq!(d[0], f(2.0));
        let i = inst("and.b32", vec![reg(0), reg(1), Operand::Int(-256)]);
        i.eval(&[0x1234_5678, (-256i64) as u64], &mut d);
        assert_eq!(d[0], 0x1234_5600);
    }

    /// Every ALU instruction of the crate's kernels (`ptx/*.ptx`) and of the emulator's test
    /// kernels (`tests/kernels/*.ptx`) lowers.
    #[test]
    fn lowers_every_alu_form_of_the_crate_ptx() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut forms = std::collections::BTreeSet::new();
        let entries = [root.join("../ptx"), root.join("tests/kernels")]
            .into_iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("ptx") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Parse failures are the parser's tests' business.
            let Ok(module) = crate::ptx::parse_ptx(&text) else {
                continue;
            };
            for k in &module.kernels {
                for i in &k.body {
                    // The engine resolves symbols to immediates and reads special registers
                    // itself before it calls `lower`.
                    if i.operands.iter().any(|o| matches!(o, Operand::Special(_))) {
                        continue;
                    }
                    let ops: Vec<Operand> = i
                        .operands
                        .iter()
                        .map(|o| match o {
                            Operand::Symbol(_) => Operand::Int(0x1000),
                            o => o.clone(),
                        })
                        .collect();
                    let r = lower(&i.opcode, &ops, |r| k.regs[r.0 as usize].ty);
                    match r {
                        Ok(Some(_)) => {
                            forms.insert(i.opcode.clone());
                        }
                        Ok(None) => {}
                        Err(e) => panic!("{}: {} (PTX line {})", k.name, e, i.ptx_line),
                    }
                }
            }
        }
        assert!(forms.len() > 100, "{forms:?}");
    }

    /// Rough per-lane evaluation cost (run with `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn eval_throughput() {
        for (op, n) in [
            ("add.s32", 2),
            ("fma.rn.f32", 3),
            ("div.rn.f32", 2),
            ("cvt.rn.f16.f32", 1),
            ("cvt.f32.f16", 1),
            ("setp.lt.s32", 2),
            ("mul.wide.s32", 2),
        ] {
            let mut ops = vec![reg(0)];
            ops.extend((0..n).map(|i| reg(i + 1)));
            let i = inst(op, ops);
            let mut src = [f(1.1), f(2.3), f(0.7)];
            let mut d = [0u64; 2];
            let t = std::time::Instant::now();
            let iters = 20_000_000u64;
            for k in 0..iters {
                src[0] = (src[0] ^ (k & 0xFF)) | 0x3F00_0000;
                i.eval(&src[..n as usize], &mut d);
                src[1] = std::hint::black_box(d[0]) & 0x3FFF_FFFF;
            }
            let ns = t.elapsed().as_nanos() as f64 / iters as f64;
            println!("{op}: {ns:.2} ns per lane");
        }
        // Whole warps through eval_warp.
        for (op, n) in [
            ("add.s32", 2usize),
            ("fma.rn.f32", 3),
            ("cvt.rn.f16.f32", 1),
        ] {
            let mut ops = vec![reg(0)];
            ops.extend((0..n).map(|i| reg(i as u32 + 1)));
            let i = inst(op, ops);
            let mut src = vec![[f(1.1); 32]; n];
            let mut d = vec![[0u64; 32]; 1];
            let iters = 1_000_000u64;
            let t = std::time::Instant::now();
            for k in 0..iters {
                src[0][(k & 31) as usize] ^= k & 0xFF;
                i.eval_warp(&mut src, &mut d);
                src[1 % n][3] = std::hint::black_box(d[0][7]) & 0x3FFF_FFFF;
            }
            let ns = t.elapsed().as_nanos() as f64 / iters as f64;
            println!("{op}: {ns:.1} ns per warp (eval_warp)");
        }
        // The loop alone, for calibration on a loaded machine.
        let mut src = [f(1.1), f(2.3), f(0.7)];
        let t = std::time::Instant::now();
        for k in 0..20_000_000u64 {
            src[0] = (src[0] ^ (k & 0xFF)) | 0x3F00_0000;
            src[1] = std::hint::black_box(src[0].wrapping_add(src[1])) & 0x3FFF_FFFF;
        }
        println!("loop only: {:.2} ns", t.elapsed().as_nanos() as f64 / 2e7);
    }

    /// `eval_warp` agrees with `eval` lane by lane on varied inputs, for the specialised
    /// forms and the fallback alike.
    #[test]
    fn eval_warp_matches_eval() {
        let forms: &[(&str, usize)] = &[
            ("mov.b32", 1),
            ("add.s32", 2),
            ("add.s64", 2),
            ("sub.s32", 2),
            ("mul.lo.s64", 2),
            ("mad.lo.s32", 3),
            ("mul.wide.s32", 2),
            ("mul.wide.u32", 2),
            ("mul.wide.u16", 2),
            ("and.b32", 2),
            ("or.pred", 2),
            ("xor.b64", 2),
            ("shl.b64", 2),
            ("shr.s32", 2),
            ("selp.b32", 3),
            ("fma.rn.f32", 3),
            ("add.f32", 2),
            ("mul.f32", 2),
            ("div.rn.f32", 2),
            ("cvt.rn.f16.f32", 1),
            ("cvt.f32.f16", 1),
            ("cvt.s64.s32", 1),
            ("cvt.u32.u64", 1),
            ("cvt.u16.u32", 1),
            ("cvt.s16.s8", 1),
            ("cvt.rn.f32.s16", 1),
            ("cvt.rn.f32.s32", 1),
            ("cvt.rn.f32.u32", 1),
            ("cvt.f32.bf16", 1),
            ("cvt.rn.bf16.f32", 1),
            ("cvt.rn.relu.f16.f32", 1),
            ("cvt.sat.s8.s32", 1),
            ("cvt.rzi.s32.f32", 1),
            ("cvt.rn.bf16x2.f32", 2),
            ("max.f32", 2),
            ("prmt.b32", 3),
            ("add.f16x2", 2),
            ("fma.rn.bf16x2", 3),
            ("setp.geu.f32", 2),
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for &(op, n) in forms {
            let mut ops = vec![reg(0)];
            ops.extend((0..n).map(|i| reg(i as u32 + 1)));
            let i = inst(op, ops);
            for round in 0..20 {
                let mut src = vec![[0u64; 32]; n];
                for s in src.iter_mut() {
                    for v in s.iter_mut() {
                        let r = next();
                        *v = match round % 4 {
                            0 => r,
                            1 => r & 0xFFFF_FFFF,
                            2 => r & 1,
                            _ => (r & 0x807F_FFFF) | 0x3F00_0000, // f32 near 1
                        };
                    }
                }
                let mut dst = vec![[0u64; 32]; i.dst.len()];
                let mut src_w = src.clone();
                i.eval_warp(&mut src_w, &mut dst);
                for l in 0..32 {
                    let s: Vec<u64> = src.iter().map(|s| s[l]).collect();
                    let mut d = vec![0u64; i.dst.len()];
                    i.eval(&s, &mut d);
                    for k in 0..d.len() {
                        assert_eq!(dst[k][l], d[k], "{op} lane {l} inputs {s:x?}");
                    }
                }
            }
        }
        // A negated predicate source and a two-destination setp.
        let i = inst(
            "setp.lt.and.s32",
            vec![
                Operand::RegPair(RegId(0), RegId(1)),
                reg(2),
                reg(3),
                Operand::NotReg(RegId(4)),
            ],
        );
        let mut src = vec![[1u64; 32], [2u64; 32], [0u64; 32]];
        src[2][5] = 1;
        let mut dst = vec![[9u64; 32]; 2];
        i.eval_warp(&mut src, &mut dst);
        assert_eq!((dst[0][0], dst[1][0]), (1, 0));
        assert_eq!((dst[0][5], dst[1][5]), (0, 0));
    }

    #[test]
    fn half_precision_arithmetic() {
        // f16: 1 + 2^-11 ties to 1.0 (even); (1 + 2^-10) + 2^-11 ties up to 1 + 2^-9.
        assert_eq!(run("add.f16", &[0x3C00, 0x1000]), 0x3C00);
        assert_eq!(run("add.rn.f16", &[0x3C01, 0x1000]), 0x3C02);
        assert_eq!(run("sub.f16", &[0x4000, 0x3C00]), 0x3C00);
        assert_eq!(run("sub.f16", &[0x3C00, 0x3C00]), 0x0000);
        assert_eq!(run("mul.f16", &[0x4000, 0xC200]), 0xC600); // 2 * -3 = -6
        assert_eq!(run("mul.f16", &[0x7BFF, 0x4000]), 0x7C00); // overflow to Inf
        assert_eq!(run("add.f16", &[0x7C00, 0xFC00]), 0x7FFF); // Inf - Inf: canonical NaN
        assert_eq!(run("add.f16", &[0x7C00, 0x3C00]), 0x7C00);
        // fma is fused: (1 + 2^-10)^2 - (1 + 2^-9) = 2^-20 exactly (the f16 subnormal
        // 0x0010); a product rounded first (to 1 + 2^-9) would give 0.
        assert_eq!(run("fma.rn.f16", &[0x3C01, 0x3C01, 0xBC02]), 0x0010);
        // (1 + 2^-10)^2 - 1 = 2^-9 + 2^-20 is a tie in f16 and goes to even, 2^-9.
        assert_eq!(run("fma.rn.f16", &[0x3C01, 0x3C01, 0xBC00]), 0x1800);
        assert_eq!(run("fma.rn.f16", &[0x3C01, 0x3C01, 0x0000]), 0x3C02);
        assert_eq!(run("fma.rn.relu.f16", &[0x3C00, 0xC000, 0x3C00]), 0); // 1*-2+1 < 0
        assert_eq!(run("fma.rn.sat.f16", &[0x4000, 0x4000, 0x0000]), 0x3C00); // 4 -> 1
                                                                              // Packed: each half independently.
        assert_eq!(run("add.f16x2", &[0x3C00_4000, 0x3C00_3C00]), 0x4000_4200);
        assert_eq!(
            run("fma.rn.f16x2", &[0x4000_3C00, 0x4000_4000, 0x3C00_0000]),
            0x4500_4000
        );
        assert_eq!(run("neg.f16x2", &[0x3C00_BC00]), 0xBC00_3C00);
        assert_eq!(run("abs.bf16", &[0xBF80]), 0x3F80);
        // bf16: 1 + 2^-8 ties to 1 (even); 1.5 * 2 + 0.25 = 3.25 (0x4050).
        assert_eq!(run("add.rn.bf16", &[0x3F80, 0x3B80]), 0x3F80);
        assert_eq!(run("fma.rn.bf16", &[0x3FC0, 0x4000, 0x3E80]), 0x4050);
        assert_eq!(
            run("fma.rn.bf16x2", &[0x3FC0_3F80, 0x4000_4000, 0x3E80_0000]),
            0x4050_4000
        );
        // min/max NaN rules and signed zeros.
        assert_eq!(run("max.f16", &[0x7E00, 0x3C00]), 0x3C00);
        assert_eq!(run("max.NaN.f16", &[0x7E00, 0x3C00]), 0x7FFF);
        assert_eq!(run("min.f16", &[0x0000, 0x8000]), 0x8000);
        assert_eq!(run("max.bf16x2", &[0x3F80_BF80, 0x4000_C000]), 0x4000_BF80);
        // .ftz flushes f16 subnormals (0x0001 = 2^-24).
        assert_eq!(run("add.f16", &[0x0001, 0x0001]), 0x0002);
        assert_eq!(run("add.ftz.f16", &[0x0001, 0x0001]), 0x0000);
        assert!(lower("fma.f16", &[reg(0), reg(1), reg(2), reg(3)], |_| Type::B16).is_err());
    }
}
