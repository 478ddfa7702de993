//! LoRA and DoRA layers for [candle](https://github.com/huggingface/candle) (cargo feature
//! `candle`): [`LoraLinear`], a candle [`Module`] over a frozen dense base `y = x·Wᵀ + bias` with
//! named LoRA or DoRA adapters whose tensors are trainable candle [`Var`]s.
//!
//! The layer follows peft's `lora.Linear` forward states through the same state machine as
//! [`crate::layer::ReferenceLayer`] and [`crate::layer::Layer`] (active adapters in order, merge,
//! unmerge, disabled; see the [`crate::layer`] documentation), so it makes the same decisions and
//! returns the same errors. Its forward is one candle custom op whose CPU forward is the crate's
//! CPU reference (f64 accumulation, rounded once: [`crate::linear::reference::linear`],
//! [`crate::lora::reference::lora_forward`], [`crate::dora::reference`]) and whose backward is the
//! crate's CPU reference backward ([`crate::lora_backward::reference::backward`]): dX (the base
//! term G·W included), dA, dB and d magnitude, with the DoRA norm detached as peft trains it. W and
//! the bias are frozen (no gradient). Tensors are f32, f16 or bf16, on candle's CPU device (or a
//! CUDA device, below).
//!
//! What candle sees: the adapters' tensors are flattened and concatenated (exact data moves, with
//! candle's own backward) into one input of the op, beside x; the op returns y and, in its
//! backward, dX and the concatenated adapter gradients, which candle splits back onto the [`Var`]s.
//! The op holds W as the forward saw it and its input is a copy of the adapters' values, so a
//! backward always differentiates the forward that ran, even after an optimiser step or a merge.
//!
//! On the CPU the frozen base is, by default, inside that op on the reference too, which is exact
//! and slow at model sizes. [`LoraLinear::set_cpu_base`] with [`CpuBase::Candle`] computes it with
//! candle's own matmul instead (and its dX term with candle's autograd), the op then adding the
//! adapters' terms to that base: for training a real model on a CPU.
//!
//! With the `candle-cuda` feature (candle-core's `cuda`; build with `--no-default-features`, candle
//! picks cudarc's CUDA version), CUDA tensors run the crate's kernels on candle's stream: the fused
//! forward and the GPU backward ([`crate::Gpu::backward_chain`]). That path is type-checked only: no
//! GPU has run it yet. Merge and unmerge run on the CPU references on either device.
//!
//! A 4-bit base (QLoRA, QDoRA: [`LoraLinear::new_quant4`]) runs on the CPU on its bit-exact
//! dequantisation, checked against peft's and bitsandbytes' golden gradients.
//!
//! Not here yet: an int8 base, a 4-bit base on a CUDA device, per-row adapter names (peft's mixed
//! batch) and dropout (the forward is peft's with `lora_dropout = 0`).
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use lora_kernels::candle::LoraLinear;
//!
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! let (k, n, r) = (64, 32, 8);
//! let weight = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
//! let layer = LoraLinear::new(weight, None)?;
//! let a = Tensor::randn(0f32, 0.02, (r, k), &dev)?;
//! let b = Tensor::zeros((n, r), DType::F32, &dev)?;
//! let vars = layer.add_adapter("default", &a, &b, None, 16.0 / r as f32)?;
//! layer.set_active(&["default"])?;
//! let x = Tensor::randn(0f32, 1.0, (2, 5, k), &dev)?; // [batch, seq, k]
//! let loss = layer.forward(&x)?.sqr()?.sum_all()?;
//! let grads = loss.backward()?;
//! let grad_b = grads.get(&vars.lora_b).expect("B is trained");
//! # let _ = grad_b; Ok(()) }
//! ```
use crate::dora::reference as dora_ref;
use crate::layer::{ForwardPlan, LayerState};
use crate::lora::{LoraAdapter, LoraShape};
use crate::lora_backward::{BackwardStep, DoraSaved};
use crate::peft::PeftAdapter;
use crate::quant4::{Quant4Weight, QuantType};
use crate::{Element, MAX_RANK};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Error, Layout, Module, Result,
    Shape, Tensor, Var, WithDType,
};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::{Mutex, MutexGuard};

pub mod bert;
#[cfg(feature = "candle-cuda")]
mod cuda;

/// An element type both the crate's references and candle take: f32, `half::f16`, `half::bf16`.
trait Float: Element + WithDType {}
impl<T: Element + WithDType> Float for T {}

/// A candle error naming the argument, what was expected and what came.
fn invalid(arg: impl Display, expected: impl Display, got: impl Display) -> Error {
    Error::msg(format!(
        "lora_kernels::candle: invalid argument `{arg}`: expected {expected}, got {got}"
    ))
}

/// The crate's error as a candle error (its message names the argument).
fn wrap(e: crate::Error) -> Error {
    Error::msg(format!("lora_kernels: {e}"))
}

/// The dtypes the layer takes.
fn check_dtype(arg: &str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        other => Err(invalid(arg, "dtype f32, f16 or bf16", format!("{other:?}"))),
    }
}

/// Only candle's CPU device, or, with the `candle-cuda` feature, a CUDA device too.
fn check_device(arg: &str, t: &Tensor) -> Result<()> {
    if t.device().is_cpu() || (cfg!(feature = "candle-cuda") && t.device().is_cuda()) {
        Ok(())
    } else {
        let expected = if cfg!(feature = "candle-cuda") {
            "a tensor on the CPU or a CUDA device"
        } else {
            "a tensor on the CPU device (CUDA tensors need the `candle-cuda` feature)"
        };
        Err(invalid(
            arg,
            expected,
            format!("a tensor on {:?}", t.device().location()),
        ))
    }
}

