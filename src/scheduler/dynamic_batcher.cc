// The dynamic batching scheduler: request intake, the dispatcher thread, completion and drain.
// Batch execution on the workers lives in batch_task.cc.
#include "scheduler/dynamic_batcher.h"

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <system_error>

namespace moe {
namespace sched_internal {
namespace {

int KeyOf(int layer, DType dtype) { return layer * 16 + static_cast<int>(dtype); }

// Waits on `cv` until notified or `until` (steady clock); kNoDeadline waits without a timer.
void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, SteadyTime until) {
  if (until == kNoDeadline) {
    cv.wait(lock);
  } else {
    cv.wait_until(lock, until);
  }
}

}  // namespace

int64_t ChooseBatchTokens(int64_t available, const std::vector<int64_t>& preferred) {
  int64_t best = 0;
  for (int64_t p : preferred) {
    if (p > available) break;
    best = p;
  }
  return best > 0 ? best : available;
}

DynamicBatcher::DynamicBatcher(const SchedulerOptions& options, std::unique_ptr<Swarm> swarm)
    : options_(options),
      hidden_(options.engine->spec().hidden),
      top_k_(options.engine->spec().top_k()),
      swarm_(std::move(swarm)),
      scratch_(static_cast<size_t>(swarm_->num_workers())) {}

DynamicBatcher::~DynamicBatcher() {
  // Fails what is still queued (UNAVAILABLE), waits for running batches, joins every thread.
  (void)Shutdown(Now());
}

Status DynamicBatcher::Start() {
  try {
    dispatcher_ = std::thread([this] { DispatcherLoop(); });
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("scheduler '", options_.name, "': cannot start the dispatcher: ", e.what()));
  }
  return absl::OkStatus();
}

// ---- Intake ----

Status DynamicBatcher::ValidateRequest(const Request& r) const {
  if (!options_.engine->spec().IsMoeLayer(r.layer)) {
    return absl::NotFoundError(
        absl::StrCat("layer ", r.layer, " is not a MoE layer of this model"));
  }
  if (!IsComputeDType(r.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("dtype ", std::string(DTypeName(r.dtype)),
                                                   " is not supported; expected F32, F16 or BF16"));
  }
  if (r.n_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("n_tokens must be > 0, got ", r.n_tokens));
  }
  if (r.n_tokens > options_.max_queue_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("n_tokens ", r.n_tokens, " exceeds the scheduler's max_queue_tokens ",
                     options_.max_queue_tokens, "; split the request"));
  }
  const int p = static_cast<int>(r.priority);
  if (p < 0 || p >= kNumPriorities) {
    return absl::InvalidArgumentError(absl::StrCat("unknown priority ", p));
  }
  const bool owned = !r.input.empty();
  const bool borrowed = r.borrowed_input != nullptr;
  if (owned == borrowed) {
    return absl::InvalidArgumentError("give exactly one of input and borrowed_input");
  }
  const int64_t want = r.n_tokens * row_bytes(r.dtype);
  if (owned && static_cast<int64_t>(r.input.size()) != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("input has ", r.input.size(), " bytes; expected n_tokens ", r.n_tokens,
                     " x hidden ", hidden_, " x ", DTypeSize(r.dtype), " = ", want));
  }
  if (!r.done) return absl::InvalidArgumentError("a completion callback (done) is required");
  return absl::OkStatus();
}

Status DynamicBatcher::Refuse(RefusalReason reason, Status why, int64_t n_tokens) {
  if (options_.observer != nullptr) options_.observer->OnRefused(reason, n_tokens);
  return why;
}

int64_t DynamicBatcher::RetryHintMsLocked() const {
  if (tokens_per_us_ <= 0.0) return std::max<int64_t>(10, options_.max_queue_delay_us / 1000);
  const double us = static_cast<double>(queued_tokens_) /
                    (tokens_per_us_ * static_cast<double>(swarm_->num_workers()));
  return std::clamp<int64_t>(static_cast<int64_t>(std::ceil(us / 1000.0)), 1, 60000);
}

KeyQueue& DynamicBatcher::GetKeyLocked(int layer, DType dtype) {
  std::unique_ptr<KeyQueue>& slot = keys_[KeyOf(layer, dtype)];
  if (slot == nullptr) {
    slot = std::make_unique<KeyQueue>();
    slot->layer = layer;
    slot->dtype = dtype;
  }
  return *slot;
}

