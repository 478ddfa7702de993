//! `lora_kernels::candle` (cargo feature `candle`): the candle layer's forward and autograd against
//! the crate's CPU references (`ReferenceLayer`, which runs the same references through the same
//! state machine) and against peft's golden gradients, a finite-difference check of a two-layer
//! model, the shipped peft adapter folders through `from_peft`, and the errors.
#![cfg(feature = "candle")]

#[path = "common/rng.rs"]
mod rng;

use candle_core::{DType, Device, Module, Tensor, Var, WithDType};
use lora_kernels::candle::{CpuBase, LoraLinear};
use lora_kernels::golden::{rel_error, tolerance, AdapterModel, GoldenCase};
use lora_kernels::layer::{LayerAdapter, ReferenceLayer};
use lora_kernels::quant4::{Quant4Weight, QuantType};
use lora_kernels::Element;
use rng::Rng;
use std::path::Path;

const CPU: Device = Device::Cpu;

fn golden(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/golden")
        .join(name)
}

fn tensor<T: WithDType>(v: &[T], dims: &[usize]) -> Tensor {
    Tensor::from_slice(v, dims, &CPU).unwrap()
}

fn values<T: WithDType>(t: &Tensor) -> Vec<T> {
    t.flatten_all().unwrap().to_vec1::<T>().unwrap()
}

fn f64s<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// A random problem: W, bias and adapters, as host data for the reference layer.
struct Problem<T> {
    k: usize,
    n: usize,
    weight: Vec<T>,
    bias: Option<Vec<T>>,
    adapters: Vec<(String, LayerAdapter<T>)>,
}

impl<T: Element + WithDType> Problem<T> {
    /// Adapters `kinds` (true: DoRA), named `a0`, `a1`, ...
    fn random(rng: &mut Rng, k: usize, n: usize, with_bias: bool, kinds: &[bool]) -> Self {
        let adapters = kinds
            .iter()
            .enumerate()
            .map(|(i, &dora)| {
                let rank = rng.range(1, 6);
                let adapter = LayerAdapter {
                    lora_a: rng.vec(rank * k, 0.5),
                    lora_b: rng.vec(n * rank, 0.5),
                    rank,
                    scale: (rng.range(1, 8) as f32) / rank as f32,
                    magnitude: dora.then(|| {
                        (0..n)
                            .map(|_| <T as Element>::from_f64(0.5 + rng.uniform().abs()))
                            .collect()
                    }),
                };
                (format!("a{i}"), adapter)
            })
            .collect();
        Problem {
            k,
            n,
            weight: rng.vec(n * k, 0.5),
            bias: with_bias.then(|| rng.vec(n, 0.5)),
            adapters,
        }
    }

    fn reference(&self) -> ReferenceLayer<T> {
        let mut layer =
            ReferenceLayer::new(self.weight.clone(), self.bias.clone(), self.k, self.n).unwrap();
        for (name, ad) in &self.adapters {
            layer.add_adapter(name, ad.clone()).unwrap();
        }
        layer.set_active(&self.names()).unwrap();
        layer
    }

    fn candle(&self) -> LoraLinear {
        let layer = LoraLinear::new(
            tensor(&self.weight, &[self.n, self.k]),
            self.bias.as_ref().map(|b| tensor(b, &[self.n])),
        )
        .unwrap();
        for (name, ad) in &self.adapters {
            layer
                .add_adapter(
                    name,
                    &tensor(&ad.lora_a, &[ad.rank, self.k]),
                    &tensor(&ad.lora_b, &[self.n, ad.rank]),
                    ad.magnitude.as_ref().map(|m| tensor(m, &[self.n])).as_ref(),
                    ad.scale,
                )
                .unwrap();
        }
        layer.set_active(&self.names()).unwrap();
        layer
    }

