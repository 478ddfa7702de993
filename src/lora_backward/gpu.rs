//! The launches of `kernels/lora_backward.cu`: every gradient as one `lora_backward_product_T` launch
//! (L, H, dB, dA per adapter, and one dX launch that sums the base product and up to three adapters'
//! H·A terms; f16/bf16 on tensor cores, f32 on CUDA cores), the DoRA magnitude gradient, and the
//! running DoRA column scale.
use super::reference::step_lens;
use super::{validate_backward, Accumulate, AdapterGrads, BackwardStep, DoraSaved};
use crate::device::{Gpu, KernelModule};
use crate::error::{invalid, Result};
use crate::linear::{LinearWeight, QuantizedWeight};
use crate::lora::{LoraAdapter, LoraShape};
use crate::sys::{
    LoraBackwardFactorParams, LoraBackwardJob, LoraBackwardKind,
    LoraBackwardKind_LORA_BACKWARD_ELEMENT, LoraBackwardKind_LORA_BACKWARD_F32,
    LoraBackwardKind_LORA_BACKWARD_INT8, LoraBackwardKind_LORA_BACKWARD_QUANT4,
    LoraBackwardMagnitudeParams, LoraBackwardOperand, LoraBackwardPhase, LoraBackwardProductParams,
    LORA_BACKWARD_MAGNITUDE_COLUMNS, LORA_BACKWARD_MAX_JOBS, LORA_BACKWARD_MAX_PHASES,
    LORA_BACKWARD_THREADS, LORA_BACKWARD_TILE_M, LORA_BACKWARD_TILE_N,
};
use crate::Element;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, SyncOnDrop};

