// Routing trace format: reader, writer and the server-side recorder.
#include "moe/experts/trace.h"

#include <algorithm>
#include <istream>
#include <ostream>
#include <sstream>

#include "absl/container/flat_hash_set.h"

namespace moe::experts {
namespace {

constexpr char kMagic[] = "moe-expert-trace v1";

Status ValidateShape(const TraceShape& shape) {
  if (shape.n_layers <= 0 || shape.n_experts <= 0 || shape.top_k <= 0 ||
      shape.top_k > shape.n_experts) {
    return absl::InvalidArgumentError(absl::StrCat("trace: bad shape (layers ", shape.n_layers,
                                                   ", experts ", shape.n_experts, ", top_k ",
                                                   shape.top_k, ")"));
  }
  return absl::OkStatus();
}

// Range and uniqueness of one step's experts.
Status ValidateExperts(const TraceShape& shape, int32_t layer, std::span<const int32_t> experts) {
  if (layer < 0 || layer >= shape.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " out of range"));
  }
  if (experts.empty()) return absl::InvalidArgumentError("no experts");
  absl::flat_hash_set<int32_t> seen;
  for (int32_t e : experts) {
    if (e < 0 || e >= shape.n_experts) {
      return absl::InvalidArgumentError(absl::StrCat("expert ", e, " out of range"));
    }
    if (!seen.insert(e).second) {
      return absl::InvalidArgumentError(absl::StrCat("expert ", e, " repeated"));
    }
  }
  return absl::OkStatus();
}

void WriteStep(std::ostream& out, int64_t batch, int32_t layer, std::span<const int32_t> experts) {
  out << batch << ' ' << layer;
  for (int32_t e : experts) out << ' ' << e;
  out << '\n';
}

}  // namespace

Status Trace::Validate() const {
  MOE_RETURN_IF_ERROR(ValidateShape(shape));
  int64_t last_batch = steps.empty() ? 0 : steps.front().batch;
  for (size_t i = 0; i < steps.size(); ++i) {
    const TraceStep& step = steps[i];
    Status status = ValidateExperts(shape, step.layer, step.experts);
    if (status.ok() && !step.uses.empty()) {
      if (step.uses.size() != step.experts.size()) {
        status = absl::InvalidArgumentError("uses and experts differ in length");
      } else if (*std::min_element(step.uses.begin(), step.uses.end()) < 1) {
        status = absl::InvalidArgumentError("an expert used by fewer than 1 token");
      }
    }
    if (status.ok() && step.batch < last_batch) {
      status = absl::InvalidArgumentError(
          absl::StrCat("batch ", step.batch, " after batch ", last_batch));
    }
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("trace step ", i, ": ", std::string(status.message())));
    }
    last_batch = step.batch;
  }
  return absl::OkStatus();
}

int64_t Trace::Accesses() const {
  int64_t n = 0;
  for (const TraceStep& step : steps) n += static_cast<int64_t>(step.experts.size());
  return n;
}

Status WriteTrace(const Trace& trace, std::ostream& out) {
  MOE_RETURN_IF_ERROR(trace.Validate());
  out << kMagic << '\n'
      << "shape " << trace.shape.n_layers << ' ' << trace.shape.n_experts << ' '
      << trace.shape.top_k << '\n';
  for (const TraceStep& step : trace.steps) WriteStep(out, step.batch, step.layer, step.experts);
  if (!out) return absl::InternalError("trace: write failed");
  return absl::OkStatus();
}

StatusOr<Trace> ReadTrace(std::istream& in) {
  Trace trace;
  std::string line;
  int64_t line_no = 0;
  bool have_magic = false;
  bool have_shape = false;
  auto error = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("trace line ", line_no, ": ", what));
  };
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty() || line[0] == '#') continue;
    if (!have_magic) {
      if (line != kMagic) return error(absl::StrCat("expected '", kMagic, "'"));
      have_magic = true;
      continue;
    }
    std::istringstream fields(line);
    if (!have_shape) {
      std::string word;
      if (!(fields >> word >> trace.shape.n_layers >> trace.shape.n_experts >> trace.shape.top_k) ||
          word != "shape") {
        return error("expected 'shape <n_layers> <n_experts> <top_k>'");
      }
      if (Status s = ValidateShape(trace.shape); !s.ok()) return error(std::string(s.message()));
      have_shape = true;
      continue;
    }
    TraceStep step;
    if (!(fields >> step.batch >> step.layer)) return error("expected '<batch> <layer> <experts>'");
    int64_t expert = 0;
    while (fields >> expert) {
      if (expert < 0 || expert >= trace.shape.n_experts) {
        return error(absl::StrCat("expert ", expert, " out of range"));
      }
      step.experts.push_back(static_cast<int32_t>(expert));
    }
    if (!fields.eof()) return error("expected integers");
    if (Status s = ValidateExperts(trace.shape, step.layer, step.experts); !s.ok()) {
      return error(std::string(s.message()));
    }
    if (!trace.steps.empty() && step.batch < trace.steps.back().batch) {
      return error("batch number goes backwards");
    }
    trace.steps.push_back(std::move(step));
  }
  if (!have_shape) return absl::InvalidArgumentError("trace: missing header");
  return trace;
}

Status WriteTraceFile(const Trace& trace, const std::string& path) {
  std::ofstream out(path, std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrCat("trace: cannot open ", path));
  MOE_RETURN_IF_ERROR(WriteTrace(trace, out));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("trace: cannot write ", path));
  return absl::OkStatus();
}

StatusOr<Trace> ReadTraceFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("trace: cannot open ", path));
  return ReadTrace(in);
}

StatusOr<std::unique_ptr<TraceRecorder>> TraceRecorder::Create(const Options& options) {
  MOE_RETURN_IF_ERROR(ValidateShape(options.shape));
  auto recorder = std::unique_ptr<TraceRecorder>(new TraceRecorder(options.shape));
  std::lock_guard<std::mutex> lock(recorder->mu_);
  recorder->path_ = options.path;
  recorder->out_.open(options.path, std::ios::trunc);
  recorder->out_ << kMagic << '\n'
                 << "shape " << options.shape.n_layers << ' ' << options.shape.n_experts << ' '
                 << options.shape.top_k << '\n';
  if (!recorder->out_) {
    return absl::InternalError(absl::StrCat("trace: cannot write ", options.path));
  }
  return recorder;
}

Status TraceRecorder::Record(int64_t batch, int32_t layer, std::span<const int32_t> experts) {
  std::vector<int32_t> distinct;
  absl::flat_hash_set<int32_t> seen;
  for (int32_t e : experts) {
    if (seen.insert(e).second) distinct.push_back(e);
  }
  if (Status s = ValidateExperts(shape_, layer, distinct); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("trace: ", std::string(s.message())));
  }
  std::lock_guard<std::mutex> lock(mu_);
  WriteStep(out_, batch, layer, distinct);
  if (!out_) return absl::InternalError(absl::StrCat("trace: cannot write ", path_));
  return absl::OkStatus();
}

Status TraceRecorder::Flush() {
  std::lock_guard<std::mutex> lock(mu_);
  out_.flush();
  if (!out_) return absl::InternalError(absl::StrCat("trace: cannot write ", path_));
  return absl::OkStatus();
}

}  // namespace moe::experts
