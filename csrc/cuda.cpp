// CUDA facts tch does not expose, through a C ABI: the device's name and the caching
// allocator's peak. Built with STREETCLIP_CUDA when the CUDA headers of the torch wheel are
// present (build.rs, as for ProcessGroupNCCL); without it every function says "unavailable".
#include <cstdint>
#include <cstdio>
#ifdef STREETCLIP_CUDA
#include <ATen/cuda/CUDAContextLight.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

extern "C" {

// Writes the name of CUDA device `device` (NUL-terminated, at most `len` bytes) to `out`.
// Returns 0, or -1 when this build has no CUDA or libtorch threw.
int sc_cuda_device_name(int device, char* out, int64_t len) {
#ifdef STREETCLIP_CUDA
  try {
    snprintf(out, len, "%s", at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(device))->name);
    return 0;
  } catch (...) {
    return -1;
  }
#else
  (void)device, (void)out, (void)len;
  return -1;
#endif
}

// The most bytes the caching allocator has held in tensors on `device` since the last reset
// (torch.cuda.max_memory_allocated); -1 when unavailable.
int64_t sc_cuda_peak_allocated(int device) {
#ifdef STREETCLIP_CUDA
  try {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  } catch (...) {
    return -1;
  }
#else
  (void)device;
  return -1;
#endif
}

// torch.cuda.reset_peak_memory_stats(device); returns 0, or -1 when unavailable.
int sc_cuda_reset_peak(int device) {
#ifdef STREETCLIP_CUDA
  try {
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (...) {
    return -1;
  }
#else
  (void)device;
  return -1;
#endif
}

}  // extern "C"
