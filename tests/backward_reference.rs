//! Finite differences of the forward references against the backward's CPU references
//! (`lora_kernels::lora_backward::reference`), f32 inputs, the loss L = Σ G ⊙ y accumulated in f64
//! from the forward's f32 outputs: one LoRA adapter on a dense base, one DoRA adapter with and
//! without bias, a chain LoRA → DoRA → LoRA → DoRA on the running result, the adapters alone (no
//! base term in dX: the base held constant), m = 1 and odd shapes, ranks 1 to 4. (A quantised base
//! is a dense W to the references, so it has no case of its own here.)
//!
//! DoRA's weight norm is detached (peft, the DoRA paper): each DoRA adapter's norm ‖W + s·B·A‖ is
//! computed once from the unperturbed W, A, B and held fixed. Then y is linear in every single
//! parameter element (x, each A, each B, each magnitude), so the central difference
//! (L(p+h) − L(p−h)) / ((p+h) − (p−h)) is exact up to the f32 rounding of the forward's outputs,
//! whatever h: h = 0.25, and the denominator from the perturbed values as f32 actually holds them.
//! The check is |fd − grad| ≤ 1e-4 · (1 + |grad|). What separates the two is rounding only: y is
//! rounded to f32 once per step of the chain (relative 2⁻²⁴, over m·n ≤ 68 elements of |y| of a
//! few units, divided by 2h = 0.5: below 1e-5), the DoRA factor is an f32, and each gradient is
//! rounded once to f32; the worst seen is about 1.3e-6. A negative control shows the check does
//! fail on a wrong gradient: a norm that is not detached gives finite differences of A and B the
//! reference does not match. Also: the references reject bad input with errors naming the argument.
mod common;

use common::Rng;
use lora_kernels::dora::reference as dora;
use lora_kernels::linear::reference::linear;
use lora_kernels::lora::reference::lora_forward;
use lora_kernels::lora_backward::{reference, Backward, BackwardStep, DoraSaved};
use lora_kernels::{Error, LoraAdapter, LoraShape};

/// The perturbation of every parameter element.
const H: f32 = 0.25;
/// |fd − grad| ≤ TOL · (1 + |grad|).
const TOL: f64 = 1e-4;
/// Elements checked per tensor (every element of a smaller one).
const SAMPLES: usize = 30;

struct Adapter {
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
    scale: f32,
    magnitude: Option<Vec<f32>>,
}

struct Case {
    shape: LoraShape,
    x: Vec<f32>,
    g: Vec<f32>,
    w: Vec<f32>,
    bias: Option<Vec<f32>>,
    adapters: Vec<Adapter>,
}

/// A random case: `adapters` lists (rank, is DoRA) in chain order.
fn case(rng: &mut Rng, shape: LoraShape, adapters: &[(usize, bool)], with_bias: bool) -> Case {
    let LoraShape { m, k, n } = shape;
    Case {
        shape,
        x: rng.vec(m * k, 1.0),
        g: rng.vec(m * n, 1.0),
        w: rng.vec(n * k, 1.0 / (k as f64).sqrt()),
        bias: with_bias.then(|| rng.vec(n, 1.0)),
        adapters: adapters
            .iter()
            .map(|&(rank, is_dora)| Adapter {
                a: rng.vec(rank * k, 1.0 / (k as f64).sqrt()),
                b: rng.vec(n * rank, 1.0 / (rank as f64).sqrt()),
                rank,
                // 0.5, 1, 1.5 or 2: scales of a few units keep |y| (and its rounding) small.
                scale: (1 + rng.below(4)) as f32 * 0.5,
                magnitude: is_dora
                    .then(|| (0..n).map(|_| (0.5 + rng.uniform().abs()) as f32).collect()),
            })
            .collect(),
    }
}

fn view(ad: &Adapter) -> LoraAdapter<'_, [f32]> {
    LoraAdapter::new(&ad.a[..], &ad.b[..], ad.rank, ad.scale)
}

/// Each DoRA adapter's detached norm ‖W + s·B·A‖ from the case as it is (`None` for LoRA).
fn norms(c: &Case) -> Vec<Option<Vec<f32>>> {
    let LoraShape { k, n, .. } = c.shape;
    c.adapters
        .iter()
        .map(|ad| {
            ad.magnitude
                .as_ref()
                .map(|_| dora::dora_weight_norm(&c.w, view(ad), k, n).unwrap())
        })
        .collect()
}

