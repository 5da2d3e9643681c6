// The worker swarm: one shared lock-free MPMC queue, one thread per engine slot.
#include "moe/swarm/swarm.h"

#include <pthread.h>

#include <chrono>
#include <system_error>
#include <utility>

#include "concurrentqueue/blockingconcurrentqueue.h"

// NOTES: moodycamel orders its slots and recycles its blocks with std::atomic_thread_fence, which
// ThreadSanitizer does not model, so TSan reports false races inside the queue (the maintainer's
// word: cameron314/concurrentqueue issues #49 and #62). Under TSan we therefore
//   1. state the one happens-before edge we rely on (everything the producer wrote into a task
//      happens before the worker runs it) on the task pointer itself, so TSan checks our code and
//      the tasks against that edge, and
//   2. suppress reports whose racing accesses are inside moodycamel's own code (its block memory);
//      reports about our memory have no moodycamel frame and still fire.
#if defined(__SANITIZE_THREAD__)
#define MOE_SWARM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MOE_SWARM_TSAN 1
#endif
#endif
#ifdef MOE_SWARM_TSAN
#include <sanitizer/tsan_interface.h>
#define MOE_SWARM_PUBLISH(p) __tsan_release(p)
#define MOE_SWARM_RECEIVE(p) __tsan_acquire(p)
// TSan reads these suppressions at start-up in every binary that links the swarm.
extern "C" const char* __tsan_default_suppressions() { return "race:moodycamel::\n"; }
#else
#define MOE_SWARM_PUBLISH(p) ((void)(p))
#define MOE_SWARM_RECEIVE(p) ((void)(p))
#endif

namespace moe {

struct Swarm::Queue {
  moodycamel::BlockingConcurrentQueue<SwarmTask*> q;
};

struct Swarm::Producer::Token {
  explicit Token(Swarm::Queue& queue) : token(queue.q) {}
  moodycamel::ProducerToken token;
};

Swarm::Producer::Producer(Swarm& swarm) : token_(std::make_unique<Token>(*swarm.queue_)) {}
Swarm::Producer::~Producer() = default;

namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

StatusOr<std::unique_ptr<Swarm>> Swarm::Create(const SwarmOptions& options) {
  if (options.num_workers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("swarm needs num_workers >= 1, got ", options.num_workers));
  }
  if (options.idle_poll_us < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("swarm needs idle_poll_us >= 1, got ", options.idle_poll_us));
  }
  std::unique_ptr<Swarm> swarm(new Swarm(options));
  swarm->workers_.reserve(static_cast<size_t>(options.num_workers));
  for (int i = 0; i < options.num_workers; ++i) {
    swarm->workers_.push_back(std::make_unique<Worker>());
  }
  for (int i = 0; i < options.num_workers; ++i) {
    try {
      swarm->workers_[static_cast<size_t>(i)]->thread =
          std::thread([s = swarm.get(), i] { s->WorkerLoop(i); });
    } catch (const std::system_error& e) {
      // Threads already started are joined by the destructor (Stop(kDrain) on an empty queue).
      return absl::ResourceExhaustedError(
          absl::StrCat("swarm '", options.name, "': cannot start worker ", i, ": ", e.what()));
    }
  }
  return swarm;
}

Swarm::Swarm(const SwarmOptions& options) : options_(options), queue_(std::make_unique<Queue>()) {}

Swarm::~Swarm() { Stop(StopMode::kDrain); }

Status Swarm::Submit(std::unique_ptr<SwarmTask> task) {
  return SubmitImpl(nullptr, std::move(task));
}

Status Swarm::Submit(Producer& producer, std::unique_ptr<SwarmTask> task) {
  return SubmitImpl(&producer, std::move(task));
}

Status Swarm::SubmitImpl(Producer* producer, std::unique_ptr<SwarmTask> task) {
  if (task == nullptr) return absl::InvalidArgumentError("Swarm::Submit: null task");
  // `submitting_` is raised before `closed_` is read (both seq_cst), so Stop(), which sets closed_
  // and then waits for submitting_ == 0, never misses a task that passed the check.
  auto refuse = [&](Status why) {
    submitting_.fetch_sub(1);
    refused_.fetch_add(1, std::memory_order_relaxed);
    task->Abandon(why);
    return why;
  };
  submitting_.fetch_add(1);
  if (closed_.load()) {
    return refuse(absl::UnavailableError(
        absl::StrCat("swarm '", options_.name, "' is stopping; task not accepted")));
  }
  queued_.fetch_add(1);
  SwarmTask* raw = task.get();
  MOE_SWARM_PUBLISH(raw);
  const bool ok = producer != nullptr ? queue_->q.enqueue(producer->token_->token, raw)
                                      : queue_->q.enqueue(raw);
  if (!ok) {
    queued_.fetch_sub(1);
    return refuse(absl::ResourceExhaustedError(
        absl::StrCat("swarm '", options_.name, "': queue allocation failed")));
  }
  task.release();  // owned by the queue now
  submitted_.fetch_add(1, std::memory_order_relaxed);
  submitting_.fetch_sub(1);
  return absl::OkStatus();
}

