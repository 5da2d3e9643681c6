#include "engine/cuda/device_weights.h"

#include <cmath>
#include <cstring>

#include "kernels/tensor_map.h"
#include "kernels/weight_layout.h"

namespace moe::cuda {
namespace {

// Byte layout of one layer's allocation.
struct LayerLayout {
  int64_t router = 0, shared_gate = 0, shared_up = 0, shared_down = 0, experts = 0;
  int64_t expert_stride = 0, total = 0;
  int64_t router_bytes = 0, shared_proj_bytes = 0, proj_bytes = 0;
};

int64_t AlignUp(int64_t v) { return (v + 255) / 256 * 256; }

LayerLayout MakeLayout(const DeviceWeights& w, bool routed_experts) {
  LayerLayout l;
  const int64_t es = 2;
  l.router_bytes = static_cast<int64_t>(w.router_rows) * 2 * w.hidden * es;
  l.shared_proj_bytes = static_cast<int64_t>(w.shared_inter) * w.hidden * es;
  l.proj_bytes = static_cast<int64_t>(w.inter) * w.hidden * es;
  int64_t off = 0;
  l.router = off;
  off = AlignUp(off + l.router_bytes);
  l.shared_gate = off;
  off = AlignUp(off + l.shared_proj_bytes);
  l.shared_up = off;
  off = AlignUp(off + l.shared_proj_bytes);
  l.shared_down = off;
  off = AlignUp(off + l.shared_proj_bytes);
  l.experts = off;
  l.expert_stride = AlignUp(3 * l.proj_bytes);
  l.total = off + (routed_experts ? l.expert_stride * w.n_experts : 0);
  return l;
}

DeviceWeights Shape(const MoeSpec& spec) {
  DeviceWeights w;
  w.wtype = spec.weight_dtype == DType::kF16 ? WType::kF16 : WType::kBF16;
  w.n_layers = static_cast<int>(spec.moe_layers.size());
  w.n_experts = spec.n_experts();
  w.hidden = spec.hidden;
  w.inter = spec.moe_intermediate;
  w.shared_inter = spec.shared_intermediate;
  w.router_rows = spec.n_experts() + (spec.shared_expert_gate ? 1 : 0);
  w.has_bias = spec.routing.has_correction_bias;
  for (int i = 0; i < w.n_layers; ++i) w.layer_pos[spec.moe_layers[i]] = i;
  return w;
}

// Allocates the blobs and fills the pointer tables from the layout.
Status AllocateAndBuildTables(DeviceWeights& w, const LayerLayout& l, cudaStream_t stream) {
  const int64_t le = static_cast<int64_t>(w.n_layers) * w.n_experts;
  std::vector<const void*> gate(le), up(le), down(le), router(w.n_layers), sg(w.n_layers),
      su(w.n_layers), sd(w.n_layers);
  for (int i = 0; i < w.n_layers; ++i) {
    MOE_ASSIGN_OR_RETURN(DeviceBuffer blob, DeviceBuffer::Create(l.total));
    char* base = blob.as<char>();
    router[i] = base + l.router;
    sg[i] = base + l.shared_gate;
    su[i] = base + l.shared_up;
    sd[i] = base + l.shared_down;
    for (int e = 0; e < w.n_experts && w.routed_resident; ++e) {
      char* ex = base + l.experts + e * l.expert_stride;
      gate[i * w.n_experts + e] = ex;
      up[i * w.n_experts + e] = ex + l.proj_bytes;
      down[i * w.n_experts + e] = ex + 2 * l.proj_bytes;
    }
    w.device_bytes += l.total;
    w.blobs.push_back(std::move(blob));
  }
  auto upload = [&](DeviceBuffer& dst, const std::vector<const void*>& src) -> Status {
    MOE_ASSIGN_OR_RETURN(dst,
                         DeviceBuffer::Create(static_cast<int64_t>(src.size() * sizeof(void*))));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst.get(), src.data(), src.size() * sizeof(void*),
                                         cudaMemcpyHostToDevice, stream));
    w.device_bytes += dst.bytes();
    return absl::OkStatus();
  };
  MOE_RETURN_IF_ERROR(upload(w.gate_table, gate));
  MOE_RETURN_IF_ERROR(upload(w.up_table, up));
  MOE_RETURN_IF_ERROR(upload(w.down_table, down));
  MOE_RETURN_IF_ERROR(upload(w.router_table, router));
  MOE_RETURN_IF_ERROR(upload(w.shared_gate_table, sg));
  MOE_RETURN_IF_ERROR(upload(w.shared_up_table, su));
  MOE_RETURN_IF_ERROR(upload(w.shared_down_table, sd));
  MOE_ASSIGN_OR_RETURN(w.bias, DeviceBuffer::Create(le * static_cast<int64_t>(sizeof(float))));
  CUDA_RETURN_IF_ERROR(cudaMemsetAsync(w.bias.get(), 0, w.bias.bytes(), stream));
  w.device_bytes += w.bias.bytes();
  // The host vectors die here: wait for the copies out of them.
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return absl::OkStatus();
}

