//! GPU launches of the DoRA row passes (`kernels/dora.cu`) and the DoRA forward (the fused LoRA
//! kernel with the DoRA epilogue, `kernels/lora_forward.cu`).
use super::validate_rows;
use crate::device::{Gpu, KernelModule};
use crate::error::{invalid, Result};
use crate::int8::Int8Device;
use crate::linear::{LinearWeight, QuantizedWeight};
use crate::lora::gpu::DoraEpilogue;
use crate::lora::{at_least, validate_dims};
use crate::lora::{validate_bias, validate_lora_forward, AdapterLens, LoraAdapter, LoraShape};
use crate::sys::{
    DoraRowOp, DoraRowOp_DORA_ROW_FACTOR, DoraRowOp_DORA_ROW_MERGE, DoraRowOp_DORA_ROW_NORM,
    DoraRowOp_DORA_ROW_UNMERGE, DoraRowParams, DORA_ROWS_PER_BLOCK, DORA_THREADS,
};
use crate::{DType, Element};
use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, SyncOnDrop,
};
use std::sync::Arc;

// SAFETY: plain C struct of integers and floats, laid out by bindgen from kernels/lora_params.h.
unsafe impl DeviceRepr for DoraRowParams {}

/// The DoRA factor `f = m / max(‖W + s·B·A‖, DORA_NORM_EPS)` of one layer, on the GPU: computed once
/// by [`Gpu::dora_factor`] and reused by every [`Gpu::dora_forward`] until W, A, B or m change.
#[derive(Debug)]
pub struct DoraFactor {
    values: CudaSlice<f32>,
    n: usize,
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
}

/// A factor must hold one value per output row.
fn check_factor(factor: &DoraFactor, n: usize) -> Result<()> {
    if factor.len() != n {
        return Err(invalid("factor", format!("{n} factors (n)"), factor.len()));
    }
    Ok(())
}

fn lens<T, S: DevicePtr<T>>(adapter: &LoraAdapter<'_, S>) -> AdapterLens {
    AdapterLens::of(std::slice::from_ref(adapter), |s| s.len())[0]
}

impl Gpu {
    /// The DoRA weight norm `norm[i] = ‖W[i,:] + s·(B·A)[i,:]‖₂` for W [n, k], A [r, k], B [n, r]:
    /// one pass over W, B·A formed on the fly, f32 accumulation, written to `norm` (f32 `[n]`).
    pub fn dora_weight_norm<T, W, S, N>(
        &self,
        weight: &W,
        adapter: LoraAdapter<'_, S>,
        k: usize,
        n: usize,
        norm: &mut N,
    ) -> Result<()>
    where
        T: Element,
        W: DevicePtr<T>,
        S: DevicePtr<T>,
        N: DevicePtrMut<f32>,
    {
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
        self.norm_rows::<T, S, N>(LinearWeight::Dense(w), adapter, k, n, norm)
    }

    /// The DoRA factor `f = m / max(‖W + s·B·A‖, DORA_NORM_EPS)` (magnitude m, `[n]`), computed in one
    /// pass over W. Keep it for the forwards of this layer: it only changes when W, A, B or m do.
    pub fn dora_factor<T, W, S, M>(
        &self,
        weight: &W,
        adapter: LoraAdapter<'_, S>,
        magnitude: &M,
        k: usize,
        n: usize,
    ) -> Result<DoraFactor>
    where
        T: Element,
        W: DevicePtr<T>,
        S: DevicePtr<T>,
        M: DevicePtr<T>,
    {
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
        self.factor_rows::<T, S, M>(LinearWeight::Dense(w), adapter, magnitude, k, n)
    }

    /// [`Gpu::dora_weight_norm`] of a quantised W, read straight from its codes: each element
    /// dequantised to `T` as peft's `dequantize_module_weight` gives it (4-bit: `T(code · absmax)`;
    /// int8: `T(CB · SCB · (1/127))`), with no dequantised copy.
    pub fn dora_weight_norm_quantized<T, S, N>(
        &self,
        weight: QuantizedWeight<'_>,
        adapter: LoraAdapter<'_, S>,
        norm: &mut N,
    ) -> Result<()>
    where
        T: Element,
        S: DevicePtr<T>,
        N: DevicePtrMut<f32>,
    {
        let [n, k] = weight.shape();
        validate_rows(k, n, n * k, &lens(&adapter), None, None)?;
        let stream = self.stream().clone();
        let (operand, _guards) = weight.operand(&stream);
        self.norm_rows::<T, S, N>(operand, adapter, k, n, norm)
    }

