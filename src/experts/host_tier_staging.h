// The staging ring of the host tier (HostExpertSource::Mode::kStagingRing).
//
// 1. The ring is one pinned buffer cut into n chunks of chunk_bytes. An expert's copies are cut
//    into chunks of slot bytes (PlanStageChunks: copies that touch in the slot share chunks, so a
//    9 MiB expert is one chunk and one DMA even when it is 2 or 3 pieces in the file).
// 2. Per chunk: claim it (waits while another caller holds it), wait for its previous copy's event
//    (so a chunk is refilled only once the DMA that read it has completed), memcpy the source into
//    it (gathering its pieces) with ParallelCopier, cudaMemcpyAsync to the device on the caller's
//    stream, record the chunk's event, hand the chunk back. The DMA of chunk i overlaps the fill of
//    chunk i + 1.
//
// Thread safety: StagingRing::Copy is thread safe; chunk ownership and the ring cursor are guarded
// by one mutex held only for bookkeeping (never while copying or waiting on a device).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "engine/cuda/cuda_raii.h"
#include "experts/host_tier_copier.h"
#include "moe/experts/host_tier.h"

namespace moe::experts {

class HostExpertSource::StagingRing {
 public:
  // Allocates `bytes` of pinned memory on the current device (chunks of at most kMaxChunkBytes,
  // at least 4 of them when `bytes` allows) and `threads` - 1 fill threads.
  static StatusOr<std::unique_ptr<StagingRing>> Create(int64_t bytes, int threads);
  // Waits for every chunk's last copy (their events), then frees.
  ~StagingRing();

  // Enqueues `copies` (from host memory) into the slot at `dst` on `stream`; see the file comment.
  Status Copy(std::span<const HostCopy> copies, uint8_t* dst, cudaStream_t stream);

  int64_t bytes() const { return buffer_.bytes(); }
  int64_t chunk_bytes() const { return chunk_bytes_; }
  int32_t chunk_count() const { return static_cast<int32_t>(chunks_.size()); }

  static constexpr int64_t kMaxChunkBytes = int64_t{16} << 20;

 private:
  struct Chunk {
    uint8_t* host = nullptr;  // chunk_bytes_ pinned bytes
    cuda::Event done;         // recorded after the chunk's last DMA
  };
  StagingRing(cuda::PinnedBuffer buffer, int64_t chunk_bytes, int threads);
  // Takes the next chunk in ring order (waits while its previous holder still fills it).
  size_t Claim();
  void Hand(size_t chunk);
  // Fills ring chunk `index` with `chunk` and enqueues its DMA to `dst` + chunk.dst_offset.
  Status CopyThroughChunk(size_t index, const StageChunk& chunk, uint8_t* dst, cudaStream_t stream);

  cuda::PinnedBuffer buffer_;
  int64_t chunk_bytes_ = 0;
  std::vector<Chunk> chunks_;  // fixed after Create
  ParallelCopier copier_;

  std::mutex mu_;
  std::condition_variable free_cv_;              // a chunk was handed back
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;         // ring cursor
  std::vector<bool> held_ ABSL_GUARDED_BY(mu_);  // [chunks] claimed by a caller
};

}  // namespace moe::experts
