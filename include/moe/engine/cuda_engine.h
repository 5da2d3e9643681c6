// The fused CUDA MoE engine: one MoE layer forward on an NVIDIA GPU (sm_80 and sm_90a builds).
//
// Per forward, on the slot's stream and with no host round trip in between:
//   convert input -> router GEMM (tensor cores, f32 logits) -> fused routing kernel (scores, group
//   limit, top-k, weights, per-expert counts) -> scan (expert offsets, GEMM tile list, token
//   permutation; routing and scan are one single-block launch for <= 32 tokens) -> grouped gate/up
//   GEMM with SiLU*mul in its epilogue (rows gathered through the permutation) -> grouped down GEMM
//   -> shared expert (dense GEMMs) -> combine (weighted sum back to token order, + sigmoid-gated
//   shared expert) in the activation dtype. At 1 token (CudaEngineOptions::decode_gemv) the
//   routed experts and the combine are two CUDA-core kernels instead (gate/up; down + combine).
// Token counts up to a preferred graph size replay a CUDA graph captured for that size (per slot
// and activation dtype, captured on first use); kernels read the token count, layer and buffers
// from device memory, so one graph serves any count up to its size and every layer.
//
// Weights are uploaded at Create, each (layer, expert) matrix in its own place, reached through
// per-(layer, expert) pointer tables on the device.
//
// Expert cache (CudaEngineOptions::expert_cache.budget_bytes > 0): only routers, shared experts
// and biases are uploaded; routed experts live in a fixed pool of device slots (one buffer per
// shape class, experts::ExpertSlotPool decides which expert sits where) and are copied from the
// host tier (the mmap'd checkpoint) on one copy stream on demand. Each layer forward then runs
// the front kernels, then a residency kernel that looks the routed experts up in a device-visible
// table: when all are resident the routed kernels run at once from their slots, and the host only
// learns the routing (through mapped memory, a spin of a few us) for its bookkeeping and
// prefetch. Otherwise the host computes the routed experts in rounds (resident ones first while
// missing ones load; a batch needing more experts than the budget holds takes several rounds)
// through per-round pointer tables and tile lists. Outputs are bitwise those of the all-resident
// engine (same kernels, same launch capacity). No CUDA graphs on that path. See
// src/engine/cuda/cached_forward.cc and docs/ARCHITECTURE.md.
//
// Thread safety: Forward()/EnqueueDevice() may run concurrently on different slots (each slot owns
// a stream, workspaces, staging buffers and graphs); calls on one slot must not overlap. The expert
// cache (one per engine, shared by the slots) is internally synchronized; expert_cache_stats() and
// the pool's Counters() may be called from any thread. Everything else is immutable after Create.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "moe/engine/engine.h"
#include "moe/experts/eviction_policy.h"
#include "moe/experts/slot_pool.h"
#include "moe/model/model.h"

