#include "engine/cuda/expert_cache_runtime.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include "kernels/moe_kernels.h"
#include "kernels/tile_heuristics.h"
#include "kernels/weight_codec.h"
#include "kernels/weight_layout.h"

namespace moe::cuda {
namespace {

constexpr int kRoundRing = 8;   // round-table entries per engine slot
constexpr int kFenceRing = 64;  // fences per engine slot
constexpr int kTimerRing = 64;  // timing pairs (per engine slot / for the copy stream)
constexpr auto kAcquireDeadline = std::chrono::seconds(30);

int64_t AlignUp(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

// Reads a timing pair (both complete) in nanoseconds.
StatusOr<uint64_t> ElapsedNs(const std::pair<Event, Event>& p) {
  float ms = 0;
  CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, p.first.get(), p.second.get()));
  return static_cast<uint64_t>(std::max(0.0f, ms) * 1e6);
}

StatusOr<std::pair<Event, Event>> TimingPair() {
  MOE_ASSIGN_OR_RETURN(Event a, CreateEvent(/*timing=*/true));
  MOE_ASSIGN_OR_RETURN(Event b, CreateEvent(/*timing=*/true));
  return std::make_pair(std::move(a), std::move(b));
}

}  // namespace

StatusOr<std::unique_ptr<ExpertCacheRuntime>> ExpertCacheRuntime::Create(
    std::shared_ptr<const Model> model, const Options& options) {
  if (model == nullptr) {
    return absl::InvalidArgumentError("an expert cache budget needs a model (its host tier)");
  }
  if (options.cache.budget_bytes <= 0 || options.num_engine_slots < 1) {
    return absl::InvalidArgumentError("ExpertCacheRuntime: need a positive budget and >= 1 slot");
  }
  if (options.cache.prefetch_depth < 1 ||
      options.cache.prefetch_depth > ExpertCacheOptions::kMaxPrefetchDepth) {
    return absl::InvalidArgumentError(absl::StrCat("expert cache: prefetch depth must be in [1, ",
                                                   ExpertCacheOptions::kMaxPrefetchDepth, "], got ",
                                                   options.cache.prefetch_depth));
  }
  if (!(options.cache.prefetch_min_precision >= 0 && options.cache.prefetch_min_precision <= 1)) {
    return absl::InvalidArgumentError("expert cache: prefetch_min_precision must be in [0, 1]");
  }
  std::unique_ptr<ExpertCacheRuntime> rt(new ExpertCacheRuntime());
  rt->options_ = options;
  rt->spec_ = model->spec();
  const MoeSpec& spec = rt->spec_;
  ExpertCopierOptions co;
  co.device = options.device;
  co.register_host_memory = options.cache.register_host_memory;
  if (options.cache.compress_threads < 1 || options.cache.compress_threads > 256) {
    return absl::InvalidArgumentError("expert cache: compress_threads must be in [1, 256]");
  }
  // Packed slots load through their own staging step (the pack), so they take raw copies.
  co.compress = options.cache.compress_host_tier && !options.pack_slots;
  co.compress_threads = options.cache.compress_threads;
  MOE_ASSIGN_OR_RETURN(rt->copier_, MakeExpertCopier(model, co));
  rt->compressed_ = rt->copier_->compressed();

  // The pool: one shape class (every MoE layer), slots of the copier's slot size.
  experts::ExpertSlotPool::Options po;
  po.budget_bytes = options.cache.budget_bytes;
  experts::ShapeClass cls = experts::ShapeClassForSpec(spec);
  cls.expert_bytes = rt->copier_->layout().slot_bytes;
  po.shape_classes.push_back(cls);
  po.eviction = options.cache.eviction;
  MOE_ASSIGN_OR_RETURN(rt->pool_, experts::ExpertSlotPool::Create(po));

  if (rt->pool_->ShapeClassCount() != 1) {
    return absl::InternalError("expert cache: the residency table expects one shape class");
  }
  if (rt->pool_->SlotCount(0) < options.min_slots) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expert cache: a budget of ", options.cache.budget_bytes, " bytes holds ",
        rt->pool_->SlotCount(0), " expert slots of ", rt->pool_->SlotBytes(0),
        " bytes, but a decode step routes up to ", options.min_slots,
        " experts, which must be resident together (for outputs identical to the all-resident "
        "engine): the budget must be at least ",
        options.min_slots * rt->pool_->SlotBytes(0), " bytes"));
  }
  // The residency table: every (MoE layer position, expert) absent.
  rt->layer_pos_.assign(static_cast<size_t>(std::max(spec.n_layers, 0)), -1);
  for (size_t p = 0; p < spec.moe_layers.size(); ++p) {
    rt->layer_pos_.at(static_cast<size_t>(spec.moe_layers[p])) = static_cast<int32_t>(p);
  }
  rt->n_pos_ = static_cast<int>(spec.moe_layers.size());
  const int64_t table_entries = int64_t{rt->n_pos_} * spec.n_experts();
  MOE_ASSIGN_OR_RETURN(rt->residency_, PinnedBuffer::Create(table_entries * 4));
  std::fill_n(rt->residency_.as<int32_t>(), table_entries, -1);
  void* table_dev = nullptr;
  CUDA_RETURN_IF_ERROR(cudaHostGetDevicePointer(&table_dev, rt->residency_.get(), 0));
  rt->residency_dev_ = static_cast<const int32_t*>(table_dev);
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  if (cudaGetDriverEntryPointByVersion("cuStreamWriteValue32", &fn, 12000, cudaEnableDefault,
                                       &found) == cudaSuccess &&
      found == cudaDriverEntryPointSuccess && fn != nullptr) {
    rt->write_value32_ = reinterpret_cast<WriteValue32Fn>(fn);
  }
  cudaGetLastError();  // a missing entry point is not an error of the engine

  // Slot memory and one load event per slot.
  int64_t flat = 0;
  for (int32_t c = 0; c < rt->pool_->ShapeClassCount(); ++c) {
    const int64_t bytes = int64_t{rt->pool_->SlotCount(c)} * rt->pool_->SlotBytes(c);
    MOE_ASSIGN_OR_RETURN(DeviceBuffer buf, DeviceBuffer::Create(bytes));
    rt->device_bytes_ += bytes;
    rt->class_buffers_.push_back(std::move(buf));
    rt->class_first_slot_.push_back(flat);
    flat += rt->pool_->SlotCount(c);
  }
  if (options.pack_slots) {
    if (!PackableShape(spec.moe_intermediate, spec.hidden) ||
        !PackableShape(spec.hidden, spec.moe_intermediate)) {
      return absl::InvalidArgumentError(
          "expert cache: packed slots need hidden and moe_intermediate multiples of 128");
    }
  }
  if (options.pack_slots || rt->compressed_ != nullptr) {
    const int64_t staging_bytes =
        options.pack_slots ? rt->pool_->SlotBytes(0) : rt->compressed_->layout().max_blob_bytes;
    for (int b = 0; b < 2; ++b) {
      MOE_ASSIGN_OR_RETURN(rt->staging_[b], DeviceBuffer::Create(staging_bytes));
      rt->device_bytes_ += staging_bytes;
      MOE_ASSIGN_OR_RETURN(rt->staged_[b], CreateEvent());
      MOE_ASSIGN_OR_RETURN(rt->unstaged_[b], CreateEvent());
    }
    // Highest priority: a decode finishes a load that a forward may be waiting for, so its
    // blocks go first when the forward's kernels free an SM.
    int least = 0, greatest = 0;
    CUDA_RETURN_IF_ERROR(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    cudaStream_t ts = nullptr;
    CUDA_RETURN_IF_ERROR(cudaStreamCreateWithPriority(&ts, cudaStreamNonBlocking, greatest));
    rt->transform_stream_ = Stream(ts);
  }
  rt->load_events_.reserve(static_cast<size_t>(flat));
  for (int64_t i = 0; i < flat; ++i) {
    MOE_ASSIGN_OR_RETURN(Event ev, CreateEvent());
    rt->load_events_.push_back(std::move(ev));
  }
  MOE_ASSIGN_OR_RETURN(rt->copy_stream_, CreateStream());
  for (int i = 0; i < kTimerRing; ++i) {
    MOE_ASSIGN_OR_RETURN(auto pair, TimingPair());
    rt->copy_timers_.push_back(std::move(pair));
  }
  rt->copy_timer_pending_.assign(kTimerRing, 0);

  // Per engine slot staging.
  const int64_t e = spec.n_experts(), k = spec.top_k(), tm = options.max_batch_tokens;
  const int64_t nr = e + (spec.shared_expert_gate ? 1 : 0);
  const int64_t depth = options.cache.prefetch_depth;
  rt->la_stride_ = tm * k;
  rt->depth_accuracy_.resize(static_cast<size_t>(depth));
  rt->depth_gates_.assign(static_cast<size_t>(depth),
                          LookaheadGate(options.cache.prefetch_min_precision));
  rt->max_tiles_ = MaxGroupedTiles(tm * k, static_cast<int>(e), kTileShapes[0].bm);
  rt->round_entry_bytes_ = AlignUp(RoundUpload{e}.bytes(rt->max_tiles_), 256);
  rt->fence_rings_.resize(static_cast<size_t>(options.num_engine_slots));
  for (int s = 0; s < options.num_engine_slots; ++s) {
    auto es = std::make_unique<EngineSlot>();
    es->report_offsets_at = AlignUp(sizeof(ResidencyReport), 64);
    es->report_la_ids_at = AlignUp(es->report_offsets_at + (e + 1) * 4, 64);
    es->report_la_weights_at = AlignUp(es->report_la_ids_at + depth * tm * k * 4, 64);
    MOE_ASSIGN_OR_RETURN(es->report,
                         PinnedBuffer::Create(es->report_la_weights_at + depth * tm * k * 4));
    std::memset(es->report.get(), 0, static_cast<size_t>(es->report.bytes()));
    MOE_ASSIGN_OR_RETURN(es->seq_in, PinnedBuffer::Create(64));
    std::memset(es->seq_in.get(), 0, 64);
    MOE_ASSIGN_OR_RETURN(es->la_logits, DeviceBuffer::Create(tm * nr * 4));
    MOE_ASSIGN_OR_RETURN(es->la_ids_dev, DeviceBuffer::Create(depth * tm * k * 4));
    MOE_ASSIGN_OR_RETURN(es->la_weights_dev, DeviceBuffer::Create(depth * tm * k * 4));
    MOE_ASSIGN_OR_RETURN(es->la_ranks, DeviceBuffer::Create(tm * k * 4));
    MOE_ASSIGN_OR_RETURN(es->la_counts, DeviceBuffer::Create(e * 4));
    if (options.cache.lookahead_front && depth > 0) {
      MOE_ASSIGN_OR_RETURN(
          es->la_x, DeviceBuffer::Create(std::min(tm, FrontMaxTokens()) * 2 * spec.hidden * 2));
    }
    MOE_ASSIGN_OR_RETURN(es->spec_tables, DeviceBuffer::Create(3 * e * 8));
    MOE_ASSIGN_OR_RETURN(es->spec_meta, DeviceBuffer::Create(sizeof(ForwardMeta)));
    MOE_ASSIGN_OR_RETURN(es->spec_n_tiles, DeviceBuffer::Create(4));
    MOE_ASSIGN_OR_RETURN(es->zero_layer, DeviceBuffer::Create(4));
    CUDA_RETURN_IF_ERROR(cudaMemset(es->spec_tables.get(), 0, es->spec_tables.bytes()));
    CUDA_RETURN_IF_ERROR(cudaMemset(es->zero_layer.get(), 0, 4));
    rt->device_bytes_ += es->la_logits.bytes() + es->la_x.bytes() + (2 * depth + 1) * tm * k * 4 +
                         e * 4 + es->spec_tables.bytes() + sizeof(ForwardMeta) + 8;
    MOE_ASSIGN_OR_RETURN(es->resolved, CreateEvent());
    es->rounds.resize(kRoundRing);
    for (auto& r : es->rounds) {
      MOE_ASSIGN_OR_RETURN(r.host, PinnedBuffer::Create(rt->round_entry_bytes_));
      MOE_ASSIGN_OR_RETURN(r.dev, DeviceBuffer::Create(rt->round_entry_bytes_));
      MOE_ASSIGN_OR_RETURN(r.uploaded, CreateEvent());
      rt->device_bytes_ += rt->round_entry_bytes_;
    }
    for (int i = 0; i < kTimerRing; ++i) {
      MOE_ASSIGN_OR_RETURN(auto pair, TimingPair());
      es->wait_events.push_back(std::move(pair));
    }
    es->wait_pending.assign(kTimerRing, 0);
    FenceRing& ring = rt->fence_rings_[static_cast<size_t>(s)];
    ring.fences.resize(kFenceRing);
    for (Fence& f : ring.fences) {
      MOE_ASSIGN_OR_RETURN(f.event, CreateEvent());
    }
    rt->slots_.push_back(std::move(es));
  }
  rt->spec_events_.resize(static_cast<size_t>(options.num_engine_slots) * rt->n_pos_);
  for (Event& ev : rt->spec_events_) {
    MOE_ASSIGN_OR_RETURN(ev, CreateEvent());
  }
  rt->spec_recorded_.assign(rt->spec_events_.size(), 0);
  if (!options.cache.trace_path.empty()) {
    experts::TraceRecorder::Options to;
    to.path = options.cache.trace_path;
    to.shape = {spec.n_layers, static_cast<int32_t>(e), static_cast<int32_t>(k)};
    MOE_ASSIGN_OR_RETURN(rt->trace_, experts::TraceRecorder::Create(to));
  }
  return rt;
}

