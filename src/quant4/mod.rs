//! bitsandbytes' 4-bit formats, NF4 and FP4, byte for byte (bitsandbytes' `quantize_4bit` /
//! `dequantize_4bit` and `Linear4bit`'s saved `quant_state`):
//! blockwise absmax over the flattened row-major weight (blocks may straddle rows, the last may be
//! partial), two codes per byte with the first element in the high nibble, and optional double
//! quantisation of the absmax (8-bit codes in blocks of 256 against the signed dynamic map, plus an
//! offset). [`reference`](mod@reference) quantises and dequantises on the CPU; [`Quant4Weight::from_state_dict`]
//! reads a `Linear4bit` state dict as bitsandbytes saves it. On the GPU: [`crate::Gpu::quantize_quant4`]
//! (the quantiser), [`crate::Gpu::quant4_dequantize`], [`crate::Gpu::quant4_linear`] (GEMV up to 8
//! rows in `kernels/quant4.cu`, the tiled tensor-core kernel of `kernels/linear.cu` above),
//! [`crate::Gpu::quantized_lora_forward`] (QLoRA) and the DoRA norm straight from the codes
//! ([`crate::Gpu::dora_factor_quantized`]). The GPU quantiser is tested byte for byte against
//! [`reference::quantize`] (bitsandbytes' CPU backend; its docs give the arithmetic and how
//! bitsandbytes' CUDA kernels differ). Where each kernel has run (a GPU, the PTX emulator) is in the
//! README's verification table.
pub(crate) mod gpu;
pub mod reference;

pub use gpu::Quant4Device;

use crate::error::{file_error, invalid, Result};
use crate::DType;

/// The NF4 code table (index 0..15), exactly bitsandbytes' float32 values.
#[allow(clippy::excessive_precision)] // bitsandbytes' published digits; each rounds to its f32
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// The FP4 code table (sign bit 3, 3 magnitude bits), bitsandbytes' raw values / 12 in f32, as
/// `get_4bit_type("fp4")` builds it and `Linear4bit` serialises it: entry 8, the "negative zero" code,
/// holds +0.0 (bitsandbytes writes it as the integer literal `-0`, which is 0).
pub const FP4_CODE: [f32; 16] = [
    0.0,
    0.0625 / 12.0,
    8.0 / 12.0,
    1.0,
    4.0 / 12.0,
    6.0 / 12.0,
    2.0 / 12.0,
    3.0 / 12.0,
    0.0,
    -0.0625 / 12.0,
    -8.0 / 12.0,
    -1.0,
    -4.0 / 12.0,
    -6.0 / 12.0,
    -2.0 / 12.0,
    -3.0 / 12.0,
];

/// NF4 or FP4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantType {
    /// 4-bit NormalFloat.
    Nf4,
    /// 4-bit float (1 sign, 3 magnitude bits).
    Fp4,
}

impl QuantType {
    /// Parses bitsandbytes' `quant_type` (`nf4`, `fp4`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "nf4" => Some(QuantType::Nf4),
            "fp4" => Some(QuantType::Fp4),
            _ => None,
        }
    }

    /// The 16-entry code table.
    pub fn code(self) -> &'static [f32; 16] {
        match self {
            QuantType::Nf4 => &NF4_CODE,
            QuantType::Fp4 => &FP4_CODE,
        }
    }
}

/// Checks a blocksize: a power of two from 32 to 4096.
pub fn validate_blocksize(blocksize: usize) -> Result<()> {
    if !(32..=4096).contains(&blocksize) || !blocksize.is_power_of_two() {
        return Err(invalid(
            "blocksize",
            "a power of two from 32 to 4096",
            blocksize,
        ));
    }
    Ok(())
}

/// The per-block scales: plain f32, or double-quantised (8-bit codes into `nested_code`, one f32 scale
/// per 256 blocks, and an offset): `absmax[i] = nested_code[codes[i]] * nested_absmax[i / 256] + offset`.
#[derive(Clone, Debug, PartialEq)]
pub enum Absmax {
    /// One f32 absmax per block.
    Plain(Vec<f32>),
    /// Double quantisation.
    Nested {
        /// One 8-bit code per block.
        codes: Vec<u8>,
        /// One f32 scale per `nested_blocksize` blocks.
        nested_absmax: Vec<f32>,
        /// The 256-entry code table of the codes (use the serialised one: CPU-made checkpoints differ).
        nested_code: Vec<f32>,
        /// Blocks per nested scale (256).
        nested_blocksize: usize,
        /// Added after scaling.
        offset: f32,
    },
}

