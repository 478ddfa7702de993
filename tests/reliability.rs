//! Reliability (issue 15): a failed call leaves a layer as it was, duplicate names are errors, a
//! layer's adapter buffers have exact lengths, huge dimensions are errors (never an overflow panic:
//! the tests run in debug), and a NaN that goes in comes out. The CPU reference always; the GPU (or
//! the emulator) through `common::gpu()`.
mod common;

use lora_kernels::dora::reference as dora;
use lora_kernels::int8::reference as int8;
use lora_kernels::layer::{BaseWeight, Layer, LayerAdapter, ReferenceLayer};
use lora_kernels::lora::reference as lora;
use lora_kernels::{Error, Gpu, LoraAdapter, LoraShape};

const K: usize = 8;
const N: usize = 4;
const R: usize = 2;

fn weight() -> Vec<f32> {
    (0..N * K)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.05)
        .collect()
}

/// A LoRA adapter (`magnitude` None) or a DoRA one, rank 2, with distinct values per `seed`.
fn adapter(seed: usize, magnitude: Option<Vec<f32>>) -> LayerAdapter<f32> {
    LayerAdapter {
        lora_a: (0..R * K)
            .map(|i| (((i + seed) * 13 % 17) as f32 - 8.0) * 0.03)
            .collect(),
        lora_b: (0..N * R)
            .map(|i| (((i + seed) * 7 % 11) as f32 - 5.0) * 0.04)
            .collect(),
        rank: R,
        scale: 0.5,
        magnitude,
    }
}

/// A DoRA adapter whose magnitude is 0 on row 1: its safe merge succeeds (that row of W becomes 0),
/// its unmerge cannot succeed (`W / 0`).
fn zero_magnitude_dora() -> LayerAdapter<f32> {
    adapter(3, Some(vec![1.0, 0.0, 0.7, 1.2]))
}

/// A LoRA adapter whose merge overflows f32 (non-finite: a safe merge refuses it).
fn overflowing_lora() -> LayerAdapter<f32> {
    LayerAdapter {
        lora_a: vec![3e38; R * K],
        lora_b: vec![3e38; N * R],
        ..adapter(5, None)
    }
}

fn x(m: usize) -> Vec<f32> {
    (0..m * K)
        .map(|i| ((i * 5 % 9) as f32 - 4.0) * 0.1)
        .collect()
}

fn reference_layer(adapters: &[(&str, LayerAdapter<f32>)]) -> ReferenceLayer<f32> {
    let mut layer = ReferenceLayer::new(weight(), None, K, N).unwrap();
    for (name, a) in adapters {
        layer.add_adapter(name, a.clone()).unwrap();
    }
    layer
}

fn gpu_layer(gpu: &Gpu, adapters: &[(&str, LayerAdapter<f32>)]) -> Layer<f32> {
    let mut layer = Layer::dense(gpu, &weight(), None, K, N).unwrap();
    for (name, a) in adapters {
        layer.add_adapter(name, a).unwrap();
    }
    layer
}

fn dense_weight(gpu: &Gpu, layer: &Layer<f32>) -> Vec<f32> {
    match layer.base() {
        BaseWeight::Dense(w) => gpu.stream().clone_dtoh(w).unwrap(),
        other => panic!("a dense base, not {other:?}"),
    }
}

fn gpu_forward(gpu: &Gpu, layer: &mut Layer<f32>, x: &[f32], m: usize) -> Vec<f32> {
    let s = gpu.stream();
    let mut y = s.alloc_zeros::<f32>(m * N).unwrap();
    layer
        .forward(&s.clone_htod(x).unwrap(), m, None, &mut y)
        .unwrap();
    s.clone_dtoh(&y).unwrap()
}

