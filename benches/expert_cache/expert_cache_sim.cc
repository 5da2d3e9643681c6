// expert_cache_sim: replays a routing trace (recorded, or synthetic for a model shape) through the
// expert cache under several eviction policies and budgets, and prints hit rates next to Belady's
// and to the hindsight-best static set ("static-opt", an upper bound for online policies on
// traces of independent steps: see include/moe/experts/cache_sim.h).
//
//   expert_cache_sim --model qwen3 --batches 2000 --budgets 0.25,0.5,0.75
//   expert_cache_sim --trace run.trace --policies lru,lfu,lru2,reuse   # a daemon's --expert-trace
//   expert_cache_sim --model mixtral --write-trace mixtral.trace
//   expert_cache_sim --model qwen3 --prefetch-recall 0.85 --prefetch-precision 0.7
//   expert_cache_sim --suite --batches 1000        # the policy table of benches/RESULTS.md
//   expert_cache_sim --model mixtral --tokens 1 --oracle-samples 256 --policies reuse,oracle
//
// A policy may carry its knob after a colon: layer-lrfu:<lambda>, lfu:<decay period in events>,
// reuse:<half-life in layer visits> (e.g. --policies layer-lrfu:0.1,lfu:100000).
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
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
  std::string policies = "layer-lru,layer-lrfu,lru,lfu,lru2,reuse,static-lru";
  double lrfu_lambda = 1.0;
  std::string write_trace;
  double prefetch_recall = 0;
  double prefetch_precision = 1;
  int64_t lfu_decay = 0;
  double reuse_half_life = moe::experts::EvictionOptions{}.reuse_half_life_visits;
  bool suite = false;
  int32_t bound_samples = 1024;
  int32_t bound_stride = 32;
  int32_t oracle_samples = 0;
};

// A policy with its options, from "name[:knob]".
struct PolicySpec {
  std::string label;
  SimPolicy policy = SimPolicy::kLayerLru;
  EvictionOptions options;
  bool step_uses = true;  // false: "<policy>/sets", the trace's token counts withheld
};

StatusOr<std::vector<PolicySpec>> ParsePolicies(const Flags& flags) {
  std::vector<PolicySpec> specs;
  for (absl::string_view item : absl::StrSplit(flags.policies, ',')) {
    PolicySpec spec;
    spec.label = std::string(item);
    if (absl::ConsumeSuffix(&item, "/sets")) spec.step_uses = false;
    spec.options.lfu_decay_period = flags.lfu_decay;
    spec.options.lrfu_lambda = flags.lrfu_lambda;
    spec.options.reuse_half_life_visits = flags.reuse_half_life;
    const std::vector<std::string> parts = absl::StrSplit(item, absl::MaxSplits(':', 1));
    MOE_ASSIGN_OR_RETURN(spec.policy, ParseSimPolicy(parts[0]));
    if (parts.size() == 2) {
      double knob = 0;
      if (!absl::SimpleAtod(parts[1], &knob) || knob < 0) {
        return absl::InvalidArgumentError(absl::StrCat("bad policy knob in '", spec.label, "'"));
      }
      switch (spec.policy) {
        case SimPolicy::kLayerLrfu:
          spec.options.lrfu_lambda = knob;
          break;
        case SimPolicy::kLfu:
          spec.options.lfu_decay_period = static_cast<int64_t>(knob);
          break;
        case SimPolicy::kReuse:
          spec.options.reuse_half_life_visits = knob;
          break;
        default:
          return absl::InvalidArgumentError(
              absl::StrCat("policy '", parts[0], "' takes no knob ('", spec.label, "')"));
      }
    }
    specs.push_back(std::move(spec));
  }
  return specs;
}

StatusOr<SyntheticTraceOptions> ModelOptions(const std::string& model) {
  if (model == "qwen3") return SyntheticTraceOptions::Qwen3_30B_A3B();
  if (model == "mixtral") return SyntheticTraceOptions::Mixtral_8x7B();
  return absl::InvalidArgumentError(absl::StrCat("unknown --model ", model));
}

// A synthetic trace and, per budget, the online bound of SyntheticTraceGenerator: the expected
// hits of the budget's most likely experts of a batch given the generator's state before it,
// over the accesses of that batch, for every stride-th batch (empty when samples is 0). The
// probabilities are Monte Carlo estimates: the sum of the largest ones is biased upward, so the
// bound errs on the safe side (less so with more samples).
// With oracle_samples > 0 it also keeps, for the oracle policy, every batch's use probabilities
// given the state before it (oracle_samples Monte Carlo samples per batch and layer).
struct BoundedTrace {
  Trace trace;
  std::vector<double> online_bound;                 // [budgets]
  std::vector<std::vector<float>> use_probability;  // [batch][key]: see SimOptions
};