Status CheckTensor(const TensorView& t, DType dtype, int64_t rows, int64_t cols) {
  if (t.data == nullptr || t.shape.size() != 2 || t.dim(0) != rows || t.dim(1) != cols ||
      (dtype != DType::kF64 && t.dtype != dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", t.name, " must be ",
                                                   std::string(DTypeName(dtype)), " [", rows, ", ",
                                                   cols, "]"));
  }
  return absl::OkStatus();
}

Status CopyMatrix(const TensorView& t, void* dst, cudaStream_t stream) {
  CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst, t.data, static_cast<size_t>(t.nbytes), cudaMemcpyHostToDevice, stream));
  return absl::OkStatus();
}

}  // namespace

Status DeviceWeights::CheckSpec(const MoeSpec& spec) {
  if (spec.weight_dtype != DType::kBF16 && spec.weight_dtype != DType::kF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("the CUDA engine takes BF16 or F16 weights, not ",
                     std::string(DTypeName(spec.weight_dtype))));
  }
  if (spec.hidden <= 0 || spec.hidden % 8 != 0 || spec.moe_intermediate <= 0 ||
      spec.moe_intermediate % 8 != 0 || spec.shared_intermediate % 8 != 0) {
    return absl::InvalidArgumentError(
        "the CUDA engine needs hidden and intermediate sizes that are positive multiples of 8");
  }
  const RoutingSpec& r = spec.routing;
  if (r.n_experts <= 0 || r.n_experts > 1024 || r.top_k <= 0 || r.top_k > 32 ||
      r.top_k > r.n_experts) {
    return absl::InvalidArgumentError("the CUDA engine needs 1 <= top_k <= 32, n_experts <= 1024");
  }
  if (r.topk_method != TopkMethod::kGreedy &&
      (r.n_group <= 0 || r.n_group > 32 || r.n_experts % r.n_group != 0 || r.topk_group <= 0 ||
       r.topk_group > r.n_group || r.top_k > r.topk_group * (r.n_experts / r.n_group))) {
    return absl::InvalidArgumentError("bad group-limited routing parameters for the CUDA engine");
  }
  if (spec.moe_layers.empty()) return absl::InvalidArgumentError("the model has no MoE layer");
  return absl::OkStatus();
}

