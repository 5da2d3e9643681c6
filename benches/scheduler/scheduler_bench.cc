// Scheduler overhead, on a null engine (Forward copies input to output, so the scheduler is all
// that is measured):
//   BM_SubmitToEngineStart/<tokens>: at zero load (one request at a time, max_queue_delay_us = 0),
//     time from Submit() to the start of Engine::Forward (manual time, reported as the iteration
//     time), plus round_trip_us (Submit() -> completion callback) as a counter; with and without
//     borrowed_output (without it Submit() allocates and zero-fills the output buffer).
//   BM_BurstThroughput/<tokens per request>: a burst of 1024 requests submitted back to back, then
//     waited for; requests/s (items_per_second), tokens/s and the mean batch size formed.
// Runs on the CPU only (no GPU involved); report the CPU model next to the numbers.
#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "moe/scheduler/scheduler.h"

namespace moe {
namespace {

constexpr int kHidden = 2048;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

class NullEngine : public Engine {
 public:
  explicit NullEngine(int slots) : slots_(slots) {
    spec_.hidden = kHidden;
    spec_.n_layers = 1;
    spec_.moe_layers = {0};
    spec_.routing.n_experts = 8;
    spec_.routing.top_k = 2;
  }
  std::string_view name() const override { return "null"; }
  const MoeSpec& spec() const override { return spec_; }
  int num_slots() const override { return slots_; }
  int64_t max_batch_tokens() const override { return 4096; }
  Status Forward(const ForwardArgs& a) override {
    last_start_ns.store(NowNs(), std::memory_order_relaxed);
    std::memcpy(a.output, a.input, static_cast<size_t>(a.n_tokens) * kHidden * DTypeSize(a.dtype));
    return absl::OkStatus();
  }
  std::atomic<int64_t> last_start_ns{0};

 private:
  MoeSpec spec_;
  int slots_;
};

// Counts completions; Wait(n) blocks until n have arrived.
class Waiter {
 public:
  CompletionCallback Callback() {
    return [this](Response&& r) {
      if (!r.status.ok()) errors.fetch_add(1);
      std::lock_guard<std::mutex> lock(mu_);
      ++done_;
      cv_.notify_all();
    };
  }
  void Wait(int64_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_ >= n; });
  }
  std::atomic<int64_t> errors{0};

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t done_ = 0;
};

Request MakeRequest(const std::string& input, int64_t n_tokens, Waiter& waiter) {
  Request r;
  r.layer = 0;
  r.dtype = DType::kBF16;
  r.n_tokens = n_tokens;
  r.borrowed_input = input.data();
  r.done = waiter.Callback();
  return r;
}

// range(0): tokens per request; range(1): 1 = borrowed_output (no output allocation by Submit()).
void BM_SubmitToEngineStart(benchmark::State& state) {
  const int64_t n_tokens = state.range(0);
  const bool borrow_output = state.range(1) != 0;
  NullEngine engine(1);
  SchedulerOptions o;
  o.engine = &engine;
  o.max_batch_tokens = 4096;
  o.max_queue_delay_us = 0;
  auto sched = Scheduler::Create(o);
  if (!sched.ok()) {
    state.SkipWithError(std::string(sched.status().message()).c_str());
    return;
  }
  const std::string input(static_cast<size_t>(n_tokens * kHidden * 2), '\x01');
  std::string output(input.size(), '\0');
  Waiter waiter;
  int64_t done = 0;
  double round_trip_us = 0.0;
  for (auto _ : state) {
    const int64_t t0 = NowNs();
    Request r = MakeRequest(input, n_tokens, waiter);
    if (borrow_output) r.borrowed_output = output.data();
    auto id = (*sched)->Submit(std::move(r));
    if (!id.ok()) {
      state.SkipWithError(std::string(id.status().message()).c_str());
      return;
    }
    waiter.Wait(++done);
    const int64_t t1 = NowNs();
    state.SetIterationTime(static_cast<double>(engine.last_start_ns.load() - t0) * 1e-9);
    round_trip_us += static_cast<double>(t1 - t0) * 1e-3;
  }
  state.counters["round_trip_us"] = round_trip_us / static_cast<double>(state.iterations());
  state.counters["errors"] = static_cast<double>(waiter.errors.load());
}
BENCHMARK(BM_SubmitToEngineStart)
    ->ArgsProduct({{1, 64, 512}, {0, 1}})
    ->ArgNames({"tokens", "borrowed_output"})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

void BM_BurstThroughput(benchmark::State& state) {
  const int64_t n_tokens = state.range(0);
  constexpr int kBurst = 1024;
  NullEngine engine(2);
  SchedulerOptions o;
  o.engine = &engine;
  o.max_batch_tokens = 256;
  o.max_queue_delay_us = 100;
  o.max_queue_tokens = 1 << 22;
  auto sched = Scheduler::Create(o);
  if (!sched.ok()) {
    state.SkipWithError(std::string(sched.status().message()).c_str());
    return;
  }
  const std::string input(static_cast<size_t>(n_tokens * kHidden * 2), '\x01');
  Waiter waiter;
  int64_t done = 0;
  for (auto _ : state) {
    for (int i = 0; i < kBurst; ++i) {
      auto id = (*sched)->Submit(MakeRequest(input, n_tokens, waiter));
      if (!id.ok()) {
        state.SkipWithError(std::string(id.status().message()).c_str());
        return;
      }
    }
    done += kBurst;
    waiter.Wait(done);
  }
  SchedulerStats st = (*sched)->Stats();
  state.SetItemsProcessed(state.iterations() * kBurst);
  state.counters["tokens_per_s"] = benchmark::Counter(
      static_cast<double>(state.iterations() * kBurst * n_tokens), benchmark::Counter::kIsRate);
  state.counters["mean_batch_tokens"] =
      static_cast<double>(st.batched_tokens) /
      static_cast<double>(std::max<int64_t>(1, st.batches_formed));
  state.counters["errors"] = static_cast<double>(waiter.errors.load());
}
BENCHMARK(BM_BurstThroughput)->Arg(1)->Arg(16)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace moe

BENCHMARK_MAIN();
