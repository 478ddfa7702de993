//! The base product `y = x·Wᵀ + bias` (kernels/linear.cu: the GEMV path up to 8 rows, the tiled
//! kernel above) and the DoRA forward that uses it ([`Gpu::dora_forward_linear`]) against the CPU
//! references, on random shapes: m, k and n on and off the 64 x 128 x 32 tiles and the 16-byte vectors,
//! with and without bias, and views that start one element into their allocation (the element-wise
//! load paths). Prints `SKIPPED: no CUDA device` without a GPU; fails instead with
//! `LORA_KERNELS_REQUIRE_GPU=1`.
mod common;

use common::{f64s, rel_error, tolerance, Rng};
use half::{bf16, f16};
use lora_kernels::dora::reference as dora;
use lora_kernels::lora::reference;
use lora_kernels::{DType, Element, Gpu, LoraAdapter, LoraShape};

/// The small problems only: `LORA_KERNELS_SMALL=1` or on the emulator ([`common::small_shapes`]).
fn small() -> bool {
    common::small_shapes()
}

fn shapes(rng: &mut Rng) -> Vec<LoraShape> {
    let mut shapes = vec![
        LoraShape::new(1, 8, 1),
        LoraShape::new(64, 32, 128),
        LoraShape::new(65, 33, 129),
        LoraShape::new(3, 4096, 200),
        LoraShape::new(130, 256, 300),
    ];
    if !small() {
        shapes.push(LoraShape::new(513, 1000, 700));
        for _ in 0..6 {
            shapes.push(LoraShape::new(
                rng.range(1, 300),
                rng.range(1, 600),
                rng.range(1, 400),
            ));
        }
    }
    shapes
}

fn dense<T: Element>(gpu: &Gpu, seed: u64) {
    let s = gpu.stream();
    let mut rng = Rng::new(seed);
    for shape in shapes(&mut rng) {
        let LoraShape { m, k, n } = shape;
        let x: Vec<T> = rng.vec(m * k, 1.0);
        let w: Vec<T> = rng.vec(n * k, 0.1);
        let bias: Vec<T> = rng.vec(n, 1.0);
        for (with_bias, offset) in [(false, 0usize), (true, 0), (true, 1)] {
            println!("{shape:?} bias {with_bias} offset {offset} {}", T::DTYPE);
            let b = with_bias.then_some(&bias[..]);
            let want = lora_kernels::linear::reference::linear(&x, &w, b, shape).unwrap();
            // `offset` extra leading elements: the kernel sees views one element into the allocation.
            let pad = |v: &[T]| {
                let mut p = vec![T::from_f64(0.5); offset];
                p.extend_from_slice(v);
                p
            };
            let (xd, wd, bd) = (
                s.clone_htod(&pad(&x)).unwrap(),
                s.clone_htod(&pad(&w)).unwrap(),
                s.clone_htod(&pad(&bias)).unwrap(),
            );
            let mut yd = s.alloc_zeros::<T>(m * n + offset).unwrap();
            let bias_view = bd.slice(offset..);
            {
                let mut y_view = yd.slice_mut(offset..);
                gpu.linear(
                    &xd.slice(offset..),
                    &wd.slice(offset..),
                    with_bias.then_some(&bias_view),
                    shape,
                    &mut y_view,
                )
                .unwrap();
            }
            let got = s.clone_dtoh(&yd).unwrap();
            let err = rel_error(&f64s(&got[offset..]), &f64s(&want));
            assert!(
                err <= tolerance(T::DTYPE),
                "{shape:?} bias {with_bias} offset {offset}: rel err {err:.3e}"
            );
            assert!(
                got[..offset].iter().all(|v| v.to_f64() == 0.0),
                "wrote before y"
            );
        }
    }
}

fn dora_linear<T: Element>(gpu: &Gpu, seed: u64) {
    let s = gpu.stream();
    let mut rng = Rng::new(seed);
    for shape in shapes(&mut rng) {
        let LoraShape { m, k, n } = shape;
        let rank = rng.range(1, 32);
        println!("{shape:?} rank {rank} {}", T::DTYPE);
        let x: Vec<T> = rng.vec(m * k, 1.0);
        let w: Vec<T> = rng.vec(n * k, 0.1);
        let a: Vec<T> = rng.vec(rank * k, 0.1);
        let b: Vec<T> = rng.vec(n * rank, 0.1);
        let mag: Vec<T> = rng.vec(n, 1.0);
        let bias: Vec<T> = rng.vec(n, 1.0);
        let scale = 2.0;
        let adapter = LoraAdapter::new(&a[..], &b[..], rank, scale);
        let base = lora_kernels::linear::reference::linear(&x, &w, Some(&bias), shape).unwrap();
        let norm = dora::dora_weight_norm(&w, adapter, k, n).unwrap();
        let factor = dora::dora_factor(&mag, &norm).unwrap();
        let want = dora::dora_forward(&x, &base, Some(&bias), adapter, &factor, shape).unwrap();

        let (xd, wd, ad, bd) = (
            s.clone_htod(&x).unwrap(),
            s.clone_htod(&w).unwrap(),
            s.clone_htod(&a).unwrap(),
            s.clone_htod(&b).unwrap(),
        );
        let (md, biasd) = (s.clone_htod(&mag).unwrap(), s.clone_htod(&bias).unwrap());
        let dev_adapter = LoraAdapter::new(&ad, &bd, rank, scale);
        let f = gpu.dora_factor(&wd, dev_adapter, &md, k, n).unwrap();
        let mut y = s.alloc_zeros::<T>(m * n).unwrap();
        gpu.dora_forward_linear(
            &xd,
            &wd,
            Some(&biasd.slice(..)),
            lora_kernels::DoraAdapter::new(dev_adapter, &f),
            shape,
            &mut y,
        )
        .unwrap();
        let err = rel_error(&f64s(&s.clone_dtoh(&y).unwrap()), &f64s(&want));
        // The base is rounded to T before the DoRA epilogue, as peft's base_result is.
        assert!(
            err <= 2.0 * tolerance(T::DTYPE),
            "{shape:?} rank {rank}: rel err {err:.3e}"
        );
    }
}

