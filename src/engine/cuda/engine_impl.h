// CudaEngine::Impl, shared by the engine's translation units (cuda_engine.cc: slots, the
// all-resident forward and graphs; cached_forward.cc: the forward with an expert cache budget).
//
// A layer forward is built once as a LayerLaunch (every kernel's arguments, from the plan of its
// launch capacity) and launched in phases: front (convert, router, routing, scan), routed experts
// (gate/up, down), shared expert, combine. The all-resident path launches them back to back (and
// captures them in graphs); the cached path reorders them around a host round trip and launches
// the routed phase once per cache round with its own pointer tables and tile list.
//
// Thread safety: see CudaEngine; a Slot is touched only by calls on its slot.
#pragma once

#include <array>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/cuda/cuda_raii.h"
#include "engine/cuda/device_weights.h"
#include "kernels/decode_fused.h"
#include "kernels/moe_kernels.h"
#include "kernels/tile_heuristics.h"
#include "moe/engine/cuda_engine.h"

namespace moe {

namespace cuda {
class ExpertCacheRuntime;
}  // namespace cuda

inline constexpr int kMetaRing = 64;

// The kernel arguments of one MoE layer forward at one launch capacity.
struct LayerLaunch {
  int64_t capacity = 0;
  cuda::MoePlan plan;
  bool fused_front = false;     // convert + router + routing + scan in one kernel
  bool router_convert = false;  // convert + router in one kernel (router_conv replaces both)
  bool route_scan = false;      // routing + scan in one kernel (counts need no memset)
  bool route_tail = false;      // routing + scan (+ permutation) in one grid (route_ticket)
  bool zero_counts = false;     // the first kernel zeroes the counters (no memset node)
  bool permute_x = false;       // the scan copies x into the permuted order (in y) for gate/up
  bool has_shared = false;
  bool stream_gate_up = false;  // gate_up on the weight-streaming kernel (LaunchStreamGemm)
  bool stream_down = false;     // down likewise
  cuda::ConvertArgs conv;
  cuda::GemmArgs router;
  cuda::RouterConvertArgs router_conv;
  cuda::RouteArgs route;
  cuda::ScanArgs scan;
  cuda::FrontArgs front;
  cuda::GemmArgs gate_up, down;                // routed experts (grouped over the tile list)
  cuda::GemmArgs shared_gate_up, shared_down;  // has_shared only
  cuda::CombineArgs combine;
  // The decode experts path (plan.decode_gemv, all-resident forwards only: the cached path needs
  // the scan's offsets): `decode` replaces gate_up, down and combine.
  bool decode_experts = false;
  cuda::DecodeExpertsArgs decode;
  // The fused decode kernel (router + routing + gate/up, kernels/decode_fused.h) replaces the
  // front and the decode gate/up; `decode` then runs down + combine with h in pair order.
  bool decode_fused = false;
  cuda::DecodeFusedArgs fused;
  // The fused front is the forward's first kernel and takes the meta as its argument
  // (CudaEngineOptions::front_takes_meta; FrontArgs::store_meta): no meta kernel.
  bool meta_in_front = false;
};

class CudaEngine::Impl {
 public:
  struct Slot {
    int index = 0;
    cuda::Stream stream;
    cuda::DeviceBuffer meta;  // ForwardMeta
    cuda::DeviceBuffer x_in, x, logits, topk_ids, topk_weights, ranks, counts, group_offsets, tiles,
        n_tiles, perm_token, pair_row, shared_gate, h, y, hs, ys, out;
    cuda::DeviceBuffer front_ticket;  // int32 ticket counter of the fused decode front
    cuda::DeviceBuffer route_ticket;  // int32 ticket counter of LaunchRouteScanTail
    // The cluster GEMMs' dynamic schedule (GemmArgs::item_counter): gate/up's two ints, down's two.
    cuda::DeviceBuffer item_counters;
    cuda::DeviceBuffer h_ready;       // n_experts + 1 ints (GemmArgs::h_ready), cluster tile only
    cuda::DeviceBuffer h_tmap;        // TMA descriptor of h for the TMA-A down GEMM
    cuda::DeviceBuffer x_perm_tmap;   // TMA descriptor of the permuted x (in y) for gate/up
    cuda::DeviceBuffer h_store_tmap;  // TMA descriptors of h and of y ([pairs, hidden] in wtype)
    cuda::DeviceBuffer y_store_tmap;  // as GEMM outputs (8-row boxes, cluster_tma_store)
    cuda::PinnedBuffer in_stage, out_stage, ids_stage, weights_stage, meta_ring;
    std::array<cuda::Event, kMetaRing> meta_events;
    int meta_next = 0;
    // A captured forward. meta_node: the graph's first node, the meta kernel (meta_in_graph) or
    // the fused front that takes the meta (front_takes_meta; its other arguments in `front`),
    // whose parameters each replay updates; meta_params: its parameters as captured.
    struct CapturedGraph {
      cuda::Graph graph;
      cuda::GraphExec exec;
      cudaGraphNode_t meta_node = nullptr;
      cudaKernelNodeParams meta_params = {};
      bool meta_in_front = false;
      cuda::FrontArgs front;
    };
    // Per (launch capacity, dtype, MoE layer position, lookahead depth): the all-resident forward
    // at position kAnyLayer and depth 0 (it reads its layer from the meta); the expert cache's
    // forwards the device phase before the host's decision (cached_forward.cc), one per position
    // and depth (ExpertCacheOptions::lookahead_skips_resident drops the lookahead at run time).
    using GraphKey = std::tuple<int64_t, cuda::AType, int, int>;
    static constexpr int kAnyLayer = -1;
    std::map<GraphKey, CapturedGraph> graphs;
  };

