//! The CPU reference of the mixed-adapter batch: each row through the plain LoRA reference with its
//! own adapter (or none).
use crate::error::{invalid, Result};
use crate::lora::reference::lora_forward;
use crate::lora::{LoraAdapter, LoraShape};
use crate::validate::{validate_lora_forward, AdapterLens};
use crate::Element;

/// peft's mixed batch (`adapter_names`): row i of x uses `adapters[indices[i]]`, or no adapter when
/// `indices[i]` is −1 (peft's `"__base__"`): `y[i] = base[i] + s·(x[i]·Aᵀ)·Bᵀ` of that adapter.
pub fn lora_forward_mixed<T: Element>(
    x: &[T],
    base: &[T],
    adapters: &[LoraAdapter<'_, [T]>],
    indices: &[i32],
    shape: LoraShape,
) -> Result<Vec<T>> {
    let LoraShape { m, k, n } = shape;
    validate_lora_forward(
        shape,
        x.len(),
        Some(base.len()),
        m * n,
        &AdapterLens::of(adapters, <[T]>::len),
    )?;
    if indices.len() < m {
        return Err(invalid(
            "indices",
            format!("at least {m} entries (one per row)"),
            indices.len(),
        ));
    }
    if let Some(row) = indices[..m]
        .iter()
        .position(|&i| i < -1 || i >= adapters.len() as i32)
    {
        return Err(invalid(
            format!("indices[{row}]"),
            format!("-1 (no adapter) to {}", adapters.len() as i32 - 1),
            indices[row],
        ));
    }
    let mut out = base[..m * n].to_vec();
    for i in 0..m {
        if indices[i] < 0 {
            continue;
        }
        let ad = adapters[indices[i] as usize];
        let row = lora_forward(
            &x[i * k..(i + 1) * k],
            &base[i * n..(i + 1) * n],
            &[ad],
            LoraShape::new(1, k, n),
        )?;
        out[i * n..(i + 1) * n].copy_from_slice(&row);
    }
    Ok(out)
}
