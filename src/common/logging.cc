#include "moe/common/logging.h"

#include <array>
#include <cctype>
#include <chrono>
#include <ctime>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "fmt/format.h"
#include "moe/config/defaults.h"
#include "spdlog/details/log_msg.h"
#include "spdlog/formatter.h"
#include "spdlog/logger.h"
#include "spdlog/pattern_formatter.h"
#include "spdlog/sinks/dist_sink.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace moe::log {
namespace {

thread_local std::string current_request_id;

constexpr std::string_view kLevelNames[] = {"trace", "debug",    "info", "warn",
                                            "error", "critical", "off"};

std::string_view LevelName(spdlog::level::level_enum level) {
  const auto i = static_cast<size_t>(level);
  return i < std::size(kLevelNames) ? kLevelNames[i] : "info";
}

// "2026-11-28T07:00:00.123456Z" (RFC 3339, UTC, microseconds).
void AppendTimestamp(std::chrono::system_clock::time_point t, spdlog::memory_buf_t& dest) {
  const auto since_epoch = t.time_since_epoch();
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(since_epoch - secs);
  const std::time_t tt = static_cast<std::time_t>(secs.count());
  std::tm tm{};
  gmtime_r(&tt, &tm);
  fmt::format_to(std::back_inserter(dest), "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 static_cast<long>(micros.count()));
}

// Appends `s` as the inside of a JSON string: quote, backslash and control characters escaped.
// Bytes >= 0x80 pass through (messages are UTF-8).
void AppendJsonEscaped(std::string_view s, spdlog::memory_buf_t& dest) {
  for (char c : s) {
    switch (c) {
      case '"':
        dest.append(std::string_view("\\\""));
        break;
      case '\\':
        dest.append(std::string_view("\\\\"));
        break;
      case '\n':
        dest.append(std::string_view("\\n"));
        break;
      case '\r':
        dest.append(std::string_view("\\r"));
        break;
      case '\t':
        dest.append(std::string_view("\\t"));
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          fmt::format_to(std::back_inserter(dest), "\\u{:04x}", static_cast<unsigned>(c));
        } else {
          dest.push_back(c);
        }
    }
  }
}

void AppendJsonField(std::string_view key, std::string_view value, spdlog::memory_buf_t& dest) {
  dest.push_back('"');
  dest.append(key);
  dest.append(std::string_view("\":\""));
  AppendJsonEscaped(value, dest);
  dest.push_back('"');
}

// One JSON object per line: ts, level, logger, msg, and request_id when the thread has one.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    dest.append(std::string_view("{\"ts\":\""));
    AppendTimestamp(msg.time, dest);
    dest.append(std::string_view("\","));
    AppendJsonField("level", LevelName(msg.level), dest);
    dest.push_back(',');
    AppendJsonField("logger", std::string_view(msg.logger_name.data(), msg.logger_name.size()),
                    dest);
    dest.push_back(',');
    AppendJsonField("msg", std::string_view(msg.payload.data(), msg.payload.size()), dest);
    if (!current_request_id.empty()) {
      dest.push_back(',');
      AppendJsonField("request_id", current_request_id, dest);
    }
    dest.append(std::string_view("}\n"));
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

// Text pattern flag %*: " [req=<id>]" when the logging thread has a request id, else nothing.
class RequestIdFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg&, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    if (current_request_id.empty()) return;
    dest.append(std::string_view(" [req="));
    dest.append(current_request_id);
    dest.push_back(']');
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<RequestIdFlag>();
  }
};

std::unique_ptr<spdlog::formatter> MakeFormatter(Format format) {
  if (format == Format::kJson) return std::make_unique<JsonFormatter>();
  auto f = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
  f->add_flag<RequestIdFlag>('*').set_pattern("%Y-%m-%dT%H:%M:%S.%fZ %L [%n]%* %v");
  return f;
}

// The sink every logger shares; Setup() swaps what it forwards to.
// Thread safety: mu serialises logger creation and Setup(); the sink itself is thread-safe.
struct State {
  std::mutex mu;
  std::shared_ptr<spdlog::sinks::dist_sink_mt> sink;

  State() : sink(std::make_shared<spdlog::sinks::dist_sink_mt>()) {
    sink->add_sink(std::make_shared<spdlog::sinks::stderr_sink_mt>());
    spdlog::set_formatter(MakeFormatter(Format::kText));
  }
};

State& GetState() {
  static State* state = new State();  // never destroyed: loggers may log during exit
  return *state;
}

std::shared_ptr<spdlog::logger> GetLocked(State& state, const std::string& name)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(state.mu) {
  if (auto existing = spdlog::get(name)) return existing;
  auto logger = std::make_shared<spdlog::logger>(name, state.sink);
  spdlog::initialize_logger(logger);  // registry's level and formatter; registers it
  return logger;
}

