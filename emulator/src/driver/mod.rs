//! The C ABI of the CUDA driver functions: what cudarc 0.19 (bindings `cuda-13000`) calls.
//!
//! This crate's cdylib has the SONAME `libcuda.so.1`: once a process has loaded it by absolute
//! path (before its first CUDA call), cudarc's `dlopen("libcuda.so.1")` binds to it.
//!
//! # Model
//! - One emulated device (ordinal 0), compute capability 8.0, described by
//!   [`DeviceConfig::default`]; `cuDeviceGetAttribute` answers every CUDA 13.0 attribute (the
//!   ones the emulator has no notion of with realistic sm_80 values, or 0 where the feature is
//!   not provided: managed memory, host mapping, cooperative launch, clusters, ...).
//! - Host memory stands in for device memory ([`Machine`]). Device addresses are the machine's,
//!   never host pointers: every copy, memset and free is checked against the live allocations
//!   (a range must lie inside one allocation) before any memory is touched, and a failing check
//!   returns `CUDA_ERROR_INVALID_VALUE` with a message.
//! - Stream work runs when it is enqueued (synchronously, in the calling thread), so streams are
//!   ordered trivially; events are ordered no-ops. A capturing stream records its work instead
//!   (see `graph.rs` for capture, graphs and the capture rules enforced). `cuEventElapsedTime(_v2)` returns
//!   `CUDA_ERROR_NOT_SUPPORTED`: the emulator has no device clock, and a made-up time would make
//!   a benchmark misreport.
//! - Both allocation paths work: `cuMemAlloc_v2`/`cuMemFree_v2` and, as attribute 115
//!   (memory pools) is reported as 1, `cuMemAllocAsync`/`cuMemFreeAsync` (which cudarc prefers).
//! - The primary context is the only context. Retaining it counts; when the last retain is
//!   released the machine is reset (every allocation, module, stream and event is gone), as a
//!   real driver destroys the primary context.
//! - A failed call that has something to say prints `lora-kernels emulator: <function>: <message>`
//!   on stderr; the calling thread's last message is kept ([`last_error_message`] in this copy
//!   of the code, and the exported C function [`lora_kernels_emulator_last_error`] for a process
//!   that loaded the cdylib). A kernel whose launch a checker stops returns the report's CUDA code
//!   (e.g. 700 `CUDA_ERROR_ILLEGAL_ADDRESS`) from `cuLaunchKernel`.
//! - Launch failures with one of the codes CUDA documents as leaving the context unusable
//!   ([`STICKY_CODES`]: 700, 702, 710, 714-719, ...) are sticky, as on a real GPU (a kernel
//!   stopped midway leaves its memory, e.g. a grid's counters, half-updated): every later call
//!   in the context (launch, copy, memset, synchronize, module load, alloc, event record, stream
//!   and event creation, queries) returns the same code, until the primary context is reset
//!   (`cuDevicePrimaryCtxReset_v2`, or the last `cuDevicePrimaryCtxRelease_v2`). The first
//!   refused call prints `context is unusable after <code>: <first message>`; every refused
//!   call keeps that as the thread's last error. Deliberate deviation: teardown calls
//!   (`cuMemFree_v2`, `cuMemFreeAsync`, `cuStreamDestroy_v2`, `cuEventDestroy_v2`,
//!   `cuModuleUnload`, and `cuDevicePrimaryCtxRelease_v2`) still succeed, quietly, because
//!   they run in destructors where an error cannot be handled.
//! - Occupancy (`cuOccupancyMaxActiveBlocksPerMultiprocessor(WithFlags)`) is
//!   [`Machine::occupancy`]: the engine keeps that many blocks per SM (times the SM count) of a
//!   launch resident at once, so the answer and the residency agree by construction. A launch
//!   whose block does not fit on an SM at all fails with `CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES`.
//! - Every other driver function cudarc 0.19.10 may look up is exported as a stub ([`stubs`])
//!   that names itself on stderr once and returns `CUDA_ERROR_NOT_SUPPORTED` (801).
//! - No entry point unwinds into C: a panic inside becomes `CUDA_ERROR_UNKNOWN` with a message.
//!
//! # Environment
//! Read at `cuInit` (when the machine is created) and again at every reset:
//! - `LORA_KERNELS_EMULATOR_SEED=<u64>` (decimal or `0x` hex): a seeded, randomised scheduling
//!   order ([`Machine::schedule_seed`]); unset: the fixed round-robin order.
//! - `LORA_KERNELS_EMULATOR_CHECKERS=all|none|<list>`: which checkers run, a comma-separated list
//!   of `memcheck`, `initcheck`, `racecheck`, `synccheck` (default `all`).
//!
//! An unparsable value fails `cuInit` with `CUDA_ERROR_INVALID_VALUE` and a message: a typo
//! never silently turns a checker off.
//!
//! # Safety
//! Every function here has the contract of the CUDA driver function of the same name: pointer
//! arguments are either null (rejected with an error) or valid for the access the CUDA
//! documentation describes. Handles are validated (an unknown handle is an error, never a crash).
#![allow(non_snake_case, clippy::missing_safety_doc)]

mod errors;
mod graph;
pub mod stubs;

use graph::{Capture, Node, Recorded};

use crate::exec::{CheckerConfig, DeviceConfig, FunctionId, FunctionInfo, Machine, ModuleId};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{c_char, c_int, c_uchar, c_uint, c_ushort, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A CUDA driver result code (`CUresult`).
pub type CUresult = u32;
/// A device ordinal (`CUdevice`).
pub type CUdevice = c_int;
/// A device address (`CUdeviceptr`).
pub type CUdeviceptr = u64;
/// An opaque handle (`CUcontext`, `CUstream`, `CUevent`, `CUmodule`, `CUfunction`).
pub type Handle = *mut c_void;

/// `CUDA_SUCCESS`.
pub const CUDA_SUCCESS: CUresult = 0;
/// `CUDA_ERROR_INVALID_VALUE`.
pub const CUDA_ERROR_INVALID_VALUE: CUresult = 1;
/// `CUDA_ERROR_OUT_OF_MEMORY`.
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
/// `CUDA_ERROR_NOT_INITIALIZED`.
pub const CUDA_ERROR_NOT_INITIALIZED: CUresult = 3;
/// `CUDA_ERROR_INVALID_DEVICE`.
pub const CUDA_ERROR_INVALID_DEVICE: CUresult = 101;
/// `CUDA_ERROR_INVALID_IMAGE`.
pub const CUDA_ERROR_INVALID_IMAGE: CUresult = 200;
/// `CUDA_ERROR_INVALID_CONTEXT`.
pub const CUDA_ERROR_INVALID_CONTEXT: CUresult = 201;
/// `CUDA_ERROR_NO_BINARY_FOR_GPU`.
pub const CUDA_ERROR_NO_BINARY_FOR_GPU: CUresult = 209;
/// `CUDA_ERROR_UNSUPPORTED_LIMIT`.
pub const CUDA_ERROR_UNSUPPORTED_LIMIT: CUresult = 215;
/// `CUDA_ERROR_INVALID_PTX`.
pub const CUDA_ERROR_INVALID_PTX: CUresult = 218;
/// `CUDA_ERROR_INVALID_HANDLE`.
pub const CUDA_ERROR_INVALID_HANDLE: CUresult = 400;
/// `CUDA_ERROR_NOT_FOUND`.
pub const CUDA_ERROR_NOT_FOUND: CUresult = 500;
/// `CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES`.
pub const CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: CUresult = 701;
/// `CUDA_ERROR_NOT_SUPPORTED`.
pub const CUDA_ERROR_NOT_SUPPORTED: CUresult = 801;
/// `CUDA_ERROR_UNKNOWN`.
pub const CUDA_ERROR_UNKNOWN: CUresult = 999;

/// The driver version reported (CUDA 13.0).
pub const DRIVER_VERSION: c_int = 13000;

/// Reserved shared memory per block on sm_80 (`CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK`).
pub const RESERVED_SHARED_PER_BLOCK: u32 = 1024;

const CTX_HANDLE: u64 = 0x7e00_0000_0001;
const TAG_SHIFT: u32 = 40;
const TAG_STREAM: u64 = 0x7e01;
const TAG_EVENT: u64 = 0x7e02;
const TAG_MODULE: u64 = 0x7e03;
const TAG_FUNCTION: u64 = 0x7e04;
const TAG_GRAPH: u64 = 0x7e05;
const TAG_GRAPH_EXEC: u64 = 0x7e06;
/// `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD`: always-valid stream handles, like null.
const STREAM_LEGACY: u64 = 0x1;
const STREAM_PER_THREAD: u64 = 0x2;

/// Which checkers `LORA_KERNELS_EMULATOR_CHECKERS` names: `all`, `none`, or a comma-separated
/// list of `memcheck`, `initcheck`, `racecheck`, `synccheck`.
pub fn parse_checkers(text: &str) -> Result<CheckerConfig, String> {
    let text = text.trim();
    let mut c = CheckerConfig {
        memcheck: false,
        initcheck: false,
        racecheck: false,
        synccheck: false,
    };
    match text {
        "all" | "" => return Ok(CheckerConfig::default()),
        "none" => return Ok(c),
        _ => {}
    }
    for name in text.split(',').map(str::trim) {
        match name {
            "memcheck" => c.memcheck = true,
            "initcheck" => c.initcheck = true,
            "racecheck" => c.racecheck = true,
            "synccheck" => c.synccheck = true,
            other => {
                return Err(format!(
                "LORA_KERNELS_EMULATOR_CHECKERS: unknown checker `{other}` (expected all, none, \
                     or a comma-separated list of memcheck, initcheck, racecheck, synccheck)"
            ))
            }
        }
    }
    Ok(c)
}

/// A `LORA_KERNELS_EMULATOR_SEED` value: a u64 in decimal or `0x` hex.
pub fn parse_seed(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse::<u64>(),
    };
    parsed.map_err(|_| format!("LORA_KERNELS_EMULATOR_SEED: `{text}` is not a u64"))
}

/// The machine's settings from the environment.
fn settings_from_env() -> Result<(CheckerConfig, Option<u64>), String> {
    let checkers = match std::env::var("LORA_KERNELS_EMULATOR_CHECKERS") {
        Ok(v) => parse_checkers(&v)?,
        Err(std::env::VarError::NotPresent) => CheckerConfig::default(),
        Err(_) => return Err("LORA_KERNELS_EMULATOR_CHECKERS is not valid UTF-8".into()),
    };
    let seed = match std::env::var("LORA_KERNELS_EMULATOR_SEED") {
        Ok(v) => Some(parse_seed(&v)?),
        Err(std::env::VarError::NotPresent) => None,
        Err(_) => return Err("LORA_KERNELS_EMULATOR_SEED is not valid UTF-8".into()),
    };
    Ok((checkers, seed))
}

