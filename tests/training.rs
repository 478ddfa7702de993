//! Training through the layer API: `forward_train` gives the forward's values, `backward` the CPU
//! reference layer's gradients (dense, 4-bit and int8 bases; a LoRA + DoRA chain; dX accumulated),
//! saved forwards go stale when the layer changes, training through merged weights is an error, and
//! a tiny SGD loop on a toy regression lowers its loss on the GPU step for step as on the CPU
//! reference. The GPU tests run on the GPU or the emulator (`common::gpu()`); the reference's own
//! checks always run.
mod common;

use common::{assert_close, f64s, tolerance, Rng};
use cudarc::driver::CudaSlice;
use half::bf16;
use lora_kernels::layer::{Layer, LayerAdapter, LayerGrads, ReferenceLayer};
use lora_kernels::quant4::QuantType;
use lora_kernels::{Element, Error, Gpu};

const K: usize = 40;
const N: usize = 24;

fn adapter<T: Element>(rng: &mut Rng, rank: usize, dora: bool) -> LayerAdapter<T> {
    LayerAdapter {
        lora_a: rng.vec(rank * K, 1.0 / (K as f64).sqrt()),
        lora_b: rng.vec(N * rank, 0.3),
        rank,
        scale: 2.0 / rank as f32,
        magnitude: dora.then(|| {
            (0..N)
                .map(|_| T::from_f64(0.6 + rng.uniform().abs()))
                .collect()
        }),
    }
}

/// A reference layer over `weight` with a LoRA ("q") and a DoRA ("d") adapter, both active.
fn reference_layer<T: Element>(
    rng: &mut Rng,
    weight: Vec<T>,
    bias: Option<Vec<T>>,
) -> ReferenceLayer<T> {
    let mut layer = ReferenceLayer::new(weight, bias, K, N).unwrap();
    layer.add_adapter("q", adapter(rng, 4, false)).unwrap();
    layer.add_adapter("d", adapter(rng, 3, true)).unwrap();
    layer.set_active(&["q", "d"]).unwrap();
    layer
}

fn assert_grads<T: Element>(
    label: &str,
    s: &std::sync::Arc<cudarc::driver::CudaStream>,
    got: &LayerGrads<CudaSlice<T>>,
    want: &LayerGrads<Vec<T>>,
    tol: f64,
) {
    let host = |v: &CudaSlice<T>| f64s(&s.clone_dtoh(v).unwrap());
    assert_close(&format!("{label} dx"), &host(&got.x), &f64s(&want.x), tol);
    assert_eq!(
        got.adapters.keys().collect::<Vec<_>>(),
        want.adapters.keys().collect::<Vec<_>>()
    );
    for (name, w) in &want.adapters {
        let g = &got.adapters[name];
        assert_close(
            &format!("{label} {name}.A"),
            &host(&g.lora_a),
            &f64s(&w.lora_a),
            tol,
        );
        assert_close(
            &format!("{label} {name}.B"),
            &host(&g.lora_b),
            &f64s(&w.lora_b),
            tol,
        );
        assert_eq!(
            g.magnitude.is_some(),
            w.magnitude.is_some(),
            "{label} {name}"
        );
        if let (Some(gm), Some(wm)) = (&g.magnitude, &w.magnitude) {
            assert_close(&format!("{label} {name}.m"), &host(gm), &f64s(wm), tol);
        }
    }
}

