// Validation of one hidden-state tensor [n_tokens, hidden], shared by both APIs. Every error is
// INVALID_ARGUMENT and names the field and the expected value.
#pragma once

#include <google/protobuf/repeated_field.h>

#include <cstdint>
#include <string>

#include "moe/common/dtype.h"
#include "moe/common/status.h"

namespace moe::server {

// Checks `shape` == [n_tokens, hidden] with 1 <= n_tokens <= max_tokens and that `nbytes` matches;
// returns n_tokens. `field` names the tensor ("hidden_states", "inputs[0]"), `data_field` the
// bytes ("hidden_states.data", "raw_input_contents[0]").
StatusOr<int64_t> CheckHiddenTensor(const std::string& field, const std::string& data_field,
                                    const google::protobuf::RepeatedField<int64_t>& shape,
                                    DType dtype, size_t nbytes, int hidden, int64_t max_tokens);

}  // namespace moe::server
