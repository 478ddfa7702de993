//! The layers follow peft's forward states: the shipped adapters reproduce peft's module outputs
//! through the CPU reference layer and the GPU layer, merging changes W but not the output, unmerging
//! restores W, disabling gives the base, the state errors peft raises are errors here, and GPU layers
//! over the golden 4-bit and int8 bases reproduce peft's outputs. The GPU tests print
//! `SKIPPED: no CUDA device` without a GPU; they fail instead with `LORA_KERNELS_REQUIRE_GPU=1`.
mod common;

use common::{f64s, rel_error, tolerance};
use half::{bf16, f16};
use lora_kernels::golden::{golden_dir, AdapterModel, GoldenCase};
use lora_kernels::int8::Int8Weight;
use lora_kernels::layer::{BaseWeight, DeviceLayerAdapter, Layer, LayerAdapter, ReferenceLayer};
use lora_kernels::peft::PeftAdapter;
use lora_kernels::quant4::Quant4Weight;
use lora_kernels::{Element, Error, Gpu};

/// The layer of module `name` of a shipped adapter folder, its input, and peft's output.
fn module_layer(folder: &str, name: &str) -> (ReferenceLayer<f32>, Vec<f32>, Vec<f64>) {
    let dir = golden_dir().join(folder);
    let adapter = PeftAdapter::load(&dir).unwrap();
    let case = GoldenCase::load(&dir.join("expected.safetensors")).unwrap();
    let module = adapter.module(name).unwrap();
    let weight: Vec<f32> = case.values(&format!("base.{name}.weight")).unwrap();
    let bias_key = format!("base.{name}.bias");
    let bias = if case.has(&bias_key) {
        Some(case.values::<f32>(&bias_key).unwrap())
    } else {
        None
    };
    let mut layer =
        ReferenceLayer::new(weight, bias, module.in_features, module.out_features).unwrap();
    layer
        .add_adapter(
            "default",
            LayerAdapter {
                lora_a: module.lora_a.clone(),
                lora_b: module.lora_b.clone(),
                rank: module.rank,
                scale: module.scale,
                magnitude: module.magnitude.clone(),
            },
        )
        .unwrap();
    layer.set_active(&["default"]).unwrap();
    let input: Vec<f32> = case.values(&format!("{name}.input")).unwrap();
    let output = case.values_f64(&format!("{name}.output")).unwrap();
    (layer, input, output)
}

#[test]
fn shipped_adapters_match_peft_merged_or_not() {
    for folder in ["adapter_lora", "adapter_dora"] {
        for name in ["layers.0.q_proj", "layers.0.up_proj", "layers.0.down_proj"] {
            let (mut layer, x, want) = module_layer(folder, name);
            let m = 3; // the shipped cases run 3 rows
            let original = layer.weight().to_vec();
            let y = layer.forward(&x, m, None).unwrap();
            assert!(
                rel_error(&f64s(&y), &want) < 1e-5,
                "{folder} {name}: {}",
                rel_error(&f64s(&y), &want)
            );
            layer.merge(None, true).unwrap();
            assert_ne!(layer.weight(), &original[..], "merge changes W");
            let merged = layer.forward(&x, m, None).unwrap();
            assert!(
                rel_error(&f64s(&merged), &want) < 1e-5,
                "{folder} {name} merged: {}",
                rel_error(&f64s(&merged), &want)
            );
            layer.unmerge().unwrap();
            assert!(
                rel_error(&f64s(layer.weight()), &f64s(&original)) < 1e-6,
                "unmerge restores W"
            );
            layer.set_disabled(true);
            layer.merge(None, true).unwrap();
            let base = layer.forward(&x, m, None).unwrap();
            assert!(
                layer.merged().is_empty(),
                "a disabled forward unmerges first"
            );
            layer.set_disabled(false);
            layer.set_active(&[]).unwrap();
            let no_adapter = layer.forward(&x, m, None).unwrap();
            assert!(
                rel_error(&f64s(&base), &f64s(&no_adapter)) < 1e-6,
                "disabled: the base alone"
            );
        }
    }
}