bool Swarm::Finished() const {
  return closed_.load() && submitting_.load() == 0 && queued_.load() == 0;
}

void Swarm::WorkerLoop(int index) {
  Worker& w = *workers_[static_cast<size_t>(index)];
  {
    std::string thread_name = absl::StrCat(options_.name, "-", index).substr(0, 15);
    pthread_setname_np(pthread_self(), thread_name.c_str());
  }
  moodycamel::ConsumerToken consumer(queue_->q);
  for (;;) {
    SwarmTask* item = nullptr;
    if (!queue_->q.wait_dequeue_timed(consumer, item, options_.idle_poll_us) || item == nullptr) {
      // A timeout or a wake-up from Stop(): leave once nothing can arrive any more.
      if (Finished()) break;
      continue;
    }
    MOE_SWARM_RECEIVE(item);
    queued_.fetch_sub(1);
    w.received.fetch_add(1, std::memory_order_relaxed);
    std::unique_ptr<SwarmTask> task(item);
    if (abandon_.load()) {
      task->Abandon(absl::UnavailableError(
          absl::StrCat("swarm '", options_.name, "' stopped before the task started")));
      w.abandoned.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    w.busy.store(true, std::memory_order_relaxed);
    const int64_t start_ns = NowNs();
    task->Run(index);
    task.reset();
    w.busy_ns.fetch_add(NowNs() - start_ns, std::memory_order_relaxed);
    w.busy.store(false, std::memory_order_relaxed);
    w.completed.fetch_add(1, std::memory_order_relaxed);
  }
  // Chain the wake-up: the next sleeping worker sees Finished() at once instead of at its poll.
  queue_->q.enqueue(nullptr);
}

void Swarm::Stop(StopMode mode) {
  std::lock_guard<std::mutex> lock(stop_mu_);
  if (joined_) return;
  if (mode == StopMode::kAbandon) abandon_.store(true);
  closed_.store(true);
  // Wait for Submit() calls that passed their closed_ check before it was set; they finish with
  // one enqueue, so this spin is short.
  while (submitting_.load() != 0) std::this_thread::yield();
  for (size_t i = 0; i < workers_.size(); ++i) queue_->q.enqueue(nullptr);  // wake-ups
  for (auto& w : workers_) {
    if (w->thread.joinable()) w->thread.join();
  }
  // Workers leave only when queued_ == 0, so this finds wake-ups only; kept as a guard so no task
  // could ever be dropped without Run() or Abandon().
  SwarmTask* item = nullptr;
  while (queue_->q.try_dequeue(item)) {
    if (item == nullptr) continue;
    MOE_SWARM_RECEIVE(item);
    queued_.fetch_sub(1);
    std::unique_ptr<SwarmTask> task(item);
    task->Abandon(absl::UnavailableError(
        absl::StrCat("swarm '", options_.name, "' stopped before the task started")));
  }
  joined_ = true;
}

SwarmStats Swarm::Stats() const {
  SwarmStats s;
  s.submitted = submitted_.load(std::memory_order_relaxed);
  s.refused = refused_.load(std::memory_order_relaxed);
  s.queued = queued_.load(std::memory_order_relaxed);
  s.workers.reserve(workers_.size());
  for (const auto& w : workers_) {
    WorkerStats ws;
    ws.received = w->received.load(std::memory_order_relaxed);
    ws.completed = w->completed.load(std::memory_order_relaxed);
    ws.abandoned = w->abandoned.load(std::memory_order_relaxed);
    ws.busy_ns = w->busy_ns.load(std::memory_order_relaxed);
    ws.busy = w->busy.load(std::memory_order_relaxed);
    if (ws.busy) ++s.busy_workers;
    s.workers.push_back(ws);
  }
  return s;
}

}  // namespace moe
