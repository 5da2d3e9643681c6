#include "moe/experts/weight_codec.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace moe::experts {
namespace {

constexpr uint32_t kTableSize = 1u << kCodecMaxCodeBits;

int64_t RoundUp16(int64_t v) { return (v + 15) / 16 * 16; }

int Exponent(uint16_t v) { return (v >> 7) & 0xff; }

// The symbol of bf16 bits `v` in a group of base exponent `base`.
int Symbol(uint16_t v, int base) {
  const int e = Exponent(v);
  if (e == 0) return kCodecZeroCode;
  return base - e <= kCodecMaxOffset ? base - e : kCodecPatchCode;
}

// Huffman code lengths for the symbol counts `f`, at most kCodecMaxCodeBits: while the optimal
// code is longer, the counts are halved (rounding up) and the code rebuilt, which flattens it
// (all counts 1: at most 4 bits for 16 symbols). A single used symbol gets 1 bit. Ties merge the
// higher symbols first, so the lengths are deterministic.
std::array<uint8_t, kCodecSymbols> HuffmanBits(std::array<uint64_t, kCodecSymbols> f) {
  struct Node {
    uint64_t weight;
    int min_symbol;
    uint32_t symbols;  // bit s: symbol s is below this node
  };
  for (;;) {
    std::vector<Node> nodes;
    for (int s = 0; s < kCodecSymbols; ++s) {
      if (f[s] > 0) nodes.push_back({f[s], s, 1u << s});
    }
    std::array<uint8_t, kCodecSymbols> bits = {};
    if (nodes.empty()) return bits;
    if (nodes.size() == 1) {
      bits[nodes[0].min_symbol] = 1;
      return bits;
    }
    while (nodes.size() > 1) {
      // The two lightest nodes are at the back.
      std::sort(nodes.begin(), nodes.end(), [](const Node& a, const Node& b) {
        return a.weight != b.weight ? a.weight > b.weight : a.min_symbol > b.min_symbol;
      });
      const Node a = nodes.back();
      nodes.pop_back();
      const Node b = nodes.back();
      nodes.pop_back();
      for (int s = 0; s < kCodecSymbols; ++s) {
        if (((a.symbols | b.symbols) >> s) & 1u) ++bits[s];
      }
      nodes.push_back(
          {a.weight + b.weight, std::min(a.min_symbol, b.min_symbol), a.symbols | b.symbols});
    }
    if (*std::max_element(bits.begin(), bits.end()) <= kCodecMaxCodeBits) return bits;
    for (uint64_t& c : f) c = (c + 1) / 2;
  }
}

// Appends codes most significant bit first into uint32 words (at most `capacity` of them).
class BitWriter {
 public:
  BitWriter(uint8_t* out, int64_t capacity) : out_(out), capacity_(capacity) {}
  void Put(uint32_t code, int bits) {
    acc_ = (acc_ << bits) | code;
    pending_ += bits;
    if (pending_ >= 32) {
      pending_ -= 32;
      Emit(static_cast<uint32_t>(acc_ >> pending_));
      acc_ &= (uint64_t{1} << pending_) - 1;
    }
  }
  // Pads the last word with zero bits.
  void Flush() {
    if (pending_ > 0) Emit(static_cast<uint32_t>(acc_ << (32 - pending_)));
    acc_ = 0;
    pending_ = 0;
  }
  uint64_t bit_position() const { return static_cast<uint64_t>(words_) * 32 + pending_; }
  int64_t words() const { return words_; }
  bool overflow() const { return overflow_; }