/// A failing unmerge (a DoRA magnitude with a 0) leaves W merged and the adapter on the merged list,
/// so the next forward applies it once; also when it is the second of two unmerges (W back to the
/// fully merged state). A failing second merge leaves W and the merged list as before the call.
#[test]
fn failed_merge_or_unmerge_leaves_the_reference_layer_unchanged() {
    let m = 3;
    let x = x(m);
    let mut layer = reference_layer(&[("d", zero_magnitude_dora()), ("a", adapter(1, None))]);
    layer.set_active(&["d"]).unwrap();
    let unmerged = layer.forward(&x, m, None).unwrap();
    layer.merge(None, true).unwrap();
    let merged_w = layer.weight().to_vec();
    let merged_y = layer.forward(&x, m, None).unwrap();
    assert!(layer.unmerge().is_err(), "W / 0 cannot be undone");
    assert_eq!(layer.merged(), vec!["d"], "still merged");
    assert_eq!(layer.weight(), &merged_w[..], "W still holds the adapter");
    assert_eq!(
        layer.forward(&x, m, None).unwrap(),
        merged_y,
        "applied once"
    );
    assert!(common::rel_error(&common::f64s(&merged_y), &common::f64s(&unmerged)) < 1e-5);

    // Two merged, the second unmerge (of "d", merged first) fails: W is the fully merged W.
    let mut layer = reference_layer(&[("d", zero_magnitude_dora()), ("a", adapter(1, None))]);
    layer.merge(Some(&["d", "a"]), true).unwrap();
    let merged_w = layer.weight().to_vec();
    assert!(layer.unmerge().is_err());
    assert_eq!(layer.merged(), vec!["d", "a"]);
    assert_eq!(layer.weight(), &merged_w[..]);
    // A disabled forward unmerges first: it fails the same way and changes nothing.
    layer.set_disabled(true);
    assert!(layer.forward(&x, m, None).is_err());
    assert_eq!(layer.merged(), vec!["d", "a"]);
    assert_eq!(layer.weight(), &merged_w[..]);

    // A failing second merge of a list.
    let mut layer = reference_layer(&[("a", adapter(1, None)), ("big", overflowing_lora())]);
    let w0 = layer.weight().to_vec();
    assert!(layer.merge(Some(&["a", "big"]), true).is_err());
    assert!(layer.merged().is_empty());
    assert_eq!(layer.weight(), &w0[..]);
}

/// The GPU layer on the same inputs: the same errors, the same unchanged state, and W on the device
/// unchanged (it used to unmerge unchecked, writing NaN and dropping the adapter from the list).
#[test]
fn failed_merge_or_unmerge_leaves_the_gpu_layer_unchanged() {
    let Some(gpu) = common::gpu() else { return };
    let m = 3;
    let x = x(m);
    let adapters = [("d", zero_magnitude_dora()), ("a", adapter(1, None))];
    let mut layer = gpu_layer(&gpu, &adapters);
    let mut cpu = reference_layer(&adapters);
    layer.set_active(&["d"]).unwrap();
    cpu.set_active(&["d"]).unwrap();
    layer.merge(None, true).unwrap();
    cpu.merge(None, true).unwrap();
    let merged_w = dense_weight(&gpu, &layer);
    let merged_y = gpu_forward(&gpu, &mut layer, &x, m);
    assert!(layer.unmerge().is_err(), "as the CPU layer");
    assert!(cpu.unmerge().is_err());
    assert_eq!(layer.merged(), vec!["d"]);
    assert_eq!(dense_weight(&gpu, &layer), merged_w);
    assert_eq!(
        gpu_forward(&gpu, &mut layer, &x, m),
        merged_y,
        "applied once"
    );
    let cpu_y = cpu.forward(&x, m, None).unwrap();
    assert!(common::rel_error(&common::f64s(&merged_y), &common::f64s(&cpu_y)) < 1e-5);

    let mut layer = gpu_layer(&gpu, &adapters);
    layer.merge(Some(&["d", "a"]), true).unwrap();
    let merged_w = dense_weight(&gpu, &layer);
    assert!(layer.unmerge().is_err());
    assert_eq!(layer.merged(), vec!["d", "a"]);
    assert_eq!(dense_weight(&gpu, &layer), merged_w, "W fully merged again");

    let mut layer = gpu_layer(
        &gpu,
        &[("a", adapter(1, None)), ("big", overflowing_lora())],
    );
    let w0 = dense_weight(&gpu, &layer);
    assert!(layer.merge(Some(&["a", "big"]), true).is_err());
    assert!(layer.merged().is_empty());
    assert_eq!(dense_weight(&gpu, &layer), w0);
    // A successful merge of several and its unmerge still work (through the copy of W).
    layer.merge(Some(&["a"]), true).unwrap();
    layer.unmerge().unwrap();
    let back = dense_weight(&gpu, &layer);
    assert!(common::rel_error(&common::f64s(&back), &common::f64s(&w0)) < 1e-6);
}

fn assert_invalid<T: std::fmt::Debug>(r: lora_kernels::Result<T>, parts: &[&str]) {
    match r {
        Err(Error::InvalidArgument {
            arg,
            expected,
            actual,
        }) => {
            let msg = format!("{arg}: {expected} / {actual}");
            for p in parts {
                assert!(msg.contains(p), "`{msg}` does not mention `{p}`");
            }
        }
        other => panic!("expected InvalidArgument mentioning {parts:?}, got {other:?}"),
    }
}

