//! The interpreter: device memory, modules, and kernel execution in warps of 32 lanes with the
//! memory, init, race and sync checkers.
//!
//! CONTRACT (used by `driver`): the public items of this file keep these signatures.
//!
//! - [`memory`]: device memory, redzones, shadow state, the address map.
//! - [`lower`]: kernels into their executable form (`load_module` lowers every kernel once;
//!   anything neither the engine nor `alu::lower` knows fails the load, naming the opcode, the
//!   kernel and the PTX line).
//! - `run`: the SIMT scheduler, collectives, barriers and the checkers (its module docs say
//!   exactly what the racecheck and synccheck model).
//! - `alu` (per-lane arithmetic), `float` (rounding), `mma` (warp matrix math and the wmma
//!   layout): the semantics, called by the engine.
//!
//! # Checker reports
//! Every report fails the launch with an [`EmuError`] (memcheck: `IllegalAddress` 700 or
//! `MisalignedAddress` 716; initcheck and racecheck: 700; synccheck, deadlock and hang:
//! `LaunchFailed` 719) whose message reads
//! `CHECKER: WHAT in kernel K block (x,y,z) thread (x,y,z) at FILE:LINE (PTX line N)`, and is
//! printed to stderr as `========= emulator ...`.
//! - memcheck: accesses outside every live allocation (4 KiB redzones between allocations),
//!   inside a freed one (addresses are never reused), outside the device ranges (host
//!   pointers, null), not a multiple of the access size (vectors: of the whole vector), past the
//!   block's shared memory, the thread's local memory or the parameter buffer, stores to the
//!   parameter buffer; wmma rows that do not start at a multiple of the fragment size (the PTX
//!   ISA's rule in "Matrix Storage for WMMA": base and stride in bytes multiples of it).
//! - initcheck: reads of global bytes never written by the host, a memset, a copy or a kernel,
//!   of shared bytes not written by this block (shared memory starts unwritten for every block),
//!   and of local bytes not written by the thread. Module `.global`/`.const` variables count as
//!   written (static storage is zero-initialised). Registers are not tracked.
//! - racecheck: shared memory only, see `run`.
//! - synccheck: see `run`. Turning a checker off skips its reports (memcheck off still fails
//!   an access that lies in no memory at all: there is nothing to read).
//!
//! With `LORA_KERNELS_EMULATOR_STATS=1` every launch prints its counts and rates to stderr.
//! With `LORA_KERNELS_EMULATOR_PROFILE=<path>` (or [`Machine::profile`]) every launch counts the
//! [`profile`] counters (memory requests and sectors, an L2 model, shared-memory wavefronts,
//! instruction classes, mma) and appends them to `<path>` as one JSON line.
//!
//! # What is not modelled
//! Weak memory ordering (every access is immediately visible: membar/fence are no-ops), races
//! on global memory, races hidden by a named barrier with a thread count (any completed
//! barrier ends the block's epoch), the values a `shfl` reads from a lane outside the
//! membermask (its current register value), timing (`%clock` counts warp instructions).
use crate::ptx::ir;

pub mod alu;
mod alu_glue;
pub mod float;
pub mod lower;
pub mod memory;
pub mod mma;
mod mma_glue;
pub mod profile;
mod run;

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
    /// A launch fails as hung after this many warp steps without a global store, atomic,
    /// completed barrier or finished block.
    pub hang_limit_steps: u64,
    /// Count the profile counters of every launch (also on with
    /// `LORA_KERNELS_EMULATOR_PROFILE=<path>`, which appends one JSON line per launch there).
    pub profile: bool,
    /// The counters of the last successful launch, when profiled.
    pub last_profile: Option<profile::ProfileCounters>,
    mem: memory::DeviceMemory,
    modules: Vec<Option<LoadedModule>>,
    functions: Vec<Option<(u32, std::sync::Arc<lower::Program>)>>,
}

struct LoadedModule {
    functions: Vec<(String, u32)>,
    /// Device allocations of the module's global/const variables.
    var_allocs: Vec<u64>,
}

fn mem_err(what: &str, addr: u64, f: memory::Fault) -> EmuError {
    EmuError::new(
        CudaCode::InvalidValue,
        format!("{} at {:#x}: {}", what, addr, f.describe(addr)),
    )
}

