// CUDA faces of verify_greedy and verify_sampled (spec: dspark_sglang/ops/reference.py).
// verify_greedy: one thread per request. verify_sampled: one block per request; the acceptance
// walk reads only p(x_k), q(x_k); the emitted token costs one pass over a V-row (block reduction).
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../counter_rng.h"
#include "../ops.h"
#include "reduce.cuh"

namespace dspark {
namespace {

constexpr int kThreads = 256;

__global__ void verify_greedy_kernel(const int64_t* __restrict__ draft, const int64_t* __restrict__ target,
                                     const int32_t* __restrict__ lens, int32_t* __restrict__ accept_lens,
                                     int64_t* __restrict__ out, int64_t R, int64_t gamma) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= R) return;
  const int64_t* dr = draft + r * gamma;
  const int64_t* tr = target + r * (gamma + 1);
  int64_t* o = out + r * (gamma + 1);
  int32_t k = 0;
  while (k < lens[r] && dr[k] == tr[k]) {
    o[k] = dr[k];
    ++k;
  }
  o[k] = tr[k];
  accept_lens[r] = k;
}

template <typename scalar_t>
__device__ int block_argmax_row(const scalar_t* __restrict__ p, int64_t V, ArgBest<float>* scratch) {
  ArgBest<float> mine{-INFINITY, 0};
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = static_cast<float>(p[i]);
    if (v > mine.value) mine = {v, static_cast<int>(i)};
  }
  return block_argbest(mine, scratch).idx;
}

template <typename scalar_t>
__global__ void verify_sampled_kernel(const int64_t* __restrict__ draft, const scalar_t* __restrict__ q_all,
                                      const scalar_t* __restrict__ p_all, const int32_t* __restrict__ lens,
                                      const bool* __restrict__ greedy, int32_t* __restrict__ accept_lens,
                                      int64_t* __restrict__ out, int64_t gamma, int64_t V, uint32_t base) {
  __shared__ ArgBest<float> scratch_f[kThreads / 32];
  __shared__ ArgBest<double> scratch_d[kThreads / 32];
  __shared__ int shared_k;
  __shared__ int shared_any_res;
  const int64_t r = blockIdx.x;
  const int64_t* dr = draft + r * gamma;
  const scalar_t* pr = p_all + r * (gamma + 1) * V;
  const scalar_t* qr = q_all + r * gamma * V;
  int64_t* o = out + r * (gamma + 1);
  const int32_t len = lens[r];
  int k = 0;
  int64_t emitted;
  if (greedy[r]) {
    for (;; ++k) {
      const int best = block_argmax_row(pr + k * V, V, scratch_f);
      if (k == len || dr[k] != best) {
        emitted = best;
        break;
      }
    }
  } else {
    if (threadIdx.x == 0) {
      int j = 0;
      for (; j < len; ++j) {
        const int64_t x = dr[j];
        const double px = static_cast<double>(pr[j * V + x]);
        const double qx = static_cast<double>(qr[j * V + x]);
        if (!(coin(base, static_cast<uint32_t>(r), static_cast<uint32_t>(j)) * qx < px)) break;
      }
      shared_k = j;
      shared_any_res = 0;
    }
    __syncthreads();
    k = shared_k;
    const scalar_t* p = pr + k * V;
    const scalar_t* q = k < len ? qr + k * V : nullptr;  // rejected: residual race; else bonus from p
    const uint32_t key = pos_key(base, static_cast<uint32_t>(r), static_cast<uint32_t>(k), 1);
    ArgBest<double> best_p{0.0, 0}, best_res{0.0, 0};
    bool any_res = false;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      const double pi = static_cast<double>(p[i]);
      if (!(pi > 0.0)) continue;
      const double res = q != nullptr ? pi - static_cast<double>(q[i]) : 0.0;
      any_res = any_res || res > 0.0;
      const double u = uniform_from_hash(mix32(key ^ static_cast<uint32_t>(i)));
      if (cannot_beat(u, pi, best_p.value) && (!(res > 0.0) || cannot_beat(u, res, best_res.value))) continue;
      const double e = -log(u);  // E_i ~ Exp(1)
      if (pi / e > best_p.value) best_p = {pi / e, static_cast<int>(i)};
      if (res > 0.0 && res / e > best_res.value) best_res = {res / e, static_cast<int>(i)};
    }
    if (any_res) shared_any_res = 1;  // benign race: every writer stores 1
    best_p = block_argbest(best_p, scratch_d);
    best_res = block_argbest(best_res, scratch_d);
    emitted = shared_any_res ? best_res.idx : best_p.idx;
  }
  if (threadIdx.x == 0) {
    for (int j = 0; j < k; ++j) o[j] = dr[j];
    o[k] = emitted;
    accept_lens[r] = k;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> verify_greedy_cuda(const at::Tensor& draft_ids, const at::Tensor& target_ids,
                                                      const at::Tensor& verify_lens) {
  check_verify_greedy(draft_ids, target_ids, verify_lens);
  const c10::cuda::CUDAGuard guard(draft_ids.device());
  const auto draft = draft_ids.contiguous();
  const auto target = target_ids.contiguous();
  const auto lens = verify_lens.contiguous();
  const int64_t R = draft.size(0), gamma = draft.size(1);
  auto accept_lens = at::empty({R}, lens.options());
  auto out_ids = at::full({R, gamma + 1}, -1, draft.options());
  if (R == 0) return {accept_lens, out_ids};
  const int blocks = static_cast<int>((R + kThreads - 1) / kThreads);
  verify_greedy_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      draft.data_ptr<int64_t>(), target.data_ptr<int64_t>(), lens.data_ptr<int32_t>(),
      accept_lens.data_ptr<int32_t>(), out_ids.data_ptr<int64_t>(), R, gamma);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {accept_lens, out_ids};
}

std::tuple<at::Tensor, at::Tensor> verify_sampled_cuda(const at::Tensor& draft_ids, const at::Tensor& draft_probs,
                                                       const at::Tensor& target_probs, const at::Tensor& verify_lens,
                                                       const at::Tensor& is_greedy, int64_t seed, int64_t offset) {
  check_verify_sampled(draft_ids, draft_probs, target_probs, verify_lens, is_greedy, seed, offset);
  const c10::cuda::CUDAGuard guard(draft_ids.device());
  const auto draft = draft_ids.contiguous();
  const auto q_all = draft_probs.contiguous();
  const auto p_all = target_probs.contiguous();
  const auto lens = verify_lens.contiguous();
  const auto greedy = is_greedy.contiguous();
  const int64_t R = draft.size(0), gamma = draft.size(1), V = p_all.size(2);
  auto accept_lens = at::empty({R}, lens.options());
  auto out_ids = at::full({R, gamma + 1}, -1, draft.options());
  if (R == 0) return {accept_lens, out_ids};
  const uint32_t base = base_key(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p_all.scalar_type(), "verify_sampled_cuda", [&] {
    verify_sampled_kernel<scalar_t><<<static_cast<unsigned>(R), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        draft.data_ptr<int64_t>(), q_all.data_ptr<scalar_t>(), p_all.data_ptr<scalar_t>(), lens.data_ptr<int32_t>(),
        greedy.data_ptr<bool>(), accept_lens.data_ptr<int32_t>(), out_ids.data_ptr<int64_t>(), gamma, V, base);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {accept_lens, out_ids};
}

}  // namespace dspark
