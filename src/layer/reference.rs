//! The CPU reference of a peft layer over a dense base, built on the crate's CPU references.
use super::{ForwardPlan, LayerAdapter, LayerGrads, LayerState, SavedForward, TrainPlan};
use crate::dora::reference as dora;
use crate::error::Result;
use crate::lora::reference as lora;
use crate::lora::{LoraAdapter, LoraShape};
use crate::lora_backward::{BackwardStep, DoraSaved};
use crate::validate::{exactly, validate_adapter, validate_base, AdapterLens};
use crate::Element;
use std::collections::BTreeMap;

impl<T> LayerAdapter<T> {
    pub(crate) fn view(&self) -> LoraAdapter<'_, [T]> {
        LoraAdapter::new(&self.lora_a[..], &self.lora_b[..], self.rank, self.scale)
    }

    /// Checks A, B, rank, scale and the magnitude against a layer of `k` inputs and `n` outputs.
    pub(crate) fn validate(&self, name: &str, k: usize, n: usize) -> Result<()> {
        validate_layer_adapter(
            name,
            &AdapterLens {
                rank: self.rank,
                a_len: self.lora_a.len(),
                b_len: self.lora_b.len(),
                scale: self.scale,
            },
            self.magnitude.as_ref().map(Vec::len),
            k,
            n,
        )
    }
}

