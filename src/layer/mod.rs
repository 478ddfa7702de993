//! Layers that follow peft's `Linear.forward` states exactly (peft's `lora.Linear.forward`, `merge`,
//! `unmerge`): a base
//! weight, named adapters (LoRA or DoRA), the active ones, the merged ones, and a disabled flag.
//! [`ReferenceLayer`] runs them on the CPU references over a dense base; [`Layer`] runs them on the GPU
//! over a dense, 4-bit or int8 base. Both take their decisions from one state machine, so they cannot
//! drift apart.
//!
//! Forward, in peft's order:
//! 1. adapters disabled: unmerge first if anything is merged, then the base alone;
//! 2. per-row adapter names: the mixed batch (an error if any adapter is merged or a named one is
//!    DoRA, as in peft; names the layer does not know are skipped, as peft skips them);
//! 3. something merged: the base alone (the merged weight carries the adapters);
//! 4. otherwise the base plus every active adapter in order; a DoRA adapter takes the running result
//!    as its base (peft's behaviour with several active adapters).
//!
//! Merging folds adapters into W in order (merging one twice is an error); unmerging undoes every
//! merged adapter, last merged first (an error when nothing is merged).
//!
//! A call that fails leaves the layer exactly as it was: W, the merged adapters and the active set.
//! A merge or unmerge of several adapters works on a copy of W, swapped in once every step succeeded
//! (peft, by contrast, keeps the adapters merged before a failing one). A name given twice to
//! `set_active` or `merge` is an error naming it.
//!
//! Training: `forward_train` runs the forward of the active adapters (peft's training forward,
//! dropout 0) and returns, with y, a [`SavedForward`]: for each DoRA adapter the base it took, and
//! the layer's version. `backward` takes it with x and dL/dy and returns [`LayerGrads`] (dX, and per
//! adapter dA, dB, d magnitude; the DoRA norm detached, as peft trains it); the GPU layer can also
//! add dX into a buffer (`backward_into`: QKV projections share one input). A saved forward from
//! before any change to the layer (W, an adapter, the active set) is refused, and so is training
//! through merged weights. `adapter_mut` gives an optimiser the adapter's tensors to update (which
//! makes earlier saved forwards stale).
use crate::error::{invalid, Result};
use crate::lora_backward::AdapterGrads;
use std::collections::BTreeMap;

mod gpu;
mod reference;

pub use gpu::{AdapterParamsMut, BaseWeight, DeviceLayerAdapter, Layer};
pub use reference::ReferenceLayer;

/// One named adapter of a layer, on the host: A `[rank, k]`, B `[n, rank]`, its scale, and the DoRA
/// magnitude `[n]` when it is a DoRA adapter.
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

/// What a forward does, decided from the layer's state alone.
#[derive(Debug, PartialEq)]
pub(crate) enum ForwardPlan {
    /// Disabled: unmerge these adapters (last merged first), then the base alone.
    Disabled { unmerge: Vec<String> },
    /// Per-row adapters: index into the layer's adapters in name order, −1 for the base alone.
    Mixed { indices: Vec<i32> },
    /// Something is merged: the base alone.
    Merged,
    /// The base plus these adapters, in order.
    Active(Vec<String>),
}

/// How the GPU layer runs a list of active adapters: the leading LoRA adapters with the base product
/// (into its GEMV epilogue at decode sizes), then each DoRA adapter on its own (on the running
/// result) and each run of LoRA adapters in one fused launch. Indices into the list.
#[derive(Debug, PartialEq)]
pub(crate) enum AdapterRun {
    /// LoRA adapters fused into one launch.
    Lora(std::ops::Range<usize>),
    /// One DoRA adapter.
    Dora(usize),
}

/// What a training forward does, decided from the layer's state alone.
#[derive(Debug, PartialEq)]
pub(crate) enum TrainPlan {
    /// Disabled: unmerge these adapters (last merged first), then the base alone (no adapter
    /// gradients).
    Disabled { unmerge: Vec<String> },
    /// The base plus these adapters, in order.
    Active(Vec<String>),
}

