// Model: the parts that do not touch files (Open() lives in loader.cc).
#include "moe/model/model.h"

#include <algorithm>

namespace moe {

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Model::~Model() = default;

std::unique_ptr<Model> Model::FromWeights(MoeSpec spec, std::vector<MoeLayerWeights> layers,
                                          std::shared_ptr<const void> keepalive) {
  std::unique_ptr<Model> model(new Model());
  model->spec_ = std::move(spec);
  model->layers_ = std::move(layers);
  std::sort(model->layers_.begin(), model->layers_.end(),
            [](const MoeLayerWeights& a, const MoeLayerWeights& b) { return a.layer < b.layer; });
  for (size_t i = 0; i < model->layers_.size(); ++i) model->index_[model->layers_[i].layer] = i;
  model->keepalive_ = std::move(keepalive);
  return model;
}

const MoeLayerWeights* Model::layer(int layer) const {
  auto it = index_.find(layer);
  return it == index_.end() ? nullptr : &layers_[it->second];
}

}  // namespace moe
