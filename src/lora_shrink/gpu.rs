//! The launch of `kernels/lora_shrink.cu` and the epilogue it hands to the GEMV that follows.
use crate::device::{Gpu, KernelModule};
use crate::error::{invalid, Result};
use crate::lora::{LoraAdapter, LoraShape, MAX_RANK};
use crate::sys::{
    launch_slots, LoraGemvEpilogue, LoraShrinkParams, SlotAdapter, LORA_MAX_LAUNCH_ADAPTERS,
    LORA_MAX_LAUNCH_RANK, LORA_SHRINK_MAX_ROWS, LORA_SHRINK_THREADS,
};
use crate::Element;
use cudarc::driver::sys::CUstreamCaptureStatus;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};
use std::sync::Arc;

/// The epilogue of one GEMV launch, with the guards of the buffers it points at (held until the
/// GEMV is enqueued).
pub(crate) struct GemvLora<'s> {
    pub(crate) epilogue: LoraGemvEpilogue,
    _guards: Vec<SyncOnDrop<'s>>,
}

/// The shrink's output, the hidden `[m, rank_total]` in f32, kept by the handle
/// ([`Gpu::scratch`]): allocated once at the most one launch can hold (8 rows × 256 ranks, 8 KiB),
/// never grown or freed while the handle lives, so a graph captured after a first decode-size call
/// stays valid. The caller holds its lock from the shrink until the GEMV reading it is enqueued.
#[derive(Default)]
pub(crate) struct ShrinkHidden(Option<CudaSlice<f32>>);

impl ShrinkHidden {
    /// The buffer, allocated on first use; refused while the stream captures (the allocation would
    /// be part of the graph): make one decode-size call before capturing.
    pub(crate) fn get(&mut self, stream: &Arc<CudaStream>) -> Result<&mut CudaSlice<f32>> {
        if self.0.is_none() {
            if stream.capture_status()? != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
                return Err(invalid(
                    "workspace",
                    "a decode-size product with adapters before the capture began (the handle's \
                     LoRA shrink scratch is allocated on first use)",
                    "a first use during a capture",
                ));
            }
            let len = LORA_SHRINK_MAX_ROWS as usize * LORA_MAX_LAUNCH_RANK as usize;
            self.0 = Some(stream.alloc_zeros::<f32>(len)?);
        }
        match self.0.as_mut() {
            Some(h) => Ok(h),
            None => Err(invalid("workspace", "an allocated shrink scratch", "none")),
        }
    }
}

/// Whether `adapters` on `shape` take the fused decode path: at most 8 rows, at most 8 adapters and
/// 256 summed ranks (one launch's worth).
pub(crate) fn fits_gemv_epilogue(shape: LoraShape, ranks: impl Iterator<Item = usize>) -> bool {
    let (count, total) = ranks.fold((0, 0), |(c, t), r| (c + 1, t + r));
    shape.m <= LORA_SHRINK_MAX_ROWS as usize
        && count >= 1
        && count <= LORA_MAX_LAUNCH_ADAPTERS as usize
        && total <= (LORA_MAX_LAUNCH_RANK as usize).min(MAX_RANK * count)
}

impl Gpu {
    /// Launches the shrink of `adapters` over x (already validated, with
    /// [`fits_gemv_epilogue`]) into `hidden` (a [`ShrinkHidden`] buffer whose lock the caller holds
    /// until the GEMV is enqueued) and returns the epilogue for the GEMV that follows on the stream.
    pub(crate) fn gemv_lora<'s, T: Element, S: DevicePtr<T>>(
        &self,
        x: u64,
        shape: LoraShape,
        adapters: &'s [LoraAdapter<'_, S>],
        stream: &'s Arc<CudaStream>,
        hidden: &'s mut CudaSlice<f32>,
    ) -> Result<GemvLora<'s>> {
        self.check_dtype(T::DTYPE, "the LoRA shrink")?;
        let mut guards = Vec::with_capacity(2 * adapters.len());
        let mut addrs = Vec::with_capacity(adapters.len());
        for ad in adapters {
            let (a, ga) = ad.lora_a.device_ptr(stream);
            let (b, gb) = ad.lora_b.device_ptr(stream);
            guards.push(ga);
            guards.push(gb);
            addrs.push(SlotAdapter {
                a,
                b,
                rank: ad.rank,
                scale: ad.scale,
            });
        }
        let (slots, offset) = launch_slots(addrs);
        if shape.m * offset > hidden.len() {
            return Err(invalid(
                "adapters",
                format!(
                    "at most {} rows x summed ranks (one decode launch)",
                    hidden.len()
                ),
                shape.m * offset,
            ));
        }
        let (hidden_ptr, gh) = hidden.device_ptr_mut(stream);
        guards.push(gh);
        let params = LoraShrinkParams {
            x,
            hidden: hidden_ptr,
            m: shape.m as i32,
            k: shape.k as i32,
            rank_total: offset as i32,
            num_adapters: adapters.len() as i32,
            adapters: slots,
        };
        let (func, _) = self.kernel(
            KernelModule::LoraShrink,
            &format!("lora_shrink_{}", T::DTYPE.name()),
            LORA_SHRINK_THREADS,
        )?;
        // SAFETY: x holds [m, k] (validated by the caller), every A [rank, k] (validated), hidden
        // m * rank_total f32 (checked above); one block per rank.
        unsafe { self.launch(&func, (offset as u32, 1), LORA_SHRINK_THREADS, &params) }?;
        Ok(GemvLora {
            epilogue: LoraGemvEpilogue {
                hidden: hidden_ptr,
                rank_total: offset as i32,
                num_adapters: adapters.len() as i32,
                adapters: slots,
            },
            _guards: guards,
        })
    }
}
