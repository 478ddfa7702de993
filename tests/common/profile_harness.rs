//! Runs each kernel family at small representative shapes on the emulator with its profile
//! counters on (`LORA_KERNELS_EMULATOR_PROFILE`), and turns the counts into the figures of
//! BENCHMARKS.md's "Counted on the emulator" table and `tests/data/profile_baseline.json`.
//! Shared by `examples/profile.rs` (the report) and `tests/profile_baseline.rs` (the CI check).
//!
//! Everything here is counted or modelled, never measured: the estimated H200 time is the
//! roofline of [`Model`], calibrated against BENCHMARKS.md's one measured kernel.
#![allow(dead_code)]
use half::bf16;
use lora_kernels::{Gpu, LoraAdapter, LoraShape};
use serde_json::Value;
use std::path::PathBuf;

/// One profiled call: its label, the floor bytes (each input read once, each output written
/// once, from the shape) and the counters of every launch it made.
pub struct Case {
    pub name: String,
    pub floor_bytes: u64,
    pub launches: Vec<Value>,
}

fn sum(c: &Case, f: impl Fn(&Value) -> u64) -> u64 {
    c.launches.iter().map(f).sum()
}

fn at(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64().unwrap_or(0)
}

impl Case {
    pub fn kernels(&self) -> String {
        let mut names: Vec<String> = Vec::new();
        for l in &self.launches {
            let k = l["kernel"].as_str().unwrap_or("?").to_string();
            if !names.contains(&k) {
                names.push(k);
            }
        }
        names.join(" + ")
    }
    pub fn dram_bytes(&self) -> u64 {
        sum(self, |v| at(v, &["l2_model", "dram_bytes"]))
    }
    pub fn requested_bytes(&self) -> u64 {
        sum(self, |v| at(v, &["global", "bytes"]))
    }
    pub fn sector_bytes(&self) -> u64 {
        32 * sum(self, |v| at(v, &["global", "sectors"]))
    }
    pub fn unique_bytes(&self) -> u64 {
        sum(self, |v| at(v, &["unique_bytes"]))
    }
    pub fn dram_over_floor(&self) -> f64 {
        self.dram_bytes() as f64 / self.floor_bytes as f64
    }
    /// Global sectors per request, and what a request of the same bytes needs at best
    /// (bytes per request / 32).
    pub fn sectors_per_request(&self) -> (f64, f64) {
        let req = sum(self, |v| at(v, &["global", "requests"])).max(1) as f64;
        let sec = sum(self, |v| at(v, &["global", "sectors"])) as f64;
        let ideal = (self.requested_bytes() as f64 / 32.0 / req).max(1.0);
        (sec / req, ideal)
    }
    /// Shared requests, and excess wavefronts (bank conflicts) per shared request.
    pub fn shared_conflicts(&self) -> (u64, f64) {
        let kinds = ["shared_load", "shared_store", "shared_atomic"];
        let req: u64 = kinds
            .iter()
            .map(|k| sum(self, |v| at(v, &[k, "requests"])))
            .sum();
        let extra: u64 = kinds
            .iter()
            .map(|k| {
                sum(self, |v| {
                    at(v, &[k, "wavefronts"]).saturating_sub(at(v, &[k, "ideal_wavefronts"]))
                })
            })
            .sum();
        (req, extra as f64 / req.max(1) as f64)
    }
    pub fn mma(&self) -> u64 {
        sum(self, |v| at(v, &["mma"]) + at(v, &["wmma"]))
    }
    pub fn matrix_flops(&self) -> u64 {
        sum(self, |v| at(v, &["matrix_flops"]))
    }
    pub fn warp_instructions(&self) -> u64 {
        sum(self, |v| at(v, &["warp_instructions"]))
    }
}

