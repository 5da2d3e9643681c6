// Per-layer request statistics reported by KServe ModelStatistics (both APIs feed them).
//
// Thread safety: every method may be called from any thread; one mutex guards everything (a few
// additions per request).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "inference/grpc_service.pb.h"
#include "moe/common/status.h"
#include "moe/server/backend.h"

namespace moe::server {

class Stats {
 public:
  explicit Stats(const std::vector<int>& layers);

  // One finished request of `layer` (unknown layers are ignored).
  void Record(int layer, const Status& status, int64_t n_tokens, const LayerTiming& timing,
              int64_t total_ns);
  // Fills `out` for `layer` (name and version are the caller's).
  void Fill(int layer, inference::ModelStatistics* out) const;

 private:
  struct Duration {
    uint64_t count = 0;
    uint64_t ns = 0;
    void Add(int64_t ns_) {
      ++count;
      ns += static_cast<uint64_t>(ns_ < 0 ? 0 : ns_);
    }
  };
  struct Layer {
    Duration success, fail, queue, compute;
    uint64_t inference_count = 0;  // tokens answered successfully
    uint64_t execution_count = 0;  // requests answered successfully
    uint64_t last_inference_ms = 0;
  };

  mutable std::mutex mu_;
  std::map<int, Layer> layers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::server
