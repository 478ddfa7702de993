//! GPU launches of the 4-bit kernels (`kernels/quant4.cu`): dequantise, and the dequant-on-the-fly
//! product `y = x · dequant(W)ᵀ + bias`.
use super::{validate_blocksize, Absmax, Quant4Weight, QuantType};
use crate::device::{Gpu, KernelModule};
use crate::error::{invalid, Result};
use crate::validate::{at_least, validate_dims};

use crate::lora::LoraShape;
use crate::sys::{
    GemvOperands, LoraGemvEpilogue, Quant4Params, Quant4QuantizeParams, Quant4Type_QUANT4_FP4,
    Quant4Type_QUANT4_NF4, Quant4Weights, QUANT4_NESTED_BLOCKSIZE, QUANT4_THREADS,
};
use crate::{DType, Element};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};
use std::sync::Arc;

/// A 4-bit weight on the GPU, as bitsandbytes lays it out (see [`Quant4Weight`]).
#[derive(Debug)]
pub struct Quant4Device {
    quant_type: QuantType,
    dtype: DType,
    packed: CudaSlice<u8>,
    absmax: CudaSlice<u8>,
    nested_absmax: Option<CudaSlice<f32>>,
    nested_code: Option<CudaSlice<f32>>,
    code: [f32; 16],
    offset: f32,
    nested_blocksize: usize,
    blocksize: usize,
    shape: [usize; 2],
}

impl Quant4Device {
    /// [n, k] = (out_features, in_features).
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }
}

/// A 4-bit weight's device addresses in the kernels' struct, with the guards that keep them in use.
pub(crate) struct DeviceWeights<'a> {
    pub(crate) params: Quant4Weights,
    pub(crate) guards: Vec<SyncOnDrop<'a>>,
}

