// Helpers for the scheduler tests: requests whose rows carry a tag, and a collector of responses.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
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
  ConvertFromF32(v.data(), dtype, bytes.data(), v.size());
  return bytes;
}

// Collects responses by an integer key; counts callback calls per key (must end up 1 each).
class Collector {
 public:
  CompletionCallback Callback(int key) {
    return [this, key](Response&& r) {
      absl::MutexLock lock(&mu_);
      ++calls_[key];
      responses_[key] = std::move(r);
    };
  }
  // Waits until `n` callbacks in total have been called; false after 30 s (a hang, not a timing).
  bool WaitForCalls(int n) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return TotalLocked() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(30));
  }
  int total() const {
    absl::MutexLock lock(&mu_);
    return TotalLocked();
  }
  int calls(int key) const {
    absl::MutexLock lock(&mu_);
    auto it = calls_.find(key);
    return it == calls_.end() ? 0 : it->second;
  }
  Response take(int key) {
    absl::MutexLock lock(&mu_);
    return std::move(responses_[key]);
  }
  Status status(int key) const {
    absl::MutexLock lock(&mu_);
    auto it = responses_.find(key);
    return it == responses_.end() ? absl::UnknownError("no response") : it->second.status;
  }

 private:
  int TotalLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int n = 0;
    for (const auto& [k, c] : calls_) n += c;
    return n;
  }
  mutable absl::Mutex mu_;
  std::map<int, int> calls_ ABSL_GUARDED_BY(mu_);
  std::map<int, Response> responses_ ABSL_GUARDED_BY(mu_);
};

inline SteadyTime FromNow(std::chrono::microseconds d) {
  return std::chrono::steady_clock::now() + d;
}

}  // namespace moe::testing
