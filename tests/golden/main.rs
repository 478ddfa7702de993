//! Runs every golden case (computed by the real peft and bitsandbytes) through the crate: on the CPU
//! reference always, and through the kernels on the GPU, or on the PTX emulator where no driver loads
//! (`tests/common/driver.rs`; `LORA_KERNELS_EMULATOR=0` never, `=1` always).
//!
//! Cases come from `LORA_KERNELS_GOLDEN_DIR` when set (default `tests/data/golden`). One line per case
//! and target (`on cpu`, `on gpu` or `on emulator`), then `golden: P passed, F failed, S skipped`.
//! Kinds the crate does not support yet are skipped and say so. With `LORA_KERNELS_REQUIRE_GPU=1` a
//! missing GPU fails the run; a device that fails to open (on the emulator, say) fails every case's
//! GPU line.
//!
//! This file is the runner (dispatch by kind and dtype, the per-case lines, the summary); the checks
//! of each family are in its module: [`lora`], [`dora`], [`mixed`] (`mixed_batch`), [`adapters`]
//! (`adapter_dir`), [`quant4`] and [`int8`] (with their `qlora` / `qdora` layers, whose shared part is
//! [`quantized`]), and the gradients of the `*_backward` kinds in [`backward`].
#[path = "../common/mod.rs"]
mod common;

mod adapters;
mod backward;
mod dora;
mod int8;
mod lora;
mod mixed;
mod quant4;
mod quantized;

use adapters::adapter_dir;
use backward::{backward_cpu, backward_gpu};
use dora::{dora_cpu, dora_gpu};
use half::{bf16, f16};
use int8::{int8_cpu, int8_gpu, int8_layer_cpu, int8_layer_gpu};
use lora::{lora_cpu, lora_gpu};
use lora_kernels::golden::{discover, golden_dir, rel_error, GoldenCase};
use lora_kernels::{DType, Gpu, Result};
use mixed::{mixed_batch_cpu, mixed_batch_gpu};
use quant4::{quant4_cpu, quant4_gpu, quant4_layer_cpu, quant4_layer_gpu};

/// The case whose device outputs [`common::dump`] writes (`LORA_KERNELS_DUMP_DIR`; the GPU check
/// compares the GPU's with the emulator's).
static DUMPING: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Outcome of one case on one target: the worst relative error and the tolerance it met or missed.
struct Check {
    worst: f64,
    failures: Vec<String>,
}

impl Check {
    fn new() -> Self {
        Check {
            worst: 0.0,
            failures: Vec::new(),
        }
    }
    fn require(&mut self, what: &str, ok: bool) {
        if !ok {
            self.failures.push(format!("{what}: differs"));
        }
    }
    fn compare(&mut self, what: &str, out: &[f64], reference: &[f64], tol: f64) {
        if let Some(case) = DUMPING.lock().unwrap_or_else(|e| e.into_inner()).as_deref() {
            common::dump(&format!("{case}.{what}"), out, Some(tol));
        }
        let err = rel_error(out, reference);
        self.worst = self.worst.max(err);
        if err.is_nan() || err > tol {
            self.failures
                .push(format!("{what}: rel err {err:.3e} > {tol:.0e}"));
        }
    }
}

macro_rules! by_dtype {
    ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F16 => $f::<f16>($($arg),*),
            DType::BF16 => $f::<bf16>($($arg),*),
        }
    };
}

/// Runs `case` on the CPU, or on `gpu`: `None` when its kind is not supported yet.
fn run(case: &GoldenCase, gpu: Option<&Gpu>) -> Option<Result<Check>> {
    match case.kind.as_str() {
        "lora" => Some(case.dtype().and_then(|d| match gpu {
            None => by_dtype!(d, lora_cpu(case)),
            Some(g) => by_dtype!(d, lora_gpu(g, case)),
        })),
        "dora" => Some(case.dtype().and_then(|d| match gpu {
            None => by_dtype!(d, dora_cpu(case)),
            Some(g) => by_dtype!(d, dora_gpu(g, case)),
        })),
        "mixed_batch" => Some(case.dtype().and_then(|d| match gpu {
            None => by_dtype!(d, mixed_batch_cpu(case)),
            Some(g) => by_dtype!(d, mixed_batch_gpu(g, case)),
        })),
        "adapter_dir" => Some(adapter_dir(case, gpu)),
        "quant4" => Some(case.dtype().and_then(|d| match gpu {
            None => by_dtype!(d, quant4_cpu(case)),
            Some(g) => by_dtype!(d, quant4_gpu(g, case)),
        })),
        "qlora" | "qdora" if case.meta("quant").ok() == Some("nf4") => {
            Some(case.dtype().and_then(|d| match gpu {
                None => by_dtype!(d, quant4_layer_cpu(case)),
                Some(g) => by_dtype!(d, quant4_layer_gpu(g, case)),
            }))
        }
        "qlora" | "qdora" if case.meta("quant").ok() == Some("int8") => {
            Some(case.dtype().and_then(|d| match gpu {
                None => by_dtype!(d, int8_layer_cpu(case)),
                Some(g) => by_dtype!(d, int8_layer_gpu(g, case)),
            }))
        }
        "lora_backward" | "dora_backward" | "qlora_backward" | "qdora_backward" => {
            Some(case.dtype().and_then(|d| match gpu {
                None => by_dtype!(d, backward_cpu(case)),
                Some(g) => by_dtype!(d, backward_gpu(g, case)),
            }))
        }
        "int8" => Some(case.dtype().and_then(|d| match gpu {
            None => by_dtype!(d, int8_cpu(case)),
            Some(g) => by_dtype!(d, int8_gpu(g, case)),
        })),
        _ => None,
    }
}

fn main() {
    let dir = golden_dir();
    let paths =
        discover(&dir).unwrap_or_else(|e| panic!("no golden cases in {}: {e}", dir.display()));
    assert!(!paths.is_empty(), "no golden cases in {}", dir.display());
    let opened = common::open_gpu();
    if let Err(e) = &opened {
        println!("GPU target: {e}");
    }
    let device_target = common::driver::target();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for path in &paths {
        let case = match GoldenCase::load(path) {
            Ok(c) => c,
            Err(e) => {
                println!("case {} (?) on cpu: FAILED to load: {e}", path.display());
                failed += 1;
                continue;
            }
        };
        if opened.is_err() {
            println!(
                "case {} ({}) on {device_target}: FAILED: no device (above)",
                case.name, case.kind
            );
            failed += 1;
        }
        let targets: Vec<(&str, Option<&Gpu>)> = match &opened {
            Ok(Some(g)) => vec![("cpu", None), (device_target, Some(g))],
            _ => vec![("cpu", None)],
        };
        for (target, g) in targets {
            let head = format!("case {} ({}) on {target}", case.name, case.kind);
            *DUMPING.lock().unwrap_or_else(|e| e.into_inner()) =
                g.is_some().then(|| case.name.clone());
            match run(&case, g) {
                None => {
                    println!("{head}: skipped: {} not supported yet", case.kind);
                    skipped += 1;
                }
                Some(Ok(check)) if check.failures.is_empty() => {
                    println!("{head}: ok, rel err {:.3e}", check.worst);
                    passed += 1;
                }
                Some(Ok(check)) => {
                    println!("{head}: FAILED {}", check.failures.join("; "));
                    failed += 1;
                }
                Some(Err(e)) => {
                    println!("{head}: FAILED {e}");
                    failed += 1;
                }
            }
        }
    }
    println!("golden: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        std::process::exit(1);
    }
}