ExpertCacheRuntime::~ExpertCacheRuntime() {
  SyncCopies().IgnoreError();
  if (trace_) trace_->Flush().IgnoreError();
}

char* ExpertCacheRuntime::SlotAddress(experts::SlotId slot) const {
  return class_buffers_[static_cast<size_t>(slot.shape_class)].as<char>() +
         int64_t{slot.index} * pool_->SlotBytes(slot.shape_class);
}

Status ExpertCacheRuntime::PollLocked() {
  MOE_RETURN_IF_ERROR(broken_);
  // Loads complete in issue order (one copy stream): stop querying at the first one in flight.
  size_t kept = 0;
  bool in_flight = false;
  for (const PendingLoad& p : pending_loads_) {
    const cudaError_t q =
        in_flight ? cudaErrorNotReady
                  : cudaEventQuery(load_events_[static_cast<size_t>(SlotIndexFlat(p.slot))].get());
    in_flight = q == cudaErrorNotReady;
    if (q == cudaSuccess) {
      MOE_RETURN_IF_ERROR(pool_->MarkLoaded(p.slot));
      // Published: the device may read the slot from now on.
      std::atomic_ref<int32_t>(*ResidencyEntry(p.key))
          .store(p.slot.index, std::memory_order_release);
    } else if (q == cudaErrorNotReady) {
      pending_loads_[kept++] = p;
    } else {
      broken_ = absl::InternalError(absl::StrCat("expert copy failed: ", cudaGetErrorString(q)));
      return broken_;
    }
  }
  pending_loads_.resize(kept);
  for (int i = 0; i < kTimerRing; ++i) {
    if (!copy_timer_pending_[i]) continue;
    const cudaError_t q = cudaEventQuery(copy_timers_[i].second.get());
    if (q == cudaErrorNotReady) continue;
    CUDA_RETURN_IF_ERROR(q);
    MOE_ASSIGN_OR_RETURN(const uint64_t ns, ElapsedNs(copy_timers_[i]));
    copy_busy_ns_ += ns;
    copy_timer_pending_[i] = 0;
  }
  return absl::OkStatus();
}

