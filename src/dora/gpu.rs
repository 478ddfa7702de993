//! The DoRA row passes on the GPU (`kernels/dora.cu`): the factor and the weight norm, and the one
//! launcher of every row pass (read-only: [`Gpu::dora_weight_norm`], [`Gpu::dora_factor`]; writing W:
//! the merges in `merge.rs`).
use crate::device::{Gpu, KernelModule};
use crate::error::{invalid, Result};
use crate::linear::{LinearWeight, QuantizedWeight};
use crate::lora::LoraAdapter;
use crate::sys::{
    DoraRowOp, DoraRowOp_DORA_ROW_FACTOR, DoraRowOp_DORA_ROW_NORM, DoraRowParams,
    DORA_ROWS_PER_BLOCK, DORA_TC_MAX_RANK, DORA_TC_ROWS, DORA_THREADS,
};
use crate::validate::{validate_rows, AdapterLens};
use crate::{DType, Element};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};
use std::sync::Arc;

/// The DoRA factor `f = m / max(‖W + s·B·A‖, DORA_NORM_EPS)` of one layer, on the GPU: computed once
/// by [`Gpu::dora_factor`] and reused by every [`Gpu::dora_forward`] until W, A, B or m change.
#[derive(Debug)]
pub struct DoraFactor {
    pub(super) values: CudaSlice<f32>,
    pub(super) norms: CudaSlice<f32>,
    pub(super) n: usize,
}

impl DoraFactor {
    /// Output features n (one factor per output row of W).
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no factors (never true for a factor made by [`Gpu::dora_factor`]).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The factors, f32 `[n]`.
    pub fn values(&self) -> &CudaSlice<f32> {
        &self.values
    }

    /// The weight norms `‖W + s·B·A‖` the factors were computed from, f32 `[n]` (written by the same
    /// pass): the detached norm of the DoRA backward ([`Gpu::dora_backward`]).
    pub fn norms(&self) -> &CudaSlice<f32> {
        &self.norms
    }
}

/// A factor must hold one value per output row.
pub(super) fn check_factor(factor: &DoraFactor, n: usize) -> Result<()> {
    if factor.len() != n {
        return Err(invalid("factor", format!("{n} factors (n)"), factor.len()));
    }
    Ok(())
}

pub(super) fn lens<T, S: DevicePtr<T>>(adapter: &LoraAdapter<'_, S>) -> AdapterLens {
    AdapterLens::of(std::slice::from_ref(adapter), |s| s.len())[0]
}

impl Gpu {
    /// The DoRA weight norm `norm[i] = ‖W[i,:] + s·(B·A)[i,:]‖₂` for W [n, k], A [r, k], B [n, r]:
    /// one pass over W, B·A formed on the fly, f32 accumulation, written to `norm` (f32 `[n]`).
    pub fn dora_weight_norm<T: Element>(
        &self,
        weight: &impl DevicePtr<T>,
        adapter: LoraAdapter<'_, impl DevicePtr<T>>,
        k: usize,
        n: usize,
        norm: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        validate_rows(k, n, weight.len(), &lens(&adapter), None, None)?;
        if norm.len() < n {
            return Err(invalid(
                "norm",
                format!("at least {n} elements ([n={n}])"),
                norm.len(),
            ));
        }
        let stream = self.stream().clone();
        let (w, _gw) = weight.device_ptr(&stream);
        self.norm_rows(LinearWeight::Dense(w), adapter, k, n, norm)
    }

    /// The DoRA factor `f = m / max(‖W + s·B·A‖, DORA_NORM_EPS)` (magnitude m, `[n]`), computed in one
    /// pass over W. A NaN in a row of W, A or B gives that row a NaN factor (the max propagates NaN,
    /// as [`crate::dora::reference::dora_factor`]). Keep it for the forwards of this layer: it only changes when W, A, B or m do.
    pub fn dora_factor<T: Element>(
        &self,
        weight: &impl DevicePtr<T>,
        adapter: LoraAdapter<'_, impl DevicePtr<T>>,
        magnitude: &impl DevicePtr<T>,
        k: usize,
        n: usize,
    ) -> Result<DoraFactor> {
        validate_rows(
            k,
            n,
            weight.len(),
            &lens(&adapter),
            Some(magnitude.len()),
            None,
        )?;
        let stream = self.stream().clone();
        let (w, _gw) = weight.device_ptr(&stream);
        self.factor_rows(LinearWeight::Dense(w), adapter, magnitude, k, n)
    }