impl Machine {
    pub fn new(config: DeviceConfig) -> Self {
        let cap = config.total_memory;
        Machine {
            config,
            checkers: CheckerConfig::default(),
            schedule_seed: None,
            hang_limit_steps: 50_000_000,
            profile: false,
            last_profile: None,
            mem: memory::DeviceMemory::new(cap),
            modules: Vec::new(),
            functions: Vec::new(),
        }
    }

    /// Allocates `bytes` of device memory (never written yet: initcheck flags reads before a
    /// write or memset), returns its device address. 256-byte aligned, with redzones around it.
    pub fn alloc(&mut self, bytes: u64) -> EmuResult<u64> {
        self.mem.alloc(bytes).ok_or_else(|| {
            EmuError::new(
                CudaCode::OutOfMemory,
                format!(
                    "cannot allocate {} bytes ({} of {} bytes in use)",
                    bytes,
                    self.mem.live_bytes(),
                    self.mem.capacity
                ),
            )
        })
    }

    /// Frees an allocation by its base address (use after free is then reported).
    pub fn free(&mut self, addr: u64) -> EmuResult<()> {
        if self.mem.free(addr) {
            Ok(())
        } else {
            Err(EmuError::new(
                CudaCode::InvalidValue,
                format!(
                    "free of {:#x}, which is not the base of a live allocation",
                    addr
                ),
            ))
        }
    }

