//! The `*_backward` kinds: peft's gradients under torch autograd (training mode), for a LoRA or DoRA
//! adapter on a dense base (`lora_backward`, `dora_backward`) or on a bitsandbytes NF4 `Linear4bit`
//! (`qlora_backward`, `qdora_backward`). The forward output is checked first (the backward's saved
//! base is recomputed by the crate), then grad_x, grad_lora_A, grad_lora_B and grad_magnitude.
use crate::common::f64s;
use crate::quantized::read_case_bytes;
use crate::Check;
use cudarc::driver::CudaSlice;
use lora_kernels::dora::reference as dora_reference;
use lora_kernels::golden::{tolerance, GoldenCase};
use lora_kernels::linear::QuantizedWeight;
use lora_kernels::lora_backward::{reference, Backward, BackwardStep, DoraSaved, DxWeight};
use lora_kernels::quant4::Quant4Weight;
use lora_kernels::{Element, Gpu, LoraAdapter, LoraShape, Result};

/// What every backward case holds, in `T`.
struct Case<T> {
    x: Vec<T>,
    grad_output: Vec<T>,
    a: Vec<T>,
    b: Vec<T>,
    rank: usize,
    scale: f32,
    /// W dense, or the NF4 base dequantised as peft's `dequantize_module_weight` (in `T`).
    weight: Vec<T>,
    quant4: Option<Quant4Weight>,
    bias: Option<Vec<T>>,
    magnitude: Option<Vec<T>>,
    shape: LoraShape,
}

impl<T: Element> Case<T> {
    fn load(case: &GoldenCase) -> Result<Self> {
        let nf4 = case.meta("base").ok() == Some("nf4");
        let (weight, quant4) = if nf4 {
            let q = Quant4Weight::from_state_dict(
                &read_case_bytes(case)?,
                "base.",
                &case.path.display().to_string(),
            )?;
            (lora_kernels::quant4::reference::dequantize(&q)?, Some(q))
        } else {
            (case.values("weight")?, None)
        };
        let bias_name = if nf4 { "base.bias" } else { "bias" };
        let [m, k] = [case.shape("x")?[0], case.shape("x")?[1]];
        Ok(Case {
            x: case.values("x")?,
            grad_output: case.values("grad_output")?,
            a: case.values("lora_A")?,
            b: case.values("lora_B")?,
            rank: case.shape("lora_A")?[0],
            scale: case.scaling()? as f32,
            weight,
            quant4,
            bias: if case.has(bias_name) {
                Some(case.values(bias_name)?)
            } else {
                None
            },
            magnitude: if case.has("magnitude") {
                Some(case.values("magnitude")?)
            } else {
                None
            },
            shape: LoraShape::new(m, k, case.shape("grad_output")?[1]),
        })
    }
}

/// Compares the gradients of `got` with peft's.
fn compare_grads(
    check: &mut Check,
    case: &GoldenCase,
    got: [Option<Vec<f64>>; 4],
    tol: f64,
) -> Result<()> {
    for (name, g) in ["grad_x", "grad_lora_A", "grad_lora_B", "grad_magnitude"]
        .into_iter()
        .zip(got)
    {
        match (g, case.has(name)) {
            (Some(g), true) => check.compare(name, &g, &case.values_f64(name)?, tol),
            (None, false) => {}
            (g, _) => check.require(
                &format!(
                    "{name} (computed: {}, in the case: {})",
                    g.is_some(),
                    case.has(name)
                ),
                false,
            ),
        }
    }
    Ok(())
}

fn grads_f64<T: Element>(b: &Backward<Vec<T>>) -> [Option<Vec<f64>>; 4] {
    let ad = &b.adapters[0];
    [
        Some(f64s(&b.x)),
        Some(f64s(&ad.lora_a)),
        Some(f64s(&ad.lora_b)),
        ad.magnitude.as_ref().map(|m| f64s(m)),
    ]
}

