//! The fused LoRA forward on the GPU against the CPU reference, on random shapes (odd sizes, every
//! tile edge, m = 1 to several thousand, ranks 1 to 256, several adapters, in place, unaligned views).
//! Prints `SKIPPED: no CUDA device` without a GPU; fails instead with `LORA_KERNELS_REQUIRE_GPU=1`.
mod common;

use common::{f64s, rel_error, tolerance, Rng};
use half::{bf16, f16};
use lora_kernels::lora::reference;
use lora_kernels::{Element, Gpu, LoraAdapter, LoraShape};

/// One random problem: x, base and adapters (A, B, rank, scale), host side.
struct Problem<T> {
    shape: LoraShape,
    x: Vec<T>,
    base: Vec<T>,
    adapters: Vec<(Vec<T>, Vec<T>, usize, f32)>,
}

fn problem<T: Element>(rng: &mut Rng, m: usize, k: usize, n: usize, ranks: &[usize]) -> Problem<T> {
    let adapters = ranks
        .iter()
        .map(|&r| {
            let scale = (rng.range(1, 64) as f32) / r as f32;
            // Scaled so the LoRA term is comparable to base whatever k and r are.
            (
                rng.vec(r * k, 1.0 / (k as f64).sqrt()),
                rng.vec(n * r, 1.0 / (r as f64).sqrt()),
                r,
                scale,
            )
        })
        .collect();
    Problem {
        shape: LoraShape::new(m, k, n),
        x: rng.vec(m * k, 1.0),
        base: rng.vec(m * n, 1.0),
        adapters,
    }
}

fn host_adapters<T>(p: &Problem<T>) -> Vec<LoraAdapter<'_, [T]>> {
    p.adapters
        .iter()
        .map(|(a, b, r, s)| LoraAdapter::new(&a[..], &b[..], *r, *s))
        .collect()
}

/// `LORA_KERNELS_SMALL=1` (as under compute-sanitizer) and the emulator skip the problems larger
/// than this ([`common::small_shapes`]).
fn too_big_for_small_runs(p: &Problem<impl Element>) -> bool {
    let LoraShape { m, k, n } = p.shape;
    common::small_shapes() && m * (k + n) > 400_000
}

/// Runs `p` on the GPU (out of place and in place) and compares both with the CPU reference.
fn check<T: Element>(gpu: &Gpu, p: &Problem<T>, label: &str) {
    if too_big_for_small_runs(p) {
        return;
    }
    let ranks: Vec<usize> = p.adapters.iter().map(|a| a.2).collect();
    println!("{label}: {:?} ranks {ranks:?} {}", p.shape, T::DTYPE);
    let s = gpu.stream();
    let expected =
        f64s(&reference::lora_forward(&p.x, &p.base, &host_adapters(p), p.shape).unwrap());
    let x = s.clone_htod(&p.x).unwrap();
    let base = s.clone_htod(&p.base).unwrap();
    let dev: Vec<_> = p
        .adapters
        .iter()
        .map(|(a, b, _, _)| (s.clone_htod(a).unwrap(), s.clone_htod(b).unwrap()))
        .collect();
    let adapters: Vec<_> = dev
        .iter()
        .zip(&p.adapters)
        .map(|((a, b), (_, _, r, sc))| LoraAdapter::new(a, b, *r, *sc))
        .collect();
    let mut y = s.alloc_zeros::<T>(p.shape.m * p.shape.n).unwrap();
    gpu.lora_forward(&x, &base, &adapters, p.shape, &mut y)
        .unwrap();
    let got = f64s(&s.clone_dtoh(&y).unwrap());
    let tol = tolerance(T::DTYPE);
    let err = rel_error(&got, &expected);
    assert!(
        err <= tol,
        "{label} {:?} {}: rel err {err:.3e} > {tol:.0e}",
        p.shape,
        T::DTYPE
    );

    let mut y2 = s.clone_htod(&p.base).unwrap();
    gpu.lora_forward_inplace(&x, &adapters, p.shape, &mut y2)
        .unwrap();
    let err2 = rel_error(&f64s(&s.clone_dtoh(&y2).unwrap()), &expected);
    assert!(
        err2 <= tol,
        "{label} in place {:?} {}: rel err {err2:.3e} > {tol:.0e}",
        p.shape,
        T::DTYPE
    );
}

