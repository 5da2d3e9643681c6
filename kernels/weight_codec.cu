// Device decoder of the host tier's lossless bf16 codec (kernels/weight_codec.h).
//
// A block takes kDecodeThreads consecutive chunks of one matrix (a work item):
// 1. At its start it fills a 2^12-entry decoding table in shared memory from the code's ranges
//    (symbol | bits << 4 at every index whose leading bits are the symbol's code), then from it a
//    table of pairs: the first symbol of 12 bits and, where it fits, the one after it.
// 2. Thread t expands chunk t of the item: from the chunk's entry point it peeks 12 bits of a
//    64-bit window, looks up one or two symbols, shifts by their lengths and refills the window a
//    word at a time, storing the symbols, eight to a word, in a shared-memory row of its own
//    (rows of an odd number of words: few bank conflicts).
// 3. The block then turns symbols into exponents (base - symbol, 0, or a patch found by a binary
//    search of the matrix's sorted patch list) and merges them with the sign/mantissa bytes in
//    element order: 16 elements a thread a step, one 16-byte load and two 16-byte stores,
//    coalesced.
// Words past a stream's end read as zero, so a corrupt blob decodes to wrong values, never out of
// bounds.
// NOTES (H200, session 43, benches/expert_cache/codec_bench.cc): a Qwen3-30B-A3B expert (9 MiB)
// takes 45 us alone on the GPU, 37 us median beside the cache's kernels, against 15 / 9 us for
// the exponent nibbles this replaced (one 16-element chunk a thread, no table). Variants measured:
// exponents in step 2 instead of step 3 with one symbol a lookup 38 us; one or two 39.9 us; with
// 64-element chunks (1.2% more bytes) 31.6 us. Halving the chunks saved only 8 us, so most of the
// time is not the decoding chain: with one thread a chunk there are ~9 warps an SM, and step 3's
// loads, two a thread in flight, stream far below the bandwidth. Not yet tried: more threads
// (and loads in flight) for step 3 than for step 2.
#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda_status.h"
#include "kernels/weight_codec.h"

