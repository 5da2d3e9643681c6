// CudaEngine: slots (stream + workspaces + pinned staging + graphs) around the fused MoE kernels.
#include "moe/engine/cuda_engine.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>
#include <map>
#include <utility>

#include "engine/cuda/cuda_raii.h"
#include "engine/cuda/device_weights.h"
#include "engine/cuda/engine_impl.h"
#include "engine/cuda/expert_cache_runtime.h"
#include "kernels/moe_kernels.h"
#include "kernels/tensor_map.h"
#include "kernels/tile_heuristics.h"
#include "kernels/weight_layout.h"

namespace moe {

using cuda::AType;
using cuda::DeviceBuffer;
using cuda::PinnedBuffer;

namespace {

StatusOr<AType> ToAType(DType d) {
  switch (d) {
    case DType::kF32:
      return AType::kF32;
    case DType::kF16:
      return AType::kF16;
    case DType::kBF16:
      return AType::kBF16;
    default:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("activation dtype ", std::string(DTypeName(d)), " is not F32, F16 or BF16"));
}

cuda::PathPolicy ToPathPolicy(CudaEngineOptions::Use use) {
  switch (use) {
    case CudaEngineOptions::Use::kNever:
      return cuda::PathPolicy::kNever;
    case CudaEngineOptions::Use::kAlways:
      return cuda::PathPolicy::kAlways;
    case CudaEngineOptions::Use::kAuto:
      break;
  }
  return cuda::PathPolicy::kAuto;
}

}  // namespace

CudaEngine::Impl::Impl() = default;
CudaEngine::Impl::~Impl() = default;

StatusOr<std::unique_ptr<CudaEngine::Impl>> CudaEngine::Impl::Prepare(const MoeSpec& spec,
                                                                      const CudaEngineOptions& o) {
  if (o.num_slots < 1 || o.max_batch_tokens < 1 || o.max_batch_tokens > (1LL << 30)) {
    return absl::InvalidArgumentError(
        "CudaEngineOptions: need num_slots >= 1 and 1 <= max_batch_tokens <= 2^30");
  }
  if (o.wgmma_min_rows_per_expert < 0 || o.max_down_splits < 0 || o.cluster_raster_units < 0) {
    return absl::InvalidArgumentError(
        "CudaEngineOptions: wgmma_min_rows_per_expert, max_down_splits and cluster_raster_units "
        "must be >= 0");
  }
  if (o.max_router_convert_splits < 1 ||
      o.max_router_convert_splits > cuda::kRouterConvertMaxKSplits) {
    return absl::InvalidArgumentError(
        absl::StrCat("CudaEngineOptions: max_router_convert_splits must be in [1, ",
                     cuda::kRouterConvertMaxKSplits, "]"));
  }
  if (o.expert_cache.budget_bytes < 0 || o.expert_cache.prefetch_max_loads < 0 ||
      o.expert_cache.decode_round_retries < 0 || o.expert_cache.max_round_experts < 0) {
    return absl::InvalidArgumentError(
        "CudaEngineOptions: expert_cache.budget_bytes, prefetch_max_loads, decode_round_retries "
        "and max_round_experts must be >= 0");
  }
  MOE_RETURN_IF_ERROR(cuda::DeviceWeights::CheckSpec(spec));
  int n_devices = 0;
  if (cudaGetDeviceCount(&n_devices) != cudaSuccess || n_devices == 0) {
    cudaGetLastError();
    return absl::FailedPreconditionError("no CUDA device is available");
  }
  if (o.device < 0 || o.device >= n_devices) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device ", o.device, " out of range [0, ", n_devices, ")"));
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(o.device));
  cudaDeviceProp prop{};
  CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, o.device));
  if (prop.major < 8) {
    return absl::FailedPreconditionError(
        absl::StrCat("the CUDA engine needs compute capability >= 8.0; device ", o.device, " is ",
                     prop.major, ".", prop.minor));
  }
  if (o.decode_down_groups_batch != 4 && o.decode_down_groups_batch != 6) {
    return absl::InvalidArgumentError("CudaEngineOptions: decode_down_groups_batch is 4 or 6");
  }
  if (o.decode_down_groups_preload < 0 || o.decode_down_groups_preload > 2) {
    return absl::InvalidArgumentError("CudaEngineOptions: decode_down_groups_preload is 0 to 2");
  }
  auto impl = std::make_unique<Impl>();
  impl->spec = spec;
  impl->options = o;
  std::sort(impl->options.graph_batch_sizes.begin(), impl->options.graph_batch_sizes.end());
  impl->device_name = prop.name;
  impl->sms = prop.multiProcessorCount;
  impl->smem_per_sm = static_cast<int64_t>(prop.sharedMemPerMultiprocessor);
  impl->pdl = o.overlap_launches && prop.major >= 9;
  MOE_ASSIGN_OR_RETURN(impl->wgmma, cuda::ProbeWgmmaKernels());
  impl->wgmma = impl->wgmma && o.use_wgmma;
  MOE_RETURN_IF_ERROR(cuda::InitGemmKernels(impl->wgmma));
  if (impl->wgmma) {
    MOE_ASSIGN_OR_RETURN(impl->resident_clusters, cuda::ClusterGemmResidentClusters());
    if (o.hopper_tile == CudaEngineOptions::HopperTile::kWideCluster &&
        o.cluster_quad_down != CudaEngineOptions::Use::kNever) {
      MOE_ASSIGN_OR_RETURN(impl->resident_quad_clusters, cuda::ClusterGemmResidentClusters(4));
    }
  }
  MOE_RETURN_IF_ERROR(cuda::InitRoutingKernels());
  const int router_rows = spec.n_experts() + (spec.shared_expert_gate ? 1 : 0);
  if (o.decode_front_cluster) {
    MOE_ASSIGN_OR_RETURN(const int blocks, cuda::FrontClusterBlocks(router_rows));
    impl->front_cluster = blocks > 0;
  }
  MOE_ASSIGN_OR_RETURN(impl->decode_fused, cuda::InitDecodeFused());
  impl->decode_fused = impl->decode_fused && o.decode_fused_route;
  impl->l2_bytes = prop.l2CacheSize;
  MOE_ASSIGN_OR_RETURN(const bool tma, cuda::InitDecodeTma());
  MOE_RETURN_IF_ERROR(cuda::InitDecodeDownGroups());
  impl->down_tma = tma && o.decode_down_tma;
  impl->gate_up_tma = tma && o.decode_gate_up_tma;
  MOE_ASSIGN_OR_RETURN(const bool stream, cuda::InitStreamGemm());
  impl->stream_gemm = stream;
  if (impl->decode_fused) {
    // The fused grid of each launch capacity it takes (its shared memory grows with the capacity).
    for (int64_t cap = 1; cap <= cuda::kDecodeFusedMaxTokens; ++cap) {
      MOE_ASSIGN_OR_RETURN(impl->fused_grid[cap],
                           cuda::DecodeFusedGridBlocks(
                               cuda::WType::kBF16, AType::kBF16, cap, spec.top_k(), spec.hidden,
                               spec.n_experts(), router_rows, o.decode_fused_cluster_size,
                               o.decode_fused_max_clusters, impl->gate_up_tma));
    }
    impl->decode_fused = impl->fused_grid[1] > 0;
  }
  // Packed routed experts (kernels/weight_layout.h): not with the kernels that cannot read them.
  using Use = CudaEngineOptions::Use;
  const bool unpackable_kernels = impl->decode_fused || impl->down_tma || impl->gate_up_tma ||
                                  o.decode_prefetch_units > 0 || o.stream_down ||
                                  (impl->stream_gemm && o.stream_gate_up == Use::kAlways);
  if (o.packed_expert_weights == Use::kAlways && unpackable_kernels) {
    return absl::InvalidArgumentError(
        "CudaEngineOptions: packed_expert_weights kAlways cannot go with decode_fused_route, "
        "decode_down_tma, decode_gate_up_tma, decode_prefetch_units, stream_down or "
        "stream_gate_up kAlways");
  }
  const bool pack =
      !unpackable_kernels && (o.packed_expert_weights == Use::kAlways ||
                              (o.packed_expert_weights == Use::kAuto && impl->wgmma &&
                               o.hopper_tile == CudaEngineOptions::HopperTile::kWideCluster));
  impl->pack_experts = o.expert_cache.budget_bytes == 0 && pack;
  impl->plan_as_packed = pack && cuda::PackableShape(spec.moe_intermediate, spec.hidden) &&
                         cuda::PackableShape(spec.hidden, spec.moe_intermediate);
  return impl;
}

