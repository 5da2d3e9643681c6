// The example configuration shipped to every deployment (deploy/moe-swarm.toml, also baked into
// the images and the Kubernetes ConfigMap) loads with the daemon's own parser, validates, and
// names the defaults of include/moe/config/defaults.h.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "moe/config/defaults.h"
#include "moe/config/options.h"

namespace moe::config {
namespace {

std::string SourceDir() {
  const char* dir = std::getenv("MOE_SOURCE_DIR");
  return dir != nullptr ? dir : ".";
}

TEST(ExampleConfigTest, LoadsAndValidates) {
  DaemonOptions options;
  const std::string path = SourceDir() + "/deploy/moe-swarm.toml";
  const Status loaded = LoadTomlFile(path, &options);
  ASSERT_TRUE(loaded.ok()) << loaded;
  const Status valid = Validate(options);
  EXPECT_TRUE(valid.ok()) << valid;
  EXPECT_EQ(options.server.port, kDefaultGrpcPort);
  EXPECT_EQ(options.server.metrics_port, kDefaultMetricsPort);
  EXPECT_EQ(options.server.address, kDefaultBindAddress);
  EXPECT_EQ(options.server.metrics_address, kDefaultBindAddress);
  EXPECT_EQ(options.server.drain_timeout_ms, int64_t{kDefaultDrainTimeoutSeconds} * 1000);
  EXPECT_EQ(options.model.cache_dir, std::string(kDefaultContainerModelDir) + "/cache");
  EXPECT_EQ(options.logging.format, "json");
}

}  // namespace
}  // namespace moe::config