bool IsLowerHex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool IsAllZeros(std::string_view s) { return s.find_first_not_of('0') == std::string_view::npos; }

}  // namespace

StatusOr<spdlog::level::level_enum> ParseLevel(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(absl::string_view(name.data(), name.size()));
  if (lower == "warning") return spdlog::level::warn;
  if (lower == "err") return spdlog::level::err;
  for (size_t i = 0; i < std::size(kLevelNames); ++i) {
    if (lower == kLevelNames[i]) return static_cast<spdlog::level::level_enum>(i);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown log level '", std::string(name),
                   "' (want trace, debug, info, warn, error, critical or off)"));
}

StatusOr<Format> ParseFormat(std::string_view name) {
  if (name == "text") return Format::kText;
  if (name == "json") return Format::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown log format '", std::string(name), "' (want text or json)"));
}

absl::Status Setup(const Options& options) {
  std::string level_name = options.level;
  std::string origin = "log level";
  if (level_name.empty()) {
    if (const char* env = std::getenv(config::kLogLevelEnv); env != nullptr && *env != '\0') {
      level_name = env;
      origin = absl::StrCat("environment variable ", config::kLogLevelEnv);
    } else {
      level_name = "info";
    }
  }
  auto level = ParseLevel(level_name);
  if (!level.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": ", std::string(level.status().message())));
  }
  State& state = GetState();
  std::lock_guard lock(state.mu);
  spdlog::sink_ptr out = options.sink;
  if (out == nullptr) out = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  state.sink->set_sinks({out});
  spdlog::set_formatter(MakeFormatter(options.format));  // every logger, and future ones
  spdlog::set_level(*level);
  spdlog::set_default_logger(GetLocked(state, "moe"));
  return absl::OkStatus();
}

std::shared_ptr<spdlog::logger> Get(std::string_view name) {
  State& state = GetState();
  std::lock_guard lock(state.mu);
  return GetLocked(state, std::string(name));
}

// ---- Request ids ---------------------------------------------------------------------------

bool IsValidRequestId(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    const bool ok =
        std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::optional<std::string> TraceIdFromTraceparent(std::string_view traceparent) {
  // W3C Trace Context: version "-" trace-id "-" parent-id "-" flags, lowercase hex:
  //   00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01   (55 characters)
  // Later versions may append "-..." fields; version 00 must be exactly 55 characters.
  std::string_view s = traceparent;
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  if (s.size() < 55 || s[2] != '-' || s[35] != '-' || s[52] != '-') return std::nullopt;
  const std::string_view version = s.substr(0, 2);
  const std::string_view trace_id = s.substr(3, 32);
  const std::string_view parent_id = s.substr(36, 16);
  const std::string_view flags = s.substr(53, 2);
  if (!IsLowerHex(version) || !IsLowerHex(trace_id) || !IsLowerHex(parent_id) ||
      !IsLowerHex(flags)) {
    return std::nullopt;
  }
  if (version == "ff" || IsAllZeros(trace_id) || IsAllZeros(parent_id)) return std::nullopt;
  if (version == "00" ? s.size() != 55 : (s.size() > 55 && s[55] != '-')) return std::nullopt;
  return std::string(trace_id);
}

std::string NewRequestId() {
  thread_local std::mt19937_64 rng([] {
    std::random_device device;
    std::seed_seq seq{
        device(),
        device(),
        device(),
        device(),
        static_cast<unsigned>(std::hash<std::thread::id>()(std::this_thread::get_id())),
        static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count())};
    return std::mt19937_64(seq);
  }());
  uint64_t hi = 0;
  uint64_t lo = 0;
  do {
    hi = rng();
    lo = rng();
  } while (hi == 0 && lo == 0);  // all zeros is not a valid trace id
  return fmt::format("{:016x}{:016x}", hi, lo);
}

std::string RequestIdFromMetadata(std::string_view traceparent, std::string_view x_request_id) {
  if (IsValidRequestId(x_request_id)) return std::string(x_request_id);
  if (auto trace_id = TraceIdFromTraceparent(traceparent)) return *std::move(trace_id);
  return NewRequestId();
}

ScopedRequestId::ScopedRequestId(std::string_view request_id)
    : previous_(std::move(current_request_id)) {
  current_request_id.assign(request_id.data(), request_id.size());
}

ScopedRequestId::~ScopedRequestId() { current_request_id = std::move(previous_); }

std::string_view CurrentRequestId() { return current_request_id; }

absl::Status AnnotateWithRequestId(const absl::Status& status, std::string_view request_id) {
  if (status.ok() || request_id.empty()) return status;
  absl::Status annotated(
      status.code(),
      absl::StrCat(std::string(status.message()), " [request_id=", std::string(request_id), "]"));
  status.ForEachPayload([&annotated](absl::string_view type_url, const absl::Cord& payload) {
    annotated.SetPayload(type_url, payload);
  });
  return annotated;
}

}  // namespace moe::log
