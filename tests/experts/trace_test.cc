// Routing trace format, recorder and synthetic generator.
#include "moe/experts/trace.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <sstream>
#include <thread>

#include "moe/experts/synthetic_trace.h"

namespace moe::experts {
namespace {

Trace SmallTrace() {
  Trace t;
  t.shape = {3, 16, 2};
  t.steps = {{0, 0, {3, 1}}, {0, 1, {15}}, {0, 2, {0, 7, 9}}, {1, 0, {1, 2}}};
  return t;
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          (name + "." + std::to_string(::getpid()) + ".trace"))
      .string();
}

TEST(Trace, WritesAndReadsBack) {
  const Trace t = SmallTrace();
  std::stringstream text;
  ASSERT_TRUE(WriteTrace(t, text).ok());
  EXPECT_EQ(text.str(), "moe-expert-trace v1\nshape 3 16 2\n0 0 3 1\n0 1 15\n0 2 0 7 9\n1 0 1 2\n");
  auto back = ReadTrace(text);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->shape.n_layers, 3);
  EXPECT_EQ(back->shape.n_experts, 16);
  EXPECT_EQ(back->shape.top_k, 2);
  ASSERT_EQ(back->steps.size(), t.steps.size());
  for (size_t i = 0; i < t.steps.size(); ++i) {
    EXPECT_EQ(back->steps[i].batch, t.steps[i].batch);
    EXPECT_EQ(back->steps[i].layer, t.steps[i].layer);
    EXPECT_EQ(back->steps[i].experts, t.steps[i].experts);
  }
  EXPECT_EQ(back->Accesses(), 8);
}

TEST(Trace, ReadSkipsCommentsAndBlankLines) {
  std::istringstream in("# recorded by test\nmoe-expert-trace v1\n\nshape 2 4 1\n# x\n5 1 3\n");
  auto t = ReadTrace(in);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->steps.size(), 1u);
  EXPECT_EQ(t->steps[0].batch, 5);
  EXPECT_EQ(t->steps[0].experts, std::vector<int32_t>{3});
}

TEST(Trace, ReadRejectsMalformedInputWithLineNumbers) {
  const std::string header = "moe-expert-trace v1\nshape 2 4 1\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"moe-expert-trace v2\n", "line 1"},
      {"moe-expert-trace v1\nshape 2 4\n", "line 2"},
      {"moe-expert-trace v1\nshape 2 4 5\n", "line 2"},  // top_k > n_experts
      {header + "0 0 4\n", "line 3"},                    // expert out of range
      {header + "0 2 1\n", "line 3"},                    // layer out of range
      {header + "0 0 1 1\n", "line 3"},                  // repeated expert
      {header + "0 0\n", "line 3"},                      // no experts
      {header + "0 0 1 x\n", "line 3"},                  // not an integer
      {header + "1 0 1\n0 1 1\n", "line 4"},             // batch goes backwards
      {"", "missing header"},
  };
  for (const auto& [text, where] : cases) {
    std::istringstream in(text);
    auto t = ReadTrace(in);
    ASSERT_FALSE(t.ok()) << text;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(std::string(t.status().message()).find(where), std::string::npos)
        << text << " -> " << t.status();
  }
}

TEST(Trace, ValidateNamesTheBadStep) {
  Trace t = SmallTrace();
  t.steps[2].experts.push_back(16);
  const Status s = t.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("step 2"), std::string::npos) << s;
  std::stringstream out;
  EXPECT_FALSE(WriteTrace(t, out).ok());
}

