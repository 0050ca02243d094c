//! The C++ shim: bf16/fp16 autocast on the CPU (the same code path serves CUDA).

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