bool CudaEngine::Impl::RoutedPacked() const {
  return weights.packed || (cache != nullptr && cache->slots_packed());
}

Status CudaEngine::Impl::PrepareRoutedWeights() {
  if (pack_experts && weights.CanPack()) MOE_RETURN_IF_ERROR(weights.Pack(/*stream=*/nullptr));
  if (!wgmma || options.hopper_tile != CudaEngineOptions::HopperTile::kWideCluster ||
      !weights.routed_resident) {
    return absl::OkStatus();
  }
  return weights.BuildTensorMaps(/*stream=*/nullptr);
}

int64_t CudaEngine::Impl::DownPartialRows() const {
  // The down output y: the bf16 / f16 rows of the largest batch's pairs, or f32 split partials
  // (kMaxSplits x up to kMaxSplitRows pairs, or splits x pairs of a smaller batch: PlanMoe).
  const int64_t pairs = options.max_batch_tokens * spec.top_k();
  return std::max((pairs * wsize() + 3) / 4,
                  cuda::kMaxSplits * std::min<int64_t>(pairs, cuda::kMaxSplitRows));
}

Status CudaEngine::Impl::AllocateSlots() {
  const int64_t tm = options.max_batch_tokens;
  const int64_t k = spec.top_k(), e = spec.n_experts(), hd = spec.hidden;
  const int64_t i = spec.moe_intermediate, is = spec.shared_intermediate;
  const int64_t nr = weights.router_rows;
  const int64_t pairs = tm * k;
  const int64_t split_rows = std::min<int64_t>(tm, cuda::kMaxSplitRows);
  const int64_t max_tiles =
      cuda::MaxGroupedTiles(pairs, static_cast<int>(e), cuda::kTileShapes[0].bm);
  const bool cluster_tile =
      wgmma && options.hopper_tile == CudaEngineOptions::HopperTile::kWideCluster;
  for (int n = 0; n < options.num_slots; ++n) {
    auto s = std::make_unique<Slot>();
    s->index = n;
    MOE_ASSIGN_OR_RETURN(s->stream, cuda::CreateStream());
    int64_t bytes = 0;
    auto alloc = [&bytes](DeviceBuffer& b, int64_t size) -> Status {
      MOE_ASSIGN_OR_RETURN(b, DeviceBuffer::Create(size));
      bytes += size;
      return absl::OkStatus();
    };
    MOE_RETURN_IF_ERROR(alloc(s->meta, sizeof(cuda::ForwardMeta)));
    MOE_RETURN_IF_ERROR(alloc(s->x_in, tm * hd * 4));
    MOE_RETURN_IF_ERROR(alloc(s->x, tm * 2 * hd * wsize()));
    // Router partials: up to kMaxSplits x kMaxSplitRows rows, or kRouterPartialRowsPerToken x tm
    // past kMaxSplitRows (PlanMoe).
    const int64_t logit_rows =
        std::max({tm, cuda::kMaxSplits * split_rows,
                  tm > cuda::kMaxSplitRows ? cuda::kRouterPartialRowsPerToken * tm : int64_t{0}});
    MOE_RETURN_IF_ERROR(alloc(s->logits, logit_rows * nr * 4));
    MOE_RETURN_IF_ERROR(alloc(s->topk_ids, pairs * 4));
    MOE_RETURN_IF_ERROR(alloc(s->topk_weights, pairs * 4));
    MOE_RETURN_IF_ERROR(alloc(s->ranks, pairs * 4));
    MOE_RETURN_IF_ERROR(alloc(s->counts, e * 4));
    MOE_RETURN_IF_ERROR(alloc(s->group_offsets, (e + 1) * 4));
    MOE_RETURN_IF_ERROR(alloc(s->tiles, max_tiles * 8));
    MOE_RETURN_IF_ERROR(alloc(s->n_tiles, 4));
    MOE_RETURN_IF_ERROR(alloc(s->perm_token, pairs * 4));
    MOE_RETURN_IF_ERROR(alloc(s->pair_row, pairs * 4));
    MOE_RETURN_IF_ERROR(alloc(s->shared_gate, tm * 4));
    MOE_RETURN_IF_ERROR(alloc(s->h, pairs * i * wsize()));
    // TMA descriptor (device memory) of the [pairs, cols] activation rows at `base`, in A boxes.
    auto act_map = [&](DeviceBuffer& map_buf, const void* base, int64_t cols,
                       int box_rows = cuda::kActTensorMapBoxRows) -> Status {
      std::array<uint8_t, cuda::kTensorMapBytes> map{};
      MOE_RETURN_IF_ERROR(
          cuda::EncodeTensorMap(base, weights.wtype, pairs, cols, cols, box_rows, map.data()));
      MOE_RETURN_IF_ERROR(alloc(map_buf, cuda::kTensorMapBytes));
      CUDA_RETURN_IF_ERROR(
          cudaMemcpy(map_buf.get(), map.data(), map.size(), cudaMemcpyHostToDevice));
      return absl::OkStatus();
    };
    if (resident_quad_clusters > 0 ||
        (cluster_tile && options.cluster_tma_a_down != CudaEngineOptions::Use::kNever)) {
      MOE_RETURN_IF_ERROR(act_map(s->h_tmap, s->h.get(), i));
    }
    MOE_RETURN_IF_ERROR(alloc(s->y, DownPartialRows() * hd * 4));
    if (cluster_tile && options.cluster_permute_x != CudaEngineOptions::Use::kNever) {
      // The permuted x lives in y (pairs x hidden 2-byte rows fit in its DownPartialRows f32 rows).
      MOE_RETURN_IF_ERROR(act_map(s->x_perm_tmap, s->y.get(), hd));
    }
    if (cluster_tile && options.cluster_tma_store) {
      MOE_RETURN_IF_ERROR(act_map(s->h_store_tmap, s->h.get(), i, cuda::kStoreTensorMapBoxRows));
      MOE_RETURN_IF_ERROR(act_map(s->y_store_tmap, s->y.get(), hd, cuda::kStoreTensorMapBoxRows));
    }
    if (is > 0) {
      MOE_RETURN_IF_ERROR(alloc(s->hs, tm * is * wsize()));
      MOE_RETURN_IF_ERROR(
          alloc(s->ys, std::max(tm * hd * wsize(), cuda::kMaxSplits * split_rows * hd * 4)));
    }
    MOE_RETURN_IF_ERROR(alloc(s->out, tm * hd * 4));
    MOE_RETURN_IF_ERROR(alloc(s->front_ticket, 4));
    CUDA_RETURN_IF_ERROR(cudaMemset(s->front_ticket.get(), 0, 4));
    // LaunchRouteScanTail leaves its ticket and the counters at zero for the next forward.
    MOE_RETURN_IF_ERROR(alloc(s->route_ticket, 4));
    CUDA_RETURN_IF_ERROR(cudaMemset(s->route_ticket.get(), 0, 4));
    MOE_RETURN_IF_ERROR(alloc(s->item_counters, 16));
    CUDA_RETURN_IF_ERROR(cudaMemset(s->item_counters.get(), 0, 16));
    if (cluster_tile) {
      MOE_RETURN_IF_ERROR(alloc(s->h_ready, (e + 1) * 4));
      CUDA_RETURN_IF_ERROR(cudaMemset(s->h_ready.get(), 0, (e + 1) * 4));
    }
    CUDA_RETURN_IF_ERROR(cudaMemset(s->counts.get(), 0, s->counts.bytes()));
    workspace_bytes = bytes;
    MOE_ASSIGN_OR_RETURN(s->in_stage, PinnedBuffer::Create(tm * hd * 4));
    MOE_ASSIGN_OR_RETURN(s->out_stage, PinnedBuffer::Create(tm * hd * 4));
    MOE_ASSIGN_OR_RETURN(s->ids_stage, PinnedBuffer::Create(pairs * 4));
    MOE_ASSIGN_OR_RETURN(s->weights_stage, PinnedBuffer::Create(pairs * 4));
    MOE_ASSIGN_OR_RETURN(s->meta_ring, PinnedBuffer::Create(kMetaRing * sizeof(cuda::ForwardMeta)));
    for (auto& ev : s->meta_events) {
      MOE_ASSIGN_OR_RETURN(ev, cuda::CreateEvent());
    }
    slots.push_back(std::move(s));
  }
  return absl::OkStatus();
}

