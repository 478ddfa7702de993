//! The mixed batch's launches (`kernels/mixed_batch.cu`) and its adapter table.
use crate::device::{Gpu, KernelModule};
use crate::error::{invalid, Result};
use crate::lora::{LoraAdapter, LoraShape};
use crate::sys::{
    adapter_slots, LoraAdapterSlot, LoraMixedParams, SlotAdapter, LORA_MAX_LAUNCH_RANK,
    MIXED_N_TILE, MIXED_THREADS,
};
use crate::validate::{validate_adapter, validate_lora_forward, AdapterLens};

/// Rows up to which the mixed batch runs as one kernel (each block recomputing its row's hidden);
/// more rows take the two-phase path (the hidden once per row, then the expand).
const MIXED_DECODE_ROWS: usize = 16;
use crate::Element;
use cudarc::driver::sys::CUstreamCaptureStatus;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::sync::Arc;

/// The mixed batch's prefill scratch, kept by the handle: each row's hidden (f32, grow-only).
/// Growing retires the old buffer (kept until the handle drops) instead of freeing it, so a CUDA
/// graph captured earlier never points at freed memory; it cannot grow while the stream captures.
#[derive(Default)]
struct PrefillHidden {
    current: Option<CudaSlice<f32>>,
    retired: Vec<CudaSlice<f32>>,
}

impl PrefillHidden {
    /// At least `len` f32, allocated (or grown) on first need and kept, so later calls at that size
    /// allocate nothing.
    fn at_least(&mut self, stream: &Arc<CudaStream>, len: usize) -> Result<&mut CudaSlice<f32>> {
        if self.current.as_ref().is_none_or(|h| h.len() < len) {
            if stream.capture_status()? != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
                return Err(invalid(
                    "workspace",
                    "a mixed-batch forward with this many rows (or more) before the capture \
                     began: the handle's prefill scratch cannot grow while its stream captures",
                    format!(
                        "{len} f32 needed, {} held",
                        self.current.as_ref().map_or(0, |h| h.len())
                    ),
                ));
            }
            let new = stream.alloc_zeros::<f32>(len)?;
            if let Some(old) = self.current.replace(new) {
                self.retired.push(old);
            }
        }
        Ok(self.current.as_mut().expect("allocated above"))
    }
}

/// The adapters a mixed batch picks from, as a table on the GPU (built once, reused by every call:
/// the forward itself allocates nothing). Borrows the adapters' buffers for `'a`, and each forward
/// takes every adapter's A and B through [`DevicePtr::device_ptr`] on its stream, so cudarc's
/// event tracking orders the forward after a rewrite of an adapter on another stream (and a
/// later rewrite after the forward), as it does for the other arguments.
pub struct MixedAdapters<'a, T> {
    slots: CudaSlice<LoraAdapterSlot>,
    /// Each adapter's A and B, for the forward's reads.
    buffers: Vec<[&'a (dyn DevicePtr<T> + Sync); 2]>,
    count: usize,
    k: usize,
    n: usize,
}

impl<T> std::fmt::Debug for MixedAdapters<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MixedAdapters")
            .field("count", &self.count)
            .field("k", &self.k)
            .field("n", &self.n)
            .finish()
    }
}

