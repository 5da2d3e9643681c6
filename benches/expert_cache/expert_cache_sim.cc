// expert_cache_sim: replays a routing trace (recorded, or synthetic for a model shape) through the
// expert cache under several eviction policies and budgets, and prints hit rates next to Belady's.
//
//   expert_cache_sim --model qwen3 --batches 2000 --budgets 0.25,0.5,0.75
//   expert_cache_sim --trace run.trace --policies lru,lfu,lru2,belady
//   expert_cache_sim --model mixtral --write-trace mixtral.trace
//   expert_cache_sim --model qwen3 --prefetch-recall 0.85 --prefetch-precision 0.7
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_split.h"
#include "moe/experts/cache_sim.h"
#include "moe/experts/synthetic_trace.h"
#include "moe/experts/trace.h"

namespace moe::experts {
namespace {

struct Flags {
  std::string trace_path;
  std::string model = "qwen3";
  int32_t batches = -1;
  int32_t tokens = -1;
  double zipf = -1;
  double stickiness = -1;
  double sequence_end = -1;
  double drift = -1;
  uint64_t seed = 1;
  std::vector<double> budgets = {0.25, 0.5, 0.75};
  std::string policies = "layer-lru,layer-lrfu,lru,lfu,lru2,belady";
  double lrfu_lambda = 1.0;
  std::string write_trace;
  double prefetch_recall = 0;
  double prefetch_precision = 1;
  int64_t lfu_decay = 0;
};

StatusOr<Trace> LoadOrGenerate(const Flags& flags, std::string* description) {
  if (!flags.trace_path.empty()) {
    *description = absl::StrCat("trace ", flags.trace_path);
    return ReadTraceFile(flags.trace_path);
  }
  SyntheticTraceOptions o;
  if (flags.model == "qwen3") {
    o = SyntheticTraceOptions::Qwen3_30B_A3B();
  } else if (flags.model == "mixtral") {
    o = SyntheticTraceOptions::Mixtral_8x7B();
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown --model ", flags.model));
  }
  if (flags.batches >= 0) o.n_batches = flags.batches;
  if (flags.tokens > 0) o.tokens_per_batch = flags.tokens;
  if (flags.zipf >= 0) o.zipf_exponent = flags.zipf;
  if (flags.stickiness >= 0) o.stickiness = flags.stickiness;
  if (flags.sequence_end >= 0) o.sequence_end_prob = flags.sequence_end;
  if (flags.drift >= 0) o.drift_prob = flags.drift;
  o.seed = flags.seed;
  *description = absl::StrCat("synthetic ", flags.model, ": ", o.n_batches, " batches x ",
                              o.tokens_per_batch, " tokens, zipf ", o.zipf_exponent,
                              ", stickiness ", o.stickiness, ", sequence end ", o.sequence_end_prob,
                              ", drift ", o.drift_prob, ", seed ", o.seed);
  return GenerateSyntheticTrace(o);
}

Status Run(const Flags& flags) {
  std::string description;
  MOE_ASSIGN_OR_RETURN(Trace trace, LoadOrGenerate(flags, &description));
  if (!flags.write_trace.empty()) MOE_RETURN_IF_ERROR(WriteTraceFile(trace, flags.write_trace));
  std::vector<SimPolicy> policies;
  for (absl::string_view name : absl::StrSplit(flags.policies, ',')) {
    MOE_ASSIGN_OR_RETURN(SimPolicy p, ParseSimPolicy(std::string(name)));
    policies.push_back(p);
  }
  std::printf(
      "# %s\n# shape: %d layers x %d experts, top-%d; %zu steps, %lld expert accesses "
      "(%.1f distinct experts per step)\n",
      description.c_str(), trace.shape.n_layers, trace.shape.n_experts, trace.shape.top_k,
      trace.steps.size(), static_cast<long long>(trace.Accesses()),
      trace.steps.empty() ? 0.0 : double(trace.Accesses()) / trace.steps.size());
  if (flags.prefetch_recall > 0) {
    std::printf("# prefetch model: recall %.2f, precision %.2f\n", flags.prefetch_recall,
                flags.prefetch_precision);
  }
  std::printf("%-7s %-6s %-10s %-9s %-10s %-10s %-9s %-10s\n", "budget", "slots", "policy",
              "hit_rate", "vs_belady", "evictions", "rounds", "loads/step");
  for (double fraction : flags.budgets) {
    SimOptions options;
    options.n_slots = SlotsForFraction(trace.shape, fraction);
    options.eviction_options.lfu_decay_period = flags.lfu_decay;
    options.eviction_options.lrfu_lambda = flags.lrfu_lambda;
    options.prefetch = {flags.prefetch_recall, flags.prefetch_precision, flags.seed};
    // Belady first: every other policy is reported relative to it (with the same prefetch model,
    // so the ratio compares like with like).
    double belady = 0;
    {
      SimOptions b = options;
      b.policy = SimPolicy::kBelady;
      MOE_ASSIGN_OR_RETURN(SimResult r, SimulateTrace(trace, b));
      belady = r.counters.HitRate();
    }
    for (SimPolicy policy : policies) {
      options.policy = policy;
      MOE_ASSIGN_OR_RETURN(SimResult r, SimulateTrace(trace, options));
      const ExpertCacheCounters& c = r.counters;
      std::printf(
          "%-7s %-6d %-10s %-9.4f %-10.3f %-10llu %-9llu %-10.2f\n",
          absl::StrCat(static_cast<int>(fraction * 100 + 0.5), "%").c_str(), r.n_slots,
          std::string(SimPolicyName(policy)).c_str(), c.HitRate(),
          belady > 0 ? c.HitRate() / belady : 0.0, static_cast<unsigned long long>(c.evictions),
          static_cast<unsigned long long>(c.deferred_rounds),
          trace.steps.empty() ? 0.0 : double(c.misses + c.prefetch_issued) / trace.steps.size());
      if (flags.prefetch_recall > 0) {
        std::printf(
            "        prefetch: issued %llu, useful %llu, wasted %llu; predictor "
            "precision %.3f recall %.3f\n",
            static_cast<unsigned long long>(c.prefetch_issued),
            static_cast<unsigned long long>(c.prefetch_useful),
            static_cast<unsigned long long>(c.prefetch_wasted), r.prediction_precision,
            r.prediction_recall);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe::experts

int main(int argc, char** argv) {
  moe::experts::Flags flags;
  CLI::App app{"Replays an expert routing trace under layer-LRU, LRU, LFU, LRU-2 and Belady's MIN"};
  app.add_option("--trace", flags.trace_path, "routing trace file (moe-expert-trace v1)");
  app.add_option("--model", flags.model, "synthetic trace shape: qwen3 or mixtral");
  app.add_option("--batches", flags.batches, "synthetic: batches");
  app.add_option("--tokens", flags.tokens, "synthetic: tokens (sequences) per batch");
  app.add_option("--zipf", flags.zipf, "synthetic: Zipf exponent of expert popularity");
  app.add_option("--stickiness", flags.stickiness, "synthetic: P(a pick repeats the last one)");
  app.add_option("--sequence-end", flags.sequence_end, "synthetic: P(sequence ends) per batch");
  app.add_option("--drift", flags.drift, "synthetic: P(popularity swap) per batch and layer");
  app.add_option("--seed", flags.seed, "synthetic and prefetch model seed");
  app.add_option("--budgets", flags.budgets, "cache sizes as fractions of all experts")
      ->delimiter(',');
  app.add_option("--policies", flags.policies,
                 "comma-separated: layer-lru,layer-lrfu,lru,lfu,lru2,belady");
  app.add_option("--write-trace", flags.write_trace, "also write the trace to this file");
  app.add_option("--prefetch-recall", flags.prefetch_recall, "gate-lookahead model recall (0=off)");
  app.add_option("--prefetch-precision", flags.prefetch_precision, "gate-lookahead precision");
  app.add_option("--lfu-decay", flags.lfu_decay, "LFU: halve counts every N events (0=never)");
  app.add_option("--lrfu-lambda", flags.lrfu_lambda, "layer-lrfu: decay per layer visit");
  CLI11_PARSE(app, argc, argv);
  const moe::Status status = moe::experts::Run(flags);
  if (!status.ok()) {
    std::fprintf(stderr, "expert_cache_sim: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
