//! Safe wrappers over the C++ shim (csrc/shim.cpp).

use anyhow::{bail, Result};
use std::ffi::{c_char, c_void, CStr};
use tch::{Device, Kind, Tensor};

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
        found_inf: *mut c_void,
        err: *mut c_char,
        err_len: i64,
    ) -> i32;
    fn sc_foreach_norm(
        tensors: *mut *mut c_void,
        n: i64,
        ord: f64,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: i64,
    ) -> i32;
    fn sc_foreach_mul_(
        tensors: *mut *mut c_void,
        n: i64,
        scalar: *mut c_void,
        err: *mut c_char,
        err_len: i64,
    ) -> i32;
    fn sc_set_grads_to_none(tensors: *mut *mut c_void, n: i64);
    fn sc_profiler_start(cuda: i32, err: *mut c_char, err_len: i64) -> i32;
    fn sc_profiler_stop(path: *const c_char, err: *mut c_char, err_len: i64) -> i32;
    fn sc_cuda_device_name(device: i32, out: *mut c_char, len: i64) -> i32;
    fn sc_cuda_peak_allocated(device: i32) -> i64;
    fn sc_cuda_reset_peak(device: i32) -> i32;
    fn sc_autocast_enter(
        device: i32,
        dtype: i32,
        prev_enabled: *mut i32,
        prev_dtype: *mut i32,
    ) -> i32;
    fn sc_autocast_exit(device: i32, prev_enabled: i32, prev_dtype: i32) -> i32;
    fn sc_tensor_over(
        data: *mut c_void,
        sizes: *const i64,
        ndim: i64,
        kind: i32,
        owner: *mut c_void,
        release: extern "C" fn(*mut c_void),
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: i64,
    ) -> i32;
    fn sc_checkpoint(
        input: *mut c_void,
        closure: *mut c_void,
        call: BlockCall,
        drop: BlockDrop,
        output: *mut *mut c_void,
        err: *mut c_char,
        err_len: i64,
    ) -> i32;
}

type BlockCall = extern "C" fn(*mut c_void, *mut c_void, *mut *mut c_void, *mut c_char, i64) -> i32;
type BlockDrop = extern "C" fn(*mut c_void);

/// A block the shim runs (in the forward pass, and again in the backward pass, possibly on the
/// autograd engine's thread): owned, so it outlives the graph that re-runs it.
type Block = Box<dyn Fn(&Tensor) -> Tensor + Send>;

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

/// `block(input)` with activation checkpointing (`torch.utils.checkpoint`, reentrant): nothing
/// the block computes inside is kept for the backward pass, only `input`; the backward pass
/// runs the block again, with a graph and under the forward's autocast, and back-propagates
/// through it, so its parameters get the gradients a plain `block(input)` would give them.
/// The block must compute the same thing when run again (no randomness: CLIP has no dropout).
/// Without grad mode it simply runs. A panic inside the block panics here with its message (as
/// a tch error would); in the backward pass, `backward()` panics with it.
pub fn checkpoint(input: &Tensor, block: impl Fn(&Tensor) -> Tensor + Send + 'static) -> Tensor {
    let closure: *mut Block = Box::into_raw(Box::new(Box::new(block)));
    let mut out = std::ptr::null_mut::<c_void>();
    let mut err = [0 as c_char; 2048];
    // SAFETY: `input` is a live tensor borrowed for the call; the shim takes ownership of
    // `closure` and frees it through `drop_block` exactly once; `out` receives a new tensor.
    let rc = unsafe {
        sc_checkpoint(
            input.as_ptr() as *mut c_void,
            closure.cast(),
            call_block,
            drop_block,
            &mut out,
            err.as_mut_ptr(),
            err.len() as i64,
        )
    };
    if let Err(e) = checked("checkpointed block", rc, &err) {
        panic!("{e}");
    }
    // SAFETY: a fresh at::Tensor the shim allocated for us to own.
    unsafe { Tensor::from_ptr(out.cast()) }
}

/// Runs a `Block` for the shim: takes ownership of `input`, hands over the output; a panic is
/// caught (it must not unwind into C++) and its message written to `err`.
extern "C" fn call_block(
    closure: *mut c_void,
    input: *mut c_void,
    output: *mut *mut c_void,
    err: *mut c_char,
    err_len: i64,
) -> i32 {
    // SAFETY: `closure` came from `checkpoint` and lives until `drop_block`; `input` is a new
    // at::Tensor the shim allocated for us to own.
    let (block, input) = unsafe { (&*(closure as *const Block), Tensor::from_ptr(input.cast())) };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| block(&input))) {
        Ok(mut y) => {
            // SAFETY: the shim takes ownership of the tensor handle (and deletes it).
            unsafe { *output = y.as_mut_ptr().cast() };
            std::mem::forget(y);
            0
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the block panicked");
            let bytes = &message.as_bytes()[..message.len().min(err_len.max(1) as usize - 1)];
            // SAFETY: `err` has room for `err_len` bytes: the message, cut to fit, and a NUL.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), err.cast::<u8>(), bytes.len());
                *err.add(bytes.len()) = 0;
            }
            -1
        }
    }
}