impl<T> MixedAdapters<'_, T> {
    /// Number of adapters (valid indices are 0 to count − 1).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl Gpu {
    /// Builds the adapter table of mixed batches over x [m, k] and y [m, n]: every adapter is checked
    /// (rank 1 to 256, finite scale, A [r, k], B [n, r]) and its pointers are uploaded once.
    pub fn mixed_adapters<'a, T: Element, S: DevicePtr<T> + Sync>(
        &self,
        adapters: &[LoraAdapter<'a, S>],
        k: usize,
        n: usize,
    ) -> Result<MixedAdapters<'a, T>> {
        let lens = AdapterLens::of(adapters, |s| s.len());
        for (i, ad) in lens.iter().enumerate() {
            validate_adapter(&format!("adapters[{i}]"), ad, k, n)?;
        }
        if adapters.len() > i32::MAX as usize {
            return Err(invalid(
                "adapters",
                format!("at most {} adapters", i32::MAX),
                adapters.len(),
            ));
        }
        let stream = self.stream().clone();
        let (table, _) = adapter_slots(adapters.iter().map(|ad| {
            let (a, _ga) = ad.lora_a.device_ptr(&stream);
            let (b, _gb) = ad.lora_b.device_ptr(&stream);
            SlotAdapter {
                a,
                b,
                rank: ad.rank,
                scale: ad.scale,
            }
        }));
        let slots = if table.is_empty() {
            stream.alloc_zeros::<LoraAdapterSlot>(1)?
        } else {
            stream.clone_htod(&table)?
        };
        let buffers = adapters
            .iter()
            .map(|ad| {
                let a: &'a (dyn DevicePtr<T> + Sync) = ad.lora_a;
                let b: &'a (dyn DevicePtr<T> + Sync) = ad.lora_b;
                [a, b]
            })
            .collect();
        Ok(MixedAdapters {
            slots,
            buffers,
            count: adapters.len(),
            k,
            n,
        })
    }

    /// The mixed-batch forward: `y[i] = base[i] + sₐ·(x[i]·Aₐᵀ)·Bₐᵀ` with `a = indices[i]` (int32 on
    /// the GPU). Index −1 (peft's `"__base__"`) means no adapter. Indices are the caller's contract:
    /// they are read on the device (no synchronisation), and an index outside `0..adapters.len()` is
    /// treated as −1, never read out of bounds. Up to 16 rows: one launch, each block forming its
    /// row's hidden; more rows: a shrink launch (each row's hidden once, into a scratch buffer the
    /// handle keeps) then the expand. Nothing is allocated once the scratch has been sized by a first
    /// call at that many rows, so warm up before capturing a CUDA graph (during a capture the
    /// scratch cannot grow: the call fails instead; see [`Gpu`] for scratch and graphs).
    pub fn lora_forward_mixed<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        base: &impl DevicePtr<T>,
        adapters: &MixedAdapters<'_, T>,
        indices: &impl DevicePtr<i32>,
        shape: LoraShape,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        validate_lora_forward(shape, x.len(), Some(base.len()), Some(y.len()), &[])?;
        if (shape.k, shape.n) != (adapters.k, adapters.n) {
            return Err(invalid(
                "adapters",
                format!("a table built for k={}, n={}", shape.k, shape.n),
                format!("k={}, n={}", adapters.k, adapters.n),
            ));
        }
        if indices.len() < shape.m {
            return Err(invalid(
                "indices",
                format!("at least {} entries (one per row)", shape.m),
                indices.len(),
            ));
        }
        let n_tiles = shape.n.div_ceil(MIXED_N_TILE as usize);
        let blocks = shape
            .m
            .checked_mul(n_tiles)
            .filter(|&b| b <= i32::MAX as usize)
            .ok_or_else(|| {
                invalid(
                    "shape",
                    format!("at most {} rows x {}-column tiles", i32::MAX, MIXED_N_TILE),
                    format!("{shape:?}"),
                )
            })?;
        self.check_dtype(T::DTYPE, "the mixed-batch forward")?;
        let stream = self.stream().clone();
        let dtype = T::DTYPE.name();
        let (x_ptr, _gx) = x.device_ptr(&stream);
        let (base_ptr, _gb) = base.device_ptr(&stream);
        let (idx_ptr, _gi) = indices.device_ptr(&stream);
        let (slots, _gs) = adapters.slots.device_ptr(&stream);
        // The adapters' A and B are read through the table's pointers: take them on this stream
        // so their last writes are waited for and this read is recorded.
        let _adapter_guards: Vec<_> = adapters
            .buffers
            .iter()
            .flatten()
            .map(|buf| buf.device_ptr(&stream).1)
            .collect();
        let (y_ptr, _gy) = y.device_ptr_mut(&stream);
        let mut params = LoraMixedParams {
            x: x_ptr,
            base: base_ptr,
            y: y_ptr,
            slots,
            indices: idx_ptr,
            m: shape.m as i32,
            n: shape.n as i32,
            k: shape.k as i32,
            num_adapters: adapters.count as i32,
            hidden: 0,
        };
        if shape.m <= MIXED_DECODE_ROWS || n_tiles == 1 {
            let (func, _) = self.kernel(
                KernelModule::MixedBatch,
                &format!("mixed_batch_lora_{dtype}"),
                MIXED_THREADS,
            )?;
            // SAFETY: x, base, y and indices were checked for [m, k], [m, n] and m; every adapter in
            // the table was checked for [r, k] and [n, r] and outlives it; out-of-range indices read
            // nothing.
            return unsafe { self.launch(&func, (blocks as u32, 1), MIXED_THREADS, &params) };
        }
        // Prefill: each row's hidden once, then the expand.
        let scratch = self.scratch::<PrefillHidden>();
        let mut hidden = scratch.lock().unwrap_or_else(|e| e.into_inner());
        let buffer = hidden.at_least(&stream, shape.m * LORA_MAX_LAUNCH_RANK as usize)?;
        let (h, _gh) = buffer.device_ptr_mut(&stream);
        params.hidden = h;
        let shrink = self
            .kernel(
                KernelModule::MixedBatch,
                &format!("mixed_batch_shrink_{dtype}"),
                MIXED_THREADS,
            )?
            .0;
        let expand = self
            .kernel(
                KernelModule::MixedBatch,
                &format!("mixed_batch_expand_{dtype}"),
                MIXED_THREADS,
            )?
            .0;
        // SAFETY: as above; hidden holds m * 256 f32 (the most a row's rank can be).
        unsafe { self.launch(&shrink, (shape.m as u32, 1), MIXED_THREADS, &params) }?;
        // SAFETY: as above.
        unsafe { self.launch(&expand, (blocks as u32, 1), MIXED_THREADS, &params) }
    }
}
