//! DoRA on the GPU against the CPU reference on random shapes: the weight norm, the factor, the
//! forward (with and without bias, both tile heights), merge / unmerge (LoRA and DoRA, safe mode), and
//! zero rows. Prints `SKIPPED: no CUDA device` without a GPU; fails instead with
//! `LORA_KERNELS_REQUIRE_GPU=1`.
mod common;

use common::{assert_close, f64s, tolerance, Rng};
use half::{bf16, f16};
use lora_kernels::dora::reference;
use lora_kernels::linear::reference::linear;
use lora_kernels::{Element, Error, Gpu, LoraAdapter, LoraShape};

/// One random DoRA layer with an input batch, host side.
struct Layer<T> {
    shape: LoraShape,
    rank: usize,
    scale: f32,
    x: Vec<T>,
    weight: Vec<T>,
    bias: Option<Vec<T>>,
    lora_a: Vec<T>,
    lora_b: Vec<T>,
    magnitude: Vec<T>,
}

fn layer<T: Element>(
    rng: &mut Rng,
    m: usize,
    k: usize,
    n: usize,
    rank: usize,
    with_bias: bool,
) -> Layer<T> {
    Layer {
        shape: LoraShape::new(m, k, n),
        rank,
        scale: rng.range(1, 64) as f32 / rank as f32,
        x: rng.vec(m * k, 1.0),
        weight: rng.vec(n * k, 1.0 / (k as f64).sqrt()),
        bias: with_bias.then(|| rng.vec(n, 1.0)),
        lora_a: rng.vec(rank * k, 1.0 / (k as f64).sqrt()),
        lora_b: rng.vec(n * rank, 0.3 / (rank as f64).sqrt()),
        magnitude: (0..n)
            .map(|_| T::from_f64(0.5 + rng.uniform().abs()))
            .collect(),
    }
}

fn check_layer<T: Element>(gpu: &Gpu, l: &Layer<T>, label: &str) {
    let s = gpu.stream();
    let LoraShape { m, k, n } = l.shape;
    println!(
        "{label}: {:?} rank {} bias {} {}",
        l.shape,
        l.rank,
        l.bias.is_some(),
        T::DTYPE
    );
    let tol = tolerance(T::DTYPE);
    let host = LoraAdapter::new(&l.lora_a[..], &l.lora_b[..], l.rank, l.scale);
    let (a, b) = (
        s.clone_htod(&l.lora_a).unwrap(),
        s.clone_htod(&l.lora_b).unwrap(),
    );
    let adapter = LoraAdapter::new(&a, &b, l.rank, l.scale);
    let w = s.clone_htod(&l.weight).unwrap();

    // Norm and factor.
    let norm_ref = reference::dora_weight_norm(&l.weight, host, k, n).unwrap();
    let mut norm = s.alloc_zeros::<f32>(n).unwrap();
    gpu.dora_weight_norm(&w, adapter, k, n, &mut norm).unwrap();
    let as64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    assert_close(
        &format!("{label} norm"),
        &as64(&s.clone_dtoh(&norm).unwrap()),
        &as64(&norm_ref),
        1e-5,
    );
    let factor_ref = reference::dora_factor(&l.magnitude, &norm_ref).unwrap();
    let factor = gpu
        .dora_factor(&w, adapter, &s.clone_htod(&l.magnitude).unwrap(), k, n)
        .unwrap();
    assert_close(
        &format!("{label} factor"),
        &as64(&s.clone_dtoh(factor.values()).unwrap()),
        &as64(&factor_ref),
        1e-5,
    );

    // Forward from base = x·Wᵀ + bias.
    let base = linear(&l.x, &l.weight, l.bias.as_deref(), l.shape).unwrap();
    let want = reference::dora_forward(&l.x, &base, l.bias.as_deref(), host, &factor_ref, l.shape)
        .unwrap();
    let bias = l.bias.as_ref().map(|b| s.clone_htod(b).unwrap());
    let bias_view = bias.as_ref().map(|b| b.slice(..));
    let (x, base_d) = (s.clone_htod(&l.x).unwrap(), s.clone_htod(&base).unwrap());
    let mut y = s.alloc_zeros::<T>(m * n).unwrap();
    gpu.dora_forward(
        &x,
        &base_d,
        bias_view.as_ref(),
        lora_kernels::DoraAdapter::new(adapter, &factor),
        l.shape,
        &mut y,
    )
    .unwrap();
    assert_close(
        &format!("{label} forward"),
        &f64s(&s.clone_dtoh(&y).unwrap()),
        &f64s(&want),
        tol,
    );

    // Merge and unmerge, DoRA and plain LoRA.
    for dora in [true, false] {
        let f = dora.then_some(&factor);
        let f_ref = dora.then_some(&factor_ref[..]);
        let merged_ref = reference::dora_merged_weight(&l.weight, host, f_ref, k, n).unwrap();
        let mut merged = s.clone_htod(&l.weight).unwrap();
        gpu.merge_adapter(&mut merged, adapter, f, k, n, dora)
            .unwrap();
        let merged_host = s.clone_dtoh(&merged).unwrap();
        assert_close(
            &format!("{label} merge (dora {dora})"),
            &f64s(&merged_host),
            &f64s(&merged_ref),
            tol,
        );
        let unmerged_ref =
            reference::dora_unmerged_weight(&merged_host, host, f_ref, k, n).unwrap();
        gpu.unmerge_adapter(&mut merged, adapter, f, k, n, !dora)
            .unwrap();
        assert_close(
            &format!("{label} unmerge (dora {dora})"),
            &f64s(&s.clone_dtoh(&merged).unwrap()),
            &f64s(&unmerged_ref),
            tol,
        );
    }
}

