//! GPU launch of the fused LoRA forward (`kernels/lora.cu`).
use super::{LoraAdapter, LoraShape};
use crate::device::{Gpu, KernelModule};
use crate::error::invalid;
use crate::error::Result;
use crate::sys::{
    launch_slots, LoraForwardParams, SlotAdapter, LORA_FORWARD_BM64_K_SLICE,
    LORA_FORWARD_BM64_MAX_RANK, LORA_FORWARD_K_SLICE_16BIT, LORA_FORWARD_K_SLICE_F32,
    LORA_FORWARD_N_TILE, LORA_FORWARD_THREADS, LORA_MAX_LAUNCH_ADAPTERS, LORA_MAX_LAUNCH_RANK,
};
use crate::validate::{validate_lora_forward, AdapterLens};
use crate::{DType, Element};
use cudarc::driver::sys::CUstreamCaptureStatus;
use cudarc::driver::{result as cu, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::sync::Arc;

/// The fused forward's scratch buffers: the shrink's partial sums, the hidden `x·Aᵀ`, and the
/// ticket and flag counters (zero between launches: the last block of each launch resets them).
struct Buffers {
    partials: CudaSlice<f32>,
    hidden: CudaSlice<f32>,
    counters: CudaSlice<u32>,
}

/// Element counts one launch needs of each buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Lens {
    partials: usize,
    hidden: usize,
    counters: usize,
}

impl Lens {
    fn of(plan: &Plan, k_chunks: usize, elem: usize) -> Lens {
        let m_pad = plan.m_tiles * plan.block_m;
        Lens {
            partials: k_chunks * m_pad * plan.rank_pad,
            hidden: (m_pad * plan.rank_pad * elem).div_ceil(4),
            counters: 2 + 2 * plan.m_tiles,
        }
    }

    fn max(self, o: Lens) -> Lens {
        Lens {
            partials: self.partials.max(o.partials),
            hidden: self.hidden.max(o.hidden),
            counters: self.counters.max(o.counters),
        }
    }
}

impl Buffers {
    fn alloc(stream: &Arc<CudaStream>, lens: Lens) -> Result<Buffers> {
        Ok(Buffers {
            partials: stream.alloc_zeros::<f32>(lens.partials.max(1))?,
            hidden: stream.alloc_zeros::<f32>(lens.hidden.max(1))?,
            counters: stream.alloc_zeros::<u32>(lens.counters.max(1))?,
        })
    }

    fn lens(&self) -> Lens {
        Lens {
            partials: self.partials.len(),
            hidden: self.hidden.len(),
            counters: self.counters.len(),
        }
    }

    fn fits(&self, need: Lens) -> bool {
        let have = self.lens();
        have.partials >= need.partials
            && have.hidden >= need.hidden
            && have.counters >= need.counters
    }
}

/// The workspace a [`Gpu`] handle keeps for the plain forwards ([`Gpu::lora_forward`] and
/// everything built on it). It grows on demand, but a buffer it has handed to a launch is never
/// freed while the handle lives: growing retires the old buffers (kept until the handle drops),
/// so a CUDA graph captured earlier still points at live memory. It refuses to grow while the
/// handle's stream captures.
#[derive(Default)]
pub(crate) struct ImplicitWorkspace {
    current: Option<Buffers>,
    retired: Vec<Buffers>,
}

/// A caller-owned workspace of the fused LoRA forward, installed in a handle by
/// [`Gpu::with_workspace`]: that handle's fused forwards, and everything built on them (the DoRA
/// forwards, the tiled path of [`Gpu::linear_lora_forward`], the layers), use it and nothing else.
///
/// Made by [`Gpu::lora_workspace`], sized once for every call up to a largest m, k and summed rank;
/// a forward that uses it allocates nothing and frees nothing, and one that needs more than it was
/// sized for fails with [`Error::InvalidArgument`](crate::Error::InvalidArgument) (`workspace`)
/// before anything is launched. Its buffers live as long as the value, so a CUDA graph captured
/// with it stays valid while the workspace does (drop the graph first).
///
/// A launch uses the workspace's counters for the whole kernel: launches that share one workspace
/// must not run concurrently. Use one workspace per stream (or per graph that may be replayed at
/// the same time as another), e.g. one for each of two streams that replay graphs side by side.
/// `&mut` in the forwards serialises the host calls; the device-side rule (no two captured graphs
/// sharing a workspace replayed concurrently) is the caller's.
pub struct LoraWorkspace {
    buffers: Buffers,
    dtype: DType,
    max_m: usize,
    max_k: usize,
    max_rank: usize,
}

