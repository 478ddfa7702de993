//! A deterministic mutation fuzz of the loaders: the golden peft adapter folders and bitsandbytes
//! state dicts (NF4 double-quantised as `Linear4bit` saved it, FP4 with a plain absmax built from the
//! golden `fp4_f32_bs64` case, int8 as `Linear8bitLt` saved it), mutated from fixed seeds: bit flips,
//! truncation, appended bytes, JSON values of the wrong type or range, removed and duplicated keys
//! (in the JSON documents and in the safetensors header), huge shapes, dtype changes, removed and
//! duplicated tensors, NaN and infinite payloads. For every input: no panic, `Ok` only when the
//! result passes the invariants below, and the same result (value or error message) on a second load.
mod common;

use common::tensors::{serialize, tensors, Tensors};
use common::Rng;
use lora_kernels::golden::golden_dir;
use lora_kernels::int8::Int8Weight;
use lora_kernels::peft::PeftAdapter;
use lora_kernels::quant4::{self, Absmax, Quant4Weight};
use lora_kernels::{Result, MAX_RANK};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Mutated inputs per target (five targets); `FUZZ_LOADERS_CASES` overrides it.
const CASES: usize = 800;

/// The number of cases, and the seed of target `seed` (`FUZZ_LOADERS_SEED` shifts every seed, to
/// explore beyond the fixed inputs `cargo test` runs).
fn budget(seed: u64) -> (usize, Rng) {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let cases = env("FUZZ_LOADERS_CASES").map_or(CASES, |c| c as usize);
    let shift = env("FUZZ_LOADERS_SEED").unwrap_or(0);
    (cases, Rng::new(seed.wrapping_add(shift.wrapping_mul(1000))))
}

/// The header of a safetensors file (as ordered entries) and its data.
fn split(bytes: &[u8]) -> (Vec<(String, Value)>, &[u8]) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header.into_iter().collect(), &bytes[8 + n..])
}

/// A safetensors file from header entries written in this order (duplicates kept) and data.
fn join(entries: &[(String, Value)], data: &[u8]) -> Vec<u8> {
    let body: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
        .collect();
    let text = format!("{{{}}}", body.join(","));
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text.as_bytes());
    out.extend(data);
    out
}

/// JSON values of every type and awkward range.
fn nasty(rng: &mut Rng) -> Value {
    rng.pick(&[
        Value::Null,
        json!(true),
        json!(false),
        json!("true"),
        json!(""),
        json!("256"),
        json!(0),
        json!(-1),
        json!(1),
        json!(8),
        json!(8.5),
        json!(257),
        json!(1e300),
        json!(-1e300),
        json!(1e-320),
        json!(3.4e38),
        json!(u64::MAX),
        json!(i64::MIN),
        json!([]),
        json!({}),
        json!([-1, 96, 128]),
        json!([4294967296u64, 4294967296u64]),
        json!([1e20, 2]),
        json!([96, 128]),
        json!({"q_proj": 8.5}),
        json!({"q_proj": 1e300}),
        json!("nf4"),
        json!("fp4"),
        json!("float16"),
        json!("LORA"),
    ])
    .clone()
}