/// The GPU layer's training forward and backward against the reference layer's, on one base.
fn layer_matches_reference<T: Element>(gpu: &Gpu, base: &str) {
    let mut rng = Rng::new(11);
    let m = 7;
    let w: Vec<T> = rng.vec(N * K, 1.0 / (K as f64).sqrt());
    let bias: Vec<T> = rng.vec(N, 0.5);
    // The reference runs on the weight the GPU layer's base dequantises to.
    let (mut gpu_layer, w_ref) = match base {
        "dense" => (Layer::dense(gpu, &w, Some(&bias), K, N).unwrap(), w.clone()),
        "nf4" => {
            let q = lora_kernels::quant4::reference::quantize(&w, [N, K], 64, QuantType::Nf4, true)
                .unwrap();
            let deq = lora_kernels::quant4::reference::dequantize(&q).unwrap();
            (Layer::quant4(gpu, &q, Some(&bias)).unwrap(), deq)
        }
        _ => {
            let q = lora_kernels::int8::reference::quantize_rowwise(&w, [N, K]).unwrap();
            let deq = lora_kernels::int8::reference::dequantize_to(&q).unwrap();
            (Layer::int8(gpu, &q, Some(&bias)).unwrap(), deq)
        }
    };
    let mut reference = reference_layer::<T>(&mut rng, w_ref, Some(bias));
    // The same adapters on the GPU layer.
    for name in ["q", "d"] {
        let ad = reference.adapter_mut(name).unwrap().clone();
        gpu_layer.add_adapter(name, &ad).unwrap();
    }
    gpu_layer.set_active(&["q", "d"]).unwrap();
    let x_host: Vec<T> = rng.vec(m * K, 1.0);
    let g_host: Vec<T> = rng.vec(m * N, 1.0);
    let (y_ref, saved_ref) = reference.forward_train(&x_host, m).unwrap();
    let want = reference.backward(&saved_ref, &x_host, &g_host).unwrap();

    let s = gpu.stream();
    let x = s.clone_htod(&x_host).unwrap();
    let g = s.clone_htod(&g_host).unwrap();
    let mut y = s.alloc_zeros::<T>(m * N).unwrap();
    let saved = gpu_layer.forward_train(&x, m, &mut y).unwrap();
    assert_eq!(saved.adapters(), vec!["q", "d"]);
    let tol = tolerance(T::DTYPE);
    assert_close(
        &format!("{base} y"),
        &f64s(&s.clone_dtoh(&y).unwrap()),
        &f64s(&y_ref),
        tol,
    );
    // forward_train gives what forward gives, bit for bit.
    let mut y_plain = s.alloc_zeros::<T>(m * N).unwrap();
    gpu_layer.forward(&x, m, None, &mut y_plain).unwrap();
    assert_eq!(
        f64s(&s.clone_dtoh(&y).unwrap()),
        f64s(&s.clone_dtoh(&y_plain).unwrap()),
        "{base}: forward_train and forward differ"
    );
    let got = gpu_layer.backward(&saved, &x, &g).unwrap();
    assert_grads(base, s, &got, &want, tol);

    // backward_into adds dX to what the buffer holds.
    let prior: Vec<T> = rng.vec(m * K, 1.0);
    let mut dx = s.clone_htod(&prior).unwrap();
    gpu_layer
        .backward_into(&saved, &x, &g, &mut dx, true)
        .unwrap();
    let want_sum: Vec<f64> = f64s(&want.x)
        .iter()
        .zip(f64s(&prior))
        .map(|(a, b)| a + b)
        .collect();
    assert_close(
        &format!("{base} dx accumulated"),
        &f64s(&s.clone_dtoh(&dx).unwrap()),
        &want_sum,
        tol,
    );

    // An optimiser step makes the saved forward stale.
    gpu_layer.adapter_mut("q").unwrap();
    match gpu_layer.backward(&saved, &x, &g) {
        Err(Error::InvalidArgument { arg, .. }) => assert_eq!(arg, "saved"),
        other => panic!(
            "a stale saved forward was accepted: {:?}",
            other.map(|_| ())
        ),
    }
}

common::gpu_tests! { layer_matches_reference:
    layer_matches_reference_dense_f32: f32("dense"),
    layer_matches_reference_dense_bf16: bf16("dense"),
    layer_matches_reference_nf4_f32: f32("nf4"),
    layer_matches_reference_int8_bf16: bf16("int8"),
}