impl std::fmt::Debug for LoraWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraWorkspace")
            .field("dtype", &self.dtype)
            .field("max_m", &self.max_m)
            .field("max_k", &self.max_k)
            .field("max_rank", &self.max_rank)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl LoraWorkspace {
    /// Device memory it holds, in bytes.
    pub fn bytes(&self) -> usize {
        let l = self.buffers.lens();
        4 * (l.partials + l.hidden + l.counters)
    }

    /// The (dtype, max m, max k, max summed rank) it was sized for.
    pub fn sized_for(&self) -> (DType, usize, usize, usize) {
        (self.dtype, self.max_m, self.max_k, self.max_rank)
    }
}

/// The caller's workspace a handle was given by [`Gpu::with_workspace`] (none: the handle's implicit
/// one).
#[derive(Default)]
struct FixedWorkspace(Option<LoraWorkspace>);

/// How one launch splits its work (see the comment at the top of the kernel).
#[derive(Clone, Copy, Debug)]
struct Plan {
    block_m: usize,
    rank_pad: usize,
    m_tiles: usize,
    /// The k split before rounding to whole slices: `k_chunks <= chunk_budget`, and the budget
    /// grows with k (a workspace sized at the largest k covers every smaller one).
    chunk_budget: usize,
    k_chunks: usize,
    k_chunk_len: usize,
    n_tiles: usize,
    n_tiles_per_item: usize,
}

impl Plan {
    fn new(dtype: DType, shape: LoraShape, rank_total: usize, resident_blocks: usize) -> Self {
        let LoraShape { m, k, n } = shape;
        let rank_pad = rank_total.next_power_of_two().max(16);
        // 64-row tiles (128-column K slices) cut the L2 re-reads of A and B and keep more bytes in
        // flight at large m; the kernel sizes them for padded ranks up to LORA_FORWARD_BM64_MAX_RANK
        // (`kRankCap`), so larger ranks take 16-row tiles.
        let block_m =
            if dtype != DType::F32 && m >= 256 && rank_pad <= LORA_FORWARD_BM64_MAX_RANK as usize {
                64
            } else {
                16
            };
        let m_tiles = m.div_ceil(block_m);
        let k_slice = k_slice(dtype, block_m);
        // Split k until every resident block has a shrink item, but keep the reduction of the
        // partials (k_chunks * block_m * rank_pad floats, read by one block) small.
        let max_chunks = k.div_ceil(k_slice);
        let reduce_cap = (16384 / (block_m * rank_pad)).max(1);
        let want = resident_blocks.div_ceil(m_tiles);
        let chunks = want.min(max_chunks).min(reduce_cap).max(1);
        let k_chunk_len = k.div_ceil(chunks).div_ceil(k_slice) * k_slice;
        let k_chunks = k.div_ceil(k_chunk_len);
        // Expand items cover runs of 64-column tiles: about two items per resident block, so the
        // per-item wait and hidden load are amortised at large m and every SM is busy at small m.
        let n_tiles = n.div_ceil(LORA_FORWARD_N_TILE as usize);
        let n_splits = (2 * resident_blocks).div_ceil(m_tiles).clamp(1, n_tiles);
        let n_tiles_per_item = n_tiles.div_ceil(n_splits);
        Plan {
            block_m,
            rank_pad,
            m_tiles,
            chunk_budget: chunks,
            k_chunks,
            k_chunk_len,
            n_tiles,
            n_tiles_per_item,
        }
    }

    fn items(&self) -> usize {
        self.m_tiles * (self.k_chunks + self.n_tiles.div_ceil(self.n_tiles_per_item))
    }
}

