//! The CPU reference of the base layer's product: a dense `x · Wᵀ + bias`, accumulated in f64 and
//! rounded once (a quantised W is dequantised first by its family's reference: [`crate::quant4`],
//! [`crate::int8`]).
use crate::error::Result;
use crate::lora::LoraShape;
use crate::validate::{validate_bias, validate_lora_forward, validate_weight};
use crate::Element;

/// A dense linear layer `x · Wᵀ + bias` for x [m, k], W [n, k]: the base layer the adapters sit on.
pub fn linear<T: Element>(
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    shape: LoraShape,
) -> Result<Vec<T>> {
    let LoraShape { m, k, n } = shape;
    validate_lora_forward(shape, x.len(), None, None, &[])?;
    validate_weight(weight.len(), k, n)?;
    validate_bias(bias.map(|b| b.len()), n)?;
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for row in 0..n {
            let dot: f64 = (0..k)
                .map(|c| x[i * k + c].to_f64() * weight[row * k + c].to_f64())
                .sum();
            let b = bias.map_or(0.0, |b| b[row].to_f64());
            out.push(T::from_f64(dot + b));
        }
    }
    Ok(out)
}
