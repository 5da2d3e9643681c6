// Launchers of the fused MoE kernels (kernels/*.cu). Every launcher validates its Args, enqueues on
// `stream` (graph-capturable: no host synchronisation, no allocation) and returns the launch
// status.
//
// Per-forward values (token count, layer, input/output pointers) are read by the kernels from a
// ForwardMeta in device memory, so one captured CUDA graph serves every token count up to the
// capacity it was captured for, every layer and any buffers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/tile_heuristics.h"
#include "moe/common/status.h"

namespace moe::cuda {

// Element type of the weights; also the compute type of activations inside the layer.
enum class WType : uint8_t { kBF16, kF16 };
// Element type of the layer's input and output activations.
enum class AType : uint8_t { kF32, kF16, kBF16 };

struct ForwardMeta {
  int32_t n_tokens = 0;         // rows of this forward (<= the launch capacity)
  int32_t layer_pos = 0;        // index into the per-layer pointer tables
  const void* input = nullptr;  // [n_tokens, hidden] AType, device memory
  void* output = nullptr;       // [n_tokens, hidden] AType, device memory
};

// ---- Grouped GEMM (grouped_gemm.cu) ----
// C[r, n] = sum_k A[row(r), k] * B_g[n, k] for each row r of each group g (B_g in torch Linear
// layout [N, K]). Gated: C[r, n] = silu(A.Gate_g[n]) * (A.Up_g[n]) with Gate/Up from two tables.
// Rows come either from a tile list (grouped: tiles[i] = {group, first row}, group g's rows end at
// group_offsets[g + 1]) or densely from 0 to *m_dev (one group).
// Groups (experts) past which kWgmmaWsMc GEMMs run as kWgmmaWs (no cluster kernel).
inline constexpr int kMaxClusterGemmGroups = 1024;
struct GemmArgs {
  GemmTile tile = GemmTile::kDecode;
  bool gated = false;
  WType wtype = WType::kBF16;
  // A: [rows, lda] in wtype; row r of the problem reads A row a_rows[r] (if set) or r.
  const void* a = nullptr;
  int64_t lda = 0;
  const int32_t* a_rows = nullptr;
  // When set, A's base pointer is read from here on the device instead of `a`: the forward's input
  // (&ForwardMeta::input), so that a graph reads each forward's own input buffer in place. Not with
  // an A descriptor (a_tmap). The kernel reads it where it reads `a`, before its PDL wait: the
  // pointer must come from two or more launches back (kernels/pdl.cuh).
  const void* const* a_indirect = nullptr;
  // Rows: grouped (tiles != nullptr) or dense (m_dev).
  const int2* tiles = nullptr;
  const int32_t* n_tiles = nullptr;
  const int32_t* group_offsets = nullptr;
  const int32_t* m_dev = nullptr;
  int64_t grid_tiles = 0;  // grid.x; blocks past the real tile count exit at once
  // B: pointer tables indexed [*layer_dev * b_layer_stride + group], each [n, ldb] in wtype.
  const void* const* b0_table = nullptr;
  const void* const* b1_table = nullptr;  // gated only: the up projection
  // TMA descriptors of the same matrices (kernels/tensor_map.h; device memory, 64-byte aligned),
  // tables indexed like b0_table / b1_table. With them (and a tile list over n_groups groups), the
  // kWgmmaWsMc tile loads B by TMA multicast across a 2-block cluster; without, it runs as
  // kWgmmaWs.
  const void* const* b0_tmaps = nullptr;
  const void* const* b1_tmaps = nullptr;
  int n_groups = 0;
  // B matrices (b0_table / b1_table) in kernels/weight_layout.h's kPacked layout (ldb == k, n a
  // multiple of 128; every tile reads it, LaunchStreamGemm does not). The cluster tile then loads
  // each 128 x 64 box by a 1-D bulk copy, or with b_packed_tensor (MoePlan::packed_tensor_copies:
  // plans of many rows per expert) by a 4-D tensor copy through b0_tmaps (descriptors of the
  // packed layout, DeviceWeights::BuildTensorMaps).
  bool b_packed = false;
  bool b_packed_tensor = false;
  // kWgmmaWsMc only: false makes each block of the cluster load all of its B itself (for
  // comparisons; no multicast).
  bool tma_multicast = true;
  // kWgmmaWsMc only: clusters of the kernel resident at once on the device (its persistent grid),
  // from ClusterGemmResidentClusters() at start-up; 0 asks the device at each launch.
  int resident_clusters = 0;
  // kWgmmaWsMc GEMMs with TMA descriptors and contiguous A (a_rows null) only: the TMA descriptor
  // of A (device memory, kActTensorMapBoxRows-row boxes); the kernel then loads A by TMA too, on
  // clusters of 2 x a_cluster_cols blocks: 2 = two row tiles x two column blocks, A multicast
  // along the column blocks and B along the row tiles (resident_clusters then counts those:
  // ClusterGemmResidentClusters(4)); 1 = the pair clusters, each block loading its own A.
  const void* a_tmap = nullptr;
  int a_cluster_cols = 1;
  // kWgmmaWsMc pair clusters (a_cluster_cols 1) only: ping-pong mode. Tiles of 64 rows (no
  // multicast), each work item computed by one of the two consumer warpgroups in turn, so one
  // item's epilogue overlaps the next item's loads and wgmmas. Same bits as the 128-row tiles.
  bool pingpong = false;
  // Ping-pong mode's stages hold 64 A rows (kPpStages of them) instead of 128 (kMcStages).
  bool pingpong_short_stages = true;
  // kWgmmaWsMc only: the TMA descriptor of C (device memory; [rows, n] with row stride ldc, boxes
  // of kStoreTensorMapBoxRows rows): full 128-row tiles of wtype output are then stored by TMA,
  // without the warps waiting for the writes. Ignored for f32 partials.
  const void* c_tmap = nullptr;
  // kWgmmaWsMc pair clusters, multicast, outside ping-pong mode, with A by cp.async or by TMA with
  // a_x_tmap (ignored elsewhere): a group whose rows leave 1..kClusterPairExtraRows past its
  // multicast pairs, or that many past its pairs and a solo tile of 128, computes them in its last
  // pair as extra rows (each of the cluster's 4 consumer warpgroups a quarter of the columns, from
  // the stage's weights) instead of in a tile of their own that streams the weights again.
  bool pair_extra_rows = false;
  // With A by TMA and pair_extra_rows: the TMA descriptor of A in kStoreTensorMapBoxRows-row boxes
  // (two per stage load the extra rows).
  const void* a_x_tmap = nullptr;
  // kWgmmaWsMc only: units (multicast or solo pairs) per raster group of the work-item order
  // (DecodeWorkItem); 0 = kWsGroupRows. Changes which cluster computes an output, never how.
  int raster_units = 0;
  // kWgmmaWsMc outside ping-pong mode only: two zeroed ints of device memory (the next work item,
  // the clusters done) that the launch leaves at zero again; with them the clusters take their
  // work items past the first one from a global counter as they finish (dynamic schedule) instead
  // of every ClusterCount()-th.
  int32_t* item_counter = nullptr;
  // kWgmmaWsMc with B descriptors only: n_groups + 1 zeroed ints of device memory that the routed
  // down GEMM's launch leaves at zero again (the h-ready counters). The gated gate/up GEMM adds
  // each h row of group g it stores to h_ready[g] once its stores are visible; the down GEMM
  // (launched with PDL, `pdl`) never waits for gate/up to end, but before it loads the A (h) rows
  // of group g waits until h_ready[g] = rows(g) x gate/up's column blocks (kClusterGatedColumns
  // columns each) x kHReadyQuarters (a warp counts each row it stores 4 times, or once for a
  // quarter of an item's columns: pair_extra_rows), so its clusters start on the SMs that
  // gate/up's last work items leave idle.
  // Nothing after the down GEMM may read what gate/up wrote, and gate/up must not read what down
  // writes.
  int32_t* h_ready = nullptr;
  const int32_t* layer_dev = nullptr;
  int64_t b_layer_stride = 0;
  int64_t ldb = 0;
  int n = 0;
  int k = 0;
  // C: [rows, ldc]; wtype, or f32 partial sums per split at c + split * split_stride.
  void* c = nullptr;
  int64_t ldc = 0;
  bool out_f32 = false;
  int splits = 1;
  int64_t split_stride = 0;
  // Programmatic dependent launch (mma.sync tiles and kWgmmaWsMc; see kernels/pdl.cuh; the other
  // wgmma tiles launch without it). prefetch_weights: stream the first weight stages before
  // waiting for the previous kernel; only when tiles / n_tiles / group_offsets / m_dev /
  // layer_dev / a_rows were written two or more launches back (kWgmmaWsMc: with A by TMA only).
  bool pdl = false;
  bool prefetch_weights = false;

