//! The 4-bit kernels against the CPU reference: dequantisation bit for bit, the DoRA norm read
//! straight from the codes, and the dequant-on-the-fly product on random shapes (odd sizes, k a
//! multiple of 32 or not, blocksizes 32 to 4096, NF4 and FP4, plain and double-quantised absmax, m
//! from 1 past the 8-row GEMV into the tiled kernel), and the quantiser bit for bit against the
//! reference on adversarial blocks (ties, zeros, subnormal absmax, NaN, ±Inf). Prints `SKIPPED: no CUDA device` without a GPU;
//! fails instead with `LORA_KERNELS_REQUIRE_GPU=1`.
mod common;

use common::{f64s, rel_error, Rng};
use half::{bf16, f16};
use lora_kernels::dora::reference as dora;
use lora_kernels::linear::QuantizedWeight;
use lora_kernels::quant4::{reference, Absmax, QuantType};
use lora_kernels::{Element, Gpu, LoraAdapter};

/// One weight: (n, k, blocksize, quant type, double quantisation).
type Case = (usize, usize, usize, QuantType, bool);

fn check<T: Element>(gpu: &Gpu, rng: &mut Rng, (n, k, blocksize, qt, dq): Case, ms: &[usize]) {
    let s = gpu.stream();
    println!(
        "n {n} k {k} blocksize {blocksize} {qt:?} double_quant {dq} {}",
        T::DTYPE
    );
    let w: Vec<T> = rng.vec(n * k, 0.1);
    let q = reference::quantize(&w, [n, k], blocksize, qt, dq).unwrap();
    let dev = gpu.upload_quant4(&q).unwrap();
    let want: Vec<T> = reference::dequantize(&q).unwrap();
    let mut out = s.alloc_zeros::<T>(n * k).unwrap();
    gpu.quant4_dequantize(&dev, &mut out).unwrap();
    let got = s.clone_dtoh(&out).unwrap();
    assert!(
        got.iter()
            .zip(&want)
            .all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits()),
        "dequantize differs from the CPU reference"
    );
    // The DoRA norm straight from the codes, against the norm of the dequantised weight in T.
    let rank = 1 + (n % 8);
    let (a, b): (Vec<T>, Vec<T>) = (rng.vec(rank * k, 0.1), rng.vec(n * rank, 0.1));
    let (ad, bd) = (s.clone_htod(&a).unwrap(), s.clone_htod(&b).unwrap());
    let want_norm =
        dora::dora_weight_norm(&want, LoraAdapter::new(&a[..], &b[..], rank, 2.0), k, n).unwrap();
    let mut norm = s.alloc_zeros::<f32>(n).unwrap();
    gpu.dora_weight_norm_quantized(
        QuantizedWeight::Quant4(&dev),
        LoraAdapter::new(&ad, &bd, rank, 2.0),
        &mut norm,
    )
    .unwrap();
    let got_norm: Vec<f64> = s
        .clone_dtoh(&norm)
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    let want64: Vec<f64> = want_norm.iter().map(|&v| v as f64).collect();
    let err = rel_error(&got_norm, &want64);
    assert!(err < 1e-5, "4-bit DoRA norm: rel err {err:.3e}");

    let w32: Vec<f32> = reference::dequantize(&q).unwrap();
    let bias: Vec<T> = rng.vec(n, 1.0);
    let bias_d = s.clone_htod(&bias).unwrap();
    for &m in ms {
        let x: Vec<T> = rng.vec(m * k, 1.0);
        let mut expected = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|c| x[i * k + c].to_f64() * w32[j * k + c] as f64)
                    .sum();
                expected.push(T::from_f64(dot + bias[j].to_f64()).to_f64());
            }
        }
        let mut y = s.alloc_zeros::<T>(m * n).unwrap();
        gpu.quant4_linear(
            &s.clone_htod(&x).unwrap(),
            &dev,
            Some(&bias_d.slice(..)),
            m,
            &mut y,
        )
        .unwrap();
        let err = rel_error(&f64s(&s.clone_dtoh(&y).unwrap()), &expected);
        assert!(
            err <= T::DTYPE.tolerance(),
            "linear m={m}: rel err {err:.3e}"
        );
    }
}

fn sweep<T: Element>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng::new(seed);
    let cases: &[Case] = &[
        (1, 32, 32, QuantType::Nf4, false),
        (64, 128, 64, QuantType::Nf4, false),
        (96, 256, 64, QuantType::Nf4, true),
        (40, 128, 128, QuantType::Fp4, false),
        (33, 4096, 4096, QuantType::Nf4, true),
        (17, 100, 64, QuantType::Fp4, true), // k not a multiple of 32: blocks straddle rows
        (7, 33, 32, QuantType::Nf4, false),  // odd element count
        (300, 512, 256, QuantType::Nf4, true),
    ];
    for &case in cases {
        check::<T>(gpu, &mut rng, case, &[1, 3, 8, 9, 20, 130]);
    }
}

#[test]
fn quant4_f32() {
    if let Some(gpu) = common::gpu() {
        sweep::<f32>(&gpu, 21);
    }
}

