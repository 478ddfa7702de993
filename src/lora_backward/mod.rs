//! The training backward of LoRA, DoRA and QLoRA/QDoRA layers (`kernels/lora_backward.cu`): the
//! gradients of the adapters' A, B and DoRA magnitude, and of the layer's input x, with W frozen.
//!
//! With x `[m, k]`, W `[n, k]`, A `[r, k]`, B `[n, r]`, the upstream gradient G = dL/dy `[m, n]`, the
//! scale s, and for DoRA the factor f = m / max(‖W + s·B·A‖, eps) per output column (the norm
//! detached, as peft and the DoRA paper train it), L = x·Aᵀ, G_f = G ⊙ f (f = 1 for LoRA) and
//! H = G_f·B:
//! - dB = s·G_fᵀ·L, dA = s·Hᵀ·x, dX = G_f·W + s·H·A;
//! - DoRA: d magnitude = colsum(G ⊙ (base − bias + s·L·Bᵀ)) / max(norm, eps), where base is what the
//!   forward took as its base (x·Wᵀ + bias, plus the terms of earlier adapters).
//!
//! Several active adapters are a chain, in peft's order: the base, then each adapter on the running
//! result (a DoRA adapter takes it as its base). Their gradients are independent; an adapter sees G
//! times the factors of the DoRA adapters after it, and dX sums every adapter's term and the base's.
//!
//! What the forward saves and what the backward recomputes: L is recomputed from x (m·k reads
//! against m·r written and read back; the fused forward keeps L on chip, so saving it would add a
//! store to every forward); the DoRA base (`base`) is saved by the layer's `forward_train` (it is the
//! forward's own input, so saving costs a copy of y before the in-place DoRA step), and the norm is
//! the one the forward's factor came from ([`crate::DoraFactor::norms`]).
//!
//! Layout: `reference.rs` (the CPU references, f64 accumulation), `gpu.rs` (the launches on
//! [`crate::Gpu`]).
mod gpu;
pub mod reference;

pub use gpu::{BackwardScratch, DxWeight};

/// The gradients of one adapter's trainable tensors.
#[derive(Clone, Debug)]
pub struct AdapterGrads<B> {
    /// dL/dA, `[rank, k]` (peft's `lora_A.weight.grad`).
    pub lora_a: B,
    /// dL/dB, `[n, rank]` (peft's `lora_B.weight.grad`).
    pub lora_b: B,
    /// dL/dm, `[n]`, for a DoRA adapter (peft's `lora_magnitude_vector.weight.grad`); `None` for LoRA.
    pub magnitude: Option<B>,
}

/// What a backward into caller-owned buffers adds to what they hold
/// ([`crate::Gpu::backward_chain_into`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accumulate {
    /// dX: the Q, K and V projections of one input sum theirs.
    pub dx: bool,
    /// dA, dB and d magnitude: gradient accumulation over micro-batches.
    pub grads: bool,
}

/// The gradients a backward returns: dX and each adapter's, in the order the adapters were given.
#[derive(Clone, Debug)]
pub struct Backward<B> {
    /// dL/dx, `[m, k]`.
    pub x: B,
    /// One entry per adapter.
    pub adapters: Vec<AdapterGrads<B>>,
}

/// What a DoRA adapter's backward needs beside A and B. `S` holds element-type buffers, `N` the f32
/// norms (`[f32]` on the host, a `CudaSlice<f32>` such as [`crate::DoraFactor::norms`] on the GPU).
#[derive(Debug)]
pub struct DoraSaved<'a, S: ?Sized, N: ?Sized> {
    /// The magnitude m, `[n]`.
    pub magnitude: &'a S,
    /// The detached weight norm ‖W + s·B·A‖ per output row, f32 `[n]`.
    pub norm: &'a N,
    /// The base the forward took, `[m, n]`: x·Wᵀ + bias (plus earlier adapters' terms in a chain).
    pub base: &'a S,
    /// The base layer's bias, `[n]`, if it has one.
    pub bias: Option<&'a S>,
}

impl<S: ?Sized, N: ?Sized> Clone for DoraSaved<'_, S, N> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S: ?Sized, N: ?Sized> Copy for DoraSaved<'_, S, N> {}

/// One adapter of a chain: its LoRA weights and, for DoRA, what its backward needs.
#[derive(Debug)]
pub struct BackwardStep<'a, S: ?Sized, N: ?Sized> {
    /// A, B, rank and scale.
    pub adapter: crate::LoraAdapter<'a, S>,
    /// `Some` for a DoRA adapter.
    pub dora: Option<DoraSaved<'a, S, N>>,
}

impl<S: ?Sized, N: ?Sized> Clone for BackwardStep<'_, S, N> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S: ?Sized, N: ?Sized> Copy for BackwardStep<'_, S, N> {}

/// The lengths of a DoRA step's buffers, for validation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DoraLens {
    pub magnitude: usize,
    pub norm: usize,
    pub base: usize,
    pub bias: Option<usize>,
}

/// Checks a backward's arguments (the one validation of the CPU and GPU paths): the shape, x `[m, k]`,
/// the upstream gradient `[m, n]`, W `[n, k]` when given, every adapter, and every DoRA step's
/// magnitude and norm `[n]`, base `[m, n]` and bias `[n]`. At least one adapter or a weight.
pub(crate) fn validate_backward(
    shape: crate::LoraShape,
    x_len: usize,
    grad_output_len: usize,
    weight_len: Option<usize>,
    steps: &[(crate::validate::AdapterLens, Option<DoraLens>)],
) -> crate::Result<()> {
    use crate::validate::{at_least, validate_adapter, validate_lora_forward, validate_weight};
    let crate::LoraShape { m, k, n } = shape;
    validate_lora_forward(shape, x_len, None, None, &[])?;
    at_least(
        "grad_output",
        grad_output_len,
        m.checked_mul(n),
        &format!("[m={m}, n={n}]"),
    )?;
    if let Some(len) = weight_len {
        validate_weight(len, k, n)?;
    }
    if steps.is_empty() && weight_len.is_none() {
        return Err(crate::error::invalid(
            "adapters",
            "at least one adapter, or a weight for dX",
            "neither",
        ));
    }
    for (i, (lens, dora)) in steps.iter().enumerate() {
        let name = format!("adapters[{i}]");
        validate_adapter(&name, lens, k, n)?;
        if let Some(d) = dora {
            let col = format!("[n={n}]");
            at_least(&format!("{name}.magnitude"), d.magnitude, Some(n), &col)?;
            at_least(&format!("{name}.norm"), d.norm, Some(n), &col)?;
            at_least(
                &format!("{name}.base"),
                d.base,
                m.checked_mul(n),
                &format!("[m={m}, n={n}]"),
            )?;
            if let Some(len) = d.bias {
                at_least(&format!("{name}.bias"), len, Some(n), &col)?;
            }
        }
    }
    Ok(())
}
