// Expert cache end to end (GPU): batch-1 decode through the CUDA engine with every expert resident
// and with expert cache budgets, on a Qwen3-30B-A3B-shaped checkpoint of several GB whose routing
// follows a skewed synthetic trace.
//
// 1. Writes a checkpoint into --dir (skipped when present): Qwen3-30B-A3B expert shape (hidden
//    2048, moe_intermediate 768, 128 experts, top-8, softmax + renormalised top-k, BF16, 9 MiB per
//    expert), --layers MoE layers, uniform +-sqrt(3/fan_in) weights (moe::WriteSyntheticQwen2Moe
//    without a shared expert: the Qwen3-MoE routing function). Opened with Model::Open: the
//    experts are in the page cache, so copies come from the host tier (registered mmaps).
// 2. A synthetic trace (experts::GenerateSyntheticTrace: Zipf popularity + temporal locality, one
//    sequence) chooses each step's 8 experts per layer. Routing is made to follow it by crafting
//    each layer's input: x = c * sum_{e in chosen(L)} r_e / |r_e|^2
//    + sum_{j >= 1} beta * decay^(j-1) * c * sum_{f in chosen(L+j)} r^(L+j)_f / |r^(L+j)_f|^2
//    + N(0, sigma^2), where r^(L)_e are layer L's router rows. The first term makes layer L's
//    router pick exactly the trace's experts (checked: "routing follows the trace"); the others
//    stand in for the residual stream's similarity between layers, which is what gate-lookahead
//    prediction exploits in a real model (beta = 0: no signal, prediction is chance; decay = 0,
//    the default: a signal for the next layer only, so lookahead deeper than one layer predicts
//    at chance; decay > 0 is an assumption about a model, not a measurement of one). Inputs are
//    per layer, not chained.
// 3. For each configuration, --warmup then --tokens decode steps, each step = one EnqueueDevice
//    per layer on device-resident inputs (the all-resident engine replays its CUDA graph; the
//    cached one replays its graph of the phase before the host's decision, or launches it
//    directly in the "direct launches" rows, and spins on its residency report per layer). Reports
//    tokens/s and the ratio to all resident (same inputs), hit rate, layers whose experts were all
//    resident at the device check, demand misses, copy-wait time / copy time (copy time =
//    copy-stream busy time of the timed batches of copies), miss-path GB/s (bytes copied / copy
//    time), prefetch precision / recall per depth, host time blocked per layer (waiting for the
//    routing) and host time per EnqueueDevice, and whether the outputs are bitwise those of the
//    all-resident engine. Also the time-to-ready of each engine (Create).
// 4. What any cache could do on this trace: for each budget, Belady's MIN (demand paging, it
//    knows the whole trace) and the default policy (reuse, no prefetch) replayed by the offline
//    simulator, counted over the timed steps after the same warm-up. Each row reports its loads
//    (demand + prefetch) per token beside MIN's, and "cap": the ratio to all resident that MIN's
//    loads allow at the row's own loads per copy-busy second (every load a full expert over
//    PCIe, perfect overlap; outputs bitwise the all-resident ones rule out anything smaller).
// 5. --gap-us N emulates the attention side of a disaggregated deployment: after each MoE layer
//    the host waits for its output, then N us more (the attention's compute and the network's
//    two hops) before it enqueues the next layer, in every configuration (the all-resident one
//    too). The cache's copies and decodes go on meanwhile, so the lookahead's lead over the next
//    layer grows by N. Without it (0, the default) the layers run back to back: the strictest
//    case for the cache, as when attention and MoE share the GPU and attention takes no time.
// Prints a table and one JSON line per configuration (also to --json FILE).
//
// Usage: cache_engine_bench [--dir /tmp/moe-cache-engine-bench] [--layers 8] [--tokens 300]
//                           [--warmup 100] [--beta 0.3] [--decay 0.5] [--budgets 1,0.75,0.5]
//                           [--depths 1,2,3] [--json FILE] [--small] [--only TEXT]
//                           [--packed-slots] [--lookahead-gemm] [--lookahead-always]
//                           [--uncompressed] [--gap-us N]
//   --decay: a second group of configurations on inputs with that deeper signal (0: none).
//   --small: a tiny model (a smoke run of the code paths, not a measurement).
//   --only: only the configuration named TEXT, or those of a list "A|B|C" (the all-resident ones
//     always run), e.g. for a timeline of one configuration (tools/device/cache_timeline.py).
//   --packed-slots: every cached configuration with ExpertCacheOptions::pack_slots on (A/B).
//   --lookahead-gemm: every cached configuration with ExpertCacheOptions::lookahead_front off
//     (the lookahead by the router GEMM and the routing kernel; A/B).
//   --lookahead-always: ExpertCacheOptions::lookahead_skips_resident off (the lookahead runs also
//     when every layer it would predict is resident; A/B).
//   --uncompressed: ExpertCacheOptions::compress_host_tier off in every cached configuration
//     (misses copy raw bytes; A/B). With it on (the default), each configuration waits for the
//     background encoder before its warm-up.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "expert_cache/bench_check.h"
#include "moe/engine/cuda_engine.h"
#include "moe/experts/cache_sim.h"
#include "moe/experts/synthetic_trace.h"
#include "moe/model/embedded.h"
#include "moe/model/model.h"

