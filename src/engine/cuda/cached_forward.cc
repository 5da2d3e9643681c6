// The layer forward with an expert cache budget (CudaEngine::Impl::EnqueueCached).
//
// 1. Front kernels as in the all-resident forward (convert, router, routing, scan), at the same
//    launch capacity, so routing, permutation and tile heights are the same. At one token the
//    front routes only, as there (ExpertCacheOptions::front_skips_scan): the residency kernel
//    counts the offsets from the top-k ids, and a layer that needs tile kernels (several cache
//    rounds) runs the front again with the scan first.
// 2. Gate-lookahead (prefetch on, next MoE layers exist): for each of the next `depth` layers,
//    its router on this layer's input and its routing function with plain scores (no bias, no
//    shared gate) -> predicted ids and weights per depth. Where the layer runs the decode front
//    (ExpertCacheOptions::lookahead_front), one more front kernel per depth on that layer's
//    router, route only; else the router GEMM on the converted input and the routing kernel.
// 3. The residency kernel (kernels/cache_residency.h): looks the routed experts up in the
//    device-visible residency table (launched with PDL, it reads the layer's table row before its
//    wait, under the front: ExpertCacheOptions::residency_pdl), writes this layer's pointer
//    tables from their slots, and a speculative meta / tile count that are the forward's own
//    when every routed expert is resident, else empty; reports offsets, predictions and misses
//    to mapped pinned memory.
//    Right behind it, under the runtime's speculation lock, the routed kernels of the
//    all-resident forward (decode experts path or tile GEMMs + combine) over those tables and the
//    speculative meta, and the shared expert: with every expert resident they compute the layer
//    with no host involvement; with a miss they do nothing (no rows, no tiles).
//    Steps 1-3 replay one CUDA graph per (launch size, dtype, MoE layer), captured on first use
//    (ExpertCacheOptions::graphs): their arguments depend on nothing else but the meta, which is
//    the parameter of the graph's first node as in the all-resident graphs, and the report's
//    sequence number, a mapped word that the host sets before each launch
//    (ExpertCacheRuntime::ArmReport).
// 4. The host spins on the report's sequence number (mapped memory, a few us once the kernel
//    ran) instead of a stream synchronisation, then:
//    - all resident: pins the experts (bookkeeping, the policy's view; the kernels already run),
//      prefetches, and releases them behind a fence after the kernels;
//    - a miss: rounds. Acquire the routed experts (resident first, then in flight, then loads;
//      misses are copied on the copy stream after the reuse fences of their slots). Per round,
//      one pointer table per projection ([n_experts], entries of this round's experts point into
//      their slots; b_layer_stride 0) and a tile list with only this round's experts, built on
//      the host from the offsets, go up from pinned memory on the compute stream. The resident
//      experts' GEMMs are launched first; then the compute stream waits for the loads (timed) and
//      the rest run. A release fence after the GEMMs, Release, and the deferred experts make the
//      next round. Then the prefetch of the predicted experts (after the demand loads on the copy
//      stream), and the combine.
// Decode batches (plan.decode_gemv): when all the step's experts fit in one round, the routed
// experts and the combine run as the all-resident forward's decode experts kernels over that
// round's tables (bitwise equal): gate/up of the pairs of the round's ready experts first, then
// the wait for the loads, gate/up of the other pairs (each launch's tables null out the other
// experts, whose pairs it skips), and down + combine over every pair. The budget holds every expert
// of such a step (ExpertCacheRuntime::Options::min_slots), so a round that misses some of them is
// handed back and acquired again once loads finish; only after
// ExpertCacheOptions::decode_round_retries such tries (other engine slots keeping slots pinned)
// does the step run in several rounds of the tile GEMV + combine (after the front again with the
// scan, where it skipped it), which round differently. Every row of every expert is computed by the
// same kernel and tile as in the all-resident forward (same plan, same tile entries), and split-K
// partials and the combine are unchanged, so the outputs are bitwise identical.
#include <chrono>
#include <cstring>
#include <vector>

#include "engine/cuda/cache_rounds.h"
#include "engine/cuda/engine_impl.h"
#include "engine/cuda/expert_cache_runtime.h"