/// `t` must be on the base weight's device `dev`.
fn check_same_device(arg: &str, t: &Tensor, dev: &Device) -> Result<()> {
    check_device(arg, t)?;
    if t.device().same_device(dev) {
        Ok(())
    } else {
        Err(invalid(
            arg,
            format!(
                "a tensor on the base weight's device ({:?})",
                dev.location()
            ),
            format!("a tensor on {:?}", t.device().location()),
        ))
    }
}

/// `t` must have exactly `dims` (named in the message as `what`, e.g. `[rank=8, k=64]`).
fn check_dims(arg: &str, t: &Tensor, dims: &[usize], what: &str) -> Result<()> {
    if t.dims() == dims {
        Ok(())
    } else {
        Err(invalid(
            arg,
            format!("shape {what}"),
            format!("{:?}", t.dims()),
        ))
    }
}

/// `t` must have dtype `dtype` (the base weight's).
fn check_same_dtype(arg: &str, t: &Tensor, dtype: DType) -> Result<()> {
    if t.dtype() == dtype {
        Ok(())
    } else {
        Err(invalid(
            arg,
            format!("dtype {dtype:?} (the base weight's)"),
            format!("{:?}", t.dtype()),
        ))
    }
}

/// A tensor's elements in row-major order (copied; a non-contiguous tensor is made contiguous).
fn host<T: Float>(t: &Tensor) -> Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}

/// The contiguous elements of a custom op's input.
fn slice<'a, T: Float>(arg: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(invalid(
            arg,
            "a contiguous tensor",
            format!("strides {:?} for shape {:?}", l.stride(), l.dims()),
        )),
    }
}

/// A 4-bit W dequantised to `T` as a CPU tensor `[n, k]`.
fn dequantized<T: Float>(weight: &Quant4Weight, n: usize, k: usize) -> Result<Tensor> {
    let w: Vec<T> = crate::quant4::reference::dequantize(weight).map_err(wrap)?;
    Tensor::from_vec(w, (n, k), &Device::Cpu)
}

/// One adapter of a [`LoraLinear`]: its trainable tensors (candle [`Var`]s, for an optimiser),
/// rank and scale.
#[derive(Clone, Debug)]
pub struct AdapterVars {
    /// A, `[rank, in_features]` (peft's `lora_A.weight`).
    pub lora_a: Var,
    /// B, `[out_features, rank]` (peft's `lora_B.weight`).
    pub lora_b: Var,
    /// The DoRA magnitude m, `[out_features]` (peft's `lora_magnitude_vector`); `None` for LoRA.
    pub magnitude: Option<Var>,
    /// The rank r.
    pub rank: usize,
    /// The scale s (`alpha / r`, or `alpha / sqrt(r)` with rsLoRA).
    pub scale: f32,
}

impl AdapterVars {
    /// The trainable tensors: A, B and (DoRA) the magnitude.
    pub fn vars(&self) -> Vec<Var> {
        let mut vars = vec![self.lora_a.clone(), self.lora_b.clone()];
        vars.extend(self.magnitude.clone());
        vars
    }
}

/// The mutable part of a layer: W (with merged adapters folded in), the adapters and peft's state.
#[derive(Debug)]
struct Inner {
    weight: Tensor,
    adapters: BTreeMap<String, AdapterVars>,
    state: LayerState<Vec<f32>>,
    cpu_base: CpuBase,
    /// `Some` for a 4-bit base ([`LoraLinear::new_quant4`]): its NF4/FP4 type, which also means
    /// that merging is refused (`weight` is the dequantised copy).
    quant4: Option<QuantType>,
}

/// Where a [`LoraLinear`] on candle's CPU device computes its frozen base `x·Wᵀ + bias` (set with
/// [`LoraLinear::set_cpu_base`]). The adapters' terms and gradients run on the crate's CPU
/// references either way; on a CUDA device the fused kernels run and this setting is not read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuBase {
    /// The crate's CPU reference ([`crate::linear::reference::linear`]: f64 accumulation, one
    /// thread), inside the layer's op: the whole forward is rounded once, as
    /// [`crate::layer::ReferenceLayer`] computes it, and dX's base term G·W is the reference's too.
    /// The truth the kernels are tested against, and slow at model sizes.
    #[default]
    Reference,
    /// candle's own matmul (`x·Wᵀ` in the element type, multi-threaded, plus the bias), outside the
    /// op: its dX term comes from candle's autograd (G_base·W, with G_base = G times the DoRA
    /// factors after it, which the op hands back). The adapters' op takes that base as its input.
    /// The result differs from [`CpuBase::Reference`] only by the base's rounding (one f32 or
    /// 16-bit matmul, then the adapters' terms added in f64 and rounded again): for training and
    /// inference at model sizes on a CPU.
    Candle,
}

/// A peft `lora.Linear` as a candle [`Module`]: a frozen dense base W `[out, in]` with an optional
/// bias `[out]`, and named LoRA or DoRA adapters (trainable [`Var`]s). See the
/// [module documentation](self) for what its forward and backward compute.
///
/// Shared state sits behind a mutex, so every method takes `&self`: peft's disabled forward unmerges
/// merged adapters, and [`Module::forward`] takes `&self`.
#[derive(Debug)]
pub struct LoraLinear {
    bias: Option<Tensor>,
    k: usize,
    n: usize,
    dtype: DType,
    device: Device,
    inner: Mutex<Inner>,
}

