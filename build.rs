//! Compiles every `kernels/*.cu` into a fatbin embedded in the crate.
//!
//! - nvcc is found through `NVCC`, then `$CUDA_HOME/bin`, then `PATH`, then `/usr/local/cuda/bin`.
//! - Rebuilds: on a change under `kernels/` or `ptx/`, of `NVCC`, `CUDA_HOME`, `CUDA_COMPUTE_CAP`,
//!   `LORA_KERNELS_REQUIRE_KERNELS` or `LORA_KERNELS_DENY_SPILLS`, and of the resolved nvcc binary
//!   itself. `PATH` is watched only when it can change which nvcc resolves, that is when neither
//!   `NVCC` nor `CUDA_HOME` gave one (nvcc from `PATH`, from `/usr/local/cuda/bin`, or none): then
//!   adding or reordering a CUDA on `PATH` must rebuild, and a `PATH` change that resolves the same
//!   nvcc costs no recompilation, since each fatbin is kept while its key (the nvcc binary, the flags
//!   and every file of `kernels/`) is unchanged. With `NVCC` or `CUDA_HOME` set, `PATH` is ignored.
//! - Targets: SASS for sm_80, sm_86, sm_89 and sm_90a plus PTX for compute_80, or the comma list in
//!   `CUDA_COMPUTE_CAP` (e.g. `90a,80`: SASS for each, PTX for the lowest).
//! - The `.cu` files compile in parallel, one nvcc each, at most `NUM_JOBS` (cargo's `-j`) or the
//!   available parallelism at once.
//! - nvcc's `-Xptxas -v` report goes to `$OUT_DIR/ptxas-<kernel>.log`; any spill is a warning, or an
//!   error with `LORA_KERNELS_DENY_SPILLS=1`.
//! - A kernel that fails to compile (or spills under `LORA_KERNELS_DENY_SPILLS=1`) is named in a
//!   cargo warning and left out alone: its image is `None`, so its GPU ops return
//!   `Error::KernelsNotBuilt`, and the other kernels are unaffected. With
//!   `LORA_KERNELS_REQUIRE_KERNELS=1` it fails the build instead, naming the file and quoting nvcc's
//!   stderr.
//! - Without nvcc the crate embeds the committed PTX, `ptx/<stem>.ptx` (compute_80, made by the pinned
//!   nvcc with the PTX entry's flags; `scripts/bless-ptx.sh` regenerates it and
//!   `tests/committed_ptx.rs` fails when it is stale), NUL-terminated as `cuModuleLoadData` takes PTX
//!   text: a driver JIT-compiles it and the emulator runs it. A kernel whose PTX is missing is left
//!   out (its GPU ops return `Error::KernelsNotBuilt`). With `LORA_KERNELS_REQUIRE_KERNELS=1` a missing
//!   nvcc fails the build.
//! - Generates `$OUT_DIR/kernel_images.rs` (one `Option<&[u8]>` image per kernel, `KERNELS_BUILT`)
//!   and `$OUT_DIR/kernel_modules.rs` (the `KernelModule` enum: one variant per `kernels/*.cu`, the
//!   CamelCase of its stem, with `image()` and `file()`), which `src/device` includes.
//! - Never runs `nvidia-smi` and needs no GPU.
use std::collections::hash_map::DefaultHasher;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const DEFAULT_SASS: &[&str] = &["80", "86", "89", "90a"];
const DEFAULT_PTX: &str = "80";

/// Where nvcc was found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NvccFrom {
    /// `NVCC` or `$CUDA_HOME/bin`: `PATH` cannot change the choice.
    Explicit,
    /// `PATH` or `/usr/local/cuda/bin`: an nvcc earlier on `PATH` would win.
    Search,
}

