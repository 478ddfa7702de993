//! Runs every golden case (computed by the real peft and bitsandbytes) through the crate: on the CPU
//! reference always, and through the kernels on the GPU, or on the PTX emulator where no driver loads
//! (`tests/common/driver.rs`; `LORA_KERNELS_EMULATOR=0` never, `=1` always).
//!
//! Cases come from `LORA_KERNELS_GOLDEN_DIR` when set (default `tests/data/golden`). One line per case
//! and target (`on cpu`, `on gpu` or `on emulator`), then `golden: P passed, F failed, S skipped`.
//! Kinds the crate does not support yet are skipped and say so. With `LORA_KERNELS_REQUIRE_GPU=1` a
//! missing GPU fails the run; a device that fails to open (on the emulator, say) fails every case's
//! GPU line.
mod common;

use cudarc::driver::{CudaSlice, CudaView};
use half::{bf16, f16};
use lora_kernels::dora::reference as dora_reference;
use lora_kernels::golden::{
    discover, golden_dir, rel_error, AdapterModel, GoldenCase, ModelLayers,
};
use lora_kernels::int8::{self, Int8Weight};
use lora_kernels::lora::reference;
use lora_kernels::quant4::{self, Absmax, Quant4Weight, QuantType};
use lora_kernels::{DType, Element, Gpu, LoraAdapter, LoraShape, Result};

/// The case whose device outputs [`common::dump`] writes (`LORA_KERNELS_DUMP_DIR`; the GPU check
/// compares the GPU's with the emulator's).
static DUMPING: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Outcome of one case on one target: the worst relative error and the tolerance it met or missed.
struct Check {
    worst: f64,
    failures: Vec<String>,
}

impl Check {
    fn new() -> Self {
        Check {
            worst: 0.0,
            failures: Vec::new(),
        }
    }
    fn require(&mut self, what: &str, ok: bool) {
        if !ok {
            self.failures.push(format!("{what}: differs"));
        }
    }
    fn compare(&mut self, what: &str, out: &[f64], reference: &[f64], tol: f64) {
        if let Some(case) = DUMPING.lock().unwrap_or_else(|e| e.into_inner()).as_deref() {
            common::dump(&format!("{case}.{what}"), out, Some(tol));
        }
        let err = rel_error(out, reference);
        self.worst = self.worst.max(err);
        if err.is_nan() || err > tol {
            self.failures
                .push(format!("{what}: rel err {err:.3e} > {tol:.0e}"));
        }
    }
}

fn f64s<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// The pieces of a `lora` case.
struct LoraCase<T> {
    shape: LoraShape,
    rank: usize,
    scale: f32,
    x: Vec<T>,
    weight: Vec<T>,
    bias: Option<Vec<T>>,
    lora_a: Vec<T>,
    lora_b: Vec<T>,
}

fn lora_case<T: Element>(case: &GoldenCase) -> Result<LoraCase<T>> {
    let xs = case.shape("x")?;
    let ws = case.shape("weight")?;
    let rank = case.shape("lora_A")?[0];
    Ok(LoraCase {
        shape: LoraShape::new(xs[0], xs[1], ws[0]),
        rank,
        scale: case.scaling()? as f32,
        x: case.values("x")?,
        weight: case.values("weight")?,
        bias: if case.has("bias") {
            Some(case.values("bias")?)
        } else {
            None
        },
        lora_a: case.values("lora_A")?,
        lora_b: case.values("lora_B")?,
    })
}