StatusOr<RequestId> DynamicBatcher::Submit(Request request) {
  const int64_t n = request.n_tokens;
  if (Status valid = ValidateRequest(request); !valid.ok()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++counters_.submitted;
      ++counters_.refused_invalid;
    }
    return Refuse(RefusalReason::kInvalid, std::move(valid), n);
  }
  const SteadyTime now = Now();
  if (request.deadline <= now) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++counters_.submitted;
      ++counters_.refused_invalid;
    }
    return Refuse(RefusalReason::kInvalid,
                  absl::DeadlineExceededError("the request's deadline had passed on arrival"), n);
  }

  // Build the state (and its output buffers) before taking the lock.
  auto r = std::make_unique<RequestState>();
  r->layer = request.layer;
  r->dtype = request.dtype;
  r->priority = request.priority;
  r->n_tokens = n;
  r->row_bytes = row_bytes(request.dtype);
  r->top_k = top_k_;
  r->want_routing = request.want_routing;
  r->submit_time = now;
  r->deadline = request.deadline;
  if (request.borrowed_input != nullptr) {
    r->input = static_cast<const std::byte*>(request.borrowed_input);
  } else {
    r->owned_input = std::move(request.input);
    r->input = reinterpret_cast<const std::byte*>(r->owned_input.data());
  }
  if (request.borrowed_output != nullptr) {
    r->output = static_cast<std::byte*>(request.borrowed_output);
  } else {
    r->response.output.resize(static_cast<size_t>(n * r->row_bytes));
    r->output = reinterpret_cast<std::byte*>(r->response.output.data());
  }
  if (request.want_routing) {
    r->response.expert_ids.resize(static_cast<size_t>(n * top_k_));
    r->response.expert_weights.resize(static_cast<size_t>(n * top_k_));
    r->expert_ids = r->response.expert_ids.data();
    r->expert_weights = r->response.expert_weights.data();
  }
  r->done = std::move(request.done);

  Status refusal;
  RefusalReason reason = RefusalReason::kInvalid;
  RequestId id = 0;
  Batches batches;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++counters_.submitted;
    if (shutting_down_) {
      ++counters_.refused_shutting_down;
      reason = RefusalReason::kShuttingDown;
      refusal = absl::UnavailableError(absl::StrCat(
          "scheduler '", options_.name, "' is shutting down; retry on another replica"));
    } else if (queued_tokens_ + n > options_.max_queue_tokens) {
      ++counters_.refused_queue_full;
      reason = RefusalReason::kQueueFull;
      refusal = absl::ResourceExhaustedError(
          absl::StrCat("scheduler queue full: ", queued_tokens_, " tokens queued + ", n,
                       " requested > max_queue_tokens ", options_.max_queue_tokens,
                       "; retry after ~", RetryHintMsLocked(), " ms"));
    } else {
      id = next_id_++;
      r->id = id;
      KeyQueue& k = GetKeyLocked(r->layer, r->dtype);
      r->key = &k;
      const bool was_empty = k.requests == 0;
      const bool was_full = k.tokens >= options_.max_batch_tokens;
      const int p = static_cast<int>(r->priority);
      k.lists[p].PushBack(r.get());
      k.tokens += n;
      ++k.requests;
      if (k.active_index < 0) {
        k.active_index = static_cast<int>(active_.size());
        active_.push_back(&k);
      }
      queued_tokens_ += n;
      queued_tokens_by_priority_[p] += n;
      ++queued_requests_;
      ++counters_.accepted;
      const SteadyTime deadline = r->deadline;
      const bool wake_deadline = deadline < next_wake_;
      live_.emplace(id, std::move(r));
      if (deadline != kNoDeadline) {
        deadlines_.emplace(deadline, id);
        // Compaction rebuilds from live_, so it must run after the request is in live_.
        if (deadlines_.size() > 1024 &&
            deadlines_.size() > 2 * static_cast<size_t>(queued_requests_)) {
          CompactDeadlinesLocked();
        }
      }
      // Fast path: with a worker free and this key ready (full, or no batching delay), form the
      // batch here instead of waking the dispatcher (one thread hand-off less at low load). Only
      // when no expiry is pending, so batches never take requests past their deadline.
      if (deadlines_.empty() || deadlines_.top().first > now) FormReadyBatchesLocked(now, &batches);
      // Wake the dispatcher only when this arrival changes its plan and tokens are left: a new
      // timer (first request of the key), a batch that just became full, or an earlier deadline
      // than it sleeps to.
      const bool wake =
          k.requests > 0 &&
          (was_empty || (!was_full && k.tokens >= options_.max_batch_tokens) || wake_deadline);
      if (wake) dispatcher_cv_.notify_one();
    }
  }
  if (!refusal.ok()) return Refuse(reason, std::move(refusal), n);
  // Never refused here: Shutdown() stops the swarm only after these batches have finished.
  Dispatch(batches, nullptr);
  return id;
}

