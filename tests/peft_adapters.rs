//! Loading peft adapter folders: scales from the config (rsLoRA, rank and alpha patterns), and clear
//! errors for malformed folders (missing files, unsupported settings, wrong shapes).
mod common;

use common::tensors::{rewrite, Tensors};
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

/// Rewrites `dir/adapter_model.safetensors` with `edit` applied to its tensors.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Tensors)) {
    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, rewrite(&bytes, edit)).unwrap();
}

/// The error of loading `dir`, checked to be the same on ten more loads (each load iterates its
/// HashMaps in another order).
fn same_error(dir: &Path) -> String {
    let first = file_error(PeftAdapter::load(dir));
    for _ in 0..10 {
        assert_eq!(
            file_error(PeftAdapter::load(dir)),
            first,
            "a second load differs"
        );
    }
    first
}

#[test]
fn flags_must_be_json_booleans() {
    for key in ["use_dora", "use_rslora", "fan_in_fan_out", "lora_bias"] {
        for bad in [json!("true"), json!(0), json!(""), json!([true])] {
            let dir = folder(&format!("flag-{key}"), "adapter_lora", |c| {
                c[key] = bad.clone()
            });
            let msg = file_error(PeftAdapter::load(&dir));
            assert!(
                msg.contains(&format!(
                    "`{key}`: expected true or false (a JSON boolean), got {bad}"
                )),
                "{key} = {bad}: {msg}"
            );
        }
        // null is peft's default, false.
        let dir = folder(&format!("flag-null-{key}"), "adapter_lora", |c| {
            c[key] = Value::Null
        });
        assert!(PeftAdapter::load(&dir).is_ok(), "{key} = null");
    }
}

#[test]
fn ranks_must_be_positive_integers_up_to_max_rank() {
    for bad in [
        json!(0),
        json!(257),
        json!(8.5),
        json!(8.0),
        json!("8"),
        json!(-8),
        json!(1e-320),
    ] {
        let dir = folder("bad-r", "adapter_lora", |c| c["r"] = bad.clone());
        let msg = file_error(PeftAdapter::load(&dir));
        assert!(
            msg.contains(&format!(
                "`r`: expected a positive integer up to 256, got {bad}"
            )),
            "r = {bad}: {msg}"
        );
        assert!(msg.len() < 200, "{msg}");
        let dir = folder("bad-rank-pattern", "adapter_lora", |c| {
            c["rank_pattern"] = json!({ "q_proj": bad.clone() })
        });
        let msg = file_error(PeftAdapter::load(&dir));
        assert!(
            msg.contains("`rank_pattern.q_proj`: expected a positive integer"),
            "{msg}"
        );
    }
    // A tiny r is shown as JSON writes it, not as 330 digits.
    let dir = folder("tiny-r", "adapter_lora", |c| c["r"] = json!(1e-320));
    assert!(file_error(PeftAdapter::load(&dir)).contains("got 1e-320"));
}

#[test]
fn alphas_must_be_numbers_giving_a_finite_scale() {
    let dir = folder("huge-alpha", "adapter_lora", |c| {
        c["lora_alpha"] = json!(1e300)
    });
    let msg = file_error(PeftAdapter::load(&dir));
    assert!(
        msg.contains("adapter_config.json") && msg.contains("scale"),
        "{msg}"
    );
    let dir = folder("huge-alpha-pattern", "adapter_lora", |c| {
        c["alpha_pattern"] = json!({ "v_proj": 1e300 })
    });
    let msg = file_error(PeftAdapter::load(&dir));
    assert!(msg.contains("v_proj") && msg.contains("scale"), "{msg}");
    for bad in [json!("16"), json!(true), json!([16])] {
        let dir = folder("bad-alpha", "adapter_lora", |c| {
            c["lora_alpha"] = bad.clone()
        });
        let msg = file_error(PeftAdapter::load(&dir));
        assert!(
            msg.contains(&format!(
                "`lora_alpha`: expected a finite number, got {bad}"
            )),
            "{msg}"
        );
        // An alpha_pattern value that is not a number was ignored (the global alpha used).
        let dir = folder("bad-alpha-pattern", "adapter_lora", |c| {
            c["alpha_pattern"] = json!({ "q_proj": bad.clone() })
        });
        let msg = file_error(PeftAdapter::load(&dir));
        assert!(
            msg.contains("`alpha_pattern.q_proj`: expected a finite number"),
            "{msg}"
        );
    }
}

