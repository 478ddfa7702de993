//! CUDA graphs: the fused LoRA forward, a DoRA forward, a mixed-batch prefill and a training backward
//! (into caller-owned gradients and scratch) captured with a
//! caller-owned workspace ([`Gpu::lora_workspace`], installed by [`Gpu::with_workspace`]) and replayed several times with new input
//! contents, each replay against the CPU reference; two workspaces on two streams replaying at
//! once; the handle's implicit workspace growing after a capture (the graph stays valid) and
//! refusing to grow during one; a workspace too small for a call failing before any launch.
//!
//! cudarc's event tracking is off for every capture (see [`Gpu`]). Every test holds [`serial`]:
//! the first stream of a context synchronises the context, which a capture in another thread of
//! the process must not see.
mod common;

use common::{f64s, rel_error, Rng};
use half::bf16;
use lora_kernels::dora::reference as dora_ref;
use lora_kernels::lora::reference;
use lora_kernels::mixed_batch::reference as mixed_ref;
use lora_kernels::{DType, DoraAdapter, Element, Error, Gpu, LoraAdapter, LoraShape};
use std::sync::{Mutex, MutexGuard};

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A handle whose context has event tracking off (this binary orders its streams itself).
fn gpu() -> Option<Gpu> {
    let gpu = common::gpu()?;
    // SAFETY: each test orders its streams by synchronising them before reading or rewriting
    // buffers another stream used.
    unsafe { gpu.stream().context().disable_event_tracking() };
    Some(gpu)
}

/// A second handle on a new stream of the same context.
fn second(gpu: &Gpu) -> Gpu {
    Gpu::from_stream(gpu.stream().context().new_stream().unwrap()).unwrap()
}

struct Adapter<T> {
    a: Vec<T>,
    b: Vec<T>,
    rank: usize,
    scale: f32,
}

fn adapters<T: Element>(rng: &mut Rng, k: usize, n: usize, ranks: &[usize]) -> Vec<Adapter<T>> {
    ranks
        .iter()
        .map(|&r| Adapter {
            a: rng.vec(r * k, 1.0 / (k as f64).sqrt()),
            b: rng.vec(n * r, 1.0 / (r as f64).sqrt()),
            rank: r,
            scale: rng.range(1, 32) as f32 / r as f32,
        })
        .collect()
}

fn host<T>(ads: &[Adapter<T>]) -> Vec<LoraAdapter<'_, [T]>> {
    ads.iter()
        .map(|a| LoraAdapter::new(&a.a[..], &a.b[..], a.rank, a.scale))
        .collect()
}

fn check(label: &str, got: &[bf16], expected: &[bf16]) {
    let tol = common::tolerance(DType::BF16);
    let err = rel_error(&f64s(got), &f64s(expected));
    assert!(err <= tol, "{label}: rel err {err:.3e} > {tol:.0e}");
}

#[test]
fn a_captured_lora_forward_replays_with_new_inputs() {
    let _s = serial();
    let Some(gpu) = gpu() else { return };
    let s = gpu.stream().clone();
    let shape = LoraShape::new(20, 96, 80);
    let mut rng = Rng::new(11);
    let ads = adapters::<bf16>(&mut rng, shape.k, shape.n, &[8, 16]);
    let dev: Vec<_> = ads
        .iter()
        .map(|a| (s.clone_htod(&a.a).unwrap(), s.clone_htod(&a.b).unwrap()))
        .collect();
    let on_dev: Vec<_> = dev
        .iter()
        .zip(&ads)
        .map(|((a, b), h)| LoraAdapter::new(a, b, h.rank, h.scale))
        .collect();
    let mut x = s.alloc_zeros::<bf16>(shape.m * shape.k).unwrap();
    let mut base = s.alloc_zeros::<bf16>(shape.m * shape.n).unwrap();
    let mut y = s.alloc_zeros::<bf16>(shape.m * shape.n).unwrap();
    let ws = gpu.lora_workspace(DType::BF16, 32, 128, 24).unwrap();
    let wg = gpu.with_workspace(ws).unwrap();
    // Warm-up (loads the kernels), then the capture: nothing runs until the graph is launched.
    wg.lora_forward(&x, &base, &on_dev, shape, &mut y).unwrap();
    let graph = wg
        .capture(|| wg.lora_forward(&x, &base, &on_dev, shape, &mut y))
        .unwrap();
    for replay in 0..3 {
        let hx: Vec<bf16> = rng.vec(shape.m * shape.k, 1.0);
        let hbase: Vec<bf16> = rng.vec(shape.m * shape.n, 1.0);
        s.memcpy_htod(&hx, &mut x).unwrap();
        s.memcpy_htod(&hbase, &mut base).unwrap();
        graph.launch().unwrap();
        let expected = reference::lora_forward(&hx, &hbase, &host(&ads), shape).unwrap();
        check(
            &format!("replay {replay}"),
            &s.clone_dtoh(&y).unwrap(),
            &expected,
        );
    }
    drop(graph);
}

