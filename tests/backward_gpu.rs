//! The training backward on the GPU (or the emulator) against its CPU reference on random shapes:
//! LoRA, DoRA (with and without bias), chains of up to nine adapters (more products than one launch
//! holds), 4-bit and int8 bases dequantised on the fly, dX accumulated into what it holds, no base
//! term, m = 1, rank 1 and rank 256, odd sizes, a zero magnitude; bit-identical gradients run to run;
//! the 16-bit products on both paths (tensor cores, CUDA cores); and the argument checks. Prints
//! `SKIPPED: no CUDA device` without a GPU; fails instead with `LORA_KERNELS_REQUIRE_GPU=1`.
mod common;

use common::{assert_close, f64s, small_shapes, tolerance, Rng};
use cudarc::driver::CudaSlice;
use half::{bf16, f16};
use lora_kernels::dora::reference as dora;
use lora_kernels::linear::reference::linear;
use lora_kernels::linear::QuantizedWeight;
use lora_kernels::lora_backward::{reference, AdapterGrads, BackwardStep, DoraSaved, DxWeight};
use lora_kernels::quant4::QuantType;
use lora_kernels::{Element, Error, Gpu, LoraAdapter, LoraShape};

/// One adapter of a random chain, host side.
struct HostAdapter<T> {
    a: Vec<T>,
    b: Vec<T>,
    rank: usize,
    scale: f32,
    magnitude: Option<Vec<T>>,
}

/// Which base W a case differentiates through.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Base {
    Dense,
    Nf4,
    Fp4Nested,
    Int8,
    /// No base term in dX.
    Skip,
}

struct Case<T> {
    shape: LoraShape,
    x: Vec<T>,
    g: Vec<T>,
    weight: Vec<T>,
    bias: Option<Vec<T>>,
    adapters: Vec<HostAdapter<T>>,
}

fn case<T: Element>(
    rng: &mut Rng,
    shape: LoraShape,
    ranks: &[(usize, bool)],
    with_bias: bool,
) -> Case<T> {
    let LoraShape { m, k, n } = shape;
    Case {
        shape,
        x: rng.vec(m * k, 1.0),
        g: rng.vec(m * n, 1.0),
        weight: rng.vec(n * k, 1.0 / (k as f64).sqrt()),
        bias: with_bias.then(|| rng.vec(n, 1.0)),
        adapters: ranks
            .iter()
            .map(|&(rank, is_dora)| HostAdapter {
                a: rng.vec(rank * k, 1.0 / (k as f64).sqrt()),
                b: rng.vec(n * rank, 0.5 / (rank as f64).sqrt()),
                rank,
                scale: rng.range(1, 64) as f32 / rank as f32,
                magnitude: is_dora.then(|| {
                    (0..n)
                        .map(|_| T::from_f64(0.5 + rng.uniform().abs()))
                        .collect()
                }),
            })
            .collect(),
    }
}

/// W as the backward sees it: dense, or the quantised codes dequantised to `T`.
fn effective_weight<T: Element>(c: &Case<T>, base: Base) -> (Vec<T>, Quantized) {
    let LoraShape { k, n, .. } = c.shape;
    match base {
        Base::Dense | Base::Skip => (c.weight.clone(), Quantized::None),
        Base::Nf4 | Base::Fp4Nested => {
            let (qt, nested) = if base == Base::Nf4 {
                (QuantType::Nf4, false)
            } else {
                (QuantType::Fp4, true)
            };
            let q = lora_kernels::quant4::reference::quantize(&c.weight, [n, k], 64, qt, nested)
                .unwrap();
            (
                lora_kernels::quant4::reference::dequantize(&q).unwrap(),
                Quantized::Quant4(q),
            )
        }
        Base::Int8 => {
            let q = lora_kernels::int8::reference::quantize_rowwise(&c.weight, [n, k]).unwrap();
            (
                lora_kernels::int8::reference::dequantize_to(&q).unwrap(),
                Quantized::Int8(q),
            )
        }
    }
}

enum Quantized {
    None,
    Quant4(lora_kernels::quant4::Quant4Weight),
    Int8(lora_kernels::int8::Int8Weight),
}