/// One kernel's outcome.
enum Built {
    /// The fatbin (with nvcc) or the NUL-terminated committed PTX (without).
    Image(PathBuf),
    /// Left out, with the reason for the warning.
    Missing(String),
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernel_dir = manifest.join("kernels");
    let ptx_dir = manifest.join("ptx");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_COMPUTE_CAP",
        "LORA_KERNELS_REQUIRE_KERNELS",
        "LORA_KERNELS_DENY_SPILLS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed={}", kernel_dir.display());
    println!("cargo:rerun-if-changed={}", ptx_dir.display());

    let mut sources: Vec<PathBuf> = fs::read_dir(&kernel_dir)
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    sources.sort();
    for path in &sources {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let cu_files: Vec<&PathBuf> = sources
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    let stems: Vec<String> = cu_files
        .iter()
        .map(|cu| cu.file_stem().unwrap().to_string_lossy().to_string())
        .collect();

    let require = env::var("LORA_KERNELS_REQUIRE_KERNELS").is_ok_and(|v| v == "1");
    let deny_spills = env::var("LORA_KERNELS_DENY_SPILLS").is_ok_and(|v| v == "1");
    let nvcc = find_nvcc();
    match &nvcc {
        Some((path, from)) => {
            println!("cargo:rerun-if-changed={}", path.display());
            if *from == NvccFrom::Search {
                println!("cargo:rerun-if-env-changed=PATH");
            }
        }
        None => println!("cargo:rerun-if-env-changed=PATH"),
    }

    let built: Vec<Built> = match &nvcc {
        None => {
            let msg = "nvcc not found (NVCC, $CUDA_HOME/bin, PATH, /usr/local/cuda/bin)";
            if require {
                panic!("LORA_KERNELS_REQUIRE_KERNELS=1 but {msg}");
            }
            let built: Vec<Built> = stems
                .iter()
                .map(|stem| committed_ptx(&ptx_dir, &out_dir, stem))
                .collect();
            let missing: Vec<&str> = built
                .iter()
                .filter_map(|b| match b {
                    Built::Missing(m) => Some(m.as_str()),
                    Built::Image(_) => None,
                })
                .collect();
            if missing.is_empty() {
                println!(
                    "cargo:warning={msg}: embedding the committed PTX (ptx/*.ptx, compute_80), which \
                     the driver JIT-compiles at load; scripts/install-cuda-toolchain.sh gets nvcc"
                );
            } else {
                println!(
                    "cargo:warning={msg} and no committed PTX for {}: those kernels are left out \
                     (their GPU ops return KernelsNotBuilt); scripts/bless-ptx.sh regenerates ptx/",
                    missing.join(", ")
                );
            }
            built
        }
        Some((nvcc, _)) => {
            let (sass, ptx) = targets();
            let key_base = key_base(nvcc, &sass, &ptx, &sources);
            let results = compile_all(&cu_files, |cu| {
                compile(nvcc, cu, &kernel_dir, &out_dir, &sass, &ptx, &key_base)
            });
            let mut built = Vec::new();
            for (cu, result) in cu_files.iter().zip(results) {
                let file = format!("kernels/{}", cu.file_name().unwrap().to_string_lossy());
                let outcome = result.and_then(|(fatbin, report)| match spills(&report) {
                    Some(spills) if deny_spills => Err(format!(
                        "register spills in {file} (LORA_KERNELS_DENY_SPILLS=1): {spills}"
                    )),
                    Some(spills) => {
                        println!("cargo:warning=register spills in {file}: {spills}");
                        Ok(fatbin)
                    }
                    None => Ok(fatbin),
                });
                match outcome {
                    Ok(fatbin) => built.push(Built::Image(fatbin)),
                    Err(e) => {
                        if require {
                            panic!("LORA_KERNELS_REQUIRE_KERNELS=1 and {file} failed: {e}");
                        }
                        let first = e.lines().next().unwrap_or("kernel build failed");
                        println!(
                            "cargo:warning={file} left out (its GPU ops return KernelsNotBuilt): {first}"
                        );
                        built.push(Built::Missing(file));
                    }
                }
            }
            built
        }
    };

    let mut images = String::from("// Generated by build.rs: the embedded kernel images.\n");
    for (stem, b) in stems.iter().zip(&built) {
        let konst = stem.to_uppercase();
        match (b, nvcc.is_some()) {
            (Built::Image(path), true) => writeln!(
                images,
                "/// Fatbin of `kernels/{stem}.cu`.\npub const {konst}: Option<&[u8]> = Some(include_bytes!({:?}));",
                path.display().to_string()
            ),
            (Built::Image(path), false) => writeln!(
                images,
                "/// The committed PTX of `kernels/{stem}.cu` (`ptx/{stem}.ptx`, NUL-terminated; no nvcc).\npub const {konst}: Option<&[u8]> = Some(include_bytes!({:?}));",
                path.display().to_string()
            ),
            (Built::Missing(_), true) => writeln!(
                images,
                "/// `kernels/{stem}.cu` (not built: nvcc failed on it).\npub const {konst}: Option<&[u8]> = None;"
            ),
            (Built::Missing(_), false) => writeln!(
                images,
                "/// `kernels/{stem}.cu` (not built: no nvcc and no committed PTX).\npub const {konst}: Option<&[u8]> = None;"
            ),
        }
        .unwrap();
    }
    let all = built.iter().all(|b| matches!(b, Built::Image(_)));
    writeln!(images, "/// Whether every kernel is in this build (compiled, or the committed PTX).\npub const KERNELS_BUILT: bool = {all};").unwrap();
    fs::write(out_dir.join("kernel_images.rs"), images).unwrap();
    fs::write(out_dir.join("kernel_modules.rs"), kernel_modules(&stems)).unwrap();
}

