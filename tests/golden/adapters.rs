//! `adapter_dir` cases: a saved peft adapter through the small model, module by module.
use crate::common::f64s;
use crate::Check;
use lora_kernels::golden::{tolerance, AdapterModel, GoldenCase, ModelLayers};
use lora_kernels::{DType, Gpu, Result};

/// An `adapter_dir` case: the peft adapter saved next to it, every module as a crate layer (the GPU
/// [`lora_kernels::layer::Layer`] or the CPU reference layer) against peft's own module outputs, then
/// the model over every layer, unmerged and merged.
pub(crate) fn adapter_dir(case: &GoldenCase, gpu: Option<&Gpu>) -> Result<Check> {
    let dir = case
        .path
        .parent()
        .expect("an adapter_dir case sits in its adapter's folder");
    let model = AdapterModel::load(dir)?;
    let mut layers = ModelLayers::new(&model, gpu)?;
    let tol = tolerance(DType::F32);
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