/// The roofline model of an H200 (a model, not a measurement):
/// `t = Σ launches (launch_us) + max(dram / copy_bw, flops / tensor_rate, warp instructions /
/// issue_rate)`.
pub struct Model {
    /// Device-to-device copy bandwidth measured on the H200 (BENCHMARKS.md, 2026-11-27).
    pub copy_bw: f64,
    /// cuBLAS bf16 8192³ on the same card and day (BENCHMARKS.md peers table).
    pub tensor_rate: f64,
    /// 132 SMs × 4 schedulers × 1 warp instruction per clock × 1.98 GHz (boost clock).
    pub issue_rate: f64,
    /// Fixed cost per launch, µs (calibrated: see [`Model::calibrated`]).
    pub launch_us: f64,
}

impl Model {
    /// The launch cost fitted to one measured point (BENCHMARKS.md: fused LoRA forward, bf16,
    /// M = 1, K = N = 4096, r = 16: 11.4 µs), the other constants from spec and measurement.
    pub fn calibrated() -> Model {
        Model {
            copy_bw: 4237e9,
            tensor_rate: 762e12,
            issue_rate: 132.0 * 4.0 * 1.98e9,
            launch_us: LAUNCH_US,
        }
    }
    pub fn body_us(&self, c: &Case) -> f64 {
        let mem = c.dram_bytes() as f64 / self.copy_bw;
        let mma = c.matrix_flops() as f64 / self.tensor_rate;
        let issue = c.warp_instructions() as f64 / self.issue_rate;
        mem.max(mma).max(issue) * 1e6
    }
    pub fn time_us(&self, c: &Case) -> f64 {
        self.launch_us * c.launches.len() as f64 + self.body_us(c)
    }
}

/// The calibrated launch cost (µs); `examples/profile.rs --calibrate` recomputes it.
pub const LAUNCH_US: f64 = 11.27;

fn profile_file() -> PathBuf {
    std::env::temp_dir().join(format!("lora-kernels-profile-{}.jsonl", std::process::id()))
}

/// Runs `f` with the emulator's profile on; returns the JSON line of every launch it made.
pub fn profiled(gpu: &Gpu, f: impl FnOnce()) -> Vec<Value> {
    let path = profile_file();
    let _ = std::fs::remove_file(&path);
    std::env::set_var("LORA_KERNELS_EMULATOR_PROFILE", &path);
    f();
    gpu.synchronize().expect("synchronize");
    std::env::remove_var("LORA_KERNELS_EMULATOR_PROFILE");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    text.lines()
        .map(|l| serde_json::from_str(l).expect("profile line is JSON"))
        .collect()
}

/// Deterministic values in [-1, 1).
fn vals(n: usize, seed: u64) -> Vec<bf16> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        })
        .collect()
}

const E: u64 = 2; // bytes of a bf16

/// The fused LoRA forward `y = base + s·(x·Aᵀ)·Bᵀ` (bf16).
pub fn lora_forward(gpu: &Gpu, m: usize, k: usize, n: usize, r: usize) -> Case {
    let s = gpu.stream();
    let x = s.clone_htod(&vals(m * k, 1)).unwrap();
    let base = s.clone_htod(&vals(m * n, 2)).unwrap();
    let a = s.clone_htod(&vals(r * k, 3)).unwrap();
    let b = s.clone_htod(&vals(n * r, 4)).unwrap();
    let mut y = s.alloc_zeros::<bf16>(m * n).unwrap();
    let launches = profiled(gpu, || {
        gpu.lora_forward(
            &x,
            &base,
            &[LoraAdapter::new(&a, &b, r, 0.5)],
            LoraShape::new(m, k, n),
            &mut y,
        )
        .unwrap()
    });
    let (m, k, n, r) = (m as u64, k as u64, n as u64, r as u64);
    Case {
        name: format!("lora_forward m={m} k={k} n={n} r={r}"),
        floor_bytes: E * (m * k + m * n + r * k + n * r + m * n),
        launches,
    }
}

/// The dense product `y = x·Wᵀ` (bf16; GEMV up to 8 rows, tiled above).
pub fn linear(gpu: &Gpu, m: usize, k: usize, n: usize) -> Case {
    let s = gpu.stream();
    let x = s.clone_htod(&vals(m * k, 5)).unwrap();
    let w = s.clone_htod(&vals(n * k, 6)).unwrap();
    let mut y = s.alloc_zeros::<bf16>(m * n).unwrap();
    let launches = profiled(gpu, || {
        gpu.linear(&x, &w, None, LoraShape::new(m, k, n), &mut y)
            .unwrap()
    });
    let (m, k, n) = (m as u64, k as u64, n as u64);
    Case {
        name: format!("linear m={m} k={k} n={n}"),
        floor_bytes: E * (m * k + n * k + m * n),
        launches,
    }
}

