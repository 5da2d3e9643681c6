// Host tier benchmark (GPU): what a cache miss costs, and what the daemon needs before serving.
//
// 1. Reference: pinned (cudaMallocHost) host-to-device bandwidth for 256 KiB .. 64 MiB copies, and
//    at each model's exact expert size.
// 2. Writes checkpoints of several GB into --dir (page cache; nothing is dropped): Qwen3-30B-A3B
//    experts (hidden 2048, inter 768, BF16: 9 MiB each; 4 layers x 128 = 4.5 GiB, HF name order)
//    and Mixtral-8x7B experts (4096 x 14336: 336 MiB each; 2 layers x 8 = 5.25 GiB), plus one
//    fused (gate_up_proj) Qwen3 layer.
// 3. Time-to-ready of what the host tier owns: Model::Open, then HostExpertSource::Create
//    (registration; seconds per GiB), and Create in the staging mode.
// 4. Miss path: CopyAsync of random experts into device slots, one copy stream, wall time from the
//    first enqueue to the stream's completion, GB/s and % of the pinned reference at that size:
//    registered mmaps (1 copy per expert), the same with 3 copies per expert (gate, up, down
//    separately), the fused layout (2 copies), the staging ring (4, 8 and 16 fill threads), and
//    pageable cudaMemcpyAsync out of an unregistered mapping (today's upload path).
// Prints a table and one JSON line per measurement (also to --json FILE).
//
// Usage: host_tier_bench [--dir /tmp/moe-host-tier-bench] [--json FILE] [--small]
//   --small: tiny shapes (a smoke run of the code paths, not a measurement).
#include <cuda_runtime_api.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "expert_cache/bench_check.h"
#include "experts/expert_checkpoint.h"
#include "moe/experts/host_tier.h"

namespace moe::experts {
namespace {

using bench::Clock;
using bench::Seconds;
using testing::ExpertCheckpointOptions;
using testing::ExpertFileLayout;

#define CHECK_CUDA(expr) MOE_BENCH_CHECK_CUDA(expr)
#define CHECK_OK(expr) MOE_BENCH_CHECK_OK(expr)

class Report {
 public:
  explicit Report(const std::string& json_path) {
    if (!json_path.empty()) json_.open(json_path);
  }
  void Line(const std::string& json) {
    std::printf("JSON %s\n", json.c_str());
    if (json_.is_open()) json_ << json << "\n";
  }

