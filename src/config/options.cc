// TOML loading, validation and printing of DaemonOptions, driven by the settings table.
#include "moe/config/options.h"

#include <toml++/toml.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_join.h"
#include "moe/config/flags.h"
#include "moe/experts/eviction_policy.h"

namespace moe::config {

std::string_view EngineKindName(EngineKind kind) {
  switch (kind) {
    case EngineKind::kAuto:
      return "auto";
    case EngineKind::kCpu:
      return "cpu";
    case EngineKind::kCuda:
      return "cuda";
  }
  return "auto";
}

StatusOr<ByteBudget> ParseByteBudget(const std::string& text) {
  auto bad = [&text]() {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", text, "\" is not a byte size (e.g. 0, 1073741824, 512M, 24G) or a percentage (40%)"));
  };
  if (text.empty()) return bad();
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (...) {
    return bad();
  }
  if (!(value >= 0) || text[0] == '-' || text[0] == '+') return bad();
  const std::string suffix = text.substr(used);
  ByteBudget b;
  if (suffix == "%") {
    if (value <= 0 || value > 100) return bad();
    b.fraction = value / 100.0;
    return b;
  }
  double scale = 1;
  if (suffix.empty()) {
    scale = 1;
  } else if (suffix == "K" || suffix == "k") {
    scale = 1024.0;
  } else if (suffix == "M") {
    scale = 1024.0 * 1024;
  } else if (suffix == "G") {
    scale = 1024.0 * 1024 * 1024;
  } else if (suffix == "T") {
    scale = 1024.0 * 1024 * 1024 * 1024;
  } else {
    return bad();
  }
  const double bytes = value * scale;
  if (bytes > 9.0e18 ||
      (suffix.empty() && value != static_cast<double>(static_cast<int64_t>(value)))) {
    return bad();
  }
  b.bytes = static_cast<int64_t>(bytes);
  return b;
}

namespace {

Status TypeError(const std::string& origin, const std::string& key, const char* expected) {
  return absl::InvalidArgumentError(absl::StrCat(origin, ": ", key, ": expected ", expected));
}

// Stores TOML value `node` into the setting `s`.
Status Assign(const std::string& origin, const Setting& s, const toml::node& node) {
  return std::visit(
      [&](auto* ptr) -> Status {
        using T = std::remove_pointer_t<decltype(ptr)>;
        if constexpr (std::is_same_v<T, std::string>) {
          auto v = node.value<std::string>();
          if (!node.is_string() || !v) return TypeError(origin, s.key, "a string");
          *ptr = *v;
        } else if constexpr (std::is_same_v<T, bool>) {
          if (!node.is_boolean()) return TypeError(origin, s.key, "true or false");
          *ptr = *node.value<bool>();
        } else if constexpr (std::is_same_v<T, int> || std::is_same_v<T, int64_t>) {
          if (!node.is_integer()) return TypeError(origin, s.key, "an integer");
          int64_t v = *node.value<int64_t>();
          if constexpr (std::is_same_v<T, int>) {
            if (v < INT32_MIN || v > INT32_MAX) return TypeError(origin, s.key, "a 32-bit integer");
          }
          *ptr = static_cast<T>(v);
        } else if constexpr (std::is_same_v<T, double>) {
          if (node.is_integer()) {
            *ptr = static_cast<double>(*node.value<int64_t>());
          } else if (node.is_floating_point()) {
            *ptr = *node.value<double>();
          } else {
            return TypeError(origin, s.key, "a number");
          }
        } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
          const toml::array* arr = node.as_array();
          if (arr == nullptr) return TypeError(origin, s.key, "an array of integers");
          ptr->clear();
          for (const toml::node& e : *arr) {
            if (!e.is_integer()) return TypeError(origin, s.key, "an array of integers");
            ptr->push_back(*e.value<int64_t>());
          }
        } else if constexpr (std::is_same_v<T, EngineKind>) {
          auto v = node.value<std::string>();
          if (!node.is_string() || !v)
            return TypeError(origin, s.key, "\"auto\", \"cpu\" or \"cuda\"");
          if (*v == "auto") {
            *ptr = EngineKind::kAuto;
          } else if (*v == "cpu") {
            *ptr = EngineKind::kCpu;
          } else if (*v == "cuda") {
            *ptr = EngineKind::kCuda;
          } else {
            return TypeError(origin, s.key, "\"auto\", \"cpu\" or \"cuda\"");
          }
        }
        return absl::OkStatus();
      },
      s.value);
}

