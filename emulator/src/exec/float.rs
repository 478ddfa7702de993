//! Floating-point rounding for the interpreter: conversions between f64/f32 and the narrower
//! binary formats (f16, bf16, f32) in every IEEE rounding direction, and the directed-rounding
//! (`.rz`, `.rm`, `.rp`) forms of f32 arithmetic.
//!
//! Semantics follow NVIDIA's PTX ISA manual (`cvt`, "Floating-Point Conversion: Special Value
//! and Saturation Behavior"): to f16/bf16/f32/f64 an out-of-range finite value rounds to the
//! nearest representable value, which may be ±Inf under `.rn` (and is ±MAX under `.rz` or the
//! directed mode pointing toward zero); ±Inf stays ±Inf; NaN stays NaN. NaN results are the
//! canonical NaN of the destination format (`0x7FFF` for f16 and bf16, `0x7FFF_FFFF` for f32,
//! `0x7FFF_FFFF_FFFF_FFFF` for f64), as the manual's min/max and the hardware produce.
//! Subnormals are kept unless `.ftz` asks otherwise.
//!
//! Method: every value to be rounded is handed over as an f64 `x` plus the sign of the
//! residual `r` (the exact value is `x + r` with `|r|` below half an ulp of `x` in f64, and
//! `r` only matters when `x` itself is representable or a tie in the narrow format).
//! [`round_f64`] then rounds `x + r` exactly into the target format with integer arithmetic on
//! the significand (no floating-point tricks in the rounding decision). Callers obtain exact
//! `(x, sign(r))` pairs with error-free transformations: products of f32 values are exact in
//! f64; sums use TwoSum; quotients and square roots use an f64 fused multiply-add to get the
//! sign of the remainder. For round-to-nearest of `+ - * / sqrt` on f32 the plain f64 result
//! rounded once to f32 is already correctly rounded (double rounding is innocuous because
//! 53 >= 2*24 + 2), which keeps the hot paths fast.

/// IEEE rounding direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rnd {
    /// `.rn`: to nearest, ties to even.
    Rn,
    /// `.rz`: toward zero.
    Rz,
    /// `.rm`: toward minus infinity.
    Rm,
    /// `.rp`: toward plus infinity.
    Rp,
}

/// A binary floating-point storage format narrower than f64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fmt {
    F16,
    Bf16,
    F32,
}

impl Fmt {
    /// (exponent bits, stored mantissa bits).
    const fn params(self) -> (u32, u32) {
        match self {
            Fmt::F16 => (5, 10),
            Fmt::Bf16 => (8, 7),
            Fmt::F32 => (8, 23),
        }
    }

    /// The canonical NaN of the format.
    pub const fn canonical_nan(self) -> u32 {
        match self {
            Fmt::F16 | Fmt::Bf16 => 0x7FFF,
            Fmt::F32 => 0x7FFF_FFFF,
        }
    }

    /// Bits of +Inf.
    pub const fn inf(self) -> u32 {
        let (e, m) = self.params();
        ((1 << e) - 1) << m
    }

    /// Bits of the largest finite value.
    pub const fn max_finite(self) -> u32 {
        self.inf() - 1
    }

    /// Bit position of the sign.
    pub const fn sign_bit(self) -> u32 {
        let (e, m) = self.params();
        1 << (e + m)
    }

    /// The value of `bits` (exactly) as an f64; NaN for NaN bits.
    pub fn to_f64(self, bits: u32) -> f64 {
        let (e, m) = self.params();
        let sign = bits & self.sign_bit() != 0;
        let exp = (bits >> m) & ((1 << e) - 1);
        let man = bits & ((1 << m) - 1);
        let bias = (1i32 << (e - 1)) - 1;
        let mag = if exp == (1 << e) - 1 {
            if man == 0 {
                f64::INFINITY
            } else {
                return f64::NAN;
            }
        } else if exp == 0 {
            // Subnormal: man * 2^(1 - bias - m); exact in f64.
            man as f64 * pow2(1 - bias - m as i32)
        } else {
            (man | (1 << m)) as f64 * pow2(exp as i32 - bias - m as i32)
        };
        if sign {
            -mag
        } else {
            mag
        }
    }
}