StatusOr<BoundedTrace> GenerateWithBound(const SyntheticTraceOptions& options,
                                         const std::vector<double>& budgets, int32_t samples,
                                         int32_t stride, int32_t oracle_samples) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<SyntheticTraceGenerator> generator,
                       SyntheticTraceGenerator::Create(options));
  BoundedTrace out;
  out.trace.shape = options.shape;
  std::vector<double> expected_hits(budgets.size(), 0.0);
  std::vector<double> prefix;
  int64_t sampled_accesses = 0;
  // The oracle's probabilities of batch `batch` given the state before it.
  auto keep_use_probability = [&](int64_t batch) {
    const std::vector<double> p = generator->NextBatchUseProbabilities(
        oracle_samples, options.seed * 1000003 + batch + (uint64_t{1} << 40));
    out.use_probability.emplace_back(p.begin(), p.end());
  };
  for (int32_t batch = 0; batch < options.n_batches; ++batch) {
    // Every stride-th batch (the first one, cold, excepted).
    const bool sampled = samples > 0 && batch > 0 && batch % std::max(stride, 1) == 0;
    const size_t first_step = out.trace.steps.size();
    if (oracle_samples > 0) keep_use_probability(batch);
    if (sampled) {
      std::vector<double> p =
          generator->NextBatchUseProbabilities(samples, options.seed * 1000003 + batch);
      std::sort(p.rbegin(), p.rend());
      prefix.assign(p.size() + 1, 0.0);
      for (size_t i = 0; i < p.size(); ++i) prefix[i + 1] = prefix[i] + p[i];
      for (size_t b = 0; b < budgets.size(); ++b) {
        const size_t slots =
            std::min<size_t>(SlotsForFraction(options.shape, budgets[b]), p.size());
        expected_hits[b] += prefix[slots];
      }
    }
    generator->NextBatch(out.trace);
    if (sampled) {
      for (size_t i = first_step; i < out.trace.steps.size(); ++i) {
        sampled_accesses += static_cast<int64_t>(out.trace.steps[i].experts.size());
      }
    }
  }
  // The batch after the last one: the last batch's evictions rank the experts of the layers it
  // has visited by their use there.
  if (oracle_samples > 0) keep_use_probability(options.n_batches);
  const double accesses = static_cast<double>(sampled_accesses);
  if (samples <= 0) return out;
  for (double hits : expected_hits) out.online_bound.push_back(accesses > 0 ? hits / accesses : 0);
  return out;
}

StatusOr<BoundedTrace> LoadOrGenerate(const Flags& flags, std::string* description) {
  if (!flags.trace_path.empty()) {
    *description = absl::StrCat("trace ", flags.trace_path);
    MOE_ASSIGN_OR_RETURN(Trace trace, ReadTraceFile(flags.trace_path));
    return BoundedTrace{std::move(trace), {}, {}};
  }
  MOE_ASSIGN_OR_RETURN(SyntheticTraceOptions o, ModelOptions(flags.model));
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
  return GenerateWithBound(o, flags.budgets, flags.bound_samples, flags.bound_stride,
                           flags.oracle_samples);
}

// The options of one policy row (the oracle reads the trace's use probabilities).
StatusOr<SimOptions> PolicyOptions(SimOptions options, const PolicySpec& spec,
                                   const BoundedTrace& bounded) {
  options.policy = spec.policy;
  options.eviction_options = spec.options;
  options.step_uses = spec.step_uses;
  if (spec.policy == SimPolicy::kOracle) {
    if (bounded.use_probability.empty()) {
      return absl::InvalidArgumentError(
          "the oracle policy needs a synthetic trace and --oracle-samples");
    }
    const std::vector<std::vector<float>>* p = &bounded.use_probability;
    options.use_probability = [p](int64_t batch, int64_t key) {
      return static_cast<double>((*p)[static_cast<size_t>(batch)][static_cast<size_t>(key)]);
    };
  }
  return options;
}

std::string Percent(double fraction) {
  return absl::StrCat(static_cast<int>(fraction * 100 + 0.5), "%");
}

StatusOr<double> BeladyHitRate(const Trace& trace, SimOptions options) {
  options.policy = SimPolicy::kBelady;
  MOE_ASSIGN_OR_RETURN(SimResult r, SimulateTrace(trace, options));
  return r.counters.HitRate();
}

