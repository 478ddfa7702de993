//! `lora_kernels::candle::bert` (cargo feature `candle`): a two-layer toy BERT with random weights
//! (written to a temporary `config.json` + `model.safetensors`, no download) takes a training step
//! whose gradients (LoRA A and B, the DoRA magnitude, the classifier) match central finite
//! differences; its saved peft adapter round-trips through `PeftAdapter::load`, and the model rebuilt
//! from it reproduces the trained model's logits; padding is masked; bad inputs are named errors.
#![cfg(feature = "candle")]

#[path = "common/rng.rs"]
mod rng;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use lora_kernels::candle::bert::{load_weights, BertClassifier, BertConfig, LoraSettings};
use lora_kernels::candle::CpuBase;
use lora_kernels::peft::PeftAdapter;
use rng::Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const CPU: Device = Device::Cpu;
const HIDDEN: usize = 16;
const INTER: usize = 32;
const VOCAB: usize = 40;
const LAYERS: usize = 2;
const MAX_POS: usize = 24;

/// Where the toy checkpoint goes, and how it is laid out.
struct Toy {
    dir: PathBuf,
    /// Keys under `bert.` (a `BertFor…` checkpoint) instead of bare (a `BertModel` one).
    prefix: bool,
    /// Whether the checkpoint has pooler weights.
    pooler: bool,
}

fn random(rng: &mut Rng, dims: &[usize], amp: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.uniform() * amp) as f32).collect();
    Tensor::from_vec(v, dims, &CPU).unwrap()
}

