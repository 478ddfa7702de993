//! The GPU layer: peft's forward states (see the [module documentation](super)) over a dense, 4-bit
//! or int8 base, every step one of the crate's kernels: the base product with the leading LoRA
//! adapters ([`Gpu::linear_lora_forward`], [`Gpu::quantized_lora_forward`]: at decode sizes their
//! term rides in the GEMV epilogue), the fused LoRA forward in place (later runs of LoRA adapters
//! summed in one launch), the DoRA forward in place with a factor cached per adapter until W
//! changes (computed straight from the 4-bit or int8 codes on a quantised base), the mixed batch,
//! and merge / unmerge (dense in place; int8 by requantising, as peft does with bitsandbytes' 8-bit
//! layer).
use super::reference::validate_layer_adapter;
use super::{
    AdapterRun, ForwardPlan, LayerAdapter, LayerGrads, LayerState, SavedForward, TrainPlan,
};
use crate::device::Gpu;
use crate::dora::{DoraAdapter, DoraFactor};
use crate::error::{invalid, Result};
use crate::int8::{Int8Device, Int8Weight};
use crate::linear::QuantizedWeight;
use crate::lora::{LoraAdapter, LoraShape};
use crate::lora_backward::{AdapterGrads, BackwardStep, DoraSaved, DxWeight};
use crate::quant4::{Quant4Device, Quant4Weight};
use crate::validate::{
    at_least, validate_base, validate_bias, validate_dims, validate_lora_forward, AdapterLens,
};
use crate::Element;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use std::collections::BTreeMap;

/// The base weight of a [`Layer`], on the GPU.
#[derive(Debug)]
pub enum BaseWeight<T> {
    /// Dense W `[n, k]` in the layer's dtype.
    Dense(CudaSlice<T>),
    /// bitsandbytes 4-bit W (NF4/FP4, plain or double-quantised absmax).
    Quant4(Quant4Device),
    /// LLM.int8 W (CB and SCB); products are weight-only.
    Int8(Int8Device),
}

/// An adapter whose buffers are already on the GPU (see [`Layer::add_device_adapter`]): A `[rank, k]`,
/// B `[n, rank]`, the scale, and the DoRA magnitude `[n]` for a DoRA adapter.
#[derive(Debug)]
pub struct DeviceLayerAdapter<T> {
    /// A, row-major `[rank, k]`.
    pub lora_a: CudaSlice<T>,
    /// B, row-major `[n, rank]`.
    pub lora_b: CudaSlice<T>,
    /// The rank r.
    pub rank: usize,
    /// The scale s.
    pub scale: f32,
    /// The DoRA magnitude m `[n]`; `None` for plain LoRA.
    pub magnitude: Option<CudaSlice<T>>,
}

/// An adapter's trainable tensors on the GPU, lent to an optimiser by [`Layer::adapter_mut`].
#[derive(Debug)]
pub struct AdapterParamsMut<'a, T> {
    /// A, `[rank, k]`.
    pub lora_a: &'a mut CudaSlice<T>,
    /// B, `[n, rank]`.
    pub lora_b: &'a mut CudaSlice<T>,
    /// The DoRA magnitude, `[n]`.
    pub magnitude: Option<&'a mut CudaSlice<T>>,
}

/// One adapter on the GPU, with its DoRA factor over the current W once a forward needed it.
#[derive(Debug)]
struct StoredAdapter<T> {
    a: CudaSlice<T>,
    b: CudaSlice<T>,
    rank: usize,
    scale: f32,
    magnitude: Option<CudaSlice<T>>,
    factor: Option<DoraFactor>,
}

impl<T> StoredAdapter<T> {
    fn view(&self) -> LoraAdapter<'_, CudaSlice<T>> {
        LoraAdapter::new(&self.a, &self.b, self.rank, self.scale)
    }
}

