// Typed options of the daemon, parsed once at start-up from a TOML file and command-line flags.
//
// Every setting has one TOML key (`section.name`) and one flag (`--name` or `--section-name`);
// docs/API.md lists them. Precedence: built-in default < TOML file (`--config FILE`) < flag.
// Validate() checks every value and names the offending key in its error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/common/status.h"
#include "moe/config/defaults.h"

namespace moe::config {

// gRPC front end and side HTTP port.
struct ServerOptions {
  std::string address = kDefaultBindAddress;  // server.address: gRPC bind address
  int port = kDefaultGrpcPort;                // server.port: gRPC port (0 = pick a free one)
  std::string metrics_address = kDefaultBindAddress;  // server.metrics_address
  int metrics_port = kDefaultMetricsPort;  // server.metrics_port (0 = pick, -1 = disabled)
  // server.max_message_bytes: largest gRPC message received or sent. The default holds a 16k-token
  // BF16 batch of hidden 7168 (235 MB) with room to spare.
  int64_t max_message_bytes = int64_t{512} << 20;
  int64_t keepalive_time_ms = 60'000;     // server.keepalive_time_ms: ping idle clients this often
  int64_t keepalive_timeout_ms = 20'000;  // server.keepalive_timeout_ms: drop if no ping ack
  int64_t keepalive_min_ping_interval_ms = 10'000;  // server.keepalive_min_ping_interval_ms
  bool keepalive_permit_without_calls = true;       // server.keepalive_permit_without_calls
  int64_t drain_timeout_ms =
      int64_t{kDefaultDrainTimeoutSeconds} * 1000;  // server.drain_timeout_ms
  std::string model_name;  // server.model_name: served name (default: the model directory's name)
};

// Dynamic batching scheduler.
struct SchedulerOptions {
  int64_t max_batch_tokens = 8192;  // scheduler.max_batch_tokens: most tokens in one engine batch
  int64_t max_queue_delay_us =
      500;  // scheduler.max_queue_delay_us: longest a request waits for more
  std::vector<int64_t> preferred_batch_tokens;  // scheduler.preferred_batch_tokens
  int64_t max_queue_tokens = 262'144;  // scheduler.max_queue_tokens: beyond it requests are refused
  int64_t default_timeout_us = 30'000'000;  // scheduler.default_timeout_us (0 = none)
};

enum class EngineKind { kAuto, kCpu, kCuda };
std::string_view EngineKindName(EngineKind kind);

struct EngineOptions {
  EngineKind kind = EngineKind::kAuto;  // engine.kind: auto | cpu | cuda
  int threads = 0;                      // engine.threads: CPU engine threads (0 = every core)
  int slots = 0;                        // engine.slots: concurrent batches (0 = 2)
};

// GPU expert cache of the CUDA engine (docs/OPERATIONS.md, "Expert cache").
struct ExpertOptions {
  // experts.cache_bytes: device memory for routed experts. "0" = every expert resident (no
  // cache); bytes, optionally with a K/M/G/T suffix (powers of 1024, e.g. "24G"); or a percentage
  // of the device memory free at start-up, before the engine allocates ("40%").
  std::string cache_bytes = "0";
  std::string eviction = "reuse";  // experts.eviction: experts::ParseEvictionKind names
  bool prefetch = true;            // experts.prefetch: gate-lookahead prefetch
  int prefetch_depth = 1;          // experts.prefetch_depth: upcoming MoE layers predicted, 1..4
  // experts.prefetch_min_precision: predictions of depth >= 2 are loaded only while their measured
  // precision is at least this, in [0, 1] (CudaEngineOptions::ExpertCacheOptions).
  double prefetch_min_precision = 0.5;
  // experts.compress: keep a lossless compressed copy of the routed experts in pinned host memory
  // (encoded in the background after start-up), so that misses move ~0.67 of the bytes
  // (ExpertCacheOptions::compress_host_tier).
  bool compress = true;
  std::string trace;  // experts.trace: routing trace file ("" = none)
  // experts.warm_trace: a routing trace whose most used experts are loaded at start-up ("" = none).
  std::string warm_trace;
};

// experts.cache_bytes parsed: a byte count, or a fraction (0, 1] of free device memory.
struct ByteBudget {
  int64_t bytes = 0;
  double fraction = 0;  // > 0: resolve against the free device memory at start-up
};
// "0", "123456", "512M", "24G", "1.5T", "40%". INVALID_ARGUMENT otherwise.
StatusOr<ByteBudget> ParseByteBudget(const std::string& text);

struct ModelOptions {
  std::string dir;        // model.dir: Hugging Face checkpoint dir ("" = embedded model)
  std::string cache_dir;  // model.cache_dir: where the embedded model is generated
                          // ("" = moe::DefaultCacheDir(): $MOE_CACHE_DIR or ~/.cache/moe-swarm)
};

struct LoggingOptions {
  // logging.level: trace debug info warn error critical off; "" = $MOE_LOG, else info.
  std::string level;
  std::string format = "text";  // logging.format: text | json
};

struct DaemonOptions {
  ServerOptions server;
  SchedulerOptions scheduler;
  EngineOptions engine;
  ExpertOptions experts;
  ModelOptions model;
  LoggingOptions logging;
};

// Reads a TOML file into `options`, overwriting only the keys it sets. INVALID_ARGUMENT naming the
// key for an unknown key or a value of the wrong type; NOT_FOUND when the file does not exist.
Status LoadTomlFile(const std::string& path, DaemonOptions* options);
// Same, from TOML text (`origin` names it in errors).
Status LoadTomlString(const std::string& text, const std::string& origin, DaemonOptions* options);

// INVALID_ARGUMENT naming the first key whose value is out of range.
Status Validate(const DaemonOptions& options);

// The effective configuration as TOML (logged at start-up, and a template for config files).
std::string ToToml(const DaemonOptions& options);

}  // namespace moe::config