fn new_machine() -> Result<Machine, String> {
    let (checkers, seed) = settings_from_env()?;
    let mut m = Machine::new(DeviceConfig::default());
    m.checkers = checkers;
    m.schedule_seed = seed;
    Ok(m)
}

/// A failure: the code returned and, when there is something to say, a message.
struct Fail {
    code: CUresult,
    message: Option<String>,
    /// Keep the message as the thread's last error without printing it (a refusal by an
    /// unusable context after the first, see [`Sticky`]).
    quiet: bool,
}

impl Fail {
    fn code(code: CUresult) -> Fail {
        Fail {
            code,
            message: None,
            quiet: false,
        }
    }
    fn msg(code: CUresult, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: Some(message.into()),
            quiet: false,
        }
    }
}

impl From<crate::exec::EmuError> for Fail {
    fn from(e: crate::exec::EmuError) -> Fail {
        Fail::msg(e.code as u32, e.to_string())
    }
}

type Res<T> = Result<T, Fail>;

thread_local! {
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
    /// The calling thread's context stack (top = current).
    static CTX_STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// The calling thread's last error message from this copy of the emulator (`None` when no call
/// of this thread has failed with a message yet). A process that loaded the cdylib reads the
/// cdylib's copy through [`lora_kernels_emulator_last_error`].
pub fn last_error_message() -> Option<String> {
    LAST_ERROR.with(|e| e.borrow().clone())
}

fn report(function: &str, message: &str, print: bool) {
    let line = format!("{function}: {message}");
    if print {
        eprintln!("lora-kernels emulator: {line}");
    }
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(line));
}

/// Runs an entry point: maps its failure to a code (printing and keeping the message) and a
/// panic to `CUDA_ERROR_UNKNOWN`, so nothing unwinds into the caller.
fn entry(function: &'static str, f: impl FnOnce() -> Res<()>) -> CUresult {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CUDA_SUCCESS,
        Ok(Err(fail)) => {
            if let Some(m) = fail.message {
                report(function, &m, !fail.quiet);
            }
            fail.code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            report(function, &format!("internal error (panic): {what}"), true);
            CUDA_ERROR_UNKNOWN
        }
    }
}

/// A kernel handed out by `cuModuleGetFunction`.
struct Func {
    id: FunctionId,
    name: String,
    info: FunctionInfo,
    params: Vec<(u64, u32)>,
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
    max_dynamic_shared: u32,
    /// `CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT`.
    carveout: i32,
}

/// A loaded module.
struct Module {
    id: ModuleId,
    /// Function handles by kernel name (one handle per name, as the driver does).
    functions: HashMap<String, u64>,
}

/// An event's state.
struct Event {
    flags: u32,
    /// Where its last record happened (in a capture, or on a running stream).
    recorded: Recorded,
}

/// The codes after which a context is unusable: CUDA 13.0's `cuda.h` says of each "This leaves
/// the process in an inconsistent state and any further CUDA work will return the same error"
/// (of 710 `CUDA_ERROR_ASSERT`: "The context cannot be used anymore, and must be destroyed").
/// `CUDA_ERROR_CONTAINED`, `ILLEGAL_ADDRESS`, `LAUNCH_TIMEOUT`, `ASSERT`,
/// `HARDWARE_STACK_ERROR`, `ILLEGAL_INSTRUCTION`, `MISALIGNED_ADDRESS`, `INVALID_ADDRESS_SPACE`,
/// `INVALID_PC`, `LAUNCH_FAILED`, `TENSOR_MEMORY_LEAK`, `EXTERNAL_DEVICE`.
pub const STICKY_CODES: &[CUresult] = &[226, 700, 702, 710, 714, 715, 716, 717, 718, 719, 721, 911];

/// The first sticky failure of the context ([`STICKY_CODES`]): until the primary context is
/// reset, every call in it is refused with this code (teardown calls excepted, see
/// [`with_ctx_teardown`]).
struct Sticky {
    code: CUresult,
    /// The failure's message, as its call reported it.
    message: String,
    /// Whether a refusal has been printed on stderr yet (only the first is).
    announced: bool,
}

impl Sticky {
    /// The failure a call in the unusable context returns: the first failure's code, and a
    /// message naming it (printed for the first refusal only, kept as the last error always).
    fn refusal(&mut self) -> Fail {
        let name = error_entry(self.code).map_or("an unknown code", |e| {
            e.1.to_str().unwrap_or("an unknown code")
        });
        let quiet = self.announced;
        self.announced = true;
        Fail {
            code: self.code,
            message: Some(format!(
                "context is unusable after {name} ({}): {}",
                self.code, self.message
            )),
            quiet,
        }
    }
}

/// Everything behind the API, guarded by [`STATE`].
struct Driver {
    machine: Machine,
    primary_refs: u32,
    next_id: u64,
    /// Live allocations: base -> size.
    allocations: BTreeMap<u64, u64>,
    allocated: u64,
    streams: HashSet<u64>,
    events: HashMap<u64, Event>,
    modules: HashMap<u64, Module>,
    functions: HashMap<u64, Func>,
    limits: HashMap<u32, usize>,
    cache_config: u32,
    ctx_flags: u32,
    /// Set by a launch that failed with a sticky code; cleared only by a reset.
    sticky: Option<Sticky>,
    /// Active stream captures, by origin stream (`graph.rs`).
    captures: HashMap<u64, Capture>,
    /// Graphs (`CUgraph`) and their executable copies (`CUgraphExec`).
    graphs: HashMap<u64, Vec<Node>>,
    execs: HashMap<u64, Vec<Node>>,
}

impl Driver {
    fn new(machine: Machine) -> Driver {
        Driver {
            machine,
            primary_refs: 0,
            next_id: 1,
            allocations: BTreeMap::new(),
            allocated: 0,
            streams: HashSet::new(),
            events: HashMap::new(),
            modules: HashMap::new(),
            functions: HashMap::new(),
            limits: HashMap::new(),
            cache_config: 0,
            ctx_flags: 0,
            sticky: None,
            captures: HashMap::new(),
            graphs: HashMap::new(),
            execs: HashMap::new(),
        }
    }

    /// Marks the context unusable when `fail` has a sticky code (the first such failure wins).
    fn poison(&mut self, fail: &Fail) {
        if STICKY_CODES.contains(&fail.code) && self.sticky.is_none() {
            self.sticky = Some(Sticky {
                code: fail.code,
                message: fail.message.clone().unwrap_or_default(),
                announced: false,
            });
        }
    }

    /// Drops every resource of the context: a fresh machine, no allocations, modules, streams
    /// or events (handle ids keep counting, so stale handles stay invalid).
    fn reset(&mut self) -> Res<()> {
        let machine = new_machine().map_err(|m| Fail::msg(CUDA_ERROR_INVALID_VALUE, m))?;
        let next_id = self.next_id;
        let refs = self.primary_refs;
        *self = Driver::new(machine);
        self.next_id = next_id;
        self.primary_refs = refs;
        Ok(())
    }

    fn handle(&mut self, tag: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        (tag << TAG_SHIFT) | id
    }

    fn check_stream(&self, stream: Handle) -> Res<()> {
        let s = stream as u64;
        if s == 0 || s == STREAM_LEGACY || s == STREAM_PER_THREAD || self.streams.contains(&s) {
            Ok(())
        } else {
            Err(Fail::msg(
                CUDA_ERROR_INVALID_HANDLE,
                format!("{s:#x} is not a live stream"),
            ))
        }
    }

    fn func(&self, f: Handle) -> Res<&Func> {
        self.functions.get(&(f as u64)).ok_or_else(|| {
            Fail::msg(
                CUDA_ERROR_INVALID_HANDLE,
                format!("{:#x} is not a live function", f as u64),
            )
        })
    }

    /// The live allocation holding `[addr, addr+bytes)` (bytes >= 1), as (base, size).
    fn allocation_of(&self, addr: u64, bytes: u64) -> Option<(u64, u64)> {
        let (&base, &size) = self.allocations.range(..=addr).next_back()?;
        let end = addr.checked_add(bytes)?;
        (end <= base + size).then_some((base, size))
    }

    fn check_device_range(&self, what: &str, addr: u64, bytes: u64) -> Res<()> {
        if self.allocation_of(addr, bytes).is_some() {
            return Ok(());
        }
        let near = match self.allocations.range(..=addr).next_back() {
            Some((&b, &s)) if addr < b + s.max(1) => {
                format!(" (the allocation at {b:#x} holds {s} bytes)")
            }
            _ => " (no live allocation holds that address)".into(),
        };
        Err(Fail::msg(
            CUDA_ERROR_INVALID_VALUE,
            format!("{what} [{addr:#x}, +{bytes}) is not inside one live device allocation{near}"),
        ))
    }

    /// A host pointer for `bytes` bytes: non-null and not a device address.
    fn check_host(&self, what: &str, ptr: u64, bytes: u64) -> Res<()> {
        if ptr == 0 {
            return Err(Fail::msg(
                CUDA_ERROR_INVALID_VALUE,
                format!("{what} is a null host pointer"),
            ));
        }
        let overlaps = self
            .allocations
            .range(..ptr.saturating_add(bytes))
            .next_back()
            .is_some_and(|(&b, &s)| ptr < b + s.max(1));
        if overlaps {
            return Err(Fail::msg(
                CUDA_ERROR_INVALID_VALUE,
                format!("{what} {ptr:#x} is a device address, not a host pointer"),
            ));
        }
        Ok(())
    }

    fn alloc(&mut self, bytes: u64) -> Res<u64> {
        let total = self.machine.config.total_memory;
        if self.allocated.saturating_add(bytes) > total {
            return Err(Fail::msg(
                CUDA_ERROR_OUT_OF_MEMORY,
                format!(
                    "{bytes} bytes requested, {} of {total} bytes of the emulated device are free",
                    total - self.allocated
                ),
            ));
        }
        let addr = self.machine.alloc(bytes)?;
        self.allocations.insert(addr, bytes);
        self.allocated += bytes;
        Ok(addr)
    }

    fn free(&mut self, addr: u64) -> Res<()> {
        let Some(&size) = self.allocations.get(&addr) else {
            return Err(Fail::msg(
                CUDA_ERROR_INVALID_VALUE,
                format!(
                    "{addr:#x} is not the base of a live allocation (freed twice, or never allocated)"
                ),
            ));
        };
        self.machine.free(addr)?;
        self.allocations.remove(&addr);
        self.allocated -= size;
        Ok(())
    }

