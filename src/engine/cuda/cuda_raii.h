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

// Device memory of a fixed size.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static StatusOr<DeviceBuffer> Create(int64_t bytes) {
    DeviceBuffer b;
    if (bytes <= 0) return b;
    CUDA_RETURN_IF_ERROR(cudaMalloc(&b.ptr_, static_cast<size_t>(bytes)));
    b.bytes_ = bytes;
    return b;
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (ptr_) cudaFree(ptr_);
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
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

// Page-locked host memory (for asynchronous copies).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  static StatusOr<PinnedBuffer> Create(int64_t bytes) {
    PinnedBuffer b;
    if (bytes <= 0) return b;
    CUDA_RETURN_IF_ERROR(cudaMallocHost(&b.ptr_, static_cast<size_t>(bytes)));
    b.bytes_ = bytes;
    return b;
  }
  ~PinnedBuffer() {
    if (ptr_) cudaFreeHost(ptr_);
  }
  PinnedBuffer(PinnedBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    if (this != &o) {
      if (ptr_) cudaFreeHost(ptr_);
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
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

}  // namespace moe::cuda