    /// [`Gpu::dora_weight_norm`] of a quantised W, read straight from its codes: each element
    /// dequantised to `T` as peft's `dequantize_module_weight` gives it (4-bit: `T(code · absmax)`;
    /// int8: `T(CB · SCB · (1/127))`), with no dequantised copy.
    pub fn dora_weight_norm_quantized<T: Element>(
        &self,
        weight: QuantizedWeight<'_>,
        adapter: LoraAdapter<'_, impl DevicePtr<T>>,
        norm: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let [n, k] = weight.shape();
        validate_rows(k, n, n.saturating_mul(k), &lens(&adapter), None, None)?;
        let stream = self.stream().clone();
        let (operand, _guards) = weight.operand(&stream);
        self.norm_rows(operand, adapter, k, n, norm)
    }

    /// [`Gpu::dora_factor`] of a quantised W, read straight from its codes (see
    /// [`Gpu::dora_weight_norm_quantized`]).
    pub fn dora_factor_quantized<T: Element>(
        &self,
        weight: QuantizedWeight<'_>,
        adapter: LoraAdapter<'_, impl DevicePtr<T>>,
        magnitude: &impl DevicePtr<T>,
    ) -> Result<DoraFactor> {
        let [n, k] = weight.shape();
        validate_rows(
            k,
            n,
            n.saturating_mul(k),
            &lens(&adapter),
            Some(magnitude.len()),
            None,
        )?;
        let stream = self.stream().clone();
        let (operand, _guards) = weight.operand(&stream);
        self.factor_rows(operand, adapter, magnitude, k, n)
    }

    fn norm_rows<T: Element, S: DevicePtr<T>, N: DevicePtrMut<f32>>(
        &self,
        weight: LinearWeight,
        adapter: LoraAdapter<'_, S>,
        k: usize,
        n: usize,
        norm: &mut N,
    ) -> Result<()> {
        if norm.len() < n {
            return Err(invalid(
                "norm",
                format!("at least {n} elements ([n={n}])"),
                norm.len(),
            ));
        }
        let stream = self.stream().clone();
        let (out, _g) = norm.device_ptr_mut(&stream);
        let (a, b, _ga) = adapter_ptrs(&adapter, &stream);
        self.launch_rows::<T>(&RowPass {
            row_values: out,
            ..RowPass::new(weight, a, b, &adapter, k, n, DoraRowOp_DORA_ROW_NORM)
        })
    }

    fn factor_rows<T: Element, S: DevicePtr<T>, M: DevicePtr<T>>(
        &self,
        weight: LinearWeight,
        adapter: LoraAdapter<'_, S>,
        magnitude: &M,
        k: usize,
        n: usize,
    ) -> Result<DoraFactor> {
        let stream = self.stream().clone();
        let mut values = stream.alloc_zeros::<f32>(n)?;
        let mut norms = stream.alloc_zeros::<f32>(n)?;
        {
            let (out, _g) = values.device_ptr_mut(&stream);
            let (row_norms, _gn) = norms.device_ptr_mut(&stream);
            let (m, _gm) = magnitude.device_ptr(&stream);
            let (a, b, _ga) = adapter_ptrs(&adapter, &stream);
            self.launch_rows::<T>(&RowPass {
                magnitude: m,
                row_values: out,
                row_norms,
                ..RowPass::new(weight, a, b, &adapter, k, n, DoraRowOp_DORA_ROW_FACTOR)
            })?;
        }
        Ok(DoraFactor { values, norms, n })
    }

    /// Runs `pass` as a counting pass (nothing written) and returns the number of non-finite results.
    /// Synchronises the stream.
    pub(super) fn count_non_finite<T: Element>(&self, pass: RowPass) -> Result<u32> {
        let stream = self.stream().clone();
        let mut count = stream.alloc_zeros::<u32>(1)?;
        {
            let (counter, _gc) = count.device_ptr_mut(&stream);
            self.launch_rows::<T>(&RowPass { counter, ..pass })?;
        }
        Ok(stream.clone_dtoh(&count)?[0])
    }