Status CudaEngine::Impl::BuildLayerLaunch(Slot& s, int64_t capacity, AType atype,
                                          bool after_meta_kernel, LayerLaunch* l) const {
  const cuda::WType wtype = weights.wtype;
  const bool split_lo = !((atype == AType::kBF16 && wtype == cuda::WType::kBF16) ||
                          (atype == AType::kF16 && wtype == cuda::WType::kF16));
  const int hd = spec.hidden, k = spec.top_k(), e = spec.n_experts();
  const int inter = spec.moe_intermediate, is = spec.shared_intermediate;
  const int nr = weights.router_rows;
  const cuda::ForwardMeta* meta = s.meta.as<cuda::ForwardMeta>();

  cuda::MoePlanInput in;
  in.tokens = capacity;
  in.top_k = k;
  in.n_experts = e;
  in.hidden = hd;
  in.inter = inter;
  in.shared_inter = is;
  in.router_rows = nr;
  in.router_k = split_lo ? 2 * hd : hd;
  in.router_partial_rows = cuda::kRouterPartialRowsPerToken * options.max_batch_tokens;
  in.down_partial_rows = DownPartialRows();
  in.sm_count = sms;
  in.smem_per_sm = smem_per_sm;
  in.wave_split_down = options.wave_split_down;
  in.router_mma_max_tokens = options.small_batch_router_mma ? cuda::kRouterMmaMaxTokens : 0;
  in.large_router_mma = options.large_batch_router_mma;
  in.narrow_router = options.large_batch_router_narrow;
  in.deterministic = options.deterministic;
  in.wgmma = wgmma;
  in.deterministic_wgmma = options.deterministic_wgmma;
  in.decode_gemv =
      options.decode_gemv == CudaEngineOptions::DecodeGemv::kAlways ? cuda::GemvPolicy::kAlways
      : options.decode_gemv == CudaEngineOptions::DecodeGemv::kAuto ? cuda::GemvPolicy::kAuto
                                                                    : cuda::GemvPolicy::kNever;
  in.wgmma_tile =
      options.hopper_tile == CudaEngineOptions::HopperTile::kWide       ? cuda::GemmTile::kWgmma
      : options.hopper_tile == CudaEngineOptions::HopperTile::kTwoPerSm ? cuda::GemmTile::kWgmma2
      : options.hopper_tile == CudaEngineOptions::HopperTile::kWideWarpSpecialized
          ? cuda::GemmTile::kWgmmaWs
      : options.hopper_tile == CudaEngineOptions::HopperTile::kWideCluster
          ? cuda::GemmTile::kWgmmaWsMc
          : cuda::GemmTile::kWgmmaTall;
  in.wgmma_min_rows = options.wgmma_min_rows_per_expert;
  in.decode_max_rows = options.decode_tile_max_rows_per_expert;
  in.max_down_splits = options.max_down_splits;
  in.raster_units = options.cluster_raster_units;
  in.permute_x = ToPathPolicy(options.cluster_permute_x);
  in.pingpong = ToPathPolicy(options.cluster_pingpong);
  in.down_overlap = ToPathPolicy(options.cluster_down_overlap);
  in.tma_a_down = ToPathPolicy(options.cluster_tma_a_down);
  in.pair_extra_rows = ToPathPolicy(options.cluster_pair_extra_rows);
  in.packed_tensor_copies = weights.packed && weights.gate_tmap_table.get() != nullptr
                                ? ToPathPolicy(options.packed_tensor_copies)
                                : cuda::PathPolicy::kNever;
  in.stream_gate_up = stream_gemm && !plan_as_packed ? ToPathPolicy(options.stream_gate_up)
                                                     : cuda::PathPolicy::kNever;
  in.quad_down = resident_quad_clusters > 0 ? ToPathPolicy(options.cluster_quad_down)
                                            : cuda::PathPolicy::kNever;
  l->capacity = capacity;
  l->plan = cuda::PlanMoe(in);
  const cuda::MoePlan& plan = l->plan;
  const cuda::GemmTile gated_tile = options.narrow_decode_gate_up ? plan.gated_tile : plan.tile;

  // NOTES: with PDL every kernel but the first of the forward is launched with the attribute (each
  // waits for its predecessor, see kernels/pdl.cuh); the first follows a memset or the meta copy,
  // or, after_meta_kernel, the meta kernel (then it takes PDL too: every kernel that can come first
  // here waits before it reads the meta), unless the front takes the meta and comes first itself.
  // The fused front (1-4 below in one kernel) leaves out the router's split-K partials and the
  // hi+lo split, so it is kept out of deterministic mode.
  l->fused_front =
      options.fused_decode_front && !options.deterministic && cuda::CanFuseFront(capacity, e, nr);
  // NOTES: plans of wgmma tiles (large batches) take PDL only with hopper_overlap_launches: those
  // GEMMs launch without it, so only routing and combine overlap. Session 2 measured it slower at
  // Mixtral 512 tokens (1330 -> 1461 us, one run each, not understood); session 9 measured 1.5-2 us
  // less at 256-512 tokens and Mixtral unchanged (H200, two rounds each).
  const bool pdl_plan = pdl && (!cuda::IsHopperTile(plan.tile) || options.hopper_overlap_launches);
  // At 1 token (the decode experts path) the fused front takes the meta itself and comes first.
  l->meta_in_front = after_meta_kernel && options.front_takes_meta && l->fused_front &&
                     plan.decode_gemv && !decode_fused;
  bool first_kernel = !after_meta_kernel || l->meta_in_front;
  auto pdl_next = [&]() {
    const bool p = pdl_plan && !first_kernel;
    first_kernel = false;
    return p;
  };

  const bool fused_front = l->fused_front;
  // 1. Zero the per-expert counters (unless routing and scan run as one block, or as one grid that
  // leaves them at zero); convert the input.
  l->route_scan = cuda::CanRouteScan(capacity, e);
  l->route_tail =
      !fused_front && !l->route_scan && options.route_scan_tail && cuda::CanRouteScanTail(e);
  cuda::ConvertArgs& conv = l->conv;
  conv.meta = meta;
  conv.atype = atype;
  conv.wtype = wtype;
  conv.hidden = hd;
  conv.capacity = capacity;
  conv.split_lo = split_lo;
  conv.x = s.x.get();
  if (!fused_front) conv.pdl = pdl_next();
  l->zero_counts =
      !fused_front && !l->route_scan && !l->route_tail && options.zero_counts_in_kernel;
  if (l->zero_counts) {
    conv.zero = s.counts.as<int32_t>();
    conv.n_zero = e;
  }

  // 2. Router GEMM -> f32 logits (split-K partials).
  cuda::GemmArgs& router = l->router;
  router.tile = plan.router_tile;
  router.wtype = wtype;
  router.a = s.x.get();
  router.lda = 2 * hd;
  router.m_dev = n_tokens_dev(s);
  router.grid_tiles = plan.router_tiles;
  router.b0_table = weights.table(weights.router_table);
  router.layer_dev = layer_dev(s);
  router.b_layer_stride = 1;
  router.ldb = 2 * hd;
  router.n = nr;
  router.k = in.router_k;
  router.c = s.logits.get();
  router.ldc = nr;
  router.out_f32 = true;
  router.splits = plan.router_splits;
  router.split_stride = capacity * nr;
  if (!fused_front) {
    router.pdl = pdl_next();
    router.prefetch_weights = true;  // rows from the meta (copied before the graph), weights fixed
  }
  // The same router with the conversion, in one kernel (deterministic mode keeps the GEMM tile of
  // its batch size's plan, f32 activations the hi + lo split).
  l->router_convert =
      !fused_front && !split_lo && !options.deterministic && !plan.large_router_mma &&
      !plan.narrow_router &&
      cuda::UseRouterConvert(ToPathPolicy(options.fused_router_convert), capacity, hd, nr, sms);
  if (l->router_convert) {
    cuda::RouterConvertArgs& rc = l->router_conv;
    rc.meta = meta;
    rc.wtype = wtype;
    rc.hidden = hd;
    rc.capacity = capacity;
    rc.x = s.x.get();
    rc.ldx = 2 * hd;
    rc.router_table = weights.table(weights.router_table);
    rc.layer_dev = layer_dev(s);
    rc.router_rows = nr;
    rc.ld_router = 2 * hd;
    rc.logits = s.logits.as<float>();
    rc.ld_logits = nr;
    const cuda::RouterConvertGrid grid =
        cuda::PlanRouterConvert(capacity, nr, hd, sms, options.max_router_convert_splits);
    rc.tiles_per_block = grid.tiles_per_block;
    rc.k_splits = grid.k_splits;
    rc.split_stride = capacity * nr;
    if (l->zero_counts) {
      rc.zero = s.counts.as<int32_t>();
      rc.n_zero = e;
    }
    rc.pdl = conv.pdl;
  }

  // 3. Routing, 4. offsets + tiles + permutation.
  cuda::RouteArgs& route = l->route;
  route.meta = meta;
  const RoutingSpec& rs = spec.routing;
  route.routing.n_experts = e;
  route.routing.top_k = k;
  route.routing.sigmoid = rs.scoring == ScoringFunc::kSigmoid;
  route.routing.topk_method = rs.topk_method == TopkMethod::kGreedy               ? 0
                              : rs.topk_method == TopkMethod::kGroupLimitedGreedy ? 1
                                                                                  : 2;
  route.routing.n_group = rs.n_group;
  route.routing.topk_group = rs.topk_group;
  route.routing.norm_topk_prob = rs.norm_topk_prob;
  route.routing.routed_scaling_factor = rs.routed_scaling_factor;
  route.routing.has_bias = weights.has_bias;
  route.routing.has_shared_gate = spec.shared_expert_gate;
  route.logits = s.logits.as<float>();
  route.ld_logits = nr;
  route.splits = l->router_convert ? l->router_conv.k_splits : plan.router_splits;
  route.split_stride = capacity * nr;
  route.bias = weights.bias.as<float>();
  route.capacity = capacity;
  route.topk_ids = s.topk_ids.as<int32_t>();
  route.topk_weights = s.topk_weights.as<float>();
  route.ranks = s.ranks.as<int32_t>();
  route.counts = s.counts.as<int32_t>();
  route.shared_gate = s.shared_gate.as<float>();

  const cuda::TileShape& shape = cuda::ShapeOf(plan.tile);
  cuda::ScanArgs& scan = l->scan;
  scan.meta = meta;
  scan.n_experts = e;
  scan.top_k = k;
  scan.bm = shape.bm;
  scan.capacity = capacity;
  scan.counts = s.counts.as<int32_t>();
  scan.topk_ids = s.topk_ids.as<int32_t>();
  scan.ranks = s.ranks.as<int32_t>();
  scan.group_offsets = s.group_offsets.as<int32_t>();
  scan.tiles = s.tiles.as<int2>();
  scan.n_tiles = s.n_tiles.as<int32_t>();
  scan.perm_token = s.perm_token.as<int32_t>();
  scan.pair_row = s.pair_row.as<int32_t>();
  scan.early_indices = options.early_index_loads;
  if (fused_front) {
    cuda::FrontArgs& front = l->front;
    front.convert = conv;
    front.route = route;
    front.route.splits = 1;
    front.route.split_stride = 0;
    front.scan = scan;
    front.router_table = weights.table(weights.router_table);
    front.ld_router = 2 * hd;
    front.router_rows = nr;
    front.ticket = s.front_ticket.as<int32_t>();
    front.cluster = front_cluster;
    front.convert.pdl = pdl_next();
    front.store_meta = l->meta_in_front ? s.meta.as<cuda::ForwardMeta>() : nullptr;
    front.one_token_kernel = options.decode_front_one_token_kernel;
  } else if (l->route_scan) {
    route.pdl = pdl_next();
  } else {
    route.pdl = pdl_next();
    scan.pdl = pdl_next();
  }

  // 5. Routed experts: gate/up (+SiLU*mul) gathered through the permutation, then down.
  cuda::GemmArgs& gu = l->gate_up;
  gu.tile = gated_tile;
  gu.pdl = pdl_next();
  gu.gated = true;
  gu.wtype = wtype;
  gu.a = s.x.get();
  gu.lda = 2 * hd;
  gu.a_rows = s.perm_token.as<int32_t>();
  gu.tiles = s.tiles.as<int2>();
  gu.n_tiles = s.n_tiles.as<int32_t>();
  gu.group_offsets = s.group_offsets.as<int32_t>();
  gu.grid_tiles = plan.grouped_tiles;
  gu.b0_table = weights.table(weights.gate_table);
  gu.b1_table = weights.table(weights.up_table);
  gu.b_packed = RoutedPacked();
  if (weights.gate_tmap_table.get() != nullptr) {
    gu.b0_tmaps = weights.table(weights.gate_tmap_table);
    gu.b1_tmaps = weights.table(weights.up_tmap_table);
    gu.n_groups = static_cast<int>(e);
    gu.tma_multicast = options.cluster_multicast;
    gu.b_packed_tensor = plan.packed_tensor_copies;
    gu.resident_clusters = resident_clusters;
  }
  // The permuted copy of x (made by the scan's scatter into y) read by TMA instead of gathering.
  l->permute_x = plan.permute_x && gu.b0_tmaps != nullptr && s.x_perm_tmap.get() != nullptr &&
                 !l->fused_front && !l->route_scan && !plan.decode_gemv;
  if (l->permute_x) {
    l->scan.x = s.x.get();
    l->scan.ld_x = 2 * hd;
    l->scan.x_perm = s.y.get();
    l->scan.hidden = hd;
    gu.a = s.y.get();
    gu.lda = hd;
    gu.a_rows = nullptr;
    gu.a_tmap = s.x_perm_tmap.get();
    gu.a_x_tmap = s.y_store_tmap.get();  // the same rows of y in 8-row boxes (extra rows)
    gu.a_cluster_cols = 1;
  }
  if (gu.tile == cuda::GemmTile::kWgmmaWsMc && !options.cluster_gemm_overlap) gu.pdl = false;
  gu.pingpong = plan.pingpong && gu.b0_tmaps != nullptr;
  gu.pingpong_short_stages = options.cluster_pingpong_short_stages;
  gu.c_tmap = gu.b0_tmaps != nullptr ? s.h_store_tmap.get() : nullptr;
  if (options.cluster_dynamic_schedule) gu.item_counter = s.item_counters.as<int32_t>();
  gu.pair_extra_rows = plan.pair_extra_rows;  // where the kernel can take them
  gu.raster_units = plan.raster_units;        // and the down GEMM's (a copy of gu)
  gu.layer_dev = layer_dev(s);
  gu.b_layer_stride = e;
  gu.ldb = hd;
  gu.n = inter;
  gu.k = hd;
  gu.c = s.h.get();
  gu.ldc = inter;
  if (plan.decode_gemv) gu.tile = plan.tile;

  cuda::GemmArgs& down = l->down;
  down = gu;
  down.tile = plan.tile;
  down.pdl = pdl_next();
  down.prefetch_weights = true;  // tile list from the routing kernel, two launches back
  down.gated = false;
  down.a = s.h.get();
  down.lda = inter;
  down.a_rows = nullptr;
  down.b0_table = weights.table(weights.down_table);
  down.b1_table = nullptr;
  down.b_packed = RoutedPacked();
  if (weights.down_tmap_table.get() != nullptr) {
    down.b0_tmaps = weights.table(weights.down_tmap_table);
    down.b_packed_tensor = plan.packed_tensor_copies;
  }
  down.b1_tmaps = nullptr;
  down.ldb = inter;
  down.n = hd;
  down.k = inter;
  down.c = s.y.get();
  down.ldc = hd;
  down.a_tmap = nullptr;
  if (plan.quad_down && down.b0_tmaps != nullptr && s.h_tmap.get() != nullptr) {
    down.a_tmap = s.h_tmap.get();
    down.a_cluster_cols = 2;
    down.resident_clusters = resident_quad_clusters;
  } else if (plan.tma_a_down && down.b0_tmaps != nullptr && s.h_tmap.get() != nullptr) {
    down.a_tmap = s.h_tmap.get();
    down.a_cluster_cols = 1;
  }
  down.a_x_tmap = down.a_tmap != nullptr ? s.h_store_tmap.get() : nullptr;
  if (down.tile == cuda::GemmTile::kWgmmaWsMc && !options.cluster_gemm_overlap) down.pdl = false;
  if (down.tile == cuda::GemmTile::kWgmmaWsMc && !options.cluster_gemm_prefetch) {
    down.prefetch_weights = false;
  }
  down.pingpong = plan.pingpong && down.b0_tmaps != nullptr && down.a_cluster_cols == 1;
  down.c_tmap = down.b0_tmaps != nullptr && plan.down_splits == 1 ? s.y_store_tmap.get() : nullptr;
  if (options.cluster_dynamic_schedule) down.item_counter = s.item_counters.as<int32_t>() + 2;
  down.splits = plan.down_splits;
  down.out_f32 = plan.down_splits > 1;
  down.split_stride = capacity * k * hd;
  // The down GEMM on the SMs that gate/up's last work items leave idle (GemmArgs::h_ready): not
  // with the permuted copy of x, which gate/up reads from y while down writes there.
  if (plan.down_overlap && s.h_ready.get() != nullptr && gu.tile == cuda::GemmTile::kWgmmaWsMc &&
      down.tile == cuda::GemmTile::kWgmmaWsMc && gu.b0_tmaps != nullptr &&
      down.b0_tmaps != nullptr && !l->permute_x && e <= cuda::kMaxClusterGemmGroups) {
    gu.h_ready = s.h_ready.as<int32_t>();
    down.h_ready = gu.h_ready;
    down.pdl = true;
    down.prefetch_weights = false;
  }
  // Gate/up on the weight-streaming kernel (MoePlan::stream_gate_up); with stream_down the down
  // GEMM too, in one K pass (its output then wtype, no split partials).
  if (plan.stream_gate_up && cuda::CanStreamGemm(gu)) {
    l->stream_gate_up = true;
    cuda::GemmArgs one = down;
    one.splits = 1;
    one.out_f32 = false;
    if (options.stream_down && cuda::CanStreamGemm(one)) {
      l->stream_down = true;
      down = one;
    }
  }

  // 6. Shared expert over all tokens.
  l->has_shared = is > 0;
  if (is > 0) {
    cuda::GemmArgs& sgu = l->shared_gate_up;
    sgu.tile = plan.tile;
    sgu.gated = true;
    sgu.wtype = wtype;
    sgu.a = s.x.get();
    sgu.lda = 2 * hd;
    sgu.m_dev = n_tokens_dev(s);
    sgu.grid_tiles = plan.dense_tiles;
    sgu.b0_table = weights.table(weights.shared_gate_table);
    sgu.b1_table = weights.table(weights.shared_up_table);
    sgu.layer_dev = layer_dev(s);
    sgu.b_layer_stride = 1;
    sgu.ldb = hd;
    sgu.n = is;
    sgu.k = hd;
    sgu.c = s.hs.get();
    sgu.ldc = is;
    sgu.pdl = pdl_next();
    sgu.prefetch_weights = true;  // dense rows from the meta, A (x) from >= 2 launches back
    cuda::GemmArgs& sd = l->shared_down;
    sd = sgu;
    sd.pdl = pdl_next();
    sd.gated = false;
    sd.a = s.hs.get();
    sd.lda = is;
    sd.b0_table = weights.table(weights.shared_down_table);
    sd.b1_table = nullptr;
    sd.ldb = is;
    sd.n = hd;
    sd.k = is;
    sd.c = s.ys.get();
    sd.ldc = hd;
    sd.splits = plan.shared_down_splits;
    sd.out_f32 = plan.shared_down_splits > 1;
    sd.split_stride = capacity * hd;
  }

  // 7. Combine back to token order in the activation dtype.
  cuda::CombineArgs& comb = l->combine;
  comb.meta = meta;
  comb.atype = atype;
  comb.wtype = wtype;
  comb.hidden = hd;
  comb.top_k = k;
  comb.capacity = capacity;
  comb.pair_row = s.pair_row.as<int32_t>();
  comb.topk_weights = s.topk_weights.as<float>();
  comb.y = s.y.get();
  comb.y_f32 = down.out_f32;
  comb.y_splits = down.splits;
  comb.y_split_stride = capacity * k * hd;
  if (is > 0) {
    comb.ys = s.ys.get();
    comb.ys_f32 = plan.shared_down_splits > 1;
    comb.ys_splits = plan.shared_down_splits;
    comb.ys_split_stride = capacity * hd;
    comb.shared_gate = spec.shared_expert_gate ? s.shared_gate.as<float>() : nullptr;
  }
  comb.pdl = pdl_next();
  comb.unrolled = options.combine_unrolled;
  comb.sm_count = sms;
  comb.early_indices = options.early_index_loads;

  // 8. The input in place: with activations in the weights' dtype (no hi + lo split) the router
  // and the expert GEMMs can read the forward's input buffer itself, its address taken from the
  // meta on the device, instead of a copy in x. Not where other readers of x (the decode paths,
  // the weight-streaming kernel, the expert cache's forwards) are used; the input copy kernel then
  // only zeroes the counters, the fused router does not store x. With the permuted copy the
  // permutation copies the input's rows itself (ScanArgs::x_from_meta) and gate/up reads that
  // copy. NOTES (H200, session 27): Mixtral's fused router had stored 32 MiB of x at 4096 tokens,
  // 128 MiB at 16384, only for the permutation to read them back.
  const bool input_in_place = options.input_in_place && !split_lo && !fused_front &&
                              !plan.decode_gemv && !l->stream_gate_up && l->zero_counts &&
                              cache == nullptr;
  if (input_in_place) {
    const auto* input = reinterpret_cast<const void* const*>(s.meta.as<char>() +
                                                             offsetof(cuda::ForwardMeta, input));
    for (cuda::GemmArgs* g : {&l->router, &l->gate_up, &l->shared_gate_up}) {
      if (g == &l->gate_up && l->permute_x) continue;  // it reads the permuted copy by TMA
      g->a = nullptr;
      g->a_indirect = input;
      g->lda = hd;
    }
    l->conv.copy = false;
    l->router_conv.x = nullptr;
    if (l->permute_x) {
      l->scan.x = nullptr;
      l->scan.ld_x = 0;
      l->scan.x_from_meta = true;
    }
  }

  // 5'. Decode experts (forwards of a few tokens): gate/up per (token, k) pair, then the shared
  // expert, then down + combine in one kernel; at one token the front routes only (no scan).
  l->decode_experts = plan.decode_gemv;
  if (l->decode_experts) {
    cuda::DecodeExpertsArgs& dx = l->decode;
    dx.meta = meta;
    dx.wtype = wtype;
    dx.atype = atype;
    dx.hidden = hd;
    dx.inter = inter;
    dx.n_experts = e;
    dx.top_k = k;
    dx.capacity = capacity;
    dx.x = s.x.get();
    dx.ldx = 2 * hd;
    dx.topk_ids = s.topk_ids.as<int32_t>();
    dx.topk_weights = s.topk_weights.as<float>();
    dx.gate_table = weights.table(weights.gate_table);
    dx.up_table = weights.table(weights.up_table);
    dx.down_table = weights.table(weights.down_table);
    dx.packed = RoutedPacked();
    dx.layer_dev = layer_dev(s);
    // At 1 token every pair has its own expert: h in pair order, and the front skips the scan.
    dx.pair_row = capacity > 1 ? s.pair_row.as<int32_t>() : nullptr;
    dx.h = s.h.get();
    dx.ys = comb.ys;
    dx.ys_f32 = comb.ys_f32;
    dx.ys_splits = comb.ys_splits;
    dx.ys_split_stride = comb.ys_split_stride;
    dx.shared_gate = comb.shared_gate;
    dx.sm_count = sms;
    dx.pdl = gu.pdl;  // not the first kernel: the same for every later launch
    dx.layer_after_wait = l->meta_in_front;  // gate/up comes right after the front
    // An expert cache's forward skips it too where its residency kernel counts the offsets from
    // the top-k ids instead (ExpertCacheOptions::front_skips_scan).
    l->front.skip_scan = fused_front && dx.pair_row == nullptr &&
                         (cache == nullptr || (options.expert_cache.front_skips_scan &&
                                               capacity * k <= int64_t{cuda::kResolveMaxPairs}));
    // The fused decode kernel (front + gate/up in one launch; h in pair order at any count).
    if (decode_fused && fused_front && cache == nullptr &&
        cuda::CanDecodeFused(capacity, k, hd, e, nr) && fused_grid[capacity] > 0) {
      l->decode_fused = true;
      dx.pair_row = nullptr;
      cuda::DecodeFusedArgs& fx = l->fused;
      fx.front = l->front;
      fx.experts = dx;
      fx.cluster_size = options.decode_fused_cluster_size;
      fx.grid_blocks = fused_grid[capacity];
      fx.tma = gate_up_tma;
      const int64_t down_bytes = capacity * k * hd * inter * wsize();
      using Dp = CudaEngineOptions::DownPrefetch;
      fx.prefetch_down = down_bytes > l2_bytes * 6 / 10               ? cuda::DownPrefetch::kNone
                         : options.decode_prefetch_down == Dp::kEarly ? cuda::DownPrefetch::kEarly
                         : options.decode_prefetch_down == Dp::kLate  ? cuda::DownPrefetch::kLate
                                                                      : cuda::DownPrefetch::kNone;
      fx.prefetch_units = options.decode_prefetch_units;
    }
  }
  return absl::OkStatus();
}