bool DynamicBatcher::Cancel(RequestId id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(id);
  if (it == live_.end() || !it->second->queued) return false;
  DropLocked(it->second.get(), absl::CancelledError("request cancelled"),
             RequestOutcome::kCancelled, Now(), &orphans_);
  dispatcher_cv_.notify_one();  // it runs the callbacks in orphans_
  return true;
}

// ---- Queue bookkeeping ----

void DynamicBatcher::UnqueueLocked(RequestState* r) {
  KeyQueue& k = *r->key;
  const int p = static_cast<int>(r->priority);
  const int64_t rest = r->remaining_tokens();
  k.lists[p].Remove(r);
  k.tokens -= rest;
  --k.requests;
  queued_tokens_ -= rest;
  queued_tokens_by_priority_[p] -= rest;
  --queued_requests_;
  r->queued = false;
  if (k.requests == 0) {
    // Swap-remove from active_.
    KeyQueue* last = active_.back();
    active_[static_cast<size_t>(k.active_index)] = last;
    last->active_index = k.active_index;
    active_.pop_back();
    k.active_index = -1;
  }
}

void DynamicBatcher::DropLocked(RequestState* r, const Status& why, RequestOutcome outcome,
                                SteadyTime now, Completions* out) {
  if (r->status.ok()) {
    r->status = why;
    r->outcome = outcome;
  }
  if (r->queue_us < 0) r->queue_us = MicrosBetween(r->submit_time, now);
  if (!r->queued) return;
  UnqueueLocked(r);
  ReleasePartLocked(r, out);  // the queue's part
}

void DynamicBatcher::ReleasePartLocked(RequestState* r, Completions* out) {
  if (--r->parts > 0) return;
  switch (r->outcome) {
    case RequestOutcome::kOk:
      ++counters_.completed_ok;
      break;
    case RequestOutcome::kFailed:
      ++counters_.failed;
      break;
    case RequestOutcome::kExpired:
      ++counters_.expired;
      break;
    case RequestOutcome::kCancelled:
      ++counters_.cancelled;
      break;
    case RequestOutcome::kShutdown:
      ++counters_.shutdown_failed;
      break;
  }
  auto it = live_.find(r->id);
  out->push_back(std::move(it->second));
  live_.erase(it);
  ++completing_;
}

void DynamicBatcher::ExpireLocked(SteadyTime now, Completions* out) {
  while (!deadlines_.empty() && deadlines_.top().first <= now) {
    const RequestId id = deadlines_.top().second;
    deadlines_.pop();
    auto it = live_.find(id);
    if (it == live_.end() || !it->second->queued) continue;  // done, or fully batched
    DropLocked(it->second.get(),
               absl::DeadlineExceededError("deadline passed while the request was queued"),
               RequestOutcome::kExpired, now, out);
  }
}

void DynamicBatcher::CompactDeadlinesLocked() {
  // Entries of requests no longer queued are dead weight until their deadline; with long
  // deadlines at a high rate they would pile up. Rebuild from the queued requests (amortised:
  // only when at least half the entries are dead).
  std::vector<DeadlineEntry> keep;
  keep.reserve(static_cast<size_t>(queued_requests_));
  for (const auto& [id, r] : live_) {
    if (r->queued && r->deadline != kNoDeadline) keep.emplace_back(r->deadline, id);
  }
  deadlines_ = decltype(deadlines_)(std::greater<DeadlineEntry>(), std::move(keep));
}