Status LoadTable(const toml::table& root, const std::string& origin, DaemonOptions* options) {
  std::vector<Setting> settings = AllSettings(options);
  std::set<std::string> sections;
  for (const Setting& s : settings) sections.insert(s.key.substr(0, s.key.find('.')));
  for (const auto& [section_key, section_node] : root) {
    std::string section(section_key.str());
    if (sections.count(section) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": unknown section [", section,
                       "]; expected one of: ", absl::StrJoin(sections, ", ")));
    }
    const toml::table* table = section_node.as_table();
    if (table == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(origin, ": ", section, ": expected a table"));
    }
    for (const auto& [name_key, node] : *table) {
      std::string key = absl::StrCat(section, ".", std::string(name_key.str()));
      auto it = std::find_if(settings.begin(), settings.end(),
                             [&](const Setting& s) { return s.key == key; });
      if (it == settings.end()) {
        return absl::InvalidArgumentError(absl::StrCat(origin, ": unknown key ", key));
      }
      MOE_RETURN_IF_ERROR(Assign(origin, *it, node));
    }
  }
  return absl::OkStatus();
}

}  // namespace

Status LoadTomlString(const std::string& text, const std::string& origin, DaemonOptions* options) {
#if TOML_EXCEPTIONS
  toml::table root;
  try {
    root = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ":", e.source().begin.line, ":",
                                                   e.source().begin.column, ": ",
                                                   std::string(e.description())));
  }
#else
  toml::parse_result result = toml::parse(text, origin);
  if (!result) {
    const toml::parse_error& e = result.error();
    return absl::InvalidArgumentError(absl::StrCat(origin, ":", e.source().begin.line, ":",
                                                   e.source().begin.column, ": ",
                                                   std::string(e.description())));
  }
  toml::table root = std::move(result).table();
#endif
  return LoadTable(root, origin, options);
}

Status LoadTomlFile(const std::string& path, DaemonOptions* options) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("config file ", path, " cannot be read"));
  }
  std::stringstream text;
  text << in.rdbuf();
  return LoadTomlString(text.str(), path, options);
}

namespace {

Status OutOfRange(const std::string& key, const std::string& expected, const std::string& got) {
  return absl::InvalidArgumentError(absl::StrCat(key, ": expected ", expected, ", got ", got));
}

}  // namespace