namespace moe::cuda {
namespace {

constexpr int kDecodeThreads = 128;                      // chunks of a work item (one a thread)
constexpr int kRowWords = experts::kCodecChunk / 8 + 1;  // a chunk's symbols, 8 a word
constexpr int kTableSize = 1 << experts::kCodecMaxCodeBits;
static_assert(experts::kCodecChunk % 16 == 0 && experts::kCodecGroup % 16 == 0 &&
              (experts::kCodecChunk / 8) % 2 == 0);

struct DecodeMatrix {
  const uint4* sm;
  const uint8_t* base;
  const uint16_t* chunk_start;
  const uint32_t* super_start;
  const uint32_t* stream;
  uint32_t stream_words;
  uint4* dst;
  const uint32_t* patch_idx;  // this matrix's patches
  const uint8_t* patch_exp;
  int32_t patches;
};

struct DecodeKernelArgs {
  DecodeMatrix m[3];
  int64_t n;                                // elements of a matrix
  int64_t chunks;                           // per matrix
  int32_t items;                            // work items per matrix
  uint16_t starts[experts::kCodecSymbols];  // experts::CodecTableRanges
  uint16_t ends[experts::kCodecSymbols];
  uint8_t bits[experts::kCodecSymbols];  // CodecExpertInfo::code_bits
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

__device__ __forceinline__ uint32_t StreamWord(const DecodeMatrix& m, uint32_t w) {
  return w < m.stream_words ? __ldg(m.stream + w) : 0u;
}

// Steps 2 and 3 of the file comment for work item `item` of matrix `m`.
__device__ __forceinline__ void DecodeItem(const DecodeMatrix& m, const DecodeKernelArgs& a,
                                           int32_t item, const uint16_t* pairs, uint32_t* rows) {
  const int64_t first_chunk = int64_t{item} * kDecodeThreads;
  const int64_t c = first_chunk + threadIdx.x;
  if (c < a.chunks) {
    // Symbols only, eight to a word: the loop carries nothing but the window, so that its steps
    // (a lookup, two shifts) follow each other closely; the refill's load is issued a word ahead.
    uint32_t* row = rows + threadIdx.x * kRowWords;
    const int count =
        static_cast<int>(min(int64_t{experts::kCodecChunk}, a.n - c * experts::kCodecChunk));
    const uint32_t pos =
        __ldg(m.super_start + c / experts::kCodecSuperChunks) + __ldg(m.chunk_start + c);
    uint32_t w = pos >> 5;
    uint64_t window = ((uint64_t{StreamWord(m, w)} << 32) | StreamWord(m, w + 1)) << (pos & 31);
    int valid = 64 - static_cast<int>(pos & 31);  // bits of `window` that are codes
    w += 2;
    uint32_t next = StreamWord(m, w);
    uint64_t symbols = 0;  // nibbles not yet stored, the earliest lowest
    int held = 0;
    int word = 0;
    for (int i = 0; i < count;) {
      const bool refill = valid < 32;
      const int shift = refill ? 32 - valid : 0;
      window |= refill ? uint64_t{next} << shift : 0;
      valid += refill ? 32 : 0;
      if (refill) next = StreamWord(m, ++w);
      // One or two symbols a lookup (the pair table).
      const uint32_t entry = pairs[window >> (64 - experts::kCodecMaxCodeBits)];
      const int len0 = static_cast<int>((entry >> 8) & 15u);
      const int both = static_cast<int>(entry >> 12);
      const bool two = both > len0 && i + 1 < count;
      const int used = two ? both : len0;
      window <<= used;
      valid -= used;
      symbols |= uint64_t{entry & (two ? 0xffu : 0xfu)} << (4 * held);
      held += two ? 2 : 1;
      i += two ? 2 : 1;
      if (held >= 8) {
        row[word++] = static_cast<uint32_t>(symbols);
        symbols >>= 32;
        held -= 8;
      }
    }
  }
  __syncthreads();
  // Step 3: 16 elements (one group's share) a thread a step.
  const int64_t first = first_chunk * experts::kCodecChunk;  // element
  const int64_t quads = (min(a.n - first, int64_t{kDecodeThreads} * experts::kCodecChunk)) / 16;
#pragma unroll 2
  for (int64_t q = threadIdx.x; q < quads; q += kDecodeThreads) {
    const uint32_t* r = rows + (q / (experts::kCodecChunk / 16)) * kRowWords +
                        (q % (experts::kCodecChunk / 16)) * 2;
    const uint32_t sym[2] = {r[0], r[1]};
    const int64_t element = first + 16 * q;
    const uint4 s = __ldg(m.sm + element / 16);
    const uint32_t base = __ldg(m.base + element / experts::kCodecGroup);
    const uint32_t sw[4] = {s.x, s.y, s.z, s.w};
    uint32_t out[8];
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint32_t byte = (sw[i / 4] >> (8 * (i % 4))) & 0xffu;
      const uint32_t code = (sym[i / 8] >> (4 * (i % 8))) & 15u;
      uint32_t e = code == experts::kCodecZeroCode ? 0u : base - code;
      if (code == experts::kCodecPatchCode) {
        e = PatchExponent(m, static_cast<uint32_t>(element + i));
      }
      const uint32_t v = ((byte & 0x80u) << 8) | ((e & 0xffu) << 7) | (byte & 0x7fu);
      if (i % 2 == 0) {
        out[i / 2] = v;
      } else {
        out[i / 2] |= v << 16;
      }
    }
    m.dst[2 * (element / 16)] = make_uint4(out[0], out[1], out[2], out[3]);
    m.dst[2 * (element / 16) + 1] = make_uint4(out[4], out[5], out[6], out[7]);
  }
  __syncthreads();  // the rows are free for the next item
}

__global__ void __launch_bounds__(kDecodeThreads) DecodeExpertKernel(const DecodeKernelArgs a) {
  __shared__ uint8_t single[kTableSize];
  __shared__ uint16_t pairs[kTableSize];
  __shared__ uint32_t rows[kDecodeThreads * kRowWords];
  for (int j = threadIdx.x; j < kTableSize; j += kDecodeThreads) single[j] = 0;
  __syncthreads();
#pragma unroll
  for (int s = 0; s < experts::kCodecSymbols; ++s) {
    for (int j = a.starts[s] + threadIdx.x; j < a.ends[s]; j += kDecodeThreads) {
      single[j] = static_cast<uint8_t>(s | (a.bits[s] << 4));
    }
  }
  __syncthreads();
  // pairs[j]: the symbol that the 12 bits j start with (bits 0-3), its code length (8-11), and
  // when the next symbol's code also ends within the 12 bits, that symbol (4-7) and both lengths
  // (12-15; else 12-15 repeat the first length). 0: no code starts so (a corrupt stream).
  for (int j = threadIdx.x; j < kTableSize; j += kDecodeThreads) {
    const uint32_t first = single[j];
    const uint32_t len0 = first >> 4;
    uint32_t entry = (first & 15u) | (len0 << 8) | (len0 << 12);
    if (len0 > 0) {
      const uint32_t next = single[(j << len0) & (kTableSize - 1)];
      const uint32_t len1 = next >> 4;
      if (len1 > 0 && len0 + len1 <= experts::kCodecMaxCodeBits) {
        entry = (first & 15u) | ((next & 15u) << 4) | (len0 << 8) | ((len0 + len1) << 12);
      }
    }
    pairs[j] = static_cast<uint16_t>(entry);
  }
  __syncthreads();
  // Unrolled: a.m indexed by a constant stays in the parameter space (a runtime index copies it to
  // local memory: kernel_spills_test).
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    for (int32_t w = blockIdx.x; w < 3 * a.items; w += gridDim.x) {
      if (w / a.items == k) DecodeItem(a.m[k], a, w % a.items, pairs, rows);
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
      l.base_offset % 16 != 0 || l.chunk_start_offset % 16 != 0 || l.super_start_offset % 16 != 0 ||
      l.max_blob_bytes <= 0 ||
      l.chunks != (l.n + experts::kCodecChunk - 1) / experts::kCodecChunk) {
    return absl::InvalidArgumentError("DecodeExpert: bad codec layout");
  }
  if (Status s = experts::ValidateCodecInfo(l, info); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeExpert: ", s.message()));
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
  const experts::CodecExpertInfo& info = args.info;
  DecodeKernelArgs k;
  k.n = l.n;
  k.chunks = l.chunks;
  k.items = static_cast<int32_t>((l.chunks + kDecodeThreads - 1) / kDecodeThreads);
  std::array<uint32_t, experts::kCodecSymbols> starts, ends;
  MOE_RETURN_IF_ERROR(experts::CodecTableRanges(info.code_bits, &starts, &ends));
  for (int s = 0; s < experts::kCodecSymbols; ++s) {
    k.starts[s] = static_cast<uint16_t>(starts[s]);
    k.ends[s] = static_cast<uint16_t>(ends[s]);
    k.bits[s] = info.code_bits[s];
  }
  const auto* idx = reinterpret_cast<const uint32_t*>(args.blob + info.patch_offset);
  const uint8_t* exp = args.blob + info.patch_exp_offset();
  int32_t first = 0;
  for (int m = 0; m < 3; ++m) {
    const uint8_t* block = args.blob + m * l.matrix_bytes;
    k.m[m].sm = reinterpret_cast<const uint4*>(block);
    k.m[m].base = block + l.base_offset;
    k.m[m].chunk_start = reinterpret_cast<const uint16_t*>(block + l.chunk_start_offset);
    k.m[m].super_start = reinterpret_cast<const uint32_t*>(block + l.super_start_offset);
    k.m[m].stream = reinterpret_cast<const uint32_t*>(args.blob + info.stream_offset[m]);
    k.m[m].stream_words = static_cast<uint32_t>(info.stream_bytes(m) / 4);
    k.m[m].dst = reinterpret_cast<uint4*>(args.slot + args.dst_offset[m]);
    k.m[m].patch_idx = idx + first;
    k.m[m].patch_exp = exp + first;
    k.m[m].patches = info.patches[m];
    first += info.patches[m];
  }
  const int64_t want = 3 * int64_t{k.items};
  const int blocks = args.blocks > 0 ? args.blocks : static_cast<int>(want);
  DecodeExpertKernel<<<blocks, kDecodeThreads, 0, stream>>>(k);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace moe::cuda