/// The decode path of the base product with its LoRA term in the GEMV epilogue (the shrink's
/// hidden is handle scratch, allocated by the warm-up, never during the capture) replays with new
/// inputs; a first decode-size call inside a capture is refused before anything is captured.
#[test]
fn a_captured_decode_linear_lora_forward_replays_with_new_inputs() {
    let _s = serial();
    let Some(gpu) = gpu() else { return };
    let s = gpu.stream().clone();
    let shape = LoraShape::new(3, 64, 40);
    let mut rng = Rng::new(14);
    let ads = adapters::<bf16>(&mut rng, shape.k, shape.n, &[8, 4]);
    let w_host: Vec<bf16> = rng.vec(shape.n * shape.k, 1.0 / (shape.k as f64).sqrt());
    let bias_host: Vec<bf16> = rng.vec(shape.n, 0.5);
    let w = s.clone_htod(&w_host).unwrap();
    let bias = s.clone_htod(&bias_host).unwrap();
    let dev: Vec<_> = ads
        .iter()
        .map(|a| (s.clone_htod(&a.a).unwrap(), s.clone_htod(&a.b).unwrap()))
        .collect();
    let on_dev: Vec<_> = dev
        .iter()
        .zip(&ads)
        .map(|((a, b), h)| LoraAdapter::new(a, b, h.rank, h.scale))
        .collect();
    let mut x = s.alloc_zeros::<bf16>(shape.m * shape.k).unwrap();
    let mut y = s.alloc_zeros::<bf16>(shape.m * shape.n).unwrap();
    let bias_view = bias.slice(..);
    // A fresh handle on the same stream has no shrink scratch yet: the capture refuses to make it.
    let fresh = Gpu::from_stream(s.clone()).unwrap();
    let refused = fresh
        .capture(|| fresh.linear_lora_forward(&x, &w, Some(&bias_view), &on_dev, shape, &mut y));
    let err = refused
        .err()
        .expect("a first decode call in a capture is refused");
    assert!(err.to_string().contains("workspace"), "{err}");
    // Warm-up, then the capture.
    gpu.linear_lora_forward(&x, &w, Some(&bias_view), &on_dev, shape, &mut y)
        .unwrap();
    let graph = gpu
        .capture(|| gpu.linear_lora_forward(&x, &w, Some(&bias_view), &on_dev, shape, &mut y))
        .unwrap();
    for replay in 0..3 {
        let hx: Vec<bf16> = rng.vec(shape.m * shape.k, 1.0);
        s.memcpy_htod(&hx, &mut x).unwrap();
        graph.launch().unwrap();
        let base =
            lora_kernels::linear::reference::linear(&hx, &w_host, Some(&bias_host), shape).unwrap();
        let expected = reference::lora_forward(&hx, &base, &host(&ads), shape).unwrap();
        check(
            &format!("decode replay {replay}"),
            &s.clone_dtoh(&y).unwrap(),
            &expected,
        );
    }
    drop(graph);
}

