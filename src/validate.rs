//! Argument checks shared by every kernel family and its CPU reference: one validation per op, run
//! before anything is launched or computed, so the CPU and GPU paths reject the same inputs with the
//! same error (naming the argument, what was expected and what came).
use crate::adapter::{LoraAdapter, LoraShape, MAX_RANK};
use crate::error::{invalid, Result};

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

/// A buffer of `len` elements must hold exactly `want` (None: the size overflowed); for owned buffers
/// (a layer's adapters), where a longer buffer would be a mistake whose tail is silently ignored.
pub(crate) fn exactly(name: &str, len: usize, want: Option<usize>, what: &str) -> Result<()> {
    match want {
        Some(w) if len == w => Ok(()),
        Some(w) => Err(invalid(
            name,
            format!("exactly {w} elements ({what})"),
            format!("{len} elements"),
        )),
        None => at_least(name, len, None, what),
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
/// Buffers may be longer than needed (views into larger allocations); shorter is an error. `y_len` is
/// `None` where the caller allocates y itself (the CPU references): no size is computed before the
/// dimensions are checked, so huge dimensions are an error, never an overflow.
pub(crate) fn validate_lora_forward(
    shape: LoraShape,
    x_len: usize,
    base_len: Option<usize>,
    y_len: Option<usize>,
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
    if let Some(y_len) = y_len {
        at_least("y", y_len, m.checked_mul(n), &format!("[m={m}, n={n}]"))?;
    }
    for (i, ad) in adapters.iter().enumerate() {
        validate_adapter(&format!("adapters[{i}]"), ad, k, n)?;
    }
    Ok(())
}

/// Checks a dense base W `[n, k]` and its bias `[n]`.
pub(crate) fn validate_base<T>(
    weight_len: usize,
    bias: Option<&[T]>,
    k: usize,
    n: usize,
) -> Result<()> {
    validate_dims(&[("k", k), ("n", n)])?;
    exactly(
        "weight",
        weight_len,
        n.checked_mul(k),
        &format!("[n={n}, k={k}]"),
    )?;
    if let Some(b) = bias {
        if b.len() != n {
            return Err(invalid("bias", format!("{n} elements"), b.len()));
        }
    }
    Ok(())
}

/// Checks the arguments of a pass over the rows of W [n, k] (the DoRA norm and factor, merges) with one adapter; `magnitude` and `factor` are the
/// lengths of those buffers when the pass reads them.
pub(crate) fn validate_rows(
    k: usize,
    n: usize,
    weight_len: usize,
    adapter: &AdapterLens,
    magnitude_len: Option<usize>,
    factor_len: Option<usize>,
) -> Result<()> {
    validate_dims(&[("k", k), ("n", n)])?;
    validate_weight(weight_len, k, n)?;
    validate_adapter("adapter", adapter, k, n)?;
    if let Some(len) = magnitude_len {
        at_least("magnitude", len, Some(n), &format!("[n={n}]"))?;
    }
    if let Some(len) = factor_len {
        at_least("factor", len, Some(n), &format!("[n={n}]"))?;
    }
    Ok(())
}

/// Checks that a weight W `[n, k]` of `len` elements holds n·k of them (longer is fine: a view into
/// a larger allocation), the product checked for overflow.
pub(crate) fn validate_weight(len: usize, k: usize, n: usize) -> Result<()> {
    at_least("weight", len, n.checked_mul(k), &format!("[n={n}, k={k}]"))
}
