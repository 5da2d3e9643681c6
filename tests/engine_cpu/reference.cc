#include "engine_cpu/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "moe/common/dtype.h"

namespace moe::testing {
namespace {

std::vector<double> ToDouble(const TensorView& t) {
  std::vector<float> f(static_cast<size_t>(t.numel()));
  ConvertToF32(t.dtype, t.data, f.data(), f.size());
  return std::vector<double>(f.begin(), f.end());
}

// Indices of `v` sorted by (value descending, index ascending).
std::vector<int> SortedDesc(const std::vector<double>& v) {
  std::vector<int> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&v](int a, int b) {
    return v[static_cast<size_t>(a)] > v[static_cast<size_t>(b)];
  });
  return idx;
}

double Gap(double a, double b) {
  if (std::isinf(a) && std::isinf(b)) return 0.0;
  return std::fabs(a - b);
}

struct DenseFfn {
  int64_t inter = 0;
  std::vector<double> gate, up, down;  // [inter, h], [inter, h], [h, inter]
};

DenseFfn Dense(const ExpertWeights& w) {
  return {w.gate.dim(0), ToDouble(w.gate), ToDouble(w.up), ToDouble(w.down)};
}

// y [h] += scale * down(silu(gate(x)) * up(x)).
void AddFfn(const DenseFfn& f, const double* x, int64_t h, double scale, double* y) {
  std::vector<double> act(static_cast<size_t>(f.inter));
  for (int64_t j = 0; j < f.inter; ++j) {
    double g = 0, u = 0;
    for (int64_t i = 0; i < h; ++i) {
      g += x[i] * f.gate[static_cast<size_t>(j * h + i)];
      u += x[i] * f.up[static_cast<size_t>(j * h + i)];
    }
    act[static_cast<size_t>(j)] = g / (1.0 + std::exp(-g)) * u;
  }
  for (int64_t i = 0; i < h; ++i) {
    double s = 0;
    for (int64_t j = 0; j < f.inter; ++j)
      s += f.down[static_cast<size_t>(i * f.inter + j)] * act[static_cast<size_t>(j)];
    y[i] += scale * s;
  }
}

}  // namespace

ReferenceRouting ReferenceRoute(const RoutingSpec& spec, const std::vector<double>& logits,
                                const float* bias, int64_t n) {
  const int e_count = spec.n_experts;
  const int k = spec.top_k;
  ReferenceRouting r;
  r.ids.resize(static_cast<size_t>(n * k));
  r.weights.resize(static_cast<size_t>(n * k));
  r.margin.assign(static_cast<size_t>(n), std::numeric_limits<double>::infinity());
  for (int64_t t = 0; t < n; ++t) {
    const double* l = logits.data() + t * e_count;
    std::vector<double> scores(static_cast<size_t>(e_count));
    if (spec.scoring == ScoringFunc::kSigmoid) {
      for (int e = 0; e < e_count; ++e)
        scores[static_cast<size_t>(e)] = 1.0 / (1.0 + std::exp(-l[e]));
    } else {
      const double mx = *std::max_element(l, l + e_count);
      double sum = 0;
      for (int e = 0; e < e_count; ++e) sum += scores[static_cast<size_t>(e)] = std::exp(l[e] - mx);
      for (double& s : scores) s /= sum;
    }
    std::vector<double> select = scores;
    if (bias != nullptr) {
      for (int e = 0; e < e_count; ++e) select[static_cast<size_t>(e)] += bias[e];
    }
    double& margin = r.margin[static_cast<size_t>(t)];
    std::vector<bool> kept(static_cast<size_t>(e_count), true);
    if (spec.topk_method != TopkMethod::kGreedy && spec.topk_group < spec.n_group) {
      const int gs = e_count / spec.n_group;
      std::vector<double> group(static_cast<size_t>(spec.n_group));
      for (int g = 0; g < spec.n_group; ++g) {
        std::vector<double> members(select.begin() + g * gs, select.begin() + (g + 1) * gs);
        std::sort(members.rbegin(), members.rend());
        group[static_cast<size_t>(g)] = spec.topk_method == TopkMethod::kGroupLimitedGreedy
                                            ? members[0]
                                            : members[0] + (gs > 1 ? members[1] : 0.0);
      }
      const std::vector<int> order = SortedDesc(group);
      margin = std::min(
          margin, Gap(group[static_cast<size_t>(order[static_cast<size_t>(spec.topk_group - 1)])],
                      group[static_cast<size_t>(order[static_cast<size_t>(spec.topk_group)])]));
      std::vector<bool> group_kept(static_cast<size_t>(spec.n_group), false);
      for (int i = 0; i < spec.topk_group; ++i)
        group_kept[static_cast<size_t>(order[static_cast<size_t>(i)])] = true;
      const double masked =
          spec.topk_method == TopkMethod::kNoAuxTc ? -std::numeric_limits<double>::infinity() : 0.0;
      for (int e = 0; e < e_count; ++e) {
        if (!group_kept[static_cast<size_t>(e / gs)]) {
          kept[static_cast<size_t>(e)] = false;
          select[static_cast<size_t>(e)] = masked;
        }
      }
    }
    const std::vector<int> order = SortedDesc(select);
    for (int j = 0; j < k && j + 1 < e_count; ++j) {  // consecutive chosen, and k-th vs next
      margin =
          std::min(margin, Gap(select[static_cast<size_t>(order[static_cast<size_t>(j)])],
                               select[static_cast<size_t>(order[static_cast<size_t>(j + 1)])]));
    }
    double sum = 0;
    for (int j = 0; j < k; ++j) {
      const int e = order[static_cast<size_t>(j)];
      double w = scores[static_cast<size_t>(e)];
      if (spec.topk_method == TopkMethod::kGroupLimitedGreedy && !kept[static_cast<size_t>(e)])
        w = 0.0;
      r.ids[static_cast<size_t>(t * k + j)] = e;
      r.weights[static_cast<size_t>(t * k + j)] = w;
      sum += w;
    }
    for (int j = 0; j < k; ++j) {
      double& w = r.weights[static_cast<size_t>(t * k + j)];
      if (spec.norm_topk_prob) w /= sum + 1e-20;
      w *= spec.routed_scaling_factor;
    }
  }
  return r;
}