/// 2^e as an f64, exact for -1074 <= e <= 1023.
fn pow2(e: i32) -> f64 {
    if e >= -1022 {
        f64::from_bits(((e + 1023) as u64) << 52)
    } else {
        // Subnormal powers of two.
        f64::from_bits(1u64 << (e + 1074))
    }
}

/// Rounds the exact value `x + r` (where `resid` is the sign of `r`: -1, 0 or +1, and `|r|` is
/// below half an f64 ulp of `x`) to `fmt` in direction `rnd`, returning the bits. NaN gives the
/// canonical NaN, ±Inf gives ±Inf.
pub fn round_f64(x: f64, resid: i8, fmt: Fmt, rnd: Rnd) -> u32 {
    if x.is_nan() {
        return fmt.canonical_nan();
    }
    let neg = x.is_sign_negative();
    let sign = if neg { fmt.sign_bit() } else { 0 };
    if x.is_infinite() {
        return sign | fmt.inf();
    }
    // The residual relative to the magnitude: >0 means |exact| > |x|.
    let r = if neg { -resid } else { resid };
    // Whether this direction rounds the magnitude away from zero (for inexact values).
    let away = match rnd {
        Rnd::Rn => None,
        Rnd::Rz => Some(false),
        Rnd::Rm => Some(neg),
        Rnd::Rp => Some(!neg),
    };
    let a = x.abs();
    if a == 0.0 {
        // The exact value is 0 or a tiny value of sign `resid` beyond any format's range.
        if r > 0 && away == Some(true) {
            return sign | 1;
        }
        return sign;
    }
    let (ebits, mbits) = fmt.params();
    let bias = (1i32 << (ebits - 1)) - 1;
    let emin = 1 - bias;
    let emax = bias;
    // The binade of a: a in [2^e, 2^(e+1)).
    let abits = a.to_bits();
    let e = if (abits >> 52) == 0 {
        // f64 subnormal: far below every format's subnormal range.
        -1075
    } else {
        ((abits >> 52) as i32) - 1023
    };
    if e > emax {
        // Beyond the largest binade: overflow.
        return sign
            | match away {
                None | Some(true) => fmt.inf(),
                Some(false) => fmt.max_finite(),
            };
    }
    // Quantum exponent: the value of one unit in the last place.
    let q = e.max(emin) - mbits as i32;
    // a / 2^q, split into integer n and fraction; for a tiny a (below half the smallest
    // subnormal quantum) n = 0 and the fraction decides alone.
    let (n, frac_cmp_half, frac_zero) = if q - e > 60 {
        // a < 2^(q-60): n = 0, fraction below one half and nonzero.
        (0u64, std::cmp::Ordering::Less, false)
    } else {
        let scaled = a * pow2(-q); // exact: power-of-two scaling without overflow
        let n = scaled.floor();
        let frac = scaled - n; // exact
        (n as u64, frac.partial_cmp(&0.5).unwrap(), frac == 0.0)
    };
    // Truncated magnitude bits: n * 2^q.
    let trunc_bits = encode(n, q, mbits, bias);
    let bits = match away {
        None => {
            // Round to nearest even.
            let up = match frac_cmp_half {
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Equal => match r {
                    1.. => true,
                    ..=-1 => false,
                    0 => n & 1 == 1,
                },
            };
            trunc_bits + up as u32
        }
        Some(true) => {
            if !frac_zero || r > 0 {
                trunc_bits + 1
            } else {
                trunc_bits
            }
        }
        Some(false) => {
            if frac_zero && r < 0 {
                trunc_bits - 1
            } else {
                trunc_bits
            }
        }
    };
    // A carry out of the largest binade lands exactly on the Inf encoding, which is right for
    // round-to-nearest and away-from-zero rounding.
    sign | bits
}

/// Bits of the magnitude n * 2^q where n < 2^(mbits+1) is the integer significand at quantum q.
fn encode(n: u64, q: i32, mbits: u32, bias: i32) -> u32 {
    let n = n as u32;
    if n >= 1 << mbits {
        let biased = (q + mbits as i32 + bias) as u32;
        (biased << mbits) | (n - (1 << mbits))
    } else {
        // Subnormal (q is the minimum quantum) or zero.
        n
    }
}

/// f32 value -> format bits with rounding (exact input).
pub fn f32_to(fmt: Fmt, x: f32, rnd: Rnd) -> u32 {
    round_f64(x as f64, 0, fmt, rnd)
}

