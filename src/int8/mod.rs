//! bitsandbytes' LLM.int8 weights (`Linear8bitLt`, `Int8Params`): row-wise int8 codes
//! `CB` [n, k] with one f32 scale per row `SCB` `[n]` (the row's absmax): `W ≈ CB · SCB / 127`.
//! [`reference`](mod@reference) quantises, dequantises and multiplies on the CPU (weight-only, and the LLM.int8
//! algorithm bitsandbytes runs on CUDA, with its outlier threshold); [`Int8Weight::from_state_dict`]
//! reads a `Linear8bitLt` state dict as bitsandbytes saves it. On the GPU: [`crate::Gpu::quantize_int8`],
//! the weight-only [`crate::Gpu::int8_linear`] (GEMV up to 8 rows, the tiled kernel of
//! `kernels/linear.cu` above), LLM.int8 with its outlier threshold ([`crate::Gpu::int8_linear_llm`],
//! IMMA tensor cores), [`crate::Gpu::quantized_lora_forward`], the DoRA norm from CB and SCB
//! ([`crate::Gpu::dora_factor_quantized`]) and merging by requantising
//! ([`crate::Gpu::merge_adapter_int8`]). The GPU quantiser [`crate::Gpu::quantize_int8`] and the
//! requantising merge are the requantising row pass of `kernels/dora.cu` (launched from the `dora`
//! family, whose references are [`crate::dora::reference::merge_adapter_int8`] and
//! [`crate::dora::reference::unmerge_adapter_int8`]); they are tested code for code against
//! [`reference::quantize_rowwise`] (bitsandbytes' CPU backend: see [`reference`](mod@reference) for the
//! arithmetic and for where the crate follows bitsandbytes' CUDA kernels instead). Where each kernel
//! has run (a GPU, the PTX emulator) is in the README's verification table.
pub(crate) mod gpu;
pub mod reference;

pub use gpu::Int8Device;

use crate::error::{file_error, invalid, read_safetensors, Result};

/// The largest f16, the largest row absmax (`SCB`) of a weight LLM.int8 rounds to f16.
const F16_MAX: f32 = 65504.0;

/// bitsandbytes' dequantisation constant, f32(1/127) = 7.874015718698502e-3.
pub const INV_127: f32 = 1.0 / 127.0;

/// A row-wise int8 weight W [n, k]: codes and per-row scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Weight {
    /// [n, k] = (out_features, in_features).
    pub shape: [usize; 2],
    /// Codes, row-major [n, k], in −127..=127.
    pub cb: Vec<i8>,
    /// Per-row absmax `[n]` (bitsandbytes' `SCB`).
    pub scb: Vec<f32>,
}

impl Int8Weight {
    /// Checks that the codes and scales match the shape and are values bitsandbytes' row-wise
    /// quantisation can produce: codes in −127..=127, every SCB from 0 to 65504 (the row absmax of
    /// the weight rounded to f16), +inf or NaN (the absmax of a row holding an infinite or NaN weight,
    /// which dequantises to NaN: such weights load as they are), and only zero codes in a row whose
    /// SCB is 0 (an all-zero row).
    pub fn validate(&self) -> Result<()> {
        self.check("weight (CB)", "SCB")
    }