/// The dense product with one adapter's LoRA term, `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ` (bf16): at decode
/// sizes the `lora_shrink` launch and the GEMV with the term in its epilogue.
pub fn linear_lora(gpu: &Gpu, m: usize, k: usize, n: usize, r: usize) -> Case {
    let s = gpu.stream();
    let x = s.clone_htod(&vals(m * k, 40)).unwrap();
    let w = s.clone_htod(&vals(n * k, 41)).unwrap();
    let a = s.clone_htod(&vals(r * k, 42)).unwrap();
    let b = s.clone_htod(&vals(n * r, 43)).unwrap();
    let mut y = s.alloc_zeros::<bf16>(m * n).unwrap();
    let adapters = [LoraAdapter::new(&a, &b, r, 0.5)];
    let launches = profiled(gpu, || {
        gpu.linear_lora_forward(&x, &w, None, &adapters, LoraShape::new(m, k, n), &mut y)
            .unwrap()
    });
    let (m, k, n, r) = (m as u64, k as u64, n as u64, r as u64);
    Case {
        name: format!("linear_lora m={m} k={k} n={n} r={r}"),
        floor_bytes: E * (m * k + n * k + r * k + n * r + m * n),
        launches,
    }
}

/// NF4 (blocksize 64, f32 absmax) `y = x·dequant(W)ᵀ`.
pub fn nf4_linear(gpu: &Gpu, m: usize, k: usize, n: usize) -> Case {
    use lora_kernels::quant4::{reference::quantize, QuantType};
    let s = gpu.stream();
    let wq = quantize(&vals(n * k, 7), [n, k], 64, QuantType::Nf4, false).unwrap();
    let wd = gpu.upload_quant4(&wq).unwrap();
    let x = s.clone_htod(&vals(m * k, 8)).unwrap();
    let mut y = s.alloc_zeros::<bf16>(m * n).unwrap();
    let launches = profiled(gpu, || gpu.quant4_linear(&x, &wd, None, m, &mut y).unwrap());
    let (m, k, n) = (m as u64, k as u64, n as u64);
    Case {
        name: format!("nf4_linear m={m} k={k} n={n}"),
        floor_bytes: n * k / 2 + 4 * (n * k / 64) + E * (m * k + m * n),
        launches,
    }
}

/// int8 weight-only (row-wise absmax) `y = x·(CB·SCB/127)ᵀ`.
pub fn int8_linear(gpu: &Gpu, m: usize, k: usize, n: usize) -> Case {
    use lora_kernels::int8::reference::quantize_rowwise;
    let s = gpu.stream();
    let wq = quantize_rowwise(&vals(n * k, 9), [n, k]).unwrap();
    let wd = gpu.upload_int8(&wq).unwrap();
    let x = s.clone_htod(&vals(m * k, 10)).unwrap();
    let mut y = s.alloc_zeros::<bf16>(m * n).unwrap();
    let launches = profiled(gpu, || gpu.int8_linear(&x, &wd, None, m, &mut y).unwrap());
    let (m, k, n) = (m as u64, k as u64, n as u64);
    Case {
        name: format!("int8_linear m={m} k={k} n={n}"),
        floor_bytes: n * k + 4 * n + E * (m * k + m * n),
        launches,
    }
}