#[test]
fn saved_forwards_are_checked_and_merged_weights_refused() {
    let mut rng = Rng::new(5);
    let w: Vec<f32> = rng.vec(N * K, 0.2);
    let bias = Some(rng.vec(N, 0.5));
    let mut layer = reference_layer::<f32>(&mut rng, w.clone(), bias.clone());
    let x: Vec<f32> = rng.vec(2 * K, 1.0);
    let g: Vec<f32> = rng.vec(2 * N, 1.0);
    let (y, saved) = layer.forward_train(&x, 2).unwrap();
    assert_eq!(
        y,
        layer.forward(&x, 2, None).unwrap(),
        "forward_train and forward differ"
    );
    let grads = layer.backward(&saved, &x, &g).unwrap();
    assert_eq!(grads.adapters.len(), 2);
    assert!(grads.adapters["d"].magnitude.is_some() && grads.adapters["q"].magnitude.is_none());
    let arg_of = |r: lora_kernels::Result<LayerGrads<Vec<f32>>>| match r {
        Err(Error::InvalidArgument { arg, .. }) => arg,
        other => panic!("expected an error, got {:?}", other.map(|_| ())),
    };
    // Another layer's saved forward.
    let other = reference_layer::<f32>(&mut rng, w.clone(), bias.clone());
    assert_eq!(arg_of(other.backward(&saved, &x, &g)), "saved");
    // Stale after set_active (even to the same set), after adapter_mut, after a merge.
    layer.set_active(&["q", "d"]).unwrap();
    assert_eq!(arg_of(layer.backward(&saved, &x, &g)), "saved");
    let (_, saved) = layer.forward_train(&x, 2).unwrap();
    layer.adapter_mut("d").unwrap();
    assert_eq!(arg_of(layer.backward(&saved, &x, &g)), "saved");
    // Short inputs name themselves.
    let (_, saved) = layer.forward_train(&x, 2).unwrap();
    assert_eq!(
        arg_of(layer.backward(&saved, &x, &g[..g.len() - 1])),
        "grad_output"
    );
    assert_eq!(arg_of(layer.backward(&saved, &x[..3], &g)), "x");
    // Training through merged weights is an error; so is changing a merged adapter.
    layer.merge(None, true).unwrap();
    assert!(matches!(
        layer.forward_train(&x, 2),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        layer.adapter_mut("q"),
        Err(Error::InvalidArgument { .. })
    ));
    // Disabled adapters: unmerge first (as the forward), then the base alone: dX only.
    layer.set_disabled(true);
    let (y, saved) = layer.forward_train(&x, 2).unwrap();
    assert!(layer.merged().is_empty());
    let base = lora_kernels::linear::reference::linear(
        &x,
        layer.weight(),
        None,
        lora_kernels::LoraShape::new(2, K, N),
    );
    assert!(base.is_ok());
    assert_eq!(saved.adapters(), Vec::<&str>::new());
    let grads = layer.backward(&saved, &x, &g).unwrap();
    assert!(grads.adapters.is_empty());
    assert_eq!(grads.x.len(), 2 * K);
    let shape = lora_kernels::LoraShape::new(2, K, N);
    let base = lora_kernels::linear::reference::linear(&x, layer.weight(), bias.as_deref(), shape);
    assert_eq!(y, base.unwrap(), "disabled: the base alone");
}

/// One SGD step on adapter `name`'s tensors (host side).
fn sgd(
    params: &mut LayerAdapter<f32>,
    grads: &lora_kernels::lora_backward::AdapterGrads<Vec<f32>>,
    lr: f32,
) {
    for (p, g) in params.lora_a.iter_mut().zip(&grads.lora_a) {
        *p -= lr * g;
    }
    for (p, g) in params.lora_b.iter_mut().zip(&grads.lora_b) {
        *p -= lr * g;
    }
    if let (Some(m), Some(g)) = (params.magnitude.as_mut(), &grads.magnitude) {
        for (p, g) in m.iter_mut().zip(g) {
            *p -= lr * g;
        }
    }
}

/// Loss 0.5·mean((y − t)²) and its gradient dL/dy.
fn mse(y: &[f32], t: &[f32]) -> (f64, Vec<f32>) {
    let len = y.len() as f64;
    let loss = y
        .iter()
        .zip(t)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        * 0.5
        / len;
    let grad = y
        .iter()
        .zip(t)
        .map(|(a, b)| ((a - b) as f64 / len) as f32)
        .collect();
    (loss, grad)
}