fn lora_cpu<T: Element>(case: &GoldenCase) -> Result<Check> {
    let c = lora_case::<T>(case)?;
    let tol = T::DTYPE.tolerance();
    let mut check = Check::new();
    let adapter = LoraAdapter::new(&c.lora_a[..], &c.lora_b[..], c.rank, c.scale);
    let base =
        lora_kernels::linear::reference::linear(&c.x, &c.weight, c.bias.as_deref(), c.shape)?;
    check.compare(
        "base_output",
        &f64s(&base),
        &case.values_f64("base_output")?,
        tol,
    );
    let base_golden: Vec<T> = case.values("base_output")?;
    let out = reference::lora_forward(&c.x, &base_golden, &[adapter], c.shape)?;
    check.compare("output", &f64s(&out), &case.values_f64("output")?, tol);
    let delta = reference::lora_delta_weight(adapter, c.shape.k, c.shape.n)?;
    check.compare(
        "delta_weight",
        &f64s(&delta),
        &case.values_f64("delta_weight")?,
        tol,
    );
    let merged = reference::lora_merged_weight(&c.weight, adapter, c.shape.k, c.shape.n)?;
    check.compare(
        "merged_weight",
        &f64s(&merged),
        &case.values_f64("merged_weight")?,
        tol,
    );
    Ok(check)
}

fn lora_gpu<T: Element>(gpu: &Gpu, case: &GoldenCase) -> Result<Check> {
    let c = lora_case::<T>(case)?;
    let tol = T::DTYPE.tolerance();
    let mut check = Check::new();
    let s = gpu.stream();
    let base_golden: Vec<T> = case.values("base_output")?;
    let (x, a, b) = (
        s.clone_htod(&c.x)?,
        s.clone_htod(&c.lora_a)?,
        s.clone_htod(&c.lora_b)?,
    );
    let base = s.clone_htod(&base_golden)?;
    let mut y = s.alloc_zeros::<T>(c.shape.m * c.shape.n)?;
    let adapter = LoraAdapter::new(&a, &b, c.rank, c.scale);
    gpu.lora_forward(&x, &base, &[adapter], c.shape, &mut y)?;
    let expected = case.values_f64("output")?;
    check.compare("output", &f64s(&s.clone_dtoh(&y)?), &expected, tol);
    let mut y_inplace = s.clone_htod(&base_golden)?;
    gpu.lora_forward_inplace(&x, &[adapter], c.shape, &mut y_inplace)?;
    check.compare(
        "output (in place)",
        &f64s(&s.clone_dtoh(&y_inplace)?),
        &expected,
        tol,
    );
    Ok(check)
}

/// The pieces of a `dora` case: the LoRA pieces plus the magnitude.
fn dora_case<T: Element>(case: &GoldenCase) -> Result<(LoraCase<T>, Vec<T>)> {
    Ok((lora_case::<T>(case)?, case.values("magnitude")?))
}

fn dora_cpu<T: Element>(case: &GoldenCase) -> Result<Check> {
    let (c, magnitude) = dora_case::<T>(case)?;
    let (k, n) = (c.shape.k, c.shape.n);
    let tol = T::DTYPE.tolerance();
    let mut check = Check::new();
    let adapter = LoraAdapter::new(&c.lora_a[..], &c.lora_b[..], c.rank, c.scale);
    let norm = dora_reference::dora_weight_norm(&c.weight, adapter, k, n)?;
    let norm_f64: Vec<f64> = norm.iter().map(|&v| v as f64).collect();
    check.compare(
        "weight_norm",
        &norm_f64,
        &case.values_f64("weight_norm")?,
        tol,
    );
    let factor = dora_reference::dora_factor(&magnitude, &norm)?;
    let base: Vec<T> = case.values("base_output")?;
    let out =
        dora_reference::dora_forward(&c.x, &base, c.bias.as_deref(), adapter, &factor, c.shape)?;
    check.compare("output", &f64s(&out), &case.values_f64("output")?, tol);
    let merged = dora_reference::dora_merged_weight(&c.weight, adapter, Some(&factor), k, n)?;
    check.compare(
        "merged_weight",
        &f64s(&merged),
        &case.values_f64("merged_weight")?,
        tol,
    );
    let unmerged = dora_reference::dora_unmerged_weight(&merged, adapter, Some(&factor), k, n)?;
    check.compare("unmerge(merge(W))", &f64s(&unmerged), &f64s(&c.weight), tol);
    Ok(check)
}

