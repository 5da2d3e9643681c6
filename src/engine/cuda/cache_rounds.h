// Host-side pieces of the cached forward that need no GPU (unit-tested on the CPU):
//   1. ActiveExperts: which experts a batch routed to, from the scan's per-expert row offsets.
//   2. AppendExpertTiles: the grouped GEMMs' tile list restricted to some experts -- exactly the
//      entries the scan kernel writes for them ({expert, first row} every `bm` rows), so a round
//      computes each of its experts' rows with the same tiles as the all-resident forward.
//   3. RankPredictedExperts: the gate-lookahead prediction (the next layer's routing of this
//      layer's input) as an expert ranking for ExpertSlotPool::Prefetch.
//   4. RankTraceExperts: the experts of a recorded routing trace, most used first (warming the
//      cache at start-up, --expert-warm-trace).
//   5. LookaheadGate: whether predictions of one lookahead depth (>= 2 layers ahead) are still
//      worth loading, from their recent measured precision.
//   6. RoundUpload: where each piece of a round's upload (pointer tables, counters, tiles) sits.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "moe/common/status.h"
#include "moe/experts/slot_pool.h"
#include "moe/experts/trace.h"

namespace moe::cuda {

// One entry of a grouped GEMM tile list: the kernels' int2 {group, first row}.
struct TileEntry {
  int32_t group = 0;
  int32_t row = 0;
};
static_assert(sizeof(TileEntry) == 8, "TileEntry must match the kernels' int2");

// One round's upload to the device (a ring entry of ExpertCacheRuntime::EngineSlot::rounds),
// byte offsets from its start: pointer tables of n_experts entries each (gate, up and down of the
// round's experts; then gate and up once more of the round's ready experts only and of its
// loading experts only, null elsewhere, for a decode step that computes its ready experts'
// gate/up before it waits for the loads), four int32 counters, the tile list.
struct RoundUpload {
  enum Table { kGate = 0, kUp, kDown, kReadyGate, kReadyUp, kLoadingGate, kLoadingUp, kTables };
  int64_t n_experts = 0;
  int64_t table(Table t) const { return int64_t{t} * n_experts * 8; }
  int64_t counts() const { return table(kTables); }
  int64_t tiles() const { return counts() + 16; }
  int64_t bytes(int64_t n_tiles) const { return tiles() + n_tiles * 8; }
};

// `offsets` [n_experts + 1]: expert e's sorted rows are [offsets[e], offsets[e + 1]).
// INVALID_ARGUMENT unless offsets[0] == 0, they never decrease and offsets[n_experts] == rows.
Status CheckOffsets(std::span<const int32_t> offsets, int64_t rows);

// Experts with at least one row, ascending.
std::vector<int32_t> ActiveExperts(std::span<const int32_t> offsets);

// Appends the tiles of each expert of `experts` (in that order) to `out`: {e, offsets[e] + j * bm}
// for j = 0, 1, ... while below offsets[e + 1]. Experts outside the offsets are skipped.
void AppendExpertTiles(std::span<const int32_t> offsets, std::span<const int32_t> experts, int bm,
                       std::vector<TileEntry>* out);

// The distinct experts of `ids` ([n_tokens, top_k], -1 or out-of-range entries ignored) ranked by
// the sum of their routing weights over tokens (most likely first; ties -> lower id).
std::vector<int32_t> RankPredictedExperts(std::span<const int32_t> ids,
                                          std::span<const float> weights, int32_t n_experts);

// Every (layer, expert) of `trace` once, by the number of steps that used it (most first; ties ->
// lower layer, then lower expert).
std::vector<experts::ExpertKey> RankTraceExperts(const experts::Trace& trace);

// Recent precision of one lookahead depth: decayed counts of predicted and of correctly predicted
// experts (each scored expert weighs `decay` times the one after it: a memory of about
// 1 / (1 - decay) experts). Loads are allowed until `min_evidence` (decayed) predicted experts
// were scored, then while correct >= min_precision * predicted. A wrong prefetch costs a whole
// copy of PCIe time, so a depth that predicts at chance should not load.
// Thread safety: none (a plain value; the owner synchronizes).
class LookaheadGate {
 public:
  explicit LookaheadGate(double min_precision, double decay = 1.0 - 1.0 / 256,
                         double min_evidence = 64)
      : min_precision_(min_precision), decay_(decay), min_evidence_(min_evidence) {}
  // `predicted`: one layer's predicted experts; `actual`: the experts it routed, ascending.
  void Record(std::span<const int32_t> predicted, std::span<const int32_t> actual);
  bool Allows() const {
    return predicted_ < min_evidence_ || correct_ >= min_precision_ * predicted_;
  }
  double predicted() const { return predicted_; }
  double correct() const { return correct_; }

 private:
  double min_precision_, decay_, min_evidence_;
  double predicted_ = 0, correct_ = 0;
};

}  // namespace moe::cuda
