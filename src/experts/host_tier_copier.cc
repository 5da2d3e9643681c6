// ParallelCopier (see host_tier_copier.h).
#include "experts/host_tier_copier.h"

#include <algorithm>
#include <cstring>

namespace moe::experts {

struct ParallelCopier::Job {
  int remaining = 0;  // parts not finished yet (guarded by the copier's mu_)
};

ParallelCopier::ParallelCopier(int threads) : threads_(std::max(1, threads)) {
  for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { Work(); });
}

ParallelCopier::~ParallelCopier() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ParallelCopier::Run(const Part& part) {
  std::memcpy(part.dst, part.src, static_cast<size_t>(part.bytes));
}

void ParallelCopier::Work() {
  for (;;) {
    Part part;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping
      part = queue_.front();
      queue_.pop_front();
    }
    Run(part);
    bool last = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      last = --part.job->remaining == 0;
    }
    if (last) done_cv_.notify_all();
  }
}

void ParallelCopier::Copy(void* dst, const void* src, int64_t bytes) {
  const int64_t parts =
      std::clamp<int64_t>(bytes / kMinPartBytes, 1, static_cast<int64_t>(threads_));
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
  if (parts == 1) {
    std::memcpy(d, s, static_cast<size_t>(bytes));
    return;
  }
  // Part boundaries on 4 KiB multiples keep every part's memcpy aligned like the whole.
  const int64_t per = (bytes / parts + 4095) / 4096 * 4096;
  Job job;
  Part mine{&job, d, s, std::min(per, bytes)};
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (int64_t at = mine.bytes; at < bytes; at += per) {
      queue_.push_back(Part{&job, d + at, s + at, std::min(per, bytes - at)});
      ++job.remaining;
    }
  }
  work_cv_.notify_all();
  Run(mine);
  std::unique_lock<std::mutex> lock(mu_);
  // Help with queued parts (this job's or another caller's) instead of idling.
  while (job.remaining > 0) {
    if (!queue_.empty()) {
      Part part = queue_.front();
      queue_.pop_front();
      lock.unlock();
      Run(part);
      lock.lock();
      if (--part.job->remaining == 0 && part.job != &job) done_cv_.notify_all();
      continue;
    }
    done_cv_.wait(lock, [&] { return job.remaining == 0 || !queue_.empty(); });
  }
}

}  // namespace moe::experts