/// peft's bookkeeping of a layer's adapters: which exist (and which are DoRA), which are active,
/// which are merged (in merge order, each with the DoRA factor `F` it was merged with: peft keeps the
/// norm for the unmerge), and whether adapters are disabled. `stamp` names the layer and its version:
/// every change of W, of an adapter or of the active set gives a new one, so a backward can refuse
/// what a forward saved before the change.
#[derive(Debug)]
pub(crate) struct LayerState<F> {
    /// Adapter name -> whether it is a DoRA adapter. Name order is the mixed-batch index order.
    adapters: BTreeMap<String, bool>,
    active: Vec<String>,
    merged: Vec<(String, Option<F>)>,
    disabled: bool,
    /// (layer id, version).
    stamp: (u64, u64),
}

/// A fresh layer id: clones get their own, so a saved forward belongs to exactly one layer.
fn next_layer_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl<F> Default for LayerState<F> {
    fn default() -> Self {
        LayerState {
            adapters: BTreeMap::new(),
            active: Vec::new(),
            merged: Vec::new(),
            disabled: false,
            stamp: (next_layer_id(), 0),
        }
    }
}

impl<F: Clone> Clone for LayerState<F> {
    fn clone(&self) -> Self {
        LayerState {
            adapters: self.adapters.clone(),
            active: self.active.clone(),
            merged: self.merged.clone(),
            disabled: self.disabled,
            stamp: (next_layer_id(), 0),
        }
    }
}

/// What [`Layer::forward_train`] and [`ReferenceLayer::forward_train`] saved for their `backward`:
/// the rows, the adapters the forward ran (in order) with, for each DoRA one, the base it took
/// (`B`: a host or device buffer `[m, n]`), and the layer's version. A backward refuses it once the
/// layer changed (W, an adapter, the active set) or when it comes from another layer.
#[derive(Debug)]
pub struct SavedForward<B> {
    stamp: (u64, u64),
    m: usize,
    steps: Vec<(String, Option<B>)>,
}

impl<B> SavedForward<B> {
    /// Rows of x the forward ran on.
    pub fn m(&self) -> usize {
        self.m
    }

