//! Golden cases: outputs of the real peft and bitsandbytes, stored as safetensors files
//! (`tests/data/golden/`, see its README), and the comparators the tests hold results to
//! ([`rel_error`], [`tolerance`]).
//!
//! Test support, not part of the crate's API: compiled only with the `golden` cargo feature (off by
//! default), which the crate's own tests, benches and the quickstart turn on through a self
//! dev-dependency. Its items may change in any release.
mod model;
pub use model::{AdapterModel, ModelLayers};

use crate::error::{file_error, Result};
use crate::{DType, Element};
use safetensors::{Dtype as StDtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The default folder of golden cases, or `LORA_KERNELS_GOLDEN_DIR` when set.
pub fn golden_dir() -> PathBuf {
    std::env::var_os("LORA_KERNELS_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden"))
}

/// Every case file in `dir`: `*.safetensors` at the top and `*/expected.safetensors` one level down,
/// sorted by name.
pub fn discover(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| file_error(dir.display(), e))?;
    let mut cases = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| file_error(dir.display(), e))?.path();
        if path.is_dir() {
            let expected = path.join("expected.safetensors");
            if expected.is_file() {
                cases.push(expected);
            }
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            cases.push(path);
        }
    }
    cases.sort();
    Ok(cases)
}

/// One tensor of a case: its dtype, shape and raw little-endian bytes.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// The safetensors dtype.
    pub dtype: StDtype,
    /// The shape.
    pub shape: Vec<usize>,
    /// The raw bytes.
    pub data: Vec<u8>,
}

/// One golden case: its name, kind, metadata and tensors.
#[derive(Clone, Debug)]
pub struct GoldenCase {
    /// The case's name (file stem, or folder name for `adapter_dir` cases).
    pub name: String,
    /// The file it came from.
    pub path: PathBuf,
    /// The `kind` metadata (`lora`, `dora`, `quant4`, ...).
    pub kind: String,
    /// All metadata strings.
    pub metadata: HashMap<String, String>,
    tensors: HashMap<String, Tensor>,
}

fn st_dtype_of(dtype: DType) -> StDtype {
    match dtype {
        DType::F32 => StDtype::F32,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
    }
}

impl GoldenCase {
    /// Reads a case file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| file_error(path.display(), e))?;
        let (_, meta) =
            SafeTensors::read_metadata(&bytes).map_err(|e| file_error(path.display(), e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| file_error(path.display(), e))?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            tensors.insert(
                name,
                Tensor {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    data: view.data().to_vec(),
                },
            );
        }
        let stem = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let name = if stem == "expected" {
            path.parent()
                .and_then(|p| p.file_name())
                .map_or(stem, |n| n.to_string_lossy().to_string())
        } else {
            stem
        };
        let kind = metadata
            .get("kind")
            .cloned()
            .ok_or_else(|| file_error(path.display(), "no `kind` in the metadata"))?;
        Ok(GoldenCase {
            name,
            path: path.to_path_buf(),
            kind,
            metadata,
            tensors,
        })
    }

    /// Whether the case has tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Tensor `name`, or an error naming the case and the tensor.
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| file_error(self.path.display(), format!("no tensor `{name}`")))
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.tensor(name)?.shape)
    }

    /// Tensor `name` as elements of `T`, which must be its stored dtype.
    pub fn values<T: Element>(&self, name: &str) -> Result<Vec<T>> {
        let t = self.tensor(name)?;
        if t.dtype != st_dtype_of(T::DTYPE) {
            return Err(file_error(
                self.path.display(),
                format!("tensor `{name}` is {:?}, not {}", t.dtype, T::DTYPE),
            ));
        }
        let size = T::DTYPE.size();
        Ok(t.data.chunks_exact(size).map(T::from_le_bytes).collect())
    }

    /// Tensor `name` widened to f64 (f32, f16, bf16, int8, uint8, int32 tensors).
    pub fn values_f64(&self, name: &str) -> Result<Vec<f64>> {
        let t = self.tensor(name)?;
        let d = &t.data;
        Ok(match t.dtype {
            StDtype::F32 => d
                .chunks_exact(4)
                .map(|b| <f32 as Element>::from_le_bytes(b).to_f64())
                .collect(),
            StDtype::F16 => d
                .chunks_exact(2)
                .map(|b| <half::f16 as Element>::from_le_bytes(b).to_f64())
                .collect(),
            StDtype::BF16 => d
                .chunks_exact(2)
                .map(|b| <half::bf16 as Element>::from_le_bytes(b).to_f64())
                .collect(),
            StDtype::I8 => d.iter().map(|&b| b as i8 as f64).collect(),
            StDtype::U8 => d.iter().map(|&b| b as f64).collect(),
            StDtype::I32 => d
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect(),
            other => {
                return Err(file_error(
                    self.path.display(),
                    format!("tensor `{name}` has unsupported dtype {other:?}"),
                ))
            }
        })
    }

    /// Metadata `key` as a string.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| file_error(self.path.display(), format!("no `{key}` in the metadata")))
    }

    /// The `dtype` metadata: the dtype peft/bitsandbytes ran the layer in.
    pub fn dtype(&self) -> Result<DType> {
        let s = self.meta("dtype")?;
        DType::from_name(s)
            .ok_or_else(|| file_error(self.path.display(), format!("unknown dtype `{s}`")))
    }

    /// The `scaling` metadata: the LoRA scale s.
    pub fn scaling(&self) -> Result<f64> {
        let s = self.meta("scaling")?;
        s.trim().parse().map_err(|_| {
            file_error(
                self.path.display(),
                format!("`scaling` is not a number: {s}"),
            )
        })
    }
}

/// The relative Frobenius error ([`rel_error`]) within which a result in `dtype` matches its
/// reference (the golden cases' tolerances: the libraries accumulate in their own order).
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        DType::BF16 => 1e-2,
    }
}

/// Relative Frobenius error ‖out − reference‖ / ‖reference‖ (absolute when the reference is zero).
pub fn rel_error(out: &[f64], reference: &[f64]) -> f64 {
    let diff: f64 = out
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    let norm: f64 = reference.iter().map(|b| b * b).sum();
    if out.len() != reference.len() || out.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}
