//! A layer that follows peft's `Linear.forward` states exactly (`../shared/docs/math.md` §1): a dense
//! base weight, named adapters (LoRA or DoRA), the active ones, the merged ones, and a disabled flag.
//! This is the CPU reference of that state machine, built on the crate's CPU references; a device
//! layer is to follow it.
//!
//! Forward, in peft's order:
//! 1. adapters disabled: unmerge first if anything is merged, then the base alone;
//! 2. per-row adapter names: the mixed batch (an error if any adapter is merged or a named one is
//!    DoRA, as in peft);
//! 3. something merged: the base alone (the merged weight carries the adapters);
//! 4. otherwise the base plus every active adapter in order; a DoRA adapter takes the running result
//!    as its base (peft's behaviour with several active adapters).
use crate::dora::reference as dora;
use crate::error::{invalid, Result};
use crate::lora::reference as lora;
use crate::lora::{validate_adapter, validate_dims, AdapterLens, LoraAdapter, LoraShape};
use crate::Element;
use std::collections::BTreeMap;

/// One named adapter of a layer: A `[rank, k]`, B `[n, rank]`, its scale, and the DoRA magnitude `[n]` when
/// it is a DoRA adapter.
#[derive(Clone, Debug)]
pub struct LayerAdapter<T> {
    /// A, row-major `[rank, k]`.
    pub lora_a: Vec<T>,
    /// B, row-major `[n, rank]`.
    pub lora_b: Vec<T>,
    /// The rank r.
    pub rank: usize,
    /// The scale s.
    pub scale: f32,
    /// The DoRA magnitude m `[n]`; `None` for plain LoRA.
    pub magnitude: Option<Vec<T>>,
}

impl<T> LayerAdapter<T> {
    fn view(&self) -> LoraAdapter<'_, [T]> {
        LoraAdapter::new(&self.lora_a[..], &self.lora_b[..], self.rank, self.scale)
    }
}

/// The CPU reference of a peft LoRA/DoRA layer over a dense base `y = x·Wᵀ + bias`, W `[n, k]`.
#[derive(Clone, Debug)]
pub struct ReferenceLayer<T> {
    weight: Vec<T>,
    bias: Option<Vec<T>>,
    k: usize,
    n: usize,
    adapters: BTreeMap<String, LayerAdapter<T>>,
    active: Vec<String>,
    /// Merged adapters in merge order, with the DoRA factor used (peft caches the norm for unmerge).
    merged: Vec<(String, Option<Vec<f32>>)>,
    disabled: bool,
}

impl<T: Element> ReferenceLayer<T> {
    /// A layer over W `[n, k]` (row-major) and an optional bias `[n]`, with no adapters.
    pub fn new(weight: Vec<T>, bias: Option<Vec<T>>, k: usize, n: usize) -> Result<Self> {
        validate_dims(&[("k", k), ("n", n)])?;
        if weight.len() != n * k {
            return Err(invalid(
                "weight",
                format!("{} elements ([n={n}, k={k}])", n * k),
                weight.len(),
            ));
        }
        if let Some(b) = &bias {
            if b.len() != n {
                return Err(invalid("bias", format!("{n} elements"), b.len()));
            }
        }
        Ok(ReferenceLayer {
            weight,
            bias,
            k,
            n,
            adapters: BTreeMap::new(),
            active: Vec::new(),
            merged: Vec::new(),
            disabled: false,
        })
    }

    /// Adds (or replaces) adapter `name`; it is not active until [`Self::set_active`] names it.
    pub fn add_adapter(&mut self, name: &str, adapter: LayerAdapter<T>) -> Result<()> {
        let lens = AdapterLens {
            rank: adapter.rank,
            a_len: adapter.lora_a.len(),
            b_len: adapter.lora_b.len(),
            scale: adapter.scale,
        };
        validate_adapter(&format!("adapter `{name}`"), &lens, self.k, self.n)?;
        if let Some(m) = &adapter.magnitude {
            if m.len() != self.n {
                return Err(invalid(
                    format!("adapter `{name}`.magnitude"),
                    format!("{} elements", self.n),
                    m.len(),
                ));
            }
        }
        if self.merged.iter().any(|(merged, _)| merged == name) {
            return Err(invalid(
                "name",
                "an adapter that is not merged (unmerge it first)",
                name,
            ));
        }
        self.adapters.insert(name.to_string(), adapter);
        Ok(())
    }

    /// Sets the active adapters, in the order their outputs are added.
    pub fn set_active(&mut self, names: &[&str]) -> Result<()> {
        if let Some(unknown) = names.iter().find(|n| !self.adapters.contains_key(**n)) {
            return Err(invalid(
                "names",
                format!(
                    "adapters of this layer ({:?})",
                    self.adapters.keys().collect::<Vec<_>>()
                ),
                unknown,
            ));
        }
        self.active = names.iter().map(|s| s.to_string()).collect();
        Ok(())
    }

    /// peft's `disable_adapters`: while disabled the forward is the base alone.
    pub fn set_disabled(&mut self, disabled: bool) {
        self.disabled = disabled;
    }

    /// The base weight as it is now (with merged adapters folded in).
    pub fn weight(&self) -> &[T] {
        &self.weight
    }