  Impl();
  ~Impl();

  MoeSpec spec;
  CudaEngineOptions options;
  std::shared_ptr<const Model> model;  // keeps the host weights alive (may be null)
  cuda::DeviceWeights weights;
  std::vector<std::unique_ptr<Slot>> slots;
  std::string device_name;
  int sms = 0;
  int64_t smem_per_sm = 0;
  bool wgmma = false;              // Hopper tiles in use
  int resident_clusters = 0;       // of the cluster GEMM (wgmma only), asked once at start-up
  int resident_quad_clusters = 0;  // of its 2 x 2 cluster kernel (0: not used)
  bool pdl = false;           // programmatic dependent launch between the layer's kernels (sm_90+)
  bool decode_fused = false;  // the fused decode kernel runs here (options.decode_fused_route)
  // Its grid per launch capacity (cuda::DecodeFusedGridBlocks; 0: the capacity does not fit).
  std::array<int, cuda::kDecodeFusedMaxTokens + 1> fused_grid{};
  bool front_cluster = false;  // options.decode_front_cluster on a device and build that run it
  bool down_tma = false;       // options.decode_down_tma on a device and build that run it
  bool gate_up_tma = false;    // options.decode_gate_up_tma likewise
  bool stream_gemm = false;    // the weight-streaming GEMM runs here (sm_90 image)
  bool pack_experts = false;   // options.packed_expert_weights applies (PrepareRoutedWeights)
  // The plans are those of packed routed experts: the all-resident engine of these options packs
  // them, so an expert cache's forwards pick its kernels too: on row-major slots (the default)
  // kernels whose sums do not depend on the layout (no weight-streaming gate/up, whose K order
  // differs), on packed slots (ExpertCacheOptions::pack_slots) the same kernels.
  bool plan_as_packed = false;
  int64_t l2_bytes = 0;  // the device's L2 size
  int64_t workspace_bytes = 0;
  // Set with an expert cache budget (CudaEngineOptions::expert_cache.budget_bytes > 0).
  std::unique_ptr<cuda::ExpertCacheRuntime> cache;