namespace moe {

// The GPU expert cache of one engine (see the file comment).
struct ExpertCacheOptions {
  // Device bytes for routed experts (slots). 0: every expert resident, no cache (the default).
  int64_t budget_bytes = 0;
  experts::EvictionKind eviction = experts::EvictionKind::kReuse;
  // Gate-lookahead prefetch: after layer L routes, layer L+1's router is applied to layer L's
  // input and the experts it selects are loaded into free or evictable slots.
  bool prefetch = true;
  int prefetch_max_loads = 0;  // per layer forward; 0 = every predicted expert
  // How many upcoming MoE layers the lookahead predicts (1..kMaxPrefetchDepth): after layer L
  // routes, the routers of L+1 .. L+depth are applied to L's input and their experts prefetched,
  // nearest layer first, so a copy can start `depth` layers before it is needed.
  static constexpr int kMaxPrefetchDepth = 4;
  int prefetch_depth = 1;
  // Predictions two or more layers ahead are loaded only while their measured precision (decayed
  // over the last few hundred predicted experts of that depth) is at least this: a wrong
  // prefetch costs a whole copy of PCIe time. They are always scored. Depth 1 is never gated.
  double prefetch_min_precision = 0.5;
  // Launches the lookahead can take the decode front (<= 32 tokens outside deterministic mode)
  // run it as one more front kernel on the next layer's router (route only, plain scores, after
  // the layer's own front, with PDL) instead of the router GEMM, a memset and the routing kernel.
  // NOTES (H200, session 41, benches/RESULTS.md): the three launches took ~18 us of a 56 us layer
  // at one token (Qwen3 shape, 100% budget, depth 1), all before the residency kernel; with the
  // front, batch-1 decode ran 11-12% faster there (depth 2: 19%, 50% budget: 3-4%).
  bool lookahead_front = true;
  // A layer forward skips the lookahead when every layer it would predict has all its experts
  // resident or loading (no prediction could start a load): with a budget that holds the whole
  // model, once it is warm, prefetch costs nothing. Skipped predictions are not scored (ExpertCache
  // Stats' precision and recall count the others). NOTES (H200, session 41): 100% warmed with
  // prefetch at depth 1 ran 3630 tokens/s with the skip against 3119 without (batch 1, Qwen3
  // shape; 3625-3652 with prefetch off).
  bool lookahead_skips_resident = true;
  // Device residency check: a kernel after the routing looks the routed experts up in a
  // device-visible residency table and, when all are resident, the routed kernels run at once
  // (no host round trip before them; the host learns the routing through mapped memory while
  // they run). false: the host decides every layer (the routed kernels wait for it).
  bool device_residency_check = true;
  // The cached forward's device phase (front, lookahead, residency kernel, speculative routed
  // kernels) replays a CUDA graph captured on first use per launch size (graph_batch_sizes),
  // activation dtype and MoE layer, instead of launching each kernel from the host. false:
  // direct launches (larger sizes always launch directly).
  bool graphs = true;
  // At one token the cached forward's front routes only, as the all-resident one does, and the
  // residency kernel counts the per-expert offsets from the top-k ids; a layer that has to run
  // in several cache rounds (tile kernels over the permutation) runs the front again with the
  // scan first. false: the front always scans.
  bool front_skips_scan = true;
  // The residency kernel launches with PDL under the front and reads the layer's residency table
  // row over PCIe before its wait (the round trip overlaps the front). false: it launches without
  // PDL, so it starts after the kernel before it has finished, and reads the row then.
  bool residency_pdl = true;
  // Expert slots hold their matrices in the packed layout wherever the all-resident engine of
  // the same options packs its routed experts (Hopper, hidden and inter multiples of 128): each
  // load is copied into one of two staging buffers of one slot (device memory beyond the budget)
  // and packed from there into its slot on a pack stream while the next copy runs, and the cached
  // forwards run the all-resident kernels on the same layout. Off (the default): slots stay
  // row-major as the checkpoint stores them, and the kernels that read them sum in the same
  // order (the same bits either way). NOTES (H200, session 38, benches/RESULTS.md): on, 100%
  // warmed ran 2.1-2.5% faster (gate/up on packed rows), but copy-bound budgets 3-6% slower
  // (50% at batch 1: 560-574 against 600 tokens/s): the pack adds its time to every miss.
  bool pack_slots = false;
  // Host tier: also keep every routed expert losslessly compressed in pinned host memory
  // (experts::CompressedHostTier: sign and mantissa bytes, exponents as Huffman-coded offsets
  // from their group's largest, ~0.67 of the bytes for bf16 weights), encoded by compress_threads
  // background threads after start-up. A miss of an encoded expert copies its blob into a device
  // staging buffer and a decode kernel writes the slot: the same bits, ~1/3 less PCIe time. Experts
  // not yet encoded, and models with weights other than bf16, copy raw bytes. Ignored with
  // pack_slots. NOTES (H200, benches/RESULTS.md): batch-1 decode on the Qwen3 shape ran 12-18%
  // faster at 50-100% budgets with exponent nibbles (session 42; 50%, depth 1: 613 -> 723
  // tokens/s); the Huffman-coded exponents (session 43: 0.666 instead of 0.758 of the bytes) add
  // 2.6-3.7% at 50% in steady state and nothing at 75%: their decoder takes ~37 us an expert
  // under the cache's kernels against ~9 for the nibbles', which eats most of the copy saved.
  bool compress_host_tier = true;
  int compress_threads = 8;
  // A decode experts step (its kernels need every routed expert at once; the budget holds them)
  // whose round came back partial (slots loading, or pinned by other engine slots) hands it back
  // and tries again up to this many times; then it runs in several rounds of tile kernels, which
  // round differently from the all-resident engine.
  int decode_round_retries = 50;
  // Test hook: a cache round pins at most this many experts and defers the rest, as a full budget
  // would (0: no cap).
  int max_round_experts = 0;
  // Routing trace (experts::TraceRecorder text format); "" = none.
  std::string trace_path;
  // Host tier: register the mmap'd checkpoint for DMA (pinned-speed copies) when possible.
  bool register_host_memory = true;
  // Test hook: called on the forward's thread after each Acquire with the round just pinned
  // (before any of its copies or kernels are enqueued) and the pool.
  std::function<void(const experts::AcquireRound&, const experts::ExpertSlotPool&)> on_round;
};

// What the expert cache did so far (cumulative).
struct ExpertCacheStats {
  experts::ExpertCacheCounters counters;  // hits, misses, evictions, prefetch, copy wait, ...
  int32_t slots = 0;                      // slots of the (single) shape class
  int64_t slot_bytes = 0;
  std::string host_tier;      // how copies are sourced (e.g. "registered-mmap", "pageable")
  bool packed_slots = false;  // slots hold packed matrices (ExpertCacheOptions::pack_slots)
  // Gate-lookahead prediction against the experts really routed (micro-averaged).
  uint64_t predicted = 0, actual = 0, correct = 0;
  double precision = 0, recall = 0;
  uint64_t copy_busy_ns = 0;  // time the copy stream spent copying (timed batches of copies)
  uint64_t copy_batches = 0;
  uint64_t host_round_trips = 0;  // one per layer forward
  uint64_t host_wait_ns = 0;      // host time blocked in them (routing result to the host)
  uint64_t rounds = 0;            // cache rounds (>= layer forwards)
  // Layer forwards whose routed experts were all resident at the device check (their expert
  // kernels did not wait for the host).
  uint64_t device_hits = 0;
  // Cache rounds with a miss that computed their ready experts (the decode experts path: their
  // gate/up) before waiting for the loads of the others.
  uint64_t ready_first_rounds = 0;
  // Lookahead accuracy per depth ([0] = predictions one layer ahead, ...), micro-averaged.
  struct DepthAccuracy {
    uint64_t predicted = 0, actual = 0, correct = 0;
    double precision = 0, recall = 0;
  };
  std::vector<DepthAccuracy> by_depth;
  // Layer predictions (depth >= 2) not loaded because their depth's precision was too low.
  uint64_t gated_predictions = 0;
  // Compressed host tier (ExpertCacheOptions::compress_host_tier): experts encoded so far of
  // all, whether the encoder has finished (and in how many seconds, or why it stopped early),
  // blob bytes / raw bytes of the encoded experts; loads that moved a blob, and the bytes every
  // load moved over PCIe (blobs, or slot bytes: counters.bytes_copied counts slot bytes).
  int64_t compressed_experts = 0, compressible_experts = 0;
  bool compression_done = false;
  double compression_seconds = 0;
  double compression_ratio = 0;
  std::string compression_error;
  uint64_t compressed_loads = 0;
  uint64_t wire_bytes = 0;
};

struct CudaEngineOptions {
  int device = 0;                   // CUDA device index
  int num_slots = 1;                // concurrent Forward() calls, one CUDA stream each
  int64_t max_batch_tokens = 4096;  // workspaces are sized for this many tokens per slot
  // Batch-invariant results: a token's output bits do not depend on the batch it came in (no
  // split-K, fixed reduction orders, no atomics in any sum). Costs speed at small batches (see
  // RESULTS.md).
  bool deterministic = false;
  // Token counts for which CUDA graphs are captured (a forward of n tokens replays the graph of the
  // smallest size >= n; larger forwards launch directly). Empty: never capture.
  std::vector<int64_t> graph_batch_sizes = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
  // Use the Hopper (wgmma) GEMM tiles where the device and build allow (never in deterministic
  // mode, whose results must not depend on which tile a batch size picks).
  bool use_wgmma = true;
  // Let deterministic mode use the wgmma tiles for large batches. Batch invariance then also needs
  // wgmma and mma.sync to round every output element identically (same inputs, same k16 order):
  // measured so on an H200 (`cuda_engine_bench --check-invariance`, and the GPU test
  // DeterministicIsBatchInvariant, whose large batch takes the wgmma tile).
  bool deterministic_wgmma = true;
  // Hopper tile for large batches (see benches/RESULTS.md for their measured speeds).
  enum class HopperTile : uint8_t {
    kWide,      // 128 x 256 outputs, 1 block per SM
    kTwoPerSm,  // 128 x 128 outputs, 2 blocks per SM
    kTall,      // 256 x 128 outputs (4 warpgroups), 1 block per SM
    // 128 x 256 outputs like kWide, computed by a warp-specialised persistent kernel (a producer
    // warpgroup streams a 4-stage mbarrier ring, two consumer warpgroups run the wgmmas); bitwise
    // equal to kWide.
    kWideWarpSpecialized,
    // kWideWarpSpecialized with the weights loaded by TMA and multicast to both blocks of a
    // 2-block cluster that computes two row tiles of one expert (half the weight bytes read from
    // L2 per block); routed experts of resident weights only (the expert cache's slots and the
    // dense GEMMs run kWideWarpSpecialized). Bitwise equal to kWide.
    kWideCluster,
  };
  // kWideWarpSpecialized: 5-17% faster than kWide at 512-16384 tokens; kWideCluster (with one
  // wgmma for gate and up) 1-5.5% faster than kWideWarpSpecialized where the wgmma tile runs
  // (H200, RESULTS.md "session 3").
  HopperTile hopper_tile = HopperTile::kWideCluster;
  // kWideCluster only: false makes each block of a cluster load its own weights by TMA (no
  // multicast; for comparisons).
  bool cluster_multicast = true;
  // kWideCluster only: the routed down GEMM (contiguous A) on 2 x 2 clusters, A multicast along
  // the column blocks as well as B along the row tiles (kernels/grouped_gemm_sm90_cluster.cu):
  // never, where it has kQuadDownMinWaves waves of blocks (kernels/tile_heuristics.h), or always
  // (tests, comparisons). Off: on an H200 it was 1-3% faster than the cp.async 2-block kernel at
  // 16384 tokens but 0-2% slower than the 2-block kernel with A by TMA (cluster_tma_a_down) at
  // 4096-16384 and 1-4% slower at 512-1024 tokens (RESULTS.md session 6).
  enum class Use : uint8_t { kNever, kAuto, kAlways };
  Use cluster_quad_down = Use::kNever;
  // kWideCluster only: the scan copies x into the permuted order (into the down output buffer,
  // free until the down GEMM) and the routed gate/up GEMM loads it by TMA instead of gathering its
  // rows with cp.async: never, for experts of >= kPermuteXMinInter columns
  // (kernels/tile_heuristics.h), or always (tests, comparisons).
  Use cluster_permute_x = Use::kAuto;
  // kWideCluster only: the routed GEMMs in ping-pong mode (64-row tiles, the two consumer
  // warpgroups take turns so that one's epilogue overlaps the other's loads): never, up to
  // kPingpongMaxRows expected rows per expert (kernels/tile_heuristics.h), or always.
  Use cluster_pingpong = Use::kAuto;
  // Ping-pong GEMMs run in the kernel whose stages hold 64 A rows (more stages in flight) rather
  // than 128.
  bool cluster_pingpong_short_stages = true;
  // kWideCluster only: full 128-row tiles of the routed GEMMs store their outputs by TMA (the
  // warps hand each 8-row half of their 16 rows to the copy engine and move on) instead of with
  // st.global from the staged shared memory.
  bool cluster_tma_store = true;
  // kWideCluster only, outside ping-pong mode: the routed GEMMs' clusters take their work items
  // past the first from a global counter as they finish (a dynamic schedule), not every
  // ClusterCount()-th item, so that clusters that run faster take more and the last ones end
  // together. NOTES (H200, session 17, against the static order): Qwen3 4096 tokens 822 -> 804 us,
  // DeepSeek-V2-Lite 956 -> 947, Mixtral 16384 19607 -> 19114, Qwen3 16384 2633 -> 2589. The
  // ping-pong plans keep the static order: with the dynamic one Qwen3 512 tokens went 355 -> 369
  // us, DeepSeek-V2-Lite 512 334 -> 341 (benches/cuda_engine/results/
  // s17_dynamic_schedule_pingpong.patch).
  bool cluster_dynamic_schedule = true;
  // Past the fused decode front, with activations in the weights' dtype and outside deterministic
  // mode: the input copy and the router GEMM run as one kernel (kernels/router_gemm.cu) never,
  // from kRouterConvertMinTokens tokens up to kRouterConvertMaxWaves waves of its blocks
  // (kernels/tile_heuristics.h), or always.
  Use fused_router_convert = Use::kAuto;
  // Batches past the decode front route and scan in one grid whose last block scans (and, up to
  // 8192 pairs, writes the permutation), with no memset of the counters (kernels/routing.cu,
  // LaunchRouteScanTail; up to 256 experts); off: the route, scan and scatter kernels. NOTES (H200,
  // session 10, two rounds): slower, so off: Qwen3 512 tokens 360.0 -> 363.8 us, DSv2-Lite 512
  // 341.9 -> 343.6, Qwen3 64 306.3 -> 308.2; Mixtral and 4096+ tokens within the spread (the
  // separate kernels' launches already overlap by PDL; the last block's scan and scatter do not).
  bool route_scan_tail = false;
  // The combine takes 1, 2 or 4 chunks of 8 columns a thread with all their loads in flight
  // (top-k <= 8, 4, 2; bf16/f16 expert outputs); off: one chunk a thread (kernels/combine.cu).
  bool combine_unrolled = true;
  // The grid-wide scatter and the unrolled combine load the indices that kernels two or more
  // launches back wrote before their PDL wait (kernels/routing.cu, kernels/combine.cu).
  bool early_index_loads = true;
  // At most this many K splits of that kernel (1..4; PlanRouterConvert in
  // kernels/tile_heuristics.h says when it splits).
  int max_router_convert_splits = 4;
  // kWideCluster only: a routed down GEMM not on 2 x 2 clusters loads its A by TMA too (one
  // producer thread instead of 128 issuing cp.async) never, outside ping-pong plans (kAuto,
  // MoePlan::tma_a_down), or always. NOTES (H200): 0.7-3% faster at Mixtral 512-4096 and Qwen3 512
  // tokens (RESULTS.md session 6, before the ping-pong mode); in ping-pong plans cp.async was
  // 0.1-5.9 us faster at Qwen3 / DeepSeek-V2-Lite 256-768 and Mixtral 128 tokens, and TMA up to
  // 163 us faster at most other points (Mixtral 512-4096: 21-163 us; session 19, call 1).
  Use cluster_tma_a_down = Use::kAuto;
  // kWideCluster only, outside ping-pong plans: the routed GEMMs on pair clusters compute an
  // expert's last 1-16 rows past its multicast pairs (or past them and a solo tile of 128) in its
  // last pair (GemmArgs::pair_extra_rows) instead of in a solo tile of their own that streams the
  // expert's weights again: never, where the plan expects them to remove at least 8% of the work
  // units (kAuto, MoePlan::pair_extra_rows: kPairExtraRowsMinSaving, with the measurements), or
  // always. A by TMA needs the 8-row descriptors of TMA stores (cluster_tma_store).
  Use cluster_pair_extra_rows = Use::kAuto;
  // Expected rows per activated expert past which the Hopper tile runs the routed GEMMs (and the
  // layer's dense ones); from 17 rows up to it the mma.sync 64-row tile does. 16: the Hopper tile
  // from 17 rows (H200, RESULTS.md "session 3": 4-28% faster than the mma.sync tile at 24-64 rows
  // per expert, equal at Mixtral's 32-64). Experts under kWgmmaSmallExpertElems (hidden x inter)
  // keep the mma.sync tile up to 64 rows whatever this says.
  int wgmma_min_rows_per_expert = 16;
  // Expected rows per activated expert up to which the decode tile (mma.sync, 16 rows) runs the
  // routed GEMMs; past it the rule above. Negative: 16, or 4 for experts of at least 2^24 weights
  // (hidden x inter), which then take the Hopper tile from 5 rows whatever
  // wgmma_min_rows_per_expert says (kernels/tile_heuristics.h, kWgmmaLargeExpertElems).
  int decode_tile_max_rows_per_expert = -1;
  // At most this many K splits of the routed down GEMM (0: no cap; for comparisons).
  int max_down_splits = 0;
  // kWideCluster only: work units (multicast or solo pairs) per raster group of the routed GEMMs'
  // work-item order (GemmArgs::raster_units); 0: the plan's rule (MoePlan::raster_units, with the
  // measurements). Changes which cluster computes an output, never the output.
  int cluster_raster_units = 0;
  // Small-batch latency paths (benches/RESULTS.md, v7, v8). overlap_launches: programmatic
  // dependent launch between the layer's kernels (sm_90 devices). fused_decode_front: for <= 32
  // tokens the input conversion, router, routing and scan run as one kernel (never in
  // deterministic mode: its router rounds differently from the router GEMM of larger batches).
  // decode_gemv: the decode experts path (kernels/decode_experts.cu): the routed experts run per
  // (token, k) pair on CUDA cores over a persistent grid, gate/up then down fused with the combine
  // (3 kernels in all at 1 token), and at <= 4 tokens the shared expert as a CUDA-core GEMV (never
  // in deterministic mode); kAuto only where it measured faster on an H200 (1 token), kAlways
  // wherever it fits (<= 32 tokens, <= 4 rows per expert). narrow_decode_gate_up: the
  // gate/up mma.sync GEMM of a few rows per expert uses 16-column tiles (measured slower on an
  // H200, see RESULTS.md; off by default).
  enum class DecodeGemv : uint8_t { kNever, kAuto, kAlways };
  bool overlap_launches = true;
  // overlap_launches for plans of Hopper tiles too (their routing, scan and combine kernels; the
  // wgmma GEMMs launch without it). H200 (RESULTS.md session 9): 1.5-2 us less a layer at 256-512
  // tokens of the Qwen3 / DeepSeek-V2-Lite shapes, within the spread at Mixtral and 4096 tokens.
  bool hopper_overlap_launches = true;
  // With hopper_overlap_launches: the cluster-tile GEMMs launch with PDL too (their blocks take
  // SMs as the previous kernel's leave; the down GEMM streams its first weight stages before it
  // waits for h). Off: on an H200 it was 1-3.5 us slower at Qwen3 256-512 tokens, 1% at Mixtral
  // 256 and 1.6% at DeepSeek-V2-Lite 4096 (0.4% faster at Mixtral 512; RESULTS.md session 9).
  bool cluster_gemm_overlap = false;
  // With cluster_gemm_overlap: the down GEMM streams its first weight stages before its wait.
  // NOTES (H200, session 10, two rounds): PDL without that prefetch was slower still (Qwen3 512
  // tokens 360.7 -> 369.0 us, Mixtral 64 707 -> 717, 4096 5050 -> 5133): the launch itself, not
  // the weight prefetch, is what costs.
  bool cluster_gemm_prefetch = true;
  // kWideCluster plans without the permuted copy of x: the routed down GEMM launches with PDL and
  // never waits for gate/up to end; gate/up counts the h rows it stores per expert and down waits
  // for an expert's count before it reads that expert's h (kernels/grouped_gemm_sm90_cluster.cu,
  // GemmArgs::h_ready). Its clusters then take the SMs that gate/up's last work items leave idle.
  // Never, in every such plan, or (kAuto) in ping-pong plans and where gate/up has at most
  // kDownOverlapMaxItemsPerCluster work items a cluster (MoePlan::down_overlap). NOTES (H200,
  // session 19, RESULTS.md): ping-pong plans (static schedule: a third of the clusters may run one
  // item more), with their down GEMM's A by cp.async (cluster_tma_a_down), two rounds against
  // neither: Qwen3 384 / 512 / 768 tokens 348.3 / 353.6 / 371.0 -> 337.4 / 342.5 / 359.8 us,
  // DeepSeek-V2-Lite 256 / 384 / 512 316.5 / 325.7 / 335.2 -> 305.3 / 315.0 / 325.3 (call 3); the
  // final rule against neither (call 5): Qwen3 512 / 1024 / 4096 / 16384 -2.9 / -1.1 / +0.1 /
  // 0.0%, DeepSeek-V2-Lite -2.6 / +0.9 / -1.4 / -0.3%. Mixtral's cluster plans read the permuted
  // x (experts of >= kPermuteXMinInter columns), so they never overlap; cp.async A alone took its
  // 64 / 128 token plans from 712.6 / 741.1 to 708.5 / 733.5 us (call 3).
  Use cluster_down_overlap = Use::kAuto;
  // Past the decode front without the fused route + scan: the first kernel (the input copy or the
  // router fused with it) zeroes the route's per-expert counters after its PDL wait, instead of a
  // memset node before it. NOTES (H200, session 10, five rounds over two calls): Qwen3 64 / 256 /
  // 512 tokens -1.6 / -1.0 / -0.6 us, DeepSeek-V2-Lite 256 / 512 -1.0 / -0.7; Mixtral within its
  // spread.
  bool zero_counts_in_kernel = true;
  bool fused_decode_front = true;
  DecodeGemv decode_gemv = DecodeGemv::kAuto;
  bool narrow_decode_gate_up = false;
  // Decode experts path tuning (benches/RESULTS.md "v9"; H200, 1 token). decode_down_h_smem: down
  // + combine stages h in shared memory when it fits (v8b) instead of reading it from global memory
  // through L1 (v8a); off: 3 us faster at Qwen3 / DeepSeek-V2-Lite shapes, the same sums in the
  // same order. The rest are measured slower and off: decode_fused_route runs the front and gate/up
  // as ONE sm_90 kernel (kernels/decode_fused.cu: clusters of decode_fused_cluster_size blocks, at
  // most decode_fused_max_clusters of them when > 0, each compute the router, route every token
  // themselves and go straight on to the gate/up weights; up to 8 tokens, all-resident weights),
  // with decode_prefetch_down (the down weights into L2, kEarly before its gate/up, whose weights
  // then leave L2 first, kLate after each warp's gate/up; when they fit in 60% of L2);
  // decode_prefetch_units: each gate/up warp keeps its next units (0 to 16) on their way into L2
  // by bulk prefetches (not with kEarly); decode_down_tma / decode_gate_up_tma: weights moved by
  // the bulk copy engine into per-warp shared-memory buffers (sm_90).
  bool decode_down_h_smem = false;
  // Down + combine's 16-byte weight loads per lane and batch (h from global memory; the expert
  // cache's decode launches too): 8, 10 or 12, or 0 for kernels/decode_fused.h DecodeDownChunks's
  // rule (H200, 1 token: DeepSeek-V2-Lite 42.7 -> 42.0 us, Mixtral 194.1 -> 191.2 against 8
  // everywhere; RESULTS.md session 21).
  int decode_down_chunks = 0;
  // At one token, down + combine by groups of 8 output columns (kernels/decode_fused.h
  // DecodeDownOptions::groups, where DecodeDownGroupsApply holds): pieces of 8 rows x 64 columns a
  // warp item, h in shared memory, decode_down_groups_batch (4 or 6) pieces a register buffer,
  // decode_down_groups_preload: that many buffers (0-2) loaded before the PDL wait. NOTES (H200,
  // session 29, three rounds, 1 token, us, the old kernel -> batch 4 / preload 1): Qwen3 34.5 ->
  // 32.8, DeepSeek-V2-Lite 41.3 -> 39.1, Mixtral 195.1 -> 179.8, the embedded model 21.6 -> 19.7;
  // preload 0 or 2 and batch 6 were 0.3-1.6 us slower (RESULTS.md "Session 29").
  bool decode_down_groups = true;
  int decode_down_groups_batch = 4;
  int decode_down_groups_preload = 1;
  bool decode_fused_route = false;
  int decode_fused_cluster_size = 8;
  int decode_fused_max_clusters = 0;
  enum class DownPrefetch : uint8_t { kNone, kEarly, kLate };
  DownPrefetch decode_prefetch_down = DownPrefetch::kNone;
  // The fused decode front's blocks as one thread-block cluster (sm_90, <= 128 router rows): the
  // router rows meet in block 0's shared memory at a cluster barrier instead of a ticket and a
  // round trip of the logits through global memory (H200: 0.5-1.3% faster at 1-8 tokens, RESULTS.md
  // session 5).
  bool decode_front_cluster = true;
  // Graphs and launches of a one-token capacity run the fused decode front compiled for one token
  // slot per router pass (FrontArgs::one_token_kernel; the same sums, 7% less code). NOTES (H200,
  // session 39, three rounds against the general kernel, 1 token, us): Qwen3 32.4-32.7 ->
  // 31.9-32.1, DeepSeek-V2-Lite 38.2-38.6 -> 37.7-37.8, the embedded model 19.8-20.0 -> 19.3-19.5,
  // Mixtral within its spread; nsys: the Qwen3 front 6.8 -> 6.4 us.
  bool decode_front_one_token_kernel = true;
  // Split the K of a down GEMM that has few waves of blocks: a weight-streaming (decode tile) one,
  // or a Hopper-tile one of under 2 waves (kernels/tile_heuristics.h kWaveSplitMinWaves,
  // kWaveSplitBelowWaves; never in deterministic mode).
  bool wave_split_down = true;
  // Batches of up to kRouterMmaMaxTokens tokens run the router GEMM of a Hopper plan on the
  // mma.sync 64 x 128 tile (kernels/tile_heuristics.h; never in deterministic mode).
  bool small_batch_router_mma = true;
  // Larger batches run a router of at least kLargeRouterMmaMinRows rows on that tile too, its K
  // split to fill two blocks per SM, instead of the fused router or the wgmma tile (kernels/
  // tile_heuristics.h; never in deterministic mode). NOTES (H200, session 17): Qwen3 4096 tokens
  // 835.5 -> 813.6 us (three rounds), DeepSeek-V2-Lite 8192 1732.9 -> 1708.5.
  bool large_batch_router_mma = true;
  // Larger batches run a router of kLargeRouterMmaMinRows to 128 rows (Qwen3, DeepSeek-V2-Lite,
  // Qwen2-MoE with its shared gate) on the warp-specialised 128 x 128 wgmma tile instead, K split
  // to fill the SMs (kWgmmaWsNarrow; takes precedence over large_batch_router_mma; never in
  // deterministic mode).
  bool large_batch_router_narrow = true;
  int decode_prefetch_units = 0;
  bool decode_down_tma = false;
  bool decode_gate_up_tma = false;
  // The routed gate/up GEMM of decode-tile plans (a few rows per expert, beyond the decode experts
  // path) on the weight-streaming kernel (kernels/stream_gemm.cu, sm_90): whole weight rows moved
  // by the bulk copy engine through a ring of shared-memory stages, multiplied by mma.sync. Never
  // in deterministic mode (its K order differs from the mma.sync tiles'). kAuto: where its rule
  // measured faster (kStreamGateUpMaxRows, kStreamGateUpMinExpertElems in
  // kernels/tile_heuristics.h). stream_down: the routed down GEMM of those plans too (measured
  // slower; comparisons). stream_gemm_blocks: its grid (0: one block per SM; tests take fewer,
  // so that a block's share spans many row tiles).
  Use stream_gate_up = Use::kAuto;
  // The routed experts of an all-resident engine in kernels/weight_layout.h's packed layout
  // (rewritten on the device at load): tiles of 128 weight rows x 64 columns, each one contiguous
  // 16 KiB block in the 128-byte swizzle of shared memory, so the cluster GEMMs move every weight
  // box by a 1-D bulk copy. Every routed-expert kernel reads it except the weight-streaming GEMM
  // (its plans then run gate/up on the decode tile), the fused decode kernel and the decode bulk-
  // copy variants. Never; kAuto: on engines of the kWideCluster tile on an sm_90 device whose
  // options pick none of those kernels; kAlways: wherever the shapes allow (INVALID_ARGUMENT with
  // those options). Shapes: hidden and inter multiples of 128, else row-major whatever this says.
  // NOTES (H200, session 24, RESULTS.md): Mixtral 64 tokens 691 -> 659 us, 256 740 -> 703,
  // DeepSeek-V2-Lite 256 / 512 -3.3 / -3.5%, Qwen3 512 -5.9%; at 1 token Qwen3 / DeepSeek-V2-Lite
  // -1.2 / -2.2%, Mixtral +0.6%; the weight-streaming gate/up's plans (Qwen3 8 / 32, DeepSeek-V2-
  // Lite 32 tokens) 0.7-1.2% slower.
  Use packed_expert_weights = Use::kAuto;
  // With packed weights, the cluster GEMMs load the boxes by 4-D tensor copies instead of 1-D bulk
  // copies: never; kAuto where an expert expects many rows (kPackedTensorCopiesMinRows in
  // kernels/tile_heuristics.h: 1-D bulk copies are faster at a few hundred rows an expert, tensor
  // copies at 1024+); kAlways in every cluster plan (tests, comparisons).
  Use packed_tensor_copies = Use::kAuto;
  bool stream_down = false;
  int stream_gemm_blocks = 0;
  // Each all-resident forward's meta (token count, layer, input and output) reaches the device as
  // the argument of a one-thread kernel, the first of the forward: a parameter of the captured
  // graph's first node, updated before each replay (cudaGraphExecKernelNodeSetParams); the expert
  // cache's forwards likewise. Off: a 24-byte host-to-device copy from a pinned ring before the
  // graph.
  bool meta_in_graph = true;
  // With meta_in_graph, a forward on the decode experts path (1 token) gives the meta to its fused
  // decode front, which is then the forward's first kernel and stores the meta for the others:
  // no one-thread meta kernel before it (the graph's first node is the front). Off: the meta
  // kernel first, as on every other path.
  bool front_takes_meta = true;
  // With activations in the weights' dtype, past the decode paths (no fused decode front, no
  // weight-streaming gate/up, no permuted copy of x) and without an expert cache: the router and
  // expert GEMMs read the forward's input buffer in place (its address from the meta, on the
  // device) instead of a copy made by the first kernel.
  bool input_in_place = true;
  ExpertCacheOptions expert_cache;
};

// A forward on device buffers (benchmarks, future device-resident callers).
struct DeviceForwardArgs {
  int layer = -1;
  DType dtype = DType::kBF16;  // activation dtype of input and output
  int64_t n_tokens = 0;
  const void* input = nullptr;  // [n_tokens, hidden] device memory
  void* output = nullptr;       // [n_tokens, hidden] device memory
  int slot = 0;
};

class CudaEngine final : public Engine {
 public:
  // Uploads every MoE layer's weights (BF16 or F16; routers in other dtypes are converted) to
  // `options.device` and allocates every workspace. With an expert cache budget, uploads routers,
  // shared experts and biases only and allocates the expert slots (experts load on demand).
  // INVALID_ARGUMENT for unsupported specs or a budget smaller than one expert, FAILED_PRECONDITION
  // without a usable device, RESOURCE_EXHAUSTED when device or pinned memory runs out.
  static StatusOr<std::unique_ptr<CudaEngine>> Create(std::shared_ptr<const Model> model,
                                                      const CudaEngineOptions& options);
  // Builds an engine whose weights (weight_dtype of `spec`) are generated on the device from
  // `seed`: uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)], router rows scaled for unit-variance
  // logits. For benchmarks of shapes too large to build on the host. No expert cache (there is no
  // host tier): INVALID_ARGUMENT with a budget.
  static StatusOr<std::unique_ptr<CudaEngine>> CreateRandom(const MoeSpec& spec, uint64_t seed,
                                                            const CudaEngineOptions& options);
  ~CudaEngine() override;

