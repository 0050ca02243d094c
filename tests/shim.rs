//! The C++ shim on the CPU (the same code paths serve CUDA): bf16/fp16 autocast, the fused
//! AdamW kernel with its found-inf flag, the foreach norm and multiply, gradients set to none,
//! and the device-side gradient clipping built on them; activation checkpointing.

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

/// A two-layer block with its own parameters, as a checkpointed transformer block is.
fn block(w1: &Tensor, w2: &Tensor) -> impl Fn(&Tensor) -> Tensor + Send + 'static {
    let (w1, w2) = (w1.shallow_clone(), w2.shallow_clone());
    move |x: &Tensor| x + x.matmul(&w1).gelu("none").matmul(&w2)
}

#[test]
fn checkpoint_gives_the_plain_gradients_and_frees_its_block_with_the_graph() {
    use std::sync::Arc;
    use streetclip::shim::checkpoint;
    tch::manual_seed(0);
    let w1 = Tensor::randn([8, 16], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let w2 = Tensor::randn([16, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let x0 = Tensor::randn([4, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let target = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
    // A second block with its own weights (as each transformer block has: under autocast a
    // weight used twice would be cast once and its two gradients summed in bf16).
    let w3 = Tensor::randn([8, 16], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let w4 = Tensor::randn([16, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let leaves = [&w1, &w2, &w3, &w4, &x0];
    let grads = |checkpointed: bool, amp: Option<AutocastDtype>| {
        let run = || {
            // Two blocks in a row: the second's input gradient flows into the first.
            let y = match checkpointed {
                true => checkpoint(&checkpoint(&x0, block(&w1, &w2)), block(&w3, &w4)),
                false => block(&w3, &w4)(&block(&w1, &w2)(&x0)),
            };
            (y.to_kind(Kind::Float) - &target).square().sum(Kind::Float)
        };
        let loss = streetclip::shim::maybe_autocast(Device::Cpu, amp, run).unwrap();
        loss.backward();
        let out: Vec<Tensor> = leaves.iter().map(|t| t.grad().copy()).collect();
        for t in leaves {
            let mut t = t.shallow_clone();
            t.zero_grad();
        }
        (loss.double_value(&[]), out)
    };
    for amp in [None, Some(AutocastDtype::BFloat16)] {
        let (plain_loss, plain) = grads(false, amp);
        let (loss, checkpointed) = grads(true, amp);
        assert_eq!(plain_loss, loss, "{amp:?}");
        assert!(same(&plain, &checkpointed), "{amp:?}: gradients differ");
    }

    // An input that requires no gradient: the block's parameters still get theirs.
    let x = x0.detach();
    checkpoint(&x, block(&w1, &w2)).sum(Kind::Float).backward();
    let via_checkpoint = w1.grad().copy();
    let mut w = w1.shallow_clone();
    w.zero_grad();
    block(&w1, &w2)(&x).sum(Kind::Float).backward();
    assert!(w1.grad().equal(&via_checkpoint));

    // Without grad mode the block simply runs; the closure lives as long as the graph.
    let alive = Arc::new(());
    let held = Arc::clone(&alive);
    let f = block(&w1, &w2);
    let y = tch::no_grad(|| {
        checkpoint(&x0, move |x| {
            let _ = &held;
            f(x)
        })
    });
    assert!(!y.requires_grad());
    assert_eq!(
        Arc::strong_count(&alive),
        1,
        "freed at once without a graph"
    );
    let held = Arc::clone(&alive);
    let f = block(&w1, &w2);
    let y = checkpoint(&x0, move |x| {
        let _ = &held;
        f(x)
    });
    assert_eq!(Arc::strong_count(&alive), 2, "kept for the backward pass");
    y.sum(Kind::Float).backward();
    drop(y);
    assert_eq!(Arc::strong_count(&alive), 1, "freed with the graph");
}

#[test]
fn a_failing_checkpointed_block_panics_with_its_message() {
    let x = Tensor::randn([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let caught = std::panic::catch_unwind(|| {
        streetclip::shim::checkpoint(&x, |x| {
            x.matmul(&Tensor::ones([5, 5], (Kind::Float, Device::Cpu)))
        })
    })
    .expect_err("a shape error inside the block");
    let message = caught.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("checkpointed block") && message.contains("shapes cannot be multiplied"),
        "{message}"
    );
}

#[test]
fn a_tensor_over_borrowed_bytes_shares_them_and_releases_their_owner_once() {
    use std::sync::Arc;
    use streetclip::shim::{tensor_over, Owner};
    let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
    let bytes: Arc<Vec<u8>> = Arc::new(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    let owner: Owner = bytes.clone();
    let t = tensor_over(&bytes, &[3, 4], Kind::Float, owner).unwrap();
    assert_eq!(Vec::<f32>::try_from(t.flatten(0, -1)).unwrap(), values);
    assert_eq!(t.data_ptr() as usize, bytes.as_ptr() as usize, "no copy");
    let view = t.narrow(0, 1, 1);
    drop(t);
    assert_eq!(Arc::strong_count(&bytes), 2, "a view keeps the storage");
    drop(view);
    assert_eq!(
        Arc::strong_count(&bytes),
        1,
        "released with the last tensor"
    );
    // Bytes that are not the tensor, or misaligned, are refused (the owner is not kept).
    let other: Owner = bytes.clone();
    assert!(tensor_over(&bytes[..40], &[3, 4], Kind::Float, other.clone()).is_err());
    assert!(tensor_over(&bytes[1..45], &[11], Kind::Float, other).is_err());
    assert_eq!(Arc::strong_count(&bytes), 1);
}