namespace moe {
namespace {

using bench::Clock;
using bench::Seconds;

#define CHECK_CUDA(expr) MOE_BENCH_CHECK_CUDA(expr)
#define CHECK_OK(expr) MOE_BENCH_CHECK_OK(expr)

struct Args {
  std::string dir = "/tmp/moe-cache-engine-bench";
  std::string json;
  int layers = 8;
  int tokens = 300;
  int warmup = 100;
  double beta = 0.3;
  double decay = 0.5;
  std::vector<double> budgets = {1.0, 0.75, 0.5};
  std::vector<int> depths = {1, 2, 3};
  bool small = false;
  // Run only the configurations of these names (and the all-resident ones).
  std::vector<std::string> only;
  bool packed_slots = false;      // pack_slots on in every configuration
  bool lookahead_gemm = false;    // lookahead_front off in every configuration
  bool lookahead_always = false;  // lookahead_skips_resident off in every configuration
  bool uncompressed = false;      // compress_host_tier off in every configuration
  // Emulated time between MoE layers (5. in the file comment); 0: back to back.
  int gap_us = 0;
};

// The inputs: routing signal of the next layers (see 2. in the file comment).
struct Inputs {
  double beta = 0;
  double decay = 0;
  int depth = 1;  // layers ahead that carry a signal
  bool operator==(const Inputs&) const = default;
};

struct Config {
  std::string name;
  double budget_fraction = 0;  // of all routed experts; 0 = all resident (no cache)
  bool prefetch = false;
  int depth = 1;
  bool device_check = true;
  bool warm_all = false;  // load every expert before timing (a budget of 100%)
  Inputs inputs;
  bool graphs = true;            // ExpertCacheOptions::graphs
  bool front_skips_scan = true;  // ExpertCacheOptions::front_skips_scan
  bool residency_pdl = true;     // ExpertCacheOptions::residency_pdl
  bool pack_slots = false;       // ExpertCacheOptions::pack_slots
  bool lookahead_front = true;   // ExpertCacheOptions::lookahead_front
  bool lookahead_skips = true;   // ExpertCacheOptions::lookahead_skips_resident
  bool compress = true;          // ExpertCacheOptions::compress_host_tier
};

struct Result {
  double tokens_per_s = 0;
  double create_s = 0;
  double enqueue_us = 0;  // host time per EnqueueDevice call (timed steps)
  bool bitwise = true;
  ExpertCacheStats before, after;
  bool cached = false;
};

// Crafted inputs [steps][layers][hidden] (bf16) that route as `trace` says (see the file comment).
std::vector<uint16_t> CraftInputs(const Model& model, const experts::Trace& trace, int steps,
                                  const Inputs& in, uint64_t seed) {
  const MoeSpec& spec = model.spec();
  const int h = spec.hidden, e = spec.n_experts(), nl = static_cast<int>(spec.moe_layers.size());
  // Router rows as floats, scaled by 1 / |r|^2.
  std::vector<std::vector<float>> rows(static_cast<size_t>(nl));
  for (int l = 0; l < nl; ++l) {
    const TensorView& r = model.layer(spec.moe_layers[static_cast<size_t>(l)])->router;
    auto& out = rows[static_cast<size_t>(l)];
    out.resize(static_cast<size_t>(e) * h);
    ConvertToF32(r.dtype, r.data, out.data(), out.size());
    for (int x = 0; x < e; ++x) {
      double n2 = 0;
      for (int j = 0; j < h; ++j) n2 += double(out[size_t(x) * h + j]) * out[size_t(x) * h + j];
      for (int j = 0; j < h; ++j) out[size_t(x) * h + j] /= static_cast<float>(n2);
    }
  }
  constexpr float kC = 4.0f, kSigma = 0.01f;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> noise(0.0f, kSigma);
  std::vector<uint16_t> inputs(static_cast<size_t>(steps) * nl * h);
  std::vector<float> x(static_cast<size_t>(h));
  for (int t = 0; t < steps; ++t) {
    for (int l = 0; l < nl; ++l) {
      for (float& v : x) v = noise(rng);
      auto add = [&](int layer, float scale) {
        const auto& step = trace.steps[static_cast<size_t>(t) * nl + layer];
        for (const int32_t ex : step.experts) {
          const float* r = rows[static_cast<size_t>(layer)].data() + size_t(ex) * h;
          for (int j = 0; j < h; ++j) x[j] += scale * r[j];
        }
      };
      add(l, kC);
      double scale = in.beta;
      for (int j = 1; j <= in.depth && l + j < nl && scale > 0; ++j, scale *= in.decay) {
        add(l + j, static_cast<float>(scale) * kC);
      }
      ConvertFromF32(x.data(), DType::kBF16, inputs.data() + (size_t(t) * nl + l) * h, h);
    }
  }
  return inputs;
}

// Checks with Forward (expert ids) that the resident engine routes `checks` steps as the trace.
int64_t RoutingMismatches(CudaEngine& engine, const experts::Trace& trace,
                          const std::vector<uint16_t>& inputs, int checks) {
  const MoeSpec& spec = engine.spec();
  const int h = spec.hidden, k = spec.top_k(), nl = static_cast<int>(spec.moe_layers.size());
  int64_t bad = 0;
  std::vector<uint16_t> out(static_cast<size_t>(h));
  std::vector<int32_t> ids(static_cast<size_t>(k));
  for (int t = 0; t < checks; ++t) {
    for (int l = 0; l < nl; ++l) {
      ForwardArgs a;
      a.layer = spec.moe_layers[static_cast<size_t>(l)];
      a.dtype = DType::kBF16;
      a.n_tokens = 1;
      a.input = inputs.data() + (size_t(t) * nl + l) * h;
      a.output = out.data();
      a.expert_ids = ids.data();
      CHECK_OK(engine.Forward(a));
      std::vector<int32_t> got = ids;
      std::sort(got.begin(), got.end());
      if (got != trace.steps[static_cast<size_t>(t) * nl + l].experts) ++bad;
    }
  }
  return bad;
}

// One configuration: create, warm up, time `tokens` steps; outputs of the timed steps to `out`.
struct RoutingCheck {
  const experts::Trace* trace;
  const std::vector<uint16_t>* inputs;
};

Result RunConfig(std::shared_ptr<const Model> model, const Config& c, const Args& args,
                 const void* inputs_dev, void* outputs_dev, CudaEngineOptions base,
                 const RoutingCheck* routing_check) {
  const MoeSpec& spec = model->spec();
  const int h = spec.hidden, nl = static_cast<int>(spec.moe_layers.size());
  Result r;
  CudaEngineOptions o = base;
  if (c.budget_fraction > 0) {
    const int64_t all = int64_t{spec.n_experts()} * nl;
    // Slot bytes: the host tier's layout (256-byte aligned matrices).
    const int64_t proj = int64_t{spec.moe_intermediate} * h * 2;
    const int64_t slot = 3 * ((proj + 255) / 256 * 256);
    o.expert_cache.budget_bytes =
        static_cast<int64_t>(std::llround(c.budget_fraction * static_cast<double>(all))) * slot;
    o.expert_cache.prefetch = c.prefetch;
    o.expert_cache.prefetch_depth = c.depth;
    o.expert_cache.device_residency_check = c.device_check;
    o.expert_cache.graphs = c.graphs;
    o.expert_cache.front_skips_scan = c.front_skips_scan;
    o.expert_cache.residency_pdl = c.residency_pdl;
    o.expert_cache.pack_slots = c.pack_slots;
    o.expert_cache.lookahead_front = c.lookahead_front;
    o.expert_cache.lookahead_skips_resident = c.lookahead_skips;
    o.expert_cache.compress_host_tier = c.compress;
  }
  const auto t0 = Clock::now();
  auto engine = CudaEngine::Create(model, o);
  CHECK_OK(engine.status());
  r.create_s = Seconds(t0, Clock::now());
  r.cached = c.budget_fraction > 0;
  if (r.cached && c.compress) {
    // Measure the compressed tier as it is once its background encoder is done.
    for (;;) {
      auto s = (*engine)->expert_cache_stats();
      CHECK_OK(s.status());
      if (s->compression_done) {
        std::printf(
            "compressed host tier: %lld of %lld experts encoded in %.2f s (blobs %.4f of "
            "the raw bytes)%s%s\n",
            static_cast<long long>(s->compressed_experts),
            static_cast<long long>(s->compressible_experts), s->compression_seconds,
            s->compression_ratio,
            s->compression_error.empty() ? "" : "; stopped: ", s->compression_error.c_str());
        break;
      }
      if (s->compressible_experts == 0) {
        std::printf(
            "compressed host tier: not used (packed slots, or weights the codec does not take)\n");
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  if (c.warm_all) {
    std::vector<experts::ExpertKey> all;
    for (const int layer : spec.moe_layers) {
      for (int x = 0; x < spec.n_experts(); ++x) all.push_back({layer, x});
    }
    CHECK_OK((*engine)->WarmExpertCache(all).status());
  }
  if (routing_check != nullptr) {
    const int checks = std::min(args.warmup + args.tokens, 20);
    std::printf("routing follows the trace: %lld of %d layer steps differ (beta %.2f)\n",
                static_cast<long long>(RoutingMismatches(**engine, *routing_check->trace,
                                                         *routing_check->inputs, checks)),
                checks * nl, c.inputs.beta);
  }
  cudaStream_t st = (*engine)->stream(0);
  double enqueue_s = 0;
  auto step = [&](int t, bool keep) {
    for (int l = 0; l < nl; ++l) {
      DeviceForwardArgs a;
      a.layer = spec.moe_layers[static_cast<size_t>(l)];
      a.dtype = DType::kBF16;
      a.n_tokens = 1;
      a.input = static_cast<const uint16_t*>(inputs_dev) + (size_t(t) * nl + l) * h;
      a.output =
          static_cast<uint16_t*>(outputs_dev) + (keep ? (size_t(t - args.warmup) * nl + l) * h : 0);
      const auto e0 = Clock::now();
      CHECK_OK((*engine)->EnqueueDevice(a));
      if (keep) enqueue_s += Seconds(e0, Clock::now());
      if (args.gap_us > 0) {
        // The layer's output goes back, and the next layer's input comes gap_us later.
        CHECK_CUDA(cudaStreamSynchronize(st));
        const auto until = Clock::now() + std::chrono::microseconds(args.gap_us);
        while (Clock::now() < until) {
        }
      }
    }
  };
  for (int t = 0; t < args.warmup; ++t) step(t, false);
  CHECK_CUDA(cudaStreamSynchronize(st));
  CHECK_OK((*engine)->QuiesceExpertCache());
  if (r.cached) r.before = *(*engine)->expert_cache_stats();
  const auto t1 = Clock::now();
  for (int t = args.warmup; t < args.warmup + args.tokens; ++t) step(t, true);
  CHECK_CUDA(cudaStreamSynchronize(st));
  const double s = Seconds(t1, Clock::now());
  CHECK_OK((*engine)->QuiesceExpertCache());
  if (r.cached) r.after = *(*engine)->expert_cache_stats();
  r.tokens_per_s = args.tokens / s;
  r.enqueue_us = enqueue_s * 1e6 / (double(args.tokens) * nl);
  return r;
}

// Loads per timed token of the offline simulator's replay of `trace` at `fraction` of the experts
// (no prefetch), counted after `warmup` tokens of `nl` layer steps each.
double SimLoadsPerToken(const experts::Trace& trace, double fraction, experts::SimPolicy policy,
                        int warmup, int tokens, int nl) {
  experts::SimOptions so;
  so.policy = policy;
  so.n_slots = experts::SlotsForFraction(trace.shape, fraction);
  so.count_from_step = int64_t{warmup} * nl;
  auto r = experts::SimulateTrace(trace, so);
  CHECK_OK(r.status());
  return static_cast<double>(r->counters.misses) / tokens;
}

int Main(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() { return std::string(i + 1 < argc ? argv[++i] : ""); };
    if (a == "--dir") {
      args.dir = next();
    } else if (a == "--json") {
      args.json = next();
    } else if (a == "--layers") {
      args.layers = std::stoi(next());
    } else if (a == "--tokens") {
      args.tokens = std::stoi(next());
    } else if (a == "--warmup") {
      args.warmup = std::stoi(next());
    } else if (a == "--beta") {
      args.beta = std::stod(next());
    } else if (a == "--decay") {
      args.decay = std::stod(next());
    } else if (a == "--budgets" || a == "--depths") {
      std::stringstream list(next());
      std::string item;
      if (a == "--budgets") args.budgets.clear();
      if (a == "--depths") args.depths.clear();
      while (std::getline(list, item, ',')) {
        if (a == "--budgets") args.budgets.push_back(std::stod(item));
        if (a == "--depths") args.depths.push_back(std::stoi(item));
      }
    } else if (a == "--small") {
      args.small = true;
    } else if (a == "--only") {
      std::stringstream list(next());
      std::string item;
      while (std::getline(list, item, '|')) args.only.push_back(item);
    } else if (a == "--packed-slots") {
      args.packed_slots = true;
    } else if (a == "--lookahead-gemm") {
      args.lookahead_gemm = true;
    } else if (a == "--lookahead-always") {
      args.lookahead_always = true;
    } else if (a == "--uncompressed") {
      args.uncompressed = true;
    } else if (a == "--gap-us") {
      args.gap_us = std::stoi(next());
    } else {
      std::fprintf(
          stderr,
          "usage: %s [--dir DIR] [--layers N] [--tokens N] [--warmup N] [--beta B] "
          "[--decay D] [--budgets F,F] [--depths N,N] [--json FILE] [--small] [--only TEXT] "
          "[--packed-slots] [--lookahead-gemm] [--lookahead-always] [--uncompressed] "
          "[--gap-us N]\n",
          argv[0]);
      return 2;
    }
  }
  // 1. Checkpoint.
  SyntheticModelOptions mo;
  mo.hidden = args.small ? 256 : 2048;
  mo.moe_intermediate = args.small ? 128 : 768;
  mo.n_experts = args.small ? 32 : 128;
  mo.top_k = args.small ? 4 : 8;
  mo.n_layers = args.layers;
  mo.shared_intermediate = 0;
  mo.norm_topk_prob = true;
  mo.n_shards = args.layers;
  const std::string dir =
      args.dir + (args.small ? "-small" : "") + "-L" + std::to_string(args.layers);
  auto t0 = Clock::now();
  if (!std::filesystem::exists(dir + "/config.json")) {
    CHECK_OK(WriteSyntheticQwen2Moe(mo, dir));
    std::printf("wrote %s in %.1f s\n", dir.c_str(), Seconds(t0, Clock::now()));
  }
  t0 = Clock::now();
  auto opened = Model::Open(dir);
  CHECK_OK(opened.status());
  std::shared_ptr<const Model> model = std::move(*opened);
  const MoeSpec& spec = model->spec();
  const int h = spec.hidden, nl = static_cast<int>(spec.moe_layers.size());
  std::printf(
      "model: %d MoE layers, %d experts, top-%d, hidden %d, inter %d, %.2f GiB mapped (open %.2f "
      "s)\n",
      nl, spec.n_experts(), spec.top_k(), h, spec.moe_intermediate,
      model->mapped_bytes() / 1073741824.0, Seconds(t0, Clock::now()));

  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDeviceCount(&dev) != cudaSuccess || dev == 0) {
    std::printf("no CUDA device: nothing to measure\n");
    return 0;
  }
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("card: %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
  if (args.gap_us > 0) {
    std::printf("gap between layers: each waits for the one before, then %d us more\n",
                args.gap_us);
  }

  // 2. Trace and inputs.
  const int steps = args.warmup + args.tokens;
  experts::SyntheticTraceOptions so = experts::SyntheticTraceOptions::Qwen3_30B_A3B();
  so.shape = {nl, spec.n_experts(), spec.top_k()};
  so.n_batches = steps;
  so.tokens_per_batch = 1;
  so.seed = 7;
  auto trace = experts::GenerateSyntheticTrace(so);
  CHECK_OK(trace.status());
  std::printf("trace: Zipf s=%.2f, stickiness %.2f, %d steps x %d layers\n", so.zipf_exponent,
              so.stickiness, steps, nl);

  // 4. What MIN and the default policy load on this trace, per budget.
  std::vector<std::pair<double, double>> min_loads;  // (budget fraction, MIN's loads a token)
  {
    std::vector<double> fractions = args.budgets;
    fractions.push_back(1.0);
    std::sort(fractions.begin(), fractions.end());
    fractions.erase(std::unique(fractions.begin(), fractions.end()), fractions.end());
    for (const double f : fractions) {
      const double belady =
          SimLoadsPerToken(*trace, f, experts::SimPolicy::kBelady, args.warmup, args.tokens, nl);
      const double reuse =
          SimLoadsPerToken(*trace, f, experts::SimPolicy::kReuse, args.warmup, args.tokens, nl);
      min_loads.push_back({f, belady});
      std::printf(
          "timed steps at %3.0f%%: Belady's MIN loads %.2f experts a token, reuse (simulated, no "
          "prefetch) %.2f\n",
          100 * f, belady, reuse);
    }
  }
  auto min_loads_at = [&](double f) {
    for (const auto& [fraction, loads] : min_loads) {
      if (fraction == f) return loads;
    }
    return -1.0;
  };

  // Configurations: groups of one input model each, led by the all-resident reference.
  const int max_depth = *std::max_element(args.depths.begin(), args.depths.end());
  const Inputs next_only{args.beta, 0.0, 1};
  const Inputs deeper{args.beta, args.decay, max_depth};
  auto pct = [](double f) { return std::to_string(static_cast<int>(std::lround(100 * f))) + "%"; };
  std::vector<Config> configs;
  configs.push_back({"all resident", 0, false, 1, true, false, next_only});
  configs.push_back(
      {"100% budget, prefetch off, check off", 1.0, false, 1, false, false, next_only});
  configs.push_back({"100% budget, prefetch off", 1.0, false, 1, true, false, next_only});
  configs.push_back({"100% warmed, check off", 1.0, false, 1, false, true, next_only});
  configs.push_back({"100% warmed", 1.0, false, 1, true, true, next_only});
  configs.push_back({"100% warmed, direct launches", 1.0, false, 1, true, true, next_only, false});
  configs.push_back(
      {"100% warmed, the front scans", 1.0, false, 1, true, true, next_only, true, false});
  configs.push_back({"100% warmed, residency kernel without PDL", 1.0, false, 1, true, true,
                     next_only, true, true, false});
  configs.push_back(
      {"100% warmed, packed slots", 1.0, false, 1, true, true, next_only, true, true, true, true});
  configs.push_back({"100% warmed, depth 1", 1.0, true, 1, true, true, next_only});
  for (const int d : args.depths) {
    configs.push_back(
        {"100% budget, depth " + std::to_string(d), 1.0, true, d, true, false, next_only});
  }
  for (const double b : args.budgets) {
    if (b >= 1.0) continue;
    configs.push_back({pct(b) + " budget, prefetch off", b, false, 1, true, false, next_only});
    configs.push_back(
        {pct(b) + " budget, depth 1, check off", b, true, 1, false, false, next_only});
    configs.push_back(
        {pct(b) + " budget, depth 1, direct launches", b, true, 1, true, false, next_only, false});
    for (const int d : args.depths) {
      configs.push_back(
          {pct(b) + " budget, depth " + std::to_string(d), b, true, d, true, false, next_only});
    }
  }
  if (args.decay > 0) {
    const std::string tag = ", decay " + std::to_string(args.decay).substr(0, 4);
    configs.push_back({"all resident" + tag, 0, false, 1, true, false, deeper});
    for (const double b : args.budgets) {
      for (const int d : args.depths) {
        configs.push_back({pct(b) + " budget, depth " + std::to_string(d) + tag, b, true, d, true,
                           false, deeper});
      }
    }
  }
  CudaEngineOptions base;
  base.max_batch_tokens = 64;
  const size_t per_step = size_t(nl) * h * 2;
  void* in_dev = nullptr;
  void* out_dev = nullptr;
  CHECK_CUDA(cudaMalloc(&in_dev, steps * per_step));
  CHECK_CUDA(cudaMalloc(&out_dev, args.tokens * per_step));
  std::vector<uint8_t> ref(args.tokens * per_step), got(args.tokens * per_step);
  double resident_tps = 0;
  Inputs current{-1, -1, -1};
  std::ofstream json;
  if (!args.json.empty()) json.open(args.json);
  std::printf("\n%-44s %8s %6s %6s %6s %7s %6s %6s %6s %7s %7s %7s %7s %17s %17s %17s %7s %4s\n",
              "config", "tok/s", "ratio", "hit%", "dev%", "mis/tok", "ld/tok", "MIN", "cap",
              "wait/cp", "GB/s", "rt_us", "enq_us", "prec/rec d1", "prec/rec d2", "prec/rec d3",
              "bitwise", "rnds");
  for (Config c : configs) {
    if (!args.only.empty() && c.budget_fraction > 0 &&
        std::find(args.only.begin(), args.only.end(), c.name) == args.only.end()) {
      continue;
    }
    if (args.packed_slots) c.pack_slots = true;
    if (args.lookahead_gemm) c.lookahead_front = false;
    if (args.lookahead_always) c.lookahead_skips = false;
    if (args.uncompressed) c.compress = false;
    std::vector<uint16_t> inputs;
    if (!(c.inputs == current)) {
      inputs = CraftInputs(*model, *trace, steps, c.inputs, 11);
      CHECK_CUDA(cudaMemcpy(in_dev, inputs.data(), steps * per_step, cudaMemcpyHostToDevice));
      current = c.inputs;
    }
    const RoutingCheck check{&*trace, &inputs};
    const Result r = RunConfig(model, c, args, in_dev, out_dev, base,
                               c.budget_fraction == 0 && !inputs.empty() ? &check : nullptr);
    bool bitwise = true;
    if (c.budget_fraction == 0) {
      resident_tps = r.tokens_per_s;
      CHECK_CUDA(cudaMemcpy(ref.data(), out_dev, ref.size(), cudaMemcpyDeviceToHost));
    } else {
      CHECK_CUDA(cudaMemcpy(got.data(), out_dev, got.size(), cudaMemcpyDeviceToHost));
      bitwise = got == ref;
    }
    const experts::ExpertCacheCounters d =
        experts::CountersDelta(r.after.counters, r.before.counters);
    const double copy_s = (r.after.copy_busy_ns - r.before.copy_busy_ns) * 1e-9;
    const double wait_s = d.copy_wait_ns * 1e-9;
    const uint64_t trips = r.after.host_round_trips - r.before.host_round_trips;
    const double rt_us = r.cached ? (r.after.host_wait_ns - r.before.host_wait_ns) * 1e-3 /
                                        static_cast<double>(std::max<uint64_t>(1, trips))
                                  : 0;
    const double dev_hit =
        trips ? double(r.after.device_hits - r.before.device_hits) / static_cast<double>(trips) : 0;
    // Precision / recall per depth over the timed steps.
    std::vector<std::pair<double, double>> pr(3, {0.0, 0.0});
    for (size_t i = 0; i < r.after.by_depth.size() && i < pr.size(); ++i) {
      const auto& a = r.after.by_depth[i];
      const auto& b =
          i < r.before.by_depth.size() ? r.before.by_depth[i] : ExpertCacheStats::DepthAccuracy{};
      const uint64_t pc = a.correct - b.correct, pp = a.predicted - b.predicted,
                     pa = a.actual - b.actual;
      pr[i] = {pp ? double(pc) / double(pp) : 0, pa ? double(pc) / double(pa) : 0};
    }
    auto prs = [&](size_t i) {
      char buf[32];
      if (!c.prefetch || static_cast<int>(i) >= c.depth) return std::string("-");
      std::snprintf(buf, sizeof(buf), "%.3f/%.3f", pr[i].first, pr[i].second);
      return std::string(buf);
    };
    const double miss_gbs = copy_s > 0 ? d.bytes_copied / copy_s / 1e9 : 0;
    // What crossed PCIe (compressed blobs are smaller than the slot bytes that bytes_copied
    // counts).
    const double wire_gbs =
        copy_s > 0 ? static_cast<double>(r.after.wire_bytes - r.before.wire_bytes) / copy_s / 1e9
                   : 0;
    const std::string bw = c.budget_fraction == 0 ? "ref" : (bitwise ? "yes" : "NO");
    // Loads a token, MIN's, and the ratio to all resident that MIN's loads allow at this row's
    // loads per copy-busy second (4. in the file comment; -1 where the row made no loads).
    const uint64_t loads = d.misses + d.prefetch_issued;
    const double loads_per_token = double(loads) / args.tokens;
    const double min_per_token = c.warm_all ? 0.0 : min_loads_at(c.budget_fraction);
    double cap = -1;
    if (c.budget_fraction > 0 && loads > 0 && copy_s > 0 && min_per_token >= 0) {
      const double ceiling_tps =
          min_per_token > 0 ? double(loads) / copy_s / min_per_token : resident_tps;
      cap = std::min(1.0, ceiling_tps / resident_tps);
    }
    char cap_text[16] = "-";
    if (cap >= 0) std::snprintf(cap_text, sizeof(cap_text), "%.1f%%", 100 * cap);
    std::printf(
        "%-44s %8.1f %5.1f%% %5.1f%% %5.1f%% %7.2f %6.2f %6.2f %6s %6.1f%% %7.1f %7.1f %7.1f %17s "
        "%17s %17s %7s %4llu\n",
        c.name.c_str(), r.tokens_per_s, 100.0 * r.tokens_per_s / resident_tps, 100.0 * d.HitRate(),
        100.0 * dev_hit, double(d.misses) / args.tokens, loads_per_token,
        c.budget_fraction > 0 ? min_per_token : 0.0, cap_text,
        copy_s > 0 ? 100.0 * wait_s / copy_s : 0.0, miss_gbs, rt_us, r.enqueue_us, prs(0).c_str(),
        prs(1).c_str(), prs(2).c_str(), bw.c_str(),
        static_cast<unsigned long long>(r.after.rounds - r.before.rounds));
    if (json.is_open()) {
      json << "{\"bench\":\"cache_engine\",\"card\":\"" << prop.name << "\",\"config\":\"" << c.name
           << "\",\"layers\":" << nl << ",\"tokens\":" << args.tokens
           << ",\"budget\":" << c.budget_fraction << ",\"prefetch\":" << c.prefetch
           << ",\"depth\":" << c.depth << ",\"device_check\":" << c.device_check
           << ",\"graphs\":" << c.graphs << ",\"beta\":" << c.inputs.beta
           << ",\"decay\":" << c.inputs.decay << ",\"tokens_per_s\":" << r.tokens_per_s
           << ",\"ratio_to_resident\":" << r.tokens_per_s / resident_tps
           << ",\"hit_rate\":" << d.HitRate() << ",\"device_hit_layers\":" << dev_hit
           << ",\"misses\":" << d.misses << ",\"warmup\":" << args.warmup
           << ",\"gap_us\":" << args.gap_us
           << ",\"ready_first_rounds\":" << r.after.ready_first_rounds - r.before.ready_first_rounds
           << ",\"loads_per_token\":" << loads_per_token
           << ",\"belady_loads_per_token\":" << (c.budget_fraction > 0 ? min_per_token : 0.0)
           << ",\"copy_ceiling_ratio\":" << cap << ",\"prefetch_issued\":" << d.prefetch_issued
           << ",\"prefetch_useful\":" << d.prefetch_useful << ",\"bytes_copied\":" << d.bytes_copied
           << ",\"copy_s\":" << copy_s << ",\"copy_wait_s\":" << wait_s
           << ",\"miss_path_gb_s\":" << miss_gbs << ",\"round_trip_us\":" << rt_us
           << ",\"enqueue_us\":" << r.enqueue_us << ",\"precision_d1\":" << pr[0].first
           << ",\"recall_d1\":" << pr[0].second << ",\"precision_d2\":" << pr[1].first
           << ",\"recall_d2\":" << pr[1].second << ",\"precision_d3\":" << pr[2].first
           << ",\"recall_d3\":" << pr[2].second
           << ",\"gated_predictions\":" << r.after.gated_predictions - r.before.gated_predictions
           << ",\"create_s\":" << r.create_s << ",\"lookahead_front\":" << c.lookahead_front
           << ",\"lookahead_skips_resident\":" << c.lookahead_skips
           << ",\"packed_slots\":" << c.pack_slots << ",\"compressed\":" << c.compress
           << ",\"compressed_loads\":" << r.after.compressed_loads - r.before.compressed_loads
           << ",\"wire_gb_s\":" << wire_gbs << ",\"bitwise\":\"" << bw << "\"}\n";
      json.flush();
    }
  }
  std::printf(
      "\nratio: tokens/s over all-resident; hit%%: hits (incl. in-flight) / demanded; wait/cp: "
      "time "
      "the compute stream waited on copies / copy-stream busy time; GB/s: bytes copied (demand "
      "+ prefetch) / copy busy time; dev%%: layers whose experts were all resident at the device "
      "check; rt_us: host time blocked per layer waiting for the routing; enq_us: host time per "
      "EnqueueDevice; prec/rec dN: lookahead N layers ahead vs the experts really routed; "
      "ld/tok: loads (demand + prefetch) a token; MIN: Belady's loads a token at the budget "
      "(offline, demand paging); cap: the ratio to all resident that MIN's loads allow at the "
      "row's loads per copy-busy second.\n");
  cudaFree(in_dev);
  cudaFree(out_dev);
  return 0;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) { return moe::Main(argc, argv); }
