//! The committed `ptx/<stem>.ptx` must equal what the pinned nvcc (13.0.88) makes of
//! `kernels/<stem>.cu` with build.rs's flags for the PTX entry (`-O3 -std=c++17 -lineinfo -I kernels`,
//! compute_80). build.rs embeds these files when nvcc is absent, so a clone without CUDA still has
//! kernels (the emulator runs them; a real driver JIT-compiles them).
//!
//! The files are made identical on every machine: nvcc is run from the repository root on
//! `kernels/<stem>.cu`, then
//! - `.file` paths under the repository become relative (`kernels/dora.cu`), paths in the CUDA
//!   toolkit's include folder become `<cuda>/include/...`, any other path (the host compiler's
//!   headers) becomes `<host>/<file name>`;
//! - the module hash nvcc derives from the source file's absolute path, which appears in the
//!   mangled names of internal-linkage symbols (`_INTERNAL_<8 hex>_`, `_GLOBAL__N__<8 hex>_`), becomes
//!   `00000000` (a one-to-one renaming within the file; kernel entry names are `extern "C"`).
//!
//! Without nvcc 13.0.88 the test says so and passes, unless `LORA_KERNELS_REQUIRE_KERNELS=1` (CI).
//! Re-bless after changing a kernel: `scripts/bless-ptx.sh`
//! (that is `LORA_KERNELS_BLESS=1 cargo test --test committed_ptx` with the pinned nvcc).
use std::path::{Path, PathBuf};
use std::process::Command;

const PINNED: &str = "V13.0.88";
const PTX_ARCH: &str = "compute_80";

/// nvcc as build.rs finds it: `NVCC`, `$CUDA_HOME/bin`, `PATH`, `/usr/local/cuda/bin`.
fn find_nvcc() -> Option<PathBuf> {
    let exe = |p: PathBuf| if p.is_file() { Some(p) } else { None };
    if let Some(p) = std::env::var_os("NVCC").and_then(|p| exe(PathBuf::from(p))) {
        return Some(p);
    }
    if let Some(p) = std::env::var_os("CUDA_HOME").and_then(|h| exe(Path::new(&h).join("bin/nvcc")))
    {
        return Some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if let Some(p) = exe(dir.join("nvcc")) {
                return Some(p);
            }
        }
    }
    exe(PathBuf::from("/usr/local/cuda/bin/nvcc"))
}

/// Replaces the module hash `hash` after `_INTERNAL_` and `_GLOBAL__N__` with zeros.
fn zero_hash(text: &str, hash: &str) -> String {
    text.replace(&format!("_INTERNAL_{hash}_"), "_INTERNAL_00000000_")
        .replace(&format!("_GLOBAL__N__{hash}_"), "_GLOBAL__N__00000000_")
}

/// The module hashes in `text` (8 hex digits after `_INTERNAL_`).
fn module_hashes(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for (i, _) in text.match_indices("_INTERNAL_") {
        let tail = &text[i + "_INTERNAL_".len()..];
        let hex = tail.get(..8).unwrap_or("");
        if hex.len() == 8
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
            && tail.as_bytes().get(8) == Some(&b'_')
            && !found.iter().any(|h| h == hex)
        {
            found.push(hex.to_string());
        }
    }
    found
}