/// `set_active(["a", "a"])` and `merge(Some(["a", "a"]))` are errors naming the duplicate, on both
/// layers, and leave the active set as it was.
#[test]
fn duplicate_names_are_errors() {
    let m = 2;
    let x = x(m);
    let mut cpu = reference_layer(&[("a", adapter(1, None))]);
    cpu.set_active(&["a"]).unwrap();
    let once = cpu.forward(&x, m, None).unwrap();
    assert_invalid(cpu.set_active(&["a", "a"]), &["names", "`a` twice"]);
    assert_eq!(cpu.forward(&x, m, None).unwrap(), once, "active set kept");
    assert_invalid(cpu.merge(Some(&["a", "a"]), true), &["names", "`a` twice"]);
    assert!(cpu.merged().is_empty());
    let Some(gpu) = common::gpu() else { return };
    let mut layer = gpu_layer(&gpu, &[("a", adapter(1, None))]);
    layer.set_active(&["a"]).unwrap();
    let once = gpu_forward(&gpu, &mut layer, &x, m);
    assert_invalid(layer.set_active(&["a", "a"]), &["names", "`a` twice"]);
    assert_eq!(gpu_forward(&gpu, &mut layer, &x, m), once);
    assert_invalid(
        layer.merge(Some(&["a", "a"]), true),
        &["names", "`a` twice"],
    );
}

/// A layer adapter's buffers are its own: A, B and the magnitude must have exactly rank·k, n·rank and
/// n elements (a longer A used to be accepted with its tail ignored).
#[test]
fn layer_adapter_lengths_are_exact() {
    let long_a = LayerAdapter {
        lora_a: vec![0.1; R * K + 1],
        ..adapter(1, None)
    };
    let long_b = LayerAdapter {
        lora_b: vec![0.1; N * R + 3],
        ..adapter(1, None)
    };
    let long_m = adapter(1, Some(vec![1.0; N + 1]));
    let cases = [
        (long_a, ["lora_a", "exactly 16", "17 elements"]),
        (long_b, ["lora_b", "exactly 8", "11 elements"]),
        (long_m, ["magnitude", "exactly 4", "5 elements"]),
    ];
    let mut cpu = reference_layer(&[]);
    for (a, parts) in &cases {
        assert_invalid(cpu.add_adapter("x", a.clone()), parts);
    }
    let Some(gpu) = common::gpu() else { return };
    let mut layer = gpu_layer(&gpu, &[]);
    for (a, parts) in &cases {
        assert_invalid(layer.add_adapter("x", a), parts);
    }
    // Buffers already on the GPU: the same rule.
    let s = gpu.stream();
    let a = &cases[0].0;
    assert_invalid(
        layer.add_device_adapter(
            "x",
            lora_kernels::layer::DeviceLayerAdapter {
                lora_a: s.clone_htod(&a.lora_a).unwrap(),
                lora_b: s.clone_htod(&a.lora_b).unwrap(),
                rank: a.rank,
                scale: a.scale,
                magnitude: None,
            },
        ),
        &cases[0].1,
    );
}

/// 2^63: times 2 it overflows usize.
const HUGE: usize = usize::MAX / 2 + 1;