impl LoraLinear {
    /// A layer over W `[out, in]` and an optional bias `[out]` (f32, f16 or bf16, the same dtype,
    /// on the CPU or, with `candle-cuda`, a CUDA device), with no adapters; every tensor the layer
    /// takes later must be on W's device and of W's dtype. W and the bias are detached: they get no
    /// gradient.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        check_device("weight", &weight)?;
        check_dtype("weight", weight.dtype())?;
        let (n, k) = match *weight.dims() {
            [n, k] if n > 0 && k > 0 => (n, k),
            _ => {
                return Err(invalid(
                    "weight",
                    "a matrix [out_features, in_features] without a zero dimension",
                    format!("shape {:?}", weight.dims()),
                ))
            }
        };
        let dtype = weight.dtype();
        let bias = match bias {
            Some(b) => {
                check_same_device("bias", &b, weight.device())?;
                check_same_dtype("bias", &b, dtype)?;
                check_dims("bias", &b, &[n], &format!("[out_features={n}]"))?;
                Some(b.detach().contiguous()?)
            }
            None => None,
        };
        Ok(LoraLinear {
            bias,
            k,
            n,
            dtype,
            device: weight.device().clone(),
            inner: Mutex::new(Inner {
                weight: weight.detach().contiguous()?,
                adapters: BTreeMap::new(),
                state: LayerState::default(),
                cpu_base: CpuBase::default(),
                quant4: None,
            }),
        })
    }

    /// A QLoRA layer: a frozen bitsandbytes 4-bit base (NF4 or FP4, plain or double-quantised
    /// absmax, in bitsandbytes' byte format: [`Quant4Weight`], e.g. from
    /// [`Quant4Weight::from_state_dict`]) and an optional bias `[out]`, on candle's CPU device, with
    /// tensors of `dtype` (f32, f16 or bf16). W is dequantised once, bit-exactly, to `dtype`
    /// ([`crate::quant4::reference::dequantize`]): what bitsandbytes' `Linear4bit` multiplies with
    /// and what peft differentiates (its DoRA norm included), so forward and backward are peft's
    /// QLoRA/QDoRA. The layer holds that dense copy (a CPU layer; the codes are not kept). Merging
    /// into a 4-bit base is an error, as on [`crate::layer::Layer`] (peft would requantise the merged
    /// weight). Not yet on a CUDA device, nor for an int8 base.
    pub fn new_quant4(weight: &Quant4Weight, bias: Option<Tensor>, dtype: DType) -> Result<Self> {
        check_dtype("dtype", dtype)?;
        weight.validate().map_err(wrap)?;
        let [n, k] = weight.shape;
        let dense = match dtype {
            DType::F32 => dequantized::<f32>(weight, n, k)?,
            DType::F16 => dequantized::<half::f16>(weight, n, k)?,
            _ => dequantized::<half::bf16>(weight, n, k)?,
        };
        if let Some(b) = &bias {
            check_same_device("bias", b, &Device::Cpu)?;
        }
        let layer = Self::new(dense, bias)?;
        layer.lock().quant4 = Some(weight.quant_type);
        Ok(layer)
    }

    /// The 4-bit type of a [`LoraLinear::new_quant4`] layer's base; `None` for a dense base.
    pub fn quant4_type(&self) -> Option<QuantType> {
        self.lock().quant4
    }

    /// Loads module `module` (`layers.0.q_proj`) of a peft adapter as adapter `"default"` (peft's
    /// name), active, over W `[out, in]` and an optional bias. The adapter's values are converted to
    /// W's dtype. An error names a module the adapter lacks, or shapes that disagree with W.
    pub fn from_peft(
        adapter: &PeftAdapter,
        module: &str,
        weight: Tensor,
        bias: Option<Tensor>,
    ) -> Result<Self> {
        let layer = Self::new(weight, bias)?;
        layer.add_peft_adapter("default", adapter, module)?;
        layer.set_active(&["default"])?;
        Ok(layer)
    }

    /// Adds (or replaces) adapter `name` from module `module` of a peft adapter (not active until
    /// [`Self::set_active`] names it); returns its [`Var`]s.
    pub fn add_peft_adapter(
        &self,
        name: &str,
        adapter: &PeftAdapter,
        module: &str,
    ) -> Result<AdapterVars> {
        let Some(m) = adapter.module(module) else {
            let mut known: Vec<&str> = adapter.modules.keys().map(String::as_str).take(8).collect();
            let more = adapter.modules.len().saturating_sub(known.len());
            let more = format!("and {more} more");
            if adapter.modules.len() > 8 {
                known.push(&more);
            }
            return Err(invalid(
                "module",
                format!(
                    "a module of the adapter in {} ({})",
                    adapter.dir.display(),
                    known.join(", ")
                ),
                format!("`{module}`"),
            ));
        };
        if (m.in_features, m.out_features) != (self.k, self.n) {
            return Err(invalid(
                "module",
                format!(
                    "an adapter for this layer's [out={}, in={}]",
                    self.n, self.k
                ),
                format!(
                    "`{module}` with [out={}, in={}]",
                    m.out_features, m.in_features
                ),
            ));
        }
        let tensor = |v: &[f32], dims: &[usize]| -> Result<Tensor> {
            Tensor::from_slice(v, dims, &self.device)?.to_dtype(self.dtype)
        };
        let a = tensor(&m.lora_a, &[m.rank, m.in_features])?;
        let b = tensor(&m.lora_b, &[m.out_features, m.rank])?;
        let magnitude = m
            .magnitude
            .as_ref()
            .map(|v| tensor(v, &[m.out_features]))
            .transpose()?;
        self.add_adapter(name, &a, &b, magnitude.as_ref(), m.scale)
    }

    /// Adds (or replaces) adapter `name`: A `[rank, in]`, B `[out, rank]`, the DoRA magnitude
    /// `[out]` (`None`: plain LoRA), and its scale; not active until [`Self::set_active`] names it.
    /// The tensors become [`Var`]s (a tensor that already is one is shared, not copied), returned
    /// for an optimiser. Errors name a wrong shape, dtype or device, a rank outside 1 to
    /// [`MAX_RANK`], a scale that is not finite, and replacing a merged adapter.
    pub fn add_adapter(
        &self,
        name: &str,
        lora_a: &Tensor,
        lora_b: &Tensor,
        magnitude: Option<&Tensor>,
        scale: f32,
    ) -> Result<AdapterVars> {
        let (k, n) = (self.k, self.n);
        let arg = |t: &str| format!("adapter `{name}`.{t}");
        let rank = match *lora_a.dims() {
            [r, _] => r,
            _ => 0,
        };
        if !(1..=MAX_RANK).contains(&rank) {
            return Err(invalid(
                arg("lora_a"),
                format!("a matrix [rank, in_features={k}] with rank 1 to {MAX_RANK}"),
                format!("shape {:?}", lora_a.dims()),
            ));
        }
        for (what, t, dims, text) in [
            (
                "lora_a",
                lora_a,
                vec![rank, k],
                format!("[rank={rank}, in_features={k}]"),
            ),
            (
                "lora_b",
                lora_b,
                vec![n, rank],
                format!("[out_features={n}, rank={rank}]"),
            ),
        ]
        .into_iter()
        .chain(magnitude.map(|m| ("magnitude", m, vec![n], format!("[out_features={n}]"))))
        {
            check_same_device(&arg(what), t, &self.device)?;
            check_same_dtype(&arg(what), t, self.dtype)?;
            check_dims(&arg(what), t, &dims, &text)?;
        }
        if !scale.is_finite() {
            return Err(invalid(arg("scale"), "a finite number", scale));
        }
        let mut inner = self.lock();
        inner.state.add(name, magnitude.is_some()).map_err(wrap)?;
        let vars = AdapterVars {
            lora_a: Var::from_tensor(lora_a)?,
            lora_b: Var::from_tensor(lora_b)?,
            magnitude: magnitude.map(Var::from_tensor).transpose()?,
            rank,
            scale,
        };
        inner.adapters.insert(name.to_string(), vars.clone());
        Ok(vars)
    }

    /// Sets the active adapters, in the order their outputs are applied (peft's `set_adapter`).
    /// Unknown names and a name given twice are errors; on an error the active set is unchanged.
    pub fn set_active(&self, names: &[&str]) -> Result<()> {
        self.lock().state.set_active(names).map_err(wrap)
    }

    /// Where the frozen base `x·Wᵀ + bias` is computed on candle's CPU device (see [`CpuBase`]);
    /// the default is [`CpuBase::Reference`]. Forwards already run keep the backward they had.
    pub fn set_cpu_base(&self, base: CpuBase) {
        self.lock().cpu_base = base;
    }

    /// The [`CpuBase`] in use.
    pub fn cpu_base(&self) -> CpuBase {
        self.lock().cpu_base
    }

    /// peft's `disable_adapters`: while disabled the forward is the base alone (unmerging merged
    /// adapters first, as peft does).
    pub fn set_disabled(&self, disabled: bool) {
        self.lock().state.set_disabled(disabled);
    }

    /// peft's `merge`: folds `names` (default: the active adapters) into W in order, LoRA as
    /// `W + s·B·A`, DoRA as `f ⊙ (W + s·B·A)` ([`crate::dora::reference::dora_merged_weight`]). With
    /// `safe`, a non-finite result is an error. Merging an adapter twice is an error. On an error W
    /// and the merged adapters are as before. A merged layer's forward is the base alone, and its
    /// adapters get no gradient (as in peft); changing a merged adapter's [`Var`]s (`Var::set`)
    /// makes its unmerge subtract other values than were added, as in peft.
    pub fn merge(&self, names: Option<&[&str]>, safe: bool) -> Result<()> {
        if let Some(quant_type) = self.lock().quant4 {
            return Err(invalid(
                "layer",
                "a dense base (merging into a 4-bit base would need requantising)",
                format!("a {quant_type:?} base"),
            ));
        }
        match self.dtype {
            DType::F32 => self.lock().merge::<f32>(names, safe, self.k, self.n),
            DType::F16 => self.lock().merge::<half::f16>(names, safe, self.k, self.n),
            _ => self.lock().merge::<half::bf16>(names, safe, self.k, self.n),
        }
    }

    /// peft's `unmerge`: undoes every merged adapter, last merged first. An error when nothing is
    /// merged, or when the result is not finite; then nothing changes.
    pub fn unmerge(&self) -> Result<()> {
        self.lock().unmerge_dispatch(self.dtype, self.k, self.n)
    }

    /// The merged adapters, in merge order.
    pub fn merged(&self) -> Vec<String> {
        self.lock()
            .state
            .merged()
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// Adapter `name`'s [`Var`]s, rank and scale.
    pub fn adapter(&self, name: &str) -> Option<AdapterVars> {
        self.lock().adapters.get(name).cloned()
    }

    /// The adapters' names, sorted.
    pub fn adapter_names(&self) -> Vec<String> {
        self.lock().adapters.keys().cloned().collect()
    }

    /// The trainable [`Var`]s of every adapter (A, B, magnitude), in name order: what an optimiser
    /// such as `candle_nn::AdamW` takes.
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.lock()
            .adapters
            .values()
            .flat_map(AdapterVars::vars)
            .collect()
    }

    /// The base weight W `[out, in]` as it is now (with merged adapters folded in).
    pub fn weight(&self) -> Tensor {
        self.lock().weight.clone()
    }

    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Input features (columns of W).
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// Output features (rows of W).
    pub fn out_features(&self) -> usize {
        self.n
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave Inner half-updated (every change is one
        // assignment after the fallible work), so a poisoned lock is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks x `[m, in]` or `[batch, seq, in]` and returns it as `[rows, in]` (contiguous).
    fn flatten_input(&self, x: &Tensor) -> Result<Tensor> {
        check_same_device("x", x, &self.device)?;
        check_same_dtype("x", x, self.dtype)?;
        let k = self.k;
        let rows = match *x.dims() {
            [m, c] if c == k => m,
            [b, s, c] if c == k => b * s,
            _ => {
                return Err(invalid(
                    "x",
                    format!("shape [m, in_features={k}] or [batch, seq, in_features={k}]"),
                    format!("{:?}", x.dims()),
                ))
            }
        };
        if rows == 0 {
            return Err(invalid(
                "x",
                "at least one row",
                format!("shape {:?}", x.dims()),
            ));
        }
        x.reshape((rows, k))?.contiguous()
    }
}

impl Inner {
    fn merge<T: Float>(
        &mut self,
        names: Option<&[&str]>,
        safe: bool,
        k: usize,
        n: usize,
    ) -> Result<()> {
        let names = self.state.plan_merge(names).map_err(wrap)?;
        let merge = if safe {
            dora_ref::dora_merged_weight::<T>
        } else {
            dora_ref::dora_merged_weight_unchecked::<T>
        };
        let mut w: Vec<T> = host(&self.weight)?;
        let mut done = Vec::with_capacity(names.len());
        for name in names {
            let ad = &self.adapters[&name];
            let (a, b) = (host::<T>(&ad.lora_a)?, host::<T>(&ad.lora_b)?);
            let view = LoraAdapter::new(&a[..], &b[..], ad.rank, ad.scale);
            let factor = match &ad.magnitude {
                Some(m) => {
                    let norm = dora_ref::dora_weight_norm(&w, view, k, n).map_err(wrap)?;
                    Some(dora_ref::dora_factor(&host::<T>(m)?, &norm).map_err(wrap)?)
                }
                None => None,
            };
            w = merge(&w, view, factor.as_deref(), k, n).map_err(wrap)?;
            done.push((name, factor));
        }
        self.weight = Tensor::from_vec(w, (n, k), self.weight.device())?;
        for (name, factor) in done {
            self.state.merged_one(name, factor);
        }
        Ok(())
    }

    fn unmerge_dispatch(&mut self, dtype: DType, k: usize, n: usize) -> Result<()> {
        match dtype {
            DType::F32 => self.unmerge::<f32>(k, n),
            DType::F16 => self.unmerge::<half::f16>(k, n),
            _ => self.unmerge::<half::bf16>(k, n),
        }
    }

    fn unmerge<T: Float>(&mut self, k: usize, n: usize) -> Result<()> {
        self.state.check_unmerge().map_err(wrap)?;
        let mut w: Vec<T> = host(&self.weight)?;
        for (name, factor) in self.state.merged_entries().iter().rev() {
            let ad = &self.adapters[name];
            let (a, b) = (host::<T>(&ad.lora_a)?, host::<T>(&ad.lora_b)?);
            let view = LoraAdapter::new(&a[..], &b[..], ad.rank, ad.scale);
            w = dora_ref::dora_unmerged_weight(&w, view, factor.as_deref(), k, n).map_err(wrap)?;
        }
        self.weight = Tensor::from_vec(w, (n, k), self.weight.device())?;
        self.state.unmerged_all();
        Ok(())
    }
}

impl Module for LoraLinear {
    /// peft's forward for x `[m, in]` or `[batch, seq, in]` (see the [module documentation](self)):
    /// the base alone when adapters are disabled (unmerging first), when something is merged, or
    /// when no adapter is active; otherwise the base and every active adapter in order. The result
    /// has x's leading dimensions and `out_features` columns.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = self.flatten_input(x)?;
        let m = rows.dims()[0];
        let mut inner = self.lock();
        let plan = inner.state.plan_forward(m, None).map_err(wrap)?;
        let names = match plan {
            ForwardPlan::Disabled { unmerge } => {
                if !unmerge.is_empty() {
                    inner.unmerge_dispatch(self.dtype, self.k, self.n)?;
                }
                Vec::new()
            }
            ForwardPlan::Merged => Vec::new(),
            ForwardPlan::Active(names) => names,
            ForwardPlan::Mixed { .. } => {
                return Err(candle_core::Error::Msg(
                    "LoraLinear: per-row adapter names are not supported (none were given)".into(),
                ))
            }
        };
        let base = BaseOp {
            weight: inner.weight.clone(),
            bias: self.bias.clone(),
            k: self.k,
            n: self.n,
        };
        // The op holds W as it is now and its input the adapters' values concatenated (a copy): a
        // later merge or optimiser step does not change what this forward's backward computes.
        let chain = if names.is_empty() {
            None
        } else {
            let mut params = Vec::new();
            let mut steps = Vec::with_capacity(names.len());
            for name in &names {
                let ad = &inner.adapters[name];
                let (r, k, n) = (ad.rank, self.k, self.n);
                // The Vars may have been `set` to other shapes or dtypes since they were added.
                let arg = |t: &str| format!("adapter `{name}`.{t}");
                check_same_dtype(&arg("lora_a"), &ad.lora_a, self.dtype)?;
                check_dims(
                    &arg("lora_a"),
                    &ad.lora_a,
                    &[r, k],
                    &format!("[rank={r}, k={k}]"),
                )?;
                check_same_dtype(&arg("lora_b"), &ad.lora_b, self.dtype)?;
                check_dims(
                    &arg("lora_b"),
                    &ad.lora_b,
                    &[n, r],
                    &format!("[n={n}, rank={r}]"),
                )?;
                params.push(ad.lora_a.flatten_all()?);
                params.push(ad.lora_b.flatten_all()?);
                if let Some(mag) = &ad.magnitude {
                    check_same_dtype(&arg("magnitude"), mag, self.dtype)?;
                    check_dims(&arg("magnitude"), mag, &[n], &format!("[n={n}]"))?;
                    params.push(mag.flatten_all()?);
                }
                steps.push(Step {
                    rank: r,
                    scale: ad.scale,
                    dora: ad.magnitude.is_some(),
                });
            }
            let op = ChainOp {
                weight: base.weight.clone(),
                bias: base.bias.clone(),
                steps,
                k: self.k,
                n: self.n,
            };
            Some((op, Tensor::cat(&params, 0)?))
        };
        let candle_base = inner.cpu_base == CpuBase::Candle && rows.device().is_cpu();
        // The products run without the lock.
        drop(inner);
        let y = if candle_base {
            // W and the bias are frozen: the base's backward is dX's G_base·W term only.
            let mut y0 = rows.apply_op1(FrozenMatmul {
                weight: base.weight.clone(),
            })?;
            if let Some(b) = &base.bias {
                y0 = y0.broadcast_add(b)?;
            }
            match chain {
                None => y0,
                Some((op, params)) => rows.apply_op3(&y0, &params, ChainOnBaseOp(op))?,
            }
        } else {
            match chain {
                None => rows.apply_op1(base)?,
                Some((op, params)) => rows.apply_op2(&params, op)?,
            }
        };
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.n;
        }
        y.reshape(dims)
    }
}