#[test]
fn patterns_must_be_objects() {
    for key in ["rank_pattern", "alpha_pattern"] {
        for bad in [json!([]), json!("q_proj"), json!(4)] {
            let dir = folder("bad-pattern", "adapter_lora", |c| c[key] = bad.clone());
            let msg = file_error(PeftAdapter::load(&dir));
            assert!(
                msg.contains(&format!("`{key}`: expected an object")),
                "{msg}"
            );
        }
        let dir = folder("null-pattern", "adapter_lora", |c| c[key] = Value::Null);
        assert!(PeftAdapter::load(&dir).is_ok());
    }
}

#[test]
fn a_config_that_is_not_an_object_says_so() {
    for bad in ["[]", "8", "null", "\"LORA\""] {
        let dir = folder("not-object", "adapter_lora", |_| {});
        std::fs::write(dir.join("adapter_config.json"), bad).unwrap();
        let msg = file_error(PeftAdapter::load(&dir));
        assert!(
            msg.contains(&format!(
                "expected a JSON object (peft's LoraConfig), got {bad}"
            )),
            "{msg}"
        );
    }
    let dir = folder("peft-type-number", "adapter_lora", |c| {
        c["peft_type"] = json!(5)
    });
    assert!(file_error(PeftAdapter::load(&dir)).contains("`peft_type`: expected \"LORA\", got 5"));
}

#[test]
fn tensors_without_their_lora_a_are_errors() {
    let dir = folder("orphan-b", "adapter_lora", |_| {});
    edit_weights(&dir, |t| {
        t.remove("base_model.model.layers.1.v_proj.lora_A.weight");
        t.remove("base_model.model.layers.0.q_proj.lora_A.weight");
    });
    let msg = same_error(&dir);
    assert!(
        msg.contains("`base_model.model.layers.0.q_proj.lora_B.weight`, `base_model.model.layers.1.v_proj.lora_B.weight` without its `lora_A.weight`"),
        "{msg}"
    );
    let dir = folder("orphan-magnitude", "adapter_dora", |_| {});
    edit_weights(&dir, |t| {
        t.remove("base_model.model.layers.0.up_proj.lora_A.weight");
        t.remove("base_model.model.layers.0.up_proj.lora_B.weight");
    });
    assert!(same_error(&dir)
        .contains("`base_model.model.layers.0.up_proj.lora_magnitude_vector` without"));
    // DoRA weights under a config without use_dora: the magnitudes were silently ignored.
    for value in [json!(false), Value::Null] {
        let dir = folder("magnitude-not-dora", "adapter_dora", |c| {
            c["use_dora"] = value.clone()
        });
        let msg = same_error(&dir);
        assert!(
            msg.contains("lora_magnitude_vector`")
                && msg.contains("`use_dora` in adapter_config.json is false"),
            "{msg}"
        );
    }
}

#[test]
fn foreign_tensors_are_all_named_in_order_every_time() {
    let dir = folder("foreign", "adapter_lora", |_| {});
    edit_weights(&dir, |t| {
        let a = t["base_model.model.layers.0.q_proj.lora_A.weight"].clone();
        t.insert(
            "base_model.model.layers.0.q_proj.lora_embedding_A".into(),
            a.clone(),
        );
        t.insert(
            "base_model.model.layers.0.q_proj.base_layer.weight".into(),
            a,
        );
    });
    let msg = same_error(&dir);
    assert!(
        msg.contains("unsupported tensors `base_model.model.layers.0.q_proj.base_layer.weight`, `base_model.model.layers.0.q_proj.lora_embedding_A`"),
        "{msg}"
    );
    let dir = folder("no-prefix", "adapter_lora", |_| {});
    edit_weights(&dir, |t| {
        let a = t["base_model.model.layers.0.q_proj.lora_A.weight"].clone();
        t.insert("z.weight".into(), a.clone());
        t.insert("a.weight".into(), a);
    });
    assert!(same_error(&dir)
        .contains("unexpected tensors `a.weight`, `z.weight` (no `base_model.model.` prefix)"));
}