/// The chain's forward on the CPU reference: the base each DoRA step took, and every DoRA norm.
/// Per adapter: the base a DoRA step took and its norm (None for LoRA).
type Saved<T> = (Vec<Option<Vec<T>>>, Vec<Option<Vec<f32>>>);

fn saved_bases<T: Element>(c: &Case<T>, w: &[T]) -> Saved<T> {
    let LoraShape { k, n, .. } = c.shape;
    let mut y = linear(&c.x, w, c.bias.as_deref(), c.shape).unwrap();
    let (mut bases, mut norms) = (Vec::new(), Vec::new());
    for ad in &c.adapters {
        let view = LoraAdapter::new(&ad.a[..], &ad.b[..], ad.rank, ad.scale);
        match &ad.magnitude {
            Some(m) => {
                let norm = dora::dora_weight_norm(w, view, k, n).unwrap();
                let factor = dora::dora_factor(m, &norm).unwrap();
                let next = dora::dora_forward(&c.x, &y, c.bias.as_deref(), view, &factor, c.shape)
                    .unwrap();
                bases.push(Some(std::mem::replace(&mut y, next)));
                norms.push(Some(norm));
            }
            None => {
                y = lora_kernels::lora::reference::lora_forward(&c.x, &y, &[view], c.shape)
                    .unwrap();
                bases.push(None);
                norms.push(None);
            }
        }
    }
    (bases, norms)
}

/// One adapter on the device: A, B, magnitude (DoRA), rank, scale.
type DeviceAdapter<T> = (CudaSlice<T>, CudaSlice<T>, Option<CudaSlice<T>>, usize, f32);

/// A case's buffers on the device, with the bases and norms its DoRA steps saved.
struct DeviceCase<T> {
    x: CudaSlice<T>,
    g: CudaSlice<T>,
    weight: CudaSlice<T>,
    bias: Option<CudaSlice<T>>,
    adapters: Vec<DeviceAdapter<T>>,
    bases: Vec<Option<CudaSlice<T>>>,
    norms: Vec<Option<CudaSlice<f32>>>,
}

impl<T: Element> DeviceCase<T> {
    fn upload(gpu: &Gpu, c: &Case<T>, (bases, norms): &Saved<T>) -> Self {
        let s = gpu.stream();
        let up = |v: &[T]| s.clone_htod(v).unwrap();
        DeviceCase {
            x: up(&c.x),
            g: up(&c.g),
            weight: up(&c.weight),
            bias: c.bias.as_deref().map(up),
            adapters: c
                .adapters
                .iter()
                .map(|ad| {
                    let m = ad.magnitude.as_deref().map(up);
                    (up(&ad.a), up(&ad.b), m, ad.rank, ad.scale)
                })
                .collect(),
            bases: bases.iter().map(|b| b.as_deref().map(up)).collect(),
            norms: norms
                .iter()
                .map(|nm| nm.as_deref().map(|v| s.clone_htod(v).unwrap()))
                .collect(),
        }
    }

    /// The chain's steps over these buffers.
    fn steps(&self) -> Vec<BackwardStep<'_, CudaSlice<T>, CudaSlice<f32>>> {
        self.adapters
            .iter()
            .zip(self.bases.iter().zip(&self.norms))
            .map(|((a, b, mag, rank, scale), (base, nm))| BackwardStep {
                adapter: LoraAdapter::new(a, b, *rank, *scale),
                dora: match (mag, base, nm) {
                    (Some(mag), Some(base), Some(nm)) => Some(DoraSaved {
                        magnitude: mag,
                        norm: nm,
                        base,
                        bias: self.bias.as_ref(),
                    }),
                    _ => None,
                },
            })
            .collect()
    }
}