/// Checks a layer adapter's buffers, which it owns: rank and scale as for any adapter, and lengths
/// exactly A = rank·k, B = n·rank, magnitude = n (a longer buffer is an error, not a view whose tail is
/// ignored).
pub(crate) fn validate_layer_adapter(
    name: &str,
    lens: &AdapterLens,
    magnitude_len: Option<usize>,
    k: usize,
    n: usize,
) -> Result<()> {
    let prefix = format!("adapter `{name}`");
    validate_adapter(&prefix, lens, k, n)?;
    let r = lens.rank;
    exactly(
        &format!("{prefix}.lora_a"),
        lens.a_len,
        r.checked_mul(k),
        &format!("[rank={r}, k={k}]"),
    )?;
    exactly(
        &format!("{prefix}.lora_b"),
        lens.b_len,
        n.checked_mul(r),
        &format!("[n={n}, rank={r}]"),
    )?;
    if let Some(len) = magnitude_len {
        exactly(
            &format!("{prefix}.magnitude"),
            len,
            Some(n),
            &format!("[n={n}]"),
        )?;
    }
    Ok(())
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

    /// The DoRA factor `m / max(‖W + s·B·A‖, eps)` of `adapter` over `weight`.
    fn factor(&self, weight: &[T], adapter: &LayerAdapter<T>) -> Result<Option<Vec<f32>>> {
        match &adapter.magnitude {
            None => Ok(None),
            Some(m) => {
                let norm = dora::dora_weight_norm(weight, adapter.view(), self.k, self.n)?;
                Ok(Some(dora::dora_factor(m, &norm)?))
            }
        }
    }

    /// peft's `merge`: folds `names` (default: the active adapters) into W in order, LoRA as
    /// `W + s·B·A`, DoRA as `f ⊙ (W + s·B·A)` with f from the W merged so far. Merging an adapter that
    /// is already merged, or naming one twice, is an error; with `safe`, a non-finite result is an
    /// error. On any error W and the merged adapters are as before the call (the merge runs on a copy
    /// of W; peft would keep the adapters merged before the failing one).
    pub fn merge(&mut self, names: Option<&[&str]>, safe: bool) -> Result<()> {
        let names = self.state.plan_merge(names)?;
        let merge = if safe {
            dora::dora_merged_weight
        } else {
            dora::dora_merged_weight_unchecked
        };
        let mut weight = self.weight.clone();
        let mut done = Vec::with_capacity(names.len());
        for name in names {
            let adapter = &self.adapters[&name];
            let factor = self.factor(&weight, adapter)?;
            weight = merge(&weight, adapter.view(), factor.as_deref(), self.k, self.n)?;
            done.push((name, factor));
        }
        self.weight = weight;
        for (name, factor) in done {
            self.state.merged_one(name, factor);
        }
        Ok(())
    }

    /// peft's `unmerge`: undoes every merged adapter, last merged first, with the factor cached at
    /// merge time. Unmerging when nothing is merged is an error, and so is a non-finite result (e.g. a
    /// DoRA row merged with magnitude 0, which `W / f` cannot undo): then W and the merged adapters
    /// are as before the call (the unmerge runs on a copy of W).
    pub fn unmerge(&mut self) -> Result<()> {
        self.state.check_unmerge()?;
        let mut weight = self.weight.clone();
        for (name, factor) in self.state.merged_entries().iter().rev() {
            weight = dora::dora_unmerged_weight(
                &weight,
                self.adapters[name].view(),
                factor.as_deref(),
                self.k,
                self.n,
            )?;
        }
        self.weight = weight;
        self.state.unmerged_all();
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
                    result = match self.factor(&self.weight, adapter)? {
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

    /// The training forward for x `[m, k]`: y `[m, n]` (the same values as [`Self::forward`]) and what
    /// [`Self::backward`] needs. An error when something is merged (see the
    /// [module documentation](super)).
    pub fn forward_train(&mut self, x: &[T], m: usize) -> Result<(Vec<T>, SavedForward<Vec<T>>)> {
        let shape = LoraShape::new(m, self.k, self.n);
        let names = match self.state.plan_train()? {
            TrainPlan::Disabled { unmerge } => {
                if !unmerge.is_empty() {
                    self.unmerge()?;
                }
                Vec::new()
            }
            TrainPlan::Active(names) => names,
        };
        let mut y = crate::linear::reference::linear(x, &self.weight, self.bias.as_deref(), shape)?;
        let mut steps = Vec::with_capacity(names.len());
        for name in names {
            let adapter = &self.adapters[&name];
            match self.factor(&self.weight, adapter)? {
                None => {
                    y = lora::lora_forward(x, &y, &[adapter.view()], shape)?;
                    steps.push((name, None));
                }
                Some(factor) => {
                    let next = dora::dora_forward(
                        x,
                        &y,
                        self.bias.as_deref(),
                        adapter.view(),
                        &factor,
                        shape,
                    )?;
                    steps.push((name, Some(std::mem::replace(&mut y, next))));
                }
            }
        }
        Ok((y, self.state.saved(m, steps)))
    }

    /// The backward of [`Self::forward_train`]: x `[m, k]` (the forward's input) and `grad_output`
    /// dL/dy `[m, n]` give dX and every trained adapter's gradients.
    pub fn backward(
        &self,
        saved: &SavedForward<Vec<T>>,
        x: &[T],
        grad_output: &[T],
    ) -> Result<LayerGrads<Vec<T>>> {
        self.state.check_saved(saved)?;
        let shape = LoraShape::new(saved.m, self.k, self.n);
        let norms: Vec<Option<Vec<f32>>> = saved
            .steps
            .iter()
            .map(|(name, _)| {
                let adapter = &self.adapters[name];
                adapter
                    .magnitude
                    .as_ref()
                    .map(|_| dora::dora_weight_norm(&self.weight, adapter.view(), self.k, self.n))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        let steps: Vec<BackwardStep<'_, [T], [f32]>> = saved
            .steps
            .iter()
            .zip(&norms)
            .map(|((name, base), norm)| {
                let adapter = &self.adapters[name];
                BackwardStep {
                    adapter: adapter.view(),
                    dora: match (&adapter.magnitude, base, norm) {
                        (Some(magnitude), Some(base), Some(norm)) => Some(DoraSaved {
                            magnitude: &magnitude[..],
                            norm: &norm[..],
                            base: &base[..],
                            bias: self.bias.as_deref(),
                        }),
                        _ => None,
                    },
                }
            })
            .collect();
        let grads = crate::lora_backward::reference::backward(
            x,
            grad_output,
            Some(&self.weight),
            &steps,
            shape,
        )?;
        Ok(LayerGrads {
            x: grads.x,
            adapters: saved
                .steps
                .iter()
                .map(|(name, _)| name.clone())
                .zip(grads.adapters)
                .collect(),
        })
    }

    /// Adapter `name`'s tensors, for an optimiser step. Refused for a merged adapter; what a forward
    /// saved before this call is stale afterwards. Keep the lengths (A `[rank, k]`, B `[n, rank]`,
    /// magnitude `[n]`): later calls check them.
    pub fn adapter_mut(&mut self, name: &str) -> Result<&mut LayerAdapter<T>> {
        self.state.check_trainable(name)?;
        self.state.touch();
        self.adapters
            .get_mut(name)
            .ok_or_else(|| crate::error::invalid("name", "an adapter of this layer", name))
    }
}
