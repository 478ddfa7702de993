//! The small model of the `adapter_dir` golden cases (`tests/data/golden/README.md`): per layer
//! `q_proj`, `v_proj` (d → d), `up_proj` (d → f) and `down_proj` (f → d), with
//! `layer(x) = down_proj(relu(up_proj(q_proj(x) + v_proj(x))))`, a peft adapter on every module, and
//! the base weights, each module's input and output, and the model's input and output as peft
//! computed them. The quickstart and the golden tests run it through the crate's layers.
use super::GoldenCase;
use crate::error::{invalid, Error, Result};
use crate::layer::{Layer, LayerAdapter, ReferenceLayer};
use crate::peft::{ModuleAdapter, PeftAdapter};
use crate::Gpu;
use std::collections::BTreeMap;
use std::path::Path;

/// An adapter folder with its `expected.safetensors`: the adapter as peft saved it and the model's
/// base weights and reference activations.
#[derive(Debug)]
pub struct AdapterModel {
    /// The adapter, loaded from `adapter_config.json` and `adapter_model.safetensors`.
    pub adapter: PeftAdapter,
    /// `expected.safetensors`: base weights (`base.<module>.weight` / `.bias`), each module's
    /// `<module>.input` / `.output`, and the model's `x` and `output`.
    pub expected: GoldenCase,
    /// Number of layers (one `q_proj` each).
    pub layers: usize,
}

impl AdapterModel {
    /// Loads `dir` (an adapter folder holding `expected.safetensors`). A module the model needs but the
    /// adapter lacks is an error naming it.
    pub fn load(dir: &Path) -> Result<Self> {
        let adapter = PeftAdapter::load(dir)?;
        let expected = GoldenCase::load(&dir.join("expected.safetensors"))?;
        let layers = adapter
            .modules
            .keys()
            .filter(|name| name.ends_with(".q_proj"))
            .count();
        let model = AdapterModel {
            adapter,
            expected,
            layers,
        };
        for name in model.module_names() {
            model.module(&name)?;
        }
        Ok(model)
    }

    /// The modules in the order the model runs them.
    pub fn module_names(&self) -> Vec<String> {
        (0..self.layers)
            .flat_map(|l| {
                ["q_proj", "v_proj", "up_proj", "down_proj"].map(|m| format!("layers.{l}.{m}"))
            })
            .collect()
    }

    /// The adapter of module `name`.
    pub fn module(&self, name: &str) -> Result<&ModuleAdapter> {
        self.adapter.module(name).ok_or_else(|| Error::File {
            path: self.adapter.dir.display().to_string(),
            message: format!("no adapter for module `{name}`, which the model needs"),
        })
    }

    /// Module `name`'s base weight `[out, in]` and bias (if any), as saved.
    pub fn base_weight(&self, name: &str) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let weight = self.expected.values(&format!("base.{name}.weight"))?;
        let bias_key = format!("base.{name}.bias");
        let bias = if self.expected.has(&bias_key) {
            Some(self.expected.values(&bias_key)?)
        } else {
            None
        };
        Ok((weight, bias))
    }

    /// Module `name`'s adapter in the form the layers take.
    pub fn layer_adapter(&self, name: &str) -> Result<LayerAdapter<f32>> {
        let m = self.module(name)?;
        Ok(LayerAdapter {
            lora_a: m.lora_a.clone(),
            lora_b: m.lora_b.clone(),
            rank: m.rank,
            scale: m.scale,
            magnitude: m.magnitude.clone(),
        })
    }

    /// The model forward for x `[m, d]`; `module(name, input)` runs one module.
    pub fn forward(
        &self,
        x: &[f32],
        mut module: impl FnMut(&str, &[f32]) -> Result<Vec<f32>>,
    ) -> Result<Vec<f32>> {
        let mut h = x.to_vec();
        for layer in 0..self.layers {
            let q = module(&format!("layers.{layer}.q_proj"), &h)?;
            let v = module(&format!("layers.{layer}.v_proj"), &h)?;
            let qv: Vec<f32> = q.iter().zip(&v).map(|(a, b)| a + b).collect();
            let up: Vec<f32> = module(&format!("layers.{layer}.up_proj"), &qv)?
                .into_iter()
                .map(|u| u.max(0.0))
                .collect();
            h = module(&format!("layers.{layer}.down_proj"), &up)?;
        }
        Ok(h)
    }
}