    /// [`Gpu::dora_factor`] of a quantised W, read straight from its codes (see
    /// [`Gpu::dora_weight_norm_quantized`]).
    pub fn dora_factor_quantized<T, S, M>(
        &self,
        weight: QuantizedWeight<'_>,
        adapter: LoraAdapter<'_, S>,
        magnitude: &M,
    ) -> Result<DoraFactor>
    where
        T: Element,
        S: DevicePtr<T>,
        M: DevicePtr<T>,
    {
        let [n, k] = weight.shape();
        validate_rows(k, n, n * k, &lens(&adapter), Some(magnitude.len()), None)?;
        let stream = self.stream().clone();
        let (operand, _guards) = weight.operand(&stream);
        self.factor_rows::<T, S, M>(operand, adapter, magnitude, k, n)
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
        {
            let (out, _g) = values.device_ptr_mut(&stream);
            let (m, _gm) = magnitude.device_ptr(&stream);
            let (a, b, _ga) = adapter_ptrs(&adapter, &stream);
            self.launch_rows::<T>(&RowPass {
                magnitude: m,
                row_values: out,
                ..RowPass::new(weight, a, b, &adapter, k, n, DoraRowOp_DORA_ROW_FACTOR)
            })?;
        }
        Ok(DoraFactor { values, n })
    }

    /// The DoRA forward from the base layer's output, one fused launch:
    /// `y = bias + f ⊙ (base − bias + s·(x·Aᵀ)·Bᵀ)` with x [m, k], base and y [m, n], the layer's
    /// bias `[n]` (if any) and its cached factor f. With f = m / ‖W + s·B·A‖ and base = x·Wᵀ + bias this
    /// is peft's eval forward `bias + f ⊙ (x·(W + s·B·A)ᵀ)`.
    #[allow(clippy::too_many_arguments)]
    pub fn dora_forward<T, X, B, S, Y>(
        &self,
        x: &X,
        base: &B,
        bias: Option<&CudaView<'_, T>>,
        adapter: LoraAdapter<'_, S>,
        factor: &DoraFactor,
        shape: LoraShape,
        y: &mut Y,
    ) -> Result<()>
    where
        T: Element,
        X: DevicePtr<T>,
        B: DevicePtr<T>,
        S: DevicePtr<T>,
        Y: DevicePtrMut<T>,
    {
        validate_lora_forward(shape, x.len(), Some(base.len()), y.len(), &[lens(&adapter)])?;
        check_factor(factor, shape.n)?;
        validate_bias(bias.map(|b| b.len()), shape.n)?;
        let stream = self.stream().clone();
        let (base_ptr, _gb) = base.device_ptr(&stream);
        let (factor_ptr, _gf) = factor.values.device_ptr(&stream);
        let bias_guard = bias.map(|b| b.device_ptr(&stream));
        let epilogue = DoraEpilogue {
            factor: factor_ptr,
            bias: bias_guard.as_ref().map_or(0, |(p, _)| *p),
        };
        self.lora_forward_raw::<T, X, S, Y>(x, Some(base_ptr), &[adapter], shape, y, Some(epilogue))
    }

    /// The DoRA forward in place: y holds the base layer's output `x·Wᵀ + bias` on entry and
    /// `bias + f ⊙ (y − bias + s·(x·Aᵀ)·Bᵀ)` on return (one fused launch, as [`Gpu::dora_forward`]).
    pub fn dora_forward_inplace<T, X, S, Y>(
        &self,
        x: &X,
        bias: Option<&CudaView<'_, T>>,
        adapter: LoraAdapter<'_, S>,
        factor: &DoraFactor,
        shape: LoraShape,
        y: &mut Y,
    ) -> Result<()>
    where
        T: Element,
        X: DevicePtr<T>,
        S: DevicePtr<T>,
        Y: DevicePtrMut<T>,
    {
        validate_lora_forward(shape, x.len(), None, y.len(), &[lens(&adapter)])?;
        check_factor(factor, shape.n)?;
        validate_bias(bias.map(|b| b.len()), shape.n)?;
        let stream = self.stream().clone();
        let (factor_ptr, _gf) = factor.values.device_ptr(&stream);
        let bias_guard = bias.map(|b| b.device_ptr(&stream));
        let epilogue = DoraEpilogue {
            factor: factor_ptr,
            bias: bias_guard.as_ref().map_or(0, |(p, _)| *p),
        };
        self.lora_forward_raw::<T, X, S, Y>(x, None, &[adapter], shape, y, Some(epilogue))
    }