  Status Validate() const;
};

// Raises the dynamic shared-memory limit of every GEMM instantiation (with `sm90`, also of the
// wgmma kernels, which need an sm_90 device); call once per device.
Status InitGemmKernels(bool sm90);
// True when the current device runs this build's wgmma kernels (an sm_90a image on an sm_90
// device): probed with a one-thread kernel, so call it at start-up only.
StatusOr<bool> ProbeWgmmaKernels();
Status LaunchGemm(const GemmArgs& args, cudaStream_t stream);
// Clusters of the kWgmmaWsMc kernel (of 2 blocks, or 4 for the 2 x 2 kernel: GemmArgs::a_tmap)
// resident at once on the current device; its persistent grid has this many (call after
// InitGemmKernels(true)).
StatusOr<int> ClusterGemmResidentClusters(int cluster_blocks = 2);
#ifdef MOE_GEMM_TRACE
// Diagnostic builds only (-DMOE_GEMM_TRACE=ON): where the cluster GEMM records its timeline
// (device memory of GemmTraceLayout::kWords words, kernels/gemm_trace.cuh); null stops it.
Status SetGemmTraceBuffer(uint64_t* buf);
// Where the decode chain records its timeline (DecodeTraceLayout::kWords words, zeroed by the
// caller; kernels/gemm_trace.cuh); null stops it. The meta kernel, the decode front and the decode
// experts live in three translation units, each with its own copy of the pointer:
// SetDecodeTraceBuffer sets all three.
Status SetDecodeTraceBuffer(uint64_t* buf);
Status SetDecodeTraceBufferMeta(uint64_t* buf);   // routing.cu
Status SetDecodeTraceBufferFront(uint64_t* buf);  // decode_front.cu
#endif
// The same grouped (or dense) problem on CUDA cores for decode batches (decode_gemv.cu): one warp
// per output column streams the weights once with 16-byte loads. Needs the decode tile's row list
// (args.tile == kDecode) and splits == 1; not batch invariant against the mma.sync tiles.
bool CanDecodeGemv(const GemmArgs& args);
Status LaunchDecodeGemv(const GemmArgs& args, cudaStream_t stream);

// The same grouped problem for a few rows per expert with the weights moved by the bulk copy
// engine (stream_gemm.cu, sm_90): a persistent grid of `blocks` blocks (one per SM), each a ring of
// shared-memory stages of 8 whole weight rows (contiguous in memory: 4 gate + 4 up rows, or 8
// plain) filled by a producer warp and multiplied by mma.sync in consumer warps with the tile's A
// rows (the first 8 in two shared-memory slots filled by a second producer warp, the rest through
// L1). Needs the decode tile's row list (<= 16 rows a tile), splits == 1, ldb == k, k % 32 == 0
// and 8 rows of K in a stage of at most kStreamSmemBytes / (kStreamMinStages + 2); not batch
// invariant against the mma.sync tiles.
inline constexpr int64_t kStreamSmemBytes = 200 * 1024;
inline constexpr int kStreamMinStages = 4;
struct StreamGemmShape {
  int cols = 0;          // output columns of a unit (stage): 4 gated, 8 plain
  int stage_bytes = 0;   // 8 whole weight rows
  int stages = 0;        // 0: K too long for a stage, or not a multiple of 32
  int groups = 0;        // consumer groups of a block (each stage read by one): min(12, stages)
  int split = 0;         // warps of a group, each taking every split-th step of K: 1 to 3
  int a_slot_bytes = 0;  // one A slot: 8 rows of K (padded)
  int b_pitch = 0;       // bytes from one weight row of a stage to the next
  int col_units = 0;     // ceil(n / cols), set at launch
};
StreamGemmShape PlanStreamGemm(bool gated, int k);
bool CanStreamGemm(const GemmArgs& args);
// True when the current device runs the kernel (sm_90 image); raises its shared-memory limit.
StatusOr<bool> InitStreamGemm();
Status LaunchStreamGemm(const GemmArgs& args, int blocks, cudaStream_t stream);

// ---- Decode experts (decode_experts.cu) ----
// The routed experts of a decode batch (CanDecodeExperts) on CUDA cores, per (token, k) pair (no
// tile list), over a persistent grid that streams each pair's weight rows once with 16-byte loads
// (pairs of one expert meet in registers or L2). Gate/up writes
// h[row(pair)] = silu(x[token] . gate[e]) * (x[token] . up[e]); down + combine writes
// out[token] = sum_k w[token, k] * (h[row(pair)] . down[e]) + gate(token) * sum_s ys[s][token]
// (k ascending, then splits ascending) in AType to meta->output: the combine needs no launch.
// Weight matrices are dense, row stride = K ([inter, hidden] gate/up, [hidden, inter] down), or
// packed (DecodeExpertsArgs::packed).
// NOTES: rounds unlike the tiles + combine, so deterministic (batch-invariant) mode never uses it.
struct DecodeExpertsArgs {
  const ForwardMeta* meta = nullptr;
  WType wtype = WType::kBF16;
  AType atype = AType::kBF16;  // of meta->output
  int hidden = 0;
  int inter = 0;
  int n_experts = 0;
  int top_k = 0;
  int64_t capacity = 0;
  const void* x = nullptr;  // [capacity, ldx] wtype: the converted input
  int64_t ldx = 0;
  const int32_t* topk_ids = nullptr;        // [capacity, top_k]
  const float* topk_weights = nullptr;      // [capacity, top_k]
  const void* const* gate_table = nullptr;  // [layers * n_experts] -> [inter, hidden] wtype
  const void* const* up_table = nullptr;    // [layers * n_experts] -> [inter, hidden] wtype
  const void* const* down_table = nullptr;  // [layers * n_experts] -> [hidden, inter] wtype
  // Gate/up skips the pairs whose expert's gate entry is null (their h rows stay as they were):
  // the expert cache computes the pairs of its ready experts before the loading ones arrive.
  const int32_t* layer_dev = nullptr;  // layer position (index into the tables / n_experts)
  // h rows: pair p's row is pair_row[p] (the scan's expert-sorted order, so that pairs of one
  // expert are neighbours), or p when pair_row is null (the front may then skip the scan).
  const int32_t* pair_row = nullptr;
  void* h = nullptr;  // [capacity * top_k, inter] wtype
  // Shared expert (down + combine only; ys null without one): down outputs [capacity, hidden] in
  // wtype, or f32 partials per split; shared_gate [capacity] or null (gate 1).
  const void* ys = nullptr;
  bool ys_f32 = false;
  int ys_splits = 1;
  int64_t ys_split_stride = 0;
  const float* shared_gate = nullptr;
  int sm_count = 0;  // the persistent grid's size is a multiple of this
  // Programmatic dependent launch (kernels/pdl.cuh). Down + combine reads the routing (topk_ids,
  // topk_weights, tables) before its wait: the routing must come two or more launches earlier.
  bool pdl = false;
  // Gate/up right after a front that stores the meta (FrontArgs::store_meta): it reads the layer
  // after its wait (else before, staging the layer's gate/up tables in shared memory).
  bool layer_after_wait = false;
  // The gate/up/down matrices are in kernels/weight_layout.h's kPacked layout (hidden and inter
  // multiples of 128; not with the bulk-copy variants or the fused decode kernel).
  bool packed = false;
  Status Validate() const;
};
bool CanDecodeExperts(int64_t capacity, int top_k);
Status LaunchDecodeGateUp(const DecodeExpertsArgs& args, cudaStream_t stream);
Status LaunchDecodeDownCombine(const DecodeExpertsArgs& args, cudaStream_t stream);

// ---- Routing and data movement (routing.cu) ----
// One thread stores `meta` at `dst`: the first kernel of an all-resident forward, so that a
// captured graph takes each forward's meta as a parameter of its first node (CudaEngine updates
// the node before each replay) instead of a host-to-device copy on the copy engine before the
// graph. Launched without PDL, after every kernel of the forward before it (they read the old
// meta); the kernel after it may be launched with PDL and must wait before reading the meta.
Status LaunchStoreMeta(const ForwardMeta& meta, ForwardMeta* dst, cudaStream_t stream);
// The kernel LaunchStoreMeta launches (to find its node in a captured graph).
const void* StoreMetaKernelFunction();

struct RoutingParams {
  int n_experts = 0;
  int top_k = 0;
  bool sigmoid = false;  // scoring: sigmoid, else softmax
  int topk_method = 0;   // 0 greedy, 1 group-limited (group max), 2 noaux_tc (sum of top-2)
  int n_group = 1;
  int topk_group = 1;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
  bool has_bias = false;         // correction bias (selection only)
  bool has_shared_gate = false;  // logits column n_experts is the shared-expert gate
};

// x[t, 0:hidden] = wtype(input[t]); with split_lo also x[t, hidden:2*hidden] = wtype(input - hi)
// (the rounding residue, so that the router sees the activations to ~16 bits).
struct ConvertArgs {
  const ForwardMeta* meta = nullptr;
  AType atype = AType::kBF16;
  WType wtype = WType::kBF16;
  int hidden = 0;
  int64_t capacity = 0;
  bool split_lo = false;
  void* x = nullptr;  // [capacity, 2 * hidden]
  bool pdl = false;   // programmatic dependent launch (kernels/pdl.cuh)
  // False: no copy (the GEMMs read the input in place, GemmArgs::a_indirect); the kernel only
  // zeroes the counters below (one block).
  bool copy = true;
  // Optional: block 0 zeroes these `n_zero` counters after its PDL wait (the route's per-expert
  // counters, instead of a memset node before the kernel).
  int32_t* zero = nullptr;
  int n_zero = 0;
  Status Validate() const;
};
Status LaunchConvert(const ConvertArgs& args, cudaStream_t stream);

// ---- Router GEMM fused with the conversion (router_gemm.cu) ----
// For activations in the weights' dtype: copies the input rows into x ([capacity, ldx], the hi
// part ConvertKernel writes) and computes logits[t, r] = sum_k input[t, k] * router[r, k] for every
// router row in f32 on the tensor cores (mma.sync, k ascending, no split: batch invariant).
struct RouterConvertArgs {
  const ForwardMeta* meta = nullptr;
  WType wtype = WType::kBF16;  // also the input's dtype
  int hidden = 0;
  int64_t capacity = 0;
  void* x = nullptr;  // null: no copy (the GEMMs read the input in place)
  int64_t ldx = 0;
  const void* const* router_table = nullptr;  // [layers] -> [router_rows, ld_router] wtype
  const int32_t* layer_dev = nullptr;         // index into router_table (null: entry 0)
  int router_rows = 0;
  int64_t ld_router = 0;
  float* logits = nullptr;  // [k_splits][capacity, ld_logits] partial sums
  int64_t ld_logits = 0;
  int64_t split_stride = 0;  // floats between the K splits' partials
  int tiles_per_block = 1;   // router rows per block / 8 (PlanRouterConvert)
  int k_splits = 1;          // PlanRouterConvert
  int32_t* zero = nullptr;   // as ConvertArgs::zero
  int n_zero = 0;
  bool pdl = false;
  Status Validate() const;
};
Status LaunchRouterConvert(const RouterConvertArgs& args, cudaStream_t stream);

// One warp per token: scores, group-limited selection, top-k (ties -> lower index), weights; counts
// tokens per expert (counts must be zero on entry) and records each pair's rank within its expert.
struct RouteArgs {
  const ForwardMeta* meta = nullptr;
  RoutingParams routing;
  const float* logits = nullptr;  // [splits][capacity][ld_logits] partial sums
  int64_t ld_logits = 0;
  int splits = 1;
  int64_t split_stride = 0;
  const float* bias = nullptr;  // [layers][n_experts] or null
  int64_t capacity = 0;
  int32_t* topk_ids = nullptr;    // [capacity, top_k]
  float* topk_weights = nullptr;  // [capacity, top_k]
  int32_t* ranks = nullptr;       // [capacity, top_k]
  int32_t* counts = nullptr;      // [n_experts]
  float* shared_gate = nullptr;   // [capacity] sigmoid gate (has_shared_gate)
  bool pdl = false;               // programmatic dependent launch (kernels/pdl.cuh)
  Status Validate() const;
};
Status LaunchRoute(const RouteArgs& args, cudaStream_t stream);

// One block: expert offsets (exclusive scan of counts), the tile list for tile height bm, and the
// permutation: sorted row of pair p = offsets[e] + rank[p]; perm_token[row] = p / top_k.
struct ScanArgs {
  const ForwardMeta* meta = nullptr;
  int n_experts = 0;
  int top_k = 0;
  int bm = 16;
  int64_t capacity = 0;
  const int32_t* counts = nullptr;
  const int32_t* topk_ids = nullptr;
  const int32_t* ranks = nullptr;
  int32_t* group_offsets = nullptr;  // [n_experts + 1]
  int2* tiles = nullptr;             // [MaxGroupedTiles]
  int32_t* n_tiles = nullptr;
  int32_t* perm_token = nullptr;  // [capacity * top_k]
  int32_t* pair_row = nullptr;    // [capacity * top_k]
  // Optional: the permutation also copies the activations into the permuted order, x_perm row r =
  // x row perm_token[r] (2-byte elements, `hidden` of them; x rows ld_x apart), for a gate/up GEMM
  // that loads A by TMA (GemmArgs::a_tmap). Always on the grid-wide scatter kernel.
  // With x_from_meta the rows come from the forward's input itself (meta->input, rows `hidden`
  // apart): x and ld_x are not used.
  const void* x = nullptr;
  int64_t ld_x = 0;
  bool x_from_meta = false;
  void* x_perm = nullptr;  // [capacity * top_k, hidden]
  int hidden = 0;
  bool pdl = false;  // programmatic dependent launch (kernels/pdl.cuh)
  // The grid-wide scatter loads its first pair's expert and rank before its PDL wait (the route
  // must have run two or more launches before it).
  bool early_indices = true;
  Status Validate() const;
};
Status LaunchScan(const ScanArgs& args, cudaStream_t stream);

// Route + Scan in one block for decode batches (CanRouteScan): per-expert counters live in shared
// memory (ra.counts is not used and need not be zeroed); same outputs as LaunchRoute + LaunchScan.
bool CanRouteScan(int64_t capacity, int n_experts);
Status LaunchRouteScan(const RouteArgs& ra, const ScanArgs& sa, cudaStream_t stream);
// Route + Scan (+ the permutation) of any batch in one launch (CanRouteScanTail: up to
// kRouteScanMaxExperts experts): blocks of 32 tokens route as LaunchRoute, and the block that
// draws the last `ticket` scans; ScatterRows (sa.x_perm) or, past 8192 pairs, Scatter follows.
// The per-expert counters (ra.counts == sa.counts) and the ticket must be zero on entry and are
// zero again on exit, so a slot zeroes them once, not per forward. Same outputs as LaunchRoute +
// LaunchScan.
bool CanRouteScanTail(int n_experts);
Status LaunchRouteScanTail(const RouteArgs& ra, const ScanArgs& sa, int32_t* ticket,
                           cudaStream_t stream);
// Decode front end (CanFuseFront): convert + router + route + scan in ONE launch. Each block
// converts a slice of the input into ca.x and computes kFrontRowsPerBlock router rows (one warp
// per row, f32 FMAs on the input activations as given, k ascending per lane then a fixed warp tree)
// into ra.logits ([capacity][ld_logits], splits 1); the last block to finish (ticket counter,
// reset by that block for the next forward) routes and scans like LaunchRouteScan.
// NOTES: its logits round differently from the router GEMM of larger batches, so deterministic
// (batch-invariant) mode must not use it.
struct FrontArgs {
  ConvertArgs convert;
  RouteArgs route;
  ScanArgs scan;
  const void* const* router_table = nullptr;  // [layers] -> [router_rows, ld_router] wtype
  int64_t ld_router = 0;
  int router_rows = 0;
  int32_t* ticket = nullptr;  // one counter, zero before the first forward
  // Route only: skip the scan (offsets, tile list, permutation) when nothing reads it (the decode
  // experts path with h in pair order).
  bool skip_scan = false;
  // All blocks form one thread-block cluster (sm_90, FrontClusterBlocks() > 0): each block writes
  // its router rows into block 0's shared memory and block 0 routes after a cluster barrier,
  // instead of the ticket and a round trip of the logits through global memory.
  bool cluster = false;
  // Non-null: the front is the forward's first kernel (launched without PDL) and takes the meta
  // as its argument (LaunchFront's `meta`) instead of reading it; block 0 stores it here (route.
  // meta) for the kernels after it, so the one after the front must read it after its PDL wait.
  ForwardMeta* store_meta = nullptr;
  // Launches of a one-token capacity (route.capacity == 1) take the front kernel compiled for one
  // token slot per router pass (the same sums in less code).
  bool one_token_kernel = false;
  Status Validate() const;
};
bool CanFuseFront(int64_t capacity, int n_experts, int router_rows);
// The most tokens a front launch takes (CanFuseFront's capacity bound).
int64_t FrontMaxTokens();
// meta: the forward's meta when f.store_meta is set (ignored otherwise).
Status LaunchFront(const FrontArgs& f, cudaStream_t stream, const ForwardMeta& meta = {});
// The front kernel LaunchFront launches for `f` (to find its node in a captured graph).
// Its parameters: (FrontArgs f, float* logits = f.route.logits, ForwardMeta meta).
const void* FrontKernelFunction(const FrontArgs& f);
// Row blocks of the front kernel as one cluster for `router_rows` rows, if this device and build
// can launch it (sm_90 image, at most 16 row blocks, one cluster of up to 16 blocks fits: few row
// blocks also split K over the cluster); else 0.
StatusOr<int> FrontClusterBlocks(int router_rows);
// K parts per row block of the cluster front (1: each block covers K, the ticket front's sums).
int FrontKSplits(int router_rows, int hidden);

// Raises the shared-memory limit of the routing kernels; call once per device.
Status InitRoutingKernels();

// out[t] = sum_k w[t,k] * sum_s y[s][pair_row[t,k]] + gate(t) * sum_s ys[s][t], in AType, written
// to meta->output. Fixed summation order (k ascending, splits ascending): no atomics.
struct CombineArgs {
  const ForwardMeta* meta = nullptr;
  AType atype = AType::kBF16;
  WType wtype = WType::kBF16;
  int hidden = 0;
  int top_k = 0;
  int64_t capacity = 0;
  const int32_t* pair_row = nullptr;
  const float* topk_weights = nullptr;
  const void* y = nullptr;  // routed down outputs: wtype [rows, hidden], or f32 partials
  bool y_f32 = false;
  int y_splits = 1;
  int64_t y_split_stride = 0;
  const void* ys = nullptr;  // shared expert down outputs [capacity, hidden] (or null)
  bool ys_f32 = false;
  int ys_splits = 1;
  int64_t ys_split_stride = 0;
  const float* shared_gate = nullptr;  // [capacity] or null (gate 1)
  bool pdl = false;                    // programmatic dependent launch (kernels/pdl.cuh)
  // Where CombineChunksPerThread allows: 1, 2 or 4 chunks of 8 columns a thread, all their loads
  // in flight together (the same sums and bits as without).
  bool unrolled = true;
  // The unrolled combine loads its first rows and weights before its PDL wait (pair_row and
  // topk_weights must come from two or more launches before it).
  bool early_indices = true;
  // The device's SMs: the grid is at most sm_count x kCombineBlocksPerSm blocks, which walk the
  // tiles of chunks (0: a block per tile of the capacity).
  int sm_count = 0;
  Status Validate() const;
};
// Chunks a thread of the unrolled combine takes (top_k <= 2: 4, <= 4: 2, <= 8: 1), or 0 where it
// does not apply (f32 partials of the routed or shared outputs, top_k > 8).
int CombineChunksPerThread(const CombineArgs& args);
Status LaunchCombine(const CombineArgs& args, cudaStream_t stream);

// Writes the row-major [rows, cols] 2-byte matrix `src` into `dst` (another buffer of the same
// size) in kernels/weight_layout.h's kPacked layout (PackableShape(rows, cols)).
Status LaunchPackWeights(const void* src, void* dst, int64_t rows, int64_t cols,
                         cudaStream_t stream);
// Fills `n` elements of wtype with uniform values in [-scale, scale] from a counter-based hash.
Status LaunchFillRandom(void* dst, int64_t n, WType wtype, float scale, uint64_t seed,
                        cudaStream_t stream);
// Same for f32.
Status LaunchFillRandomF32(float* dst, int64_t n, float scale, uint64_t seed, cudaStream_t stream);

}  // namespace moe::cuda
