//! GPU launches of the DoRA row passes (`kernels/dora.cu`) and the DoRA forward (the fused LoRA
//! kernel with the DoRA epilogue, `kernels/lora_forward.cu`).
use super::validate_rows;
use crate::device::{Gpu, KernelModule};
use crate::error::{invalid, Result};
use crate::lora::gpu::DoraEpilogue;
use crate::lora::{validate_bias, validate_lora_forward, AdapterLens, LoraAdapter, LoraShape};
use crate::sys::{
    DoraRowOp, DoraRowOp_DORA_ROW_FACTOR, DoraRowOp_DORA_ROW_MERGE, DoraRowOp_DORA_ROW_NORM,
    DoraRowOp_DORA_ROW_UNMERGE, DoraRowParams, DORA_ROWS_PER_BLOCK, DORA_THREADS,
};
use crate::Element;
use cudarc::driver::{
    CudaSlice, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};

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
        let (out, _g) = norm.device_ptr_mut(&stream);
        let (w, _gw) = weight.device_ptr(&stream);
        self.launch_rows::<T, S>(w, adapter, k, n, DoraRowOp_DORA_ROW_NORM, 0, out, 0)
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
        let mut values = stream.alloc_zeros::<f32>(n)?;
        {
            let (out, _g) = values.device_ptr_mut(&stream);
            let (w, _gw) = weight.device_ptr(&stream);
            let (m, _gm) = magnitude.device_ptr(&stream);
            self.launch_rows::<T, S>(w, adapter, k, n, DoraRowOp_DORA_ROW_FACTOR, m, out, 0)?;
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
        if factor.len() != shape.n {
            return Err(invalid(
                "factor",
                format!("{} factors (n)", shape.n),
                factor.len(),
            ));
        }
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

    /// The DoRA forward when the caller has no base output: the crate computes it,
    /// `y = bias + f ⊙ (x·Wᵀ + s·(x·Aᵀ)·Bᵀ)` for W `[n, k]`, in two launches: the tiled base product
    /// `y = x·Wᵀ + bias` ([`Gpu::linear`]), then the fused LoRA forward with the DoRA epilogue in place
    /// on y (y is read once more and written once more; the rank-r work is the same as
    /// [`Gpu::dora_forward`]).
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
        if factor.len() != shape.n {
            return Err(invalid(
                "factor",
                format!("{} factors (n)", shape.n),
                factor.len(),
            ));
        }
        self.linear(x, weight, bias, shape, y)?;
        let stream = self.stream().clone();
        let (factor_ptr, _gf) = factor.values.device_ptr(&stream);
        let bias_guard = bias.map(|b| b.device_ptr(&stream));
        let epilogue = DoraEpilogue {
            factor: factor_ptr,
            bias: bias_guard.as_ref().map_or(0, |(p, _)| *p),
        };
        self.lora_forward_raw::<T, X, S, Y>(x, None, &[adapter], shape, y, Some(epilogue))
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
        validate_rows(
            k,
            n,
            weight.len(),
            &lens(&adapter),
            None,
            factor.map(|f| f.len()),
        )?;
        if let Some(f) = factor {
            if f.len() != n {
                return Err(invalid("factor", format!("{n} factors (n)"), f.len()));
            }
        }
        let stream = self.stream().clone();
        let (factor_ptr, _gf) = match factor {
            Some(f) => {
                let (p, g) = f.values.device_ptr(&stream);
                (p, Some(g))
            }
            None => (0, None),
        };
        let (w, _gw) = weight.device_ptr_mut(&stream);
        if safe {
            let mut count = stream.alloc_zeros::<u32>(1)?;
            {
                let (counter, _gc) = count.device_ptr_mut(&stream);
                self.launch_rows::<T, S>(w, adapter, k, n, op, 0, factor_ptr, counter)?;
            }
            let bad = stream.clone_dtoh(&count)?[0];
            if bad > 0 {
                return Err(invalid(
                    "weight",
                    "a merge with finite results (safe merge); W is unchanged",
                    format!("{bad} non-finite values"),
                ));
            }
        }
        self.launch_rows::<T, S>(w, adapter, k, n, op, 0, factor_ptr, 0)
    }

    /// One row pass: writes `row_values` (NORM, FACTOR) or W (MERGE, UNMERGE, reading the factor
    /// from `row_values`, 0 for none); with a `counter`, MERGE and UNMERGE write nothing and count the
    /// non-finite results there instead.
    #[allow(clippy::too_many_arguments)]
    fn launch_rows<T: Element, S: DevicePtr<T>>(
        &self,
        weight: u64,
        adapter: LoraAdapter<'_, S>,
        k: usize,
        n: usize,
        op: DoraRowOp,
        magnitude: u64,
        row_values: u64,
        counter: u64,
    ) -> Result<()> {
        self.check_dtype(T::DTYPE, "the DoRA row pass")?;
        let stream = self.stream().clone();
        let (func, _) = self.kernel(
            KernelModule::Dora,
            &format!("dora_rows_{}", T::DTYPE.name()),
            DORA_THREADS,
        )?;
        let (a, _ga) = adapter.lora_a.device_ptr(&stream);
        let (b, _gb) = adapter.lora_b.device_ptr(&stream);
        let params = DoraRowParams {
            weight,
            lora_a: a,
            lora_b: b,
            magnitude,
            row_values,
            non_finite: counter,
            n: n as i32,
            k: k as i32,
            rank: adapter.rank as i32,
            scale: adapter.scale,
            op: op as i32,
            check_only: (counter != 0) as i32,
        };
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(DORA_ROWS_PER_BLOCK as usize) as u32, 1, 1),
            block_dim: (DORA_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&func);
        launch.arg(&params);
        // SAFETY: W, A, B, the magnitude and the row values were validated for [n, k], [r, k], [n, r]
        // and [n]; the counter holds one u32.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}