/// The chain's forward on the forward references: the base x·Wᵀ + bias (or `fixed_base`, held
/// constant), then each adapter on the running result, a DoRA adapter with its fixed norm. Returns
/// y and the base each DoRA adapter took (what the forward saves for the backward).
fn forward(
    c: &Case,
    norms: &[Option<Vec<f32>>],
    fixed_base: Option<&[f32]>,
) -> (Vec<f32>, Vec<Option<Vec<f32>>>) {
    let mut y = match fixed_base {
        Some(b) => b.to_vec(),
        None => linear(&c.x, &c.w, c.bias.as_deref(), c.shape).unwrap(),
    };
    let mut bases = Vec::new();
    for (ad, norm) in c.adapters.iter().zip(norms) {
        match (&ad.magnitude, norm) {
            (Some(mag), Some(norm)) => {
                let factor = dora::dora_factor(mag, norm).unwrap();
                let next =
                    dora::dora_forward(&c.x, &y, c.bias.as_deref(), view(ad), &factor, c.shape)
                        .unwrap();
                bases.push(Some(std::mem::replace(&mut y, next)));
            }
            _ => {
                y = lora_forward(&c.x, &y, &[view(ad)], c.shape).unwrap();
                bases.push(None);
            }
        }
    }
    (y, bases)
}

/// L = Σ G ⊙ y in f64.
fn loss(c: &Case, norms: &[Option<Vec<f32>>], fixed_base: Option<&[f32]>) -> f64 {
    let (y, _) = forward(c, norms, fixed_base);
    y.iter().zip(&c.g).map(|(&y, &g)| y as f64 * g as f64).sum()
}

/// The reference backward of the unperturbed case (`with_weight`: dX includes G_f·W).
fn gradients(c: &Case, norms: &[Option<Vec<f32>>], with_weight: bool) -> Backward<Vec<f32>> {
    let (_, bases) = forward(c, norms, None);
    let steps: Vec<BackwardStep<'_, [f32], [f32]>> = c
        .adapters
        .iter()
        .zip(bases.iter().zip(norms))
        .map(|(ad, (base, norm))| BackwardStep {
            adapter: view(ad),
            dora: match (&ad.magnitude, base, norm) {
                (Some(mag), Some(base), Some(norm)) => Some(DoraSaved {
                    magnitude: &mag[..],
                    norm: &norm[..],
                    base: &base[..],
                    bias: c.bias.as_deref(),
                }),
                _ => None,
            },
        })
        .collect();
    let weight = with_weight.then_some(&c.w[..]);
    reference::backward(&c.x, &c.g, weight, &steps, c.shape).unwrap()
}

/// A parameter tensor of a case.
#[derive(Clone, Copy, Debug)]
enum Param {
    X,
    A(usize),
    B(usize),
    Magnitude(usize),
}

fn param_mut(c: &mut Case, p: Param) -> &mut Vec<f32> {
    match p {
        Param::X => &mut c.x,
        Param::A(i) => &mut c.adapters[i].a,
        Param::B(i) => &mut c.adapters[i].b,
        Param::Magnitude(i) => c.adapters[i].magnitude.as_mut().unwrap(),
    }
}

fn grad_of(g: &Backward<Vec<f32>>, p: Param) -> &[f32] {
    match p {
        Param::X => &g.x,
        Param::A(i) => &g.adapters[i].lora_a,
        Param::B(i) => &g.adapters[i].lora_b,
        Param::Magnitude(i) => g.adapters[i].magnitude.as_deref().unwrap(),
    }
}

/// Every element of a tensor of `len`, or `SAMPLES` distinct random ones.
fn sample(rng: &mut Rng, len: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..len).collect();
    if len <= SAMPLES {
        return all;
    }
    for i in 0..SAMPLES {
        let j = i + rng.below(len - i);
        all.swap(i, j);
    }
    all.truncate(SAMPLES);
    all
}

/// Central differences of L over sampled elements of x, every A, B and magnitude, against the
/// reference gradients. `with_weight = false`: the base is held constant at its unperturbed value
/// and the reference is asked for dX without the base term. Returns the largest scaled error.
fn check(label: &str, c: &mut Case, rng: &mut Rng, with_weight: bool) -> f64 {
    // Fixed once from the unperturbed W, A, B: the detached norm.
    let norms = norms(c);
    let want = gradients(c, &norms, with_weight);
    assert_eq!(want.adapters.len(), c.adapters.len(), "{label}");
    let fixed_base =
        (!with_weight).then(|| linear(&c.x, &c.w, c.bias.as_deref(), c.shape).unwrap());
    let mut params = vec![Param::X];
    for (i, ad) in c.adapters.iter().enumerate() {
        params.push(Param::A(i));
        params.push(Param::B(i));
        if ad.magnitude.is_some() {
            params.push(Param::Magnitude(i));
        } else {
            assert!(want.adapters[i].magnitude.is_none(), "{label}: LoRA dm");
        }
    }
    let mut worst = 0.0f64;
    let mut checked = 0;
    for p in params {
        let grad = grad_of(&want, p).to_vec();
        assert_eq!(grad.len(), param_mut(c, p).len(), "{label} {p:?}: length");
        for e in sample(rng, grad.len()) {
            let orig = param_mut(c, p)[e];
            let (plus, minus) = (orig + H, orig - H);
            param_mut(c, p)[e] = plus;
            let lp = loss(c, &norms, fixed_base.as_deref());
            param_mut(c, p)[e] = minus;
            let lm = loss(c, &norms, fixed_base.as_deref());
            param_mut(c, p)[e] = orig;
            let fd = (lp - lm) / (plus as f64 - minus as f64);
            let g = grad[e] as f64;
            let err = (fd - g).abs() / (1.0 + g.abs());
            assert!(
                err <= TOL,
                "{label}: d{p:?}[{e}]: finite difference {fd} against the reference {g} \
                 (|error| / (1 + |grad|) = {err:e} > {TOL:e})"
            );
            worst = worst.max(err);
            checked += 1;
        }
    }
    println!(
        "{label}: {:?}, {checked} elements, worst |fd − grad| / (1 + |grad|) = {worst:.2e}",
        c.shape
    );
    worst
}

