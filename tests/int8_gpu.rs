//! The LLM.int8 weight-only kernel against the CPU reference on random shapes (k a multiple of 16 or
//! not, m from 1 past the 8-row GEMV into the tiled kernel, with and without bias), and the int8 golden
//! layers on the GPU.
//! Prints `SKIPPED: no CUDA device` without a GPU; fails instead with `LORA_KERNELS_REQUIRE_GPU=1`.
mod common;

use common::{f64s, rel_error, Rng};
use half::{bf16, f16};
use lora_kernels::dora::reference as dora;
use lora_kernels::int8::reference;
use lora_kernels::linear::QuantizedWeight;
use lora_kernels::{Element, Gpu, LoraAdapter, LoraShape};

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

/// A random weight [n, k] with LLM.int8's hard rows planted (where n has room): an all-zero row; one
/// repeated value; a power-of-two absmax with exact multiples of 1/64 (the scale 63.5 is exact);
/// halves and quarters of a random f16 absmax, exact ties 63.5 and 31.75 in real arithmetic that the
/// two-rounding scale pushes to either side; values just above and below zero; an f16-subnormal
/// absmax (2^-20).
fn adversarial<T: Element>(rng: &mut Rng, n: usize, k: usize) -> Vec<T> {
    let mut w: Vec<T> = rng.vec(n * k, 0.1);
    let s = half::f16::from_f64(0.2 + 0.2 * rng.uniform().abs()).to_f64();
    let rows: Vec<Vec<f64>> = vec![
        vec![0.0; k],
        vec![rng.uniform() * 0.3; k],
        (0..k)
            .map(|i| {
                if i == 0 {
                    2.0
                } else {
                    (i % 128) as f64 / 64.0 - 1.0
                }
            })
            .collect(),
        (0..k)
            .map(|i| match i % 4 {
                0 => s,
                1 => s / 2.0,
                2 => -s / 2.0,
                _ => s / 4.0,
            })
            .collect(),
        (0..k)
            .map(|i| [0.5, 1e-6, -1e-6, 6e-8, -6e-8, 0.0, -0.0][i % 7])
            .collect(),
        (0..k)
            .map(|i| 2f64.powi(-20) * [1.0, -0.5, 0.25, -0.75][i % 4])
            .collect(),
    ];
    for (r, row) in rows.into_iter().enumerate().take(n) {
        for (c, v) in row.into_iter().enumerate() {
            w[r * k + c] = T::from_f64(v);
        }
    }
    w
}

/// The GPU row-wise quantiser equals the CPU reference code for code on random shapes with the
/// adversarial rows, and the GPU dequantisation equals the reference bit for bit; NaN, ±Inf and values
/// beyond the f16 range are an error on both.
fn quantize<T: Element>(gpu: &Gpu, seed: u64) {
    let s = gpu.stream();
    let mut rng = Rng::new(seed);
    let mut shapes = vec![(1usize, 1usize), (17, 100), (96, 4096), (300, 257), (6, 7)];
    for _ in 0..5 {
        shapes.push((rng.range(1, 90), rng.range(1, 700)));
    }
    for (n, k) in shapes {
        println!("quantize n {n} k {k} {}", T::DTYPE);
        let w: Vec<T> = adversarial(&mut rng, n, k);
        let want = reference::quantize_rowwise(&w, [n, k]).unwrap();
        let dev = gpu.quantize_int8(&s.clone_htod(&w).unwrap(), k, n).unwrap();
        let got = gpu.download_int8(&dev).unwrap();
        assert_eq!(got.scb, want.scb, "SCB n {n} k {k}");
        assert_eq!(got.cb, want.cb, "CB n {n} k {k}");
        let mut out = s.alloc_zeros::<T>(n * k).unwrap();
        gpu.int8_dequantize(&dev, &mut out).unwrap();
        let deq = s.clone_dtoh(&out).unwrap();
        let want_deq: Vec<T> = reference::dequantize_to(&want).unwrap();
        assert!(
            deq.iter()
                .zip(&want_deq)
                .all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits()),
            "dequantize n {n} k {k}"
        );
        let mut bads = vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        if T::DTYPE != lora_kernels::DType::F16 {
            bads.push(70000.0); // beyond f16: Inf after Int8Params' rounding
        }
        for bad in bads {
            let mut w = w.clone();
            w[(n * k) / 2] = T::from_f64(bad);
            assert!(reference::quantize_rowwise(&w, [n, k]).is_err(), "{bad}");
            let e = gpu.quantize_int8(&s.clone_htod(&w).unwrap(), k, n);
            assert!(e.is_err(), "{bad} must be an error on the GPU");
        }
    }
}

