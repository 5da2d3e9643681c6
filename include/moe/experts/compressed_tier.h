// CompressedHostTier: the routed experts of a checkpoint, losslessly compressed
// (moe/experts/weight_codec.h) into pinned host memory, so that a miss of the GPU expert cache
// moves ~0.67 of the expert's bytes over PCIe and a kernel expands them into the slot
// (kernels/weight_codec.h).
//
// Start() returns at once: a background thread allocates the pinned arena one MoE layer at a time
// (cudaHostAlloc, portable) and encodes that layer's experts on `threads` workers, reading the
// mmap'd checkpoint through the host tier's copy plan. Until an expert is encoded, Find() returns
// nothing and the cache copies that expert's raw bytes as before, so serving starts without waiting
// for the encoder. An expert that needs more patches, or longer codes, than the codec allows stays
// raw. If the arena does not fit in host memory (CheckFitsInHostMemory's reserve) or an allocation
// fails, encoding stops there and status() says why; the experts already encoded stay usable.
//
// Ownership: the tier keeps the model alive (the copy plan points into its mapped files). Destroy
// it after every copy that reads its arena has completed.
//
// Thread safety: Find(), the counters and status() are safe from any thread while the encoder
// runs (an expert's blob is published with release order after it is written).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "moe/common/status.h"
#include "moe/experts/host_tier_layout.h"
#include "moe/experts/weight_codec.h"
#include "moe/model/model.h"

namespace moe::experts {

class CompressedHostTier {
 public:
  struct Options {
    int device = 0;   // the arena is portable; this device's context allocates it
    int threads = 8;  // encoder threads
  };
  struct Blob {
    const uint8_t* data = nullptr;  // pinned host memory
    CodecExpertInfo info;
  };

  // InvalidArgument for options out of range; FailedPrecondition when the model's routed experts
  // cannot be encoded (weights other than bf16, matrices not a whole number of codec groups).
  // `plan` must be `model`'s (HostCopyPlan::Build); the tier keeps a copy of it.
  static StatusOr<std::unique_ptr<CompressedHostTier>> Start(std::shared_ptr<const Model> model,
                                                             const HostCopyPlan& plan,
                                                             const Options& options);
  ~CompressedHostTier();  // stops the encoder (after the expert it is on) and frees the arena
  CompressedHostTier(const CompressedHostTier&) = delete;
  CompressedHostTier& operator=(const CompressedHostTier&) = delete;

  const CodecExpertLayout& layout() const { return layout_; }
  // The slot offsets of the blob's matrices, in blob order (the slot's order, ascending).
  const std::array<int64_t, 3>& slot_offsets() const { return slot_offsets_; }

  // The encoded blob of `key`, or nothing while it is not (yet) encoded or stays raw.
  std::optional<Blob> Find(const ExpertKey& key) const;

  int64_t total() const { return n_total_; }
  int64_t encoded() const { return encoded_.load(std::memory_order_acquire); }
  int64_t refused() const { return refused_.load(std::memory_order_acquire); }        // stay raw
  int64_t blob_bytes() const { return blob_bytes_.load(std::memory_order_acquire); }  // encoded
  int64_t arena_bytes() const { return arena_bytes_.load(std::memory_order_acquire); }
  // The encoder has finished (every expert encoded or refused, or it stopped on an error).
  bool done() const { return done_.load(std::memory_order_acquire); }
  // Seconds from Start() to done (0 before).
  double seconds() const { return seconds_.load(std::memory_order_acquire); }
  // OK, or why the encoder stopped early (host memory, an allocation failure); OK before done().
  Status status() const;
  // Blocks until done() (benchmarks and tests).
  void WaitDone() const;

 private:
  CompressedHostTier(std::shared_ptr<const Model> model, HostCopyPlan plan, const Options& options);
  void Run();
  Status EncodeLayer(int pos);

  std::shared_ptr<const Model> model_;
  HostCopyPlan plan_;
  Options options_;
  CodecExpertLayout layout_;
  std::array<int64_t, 3> slot_offsets_ = {0, 0, 0};
  std::vector<uint8_t*> arenas_;  // [layer position], n_experts blobs of max_blob_bytes each
  std::vector<CodecExpertInfo> info_;
  int64_t n_total_ = 0;
  std::unique_ptr<std::atomic<uint8_t>[]> state_;  // [n_total_]: 0 pending, 1 encoded, 2 raw
  std::atomic<int64_t> encoded_{0}, refused_{0}, blob_bytes_{0}, arena_bytes_{0};
  std::atomic<bool> done_{false}, stop_{false};
  std::atomic<double> seconds_{0};
  Status error_;  // written by the encoder thread before done_ (release)
  std::thread thread_;
};

}  // namespace moe::experts