#[test]
fn two_workspaces_on_two_streams_replay_concurrently() {
    let _s = serial();
    let Some(gpu) = gpu() else { return };
    let other = second(&gpu);
    let shape = LoraShape::new(24, 64, 72);
    let mut rng = Rng::new(12);
    let ads = adapters::<bf16>(&mut rng, shape.k, shape.n, &[16]);
    let s = gpu.stream().clone();
    let (a, b) = (
        s.clone_htod(&ads[0].a).unwrap(),
        s.clone_htod(&ads[0].b).unwrap(),
    );
    let on_dev = [LoraAdapter::new(&a, &b, ads[0].rank, ads[0].scale)];
    s.synchronize().unwrap();
    // Per stream: its inputs, output and workspace; one graph each.
    let mut lanes = Vec::new();
    for g in [&gpu, &other] {
        let st = g.stream().clone();
        let x = st.alloc_zeros::<bf16>(shape.m * shape.k).unwrap();
        let base = st.alloc_zeros::<bf16>(shape.m * shape.n).unwrap();
        let mut y = st.alloc_zeros::<bf16>(shape.m * shape.n).unwrap();
        let ws = g.lora_workspace(DType::BF16, shape.m, shape.k, 16).unwrap();
        let wg = g.with_workspace(ws).unwrap();
        wg.lora_forward(&x, &base, &on_dev, shape, &mut y).unwrap();
        let graph = wg
            .capture(|| wg.lora_forward(&x, &base, &on_dev, shape, &mut y))
            .unwrap();
        lanes.push((st, x, base, y, wg, graph));
    }
    for round in 0..2 {
        let mut expected = Vec::new();
        for (st, x, base, _, _, _) in lanes.iter_mut() {
            let hx: Vec<bf16> = rng.vec(shape.m * shape.k, 1.0);
            let hbase: Vec<bf16> = rng.vec(shape.m * shape.n, 1.0);
            st.memcpy_htod(&hx, x).unwrap();
            st.memcpy_htod(&hbase, base).unwrap();
            expected.push(reference::lora_forward(&hx, &hbase, &host(&ads), shape).unwrap());
        }
        // Both replays enqueued before either stream is waited for.
        for (.., graph) in &lanes {
            graph.launch().unwrap();
        }
        for (i, (st, _, _, y, _, _)) in lanes.iter().enumerate() {
            check(
                &format!("round {round} stream {i}"),
                &st.clone_dtoh(y).unwrap(),
                &expected[i],
            );
        }
    }
}

#[test]
fn a_captured_dora_forward_replays_with_new_inputs() {
    let _s = serial();
    let Some(gpu) = gpu() else { return };
    let s = gpu.stream().clone();
    let shape = LoraShape::new(18, 64, 40);
    let mut rng = Rng::new(13);
    let ad = adapters::<bf16>(&mut rng, shape.k, shape.n, &[8]).remove(0);
    let w: Vec<bf16> = rng.vec(shape.n * shape.k, 1.0 / (shape.k as f64).sqrt());
    let magnitude: Vec<bf16> = rng.vec(shape.n, 1.0);
    let hbias: Vec<bf16> = rng.vec(shape.n, 0.5);
    let (a, b) = (s.clone_htod(&ad.a).unwrap(), s.clone_htod(&ad.b).unwrap());
    let adapter = LoraAdapter::new(&a, &b, ad.rank, ad.scale);
    let dw = s.clone_htod(&w).unwrap();
    let factor = gpu
        .dora_factor(
            &dw,
            adapter,
            &s.clone_htod(&magnitude).unwrap(),
            shape.k,
            shape.n,
        )
        .unwrap();
    let hfactor = s.clone_dtoh(factor.values()).unwrap();
    let bias = s.clone_htod(&hbias).unwrap();
    let bias_view = bias.slice(..);
    let mut x = s.alloc_zeros::<bf16>(shape.m * shape.k).unwrap();
    let mut base = s.alloc_zeros::<bf16>(shape.m * shape.n).unwrap();
    let mut y = s.alloc_zeros::<bf16>(shape.m * shape.n).unwrap();
    let ws = gpu
        .lora_workspace(DType::BF16, shape.m, shape.k, 8)
        .unwrap();
    let wg = gpu.with_workspace(ws).unwrap();
    let bias = Some(&bias_view);
    let dora = DoraAdapter::new(adapter, &factor);
    wg.dora_forward(&x, &base, bias, dora, shape, &mut y)
        .unwrap();
    let graph = wg
        .capture(|| wg.dora_forward(&x, &base, bias, dora, shape, &mut y))
        .unwrap();
    for replay in 0..3 {
        let hx: Vec<bf16> = rng.vec(shape.m * shape.k, 1.0);
        let hbase: Vec<bf16> = rng.vec(shape.m * shape.n, 1.0);
        s.memcpy_htod(&hx, &mut x).unwrap();
        s.memcpy_htod(&hbase, &mut base).unwrap();
        graph.launch().unwrap();
        let host_ad = LoraAdapter::new(&ad.a[..], &ad.b[..], ad.rank, ad.scale);
        let expected =
            dora_ref::dora_forward(&hx, &hbase, Some(&hbias), host_ad, &hfactor, shape).unwrap();
        check(
            &format!("DoRA replay {replay}"),
            &s.clone_dtoh(&y).unwrap(),
            &expected,
        );
    }
}