/// `cvt.rn.f16.f32` and friends: f32 -> f16 bits.
pub fn f32_to_f16(x: f32, rnd: Rnd) -> u16 {
    if rnd == Rnd::Rn {
        return f32_to_f16_rn(x);
    }
    f32_to(Fmt::F16, x, rnd) as u16
}

/// f32 -> bf16 bits.
pub fn f32_to_bf16(x: f32, rnd: Rnd) -> u16 {
    if rnd == Rnd::Rn {
        return f32_to_bf16_rn(x);
    }
    f32_to(Fmt::Bf16, x, rnd) as u16
}

/// Round-to-nearest-even f32 -> f16 on the bits (the fast path of [`round_f64`]; the tests
/// check the two agree).
#[inline]
pub fn f32_to_f16_rn(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let abs = bits & 0x7FFF_FFFF;
    if abs > 0x7F80_0000 {
        return 0x7FFF; // canonical NaN
    }
    if abs >= 0x477F_F000 {
        // >= 65520, the tie between 65504 and 65536 (even: Inf), and Inf itself.
        return sign | 0x7C00;
    }
    if abs >= 0x3880_0000 {
        // Normal f16: round the 13 dropped bits to nearest even, then rebias 127 -> 15.
        let r = abs + 0xFFF + ((abs >> 13) & 1);
        return sign | ((r >> 13) - (112 << 10)) as u16;
    }
    // Below 2^-14: adding 0.5 (whose ulp is 2^-24, the f16 subnormal quantum) rounds to
    // nearest even in the FPU; what remains above 0.5 is the subnormal significand (0x400 is
    // the smallest normal's encoding, which is right).
    let f = f32::from_bits(abs) + 0.5;
    sign | (f.to_bits() - 0x3F00_0000) as u16
}

/// Round-to-nearest-even f32 -> bf16 on the bits.
#[inline]
pub fn f32_to_bf16_rn(x: f32) -> u16 {
    let bits = x.to_bits();
    if bits & 0x7FFF_FFFF > 0x7F80_0000 {
        return 0x7FFF; // canonical NaN
    }
    // Adding 0x7FFF plus the kept lsb rounds the 16 dropped bits to nearest even; a carry out
    // of the largest finite value lands on Inf.
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// f16 bits -> f32 (exact; NaN gives the canonical f32 NaN).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits & 0x8000) as u32) << 16;
    let exp = ((bits >> 10) & 0x1F) as u32;
    let man = (bits & 0x3FF) as u32;
    if exp == 0x1F {
        return if man == 0 {
            f32::from_bits(sign | 0x7F80_0000)
        } else {
            f32::from_bits(Fmt::F32.canonical_nan())
        };
    }
    if exp == 0 {
        // Zero or subnormal: man * 2^-24, exact in f32.
        let mag = man as f32 * f32::from_bits(0x3380_0000);
        return f32::from_bits(sign | mag.to_bits());
    }
    f32::from_bits(sign | ((exp + 112) << 23) | (man << 13))
}

/// bf16 bits -> f32 (exact; NaN gives the canonical f32 NaN).
pub fn bf16_to_f32(bits: u16) -> f32 {
    let b = (bits as u32) << 16;
    let v = f32::from_bits(b);
    if v.is_nan() {
        f32::from_bits(Fmt::F32.canonical_nan())
    } else {
        v
    }
}

/// f64 -> f32 with rounding (exact input).
pub fn f64_to_f32(x: f64, rnd: Rnd) -> f32 {
    if rnd == Rnd::Rn {
        if x.is_nan() {
            return f32::from_bits(Fmt::F32.canonical_nan());
        }
        return x as f32;
    }
    f32::from_bits(round_f64(x, 0, Fmt::F32, rnd))
}

/// The canonical f32 NaN.
pub const F32_NAN: f32 = f32::from_bits(0x7FFF_FFFF);
/// The canonical f64 NaN.
pub const F64_NAN: f64 = f64::from_bits(0x7FFF_FFFF_FFFF_FFFF);

/// Canonicalises an f32 NaN result.
#[inline]
pub fn canon32(x: f32) -> f32 {
    if x.is_nan() {
        F32_NAN
    } else {
        x
    }
}

