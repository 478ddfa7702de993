//! Loading peft adapters as `save_pretrained` writes them: `adapter_config.json` and
//! `adapter_model.safetensors` (`base_model.model.<module>.lora_A.weight` [r, in],
//! `.lora_B.weight` [out, r], `.lora_magnitude_vector` `[out]` for DoRA), into one adapter per module with
//! peft's scale: `lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`, where `rank_pattern`
//! and `alpha_pattern` override r and alpha per module.
//!
//! Modules listed in `modules_to_save` (a classification head trained beside the adapter, as
//! peft's `task_type: SEQ_CLS` saves `classifier`) are read as they are saved,
//! `base_model.model.<module>.<param>` (peft saves the trained copy under the module's own path),
//! into [`PeftAdapter::saved`].
//!
//! Settings the crate does not implement are errors that name the setting: another `peft_type`,
//! `fan_in_fan_out`, `lora_bias`, and tensors other than A, B, the magnitude and those of the
//! modules to save. Values peft would fail on or read as something else (`"true"` for a flag,
//! r = 8.5, a pattern that is not an object, a scale that overflows f32, a `lora_B` without its
//! `lora_A`) are errors too, naming the file, the key, what was expected and what was there;
//! [`PeftAdapter::from_bytes`] lists them. The same bytes always give the same result.
use crate::error::{file_error, json_value, read_safetensors, Result};
use crate::MAX_RANK;
use safetensors::{Dtype as StDtype, SafeTensors};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One adapted module: A [rank, in_features], B [out_features, rank], the DoRA magnitude `[out]`, its
/// scale. Values are held as f32 (exact for f32, f16 and bf16 files), NaN and infinity included
/// (as peft loads them; a safe merge refuses a non-finite result).
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleAdapter {
    /// The module's path in the model (`layers.0.q_proj`).
    pub name: String,
    /// The rank r.
    pub rank: usize,
    /// Input features (columns of A).
    pub in_features: usize,
    /// Output features (rows of B).
    pub out_features: usize,
    /// The scale s.
    pub scale: f32,
    /// A, row-major [rank, in_features].
    pub lora_a: Vec<f32>,
    /// B, row-major [out_features, rank].
    pub lora_b: Vec<f32>,
    /// The DoRA magnitude m `[out_features]`, when the adapter uses DoRA.
    pub magnitude: Option<Vec<f32>>,
}

/// A tensor of a module to save (`classifier.weight`), as f32 (exact for f32, f16 and bf16 files).
#[derive(Clone, Debug, PartialEq)]
pub struct SavedTensor {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: Vec<f32>,
}

/// A peft LoRA or DoRA adapter folder, loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct PeftAdapter {
    /// The folder it came from.
    pub dir: PathBuf,
    /// `use_dora`.
    pub use_dora: bool,
    /// `use_rslora`.
    pub use_rslora: bool,
    /// The adapted modules by path, sorted.
    pub modules: BTreeMap<String, ModuleAdapter>,
    /// `modules_to_save` as the config lists it (empty when null or absent).
    pub modules_to_save: Vec<String>,
    /// The tensors of the modules to save, by key without `base_model.model.`
    /// (`classifier.weight`), sorted.
    pub saved: BTreeMap<String, SavedTensor>,
}

const PREFIX: &str = "base_model.model.";
const CONFIG: &str = "adapter_config.json";
const WEIGHTS: &str = "adapter_model.safetensors";

/// The settings of `adapter_config.json` the crate reads, checked.
struct Config {
    r: usize,
    alpha: serde_json::Number,
    use_dora: bool,
    use_rslora: bool,
    /// `rank_pattern` (module key → r), sorted by key.
    rank_pattern: BTreeMap<String, usize>,
    /// `alpha_pattern` (module key → alpha), sorted by key.
    alpha_pattern: BTreeMap<String, serde_json::Number>,
    /// `modules_to_save`, in the config's order.
    modules_to_save: Vec<String>,
}

/// `items` as `` `a`, `b` `` (at most 8, then how many more), in their (sorted) order.
fn key_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.into_iter().collect();
    let mut text = items
        .iter()
        .take(8)
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > 8 {
        text.push_str(&format!(" and {} more", items.len() - 8));
    }
    text
}