/// Every public CPU op given huge dimensions returns an error (in debug builds a size product
/// computed before the check would panic; in release it would wrap and pass the check).
#[test]
fn huge_dimensions_are_errors_on_the_cpu() {
    let v = vec![0.5f32; 64];
    let ad = LoraAdapter::new(&v[..], &v[..], 1, 1.0);
    for shape in [
        LoraShape::new(HUGE, 2, 2),
        LoraShape::new(2, HUGE, 2),
        LoraShape::new(2, 2, HUGE),
    ] {
        let LoraShape { k, n, .. } = shape;
        assert!(lora::lora_forward(&v, &v, &[ad], shape).is_err());
        let mut y = v.clone();
        assert!(lora::lora_forward_inplace(&v, &[ad], shape, &mut y).is_err());
        assert!(lora_kernels::linear::reference::linear(&v, &v, None, shape).is_err());
        assert!(dora::dora_forward(&v, &v, None, ad, &v, shape).is_err());
        assert!(lora_kernels::mixed_batch::reference::lora_forward_mixed(
            &v,
            &v,
            &[ad],
            &[0; 4],
            shape
        )
        .is_err());
        let q = int8::quantize_rowwise(&v[..4], [2, 2]).unwrap();
        assert!(int8::linear_weight_only(&v, &q, None, shape).is_err());
        assert!(int8::linear_llm_int8(&v, &q, None, 0.0, shape).is_err());
        if k != 2 || n != 2 {
            assert!(lora::lora_delta_weight(ad, k, n).is_err());
            assert!(lora::lora_merged_weight(&v, ad, k, n).is_err());
            assert!(dora::dora_weight_norm(&v, ad, k, n).is_err());
            assert!(dora::dora_merged_weight(&v, ad, None, k, n).is_err());
            assert!(dora::dora_merged_weight_unchecked(&v, ad, None, k, n).is_err());
            assert!(dora::dora_unmerged_weight(&v, ad, None, k, n).is_err());
            assert!(int8::quantize_rowwise(&v, [n, k]).is_err());
            assert!(ReferenceLayer::new(v.clone(), None, k, n).is_err());
        }
    }
    let mut layer = reference_layer(&[]);
    assert!(layer.forward(&v, HUGE, None).is_err());
}

/// Every GPU entry point given huge dimensions returns an error before any allocation or launch.
#[test]
fn huge_dimensions_are_errors_on_the_gpu() {
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream();
    let v = s.clone_htod(&[0.5f32; 64]).unwrap();
    let ad = LoraAdapter::new(&v, &v, 1, 1.0);
    let small = LoraAdapter::new(&v, &v, 1, 1.0);
    let factor = gpu.dora_factor(&v, small, &v, 2, 2).unwrap();
    for shape in [
        LoraShape::new(HUGE, 2, 2),
        LoraShape::new(2, HUGE, 2),
        LoraShape::new(2, 2, HUGE),
    ] {
        let LoraShape { m, k, n } = shape;
        let mut y = s.alloc_zeros::<f32>(64).unwrap();
        assert!(gpu.linear(&v, &v, None, shape, &mut y).is_err());
        assert!(gpu
            .linear_lora_forward(&v, &v, None, &[ad], shape, &mut y)
            .is_err());
        assert!(gpu.lora_forward(&v, &v, &[ad], shape, &mut y).is_err());
        assert!(gpu.lora_forward_inplace(&v, &[ad], shape, &mut y).is_err());
        assert!(gpu
            .dora_forward(
                &v,
                &v,
                None,
                lora_kernels::DoraAdapter::new(ad, &factor),
                shape,
                &mut y
            )
            .is_err());
        assert!(gpu
            .dora_forward_inplace(
                &v,
                None,
                lora_kernels::DoraAdapter::new(ad, &factor),
                shape,
                &mut y
            )
            .is_err());
        assert!(gpu
            .dora_forward_linear(
                &v,
                &v,
                None,
                lora_kernels::DoraAdapter::new(ad, &factor),
                shape,
                &mut y
            )
            .is_err());
        if m == 2 {
            let mut w = s.alloc_zeros::<f32>(64).unwrap();
            let mut norm = s.alloc_zeros::<f32>(64).unwrap();
            assert!(gpu.dora_weight_norm(&v, ad, k, n, &mut norm).is_err());
            assert!(gpu.dora_factor(&v, ad, &v, k, n).is_err());
            assert!(gpu.merge_adapter(&mut w, ad, None, k, n, true).is_err());
            assert!(gpu.unmerge_adapter(&mut w, ad, None, k, n, false).is_err());
            assert!(gpu.quantize_int8(&v, k, n).is_err());
            assert!(gpu.mixed_adapters(&[ad], k, n).is_err());
            assert!(Layer::dense(&gpu, &[0.5f32; 4], None, k, n).is_err());
            assert!(Layer::<f32>::from_device(
                &gpu,
                BaseWeight::Dense(s.alloc_zeros::<f32>(4).unwrap()),
                [n, k],
                None
            )
            .is_err());
        }
    }
    let q = gpu
        .upload_int8(&int8::quantize_rowwise(&[0.5f32; 4], [2, 2]).unwrap())
        .unwrap();
    let mut y = s.alloc_zeros::<f32>(64).unwrap();
    assert!(gpu
        .int8_linear_llm(&v, &q, None, 0.0, HUGE, &mut y)
        .is_err());
    let mut layer = gpu_layer(&gpu, &[]);
    assert!(layer.forward(&v, HUGE, None, &mut y).is_err());
}

