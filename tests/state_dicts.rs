//! bitsandbytes state dicts as users have them: the golden `Linear4bit` and `Linear8bitLt` layers load,
//! and every way of breaking one (missing key, wrong dtype or length, unknown quant type, blocksize not
//! a power of two, a shape that does not match the bytes, another weight format, bytes that are not
//! safetensors) is a clear `Error::File` naming the key, never a panic.
mod common;

use common::tensors::{rewrite, Tensors};
use lora_kernels::golden::golden_dir;
use lora_kernels::int8::Int8Weight;
use lora_kernels::quant4::Quant4Weight;
use lora_kernels::Error;
use safetensors::Dtype;

fn read(name: &str) -> Vec<u8> {
    std::fs::read(golden_dir().join(name)).unwrap()
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

/// The safetensors file `bytes` with `edit` applied to its JSON header (the data unchanged).
fn edit_header(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    out
}

/// The message of `r`'s file error, the same on ten loads (HashMap order differs between them).
fn same_error<T: std::fmt::Debug>(mut load: impl FnMut() -> lora_kernels::Result<T>) -> String {
    let first = format!("{:?}", load());
    for _ in 0..10 {
        assert_eq!(format!("{:?}", load()), first, "a second load differs");
    }
    match load() {
        Err(Error::File { message, .. }) => message,
        other => panic!("expected a file error, got {other:?}"),
    }
}

#[test]
fn two_quant_states_are_an_error_naming_both_every_time() {
    let bytes = rewrite(&read(NF4), |t| {
        let state = t[STATE].clone();
        t.insert("base.weight.quant_state.bitsandbytes__fp4".into(), state);
    });
    let msg = same_error(|| quant4(&bytes));
    assert!(
        msg.contains("base.weight.quant_state.bitsandbytes__fp4`, `base.weight.quant_state.bitsandbytes__nf4"),
        "{msg}"
    );
    // Another suffix is no quant state bitsandbytes reads.
    let bytes = rewrite(&read(NF4), |t| {
        let state = t.remove(STATE).unwrap();
        t.insert("base.weight.quant_state.bitsandbytes__nf5".into(), state);
    });
    assert_file_error(quant4(&bytes), "bitsandbytes__nf5");
}

#[test]
fn quant_state_fields_of_the_wrong_type_or_range_are_errors() {
    let bytes = read(NF4);
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        quant4(&rewrite(&bytes, |t| edit_state(t, |j| edit(j))))
    };
    assert_file_error(
        with(&|j| j["shape"] = serde_json::json!([-1, 96, 128])),
        "shape",
    );
    assert_file_error(
        with(&|j| j["shape"] = serde_json::json!([96, -128])),
        "[96,-128]",
    );
    assert_file_error(with(&|j| j["shape"] = serde_json::json!([0, 128])), "shape");
    for bad in [
        serde_json::json!("256"),
        serde_json::Value::Null,
        serde_json::json!(-256),
        serde_json::json!(0),
        serde_json::json!(256.5),
    ] {
        let shown = bad.to_string();
        let r = with(&|j| j["nested_blocksize"] = bad.clone());
        assert_file_error(
            r,
            &format!("`nested_blocksize`: expected a positive integer (256), got {shown}"),
        );
    }
    assert_file_error(
        with(&|j| {
            j.as_object_mut().unwrap().remove("nested_blocksize");
        }),
        "missing `nested_blocksize`",
    );
    for bad in [1e300, -1e300] {
        assert_file_error(
            with(&|j| j["nested_offset"] = bad.into()),
            "`nested_offset`: expected a number finite in f32",
        );
    }
    assert_file_error(
        with(&|j| j["nested_offset"] = "0.5".into()),
        "nested_offset",
    );
    // A nested absmax without its offset is ambiguous (bitsandbytes fails on the missing key).
    assert_file_error(
        with(&|j| {
            j.as_object_mut().unwrap().remove("nested_offset");
        }),
        "missing `nested_offset`",
    );
    assert_file_error(
        with(&|j| j["nested_dtype"] = "float16".into()),
        "nested_dtype",
    );
    // What was there is shown, not `""`.
    assert_file_error(
        with(&|j| j["quant_type"] = 4.into()),
        "unknown quant_type 4",
    );
    assert_file_error(
        with(&|j| j["dtype"] = serde_json::Value::Null),
        "unsupported dtype null",
    );
    assert_file_error(with(&|j| j["blocksize"] = "64".into()), "got \"64\"");
    assert_file_error(
        with(&|j| *j = serde_json::json!([1, 2])),
        "expected a JSON object",
    );
}

