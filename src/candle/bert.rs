//! A BERT encoder for sequence classification (transformers' `BertForSequenceClassification`, in
//! eval mode: no dropout) with LoRA or DoRA adapters ([`LoraLinear`]) on chosen self-attention
//! projections, and a peft-compatible save ([`BertClassifier::save_peft`]) and load
//! ([`BertClassifier::from_peft`]).
//!
//! It is built from a Hugging Face `config.json` and `model.safetensors` (a `BertModel` checkpoint
//! such as sentence-transformers/all-MiniLM-L6-v2, keys `embeddings.…`, `encoder.layer.N.…`,
//! `pooler.dense.…`; or a `BertFor…` one whose keys carry a `bert.` prefix). Everything of the
//! checkpoint is frozen (plain tensors, no gradient); the trainable [`Var`]s are the adapters'
//! tensors and the classification head (`classifier`, `Linear(hidden, num_labels)`).
//!
//! What it computes is transformers' forward, op for op: embeddings (word + absolute position +
//! token type 0) and LayerNorm; per layer, self-attention with the attention mask added as
//! `(1 - mask)·f32::MIN` before the softmax, output dense + residual + LayerNorm, the intermediate
//! dense with exact (erf) GELU, output dense + residual + LayerNorm; the pooler `tanh(dense(h[CLS]))`;
//! the classifier on the pooled output. LayerNorm is composed of candle ops
//! ([`candle_nn::ops::layer_norm_slow`]), because candle-nn's fused `LayerNorm` has no backward, and
//! the softmax too ([`candle_nn::ops::softmax`]; `softmax_last_dim` has no backward either). The
//! frozen dense layers run candle's matmul in a custom op whose backward gives only the input's
//! gradient (candle's own matmul backward would also compute the unused gradient of every frozen
//! weight).
//!
//! **The head and the pooler.** transformers loads a `BertModel` checkpoint's pooler into
//! `BertForSequenceClassification` and initialises the classifier randomly; peft with
//! `task_type: SEQ_CLS` trains and saves the classifier (`modules_to_save`). This module does the
//! same: the pooler comes from the checkpoint, frozen; the classifier is initialised as transformers
//! does (weights normal with std `initializer_range`, bias 0; from the checkpoint instead when it has
//! `classifier.weight` and `classifier.bias` of the right shape) and trained. A checkpoint without
//! pooler weights would get a random pooler in transformers, which peft does not save: then the
//! pooler is trainable too, initialised like the classifier, and saved as a module to save
//! (`pooler`, keys `base_model.model.bert.pooler.dense.weight` and `.bias`), so peft reproduces it.
//!
//! The adapters are initialised as peft does by default: A kaiming-uniform (`U(±1/sqrt(in))`), B = 0,
//! the DoRA magnitude the row norms of W; from a seed, so a run is reproducible.
//!
//! ```no_run
//! use candle_core::{Device, Tensor};
//! use candle_nn::Optimizer;
//! use lora_kernels::candle::bert::{BertClassifier, LoraSettings};
//! use lora_kernels::candle::CpuBase;
//! use std::path::Path;
//!
//! # fn main() -> candle_core::Result<()> {
//! // A folder with config.json and model.safetensors (e.g. all-MiniLM-L6-v2).
//! let model = BertClassifier::from_dir(Path::new("minilm"), &LoraSettings::default(), 2, 0)?;
//! model.set_cpu_base(CpuBase::Candle); // the frozen bases on candle's matmul
//! let mut opt = candle_nn::AdamW::new_lr(model.trainable_vars(), 2e-3)?;
//! let ids = Tensor::new(&[[101u32, 2307, 3185, 102]], &Device::Cpu)?; // [batch, seq]
//! let mask = Tensor::new(&[[1u32, 1, 1, 1]], &Device::Cpu)?;
//! let labels = Tensor::new(&[1u32], &Device::Cpu)?;
//! let loss = candle_nn::loss::cross_entropy(&model.forward(&ids, &mask)?, &labels)?;
//! opt.backward_step(&loss)?;
//! model.save_peft(Path::new("my-adapter"), "sentence-transformers/all-MiniLM-L6-v2")?;
//! # Ok(()) }
//! ```
use super::{invalid, CpuBase, FrozenMatmul, LoraLinear};
use crate::peft::PeftAdapter;
use candle_core::{DType, Device, Module, Result, Tensor, Var, D};
use candle_nn::VarBuilder;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// The settings of a BERT `config.json` the model reads (transformers' `BertConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `num_hidden_layers`.
    pub num_hidden_layers: usize,
    /// `num_attention_heads` (divides `hidden_size`).
    pub num_attention_heads: usize,
    /// `intermediate_size`.
    pub intermediate_size: usize,
    /// `max_position_embeddings`.
    pub max_position_embeddings: usize,
    /// `type_vocab_size`.
    pub type_vocab_size: usize,
    /// `layer_norm_eps`.
    pub layer_norm_eps: f64,
    /// `initializer_range` (the std of the classifier's initial weights).
    pub initializer_range: f64,
}

