// CUDA face of sample_categorical (spec: dspark_sglang/ops/reference.py::sample_categorical_ref).
// One block of kThreads per row: thread t sums its contiguous chunk of the row in float64; thread 0 walks
// the chunk sums to the chunk holding u·total and then that chunk's entries (the CPU face's two passes).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops.h"

namespace dspark {
namespace {

constexpr int kThreads = 256;

__global__ void sample_categorical_kernel(const float* __restrict__ probs, const double* __restrict__ uniforms,
                                          int64_t* __restrict__ ids, int64_t V) {
  __shared__ double chunk_sums[kThreads];
  const int64_t row = blockIdx.x;
  const float* p = probs + row * V;
  const int64_t chunk = (V + kThreads - 1) / kThreads;
  const int64_t begin = min(V, threadIdx.x * chunk), end = min(V, begin + chunk);
  double s = 0.0;
  for (int64_t i = begin; i < end; ++i) s += static_cast<double>(p[i]);
  chunk_sums[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x != 0) return;
  double total = 0.0;
  for (int t = 0; t < kThreads; ++t) total += chunk_sums[t];
  if (!(total > 0.0) || !isfinite(total)) {
    ids[row] = -1;
    return;
  }
  const double x = uniforms[row] * total;
  double before = 0.0;
  int t = 0;
  while (t < kThreads - 1 && before + chunk_sums[t] <= x) before += chunk_sums[t++];
  double acc = before;
  for (int64_t i = min(V, t * chunk); i < V; ++i) {  // normally ends inside chunk t; past it only by rounding
    acc += static_cast<double>(p[i]);
    if (acc > x && p[i] > 0.f) {
      ids[row] = i;
      return;
    }
  }
  int64_t last = V - 1;
  while (last >= 0 && !(p[last] > 0.f)) --last;
  ids[row] = last;
}

}  // namespace

at::Tensor sample_categorical_cuda(const at::Tensor& probs_in, const at::Tensor& uniforms_in) {
  check_sample_categorical(probs_in, uniforms_in);
  const c10::cuda::CUDAGuard guard(probs_in.device());
  const auto probs = probs_in.contiguous();
  const auto uniforms = uniforms_in.contiguous();
  const int64_t N = probs.size(0), V = probs.size(1);
  auto ids = at::empty({N}, probs.options().dtype(at::kLong));
  if (N == 0) return ids;
  TORCH_CHECK(N <= 2147483647, "dspark.sample_categorical: probs.size(0) must be below 2^31 on CUDA; got ", N);
  sample_categorical_kernel<<<static_cast<unsigned>(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      probs.data_ptr<float>(), uniforms.data_ptr<double>(), ids.data_ptr<int64_t>(), V);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return ids;
}

}  // namespace dspark
