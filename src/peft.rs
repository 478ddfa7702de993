//! Loading peft adapters as `save_pretrained` writes them: `adapter_config.json` and
//! `adapter_model.safetensors` (`base_model.model.<module>.lora_A.weight` [r, in],
//! `.lora_B.weight` [out, r], `.lora_magnitude_vector` `[out]` for DoRA), into one adapter per module with
//! peft's scale: `lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`, where `rank_pattern`
//! and `alpha_pattern` override r and alpha per module.
//!
//! Settings the crate does not implement are errors that name the setting: another `peft_type`,
//! `fan_in_fan_out`, `lora_bias`, and tensors other than A, B and the magnitude.
use crate::error::{file_error, Result};
use safetensors::{Dtype as StDtype, SafeTensors};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One adapted module: A [rank, in_features], B [out_features, rank], the DoRA magnitude `[out]`, its
/// scale. Values are held as f32 (exact for f32, f16 and bf16 files).
#[derive(Clone, Debug)]
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

/// A peft LoRA or DoRA adapter folder, loaded.
#[derive(Clone, Debug)]
pub struct PeftAdapter {
    /// The folder it came from.
    pub dir: PathBuf,
    /// `use_dora`.
    pub use_dora: bool,
    /// `use_rslora`.
    pub use_rslora: bool,
    /// The adapted modules by path, sorted.
    pub modules: BTreeMap<String, ModuleAdapter>,
}

const PREFIX: &str = "base_model.model.";

/// The value of `key` in a `rank_pattern` / `alpha_pattern` map for `module`: peft matches a key
/// against the module's full path or a dotted suffix of it.
fn pattern_value(patterns: Option<&Value>, module: &str) -> Option<f64> {
    let map = patterns?.as_object()?;
    map.iter()
        .filter(|(key, _)| module == key.as_str() || module.ends_with(&format!(".{key}")))
        .max_by_key(|(key, _)| key.len())
        .and_then(|(_, v)| v.as_f64())
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
    /// Loads `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn load(dir: &Path) -> Result<Self> {
        let config_path = dir.join("adapter_config.json");
        let config_text = std::fs::read_to_string(&config_path)
            .map_err(|e| file_error(config_path.display(), e))?;
        let config: Value = serde_json::from_str(&config_text)
            .map_err(|e| file_error(config_path.display(), format!("not valid JSON: {e}")))?;
        let setting = |key: &str| config.get(key).filter(|v| !v.is_null());
        let unsupported =
            |key: &str, what: &str| file_error(config_path.display(), format!("`{key}`: {what}"));

        match setting("peft_type").and_then(Value::as_str) {
            Some("LORA") => {}
            Some(other) => {
                return Err(unsupported(
                    "peft_type",
                    &format!("expected \"LORA\", got {other:?}"),
                ))
            }
            None => return Err(unsupported("peft_type", "missing")),
        }
        if setting("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported(
                "fan_in_fan_out",
                "true is not supported (Conv1D-style weights)",
            ));
        }
        if setting("lora_bias").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported(
                "lora_bias",
                "true is not supported (a bias on lora_B)",
            ));
        }
        let r = setting("r")
            .and_then(Value::as_f64)
            .ok_or_else(|| unsupported("r", "missing or not a number"))?;
        let alpha = setting("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| unsupported("lora_alpha", "missing or not a number"))?;
        let use_dora = setting("use_dora")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let use_rslora = setting("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false);

        let weights_path = dir.join("adapter_model.safetensors");
        let bytes =
            std::fs::read(&weights_path).map_err(|e| file_error(weights_path.display(), e))?;
        let st =
            SafeTensors::deserialize(&bytes).map_err(|e| file_error(weights_path.display(), e))?;

        let mut names: Vec<String> = Vec::new();
        for key in st.names() {
            let Some(rest) = key.strip_prefix(PREFIX) else {
                return Err(file_error(
                    weights_path.display(),
                    format!("unexpected tensor `{key}` (no `{PREFIX}` prefix)"),
                ));
            };
            if let Some(module) = rest.strip_suffix(".lora_A.weight") {
                names.push(module.to_string());
            } else if rest.ends_with(".lora_B.weight") || rest.ends_with(".lora_magnitude_vector") {
                // Read with their module's lora_A.
            } else {
                return Err(file_error(
                    weights_path.display(),
                    format!("unsupported tensor `{key}`"),
                ));
            }
        }
        if names.is_empty() {
            return Err(file_error(
                weights_path.display(),
                "no `lora_A.weight` tensors",
            ));
        }

        let mut modules = BTreeMap::new();
        for name in names {
            let (a_shape, lora_a) =
                tensor_f32(&st, &format!("{PREFIX}{name}.lora_A.weight"), &weights_path)?;
            let (b_shape, lora_b) =
                tensor_f32(&st, &format!("{PREFIX}{name}.lora_B.weight"), &weights_path)?;
            let bad_shape = |what: String| {
                file_error(weights_path.display(), format!("module `{name}`: {what}"))
            };
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
            let module_r = pattern_value(setting("rank_pattern"), &name).unwrap_or(r);
            if module_r as usize != rank {
                return Err(bad_shape(format!(
                    "rank {rank} in the weights, {module_r} in the config"
                )));
            }
            let module_alpha = pattern_value(setting("alpha_pattern"), &name).unwrap_or(alpha);
            let scale = if use_rslora {
                module_alpha / module_r.sqrt()
            } else {
                module_alpha / module_r
            };
            let magnitude = if use_dora {
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
                name.clone(),
                ModuleAdapter {
                    name,
                    rank,
                    in_features,
                    out_features,
                    scale: scale as f32,
                    lora_a,
                    lora_b,
                    magnitude,
                },
            );
        }
        Ok(PeftAdapter {
            dir: dir.to_path_buf(),
            use_dora,
            use_rslora,
            modules,
        })
    }

    /// The adapter of module `name` (`layers.0.q_proj`).
    pub fn module(&self, name: &str) -> Option<&ModuleAdapter> {
        self.modules.get(name)
    }
}