impl BertConfig {
    /// Reads `config.json` (its path is named in errors). Only `hidden_act: "gelu"` (erf) and
    /// `position_embedding_type: "absolute"` (or absent) are supported; sizes must be positive
    /// integers with `hidden_size` a multiple of `num_attention_heads`.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            candle_core::Error::msg(format!(
                "lora_kernels::candle: cannot read {}: {e}",
                path.display()
            ))
        })?;
        Self::from_json(&bytes, &path.display().to_string())
    }

    /// Reads a `config.json`'s bytes; `origin` names it in errors.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self> {
        let err = |what: String| {
            candle_core::Error::msg(format!("lora_kernels::candle: {origin}: {what}"))
        };
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let Some(map) = v.as_object() else {
            return Err(err("expected a JSON object (a BertConfig)".into()));
        };
        let size = |key: &str| -> Result<usize> {
            match map.get(key) {
                Some(x) => x
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| err(format!("`{key}`: expected a positive integer, got {x}"))),
                None => Err(err(format!("`{key}`: missing"))),
            }
        };
        let number = |key: &str, default: f64| -> Result<f64> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .ok_or_else(|| {
                        err(format!("`{key}`: expected a non-negative number, got {x}"))
                    }),
            }
        };
        match map.get("hidden_act") {
            None => {}
            Some(Value::String(s)) if s == "gelu" => {}
            Some(other) => {
                return Err(err(format!(
                    "`hidden_act`: only \"gelu\" (erf) is supported, got {other}"
                )))
            }
        }
        match map.get("position_embedding_type") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "absolute" => {}
            Some(other) => {
                return Err(err(format!(
                    "`position_embedding_type`: only \"absolute\" is supported, got {other}"
                )))
            }
        }
        let config = BertConfig {
            vocab_size: size("vocab_size")?,
            hidden_size: size("hidden_size")?,
            num_hidden_layers: size("num_hidden_layers")?,
            num_attention_heads: size("num_attention_heads")?,
            intermediate_size: size("intermediate_size")?,
            max_position_embeddings: size("max_position_embeddings")?,
            type_vocab_size: size("type_vocab_size")?,
            layer_norm_eps: number("layer_norm_eps", 1e-12)?,
            initializer_range: number("initializer_range", 0.02)?,
        };
        if config.hidden_size % config.num_attention_heads != 0 {
            return Err(err(format!(
                "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                config.hidden_size, config.num_attention_heads
            )));
        }
        Ok(config)
    }
}

/// The self-attention projections an adapter can target (peft's `target_modules` names).
pub const TARGETABLE: [&str; 3] = ["query", "key", "value"];

/// Which projections get adapters, and their rank, alpha and kind (peft's `LoraConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSettings {
    /// The targeted projections, each one of [`TARGETABLE`] (default `["query", "value"]`).
    pub target_modules: Vec<String>,
    /// The rank r (default 8).
    pub rank: usize,
    /// `lora_alpha` (default 16); the scale is `alpha / r`.
    pub alpha: f64,
    /// DoRA instead of LoRA (default false).
    pub use_dora: bool,
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings {
            target_modules: vec!["query".into(), "value".into()],
            rank: 8,
            alpha: 16.0,
            use_dora: false,
        }
    }
}