 private:
  std::ofstream json_;
};

std::string Fmt(const char* f, auto... args) {
  char buf[1024];
  std::snprintf(buf, sizeof(buf), f, args...);
  return buf;
}

// Pinned host -> device: `reps` copies of `bytes` from one pinned buffer; GB/s (1e9 bytes/s).
double PinnedBandwidth(int64_t bytes, int reps, cudaStream_t stream) {
  void* host = nullptr;
  void* dev = nullptr;
  CHECK_CUDA(cudaMallocHost(&host, static_cast<size_t>(bytes)));
  CHECK_CUDA(cudaMalloc(&dev, static_cast<size_t>(bytes)));
  std::memset(host, 1, static_cast<size_t>(bytes));
  for (int i = 0; i < 3; ++i) {
    CHECK_CUDA(
        cudaMemcpyAsync(dev, host, static_cast<size_t>(bytes), cudaMemcpyHostToDevice, stream));
  }
  CHECK_CUDA(cudaStreamSynchronize(stream));
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) {
    CHECK_CUDA(
        cudaMemcpyAsync(dev, host, static_cast<size_t>(bytes), cudaMemcpyHostToDevice, stream));
  }
  CHECK_CUDA(cudaStreamSynchronize(stream));
  const double s = Seconds(t0, Clock::now());
  CHECK_CUDA(cudaFree(dev));
  CHECK_CUDA(cudaFreeHost(host));
  return static_cast<double>(bytes) * reps / s / 1e9;
}

int RepsFor(int64_t bytes, int64_t total) {
  return static_cast<int>(std::clamp<int64_t>(total / bytes, 8, 4096));
}

struct ModelCase {
  std::string name;  // qwen3_30b_a3b, mixtral_8x7b, ...
  ExpertCheckpointOptions options;
  int n_keys = 0;  // random experts copied per measurement
};

// The miss path: `n_keys` random experts copied into `n_slots` rotating device slots.
struct MissResult {
  double gbps = 0;
  int64_t bytes = 0;
};

template <typename CopyFn>
MissResult TimeMisses(const HostCopyPlan& plan, int n_keys, int n_slots, uint8_t* slots,
                      cudaStream_t stream, uint32_t seed, CopyFn copy) {
  std::mt19937 rng(seed);
  std::vector<ExpertKey> keys;
  for (int i = 0; i < n_keys; ++i) {
    keys.push_back({plan.layers()[rng() % plan.layers().size()],
                    static_cast<int32_t>(rng() % static_cast<uint32_t>(plan.n_experts()))});
  }
  const int64_t slot_bytes = plan.layout().slot_bytes;
  // Warm-up: one copy (first-touch costs are not the steady miss path).
  copy(keys[0], slots, stream);
  CHECK_CUDA(cudaStreamSynchronize(stream));
  const auto t0 = Clock::now();
  for (int i = 0; i < n_keys; ++i)
    copy(keys[static_cast<size_t>(i)], slots + (i % n_slots) * slot_bytes, stream);
  CHECK_CUDA(cudaStreamSynchronize(stream));
  const double s = Seconds(t0, Clock::now());
  MissResult r;
  r.bytes = int64_t{n_keys} * 3 * plan.layout().matrix_bytes;
  r.gbps = static_cast<double>(r.bytes) / s / 1e9;
  return r;
}

std::string DeviceLine(int device) {
  cudaDeviceProp p{};
  CHECK_CUDA(cudaGetDeviceProperties(&p, device));
  return Fmt("%s (PCI %04x:%02x:%02x, %.0f GiB)", p.name, p.pciDomainID, p.pciBusID, p.pciDeviceID,
             static_cast<double>(p.totalGlobalMem) / (1 << 30));
}

int Main(int argc, char** argv) {
  std::string dir = "/tmp/moe-host-tier-bench", json_path;
  bool small = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--dir" && i + 1 < argc) {
      dir = argv[++i];
    } else if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (a == "--small") {
      small = true;
    } else {
      std::fprintf(stderr, "usage: %s [--dir DIR] [--json FILE] [--small]\n", argv[0]);
      return 2;
    }
  }
  int n_devices = 0;
  if (cudaGetDeviceCount(&n_devices) != cudaSuccess || n_devices == 0) {
    std::printf("host_tier_bench: no CUDA device on this machine; nothing measured\n");
    return 0;
  }
  Report report(json_path);
  const auto ctx0 = Clock::now();
  CHECK_CUDA(cudaSetDevice(0));
  CHECK_CUDA(cudaFree(nullptr));
  const double ctx_s = Seconds(ctx0, Clock::now());
  const std::string device = DeviceLine(0);
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  std::printf("device: %s; host: %ld cores; CUDA context init %.3f s\n", device.c_str(), cores,
              ctx_s);
  cudaStream_t stream = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  // 1. Pinned reference.
  std::printf("\n%-12s %10s\n", "pinned H2D", "GB/s");
  for (int64_t kb : {256, 1024, 2048, 4096, 8192, 16384, 32768, 65536}) {
    const int64_t bytes = kb << 10;
    const double gbps = PinnedBandwidth(bytes, RepsFor(bytes, int64_t{2} << 30), stream);
    std::printf("%9ld KiB %10.1f\n", static_cast<long>(kb), gbps);
    report.Line(Fmt(
        R"({"bench":"host_tier","what":"pinned_reference","bytes":%ld,"gbps":%.2f,"device":"%s"})",
        static_cast<long>(bytes), gbps, device.c_str()));
  }

  // 2. Checkpoints.
  std::vector<ModelCase> cases;
  auto add = [&](std::string name, int64_t h, int64_t inter, int experts, int layers,
                 ExpertFileLayout layout, int n_keys) {
    ModelCase c;
    c.name = std::move(name);
    c.options.hidden = small ? h / 16 : h;
    c.options.inter = small ? inter / 16 : inter;
    c.options.n_experts = experts;
    c.options.n_layers = small ? 1 : layers;
    c.options.top_k = std::min(experts, 2);
    c.options.layout = layout;
    c.options.n_shards = small ? 1 : 2;
    c.options.fill_threads = static_cast<int>(std::min<long>(cores, 16));
    c.n_keys = n_keys;
    cases.push_back(std::move(c));
  };
  add("qwen3_30b_a3b", 2048, 768, 128, 4, ExpertFileLayout::kSortedByName, 384);
  add("qwen3_30b_a3b_fused", 2048, 768, 128, 1, ExpertFileLayout::kFused, 384);
  add("mixtral_8x7b", 4096, 14336, 8, 2, ExpertFileLayout::kSortedByName, 24);

  std::filesystem::create_directories(dir);
  for (ModelCase& c : cases) {
    const std::string path = dir + "/" + c.name;
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
    const auto t0 = Clock::now();
    CHECK_OK(testing::WriteExpertCheckpoint(path, c.options));
    const double gen_s = Seconds(t0, Clock::now());
    int64_t file_bytes = 0;
    for (const auto& f : std::filesystem::directory_iterator(path)) file_bytes += f.file_size();
    std::printf(
        "\n== %s: %s layout, %d layers x %d experts, %.2f GiB written to %s in %.1f s "
        "(left in the page cache)\n",
        c.name.c_str(), testing::ExpertFileLayoutName(c.options.layout), c.options.n_layers,
        c.options.n_experts, static_cast<double>(file_bytes) / (1 << 30), path.c_str(), gen_s);

    // 3. Time-to-ready: open + registration.
    const auto o0 = Clock::now();
    auto opened = Model::Open(path);
    CHECK_OK(opened.status());
    std::shared_ptr<const Model> model(std::move(*opened));
    const double open_s = Seconds(o0, Clock::now());
    const auto r0 = Clock::now();
    auto registered = HostExpertSource::Create(model, {.mode = HostExpertSource::Mode::kAuto});
    CHECK_OK(registered.status());
    const double create_s = Seconds(r0, Clock::now());
    HostExpertSource& reg = **registered;
    const HostExpertSource::Setup& setup = reg.setup();
    const double gib = static_cast<double>(setup.registered_bytes) / (1 << 30);
    const SlotLayout& l = reg.layout();
    const int64_t expert_bytes = 3 * l.matrix_bytes;
    std::printf(
        "time-to-ready (host tier): Model::Open %.3f s + Create(kAuto -> %s) %.3f s "
        "(register %.2f GiB in %.3f s = %.4f s/GiB, %d ranges)%s%s\n",
        open_s, std::string(ModeName(reg.mode())).c_str(), create_s, gib, setup.register_seconds,
        gib > 0 ? setup.register_seconds / gib : 0.0, setup.registered_ranges,
        setup.fallback_reason.empty() ? "" : "; fallback: ", setup.fallback_reason.c_str());
    std::printf("slot layout: %s, matrix %ld B, slot %ld B, %ld copies for %zu experts\n",
                reg.plan().OrderName().c_str(), static_cast<long>(l.matrix_bytes),
                static_cast<long>(l.slot_bytes), static_cast<long>(reg.plan().total_copies()),
                reg.plan().layers().size() * static_cast<size_t>(reg.plan().n_experts()));
    report.Line(Fmt(
        R"({"bench":"host_tier","what":"time_to_ready","model":"%s","file_bytes":%ld,"open_s":%.4f,"create_s":%.4f,"mode":"%s","registered_bytes":%ld,"register_s":%.4f,"register_s_per_gib":%.4f,"cuda_context_s":%.3f,"device":"%s"})",
        c.name.c_str(), static_cast<long>(file_bytes), open_s, create_s,
        std::string(ModeName(reg.mode())).c_str(), static_cast<long>(setup.registered_bytes),
        setup.register_seconds, gib > 0 ? setup.register_seconds / gib : 0.0, ctx_s,
        device.c_str()));

    // 4. Miss path.
    const double ref =
        PinnedBandwidth(expert_bytes, RepsFor(expert_bytes, int64_t{3} << 30), stream);
    const int n_slots = static_cast<int>(
        std::max<int64_t>(2, std::min<int64_t>(16, (int64_t{6} << 30) / l.slot_bytes)));
    void* dev = nullptr;
    CHECK_CUDA(cudaMalloc(&dev, static_cast<size_t>(n_slots * l.slot_bytes)));
    auto* slots = static_cast<uint8_t*>(dev);
    std::printf("%-40s %9s %8s %10s\n", "miss path", "GB/s", "% pinned", "copies/exp");
    auto emit = [&](const std::string& mode, int copies, MissResult r) {
      const double pct = 100.0 * r.gbps / ref;
      std::printf("%-40s %9.1f %7.1f%% %10d\n", mode.c_str(), r.gbps, pct, copies);
      report.Line(Fmt(
          R"({"bench":"host_tier","what":"miss_path","model":"%s","mode":"%s","expert_bytes":%ld,"copies_per_expert":%d,"experts":%d,"gbps":%.2f,"pinned_ref_gbps":%.2f,"pct_of_pinned":%.1f,"device":"%s"})",
          c.name.c_str(), mode.c_str(), static_cast<long>(expert_bytes), copies, c.n_keys, r.gbps,
          ref, pct, device.c_str()));
    };
    std::printf("%-40s %9.1f %7.1f%% %10d\n", "pinned blob of one expert", ref, 100.0, 1);
    const int plan_copies = static_cast<int>(
        reg.plan().total_copies() /
        (static_cast<int64_t>(reg.plan().layers().size()) * reg.plan().n_experts()));
    for (int rep = 0; rep < 2; ++rep) {
      emit(std::string(ModeName(reg.mode())) + (rep ? " (repeat)" : ""), plan_copies,
           TimeMisses(reg.plan(), c.n_keys, n_slots, slots, stream, 11 + rep,
                      [&](const ExpertKey& k, uint8_t* d, cudaStream_t s) {
                        CHECK_OK(reg.CopyAsync(k, d, s));
                      }));
    }
    for (int rep = 0; rep < 2 && reg.mode() == HostExpertSource::Mode::kRegisteredMmap; ++rep) {
      // Same registered bytes, one copy per matrix.
      emit(rep ? "registered_mmap, 3 copies/expert (repeat)" : "registered_mmap, 3 copies/expert",
           3,
           TimeMisses(reg.plan(), c.n_keys, n_slots, slots, stream, 11 + rep,
                      [&](const ExpertKey& k, uint8_t* d, cudaStream_t s) {
                        const ExpertWeights& w =
                            model->layer(k.layer)->experts[static_cast<size_t>(k.expert)];
                        CHECK_CUDA(cudaMemcpyAsync(d + l.gate_offset, w.gate.data, l.matrix_bytes,
                                                   cudaMemcpyHostToDevice, s));
                        CHECK_CUDA(cudaMemcpyAsync(d + l.up_offset, w.up.data, l.matrix_bytes,
                                                   cudaMemcpyHostToDevice, s));
                        CHECK_CUDA(cudaMemcpyAsync(d + l.down_offset, w.down.data, l.matrix_bytes,
                                                   cudaMemcpyHostToDevice, s));
                      }));
    }
    {
      // Staging ring over a second, unregistered mapping of the same (cached) files: the first
      // pass also pays this process's page-table faults on the mapping, later passes do not.
      auto again = Model::Open(path);
      CHECK_OK(again.status());
      std::shared_ptr<const Model> fresh(std::move(*again));
      for (int threads : {4, 8, 16}) {
        const auto s0 = Clock::now();
        auto staging = HostExpertSource::Create(
            fresh, {.mode = HostExpertSource::Mode::kStagingRing, .staging_threads = threads});
        CHECK_OK(staging.status());
        const double staging_create_s = Seconds(s0, Clock::now());
        HostExpertSource& st = **staging;
        for (int pass = threads == 4 ? 0 : 1; pass < 2; ++pass) {
          emit(Fmt("staging_ring, %d thr, %s", threads,
                   pass == 0 ? "first touch"
                             : Fmt("warm (create %.2f s)", staging_create_s).c_str()),
               plan_copies,
               TimeMisses(st.plan(), c.n_keys, n_slots, slots, stream, 11 + pass,
                          [&](const ExpertKey& k, uint8_t* d, cudaStream_t s) {
                            CHECK_OK(st.CopyAsync(k, d, s));
                          }));
          if (pass == 0) {  // touch every expert once, so the warm passes see no faults
            for (int32_t layer : st.plan().layers()) {
              for (int32_t e = 0; e < st.plan().n_experts(); ++e) {
                CHECK_OK(st.CopyAsync({layer, e}, slots, stream));
              }
            }
            CHECK_CUDA(cudaStreamSynchronize(stream));
          }
        }
      }
    }
    {
      // Pageable: a second, unregistered mapping of the same files.
      auto again = Model::Open(path);
      CHECK_OK(again.status());
      std::shared_ptr<const Model> plain(std::move(*again));
      auto plain_plan = HostCopyPlan::Build(*plain);
      CHECK_OK(plain_plan.status());
      emit("pageable cudaMemcpyAsync (no pin)", plan_copies,
           TimeMisses(*plain_plan, std::max(4, c.n_keys / 4), n_slots, slots, stream, 11,
                      [&](const ExpertKey& k, uint8_t* d, cudaStream_t s) {
                        auto copies = plain_plan->Copies(k);
                        for (const HostCopy& hc : *copies) {
                          CHECK_CUDA(cudaMemcpyAsync(d + hc.dst_offset, hc.src, hc.bytes,
                                                     cudaMemcpyHostToDevice, s));
                        }
                      }));
    }
    CHECK_CUDA(cudaFree(dev));
    registered->reset();
  }
  CHECK_CUDA(cudaStreamDestroy(stream));
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace moe::experts

int main(int argc, char** argv) { return moe::experts::Main(argc, argv); }