/// The base alone, `y = x·Wᵀ + bias` on x `[m, k]`; backward dX = G·W.
struct BaseOp {
    weight: Tensor,
    bias: Option<Tensor>,
    k: usize,
    n: usize,
}

impl BaseOp {
    fn fwd<T: Float>(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice::<T>("x", s, l)?;
        let m = x.len() / self.k;
        let shape = LoraShape::new(m, self.k, self.n);
        let w: Vec<T> = host(&self.weight)?;
        let bias: Option<Vec<T>> = self.bias.as_ref().map(host).transpose()?;
        let y = crate::linear::reference::linear(x, &w, bias.as_deref(), shape).map_err(wrap)?;
        Ok((T::to_cpu_storage_owned(y), Shape::from((m, self.n))))
    }

    fn bwd_t<T: Float>(&self, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (xv, g, w) = (host::<T>(x)?, host::<T>(grad)?, host::<T>(&self.weight)?);
        let m = xv.len() / self.k;
        let shape = LoraShape::new(m, self.k, self.n);
        let grads = crate::lora_backward::reference::backward(&xv, &g, Some(&w), &[], shape)
            .map_err(wrap)?;
        Tensor::from_vec(grads.x, (m, self.k), x.device())
    }
}

impl CustomOp1 for BaseOp {
    fn name(&self) -> &'static str {
        "lora-kernels-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        match s {
            CpuStorage::F32(_) => self.fwd::<f32>(s, l),
            CpuStorage::F16(_) => self.fwd::<half::f16>(s, l),
            CpuStorage::BF16(_) => self.fwd::<half::bf16>(s, l),
            other => Err(invalid(
                "x",
                "dtype f32, f16 or bf16",
                format!("{:?}", other.dtype()),
            )),
        }
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::base_fwd(self, s, l)
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        #[cfg(feature = "candle-cuda")]
        if x.device().is_cuda() {
            let gx = match x.dtype() {
                DType::F32 => cuda::base_bwd::<f32>(self, x, grad)?,
                DType::F16 => cuda::base_bwd::<half::f16>(self, x, grad)?,
                _ => cuda::base_bwd::<half::bf16>(self, x, grad)?,
            };
            return Ok(Some(gx));
        }
        let gx = match x.dtype() {
            DType::F32 => self.bwd_t::<f32>(x, grad)?,
            DType::F16 => self.bwd_t::<half::f16>(x, grad)?,
            _ => self.bwd_t::<half::bf16>(x, grad)?,
        };
        Ok(Some(gx))
    }
}

