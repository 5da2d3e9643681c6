// moe-engine-bench: the CPU engine alone on one MoE layer, at batch sizes 1..512 (default), so a
// serving run can be compared with the engine at the batch size it achieved (moe-loadgen
// --engine-baseline reads --json-out).
//
//   moe-engine-bench --batch-sizes 1,2,4,8,16,32,64,128,256,512 --json-out engine.jsonl
//
// Inputs: random rows, each forward a batch from a random offset of a pool of
// max(4 * max batch, 4096) rows, so the experts chosen change from forward to forward as they do
// in serving. Per batch size: 2 warm-up forwards, then forwards until --min-time-ms has passed (at
// least
// --min-iters), each timed alone; reports the median (us_per_forward), min and p90, the
// throughput (slots * tokens / median, and tokens over the wall time) and GFLOP/s
// (CpuEngine::FlopsPerForward). With --slots N, N threads drive the N engine slots at once, as
// the daemon's swarm workers do (`moe-swarm serve` uses 2 CPU slots by default): one slot gives
// the engine's latency for a lone batch, the daemon's slot count its throughput.
// Model: --model DIR (a Hugging Face checkpoint), else the embedded model generated into
// --cache-dir (default $MOE_CACHE_DIR, see moe/model/embedded.h).
#include <algorithm>
#include <barrier>
#include <chrono>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "moe/engine/cpu_engine.h"
#include "moe/model/embedded.h"
#include "moe/model/model.h"
#include "nlohmann/json.hpp"
#include "stats.h"

namespace moe::loadgen {
namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  std::string model_dir;
  std::string cache_dir;
  int layer = -1;
  std::string dtype = "bf16";
  int threads = 0;
  int slots = 1;
  std::string gemm = "fixed";
  std::string batch_sizes = "1,2,4,8,16,32,64,128,256,512";
  double min_time_ms = 300;
  int min_iters = 5;
  uint64_t seed = 1;
  std::string json_out;
};

StatusOr<std::vector<int64_t>> ParseSizes(const std::string& s) {
  std::vector<int64_t> sizes;
  for (absl::string_view item : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int64_t n = 0;
    if (!absl::SimpleAtoi(item, &n) || n < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--batch-sizes: '", std::string(item), "' is not a positive integer"));
    }
    sizes.push_back(n);
  }
  if (sizes.empty()) return absl::InvalidArgumentError("--batch-sizes: empty");
  return sizes;
}

StatusOr<DType> ParseDType(const std::string& s) {
  if (s == "bf16") return DType::kBF16;
  if (s == "f16") return DType::kF16;
  if (s == "f32") return DType::kF32;
  return absl::InvalidArgumentError(absl::StrCat("--dtype '", s, "': expected bf16, f16 or f32"));
}

// Random hidden states [rows, hidden] in the activation dtype.
struct InputPool {
  const char* data = nullptr;
  int64_t rows = 0;
  size_t row_bytes = 0;
  // n consecutive rows from a random start.
  const char* Batch(int64_t n, std::mt19937_64& rng) const {
    const int64_t first = std::uniform_int_distribution<int64_t>(0, rows - n)(rng);
    return data + static_cast<size_t>(first) * row_bytes;
  }
};

// Per-forward times of one batch size over all slots, and the wall time they took together.
struct SizeTiming {
  std::vector<double> us;
  double wall_s = 0;
};

