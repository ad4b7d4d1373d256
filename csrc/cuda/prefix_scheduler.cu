// CUDA faces of schedule_prefix (DSpark Algorithm 1) and schedule_topk
// (spec: dspark_sglang/ops/reference.py). One block: candidates get uint64 keys as on the CPU
// (~bits(a) << 32 | j << 24 | r), are ranked by counting (keys are unique), and thread 0 walks the
// admission path sequentially in double precision so that Θ and the stop point match the CPU exactly.
// Cost is O(N²/threads) for N = R·(max_len − min_len) candidates: fine for N up to ~10^4.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops.h"

namespace dspark {
namespace {

constexpr int kThreads = 1024;
constexpr int kChunk = 2048;  // sorted survivals staged in shared memory per sequential pass
constexpr uint64_t kInvalid = ~uint64_t{0};

__device__ __forceinline__ double key_value(uint64_t key) {
  return static_cast<double>(__uint_as_float(~static_cast<uint32_t>(key >> 32)));
}

// Builds keys[n] for n = R·width candidates and writes the valid ones (a > 0) in sorted order to
// sorted[0 .. num_valid). Returns num_valid to every thread.
__device__ int sort_candidates(const float* __restrict__ a, int64_t R, int64_t gamma, int64_t min_len, int64_t width,
                               uint64_t* __restrict__ keys, uint64_t* __restrict__ sorted) {
  __shared__ int num_valid;
  if (threadIdx.x == 0) num_valid = 0;
  __syncthreads();
  const int64_t n = R * width;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t r = i / width, j = min_len + i % width;
    const float v = a[r * gamma + j];
    if (v > 0.0f) {
      keys[i] = (static_cast<uint64_t>(~__float_as_uint(v)) << 32) | (static_cast<uint64_t>(j) << 24) |
                static_cast<uint64_t>(r);
      atomicAdd(&num_valid, 1);
    } else {
      keys[i] = kInvalid;  // DSpark Alg. 1: only a > 0 are candidates
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const uint64_t mine = keys[i];
    if (mine == kInvalid) continue;
    int64_t rank = 0;
    for (int64_t t = 0; t < n; ++t) rank += keys[t] < mine;
    sorted[rank] = mine;
  }
  __syncthreads();
  return num_valid;
}

__device__ void admit(const uint64_t* __restrict__ sorted, int64_t num_admitted, int32_t* __restrict__ lens, int64_t R,
                      int64_t min_len) {
  for (int64_t r = threadIdx.x; r < R; r += blockDim.x) lens[r] = static_cast<int32_t>(min_len);
  __syncthreads();
  for (int64_t i = threadIdx.x; i < num_admitted; i += blockDim.x) {
    const uint64_t key = sorted[i];
    atomicMax(&lens[key & 0xFFFFFF], static_cast<int32_t>(((key >> 24) & 0xFF) + 1));
  }
}

__global__ void schedule_prefix_kernel(const float* __restrict__ a, const double* __restrict__ sps, int64_t R,
                                       int64_t gamma, int64_t min_len, int64_t max_len, int global,
                                       uint64_t* __restrict__ keys, uint64_t* __restrict__ sorted,
                                       int32_t* __restrict__ lens, double* __restrict__ theta_out) {
  __shared__ double values[kChunk];
  __shared__ double tau_s, best_s;
  __shared__ int64_t admitted_s;
  __shared__ int stopped_s;
  const int num_valid = sort_candidates(a, R, gamma, min_len, max_len - min_len, keys, sorted);
  if (threadIdx.x == 0) {
    double tau = static_cast<double>(R);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < min_len; ++j) tau += static_cast<double>(a[r * gamma + j]);
    tau_s = tau;
    best_s = tau * sps[R * (1 + min_len)];
    admitted_s = 0;
    stopped_s = 0;
  }
  __syncthreads();
  for (int start = 0; start < num_valid && !stopped_s; start += kChunk) {
    const int count = min(kChunk, num_valid - start);
    for (int i = threadIdx.x; i < count; i += blockDim.x) values[i] = key_value(sorted[start + i]);
    __syncthreads();
    if (threadIdx.x == 0) {
      double tau = tau_s, best = best_s;
      int64_t B = R * (1 + min_len) + start;
      for (int i = 0; i < count; ++i) {
        tau += values[i];  // admit (r, j): ℓ_r = j+1, B += 1, τ* += a_{r,j}
        const double theta = tau * sps[++B];
        if (theta > best) {
          best = theta;
          admitted_s = start + i + 1;
        } else if (!global) {
          stopped_s = 1;  // lossless early stop at the first non-improvement
          break;
        }
      }
      tau_s = tau;
      best_s = best;
    }
    __syncthreads();
  }
  admit(sorted, admitted_s, lens, R, min_len);
  if (threadIdx.x == 0) *theta_out = best_s;
}

__global__ void schedule_topk_kernel(const float* __restrict__ a, int64_t R, int64_t gamma, int64_t min_len,
                                     int64_t max_len, int64_t budget, uint64_t* __restrict__ keys,
                                     uint64_t* __restrict__ sorted, int32_t* __restrict__ lens) {
  const int num_valid = sort_candidates(a, R, gamma, min_len, max_len - min_len, keys, sorted);
  int64_t extra = budget - R * min_len;
  extra = extra < 0 ? 0 : (extra > num_valid ? num_valid : extra);
  admit(sorted, extra, lens, R, min_len);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> schedule_prefix_cuda(const at::Tensor& survival, const at::Tensor& sps_table,
                                                        int64_t min_len, int64_t max_len, std::string mode) {
  check_schedule("schedule_prefix", survival, min_len, max_len);
  check_sps_table(sps_table, survival.size(0), max_len);
  TORCH_CHECK(sps_table.device() == survival.device(), "dspark.schedule_prefix: sps_table must be on ",
              survival.device(), " like survival; got ", sps_table.device());
  const int global = schedule_mode_from_string(mode);
  const c10::cuda::CUDAGuard guard(survival.device());
  const auto surv = survival.contiguous();
  const auto sps = sps_table.to(at::kDouble).contiguous();
  const int64_t R = surv.size(0), gamma = surv.size(1);
  const int64_t n = std::max<int64_t>(R * (max_len - min_len), 1);
  auto scratch = at::empty({2 * n}, surv.options().dtype(at::kLong));
  auto lens = at::empty({R}, surv.options().dtype(at::kInt));
  auto theta = at::empty({}, surv.options().dtype(at::kDouble));
  auto* keys = reinterpret_cast<uint64_t*>(scratch.data_ptr<int64_t>());
  schedule_prefix_kernel<<<1, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      surv.data_ptr<float>(), sps.data_ptr<double>(), R, gamma, min_len, max_len, global, keys, keys + n,
      lens.data_ptr<int32_t>(), theta.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {lens, theta};
}

at::Tensor schedule_topk_cuda(const at::Tensor& survival, int64_t budget, int64_t min_len, int64_t max_len) {
  check_schedule("schedule_topk", survival, min_len, max_len);
  TORCH_CHECK(budget >= 0, "dspark.schedule_topk: budget (total draft tokens to verify) must be >= 0; got ", budget);
  const c10::cuda::CUDAGuard guard(survival.device());
  const auto surv = survival.contiguous();
  const int64_t R = surv.size(0), gamma = surv.size(1);
  const int64_t n = std::max<int64_t>(R * (max_len - min_len), 1);
  auto scratch = at::empty({2 * n}, surv.options().dtype(at::kLong));
  auto lens = at::empty({R}, surv.options().dtype(at::kInt));
  auto* keys = reinterpret_cast<uint64_t*>(scratch.data_ptr<int64_t>());
  schedule_topk_kernel<<<1, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      surv.data_ptr<float>(), R, gamma, min_len, max_len, budget, keys, keys + n, lens.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return lens;
}

}  // namespace dspark
