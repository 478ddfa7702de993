//! The fused LoRA forward `y = base + Σᵢ sᵢ · (x · Aᵢᵀ) · Bᵢᵀ`: shapes, validation, CPU reference and
//! GPU launch.
//!
//! Layouts are row-major: x [m, k], Aᵢ [rᵢ, k], Bᵢ [n, rᵢ], base and y [m, n]. `base` is what the
//! caller's base layer produced (peft's `result = base_layer(x)`, bias included). Several adapters are
//! summed in one call, as peft does for several active adapters; the scale sᵢ is the caller's number
//! (`alpha / r`, or `alpha / sqrt(r)` for rsLoRA).
pub(crate) mod gemv;
pub(crate) mod gpu;
mod mixed;
pub mod reference;

pub use mixed::MixedAdapters;

use crate::error::{invalid, Result};

/// Largest rank one adapter may have.
pub const MAX_RANK: usize = 256;

/// The dimensions of a LoRA forward: x is [m, k], y is [m, n].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraShape {
    /// Rows of x and y (tokens).
    pub m: usize,
    /// Input features (columns of x and of A).
    pub k: usize,
    /// Output features (columns of y, rows of B).
    pub n: usize,
}

impl LoraShape {
    /// A shape with x [m, k] and y [m, n].
    pub fn new(m: usize, k: usize, n: usize) -> Self {
        LoraShape { m, k, n }
    }
}

/// One LoRA adapter: A [rank, k], B [n, rank] and its scale s.
///
/// `S` is the storage: `[T]` on the host, a `CudaSlice<T>` or `CudaView<T>` on the GPU.
#[derive(Debug)]
pub struct LoraAdapter<'a, S: ?Sized> {
    /// A, row-major [rank, k] (peft's `lora_A.weight`).
    pub lora_a: &'a S,
    /// B, row-major [n, rank] (peft's `lora_B.weight`).
    pub lora_b: &'a S,
    /// The adapter's rank r, 1 to [`MAX_RANK`].
    pub rank: usize,
    /// The scale s: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub scale: f32,
}

impl<S: ?Sized> Clone for LoraAdapter<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S: ?Sized> Copy for LoraAdapter<'_, S> {}

impl<'a, S: ?Sized> LoraAdapter<'a, S> {
    /// An adapter from A [rank, k], B [n, rank] and its scale.
    pub fn new(lora_a: &'a S, lora_b: &'a S, rank: usize, scale: f32) -> Self {
        LoraAdapter {
            lora_a,
            lora_b,
            rank,
            scale,
        }
    }
}

/// The lengths of one adapter's buffers, for validation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdapterLens {
    pub rank: usize,
    pub a_len: usize,
    pub b_len: usize,
    pub scale: f32,
}

impl AdapterLens {
    /// The lengths of `adapters`' buffers, measured by `len` (host slices and device buffers alike).
    pub(crate) fn of<S: ?Sized>(
        adapters: &[LoraAdapter<'_, S>],
        len: impl Fn(&S) -> usize,
    ) -> Vec<Self> {
        adapters
            .iter()
            .map(|a| AdapterLens {
                rank: a.rank,
                a_len: len(a.lora_a),
                b_len: len(a.lora_b),
                scale: a.scale,
            })
            .collect()
    }
}

/// Checks one adapter (rank, scale, lengths of A [rank, k] and B [n, rank]); `name` prefixes the
/// argument names in errors (`adapters[1]`, `adapter`).
pub(crate) fn validate_adapter(name: &str, ad: &AdapterLens, k: usize, n: usize) -> Result<()> {
    if ad.rank == 0 || ad.rank > MAX_RANK {
        return Err(invalid(
            format!("{name}.rank"),
            format!("1 to {MAX_RANK}"),
            ad.rank,
        ));
    }
    if !ad.scale.is_finite() {
        return Err(invalid(
            format!("{name}.scale"),
            "a finite number",
            ad.scale,
        ));
    }
    let r = ad.rank;
    at_least(
        &format!("{name}.lora_a"),
        ad.a_len,
        r.checked_mul(k),
        &format!("[rank={r}, k={k}]"),
    )?;
    at_least(
        &format!("{name}.lora_b"),
        ad.b_len,
        n.checked_mul(r),
        &format!("[n={n}, rank={r}]"),
    )
}

/// A buffer of `len` elements must hold `want` (None: the size overflowed); `what` names the shape.
pub(crate) fn at_least(name: &str, len: usize, want: Option<usize>, what: &str) -> Result<()> {
    match want {
        Some(w) if len >= w => Ok(()),
        Some(w) => Err(invalid(
            name,
            format!("at least {w} elements ({what})"),
            format!("{len} elements"),
        )),
        None => Err(invalid(
            name,
            format!("a size that fits in memory ({what})"),
            "an overflow",
        )),
    }
}

/// Checks an optional bias of `len` elements against n output features.
pub(crate) fn validate_bias(len: Option<usize>, n: usize) -> Result<()> {
    match len {
        Some(len) => at_least("bias", len, Some(n), &format!("[n={n}]")),
        None => Ok(()),
    }
}

/// Checks that every dimension is at least 1 and fits the kernels' 32-bit indices.
pub(crate) fn validate_dims(dims: &[(&str, usize)]) -> Result<()> {
    for &(name, v) in dims {
        if v == 0 {
            return Err(invalid(name, "at least 1 (no empty matrices)", 0));
        }
        if v > i32::MAX as usize {
            return Err(invalid(name, format!("at most {}", i32::MAX), v));
        }
    }
    Ok(())
}

/// Checks a LoRA forward's arguments: the one validation shared by the CPU and GPU paths.
///
/// Buffers may be longer than needed (views into larger allocations); shorter is an error.
pub(crate) fn validate_lora_forward(
    shape: LoraShape,
    x_len: usize,
    base_len: Option<usize>,
    y_len: usize,
    adapters: &[AdapterLens],
) -> Result<()> {
    let LoraShape { m, k, n } = shape;
    validate_dims(&[("shape.m", m), ("shape.k", k), ("shape.n", n)])?;
    at_least("x", x_len, m.checked_mul(k), &format!("[m={m}, k={k}]"))?;
    if let Some(base_len) = base_len {
        at_least(
            "base",
            base_len,
            m.checked_mul(n),
            &format!("[m={m}, n={n}]"),
        )?;
    }
    at_least("y", y_len, m.checked_mul(n), &format!("[m={m}, n={n}]"))?;
    for (i, ad) in adapters.iter().enumerate() {
        validate_adapter(&format!("adapters[{i}]"), ad, k, n)?;
    }
    Ok(())
}