fn assert_invalid<T: std::fmt::Debug>(r: lora_kernels::Result<T>, what: &str) {
    match r {
        Err(Error::InvalidArgument {
            arg,
            expected,
            actual,
        }) => {
            let msg = format!("{arg}: {expected} / {actual}");
            assert!(msg.contains(what), "`{msg}` does not mention `{what}`");
        }
        other => panic!("expected InvalidArgument mentioning `{what}`, got {other:?}"),
    }
}

#[test]
fn state_errors_match_peft() {
    let (mut lora, x, _) = module_layer("adapter_lora", "layers.1.v_proj");
    let m = 3;
    assert_invalid(lora.unmerge(), "none merged");
    lora.merge(None, true).unwrap();
    assert_invalid(lora.merge(Some(&["default"]), true), "merging twice");
    assert_invalid(
        lora.forward(&x, m, Some(&[Some("default"), None, Some("default")])),
        "unmerge before a mixed batch",
    );
    lora.unmerge().unwrap();
    assert_invalid(
        lora.forward(&x, m, Some(&[Some("default"), None])),
        "3 entries",
    );
    assert_invalid(lora.set_active(&["other"]), "other");
    let (mut dora, x, _) = module_layer("adapter_dora", "layers.0.v_proj");
    assert_invalid(
        dora.forward(&x, m, Some(&[Some("default"), None, None])),
        "DoRA",
    );
}

#[test]
fn mixed_batch_rows_pick_their_adapter() {
    let (mut layer, x, want) = module_layer("adapter_lora", "layers.0.q_proj");
    let (m, n) = (3, want.len() / 3);
    let all = layer
        .forward(
            &x,
            m,
            Some(&[Some("default"), Some("default"), Some("default")]),
        )
        .unwrap();
    assert!(rel_error(&f64s(&all), &want) < 1e-5);
    let rows = layer
        .forward(&x, m, Some(&[None, Some("default"), Some("unknown")]))
        .unwrap();
    layer.set_disabled(true);
    let base = layer.forward(&x, m, None).unwrap();
    assert_eq!(&rows[..n], &base[..n], "row 0 is the base");
    assert!(
        rel_error(&f64s(&rows[n..2 * n]), &want[n..2 * n]) < 1e-5,
        "row 1 uses the adapter"
    );
    assert_eq!(
        &rows[2 * n..],
        &base[2 * n..],
        "an unknown name is skipped, as in peft"
    );
}

/// Module `name` of a shipped adapter folder as a GPU layer.
fn gpu_module_layer(gpu: &Gpu, folder: &str, name: &str) -> Layer<f32> {
    let model = AdapterModel::load(&golden_dir().join(folder)).unwrap();
    let m = model.module(name).unwrap();
    let (weight, bias) = model.base_weight(name).unwrap();
    let mut layer =
        Layer::dense(gpu, &weight, bias.as_deref(), m.in_features, m.out_features).unwrap();
    layer
        .add_adapter("default", &model.layer_adapter(name).unwrap())
        .unwrap();
    layer.set_active(&["default"]).unwrap();
    layer
}

fn gpu_forward(
    gpu: &Gpu,
    layer: &mut Layer<f32>,
    x: &[f32],
    m: usize,
    names: Option<&[Option<&str>]>,
) -> Vec<f32> {
    let s = gpu.stream();
    let mut y = s.alloc_zeros::<f32>(m * layer.out_features()).unwrap();
    layer
        .forward(&s.clone_htod(x).unwrap(), m, names, &mut y)
        .unwrap();
    s.clone_dtoh(&y).unwrap()
}

fn dense_weight(gpu: &Gpu, layer: &Layer<f32>) -> Vec<f32> {
    match layer.base() {
        BaseWeight::Dense(w) => gpu.stream().clone_dtoh(w).unwrap(),
        other => panic!("a dense base, not {other:?}"),
    }
}

