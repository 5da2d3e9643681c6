// Routing traces: which experts each batch used at each MoE layer, for offline cache studies.
//
// Text format, one record per line ('#' starts a comment line):
//   moe-expert-trace v1
//   shape <n_layers> <n_experts> <top_k>
//   <batch> <layer> <expert> [<expert> ...]     (one line per batch and MoE layer, in run order)
// `batch` is a non-decreasing batch sequence number, `layer` a decoder layer index in
// [0, n_layers), the experts are the distinct ids in [0, n_experts) that the batch's tokens were
// routed to at that layer, in the order the engine acquired them. Example:
//   moe-expert-trace v1
//   shape 48 128 8
//   0 0 3 17 42 99
//   0 1 5 17 64
#pragma once

#include <cstdint>
#include <fstream>
#include <iosfwd>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "moe/common/status.h"

namespace moe::experts {

struct TraceShape {
  int32_t n_layers = 0;   // decoder layers (MoE layer indices are below this)
  int32_t n_experts = 0;  // routed experts per layer
  int32_t top_k = 0;      // experts per token (informational)
};

struct TraceStep {
  int64_t batch = 0;
  int32_t layer = 0;
  std::vector<int32_t> experts;  // distinct expert ids
  // Tokens of the step that use each expert (same order as `experts`) where the trace knows them
  // (synthetic traces); empty otherwise. Not stored in trace files.
  std::vector<int32_t> uses = {};
};

struct Trace {
  TraceShape shape;
  std::vector<TraceStep> steps;  // in run order

  // InvalidArgument naming the first bad step: shape not positive, layer or expert out of range,
  // a repeated or missing expert, a batch number going backwards.
  Status Validate() const;
  // Sum of the steps' expert counts (the demanded experts of a replay).
  int64_t Accesses() const;
};

Status WriteTrace(const Trace& trace, std::ostream& out);
// Parses and validates. InvalidArgument with the line number on malformed input.
StatusOr<Trace> ReadTrace(std::istream& in);
Status WriteTraceFile(const Trace& trace, const std::string& path);
StatusOr<Trace> ReadTraceFile(const std::string& path);

// Appends steps to a trace file while the server runs (--expert-trace=FILE).
//
// Thread safety: Record and Flush are thread safe (one mutex; lines of concurrent callers never
// interleave). Steps are written in the order Record is called.
class TraceRecorder {
 public:
  struct Options {
    std::string path;  // truncated on Create
    TraceShape shape;
  };
  // Writes the header. Fails (InvalidArgument / Internal) on a bad shape or an unwritable file.
  static StatusOr<std::unique_ptr<TraceRecorder>> Create(const Options& options);

  // Appends one step; duplicate ids are dropped. InvalidArgument on an id out of range, Internal
  // once the file has failed (every later call then fails too).
  Status Record(int64_t batch, int32_t layer, std::span<const int32_t> experts);
  Status Flush();

 private:
  explicit TraceRecorder(TraceShape shape) : shape_(shape) {}

  const TraceShape shape_;
  std::mutex mu_;  // std::mutex: see ExpertSlotPool::mu_
  std::ofstream out_ ABSL_GUARDED_BY(mu_);
  std::string path_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::experts