/// K columns the kernel stages per shrink step (`kKSlice` in the kernel; the header's constants).
fn k_slice(dtype: DType, block_m: usize) -> usize {
    (match (dtype, block_m) {
        (_, 64) => LORA_FORWARD_BM64_K_SLICE,
        (DType::F32, _) => LORA_FORWARD_K_SLICE_F32,
        _ => LORA_FORWARD_K_SLICE_16BIT,
    }) as usize
}

/// Device pointers of the DoRA epilogue: the f32 factor [n] and the bias [n] (0: none).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DoraEpilogue {
    pub factor: u64,
    pub bias: u64,
}

impl Gpu {
    /// A caller-owned workspace for [`Gpu::with_workspace`] on element type `dtype`, sized for every
    /// call with at most `max_m` rows, `max_k` input columns and `max_rank` summed rank (ranks of
    /// one call's adapters added up; launches hold at most 256, so larger sums are sized as 256),
    /// whatever n. Allocated (zeroed) once, on [`Gpu::stream`]; see [`LoraWorkspace`].
    pub fn lora_workspace(
        &self,
        dtype: DType,
        max_m: usize,
        max_k: usize,
        max_rank: usize,
    ) -> Result<LoraWorkspace> {
        for (arg, v) in [("max_m", max_m), ("max_k", max_k), ("max_rank", max_rank)] {
            if v == 0 {
                return Err(invalid(arg, "at least 1", v));
            }
        }
        let rank_cap = max_rank.min(LORA_MAX_LAUNCH_RANK as usize);
        let mut lens = Lens::default();
        let mut rank_pad = 16;
        loop {
            for dora in [false, true] {
                let mut resident = std::collections::HashMap::new();
                for m in 1..=max_m {
                    let shape = LoraShape::new(m, max_k, 1);
                    let block_m = Plan::new(dtype, shape, rank_pad, 1).block_m;
                    let r = match resident.get(&block_m) {
                        Some(&r) => r,
                        None => {
                            let r = self.forward_kernel(dtype, block_m, dora)?.1;
                            resident.insert(block_m, r);
                            r
                        }
                    };
                    let plan = Plan::new(dtype, shape, rank_pad, r);
                    lens = lens.max(Lens::of(&plan, plan.chunk_budget, dtype.size()));
                }
            }
            if rank_pad >= rank_cap {
                break;
            }
            rank_pad *= 2;
        }
        Ok(LoraWorkspace {
            buffers: Buffers::alloc(self.stream(), lens)?,
            dtype,
            max_m,
            max_k,
            max_rank,
        })
    }

