// In-kernel timeline of the cluster GEMM (grouped_gemm_sm90_cluster.cu), compiled only into
// builds configured with -DMOE_GEMM_TRACE=ON (a diagnostic build; never the shipped one).
//
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

#if defined(MOE_GEMM_TRACE) && defined(__CUDA_ARCH__)
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
#endif

}  // namespace moe::cuda