impl Quant4Device {
    pub(crate) fn device_weights<'a>(&'a self, stream: &'a Arc<CudaStream>) -> DeviceWeights<'a> {
        let (packed, g1) = self.packed.device_ptr(stream);
        let (absmax, g2) = self.absmax.device_ptr(stream);
        let mut guards = vec![g1, g2];
        let mut optional = |v: &'a Option<CudaSlice<f32>>| match v {
            Some(v) => {
                let (p, g) = v.device_ptr(stream);
                guards.push(g);
                p
            }
            None => 0,
        };
        let nested_absmax = optional(&self.nested_absmax);
        let nested_code = optional(&self.nested_code);
        DeviceWeights {
            params: Quant4Weights {
                packed,
                absmax,
                nested_absmax,
                nested_code,
                code: self.code,
                offset: self.offset,
                nested: self.nested_absmax.is_some() as i32,
                nested_blocksize: self.nested_blocksize as i32,
                blocksize: self.blocksize as i32,
                n: self.shape[0] as i32,
                k: self.shape[1] as i32,
            },
            guards,
        }
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Gpu {
    /// Copies a validated 4-bit weight to the GPU.
    pub fn upload_quant4(&self, weight: &Quant4Weight) -> Result<Quant4Device> {
        weight.validate()?;
        let s = self.stream();
        let (absmax, nested_absmax, nested_code, offset, nested_blocksize) = match &weight.absmax {
            Absmax::Plain(v) => (s.clone_htod(&f32_bytes(v))?, None, None, 0.0, 0),
            Absmax::Nested {
                codes,
                nested_absmax,
                nested_code,
                nested_blocksize,
                offset,
            } => (
                s.clone_htod(codes)?,
                Some(s.clone_htod(nested_absmax)?),
                Some(s.clone_htod(nested_code)?),
                *offset,
                *nested_blocksize,
            ),
        };
        Ok(Quant4Device {
            quant_type: weight.quant_type,
            dtype: weight.dtype,
            packed: s.clone_htod(&weight.packed)?,
            absmax,
            nested_absmax,
            nested_code,
            code: weight.code,
            offset,
            nested_blocksize,
            blocksize: weight.blocksize,
            shape: weight.shape,
        })
    }

    /// Quantises W `[n, k]` (row-major, `T`) to bitsandbytes' 4-bit format on the GPU, byte for byte
    /// as [`super::reference::quantize`] does (bitsandbytes' CPU backend; its docs say how that differs
    /// from bitsandbytes' CUDA kernels): absmax per `blocksize` elements of the flattened weight, codes
    /// packed first element high, NaN and ±Inf weights treated as bitsandbytes treats them. With
    /// `double_quant` the absmax is read back to the host for the offset (the stream synchronises once;
    /// a NaN or infinite weight is then an error, as in the reference), and quantised to 8 bits in
    /// blocks of 256 against the dynamic map.
    pub fn quantize_quant4<T: Element, W: DevicePtr<T>>(
        &self,
        weight: &W,
        shape: [usize; 2],
        blocksize: usize,
        quant_type: QuantType,
        double_quant: bool,
    ) -> Result<Quant4Device> {
        validate_blocksize(blocksize)?;
        let [n, k] = shape;
        validate_dims(&[("shape[0]", n), ("shape[1]", k)])?;
        let numel = n * k;
        at_least("weight", weight.len(), Some(numel), &format!("{shape:?}"))?;
        self.check_dtype(T::DTYPE, "the 4-bit quantiser")?;
        let blocks = numel.div_ceil(blocksize);
        if blocks > i32::MAX as usize {
            return Err(invalid(
                "shape",
                format!("at most {} absmax blocks", i32::MAX),
                blocks,
            ));
        }
        let s = self.stream().clone();
        let mut packed = s.alloc_zeros::<u8>(numel.div_ceil(2))?;
        // The f32 absmax, as the raw bytes the kernels read for a plain absmax (the allocation is
        // 256-byte aligned).
        let mut absmax_f32 = s.alloc_zeros::<u8>(4 * blocks)?;
        let nested_blocks = blocks.div_ceil(QUANT4_NESTED_BLOCKSIZE as usize);
        let mut params = Quant4QuantizeParams {
            numel: numel as i64,
            blocksize: blocksize as i32,
            blocks: blocks as i32,
            quant_type: match quant_type {
                QuantType::Nf4 => Quant4Type_QUANT4_NF4,
                QuantType::Fp4 => Quant4Type_QUANT4_FP4,
            } as i32,
            code: *quant_type.code(),
            ..Default::default()
        };
        {
            let (input, _gi) = weight.device_ptr(&s);
            let (p, _gp) = packed.device_ptr_mut(&s);
            let (a, _ga) = absmax_f32.device_ptr_mut(&s);
            params.input = input;
            params.packed = p;
            params.absmax = a;
            self.launch_quantize(
                &format!("quant4_quantize_{}", T::DTYPE.name()),
                &params,
                blocks,
            )?;
        }
        let (absmax, nested_absmax, nested_code, offset) = if double_quant {
            // The offset on the host, by the reference's own function (so the mean is the same f64 sum
            // rounded once), which also rejects a non-finite absmax (a NaN or infinite weight).
            let absmax_host: Vec<f32> = s
                .clone_dtoh(&absmax_f32)?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let offset = super::reference::absmax_offset(&absmax_host)?;
            let map = super::reference::dynamic_map();
            let nested_code = s.clone_htod(&map)?;
            let offset_dev = s.clone_htod(&[offset])?;
            let mut codes = s.alloc_zeros::<u8>(blocks)?;
            let mut nested_absmax = s.alloc_zeros::<f32>(nested_blocks)?;
            {
                let (a, _ga) = absmax_f32.device_ptr(&s);
                let (o, _go) = offset_dev.device_ptr(&s);
                let (c, _gc) = nested_code.device_ptr(&s);
                let (q, _gq) = codes.device_ptr_mut(&s);
                let (na, _gn) = nested_absmax.device_ptr_mut(&s);
                let nested = Quant4QuantizeParams {
                    absmax: a,
                    offset: o,
                    nested_code: c,
                    nested_codes: q,
                    nested_absmax: na,
                    ..params
                };
                self.launch_quantize("quant4_nested_quantize", &nested, nested_blocks)?;
            }
            (codes, Some(nested_absmax), Some(nested_code), offset)
        } else {
            (absmax_f32, None, None, 0.0)
        };
        Ok(Quant4Device {
            quant_type,
            dtype: T::DTYPE,
            packed,
            absmax,
            nested_absmax,
            nested_code,
            code: *quant_type.code(),
            offset,
            nested_blocksize: if double_quant {
                QUANT4_NESTED_BLOCKSIZE as usize
            } else {
                0
            },
            blocksize,
            shape,
        })
    }

    /// Copies a 4-bit weight back to the host in bitsandbytes' layout. Synchronises the stream.
    pub fn download_quant4(&self, weight: &Quant4Device) -> Result<Quant4Weight> {
        let s = self.stream();
        let absmax = match (&weight.nested_absmax, &weight.nested_code) {
            (Some(nested_absmax), Some(nested_code)) => Absmax::Nested {
                codes: s.clone_dtoh(&weight.absmax)?,
                nested_absmax: s.clone_dtoh(nested_absmax)?,
                nested_code: s.clone_dtoh(nested_code)?,
                nested_blocksize: weight.nested_blocksize,
                offset: weight.offset,
            },
            _ => Absmax::Plain(
                s.clone_dtoh(&weight.absmax)?
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
        };
        Ok(Quant4Weight {
            quant_type: weight.quant_type,
            blocksize: weight.blocksize,
            shape: weight.shape,
            dtype: weight.dtype,
            packed: s.clone_dtoh(&weight.packed)?,
            absmax,
            code: weight.code,
        })
    }

    fn launch_quantize(
        &self,
        kernel: &str,
        params: &Quant4QuantizeParams,
        grid: usize,
    ) -> Result<()> {
        let _stream = self.stream().clone();
        let (func, _) = self.kernel(KernelModule::Quant4, kernel, QUANT4_THREADS)?;
        // SAFETY: the input holds numel elements, packed (numel + 1) / 2 bytes, absmax `blocks` f32,
        // the nested buffers `blocks` codes, ceil(blocks / 256) scales, 256 map entries and 1 offset.
        unsafe { self.launch(&func, (grid.max(1) as u32, 1), QUANT4_THREADS, params) }
    }

    /// `out = dequant(W)` [n, k] in `T`: one f32 multiply per element, rounded once (bitsandbytes'
    /// `dequantize_4bit`).
    pub fn quant4_dequantize<T: Element, O: DevicePtrMut<T>>(
        &self,
        weight: &Quant4Device,
        out: &mut O,
    ) -> Result<()> {
        let [n, k] = weight.shape;
        at_least(
            "out",
            out.len(),
            n.checked_mul(k),
            &format!("[n={n}, k={k}]"),
        )?;
        let numel = n * k;
        self.check_dtype(T::DTYPE, "the 4-bit kernels")?;
        let stream = self.stream().clone();
        let (out_ptr, _g) = out.device_ptr_mut(&stream);
        let (func, _) = self.kernel(
            KernelModule::Quant4,
            &format!("quant4_dequantize_{}", T::DTYPE.name()),
            QUANT4_THREADS,
        )?;
        let w = weight.device_weights(&stream);
        let params = Quant4Params {
            w: w.params,
            out: out_ptr,
            ..Default::default()
        };
        let grid = numel.div_ceil(2).div_ceil(QUANT4_THREADS as usize);
        // SAFETY: the weight was validated on upload (packed, absmax and nested lengths match its
        // shape); out holds its n * k elements (checked above); one thread per packed byte.
        unsafe { self.launch(&func, (grid as u32, 1), QUANT4_THREADS, &params) }
    }

    /// One launch of the 4-bit GEMV (`quant4_gemv_*`, a warp per output column, up to 8 rows of x)
    /// for [`Gpu::quant4_linear`] and the other products of [`crate::linear`], with the adapters'
    /// LoRA term `lora` in its epilogue (empty: none). The caller validated every extent and holds
    /// the buffers.
    pub(crate) fn launch_quant4_gemv<T: Element>(
        &self,
        w: Quant4Weights,
        io: &GemvOperands,
        lora: &LoraGemvEpilogue,
    ) -> Result<()> {
        let GemvOperands {
            x,
            bias,
            y,
            shape,
            vector_k,
        } = *io;
        let LoraShape { m, n, .. } = shape;
        self.check_dtype(T::DTYPE, "the 4-bit kernels")?;
        let (func, _) = self.kernel(
            KernelModule::Quant4,
            &format!("quant4_gemv_{}", T::DTYPE.name()),
            QUANT4_THREADS,
        )?;
        let params = Quant4Params {
            w,
            x,
            bias,
            out: y,
            m: m as i32,
            vector_k: vector_k as i32,
            lora: *lora,
        };
        let grid = (n.div_ceil(QUANT4_THREADS as usize / 32) as u32, 1);
        // SAFETY: the weight was validated on upload; x [m, k], y [m, n], bias [n] and the epilogue's
        // buffers were validated or allocated by the callers.
        unsafe { self.launch(&func, grid, QUANT4_THREADS, &params) }
    }
}
