// ParallelCopier: one large memcpy split over a fixed set of threads, the caller included. The
// host tier's staging ring fills its pinned chunks with it (a single thread copies page cache to
// pinned memory at well under the PCIe rate). Plain C++, tested on the CPU and under TSan.
//
// Thread safety: Copy is thread safe; concurrent callers share the workers (parts are queued
// FIFO, and a caller waiting for its own parts runs queued parts of any caller meanwhile).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"

namespace moe::experts {

// memcpy of one large range split over a fixed set of threads (the caller does a share too).
class ParallelCopier {
 public:
  // `threads` >= 1 counts the caller: threads - 1 workers are started.
  explicit ParallelCopier(int threads);
  ~ParallelCopier();
  ParallelCopier(const ParallelCopier&) = delete;
  ParallelCopier& operator=(const ParallelCopier&) = delete;

  // Copies `bytes` bytes from `src` to `dst` (non-overlapping) and returns when all are copied.
  // Parts are at least kMinPartBytes, so small copies stay on the calling thread.
  void Copy(void* dst, const void* src, int64_t bytes);

  static constexpr int64_t kMinPartBytes = int64_t{1} << 20;

 private:
  struct Job;  // one Copy() call: its parts and a countdown
  struct Part {
    Job* job = nullptr;
    uint8_t* dst = nullptr;
    const uint8_t* src = nullptr;
    int64_t bytes = 0;
  };
  void Work();
  static void Run(const Part& part);

  std::mutex mu_;
  std::condition_variable work_cv_;  // parts queued or stopping
  std::condition_variable done_cv_;  // a job's last part finished
  std::deque<Part> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int threads_ = 1;
  std::vector<std::thread> workers_;
};

}  // namespace moe::experts