void DynamicBatcher::FailAllQueuedLocked(const Status& why, Completions* out) {
  const SteadyTime now = Now();
  while (!active_.empty()) {
    KeyQueue& k = *active_.back();
    for (RequestList& l : k.lists) {
      while (!l.empty()) DropLocked(l.front(), why, RequestOutcome::kShutdown, now, out);
    }
  }
}

// ---- Batch formation ----

bool DynamicBatcher::IsReadyLocked(const KeyQueue& k, SteadyTime now) const {
  if (k.tokens >= options_.max_batch_tokens || shutting_down_) return true;
  return k.Oldest() + std::chrono::microseconds(options_.max_queue_delay_us) <= now;
}

KeyQueue* DynamicBatcher::PickReadyKeyLocked(SteadyTime now) {
  KeyQueue* best = nullptr;
  int best_level = kNumPriorities;
  SteadyTime best_oldest = SteadyTime::max();
  for (KeyQueue* k : active_) {
    if (!IsReadyLocked(*k, now)) continue;
    const int level = k->BestLevel();
    const SteadyTime oldest = k->lists[level].front()->submit_time;
    if (level < best_level || (level == best_level && oldest < best_oldest)) {
      best = k;
      best_level = level;
      best_oldest = oldest;
    }
  }
  return best;
}

std::unique_ptr<BatchTask> DynamicBatcher::FormBatchLocked(KeyQueue& k, SteadyTime now) {
  const int64_t size = ChooseBatchTokens(std::min(k.tokens, options_.max_batch_tokens),
                                         options_.preferred_batch_tokens);
  auto batch = std::make_unique<BatchTask>(this, k.layer, k.dtype);
  batch->formed_time = now;
  int64_t left = size;
  for (int p = 0; p < kNumPriorities && left > 0; ++p) {
    RequestList& list = k.lists[p];
    while (left > 0 && !list.empty()) {
      RequestState* r = list.front();
      const int64_t take = std::min(left, r->remaining_tokens());
      batch->AddSegment(Segment{r, r->next_token, take, size - left});
      r->next_token += take;
      left -= take;
      k.tokens -= take;
      queued_tokens_ -= take;
      queued_tokens_by_priority_[p] -= take;
      ++r->parts;  // this segment's part
      if (r->batches++ == 0) {
        r->queue_us = MicrosBetween(r->submit_time, now);
      } else if (r->batches == 2) {
        ++counters_.split_requests;
      }
      if (r->remaining_tokens() == 0) {
        UnqueueLocked(r);
        --r->parts;  // the queue's part; the segment still holds the request
      }
    }
  }
  ++inflight_batches_;
  inflight_tokens_ += size;
  ++counters_.batches_formed;
  counters_.batched_tokens += size;
  return batch;
}

void DynamicBatcher::FormReadyBatchesLocked(SteadyTime now, Batches* out) {
  while (inflight_batches_ < options_.max_inflight_batches) {
    KeyQueue* k = PickReadyKeyLocked(now);
    if (k == nullptr) break;
    out->push_back(FormBatchLocked(*k, now));
  }
}

void DynamicBatcher::Dispatch(Batches& batches, Swarm::Producer* producer) {
  for (auto& b : batches) {
    if (options_.observer != nullptr) {
      options_.observer->OnBatchFormed(b->layer(), b->dtype(), b->n_tokens(),
                                       static_cast<int>(b->segments().size()));
    }
    // On refusal the swarm calls b->Abandon(), which fails the batch's requests.
    if (producer != nullptr) {
      (void)swarm_->Submit(*producer, std::move(b));
    } else {
      (void)swarm_->Submit(std::move(b));
    }
  }
  batches.clear();
}

SteadyTime DynamicBatcher::NextWakeLocked(SteadyTime now) const {
  SteadyTime wake = deadlines_.empty() ? kNoDeadline : deadlines_.top().first;
  if (inflight_batches_ < options_.max_inflight_batches) {
    const auto delay = std::chrono::microseconds(options_.max_queue_delay_us);
    for (const KeyQueue* k : active_) wake = std::min(wake, k->Oldest() + delay);
  }
  return wake;
}

