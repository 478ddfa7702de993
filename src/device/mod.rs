//! The GPU handle: driver probe, context and stream, lazily loaded kernel modules, device limits.
//!
//! [`Gpu::new`] never panics on a machine without a GPU: it first looks for the driver library itself
//! (cudarc panics when `libcuda` is absent, or lacks `cuInit` or `cuGetErrorString`) and returns
//! [`Error::NoDevice`].
use crate::error::{Error, Result};
use crate::kernel_images;
use cudarc::driver::{
    sys::{CUdevice_attribute, CUgraphInstantiate_flags, CUstreamCaptureMode},
    CudaContext, CudaFunction, CudaGraph, CudaModule, CudaStream, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// The kernel families, one `kernels/<name>.cu` each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KernelModule {
    /// `kernels/lora_forward.cu`.
    LoraForward,
    /// `kernels/dora.cu`.
    Dora,
    /// `kernels/quant4.cu`.
    Quant4,
    /// `kernels/int8.cu`.
    Int8,
    /// `kernels/mixed_batch.cu`.
    MixedBatch,
    /// `kernels/linear.cu`.
    Linear,
    /// `kernels/lora_shrink.cu`.
    LoraShrink,
}

impl KernelModule {
    fn image(self) -> Option<&'static [u8]> {
        match self {
            KernelModule::LoraForward => kernel_images::LORA_FORWARD,
            KernelModule::Dora => kernel_images::DORA,
            KernelModule::Quant4 => kernel_images::QUANT4,
            KernelModule::Int8 => kernel_images::INT8,
            KernelModule::MixedBatch => kernel_images::MIXED_BATCH,
            KernelModule::Linear => kernel_images::LINEAR,
            KernelModule::LoraShrink => kernel_images::LORA_SHRINK,
        }
    }
}

/// The driver library names cudarc tries, in its order (cudarc uses the first that loads).
const DRIVER_LIBRARIES: &[&str] = &[
    "libcuda.so",
    "libcuda.so.13",
    "libcuda.so.12",
    "libcuda.so.11",
    "libcuda.so.10",
    "libcuda.so.9",
    "libcuda.so.1",
    "nvcuda.dll",
];

/// Entry points cudarc calls without checking that they exist (it panics on a missing one): `cuInit`
/// when a context is made, `cuGetErrorString` when a driver error is shown.
const REQUIRED_SYMBOLS: &[&str] = &["cuInit", "cuGetErrorString"];

/// Whether the CUDA driver library can be loaded on this machine and has the entry points cudarc
/// relies on (no device is touched).
pub fn driver_present() -> bool {
    driver_probe().is_ok()
}

/// [`probe_driver`] over cudarc's library names, once per process.
fn driver_probe() -> &'static std::result::Result<(), String> {
    static PROBE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(|| probe_driver(DRIVER_LIBRARIES))
}

/// Loads the first of `names` that loads (as cudarc picks its driver library) and checks that it
/// exports every [`REQUIRED_SYMBOLS`] entry; the error says which library lacks which symbol, or
/// that none loaded.
pub(crate) fn probe_driver(names: &[&str]) -> std::result::Result<(), String> {
    for name in names {
        // SAFETY: loading the driver library runs its initialisers, as cudarc itself would.
        let Ok(lib) = (unsafe { libloading::Library::new(*name) }) else {
            continue;
        };
        for symbol in REQUIRED_SYMBOLS {
            // SAFETY: the symbol is only looked up, never called.
            let found = unsafe { lib.get::<*const std::ffi::c_void>(symbol.as_bytes()) };
            if found.is_err() {
                return Err(format!(
                    "the CUDA driver library {name} has no `{symbol}` (not a CUDA driver, or a \
                     broken one)"
                ));
            }
        }
        return Ok(());
    }
    Err(format!(
        "the CUDA driver library was not found (tried {})",
        names.join(", ")
    ))
}

/// Whether the kernels were compiled into this build.
pub fn kernels_built() -> bool {
    kernel_images::KERNELS_BUILT
}

