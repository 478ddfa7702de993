//! The writing row passes of `kernels/dora.cu`: merge and unmerge of an adapter into W, LoRA
//! (`W ± s·B·A`) and DoRA (`W ← f ⊙ (W + s·B·A)` and back), into a dense W or an LLM.int8 W (each row
//! requantised), with peft's safe mode; and the GPU int8 quantiser, which is the same requantising
//! pass with no adapter.
use super::gpu::{adapter_ptrs, check_factor, lens, RowPass};
use super::DoraFactor;
use crate::device::Gpu;
use crate::error::{invalid, Result};
use crate::int8::Int8Device;
use crate::linear::LinearWeight;
use crate::lora::LoraAdapter;
use crate::sys::{DoraRowOp, DoraRowOp_DORA_ROW_MERGE, DoraRowOp_DORA_ROW_UNMERGE};
use crate::validate::{validate_dims, validate_rows, validate_weight, AdapterLens};
use crate::Element;
use cudarc::driver::{DevicePtr, DevicePtrMut};

impl Gpu {
    /// Merges an adapter into W [n, k] in place, one pass: `W ← f ⊙ (W + s·B·A)` with a DoRA factor,
    /// `W ← W + s·B·A` without. With `safe`, a first pass counts non-finite results and, if there are
    /// any, returns an error and leaves W untouched (peft's `safe_merge`); this synchronises the stream.
    pub fn merge_adapter<T: Element>(
        &self,
        weight: &mut impl DevicePtrMut<T>,
        adapter: LoraAdapter<'_, impl DevicePtr<T>>,
        factor: Option<&DoraFactor>,
        k: usize,
        n: usize,
        safe: bool,
    ) -> Result<()> {
        self.update_rows::<T>(
            weight,
            adapter,
            factor,
            (k, n),
            safe,
            DoraRowOp_DORA_ROW_MERGE,
        )
    }

    /// Undoes [`Gpu::merge_adapter`] with the same adapter and factor: `W ← W / f − s·B·A`
    /// (`W ← W − s·B·A` without a factor). `safe` as for the merge.
    pub fn unmerge_adapter<T: Element>(
        &self,
        weight: &mut impl DevicePtrMut<T>,
        adapter: LoraAdapter<'_, impl DevicePtr<T>>,
        factor: Option<&DoraFactor>,
        k: usize,
        n: usize,
        safe: bool,
    ) -> Result<()> {
        self.update_rows::<T>(
            weight,
            adapter,
            factor,
            (k, n),
            safe,
            DoraRowOp_DORA_ROW_UNMERGE,
        )
    }

    fn update_rows<T: Element>(
        &self,
        weight: &mut impl DevicePtrMut<T>,
        adapter: LoraAdapter<'_, impl DevicePtr<T>>,
        factor: Option<&DoraFactor>,
        (k, n): (usize, usize),
        safe: bool,
        op: DoraRowOp,
    ) -> Result<()> {
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
    pub fn merge_adapter_int8<T: Element>(
        &self,
        weight: &mut Int8Device,
        adapter: LoraAdapter<'_, impl DevicePtr<T>>,
        factor: Option<&DoraFactor>,
        safe: bool,
    ) -> Result<()> {
        let _ = safe; // int8 results are always checked (above)
        self.update_int8(weight, adapter, factor, DoraRowOp_DORA_ROW_MERGE)
    }

    /// Undoes [`Gpu::merge_adapter_int8`] (`W / f − s·B·A`, requantised, non-finite results an error
    /// as there). Requantisation is lossy: the round trip restores W to within the int8 rounding of the
    /// merged and unmerged rows.
    pub fn unmerge_adapter_int8<T: Element>(
        &self,
        weight: &mut Int8Device,
        adapter: LoraAdapter<'_, impl DevicePtr<T>>,
        factor: Option<&DoraFactor>,
        safe: bool,
    ) -> Result<()> {
        let _ = safe; // int8 results are always checked (merge_adapter_int8)
        self.update_int8(weight, adapter, factor, DoraRowOp_DORA_ROW_UNMERGE)
    }

    /// Row-wise int8 quantisation of a dense W `[n, k]` on the GPU, code for code as
    /// [`crate::int8::reference::quantize_rowwise`] (bitsandbytes' `Int8Params` on its CPU backend):
    /// values rounded to f16, SCB = row absmax, CB = round-half-even(f32(W · f32(f32(1 / SCB) · 127)));
    /// an all-zero row gets SCB 0 and codes 0. A NaN or infinite value (after rounding to f16) is an
    /// error: a counting pass runs first and the stream synchronises once.
    pub fn quantize_int8<T: Element>(
        &self,
        weight: &impl DevicePtr<T>,
        k: usize,
        n: usize,
    ) -> Result<Int8Device> {
        validate_dims(&[("k", k), ("n", n)])?;
        validate_weight(weight.len(), k, n)?;
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
        validate_rows(k, n, n.saturating_mul(k), &lens(&adapter), None, None)?;
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
}
