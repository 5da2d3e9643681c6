// Device decoder of the host tier's lossless bf16 codec (kernels/weight_codec.h).
//
// A block takes kDecodeChunks consecutive chunks of one matrix (a work item), one a thread:
// 1. Once per block it puts the table of quads in shared memory (experts::CodecQuadTable: for each
//    12-bit index the symbols whose codes lie wholly within it, one to four, their count and their
//    total length). Blobs of large experts carry it (CodecExpertLayout::table_bytes): the block
//    copies it, each entry checked so that a corrupt one still moves the decoder on. Else the
//    block builds it: a 2^12-entry table of single symbols from the code's ranges (symbol |
//    bits << 4 at every index whose leading bits are the symbol's code), then the quads from it.
//    Each thread fetches its chunk's entry point and first stream words meanwhile.
// 2. Thread t expands chunk t of the item: it peeks 12 bits of a 64-bit window, looks up one to
//    four symbols, shifts by their length and refills the window a word at a time, storing the
//    symbols, eight to a word, in a shared-memory row of its own (rows of an odd number of words:
//    few bank conflicts).
// 3. The block then turns symbols into exponents (base - symbol, or 0) and merges them with the
//    sign/mantissa bytes in element order: 16 elements a thread a step, one 16-byte load and two
//    16-byte stores, coalesced. A group of 16 with a patch symbol then stores its patched
//    elements again, each found by a binary search of the matrix's sorted patch list (out of
//    line: patches are rare, and inlined per element they made the loop too large for the
//    instruction cache).
// Words past a stream's end read as its last word, so a corrupt blob decodes to wrong values,
// never out of bounds.
// NOTES (H200, session 44, benches/RESULTS.md "Expert cache (GPU)"): a Qwen3-30B-A3B expert
// (9 MiB) decodes in 27-32 us alone (codec_bench) and 23 us median beside the cache's kernels
// (nsys), against 44 / 37 us for session 43's decoder (128 chunks a block, a table of pairs built
// per block, the patch search inlined per element). ncu of that one (base clocks): half its stall
// samples in step 3, mostly instruction fetch; a third in step 2 (57 instructions a lookup, ~2
// symbols each, ~8 cycles an instruction at 2 warps a scheduler: a latency chain); a sixth in the
// table. Then (ncu, 32 us at base clocks): the tables ~35% of the samples, step 2 ~23%, step 3
// ~25%, which is why large experts' blobs now carry the quad table (session 45).
// 128 chunks a block measured 31-34 us alone (Mixtral 361-409 us against 290-316).
#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda_status.h"
#include "kernels/weight_codec.h"