/// `x·Wᵀ` for x `[m, k]` on candle's own matmul (CPU), with W frozen: the backward is dX = G·W
/// only. (candle's matmul backward would also form dW, another m·n·k product, for a W that gets no
/// gradient.) [`CpuBase::Candle`]'s base, and the frozen layers of [`bert`].
pub(crate) struct FrozenMatmul {
    /// W `[n, k]`, contiguous, of x's dtype.
    pub(crate) weight: Tensor,
}

impl FrozenMatmul {
    fn fwd<T: Float>(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice::<T>("x", s, l)?;
        // A tensor outside the autograd graph, on the same data (one copy of x, one of y).
        let y = Tensor::from_slice(x, l.dims(), &Device::Cpu)?.matmul(&self.weight.t()?)?;
        let shape = y.shape().clone();
        Ok((
            T::to_cpu_storage_owned(y.flatten_all()?.to_vec1::<T>()?),
            shape,
        ))
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "lora-kernels-frozen-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if s.dtype() != self.weight.dtype() {
            return Err(invalid(
                "x",
                format!("dtype {:?} (the weight's)", self.weight.dtype()),
                format!("{:?}", s.dtype()),
            ));
        }
        match s {
            CpuStorage::F32(_) => self.fwd::<f32>(s, l),
            CpuStorage::F16(_) => self.fwd::<half::f16>(s, l),
            CpuStorage::BF16(_) => self.fwd::<half::bf16>(s, l),
            other => Err(invalid(
                "x",
                "dtype f32, f16 or bf16",
                format!("{:?}", other.dtype()),
            )),
        }
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// One adapter of a [`ChainOp`]: its rank, scale and kind. Its tensors sit in the op's second input
/// in this order: A `[r, k]`, B `[n, r]`, then (DoRA) m `[n]`.
#[derive(Clone, Copy, Debug)]
struct Step {
    rank: usize,
    scale: f32,
    dora: bool,
}

impl Step {
    fn len(&self, k: usize, n: usize) -> usize {
        self.rank * k + n * self.rank + if self.dora { n } else { 0 }
    }
}

/// The base and a chain of adapters in peft's order, on (x `[m, k]`, the adapters' concatenated
/// tensors): `y = base`, then each LoRA adapter adds `s·(x·Aᵀ)·Bᵀ` and each DoRA adapter takes the
/// running result as its base. Backward: the crate's reference backward of the chain.
struct ChainOp {
    weight: Tensor,
    bias: Option<Tensor>,
    steps: Vec<Step>,
    k: usize,
    n: usize,
}

/// The chain's forward, on host data: y, and for each step the base it took (DoRA) and its norm.
struct ChainForward<T> {
    y: Vec<T>,
    bases: Vec<Option<Vec<T>>>,
    norms: Vec<Option<Vec<f32>>>,
}

/// An adapter's views into the concatenated parameters.
struct StepViews<'a, T> {
    adapter: LoraAdapter<'a, [T]>,
    magnitude: Option<&'a [T]>,
}

