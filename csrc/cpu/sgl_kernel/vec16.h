// 16-float-lane vector helpers for the CPU attention kernels (GCC / Clang vector extensions).
//
// Functions built with DSPARK_CPU_CLONES get AVX-512, AVX2 and baseline x86-64 clones (GCC target_clones,
// picked by the loader on the running CPU); the helpers here are always inlined into them, so each clone
// lowers a v16 to 1 zmm, 2 ymm or 4 xmm registers. Other compilers / architectures build one generic copy.
#pragma once
#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>

// Inlined into the clones, whose vector ABI is their own: GCC's note that passing a 64-byte vector
// "changes the ABI" does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define DSPARK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DSPARK_CPU_CLONES
#endif
#define DSPARK_INLINE inline __attribute__((always_inline))

namespace sgl_cpu::vec {

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));  // one AVX2 register: the narrow kernels' inner loops
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef int32_t vi8 __attribute__((vector_size(32)));

constexpr int64_t kLanes = 16;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

DSPARK_INLINE v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
DSPARK_INLINE void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }
DSPARK_INLINE v16 splat(float x) { return v16{} + x; }

// e^x for x <= 0 (a score minus its row max), lane-wise and branch-free: x = n·ln2 + r with |r| <= ln2/2,
// e^r by its degree-7 Taylor polynomial (truncation < 6e-9 relative, under float rounding), 2^n through the
// exponent bits. Arguments below -87 give ≈ e^-87 ≈ 1.6e-38; -inf lanes are selected away by the callers.
template <typename V, typename VI>  // (v16, vi16) or (v8, vi8)
DSPARK_INLINE V exp_nonpositive_lanes(V x) {
  x = x < -87.f ? V{} - 87.f : x;
  const V n = (x * 1.44269504f + 12582912.f) - 12582912.f;            // round(x / ln2): 1.5·2^23 trick
  const V r = (x - n * 0.693145752f) - n * 1.42860682e-6f;            // ln2 = hi + lo
  V p = V{} + 1.f / 5040;
  p = p * r + 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;        // 2^n, n in [-126, 0]
  return p * std::bit_cast<V>(bits);
}
DSPARK_INLINE v16 exp_nonpositive(v16 x) { return exp_nonpositive_lanes<v16, vi16>(x); }
DSPARK_INLINE v8 exp_nonpositive(v8 x) { return exp_nonpositive_lanes<v8, vi8>(x); }

// In place over row[0, n): row[j] = softmax_j(scale · row[j]) for j in [lo, hi), 0 elsewhere (all 0 when
// lo >= hi). Partial 16-lane blocks are padded with -inf.
DSPARK_INLINE void softmax_span(float* row, int64_t n, int64_t lo, int64_t hi, float scale) {
  std::memset(row, 0, sizeof(float) * lo);
  std::memset(row + hi, 0, sizeof(float) * (n - hi));
  if (lo >= hi) return;
  const auto block = [&](int64_t j) {  // row[j, j + 16) scaled, lanes outside [lo, hi) = -inf
    if (j + kLanes <= hi) return load16(row + j) * scale;
    v16 v = splat(kNegInf);
    for (int64_t k = 0; j + k < hi; ++k) v[k] = row[j + k] * scale;
    return v;
  };
  v16 mx = splat(kNegInf);
  for (int64_t j = lo; j < hi; j += kLanes) {
    const v16 v = block(j);
    mx = v > mx ? v : mx;
  }
  float m = kNegInf;
  for (int64_t k = 0; k < kLanes; ++k) m = std::max(m, mx[k]);
  v16 sum{};
  for (int64_t j = lo; j < hi; j += kLanes) {
    const v16 v = block(j);
    const v16 p = v == kNegInf ? v16{} : exp_nonpositive(v - m);
    sum += p;
    if (j + kLanes <= hi) {
      store16(row + j, p);
    } else {
      for (int64_t k = 0; j + k < hi; ++k) row[j + k] = p[k];
    }
  }
  float total = 0.f;
  for (int64_t k = 0; k < kLanes; ++k) total += sum[k];
  const float inv = 1.f / total;
  for (int64_t j = lo; j < hi; ++j) row[j] *= inv;
}

}  // namespace sgl_cpu::vec