Status ExpertCacheRuntime::PollWaitTimings(EngineSlot& es, bool drain_one) {
  if (drain_one && es.wait_pending[es.wait_next]) {
    CUDA_RETURN_IF_ERROR(cudaEventSynchronize(es.wait_events[es.wait_next].second.get()));
  }
  for (int i = 0; i < kTimerRing; ++i) {
    if (!es.wait_pending[i]) continue;
    const cudaError_t q = cudaEventQuery(es.wait_events[i].second.get());
    if (q == cudaErrorNotReady) continue;
    CUDA_RETURN_IF_ERROR(q);
    MOE_ASSIGN_OR_RETURN(const uint64_t ns, ElapsedNs(es.wait_events[i]));
    pool_->RecordCopyWait(ns);
    es.wait_pending[i] = 0;
  }
  return absl::OkStatus();
}

Status ExpertCacheRuntime::OnRouted(int engine_slot, int32_t layer, std::span<const int32_t> active,
                                    int64_t host_wait_ns) {
  EngineSlot& es = this->engine_slot(engine_slot);
  host_round_trips_ += 1;
  host_wait_ns_ += static_cast<uint64_t>(std::max<int64_t>(0, host_wait_ns));
  // A layer at or before the previous one starts a new batch (a new pass over the layers).
  const bool new_pass = es.batch < 0 || layer <= es.last_layer;
  if (new_pass) es.batch = next_batch_++;
  es.last_layer = layer;
  MOE_RETURN_IF_ERROR(PollWaitTimings(es, /*drain_one=*/false));
  std::lock_guard<std::mutex> lock(mu_);
  MOE_RETURN_IF_ERROR(PollLocked());
  if (new_pass) es.predicted.clear();  // predictions of an earlier pass that never routed
  int32_t nearest = 0;
  for (const LayerPrediction& p : es.predicted) {
    if (p.layer == layer && (nearest == 0 || p.depth < nearest)) nearest = p.depth;
  }
  size_t kept = 0;
  for (LayerPrediction& p : es.predicted) {
    if (p.layer != layer) {
      es.predicted[kept++] = std::move(p);
      continue;
    }
    depth_accuracy_.at(static_cast<size_t>(p.depth - 1)).Record(p.ranked, active);
    depth_gates_.at(static_cast<size_t>(p.depth - 1)).Record(p.ranked, active);
    if (p.depth == nearest) accuracy_.Record(p.ranked, active);
  }
  es.predicted.resize(kept);
  if (trace_ != nullptr) {
    // Batches of different engine slots interleave; keep the file's numbers non-decreasing.
    trace_last_batch_ = std::max(trace_last_batch_, es.batch);
    MOE_RETURN_IF_ERROR(trace_->Record(trace_last_batch_, layer, active));
  }
  return absl::OkStatus();
}