impl LoraSettings {
    fn check(&self) -> Result<()> {
        if self.target_modules.is_empty() {
            return Err(invalid(
                "lora.target_modules",
                format!("at least one of {TARGETABLE:?}"),
                "none",
            ));
        }
        for (i, t) in self.target_modules.iter().enumerate() {
            if !TARGETABLE.contains(&t.as_str()) {
                return Err(invalid(
                    "lora.target_modules",
                    format!("names from {TARGETABLE:?}"),
                    format!("`{t}`"),
                ));
            }
            if self.target_modules[..i].contains(t) {
                return Err(invalid(
                    "lora.target_modules",
                    "each name once",
                    format!("`{t}` twice"),
                ));
            }
        }
        if !(1..=crate::MAX_RANK).contains(&self.rank) {
            return Err(invalid(
                "lora.rank",
                format!("1 to {}", crate::MAX_RANK),
                self.rank,
            ));
        }
        if !(self.alpha.is_finite() && (self.alpha / self.rank as f64) as f32 != 0.0) {
            return Err(invalid(
                "lora.alpha",
                "a finite number giving a non-zero f32 scale",
                self.alpha,
            ));
        }
        Ok(())
    }

    fn scale(&self) -> f32 {
        (self.alpha / self.rank as f64) as f32
    }
}

/// A small deterministic generator for the initial weights (SplitMix64).
#[derive(Clone, Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// A frozen dense layer `y = x·Wᵀ + b` on candle's matmul whose backward is the input's gradient
/// only (`G·W`).
#[derive(Clone, Debug)]
struct Frozen {
    weight: Tensor,
    bias: Tensor,
}

impl Frozen {
    fn load(vb: &VarBuilder, out: usize, inp: usize) -> Result<Self> {
        Ok(Frozen {
            weight: vb.get((out, inp), "weight")?.contiguous()?,
            bias: vb.get(out, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = dims[dims.len() - 1];
        let rows = x.elem_count() / k;
        let x2 = x.reshape((rows, k))?.contiguous()?;
        let y = x2
            .apply_op1(FrozenMatmul {
                weight: self.weight.clone(),
            })?
            .broadcast_add(&self.bias)?;
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.weight.dims()[0];
        y.reshape(out)
    }
}

/// A self-attention projection: frozen, or a [`LoraLinear`] with adapter `"default"`.
#[derive(Debug)]
enum Proj {
    Frozen(Frozen),
    /// Boxed: a `LoraLinear` is much larger than a frozen layer.
    Lora(Box<LoraLinear>),
}

impl Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Proj::Frozen(f) => f.forward(x),
            Proj::Lora(l) => l.forward(x),
        }
    }
}

/// A LayerNorm's weight and bias (frozen), applied with candle ops (it has a backward).
#[derive(Clone, Debug)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl Norm {
    fn load(vb: &VarBuilder, h: usize, eps: f64) -> Result<Self> {
        Ok(Norm {
            weight: vb.get(h, "weight")?,
            bias: vb.get(h, "bias")?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps)
    }
}

/// One encoder layer.
#[derive(Debug)]
struct Layer {
    /// query, key, value, in [`TARGETABLE`]'s order.
    qkv: [Proj; 3],
    attn_out: Frozen,
    attn_norm: Norm,
    intermediate: Frozen,
    output: Frozen,
    out_norm: Norm,
}

/// A trainable dense layer (the classifier; the pooler when the checkpoint has none).
#[derive(Clone, Debug)]
struct Head {
    weight: Var,
    bias: Var,
}

impl Head {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())
    }
}

/// The pooler: from the checkpoint (frozen) or trainable.
#[derive(Clone, Debug)]
enum Pooler {
    Frozen(Frozen),
    Trained(Head),
}

/// `BertForSequenceClassification` (eval mode) with adapters on the chosen self-attention
/// projections of every layer and a trainable classifier; see the [module documentation](self).
#[derive(Debug)]
pub struct BertClassifier {
    config: BertConfig,
    lora: LoraSettings,
    num_labels: usize,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
    pooler: Pooler,
    classifier: Head,
    device: Device,
}

/// The module path of projection `name` of layer `i` in transformers' model (peft's module key).
pub fn projection_path(i: usize, name: &str) -> String {
    format!("bert.encoder.layer.{i}.attention.self.{name}")
}

/// peft's key prefix in `adapter_model.safetensors`.
const PREFIX: &str = "base_model.model.";

/// How to initialise the adapters and the head: fresh from a seed, or from a saved adapter.
#[derive(Clone, Copy)]
enum Init<'a> {
    Fresh(u64),
    Peft(&'a PeftAdapter),
}

