//! Which CUDA driver the tests (and the quickstart, which includes this file) run on: a real
//! driver when one loads, otherwise the crate's PTX emulator.
//!
//! The emulator is the cdylib `liblora_kernels_emulator.so` (SONAME `libcuda.so.1`) that `cargo test`
//! builds as a dev-dependency into `target/<profile>/deps/`. Loading it by absolute path before the
//! first CUDA call makes every later `dlopen("libcuda.so.1")` (cudarc's, and
//! `lora_kernels::device::driver_present`'s) bind to it; it then stays loaded for the process.
//!
//! `LORA_KERNELS_EMULATOR`: unset = the emulator only where no driver loads; `0` = never;
//! `1` = always, even where a driver exists. `LORA_KERNELS_EMULATOR_LIB` names the library file
//! (default: next to the executable, or in `../deps/` for examples).
#![allow(dead_code)]
use std::path::PathBuf;
use std::sync::OnceLock;

/// The emulator library's file name (not `libcuda.so`, so it never shadows a real driver).
pub const EMULATOR_FILE: &str = "liblora_kernels_emulator.so";

/// What `LORA_KERNELS_EMULATOR` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Unset: a real driver if one loads, else the emulator.
    Auto,
    /// `0`: never the emulator.
    Off,
    /// `1`: the emulator, even where a real driver exists.
    Force,
}

/// The driver this process uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Driver {
    /// A real CUDA driver library loads (whether it has a device is for `Gpu::new` to say).
    Real,
    /// The emulator, loaded from this path.
    Emulator(PathBuf),
    /// Neither: why not.
    Unavailable(String),
}

/// `LORA_KERNELS_EMULATOR`, or an error for any value but unset, empty, `0` and `1`.
pub fn mode() -> Result<Mode, String> {
    match std::env::var("LORA_KERNELS_EMULATOR").as_deref() {
        Err(_) | Ok("") => Ok(Mode::Auto),
        Ok("0") => Ok(Mode::Off),
        Ok("1") => Ok(Mode::Force),
        Ok(other) => Err(format!(
            "LORA_KERNELS_EMULATOR={other:?}: expected 0 (never), 1 (always) or unset (when no driver loads)"
        )),
    }
}

/// Where the emulator library is: `LORA_KERNELS_EMULATOR_LIB`, else beside the executable
/// (`target/<profile>/deps/` for tests), else in `../deps/` (examples).
pub fn emulator_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("LORA_KERNELS_EMULATOR_LIB") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "LORA_KERNELS_EMULATOR_LIB={} is not a file",
                p.display()
            ))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = exe.parent().ok_or("the executable has no folder")?;
    let candidates = [
        dir.join(EMULATOR_FILE),
        dir.join("../deps").join(EMULATOR_FILE),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "no emulator library at {} (cargo test builds it; or set LORA_KERNELS_EMULATOR_LIB)",
                candidates[0].display()
            )
        })
}

/// The address of `cuInit` in `lib`, to tell libraries apart.
fn cu_init(lib: &libloading::Library) -> Option<usize> {
    // SAFETY: only the symbol's address is read; nothing is called.
    unsafe { lib.get::<unsafe extern "C" fn(u32) -> u32>(b"cuInit\0") }
        .ok()
        .map(|f| *f as usize)
}

/// The library names cudarc tries, in its order.
fn cudarc_names() -> Vec<String> {
    ["cuda", "nvcuda"]
        .iter()
        .flat_map(|l| cudarc::get_lib_name_candidates(l))
        .collect()
}

/// The first library cudarc would load, with its name.
fn first_cudarc_library() -> Option<(String, libloading::Library)> {
    cudarc_names().into_iter().find_map(|name| {
        // SAFETY: loading a driver library runs its initialisers, as cudarc itself would.
        unsafe { libloading::Library::new(&name) }
            .ok()
            .map(|lib| (name, lib))
    })
}

/// Loads the emulator for good and checks that cudarc's search now finds it first.
fn load_emulator() -> Driver {
    let path = match emulator_path() {
        Ok(p) => p,
        Err(e) => return Driver::Unavailable(e),
    };
    // SAFETY: the emulator's initialisers are plain Rust statics.
    let lib = match unsafe { libloading::Library::new(&path) } {
        Ok(lib) => lib,
        Err(e) => return Driver::Unavailable(format!("loading {}: {e}", path.display())),
    };
    let Some(ours) = cu_init(&lib) else {
        return Driver::Unavailable(format!("{} exports no cuInit", path.display()));
    };
    // Kept loaded for the life of the process: cudarc holds on to it.
    std::mem::forget(lib);
    match first_cudarc_library() {
        Some((_, lib)) if cu_init(&lib) == Some(ours) => Driver::Emulator(path),
        Some((name, _)) => Driver::Unavailable(format!(
            "the emulator is loaded, but cudarc would open a real driver as {name} first; put a folder \
             holding {name} -> {} first on LD_LIBRARY_PATH (scripts/gpu-check.sh does)",
            path.display()
        )),
        None => Driver::Unavailable(format!(
            "loaded {} but dlopen(\"libcuda.so.1\") does not find it (no SONAME libcuda.so.1?)",
            path.display()
        )),
    }
}

/// Chooses the driver once per process, before the first CUDA call; later calls return the choice.
pub fn select() -> &'static Driver {
    static CHOICE: OnceLock<Driver> = OnceLock::new();
    CHOICE.get_or_init(|| match mode() {
        Err(e) => Driver::Unavailable(e),
        Ok(Mode::Force) => load_emulator(),
        Ok(mode) => {
            if first_cudarc_library().is_some() {
                Driver::Real
            } else if mode == Mode::Off {
                Driver::Unavailable(
                    "the CUDA driver library (libcuda.so.1) was not found and LORA_KERNELS_EMULATOR=0"
                        .into(),
                )
            } else {
                load_emulator()
            }
        }
    })
}

/// Whether this process runs on the emulator.
pub fn on_emulator() -> bool {
    matches!(select(), Driver::Emulator(_))
}

/// Where GPU work runs, for the tests' output: `emulator` or `gpu`.
pub fn target() -> &'static str {
    if on_emulator() {
        "emulator"
    } else {
        "gpu"
    }
}
