//! The LLM.int8 weight-only kernel against the CPU reference on random shapes (k a multiple of 16 or
//! not, m from 1 past the 8-row GEMV into the tiled kernel, with and without bias), and the int8 golden
//! layers on the GPU.
//! Prints `SKIPPED: no CUDA device` without a GPU; fails instead with `LORA_KERNELS_REQUIRE_GPU=1`.
mod common;

use common::{f64s, Rng};
use half::{bf16, f16};
use lora_kernels::golden::rel_error;
use lora_kernels::int8::reference;
use lora_kernels::{Element, Gpu, LoraShape};

fn sweep<T: Element>(gpu: &Gpu, seed: u64) {
    let s = gpu.stream();
    let mut rng = Rng::new(seed);
    for &(n, k) in &[
        (1usize, 16usize),
        (96, 128),
        (33, 100),
        (7, 4096),
        (300, 257),
    ] {
        println!("n {n} k {k} {}", T::DTYPE);
        let w: Vec<T> = rng.vec(n * k, 0.1);
        let q = reference::quantize_rowwise(&w, [n, k]).unwrap();
        let dev = gpu.upload_int8(&q).unwrap();
        let bias: Vec<T> = rng.vec(n, 1.0);
        let bias_d = s.clone_htod(&bias).unwrap();
        for &m in &[1usize, 5, 8, 9, 17, 130] {
            let x: Vec<T> = rng.vec(m * k, 1.0);
            let shape = LoraShape::new(m, k, n);
            for with_bias in [false, true] {
                let want =
                    reference::linear_weight_only(&x, &q, with_bias.then_some(&bias[..]), shape)
                        .unwrap();
                let mut y = s.alloc_zeros::<T>(m * n).unwrap();
                let view = bias_d.slice(..);
                gpu.int8_linear(
                    &s.clone_htod(&x).unwrap(),
                    &dev,
                    with_bias.then_some(&view),
                    m,
                    &mut y,
                )
                .unwrap();
                let err = rel_error(&f64s(&s.clone_dtoh(&y).unwrap()), &f64s(&want));
                assert!(
                    err <= T::DTYPE.tolerance(),
                    "m={m} bias={with_bias}: rel err {err:.3e}"
                );
            }
        }
    }
}

#[test]
fn int8_f32() {
    if let Some(gpu) = common::gpu() {
        sweep::<f32>(&gpu, 31);
    }
}

#[test]
fn int8_f16() {
    if let Some(gpu) = common::gpu() {
        sweep::<f16>(&gpu, 32);
    }
}

#[test]
fn int8_bf16() {
    if let Some(gpu) = common::gpu() {
        sweep::<bf16>(&gpu, 33);
    }
}
