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

use crate::error::{file_error, invalid, json_value, read_safetensors, Result};
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
    /// A nested absmax whose parts do not fit together (`nested_blocksize` 0, too few
    /// `nested_absmax` values for its codes, a `nested_code` that is not 256 entries) is an error.
    pub fn values(&self) -> Result<Vec<f32>> {
        match self {
            Absmax::Plain(v) => Ok(v.clone()),
            Absmax::Nested {
                codes,
                nested_absmax,
                nested_code,
                nested_blocksize,
                offset,
            } => {
                self.validate_nested()?;
                Ok(codes
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        nested_code[c as usize] * nested_absmax[i / nested_blocksize] + offset
                    })
                    .collect())
            }
        }
    }

    /// Checks that a nested absmax's parts fit together: `nested_blocksize` at least 1,
    /// `ceil(codes / nested_blocksize)` values in `nested_absmax`, 256 entries in `nested_code`.
    /// A plain absmax always passes.
    pub fn validate_nested(&self) -> Result<()> {
        let Absmax::Nested {
            codes,
            nested_absmax,
            nested_code,
            nested_blocksize,
            ..
        } = self
        else {
            return Ok(());
        };
        if *nested_blocksize == 0 {
            return Err(invalid("nested_blocksize", "at least 1", 0));
        }
        let want = codes.len().div_ceil(*nested_blocksize);
        if nested_absmax.len() != want {
            return Err(invalid(
                "nested_absmax",
                format!(
                    "{want} values (one per {nested_blocksize} of {} codes)",
                    codes.len()
                ),
                nested_absmax.len(),
            ));
        }
        if nested_code.len() != 256 {
            return Err(invalid("nested_code", "256 values", nested_code.len()));
        }
        Ok(())
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
    /// Number of elements of an [n, k] weight, n · k; an error when it overflows `usize`.
    pub fn numel(shape: [usize; 2]) -> Result<usize> {
        shape[0]
            .checked_mul(shape[1])
            .ok_or_else(|| invalid("shape", "a size that fits in memory", format!("{shape:?}")))
    }

    /// Number of absmax blocks of an [n, k] weight; an error when n · k overflows or `blocksize`
    /// is 0.
    pub fn blocks(shape: [usize; 2], blocksize: usize) -> Result<usize> {
        if blocksize == 0 {
            return Err(invalid("blocksize", "at least 1", 0));
        }
        Ok(Self::numel(shape)?.div_ceil(blocksize))
    }

    /// Checks that the parts agree: packed length, number of blocks, nested lengths.
    pub fn validate(&self) -> Result<()> {
        validate_blocksize(self.blocksize)?;
        let numel = Self::numel(self.shape)?;
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
        let blocks = Self::blocks(self.shape, self.blocksize)?;
        if self.absmax.len() != blocks {
            return Err(invalid(
                "absmax",
                format!("{blocks} blocks of {}", self.blocksize),
                self.absmax.len(),
            ));
        }
        self.absmax.validate_nested()
    }

    /// Reads a `Linear4bit` state dict (`<prefix>weight`, `weight.absmax`, `weight.quant_map`,
    /// `weight.nested_absmax`, `weight.nested_quant_map`, `weight.quant_state.bitsandbytes__nf4|fp4`)
    /// from safetensors bytes, as bitsandbytes' `QuantState.from_dict` reads it: exactly one
    /// `weight.quant_state.*` key (two are an error naming both), its JSON with `quant_type`,
    /// `blocksize`, `dtype`, `shape` [n, k] and, when double-quantised (a `nested_offset` or a
    /// `weight.nested_absmax`), all of `nested_blocksize` (a positive integer), `nested_dtype`
    /// (`"float32"`), `nested_offset` (finite in f32) and both nested tensors. Absmax values must be
    /// ≥ 0; NaN and +inf load (bitsandbytes' absmax of a block holding a NaN or infinite weight, which
    /// dequantises to NaN / inf), but a double-quantised absmax must rebuild to finite values
    /// (bitsandbytes defines no codes for a non-finite one). Code table entries are in [-1, 1]. Every problem is
    /// an `Error::File` naming the key, what was expected and what the file holds; the same bytes
    /// always give the same result.
    pub fn from_state_dict(bytes: &[u8], prefix: &str, origin: &str) -> Result<Self> {
        use safetensors::Dtype as StDtype;
        let st = read_safetensors(bytes, origin)?;
        let fail = |message: String| file_error(origin, message);
        let get = |key: &str, dtype: StDtype| {
            let name = format!("{prefix}{key}");
            let t = st
                .tensor(&name)
                .map_err(|_| fail(format!("missing `{name}`")))?;
            if t.dtype() != dtype {
                return Err(fail(format!(
                    "`{name}` is {:?}, expected {dtype:?}",
                    t.dtype()
                )));
            }
            Ok(t)
        };
        // F32 values, each ≥ 0 (scales; NaN and +inf are what bitsandbytes writes for a block holding
        // a NaN or an infinite weight, so they load and dequantise to NaN / inf) or in [-1, 1] (code
        // tables, whose entries are scaled by an absmax): the first offending index is named.
        let f32s = |key: &str, code_table: bool| -> Result<Vec<f32>> {
            let values: Vec<f32> = get(key, StDtype::F32)?
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let (ok, want): (fn(f32) -> bool, _) = if code_table {
                (|v| (-1.0..=1.0).contains(&v), "values in [-1, 1]")
            } else {
                (|v| v.is_nan() || v >= 0.0, "values ≥ 0 (or NaN)")
            };
            if let Some(i) = values.iter().position(|&v| !ok(v)) {
                return Err(fail(format!(
                    "`{prefix}{key}`: expected {want}, got {:?} at index {i}",
                    values[i]
                )));
            }
            Ok(values)
        };
        let u8s = |key: &str| -> Result<Vec<u8>> { Ok(get(key, StDtype::U8)?.data().to_vec()) };

        // The quant state: exactly one key, whose name gives the quant type and whose bytes are JSON.
        let state_prefix = format!("{prefix}weight.quant_state.");
        let mut state_keys: Vec<&str> = st
            .names()
            .into_iter()
            .filter(|k| k.starts_with(&state_prefix))
            .collect();
        state_keys.sort_unstable();
        let state_key = match state_keys.as_slice() {
            [] => {
                return Err(fail(format!(
                    "missing `{state_prefix}bitsandbytes__nf4` (or __fp4)"
                )))
            }
            [one] => one.to_string(),
            many => {
                return Err(fail(format!(
                "expected one quant state (`{state_prefix}bitsandbytes__nf4` or __fp4), got {}: {}",
                many.len(),
                many.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
            }
        };
        let key_type = match &state_key[state_prefix.len()..] {
            "bitsandbytes__nf4" => "nf4",
            "bitsandbytes__fp4" => "fp4",
            other => {
                return Err(fail(format!(
                    "`{state_key}`: expected the suffix bitsandbytes__nf4 or bitsandbytes__fp4, got {other:?}"
                )))
            }
        };
        let state_bytes = u8s(&state_key[prefix.len()..])?;
        let state: serde_json::Value = serde_json::from_slice(&state_bytes)
            .map_err(|e| fail(format!("`{state_key}` is not JSON: {e}")))?;
        if !state.is_object() {
            return Err(fail(format!(
                "`{state_key}`: expected a JSON object, got {}",
                json_value(&state)
            )));
        }
        let field = |name: &str| {
            state
                .get(name)
                .ok_or_else(|| fail(format!("`{state_key}`: missing `{name}`")))
        };
        let bad_field = |name: &str, expected: &str, got: &serde_json::Value| {
            fail(format!(
                "`{state_key}`: `{name}`: expected {expected}, got {}",
                json_value(got)
            ))
        };
        let quant_type_v = field("quant_type")?;
        let quant_type = quant_type_v
            .as_str()
            .and_then(QuantType::from_name)
            .ok_or_else(|| {
                fail(format!(
                    "`{state_key}`: unknown quant_type {} (nf4 or fp4)",
                    json_value(quant_type_v)
                ))
            })?;
        if quant_type_v.as_str() != Some(key_type) {
            return Err(fail(format!(
                "`{state_key}` says quant_type {}",
                json_value(quant_type_v)
            )));
        }
        let blocksize_v = field("blocksize")?;
        let blocksize = blocksize_v
            .as_u64()
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| {
                bad_field(
                    "blocksize",
                    "an integer (a power of two from 32 to 4096)",
                    blocksize_v,
                )
            })?;
        validate_blocksize(blocksize).map_err(|e| fail(format!("`{state_key}`: {e}")))?;
        let dtype_v = field("dtype")?;
        let dtype = dtype_v.as_str().and_then(DType::from_name).ok_or_else(|| {
            fail(format!(
                "`{state_key}`: unsupported dtype {} (float32, float16 or bfloat16)",
                json_value(dtype_v)
            ))
        })?;
        let shape_v = field("shape")?;
        let shape: [usize; 2] = shape_v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|v| v.as_u64().and_then(|x| usize::try_from(x).ok()))
                    .collect::<Option<Vec<usize>>>()
            })
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad_field("shape", "[n, k] (two non-negative integers)", shape_v))?;
        let numel = Self::numel(shape).map_err(|e| fail(format!("`{state_key}`: {e}")))?;
        if numel == 0 {
            return Err(bad_field("shape", "no zero dimension", shape_v));
        }
        let blocks = numel.div_ceil(blocksize);

        let packed = u8s("weight")?;
        if packed.len() != numel.div_ceil(2) {
            return Err(fail(format!(
                "`{prefix}weight` (the packed codes): expected {} bytes (two codes per byte of \
                 {shape:?} = {numel} elements), got {}",
                numel.div_ceil(2),
                packed.len()
            )));
        }
        let code_v = f32s("weight.quant_map", true)?;
        let code: [f32; 16] = code_v.as_slice().try_into().map_err(|_| {
            fail(format!(
                "`{prefix}weight.quant_map` has {} values, expected 16",
                code_v.len()
            ))
        })?;
        let nested = state.get("nested_offset").is_some()
            || st.tensor(&format!("{prefix}weight.nested_absmax")).is_ok();
        let absmax = if nested {
            let codes = u8s("weight.absmax")?;
            if codes.len() != blocks {
                return Err(fail(format!(
                    "`{prefix}weight.absmax`: expected {blocks} codes (blocks of {blocksize} in \
                     {shape:?}), got {}",
                    codes.len()
                )));
            }
            let nb_v = field("nested_blocksize")?;
            let nested_blocksize = nb_v
                .as_u64()
                .and_then(|b| usize::try_from(b).ok())
                .filter(|&b| b > 0)
                .ok_or_else(|| bad_field("nested_blocksize", "a positive integer (256)", nb_v))?;
            let nd_v = field("nested_dtype")?;
            if nd_v.as_str() != Some("float32") {
                return Err(bad_field("nested_dtype", "\"float32\"", nd_v));
            }
            let offset_v = field("nested_offset")?;
            let offset = offset_v
                .as_f64()
                .map(|o| o as f32)
                .filter(|o| o.is_finite())
                .ok_or_else(|| bad_field("nested_offset", "a number finite in f32", offset_v))?;
            let nested_absmax = f32s("weight.nested_absmax", false)?;
            let want = blocks.div_ceil(nested_blocksize);
            if nested_absmax.len() != want {
                return Err(fail(format!(
                    "`{prefix}weight.nested_absmax`: expected {want} values (one per \
                     {nested_blocksize} of {blocks} blocks), got {}",
                    nested_absmax.len()
                )));
            }
            let nested_code = f32s("weight.nested_quant_map", true)?;
            if nested_code.len() != 256 {
                return Err(fail(format!(
                    "`{prefix}weight.nested_quant_map` has {} values, expected 256",
                    nested_code.len()
                )));
            }
            let absmax = Absmax::Nested {
                codes,
                nested_absmax,
                nested_code,
                nested_blocksize,
                offset,
            };
            let values = absmax.values().map_err(|e| file_error(origin, e))?;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(fail(format!(
                    "`{prefix}weight.absmax`: block {i} rebuilds to {:?} (nested_quant_map[code] · \
                     nested_absmax + nested_offset), expected a finite value",
                    values[i]
                )));
            }
            absmax
        } else {
            let absmax = f32s("weight.absmax", false)?;
            if absmax.len() != blocks {
                return Err(fail(format!(
                    "`{prefix}weight.absmax`: expected {blocks} values (blocks of {blocksize} in \
                     {shape:?}), got {}",
                    absmax.len()
                )));
            }
            Absmax::Plain(absmax)
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
