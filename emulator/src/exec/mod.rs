//! The interpreter: device memory, modules, and kernel execution in warps of 32 lanes with the
//! memory, init, race and sync checkers.
//!
//! CONTRACT (used by `driver`): the public items of this file keep these signatures. The bodies
//! here are placeholders until the interpreter lands.
use crate::ptx::ir;

/// The CUDA error a failure maps to (`CUresult` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum CudaCode {
    InvalidValue = 1,
    OutOfMemory = 2,
    InvalidImage = 200,
    InvalidContext = 201,
    NoBinaryForGpu = 209,
    InvalidPtx = 218,
    InvalidSource = 300,
    NotFound = 500,
    InvalidHandle = 400,
    IllegalAddress = 700,
    LaunchOutOfResources = 701,
    LaunchFailed = 719,
    MisalignedAddress = 716,
    IllegalInstruction = 715,
    InvalidAddressSpace = 717,
    Assert = 710,
    NotSupported = 801,
    Unknown = 999,
}

/// A failure of an emulator operation: the CUDA code the driver returns and a message that says
/// what happened (for a checker report: kernel, block, thread, address, `.cu` file:line).
#[derive(Clone, Debug, PartialEq)]
pub struct EmuError {
    pub code: CudaCode,
    pub message: String,
}

impl EmuError {
    pub fn new(code: CudaCode, message: impl Into<String>) -> Self {
        EmuError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for EmuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} ({}): {}",
            self.code, self.code as u32, self.message
        )
    }
}

impl std::error::Error for EmuError {}

pub type EmuResult<T> = Result<T, EmuError>;

/// The emulated device's properties (what `cuDeviceGetAttribute` reports).
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    pub name: String,
    /// (major, minor): (8, 0).
    pub compute_capability: (i32, i32),
    pub sm_count: u32,
    pub max_threads_per_block: u32,
    pub max_threads_per_sm: u32,
    pub max_blocks_per_sm: u32,
    pub shared_per_block: u32,
    pub shared_per_block_optin: u32,
    pub shared_per_sm: u32,
    pub regs_per_block: u32,
    pub regs_per_sm: u32,
    pub warp_size: u32,
    pub total_memory: u64,
    pub l2_size: u32,
    pub clock_khz: u32,
    pub memory_clock_khz: u32,
    pub memory_bus_width: u32,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            name: "lora-kernels PTX emulator (sm_80)".into(),
            compute_capability: (8, 0),
            sm_count: 4,
            max_threads_per_block: 1024,
            max_threads_per_sm: 2048,
            max_blocks_per_sm: 32,
            shared_per_block: 48 * 1024,
            shared_per_block_optin: 163 * 1024,
            shared_per_sm: 164 * 1024,
            regs_per_block: 65536,
            regs_per_sm: 65536,
            warp_size: 32,
            total_memory: 4 << 30,
            l2_size: 40 << 20,
            clock_khz: 1_410_000,
            memory_clock_khz: 1_215_000,
            memory_bus_width: 5120,
        }
    }
}

/// Which checkers run (all on by default).
#[derive(Clone, Copy, Debug)]
pub struct CheckerConfig {
    pub memcheck: bool,
    pub initcheck: bool,
    pub racecheck: bool,
    pub synccheck: bool,
}

impl Default for CheckerConfig {
    fn default() -> Self {
        CheckerConfig {
            memcheck: true,
            initcheck: true,
            racecheck: true,
            synccheck: true,
        }
    }
}

/// A loaded module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModuleId(pub u32);

/// A kernel of a loaded module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FunctionId(pub u32);

/// What `cuFuncGetAttribute` and the occupancy calculator need.
#[derive(Clone, Copy, Debug)]
pub struct FunctionInfo {
    pub max_threads_per_block: u32,
    pub static_shared_bytes: u32,
    pub num_regs: u32,
    pub local_bytes: u32,
}

/// Counts of one launch (the emulator's throughput in its README comes from these).
#[derive(Clone, Copy, Debug, Default)]
pub struct LaunchStats {
    pub warp_instructions: u64,
    pub mma_instructions: u64,
}

/// The emulated device: memory, modules, launches.
pub struct Machine {
    pub config: DeviceConfig,
    pub checkers: CheckerConfig,
    /// Seed for a randomised scheduling order (`None`: the fixed round-robin order).
    pub schedule_seed: Option<u64>,
}

impl Machine {
    pub fn new(config: DeviceConfig) -> Self {
        Machine {
            config,
            checkers: CheckerConfig::default(),
            schedule_seed: None,
        }
    }

    /// Allocates `bytes` of device memory (never written yet: initcheck flags reads before a
    /// write or memset), returns its device address. 256-byte aligned, with redzones around it.
    pub fn alloc(&mut self, bytes: u64) -> EmuResult<u64> {
        let _ = bytes;
        Err(todo_err())
    }

    /// Frees an allocation by its base address (use after free is then reported).
    pub fn free(&mut self, addr: u64) -> EmuResult<()> {
        let _ = addr;
        Err(todo_err())
    }

    /// Host to device.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> EmuResult<()> {
        let _ = (addr, data);
        Err(todo_err())
    }

    /// Device to host.
    pub fn read(&mut self, addr: u64, out: &mut [u8]) -> EmuResult<()> {
        let _ = (addr, out);
        Err(todo_err())
    }

    /// Device to device.
    pub fn copy(&mut self, dst: u64, src: u64, bytes: u64) -> EmuResult<()> {
        let _ = (dst, src, bytes);
        Err(todo_err())
    }

    /// `cuMemsetD8`.
    pub fn memset8(&mut self, addr: u64, value: u8, bytes: u64) -> EmuResult<()> {
        let _ = (addr, value, bytes);
        Err(todo_err())
    }

    /// Whether `[addr, addr+bytes)` lies inside one live allocation.
    pub fn is_device_range(&self, addr: u64, bytes: u64) -> bool {
        let _ = (addr, bytes);
        false
    }

    /// Loads a parsed module: lowers every kernel, failing on the first unsupported instruction
    /// or directive with an error naming the form and the kernel.
    pub fn load_module(&mut self, module: ir::Module) -> EmuResult<ModuleId> {
        let _ = module;
        Err(todo_err())
    }

    pub fn unload_module(&mut self, module: ModuleId) -> EmuResult<()> {
        let _ = module;
        Err(todo_err())
    }

    pub fn get_function(&self, module: ModuleId, name: &str) -> EmuResult<FunctionId> {
        let _ = (module, name);
        Err(todo_err())
    }

    pub fn function_info(&self, f: FunctionId) -> EmuResult<FunctionInfo> {
        let _ = f;
        Err(todo_err())
    }

    /// The kernel's parameters as (size, align) in declaration order: the driver packs
    /// `kernelParams[i]` (`size` bytes each) into the parameter buffer with these.
    pub fn function_params(&self, f: FunctionId) -> EmuResult<Vec<(u64, u32)>> {
        let _ = f;
        Err(todo_err())
    }

    /// Runs a kernel to completion. `params[i]` holds the bytes of parameter `i`.
    pub fn launch(
        &mut self,
        f: FunctionId,
        grid: [u32; 3],
        block: [u32; 3],
        dynamic_shared_bytes: u32,
        params: &[Vec<u8>],
    ) -> EmuResult<LaunchStats> {
        let _ = (f, grid, block, dynamic_shared_bytes, params);
        Err(todo_err())
    }
}

fn todo_err() -> EmuError {
    EmuError::new(CudaCode::NotSupported, "the interpreter is not built yet")
}