/// `text` (a JSON document) mutated once.
fn mutate_json(rng: &mut Rng, text: &[u8]) -> Vec<u8> {
    let Ok(mut doc) = serde_json::from_slice::<Value>(text) else {
        return text.to_vec();
    };
    let keys: Vec<String> = doc
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    match rng.below(7) {
        0 | 1 if !keys.is_empty() => {
            let key = rng.pick(&keys).clone();
            doc[key] = nasty(rng);
        }
        2 if !keys.is_empty() => {
            let key = rng.pick(&keys).clone();
            doc.as_object_mut().unwrap().remove(&key);
        }
        3 => doc = nasty(rng),
        4 => {
            let cut = rng.below(text.len() + 1);
            return text[..cut].to_vec();
        }
        5 if !keys.is_empty() => {
            // A duplicated key, before or after the original.
            let key = rng.pick(&keys).clone();
            let dup = format!("{}: {}", Value::String(key), nasty(rng));
            let body = doc.to_string();
            return if rng.below(2) == 0 {
                format!("{{{dup}, {}", &body[1..])
            } else if body.len() > 2 {
                format!("{}, {dup}}}", &body[..body.len() - 1])
            } else {
                format!("{{{dup}}}")
            }
            .into_bytes();
        }
        _ => {
            // A nested value: a pattern entry or a shape element.
            if let Some(m) = doc.as_object_mut() {
                for key in ["rank_pattern", "alpha_pattern"] {
                    if m.contains_key(key) && rng.below(2) == 0 {
                        m.insert(key.into(), json!({ "v_proj": nasty(rng) }));
                    }
                }
                if let Some(Value::Array(shape)) = m.get_mut("shape") {
                    if !shape.is_empty() {
                        let i = rng.below(shape.len());
                        shape[i] = nasty(rng);
                    }
                }
            }
        }
    }
    doc.to_string().into_bytes()
}

/// `bytes` (a safetensors file) mutated once; `json_tensor` names a tensor holding JSON.
fn mutate_safetensors(rng: &mut Rng, bytes: &[u8], json_tensor: Option<&str>) -> Vec<u8> {
    let mut t = tensors(bytes);
    let names: Vec<String> = t.keys().cloned().collect();
    let name = rng.pick(&names).clone();
    match rng.below(11) {
        0 => {
            let mut out = bytes.to_vec();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            return out;
        }
        1 => return bytes[..rng.below(bytes.len())].to_vec(),
        2 => {
            let mut out = bytes.to_vec();
            out.extend((0..1 + rng.below(9)).map(|_| rng.next_u64() as u8));
            return out;
        }
        3 => {
            t.remove(&name);
        }
        4 => {
            // A second tensor with a near name: another quant state, another module, a foreign one.
            let new = match rng.below(4) {
                0 => name.replace("nf4", "fp4"),
                1 => name.replace("layers.0", "layers.7"),
                2 => name.replace("lora_A", "lora_B"),
                _ => format!("{name}.extra"),
            };
            let v = t[&name].clone();
            t.insert(new, v);
        }
        5 => {
            // A NaN, infinite, negative or huge element.
            let (dtype, _, data) = t.get_mut(&name).unwrap();
            let v = *rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1.0, 3e38, 0.0]);
            match dtype {
                Dtype::F32 if data.len() >= 4 => {
                    let i = 4 * rng.below(data.len() / 4);
                    data[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
                Dtype::F16 | Dtype::BF16 if data.len() >= 2 => {
                    let i = 2 * rng.below(data.len() / 2);
                    let b = if *dtype == Dtype::F16 {
                        half::f16::from_f32(v).to_le_bytes()
                    } else {
                        half::bf16::from_f32(v).to_le_bytes()
                    };
                    data[i..i + 2].copy_from_slice(&b);
                }
                _ if !data.is_empty() => {
                    let i = rng.below(data.len());
                    data[i] = *rng.pick(&[0x80, 0x7f, 0xff, 0x00, 0x01]);
                }
                _ => {}
            }
        }
        6 => {
            // Another dtype over the same bytes.
            let (dtype, shape, data) = t.get_mut(&name).unwrap();
            let new = *rng.pick(&[Dtype::U8, Dtype::I8, Dtype::F16, Dtype::F32, Dtype::I64]);
            if data.len() % (new.bitsize() / 8) == 0 {
                *dtype = new;
                *shape = vec![data.len() / (new.bitsize() / 8)];
            }
        }
        7 => {
            // A shape that does not match the bytes, or a huge one (the header only).
            let (mut entries, data) = split(bytes);
            let i = rng.below(entries.len());
            if entries[i].0 != "__metadata__" {
                entries[i].1["shape"] = rng
                    .pick(&[
                        json!([1u64 << 40, 1u64 << 24]),
                        json!([u64::MAX]),
                        json!([u64::MAX, 2]),
                        json!([0]),
                        json!([]),
                        json!([3, 5, 7]),
                        json!([-1, 4]),
                    ])
                    .clone();
            }
            return join(&entries, data);
        }
        8 => {
            // A duplicated header entry, the same or with other offsets.
            let (mut entries, data) = split(bytes);
            let i = rng.below(entries.len());
            let mut dup = entries[i].clone();
            if rng.below(2) == 0 && dup.0 != "__metadata__" {
                dup.1["data_offsets"] = json!([0, 0]);
            }
            let at = rng.below(entries.len() + 1);
            entries.insert(at, dup);
            return join(&entries, data);
        }
        9 => {
            // Swapped offsets of two entries.
            let (mut entries, data) = split(bytes);
            let (i, j) = (rng.below(entries.len()), rng.below(entries.len()));
            if entries[i].0 != "__metadata__" && entries[j].0 != "__metadata__" {
                let a = entries[i].1["data_offsets"].clone();
                entries[i].1["data_offsets"] = entries[j].1["data_offsets"].clone();
                entries[j].1["data_offsets"] = a;
            }
            return join(&entries, data);
        }
        _ => {
            if let Some(key) = json_tensor.filter(|k| t.get(*k).is_some_and(|e| e.0 == Dtype::U8)) {
                let entry = t.get_mut(key).unwrap();
                entry.2 = mutate_json(rng, &entry.2);
                entry.1 = vec![entry.2.len()];
            }
        }
    }
    serialize(&t)
}

