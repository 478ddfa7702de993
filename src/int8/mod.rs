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

use crate::error::{file_error, invalid, Result};

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
    /// Checks that the codes and scales match the shape.
    pub fn validate(&self) -> Result<()> {
        let [n, k] = self.shape;
        if n == 0 || k == 0 {
            return Err(invalid(
                "shape",
                "no zero dimension",
                format!("{:?}", self.shape),
            ));
        }
        if self.cb.len() != n * k {
            return Err(invalid(
                "weight (CB)",
                format!("{} codes ([n={n}, k={k}])", n * k),
                self.cb.len(),
            ));
        }
        if self.scb.len() != n {
            return Err(invalid("SCB", format!("{n} row scales"), self.scb.len()));
        }
        Ok(())
    }

    /// Reads a `Linear8bitLt` state dict: `<prefix>weight` (I8 [n, k]), `<prefix>SCB` (F32 `[n]`) and
    /// `<prefix>weight_format` (U8, 0 = row-major). Missing keys, wrong dtypes or lengths, and other
    /// weight formats are errors naming the key.
    pub fn from_state_dict(bytes: &[u8], prefix: &str, origin: &str) -> Result<Self> {
        use safetensors::{Dtype as StDtype, SafeTensors};
        let st = SafeTensors::deserialize(bytes).map_err(|e| file_error(origin, e))?;
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
        if let Ok(format) = get("weight_format", StDtype::U8) {
            if format.data().first().copied().unwrap_or(0) != 0 {
                return Err(file_error(
                    origin,
                    format!(
                        "`{prefix}weight_format` is {:?}: only 0 (row-major) is supported",
                        format.data()
                    ),
                ));
            }
        }
        let w = Int8Weight { shape, cb, scb };
        w.validate().map_err(|e| file_error(origin, e))?;
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
