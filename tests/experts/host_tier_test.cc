// HostExpertSource on a GPU: the bytes that land in a slot are the checkpoint file's bytes, for
// random experts, in both modes (registered mmaps, staging ring), every file layout, BF16 and
// F16; bad keys are refused; many copies churn through a small staging ring from several threads;
// kAuto falls back to the ring for memory that cannot be registered; two sources share one
// registration. Skips without a GPU.
#include "moe/experts/host_tier.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>

#include "common/gpu_test_util.h"
#include "experts/expert_checkpoint.h"
#include "model/tiny_checkpoint.h"

namespace moe::experts {
namespace {

using testing::ExpertCheckpointOptions;
using testing::ExpertFileLayout;
using Mode = HostExpertSource::Mode;

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

constexpr uint8_t kPoison = 0xA5;

// Device slots of `bytes` each, poisoned.
class DeviceSlots {
 public:
  DeviceSlots(int n, int64_t bytes) : bytes_(bytes) {
    if (cudaMalloc(&base_, static_cast<size_t>(n * bytes)) != cudaSuccess) base_ = nullptr;
    if (base_) cudaMemset(base_, kPoison, static_cast<size_t>(n * bytes));
    cudaDeviceSynchronize();
  }
  ~DeviceSlots() {
    if (base_) cudaFree(base_);
  }
  uint8_t* slot(int i) const { return static_cast<uint8_t*>(base_) + i * bytes_; }
  bool ok() const { return base_ != nullptr; }