/// Canonicalises an f64 NaN result.
#[inline]
pub fn canon64(x: f64) -> f64 {
    if x.is_nan() {
        F64_NAN
    } else {
        x
    }
}

/// Sign of a residual as -1, 0, +1.
#[inline]
pub(crate) fn sgn(r: f64) -> i8 {
    if r > 0.0 {
        1
    } else if r < 0.0 {
        -1
    } else {
        0
    }
}

/// TwoSum: s = fl(a + b), e = (a + b) - s exactly (no overflow).
#[inline]
pub(crate) fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let e = (a - (s - bb)) + (b - bb);
    (s, e)
}

/// Finishes an f32 result from an f64 approximation and residual sign.
#[inline]
fn finish32(x: f64, resid: i8, rnd: Rnd) -> f32 {
    if x.is_nan() {
        return F32_NAN;
    }
    if rnd == Rnd::Rn {
        // The residual only matters when x is exactly an f32 tie: in the f32 normal range
        // that is when the 29 discarded mantissa bits are 1000...0.
        if resid == 0 || (x.to_bits() & 0x1FFF_FFFF != 0x1000_0000 && x.abs() >= 1.0e-37) {
            return x as f32;
        }
    }
    f32::from_bits(round_f64(x, resid, Fmt::F32, rnd))
}

/// f32 a + b rounded in `rnd`.
pub fn add32(a: f32, b: f32, rnd: Rnd) -> f32 {
    let (a, b) = (a as f64, b as f64);
    if rnd == Rnd::Rn {
        return canon32((a + b) as f32);
    }
    let (s, e) = two_sum(a, b);
    if !s.is_finite() {
        return finish32(s, 0, rnd);
    }
    // An exactly zero sum of opposite operands is +0 except in .rm (IEEE 754 6.3).
    if s == 0.0 && e == 0.0 && a != 0.0 {
        return if rnd == Rnd::Rm { -0.0 } else { 0.0 };
    }
    finish32(s, sgn(e), rnd)
}

/// f32 a * b rounded in `rnd` (the f64 product is exact).
pub fn mul32(a: f32, b: f32, rnd: Rnd) -> f32 {
    let p = a as f64 * b as f64;
    finish32(p, 0, rnd)
}

/// f32 fused a * b + c rounded once in `rnd`.
pub fn fma32(a: f32, b: f32, c: f32, rnd: Rnd) -> f32 {
    let p = a as f64 * b as f64; // exact
    let c = c as f64;
    let (s, e) = two_sum(p, c);
    if !s.is_finite() {
        // Inf/NaN operands (or Inf - Inf): the f64 sum already has the IEEE special value.
        return finish32(p + c, 0, rnd);
    }
    if s == 0.0 && e == 0.0 {
        // Exact zero: IEEE sign rules for x + y == 0.
        let z = if p == 0.0 && c == 0.0 && p.is_sign_negative() == c.is_sign_negative() {
            p
        } else if rnd == Rnd::Rm {
            -0.0
        } else {
            0.0
        };
        return z as f32;
    }
    finish32(s, sgn(e), rnd)
}

/// f32 a / b rounded in `rnd`.
pub fn div32(a: f32, b: f32, rnd: Rnd) -> f32 {
    let (a, b) = (a as f64, b as f64);
    let q = a / b;
    if rnd == Rnd::Rn || !q.is_finite() || q == 0.0 {
        return finish32(q, 0, rnd);
    }
    // Remainder a - q*b is exact with an fma; the exact quotient exceeds q when the remainder
    // has the sign of b.
    let rem = (-q).mul_add(b, a);
    let resid = sgn(rem) * sgn(b);
    finish32(q, resid, rnd)
}

/// f32 sqrt(a) rounded in `rnd`.
pub fn sqrt32(a: f32, rnd: Rnd) -> f32 {
    let a = a as f64;
    let s = a.sqrt();
    if rnd == Rnd::Rn || !s.is_finite() || s == 0.0 {
        return finish32(s, 0, rnd);
    }
    let rem = (-s).mul_add(s, a);
    finish32(s, sgn(rem), rnd)
}

