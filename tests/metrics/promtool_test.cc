// `promtool check metrics` (Prometheus' own linter) accepts our exposition with every family
// populated. Skips with a reason when promtool is not installed (Debian package `prometheus`).
#include <gtest/gtest.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "moe/metrics/metrics.h"

namespace moe::metrics {
namespace {

std::string FindPromtool() {
  if (const char* env = std::getenv("PROMTOOL"); env != nullptr && access(env, X_OK) == 0) {
    return env;
  }
  for (const char* dir : {"/usr/bin", "/usr/local/bin", "/bin"}) {
    const std::string path = std::string(dir) + "/promtool";
    if (access(path.c_str(), X_OK) == 0) return path;
  }
  return "";
}

// Every family with series and observations, as a busy GPU daemon would expose them.
void Populate(Metrics& m) {
  ASSERT_TRUE(m.RegisterModel("Mixtral-8x7B").ok());
  ASSERT_TRUE(m.RegisterModel("weird \"name\"\\with\nescapes").ok());
  ASSERT_TRUE(m.ConfigureExpertLoad(2, 8).ok());
  for (int i = 0; i < 10; ++i) {
    m.RequestStarted();
    m.RecordRequest("Mixtral-8x7B", i % 3 == 0 ? 8 : 0, 1e-3 * i);
    m.RecordRequest("weird \"name\"\\with\nescapes", 3, 2e-5);
    m.RecordRequest("unregistered", 5, 1e-4);
    m.RecordQueueWait(1e-4 * i);
    m.RecordBatch(16 * i);
    m.RecordRouting(2e-5);
    m.RecordCompute(3e-3);
    m.RecordExpertLoad(i % 2, std::vector<uint32_t>{400, 1, 2, 3, 4, 5, 6, 7});
    m.SetExpertCacheTotals(i % 2, {.hits = 3 * i,
                                   .misses = i,
                                   .evictions = i / 2,
                                   .bytes_copied = 176160768LL * i,
                                   .copy_wait_seconds = 2e-3 * i,
                                   .prefetch_loads = i,
                                   .prefetch_useful = i / 2,
                                   .prefetch_wasted = i / 3,
                                   .resident_experts = 40,
                                   .lookahead = {{.predicted_experts = 8 * i,
                                                  .routed_experts = 10 * i,
                                                  .correctly_predicted_experts = 6 * i},
                                                 {.predicted_experts = 8 * i,
                                                  .routed_experts = 10 * i,
                                                  .correctly_predicted_experts = 3 * i}},
                                   .layer_forwards = 48 * i,
                                   .device_hit_layers = 30 * i,
                                   .host_wait_seconds = 1e-4 * i,
                                   .rounds = 50 * i,
                                   .gated_predictions = i / 4,
                                   .pcie_bytes = int64_t{1000} * i});
    m.SetWorkerTotals(i % 4, {.received = i, .sent = i, .busy_seconds = 0.01 * i});
    m.RecordRefused(i % 2 ? "queue_full" : "invalid");
  }
  m.SetQueueDepth(3, 48);
  m.SetSwarmQueueLength(2);
  m.SetGpuMemory(0, int64_t{20} << 30, int64_t{80} << 30);
  m.SetGpuMemory(1, int64_t{21} << 30, int64_t{80} << 30);
  m.SetGpuBusyRatio(0, 0.5);
  m.SetReady(true);
}

TEST(PromtoolTest, CheckMetricsAcceptsOurExposition) {
  const std::string promtool = FindPromtool();
  if (promtool.empty()) {
    GTEST_SKIP() << "promtool not found (install Debian's `prometheus` package or set PROMTOOL)";
  }
  auto metrics = Metrics::Create({});
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  Populate(**metrics);
  const std::string exposition = (*metrics)->Serialize();

  char dir_template[] = "/tmp/moe_promtool_XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  const std::string in = dir + "/metrics.txt";
  const std::string out = dir + "/promtool.out";
  std::ofstream(in) << exposition;
  const std::string cmd = promtool + " check metrics < " + in + " > " + out + " 2>&1";
  const int rc = std::system(cmd.c_str());
  std::ifstream report_file(out);
  const std::string report((std::istreambuf_iterator<char>(report_file)),
                           std::istreambuf_iterator<char>());
  std::remove(in.c_str());
  std::remove(out.c_str());
  rmdir(dir.c_str());
  ASSERT_TRUE(WIFEXITED(rc)) << cmd;
  EXPECT_EQ(WEXITSTATUS(rc), 0) << "promtool check metrics found problems:\n"
                                << report << "\n--- exposition ---\n"
                                << exposition;
}

}  // namespace
}  // namespace moe::metrics
