// CompressedHostTier: background encoding of the routed experts into pinned host memory.
#include "moe/experts/compressed_tier.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <span>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "experts/host_tier_mappings.h"
#include "kernels/cuda_status.h"

namespace moe::experts {
namespace {

constexpr uint8_t kPending = 0, kEncoded = 1, kRaw = 2;

// The host bytes of slot range [offset, offset + bytes) from the expert's copies: a pointer into
// the mapping when one 2-byte aligned copy covers it, else gathered into `scratch`.
const uint16_t* SlotRange(std::span<const HostCopy> copies, int64_t offset, int64_t bytes,
                          std::vector<uint16_t>& scratch) {
  for (const HostCopy& c : copies) {
    if (c.dst_offset <= offset && offset + bytes <= c.dst_offset + c.bytes) {
      const uint8_t* p = c.src + (offset - c.dst_offset);
      if (reinterpret_cast<uintptr_t>(p) % 2 == 0) return reinterpret_cast<const uint16_t*>(p);
    }
  }
  scratch.assign(static_cast<size_t>(bytes / 2), 0);
  auto* out = reinterpret_cast<uint8_t*>(scratch.data());
  for (const HostCopy& c : copies) {
    const int64_t lo = std::max(offset, c.dst_offset);
    const int64_t hi = std::min(offset + bytes, c.dst_offset + c.bytes);
    if (lo < hi) std::memcpy(out + (lo - offset), c.src + (lo - c.dst_offset), hi - lo);
  }
  return scratch.data();
}

}  // namespace

StatusOr<std::unique_ptr<CompressedHostTier>> CompressedHostTier::Start(
    std::shared_ptr<const Model> model, const HostCopyPlan& plan, const Options& options) {
  if (model == nullptr) return absl::InvalidArgumentError("compressed host tier: null model");
  if (options.threads < 1 || options.threads > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("compressed host tier: threads must be in [1, 256], got ", options.threads));
  }
  const MoeSpec& spec = model->spec();
  if (spec.weight_dtype != DType::kBF16) {
    return absl::FailedPreconditionError(
        absl::StrCat("compressed host tier: the codec takes bf16 expert weights, not ",
                     std::string(DTypeName(spec.weight_dtype))));
  }
  const int64_t n = int64_t{spec.hidden} * spec.moe_intermediate;
  StatusOr<CodecExpertLayout> layout = MakeCodecLayout(n);
  if (!layout.ok()) return absl::FailedPreconditionError(layout.status().message());
  if (plan.layers().empty() || plan.n_experts() <= 0 || plan.layout().matrix_bytes != 2 * n) {
    return absl::FailedPreconditionError("compressed host tier: the copy plan does not match");
  }
  std::unique_ptr<CompressedHostTier> t(new CompressedHostTier(std::move(model), plan, options));
  t->layout_ = *layout;
  std::array<int64_t, 3> offsets = {plan.layout().gate_offset, plan.layout().up_offset,
                                    plan.layout().down_offset};
  std::sort(offsets.begin(), offsets.end());
  t->slot_offsets_ = offsets;
  t->n_total_ = static_cast<int64_t>(plan.layers().size()) * plan.n_experts();
  t->info_.resize(static_cast<size_t>(t->n_total_));
  t->state_ = std::make_unique<std::atomic<uint8_t>[]>(static_cast<size_t>(t->n_total_));
  for (int64_t i = 0; i < t->n_total_; ++i) t->state_[i].store(kPending, std::memory_order_relaxed);
  t->arenas_.assign(plan.layers().size(), nullptr);
  t->thread_ = std::thread([p = t.get()] { p->Run(); });
  return t;
}

CompressedHostTier::CompressedHostTier(std::shared_ptr<const Model> model, HostCopyPlan plan,
                                       const Options& options)
    : model_(std::move(model)), plan_(std::move(plan)), options_(options) {}

CompressedHostTier::~CompressedHostTier() {
  stop_.store(true, std::memory_order_release);
  if (thread_.joinable()) thread_.join();
  for (uint8_t* a : arenas_) {
    if (a != nullptr) cudaFreeHost(a);
  }
}