// One trace, every budget and policy: one line per (budget, policy).
Status RunOne(const Flags& flags) {
  std::string description;
  MOE_ASSIGN_OR_RETURN(BoundedTrace bounded, LoadOrGenerate(flags, &description));
  const Trace& trace = bounded.trace;
  if (!flags.write_trace.empty()) MOE_RETURN_IF_ERROR(WriteTraceFile(trace, flags.write_trace));
  MOE_ASSIGN_OR_RETURN(std::vector<PolicySpec> policies, ParsePolicies(flags));
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
  std::printf("%-7s %-6s %-14s %-9s %-10s %-10s %-9s %-10s\n", "budget", "slots", "policy",
              "hit_rate", "vs_belady", "evictions", "rounds", "loads/step");
  for (size_t b = 0; b < flags.budgets.size(); ++b) {
    const double fraction = flags.budgets[b];
    SimOptions options;
    options.n_slots = SlotsForFraction(trace.shape, fraction);
    options.prefetch = {flags.prefetch_recall, flags.prefetch_precision, flags.seed};
    // Belady first: every other policy is reported relative to it (with the same prefetch model,
    // so the ratio compares like with like).
    MOE_ASSIGN_OR_RETURN(const double belady, BeladyHitRate(trace, options));
    const double static_opt = StaticOptimalHitRate(trace, options.n_slots);
    std::printf("%-7s %-6d %-14s %-9.4f %-10.3f\n", Percent(fraction).c_str(), options.n_slots,
                "belady", belady, 1.0);
    // The bounds assume demand paging: with prefetch they do not apply.
    if (flags.prefetch_recall == 0) {
      std::printf("%-7s %-6d %-14s %-9.4f %-10.3f (hindsight-best fixed set, misses bypass)\n",
                  Percent(fraction).c_str(), options.n_slots, "static-opt", static_opt,
                  belady > 0 ? static_opt / belady : 0.0);
      if (!bounded.online_bound.empty()) {
        std::printf("%-7s %-6d %-14s %-9.4f %-10.3f (online bound: generator state oracle)\n",
                    Percent(fraction).c_str(), options.n_slots, "online-bound",
                    bounded.online_bound[b], belady > 0 ? bounded.online_bound[b] / belady : 0.0);
      }
    }
    for (const PolicySpec& spec : policies) {
      if (spec.policy == SimPolicy::kBelady) continue;
      MOE_ASSIGN_OR_RETURN(const SimOptions policy_options, PolicyOptions(options, spec, bounded));
      MOE_ASSIGN_OR_RETURN(SimResult r, SimulateTrace(trace, policy_options));
      const ExpertCacheCounters& c = r.counters;
      std::printf(
          "%-7s %-6d %-14s %-9.4f %-10.3f %-10llu %-9llu %-10.2f\n", Percent(fraction).c_str(),
          r.n_slots, spec.label.c_str(), c.HitRate(), belady > 0 ? c.HitRate() / belady : 0.0,
          static_cast<unsigned long long>(c.evictions),
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

// The policy table: shapes x batch sizes x traces x budgets, one markdown row each: Belady's hit
// rate, then every policy's hit rate as a fraction of Belady's.
Status RunSuite(const Flags& flags) {
  MOE_ASSIGN_OR_RETURN(std::vector<PolicySpec> policies, ParsePolicies(flags));
  const int32_t batches = flags.batches >= 0 ? flags.batches : 1000;
  std::printf(
      "# Synthetic traces, %d batches each, seed %llu. iid: stickiness 0, drift 0 (independent "
      "steps). local: stickiness 0.5 (each token repeats each of its previous picks at the layer "
      "with p 0.5), sequence end 0.01, drift 0.01 per batch and layer. Per-layer random "
      "popularity rankings.\n# Columns after 'belady': hit rate / Belady's. static-opt: "
      "hindsight-best fixed set (misses bypass). online-bound: expected hits of the budget's "
      "most likely experts of a batch given the generator's hidden state (%d Monte Carlo "
      "samples, every %d-th batch): no online demand-paging policy exceeds it in expectation.\n",
      batches, static_cast<unsigned long long>(flags.seed), flags.bound_samples,
      flags.bound_stride);
  std::string header = "| shape | batch | trace | budget | belady | static-opt | online-bound |";
  std::string rule = "|---|---|---|---|---|---|---|";
  for (const PolicySpec& spec : policies) {
    if (spec.policy == SimPolicy::kBelady) continue;
    absl::StrAppend(&header, " ", spec.label, " |");
    absl::StrAppend(&rule, "---|");
  }
  std::printf("%s\n%s\n", header.c_str(), rule.c_str());
  for (const std::string model : {"qwen3", "mixtral"}) {
    for (const int32_t tokens : {1, 16}) {
      for (const bool local : {false, true}) {
        for (const double zipf : {0.8, 1.0, 1.2}) {
          MOE_ASSIGN_OR_RETURN(SyntheticTraceOptions o, ModelOptions(model));
          o.n_batches = batches;
          o.tokens_per_batch = tokens;
          o.zipf_exponent = zipf;
          o.stickiness = local ? 0.5 : 0.0;
          o.sequence_end_prob = 0.01;
          o.drift_prob = local ? 0.01 : 0.0;
          o.seed = flags.seed;
          MOE_ASSIGN_OR_RETURN(BoundedTrace bounded,
                               GenerateWithBound(o, flags.budgets, flags.bound_samples,
                                                 flags.bound_stride, flags.oracle_samples));
          const Trace& trace = bounded.trace;
          for (size_t b = 0; b < flags.budgets.size(); ++b) {
            const double fraction = flags.budgets[b];
            SimOptions options;
            options.n_slots = SlotsForFraction(trace.shape, fraction);
            MOE_ASSIGN_OR_RETURN(const double belady, BeladyHitRate(trace, options));
            const double scale = belady > 0 ? 1.0 / belady : 0.0;
            std::string row = absl::StrFormat(
                "| %s | %d | %s zipf %.1f | %s | %.3f | %.3f | %.3f |", model, tokens,
                local ? "local" : "iid", zipf, Percent(fraction), belady,
                StaticOptimalHitRate(trace, options.n_slots) * scale,
                bounded.online_bound.empty() ? 0.0 : bounded.online_bound[b] * scale);
            for (const PolicySpec& spec : policies) {
              if (spec.policy == SimPolicy::kBelady) continue;
              MOE_ASSIGN_OR_RETURN(const SimOptions policy_options,
                                   PolicyOptions(options, spec, bounded));
              MOE_ASSIGN_OR_RETURN(SimResult r, SimulateTrace(trace, policy_options));
              absl::StrAppend(
                  &row, absl::StrFormat(" %.3f |", belady > 0 ? r.counters.HitRate() / belady : 0));
            }
            std::printf("%s\n", row.c_str());
            std::fflush(stdout);
          }
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe::experts

int main(int argc, char** argv) {
  moe::experts::Flags flags;
  CLI::App app{
      "Replays an expert routing trace under the expert cache's eviction policies and Belady's "
      "MIN"};
  app.add_option("--trace", flags.trace_path,
                 "routing trace file (moe-expert-trace v1, as the daemon's TraceRecorder writes)");
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
                 "comma-separated: layer-lru,layer-lrfu[:lambda],lru,lfu[:decay],lru2,"
                 "reuse[:half-life],static-lru,arc,oracle (with --oracle-samples)");
  app.add_option("--write-trace", flags.write_trace, "also write the trace to this file");
  app.add_option("--prefetch-recall", flags.prefetch_recall, "gate-lookahead model recall (0=off)");
  app.add_option("--prefetch-precision", flags.prefetch_precision, "gate-lookahead precision");
  app.add_option("--lfu-decay", flags.lfu_decay, "LFU: halve counts every N events (0=never)");
  app.add_option("--lrfu-lambda", flags.lrfu_lambda, "layer-lrfu: decay per layer visit");
  app.add_option("--reuse-half-life", flags.reuse_half_life,
                 "reuse: half-life of use counts in layer visits");
  app.add_option("--bound-samples", flags.bound_samples,
                 "synthetic: Monte Carlo samples per batch and layer of the online bound (0=off)");
  app.add_option("--bound-stride", flags.bound_stride,
                 "synthetic: the online bound samples every N-th batch");
  app.add_option("--oracle-samples", flags.oracle_samples,
                 "synthetic: Monte Carlo samples per batch and layer of the oracle policy's use "
                 "probabilities (0=off; the oracle knows the generator's hidden state)");
  app.add_flag("--suite", flags.suite,
               "the policy table: qwen3 and mixtral shapes, batch 1 and 16, iid and local "
               "traces at zipf 0.8/1.0/1.2, each budget");
  CLI11_PARSE(app, argc, argv);
  const moe::Status status =
      flags.suite ? moe::experts::RunSuite(flags) : moe::experts::RunOne(flags);
  if (!status.ok()) {
    std::fprintf(stderr, "expert_cache_sim: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