    /// The DoRA forward when the caller has no base output: the crate computes it,
    /// `y = bias + f ⊙ (x·Wᵀ + s·(x·Aᵀ)·Bᵀ)` for W `[n, k]`, in two launches: the base product
    /// `y = x·Wᵀ + bias` ([`Gpu::linear`]: a GEMV at decode sizes, tiled above), then the fused LoRA
    /// forward with the DoRA epilogue in place on y (y is read once more and written once more; the
    /// rank-r work is the same as [`Gpu::dora_forward`]).
    #[allow(clippy::too_many_arguments)]
    pub fn dora_forward_linear<T, X, W, S, Y>(
        &self,
        x: &X,
        weight: &W,
        bias: Option<&CudaView<'_, T>>,
        adapter: LoraAdapter<'_, S>,
        factor: &DoraFactor,
        shape: LoraShape,
        y: &mut Y,
    ) -> Result<()>
    where
        T: Element,
        X: DevicePtr<T>,
        W: DevicePtr<T>,
        S: DevicePtr<T>,
        Y: DevicePtrMut<T>,
    {
        validate_lora_forward(shape, x.len(), None, y.len(), &[lens(&adapter)])?;
        check_factor(factor, shape.n)?;
        self.linear(x, weight, bias, shape, y)?;
        self.dora_forward_inplace(x, bias, adapter, factor, shape, y)
    }

    /// Merges an adapter into W [n, k] in place, one pass: `W ← f ⊙ (W + s·B·A)` with a DoRA factor,
    /// `W ← W + s·B·A` without. With `safe`, a first pass counts non-finite results and, if there are
    /// any, returns an error and leaves W untouched (peft's `safe_merge`); this synchronises the stream.
    #[allow(clippy::too_many_arguments)]
    pub fn merge_adapter<T, W, S>(
        &self,
        weight: &mut W,
        adapter: LoraAdapter<'_, S>,
        factor: Option<&DoraFactor>,
        k: usize,
        n: usize,
        safe: bool,
    ) -> Result<()>
    where
        T: Element,
        W: DevicePtrMut<T>,
        S: DevicePtr<T>,
    {
        self.update_rows::<T, W, S>(
            weight,
            adapter,
            factor,
            k,
            n,
            safe,
            DoraRowOp_DORA_ROW_MERGE,
        )
    }