/// Runs `c` through [`Gpu::backward_chain`] and the reference and compares every gradient.
fn check<T: Element>(gpu: &Gpu, c: &Case<T>, base: Base, accumulate: bool, label: &str) {
    let s = gpu.stream();
    let LoraShape { m, k, .. } = c.shape;
    let tol = tolerance(T::DTYPE);
    println!(
        "{label}: {:?} ranks {:?} base {base:?} bias {} accumulate {accumulate} {}",
        c.shape,
        c.adapters
            .iter()
            .map(|a| (a.rank, a.magnitude.is_some()))
            .collect::<Vec<_>>(),
        c.bias.is_some(),
        T::DTYPE
    );
    let (w, quantized) = effective_weight(c, base);
    let (bases, norms) = saved_bases(c, &w);

    // The reference: dX of the chain, plus what dX held when accumulating.
    let steps: Vec<BackwardStep<'_, [T], [f32]>> = c
        .adapters
        .iter()
        .zip(bases.iter().zip(&norms))
        .map(|(ad, (b, nm))| BackwardStep {
            adapter: LoraAdapter::new(&ad.a[..], &ad.b[..], ad.rank, ad.scale),
            dora: match (&ad.magnitude, b, nm) {
                (Some(mag), Some(b), Some(nm)) => Some(DoraSaved {
                    magnitude: &mag[..],
                    norm: &nm[..],
                    base: &b[..],
                    bias: c.bias.as_deref(),
                }),
                _ => None,
            },
        })
        .collect();
    let weight_ref = (base != Base::Skip).then_some(&w[..]);
    let want = reference::backward(&c.x, &c.g, weight_ref, &steps, c.shape).unwrap();
    let prior: Vec<T> = (0..m * k)
        .map(|i| T::from_f64(((i % 7) as f64 - 3.0) * 0.25))
        .collect();
    let want_dx: Vec<f64> = if accumulate {
        f64s(&want.x)
            .iter()
            .zip(f64s(&prior))
            .map(|(a, b)| a + b)
            .collect()
    } else {
        f64s(&want.x)
    };

    // The GPU.
    let up = |v: &[T]| s.clone_htod(v).unwrap();
    let dev = DeviceCase::upload(gpu, c, &(bases, norms));
    let (x, g) = (&dev.x, &dev.g);
    let q4 = match &quantized {
        Quantized::Quant4(q) => Some(gpu.upload_quant4(q).unwrap()),
        _ => None,
    };
    let i8w = match &quantized {
        Quantized::Int8(q) => Some(gpu.upload_int8(q).unwrap()),
        _ => None,
    };
    let weight = match (base, &q4, &i8w) {
        (Base::Skip, _, _) => DxWeight::Skip,
        (_, Some(q), _) => DxWeight::Quantized(QuantizedWeight::Quant4(q)),
        (_, _, Some(q)) => DxWeight::Quantized(QuantizedWeight::Int8(q)),
        _ => DxWeight::Dense(&dev.weight),
    };
    let dev_steps = dev.steps();
    let run = || {
        let mut dx = up(&prior);
        let grads = gpu
            .backward_chain(x, g, weight, &dev_steps, c.shape, &mut dx, accumulate)
            .unwrap();
        (s.clone_dtoh(&dx).unwrap(), grads)
    };
    let (dx, grads) = run();
    assert_close(&format!("{label} dx"), &f64s(&dx), &want_dx, tol);
    let host = |v: &CudaSlice<T>| s.clone_dtoh(v).unwrap();
    for (i, (got, want)) in grads.iter().zip(&want.adapters).enumerate() {
        assert_close(
            &format!("{label} dA[{i}]"),
            &f64s(&host(&got.lora_a)),
            &f64s(&want.lora_a),
            tol,
        );
        assert_close(
            &format!("{label} dB[{i}]"),
            &f64s(&host(&got.lora_b)),
            &f64s(&want.lora_b),
            tol,
        );
        match (&got.magnitude, &want.magnitude) {
            (Some(gm), Some(wm)) => assert_close(
                &format!("{label} dm[{i}]"),
                &f64s(&host(gm)),
                &f64s(wm),
                tol,
            ),
            (None, None) => {}
            _ => panic!("{label}: adapter {i} magnitude gradient present on one side only"),
        }
    }
    // Deterministic: a second run gives the same bits.
    let (dx2, grads2) = run();
    assert!(
        bits(&dx) == bits(&dx2),
        "{label}: dX differs between two runs"
    );
    for (a, b) in grads.iter().zip(&grads2) {
        assert!(
            same(s, a, b),
            "{label}: an adapter gradient differs between two runs"
        );
    }
}

fn bits<T: Element>(v: &[T]) -> Vec<u64> {
    v.iter().map(|x| x.to_f64().to_bits()).collect()
}