/// f64 ops in directed modes via error-free transformations.
pub fn add64(a: f64, b: f64, rnd: Rnd) -> f64 {
    let (s, e) = two_sum(a, b);
    if rnd == Rnd::Rn || !s.is_finite() {
        return canon64(a + b);
    }
    if s == 0.0 && e == 0.0 && a != 0.0 {
        return if rnd == Rnd::Rm { -0.0 } else { 0.0 };
    }
    step64(s, sgn(e), rnd)
}

/// f64 a * b in `rnd`.
pub fn mul64(a: f64, b: f64, rnd: Rnd) -> f64 {
    let p = a * b;
    if rnd == Rnd::Rn || !p.is_finite() || p == 0.0 {
        return canon64(p);
    }
    let e = a.mul_add(b, -p);
    step64(p, sgn(e), rnd)
}

/// f64 a / b in `rnd`.
pub fn div64(a: f64, b: f64, rnd: Rnd) -> f64 {
    let q = a / b;
    if rnd == Rnd::Rn || !q.is_finite() || q == 0.0 {
        return canon64(q);
    }
    let rem = (-q).mul_add(b, a);
    step64(q, sgn(rem) * sgn(b), rnd)
}

/// f64 sqrt in `rnd`.
pub fn sqrt64(a: f64, rnd: Rnd) -> f64 {
    let s = a.sqrt();
    if rnd == Rnd::Rn || !s.is_finite() || s == 0.0 {
        return canon64(s);
    }
    let rem = (-s).mul_add(s, a);
    step64(s, sgn(rem), rnd)
}

/// Adjusts a round-to-nearest f64 result `x` (exact value x + r, r of sign `resid`) to a
/// directed rounding.
fn step64(x: f64, resid: i8, rnd: Rnd) -> f64 {
    if resid == 0 {
        return x;
    }
    let toward_up = match rnd {
        Rnd::Rn => return x,
        Rnd::Rp => true,
        Rnd::Rm => false,
        Rnd::Rz => x < 0.0,
    };
    match (toward_up, resid > 0) {
        (true, true) => next_up64(x),
        (false, false) => next_down64(x),
        _ => x,
    }
}

fn next_up64(x: f64) -> f64 {
    if x.is_nan() || x == f64::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f64::from_bits(1);
    }
    let b = x.to_bits();
    f64::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

fn next_down64(x: f64) -> f64 {
    -next_up64(-x)
}