    /// Undoes [`Gpu::merge_adapter`] with the same adapter and factor: `W ← W / f − s·B·A`
    /// (`W ← W − s·B·A` without a factor). `safe` as for the merge.
    #[allow(clippy::too_many_arguments)]
    pub fn unmerge_adapter<T, W, S>(
        &self,
        weight: &mut W,
        adapter: LoraAdapter<'_, S>,
        factor: Option<&DoraFactor>,
        k: usize,
        n: usize,
        safe: bool,
    ) -> Result<()>
    where
        T: Element,
        W: DevicePtrMut<T>,
        S: DevicePtr<T>,
    {
        self.update_rows::<T, W, S>(
            weight,
            adapter,
            factor,
            k,
            n,
            safe,
            DoraRowOp_DORA_ROW_UNMERGE,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn update_rows<T, W, S>(
        &self,
        weight: &mut W,
        adapter: LoraAdapter<'_, S>,
        factor: Option<&DoraFactor>,
        k: usize,
        n: usize,
        safe: bool,
        op: DoraRowOp,
    ) -> Result<()>
    where
        T: Element,
        W: DevicePtrMut<T>,
        S: DevicePtr<T>,
    {
        validate_rows(k, n, weight.len(), &lens(&adapter), None, None)?;
        let stream = self.stream().clone();
        let (w, _gw) = weight.device_ptr_mut(&stream);
        let (a, b, _ga) = adapter_ptrs(&adapter, &stream);
        let pass = RowPass::new(LinearWeight::Dense(w), a, b, &adapter, k, n, op);
        self.update_pass::<T>(pass, factor, safe)
    }

    /// Merges an adapter into an LLM.int8 W in place the way peft merges into bitsandbytes' 8-bit
    /// layer: each row is dequantised (`T(CB · SCB / 127)`), updated (`f ⊙ (W + s·B·A)`, or
    /// `W + s·B·A` without a factor, in f32), rounded to `T`, and requantised row-wise exactly as
    /// [`crate::int8::reference::quantize_rowwise`] does (new SCB = row absmax of the f16 values,
    /// CB = round-half-even(f32(v · f32(f32(1 / SCB) · 127)))), each row read twice, the second time
    /// from L2. A non-finite result (after rounding to f16) has no int8 code, so it is always checked,
    /// whatever `safe` says: a counting pass first (the stream synchronises), an error and W
    /// unchanged if any. `T` is the layer's dtype.
    pub fn merge_adapter_int8<T, S>(
        &self,
        weight: &mut Int8Device,
        adapter: LoraAdapter<'_, S>,
        factor: Option<&DoraFactor>,
        safe: bool,
    ) -> Result<()>
    where
        T: Element,
        S: DevicePtr<T>,
    {
        let _ = safe; // int8 results are always checked (above)
        self.update_int8::<T, S>(weight, adapter, factor, DoraRowOp_DORA_ROW_MERGE)
    }

    /// Undoes [`Gpu::merge_adapter_int8`] (`W / f − s·B·A`, requantised, non-finite results an error
    /// as there). Requantisation is lossy: the round trip restores W to within the int8 rounding of the
    /// merged and unmerged rows.
    pub fn unmerge_adapter_int8<T, S>(
        &self,
        weight: &mut Int8Device,
        adapter: LoraAdapter<'_, S>,
        factor: Option<&DoraFactor>,
        safe: bool,
    ) -> Result<()>
    where
        T: Element,
        S: DevicePtr<T>,
    {
        let _ = safe; // int8 results are always checked (merge_adapter_int8)
        self.update_int8::<T, S>(weight, adapter, factor, DoraRowOp_DORA_ROW_UNMERGE)
    }

    /// Row-wise int8 quantisation of a dense W `[n, k]` on the GPU, code for code as
    /// [`crate::int8::reference::quantize_rowwise`] (bitsandbytes' `Int8Params` on its CPU backend):
    /// values rounded to f16, SCB = row absmax, CB = round-half-even(f32(W · f32(f32(1 / SCB) · 127)));
    /// an all-zero row gets SCB 0 and codes 0. A NaN or infinite value (after rounding to f16) is an
    /// error: a counting pass runs first and the stream synchronises once.
    pub fn quantize_int8<T, W>(&self, weight: &W, k: usize, n: usize) -> Result<Int8Device>
    where
        T: Element,
        W: DevicePtr<T>,
    {
        validate_dims(&[("k", k), ("n", n)])?;
        at_least(
            "weight",
            weight.len(),
            n.checked_mul(k),
            &format!("[n={n}, k={k}]"),
        )?;
        let stream = self.stream().clone();
        let mut out = Int8Device {
            cb: stream.alloc_zeros::<u8>(n * k)?,
            scb: stream.alloc_zeros::<f32>(n)?,
            shape: [n, k],
        };
        {
            let (w, _gw) = weight.device_ptr(&stream);
            let (cb, _gc) = out.cb.device_ptr_mut(&stream);
            let (scb, _gs) = out.scb.device_ptr_mut(&stream);
            let no_adapter = AdapterLens {
                rank: 0,
                a_len: 0,
                b_len: 0,
                scale: 0.0,
            };
            let pass = RowPass {
                requantize: Some((cb, scb)),
                ..RowPass::raw(
                    LinearWeight::Dense(w),
                    0,
                    0,
                    &no_adapter,
                    k,
                    n,
                    DoraRowOp_DORA_ROW_MERGE,
                )
            };
            let bad = self.count_non_finite::<T>(pass)?;
            if bad > 0 {
                return Err(invalid(
                    "weight",
                    "finite values within the f16 range (LLM.int8 rounds the weight to f16; a NaN \
                     or infinite value has no int8 code)",
                    format!("{bad} non-finite values"),
                ));
            }
            self.launch_rows::<T>(&pass)?;
        }
        Ok(out)
    }

    fn update_int8<T: Element, S: DevicePtr<T>>(
        &self,
        weight: &mut Int8Device,
        adapter: LoraAdapter<'_, S>,
        factor: Option<&DoraFactor>,
        op: DoraRowOp,
    ) -> Result<()> {
        let [n, k] = weight.shape();
        validate_rows(k, n, n * k, &lens(&adapter), None, None)?;
        let stream = self.stream().clone();
        let (cb, _gc) = weight.cb.device_ptr_mut(&stream);
        let (scb, _gs) = weight.scb.device_ptr_mut(&stream);
        let (a, b, _ga) = adapter_ptrs(&adapter, &stream);
        let pass = RowPass {
            requantize: Some((cb, scb)),
            ..RowPass::new(LinearWeight::Int8 { cb, scb }, a, b, &adapter, k, n, op)
        };
        // Always checked: a non-finite value has no int8 code (bitsandbytes' result is undefined).
        self.update_pass::<T>(pass, factor, true)
    }

    /// Runs `pass` as a counting pass (nothing written) and returns the number of non-finite results.
    /// Synchronises the stream.
    fn count_non_finite<T: Element>(&self, pass: RowPass) -> Result<u32> {
        let stream = self.stream().clone();
        let mut count = stream.alloc_zeros::<u32>(1)?;
        {
            let (counter, _gc) = count.device_ptr_mut(&stream);
            self.launch_rows::<T>(&RowPass { counter, ..pass })?;
        }
        Ok(stream.clone_dtoh(&count)?[0])
    }

    /// Runs a MERGE or UNMERGE pass with `factor`; with `safe`, first a counting pass (nothing
    /// written) and an error if any result is non-finite. Synchronises the stream when `safe`.
    fn update_pass<T: Element>(
        &self,
        pass: RowPass,
        factor: Option<&DoraFactor>,
        safe: bool,
    ) -> Result<()> {
        if let Some(f) = factor {
            check_factor(f, pass.n)?;
        }
        let stream = self.stream().clone();
        let (factor_ptr, _gf) = match factor {
            Some(f) => {
                let (p, g) = f.values.device_ptr(&stream);
                (p, Some(g))
            }
            None => (0, None),
        };
        let pass = RowPass {
            row_values: factor_ptr,
            ..pass
        };
        if safe {
            let bad = self.count_non_finite::<T>(pass)?;
            if bad > 0 {
                return Err(invalid(
                    "weight",
                    "a merge with finite results (safe merge); W is unchanged",
                    format!("{bad} non-finite values"),
                ));
            }
        }
        self.launch_rows::<T>(&pass)
    }

    /// One row pass (see kernels/dora.cu): writes `row_values` (NORM, FACTOR) or W / the requantised
    /// codes (MERGE, UNMERGE, reading the factor from `row_values`, 0 for none); with a `counter`,
    /// MERGE and UNMERGE write nothing and count the non-finite results there instead.
    fn launch_rows<T: Element>(&self, pass: &RowPass) -> Result<()> {
        self.check_dtype(T::DTYPE, "the DoRA row pass")?;
        let _stream = self.stream().clone();
        // NORM and FACTOR of a dense 16-bit W take the tensor-core kernel when it applies.
        let tensor_cores = matches!(pass.weight, LinearWeight::Dense(w) if w % 16 == 0)
            && T::DTYPE != DType::F32
            && (pass.op == DoraRowOp_DORA_ROW_NORM || pass.op == DoraRowOp_DORA_ROW_FACTOR)
            && pass.rank <= 128
            && pass.k % 8 == 0
            && norm_path_allows_tensor_cores();
        let (name, rows_per_block) = if tensor_cores {
            ("dora_norm_tc", DORA_TC_ROWS)
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

/// Rows of W per block of the tensor-core norm (kTcRows in kernels/dora.cu).
const DORA_TC_ROWS: usize = 64;

/// The norm's kernel: `LORA_KERNELS_DORA_NORM=cuda-cores` keeps the CUDA-core row pass even where the
/// tensor-core kernel applies (the DoRA bench times both in one run).
fn norm_path_allows_tensor_cores() -> bool {
    std::env::var("LORA_KERNELS_DORA_NORM").map_or(true, |v| v != "cuda-cores")
}

/// One row pass's operands as device addresses (the callers hold the buffers' guards).
#[derive(Clone, Copy)]
struct RowPass {
    weight: LinearWeight,
    a: u64,
    b: u64,
    rank: usize,
    scale: f32,
    k: usize,
    n: usize,
    op: DoraRowOp,
    magnitude: u64,
    row_values: u64,
    counter: u64,
    /// Requantise to int8 into (CB, SCB) instead of writing W.
    requantize: Option<(u64, u64)>,
}

impl RowPass {
    fn new<T, S: DevicePtr<T>>(
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

    fn raw(
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
            counter: 0,
            requantize: None,
        }
    }
}

/// A's and B's device addresses, with the guards that keep them in use.
fn adapter_ptrs<'a, T, S: DevicePtr<T>>(
    adapter: &'a LoraAdapter<'_, S>,
    stream: &'a Arc<CudaStream>,
) -> (u64, u64, [SyncOnDrop<'a>; 2]) {
    let (a, ga) = adapter.lora_a.device_ptr(stream);
    let (b, gb) = adapter.lora_b.device_ptr(stream);
    (a, b, [ga, gb])
}