namespace moe {

using cuda::ExpertCacheRuntime;

namespace {

// The down + combine options of the cached forward's decode launches (h through L1, no bulk
// copies).
cuda::DecodeDownOptions DecodeDownOptionsOf(const CudaEngineOptions& o) {
  cuda::DecodeDownOptions d;
  d.chunks = o.decode_down_chunks;
  d.groups = o.decode_down_groups;
  d.groups_batch = o.decode_down_groups_batch;
  d.groups_preload = o.decode_down_groups_preload;
  return d;
}

// `r` routing the prediction of depth slot `d`: plain scores (no selection bias, no shared gate)
// from the lookahead's logits into its buffers.
cuda::RouteArgs PredictionRoute(cuda::RouteArgs r, ExpertCacheRuntime::EngineSlot& es, int d,
                                int64_t stride) {
  r.logits = es.la_logits.as<float>();
  r.routing.has_bias = false;
  r.routing.has_shared_gate = false;
  r.bias = nullptr;
  r.shared_gate = nullptr;
  r.topk_ids = es.la_ids_dev.as<int32_t>() + d * stride;
  r.topk_weights = es.la_weights_dev.as<float>() + d * stride;
  r.ranks = es.la_ranks.as<int32_t>();
  r.counts = es.la_counts.as<int32_t>();
  return r;
}

// Launches the gate-lookahead of the MoE layer at `next_pos` (2. above) from the layer at `pos`
// on `st` into depth slot `d` of the lookahead buffers; results stay on the device.
// by_front (l.fused_front): one more decode front on that layer's router, route only, after the
// layer's own front (so it reads the meta that front stored), with PDL when `pdl`.
Status LaunchLookahead(const LayerLaunch& l, const cuda::DeviceWeights& w, int pos, int next_pos,
                       int d, int64_t stride, ExpertCacheRuntime::EngineSlot& es, bool by_front,
                       bool pdl, cudaStream_t st) {
  if (by_front) {
    cuda::FrontArgs f = l.front;
    // The front reads router_table[meta->layer_pos]; a graph replays one layer position.
    f.router_table = w.table(w.router_table) + (next_pos - pos);
    f.convert.x = es.la_x.get();
    f.convert.pdl = pdl;
    f.store_meta = nullptr;
    f.skip_scan = true;
    f.route = PredictionRoute(f.route, es, d, stride);
    return cuda::LaunchFront(f, st);
  }
  cuda::GemmArgs router = l.router;
  router.b0_table = w.table(w.router_table) + next_pos;  // entry 0 = that layer's router
  router.layer_dev = nullptr;
  router.b_layer_stride = 0;
  router.c = es.la_logits.get();
  router.splits = 1;
  router.split_stride = 0;
  router.pdl = false;
  router.prefetch_weights = false;
  MOE_RETURN_IF_ERROR(cuda::LaunchGemm(router, st));
  CUDA_RETURN_IF_ERROR(cudaMemsetAsync(es.la_counts.get(), 0, es.la_counts.bytes(), st));
  cuda::RouteArgs route = PredictionRoute(l.route, es, d, stride);
  route.splits = 1;
  route.split_stride = 0;
  route.pdl = false;
  return cuda::LaunchRoute(route, st);
}

// The cached forwards launch down after gate/up in stream order: without the h-ready counters
// (GemmArgs::h_ready) and without the PDL launch that only they asked for.
void WithoutHReady(cuda::GemmArgs& gu, cuda::GemmArgs& dn) {
  if (dn.h_ready != nullptr) dn.pdl = false;
  gu.h_ready = dn.h_ready = nullptr;
}

// The speculative routed phase (3. above): the all-resident forward's routed kernels over the
// residency kernel's tables, meta and tile count, with the shared expert in its all-resident
// place. Does nothing on the device when the residency kernel found a miss.
Status LaunchSpeculativeRouted(const CudaEngine::Impl& impl, const LayerLaunch& l,
                               ExpertCacheRuntime::EngineSlot& es, cudaStream_t st) {
  const int e = impl.spec.n_experts();
  const void* const* tables = es.spec_tables.as<const void*>();
  const auto* spec_meta = es.spec_meta.as<cuda::ForwardMeta>();
  const int32_t* zero_layer = es.zero_layer.as<int32_t>();
  if (l.decode_experts) {
    cuda::DecodeExpertsArgs dx = l.decode;
    dx.meta = spec_meta;
    dx.gate_table = tables;
    dx.up_table = tables + e;
    dx.down_table = tables + 2 * e;
    dx.layer_dev = zero_layer;
    // Gate/up reads the tables the residency kernel writes only after its PDL wait
    // (layer_after_wait), so its blocks may start under that kernel (which triggers at once).
    cuda::DecodeExpertsArgs gate_up = dx;
    gate_up.layer_after_wait = true;
    MOE_RETURN_IF_ERROR(cuda::LaunchDecodeGateUp(gate_up, st));
    MOE_RETURN_IF_ERROR(impl.LaunchSharedPhase(l, st));
    return cuda::LaunchDecodeDownCombineWith(dx, DecodeDownOptionsOf(impl.options), st);
  }
  cuda::GemmArgs gu = l.gate_up;
  gu.b0_table = tables;
  gu.b1_table = tables + e;
  gu.layer_dev = zero_layer;
  gu.b_layer_stride = 0;
  gu.n_tiles = es.spec_n_tiles.as<int32_t>();
  gu.pdl = false;
  gu.prefetch_weights = false;
  cuda::GemmArgs dn = l.down;
  dn.b0_table = tables + 2 * e;
  dn.layer_dev = zero_layer;
  dn.b_layer_stride = 0;
  dn.n_tiles = gu.n_tiles;
  WithoutHReady(gu, dn);
  MOE_RETURN_IF_ERROR(impl.LaunchRoutedPhase(l, gu, dn, st));
  MOE_RETURN_IF_ERROR(impl.LaunchSharedPhase(l, st));
  cuda::CombineArgs comb = l.combine;
  comb.meta = spec_meta;
  return cuda::LaunchCombine(comb, st);
}

}  // namespace

Status CudaEngine::Impl::EnqueueCached(Slot& s, const cuda::ForwardMeta& meta, cuda::AType atype,
                                       const cuda::ForwardMeta* in_kernel) {
  ExpertCacheRuntime& rt = *cache;
  ExpertCacheRuntime::EngineSlot& es = rt.engine_slot(s.index);
  cudaStream_t st = s.stream.get();
  const int e = spec.n_experts(), k = spec.top_k();
  const int64_t n = meta.n_tokens;
  const int pos = meta.layer_pos;
  const int32_t layer = spec.moe_layers.at(static_cast<size_t>(pos));
  const int depth = rt.LookaheadDepth(pos);
  const bool speculate = rt.options().device_residency_check;

  // 1-3: front, lookahead, residency kernel (+ the speculative routed phase, shared expert).
  const int64_t capacity = LaunchCapacity(n);
  LayerLaunch l;
  MOE_RETURN_IF_ERROR(BuildLayerLaunch(s, capacity, atype, in_kernel != nullptr, &l));
  if (l.permute_x) {
    // Its gate/up reads x in the permuted order from TMA descriptors of resident weights only.
    return absl::InternalError("cached forward: the routed experts are resident (permute_x)");
  }
  cuda::ResolveArgs ra = rt.ResolveArgsFor(s.index, pos);
  ra.meta = s.meta.as<cuda::ForwardMeta>();
  // At one token the front routes only (front_skips_scan): the residency kernel counts the
  // offsets from the top-k ids.
  const bool front_scanned = !(l.fused_front && l.front.skip_scan);
  if (front_scanned) {
    ra.group_offsets = s.group_offsets.as<int32_t>();
  } else {
    ra.topk_ids = s.topk_ids.as<int32_t>();
  }
  ra.n_tiles = l.decode_experts ? nullptr : s.n_tiles.as<int32_t>();
  ra.la_depth = depth;
  if (!speculate) ra.n_slots = 0;  // every expert a miss: the host decides (A/B of the check)
  // Everything here depends only on (capacity, dtype, layer position) and the slot's buffers, but
  // the meta: the first kernel stores it (the meta kernel, or at one token the front that takes
  // it; a replay sets that node's parameters), or it was copied before. The sequence number is in
  // a mapped word.
  const auto enqueue_device = [&]() -> Status {
    if (in_kernel != nullptr && !l.meta_in_front) {
      MOE_RETURN_IF_ERROR(cuda::LaunchStoreMeta(*in_kernel, s.meta.as<cuda::ForwardMeta>(), st));
    }
    MOE_RETURN_IF_ERROR(LaunchFrontPhase(s, l, in_kernel));
    // A fused front takes at most FrontMaxTokens() tokens, which la_x holds.
    const bool la_front = l.fused_front && rt.options().lookahead_front;
    for (int d = 0; d < depth; ++d) {
      MOE_RETURN_IF_ERROR(LaunchLookahead(l, weights, pos, pos + 1 + d, d, rt.lookahead_stride(),
                                          es, la_front, pdl, st));
    }
    MOE_RETURN_IF_ERROR(cuda::LaunchResolveResidency(ra, st));
    if (speculate) return LaunchSpeculativeRouted(*this, l, es, st);
    if (!l.has_shared) return absl::OkStatus();
    // The shared expert overlaps the host's wait; out of its all-resident place (after the routed
    // GEMMs): no PDL overlap with a predecessor whose outputs it might read early.
    LayerLaunch shared = l;
    shared.shared_gate_up.pdl = false;
    shared.shared_gate_up.prefetch_weights = false;
    return LaunchSharedPhase(shared, st);
  };
  cudaGraphExec_t exec = nullptr;
  if (rt.options().graphs && IsGraphSize(capacity)) {
    MOE_ASSIGN_OR_RETURN(exec, ReadyGraph(s, {capacity, atype, pos, depth}, in_kernel,
                                          [&](LayerLaunch* launched) -> Status {
                                            *launched = l;
                                            return enqueue_device();
                                          }));
  }
  MOE_RETURN_IF_ERROR(rt.PublishCompletedLoads());
  rt.ArmReport(s.index);
  MOE_RETURN_IF_ERROR(rt.Speculate(s.index, pos, st, speculate, [&]() -> Status {
    if (exec != nullptr) {
      CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec, st));
    } else {
      MOE_RETURN_IF_ERROR(enqueue_device());
    }
    CUDA_RETURN_IF_ERROR(cudaEventRecord(es.resolved.get(), st));
    return absl::OkStatus();
  }));
  MOE_ASSIGN_OR_RETURN(const int64_t wait_ns, rt.WaitReport(s.index));
  const std::span<const int32_t> offsets(es.report_offsets(), static_cast<size_t>(e) + 1);
  MOE_RETURN_IF_ERROR(cuda::CheckOffsets(offsets, n * k));
  const std::vector<int32_t> active = cuda::ActiveExperts(offsets);
  MOE_RETURN_IF_ERROR(rt.OnRouted(s.index, layer, active, wait_ns));
  std::vector<ExpertCacheRuntime::LayerPrediction> predictions;
  for (int d = 0; d < depth; ++d) {
    const int64_t at = d * rt.lookahead_stride();
    predictions.push_back(
        {d + 1, spec.moe_layers[static_cast<size_t>(pos + 1 + d)],
         cuda::RankPredictedExperts(
             std::span<const int32_t>(es.report_la_ids() + at, static_cast<size_t>(n) * k),
             std::span<const float>(es.report_la_weights() + at, static_cast<size_t>(n) * k), e)});
  }
  // The step's experts and their tokens (for the eviction policy), then what each round defers.
  std::vector<experts::ExpertKey> remaining;
  std::vector<int32_t> remaining_uses;
  remaining.reserve(active.size());
  remaining_uses.reserve(active.size());
  for (const int32_t x : active) {
    remaining.push_back({layer, x});
    remaining_uses.push_back(offsets[static_cast<size_t>(x) + 1] - offsets[static_cast<size_t>(x)]);
  }

  if (speculate && es.report_header().misses == 0) {
    // 4, all resident: the routed kernels run already. Pin their experts while the prefetch
    // picks its victims, then release them behind a fence after those kernels.
    rt.CountDeviceHit();
    MOE_ASSIGN_OR_RETURN(const experts::AcquireRound round,
                         rt.AcquireAndLoad(remaining, remaining_uses));
    if (rt.options().on_round) rt.options().on_round(round, rt.pool());
    if (round.deferred.empty()) {
      if (depth > 0) MOE_RETURN_IF_ERROR(rt.Predict(s.index, std::move(predictions)));
      return rt.ReleaseRound(s.index, round, st);
    }
    // Another engine slot evicted one of them after the device check (its copy waits for these
    // kernels): keep the pool's books straight round by round.
    MOE_RETURN_IF_ERROR(rt.ReleaseRound(s.index, round, st));
    remaining = round.deferred;
    remaining_uses = round.deferred_uses;
    while (!remaining.empty()) {
      MOE_ASSIGN_OR_RETURN(const experts::AcquireRound more,
                           rt.AcquireAndLoad(remaining, remaining_uses));
      if (rt.options().on_round) rt.options().on_round(more, rt.pool());
      MOE_RETURN_IF_ERROR(rt.ReleaseRound(s.index, more, st));
      remaining = more.deferred;
      remaining_uses = more.deferred_uses;
    }
    return depth > 0 ? rt.Predict(s.index, std::move(predictions)) : absl::OkStatus();
  }

  // 4, a miss: rounds.
  const int bm = cuda::ShapeOf(l.plan.tile).bm;
  const cuda::ExpertSlotLayout& layout = rt.layout();
  const cuda::RoundUpload upload{e};
  std::vector<cuda::TileEntry> tiles;
  std::vector<int32_t> resident, waiting;
  bool decode_experts_done = false;
  const bool single_round_wanted =
      l.decode_experts && static_cast<int64_t>(remaining.size()) <=
                              rt.pool().SlotCount(rt.pool().ShapeClassOfLayer(layer));
  int single_round_tries = 0;
  bool scanned = front_scanned;
  while (!remaining.empty()) {
    MOE_ASSIGN_OR_RETURN(const experts::AcquireRound round,
                         rt.AcquireAndLoad(remaining, remaining_uses));
    if (rt.options().on_round) rt.options().on_round(round, rt.pool());
    if (single_round_wanted && !round.deferred.empty() &&
        ++single_round_tries <= rt.options().decode_round_retries &&
        remaining.size() == round.entries.size() + round.deferred.size()) {
      // The decode experts kernels need the whole step in one round and the budget holds it:
      // hand this partial round back unused (its loads go on), wait for the copies in flight
      // (loading slots become evictable) and acquire again.
      MOE_RETURN_IF_ERROR(rt.ReleaseUnused(round));
      continue;
    }

    // Pointer tables and tile lists of this round in the next ring entry.
    auto& entry = es.rounds[static_cast<size_t>(es.next_round)];
    es.next_round = (es.next_round + 1) % static_cast<int>(es.rounds.size());
    CUDA_RETURN_IF_ERROR(cudaEventSynchronize(entry.uploaded.get()));
    char* host = entry.host.as<char>();
    const auto host_table = [&](cuda::RoundUpload::Table t) {
      return reinterpret_cast<const void**>(host + upload.table(t));
    };
    int32_t* counts = reinterpret_cast<int32_t*>(host + upload.counts());
    resident.clear();
    waiting.clear();
    for (const experts::RoundEntry& re : round.entries) {
      const char* base = rt.SlotAddress(re.slot);
      const int32_t x = re.key.expert;
      const bool ready = re.source == experts::SlotSource::kResident;
      const void* gate = base + layout.gate_offset;
      const void* up = base + layout.up_offset;
      host_table(cuda::RoundUpload::kGate)[x] = gate;
      host_table(cuda::RoundUpload::kUp)[x] = up;
      host_table(cuda::RoundUpload::kDown)[x] = base + layout.down_offset;
      host_table(cuda::RoundUpload::kReadyGate)[x] = ready ? gate : nullptr;
      host_table(cuda::RoundUpload::kReadyUp)[x] = ready ? up : nullptr;
      host_table(cuda::RoundUpload::kLoadingGate)[x] = ready ? nullptr : gate;
      host_table(cuda::RoundUpload::kLoadingUp)[x] = ready ? nullptr : up;
      (ready ? resident : waiting).push_back(x);
    }
    tiles.clear();
    cuda::AppendExpertTiles(offsets, resident, bm, &tiles);
    const int32_t n_resident = static_cast<int32_t>(tiles.size());
    cuda::AppendExpertTiles(offsets, waiting, bm, &tiles);
    const int32_t n_waiting = static_cast<int32_t>(tiles.size()) - n_resident;
    if (static_cast<int64_t>(tiles.size()) > rt.max_round_tiles()) {
      return absl::InternalError("expert cache: round tile list exceeds its buffer");
    }
    counts[0] = n_resident;
    counts[1] = n_waiting;
    counts[2] = 0;  // layer index of the decode experts kernels (tables of one layer)
    counts[3] = 0;
    std::memcpy(host + upload.tiles(), tiles.data(), tiles.size() * sizeof(cuda::TileEntry));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(entry.dev.get(), host,
                                         upload.bytes(static_cast<int64_t>(tiles.size())),
                                         cudaMemcpyHostToDevice, st));
    CUDA_RETURN_IF_ERROR(cudaEventRecord(entry.uploaded.get(), st));

    char* dev = entry.dev.as<char>();
    const auto dev_table = [&](cuda::RoundUpload::Table t) {
      return reinterpret_cast<const void* const*>(dev + upload.table(t));
    };
    const void* const* dev_gate = dev_table(cuda::RoundUpload::kGate);
    const int32_t* dev_counts = reinterpret_cast<const int32_t*>(dev + upload.counts());
    const int2* dev_tiles = reinterpret_cast<const int2*>(dev + upload.tiles());
    auto launch = [&](int32_t first_tile, const int32_t* n_tiles) -> Status {
      if (!scanned) {
        // The tile kernels and the combine read the permutation: the front again, with the scan
        // (the same routing, bit for bit).
        LayerLaunch with_scan = l;
        with_scan.front.skip_scan = false;
        MOE_RETURN_IF_ERROR(LaunchFrontPhase(s, with_scan, in_kernel));
        scanned = true;
      }
      cuda::GemmArgs gu = l.gate_up;
      gu.b0_table = dev_gate;
      gu.b1_table = dev_table(cuda::RoundUpload::kUp);
      gu.layer_dev = nullptr;
      gu.b_layer_stride = 0;
      gu.tiles = dev_tiles + first_tile;
      gu.n_tiles = n_tiles;
      gu.pdl = false;  // follows a copy or an event wait
      gu.prefetch_weights = false;
      cuda::GemmArgs dn = l.down;
      dn.b0_table = dev_table(cuda::RoundUpload::kDown);
      dn.layer_dev = nullptr;
      dn.b_layer_stride = 0;
      dn.tiles = gu.tiles;
      dn.n_tiles = n_tiles;
      WithoutHReady(gu, dn);
      return LaunchRoutedPhase(l, gu, dn, st);
    };
    if (l.decode_experts && round.deferred.empty() && round.entries.size() == active.size()) {
      // The whole step in one round: the all-resident forward's decode experts kernels (down
      // fused with the combine). Gate/up of the ready experts' pairs runs before the wait for the
      // loads, of the loading ones' after it (null table entries skip a pair; each h row gets the
      // same bits either way); down + combine takes every pair after both.
      cuda::DecodeExpertsArgs dx = l.decode;
      dx.gate_table = dev_gate;
      dx.up_table = dev_table(cuda::RoundUpload::kUp);
      dx.down_table = dev_table(cuda::RoundUpload::kDown);
      dx.layer_dev = dev_counts + 2;
      dx.pdl = false;  // follows a copy or an event wait
      if (!resident.empty() && !waiting.empty()) {
        cuda::DecodeExpertsArgs ready = dx;
        ready.gate_table = dev_table(cuda::RoundUpload::kReadyGate);
        ready.up_table = dev_table(cuda::RoundUpload::kReadyUp);
        MOE_RETURN_IF_ERROR(cuda::LaunchDecodeGateUp(ready, st));
        MOE_RETURN_IF_ERROR(rt.WaitLoads(s.index, round, st));
        cuda::DecodeExpertsArgs loading = dx;
        loading.gate_table = dev_table(cuda::RoundUpload::kLoadingGate);
        loading.up_table = dev_table(cuda::RoundUpload::kLoadingUp);
        MOE_RETURN_IF_ERROR(cuda::LaunchDecodeGateUp(loading, st));
        rt.CountReadyFirst();
      } else {
        MOE_RETURN_IF_ERROR(rt.WaitLoads(s.index, round, st));
        MOE_RETURN_IF_ERROR(cuda::LaunchDecodeGateUp(dx, st));
      }
      MOE_RETURN_IF_ERROR(cuda::LaunchDecodeDownCombineWith(dx, DecodeDownOptionsOf(options), st));
      decode_experts_done = true;
    } else {
      if (n_resident > 0) MOE_RETURN_IF_ERROR(launch(0, dev_counts));
      if (n_resident > 0 && n_waiting > 0) rt.CountReadyFirst();
      if (n_waiting > 0) {
        MOE_RETURN_IF_ERROR(rt.WaitLoads(s.index, round, st));
        MOE_RETURN_IF_ERROR(launch(n_resident, dev_counts + 1));
      }
    }
    MOE_RETURN_IF_ERROR(rt.ReleaseRound(s.index, round, st));
    remaining = round.deferred;
    remaining_uses = round.deferred_uses;
  }

  // Prefetch for the next layers, combine.
  if (depth > 0) MOE_RETURN_IF_ERROR(rt.Predict(s.index, std::move(predictions)));
  if (decode_experts_done) return absl::OkStatus();  // down + combine ran fused
  cuda::CombineArgs comb = l.combine;
  comb.pdl = false;  // follows an event record
  return cuda::LaunchCombine(comb, st);
}

}  // namespace moe
