//! The launch of `kernels/lora_shrink.cu` and the epilogue it hands to the GEMV that follows.
use crate::device::{Gpu, KernelModule};
use crate::error::Result;
use crate::lora::{LoraAdapter, LoraShape, MAX_RANK};
use crate::sys::{
    launch_slots, LoraGemvEpilogue, LoraShrinkParams, SlotAdapter, LORA_MAX_LAUNCH_ADAPTERS,
    LORA_MAX_LAUNCH_RANK, LORA_SHRINK_MAX_ROWS, LORA_SHRINK_THREADS,
};
use crate::Element;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};
use std::sync::Arc;

/// The epilogue of one GEMV launch, with the buffers it points at (kept alive until the launch is
/// enqueued; freeing is stream-ordered after it).
pub(crate) struct GemvLora<'s> {
    pub(crate) epilogue: LoraGemvEpilogue,
    _hidden: CudaSlice<f32>,
    _guards: Vec<SyncOnDrop<'s>>,
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
    /// [`fits_gemv_epilogue`]) and returns the epilogue for the GEMV that follows on the stream.
    pub(crate) fn gemv_lora<'s, T: Element, S: DevicePtr<T>>(
        &self,
        x: u64,
        shape: LoraShape,
        adapters: &'s [LoraAdapter<'_, S>],
        stream: &'s Arc<CudaStream>,
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
        let mut hidden = stream.alloc_zeros::<f32>(shape.m * offset)?;
        let hidden_ptr = {
            let (h, _g) = hidden.device_ptr_mut(stream);
            h
        };
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
        // m * rank_total f32 (allocated above); one block per rank.
        unsafe { self.launch(&func, (offset as u32, 1), LORA_SHRINK_THREADS, &params) }?;
        Ok(GemvLora {
            epilogue: LoraGemvEpilogue {
                hidden: hidden_ptr,
                rank_total: offset as i32,
                num_adapters: adapters.len() as i32,
                adapters: slots,
            },
            _hidden: hidden,
            _guards: guards,
        })
    }
}