impl BertClassifier {
    /// Builds the model from a `BertModel` (or `BertFor…`, `bert.`-prefixed) checkpoint in `vb`
    /// (f32, on the CPU), with fresh adapters per `lora` and a fresh `num_labels`-way classifier,
    /// initialised from `seed` (see the [module documentation](self)). Errors name a missing
    /// tensor or a wrong shape (from the [`VarBuilder`]), and invalid settings.
    pub fn new(
        config: &BertConfig,
        vb: VarBuilder,
        lora: &LoraSettings,
        num_labels: usize,
        seed: u64,
    ) -> Result<Self> {
        lora.check()?;
        Self::build(config, vb, lora.clone(), num_labels, Init::Fresh(seed))
    }

    /// Reads `config.json` and `model.safetensors` from `dir` and builds the model (see
    /// [`BertClassifier::new`]).
    pub fn from_dir(dir: &Path, lora: &LoraSettings, num_labels: usize, seed: u64) -> Result<Self> {
        let config = BertConfig::load(&dir.join("config.json"))?;
        let vb = load_weights(&dir.join("model.safetensors"))?;
        Self::new(&config, vb, lora, num_labels, seed)
    }

    /// Rebuilds a model from its checkpoint and a peft adapter saved by
    /// [`BertClassifier::save_peft`] (or by peft for `BertForSequenceClassification` with LoRA or
    /// DoRA on self-attention projections and `classifier` saved): each adapted projection loads
    /// its module (`bert.encoder.layer.N.attention.self.query`, ...) through
    /// [`LoraLinear::from_peft`], the classifier (and a saved pooler) its saved tensors. Errors: an
    /// adapter module this model has no projection for, projections adapted in some layers only,
    /// a missing or misshaped classifier.
    pub fn from_peft(config: &BertConfig, vb: VarBuilder, adapter: &PeftAdapter) -> Result<Self> {
        let mut targets: Vec<String> = Vec::new();
        for name in TARGETABLE {
            let present: Vec<bool> = (0..config.num_hidden_layers)
                .map(|i| adapter.module(&projection_path(i, name)).is_some())
                .collect();
            if present.iter().all(|&p| p) {
                targets.push(name.to_string());
            } else if present.iter().any(|&p| p) {
                return Err(invalid(
                    "adapter",
                    format!(
                        "`{name}` adapted in all {} layers",
                        config.num_hidden_layers
                    ),
                    format!(
                        "`{name}` in layers {:?} only",
                        present
                            .iter()
                            .enumerate()
                            .filter(|(_, &p)| p)
                            .map(|(i, _)| i)
                            .collect::<Vec<_>>()
                    ),
                ));
            }
        }
        let known: Vec<String> = (0..config.num_hidden_layers)
            .flat_map(|i| TARGETABLE.map(|n| projection_path(i, n)))
            .collect();
        if let Some(other) = adapter.modules.keys().find(|m| !known.contains(m)) {
            return Err(invalid(
                "adapter",
                "modules `bert.encoder.layer.N.attention.self.{query,key,value}`",
                format!("module `{other}` in {}", adapter.dir.display()),
            ));
        }
        let Some(first) = adapter.modules.values().next() else {
            return Err(invalid("adapter", "at least one adapted module", "none"));
        };
        let lora = LoraSettings {
            target_modules: targets,
            rank: first.rank,
            alpha: f64::from(first.scale) * first.rank as f64,
            use_dora: adapter.use_dora,
        };
        Self::build(config, vb, lora, 0, Init::Peft(adapter))
    }

