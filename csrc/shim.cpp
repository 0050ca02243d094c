// streetclip's C++ shim: what tch does not expose, through a C ABI only.
// - autocast with a chosen dtype (tch can only toggle CUDA autocast, which then means fp16);
// - libtorch's fused AdamW kernel and the foreach ops around it (tch binds no fused or foreach
//   optimizer ops), and gradients set to none;
// - PyTorch's profiler (Kineto), writing Chrome-trace JSON.
// A tch `C_tensor*` is an `at::Tensor*` (torch-sys's torch_api.h).
#include <ATen/autocast_mode.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_fused_adamw.h>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <vector>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <set>
#include <torch/csrc/autograd/profiler_kineto.h>

namespace {
std::vector<at::Tensor> tensor_list(void** ptrs, int64_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int64_t i = 0; i < n; ++i) out.push_back(*static_cast<at::Tensor*>(ptrs[i]));
  return out;
}

int failed(const std::exception& e, char* err, int64_t err_len) {
  snprintf(err, err_len, "%s", e.what());
  return -1;
}

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

// One AdamW step over `n` parameters with libtorch's fused kernel (torch.optim.AdamW(fused=True)):
// each array holds `n` tensor pointers; `steps` are float scalars already holding the step
// number (the same tensor may appear `n` times). `found_inf` (may be null) is a float scalar on
// the parameters' device: where it holds 1 the kernel leaves everything untouched, with no host
// synchronisation. Returns 0, or -1 if libtorch threw (message in `err`, at most `err_len` bytes).
int sc_fused_adamw(void** params, void** grads, void** exp_avgs, void** exp_avg_sqs, void** steps, int64_t n,
                   double lr, double beta1, double beta2, double weight_decay, double eps, void* found_inf,
                   char* err, int64_t err_len) {
  try {
    std::optional<at::Tensor> inf;
    if (found_inf != nullptr) inf = *static_cast<at::Tensor*>(found_inf);
    at::_fused_adamw_(tensor_list(params, n), tensor_list(grads, n), tensor_list(exp_avgs, n),
                      tensor_list(exp_avg_sqs, n), {}, tensor_list(steps, n), lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false, /*grad_scale=*/std::nullopt, inf);
    return 0;
  } catch (const std::exception& e) {
    return failed(e, err, err_len);
  }
}

// torch._foreach_norm(tensors, ord): writes `n` new tensors (owned by the caller, as tch's) to `out`.
int sc_foreach_norm(void** tensors, int64_t n, double ord, void** out, char* err, int64_t err_len) {
  try {
    auto norms = at::_foreach_norm(tensor_list(tensors, n), ord);
    for (int64_t i = 0; i < n; ++i) out[i] = new at::Tensor(norms[i]);
    return 0;
  } catch (const std::exception& e) {
    return failed(e, err, err_len);
  }
}

// torch._foreach_mul_(tensors, scalar): every tensor times the one-element tensor `scalar`, in place.
int sc_foreach_mul_(void** tensors, int64_t n, void* scalar, char* err, int64_t err_len) {
  try {
    auto list = tensor_list(tensors, n);
    at::_foreach_mul_(list, *static_cast<at::Tensor*>(scalar));
    return 0;
  } catch (const std::exception& e) {
    return failed(e, err, err_len);
  }
}

// `param.grad = None` for each tensor (optimizer.zero_grad(set_to_none=True)).
void sc_set_grads_to_none(void** tensors, int64_t n) {
  for (int64_t i = 0; i < n; ++i) static_cast<at::Tensor*>(tensors[i])->mutable_grad().reset();
}

// Starts PyTorch's profiler (Kineto, as torch.profiler.profile): CPU operators with their
// input shapes, and CUDA kernels too when `cuda` is 1. Returns 0, or -1 (message in `err`).
int sc_profiler_start(int cuda, char* err, int64_t err_len) {
  try {
    namespace impl = torch::profiler::impl;
    // Kineto logs stages, and an "error" for the GPU API a CPU-only machine lacks: quiet it
    // (failures still throw; a user's own KINETO_LOG_LEVEL wins).
    setenv("KINETO_LOG_LEVEL", "5", 0);
    impl::ProfilerConfig config(impl::ProfilerState::KINETO, /*report_input_shapes=*/true);
    std::set<impl::ActivityType> activities{impl::ActivityType::CPU};
    if (cuda != 0) activities.insert(impl::ActivityType::CUDA);
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
    return 0;
  } catch (const std::exception& e) {
    return failed(e, err, err_len);
  }
}

// Stops the profiler sc_profiler_start started and writes its Chrome trace to `path`.
int sc_profiler_stop(const char* path, char* err, int64_t err_len) {
  try {
    torch::autograd::profiler::disableProfiler()->save(path);
    return 0;
  } catch (const std::exception& e) {
    return failed(e, err, err_len);
  }
}

}  // extern "C"
