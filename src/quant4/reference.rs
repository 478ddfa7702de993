//! CPU references of bitsandbytes' 4-bit quantisation and dequantisation, byte for byte what
//! bitsandbytes 0.50.2 computes on the CPU (the backend that made the golden cases; `math.md` §4).
//!
//! # Quantisation (`quantize_4bit`, the default backend's torch ops)
//! Over the flattened row-major weight, in blocks of `blocksize` elements (the last may be partial),
//! every value first widened to f32:
//! - `absmax = max |x|` over the block. A NaN anywhere makes it NaN (torch's `max` propagates NaN).
//! - a full block is scaled by a reciprocal: `r = f32(1 / max(absmax, 1e-38))`, `y = f32(x · r)`
//!   (torch evaluates `1.0 / t` as `t.reciprocal() * 1.0`); the partial last block is divided:
//!   `y = f32(x / max(absmax, 1e-38))`. Then `y = clamp(y, −1, 1)`, NaN staying NaN.
//! - the code is a bucket search over the table in increasing order of value: sort the 16 entries
//!   (`argsort`; FP4's two entries equal to 0, codes `0b0000` and `0b1000`, stay in index order),
//!   take the 15 f32 midpoints `t_i = (c_(i) + c_(i+1)) / 2` of neighbours, and `b` = the number of
//!   midpoints that are not ≥ y (`torch.bucketize`, `right=False`: a value equal to a midpoint goes
//!   to the lower bucket, and NaN, which no midpoint is ≥ to, goes past the last one). The code is the
//!   table index of the `b`-th smallest entry. For NF4 the table is already sorted, so the code is
//!   `b`. For FP4 this is the nearest entry with ties to the lower *value* (so for negative y to the
//!   larger magnitude), and the zero bucket splits by sign: y in (−0.0026041667, 0] gets `0b0000`,
//!   y in (0, 0.0026041667] gets `0b1000` (small positive values carry the "negative zero" code;
//!   both dequantise to 0).
//! - two codes per byte, the first element in the high nibble; an odd element count is padded with
//!   the code of 0.
//!
//! Consequences: an all-zero block has absmax 0 and the code of 0 everywhere (NF4 `0x77`); a block
//! holding NaN gets absmax NaN and every element the last bucket (NF4 code 15, FP4 `0b0011`); a block
//! holding ±Inf gets absmax +Inf, finite elements scale to ±0 (the code of 0) and the infinite ones
//! to NaN (the last bucket). Those are bitsandbytes' own results and are reproduced, without double
//! quantisation; with it they have none (below) and are an error.
//!
//! # Double quantisation (`compress_statistics`, the C++ CPU kernel `quantize_blockwise`)
//! `offset = mean(absmax)` (here: the f64 sum rounded once to f32; torch sums in f32 in an order set by
//! the CPU's vector width, and the two agree on the golden cases), then over blocks of 256 centred
//! values `v = f32(absmax − offset)`: `a = max |v|` (the nested absmax; 0 gives codes 0), `y = f32(v ·
//! f32(1 / a))`, clamped to [−1, 1], is mapped onto a uniform grid of 65 536 points,
//! `j = trunc(fma(f32((y + 1) · 0.5), 65535, 0.5))` (the C++ kernel is compiled with FMA contraction),
//! and the code is the number of midpoints `0.5 · (m_i + m_(i+1))` of the 256-entry dynamic map below
//! grid point `g_j = f32(f32(2j) / 65535) − 1`. That grid is why codes near zero differ from a nearest-entry
//! search. A non-finite absmax (a NaN or ±Inf weight) has no defined code there (a float-to-integer
//! conversion of NaN in C++), so [`quantize`] with `double_quant` rejects it.
//!
//! # bitsandbytes' CUDA backend differs
//! Its kernels (`kQuantizeBlockwise`) multiply every block, the partial one included, by `1/absmax`;
//! pick FP4 codes with a threshold tree on |y| (constants 0.00260417, 0.0859375, 0.20833333,
//! 0.29166667, 0.4166667, 0.583333, 0.8333333, some an ulp off the midpoints; ties to the lower
//! magnitude; the sign bit from y < 0), so negative ties, values within an ulp of those constants and
//! the zero codes' sign can differ from the CPU bytes; write `0x00` for an all-zero block; and quantise
//! the absmax with a binary search instead of the 65 536-point grid. Values agree after
//! dequantisation except on those ties. This crate follows the CPU backend everywhere.
use super::{validate_blocksize, Absmax, Quant4Weight, QuantType};
use crate::error::{invalid, Result};
use crate::{DType, Element};
use std::cmp::Ordering;