impl Absmax {
    /// The f32 absmax of every block (rebuilt with an f32 multiply then add, as bitsandbytes does).
    pub fn values(&self) -> Vec<f32> {
        match self {
            Absmax::Plain(v) => v.clone(),
            Absmax::Nested {
                codes,
                nested_absmax,
                nested_code,
                nested_blocksize,
                offset,
            } => codes
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    nested_code[c as usize] * nested_absmax[i / nested_blocksize] + offset
                })
                .collect(),
        }
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        match self {
            Absmax::Plain(v) => v.len(),
            Absmax::Nested { codes, .. } => codes.len(),
        }
    }

    /// Whether there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A 4-bit weight W [n, k] in bitsandbytes' layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Quant4Weight {
    /// NF4 or FP4.
    pub quant_type: QuantType,
    /// Elements per absmax block (a power of two, 32 to 4096).
    pub blocksize: usize,
    /// The original shape [n, k] (out_features, in_features).
    pub shape: [usize; 2],
    /// The dtype dequantisation produces (bitsandbytes' `quant_state.dtype`).
    pub dtype: DType,
    /// Two codes per byte, first element in the high nibble: `(n * k + 1) / 2` bytes.
    pub packed: Vec<u8>,
    /// Per-block scales.
    pub absmax: Absmax,
    /// The 16-entry code table as serialised (`weight.quant_map`).
    pub code: [f32; 16],
}

impl Quant4Weight {
    /// Number of absmax blocks of an [n, k] weight.
    pub fn blocks(shape: [usize; 2], blocksize: usize) -> usize {
        (shape[0] * shape[1]).div_ceil(blocksize)
    }

    /// Checks that the parts agree: packed length, number of blocks, nested lengths.
    pub fn validate(&self) -> Result<()> {
        validate_blocksize(self.blocksize)?;
        let numel = self.shape[0].checked_mul(self.shape[1]).ok_or_else(|| {
            invalid(
                "shape",
                "a size that fits in memory",
                format!("{:?}", self.shape),
            )
        })?;
        if numel == 0 {
            return Err(invalid(
                "shape",
                "no zero dimension",
                format!("{:?}", self.shape),
            ));
        }
        if self.packed.len() != numel.div_ceil(2) {
            return Err(invalid(
                "packed",
                format!(
                    "{} bytes (two codes per byte of {numel} elements)",
                    numel.div_ceil(2)
                ),
                self.packed.len(),
            ));
        }
        let blocks = Self::blocks(self.shape, self.blocksize);
        if self.absmax.len() != blocks {
            return Err(invalid(
                "absmax",
                format!("{blocks} blocks of {}", self.blocksize),
                self.absmax.len(),
            ));
        }
        if let Absmax::Nested {
            nested_absmax,
            nested_code,
            nested_blocksize,
            ..
        } = &self.absmax
        {
            if *nested_blocksize == 0 {
                return Err(invalid("nested_blocksize", "at least 1", 0));
            }
            let want = blocks.div_ceil(*nested_blocksize);
            if nested_absmax.len() != want {
                return Err(invalid(
                    "nested_absmax",
                    format!("{want} values"),
                    nested_absmax.len(),
                ));
            }
            if nested_code.len() != 256 {
                return Err(invalid("nested_quant_map", "256 values", nested_code.len()));
            }
        }
        Ok(())
    }