int32_t* ExpertCacheRuntime::ResidencyEntry(const experts::ExpertKey& key) const {
  const int32_t pos = layer_pos_.at(static_cast<size_t>(key.layer));
  return residency_.as<int32_t>() + int64_t{pos} * spec_.n_experts() + key.expert;
}

Status ExpertCacheRuntime::WithdrawLocked(const experts::ExpertKey& key) {
  const int32_t pos = layer_pos_.at(static_cast<size_t>(key.layer));
  std::lock_guard<std::mutex> lock(spec_mu_);
  std::atomic_ref<int32_t>(*ResidencyEntry(key)).store(-1, std::memory_order_seq_cst);
  // Readers launched before the store: their (engine slot, layer) events cover them.
  for (int s = 0; s < options_.num_engine_slots; ++s) {
    const size_t i = static_cast<size_t>(s) * n_pos_ + pos;
    if (!spec_recorded_[i]) continue;
    const cudaError_t q = cudaEventQuery(spec_events_[i].get());
    if (q == cudaSuccess) continue;
    if (q != cudaErrorNotReady) CUDA_RETURN_IF_ERROR(q);
    CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(copy_stream_.get(), spec_events_[i].get(), 0));
  }
  return absl::OkStatus();
}

Status ExpertCacheRuntime::PublishCompletedLoads() {
  std::lock_guard<std::mutex> lock(mu_);
  return PollLocked();
}

int ExpertCacheRuntime::LookaheadDepth(int layer_pos) const {
  if (!options_.cache.prefetch) return 0;
  const int depth = std::clamp(n_pos_ - 1 - layer_pos, 0, options_.cache.prefetch_depth);
  if (!options_.cache.lookahead_skips_resident) return depth;
  for (int d = 1; d <= depth; ++d) {
    const int32_t layer = spec_.moe_layers[static_cast<size_t>(layer_pos + d)];
    if (pool_->ResidentExperts(layer) < spec_.n_experts()) return depth;
  }
  return 0;
}