ReferenceOutput ReferenceForward(const Model& model, int layer, const std::vector<float>& x,
                                 int64_t n) {
  const MoeSpec& spec = model.spec();
  const MoeLayerWeights& w = *model.layer(layer);
  const int64_t h = spec.hidden;
  const int e_count = spec.n_experts();
  const int k = spec.top_k();
  const std::vector<double> router = ToDouble(w.router);
  std::vector<double> xd(x.begin(), x.end());
  std::vector<double> logits(static_cast<size_t>(n * e_count));
  for (int64_t t = 0; t < n; ++t) {
    for (int e = 0; e < e_count; ++e) {
      double s = 0;
      for (int64_t i = 0; i < h; ++i)
        s += xd[static_cast<size_t>(t * h + i)] * router[static_cast<size_t>(e * h + i)];
      logits[static_cast<size_t>(t * e_count + e)] = s;
    }
  }
  std::vector<float> bias;
  if (spec.routing.has_correction_bias && w.correction_bias) {
    bias.resize(static_cast<size_t>(e_count));
    ConvertToF32(w.correction_bias->dtype, w.correction_bias->data, bias.data(), bias.size());
  }
  ReferenceOutput out;
  out.routing = ReferenceRoute(spec.routing, logits, bias.empty() ? nullptr : bias.data(), n);
  out.out.assign(static_cast<size_t>(n * h), 0.0);
  std::vector<DenseFfn> experts;
  for (const ExpertWeights& e : w.experts) experts.push_back(Dense(e));
  const bool has_shared = w.shared.has_value();
  DenseFfn shared = has_shared ? Dense(*w.shared) : DenseFfn{};
  const std::vector<double> shared_gate =
      w.shared_gate ? ToDouble(*w.shared_gate) : std::vector<double>{};
  for (int64_t t = 0; t < n; ++t) {
    const double* xt = xd.data() + t * h;
    double* yt = out.out.data() + t * h;
    for (int j = 0; j < k; ++j) {
      AddFfn(experts[static_cast<size_t>(out.routing.ids[static_cast<size_t>(t * k + j)])], xt, h,
             out.routing.weights[static_cast<size_t>(t * k + j)], yt);
    }
    if (has_shared) {
      double s = 1.0;
      if (spec.shared_expert_gate) {
        double g = 0;
        for (int64_t i = 0; i < h; ++i) g += xt[i] * shared_gate[static_cast<size_t>(i)];
        s = 1.0 / (1.0 + std::exp(-g));
      }
      AddFfn(shared, xt, h, s, yt);
    }
  }
  return out;
}

}  // namespace moe::testing