    /// The adapters the forward ran, in order (empty when adapters were disabled).
    pub fn adapters(&self) -> Vec<&str> {
        self.steps.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// The gradients of a layer's backward: dX and, per adapter the forward ran, dA, dB and (DoRA) d
/// magnitude.
#[derive(Debug)]
pub struct LayerGrads<B> {
    /// dL/dx, `[m, k]`.
    pub x: B,
    /// Adapter name -> its gradients.
    pub adapters: BTreeMap<String, AdapterGrads<B>>,
}

impl<F> LayerState<F> {
    /// Registers adapter `name` (replacing one of that name unless it is merged).
    pub(crate) fn add(&mut self, name: &str, dora: bool) -> Result<()> {
        if self.is_merged(name) {
            return Err(invalid(
                "name",
                "an adapter that is not merged (unmerge it first)",
                name,
            ));
        }
        self.adapters.insert(name.to_string(), dora);
        self.touch();
        Ok(())
    }

    pub(crate) fn set_active(&mut self, names: &[&str]) -> Result<()> {
        check_distinct(names.iter().copied())?;
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
        self.touch();
        Ok(())
    }

    pub(crate) fn set_disabled(&mut self, disabled: bool) {
        self.disabled = disabled;
        self.touch();
    }

    /// `names` (active adapters, in order) as the leading LoRA adapters (the base product's) and the
    /// runs after them (see [`AdapterRun`]).
    pub(crate) fn adapter_runs(&self, names: &[String]) -> (usize, Vec<AdapterRun>) {
        let is_dora = |name: &String| self.adapters.get(name).copied().unwrap_or(false);
        let lead = names.iter().take_while(|n| !is_dora(n)).count();
        let mut runs = Vec::new();
        let mut i = lead;
        while i < names.len() {
            if is_dora(&names[i]) {
                runs.push(AdapterRun::Dora(i));
                i += 1;
            } else {
                let run = names[i..].iter().take_while(|n| !is_dora(n)).count();
                runs.push(AdapterRun::Lora(i..i + run));
                i += run;
            }
        }
        (lead, runs)
    }

    /// A new version: what a forward saved before now is stale.
    pub(crate) fn touch(&mut self) {
        self.stamp.1 += 1;
    }

    /// Fails unless `saved` was made by this layer in its current version, for `m` rows.
    pub(crate) fn check_saved<B>(&self, saved: &SavedForward<B>) -> Result<()> {
        if saved.stamp.0 != self.stamp.0 {
            return Err(invalid(
                "saved",
                "what this layer's forward_train saved",
                "another layer's",
            ));
        }
        if saved.stamp.1 != self.stamp.1 {
            return Err(invalid(
                "saved",
                "a forward of the layer as it is now",
                "a forward from before the layer changed (W, an adapter or the active set)",
            ));
        }
        Ok(())
    }

    /// What a training forward saves with its result.
    pub(crate) fn saved<B>(&self, m: usize, steps: Vec<(String, Option<B>)>) -> SavedForward<B> {
        SavedForward {
            stamp: self.stamp,
            m,
            steps,
        }
    }

    /// Fails when `name` is unknown or merged (its weights are folded into W: changing them would
    /// break the unmerge).
    pub(crate) fn check_trainable(&self, name: &str) -> Result<()> {
        if !self.adapters.contains_key(name) {
            return Err(invalid(
                "name",
                format!(
                    "an adapter of this layer ({:?})",
                    self.adapters.keys().collect::<Vec<_>>()
                ),
                name,
            ));
        }
        if self.is_merged(name) {
            return Err(invalid(
                "name",
                "an adapter that is not merged (unmerge it first)",
                name,
            ));
        }
        Ok(())
    }

    /// The training forward: peft trains the active adapters on the base (or the base alone when
    /// adapters are disabled, unmerging first as the forward does). Training through merged weights
    /// is an error, as are per-row adapter names (peft refuses `adapter_names` in training mode).
    pub(crate) fn plan_train(&self) -> Result<TrainPlan> {
        if self.disabled {
            let unmerge = self.merged.iter().rev().map(|(n, _)| n.clone()).collect();
            return Ok(TrainPlan::Disabled { unmerge });
        }
        if !self.merged.is_empty() {
            return Err(invalid(
                "layer",
                "no merged adapters in a training forward (unmerge first: merged weights get no \
                 adapter gradients)",
                format!("{:?} merged", self.merged()),
            ));
        }
        Ok(TrainPlan::Active(self.active.clone()))
    }

    pub(crate) fn merged(&self) -> Vec<&str> {
        self.merged.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn is_merged(&self, name: &str) -> bool {
        self.merged.iter().any(|(m, _)| m == name)
    }

    /// The adapters a merge folds in, in order: `names`, or the active adapters. Fails (changing
    /// nothing) if one is unknown or already merged.
    pub(crate) fn plan_merge(&self, names: Option<&[&str]>) -> Result<Vec<String>> {
        let names: Vec<String> = match names {
            Some(n) => n.iter().map(|s| s.to_string()).collect(),
            None => self.active.clone(),
        };
        check_distinct(names.iter().map(String::as_str))?;
        for name in &names {
            if self.is_merged(name) {
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
        Ok(names)
    }

    /// Records that `name` is now folded into W, with the DoRA factor it was merged with.
    pub(crate) fn merged_one(&mut self, name: String, factor: Option<F>) {
        self.merged.push((name, factor));
        self.touch();
    }

    /// The merged adapters with their factors, in merge order (an unmerge walks them backwards).
    pub(crate) fn merged_entries(&self) -> &[(String, Option<F>)] {
        &self.merged
    }

    /// Records that every merged adapter was undone (call only once W is restored).
    pub(crate) fn unmerged_all(&mut self) {
        self.merged.clear();
        self.touch();
    }

    /// The adapter an unmerge undoes next (the last merged), or an error when nothing is merged.
    pub(crate) fn check_unmerge(&self) -> Result<()> {
        if self.merged.is_empty() {
            return Err(invalid(
                "layer",
                "merged adapters to unmerge",
                "none merged",
            ));
        }
        Ok(())
    }

    /// The forward for `m` rows with optional per-row adapter names (`None`: peft's `"__base__"`).
    pub(crate) fn plan_forward(
        &self,
        m: usize,
        adapter_names: Option<&[Option<&str>]>,
    ) -> Result<ForwardPlan> {
        if self.disabled {
            let unmerge = self.merged.iter().rev().map(|(n, _)| n.clone()).collect();
            return Ok(ForwardPlan::Disabled { unmerge });
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
            let mut indices = Vec::with_capacity(m);
            for name in names {
                let index = match name {
                    None => -1,
                    Some(name) => match self.adapters.keys().position(|k| k == name) {
                        None => -1, // peft skips names it does not know
                        Some(i) => {
                            if self.adapters[*name] {
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
            return Ok(ForwardPlan::Mixed { indices });
        }
        if !self.merged.is_empty() {
            return Ok(ForwardPlan::Merged);
        }
        Ok(ForwardPlan::Active(self.active.clone()))
    }
}

/// A list of adapter names must not name one twice: an error naming the duplicate.
fn check_distinct<'a>(names: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(invalid(
                "names",
                "distinct adapter names (each at most once)",
                format!("`{name}` twice"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> LayerState<()> {
        let mut s = LayerState::default();
        s.add("b", false).unwrap();
        s.add("a", true).unwrap();
        s.set_active(&["b", "a"]).unwrap();
        s
    }

    #[test]
    fn forward_plans_follow_peft_order() {
        let mut s = state();
        assert_eq!(
            s.plan_forward(2, None).unwrap(),
            ForwardPlan::Active(vec!["b".into(), "a".into()])
        );
        // Mixed-batch indices follow name order: "a" is 0, "b" is 1; unknown names are skipped.
        assert_eq!(
            s.plan_forward(3, Some(&[Some("b"), None, Some("zzz")]))
                .unwrap(),
            ForwardPlan::Mixed {
                indices: vec![1, -1, -1]
            }
        );
        assert!(s.plan_forward(1, Some(&[Some("a")])).is_err(), "DoRA");
        assert!(s.plan_forward(2, Some(&[None])).is_err(), "one per row");
        for name in s.plan_merge(None).unwrap() {
            s.merged_one(name, None);
        }
        assert_eq!(s.merged(), vec!["b", "a"]);
        assert_eq!(s.plan_forward(1, None).unwrap(), ForwardPlan::Merged);
        assert!(s.plan_merge(Some(&["a"])).is_err(), "merging twice");
        assert!(s.add("a", false).is_err(), "replacing a merged adapter");
        s.set_disabled(true);
        assert_eq!(
            s.plan_forward(1, None).unwrap(),
            ForwardPlan::Disabled {
                unmerge: vec!["a".into(), "b".into()]
            }
        );
        s.unmerged_all();
        assert!(s.check_unmerge().is_err());
        assert!(
            s.plan_merge(Some(&["b", "b"])).is_err(),
            "the same adapter twice in one merge"
        );
        assert!(s.set_active(&["a", "a"]).is_err(), "the same adapter twice");
        s.set_disabled(false);
        assert_eq!(
            s.plan_forward(1, None).unwrap(),
            ForwardPlan::Active(vec!["b".into(), "a".into()]),
            "a failed set_active keeps the active set"
        );
    }
}