    /// Reads a `Linear4bit` state dict (`<prefix>weight`, `weight.absmax`, `weight.quant_map`,
    /// `weight.nested_absmax`, `weight.nested_quant_map`, `weight.quant_state.bitsandbytes__nf4|fp4`)
    /// from safetensors bytes. Missing keys, unknown quant types, bad blocksizes and lengths that do not
    /// match the shape are errors naming the key.
    pub fn from_state_dict(bytes: &[u8], prefix: &str, origin: &str) -> Result<Self> {
        use safetensors::{Dtype as StDtype, SafeTensors};
        let st = SafeTensors::deserialize(bytes).map_err(|e| file_error(origin, e))?;
        let get = |key: &str| {
            st.tensor(&format!("{prefix}{key}"))
                .map_err(|_| file_error(origin, format!("missing `{prefix}{key}`")))
        };
        let f32s = |key: &str| -> Result<Vec<f32>> {
            let t = get(key)?;
            if t.dtype() != StDtype::F32 {
                return Err(file_error(
                    origin,
                    format!("`{prefix}{key}` is {:?}, expected F32", t.dtype()),
                ));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let u8s = |key: &str| -> Result<Vec<u8>> {
            let t = get(key)?;
            if t.dtype() != StDtype::U8 {
                return Err(file_error(
                    origin,
                    format!("`{prefix}{key}` is {:?}, expected U8", t.dtype()),
                ));
            }
            Ok(t.data().to_vec())
        };

        // The quant state: its key names the quant type, its bytes are JSON.
        let state_key = st
            .names()
            .into_iter()
            .find(|k| k.starts_with(&format!("{prefix}weight.quant_state.bitsandbytes__")))
            .ok_or_else(|| {
                file_error(
                    origin,
                    format!("missing `{prefix}weight.quant_state.bitsandbytes__nf4` (or __fp4)"),
                )
            })?
            .to_string();
        let key_type = state_key
            .rsplit("__")
            .next()
            .unwrap_or_default()
            .to_string();
        let state_bytes = st
            .tensor(&state_key)
            .map_err(|e| file_error(origin, e))?
            .data()
            .to_vec();
        let state: serde_json::Value = serde_json::from_slice(&state_bytes)
            .map_err(|e| file_error(origin, format!("`{state_key}` is not JSON: {e}")))?;
        let field = |name: &str| {
            state
                .get(name)
                .ok_or_else(|| file_error(origin, format!("`{state_key}`: missing `{name}`")))
        };
        let type_name = field("quant_type")?.as_str().unwrap_or_default();
        let quant_type = QuantType::from_name(type_name).ok_or_else(|| {
            file_error(
                origin,
                format!("`{state_key}`: unknown quant_type {type_name:?} (nf4 or fp4)"),
            )
        })?;
        if type_name != key_type {
            return Err(file_error(
                origin,
                format!("`{state_key}` says quant_type {type_name:?}"),
            ));
        }
        let blocksize = field("blocksize")?.as_u64().ok_or_else(|| {
            file_error(
                origin,
                format!("`{state_key}`: blocksize is not an integer"),
            )
        })? as usize;
        validate_blocksize(blocksize).map_err(|e| file_error(origin, e))?;
        let dtype_name = field("dtype")?.as_str().unwrap_or_default();
        let dtype = DType::from_name(dtype_name).ok_or_else(|| {
            file_error(
                origin,
                format!("`{state_key}`: unsupported dtype {dtype_name:?}"),
            )
        })?;
        let shape_v: Vec<usize> = field("shape")?
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64().map(|x| x as usize))
                    .collect()
            })
            .unwrap_or_default();
        if shape_v.len() != 2 {
            return Err(file_error(
                origin,
                format!("`{state_key}`: shape must be [n, k], got {shape_v:?}"),
            ));
        }
        let shape = [shape_v[0], shape_v[1]];

        let packed = u8s("weight")?;
        let code_v = f32s("weight.quant_map")?;
        let code: [f32; 16] = code_v.as_slice().try_into().map_err(|_| {
            file_error(
                origin,
                format!(
                    "`{prefix}weight.quant_map` has {} values, expected 16",
                    code_v.len()
                ),
            )
        })?;
        let absmax = match state.get("nested_offset") {
            None => Absmax::Plain(f32s("weight.absmax")?),
            Some(offset) => Absmax::Nested {
                codes: u8s("weight.absmax")?,
                nested_absmax: f32s("weight.nested_absmax")?,
                nested_code: f32s("weight.nested_quant_map")?,
                nested_blocksize: state
                    .get("nested_blocksize")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(256) as usize,
                offset: offset.as_f64().ok_or_else(|| {
                    file_error(
                        origin,
                        format!("`{state_key}`: nested_offset is not a number"),
                    )
                })? as f32,
            },
        };
        let weight = Quant4Weight {
            quant_type,
            blocksize,
            shape,
            dtype,
            packed,
            absmax,
            code,
        };
        weight.validate().map_err(|e| file_error(origin, e))?;
        Ok(weight)
    }
}