ResolveArgs ExpertCacheRuntime::ResolveArgsFor(int engine_slot, int layer_pos) const {
  const EngineSlot& es = *slots_[static_cast<size_t>(engine_slot)];
  const ExpertSlotLayout& lay = layout();
  ResolveArgs a;
  a.n_experts = spec_.n_experts();
  a.top_k = spec_.top_k();
  a.slot_of = residency_dev_ + int64_t{layer_pos} * spec_.n_experts();
  a.slot_base = class_buffers_[0].as<char>();
  a.slot_bytes = pool_->SlotBytes(0);
  a.gate_offset = lay.gate_offset;
  a.up_offset = lay.up_offset;
  a.down_offset = lay.down_offset;
  a.n_slots = pool_->SlotCount(0);
  a.pdl = options_.cache.residency_pdl;
  a.tables = es.spec_tables.as<const void*>();
  a.spec_meta = es.spec_meta.as<ForwardMeta>();
  a.spec_n_tiles = es.spec_n_tiles.as<int32_t>();
  a.la_ids = es.la_ids_dev.as<int32_t>();
  a.la_weights = es.la_weights_dev.as<float>();
  a.la_stride = la_stride_;
  // Pinned memory is mapped at the same address under unified addressing (64-bit CUDA).
  char* host = es.report.as<char>();
  a.host_offsets = reinterpret_cast<int32_t*>(host + es.report_offsets_at);
  a.host_la_ids = reinterpret_cast<int32_t*>(host + es.report_la_ids_at);
  a.host_la_weights = reinterpret_cast<float*>(host + es.report_la_weights_at);
  a.report = reinterpret_cast<ResidencyReport*>(host);
  a.seq = es.seq_in.as<uint64_t>();
  return a;
}

void ExpertCacheRuntime::ArmReport(int engine_slot) {
  EngineSlot& es = this->engine_slot(engine_slot);
  // The launch that follows orders this store before the kernel's read (mapped memory is coherent
  // with the host's caches).
  std::atomic_ref<uint64_t>(*es.seq_in.as<uint64_t>()).store(++es.seq, std::memory_order_release);
}

Status ExpertCacheRuntime::Speculate(int engine_slot, int layer_pos, cudaStream_t stream,
                                     bool speculative, const std::function<Status()>& enqueue) {
  if (!speculative) return enqueue();
  std::lock_guard<std::mutex> lock(spec_mu_);
  MOE_RETURN_IF_ERROR(enqueue());
  const size_t i = static_cast<size_t>(engine_slot) * n_pos_ + layer_pos;
  CUDA_RETURN_IF_ERROR(cudaEventRecord(spec_events_[i].get(), stream));
  spec_recorded_[i] = 1;
  return absl::OkStatus();
}

StatusOr<int64_t> ExpertCacheRuntime::WaitReport(int engine_slot) {
  EngineSlot& es = this->engine_slot(engine_slot);
  const uint64_t want = es.seq;
  uint64_t* seq = &es.report.as<ResidencyReport>()->seq;
  const auto start = std::chrono::steady_clock::now();
  auto arrived = [&]() {
    return std::atomic_ref<uint64_t>(*seq).load(std::memory_order_acquire) == want;
  };
  for (uint64_t i = 1; !arrived(); ++i) {
    if (i % 256 != 0) continue;
    // Now and then: did the kernel fail, or finish without a report (never expected)?
    const cudaError_t q = cudaEventQuery(es.resolved.get());
    if (q == cudaSuccess) {
      if (arrived()) break;
      return absl::InternalError("expert cache: the residency kernel finished without a report");
    }
    if (q != cudaErrorNotReady) CUDA_RETURN_IF_ERROR(q);
    if (std::chrono::steady_clock::now() - start > std::chrono::microseconds(200)) {
      std::this_thread::yield();  // a long wait (copies ahead of it): let other threads run
    }
  }
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                              start)
      .count();
}

Status ExpertCacheRuntime::WaitFenceOnCopyStream(uint64_t fence) {
  if (fence == 0) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(fence_mu_);
  for (FenceRing& ring : fence_rings_) {
    // The latest fence <= `fence` of this engine slot covers its earlier ones (stream order).
    // Fences overwritten in the ring were synchronized first, so none found means none pending.
    const Fence* latest = nullptr;
    for (const Fence& f : ring.fences) {
      if (f.id != 0 && f.id <= fence && (latest == nullptr || f.id > latest->id)) latest = &f;
    }
    if (latest == nullptr) continue;
    const cudaError_t q = cudaEventQuery(latest->event.get());
    if (q == cudaSuccess) continue;
    if (q != cudaErrorNotReady) CUDA_RETURN_IF_ERROR(q);
    CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(copy_stream_.get(), latest->event.get(), 0));
  }
  return absl::OkStatus();
}