const SHAPES: [(usize, usize, usize); 3] = [(3, 7, 5), (1, 7, 5), (4, 33, 17)];

#[test]
fn lora_on_a_dense_base() {
    let mut rng = Rng::new(101);
    for (i, &(m, k, n)) in SHAPES.iter().enumerate() {
        for rank in 1..=4 {
            let mut c = case(&mut rng, LoraShape::new(m, k, n), &[(rank, false)], i != 1);
            check(&format!("lora {i} rank {rank}"), &mut c, &mut rng, true);
        }
    }
}

#[test]
fn lora_reference_entry_point_matches_the_chain() {
    // `lora_backward` with several adapters on one base is a chain of LoRA steps.
    let mut rng = Rng::new(102);
    let shape = LoraShape::new(3, 7, 5);
    let mut c = case(&mut rng, shape, &[(2, false), (3, false)], true);
    check("two lora", &mut c, &mut rng, true);
    let views: Vec<_> = c.adapters.iter().map(view).collect();
    let got = reference::lora_backward(&c.x, &c.g, Some(&c.w), &views, shape).unwrap();
    let want = gradients(&c, &norms(&c), true);
    assert_eq!(got.x, want.x);
    for (g, w) in got.adapters.iter().zip(&want.adapters) {
        assert_eq!(g.lora_a, w.lora_a);
        assert_eq!(g.lora_b, w.lora_b);
        assert!(g.magnitude.is_none());
    }
}

#[test]
fn dora_with_bias() {
    let mut rng = Rng::new(103);
    for (i, &(m, k, n)) in SHAPES.iter().enumerate() {
        for rank in 1..=4 {
            let mut c = case(&mut rng, LoraShape::new(m, k, n), &[(rank, true)], true);
            check(&format!("dora {i} rank {rank}"), &mut c, &mut rng, true);
        }
    }
}

#[test]
fn dora_without_bias_and_its_entry_point() {
    let mut rng = Rng::new(104);
    let shape = LoraShape::new(3, 7, 5);
    for rank in [1, 3] {
        let mut c = case(&mut rng, shape, &[(rank, true)], false);
        check(&format!("dora no bias rank {rank}"), &mut c, &mut rng, true);
    }
    // `dora_backward` is the one-step chain.
    let c = case(&mut rng, shape, &[(2, true)], true);
    let norms = norms(&c);
    let (_, bases) = forward(&c, &norms, None);
    let ad = &c.adapters[0];
    let saved = DoraSaved {
        magnitude: &ad.magnitude.as_ref().unwrap()[..],
        norm: &norms[0].as_ref().unwrap()[..],
        base: &bases[0].as_ref().unwrap()[..],
        bias: c.bias.as_deref(),
    };
    let got = reference::dora_backward(&c.x, &c.g, Some(&c.w), view(ad), saved, shape).unwrap();
    let want = gradients(&c, &norms, true);
    assert_eq!(got.x, want.x);
    assert_eq!(got.adapters[0].lora_a, want.adapters[0].lora_a);
    assert_eq!(got.adapters[0].lora_b, want.adapters[0].lora_b);
    assert_eq!(got.adapters[0].magnitude, want.adapters[0].magnitude);
}

#[test]
fn chain_lora_dora_lora_dora() {
    let mut rng = Rng::new(105);
    for (i, &(m, k, n)) in SHAPES.iter().enumerate() {
        for bias in [true, false] {
            let mut c = case(
                &mut rng,
                LoraShape::new(m, k, n),
                &[(2, false), (3, true), (1, false), (4, true)],
                bias,
            );
            check(&format!("chain {i} bias {bias}"), &mut c, &mut rng, true);
        }
    }
    // Two DoRA adapters in a row, then LoRA: the first one's gradients see G ⊙ the second's factor.
    let mut c = case(
        &mut rng,
        LoraShape::new(3, 7, 5),
        &[(4, true), (2, true), (1, false)],
        true,
    );
    check("chain dora dora lora", &mut c, &mut rng, true);
}

