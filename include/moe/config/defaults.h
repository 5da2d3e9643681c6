// The one source of truth for the daemon's well-known numbers and paths.
// The config parser (src/config), the CLI (src/cli), the side HTTP server (src/metrics) and the
// deployment files (deploy/, Dockerfile.gpu, fly.toml) all use these values; tests/ops/ checks that
// every deployment file names exactly these ports, paths and signals, so change them here first.
#pragma once

namespace moe::config {

// gRPC front end (moe.v1 + KServe v2 + grpc.health.v1), plaintext HTTP/2 (h2c).
inline constexpr int kDefaultGrpcPort = 50051;
// Side HTTP port: /metrics (Prometheus text format), /healthz, /readyz.
inline constexpr int kDefaultMetricsPort = 9091;
// Address both listeners bind by default (all interfaces; containers publish the ports).
inline constexpr char kDefaultBindAddress[] = "0.0.0.0";

// After SIGTERM the daemon stops accepting new requests (/readyz turns 503, gRPC health turns
// NOT_SERVING) and finishes in-flight ones for at most this long, then exits. Deployment kill
// timeouts (Kubernetes terminationGracePeriodSeconds, Fly kill_timeout, docker stop_grace_period)
// are this plus kDrainSlackSeconds, so the platform never SIGKILLs a draining daemon.
inline constexpr int kDefaultDrainTimeoutSeconds = 25;
inline constexpr int kDrainSlackSeconds = 5;

// HTTP paths on the side port.
inline constexpr char kMetricsPath[] = "/metrics";
inline constexpr char kHealthzPath[] = "/healthz";
inline constexpr char kReadyzPath[] = "/readyz";

// Environment variable holding the log level (trace, debug, info, warn, error, critical, off).
inline constexpr char kLogLevelEnv[] = "MOE_LOG";

// Where containers mount models (the model cache / Hugging Face checkpoints).
inline constexpr char kDefaultContainerModelDir[] = "/models";

}  // namespace moe::config