namespace moe::cuda {
namespace {

constexpr int kDecodeChunks = 256;                       // chunks of a work item (one a thread)
constexpr int kRowWords = experts::kCodecChunk / 8 + 1;  // a chunk's symbols, 8 a word
constexpr int kTableBits = experts::kCodecMaxCodeBits;
constexpr int kTableSize = 1 << kTableBits;
constexpr int kQuadsPerChunk = experts::kCodecChunk / 16;
static_assert(experts::kCodecChunk % 16 == 0 && experts::kCodecGroup % 16 == 0 &&
              (experts::kCodecChunk / 8) % 2 == 0);

struct DecodeMatrix {
  const uint4* sm;
  const uint8_t* base;
  const uint16_t* chunk_start;
  const uint32_t* super_start;
  const uint32_t* stream;
  uint32_t last_word;  // the stream's last word (one of its zero words)
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
  const uint4* quads;                    // the blob's quad table, or null: build it
};

// A quad table entry (experts::CodecQuadEntry): symbols (4 bits each, the first lowest) in bits
// 0-15, their total length in bits 16-19, their count in bits 20-22.
constexpr int kQuadLengthShift = experts::kCodecQuadLengthShift;
constexpr int kQuadCountShift = experts::kCodecQuadCountShift;

// A quad entry from a blob, or symbol 0 of length 12 where it could not come from the encoder
// (no symbol, more than four, fewer bits than symbols, more than 12): the decoding loop then always
// moves on. Nibbles past the count are cleared.
__device__ __forceinline__ uint32_t CheckedQuad(uint32_t e) {
  const uint32_t count = (e >> kQuadCountShift) & 7u, used = (e >> kQuadLengthShift) & 15u;
  if (count == 0 || count > 4 || used < count || used > kTableBits) {
    return (uint32_t{kTableBits} << kQuadLengthShift) | (1u << kQuadCountShift);
  }
  const uint32_t symbols = count == 4 ? 0xffffu : (1u << (4 * count)) - 1u;
  return e & (symbols | (0x7fu << kQuadLengthShift));
}

__device__ __forceinline__ uint32_t StreamWord(const DecodeMatrix& m, uint32_t w) {
  return __ldg(m.stream + min(w, m.last_word));
}

// The bit where chunk c's codes start in its matrix's stream.
__device__ __forceinline__ uint32_t ChunkBit(const DecodeMatrix& m, int64_t c) {
  return __ldg(m.super_start + c / experts::kCodecSuperChunks) + __ldg(m.chunk_start + c);
}

// A chunk's first three stream words (the window and the word after it).
struct ChunkWords {
  uint32_t w0 = 0, w1 = 0, w2 = 0;
};

__device__ __forceinline__ ChunkWords FirstWords(const DecodeMatrix& m, uint32_t pos) {
  return {StreamWord(m, pos >> 5), StreamWord(m, (pos >> 5) + 1), StreamWord(m, (pos >> 5) + 2)};
}

// Writes the patched elements of the 16 starting at `element` (their symbols `sym0` and `sym1`,
// sign/mantissa bytes `s`) again with their exponents from the patch list. Out of line: it runs
// for ~1 group in 1000.
__device__ __noinline__ void StorePatches(const DecodeMatrix& m, uint32_t element, uint32_t sym0,
                                          uint32_t sym1, uint4 s) {
  auto* dst = reinterpret_cast<uint16_t*>(m.dst);
  for (int i = 0; i < 16; ++i) {
    const uint32_t code = ((i < 8 ? sym0 : sym1) >> (4 * (i % 8))) & 15u;
    if (code != experts::kCodecPatchCode) continue;
    int lo = 0, hi = m.patches;  // the first patch index >= element + i
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (m.patch_idx[mid] < element + i) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    // EncodeExpert always writes the patch; a corrupt blob gets exponent 0 rather than a fault.
    const uint32_t e = lo < m.patches && m.patch_idx[lo] == element + i ? m.patch_exp[lo] : 0u;
    const uint32_t word = i < 4 ? s.x : i < 8 ? s.y : i < 12 ? s.z : s.w;
    const uint32_t byte = (word >> (8 * (i % 4))) & 0xffu;
    dst[element + i] = static_cast<uint16_t>(((byte & 0x80u) << 8) | (e << 7) | (byte & 0x7fu));
  }
}

// True when one of the eight symbols of `w` is the patch symbol (15).
__device__ __forceinline__ bool HasPatch(uint32_t w) {
  return ((w & (w >> 1) & (w >> 2) & (w >> 3)) & 0x11111111u) != 0;
}

// Two elements from their sign/mantissa bytes (`bytes`: the first in bits 0-7, the second in
// 8-15) and symbols (`codes`: the first in bits 0-3, the second in 4-7) against their group's
// `base`: bf16 (sign, exponent, mantissa) = byte & 0x80, exponent, byte & 0x7f, so the pair is
// the bytes spread to 16-bit lanes, masked, with exponent << 7 added to each lane. Symbol 14 and
// the patch symbol give exponent 0 (patches are stored again after).
__device__ __forceinline__ uint32_t MergePair(uint32_t bytes, uint32_t codes, uint32_t base) {
  const uint32_t spread = __byte_perm(bytes, 0, 0x1100) & 0x807f807fu;
  const uint32_t c0 = codes & 15u, c1 = (codes >> 4) & 15u;
  const uint32_t e0 = c0 <= experts::kCodecMaxOffset ? base - c0 : 0u;
  const uint32_t e1 = c1 <= experts::kCodecMaxOffset ? base - c1 : 0u;
  return spread | (e0 << 7) | (e1 << 23);
}

// kBlobTable: a.quads is the blob's table (else null, and the block builds it).
template <bool kBlobTable>
__global__ void __launch_bounds__(kDecodeChunks)
    DecodeExpertKernel(const __grid_constant__ DecodeKernelArgs a) {
  __shared__ __align__(16) uint32_t quads[kTableSize];
  __shared__ uint32_t rows[kDecodeChunks * kRowWords];
  // The table of single symbols lives in the rows until step 2 first writes them.
  static_assert(sizeof(rows) >= kTableSize);
  uint8_t* single = reinterpret_cast<uint8_t*>(rows);
  const int32_t total = 3 * a.items;
  int32_t item = blockIdx.x;
  if (item >= total) return;
  // The first item's entry point and first words are fetched while the table is built.
  int64_t c = int64_t{item % a.items} * kDecodeChunks + threadIdx.x;
  uint32_t pos = c < a.chunks ? ChunkBit(a.m[item / a.items], c) : 0u;
  ChunkWords first_words;

  if constexpr (kBlobTable) {
    for (int j = threadIdx.x; j < kTableSize / 4; j += kDecodeChunks) {
      const uint4 q = __ldg(a.quads + j);
      reinterpret_cast<uint4*>(quads)[j] =
          make_uint4(CheckedQuad(q.x), CheckedQuad(q.y), CheckedQuad(q.z), CheckedQuad(q.w));
    }
    if (c < a.chunks) first_words = FirstWords(a.m[item / a.items], pos);
  } else {
    for (int j = threadIdx.x; j < kTableSize / 4; j += kDecodeChunks) {
      reinterpret_cast<uint32_t*>(single)[j] = 0;
    }
    __syncthreads();
#pragma unroll
    for (int s = 0; s < experts::kCodecSymbols; ++s) {
      for (int j = a.starts[s] + threadIdx.x; j < a.ends[s]; j += kDecodeChunks) {
        single[j] = static_cast<uint8_t>(s | (a.bits[s] << 4));
      }
    }
    if (c < a.chunks) first_words = FirstWords(a.m[item / a.items], pos);
    __syncthreads();
    // experts::CodecQuadTable's entries: the symbols whose codes follow each other from the first
    // bit of the 12 bits j and end within them; an index that starts no code (a corrupt stream)
    // gives symbol 0 of length 12, so the decoder still moves on.
    for (int j = threadIdx.x; j < kTableSize; j += kDecodeChunks) {
      quads[j] = experts::CodecQuadEntry(single, static_cast<uint32_t>(j));
    }
  }
  __syncthreads();

  for (; item < total; item += gridDim.x) {
    const DecodeMatrix& m = a.m[item / a.items];
    const int64_t first_chunk = int64_t{item % a.items} * kDecodeChunks;
    c = first_chunk + threadIdx.x;
    if (item != blockIdx.x && c < a.chunks) {
      pos = ChunkBit(m, c);
      first_words = FirstWords(m, pos);
    }
    // Step 2: symbols only, eight to a word. The loop carries the window, the symbols not yet
    // stored and the word after the window (its load issued a word ahead).
    if (c < a.chunks) {
      uint32_t* row = rows + threadIdx.x * kRowWords;
      const int words =
          static_cast<int>(min(int64_t{experts::kCodecChunk}, a.n - c * experts::kCodecChunk)) / 8;
      uint32_t w = (pos >> 5) + 2;  // the word in `next`
      uint64_t window = ((uint64_t{first_words.w0} << 32) | first_words.w1) << (pos & 31);
      int valid = 64 - static_cast<int>(pos & 31);  // bits of `window` that are codes
      uint32_t next = first_words.w2;
      uint64_t symbols = 0;  // symbols not yet stored, the earliest lowest
      int held = 0;
      for (int word = 0; word < words;) {
        if (valid < 32) {
          window |= uint64_t{next} << (32 - valid);
          valid += 32;
          next = StreamWord(m, ++w);
        }
        const uint32_t entry = quads[window >> (64 - kTableBits)];
        const int used = (entry >> kQuadLengthShift) & 15u;
        window <<= used;
        valid -= used;
        symbols |= uint64_t{entry & 0xffffu} << (4 * held);
        held += entry >> kQuadCountShift;
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
    const int quads16 =
        static_cast<int>(min(a.n - first, int64_t{kDecodeChunks} * experts::kCodecChunk) / 16);
#pragma unroll 4
    for (int q = threadIdx.x; q < quads16; q += kDecodeChunks) {
      const uint32_t* r = rows + (q / kQuadsPerChunk) * kRowWords + (q % kQuadsPerChunk) * 2;
      const uint32_t sym0 = r[0], sym1 = r[1];
      const int64_t element = first + 16 * q;
      const uint4 s = __ldg(m.sm + element / 16);
      const uint32_t base = __ldg(m.base + element / experts::kCodecGroup);
      const uint4 lo =
          make_uint4(MergePair(s.x, sym0, base), MergePair(s.x >> 16, sym0 >> 8, base),
                     MergePair(s.y, sym0 >> 16, base), MergePair(s.y >> 16, sym0 >> 24, base));
      const uint4 hi =
          make_uint4(MergePair(s.z, sym1, base), MergePair(s.z >> 16, sym1 >> 8, base),
                     MergePair(s.w, sym1 >> 16, base), MergePair(s.w >> 16, sym1 >> 24, base));
      m.dst[2 * (element / 16)] = lo;
      m.dst[2 * (element / 16) + 1] = hi;
      if (HasPatch(sym0) || HasPatch(sym1)) {
        StorePatches(m, static_cast<uint32_t>(element), sym0, sym1, s);
      }
    }
    __syncthreads();  // the rows are free for the next item
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
      l.max_blob_bytes <= 0 || l.table_offset != 3 * l.matrix_bytes ||
      (l.table_bytes != 0 && l.table_bytes != experts::kCodecQuadTableBytes) ||
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
  k.items = static_cast<int32_t>((l.chunks + kDecodeChunks - 1) / kDecodeChunks);
  std::array<uint32_t, experts::kCodecSymbols> starts, ends;
  MOE_RETURN_IF_ERROR(experts::CodecTableRanges(info.code_bits, &starts, &ends));
  for (int s = 0; s < experts::kCodecSymbols; ++s) {
    k.starts[s] = static_cast<uint16_t>(starts[s]);
    k.ends[s] = static_cast<uint16_t>(ends[s]);
    k.bits[s] = info.code_bits[s];
  }
  k.quads =
      l.table_bytes > 0 ? reinterpret_cast<const uint4*>(args.blob + l.table_offset) : nullptr;
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
    k.m[m].last_word = static_cast<uint32_t>(info.stream_bytes(m) / 4 - 1);
    k.m[m].dst = reinterpret_cast<uint4*>(args.slot + args.dst_offset[m]);
    k.m[m].patch_idx = idx + first;
    k.m[m].patch_exp = exp + first;
    k.m[m].patches = info.patches[m];
    first += info.patches[m];
  }
  const int64_t want = 3 * int64_t{k.items};
  const int blocks = args.blocks > 0 ? args.blocks : static_cast<int>(want);
  if (k.quads != nullptr) {
    DecodeExpertKernel<true><<<blocks, kDecodeChunks, 0, stream>>>(k);
  } else {
    DecodeExpertKernel<false><<<blocks, kDecodeChunks, 0, stream>>>(k);
  }
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace moe::cuda
