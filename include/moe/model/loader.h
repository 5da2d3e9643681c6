// Builds a Model from an opened checkpoint (Model::Open(dir) is Checkpoint::Open + Load).
//
// For every MoE layer of the spec (config.h) the loader finds the family's tensors (per-expert
// or fused layout, see src/model/tensor_names.h), checks each shape against config.json and
// each dtype against the others, and records TensorViews into the mapped shards. It never
// reads tensor bytes. Failures: NOT_FOUND for a tensor the family requires that is absent;
// INVALID_ARGUMENT for a shape or dtype that disagrees with config.json or with the other
// expert weights, for MoE tensors in layers config.json says are dense or absent, for both
// layouts in one layer; UNIMPLEMENTED for F8 weights in the fused layout. Messages name the
// checkpoint file and tensor.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "moe/common/status.h"
#include "moe/model/model.h"
#include "moe/store/checkpoint.h"

namespace moe {

// What the loader saw besides the weights (for `inspect`).
struct LoadReport {
  std::vector<std::string> notes;    // non-fatal observations: config, index, dtypes
  std::vector<std::string> layouts;  // one line per MoE layer: block prefix and layout
};

class ModelLoader {
 public:
  // Builds the model; it keeps `checkpoint` (and so its mappings) alive. `report` may be null.
  static StatusOr<std::unique_ptr<Model>> Load(std::shared_ptr<const store::Checkpoint> checkpoint,
                                               LoadReport* report = nullptr);
};

}  // namespace moe