/// The `KernelModule` enum: one variant per kernel file.
fn kernel_modules(stems: &[String]) -> String {
    let variants: Vec<String> = stems.iter().map(|s| camel_case(s)).collect();
    let mut out = String::from(
        "// Generated by build.rs from kernels/*.cu.\n\
         /// The kernel families, one `kernels/<stem>.cu` each (the variant is the stem in CamelCase).\n\
         #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]\n\
         pub(crate) enum KernelModule {\n",
    );
    for (stem, v) in stems.iter().zip(&variants) {
        writeln!(out, "    /// `kernels/{stem}.cu`.\n    {v},").unwrap();
    }
    out.push_str(
        "}\n\nimpl KernelModule {\n    \
         /// The embedded image (fatbin, or the committed PTX without nvcc); `None` when the kernel is\n    \
         /// not in this build.\n    \
         pub(crate) fn image(self) -> Option<&'static [u8]> {\n        match self {\n",
    );
    for (stem, v) in stems.iter().zip(&variants) {
        writeln!(
            out,
            "            KernelModule::{v} => crate::kernel_images::{},",
            stem.to_uppercase()
        )
        .unwrap();
    }
    out.push_str(
        "        }\n    }\n\n    \
         /// The kernel file, relative to the crate root (`kernels/<stem>.cu`).\n    \
         pub(crate) fn file(self) -> &'static str {\n        match self {\n",
    );
    for (stem, v) in stems.iter().zip(&variants) {
        writeln!(
            out,
            "            KernelModule::{v} => \"kernels/{stem}.cu\","
        )
        .unwrap();
    }
    out.push_str("        }\n    }\n}\n");
    out
}

/// `mixed_batch` -> `MixedBatch`.
fn camel_case(stem: &str) -> String {
    stem.split(['_', '-'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            let first = c.next().unwrap().to_ascii_uppercase();
            std::iter::once(first).chain(c).collect::<String>()
        })
        .collect()
}

/// `ptx/<stem>.ptx` NUL-terminated into `$OUT_DIR`, or why not.
fn committed_ptx(ptx_dir: &Path, out_dir: &Path, stem: &str) -> Built {
    let src = ptx_dir.join(format!("{stem}.ptx"));
    println!("cargo:rerun-if-changed={}", src.display());
    match fs::read(&src) {
        Ok(mut text) => {
            text.push(0);
            let dst = out_dir.join(format!("{stem}.ptx"));
            fs::write(&dst, text).unwrap();
            Built::Image(dst)
        }
        Err(_) => Built::Missing(format!("ptx/{stem}.ptx")),
    }
}

fn find_nvcc() -> Option<(PathBuf, NvccFrom)> {
    let exe = |p: PathBuf| if p.is_file() { Some(p) } else { None };
    if let Ok(p) = env::var("NVCC") {
        if let Some(p) = exe(PathBuf::from(p)) {
            return Some((p, NvccFrom::Explicit));
        }
    }
    if let Ok(home) = env::var("CUDA_HOME") {
        if let Some(p) = exe(Path::new(&home).join("bin/nvcc")) {
            return Some((p, NvccFrom::Explicit));
        }
    }
    if let Ok(path) = env::var("PATH") {
        for dir in env::split_paths(&path) {
            if let Some(p) = exe(dir.join("nvcc")) {
                return Some((p, NvccFrom::Search));
            }
        }
    }
    exe(PathBuf::from("/usr/local/cuda/bin/nvcc")).map(|p| (p, NvccFrom::Search))
}

/// (SASS targets, PTX target) from `CUDA_COMPUTE_CAP` or the defaults.
fn targets() -> (Vec<String>, String) {
    match env::var("CUDA_COMPUTE_CAP") {
        Ok(list) if !list.trim().is_empty() => {
            let mut caps: Vec<String> = list
                .split(',')
                .map(|c| c.trim().trim_start_matches("sm_").to_string())
                .filter(|c| !c.is_empty())
                .collect();
            caps.sort_by_key(|c| c.trim_end_matches('a').parse::<u32>().unwrap_or(u32::MAX));
            let ptx = caps[0].trim_end_matches('a').to_string();
            (caps, ptx)
        }
        _ => (
            DEFAULT_SASS.iter().map(|s| s.to_string()).collect(),
            DEFAULT_PTX.to_string(),
        ),
    }
}

