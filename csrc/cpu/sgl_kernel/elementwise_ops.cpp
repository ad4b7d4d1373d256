// sgl_kernel's row-wise CPU ops for the decoder layer's small steps: rmsnorm_cpu, fused_add_rmsnorm_cpu,
// silu_and_mul_cpu and rotary_embedding_cpu (schemas as sgl-kernel's CPU build declares them).
//
// SGLang's CPU engine calls these only with AMX; without it each step is a chain of eager ATen ops
// (RMSNorm ≈ 10, rotary ≈ 15, SiluAndMul 3 per layer), whose dispatch costs more than the arithmetic at
// decode row counts. dspark_sglang/serving/cpu_host/fused_layers.py routes the layers here on CPU hosts.
// Every op reads bf16 / fp16 / fp32, computes in fp32 and rounds once; rows are independent (a row's
// output does not depend on the other rows of the call).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "common.h"
#include "vec16.h"

namespace sgl_cpu {
namespace {

using vec::kLanes;
using vec::v16;
using vec::vi16;
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

// 16 lanes of T <-> fp32 (bf16 by its bits; fp16 through at::Half, lane by lane)
template <typename T>
DSPARK_INLINE v16 load_f32(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return vec::load16(p);
  } else if constexpr (std::is_same_v<T, at::BFloat16>) {
    u16x16 bits;
    std::memcpy(&bits, p, sizeof(bits));
    return std::bit_cast<v16>(__builtin_convertvector(bits, vi16) << 16);
  } else {
    v16 v;
    for (int64_t i = 0; i < kLanes; ++i) v[i] = static_cast<float>(p[i]);
    return v;
  }
}

template <typename T>
DSPARK_INLINE void store_from_f32(T* p, v16 v) {
  if constexpr (std::is_same_v<T, float>) {
    vec::store16(p, v);
  } else if constexpr (std::is_same_v<T, at::BFloat16>) {
    const u32x16 bits = std::bit_cast<u32x16>(v);
    const u32x16 rounded = (bits + (0x7FFFu + ((bits >> 16) & 1u))) >> 16;    // round to nearest even
    const u32x16 out = (bits & 0x7FFFFFFFu) > 0x7F800000u ? u32x16{} + 0x7FC0u : rounded;  // NaN stays NaN
    const u16x16 narrow = __builtin_convertvector(out, u16x16);
    std::memcpy(p, &narrow, sizeof(narrow));
  } else {
    for (int64_t i = 0; i < kLanes; ++i) p[i] = static_cast<T>(v[i]);
  }
}

// y[j] = x[j] (+ r[j], written back to r) normalised by the row's RMS, times w[j]: n columns.
template <typename T, bool kAddResidual>
DSPARK_CPU_CLONES void rmsnorm_row(T* y, const T* x, T* r, const T* w, int64_t n, float eps, float* sum_buf) {
  v16 ss{};
  float ss_tail = 0.f;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    v16 v = load_f32(x + j);
    if constexpr (kAddResidual) {
      v += load_f32(r + j);
      store_from_f32(r + j, v);
      vec::store16(sum_buf + j, v);
    }
    ss += v * v;
  }
  for (; j < n; ++j) {
    float v = static_cast<float>(x[j]);
    if constexpr (kAddResidual) {
      v += static_cast<float>(r[j]);
      r[j] = static_cast<T>(v);
      sum_buf[j] = v;
    }
    ss_tail += v * v;
  }
  float total = ss_tail;
  for (int64_t i = 0; i < kLanes; ++i) total += ss[i];
  const float scale = 1.f / std::sqrt(total / static_cast<float>(n) + eps);
  j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const v16 v = kAddResidual ? vec::load16(sum_buf + j) : load_f32(x + j);
    store_from_f32(y + j, v * scale * load_f32(w + j));
  }
  for (; j < n; ++j) {
    const float v = kAddResidual ? sum_buf[j] : static_cast<float>(x[j]);
    y[j] = static_cast<T>(v * scale * static_cast<float>(w[j]));
  }
}

// silu(a) · b over one row: a = x[0, d), b = x[d, 2d).
template <typename T>
DSPARK_CPU_CLONES void silu_and_mul_row(T* y, const T* x, int64_t d) {
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes) {
    const v16 a = load_f32(x + j), b = load_f32(x + d + j);
    const v16 t = vec::exp_nonpositive(a > 0.f ? -a : a);                   // e^{-|a|} in (0, 1]
    const v16 sig = a > 0.f ? 1.f / (1.f + t) : t / (1.f + t);             // σ(a), no overflow
    store_from_f32(y + j, a * sig * b);
  }
  for (; j < d; ++j) {
    const float a = static_cast<float>(x[j]), b = static_cast<float>(x[d + j]);
    y[j] = static_cast<T>(a / (1.f + std::exp(-a)) * b);
  }
}