Status CudaEngine::Impl::LaunchFrontPhase(Slot& s, const LayerLaunch& l,
                                          const cuda::ForwardMeta* meta) const {
  cudaStream_t st = s.stream.get();
  if (!l.route_scan && !l.route_tail && !l.zero_counts) {
    CUDA_RETURN_IF_ERROR(cudaMemsetAsync(s.counts.get(), 0, s.counts.bytes(), st));
  }
  if (l.fused_front) {
    if (l.meta_in_front && meta == nullptr) {
      return absl::InternalError("LaunchFrontPhase: the front takes the meta, but none was given");
    }
    return cuda::LaunchFront(l.front, st, l.meta_in_front ? *meta : cuda::ForwardMeta{});
  }
  if (l.router_convert) {
    MOE_RETURN_IF_ERROR(cuda::LaunchRouterConvert(l.router_conv, st));
  } else {
    MOE_RETURN_IF_ERROR(cuda::LaunchConvert(l.conv, st));
    MOE_RETURN_IF_ERROR(cuda::LaunchGemm(l.router, st));
  }
  if (l.route_scan) return cuda::LaunchRouteScan(l.route, l.scan, st);
  if (l.route_tail) {
    return cuda::LaunchRouteScanTail(l.route, l.scan, s.route_ticket.as<int32_t>(), st);
  }
  MOE_RETURN_IF_ERROR(cuda::LaunchRoute(l.route, st));
  return cuda::LaunchScan(l.scan, st);
}

