//! The candle ops on candle's CUDA backend (cargo feature `candle-cuda`): the crate's kernels on
//! candle's own stream. The forward is the base product ([`Gpu::linear`]) then each adapter in
//! order ([`Gpu::lora_forward_inplace`], or [`Gpu::dora_factor`] and [`Gpu::dora_forward_inplace`]);
//! the backward recomputes that chain, keeping each DoRA adapter's base, and runs
//! [`Gpu::backward_chain`] with the dense W.
//!
//! Type-checked only (`cargo check --features candle-cuda`): no GPU has run this path yet.
use super::{invalid, wrap, BaseOp, ChainOp, Float};
use crate::dora::DoraFactor;
use crate::lora_backward::{BackwardStep, DoraSaved, DxWeight};
use crate::{DoraAdapter, Gpu, LoraAdapter, LoraShape};
use candle_core::backend::BackendStorage;
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage, DeviceId};
use candle_core::op::BackpropOp;
use candle_core::{DType, Layout, Result, Shape, Storage, Tensor};
use cudarc::driver::{CudaSlice, CudaView};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// An element type of the crate, candle and candle's CUDA backend.
pub(super) trait CudaFloat: Float + CudaDType {}
impl<T: Float + CudaDType> CudaFloat for T {}

/// The crate's handle on candle device `dev`'s stream, made once per device (a handle loads the
/// kernel modules once and keeps its scratch).
fn gpu(dev: &CudaDevice) -> Result<Gpu> {
    static GPUS: OnceLock<Mutex<HashMap<DeviceId, Gpu>>> = OnceLock::new();
    let mut gpus = GPUS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(g) = gpus.get(&dev.id()) {
        return Ok(g.clone());
    }
    let g = Gpu::from_stream(dev.cuda_stream()).map_err(wrap)?;
    gpus.insert(dev.id(), g.clone());
    Ok(g)
}

/// The CUDA storage of a tensor's storage, or an error naming the argument.
fn cuda_of<'a>(arg: &str, s: &'a Storage) -> Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => Err(invalid(
            arg,
            "a CUDA tensor (on x's device)",
            "a tensor on another device",
        )),
    }
}

/// The contiguous elements of a CUDA storage, as a view.
fn view<'a, T: CudaFloat>(arg: &str, s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    let slice = s.as_cuda_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => Err(invalid(
            arg,
            "a contiguous tensor",
            format!("strides {:?} for shape {:?}", l.stride(), l.dims()),
        )),
    }
}

fn tensor<T: CudaFloat>(slice: CudaSlice<T>, dev: &CudaDevice, shape: impl Into<Shape>) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

/// The chain's forward on the GPU: y and, when `save`, each DoRA step's base and factor.
#[allow(clippy::type_complexity)]
fn chain<T: CudaFloat>(
    gpu: &Gpu,
    op: &ChainOp,
    x: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    bias: Option<&CudaView<'_, T>>,
    params: &CudaView<'_, T>,
    save: bool,
) -> crate::Result<(CudaSlice<T>, Vec<Option<(CudaSlice<T>, DoraFactor)>>)> {
    let (k, n) = (op.k, op.n);
    let m = x.len() / k;
    let shape = LoraShape::new(m, k, n);
    let s = gpu.stream();
    let mut y = s.alloc_zeros::<T>(m * n)?;
    gpu.linear(x, w, bias, shape, &mut y)?;
    let mut saved = Vec::with_capacity(op.steps.len());
    let mut at = 0;
    for st in &op.steps {
        let r = st.rank;
        let a = params.slice(at..at + r * k);
        at += r * k;
        let b = params.slice(at..at + n * r);
        at += n * r;
        let adapter = LoraAdapter::new(&a, &b, r, st.scale);
        if st.dora {
            let magnitude = params.slice(at..at + n);
            at += n;
            let factor = gpu.dora_factor(w, adapter, &magnitude, k, n)?;
            let base = if save { Some(s.clone_dtod(&y)?) } else { None };
            gpu.dora_forward_inplace(x, bias, DoraAdapter::new(adapter, &factor), shape, &mut y)?;
            saved.push(base.map(|b| (b, factor)));
        } else {
            gpu.lora_forward_inplace(x, &[adapter], shape, &mut y)?;
            saved.push(None);
        }
    }
    Ok((y, saved))
}