StatusOr<DeviceWeights> DeviceWeights::Upload(const Model& model, cudaStream_t stream,
                                              bool routed_experts) {
  const MoeSpec& spec = model.spec();
  MOE_RETURN_IF_ERROR(CheckSpec(spec));
  DeviceWeights w = Shape(spec);
  w.routed_resident = routed_experts;
  const LayerLayout l = MakeLayout(w, routed_experts);
  MOE_RETURN_IF_ERROR(AllocateAndBuildTables(w, l, stream));
  const DType wd = spec.weight_dtype;
  const int64_t h = w.hidden;
  std::vector<uint16_t> router(static_cast<size_t>(w.router_rows) * 2 * h);
  std::vector<float> row(static_cast<size_t>(h)), bias(static_cast<size_t>(w.n_experts));
  for (int i = 0; i < w.n_layers; ++i) {
    const MoeLayerWeights* layer = model.layer(spec.moe_layers[i]);
    if (layer == nullptr || static_cast<int>(layer->experts.size()) != w.n_experts) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", spec.moe_layers[i], " has no weights or the wrong expert count"));
    }
    char* base = w.blobs[i].as<char>();
    // Router (+ shared gate row), converted to the weight dtype, both halves.
    MOE_RETURN_IF_ERROR(CheckTensor(layer->router, layer->router.dtype, w.n_experts, h));
    auto put_row = [&](const void* src, DType dt, int r) {
      ConvertToF32(dt, src, row.data(), static_cast<size_t>(h));
      uint16_t* dst = router.data() + static_cast<size_t>(r) * 2 * h;
      ConvertFromF32(row.data(), wd, dst, static_cast<size_t>(h));
      std::memcpy(dst + h, dst, static_cast<size_t>(h) * 2);
    };
    for (int e = 0; e < w.n_experts; ++e) {
      put_row(static_cast<const char*>(layer->router.data) + e * h * DTypeSize(layer->router.dtype),
              layer->router.dtype, e);
    }
    if (spec.shared_expert_gate) {
      if (!layer->shared_gate || layer->shared_gate->numel() != h) {
        return absl::InvalidArgumentError(
            "Qwen2-MoE layer without a [1, hidden] shared_expert_gate");
      }
      put_row(layer->shared_gate->data, layer->shared_gate->dtype, w.n_experts);
    }
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(base + l.router, router.data(), router.size() * 2,
                                         cudaMemcpyHostToDevice, stream));
    if (w.has_bias) {
      if (!layer->correction_bias || layer->correction_bias->numel() != w.n_experts) {
        return absl::InvalidArgumentError("layer without its [n_experts] e_score_correction_bias");
      }
      ConvertToF32(layer->correction_bias->dtype, layer->correction_bias->data, bias.data(),
                   bias.size());
      CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(w.bias.as<float>() + static_cast<int64_t>(i) * w.n_experts, bias.data(),
                          bias.size() * 4, cudaMemcpyHostToDevice, stream));
    }
    if (w.shared_inter > 0) {
      if (!layer->shared) return absl::InvalidArgumentError("layer without its shared expert");
      MOE_RETURN_IF_ERROR(CheckTensor(layer->shared->gate, wd, w.shared_inter, h));
      MOE_RETURN_IF_ERROR(CheckTensor(layer->shared->up, wd, w.shared_inter, h));
      MOE_RETURN_IF_ERROR(CheckTensor(layer->shared->down, wd, h, w.shared_inter));
      MOE_RETURN_IF_ERROR(CopyMatrix(layer->shared->gate, base + l.shared_gate, stream));
      MOE_RETURN_IF_ERROR(CopyMatrix(layer->shared->up, base + l.shared_up, stream));
      MOE_RETURN_IF_ERROR(CopyMatrix(layer->shared->down, base + l.shared_down, stream));
    }
    for (int e = 0; e < w.n_experts; ++e) {
      const ExpertWeights& ex = layer->experts[e];
      MOE_RETURN_IF_ERROR(CheckTensor(ex.gate, wd, w.inter, h));
      MOE_RETURN_IF_ERROR(CheckTensor(ex.up, wd, w.inter, h));
      MOE_RETURN_IF_ERROR(CheckTensor(ex.down, wd, h, w.inter));
      if (!routed_experts) continue;  // the expert cache copies them on demand
      char* dst = base + l.experts + e * l.expert_stride;
      MOE_RETURN_IF_ERROR(CopyMatrix(ex.gate, dst, stream));
      MOE_RETURN_IF_ERROR(CopyMatrix(ex.up, dst + l.proj_bytes, stream));
      MOE_RETURN_IF_ERROR(CopyMatrix(ex.down, dst + 2 * l.proj_bytes, stream));
    }
    // `router` and `bias` are reused for the next layer.
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  }
  return w;
}