/// Loads twice: no panic, `Ok` only when `check` passes, the same result both times.
fn run<T: std::fmt::Debug>(
    what: &str,
    case: usize,
    load: impl Fn() -> Result<T>,
    check: impl Fn(&T) -> std::result::Result<(), String>,
) -> bool {
    let once = || match catch_unwind(AssertUnwindSafe(&load)) {
        Ok(r) => r,
        Err(_) => panic!("{what} case {case}: the loader panicked"),
    };
    let first = once();
    if std::env::var_os("FUZZ_LOADERS_VERBOSE").is_some() {
        if let Err(e) = &first {
            println!("ERR {what}: {e}");
        }
    }
    if let Ok(v) = &first {
        if let Err(why) = check(v) {
            panic!("{what} case {case}: loaded, but {why}");
        }
    }
    let second = once();
    assert_eq!(
        format!("{first:?}"),
        format!("{second:?}"),
        "{what} case {case}: a second load differs"
    );
    first.is_ok()
}

fn finite(name: &str, v: &[f32]) -> std::result::Result<(), String> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(format!("{name}[{i}] = {}", v[i])),
        None => Ok(()),
    }
}

fn check_adapter(a: &PeftAdapter) -> std::result::Result<(), String> {
    if a.modules.is_empty() {
        return Err("no modules".into());
    }
    for (key, m) in &a.modules {
        let err = |what: String| Err(format!("module {key}: {what}"));
        if &m.name != key {
            return err(format!("name {}", m.name));
        }
        if !(1..=MAX_RANK).contains(&m.rank) || m.in_features == 0 || m.out_features == 0 {
            return err(format!(
                "rank {} in {} out {}",
                m.rank, m.in_features, m.out_features
            ));
        }
        if m.lora_a.len() != m.rank * m.in_features || m.lora_b.len() != m.out_features * m.rank {
            return err(format!("A {} B {} values", m.lora_a.len(), m.lora_b.len()));
        }
        if !m.scale.is_finite() {
            return err(format!("scale {}", m.scale));
        }
        // Weights may hold NaN or infinity (peft loads them as they are).
        match &m.magnitude {
            Some(mag) if a.use_dora && mag.len() == m.out_features => {}
            None if !a.use_dora => {}
            other => return err(format!("magnitude {other:?} with use_dora {}", a.use_dora)),
        }
    }
    Ok(())
}

