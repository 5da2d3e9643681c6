// Running an Engine's Forward() in tests: outputs poisoned first (NaN bytes, ids -1, NaN weights),
// so anything the engine leaves unwritten shows. Shared by the CPU and CUDA engine tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "moe/common/dtype.h"
#include "moe/common/status.h"
#include "moe/engine/engine.h"

namespace moe::testing {

struct RunResult {
  Status status;
  std::vector<uint8_t> out;    // [n, hidden] in the activation dtype
  std::vector<int32_t> ids;    // [n, top_k]
  std::vector<float> weights;  // [n, top_k]
};

// Runs `engine` on `input` ([n, hidden] in `dtype`) with outputs poisoned (NaN bytes, ids -1).
inline RunResult RunForward(Engine& engine, int layer, DType dtype, const void* input, int64_t n,
                            int slot = 0) {
  const MoeSpec& spec = engine.spec();
  RunResult r;
  r.out.assign(static_cast<size_t>(n * spec.hidden) * DTypeSize(dtype), 0xff);
  r.ids.assign(static_cast<size_t>(n * spec.top_k()), -1);
  r.weights.assign(static_cast<size_t>(n * spec.top_k()), std::nanf(""));
  ForwardArgs args;
  args.layer = layer;
  args.dtype = dtype;
  args.n_tokens = n;
  args.input = input;
  args.output = r.out.data();
  args.expert_ids = r.ids.data();
  args.expert_weights = r.weights.data();
  args.slot = slot;
  r.status = engine.Forward(args);
  return r;
}

// RunForward on a byte buffer, adding a (non-fatal) test failure when Forward() fails.
inline RunResult ExpectForward(Engine& engine, int layer, DType dtype,
                               const std::vector<uint8_t>& input, int64_t n, int slot = 0) {
  RunResult r = RunForward(engine, layer, dtype, input.data(), n, slot);
  EXPECT_TRUE(r.status.ok()) << r.status;
  return r;
}

}  // namespace moe::testing