 private:
  void Emit(uint32_t w) {
    if (words_ >= capacity_) {
      overflow_ = true;
      return;
    }
    std::memcpy(out_ + 4 * words_, &w, 4);
    ++words_;
  }
  uint8_t* out_;
  int64_t capacity_;
  int64_t words_ = 0;
  uint64_t acc_ = 0;
  int pending_ = 0;  // bits in acc_ not yet emitted (< 32 between calls)
  bool overflow_ = false;
};

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
void Store(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

}  // namespace

StatusOr<CodecExpertLayout> MakeCodecLayout(int64_t n) {
  if (n <= 0 || n % kCodecGroup != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight codec: a matrix of ", n, " elements is not a positive multiple of ", kCodecGroup));
  }
  CodecExpertLayout l;
  l.n = n;
  l.chunks = (n + kCodecChunk - 1) / kCodecChunk;
  l.supers = (l.chunks + kCodecSuperChunks - 1) / kCodecSuperChunks;
  l.base_offset = RoundUp16(n);
  l.chunk_start_offset = l.base_offset + RoundUp16(n / kCodecGroup);
  l.super_start_offset = l.chunk_start_offset + RoundUp16(2 * l.chunks);
  l.matrix_bytes = l.super_start_offset + RoundUp16(4 * l.supers);
  l.table_offset = 3 * l.matrix_bytes;
  l.table_bytes = n >= kCodecTableMinElements ? kCodecQuadTableBytes : 0;
  // 3.5 bits an element, and the two zero words past the codes.
  l.max_stream_bytes = RoundUp16((7 * n + 15) / 16 + 8);
  // One patch in 256 elements: ~25x what Gaussian weights need; beyond it the codec saves little.
  l.max_patches = std::max<int64_t>(16, 3 * n / 256);
  l.max_blob_bytes =
      RoundUp16(l.table_offset + l.table_bytes + 3 * l.max_stream_bytes + 5 * l.max_patches);
  if (l.max_blob_bytes >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight codec: matrices of ", n, " elements are too large"));
  }
  return l;
}

Status CodecTableRanges(const std::array<uint8_t, kCodecSymbols>& code_bits,
                        std::array<uint32_t, kCodecSymbols>* starts,
                        std::array<uint32_t, kCodecSymbols>* ends) {
  std::array<int, kCodecSymbols> order;
  for (int s = 0; s < kCodecSymbols; ++s) order[s] = s;
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return code_bits[a] < code_bits[b]; });
  uint32_t next = 0;
  for (const int s : order) {
    const int bits = code_bits[s];
    if (bits > kCodecMaxCodeBits) {
      return absl::InvalidArgumentError(
          absl::StrCat("weight codec: symbol ", s, " has a code of ", bits, " bits"));
    }
    (*starts)[s] = bits == 0 ? 0 : next;
    if (bits > 0) next += 1u << (kCodecMaxCodeBits - bits);
    if (next > kTableSize) {
      return absl::InvalidArgumentError("weight codec: the code lengths overflow the table");
    }
    (*ends)[s] = bits == 0 ? 0 : next;
  }
  return absl::OkStatus();
}

namespace {

// The decoding table of single symbols: symbol | bits << 4 at every index whose leading bits are
// the symbol's code (0: no code), as the device builds it.
Status SingleSymbolTable(const std::array<uint8_t, kCodecSymbols>& code_bits,
                         std::array<uint8_t, kTableSize>* single) {
  std::array<uint32_t, kCodecSymbols> starts, ends;
  MOE_RETURN_IF_ERROR(CodecTableRanges(code_bits, &starts, &ends));
  single->fill(0);
  for (int s = 0; s < kCodecSymbols; ++s) {
    for (uint32_t j = starts[s]; j < ends[s]; ++j) {
      (*single)[j] = static_cast<uint8_t>(s | (code_bits[s] << 4));
    }
  }
  return absl::OkStatus();
}

}  // namespace

Status CodecQuadTable(const std::array<uint8_t, kCodecSymbols>& code_bits,
                      std::array<uint32_t, kTableSize>* quads) {
  std::array<uint8_t, kTableSize> single;
  MOE_RETURN_IF_ERROR(SingleSymbolTable(code_bits, &single));
  for (uint32_t j = 0; j < kTableSize; ++j) (*quads)[j] = CodecQuadEntry(single.data(), j);
  return absl::OkStatus();
}

Status ValidateCodecInfo(const CodecExpertLayout& l, const CodecExpertInfo& info) {
  if (info.patches[0] < 0 || info.patches[1] < 0 || info.patches[2] < 0 ||
      info.total_patches() > l.max_patches) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight codec: ", info.total_patches(), " patches exceed the layout"));
  }
  std::array<uint32_t, kCodecSymbols> starts, ends;
  MOE_RETURN_IF_ERROR(CodecTableRanges(info.code_bits, &starts, &ends));
  if (info.stream_offset[0] != l.table_offset + l.table_bytes) {
    return absl::InvalidArgumentError(
        "weight codec: stream 0 does not follow the blocks and the table");
  }
  for (int m = 0; m < 3; ++m) {
    const int64_t bytes = info.stream_bytes(m);
    if (info.stream_offset[m] % 16 != 0 || bytes < 8 || bytes % 16 != 0 ||
        bytes > l.max_stream_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("weight codec: stream ", m, " at ",
                                                     info.stream_offset[m], " of ", bytes,
                                                     " bytes does not fit the layout"));
    }
  }
  if (info.bytes != RoundUp16(info.patch_offset + 5 * info.total_patches()) ||
      info.bytes > l.max_blob_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight codec: a blob of ", info.bytes, " bytes does not fit the layout"));
  }
  return absl::OkStatus();
}