extern "C" fn drop_block(closure: *mut c_void) {
    // SAFETY: the pointer `checkpoint` made with Box::into_raw, freed once, by the shim.
    drop(unsafe { Box::from_raw(closure as *mut Block) });
}

/// Whatever keeps the bytes of a tensor made by `tensor_over` alive (a mapped file).
pub type Owner = std::sync::Arc<dyn Send + Sync>;

/// A CPU tensor of `shape` and `kind` over `bytes` without copying them: `owner`, which must
/// keep `bytes` alive and unchanged, is held until the last tensor sharing the storage is freed.
/// `bytes` must hold exactly the tensor and be aligned to its element size.
pub fn tensor_over(bytes: &[u8], shape: &[i64], kind: Kind, owner: Owner) -> Result<Tensor> {
    let numel: i64 = shape.iter().product();
    let size = kind.elt_size_in_bytes();
    if numel as usize * size != bytes.len() || !(bytes.as_ptr() as usize).is_multiple_of(size) {
        bail!(
            "tensor_over: {} bytes at {:p} are not a {shape:?} {kind:?} tensor",
            bytes.len(),
            bytes.as_ptr()
        );
    }
    let kind_number = scalar_type(kind)?;
    let owner = Box::into_raw(Box::new(owner));
    let mut out = std::ptr::null_mut::<c_void>();
    let mut err = [0 as c_char; 512];
    // SAFETY: `bytes` outlives the tensor because `owner` keeps it alive until `release_owner`
    // runs (once, from the storage's deleter); `shape` is borrowed for the call.
    let rc = unsafe {
        sc_tensor_over(
            bytes.as_ptr() as *mut c_void,
            shape.as_ptr(),
            shape.len() as i64,
            kind_number,
            owner.cast(),
            release_owner,
            &mut out,
            err.as_mut_ptr(),
            err.len() as i64,
        )
    };
    checked("tensor over a mapped file", rc, &err)?;
    // SAFETY: a fresh at::Tensor the shim allocated for us to own.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// c10's `ScalarType` number of the kinds safetensors files hold (c10/core/ScalarType.h).
fn scalar_type(kind: Kind) -> Result<i32> {
    Ok(match kind {
        Kind::Uint8 => 0,
        Kind::Int => 3,
        Kind::Int64 => 4,
        Kind::Half => 5,
        Kind::Float => 6,
        Kind::Double => 7,
        Kind::Bool => 11,
        Kind::BFloat16 => 15,
        other => bail!("tensor_over: no mapped tensors of kind {other:?}"),
    })
}

extern "C" fn release_owner(owner: *mut c_void) {
    // SAFETY: the pointer `tensor_over` made with Box::into_raw, released once by its storage.
    drop(unsafe { Box::from_raw(owner as *mut Owner) });
}

/// Hyper-parameters of one AdamW update.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f64,
    pub betas: [f64; 2],
    pub weight_decay: f64,
    pub eps: f64,
}

/// The tensors' pointers as the shim's `void**` arrays take them (borrowed for one call).
fn pointers(ts: &[Tensor]) -> Vec<*mut c_void> {
    ts.iter().map(|t| t.as_ptr() as *mut c_void).collect()
}

/// A shim call's return code and error buffer as a Result.
fn checked(what: &str, rc: i32, err: &[c_char]) -> Result<()> {
    if rc != 0 {
        // SAFETY: the shim wrote a NUL-terminated message into `err`.
        bail!(
            "libtorch {what} failed: {}",
            unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy()
        );
    }
    Ok(())
}

/// One AdamW update of `params` in place with libtorch's fused kernel. All slices have the same
/// length; `steps` are float scalars holding the (already incremented) step number. Where
/// `found_inf` (a float scalar on the parameters' device) holds 1 the kernel changes nothing.
pub fn fused_adamw(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    steps: &[Tensor],
    found_inf: Option<&Tensor>,
    h: AdamWStep,
) -> Result<()> {
    let n = params.len();
    if [grads.len(), exp_avgs.len(), exp_avg_sqs.len(), steps.len()]
        .iter()
        .any(|&l| l != n)
    {
        bail!("fused_adamw: {n} parameters but lists of other lengths");
    }
    let (mut p, mut g, mut m, mut v, mut s) = (
        pointers(params),
        pointers(grads),
        pointers(exp_avgs),
        pointers(exp_avg_sqs),
        pointers(steps),
    );
    let inf = found_inf.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut c_void);
    let mut err = [0 as c_char; 512];
    // SAFETY: each array holds `n` pointers to live tch tensors (at::Tensor*), borrowed for
    // the call, as is `inf` when not null; the kernel updates params and moments in place.
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
            inf,
            err.as_mut_ptr(),
            err.len() as i64,
        )
    };
    checked("fused AdamW", rc, &err)
}

