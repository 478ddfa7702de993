//! Safetensors files as editable maps, for the tests that mutate golden files (the loaders' error
//! tests and the mutation fuzz).
use safetensors::{Dtype, SafeTensors, View as _};
use std::collections::BTreeMap;

/// Every tensor of a file: name → (dtype, shape, bytes), in name order.
pub type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

/// The tensors of safetensors `bytes` (which must parse).
pub fn tensors(bytes: &[u8]) -> Tensors {
    SafeTensors::deserialize(bytes)
        .unwrap()
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

/// `t` written as a safetensors file.
pub fn serialize(t: &Tensors) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = t
        .iter()
        .map(|(k, (d, s, b))| {
            let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
            (k.clone(), view)
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// `bytes` with `edit` applied to its tensors, written again.
pub fn rewrite(bytes: &[u8], edit: impl FnOnce(&mut Tensors)) -> Vec<u8> {
    let mut t = tensors(bytes);
    edit(&mut t);
    serialize(&t)
}
