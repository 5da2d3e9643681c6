// The staging ring of the host tier and its parallel memcpy (see host_tier_staging.h).
#include "experts/host_tier_staging.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace moe::experts {

// ---------------------------------------------------------------------------------------------
// StagingRing

HostExpertSource::StagingRing::StagingRing(cuda::PinnedBuffer buffer, int64_t chunk_bytes,
                                           int threads)
    : buffer_(std::move(buffer)), chunk_bytes_(chunk_bytes), copier_(threads) {}

StatusOr<std::unique_ptr<HostExpertSource::StagingRing>> HostExpertSource::StagingRing::Create(
    int64_t bytes, int threads) {
  // At least 4 chunks so that fills overlap copies, at most kMaxChunkBytes each (DMA of 16 MiB
  // runs at the full pinned rate), whole KiB.
  const int64_t chunk =
      std::min(kMaxChunkBytes, std::max<int64_t>(bytes / 4, 64 << 10)) / 1024 * 1024;
  const int64_t n = bytes / chunk;
  if (n < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("staging ring of ", bytes, " bytes is too small"));
  }
  MOE_ASSIGN_OR_RETURN(cuda::PinnedBuffer buffer, cuda::PinnedBuffer::Create(n * chunk));
  std::unique_ptr<StagingRing> ring(new StagingRing(std::move(buffer), chunk, threads));
  ring->chunks_.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    Chunk& c = ring->chunks_[static_cast<size_t>(i)];
    c.host = ring->buffer_.as<uint8_t>() + i * chunk;
    MOE_ASSIGN_OR_RETURN(c.done, cuda::CreateEvent());
  }
  std::lock_guard<std::mutex> lock(ring->mu_);
  ring->held_.assign(static_cast<size_t>(n), false);
  return ring;
}

HostExpertSource::StagingRing::~StagingRing() {
  for (Chunk& c : chunks_) {
    if (c.done) cudaEventSynchronize(c.done.get());
  }
}

size_t HostExpertSource::StagingRing::Claim() {
  std::unique_lock<std::mutex> lock(mu_);
  const size_t i = next_;
  next_ = (next_ + 1) % chunks_.size();
  free_cv_.wait(lock, [&] { return !held_[i]; });
  held_[i] = true;
  return i;
}

void HostExpertSource::StagingRing::Hand(size_t chunk) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    held_[chunk] = false;
  }
  free_cv_.notify_all();
}

Status HostExpertSource::StagingRing::CopyThroughChunk(size_t index, const StageChunk& chunk,
                                                       uint8_t* dst, cudaStream_t stream) {
  Chunk& c = chunks_[index];
  // The chunk's previous DMA (any caller's stream) must have read it before it is overwritten.
  CUDA_RETURN_IF_ERROR(cudaEventSynchronize(c.done.get()));
  std::vector<CopySpan> spans;
  spans.reserve(chunk.pieces.size());
  for (const StageChunk::Piece& p : chunk.pieces) {
    spans.push_back(CopySpan{c.host + p.chunk_offset, p.src, p.bytes});
  }
  copier_.Copy(spans);
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst + chunk.dst_offset, c.host,
                                       static_cast<size_t>(chunk.bytes), cudaMemcpyHostToDevice,
                                       stream));
  CUDA_RETURN_IF_ERROR(cudaEventRecord(c.done.get(), stream));
  return absl::OkStatus();
}

Status HostExpertSource::StagingRing::Copy(std::span<const HostCopy> copies, uint8_t* dst,
                                           cudaStream_t stream) {
  for (const StageChunk& chunk : PlanStageChunks(copies, chunk_bytes_)) {
    const size_t index = Claim();
    const Status s = CopyThroughChunk(index, chunk, dst, stream);
    Hand(index);
    MOE_RETURN_IF_ERROR(s);
  }
  return absl::OkStatus();
}

}  // namespace moe::experts
