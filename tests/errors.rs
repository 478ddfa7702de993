//! Bad input gets a clear error naming the argument, what was expected and what came; never a panic
//! or a launch. Runs on the CPU reference always and on the GPU when one is present.
mod common;

use lora_kernels::lora::reference;
use lora_kernels::{Error, Gpu, LoraAdapter, LoraShape};

/// Asserts `r` is an `InvalidArgument` for `arg` whose message mentions `expected_part`.
fn assert_invalid<T: std::fmt::Debug>(r: lora_kernels::Result<T>, arg: &str, expected_part: &str) {
    match r {
        Err(Error::InvalidArgument {
            arg: a,
            expected,
            actual,
        }) => {
            assert_eq!(
                a, arg,
                "wrong argument named (expected {expected}, got {actual})"
            );
            let msg = format!("{expected} / {actual}");
            assert!(
                msg.contains(expected_part),
                "message `{msg}` does not mention `{expected_part}`"
            );
        }
        other => panic!("expected InvalidArgument for `{arg}`, got {other:?}"),
    }
}

const SHAPE: LoraShape = LoraShape { m: 3, k: 8, n: 5 };

/// One bad input against the CPU reference: a valid problem (m=3, k=8, n=5, rank-2 adapters of 16 and
/// 10 elements) with one thing changed, and the argument and text its error must carry.
struct Bad {
    shape: LoraShape,
    x_len: usize,
    base_len: usize,
    /// (A length, B length, rank, scale) per adapter.
    adapters: Vec<(usize, usize, usize, f32)>,
    arg: &'static str,
    text: &'static str,
}

fn bad(change: impl FnOnce(&mut Bad), arg: &'static str, text: &'static str) -> Bad {
    let mut b = Bad {
        shape: SHAPE,
        x_len: 24,
        base_len: 15,
        adapters: vec![(16, 10, 2, 1.0)],
        arg,
        text,
    };
    change(&mut b);
    b
}

fn values(len: usize) -> Vec<f32> {
    (0..len).map(|i| (i as f32 * 0.37).sin() + 0.1).collect()
}

#[test]
fn cpu_reference_rejects_bad_input() {
    let cases = [
        bad(|b| b.shape.m = 0, "shape.m", "at least 1"),
        bad(|b| b.shape.k = 0, "shape.k", "at least 1"),
        bad(|b| b.shape.n = 0, "shape.n", "at least 1"),
        bad(|b| b.adapters[0].2 = 0, "adapters[0].rank", "1 to 256"),
        bad(
            |b| b.adapters[0] = (257 * 8, 5 * 257, 257, 1.0),
            "adapters[0].rank",
            "1 to 256",
        ),
        bad(
            |b| b.adapters[0].3 = f32::NAN,
            "adapters[0].scale",
            "finite",
        ),
        bad(
            |b| b.adapters[0].3 = f32::INFINITY,
            "adapters[0].scale",
            "finite",
        ),
        bad(|b| b.x_len = 23, "x", "at least 24"),
        bad(|b| b.base_len = 14, "base", "at least 15"),
        bad(
            |b| b.adapters[0].0 = 15,
            "adapters[0].lora_a",
            "rank=2, k=8",
        ),
        bad(|b| b.adapters[0].1 = 9, "adapters[0].lora_b", "n=5, rank=2"),
        // A rank that disagrees with A's length (A holds 2 rows of k=8, rank says 3).
        bad(|b| b.adapters[0].2 = 3, "adapters[0].lora_a", "24"),
        // The second adapter is the bad one, and is named so.
        bad(
            |b| b.adapters.push((16, 4, 2, 1.0)),
            "adapters[1].lora_b",
            "10",
        ),
    ];
    for case in cases {
        let (x, base) = (values(case.x_len), values(case.base_len));
        let buffers: Vec<_> = case
            .adapters
            .iter()
            .map(|&(a, b, _, _)| (values(a), values(b)))
            .collect();
        let adapters: Vec<_> = buffers
            .iter()
            .zip(&case.adapters)
            .map(|((a, b), &(_, _, r, s))| LoraAdapter::new(&a[..], &b[..], r, s))
            .collect();
        assert_invalid(
            reference::lora_forward(&x, &base, &adapters, case.shape),
            case.arg,
            case.text,
        );
    }
}

/// The valid problem the GPU test breaks one argument of.
struct Valid {
    x: Vec<f32>,
    base: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
}

fn valid() -> Valid {
    Valid {
        x: values(24),
        base: values(15),
        a: values(16),
        b: values(10),
    }
}

#[test]
fn valid_input_is_accepted() {
    let v = valid();
    let y = reference::lora_forward(
        &v.x,
        &v.base,
        &[LoraAdapter::new(&v.a[..], &v.b[..], 2, 1.0)],
        SHAPE,
    )
    .unwrap();
    assert_eq!(y.len(), 15);
}

#[test]
fn merge_rejects_non_finite_results() {
    let w = vec![f32::MAX; 16];
    let a = [1.0f32; 8];
    let b = [f32::MAX; 2];
    let r = reference::lora_merged_weight(&w, LoraAdapter::new(&a[..], &b[..], 1, 1.0), 8, 2);
    assert_invalid(r, "weight", "finite");
}