Status CudaEngine::Impl::LaunchRoutedPhase(const LayerLaunch& l, const cuda::GemmArgs& gate_up,
                                           const cuda::GemmArgs& down, cudaStream_t st) const {
  if (l.plan.decode_gemv) {
    MOE_RETURN_IF_ERROR(cuda::LaunchDecodeGemv(gate_up, st));
    return cuda::LaunchDecodeGemv(down, st);
  }
  const int blocks = options.stream_gemm_blocks > 0 ? options.stream_gemm_blocks : sms;
  MOE_RETURN_IF_ERROR(l.stream_gate_up ? cuda::LaunchStreamGemm(gate_up, blocks, st)
                                       : cuda::LaunchGemm(gate_up, st));
  return l.stream_down ? cuda::LaunchStreamGemm(down, blocks, st) : cuda::LaunchGemm(down, st);
}

Status CudaEngine::Impl::LaunchSharedPhase(const LayerLaunch& l, cudaStream_t st) const {
  if (!l.has_shared) return absl::OkStatus();
  if (l.plan.shared_gemv) {
    MOE_RETURN_IF_ERROR(cuda::LaunchDecodeGemv(l.shared_gate_up, st));
    return cuda::LaunchDecodeGemv(l.shared_down, st);
  }
  MOE_RETURN_IF_ERROR(cuda::LaunchGemm(l.shared_gate_up, st));
  return cuda::LaunchGemm(l.shared_down, st);
}

