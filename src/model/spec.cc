#include "moe/model/spec.h"

#include <algorithm>

namespace moe {

std::string_view FamilyName(Family family) {
  switch (family) {
    case Family::kMixtral:
      return "mixtral";
    case Family::kQwen2Moe:
      return "qwen2_moe";
    case Family::kQwen3Moe:
      return "qwen3_moe";
    case Family::kDeepseekV2:
      return "deepseek_v2";
    case Family::kDeepseekV3:
      return "deepseek_v3";
    case Family::kOlmoe:
      return "olmoe";
  }
  return "?";
}

bool MoeSpec::IsMoeLayer(int layer) const {
  return std::binary_search(moe_layers.begin(), moe_layers.end(), layer);
}

int64_t MoeSpec::BytesPerExpert() const {
  return 3 * static_cast<int64_t>(hidden) * moe_intermediate *
         static_cast<int64_t>(DTypeSize(weight_dtype));
}

}  // namespace moe