    fn names(&self) -> Vec<&str> {
        self.adapters.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// The forward and every gradient of the candle layer equal the reference layer's exactly: the
/// same references run on the same data (the gradient reaches the Vars through exact data moves).
fn forward_and_backward_match<T: Element + WithDType>(seed: u64) {
    let mut rng = Rng::new(seed);
    for case in 0..6 {
        let (k, n) = (rng.range(1, 24), rng.range(1, 20));
        let kinds: Vec<bool> = (0..rng.range(1, 3)).map(|_| rng.below(2) == 1).collect();
        let problem = Problem::<T>::random(&mut rng, k, n, case % 2 == 0, &kinds);
        let (batch, seq) = (rng.range(1, 3), rng.range(1, 5));
        let m = batch * seq;
        let x: Vec<T> = rng.vec(m * k, 1.0);
        let g: Vec<T> = rng.vec(m * n, 1.0);
        let what = format!(
            "case {case} {} k={k} n={n} kinds={kinds:?}",
            <T as Element>::DTYPE
        );

        let mut reference = problem.reference();
        let expected = reference.forward(&x, m, None).unwrap();
        let (_, saved) = reference.forward_train(&x, m).unwrap();
        let grads = reference.backward(&saved, &x, &g).unwrap();

        let layer = problem.candle();
        // Rank 3 on odd cases, rank 2 on even ones.
        let dims: Vec<usize> = if case % 2 == 1 {
            vec![batch, seq, k]
        } else {
            vec![m, k]
        };
        let xv = Var::from_tensor(&tensor(&x, &dims)).unwrap();
        let y = layer.forward(xv.as_tensor()).unwrap();
        let mut ydims = dims.clone();
        *ydims.last_mut().unwrap() = n;
        assert_eq!(y.dims(), &ydims[..], "{what}");
        assert_eq!(f64s(&values::<T>(&y)), f64s(&expected), "{what}: forward");

        let gt = tensor(&g, &ydims);
        let loss = (y * &gt).unwrap().sum_all().unwrap();
        let store = loss.backward().unwrap();
        let gx = store.get(xv.as_tensor()).expect("x gets a gradient");
        assert_eq!(f64s(&values::<T>(gx)), f64s(&grads.x), "{what}: grad x");
        for (name, _) in &problem.adapters {
            let vars = layer.adapter(name).unwrap();
            let want = &grads.adapters[name];
            let got = |v: &Var| f64s(&values::<T>(store.get(v.as_tensor()).unwrap()));
            assert_eq!(got(&vars.lora_a), f64s(&want.lora_a), "{what}: {name} A");
            assert_eq!(got(&vars.lora_b), f64s(&want.lora_b), "{what}: {name} B");
            match (&vars.magnitude, &want.magnitude) {
                (Some(v), Some(w)) => assert_eq!(got(v), f64s(w), "{what}: {name} m"),
                (None, None) => {}
                _ => panic!("{what}: {name}: magnitude gradient presence differs"),
            }
        }
    }
}

#[test]
fn forward_and_backward_equal_the_reference_f32() {
    forward_and_backward_match::<f32>(1);
}

#[test]
fn forward_and_backward_equal_the_reference_f16_bf16() {
    forward_and_backward_match::<half::f16>(2);
    forward_and_backward_match::<half::bf16>(3);
}

/// `CpuBase::Candle` (the base on candle's matmul, the adapters' op on that base) gives the
/// reference layer's forward and every gradient within the element type's rounding (the base is
/// rounded once more), on LoRA/DoRA chains with and without bias, and with adapters disabled.
fn candle_base_matches<T: Element + WithDType>(seed: u64) {
    let mut rng = Rng::new(seed);
    let tol = tolerance(<T as Element>::DTYPE);
    for case in 0..8 {
        let (k, n) = (rng.range(1, 40), rng.range(1, 33));
        let kinds: Vec<bool> = (0..rng.range(1, 4)).map(|_| rng.below(2) == 1).collect();
        let problem = Problem::<T>::random(&mut rng, k, n, case % 2 == 0, &kinds);
        let disabled = case == 7;
        let m = rng.range(1, 9);
        let x: Vec<T> = rng.vec(m * k, 1.0);
        let g: Vec<T> = rng.vec(m * n, 1.0);
        let what = format!(
            "case {case} {} m={m} k={k} n={n} kinds={kinds:?} disabled={disabled}",
            <T as Element>::DTYPE
        );
        // (forward, grad x, every adapter's grads) of the layer with `base`.
        let run = |base: CpuBase| {
            let layer = problem.candle();
            layer.set_cpu_base(base);
            layer.set_disabled(disabled);
            assert_eq!(layer.cpu_base(), base);
            let xv = Var::from_tensor(&tensor(&x, &[m, k])).unwrap();
            let y = layer.forward(xv.as_tensor()).unwrap();
            let loss = (&y * tensor(&g, &[m, n])).unwrap().sum_all().unwrap();
            let store = loss.backward().unwrap();
            let mut out = vec![
                f64s(&values::<T>(&y)),
                f64s(&values::<T>(store.get(xv.as_tensor()).unwrap())),
            ];
            for (name, _) in &problem.adapters {
                for v in layer.adapter(name).unwrap().vars() {
                    out.push(match store.get(v.as_tensor()) {
                        Some(t) => f64s(&values::<T>(t)),
                        None => Vec::new(),
                    });
                }
            }
            out
        };
        let (want, got) = (run(CpuBase::Reference), run(CpuBase::Candle));
        assert_eq!(want.len(), got.len(), "{what}");
        for (i, (w, o)) in want.iter().zip(&got).enumerate() {
            // Disabled adapters get no gradient on either path.
            assert_eq!(w.is_empty(), o.is_empty(), "{what}: output {i}");
            assert_eq!(w.is_empty(), disabled && i >= 2, "{what}: output {i}");
            let err = rel_error(o, w);
            assert!(err <= tol, "{what}: output {i}: rel err {err:e} > {tol:e}");
        }
    }
}

#[test]
fn candle_base_matches_the_reference_within_rounding() {
    candle_base_matches::<f32>(21);
    candle_base_matches::<half::f16>(22);
    candle_base_matches::<half::bf16>(23);
}

/// peft's states: disabled, merged (safe and unsafe), unmerged, through the same state machine.
#[test]
fn merge_unmerge_and_disable_follow_the_reference_layer() {
    let mut rng = Rng::new(7);
    let problem = Problem::<f32>::random(&mut rng, 12, 9, true, &[false, true]);
    let m = 3;
    let x: Vec<f32> = rng.vec(m * 12, 1.0);
    let xt = tensor(&x, &[m, 12]);
    let mut reference = problem.reference();
    let layer = problem.candle();
    let check = |layer: &LoraLinear, reference: &mut ReferenceLayer<f32>, what: &str| {
        let want = reference.forward(&x, m, None).unwrap();
        assert_eq!(values::<f32>(&layer.forward(&xt).unwrap()), want, "{what}");
        assert_eq!(
            values::<f32>(&layer.weight()),
            reference.weight(),
            "{what}: W"
        );
    };
    check(&layer, &mut reference, "active");
    layer.merge(None, true).unwrap();
    reference.merge(None, true).unwrap();
    assert_eq!(layer.merged(), vec!["a0", "a1"]);
    check(&layer, &mut reference, "merged");
    let err = layer.merge(Some(&["a0"]), true).unwrap_err().to_string();
    assert!(err.contains("merging twice") && err.contains("a0"), "{err}");
    // Disabled: the forward unmerges first, as peft does.
    layer.set_disabled(true);
    reference.set_disabled(true);
    check(&layer, &mut reference, "disabled");
    assert!(layer.merged().is_empty());
    let err = layer.unmerge().unwrap_err().to_string();
    assert!(err.contains("none merged"), "{err}");
    layer.set_disabled(false);
    reference.set_disabled(false);
    layer.merge(Some(&["a1"]), false).unwrap();
    reference.merge(Some(&["a1"]), false).unwrap();
    check(&layer, &mut reference, "a1 merged");
    layer.unmerge().unwrap();
    reference.unmerge().unwrap();
    check(&layer, &mut reference, "unmerged");
    layer.set_active(&["a1"]).unwrap();
    reference.set_active(&["a1"]).unwrap();
    check(&layer, &mut reference, "a1 active");
    layer.set_active(&[]).unwrap();
    reference.set_active(&[]).unwrap();
    check(&layer, &mut reference, "none active");
}

/// With something merged or adapters disabled, x still gets the base gradient G·W (and adapters
/// none, as in peft, where the merged weight is a constant).
#[test]
fn the_base_alone_has_the_x_gradient() {
    let mut rng = Rng::new(8);
    let problem = Problem::<f32>::random(&mut rng, 7, 5, false, &[false]);
    let layer = problem.candle();
    layer.set_disabled(true);
    let x = Var::from_tensor(&tensor(&rng.vec::<f32>(2 * 7, 1.0), &[2, 7])).unwrap();
    let g: Vec<f32> = rng.vec(2 * 5, 1.0);
    let loss = (layer.forward(x.as_tensor()).unwrap() * tensor(&g, &[2, 5]))
        .unwrap()
        .sum_all()
        .unwrap();
    let store = loss.backward().unwrap();
    let gx = values::<f32>(store.get(x.as_tensor()).unwrap());
    let want: Vec<f32> = (0..2 * 7)
        .map(|e| {
            let (i, c) = (e / 7, e % 7);
            (0..5)
                .map(|j| g[i * 5 + j] as f64 * problem.weight[j * 7 + c] as f64)
                .sum::<f64>() as f32
        })
        .collect();
    assert_eq!(gx, want);
    let vars = layer.adapter("a0").unwrap();
    assert!(store.get(vars.lora_a.as_tensor()).is_none());
}

/// A non-contiguous x (a transposed view) gives the result of its contiguous copy.
#[test]
fn non_contiguous_input_is_made_contiguous() {
    let mut rng = Rng::new(9);
    let problem = Problem::<f32>::random(&mut rng, 6, 4, true, &[true]);
    let layer = problem.candle();
    let xt = tensor(&rng.vec::<f32>(6 * 3, 1.0), &[6, 3]).t().unwrap();
    assert!(!xt.is_contiguous());
    let y = layer.forward(&xt).unwrap();
    let y2 = layer.forward(&xt.contiguous().unwrap()).unwrap();
    assert_eq!(values::<f32>(&y), values::<f32>(&y2));
}

/// Candle autograd through `LoraLinear` reproduces peft's gradients (`*_backward_*` golden cases).
#[test]
fn autograd_matches_the_golden_gradients() {
    for name in [
        "lora_backward_f32",
        "dora_backward_f32",
        "lora_backward_bf16",
        "dora_backward_f16",
        // QLoRA / QDoRA on bitsandbytes' NF4 state dicts (double-quantised absmax): the backward
        // cases, and the forward-only ones (no grad_output).
        "qlora_backward_nf4_bf16",
        "qdora_backward_nf4_f32",
        "qlora_nf4_f32",
        "qdora_nf4_bf16",
    ] {
        let case = GoldenCase::load(&golden(&format!("{name}.safetensors"))).unwrap();
        match case.dtype().unwrap() {
            lora_kernels::DType::F32 => golden_case::<f32>(&case),
            lora_kernels::DType::F16 => golden_case::<half::f16>(&case),
            lora_kernels::DType::BF16 => golden_case::<half::bf16>(&case),
        }
    }
}

fn golden_case<T: Element + WithDType>(case: &GoldenCase) {
    let tol = tolerance(<T as Element>::DTYPE);
    let v = |name: &str| case.values::<T>(name).unwrap();
    let shape = |name: &str| case.shape(name).unwrap().to_vec();
    // An NF4 case holds the base as bitsandbytes' `Linear4bit` state dict under `base.`.
    let nf4 = case.has("base.weight.quant_state.bitsandbytes__nf4");
    let bias_name = if nf4 { "base.bias" } else { "bias" };
    let bias = case
        .has(bias_name)
        .then(|| tensor(&v(bias_name), &shape(bias_name)));
    let layer = if nf4 {
        let bytes = std::fs::read(&case.path).unwrap();
        let q = Quant4Weight::from_state_dict(&bytes, "base.", &case.name).unwrap();
        let layer = LoraLinear::new_quant4(&q, bias, <T as WithDType>::DTYPE).unwrap();
        assert_eq!(layer.quant4_type(), Some(QuantType::Nf4), "{}", case.name);
        // The dequantised copy is bitsandbytes' own dequantisation, bit for bit.
        let want = f64s(&v("dequantized_weight"));
        assert_eq!(f64s(&values::<T>(&layer.weight())), want, "{}", case.name);
        layer
    } else {
        LoraLinear::new(tensor(&v("weight"), &shape("weight")), bias).unwrap()
    };
    let magnitude = case
        .has("magnitude")
        .then(|| tensor(&v("magnitude"), &shape("magnitude")));
    let vars = layer
        .add_adapter(
            "default",
            &tensor(&v("lora_A"), &shape("lora_A")),
            &tensor(&v("lora_B"), &shape("lora_B")),
            magnitude.as_ref(),
            case.scaling().unwrap() as f32,
        )
        .unwrap();
    layer.set_active(&["default"]).unwrap();
    let x = Var::from_tensor(&tensor(&v("x"), &shape("x"))).unwrap();
    let y = layer.forward(x.as_tensor()).unwrap();
    let out = f64s(&values::<T>(&y));
    let err = rel_error(&out, &case.values_f64("output").unwrap());
    assert!(
        err <= tol,
        "{}: output rel error {err:e} > {tol:e}",
        case.name
    );
    if !case.has("grad_output") {
        println!("{}: output rel error {err:.2e} (a forward case)", case.name);
        return;
    }
    let g = tensor(&v("grad_output"), &shape("grad_output"));
    let store = (y * g).unwrap().sum_all().unwrap().backward().unwrap();
    let mut checked = vec![
        ("grad_x", x.as_tensor().clone()),
        ("grad_lora_A", vars.lora_a.as_tensor().clone()),
        ("grad_lora_B", vars.lora_b.as_tensor().clone()),
    ];
    checked.extend(
        vars.magnitude
            .as_ref()
            .map(|m| ("grad_magnitude", m.as_tensor().clone())),
    );
    assert_eq!(
        case.has("grad_magnitude"),
        vars.magnitude.is_some(),
        "{}",
        case.name
    );
    for (name, t) in checked {
        let got = f64s(&values::<T>(store.get(&t).expect(name)));
        let err = rel_error(&got, &case.values_f64(name).unwrap());
        assert!(
            err <= tol,
            "{}: {name} rel error {err:e} > {tol:e}",
            case.name
        );
        println!("{}: {name} rel error {err:.2e}", case.name);
    }
}

/// A two-layer model, `loss = Σ C ⊙ L2(tanh(L1(x)))`, L1 with a LoRA then a DoRA adapter (a chain),
/// L2 with a LoRA adapter: candle's gradients equal central finite differences of the loss for x,
/// every LoRA tensor and the DoRA magnitude. (DoRA's A and B are left out: peft detaches the weight
/// norm, so their gradient is by design not the derivative of the forward.)
#[test]
fn two_layer_gradients_match_finite_differences() {
    let mut rng = Rng::new(11);
    let (m, d0, d1, d2) = (3, 6, 5, 4);
    let p1 = Problem::<f32>::random(&mut rng, d0, d1, true, &[false, true]);
    let p2 = Problem::<f32>::random(&mut rng, d1, d2, true, &[false]);
    let (l1, l2) = (p1.candle(), p2.candle());
    let x = Var::from_tensor(&tensor(&rng.vec::<f32>(m * d0, 1.0), &[m, d0])).unwrap();
    let c: Vec<f32> = rng.vec(m * d2, 1.0);
    let ct = tensor(&c, &[m, d2]);
    let model = |x: &Tensor| l2.forward(&l1.forward(x).unwrap().tanh().unwrap()).unwrap();
    // The loss for finite differences, summed in f64.
    let loss64 = || -> f64 {
        let y = values::<f32>(&model(x.as_tensor()));
        y.iter().zip(&c).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let store = (model(x.as_tensor()) * &ct)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let a0 = l1.adapter("a0").unwrap();
    let a1 = l1.adapter("a1").unwrap();
    let b0 = l2.adapter("a0").unwrap();
    let checked: Vec<(&str, Var)> = vec![
        ("x", x.clone()),
        ("L1.a0.A", a0.lora_a.clone()),
        ("L1.a0.B", a0.lora_b.clone()),
        ("L1.a1.magnitude", a1.magnitude.clone().unwrap()),
        ("L2.a0.A", b0.lora_a.clone()),
        ("L2.a0.B", b0.lora_b.clone()),
    ];
    let eps = 1e-2f32;
    for (name, var) in checked {
        let analytic: Vec<f64> = values::<f32>(store.get(var.as_tensor()).unwrap())
            .iter()
            .map(|&v| v as f64)
            .collect();
        let base = values::<f32>(var.as_tensor());
        let dims = var.dims().to_vec();
        let mut numeric = Vec::with_capacity(base.len());
        for i in 0..base.len() {
            let at = |delta: f32| {
                let mut p = base.clone();
                p[i] += delta;
                var.set(&tensor(&p, &dims)).unwrap();
                loss64()
            };
            let (plus, minus) = (at(eps), at(-eps));
            numeric.push((plus - minus) / (2.0 * eps as f64));
        }
        var.set(&tensor(&base, &dims)).unwrap();
        let err = rel_error(&analytic, &numeric);
        println!("{name}: finite-difference rel error {err:.2e}");
        assert!(err < 2e-3, "{name}: rel error {err:e}");
    }
}

/// The shipped peft adapter folders through `from_peft`: the golden model's output, before and
/// after a merge.
#[test]
fn peft_adapter_folders_reproduce_the_expected_outputs() {
    for folder in ["adapter_lora", "adapter_dora"] {
        let model = AdapterModel::load(&golden(folder)).unwrap();
        let mut layers = std::collections::BTreeMap::new();
        for name in model.module_names() {
            let (w, bias) = model.base_weight(&name).unwrap();
            let ad = model.module(&name).unwrap();
            let (k, n) = (ad.in_features, ad.out_features);
            let layer = LoraLinear::from_peft(
                &model.adapter,
                &name,
                tensor(&w, &[n, k]),
                bias.map(|b| tensor(&b, &[n])),
            )
            .unwrap();
            layers.insert(name, layer);
        }
        let x = model.expected.values::<f32>("x").unwrap();
        let xt = tensor(&x, model.expected.shape("x").unwrap());
        let want = model.expected.values_f64("output").unwrap();
        let run = || {
            let mut h = xt.clone();
            for l in 0..model.layers {
                let f = |m: &str, t: &Tensor| layers[&format!("layers.{l}.{m}")].forward(t);
                let qv = (f("q_proj", &h).unwrap() + f("v_proj", &h).unwrap()).unwrap();
                let up = f("up_proj", &qv).unwrap().relu().unwrap();
                h = f("down_proj", &up).unwrap();
            }
            values::<f32>(&h)
                .iter()
                .map(|&v| v as f64)
                .collect::<Vec<_>>()
        };
        let err = rel_error(&run(), &want);
        println!("{folder}: output rel error {err:.2e}");
        assert!(
            err <= tolerance(lora_kernels::DType::F32),
            "{folder}: {err:e}"
        );
        for layer in layers.values() {
            layer.merge(None, true).unwrap();
        }
        let err = rel_error(&run(), &want);
        println!("{folder} merged: output rel error {err:.2e}");
        assert!(
            err <= tolerance(lora_kernels::DType::F32),
            "{folder} merged: {err:e}"
        );
    }
}

/// One SGD step of candle_nn's optimiser on the layer's Vars lowers a quadratic loss.
#[test]
fn an_optimiser_step_lowers_the_loss() {
    use candle_nn::Optimizer;
    let mut rng = Rng::new(12);
    let problem = Problem::<f32>::random(&mut rng, 8, 6, true, &[true]);
    let layer = problem.candle();
    let x = tensor(&rng.vec::<f32>(4 * 8, 1.0), &[4, 8]);
    let target = tensor(&rng.vec::<f32>(4 * 6, 1.0), &[4, 6]);
    let loss = || {
        (layer.forward(&x).unwrap() - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
    };
    let mut sgd = candle_nn::SGD::new(layer.trainable_vars(), 0.01).unwrap();
    let before = loss().to_scalar::<f32>().unwrap();
    sgd.backward_step(&loss()).unwrap();
    let after = loss().to_scalar::<f32>().unwrap();
    assert!(after < before, "loss {before} -> {after}");
}

fn error_of<T: std::fmt::Debug>(r: candle_core::Result<T>) -> String {
    r.unwrap_err().to_string()
}

/// Errors name the argument, what was expected and what came.
#[test]
fn errors_name_what_was_wrong() {
    let w = Tensor::zeros((4, 3), DType::F32, &CPU).unwrap();
    let msg = error_of(LoraLinear::new(
        Tensor::zeros(4, DType::F32, &CPU).unwrap(),
        None,
    ));
    assert!(msg.contains("`weight`") && msg.contains("[4]"), "{msg}");
    let msg = error_of(LoraLinear::new(
        Tensor::zeros((4, 3), DType::F64, &CPU).unwrap(),
        None,
    ));
    assert!(msg.contains("`weight`") && msg.contains("F64"), "{msg}");
    let msg = error_of(LoraLinear::new(
        w.clone(),
        Some(Tensor::zeros(3, DType::F32, &CPU).unwrap()),
    ));
    assert!(
        msg.contains("`bias`") && msg.contains("[out_features=4]"),
        "{msg}"
    );
    let msg = error_of(LoraLinear::new(
        w.clone(),
        Some(Tensor::zeros(4, DType::F16, &CPU).unwrap()),
    ));
    assert!(msg.contains("`bias`") && msg.contains("F16"), "{msg}");

    let layer = LoraLinear::new(w, None).unwrap();
    let z = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &CPU).unwrap();
    let msg = error_of(layer.add_adapter("q", &z(&[2, 5]), &z(&[4, 2]), None, 1.0));
    assert!(
        msg.contains("adapter `q`.lora_a") && msg.contains("[rank=2, in_features=3]"),
        "{msg}"
    );
    let msg = error_of(layer.add_adapter("q", &z(&[2, 3]), &z(&[4, 3]), None, 1.0));
    assert!(
        msg.contains("adapter `q`.lora_b") && msg.contains("[4, 3]"),
        "{msg}"
    );
    let msg = error_of(layer.add_adapter("q", &z(&[2, 3]), &z(&[4, 2]), Some(&z(&[3])), 1.0));
    assert!(msg.contains("adapter `q`.magnitude"), "{msg}");
    let msg = error_of(layer.add_adapter("q", &z(&[2, 3]), &z(&[4, 2]), None, f32::NAN));
    assert!(msg.contains("adapter `q`.scale"), "{msg}");
    let msg = error_of(layer.add_adapter("q", &z(&[0, 3]), &z(&[4, 0]), None, 1.0));
    assert!(msg.contains("rank 1 to 256"), "{msg}");
    let bf = Tensor::zeros((2, 3), DType::BF16, &CPU).unwrap();
    let msg = error_of(layer.add_adapter("q", &bf, &z(&[4, 2]), None, 1.0));
    assert!(msg.contains("BF16") && msg.contains("F32"), "{msg}");

    layer
        .add_adapter("q", &z(&[2, 3]), &z(&[4, 2]), None, 1.0)
        .unwrap();
    let msg = error_of(layer.set_active(&["nope"]));
    assert!(msg.contains("nope") && msg.contains("names"), "{msg}");
    let msg = error_of(layer.set_active(&["q", "q"]));
    assert!(msg.contains("`q` twice"), "{msg}");
    let msg = error_of(layer.unmerge());
    assert!(msg.contains("none merged"), "{msg}");
    layer.set_active(&["q"]).unwrap();
    let msg = error_of(layer.forward(&z(&[2, 4])));
    assert!(
        msg.contains("`x`") && msg.contains("in_features=3") && msg.contains("[2, 4]"),
        "{msg}"
    );
    let msg = error_of(layer.forward(&z(&[1, 2, 2, 3])));
    assert!(msg.contains("`x`") && msg.contains("[1, 2, 2, 3]"), "{msg}");
    let msg = error_of(layer.forward(&Tensor::zeros((2, 3), DType::F16, &CPU).unwrap()));
    assert!(msg.contains("`x`") && msg.contains("F16"), "{msg}");
    let msg = error_of(layer.forward(&z(&[0, 3])));
    assert!(
        msg.contains("`x`") && msg.contains("at least one row"),
        "{msg}"
    );
    assert!(layer.forward(&z(&[2, 3])).is_ok());

    let lora = lora_kernels::peft::PeftAdapter::load(&golden("adapter_lora")).unwrap();
    let w64 = Tensor::zeros((64, 64), DType::F32, &CPU).unwrap();
    let msg = error_of(LoraLinear::from_peft(
        &lora,
        "layers.9.q_proj",
        w64.clone(),
        None,
    ));
    assert!(
        msg.contains("`module`")
            && msg.contains("layers.9.q_proj")
            && msg.contains("layers.0.q_proj"),
        "{msg}"
    );
    let msg = error_of(LoraLinear::from_peft(&lora, "layers.0.up_proj", w64, None));
    assert!(
        msg.contains("layers.0.up_proj") && msg.contains("[out=64, in=64]"),
        "{msg}"
    );
}

/// A forward's backward uses the values that forward ran on: changing the Vars or merging between
/// the forward and the backward changes nothing in the gradients.
/// A 4-bit base: bad codes, dtype and bias are errors naming the argument before anything is
/// built, and merging into it is refused with the layer unchanged.
#[test]
fn a_4bit_base_validates_and_refuses_merging() {
    let mut rng = Rng::new(41);
    let (n, k) = (6, 64);
    let w: Vec<f32> = rng.vec(n * k, 1.0);
    let q =
        lora_kernels::quant4::reference::quantize(&w, [n, k], 64, QuantType::Fp4, true).unwrap();
    let mut short = q.clone();
    short.packed.pop();
    let msg = error_of(LoraLinear::new_quant4(&short, None, DType::F32));
    assert!(msg.contains("packed"), "{msg}");
    let msg = error_of(LoraLinear::new_quant4(&q, None, DType::F64));
    assert!(msg.contains("`dtype`") && msg.contains("F64"), "{msg}");
    let bias16 = tensor(&rng.vec::<half::f16>(n, 1.0), &[n]);
    let msg = error_of(LoraLinear::new_quant4(&q, Some(bias16), DType::F32));
    assert!(msg.contains("`bias`") && msg.contains("F16"), "{msg}");

    let layer = LoraLinear::new_quant4(&q, None, DType::F32).unwrap();
    assert_eq!(layer.quant4_type(), Some(QuantType::Fp4));
    let want = lora_kernels::quant4::reference::dequantize::<f32>(&q).unwrap();
    assert_eq!(values::<f32>(&layer.weight()), want);
    let (a, b) = (rng.vec::<f32>(2 * k, 0.5), rng.vec::<f32>(n * 2, 0.5));
    layer
        .add_adapter("q", &tensor(&a, &[2, k]), &tensor(&b, &[n, 2]), None, 2.0)
        .unwrap();
    layer.set_active(&["q"]).unwrap();
    let msg = error_of(layer.merge(None, true));
    assert!(msg.contains("`layer`") && msg.contains("Fp4"), "{msg}");
    assert!(layer.merged().is_empty());
    assert_eq!(values::<f32>(&layer.weight()), want);
}

#[test]
fn backward_uses_the_forward_s_values() {
    let mut rng = Rng::new(13);
    let problem = Problem::<f32>::random(&mut rng, 5, 4, true, &[false, true]);
    let layer = problem.candle();
    let x = Var::from_tensor(&tensor(&rng.vec::<f32>(3 * 5, 1.0), &[3, 5])).unwrap();
    let g = tensor(&rng.vec::<f32>(3 * 4, 1.0), &[3, 4]);
    let loss = || {
        (layer.forward(x.as_tensor()).unwrap() * &g)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let vars = layer.trainable_vars();
    let grads = |loss: &Tensor| {
        let store = loss.backward().unwrap();
        std::iter::once(&x)
            .chain(&vars)
            .map(|v| values::<f32>(store.get(v.as_tensor()).unwrap()))
            .collect::<Vec<_>>()
    };
    let want = grads(&loss());
    let later = loss();
    for v in &vars {
        let changed = (v.as_tensor() * 2.0).unwrap();
        v.set(&changed).unwrap();
    }
    layer.merge(None, false).unwrap();
    assert_eq!(grads(&later), want);
}

/// With `candle-cuda` on a CUDA device: the forward and every gradient on the crate's kernels match
/// the CPU path (within the golden tolerance of the dtype). Skips without a device, unless
/// `LORA_KERNELS_REQUIRE_GPU=1`.
#[cfg(feature = "candle-cuda")]
#[test]
fn cuda_matches_the_cpu() {
    let dev = match Device::new_cuda(0) {
        Ok(dev) => dev,
        Err(e) => {
            assert!(
                std::env::var("LORA_KERNELS_REQUIRE_GPU").as_deref() != Ok("1"),
                "no CUDA device: {e}"
            );
            println!("SKIPPED: no CUDA device ({e})");
            return;
        }
    };
    cuda_case::<f32>(&dev, 21);
    cuda_case::<half::f16>(&dev, 22);
    cuda_case::<half::bf16>(&dev, 23);
}

#[cfg(feature = "candle-cuda")]
fn cuda_case<T: Element + WithDType>(dev: &Device, seed: u64) {
    let tol = tolerance(<T as Element>::DTYPE);
    let mut rng = Rng::new(seed);
    let (m, k, n) = (7, 40, 24);
    let problem = Problem::<T>::random(&mut rng, k, n, true, &[false, true]);
    let cpu = problem.candle();
    let on = |t: &Tensor| t.to_device(dev).unwrap();
    let gpu = LoraLinear::new(on(&cpu.weight()), cpu.bias().map(on)).unwrap();
    for (name, _) in &problem.adapters {
        let v = cpu.adapter(name).unwrap();
        gpu.add_adapter(
            name,
            &on(v.lora_a.as_tensor()),
            &on(v.lora_b.as_tensor()),
            v.magnitude.as_ref().map(|m| on(m.as_tensor())).as_ref(),
            v.scale,
        )
        .unwrap();
    }
    gpu.set_active(&problem.names()).unwrap();
    let x = tensor(&rng.vec::<T>(m * k, 1.0), &[m, k]);
    let g = tensor(&rng.vec::<T>(m * n, 1.0), &[m, n]);
    let run = |layer: &LoraLinear, x: &Tensor, g: &Tensor| {
        let xv = Var::from_tensor(x).unwrap();
        let y = layer.forward(xv.as_tensor()).unwrap();
        let store = (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![f64s(&values::<T>(&y))];
        out.push(f64s(&values::<T>(store.get(xv.as_tensor()).unwrap())));
        for v in layer.trainable_vars() {
            out.push(f64s(&values::<T>(store.get(v.as_tensor()).unwrap())));
        }
        out
    };
    let want = run(&cpu, &x, &g);
    let got = run(&gpu, &on(&x), &on(&g));
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        let err = rel_error(a, b);
        println!(
            "{}: cuda output {i} rel error {err:.2e}",
            <T as Element>::DTYPE
        );
        assert!(err <= tol, "{}: output {i}: {err:e}", <T as Element>::DTYPE);
    }
}