fn same<T: Element>(
    s: &std::sync::Arc<cudarc::driver::CudaStream>,
    a: &AdapterGrads<CudaSlice<T>>,
    b: &AdapterGrads<CudaSlice<T>>,
) -> bool {
    let h = |v: &CudaSlice<T>| bits(&s.clone_dtoh(v).unwrap());
    h(&a.lora_a) == h(&b.lora_a)
        && h(&a.lora_b) == h(&b.lora_b)
        && a.magnitude.as_ref().map(h) == b.magnitude.as_ref().map(h)
}

fn random_shapes<T: Element>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng::new(seed);
    let sizes: &[(usize, usize, usize)] = if small_shapes() {
        &[(1, 40, 24), (5, 33, 70), (67, 64, 17)]
    } else {
        &[
            (1, 40, 24),
            (5, 33, 70),
            (67, 64, 17),
            (130, 257, 96),
            (512, 512, 320),
        ]
    };
    for (i, &(m, k, n)) in sizes.iter().enumerate() {
        let shape = LoraShape::new(m, k, n);
        let rank = *rng.pick(&[1, 3, 8, 16]);
        let lora = case::<T>(&mut rng, shape, &[(rank, false)], true);
        check(gpu, &lora, Base::Dense, false, &format!("lora {i}"));
        let dora = case::<T>(&mut rng, shape, &[(rank, true)], i % 2 == 0);
        check(gpu, &dora, Base::Dense, i % 2 == 1, &format!("dora {i}"));
    }
}

/// Four adapters (two dX launches), LoRA and DoRA mixed, each DoRA on the running result.
fn chains<T: Element>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng::new(seed);
    let shape = LoraShape::new(9, 48, 40);
    let c = case::<T>(
        &mut rng,
        shape,
        &[(4, false), (2, true), (5, false), (3, true)],
        true,
    );
    check(gpu, &c, Base::Dense, true, "chain of four");
    let c = case::<T>(&mut rng, shape, &[(6, true), (1, false)], false);
    check(gpu, &c, Base::Skip, false, "chain, no base term");
    // Nine adapters: more products than one launch holds (dX continues in a launch that adds).
    let nine: Vec<(usize, bool)> = (0..9).map(|i| (1 + i % 3, i % 4 == 1)).collect();
    let c = case::<T>(&mut rng, shape, &nine, true);
    check(gpu, &c, Base::Dense, false, "chain of nine");
}

/// Rank 1 and rank 256, m = 1 and a few rows.
fn rank_extremes<T: Element>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng::new(seed);
    for (m, rank) in [(1, 256), (3, 1), (2, 256)] {
        let shape = LoraShape::new(m, 40, 36);
        let c = case::<T>(&mut rng, shape, &[(rank, rank > 1)], true);
        check(gpu, &c, Base::Dense, false, &format!("m {m} rank {rank}"));
    }
}

/// QLoRA / QDoRA: NF4, FP4 with double-quantised absmax, and int8, dequantised on the fly.
fn quantized<T: Element>(gpu: &Gpu, seed: u64) {
    let mut rng = Rng::new(seed);
    for (i, base) in [Base::Nf4, Base::Fp4Nested, Base::Int8]
        .into_iter()
        .enumerate()
    {
        let shape = LoraShape::new([3, 17, 70][i], 128, 48);
        let c = case::<T>(&mut rng, shape, &[(8, false)], true);
        check(gpu, &c, base, false, &format!("q{i} lora"));
        let c = case::<T>(&mut rng, shape, &[(4, true)], false);
        check(gpu, &c, base, true, &format!("q{i} dora"));
    }
}

common::gpu_tests! { random_shapes:
    random_shapes_f32: f32(1),
    random_shapes_f16: f16(2),
    random_shapes_bf16: bf16(3),
}
common::gpu_tests! { chains:
    chains_f32: f32(4),
    chains_bf16: bf16(5),
}
common::gpu_tests! { rank_extremes:
    rank_extremes_f32: f32(6),
    rank_extremes_f16: f16(7),
    rank_extremes_bf16: bf16(12),
}