StatusOr<DeviceWeights> DeviceWeights::Random(const MoeSpec& spec, uint64_t seed,
                                              cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(CheckSpec(spec));
  DeviceWeights w = Shape(spec);
  const LayerLayout l = MakeLayout(w, /*routed_experts=*/true);
  MOE_RETURN_IF_ERROR(AllocateAndBuildTables(w, l, stream));
  const int64_t h = w.hidden;
  const float s_in = 1.0f / std::sqrt(static_cast<float>(h));
  for (int i = 0; i < w.n_layers; ++i) {
    char* base = w.blobs[i].as<char>();
    const uint64_t ls = seed * 1000003ull + static_cast<uint64_t>(i) * 7919ull;
    // Router: unit-variance logits for inputs uniform in [-1, 1]; the second half repeats the
    // first.
    MOE_RETURN_IF_ERROR(LaunchFillRandom(base + l.router, w.router_rows * 2 * h, w.wtype,
                                         3.0f * s_in, ls + 1, stream));
    CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(base + l.router + h * 2, 4 * h, base + l.router, 4 * h,
                                           2 * h, w.router_rows, cudaMemcpyDeviceToDevice, stream));
    if (w.shared_inter > 0) {
      const int64_t n = static_cast<int64_t>(w.shared_inter) * h;
      MOE_RETURN_IF_ERROR(LaunchFillRandom(base + l.shared_gate, n, w.wtype, s_in, ls + 2, stream));
      MOE_RETURN_IF_ERROR(LaunchFillRandom(base + l.shared_up, n, w.wtype, s_in, ls + 3, stream));
      MOE_RETURN_IF_ERROR(LaunchFillRandom(base + l.shared_down, n, w.wtype,
                                           1.0f / std::sqrt(static_cast<float>(w.shared_inter)),
                                           ls + 4, stream));
    }
    const int64_t n = static_cast<int64_t>(w.inter) * h;
    for (int e = 0; e < w.n_experts; ++e) {
      char* dst = base + l.experts + e * l.expert_stride;
      const uint64_t es = ls + 16 + 3ull * e;
      MOE_RETURN_IF_ERROR(LaunchFillRandom(dst, n, w.wtype, s_in, es, stream));
      MOE_RETURN_IF_ERROR(LaunchFillRandom(dst + l.proj_bytes, n, w.wtype, s_in, es + 1, stream));
      MOE_RETURN_IF_ERROR(LaunchFillRandom(dst + 2 * l.proj_bytes, n, w.wtype,
                                           1.0f / std::sqrt(static_cast<float>(w.inter)), es + 2,
                                           stream));
    }
    if (w.has_bias) {
      MOE_RETURN_IF_ERROR(
          LaunchFillRandomF32(w.bias.as<float>() + static_cast<int64_t>(i) * w.n_experts,
                              w.n_experts, 0.1f, ls + 5, stream));
    }
  }
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return w;
}

namespace {

// Routed matrix m of every (layer, expert) (0 gate, 1 up: [inter, hidden]; 2 down: [hidden,
// inter]): its device pointers, read back from the device table, and its shape.
struct RoutedMatrices {
  std::vector<const void*> ptrs;
  int64_t rows = 0, cols = 0;
};
StatusOr<RoutedMatrices> ReadRoutedMatrices(const DeviceWeights& w, int m) {
  const DeviceBuffer* tables[3] = {&w.gate_table, &w.up_table, &w.down_table};
  RoutedMatrices r;
  r.ptrs.resize(static_cast<size_t>(w.n_layers) * w.n_experts);
  CUDA_RETURN_IF_ERROR(cudaMemcpy(r.ptrs.data(), tables[m]->get(), r.ptrs.size() * sizeof(void*),
                                  cudaMemcpyDeviceToHost));
  r.rows = m < 2 ? w.inter : w.hidden;
  r.cols = m < 2 ? w.hidden : w.inter;
  return r;
}

}  // namespace

bool DeviceWeights::CanPack() const {
  return routed_resident && PackableShape(inter, hidden) && PackableShape(hidden, inter);
}