#[test]
fn quant4_f16() {
    if let Some(gpu) = common::gpu() {
        sweep::<f16>(&gpu, 22);
    }
}

#[test]
fn quant4_bf16() {
    if let Some(gpu) = common::gpu() {
        sweep::<bf16>(&gpu, 23);
    }
}

/// The same absmax, bit for bit (NaN included).
fn same_absmax(a: &Absmax, b: &Absmax) -> bool {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    match (a, b) {
        (Absmax::Plain(x), Absmax::Plain(y)) => bits(x) == bits(y),
        (
            Absmax::Nested {
                codes: c1,
                nested_absmax: n1,
                nested_code: m1,
                nested_blocksize: b1,
                offset: o1,
            },
            Absmax::Nested {
                codes: c2,
                nested_absmax: n2,
                nested_code: m2,
                nested_blocksize: b2,
                offset: o2,
            },
        ) => {
            c1 == c2
                && bits(n1) == bits(n2)
                && bits(m1) == bits(m2)
                && b1 == b2
                && o1.to_bits() == o2.to_bits()
        }
        _ => false,
    }
}

/// A random weight with bitsandbytes' hard cases planted block by block (each where the weight has
/// room): an all-zero block; one repeated value; a subnormal absmax (f32 and bf16; f16 values that
/// small round to f16 subnormals or 0); values on, just above and just below every code midpoint of
/// `qt` against a power-of-two absmax (so the scaled value is exact in f32); values just above and
/// below zero; and, with `non_finite`, a block holding NaN and one holding +Inf and -Inf.
fn adversarial<T: Element>(
    rng: &mut Rng,
    len: usize,
    blocksize: usize,
    qt: QuantType,
    non_finite: bool,
) -> Vec<T> {
    let mut w: Vec<T> = rng.vec(len, 0.1);
    let mids = *reference::Bucketizer::new(qt.code()).midpoints();
    let down = |v: f32| {
        f32::from_bits(if v > 0.0 {
            v.to_bits() - 1
        } else {
            v.to_bits() + 1
        })
    };
    let up = |v: f32| {
        f32::from_bits(if v >= 0.0 {
            v.to_bits() + 1
        } else {
            v.to_bits() - 1
        })
    };
    let mut near = Vec::new();
    for &t in &mids {
        if t != 0.0 {
            near.extend([t * 0.5, up(t) * 0.5, down(t) * 0.5]);
        }
    }
    let tiny = [
        0.25f32, 1e-30, -1e-30, 1e-45, -1e-45, 0.0, -0.0, 1e-4, -1e-4,
    ];
    let repeated = rng.uniform() as f32 * 0.3;
    let mut blocks: Vec<Vec<f32>> = vec![
        vec![0.0; blocksize],
        vec![repeated; blocksize],
        (0..blocksize)
            .map(|i| {
                if i == 0 {
                    5e-39
                } else {
                    (rng.uniform() * 5e-39) as f32
                }
            })
            .collect(),
        tiny.to_vec(),
    ];
    // Each block of near-midpoint values leads with the absmax 0.5 (x · (1 / 0.5) is exact).
    for chunk in near.chunks(blocksize - 1) {
        blocks.push(std::iter::once(0.5).chain(chunk.iter().copied()).collect());
    }
    if non_finite {
        blocks.push(vec![0.1, f32::NAN, -0.2]);
        blocks.push(vec![0.1, f32::INFINITY, -0.2, f32::NEG_INFINITY]);
    }
    for (b, values) in blocks.into_iter().enumerate() {
        let start = b * blocksize;
        if start >= len {
            break;
        }
        for (i, v) in values.into_iter().take(blocksize).enumerate() {
            if start + i < len {
                w[start + i] = T::from_f64(v as f64);
            }
        }
    }
    w
}

