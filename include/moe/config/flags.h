// Command-line flags of `moe-swarm serve`: one flag per setting of DaemonOptions
// (config/options.h), documented with its TOML key and built-in default in --help.
#pragma once

#include <string>
#include <variant>
#include <vector>

#include "moe/config/options.h"

namespace CLI {
class App;
}  // namespace CLI

namespace moe::config {

// One setting: its TOML key, its flag, its help text and where its value lives.
struct Setting {
  std::string key;   // "server.port"
  std::string flag;  // "--port"
  std::string help;
  std::variant<std::string*, int*, int64_t*, double*, bool*, std::vector<int64_t>*, EngineKind*>
      value;
};

// Every setting of `options`, pointing into it. The single table both the TOML loader and the
// flags are built from.
std::vector<Setting> AllSettings(DaemonOptions* options);

// Adds one flag per setting to `app`, bound to `options` (a flag overwrites only when given),
// with the current values of `options` shown as defaults in --help. `options` must outlive `app`.
void AddServeFlags(CLI::App* app, DaemonOptions* options);

}  // namespace moe::config
