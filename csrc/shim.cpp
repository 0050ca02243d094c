// streetclip's C++ shim: what tch does not expose, through a C ABI only.
// Autocast with a chosen dtype (tch can only toggle CUDA autocast, which then means fp16).
#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

namespace {
at::DeviceType device_of(int device) { return device == 1 ? at::kCUDA : at::kCPU; }
at::ScalarType dtype_of(int dtype) { return dtype == 1 ? at::kHalf : at::kBFloat16; }
}  // namespace

extern "C" {

// Enters an autocast region on `device` (0 CPU, 1 CUDA) computing in `dtype` (0 bfloat16,
// 1 float16). Writes the previous state to `prev_enabled` / `prev_dtype` for sc_autocast_exit.
// Returns 0, or -1 if libtorch threw.
int sc_autocast_enter(int device, int dtype, int* prev_enabled, int* prev_dtype) {
  try {
    auto dev = device_of(device);
    *prev_enabled = at::autocast::is_autocast_enabled(dev) ? 1 : 0;
    *prev_dtype = at::autocast::get_autocast_dtype(dev) == at::kHalf ? 1 : 0;
    at::autocast::set_autocast_dtype(dev, dtype_of(dtype));
    at::autocast::set_autocast_enabled(dev, true);
    at::autocast::increment_nesting();
    return 0;
  } catch (...) {
    return -1;
  }
}

// Leaves the region entered by sc_autocast_enter, restoring the previous state and dropping
// autocast's cast cache when the outermost region ends.
int sc_autocast_exit(int device, int prev_enabled, int prev_dtype) {
  try {
    auto dev = device_of(device);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(dev, prev_enabled != 0);
    at::autocast::set_autocast_dtype(dev, dtype_of(prev_dtype));
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