    /// A handle on the same stream (context, loaded kernels) whose fused forwards use `workspace`
    /// and nothing else: they allocate no scratch, and fail with
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) (`workspace`) before launching when
    /// a call needs more than it was sized for. Everything built on the fused forward follows: the
    /// DoRA forwards, the tiled path of [`Gpu::linear_lora_forward`], [`crate::layer::Layer`]s made
    /// with this handle. The new handle has scratch of its own for the other families (the mixed
    /// batch's prefill hidden). Give each stream, and each graph that may replay at the same time
    /// as another, a handle with its own workspace ([`Gpu::from_stream`] for another stream).
    ///
    /// Errors when `workspace` belongs to another CUDA context.
    pub fn with_workspace(&self, workspace: LoraWorkspace) -> Result<Gpu> {
        if !Arc::ptr_eq(
            workspace.buffers.partials.context(),
            self.stream().context(),
        ) {
            return Err(invalid(
                "workspace",
                "a workspace of this handle's CUDA context",
                "one of another context",
            ));
        }
        Ok(self.with_scratch(FixedWorkspace(Some(workspace))))
    }

    /// The fused forward kernel for `dtype`, tile height `block_m`, with or without the DoRA
    /// epilogue, and its resident blocks.
    fn forward_kernel(
        &self,
        dtype: DType,
        block_m: usize,
        dora: bool,
    ) -> Result<(cudarc::driver::CudaFunction, usize)> {
        let variant = if dora { "dora_" } else { "" };
        self.kernel(
            KernelModule::Lora,
            &format!("lora_forward_{variant}bm{block_m}_{}", dtype.name()),
            LORA_FORWARD_THREADS,
        )
    }

    /// `y = base + Σᵢ sᵢ · (x · Aᵢᵀ) · Bᵢᵀ` on the GPU, one fused launch per 256 summed ranks.
    ///
    /// x [m, k], Aᵢ [rᵢ, k], Bᵢ [n, rᵢ], base and y [m, n], row-major, all of element type `T`
    /// (f32, f16, bf16; products accumulate in f32). Buffers may be longer than needed. Every argument is
    /// checked before anything is launched. The call is asynchronous on [`Gpu::stream`].
    ///
    /// Scratch comes from the handle's own workspace (see [`Gpu`]: one stream at a time; it grows
    /// on demand but never while the stream captures a graph). For graphs replayed on several
    /// streams, or a workspace sized up front, use a handle from [`Gpu::with_workspace`].
    pub fn lora_forward<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        base: &impl DevicePtr<T>,
        adapters: &[LoraAdapter<'_, impl DevicePtr<T>>],
        shape: LoraShape,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        validate_lora_forward(
            shape,
            x.len(),
            Some(base.len()),
            Some(y.len()),
            &device_lens(adapters),
        )?;
        let stream = self.stream().clone();
        let (base_ptr, _base_guard) = base.device_ptr(&stream);
        self.lora_forward_launch(x, Some(base_ptr), adapters, shape, y, None)
    }

    /// In place: `y += Σᵢ sᵢ · (x · Aᵢᵀ) · Bᵢᵀ` (y holds the base output on entry).
    pub fn lora_forward_inplace<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        adapters: &[LoraAdapter<'_, impl DevicePtr<T>>],
        shape: LoraShape,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        validate_lora_forward(shape, x.len(), None, Some(y.len()), &device_lens(adapters))?;
        self.lora_forward_launch(x, None, adapters, shape, y, None)
    }

    /// The launches behind the forward, arguments already validated: the `lora` family's entry for the
    /// rest of the crate. With `dora`, the single launch (one adapter) uses the DoRA epilogue
    /// `y = bias + f ⊙ (base − bias + LoRA term)` (the DoRA forwards of [`crate::dora`]). Scratch:
    /// the handle's fixed workspace ([`Gpu::with_workspace`]), else its implicit one.
    pub(crate) fn lora_forward_launch<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        base_ptr: Option<u64>,
        adapters: &[LoraAdapter<'_, impl DevicePtr<T>>],
        shape: LoraShape,
        y: &mut impl DevicePtrMut<T>,
        dora: Option<DoraEpilogue>,
    ) -> Result<()> {
        self.check_dtype(T::DTYPE, "the fused LoRA forward")?;
        let stream = self.stream().clone();
        let LoraShape { m, n, .. } = shape;
        let (x_ptr, _x_guard) = x.device_ptr(&stream);
        let (y_ptr, _y_guard) = y.device_ptr_mut(&stream);
        let mut guards = Vec::with_capacity(adapters.len() * 2);
        let mut device_adapters = Vec::with_capacity(adapters.len());
        for ad in adapters {
            let (a, ga) = ad.lora_a.device_ptr(&stream);
            let (b, gb) = ad.lora_b.device_ptr(&stream);
            guards.push(ga);
            guards.push(gb);
            device_adapters.push(SlotAdapter {
                a,
                b,
                rank: ad.rank,
                scale: ad.scale,
            });
        }

        // Adapters go in launches of at most 256 summed ranks and 8 adapters; the first launch reads
        // base, the later ones add to y in place.
        let mut launches: Vec<&[SlotAdapter]> = Vec::new();
        let mut start = 0;
        let mut rank = 0;
        for (i, ad) in device_adapters.iter().enumerate() {
            let full = i - start == LORA_MAX_LAUNCH_ADAPTERS as usize
                || rank + ad.rank > LORA_MAX_LAUNCH_RANK as usize;
            if full {
                launches.push(&device_adapters[start..i]);
                start = i;
                rank = 0;
            }
            rank += ad.rank;
        }
        if start < device_adapters.len() {
            launches.push(&device_adapters[start..]);
        }

        if launches.is_empty() {
            // No adapter: y = base.
            if let Some(base) = base_ptr {
                if base != y_ptr {
                    let bytes = m * n * std::mem::size_of::<T>();
                    // SAFETY: both ranges were validated to hold m * n elements.
                    unsafe { cu::memcpy_dtod_async(y_ptr, base, bytes, stream.cu_stream()) }?;
                }
            }
            return Ok(());
        }
        for (i, group) in launches.iter().enumerate() {
            let base = if i == 0 {
                base_ptr.unwrap_or(y_ptr)
            } else {
                y_ptr
            };
            self.launch_group::<T>(x_ptr, base, y_ptr, group, shape, dora)?;
        }
        Ok(())
    }

    fn launch_group<T: Element>(
        &self,
        x: u64,
        base: u64,
        y: u64,
        adapters: &[SlotAdapter],
        shape: LoraShape,
        dora: Option<DoraEpilogue>,
    ) -> Result<()> {
        let stream = self.stream().clone();
        let rank_total: usize = adapters.iter().map(|a| a.rank).sum();
        let dtype = T::DTYPE;
        let block_m = Plan::new(dtype, shape, rank_total, 1).block_m;
        let (func, resident) = self.forward_kernel(dtype, block_m, dora.is_some())?;
        let plan = Plan::new(dtype, shape, rank_total, resident);
        // The kernel hands out work items by a 32-bit ticket.
        if plan.items() > (u32::MAX / 2) as usize {
            return Err(crate::error::invalid(
                "shape",
                format!(
                    "at most {} work items of {} rows x 64 columns",
                    u32::MAX / 2,
                    plan.block_m
                ),
                format!("{} for {shape:?}", plan.items()),
            ));
        }

        let elem = std::mem::size_of::<T>();
        let need = Lens::of(&plan, plan.k_chunks, elem);

        // The caller's workspace, or the handle's (held locked until the launch is enqueued).
        let fixed = self.scratch::<FixedWorkspace>();
        let mut fixed = fixed.lock().unwrap_or_else(|e| e.into_inner());
        let implicit = self.scratch::<ImplicitWorkspace>();
        let mut guard;
        let ws: &mut Buffers = match fixed.0.as_mut() {
            Some(w) => {
                if !w.buffers.fits(need) {
                    return Err(invalid(
                        "workspace",
                        format!(
                            "a workspace with room for this call ({need:?} elements; make it with \
                             Gpu::lora_workspace for at least m={}, k={}, rank={rank_total})",
                            shape.m, shape.k
                        ),
                        format!(
                            "one sized for {:?}, m <= {}, k <= {}, rank <= {} ({:?})",
                            w.dtype,
                            w.max_m,
                            w.max_k,
                            w.max_rank,
                            w.buffers.lens()
                        ),
                    ));
                }
                &mut w.buffers
            }
            None => {
                guard = implicit.lock().unwrap_or_else(|e| e.into_inner());
                grow_implicit(&mut guard, &stream, need)?;
                guard.current.as_mut().expect("sized above")
            }
        };
        let (partials, _g1) = ws.partials.device_ptr_mut(&stream);
        let (hidden, _g2) = ws.hidden.device_ptr_mut(&stream);
        let (counters, _g3) = ws.counters.device_ptr_mut(&stream);

        let vec = 16 / elem;
        let aligned = |p: u64| p % 16 == 0;
        let vector_k = shape.k % vec == 0 && aligned(x) && adapters.iter().all(|a| aligned(a.a));
        let vector_n = shape.n % vec == 0 && aligned(base) && aligned(y);
        let vector_b = adapters.len() == 1 && adapters[0].rank % 2 == 0 && adapters[0].b % 4 == 0;

        let (slots, _) = launch_slots(adapters.iter().copied());
        let params = LoraForwardParams {
            x,
            base,
            y,
            partials,
            hidden,
            counters,
            m: shape.m as i32,
            n: shape.n as i32,
            k: shape.k as i32,
            rank_total: rank_total as i32,
            rank_pad: plan.rank_pad as i32,
            num_adapters: adapters.len() as i32,
            m_tiles: plan.m_tiles as i32,
            k_chunks: plan.k_chunks as i32,
            k_chunk_len: plan.k_chunk_len as i32,
            n_tiles: plan.n_tiles as i32,
            n_tiles_per_item: plan.n_tiles_per_item as i32,
            vector_k: vector_k as i32,
            vector_n: vector_n as i32,
            vector_b: vector_b as i32,
            dora_factor: dora.map_or(0, |d| d.factor),
            bias: dora.map_or(0, |d| d.bias),
            adapters: slots,
        };
        let grid = plan.items().min(resident).max(1);
        // SAFETY: every pointer was validated to cover the extents in `params`; the workspace holds
        // `need` elements of each buffer and is never freed while a launch may use it (the caller's
        // outlives the call, the handle's retires instead of freeing).
        unsafe { self.launch(&func, (grid as u32, 1), LORA_FORWARD_THREADS, &params) }
    }
}