/// A toy regression: the targets come from a perturbed W; the layer (W frozen, a LoRA and a DoRA
/// adapter) learns the difference by SGD. The GPU layer trains alongside the reference layer from the
/// same start; their losses agree step for step, and fall.
fn toy_training_loop(gpu: &Gpu) {
    let mut rng = Rng::new(99);
    let m = 16;
    let w: Vec<f32> = rng.vec(N * K, 1.0 / (K as f64).sqrt());
    // A rank-2 shift of W: what the adapters can learn.
    let (u, v): (Vec<f32>, Vec<f32>) =
        (rng.vec(N * 2, 0.5), rng.vec(2 * K, 0.5 / (K as f64).sqrt()));
    let w_true: Vec<f32> = (0..N * K)
        .map(|e| {
            w[e] + (0..2)
                .map(|q| u[(e / K) * 2 + q] * v[q * K + e % K])
                .sum::<f32>()
        })
        .collect();
    let x_host: Vec<f32> = rng.vec(m * K, 1.0);
    let t = lora_kernels::linear::reference::linear(
        &x_host,
        &w_true,
        None,
        lora_kernels::LoraShape::new(m, K, N),
    )
    .unwrap();
    let mut reference = reference_layer::<f32>(&mut rng, w.clone(), None);
    let mut layer = Layer::dense(gpu, &w, None, K, N).unwrap();
    for name in ["q", "d"] {
        let ad = reference.adapter_mut(name).unwrap().clone();
        layer.add_adapter(name, &ad).unwrap();
    }
    layer.set_active(&["q", "d"]).unwrap();
    let s = gpu.stream();
    let x = s.clone_htod(&x_host).unwrap();
    let mut y = s.alloc_zeros::<f32>(m * N).unwrap();
    let lr = 8.0;
    let (mut first, mut last) = (0.0, 0.0);
    for step in 0..20 {
        let (y_ref, saved_ref) = reference.forward_train(&x_host, m).unwrap();
        let (loss_ref, g_ref) = mse(&y_ref, &t);
        let saved = layer.forward_train(&x, m, &mut y).unwrap();
        let (loss, g_host) = mse(&s.clone_dtoh(&y).unwrap(), &t);
        println!("step {step}: loss {loss:.6e} (reference {loss_ref:.6e})");
        assert!(
            (loss - loss_ref).abs() <= 1e-4 * loss_ref,
            "step {step}: GPU loss {loss} vs reference {loss_ref}"
        );
        if step == 0 {
            first = loss;
        }
        last = loss;
        let grads_ref = reference.backward(&saved_ref, &x_host, &g_ref).unwrap();
        let g = s.clone_htod(&g_host).unwrap();
        let grads = layer.backward(&saved, &x, &g).unwrap();
        for name in ["q", "d"] {
            sgd(
                reference.adapter_mut(name).unwrap(),
                &grads_ref.adapters[name],
                lr,
            );
            let dev = &grads.adapters[name];
            let host = lora_kernels::lora_backward::AdapterGrads {
                lora_a: s.clone_dtoh(&dev.lora_a).unwrap(),
                lora_b: s.clone_dtoh(&dev.lora_b).unwrap(),
                magnitude: dev.magnitude.as_ref().map(|v| s.clone_dtoh(v).unwrap()),
            };
            let params = layer.adapter_mut(name).unwrap();
            let mut current = LayerAdapter {
                lora_a: s.clone_dtoh(params.lora_a).unwrap(),
                lora_b: s.clone_dtoh(params.lora_b).unwrap(),
                rank: 0,
                scale: 0.0,
                magnitude: params
                    .magnitude
                    .as_ref()
                    .map(|v| s.clone_dtoh(&**v).unwrap()),
            };
            sgd(&mut current, &host, lr);
            s.memcpy_htod(&current.lora_a, params.lora_a).unwrap();
            s.memcpy_htod(&current.lora_b, params.lora_b).unwrap();
            if let (Some(dst), Some(src)) = (params.magnitude, &current.magnitude) {
                s.memcpy_htod(src, dst).unwrap();
            }
        }
    }
    assert!(
        last < 0.5 * first,
        "the loss fell from {first} to only {last}"
    );
}

#[test]
fn toy_training_loop_loss_falls_as_the_reference() {
    if let Some(gpu) = common::gpu() {
        toy_training_loop(&gpu);
    }
}