    fn memset(&mut self, addr: u64, pattern: &[u8], count: usize) -> Res<()> {
        let unit = pattern.len() as u64;
        if count == 0 {
            return Ok(());
        }
        if addr % unit != 0 {
            return Err(Fail::msg(
                CUDA_ERROR_INVALID_VALUE,
                format!("destination {addr:#x} is not aligned to {unit} bytes"),
            ));
        }
        let bytes = (count as u64)
            .checked_mul(unit)
            .ok_or_else(|| Fail::msg(CUDA_ERROR_INVALID_VALUE, "element count overflows"))?;
        self.check_device_range("destination", addr, bytes)?;
        if unit == 1 {
            self.machine.memset8(addr, pattern[0], bytes)?;
        } else {
            let data: Vec<u8> = pattern
                .iter()
                .copied()
                .cycle()
                .take(bytes as usize)
                .collect();
            self.machine.write(addr, &data)?;
        }
        Ok(())
    }

    unsafe fn htod(&mut self, dst: u64, src: *const c_void, bytes: usize) -> Res<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.check_device_range("destination", dst, bytes as u64)?;
        self.check_host("source", src as u64, bytes as u64)?;
        // SAFETY: the caller's contract: `src` holds `bytes` readable bytes.
        let data = unsafe { std::slice::from_raw_parts(src as *const u8, bytes) };
        self.machine.write(dst, data)?;
        Ok(())
    }

    unsafe fn dtoh(&mut self, dst: *mut c_void, src: u64, bytes: usize) -> Res<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.check_device_range("source", src, bytes as u64)?;
        self.check_host("destination", dst as u64, bytes as u64)?;
        // SAFETY: the caller's contract: `dst` holds `bytes` writable bytes.
        let out = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, bytes) };
        self.machine.read(src, out)?;
        Ok(())
    }

    fn dtod(&mut self, dst: u64, src: u64, bytes: usize) -> Res<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.check_device_range("source", src, bytes as u64)?;
        self.check_device_range("destination", dst, bytes as u64)?;
        self.machine.copy(dst, src, bytes as u64)?;
        Ok(())
    }
}

static STATE: Mutex<Option<Driver>> = Mutex::new(None);

/// Runs `f` on the initialised driver.
fn with_driver<T>(f: impl FnOnce(&mut Driver) -> Res<T>) -> Res<T> {
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    match guard.as_mut() {
        Some(d) => f(d),
        None => Err(Fail::msg(
            CUDA_ERROR_NOT_INITIALIZED,
            "cuInit has not been called",
        )),
    }
}

fn current_ctx() -> u64 {
    CTX_STACK.with(|s| s.borrow().last().copied().unwrap_or(0))
}

/// Runs `f` on the driver when the calling thread has the live primary context current and
/// the context is usable (no sticky failure: else the call is refused with its code).
fn with_ctx<T>(f: impl FnOnce(&mut Driver) -> Res<T>) -> Res<T> {
    with_current(|d| match d.sticky.as_mut() {
        Some(s) => Err(s.refusal()),
        None => f(d),
    })
}

/// [`with_ctx`] for a call on `stream`: refused unless the stream is live (or a default one).
fn with_stream<T>(stream: Handle, f: impl FnOnce(&mut Driver) -> Res<T>) -> Res<T> {
    with_ctx(|d| {
        d.check_stream(stream)?;
        f(d)
    })
}

/// Runs a teardown call (free, destroy, unload) as [`with_ctx`] does, except in an unusable
/// context: there it still releases what it names, when that is live, and returns success
/// either way, quietly. A deliberate deviation from CUDA (which returns the sticky code): cleanup
/// runs in destructors (cudarc's `Drop` impls), where an error cannot be handled and a panic
/// would abort the test process, hiding every other test's result.
fn with_ctx_teardown(f: impl FnOnce(&mut Driver) -> Res<()>) -> Res<()> {
    with_current(|d| {
        if d.sticky.is_some() {
            let _ = f(d);
            return Ok(());
        }
        f(d)
    })
}

/// Runs `f` on the driver when the calling thread has the live primary context current.
fn with_current<T>(f: impl FnOnce(&mut Driver) -> Res<T>) -> Res<T> {
    with_driver(|d| {
        if current_ctx() != CTX_HANDLE {
            return Err(Fail::msg(
                CUDA_ERROR_INVALID_CONTEXT,
                "no context is current on this thread (cuDevicePrimaryCtxRetain, then cuCtxSetCurrent)",
            ));
        }
        if d.primary_refs == 0 {
            return Err(Fail::msg(
                CUDA_ERROR_INVALID_CONTEXT,
                "the current context was released (its primary context is not retained)",
            ));
        }
        f(d)
    })
}

fn check_device(dev: CUdevice) -> Res<()> {
    if dev == 0 {
        Ok(())
    } else {
        Err(Fail::msg(
            CUDA_ERROR_INVALID_DEVICE,
            format!("device {dev} does not exist (the emulator has one device, 0)"),
        ))
    }
}

/// Writes `value` through an out-pointer, or fails on null.
unsafe fn put<T>(ptr: *mut T, value: T) -> Res<()> {
    if ptr.is_null() {
        return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
    }
    // SAFETY: non-null, and the caller's contract makes it valid for a write of T.
    unsafe { ptr.write_unaligned(value) };
    Ok(())
}

fn h(v: u64) -> Handle {
    v as usize as Handle
}

// ---------------------------------------------------------------- initialisation, version

/// `cuInit`: creates the machine (flags must be 0).
#[no_mangle]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    entry("cuInit", || {
        if flags != 0 {
            return Err(Fail::msg(CUDA_ERROR_INVALID_VALUE, "flags must be 0"));
        }
        let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let machine = new_machine().map_err(|m| Fail::msg(CUDA_ERROR_INVALID_VALUE, m))?;
            *guard = Some(Driver::new(machine));
        }
        Ok(())
    })
}

/// `cuDriverGetVersion`: 13000.
#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    entry("cuDriverGetVersion", || unsafe {
        put(version, DRIVER_VERSION)
    })
}

// ---------------------------------------------------------------- device

/// `cuDeviceGet`: ordinal 0 only.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresult {
    entry("cuDeviceGet", || {
        with_driver(|_| Ok(()))?;
        check_device(ordinal)?;
        unsafe { put(device, 0) }
    })
}

/// `cuDeviceGetCount`: 1.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    entry("cuDeviceGetCount", || {
        with_driver(|_| Ok(()))?;
        unsafe { put(count, 1) }
    })
}

/// `cuDeviceGetName`: the configured name, truncated to `len - 1` bytes and NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    entry("cuDeviceGetName", || {
        let text = with_driver(|d| Ok(d.machine.config.name.clone()))?;
        check_device(dev)?;
        if name.is_null() || len <= 0 {
            return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
        }
        let n = text.len().min(len as usize - 1);
        // SAFETY: `name` holds `len` bytes (the caller's contract); n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), name as *mut u8, n);
            *name.add(n) = 0;
        }
        Ok(())
    })
}

/// The value of device attribute `attrib` (CUDA 13.0 numbering), `None` for an unknown one.
pub fn device_attribute(c: &DeviceConfig, attrib: i32) -> Option<i32> {
    let i = |v: u64| v.min(i32::MAX as u64) as i32;
    Some(match attrib {
        1 => i(c.max_threads_per_block as u64),
        2 | 3 => 1024,
        4 => 64,
        5 => i32::MAX,
        6 | 7 => 65535,
        8 => i(c.shared_per_block as u64),
        9 => 65536,
        10 => i(c.warp_size as u64),
        11 => i32::MAX,
        12 => i(c.regs_per_block as u64),
        13 => i(c.clock_khz as u64),
        14 => 512,
        15 => 1,
        16 => i(c.sm_count as u64),
        17..=20 => 0,
        21 => 131072,
        22 => 131072,
        23 => 65536,
        24..=26 => 16384,
        27 | 28 => 32768,
        29 => 2048,
        30 => 512,
        // Kernels never run concurrently here.
        31 => 0,
        32..=35 => 0,
        36 => i(c.memory_clock_khz as u64),
        37 => i(c.memory_bus_width as u64),
        38 => i(c.l2_size as u64),
        39 => i(c.max_threads_per_sm as u64),
        // Copies are synchronous: no copy engines; no unified addressing with host memory.
        40 | 41 => 0,
        42 => 32768,
        43 => 2048,
        44 => 1,
        45 | 46 => 32768,
        47 | 48 => 8192,
        49 => 32768,
        50 => 0,
        51 => 32,
        52 | 53 => 32768,
        54 => 2046,
        55 => 32768,
        56 => 131072,
        57 => 65536,
        58..=60 => 16384,
        61 => 32768,
        62 => 2048,
        63 | 64 => 32768,
        65 => 2048,
        66 | 67 => 32768,
        68 => 2046,
        69 => 268435456,
        70 => 131072,
        71 => 65000,
        72 => 2097120,
        73 | 74 => 32768,
        75 => c.compute_capability.0,
        76 => c.compute_capability.1,
        77 => 32768,
        78..=80 => 1,
        81 => i(c.shared_per_sm as u64),
        82 => i(c.regs_per_sm as u64),
        // No managed memory, multi-GPU boards, host atomics, pageable access.
        83..=86 => 0,
        87 => 2,
        88 | 89 => 0,
        90 => 1,
        // No host registration, stream memory operations, cooperative launch.
        91..=96 => 0,
        97 => i(c.shared_per_block_optin as u64),
        98..=105 => 0,
        106 => i(c.max_blocks_per_sm as u64),
        107..=110 => 0,
        111 => RESERVED_SHARED_PER_BLOCK as i32,
        112..=114 => 0,
        // Memory pools: cuMemAllocAsync / cuMemFreeAsync are implemented.
        115 => 1,
        116..=125 => 0,
        126 => 1,
        127..=130 => 0,
        131 => -1,
        132 | 133 => 0,
        134 => -1,
        135..=147 => 0,
        _ => return None,
    })
}

/// `cuDeviceGetAttribute`: see [`device_attribute`].
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    pi: *mut c_int,
    attrib: c_int,
    dev: CUdevice,
) -> CUresult {
    entry("cuDeviceGetAttribute", || {
        let v = with_driver(|d| Ok(device_attribute(&d.machine.config, attrib)))?;
        check_device(dev)?;
        let v = v.ok_or_else(|| {
            Fail::msg(
                CUDA_ERROR_INVALID_VALUE,
                format!("unknown device attribute {attrib}"),
            )
        })?;
        unsafe { put(pi, v) }
    })
}

/// `cuDeviceTotalMem_v2`.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    entry("cuDeviceTotalMem_v2", || {
        let total = with_driver(|d| Ok(d.machine.config.total_memory))?;
        check_device(dev)?;
        unsafe { put(bytes, total as usize) }
    })
}

/// The device's UUID.
const UUID: [u8; 16] = *b"lora-kernels-emu";

