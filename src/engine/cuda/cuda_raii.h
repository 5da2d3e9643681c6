// Move-only owners of CUDA resources: device buffer, pinned host buffer, stream, event, graph exec.
// Each Create() returns a status (RESOURCE_EXHAUSTED when memory runs out); destructors release
// without throwing. The device must be current (cudaSetDevice) when they are created and destroyed.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <utility>

#include "kernels/cuda_status.h"

namespace moe::cuda {

template <typename Handle, typename Traits>
class UniqueCuda {
 public:
  UniqueCuda() = default;
  explicit UniqueCuda(Handle h) : h_(h) {}
  ~UniqueCuda() { Reset(); }
  UniqueCuda(UniqueCuda&& o) noexcept : h_(std::exchange(o.h_, Handle{})) {}
  UniqueCuda& operator=(UniqueCuda&& o) noexcept {
    if (this != &o) {
      Reset();
      h_ = std::exchange(o.h_, Handle{});
    }
    return *this;
  }
  UniqueCuda(const UniqueCuda&) = delete;
  UniqueCuda& operator=(const UniqueCuda&) = delete;
  Handle get() const { return h_; }
  explicit operator bool() const { return h_ != Handle{}; }
  void Reset() {
    if (h_ != Handle{}) Traits::Destroy(h_);
    h_ = Handle{};
  }

 private:
  Handle h_{};
};

struct StreamTraits {
  static void Destroy(cudaStream_t s) { cudaStreamDestroy(s); }
};
struct EventTraits {
  static void Destroy(cudaEvent_t e) { cudaEventDestroy(e); }
};
struct GraphExecTraits {
  static void Destroy(cudaGraphExec_t g) { cudaGraphExecDestroy(g); }
};
struct GraphTraits {
  static void Destroy(cudaGraph_t g) { cudaGraphDestroy(g); }
};
using Stream = UniqueCuda<cudaStream_t, StreamTraits>;
using Event = UniqueCuda<cudaEvent_t, EventTraits>;
using GraphExec = UniqueCuda<cudaGraphExec_t, GraphExecTraits>;
using Graph = UniqueCuda<cudaGraph_t, GraphTraits>;

inline StatusOr<Stream> CreateStream() {
  cudaStream_t s = nullptr;
  CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return Stream(s);
}
inline StatusOr<Event> CreateEvent(bool timing = false) {
  cudaEvent_t e = nullptr;
  CUDA_RETURN_IF_ERROR(
      cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming));
  return Event(e);
}

// Memory of a fixed size from one CUDA allocator: `Alloc(&ptr, bytes)` and `Free(ptr)`.
template <cudaError_t (*Alloc)(void**, size_t), cudaError_t (*Free)(void*)>
class CudaMemory {
 public:
  CudaMemory() = default;
  static StatusOr<CudaMemory> Create(int64_t bytes) {
    CudaMemory b;
    if (bytes <= 0) return b;
    CUDA_RETURN_IF_ERROR(Alloc(&b.ptr_, static_cast<size_t>(bytes)));
    b.bytes_ = bytes;
    return b;
  }
  ~CudaMemory() {
    if (ptr_) Free(ptr_);
  }
  CudaMemory(CudaMemory&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  CudaMemory& operator=(CudaMemory&& o) noexcept {
    if (this != &o) {
      if (ptr_) Free(ptr_);
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  CudaMemory(const CudaMemory&) = delete;
  CudaMemory& operator=(const CudaMemory&) = delete;
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  int64_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  int64_t bytes_ = 0;
};

namespace raii_detail {
inline cudaError_t DeviceAlloc(void** p, size_t n) { return cudaMalloc(p, n); }
inline cudaError_t HostAlloc(void** p, size_t n) { return cudaMallocHost(p, n); }
inline cudaError_t DeviceFree(void* p) { return cudaFree(p); }
inline cudaError_t HostFree(void* p) { return cudaFreeHost(p); }
}  // namespace raii_detail

// Device memory of a fixed size.
using DeviceBuffer = CudaMemory<raii_detail::DeviceAlloc, raii_detail::DeviceFree>;
// Page-locked host memory (for asynchronous copies).
using PinnedBuffer = CudaMemory<raii_detail::HostAlloc, raii_detail::HostFree>;

}  // namespace moe::cuda