#[test]
fn a_captured_mixed_batch_prefill_replays_with_new_inputs_and_indices() {
    let _s = serial();
    let Some(gpu) = gpu() else { return };
    let s = gpu.stream().clone();
    // More than 16 rows and more than one 64-column tile: the two-launch prefill path.
    let shape = LoraShape::new(20, 64, 130);
    let mut rng = Rng::new(14);
    let ads = adapters::<bf16>(&mut rng, shape.k, shape.n, &[4, 16, 8]);
    let dev: Vec<_> = ads
        .iter()
        .map(|a| (s.clone_htod(&a.a).unwrap(), s.clone_htod(&a.b).unwrap()))
        .collect();
    let on_dev: Vec<_> = dev
        .iter()
        .zip(&ads)
        .map(|((a, b), h)| LoraAdapter::new(a, b, h.rank, h.scale))
        .collect();
    let table = gpu.mixed_adapters(&on_dev, shape.k, shape.n).unwrap();
    let mut x = s.alloc_zeros::<bf16>(shape.m * shape.k).unwrap();
    let mut base = s.alloc_zeros::<bf16>(shape.m * shape.n).unwrap();
    let mut idx = s.alloc_zeros::<i32>(shape.m).unwrap();
    let mut y = s.alloc_zeros::<bf16>(shape.m * shape.n).unwrap();
    gpu.lora_forward_mixed(&x, &base, &table, &idx, shape, &mut y)
        .unwrap();
    let graph = gpu
        .capture(|| gpu.lora_forward_mixed(&x, &base, &table, &idx, shape, &mut y))
        .unwrap();
    for replay in 0..3 {
        let hx: Vec<bf16> = rng.vec(shape.m * shape.k, 1.0);
        let hbase: Vec<bf16> = rng.vec(shape.m * shape.n, 1.0);
        let hidx: Vec<i32> = (0..shape.m)
            .map(|i| ((i + replay) % 4) as i32 - 1)
            .collect();
        s.memcpy_htod(&hx, &mut x).unwrap();
        s.memcpy_htod(&hbase, &mut base).unwrap();
        s.memcpy_htod(&hidx, &mut idx).unwrap();
        graph.launch().unwrap();
        let expected =
            mixed_ref::lora_forward_mixed(&hx, &hbase, &host(&ads), &hidx, shape).unwrap();
        check(
            &format!("mixed replay {replay}"),
            &s.clone_dtoh(&y).unwrap(),
            &expected,
        );
    }
}