/// Merging into an int8 base on the GPU (dequantise, add, requantise) against the CPU reference: codes
/// within one step (the GPU forms B·A in f32, the reference in f64, so a value on a rounding boundary may
/// land on the other side), scales to f32 rounding; unmerging comes back to the original within the
/// int8 rounding. Also the DoRA norm read straight from CB and SCB.
fn merge<T: Element>(gpu: &Gpu, seed: u64) {
    let s = gpu.stream();
    let mut rng = Rng::new(seed);
    for &(n, k, rank) in &[(33usize, 100usize, 4usize), (64, 512, 16), (7, 33, 1)] {
        let w: Vec<T> = rng.vec(n * k, 0.1);
        let q = reference::quantize_rowwise(&w, [n, k]).unwrap();
        let a: Vec<T> = rng.vec(rank * k, 0.1);
        let b: Vec<T> = rng.vec(n * rank, 0.1);
        let mag: Vec<T> = rng.vec(n, 1.0);
        let adapter = LoraAdapter::new(&a[..], &b[..], rank, 0.5);
        let (ad, bd, md) = (
            s.clone_htod(&a).unwrap(),
            s.clone_htod(&b).unwrap(),
            s.clone_htod(&mag).unwrap(),
        );
        let dev_adapter = LoraAdapter::new(&ad, &bd, rank, 0.5);
        let w_t: Vec<T> = reference::dequantize_to(&q).unwrap();

        // The DoRA norm and factor straight from the codes.
        let dev = gpu.upload_int8(&q).unwrap();
        let want_norm = dora::dora_weight_norm(&w_t, adapter, k, n).unwrap();
        let mut norm = s.alloc_zeros::<f32>(n).unwrap();
        gpu.dora_weight_norm_quantized(QuantizedWeight::Int8(&dev), dev_adapter, &mut norm)
            .unwrap();
        let got_norm: Vec<f64> = s
            .clone_dtoh(&norm)
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let want64: Vec<f64> = want_norm.iter().map(|&v| v as f64).collect();
        assert!(
            rel_error(&got_norm, &want64) < 1e-5,
            "int8 DoRA norm n {n} k {k}"
        );
        let factor = gpu
            .dora_factor_quantized(QuantizedWeight::Int8(&dev), dev_adapter, &md)
            .unwrap();
        let want_factor = dora::dora_factor(&mag, &want_norm).unwrap();

        for dora_merge in [false, true] {
            println!(
                "merge n {n} k {k} rank {rank} dora {dora_merge} {}",
                T::DTYPE
            );
            let f = dora_merge.then_some(&factor);
            let want =
                dora::merge_adapter_int8(&q, adapter, dora_merge.then_some(&want_factor[..]))
                    .unwrap();
            let mut dev = gpu.upload_int8(&q).unwrap();
            gpu.merge_adapter_int8(&mut dev, dev_adapter, f, true)
                .unwrap();
            let got = gpu.download_int8(&dev).unwrap();
            // The requantisation bit for bit: the same merge on the dense dequantised weight (the same
            // f32 arithmetic on the GPU, rounded to T), quantised by the CPU reference.
            let mut dense = s.clone_htod(&w_t).unwrap();
            gpu.merge_adapter(&mut dense, dev_adapter, f, k, n, true)
                .unwrap();
            let dense_merged = s.clone_dtoh(&dense).unwrap();
            assert_eq!(
                got,
                reference::quantize_rowwise(&dense_merged, [n, k]).unwrap(),
                "requantised merge, bit for bit"
            );
            assert!(
                got.cb
                    .iter()
                    .zip(&want.cb)
                    .all(|(g, w)| (*g as i32 - *w as i32).abs() <= 1),
                "merged codes differ by more than one step"
            );
            let scb_err = rel_error(
                &got.scb.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                &want.scb.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            );
            assert!(scb_err < 1e-3, "merged SCB rel err {scb_err:.3e}");
            assert_ne!(got.cb, q.cb, "the merge changed the codes");
            gpu.unmerge_adapter_int8(&mut dev, dev_adapter, f, true)
                .unwrap();
            let mut dense = s
                .clone_htod(&reference::dequantize_to::<T>(&got).unwrap())
                .unwrap();
            gpu.unmerge_adapter(&mut dense, dev_adapter, f, k, n, true)
                .unwrap();
            assert_eq!(
                gpu.download_int8(&dev).unwrap(),
                reference::quantize_rowwise(&s.clone_dtoh(&dense).unwrap(), [n, k]).unwrap(),
                "requantised unmerge, bit for bit"
            );
            let back: Vec<f64> = reference::dequantize(&gpu.download_int8(&dev).unwrap())
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect();
            let orig: Vec<f64> = reference::dequantize(&q)
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect();
            let err = rel_error(&back, &orig);
            assert!(err < 2e-2, "unmerge round trip rel err {err:.3e}");
        }
    }
}

