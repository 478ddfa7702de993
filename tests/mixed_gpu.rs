//! The mixed-batch forward on the GPU against the CPU reference: random per-row adapters of mixed
//! ranks (1 to 256), rows with no adapter, out-of-range indices (treated as no adapter), odd sizes.
//! Prints `SKIPPED: no CUDA device` without a GPU; fails instead with `LORA_KERNELS_REQUIRE_GPU=1`.
mod common;

use common::{f64s, rel_error, Rng};
use half::{bf16, f16};
use lora_kernels::{Element, Gpu, LoraAdapter, LoraShape};

fn batch<T: Element>(gpu: &Gpu, rng: &mut Rng, m: usize, k: usize, n: usize, ranks: &[usize]) {
    let s = gpu.stream();
    println!("m {m} k {k} n {n} ranks {ranks:?} {}", T::DTYPE);
    let host: Vec<(Vec<T>, Vec<T>, usize, f32)> = ranks
        .iter()
        .map(|&r| {
            (
                rng.vec(r * k, 1.0 / (k as f64).sqrt()),
                rng.vec(n * r, 1.0 / (r as f64).sqrt()),
                r,
                rng.range(1, 32) as f32 / r as f32,
            )
        })
        .collect();
    let dev: Vec<_> = host
        .iter()
        .map(|(a, b, _, _)| (s.clone_htod(a).unwrap(), s.clone_htod(b).unwrap()))
        .collect();
    let adapters: Vec<_> = dev
        .iter()
        .zip(&host)
        .map(|((a, b), h)| LoraAdapter::new(a, b, h.2, h.3))
        .collect();
    let table = gpu.mixed_adapters(&adapters, k, n).unwrap();
    // Rows: every adapter, none (-1), and an index past the table (treated as none).
    let indices: Vec<i32> = (0..m)
        .map(|i| match i % 5 {
            0 => -1,
            1 => 99,
            _ => rng.range(0, ranks.len() - 1) as i32,
        })
        .collect();
    let shape = LoraShape::new(m, k, n);
    let (x, base): (Vec<T>, Vec<T>) = (rng.vec(m * k, 1.0), rng.vec(m * n, 1.0));
    let host_adapters: Vec<_> = host
        .iter()
        .map(|(a, b, r, sc)| LoraAdapter::new(&a[..], &b[..], *r, *sc))
        .collect();
    let ref_indices: Vec<i32> = indices
        .iter()
        .map(|&i| if i as usize >= ranks.len() { -1 } else { i })
        .collect();
    let want = lora_kernels::mixed_batch::reference::lora_forward_mixed(
        &x,
        &base,
        &host_adapters,
        &ref_indices,
        shape,
    )
    .unwrap();
    let mut y = s.alloc_zeros::<T>(m * n).unwrap();
    gpu.lora_forward_mixed(
        &s.clone_htod(&x).unwrap(),
        &s.clone_htod(&base).unwrap(),
        &table,
        &s.clone_htod(&indices).unwrap(),
        shape,
        &mut y,
    )
    .unwrap();
    let got = s.clone_dtoh(&y).unwrap();
    let err = rel_error(&f64s(&got), &f64s(&want));
    assert!(err <= T::DTYPE.tolerance(), "rel err {err:.3e}");
    for (i, &idx) in ref_indices.iter().enumerate() {
        if idx < 0 {
            assert_eq!(
                f64s(&got[i * n..(i + 1) * n]),
                f64s(&base[i * n..(i + 1) * n]),
                "row {i} has no adapter: y = base"
            );
        }
    }
}

fn sweep<T: Element>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng::new(seed);
    batch::<T>(gpu, &mut rng, 7, 96, 80, &[8, 4, 2]);
    batch::<T>(gpu, &mut rng, 1, 4096, 4096, &[16]);
    batch::<T>(gpu, &mut rng, 33, 127, 300, &[1, 256, 33, 64]);
    batch::<T>(gpu, &mut rng, 200, 64, 513, &[16, 8]);
}

#[test]
fn mixed_f32() {
    if let Some(gpu) = common::gpu() {
        sweep::<f32>(&gpu, 41);
    }
}

#[test]
fn mixed_f16() {
    if let Some(gpu) = common::gpu() {
        sweep::<f16>(&gpu, 42);
    }
}

#[test]
fn mixed_bf16() {
    if let Some(gpu) = common::gpu() {
        sweep::<bf16>(&gpu, 43);
    }
}

#[test]
fn mixed_rejects_bad_input() {
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream();
    let (a, b) = (
        s.alloc_zeros::<f32>(2 * 8).unwrap(),
        s.alloc_zeros::<f32>(5 * 2).unwrap(),
    );
    let bad_rank = [LoraAdapter::new(&a, &b, 3, 1.0)];
    assert!(matches!(
        gpu.mixed_adapters(&bad_rank, 8, 5),
        Err(lora_kernels::Error::InvalidArgument { .. })
    ));
    let table = gpu
        .mixed_adapters(&[LoraAdapter::new(&a, &b, 2, 1.0)], 8, 5)
        .unwrap();
    let (x, base) = (
        s.alloc_zeros::<f32>(3 * 8).unwrap(),
        s.alloc_zeros::<f32>(3 * 5).unwrap(),
    );
    let short = s.clone_htod(&[0i32, 0]).unwrap();
    let mut y = s.alloc_zeros::<f32>(15).unwrap();
    match gpu.lora_forward_mixed(&x, &base, &table, &short, LoraShape::new(3, 8, 5), &mut y) {
        Err(lora_kernels::Error::InvalidArgument { arg, .. }) => assert_eq!(arg, "indices"),
        other => panic!("expected an indices error, got {other:?}"),
    }
    let idx = s.clone_htod(&[0i32, 0, 0]).unwrap();
    let (x7, mut y7) = (
        s.alloc_zeros::<f32>(3 * 7).unwrap(),
        s.alloc_zeros::<f32>(3 * 5).unwrap(),
    );
    match gpu.lora_forward_mixed(&x7, &base, &table, &idx, LoraShape::new(3, 7, 5), &mut y7) {
        Err(lora_kernels::Error::InvalidArgument { arg, .. }) => assert_eq!(arg, "adapters"),
        other => panic!("expected an adapters error, got {other:?}"),
    }
}