    /// The merged adapters, in merge order.
    pub fn merged(&self) -> Vec<&str> {
        self.merged.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// peft's `merge`: folds `names` (default: the active adapters) into W in order, LoRA as
    /// `W + s·B·A`, DoRA as `f ⊙ (W + s·B·A)` with f from the current W. Merging an adapter that is
    /// already merged is an error; with `safe`, a non-finite result is an error and W keeps the adapters
    /// merged before it (peft checks each adapter as it merges it).
    pub fn merge(&mut self, names: Option<&[&str]>, safe: bool) -> Result<()> {
        let names: Vec<String> = match names {
            Some(n) => n.iter().map(|s| s.to_string()).collect(),
            None => self.active.clone(),
        };
        for name in &names {
            if self.merged.iter().any(|(m, _)| m == name) {
                return Err(invalid(
                    "names",
                    "adapters that are not merged yet (merging twice)",
                    name,
                ));
            }
            if !self.adapters.contains_key(name) {
                return Err(invalid("names", "adapters of this layer", name));
            }
        }
        for name in names {
            let adapter = &self.adapters[&name];
            let factor = match &adapter.magnitude {
                None => None,
                Some(m) => {
                    let norm =
                        dora::dora_weight_norm(&self.weight, adapter.view(), self.k, self.n)?;
                    Some(dora::dora_factor(m, &norm)?)
                }
            };
            self.weight = if safe {
                dora::dora_merged_weight(
                    &self.weight,
                    adapter.view(),
                    factor.as_deref(),
                    self.k,
                    self.n,
                )?
            } else {
                dora::dora_merged_weight_unchecked(
                    &self.weight,
                    adapter.view(),
                    factor.as_deref(),
                    self.k,
                    self.n,
                )?
            };
            self.merged.push((name, factor));
        }
        Ok(())
    }

    /// peft's `unmerge`: undoes every merged adapter, last merged first, with the factor cached at
    /// merge time. Unmerging when nothing is merged is an error.
    pub fn unmerge(&mut self) -> Result<()> {
        if self.merged.is_empty() {
            return Err(invalid(
                "layer",
                "merged adapters to unmerge",
                "none merged",
            ));
        }
        while let Some((name, factor)) = self.merged.pop() {
            let adapter = &self.adapters[&name];
            self.weight = dora::dora_unmerged_weight(
                &self.weight,
                adapter.view(),
                factor.as_deref(),
                self.k,
                self.n,
            )?;
        }
        Ok(())
    }

    /// The forward for x `[m, k]`, following peft's order (see the module documentation).
    /// `adapter_names` gives one entry per row (`None`: peft's `"__base__"`).
    pub fn forward(
        &mut self,
        x: &[T],
        m: usize,
        adapter_names: Option<&[Option<&str>]>,
    ) -> Result<Vec<T>> {
        let shape = LoraShape::new(m, self.k, self.n);
        if self.disabled {
            if !self.merged.is_empty() {
                self.unmerge()?;
            }
            return lora::linear(x, &self.weight, self.bias.as_deref(), shape);
        }
        if let Some(names) = adapter_names {
            if names.len() != m {
                return Err(invalid(
                    "adapter_names",
                    format!("{m} entries (one per row)"),
                    names.len(),
                ));
            }
            if !self.merged.is_empty() {
                return Err(invalid(
                    "adapter_names",
                    "no merged adapters (unmerge before a mixed batch)",
                    format!("{:?} merged", self.merged()),
                ));
            }
            let order: Vec<&String> = self.adapters.keys().collect();
            let mut indices = Vec::with_capacity(m);
            for name in names {
                let index = match name {
                    None => -1,
                    Some(name) => match order.iter().position(|k| k.as_str() == *name) {
                        None => -1, // peft skips names it does not know
                        Some(i) => {
                            if self.adapters[*name].magnitude.is_some() {
                                return Err(invalid(
                                    "adapter_names",
                                    "LoRA adapters (DoRA does not take mixed batches)",
                                    name,
                                ));
                            }
                            i as i32
                        }
                    },
                };
                indices.push(index);
            }
            let views: Vec<_> = order.iter().map(|k| self.adapters[*k].view()).collect();
            let base = lora::linear(x, &self.weight, self.bias.as_deref(), shape)?;
            return lora::lora_forward_mixed(x, &base, &views, &indices, shape);
        }
        let mut result = lora::linear(x, &self.weight, self.bias.as_deref(), shape)?;
        if !self.merged.is_empty() {
            return Ok(result);
        }
        for name in &self.active {
            let adapter = &self.adapters[name];
            result = match &adapter.magnitude {
                None => lora::lora_forward(x, &result, &[adapter.view()], shape)?,
                Some(m) => {
                    let norm =
                        dora::dora_weight_norm(&self.weight, adapter.view(), self.k, self.n)?;
                    let factor = dora::dora_factor(m, &norm)?;
                    dora::dora_forward(
                        x,
                        &result,
                        self.bias.as_deref(),
                        adapter.view(),
                        &factor,
                        shape,
                    )?
                }
            };
        }
        Ok(result)
    }
}
