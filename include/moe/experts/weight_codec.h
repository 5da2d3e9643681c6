// Lossless compression of bf16 routed experts for the host tier ("exponent codes"), so that a
// miss moves about a third fewer bytes over PCIe and the slot still receives the checkpoint's
// exact bits.
//
// A bf16 value is sign (1 bit), exponent (8) and mantissa (7). Sign and mantissa are one byte and
// stay as they are; the exponents of trained (and randomly initialised) weights sit within a few
// binades of their neighbourhood's largest one, so each exponent becomes a symbol against the
// largest exponent of its group of kCodecGroup consecutive elements (the group's "base"):
//   symbol s in 0..13: exponent = base - s     (the value is within 2^-13 of the group's largest)
//   symbol 14:         exponent = 0            (zero or subnormal; the mantissa byte says which)
//   symbol 15:         a patch                 (the exponent is stored in the blob's patch list)
// and the symbols are entropy coded with one canonical Huffman code per expert (code lengths at
// most kCodecMaxCodeBits). Weight-like exponents carry ~2.3-2.6 bits of information against
// their group's base (uniform and Gaussian weights), so an element costs 1 + ~0.3 + 1/64 bytes
// plus the decoder's entry points, ~0.66-0.68 of the raw size. Patches are rare (an element 2^14
// times smaller than its group's largest but not zero: ~1e-4 of Gaussian weights); an expert with
// more than CodecExpertLayout::max_patches, or whose codes exceed max_stream_bytes (exponents
// that are not weight-like), is not encoded (its misses copy the raw matrices, as without the
// codec).
//
// One expert is one blob:
//   [block 0][block 1][block 2][quads][stream 0][stream 1][stream 2][patch_idx][patch_exp]
//   block m (fixed size, CodecExpertLayout): sm | base | chunk_start | super_start
//     sm:          n bytes, sign << 7 | mantissa
//     base:        n / kCodecGroup bytes, each group's largest exponent
//     chunk_start: uint16 per chunk of kCodecChunk elements: the bit where the chunk's codes start
//                  in the stream, counted from its super chunk's start
//     super_start: uint32 per kCodecSuperChunks chunks: the bit where that super chunk starts
//   quads:       the decoder's table (CodecQuadTable), in experts whose matrices have at least
//                kCodecTableMinElements elements (else absent: the device builds it per block)
//   stream m:    the matrix's codes, most significant bit of each uint32 word first, then at
//                least two zero words; 16-byte aligned (CodecExpertInfo::stream_offset)
//   patch_idx:   uint32 element index within its matrix, matrix 0's patches first, each matrix's
//                ascending; patch_exp: the patched elements' exponents, in the same order.
// The entry points let the decoder expand every chunk in parallel (kernels/weight_codec.cu, one
// thread a chunk); this file's DecodeExpert is its reference.
//
// Thread safety: pure functions.
#pragma once

#include <array>
#include <cstdint>

#include "moe/common/host_device.h"
#include "moe/common/status.h"

namespace moe::experts {

inline constexpr int64_t kCodecGroup = 64;        // elements that share one base exponent
inline constexpr int64_t kCodecChunk = 128;       // elements per decoder entry point
inline constexpr int64_t kCodecSuperChunks = 32;  // chunks per 32-bit entry point
inline constexpr int kCodecSymbols = 16;
inline constexpr int kCodecPatchCode = 15;
inline constexpr int kCodecZeroCode = 14;
inline constexpr int kCodecMaxOffset = 13;    // symbols 0..13: base - symbol
inline constexpr int kCodecMaxCodeBits = 12;  // the decoder's table has 2^12 entries
// The quad table's bytes, and the matrix size from which blobs carry it (it is then at most ~1%
// of the raw expert; smaller experts keep their ratio and the device builds it per block).
inline constexpr int64_t kCodecQuadTableBytes = int64_t{4} << kCodecMaxCodeBits;
inline constexpr int64_t kCodecTableMinElements = int64_t{1} << 18;

// The blob layout of every expert of a model (all matrices have n elements).
struct CodecExpertLayout {
  int64_t n = 0;                   // elements of each of the three matrices
  int64_t chunks = 0;              // ceil(n / kCodecChunk)
  int64_t supers = 0;              // ceil(chunks / kCodecSuperChunks)
  int64_t base_offset = 0;         // within a block: sm at 0, base, chunk_start, super_start
  int64_t chunk_start_offset = 0;  //
  int64_t super_start_offset = 0;  //
  int64_t matrix_bytes = 0;        // one block (16-byte multiple)
  int64_t table_offset = 0;        // the quad table (3 blocks in)
  int64_t table_bytes = 0;         // kCodecQuadTableBytes, or 0: not in the blob
  int64_t max_stream_bytes = 0;    // one matrix's stream at most (3.5 bits an element)
  int64_t max_patches = 0;         // per expert; more: the expert is not encoded
  int64_t max_blob_bytes = 0;      // 3 blocks, 3 full streams and the most patches
};

// What encoding one expert produced.
struct CodecExpertInfo {
  int64_t bytes = 0;  // used bytes of the blob (a 16-byte multiple)
  std::array<int32_t, 3> patches = {0, 0, 0};
  std::array<int64_t, 3> stream_offset = {0, 0, 0};  // byte offsets of the streams in the blob
  int64_t patch_offset = 0;                          // byte offset of patch_idx in the blob
  // The canonical code: symbol s has a code of code_bits[s] bits (0: s does not occur); codes
  // are assigned in order of (length, symbol).
  std::array<uint8_t, kCodecSymbols> code_bits = {};