// Drives every slot with its own thread at once: 2 warm-up forwards, then forwards until
// --min-time-ms has passed and each slot did --min-iters.
StatusOr<SizeTiming> TimeBatch(CpuEngine& engine, const ForwardArgs& base, const InputPool& pool,
                               std::vector<std::vector<char>>& outputs, const Flags& f) {
  const int slots = static_cast<int>(outputs.size());
  std::vector<std::vector<double>> times(static_cast<size_t>(slots));
  std::vector<Status> errors(static_cast<size_t>(slots));
  Clock::time_point begin;
  // All slots start measuring together; the barrier's completion sets the clock.
  std::barrier start(slots, [&begin]() noexcept { begin = Clock::now(); });
  auto run_slot = [&](int slot) {
    ForwardArgs args = base;
    args.slot = slot;
    std::mt19937_64 rng(f.seed + 1000 + static_cast<uint64_t>(slot));
    args.input = pool.Batch(args.n_tokens, rng);
    args.output = outputs[static_cast<size_t>(slot)].data();
    Status& error = errors[static_cast<size_t>(slot)];
    for (int i = 0; i < 2 && error.ok(); ++i) error = engine.Forward(args);
    start.arrive_and_wait();
    std::vector<double>& us = times[static_cast<size_t>(slot)];
    while (error.ok() && (static_cast<int>(us.size()) < f.min_iters ||
                          std::chrono::duration<double, std::milli>(Clock::now() - begin).count() <
                              f.min_time_ms)) {
      args.input = pool.Batch(args.n_tokens, rng);
      const Clock::time_point t0 = Clock::now();
      error = engine.Forward(args);
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      if (us.size() >= 100000) break;
    }
  };
  std::vector<std::thread> threads;
  for (int s = 1; s < slots; ++s) threads.emplace_back(run_slot, s);
  run_slot(0);
  for (std::thread& t : threads) t.join();
  SizeTiming out;
  out.wall_s = std::chrono::duration<double>(Clock::now() - begin).count();
  for (int s = 0; s < slots; ++s) {
    MOE_RETURN_IF_ERROR(errors[static_cast<size_t>(s)]);
    out.us.insert(out.us.end(), times[static_cast<size_t>(s)].begin(),
                  times[static_cast<size_t>(s)].end());
  }
  return out;
}