impl Config {
    /// Reads the settings as peft's `LoraConfig` would use them, refusing what peft would fail on or
    /// read as something else: `r` a positive integer up to [`MAX_RANK`], `lora_alpha` a number,
    /// the flags JSON booleans (null or absent = false), the patterns objects (null or absent =
    /// none).
    fn parse(config: &Value, path: &Path) -> Result<Self> {
        let err = |key: &str, what: String| file_error(path.display(), format!("`{key}`: {what}"));
        let got = |key: &str, expected: &str, v: &Value| {
            err(key, format!("expected {expected}, got {}", json_value(v)))
        };
        let Some(map) = config.as_object() else {
            return Err(file_error(
                path.display(),
                format!(
                    "expected a JSON object (peft's LoraConfig), got {}",
                    json_value(config)
                ),
            ));
        };
        let setting = |key: &str| map.get(key).filter(|v| !v.is_null());
        let flag = |key: &str| -> Result<bool> {
            match setting(key) {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(got(key, "true or false (a JSON boolean)", v)),
            }
        };
        let rank = |key: &str, v: &Value| -> Result<usize> {
            v.as_u64()
                .and_then(|r| usize::try_from(r).ok())
                .filter(|r| (1..=MAX_RANK).contains(r))
                .ok_or_else(|| got(key, &format!("a positive integer up to {MAX_RANK}"), v))
        };
        let alpha = |key: &str, v: &Value| -> Result<serde_json::Number> {
            match v {
                Value::Number(n) if n.as_f64().is_some_and(f64::is_finite) => Ok(n.clone()),
                _ => Err(got(key, "a finite number", v)),
            }
        };
        // A pattern's entries in key order (serde_json's map is sorted); none when null or absent.
        let pattern = |key: &str| -> Result<Vec<(&String, &Value)>> {
            match setting(key) {
                None => Ok(Vec::new()),
                Some(Value::Object(m)) => Ok(m.iter().collect()),
                Some(v) => Err(got(key, "an object (module name → value)", v)),
            }
        };

        match setting("peft_type") {
            Some(Value::String(t)) if t == "LORA" => {}
            Some(other) => return Err(got("peft_type", "\"LORA\"", other)),
            None => return Err(err("peft_type", "missing".into())),
        }
        if flag("fan_in_fan_out")? {
            return Err(err(
                "fan_in_fan_out",
                "true is not supported (Conv1D-style weights)".into(),
            ));
        }
        if flag("lora_bias")? {
            return Err(err(
                "lora_bias",
                "true is not supported (a bias on lora_B)".into(),
            ));
        }
        let r = rank(
            "r",
            setting("r").ok_or_else(|| err("r", "missing (a positive integer)".into()))?,
        )?;
        let lora_alpha = alpha(
            "lora_alpha",
            setting("lora_alpha").ok_or_else(|| err("lora_alpha", "missing (a number)".into()))?,
        )?;
        let mut rank_pattern = BTreeMap::new();
        for (k, v) in pattern("rank_pattern")? {
            rank_pattern.insert(k.clone(), rank(&format!("rank_pattern.{k}"), v)?);
        }
        let mut alpha_pattern = BTreeMap::new();
        for (k, v) in pattern("alpha_pattern")? {
            alpha_pattern.insert(k.clone(), alpha(&format!("alpha_pattern.{k}"), v)?);
        }
        let modules_to_save = match setting("modules_to_save") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) if !s.is_empty() => Ok(s.clone()),
                    _ => Err(got(
                        "modules_to_save",
                        "a list of module names (non-empty strings)",
                        v,
                    )),
                })
                .collect::<Result<_>>()?,
            Some(v) => return Err(got("modules_to_save", "a list of module names or null", v)),
        };
        Ok(Config {
            modules_to_save,
            r,
            alpha: lora_alpha,
            use_dora: flag("use_dora")?,
            use_rslora: flag("use_rslora")?,
            rank_pattern,
            alpha_pattern,
        })
    }
}

/// The value of a `rank_pattern` / `alpha_pattern` map for `module`: peft matches a key against the
/// module's full path or a dotted suffix of it; the longest matching key wins.
fn pattern_value<'a, T>(patterns: &'a BTreeMap<String, T>, module: &str) -> Option<&'a T> {
    patterns
        .iter()
        .filter(|(key, _)| module == key.as_str() || module.ends_with(&format!(".{key}")))
        .max_by_key(|(key, _)| key.len())
        .map(|(_, v)| v)
}

/// Whether tensor `key` (`classifier.weight`, `bert.pooler.dense.bias`, without `base_model.model.`)
/// is a parameter of a module to save: a module path it lies under (the key up to a dot, the whole
/// key excluded) is a listed name or ends with `.<name>` (peft matches `modules_to_save` against a
/// module path's end, and saves the module's own state dict under that path).
fn is_saved_module(modules_to_save: &[String], key: &str) -> bool {
    modules_to_save
        .iter()
        .any(|m| key.starts_with(&format!("{m}.")) || key.contains(&format!(".{m}.")))
}

fn tensor_f32(st: &SafeTensors<'_>, name: &str, path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let t = st
        .tensor(name)
        .map_err(|_| file_error(path.display(), format!("missing tensor `{name}`")))?;
    let d = t.data();
    let values: Vec<f32> = match t.dtype() {
        StDtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        StDtype::F16 => d
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        StDtype::BF16 => d
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(file_error(
                path.display(),
                format!("tensor `{name}`: expected F32, F16 or BF16, got {other:?}"),
            ))
        }
    };
    Ok((t.shape().to_vec(), values))
}