#[test]
fn quant4_errors_name_the_file_key() {
    let bytes = read(NF4);
    assert_file_error(
        quant4(&rewrite(&bytes, |t| {
            let w = t.get_mut("base.weight").unwrap();
            w.2.truncate(w.2.len() - 2);
            w.1 = vec![w.2.len(), 1];
        })),
        "`base.weight` (the packed codes): expected 6144 bytes",
    );
    assert_file_error(
        quant4(&rewrite(&bytes, |t| {
            let a = t.get_mut("base.weight.absmax").unwrap();
            a.2.pop();
            a.1 = vec![a.2.len()];
        })),
        "`base.weight.absmax`: expected 192 codes",
    );
    // A shape, dtype and offsets that disagree: safetensors names no tensor, the loader does.
    assert_file_error(
        quant4(&edit_header(&bytes, |h| {
            h["base.weight.quant_map"]["shape"] = serde_json::json!([17])
        })),
        "tensor `base.weight.quant_map` (F32 [17]): expected 68 bytes, got 64",
    );
    // Scales that are not finite (or a negative absmax) are refused, naming the index.
    let set_f32 = |key: &'static str, i: usize, v: f32| {
        rewrite(&bytes, move |t| {
            t.get_mut(key).unwrap().2[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes())
        })
    };
    assert_file_error(
        quant4(&set_f32("base.weight.nested_absmax", 0, f32::NAN)),
        "`base.weight.absmax`: block 0 rebuilds to NaN (nested_quant_map[code] · nested_absmax + nested_offset), expected a finite value",
    );
    assert_file_error(
        quant4(&set_f32("base.weight.nested_absmax", 0, -1.0)),
        "got -1.0 at index 0",
    );
    assert_file_error(
        quant4(&set_f32("base.weight.quant_map", 3, f32::INFINITY)),
        "`base.weight.quant_map`: expected values in [-1, 1], got inf at index 3",
    );
    assert_file_error(
        quant4(&set_f32("base.weight.nested_quant_map", 7, f32::NAN)),
        "base.weight.nested_quant_map",
    );
    // A code entry beyond ±1 overflows the product with a large absmax.
    assert_file_error(
        quant4(&set_f32("base.weight.quant_map", 15, 3e38)),
        "`base.weight.quant_map`: expected values in [-1, 1], got 3e38 at index 15",
    );
}

#[test]
fn int8_values_bitsandbytes_cannot_write_are_errors() {
    let bytes = read("lora_int8_f16.safetensors");
    let edit = |f: &dyn Fn(&mut Tensors)| int8(&rewrite(&bytes, |t| f(t)));
    let set_scb = |r: usize, v: f32| {
        move |t: &mut Tensors| {
            t.get_mut("base.SCB").unwrap().2[4 * r..4 * r + 4].copy_from_slice(&v.to_le_bytes())
        }
    };
    assert_file_error(
        edit(&|t| t.get_mut("base.weight").unwrap().2[130] = 0x80),
        "`base.weight`: expected codes in -127..=127 (bitsandbytes' row-wise int8), got -128 at index 130 ([1, 2])",
    );
    // SCB is the row absmax of the weight rounded to f16: 0 to 65504, or +inf / NaN for a row
    // holding an infinite or NaN weight (3e38 overflows CB · SCB; a negative absmax cannot be).
    for v in [-1.0, f32::NEG_INFINITY, 65505.0, 3e38] {
        assert_file_error(
            edit(&set_scb(5, v)),
            &format!("`base.SCB`: expected row absmax values from 0 to 65504, +inf or NaN (LLM.int8 quantises the f16 weight), got {v:?} at index 5"),
        );
    }
    assert!(edit(&set_scb(5, 65504.0)).is_ok());
    // A non-finite SCB loads as it is, and row 5 dequantises to NaN / inf (never a finite value).
    for v in [f32::NAN, f32::INFINITY] {
        let w = edit(&set_scb(5, v)).unwrap();
        assert_eq!(w.scb[5].to_bits(), v.to_bits());
        let k = w.shape[1];
        let deq = lora_kernels::int8::reference::dequantize(&w).unwrap();
        assert!(deq[5 * k..6 * k].iter().all(|d| !d.is_finite()));
        assert!(deq[4 * k..5 * k].iter().all(|d| d.is_finite()));
    }
    // SCB 0 is an all-zero row (bitsandbytes' absmax of zeros): fine with zero codes only.
    assert_file_error(edit(&set_scb(2, 0.0)), "only zero codes in row 2");
    let zero_row = edit(&|t| {
        set_scb(2, 0.0)(t);
        t.get_mut("base.weight").unwrap().2[256..384].fill(0);
    })
    .unwrap();
    assert_eq!(zero_row.scb[2], 0.0);
    // bitsandbytes writes weight_format as a uint8 scalar: other dtypes and values are errors.
    for (dtype, data) in [
        (Dtype::I8, vec![0u8]),
        (Dtype::I64, vec![0; 8]),
        (Dtype::F32, vec![0; 4]),
        (Dtype::U8, vec![2]),
        (Dtype::U8, vec![0, 0]),
    ] {
        let shape = if data.len() == 2 { vec![2] } else { vec![] };
        let r = edit(&|t| {
            t.insert(
                "base.weight_format".into(),
                (dtype, shape.clone(), data.clone()),
            );
        });
        assert_file_error(r, "base.weight_format");
    }
    assert!(edit(&|t| {
        t.insert("base.weight_format".into(), (Dtype::U8, vec![1], vec![0]));
    })
    .is_ok());
}