/// The frozen base weight whose term G_f·W a backward adds to dX.
#[derive(Debug)]
pub enum DxWeight<'a, S: ?Sized> {
    /// No base term: dX holds the adapters' terms only (the caller differentiates the base itself).
    Skip,
    /// A dense W `[n, k]` of the element type.
    Dense(&'a S),
    /// A 4-bit or int8 W, dequantised on the fly (each element rounded to the element type, as
    /// peft's `dequantize_module_weight` and bitsandbytes' backward see it); never written out.
    Quantized(QuantizedWeight<'a>),
}

impl<S: ?Sized> Clone for DxWeight<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S: ?Sized> Copy for DxWeight<'_, S> {}

/// A product operand over device address `data`.
fn operand(
    data: u64,
    kind: LoraBackwardKind,
    row_stride: usize,
    col_stride: usize,
) -> LoraBackwardOperand {
    LoraBackwardOperand {
        data,
        row_stride: row_stride as i64,
        col_stride: col_stride as i64,
        row_scale: 0,
        col_scale: 0,
        kind: kind as i32,
        pad: 0,
    }
}

/// `alpha · a [m, depth] · b [depth, n]`.
fn phase(
    a: LoraBackwardOperand,
    b: LoraBackwardOperand,
    depth: usize,
    alpha: f32,
) -> LoraBackwardPhase {
    LoraBackwardPhase {
        a,
        b,
        depth: depth as i32,
        alpha,
    }
}

/// The backward's scratch on the GPU, owned by the caller ([`Gpu::backward_scratch`]): L and H
/// (f32 `[m, r]` per adapter) and the DoRA column scales (f32 `[n]` each).
#[derive(Debug)]
pub struct BackwardScratch {
    values: CudaSlice<f32>,
}

impl BackwardScratch {
    /// Its size in f32 values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether it holds nothing (never for one made by [`Gpu::backward_scratch`]).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// 2·m·Σr + n per DoRA adapter f32 values, or None on overflow.
fn scratch_len(
    m: usize,
    mut ranks: impl Iterator<Item = usize>,
    doras: usize,
    n: usize,
) -> Option<usize> {
    let total_rank = ranks.try_fold(0usize, |t, r| t.checked_add(r))?;
    m.checked_mul(total_rank)?
        .checked_mul(2)?
        .checked_add(doras.checked_mul(n)?)
}

/// The device addresses of one step's buffers (0 where it has none).
#[derive(Default)]
struct StepPtrs {
    a: u64,
    b: u64,
    l: u64,
    h: u64,
    da: u64,
    db: u64,
    dmag: u64,
    scale: u64,
    magnitude: u64,
    norm: u64,
    base: u64,
    bias: u64,
}

/// One output of a launch: the products summed into it (see `LoraBackwardJob`).
struct Product {
    phases: Vec<LoraBackwardPhase>,
    m: usize,
    n: usize,
    out: u64,
    out_f32: bool,
    accumulate: bool,
}

impl Gpu {
    /// The backward of LoRA adapters sharing one upstream gradient (see
    /// [`crate::lora_backward::reference::lora_backward`]): returns each adapter's dA and dB, and
    /// writes dX `[m, k]` into `dx` (added to what it holds with `accumulate`: the QKV projections of
    /// one input sum their dX). Deterministic: the same inputs give bit-identical gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn lora_backward<T: Element, S: DevicePtr<T>>(
        &self,
        x: &impl DevicePtr<T>,
        grad_output: &impl DevicePtr<T>,
        weight: DxWeight<'_, S>,
        adapters: &[LoraAdapter<'_, S>],
        shape: LoraShape,
        dx: &mut impl DevicePtrMut<T>,
        accumulate: bool,
    ) -> Result<Vec<AdapterGrads<CudaSlice<T>>>> {
        let steps: Vec<BackwardStep<'_, S, CudaSlice<f32>>> = adapters
            .iter()
            .map(|&adapter| BackwardStep {
                adapter,
                dora: None,
            })
            .collect();
        self.backward_chain(x, grad_output, weight, &steps, shape, dx, accumulate)
    }

    /// The backward of one DoRA adapter (see [`crate::lora_backward::reference::dora_backward`]):
    /// dA, dB and d magnitude, and dX into `dx`. `dora.norm` is the detached norm the forward's
    /// factor came from ([`crate::DoraFactor::norms`]).
    #[allow(clippy::too_many_arguments)]
    pub fn dora_backward<T: Element, S: DevicePtr<T>>(
        &self,
        x: &impl DevicePtr<T>,
        grad_output: &impl DevicePtr<T>,
        weight: DxWeight<'_, S>,
        adapter: LoraAdapter<'_, S>,
        dora: DoraSaved<'_, S, CudaSlice<f32>>,
        shape: LoraShape,
        dx: &mut impl DevicePtrMut<T>,
        accumulate: bool,
    ) -> Result<AdapterGrads<CudaSlice<T>>> {
        let step = BackwardStep {
            adapter,
            dora: Some(dora),
        };
        let mut grads =
            self.backward_chain(x, grad_output, weight, &[step], shape, dx, accumulate)?;
        grads
            .pop()
            .ok_or_else(|| invalid("adapters", "one adapter's gradients", "none"))
    }

    /// The backward of a chain of adapters applied in order after the base (see
    /// [`crate::lora_backward::reference::backward`]): the gradients in `steps`' order, dX into `dx`.
    /// Allocates its scratch and the gradients on the stream; [`Gpu::backward_chain_into`] takes
    /// them from the caller instead (no allocation: capturable).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_chain<T: Element, S: DevicePtr<T>>(
        &self,
        x: &impl DevicePtr<T>,
        grad_output: &impl DevicePtr<T>,
        weight: DxWeight<'_, S>,
        steps: &[BackwardStep<'_, S, CudaSlice<f32>>],
        shape: LoraShape,
        dx: &mut impl DevicePtrMut<T>,
        accumulate: bool,
    ) -> Result<Vec<AdapterGrads<CudaSlice<T>>>> {
        self.validate_chain(x, grad_output, weight, steps, shape, dx)?;
        let ranks: Vec<usize> = steps.iter().map(|st| st.adapter.rank).collect();
        let doras = steps.iter().filter(|st| st.dora.is_some()).count();
        let mut scratch = self.backward_scratch(shape.m, &ranks, doras, shape.n)?;
        let mut grads = self.adapter_grads::<T, S>(steps, shape)?;
        let accumulate = Accumulate {
            dx: accumulate,
            grads: false,
        };
        self.backward_chain_into(
            x,
            grad_output,
            weight,
            steps,
            shape,
            dx,
            &mut grads,
            &mut scratch,
            accumulate,
        )?;
        Ok(grads)
    }

    /// Zeroed gradient buffers for `steps` on `shape` (dA `[r, k]`, dB `[n, r]`, d magnitude `[n]`
    /// for DoRA), for [`Gpu::backward_chain_into`].
    pub fn adapter_grads<T: Element, S: DevicePtr<T>>(
        &self,
        steps: &[BackwardStep<'_, S, CudaSlice<f32>>],
        shape: LoraShape,
    ) -> Result<Vec<AdapterGrads<CudaSlice<T>>>> {
        let LoraShape { k, n, .. } = shape;
        let s = self.stream();
        steps
            .iter()
            .map(|st| {
                let r = st.adapter.rank;
                Ok(AdapterGrads {
                    lora_a: s.alloc_zeros(r.saturating_mul(k))?,
                    lora_b: s.alloc_zeros(n.saturating_mul(r))?,
                    magnitude: match st.dora {
                        Some(_) => Some(s.alloc_zeros(n)?),
                        None => None,
                    },
                })
            })
            .collect()
    }

    /// Scratch for backwards of up to `max_m` rows with adapters of `ranks` (in chain order),
    /// `doras` of them DoRA, on n output features: L and H, f32 `[m, r]` per adapter, and one f32
    /// `[n]` column scale per DoRA adapter. Allocated once; every [`Gpu::backward_chain_into`] that
    /// fits it allocates nothing.
    pub fn backward_scratch(
        &self,
        max_m: usize,
        ranks: &[usize],
        doras: usize,
        n: usize,
    ) -> Result<BackwardScratch> {
        let len = scratch_len(max_m, ranks.iter().copied(), doras, n)
            .ok_or_else(|| invalid("max_m", "a scratch size that fits in memory", max_m))?;
        Ok(BackwardScratch {
            values: self.stream().alloc_zeros(len.max(1))?,
        })
    }

    /// Checks a chain backward's arguments (see [`super::validate_backward`]) and its dX buffer.
    fn validate_chain<T: Element, S: DevicePtr<T>>(
        &self,
        x: &impl DevicePtr<T>,
        grad_output: &impl DevicePtr<T>,
        weight: DxWeight<'_, S>,
        steps: &[BackwardStep<'_, S, CudaSlice<f32>>],
        shape: LoraShape,
        dx: &impl DevicePtrMut<T>,
    ) -> Result<()> {
        let LoraShape { m, k, n } = shape;
        let weight_len = match weight {
            DxWeight::Skip => None,
            DxWeight::Dense(w) => Some(w.len()),
            DxWeight::Quantized(q) => {
                if q.shape() != [n, k] {
                    return Err(invalid(
                        "weight",
                        format!("a quantised W of shape [n={n}, k={k}]"),
                        format!("{:?}", q.shape()),
                    ));
                }
                Some(n * k)
            }
        };
        validate_backward(
            shape,
            x.len(),
            grad_output.len(),
            weight_len,
            &step_lens(steps, |s: &S| s.len(), |s: &CudaSlice<f32>| s.len()),
        )?;
        crate::validate::at_least("dx", dx.len(), Some(m * k), &format!("[m={m}, k={k}]"))?;
        self.check_dtype(T::DTYPE, "the backward")?;
        // Every tile count fits the kernels' 32-bit grid.
        for (rows, cols) in [(m, k), (n, crate::MAX_RANK), (m, crate::MAX_RANK)] {
            tiles(rows, cols)?;
        }
        Ok(())
    }

    /// [`Gpu::backward_chain`] into caller-owned buffers: the gradients into `grads` (one entry per
    /// step, from [`Gpu::adapter_grads`]; added to what they hold with `accumulate.grads`, for
    /// gradient accumulation over micro-batches), dX into `dx` (added with `accumulate.dx`), the
    /// scratch from `scratch` ([`Gpu::backward_scratch`]). Allocates nothing, so a training step
    /// can be captured in a CUDA graph. Every buffer is checked before anything is launched.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_chain_into<T: Element, S: DevicePtr<T>>(
        &self,
        x: &impl DevicePtr<T>,
        grad_output: &impl DevicePtr<T>,
        weight: DxWeight<'_, S>,
        steps: &[BackwardStep<'_, S, CudaSlice<f32>>],
        shape: LoraShape,
        dx: &mut impl DevicePtrMut<T>,
        grads: &mut [AdapterGrads<CudaSlice<T>>],
        scratch: &mut BackwardScratch,
        accumulate: Accumulate,
    ) -> Result<()> {
        self.validate_chain(x, grad_output, weight, steps, shape, dx)?;
        let LoraShape { m, k, n } = shape;
        if grads.len() != steps.len() {
            return Err(invalid(
                "grads",
                format!("{} entries (one per adapter)", steps.len()),
                grads.len(),
            ));
        }
        for (i, (st, gr)) in steps.iter().zip(grads.iter()).enumerate() {
            let r = st.adapter.rank;
            let at = |what: &str| format!("grads[{i}].{what}");
            crate::validate::at_least(
                &at("lora_a"),
                gr.lora_a.len(),
                r.checked_mul(k),
                &format!("[rank={r}, k={k}]"),
            )?;
            crate::validate::at_least(
                &at("lora_b"),
                gr.lora_b.len(),
                n.checked_mul(r),
                &format!("[n={n}, rank={r}]"),
            )?;
            match (&st.dora, &gr.magnitude) {
                (Some(_), Some(g)) => crate::validate::at_least(
                    &at("magnitude"),
                    g.len(),
                    Some(n),
                    &format!("[n={n}]"),
                )?,
                (None, None) => {}
                (Some(_), None) => {
                    return Err(invalid(
                        at("magnitude"),
                        "a buffer (a DoRA adapter)",
                        "none",
                    ))
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        at("magnitude"),
                        "none (a LoRA adapter)",
                        "a buffer",
                    ))
                }
            }
        }
        let doras = steps.iter().filter(|st| st.dora.is_some()).count();
        let need = scratch_len(m, steps.iter().map(|st| st.adapter.rank), doras, n);
        if need.is_none_or(|need| need > scratch.values.len()) {
            return Err(invalid(
                "scratch",
                format!("at least {need:?} f32 values (2·m·Σr + n per DoRA adapter)"),
                scratch.values.len(),
            ));
        }

        let stream = self.stream().clone();
        let mut guards: Vec<SyncOnDrop<'_>> = Vec::new();
        let (x_ptr, g) = x.device_ptr(&stream);
        guards.push(g);
        let (g_ptr, g) = grad_output.device_ptr(&stream);
        guards.push(g);
        let (base_weight, weight_guards) = match weight {
            DxWeight::Skip => (None, Vec::new()),
            DxWeight::Dense(w) => {
                let (p, g) = w.device_ptr(&stream);
                (Some(LinearWeight::Dense(p)), vec![g])
            }
            DxWeight::Quantized(q) => {
                let (op, g) = q.operand(&stream);
                (Some(op), g)
            }
        };
        guards.extend(weight_guards);
        let (scratch_ptr, g) = scratch.values.device_ptr_mut(&stream);
        guards.push(g);
        let f32_at = |offset: usize| scratch_ptr + (offset * std::mem::size_of::<f32>()) as u64;
        let elem = LoraBackwardKind_LORA_BACKWARD_ELEMENT;
        let f32k = LoraBackwardKind_LORA_BACKWARD_F32;

        // Every buffer's address, its guard held until the launches are enqueued; L, H and the
        // DoRA column scales laid out in the scratch one after another.
        let mut ptrs: Vec<StepPtrs> = Vec::with_capacity(steps.len());
        let mut offset = 0usize;
        let mut scale_offset = 2 * m * steps.iter().map(|st| st.adapter.rank).sum::<usize>();
        for (st, grad) in steps.iter().zip(grads.iter_mut()) {
            let r = st.adapter.rank;
            let mut p = StepPtrs::default();
            let mut take = |pg| keep(&mut guards, pg);
            p.a = take(st.adapter.lora_a.device_ptr(&stream));
            p.b = take(st.adapter.lora_b.device_ptr(&stream));
            p.l = f32_at(offset);
            p.h = f32_at(offset + m * r);
            offset += 2 * m * r;
            p.da = take(grad.lora_a.device_ptr_mut(&stream));
            p.db = take(grad.lora_b.device_ptr_mut(&stream));
            if let (Some(d), Some(dmag)) = (st.dora, grad.magnitude.as_mut()) {
                p.dmag = take(dmag.device_ptr_mut(&stream));
                p.scale = f32_at(scale_offset);
                scale_offset += n;
                p.magnitude = take(d.magnitude.device_ptr(&stream));
                p.norm = take(d.norm.device_ptr(&stream));
                p.base = take(d.base.device_ptr(&stream));
                if let Some(b) = d.bias {
                    p.bias = take(b.device_ptr(&stream));
                }
            }
            ptrs.push(p);
        }

        // The DoRA factors, last adapter first: `column_scale` is the product of the factors of the
        // DoRA adapters after the current one (0: none yet). Per step: the scale of its G_f (its own
        // factor included) and the scale of its magnitude gradient (the later adapters' only).
        let mut column_scale: u64 = 0;
        let mut step_scales = vec![(0u64, 0u64); steps.len()];
        for ((st, p), sc) in steps.iter().zip(&ptrs).zip(step_scales.iter_mut()).rev() {
            let later = column_scale;
            if st.dora.is_some() {
                self.launch_factor::<T>(&LoraBackwardFactorParams {
                    column_scale: later,
                    magnitude: p.magnitude,
                    norm: p.norm,
                    out: p.scale,
                    n: n as i32,
                    pad: 0,
                })?;
                column_scale = p.scale;
            }
            *sc = (column_scale, later);
        }
        let plain = |p: LoraBackwardPhase, m, n, out, out_f32| Product {
            phases: vec![p],
            m,
            n,
            out,
            out_f32,
            accumulate: false,
        };
        // First launch(es): L = x·Aᵀ and H = G_f·B [m, r] of every adapter.
        let mut first = Vec::with_capacity(2 * steps.len());
        // Second: dB = s·G_fᵀ·L [n, r], dA = s·Hᵀ·x [r, k], and dX.
        let mut second = Vec::with_capacity(2 * steps.len() + 1);
        let mut dx_phases: Vec<LoraBackwardPhase> = Vec::with_capacity(steps.len() + 1);
        if let Some(w) = base_weight {
            let g_base = LoraBackwardOperand {
                col_scale: column_scale,
                ..operand(g_ptr, elem, n, 1)
            };
            let (data, kind) = match w {
                LinearWeight::Dense(p) => (p, elem),
                LinearWeight::Quant4(q) => (q.packed, LoraBackwardKind_LORA_BACKWARD_QUANT4),
                LinearWeight::Int8 { cb, .. } => (cb, LoraBackwardKind_LORA_BACKWARD_INT8),
            };
            dx_phases.push(phase(g_base, operand(data, kind, k, 1), n, 1.0));
        }
        for ((st, p), &(g_scale, _)) in steps.iter().zip(&ptrs).zip(&step_scales) {
            let (r, s) = (st.adapter.rank, st.adapter.scale);
            let x_op = operand(x_ptr, elem, k, 1);
            first.push(plain(
                phase(x_op, operand(p.a, elem, 1, k), k, 1.0),
                m,
                r,
                p.l,
                true,
            ));
            let g_f = LoraBackwardOperand {
                col_scale: g_scale,
                ..operand(g_ptr, elem, n, 1)
            };
            first.push(plain(
                phase(g_f, operand(p.b, elem, r, 1), n, 1.0),
                m,
                r,
                p.h,
                true,
            ));
            let g_f_t = LoraBackwardOperand {
                row_scale: g_scale,
                ..operand(g_ptr, elem, 1, n)
            };
            second.push(Product {
                accumulate: accumulate.grads,
                ..plain(
                    phase(g_f_t, operand(p.l, f32k, r, 1), m, s),
                    n,
                    r,
                    p.db,
                    false,
                )
            });
            second.push(Product {
                accumulate: accumulate.grads,
                ..plain(
                    phase(operand(p.h, f32k, 1, r), x_op, m, s),
                    r,
                    k,
                    p.da,
                    false,
                )
            });
            // dX += s·H·A
            dx_phases.push(phase(
                operand(p.h, f32k, r, 1),
                operand(p.a, elem, k, 1),
                r,
                s,
            ));
        }
        let (dx_ptr, g) = dx.device_ptr_mut(&stream);
        guards.push(g);
        second.push(Product {
            phases: dx_phases,
            m,
            n: k,
            out: dx_ptr,
            out_f32: false,
            accumulate: accumulate.dx,
        });
        self.launch_products::<T>(&first, base_weight, k)?;
        self.launch_products::<T>(&second, base_weight, k)?;
        for ((st, p), &(_, later)) in steps.iter().zip(&ptrs).zip(&step_scales) {
            if st.dora.is_some() {
                self.launch_magnitude::<T>(&LoraBackwardMagnitudeParams {
                    grad_output: g_ptr,
                    column_scale: later,
                    base: p.base,
                    bias: p.bias,
                    hidden: p.l,
                    lora_b: p.b,
                    norm: p.norm,
                    out: p.dmag,
                    m: m as i32,
                    n: n as i32,
                    rank: st.adapter.rank as i32,
                    scale: st.adapter.scale,
                    accumulate: accumulate.grads as i32,
                    pad: 0,
                })?;
            }
        }
        drop(guards);
        Ok(())
    }

    /// Launches independent `products` in as few launches as the parameter block holds
    /// (LORA_BACKWARD_MAX_JOBS outputs, LORA_BACKWARD_MAX_PHASES products): an output of more
    /// products than one launch holds continues in later launches that accumulate into it.
    fn launch_products<T: Element>(
        &self,
        products: &[Product],
        weight: Option<LinearWeight>,
        weight_k: usize,
    ) -> Result<()> {
        let max_phases = LORA_BACKWARD_MAX_PHASES as usize;
        let (mut batch, mut later): (Vec<Product>, Vec<Product>) = (Vec::new(), Vec::new());
        for p in products {
            for (i, chunk) in p.phases.chunks(max_phases).enumerate() {
                let part = Product {
                    phases: chunk.to_vec(),
                    accumulate: p.accumulate || i > 0,
                    ..*p
                };
                if i == 0 {
                    batch.push(part);
                } else {
                    later.push(part);
                }
            }
        }
        let mut launch: Vec<&Product> = Vec::new();
        let mut phases = 0;
        for p in &batch {
            if launch.len() == LORA_BACKWARD_MAX_JOBS as usize
                || phases + p.phases.len() > max_phases
            {
                self.launch_jobs::<T>(&launch, weight, weight_k)?;
                launch.clear();
                phases = 0;
            }
            phases += p.phases.len();
            launch.push(p);
        }
        if !launch.is_empty() {
            self.launch_jobs::<T>(&launch, weight, weight_k)?;
        }
        for p in &later {
            self.launch_jobs::<T>(&[p], weight, weight_k)?;
        }
        Ok(())
    }

    /// One launch of `jobs` (within the parameter block's limits).
    fn launch_jobs<T: Element>(
        &self,
        jobs: &[&Product],
        weight: Option<LinearWeight>,
        weight_k: usize,
    ) -> Result<()> {
        let mut params = LoraBackwardProductParams {
            num_jobs: jobs.len() as i32,
            weight_k: weight_k as i32,
            cuda_cores: !tensor_cores() as i32,
            ..Default::default()
        };
        match weight {
            Some(LinearWeight::Quant4(q)) => params.quant4 = q,
            Some(LinearWeight::Int8 { scb, .. }) => params.scb = scb,
            _ => {}
        }
        let (mut first_phase, mut tile_start) = (0usize, 0u32);
        for (slot, p) in params.jobs.iter_mut().zip(jobs) {
            params.phases[first_phase..first_phase + p.phases.len()].copy_from_slice(&p.phases);
            *slot = LoraBackwardJob {
                out: p.out,
                m: p.m as i32,
                n: p.n as i32,
                first_phase: first_phase as i32,
                num_phases: p.phases.len() as i32,
                out_kind: if p.out_f32 {
                    LoraBackwardKind_LORA_BACKWARD_F32
                } else {
                    LoraBackwardKind_LORA_BACKWARD_ELEMENT
                } as i32,
                accumulate: p.accumulate as i32,
                tile_start: tile_start as i32,
                pad: 0,
            };
            first_phase += p.phases.len();
            tile_start = tile_start
                .checked_add(tiles(p.m, p.n)?)
                .filter(|&t| t <= i32::MAX as u32)
                .ok_or_else(|| invalid("shape", "at most 2^31 - 1 tiles in one launch", "more"))?;
        }
        let (func, _) = self.kernel(
            KernelModule::LoraBackward,
            &format!("lora_backward_product_{}", T::DTYPE.name()),
            LORA_BACKWARD_THREADS,
        )?;
        // SAFETY: every operand was validated by `backward_chain` to hold the [rows, cols] its
        // strides address (x [m, k], G [m, n], A [r, k], B [n, r], W [n, k]) or was allocated there
        // (L, H [m, r]; the gradients); the grid is every job's tiles, one block each (checked to
        // fit), and the jobs and phases fit the parameter block (at most LORA_BACKWARD_MAX_*).
        unsafe { self.launch(&func, (tile_start, 1), LORA_BACKWARD_THREADS, &params) }
    }

    fn launch_magnitude<T: Element>(&self, p: &LoraBackwardMagnitudeParams) -> Result<()> {
        let (func, _) = self.kernel(
            KernelModule::LoraBackward,
            &format!("lora_backward_magnitude_{}", T::DTYPE.name()),
            LORA_BACKWARD_THREADS,
        )?;
        let blocks = (p.n as u32).div_ceil(LORA_BACKWARD_MAGNITUDE_COLUMNS);
        // SAFETY: G and base [m, n], bias, magnitude and norm [n], B [n, rank] validated; L [m, rank]
        // and out [n] allocated by the caller; one block per 32 columns.
        unsafe { self.launch(&func, (blocks, 1), LORA_BACKWARD_THREADS, p) }
    }

    fn launch_factor<T: Element>(&self, p: &LoraBackwardFactorParams) -> Result<()> {
        let (func, _) = self.kernel(
            KernelModule::LoraBackward,
            &format!("lora_backward_factor_{}", T::DTYPE.name()),
            LORA_BACKWARD_THREADS,
        )?;
        let blocks = (p.n as u32).div_ceil(LORA_BACKWARD_THREADS);
        // SAFETY: magnitude and norm [n] validated; out and column_scale [n] allocated by the caller.
        unsafe { self.launch(&func, (blocks, 1), LORA_BACKWARD_THREADS, p) }
    }
}

/// Whether f16/bf16 products run on tensor cores (the default; `LORA_KERNELS_BACKWARD=cuda-cores`
/// keeps them on the f32 CUDA-core path, for comparison).
fn tensor_cores() -> bool {
    std::env::var("LORA_KERNELS_BACKWARD").map_or(true, |v| v != "cuda-cores")
}

/// Keeps a buffer's guard until the launches are enqueued and returns its address.
fn keep<'s>(guards: &mut Vec<SyncOnDrop<'s>>, (ptr, guard): (u64, SyncOnDrop<'s>)) -> u64 {
    guards.push(guard);
    ptr
}

/// The blocks of a `[rows, cols]` product: one per 64 x 64 tile, in a 32-bit grid.
fn tiles(rows: usize, cols: usize) -> Result<u32> {
    let t = rows
        .div_ceil(LORA_BACKWARD_TILE_M as usize)
        .checked_mul(cols.div_ceil(LORA_BACKWARD_TILE_N as usize));
    match t.and_then(|t| u32::try_from(t).ok()) {
        Some(t) if t <= i32::MAX as u32 => Ok(t),
        _ => Err(invalid(
            "shape",
            "at most 2^31 - 1 tiles of 64 x 64 in a gradient",
            format!("[{rows}, {cols}]"),
        )),
    }
}