Status CudaEngine::Impl::EnqueueCore(Slot& s, int64_t capacity, AType atype,
                                     const cuda::ForwardMeta* meta, LayerLaunch* launched) {
  LayerLaunch l;
  MOE_RETURN_IF_ERROR(BuildLayerLaunch(s, capacity, atype, meta != nullptr, &l));
  if (launched != nullptr) *launched = l;
  cudaStream_t st = s.stream.get();
  if (meta != nullptr && !l.meta_in_front) {
    MOE_RETURN_IF_ERROR(cuda::LaunchStoreMeta(*meta, s.meta.as<cuda::ForwardMeta>(), st));
  }
  if (l.decode_fused) {
    MOE_RETURN_IF_ERROR(cuda::LaunchDecodeFused(l.fused, st));
    MOE_RETURN_IF_ERROR(LaunchSharedPhase(l, st));
    return cuda::LaunchDecodeDownCombineWith(
        l.decode, {true, options.decode_down_h_smem, down_tma, options.decode_down_chunks}, st);
  }
  MOE_RETURN_IF_ERROR(LaunchFrontPhase(s, l, meta));
  if (l.decode_experts) {
    MOE_RETURN_IF_ERROR(
        cuda::LaunchDecodeGateUpWith(l.decode, {options.decode_prefetch_units, gate_up_tma}, st));
    MOE_RETURN_IF_ERROR(LaunchSharedPhase(l, st));
    return cuda::LaunchDecodeDownCombineWith(l.decode,
                                             {.h_smem = options.decode_down_h_smem,
                                              .tma = down_tma,
                                              .chunks = options.decode_down_chunks,
                                              .groups = options.decode_down_groups,
                                              .groups_batch = options.decode_down_groups_batch,
                                              .groups_preload = options.decode_down_groups_preload},
                                             st);
  }
  MOE_RETURN_IF_ERROR(LaunchRoutedPhase(l, l.gate_up, l.down, st));
  MOE_RETURN_IF_ERROR(LaunchSharedPhase(l, st));
  return cuda::LaunchCombine(l.combine, st);
}

