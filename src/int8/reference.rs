//! CPU references for LLM.int8 weights: row-wise quantisation, dequantisation, the weight-only matmul
//! (what bitsandbytes' CPU backend computes), and the LLM.int8 algorithm of its CUDA backend.
//!
//! # Row-wise quantisation (`Int8Params` → `int8_vectorwise_quant`, the default backend; `math.md` §5)
//! The weight is rounded to f16 (`W.to(float16)`, round to nearest even; a value beyond the f16
//! range becomes ±Inf). Per row: `SCB = max |Wh|` (exact, an f16 value), then torch evaluates
//! `A * (127.0 / SCB)` as `A * (SCB.reciprocal() * 127)`: the scale is **two** f32 roundings,
//! `s = f32(f32(1 / SCB) · 127)`, the product a third, `p = f32(Wh · s)`, and `CB = round(p)` with ties
//! to even (`torch.round`). This differs from a single division `127 / SCB` on values whose product
//! lands within an ulp of a half-integer (a few codes in ten thousand; `int8_f16_wide` has 13).
//! |p| never exceeds 127 by more than rounding, so no clamp acts.
//!
//! bitsandbytes has no defined codes for a row whose scale is 0 or not finite: `1/0 = ∞` and
//! `0 · ∞ = NaN`, and NaN converted to int8 is undefined behaviour in C++ (its CUDA kernel's
//! `__float2int_rn` gives 0). An all-zero row is given SCB 0 and codes 0, which dequantise to 0 as any
//! codes would; a NaN or infinite value (after the f16 rounding, so also |w| ≥ 65520) is an error.
//!
//! # Where the crate follows bitsandbytes' CUDA kernels instead
//! [`linear_llm_int8`] (and `Gpu::int8_linear_llm`) is LLM.int8 as the CUDA backend runs it: x rounded
//! to f16 and quantised row-wise with `127 / absmax` (outliers split off above the threshold), the
//! int32 product dequantised with `6.200012e-05` through an f16 result, the outlier columns added in
//! x's dtype. What a user can see against bitsandbytes:
//! - on the CPU, bitsandbytes runs a `Linear8bitLt` in training mode (`MatMul8bitFp`, how the golden
//!   cases ran) as the weight-only product x·(CB·SCB/127)ᵀ ([`linear_weight_only`]), with no
//!   quantisation of x: about 1e-2 relative away from LLM.int8 outputs;
//! - in eval mode its CPU backend does quantise x, but with its own arithmetic: x's codes by
//!   reciprocal × 127 as above, the int8 product as an f32 matmul (exact while the sums stay below
//!   2^24), the constant `6.200124e-05` (1.8e-5 relatively larger than CUDA's) and the result straight
//!   in x's dtype (no f16 step for f32 and bf16 inputs);
//! - x's codes: this crate divides `127 / absmax` correctly rounded, bitsandbytes' CUDA kernel with the
//!   approximate `__fdividef`: a code can differ by one on a near-tie (an f16-rounding-sized change of
//!   the output);
//! - the weight's codes (CB, SCB) are the CPU backend's here and on the crate's GPU; bitsandbytes'
//!   CUDA quantiser (also `__fdividef`) can put a code one step away on near-ties, and gives an
//!   all-zero row codes 0, as this crate does.
use super::{Int8Weight, INV_127};
use crate::error::{invalid, Result};
use crate::lora::LoraShape;
use crate::validate::{validate_bias, validate_lora_forward, validate_weight};
use crate::Element;
use half::f16;

/// Round half to even, as `torch.round` and `__float2int_rn` / `rintf` do.
fn round_even(v: f32) -> f32 {
    v.round_ties_even()
}

/// The row scale `f32(f32(1 / absmax) · 127)` (torch's `127.0 / t` is `t.reciprocal() * 127`).
pub fn row_scale(absmax: f32) -> f32 {
    (1.0f32 / absmax) * 127.0
}

