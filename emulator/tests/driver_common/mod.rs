//! Loads the emulator's cdylib by absolute path, so that cudarc's `dlopen("libcuda.so.1")` binds
//! to it (its SONAME), and reads its last error message.
#![allow(dead_code)]
use std::path::PathBuf;
use std::sync::OnceLock;

/// The built cdylib: `target/<profile>/liblora_kernels_emulator.so` or the same name in
/// `target/<profile>/deps/` (integration tests run from `deps/`).
pub fn emulator_path() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let name = format!(
        "{}lora_kernels_emulator{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(&name);
        if candidate.is_file() {
            return candidate;
        }
        tried.push(candidate);
    }
    panic!(
        "the emulator's cdylib was not found; looked for {tried:?} (build the crate \
         lora-kernels-emulator: its cdylib is built with its tests)"
    );
}

/// The loaded emulator (loaded once per process, never unloaded).
pub fn emulator() -> &'static libloading::Library {
    static LIB: OnceLock<libloading::Library> = OnceLock::new();
    LIB.get_or_init(|| {
        let path = emulator_path();
        // SAFETY: the emulator's initialisers are Rust statics only.
        unsafe { libloading::Library::new(&path) }
            .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
    })
}

/// The calling thread's last error message from the loaded emulator.
pub fn last_error() -> String {
    type F = unsafe extern "C" fn(*mut std::ffi::c_char, usize) -> usize;
    // SAFETY: the symbol has this signature (emulator/src/driver/mod.rs).
    unsafe {
        let f = *emulator()
            .get::<F>(b"lora_kernels_emulator_last_error\0")
            .expect("lora_kernels_emulator_last_error");
        let len = f(std::ptr::null_mut(), 0);
        let mut buf = vec![0u8; len + 1];
        f(buf.as_mut_ptr() as *mut _, buf.len());
        buf.truncate(len);
        String::from_utf8(buf).expect("UTF-8 message")
    }
}

/// Reproducible non-zero test data (xorshift32).
pub fn data(len: usize, seed: u32) -> Vec<u32> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        })
        .collect()
}

/// Reproducible non-zero floats in [-4, 4] (from [`data`]).
pub fn floats(len: usize, seed: u32) -> Vec<f32> {
    data(len, seed)
        .into_iter()
        .map(|v| (v % 2001) as f32 / 250.0 - 4.0)
        .collect()
}
