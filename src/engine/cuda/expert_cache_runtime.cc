#include "engine/cuda/expert_cache_runtime.h"

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

#include "kernels/tile_heuristics.h"

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
  std::unique_ptr<ExpertCacheRuntime> rt(new ExpertCacheRuntime());
  rt->options_ = options;
  rt->spec_ = model->spec();
  const MoeSpec& spec = rt->spec_;
  ExpertCopierOptions co;
  co.device = options.device;
  co.register_host_memory = options.cache.register_host_memory;
  MOE_ASSIGN_OR_RETURN(rt->copier_, MakeExpertCopier(model, co));

  // The pool: one shape class (every MoE layer), slots of the copier's slot size.
  experts::ExpertSlotPool::Options po;
  po.budget_bytes = options.cache.budget_bytes;
  experts::ShapeClass cls = experts::ShapeClassForSpec(spec);
  cls.expert_bytes = rt->copier_->layout().slot_bytes;
  po.shape_classes.push_back(cls);
  po.eviction = options.cache.eviction;
  MOE_ASSIGN_OR_RETURN(rt->pool_, experts::ExpertSlotPool::Create(po));

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
  rt->max_tiles_ = MaxGroupedTiles(tm * k, static_cast<int>(e), kTileShapes[0].bm);
  rt->round_entry_bytes_ = AlignUp(3 * e * 8 + 16 + rt->max_tiles_ * 8, 256);
  rt->fence_rings_.resize(static_cast<size_t>(options.num_engine_slots));
  for (int s = 0; s < options.num_engine_slots; ++s) {
    auto es = std::make_unique<EngineSlot>();
    MOE_ASSIGN_OR_RETURN(es->offsets, PinnedBuffer::Create((e + 1) * 4));
    MOE_ASSIGN_OR_RETURN(es->la_ids, PinnedBuffer::Create(tm * k * 4));
    MOE_ASSIGN_OR_RETURN(es->la_weights, PinnedBuffer::Create(tm * k * 4));
    MOE_ASSIGN_OR_RETURN(es->la_logits, DeviceBuffer::Create(tm * nr * 4));
    MOE_ASSIGN_OR_RETURN(es->la_ids_dev, DeviceBuffer::Create(tm * k * 4));
    MOE_ASSIGN_OR_RETURN(es->la_weights_dev, DeviceBuffer::Create(tm * k * 4));
    MOE_ASSIGN_OR_RETURN(es->la_ranks, DeviceBuffer::Create(tm * k * 4));
    MOE_ASSIGN_OR_RETURN(es->la_counts, DeviceBuffer::Create(e * 4));
    rt->device_bytes_ += es->la_logits.bytes() + 3 * tm * k * 4 + e * 4;
    MOE_ASSIGN_OR_RETURN(es->routed, CreateEvent());
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
  if (!options.cache.trace_path.empty()) {
    experts::TraceRecorder::Options to;
    to.path = options.cache.trace_path;
    to.shape = {spec.n_layers, static_cast<int32_t>(e), static_cast<int32_t>(k)};
    MOE_ASSIGN_OR_RETURN(rt->trace_, experts::TraceRecorder::Create(to));
  }
  return rt;
}

ExpertCacheRuntime::~ExpertCacheRuntime() {
  if (copy_stream_) cudaStreamSynchronize(copy_stream_.get());
  if (trace_) trace_->Flush().IgnoreError();
}

char* ExpertCacheRuntime::SlotAddress(experts::SlotId slot) const {
  return class_buffers_[static_cast<size_t>(slot.shape_class)].as<char>() +
         int64_t{slot.index} * pool_->SlotBytes(slot.shape_class);
}

