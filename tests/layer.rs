//! The reference layer follows peft's forward states: the shipped adapters reproduce peft's module
//! outputs through it, merging changes W but not the output, unmerging restores W, disabling gives the
//! base, and the state errors peft raises are errors here.
use lora_kernels::golden::{golden_dir, rel_error, GoldenCase};
use lora_kernels::layer::{LayerAdapter, ReferenceLayer};
use lora_kernels::peft::PeftAdapter;
use lora_kernels::Error;

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

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