/// The code of one f16-rounded value `v` in a row of absmax `absmax` (> 0): `round_even(f32(v · s))`
/// with `s` = [`row_scale`].
pub fn quantize_value(v: f32, absmax: f32) -> i8 {
    round_even(v * row_scale(absmax)) as i8
}

/// Row-wise quantisation as `Int8Params` does it (module docs): the weight rounded to f16, `SCB[r]` its
/// row absmax, `CB = round_even(f32(Wh · f32(f32(1 / SCB[r]) · 127)))`. An all-zero row gets SCB 0 and
/// codes 0; a NaN or infinite value (after rounding to f16) is an error naming its position.
pub fn quantize_rowwise<T: Element>(weight: &[T], shape: [usize; 2]) -> Result<Int8Weight> {
    let [n, k] = shape;
    if n == 0 || k == 0 {
        return Err(invalid("shape", "no zero dimension", format!("{shape:?}")));
    }
    validate_weight(weight.len(), k, n)?;
    let mut cb = Vec::with_capacity(n * k);
    let mut scb = Vec::with_capacity(n);
    for (r, row) in weight[..n * k].chunks(k).enumerate() {
        let wh: Vec<f32> = row
            .iter()
            .map(|v| f16::from_f64(v.to_f64()).to_f32())
            .collect();
        if let Some(c) = wh.iter().position(|v| !v.is_finite()) {
            return Err(invalid(
                "weight",
                "finite values within the f16 range (LLM.int8 rounds the weight to f16; a NaN or \
                 infinite value has no int8 code)",
                format!("{} at [{r}, {c}]", row[c].to_f64()),
            ));
        }
        let amax = wh.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        scb.push(amax);
        cb.extend(wh.iter().map(|&v| {
            if amax == 0.0 {
                0
            } else {
                quantize_value(v, amax)
            }
        }));
    }
    Ok(Int8Weight { shape, cb, scb })
}

/// `W = CB · SCB[:, None] · (1/127)` in f32, `CB · SCB` first (bitsandbytes' `int8_vectorwise_dequant`).
pub fn dequantize(weight: &Int8Weight) -> Result<Vec<f32>> {
    weight.validate()?;
    let k = weight.shape[1];
    Ok(weight
        .cb
        .iter()
        .enumerate()
        .map(|(i, &c)| c as f32 * weight.scb[i / k] * INV_127)
        .collect())
}

fn check_linear<T>(
    x: &[T],
    weight: &Int8Weight,
    bias: Option<&[T]>,
    shape: LoraShape,
) -> Result<()> {
    // The dimensions first: no size is computed before they are known to fit.
    validate_lora_forward(shape, x.len(), None, None, &[])?;
    let LoraShape { k, n, .. } = shape;
    if weight.shape != [n, k] {
        return Err(invalid(
            "weight",
            format!("shape [n={n}, k={k}]"),
            format!("{:?}", weight.shape),
        ));
    }
    weight.validate()?;
    validate_bias(bias.map(|b| b.len()), n)?;
    Ok(())
}

/// Weight-only: `y = x · dequant(W)ᵀ + bias`, f64 accumulation, rounded once.
pub fn linear_weight_only<T: Element>(
    x: &[T],
    weight: &Int8Weight,
    bias: Option<&[T]>,
    shape: LoraShape,
) -> Result<Vec<T>> {
    check_linear(x, weight, bias, shape)?;
    let LoraShape { m, k, n } = shape;
    let w = dequantize(weight)?;
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|c| x[i * k + c].to_f64() * w[j * k + c] as f64)
                .sum();
            out.push(T::from_f64(dot + bias.map_or(0.0, |b| b[j].to_f64())));
        }
    }
    Ok(out)
}

