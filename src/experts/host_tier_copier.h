// The host side of the staging ring: how an expert's copies are cut into ring chunks
// (PlanStageChunks), and ParallelCopier, which fills one chunk with several threads, the caller
// included (one thread copies page cache to pinned memory at ~4-5 GB/s on an H200 host, far below
// the 55 GB/s link). Plain C++, tested on the CPU and under TSan.
//
// Thread safety: PlanStageChunks is a pure function. ParallelCopier::Copy is thread safe;
// concurrent callers share the workers (segments are queued FIFO, and a caller waiting for its
// own segments runs queued segments of any caller meanwhile).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "moe/experts/host_tier_layout.h"

namespace moe::experts {

// `bytes` bytes from `src` to `dst` (non-overlapping).
struct CopySpan {
  uint8_t* dst = nullptr;
  const uint8_t* src = nullptr;
  int64_t bytes = 0;
};

// One chunk of a staged copy: `bytes` bytes that land at `dst_offset` of the slot with ONE DMA,
// gathered from `pieces` (each: `bytes` from `src` to byte `chunk_offset` of the chunk).
struct StageChunk {
  struct Piece {
    const uint8_t* src = nullptr;
    int64_t chunk_offset = 0;
    int64_t bytes = 0;
  };
  int64_t dst_offset = 0;
  int64_t bytes = 0;
  std::vector<Piece> pieces;
};

// Cuts an expert's copies (HostCopyPlan order: ascending, non-overlapping slot offsets) into
// chunks of at most `chunk_bytes` (> 0). Copies whose slot ranges touch share chunks (a fused
// expert's gate+up and down become one stream of slot bytes); a padding gap starts a new chunk.
std::vector<StageChunk> PlanStageChunks(std::span<const HostCopy> copies, int64_t chunk_bytes);

class ParallelCopier {
 public:
  // `threads` >= 1 counts the caller: threads - 1 workers are started.
  explicit ParallelCopier(int threads);
  ~ParallelCopier();
  ParallelCopier(const ParallelCopier&) = delete;
  ParallelCopier& operator=(const ParallelCopier&) = delete;

  // Copies every span and returns when all bytes are copied. The total is split into at most
  // `threads` equal shares of at least kMinPartBytes (small copies stay on the calling thread).
  void Copy(std::span<const CopySpan> spans);
  void Copy(void* dst, const void* src, int64_t bytes) {
    const CopySpan span{static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src), bytes};
    Copy(std::span<const CopySpan>(&span, 1));
  }

  int threads() const { return threads_; }
  static constexpr int64_t kMinPartBytes = int64_t{256} << 10;

 private:
  struct Job;  // one Copy() call: a countdown of its queued segments
  struct Segment {
    Job* job = nullptr;
    CopySpan span;
  };
  void Work();

  std::mutex mu_;
  std::condition_variable work_cv_;  // segments queued or stopping
  std::condition_variable done_cv_;  // a job's last segment finished
  std::deque<Segment> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int threads_ = 1;
  std::vector<std::thread> workers_;
};

}  // namespace moe::experts