Status ExpertCacheRuntime::IssueLoadsLocked(std::span<const experts::PrefetchLoad> loads) {
  if (loads.empty()) return absl::OkStatus();
  cudaStream_t cs = copy_stream_.get();
  for (const experts::PrefetchLoad& l : loads) {
    if (l.evicted.has_value()) MOE_RETURN_IF_ERROR(WithdrawLocked(*l.evicted));
    MOE_RETURN_IF_ERROR(WaitFenceOnCopyStream(l.reuse_fence));
  }
  // Time the batch of copies on the copy stream (after its fence waits).
  const int t = copy_timer_next_;
  copy_timer_next_ = (copy_timer_next_ + 1) % kTimerRing;
  if (copy_timer_pending_[t]) {
    CUDA_RETURN_IF_ERROR(cudaEventSynchronize(copy_timers_[t].second.get()));
    MOE_ASSIGN_OR_RETURN(const uint64_t ns, ElapsedNs(copy_timers_[t]));
    copy_busy_ns_ += ns;
  }
  CUDA_RETURN_IF_ERROR(cudaEventRecord(copy_timers_[t].first.get(), cs));
  for (const experts::PrefetchLoad& l : loads) {
    // The stream that writes the slot last (publish and load event go after it).
    cudaStream_t ws = cs;
    Status s;
    std::optional<experts::CompressedHostTier::Blob> blob;
    if (compressed_ != nullptr) blob = compressed_->Find(l.key);
    if (options_.pack_slots) {
      StatusOr<cudaStream_t> packed = CopyPackedAsync(l.key, SlotAddress(l.slot));
      s = packed.status();
      if (packed.ok()) ws = *packed;
      wire_bytes_ += static_cast<uint64_t>(layout().slot_bytes);
    } else if (blob.has_value()) {
      StatusOr<cudaStream_t> decoded = CopyCompressedAsync(*blob, SlotAddress(l.slot));
      s = decoded.status();
      if (decoded.ok()) ws = *decoded;
      compressed_loads_ += 1;
      wire_bytes_ += static_cast<uint64_t>(blob->info.bytes);
    } else {
      s = copier_->CopyAsync(l.key, SlotAddress(l.slot), cs);
      wire_bytes_ += static_cast<uint64_t>(layout().slot_bytes);
    }
    if (s.ok() && write_value32_ != nullptr) {
      // Publish on the device timeline (see 6. in the header comment). CUresult 0 = success;
      // on failure the host publishes at MarkLoaded instead.
      const uint64_t entry =
          reinterpret_cast<uint64_t>(residency_dev_) +
          4 * static_cast<uint64_t>(ResidencyEntry(l.key) - residency_.as<int32_t>());
      if (write_value32_(ws, entry, static_cast<uint32_t>(l.slot.index), 0) != 0) {
        write_value32_ = nullptr;
      }
    }
    if (s.ok()) {
      const cudaError_t r =
          cudaEventRecord(load_events_[static_cast<size_t>(SlotIndexFlat(l.slot))].get(), ws);
      if (r != cudaSuccess) s = absl::InternalError(cudaGetErrorString(r));
    }
    if (!s.ok()) {
      // The slot stays "loading" in the pool with unknown contents: refuse all further work.
      broken_ = absl::InternalError(absl::StrCat("expert cache: copy of ", experts::ToString(l.key),
                                                 " failed: ", std::string(s.message())));
      return broken_;
    }
    pending_loads_.push_back({l.slot, l.key});
  }
  CUDA_RETURN_IF_ERROR(cudaEventRecord(copy_timers_[t].second.get(), cs));
  copy_timer_pending_[t] = 1;
  copy_batches_ += 1;
  return absl::OkStatus();
}

StatusOr<cudaStream_t> ExpertCacheRuntime::CopyThroughStaging(
    const std::function<Status(char* staging, cudaStream_t cs)>& copy,
    const std::function<Status(const char* staging, cudaStream_t ts)>& transform) {
  cudaStream_t cs = copy_stream_.get(), ts = transform_stream_.get();
  const int b = staging_next_;
  staging_next_ ^= 1;
  char* staging = staging_[b].as<char>();
  // The copy into buffer b after the transform that last read it (a no-op before its first
  // record).
  CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(cs, unstaged_[b].get(), 0));
  MOE_RETURN_IF_ERROR(copy(staging, cs));
  CUDA_RETURN_IF_ERROR(cudaEventRecord(staged_[b].get(), cs));
  CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(ts, staged_[b].get(), 0));
  MOE_RETURN_IF_ERROR(transform(staging, ts));
  CUDA_RETURN_IF_ERROR(cudaEventRecord(unstaged_[b].get(), ts));
  return ts;
}

StatusOr<cudaStream_t> ExpertCacheRuntime::CopyPackedAsync(const experts::ExpertKey& key,
                                                           char* slot) {
  return CopyThroughStaging(
      [&](char* staging, cudaStream_t cs) { return copier_->CopyAsync(key, staging, cs); },
      [&](const char* staging, cudaStream_t ps) -> Status {
        const ExpertSlotLayout& lay = layout();
        const int64_t hidden = spec_.hidden, inter = spec_.moe_intermediate;
        MOE_RETURN_IF_ERROR(LaunchPackWeights(staging + lay.gate_offset, slot + lay.gate_offset,
                                              inter, hidden, ps));
        MOE_RETURN_IF_ERROR(
            LaunchPackWeights(staging + lay.up_offset, slot + lay.up_offset, inter, hidden, ps));
        return LaunchPackWeights(staging + lay.down_offset, slot + lay.down_offset, hidden, inter,
                                 ps);
      });
}