    fn build(
        config: &BertConfig,
        vb: VarBuilder,
        lora: LoraSettings,
        num_labels: usize,
        init: Init<'_>,
    ) -> Result<Self> {
        if vb.dtype() != DType::F32 {
            return Err(invalid(
                "vb",
                "a VarBuilder of dtype F32",
                format!("{:?}", vb.dtype()),
            ));
        }
        if !vb.device().is_cpu() {
            return Err(invalid(
                "vb",
                "a VarBuilder on the CPU device",
                format!("{:?}", vb.device().location()),
            ));
        }
        let device = vb.device().clone();
        let bert = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb.clone()
        };
        let (h, c) = (config.hidden_size, config);
        let emb = bert.pp("embeddings");
        let word = emb.get((c.vocab_size, h), "word_embeddings.weight")?;
        let position = emb.get((c.max_position_embeddings, h), "position_embeddings.weight")?;
        let token_type = emb.get((c.type_vocab_size, h), "token_type_embeddings.weight")?;
        let emb_norm = Norm::load(&emb.pp("LayerNorm"), h, c.layer_norm_eps)?;
        let mut rng = match init {
            Init::Fresh(seed) => SplitMix(seed),
            Init::Peft(_) => SplitMix(0),
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = bert.pp(format!("encoder.layer.{i}"));
            let att = l.pp("attention");
            let mut qkv = Vec::with_capacity(3);
            for name in TARGETABLE {
                let lin = Frozen::load(&att.pp("self").pp(name), h, h)?;
                if !lora.target_modules.iter().any(|t| t == name) {
                    qkv.push(Proj::Frozen(lin));
                    continue;
                }
                let layer = match init {
                    Init::Peft(adapter) => LoraLinear::from_peft(
                        adapter,
                        &projection_path(i, name),
                        lin.weight,
                        Some(lin.bias),
                    )?,
                    Init::Fresh(_) => {
                        let r = lora.rank;
                        let bound = 1.0 / (h as f64).sqrt();
                        let a: Vec<f32> = (0..r * h)
                            .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                            .collect();
                        let a = Tensor::from_vec(a, (r, h), &device)?;
                        let b = Tensor::zeros((h, r), DType::F32, &device)?;
                        let magnitude = if lora.use_dora {
                            Some(lin.weight.sqr()?.sum(1)?.sqrt()?)
                        } else {
                            None
                        };
                        let layer = LoraLinear::new(lin.weight, Some(lin.bias))?;
                        layer.add_adapter("default", &a, &b, magnitude.as_ref(), lora.scale())?;
                        layer.set_active(&["default"])?;
                        layer
                    }
                };
                qkv.push(Proj::Lora(Box::new(layer)));
            }
            let [q, k, v]: [Proj; 3] = qkv
                .try_into()
                .map_err(|_| candle_core::Error::msg("three projections"))?;
            layers.push(Layer {
                qkv: [q, k, v],
                attn_out: Frozen::load(&att.pp("output.dense"), h, h)?,
                attn_norm: Norm::load(&att.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
                intermediate: Frozen::load(&l.pp("intermediate.dense"), c.intermediate_size, h)?,
                output: Frozen::load(&l.pp("output.dense"), h, c.intermediate_size)?,
                out_norm: Norm::load(&l.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
            });
        }
        let std = c.initializer_range;
        let mut fresh_head = |out: usize, inp: usize| -> Result<Head> {
            let w: Vec<f32> = (0..out * inp)
                .map(|_| (rng.normal() * std) as f32)
                .collect();
            Ok(Head {
                weight: Var::from_tensor(&Tensor::from_vec(w, (out, inp), &device)?)?,
                bias: Var::zeros(out, DType::F32, &device)?,
            })
        };
        let pooler = if bert.contains_tensor("pooler.dense.weight") {
            Pooler::Frozen(Frozen::load(&bert.pp("pooler.dense"), h, h)?)
        } else {
            match init {
                Init::Fresh(_) => Pooler::Trained(fresh_head(h, h)?),
                Init::Peft(adapter) => Pooler::Trained(saved_head(
                    adapter,
                    "bert.pooler.dense",
                    "pooler",
                    Some(h),
                    h,
                    &device,
                )?),
            }
        };
        let classifier = match init {
            Init::Fresh(_) => {
                if num_labels == 0 {
                    return Err(invalid("num_labels", "at least 1", 0));
                }
                if vb.contains_tensor("classifier.weight") && vb.contains_tensor("classifier.bias")
                {
                    Head {
                        weight: Var::from_tensor(&vb.get((num_labels, h), "classifier.weight")?)?,
                        bias: Var::from_tensor(&vb.get(num_labels, "classifier.bias")?)?,
                    }
                } else {
                    fresh_head(num_labels, h)?
                }
            }
            Init::Peft(adapter) => {
                saved_head(adapter, "classifier", "classifier", None, h, &device)?
            }
        };
        let num_labels = classifier.weight.dims()[0];
        Ok(BertClassifier {
            config: config.clone(),
            lora,
            num_labels,
            word,
            position,
            token_type,
            emb_norm,
            layers,
            pooler,
            classifier,
            device,
        })
    }

    /// The logits `[batch, num_labels]` for token ids `[batch, seq]` (u32 or i64) and the
    /// attention mask `[batch, seq]` (1 for a token, 0 for padding; u8, u32, i64 or f32); token
    /// type 0 everywhere (transformers' default). Errors name a wrong shape, dtype or device, a
    /// sequence longer than `max_position_embeddings`, and an id outside the vocabulary.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, s) = match *input_ids.dims() {
            [b, s] if b > 0 && s > 0 => (b, s),
            _ => {
                return Err(invalid(
                    "input_ids",
                    "shape [batch, seq] without a zero dimension",
                    format!("{:?}", input_ids.dims()),
                ))
            }
        };
        if s > c.max_position_embeddings {
            return Err(invalid(
                "input_ids",
                format!(
                    "at most max_position_embeddings = {} tokens",
                    c.max_position_embeddings
                ),
                format!("{s} tokens"),
            ));
        }
        if attention_mask.dims() != [b, s] {
            return Err(invalid(
                "attention_mask",
                format!("shape [batch={b}, seq={s}] (input_ids')"),
                format!("{:?}", attention_mask.dims()),
            ));
        }
        for (arg, t) in [("input_ids", input_ids), ("attention_mask", attention_mask)] {
            if !t.device().same_device(&self.device) {
                return Err(invalid(
                    arg,
                    "a tensor on the model's (CPU) device",
                    format!("{:?}", t.device().location()),
                ));
            }
        }
        let ids = match input_ids.dtype() {
            DType::U32 => input_ids.flatten_all()?,
            DType::I64 => input_ids.flatten_all()?.to_dtype(DType::U32)?,
            other => {
                return Err(invalid(
                    "input_ids",
                    "dtype u32 or i64",
                    format!("{other:?}"),
                ))
            }
        };
        let max_id = ids.max(0)?.to_scalar::<u32>()?;
        if max_id as usize >= c.vocab_size {
            return Err(invalid(
                "input_ids",
                format!("ids below vocab_size = {}", c.vocab_size),
                format!("id {max_id}"),
            ));
        }
        let mask = match attention_mask.dtype() {
            DType::U8 | DType::U32 | DType::I64 | DType::F32 => {
                attention_mask.to_dtype(DType::F32)?
            }
            other => {
                return Err(invalid(
                    "attention_mask",
                    "dtype u8, u32, i64 or f32",
                    format!("{other:?}"),
                ))
            }
        };
        let h = c.hidden_size;
        let words = self.word.index_select(&ids, 0)?.reshape((b, s, h))?;
        let positions = self.position.narrow(0, 0, s)?;
        let token_type = self.token_type.narrow(0, 0, 1)?;
        let x = words
            .broadcast_add(&positions)?
            .broadcast_add(&token_type)?;
        let mut x = self.emb_norm.forward(&x)?;
        // transformers' extended mask: (1 - mask) · finfo(f32).min, broadcast over heads and queries.
        let additive = ((mask.affine(-1.0, 1.0)? * f64::from(f32::MIN))?).reshape((b, 1, 1, s))?;
        let heads = c.num_attention_heads;
        let d = h / heads;
        let scale = 1.0 / (d as f64).sqrt();
        for layer in &self.layers {
            let split = |t: Tensor| -> Result<Tensor> {
                t.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous()
            };
            let q = split(layer.qkv[0].forward(&x)?)?;
            let k = split(layer.qkv[1].forward(&x)?)?;
            let v = split(layer.qkv[2].forward(&x)?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&additive)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, s, h))?;
            let att = layer
                .attn_norm
                .forward(&(layer.attn_out.forward(&ctx)? + &x)?)?;
            let inter = layer.intermediate.forward(&att)?.gelu_erf()?;
            x = layer
                .out_norm
                .forward(&(layer.output.forward(&inter)? + &att)?)?;
        }
        let cls = x.narrow(1, 0, 1)?.reshape((b, h))?;
        let pooled = match &self.pooler {
            Pooler::Frozen(f) => f.forward(&cls)?,
            Pooler::Trained(p) => p.forward(&cls)?,
        }
        .tanh()?;
        self.classifier.forward(&pooled)
    }

    /// The trainable [`Var`]s: every adapter's (A, B, and the DoRA magnitude), layer by layer, then
    /// the pooler's (when trained) and the classifier's weight and bias.
    pub fn trainable_vars(&self) -> Vec<Var> {
        let mut vars: Vec<Var> = self
            .lora_layers()
            .into_iter()
            .flat_map(|(_, l)| l.trainable_vars())
            .collect();
        if let Pooler::Trained(p) = &self.pooler {
            vars.push(p.weight.clone());
            vars.push(p.bias.clone());
        }
        vars.push(self.classifier.weight.clone());
        vars.push(self.classifier.bias.clone());
        vars
    }

    /// The adapted projections with their peft module paths
    /// (`bert.encoder.layer.0.attention.self.query`), layer by layer.
    pub fn lora_layers(&self) -> Vec<(String, &LoraLinear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, p) in TARGETABLE.iter().zip(&layer.qkv) {
                if let Proj::Lora(l) = p {
                    out.push((projection_path(i, name), &**l));
                }
            }
        }
        out
    }

    /// Where every adapted projection computes its frozen base on the CPU
    /// ([`LoraLinear::set_cpu_base`]): [`CpuBase::Candle`] (candle's matmul) for training at model
    /// sizes, [`CpuBase::Reference`] (the default) for the crate's exact reference.
    pub fn set_cpu_base(&self, base: CpuBase) {
        for (_, layer) in self.lora_layers() {
            layer.set_cpu_base(base);
        }
    }

    /// The classifier's weight `[num_labels, hidden]` and bias `[num_labels]`.
    pub fn classifier(&self) -> (&Var, &Var) {
        (&self.classifier.weight, &self.classifier.bias)
    }

    /// The pooler's weight and bias when they are trained (the checkpoint had none), else `None`.
    pub fn trained_pooler(&self) -> Option<(&Var, &Var)> {
        match &self.pooler {
            Pooler::Trained(p) => Some((&p.weight, &p.bias)),
            Pooler::Frozen(_) => None,
        }
    }

    /// The model's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The adapters' settings.
    pub fn lora_settings(&self) -> &LoraSettings {
        &self.lora
    }

    /// The number of labels (rows of the classifier).
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// The saved modules (peft's `modules_to_save`) this model writes: `classifier` and, when the
    /// pooler is trained, `pooler`.
    pub fn modules_to_save(&self) -> Vec<&'static str> {
        match self.pooler {
            Pooler::Trained(_) => vec!["classifier", "pooler"],
            Pooler::Frozen(_) => vec!["classifier"],
        }
    }

    /// The tensors peft's `save_pretrained` writes for this model, by key: per adapted projection
    /// `base_model.model.<path>.lora_A.weight`, `.lora_B.weight` (and DoRA's
    /// `.lora_magnitude_vector`), then `base_model.model.classifier.weight` and `.bias` (and, when
    /// trained, `base_model.model.bert.pooler.dense.weight` and `.bias`): peft saves a module to
    /// save under its own path, without `modules_to_save.<adapter>`.
    pub fn peft_state_dict(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (path, layer) in self.lora_layers() {
            let Some(ad) = layer.adapter("default") else {
                return Err(invalid(
                    "model",
                    "adapter `default` on every adapted projection",
                    format!("none on `{path}`"),
                ));
            };
            out.insert(
                format!("{PREFIX}{path}.lora_A.weight"),
                ad.lora_a.as_tensor().copy()?,
            );
            out.insert(
                format!("{PREFIX}{path}.lora_B.weight"),
                ad.lora_b.as_tensor().copy()?,
            );
            if let Some(m) = &ad.magnitude {
                out.insert(
                    format!("{PREFIX}{path}.lora_magnitude_vector"),
                    m.as_tensor().copy()?,
                );
            }
        }
        out.insert(
            format!("{PREFIX}classifier.weight"),
            self.classifier.weight.as_tensor().copy()?,
        );
        out.insert(
            format!("{PREFIX}classifier.bias"),
            self.classifier.bias.as_tensor().copy()?,
        );
        if let Pooler::Trained(p) = &self.pooler {
            out.insert(
                format!("{PREFIX}bert.pooler.dense.weight"),
                p.weight.as_tensor().copy()?,
            );
            out.insert(
                format!("{PREFIX}bert.pooler.dense.bias"),
                p.bias.as_tensor().copy()?,
            );
        }
        Ok(out)
    }

    /// peft's `adapter_config.json` for this model (`peft_type: LORA`, `task_type: SEQ_CLS`, the
    /// targets, r, `lora_alpha`, `lora_dropout: 0`, `use_dora`, `modules_to_save`, and
    /// `base_model_name_or_path`).
    pub fn peft_config(&self, base_model_name_or_path: &str) -> Value {
        let mut modules_to_save = self.modules_to_save();
        // peft's SEQ_CLS default adds both of transformers' head names.
        modules_to_save.push("score");
        json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": base_model_name_or_path,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": self.lora.alpha,
            "lora_bias": false,
            "lora_dropout": 0.0,
            "modules_to_save": modules_to_save,
            "peft_type": "LORA",
            "r": self.lora.rank,
            "rank_pattern": {},
            "revision": null,
            "target_modules": self.lora.target_modules,
            "task_type": "SEQ_CLS",
            "use_dora": self.lora.use_dora,
            "use_rslora": false,
        })
    }

    /// Saves the adapter and the head as peft's `save_pretrained` does for
    /// `task_type: SEQ_CLS`: `dir/adapter_config.json` ([`Self::peft_config`]) and
    /// `dir/adapter_model.safetensors` ([`Self::peft_state_dict`], f32), creating `dir`. peft loads
    /// it with `PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base,
    /// num_labels=…), dir)`, and [`PeftAdapter::load`] reads it back.
    pub fn save_peft(&self, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
        let io = |what: &str, e: std::io::Error| {
            candle_core::Error::msg(format!("lora_kernels::candle: cannot write {what}: {e}"))
        };
        std::fs::create_dir_all(dir).map_err(|e| io(&dir.display().to_string(), e))?;
        let config = serde_json::to_string_pretty(&self.peft_config(base_model_name_or_path))
            .map_err(|e| candle_core::Error::msg(e.to_string()))?;
        let config_path = dir.join("adapter_config.json");
        std::fs::write(&config_path, config + "\n")
            .map_err(|e| io(&config_path.display().to_string(), e))?;
        candle_core::safetensors::save(
            &self.peft_state_dict()?,
            dir.join("adapter_model.safetensors"),
        )
    }
}

