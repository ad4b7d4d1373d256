// CPU face of confidence_survival (spec: dspark_sglang/ops/reference.py::confidence_survival_ref).
#include <cmath>

#include "../ops.h"

namespace dspark {

std::tuple<at::Tensor, at::Tensor> confidence_survival_cpu(const at::Tensor& conf_logits,
                                                           const at::Tensor& sts_temperatures, double threshold) {
  check_confidence_survival(conf_logits, sts_temperatures, threshold);
  const auto logits = conf_logits.contiguous();
  const auto temps = sts_temperatures.contiguous();
  const int64_t R = logits.size(0), gamma = logits.size(1);
  auto survival = at::empty({R, gamma}, logits.options());
  auto threshold_lens = at::empty({R}, logits.options().dtype(at::kInt));
  const float* x = logits.data_ptr<float>();
  const float* t = temps.data_ptr<float>();
  float* a = survival.data_ptr<float>();
  int32_t* lens = threshold_lens.data_ptr<int32_t>();
  const float thr = static_cast<float>(threshold);
  for (int64_t r = 0; r < R; ++r) {
    float prod = 1.0f;
    int32_t len = 0;
    bool open = true;  // still inside the leading run of c >= threshold
    for (int64_t k = 0; k < gamma; ++k) {
      const float c = 1.0f / (1.0f + std::exp(-(x[r * gamma + k] / t[k])));  // c_k = σ(logit_k / T_k)
      prod *= c;                                                              // a_k = Π_{i<=k} c_i
      a[r * gamma + k] = prod;
      open = open && c >= thr;
      len += open;
    }
    lens[r] = len;
  }
  return {survival, threshold_lens};
}

}  // namespace dspark