/// The table's indices in increasing order of value (a stable sort: equal entries, FP4's two zeros,
/// in index order, as the golden cases show torch's `argsort` leaves them).
pub fn sorted_order(code: &[f32; 16]) -> [u8; 16] {
    let mut order: [u8; 16] = std::array::from_fn(|i| i as u8);
    order.sort_by(|&a, &b| {
        code[a as usize]
            .partial_cmp(&code[b as usize])
            .unwrap_or(Ordering::Equal)
    });
    order
}

/// The bucket search of one code table: its sorted order and the 15 midpoints.
#[derive(Clone, Copy, Debug)]
pub struct Bucketizer {
    order: [u8; 16],
    midpoints: [f32; 15],
}

impl Bucketizer {
    /// The search over `code` (16 entries, any order).
    pub fn new(code: &[f32; 16]) -> Self {
        let order = sorted_order(code);
        let midpoints =
            std::array::from_fn(|i| (code[order[i] as usize] + code[order[i + 1] as usize]) / 2.0);
        Bucketizer { order, midpoints }
    }

    /// The f32 midpoints of neighbouring entries in increasing order.
    pub fn midpoints(&self) -> &[f32; 15] {
        &self.midpoints
    }

    /// The table index of scaled value `y` (see the module docs): the number of midpoints not ≥ y
    /// picks the entry in sorted order.
    pub fn code(&self, y: f32) -> u8 {
        // `t < y`, or unordered (y NaN): torch's lower bound tests `!(t >= y)`.
        let bucket = self
            .midpoints
            .iter()
            .filter(|&&t| !matches!(t.partial_cmp(&y), Some(Ordering::Greater | Ordering::Equal)))
            .count();
        self.order[bucket]
    }
}

/// The 4-bit code of a value already scaled into [-1, 1] (NaN: the last bucket).
pub fn quantize_value(quant_type: QuantType, y: f32) -> u8 {
    Bucketizer::new(quant_type.code()).code(y)
}

/// `max |x|` over a block as torch's `max` gives it: NaN if any element is NaN.
pub fn block_absmax(values: impl IntoIterator<Item = f32>) -> f32 {
    values.into_iter().fold(0.0f32, |m, v| {
        if m.is_nan() || v.is_nan() {
            f32::NAN
        } else {
            m.max(v.abs())
        }
    })
}

/// `max(absmax, 1e-38)` with NaN kept (torch's `clamp(min=1e-38)`).
fn clamp_min_scale(absmax: f32) -> f32 {
    if absmax.is_nan() {
        absmax
    } else {
        absmax.max(1e-38)
    }
}

/// `clamp(y, −1, 1)` with NaN kept (as `f32::clamp` keeps it).
fn clamp_unit(y: f32) -> f32 {
    y.clamp(-1.0, 1.0)
}

/// The scaled values of one block (see the module docs): `x · (1 / max(absmax, 1e-38))` for a full
/// block, `x / max(absmax, 1e-38)` for the partial last one, clamped to [−1, 1].
pub fn scale_block(values: &[f32], absmax: f32, full: bool) -> Vec<f32> {
    let denom = clamp_min_scale(absmax);
    let recip = 1.0f32 / denom;
    values
        .iter()
        .map(|&v| clamp_unit(if full { v * recip } else { v / denom }))
        .collect()
}