fn dora_gpu<T: Element>(gpu: &Gpu, case: &GoldenCase) -> Result<Check> {
    let (c, magnitude) = dora_case::<T>(case)?;
    let (k, n) = (c.shape.k, c.shape.n);
    let tol = T::DTYPE.tolerance();
    let mut check = Check::new();
    let s = gpu.stream();
    let (x, a, b, w) = (
        s.clone_htod(&c.x)?,
        s.clone_htod(&c.lora_a)?,
        s.clone_htod(&c.lora_b)?,
        s.clone_htod(&c.weight)?,
    );
    let m = s.clone_htod(&magnitude)?;
    let adapter = LoraAdapter::new(&a, &b, c.rank, c.scale);
    let mut norm = s.alloc_zeros::<f32>(n)?;
    gpu.dora_weight_norm(&w, adapter, k, n, &mut norm)?;
    let norm_f64: Vec<f64> = s.clone_dtoh(&norm)?.iter().map(|&v| v as f64).collect();
    check.compare(
        "weight_norm",
        &norm_f64,
        &case.values_f64("weight_norm")?,
        tol,
    );
    let factor = gpu.dora_factor(&w, adapter, &m, k, n)?;
    let base = s.clone_htod(&case.values::<T>("base_output")?)?;
    let bias = match &c.bias {
        Some(b) => Some(s.clone_htod(b)?),
        None => None,
    };
    let bias_view = bias.as_ref().map(|b| b.slice(..));
    let mut y = s.alloc_zeros::<T>(c.shape.m * n)?;
    gpu.dora_forward(
        &x,
        &base,
        bias_view.as_ref(),
        adapter,
        &factor,
        c.shape,
        &mut y,
    )?;
    check.compare(
        "output",
        &f64s(&s.clone_dtoh(&y)?),
        &case.values_f64("output")?,
        tol,
    );
    let mut merged = s.clone_htod(&c.weight)?;
    gpu.merge_adapter(&mut merged, adapter, Some(&factor), k, n, true)?;
    check.compare(
        "merged_weight",
        &f64s(&s.clone_dtoh(&merged)?),
        &case.values_f64("merged_weight")?,
        tol,
    );
    gpu.unmerge_adapter(&mut merged, adapter, Some(&factor), k, n, true)?;
    check.compare(
        "unmerge(merge(W))",
        &f64s(&s.clone_dtoh(&merged)?),
        &f64s(&c.weight),
        tol,
    );
    Ok(check)
}

fn mixed_batch_cpu<T: Element>(case: &GoldenCase) -> Result<Check> {
    let xs = case.shape("x")?;
    let shape = LoraShape::new(xs[0], xs[1], case.shape("weight")?[0]);
    let scalings: Vec<f64> =
        serde_json::from_str(case.meta("scalings")?).map_err(|e| lora_kernels::Error::File {
            path: case.path.display().to_string(),
            message: format!("scalings: {e}"),
        })?;
    let x: Vec<T> = case.values("x")?;
    let bias: Option<Vec<T>> = if case.has("bias") {
        Some(case.values("bias")?)
    } else {
        None
    };
    let base = lora_kernels::linear::reference::linear(
        &x,
        &case.values::<T>("weight")?,
        bias.as_deref(),
        shape,
    )?;
    let buffers: Vec<(Vec<T>, Vec<T>, usize)> = (0..scalings.len())
        .map(|i| {
            Ok((
                case.values(&format!("lora_A.{i}"))?,
                case.values(&format!("lora_B.{i}"))?,
                case.shape(&format!("lora_A.{i}"))?[0],
            ))
        })
        .collect::<Result<_>>()?;
    let adapters: Vec<_> = buffers
        .iter()
        .zip(&scalings)
        .map(|((a, b, r), &s)| LoraAdapter::new(&a[..], &b[..], *r, s as f32))
        .collect();
    let indices: Vec<i32> = case
        .values_f64("adapter_index")?
        .iter()
        .map(|&v| v as i32)
        .collect();
    let out = lora_kernels::mixed_batch::reference::lora_forward_mixed(
        &x, &base, &adapters, &indices, shape,
    )?;
    let mut check = Check::new();
    check.compare(
        "output",
        &f64s(&out),
        &case.values_f64("output")?,
        T::DTYPE.tolerance(),
    );
    Ok(check)
}