/// LLM.int8 as bitsandbytes runs it on CUDA: x rounded to f16 and quantised row-wise to int8 (elements
/// with |x| ≥ `threshold` excluded from the row scale and zeroed; with several rows their whole columns
/// are zeroed), int8 × int8 → int32, dequantised with both scales (`· 6.200012e-05`) through an f16
/// result; with `threshold` > 0 the outlier columns are then added in the input dtype against the
/// dequantised weight columns: `Y += x[:, cols] · (CB[:, cols] · SCB / 127)ᵀ`.
///
/// NaN: a row of x holding a NaN or an infinity (after the f16 rounding, so also |x| ≥ 65520) gives
/// NaN in every output of that row, as in bitsandbytes, where the row's absmax is NaN; such a value
/// is not an outlier, so the other rows are unaffected. (Without this rule the NaN's code would be 0
/// and the output finite, while [`linear_weight_only`] gives NaN.)
pub fn linear_llm_int8<T: Element>(
    x: &[T],
    weight: &Int8Weight,
    bias: Option<&[T]>,
    threshold: f32,
    shape: LoraShape,
) -> Result<Vec<T>> {
    check_linear(x, weight, bias, shape)?;
    if threshold.is_nan() || threshold.is_infinite() || threshold < 0.0 {
        return Err(invalid("threshold", "a finite number ≥ 0", threshold));
    }
    let LoraShape { m, k, n } = shape;
    let xh: Vec<f32> = x[..m * k]
        .iter()
        .map(|v| f16::from_f64(v.to_f64()).to_f32())
        .collect();
    let outlier = |v: f32| v.is_finite() && threshold > 0.0 && v.abs() >= threshold;
    let cols: Vec<usize> = (0..k)
        .filter(|&c| (0..m).any(|i| outlier(xh[i * k + c])))
        .collect();
    let mut ca = vec![0i32; m * k];
    let mut sca = vec![0f32; m];
    for i in 0..m {
        let row = &xh[i * k..(i + 1) * k];
        let amax = if row.iter().all(|v| v.is_finite()) {
            row.iter()
                .filter(|v| !outlier(**v))
                .fold(0.0f32, |a, v| a.max(v.abs()))
        } else {
            f32::NAN // the row's scale, and so its every output, is NaN
        };
        sca[i] = amax;
        for c in 0..k {
            let v = row[c];
            let zeroed = outlier(v) || (m > 1 && cols.contains(&c)) || amax == 0.0;
            ca[i * k + c] = if zeroed {
                0
            } else {
                round_even(v * (127.0 / amax)).clamp(-127.0, 127.0) as i32
            };
        }
    }
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let c: i64 = (0..k)
                .map(|t| ca[i * k + t] as i64 * weight.cb[j * k + t] as i64)
                .sum();
            let mut y =
                f16::from_f32(c as f32 * sca[i] * weight.scb[j] * 6.200_012e-5).to_f32() as f64;
            y += bias.map_or(0.0, |b| b[j].to_f64());
            for &col in &cols {
                let w = T::from_f64((weight.cb[j * k + col] as f32 * weight.scb[j] / 127.0) as f64)
                    .to_f64();
                y += x[i * k + col].to_f64() * w;
            }
            out.push(T::from_f64(y));
        }
    }
    Ok(out)
}