/// A backward case on the CPU reference.
pub(crate) fn backward_cpu<T: Element>(case: &GoldenCase) -> Result<Check> {
    let tol = tolerance(T::DTYPE);
    let mut check = Check::new();
    let c = Case::<T>::load(case)?;
    let LoraShape { k, n, .. } = c.shape;
    if case.has("dequantized_weight") {
        check.compare(
            "dequantized_weight",
            &f64s(&c.weight),
            &case.values_f64("dequantized_weight")?,
            0.0,
        );
    }
    let adapter = LoraAdapter::new(&c.a[..], &c.b[..], c.rank, c.scale);
    let base =
        lora_kernels::linear::reference::linear(&c.x, &c.weight, c.bias.as_deref(), c.shape)?;
    let norm = dora_reference::dora_weight_norm(&c.weight, adapter, k, n)?;
    let (out, dora) = match &c.magnitude {
        Some(m) => {
            let factor = dora_reference::dora_factor(m, &norm)?;
            let out = dora_reference::dora_forward(
                &c.x,
                &base,
                c.bias.as_deref(),
                adapter,
                &factor,
                c.shape,
            )?;
            let saved = DoraSaved {
                magnitude: &m[..],
                norm: &norm[..],
                base: &base[..],
                bias: c.bias.as_deref(),
            };
            (out, Some(saved))
        }
        None => (
            lora_kernels::lora::reference::lora_forward(&c.x, &base, &[adapter], c.shape)?,
            None,
        ),
    };
    check.compare("output", &f64s(&out), &case.values_f64("output")?, tol);
    let grads = reference::backward(
        &c.x,
        &c.grad_output,
        Some(&c.weight),
        &[BackwardStep { adapter, dora }],
        c.shape,
    )?;
    compare_grads(&mut check, case, grads_f64(&grads), tol)?;
    Ok(check)
}

/// A backward case on the GPU: the base product and the DoRA factor (with its norm) by the forward's
/// kernels, then [`Gpu::backward_chain`] with W dense or NF4 (dequantised on the fly).
pub(crate) fn backward_gpu<T: Element>(gpu: &Gpu, case: &GoldenCase) -> Result<Check> {
    let tol = tolerance(T::DTYPE);
    let mut check = Check::new();
    let c = Case::<T>::load(case)?;
    let LoraShape { m, k, n } = c.shape;
    let s = gpu.stream();
    let x = s.clone_htod(&c.x)?;
    let g = s.clone_htod(&c.grad_output)?;
    let a = s.clone_htod(&c.a)?;
    let b = s.clone_htod(&c.b)?;
    let w = s.clone_htod(&c.weight)?;
    let bias = c.bias.as_ref().map(|v| s.clone_htod(v)).transpose()?;
    let bias_view = bias.as_ref().map(|v| v.slice(..));
    let quant4 = c
        .quant4
        .as_ref()
        .map(|q| gpu.upload_quant4(q))
        .transpose()?;
    let mut base = s.alloc_zeros::<T>(m * n)?;
    match &quant4 {
        Some(q) => gpu.quant4_linear(&x, q, bias_view.as_ref(), m, &mut base)?,
        None => gpu.linear(&x, &w, bias_view.as_ref(), c.shape, &mut base)?,
    }
    let adapter = LoraAdapter::new(&a, &b, c.rank, c.scale);
    let magnitude = c.magnitude.as_ref().map(|v| s.clone_htod(v)).transpose()?;
    let factor = match (&magnitude, &quant4) {
        (Some(mag), Some(q)) => {
            Some(gpu.dora_factor_quantized(QuantizedWeight::Quant4(q), adapter, mag)?)
        }
        (Some(mag), None) => Some(gpu.dora_factor(&w, adapter, mag, k, n)?),
        (None, _) => None,
    };
    let mut y = s.clone_dtod(&base)?;
    match &factor {
        Some(f) => gpu.dora_forward_inplace(
            &x,
            bias_view.as_ref(),
            lora_kernels::DoraAdapter::new(adapter, f),
            c.shape,
            &mut y,
        )?,
        None => gpu.lora_forward_inplace(&x, &[adapter], c.shape, &mut y)?,
    }
    check.compare(
        "output",
        &f64s(&s.clone_dtoh(&y)?),
        &case.values_f64("output")?,
        tol,
    );
    let dora = match (&magnitude, &factor) {
        (Some(mag), Some(f)) => Some(DoraSaved {
            magnitude: mag,
            norm: f.norms(),
            base: &base,
            bias: bias.as_ref(),
        }),
        _ => None,
    };
    let weight = match &quant4 {
        Some(q) => DxWeight::Quantized(QuantizedWeight::Quant4(q)),
        None => DxWeight::Dense(&w),
    };
    let mut dx = s.alloc_zeros::<T>(m * k)?;
    let grads = gpu.backward_chain(
        &x,
        &g,
        weight,
        &[BackwardStep { adapter, dora }],
        c.shape,
        &mut dx,
        false,
    )?;
    let host = |v: &CudaSlice<T>| -> Result<Vec<f64>> { Ok(f64s(&s.clone_dtoh(v)?)) };
    let ad = &grads[0];
    let got = [
        Some(host(&dx)?),
        Some(host(&ad.lora_a)?),
        Some(host(&ad.lora_b)?),
        ad.magnitude.as_ref().map(host).transpose()?,
    ];
    compare_grads(&mut check, case, got, tol)?;
    Ok(check)
}