/// [`ChainOp`]'s CUDA forward.
pub(super) fn chain_fwd(
    op: &ChainOp,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    match s1.dtype() {
        DType::F32 => chain_fwd_t::<f32>(op, s1, l1, s2, l2),
        DType::F16 => chain_fwd_t::<half::f16>(op, s1, l1, s2, l2),
        DType::BF16 => chain_fwd_t::<half::bf16>(op, s1, l1, s2, l2),
        other => Err(invalid("x", "dtype f32, f16 or bf16", format!("{other:?}"))),
    }
}

fn chain_fwd_t<T: CudaFloat>(
    op: &ChainOp,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let x = view::<T>("x", s1, l1)?;
    let params = view::<T>("params", s2, l2)?;
    op.check_params(params.len())?;
    let (wg, wl) = op.weight.storage_and_layout();
    let w = view::<T>("weight", cuda_of("weight", &wg)?, wl)?;
    let bg = op.bias.as_ref().map(|b| b.storage_and_layout());
    let bias = match &bg {
        Some((g, l)) => Some(view::<T>("bias", cuda_of("bias", g)?, l)?),
        None => None,
    };
    let gpu = gpu(&s1.device)?;
    let (y, _) = chain(&gpu, op, &x, &w, bias.as_ref(), &params, false).map_err(wrap)?;
    let m = x.len() / op.k;
    Ok((
        CudaStorage::wrap_cuda_slice(y, s1.device.clone()),
        Shape::from((m, op.n)),
    ))
}

/// [`ChainOp`]'s CUDA backward: dX and the adapters' gradients, concatenated as the parameters.
pub(super) fn chain_bwd<T: CudaFloat>(
    op: &ChainOp,
    x: &Tensor,
    params: &Tensor,
    grad: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let grad = grad.contiguous()?;
    let (xg, xl) = x.storage_and_layout();
    let xc = cuda_of("x", &xg)?;
    let xv = view::<T>("x", xc, xl)?;
    let (pg, pl) = params.storage_and_layout();
    let pv = view::<T>("params", cuda_of("params", &pg)?, pl)?;
    op.check_params(pv.len())?;
    let (gg, gl) = grad.storage_and_layout();
    let gv = view::<T>("grad", cuda_of("grad", &gg)?, gl)?;
    let (wg, wl) = op.weight.storage_and_layout();
    let wv = view::<T>("weight", cuda_of("weight", &wg)?, wl)?;
    let bg = op.bias.as_ref().map(|b| b.storage_and_layout());
    let bias = match &bg {
        Some((g, l)) => Some(view::<T>("bias", cuda_of("bias", g)?, l)?),
        None => None,
    };
    let dev = &xc.device;
    let gpu = gpu(dev)?;
    let (k, n) = (op.k, op.n);
    let m = xv.len() / k;
    let shape = LoraShape::new(m, k, n);
    let (_, saved) = chain(&gpu, op, &xv, &wv, bias.as_ref(), &pv, true).map_err(wrap)?;
    // Every step's views into the parameters (A, B, magnitude) and its saved base.
    let mut views = Vec::with_capacity(op.steps.len());
    let mut at = 0;
    for (st, saved) in op.steps.iter().zip(&saved) {
        let r = st.rank;
        let a = pv.slice(at..at + r * k);
        at += r * k;
        let b = pv.slice(at..at + n * r);
        at += n * r;
        let dora = match saved {
            Some((base, factor)) => {
                let magnitude = pv.slice(at..at + n);
                at += n;
                Some((magnitude, base.slice(..), factor))
            }
            None => None,
        };
        views.push((a, b, dora));
    }
    let steps: Vec<BackwardStep<'_, CudaView<'_, T>, CudaSlice<f32>>> = op
        .steps
        .iter()
        .zip(&views)
        .map(|(st, (a, b, dora))| BackwardStep {
            adapter: LoraAdapter::new(a, b, st.rank, st.scale),
            dora: dora.as_ref().map(|(magnitude, base, factor)| DoraSaved {
                magnitude,
                norm: factor.norms(),
                base,
                bias: bias.as_ref(),
            }),
        })
        .collect();
    let s = gpu.stream();
    let mut dx = s.alloc_zeros::<T>(m * k).map_err(|e| wrap(e.into()))?;
    let grads = gpu
        .backward_chain(
            &xv,
            &gv,
            DxWeight::Dense(&wv),
            &steps,
            shape,
            &mut dx,
            false,
        )
        .map_err(wrap)?;
    let mut gp = s.alloc_zeros::<T>(pv.len()).map_err(|e| wrap(e.into()))?;
    let mut at = 0;
    for ad in &grads {
        let parts = [Some(&ad.lora_a), Some(&ad.lora_b), ad.magnitude.as_ref()];
        for part in parts.into_iter().flatten() {
            let len = part.len();
            s.memcpy_dtod(part, &mut gp.slice_mut(at..at + len))
                .map_err(|e| wrap(e.into()))?;
            at += len;
        }
    }
    Ok((tensor(dx, dev, (m, k)), tensor(gp, dev, pv.len())))
}

