#include "engine/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>

namespace moe::cpu {

struct ThreadPool::Job {
  const std::function<void(int64_t)>* fn = nullptr;
  int64_t n = 0;
  std::atomic<int64_t> next{0};  // next index to claim
  int active = 0;                // workers inside Work(); guarded by the pool's mu_
};

ThreadPool::ThreadPool(int num_workers) {
  workers_.reserve(static_cast<size_t>(std::max(num_workers, 0)));
  for (int i = 0; i < num_workers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::Work(Job& job) {
  for (int64_t i = job.next.fetch_add(1); i < job.n; i = job.next.fetch_add(1)) (*job.fn)(i);
}

void ThreadPool::WorkerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_cv_.wait(lock,
                  [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !jobs_.empty(); });
    if (stop_) return;
    Job* job = jobs_.front();
    if (job->next.load() >= job->n) {  // every index claimed: nothing left to join
      jobs_.pop_front();
      continue;
    }
    // Joining under mu_ keeps the job alive: its owner waits for active == 0 after unqueuing it.
    ++job->active;
    lock.unlock();
    Work(*job);
    lock.lock();
    if (--job->active == 0) idle_cv_.notify_all();
  }
}

void ThreadPool::ParallelFor(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (n == 1 || workers_.empty()) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  Job job;
  job.fn = &fn;
  job.n = n;
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back(&job);
  }
  work_cv_.notify_all();
  Work(job);
  // Every index is claimed. Unqueue the job (no worker can join after this), then wait for the
  // workers still running claimed indices.
  std::unique_lock<std::mutex> lock(mu_);
  auto it = std::find(jobs_.begin(), jobs_.end(), &job);
  if (it != jobs_.end()) jobs_.erase(it);
  idle_cv_.wait(lock, [&job]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return job.active == 0; });
}

}  // namespace moe::cpu