/// The f16/bf16 products' CUDA-core path (`LORA_KERNELS_BACKWARD=cuda-cores`; tensor cores are the
/// default): this binary's 16-bit tests rerun in a child process with the variable set.
#[test]
fn sixteen_bit_products_on_cuda_cores() {
    if common::gpu().is_none() {
        return;
    }
    let names = [
        "random_shapes_f16",
        "random_shapes_bf16",
        "chains_bf16",
        "rank_extremes_bf16",
        "quantized_f16",
    ];
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(names)
        .args(["--test-threads", "2"])
        .env("LORA_KERNELS_BACKWARD", "cuda-cores")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the CUDA-core path failed (output above)"
    );
    assert!(
        stdout.contains("test result: ok. 5 passed"),
        "not all five ran"
    );
}
common::gpu_tests! { quantized:
    quantized_f32: f32(8),
    quantized_bf16: bf16(9),
    quantized_f16: f16(10),
}

/// Gradient accumulation over micro-batches: a second backward into the same buffers with
/// `Accumulate { grads: true, dx: true }` doubles every gradient (exactly, in f32), and the
/// allocating call gives the same bits as the one into caller-owned buffers.
#[test]
fn gradients_accumulate_into_caller_buffers() {
    use lora_kernels::lora_backward::Accumulate;
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream();
    let mut rng = Rng::new(21);
    let shape = LoraShape::new(9, 48, 40);
    let c = case::<f32>(&mut rng, shape, &[(4, false), (3, true)], true);
    let (w, _) = effective_weight(&c, Base::Dense);
    let dev = DeviceCase::upload(&gpu, &c, &saved_bases(&c, &w));
    let (x, g) = (&dev.x, &dev.g);
    let steps = dev.steps();
    let weight = DxWeight::Dense(&dev.weight);
    let mut dx_alloc = s.alloc_zeros::<f32>(shape.m * shape.k).unwrap();
    let once = gpu
        .backward_chain(x, g, weight, &steps, shape, &mut dx_alloc, false)
        .unwrap();
    let mut grads = gpu.adapter_grads::<f32, _>(&steps, shape).unwrap();
    let mut scratch = gpu.backward_scratch(shape.m, &[4, 3], 1, shape.n).unwrap();
    let mut dx = s.alloc_zeros::<f32>(shape.m * shape.k).unwrap();
    let run =
        |acc: bool, grads: &mut Vec<AdapterGrads<CudaSlice<f32>>>, scratch: &mut _, dx: &mut _| {
            let accumulate = Accumulate {
                dx: acc,
                grads: acc,
            };
            gpu.backward_chain_into(x, g, weight, &steps, shape, dx, grads, scratch, accumulate)
                .unwrap()
        };
    run(false, &mut grads, &mut scratch, &mut dx);
    assert_eq!(s.clone_dtoh(&dx).unwrap(), s.clone_dtoh(&dx_alloc).unwrap());
    for (a, b) in grads.iter().zip(&once) {
        assert!(
            same(s, a, b),
            "backward_chain_into and backward_chain differ"
        );
    }
    run(true, &mut grads, &mut scratch, &mut dx);
    let twice = |v: &CudaSlice<f32>| {
        s.clone_dtoh(v)
            .unwrap()
            .iter()
            .map(|x| 2.0 * x)
            .collect::<Vec<f32>>()
    };
    assert_eq!(
        s.clone_dtoh(&dx).unwrap(),
        twice(&dx_alloc),
        "dX accumulated"
    );
    for (a, b) in grads.iter().zip(&once) {
        assert_eq!(
            s.clone_dtoh(&a.lora_a).unwrap(),
            twice(&b.lora_a),
            "dA accumulated"
        );
        assert_eq!(
            s.clone_dtoh(&a.lora_b).unwrap(),
            twice(&b.lora_b),
            "dB accumulated"
        );
        if let (Some(am), Some(bm)) = (&a.magnitude, &b.magnitude) {
            assert_eq!(
                s.clone_dtoh(am).unwrap(),
                twice(bm),
                "d magnitude accumulated"
            );
        }
    }
    // Buffers that do not fit are errors naming them, and nothing is written.
    let before = s.clone_dtoh(&dx).unwrap();
    let mut small = gpu
        .backward_scratch(shape.m - 1, &[4, 3], 1, shape.n)
        .unwrap();
    let err = gpu
        .backward_chain_into(
            x,
            g,
            weight,
            &steps,
            shape,
            &mut dx,
            &mut grads,
            &mut small,
            Accumulate::default(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument { arg, .. } if arg == "scratch"),
        "{err}"
    );
    let mut fewer = gpu.adapter_grads::<f32, _>(&steps[..1], shape).unwrap();
    let err = gpu
        .backward_chain_into(
            x,
            g,
            weight,
            &steps,
            shape,
            &mut dx,
            &mut fewer,
            &mut scratch,
            Accumulate::default(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument { arg, .. } if arg == "grads"),
        "{err}"
    );
    assert_eq!(s.clone_dtoh(&dx).unwrap(), before);
}