/// `cuDeviceGetUuid`.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut [u8; 16], dev: CUdevice) -> CUresult {
    entry("cuDeviceGetUuid", || {
        with_driver(|_| Ok(()))?;
        check_device(dev)?;
        unsafe { put(uuid, UUID) }
    })
}

/// `cuDeviceGetUuid_v2`.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], dev: CUdevice) -> CUresult {
    entry("cuDeviceGetUuid_v2", || {
        with_driver(|_| Ok(()))?;
        check_device(dev)?;
        unsafe { put(uuid, UUID) }
    })
}

// ---------------------------------------------------------------- contexts

/// `cuDevicePrimaryCtxRetain`: counts a retain, returns the primary context.
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut Handle, dev: CUdevice) -> CUresult {
    entry("cuDevicePrimaryCtxRetain", || {
        check_device(dev)?;
        if pctx.is_null() {
            return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
        }
        with_driver(|d| {
            d.primary_refs += 1;
            Ok(())
        })?;
        unsafe { put(pctx, h(CTX_HANDLE)) }
    })
}

/// `cuDevicePrimaryCtxRelease_v2`: the last release resets the machine (and clears a sticky
/// failure). Works in an unusable context too.
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    entry("cuDevicePrimaryCtxRelease_v2", || {
        check_device(dev)?;
        with_driver(|d| {
            if d.primary_refs == 0 {
                return Err(Fail::msg(
                    CUDA_ERROR_INVALID_CONTEXT,
                    "the primary context is not retained",
                ));
            }
            d.primary_refs -= 1;
            if d.primary_refs == 0 {
                d.reset()?;
            }
            Ok(())
        })
    })
}

/// `cuDevicePrimaryCtxGetState`.
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxGetState(
    dev: CUdevice,
    flags: *mut c_uint,
    active: *mut c_int,
) -> CUresult {
    entry("cuDevicePrimaryCtxGetState", || {
        check_device(dev)?;
        let (f, refs) = with_driver(|d| Ok((d.ctx_flags, d.primary_refs)))?;
        unsafe {
            put(flags, f)?;
            put(active, (refs > 0) as c_int)
        }
    })
}

/// `cuDevicePrimaryCtxReset_v2`: frees everything the context holds, and makes a context that
/// a sticky launch failure left unusable usable again.
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult {
    entry("cuDevicePrimaryCtxReset_v2", || {
        check_device(dev)?;
        with_driver(|d| d.reset())
    })
}

/// `cuCtxGetCurrent`: the calling thread's current context (null when none).
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut Handle) -> CUresult {
    entry("cuCtxGetCurrent", || {
        with_driver(|_| Ok(()))?;
        unsafe { put(pctx, h(current_ctx())) }
    })
}

fn check_ctx_handle(ctx: Handle) -> Res<()> {
    if ctx as u64 == CTX_HANDLE {
        Ok(())
    } else {
        Err(Fail::msg(
            CUDA_ERROR_INVALID_CONTEXT,
            format!("{:#x} is not a context", ctx as u64),
        ))
    }
}

/// `cuCtxSetCurrent`: replaces the top of the thread's context stack (null pops it).
#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: Handle) -> CUresult {
    entry("cuCtxSetCurrent", || {
        with_driver(|_| Ok(()))?;
        if !ctx.is_null() {
            check_ctx_handle(ctx)?;
        }
        CTX_STACK.with(|s| {
            let mut s = s.borrow_mut();
            s.pop();
            if !ctx.is_null() {
                s.push(ctx as u64);
            }
        });
        Ok(())
    })
}

/// `cuCtxPushCurrent_v2`.
#[no_mangle]
pub unsafe extern "C" fn cuCtxPushCurrent_v2(ctx: Handle) -> CUresult {
    entry("cuCtxPushCurrent_v2", || {
        with_driver(|_| Ok(()))?;
        check_ctx_handle(ctx)?;
        CTX_STACK.with(|s| s.borrow_mut().push(ctx as u64));
        Ok(())
    })
}

/// `cuCtxPopCurrent_v2`.
#[no_mangle]
pub unsafe extern "C" fn cuCtxPopCurrent_v2(pctx: *mut Handle) -> CUresult {
    entry("cuCtxPopCurrent_v2", || {
        with_driver(|_| Ok(()))?;
        let top = CTX_STACK.with(|s| s.borrow_mut().pop());
        let top =
            top.ok_or_else(|| Fail::msg(CUDA_ERROR_INVALID_CONTEXT, "the context stack is empty"))?;
        if !pctx.is_null() {
            unsafe { put(pctx, h(top)) }?;
        }
        Ok(())
    })
}

/// `cuCtxGetDevice`: 0.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(device: *mut CUdevice) -> CUresult {
    entry("cuCtxGetDevice", || {
        with_ctx(|_| Ok(()))?;
        unsafe { put(device, 0) }
    })
}

/// `cuCtxSynchronize`: all work already ran. While any stream captures: 900, and every capture
/// is invalidated (the context encompasses the capturing streams).
#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    entry("cuCtxSynchronize", || {
        with_ctx(|d| {
            if d.captures.is_empty() {
                return Ok(());
            }
            d.captures.values_mut().for_each(|c| c.invalidated = true);
            Err(Fail::msg(
                graph::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                "synchronising the context while a stream captures; every capture is invalidated",
            ))
        })
    })
}

/// `cuCtxGetStreamPriorityRange`: least 0, greatest -5 (priorities are accepted and ignored).
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetStreamPriorityRange(
    least: *mut c_int,
    greatest: *mut c_int,
) -> CUresult {
    entry("cuCtxGetStreamPriorityRange", || {
        with_ctx(|_| Ok(()))?;
        if !least.is_null() {
            unsafe { put(least, 0) }?;
        }
        if !greatest.is_null() {
            unsafe { put(greatest, -5) }?;
        }
        Ok(())
    })
}

/// Default values of the context limits (`CUlimit`): stack size, printf FIFO, malloc heap,
/// device runtime sync depth, pending launches, max L2 fetch granularity, persisting L2.
fn default_limit(limit: u32) -> Option<usize> {
    Some(match limit {
        0 => 1024,
        1 => 1 << 20,
        2 => 8 << 20,
        3 => 2,
        4 => 2048,
        5 => 64,
        6 => 0,
        _ => return None,
    })
}

/// `cuCtxGetLimit`.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetLimit(value: *mut usize, limit: c_uint) -> CUresult {
    entry("cuCtxGetLimit", || {
        let v = with_ctx(|d| {
            Ok(d.limits
                .get(&limit)
                .copied()
                .or_else(|| default_limit(limit)))
        })?;
        let v = v.ok_or(Fail::code(CUDA_ERROR_UNSUPPORTED_LIMIT))?;
        unsafe { put(value, v) }
    })
}

/// `cuCtxSetLimit`: stored and reported back; the interpreter does not depend on them.
#[no_mangle]
pub unsafe extern "C" fn cuCtxSetLimit(limit: c_uint, value: usize) -> CUresult {
    entry("cuCtxSetLimit", || {
        with_ctx(|d| {
            default_limit(limit).ok_or(Fail::code(CUDA_ERROR_UNSUPPORTED_LIMIT))?;
            d.limits.insert(limit, value);
            Ok(())
        })
    })
}

/// `cuCtxGetCacheConfig`.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCacheConfig(config: *mut c_uint) -> CUresult {
    entry("cuCtxGetCacheConfig", || {
        let c = with_ctx(|d| Ok(d.cache_config))?;
        unsafe { put(config, c) }
    })
}

/// `cuCtxSetCacheConfig`: a preference, stored.
#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCacheConfig(config: c_uint) -> CUresult {
    entry("cuCtxSetCacheConfig", || {
        with_ctx(|d| {
            if config > 3 {
                return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
            }
            d.cache_config = config;
            Ok(())
        })
    })
}

/// `cuCtxGetFlags`.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetFlags(flags: *mut c_uint) -> CUresult {
    entry("cuCtxGetFlags", || {
        let f = with_ctx(|d| Ok(d.ctx_flags))?;
        unsafe { put(flags, f) }
    })
}

/// `cuCtxSetFlags`: scheduling flags, stored (every call is synchronous anyway).
#[no_mangle]
pub unsafe extern "C" fn cuCtxSetFlags(flags: c_uint) -> CUresult {
    entry("cuCtxSetFlags", || {
        with_ctx(|d| {
            d.ctx_flags = flags;
            Ok(())
        })
    })
}

// ---------------------------------------------------------------- streams

/// `cuStreamCreate`: flags 0 (default) or 1 (non-blocking).
#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(stream: *mut Handle, flags: c_uint) -> CUresult {
    entry("cuStreamCreate", || unsafe { stream_create(stream, flags) })
}

unsafe fn stream_create(stream: *mut Handle, flags: c_uint) -> Res<()> {
    if stream.is_null() || flags > 1 {
        return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
    }
    let s = with_ctx(|d| {
        let s = d.handle(TAG_STREAM);
        d.streams.insert(s);
        Ok(s)
    })?;
    unsafe { put(stream, h(s)) }
}

/// `cuStreamCreateWithPriority`: the priority is accepted and ignored.
#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    stream: *mut Handle,
    flags: c_uint,
    _priority: c_int,
) -> CUresult {
    entry("cuStreamCreateWithPriority", || unsafe {
        stream_create(stream, flags)
    })
}

/// `cuStreamDestroy_v2`. Succeeds quietly in an unusable context (see the
/// module documentation).
#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(stream: Handle) -> CUresult {
    entry("cuStreamDestroy_v2", || {
        with_ctx_teardown(|d| {
            if d.streams.remove(&(stream as u64)) {
                d.captures.remove(&(stream as u64));
                Ok(())
            } else {
                Err(Fail::msg(
                    CUDA_ERROR_INVALID_HANDLE,
                    format!("{:#x} is not a stream this driver created", stream as u64),
                ))
            }
        })
    })
}

/// `cuStreamSynchronize`: the stream's work already ran; 900 on a capturing stream (which is
/// invalidated).
#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(stream: Handle) -> CUresult {
    entry("cuStreamSynchronize", || {
        with_stream(stream, |d| d.refuse_if_capturing(stream))
    })
}

/// `cuStreamQuery`: always complete; 900 on a capturing stream (which is invalidated).
#[no_mangle]
pub unsafe extern "C" fn cuStreamQuery(stream: Handle) -> CUresult {
    entry("cuStreamQuery", || {
        with_stream(stream, |d| d.refuse_if_capturing(stream))
    })
}

/// `CU_EVENT_WAIT_EXTERNAL` (also `CU_EVENT_RECORD_EXTERNAL`'s value).
const EVENT_EXTERNAL: u32 = 1;

