// Logging set-up (levels, MOE_LOG, text and JSON lines) and request ids.
#include "moe/common/logging.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "absl/strings/cord.h"
#include "spdlog/logger.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

namespace moe::log {
namespace {

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

class LoggingTest : public ::testing::Test {
 protected:
  void SetUp() override { unsetenv("MOE_LOG"); }
  void TearDown() override {
    unsetenv("MOE_LOG");
    ASSERT_TRUE(moe::log::Setup({}).ok());  // back to stderr, info, text
  }
  // Routes every logger into `out_`.
  absl::Status SetupCapture(std::string level, Format format) {
    out_.str("");
    return moe::log::Setup({.level = std::move(level),
                            .format = format,
                            .sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_)});
  }
  std::ostringstream out_;
};

TEST_F(LoggingTest, ParseLevel) {
  EXPECT_EQ(*ParseLevel("trace"), spdlog::level::trace);
  EXPECT_EQ(*ParseLevel("DEBUG"), spdlog::level::debug);
  EXPECT_EQ(*ParseLevel("info"), spdlog::level::info);
  EXPECT_EQ(*ParseLevel("warn"), spdlog::level::warn);
  EXPECT_EQ(*ParseLevel("warning"), spdlog::level::warn);
  EXPECT_EQ(*ParseLevel("error"), spdlog::level::err);
  EXPECT_EQ(*ParseLevel("critical"), spdlog::level::critical);
  EXPECT_EQ(*ParseLevel("off"), spdlog::level::off);
  EXPECT_EQ(ParseLevel("verbose").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseFormat("json"), Format::kJson);
  EXPECT_EQ(ParseFormat("xml").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(LoggingTest, TextLinesCarryLevelLoggerAndRequestId) {
  ASSERT_TRUE(SetupCapture("debug", Format::kText).ok());
  auto logger = Get("sched");
  logger->debug("queued {} tokens", 12);
  {
    ScopedRequestId id("req-42");
    logger->info("dispatched");
  }
  logger->trace("below the level");
  const auto lines = Lines(out_.str());
  ASSERT_EQ(lines.size(), 2u) << out_.str();
  const std::regex ts(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z )");
  EXPECT_TRUE(std::regex_search(lines[0], ts)) << lines[0];
  EXPECT_NE(lines[0].find(" D [sched] queued 12 tokens"), std::string::npos) << lines[0];
  EXPECT_NE(lines[1].find(" I [sched] [req=req-42] dispatched"), std::string::npos) << lines[1];
}

TEST_F(LoggingTest, JsonLinesAreOneObjectEach) {
  ASSERT_TRUE(SetupCapture("info", Format::kJson).ok());
  {
    ScopedRequestId id("4bf92f3577b34da6a3ce929d0e0e4736");
    Get("server")->warn("bad \"input\"\nline two\t\x01");
  }
  spdlog::error("through the default logger");
  const auto lines = Lines(out_.str());
  ASSERT_EQ(lines.size(), 2u) << out_.str();
  const auto first = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(first["level"], "warn");
  EXPECT_EQ(first["logger"], "server");
  EXPECT_EQ(first["msg"], "bad \"input\"\nline two\t\x01");
  EXPECT_EQ(first["request_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_TRUE(std::regex_match(first["ts"].get<std::string>(),
                               std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)")));
  const auto second = nlohmann::json::parse(lines[1]);
  EXPECT_EQ(second["level"], "error");
  EXPECT_EQ(second["logger"], "moe");
  EXPECT_FALSE(second.contains("request_id"));
}

TEST_F(LoggingTest, LevelFromEnvironmentUnlessGiven) {
  setenv("MOE_LOG", "error", 1);
  ASSERT_TRUE(SetupCapture("", Format::kText).ok());
  Get("t")->warn("hidden");
  Get("t")->error("shown");
  EXPECT_EQ(Lines(out_.str()).size(), 1u) << out_.str();

  ASSERT_TRUE(SetupCapture("debug", Format::kText).ok());  // the flag wins over MOE_LOG
  Get("t")->debug("shown too");
  EXPECT_EQ(Lines(out_.str()).size(), 1u) << out_.str();

  setenv("MOE_LOG", "chatty", 1);
  const absl::Status bad = SetupCapture("", Format::kText);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("MOE_LOG"), std::string::npos) << bad;
  EXPECT_EQ(SetupCapture("loud", Format::kText).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(LoggingTest, LoggersCreatedBeforeSetupFollowIt) {
  auto early = Get("early");
  ASSERT_TRUE(SetupCapture("warn", Format::kJson).ok());
  early->info("hidden");
  early->warn("shown");
  const auto lines = Lines(out_.str());
  ASSERT_EQ(lines.size(), 1u) << out_.str();
  EXPECT_EQ(nlohmann::json::parse(lines[0])["logger"], "early");
}

TEST(RequestIdTest, PrefersAValidXRequestId) {
  const std::string tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  EXPECT_EQ(RequestIdFromMetadata(tp, "client-id_1.2:3"), "client-id_1.2:3");
  // Invalid x-request-id (log injection, too long): the traceparent's trace id instead.
  EXPECT_EQ(RequestIdFromMetadata(tp, "evil\nline"), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(RequestIdFromMetadata(tp, std::string(129, 'a')), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(RequestIdFromMetadata(tp, ""), "4bf92f3577b34da6a3ce929d0e0e4736");
}

TEST(RequestIdTest, TraceparentValidation) {
  EXPECT_EQ(TraceIdFromTraceparent(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 "),
            "4bf92f3577b34da6a3ce929d0e0e4736");
  // A future version may carry more fields.
  EXPECT_EQ(TraceIdFromTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz"),
            "4bf92f3577b34da6a3ce929d0e0e4736");
  for (const char* bad : {
           "", "garbage",
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  // v00 is exact
           "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",        // forbidden version
           "00-00000000000000000000000000000000-00f067aa0ba902b7-01",        // zero trace id
           "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",        // zero parent id
           "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",        // upper case
           "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",         // short trace id
       }) {
    EXPECT_FALSE(TraceIdFromTraceparent(bad).has_value()) << bad;
  }
}

TEST(RequestIdTest, GeneratedWhenAbsentOrInvalid) {
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) {
    const std::string id = RequestIdFromMetadata("", "");
    EXPECT_TRUE(std::regex_match(id, std::regex("[0-9a-f]{32}"))) << id;
    EXPECT_TRUE(IsValidRequestId(id));
    seen.insert(id);
  }
  EXPECT_EQ(seen.size(), 100u);
  EXPECT_EQ(RequestIdFromMetadata("nonsense", "bad id").size(), 32u);
}

TEST(RequestIdTest, ScopedIdsNestAndRestore) {
  EXPECT_EQ(CurrentRequestId(), "");
  {
    ScopedRequestId outer("a");
    EXPECT_EQ(CurrentRequestId(), "a");
    {
      ScopedRequestId inner("b");
      EXPECT_EQ(CurrentRequestId(), "b");
    }
    EXPECT_EQ(CurrentRequestId(), "a");
    std::thread([] { EXPECT_EQ(CurrentRequestId(), ""); }).join();  // per thread
  }
  EXPECT_EQ(CurrentRequestId(), "");
}

TEST(RequestIdTest, AnnotateWithRequestId) {
  absl::Status s = absl::NotFoundError("model 'x' not loaded");
  s.SetPayload("type.example/detail", absl::Cord("payload"));
  const absl::Status a = AnnotateWithRequestId(s, "r-1");
  EXPECT_EQ(a.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(a.message(), "model 'x' not loaded [request_id=r-1]");
  EXPECT_EQ(a.GetPayload("type.example/detail"), absl::Cord("payload"));
  EXPECT_TRUE(AnnotateWithRequestId(absl::OkStatus(), "r-1").ok());
  EXPECT_EQ(AnnotateWithRequestId(s, "").message(), s.message());
}

}  // namespace
}  // namespace moe::log
