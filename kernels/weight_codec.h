// Device decoder of the host tier's lossless bf16 codec (moe/experts/weight_codec.h): expands one
// expert's compressed blob (copied into device memory) into its slot, bit for bit what the
// checkpoint holds. experts::DecodeExpert is the reference.
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>

#include "moe/common/status.h"
#include "moe/experts/weight_codec.h"

namespace moe::cuda {

struct DecodeExpertArgs {
  const uint8_t* blob = nullptr;                  // device copy of the blob (16-byte aligned)
  char* slot = nullptr;                           // device slot (matrix k at slot + dst_offset[k])
  std::array<int64_t, 3> dst_offset = {0, 0, 0};  // 16-byte multiples
  experts::CodecExpertLayout layout;
  experts::CodecExpertInfo info;
  int blocks = 0;  // grid size (0: one block per 256 chunks of each matrix)

  // InvalidArgument on null or misaligned pointers, a bad layout, or an `info` that does not fit
  // it (experts::ValidateCodecInfo).
  Status Validate() const;
};

// Enqueues the decode on `stream`.
Status LaunchDecodeExpert(const DecodeExpertArgs& args, cudaStream_t stream);

}  // namespace moe::cuda