TEST(Trace, ValidateChecksTheUsesOfAStep) {
  Trace t = SmallTrace();
  t.steps[1].uses.assign(t.steps[1].experts.size(), 2);
  EXPECT_TRUE(t.Validate().ok());
  t.steps[1].uses.push_back(1);  // one more than experts
  EXPECT_EQ(t.Validate().code(), absl::StatusCode::kInvalidArgument);
  t.steps[1].uses.assign(t.steps[1].experts.size(), 0);  // no token
  EXPECT_EQ(t.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TraceRecorder, WritesAReadableFileFromSeveralThreads) {
  const std::string path = TempPath("recorder");
  auto recorder = TraceRecorder::Create({path, {4, 8, 2}});
  ASSERT_TRUE(recorder.ok()) << recorder.status();
  EXPECT_EQ((*recorder)->Record(0, 4, std::vector<int32_t>{1}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*recorder)->Record(0, 0, std::vector<int32_t>{8}).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<std::thread> threads;
  for (int32_t layer = 0; layer < 4; ++layer) {
    threads.emplace_back([&, layer] {
      for (int i = 0; i < 50; ++i) {
        // Duplicates are dropped; batch numbers are all 0 so any interleaving is a valid trace.
        ASSERT_TRUE((*recorder)->Record(0, layer, std::vector<int32_t>{i % 8, i % 8, 7}).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_TRUE((*recorder)->Flush().ok());
  auto trace = ReadTraceFile(path);
  ASSERT_TRUE(trace.ok()) << trace.status();
  EXPECT_EQ(trace->steps.size(), 200u);
  std::vector<int> per_layer(4, 0);
  for (const TraceStep& step : trace->steps) {
    ++per_layer[step.layer];
    // {i % 8, i % 8, 7} was recorded as {i % 8, 7}, or {7} when i % 8 == 7.
    ASSERT_LE(step.experts.size(), 2u);
    EXPECT_EQ(step.experts.back(), 7);
    if (step.experts.size() == 2) {
      EXPECT_NE(step.experts.front(), 7);
    }
  }
  EXPECT_EQ(per_layer, (std::vector<int>{50, 50, 50, 50}));
  std::remove(path.c_str());
  EXPECT_EQ(ReadTraceFile(path).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(TraceRecorder::Create({"/nonexistent-dir/x.trace", {4, 8, 2}}).ok());
}

TEST(SyntheticTrace, HasTheModelShapeAndIsDeterministic) {
  SyntheticTraceOptions o = SyntheticTraceOptions::Qwen3_30B_A3B();
  EXPECT_EQ(o.shape.n_layers, 48);
  EXPECT_EQ(o.shape.n_experts, 128);
  EXPECT_EQ(o.shape.top_k, 8);
  o.n_batches = 20;
  auto a = GenerateSyntheticTrace(o);
  auto b = GenerateSyntheticTrace(o);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(a->Validate().ok());
  ASSERT_EQ(a->steps.size(), 20u * 48u);
  for (size_t i = 0; i < a->steps.size(); ++i) {
    const TraceStep& s = a->steps[i];
    EXPECT_EQ(s.batch, static_cast<int64_t>(i / 48));
    EXPECT_EQ(s.layer, static_cast<int32_t>(i % 48));
    EXPECT_GE(s.experts.size(), 8u);
    EXPECT_LE(s.experts.size(), static_cast<size_t>(8 * o.tokens_per_batch));
    EXPECT_TRUE(std::is_sorted(s.experts.begin(), s.experts.end()));
    EXPECT_EQ(s.experts, b->steps[i].experts);
    // Every token's top_k picks, counted per expert.
    ASSERT_EQ(s.uses.size(), s.experts.size());
    EXPECT_EQ(std::accumulate(s.uses.begin(), s.uses.end(), 0), 8 * o.tokens_per_batch);
  }
  o.seed = 2;
  auto c = GenerateSyntheticTrace(o);
  ASSERT_TRUE(c.ok());
  int differ = 0;
  for (size_t i = 0; i < c->steps.size(); ++i) differ += c->steps[i].experts != a->steps[i].experts;
  EXPECT_GT(differ, 0);

  const SyntheticTraceOptions m = SyntheticTraceOptions::Mixtral_8x7B();
  EXPECT_EQ(m.shape.n_layers, 32);
  EXPECT_EQ(m.shape.n_experts, 8);
  EXPECT_EQ(m.shape.top_k, 2);
}

TEST(SyntheticTrace, SkewAndStickinessShowInTheCounts) {
  SyntheticTraceOptions o;
  o.shape = {1, 64, 2};
  o.n_batches = 2000;
  o.tokens_per_batch = 1;
  o.drift_prob = 0;
  o.stickiness = 0;
  o.zipf_exponent = 1.2;
  auto skewed = GenerateSyntheticTrace(o);
  ASSERT_TRUE(skewed.ok());
  std::vector<int> count(64, 0);
  for (const TraceStep& s : skewed->steps) {
    for (int32_t e : s.experts) ++count[e];
  }
  std::sort(count.rbegin(), count.rend());
  // Zipf(1.2): the top expert is drawn far more often than the median one.
  EXPECT_GT(count[0], 10 * std::max(count[32], 1));

  // Full stickiness with no sequence ends: every batch repeats the first one.
  o.stickiness = 1;
  o.sequence_end_prob = 0;
  auto sticky = GenerateSyntheticTrace(o);
  ASSERT_TRUE(sticky.ok());
  for (const TraceStep& s : sticky->steps) EXPECT_EQ(s.experts, sticky->steps[0].experts);

  o.stickiness = 1.5;
  EXPECT_EQ(GenerateSyntheticTrace(o).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moe::experts