/// `cuStreamWaitEvent`: ordering is implicit (work runs when enqueued). During capture, the
/// rules of `graph.rs`: an event of the same capture is a dependency, one never recorded is none,
/// one recorded outside capture is 905 (unless `CU_EVENT_WAIT_EXTERNAL`), one of another active
/// capture 902; a non-capturing stream waiting on an event of an active capture (a fork) is not
/// modelled (801).
#[no_mangle]
pub unsafe extern "C" fn cuStreamWaitEvent(
    stream: Handle,
    event: Handle,
    flags: c_uint,
) -> CUresult {
    entry("cuStreamWaitEvent", || {
        if flags & !EVENT_EXTERNAL != 0 {
            return Err(Fail::msg(
                CUDA_ERROR_INVALID_VALUE,
                format!("wait flags {flags:#x}"),
            ));
        }
        with_stream(stream, |d| {
            let recorded = event_of(d, event)?.recorded;
            let s = stream as u64;
            let mine = d.captures.get(&s).map(|c| (c.id, c.invalidated));
            let active = |d: &mut Driver, id| d.capture_by_id(id).is_some();
            match (mine, recorded) {
                (Some((_, true)), _) => Err(Fail::msg(
                    graph::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                    "the stream's capture was invalidated by an earlier error",
                )),
                (Some(_), _) if flags & EVENT_EXTERNAL != 0 => Ok(()),
                (Some(_), Recorded::Never) => Ok(()),
                (Some((id, _)), Recorded::Capture(e)) if e == id => Ok(()),
                (Some(_), Recorded::Capture(e)) if active(d, e) => {
                    d.invalidate(s);
                    if let Some(c) = d.capture_by_id(e) {
                        c.invalidated = true;
                    }
                    Err(Fail::msg(
                        graph::CUDA_ERROR_STREAM_CAPTURE_MERGE,
                        "waiting on an event of another capture would merge two captures; both \
                         are invalidated",
                    ))
                }
                (Some(_), Recorded::Stream) => {
                    d.invalidate(s);
                    Err(Fail::msg(
                        graph::CUDA_ERROR_STREAM_CAPTURE_ISOLATION,
                        "waiting, during capture, on an event recorded outside capture (a \
                         dependency on uncaptured work; use CU_EVENT_WAIT_EXTERNAL); the capture \
                         is invalidated",
                    ))
                }
                (None, _) if flags & EVENT_EXTERNAL != 0 => Err(Fail::msg(
                    CUDA_ERROR_INVALID_VALUE,
                    "CU_EVENT_WAIT_EXTERNAL outside stream capture",
                )),
                (None, Recorded::Capture(e)) if active(d, e) => {
                    if let Some(c) = d.capture_by_id(e) {
                        c.invalidated = true;
                    }
                    Err(Fail::msg(
                        CUDA_ERROR_NOT_SUPPORTED,
                        "a stream joining an active capture (a fork by cuStreamWaitEvent) is not \
                         modelled by the emulator; that capture is invalidated",
                    ))
                }
                (_, Recorded::Capture(_)) => Err(Fail::msg(
                    CUDA_ERROR_INVALID_VALUE,
                    "waiting on an event last recorded in a capture that has ended (it stands \
                     for no work that runs; record it again outside capture)",
                )),
                (None, _) => Ok(()),
            }
        })
    })
}

/// `cuStreamGetCtx`.
#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCtx(stream: Handle, pctx: *mut Handle) -> CUresult {
    entry("cuStreamGetCtx", || {
        with_ctx(|d| d.check_stream(stream))?;
        unsafe { put(pctx, h(CTX_HANDLE)) }
    })
}

/// `cuStreamIsCapturing`: `CU_STREAM_CAPTURE_STATUS_NONE` (0), `ACTIVE` (1) or
/// `INVALIDATED` (2).
#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing(stream: Handle, status: *mut c_uint) -> CUresult {
    entry("cuStreamIsCapturing", || {
        let v = with_ctx(|d| {
            d.check_stream(stream)?;
            Ok(match d.captures.get(&(stream as u64)) {
                None => 0,
                Some(c) if c.invalidated => 2,
                Some(_) => 1,
            })
        })?;
        unsafe { put(status, v) }
    })
}

// ---------------------------------------------------------------- events

fn event_of(d: &mut Driver, event: Handle) -> Res<&mut Event> {
    d.events.get_mut(&(event as u64)).ok_or_else(|| {
        Fail::msg(
            CUDA_ERROR_INVALID_HANDLE,
            format!("{:#x} is not a live event", event as u64),
        )
    })
}

/// `CU_EVENT_DISABLE_TIMING`.
const EVENT_DISABLE_TIMING: u32 = 2;

/// `cuEventCreate`: flags from `CU_EVENT_DEFAULT | BLOCKING_SYNC | DISABLE_TIMING | INTERPROCESS`.
#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(event: *mut Handle, flags: c_uint) -> CUresult {
    entry("cuEventCreate", || {
        if event.is_null() || flags & !0x7 != 0 {
            return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
        }
        let e = with_ctx(|d| {
            let e = d.handle(TAG_EVENT);
            d.events.insert(
                e,
                Event {
                    flags,
                    recorded: Recorded::Never,
                },
            );
            Ok(e)
        })?;
        unsafe { put(event, h(e)) }
    })
}

unsafe fn event_record(event: Handle, stream: Handle, flags: c_uint) -> Res<()> {
    if flags & !EVENT_EXTERNAL != 0 {
        return Err(Fail::msg(
            CUDA_ERROR_INVALID_VALUE,
            format!("record flags {flags:#x}"),
        ));
    }
    with_stream(stream, |d| {
        event_of(d, event)?;
        let capture = d
            .captures
            .get(&(stream as u64))
            .map(|c| (c.id, c.invalidated));
        match capture {
            Some((_, true)) => Err(Fail::msg(
                graph::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                "the stream's capture was invalidated by an earlier error",
            )),
            Some(_) if flags & EVENT_EXTERNAL != 0 => {
                d.enqueue(stream, Node::EventRecord(event as u64))
            }
            Some((id, _)) => {
                event_of(d, event)?.recorded = Recorded::Capture(id);
                Ok(())
            }
            None if flags & EVENT_EXTERNAL != 0 => Err(Fail::msg(
                CUDA_ERROR_INVALID_VALUE,
                "CU_EVENT_RECORD_EXTERNAL outside stream capture",
            )),
            None => {
                event_of(d, event)?.recorded = Recorded::Stream;
                Ok(())
            }
        }
    })
}

/// `cuEventRecord`: marks the event recorded (its work is already done); on a capturing stream
/// it becomes an event of that capture.
#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(event: Handle, stream: Handle) -> CUresult {
    entry("cuEventRecord", || unsafe {
        event_record(event, stream, 0)
    })
}

/// `cuEventRecordWithFlags`: 0, or `CU_EVENT_RECORD_EXTERNAL` (during capture only: an event
/// record node that records the event when the graph runs).
#[no_mangle]
pub unsafe extern "C" fn cuEventRecordWithFlags(
    event: Handle,
    stream: Handle,
    flags: c_uint,
) -> CUresult {
    entry("cuEventRecordWithFlags", || unsafe {
        event_record(event, stream, flags)
    })
}

/// `cuEventDestroy_v2`. Succeeds quietly in an unusable context (see the
/// module documentation).
#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(event: Handle) -> CUresult {
    entry("cuEventDestroy_v2", || {
        with_ctx_teardown(|d| {
            event_of(d, event)?;
            d.events.remove(&(event as u64));
            Ok(())
        })
    })
}

/// `cuEventSynchronize`: complete; an event recorded in a capture is refused (see `graph.rs`).
#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(event: Handle) -> CUresult {
    entry("cuEventSynchronize", || {
        with_ctx(|d| d.refuse_captured_event(event))
    })
}

/// `cuEventQuery`: complete; an event recorded in a capture is refused (see `graph.rs`).
#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(event: Handle) -> CUresult {
    entry("cuEventQuery", || {
        with_ctx(|d| d.refuse_captured_event(event))
    })
}

unsafe fn elapsed(ms: *mut f32, start: Handle, end: Handle) -> Res<()> {
    if ms.is_null() {
        return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
    }
    with_ctx(|d| {
        for e in [start, end] {
            let ev = event_of(d, e)?;
            if ev.flags & EVENT_DISABLE_TIMING != 0 {
                return Err(Fail::msg(
                    CUDA_ERROR_INVALID_HANDLE,
                    "an event created with CU_EVENT_DISABLE_TIMING has no time",
                ));
            }
            if ev.recorded == Recorded::Never {
                return Err(Fail::msg(
                    CUDA_ERROR_INVALID_HANDLE,
                    "an event that was never recorded has no time",
                ));
            }
        }
        Ok(())
    })?;
    Err(Fail::msg(
        CUDA_ERROR_NOT_SUPPORTED,
        "the emulator has no device clock: kernel times are not measured here",
    ))
}

/// `cuEventElapsedTime`: `CUDA_ERROR_NOT_SUPPORTED` (no device clock) after validating.
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, start: Handle, end: Handle) -> CUresult {
    entry("cuEventElapsedTime", || unsafe { elapsed(ms, start, end) })
}

/// `cuEventElapsedTime_v2`: `CUDA_ERROR_NOT_SUPPORTED` (no device clock) after validating.
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(
    ms: *mut f32,
    start: Handle,
    end: Handle,
) -> CUresult {
    entry("cuEventElapsedTime_v2", || unsafe {
        elapsed(ms, start, end)
    })
}

// ---------------------------------------------------------------- memory

/// `cuMemAlloc_v2`: 0 bytes is `CUDA_ERROR_INVALID_VALUE`, as documented for the real driver.
#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) -> CUresult {
    entry("cuMemAlloc_v2", || {
        if dptr.is_null() {
            return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
        }
        if bytes == 0 {
            return Err(Fail::msg(CUDA_ERROR_INVALID_VALUE, "0 bytes requested"));
        }
        let a = with_ctx(|d| {
            d.refuse_unsafe_call("cuMemAlloc_v2")?;
            d.alloc(bytes as u64)
        })?;
        unsafe { put(dptr, a) }
    })
}

/// `cuMemAllocAsync`: allocated at once (stream work runs when enqueued). 0 bytes gives a
/// distinct allocation of size 0 (every access to it is out of bounds).
#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    stream: Handle,
) -> CUresult {
    entry("cuMemAllocAsync", || {
        if dptr.is_null() {
            return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
        }
        let a = with_stream(stream, |d| {
            d.refuse_graph_memory(stream, "cuMemAllocAsync")?;
            d.alloc(bytes as u64)
        })?;
        unsafe { put(dptr, a) }
    })
}

/// `cuMemFree_v2`: the base of a live allocation; 0 is a no-op. Succeeds quietly in an unusable context (see the
/// module documentation).
#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    entry("cuMemFree_v2", || {
        with_ctx_teardown(|d| {
            d.refuse_unsafe_call("cuMemFree_v2")?;
            if dptr == 0 {
                Ok(())
            } else {
                d.free(dptr)
            }
        })
    })
}