fn check_quant4(w: &Quant4Weight) -> std::result::Result<(), String> {
    w.validate().map_err(|e| e.to_string())?;
    finite("quant_map", &w.code)?;
    let absmax = w.absmax.values().map_err(|e| e.to_string())?;
    // A plain absmax may be NaN or +inf (a block holding such a weight), never negative; a
    // double-quantised one always rebuilds finite (slightly below 0 is possible: the nested codes
    // round `absmax - offset`).
    match &w.absmax {
        Absmax::Nested { offset, .. } => {
            finite("nested_offset", &[*offset])?;
            finite("absmax", &absmax)?;
        }
        Absmax::Plain(_) => {
            if let Some(i) = absmax.iter().position(|v| *v < 0.0) {
                return Err(format!("absmax[{i}] = {}", absmax[i]));
            }
        }
    }
    let deq: Vec<f32> = quant4::reference::dequantize(w).map_err(|e| e.to_string())?;
    if let Some(i) =
        (0..deq.len()).find(|&i| !deq[i].is_finite() && absmax[i / w.blocksize].is_finite())
    {
        return Err(format!(
            "dequantized[{i}] = {} from a finite absmax",
            deq[i]
        ));
    }
    Ok(())
}

fn check_int8(w: &Int8Weight) -> std::result::Result<(), String> {
    w.validate().map_err(|e| e.to_string())?;
    if w.cb.contains(&i8::MIN) {
        return Err("a -128 code".into());
    }
    let deq = lora_kernels::int8::reference::dequantize(w).map_err(|e| e.to_string())?;
    let k = w.shape[1];
    if let Some(i) = (0..deq.len()).find(|&i| !deq[i].is_finite() && w.scb[i / k].is_finite()) {
        return Err(format!("dequantized[{i}] = {} from a finite SCB", deq[i]));
    }
    Ok(())
}

/// A `Linear4bit` state dict with a plain absmax, from the golden FP4 quantiser case.
fn fp4_state_dict() -> Vec<u8> {
    let case = tensors(&std::fs::read(golden_dir().join("fp4_f32_bs64.safetensors")).unwrap());
    let shape = &case["weight"].1;
    let state = json!({"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": shape});
    let state = state.to_string().into_bytes();
    let mut t = Tensors::new();
    let packed = case["packed"].2.clone();
    t.insert(
        "base.weight".into(),
        (Dtype::U8, vec![packed.len(), 1], packed),
    );
    t.insert("base.weight.absmax".into(), case["absmax"].clone());
    t.insert("base.weight.quant_map".into(), case["code"].clone());
    t.insert(
        "base.weight.quant_state.bitsandbytes__fp4".into(),
        (Dtype::U8, vec![state.len()], state),
    );
    serialize(&t)
}

fn fuzz_state_dict<T: std::fmt::Debug>(
    what: &str,
    seed: u64,
    bytes: &[u8],
    json_tensor: Option<&str>,
    load: impl Fn(&[u8]) -> Result<T>,
    check: impl Fn(&T) -> std::result::Result<(), String> + Copy,
) {
    assert!(
        run(what, usize::MAX, || load(bytes), check),
        "{what}: the unmutated file must load"
    );
    let (cases, mut rng) = budget(seed);
    let mut loaded = 0;
    for case in 0..cases {
        let mut input = mutate_safetensors(&mut rng, bytes, json_tensor);
        if rng.below(4) == 0 && SafeTensors::deserialize(&input).is_ok() {
            input = mutate_safetensors(&mut rng, &input, json_tensor);
        }
        loaded += run(what, case, || load(&input), check) as usize;
    }
    // Some mutations leave a loadable file (a flipped code bit), most do not.
    println!("{what}: {loaded} of {cases} mutated files loaded");
    assert!(
        loaded > 0 && loaded < cases,
        "{what}: {loaded} of {cases} loaded"
    );
}