// One head of one token, in place: the first rot_dim dims rotate by (cos, sin) [rot_dim / 2] each.
template <typename T>
DSPARK_CPU_CLONES void rope_head(T* x, const float* cos, const float* sin, int64_t rot_dim, bool neox) {
  const int64_t half = rot_dim / 2;
  if (neox) {
    int64_t i = 0;
    for (; i + kLanes <= half; i += kLanes) {
      const v16 x1 = load_f32(x + i), x2 = load_f32(x + half + i), c = vec::load16(cos + i), s = vec::load16(sin + i);
      store_from_f32(x + i, x1 * c - x2 * s);
      store_from_f32(x + half + i, x2 * c + x1 * s);
    }
    for (; i < half; ++i) {
      const float x1 = static_cast<float>(x[i]), x2 = static_cast<float>(x[half + i]);
      x[i] = static_cast<T>(x1 * cos[i] - x2 * sin[i]);
      x[half + i] = static_cast<T>(x2 * cos[i] + x1 * sin[i]);
    }
  } else {
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = static_cast<float>(x[2 * i]), x2 = static_cast<float>(x[2 * i + 1]);
      x[2 * i] = static_cast<T>(x1 * cos[i] - x2 * sin[i]);
      x[2 * i + 1] = static_cast<T>(x2 * cos[i] + x1 * sin[i]);
    }
  }
}

// A parallel task gets at least this many elements of work (and 16 rows). The ops run ~0.2-0.5 ns per element
// (`benchmark/kernels/bench_fused_layers.py`): a 64-row RMSNorm takes 10 µs on one thread. A parallel region
// costs ~2 µs on idle cores, but when another process holds the second core (a 2-core host shares it with
// SGLang's tokenizer / detokenizer and the clients) it waits for the descheduled OpenMP thread: 8 ms per call
// measured, a whole scheduler time slice. Decode- and verify-sized calls therefore stay on one thread; with the
// former 16-row grain a 17-row verify step went parallel where a 16-row decode step did not.
constexpr int64_t kElementsPerTask = 131072;

int64_t rows_per_task(int64_t elements_per_row) {
  return std::max<int64_t>(16, kElementsPerTask / std::max<int64_t>(elements_per_row, 1));
}

void check_float(const at::Tensor& t, const char* op, const char* name) {
  check_cpu(t, op, name);
  SGL_CPU_CHECK(t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf || t.scalar_type() == at::kFloat, op,
                name, " must be bfloat16, float16 or float32; got ", t.scalar_type());
}

void check_norm_inputs(const char* op, const at::Tensor& input, const at::Tensor& weight) {
  check_float(input, op, "input");
  check_float(weight, op, "weight");
  SGL_CPU_CHECK(weight.dim() == 1 && input.dim() >= 1 && weight.size(0) == input.size(-1), op,
                "weight must be [hidden] with hidden = input.size(-1) = ", input.size(-1), "; got ", weight.sizes());
  SGL_CPU_CHECK(input.is_contiguous(), op, "input must be contiguous");
}

}  // namespace

at::Tensor rmsnorm_cpu(const at::Tensor& input, const at::Tensor& weight, double eps) {
  check_norm_inputs("rmsnorm_cpu", input, weight);
  const auto w = weight.to(input.scalar_type()).contiguous();
  auto out = at::empty_like(input);
  const int64_t n = input.size(-1), rows = n == 0 ? 0 : input.numel() / n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "rmsnorm_cpu", [&] {
    const scalar_t* x = input.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, rows_per_task(n), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        rmsnorm_row<scalar_t, false>(y + r * n, x + r * n, nullptr, wp, n, static_cast<float>(eps), nullptr);
    });
  });
  return out;
}

void fused_add_rmsnorm_cpu(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight, double eps) {
  check_norm_inputs("fused_add_rmsnorm_cpu", input, weight);
  check_float(residual, "fused_add_rmsnorm_cpu", "residual");
  SGL_CPU_CHECK(residual.sizes() == input.sizes() && residual.scalar_type() == input.scalar_type() &&
                    residual.is_contiguous(),
                "fused_add_rmsnorm_cpu", "residual must be a contiguous ", input.scalar_type(), " tensor of input's shape ",
                input.sizes(), "; got ", residual.scalar_type(), " ", residual.sizes());
  const auto w = weight.to(input.scalar_type()).contiguous();
  const int64_t n = input.size(-1), rows = n == 0 ? 0 : input.numel() / n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "fused_add_rmsnorm_cpu", [&] {
    scalar_t* x = input.data_ptr<scalar_t>();
    scalar_t* res = residual.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    at::parallel_for(0, rows, rows_per_task(2 * n), [&](int64_t r0, int64_t r1) {
      std::vector<float> sum_buf(n);   // x + residual in fp32, before rounding (what the variance sees)
      for (int64_t r = r0; r < r1; ++r)
        rmsnorm_row<scalar_t, true>(x + r * n, x + r * n, res + r * n, wp, n, static_cast<float>(eps), sum_buf.data());
    });
  });
}

