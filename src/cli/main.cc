// moe-swarm: the MoE layer inference daemon and its tools.
//   moe-swarm serve [--config FILE] [--model DIR] [--engine auto|cpu|cuda] [...]
//   moe-swarm inspect DIR
//   moe-swarm client [--address HOST:PORT] [--layer L] [--tokens N] [--routing] [...]
// Exit codes: 0 success, 1 start-up or run-time error, 2 bad usage.
#include <CLI/CLI.hpp>
#include <cstring>
#include <iostream>

#include "commands.h"
#include "moe/config/flags.h"
#include "moe/model/inspect.h"

namespace {

// The value of --config in argv ("--config FILE" or "--config=FILE"), or "".
std::string FindConfigFlag(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--config") == 0 && i + 1 < argc) return argv[i + 1];
    if (std::strncmp(argv[i], "--config=", 9) == 0) return argv[i] + 9;
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "moe-swarm: serves the MoE layers of Mixture-of-Experts models over gRPC "
      "(native moe.v1 and KServe v2 / Triton)"};
  app.set_version_flag("--version", std::string("moe-swarm ") + MOE_VERSION);
  app.require_subcommand(1);

  // serve: defaults < TOML file < flags. The flags are declared while `options` holds the built-in
  // defaults (so --help shows them); the file is applied before parsing.
  moe::config::DaemonOptions options;
  std::string config_path;
  CLI::App* serve =
      app.add_subcommand("serve", "run the daemon (SIGTERM/SIGINT drains and exits 0)");
  serve->add_option("--config", config_path,
                    "TOML file with the settings below ([server], [scheduler], [engine], [model], "
                    "[logging]); flags override it");
  moe::config::AddServeFlags(serve, &options);

  std::string inspect_dir;
  CLI::App* inspect = app.add_subcommand("inspect", "describe a checkpoint directory's MoE spec");
  inspect->add_option("DIR", inspect_dir, "Hugging Face checkpoint directory")->required();

  moe::cli::ClientOptions client_options;
  CLI::App* client =
      app.add_subcommand("client", "send hidden states to a daemon; print latency and routing");
  client->add_option("--address", client_options.address, "daemon's gRPC address")
      ->capture_default_str();
  client->add_option("--model", client_options.model, "served model name (default: the only one)");
  client->add_option("--layer", client_options.layer, "MoE layer (default: the first)");
  client->add_option("--tokens", client_options.tokens, "tokens to send")->capture_default_str();
  client->add_option("--dtype", client_options.dtype, "bf16 | f16 | f32")->capture_default_str();
  client->add_option("--input", client_options.input,
                     "raw little-endian [tokens, hidden] file (default: random N(0,1))");
  client->add_option("--output", client_options.output, "write the output's raw bytes here");
  client->add_flag("--routing", client_options.routing, "print each token's experts and weights");
  client->add_option("--api", client_options.api, "native | kserve")->capture_default_str();
  client->add_option("--repeat", client_options.repeat, "requests to send")->capture_default_str();
  client->add_option("--seed", client_options.seed, "random input seed")->capture_default_str();
  client->add_option("--timeout-ms", client_options.timeout_ms, "per-request deadline")
      ->capture_default_str();

  // Apply the TOML file (if any) under the flags.
  std::string file = FindConfigFlag(argc, argv);
  if (!file.empty()) {
    if (moe::Status s = moe::config::LoadTomlFile(file, &options); !s.ok()) {
      std::cerr << "moe-swarm: " << s.message() << "\n";
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }

  if (serve->parsed()) {
    if (moe::Status s = moe::config::Validate(options); !s.ok()) {
      std::cerr << "moe-swarm serve: invalid configuration: " << s.message() << "\n";
      return 2;
    }
    return moe::cli::RunServe(options);
  }
  if (inspect->parsed()) {
    moe::Status s = moe::Inspect(inspect_dir, std::cout);
    if (!s.ok()) {
      std::cerr << "moe-swarm inspect: " << s.message() << "\n";
      return 1;
    }
    return 0;
  }
  if (client->parsed()) return moe::cli::RunClient(client_options);
  return 2;
}