#[test]
fn the_implicit_workspace_never_frees_what_a_graph_uses_and_never_grows_in_a_capture() {
    let _s = serial();
    let Some(gpu) = gpu() else { return };
    let s = gpu.stream().clone();
    let small = LoraShape::new(8, 64, 64);
    let large = LoraShape::new(40, 256, 64);
    let mut rng = Rng::new(15);
    let ads = adapters::<bf16>(&mut rng, large.k, large.n, &[16]);
    let (a, b) = (
        s.clone_htod(&ads[0].a).unwrap(),
        s.clone_htod(&ads[0].b).unwrap(),
    );
    // The small problem uses the first k columns of A: its own A [16, 64].
    let a_small: Vec<bf16> = (0..16)
        .flat_map(|r| ads[0].a[r * large.k..r * large.k + small.k].to_vec())
        .collect();
    let da_small = s.clone_htod(&a_small).unwrap();
    let on_small = [LoraAdapter::new(&da_small, &b, 16, ads[0].scale)];
    let on_large = [LoraAdapter::new(&a, &b, 16, ads[0].scale)];
    let hx: Vec<bf16> = rng.vec(large.m * large.k, 1.0);
    let hbase: Vec<bf16> = rng.vec(large.m * large.n, 1.0);
    let x = s.clone_htod(&hx).unwrap();
    let base = s.clone_htod(&hbase).unwrap();
    let mut y_small = s.alloc_zeros::<bf16>(small.m * small.n).unwrap();
    let mut y_large = s.alloc_zeros::<bf16>(large.m * large.n).unwrap();

    // Warm up at the small size, capture it.
    gpu.lora_forward(&x, &base, &on_small, small, &mut y_small)
        .unwrap();
    let graph = gpu
        .capture(|| gpu.lora_forward(&x, &base, &on_small, small, &mut y_small))
        .unwrap();
    // A larger forward inside a capture cannot grow the workspace: a clear error, nothing run.
    let err = gpu
        .capture(|| gpu.lora_forward(&x, &base, &on_large, large, &mut y_large))
        .err()
        .expect("the capture fails");
    assert!(
        matches!(&err, Error::InvalidArgument { arg, .. } if arg == "workspace")
            && err
                .to_string()
                .contains("cannot grow while its stream captures"),
        "{err}"
    );
    assert_eq!(
        s.capture_status().unwrap(),
        cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE
    );
    // Outside capture it grows (retiring the buffers the graph points at) and is right.
    gpu.lora_forward(&x, &base, &on_large, large, &mut y_large)
        .unwrap();
    let host_large = [LoraAdapter::new(
        &ads[0].a[..],
        &ads[0].b[..],
        16,
        ads[0].scale,
    )];
    let expected = reference::lora_forward(&hx, &hbase, &host_large, large).unwrap();
    check("large, grown", &s.clone_dtoh(&y_large).unwrap(), &expected);
    // The graph still runs on live memory (the emulator's memcheck would report a use after free).
    s.memset_zeros(&mut y_small).unwrap();
    graph.launch().unwrap();
    let host_small = [LoraAdapter::new(
        &a_small[..],
        &ads[0].b[..],
        16,
        ads[0].scale,
    )];
    let expected = reference::lora_forward(&hx, &hbase, &host_small, small).unwrap();
    check(
        "small graph after growth",
        &s.clone_dtoh(&y_small).unwrap(),
        &expected,
    );
}

#[test]
fn a_caller_workspace_too_small_fails_before_launching_and_capture_needs_tracking_off() {
    let _s = serial();
    let Some(gpu) = gpu() else { return };
    let s = gpu.stream().clone();
    let shape = LoraShape::new(64, 128, 64);
    let mut rng = Rng::new(16);
    let ads = adapters::<bf16>(&mut rng, shape.k, shape.n, &[32]);
    let (a, b) = (
        s.clone_htod(&ads[0].a).unwrap(),
        s.clone_htod(&ads[0].b).unwrap(),
    );
    let on_dev = [LoraAdapter::new(&a, &b, 32, ads[0].scale)];
    let x = s.alloc_zeros::<bf16>(shape.m * shape.k).unwrap();
    let base = s.alloc_zeros::<bf16>(shape.m * shape.n).unwrap();
    let mut y = s
        .clone_htod(&vec![bf16::from_f32(3.0); shape.m * shape.n])
        .unwrap();
    let small = gpu.lora_workspace(DType::BF16, 16, 128, 32).unwrap();
    let err = gpu
        .with_workspace(small)
        .unwrap()
        .lora_forward(&x, &base, &on_dev, shape, &mut y)
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument { arg, .. } if arg == "workspace"),
        "{err}"
    );
    assert!(s.clone_dtoh(&y).unwrap().iter().all(|v| v.to_f32() == 3.0));
    // Sized for it, the same call runs.
    let ws = gpu.lora_workspace(DType::BF16, 64, 128, 32).unwrap();
    assert_eq!(ws.sized_for(), (DType::BF16, 64, 128, 32));
    gpu.with_workspace(ws)
        .unwrap()
        .lora_forward(&x, &base, &on_dev, shape, &mut y)
        .unwrap();
    // Event tracking on: capture is refused up front, nothing captured.
    let tracked = Gpu::new(0).unwrap();
    let err = tracked.capture(|| Ok(())).err().expect("refused");
    assert!(err.to_string().contains("event tracking"), "{err}");
}