/// A module to save (`classifier`, `pooler`) from a peft adapter: `<key>.weight` `[out, in]` and
/// `<key>.bias` `[out]`, where `out` is checked when known.
fn saved_head(
    adapter: &PeftAdapter,
    key: &str,
    module: &str,
    out: Option<usize>,
    inp: usize,
    device: &Device,
) -> Result<Head> {
    let get = |param: &str| {
        adapter
            .saved_tensor(&format!("{key}.{param}"))
            .ok_or_else(|| {
                invalid(
                    "adapter",
                    format!("a saved module `{module}` with `{PREFIX}{key}.{param}`"),
                    format!("none in {}", adapter.dir.display()),
                )
            })
    };
    let (w, b) = (get("weight")?, get("bias")?);
    let rows = out.unwrap_or(w.shape.first().copied().unwrap_or(0));
    if w.shape != [rows, inp] || b.shape != [rows] || rows == 0 {
        return Err(invalid(
            "adapter",
            format!("`{key}.weight` [out, {inp}] and `{key}.bias` [out] with out > 0"),
            format!("{:?} and {:?}", w.shape, b.shape),
        ));
    }
    Ok(Head {
        weight: Var::from_tensor(&Tensor::from_slice(&w.values, (rows, inp), device)?)?,
        bias: Var::from_tensor(&Tensor::from_slice(&b.values, rows, device)?)?,
    })
}

/// A [`VarBuilder`] (f32, CPU) over a safetensors file, read into memory; an error names the file.
pub fn load_weights(path: &Path) -> Result<VarBuilder<'static>> {
    let data = std::fs::read(path).map_err(|e| {
        candle_core::Error::msg(format!(
            "lora_kernels::candle: cannot read {}: {e}",
            path.display()
        ))
    })?;
    VarBuilder::from_buffered_safetensors(data, DType::F32, &Device::Cpu).map_err(|e| {
        candle_core::Error::msg(format!(
            "lora_kernels::candle: {}: not a safetensors file: {e}",
            path.display()
        ))
    })
}
