//! The GPU handle: driver probe, context and stream, lazily loaded kernel modules, device limits.
//!
//! [`Gpu::new`] never panics on a machine without a GPU: it first looks for the driver library itself
//! (cudarc panics when `libcuda` is absent) and returns [`Error::NoDevice`].
use crate::error::{Error, Result};
use crate::kernel_images;
use cudarc::driver::{
    sys::CUdevice_attribute, CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr,
    LaunchConfig, PushKernelArg,
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

/// Whether the CUDA driver library can be loaded on this machine (no device is touched).
pub fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        ["libcuda.so.1", "libcuda.so", "nvcuda.dll"]
            .iter()
            // SAFETY: loading the driver library runs its initialisers, as cudarc itself would.
            .any(|name| unsafe { libloading::Library::new(*name) }.is_ok())
    })
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
/// Work is ordered on the handle's stream; scratch buffers (e.g. the fused LoRA forward's counters)
/// belong to the handle, so use one handle per stream.
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
    /// Returns [`Error::NoDevice`] when the driver library is missing or reports no such device.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(Error::NoDevice(
                "the CUDA driver library (libcuda.so.1) was not found".into(),
            ));
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