/// `cuMemFreeAsync`: freed at once; 0 is a no-op. Succeeds quietly in an unusable context (see the
/// module documentation).
#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, stream: Handle) -> CUresult {
    entry("cuMemFreeAsync", || {
        with_ctx_teardown(|d| {
            d.check_stream(stream)?;
            d.refuse_graph_memory(stream, "cuMemFreeAsync")?;
            if dptr == 0 {
                Ok(())
            } else {
                d.free(dptr)
            }
        })
    })
}

/// `cuMemGetInfo_v2`: the emulated device's total minus the live allocations.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    entry("cuMemGetInfo_v2", || {
        let (f, t) = with_ctx(|d| {
            let t = d.machine.config.total_memory;
            Ok((t - d.allocated.min(t), t))
        })?;
        unsafe {
            put(free, f as usize)?;
            put(total, t as usize)
        }
    })
}

/// `cuMemGetAddressRange_v2`: the allocation holding `dptr`.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetAddressRange_v2(
    base: *mut CUdeviceptr,
    size: *mut usize,
    dptr: CUdeviceptr,
) -> CUresult {
    entry("cuMemGetAddressRange_v2", || {
        let (b, s) = with_ctx(|d| {
            d.allocation_of(dptr, 1).ok_or_else(|| {
                Fail::msg(
                    CUDA_ERROR_NOT_FOUND,
                    format!("{dptr:#x} is not in a live allocation"),
                )
            })
        })?;
        if !base.is_null() {
            unsafe { put(base, b) }?;
        }
        if !size.is_null() {
            unsafe { put(size, s as usize) }?;
        }
        Ok(())
    })
}

/// `cuPointerGetAttribute` for `CONTEXT`, `MEMORY_TYPE` (device), `DEVICE_POINTER`,
/// `BUFFER_ID`, `IS_MANAGED` (0), `DEVICE_ORDINAL`, `RANGE_START_ADDR` and `RANGE_SIZE`.
#[no_mangle]
pub unsafe extern "C" fn cuPointerGetAttribute(
    data: *mut c_void,
    attribute: c_uint,
    ptr: CUdeviceptr,
) -> CUresult {
    entry("cuPointerGetAttribute", || {
        if data.is_null() {
            return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
        }
        let (b, s) = with_ctx(|d| {
            d.allocation_of(ptr, 1).ok_or_else(|| {
                Fail::msg(
                    CUDA_ERROR_INVALID_VALUE,
                    format!("{ptr:#x} is not a device address"),
                )
            })
        })?;
        unsafe {
            match attribute {
                1 => put(data as *mut Handle, h(CTX_HANDLE)),
                2 => put(data as *mut c_uint, 2),
                3 => put(data as *mut CUdeviceptr, ptr),
                7 => put(data as *mut u64, b),
                8 => put(data as *mut c_uint, 0),
                9 => put(data as *mut c_int, 0),
                11 => put(data as *mut CUdeviceptr, b),
                12 => put(data as *mut usize, s as usize),
                _ => Err(Fail::msg(
                    CUDA_ERROR_NOT_SUPPORTED,
                    format!("pointer attribute {attribute} is not supported"),
                )),
            }
        }
    })
}

/// `cuMemsetD8_v2`.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, value: c_uchar, count: usize) -> CUresult {
    entry("cuMemsetD8_v2", || {
        with_ctx(|d| {
            d.refuse_unsafe_call("cuMemsetD8_v2")?;
            d.memset(dst, &[value], count)
        })
    })
}

/// `cuMemsetD8Async`.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8Async(
    dst: CUdeviceptr,
    value: c_uchar,
    count: usize,
    stream: Handle,
) -> CUresult {
    entry("cuMemsetD8Async", || {
        let node = Node::Memset {
            dst,
            pattern: vec![value],
            count,
        };
        with_stream(stream, |d| d.enqueue(stream, node))
    })
}

/// `cuMemsetD16_v2`.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD16_v2(
    dst: CUdeviceptr,
    value: c_ushort,
    count: usize,
) -> CUresult {
    entry("cuMemsetD16_v2", || {
        with_ctx(|d| {
            d.refuse_unsafe_call("cuMemsetD16_v2")?;
            d.memset(dst, &value.to_le_bytes(), count)
        })
    })
}

/// `cuMemsetD16Async`.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD16Async(
    dst: CUdeviceptr,
    value: c_ushort,
    count: usize,
    stream: Handle,
) -> CUresult {
    entry("cuMemsetD16Async", || {
        let node = Node::Memset {
            dst,
            pattern: value.to_le_bytes().to_vec(),
            count,
        };
        with_stream(stream, |d| d.enqueue(stream, node))
    })
}

/// `cuMemsetD32_v2`.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32_v2(dst: CUdeviceptr, value: c_uint, count: usize) -> CUresult {
    entry("cuMemsetD32_v2", || {
        with_ctx(|d| {
            d.refuse_unsafe_call("cuMemsetD32_v2")?;
            d.memset(dst, &value.to_le_bytes(), count)
        })
    })
}

/// `cuMemsetD32Async`.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32Async(
    dst: CUdeviceptr,
    value: c_uint,
    count: usize,
    stream: Handle,
) -> CUresult {
    entry("cuMemsetD32Async", || {
        let node = Node::Memset {
            dst,
            pattern: value.to_le_bytes().to_vec(),
            count,
        };
        with_stream(stream, |d| d.enqueue(stream, node))
    })
}

/// `cuMemcpyHtoD_v2`.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    bytes: usize,
) -> CUresult {
    entry("cuMemcpyHtoD_v2", || {
        with_ctx(|d| {
            d.refuse_unsafe_call("cuMemcpyHtoD_v2")?;
            unsafe { d.htod(dst, src, bytes) }
        })
    })
}

/// `cuMemcpyHtoDAsync_v2`: copied at once.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    bytes: usize,
    stream: Handle,
) -> CUresult {
    entry("cuMemcpyHtoDAsync_v2", || {
        let node = Node::Htod {
            dst,
            src: src as u64,
            bytes,
        };
        with_stream(stream, |d| d.enqueue(stream, node))
    })
}

/// `cuMemcpyDtoH_v2`.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    bytes: usize,
) -> CUresult {
    entry("cuMemcpyDtoH_v2", || {
        with_ctx(|d| {
            d.refuse_unsafe_call("cuMemcpyDtoH_v2")?;
            unsafe { d.dtoh(dst, src, bytes) }
        })
    })
}

/// `cuMemcpyDtoHAsync_v2`: copied at once.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    bytes: usize,
    stream: Handle,
) -> CUresult {
    entry("cuMemcpyDtoHAsync_v2", || {
        let node = Node::Dtoh {
            dst: dst as u64,
            src,
            bytes,
        };
        with_stream(stream, |d| d.enqueue(stream, node))
    })
}

/// `cuMemcpyDtoD_v2`.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    bytes: usize,
) -> CUresult {
    entry("cuMemcpyDtoD_v2", || {
        with_ctx(|d| {
            d.refuse_unsafe_call("cuMemcpyDtoD_v2")?;
            d.dtod(dst, src, bytes)
        })
    })
}

/// `cuMemcpyDtoDAsync_v2`: copied at once.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    bytes: usize,
    stream: Handle,
) -> CUresult {
    entry("cuMemcpyDtoDAsync_v2", || {
        let node = Node::Dtod { dst, src, bytes };
        with_stream(stream, |d| d.enqueue(stream, node))
    })
}

// ---------------------------------------------------------------- modules

use crate::ptx::fatbin::FATBIN_MAGIC;
/// The fatbin wrapper's magic (`__fatBinC_Wrapper_t`: magic, version, data pointer, unused).
const FATBIN_WRAPPER_MAGIC: u32 = 0x4662_43B1;
/// The largest fatbin accepted (a sanity bound on the header's payload size).
const MAX_IMAGE_BYTES: u64 = 1 << 30;

/// The PTX text of a module image: a fatbin (its length from its header), a fatbin wrapper, or
/// NUL-terminated PTX text. An ELF cubin (SASS) cannot run here.
unsafe fn image_ptx(image: *const c_void) -> Res<String> {
    if image.is_null() {
        return Err(Fail::msg(CUDA_ERROR_INVALID_VALUE, "the image is null"));
    }
    let p = image as *const u8;
    // SAFETY: every image kind starts with at least 4 readable bytes (the caller's contract:
    // a valid module image).
    let magic = unsafe { (p as *const u32).read_unaligned() };
    if magic == FATBIN_WRAPPER_MAGIC {
        // SAFETY: a wrapper is 24 bytes: magic, version, pointer to the fatbin, unused.
        let inner = unsafe { (p.add(8) as *const *const c_void).read_unaligned() };
        if inner.is_null() || inner == image {
            return Err(Fail::msg(
                CUDA_ERROR_INVALID_IMAGE,
                "fatbin wrapper with no fatbin",
            ));
        }
        return unsafe { image_ptx(inner) };
    }
    if magic == FATBIN_MAGIC {
        // SAFETY: a fatbin header is 16 bytes: magic u32, version u16, header size u16,
        // payload size u64.
        let (header, payload) = unsafe {
            (
                (p.add(6) as *const u16).read_unaligned() as u64,
                (p.add(8) as *const u64).read_unaligned(),
            )
        };
        if header < 16 || payload > MAX_IMAGE_BYTES {
            return Err(Fail::msg(
                CUDA_ERROR_INVALID_IMAGE,
                format!("fatbin header size {header}, payload size {payload}: not a valid fatbin"),
            ));
        }
        // SAFETY: the header says the fatbin is header + payload bytes long.
        let bytes = unsafe { std::slice::from_raw_parts(p, (header + payload) as usize) };
        return crate::ptx::fatbin::ptx_from_image(bytes)
            .map_err(|m| Fail::msg(CUDA_ERROR_INVALID_IMAGE, format!("fatbin: {m}")));
    }
    if magic == u32::from_le_bytes(*b"\x7fELF") {
        return Err(Fail::msg(
            CUDA_ERROR_NO_BINARY_FOR_GPU,
            "the image is an ELF cubin (SASS): the emulator runs PTX only; load PTX text or a \
             fatbin with a PTX entry",
        ));
    }
    // SAFETY: otherwise the image is NUL-terminated PTX text (the caller's contract).
    let text = unsafe { CStr::from_ptr(image as *const c_char) };
    text.to_str().map(str::to_owned).map_err(|e| {
        Fail::msg(
            CUDA_ERROR_INVALID_IMAGE,
            format!("the image is neither a fatbin nor UTF-8 PTX text: {e}"),
        )
    })
}

