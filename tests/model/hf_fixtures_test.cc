// Every checkpoint under tests/fixtures/hf/ (written by transformers' save_pretrained, see its
// README.md) must open, with the MoE layers its io.safetensors metadata records.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include "moe/model/inspect.h"
#include "moe/model/model.h"
#include "moe/store/safetensors.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> FixtureDirs() {
  const char* source = std::getenv("MOE_SOURCE_DIR");
  const fs::path root = fs::path(source != nullptr ? source : ".") / "tests/fixtures/hf";
  std::vector<std::string> dirs;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    if (entry.is_directory() && fs::exists(entry.path() / "config.json")) {
      dirs.push_back(entry.path().string());
    }
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

TEST(HfFixturesTest, EveryFixtureOpens) {
  const std::vector<std::string> dirs = FixtureDirs();
  if (dirs.empty()) GTEST_SKIP() << "no fixtures under tests/fixtures/hf";
  for (const std::string& dir : dirs) {
    SCOPED_TRACE(dir);
    auto model = Model::Open(dir);
    ASSERT_TRUE(model.ok()) << model.status();
    const MoeSpec& spec = (*model)->spec();
    EXPECT_EQ(IsComputeDType(spec.weight_dtype), true);
    for (const MoeLayerWeights& w : (*model)->layers()) {
      ASSERT_EQ(w.experts.size(), static_cast<size_t>(spec.n_experts()));
      EXPECT_EQ(w.experts.back().down.shape,
                (std::vector<int64_t>{spec.hidden, spec.moe_intermediate}));
      EXPECT_EQ(w.correction_bias.has_value(), spec.routing.has_correction_bias);
      EXPECT_EQ(w.shared.has_value(), spec.shared_intermediate > 0);
    }
    // io.safetensors records the MoE layers transformers built.
    auto io = store::SafetensorsFile::Open((fs::path(dir) / "io.safetensors").string());
    if (io.ok() && (*io)->metadata().contains("moe_layers")) {
      const auto layers = nlohmann::json::parse((*io)->metadata().at("moe_layers"));
      EXPECT_EQ(spec.moe_layers, layers.get<std::vector<int>>());
    }
    std::ostringstream out;
    EXPECT_TRUE(Inspect(dir, out).ok()) << out.str();
  }
}

}  // namespace
}  // namespace moe