/// The mixed batch: rows alternate between two adapters of ranks `r` and `2r`.
pub fn mixed(gpu: &Gpu, m: usize, k: usize, n: usize, r: usize) -> Case {
    let s = gpu.stream();
    let ranks = [r, 2 * r];
    let dev: Vec<_> = ranks
        .iter()
        .enumerate()
        .map(|(i, &rr)| {
            (
                s.clone_htod(&vals(rr * k, 20 + i as u64)).unwrap(),
                s.clone_htod(&vals(n * rr, 30 + i as u64)).unwrap(),
            )
        })
        .collect();
    let adapters: Vec<_> = dev
        .iter()
        .zip(ranks)
        .map(|((a, b), rr)| LoraAdapter::new(a, b, rr, 0.5))
        .collect();
    let table = gpu.mixed_adapters(&adapters, k, n).unwrap();
    let idx: Vec<i32> = (0..m).map(|i| (i % 2) as i32).collect();
    let idx = s.clone_htod(&idx).unwrap();
    let x = s.clone_htod(&vals(m * k, 11)).unwrap();
    let base = s.clone_htod(&vals(m * n, 12)).unwrap();
    let mut y = s.alloc_zeros::<bf16>(m * n).unwrap();
    let launches = profiled(gpu, || {
        gpu.lora_forward_mixed(&x, &base, &table, &idx, LoraShape::new(m, k, n), &mut y)
            .unwrap()
    });
    let used: u64 = if m > 1 { (3 * r) as u64 } else { r as u64 };
    let (m, k, n) = (m as u64, k as u64, n as u64);
    Case {
        name: format!("mixed m={m} k={k} n={n} r={r},{}", 2 * r),
        floor_bytes: E * (m * k + m * n + used * (k + n) + m * n) + 4 * m,
        launches,
    }
}

/// The DoRA factor `m / ‖W + s·B·A‖` over the rows of W (one pass over W); the pass also writes
/// the norms (`DoraFactor::norms`, the backward's detached norm).
pub fn dora_factor(gpu: &Gpu, k: usize, n: usize, r: usize) -> Case {
    let s = gpu.stream();
    let w = s.clone_htod(&vals(n * k, 13)).unwrap();
    let a = s.clone_htod(&vals(r * k, 14)).unwrap();
    let b = s.clone_htod(&vals(n * r, 15)).unwrap();
    let mag = s.clone_htod(&vals(n, 16)).unwrap();
    let launches = profiled(gpu, || {
        gpu.dora_factor(&w, LoraAdapter::new(&a, &b, r, 0.5), &mag, k, n)
            .unwrap();
    });
    let (k, n, r) = (k as u64, n as u64, r as u64);
    Case {
        name: format!("dora_factor k={k} n={n} r={r}"),
        // W, A, B, magnitude in; the f32 factor and the f32 norm out.
        floor_bytes: E * (n * k + r * k + n * r + n) + 4 * n + 4 * n,
        launches,
    }
}

