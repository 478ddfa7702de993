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

/// A valid problem: m=3, k=8, n=5, one rank-2 adapter.
struct Valid {
    x: Vec<f32>,
    base: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
}

fn valid() -> Valid {
    let v = |len: usize| {
        (0..len)
            .map(|i| (i as f32 * 0.37).sin())
            .collect::<Vec<_>>()
    };
    Valid {
        x: v(24),
        base: v(15),
        a: v(16),
        b: v(10),
    }
}

const SHAPE: LoraShape = LoraShape { m: 3, k: 8, n: 5 };

/// A call on bad input, the argument its error must name, and text its message must contain.
type BadCase = (
    Box<dyn Fn() -> lora_kernels::Result<Vec<f32>>>,
    &'static str,
    &'static str,
);

/// Each bad input, applied to the CPU reference.
fn cpu_cases() -> Vec<BadCase> {
    vec![
        (
            Box::new(|| {
                let v = valid();
                reference::lora_forward(
                    &v.x,
                    &v.base,
                    &[LoraAdapter::new(&v.a[..], &v.b[..], 2, 1.0)],
                    LoraShape::new(0, 8, 5),
                )
            }),
            "shape.m",
            "at least 1",
        ),
        (
            Box::new(|| {
                let v = valid();
                reference::lora_forward(
                    &v.x,
                    &v.base,
                    &[LoraAdapter::new(&v.a[..], &v.b[..], 2, 1.0)],
                    LoraShape::new(3, 0, 5),
                )
            }),
            "shape.k",
            "at least 1",
        ),
        (
            Box::new(|| {
                let v = valid();
                reference::lora_forward(
                    &v.x,
                    &v.base,
                    &[LoraAdapter::new(&v.a[..], &v.b[..], 2, 1.0)],
                    LoraShape::new(3, 8, 0),
                )
            }),
            "shape.n",
            "at least 1",
        ),
        (
            Box::new(|| {
                let v = valid();
                reference::lora_forward(
                    &v.x,
                    &v.base,
                    &[LoraAdapter::new(&v.a[..], &v.b[..], 0, 1.0)],
                    SHAPE,
                )
            }),
            "adapters[0].rank",
            "1 to 256",
        ),
        (
            Box::new(|| {
                let v = valid();
                let a = vec![0.5f32; 257 * 8];
                let b = vec![0.5f32; 5 * 257];
                reference::lora_forward(
                    &v.x,
                    &v.base,
                    &[LoraAdapter::new(&a[..], &b[..], 257, 1.0)],
                    SHAPE,
                )
            }),
            "adapters[0].rank",
            "1 to 256",
        ),
        (
            Box::new(|| {
                let v = valid();
                reference::lora_forward(
                    &v.x,
                    &v.base,
                    &[LoraAdapter::new(&v.a[..], &v.b[..], 2, f32::NAN)],
                    SHAPE,
                )
            }),
            "adapters[0].scale",
            "finite",
        ),
        (
            Box::new(|| {
                let v = valid();
                reference::lora_forward(
                    &v.x,
                    &v.base,
                    &[LoraAdapter::new(&v.a[..], &v.b[..], 2, f32::INFINITY)],
                    SHAPE,
                )
            }),
            "adapters[0].scale",
            "finite",
        ),
        (
            Box::new(|| {
                let v = valid();
                reference::lora_forward(
                    &v.x[..23],
                    &v.base,
                    &[LoraAdapter::new(&v.a[..], &v.b[..], 2, 1.0)],
                    SHAPE,
                )
            }),
            "x",
            "at least 24",
        ),
        (
            Box::new(|| {
                let v = valid();
                reference::lora_forward(
                    &v.x,
                    &v.base[..14],
                    &[LoraAdapter::new(&v.a[..], &v.b[..], 2, 1.0)],
                    SHAPE,
                )
            }),
            "base",
            "at least 15",
        ),
        (
            Box::new(|| {
                let v = valid();
                reference::lora_forward(
                    &v.x,
                    &v.base,
                    &[LoraAdapter::new(&v.a[..15], &v.b[..], 2, 1.0)],
                    SHAPE,
                )
            }),
            "adapters[0].lora_a",
            "rank=2, k=8",
        ),
        (
            Box::new(|| {
                let v = valid();
                reference::lora_forward(
                    &v.x,
                    &v.base,
                    &[LoraAdapter::new(&v.a[..], &v.b[..9], 2, 1.0)],
                    SHAPE,
                )
            }),
            "adapters[0].lora_b",
            "n=5, rank=2",
        ),
        // A rank that disagrees with A's length (A holds 2 rows of k=8, rank says 3).
        (
            Box::new(|| {
                let v = valid();
                reference::lora_forward(
                    &v.x,
                    &v.base,
                    &[LoraAdapter::new(&v.a[..], &v.b[..], 3, 1.0)],
                    SHAPE,
                )
            }),
            "adapters[0].lora_a",
            "24",
        ),
        // The second adapter is the bad one, and is named so.
        (
            Box::new(|| {
                let v = valid();
                reference::lora_forward(
                    &v.x,
                    &v.base,
                    &[
                        LoraAdapter::new(&v.a[..], &v.b[..], 2, 1.0),
                        LoraAdapter::new(&v.a[..], &v.b[..4], 2, 1.0),
                    ],
                    SHAPE,
                )
            }),
            "adapters[1].lora_b",
            "10",
        ),
    ]
}

#[test]
fn cpu_reference_rejects_bad_input() {
    for (run, arg, text) in cpu_cases() {
        assert_invalid(run(), arg, text);
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