  std::string_view name() const override { return "cuda"; }
  const MoeSpec& spec() const override;
  int num_slots() const override;
  int64_t max_batch_tokens() const override;
  // Host buffers in and out: stages through the slot's pinned buffers and waits for the result.
  Status Forward(const ForwardArgs& args) override;

  // Enqueues one forward on device buffers on the slot's stream and returns without waiting (with
  // an expert cache: after the layer's routing result reached the host, see the file comment).
  // The caller keeps input/output alive and unchanged until the stream reaches this point.
  // INVALID_ARGUMENT for input or output not 16-byte aligned (the kernels move 16-byte vectors).
  Status EnqueueDevice(const DeviceForwardArgs& args);
  // The slot's stream (valid for the engine's lifetime).
  cudaStream_t stream(int slot) const;

  // Device memory held for weights and pointer tables (with an expert cache: the resident weights,
  // the expert slots and the cache's staging), and for one slot's workspaces.
  int64_t weight_device_bytes() const;
  int64_t workspace_device_bytes_per_slot() const;
  // "NVIDIA H100 80GB HBM3", 132, ...
  const std::string& device_name() const;
  int sm_count() const;
  // Whether the Hopper (wgmma) tiles are in use.
  bool uses_wgmma() const;
  // Whether the routed experts are stored packed (CudaEngineOptions::packed_expert_weights).
  bool packed_expert_weights() const;
  // Blocks of the fused decode kernel's grid at 1 token when decode forwards that fit it run it
  // (decode_fused_route on an sm_90 device with this build's sm_90 image of it), else 0.
  int fused_decode_blocks() const;

  // Expert cache (null / FAILED_PRECONDITION without a budget). The pool outlives no engine: use
  // it (e.g. metrics::ExpertCacheMetrics) only while the engine lives.
  const experts::ExpertSlotPool* expert_cache_pool() const;
  // Timings count once their events were read (at later forwards, or by QuiesceExpertCache).
  StatusOr<ExpertCacheStats> expert_cache_stats() const;
  // Waits for every expert copy and reads every pending timing; call only while no forward runs
  // (benchmarks, tests). OK without a cache.
  Status QuiesceExpertCache();
  // Start-up warming: loads `most_wanted_first` (e.g. cuda::RankTraceExperts of a recorded trace)
  // into free slots until the budget is full, never evicting one of them, and waits for the
  // copies. Returns the experts loaded (counted as prefetches). FAILED_PRECONDITION without a
  // cache; INVALID_ARGUMENT for a key outside the model. Call before serving (no forward running).
  StatusOr<int64_t> WarmExpertCache(std::span<const experts::ExpertKey> most_wanted_first);
  // Flushes the routing trace file (OK when there is none).
  Status FlushExpertTrace();

  class Impl;

 private:
  explicit CudaEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe
