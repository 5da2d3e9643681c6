// A move-only cuBLAS handle bound to one stream. The engine itself needs no cuBLAS; the benchmark
// uses it for the matmul ceiling. cuBLAS errors become INTERNAL statuses naming the call.
#pragma once

#include <cublas_v2.h>

#include <utility>

#include "moe/common/status.h"

namespace moe::cuda {

class CublasHandle {
 public:
  CublasHandle() = default;
  static StatusOr<CublasHandle> Create(cudaStream_t stream) {
    CublasHandle h;
    cublasStatus_t st = cublasCreate(&h.handle_);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetStream(h.handle_, stream);
    if (st != CUBLAS_STATUS_SUCCESS) {
      return absl::InternalError(
          absl::StrCat("cuBLAS: cublasCreate/cublasSetStream failed: ", cublasGetStatusString(st)));
    }
    return h;
  }
  ~CublasHandle() {
    if (handle_) cublasDestroy(handle_);
  }
  CublasHandle(CublasHandle&& o) noexcept : handle_(std::exchange(o.handle_, nullptr)) {}
  CublasHandle& operator=(CublasHandle&& o) noexcept {
    if (this != &o) {
      if (handle_) cublasDestroy(handle_);
      handle_ = std::exchange(o.handle_, nullptr);
    }
    return *this;
  }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

// Returns from the enclosing function with INTERNAL when a cuBLAS call fails.
#define CUBLAS_RETURN_IF_ERROR(expr)                                                          \
  do {                                                                                        \
    const cublasStatus_t moe_cublas_st_ = (expr);                                             \
    if (moe_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                                            \
      return absl::InternalError(absl::StrCat("cuBLAS error ",                                \
                                              cublasGetStatusString(moe_cublas_st_),          \
                                              " in `" #expr "` at " __FILE__ ":", __LINE__)); \
    }                                                                                         \
  } while (0)

}  // namespace moe::cuda