#[test]
fn a_captured_training_backward_replays_with_new_gradients() {
    use lora_kernels::lora_backward::{
        reference as backward_ref, Accumulate, BackwardStep, DxWeight,
    };
    let _s = serial();
    let Some(gpu) = gpu() else { return };
    let s = gpu.stream().clone();
    // A LoRA and a DoRA adapter on a dense base: every backward kernel in the graph.
    let shape = LoraShape::new(12, 72, 40);
    let mut rng = Rng::new(15);
    let ads = adapters::<bf16>(&mut rng, shape.k, shape.n, &[4, 8]);
    let hw: Vec<bf16> = rng.vec(shape.n * shape.k, 0.2);
    let hx: Vec<bf16> = rng.vec(shape.m * shape.k, 1.0);
    let hbase: Vec<bf16> = rng.vec(shape.m * shape.n, 1.0);
    let hmag: Vec<bf16> = (0..shape.n)
        .map(|i| bf16::from_f32(0.5 + (i % 5) as f32 * 0.1))
        .collect();
    let dev: Vec<_> = ads
        .iter()
        .map(|a| (s.clone_htod(&a.a).unwrap(), s.clone_htod(&a.b).unwrap()))
        .collect();
    let views: Vec<_> = dev
        .iter()
        .zip(&ads)
        .map(|((a, b), h)| LoraAdapter::new(a, b, h.rank, h.scale))
        .collect();
    let (w, x, base, mag) = (
        s.clone_htod(&hw).unwrap(),
        s.clone_htod(&hx).unwrap(),
        s.clone_htod(&hbase).unwrap(),
        s.clone_htod(&hmag).unwrap(),
    );
    let factor = gpu
        .dora_factor(&w, views[1], &mag, shape.k, shape.n)
        .unwrap();
    let hnorm = s.clone_dtoh(factor.norms()).unwrap();
    let steps = [
        BackwardStep {
            adapter: views[0],
            dora: None,
        },
        BackwardStep {
            adapter: views[1],
            dora: Some(lora_kernels::lora_backward::DoraSaved {
                magnitude: &mag,
                norm: factor.norms(),
                base: &base,
                bias: None,
            }),
        },
    ];
    let mut g = s.alloc_zeros::<bf16>(shape.m * shape.n).unwrap();
    let mut dx = s.alloc_zeros::<bf16>(shape.m * shape.k).unwrap();
    let mut grads = gpu.adapter_grads::<bf16, _>(&steps, shape).unwrap();
    let mut scratch = gpu.backward_scratch(shape.m, &[4, 8], 1, shape.n).unwrap();
    let none = Accumulate::default();
    let weight = DxWeight::Dense(&w);
    gpu.backward_chain_into(
        &x,
        &g,
        weight,
        &steps,
        shape,
        &mut dx,
        &mut grads,
        &mut scratch,
        none,
    )
    .unwrap();
    let graph = gpu
        .capture(|| {
            gpu.backward_chain_into(
                &x,
                &g,
                weight,
                &steps,
                shape,
                &mut dx,
                &mut grads,
                &mut scratch,
                none,
            )
        })
        .unwrap();
    for replay in 0..2 {
        let hg: Vec<bf16> = rng.vec(shape.m * shape.n, 1.0);
        s.memcpy_htod(&hg, &mut g).unwrap();
        graph.launch().unwrap();
        let host_steps = [
            BackwardStep {
                adapter: LoraAdapter::new(&ads[0].a[..], &ads[0].b[..], 4, ads[0].scale),
                dora: None,
            },
            BackwardStep {
                adapter: LoraAdapter::new(&ads[1].a[..], &ads[1].b[..], 8, ads[1].scale),
                dora: Some(lora_kernels::lora_backward::DoraSaved {
                    magnitude: &hmag[..],
                    norm: &hnorm[..],
                    base: &hbase[..],
                    bias: None,
                }),
            },
        ];
        let want = backward_ref::backward(&hx, &hg, Some(&hw), &host_steps, shape).unwrap();
        check(
            &format!("backward replay {replay} dx"),
            &s.clone_dtoh(&dx).unwrap(),
            &want.x,
        );
        for (i, (got, want)) in grads.iter().zip(&want.adapters).enumerate() {
            check(
                &format!("replay {replay} dA[{i}]"),
                &s.clone_dtoh(&got.lora_a).unwrap(),
                &want.lora_a,
            );
            check(
                &format!("replay {replay} dB[{i}]"),
                &s.clone_dtoh(&got.lora_b).unwrap(),
                &want.lora_b,
            );
            if let (Some(gm), Some(wm)) = (&got.magnitude, &want.magnitude) {
                check(
                    &format!("replay {replay} dm[{i}]"),
                    &s.clone_dtoh(gm).unwrap(),
                    wm,
                );
            }
        }
    }
}