at::Tensor silu_and_mul_cpu(at::Tensor& input) {
  const char* op = "silu_and_mul_cpu";
  check_float(input, op, "input");
  SGL_CPU_CHECK(input.dim() >= 1 && input.size(-1) % 2 == 0, op, "input's last dimension must be even (gate | up); got ",
                input.sizes());
  const auto x = input.contiguous();
  auto sizes = x.sizes().vec();
  const int64_t d = sizes.back() / 2;
  sizes.back() = d;
  auto out = at::empty(sizes, x.options());
  const int64_t rows = d == 0 ? 0 : x.numel() / (2 * d);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "silu_and_mul_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, rows_per_task(2 * d), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) silu_and_mul_row<scalar_t>(y + r * d, xp + r * 2 * d, d);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> rotary_embedding_cpu(at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                                                        int64_t head_size, at::Tensor& cos_sin_cache, bool is_neox) {
  const char* op = "rotary_embedding_cpu";
  check_index(positions, op, "positions");
  check_float(query, op, "query");
  check_float(key, op, "key");
  check_float(cos_sin_cache, op, "cos_sin_cache");
  const int64_t tokens = positions.numel();
  SGL_CPU_CHECK(head_size > 0 && query.numel() % (tokens * head_size) == 0 && key.numel() % (tokens * head_size) == 0 &&
                    key.scalar_type() == query.scalar_type(),
                op, "query and key must hold positions.numel() = ", tokens, " tokens of heads of head_size ", head_size,
                " in one dtype; got ", query.sizes(), " ", query.scalar_type(), " and ", key.sizes(), " ", key.scalar_type());
  SGL_CPU_CHECK(cos_sin_cache.dim() == 2 && cos_sin_cache.size(1) % 2 == 0 && cos_sin_cache.size(1) <= head_size, op,
                "cos_sin_cache must be [max_position, rotary_dim] with an even rotary_dim <= head_size; got ",
                cos_sin_cache.sizes());
  const auto pos = as_long(positions).view(-1);
  const int64_t rot_dim = cos_sin_cache.size(1), max_pos = cos_sin_cache.size(0);
  const int64_t* pp = pos.data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t)
    SGL_CPU_CHECK(pp[t] >= 0 && pp[t] < max_pos, op, "positions[", t, "] = ", pp[t], " is outside the cos_sin_cache's ",
                  max_pos, " positions");
  // the tokens' rows only, in fp32 ([T, rot_dim]; the whole cache can hold 10^5 positions)
  const auto cache = cos_sin_cache.index_select(0, pos).to(at::kFloat).contiguous();
  auto q = query.contiguous().clone(), k = key.contiguous().clone();
  const int64_t q_heads = q.numel() / (tokens * head_size), k_heads = k.numel() / (tokens * head_size);
  const float* cs = cache.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "rotary_embedding_cpu", [&] {
    scalar_t* qp = q.data_ptr<scalar_t>();
    scalar_t* kp = k.data_ptr<scalar_t>();
    at::parallel_for(0, tokens, rows_per_task((q_heads + k_heads) * rot_dim), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const float* cos = cs + t * rot_dim;
        const float* sin = cos + rot_dim / 2;
        for (int64_t h = 0; h < q_heads; ++h) rope_head<scalar_t>(qp + (t * q_heads + h) * head_size, cos, sin, rot_dim, is_neox);
        for (int64_t h = 0; h < k_heads; ++h) rope_head<scalar_t>(kp + (t * k_heads + h) * head_size, cos, sin, rot_dim, is_neox);
      }
    });
  });
  return {q.view(query.sizes()), k.view(key.sizes())};
}

}  // namespace sgl_cpu

TORCH_LIBRARY_FRAGMENT(sgl_kernel, m) {
  m.def("rmsnorm_cpu(Tensor input, Tensor weight, float eps) -> Tensor");
  m.def("fused_add_rmsnorm_cpu(Tensor(a!) input, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  m.def("silu_and_mul_cpu(Tensor input) -> Tensor");
  m.def("rotary_embedding_cpu(Tensor positions, Tensor query, Tensor key, int head_size, Tensor cos_sin_cache,"
        " bool is_neox) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sgl_kernel, CPU, m) {
  m.impl("rmsnorm_cpu", &sgl_cpu::rmsnorm_cpu);
  m.impl("fused_add_rmsnorm_cpu", &sgl_cpu::fused_add_rmsnorm_cpu);
  m.impl("silu_and_mul_cpu", &sgl_cpu::silu_and_mul_cpu);
  m.impl("rotary_embedding_cpu", &sgl_cpu::rotary_embedding_cpu);
}
