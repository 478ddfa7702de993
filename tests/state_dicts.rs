//! bitsandbytes state dicts as users have them: the golden `Linear4bit` and `Linear8bitLt` layers load,
//! and every way of breaking one (missing key, wrong dtype or length, unknown quant type, blocksize not
//! a power of two, a shape that does not match the bytes, another weight format, bytes that are not
//! safetensors) is a clear `Error::File` naming the key, never a panic.
use lora_kernels::golden::golden_dir;
use lora_kernels::int8::Int8Weight;
use lora_kernels::quant4::Quant4Weight;
use lora_kernels::Error;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;

type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn read(name: &str) -> Vec<u8> {
    std::fs::read(golden_dir().join(name)).unwrap()
}

/// The safetensors file `bytes` with `edit` applied to its tensors.
fn rewrite(bytes: &[u8], edit: impl FnOnce(&mut Tensors)) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut tensors: Tensors = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, (d, s, b))| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn assert_file_error<T: std::fmt::Debug>(r: lora_kernels::Result<T>, mentions: &str) {
    match r {
        Err(Error::File { path, message }) => {
            assert_eq!(path, "test.safetensors");
            assert!(
                message.contains(mentions),
                "`{message}` does not mention `{mentions}`"
            );
        }
        other => panic!("expected a file error mentioning `{mentions}`, got {other:?}"),
    }
}

const NF4: &str = "qlora_nf4_f32.safetensors";
const STATE: &str = "base.weight.quant_state.bitsandbytes__nf4";

fn quant4(bytes: &[u8]) -> lora_kernels::Result<Quant4Weight> {
    Quant4Weight::from_state_dict(bytes, "base.", "test.safetensors")
}

/// The quant state's JSON with `edit` applied.
fn edit_state(t: &mut Tensors, edit: impl FnOnce(&mut serde_json::Value)) {
    let entry = t.get_mut(STATE).unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&entry.2).unwrap();
    edit(&mut json);
    entry.2 = serde_json::to_vec(&json).unwrap();
    entry.1 = vec![entry.2.len()];
}

#[test]
fn a_linear4bit_state_dict_loads_and_broken_ones_are_errors() {
    let bytes = read(NF4);
    let w = quant4(&bytes).unwrap();
    assert_eq!(w.packed.len(), (w.shape[0] * w.shape[1]).div_ceil(2));

    assert_file_error(quant4(&bytes[..bytes.len() / 2]), "");
    assert_file_error(
        quant4(&rewrite(&bytes, |t| {
            t.remove("base.weight.absmax");
        })),
        "base.weight.absmax",
    );
    assert_file_error(
        quant4(&rewrite(&bytes, |t| {
            t.remove(STATE);
        })),
        "quant_state",
    );
    assert_file_error(
        quant4(&rewrite(&bytes, |t| {
            let w = t.get_mut("base.weight").unwrap();
            w.2.truncate(w.2.len() - 2);
            w.1 = vec![w.2.len(), 1];
        })),
        "packed",
    );
    assert_file_error(
        quant4(&rewrite(&bytes, |t| {
            let q = t.get_mut("base.weight.quant_map").unwrap();
            q.0 = Dtype::U8;
            q.1 = vec![q.2.len()];
        })),
        "expected F32",
    );
    assert_file_error(
        quant4(&rewrite(&bytes, |t| {
            edit_state(t, |j| j["quant_type"] = "nf5".into())
        })),
        "unknown quant_type",
    );
    assert_file_error(
        quant4(&rewrite(&bytes, |t| {
            edit_state(t, |j| j["blocksize"] = 48.into())
        })),
        "blocksize",
    );
    assert_file_error(
        quant4(&rewrite(&bytes, |t| {
            edit_state(t, |j| {
                let n = j["shape"][0].as_u64().unwrap();
                j["shape"][0] = (n + 1).into();
            })
        })),
        "packed",
    );
    assert_file_error(
        quant4(&rewrite(&bytes, |t| {
            let e = t.get_mut(STATE).unwrap();
            e.2 = b"{not json".to_vec();
            e.1 = vec![e.2.len()];
        })),
        "not JSON",
    );
}

fn int8(bytes: &[u8]) -> lora_kernels::Result<Int8Weight> {
    Int8Weight::from_state_dict(bytes, "base.", "test.safetensors")
}

#[test]
fn a_linear8bitlt_state_dict_loads_and_broken_ones_are_errors() {
    let bytes = read("lora_int8_f16.safetensors");
    let w = int8(&bytes).unwrap();
    assert_eq!(w.scb.len(), w.shape[0]);

    assert_file_error(
        int8(&rewrite(&bytes, |t| {
            t.remove("base.SCB");
        })),
        "base.SCB",
    );
    assert_file_error(
        int8(&rewrite(&bytes, |t| {
            let s = t.get_mut("base.SCB").unwrap();
            s.2.truncate(s.2.len() - 4);
            s.1 = vec![s.2.len() / 4];
        })),
        "SCB",
    );
    assert_file_error(
        int8(&rewrite(&bytes, |t| {
            let w = t.get_mut("base.weight").unwrap();
            w.0 = Dtype::U8;
        })),
        "expected I8",
    );
    assert_file_error(
        int8(&rewrite(&bytes, |t| {
            let w = t.get_mut("base.weight").unwrap();
            w.1 = vec![w.2.len()];
        })),
        "[n, k]",
    );
    assert_file_error(
        int8(&rewrite(&bytes, |t| {
            t.insert("base.weight_format".into(), (Dtype::U8, vec![1], vec![1]));
        })),
        "weight_format",
    );
}
