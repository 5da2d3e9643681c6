// Daemon configuration: TOML loading, flags over the file, validation naming the key, printing.
#include <gtest/gtest.h>

#include <CLI/CLI.hpp>
#include <fstream>

#include "moe/config/flags.h"
#include "moe/config/options.h"

namespace moe::config {
namespace {

TEST(ConfigTest, DefaultsAreValidAndMatchTheSharedConstants) {
  DaemonOptions o;
  EXPECT_TRUE(Validate(o).ok());
  EXPECT_EQ(o.server.port, 50051);
  EXPECT_EQ(o.server.metrics_port, 9091);
  EXPECT_EQ(o.server.address, "0.0.0.0");
  EXPECT_EQ(o.server.drain_timeout_ms, kDefaultDrainTimeoutSeconds * 1000);
  // A 16k-token BF16 batch of hidden 7168 fits in one message.
  EXPECT_GT(o.server.max_message_bytes, int64_t{16384} * 7168 * 2);
  EXPECT_EQ(o.engine.kind, EngineKind::kAuto);
}

TEST(ConfigTest, TomlSetsEveryKindOfValue) {
  DaemonOptions o;
  Status s = LoadTomlString(R"(
[server]
port = 6000
address = "127.0.0.1"
keepalive_permit_without_calls = false
[scheduler]
max_batch_tokens = 1024
preferred_batch_tokens = [256, 512]
[engine]
kind = "cpu"
threads = 3
[model]
dir = "/models/x"
[logging]
level = "debug"
format = "json"
)",
                            "test.toml", &o);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(o.server.port, 6000);
  EXPECT_EQ(o.server.address, "127.0.0.1");
  EXPECT_FALSE(o.server.keepalive_permit_without_calls);
  EXPECT_EQ(o.scheduler.max_batch_tokens, 1024);
  EXPECT_EQ(o.scheduler.preferred_batch_tokens, (std::vector<int64_t>{256, 512}));
  EXPECT_EQ(o.engine.kind, EngineKind::kCpu);
  EXPECT_EQ(o.engine.threads, 3);
  EXPECT_EQ(o.model.dir, "/models/x");
  EXPECT_EQ(o.logging.level, "debug");
  EXPECT_EQ(o.logging.format, "json");
  EXPECT_EQ(o.server.metrics_port, 9091);  // untouched keys keep their defaults
  EXPECT_TRUE(Validate(o).ok());
}

TEST(ConfigTest, TomlErrorsNameTheKey) {
  struct Case {
    const char* text;
    const char* want;
  };
  for (const Case& c : std::vector<Case>{
           {"[server]\nprot = 1\n", "test.toml: unknown key server.prot"},
           {"[srv]\nport = 1\n", "unknown section [srv]"},
           {"[server]\nport = \"x\"\n", "server.port: expected an integer"},
           {"[engine]\nkind = \"tpu\"\n", "engine.kind: expected \"auto\", \"cpu\" or \"cuda\""},
           {"[scheduler]\npreferred_batch_tokens = [1, \"a\"]\n",
            "scheduler.preferred_batch_tokens: expected an array of integers"},
           {"[server]\nport = \n", "test.toml:2:"},
       }) {
    DaemonOptions o;
    Status s = LoadTomlString(c.text, "test.toml", &o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_NE(s.message().find(c.want), std::string::npos) << s.message() << " vs " << c.want;
  }
  DaemonOptions o;
  EXPECT_EQ(LoadTomlFile("/nonexistent/moe.toml", &o).code(), absl::StatusCode::kNotFound);
}

TEST(ConfigTest, ValidationNamesTheKeyAndTheExpectedRange) {
  struct Case {
    std::function<void(DaemonOptions*)> mutate;
    const char* want;
  };
  for (const Case& c : std::vector<Case>{
           {[](auto* o) { o->server.port = 70000; }, "server.port: expected a port in [0, 65535]"},
           {[](auto* o) { o->server.metrics_port = -2; }, "server.metrics_port"},
           {[](auto* o) { o->server.max_message_bytes = 10; }, "server.max_message_bytes"},
           {[](auto* o) { o->server.keepalive_time_ms = 5; }, "server.keepalive_time_ms"},
           {[](auto* o) { o->server.drain_timeout_ms = -1; }, "server.drain_timeout_ms"},
           {[](auto* o) { o->scheduler.max_batch_tokens = 0; }, "scheduler.max_batch_tokens"},
           {[](auto* o) { o->scheduler.preferred_batch_tokens = {99999}; },
            "scheduler.preferred_batch_tokens: expected sizes in [1, scheduler.max_batch_tokens"},
           {[](auto* o) { o->scheduler.max_queue_tokens = 1; }, "scheduler.max_queue_tokens"},
           {[](auto* o) { o->engine.threads = -1; }, "engine.threads"},
           {[](auto* o) { o->logging.level = "loud"; }, "logging.level: expected one of"},
           {[](auto* o) { o->logging.format = "xml"; }, "logging.format: expected text or json"},
       }) {
    DaemonOptions o;
    c.mutate(&o);
    Status s = Validate(o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find(c.want), std::string::npos) << s.message();
  }
}

TEST(ConfigTest, FlagsOverrideTheFileAndHelpShowsBuiltInDefaults) {
  DaemonOptions o;
  CLI::App app;
  AddServeFlags(&app, &o);
  // The file, applied after the flags were declared and before parsing.
  ASSERT_TRUE(
      LoadTomlString("[server]\nport = 6000\nmetrics_port = 7000\n[engine]\nkind = \"cuda\"\n",
                     "f.toml", &o)
          .ok());
  std::vector<std::string> args = {"--engine", "cpu", "--port", "6001", "--preferred-batch-tokens",
                                   "64,128"};
  std::reverse(args.begin(), args.end());
  app.parse(args);
  EXPECT_EQ(o.server.port, 6001);          // flag wins
  EXPECT_EQ(o.server.metrics_port, 7000);  // file value kept
  EXPECT_EQ(o.engine.kind, EngineKind::kCpu);
  EXPECT_EQ(o.scheduler.preferred_batch_tokens, (std::vector<int64_t>{64, 128}));
  std::string help = app.help();
  EXPECT_NE(help.find("--port INT=50051"), std::string::npos) << help;
  EXPECT_NE(help.find("[toml: server.port]"), std::string::npos);
  EXPECT_NE(help.find("--engine KIND=auto"), std::string::npos);
}

TEST(ConfigTest, EverySettingHasAUniqueKeyAndFlag) {
  DaemonOptions o;
  std::set<std::string> keys, flags;
  for (const Setting& s : AllSettings(&o)) {
    EXPECT_TRUE(keys.insert(s.key).second) << s.key;
    EXPECT_TRUE(flags.insert(s.flag).second) << s.flag;
    EXPECT_FALSE(s.help.empty()) << s.key;
  }
}

TEST(ConfigTest, ToTomlRoundTrips) {
  DaemonOptions o;
  o.server.port = 1234;
  o.scheduler.preferred_batch_tokens = {8, 16};
  o.engine.kind = EngineKind::kCuda;
  o.logging.level = "warn";
  std::string text = ToToml(o);
  DaemonOptions back;
  Status s = LoadTomlString(text, "round-trip", &back);
  ASSERT_TRUE(s.ok()) << s << "\n" << text;
  EXPECT_EQ(ToToml(back), text);
  EXPECT_EQ(back.server.port, 1234);
  EXPECT_EQ(back.engine.kind, EngineKind::kCuda);
}

}  // namespace
}  // namespace moe::config
