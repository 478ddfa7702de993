//! The DoRA forwards on the GPU: the fused LoRA kernel of the `lora` family (`kernels/lora.cu`)
//! with its DoRA epilogue (the factor f applied to the base-minus-bias plus the LoRA term), from the
//! base layer's output, in place, or after the crate's own base product.
use super::gpu::{check_factor, lens};
use super::DoraFactor;
use crate::device::Gpu;
use crate::error::Result;
use crate::lora::gpu::DoraEpilogue;
use crate::lora::{LoraAdapter, LoraShape};
use crate::validate::{validate_bias, validate_lora_forward};
use crate::Element;
use cudarc::driver::{CudaView, DevicePtr, DevicePtrMut};

impl Gpu {
    /// The DoRA forward from the base layer's output, one fused launch:
    /// `y = bias + f ⊙ (base − bias + s·(x·Aᵀ)·Bᵀ)` with x [m, k], base and y [m, n], the layer's
    /// bias `[n]` (if any) and its cached factor f. With f = m / ‖W + s·B·A‖ and base = x·Wᵀ + bias this
    /// is peft's eval forward `bias + f ⊙ (x·(W + s·B·A)ᵀ)`.
    #[allow(clippy::too_many_arguments)]
    pub fn dora_forward<T, X, B, S, Y>(
        &self,
        x: &X,
        base: &B,
        bias: Option<&CudaView<'_, T>>,
        adapter: LoraAdapter<'_, S>,
        factor: &DoraFactor,
        shape: LoraShape,
        y: &mut Y,
    ) -> Result<()>
    where
        T: Element,
        X: DevicePtr<T>,
        B: DevicePtr<T>,
        S: DevicePtr<T>,
        Y: DevicePtrMut<T>,
    {
        validate_lora_forward(shape, x.len(), Some(base.len()), y.len(), &[lens(&adapter)])?;
        check_factor(factor, shape.n)?;
        validate_bias(bias.map(|b| b.len()), shape.n)?;
        let stream = self.stream().clone();
        let (base_ptr, _gb) = base.device_ptr(&stream);
        let (factor_ptr, _gf) = factor.values.device_ptr(&stream);
        let bias_guard = bias.map(|b| b.device_ptr(&stream));
        let epilogue = DoraEpilogue {
            factor: factor_ptr,
            bias: bias_guard.as_ref().map_or(0, |(p, _)| *p),
        };
        self.lora_forward_launch::<T, X, S, Y>(
            x,
            Some(base_ptr),
            &[adapter],
            shape,
            y,
            Some(epilogue),
        )
    }

    /// The DoRA forward in place: y holds the base layer's output `x·Wᵀ + bias` on entry and
    /// `bias + f ⊙ (y − bias + s·(x·Aᵀ)·Bᵀ)` on return (one fused launch, as [`Gpu::dora_forward`]).
    pub fn dora_forward_inplace<T, X, S, Y>(
        &self,
        x: &X,
        bias: Option<&CudaView<'_, T>>,
        adapter: LoraAdapter<'_, S>,
        factor: &DoraFactor,
        shape: LoraShape,
        y: &mut Y,
    ) -> Result<()>
    where
        T: Element,
        X: DevicePtr<T>,
        S: DevicePtr<T>,
        Y: DevicePtrMut<T>,
    {
        validate_lora_forward(shape, x.len(), None, y.len(), &[lens(&adapter)])?;
        check_factor(factor, shape.n)?;
        validate_bias(bias.map(|b| b.len()), shape.n)?;
        let stream = self.stream().clone();
        let (factor_ptr, _gf) = factor.values.device_ptr(&stream);
        let bias_guard = bias.map(|b| b.device_ptr(&stream));
        let epilogue = DoraEpilogue {
            factor: factor_ptr,
            bias: bias_guard.as_ref().map_or(0, |(p, _)| *p),
        };
        self.lora_forward_launch::<T, X, S, Y>(x, None, &[adapter], shape, y, Some(epilogue))
    }

    /// The DoRA forward when the caller has no base output: the crate computes it,
    /// `y = bias + f ⊙ (x·Wᵀ + s·(x·Aᵀ)·Bᵀ)` for W `[n, k]`, in two launches: the base product
    /// `y = x·Wᵀ + bias` ([`Gpu::linear`]: a GEMV at decode sizes, tiled above), then the fused LoRA
    /// forward with the DoRA epilogue in place on y (y is read once more and written once more; the
    /// rank-r work is the same as [`Gpu::dora_forward`]).
    #[allow(clippy::too_many_arguments)]
    pub fn dora_forward_linear<T, X, W, S, Y>(
        &self,
        x: &X,
        weight: &W,
        bias: Option<&CudaView<'_, T>>,
        adapter: LoraAdapter<'_, S>,
        factor: &DoraFactor,
        shape: LoraShape,
        y: &mut Y,
    ) -> Result<()>
    where
        T: Element,
        X: DevicePtr<T>,
        W: DevicePtr<T>,
        S: DevicePtr<T>,
        Y: DevicePtrMut<T>,
    {
        validate_lora_forward(shape, x.len(), None, y.len(), &[lens(&adapter)])?;
        check_factor(factor, shape.n)?;
        self.linear(x, weight, bias, shape, y)?;
        self.dora_forward_inplace(x, bias, adapter, factor, shape, y)
    }
}