impl PeftAdapter {
    /// Loads `dir/adapter_config.json` and `dir/adapter_model.safetensors` (see
    /// [`PeftAdapter::from_bytes`]).
    pub fn load(dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG);
        let config =
            std::fs::read(&config_path).map_err(|e| file_error(config_path.display(), e))?;
        let weights_path = dir.join(WEIGHTS);
        let weights =
            std::fs::read(&weights_path).map_err(|e| file_error(weights_path.display(), e))?;
        Self::from_bytes(&config, &weights, dir)
    }

    /// Reads an adapter from the bytes of its `adapter_config.json` and `adapter_model.safetensors`;
    /// `dir` is the folder they came from (errors name `dir/adapter_config.json` or
    /// `dir/adapter_model.safetensors`). The same bytes always give the same result. Errors, each
    /// naming the file, the key, what was expected and what the file holds: a config that is not a
    /// JSON object; a `peft_type` other than `"LORA"`; flags (`use_dora`, `use_rslora`,
    /// `fan_in_fan_out`, `lora_bias`) that are not JSON booleans; `r` or a `rank_pattern` value that
    /// is not an integer from 1 to [`MAX_RANK`]; `lora_alpha` or an `alpha_pattern` value that is
    /// not a number; patterns that are not objects; a scale that is not finite (or rounds to 0) in
    /// f32; `modules_to_save` that is not a list of non-empty strings (or null); tensors other
    /// than `lora_A.weight`, `lora_B.weight`, `lora_magnitude_vector` and the parameters of the
    /// modules to save under `base_model.model.` (all listed, sorted); a `lora_B` or magnitude
    /// without its `lora_A`; a magnitude when `use_dora` is false (or none when it is true); and
    /// shapes that disagree. NaN and infinite weights load as they are (peft loads them): a safe
    /// merge refuses a non-finite result, and the forwards propagate them.
    pub fn from_bytes(config_json: &[u8], safetensors: &[u8], dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG);
        let weights_path = dir.join(WEIGHTS);
        let config: Value = serde_json::from_slice(config_json)
            .map_err(|e| file_error(config_path.display(), format!("not valid JSON: {e}")))?;
        let config = Config::parse(&config, &config_path)?;

        let st = read_safetensors(safetensors, weights_path.display())?;
        let weights_error = |message: String| file_error(weights_path.display(), message);
        let mut keys: Vec<&str> = st.names();
        keys.sort_unstable();
        let (mut lora_a, mut lora_b, mut magnitudes) = (Vec::new(), Vec::new(), Vec::new());
        let mut saved_keys = Vec::new();
        let (mut no_prefix, mut unsupported) = (Vec::new(), Vec::new());
        for &key in &keys {
            let Some(rest) = key.strip_prefix(PREFIX) else {
                no_prefix.push(key);
                continue;
            };
            if let Some(module) = rest.strip_suffix(".lora_A.weight") {
                lora_a.push(module);
            } else if let Some(module) = rest.strip_suffix(".lora_B.weight") {
                lora_b.push(module);
            } else if let Some(module) = rest.strip_suffix(".lora_magnitude_vector") {
                magnitudes.push(module);
            } else if is_saved_module(&config.modules_to_save, rest) {
                saved_keys.push(rest);
            } else {
                unsupported.push(key);
            }
        }
        if !no_prefix.is_empty() {
            return Err(weights_error(format!(
                "unexpected tensor{} {} (no `{PREFIX}` prefix)",
                if no_prefix.len() > 1 { "s" } else { "" },
                key_list(no_prefix)
            )));
        }
        if !unsupported.is_empty() {
            return Err(weights_error(format!(
                "unsupported tensor{} {} (expected only `<module>.lora_A.weight`, \
                 `.lora_B.weight` and `.lora_magnitude_vector`, and `<module>.<param>` of the \
                 modules in `modules_to_save`)",
                if unsupported.len() > 1 { "s" } else { "" },
                key_list(unsupported)
            )));
        }
        if lora_a.is_empty() {
            return Err(weights_error("no `lora_A.weight` tensors".into()));
        }
        // Sorted by module name (the keys' order differs where a path extends another: `m.a.x`
        // sorts before `m` inside `m.a.x.lora_A.weight` and `m.lora_A.weight`).
        for modules in [&mut lora_a, &mut lora_b, &mut magnitudes] {
            modules.sort_unstable();
        }
        let orphans = |tensors: &[&str], suffix: &str| -> Vec<String> {
            tensors
                .iter()
                .filter(|m| lora_a.binary_search(m).is_err())
                .map(|m| format!("{PREFIX}{m}{suffix}"))
                .collect()
        };
        for (tensors, suffix) in [
            (&lora_b, ".lora_B.weight"),
            (&magnitudes, ".lora_magnitude_vector"),
        ] {
            let orphans = orphans(tensors, suffix);
            if !orphans.is_empty() {
                return Err(weights_error(format!(
                    "{} without its `lora_A.weight`",
                    key_list(orphans.iter().map(String::as_str))
                )));
            }
        }
        if !config.use_dora && !magnitudes.is_empty() {
            let keys: Vec<String> = magnitudes
                .iter()
                .map(|m| format!("{PREFIX}{m}.lora_magnitude_vector"))
                .collect();
            return Err(weights_error(format!(
                "{}: a DoRA magnitude, but `use_dora` in {CONFIG} is false or absent",
                key_list(keys.iter().map(String::as_str))
            )));
        }

        let mut modules = BTreeMap::new();
        for name in lora_a {
            let (a_shape, lora_a) =
                tensor_f32(&st, &format!("{PREFIX}{name}.lora_A.weight"), &weights_path)?;
            let (b_shape, lora_b) =
                tensor_f32(&st, &format!("{PREFIX}{name}.lora_B.weight"), &weights_path)?;
            let bad_shape = |what: String| weights_error(format!("module `{name}`: {what}"));
            if a_shape.len() != 2 || b_shape.len() != 2 {
                return Err(bad_shape(format!(
                    "lora_A {a_shape:?} and lora_B {b_shape:?} must be matrices"
                )));
            }
            let (rank, in_features, out_features) = (a_shape[0], a_shape[1], b_shape[0]);
            if b_shape[1] != rank {
                return Err(bad_shape(format!(
                    "lora_B is {b_shape:?}, expected [out, {rank}] (rank of lora_A {a_shape:?})"
                )));
            }
            if in_features == 0 || out_features == 0 {
                return Err(bad_shape(format!(
                    "lora_A {a_shape:?} and lora_B {b_shape:?}: expected no zero dimension"
                )));
            }
            let module_r = pattern_value(&config.rank_pattern, name)
                .copied()
                .unwrap_or(config.r);
            if module_r != rank {
                return Err(bad_shape(format!(
                    "rank {rank} in the weights, {module_r} in the config"
                )));
            }
            let module_alpha = pattern_value(&config.alpha_pattern, name).unwrap_or(&config.alpha);
            let alpha = module_alpha.as_f64().unwrap_or(f64::NAN);
            let scale = if config.use_rslora {
                alpha / (module_r as f64).sqrt()
            } else {
                alpha / module_r as f64
            };
            let scale32 = scale as f32;
            if !scale32.is_finite() || (scale32 == 0.0 && alpha != 0.0) {
                return Err(file_error(
                    config_path.display(),
                    format!(
                        "module `{name}`: lora_alpha {module_alpha} over {} gives the scale \
                         {scale:e}: expected a finite f32 that is 0 only for alpha 0",
                        if config.use_rslora {
                            format!("sqrt(r = {module_r})")
                        } else {
                            format!("r = {module_r}")
                        }
                    ),
                ));
            }
            let magnitude = if config.use_dora {
                let (m_shape, m) = tensor_f32(
                    &st,
                    &format!("{PREFIX}{name}.lora_magnitude_vector"),
                    &weights_path,
                )?;
                if m_shape != [out_features] {
                    return Err(bad_shape(format!(
                        "lora_magnitude_vector is {m_shape:?}, expected [{out_features}]"
                    )));
                }
                Some(m)
            } else {
                None
            };
            modules.insert(
                name.to_string(),
                ModuleAdapter {
                    name: name.to_string(),
                    rank,
                    in_features,
                    out_features,
                    scale: scale32,
                    lora_a,
                    lora_b,
                    magnitude,
                },
            );
        }
        let mut saved = BTreeMap::new();
        for key in saved_keys {
            let (shape, values) = tensor_f32(&st, &format!("{PREFIX}{key}"), &weights_path)?;
            saved.insert(key.to_string(), SavedTensor { shape, values });
        }
        Ok(PeftAdapter {
            dir: dir.to_path_buf(),
            use_dora: config.use_dora,
            use_rslora: config.use_rslora,
            modules,
            modules_to_save: config.modules_to_save,
            saved,
        })
    }

    /// The adapter of module `name` (`layers.0.q_proj`).
    pub fn module(&self, name: &str) -> Option<&ModuleAdapter> {
        self.modules.get(name)
    }

    /// The saved tensor `key` of a module to save (`classifier.weight`).
    pub fn saved_tensor(&self, key: &str) -> Option<&SavedTensor> {
        self.saved.get(key)
    }
}