#[test]
fn bad_arguments_are_errors_naming_them() {
    let Some(gpu) = common::gpu() else { return };
    let s = gpu.stream();
    let (m, k, n, r) = (3, 8, 4, 2);
    let shape = LoraShape::new(m, k, n);
    let buf = |len: usize| s.clone_htod(&vec![0.5f32; len]).unwrap();
    let (x, g, w, a, b) = (buf(m * k), buf(m * n), buf(n * k), buf(r * k), buf(n * r));
    let mut dx = buf(m * k);
    let adapter = LoraAdapter::new(&a, &b, r, 1.0);
    let expect = |res: lora_kernels::Result<Vec<AdapterGrads<CudaSlice<f32>>>>, arg: &str| match res
    {
        Err(Error::InvalidArgument { arg: got, .. }) => assert_eq!(got, arg),
        other => panic!(
            "expected an error naming {arg}, got {:?}",
            other.map(|v| v.len())
        ),
    };
    let short_g = buf(m * n - 1);
    expect(
        gpu.lora_backward(
            &x,
            &short_g,
            DxWeight::Dense(&w),
            &[adapter],
            shape,
            &mut dx,
            false,
        ),
        "grad_output",
    );
    let short_w = buf(n * k - 1);
    expect(
        gpu.lora_backward(
            &x,
            &g,
            DxWeight::Dense(&short_w),
            &[adapter],
            shape,
            &mut dx,
            false,
        ),
        "weight",
    );
    let mut short_dx = buf(m * k - 1);
    expect(
        gpu.lora_backward(
            &x,
            &g,
            DxWeight::Dense(&w),
            &[adapter],
            shape,
            &mut short_dx,
            false,
        ),
        "dx",
    );
    expect(
        gpu.lora_backward::<f32, CudaSlice<f32>>(
            &x,
            &g,
            DxWeight::Skip,
            &[],
            shape,
            &mut dx,
            false,
        ),
        "adapters",
    );
    let bad_rank = LoraAdapter::new(&a, &b, 0, 1.0);
    expect(
        gpu.lora_backward(
            &x,
            &g,
            DxWeight::Dense(&w),
            &[bad_rank],
            shape,
            &mut dx,
            false,
        ),
        "adapters[0].rank",
    );
    let norm = s.clone_htod(&vec![1.0f32; n - 1]).unwrap();
    let (mag, base) = (buf(n), buf(m * n));
    let saved = DoraSaved {
        magnitude: &mag,
        norm: &norm,
        base: &base,
        bias: None,
    };
    let step = BackwardStep {
        adapter,
        dora: Some(saved),
    };
    expect(
        gpu.backward_chain(&x, &g, DxWeight::Dense(&w), &[step], shape, &mut dx, false),
        "adapters[0].norm",
    );
    // A quantised W of another shape.
    let q = lora_kernels::int8::reference::quantize_rowwise(&vec![0.5f32; 2 * n * k], [2 * n, k])
        .unwrap();
    let q = gpu.upload_int8(&q).unwrap();
    expect(
        gpu.lora_backward(
            &x,
            &g,
            DxWeight::Quantized(QuantizedWeight::Int8(&q)),
            &[adapter],
            shape,
            &mut dx,
            false,
        ),
        "weight",
    );
    // Nothing was written to dX by the failed calls.
    assert_eq!(s.clone_dtoh(&dx).unwrap(), vec![0.5f32; m * k]);
}
