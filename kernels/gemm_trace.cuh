// In-kernel timelines, compiled only into builds configured with -DMOE_GEMM_TRACE=ON (a
// diagnostic build; never the shipped one): the cluster GEMM's (GemmTraceLayout) and the decode
// chain's (DecodeTraceLayout).
//
// The cluster GEMM (grouped_gemm_sm90_cluster.cu):
// Per launch slot (0: the gated gate/up GEMM, 1: the plain down GEMM) and block, the producer
// thread records, per k-step `it` of the block, when it starts waiting for a free stage and when
// it issues the stage's loads; consumer thread 128 (warp 0 of the first consumer warpgroup)
// records when it starts waiting for the stage's data and when the data is there, and per work
// item when its epilogue starts and ends (in ping-pong mode only its own warpgroup's items: the
// other warpgroup's k-steps stay zero). The block's end is taken after its last cluster barrier.
// Times are the SM's clock64 (intervals inside one block); %globaltimer is kept at the block's
// start and end to line blocks up. The last launch of each slot wins. Layout of one block's record
// (uint64 words): GemmTraceLayout.
#pragma once

#include <cstdint>

namespace moe::cuda {

struct GemmTraceLayout {
  static constexpr int kSlots = 2;
  static constexpr int kMaxBlocks = 160;
  static constexpr int kMaxSteps = 2048;  // k-steps per block recorded
  static constexpr int kMaxItems = 256;   // work items per block recorded
  // Words: [0] start globaltimer, [1] start clock64, [2] end globaltimer, [3] end clock64,
  // [4] k-steps, [5] items, then 4 arrays of kMaxSteps (producer wait, producer issue, consumer
  // wait, consumer ready) and 2 of kMaxItems (epilogue start, end).
  static constexpr int kHeader = 8;
  static constexpr int kProdWait = kHeader;
  static constexpr int kProdIssue = kProdWait + kMaxSteps;
  static constexpr int kConsWait = kProdIssue + kMaxSteps;
  static constexpr int kConsReady = kConsWait + kMaxSteps;
  static constexpr int kEpiStart = kConsReady + kMaxSteps;
  static constexpr int kEpiEnd = kEpiStart + kMaxItems;
  static constexpr int kBlockWords = kEpiEnd + kMaxItems;
  static constexpr int64_t kWords = static_cast<int64_t>(kSlots) * kMaxBlocks * kBlockWords;
};

// The decode chain of a forward (the meta kernel, the decode front, the decode experts' gate/up
// and down + combine kernels): per kernel and block, %globaltimer at the block's entry, after its
// PDL wait, when its setup is done (the block's last barrier before its units) and, per warp,
// when its first unit is stored and when it is done. The meta kernel (or the front that takes the
// meta) counts forwards in word 0 (DecodeTraceBlock); each forward writes ring entry (count %
// kReplays), so the last kReplays forwards (and the gaps between them) stay. Layout (uint64
// words): 8 header words, then per replay, kernel and block kBlockWords words.
struct DecodeTraceLayout {
  static constexpr int kKernels = 4;  // 0 meta, 1 front, 2 gate/up, 3 down + combine
  static constexpr int kReplays = 4;
  static constexpr int kMaxBlocks = 512;
  static constexpr int kMaxWarps = 32;
  static constexpr int kEntry = 0, kWaited = 1, kSetUp = 2;
  static constexpr int kFirstUnit = 4;                      // + warp
  static constexpr int kWarpDone = kFirstUnit + kMaxWarps;  // + warp
  static constexpr int kBlockWords = kWarpDone + kMaxWarps;
  static constexpr int kHeader = 8;
  static constexpr int64_t kReplayWords = static_cast<int64_t>(kKernels) * kMaxBlocks * kBlockWords;
  static constexpr int64_t kWords = kHeader + kReplays * kReplayWords;
};

#if defined(MOE_GEMM_TRACE) && defined(__CUDACC__)
__device__ __forceinline__ uint64_t TraceClock() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%clock64;\n" : "=l"(t));
  return t;
}
__device__ __forceinline__ uint64_t TraceGlobalTime() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}
// The block's record of `slot`, or null past kMaxBlocks / without a buffer.
__device__ __forceinline__ uint64_t* TraceBlock(uint64_t* buf, int slot) {
  if (buf == nullptr || blockIdx.x >= GemmTraceLayout::kMaxBlocks) return nullptr;
  return buf + (static_cast<int64_t>(slot) * GemmTraceLayout::kMaxBlocks + blockIdx.x) *
                   GemmTraceLayout::kBlockWords;
}
__device__ __forceinline__ void TraceAt(uint64_t* rec, int array, int max, uint32_t i) {
  if (rec != nullptr && i < static_cast<uint32_t>(max)) rec[array + i] = TraceClock();
}

// This block's record of decode kernel `kernel` in the current forward's ring entry, or null past
// kMaxBlocks / without a buffer. The count in word 0 comes from the meta kernel, or from the decode
// front when it takes the meta as its argument (FrontArgs::store_meta): its routing block counts
// the forward once every block of it has read the count (so the front itself passes ahead = 1),
// and every later kernel reads it after the front is complete.
__device__ __forceinline__ uint64_t* DecodeTraceBlock(uint64_t* buf, int kernel, int ahead = 0) {
  using L = DecodeTraceLayout;
  if (buf == nullptr || blockIdx.x >= L::kMaxBlocks) return nullptr;
  const uint64_t replay = (*static_cast<volatile uint64_t*>(buf) + ahead) % L::kReplays;
  return buf + L::kHeader + static_cast<int64_t>(replay) * L::kReplayWords +
         (static_cast<int64_t>(kernel) * L::kMaxBlocks + blockIdx.x) * L::kBlockWords;
}
// Records the time at word `word` of `rec` (thread 0 of the block, or lane 0 of a warp for the
// per-warp words).
__device__ __forceinline__ void DecodeTraceMark(uint64_t* rec, int word) {
  if (rec != nullptr) rec[word] = TraceGlobalTime();
}
// Lane 0 of the calling warp records the time at per-warp word `base` (kFirstUnit, kWarpDone).
__device__ __forceinline__ void DecodeTraceWarpMark(uint64_t* rec, int base) {
  const int warp = static_cast<int>(threadIdx.x >> 5);
  if (rec != nullptr && (threadIdx.x & 31) == 0 && warp < DecodeTraceLayout::kMaxWarps) {
    rec[base + warp] = TraceGlobalTime();
  }
}
#endif

}  // namespace moe::cuda
