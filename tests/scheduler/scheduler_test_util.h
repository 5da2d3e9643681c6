// Helpers for the scheduler tests: requests whose rows carry a tag, and a collector of responses.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "moe/scheduler/scheduler.h"

namespace moe::testing {

// [n_tokens, hidden] of `dtype`; element 0 of every row is `tag` (a small integer, exact in every
// dtype), the others vary with the row and column.
inline std::string TaggedInput(DType dtype, int hidden, int64_t n_tokens, int tag) {
  std::vector<float> v(static_cast<size_t>(n_tokens * hidden));
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int j = 0; j < hidden; ++j) {
      v[static_cast<size_t>(t * hidden + j)] =
          j == 0 ? static_cast<float>(tag)
                 : 0.01f * static_cast<float>((tag * 31 + t * 7 + j * 3) % 97) - 0.5f;
    }
  }
  std::string bytes(v.size() * DTypeSize(dtype), '\0');
  if (v.empty()) return bytes;
  ConvertFromF32(v.data(), dtype, bytes.data(), v.size());
  return bytes;
}

// Collects responses by an integer key; counts callback calls per key (must end up 1 each).
class Collector {
 public:
  CompletionCallback Callback(int key) {
    return [this, key](Response&& r) {
      std::lock_guard<std::mutex> lock(mu_);
      ++calls_[key];
      responses_[key] = std::move(r);
      cv_.notify_all();
    };
  }
  // Waits until `n` callbacks in total have been called; false after 30 s (a hang, not a timing).
  bool WaitForCalls(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(30), [this, n] { return TotalLocked() >= n; });
  }
  int total() const {
    std::lock_guard<std::mutex> lock(mu_);
    return TotalLocked();
  }
  int calls(int key) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = calls_.find(key);
    return it == calls_.end() ? 0 : it->second;
  }
  Response take(int key) {
    std::lock_guard<std::mutex> lock(mu_);
    return std::move(responses_[key]);
  }
  Status status(int key) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = responses_.find(key);
    return it == responses_.end() ? absl::UnknownError("no response") : it->second.status;
  }

 private:
  int TotalLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int n = 0;
    for (const auto& [k, c] : calls_) n += c;
    return n;
  }
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<int, int> calls_ ABSL_GUARDED_BY(mu_);
  std::map<int, Response> responses_ ABSL_GUARDED_BY(mu_);
};

inline SteadyTime FromNow(std::chrono::microseconds d) {
  return std::chrono::steady_clock::now() + d;
}

}  // namespace moe::testing