bool EncodeExpert(const CodecExpertLayout& layout, const std::array<const uint16_t*, 3>& src,
                  uint8_t* blob, CodecExpertInfo* info) {
  const int64_t n = layout.n;
  // Pass 1: sign/mantissa bytes, bases, symbol counts and patches (placed after the streams).
  std::array<uint64_t, kCodecSymbols> counts = {};
  std::vector<uint32_t> patch_idx;
  std::vector<uint8_t> patch_exp;
  for (int m = 0; m < 3; ++m) {
    const uint16_t* s = src[m];
    uint8_t* block = blob + m * layout.matrix_bytes;
    uint8_t* base = block + layout.base_offset;
    const size_t patches_before = patch_idx.size();
    for (int64_t g = 0; g < n / kCodecGroup; ++g) {
      const uint16_t* v = s + g * kCodecGroup;
      int b = 0;
      for (int i = 0; i < kCodecGroup; ++i) b = std::max(b, Exponent(v[i]));
      base[g] = static_cast<uint8_t>(b);
      for (int i = 0; i < kCodecGroup; ++i) {
        const int64_t idx = g * kCodecGroup + i;
        block[idx] = static_cast<uint8_t>(((v[i] >> 8) & 0x80) | (v[i] & 0x7f));
        const int sym = Symbol(v[i], b);
        ++counts[sym];
        if (sym == kCodecPatchCode) {
          patch_idx.push_back(static_cast<uint32_t>(idx));
          patch_exp.push_back(static_cast<uint8_t>(Exponent(v[i])));
        }
      }
    }
    if (static_cast<int64_t>(patch_idx.size()) > layout.max_patches) return false;
    info->patches[m] = static_cast<int32_t>(patch_idx.size() - patches_before);
    // Zero the alignment padding so that blobs are deterministic.
    std::memset(block + n, 0, static_cast<size_t>(layout.base_offset - n));
    std::memset(
        base + n / kCodecGroup, 0,
        static_cast<size_t>(layout.chunk_start_offset - layout.base_offset - n / kCodecGroup));
    std::memset(block + layout.chunk_start_offset, 0,
                static_cast<size_t>(layout.matrix_bytes - layout.chunk_start_offset));
  }
  // The code.
  info->code_bits = HuffmanBits(counts);
  std::array<uint32_t, kCodecSymbols> starts, ends, codes;
  if (!CodecTableRanges(info->code_bits, &starts, &ends).ok()) return false;
  for (int s = 0; s < kCodecSymbols; ++s) {
    codes[s] = starts[s] >> (kCodecMaxCodeBits - info->code_bits[s]);
  }
  if (layout.table_bytes > 0) {
    std::array<uint32_t, kTableSize> quads;
    if (!CodecQuadTable(info->code_bits, &quads).ok()) return false;
    std::memcpy(blob + layout.table_offset, quads.data(), sizeof(quads));
  }
  // Pass 2: each matrix's codes, with the chunks' entry points.
  int64_t offset = layout.table_offset + layout.table_bytes;
  for (int m = 0; m < 3; ++m) {
    const uint16_t* s = src[m];
    uint8_t* block = blob + m * layout.matrix_bytes;
    const uint8_t* base = block + layout.base_offset;
    info->stream_offset[m] = offset;
    BitWriter out(blob + offset, layout.max_stream_bytes / 4 - 2);
    uint64_t super = 0;
    for (int64_t c = 0; c < layout.chunks; ++c) {
      const uint64_t at = out.bit_position();
      if (c % kCodecSuperChunks == 0) {
        super = at;
        Store<uint32_t>(block + layout.super_start_offset + 4 * (c / kCodecSuperChunks),
                        static_cast<uint32_t>(at));
      }
      Store<uint16_t>(block + layout.chunk_start_offset + 2 * c, static_cast<uint16_t>(at - super));
      const int64_t end = std::min(n, (c + 1) * kCodecChunk);
      for (int64_t i = c * kCodecChunk; i < end; ++i) {
        const int sym = Symbol(s[i], base[i / kCodecGroup]);
        out.Put(codes[sym], info->code_bits[sym]);
      }
      if (out.overflow()) return false;
    }
    out.Flush();
    if (out.overflow()) return false;
    // Two zero words past the codes (the decoder's look-ahead), then up to 16 bytes.
    const int64_t bytes = RoundUp16(4 * out.words() + 8);
    std::memset(blob + offset + 4 * out.words(), 0, static_cast<size_t>(bytes - 4 * out.words()));
    offset += bytes;
  }
  info->patch_offset = offset;
  const int64_t p = static_cast<int64_t>(patch_idx.size());
  if (p > 0) {
    std::memcpy(blob + offset, patch_idx.data(), static_cast<size_t>(4 * p));
    std::memcpy(blob + offset + 4 * p, patch_exp.data(), static_cast<size_t>(p));
  }
  info->bytes = RoundUp16(offset + 5 * p);
  std::memset(blob + offset + 5 * p, 0, static_cast<size_t>(info->bytes - offset - 5 * p));
  return true;
}