std::optional<CompressedHostTier::Blob> CompressedHostTier::Find(const ExpertKey& key) const {
  if (!plan_.ValidateKey(key).ok()) return std::nullopt;
  const int64_t i = plan_.Index(key);
  if (state_[i].load(std::memory_order_acquire) != kEncoded) return std::nullopt;
  return Blob{arenas_[i / plan_.n_experts()] + key.expert * layout_.max_blob_bytes, info_[i]};
}

Status CompressedHostTier::status() const {
  if (!done_.load(std::memory_order_acquire)) return absl::OkStatus();
  return error_;
}

void CompressedHostTier::WaitDone() const {
  while (!done_.load(std::memory_order_acquire)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void CompressedHostTier::Run() {
  const auto start = std::chrono::steady_clock::now();
  Status s = [&]() -> Status {
    CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    for (int pos = 0; pos < static_cast<int>(arenas_.size()); ++pos) {
      if (stop_.load(std::memory_order_acquire)) return absl::OkStatus();
      MOE_RETURN_IF_ERROR(EncodeLayer(pos));
    }
    return absl::OkStatus();
  }();
  error_ = std::move(s);
  seconds_.store(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
                 std::memory_order_release);
  done_.store(true, std::memory_order_release);
}

Status CompressedHostTier::EncodeLayer(int pos) {
  const int64_t bytes = int64_t{plan_.n_experts()} * layout_.max_blob_bytes;
  MOE_ASSIGN_OR_RETURN(const host_tier_internal::HostMemory memory,
                       host_tier_internal::ReadHostMemory());
  const std::string no_room = host_tier_internal::CheckFitsInHostMemory(bytes, memory);
  if (!no_room.empty()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("compressed host tier: layer position ", pos, " not encoded: ", no_room));
  }
  void* arena = nullptr;
  CUDA_RETURN_IF_ERROR(cudaHostAlloc(&arena, static_cast<size_t>(bytes), cudaHostAllocPortable));
  arenas_[pos] = static_cast<uint8_t*>(arena);
  arena_bytes_.fetch_add(bytes, std::memory_order_acq_rel);
  const int32_t layer = plan_.layers()[pos];
  std::atomic<int32_t> next{0};
  std::atomic<bool> failed{false};
  Status first_error;
  std::mutex error_mu;
  auto work = [&]() {
    std::array<std::vector<uint16_t>, 3> scratch;
    for (int32_t e = next.fetch_add(1); e < plan_.n_experts(); e = next.fetch_add(1)) {
      if (stop_.load(std::memory_order_acquire) || failed.load(std::memory_order_acquire)) return;
      const ExpertKey key{layer, e};
      StatusOr<std::span<const HostCopy>> copies = plan_.Copies(key);
      if (!copies.ok()) {
        std::lock_guard<std::mutex> lock(error_mu);
        first_error = copies.status();
        failed.store(true, std::memory_order_release);
        return;
      }
      std::array<const uint16_t*, 3> src;
      for (int m = 0; m < 3; ++m) {
        src[m] = SlotRange(*copies, slot_offsets_[m], plan_.layout().matrix_bytes, scratch[m]);
      }
      const int64_t i = plan_.Index(key);
      CodecExpertInfo info;
      uint8_t* blob = arenas_[pos] + e * layout_.max_blob_bytes;
      if (EncodeExpert(layout_, src, blob, &info)) {
        info_[i] = info;
        blob_bytes_.fetch_add(info.bytes, std::memory_order_relaxed);
        encoded_.fetch_add(1, std::memory_order_relaxed);
        state_[i].store(kEncoded, std::memory_order_release);
      } else {
        refused_.fetch_add(1, std::memory_order_relaxed);
        state_[i].store(kRaw, std::memory_order_release);
      }
    }
  };
  const int threads = std::min(options_.threads, plan_.n_experts());
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(threads - 1));
  for (int t = 1; t < threads; ++t) workers.emplace_back(work);
  work();
  for (std::thread& w : workers) w.join();
  return first_error;
}

}  // namespace moe::experts
