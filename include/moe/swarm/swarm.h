// The worker swarm: a fixed pool of worker threads, one per engine slot (one per GPU stream on the
// CUDA engine, one per CPU slot on the CPU engine), that take tasks from one lock-free queue and
// run them. The dynamic batching scheduler (moe/scheduler/scheduler.h) feeds it one task per batch;
// nothing in here knows about batches, so tests drive it with plain messages.
//
// Queue layout (a choice, see NOTES below): ONE shared multi-producer / multi-consumer queue
// (moodycamel::BlockingConcurrentQueue), each worker dequeuing through its own ConsumerToken and
// each long-lived producer enqueuing through a ProducerToken.
//
// NOTES: why one shared queue and not one queue per worker:
//   - Work conservation: a task is taken by whichever worker frees up first. With per-worker queues
//     the producer has to guess which worker will be free; a wrong guess leaves a batch waiting
//     behind a long one while another worker (GPU stream) idles.
//   - Slot affinity is not lost: the engine slot is the *worker's* identity (worker i always calls
//     Forward with slot = i, so a GPU stream and its workspaces stay with one thread), not the
//     task's.
//   - Ordering: moodycamel keeps FIFO order per producer token; the scheduler is the only producer
//     in serving, so batches start in the order they were formed.
//   The scheduler limits the number of tasks in flight to the number of workers, so the shared
//   queue stays short and priorities are decided in the scheduler, not in this queue.
//
// Thread safety: every public method is safe to call from any thread. Tasks run on worker
// threads; a task must not call Stop() of the swarm that runs it (it would wait for itself).
//
// Life cycle: Create() starts the workers. Submit() enqueues without blocking (the queue grows;
// it never waits for a worker). Stop() closes the queue and either lets every queued task run
// (StopMode::kDrain) or hands each one that has not started to Abandon() (StopMode::kAbandon);
// either way every task accepted by Submit() gets exactly one of Run() or Abandon(). The
// destructor calls Stop(StopMode::kDrain) if Stop() was not called.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "moe/common/status.h"

namespace moe {

// One unit of work for the swarm. Owned by the swarm from a successful Submit() until Run() or
// Abandon() returns; then destroyed on the thread that called it.
class SwarmTask {
 public:
  virtual ~SwarmTask() = default;
  // Runs the task on worker `worker` (in [0, num_workers); the engine slot of that worker).
  // Must not block on anything but its own compute; must not throw.
  virtual void Run(int worker) = 0;
  // Called instead of Run() when the task will never run: Submit() refused it (on the submitting
  // thread), or the swarm was stopped with StopMode::kAbandon before it started (on a worker or
  // the thread calling Stop()). `why` says which (UNAVAILABLE or RESOURCE_EXHAUSTED).
  virtual void Abandon(const Status& why) = 0;
};

struct SwarmOptions {
  int num_workers = 1;         // >= 1; worker i is engine slot i
  std::string name = "swarm";  // used in thread names ("<name>-<i>", truncated to 15 chars)
  // How long an idle worker sleeps before re-checking for stop; only bounds shutdown latency in
  // a corner case (stop wake-ups are explicit), never the latency of a task.
  int64_t idle_poll_us = 20000;
};

enum class StopMode : uint8_t {
  kDrain,    // queued tasks still run; Stop() returns when the queue is empty and workers joined
  kAbandon,  // queued tasks that have not started get Abandon(UNAVAILABLE); running ones finish
};

// Counters of one worker. `received` counts tasks dequeued (messages received); `completed` those
// whose Run() returned; `abandoned` those handed to Abandon() by this worker.
struct WorkerStats {
  int64_t received = 0;
  int64_t completed = 0;
  int64_t abandoned = 0;
  int64_t busy_ns = 0;  // total time spent inside Run()
  bool busy = false;    // inside Run() at the time of the snapshot
};

// A snapshot; counters are read one by one with relaxed loads, so under load the fields may be
// a few events apart from each other (fine for metrics; tests read them after Stop()).
struct SwarmStats {
  int64_t submitted = 0;             // tasks accepted by Submit() (messages sent to the swarm)
  int64_t refused = 0;               // Submit() calls refused because the swarm was stopping
  int64_t queued = 0;                // accepted and not yet dequeued by a worker (queue length)
  int busy_workers = 0;              // workers inside Run()
  std::vector<WorkerStats> workers;  // [num_workers]
};

class Swarm {
 public:
  // Starts `options.num_workers` threads. INVALID_ARGUMENT for num_workers < 1;
  // RESOURCE_EXHAUSTED if a thread cannot be started.
  static StatusOr<std::unique_ptr<Swarm>> Create(const SwarmOptions& options);

