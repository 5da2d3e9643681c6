// Host logic of the cached forward (src/engine/cuda/cache_rounds.h): tile lists per round against
// the scan kernel's full list, active experts, offset checks, prediction ranking, the lookahead
// gate. CPU only.
#include "engine/cuda/cache_rounds.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

namespace moe::cuda {
namespace {

// The scan kernel's tile list (kernels/routing.cu): every expert in id order, {e, row} every bm.
std::vector<TileEntry> ScanTiles(const std::vector<int32_t>& offsets, int bm) {
  std::vector<TileEntry> out;
  for (size_t e = 0; e + 1 < offsets.size(); ++e) {
    for (int32_t r = offsets[e]; r < offsets[e + 1]; r += bm) out.push_back({int32_t(e), r});
  }
  return out;
}

std::vector<int32_t> RandomOffsets(std::mt19937& rng, int n_experts, int max_rows) {
  std::vector<int32_t> off(n_experts + 1, 0);
  for (int e = 0; e < n_experts; ++e) {
    const int rows = rng() % 3 == 0 ? 0 : static_cast<int>(rng() % (max_rows + 1));
    off[e + 1] = off[e] + rows;
  }
  return off;
}

bool operator==(const TileEntry& a, const TileEntry& b) {
  return a.group == b.group && a.row == b.row;
}

TEST(CacheRounds, RoundsPartitionTheScanTileList) {
  std::mt19937 rng(1);
  for (int trial = 0; trial < 200; ++trial) {
    const int n_experts = 1 + static_cast<int>(rng() % 130);
    const int bm = std::vector<int>{16, 64, 128, 256}[rng() % 4];
    const auto off = RandomOffsets(rng, n_experts, 300);
    const auto active = ActiveExperts(off);
    // Split the active experts into random rounds in random order (as the pool may).
    std::vector<int32_t> order = active;
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<TileEntry> all;
    for (size_t i = 0; i < order.size();) {
      const size_t take = 1 + rng() % 5;
      const std::vector<int32_t> round(order.begin() + i,
                                       order.begin() + std::min(order.size(), i + take));
      std::vector<TileEntry> tiles;
      AppendExpertTiles(off, round, bm, &tiles);
      for (const TileEntry& t : tiles) {
        ASSERT_TRUE(std::find(round.begin(), round.end(), t.group) != round.end());
      }
      all.insert(all.end(), tiles.begin(), tiles.end());
      i += take;
    }
    auto want = ScanTiles(off, bm);
    auto key = [](const TileEntry& a, const TileEntry& b) {
      return a.group != b.group ? a.group < b.group : a.row < b.row;
    };
    std::sort(all.begin(), all.end(), key);
    std::sort(want.begin(), want.end(), key);
    ASSERT_EQ(all.size(), want.size());
    for (size_t i = 0; i < all.size(); ++i) ASSERT_TRUE(all[i] == want[i]) << i;
  }
}

TEST(CacheRounds, ActiveExpertsAndEdgeCases) {
  EXPECT_EQ(ActiveExperts(std::vector<int32_t>{0, 0, 3, 3, 4}), (std::vector<int32_t>{1, 3}));
  EXPECT_TRUE(ActiveExperts(std::vector<int32_t>{0}).empty());
  std::vector<TileEntry> tiles;
  const std::vector<int32_t> off = {0, 17, 17, 20};
  AppendExpertTiles(off, std::vector<int32_t>{0, 1, 2, 7, -1}, 16, &tiles);  // 1 empty, 7/-1 bad
  ASSERT_EQ(tiles.size(), 3u);
  EXPECT_TRUE(tiles[0] == (TileEntry{0, 0}));
  EXPECT_TRUE(tiles[1] == (TileEntry{0, 16}));
  EXPECT_TRUE(tiles[2] == (TileEntry{2, 17}));
  tiles.clear();
  AppendExpertTiles(off, std::vector<int32_t>{0}, 0, &tiles);
  EXPECT_TRUE(tiles.empty());
}

TEST(CacheRounds, CheckOffsets) {
  EXPECT_TRUE(CheckOffsets(std::vector<int32_t>{0, 2, 2, 5}, 5).ok());
  EXPECT_FALSE(CheckOffsets(std::vector<int32_t>{0, 2, 2, 5}, 6).ok());
  EXPECT_FALSE(CheckOffsets(std::vector<int32_t>{1, 2, 5}, 5).ok());
  EXPECT_FALSE(CheckOffsets(std::vector<int32_t>{0, 3, 2, 5}, 5).ok());
  EXPECT_FALSE(CheckOffsets(std::vector<int32_t>{}, 0).ok());
}

TEST(CacheRounds, RankPredictedExpertsBySummedWeight) {
  // Two tokens, top-2: expert 5 twice (0.3 + 0.4), expert 2 once (0.6), expert 9 once (0.7).
  const std::vector<int32_t> ids = {2, 5, 9, 5};
  const std::vector<float> w = {0.6f, 0.3f, 0.7f, 0.4f};
  EXPECT_EQ(RankPredictedExperts(ids, w, 16), (std::vector<int32_t>{5, 9, 2}));
  // Ties go to the lower id; out-of-range and -1 ids are ignored.
  EXPECT_EQ(RankPredictedExperts(std::vector<int32_t>{7, 3, -1, 40},
                                 std::vector<float>{0.5f, 0.5f, 1.0f, 1.0f}, 16),
            (std::vector<int32_t>{3, 7}));
  EXPECT_TRUE(RankPredictedExperts(ids, w, 0).empty());
}

TEST(CacheRounds, RankTraceExpertsByUses) {
  experts::Trace trace;
  trace.shape = {4, 8, 2};
  trace.steps = {{0, 0, {1, 2}}, {0, 3, {2, 5}}, {1, 0, {2, 7}}, {1, 3, {5, 2}}, {2, 3, {5}}};
  ASSERT_TRUE(trace.Validate().ok());
  const std::vector<experts::ExpertKey> ranked = RankTraceExperts(trace);
  // (layer 3, expert 5) x3; (0, 2) and (3, 2) x2; (0, 1) and (0, 7) x1; ties by (layer, expert).
  const std::vector<experts::ExpertKey> want = {{3, 5}, {0, 2}, {3, 2}, {0, 1}, {0, 7}};
  EXPECT_EQ(ranked, want);
  EXPECT_TRUE(RankTraceExperts(experts::Trace{}).empty());
}

// A depth predicting at chance closes its gate once there is evidence; one that predicts well
// keeps it open; a closed gate opens again once recent predictions are right (old ones decay).
TEST(CacheRounds, LookaheadGateFollowsRecentPrecision) {
  const std::vector<int32_t> actual = {3, 9, 17, 40, 41, 77, 100, 127};  // ascending
  const std::vector<int32_t> right = {9, 3, 40, 17, 41, 127, 100, 77};
  const std::vector<int32_t> wrong = {0, 1, 2, 4, 5, 6, 7, 8};
  // Half right, the right ones scored last (the later an expert, the more it weighs).
  const std::vector<int32_t> half = {0, 1, 2, 4, 3, 9, 17, 40};

  LookaheadGate gate(0.5);
  EXPECT_TRUE(gate.Allows()) << "no evidence yet";
  // 64 of decayed evidence takes 74 scored experts (256 * (1 - d^74) >= 64).
  for (int i = 0; i < 9; ++i) gate.Record(wrong, actual);
  EXPECT_TRUE(gate.Allows()) << "72 experts scored: still below the evidence threshold";
  gate.Record(wrong, actual);
  EXPECT_FALSE(gate.Allows()) << "80 wrong predictions";
  EXPECT_EQ(gate.correct(), 0.0);

  int steps = 0;
  while (!gate.Allows() && steps < 1000) {
    gate.Record(right, actual);
    ++steps;
  }
  EXPECT_TRUE(gate.Allows());
  // The old wrong ones decay while the right ones count: open again after 61 right experts.
  EXPECT_GE(steps, 7);
  EXPECT_LE(steps, 9);

  LookaheadGate exact(0.5);
  for (int i = 0; i < 100; ++i) exact.Record(half, actual);  // precision 0.5: allowed
  EXPECT_TRUE(exact.Allows());
  LookaheadGate strict(0.9);
  for (int i = 0; i < 100; ++i) strict.Record(half, actual);
  EXPECT_FALSE(strict.Allows());
  EXPECT_NEAR(strict.correct() / strict.predicted(), 0.5, 0.05);

  LookaheadGate never(0.0);  // min_precision 0: always allowed
  for (int i = 0; i < 100; ++i) never.Record(wrong, actual);
  EXPECT_TRUE(never.Allows());
}

}  // namespace
}  // namespace moe::cuda