#[test]
fn bad_tensor_headers_and_values_are_named() {
    let dir = folder("bad-header", "adapter_lora", |_| {});
    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["base_model.model.layers.1.up_proj.lora_B.weight"]["shape"] = json!([97, 8]);
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    std::fs::write(&path, out).unwrap();
    let msg = same_error(&dir);
    assert!(
        msg.contains("adapter_model.safetensors: tensor `base_model.model.layers.1.up_proj.lora_B.weight` (F32 [97, 8])"),
        "{msg}"
    );
    // A NaN weight loads as it is (peft loads it; a safe merge refuses its result), every time.
    let dir = folder("nan-weight", "adapter_lora", |_| {});
    edit_weights(&dir, |t| {
        let a = t
            .get_mut("base_model.model.layers.0.v_proj.lora_A.weight")
            .unwrap();
        a.2[12..16].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let once = PeftAdapter::load(&dir).unwrap();
    let a = &once.modules["layers.0.v_proj"].lora_a;
    assert!(a[3].is_nan(), "{:?}", &a[..4]);
    assert_eq!(a.iter().filter(|v| v.is_nan()).count(), 1);
    assert_eq!(
        format!("{once:?}"),
        format!("{:?}", PeftAdapter::load(&dir).unwrap())
    );
}

#[test]
fn from_bytes_reads_what_load_reads() {
    let dir = golden("adapter_dora");
    let loaded = PeftAdapter::load(&dir).unwrap();
    let config = std::fs::read(dir.join("adapter_config.json")).unwrap();
    let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    assert_eq!(
        PeftAdapter::from_bytes(&config, &weights, &dir).unwrap(),
        loaded
    );
}

/// A module whose path extends another's (`q_proj` and `q_proj.a.q_proj`) sorts differently as a module
/// name than inside its tensor keys; both load.
#[test]
fn modules_whose_paths_extend_others_load() {
    let dir = folder("nested-names", "adapter_lora", |c| {
        c["rank_pattern"] = json!({})
    });
    edit_weights(&dir, |t| {
        for m in ["layers.1.q_proj", "layers.1.v_proj", "layers.1.up_proj"] {
            for part in ["lora_A", "lora_B"] {
                let v = t
                    .remove(&format!("base_model.model.{m}.{part}.weight"))
                    .unwrap();
                let to = m.replace("layers.1.", "layers.0.q_proj.a.");
                t.insert(format!("base_model.model.{to}.{part}.weight"), v);
            }
        }
    });
    let a = PeftAdapter::load(&dir).unwrap();
    assert_eq!(a.modules.len(), 8);
    assert!(a.module("layers.0.q_proj").is_some());
    assert!(a.module("layers.0.q_proj.a.q_proj").is_some());
}

#[test]
fn modules_to_save_are_read_and_others_still_refused() {
    // A classification head as peft's SEQ_CLS saves it: `base_model.model.<module>.<param>`.
    let dir = folder("modules-to-save", "adapter_lora", |c| {
        c["modules_to_save"] = json!(["classifier", "score"]);
    });
    let head: Vec<f32> = (0..6).map(|i| i as f32 * 0.25 - 0.5).collect();
    edit_weights(&dir, |t| {
        let bytes: Vec<u8> = head.iter().flat_map(|v| v.to_le_bytes()).collect();
        t.insert(
            "base_model.model.classifier.weight".into(),
            (Dtype::F32, vec![2, 3], bytes.clone()),
        );
        t.insert(
            "base_model.model.model.score.dense.bias".into(),
            (Dtype::F32, vec![6], bytes),
        );
    });
    let adapter = PeftAdapter::load(&dir).unwrap();
    assert_eq!(adapter.modules_to_save, ["classifier", "score"]);
    assert_eq!(
        adapter.saved.keys().collect::<Vec<_>>(),
        ["classifier.weight", "model.score.dense.bias"]
    );
    let w = adapter.saved_tensor("classifier.weight").unwrap();
    assert_eq!(
        (w.shape.as_slice(), w.values.as_slice()),
        (&[2, 3][..], &head[..])
    );
    assert_eq!(
        adapter.modules,
        PeftAdapter::load(&golden("adapter_lora")).unwrap().modules,
        "the LoRA modules are unchanged"
    );

    // A tensor of a module that is not listed (or only ends like a listed name), or a listed name
    // that is a parameter and not a module, is refused.
    edit_weights(&dir, |t| {
        let a = t["base_model.model.classifier.weight"].clone();
        t.insert("base_model.model.xclassifier.weight".into(), a.clone());
        t.insert("base_model.model.classifier_head.bias".into(), a.clone());
        t.insert("base_model.model.head.classifier".into(), a);
    });
    let msg = same_error(&dir);
    assert!(
        msg.contains("unsupported tensors `base_model.model.classifier_head.bias`, `base_model.model.head.classifier`, `base_model.model.xclassifier.weight`")
            && msg.contains("modules_to_save"),
        "{msg}"
    );
}

#[test]
fn modules_to_save_must_be_a_list_of_names() {
    for bad in [
        json!("classifier"),
        json!([1]),
        json!([""]),
        json!({"a": 1}),
    ] {
        let dir = folder("modules-to-save-bad", "adapter_lora", |c| {
            c["modules_to_save"] = bad.clone();
        });
        let msg = same_error(&dir);
        assert!(msg.contains("`modules_to_save`: expected"), "{bad}: {msg}");
    }
}
