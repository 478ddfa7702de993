//! Helpers shared by the benchmarks: random data (the tests' generator), CUDA-event timing, the
//! copy-bandwidth ceiling.
#![allow(dead_code)]
#[path = "../../tests/common/rng.rs"]
mod rng;
pub use rng::Rng;

use cudarc::driver::{sys::CUevent_flags, CudaStream};
use half::bf16;
use std::sync::Arc;

/// `len` bf16 values uniform in [-amp, amp), from the tests' seeded [`Rng`] (never all zero).
pub fn random_bf16(len: usize, seed: u64, amp: f32) -> Vec<bf16> {
    Rng::new(seed).vec(len, amp as f64)
}

/// Milliseconds per call of `f`: median over repetitions of `calls` back-to-back calls.
pub fn time_ms(stream: &Arc<CudaStream>, calls: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = stream.record_event(flags).unwrap();
            for _ in 0..calls {
                f();
            }
            let end = stream.record_event(flags).unwrap();
            end.synchronize().unwrap();
            start.elapsed_ms(&end).unwrap() as f64 / calls as f64
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

/// Device-to-device copy bandwidth in GB/s, counting bytes read and written (1 GiB copied).
pub fn copy_bandwidth_gbs(stream: &Arc<CudaStream>) -> f64 {
    let len = 1usize << 29; // 1 GiB of bf16
    let src = stream.alloc_zeros::<bf16>(len).unwrap();
    let mut dst = stream.alloc_zeros::<bf16>(len).unwrap();
    let ms = time_ms(stream, 5, 7, || stream.memcpy_dtod(&src, &mut dst).unwrap());
    2.0 * (len * 2) as f64 / (ms * 1e-3) / 1e9
}

/// Runs `gpu` on device 0 when it has a driver, a device and the kernels; otherwise says why and
/// runs `cpu` (the CPU reference), so `cargo bench` works everywhere.
pub fn gpu_or_cpu(
    c: &mut criterion::Criterion,
    gpu: impl FnOnce(&mut criterion::Criterion, &lora_kernels::Gpu),
    cpu: impl FnOnce(&mut criterion::Criterion),
) {
    match lora_kernels::Gpu::new(0) {
        Ok(g) if lora_kernels::device::kernels_built() => gpu(c, &g),
        Ok(_) => {
            println!("kernels not built (no nvcc at build time)");
            cpu(c)
        }
        Err(e) => {
            println!("{e}");
            cpu(c)
        }
    }
}

/// With `LORA_KERNELS_BENCH_OUT=path`, writes `{"device": .., "copy_gbs": .., <fields>}` there (the
/// GPU check collects these files); `fields` are `"key":value` JSON members.
pub fn write_bench_json(device: &str, copy_gbs: f64, fields: &[(&str, String)]) {
    if let Ok(path) = std::env::var("LORA_KERNELS_BENCH_OUT") {
        let members: Vec<String> = fields.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
        let doc = format!(
            "{{\"device\":{device:?},\"copy_gbs\":{copy_gbs},{}}}",
            members.join(",")
        );
        std::fs::write(path, doc).unwrap();
    }
}
