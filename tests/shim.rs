//! The C++ shim on the CPU (the same code paths serve CUDA): bf16/fp16 autocast, the fused
//! AdamW kernel with its found-inf flag, the foreach norm and multiply, gradients set to none,
//! and the device-side gradient clipping built on them.

use streetclip::shim::{autocast, AutocastDtype};
use tch::{Device, Kind, Tensor};

#[test]
fn autocast_computes_matmuls_in_the_chosen_dtype_and_restores_state() {
    let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
    let y = autocast(Device::Cpu, AutocastDtype::BFloat16, || a.matmul(&b)).unwrap();
    assert_eq!(y.kind(), Kind::BFloat16);
    let expected = a.to_kind(Kind::BFloat16).matmul(&b.to_kind(Kind::BFloat16));
    assert!(y.equal(&expected), "the matmul ran on bf16 inputs");
    let h = autocast(Device::Cpu, AutocastDtype::Float16, || a.matmul(&b)).unwrap();
    assert_eq!(h.kind(), Kind::Half);
    // Outside the region: fp32 again; nested regions restore the outer dtype.
    assert_eq!(a.matmul(&b).kind(), Kind::Float);
    let (inner, outer) = autocast(Device::Cpu, AutocastDtype::BFloat16, || {
        let inner = autocast(Device::Cpu, AutocastDtype::Float16, || a.matmul(&b))
            .unwrap()
            .kind();
        (inner, a.matmul(&b).kind())
    })
    .unwrap();
    assert_eq!((inner, outer), (Kind::Half, Kind::BFloat16));
    // Gradients reach the fp32 master weights.
    let w = Tensor::randn([8, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let loss = autocast(Device::Cpu, AutocastDtype::BFloat16, || {
        a.matmul(&w).sum(Kind::Float)
    })
    .unwrap();
    loss.backward();
    assert_eq!(w.grad().kind(), Kind::Float);
}

fn params(n: usize) -> Vec<Tensor> {
    (0..n)
        .map(|i| Tensor::randn([3 + i as i64, 2], (Kind::Float, Device::Cpu)))
        .collect()
}

fn copies(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter().map(|t| t.copy()).collect()
}

fn same(a: &[Tensor], b: &[Tensor]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.equal(y))
}

/// The fused AdamW kernel with a found-inf flag: 1 leaves parameters and moments exactly as they
/// were (no host read needed to skip a step), 0 is the plain update; one step tensor may serve
/// every parameter.
#[test]
fn fused_adamw_honours_found_inf_and_a_shared_step_tensor() {
    use streetclip::shim::{fused_adamw, AdamWStep};
    tch::manual_seed(0);
    let (p, g) = (params(3), params(3));
    let (m, v) = (
        copies(&p)
            .iter()
            .map(|t| t.zeros_like())
            .collect::<Vec<_>>(),
        params(3).iter().map(|t| t.abs()).collect::<Vec<_>>(),
    );
    let step = Tensor::from(1f32);
    let shared = vec![
        step.shallow_clone(),
        step.shallow_clone(),
        step.shallow_clone(),
    ];
    let own: Vec<Tensor> = (0..3).map(|_| Tensor::from(1f32)).collect();
    let h = AdamWStep {
        lr: 1e-2,
        betas: [0.9, 0.98],
        weight_decay: 0.1,
        eps: 1e-6,
    };
    let run = |steps: &[Tensor], inf: Option<&Tensor>| {
        let (p, m, v) = (copies(&p), copies(&m), copies(&v));
        fused_adamw(&p, &g, &m, &v, steps, inf, h).unwrap();
        (p, m, v)
    };
    let plain = run(&own, None);
    assert!(!same(&plain.0, &p), "the update changed nothing");
    let zero = run(&shared, Some(&Tensor::from(0f32)));
    assert!(same(&zero.0, &plain.0) && same(&zero.1, &plain.1) && same(&zero.2, &plain.2));
    let skipped = run(&shared, Some(&Tensor::from(1f32)));
    assert!(same(&skipped.0, &p) && same(&skipped.1, &m) && same(&skipped.2, &v));
}

/// The foreach ops equal their one-tensor-at-a-time forms bit for bit, and gradients set to
/// none are undefined.
#[test]
fn foreach_norm_mul_and_grads_to_none() {
    use streetclip::shim::{foreach_mul_, foreach_norm, set_grads_to_none};
    tch::manual_seed(1);
    let ts = params(4);
    let norms = foreach_norm(&ts, 2.0).unwrap();
    assert_eq!(norms.len(), 4);
    for (n, t) in norms.iter().zip(&ts) {
        assert!(n.equal(&t.norm()));
    }
    let scaled = copies(&ts);
    foreach_mul_(&scaled, &Tensor::from(0.37f32)).unwrap();
    for (s, t) in scaled.iter().zip(&ts) {
        assert!(s.equal(&(t * 0.37)));
    }
    let w = Tensor::randn([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    (&w * 2.0).sum(Kind::Float).backward();
    assert!(w.grad().defined());
    set_grads_to_none(std::slice::from_ref(&w));
    assert!(!w.grad().defined());
    // The next backward writes the gradient afresh.
    (&w * 3.0).sum(Kind::Float).backward();
    assert_eq!(Vec::<f32>::try_from(w.grad()).unwrap(), vec![3.0; 3]);
}

/// Clipping on the device equals the host formula it replaced, bit for bit: the norm of the
/// per-tensor norms; scale = min(1, max / (norm + 1e-6)) in float64, rounded once to float32.
#[test]
fn clip_grad_norm_on_the_device_equals_the_host_formula() {
    use streetclip::train::optim::clip_grad_norm;
    tch::manual_seed(2);
    for max_norm in [0.5, 1e9] {
        let ws: Vec<Tensor> = params(5)
            .into_iter()
            .map(|t| t.set_requires_grad(true))
            .collect();
        for (i, w) in ws.iter().enumerate() {
            (w * (i as f64 + 1.5))
                .pow_tensor_scalar(2)
                .sum(Kind::Float)
                .backward();
        }
        let grads = copies(&ws.iter().map(|w| w.grad()).collect::<Vec<_>>());
        let total = clip_grad_norm(ws.iter(), Some(max_norm)).unwrap();
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
        let want = Tensor::stack(&norms, 0).norm().double_value(&[]);
        assert_eq!(total.double_value(&[]), want);
        let coef = (max_norm / (want + 1e-6)).min(1.0);
        for (w, g) in ws.iter().zip(&grads) {
            let expected = if coef < 1.0 { g * coef } else { g.copy() };
            assert!(w.grad().equal(&expected), "max_norm {max_norm}");
        }
    }
}
