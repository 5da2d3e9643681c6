// experts.* settings of the daemon (the CUDA engine's expert cache): byte budgets with suffixes and
// percentages, eviction names, TOML and flags. CPU only.
#include <gtest/gtest.h>

#include <CLI/CLI.hpp>
#include <cmath>

#include "moe/config/flags.h"
#include "moe/config/options.h"

namespace moe::config {
namespace {

TEST(ExpertCacheConfig, ParseByteBudget) {
  struct Case {
    const char* text;
    int64_t bytes;
    double fraction;
  };
  for (const Case& c : {Case{"0", 0, 0}, Case{"123456", 123456, 0}, Case{"512M", 512LL << 20, 0},
                        Case{"24G", 24LL << 30, 0}, Case{"1.5T", 3LL << 39, 0},
                        Case{"64k", 64LL << 10, 0}, Case{"40%", 0, 0.4}, Case{"100%", 0, 1.0}}) {
    auto b = ParseByteBudget(c.text);
    ASSERT_TRUE(b.ok()) << c.text << ": " << b.status();
    EXPECT_EQ(b->bytes, c.bytes) << c.text;
    EXPECT_DOUBLE_EQ(b->fraction, c.fraction) << c.text;
  }
  for (const char* bad : {"", "-1", "+5", "1.5", "12X", "G", "0%", "101%", "abc", "4 G", "1e30T"}) {
    EXPECT_FALSE(ParseByteBudget(bad).ok()) << bad;
  }
}

TEST(ExpertCacheConfig, ValidateNamesTheKey) {
  DaemonOptions o;
  EXPECT_EQ(o.experts.cache_bytes, "0");
  EXPECT_TRUE(o.experts.prefetch);
  EXPECT_TRUE(o.experts.compress);
  EXPECT_TRUE(Validate(o).ok());
  o.experts.cache_bytes = "lots";
  Status s = Validate(o);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("experts.cache_bytes"), std::string::npos) << s;
  o.experts.cache_bytes = "8G";
  o.experts.eviction = "random";
  s = Validate(o);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("experts.eviction"), std::string::npos) << s;
  for (const char* name : {"layer-lru", "lru", "lfu", "lru2"}) {
    o.experts.eviction = name;
    EXPECT_TRUE(Validate(o).ok()) << name;
  }
  EXPECT_EQ(o.experts.prefetch_depth, 1);
  for (const int depth : {0, 5, -1}) {
    o.experts.prefetch_depth = depth;
    s = Validate(o);
    EXPECT_FALSE(s.ok()) << depth;
    EXPECT_NE(std::string(s.message()).find("experts.prefetch_depth"), std::string::npos) << s;
  }
  o.experts.prefetch_depth = 4;
  EXPECT_TRUE(Validate(o).ok());
  EXPECT_EQ(o.experts.prefetch_min_precision, 0.5);
  for (const double p : {-0.1, 1.5, std::nan("")}) {
    o.experts.prefetch_min_precision = p;
    s = Validate(o);
    EXPECT_FALSE(s.ok()) << p;
    EXPECT_NE(std::string(s.message()).find("experts.prefetch_min_precision: expected a fraction"),
              std::string::npos)
        << s;
  }
  for (const double p : {0.0, 0.8, 1.0}) {
    o.experts.prefetch_min_precision = p;
    EXPECT_TRUE(Validate(o).ok()) << p;
  }
}

TEST(ExpertCacheConfig, TomlAndFlags) {
  DaemonOptions o;
  ASSERT_TRUE(LoadTomlString(R"(
[experts]
cache_bytes = "40%"
eviction = "lru"
prefetch = false
prefetch_depth = 3
prefetch_min_precision = 0.75
compress = false
trace = "/tmp/trace.txt"
warm_trace = "/tmp/warm.txt"
)",
                             "test", &o)
                  .ok());
  EXPECT_EQ(o.experts.cache_bytes, "40%");
  EXPECT_EQ(o.experts.eviction, "lru");
  EXPECT_FALSE(o.experts.prefetch);
  EXPECT_EQ(o.experts.prefetch_depth, 3);
  EXPECT_EQ(o.experts.prefetch_min_precision, 0.75);
  EXPECT_FALSE(o.experts.compress);
  EXPECT_EQ(o.experts.trace, "/tmp/trace.txt");
  EXPECT_EQ(o.experts.warm_trace, "/tmp/warm.txt");
  CLI::App app;
  AddServeFlags(&app, &o);
  const char* argv[] = {"serve", "--expert-cache-bytes",
                        "24G",   "--expert-eviction",
                        "lfu",   "--expert-prefetch",
                        "true",  "--expert-trace",
                        "t.txt", "--expert-warm-trace",
                        "w.txt", "--expert-prefetch-depth",
                        "2",     "--expert-prefetch-min-precision",
                        "0.25",  "--expert-compress",
                        "true"};
  ASSERT_NO_THROW(app.parse(17, argv));
  EXPECT_EQ(o.experts.cache_bytes, "24G");
  EXPECT_EQ(o.experts.eviction, "lfu");
  EXPECT_TRUE(o.experts.prefetch);
  EXPECT_EQ(o.experts.trace, "t.txt");
  EXPECT_EQ(o.experts.warm_trace, "w.txt");
  EXPECT_EQ(o.experts.prefetch_depth, 2);
  EXPECT_EQ(o.experts.prefetch_min_precision, 0.25);
  EXPECT_TRUE(o.experts.compress);
  EXPECT_TRUE(Validate(o).ok());
  EXPECT_NE(ToToml(o).find("prefetch_min_precision = 0.25"), std::string::npos) << ToToml(o);
  EXPECT_NE(ToToml(o).find("cache_bytes = '24G'"), std::string::npos) << ToToml(o);
}

}  // namespace
}  // namespace moe::config