/// One module as a layer: the GPU [`Layer`] or the CPU [`ReferenceLayer`].
#[derive(Debug)]
enum ModuleLayer {
    Cpu(ReferenceLayer<f32>),
    Gpu(Box<Layer<f32>>),
}

/// Every module of an [`AdapterModel`] as a layer with its adapter active (named `"default"`, as
/// peft names it): the GPU [`Layer`] when a GPU is given, the CPU [`ReferenceLayer`] otherwise.
#[derive(Debug)]
pub struct ModelLayers {
    gpu: Option<Gpu>,
    layers: BTreeMap<String, ModuleLayer>,
}

impl ModelLayers {
    /// Builds the layers of every module of `model` (copying weights to the GPU when there is one).
    pub fn new(model: &AdapterModel, gpu: Option<&Gpu>) -> Result<Self> {
        let mut layers = BTreeMap::new();
        for name in model.module_names() {
            let m = model.module(&name)?;
            let (weight, bias) = model.base_weight(&name)?;
            let adapter = model.layer_adapter(&name)?;
            let (k, n) = (m.in_features, m.out_features);
            let layer = match gpu {
                Some(gpu) => {
                    let mut l = Layer::dense(gpu, &weight, bias.as_deref(), k, n)?;
                    l.add_adapter("default", &adapter)?;
                    l.set_active(&["default"])?;
                    ModuleLayer::Gpu(Box::new(l))
                }
                None => {
                    let mut l = ReferenceLayer::new(weight, bias, k, n)?;
                    l.add_adapter("default", adapter)?;
                    l.set_active(&["default"])?;
                    ModuleLayer::Cpu(l)
                }
            };
            layers.insert(name, layer);
        }
        Ok(ModelLayers {
            gpu: gpu.cloned(),
            layers,
        })
    }

    /// Whether the layers run on the GPU.
    pub fn on_gpu(&self) -> bool {
        self.gpu.is_some()
    }

    /// Module `name`'s forward on host data: x `[m, in]` → `[m, out]` (on the GPU: copy in, run,
    /// copy out, which synchronises).
    pub fn module_forward(&mut self, name: &str, x: &[f32]) -> Result<Vec<f32>> {
        let layer = self
            .layers
            .get_mut(name)
            .ok_or_else(|| invalid("name", "a module of the model", name))?;
        match layer {
            ModuleLayer::Cpu(l) => {
                let m = x.len() / l.in_features();
                l.forward(x, m, None)
            }
            ModuleLayer::Gpu(l) => {
                let gpu = self.gpu.as_ref().expect("GPU layers have a GPU");
                let m = x.len() / l.in_features();
                let s = gpu.stream();
                let xd = s.clone_htod(x)?;
                let mut y = s.alloc_zeros::<f32>(m * l.out_features())?;
                l.forward(&xd, m, None, &mut y)?;
                Ok(s.clone_dtoh(&y)?)
            }
        }
    }

    /// Merges every module's adapter into its base weight (`safe`: peft's `safe_merge`).
    pub fn merge(&mut self, safe: bool) -> Result<()> {
        for layer in self.layers.values_mut() {
            match layer {
                ModuleLayer::Cpu(l) => l.merge(None, safe)?,
                ModuleLayer::Gpu(l) => l.merge(None, safe)?,
            }
        }
        Ok(())
    }

    /// Unmerges every module's adapter.
    pub fn unmerge(&mut self) -> Result<()> {
        for layer in self.layers.values_mut() {
            match layer {
                ModuleLayer::Cpu(l) => l.unmerge()?,
                ModuleLayer::Gpu(l) => l.unmerge()?,
            }
        }
        Ok(())
    }
}
