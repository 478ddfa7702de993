//! CPU references of bitsandbytes' 4-bit quantisation (the semantics of its CPU backend, which made the
//! golden cases, and of its CUDA kernels except where noted) and dequantisation.
use super::{validate_blocksize, Absmax, Quant4Weight, QuantType, NF4_CODE};
use crate::error::{invalid, Result};
use crate::{DType, Element};

/// NF4 decision thresholds: the f32 midpoints of neighbouring codes; the index of y is the number of
/// thresholds below it (a tie goes to the lower code).
fn nf4_thresholds() -> [f32; 15] {
    std::array::from_fn(|i| (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0)
}

/// The 4-bit code of a value already scaled into [-1, 1].
pub fn quantize_value(quant_type: QuantType, y: f32) -> u8 {
    match quant_type {
        QuantType::Nf4 => nf4_thresholds().iter().filter(|&&t| y > t).count() as u8,
        QuantType::Fp4 => {
            // bitsandbytes' decision tree on |y|, sign in bit 3.
            let a = y.abs();
            let magnitude = if a > 0.291_666_67 {
                if a > 0.583_333 {
                    if a > 0.833_333_3 {
                        0b011
                    } else {
                        0b010
                    }
                } else if a > 0.416_666_7 {
                    0b101
                } else {
                    0b100
                }
            } else if a > 0.085_937_5 {
                if a > 0.208_333_33 {
                    0b111
                } else {
                    0b110
                }
            } else if a > 0.002_604_17 {
                0b001
            } else {
                0b000
            };
            magnitude | if y < 0.0 { 8 } else { 0 }
        }
    }
}

/// Quantises W [n, k] (row-major, flattened) in blocks of `blocksize` consecutive elements:
/// `absmax = max |x|` per block (f32), `y = clamp(x · (1 / max(absmax, 1e-38)), −1, 1)` (true division in
/// a partial last block, as bitsandbytes' CPU backend does), code of y, two codes per byte with the
/// first element in the high nibble. An all-zero block gets the code of 0 (NF4 `0x77`; bitsandbytes'
/// CUDA kernel writes `0x00` there). With `double_quant`, the absmax is quantised as in
/// [`double_quantize`].
pub fn quantize<T: Element>(
    weight: &[T],
    shape: [usize; 2],
    blocksize: usize,
    quant_type: QuantType,
    double_quant: bool,
) -> Result<Quant4Weight> {
    validate_blocksize(blocksize)?;
    let numel = shape[0] * shape[1];
    if numel == 0 {
        return Err(invalid("shape", "no zero dimension", format!("{shape:?}")));
    }
    if weight.len() < numel {
        return Err(invalid(
            "weight",
            format!("at least {numel} elements ({shape:?})"),
            weight.len(),
        ));
    }
    let mut codes = Vec::with_capacity(numel + 1);
    let mut absmax = Vec::with_capacity(numel.div_ceil(blocksize));
    for block in weight[..numel].chunks(blocksize) {
        let values: Vec<f32> = block.iter().map(|v| v.to_f64() as f32).collect();
        let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        absmax.push(amax);
        let full = block.len() == blocksize;
        let inv = 1.0f32 / amax.max(1e-38);
        for v in values {
            let y = if full { v * inv } else { v / amax.max(1e-38) };
            codes.push(quantize_value(quant_type, y.clamp(-1.0, 1.0)));
        }
    }
    if numel % 2 == 1 {
        codes.push(quantize_value(quant_type, 0.0));
    }
    let packed = codes.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect();
    let absmax = if double_quant {
        double_quantize(&absmax, 256)
    } else {
        Absmax::Plain(absmax)
    };
    Ok(Quant4Weight {
        quant_type,
        blocksize,
        shape,
        dtype: T::DTYPE,
        packed,
        absmax,
        code: *quant_type.code(),
    })
}

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True, max_exponent_bits=7,
/// total_bits=8)`): ±10^(i−6) times the midpoints of `linspace(0.1, 1, 2^i + 1)` for i = 0..6, then 0
/// and 1, sorted. Quantisation uses it to pick codes; dequantisation always uses the serialised map.
pub fn dynamic_map() -> Vec<f32> {
    let mut data = Vec::with_capacity(256);
    for i in 0..7 {
        let items = (1usize << i) + 1;
        let bounds: Vec<f32> = (0..items)
            .map(|j| (0.1f64 + 0.9 * j as f64 / (items - 1) as f64) as f32)
            .collect();
        let scale = 10f64.powi(i - 6) as f32;
        for w in bounds.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            data.push(-(scale * mean));
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(|a, b| a.partial_cmp(b).unwrap());
    data
}

/// Double quantisation of the absmax: `offset = mean(absmax)`, then blocks of `nested_blocksize`
/// centred values scaled by their absmax and coded to the nearest entry of [`dynamic_map`].
pub fn double_quantize(absmax: &[f32], nested_blocksize: usize) -> Absmax {
    let offset = (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len() as f64) as f32;
    let map = dynamic_map();
    let midpoints: Vec<f32> = map.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let mut nested_absmax = Vec::new();
    let mut codes = Vec::with_capacity(absmax.len());
    for block in centred.chunks(nested_blocksize) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        nested_absmax.push(amax);
        for &v in block {
            let y = v / amax.max(1e-38);
            codes.push(midpoints.iter().filter(|&&t| y > t).count() as u8);
        }
    }
    Absmax::Nested {
        codes,
        nested_absmax,
        nested_code: map,
        nested_blocksize,
        offset,
    }
}

/// Dequantises to [n, k] elements of `T`: `T(code[q] · absmax[i / blocksize])`, an f32 multiply rounded
/// once (bitsandbytes' `dequantize_4bit`).
pub fn dequantize<T: Element>(weight: &Quant4Weight) -> Result<Vec<T>> {
    weight.validate()?;
    let numel = weight.shape[0] * weight.shape[1];
    let absmax = weight.absmax.values();
    Ok((0..numel)
        .map(|i| {
            let byte = weight.packed[i / 2];
            let q = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
            T::from_f64((weight.code[q as usize] * absmax[i / weight.blocksize]) as f64)
        })
        .collect())
}

/// Whether two packed buffers hold the same codes, counting FP4's two zeros (`0b0000`, `0b1000`) as
/// one (bitsandbytes' backends disagree on the sign of zero).
pub fn same_codes(quant_type: QuantType, a: &[u8], b: &[u8]) -> bool {
    let canon = |q: u8| {
        if quant_type == QuantType::Fp4 && q == 0b1000 {
            0
        } else {
            q
        }
    };
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(&x, &y)| canon(x >> 4) == canon(y >> 4) && canon(x & 15) == canon(y & 15))
}