/// A peft LoRA/DoRA layer on the GPU over a dense, 4-bit or int8 base `y = x·Wᵀ + bias`, W `[n, k]`.
/// It follows the same state machine as [`super::ReferenceLayer`], its CPU reference.
///
/// Calls are asynchronous on the [`Gpu`]'s stream except where noted (safe merges synchronise).
/// A forward may allocate (the mixed batch's adapter table and indices, a DoRA factor the first time
/// it is needed); for CUDA-graph capture call [`Gpu::lora_forward_mixed`] and friends directly.
#[derive(Debug)]
pub struct Layer<T> {
    gpu: Gpu,
    base: BaseWeight<T>,
    bias: Option<CudaSlice<T>>,
    k: usize,
    n: usize,
    adapters: BTreeMap<String, StoredAdapter<T>>,
    state: LayerState<DoraFactor>,
}

impl<T: Element> Layer<T> {
    /// A layer over a dense W `[n, k]` (row-major, copied to the GPU) and an optional bias `[n]`.
    pub fn dense(gpu: &Gpu, weight: &[T], bias: Option<&[T]>, k: usize, n: usize) -> Result<Self> {
        validate_base(weight.len(), bias, k, n)?;
        let w = gpu.stream().clone_htod(weight)?;
        Self::with_base(gpu, BaseWeight::Dense(w), bias, k, n)
    }

    /// A layer over a bitsandbytes 4-bit W (e.g. from [`Quant4Weight::from_state_dict`]) and an
    /// optional bias `[n]`.
    pub fn quant4(gpu: &Gpu, weight: &Quant4Weight, bias: Option<&[T]>) -> Result<Self> {
        let [n, k] = weight.shape;
        let w = gpu.upload_quant4(weight)?;
        Self::with_base(gpu, BaseWeight::Quant4(w), bias, k, n)
    }

    /// A layer over an LLM.int8 W (e.g. from [`Int8Weight::from_state_dict`]) and an optional bias
    /// `[n]`.
    pub fn int8(gpu: &Gpu, weight: &Int8Weight, bias: Option<&[T]>) -> Result<Self> {
        let [n, k] = weight.shape;
        let w = gpu.upload_int8(weight)?;
        Self::with_base(gpu, BaseWeight::Int8(w), bias, k, n)
    }

    /// A layer over a base weight already on the GPU (a framework's buffers, moved in): `shape` is
    /// [n, k] = (out_features, in_features), a dense W holds at least n·k elements row-major, a
    /// quantised one must have that shape; the bias, if any, holds n elements.
    pub fn from_device(
        gpu: &Gpu,
        base: BaseWeight<T>,
        shape: [usize; 2],
        bias: Option<CudaSlice<T>>,
    ) -> Result<Self> {
        let [n, k] = shape;
        validate_dims(&[("shape[0]", n), ("shape[1]", k)])?;
        match &base {
            BaseWeight::Dense(w) => at_least(
                "base",
                w.len(),
                n.checked_mul(k),
                &format!("[n={n}, k={k}]"),
            )?,
            BaseWeight::Quant4(q) if q.shape() != shape => {
                return Err(invalid(
                    "base",
                    format!("shape {shape:?}"),
                    format!("{:?}", q.shape()),
                ))
            }
            BaseWeight::Int8(q) if q.shape() != shape => {
                return Err(invalid(
                    "base",
                    format!("shape {shape:?}"),
                    format!("{:?}", q.shape()),
                ))
            }
            _ => {}
        }
        validate_bias(bias.as_ref().map(|b| b.len()), n)?;
        Ok(Layer {
            gpu: gpu.clone(),
            base,
            bias,
            k,
            n,
            adapters: BTreeMap::new(),
            state: LayerState::default(),
        })
    }

