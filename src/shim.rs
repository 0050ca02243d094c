//! Safe wrappers over the C++ shim (csrc/shim.cpp).

use anyhow::{bail, Result};
use std::ffi::{c_char, c_void, CStr};
use tch::{Device, Tensor};

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn sc_fused_adamw(
        params: *mut *mut c_void,
        grads: *mut *mut c_void,
        exp_avgs: *mut *mut c_void,
        exp_avg_sqs: *mut *mut c_void,
        steps: *mut *mut c_void,
        n: i64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut c_char,
        err_len: i64,
    ) -> i32;
    fn sc_autocast_enter(
        device: i32,
        dtype: i32,
        prev_enabled: *mut i32,
        prev_dtype: *mut i32,
    ) -> i32;
    fn sc_autocast_exit(device: i32, prev_enabled: i32, prev_dtype: i32) -> i32;
}

/// The reduced precision autocast computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutocastDtype {
    BFloat16,
    Float16,
}

/// Runs `f` under autocast on `device`'s kind (CPU or CUDA) in `dtype`: matmuls and
/// convolutions compute in reduced precision, parameters stay fp32 (master weights).
/// `f` under autocast in `amp` when given, else as it is.
pub fn maybe_autocast<T>(
    device: Device,
    amp: Option<AutocastDtype>,
    f: impl FnOnce() -> T,
) -> Result<T> {
    match amp {
        None => Ok(f()),
        Some(dtype) => autocast(device, dtype, f),
    }
}

pub fn autocast<T>(device: Device, dtype: AutocastDtype, f: impl FnOnce() -> T) -> Result<T> {
    let dev = i32::from(device.is_cuda());
    let dt = i32::from(dtype == AutocastDtype::Float16);
    let (mut prev_enabled, mut prev_dtype) = (0, 0);
    // SAFETY: plain integers in, two out-pointers to live locals.
    if unsafe { sc_autocast_enter(dev, dt, &mut prev_enabled, &mut prev_dtype) } != 0 {
        bail!("libtorch refused to enable autocast on {device:?}");
    }
    let out = f();
    // SAFETY: as above; restores what enter saved.
    if unsafe { sc_autocast_exit(dev, prev_enabled, prev_dtype) } != 0 {
        bail!("libtorch refused to leave autocast on {device:?}");
    }
    Ok(out)
}

/// Hyper-parameters of one AdamW update.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f64,
    pub betas: [f64; 2],
    pub weight_decay: f64,
    pub eps: f64,
}

/// One AdamW update of `params` in place with libtorch's fused kernel. All slices have the same
/// length; `steps` are float scalars holding the (already incremented) step number.
pub fn fused_adamw(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    steps: &[Tensor],
    h: AdamWStep,
) -> Result<()> {
    let n = params.len();
    if [grads.len(), exp_avgs.len(), exp_avg_sqs.len(), steps.len()]
        .iter()
        .any(|&l| l != n)
    {
        bail!("fused_adamw: {n} parameters but lists of other lengths");
    }
    let ptrs = |ts: &[Tensor]| {
        ts.iter()
            .map(|t| t.as_ptr() as *mut c_void)
            .collect::<Vec<_>>()
    };
    let (mut p, mut g, mut m, mut v, mut s) = (
        ptrs(params),
        ptrs(grads),
        ptrs(exp_avgs),
        ptrs(exp_avg_sqs),
        ptrs(steps),
    );
    let mut err = [0 as c_char; 512];
    // SAFETY: each array holds `n` pointers to live tch tensors (at::Tensor*), borrowed for
    // the call; the kernel updates params and moments in place.
    let rc = unsafe {
        sc_fused_adamw(
            p.as_mut_ptr(),
            g.as_mut_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            s.as_mut_ptr(),
            n as i64,
            h.lr,
            h.betas[0],
            h.betas[1],
            h.weight_decay,
            h.eps,
            err.as_mut_ptr(),
            err.len() as i64,
        )
    };
    if rc != 0 {
        // SAFETY: the shim wrote a NUL-terminated message into `err`.
        bail!(
            "libtorch fused AdamW failed: {}",
            unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy()
        );
    }
    Ok(())
}