/// An `adapter_dir` case: the peft adapter saved next to it, every module as a crate layer (the GPU
/// [`lora_kernels::layer::Layer`] or the CPU reference layer) against peft's own module outputs, then
/// the model over every layer, unmerged and merged.
fn adapter_dir(case: &GoldenCase, gpu: Option<&Gpu>) -> Result<Check> {
    let dir = case
        .path
        .parent()
        .expect("an adapter_dir case sits in its adapter's folder");
    let model = AdapterModel::load(dir)?;
    let mut layers = ModelLayers::new(&model, gpu)?;
    let tol = DType::F32.tolerance();
    let mut check = Check::new();
    for name in model.module_names() {
        let input: Vec<f32> = case.values(&format!("{name}.input"))?;
        let out = layers.module_forward(&name, &input)?;
        check.compare(
            &name,
            &f64s(&out),
            &case.values_f64(&format!("{name}.output"))?,
            tol,
        );
    }
    let x: Vec<f32> = case.values("x")?;
    let want = case.values_f64("output")?;
    let out = model.forward(&x, |name, input| layers.module_forward(name, input))?;
    check.compare("model output", &f64s(&out), &want, tol);
    layers.merge(true)?;
    let merged = model.forward(&x, |name, input| layers.module_forward(name, input))?;
    check.compare("model output, merged", &f64s(&merged), &want, tol);
    layers.unmerge()?;
    Ok(check)
}