#[test]
fn no_device_is_an_error_not_a_panic() {
    // The driver (or the emulator) is chosen before any CUDA call, as in every GPU test: the crate's
    // driver probe is cached, so a `Gpu::new` before the choice would hide the emulator from the
    // tests running beside this one.
    common::driver::select();
    match Gpu::new(1000) {
        Err(Error::NoDevice(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected NoDevice for device 1000, got {other:?}"),
    }
}

#[test]
fn gpu_rejects_bad_input_before_launching() {
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream();
    let v = valid();
    let (x, base, a, b) = (
        s.clone_htod(&v.x).unwrap(),
        s.clone_htod(&v.base).unwrap(),
        s.clone_htod(&v.a).unwrap(),
        s.clone_htod(&v.b).unwrap(),
    );
    let mut y = s.alloc_zeros::<f32>(15).unwrap();
    let mut y_short = s.alloc_zeros::<f32>(14).unwrap();
    let ok = LoraAdapter::new(&a, &b, 2, 1.0);
    assert_invalid(
        gpu.lora_forward(&x, &base, &[ok], LoraShape::new(0, 8, 5), &mut y),
        "shape.m",
        "at least 1",
    );
    assert_invalid(
        gpu.lora_forward(&x, &base, &[ok], SHAPE, &mut y_short),
        "y",
        "at least 15",
    );
    assert_invalid(
        gpu.lora_forward(&x.slice(..23), &base, &[ok], SHAPE, &mut y),
        "x",
        "at least 24",
    );
    assert_invalid(
        gpu.lora_forward(&x, &base.slice(..14), &[ok], SHAPE, &mut y),
        "base",
        "at least 15",
    );
    assert_invalid(
        gpu.lora_forward(
            &x,
            &base,
            &[LoraAdapter::new(&a, &b, 0, 1.0)],
            SHAPE,
            &mut y,
        ),
        "adapters[0].rank",
        "1 to 256",
    );
    assert_invalid(
        gpu.lora_forward(
            &x,
            &base,
            &[LoraAdapter::new(&a, &b, 2, f32::NAN)],
            SHAPE,
            &mut y,
        ),
        "adapters[0].scale",
        "finite",
    );
    assert_invalid(
        gpu.lora_forward(
            &x,
            &base,
            &[LoraAdapter::new(&a, &b, 3, 1.0)],
            SHAPE,
            &mut y,
        ),
        "adapters[0].lora_a",
        "24",
    );
    assert_invalid(
        gpu.lora_forward_inplace(
            &x,
            &[LoraAdapter::new(&a.slice(..), &b.slice(..9), 2, 1.0)],
            SHAPE,
            &mut y,
        ),
        "adapters[0].lora_b",
        "10",
    );
    // Nothing was launched: y is still zero and the stream is healthy.
    assert!(s.clone_dtoh(&y).unwrap().iter().all(|&v| v == 0.0));
    gpu.lora_forward(&x, &base, &[ok], SHAPE, &mut y).unwrap();
    let expected = reference::lora_forward(
        &v.x,
        &v.base,
        &[LoraAdapter::new(&v.a[..], &v.b[..], 2, 1.0)],
        SHAPE,
    )
    .unwrap();
    let got = s.clone_dtoh(&y).unwrap();
    for (g, e) in got.iter().zip(&expected) {
        assert!((g - e).abs() <= 1e-5 * (1.0 + e.abs()), "{g} vs {e}");
    }
}

#[test]
fn dora_references_reject_bad_input() {
    use lora_kernels::dora::reference as dora;
    let (w, a, b) = (values(40), values(16), values(10));
    let adapter = LoraAdapter::new(&a[..], &b[..], 2, 1.0);
    assert_invalid(
        dora::dora_weight_norm(&w[..39], adapter, 8, 5),
        "weight",
        "at least 40",
    );
    assert_invalid(dora::dora_weight_norm(&w, adapter, 0, 5), "k", "at least 1");
    assert_invalid(
        dora::dora_weight_norm(&w, LoraAdapter::new(&a[..], &b[..], 2, f32::NAN), 8, 5),
        "adapter.scale",
        "finite",
    );
    assert_invalid(
        dora::dora_factor(&values(4), &[1.0f32; 5]),
        "magnitude",
        "at least 5",
    );
    let (x, base) = (values(24), values(15));
    assert_invalid(
        dora::dora_forward(&x, &base, None, adapter, &[1.0f32; 4], SHAPE),
        "factor",
        "at least 5",
    );
    assert_invalid(
        dora::dora_forward(&x, &base, Some(&values(4)), adapter, &[1.0f32; 5], SHAPE),
        "bias",
        "at least 5",
    );
    assert_invalid(
        dora::dora_merged_weight(&w, adapter, Some(&[1.0f32; 4]), 8, 5),
        "factor",
        "at least 5",
    );
    assert_invalid(
        dora::dora_merged_weight(&w, adapter, Some(&[f32::INFINITY; 5]), 8, 5),
        "weight",
        "finite",
    );
}

#[test]
fn mixed_batch_reference_rejects_bad_indices() {
    let (x, base, a, b) = (values(24), values(15), values(16), values(10));
    let adapters = [LoraAdapter::new(&a[..], &b[..], 2, 1.0)];
    assert_invalid(
        lora_kernels::mixed_batch::reference::lora_forward_mixed(
            &x,
            &base,
            &adapters,
            &[0, -1, 1],
            SHAPE,
        ),
        "indices[2]",
        "-1 (no adapter) to 0",
    );
    assert_invalid(
        lora_kernels::mixed_batch::reference::lora_forward_mixed(
            &x,
            &base,
            &adapters,
            &[0, -2, 0],
            SHAPE,
        ),
        "indices[1]",
        "-1",
    );
    assert_invalid(
        lora_kernels::mixed_batch::reference::lora_forward_mixed(
            &x,
            &base,
            &adapters,
            &[0, 0],
            SHAPE,
        ),
        "indices",
        "at least 3",
    );
    let y = lora_kernels::mixed_batch::reference::lora_forward_mixed(
        &x,
        &base,
        &adapters,
        &[-1, 0, -1],
        SHAPE,
    )
    .unwrap();
    assert_eq!(&y[..5], &base[..5], "row 0 has no adapter: y = base");
}

/// The GPU entry points added for the base product, the quantisers, LLM.int8 and the layer refuse bad
/// input before launching anything.
#[test]
fn gpu_products_quantisers_and_layers_reject_bad_input() {
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream();
    let (m, k, n) = (3, 8, 5);
    let shape = LoraShape::new(m, k, n);
    let x = s.clone_htod(&values(m * k)).unwrap();
    let w = s.clone_htod(&values(n * k)).unwrap();
    let short_w = s.clone_htod(&values(n * k - 1)).unwrap();
    let bias4 = s.clone_htod(&values(4)).unwrap();
    let mut y = s.alloc_zeros::<f32>(m * n).unwrap();
    let mut short_y = s.alloc_zeros::<f32>(m * n - 1).unwrap();

    assert_invalid(
        gpu.linear(&x, &short_w, None, shape, &mut y),
        "weight",
        "40",
    );
    assert_invalid(gpu.linear(&x, &w, None, shape, &mut short_y), "y", "15");
    assert_invalid(
        gpu.linear(&x, &w, Some(&bias4.slice(..)), shape, &mut y),
        "bias",
        "5",
    );
    assert_invalid(
        gpu.linear(&x, &w, None, LoraShape::new(0, k, n), &mut y),
        "shape.m",
        "at least 1",
    );

    use lora_kernels::quant4::QuantType;
    assert_invalid(
        gpu.quantize_quant4(&w, [n, k], 48, QuantType::Nf4, false),
        "blocksize",
        "power of two",
    );
    assert_invalid(
        gpu.quantize_quant4(&short_w, [n, k], 64, QuantType::Nf4, false),
        "weight",
        "40",
    );
    assert_invalid(gpu.quantize_int8(&short_w, k, n), "weight", "40");

    let q = lora_kernels::int8::reference::quantize_rowwise(&values(n * k), [n, k]).unwrap();
    let dev = gpu.upload_int8(&q).unwrap();
    assert_invalid(
        gpu.int8_linear_llm(&x, &dev, None, f32::NAN, m, &mut y),
        "threshold",
        "finite",
    );
    assert_invalid(
        gpu.int8_linear_llm(&x, &dev, None, 6.0, m, &mut short_y),
        "y",
        "15",
    );

    let mut short_out = s.alloc_zeros::<f32>(n * k - 1).unwrap();
    assert_invalid(gpu.int8_dequantize(&dev, &mut short_out), "out", "40");
    let (a, b_short) = (
        s.clone_htod(&values(2 * k)).unwrap(),
        s.clone_htod(&values(n * 2 - 1)).unwrap(),
    );
    let bad_adapter = [LoraAdapter::new(&a, &b_short, 2, 1.0)];
    assert_invalid(
        gpu.linear_lora_forward(&x, &w, None, &bad_adapter, shape, &mut y),
        "adapters[0].lora_b",
        "10",
    );
    assert_invalid(
        gpu.quantized_lora_forward(
            &x,
            lora_kernels::linear::QuantizedWeight::Int8(&dev),
            None,
            &bad_adapter,
            m,
            &mut y,
        ),
        "adapters[0].lora_b",
        "10",
    );

    use lora_kernels::layer::{Layer, LayerAdapter};
    assert_invalid(
        Layer::dense(&gpu, &values(n * k - 1), None, k, n),
        "weight",
        "40",
    );
    let mut layer = Layer::dense(&gpu, &values(n * k), None, k, n).unwrap();
    let adapter = LayerAdapter {
        lora_a: values(2 * k),
        lora_b: values(n * 2 - 1),
        rank: 2,
        scale: 1.0,
        magnitude: None,
    };
    assert_invalid(layer.add_adapter("a", &adapter), "adapter `a`.lora_b", "10");
    assert_invalid(layer.forward(&x, m, None, &mut short_y), "y", "15");
}