/// Flushes an f32 subnormal to a zero of the same sign (`.ftz`).
#[inline]
pub fn ftz32(x: f32) -> f32 {
    if x.is_subnormal() {
        if x.is_sign_negative() {
            -0.0
        } else {
            0.0
        }
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rn16(x: f32) -> u16 {
        f32_to_f16(x, Rnd::Rn)
    }

    #[test]
    fn f16_ties_to_even() {
        // 1 + 2^-11 is halfway between 1.0 (0x3C00, even) and 1 + 2^-10 (0x3C01, odd).
        assert_eq!(rn16(1.0 + 2f32.powi(-11)), 0x3C00);
        // 1 + 3*2^-11 is halfway between 0x3C01 (odd) and 0x3C02 (even): rounds up.
        assert_eq!(rn16(1.0 + 3.0 * 2f32.powi(-11)), 0x3C02);
        // Just above a tie rounds up; just below rounds down.
        assert_eq!(rn16(1.0 + 2f32.powi(-11) + 2f32.powi(-20)), 0x3C01);
        assert_eq!(rn16(1.0 + 2f32.powi(-11) - 2f32.powi(-20)), 0x3C00);
        // Negative ties mirror.
        assert_eq!(rn16(-(1.0 + 3.0 * 2f32.powi(-11))), 0xBC02);
        // Directed roundings of the same tie.
        let t = 1.0 + 2f32.powi(-11);
        assert_eq!(f32_to_f16(t, Rnd::Rz), 0x3C00);
        assert_eq!(f32_to_f16(t, Rnd::Rp), 0x3C01);
        assert_eq!(f32_to_f16(t, Rnd::Rm), 0x3C00);
        assert_eq!(f32_to_f16(-t, Rnd::Rm), 0xBC01);
        assert_eq!(f32_to_f16(-t, Rnd::Rp), 0xBC00);
    }

    #[test]
    fn f16_subnormals_overflow_specials() {
        // Smallest f16 subnormal 2^-24 = 0x0001; half of it (2^-25) is a tie with 0 (even).
        assert_eq!(rn16(2f32.powi(-24)), 0x0001);
        assert_eq!(rn16(2f32.powi(-25)), 0x0000);
        // 3 * 2^-25 = 1.5 * 2^-24: tie between 0x0001 (odd) and 0x0002 (even).
        assert_eq!(rn16(3.0 * 2f32.powi(-25)), 0x0002);
        // Slightly above 2^-25 rounds up to the smallest subnormal.
        assert_eq!(rn16(2f32.powi(-25) * 1.0001), 0x0001);
        // Largest subnormal 1023 * 2^-24 = 0x03FF; smallest normal 2^-14 = 0x0400.
        assert_eq!(rn16(1023.0 * 2f32.powi(-24)), 0x03FF);
        assert_eq!(rn16(2f32.powi(-14)), 0x0400);
        // 1023.5 * 2^-24 ties between 0x03FF (odd) and 0x0400 (even).
        assert_eq!(rn16(1023.5 * 2f32.powi(-24)), 0x0400);
        // Max finite 65504 = 0x7BFF; 65520 (halfway to 65536) rounds to Inf under .rn.
        assert_eq!(rn16(65504.0), 0x7BFF);
        assert_eq!(rn16(65519.0), 0x7BFF);
        assert_eq!(rn16(65520.0), 0x7C00);
        assert_eq!(rn16(1e10), 0x7C00);
        assert_eq!(rn16(-1e10), 0xFC00);
        // .rz keeps the largest finite value.
        assert_eq!(f32_to_f16(1e10, Rnd::Rz), 0x7BFF);
        assert_eq!(f32_to_f16(-1e10, Rnd::Rp), 0xFBFF);
        assert_eq!(f32_to_f16(-1e10, Rnd::Rm), 0xFC00);
        assert_eq!(rn16(f32::INFINITY), 0x7C00);
        assert_eq!(rn16(f32::NEG_INFINITY), 0xFC00);
        assert_eq!(rn16(f32::NAN), 0x7FFF);
        assert_eq!(rn16(-0.0), 0x8000);
        assert_eq!(rn16(1e-30), 0x0000);
        assert_eq!(f32_to_f16(1e-30, Rnd::Rp), 0x0001);
        assert_eq!(f32_to_f16(-1e-30, Rnd::Rm), 0x8001);
        assert_eq!(f32_to_f16(-1e-30, Rnd::Rp), 0x8000);
    }

    #[test]
    fn bf16_ties_and_specials() {
        let rn = |x: f32| f32_to_bf16(x, Rnd::Rn);
        // bf16 keeps the top 16 bits of f32: 0x3F80_8000 is a tie between 0x3F80 (even) and
        // 0x3F81; 0x3F81_8000 ties between 0x3F81 (odd) and 0x3F82 (even).
        assert_eq!(rn(f32::from_bits(0x3F80_8000)), 0x3F80);
        assert_eq!(rn(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(rn(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert_eq!(rn(f32::from_bits(0x3F80_7FFF)), 0x3F80);
        // Rounding carries into the exponent: 0x3FFF_FFFF -> 0x4000 (2.0).
        assert_eq!(rn(f32::from_bits(0x3FFF_FFFF)), 0x4000);
        // Overflow: f32 max rounds to Inf in bf16 (0x7F7F_FFFF is above the last tie).
        assert_eq!(rn(f32::MAX), 0x7F80);
        assert_eq!(f32_to_bf16(f32::MAX, Rnd::Rz), 0x7F7F);
        // Subnormal f32 values are bf16 subnormals: 0x0000_8000 ties to 0x0000 (even).
        assert_eq!(rn(f32::from_bits(0x0000_8000)), 0x0000);
        assert_eq!(rn(f32::from_bits(0x0001_8000)), 0x0002);
        assert_eq!(rn(f32::NAN), 0x7FFF);
        assert_eq!(rn(-f32::NAN), 0x7FFF);
        assert_eq!(rn(f32::NEG_INFINITY), 0xFF80);
        assert_eq!(bf16_to_f32(0x3F81), f32::from_bits(0x3F81_0000));
        assert_eq!(bf16_to_f32(0x7FC1).to_bits(), 0x7FFF_FFFF);
    }

    #[test]
    fn f16_matches_half_crate_everywhere_tested() {
        // Independent cross-check of round-to-nearest-even against the `half` crate on a sweep
        // of f32 bit patterns (every 4097th pattern, which crosses all binades and ties).
        let mut bits: u32 = 0;
        while bits < 0xFF80_0000 {
            let x = f32::from_bits(bits);
            if !x.is_nan() {
                assert_eq!(
                    rn16(x),
                    half::f16::from_f32(x).to_bits(),
                    "f32 {bits:#x} -> f16"
                );
                assert_eq!(
                    f32_to_bf16(x, Rnd::Rn),
                    half::bf16::from_f32(x).to_bits(),
                    "f32 {bits:#x} -> bf16"
                );
            }
            bits += 4097;
        }
        // The bit-level fast paths agree with the generic rounder on the sweep and at every
        // f16/bf16 tie and its neighbours.
        let mut bits: u32 = 0;
        while bits < 0xFF80_0000 {
            for b in [
                bits,
                bits | 0x1000,
                bits | 0x0FFF,
                bits | 0x8000,
                bits | 0x7FFF,
            ] {
                let x = f32::from_bits(b);
                assert_eq!(
                    f32_to_f16_rn(x) as u32,
                    round_f64(x as f64, 0, Fmt::F16, Rnd::Rn),
                    "{b:#x}"
                );
                assert_eq!(
                    f32_to_bf16_rn(x) as u32,
                    round_f64(x as f64, 0, Fmt::Bf16, Rnd::Rn),
                    "{b:#x}"
                );
            }
            bits += 8191;
        }
        // Every f16 converts back exactly.
        for h in 0..=0xFFFFu16 {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert_eq!(f.to_bits(), 0x7FFF_FFFF);
            } else {
                assert_eq!(f, half::f16::from_bits(h).to_f32(), "f16 {h:#x}");
                assert_eq!(f as f64, Fmt::F16.to_f64(h as u32), "f16 {h:#x}");
                assert_eq!(f.to_bits() >> 31, (h >> 15) as u32, "sign of {h:#x}");
                assert_eq!(rn16(f), h, "round trip {h:#x}");
            }
        }
    }

    #[test]
    fn f32_directed_arithmetic() {
        // 1 + 2^-30 is not representable in f32: .rn and .rz give 1, .rp gives 1 + 2^-23.
        let tiny = 2f32.powi(-30);
        assert_eq!(add32(1.0, tiny, Rnd::Rn), 1.0);
        assert_eq!(add32(1.0, tiny, Rnd::Rz), 1.0);
        assert_eq!(add32(1.0, tiny, Rnd::Rm), 1.0);
        assert_eq!(add32(1.0, tiny, Rnd::Rp), 1.0 + 2f32.powi(-23));
        assert_eq!(add32(1.0, -tiny, Rnd::Rz), 1.0 - 2f32.powi(-24));
        assert_eq!(add32(1.0, -tiny, Rnd::Rn), 1.0);
        assert_eq!(add32(1.0, -1.0, Rnd::Rm).to_bits(), 0x8000_0000);
        assert_eq!(add32(1.0, -1.0, Rnd::Rn).to_bits(), 0);
        // 1/3 in f32: rn = 0x3EAAAAAB, rz = rm = 0x3EAAAAAA, rp = 0x3EAAAAAB.
        assert_eq!(div32(1.0, 3.0, Rnd::Rn).to_bits(), 0x3EAA_AAAB);
        assert_eq!(div32(1.0, 3.0, Rnd::Rz).to_bits(), 0x3EAA_AAAA);
        assert_eq!(div32(1.0, 3.0, Rnd::Rm).to_bits(), 0x3EAA_AAAA);
        assert_eq!(div32(1.0, 3.0, Rnd::Rp).to_bits(), 0x3EAA_AAAB);
        assert_eq!(div32(-1.0, 3.0, Rnd::Rm).to_bits(), 0xBEAA_AAAB);
        // Exact quotient stays exact in every mode.
        assert_eq!(div32(1.0, 4.0, Rnd::Rp), 0.25);
        // sqrt(2): rn = 0x3FB504F3 (1.41421353...), rz = 0x3FB504F3, rp = 0x3FB504F4.
        assert_eq!(sqrt32(2.0, Rnd::Rn).to_bits(), 0x3FB5_04F3);
        assert_eq!(sqrt32(2.0, Rnd::Rz).to_bits(), 0x3FB5_04F3);
        assert_eq!(sqrt32(2.0, Rnd::Rp).to_bits(), 0x3FB5_04F4);
        assert_eq!(sqrt32(4.0, Rnd::Rp), 2.0);
        // Overflow under .rz stays finite.
        assert_eq!(mul32(f32::MAX, 2.0, Rnd::Rz), f32::MAX);
        assert_eq!(mul32(f32::MAX, 2.0, Rnd::Rn), f32::INFINITY);
        assert_eq!(mul32(f32::MAX, -2.0, Rnd::Rp), -f32::MAX);
    }

    #[test]
    fn fma32_single_rounding() {
        // a*b + c where the f64 sum lands exactly on an f32 tie but the exact value is above:
        // a = 1 + 2^-23, b = 1 + 2^-23: a*b = 1 + 2^-22 + 2^-46.
        // c = 2^-24 - 2^-22 - 2^-46 + ... choose c so the exact sum is 1 + 2^-24 + 2^-46 + 2^-60?
        // Simpler: exact = 1 + 2^-24 + 2^-46 (just above the tie 1 + 2^-24): must round up.
        let a = 1.0 + 2f32.powi(-23);
        let c = -(2f32.powi(-22) - 2f32.powi(-24)); // exactly representable
        let r = fma32(a, a, c, Rnd::Rn);
        assert_eq!(r, 1.0 + 2f32.powi(-23));
        // A separately rounded multiply then add would lose the 2^-46 and tie to even (1.0).
        let unfused = (a * a) + c;
        assert_eq!(unfused, 1.0);
        // The f64 sum of a*b + c lands on an f32 tie while the exact value lies below it:
        // a*b = 2^6 - 2^-30, c = 2^30 + 2^7; exact = 2^30 + 2^7 + 2^6 - 2^-30 rounds down to
        // 2^30 + 2^7 (a double rounding through f64 would tie to even, 2^30 + 2^8).
        let a = 64.0 * (1.0 + 2f32.powi(-18));
        let b = 1.0 - 2f32.powi(-18);
        let c = 2f32.powi(30) + 128.0;
        assert_eq!(fma32(a, b, c, Rnd::Rn), 2f32.powi(30) + 128.0);
        assert_eq!(fma32(a, b, c, Rnd::Rp), 2f32.powi(30) + 256.0);
        assert_eq!(fma32(-a, b, -c, Rnd::Rn), -(2f32.powi(30) + 128.0));
        // Zero results follow IEEE signs.
        assert_eq!(fma32(1.0, 1.0, -1.0, Rnd::Rn).to_bits(), 0);
        assert_eq!(fma32(1.0, 1.0, -1.0, Rnd::Rm).to_bits(), 0x8000_0000);
        assert_eq!(fma32(-0.0, 1.0, -0.0, Rnd::Rn).to_bits(), 0x8000_0000);
        assert!(fma32(f32::INFINITY, 0.0, 1.0, Rnd::Rn).is_nan());
        // Subnormal result kept.
        assert_eq!(
            fma32(2f32.powi(-75), 2f32.powi(-75), 0.0, Rnd::Rn),
            2f32.powi(-150) * 2.0
        );
    }

    #[test]
    fn f64_directed() {
        assert_eq!(div64(1.0, 3.0, Rnd::Rz).to_bits(), 0x3FD5_5555_5555_5555);
        assert_eq!(div64(1.0, 3.0, Rnd::Rp).to_bits(), 0x3FD5_5555_5555_5556);
        assert_eq!(add64(1.0, 2f64.powi(-60), Rnd::Rp), 1.0 + f64::EPSILON);
        assert_eq!(
            mul64(1.0 + f64::EPSILON, 1.0 + f64::EPSILON, Rnd::Rz),
            1.0 + 2.0 * f64::EPSILON
        );
        assert_eq!(
            f64_to_f32(1.0 + 2f64.powi(-30), Rnd::Rp),
            1.0 + 2f32.powi(-23)
        );
        assert_eq!(f64_to_f32(1e300, Rnd::Rz), f32::MAX);
        assert_eq!(f64_to_f32(1e300, Rnd::Rn), f32::INFINITY);
    }
}