  int64_t total_patches() const { return int64_t{patches[0]} + patches[1] + patches[2]; }
  int64_t patch_exp_offset() const { return patch_offset + 4 * total_patches(); }
  // Bytes of stream m (up to the next stream, or the patches).
  int64_t stream_bytes(int m) const {
    return (m < 2 ? stream_offset[m + 1] : patch_offset) - stream_offset[m];
  }
};

// The layout for matrices of n elements. InvalidArgument unless n > 0 and n % kCodecGroup == 0
// (and the blob fits in 2^31 bytes, the device decoder's offsets).
StatusOr<CodecExpertLayout> MakeCodecLayout(int64_t n);

// Encodes the three matrices `src` (raw bf16 bits, n each, in slot order) into `blob`
// (layout.max_blob_bytes bytes). Returns false, with `blob` undefined, when the expert needs more
// than layout.max_patches patches or a stream longer than layout.max_stream_bytes; `info` is then
// unspecified.
bool EncodeExpert(const CodecExpertLayout& layout, const std::array<const uint16_t*, 3>& src,
                  uint8_t* blob, CodecExpertInfo* info);

// The first table index of each symbol's code and one past its last, in a decoding table of
// 2^kCodecMaxCodeBits entries indexed by the next kCodecMaxCodeBits bits of a stream (the
// canonical code's ranges; ends[s] == starts[s] for a symbol without a code). InvalidArgument
// when a length exceeds kCodecMaxCodeBits or the code overflows the table (Kraft's inequality).
Status CodecTableRanges(const std::array<uint8_t, kCodecSymbols>& code_bits,
                        std::array<uint32_t, kCodecSymbols>* starts,
                        std::array<uint32_t, kCodecSymbols>* ends);

// A quad table entry (CodecQuadTable): symbols in bits 0-15, total length from bit
// kCodecQuadLengthShift, count from bit kCodecQuadCountShift.
inline constexpr int kCodecQuadLengthShift = 16;
inline constexpr int kCodecQuadCountShift = 20;

// Entry j of the quad table from the table of single symbols: single[i] = symbol | bits << 4 at
// every 12-bit index i whose leading bits are that symbol's code, 0 where none is. CodecQuadTable
// and the device decoder's own build (blobs without the table) both take their entries from here.
MOE_HD inline uint32_t CodecQuadEntry(const uint8_t* single, uint32_t j) {
  constexpr uint32_t kMask = (1u << kCodecMaxCodeBits) - 1;
  uint32_t used = 0, count = 0, symbols = 0;
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
  for (int k = 0; k < 4; ++k) {
    const uint32_t e = single[(j << used) & kMask];
    const uint32_t len = e >> 4;
    if (len == 0 || used + len > kCodecMaxCodeBits) break;
    symbols |= (e & 15u) << (4 * count);
    used += len;
    count += 1;
  }
  if (count == 0) used = kCodecMaxCodeBits, count = 1;
  return symbols | (used << kCodecQuadLengthShift) | (count << kCodecQuadCountShift);
}

// The decoder's table for a code: entry j holds the symbols whose codes follow each other from
// the first of the 12 bits j and end within them (up to four; the first in bits 0-3, the next in
// 4-7, ...; unused nibbles zero), their total length in bits 16-19 and their count in bits 20-22.
// An index that starts no code (only a corrupt stream reaches one) gives symbol 0 of length 12.
// InvalidArgument as CodecTableRanges.
Status CodecQuadTable(const std::array<uint8_t, kCodecSymbols>& code_bits,
                      std::array<uint32_t, size_t{1} << kCodecMaxCodeBits>* quads);

// Decodes a blob that EncodeExpert wrote with `info` into `dst` (n bf16 values each), chunk by
// chunk from the entry points and finding each patch as the device decoder does (a binary search
// of its matrix's patch list). DataLoss when a chunk's codes run past its stream, a code is not
// in the table, a patch symbol has no patch, or the blob's quad table is not its code's (a
// corrupt blob); InvalidArgument when `info`
// does not fit the layout.
Status DecodeExpert(const CodecExpertLayout& layout, const uint8_t* blob,
                    const CodecExpertInfo& info, const std::array<uint16_t*, 3>& dst);

// InvalidArgument unless `info` describes a blob this layout can hold (offsets 16-byte aligned
// and in order, patch counts and code lengths in range). Used by both decoders.
Status ValidateCodecInfo(const CodecExpertLayout& layout, const CodecExpertInfo& info);

}  // namespace moe::experts