/// Fails unless a device of compute capability `(major, minor)` can run `what` on `dtype`: the
/// kernels are built for sm_80 and newer (bf16 needs sm_80 in any case).
fn check_capability(
    dtype: crate::DType,
    what: &str,
    device: &str,
    (major, minor): (i32, i32),
) -> Result<()> {
    if major < 8 {
        return Err(Error::Unsupported {
            what: format!("{what} on {dtype}"),
            device: device.to_string(),
            major,
            minor,
            needed: "compute capability 8.0 or newer (the kernels are built for sm_80+)".into(),
        });
    }
    Ok(())
}

/// Modules loaded into a context, shared by every handle on that context while any of them lives.
type ModuleRegistry = Mutex<Vec<(Weak<CudaContext>, KernelModule, Weak<CudaModule>)>>;
fn registry() -> &'static ModuleRegistry {
    static REGISTRY: OnceLock<ModuleRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Vec::new()))
}

/// A GPU and the stream this crate launches on.
///
/// Cheap to clone (the state is shared). Kernel modules load on first use, once per CUDA context.
/// Work is ordered on the handle's stream.
///
/// # Scratch, streams and CUDA graphs
/// The fused LoRA forward (and everything built on it: the DoRA forwards, the tiled path of
/// [`Gpu::linear_lora_forward`], the layer forwards) needs scratch: partial sums, the hidden
/// `x·Aᵀ`, and a ticket and flags that the launch's blocks share. The mixed batch's prefill needs
/// each row's hidden. Two launches that use the same scratch must not run at the same time.
/// - The plain forwards use the handle's own scratch, for its one stream. It grows on demand and
///   never frees a buffer a launch was given (growing retires the old buffers until the handle
///   drops), so a graph captured earlier never points at freed memory. While the stream captures
///   it cannot grow: such a forward fails with [`Error::InvalidArgument`] (`workspace`), so run
///   each forward once at its largest size before capturing. Replay graphs captured this way on
///   the handle's stream only (or ordered with it): a replay on another stream running while
///   the handle's stream runs a forward would share the ticket.
/// - The `*_with` forwards ([`Gpu::lora_forward_with`], [`Gpu::lora_forward_inplace_with`],
///   [`Gpu::dora_forward_with`], [`Gpu::dora_forward_inplace_with`]) take a caller-owned
///   [`LoraWorkspace`](crate::LoraWorkspace), sized once by [`Gpu::lora_workspace`]: they allocate
///   nothing and fail (never reallocate) when a call needs more. Give each stream (each graph
///   that may replay concurrently with another) its own workspace, and keep it alive as long as
///   the graph.
///
/// To capture: warm up (a first call at the largest size loads the kernels and sizes the
/// scratch), then [`Gpu::capture`] the calls. cudarc's event tracking must be off for the capture
/// (`unsafe { ctx.disable_event_tracking() }`): with it, every buffer access records and waits on
/// events, and CUDA rejects waits across the capture boundary; order the streams yourself then.
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<GpuInner>,
}

struct GpuInner {
    stream: Arc<CudaStream>,
    name: String,
    compute_capability: (i32, i32),
    sm_count: u32,
    modules: Mutex<HashMap<KernelModule, Arc<CudaModule>>>,
    /// Loaded kernels with the number of blocks of 256 threads resident on the whole device.
    kernels: Mutex<HashMap<String, (CudaFunction, usize)>>,
    /// The kernel families' scratch buffers, one value per type (see [`Gpu::scratch`]).
    scratch: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("name", &self.inner.name)
            .field("compute_capability", &self.inner.compute_capability)
            .field("sm_count", &self.inner.sm_count)
            .finish()
    }
}

impl Gpu {
    /// Opens device `ordinal` with a new stream of its own.
    ///
    /// Returns [`Error::NoDevice`] when the driver library is missing or lacks an entry point cudarc
    /// needs, when it reports no such device, and for an ordinal above `i32::MAX` (the driver's
    /// device numbers are `int`: such an ordinal names no device, and would otherwise wrap to one).
    pub fn new(ordinal: usize) -> Result<Self> {
        if i32::try_from(ordinal).is_err() {
            return Err(Error::NoDevice(format!(
                "device {ordinal}: no such device (CUDA device ordinals are at most {})",
                i32::MAX
            )));
        }
        if let Err(why) = driver_probe() {
            return Err(Error::NoDevice(why.clone()));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::NoDevice(format!("device {ordinal}: {e}")))?;
        let stream = ctx.new_stream()?;
        Self::from_stream(stream)
    }