/// `torch._foreach_norm(tensors, ord)`: each tensor's norm, in one call (one kernel per chunk of
/// tensors on CUDA).
pub fn foreach_norm(tensors: &[Tensor], ord: f64) -> Result<Vec<Tensor>> {
    let mut t = pointers(tensors);
    let mut out = vec![std::ptr::null_mut::<c_void>(); tensors.len()];
    let mut err = [0 as c_char; 512];
    // SAFETY: `t` holds pointers to live tensors; `out` has room for one new tensor each.
    let rc = unsafe {
        sc_foreach_norm(
            t.as_mut_ptr(),
            t.len() as i64,
            ord,
            out.as_mut_ptr(),
            err.as_mut_ptr(),
            err.len() as i64,
        )
    };
    checked("foreach norm", rc, &err)?;
    // SAFETY: each pointer is a fresh at::Tensor the shim allocated for us to own.
    Ok(out
        .into_iter()
        .map(|p| unsafe { Tensor::from_ptr(p.cast()) })
        .collect())
}

/// `torch._foreach_mul_(tensors, scalar)`: every tensor times the one-element tensor `scalar`,
/// in place, without reading it on the host.
pub fn foreach_mul_(tensors: &[Tensor], scalar: &Tensor) -> Result<()> {
    let mut t = pointers(tensors);
    let mut err = [0 as c_char; 512];
    // SAFETY: `t` and `scalar` point to live tensors borrowed for the call.
    let rc = unsafe {
        sc_foreach_mul_(
            t.as_mut_ptr(),
            t.len() as i64,
            scalar.as_ptr() as *mut c_void,
            err.as_mut_ptr(),
            err.len() as i64,
        )
    };
    checked("foreach mul", rc, &err)
}

/// Drops the tensors' gradients (`zero_grad(set_to_none=True)`): the next backward writes them
/// instead of adding to zeros, and no kernel runs now.
pub fn set_grads_to_none(tensors: &[Tensor]) {
    let mut t = pointers(tensors);
    // SAFETY: `t` points to live tensors; resetting a grad is always valid.
    unsafe { sc_set_grads_to_none(t.as_mut_ptr(), t.len() as i64) }
}

/// The CUDA device's name (`NVIDIA H200`); None on the CPU or in a build without CUDA.
pub fn cuda_device_name(device: Device) -> Option<String> {
    let Device::Cuda(i) = device else {
        return None;
    };
    let mut name = [0 as c_char; 256];
    // SAFETY: `name` has room for `len` bytes; the shim writes a NUL-terminated string.
    let rc = unsafe { sc_cuda_device_name(i as i32, name.as_mut_ptr(), name.len() as i64) };
    // SAFETY: as above.
    (rc == 0).then(|| {
        unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    })
}

/// The most bytes tensors have held on the CUDA device since `cuda_reset_peak`
/// (`torch.cuda.max_memory_allocated`); None on the CPU or in a build without CUDA.
pub fn cuda_peak_allocated(device: Device) -> Option<u64> {
    let Device::Cuda(i) = device else {
        return None;
    };
    // SAFETY: a plain integer in and out.
    let peak = unsafe { sc_cuda_peak_allocated(i as i32) };
    u64::try_from(peak).ok()
}

/// Starts `cuda_peak_allocated` afresh (a no-op on the CPU).
pub fn cuda_reset_peak(device: Device) {
    if let Device::Cuda(i) = device {
        // SAFETY: a plain integer in.
        let _ = unsafe { sc_cuda_reset_peak(i as i32) };
    }
}

/// Starts PyTorch's profiler (Kineto): operators with input shapes, and the kernels of `device`
/// when it is a GPU. One profile at a time per process.
pub fn profiler_start(device: Device) -> Result<()> {
    let mut err = [0 as c_char; 512];
    // SAFETY: an integer and an error buffer of the stated length.
    let rc = unsafe {
        sc_profiler_start(
            i32::from(device.is_cuda()),
            err.as_mut_ptr(),
            err.len() as i64,
        )
    };
    checked("profiler start", rc, &err)
}

/// Stops the profiler and writes its Chrome-trace JSON (chrome://tracing, Perfetto) to `path`.
pub fn profiler_stop(path: &std::path::Path) -> Result<()> {
    let c_path = std::ffi::CString::new(path.to_string_lossy().as_bytes())?;
    let mut err = [0 as c_char; 512];
    // SAFETY: a NUL-terminated path and an error buffer of the stated length.
    let rc = unsafe { sc_profiler_stop(c_path.as_ptr(), err.as_mut_ptr(), err.len() as i64) };
    checked("profiler stop", rc, &err)
}