  ~Swarm();
  Swarm(const Swarm&) = delete;
  Swarm& operator=(const Swarm&) = delete;

  // A producer's handle: a thread that submits many tasks (the scheduler's dispatcher) keeps one
  // and passes it to Submit() for FIFO order among its tasks and a faster enqueue (a moodycamel
  // ProducerToken). Not thread-safe itself: one producer thread at a time. Must be destroyed
  // before the Swarm.
  class Producer {
   public:
    explicit Producer(Swarm& swarm);
    ~Producer();
    Producer(const Producer&) = delete;
    Producer& operator=(const Producer&) = delete;

   private:
    friend class Swarm;
    struct Token;
    std::unique_ptr<Token> token_;
  };

  // Enqueues `task`; never blocks on a worker. The swarm takes ownership in every case and calls
  // exactly one of Run() / Abandon() on it:
  //   OK: the task was queued; a worker will Run() it (or Abandon() it under StopMode::kAbandon).
  //   UNAVAILABLE: Stop() has begun; task->Abandon(UNAVAILABLE) was called on this thread before
  //     returning (so the caller must not hold a lock that Abandon() takes).
  //   RESOURCE_EXHAUSTED: the queue could not allocate; task->Abandon() called likewise.
  //   INVALID_ARGUMENT: `task` is null.
  Status Submit(std::unique_ptr<SwarmTask> task);
  Status Submit(Producer& producer, std::unique_ptr<SwarmTask> task);

  // Closes the queue (later Submit() calls fail with UNAVAILABLE), then drains or abandons the
  // queued tasks according to `mode`, waits for running tasks and joins the workers. Idempotent;
  // concurrent callers all return after the workers are joined. Must not be called from a task.
  void Stop(StopMode mode);

  int num_workers() const { return static_cast<int>(workers_.size()); }
  // Tasks accepted and not yet dequeued (exact, not moodycamel's size_approx()).
  int64_t queued() const { return queued_.load(std::memory_order_relaxed); }
  SwarmStats Stats() const;

 private:
  // Per-worker counters, written only by their worker (relaxed atomics so Stats() can read them).
  struct Worker {
    std::thread thread;
    std::atomic<int64_t> received{0};
    std::atomic<int64_t> completed{0};
    std::atomic<int64_t> abandoned{0};
    std::atomic<int64_t> busy_ns{0};
    std::atomic<bool> busy{false};
  };

  explicit Swarm(const SwarmOptions& options);
  Status SubmitImpl(Producer* producer, std::unique_ptr<SwarmTask> task);
  void WorkerLoop(int index);
  // True when the queue is closed and every accepted task has been dequeued.
  bool Finished() const;

  const SwarmOptions options_;
  // The moodycamel queue, kept out of this header (swarm.cc is the only user of moodycamel).
  // Items are raw pointers owned by the queue; a nullptr is a wake-up, not a task.
  struct Queue;
  std::unique_ptr<Queue> queue_;
  std::vector<std::unique_ptr<Worker>> workers_;

  std::atomic<bool> closed_{false};     // set once by Stop(); Submit() refuses afterwards
  std::atomic<bool> abandon_{false};    // StopMode::kAbandon was asked for
  std::atomic<int64_t> submitting_{0};  // Submit() calls between their closed_ check and enqueue
  std::atomic<int64_t> queued_{0};      // accepted, not yet dequeued
  std::atomic<int64_t> submitted_{0};
  std::atomic<int64_t> refused_{0};

  std::mutex stop_mu_;  // serialises Stop() callers
  bool joined_ ABSL_GUARDED_BY(stop_mu_) = false;
};

}  // namespace moe