StatusOr<cudaStream_t> ExpertCacheRuntime::CopyCompressedAsync(
    const experts::CompressedHostTier::Blob& blob, char* slot) {
  return CopyThroughStaging(
      [&](char* staging, cudaStream_t cs) -> Status {
        CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
            staging, blob.data, static_cast<size_t>(blob.info.bytes), cudaMemcpyHostToDevice, cs));
        return absl::OkStatus();
      },
      [&](const char* staging, cudaStream_t ds) {
        DecodeExpertArgs d;
        d.blob = reinterpret_cast<const uint8_t*>(staging);
        d.slot = slot;
        d.dst_offset = compressed_->slot_offsets();
        d.layout = compressed_->layout();
        d.info = blob.info;
        return LaunchDecodeExpert(d, ds);
      });
}

Status ExpertCacheRuntime::SyncCopies() {
  if (copy_stream_) CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(copy_stream_.get()));
  if (transform_stream_) CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(transform_stream_.get()));
  return absl::OkStatus();
}

StatusOr<experts::AcquireRound> ExpertCacheRuntime::AcquireAndLoad(
    std::span<const experts::ExpertKey> keys, std::span<const int32_t> uses) {
  const auto deadline = std::chrono::steady_clock::now() + kAcquireDeadline;
  // The test hook's cap: the keys past it are deferred as if the budget were full.
  const int cap = options_.cache.max_round_experts;
  const size_t now = cap > 0 ? std::min(keys.size(), static_cast<size_t>(cap)) : keys.size();
  for (int attempt = 0;; ++attempt) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      MOE_RETURN_IF_ERROR(PollLocked());
      StatusOr<experts::AcquireRound> round =
          pool_->Acquire(keys.first(now), uses.empty() ? uses : uses.first(now));
      if (round.ok()) {
        round->deferred.insert(round->deferred.end(), keys.begin() + now, keys.end());
        if (!uses.empty()) {
          round->deferred_uses.insert(round->deferred_uses.end(), uses.begin() + now, uses.end());
        }
        std::vector<experts::PrefetchLoad> loads;
        for (const experts::RoundEntry& e : round->entries) {
          if (e.source == experts::SlotSource::kLoad) {
            loads.push_back({e.key, e.slot, e.reuse_fence, e.evicted});
          }
        }
        const Status issued = IssueLoadsLocked(loads);
        if (!issued.ok()) {
          pool_->Release(*round, 0).IgnoreError();
          return issued;
        }
        rounds_ += 1;
        return round;
      }
      if (!absl::IsResourceExhausted(round.status())) return round.status();
    }
    // Every slot is pinned or loading: let the copies in flight finish (they become evictable
    // once marked loaded), then give other engine slots time to release theirs.
    if (std::chrono::steady_clock::now() > deadline) {
      return absl::ResourceExhaustedError(
          "expert cache: no slot became free within 30 s (every slot pinned by running batches; "
          "raise --expert-cache-bytes or lower the engine slots)");
    }
    MOE_RETURN_IF_ERROR(SyncCopies());
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

Status ExpertCacheRuntime::WaitLoads(int engine_slot, const experts::AcquireRound& round,
                                     cudaStream_t stream) {
  EngineSlot& es = this->engine_slot(engine_slot);
  bool any = false;
  for (const experts::RoundEntry& e : round.entries) {
    any = any || e.source != experts::SlotSource::kResident;
  }
  if (!any) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(PollWaitTimings(es, /*drain_one=*/true));
  const int t = es.wait_next;
  es.wait_next = (es.wait_next + 1) % kTimerRing;
  CUDA_RETURN_IF_ERROR(cudaEventRecord(es.wait_events[t].first.get(), stream));
  for (const experts::RoundEntry& e : round.entries) {
    if (e.source == experts::SlotSource::kResident) continue;
    CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(
        stream, load_events_[static_cast<size_t>(SlotIndexFlat(e.slot))].get(), 0));
  }
  CUDA_RETURN_IF_ERROR(cudaEventRecord(es.wait_events[t].second.get(), stream));
  es.wait_pending[t] = 1;
  return absl::OkStatus();
}

Status ExpertCacheRuntime::ReleaseRound(int engine_slot, const experts::AcquireRound& round,
                                        cudaStream_t stream) {
  uint64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(fence_mu_);
    FenceRing& ring = fence_rings_[static_cast<size_t>(engine_slot)];
    Fence& f = ring.fences[static_cast<size_t>(ring.next)];
    ring.next = (ring.next + 1) % kFenceRing;
    // An overwritten fence must be complete (WaitFenceOnCopyStream relies on it); it is long
    // done in practice (kFenceRing rounds ago).
    if (f.id != 0) CUDA_RETURN_IF_ERROR(cudaEventSynchronize(f.event.get()));
    id = next_fence_++;
    CUDA_RETURN_IF_ERROR(cudaEventRecord(f.event.get(), stream));
    f.id = id;
  }
  return pool_->Release(round, id);
}