common::gpu_tests! { dense:
    linear_f32: f32(31),
    linear_f16: f16(32),
    linear_bf16: bf16(33),
}

common::gpu_tests! { dora_linear:
    dora_forward_linear_f32: f32(34),
    dora_forward_linear_bf16: bf16(35),
}

/// The base product with LoRA adapters from x and W (`Gpu::linear_lora_forward`) against the CPU
/// references: decode sizes fuse the adapters into the GEMV epilogue (up to 8 adapters, 256 summed
/// ranks), larger batches and more adapters take the tiled product and the fused forward in place.
fn with_adapters<T: Element>(gpu: &Gpu, seed: u64) {
    let s = gpu.stream();
    let mut rng = Rng::new(seed);
    let cases: &[(usize, usize, usize, &[usize])] = &[
        (1, 256, 96, &[8]),
        (4, 100, 33, &[1, 16, 3]),
        (8, 512, 130, &[64, 64, 64, 64]),
        (2, 64, 40, &[4, 4, 4, 4, 4, 4, 4, 4, 4]), // nine adapters: not one epilogue
        (3, 64, 40, &[200, 100]),                  // 300 summed ranks: not one epilogue
        (9, 128, 70, &[16]),                       // past the GEMV rows
    ];
    for &(m, k, n, ranks) in cases {
        println!(
            "linear_lora_forward m {m} k {k} n {n} ranks {ranks:?} {}",
            T::DTYPE
        );
        let shape = LoraShape::new(m, k, n);
        let (x, w, bias): (Vec<T>, Vec<T>, Vec<T>) =
            (rng.vec(m * k, 1.0), rng.vec(n * k, 0.1), rng.vec(n, 1.0));
        let host: Vec<(Vec<T>, Vec<T>)> = ranks
            .iter()
            .map(|&r| (rng.vec(r * k, 0.1), rng.vec(n * r, 0.1)))
            .collect();
        let views: Vec<_> = host
            .iter()
            .zip(ranks)
            .map(|((a, b), &r)| LoraAdapter::new(&a[..], &b[..], r, 0.5))
            .collect();
        let base = lora_kernels::linear::reference::linear(&x, &w, Some(&bias), shape).unwrap();
        let want = reference::lora_forward(&x, &base, &views, shape).unwrap();
        let dev: Vec<_> = host
            .iter()
            .map(|(a, b)| (s.clone_htod(a).unwrap(), s.clone_htod(b).unwrap()))
            .collect();
        let adapters: Vec<_> = dev
            .iter()
            .zip(ranks)
            .map(|((a, b), &r)| LoraAdapter::new(a, b, r, 0.5))
            .collect();
        let (xd, wd, bd) = (
            s.clone_htod(&x).unwrap(),
            s.clone_htod(&w).unwrap(),
            s.clone_htod(&bias).unwrap(),
        );
        let mut y = s.alloc_zeros::<T>(m * n).unwrap();
        gpu.linear_lora_forward(&xd, &wd, Some(&bd.slice(..)), &adapters, shape, &mut y)
            .unwrap();
        let err = rel_error(&f64s(&s.clone_dtoh(&y).unwrap()), &f64s(&want));
        assert!(
            err <= tolerance(T::DTYPE),
            "m {m} k {k} n {n} ranks {ranks:?}: rel err {err:.3e}"
        );
    }
}

common::gpu_tests! { with_adapters:
    linear_lora_forward_f32: f32(36),
    linear_lora_forward_bf16: bf16(37),
}

/// With the crossover raised (`LORA_KERNELS_GEMV_MAX_M`), the GEMV kernels run more than 8 rows in
/// 8-row passes; the results are the reference's. (Other tests running meanwhile only change path.)
#[test]
fn gemv_passes_past_eight_rows() {
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream();
    let mut rng = Rng::new(38);
    std::env::set_var("LORA_KERNELS_GEMV_MAX_M", "64");
    for shape in [LoraShape::new(20, 256, 70), LoraShape::new(9, 33, 17)] {
        let LoraShape { m, k, n } = shape;
        let (x, w, bias): (Vec<bf16>, Vec<bf16>, Vec<bf16>) =
            (rng.vec(m * k, 1.0), rng.vec(n * k, 0.1), rng.vec(n, 1.0));
        let want = lora_kernels::linear::reference::linear(&x, &w, Some(&bias), shape).unwrap();
        let bd = s.clone_htod(&bias).unwrap();
        let mut y = s.alloc_zeros::<bf16>(m * n).unwrap();
        gpu.linear(
            &s.clone_htod(&x).unwrap(),
            &s.clone_htod(&w).unwrap(),
            Some(&bd.slice(..)),
            shape,
            &mut y,
        )
        .unwrap();
        let err = rel_error(&f64s(&s.clone_dtoh(&y).unwrap()), &f64s(&want));
        assert!(
            err <= tolerance(DType::BF16),
            "{shape:?}: rel err {err:.3e}"
        );
    }
    std::env::remove_var("LORA_KERNELS_GEMV_MAX_M");
}