/// A NaN norm gives a NaN DoRA factor (peft's `m / norm`), not `m / eps` ≈ 1e12·m; a zero norm still
/// gives the finite `m / eps`.
#[test]
fn dora_factor_propagates_nan() {
    let f = dora::dora_factor(&[2.0f32, 2.0, 2.0], &[f32::NAN, 0.0, 4.0]).unwrap();
    assert!(f[0].is_nan(), "{f:?}");
    assert_eq!(f[1], 2.0 / lora_kernels::dora::DORA_NORM_EPS);
    assert_eq!(f[2], 0.5);
    // Through the norm: a NaN in row 1 of W.
    let mut w = weight();
    w[K + 3] = f32::NAN;
    let a = adapter(1, None);
    let view = LoraAdapter::new(&a.lora_a[..], &a.lora_b[..], R, a.scale);
    let norm = dora::dora_weight_norm(&w, view, K, N).unwrap();
    let f = dora::dora_factor(&[1.0f32; N], &norm).unwrap();
    assert!(
        f[1].is_nan() && f[0].is_finite() && f[2].is_finite(),
        "{f:?}"
    );
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream();
    let wd = s.clone_htod(&w).unwrap();
    let (ad, bd) = (
        s.clone_htod(&a.lora_a).unwrap(),
        s.clone_htod(&a.lora_b).unwrap(),
    );
    let md = s.clone_htod(&[1.0f32; N]).unwrap();
    let fd = gpu
        .dora_factor(&wd, LoraAdapter::new(&ad, &bd, R, a.scale), &md, K, N)
        .unwrap();
    let g = s.clone_dtoh(fd.values()).unwrap();
    assert!(g[1].is_nan(), "GPU factor {g:?}");
    assert!(
        common::rel_error(
            &common::f64s(&[g[0], g[2], g[3]]),
            &common::f64s(&[f[0], f[2], f[3]])
        ) < 1e-5
    );
}

/// LLM.int8: a row of x holding a NaN or an infinity gives NaN in every output of that row (as the
/// weight-only product does for NaN), with or without the outlier split; other rows are unchanged.
#[test]
fn llm_int8_propagates_nan_and_inf_rows() {
    let (m, k, n) = (3, 32, 5);
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let clean: Vec<f32> = (0..m * k)
        .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
        .collect();
    let q = int8::quantize_rowwise(&w, [n, k]).unwrap();
    let shape = LoraShape::new(m, k, n);
    let gpu = common::gpu();
    for bad in [f32::NAN, f32::INFINITY, -1e6] {
        for threshold in [0.0f32, 1.5] {
            let mut x = clean.clone();
            x[k + 7] = bad; // row 1
            let want_clean = int8::linear_llm_int8(&clean, &q, None, threshold, shape).unwrap();
            let y = int8::linear_llm_int8(&x, &q, None, threshold, shape).unwrap();
            assert!(
                y[n..2 * n].iter().all(|v| v.is_nan()),
                "{bad} threshold {threshold}: row 1 {:?}",
                &y[n..2 * n]
            );
            assert_eq!(&y[..n], &want_clean[..n], "row 0 unchanged");
            assert_eq!(&y[2 * n..], &want_clean[2 * n..], "row 2 unchanged");
            if bad.is_nan() {
                let wo = int8::linear_weight_only(&x, &q, None, shape).unwrap();
                assert!(wo[n..2 * n].iter().all(|v| v.is_nan()));
            }
            let Some(gpu) = &gpu else { continue };
            let s = gpu.stream();
            let qd = gpu.upload_int8(&q).unwrap();
            let mut yd = s.alloc_zeros::<f32>(m * n).unwrap();
            gpu.int8_linear_llm(&s.clone_htod(&x).unwrap(), &qd, None, threshold, m, &mut yd)
                .unwrap();
            let g = s.clone_dtoh(&yd).unwrap();
            assert!(
                g[n..2 * n].iter().all(|v| v.is_nan()),
                "GPU {bad} threshold {threshold}: row 1 {:?}",
                &g[n..2 * n]
            );
            let others: Vec<f64> = g[..n]
                .iter()
                .chain(&g[2 * n..])
                .map(|&v| v as f64)
                .collect();
            let want: Vec<f64> = y[..n]
                .iter()
                .chain(&y[2 * n..])
                .map(|&v| v as f64)
                .collect();
            assert!(common::rel_error(&others, &want) < 1e-3, "GPU other rows");
        }
    }
}