#[test]
fn int8_quantize_f32() {
    if let Some(gpu) = common::gpu() {
        quantize::<f32>(&gpu, 34);
    }
}

#[test]
fn int8_quantize_f16() {
    if let Some(gpu) = common::gpu() {
        quantize::<f16>(&gpu, 40);
    }
}

#[test]
fn int8_quantize_bf16() {
    if let Some(gpu) = common::gpu() {
        quantize::<bf16>(&gpu, 35);
    }
}

#[test]
fn int8_merge_f32() {
    if let Some(gpu) = common::gpu() {
        merge::<f32>(&gpu, 36);
    }
}

#[test]
fn int8_merge_f16() {
    if let Some(gpu) = common::gpu() {
        merge::<f16>(&gpu, 37);
    }
}

/// LLM.int8 (int8 × int8 on tensor cores with the outlier split) against the CPU reference of the
/// CUDA algorithm: thresholds 0 and 6, activations with outlier columns, one row and several, k a
/// multiple of 16 or not.
fn llm<T: Element>(gpu: &Gpu, seed: u64) {
    let s = gpu.stream();
    let mut rng = Rng::new(seed);
    for &(m, k, n) in &[
        (1usize, 64usize, 33usize),
        (5, 100, 70),
        (70, 256, 130),
        (3, 4096, 96),
    ] {
        let w: Vec<T> = rng.vec(n * k, 0.1);
        let q = reference::quantize_rowwise(&w, [n, k]).unwrap();
        let dev = gpu.upload_int8(&q).unwrap();
        let mut x: Vec<T> = rng.vec(m * k, 1.0);
        for row in 0..m {
            x[row * k + 3] = T::from_f64(if row % 2 == 0 { 8.0 } else { -7.0 });
            // an outlier column
        }
        x[(m - 1) * k + k / 2] = T::from_f64(9.5); // an outlier in one row only
        let bias: Vec<T> = rng.vec(n, 1.0);
        let bias_d = s.clone_htod(&bias).unwrap();
        let xd = s.clone_htod(&x).unwrap();
        for threshold in [0.0f32, 6.0] {
            println!(
                "LLM.int8 m {m} k {k} n {n} threshold {threshold} {}",
                T::DTYPE
            );
            let shape = LoraShape::new(m, k, n);
            let want = reference::linear_llm_int8(&x, &q, Some(&bias), threshold, shape).unwrap();
            let mut y = s.alloc_zeros::<T>(m * n).unwrap();
            gpu.int8_linear_llm(&xd, &dev, Some(&bias_d.slice(..)), threshold, m, &mut y)
                .unwrap();
            let err = rel_error(&f64s(&s.clone_dtoh(&y).unwrap()), &f64s(&want));
            assert!(
                err <= T::DTYPE.tolerance(),
                "m {m} k {k} n {n} threshold {threshold}: rel err {err:.3e}"
            );
        }
    }
}

#[test]
fn int8_llm_f16() {
    if let Some(gpu) = common::gpu() {
        llm::<f16>(&gpu, 38);
    }
}

#[test]
fn int8_llm_bf16() {
    if let Some(gpu) = common::gpu() {
        llm::<bf16>(&gpu, 39);
    }
}
