// A batch-invariant fake engine for the scheduler tests: each output row is a deterministic
// function of its input row, the layer and the dtype only (never of the batch), so any merging,
// splitting or reordering by the scheduler must give bitwise the answer of the request alone.
// It also checks the Engine contract the scheduler must keep (slots in range, no two calls on one
// slot at once), records every call's rows (by the tag in each row's first element), and can
// block in Forward() until the test opens a gate.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "moe/engine/engine.h"
#include "swarm/notification.h"

namespace moe::testing {

struct FakeEngineOptions {
  int hidden = 8;
  int n_experts = 8;
  int top_k = 2;
  std::vector<int> moe_layers = {1, 3};
  int num_slots = 2;
  int64_t max_batch_tokens = 4096;
  int fail_layer = -1;  // Forward() on this layer returns INTERNAL
};

class FakeEngine : public Engine {
 public:
  explicit FakeEngine(const FakeEngineOptions& o)
      : options_(o), busy_(static_cast<size_t>(o.num_slots)) {
    spec_.hidden = o.hidden;
    spec_.moe_intermediate = 4;
    spec_.n_layers = o.moe_layers.empty() ? 1 : o.moe_layers.back() + 1;
    spec_.moe_layers = o.moe_layers;
    spec_.routing.n_experts = o.n_experts;
    spec_.routing.top_k = o.top_k;
  }

  std::string_view name() const override { return "fake"; }
  const MoeSpec& spec() const override { return spec_; }
  int num_slots() const override { return options_.num_slots; }
  int64_t max_batch_tokens() const override { return options_.max_batch_tokens; }

  // The tag of a row is its first element converted to float (tests write small integers there).
  static float RowTag(DType dtype, const void* row) {
    float v = 0.0f;
    ConvertToF32(dtype, row, &v, 1);
    return v;
  }

  Status Forward(const ForwardArgs& a) override {
    MOE_RETURN_IF_ERROR(
        ValidateForwardArgs(spec_, a, options_.num_slots, options_.max_batch_tokens));
    if (busy_[static_cast<size_t>(a.slot)].exchange(true)) slot_overlaps_.fetch_add(1);
    const size_t esize = DTypeSize(a.dtype);
    const size_t row_bytes = static_cast<size_t>(spec_.hidden) * esize;
    {
      std::unique_lock<std::mutex> lock(mu_);
      std::vector<float> tags;
      for (int64_t t = 0; t < a.n_tokens; ++t) {
        tags.push_back(RowTag(a.dtype, static_cast<const char*>(a.input) + t * row_bytes));
      }
      calls_.push_back(std::move(tags));
      if (gate_ != nullptr) {
        Notification* gate = gate_;
        entered_->Notify();
        gate_ = nullptr;
        lock.unlock();
        gate->WaitForNotification();
      }
    }
    Status status;
    if (a.layer == options_.fail_layer) {
      status = absl::InternalError("fake engine: injected failure");
    } else {
      std::vector<float> in(static_cast<size_t>(spec_.hidden)), out(in.size());
      for (int64_t t = 0; t < a.n_tokens; ++t) {
        ConvertToF32(a.dtype, static_cast<const char*>(a.input) + t * row_bytes, in.data(),
                     in.size());
        RowFunction(a.layer, in, out);
        ConvertFromF32(out.data(), a.dtype, static_cast<char*>(a.output) + t * row_bytes,
                       out.size());
        if (a.expert_ids != nullptr) {
          for (int j = 0; j < spec_.top_k(); ++j) {
            const float s = in[static_cast<size_t>(j) % in.size()];
            a.expert_ids[t * spec_.top_k() + j] =
                static_cast<int32_t>(std::fabs(s * 1000.0f + static_cast<float>(j + a.layer))) %
                spec_.n_experts();
            a.expert_weights[t * spec_.top_k() + j] = std::tanh(s + static_cast<float>(j));
          }
        }
      }
    }
    busy_[static_cast<size_t>(a.slot)].store(false);
    return status;
  }

  // Makes the next Forward() call notify `entered` and block until `gate` is notified.
  void BlockNextCall(Notification* entered, Notification* gate) {
    std::lock_guard<std::mutex> lock(mu_);
    entered_ = entered;
    gate_ = gate;
  }
  // Row tags of every call so far, in call order.
  std::vector<std::vector<float>> calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }
  int slot_overlaps() const { return slot_overlaps_.load(); }

 private:
  // A row-wise function mixing every element of the row (so a row sliced at the wrong offset or
  // with a neighbour's bytes would differ).
  static void RowFunction(int layer, const std::vector<float>& in, std::vector<float>& out) {
    float sum = 0.0f;
    for (float v : in) sum += v * 0.5f;
    for (size_t j = 0; j < in.size(); ++j) {
      out[j] =
          std::sin(in[j] * 1.3f + static_cast<float>(layer)) + sum * 0.25f + static_cast<float>(j);
    }
  }

  const FakeEngineOptions options_;
  MoeSpec spec_;
  std::vector<std::atomic<bool>> busy_;
  std::atomic<int> slot_overlaps_{0};
  mutable std::mutex mu_;
  std::vector<std::vector<float>> calls_ ABSL_GUARDED_BY(mu_);
  Notification* entered_ ABSL_GUARDED_BY(mu_) = nullptr;
  Notification* gate_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace moe::testing
