// Engine-alone baseline: reading moe-engine-bench's JSON lines and interpolating between sizes.
#include "engine_baseline.h"

#include <algorithm>
#include <fstream>
#include <optional>

#include "nlohmann/json.hpp"

namespace moe::loadgen {

StatusOr<EngineBaseline> EngineBaseline::FromPoints(std::vector<EnginePoint> points, int slots) {
  if (points.empty()) return absl::InvalidArgumentError("engine baseline: no points");
  if (slots < 1) return absl::InvalidArgumentError("engine baseline: slots must be >= 1");
  std::sort(points.begin(), points.end(), [](const EnginePoint& a, const EnginePoint& b) {
    return a.batch_tokens < b.batch_tokens;
  });
  for (size_t i = 0; i < points.size(); ++i) {
    if (points[i].batch_tokens < 1 || !(points[i].us_per_forward > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("engine baseline: point ", i, " needs batch_tokens >= 1 and time > 0"));
    }
    if (i > 0 && points[i].batch_tokens == points[i - 1].batch_tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("engine baseline: batch size ", points[i].batch_tokens, " repeats"));
    }
  }
  EngineBaseline b;
  b.points_ = std::move(points);
  b.slots_ = slots;
  return b;
}

StatusOr<EngineBaseline> EngineBaseline::ReadJsonLines(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("engine baseline: cannot open ", path));
  std::vector<EnginePoint> points;
  std::optional<int> slots;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      return absl::InvalidArgumentError(
          absl::StrCat("engine baseline: ", path, ":", line_no, " is not JSON"));
    }
    if (!j.is_object() || !j.contains("batch_tokens") || !j.contains("us_per_forward")) continue;
    if (!j["batch_tokens"].is_number_integer() || !j["us_per_forward"].is_number()) {
      return absl::InvalidArgumentError(
          absl::StrCat("engine baseline: ", path, ":", line_no, " has non-numeric fields"));
    }
    const int line_slots =
        j.contains("slots") && j["slots"].is_number_integer() ? j["slots"].get<int>() : 1;
    if (slots && *slots != line_slots) {
      return absl::InvalidArgumentError(
          absl::StrCat("engine baseline: ", path, ":", line_no, " mixes slot counts"));
    }
    slots = line_slots;
    points.push_back({j["batch_tokens"].get<int64_t>(), j["us_per_forward"].get<double>()});
  }
  return FromPoints(std::move(points), slots.value_or(1));
}

double EngineBaseline::UsPerForward(double batch_tokens) const {
  const EnginePoint& first = points_.front();
  const EnginePoint& last = points_.back();
  if (batch_tokens <= static_cast<double>(first.batch_tokens)) return first.us_per_forward;
  if (batch_tokens >= static_cast<double>(last.batch_tokens)) {
    return last.us_per_forward * batch_tokens / static_cast<double>(last.batch_tokens);
  }
  auto hi = std::find_if(points_.begin(), points_.end(), [&](const EnginePoint& p) {
    return static_cast<double>(p.batch_tokens) >= batch_tokens;
  });
  auto lo = hi - 1;
  const double f = (batch_tokens - static_cast<double>(lo->batch_tokens)) /
                   static_cast<double>(hi->batch_tokens - lo->batch_tokens);
  return lo->us_per_forward + f * (hi->us_per_forward - lo->us_per_forward);
}

double EngineBaseline::TokensPerSecond(double batch_tokens) const {
  const double b = std::max(batch_tokens, 1.0);
  return slots_ * b / (UsPerForward(b) * 1e-6);
}

}  // namespace moe::loadgen