    /// Host to device.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> EmuResult<()> {
        self.mem
            .host_write(addr, data)
            .map_err(|f| mem_err("host-to-device copy", addr, f))
    }

    /// Device to host.
    pub fn read(&mut self, addr: u64, out: &mut [u8]) -> EmuResult<()> {
        self.mem
            .host_read(addr, out)
            .map_err(|f| mem_err("device-to-host copy", addr, f))
    }

    /// Device to device.
    pub fn copy(&mut self, dst: u64, src: u64, bytes: u64) -> EmuResult<()> {
        self.mem
            .copy(dst, src, bytes)
            .map_err(|(a, f)| mem_err("device-to-device copy", a, f))
    }

    /// `cuMemsetD8`.
    pub fn memset8(&mut self, addr: u64, value: u8, bytes: u64) -> EmuResult<()> {
        self.mem
            .memset(addr, value, bytes)
            .map_err(|f| mem_err("memset", addr, f))
    }

    /// Whether `[addr, addr+bytes)` lies inside one live allocation.
    pub fn is_device_range(&self, addr: u64, bytes: u64) -> bool {
        self.mem.contains(addr, bytes)
    }

    /// Loads a parsed module: lowers every kernel, failing on the first unsupported instruction
    /// or directive with an error naming the form and the kernel.
    pub fn load_module(&mut self, module: ir::Module) -> EmuResult<ModuleId> {
        // Module-scope global/const variables live in device memory (zero-initialised, as
        // static storage is).
        let mut var_addr = vec![0u64; module.vars.len()];
        let mut var_allocs = Vec::new();
        let mut fail = None;
        for (i, v) in module.vars.iter().enumerate() {
            match v.space {
                ir::Space::Global | ir::Space::Const => {
                    let a = match self.alloc(v.size.max(1)) {
                        Ok(a) => a,
                        Err(e) => {
                            fail = Some(e);
                            break;
                        }
                    };
                    var_allocs.push(a);
                    var_addr[i] = a;
                    let mut bytes = vec![0u8; v.size as usize];
                    if let Some(init) = &v.init {
                        let n = init.len().min(bytes.len());
                        bytes[..n].copy_from_slice(&init[..n]);
                    }
                    self.write(a, &bytes)?;
                }
                ir::Space::Shared => {}
                other => {
                    fail = Some(EmuError::new(
                        CudaCode::NotSupported,
                        format!(
                            "module variable {} in {:?} space is not supported",
                            v.name, other
                        ),
                    ));
                    break;
                }
            }
        }
        let layout = lower::ModuleLayout { var_addr };
        let mut progs = Vec::new();
        if fail.is_none() {
            for (ki, k) in module.kernels.iter().enumerate() {
                match lower::lower_kernel(&module, k, ki, &layout) {
                    Ok(p) => progs.push(p),
                    Err(e) => {
                        fail = Some(e);
                        break;
                    }
                }
            }
        }
        if let Some(e) = fail {
            for a in var_allocs {
                self.mem.free(a);
            }
            return Err(e);
        }
        let mid = self.modules.len() as u32;
        let mut functions = Vec::new();
        for p in progs {
            let fid = self.functions.len() as u32;
            functions.push((p.name.clone(), fid));
            self.functions.push(Some((mid, std::sync::Arc::new(p))));
        }
        self.modules.push(Some(LoadedModule {
            functions,
            var_allocs,
        }));
        Ok(ModuleId(mid))
    }

    pub fn unload_module(&mut self, module: ModuleId) -> EmuResult<()> {
        let m = self
            .modules
            .get_mut(module.0 as usize)
            .and_then(|m| m.take())
            .ok_or_else(|| EmuError::new(CudaCode::InvalidHandle, "no such module"))?;
        for (_, f) in m.functions {
            self.functions[f as usize] = None;
        }
        for a in m.var_allocs {
            self.mem.free(a);
        }
        Ok(())
    }

    pub fn get_function(&self, module: ModuleId, name: &str) -> EmuResult<FunctionId> {
        let m = self
            .modules
            .get(module.0 as usize)
            .and_then(|m| m.as_ref())
            .ok_or_else(|| EmuError::new(CudaCode::InvalidHandle, "no such module"))?;
        m.functions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| FunctionId(*f))
            .ok_or_else(|| {
                EmuError::new(
                    CudaCode::NotFound,
                    format!("the module has no kernel named {}", name),
                )
            })
    }

    fn program(&self, f: FunctionId) -> EmuResult<std::sync::Arc<lower::Program>> {
        self.functions
            .get(f.0 as usize)
            .and_then(|x| x.as_ref())
            .map(|(_, p)| p.clone())
            .ok_or_else(|| EmuError::new(CudaCode::InvalidHandle, "no such function"))
    }

    pub fn function_info(&self, f: FunctionId) -> EmuResult<FunctionInfo> {
        let p = self.program(f)?;
        Ok(FunctionInfo {
            max_threads_per_block: p.max_threads.min(self.config.max_threads_per_block),
            static_shared_bytes: p.shared_bytes as u32,
            num_regs: (p.nregs as u32).clamp(16, 255),
            local_bytes: p.local_bytes as u32,
        })
    }

    /// Resident blocks per SM for a launch of `f` with `block_threads` threads and
    /// `dynamic_shared_bytes` (what the occupancy query reports; launches keep
    /// `sm_count` times this many blocks resident).
    pub fn occupancy(
        &self,
        f: FunctionId,
        block_threads: u32,
        dynamic_shared_bytes: u32,
    ) -> EmuResult<u32> {
        let p = self.program(f)?;
        let c = &self.config;
        if block_threads == 0 || block_threads > c.max_threads_per_block {
            return Ok(0);
        }
        let warps = block_threads.div_ceil(32);
        let mut n = (c.max_threads_per_sm / (warps * 32)).min(c.max_blocks_per_sm);
        let shared = p.dyn_shared_offset + u64::from(dynamic_shared_bytes);
        let shared = shared.max(p.shared_bytes);
        if let Some(q) = u64::from(c.shared_per_sm).checked_div(shared) {
            n = n.min(q as u32);
        }
        let regs = (p.nregs as u32).clamp(16, 255) * warps * 32;
        if regs > 0 {
            n = n.min(c.regs_per_sm / regs.min(c.regs_per_sm).max(1));
        }
        Ok(n)
    }

    /// The kernel's parameters as (size, align) in declaration order: the driver packs
    /// `kernelParams[i]` (`size` bytes each) into the parameter buffer with these.
    pub fn function_params(&self, f: FunctionId) -> EmuResult<Vec<(u64, u32)>> {
        let p = self.program(f)?;
        Ok(p.params.iter().map(|&(_, s, a)| (s, a)).collect())
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
        let p = self.program(f)?;
        let threads = u64::from(block[0]) * u64::from(block[1]) * u64::from(block[2]);
        if grid.contains(&0) || block.contains(&0) {
            return Err(EmuError::new(
                CudaCode::InvalidValue,
                format!(
                    "kernel {}: empty grid or block {:?} {:?}",
                    p.name, grid, block
                ),
            ));
        }
        if threads > u64::from(p.max_threads.min(self.config.max_threads_per_block)) {
            return Err(EmuError::new(
                CudaCode::InvalidValue,
                format!(
                    "kernel {}: {} threads per block, more than its limit {}",
                    p.name,
                    threads,
                    p.max_threads.min(self.config.max_threads_per_block)
                ),
            ));
        }
        if let Some(r) = self.config_reqntid(&p, block) {
            return Err(r);
        }
        let shared = (p.dyn_shared_offset + u64::from(dynamic_shared_bytes)).max(p.shared_bytes);
        if shared > u64::from(self.config.shared_per_block_optin) {
            return Err(EmuError::new(
                CudaCode::LaunchOutOfResources,
                format!(
                    "kernel {}: {} bytes of shared memory per block",
                    p.name, shared
                ),
            ));
        }
        if params.len() != p.params.len() {
            return Err(EmuError::new(
                CudaCode::InvalidValue,
                format!(
                    "kernel {}: {} parameters given, the kernel has {}",
                    p.name,
                    params.len(),
                    p.params.len()
                ),
            ));
        }
        let mut buf = vec![0u8; p.param_bytes as usize];
        for (i, (&(off, size, _), given)) in p.params.iter().zip(params).enumerate() {
            if given.len() as u64 != size {
                return Err(EmuError::new(
                    CudaCode::InvalidValue,
                    format!(
                        "kernel {}: parameter {} has {} bytes, expected {}",
                        p.name,
                        i,
                        given.len(),
                        size
                    ),
                ));
            }
            buf[off as usize..(off + size) as usize].copy_from_slice(given);
        }
        let per_sm = self
            .occupancy(f, threads as u32, dynamic_shared_bytes)?
            .max(1);
        let resident = per_sm.saturating_mul(self.config.sm_count.max(1));
        let profile_path =
            std::env::var_os("LORA_KERNELS_EMULATOR_PROFILE").filter(|v| !v.is_empty());
        let mut l = run::Launch::new(
            &p,
            &mut self.mem,
            self.checkers,
            buf,
            grid,
            block,
            dynamic_shared_bytes,
            &self.config,
            self.schedule_seed,
            self.hang_limit_steps,
            resident,
        );
        if self.profile || profile_path.is_some() {
            l.profile = Some(Box::default());
        }
        let t0 = std::time::Instant::now();
        let (r, counters) = l.run();
        self.last_profile = None;
        if let (Ok(_), Some(c)) = (&r, counters) {
            if let Some(path) = &profile_path {
                let line = c.to_json(&p.name, grid, block, dynamic_shared_bytes);
                let res = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| {
                        use std::io::Write;
                        writeln!(f, "{}", line)
                    });
                if let Err(e) = res {
                    eprintln!(
                        "emulator profile: cannot append to {}: {}",
                        std::path::Path::new(path).display(),
                        e
                    );
                }
            }
            self.last_profile = Some(c);
        }
        if let Ok(st) = &r {
            if std::env::var_os("LORA_KERNELS_EMULATOR_STATS").is_some_and(|v| v != "0") {
                let dt = t0.elapsed().as_secs_f64().max(1e-9);
                eprintln!(
                    "emulator stats: {} grid {:?} block {:?}: {} warp instructions ({:.2} M/s), \
                     {} matrix instructions ({:.0}/s), {:.3} s",
                    p.name,
                    grid,
                    block,
                    st.warp_instructions,
                    st.warp_instructions as f64 / dt / 1e6,
                    st.mma_instructions,
                    st.mma_instructions as f64 / dt,
                    dt
                );
            }
        }
        r
    }

    fn config_reqntid(&self, p: &lower::Program, block: [u32; 3]) -> Option<EmuError> {
        let _ = (p, block);
        None
    }
}

#[cfg(test)]
mod tests;
