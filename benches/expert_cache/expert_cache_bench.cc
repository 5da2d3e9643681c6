// Host-side cost of the expert cache's bookkeeping: one batch step (Acquire, MarkLoaded for the
// misses, Release) of a synthetic Qwen3-30B-A3B trace at several budgets and policies. Reports
// time per step and per demanded expert; compare with the GPU time of one MoE layer.
#include <benchmark/benchmark.h>

#include "moe/experts/cache_sim.h"
#include "moe/experts/slot_pool.h"
#include "moe/experts/synthetic_trace.h"

namespace moe::experts {
namespace {

const Trace& Qwen3Trace() {
  static const Trace* trace = [] {
    SyntheticTraceOptions o = SyntheticTraceOptions::Qwen3_30B_A3B();
    o.n_batches = 200;
    return new Trace(GenerateSyntheticTrace(o).value());
  }();
  return *trace;
}

// Args: {budget in percent of all experts, EvictionKind}.
void BM_Step(benchmark::State& state) {
  const Trace& trace = Qwen3Trace();
  ShapeClass cls;
  cls.expert_bytes = 1;
  cls.n_experts = trace.shape.n_experts;
  cls.layers.resize(trace.shape.n_layers);
  std::iota(cls.layers.begin(), cls.layers.end(), 0);
  ExpertSlotPool::Options options;
  options.budget_bytes =
      int64_t{trace.shape.n_layers} * trace.shape.n_experts * state.range(0) / 100;
  options.shape_classes = {cls};
  options.eviction = static_cast<EvictionKind>(state.range(1));
  auto pool = ExpertSlotPool::Create(options).value();

  std::vector<std::vector<ExpertKey>> steps;
  for (const TraceStep& step : trace.steps) steps.push_back(StepKeys(step));
  size_t i = 0;
  int64_t experts = 0;
  for (auto _ : state) {
    std::vector<ExpertKey> pending = steps[i];
    experts += static_cast<int64_t>(pending.size());
    while (!pending.empty()) {
      AcquireRound round = pool->Acquire(pending).value();
      for (const RoundEntry& entry : round.entries) {
        if (entry.source == SlotSource::kLoad) (void)pool->MarkLoaded(entry.slot);
      }
      (void)pool->Release(round, i);
      pending = std::move(round.deferred);
    }
    i = (i + 1) % steps.size();
  }
  state.SetItemsProcessed(experts);
  state.counters["hit_rate"] = pool->Counters().HitRate();
  state.SetLabel(std::string(EvictionKindName(options.eviction)));
}
BENCHMARK(BM_Step)
    ->ArgsProduct({{25, 50, 75}, {0, 1, 2, 3, 4, 5}})
    ->ArgNames({"budget_pct", "policy"});

}  // namespace
}  // namespace moe::experts

BENCHMARK_MAIN();