bool CudaEngine::Impl::IsGraphSize(int64_t capacity) const {
  return std::binary_search(options.graph_batch_sizes.begin(), options.graph_batch_sizes.end(),
                            capacity);
}

StatusOr<CudaEngine::Impl::Slot::CapturedGraph> CudaEngine::Impl::Capture(
    cudaStream_t st, const std::function<Status()>& enqueue) {
  CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  const Status enq = enqueue();
  cudaGraph_t raw = nullptr;
  const cudaError_t end = cudaStreamEndCapture(st, &raw);  // ends the capture whatever happened
  Slot::CapturedGraph c;
  c.graph = cuda::Graph(raw);
  MOE_RETURN_IF_ERROR(enq);
  CUDA_RETURN_IF_ERROR(end);
  cudaGraphExec_t exec = nullptr;
  CUDA_RETURN_IF_ERROR(cudaGraphInstantiate(&exec, raw, 0));
  c.exec = cuda::GraphExec(exec);
  return c;
}

int64_t CudaEngine::Impl::DecodeStepMaxExperts() const {
  using G = CudaEngineOptions::DecodeGemv;
  const int64_t tokens = options.deterministic || options.decode_gemv == G::kNever ? 0
                         : options.decode_gemv == G::kAlways
                             ? std::min(options.max_batch_tokens, cuda::kDecodeExpertsMaxTokens)
                             : std::min(options.max_batch_tokens, cuda::kDecodeGemvAutoTokens);
  return std::max<int64_t>(1, std::min<int64_t>(spec.n_experts(), tokens * spec.top_k()));
}

int64_t CudaEngine::Impl::LaunchCapacity(int64_t n_tokens) const {
  const auto& sizes = options.graph_batch_sizes;
  const auto it = std::lower_bound(sizes.begin(), sizes.end(), n_tokens);
  if (it == sizes.end() || *it > options.max_batch_tokens) return n_tokens;
  return *it;
}

StatusOr<cudaGraphExec_t> CudaEngine::Impl::ReadyGraph(
    Slot& s, const Slot::GraphKey& key, const cuda::ForwardMeta* meta,
    const std::function<Status(LayerLaunch*)>& enqueue) {
  auto g = s.graphs.find(key);
  if (g == s.graphs.end()) {
    LayerLaunch l;
    MOE_ASSIGN_OR_RETURN(Slot::CapturedGraph c,
                         Capture(s.stream.get(), [&]() -> Status { return enqueue(&l); }));
    // The meta kernel (or the front that takes the meta) is the graph's one root: the node whose
    // parameters each replay sets.
    if (meta != nullptr) MOE_RETURN_IF_ERROR(FindMetaNode(l, &c));
    g = s.graphs.emplace(key, std::move(c)).first;
  } else if (meta != nullptr) {
    MOE_RETURN_IF_ERROR(SetGraphMeta(s, g->second, *meta));
  }
  return g->second.exec.get();
}

Status CudaEngine::Impl::FindMetaNode(const LayerLaunch& l, Slot::CapturedGraph* c) const {
  cudaGraphNode_t roots[2] = {};
  size_t n_roots = 2;
  CUDA_RETURN_IF_ERROR(cudaGraphGetRootNodes(c->graph.get(), roots, &n_roots));
  cudaGraphNodeType type = cudaGraphNodeTypeEmpty;
  if (n_roots == 1) CUDA_RETURN_IF_ERROR(cudaGraphNodeGetType(roots[0], &type));
  if (type == cudaGraphNodeTypeKernel) {
    CUDA_RETURN_IF_ERROR(cudaGraphKernelNodeGetParams(roots[0], &c->meta_params));
  }
  const void* first =
      l.meta_in_front ? cuda::FrontKernelFunction(l.front) : cuda::StoreMetaKernelFunction();
  if (type != cudaGraphNodeTypeKernel || first == nullptr || c->meta_params.func != first) {
    return absl::InternalError(l.meta_in_front
                                   ? "captured forward: its first node is not the front"
                                   : "captured forward: its first node is not the meta kernel");
  }
  c->meta_node = roots[0];
  c->meta_in_front = l.meta_in_front;
  c->front = l.front;
  return absl::OkStatus();
}

Status CudaEngine::Impl::SetGraphMeta(const Slot& s, const Slot::CapturedGraph& c,
                                      const cuda::ForwardMeta& meta) const {
  cudaKernelNodeParams p = c.meta_params;
  cuda::ForwardMeta value = meta;
  cuda::ForwardMeta* dst = s.meta.as<cuda::ForwardMeta>();
  // The front's arguments: (f, f.route.logits, meta); the call only reads them.
  float* logits = const_cast<float*>(c.front.route.logits);
  void* meta_args[] = {&value, &dst};
  void* front_args[] = {const_cast<cuda::FrontArgs*>(&c.front), &logits, &value};
  p.kernelParams = c.meta_in_front ? front_args : meta_args;
  p.extra = nullptr;
  CUDA_RETURN_IF_ERROR(cudaGraphExecKernelNodeSetParams(c.exec.get(), c.meta_node, &p));
  return absl::OkStatus();
}

Status CudaEngine::Impl::EnqueueMeta(Slot& s, const cuda::ForwardMeta& meta, AType atype) {
  cudaStream_t st = s.stream.get();
  // meta_in_graph off: copy the meta first.
  const bool meta_kernel = options.meta_in_graph;
  if (!meta_kernel) {
    // The pinned ring entry may still be read by an earlier copy: wait for that copy first.
    const int idx = s.meta_next;
    s.meta_next = (s.meta_next + 1) % kMetaRing;
    CUDA_RETURN_IF_ERROR(cudaEventSynchronize(s.meta_events[idx].get()));
    cuda::ForwardMeta* host = s.meta_ring.as<cuda::ForwardMeta>() + idx;
    *host = meta;
    CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(s.meta.get(), host, sizeof(meta), cudaMemcpyHostToDevice, st));
    CUDA_RETURN_IF_ERROR(cudaEventRecord(s.meta_events[idx].get(), st));
  }
  const cuda::ForwardMeta* in_kernel = meta_kernel ? &meta : nullptr;

  // With an expert cache budget: the host decides between the device phase and the routed one
  // (cached_forward.cc; the device phase has graphs of its own).
  if (cache != nullptr) return EnqueueCached(s, meta, atype, in_kernel);
  const int64_t capacity = LaunchCapacity(meta.n_tokens);
  if (!IsGraphSize(capacity)) return EnqueueCore(s, meta.n_tokens, atype, in_kernel);
  // Captured on first use of this (size, dtype) on this slot.
  MOE_ASSIGN_OR_RETURN(cudaGraphExec_t exec, ReadyGraph(s, {capacity, atype, Slot::kAnyLayer, 0},
                                                        in_kernel, [&](LayerLaunch* l) -> Status {
                                                          return EnqueueCore(s, capacity, atype,
                                                                             in_kernel, l);
                                                        }));
  CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec, st));
  return absl::OkStatus();
}

CudaEngine::CudaEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CudaEngine::~CudaEngine() {
  if (impl_) {
    cudaSetDevice(impl_->options.device);
    for (auto& s : impl_->slots) cudaStreamSynchronize(s->stream.get());
  }
}