/// [`BaseOp`]'s CUDA forward: `x·Wᵀ + bias`.
pub(super) fn base_fwd(op: &BaseOp, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    match s.dtype() {
        DType::F32 => base_fwd_t::<f32>(op, s, l),
        DType::F16 => base_fwd_t::<half::f16>(op, s, l),
        DType::BF16 => base_fwd_t::<half::bf16>(op, s, l),
        other => Err(invalid("x", "dtype f32, f16 or bf16", format!("{other:?}"))),
    }
}

fn base_fwd_t<T: CudaFloat>(
    op: &BaseOp,
    s: &CudaStorage,
    l: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let x = view::<T>("x", s, l)?;
    let (wg, wl) = op.weight.storage_and_layout();
    let w = view::<T>("weight", cuda_of("weight", &wg)?, wl)?;
    let bg = op.bias.as_ref().map(|b| b.storage_and_layout());
    let bias = match &bg {
        Some((g, l)) => Some(view::<T>("bias", cuda_of("bias", g)?, l)?),
        None => None,
    };
    let gpu = gpu(&s.device)?;
    let m = x.len() / op.k;
    let shape = LoraShape::new(m, op.k, op.n);
    let mut y = gpu
        .stream()
        .alloc_zeros::<T>(m * op.n)
        .map_err(|e| wrap(e.into()))?;
    gpu.linear(&x, &w, bias.as_ref(), shape, &mut y)
        .map_err(wrap)?;
    Ok((
        CudaStorage::wrap_cuda_slice(y, s.device.clone()),
        Shape::from((m, op.n)),
    ))
}

/// [`BaseOp`]'s CUDA backward: dX = G·W ([`Gpu::backward_chain`] with no adapter).
pub(super) fn base_bwd<T: CudaFloat>(op: &BaseOp, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
    let grad = grad.contiguous()?;
    let (xg, xl) = x.storage_and_layout();
    let xc = cuda_of("x", &xg)?;
    let xv = view::<T>("x", xc, xl)?;
    let (gg, gl) = grad.storage_and_layout();
    let gv = view::<T>("grad", cuda_of("grad", &gg)?, gl)?;
    let (wg, wl) = op.weight.storage_and_layout();
    let wv = view::<T>("weight", cuda_of("weight", &wg)?, wl)?;
    let dev = &xc.device;
    let gpu = gpu(dev)?;
    let m = xv.len() / op.k;
    let mut dx = gpu
        .stream()
        .alloc_zeros::<T>(m * op.k)
        .map_err(|e| wrap(e.into()))?;
    let none: &[BackwardStep<'_, CudaView<'_, T>, CudaSlice<f32>>] = &[];
    gpu.backward_chain(
        &xv,
        &gv,
        DxWeight::Dense(&wv),
        none,
        LoraShape::new(m, op.k, op.n),
        &mut dx,
        false,
    )
    .map_err(wrap)?;
    Ok(tensor(dx, dev, (m, op.k)))
}
