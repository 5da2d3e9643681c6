#include "tensor_check.h"

#include "absl/strings/str_join.h"

namespace moe::server {

StatusOr<int64_t> CheckHiddenTensor(const std::string& field, const std::string& data_field,
                                    const google::protobuf::RepeatedField<int64_t>& shape,
                                    DType dtype, size_t nbytes, int hidden, int64_t max_tokens) {
  if (shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".shape: expected [n_tokens, ", hidden,
                                                   "], got [", absl::StrJoin(shape, ", "), "]"));
  }
  int64_t n_tokens = shape.Get(0);
  if (shape.Get(1) != hidden) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".shape[1]: expected hidden size ", hidden, ", got ", shape.Get(1)));
  }
  if (n_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".shape[0]: expected n_tokens >= 1 (empty batch), got ", n_tokens));
  }
  if (n_tokens > max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".shape[0]: n_tokens ", n_tokens,
                                                   " exceeds max_batch_tokens ", max_tokens,
                                                   "; split the request"));
  }
  uint64_t want =
      static_cast<uint64_t>(n_tokens) * static_cast<uint64_t>(hidden) * DTypeSize(dtype);
  if (nbytes != want) {
    return absl::InvalidArgumentError(
        absl::StrCat(data_field, ": expected ", want, " bytes (", n_tokens, " x ", hidden, " x ",
                     std::string(DTypeName(dtype)), "), got ", nbytes));
  }
  return n_tokens;
}

}  // namespace moe::server