fn random_layers<T: Element>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng::new(seed);
    let fixed: &[(usize, usize, usize, usize, bool)] = &[
        (1, 1, 1, 1, true),
        (4, 96, 80, 8, true),
        (3, 127, 65, 3, false),
        (17, 33, 100, 256, true),
        (300, 256, 130, 16, true), // 64-row tiles (16-bit)
        (2, 4096, 64, 64, false),
    ];
    for &(m, k, n, r, bias) in fixed {
        check_layer(gpu, &layer::<T>(&mut rng, m, k, n, r, bias), "fixed");
    }
    for _ in 0..6 {
        let (m, k, n) = (rng.range(1, 300), rng.range(1, 600), rng.range(1, 600));
        let r = rng.range(1, 96);
        let bias = rng.range(0, 1) == 1;
        check_layer(gpu, &layer::<T>(&mut rng, m, k, n, r, bias), "random");
    }
}

common::gpu_tests! { random_layers:
    dora_random_f32: f32(11),
    dora_random_f16: f16(12),
    dora_random_bf16: bf16(13),
}

/// A row of W + s·B·A that is zero (W row and B row zero) gives a finite factor and the bias as output.
#[test]
fn zero_rows_give_the_bias() {
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream();
    let mut rng = Rng::new(14);
    let mut l = layer::<f32>(&mut rng, 3, 64, 40, 8, true);
    for row in [0usize, 17, 39] {
        l.weight[row * 64..(row + 1) * 64]
            .iter_mut()
            .for_each(|v| *v = 0.0);
        l.lora_b[row * 8..(row + 1) * 8]
            .iter_mut()
            .for_each(|v| *v = 0.0);
    }
    let (a, b, w) = (
        s.clone_htod(&l.lora_a).unwrap(),
        s.clone_htod(&l.lora_b).unwrap(),
        s.clone_htod(&l.weight).unwrap(),
    );
    let adapter = LoraAdapter::new(&a, &b, 8, l.scale);
    let factor = gpu
        .dora_factor(&w, adapter, &s.clone_htod(&l.magnitude).unwrap(), 64, 40)
        .unwrap();
    let f = s.clone_dtoh(factor.values()).unwrap();
    assert!(
        f.iter().all(|v| v.is_finite()),
        "factor has non-finite values: {f:?}"
    );
    let base = linear(&l.x, &l.weight, l.bias.as_deref(), l.shape).unwrap();
    let (x, base_d, bias) = (
        s.clone_htod(&l.x).unwrap(),
        s.clone_htod(&base).unwrap(),
        s.clone_htod(l.bias.as_ref().unwrap()).unwrap(),
    );
    let mut y = s.alloc_zeros::<f32>(3 * 40).unwrap();
    gpu.dora_forward(
        &x,
        &base_d,
        Some(&bias.slice(..)),
        lora_kernels::DoraAdapter::new(adapter, &factor),
        l.shape,
        &mut y,
    )
    .unwrap();
    let y = s.clone_dtoh(&y).unwrap();
    let bias = l.bias.as_ref().unwrap();
    for i in 0..3 {
        for row in [0usize, 17, 39] {
            assert_eq!(y[i * 40 + row], bias[row], "output row {i}, column {row}");
        }
    }
}

