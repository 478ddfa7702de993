//! `int8` cases (bitsandbytes' LLM.int8 CB/SCB) and `qlora` / `qdora` cases on an int8 base.
use crate::common::f64s;
use crate::quantized::{quantized_layer_cpu, quantized_layer_gpu, read_case_bytes};
use crate::Check;
use lora_kernels::golden::{tolerance, GoldenCase};
use lora_kernels::int8::{self, Int8Weight};
use lora_kernels::{Element, Gpu, LoraShape, Result};

/// An `int8` case: CB/SCB against bitsandbytes', and the weight-only product (what its CPU backend
/// computes for both thresholds).
pub(crate) fn int8_cpu<T: Element>(case: &GoldenCase) -> Result<Check> {
    let ws = case.shape("weight")?;
    let shape = [ws[0], ws[1]];
    let mut check = Check::new();
    let q = int8::reference::quantize_rowwise(&case.values::<T>("weight")?, shape)?;
    let cb: Vec<i8> = case.values_f64("CB")?.iter().map(|&v| v as i8).collect();
    check.require("CB", q.cb == cb);
    check.require("SCB", q.scb == case.values::<f32>("SCB")?);
    let xs = case.shape("x")?;
    let lshape = LoraShape::new(xs[0], shape[1], shape[0]);
    let out = int8::reference::linear_weight_only(&case.values::<T>("x")?, &q, None, lshape)?;
    for key in ["output_threshold_0", "output_threshold_6"] {
        check.compare(
            key,
            &f64s(&out),
            &case.values_f64(key)?,
            tolerance(T::DTYPE),
        );
    }
    Ok(check)
}

/// An `int8` case on the GPU: bitsandbytes' CB/SCB through the weight-only kernel.
pub(crate) fn int8_gpu<T: Element>(gpu: &Gpu, case: &GoldenCase) -> Result<Check> {
    let ws = case.shape("weight")?;
    let weight = Int8Weight {
        shape: [ws[0], ws[1]],
        cb: case.values_f64("CB")?.iter().map(|&v| v as i8).collect(),
        scb: case.values("SCB")?,
    };
    let dev = gpu.upload_int8(&weight)?;
    let s = gpu.stream();
    let m = case.shape("x")?[0];
    let mut y = s.alloc_zeros::<T>(m * ws[0])?;
    gpu.int8_linear(
        &s.clone_htod(&case.values::<T>("x")?)?,
        &dev,
        None,
        m,
        &mut y,
    )?;
    let got = f64s(&s.clone_dtoh(&y)?);
    let mut check = Check::new();
    for key in ["output_threshold_0", "output_threshold_6"] {
        check.compare(key, &got, &case.values_f64(key)?, tolerance(T::DTYPE));
    }
    Ok(check)
}

/// A `qlora` / `qdora` case on an int8 base: the `Linear8bitLt` state dict as bitsandbytes saved it.
pub(crate) fn int8_layer_cpu<T: Element>(case: &GoldenCase) -> Result<Check> {
    let weight = Int8Weight::from_state_dict(
        &read_case_bytes(case)?,
        "base.",
        &case.path.display().to_string(),
    )?;
    let deq = int8::reference::dequantize(&weight)?;
    let deq64: Vec<f64> = deq.iter().map(|&v| v as f64).collect();
    let deq_t: Vec<T> = int8::reference::dequantize_to(&weight)?;
    let base = |x: &[T], bias: Option<&[T]>, shape| {
        int8::reference::linear_weight_only(x, &weight, bias, shape)
    };
    // bitsandbytes' 8-bit layer inside peft's forward lands up to two f16 ulps away from the
    // standalone `base_output` it saved (the adapter term itself matches: least-squares ratio 1.0000,
    // residual at f16 rounding level), so the layer output gets 2.5x the dtype tolerance.
    quantized_layer_cpu(case, weight.shape, &deq64, &deq_t, base, 2.5)
}

/// A `qlora` / `qdora` case on an int8 base on the GPU (the base through the weight-only product).
pub(crate) fn int8_layer_gpu<T: Element>(gpu: &Gpu, case: &GoldenCase) -> Result<Check> {
    let weight = Int8Weight::from_state_dict(
        &read_case_bytes(case)?,
        "base.",
        &case.path.display().to_string(),
    )?;
    let dev = gpu.upload_int8(&weight)?;
    // peft takes the DoRA norm of the dequantised weight in the input dtype.
    let dense = || {
        let w: Vec<T> = int8::reference::dequantize_to(&weight)?;
        Ok(gpu.stream().clone_htod(&w)?)
    };
    // As on the CPU: bitsandbytes' base inside peft's forward is up to two f16 ulps from base_output.
    quantized_layer_gpu(
        gpu,
        case,
        weight.shape,
        |x, bias, m, y| gpu.int8_linear(x, &dev, bias, m, y),
        dense,
        2.5,
    )
}