unsafe fn module_load(module: *mut Handle, image: *const c_void) -> Res<()> {
    if module.is_null() {
        return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
    }
    // The context comes first, as in the real driver.
    with_ctx(|_| Ok(()))?;
    let text = unsafe { image_ptx(image) }?;
    let parsed = crate::ptx::parse_ptx(&text)
        .map_err(|e| Fail::msg(CUDA_ERROR_INVALID_PTX, format!("PTX parse error: {e}")))?;
    let m = with_ctx(|d| {
        let id = d.machine.load_module(parsed)?;
        let m = d.handle(TAG_MODULE);
        d.modules.insert(
            m,
            Module {
                id,
                functions: HashMap::new(),
            },
        );
        Ok(m)
    })?;
    unsafe { put(module, h(m)) }
}

/// `cuModuleLoadData`: a fatbin (its PTX entry) or NUL-terminated PTX text.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut Handle, image: *const c_void) -> CUresult {
    entry("cuModuleLoadData", || unsafe { module_load(module, image) })
}

/// `cuModuleLoadDataEx`: as `cuModuleLoadData`; JIT options are ignored.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    module: *mut Handle,
    image: *const c_void,
    _num_options: c_uint,
    _options: *mut c_int,
    _values: *mut *mut c_void,
) -> CUresult {
    entry("cuModuleLoadDataEx", || unsafe {
        module_load(module, image)
    })
}

/// `cuModuleGetFunction`: one handle per kernel name.
#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    func: *mut Handle,
    module: Handle,
    name: *const c_char,
) -> CUresult {
    entry("cuModuleGetFunction", || {
        if func.is_null() || name.is_null() {
            return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
        }
        // SAFETY: a NUL-terminated name (the caller's contract).
        let name = unsafe { CStr::from_ptr(name) }
            .to_str()
            .map_err(|_| Fail::msg(CUDA_ERROR_INVALID_VALUE, "the name is not UTF-8"))?
            .to_owned();
        let f = with_ctx(|d| {
            let key = module as u64;
            let m = d.modules.get(&key).ok_or_else(|| {
                Fail::msg(
                    CUDA_ERROR_INVALID_HANDLE,
                    format!("{key:#x} is not a loaded module"),
                )
            })?;
            if let Some(&f) = m.functions.get(&name) {
                return Ok(f);
            }
            let mid = m.id;
            let id = d.machine.get_function(mid, &name).map_err(|e| {
                Fail::msg(
                    CUDA_ERROR_NOT_FOUND,
                    format!("kernel `{name}`: {}", e.message),
                )
            })?;
            let info = d.machine.function_info(id)?;
            let params = d.machine.function_params(id)?;
            let default_dynamic = d
                .machine
                .config
                .shared_per_block
                .saturating_sub(info.static_shared_bytes);
            let f = d.handle(TAG_FUNCTION);
            d.functions.insert(
                f,
                Func {
                    id,
                    name: name.clone(),
                    info,
                    params,
                    max_dynamic_shared: default_dynamic,
                    carveout: -1,
                },
            );
            if let Some(m) = d.modules.get_mut(&key) {
                m.functions.insert(name, f);
            }
            Ok(f)
        })?;
        unsafe { put(func, h(f)) }
    })
}

/// `cuModuleUnload`: its function handles become invalid. Succeeds quietly in an unusable context (see the
/// module documentation).
#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(module: Handle) -> CUresult {
    entry("cuModuleUnload", || {
        with_ctx_teardown(|d| {
            let key = module as u64;
            let m = d.modules.get(&key).ok_or_else(|| {
                Fail::msg(
                    CUDA_ERROR_INVALID_HANDLE,
                    format!("{key:#x} is not a loaded module"),
                )
            })?;
            d.machine.unload_module(m.id)?;
            if let Some(m) = d.modules.remove(&key) {
                for f in m.functions.values() {
                    d.functions.remove(f);
                }
            }
            Ok(())
        })
    })
}

// ---------------------------------------------------------------- functions, occupancy

/// `cuFuncGetAttribute`.
#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(
    pi: *mut c_int,
    attrib: c_int,
    func: Handle,
) -> CUresult {
    entry("cuFuncGetAttribute", || {
        let v = with_ctx(|d| {
            let f = d.func(func)?;
            let i = |v: u32| v.min(i32::MAX as u32) as i32;
            let (major, minor) = d.machine.config.compute_capability;
            Ok(match attrib {
                0 => i(f
                    .info
                    .max_threads_per_block
                    .min(d.machine.config.max_threads_per_block)),
                1 => i(f.info.static_shared_bytes),
                2 => 0,
                3 => i(f.info.local_bytes),
                4 => i(f.info.num_regs),
                5 | 6 => major * 10 + minor,
                7 => 0,
                8 => i(f.max_dynamic_shared),
                9 => f.carveout,
                10..=15 => 0,
                _ => {
                    return Err(Fail::msg(
                        CUDA_ERROR_INVALID_VALUE,
                        format!("unknown function attribute {attrib}"),
                    ))
                }
            })
        })?;
        unsafe { put(pi, v) }
    })
}

/// `cuFuncSetAttribute`: `MAX_DYNAMIC_SHARED_SIZE_BYTES` (up to the opt-in limit less the
/// static shared memory) and `PREFERRED_SHARED_MEMORY_CARVEOUT` (-1..=100).
#[no_mangle]
pub unsafe extern "C" fn cuFuncSetAttribute(func: Handle, attrib: c_int, value: c_int) -> CUresult {
    entry("cuFuncSetAttribute", || {
        with_ctx(|d| {
            let optin = d.machine.config.shared_per_block_optin;
            let f = d
                .functions
                .get_mut(&(func as u64))
                .ok_or(Fail::code(CUDA_ERROR_INVALID_HANDLE))?;
            match attrib {
                8 => {
                    let limit = optin.saturating_sub(f.info.static_shared_bytes);
                    if value < 0 || value as u32 > limit {
                        return Err(Fail::msg(
                            CUDA_ERROR_INVALID_VALUE,
                            format!(
                                "kernel `{}`: {value} bytes of dynamic shared memory, at most {limit}",
                                f.name
                            ),
                        ));
                    }
                    f.max_dynamic_shared = value as u32;
                    Ok(())
                }
                9 => {
                    if !(-1..=100).contains(&value) {
                        return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
                    }
                    f.carveout = value;
                    Ok(())
                }
                _ => Err(Fail::msg(
                    CUDA_ERROR_NOT_SUPPORTED,
                    format!("function attribute {attrib} cannot be set on the emulator"),
                )),
            }
        })
    })
}

/// `cuFuncSetCacheConfig`: a preference, accepted.
#[no_mangle]
pub unsafe extern "C" fn cuFuncSetCacheConfig(func: Handle, config: c_uint) -> CUresult {
    entry("cuFuncSetCacheConfig", || {
        with_ctx(|d| {
            d.func(func)?;
            if config > 3 {
                return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
            }
            Ok(())
        })
    })
}

unsafe fn occupancy(num_blocks: *mut c_int, func: Handle, block: c_int, dynamic: usize) -> Res<()> {
    if num_blocks.is_null() || block <= 0 {
        return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
    }
    let n = with_ctx(|d| {
        let id = d.func(func)?.id;
        let dynamic = u32::try_from(dynamic).unwrap_or(u32::MAX);
        Ok(d.machine.occupancy(id, block as u32, dynamic)?)
    })?;
    unsafe { put(num_blocks, n.min(i32::MAX as u32) as c_int) }
}

/// `cuOccupancyMaxActiveBlocksPerMultiprocessor`: [`Machine::occupancy`], the rule by which the
/// engine keeps `occupancy * sm_count` blocks of a launch resident at once.
#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessor(
    num_blocks: *mut c_int,
    func: Handle,
    block: c_int,
    dynamic: usize,
) -> CUresult {
    entry("cuOccupancyMaxActiveBlocksPerMultiprocessor", || unsafe {
        occupancy(num_blocks, func, block, dynamic)
    })
}

/// `cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags`: the flags change nothing here.
#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    num_blocks: *mut c_int,
    func: Handle,
    block: c_int,
    dynamic: usize,
    _flags: c_uint,
) -> CUresult {
    entry(
        "cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags",
        || unsafe { occupancy(num_blocks, func, block, dynamic) },
    )
}