/// The GPU layer through the same states as the reference layer: peft's outputs unmerged and merged,
/// W restored by unmerge, a disabled forward unmerging first, and mixed batches row by row.
#[test]
fn gpu_layer_follows_peft_states() {
    let Some(gpu) = common::gpu() else { return };
    for folder in ["adapter_lora", "adapter_dora"] {
        // The DoRA adapter adapts layer 0 only.
        let down = if folder == "adapter_lora" {
            "layers.1.down_proj"
        } else {
            "layers.0.down_proj"
        };
        for name in ["layers.0.q_proj", "layers.0.up_proj", down] {
            let (mut cpu, x, want) = module_layer(folder, name);
            let mut layer = gpu_module_layer(&gpu, folder, name);
            let m = 3;
            let original = dense_weight(&gpu, &layer);
            let y = gpu_forward(&gpu, &mut layer, &x, m, None);
            assert!(rel_error(&f64s(&y), &want) < 1e-5, "{folder} {name}");
            layer.merge(None, true).unwrap();
            cpu.merge(None, true).unwrap();
            assert!(
                rel_error(&f64s(&dense_weight(&gpu, &layer)), &f64s(cpu.weight())) < 1e-6,
                "{folder} {name}: merged W"
            );
            let merged = gpu_forward(&gpu, &mut layer, &x, m, None);
            assert!(
                rel_error(&f64s(&merged), &want) < 1e-5,
                "{folder} {name} merged"
            );
            layer.unmerge().unwrap();
            assert!(
                rel_error(&f64s(&dense_weight(&gpu, &layer)), &f64s(&original)) < 1e-6,
                "unmerge restores W"
            );
            layer.merge(None, true).unwrap();
            layer.set_disabled(true);
            let base = gpu_forward(&gpu, &mut layer, &x, m, None);
            assert!(
                layer.merged().is_empty(),
                "a disabled forward unmerges first"
            );
            cpu.set_disabled(true);
            let cpu_base = cpu.forward(&x, m, None).unwrap();
            assert!(
                rel_error(&f64s(&base), &f64s(&cpu_base)) < 1e-6,
                "disabled: the base"
            );
            layer.set_disabled(false);
            if folder == "adapter_lora" {
                let names = [None, Some("default"), Some("unknown")];
                let rows = gpu_forward(&gpu, &mut layer, &x, m, Some(&names));
                cpu.set_disabled(false);
                let cpu_rows = cpu.forward(&x, m, Some(&names)).unwrap();
                assert!(
                    rel_error(&f64s(&rows), &f64s(&cpu_rows)) < 1e-5,
                    "mixed batch"
                );
                // Every row on one adapter: the plain fused path.
                let all = gpu_forward(&gpu, &mut layer, &x, m, Some(&[Some("default"); 3]));
                assert!(
                    rel_error(&f64s(&all), &want) < 1e-5,
                    "a batch on one adapter"
                );
            }
        }
    }
}

