// streetclip's C++ shim: what tch does not expose, through a C ABI only.
// - autocast with a chosen dtype (tch can only toggle CUDA autocast, which then means fp16);
// - libtorch's fused AdamW kernel and the foreach ops around it (tch binds no fused or foreach
//   optimizer ops), and gradients set to none;
// - PyTorch's profiler (Kineto), writing Chrome-trace JSON;
// - tensors over memory the caller owns (a mapped weights file), released through a callback;
// - activation checkpointing (torch.utils.checkpoint): a block run without keeping its
//   activations and re-run in the backward pass, as a custom autograd function.
// A tch `C_tensor*` is an `at::Tensor*` (torch-sys's torch_api.h).
#include <ATen/autocast_mode.h>
#include <ATen/ops/from_blob.h>
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
#include <stdexcept>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
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

// A block of the caller's (a Rust closure): `call` runs it on a tensor it takes ownership of and
// writes a new tensor it hands over (or a message, returning non-zero); `drop` frees the closure.
using BlockCall = int (*)(void* closure, void* input, void** output, char* err, int64_t err_len);
using BlockDrop = void (*)(void* closure);

// Owns the closure for as long as the autograd graph that re-runs it does.
struct Block : torch::CustomClassHolder {
  void* closure;
  BlockCall call;
  BlockDrop drop;
  Block(void* c, BlockCall f, BlockDrop d) : closure(c), call(f), drop(d) {}
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  ~Block() override { drop(closure); }

  at::Tensor run(const at::Tensor& input) const {
    char err[2048] = {0};
    void* out = nullptr;
    if (call(closure, new at::Tensor(input), &out, err, sizeof err) != 0) throw std::runtime_error(err);
    auto* owned = static_cast<at::Tensor*>(out);
    at::Tensor result = *owned;
    delete owned;
    return result;
  }
};

// The autocast state of the CPU and CUDA, as the forward pass saw it (thread-local in libtorch,
// and the backward pass may run on another thread), restored around the recomputation.
const at::DeviceType kAutocastDevices[] = {at::kCPU, at::kCUDA};

struct AutocastRestore {
  bool prev_enabled[2];
  at::ScalarType prev_dtype[2];
  explicit AutocastRestore(const ska::flat_hash_map<std::string, at::IValue>& saved) {
    for (int i = 0; i < 2; ++i) {
      auto dev = kAutocastDevices[i];
      prev_enabled[i] = at::autocast::is_autocast_enabled(dev);
      prev_dtype[i] = at::autocast::get_autocast_dtype(dev);
      at::autocast::set_autocast_enabled(dev, saved.at("autocast" + std::to_string(i)).toBool());
      at::autocast::set_autocast_dtype(dev, saved.at("dtype" + std::to_string(i)).toScalarType());
    }
    at::autocast::increment_nesting();
  }
  ~AutocastRestore() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    for (int i = 0; i < 2; ++i) {
      at::autocast::set_autocast_enabled(kAutocastDevices[i], prev_enabled[i]);
      at::autocast::set_autocast_dtype(kAutocastDevices[i], prev_dtype[i]);
    }
  }
};

// torch.utils.checkpoint's reentrant variant: the forward pass runs the block without a graph
// and keeps only its input; the backward pass re-runs it with one (under the forward's autocast)
// and back-propagates the incoming gradient through it, which adds the block's parameter
// gradients where they are and yields the input's.
struct Checkpoint : torch::autograd::Function<Checkpoint> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const c10::intrusive_ptr<Block>& block) {
    ctx->saved_data["block"] = c10::IValue::make_capsule(block);
    for (int i = 0; i < 2; ++i) {
      auto dev = kAutocastDevices[i];
      ctx->saved_data["autocast" + std::to_string(i)] = at::autocast::is_autocast_enabled(dev);
      ctx->saved_data["dtype" + std::to_string(i)] = at::autocast::get_autocast_dtype(dev);
    }
    ctx->save_for_backward({input});
    return block->run(input);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto input = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    auto block = c10::static_intrusive_pointer_cast<Block>(ctx->saved_data["block"].toCapsule());
    at::Tensor output;
    {
      AutocastRestore autocast(ctx->saved_data);
      at::AutoGradMode grad(true);
      output = block->run(input);
    }
    torch::autograd::backward({output}, {grads[0]});
    return {input.grad(), at::Tensor()};
  }
};
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

// A CPU tensor of `ndim` sizes and ScalarType `kind` over `data`, which it does not copy:
// `release(owner)` runs once, when the last tensor sharing that storage is freed (if this
// fails, `owner` may never be released: leaked, never released twice). Writes a new tensor to
// `out`; returns 0, or -1 (message in `err`).
int sc_tensor_over(void* data, const int64_t* sizes, int64_t ndim, int kind, void* owner, void (*release)(void*),
                   void** out, char* err, int64_t err_len) {
  try {
    auto options = at::TensorOptions().dtype(static_cast<at::ScalarType>(kind)).device(at::kCPU);
    auto deleter = [owner, release](void*) { release(owner); };
    *out = new at::Tensor(at::from_blob(data, at::IntArrayRef(sizes, ndim), deleter, options));
    return 0;
  } catch (const std::exception& e) {
    return failed(e, err, err_len);
  }
}

// `output = block(input)` checkpointed (see Checkpoint): takes ownership of `closure` (freed
// through `drop` when nothing needs it any more, at once when grad mode is off, where the block
// simply runs). An input that does not require grad is re-rooted as a leaf that does, so the
// block's own parameters still get their gradients. Writes a new tensor to `output`; returns 0,
// or -1 (message in `err`).
int sc_checkpoint(void* input, void* closure, BlockCall call, BlockDrop drop, void** output, char* err,
                  int64_t err_len) {
  try {
    auto block = c10::make_intrusive<Block>(closure, call, drop);
    at::Tensor x = *static_cast<at::Tensor*>(input);
    at::Tensor y;
    if (!at::GradMode::is_enabled()) {
      y = block->run(x);
    } else {
      if (!x.requires_grad()) x = x.detach().requires_grad_(true);
      y = Checkpoint::apply(x, block);
    }
    *output = new at::Tensor(y);
    return 0;
  } catch (const std::exception& e) {
    return failed(e, err, err_len);
  }
}

}  // extern "C"