impl ChainOp {
    fn params_len(&self) -> usize {
        self.steps.iter().map(|s| s.len(self.k, self.n)).sum()
    }

    fn views<'a, T>(&self, params: &'a [T]) -> Vec<StepViews<'a, T>> {
        let (k, n) = (self.k, self.n);
        let mut at = 0;
        let mut take = |len: usize| {
            let s = &params[at..at + len];
            at += len;
            s
        };
        self.steps
            .iter()
            .map(|st| {
                let a = take(st.rank * k);
                let b = take(n * st.rank);
                let magnitude = st.dora.then(|| take(n));
                StepViews {
                    adapter: LoraAdapter::new(a, b, st.rank, st.scale),
                    magnitude,
                }
            })
            .collect()
    }

    fn check_params(&self, len: usize) -> Result<()> {
        if len == self.params_len() {
            Ok(())
        } else {
            Err(invalid(
                "params",
                format!(
                    "{} elements (the active adapters' A, B, m)",
                    self.params_len()
                ),
                len,
            ))
        }
    }

    /// The forward as [`crate::layer::ReferenceLayer::forward_train`] runs it.
    fn chain<T: Float>(
        &self,
        x: &[T],
        w: &[T],
        bias: Option<&[T]>,
        params: &[T],
        base: Option<Vec<T>>,
    ) -> Result<ChainForward<T>> {
        let (k, n) = (self.k, self.n);
        let shape = LoraShape::new(x.len() / k, k, n);
        // The base the first adapter takes: given (CpuBase::Candle) or the reference's x·Wᵀ + bias.
        let mut y = match base {
            Some(base) => base,
            None => crate::linear::reference::linear(x, w, bias, shape).map_err(wrap)?,
        };
        let mut bases = Vec::with_capacity(self.steps.len());
        let mut norms = Vec::with_capacity(self.steps.len());
        for v in self.views(params) {
            match v.magnitude {
                None => {
                    y = crate::lora::reference::lora_forward(x, &y, &[v.adapter], shape)
                        .map_err(wrap)?;
                    bases.push(None);
                    norms.push(None);
                }
                Some(m) => {
                    let norm = dora_ref::dora_weight_norm(w, v.adapter, k, n).map_err(wrap)?;
                    let factor = dora_ref::dora_factor(m, &norm).map_err(wrap)?;
                    let next = dora_ref::dora_forward(x, &y, bias, v.adapter, &factor, shape)
                        .map_err(wrap)?;
                    bases.push(Some(std::mem::replace(&mut y, next)));
                    norms.push(Some(norm));
                }
            }
        }
        Ok(ChainForward { y, bases, norms })
    }

    fn fwd<T: Float>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice::<T>("x", s1, l1)?;
        let params = slice::<T>("params", s2, l2)?;
        self.check_params(params.len())?;
        let w: Vec<T> = host(&self.weight)?;
        let bias: Option<Vec<T>> = self.bias.as_ref().map(host).transpose()?;
        let out = self.chain(x, &w, bias.as_deref(), params, None)?;
        let m = x.len() / self.k;
        Ok((T::to_cpu_storage_owned(out.y), Shape::from((m, self.n))))
    }

    fn bwd_t<T: Float>(
        &self,
        x: &Tensor,
        params: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (gx, gp, _) = self.grads::<T>(x, params, None, grad)?;
        Ok((gx, gp))
    }

    /// The reference backward of the chain: dX, the adapters' gradients concatenated as the
    /// parameters, and (with a given `base`, the op's input) the gradient of that base,
    /// G ⊙ the product of every DoRA factor; without one, dX includes the base term G·W.
    fn grads<T: Float>(
        &self,
        x: &Tensor,
        params: &Tensor,
        base: Option<&Tensor>,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (xv, pv, g) = (host::<T>(x)?, host::<T>(params)?, host::<T>(grad)?);
        self.check_params(pv.len())?;
        let base_v: Option<Vec<T>> = base.map(host).transpose()?;
        let given_base = base_v.is_some();
        let w: Vec<T> = host(&self.weight)?;
        let bias: Option<Vec<T>> = self.bias.as_ref().map(host).transpose()?;
        let (k, n) = (self.k, self.n);
        let m = xv.len() / k;
        // The DoRA bases the forward took, recomputed (the forward is deterministic).
        let fwd = self.chain(&xv, &w, bias.as_deref(), &pv, base_v)?;
        let views = self.views(&pv);
        let steps: Vec<BackwardStep<'_, [T], [f32]>> = views
            .iter()
            .zip(fwd.bases.iter().zip(&fwd.norms))
            .map(|(v, (base, norm))| BackwardStep {
                adapter: v.adapter,
                dora: match (v.magnitude, base, norm) {
                    (Some(magnitude), Some(base), Some(norm)) => Some(DoraSaved {
                        magnitude,
                        norm: &norm[..],
                        base: &base[..],
                        bias: bias.as_deref(),
                    }),
                    _ => None,
                },
            })
            .collect();
        let grads = crate::lora_backward::reference::backward(
            &xv,
            &g,
            (!given_base).then_some(&w[..]),
            &steps,
            LoraShape::new(m, k, n),
        )
        .map_err(wrap)?;
        let dev = x.device();
        let grad_base = if given_base {
            // Each DoRA step scales the running result's gradient by its factor f (peft's
            // y = bias + f ⊙ (base − bias + s·U)); a LoRA step passes it through.
            let mut column_scale = vec![1.0f64; n];
            for step in &steps {
                if let Some(d) = &step.dora {
                    let f = dora_ref::dora_factor(d.magnitude, d.norm).map_err(wrap)?;
                    for (c, fj) in column_scale.iter_mut().zip(f) {
                        *c *= f64::from(fj);
                    }
                }
            }
            let gb: Vec<T> = g
                .iter()
                .enumerate()
                .map(|(e, &v)| <T as Element>::from_f64(Element::to_f64(v) * column_scale[e % n]))
                .collect();
            Some(Tensor::from_vec(gb, (m, n), dev)?)
        } else {
            None
        };
        let mut gp = Vec::with_capacity(pv.len());
        for ad in grads.adapters {
            gp.extend(ad.lora_a);
            gp.extend(ad.lora_b);
            gp.extend(ad.magnitude.into_iter().flatten());
        }
        Ok((
            Tensor::from_vec(grads.x, (m, k), dev)?,
            Tensor::from_vec(gp, pv.len(), dev)?,
            grad_base,
        ))
    }
}