/// One `.file` path, machine-independent.
fn normalise_path(path: &str, repo_prefixes: &[String], cuda_prefixes: &[String]) -> String {
    for p in repo_prefixes {
        if let Some(rest) = path.strip_prefix(p.as_str()) {
            return rest.to_string();
        }
    }
    for p in cuda_prefixes {
        if let Some(rest) = path.strip_prefix(p.as_str()) {
            return format!("<cuda>/include/{rest}");
        }
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    format!("<host>/{name}")
}

/// nvcc's PTX made machine-independent (see the file's doc). The `.debug_str` section that
/// `-lineinfo` adds holds the same mangled names as `.b8` byte lists (40 to a line): they are decoded,
/// renamed the same way and written back with each line's byte count unchanged.
fn normalise(ptx: &str, repo: &Path, nvcc: &Path) -> String {
    let mut repo_prefixes = vec![format!("{}/", repo.display())];
    if let Ok(c) = repo.canonicalize() {
        repo_prefixes.push(format!("{}/", c.display()));
    }
    let bin = nvcc.parent().unwrap_or(Path::new("."));
    let mut cuda_prefixes = vec![format!("{}/..//include/", bin.display())];
    if let Ok(c) = bin.canonicalize() {
        cuda_prefixes.push(format!("{}/..//include/", c.display()));
        if let Some(top) = c.parent() {
            cuda_prefixes.push(format!("{}/include/", top.display()));
        }
    }
    let mut lines: Vec<String> = Vec::new();
    // (line index, byte count) of each `.b8` line of `.debug_str`, and their bytes in order.
    let mut byte_lines: Vec<(usize, usize)> = Vec::new();
    let mut bytes: Vec<u8> = Vec::new();
    let mut in_debug_str = false;
    for line in ptx.split('\n') {
        let t = line.trim();
        if t.starts_with(".section") {
            in_debug_str = t.contains(".debug_str");
        } else if in_debug_str && t == "}" {
            in_debug_str = false;
        } else if in_debug_str && t.starts_with(".b8 ") {
            let values: Option<Vec<u8>> =
                t[4..].split(',').map(|v| v.trim().parse().ok()).collect();
            if let Some(values) = values {
                byte_lines.push((lines.len(), values.len()));
                bytes.extend(values);
            }
        }
        match (t.starts_with(".file"), line.find('"'), line.rfind('"')) {
            (true, Some(a), Some(b)) if b > a => {
                let path = normalise_path(&line[a + 1..b], &repo_prefixes, &cuda_prefixes);
                lines.push(format!("{}{path}{}", &line[..=a], &line[b..]));
            }
            _ => lines.push(line.to_string()),
        }
    }
    let mut hashes = module_hashes(&lines.join("\n"));
    for h in module_hashes(&String::from_utf8_lossy(&bytes)) {
        if !hashes.contains(&h) {
            hashes.push(h);
        }
    }
    for hash in &hashes {
        for line in lines.iter_mut() {
            if line.contains(hash.as_str()) {
                *line = zero_hash(line, hash);
            }
        }
        for marker in ["_INTERNAL_", "_GLOBAL__N__"] {
            let from = format!("{marker}{hash}_").into_bytes();
            let to = format!("{marker}00000000_").into_bytes();
            let mut i = 0;
            while i + from.len() <= bytes.len() {
                if bytes[i..i + from.len()] == from[..] {
                    bytes[i..i + from.len()].copy_from_slice(&to);
                    i += from.len();
                } else {
                    i += 1;
                }
            }
        }
    }
    let mut at = 0;
    for (index, count) in byte_lines {
        let indent: String = lines[index]
            .chars()
            .take_while(|c| c.is_whitespace())
            .collect();
        let values: Vec<String> = bytes[at..at + count]
            .iter()
            .map(|b| b.to_string())
            .collect();
        lines[index] = format!("{indent}.b8 {}", values.join(","));
        at += count;
    }
    lines.join("\n")
}

/// The normalised PTX of `kernels/<stem>.cu`.
fn generate(nvcc: &Path, repo: &Path, stem: &str, scratch: &Path) -> String {
    let out = scratch.join(format!("{stem}.ptx"));
    // Run from the repository root on relative paths, as documented above.
    let output = Command::new(nvcc)
        .current_dir(repo)
        .args(["-ptx", &format!("-arch={PTX_ARCH}")])
        .args(["-O3", "-std=c++17", "-lineinfo", "-I", "kernels"])
        .arg("-o")
        .arg(&out)
        .arg(format!("kernels/{stem}.cu"))
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", nvcc.display()));
    assert!(
        output.status.success(),
        "nvcc failed on kernels/{stem}.cu:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("nvcc wrote the PTX");
    normalise(&text, repo, nvcc)
}

fn stems(repo: &Path) -> Vec<String> {
    let mut stems: Vec<String> = std::fs::read_dir(repo.join("kernels"))
        .expect("kernels/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    stems.sort();
    stems
}

#[test]
fn committed_ptx_matches_the_kernels() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let require = std::env::var("LORA_KERNELS_REQUIRE_KERNELS").is_ok_and(|v| v == "1");
    let bless = std::env::var("LORA_KERNELS_BLESS").is_ok_and(|v| v == "1");
    let Some(nvcc) = find_nvcc() else {
        assert!(
            !require && !bless,
            "no nvcc (NVCC, $CUDA_HOME/bin, PATH, /usr/local/cuda/bin) to regenerate ptx/; \
             eval \"$(scripts/install-cuda-toolchain.sh)\" first"
        );
        println!("SKIPPED: nvcc not found, the committed PTX was not regenerated");
        return;
    };
    let version = Command::new(&nvcc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    if !version.contains(PINNED) {
        assert!(
            !require && !bless,
            "{} is not the pinned nvcc {PINNED} (scripts/install-cuda-toolchain.sh): {version}",
            nvcc.display()
        );
        println!("SKIPPED: {} is not nvcc {PINNED}", nvcc.display());
        return;
    }
    let scratch = std::env::temp_dir().join(format!("lora-kernels-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut stale = Vec::new();
    for stem in stems(repo) {
        let fresh = generate(&nvcc, repo, &stem, &scratch);
        let path = repo.join(format!("ptx/{stem}.ptx"));
        if bless {
            std::fs::create_dir_all(repo.join("ptx")).unwrap();
            std::fs::write(&path, &fresh).unwrap();
            println!("blessed ptx/{stem}.ptx");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(fresh.as_str()) {
            stale.push(format!("ptx/{stem}.ptx"));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        stale.is_empty(),
        "{} differ from what nvcc {PINNED} makes of kernels/*.cu; re-bless with \
         scripts/bless-ptx.sh (LORA_KERNELS_BLESS=1 cargo test --test committed_ptx)",
        stale.join(", ")
    );
}

#[test]
fn normalisation_is_machine_independent() {
    let nvcc = Path::new("/opt/cuda-x/bin/nvcc");
    let raw = "\t.file\t1 \"/home/u/repo/kernels/dora.cu\"\n\
               \t.file\t2 \"/opt/cuda-x/bin/..//include/cuda_fp16.hpp\"\n\
               \t.file\t3 \"/usr/include/c++/12/cmath\"\n\
               .shared .b8 _ZZN39_INTERNAL_3e730396_7_dora_cu_x_GLOBAL__N__3e730396_7_dora_cuE1s[4];\n\
               \t.section\t.debug_str\n\t{\n\
               .b8 95,73,78,84,69,82,78,65,76,95,51,101,55\n.b8 51,48,51,57,54,95,0\n\t}\n";
    let got = normalise(raw, Path::new("/home/u/repo"), nvcc);
    assert_eq!(
        got,
        "\t.file\t1 \"kernels/dora.cu\"\n\
         \t.file\t2 \"<cuda>/include/cuda_fp16.hpp\"\n\
         \t.file\t3 \"<host>/cmath\"\n\
         .shared .b8 _ZZN39_INTERNAL_00000000_7_dora_cu_x_GLOBAL__N__00000000_7_dora_cuE1s[4];\n\
         \t.section\t.debug_str\n\t{\n\
         .b8 95,73,78,84,69,82,78,65,76,95,48,48,48\n.b8 48,48,48,48,48,95,0\n\t}\n"
    );
}
