// Device decoder of the host tier's lossless bf16 codec (kernels/weight_codec.h).
//
// Thread i of the grid-stride loop expands chunk i of a matrix: 16 elements from 16 sign/mantissa
// bytes (one 16-byte load), 8 code bytes (one 8-byte load) and their group's base byte, into two
// 16-byte stores. A code of 15 (rare: a value 2^14 below its group's largest) finds its exponent
// by a binary search of the matrix's sorted patch list.
#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda_status.h"
#include "kernels/weight_codec.h"

namespace moe::cuda {
namespace {

constexpr int kDecodeThreads = 256;
constexpr int kChunk = 16;  // elements a thread expands per step

struct DecodeMatrix {
  const uint4* sm;
  const uint2* codes;
  const uint8_t* base;
  uint4* dst;
  const uint32_t* patch_idx;  // this matrix's patches
  const uint8_t* patch_exp;
  int32_t patches;
};

struct DecodeKernelArgs {
  DecodeMatrix m[3];
  int64_t chunks;  // per matrix
};

__device__ __forceinline__ uint32_t PatchExponent(const DecodeMatrix& m, uint32_t element) {
  int lo = 0, hi = m.patches;  // the first patch index >= element
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (m.patch_idx[mid] < element) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  // EncodeExpert always writes the patch; a corrupt blob gets exponent 0 rather than a fault.
  return lo < m.patches && m.patch_idx[lo] == element ? m.patch_exp[lo] : 0u;
}

__global__ void __launch_bounds__(kDecodeThreads) DecodeExpertKernel(const DecodeKernelArgs a) {
  // Unrolled: a.m indexed by a constant stays in the parameter space (a runtime index copies it to
  // local memory: kernel_spills_test).
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    const DecodeMatrix& m = a.m[k];
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < a.chunks;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const uint4 s = __ldg(m.sm + j);
      const uint2 c = __ldg(m.codes + j);
      const uint32_t base = __ldg(m.base + (j * kChunk) / experts::kCodecGroup);
      const uint32_t sw[4] = {s.x, s.y, s.z, s.w};
      const uint32_t cw[2] = {c.x, c.y};
      uint32_t out[8];
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        const uint32_t byte = (sw[i / 4] >> (8 * (i % 4))) & 0xffu;
        const uint32_t code = (cw[i / 8] >> (4 * (i % 8))) & 0xfu;
        uint32_t e = code == experts::kCodecZeroCode ? 0u : base - code;
        if (code == experts::kCodecPatchCode) {
          e = PatchExponent(m, static_cast<uint32_t>(j * kChunk + i));
        }
        const uint32_t v = ((byte & 0x80u) << 8) | (e << 7) | (byte & 0x7fu);
        if (i % 2 == 0) {
          out[i / 2] = v;
        } else {
          out[i / 2] |= v << 16;
        }
      }
      m.dst[2 * j] = make_uint4(out[0], out[1], out[2], out[3]);
      m.dst[2 * j + 1] = make_uint4(out[4], out[5], out[6], out[7]);
    }
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

Status DecodeExpertArgs::Validate() const {
  if (blob == nullptr || slot == nullptr || !Aligned16(blob) || !Aligned16(slot)) {
    return absl::InvalidArgumentError("DecodeExpert: null or misaligned blob / slot");
  }
  const experts::CodecExpertLayout& l = layout;
  if (l.n <= 0 || l.n % experts::kCodecGroup != 0 || l.matrix_bytes % 16 != 0 ||
      l.codes_offset % 16 != 0 || l.base_offset % 16 != 0 || l.max_blob_bytes <= 0) {
    return absl::InvalidArgumentError("DecodeExpert: bad codec layout");
  }
  if (info.total_patches() > l.max_patches || info.patches[0] < 0 || info.patches[1] < 0 ||
      info.patches[2] < 0 || info.bytes > l.max_blob_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeExpert: ", info.total_patches(),
                                                   " patches or ", info.bytes,
                                                   " bytes exceed the layout"));
  }
  for (int64_t off : dst_offset) {
    if (off < 0 || off % 16 != 0) {
      return absl::InvalidArgumentError("DecodeExpert: slot offsets must be 16-byte multiples");
    }
  }
  if (blocks < 0) return absl::InvalidArgumentError("DecodeExpert: negative grid");
  return absl::OkStatus();
}

Status LaunchDecodeExpert(const DecodeExpertArgs& args, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(args.Validate());
  const experts::CodecExpertLayout& l = args.layout;
  DecodeKernelArgs k;
  k.chunks = l.n / kChunk;
  const auto* idx = reinterpret_cast<const uint32_t*>(args.blob + args.info.patch_idx_offset(l));
  const uint8_t* exp = args.blob + args.info.patch_exp_offset(l);
  int32_t first = 0;
  for (int m = 0; m < 3; ++m) {
    const uint8_t* block = args.blob + m * l.matrix_bytes;
    k.m[m].sm = reinterpret_cast<const uint4*>(block);
    k.m[m].codes = reinterpret_cast<const uint2*>(block + l.codes_offset);
    k.m[m].base = block + l.base_offset;
    k.m[m].dst = reinterpret_cast<uint4*>(args.slot + args.dst_offset[m]);
    k.m[m].patch_idx = idx + first;
    k.m[m].patch_exp = exp + first;
    k.m[m].patches = args.info.patches[m];
    first += args.info.patches[m];
  }
  const int64_t want = (k.chunks + kDecodeThreads - 1) / kDecodeThreads;
  const int blocks =
      args.blocks > 0 ? args.blocks : static_cast<int>(want < 1 ? 1 : (want > 1024 ? 1024 : want));
  DecodeExpertKernel<<<blocks, kDecodeThreads, 0, stream>>>(k);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace moe::cuda