void DynamicBatcher::DispatcherLoop() {
  {
    std::string thread_name = absl::StrCat(options_.name, "-disp").substr(0, 15);
    pthread_setname_np(pthread_self(), thread_name.c_str());
  }
  Swarm::Producer producer(*swarm_);
  Completions done;
  Batches batches;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    next_wake_ = SteadyTime::min();  // awake: arrivals need not signal
    const SteadyTime now = Now();
    ExpireLocked(now, &done);
    for (auto& r : orphans_) done.push_back(std::move(r));
    orphans_.clear();
    FormReadyBatchesLocked(now, &batches);
    if (!batches.empty() || !done.empty()) {
      lock.unlock();
      Dispatch(batches, &producer);
      Complete(done);
      done.clear();
      lock.lock();
      continue;
    }
    if (stop_dispatcher_) break;
    next_wake_ = NextWakeLocked(now);
    WaitUntil(dispatcher_cv_, lock, next_wake_);
  }
}

// ---- Completion ----

void DynamicBatcher::OnBatchDone(BatchTask& batch, int worker, const Status& status,
                                 const BatchRecord& record) {
  Completions done;
  Batches next;
  {
    std::lock_guard<std::mutex> lock(mu_);
    --inflight_batches_;
    inflight_tokens_ -= batch.n_tokens();
    if (status.ok() && record.compute_us > 0) {
      const double rate =
          static_cast<double>(batch.n_tokens()) / static_cast<double>(record.compute_us);
      tokens_per_us_ = tokens_per_us_ <= 0.0 ? rate : 0.8 * tokens_per_us_ + 0.2 * rate;
    }
    const SteadyTime now = Now();
    for (const Segment& s : batch.segments()) {
      RequestState* r = s.request;
      // A failed piece fails the whole request; its unbatched rest is never computed.
      if (!status.ok()) DropLocked(r, status, RequestOutcome::kFailed, now, &done);
      ReleasePartLocked(r, &done);
    }
    // The worker forms the next batch itself (as Submit()'s fast path does): under load the
    // dispatcher is left with timers, expiries and cancellations. Not while an expiry is pending.
    if (worker >= 0 && (deadlines_.empty() || deadlines_.top().first > now)) {
      FormReadyBatchesLocked(now, &next);
    }
    if (!orphans_.empty() ||
        (queued_tokens_ > 0 && inflight_batches_ < options_.max_inflight_batches)) {
      dispatcher_cv_.notify_one();
    }
    if (DrainedLocked()) drained_cv_.notify_all();
  }
  Dispatch(next, nullptr);  // before the callbacks: the next batch starts sooner
  if (options_.observer != nullptr) options_.observer->OnBatchDone(record);
  Complete(done);
}

void DynamicBatcher::Complete(Completions& done) {
  if (done.empty()) return;
  const SteadyTime now = Now();
  for (auto& r : done) {
    Response& resp = r->response;
    resp.status = r->status;
    resp.total_us = MicrosBetween(r->submit_time, now);
    resp.queue_us = r->queue_us >= 0 ? r->queue_us : resp.total_us;
    resp.batches = r->batches;
    if (!resp.status.ok()) {
      resp.output.clear();
      resp.expert_ids.clear();
      resp.expert_weights.clear();
    }
    if (options_.observer != nullptr) {
      RequestRecord rec;
      rec.layer = r->layer;
      rec.dtype = r->dtype;
      rec.priority = r->priority;
      rec.n_tokens = r->n_tokens;
      rec.outcome = r->outcome;
      rec.queue_us = resp.queue_us;
      rec.total_us = resp.total_us;
      rec.batches = r->batches;
      options_.observer->OnRequestDone(rec);
    }
    r->done(std::move(resp));
    r.reset();  // frees the owned input and buffers
  }
  std::lock_guard<std::mutex> lock(mu_);
  completing_ -= static_cast<int64_t>(done.size());
  if (DrainedLocked()) drained_cv_.notify_all();
}

// ---- Shutdown and stats ----