/// `cuOccupancyAvailableDynamicSMemPerBlock`: the most dynamic shared memory per block with
/// which `num_blocks` blocks of `block` threads still fit on one SM.
#[no_mangle]
pub unsafe extern "C" fn cuOccupancyAvailableDynamicSMemPerBlock(
    size: *mut usize,
    func: Handle,
    num_blocks: c_int,
    block: c_int,
) -> CUresult {
    entry("cuOccupancyAvailableDynamicSMemPerBlock", || {
        if size.is_null() || num_blocks <= 0 || block <= 0 {
            return Err(Fail::code(CUDA_ERROR_INVALID_VALUE));
        }
        let v = with_ctx(|d| {
            let f = d.func(func)?;
            let limit = d
                .machine
                .config
                .shared_per_block_optin
                .saturating_sub(f.info.static_shared_bytes);
            let fits = |bytes: u32| -> Res<bool> {
                Ok(d.machine.occupancy(f.id, block as u32, bytes)? >= num_blocks as u32)
            };
            if !fits(0)? {
                return Ok(0);
            }
            // The largest dynamic size that still fits: occupancy only falls as it grows.
            let (mut lo, mut hi) = (0u32, limit);
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                if fits(mid)? {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            Ok(lo as usize)
        })?;
        unsafe { put(size, v) }
    })
}

// ---------------------------------------------------------------- launch

static WARP_INSTRUCTIONS: AtomicU64 = AtomicU64::new(0);
static MMA_INSTRUCTIONS: AtomicU64 = AtomicU64::new(0);

/// Counts of every launch so far in this copy of the emulator: (warp-instructions, mma).
pub fn launch_totals() -> (u64, u64) {
    (
        WARP_INSTRUCTIONS.load(Ordering::Relaxed),
        MMA_INSTRUCTIONS.load(Ordering::Relaxed),
    )
}

/// `cuLaunchKernel`: runs the kernel to completion. `kernelParams[i]` points at parameter `i`'s
/// bytes (sizes from the kernel's declaration); `extra` must be null.
#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: Handle,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    shared_bytes: c_uint,
    stream: Handle,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    entry("cuLaunchKernel", || {
        with_stream(stream, |d| {
            let func = d.func(f)?;
            let name = func.name.clone();
            let bad =
                |m: String| Fail::msg(CUDA_ERROR_INVALID_VALUE, format!("kernel `{name}`: {m}"));
            if !extra.is_null() {
                return Err(Fail::msg(
                    CUDA_ERROR_NOT_SUPPORTED,
                    format!("kernel `{name}`: the `extra` launch argument is not supported (pass kernelParams)"),
                ));
            }
            let grid = [grid_x, grid_y, grid_z];
            let block = [block_x, block_y, block_z];
            if grid.contains(&0) || block.contains(&0) {
                return Err(bad(format!(
                    "grid {grid:?} or block {block:?} has a zero dimension"
                )));
            }
            if grid_y > 65535 || grid_z > 65535 || grid_x > i32::MAX as u32 {
                return Err(bad(format!("grid {grid:?} exceeds (2^31-1, 65535, 65535)")));
            }
            if block_x > 1024 || block_y > 1024 || block_z > 64 {
                return Err(bad(format!("block {block:?} exceeds (1024, 1024, 64)")));
            }
            let threads = block_x as u64 * block_y as u64 * block_z as u64;
            let cfg = &d.machine.config;
            if threads > cfg.max_threads_per_block as u64 {
                return Err(bad(format!(
                    "{threads} threads per block, at most {}",
                    cfg.max_threads_per_block
                )));
            }
            if func.info.max_threads_per_block != 0
                && threads > func.info.max_threads_per_block as u64
            {
                return Err(Fail::msg(
                    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
                    format!(
                        "kernel `{name}`: {threads} threads per block, the kernel allows at most {}",
                        func.info.max_threads_per_block
                    ),
                ));
            }
            if shared_bytes > func.max_dynamic_shared {
                return Err(bad(format!(
                    "{shared_bytes} bytes of dynamic shared memory, at most {} \
                     (raise CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)",
                    func.max_dynamic_shared
                )));
            }
            if d.machine.occupancy(func.id, threads as u32, shared_bytes)? == 0 {
                return Err(Fail::msg(
                    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
                    format!(
                        "kernel `{name}`: one block of {threads} threads ({} registers each, {} + \
                         {shared_bytes} bytes of shared memory) does not fit on an SM",
                        func.info.num_regs, func.info.static_shared_bytes
                    ),
                ));
            }
            if !func.params.is_empty() && kernel_params.is_null() {
                return Err(bad(format!(
                    "kernelParams is null, the kernel takes {} parameters",
                    func.params.len()
                )));
            }
            let mut params = Vec::with_capacity(func.params.len());
            for (i, &(size, _align)) in func.params.iter().enumerate() {
                // SAFETY: kernelParams holds one pointer per parameter (the caller's contract).
                let p = unsafe { *kernel_params.add(i) } as *const u8;
                if p.is_null() {
                    return Err(bad(format!("kernelParams[{i}] is null")));
                }
                // SAFETY: parameter i's pointer holds `size` bytes (the caller's contract).
                params.push(unsafe { std::slice::from_raw_parts(p, size as usize) }.to_vec());
            }
            let node = Node::Kernel {
                func: f as u64,
                grid,
                block,
                shared: shared_bytes,
                params,
            };
            d.enqueue(stream, node)
        })
    })
}

/// Runs kernel `f` now (its launch was checked by `cuLaunchKernel`); a sticky failure poisons
/// the context.
fn run_kernel(
    d: &mut Driver,
    f: Handle,
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    params: &[Vec<u8>],
) -> Res<()> {
    let func = d.func(f)?;
    let (id, name) = (func.id, func.name.clone());
    let stats = match d.machine.launch(id, grid, block, shared_bytes, params) {
        Ok(stats) => stats,
        Err(e) => {
            let fail = Fail::msg(e.code as u32, format!("kernel `{name}`: {e}"));
            d.poison(&fail);
            return Err(fail);
        }
    };
    WARP_INSTRUCTIONS.fetch_add(stats.warp_instructions, Ordering::Relaxed);
    MMA_INSTRUCTIONS.fetch_add(stats.mma_instructions, Ordering::Relaxed);
    Ok(())
}

// ---------------------------------------------------------------- errors

fn error_entry(code: u32) -> Option<&'static (u32, &'static CStr, &'static CStr)> {
    errors::ERRORS.iter().find(|e| e.0 == code)
}

/// `cuGetErrorString`: a static description of every CUDA 13.0 code (unknown: INVALID_VALUE
/// and a null string, as the real driver does).
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(error: CUresult, pstr: *mut *const c_char) -> CUresult {
    entry("cuGetErrorString", || {
        let e = error_entry(error);
        unsafe { put(pstr, e.map_or(std::ptr::null(), |e| e.2.as_ptr())) }?;
        e.map(|_| ()).ok_or(Fail::code(CUDA_ERROR_INVALID_VALUE))
    })
}

/// `cuGetErrorName`: the enum name of every CUDA 13.0 code.
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(error: CUresult, pstr: *mut *const c_char) -> CUresult {
    entry("cuGetErrorName", || {
        let e = error_entry(error);
        unsafe { put(pstr, e.map_or(std::ptr::null(), |e| e.1.as_ptr())) }?;
        e.map(|_| ()).ok_or(Fail::code(CUDA_ERROR_INVALID_VALUE))
    })
}

// ---------------------------------------------------------------- emulator extensions

/// The calling thread's last error message from this copy of the emulator, for a process that
/// loaded the cdylib: copies at most `len - 1` bytes and a NUL into `buf` (when non-null) and
/// returns the message's full length in bytes (0 when there is none).
#[no_mangle]
pub unsafe extern "C" fn lora_kernels_emulator_last_error(buf: *mut c_char, len: usize) -> usize {
    let msg = last_error_message().unwrap_or_default();
    if !buf.is_null() && len > 0 {
        let n = msg.len().min(len - 1);
        // SAFETY: `buf` holds `len` bytes (the caller's contract); n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), buf as *mut u8, n);
            *buf.add(n) = 0;
        }
    }
    msg.len()
}

/// Counts of every launch so far (see [`launch_totals`]), for a process that loaded the cdylib.
#[no_mangle]
pub unsafe extern "C" fn lora_kernels_emulator_launch_totals(
    warp_instructions: *mut u64,
    mma: *mut u64,
) {
    let (w, m) = launch_totals();
    if !warp_instructions.is_null() {
        // SAFETY: a valid out-pointer (the caller's contract).
        unsafe { warp_instructions.write_unaligned(w) };
    }
    if !mma.is_null() {
        // SAFETY: as above.
        unsafe { mma.write_unaligned(m) };
    }
}

/// The driver functions implemented here (the rest of cudarc's are [`stubs`]).
pub const IMPLEMENTED: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceGetName",
    "cuDeviceGetAttribute",
    "cuDeviceTotalMem_v2",
    "cuDeviceGetUuid",
    "cuDeviceGetUuid_v2",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuDevicePrimaryCtxGetState",
    "cuDevicePrimaryCtxReset_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxPushCurrent_v2",
    "cuCtxPopCurrent_v2",
    "cuCtxGetDevice",
    "cuCtxSynchronize",
    "cuCtxGetStreamPriorityRange",
    "cuCtxGetLimit",
    "cuCtxSetLimit",
    "cuCtxGetCacheConfig",
    "cuCtxSetCacheConfig",
    "cuCtxGetFlags",
    "cuCtxSetFlags",
    "cuStreamCreate",
    "cuStreamCreateWithPriority",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamQuery",
    "cuStreamWaitEvent",
    "cuStreamGetCtx",
    "cuStreamIsCapturing",
    "cuStreamBeginCapture_v2",
    "cuStreamEndCapture",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventRecordWithFlags",
    "cuEventDestroy_v2",
    "cuEventSynchronize",
    "cuEventQuery",
    "cuEventElapsedTime",
    "cuEventElapsedTime_v2",
    "cuMemAlloc_v2",
    "cuMemAllocAsync",
    "cuMemFree_v2",
    "cuMemFreeAsync",
    "cuMemGetInfo_v2",
    "cuMemGetAddressRange_v2",
    "cuPointerGetAttribute",
    "cuMemsetD8_v2",
    "cuMemsetD8Async",
    "cuMemsetD16_v2",
    "cuMemsetD16Async",
    "cuMemsetD32_v2",
    "cuMemsetD32Async",
    "cuMemcpyHtoD_v2",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoH_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyDtoD_v2",
    "cuMemcpyDtoDAsync_v2",
    "cuModuleLoadData",
    "cuModuleLoadDataEx",
    "cuModuleGetFunction",
    "cuModuleUnload",
    "cuFuncGetAttribute",
    "cuFuncSetAttribute",
    "cuFuncSetCacheConfig",
    "cuOccupancyMaxActiveBlocksPerMultiprocessor",
    "cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags",
    "cuOccupancyAvailableDynamicSMemPerBlock",
    "cuLaunchKernel",
    "cuGraphInstantiateWithFlags",
    "cuGraphLaunch",
    "cuGraphUpload",
    "cuGraphExecDestroy",
    "cuGraphDestroy",
    "cuGetErrorString",
    "cuGetErrorName",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checker_and_seed_settings_parse() {
        let all = parse_checkers("all").unwrap();
        assert!(all.memcheck && all.initcheck && all.racecheck && all.synccheck);
        let none = parse_checkers("none").unwrap();
        assert!(!none.memcheck && !none.initcheck && !none.racecheck && !none.synccheck);
        let some = parse_checkers("memcheck, racecheck").unwrap();
        assert!(some.memcheck && !some.initcheck && some.racecheck && !some.synccheck);
        assert!(parse_checkers("memchek").unwrap_err().contains("memchek"));
        assert_eq!(parse_seed("42"), Ok(42));
        assert_eq!(parse_seed("0xff"), Ok(255));
        assert!(parse_seed("-1").is_err());
    }

    #[test]
    fn every_attribute_up_to_max_has_a_value() {
        let c = DeviceConfig::default();
        for a in 1..148 {
            assert!(device_attribute(&c, a).is_some(), "attribute {a}");
        }
        assert_eq!(device_attribute(&c, 148), None);
        assert_eq!(device_attribute(&c, 0), None);
        assert_eq!(device_attribute(&c, 75), Some(8));
        assert_eq!(device_attribute(&c, 76), Some(0));
        assert_eq!(device_attribute(&c, 16), Some(c.sm_count as i32));
        assert_eq!(device_attribute(&c, 115), Some(1));
    }

    #[test]
    fn every_error_code_has_a_name_and_a_string() {
        for code in [
            0, 1, 2, 3, 101, 200, 201, 209, 218, 400, 500, 700, 701, 710, 715, 716, 717, 719, 801,
            999,
        ] {
            let e = error_entry(code).unwrap_or_else(|| panic!("code {code}"));
            assert!(e.1.to_str().unwrap().starts_with("CUDA_"));
            assert!(!e.2.to_bytes().is_empty());
        }
        assert!(error_entry(12345).is_none());
        for &code in STICKY_CODES {
            assert!(error_entry(code).is_some(), "sticky code {code}");
        }
    }
}
