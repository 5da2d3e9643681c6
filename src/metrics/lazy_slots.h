// LazySlots<T>: a fixed number of slots [0, n), each holding a T built on first use.
// Used for per-device and per-worker series: a slot's series appear only once something is
// recorded for that device/worker, and the index bound keeps the label set finite.
//
// Thread safety: Get() may be called concurrently; the fast path is one acquire load, the first
// use of a slot takes a mutex. Slots live until the LazySlots is destroyed.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"

namespace moe::metrics {

template <typename T>
class LazySlots {
 public:
  using Factory = std::function<std::unique_ptr<T>(int index)>;

  LazySlots(int n, Factory factory)
      : n_(n), factory_(std::move(factory)), fast_(new std::atomic<T*>[n]), owned_(n) {
    for (int i = 0; i < n; ++i) fast_[i].store(nullptr, std::memory_order_relaxed);
  }

  // The slot's T, built by the factory on first use; nullptr when index is outside [0, n).
  T* Get(int index) {
    if (index < 0 || index >= n_) return nullptr;
    T* slot = fast_[index].load(std::memory_order_acquire);
    if (slot != nullptr) return slot;
    std::lock_guard lock(mu_);
    if (owned_[index] == nullptr) {
      owned_[index] = factory_(index);
      fast_[index].store(owned_[index].get(), std::memory_order_release);
    }
    return owned_[index].get();
  }

 private:
  const int n_;
  const Factory factory_;
  std::unique_ptr<std::atomic<T*>[]> fast_;
  std::mutex mu_;
  std::vector<std::unique_ptr<T>> owned_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::metrics
