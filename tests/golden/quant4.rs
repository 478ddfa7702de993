//! `quant4` cases (bitsandbytes' NF4/FP4 bytes) and `qlora` / `qdora` cases on an NF4 base.
use crate::common::f64s;
use crate::quantized::{quantized_layer_cpu, quantized_layer_gpu, read_case_bytes};
use crate::Check;
use lora_kernels::golden::GoldenCase;
use lora_kernels::quant4::{self, Absmax, Quant4Weight, QuantType};
use lora_kernels::{Element, Gpu, Result};

/// A `quant4` case: our quantiser's bytes against bitsandbytes', and dequantisation of its bytes.
pub(crate) fn quant4_cpu<T: Element>(case: &GoldenCase) -> Result<Check> {
    let theirs = golden_quant4::<T>(case)?;
    let double_quant = matches!(theirs.absmax, Absmax::Nested { .. });
    let mut check = Check::new();
    let code: Vec<f32> = case.values("code")?;
    check.require("code table", code == theirs.quant_type.code().to_vec());
    let mine = quant4::reference::quantize(
        &case.values::<T>("weight")?,
        theirs.shape,
        theirs.blocksize,
        theirs.quant_type,
        double_quant,
    )?;
    // Byte-exact: the packed codes, and the absmax (plain, or the double-quantised codes, nested
    // absmax, map and offset).
    check.require("packed bytes", mine.packed == theirs.packed);
    check.require("absmax", mine.absmax == theirs.absmax);
    let deq = quant4::reference::dequantize::<T>(&theirs)?;
    check.compare(
        "dequantized",
        &f64s(&deq),
        &case.values_f64("dequantized")?,
        0.0,
    );
    Ok(check)
}

/// The golden 4-bit weight of a `quant4` case (bitsandbytes' own bytes and scales).
fn golden_quant4<T: Element>(case: &GoldenCase) -> Result<Quant4Weight> {
    let quant_type = QuantType::from_name(case.meta("quant_type")?).expect("nf4 or fp4");
    let shape = case.shape("weight")?;
    let absmax = if case.meta("double_quant")? == "true" {
        Absmax::Nested {
            codes: case
                .values_f64("absmax_q")?
                .iter()
                .map(|&v| v as u8)
                .collect(),
            nested_absmax: case.values("nested_absmax")?,
            nested_code: case.values("nested_code")?,
            nested_blocksize: case.meta("nested_blocksize")?.parse().expect("an integer"),
            offset: case.meta("offset")?.parse::<f64>().expect("a number") as f32,
        }
    } else {
        Absmax::Plain(case.values("absmax")?)
    };
    Ok(Quant4Weight {
        quant_type,
        blocksize: case
            .meta("blocksize")?
            .parse()
            .expect("an integer blocksize"),
        shape: [shape[0], shape[1]],
        dtype: T::DTYPE,
        packed: case
            .values_f64("packed")?
            .iter()
            .map(|&v| v as u8)
            .collect(),
        absmax,
        code: *quant_type.code(),
    })
}

/// A `quant4` case on the GPU: bitsandbytes' bytes dequantised by the kernel, bit for bit.
pub(crate) fn quant4_gpu<T: Element>(gpu: &Gpu, case: &GoldenCase) -> Result<Check> {
    let w = golden_quant4::<T>(case)?;
    let dev = gpu.upload_quant4(&w)?;
    let s = gpu.stream();
    let mut out = s.alloc_zeros::<T>(w.shape[0] * w.shape[1])?;
    gpu.quant4_dequantize(&dev, &mut out)?;
    let mut check = Check::new();
    check.compare(
        "dequantized",
        &f64s(&s.clone_dtoh(&out)?),
        &case.values_f64("dequantized")?,
        0.0,
    );
    // The GPU quantiser on bitsandbytes' input: its bytes are bitsandbytes'.
    let double_quant = matches!(w.absmax, Absmax::Nested { .. });
    let input = s.clone_htod(&case.values::<T>("weight")?)?;
    let mine = gpu.download_quant4(&gpu.quantize_quant4(
        &input,
        w.shape,
        w.blocksize,
        w.quant_type,
        double_quant,
    )?)?;
    check.require("GPU-quantised packed bytes", mine.packed == w.packed);
    check.require("GPU-quantised absmax", mine.absmax == w.absmax);
    Ok(check)
}

/// A `qlora` / `qdora` case on an NF4 base: the `Linear4bit` state dict as bitsandbytes saved it.
pub(crate) fn quant4_layer_cpu<T: Element>(case: &GoldenCase) -> Result<Check> {
    let weight = Quant4Weight::from_state_dict(
        &read_case_bytes(case)?,
        "base.",
        &case.path.display().to_string(),
    )?;
    let deq: Vec<T> = quant4::reference::dequantize(&weight)?;
    quantized_layer_cpu(
        case,
        weight.shape,
        &f64s(&deq),
        &deq,
        |x, bias, shape| lora_kernels::linear::reference::linear(x, &deq, bias, shape),
        1.0,
    )
}

/// A `qlora` / `qdora` case on an NF4 base on the GPU (the base through the dequant-on-the-fly product).
pub(crate) fn quant4_layer_gpu<T: Element>(gpu: &Gpu, case: &GoldenCase) -> Result<Check> {
    let weight = Quant4Weight::from_state_dict(
        &read_case_bytes(case)?,
        "base.",
        &case.path.display().to_string(),
    )?;
    let dev = gpu.upload_quant4(&weight)?;
    let dense = || {
        let mut w = gpu
            .stream()
            .alloc_zeros::<T>(weight.shape[0] * weight.shape[1])?;
        gpu.quant4_dequantize(&dev, &mut w)?;
        Ok(w)
    };
    quantized_layer_gpu(
        gpu,
        case,
        weight.shape,
        |x, bias, m, y| gpu.quant4_linear(x, &dev, bias, m, y),
        dense,
        1.0,
    )
}
