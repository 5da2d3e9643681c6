// PlanStageChunks and ParallelCopier (see host_tier_copier.h).
#include "experts/host_tier_copier.h"

#include <algorithm>
#include <cstring>

namespace moe::experts {

std::vector<StageChunk> PlanStageChunks(std::span<const HostCopy> copies, int64_t chunk_bytes) {
  std::vector<StageChunk> chunks;
  for (const HostCopy& c : copies) {
    for (int64_t at = 0; at < c.bytes;) {
      StageChunk* chunk = chunks.empty() ? nullptr : &chunks.back();
      // Start a new chunk when there is none, the last is full, or the slot bytes do not touch.
      if (chunk == nullptr || chunk->bytes == chunk_bytes ||
          chunk->dst_offset + chunk->bytes != c.dst_offset + at) {
        chunks.push_back(StageChunk{c.dst_offset + at, 0, {}});
        chunk = &chunks.back();
      }
      const int64_t n = std::min(chunk_bytes - chunk->bytes, c.bytes - at);
      chunk->pieces.push_back(StageChunk::Piece{c.src + at, chunk->bytes, n});
      chunk->bytes += n;
      at += n;
    }
  }
  return chunks;
}

struct ParallelCopier::Job {
  int remaining = 0;  // queued segments not finished yet (guarded by the copier's mu_)
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

namespace {
void Run(const CopySpan& s) {
  if (s.bytes > 0) std::memcpy(s.dst, s.src, static_cast<size_t>(s.bytes));
}
}  // namespace

void ParallelCopier::Work() {
  for (;;) {
    Segment seg;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping
      seg = queue_.front();
      queue_.pop_front();
    }
    Run(seg.span);
    bool last = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      last = --seg.job->remaining == 0;
    }
    if (last) done_cv_.notify_all();
  }
}

void ParallelCopier::Copy(std::span<const CopySpan> spans) {
  int64_t total = 0;
  for (const CopySpan& s : spans) total += s.bytes;
  const int64_t shares = std::clamp<int64_t>(total / kMinPartBytes, 1, threads_);
  if (shares == 1) {
    for (const CopySpan& s : spans) Run(s);
    return;
  }
  // Share boundaries on 4 KiB multiples of the total keep most segments page aligned. Share 0
  // (the caller's) may consist of several segments, as may every other share.
  const int64_t per = (total / shares + 4095) / 4096 * 4096;
  std::vector<CopySpan> mine;
  Job job;
  {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t offset = 0;  // of the current span's start within the total
    for (const CopySpan& s : spans) {
      for (int64_t at = 0; at < s.bytes;) {
        const int64_t pos = offset + at;
        const int64_t share_end = (pos / per + 1) * per;
        const int64_t n = std::min(s.bytes - at, share_end - pos);
        const CopySpan seg{s.dst + at, s.src + at, n};
        if (pos < per) {
          mine.push_back(seg);
        } else {
          queue_.push_back(Segment{&job, seg});
          ++job.remaining;
        }
        at += n;
      }
      offset += s.bytes;
    }
  }
  work_cv_.notify_all();
  for (const CopySpan& s : mine) Run(s);
  std::unique_lock<std::mutex> lock(mu_);
  // Help with queued segments (this job's or another caller's) instead of idling.
  while (job.remaining > 0) {
    if (!queue_.empty()) {
      Segment seg = queue_.front();
      queue_.pop_front();
      lock.unlock();
      Run(seg.span);
      lock.lock();
      if (--seg.job->remaining == 0 && seg.job != &job) done_cv_.notify_all();
      continue;
    }
    done_cv_.wait(lock, [&] { return job.remaining == 0 || !queue_.empty(); });
  }
}

}  // namespace moe::experts