fn random_shapes<T: Element>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng::new(seed);
    // Tile edges: 16/64 rows, 32/64-column k slices, 64-column n tiles; vector and scalar paths.
    let fixed: &[(usize, usize, usize, &[usize])] = &[
        (1, 1, 1, &[1]),
        (1, 4096, 4096, &[16]),
        (1, 96, 80, &[8]),
        (3, 64, 72, &[16]),
        (5, 127, 65, &[3]),
        (16, 64, 64, &[64]),
        (17, 65, 63, &[33]),
        (2, 200, 130, &[256]),
        (33, 1000, 129, &[7, 9]),
        (64, 512, 256, &[8, 16, 32]),
        (1100, 256, 200, &[16]),
        (2050, 136, 70, &[64]),
        // 64-row tiles: several output tiles per item, the element-wise shrink, odd n.
        (300, 2048, 512, &[16]),
        (600, 100, 77, &[40]),
        (257, 136, 1000, &[8, 8]),
        // 16-row tiles with B in several rank chunks, and ranks past the register-staged 128.
        (500, 256, 256, &[100]),
        (300, 64, 136, &[129, 30]),
    ];
    for &(m, k, n, ranks) in fixed {
        check(gpu, &problem::<T>(&mut rng, m, k, n, ranks), "fixed");
    }
    for _ in 0..12 {
        let m = [rng.range(1, 20), rng.range(1, 300), rng.range(1000, 2500)][rng.range(0, 2)];
        let (k, n) = (rng.range(1, 700), rng.range(1, 700));
        let ranks: Vec<usize> = (0..rng.range(1, 3)).map(|_| rng.range(1, 128)).collect();
        check(gpu, &problem::<T>(&mut rng, m, k, n, &ranks), "random");
    }
}

common::gpu_tests! { random_shapes:
    random_shapes_f32: f32(1),
    random_shapes_f16: f16(2),
    random_shapes_bf16: bf16(3),
}

/// More than 256 summed ranks or 8 adapters split into several launches; the sum is still exact.
#[test]
fn many_adapters_split_into_launches() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = Rng::new(4);
    check(
        &gpu,
        &problem::<bf16>(&mut rng, 5, 300, 190, &[200, 100, 7]),
        "split by rank",
    );
    let ten = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    check(
        &gpu,
        &problem::<f32>(&mut rng, 9, 130, 70, &ten),
        "split by count",
    );
    check(
        &gpu,
        &problem::<f16>(&mut rng, 2, 64, 64, &[256, 256]),
        "two full launches",
    );
}

/// Back-to-back launches of different plans reuse the counters: each must leave them reset.
#[test]
fn repeated_launches_reset_their_counters() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = Rng::new(5);
    let problems = [
        problem::<bf16>(&mut rng, 1, 4096, 512, &[16]),
        problem::<bf16>(&mut rng, 1500, 128, 96, &[8]),
        problem::<bf16>(&mut rng, 7, 777, 33, &[40]),
    ];
    for round in 0..3 {
        for p in &problems {
            check(&gpu, p, &format!("round {round}"));
        }
    }
}

/// No adapter: y = base.
#[test]
fn no_adapters_copies_base() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = Rng::new(6);
    check(
        &gpu,
        &problem::<f32>(&mut rng, 3, 10, 11, &[]),
        "no adapters",
    );
}

/// Views at odd element offsets are not 16-byte aligned: the scalar load paths must be exact too.
#[test]
fn unaligned_views() {
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream();
    let mut rng = Rng::new(7);
    let (m, k, n, r) = (9, 256, 128, 16);
    let p = problem::<bf16>(&mut rng, m, k, n, &[r]);
    let pad = |v: &[bf16]| {
        let mut w = vec![bf16::from_f32(0.5)];
        w.extend_from_slice(v);
        s.clone_htod(&w).unwrap()
    };
    let (x, base, a, b) = (
        pad(&p.x),
        pad(&p.base),
        pad(&p.adapters[0].0),
        pad(&p.adapters[0].1),
    );
    let mut y = s.alloc_zeros::<bf16>(m * n + 1).unwrap();
    let adapter_views = (a.slice(1..), b.slice(1..));
    let adapter = LoraAdapter::new(&adapter_views.0, &adapter_views.1, r, p.adapters[0].3);
    let mut y_view = y.slice_mut(1..);
    gpu.lora_forward(
        &x.slice(1..),
        &base.slice(1..),
        &[adapter],
        p.shape,
        &mut y_view,
    )
    .unwrap();
    let expected =
        f64s(&reference::lora_forward(&p.x, &p.base, &host_adapters(&p), p.shape).unwrap());
    let got = f64s(&s.clone_dtoh(&y).unwrap()[1..]);
    let err = rel_error(&got, &expected);
    assert!(err <= 1e-2, "unaligned views: rel err {err:.3e}");
}