#[test]
fn mutated_nf4_state_dicts_never_panic_and_load_deterministically() {
    let bytes = std::fs::read(golden_dir().join("qlora_nf4_f32.safetensors")).unwrap();
    fuzz_state_dict(
        "nf4",
        1,
        &bytes,
        Some("base.weight.quant_state.bitsandbytes__nf4"),
        |b| Quant4Weight::from_state_dict(b, "base.", "nf4.safetensors"),
        check_quant4,
    );
}

#[test]
fn mutated_fp4_state_dicts_never_panic_and_load_deterministically() {
    fuzz_state_dict(
        "fp4",
        2,
        &fp4_state_dict(),
        Some("base.weight.quant_state.bitsandbytes__fp4"),
        |b| Quant4Weight::from_state_dict(b, "base.", "fp4.safetensors"),
        check_quant4,
    );
}

#[test]
fn mutated_int8_state_dicts_never_panic_and_load_deterministically() {
    let bytes = std::fs::read(golden_dir().join("lora_int8_f16.safetensors")).unwrap();
    fuzz_state_dict(
        "int8",
        3,
        &bytes,
        None,
        |b| Int8Weight::from_state_dict(b, "base.", "int8.safetensors"),
        check_int8,
    );
}

fn fuzz_adapter(name: &str, seed: u64) {
    let dir = golden_dir().join(name);
    let config = std::fs::read(dir.join("adapter_config.json")).unwrap();
    let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let origin = Path::new("fuzz").join(name);
    let load = |c: &[u8], w: &[u8]| PeftAdapter::from_bytes(c, w, &origin);
    assert!(run(
        name,
        usize::MAX,
        || load(&config, &weights),
        check_adapter
    ));
    let (cases, mut rng) = budget(seed);
    let mut loaded = 0;
    for case in 0..cases {
        let (mut c, mut w) = (config.clone(), weights.clone());
        match rng.below(3) {
            0 => c = mutate_json(&mut rng, &c),
            1 => w = mutate_safetensors(&mut rng, &w, None),
            _ => {
                c = mutate_json(&mut rng, &c);
                w = mutate_safetensors(&mut rng, &w, None);
            }
        }
        loaded += run(name, case, || load(&c, &w), check_adapter) as usize;
    }
    println!("{name}: {loaded} of {cases} mutated folders loaded");
    assert!(
        loaded > 0 && loaded < cases,
        "{name}: {loaded} of {cases} loaded"
    );
}

#[test]
fn mutated_lora_adapters_never_panic_and_load_deterministically() {
    fuzz_adapter("adapter_lora", 4);
}

#[test]
fn mutated_dora_adapters_never_panic_and_load_deterministically() {
    fuzz_adapter("adapter_dora", 5);
}

/// A plain absmax of NaN or +inf (bitsandbytes' absmax of a block holding such a weight) loads as it
/// is, and only that block dequantises to non-finite values: no value silently becomes another.
#[test]
fn non_finite_plain_absmax_loads_and_dequantises_non_finite() {
    let bytes = fp4_state_dict();
    for bad in [f32::NAN, f32::INFINITY] {
        let mut t = tensors(&bytes);
        t.get_mut("base.weight.absmax").unwrap().2[4..8].copy_from_slice(&bad.to_le_bytes());
        let w = Quant4Weight::from_state_dict(&serialize(&t), "base.", "fp4.safetensors").unwrap();
        let absmax = w.absmax.values().unwrap();
        assert_eq!(absmax[1].to_bits(), bad.to_bits());
        let deq: Vec<f32> = quant4::reference::dequantize(&w).unwrap();
        let bs = w.blocksize;
        assert!(
            deq[bs..2 * bs].iter().all(|v| !v.is_finite()),
            "block 1 must not be finite"
        );
        assert!(deq[..bs]
            .iter()
            .chain(&deq[2 * bs..])
            .all(|v| v.is_finite()));
    }
}
