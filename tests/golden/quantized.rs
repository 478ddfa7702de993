//! The `qlora` / `qdora` layer checks shared by the 4-bit and int8 bases.
use crate::common::f64s;
use crate::Check;
use cudarc::driver::{CudaSlice, CudaView};
use lora_kernels::dora::reference as dora_reference;
use lora_kernels::golden::{tolerance, GoldenCase};
use lora_kernels::lora::reference;
use lora_kernels::{Element, Gpu, LoraAdapter, LoraShape, Result};

/// A `qlora` / `qdora` case on a quantised base on the CPU: the dequantised weight against peft's
/// (`dequantized`, exact), the base output of `base_product` against bitsandbytes', then the adapter on
/// top of bitsandbytes' own base output, as for the dense cases (the DoRA norm of `weight_t`, the
/// dequantised weight in the input dtype, as peft takes it). `output_tol` scales the dtype tolerance of
/// the final output.
pub(crate) fn quantized_layer_cpu<T: Element>(
    case: &GoldenCase,
    [n, k]: [usize; 2],
    dequantized: &[f64],
    weight_t: &[T],
    base_product: impl FnOnce(&[T], Option<&[T]>, LoraShape) -> Result<Vec<T>>,
    output_tol: f64,
) -> Result<Check> {
    let tol = tolerance(T::DTYPE);
    let mut check = Check::new();
    check.compare(
        "dequantized_weight",
        dequantized,
        &case.values_f64("dequantized_weight")?,
        0.0,
    );
    let shape = LoraShape::new(case.shape("x")?[0], k, n);
    let x: Vec<T> = case.values("x")?;
    let bias: Option<Vec<T>> = if case.has("base.bias") {
        Some(case.values("base.bias")?)
    } else {
        None
    };
    let base = base_product(&x, bias.as_deref(), shape)?;
    check.compare(
        "base_output",
        &f64s(&base),
        &case.values_f64("base_output")?,
        tol,
    );
    let base: Vec<T> = case.values("base_output")?;
    let (a, b): (Vec<T>, Vec<T>) = (case.values("lora_A")?, case.values("lora_B")?);
    let adapter = LoraAdapter::new(
        &a[..],
        &b[..],
        case.shape("lora_A")?[0],
        case.scaling()? as f32,
    );
    let out = if case.kind == "qdora" {
        let norm = dora_reference::dora_weight_norm(weight_t, adapter, k, n)?;
        let norm64: Vec<f64> = norm.iter().map(|&v| v as f64).collect();
        check.compare(
            "weight_norm",
            &norm64,
            &case.values_f64("weight_norm")?,
            tol,
        );
        let factor = dora_reference::dora_factor(&case.values::<T>("magnitude")?, &norm)?;
        dora_reference::dora_forward(&x, &base, bias.as_deref(), adapter, &factor, shape)?
    } else {
        reference::lora_forward(&x, &base, &[adapter], shape)?
    };
    check.compare(
        "output",
        &f64s(&out),
        &case.values_f64("output")?,
        output_tol * tol,
    );
    Ok(check)
}

/// A `qlora` / `qdora` case on a quantised base on the GPU: `base_product` computes the base output
/// `x·dequant(W)ᵀ + bias` (compared with bitsandbytes'), `dense` gives the dequantised W in `T` for the
/// DoRA norm, then the adapter goes through the fused LoRA or DoRA forward. `output_tol` scales the
/// dtype tolerance of the final output.
pub(crate) fn quantized_layer_gpu<T: Element>(
    gpu: &Gpu,
    case: &GoldenCase,
    [n, k]: [usize; 2],
    base_product: impl FnOnce(
        &CudaSlice<T>,
        Option<&CudaView<'_, T>>,
        usize,
        &mut CudaSlice<T>,
    ) -> Result<()>,
    dense: impl FnOnce() -> Result<CudaSlice<T>>,
    output_tol: f64,
) -> Result<Check> {
    let tol = tolerance(T::DTYPE);
    let mut check = Check::new();
    let s = gpu.stream();
    let m = case.shape("x")?[0];
    let shape = LoraShape::new(m, k, n);
    let x = s.clone_htod(&case.values::<T>("x")?)?;
    let bias = if case.has("base.bias") {
        Some(s.clone_htod(&case.values::<T>("base.bias")?)?)
    } else {
        None
    };
    let bias_view = bias.as_ref().map(|b| b.slice(..));
    let mut base = s.alloc_zeros::<T>(m * n)?;
    base_product(&x, bias_view.as_ref(), m, &mut base)?;
    check.compare(
        "base_output",
        &f64s(&s.clone_dtoh(&base)?),
        &case.values_f64("base_output")?,
        tol,
    );
    let (a, b) = (
        s.clone_htod(&case.values::<T>("lora_A")?)?,
        s.clone_htod(&case.values::<T>("lora_B")?)?,
    );
    let adapter = LoraAdapter::new(&a, &b, case.shape("lora_A")?[0], case.scaling()? as f32);
    let mut y = s.alloc_zeros::<T>(m * n)?;
    if case.kind == "qdora" {
        let magnitude = s.clone_htod(&case.values::<T>("magnitude")?)?;
        let factor = gpu.dora_factor(&dense()?, adapter, &magnitude, k, n)?;
        gpu.dora_forward(
            &x,
            &base,
            bias_view.as_ref(),
            lora_kernels::DoraAdapter::new(adapter, &factor),
            shape,
            &mut y,
        )?;
    } else {
        gpu.lora_forward(&x, &base, &[adapter], shape, &mut y)?;
    }
    check.compare(
        "output",
        &f64s(&s.clone_dtoh(&y)?),
        &case.values_f64("output")?,
        output_tol * tol,
    );
    Ok(check)
}

pub(crate) fn read_case_bytes(case: &GoldenCase) -> Result<Vec<u8>> {
    std::fs::read(&case.path).map_err(|e| lora_kernels::Error::File {
        path: case.path.display().to_string(),
        message: e.to_string(),
    })
}