    fn with_base(
        gpu: &Gpu,
        base: BaseWeight<T>,
        bias: Option<&[T]>,
        k: usize,
        n: usize,
    ) -> Result<Self> {
        validate_bias(bias.map(|b| b.len()), n)?;
        let bias = match bias {
            Some(b) => Some(gpu.stream().clone_htod(b)?),
            None => None,
        };
        Self::from_device(gpu, base, [n, k], bias)
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
    pub fn base(&self) -> &BaseWeight<T> {
        &self.base
    }

    /// Adds (or replaces) adapter `name`, copying it to the GPU; it is not active until
    /// [`Self::set_active`] names it. Lengths must be exact: A = rank·k, B = n·rank, magnitude = n.
    pub fn add_adapter(&mut self, name: &str, adapter: &LayerAdapter<T>) -> Result<()> {
        adapter.validate(name, self.k, self.n)?;
        let s = self.gpu.stream();
        let device = DeviceLayerAdapter {
            lora_a: s.clone_htod(&adapter.lora_a)?,
            lora_b: s.clone_htod(&adapter.lora_b)?,
            rank: adapter.rank,
            scale: adapter.scale,
            magnitude: match &adapter.magnitude {
                Some(m) => Some(s.clone_htod(m)?),
                None => None,
            },
        };
        self.add_device_adapter(name, device)
    }

    /// Adds (or replaces) adapter `name` from buffers already on the GPU (moved in). The buffers
    /// are the adapter's own, so their lengths must be exact, as for [`Self::add_adapter`]:
    /// A = rank·k, B = n·rank, magnitude = n.
    pub fn add_device_adapter(&mut self, name: &str, adapter: DeviceLayerAdapter<T>) -> Result<()> {
        let lens = AdapterLens {
            rank: adapter.rank,
            a_len: adapter.lora_a.len(),
            b_len: adapter.lora_b.len(),
            scale: adapter.scale,
        };
        validate_layer_adapter(
            name,
            &lens,
            adapter.magnitude.as_ref().map(|m| m.len()),
            self.k,
            self.n,
        )?;
        self.state.add(name, adapter.magnitude.is_some())?;
        let device = StoredAdapter {
            a: adapter.lora_a,
            b: adapter.lora_b,
            rank: adapter.rank,
            scale: adapter.scale,
            magnitude: adapter.magnitude,
            factor: None,
        };
        self.adapters.insert(name.to_string(), device);
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

    /// The merged adapters, in merge order.
    pub fn merged(&self) -> Vec<&str> {
        self.state.merged()
    }

    /// The DoRA factor of adapter `name` over the current W (None for a LoRA adapter).
    fn compute_factor(&self, name: &str) -> Result<Option<DoraFactor>> {
        factor_over(&self.gpu, &self.base, &self.adapters[name], self.k, self.n)
    }

    /// W changed: every cached DoRA factor is stale.
    fn forget_factors(&mut self) {
        for adapter in self.adapters.values_mut() {
            adapter.factor = None;
        }
    }

    /// `y = x·Wᵀ + bias + Σᵢ sᵢ·(x·Aᵢᵀ)·Bᵢᵀ` with this layer's base and `adapters` (LoRA only; at
    /// decode sizes their term is fused into the base product's GEMV epilogue).
    fn base_product<X: DevicePtr<T>, Y: DevicePtrMut<T>>(
        &self,
        x: &X,
        m: usize,
        adapters: &[LoraAdapter<'_, CudaSlice<T>>],
        y: &mut Y,
    ) -> Result<()> {
        let bias = self.bias.as_ref().map(|b| b.slice(..));
        let shape = LoraShape::new(m, self.k, self.n);
        let quantized = match &self.base {
            BaseWeight::Dense(w) => {
                return self
                    .gpu
                    .linear_lora_forward(x, w, bias.as_ref(), adapters, shape, y)
            }
            BaseWeight::Quant4(q) => QuantizedWeight::Quant4(q),
            BaseWeight::Int8(q) => QuantizedWeight::Int8(q),
        };
        self.gpu
            .quantized_lora_forward(x, quantized, bias.as_ref(), adapters, m, y)
    }

    /// peft's `merge`: folds `names` (default: the active adapters) into W in order, LoRA as
    /// `W + s·B·A`, DoRA as `f ⊙ (W + s·B·A)` with f from the current W. A dense W is updated in
    /// place; an int8 W is dequantised, updated and requantised row by row (as peft does with
    /// bitsandbytes' 8-bit layer, so unmerging restores it only to int8 precision); a 4-bit W is an
    /// error. Merging an adapter that is already merged, or naming one twice, is an error; with
    /// `safe` (always on an int8 base), a non-finite result is an error. On any error W and the merged
    /// adapters are as before the call: one adapter is checked before anything is written, several
    /// are merged into a copy of W swapped in at the end (peft would keep the adapters merged before
    /// the failing one).
    pub fn merge(&mut self, names: Option<&[&str]>, safe: bool) -> Result<()> {
        let names = self.state.plan_merge(names)?;
        if names.is_empty() {
            return Ok(());
        }
        if matches!(self.base, BaseWeight::Quant4(_)) {
            return Err(quant4_merge_error());
        }
        let checked = safe || matches!(self.base, BaseWeight::Int8(_));
        // Without a check a merge cannot fail on its values: in place.
        let mut copy = match names.len() > 1 && checked {
            true => Some(copy_base(&self.gpu, &self.base)?),
            false => None,
        };
        let mut done = Vec::with_capacity(names.len());
        for name in names {
            let adapter = &self.adapters[&name];
            let base = copy.as_mut().unwrap_or(&mut self.base);
            let factor = factor_over(&self.gpu, base, adapter, self.k, self.n)?;
            let update = RowUpdate::Merge { safe };
            update_base(
                &self.gpu,
                base,
                adapter,
                factor.as_ref(),
                self.k,
                self.n,
                update,
            )?;
            done.push((name, factor));
        }
        if let Some(copy) = copy {
            self.base = copy;
        }
        self.forget_factors();
        for (name, factor) in done {
            self.state.merged_one(name, factor);
        }
        Ok(())
    }

    /// peft's `unmerge`: undoes every merged adapter, last merged first, with the factor cached at
    /// merge time. Unmerging when nothing is merged is an error, and so is a non-finite result (e.g. a
    /// DoRA row merged with magnitude 0, which `W / f` cannot undo; checked as by
    /// [`super::ReferenceLayer::unmerge`], so this synchronises the stream): then W and the merged
    /// adapters are as before the call (one adapter is checked before anything is written; several
    /// are undone on a copy of W swapped in at the end).
    pub fn unmerge(&mut self) -> Result<()> {
        self.state.check_unmerge()?;
        let entries = self.state.merged_entries();
        let mut copy = match entries.len() > 1 {
            true => Some(copy_base(&self.gpu, &self.base)?),
            false => None,
        };
        for (name, factor) in entries.iter().rev() {
            let base = copy.as_mut().unwrap_or(&mut self.base);
            let adapter = &self.adapters[name];
            update_base(
                &self.gpu,
                base,
                adapter,
                factor.as_ref(),
                self.k,
                self.n,
                RowUpdate::Unmerge,
            )?;
        }
        if let Some(copy) = copy {
            self.base = copy;
        }
        self.forget_factors();
        self.state.unmerged_all();
        Ok(())
    }

    /// The forward for x `[m, k]` into y `[m, n]` (device buffers of the layer's dtype), following
    /// peft's order (see the [module documentation](super)). `adapter_names` gives one entry per row
    /// (`None`: peft's `"__base__"`).
    pub fn forward<X: DevicePtr<T>, Y: DevicePtrMut<T>>(
        &mut self,
        x: &X,
        m: usize,
        adapter_names: Option<&[Option<&str>]>,
        y: &mut Y,
    ) -> Result<()> {
        let shape = LoraShape::new(m, self.k, self.n);
        validate_lora_forward(shape, x.len(), None, Some(y.len()), &[])?;
        let plan = self.state.plan_forward(m, adapter_names)?;
        match plan {
            ForwardPlan::Disabled { unmerge } => {
                if !unmerge.is_empty() {
                    self.unmerge()?;
                }
                self.base_product(x, m, &[], y)
            }
            ForwardPlan::Merged => self.base_product(x, m, &[], y),
            ForwardPlan::Mixed { indices } => {
                // A batch on one adapter (or none) is the plain forward: the fused paths.
                if indices.iter().all(|&i| i == indices[0]) {
                    let views: Vec<_> = match usize::try_from(indices[0]) {
                        Ok(i) => self
                            .adapters
                            .values()
                            .skip(i)
                            .take(1)
                            .map(|a| a.view())
                            .collect(),
                        Err(_) => Vec::new(),
                    };
                    return self.base_product(x, m, &views, y);
                }
                let s = self.gpu.stream().clone();
                let mut base = s.alloc_zeros::<T>(m * self.n)?;
                self.base_product(x, m, &[], &mut base)?;
                let views: Vec<_> = self.adapters.values().map(|a| a.view()).collect();
                let table = self.gpu.mixed_adapters(&views, self.k, self.n)?;
                let indices = s.clone_htod(&indices)?;
                self.gpu
                    .lora_forward_mixed(x, &base, &table, &indices, shape, y)
            }
            ForwardPlan::Active(names) => {
                // The leading LoRA adapters go with the base product (into its GEMV epilogue at
                // decode sizes); later runs of LoRA adapters into one fused launch each; a DoRA
                // adapter takes the running result as its base.
                for name in &names {
                    self.ensure_factor(name)?;
                }
                let (lead, runs) = self.state.adapter_runs(&names);
                self.base_product(x, m, &self.views(&names[..lead]), y)?;
                let bias = self.bias.as_ref().map(|b| b.slice(..));
                for run in runs {
                    match run {
                        AdapterRun::Dora(i) => {
                            let dora = self.dora_view(&names[i])?;
                            self.gpu
                                .dora_forward_inplace(x, bias.as_ref(), dora, shape, y)?;
                        }
                        AdapterRun::Lora(range) => {
                            let views = self.views(&names[range]);
                            self.gpu.lora_forward_inplace(x, &views, shape, y)?;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The adapters `names`' LoRA views.
    fn views(&self, names: &[String]) -> Vec<LoraAdapter<'_, CudaSlice<T>>> {
        names
            .iter()
            .map(|name| self.adapters[name].view())
            .collect()
    }

    /// DoRA adapter `name` with its cached factor (see [`Self::ensure_factor`]).
    fn dora_view(&self, name: &str) -> Result<DoraAdapter<'_, CudaSlice<T>>> {
        let adapter = &self.adapters[name];
        match &adapter.factor {
            Some(factor) => Ok(DoraAdapter::new(adapter.view(), factor)),
            None => Err(invalid(
                "layer",
                format!("a computed DoRA factor for adapter `{name}`"),
                "none",
            )),
        }
    }

    /// Computes and caches the DoRA factor of adapter `name` unless it is cached.
    fn ensure_factor(&mut self, name: &str) -> Result<()> {
        if self.adapters[name].magnitude.is_some() && self.adapters[name].factor.is_none() {
            let factor = self.compute_factor(name)?;
            if let Some(adapter) = self.adapters.get_mut(name) {
                adapter.factor = factor;
            }
        }
        Ok(())
    }

    /// The training forward for x `[m, k]` into y `[m, n]`: the same values as [`Self::forward`]
    /// without adapter names, and what [`Self::backward`] needs (the base of each DoRA adapter, kept
    /// on the GPU: m·n elements each). An error when something is merged (see the
    /// [module documentation](super)).
    pub fn forward_train<X: DevicePtr<T>, Y: DevicePtrMut<T>>(
        &mut self,
        x: &X,
        m: usize,
        y: &mut Y,
    ) -> Result<SavedForward<CudaSlice<T>>> {
        let shape = LoraShape::new(m, self.k, self.n);
        validate_lora_forward(shape, x.len(), None, Some(y.len()), &[])?;
        let names = match self.state.plan_train()? {
            TrainPlan::Disabled { unmerge } => {
                if !unmerge.is_empty() {
                    self.unmerge()?;
                }
                Vec::new()
            }
            TrainPlan::Active(names) => names,
        };
        for name in &names {
            self.ensure_factor(name)?;
        }
        let s = self.gpu.stream().clone();
        let mut current = s.alloc_zeros::<T>(m * self.n)?;
        // As the forward, except that each DoRA adapter runs out of place and its base is kept.
        let (lead, runs) = self.state.adapter_runs(&names);
        self.base_product(x, m, &self.views(&names[..lead]), &mut current)?;
        let mut steps: Vec<(String, Option<CudaSlice<T>>)> =
            names[..lead].iter().map(|n| (n.clone(), None)).collect();
        let bias = self.bias.as_ref().map(|b| b.slice(..));
        for run in runs {
            match run {
                AdapterRun::Dora(i) => {
                    let mut next = s.alloc_zeros::<T>(m * self.n)?;
                    let dora = self.dora_view(&names[i])?;
                    self.gpu
                        .dora_forward(x, &current, bias.as_ref(), dora, shape, &mut next)?;
                    steps.push((
                        names[i].clone(),
                        Some(std::mem::replace(&mut current, next)),
                    ));
                }
                AdapterRun::Lora(range) => {
                    let views = self.views(&names[range.clone()]);
                    self.gpu
                        .lora_forward_inplace(x, &views, shape, &mut current)?;
                    steps.extend(names[range].iter().map(|n| (n.clone(), None)));
                }
            }
        }
        s.memcpy_dtod(&current, y)?;
        Ok(self.state.saved(m, steps))
    }

    /// The backward of [`Self::forward_train`]: x `[m, k]` (the forward's input) and `grad_output`
    /// dL/dy `[m, n]` give dX (allocated) and every trained adapter's gradients. Deterministic.
    pub fn backward<X: DevicePtr<T>, G: DevicePtr<T>>(
        &self,
        saved: &SavedForward<CudaSlice<T>>,
        x: &X,
        grad_output: &G,
    ) -> Result<LayerGrads<CudaSlice<T>>> {
        self.state.check_saved(saved)?;
        let mut dx = self.gpu.stream().alloc_zeros::<T>(saved.m() * self.k)?;
        let adapters = self.backward_into(saved, x, grad_output, &mut dx, false)?;
        Ok(LayerGrads { x: dx, adapters })
    }

    /// [`Self::backward`] writing dX into `dx` `[m, k]`, or adding it to what `dx` holds with
    /// `accumulate` (the Q, K and V projections of one input sum their dX).
    pub fn backward_into<X: DevicePtr<T>, G: DevicePtr<T>, D: DevicePtrMut<T>>(
        &self,
        saved: &SavedForward<CudaSlice<T>>,
        x: &X,
        grad_output: &G,
        dx: &mut D,
        accumulate: bool,
    ) -> Result<BTreeMap<String, AdapterGrads<CudaSlice<T>>>> {
        self.state.check_saved(saved)?;
        let shape = LoraShape::new(saved.m(), self.k, self.n);
        let bias = self.bias.as_ref();
        let steps = saved
            .steps
            .iter()
            .map(|(name, base)| {
                let adapter = &self.adapters[name];
                let dora = match (&adapter.magnitude, base, &adapter.factor) {
                    (Some(magnitude), Some(base), Some(factor)) => Some(DoraSaved {
                        magnitude,
                        norm: factor.norms(),
                        base,
                        bias,
                    }),
                    (None, None, _) => None,
                    _ => {
                        return Err(invalid(
                            "saved",
                            "a DoRA adapter's saved base and factor",
                            format!("adapter `{name}` without them"),
                        ))
                    }
                };
                Ok(BackwardStep {
                    adapter: adapter.view(),
                    dora,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let weight = match &self.base {
            BaseWeight::Dense(w) => DxWeight::Dense(w),
            BaseWeight::Quant4(q) => DxWeight::Quantized(QuantizedWeight::Quant4(q)),
            BaseWeight::Int8(q) => DxWeight::Quantized(QuantizedWeight::Int8(q)),
        };
        let grads =
            self.gpu
                .backward_chain(x, grad_output, weight, &steps, shape, dx, accumulate)?;
        Ok(saved
            .steps
            .iter()
            .map(|(name, _)| name.clone())
            .zip(grads)
            .collect())
    }

    /// Adapter `name`'s tensors, for an optimiser step on the GPU. Refused for a merged adapter; the
    /// cached DoRA factor is dropped and what a forward saved before this call is stale afterwards.
    /// Keep the lengths (A `[rank, k]`, B `[n, rank]`, magnitude `[n]`).
    pub fn adapter_mut(&mut self, name: &str) -> Result<AdapterParamsMut<'_, T>> {
        self.state.check_trainable(name)?;
        self.state.touch();
        let adapter = self
            .adapters
            .get_mut(name)
            .ok_or_else(|| invalid("name", "an adapter of this layer", name))?;
        adapter.factor = None;
        Ok(AdapterParamsMut {
            lora_a: &mut adapter.a,
            lora_b: &mut adapter.b,
            magnitude: adapter.magnitude.as_mut(),
        })
    }
}

/// The DoRA factor of `adapter` over `base` (None for a LoRA adapter).
fn factor_over<T: Element>(
    gpu: &Gpu,
    base: &BaseWeight<T>,
    adapter: &StoredAdapter<T>,
    k: usize,
    n: usize,
) -> Result<Option<DoraFactor>> {
    let Some(m) = &adapter.magnitude else {
        return Ok(None);
    };
    let view = adapter.view();
    let factor = match base {
        BaseWeight::Dense(w) => gpu.dora_factor(w, view, m, k, n)?,
        BaseWeight::Quant4(q) => gpu.dora_factor_quantized(QuantizedWeight::Quant4(q), view, m)?,
        BaseWeight::Int8(q) => gpu.dora_factor_quantized(QuantizedWeight::Int8(q), view, m)?,
    };
    Ok(Some(factor))
}

/// Which row pass [`update_base`] runs.
#[derive(Clone, Copy)]
enum RowUpdate {
    /// Merge, with peft's safe check or not (an int8 base is always checked).
    Merge { safe: bool },
    /// Unmerge, always checked (as the CPU reference).
    Unmerge,
}

/// Merges or unmerges `adapter` into `base` in place; a checked pass writes nothing when it fails.
fn update_base<T: Element>(
    gpu: &Gpu,
    base: &mut BaseWeight<T>,
    adapter: &StoredAdapter<T>,
    factor: Option<&DoraFactor>,
    k: usize,
    n: usize,
    update: RowUpdate,
) -> Result<()> {
    let view = adapter.view();
    match (base, update) {
        (BaseWeight::Dense(w), RowUpdate::Merge { safe }) => {
            gpu.merge_adapter(w, view, factor, k, n, safe)
        }
        (BaseWeight::Dense(w), RowUpdate::Unmerge) => {
            gpu.unmerge_adapter(w, view, factor, k, n, true)
        }
        (BaseWeight::Int8(q), RowUpdate::Merge { safe }) => {
            gpu.merge_adapter_int8(q, view, factor, safe)
        }
        (BaseWeight::Int8(q), RowUpdate::Unmerge) => {
            gpu.unmerge_adapter_int8(q, view, factor, true)
        }
        (BaseWeight::Quant4(_), _) => Err(quant4_merge_error()),
    }
}

/// A copy of a dense or int8 base on the GPU, for a merge or unmerge that must not change W when a
/// later step fails (a 4-bit base is never merged into).
fn copy_base<T: Element>(gpu: &Gpu, base: &BaseWeight<T>) -> Result<BaseWeight<T>> {
    let s = gpu.stream();
    Ok(match base {
        BaseWeight::Dense(w) => BaseWeight::Dense(s.clone_dtod(w)?),
        BaseWeight::Int8(q) => BaseWeight::Int8(Int8Device {
            cb: s.clone_dtod(&q.cb)?,
            scb: s.clone_dtod(&q.scb)?,
            shape: q.shape,
        }),
        BaseWeight::Quant4(_) => return Err(quant4_merge_error()),
    })
}

/// Merging into a 4-bit base is refused: it would need requantising the merged weight to NF4/FP4.
fn quant4_merge_error() -> crate::Error {
    invalid(
        "layer",
        "a dense or int8 base (merging into a 4-bit base would need requantising to NF4/FP4)",
        "a 4-bit base",
    )
}