/// The GPU quantiser against the CPU reference, packed bytes and absmax bit for bit (NaN included),
/// on random shapes (odd element counts, partial last blocks) with the adversarial blocks above;
/// with double quantisation a NaN or infinite weight is an error on both.
fn quantizer<T: Element>(gpu: &Gpu, seed: u64) {
    let s = gpu.stream();
    let mut rng = Rng::new(seed);
    let mut cases: Vec<Case> = vec![
        (7, 33, 32, QuantType::Nf4, false),
        (7, 33, 32, QuantType::Fp4, false),
        (64, 128, 64, QuantType::Fp4, false),
        (96, 256, 64, QuantType::Nf4, true),
        (33, 4096, 4096, QuantType::Fp4, true),
        (300, 512, 128, QuantType::Nf4, true),
        (1, 1, 32, QuantType::Fp4, false),
    ];
    for _ in 0..6 {
        let blocksize = 32 << rng.range(0, 4);
        let qt = if rng.range(0, 1) == 0 {
            QuantType::Nf4
        } else {
            QuantType::Fp4
        };
        cases.push((
            rng.range(1, 70),
            rng.range(1, 300),
            blocksize,
            qt,
            rng.range(0, 1) == 1,
        ));
    }
    for (n, k, blocksize, qt, dq) in cases {
        println!(
            "quantise n {n} k {k} blocksize {blocksize} {qt:?} double_quant {dq} {}",
            T::DTYPE
        );
        let w: Vec<T> = adversarial(&mut rng, n * k, blocksize, qt, !dq);
        let want = reference::quantize(&w, [n, k], blocksize, qt, dq).unwrap();
        let dev = gpu
            .quantize_quant4(&s.clone_htod(&w).unwrap(), [n, k], blocksize, qt, dq)
            .unwrap();
        let got = gpu.download_quant4(&dev).unwrap();
        assert_eq!(got.packed, want.packed, "packed bytes");
        assert!(same_absmax(&got.absmax, &want.absmax), "absmax");
        if dq && n * k > 6 * blocksize {
            // NaN and ±Inf with double quantisation: no defined code, an error on both paths.
            let mut bad = w.clone();
            bad[6 * blocksize] = T::from_f64(f64::NAN);
            assert!(reference::quantize(&bad, [n, k], blocksize, qt, true).is_err());
            let e = gpu.quantize_quant4(&s.clone_htod(&bad).unwrap(), [n, k], blocksize, qt, true);
            assert!(e.is_err(), "NaN with double quantisation must be an error");
            bad[6 * blocksize] = T::from_f64(f64::INFINITY);
            let e = gpu.quantize_quant4(&s.clone_htod(&bad).unwrap(), [n, k], blocksize, qt, true);
            assert!(e.is_err(), "Inf with double quantisation must be an error");
        }
    }
}

#[test]
fn quant4_quantize_f32() {
    if let Some(gpu) = common::gpu() {
        quantizer::<f32>(&gpu, 24);
    }
}

#[test]
fn quant4_quantize_f16() {
    if let Some(gpu) = common::gpu() {
        quantizer::<f16>(&gpu, 26);
    }
}

#[test]
fn quant4_quantize_bf16() {
    if let Some(gpu) = common::gpu() {
        quantizer::<bf16>(&gpu, 25);
    }
}

/// QLoRA's forward (4-bit base, then the fused LoRA term in place) against the CPU references: the
/// base product over the dequantised weight in T, then two adapters.
fn qlora<T: Element>(gpu: &Gpu, seed: u64) {
    let s = gpu.stream();
    let mut rng = Rng::new(seed);
    for &(m, k, n) in &[(1usize, 256usize, 96usize), (9, 100, 33), (70, 512, 130)] {
        let w: Vec<T> = rng.vec(n * k, 0.1);
        let q = reference::quantize(&w, [n, k], 64, QuantType::Nf4, true).unwrap();
        let dev = gpu.upload_quant4(&q).unwrap();
        let deq: Vec<T> = reference::dequantize(&q).unwrap();
        let (x, bias): (Vec<T>, Vec<T>) = (rng.vec(m * k, 1.0), rng.vec(n, 1.0));
        let ranks = [4usize, 16];
        let host: Vec<(Vec<T>, Vec<T>)> = ranks
            .iter()
            .map(|&r| (rng.vec(r * k, 0.1), rng.vec(n * r, 0.1)))
            .collect();
        let shape = lora_kernels::LoraShape::new(m, k, n);
        let base = lora_kernels::linear::reference::linear(&x, &deq, Some(&bias), shape).unwrap();
        let views: Vec<_> = host
            .iter()
            .zip(ranks)
            .map(|((a, b), r)| LoraAdapter::new(&a[..], &b[..], r, 0.5))
            .collect();
        let want = lora_kernels::lora::reference::lora_forward(&x, &base, &views, shape).unwrap();
        let dev_ab: Vec<_> = host
            .iter()
            .map(|(a, b)| (s.clone_htod(a).unwrap(), s.clone_htod(b).unwrap()))
            .collect();
        let adapters: Vec<_> = dev_ab
            .iter()
            .zip(ranks)
            .map(|((a, b), r)| LoraAdapter::new(a, b, r, 0.5))
            .collect();
        let mut y = s.alloc_zeros::<T>(m * n).unwrap();
        let bias_d = s.clone_htod(&bias).unwrap();
        gpu.quantized_lora_forward(
            &s.clone_htod(&x).unwrap(),
            QuantizedWeight::Quant4(&dev),
            Some(&bias_d.slice(..)),
            &adapters,
            m,
            &mut y,
        )
        .unwrap();
        let err = rel_error(&f64s(&s.clone_dtoh(&y).unwrap()), &f64s(&want));
        assert!(
            err <= T::DTYPE.tolerance(),
            "qlora m {m} k {k} n {n}: rel err {err:.3e}"
        );
    }
}

#[test]
fn qlora_forward_bf16() {
    if let Some(gpu) = common::gpu() {
        qlora::<bf16>(&gpu, 26);
    }
}

#[test]
fn qlora_forward_f32() {
    if let Some(gpu) = common::gpu() {
        qlora::<f32>(&gpu, 27);
    }
}
