// The one place where absl::Status meets grpc::Status (both directions).
#pragma once

#include <grpcpp/support/status.h>

#include "moe/common/status.h"

namespace moe::server {

// Same code (the numbering is shared), same message. OK stays OK.
grpc::Status ToGrpcStatus(const Status& status);
// For the client side (moe-swarm client, tests).
Status FromGrpcStatus(const grpc::Status& status);
// Canonical code name, e.g. "INVALID_ARGUMENT".
std::string StatusCodeName(int code);

}  // namespace moe::server
