//! Safe wrappers over the C++ shim (csrc/shim.cpp).

use anyhow::{bail, Result};
use tch::Device;

extern "C" {
    fn sc_autocast_enter(device: i32, dtype: i32, prev_enabled: *mut i32, prev_dtype: *mut i32) -> i32;
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
