// The subcommands of `moe-swarm` (src/cli/main.cc parses the command line and calls these).
// Each returns the process exit code: 0 on success, 1 on a start-up or run-time error, 2 for
// bad usage.
#pragma once

#include <cstdint>
#include <string>

#include "moe/config/options.h"

namespace moe::cli {

// `moe-swarm serve`: runs the daemon until SIGTERM/SIGINT, then drains and exits 0.
int RunServe(const config::DaemonOptions& options);

struct ClientOptions {
  std::string address = "127.0.0.1:50051";
  std::string model;  // "" = the served model
  int layer = -1;     // -1 = the first MoE layer
  int64_t tokens = 4;
  std::string dtype = "bf16";  // bf16 | f16 | f32
  std::string input;           // raw little-endian [tokens, hidden] file; "" = random
  std::string output;          // write the output tensor's raw bytes here
  bool routing = false;        // print each token's experts and weights
  std::string api = "native";  // native | kserve
  int repeat = 1;              // send the request this many times (latency min/median/max)
  uint64_t seed = 1;
  int64_t timeout_ms = 30000;
};

// `moe-swarm client`: sends hidden states to a daemon, prints latency and the routing result.
int RunClient(const ClientOptions& options);

}  // namespace moe::cli