    /// One row pass (see kernels/dora.cu): writes `row_values` (NORM, FACTOR) or W / the requantised
    /// codes (MERGE, UNMERGE, reading the factor from `row_values`, 0 for none); with a `counter`,
    /// MERGE and UNMERGE write nothing and count the non-finite results there instead.
    pub(super) fn launch_rows<T: Element>(&self, pass: &RowPass) -> Result<()> {
        self.check_dtype(T::DTYPE, "the DoRA row pass")?;
        let _stream = self.stream().clone();
        // NORM and FACTOR of a dense 16-bit W take the tensor-core kernel when it applies.
        let tensor_cores = matches!(pass.weight, LinearWeight::Dense(w) if w % 16 == 0)
            && T::DTYPE != DType::F32
            && (pass.op == DoraRowOp_DORA_ROW_NORM || pass.op == DoraRowOp_DORA_ROW_FACTOR)
            && pass.rank <= DORA_TC_MAX_RANK as usize
            && pass.k % 8 == 0
            && norm_path_allows_tensor_cores();
        let (name, rows_per_block) = if tensor_cores {
            ("dora_norm_tc", DORA_TC_ROWS as usize)
        } else {
            ("dora_rows", DORA_ROWS_PER_BLOCK as usize)
        };
        let (func, _) = self.kernel(
            KernelModule::Dora,
            &format!("{name}_{}", T::DTYPE.name()),
            DORA_THREADS,
        )?;
        let (format, weight, scb, quant4) = pass.weight.fields();
        let (out_cb, out_scb) = pass.requantize.unwrap_or((0, 0));
        let params = DoraRowParams {
            weight,
            lora_a: pass.a,
            lora_b: pass.b,
            magnitude: pass.magnitude,
            row_values: pass.row_values,
            row_norms: pass.row_norms,
            non_finite: pass.counter,
            n: pass.n as i32,
            k: pass.k as i32,
            rank: pass.rank as i32,
            scale: pass.scale,
            op: pass.op as i32,
            check_only: (pass.counter != 0) as i32,
            weight_format: format as i32,
            requantize: pass.requantize.is_some() as i32,
            scb,
            out_cb,
            out_scb,
            quant4,
        };
        // SAFETY: W (in its format), A, B, the magnitude, the row values and the output codes were
        // validated for [n, k], [r, k], [n, r] and [n] by the callers; the counter holds one u32.
        unsafe {
            self.launch(
                &func,
                (pass.n.div_ceil(rows_per_block) as u32, 1),
                DORA_THREADS,
                &params,
            )
        }
    }
}

/// The norm's kernel: `LORA_KERNELS_DORA_NORM=cuda-cores` keeps the CUDA-core row pass even where the
/// tensor-core kernel applies (the DoRA bench times both in one run).
fn norm_path_allows_tensor_cores() -> bool {
    std::env::var("LORA_KERNELS_DORA_NORM").map_or(true, |v| v != "cuda-cores")
}

/// One row pass's operands as device addresses (the callers hold the buffers' guards).
#[derive(Clone, Copy)]
pub(super) struct RowPass {
    pub(super) weight: LinearWeight,
    pub(super) a: u64,
    pub(super) b: u64,
    pub(super) rank: usize,
    pub(super) scale: f32,
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) op: DoraRowOp,
    pub(super) magnitude: u64,
    pub(super) row_values: u64,
    /// FACTOR: also the norms, f32 `[n]` (0: none).
    pub(super) row_norms: u64,
    pub(super) counter: u64,
    /// Requantise to int8 into (CB, SCB) instead of writing W.
    pub(super) requantize: Option<(u64, u64)>,
}

impl RowPass {
    pub(super) fn new<T, S: DevicePtr<T>>(
        weight: LinearWeight,
        a: u64,
        b: u64,
        adapter: &LoraAdapter<'_, S>,
        k: usize,
        n: usize,
        op: DoraRowOp,
    ) -> Self {
        Self::raw(weight, a, b, &lens(adapter), k, n, op)
    }

    pub(super) fn raw(
        weight: LinearWeight,
        a: u64,
        b: u64,
        adapter: &AdapterLens,
        k: usize,
        n: usize,
        op: DoraRowOp,
    ) -> Self {
        RowPass {
            weight,
            a,
            b,
            rank: adapter.rank,
            scale: adapter.scale,
            k,
            n,
            op,
            magnitude: 0,
            row_values: 0,
            row_norms: 0,
            counter: 0,
            requantize: None,
        }
    }
}

/// A's and B's device addresses, with the guards that keep them in use.
pub(super) fn adapter_ptrs<'a, T, S: DevicePtr<T>>(
    adapter: &'a LoraAdapter<'_, S>,
    stream: &'a Arc<CudaStream>,
) -> (u64, u64, [SyncOnDrop<'a>; 2]) {
    let (a, ga) = adapter.lora_a.device_ptr(stream);
    let (b, gb) = adapter.lora_b.device_ptr(stream);
    (a, b, [ga, gb])
}
