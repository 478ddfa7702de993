//! Helpers shared by the integration tests: the seeded RNG ([`rng`], which the benches share), the
//! comparators ([`f64s`], [`rel_error`], [`assert_close`], [`tolerance`]) and the GPU gate, which runs
//! the GPU tests on a real GPU or, where no driver loads, on the PTX emulator ([`driver`]).
// Each test binary uses a part of this module.
#![allow(dead_code, unused_imports)]
pub mod driver;
pub mod rng;
pub mod tensors;

pub use rng::Rng;

pub use lora_kernels::golden::tolerance;
use lora_kernels::{Element, Error, Gpu};

/// Whether GPU tests must run (`LORA_KERNELS_REQUIRE_GPU=1`): then a missing GPU fails the test.
pub fn gpu_required() -> bool {
    std::env::var("LORA_KERNELS_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Opens device 0 on the driver [`driver::select`] chose: `Ok(None)` after printing why the GPU
/// tests skip (no driver, or no device on a real one), `Err` with a message when they must fail.
/// Prints where the test runs: `GPU tests on emulator (NAME)` or `GPU tests on gpu (NAME)`.
pub fn open_gpu() -> Result<Option<Gpu>, String> {
    let chosen = driver::select();
    let forced = driver::mode() == Ok(driver::Mode::Force);
    if let driver::Driver::Unavailable(why) = chosen {
        if forced || gpu_required() || driver::mode().is_err() {
            return Err(format!("no CUDA device and no emulator: {why}"));
        }
        println!("SKIPPED: no CUDA device ({why})");
        return Ok(None);
    }
    let on_emulator = driver::on_emulator();
    // A driver missing a symbol makes cudarc panic: report it as this test's failure, once.
    let opened = match std::panic::catch_unwind(|| Gpu::new(0)) {
        Ok(result) => result,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            return Err(format!(
                "opening device 0 on the {} panicked in cudarc: {msg}",
                driver::target()
            ));
        }
    };
    match opened {
        Ok(gpu) => {
            if on_emulator && !gpu.name().contains("emulator") {
                return Err(format!(
                    "the emulator was loaded but the device is {:?}: cudarc bound another driver",
                    gpu.name()
                ));
            }
            if !lora_kernels::device::kernels_built() {
                if gpu_required() || on_emulator {
                    return Err(
                        "the kernels were not built into this binary (no nvcc and no \
                                committed PTX at build time)"
                            .into(),
                    );
                }
                println!("SKIPPED: the kernels were not built (no nvcc at build time)");
                return Ok(None);
            }
            println!("GPU tests on {} ({})", driver::target(), gpu.name());
            Ok(Some(gpu))
        }
        Err(e) if on_emulator => Err(format!(
            "the emulator did not open a device: {e} (LORA_KERNELS_EMULATOR=0 skips the GPU tests \
             where no GPU is)"
        )),
        Err(Error::NoDevice(why)) => {
            if gpu_required() {
                return Err(format!(
                    "LORA_KERNELS_REQUIRE_GPU=1 but there is no CUDA device: {why}"
                ));
            }
            println!(
                "SKIPPED: no CUDA device ({why}); LORA_KERNELS_EMULATOR=1 runs the GPU tests on \
                 the emulator"
            );
            Ok(None)
        }
        Err(e) => Err(format!("opening the GPU failed: {e}")),
    }
}

/// The GPU (or the emulator), or `None` after printing `SKIPPED: ...`; panics with the reason where
/// the GPU tests must run and cannot (see [`open_gpu`]).
pub fn gpu() -> Option<Gpu> {
    open_gpu().unwrap_or_else(|e| panic!("{e}"))
}

/// [`lora_kernels::golden::rel_error`], and with `LORA_KERNELS_DUMP_DIR` set, `out` is also written
/// there (see [`dump`]): the GPU check runs the tests on the GPU and on the emulator and compares.
pub fn rel_error(out: &[f64], reference: &[f64]) -> f64 {
    let label = {
        thread_local!(static COUNT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
        let n = COUNT.with(|c| {
            c.set(c.get() + 1);
            c.get()
        });
        let thread = std::thread::current();
        format!("{}.{n}", thread.name().unwrap_or("main"))
    };
    dump(&label, out, None);
    lora_kernels::golden::rel_error(out, reference)
}

/// With `LORA_KERNELS_DUMP_DIR` set: writes `values` (little-endian f64) to
/// `<dir>/<binary>/<label>.f64` and a line `<binary>/<label>\t<len>\t<tol or ->` to
/// `<dir>/manifest.tsv`; `scripts/compare-dumps.py` compares two such folders. Labels are made of
/// the test's thread name and a per-thread count, so one binary run twice on the same inputs
/// writes the same files.
pub fn dump(label: &str, values: &[f64], tol: Option<f64>) {
    use std::io::Write as _;
    static MANIFEST: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let Some(dir) = std::env::var_os("LORA_KERNELS_DUMP_DIR") else {
        return;
    };
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_ref()
        .and_then(|e| e.file_stem())
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "test".into());
    // Cargo's test binaries end in `-<16 hex>`.
    let binary = match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name
        }
        _ => stem.as_str(),
    };
    let safe: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let folder = std::path::Path::new(&dir).join(binary);
    std::fs::create_dir_all(&folder).expect("LORA_KERNELS_DUMP_DIR is writable");
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(folder.join(format!("{safe}.f64")), bytes).expect("dump written");
    let _guard = MANIFEST.lock().unwrap_or_else(|e| e.into_inner());
    let mut manifest = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(std::path::Path::new(&dir).join("manifest.tsv"))
        .expect("manifest.tsv");
    let tol = tol.map_or("-".to_string(), |t| format!("{t:e}"));
    writeln!(manifest, "{binary}/{safe}\t{}\t{tol}", values.len()).expect("manifest written");
}

/// Whether the GPU tests keep to their small problems: `LORA_KERNELS_SMALL=1` (as under
/// compute-sanitizer), or on the emulator, which interprets every instruction (the large problems
/// take it minutes each; every kernel path keeps small and odd-sized problems).
pub fn small_shapes() -> bool {
    std::env::var("LORA_KERNELS_SMALL").is_ok_and(|v| v == "1") || driver::on_emulator()
}

/// One `#[test]` per dtype for a generic GPU test body `fn body<T: Element>(gpu: &Gpu, args..)`:
/// each `name: dtype(args..)` defines `#[test] fn name()`, which runs `body::<dtype>(&gpu, args..)`
/// on the GPU or the emulator ([`gpu`]), or prints why it skips (and fails where the GPU tests must
/// run, as [`gpu`] does).
///
/// ```ignore
/// common::gpu_tests! { random_shapes:
///     random_shapes_f32: f32(1),
///     random_shapes_bf16: bf16(3),
/// }
/// ```
#[allow(unused_macros)]
macro_rules! gpu_tests {
    ($body:ident: $($(#[$meta:meta])* $name:ident: $t:ident($($arg:expr),* $(,)?)),+ $(,)?) => {
        $(
            $(#[$meta])*
            #[test]
            fn $name() {
                if let Some(gpu) = $crate::common::gpu() {
                    $body::<$t>(&gpu, $($arg),*);
                }
            }
        )+
    };
}
pub(crate) use gpu_tests;

/// Asserts that `got` is within relative Frobenius error `tol` of `want` ([`rel_error`]).
pub fn assert_close(label: &str, got: &[f64], want: &[f64], tol: f64) {
    let err = rel_error(got, want);
    assert!(err <= tol, "{label}: rel err {err:.3e} > {tol:.0e}");
}

/// Widens to f64.
pub fn f64s<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}