/// A safe merge whose result overflows is an error and leaves W as it was.
#[test]
fn safe_merge_leaves_weight_untouched() {
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream();
    let (k, n) = (16, 4);
    let weight: Vec<f16> = (0..n * k)
        .map(|i| f16::from_f32(60000.0 - i as f32))
        .collect();
    let (a, b) = (
        s.clone_htod(&vec![f16::from_f32(1.0); k]).unwrap(),
        s.clone_htod(&vec![f16::from_f32(100.0); n]).unwrap(),
    );
    let adapter = LoraAdapter::new(&a, &b, 1, 100.0);
    let mut w = s.clone_htod(&weight).unwrap();
    match gpu.merge_adapter(&mut w, adapter, None, k, n, true) {
        Err(Error::InvalidArgument { arg, .. }) => assert_eq!(arg, "weight"),
        other => panic!("expected a safe-merge error, got {other:?}"),
    }
    assert_eq!(s.clone_dtoh(&w).unwrap(), weight);
}

/// Bad DoRA arguments are errors before any launch.
#[test]
fn dora_rejects_bad_input() {
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream();
    let (k, n, r) = (8, 5, 2);
    let (w, a, b) = (
        s.alloc_zeros::<f32>(n * k).unwrap(),
        s.alloc_zeros::<f32>(r * k).unwrap(),
        s.alloc_zeros::<f32>(n * r).unwrap(),
    );
    let m_short = s.alloc_zeros::<f32>(n - 1).unwrap();
    let adapter = LoraAdapter::new(&a, &b, r, 1.0);
    match gpu.dora_factor(&w, adapter, &m_short, k, n) {
        Err(Error::InvalidArgument { arg, .. }) => assert_eq!(arg, "magnitude"),
        other => panic!("expected a magnitude error, got {other:?}"),
    }
    let m = s.clone_htod(&[1.0f32; 5]).unwrap();
    let factor = gpu.dora_factor(&w, adapter, &m, k, n).unwrap();
    let (x, base) = (
        s.alloc_zeros::<f32>(3 * k).unwrap(),
        s.alloc_zeros::<f32>(3 * 7).unwrap(),
    );
    let mut y = s.alloc_zeros::<f32>(3 * 7).unwrap();
    let b7 = s.alloc_zeros::<f32>(7 * r).unwrap();
    match gpu.dora_forward(
        &x,
        &base,
        None,
        lora_kernels::DoraAdapter::new(LoraAdapter::new(&a, &b7, r, 1.0), &factor),
        LoraShape::new(3, k, 7),
        &mut y,
    ) {
        Err(Error::InvalidArgument { arg, .. }) => assert_eq!(arg, "factor"),
        other => panic!("expected a factor-length error, got {other:?}"),
    }
    let mut w_short = s.alloc_zeros::<f32>(n * k - 1).unwrap();
    match gpu.merge_adapter(&mut w_short, adapter, Some(&factor), k, n, false) {
        Err(Error::InvalidArgument { arg, .. }) => assert_eq!(arg, "weight"),
        other => panic!("expected a weight-length error, got {other:?}"),
    }
}