/// Makes the handle's workspace hold `need`: a larger set of buffers when it does not, the old
/// ones retired (kept alive: a captured graph may point at them). Refused while the stream
/// captures (the allocation would become part of the graph, and the growth would free nothing
/// the graph could rely on): warm up at the largest size before capturing.
fn grow_implicit(ws: &mut ImplicitWorkspace, stream: &Arc<CudaStream>, need: Lens) -> Result<()> {
    if ws.current.as_ref().is_some_and(|b| b.fits(need)) {
        return Ok(());
    }
    if stream.capture_status()? != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
        return Err(invalid(
            "workspace",
            "a forward at this size (or larger) before the capture began: the handle's \
             workspace cannot grow while its stream captures (or give the handle a workspace \
             sized up front: Gpu::with_workspace)",
            format!(
                "a capture that needs {need:?} elements, the handle holds {:?}",
                ws.current.as_ref().map(Buffers::lens).unwrap_or_default()
            ),
        ));
    }
    let lens = ws.current.as_ref().map_or(need, |b| b.lens().max(need));
    let new = Buffers::alloc(stream, lens)?;
    if let Some(old) = ws.current.replace(new) {
        ws.retired.push(old);
    }
    Ok(())
}

fn device_lens<T, S: DevicePtr<T>>(adapters: &[LoraAdapter<'_, S>]) -> Vec<AdapterLens> {
    AdapterLens::of(adapters, |s| s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan covers k and n exactly and never asks a tile height for more rank than it holds
    /// (64-row tiles hold padded ranks up to LORA_FORWARD_BM64_MAX_RANK = 64, 16-row tiles up to 256).
    #[test]
    fn plans_respect_the_kernel_limits() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for &m in &[1, 15, 16, 17, 500, 1023, 1024, 2005, 4096, 70000] {
                for &k in &[1, 7, 64, 65, 106, 4096, 8191] {
                    for &n in &[1, 63, 64, 65, 4096, 14336] {
                        for &rank in &[1, 16, 17, 128, 129, 196, 256] {
                            for &resident in &[1, 132, 264] {
                                let p = Plan::new(dtype, LoraShape::new(m, k, n), rank, resident);
                                let cap = if p.block_m == 64 {
                                    LORA_FORWARD_BM64_MAX_RANK as usize
                                } else {
                                    LORA_MAX_LAUNCH_RANK as usize
                                };
                                let k_slice = k_slice(dtype, p.block_m);
                                assert!(
                                    p.rank_pad <= cap && p.rank_pad >= rank && p.rank_pad >= 16
                                );
                                assert!(p.rank_pad.is_power_of_two());
                                assert!(dtype != DType::F32 || p.block_m == 16);
                                assert_eq!(p.k_chunk_len % k_slice, 0);
                                assert!(p.k_chunks * p.k_chunk_len >= k);
                                assert!((p.k_chunks - 1) * p.k_chunk_len < k);
                                assert!(p.m_tiles * p.block_m >= m);
                                assert!(p.n_tiles * LORA_FORWARD_N_TILE as usize >= n);
                                assert!(p.n_tiles_per_item >= 1 && p.n_tiles_per_item <= p.n_tiles);
                            }
                        }
                    }
                }
            }
        }
    }
}