Status Main(const Flags& f) {
  MOE_ASSIGN_OR_RETURN(std::vector<int64_t> sizes, ParseSizes(f.batch_sizes));
  MOE_ASSIGN_OR_RETURN(DType dtype, ParseDType(f.dtype));
  CpuEngineOptions options;
  options.num_threads = f.threads;
  if (f.slots < 1) return absl::InvalidArgumentError("--slots must be >= 1");
  options.num_slots = f.slots;
  options.max_batch_tokens = *std::max_element(sizes.begin(), sizes.end());
  if (f.gemm == "fixed") {
    options.gemm = CpuEngineOptions::GemmBackend::kFixedOrder;
  } else if (f.gemm == "openblas") {
    options.gemm = CpuEngineOptions::GemmBackend::kOpenBlas;
  } else {
    return absl::InvalidArgumentError("--gemm: expected fixed or openblas");
  }

  std::string dir = f.model_dir;
  if (dir.empty()) {
    MOE_ASSIGN_OR_RETURN(dir, EnsureEmbeddedModel(f.cache_dir));
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Model> opened, Model::Open(dir));
  std::shared_ptr<const Model> model = std::move(opened);
  const MoeSpec& spec = model->spec();
  const int layer = f.layer >= 0 ? f.layer : spec.moe_layers.at(0);
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<CpuEngine> engine, CpuEngine::Create(model, options));

  const int64_t max_n = options.max_batch_tokens;
  // A pool of random rows; every forward takes a batch starting at a random row, so successive
  // forwards route to different experts (a fixed input would keep the same few experts' weights
  // hot in cache and flatter small batches).
  const int64_t pool_rows = std::max<int64_t>(4 * max_n, 4096);
  const size_t row_bytes = static_cast<size_t>(spec.hidden) * DTypeSize(dtype);
  std::vector<float> values(static_cast<size_t>(pool_rows) * static_cast<size_t>(spec.hidden));
  std::mt19937_64 rng(f.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : values) v = normal(rng);
  std::vector<char> input(values.size() * DTypeSize(dtype));
  ConvertFromF32(values.data(), dtype, input.data(), values.size());
  const InputPool pool{input.data(), pool_rows, row_bytes};
  std::vector<std::vector<char>> outputs(static_cast<size_t>(f.slots),
                                         std::vector<char>(static_cast<size_t>(max_n) * row_bytes));

  std::cout << absl::StrFormat(
      "moe-engine-bench  engine=cpu gemm=%s threads=%d slots=%d model=%s layer=%d dtype=%s "
      "hidden=%d "
      "experts=%d top_k=%d (hardware threads %u)\n",
      f.gemm, engine->num_threads(), f.slots, dir, layer, f.dtype, spec.hidden, spec.n_experts(),
      spec.top_k(), std::thread::hardware_concurrency());
  std::cout << absl::StrFormat("%8s %12s %12s %12s %8s %14s %10s\n", "tokens", "median_us",
                               "min_us", "p90_us", "iters", "tokens/s", "GFLOP/s");
  std::ofstream json;
  if (!f.json_out.empty()) {
    json.open(f.json_out, std::ios::trunc);
    if (!json) return absl::UnavailableError(absl::StrCat("cannot write ", f.json_out));
  }
  for (int64_t n : sizes) {
    ForwardArgs args;
    args.layer = layer;
    args.dtype = dtype;
    args.n_tokens = n;
    MOE_ASSIGN_OR_RETURN(SizeTiming t, TimeBatch(*engine, args, pool, outputs, f));
    std::vector<double>& us = t.us;
    std::sort(us.begin(), us.end());
    const double median = PercentileOfSorted(us, 50);
    const double p90 = PercentileOfSorted(us, 90);
    // Steady state: every slot completes one forward per median time.
    const double tokens_per_s = f.slots * static_cast<double>(n) / (median * 1e-6);
    const double tokens_per_s_wall =
        static_cast<double>(n) * static_cast<double>(us.size()) / t.wall_s;
    const double gflops = f.slots * engine->FlopsPerForward(n) / (median * 1e-6) * 1e-9;
    std::cout << absl::StrFormat("%8d %12.1f %12.1f %12.1f %8d %14.1f %10.2f\n", n, median,
                                 us.front(), p90, us.size(), tokens_per_s, gflops);
    if (json.is_open()) {
      nlohmann::json j = {{"bench", "engine"},
                          {"engine", "cpu"},
                          {"gemm", f.gemm},
                          {"threads", engine->num_threads()},
                          {"slots", f.slots},
                          {"layer", layer},
                          {"dtype", f.dtype},
                          {"batch_tokens", n},
                          {"us_per_forward", median},
                          {"us_min", us.front()},
                          {"us_p90", p90},
                          {"iterations", us.size()},
                          {"tokens_per_s", tokens_per_s},
                          {"tokens_per_s_wall", tokens_per_s_wall},
                          {"gflops", gflops}};
      json << j.dump() << "\n";
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe::loadgen

int main(int argc, char** argv) {
  moe::loadgen::Flags f;
  CLI::App app{"moe-engine-bench: the CPU engine alone, time per forward by batch size"};
  app.add_option("--model", f.model_dir, "Hugging Face checkpoint dir (default: embedded model)");
  app.add_option("--cache-dir", f.cache_dir, "where the embedded model is generated");
  app.add_option("--layer", f.layer, "MoE layer (-1 = first)")->capture_default_str();
  app.add_option("--dtype", f.dtype, "activations: bf16 | f16 | f32")->capture_default_str();
  app.add_option("--threads", f.threads, "engine threads (0 = every core)")->capture_default_str();
  app.add_option("--slots", f.slots,
                 "engine slots, each driven by its own thread at once (the daemon's engine.slots)")
      ->capture_default_str();
  app.add_option("--gemm", f.gemm, "fixed | openblas")->capture_default_str();
  app.add_option("--batch-sizes", f.batch_sizes, "comma-separated token counts")
      ->capture_default_str();
  app.add_option("--min-time-ms", f.min_time_ms, "time per batch size")->capture_default_str();
  app.add_option("--min-iters", f.min_iters, "forwards per batch size, at least")
      ->capture_default_str();
  app.add_option("--seed", f.seed, "random inputs")->capture_default_str();
  app.add_option("--json-out", f.json_out, "write one JSON line per batch size here");
  CLI11_PARSE(app, argc, argv);
  moe::Status s = moe::loadgen::Main(f);
  if (!s.ok()) {
    std::cerr << "moe-engine-bench: " << s << "\n";
    return 1;
  }
  return 0;
}