/// What every fatbin depends on besides its own name: the nvcc binary (path, size, modification
/// time), the targets and every file of `kernels/` (a `.cu` includes the headers).
fn key_base(nvcc: &Path, sass: &[String], ptx: &str, sources: &[PathBuf]) -> String {
    let mut h = DefaultHasher::new();
    if let Ok(meta) = fs::metadata(nvcc) {
        meta.len().hash(&mut h);
        meta.modified().ok().hash(&mut h);
    }
    for path in sources {
        path.hash(&mut h);
        fs::read(path).unwrap_or_default().hash(&mut h);
    }
    format!(
        "nvcc {}\ntargets {sass:?} {ptx}\nflags {:?}\ninputs {:016x}\n",
        nvcc.display(),
        NVCC_FLAGS,
        h.finish()
    )
}

const NVCC_FLAGS: &[&str] = &[
    "-fatbin",
    "-O3",
    "-std=c++17",
    "--threads",
    "0",
    "-Xptxas",
    "-v",
    "-lineinfo",
];

/// Runs `job` on every file, at most `NUM_JOBS` (or the available parallelism) at once; the results
/// in file order.
fn compile_all<T: Send>(
    files: &[&PathBuf],
    job: impl Fn(&Path) -> Result<T, String> + Sync,
) -> Vec<Result<T, String>> {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = env::var("NUM_JOBS")
        .ok()
        .and_then(|j| j.parse::<usize>().ok())
        .unwrap_or(available)
        .min(available)
        .clamp(1, files.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<T, String>>>> =
        Mutex::new((0..files.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(file) = files.get(i) else { break };
                let result = job(file);
                results.lock().unwrap()[i] = Some(result);
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every file was compiled"))
        .collect()
}

/// Compiles `cu` into `$OUT_DIR/<stem>.fatbin` (kept when its key is unchanged): the fatbin and
/// ptxas's report, or nvcc's failure.
fn compile(
    nvcc: &Path,
    cu: &Path,
    include: &Path,
    out_dir: &Path,
    sass: &[String],
    ptx: &str,
    key_base: &str,
) -> Result<(PathBuf, String), String> {
    let stem = cu.file_stem().unwrap().to_string_lossy().to_string();
    let fatbin = out_dir.join(format!("{stem}.fatbin"));
    let log = out_dir.join(format!("ptxas-{stem}.log"));
    let key_file = out_dir.join(format!("{stem}.fatbin.key"));
    let key = format!("{key_base}file {}\n", cu.display());
    if fatbin.is_file() && fs::read_to_string(&key_file).ok().as_deref() == Some(key.as_str()) {
        if let Ok(report) = fs::read_to_string(&log) {
            return Ok((fatbin, report));
        }
    }
    let _ = fs::remove_file(&key_file);
    let mut cmd = Command::new(nvcc);
    cmd.args(NVCC_FLAGS)
        .arg("-I")
        .arg(include)
        .arg("-o")
        .arg(&fatbin);
    for cap in sass {
        cmd.arg(format!("-gencode=arch=compute_{cap},code=sm_{cap}"));
    }
    cmd.arg(format!("-gencode=arch=compute_{ptx},code=compute_{ptx}"));
    cmd.arg(cu);
    let output = cmd
        .output()
        .map_err(|e| format!("failed to run {}: {e}", nvcc.display()))?;
    let report = String::from_utf8_lossy(&output.stderr).to_string();
    fs::write(&log, &report).unwrap();
    if !output.status.success() {
        return Err(format!("nvcc failed on {}:\n{report}", cu.display()));
    }
    fs::write(&key_file, key).unwrap();
    Ok((fatbin, report))
}

/// The spill lines of a ptxas report, joined, or `None` when nothing spills.
fn spills(report: &str) -> Option<String> {
    let spills: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("spill stores") && !l.contains(" 0 bytes spill stores"))
        .chain(
            report
                .lines()
                .filter(|l| l.contains("spill loads") && !l.contains(" 0 bytes spill loads")),
        )
        .collect();
    (!spills.is_empty()).then(|| spills.join(" | "))
}