impl CustomOp2 for ChainOp {
    fn name(&self) -> &'static str {
        "lora-kernels-lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if s1.dtype() != s2.dtype() {
            return Err(invalid(
                "params",
                format!("dtype {:?} (x's)", s1.dtype()),
                format!("{:?}", s2.dtype()),
            ));
        }
        match s1 {
            CpuStorage::F32(_) => self.fwd::<f32>(s1, l1, s2, l2),
            CpuStorage::F16(_) => self.fwd::<half::f16>(s1, l1, s2, l2),
            CpuStorage::BF16(_) => self.fwd::<half::bf16>(s1, l1, s2, l2),
            other => Err(invalid(
                "x",
                "dtype f32, f16 or bf16",
                format!("{:?}", other.dtype()),
            )),
        }
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::chain_fwd(self, s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "candle-cuda")]
        if x.device().is_cuda() {
            let (gx, gp) = match x.dtype() {
                DType::F32 => cuda::chain_bwd::<f32>(self, x, params, grad)?,
                DType::F16 => cuda::chain_bwd::<half::f16>(self, x, params, grad)?,
                _ => cuda::chain_bwd::<half::bf16>(self, x, params, grad)?,
            };
            return Ok((Some(gx), Some(gp)));
        }
        let (gx, gp) = match x.dtype() {
            DType::F32 => self.bwd_t::<f32>(x, params, grad)?,
            DType::F16 => self.bwd_t::<half::f16>(x, params, grad)?,
            _ => self.bwd_t::<half::bf16>(x, params, grad)?,
        };
        Ok((Some(gx), Some(gp)))
    }
}