Status Validate(const DaemonOptions& o) {
  const ServerOptions& s = o.server;
  if (s.address.empty()) return OutOfRange("server.address", "a host or IP address", "\"\"");
  if (s.port < 0 || s.port > 65535) {
    return OutOfRange("server.port", "a port in [0, 65535]", absl::StrCat(s.port));
  }
  if (s.metrics_port < -1 || s.metrics_port > 65535) {
    return OutOfRange("server.metrics_port", "a port in [0, 65535] or -1 (off)",
                      absl::StrCat(s.metrics_port));
  }
  if (s.metrics_port >= 0 && s.metrics_port == s.port && s.port != 0 &&
      s.metrics_address == s.address) {
    return OutOfRange("server.metrics_port", "a port other than server.port",
                      absl::StrCat(s.metrics_port));
  }
  constexpr int64_t kMinMessage = int64_t{1} << 20;
  constexpr int64_t kMaxMessage = int64_t{2047} << 20;  // gRPC limits are int
  if (s.max_message_bytes < kMinMessage || s.max_message_bytes > kMaxMessage) {
    return OutOfRange("server.max_message_bytes", "a size in [1 MiB, 2047 MiB]",
                      absl::StrCat(s.max_message_bytes));
  }
  if (s.keepalive_time_ms < 1000) {
    return OutOfRange("server.keepalive_time_ms", ">= 1000", absl::StrCat(s.keepalive_time_ms));
  }
  if (s.keepalive_timeout_ms < 100) {
    return OutOfRange("server.keepalive_timeout_ms", ">= 100",
                      absl::StrCat(s.keepalive_timeout_ms));
  }
  if (s.keepalive_min_ping_interval_ms < 0) {
    return OutOfRange("server.keepalive_min_ping_interval_ms", ">= 0",
                      absl::StrCat(s.keepalive_min_ping_interval_ms));
  }
  if (s.drain_timeout_ms < 0) {
    return OutOfRange("server.drain_timeout_ms", ">= 0", absl::StrCat(s.drain_timeout_ms));
  }
  if (s.model_name.find_first_of(" \t\n/") != std::string::npos) {
    return OutOfRange("server.model_name", "a name without spaces or '/'", s.model_name);
  }
  const SchedulerOptions& q = o.scheduler;
  if (q.max_batch_tokens < 1 || q.max_batch_tokens > (int64_t{1} << 24)) {
    return OutOfRange("scheduler.max_batch_tokens", "a count in [1, 16777216]",
                      absl::StrCat(q.max_batch_tokens));
  }
  if (q.max_queue_delay_us < 0 || q.max_queue_delay_us > 10'000'000) {
    return OutOfRange("scheduler.max_queue_delay_us", "a delay in [0, 10000000]",
                      absl::StrCat(q.max_queue_delay_us));
  }
  for (int64_t p : q.preferred_batch_tokens) {
    if (p < 1 || p > q.max_batch_tokens) {
      return OutOfRange(
          "scheduler.preferred_batch_tokens",
          absl::StrCat("sizes in [1, scheduler.max_batch_tokens = ", q.max_batch_tokens, "]"),
          absl::StrCat(p));
    }
  }
  if (q.max_queue_tokens < q.max_batch_tokens) {
    return OutOfRange("scheduler.max_queue_tokens",
                      absl::StrCat(">= scheduler.max_batch_tokens = ", q.max_batch_tokens),
                      absl::StrCat(q.max_queue_tokens));
  }
  if (q.default_timeout_us < 0) {
    return OutOfRange("scheduler.default_timeout_us", ">= 0", absl::StrCat(q.default_timeout_us));
  }
  if (o.engine.threads < 0 || o.engine.threads > 1024) {
    return OutOfRange("engine.threads", "a count in [0, 1024]", absl::StrCat(o.engine.threads));
  }
  if (o.engine.slots < 0 || o.engine.slots > 1024) {
    return OutOfRange("engine.slots", "a count in [0, 1024]", absl::StrCat(o.engine.slots));
  }
  if (Status b = ParseByteBudget(o.experts.cache_bytes).status(); !b.ok()) {
    return OutOfRange("experts.cache_bytes", "a byte size (0, 512M, 24G) or a percentage (40%)",
                      o.experts.cache_bytes);
  }
  if (o.experts.prefetch_depth < 1 || o.experts.prefetch_depth > 4) {
    return OutOfRange("experts.prefetch_depth", "a layer count in [1, 4]",
                      absl::StrCat(o.experts.prefetch_depth));
  }
  if (!(o.experts.prefetch_min_precision >= 0 && o.experts.prefetch_min_precision <= 1)) {
    return OutOfRange("experts.prefetch_min_precision", "a fraction in [0, 1]",
                      absl::StrCat(o.experts.prefetch_min_precision));
  }
  if (!experts::ParseEvictionKind(o.experts.eviction).ok()) {
    return OutOfRange("experts.eviction", "a policy: layer-lru, layer-lrfu, lru, lfu, lru2, reuse",
                      o.experts.eviction);
  }
  static const std::set<std::string> kLevels = {"trace", "debug",    "info", "warn",
                                                "error", "critical", "off"};
  if (!o.logging.level.empty() && kLevels.count(o.logging.level) == 0) {
    return OutOfRange("logging.level", "one of trace, debug, info, warn, error, critical, off",
                      o.logging.level);
  }
  if (o.logging.format != "text" && o.logging.format != "json") {
    return OutOfRange("logging.format", "text or json", o.logging.format);
  }
  return absl::OkStatus();
}

std::string ToToml(const DaemonOptions& options) {
  DaemonOptions copy = options;
  toml::table root;
  for (const Setting& s : AllSettings(&copy)) {
    std::string section = s.key.substr(0, s.key.find('.'));
    std::string name = s.key.substr(s.key.find('.') + 1);
    if (!root.contains(section)) root.insert(section, toml::table{});
    toml::table& t = *root[section].as_table();
    std::visit(
        [&](auto* ptr) {
          using T = std::remove_pointer_t<decltype(ptr)>;
          if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
            toml::array arr;
            for (int64_t v : *ptr) arr.push_back(v);
            t.insert(name, std::move(arr));
          } else if constexpr (std::is_same_v<T, EngineKind>) {
            t.insert(name, std::string(EngineKindName(*ptr)));
          } else if constexpr (std::is_same_v<T, int>) {
            t.insert(name, static_cast<int64_t>(*ptr));
          } else {
            t.insert(name, *ptr);
          }
        },
        s.value);
  }
  std::ostringstream out;
  out << root;
  return out.str();
}

}  // namespace moe::config