 private:
  void* base_ = nullptr;
  int64_t bytes_ = 0;
};

// The slot's bytes equal the file's bytes of `key` at the layout's offsets; padding is untouched.
void ExpectSlotHoldsExpert(const HostExpertSource& source, const ExpertKey& key,
                           const uint8_t* device_slot) {
  const SlotLayout& l = source.layout();
  std::vector<uint8_t> host(static_cast<size_t>(l.slot_bytes));
  ASSERT_CUDA(cudaMemcpy(host.data(), device_slot, host.size(), cudaMemcpyDeviceToHost));
  const ExpertWeights& w =
      source.model().layer(key.layer)->experts[static_cast<size_t>(key.expert)];
  const size_t mb = static_cast<size_t>(l.matrix_bytes);
  std::vector<bool> written(host.size(), false);
  const std::pair<int64_t, const TensorView*> parts[3] = {
      {l.gate_offset, &w.gate}, {l.up_offset, &w.up}, {l.down_offset, &w.down}};
  for (const auto& [off, view] : parts) {
    EXPECT_EQ(0, std::memcmp(host.data() + off, view->data, mb))
        << ToString(key) << " " << view->name << " differs from the file";
    std::fill(written.begin() + off, written.begin() + off + static_cast<int64_t>(mb), true);
  }
  for (size_t i = 0; i < host.size(); ++i) {
    if (!written[i]) {
      ASSERT_EQ(host[i], kPoison) << ToString(key) << ": padding byte " << i << " was written";
    }
  }
}

std::shared_ptr<const Model> WriteAndOpen(const testing::TempDir& tmp, const std::string& name,
                                          const ExpertCheckpointOptions& o) {
  auto model = testing::WriteAndOpenExpertCheckpoint(tmp.Sub(name), o);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *model : nullptr;
}

struct CopyCase {
  ExpertFileLayout layout;
  DType dtype;
  Mode mode;
  int64_t hidden, inter;
};

class HostTierCopyTest : public ::testing::TestWithParam<CopyCase> {};

TEST_P(HostTierCopyTest, SlotBytesEqualFileBytes) {
  MOE_REQUIRE_GPU();
  const CopyCase& c = GetParam();
  testing::TempDir tmp;
  ExpertCheckpointOptions o;
  o.hidden = c.hidden;
  o.inter = c.inter;
  o.n_experts = 6;
  o.n_layers = 3;
  o.n_shards = 2;
  o.dtype = c.dtype;
  o.layout = c.layout;
  auto model = WriteAndOpen(tmp, "ckpt", o);
  ASSERT_NE(model, nullptr);
  HostExpertSource::Options opts;
  opts.mode = c.mode;
  opts.staging_bytes = 1 << 20;  // 4 chunks of 256 KiB: experts below span two chunks
  opts.staging_threads = 3;
  auto source = HostExpertSource::Create(model, opts);
  ASSERT_TRUE(source.ok()) << source.status();
  HostExpertSource& s = **source;
  EXPECT_EQ(s.mode(), c.mode);
  if (c.mode == Mode::kRegisteredMmap) {
    EXPECT_GT(s.setup().registered_bytes, 0);
    EXPECT_EQ(s.setup().registered_ranges, 2);  // one per shard
  } else {
    EXPECT_GT(s.setup().staging_bytes, 0);
  }

  cudaStream_t stream = nullptr;
  ASSERT_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  constexpr int kKeys = 24;
  DeviceSlots slots(kKeys, s.layout().slot_bytes);
  ASSERT_TRUE(slots.ok());
  std::mt19937 rng(static_cast<uint32_t>(c.hidden * 131 + static_cast<int>(c.layout)));
  std::vector<ExpertKey> keys;
  for (int i = 0; i < kKeys; ++i) {
    keys.push_back({static_cast<int32_t>(rng() % 3), static_cast<int32_t>(rng() % 6)});
    const Status st = s.CopyAsync(keys.back(), slots.slot(i), stream);
    ASSERT_TRUE(st.ok()) << st;
  }
  ASSERT_CUDA(cudaStreamSynchronize(stream));
  for (int i = 0; i < kKeys; ++i)
    ExpectSlotHoldsExpert(s, keys[static_cast<size_t>(i)], slots.slot(i));

  // Bad keys and a null slot are refused without enqueuing anything.
  for (ExpertKey bad : {ExpertKey{3, 0}, ExpertKey{-1, 0}, ExpertKey{0, 6}, ExpertKey{0, -1}}) {
    EXPECT_EQ(s.CopyAsync(bad, slots.slot(0), stream).code(), absl::StatusCode::kInvalidArgument)
        << ToString(bad);
  }
  EXPECT_EQ(s.CopyAsync({0, 0}, nullptr, stream).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_CUDA(cudaStreamSynchronize(stream));
  cudaStreamDestroy(stream);
}

std::vector<CopyCase> AllCopyCases() {
  std::vector<CopyCase> cases;
  for (Mode mode : {Mode::kRegisteredMmap, Mode::kStagingRing}) {
    for (ExpertFileLayout layout : {ExpertFileLayout::kSortedByName, ExpertFileLayout::kGateUpDown,
                                    ExpertFileLayout::kScattered, ExpertFileLayout::kFused}) {
      // 256 x 192 x 2 = 96 KiB per matrix, 288 KiB per expert (> one 256 KiB ring chunk).
      cases.push_back({layout, DType::kBF16, mode, 256, 192});
      cases.push_back({layout, DType::kF16, mode, 256, 192});
    }
    // 72 x 40 x 2 = 5760 bytes: unaligned matrices, three copies with padding between.
    cases.push_back({ExpertFileLayout::kSortedByName, DType::kBF16, mode, 72, 40});
    cases.push_back({ExpertFileLayout::kFused, DType::kF16, mode, 72, 40});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, HostTierCopyTest, ::testing::ValuesIn(AllCopyCases()),
                         [](const ::testing::TestParamInfo<CopyCase>& info) {
                           const CopyCase& c = info.param;
                           return std::string(c.mode == Mode::kRegisteredMmap ? "registered"
                                                                              : "staging") +
                                  "_" + testing::ExpertFileLayoutName(c.layout) + "_" +
                                  (c.dtype == DType::kF16 ? "f16" : "bf16") + "_" +
                                  std::to_string(c.hidden);
                         });

// Several threads, each on its own stream, enqueue many copies through a ring of 4 chunks before
// synchronizing: a chunk refilled before its DMA completed would corrupt some slot.
TEST(HostTierStagingTest, ChurnThroughSmallRingFromSeveralThreads) {
  MOE_REQUIRE_GPU();
  testing::TempDir tmp;
  ExpertCheckpointOptions o;
  o.hidden = 256;
  o.inter = 192;
  o.n_experts = 8;
  o.n_layers = 2;
  auto model = WriteAndOpen(tmp, "ckpt", o);
  ASSERT_NE(model, nullptr);
  HostExpertSource::Options opts;
  opts.mode = Mode::kStagingRing;
  opts.staging_bytes = 1 << 20;
  opts.staging_threads = 2;
  auto source = HostExpertSource::Create(model, opts);
  ASSERT_TRUE(source.ok()) << source.status();
  HostExpertSource& s = **source;

  constexpr int kThreads = 4, kSlotsPerThread = 12, kRounds = 6;
  DeviceSlots slots(kThreads * kSlotsPerThread, s.layout().slot_bytes);
  ASSERT_TRUE(slots.ok());
  std::vector<std::string> failures(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      cudaStream_t stream = nullptr;
      if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
        failures[static_cast<size_t>(t)] = "stream";
        return;
      }
      std::mt19937 rng(static_cast<uint32_t>(t + 1));
      std::vector<ExpertKey> keys(kSlotsPerThread);
      for (int round = 0; round < kRounds && failures[static_cast<size_t>(t)].empty(); ++round) {
        for (int i = 0; i < kSlotsPerThread; ++i) {
          keys[static_cast<size_t>(i)] = {static_cast<int32_t>(rng() % 2),
                                          static_cast<int32_t>(rng() % 8)};
          const Status st = s.CopyAsync(keys[static_cast<size_t>(i)],
                                        slots.slot(t * kSlotsPerThread + i), stream);
          if (!st.ok()) failures[static_cast<size_t>(t)] = st.ToString();
        }
        cudaStreamSynchronize(stream);
        // Compare on the host (gtest assertions stay on the main thread).
        std::vector<uint8_t> host(static_cast<size_t>(s.layout().slot_bytes));
        for (int i = 0; i < kSlotsPerThread; ++i) {
          cudaMemcpy(host.data(), slots.slot(t * kSlotsPerThread + i), host.size(),
                     cudaMemcpyDeviceToHost);
          const ExpertKey key = keys[static_cast<size_t>(i)];
          const ExpertWeights& w =
              model->layer(key.layer)->experts[static_cast<size_t>(key.expert)];
          const SlotLayout& l = s.layout();
          const size_t mb = static_cast<size_t>(l.matrix_bytes);
          if (std::memcmp(host.data() + l.gate_offset, w.gate.data, mb) != 0 ||
              std::memcmp(host.data() + l.up_offset, w.up.data, mb) != 0 ||
              std::memcmp(host.data() + l.down_offset, w.down.data, mb) != 0) {
            failures[static_cast<size_t>(t)] = "round " + std::to_string(round) + " slot " +
                                               std::to_string(i) + " " + ToString(key) +
                                               " differs from the file";
          }
        }
      }
      cudaStreamDestroy(stream);
    });
  }
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t)
    EXPECT_EQ(failures[static_cast<size_t>(t)], "") << "thread " << t;
}