Status DeviceWeights::Pack(cudaStream_t stream) {
  if (packed) return absl::OkStatus();
  if (!CanPack()) {
    return absl::FailedPreconditionError(
        "DeviceWeights::Pack: needs resident routed experts and hidden, inter multiples of 128");
  }
  const int64_t elems = static_cast<int64_t>(inter) * hidden;
  MOE_ASSIGN_OR_RETURN(DeviceBuffer scratch, DeviceBuffer::Create(elems * 2));
  for (int m = 0; m < 3; ++m) {
    MOE_ASSIGN_OR_RETURN(const RoutedMatrices mats, ReadRoutedMatrices(*this, m));
    for (const void* p : mats.ptrs) {
      void* w = const_cast<void*>(p);  // the weights' own device memory
      MOE_RETURN_IF_ERROR(LaunchPackWeights(w, scratch.get(), mats.rows, mats.cols, stream));
      CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(w, scratch.get(), elems * 2, cudaMemcpyDeviceToDevice, stream));
    }
  }
  // The scratch buffer dies here: wait for the copies out of it.
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  packed = true;
  return absl::OkStatus();
}

Status DeviceWeights::BuildTensorMaps(cudaStream_t stream) {
  if (!routed_resident) {
    return absl::FailedPreconditionError("BuildTensorMaps: the routed experts are not resident");
  }
  const int64_t le = static_cast<int64_t>(n_layers) * n_experts;
  std::vector<uint8_t> maps(static_cast<size_t>(3 * le) * kTensorMapBytes);
  for (int m = 0; m < 3; ++m) {
    MOE_ASSIGN_OR_RETURN(const RoutedMatrices mats, ReadRoutedMatrices(*this, m));
    const int64_t rows = mats.rows, cols = mats.cols;
    const std::vector<const void*>& ptrs = mats.ptrs;
    for (int64_t i = 0; i < le; ++i) {
      uint8_t* out = maps.data() + (m * le + i) * kTensorMapBytes;
      if (packed) {  // [rows / 128][cols / 64][128][64], 128 x 64 boxes
        const int64_t dims[4] = {kPackedCols, kPackedRows, cols / kPackedCols, rows / kPackedRows};
        const int64_t strides[3] = {kPackedCols * 2, kPackedTileElems * 2,
                                    kPackedTileElems * 2 * (cols / kPackedCols)};
        const int box[4] = {kPackedCols, kPackedRows, 1, 1};
        MOE_RETURN_IF_ERROR(EncodeTensorMapNd(ptrs[i], wtype, 4, dims, strides, box,
                                              /*swizzle=*/false, out));
      } else {
        MOE_RETURN_IF_ERROR(EncodeWeightTensorMap(ptrs[i], wtype, rows, cols, cols, out));
      }
    }
  }
  MOE_ASSIGN_OR_RETURN(tensor_maps, DeviceBuffer::Create(static_cast<int64_t>(maps.size())));
  std::vector<const void*> map_ptrs[3];
  for (int m = 0; m < 3; ++m) {
    map_ptrs[m].resize(le);
    for (int64_t i = 0; i < le; ++i) {
      map_ptrs[m][i] = tensor_maps.as<char>() + (m * le + i) * kTensorMapBytes;
    }
  }
  CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(tensor_maps.get(), maps.data(), maps.size(), cudaMemcpyHostToDevice, stream));
  DeviceBuffer* map_tables[3] = {&gate_tmap_table, &up_tmap_table, &down_tmap_table};
  for (int m = 0; m < 3; ++m) {
    MOE_ASSIGN_OR_RETURN(*map_tables[m], DeviceBuffer::Create(le * sizeof(void*)));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(map_tables[m]->get(), map_ptrs[m].data(),
                                         le * sizeof(void*), cudaMemcpyHostToDevice, stream));
    device_bytes += map_tables[m]->bytes();
  }
  device_bytes += tensor_maps.bytes();
  // The host vectors die here: wait for the copies out of them.
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return absl::OkStatus();
}

}  // namespace moe::cuda