/// A `quant4` case: our quantiser's bytes against bitsandbytes', and dequantisation of its bytes.
fn quant4_cpu<T: Element>(case: &GoldenCase) -> Result<Check> {
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

/// A `qlora` / `qdora` case on a quantised base on the CPU: the dequantised weight against peft's
/// (`dequantized`, exact), the base output of `base_product` against bitsandbytes', then the adapter on
/// top of bitsandbytes' own base output, as for the dense cases (the DoRA norm of `weight_t`, the
/// dequantised weight in the input dtype, as peft takes it). `output_tol` scales the dtype tolerance of
/// the final output.
fn quantized_layer_cpu<T: Element>(
    case: &GoldenCase,
    [n, k]: [usize; 2],
    dequantized: &[f64],
    weight_t: &[T],
    base_product: impl FnOnce(&[T], Option<&[T]>, LoraShape) -> Result<Vec<T>>,
    output_tol: f64,
) -> Result<Check> {
    let tol = T::DTYPE.tolerance();
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

/// A `qlora` / `qdora` case on an NF4 base: the `Linear4bit` state dict as bitsandbytes saved it.
fn quant4_layer_cpu<T: Element>(case: &GoldenCase) -> Result<Check> {
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

/// An `int8` case: CB/SCB against bitsandbytes', and the weight-only product (what its CPU backend
/// computes for both thresholds).
fn int8_cpu<T: Element>(case: &GoldenCase) -> Result<Check> {
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
            T::DTYPE.tolerance(),
        );
    }
    Ok(check)
}

/// A `qlora` / `qdora` case on an int8 base: the `Linear8bitLt` state dict as bitsandbytes saved it.
fn int8_layer_cpu<T: Element>(case: &GoldenCase) -> Result<Check> {
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
fn quant4_gpu<T: Element>(gpu: &Gpu, case: &GoldenCase) -> Result<Check> {
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

/// A `mixed_batch` case on the GPU: the adapter table once, then one launch for the batch.
fn mixed_batch_gpu<T: Element>(gpu: &Gpu, case: &GoldenCase) -> Result<Check> {
    let xs = case.shape("x")?;
    let shape = LoraShape::new(xs[0], xs[1], case.shape("weight")?[0]);
    let scalings: Vec<f64> =
        serde_json::from_str(case.meta("scalings")?).map_err(|e| lora_kernels::Error::File {
            path: case.path.display().to_string(),
            message: format!("scalings: {e}"),
        })?;
    let s = gpu.stream();
    let x: Vec<T> = case.values("x")?;
    let bias: Option<Vec<T>> = if case.has("bias") {
        Some(case.values("bias")?)
    } else {
        None
    };
    let base = lora_kernels::linear::reference::linear(
        &x,
        &case.values::<T>("weight")?,
        bias.as_deref(),
        shape,
    )?;
    let mut buffers = Vec::new();
    for i in 0..scalings.len() {
        let a = s.clone_htod(&case.values::<T>(&format!("lora_A.{i}"))?)?;
        let b = s.clone_htod(&case.values::<T>(&format!("lora_B.{i}"))?)?;
        buffers.push((a, b, case.shape(&format!("lora_A.{i}"))?[0]));
    }
    let adapters: Vec<_> = buffers
        .iter()
        .zip(&scalings)
        .map(|((a, b, r), &sc)| LoraAdapter::new(a, b, *r, sc as f32))
        .collect();
    let table = gpu.mixed_adapters(&adapters, shape.k, shape.n)?;
    let indices: Vec<i32> = case
        .values_f64("adapter_index")?
        .iter()
        .map(|&v| v as i32)
        .collect();
    let mut y = s.alloc_zeros::<T>(shape.m * shape.n)?;
    gpu.lora_forward_mixed(
        &s.clone_htod(&x)?,
        &s.clone_htod(&base)?,
        &table,
        &s.clone_htod(&indices)?,
        shape,
        &mut y,
    )?;
    let mut check = Check::new();
    check.compare(
        "output",
        &f64s(&s.clone_dtoh(&y)?),
        &case.values_f64("output")?,
        T::DTYPE.tolerance(),
    );
    Ok(check)
}

/// An `int8` case on the GPU: bitsandbytes' CB/SCB through the weight-only kernel.
fn int8_gpu<T: Element>(gpu: &Gpu, case: &GoldenCase) -> Result<Check> {
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
        check.compare(key, &got, &case.values_f64(key)?, T::DTYPE.tolerance());
    }
    Ok(check)
}

/// A `qlora` / `qdora` case on a quantised base on the GPU: `base_product` computes the base output
/// `x·dequant(W)ᵀ + bias` (compared with bitsandbytes'), `dense` gives the dequantised W in `T` for the
/// DoRA norm, then the adapter goes through the fused LoRA or DoRA forward. `output_tol` scales the
/// dtype tolerance of the final output.
fn quantized_layer_gpu<T: Element>(
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
    let tol = T::DTYPE.tolerance();
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
            adapter,
            &factor,
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

fn read_case_bytes(case: &GoldenCase) -> Result<Vec<u8>> {
    std::fs::read(&case.path).map_err(|e| lora_kernels::Error::File {
        path: case.path.display().to_string(),
        message: e.to_string(),
    })
}

/// A `qlora` / `qdora` case on an NF4 base on the GPU (the base through the dequant-on-the-fly product).
fn quant4_layer_gpu<T: Element>(gpu: &Gpu, case: &GoldenCase) -> Result<Check> {
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

/// A `qlora` / `qdora` case on an int8 base on the GPU (the base through the weight-only product).
fn int8_layer_gpu<T: Element>(gpu: &Gpu, case: &GoldenCase) -> Result<Check> {
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

macro_rules! by_dtype {
    ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F16 => $f::<f16>($($arg),*),
            DType::BF16 => $f::<bf16>($($arg),*),
        }
    };
}

/// Runs `case` on the CPU, or on `gpu`: `None` when its kind is not supported yet.
fn run(case: &GoldenCase, gpu: Option<&Gpu>) -> Option<Result<Check>> {
    match case.kind.as_str() {
        "lora" => Some(case.dtype().and_then(|d| match gpu {
            None => by_dtype!(d, lora_cpu(case)),
            Some(g) => by_dtype!(d, lora_gpu(g, case)),
        })),
        "dora" => Some(case.dtype().and_then(|d| match gpu {
            None => by_dtype!(d, dora_cpu(case)),
            Some(g) => by_dtype!(d, dora_gpu(g, case)),
        })),
        "mixed_batch" => Some(case.dtype().and_then(|d| match gpu {
            None => by_dtype!(d, mixed_batch_cpu(case)),
            Some(g) => by_dtype!(d, mixed_batch_gpu(g, case)),
        })),
        "adapter_dir" => Some(adapter_dir(case, gpu)),
        "quant4" => Some(case.dtype().and_then(|d| match gpu {
            None => by_dtype!(d, quant4_cpu(case)),
            Some(g) => by_dtype!(d, quant4_gpu(g, case)),
        })),
        "qlora" | "qdora" if case.meta("quant").ok() == Some("nf4") => {
            Some(case.dtype().and_then(|d| match gpu {
                None => by_dtype!(d, quant4_layer_cpu(case)),
                Some(g) => by_dtype!(d, quant4_layer_gpu(g, case)),
            }))
        }
        "qlora" | "qdora" if case.meta("quant").ok() == Some("int8") => {
            Some(case.dtype().and_then(|d| match gpu {
                None => by_dtype!(d, int8_layer_cpu(case)),
                Some(g) => by_dtype!(d, int8_layer_gpu(g, case)),
            }))
        }
        "int8" => Some(case.dtype().and_then(|d| match gpu {
            None => by_dtype!(d, int8_cpu(case)),
            Some(g) => by_dtype!(d, int8_gpu(g, case)),
        })),
        _ => None,
    }
}

fn main() {
    let dir = golden_dir();
    let paths =
        discover(&dir).unwrap_or_else(|e| panic!("no golden cases in {}: {e}", dir.display()));
    assert!(!paths.is_empty(), "no golden cases in {}", dir.display());
    let opened = common::open_gpu();
    if let Err(e) = &opened {
        println!("GPU target: {e}");
    }
    let device_target = common::driver::target();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for path in &paths {
        let case = match GoldenCase::load(path) {
            Ok(c) => c,
            Err(e) => {
                println!("case {} (?) on cpu: FAILED to load: {e}", path.display());
                failed += 1;
                continue;
            }
        };
        if opened.is_err() {
            println!(
                "case {} ({}) on {device_target}: FAILED: no device (above)",
                case.name, case.kind
            );
            failed += 1;
        }
        let targets: Vec<(&str, Option<&Gpu>)> = match &opened {
            Ok(Some(g)) => vec![("cpu", None), (device_target, Some(g))],
            _ => vec![("cpu", None)],
        };
        for (target, g) in targets {
            let head = format!("case {} ({}) on {target}", case.name, case.kind);
            *DUMPING.lock().unwrap_or_else(|e| e.into_inner()) =
                g.is_some().then(|| case.name.clone());
            match run(&case, g) {
                None => {
                    println!("{head}: skipped: {} not supported yet", case.kind);
                    skipped += 1;
                }
                Some(Ok(check)) if check.failures.is_empty() => {
                    println!("{head}: ok, rel err {:.3e}", check.worst);
                    passed += 1;
                }
                Some(Ok(check)) => {
                    println!("{head}: FAILED {}", check.failures.join("; "));
                    failed += 1;
                }
                Some(Err(e)) => {
                    println!("{head}: FAILED {e}");
                    failed += 1;
                }
            }
        }
    }
    println!("golden: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        std::process::exit(1);
    }
}