/// Quantises W [n, k] (row-major, flattened) as bitsandbytes' CPU backend does (module docs): the
/// absmax per block of `blocksize` elements (f32), codes by bucket search, two per byte with the
/// first element in the high nibble. With `double_quant` the absmax is quantised as in
/// [`double_quantize`], and a NaN or infinite weight is an error.
pub fn quantize<T: Element>(
    weight: &[T],
    shape: [usize; 2],
    blocksize: usize,
    quant_type: QuantType,
    double_quant: bool,
) -> Result<Quant4Weight> {
    validate_blocksize(blocksize)?;
    let numel = Quant4Weight::numel(shape)?;
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
    let search = Bucketizer::new(quant_type.code());
    let mut codes = Vec::with_capacity(numel + 1);
    let mut absmax = Vec::with_capacity(numel.div_ceil(blocksize));
    for block in weight[..numel].chunks(blocksize) {
        let values: Vec<f32> = block.iter().map(|v| v.to_f64() as f32).collect();
        let amax = block_absmax(values.iter().copied());
        absmax.push(amax);
        let full = block.len() == blocksize;
        codes.extend(
            scale_block(&values, amax, full)
                .into_iter()
                .map(|y| search.code(y)),
        );
    }
    if numel % 2 == 1 {
        codes.push(search.code(0.0));
    }
    let packed = codes.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect();
    let absmax = if double_quant {
        double_quantize(&absmax, 256)?
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
/// total_bits=8)`) with the exact f32 values torch builds: for i = 0..6, `b = linspace(0.1, 1, 2^i + 1)`
/// in f32 as torch's CPU kernel computes it (step `(1 − 0.1) / (len − 1)`, the first half
/// `0.1 + step·j`, the second `1 − step·(len − 1 − j)`, each a fused multiply-add in torch's
/// vectorised builds), the midpoints `(b_j + b_(j+1)) / 2`, times ±f32(10^(i−6)); then 0 and 1, sorted.
/// It equals the `nested_quant_map` bitsandbytes serialises (the golden cases check it).
pub fn dynamic_map() -> Vec<f32> {
    let mut data = Vec::with_capacity(256);
    for i in 0..7 {
        let items = (1usize << i) + 1;
        let (start, end) = (0.1f32, 1.0f32);
        let step = (end - start) / (items - 1) as f32;
        let bounds: Vec<f32> = (0..items)
            .map(|j| {
                if j < items / 2 {
                    step.mul_add(j as f32, start)
                } else {
                    (-step).mul_add((items - 1 - j) as f32, end)
                }
            })
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
    data.sort_by(|a, b| a.total_cmp(b));
    data
}

/// The double-quantisation offset: the mean absmax, summed in f64 and rounded once to f32. A NaN or
/// infinite absmax is an error (bitsandbytes' CPU kernel has no defined code for it).
pub fn absmax_offset(absmax: &[f32]) -> Result<f32> {
    if let Some(i) = absmax.iter().position(|a| !a.is_finite()) {
        return Err(invalid(
            "weight",
            "finite values for double quantisation (a NaN or infinite weight has no defined \
             nested absmax code)",
            format!("absmax {} in block {i}", absmax[i]),
        ));
    }
    if absmax.is_empty() {
        return Err(invalid("absmax", "at least one block", 0));
    }
    Ok((absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len() as f64) as f32)
}

/// The grid point of scaled value `y` in bitsandbytes' 65 536-point table (module docs).
pub fn grid_index(y: f32) -> u16 {
    let y = y.clamp(-1.0, 1.0);
    ((y + 1.0) * 0.5).mul_add(65535.0, 0.5) as u16
}

/// The map code of every grid point `j` (bitsandbytes' table): the number of midpoints
/// `0.5 · (m_i + m_(i+1))` below `g_j = f32(f32(2j) / 65535) − 1`, found by one forward scan as the
/// C++ kernel builds it (the map is sorted).
pub fn grid_codes(map: &[f32]) -> Vec<u8> {
    let midpoints: Vec<f32> = map.windows(2).map(|w| 0.5f32 * (w[0] + w[1])).collect();
    let mut code = 0usize;
    (0..=u16::MAX)
        .map(|j| {
            let g = -1.0f32 + (2.0f32 * j as f32) / 65535.0;
            while code < midpoints.len() && midpoints[code] < g {
                code += 1;
            }
            code as u8
        })
        .collect()
}

/// Double quantisation of the absmax as bitsandbytes' CPU kernel does it (module docs): the offset
/// ([`absmax_offset`]), then blocks of `nested_blocksize` centred values scaled by their absmax and
/// coded through the 65 536-point grid against [`dynamic_map`]. A `nested_blocksize` of 0 is an error.
pub fn double_quantize(absmax: &[f32], nested_blocksize: usize) -> Result<Absmax> {
    if nested_blocksize == 0 {
        return Err(invalid("nested_blocksize", "at least 1", 0));
    }
    let offset = absmax_offset(absmax)?;
    let map = dynamic_map();
    let grid = grid_codes(&map);
    let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let mut nested_absmax = Vec::new();
    let mut codes = Vec::with_capacity(absmax.len());
    for block in centred.chunks(nested_blocksize) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        nested_absmax.push(amax);
        if amax == 0.0 {
            codes.extend(std::iter::repeat_n(0u8, block.len()));
            continue;
        }
        let recip = 1.0f32 / amax;
        codes.extend(block.iter().map(|&v| grid[grid_index(v * recip) as usize]));
    }
    Ok(Absmax::Nested {
        codes,
        nested_absmax,
        nested_code: map,
        nested_blocksize,
        offset,
    })
}

/// Dequantises to [n, k] elements of `T`: `T(code[q] · absmax[i / blocksize])`, an f32 multiply rounded
/// once (bitsandbytes' `dequantize_4bit`).
pub fn dequantize<T: Element>(weight: &Quant4Weight) -> Result<Vec<T>> {
    weight.validate()?;
    let numel = Quant4Weight::numel(weight.shape)?;
    let absmax = weight.absmax.values()?;
    Ok((0..numel)
        .map(|i| {
            let byte = weight.packed[i / 2];
            let q = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
            T::from_f64((weight.code[q as usize] * absmax[i / weight.blocksize]) as f64)
        })
        .collect())
}

/// Whether two packed buffers hold the same codes, counting FP4's two zeros (`0b0000`, `0b1000`) as
/// one: for comparing against checkpoints made by bitsandbytes' CUDA backend, which gives a zero code
/// the sign of the value where the CPU backend (and this crate) splits the zero bucket at 0.
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
    use super::super::{FP4_CODE, NF4_CODE};
    use super::*;

    fn nf4() -> Bucketizer {
        Bucketizer::new(&NF4_CODE)
    }

    fn fp4() -> Bucketizer {
        Bucketizer::new(&FP4_CODE)
    }

    fn next_up(v: f32) -> f32 {
        if v >= 0.0 {
            f32::from_bits(v.to_bits() + 1)
        } else {
            f32::from_bits(v.to_bits() - 1)
        }
    }

    #[test]
    fn midpoints_are_bitsandbytes() {
        let t = nf4().midpoints;
        assert_eq!(t[0], -0.848_096_4);
        assert_eq!(t[7], 0.039_790_15);
        assert_eq!(t[14], 0.861_478_45);
        assert_eq!(FP4_CODE[1], 0.005_208_333_5);
        assert_eq!(
            FP4_CODE[8].to_bits(),
            0,
            "bitsandbytes' FP4 entry 8 is +0.0"
        );
        // FP4 in increasing value: -1, -2/3, -1/2, -1/3, -1/4, -1/6, -1/192, 0 (code 0), 0 (code 8),
        // 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1.
        assert_eq!(
            fp4().order,
            [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3]
        );
        assert_eq!(nf4().order, std::array::from_fn(|i| i as u8));
        let t = fp4().midpoints;
        assert_eq!(t[3], -0.291_666_7);
        assert_eq!(t[6], -0.002_604_166_7);
        assert_eq!(t[7].to_bits(), 0);
        assert_eq!(t[8], 0.002_604_166_7);
        assert_eq!(t[11], 0.291_666_7);
    }

    #[test]
    fn every_entry_codes_to_itself() {
        for (q, &c) in NF4_CODE.iter().enumerate() {
            assert_eq!(nf4().code(c) as usize, q);
        }
        for (q, &c) in FP4_CODE.iter().enumerate().filter(|(q, _)| *q != 8) {
            assert_eq!(fp4().code(c) as usize, q);
        }
    }

    /// A value on a midpoint goes to the lower value, the next f32 up to the higher one.
    #[test]
    fn ties_go_to_the_lower_value() {
        for (search, name) in [(nf4(), "nf4"), (fp4(), "fp4")] {
            for (i, &t) in search.midpoints.iter().enumerate() {
                assert_eq!(search.code(t), search.order[i], "{name} tie {i}");
                assert_eq!(search.code(next_up(t)), search.order[i + 1], "{name} {i}");
            }
        }
        // FP4 ties by hand: -0.2916667 (f32 0xbe955556) lies between -1/3 (0b1100) and -1/4 (0b1111):
        // the lower value, -1/3, the LARGER magnitude (bitsandbytes' CUDA tree gives -1/4).
        // +0.2916667: 1/4 (0b0111).
        assert_eq!(fp4().code(-0.291_666_7), 0b1100);
        assert_eq!(fp4().code(0.291_666_7), 0b0111);
        // NF4: 0.03979015 between 0 (7) and 0.0795803 (8).
        assert_eq!(nf4().code(0.039_790_15), 7);
        assert_eq!(nf4().code(0.039_790_16), 8);
    }

    /// Around zero: ±0 give the code of 0; FP4 sends small positive values to the second zero entry,
    /// 0b1000, and small negative ones to 0b0000.
    #[test]
    fn values_around_zero() {
        assert_eq!(nf4().code(0.0), 7);
        assert_eq!(nf4().code(-0.0), 7);
        assert_eq!(nf4().code(1e-30), 7);
        assert_eq!(nf4().code(-1e-30), 7);
        assert_eq!(fp4().code(0.0), 0);
        assert_eq!(fp4().code(-0.0), 0);
        assert_eq!(fp4().code(f32::from_bits(1)), 0b1000);
        assert_eq!(fp4().code(1e-30), 0b1000);
        assert_eq!(fp4().code(0.002_604_166_7), 0b1000);
        assert_eq!(fp4().code(0.002_604_167), 0b0001);
        assert_eq!(fp4().code(-1e-30), 0);
        // The negative midpoint -0.0026041667 itself goes to the lower value, -1/192 (0b1001).
        assert_eq!(fp4().code(next_up(-0.002_604_166_7)), 0);
        assert_eq!(fp4().code(-0.002_604_166_7), 0b1001);
    }

    #[test]
    fn nan_takes_the_last_bucket() {
        assert_eq!(nf4().code(f32::NAN), 15);
        assert_eq!(fp4().code(f32::NAN), 0b0011);
    }

    fn codes(q: &Quant4Weight) -> Vec<u8> {
        q.packed.iter().flat_map(|b| [b >> 4, b & 15]).collect()
    }

    #[test]
    fn repeated_value_block_codes_to_the_extremes() {
        let w = vec![0.1f32; 64];
        let q = quantize(&w, [1, 64], 64, QuantType::Nf4, false).unwrap();
        assert_eq!(q.absmax, Absmax::Plain(vec![0.1]));
        assert!(q.packed.iter().all(|&b| b == 0xff));
        let w = vec![-0.1f32; 64];
        let q = quantize(&w, [1, 64], 64, QuantType::Fp4, false).unwrap();
        assert!(q.packed.iter().all(|&b| b == 0xbb), "{:x?}", q.packed);
        let q = quantize(&[0.0f32; 64], [2, 32], 64, QuantType::Nf4, false).unwrap();
        assert_eq!(q.absmax, Absmax::Plain(vec![0.0]));
        assert!(q.packed.iter().all(|&b| b == 0x77));
    }

    /// A subnormal absmax is scaled against 1e-38, not itself: 5e-39 becomes about 0.5 (NF4 12, 0.4407),
    /// -5e-39 about -0.5 (NF4 2, -0.525), 1e-40 about 0.01 (NF4 7, 0).
    #[test]
    fn subnormal_absmax() {
        let w = [5e-39f32, -5e-39, 1e-40, 0.0];
        let q = quantize(&w, [1, 4], 32, QuantType::Nf4, false).unwrap();
        assert_eq!(q.absmax, Absmax::Plain(vec![5e-39]));
        assert_eq!(codes(&q), [12, 2, 7, 7]);
        let q = quantize(&[1e-40f32, -1e-40], [1, 2], 32, QuantType::Nf4, false).unwrap();
        assert_eq!(codes(&q), [7, 7]);
    }

    /// bitsandbytes' results for non-finite weights: NaN makes the absmax NaN and every code the last
    /// bucket; ±Inf makes it Inf, the finite values scale to 0 and the infinite ones to NaN. With double
    /// quantisation there is no defined result: an error.
    #[test]
    fn non_finite_weights() {
        let mut w = vec![0.25f32; 32];
        w[5] = f32::NAN;
        w.extend([0.5f32, f32::INFINITY, -0.25, f32::NEG_INFINITY]);
        w.extend(vec![0.0f32; 28]);
        let q = quantize(&w, [2, 32], 32, QuantType::Nf4, false).unwrap();
        let Absmax::Plain(a) = &q.absmax else {
            panic!("plain")
        };
        assert!(a[0].is_nan());
        assert_eq!(a[1], f32::INFINITY);
        let c = codes(&q);
        assert!(c[..32].iter().all(|&v| v == 15));
        assert_eq!(&c[32..36], &[7, 15, 7, 15]);
        assert!(c[36..].iter().all(|&v| v == 7));
        let q = quantize(&w, [2, 32], 32, QuantType::Fp4, false).unwrap();
        let c = codes(&q);
        assert!(c[..32].iter().all(|&v| v == 3));
        assert_eq!(&c[32..36], &[0, 3, 0, 3]);
        assert!(quantize(&w, [2, 32], 32, QuantType::Nf4, true).is_err());
        let mut w = vec![0.25f32; 64];
        w[63] = f32::INFINITY;
        assert!(quantize(&w, [1, 64], 32, QuantType::Fp4, true).is_err());
    }

    /// The partial last block divides: 3 values of a blocksize-32 block.
    #[test]
    fn partial_last_block() {
        let mut w = vec![0.5f32; 32];
        w.extend([0.3f32, -0.6, 0.6]);
        let q = quantize(&w, [5, 7], 32, QuantType::Nf4, false).unwrap();
        assert_eq!(q.absmax, Absmax::Plain(vec![0.5, 0.6]));
        let c = codes(&q);
        // 0.3 / 0.6 = 0.5 -> 12; -1 -> 0; 1 -> 15; the pad nibble is the code of 0.
        assert_eq!(&c[32..], &[12, 0, 15, 7]);
        assert_eq!(q.packed.len(), 18);
    }

    #[test]
    fn dynamic_map_has_256_sorted_entries() {
        let m = dynamic_map();
        assert_eq!(m.len(), 256);
        assert!(m.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(m[255], 1.0);
        assert_eq!(m[0], -0.992_968_75);
        assert_eq!(m[127].to_bits(), 0);
    }

    /// The dynamic map is bitsandbytes' serialised `nested_quant_map`, bit for bit.
    #[test]
    fn dynamic_map_is_the_serialised_one() {
        let dir = crate::golden::golden_dir();
        let case = crate::golden::GoldenCase::load(&dir.join("fp4_bf16_bs64_dq_wide.safetensors"))
            .unwrap();
        let theirs: Vec<f32> = case.values("nested_code").unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&dynamic_map()), bits(&theirs));
    }

    /// The grid: -1 is point 0 and code 0, 1 is point 65535 and code 255, 0 is point 32768, whose value
    /// f32(65536 / 65535) - 1 = 1.53e-5 lies above the midpoints 2.75e-7, 1.9e-6, 5.5e-6 and 1.45e-5 of
    /// the map's first positive entries: code 131 (2.125e-5), not the map's 0 (127); point 32767
    /// (-1.53e-5) is code 123 (-2.125e-5).
    #[test]
    fn grid_ends_and_middle() {
        assert_eq!(grid_index(-1.0), 0);
        assert_eq!(grid_index(1.0), 65535);
        assert_eq!(grid_index(0.0), 32768);
        let g = grid_codes(&dynamic_map());
        assert_eq!(g[0], 0);
        assert_eq!(g[65535], 255);
        assert_eq!(g[32768], 131);
        assert_eq!(g[32767], 123);
    }

    /// Equal absmax everywhere: the centred values are 0, the nested absmax 0 and every code 0.
    #[test]
    fn double_quantize_constant_absmax() {
        let Absmax::Nested {
            codes,
            nested_absmax,
            offset,
            ..
        } = double_quantize(&[0.75; 300], 256).unwrap()
        else {
            panic!("nested")
        };
        assert_eq!(offset, 0.75);
        assert_eq!(nested_absmax, [0.0, 0.0]);
        assert!(codes.iter().all(|&c| c == 0));
    }

    /// Degenerate arguments are errors, not panics: a nested block size of 0, a shape whose n · k
    /// overflows (release builds used to wrap it to a small size and return Ok), and nested absmax
    /// parts that do not fit together when rebuilt.
    #[test]
    fn degenerate_arguments_are_errors() {
        assert!(double_quantize(&[0.5; 4], 0).is_err());
        let huge = [(1usize << 63) + 1, 2];
        assert!(quantize(&[0.5f32; 4], huge, 64, QuantType::Nf4, false).is_err());
        assert!(Quant4Weight::blocks(huge, 64).is_err());
        assert!(Quant4Weight::blocks([2, 2], 0).is_err());
        let nested =
            |nested_blocksize, nested_absmax: Vec<f32>, nested_code: Vec<f32>| Absmax::Nested {
                codes: vec![255; 3],
                nested_absmax,
                nested_code,
                nested_blocksize,
                offset: 0.0,
            };
        assert!(nested(0, vec![1.0], dynamic_map()).values().is_err());
        assert!(nested(1, vec![1.0], dynamic_map()).values().is_err());
        assert!(nested(256, vec![1.0], vec![0.5; 16]).values().is_err());
        assert_eq!(
            nested(2, vec![1.0, 2.0], dynamic_map()).values().unwrap(),
            [1.0, 1.0, 2.0]
        );
    }
}