Status DecodeExpert(const CodecExpertLayout& layout, const uint8_t* blob,
                    const CodecExpertInfo& info, const std::array<uint16_t*, 3>& dst) {
  MOE_RETURN_IF_ERROR(ValidateCodecInfo(layout, info));
  if (layout.table_bytes > 0) {
    // The device decodes by the blob's table: it must be the code's.
    std::array<uint32_t, kTableSize> quads;
    MOE_RETURN_IF_ERROR(CodecQuadTable(info.code_bits, &quads));
    if (std::memcmp(blob + layout.table_offset, quads.data(), sizeof(quads)) != 0) {
      return absl::DataLossError("weight codec: the blob's decoding table is not its code's");
    }
  }
  std::array<uint8_t, kTableSize> table;
  MOE_RETURN_IF_ERROR(SingleSymbolTable(info.code_bits, &table));
  const int64_t n = layout.n;
  std::vector<uint32_t> patch_idx(static_cast<size_t>(info.total_patches()));
  if (!patch_idx.empty()) {
    std::memcpy(patch_idx.data(), blob + info.patch_offset, 4 * patch_idx.size());
  }
  const uint8_t* patch_exp = blob + info.patch_exp_offset();
  int64_t first = 0;
  for (int m = 0; m < 3; ++m) {
    const uint8_t* block = blob + m * layout.matrix_bytes;
    const uint8_t* base = block + layout.base_offset;
    const uint8_t* stream = blob + info.stream_offset[m];
    // Words past the stream read as zero; codes must end before its two zero words.
    const int64_t words = info.stream_bytes(m) / 4;
    const uint64_t limit_bits = static_cast<uint64_t>(words - 2) * 32;
    auto word = [&](uint64_t w) {
      return w < uint64_t(words) ? Load<uint32_t>(stream + 4 * w) : 0u;
    };
    const auto begin = patch_idx.begin() + first, end = begin + info.patches[m];
    for (int64_t c = 0; c < layout.chunks; ++c) {
      uint64_t pos =
          Load<uint32_t>(block + layout.super_start_offset + 4 * (c / kCodecSuperChunks)) +
          uint64_t{Load<uint16_t>(block + layout.chunk_start_offset + 2 * c)};
      for (int64_t i = c * kCodecChunk; i < std::min(n, (c + 1) * kCodecChunk); ++i) {
        const uint64_t w = pos / 32;
        const uint64_t window = ((uint64_t{word(w)} << 32) | word(w + 1)) << (pos % 32);
        const uint8_t entry = table[window >> (64 - kCodecMaxCodeBits)];
        const int bits = entry >> 4, sym = entry & 15;
        pos += static_cast<uint64_t>(bits);
        if (bits == 0 || pos > limit_bits) {
          return absl::DataLossError(
              absl::StrCat("weight codec: the codes of matrix ", m, " break at element ", i));
        }
        int e;
        if (sym == kCodecZeroCode) {
          e = 0;
        } else if (sym == kCodecPatchCode) {
          // As the device decoder: a binary search of the matrix's patches.
          const auto it = std::lower_bound(begin, end, static_cast<uint32_t>(i));
          if (it == end || *it != static_cast<uint32_t>(i)) {
            return absl::DataLossError(
                absl::StrCat("weight codec: no patch for element ", i, " of matrix ", m));
          }
          e = patch_exp[it - patch_idx.begin()];
        } else {
          e = base[i / kCodecGroup] - sym;
        }
        const uint8_t sm = block[i];
        dst[m][i] = static_cast<uint16_t>(((sm & 0x80) << 8) | ((e & 0xff) << 7) | (sm & 0x7f));
      }
    }
    first += info.patches[m];
  }
  return absl::OkStatus();
}

}  // namespace moe::experts