// Heap memory (Model::FromWeights) is not a read-only MAP_SHARED file mapping: kAuto falls back to
// the ring and says why; a forced registration fails.
TEST(HostTierModeTest, AutoFallsBackForHeapMemory) {
  MOE_REQUIRE_GPU();
  testing::TempDir tmp;
  ExpertCheckpointOptions o;
  auto file_model = WriteAndOpen(tmp, "ckpt", o);
  ASSERT_NE(file_model, nullptr);
  // Copy the experts' bytes to the heap and build a model over them.
  const MoeSpec& spec = file_model->spec();
  std::vector<MoeLayerWeights> layers = file_model->layers();
  int64_t total = 0;
  for (const auto& l : layers)
    total += static_cast<int64_t>(l.experts.size()) * 3 * spec.hidden * spec.moe_intermediate * 2;
  auto heap = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(total));
  size_t at = 0;
  for (auto& l : layers) {
    for (auto& e : l.experts) {
      for (TensorView* v : {&e.gate, &e.up, &e.down}) {
        std::memcpy(heap->data() + at, v->data, static_cast<size_t>(v->nbytes));
        v->data = heap->data() + at;
        at += static_cast<size_t>(v->nbytes);
      }
    }
  }
  std::shared_ptr<const Model> heap_model = Model::FromWeights(spec, std::move(layers), heap);

  auto forced = HostExpertSource::Create(heap_model, {.mode = Mode::kRegisteredMmap});
  EXPECT_EQ(forced.status().code(), absl::StatusCode::kFailedPrecondition) << forced.status();

  auto source = HostExpertSource::Create(heap_model, {.staging_bytes = 1 << 20});
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->mode(), Mode::kStagingRing);
  EXPECT_NE((*source)->setup().fallback_reason, "");
  DeviceSlots slots(1, (*source)->layout().slot_bytes);
  ASSERT_TRUE((*source)->CopyAsync({1, 3}, slots.slot(0), nullptr).ok());
  ASSERT_CUDA(cudaDeviceSynchronize());
  ExpectSlotHoldsExpert(**source, {1, 3}, slots.slot(0));

  // The file-backed model registers in kAuto.
  auto file_source = HostExpertSource::Create(file_model, {});
  ASSERT_TRUE(file_source.ok()) << file_source.status();
  EXPECT_EQ((*file_source)->mode(), Mode::kRegisteredMmap)
      << (*file_source)->setup().fallback_reason;
}

// Two sources over one model share the registration; the survivor still copies after the first
// is destroyed (the ranges stay registered until the last one goes).
TEST(HostTierModeTest, TwoSourcesShareOneRegistration) {
  MOE_REQUIRE_GPU();
  testing::TempDir tmp;
  ExpertCheckpointOptions o;
  o.hidden = 128;
  o.inter = 64;
  auto model = WriteAndOpen(tmp, "ckpt", o);
  ASSERT_NE(model, nullptr);
  auto a = HostExpertSource::Create(model, {.mode = Mode::kRegisteredMmap});
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = HostExpertSource::Create(model, {.mode = Mode::kRegisteredMmap});
  ASSERT_TRUE(b.ok()) << b.status();
  a->reset();
  DeviceSlots slots(1, (*b)->layout().slot_bytes);
  ASSERT_TRUE((*b)->CopyAsync({1, 2}, slots.slot(0), nullptr).ok());
  ASSERT_CUDA(cudaDeviceSynchronize());
  ExpectSlotHoldsExpert(**b, {1, 2}, slots.slot(0));
  // After both are gone the range can be registered afresh.
  b->reset();
  auto c = HostExpertSource::Create(model, {.mode = Mode::kRegisteredMmap});
  ASSERT_TRUE(c.ok()) << c.status();
}

TEST(HostTierModeTest, BadOptionsAreInvalidArgument) {
  MOE_REQUIRE_GPU();
  testing::TempDir tmp;
  auto model = WriteAndOpen(tmp, "ckpt", {});
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(HostExpertSource::Create(model, {.device = 1000}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HostExpertSource::Create(model, {.staging_bytes = 1000}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HostExpertSource::Create(model, {.staging_threads = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HostExpertSource::Create(nullptr, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moe::experts
