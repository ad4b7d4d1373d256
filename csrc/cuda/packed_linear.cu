// CUDA face of packed_linear (spec: dspark_sglang/ops/reference.py::packed_linear_ref).
// One thread per output (m, n): consecutive threads take consecutive columns of a 16-column block, so their
// weight reads ((q·16 + j)·P + p) are contiguous. fp32 accumulation over K in the CPU face's order. Kept
// simple: on a GPU SGLang's own GEMMs serve the target; this face exists so the op means the same on both.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>

#include "../ops.h"

namespace dspark {
namespace {

constexpr int64_t kCols = 16;

__device__ inline float as_float(float v) { return v; }
__device__ inline float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline void store(float* p, float v) { *p = v; }
__device__ inline void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <typename T>
__global__ void packed_linear_kernel(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ bias,
                                     T* __restrict__ y, int64_t K, int64_t Kq, int64_t P, int64_t N) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t m = blockIdx.y;
  if (n >= N) return;
  const int64_t b = n / kCols, j = n % kCols;
  const T* wb = w + b * Kq * kCols * P;
  const T* xm = x + m * K;  // x is contiguous [M, K]
  float acc = 0.f;
  for (int64_t q = 0; q < Kq; ++q)
    for (int64_t p = 0; p < P; ++p) {
      const int64_t k = q * P + p;
      if (k < K) acc += as_float(xm[k]) * as_float(wb[(q * kCols + j) * P + p]);
    }
  store(y + m * N + n, acc + (bias ? bias[n] : 0.f));
}

}  // namespace

at::Tensor packed_linear_cuda(const at::Tensor& x_in, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                              int64_t out_features) {
  check_packed_linear(x_in, packed, bias, out_features);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = out_features;
  const int64_t P = x.scalar_type() == at::kBFloat16 ? 2 : 1, Kq = packed.size(1) / P;
  auto y = at::empty({M, N}, x.options());
  if (M == 0) return y;
  TORCH_CHECK(M <= 65535, "dspark.packed_linear: x.size(0) must be at most 65535 on CUDA; got ", M);
  const auto bias_f = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* b = bias.has_value() ? bias_f.data_ptr<float>() : nullptr;
  constexpr int kThreads = 128;
  const dim3 grid(static_cast<unsigned>((N + kThreads - 1) / kThreads), static_cast<unsigned>(M));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (x.scalar_type() == at::kBFloat16) {
    packed_linear_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(
        reinterpret_cast<const __nv_bfloat16*>(x.data_ptr<at::BFloat16>()),
        reinterpret_cast<const __nv_bfloat16*>(packed.data_ptr<at::BFloat16>()), b,
        reinterpret_cast<__nv_bfloat16*>(y.data_ptr<at::BFloat16>()), K, Kq, P, N);
  } else {
    packed_linear_kernel<float><<<grid, kThreads, 0, stream>>>(x.data_ptr<float>(), packed.data_ptr<float>(), b,
                                                               y.data_ptr<float>(), K, Kq, P, N);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

}  // namespace dspark