    /// Wraps a caller's stream (e.g. a framework's), so this crate's work is ordered with theirs.
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Self> {
        let ctx = stream.context();
        let compute_capability = ctx.compute_capability()?;
        let sm_count =
            ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        Ok(Gpu {
            inner: Arc::new(GpuInner {
                stream,
                name,
                compute_capability,
                sm_count,
                modules: Mutex::new(HashMap::new()),
                kernels: Mutex::new(HashMap::new()),
                scratch: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The stream every launch of this handle goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    /// The device's name, as the driver reports it.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// (major, minor) compute capability.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.inner.compute_capability
    }

    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> u32 {
        self.inner.sm_count
    }

    /// Waits for all work on the handle's stream.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.inner.stream.synchronize()?)
    }

    /// Captures the work `f` enqueues on the handle's stream into a CUDA graph (a
    /// `CU_STREAM_CAPTURE_MODE_THREAD_LOCAL` capture: other threads are unaffected), and
    /// instantiates it. Replay it with [`CudaGraph::launch`], on the handle's stream; each replay
    /// reads the buffers' contents at that time, so change inputs in place between replays.
    ///
    /// Nothing inside `f` may allocate on, synchronise or read back through the stream (CUDA
    /// refuses it during capture); run every forward once before, at its largest size (see
    /// [`Gpu`]). Fails without capturing when cudarc's event tracking is on for the context
    /// (see [`Gpu`]); when `f` fails, the capture is ended and `f`'s error returned.
    pub fn capture(&self, f: impl FnOnce() -> Result<()>) -> Result<CudaGraph> {
        let stream = &self.inner.stream;
        if stream.context().is_managing_stream_synchronization() {
            return Err(crate::error::invalid(
                "context",
                "cudarc's event tracking off during capture (unsafe { ctx.disable_event_tracking() }): \
                 its waits on events recorded outside the capture are refused by CUDA",
                "event tracking on",
            ));
        }
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let ran = f();
        let ended = stream.end_capture(CUgraphInstantiate_flags(0));
        ran?;
        ended?.ok_or_else(|| {
            crate::error::invalid(
                "capture",
                "a graph",
                "no graph (the capture was empty or invalid)",
            )
        })
    }

    /// The handle's scratch of type `S`, created empty (`S::default()`) on first use and kept for the
    /// handle's life. Each kernel family defines its own scratch type (the fused LoRA forward's
    /// workspace, the mixed batch's prefill hidden), so the handle knows no family; the mutex
    /// serialises the launches that share it.
    pub(crate) fn scratch<S: Default + Send + 'static>(&self) -> Arc<Mutex<S>> {
        let mut all = self.inner.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let entry = all
            .entry(TypeId::of::<S>())
            .or_insert_with(|| Arc::new(Mutex::new(S::default())));
        match Arc::clone(entry).downcast::<Mutex<S>>() {
            Ok(scratch) => scratch,
            // Unreachable: entries are keyed by their own type.
            Err(_) => Arc::new(Mutex::new(S::default())),
        }
    }

    /// Fails unless the device can run kernels on `dtype` (all kernels are built for sm_80 and newer).
    pub(crate) fn check_dtype(&self, dtype: crate::DType, what: &str) -> Result<()> {
        check_capability(dtype, what, &self.inner.name, self.inner.compute_capability)
    }

    /// Kernel `name` of `module` and how many of its blocks of `block_threads` fit on the device at
    /// once; looked up once per handle.
    pub(crate) fn kernel(
        &self,
        module: KernelModule,
        name: &str,
        block_threads: u32,
    ) -> Result<(CudaFunction, usize)> {
        let mut kernels = self.inner.kernels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = kernels.get(name) {
            return Ok(found.clone());
        }
        let func = self.function(module, name)?;
        let per_sm = func.occupancy_max_active_blocks_per_multiprocessor(block_threads, 0, None)?;
        let resident = per_sm.max(1) as usize * self.inner.sm_count as usize;
        kernels.insert(name.to_string(), (func.clone(), resident));
        Ok((func, resident))
    }

    /// Launches `func` on the handle's stream: a `grid` of blocks of `threads` threads, `params` as
    /// its one argument (a parameter struct of kernels/lora_params.h), no dynamic shared memory.
    ///
    /// # Safety
    /// Every address in `params` must hold what the kernel reads and writes for that grid, and stay
    /// valid until the launch completes on the stream.
    pub(crate) unsafe fn launch<P: DeviceRepr>(
        &self,
        func: &CudaFunction,
        grid: (u32, u32),
        threads: u32,
        params: &P,
    ) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: (grid.0.max(1), grid.1.max(1), 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut builder = self.inner.stream.launch_builder(func);
        builder.arg(params);
        // SAFETY: the caller's contract.
        unsafe { builder.launch(cfg) }?;
        Ok(())
    }

    /// Loads (once per context) and returns kernel `name` of `module`.
    fn function(&self, module: KernelModule, name: &str) -> Result<CudaFunction> {
        let loaded = {
            let mut mine = self.inner.modules.lock().unwrap_or_else(|e| e.into_inner());
            match mine.get(&module) {
                Some(m) => m.clone(),
                None => {
                    let m = self.load_module(module)?;
                    mine.insert(module, m.clone());
                    m
                }
            }
        };
        Ok(loaded.load_function(name)?)
    }

    fn load_module(&self, module: KernelModule) -> Result<Arc<CudaModule>> {
        let image = module.image().ok_or(Error::KernelsNotBuilt)?;
        let ctx = self.inner.stream.context();
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        reg.retain(|(c, _, m)| c.strong_count() > 0 && m.strong_count() > 0);
        for (c, kind, m) in reg.iter() {
            if *kind == module {
                if let (Some(c), Some(m)) = (c.upgrade(), m.upgrade()) {
                    if Arc::ptr_eq(&c, ctx) {
                        return Ok(m);
                    }
                }
            }
        }
        let loaded = ctx.load_module(Ptx::from_binary(image.to_vec()))?;
        reg.push((Arc::downgrade(ctx), module, Arc::downgrade(&loaded)));
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn the_driver_probe_needs_the_entry_points_cudarc_calls() {
        // libm loads but is no CUDA driver: it has no cuInit.
        let e = probe_driver(&["libm.so.6"]).unwrap_err();
        assert!(e.contains("libm.so.6") && e.contains("cuInit"), "{e}");
        let e = probe_driver(&["libdoes-not-exist.so.7"]).unwrap_err();
        assert!(e.contains("not found"), "{e}");
        // The first library that loads is the one judged (cudarc takes it).
        assert!(probe_driver(&["libdoes-not-exist.so.7", "libm.so.6"]).is_err());
    }

    #[test]
    fn ordinals_beyond_i32_are_no_device() {
        // 2^32 + 1 would wrap to device 1 inside cudarc.
        match Gpu::new((1usize << 32) + 1) {
            Err(Error::NoDevice(why)) => assert!(why.contains("4294967297"), "{why}"),
            other => panic!("expected NoDevice, got {other:?}"),
        }
    }

    #[test]
    fn devices_below_sm80_are_refused_with_a_clear_error() {
        let err = check_capability(DType::BF16, "the fused LoRA forward", "Tesla T4", (7, 5))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("bf16")
                && msg.contains("Tesla T4")
                && msg.contains("7.5")
                && msg.contains("8.0"),
            "{msg}"
        );
        assert!(check_capability(DType::F16, "x", "V100", (7, 0)).is_err());
        for cc in [(8, 0), (8, 6), (8, 9), (9, 0)] {
            assert!(check_capability(DType::BF16, "x", "gpu", cc).is_ok());
        }
    }
}
