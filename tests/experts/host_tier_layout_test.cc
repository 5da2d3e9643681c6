// The host tier's CPU parts: the copy plan (slot layout, merged copies, bad keys) for every file
// layout, and the mapping checks that decide what may be registered (/proc/self/maps parsing,
// private / anonymous / writable mappings refused, page-aligned ranges), plus kAuto's memory check.
#include "moe/experts/host_tier_layout.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "experts/expert_checkpoint.h"
#include "experts/host_tier_mappings.h"
#include "model/tiny_checkpoint.h"
#include "moe/model/model.h"

namespace moe::experts {
namespace {

using host_tier_internal::Mapping;
using testing::ExpertCheckpointOptions;
using testing::ExpertFileLayout;

std::unique_ptr<Model> OpenModel(const testing::TempDir& tmp, const ExpertCheckpointOptions& o) {
  const std::string dir = tmp.Sub("ckpt");
  EXPECT_TRUE(testing::WriteExpertCheckpoint(dir, o).ok());
  auto model = Model::Open(dir);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

const uint8_t* Bytes(const TensorView& t) { return static_cast<const uint8_t*>(t.data); }

// Every copy of every expert, together, writes each matrix exactly at its slot offset from its
// own bytes (checked by replaying the copies into a host slot).
void ExpectPlanReproducesExperts(const Model& model, const HostCopyPlan& plan) {
  const SlotLayout& l = plan.layout();
  std::vector<uint8_t> slot(static_cast<size_t>(l.slot_bytes));
  for (int32_t layer : plan.layers()) {
    for (int32_t e = 0; e < plan.n_experts(); ++e) {
      std::fill(slot.begin(), slot.end(), 0xA5);
      auto copies = plan.Copies({layer, e});
      ASSERT_TRUE(copies.ok()) << copies.status();
      for (const HostCopy& c : *copies) {
        ASSERT_GE(c.dst_offset, 0);
        ASSERT_LE(c.dst_offset + c.bytes, l.slot_bytes);
        std::memcpy(slot.data() + c.dst_offset, c.src, static_cast<size_t>(c.bytes));
      }
      const ExpertWeights& w = model.layer(layer)->experts[static_cast<size_t>(e)];
      const size_t mb = static_cast<size_t>(l.matrix_bytes);
      EXPECT_EQ(0, std::memcmp(slot.data() + l.gate_offset, Bytes(w.gate), mb))
          << layer << "/" << e;
      EXPECT_EQ(0, std::memcmp(slot.data() + l.up_offset, Bytes(w.up), mb)) << layer << "/" << e;
      EXPECT_EQ(0, std::memcmp(slot.data() + l.down_offset, Bytes(w.down), mb))
          << layer << "/" << e;
    }
  }
}

struct LayoutCase {
  ExpertFileLayout layout;
  int64_t hidden, inter;
  DType dtype;
  int copies_per_expert;
  const char* order;
};

class HostCopyPlanLayoutTest : public ::testing::TestWithParam<LayoutCase> {};

TEST_P(HostCopyPlanLayoutTest, LayoutAndCopies) {
  const LayoutCase& c = GetParam();
  testing::TempDir tmp;
  ExpertCheckpointOptions o;
  o.hidden = c.hidden;
  o.inter = c.inter;
  o.n_experts = 5;
  o.n_layers = 3;
  o.dtype = c.dtype;
  o.layout = c.layout;
  o.n_shards = 2;
  auto model = OpenModel(tmp, o);
  ASSERT_NE(model, nullptr);
  auto plan = HostCopyPlan::Build(*model);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const SlotLayout& l = plan->layout();
  const int64_t mb = c.hidden * c.inter * 2;
  EXPECT_EQ(l.matrix_bytes, mb);
  for (int64_t off : {l.gate_offset, l.up_offset, l.down_offset, l.slot_bytes}) {
    EXPECT_EQ(off % kSlotAlignBytes, 0) << off;
  }
  const int64_t padded = (mb + kSlotAlignBytes - 1) / kSlotAlignBytes * kSlotAlignBytes;
  EXPECT_EQ(l.slot_bytes, 3 * padded);
  // The three matrices tile the slot without overlap.
  std::vector<int64_t> offs = {l.gate_offset, l.up_offset, l.down_offset};
  std::sort(offs.begin(), offs.end());
  EXPECT_EQ(offs, (std::vector<int64_t>{0, padded, 2 * padded}));
  EXPECT_EQ(plan->OrderName(), c.order);
  EXPECT_EQ(plan->total_copies(), int64_t{c.copies_per_expert} * 5 * 3);
  EXPECT_EQ(plan->layers(), (std::vector<int32_t>{0, 1, 2}));
  ExpectPlanReproducesExperts(*model, *plan);
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, HostCopyPlanLayoutTest,
    ::testing::Values(
        // HF name order: down, gate, up back to back -> one blob in that order.
        LayoutCase{ExpertFileLayout::kSortedByName, 64, 32, DType::kBF16, 1, "down,gate,up"},
        LayoutCase{ExpertFileLayout::kGateUpDown, 64, 32, DType::kF16, 1, "gate,up,down"},
        // gate_up_proj[e] is gate then up; down_proj[e] is elsewhere -> 2 copies.
        LayoutCase{ExpertFileLayout::kFused, 64, 32, DType::kBF16, 2, "gate,up,down"},
        LayoutCase{ExpertFileLayout::kFused, 64, 32, DType::kF16, 2, "gate,up,down"},
        LayoutCase{ExpertFileLayout::kScattered, 64, 32, DType::kBF16, 3, "gate,up,down"},
        // 72 * 40 * 2 = 5760 bytes: not a multiple of 256, so slot padding forbids merging.
        LayoutCase{ExpertFileLayout::kSortedByName, 72, 40, DType::kBF16, 3, "gate,up,down"},
        LayoutCase{ExpertFileLayout::kFused, 72, 40, DType::kBF16, 3, "gate,up,down"}),
    [](const ::testing::TestParamInfo<LayoutCase>& info) {
      return std::string(testing::ExpertFileLayoutName(info.param.layout)) + "_" +
             std::to_string(info.param.hidden) + "_" +
             (info.param.dtype == DType::kF16 ? "f16" : "bf16");
    });

TEST(HostCopyPlanTest, BadKeysAreInvalidArgument) {
  testing::TempDir tmp;
  ExpertCheckpointOptions o;
  o.n_layers = 2;
  o.n_experts = 3;
  auto model = OpenModel(tmp, o);
  ASSERT_NE(model, nullptr);
  auto plan = HostCopyPlan::Build(*model);
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (ExpertKey bad :
       {ExpertKey{2, 0}, ExpertKey{-1, 0}, ExpertKey{0, 3}, ExpertKey{1, -1}, ExpertKey{1000, 0}}) {
    EXPECT_EQ(plan->Copies(bad).status().code(), absl::StatusCode::kInvalidArgument)
        << ToString(bad);
  }
  EXPECT_TRUE(plan->Copies({1, 2}).ok());
}

TEST(HostCopyPlanTest, DenseLayersAreNotServed) {
  // The tiny Qwen3 checkpoint makes layer 1 dense (mlp_only_layers): keys of layer 1 are refused.
  testing::TempDir tmp;
  testing::TinyOptions to;
  to.family = Family::kQwen3Moe;
  testing::TinyCheckpoint tiny(to);
  const std::string dir = tmp.Sub("tiny");
  ASSERT_TRUE(tiny.Write(dir));
  auto model = Model::Open(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  auto plan = HostCopyPlan::Build(**model);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->layers(), (std::vector<int32_t>{0, 2}));
  EXPECT_EQ(plan->Copies({1, 0}).status().code(), absl::StatusCode::kInvalidArgument);
  // TinyCheckpoint writes gate, up, down per expert: 16 * 8 * 2 = 256 bytes each, one blob.
  EXPECT_EQ(plan->total_copies(), 2 * testing::TinyCheckpoint::kExperts);
  ExpectPlanReproducesExperts(**model, *plan);
}

TEST(HostCopyPlanTest, QuantisedExpertsAreUnimplemented) {
  testing::TempDir tmp;
  testing::TinyOptions to;
  to.family = Family::kDeepseekV3;
  to.dtype = DType::kF8E4M3;
  testing::TinyCheckpoint tiny(to);
  const std::string dir = tmp.Sub("f8");
  ASSERT_TRUE(tiny.Write(dir));
  auto model = Model::Open(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(HostCopyPlan::Build(**model).status().code(), absl::StatusCode::kUnimplemented);
}

TEST(HostCopyPlanTest, WrongMatrixShapeIsInvalidArgument) {
  MoeSpec spec;
  spec.family = Family::kQwen3Moe;
  spec.hidden = 16;
  spec.moe_intermediate = 8;
  spec.routing.n_experts = 1;
  spec.routing.top_k = 1;
  spec.n_layers = 1;
  spec.moe_layers = {0};
  spec.weight_dtype = DType::kBF16;
  auto buf = std::make_shared<std::vector<uint16_t>>(3 * 16 * 8);
  auto view = [&](int64_t rows, int64_t cols, int64_t at) {
    TensorView v;
    v.name = "w";
    v.dtype = DType::kBF16;
    v.shape = {rows, cols};
    v.data = buf->data() + at;
    v.nbytes = rows * cols * 2;
    return v;
  };
  MoeLayerWeights lw;
  lw.layer = 0;
  ExpertWeights ew;
  ew.gate = view(8, 16, 0);
  ew.up = view(8, 16, 128);
  ew.down = view(8, 16, 256);  // should be [16, 8]
  lw.experts.push_back(ew);
  std::vector<MoeLayerWeights> layers;
  layers.push_back(lw);
  auto model = Model::FromWeights(spec, std::move(layers), buf);
  EXPECT_EQ(HostCopyPlan::Build(*model).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Mappings

TEST(HostTierMappingsTest, ParsesProcMapsLines) {
  const char* text =
      "7f0000000000-7f0000100000 r--s 00000000 103:02 1234 /data/model-00001.safetensors\n"
      "7f0000100000-7f0000200000 r--s 00100000 103:02 1234 /data/model-00001.safetensors\n"
      "7f0000200000-7f0000300000 r--p 00000000 103:02 99 /data/private file\n"
      "7f0000400000-7f0000401000 rw-p 00000000 00:00 0 \n"
      "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n";
  auto parsed = host_tier_internal::ParseProcMaps(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->size(), 5u);
  const Mapping& m = (*parsed)[0];
  EXPECT_EQ(m.begin, 0x7f0000000000u);
  EXPECT_EQ(m.end, 0x7f0000100000u);
  EXPECT_TRUE(m.readable && m.shared && !m.writable);
  EXPECT_EQ(m.inode, 1234u);
  EXPECT_EQ(m.device, "103:02");
  EXPECT_EQ(m.path, "/data/model-00001.safetensors");
  EXPECT_EQ((*parsed)[2].path, "/data/private file");
  EXPECT_FALSE((*parsed)[2].shared);
  EXPECT_EQ((*parsed)[3].inode, 0u);
  EXPECT_EQ((*parsed)[4].path, "[stack]");

  auto merged = host_tier_internal::MergeMappings(*parsed);
  ASSERT_EQ(merged.size(), 4u);
  EXPECT_EQ(merged[0].end, 0x7f0000200000u);  // the two pieces of one file joined

  EXPECT_FALSE(host_tier_internal::ParseProcMaps("zzzz r--s 0 0:0 1 /x\n").ok());
  EXPECT_FALSE(host_tier_internal::ParseProcMaps("1000-2000 r--s 0 0:0\n").ok());
}

// A model whose experts live in one host buffer, with a fake mapping entry for that buffer.
struct BufferModel {
  std::shared_ptr<std::vector<uint8_t>> buffer;
  std::unique_ptr<Model> model;
};
BufferModel MakeBufferModel() {
  MoeSpec spec;
  spec.family = Family::kQwen3Moe;
  spec.hidden = 16;
  spec.moe_intermediate = 8;
  spec.routing.n_experts = 2;
  spec.routing.top_k = 1;
  spec.n_layers = 1;
  spec.moe_layers = {0};
  spec.weight_dtype = DType::kBF16;
  BufferModel bm;
  bm.buffer = std::make_shared<std::vector<uint8_t>>(3 * 2 * 256 + 8192);
  auto view = [&](int64_t rows, int64_t cols, size_t at) {
    TensorView v;
    v.name = "w";
    v.dtype = DType::kBF16;
    v.shape = {rows, cols};
    v.data = bm.buffer->data() + 5000 + at;
    v.nbytes = rows * cols * 2;
    return v;
  };
  MoeLayerWeights lw;
  lw.layer = 0;
  for (size_t e = 0; e < 2; ++e) {
    ExpertWeights ew;
    ew.gate = view(8, 16, e * 768);
    ew.up = view(8, 16, e * 768 + 256);
    ew.down = view(16, 8, e * 768 + 512);
    lw.experts.push_back(ew);
  }
  std::vector<MoeLayerWeights> layers;
  layers.push_back(lw);
  bm.model = Model::FromWeights(spec, std::move(layers), bm.buffer);
  return bm;
}

TEST(HostTierMappingsTest, RangesArePageAlignedAndClippedToTheMapping) {
  BufferModel bm = MakeBufferModel();
  auto plan = HostCopyPlan::Build(*bm.model);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const auto base = reinterpret_cast<uintptr_t>(bm.buffer->data());
  Mapping m;
  m.begin = base + 100;  // pretend the mapping starts mid-page (clipping)
  m.end = base + bm.buffer->size();
  m.readable = m.shared = true;
  m.inode = 7;
  m.path = "/fake";
  std::vector<Mapping> mappings = {m};
  auto ranges = host_tier_internal::RangesToRegister(*plan, mappings, 4096);
  ASSERT_TRUE(ranges.ok()) << ranges.status();
  ASSERT_EQ(ranges->size(), 1u);
  const auto lo = reinterpret_cast<uintptr_t>((*ranges)[0].begin);
  const uintptr_t hi = lo + static_cast<uintptr_t>((*ranges)[0].bytes);
  const uintptr_t first = base + 5000, last = base + 5000 + 2 * 768;
  EXPECT_LE(lo, first);
  EXPECT_GE(hi, last);
  EXPECT_GE(lo, m.begin);
  EXPECT_LE(hi, m.end);
  EXPECT_TRUE(lo % 4096 == 0 || lo == m.begin);
  EXPECT_TRUE(hi % 4096 == 0 || hi == m.end);

  // Private, writable, anonymous or missing mappings are refused.
  for (int variant = 0; variant < 4; ++variant) {
    Mapping bad = m;
    if (variant == 0) bad.shared = false;
    if (variant == 1) bad.writable = true;
    if (variant == 2) bad.inode = 0;
    if (variant == 3) bad.end = base + 5000 + 700;  // expert 1 outside
    std::vector<Mapping> v = {bad};
    EXPECT_EQ(host_tier_internal::RangesToRegister(*plan, v, 4096).status().code(),
              absl::StatusCode::kFailedPrecondition)
        << variant;
  }
}

std::string ReadSelfMaps() {
  std::ifstream in("/proc/self/maps");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(HostTierMappingsTest, RealCheckpointMappingsAreRegistrable) {
  testing::TempDir tmp;
  ExpertCheckpointOptions o;
  o.n_layers = 3;
  o.n_shards = 2;
  auto model = OpenModel(tmp, o);
  ASSERT_NE(model, nullptr);
  auto plan = HostCopyPlan::Build(*model);
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto parsed = host_tier_internal::ParseProcMaps(ReadSelfMaps());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const auto merged = host_tier_internal::MergeMappings(*parsed);
  const int64_t page = sysconf(_SC_PAGESIZE);
  auto ranges = host_tier_internal::RangesToRegister(*plan, merged, page);
  ASSERT_TRUE(ranges.ok()) << ranges.status();
  ASSERT_EQ(ranges->size(), 2u);  // one per shard
  for (const auto& r : *ranges) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(r.begin) % static_cast<uintptr_t>(page), 0u);
    EXPECT_NE(r.path.find(".safetensors"), std::string::npos) << r.path;
  }
  for (int32_t layer : plan->layers()) {
    for (int32_t e = 0; e < plan->n_experts(); ++e) {
      auto copies = plan->Copies({layer, e});
      ASSERT_TRUE(copies.ok());
      for (const HostCopy& c : *copies) {
        int inside = 0;
        for (const auto& r : *ranges) {
          inside += c.src >= r.begin && c.src + c.bytes <= r.begin + r.bytes;
        }
        EXPECT_EQ(inside, 1);
      }
    }
  }

  // Test memory (the heap) is never registrable.
  BufferModel bm = MakeBufferModel();
  auto heap_plan = HostCopyPlan::Build(*bm.model);
  ASSERT_TRUE(heap_plan.ok());
  EXPECT_EQ(host_tier_internal::RangesToRegister(*heap_plan, merged, page).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(HostTierMappingsTest, MemInfoAndFit) {
  auto mem = host_tier_internal::ParseMemInfo(
      "MemTotal:       16000000 kB\nMemFree:         1000 kB\nMemAvailable:    8000000 kB\n");
  ASSERT_TRUE(mem.ok()) << mem.status();
  EXPECT_EQ(mem->total_bytes, int64_t{16000000} * 1024);
  EXPECT_EQ(mem->available_bytes, int64_t{8000000} * 1024);
  EXPECT_FALSE(host_tier_internal::ParseMemInfo("MemTotal: 5 kB\n").ok());
  // Reserve: max(1 GiB, total / 16) = 1 GiB here.
  EXPECT_EQ(host_tier_internal::CheckFitsInHostMemory(int64_t{6} << 30, *mem), "");
  EXPECT_NE(host_tier_internal::CheckFitsInHostMemory(int64_t{7} << 30, *mem), "");
  host_tier_internal::HostMemory limited = *mem;
  limited.cgroup_free_bytes = int64_t{2} << 30;
  EXPECT_NE(host_tier_internal::CheckFitsInHostMemory(int64_t{3} << 30, limited), "");
  EXPECT_EQ(host_tier_internal::CheckFitsInHostMemory(int64_t{1} << 29, limited), "");
}

}  // namespace
}  // namespace moe::experts