/// Writes a random two-layer BERT (hidden 16, 2 heads) to a fresh folder; returns it.
fn toy(test: &str, prefix: bool, pooler: bool) -> Toy {
    let dir = std::env::temp_dir().join(format!("lora-kernels-bert-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
        "hidden_size": HIDDEN, "intermediate_size": INTER, "num_attention_heads": 2,
        "num_hidden_layers": LAYERS, "vocab_size": VOCAB, "max_position_embeddings": MAX_POS,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "initializer_range": 0.5,
        "position_embedding_type": "absolute", "pad_token_id": 0,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut rng = Rng::new(7);
    let p = if prefix { "bert." } else { "" };
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, dims: &[usize], amp: f64, rng: &mut Rng| {
        t.insert(format!("{p}{name}"), random(rng, dims, amp));
    };
    put(
        "embeddings.word_embeddings.weight".into(),
        &[VOCAB, HIDDEN],
        1.0,
        &mut rng,
    );
    put(
        "embeddings.position_embeddings.weight".into(),
        &[MAX_POS, HIDDEN],
        0.5,
        &mut rng,
    );
    put(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, HIDDEN],
        0.5,
        &mut rng,
    );
    let norm = |name: &str, rng: &mut Rng, t: &mut dyn FnMut(String, Tensor)| {
        let w = (random(rng, &[HIDDEN], 0.2) + 1.0).unwrap();
        t(format!("{name}.weight"), w);
        t(format!("{name}.bias"), random(rng, &[HIDDEN], 0.2));
    };
    let mut extra: Vec<(String, Tensor)> = Vec::new();
    norm("embeddings.LayerNorm", &mut rng, &mut |k, v| {
        extra.push((k, v))
    });
    let dense = |name: &str, out: usize, inp: usize, rng: &mut Rng| {
        let amp = 1.5 / (inp as f64).sqrt();
        vec![
            (format!("{name}.weight"), random(rng, &[out, inp], amp)),
            (format!("{name}.bias"), random(rng, &[out], 0.2)),
        ]
    };
    for i in 0..LAYERS {
        let l = format!("encoder.layer.{i}");
        for n in ["query", "key", "value"] {
            extra.extend(dense(
                &format!("{l}.attention.self.{n}"),
                HIDDEN,
                HIDDEN,
                &mut rng,
            ));
        }
        extra.extend(dense(
            &format!("{l}.attention.output.dense"),
            HIDDEN,
            HIDDEN,
            &mut rng,
        ));
        norm(
            &format!("{l}.attention.output.LayerNorm"),
            &mut rng,
            &mut |k, v| extra.push((k, v)),
        );
        extra.extend(dense(
            &format!("{l}.intermediate.dense"),
            INTER,
            HIDDEN,
            &mut rng,
        ));
        extra.extend(dense(&format!("{l}.output.dense"), HIDDEN, INTER, &mut rng));
        norm(&format!("{l}.output.LayerNorm"), &mut rng, &mut |k, v| {
            extra.push((k, v))
        });
    }
    if pooler {
        extra.extend(dense("pooler.dense", HIDDEN, HIDDEN, &mut rng));
    }
    for (k, v) in extra {
        t.insert(format!("{p}{k}"), v);
    }
    // transformers' checkpoints carry position_ids (an integer tensor the model does not read).
    t.insert(
        format!("{p}embeddings.position_ids"),
        Tensor::arange(0i64, MAX_POS as i64, &CPU)
            .unwrap()
            .reshape((1, MAX_POS))
            .unwrap(),
    );
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    Toy {
        dir,
        prefix,
        pooler,
    }
}

/// A batch of two sequences, the second padded: ids [2, 7], mask, labels.
fn batch() -> (Tensor, Tensor, Tensor) {
    let ids: Vec<u32> = vec![1, 5, 9, 22, 3, 31, 2, 1, 17, 8, 39, 2, 0, 0];
    let mask: Vec<u32> = vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
    (
        Tensor::from_vec(ids, (2, 7), &CPU).unwrap(),
        Tensor::from_vec(mask, (2, 7), &CPU).unwrap(),
        Tensor::from_vec(vec![1u32, 0], 2, &CPU).unwrap(),
    )
}

fn model(toy: &Toy, lora: &LoraSettings) -> BertClassifier {
    let m = BertClassifier::from_dir(&toy.dir, lora, 2, 11).unwrap();
    // peft starts with B = 0 (and m = ‖W‖): random values, so that no gradient is trivially zero.
    let mut rng = Rng::new(3);
    for (_, layer) in m.lora_layers() {
        let ad = layer.adapter("default").unwrap();
        ad.lora_b
            .set(&random(&mut rng, ad.lora_b.dims(), 0.3))
            .unwrap();
        if let Some(mag) = &ad.magnitude {
            let scaled =
                (mag.as_tensor() * (random(&mut rng, mag.dims(), 0.3) + 1.0).unwrap()).unwrap();
            mag.set(&scaled).unwrap();
        }
    }
    m
}

fn loss(m: &BertClassifier) -> Tensor {
    let (ids, mask, labels) = batch();
    let logits = m.forward(&ids, &mask).unwrap();
    candle_nn::loss::cross_entropy(&logits, &labels).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f32>().unwrap() as f64
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Central differences of the loss for up to `count` elements of `var` (spread over it), against the
/// autograd gradient `grad`: the relative error of the sampled vector.
fn fd_error(m: &BertClassifier, var: &Var, grad: &Tensor, count: usize) -> (f64, f64) {
    let base = values(var.as_tensor());
    let g = values(grad);
    let eps = 1e-2f32;
    let (mut num, mut den) = (0f64, 0f64);
    let step = (base.len() / count).max(1);
    for i in (0..base.len()).step_by(step).take(count) {
        let mut v = base.clone();
        v[i] = base[i] + eps;
        var.set(&Tensor::from_vec(v.clone(), var.dims(), &CPU).unwrap())
            .unwrap();
        let up = scalar(&loss(m));
        v[i] = base[i] - eps;
        var.set(&Tensor::from_vec(v, var.dims(), &CPU).unwrap())
            .unwrap();
        let down = scalar(&loss(m));
        let fd = (up - down) / (2.0 * eps as f64);
        num += (fd - g[i] as f64).powi(2);
        den += (g[i] as f64).powi(2);
    }
    var.set(&Tensor::from_vec(base, var.dims(), &CPU).unwrap())
        .unwrap();
    ((num / den.max(1e-30)).sqrt(), den.sqrt())
}

fn check_gradients(lora: LoraSettings, base: CpuBase) {
    let toy = toy(if lora.use_dora { "fd-dora" } else { "fd" }, false, true);
    let m = model(&toy, &lora);
    m.set_cpu_base(base);
    let l0 = loss(&m);
    let grads = l0.backward().unwrap();
    let vars = m.trainable_vars();
    let per_layer = if lora.use_dora { 3 } else { 2 };
    assert_eq!(
        vars.len(),
        LAYERS * lora.target_modules.len() * per_layer + 2
    );
    // DoRA trains with the weight norm detached (peft, and the paper's §4.3): A's and B's gradients
    // are by design not the derivative of the forward, which differentiates the norm too. So only
    // the magnitude and the head are checked against finite differences there; candle_ops checks
    // DoRA's A and B gradients against peft's golden ones.
    let detached: Vec<_> = if lora.use_dora {
        m.lora_layers()
            .iter()
            .flat_map(|(_, l)| {
                let ad = l.adapter("default").unwrap();
                [ad.lora_a.as_tensor().id(), ad.lora_b.as_tensor().id()]
            })
            .collect()
    } else {
        Vec::new()
    };
    for (i, var) in vars.iter().enumerate() {
        let g = grads
            .get(var)
            .unwrap_or_else(|| panic!("var {i} has a gradient"));
        if detached.contains(&var.as_tensor().id()) {
            continue;
        }
        let (err, norm) = fd_error(&m, var, g, 12);
        assert!(
            norm > 1e-4,
            "var {i} {:?}: gradient norm {norm} (trivially small)",
            var.dims()
        );
        assert!(
            err < 2e-2,
            "var {i} {:?}: finite differences differ by {err:e} (relative)",
            var.dims()
        );
    }
    // The step itself: AdamW lowers the loss on this batch.
    let mut opt = candle_nn::AdamW::new_lr(vars, 1e-2).unwrap();
    opt.step(&grads).unwrap();
    let l1 = scalar(&loss(&m));
    assert!(l1 < scalar(&l0), "loss {} then {l1}", scalar(&l0));
}

#[test]
fn lora_training_step_gradients_match_finite_differences() {
    check_gradients(LoraSettings::default(), CpuBase::Reference);
}

#[test]
fn lora_gradients_with_candles_base_match_finite_differences() {
    check_gradients(LoraSettings::default(), CpuBase::Candle);
}

#[test]
fn dora_on_all_projections_gradients_match_finite_differences() {
    check_gradients(
        LoraSettings {
            target_modules: vec!["query".into(), "key".into(), "value".into()],
            rank: 3,
            alpha: 5.0,
            use_dora: true,
        },
        CpuBase::Candle,
    );
}

fn round_trip(test: &str, prefix: bool, pooler: bool, lora: LoraSettings, base: CpuBase) {
    let toy = toy(test, prefix, pooler);
    let m = model(&toy, &lora);
    m.set_cpu_base(base);
    assert_eq!((toy.prefix, toy.pooler), (prefix, pooler));
    // Train a few steps so that the head and adapters moved.
    let mut opt = candle_nn::AdamW::new_lr(m.trainable_vars(), 5e-2).unwrap();
    for _ in 0..3 {
        opt.backward_step(&loss(&m)).unwrap();
    }
    let (ids, mask, _) = batch();
    let logits = values(&m.forward(&ids, &mask).unwrap());
    let out = toy.dir.join("adapter");
    m.save_peft(&out, "toy-bert").unwrap();

    // The files as peft writes them.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(config["r"], lora.rank);
    assert_eq!(config["lora_alpha"], lora.alpha);
    assert_eq!(config["use_dora"], lora.use_dora);
    assert_eq!(config["base_model_name_or_path"], "toy-bert");
    assert_eq!(
        config["target_modules"],
        serde_json::json!(lora.target_modules)
    );
    let mut saved_modules = vec!["classifier"];
    if !pooler {
        saved_modules.push("pooler");
    }
    saved_modules.push("score");
    assert_eq!(config["modules_to_save"], serde_json::json!(saved_modules));
    let st = candle_core::safetensors::load(out.join("adapter_model.safetensors"), &CPU).unwrap();
    let mut keys: Vec<&str> = st.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = vec![
        "base_model.model.classifier.bias".to_string(),
        "base_model.model.classifier.weight".to_string(),
    ];
    if !pooler {
        expected.push("base_model.model.bert.pooler.dense.bias".into());
        expected.push("base_model.model.bert.pooler.dense.weight".into());
    }
    for i in 0..LAYERS {
        for t in &lora.target_modules {
            let p = format!("base_model.model.bert.encoder.layer.{i}.attention.self.{t}");
            expected.push(format!("{p}.lora_A.weight"));
            expected.push(format!("{p}.lora_B.weight"));
            if lora.use_dora {
                expected.push(format!("{p}.lora_magnitude_vector"));
            }
        }
    }
    expected.sort_unstable();
    assert_eq!(keys, expected);

    // PeftAdapter reads it back: every module's values and the head's.
    let adapter = PeftAdapter::load(&out).unwrap();
    assert_eq!(adapter.use_dora, lora.use_dora);
    assert_eq!(adapter.modules.len(), LAYERS * lora.target_modules.len());
    for (path, layer) in m.lora_layers() {
        let ad = layer.adapter("default").unwrap();
        let saved = adapter
            .module(&path)
            .unwrap_or_else(|| panic!("{path} saved"));
        assert_eq!(saved.rank, lora.rank);
        assert_eq!(saved.scale, (lora.alpha / lora.rank as f64) as f32);
        assert_eq!(saved.lora_a, values(ad.lora_a.as_tensor()));
        assert_eq!(saved.lora_b, values(ad.lora_b.as_tensor()));
        assert_eq!(saved.magnitude, ad.magnitude.map(|v| values(v.as_tensor())));
    }
    let (w, b) = m.classifier();
    assert_eq!(
        adapter.saved_tensor("classifier.weight").unwrap().values,
        values(w.as_tensor())
    );
    assert_eq!(
        adapter.saved_tensor("classifier.bias").unwrap().values,
        values(b.as_tensor())
    );

    // A model rebuilt from the checkpoint and the adapter gives the trained model's logits.
    let config = BertConfig::load(&toy.dir.join("config.json")).unwrap();
    let vb = load_weights(&toy.dir.join("model.safetensors")).unwrap();
    let rebuilt = BertClassifier::from_peft(&config, vb, &adapter).unwrap();
    rebuilt.set_cpu_base(base);
    let (mut got, mut want) = (
        rebuilt.lora_settings().target_modules.clone(),
        lora.target_modules.clone(),
    );
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(rebuilt.trained_pooler().is_some(), !pooler);
    assert_eq!(values(&rebuilt.forward(&ids, &mask).unwrap()), logits);
}

#[test]
fn saved_lora_adapter_round_trips_and_reproduces_the_logits() {
    round_trip(
        "round-trip",
        false,
        true,
        LoraSettings::default(),
        CpuBase::Reference,
    );
}

#[test]
fn saved_dora_adapter_with_a_trained_pooler_round_trips() {
    // A `bert.`-prefixed checkpoint without pooler weights: the pooler is trained and saved.
    let lora = LoraSettings {
        target_modules: vec!["value".into(), "key".into()],
        rank: 4,
        alpha: 12.0,
        use_dora: true,
    };
    round_trip("round-trip-dora", true, false, lora, CpuBase::Candle);
}

#[test]
fn padding_is_masked() {
    let toy = toy("padding", false, true);
    let m = model(&toy, &LoraSettings::default());
    let ids = Tensor::from_vec(vec![1u32, 17, 8, 39, 2], (1, 5), &CPU).unwrap();
    let mask = Tensor::ones((1, 5), DType::U32, &CPU).unwrap();
    let alone = values(&m.forward(&ids, &mask).unwrap());
    let (ids, mask, _) = batch();
    let batched = values(&m.forward(&ids, &mask).unwrap());
    // The padded second row: [1, 17, 8, 39, 2] and two pads.
    for (a, b) in alone.iter().zip(&batched[2..]) {
        assert!((a - b).abs() < 1e-5, "{alone:?} vs {batched:?}");
    }
}

fn err<T: std::fmt::Debug>(r: candle_core::Result<T>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[test]
fn bad_inputs_are_named_errors() {
    let toy = toy("errors", false, true);
    let dir: &Path = &toy.dir;
    let bad = |lora: LoraSettings| err(BertClassifier::from_dir(dir, &lora, 2, 0));
    let msg = bad(LoraSettings {
        target_modules: vec!["dense".into()],
        ..Default::default()
    });
    assert!(
        msg.contains("lora.target_modules") && msg.contains("`dense`"),
        "{msg}"
    );
    let msg = bad(LoraSettings {
        rank: 0,
        ..Default::default()
    });
    assert!(msg.contains("lora.rank"), "{msg}");
    assert!(err(BertClassifier::from_dir(
        dir,
        &LoraSettings::default(),
        0,
        0
    ))
    .contains("num_labels"));

    let m = model(&toy, &LoraSettings::default());
    let (ids, mask, _) = batch();
    let msg = err(m.forward(&ids.flatten_all().unwrap(), &mask));
    assert!(
        msg.contains("input_ids") && msg.contains("[batch, seq]"),
        "{msg}"
    );
    let msg = err(m.forward(&ids, &mask.narrow(1, 0, 3).unwrap()));
    assert!(msg.contains("attention_mask"), "{msg}");
    let msg = err(m.forward(&ids.to_dtype(DType::F32).unwrap(), &mask));
    assert!(msg.contains("input_ids") && msg.contains("u32"), "{msg}");
    let big = Tensor::from_vec(vec![VOCAB as u32], (1, 1), &CPU).unwrap();
    let msg = err(m.forward(&big, &Tensor::ones((1, 1), DType::U32, &CPU).unwrap()));
    assert!(msg.contains("vocab_size"), "{msg}");
    let long = Tensor::zeros((1, MAX_POS + 1), DType::U32, &CPU).unwrap();
    let msg = err(m.forward(&long, &long));
    assert!(msg.contains("max_position_embeddings"), "{msg}");

    // A checkpoint without a tensor the model needs names it.
    let path = dir.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &CPU).unwrap();
    t.remove("encoder.layer.1.output.dense.weight");
    candle_core::safetensors::save(&t, &path).unwrap();
    let msg = err(BertClassifier::from_dir(
        dir,
        &LoraSettings::default(),
        2,
        0,
    ));
    assert!(msg.contains("encoder.layer.1.output.dense.weight"), "{msg}");

    // A config that is not BERT's, and an adapter for other modules.
    let msg = err(BertConfig::from_json(
        br#"{"hidden_act": "relu"}"#,
        "c.json",
    ));
    assert!(
        msg.contains("c.json") && msg.contains("hidden_act"),
        "{msg}"
    );
    let msg = err(BertConfig::from_json(br#"{"vocab_size": -1}"#, "c.json"));
    assert!(msg.contains("vocab_size"), "{msg}");
}