#[test]
fn no_base_term_is_the_base_held_constant() {
    // Without W the reference's dX leaves out G_f·W: what the finite difference gives when the base
    // x·Wᵀ + bias does not move with x (the caller differentiates the base itself).
    let mut rng = Rng::new(106);
    let shape = LoraShape::new(3, 7, 5);
    let mut c = case(&mut rng, shape, &[(2, false)], true);
    check("lora, no base term", &mut c, &mut rng, false);
    let mut c = case(&mut rng, shape, &[(3, true)], true);
    check("dora, no base term", &mut c, &mut rng, false);
    let mut c = case(&mut rng, shape, &[(1, true), (2, false), (3, true)], true);
    check("chain, no base term", &mut c, &mut rng, false);
}

#[test]
fn a_live_norm_is_not_the_detached_gradient() {
    // The negative control: recomputing DoRA's norm from the perturbed A and B (differentiating
    // through it, which peft does not) moves the finite differences of A and B away from the
    // reference by far more than the tolerance, so the checks above can fail.
    let mut rng = Rng::new(107);
    let mut c = case(&mut rng, LoraShape::new(3, 7, 5), &[(2, true)], true);
    let want = gradients(&c, &norms(&c), true);
    let mut worst = 0.0f64;
    for p in [Param::A(0), Param::B(0)] {
        let grad = grad_of(&want, p).to_vec();
        for (e, &g) in grad.iter().enumerate() {
            let orig = param_mut(&mut c, p)[e];
            let (plus, minus) = (orig + H, orig - H);
            param_mut(&mut c, p)[e] = plus;
            let lp = loss(&c, &norms(&c), None);
            param_mut(&mut c, p)[e] = minus;
            let lm = loss(&c, &norms(&c), None);
            param_mut(&mut c, p)[e] = orig;
            let fd = (lp - lm) / (plus as f64 - minus as f64);
            worst = worst.max((fd - g as f64).abs() / (1.0 + (g as f64).abs()));
        }
    }
    println!("live norm: worst |fd − grad| / (1 + |grad|) = {worst:.2e}");
    assert!(
        worst > 100.0 * TOL,
        "a live norm should not match the detached gradient (worst {worst:e})"
    );
}

fn expect_arg<T: std::fmt::Debug>(res: lora_kernels::Result<T>, arg: &str) {
    match res {
        Err(Error::InvalidArgument { arg: got, .. }) => assert_eq!(got, arg),
        other => panic!("expected an error naming {arg}, got {other:?}"),
    }
}

#[test]
fn bad_arguments_are_errors_naming_them() {
    let (m, k, n, r) = (3, 8, 4, 2);
    let shape = LoraShape::new(m, k, n);
    let buf = |len: usize| vec![0.5f32; len];
    let (x, g, w, a, b) = (buf(m * k), buf(m * n), buf(n * k), buf(r * k), buf(n * r));
    let adapter = LoraAdapter::new(&a[..], &b[..], r, 1.0);

    let short_g = buf(m * n - 1);
    expect_arg(
        reference::lora_backward(&x, &short_g, Some(&w), &[adapter], shape),
        "grad_output",
    );
    expect_arg(
        reference::lora_backward::<f32>(&x, &g, None, &[], shape),
        "adapters",
    );
    let (mag, short_mag, norm, base) = (buf(n), buf(n - 1), vec![1.0f32; n], buf(m * n));
    expect_arg(
        reference::dora_backward(
            &x,
            &g,
            Some(&w),
            adapter,
            saved(&short_mag, &norm, &base),
            shape,
        ),
        "adapters[0].magnitude",
    );
    // The same through the chain, at the second adapter.
    let steps = [
        BackwardStep {
            adapter,
            dora: None,
        },
        BackwardStep {
            adapter,
            dora: Some(saved(&short_mag, &norm, &base)),
        },
    ];
    expect_arg(
        reference::backward(&x, &g, Some(&w), &steps, shape),
        "adapters[1].magnitude",
    );
    // And the well-formed call succeeds.
    assert!(
        reference::dora_backward(&x, &g, Some(&w), adapter, saved(&mag, &norm, &base), shape)
            .is_ok()
    );
}

fn saved<'a>(
    magnitude: &'a [f32],
    norm: &'a [f32],
    base: &'a [f32],
) -> DoraSaved<'a, [f32], [f32]> {
    DoraSaved {
        magnitude,
        norm,
        base,
        bias: None,
    }
}