/// GPU layers over the golden 4-bit and int8 bases, as bitsandbytes saved them, reproduce peft's
/// QLoRA/QDoRA and 8-bit LoRA/DoRA outputs (the DoRA factor read straight from the codes); merging an
/// adapter into the int8 base (requantising) keeps the output within int8 rounding of peft's.
#[test]
fn gpu_layers_on_quantised_bases_match_peft() {
    let Some(gpu) = common::gpu() else { return };
    fn run<T: Element>(gpu: &Gpu, file: &str) {
        let case = GoldenCase::load(&golden_dir().join(file)).unwrap();
        let bytes = std::fs::read(&case.path).unwrap();
        let origin = case.path.display().to_string();
        let bias: Option<Vec<T>> = case
            .has("base.bias")
            .then(|| case.values("base.bias").unwrap());
        let int8 = case.meta("quant").unwrap() == "int8";
        let mut layer = if int8 {
            let w = Int8Weight::from_state_dict(&bytes, "base.", &origin).unwrap();
            Layer::<T>::int8(gpu, &w, bias.as_deref()).unwrap()
        } else {
            let w = Quant4Weight::from_state_dict(&bytes, "base.", &origin).unwrap();
            Layer::<T>::quant4(gpu, &w, bias.as_deref()).unwrap()
        };
        let adapter = LayerAdapter {
            lora_a: case.values("lora_A").unwrap(),
            lora_b: case.values("lora_B").unwrap(),
            rank: case.shape("lora_A").unwrap()[0],
            scale: case.scaling().unwrap() as f32,
            magnitude: case
                .has("magnitude")
                .then(|| case.values("magnitude").unwrap()),
        };
        layer.add_adapter("default", &adapter).unwrap();
        layer.set_active(&["default"]).unwrap();
        let x: Vec<T> = case.values("x").unwrap();
        let m = case.shape("x").unwrap()[0];
        let s = gpu.stream();
        let mut y = s.alloc_zeros::<T>(m * layer.out_features()).unwrap();
        let xd = s.clone_htod(&x).unwrap();
        layer.forward(&xd, m, None, &mut y).unwrap();
        let want = case.values_f64("output").unwrap();
        // As in the golden CPU path: bitsandbytes' 8-bit base inside peft is ~2 ulps off its own.
        let tol = tolerance(T::DTYPE) * if int8 { 2.5 } else { 1.0 };
        let err = rel_error(&common::f64s(&s.clone_dtoh(&y).unwrap()), &want);
        assert!(
            err <= tol,
            "{file}: rel err {err:.3e} (tolerance {tol:.1e})"
        );
        if int8 {
            layer.merge(None, true).unwrap();
            layer.forward(&xd, m, None, &mut y).unwrap();
            let err = rel_error(&common::f64s(&s.clone_dtoh(&y).unwrap()), &want);
            assert!(err <= 2e-2, "{file} merged into int8: rel err {err:.3e}");
            layer.unmerge().unwrap();
        } else {
            assert!(
                layer.merge(None, true).is_err(),
                "no merge into a 4-bit base"
            );
        }
    }
    run::<f32>(&gpu, "qlora_nf4_f32.safetensors");
    run::<bf16>(&gpu, "qdora_nf4_bf16.safetensors");
    run::<f16>(&gpu, "lora_int8_f16.safetensors");
    run::<f16>(&gpu, "dora_int8_f16.safetensors");
}

/// A layer built from buffers already on the GPU (a framework's tensors) is the same layer.
#[test]
fn gpu_layer_from_device_buffers() {
    let Some(gpu) = common::gpu() else { return };
    let folder = "adapter_dora";
    let name = "layers.0.up_proj";
    let model = AdapterModel::load(&golden_dir().join(folder)).unwrap();
    let m = model.module(name).unwrap();
    let (weight, bias) = model.base_weight(name).unwrap();
    let adapter = model.layer_adapter(name).unwrap();
    let s = gpu.stream();
    let mut layer = Layer::from_device(
        &gpu,
        BaseWeight::Dense(s.clone_htod(&weight).unwrap()),
        [m.out_features, m.in_features],
        bias.as_ref().map(|b| s.clone_htod(b).unwrap()),
    )
    .unwrap();
    layer
        .add_device_adapter(
            "default",
            DeviceLayerAdapter {
                lora_a: s.clone_htod(&adapter.lora_a).unwrap(),
                lora_b: s.clone_htod(&adapter.lora_b).unwrap(),
                rank: adapter.rank,
                scale: adapter.scale,
                magnitude: adapter.magnitude.as_ref().map(|v| s.clone_htod(v).unwrap()),
            },
        )
        .unwrap();
    layer.set_active(&["default"]).unwrap();
    let x: Vec<f32> = model.expected.values(&format!("{name}.input")).unwrap();
    let want = model
        .expected
        .values_f64(&format!("{name}.output"))
        .unwrap();
    let y = gpu_forward(&gpu, &mut layer, &x, 3, None);
    assert!(rel_error(&f64s(&y), &want) < 1e-5);
    // A quantised base of another shape, or a short bias, is refused.
    let q =
        lora_kernels::int8::reference::quantize_rowwise(&weight, [m.out_features, m.in_features])
            .unwrap();
    assert_invalid(
        Layer::<f32>::from_device(
            &gpu,
            BaseWeight::Int8(gpu.upload_int8(&q).unwrap()),
            [1, 1],
            None,
        ),
        "shape",
    );
    assert_invalid(
        Layer::from_device(
            &gpu,
            BaseWeight::Dense(s.clone_htod(&weight).unwrap()),
            [m.out_features, m.in_features],
            Some(s.clone_htod(&[1.0f32]).unwrap()),
        ),
        "elements",
    );
}