Status DynamicBatcher::Shutdown(SteadyTime deadline) {
  std::lock_guard<std::mutex> serial(shutdown_mu_);
  std::unique_lock<std::mutex> lock(mu_);
  if (joined_) return shutdown_status_;
  shutting_down_ = true;  // refuse new work; every key is now ready
  dispatcher_cv_.notify_one();
  int64_t failed = 0;
  bool timed_out = false;
  while (!DrainedLocked()) {
    if (!timed_out && Now() >= deadline) {
      timed_out = true;
      const size_t before = orphans_.size();
      FailAllQueuedLocked(
          absl::UnavailableError(absl::StrCat("scheduler '", options_.name,
                                              "' shut down before the request was computed")),
          &orphans_);
      failed = static_cast<int64_t>(orphans_.size() - before);
      dispatcher_cv_.notify_one();
      continue;
    }
    WaitUntil(drained_cv_, lock, timed_out ? kNoDeadline : deadline);
  }
  stop_dispatcher_ = true;
  dispatcher_cv_.notify_one();
  lock.unlock();
  if (dispatcher_.joinable()) dispatcher_.join();
  swarm_->Stop(StopMode::kDrain);
  lock.lock();
  joined_ = true;
  shutdown_status_ = timed_out ? absl::DeadlineExceededError(absl::StrCat(
                                     "shutdown deadline passed; ", failed,
                                     " queued requests were completed with UNAVAILABLE"))
                               : absl::OkStatus();
  return shutdown_status_;
}

SchedulerStats DynamicBatcher::Stats() const {
  SchedulerStats s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s = counters_;
    s.queued_requests = queued_requests_;
    s.queued_tokens = queued_tokens_;
    for (int p = 0; p < kNumPriorities; ++p)
      s.queued_tokens_by_priority[p] = queued_tokens_by_priority_[p];
    s.inflight_batches = inflight_batches_;
    s.inflight_tokens = inflight_tokens_;
    s.live_requests = static_cast<int64_t>(live_.size());
    s.shutting_down = shutting_down_;
  }
  s.swarm = swarm_->Stats();
  return s;
}

}  // namespace sched_internal

// ---- Factory ----

StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(const SchedulerOptions& in) {
  SchedulerOptions o = in;
  if (o.engine == nullptr) return absl::InvalidArgumentError("SchedulerOptions.engine is required");
  Engine& e = *o.engine;
  if (e.num_slots() < 1) {
    return absl::InvalidArgumentError(absl::StrCat("engine has ", e.num_slots(), " slots"));
  }
  if (e.spec().hidden < 1 || e.spec().top_k() < 1) {
    return absl::InvalidArgumentError("engine spec needs hidden >= 1 and top_k >= 1");
  }
  if (o.max_batch_tokens == 0) o.max_batch_tokens = e.max_batch_tokens();
  if (o.max_batch_tokens < 1 || o.max_batch_tokens > e.max_batch_tokens()) {
    return absl::InvalidArgumentError(
        absl::StrCat("SchedulerOptions.max_batch_tokens ", o.max_batch_tokens,
                     " must be in [1, engine max_batch_tokens ", e.max_batch_tokens(), "]"));
  }
  if (o.max_queue_delay_us < 0) {
    return absl::InvalidArgumentError("SchedulerOptions.max_queue_delay_us must be >= 0");
  }
  std::sort(o.preferred_batch_tokens.begin(), o.preferred_batch_tokens.end());
  o.preferred_batch_tokens.erase(
      std::unique(o.preferred_batch_tokens.begin(), o.preferred_batch_tokens.end()),
      o.preferred_batch_tokens.end());
  for (int64_t p : o.preferred_batch_tokens) {
    if (p < 1 || p > o.max_batch_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("SchedulerOptions.preferred_batch_tokens: ", p,
                                                     " is not in [1, ", o.max_batch_tokens, "]"));
    }
  }
  if (o.max_queue_tokens == 0) o.max_queue_tokens = 64 * o.max_batch_tokens;
  if (o.max_queue_tokens < 1) {
    return absl::InvalidArgumentError("SchedulerOptions.max_queue_tokens must be >= 1");
  }
  if (o.max_inflight_batches == 0) o.max_inflight_batches = e.num_slots();
  if (o.max_inflight_batches < 1) {
    return absl::InvalidArgumentError("SchedulerOptions.max_inflight_batches must be >= 1");
  }
  SwarmOptions so;
  so.num_workers = e.num_slots();
  so.name = o.name;
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Swarm> swarm, Swarm::Create(so));
  auto batcher = std::make_unique<sched_internal::DynamicBatcher>(o, std::move(swarm));
  MOE_RETURN_IF_ERROR(batcher->Start());
  return std::unique_ptr<Scheduler>(std::move(batcher));
}

}  // namespace moe
