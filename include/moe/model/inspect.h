// `moe-swarm inspect DIR`: a human-readable account of a checkpoint directory.
#pragma once

#include <ostream>
#include <string>

#include "moe/common/status.h"

namespace moe {

// Prints to `out` the MoE spec of the checkpoint in `dir` (family, architecture, hidden size,
// MoE layers served, experts, top-k, routing function, shared expert, dtypes, bytes per
// expert), the layout found in each MoE layer, the shards, and the tensor inventory (count,
// bytes and dtypes per kind), then any notes. When the checkpoint cannot be loaded it prints
// as much as it could read followed by "problem: <message>", and returns that error; OK when
// Model::Open(dir) would succeed. F8_E4M3 checkpoints load (so this returns OK) and are marked
// as not runnable by the engines.
Status Inspect(const std::string& dir, std::ostream& out);

}  // namespace moe