    /// [`Int8Weight::validate`] with the codes and scales named `cb_name` and `scb_name`.
    fn check(&self, cb_name: &str, scb_name: &str) -> Result<()> {
        let [n, k] = self.shape;
        if n == 0 || k == 0 {
            return Err(invalid(
                "shape",
                "no zero dimension",
                format!("{:?}", self.shape),
            ));
        }
        let numel = n.checked_mul(k).ok_or_else(|| {
            invalid(
                "shape",
                "a size that fits in memory",
                format!("{:?}", self.shape),
            )
        })?;
        if self.cb.len() != numel {
            return Err(invalid(
                cb_name,
                format!("{numel} codes ([n={n}, k={k}])"),
                self.cb.len(),
            ));
        }
        if self.scb.len() != n {
            return Err(invalid(scb_name, format!("{n} row scales"), self.scb.len()));
        }
        if let Some(i) = self.cb.iter().position(|&c| c == i8::MIN) {
            return Err(invalid(
                cb_name,
                "codes in -127..=127 (bitsandbytes' row-wise int8)",
                format!("-128 at index {i} ([{}, {}])", i / k, i % k),
            ));
        }
        let possible = |s: &f32| s.is_nan() || *s == f32::INFINITY || (0.0..=F16_MAX).contains(s);
        if let Some(r) = self.scb.iter().position(|s| !possible(s)) {
            return Err(invalid(
                scb_name,
                "row absmax values from 0 to 65504, +inf or NaN (LLM.int8 quantises the f16 weight)",
                format!("{:?} at index {r}", self.scb[r]),
            ));
        }
        for (r, row) in self.cb.chunks_exact(k).enumerate() {
            if self.scb[r] == 0.0 {
                if let Some(c) = row.iter().position(|&q| q != 0) {
                    return Err(invalid(
                        cb_name,
                        format!("only zero codes in row {r}, whose {scb_name} is 0"),
                        format!("{} at [{r}, {c}]", row[c]),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads a `Linear8bitLt` state dict: `<prefix>weight` (I8 [n, k]), `<prefix>SCB` (F32 `[n]`) and,
    /// when present, `<prefix>weight_format` as bitsandbytes writes it (a one-element U8 tensor; 0 =
    /// row-major, the only layout supported). Missing keys, wrong dtypes or lengths, other weight
    /// formats and values [`Int8Weight::validate`] refuses are `Error::File`s naming the key.
    pub fn from_state_dict(bytes: &[u8], prefix: &str, origin: &str) -> Result<Self> {
        use safetensors::Dtype as StDtype;
        let st = read_safetensors(bytes, origin)?;
        let get = |key: &str, dtype: StDtype| {
            let t = st
                .tensor(&format!("{prefix}{key}"))
                .map_err(|_| file_error(origin, format!("missing `{prefix}{key}`")))?;
            if t.dtype() != dtype {
                return Err(file_error(
                    origin,
                    format!("`{prefix}{key}` is {:?}, expected {dtype:?}", t.dtype()),
                ));
            }
            Ok(t)
        };
        let weight = get("weight", StDtype::I8)?;
        if weight.shape().len() != 2 {
            return Err(file_error(
                origin,
                format!("`{prefix}weight` is {:?}, expected [n, k]", weight.shape()),
            ));
        }
        let shape = [weight.shape()[0], weight.shape()[1]];
        let cb = weight.data().iter().map(|&b| b as i8).collect();
        let scb = get("SCB", StDtype::F32)?
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        // bitsandbytes writes `torch.tensor(0, dtype=torch.uint8)` (older versions 1..3 for the
        // col32 / turing / ampere layouts) and reads it back with `.item()`.
        if st.tensor(&format!("{prefix}weight_format")).is_ok() {
            let format = get("weight_format", StDtype::U8)?;
            if format.data() != [0] {
                let layout = match format.data() {
                    [1] => " (col32)",
                    [2] => " (col_turing)",
                    [3] => " (col_ampere)",
                    _ => "",
                };
                return Err(file_error(
                    origin,
                    format!(
                        "`{prefix}weight_format`: expected one value, 0 (row-major, the only layout                          supported), got {:?}{layout} (shape {:?})",
                        format.data(),
                        format.shape()
                    ),
                ));
            }
        }
        let w = Int8Weight { shape, cb, scb };
        w.check(&format!("{prefix}weight"), &format!("{prefix}SCB"))
            .map_err(|e| file_error(origin, e))?;
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_constant_is_bitsandbytes() {
        assert_eq!((super::INV_127 as f64).to_string(), "0.007874015718698502");
    }
}