StatusOr<int64_t> ExpertCacheRuntime::Warm(std::span<const experts::ExpertKey> keys) {
  int64_t loaded = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    MOE_RETURN_IF_ERROR(broken_);
    int32_t slots = 0;
    for (int32_t c = 0; c < pool_->ShapeClassCount(); ++c) slots += pool_->SlotCount(c);
    MOE_ASSIGN_OR_RETURN(const std::vector<experts::PrefetchLoad> loads,
                         pool_->Prefetch(keys, slots));
    MOE_RETURN_IF_ERROR(IssueLoadsLocked(loads));
    loaded = static_cast<int64_t>(loads.size());
  }
  MOE_RETURN_IF_ERROR(SyncCopies());
  std::lock_guard<std::mutex> lock(mu_);
  MOE_RETURN_IF_ERROR(PollLocked());
  return loaded;
}

Status ExpertCacheRuntime::ReleaseUnused(const experts::AcquireRound& round) {
  MOE_RETURN_IF_ERROR(pool_->Release(round, 0));
  MOE_RETURN_IF_ERROR(SyncCopies());
  std::this_thread::sleep_for(std::chrono::microseconds(20));
  return absl::OkStatus();
}

Status ExpertCacheRuntime::Predict(int engine_slot, std::vector<LayerPrediction> predictions) {
  EngineSlot& es = this->engine_slot(engine_slot);
  std::stable_sort(
      predictions.begin(), predictions.end(),
      [](const LayerPrediction& a, const LayerPrediction& b) { return a.depth < b.depth; });
  std::lock_guard<std::mutex> lock(mu_);
  MOE_RETURN_IF_ERROR(broken_);
  std::vector<experts::ExpertKey> keys;
  for (const LayerPrediction& p : predictions) {
    if (p.depth >= 2) {
      // Gated while this depth has been measured wrong too often (see prefetch_min_precision).
      if (!depth_gates_.at(static_cast<size_t>(p.depth - 1)).Allows()) {
        ++gated_predictions_;
        continue;
      }
    }
    for (const int32_t e : p.ranked) keys.push_back({p.layer, e});
  }
  const int32_t max_loads = options_.cache.prefetch_max_loads > 0
                                ? options_.cache.prefetch_max_loads
                                : static_cast<int32_t>(keys.size());
  // Stored under mu_ (OnRouted reads them under it too); only this engine slot's thread writes.
  for (LayerPrediction& p : predictions) es.predicted.push_back(std::move(p));
  if (keys.empty()) return absl::OkStatus();
  MOE_ASSIGN_OR_RETURN(std::vector<experts::PrefetchLoad> loads, pool_->Prefetch(keys, max_loads));
  return IssueLoadsLocked(loads);
}

ExpertCacheStats ExpertCacheRuntime::Stats() const {
  ExpertCacheStats s;
  s.counters = pool_->Counters();
  s.slots = pool_->SlotCount(0);
  s.slot_bytes = pool_->SlotBytes(0);
  s.host_tier = copier_->mode();
  s.packed_slots = options_.pack_slots;
  if (compressed_ != nullptr) {
    s.compressed_experts = compressed_->encoded();
    s.compressible_experts = compressed_->total();
    s.compression_done = compressed_->done();
    s.compression_seconds = compressed_->seconds();
    s.compression_ratio = s.compressed_experts > 0
                              ? static_cast<double>(compressed_->blob_bytes()) /
                                    (static_cast<double>(s.compressed_experts) *
                                     static_cast<double>(layout().slot_bytes))
                              : 0;
    const Status cs = compressed_->status();
    if (!cs.ok()) s.compression_error = std::string(cs.message());
  }
  s.compressed_loads = compressed_loads_.load();
  s.wire_bytes = wire_bytes_.load();
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.predicted = accuracy_.predicted();
    s.actual = accuracy_.actual();
    s.correct = accuracy_.correct();
    s.precision = accuracy_.Precision();
    s.recall = accuracy_.Recall();
    for (const experts::PredictionAccuracy& a : depth_accuracy_) {
      s.by_depth.push_back({a.predicted(), a.actual(), a.correct(), a.Precision(), a.Recall()});
    }
    s.gated_predictions = gated_predictions_;
  }
  s.copy_busy_ns = copy_busy_ns_.load();
  s.copy_batches = copy_batches_.load();
  // Read in the reverse order of the forward's increments (OnRouted counts the round trip, then
  // the hit and the rounds follow), so that a snapshot never shows more device hits than layer
  // forwards.
  s.device_hits = device_hits_.load();
  s.ready_first_rounds = ready_first_rounds_.load();
  s.rounds = rounds_.load();
  s.host_wait_ns = host_wait_ns_.load();
  s.host_round_trips = host_round_trips_.load();
  return s;
}

Status ExpertCacheRuntime::Quiesce() {
  MOE_RETURN_IF_ERROR(SyncCopies());
  for (auto& es : slots_) {
    for (int i = 0; i < kTimerRing; ++i) {
      if (es->wait_pending[i]) {
        CUDA_RETURN_IF_ERROR(cudaEventSynchronize(es->wait_events[i].second.get()));
      }
    }
    MOE_RETURN_IF_ERROR(PollWaitTimings(*es, /*drain_one=*/false));
  }
  std::lock_guard<std::mutex> lock(mu_);
  return PollLocked();
}

Status ExpertCacheRuntime::FlushTrace() {
  return trace_ != nullptr ? trace_->Flush() : absl::OkStatus();
}

}  // namespace moe::cuda