/// W as peft's 8-bit layer sees it: `T(CB · SCB · (1/127))` (the dequantisation, rounded to the
/// layer's dtype).
pub fn dequantize_to<T: Element>(weight: &Int8Weight) -> Result<Vec<T>> {
    Ok(dequantize(weight)?
        .into_iter()
        .map(|v| T::from_f64(v as f64))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_to_even() {
        assert_eq!(round_even(2.5), 2.0);
        assert_eq!(round_even(3.5), 4.0);
        assert_eq!(round_even(-2.5), -2.0);
        assert_eq!(round_even(-0.4), -0.0);
        assert_eq!(round_even(1.6), 2.0);
    }

    /// The scale is f32(f32(1/SCB)·127), not f32(127/SCB): on a value exactly half the absmax the
    /// product lands on either side of 63.5. SCB 0.324462890625 (an f16): 1/SCB = 3.0820165,
    /// ·127 = 391.41608, ·0.16223145 = 63.499996 → 63 (one division gives 63.5 → 64). SCB
    /// 0.30712890625: 413.50717 · 0.15356445 = 63.500004 → 64 (one division: 63.499996 → 63).
    #[test]
    fn scale_is_reciprocal_times_127() {
        for (s, want) in [(0.324_462_9f32, 63i8), (0.307_128_9, 64)] {
            let s = f16::from_f32(s);
            let half = f16::from_f32(s.to_f32() / 2.0);
            let q = quantize_rowwise(&[s, half, -half, f16::ZERO], [1, 4]).unwrap();
            assert_eq!(q.scb, [s.to_f32()]);
            assert_eq!(q.cb, [127, want, -want, 0], "SCB {s}");
        }
        assert_eq!(row_scale(0.324_462_9), 391.416_08);
    }

    /// Ties of the product itself go to even: SCB 2 gives the exact scale 63.5, so 1 → 63.5 → 64 (even) and 3/8 → 23.8125 → 24; a row of one repeated value is
    /// all 127; an all-zero row is SCB 0 and codes 0; values just above and below zero are 0.
    #[test]
    fn hand_worked_rows() {
        let q = quantize_rowwise(&[2.0f32, 1.0, -1.0, 0.375, 1e-6, -1e-6], [1, 6]).unwrap();
        assert_eq!(row_scale(2.0), 63.5);
        assert_eq!(q.cb, [127, 64, -64, 24, 0, 0]);
        let q = quantize_rowwise(&[0.3f32; 5], [1, 5]).unwrap();
        assert_eq!(q.cb, [127; 5]);
        let q = quantize_rowwise(&[0.0f32, -0.0, 0.0, 1.0, 0.5, -0.5], [2, 3]).unwrap();
        assert_eq!(q.scb, [0.0, 1.0]);
        assert_eq!(q.cb, [0, 0, 0, 127, 64, -64]);
    }

    /// f16-subnormal row absmax: the f32 scale is large but exact arithmetic still gives ±127 and the
    /// halves: SCB 2^-20 (an f16 subnormal), scale 2^20 · 127.
    #[test]
    fn subnormal_row_absmax() {
        let a = 2f32.powi(-20);
        let q = quantize_rowwise(&[a, -a / 2.0, a / 4.0], [1, 3]).unwrap();
        assert_eq!(q.scb, [a]);
        assert_eq!(q.cb, [127, -64, 32]);
    }

    /// NaN, ±Inf and values that overflow f16 have no int8 code: an error naming the element.
    #[test]
    fn non_finite_is_an_error() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 70000.0] {
            let e = quantize_rowwise(&[0.5f32, 0.25, bad, 0.1], [2, 2]).unwrap_err();
            assert!(e.to_string().contains("[1, 0]"), "{e}");
        }
        assert!(quantize_rowwise(&[65504.0f32, 1.0], [1, 2]).is_ok());
    }

    /// Without outliers LLM.int8 is the weight-only product up to x's 8-bit quantisation.
    #[test]
    fn llm_int8_tracks_the_weight_only_product() {
        let (m, k, n) = (3, 64, 5);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let q = quantize_rowwise(&w, [n, k]).unwrap();
        let shape = LoraShape::new(m, k, n);
        let exact = linear_weight_only(&x, &q, None, shape).unwrap();
        let int8 = linear_llm_int8(&x, &q, None, 0.0, shape).unwrap();
        let outliers = linear_llm_int8(&x, &q, None, 1.5, shape).unwrap();
        let err = |a: &[f32]| {
            crate::golden::rel_error(
                &a.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                &exact.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            )
        };
        assert!(err(&int8) < 2e-2, "{}", err(&int8));
        assert!(err(&outliers) < 2e-2, "{}", err(&outliers));
        assert!(err(&int8) > 0.0, "the int8 path must quantise x");
    }
}
