// The engine-alone baseline (written by moe-engine-bench, read by moe-loadgen): the engine's time
// for one forward at each measured batch size, and the interpolation that gives its throughput at
// the (fractional) mean batch size a serving run achieved.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/common/status.h"

namespace moe::loadgen {

// One measured batch size.
struct EnginePoint {
  int64_t batch_tokens = 0;
  double us_per_forward = 0;  // median wall time of one Forward() of that batch
};

// With `slots` > 1 the times were measured with that many Forward() calls running at once (one
// per engine slot), so the engine's throughput is slots * batch_tokens / us_per_forward.

class EngineBaseline {
 public:
  // From points in any order (sorted here). INVALID_ARGUMENT when empty, a batch size repeats, or
  // a value is not positive.
  static StatusOr<EngineBaseline> FromPoints(std::vector<EnginePoint> points, int slots = 1);
  // Reads moe-engine-bench's --json-out file: one JSON object per line with at least
  // "batch_tokens" and "us_per_forward" (and "slots", default 1, the same on every line); other
  // lines (no such keys) are skipped.
  static StatusOr<EngineBaseline> ReadJsonLines(const std::string& path);

  // Engine time of one forward of `batch_tokens` tokens (fractional allowed): linear in the batch
  // size between the two nearest measured sizes; below the smallest, that size's time; above the
  // largest, its time per token times `batch_tokens`.
  double UsPerForward(double batch_tokens) const;
  // slots * batch_tokens / UsPerForward(batch_tokens), in tokens per second.
  double TokensPerSecond(double batch_tokens) const;

  const std::vector<EnginePoint>& points() const { return points_; }
  int slots() const { return slots_; }

 private:
  int slots_ = 1;
  std::vector<EnginePoint> points_;  // ascending batch_tokens
};

}  // namespace moe::loadgen
