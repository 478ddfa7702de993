//! The CPU reference of a peft layer over a dense base, built on the crate's CPU references.
use super::{ForwardPlan, LayerAdapter, LayerState};
use crate::dora::reference as dora;
use crate::error::{invalid, Result};
use crate::lora::reference as lora;
use crate::lora::{LoraAdapter, LoraShape};
use crate::validate::{validate_adapter, validate_base, AdapterLens};
use crate::Element;
use std::collections::BTreeMap;

impl<T> LayerAdapter<T> {
    pub(crate) fn view(&self) -> LoraAdapter<'_, [T]> {
        LoraAdapter::new(&self.lora_a[..], &self.lora_b[..], self.rank, self.scale)
    }

    /// Checks A, B, rank, scale and the magnitude against a layer of `k` inputs and `n` outputs.
    pub(crate) fn validate(&self, name: &str, k: usize, n: usize) -> Result<()> {
        let lens = AdapterLens {
            rank: self.rank,
            a_len: self.lora_a.len(),
            b_len: self.lora_b.len(),
            scale: self.scale,
        };
        validate_adapter(&format!("adapter `{name}`"), &lens, k, n)?;
        if let Some(m) = &self.magnitude {
            if m.len() != n {
                return Err(invalid(
                    format!("adapter `{name}`.magnitude"),
                    format!("{n} elements"),
                    m.len(),
                ));
            }
        }
        Ok(())
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
    state: LayerState<Vec<f32>>,
}

impl<T: Element> ReferenceLayer<T> {
    /// A layer over W `[n, k]` (row-major) and an optional bias `[n]`, with no adapters.
    pub fn new(weight: Vec<T>, bias: Option<Vec<T>>, k: usize, n: usize) -> Result<Self> {
        validate_base(weight.len(), bias.as_deref(), k, n)?;
        Ok(ReferenceLayer {
            weight,
            bias,
            k,
            n,
            adapters: BTreeMap::new(),
            state: LayerState::default(),
        })
    }

    /// Adds (or replaces) adapter `name`; it is not active until [`Self::set_active`] names it.
    pub fn add_adapter(&mut self, name: &str, adapter: LayerAdapter<T>) -> Result<()> {
        adapter.validate(name, self.k, self.n)?;
        self.state.add(name, adapter.magnitude.is_some())?;
        self.adapters.insert(name.to_string(), adapter);
        Ok(())
    }

    /// Sets the active adapters, in the order their outputs are added.
    pub fn set_active(&mut self, names: &[&str]) -> Result<()> {
        self.state.set_active(names)
    }

    /// peft's `disable_adapters`: while disabled the forward is the base alone.
    pub fn set_disabled(&mut self, disabled: bool) {
        self.state.set_disabled(disabled);
    }

    /// Input features k.
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// Output features n.
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// The base weight as it is now (with merged adapters folded in).
    pub fn weight(&self) -> &[T] {
        &self.weight
    }

    /// The merged adapters, in merge order.
    pub fn merged(&self) -> Vec<&str> {
        self.state.merged()
    }

    /// The DoRA factor `m / max(‖W + s·B·A‖, eps)` of adapter `name` over the current W.
    fn factor(&self, adapter: &LayerAdapter<T>) -> Result<Option<Vec<f32>>> {
        match &adapter.magnitude {
            None => Ok(None),
            Some(m) => {
                let norm = dora::dora_weight_norm(&self.weight, adapter.view(), self.k, self.n)?;
                Ok(Some(dora::dora_factor(m, &norm)?))
            }
        }
    }

    /// peft's `merge`: folds `names` (default: the active adapters) into W in order, LoRA as
    /// `W + s·B·A`, DoRA as `f ⊙ (W + s·B·A)` with f from the current W. Merging an adapter that is
    /// already merged is an error; with `safe`, a non-finite result is an error and W keeps the adapters
    /// merged before it (peft checks each adapter as it merges it).
    pub fn merge(&mut self, names: Option<&[&str]>, safe: bool) -> Result<()> {
        for name in self.state.plan_merge(names)? {
            let adapter = &self.adapters[&name];
            let factor = self.factor(adapter)?;
            let merge = if safe {
                dora::dora_merged_weight
            } else {
                dora::dora_merged_weight_unchecked
            };
            self.weight = merge(
                &self.weight,
                adapter.view(),
                factor.as_deref(),
                self.k,
                self.n,
            )?;
            self.state.merged_one(name, factor);
        }
        Ok(())
    }

    /// peft's `unmerge`: undoes every merged adapter, last merged first, with the factor cached at
    /// merge time. Unmerging when nothing is merged is an error.
    pub fn unmerge(&mut self) -> Result<()> {
        self.state.check_unmerge()?;
        while let Some((name, factor)) = self.state.unmerged_one() {
            self.weight = dora::dora_unmerged_weight(
                &self.weight,
                self.adapters[&name].view(),
                factor.as_deref(),
                self.k,
                self.n,
            )?;
        }
        Ok(())
    }

    /// The forward for x `[m, k]`, following peft's order (see the [module documentation](super)).
    /// `adapter_names` gives one entry per row (`None`: peft's `"__base__"`).
    pub fn forward(
        &mut self,
        x: &[T],
        m: usize,
        adapter_names: Option<&[Option<&str>]>,
    ) -> Result<Vec<T>> {
        let shape = LoraShape::new(m, self.k, self.n);
        let plan = self.state.plan_forward(m, adapter_names)?;
        if let ForwardPlan::Disabled { unmerge } = &plan {
            if !unmerge.is_empty() {
                self.unmerge()?;
            }
        }
        let mut result =
            crate::linear::reference::linear(x, &self.weight, self.bias.as_deref(), shape)?;
        match plan {
            ForwardPlan::Disabled { .. } | ForwardPlan::Merged => {}
            ForwardPlan::Mixed { indices } => {
                let views: Vec<_> = self.adapters.values().map(|a| a.view()).collect();
                result = crate::mixed_batch::reference::lora_forward_mixed(
                    x, &result, &views, &indices, shape,
                )?;
            }
            ForwardPlan::Active(names) => {
                for name in &names {
                    let adapter = &self.adapters[name];
                    result = match self.factor(adapter)? {
                        None => lora::lora_forward(x, &result, &[adapter.view()], shape)?,
                        Some(factor) => dora::dora_forward(
                            x,
                            &result,
                            self.bias.as_deref(),
                            adapter.view(),
                            &factor,
                            shape,
                        )?,
                    };
                }
            }
        }
        Ok(result)
    }
}
