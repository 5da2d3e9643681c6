#include "moe/engine/engine.h"

namespace moe {

Status ValidateForwardArgs(const MoeSpec& spec, const ForwardArgs& args, int num_slots,
                           int64_t max_batch_tokens) {
  if (!spec.IsMoeLayer(args.layer)) {
    return absl::NotFoundError(absl::StrCat("layer ", args.layer, " is not a MoE layer of this model"));
  }
  if (!IsComputeDType(args.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype ", std::string(DTypeName(args.dtype)), " is not supported; expected F32, F16 or BF16"));
  }
  if (args.n_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("n_tokens must be > 0, got ", args.n_tokens));
  }
  if (args.n_tokens > max_batch_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("n_tokens ", args.n_tokens,
                                                   " exceeds the engine's max_batch_tokens ",
                                                   max_batch_tokens));
  }
  if (args.input == nullptr || args.output == nullptr) {
    return absl::InvalidArgumentError("input and output must be non-null");
  }
  if (args.slot < 0 || args.slot >= num_slots) {
    return absl::InvalidArgumentError(
        absl::StrCat("slot ", args.slot, " out of range [0, ", num_slots, ")"));
  }
  return absl::OkStatus();
}

}  // namespace moe