/// The dtype a dequantised weight comes out in.
pub fn output_dtype(weight: &Quant4Weight) -> DType {
    weight.dtype
}

#[cfg(test)]
mod tests {
    use super::super::FP4_CODE;
    use super::*;

    #[test]
    fn thresholds_are_bitsandbytes_midpoints() {
        let t = nf4_thresholds();
        assert_eq!(t[0], -0.848_096_4);
        assert_eq!(t[7], 0.039_790_15);
        assert_eq!(t[14], 0.861_478_45);
        assert_eq!(FP4_CODE[1], 0.005_208_333_5);
    }

    #[test]
    fn codes_round_trip_and_ties_go_low() {
        for (q, &c) in NF4_CODE.iter().enumerate() {
            assert_eq!(quantize_value(QuantType::Nf4, c) as usize, q);
        }
        assert_eq!(quantize_value(QuantType::Nf4, nf4_thresholds()[3]), 3);
        for (q, &c) in FP4_CODE.iter().enumerate().filter(|(q, _)| *q != 8) {
            assert_eq!(quantize_value(QuantType::Fp4, c) as usize, q);
        }
    }

    #[test]
    fn dynamic_map_has_256_sorted_entries() {
        let m = dynamic_map();
        assert_eq!(m.len(), 256);
        assert!(m.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(m[255], 1.0);
        assert!((m[0] + 0.992_968_75).abs() < 1e-6);
    }
}