StatusOr<std::unique_ptr<CudaEngine>> CudaEngine::Create(std::shared_ptr<const Model> model,
                                                         const CudaEngineOptions& options) {
  if (model == nullptr) return absl::InvalidArgumentError("CudaEngine::Create: null model");
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Impl> impl, Impl::Prepare(model->spec(), options));
  impl->model = std::move(model);
  const bool cached = options.expert_cache.budget_bytes > 0;
  MOE_ASSIGN_OR_RETURN(impl->weights, cuda::DeviceWeights::Upload(*impl->model, /*stream=*/nullptr,
                                                                  /*routed_experts=*/!cached));
  MOE_RETURN_IF_ERROR(impl->PrepareRoutedWeights());
  MOE_RETURN_IF_ERROR(impl->AllocateSlots());
  if (cached) {
    cuda::ExpertCacheRuntime::Options ro;
    ro.device = options.device;
    ro.num_engine_slots = options.num_slots;
    ro.max_batch_tokens = options.max_batch_tokens;
    ro.cache = options.expert_cache;
    ro.min_slots = impl->DecodeStepMaxExperts();
    // Slots in the layout the all-resident engine of these options packs its experts into.
    ro.pack_slots = options.expert_cache.pack_slots && impl->plan_as_packed;
    MOE_ASSIGN_OR_RETURN(impl->cache, cuda::ExpertCacheRuntime::Create(impl->model, ro));
  }
  return std::unique_ptr<CudaEngine>(new CudaEngine(std::move(impl)));
}

StatusOr<std::unique_ptr<CudaEngine>> CudaEngine::CreateRandom(const MoeSpec& spec, uint64_t seed,
                                                               const CudaEngineOptions& options) {
  if (options.expert_cache.budget_bytes != 0) {
    return absl::InvalidArgumentError(
        "CudaEngine::CreateRandom: an expert cache needs a host tier (use Create with a model)");
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Impl> impl, Impl::Prepare(spec, options));
  MOE_ASSIGN_OR_RETURN(impl->weights, cuda::DeviceWeights::Random(spec, seed, /*stream=*/nullptr));
  MOE_RETURN_IF_ERROR(impl->PrepareRoutedWeights());
  MOE_RETURN_IF_ERROR(impl->AllocateSlots());
  return std::unique_ptr<CudaEngine>(new CudaEngine(std::move(impl)));
}

const MoeSpec& CudaEngine::spec() const { return impl_->spec; }
int CudaEngine::num_slots() const { return impl_->options.num_slots; }
int64_t CudaEngine::max_batch_tokens() const { return impl_->options.max_batch_tokens; }
cudaStream_t CudaEngine::stream(int slot) const { return impl_->slots[slot]->stream.get(); }
int64_t CudaEngine::weight_device_bytes() const {
  return impl_->weights.device_bytes + (impl_->cache ? impl_->cache->device_bytes() : 0);
}
int64_t CudaEngine::workspace_device_bytes_per_slot() const { return impl_->workspace_bytes; }
const std::string& CudaEngine::device_name() const { return impl_->device_name; }
int CudaEngine::sm_count() const { return impl_->sms; }
bool CudaEngine::uses_wgmma() const { return impl_->wgmma; }
bool CudaEngine::packed_expert_weights() const { return impl_->weights.packed; }
int CudaEngine::fused_decode_blocks() const {
  return impl_->decode_fused ? impl_->fused_grid[1] : 0;
}

const experts::ExpertSlotPool* CudaEngine::expert_cache_pool() const {
  return impl_->cache ? &impl_->cache->pool() : nullptr;
}

StatusOr<ExpertCacheStats> CudaEngine::expert_cache_stats() const {
  if (!impl_->cache) return absl::FailedPreconditionError("the engine has no expert cache");
  return impl_->cache->Stats();
}

Status CudaEngine::QuiesceExpertCache() {
  if (!impl_->cache) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cudaSetDevice(impl_->options.device));
  return impl_->cache->Quiesce();
}

StatusOr<int64_t> CudaEngine::WarmExpertCache(
    std::span<const experts::ExpertKey> most_wanted_first) {
  if (!impl_->cache) return absl::FailedPreconditionError("the engine has no expert cache");
  CUDA_RETURN_IF_ERROR(cudaSetDevice(impl_->options.device));
  return impl_->cache->Warm(most_wanted_first);
}

Status CudaEngine::FlushExpertTrace() {
  return impl_->cache ? impl_->cache->FlushTrace() : absl::OkStatus();
}

Status CudaEngine::EnqueueDevice(const DeviceForwardArgs& args) {
  ForwardArgs check;
  check.layer = args.layer;
  check.dtype = args.dtype;
  check.n_tokens = args.n_tokens;
  check.input = args.input;
  check.output = args.output;
  check.slot = args.slot;
  MOE_RETURN_IF_ERROR(ValidateForwardArgs(impl_->spec, check, num_slots(), max_batch_tokens()));
  // The kernels move rows in 16-byte vectors (rows are multiples of 16 bytes: hidden % 8 == 0).
  if (reinterpret_cast<uintptr_t>(args.input) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(args.output) % 16 != 0) {
    return absl::InvalidArgumentError("EnqueueDevice: input and output must be 16-byte aligned");
  }
  MOE_ASSIGN_OR_RETURN(const AType atype, ToAType(args.dtype));
  CUDA_RETURN_IF_ERROR(cudaSetDevice(impl_->options.device));
  Impl::Slot& s = *impl_->slots[args.slot];
  cuda::ForwardMeta meta;
  meta.n_tokens = static_cast<int32_t>(args.n_tokens);
  meta.layer_pos = impl_->weights.layer_pos.at(args.layer);
  meta.input = args.input;
  meta.output = args.output;
  return impl_->EnqueueMeta(s, meta, atype);
}

Status CudaEngine::Forward(const ForwardArgs& args) {
  MOE_RETURN_IF_ERROR(ValidateForwardArgs(impl_->spec, args, num_slots(), max_batch_tokens()));
  MOE_ASSIGN_OR_RETURN(const AType atype, ToAType(args.dtype));
  CUDA_RETURN_IF_ERROR(cudaSetDevice(impl_->options.device));
  Impl::Slot& s = *impl_->slots[args.slot];
  cudaStream_t st = s.stream.get();
  const size_t bytes =
      static_cast<size_t>(args.n_tokens) * impl_->spec.hidden * DTypeSize(args.dtype);
  const size_t pair_bytes = static_cast<size_t>(args.n_tokens) * impl_->spec.top_k() * 4;
  std::memcpy(s.in_stage.get(), args.input, bytes);
  CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(s.x_in.get(), s.in_stage.get(), bytes, cudaMemcpyHostToDevice, st));
  cuda::ForwardMeta meta;
  meta.n_tokens = static_cast<int32_t>(args.n_tokens);
  meta.layer_pos = impl_->weights.layer_pos.at(args.layer);
  meta.input = s.x_in.get();
  meta.output = s.out.get();
  MOE_RETURN_IF_ERROR(impl_->EnqueueMeta(s, meta, atype));
  CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(s.out_stage.get(), s.out.get(), bytes, cudaMemcpyDeviceToHost, st));
  if (args.expert_ids) {
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.ids_stage.get(), s.topk_ids.get(), pair_bytes,
                                         cudaMemcpyDeviceToHost, st));
  }
  if (args.expert_weights) {
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.weights_stage.get(), s.topk_weights.get(), pair_bytes,
                                         cudaMemcpyDeviceToHost, st));
  }
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  std::memcpy(args.output, s.out_stage.get(), bytes);
  if (args.expert_ids) std::memcpy(args.expert_ids, s.ids_stage.get(), pair_bytes);
  if (args.expert_weights) std::memcpy(args.expert_weights, s.weights_stage.get(), pair_bytes);
  return absl::OkStatus();
}

}  // namespace moe
