// A small fixed-size thread pool with one primitive, ParallelFor, shared by every slot of a
// CpuEngine.
//
// Thread safety: ParallelFor may be called from any number of threads at once (one per engine
// slot); their jobs share the workers first come, first served, and each caller also works on its
// own job, so a job always makes progress even when every worker is busy elsewhere. The destructor
// must not run while a ParallelFor is in flight.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"

namespace moe::cpu {

class ThreadPool {
 public:
  // Starts `num_workers` (>= 0) threads. With 0, ParallelFor runs everything on the caller.
  explicit ThreadPool(int num_workers);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_workers() const { return static_cast<int>(workers_.size()); }

  // Runs fn(i) for every i in [0, n), on the workers and the calling thread, in no particular
  // order; returns when all have finished. `fn` must not throw.
  void ParallelFor(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  struct Job;
  void WorkerLoop();
  // Claims and runs indices of `job` until none is left.
  static void Work(Job& job);

  std::mutex mu_;
  std::condition_variable work_cv_;             // a job was queued, or stop_
  std::condition_variable idle_cv_;             // a job's last active worker left it
  std::deque<Job*> jobs_ ABSL_GUARDED_BY(mu_);  // jobs with indices left to claim
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace moe::cpu