/// The training backward `Gpu::backward_chain` of one adapter (bf16, scale 0.5, dX written, not
/// accumulated): LoRA, or DoRA (`dora`: with magnitude, f32 norm, the saved base and a bias), on a
/// dense W or an NF4 one (`nf4`: blocksize 64, f32 absmax, dequantised on the fly for dX).
pub fn backward(gpu: &Gpu, m: usize, k: usize, n: usize, r: usize, dora: bool, nf4: bool) -> Case {
    use lora_kernels::linear::QuantizedWeight;
    use lora_kernels::lora_backward::{BackwardStep, DoraSaved, DxWeight};
    use lora_kernels::quant4::{reference::quantize, QuantType};
    let s = gpu.stream();
    let x = s.clone_htod(&vals(m * k, 50)).unwrap();
    let g = s.clone_htod(&vals(m * n, 51)).unwrap();
    let a = s.clone_htod(&vals(r * k, 52)).unwrap();
    let b = s.clone_htod(&vals(n * r, 53)).unwrap();
    let w_host = vals(n * k, 54);
    let w = s.clone_htod(&w_host).unwrap();
    let wq = nf4.then(|| {
        let q = quantize(&w_host, [n, k], 64, QuantType::Nf4, false).unwrap();
        gpu.upload_quant4(&q).unwrap()
    });
    let magnitude = s.clone_htod(&vals(n, 55)).unwrap();
    let norm: Vec<f32> = vals(n, 56).iter().map(|v| 0.5 + v.to_f32().abs()).collect();
    let norm = s.clone_htod(&norm).unwrap();
    let base = s.clone_htod(&vals(m * n, 57)).unwrap();
    let bias = s.clone_htod(&vals(n, 58)).unwrap();
    let step = BackwardStep {
        adapter: LoraAdapter::new(&a, &b, r, 0.5),
        dora: dora.then_some(DoraSaved {
            magnitude: &magnitude,
            norm: &norm,
            base: &base,
            bias: Some(&bias),
        }),
    };
    let weight = match &wq {
        Some(q) => DxWeight::Quantized(QuantizedWeight::Quant4(q)),
        None => DxWeight::Dense(&w),
    };
    let mut dx = s.alloc_zeros::<bf16>(m * k).unwrap();
    let launches = profiled(gpu, || {
        gpu.backward_chain(
            &x,
            &g,
            weight,
            &[step],
            LoraShape::new(m, k, n),
            &mut dx,
            false,
        )
        .unwrap();
    });
    let (m, k, n, r) = (m as u64, k as u64, n as u64, r as u64);
    // Inputs x, G, W, A, B (DoRA: magnitude, f32 norm, base, bias); outputs dX, dA, dB (DoRA: dm).
    let weight_bytes = if nf4 {
        n * k / 2 + 4 * (n * k / 64)
    } else {
        E * n * k
    };
    let lora = E * (m * k + m * n + r * k + n * r) + weight_bytes + E * (m * k + r * k + n * r);
    let extra = if dora {
        E * (n + m * n + n) + 4 * n + E * n
    } else {
        0
    };
    Case {
        name: format!(
            "backward_chain {}{} m={m} k={k} n={n} r={r}",
            if nf4 { "nf4 " } else { "" },
            if dora { "dora" } else { "lora" }
        ),
        floor_bytes: lora + extra,
        launches,
    }
}

/// The shapes of the report and the baseline: decode (m = 1, 4, 16) and one prefill tile set,
/// small enough for the emulator in a debug test run.
pub fn standard_cases(gpu: &Gpu) -> Vec<Case> {
    vec![
        lora_forward(gpu, 1, 512, 512, 16),
        lora_forward(gpu, 16, 512, 512, 16),
        lora_forward(gpu, 128, 256, 256, 16),
        linear(gpu, 1, 512, 512),
        linear(gpu, 4, 512, 512),
        linear(gpu, 64, 256, 256),
        linear_lora(gpu, 1, 512, 512, 16),
        nf4_linear(gpu, 1, 512, 512),
        int8_linear(gpu, 1, 512, 512),
        mixed(gpu, 4, 512, 512, 8),
        mixed(gpu, 32, 256, 512, 8),
        dora_factor(gpu, 512, 256, 16),
        backward(gpu, 1, 512, 512, 16, false, false),
        backward(gpu, 16, 512, 512, 16, false, false),
        backward(gpu, 128, 256, 256, 16, false, false),
        backward(gpu, 16, 512, 512, 16, true, false),
        backward(gpu, 1, 512, 512, 16, false, true),
    ]
}

/// Decode at a Llama-like layer (K = N = 4096): the report only (seconds each on a release
/// build of the emulator, too slow for a debug test run).
pub fn llama_decode_cases(gpu: &Gpu) -> Vec<Case> {
    vec![
        lora_forward(gpu, 1, 4096, 4096, 16),
        lora_forward(gpu, 16, 4096, 4096, 16),
        lora_forward(gpu, 1, 4096, 4096, 64),
        lora_forward(gpu, 16, 4096, 4096, 64),
        linear(gpu, 1, 4096, 4096),
        linear(gpu, 8, 4096, 4096),
        linear(gpu, 16, 4096, 4096),
        linear_lora(gpu, 1, 4096, 4096, 16),
        nf4_linear(gpu, 1, 4096, 4096),
        int8_linear(gpu, 1, 4096, 4096),
        mixed(gpu, 4, 4096, 4096, 16),
        mixed(gpu, 16, 4096, 4096, 16),
        dora_factor(gpu, 4096, 4096, 16),
        backward(gpu, 1, 4096, 4096, 16, false, false),
    ]
}
