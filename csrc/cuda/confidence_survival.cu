// CUDA face of confidence_survival (spec: dspark_sglang/ops/reference.py::confidence_survival_ref).
// One thread per request: γ is small (≤ 64) and the walk is a running product.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops.h"

namespace dspark {
namespace {

__global__ void confidence_survival_kernel(const float* __restrict__ logits, const float* __restrict__ temps,
                                           float* __restrict__ survival, int32_t* __restrict__ lens, int64_t R,
                                           int64_t gamma, float threshold) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= R) return;
  float prod = 1.0f;
  int32_t len = 0;
  bool open = true;
  for (int64_t k = 0; k < gamma; ++k) {
    const float c = 1.0f / (1.0f + expf(-(logits[r * gamma + k] / temps[k])));  // c_k = σ(logit_k / T_k)
    prod *= c;                                                                 // a_k = Π_{i<=k} c_i
    survival[r * gamma + k] = prod;
    open = open && c >= threshold;
    len += open;
  }
  lens[r] = len;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> confidence_survival_cuda(const at::Tensor& conf_logits,
                                                            const at::Tensor& sts_temperatures, double threshold) {
  check_confidence_survival(conf_logits, sts_temperatures, threshold);
  const c10::cuda::CUDAGuard guard(conf_logits.device());
  const auto logits = conf_logits.contiguous();
  const auto temps = sts_temperatures.contiguous();
  const int64_t R = logits.size(0), gamma = logits.size(1);
  auto survival = at::empty({R, gamma}, logits.options());
  auto threshold_lens = at::empty({R}, logits.options().dtype(at::kInt));
  if (R == 0) return {survival, threshold_lens};
  constexpr int kThreads = 128;
  confidence_survival_kernel<<<static_cast<unsigned>((R + kThreads - 1) / kThreads), kThreads, 0,
                               c10::cuda::getCurrentCUDAStream()>>>(
      logits.data_ptr<float>(), temps.data_ptr<float>(), survival.data_ptr<float>(),
      threshold_lens.data_ptr<int32_t>(), R, gamma, static_cast<float>(threshold));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {survival, threshold_lens};
}

}  // namespace dspark