  static StatusOr<std::unique_ptr<Impl>> Prepare(const MoeSpec& spec, const CudaEngineOptions& o);
  // The routed kernels' weight layout: the resident weights are packed, or the cache's slots.
  bool RoutedPacked() const;
  // With the kWideCluster Hopper tile and resident weights: the weights' TMA descriptors.
  Status PrepareRoutedWeights();
  Status AllocateSlots();
  // f32 rows of hidden that each slot's down output buffer y holds (MoePlanInput).
  int64_t DownPartialRows() const;
  // Every kernel argument of a forward of up to `capacity` tokens on slot `s`. after_meta_kernel:
  // the meta comes as a kernel argument (meta_in_graph): the forward's first kernel follows the
  // meta kernel (LaunchStoreMeta), so it may take PDL, or, LayerLaunch::meta_in_front, the first
  // kernel is the front that takes the meta (launched without PDL).
  Status BuildLayerLaunch(Slot& s, int64_t capacity, cuda::AType atype, bool after_meta_kernel,
                          LayerLaunch* l) const;
  // Phases of a forward (on s.stream). meta: the forward's meta for a front that takes it.
  Status LaunchFrontPhase(Slot& s, const LayerLaunch& l,
                          const cuda::ForwardMeta* meta = nullptr) const;
  Status LaunchRoutedPhase(const LayerLaunch& l, const cuda::GemmArgs& gate_up,
                           const cuda::GemmArgs& down, cudaStream_t st) const;
  Status LaunchSharedPhase(const LayerLaunch& l, cudaStream_t st) const;
  // The all-resident forward: every phase in order (graph-capturable), first the meta kernel when
  // `meta` is given (meta_in_graph; or the front that takes it, LayerLaunch::meta_in_front), else
  // the meta is already on its way to the device. `launched`: where the forward's arguments go
  // (for the graph's first node), if not null.
  Status EnqueueCore(Slot& s, int64_t capacity, cuda::AType atype, const cuda::ForwardMeta* meta,
                     LayerLaunch* launched = nullptr);
  // Puts the meta on the device, then launches the graph, the direct or the cached forward.
  Status EnqueueMeta(Slot& s, const cuda::ForwardMeta& meta, cuda::AType atype);
  // Whether a forward of launch capacity `capacity` replays a captured graph (one of
  // graph_batch_sizes).
  bool IsGraphSize(int64_t capacity) const;
  // Captures what `enqueue` launches on `st` into a graph and instantiates it.
  static StatusOr<Slot::CapturedGraph> Capture(cudaStream_t st,
                                               const std::function<Status()>& enqueue);
  // The capacity a forward of `n_tokens` launches with: the smallest graph size >= n_tokens
  // (both paths use it, so a cached forward runs the very kernels of the all-resident one).
  int64_t LaunchCapacity(int64_t n_tokens) const;
  // The most routed experts of one forward on the decode experts path (an upper bound from the
  // options: the path's token limit times top_k), or 1 where it is never taken.
  int64_t DecodeStepMaxExperts() const;
  // The forward with an expert cache (cached_forward.cc). `in_kernel`: the meta, for the forward's
  // first kernel to store (meta_in_graph), or null when it is already on its way to the device.
  Status EnqueueCached(Slot& s, const cuda::ForwardMeta& meta, cuda::AType atype,
                       const cuda::ForwardMeta* in_kernel);
  // The slot's graph for `key`, ready to launch: captured from what `enqueue` launches on first
  // use (it also gives the forward's arguments, whose first kernel is the graph's root: the meta
  // kernel, or the front that takes the meta), else, with `meta` (meta_in_graph), its root's
  // parameters set for `meta`.
  StatusOr<cudaGraphExec_t> ReadyGraph(Slot& s, const Slot::GraphKey& key,
                                       const cuda::ForwardMeta* meta,
                                       const std::function<Status(LayerLaunch*)>& enqueue);
  // A captured forward's root (the meta kernel, or the front that takes the meta) and its
  // parameters as captured, into `c`; fails if the root is neither.
  Status FindMetaNode(const LayerLaunch& l, Slot::CapturedGraph* c) const;
  // Sets the root's parameters of a captured forward for `meta` (before a replay).
  Status SetGraphMeta(const Slot& s, const Slot::CapturedGraph& c,
                      const cuda::ForwardMeta& meta) const;

  const int32_t* n_tokens_dev(const Slot& s) const {
    return reinterpret_cast<const int32_t*>(s.meta.as<char>() +
                                            offsetof(cuda::ForwardMeta, n_tokens));
  }
  const int32_t* layer_dev(const Slot& s) const {
    return reinterpret_cast<const int32_t*>(s.meta.as<char>() +
                                            offsetof(cuda::ForwardMeta, layer_pos));
  }
  int64_t wsize() const { return 2; }
};

}  // namespace moe
