//! Loading peft adapter folders: scales from the config (rsLoRA, rank and alpha patterns), and clear
//! errors for malformed folders (missing files, unsupported settings, wrong shapes).
use lora_kernels::peft::PeftAdapter;
use lora_kernels::Error;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/golden")
        .join(name)
}

/// A fresh folder holding a copy of the shipped adapter `name`, with `edit` applied to its config.
fn folder(test: &str, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lora-kernels-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = golden(name);
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    edit(&mut config);
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    dir
}

fn file_error(result: lora_kernels::Result<PeftAdapter>) -> String {
    match result {
        Err(Error::File { path, message }) => format!("{path}: {message}"),
        other => panic!("expected a file error, got {other:?}"),
    }
}

#[test]
fn shipped_adapters_load_with_peft_scales() {
    let lora = PeftAdapter::load(&golden("adapter_lora")).unwrap();
    assert!(!lora.use_dora);
    assert_eq!(lora.modules.len(), 8);
    let q = lora.module("layers.0.q_proj").unwrap();
    assert_eq!((q.rank, q.in_features, q.out_features), (8, 64, 64));
    assert_eq!(q.scale, 16.0 / 8.0);
    assert!(q.magnitude.is_none());
    let dora = PeftAdapter::load(&golden("adapter_dora")).unwrap();
    assert!(dora.use_dora);
    let up = dora.module("layers.0.up_proj").unwrap();
    assert_eq!(up.magnitude.as_ref().unwrap().len(), 96);
    assert_eq!(up.scale, 8.0 / 4.0);
}

#[test]
fn rslora_and_alpha_pattern_set_the_scale() {
    let dir = folder("rslora", "adapter_lora", |c| {
        c["use_rslora"] = json!(true);
        c["alpha_pattern"] = json!({"q_proj": 32});
    });
    let a = PeftAdapter::load(&dir).unwrap();
    assert_eq!(
        a.module("layers.1.q_proj").unwrap().scale,
        (32.0 / 8f64.sqrt()) as f32
    );
    assert_eq!(
        a.module("layers.1.v_proj").unwrap().scale,
        (16.0 / 8f64.sqrt()) as f32
    );
}

#[test]
fn unsupported_settings_are_named() {
    for (key, value, expect) in [
        ("peft_type", json!("LOHA"), "peft_type"),
        ("fan_in_fan_out", json!(true), "fan_in_fan_out"),
        ("lora_bias", json!(true), "lora_bias"),
        ("r", Value::Null, "`r`"),
    ] {
        let dir = folder(&format!("setting-{key}"), "adapter_lora", |c| {
            c[key] = value.clone()
        });
        let msg = file_error(PeftAdapter::load(&dir));
        assert!(msg.contains(expect), "{key}: {msg}");
    }
}

#[test]
fn a_rank_that_disagrees_with_the_weights_is_an_error() {
    let dir = folder("rank-pattern", "adapter_lora", |c| {
        c["rank_pattern"] = json!({"down_proj": 4})
    });
    let msg = file_error(PeftAdapter::load(&dir));
    assert!(msg.contains("down_proj") && msg.contains("rank 8"), "{msg}");
}

#[test]
fn missing_files_and_tensors_are_errors() {
    let dir = folder("missing", "adapter_dora", |_| {});
    std::fs::remove_file(dir.join("adapter_model.safetensors")).unwrap();
    assert!(file_error(PeftAdapter::load(&dir)).contains("adapter_model.safetensors"));
    std::fs::remove_file(dir.join("adapter_config.json")).unwrap();
    assert!(file_error(PeftAdapter::load(&dir)).contains("adapter_config.json"));
    // A DoRA config over LoRA weights: the magnitude is missing.
    let dir = folder("no-magnitude", "adapter_lora", |c| {
        c["use_dora"] = json!(true)
    });
    assert!(file_error(PeftAdapter::load(&dir)).contains("lora_magnitude_vector"));
    // Not JSON.
    let dir = folder("bad-json", "adapter_lora", |_| {});
    std::fs::write(dir.join("adapter_config.json"), "{ r: 8").unwrap();
    assert!(file_error(PeftAdapter::load(&dir)).contains("JSON"));
}

#[test]
fn wrong_shapes_are_errors() {
    let dir = folder("shapes", "adapter_lora", |_| {});
    let a: Vec<u8> = (0..8 * 64)
        .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
        .collect();
    let b: Vec<u8> = (0..64 * 4)
        .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
        .collect();
    let tensors = [
        (
            "base_model.model.layers.0.q_proj.lora_A.weight",
            TensorView::new(Dtype::F32, vec![8, 64], &a).unwrap(),
        ),
        (
            "base_model.model.layers.0.q_proj.lora_B.weight",
            TensorView::new(Dtype::F32, vec![64, 4], &b).unwrap(),
        ),
    ];
    safetensors::serialize_to_file(tensors, None, &dir.join("adapter_model.safetensors")).unwrap();
    let msg = file_error(PeftAdapter::load(&dir));
    assert!(
        msg.contains("layers.0.q_proj") && msg.contains("lora_B"),
        "{msg}"
    );
}
