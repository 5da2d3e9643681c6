// The settings table: every DaemonOptions field with its TOML key, flag and help.
#include <CLI/CLI.hpp>

#include "absl/strings/str_join.h"
#include "moe/config/flags.h"

namespace moe::config {

std::vector<Setting> AllSettings(DaemonOptions* o) {
  ServerOptions& s = o->server;
  SchedulerOptions& q = o->scheduler;
  return {
      {"server.address", "--address", "gRPC bind address", &s.address},
      {"server.port", "--port", "gRPC port (0 = pick a free port and log it)", &s.port},
      {"server.metrics_address", "--metrics-address",
       "bind address of the side HTTP port "
       "(/metrics, /healthz, /readyz)",
       &s.metrics_address},
      {"server.metrics_port", "--metrics-port", "side HTTP port (0 = pick a free port, -1 = off)",
       &s.metrics_port},
      {"server.max_message_bytes", "--max-message-bytes",
       "largest gRPC message received or sent, in bytes", &s.max_message_bytes},
      {"server.keepalive_time_ms", "--keepalive-time-ms",
       "send a keepalive ping after this long without activity (ms)", &s.keepalive_time_ms},
      {"server.keepalive_timeout_ms", "--keepalive-timeout-ms",
       "close the connection when a ping is not acknowledged within this (ms)",
       &s.keepalive_timeout_ms},
      {"server.keepalive_min_ping_interval_ms", "--keepalive-min-ping-interval-ms",
       "shortest interval between client pings the server tolerates (ms)",
       &s.keepalive_min_ping_interval_ms},
      {"server.keepalive_permit_without_calls", "--keepalive-permit-without-calls",
       "allow client keepalive pings on connections without calls",
       &s.keepalive_permit_without_calls},
      {"server.drain_timeout_ms", "--drain-timeout-ms",
       "on SIGTERM/SIGINT, how long queued and running requests may take to finish (ms)",
       &s.drain_timeout_ms},
      {"server.model_name", "--model-name",
       "name the model is served under (default: the model directory's name)", &s.model_name},
      {"scheduler.max_batch_tokens", "--max-batch-tokens",
       "most tokens in one engine batch (and in one request)", &q.max_batch_tokens},
      {"scheduler.max_queue_delay_us", "--max-queue-delay-us",
       "longest a request waits for others to fill a batch (us)", &q.max_queue_delay_us},
      {"scheduler.preferred_batch_tokens", "--preferred-batch-tokens",
       "batch sizes (tokens) dispatched as soon as reached", &q.preferred_batch_tokens},
      {"scheduler.max_queue_tokens", "--max-queue-tokens",
       "queued tokens beyond which new requests are refused with UNAVAILABLE", &q.max_queue_tokens},
      {"scheduler.default_timeout_us", "--default-timeout-us",
       "timeout of requests that set none (us, 0 = none)", &q.default_timeout_us},
      {"engine.kind", "--engine",
       "auto | cpu | cuda (auto = cuda when built with CUDA and a GPU "
       "is present, else cpu)",
       &o->engine.kind},
      {"engine.threads", "--threads", "CPU engine threads, shared by all slots (0 = every core)",
       &o->engine.threads},
      {"engine.slots", "--slots",
       "batches computed at once: engine slots, one swarm worker each (0 = 2)", &o->engine.slots},
      {"experts.cache_bytes", "--expert-cache-bytes",
       "CUDA engine: device memory for routed experts; 0 = all resident, bytes with an optional "
       "K/M/G/T suffix (e.g. 24G), or a percentage of the free device memory (e.g. 40%)",
       &o->experts.cache_bytes},
      {"experts.eviction", "--expert-eviction",
       "expert cache eviction policy: layer-lru | layer-lrfu | lru | lfu | lru2 | reuse",
       &o->experts.eviction},
      {"experts.prefetch", "--expert-prefetch",
       "expert cache: gate-lookahead prefetch of the next layer's experts", &o->experts.prefetch},
      {"experts.prefetch_depth", "--expert-prefetch-depth",
       "expert cache: how many upcoming MoE layers the gate-lookahead predicts and prefetches "
       "(1-4; nearest first)",
       &o->experts.prefetch_depth},
      {"experts.prefetch_min_precision", "--expert-prefetch-min-precision",
       "expert cache: predictions two or more layers ahead are loaded only while their measured "
       "precision is at least this (0-1; depth 1 is never gated)",
       &o->experts.prefetch_min_precision},
      {"experts.compress", "--expert-compress",
       "expert cache: also keep the routed experts losslessly compressed in pinned host memory "
       "(bf16 weights; ~0.67 of their bytes, encoded in the background), so that misses copy "
       "fewer bytes over PCIe",
       &o->experts.compress},
      {"experts.trace", "--expert-trace",
       "expert cache: write a routing trace (layer, experts per batch) to this file",
       &o->experts.trace},
      {"experts.warm_trace", "--expert-warm-trace",
       "expert cache: at start-up, load the experts this routing trace used most (until the budget "
       "is full)",
       &o->experts.warm_trace},
      {"model.dir", "--model",
       "Hugging Face checkpoint directory (config.json + safetensors); "
       "empty = the embedded model, generated on first use",
       &o->model.dir},
      {"model.cache_dir", "--cache-dir",
       "where the embedded model is generated (default $MOE_CACHE_DIR or ~/.cache/moe-swarm)",
       &o->model.cache_dir},
      {"logging.level", "--log-level",
       "trace | debug | info | warn | error | critical | off (default: env MOE_LOG, else info)",
       &o->logging.level},
      {"logging.format", "--log-format", "text | json", &o->logging.format},
  };
}

namespace {

// "1, 2, 3" for --help.
std::string ShowList(const std::vector<int64_t>& v) {
  return v.empty() ? "none" : absl::StrJoin(v, ",");
}

}  // namespace

void AddServeFlags(CLI::App* app, DaemonOptions* options) {
  // A flag given twice: the last one wins (wrappers such as scripts/serve.sh append overrides).
  app->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  for (Setting& s : AllSettings(options)) {
    std::string help = s.help + "  [toml: " + s.key + "]";
    std::visit(
        [&](auto* ptr) {
          using T = std::remove_pointer_t<decltype(ptr)>;
          if constexpr (std::is_same_v<T, bool>) {
            app->add_option(s.flag, *ptr, help)
                ->default_str(*ptr ? "true" : "false")
                ->type_name("BOOL");
          } else if constexpr (std::is_same_v<T, EngineKind>) {
            std::map<std::string, EngineKind> names{{"auto", EngineKind::kAuto},
                                                    {"cpu", EngineKind::kCpu},
                                                    {"cuda", EngineKind::kCuda}};
            app->add_option(s.flag, *ptr, help)
                ->transform(CLI::CheckedTransformer(names, CLI::ignore_case).description(""))
                ->type_name("KIND")
                ->default_str(std::string(EngineKindName(*ptr)));
          } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
            app->add_option(s.flag, *ptr, help)
                ->delimiter(',')
                ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
                ->default_str(ShowList(*ptr));
          } else {
            app->add_option(s.flag, *ptr, help)->capture_default_str();
          }
        },
        s.value);
  }
}

}  // namespace moe::config