Status ExpertCacheRuntime::PollLocked() {
  MOE_RETURN_IF_ERROR(broken_);
  size_t kept = 0;
  for (const experts::SlotId slot : pending_loads_) {
    const cudaError_t q =
        cudaEventQuery(load_events_[static_cast<size_t>(SlotIndexFlat(slot))].get());
    if (q == cudaSuccess) {
      MOE_RETURN_IF_ERROR(pool_->MarkLoaded(slot));
    } else if (q == cudaErrorNotReady) {
      pending_loads_[kept++] = slot;
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
  if (es.batch < 0 || layer <= es.last_layer) es.batch = next_batch_++;
  es.last_layer = layer;
  MOE_RETURN_IF_ERROR(PollWaitTimings(es, /*drain_one=*/false));
  std::lock_guard<std::mutex> lock(mu_);
  MOE_RETURN_IF_ERROR(PollLocked());
  if (es.predicted_layer == layer) {
    accuracy_.Record(es.predicted, active);
    es.predicted_layer = -1;
  }
  if (trace_ != nullptr) {
    // Batches of different engine slots interleave; keep the file's numbers non-decreasing.
    trace_last_batch_ = std::max(trace_last_batch_, es.batch);
    MOE_RETURN_IF_ERROR(trace_->Record(trace_last_batch_, layer, active));
  }
  return absl::OkStatus();
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
    Status s = copier_->CopyAsync(l.key, SlotAddress(l.slot), cs);
    if (s.ok()) {
      const cudaError_t r =
          cudaEventRecord(load_events_[static_cast<size_t>(SlotIndexFlat(l.slot))].get(), cs);
      if (r != cudaSuccess) s = absl::InternalError(cudaGetErrorString(r));
    }
    if (!s.ok()) {
      // The slot stays "loading" in the pool with unknown contents: refuse all further work.
      broken_ = absl::InternalError(absl::StrCat("expert cache: copy of ", experts::ToString(l.key),
                                                 " failed: ", std::string(s.message())));
      return broken_;
    }
    pending_loads_.push_back(l.slot);
  }
  CUDA_RETURN_IF_ERROR(cudaEventRecord(copy_timers_[t].second.get(), cs));
  copy_timer_pending_[t] = 1;
  copy_batches_ += 1;
  return absl::OkStatus();
}

StatusOr<experts::AcquireRound> ExpertCacheRuntime::AcquireAndLoad(
    std::span<const experts::ExpertKey> keys) {
  const auto deadline = std::chrono::steady_clock::now() + kAcquireDeadline;
  for (int attempt = 0;; ++attempt) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      MOE_RETURN_IF_ERROR(PollLocked());
      StatusOr<experts::AcquireRound> round = pool_->Acquire(keys);
      if (round.ok()) {
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
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(copy_stream_.get()));
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
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(copy_stream_.get()));
  std::lock_guard<std::mutex> lock(mu_);
  MOE_RETURN_IF_ERROR(PollLocked());
  return loaded;
}

Status ExpertCacheRuntime::ReleaseUnused(const experts::AcquireRound& round) {
  MOE_RETURN_IF_ERROR(pool_->Release(round, 0));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(copy_stream_.get()));
  std::this_thread::sleep_for(std::chrono::microseconds(20));
  return absl::OkStatus();
}

Status ExpertCacheRuntime::Predict(int engine_slot, int32_t layer,
                                   std::span<const int32_t> ranked) {
  EngineSlot& es = this->engine_slot(engine_slot);
  es.predicted_layer = layer;
  es.predicted.assign(ranked.begin(), ranked.end());
  std::vector<experts::ExpertKey> keys;
  keys.reserve(ranked.size());
  for (const int32_t e : ranked) keys.push_back({layer, e});
  const int32_t max_loads = options_.cache.prefetch_max_loads > 0
                                ? options_.cache.prefetch_max_loads
                                : static_cast<int32_t>(keys.size());
  std::lock_guard<std::mutex> lock(mu_);
  MOE_RETURN_IF_ERROR(broken_);
  MOE_ASSIGN_OR_RETURN(std::vector<experts::PrefetchLoad> loads, pool_->Prefetch(keys, max_loads));
  return IssueLoadsLocked(loads);
}

ExpertCacheStats ExpertCacheRuntime::Stats() const {
  ExpertCacheStats s;
  s.counters = pool_->Counters();
  s.slots = pool_->SlotCount(0);
  s.slot_bytes = pool_->SlotBytes(0);
  s.host_tier = copier_->mode();
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.predicted = accuracy_.predicted();
    s.actual = accuracy_.actual();
    s.correct = accuracy_.correct();
    s.precision = accuracy_.Precision();
    s.recall = accuracy_.Recall();
  }
  s.copy_busy_ns = copy_busy_ns_.load();
  s.copy_batches = copy_batches_.load();
  s.host_round_trips = host_round_trips_.load();
  s.host_wait_ns = host_wait_ns_.load();
  s.rounds = rounds_.load();
  return s;
}

Status ExpertCacheRuntime::Quiesce() {
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(copy_stream_.get()));
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