/// [`CpuBase::Candle`]'s op: the adapters of a [`ChainOp`] on (x `[m, k]`, the base `[m, n]`
/// candle computed, the adapters' concatenated tensors), CPU only. Forward: the chain from that
/// base; backward: dX's adapter terms, the base's gradient (to candle's matmul) and the adapters'.
struct ChainOnBaseOp(ChainOp);

impl ChainOnBaseOp {
    #[allow(clippy::too_many_arguments)]
    fn fwd<T: Float>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let x = slice::<T>("x", s1, l1)?;
        let base = slice::<T>("base", s2, l2)?;
        let params = slice::<T>("params", s3, l3)?;
        op.check_params(params.len())?;
        let m = x.len() / op.k;
        if base.len() != m * op.n {
            return Err(invalid(
                "base",
                format!("{} elements ([m={m}, n={}])", m * op.n, op.n),
                base.len(),
            ));
        }
        let w: Vec<T> = host(&op.weight)?;
        let bias: Option<Vec<T>> = op.bias.as_ref().map(host).transpose()?;
        let out = op.chain(x, &w, bias.as_deref(), params, Some(base.to_vec()))?;
        Ok((T::to_cpu_storage_owned(out.y), Shape::from((m, op.n))))
    }
}

impl CustomOp3 for ChainOnBaseOp {
    fn name(&self) -> &'static str {
        "lora-kernels-lora-adapters"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        for (arg, s) in [("base", s2), ("params", s3)] {
            if s.dtype() != s1.dtype() {
                return Err(invalid(
                    arg,
                    format!("dtype {:?} (x's)", s1.dtype()),
                    format!("{:?}", s.dtype()),
                ));
            }
        }
        match s1 {
            CpuStorage::F32(_) => self.fwd::<f32>(s1, l1, s2, l2, s3, l3),
            CpuStorage::F16(_) => self.fwd::<half::f16>(s1, l1, s2, l2, s3, l3),
            CpuStorage::BF16(_) => self.fwd::<half::bf16>(s1, l1, s2, l2, s3, l3),
            other => Err(invalid(
                "x",
                "dtype f32, f16 or bf16",
                format!("{:?}", other.dtype()),
            )),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        base: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gp, gb) = match x.dtype() {
            DType::F32 => self.0.grads::<f32>(x, params, Some(base), grad)?,
            DType::F16 => self.0.grads::<half::f16>(x, params, Some(base), grad)?,
            _ => self.0.grads::<half::bf16>(x, params, Some(base), grad)?,
        };
        Ok((Some(gx), gb, Some(gp)))
    }
}
