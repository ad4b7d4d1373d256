// Causal paged attention for decode rows, verify windows and prefill chunks (see attention_rows.h).
//
// Work of one task = (request b, KV head hk, query rows [i0, i1), key range [k0, k1)):
//   lanes   ix = i·g + x for row i in [i0, i1) and query head x < g of the group; padded to RP = 16·⌈R/16⌉
//   qT      [D, RP]        the lanes' queries, transposed and multiplied by sm_scale
//           (bf16-pair path: qP [D/2, RP], pairs of adjacent d, unscaled)
//   per key tile of kTile keys:
//     kt   [kTile, D]     keys, converted to float once (× k_scale for pool rows) (pairs: kp, the bf16 rows)
//     S    [kTile, RP]    scores: 4 keys × 16 lanes per inner step (4 independent FMA / vdpbf16ps chains)
//     online softmax      running max m[RP] and sum l[RP]; the outputs rescaled when the max grows
//     O    [R, Dv]        += P · V, panels of 3 lanes × 64 columns (12 accumulators) across the tile's keys
//                         (pairs: vp / pp, value and weight pairs of consecutive keys, weights rounded to bf16)
// A task whose (b, hk, rows) has no other key range normalises O / l into the output itself; split key
// ranges (long contexts of decode rows / verify windows) merge their (m, l, O) at the end.
#include "attention_rows.h"
#include "vec16.h"
#include "../cpu_features.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include <ATen/Parallel.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#include <immintrin.h>
#define DSPARK_ATTENTION_DOT16 1
#endif

namespace sgl_cpu {
namespace {

using namespace vec;

// Walks the output O[R, Dv] in P·V panels sized for AVX-512's 32 registers: 3 lanes × 64 columns (12
// accumulators), then single lanes of 64, 32 and 16 columns; `panel.template operator()<L, C>(ix0, c0)`
// accumulates lanes ix0 .. ix0 + L − 1 over columns c0 .. c0 + 16·C − 1. Returns the first column left over
// (Dv rounded down to a multiple of 16). CPUs without AVX-512 take `accumulate_pv<false>`'s panels instead.
template <typename Panel>
DSPARK_INLINE int64_t for_each_pv_panel(int64_t R, int64_t Dv, Panel&& panel) {
  int64_t c0 = 0;
  for (; c0 + 4 * kLanes <= Dv; c0 += 4 * kLanes) {
    int64_t ix = 0;
    for (; ix + 3 <= R; ix += 3) panel.template operator()<3, 4>(ix, c0);
    for (; ix < R; ++ix) panel.template operator()<1, 4>(ix, c0);
  }
  for (; c0 + 2 * kLanes <= Dv; c0 += 2 * kLanes)
    for (int64_t ix = 0; ix < R; ++ix) panel.template operator()<1, 2>(ix, c0);
  for (; c0 + kLanes <= Dv; c0 += kLanes)
    for (int64_t ix = 0; ix < R; ++ix) panel.template operator()<1, 1>(ix, c0);
  return c0;
}

#ifdef DSPARK_ATTENTION_DOT16
// S[t, lanes] = Σ_p qP[p, lanes] · kp[t, p] over the half = D / 2 bf16 pairs: vdpbf16ps multiplies bf16 pairs
// exactly and adds in float32, 32 products per instruction (twice a float32 FMA's 16). Four keys per pass over
// the pairs, one 16-lane block at a time; tn rounded up to 4 (the caller zero-pads kp).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void scores_dot16(
    const uint32_t* __restrict qP, const uint32_t* __restrict kp, int64_t tn, int64_t nb, int64_t RP, int64_t half,
    float* __restrict sc) {
  for (int64_t blk = 0; blk < nb; ++blk) {
    const uint32_t* qb = qP + blk * kLanes;
    for (int64_t t = 0; t < tn; t += 4) {
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
      const uint32_t *k0 = kp + t * half, *k1 = k0 + half, *k2 = k1 + half, *k3 = k2 + half;
      for (int64_t d = 0; d < half; ++d) {
        const __m512bh qv = (__m512bh)_mm512_loadu_si512(qb + d * RP);
        a0 = _mm512_dpbf16_ps(a0, qv, (__m512bh)_mm512_set1_epi32(static_cast<int>(k0[d])));
        a1 = _mm512_dpbf16_ps(a1, qv, (__m512bh)_mm512_set1_epi32(static_cast<int>(k1[d])));
        a2 = _mm512_dpbf16_ps(a2, qv, (__m512bh)_mm512_set1_epi32(static_cast<int>(k2[d])));
        a3 = _mm512_dpbf16_ps(a3, qv, (__m512bh)_mm512_set1_epi32(static_cast<int>(k3[d])));
      }
      _mm512_storeu_ps(sc + t * RP + blk * kLanes, a0);
      if (t + 1 < tn) _mm512_storeu_ps(sc + (t + 1) * RP + blk * kLanes, a1);
      if (t + 2 < tn) _mm512_storeu_ps(sc + (t + 2) * RP + blk * kLanes, a2);
      if (t + 3 < tn) _mm512_storeu_ps(sc + (t + 3) * RP + blk * kLanes, a3);
    }
  }
}

// O[ix0 + l, c0 : c0 + 16·C] += Σ_p vp[p, c] · pp[p, ix0 + l] over np key pairs: vp holds the pairs
// (v[2p, c], v[2p+1, c]) of a column, pp the pairs (P[2p, lane], P[2p+1, lane]) of a lane, both bf16 — one
// vdpbf16ps adds two keys' products for 16 columns. L·C accumulators, as pv_panel.
template <int L, int C>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline void pv_panel_dot16(
    float* __restrict o_out, const uint32_t* __restrict vp, const uint32_t* __restrict pp, int64_t ix0, int64_t c0,
    int64_t RP, int64_t Dv, int64_t np) {
  __m512 acc[L][C];
  for (int l = 0; l < L; ++l)
    for (int c = 0; c < C; ++c) acc[l][c] = _mm512_loadu_ps(o_out + (ix0 + l) * Dv + c0 + c * kLanes);
  for (int64_t q = 0; q < np; ++q) {
    __m512bh v[C];
    for (int c = 0; c < C; ++c) v[c] = (__m512bh)_mm512_loadu_si512(vp + q * Dv + c0 + c * kLanes);
    for (int l = 0; l < L; ++l) {
      const __m512bh w = (__m512bh)_mm512_set1_epi32(static_cast<int>(pp[q * RP + ix0 + l]));
      for (int c = 0; c < C; ++c) acc[l][c] = _mm512_dpbf16_ps(acc[l][c], v[c], w);
    }
  }
  for (int l = 0; l < L; ++l)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(o_out + (ix0 + l) * Dv + c0 + c * kLanes, acc[l][c]);
}

// O[R, Dv] += P · V over np key pairs in bf16 pairs (Dv a multiple of 16): 3-lane × 64-column panels.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void pv_dot16(
    float* __restrict o_out, const uint32_t* __restrict vp, const uint32_t* __restrict pp, int64_t R, int64_t RP,
    int64_t Dv, int64_t np) {
  for_each_pv_panel(R, Dv, [&]<int L, int C>(int64_t ix0, int64_t c0) {
    pv_panel_dot16<L, C>(o_out, vp, pp, ix0, c0, RP, Dv, np);
  });
}

#else
void scores_dot16(const uint32_t*, const uint32_t*, int64_t, int64_t, int64_t, int64_t, float*) {}
void pv_dot16(float*, const uint32_t*, const uint32_t*, int64_t, int64_t, int64_t, int64_t) {}
#endif

// Whether attention may run on bf16 pairs (vdpbf16ps): q, the pool and the extend keys / values all hold bf16
// values, head_dim even and v_head_dim a multiple of 16, a CPU with AVX-512 BF16, and not turned off by
// DSPARK_CPU_ATTENTION_DOT16=0 (read per call, so a benchmark or test can compare both paths). Scores are
// then exact products summed in float32; the softmax weights are rounded to bf16 (8 significant bits, as
// flash attention does for its P·V) before they multiply V, with float32 sums and the float32 normaliser.
bool use_dot16(const PagedRows& p) {
  if (!p.kv_bf16 || !p.q_bf16 || p.head_dim % 2 != 0 || p.v_head_dim % kLanes != 0) return false;
  if (p.k_ext != nullptr && (p.k_ext_bf16 == nullptr || p.v_ext_bf16 == nullptr)) return false;
  const char* env = std::getenv("DSPARK_CPU_ATTENTION_DOT16");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
#ifdef DSPARK_ATTENTION_DOT16
  return dspark::cpu::has_avx512_bf16();
#else
  return false;
#endif
}

// The bfloat16 bits of x, rounded to nearest even (exact when x holds a bf16 value).
DSPARK_INLINE uint32_t bf16_bits(float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}

constexpr int64_t kTile = 64;       // keys per online-softmax step
constexpr int64_t kShortRows = 8;   // extends up to this many rows run as one row block (decode, verify windows)
constexpr int64_t kBlockLanes = 64; // score lanes (rows × g) per row block of a longer extend
constexpr int64_t kMinSplit = 512;  // keys per task below which a context is not split further

// One row of `count` KV values to float, times `scale`.
template <bool BF16>
DSPARK_INLINE void load_kv_row(const void* base, int64_t offset, int64_t count, float scale, float* __restrict dst) {
  if constexpr (BF16) {
    const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
    for (int64_t d = 0; d < count; ++d) dst[d] = std::bit_cast<float>(static_cast<uint32_t>(src[d]) << 16) * scale;
  } else {
    const float* src = static_cast<const float*>(base) + offset;
    for (int64_t d = 0; d < count; ++d) dst[d] = src[d] * scale;
  }
}

constexpr int64_t kPrefetch = 16;  // keys ahead whose K / V rows are requested from memory

// Requests key slot's K and V rows of head hk into the cache: the rows are read one key at a time through
// the token table, a pattern the hardware prefetchers follow poorly once a batch's pool exceeds the caches.
template <bool BF16>
DSPARK_INLINE void prefetch_kv_rows(const PagedRows& p, int64_t slot, int64_t hk, int64_t D, int64_t Dv) {
  constexpr int64_t elem = BF16 ? 2 : 4;
  const char* k = static_cast<const char*>(p.k_buf) + (slot * p.k_stride + hk * p.k_head_stride) * elem;
  const char* v = static_cast<const char*>(p.v_buf) + (slot * p.v_stride + hk * p.v_head_stride) * elem;
  for (int64_t off = 0; off < D * elem; off += 64) __builtin_prefetch(k + off);
  for (int64_t off = 0; off < Dv * elem; off += 64) __builtin_prefetch(v + off);
}

struct Scratch {  // one thread's buffers, reused across its tasks
  std::vector<float> qT, kt, vt, scores;
  std::vector<uint32_t> qP, kp;  // the bf16-pair path: queries [D/2, RP] and a key tile [kTile, D/2],
  std::vector<uint32_t> vp, pp;  // value pairs [kTile/2, Dv] and weight pairs [kTile/2, RP]
  std::vector<uint16_t> v16;     // the tile's values as bf16 [kTile, Dv]
};

// Calls fn.template operator()<V>(l0) for each block of lanes l0 .. l0 + W − 1 of [0, RP): V = v16 (W = 16)
// when Wide, else v8 (W = 8; RP is a multiple of 16).
template <bool Wide, typename Fn>
DSPARK_INLINE void for_each_lane_block(int64_t RP, Fn&& fn) {
  if constexpr (Wide) {
    for (int64_t l0 = 0; l0 < RP; l0 += kLanes) fn.template operator()<v16>(l0);
  } else {
    for (int64_t l0 = 0; l0 < RP; l0 += 8) fn.template operator()<v8>(l0);
  }
}

// Loads / stores a vector of V's lanes (v16 or v8) at any alignment.
template <typename V>
DSPARK_INLINE V load_lanes(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename V>
DSPARK_INLINE void store_lanes(float* p, V v) { std::memcpy(p, &v, sizeof(v)); }

// O[ix, c0 : c0 + W·C] += Σ_t P[t, ix] · vt[t, c0 : c0 + W·C] for the L lanes ix0 .. ix0 + L − 1, W = the
// lanes of V (16: v16, 8: v8): L·C accumulators held in registers across the tile's keys, so the adds form
// L·C independent chains (one chain per output block would wait out the FMA latency at every key).
template <typename V, int L, int C>
DSPARK_INLINE void pv_panel(float* __restrict o_out, const float* __restrict vt, const float* __restrict sc,
                            int64_t ix0, int64_t c0, int64_t RP, int64_t Dv, int64_t tn) {
  constexpr int64_t W = sizeof(V) / sizeof(float);
  V acc[L][C];
  for (int l = 0; l < L; ++l)
    for (int c = 0; c < C; ++c) acc[l][c] = load_lanes<V>(o_out + (ix0 + l) * Dv + c0 + c * W);
  for (int64_t t = 0; t < tn; ++t) {
    V v[C];
    for (int c = 0; c < C; ++c) v[c] = load_lanes<V>(vt + t * Dv + c0 + c * W);
    for (int l = 0; l < L; ++l) {
      const float p = sc[t * RP + ix0 + l];
      for (int c = 0; c < C; ++c) acc[l][c] += v[c] * p;
    }
  }
  for (int l = 0; l < L; ++l)
    for (int c = 0; c < C; ++c) store_lanes<V>(o_out + (ix0 + l) * Dv + c0 + c * W, acc[l][c]);
}

// O[ix] += Σ_t P[t, ix] · vt[t] over a tile of tn keys, for the R lanes of o_out [R, Dv]: wide, the panels of
// `for_each_pv_panel`; narrow, v8 panels of 2 lanes × 32 columns, then 8 columns; a scalar loop for the tail.
template <bool Wide>
DSPARK_INLINE void accumulate_pv(float* __restrict o_out, const float* __restrict vt, const float* __restrict sc,
                                 int64_t R, int64_t RP, int64_t Dv, int64_t tn) {
  int64_t c0 = 0;
  if constexpr (Wide) {
    c0 = for_each_pv_panel(R, Dv, [&]<int L, int C>(int64_t ix0, int64_t c) {
      pv_panel<v16, L, C>(o_out, vt, sc, ix0, c, RP, Dv, tn);
    });
  } else {  // 2 lanes × 32 columns: 8 accumulators and 4 value registers of AVX2's 16
    for (; c0 + 32 <= Dv; c0 += 32) {
      int64_t ix = 0;
      for (; ix + 2 <= R; ix += 2) pv_panel<v8, 2, 4>(o_out, vt, sc, ix, c0, RP, Dv, tn);
      for (; ix < R; ++ix) pv_panel<v8, 1, 4>(o_out, vt, sc, ix, c0, RP, Dv, tn);
    }
    for (; c0 + 8 <= Dv; c0 += 8)
      for (int64_t ix = 0; ix < R; ++ix) pv_panel<v8, 1, 1>(o_out, vt, sc, ix, c0, RP, Dv, tn);
  }
  for (; c0 < Dv; ++c0)
    for (int64_t ix = 0; ix < R; ++ix) {
      float acc = o_out[ix * Dv + c0];
      for (int64_t t = 0; t < tn; ++t) acc += vt[t * Dv + c0] * sc[t * RP + ix];
      o_out[ix * Dv + c0] = acc;
    }
}

// Attention of request b's query rows [i0, i1) (of its m extend rows), KV head hk, over keys [k0, k1): writes
// the range's running max m[RP], sum l[RP] and unnormalised output o[R, Dv] (softmax numerators · v), R =
// (i1 − i0)·g lanes, for the merge. DOT16 (BF16 pools only): scores from bf16 pairs (scores_dot16) instead
// of float32 FMAs. Wide: 16-lane inner loops for AVX-512 (32 registers); narrow: 8-lane ones for AVX2 and the
// baseline (16 registers: the wide loops' accumulators would be spilled at every step).
template <bool BF16, typename Index, bool DOT16, bool Wide>
DSPARK_INLINE void attend_range_impl(const PagedRows& p, int64_t b, int64_t hk, int64_t i0, int64_t i1, int64_t k0,
                                     int64_t k1, float* __restrict m_out, float* __restrict l_out,
                                     float* __restrict o_out, Scratch& s) {
  const int64_t g = p.heads / p.kv_heads, D = p.head_dim, Dv = p.v_head_dim;
  const int64_t n = p.seq_lens[b], m = p.ext_lens[b], prefix = n - m, st = p.starts[b] + i0, rows = i1 - i0;
  const int64_t R = rows * g, RP = (R + kLanes - 1) / kLanes * kLanes, nb = RP / kLanes;
  const int64_t n_pool = p.k_ext != nullptr ? prefix : n;  // keys read from the pool (the rest from k_ext/v_ext)
  const Index* table = static_cast<const Index*>(p.req_to_token) + p.pool_rows[b] * p.pool_len;

  const int64_t half = D / 2;
  if constexpr (DOT16) {  // unscaled bf16 pairs; the scale multiplies the float32 scores
    s.qP.assign(half * RP, 0u);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t x = 0; x < g; ++x) {
        const float* qr = p.q + ((st + i) * p.heads + hk * g + x) * D;
        for (int64_t d = 0; d < half; ++d) s.qP[d * RP + i * g + x] = bf16_bits(qr[2 * d]) | bf16_bits(qr[2 * d + 1]) << 16;
      }
    s.kp.resize(kTile * half);
    s.v16.resize(kTile * Dv);
    s.vp.resize(kTile / 2 * Dv);
    s.pp.resize(kTile / 2 * RP);
  } else {
    s.qT.assign(D * RP, 0.f);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t x = 0; x < g; ++x) {
        const float* qr = p.q + ((st + i) * p.heads + hk * g + x) * D;
        for (int64_t d = 0; d < D; ++d) s.qT[d * RP + i * g + x] = qr[d] * p.sm_scale;
      }
    s.kt.resize(kTile * D);
    s.vt.resize(kTile * Dv);
  }
  s.scores.resize(kTile * RP);
  std::fill(m_out, m_out + RP, kNegInf);
  std::fill(l_out, l_out + RP, 0.f);
  std::fill(o_out, o_out + R * Dv, 0.f);
  float* __restrict kt = s.kt.data();
  float* __restrict vt = s.vt.data();
  float* __restrict sc = s.scores.data();
  const float* __restrict qT = s.qT.data();

  for (int64_t t0 = k0; t0 < k1; t0 += kTile) {
    const int64_t tn = std::min(kTile, k1 - t0);
    for (int64_t t = 0; t < tn; ++t) {
      const int64_t j = t0 + t;
      if (j < n_pool) {
        const int64_t slot = static_cast<int64_t>(table[j]);
        if (j + kPrefetch < n_pool) prefetch_kv_rows<BF16>(p, static_cast<int64_t>(table[j + kPrefetch]), hk, D, Dv);
        const int64_t k_at = slot * p.k_stride + hk * p.k_head_stride, v_at = slot * p.v_stride + hk * p.v_head_stride;
        if constexpr (DOT16) {  // the pool's bf16 rows as they are: K in pairs of adjacent d
          std::memcpy(s.kp.data() + t * half, static_cast<const uint16_t*>(p.k_buf) + k_at, D * sizeof(uint16_t));
          std::memcpy(s.v16.data() + t * Dv, static_cast<const uint16_t*>(p.v_buf) + v_at, Dv * sizeof(uint16_t));
        } else {
          load_kv_row<BF16>(p.k_buf, k_at, D, p.k_scale, kt + t * D);
          load_kv_row<BF16>(p.v_buf, v_at, Dv, p.v_scale, vt + t * Dv);
        }
      } else {
        const int64_t row = p.starts[b] + j - prefix;
        const int64_t k_at = (row * p.kv_heads + hk) * D, v_at = (row * p.kv_heads + hk) * Dv;
        if constexpr (DOT16) {  // the caller's bf16 keys / values as they are (use_dot16 requires them)
          std::memcpy(s.kp.data() + t * half, p.k_ext_bf16 + k_at, D * sizeof(uint16_t));
          std::memcpy(s.v16.data() + t * Dv, p.v_ext_bf16 + v_at, Dv * sizeof(uint16_t));
        } else {
          std::memcpy(kt + t * D, p.k_ext + k_at, D * sizeof(float));
          std::memcpy(vt + t * Dv, p.v_ext + v_at, Dv * sizeof(float));
        }
      }
    }
    if constexpr (DOT16) {
      for (int64_t t = tn; t < (tn + 3) / 4 * 4; ++t) std::fill(s.kp.data() + t * half, s.kp.data() + (t + 1) * half, 0u);
      scores_dot16(s.qP.data(), s.kp.data(), tn, nb, RP, half, sc);
      // scale: sm_scale, times k_scale for pool keys (k_ext rows are not pool rows)
      for (int64_t t = 0; t < tn; ++t) {
        const v16 f = splat(t0 + t < n_pool ? p.sm_scale * p.k_scale : p.sm_scale);
        for (int64_t blk = 0; blk < nb; ++blk) store16(sc + t * RP + blk * kLanes, load16(sc + t * RP + blk * kLanes) * f);
      }
    } else {
      for (int64_t t = tn; t < (tn + 3) / 4 * 4; ++t) std::fill(kt + t * D, kt + (t + 1) * D, 0.f);  // group padding
      // S[t, lanes] = kt[t] · qT: four keys per pass over D, W lanes at a time (16 wide; 8 narrow, whose
      // accumulators then fit AVX2's 16 registers — 16-lane ones would be spilled at every d)
      const auto scores_lanes = [&]<typename V>(int64_t l0) {
        const float* qb = qT + l0;
        for (int64_t t = 0; t < tn; t += 4) {
          V a0{}, a1{}, a2{}, a3{};
          const float *k0r = kt + t * D, *k1r = k0r + D, *k2r = k1r + D, *k3r = k2r + D;
          for (int64_t d = 0; d < D; ++d) {
            const V qv = load_lanes<V>(qb + d * RP);
            a0 += qv * k0r[d];
            a1 += qv * k1r[d];
            a2 += qv * k2r[d];
            a3 += qv * k3r[d];
          }
          store_lanes<V>(sc + t * RP + l0, a0);
          if (t + 1 < tn) store_lanes<V>(sc + (t + 1) * RP + l0, a1);
          if (t + 2 < tn) store_lanes<V>(sc + (t + 2) * RP + l0, a2);
          if (t + 3 < tn) store_lanes<V>(sc + (t + 3) * RP + l0, a3);
        }
      };
      for_each_lane_block<Wide>(RP, scores_lanes);
    }
    // the request's own keys c = j − prefix: causal hides key c from rows i < c (local lanes < (c − i0)·g); a
    // tree mask hides it from the rows whose mask entry is false
    for (int64_t t = std::max<int64_t>(0, prefix - t0); t < tn && p.fresh != FreshKeys::kAll; ++t) {
      const int64_t c = t0 + t - prefix;
      float* srow = sc + t * RP;
      if (p.fresh == FreshKeys::kCausal) {
        if (c > i0) std::fill(srow, srow + std::min(R, (c - i0) * g), kNegInf);
      } else {
        const bool* mask = p.tree_mask + p.mask_offsets[b];
        for (int64_t i = 0; i < rows; ++i)
          if (!mask[(i0 + i) * m + c]) std::fill(srow + i * g, srow + (i + 1) * g, kNegInf);
      }
    }
    // online softmax over the tile, per block of W lanes (16 wide, 8 narrow: as the score loops)
    const auto softmax_lanes = [&]<typename V>(int64_t l0) {
      constexpr int64_t W = sizeof(V) / sizeof(float);
      V tile_max = V{} + kNegInf;
      for (int64_t t = 0; t < tn; ++t) {
        const V sv = load_lanes<V>(sc + t * RP + l0);
        tile_max = sv > tile_max ? sv : tile_max;
      }
      const V old_max = load_lanes<V>(m_out + l0);
      const V new_max = tile_max > old_max ? tile_max : old_max;
      const V corr = old_max == kNegInf ? V{} : exp_nonpositive(old_max - new_max);
      V sum = load_lanes<V>(l_out + l0) * corr;
      for (int64_t t = 0; t < tn; ++t) {
        float* sp = sc + t * RP + l0;
        const V sv = load_lanes<V>(sp);
        const V pv = sv == kNegInf ? V{} : exp_nonpositive(sv - new_max);
        sum += pv;
        store_lanes<V>(sp, pv);
      }
      store_lanes<V>(m_out + l0, new_max);
      store_lanes<V>(l_out + l0, sum);
      // rescale the outputs of this block's real lanes
      for (int64_t lane = 0; lane < W && l0 + lane < R; ++lane) {
        const float c = corr[lane];
        if (c != 1.f) {
          float* orow = o_out + (l0 + lane) * Dv;
          for (int64_t d = 0; d < Dv; ++d) orow[d] *= c;
        }
      }
    };
    for_each_lane_block<Wide>(RP, softmax_lanes);
    // O[ix] += Σ_t P[t, ix] · v[t]
    if constexpr (DOT16) {
      // pairs of consecutive keys (a missing last key of an odd tile: zeros); a pool key's weight carries v_scale
      const int64_t np = (tn + 1) / 2;
      const uint16_t* vals = s.v16.data();                                  // [tn, Dv] bf16
      for (int64_t q = 0; q < np; ++q) {
        const int64_t t = 2 * q;
        const bool second = t + 1 < tn;
        const float f0 = t0 + t < n_pool ? p.v_scale : 1.f, f1 = t0 + t + 1 < n_pool ? p.v_scale : 1.f;
        uint32_t* __restrict vq = s.vp.data() + q * Dv;
        for (int64_t c = 0; c < Dv; ++c)
          vq[c] = static_cast<uint32_t>(vals[t * Dv + c]) | (second ? static_cast<uint32_t>(vals[(t + 1) * Dv + c]) << 16 : 0u);
        uint32_t* __restrict pq = s.pp.data() + q * RP;
        const float* __restrict p0 = sc + t * RP;
        const float* __restrict p1 = sc + (t + 1) * RP;
        for (int64_t lane = 0; lane < RP; ++lane)
          pq[lane] = bf16_bits(p0[lane] * f0) | (second ? bf16_bits(p1[lane] * f1) << 16 : 0u);
      }
      pv_dot16(o_out, s.vp.data(), s.pp.data(), R, RP, Dv, np);
    } else {
      accumulate_pv<Wide>(o_out, vt, sc, R, RP, Dv, tn);
    }
  }
}

struct Task {
  int64_t b, hk, i0, i1, k0, k1;  // rows [i0, i1) of request b, KV head hk, keys [k0, k1); task i writes slot i
};

template <bool BF16, bool DOT16, bool Wide>
DSPARK_INLINE void attend_range_with(const PagedRows& p, const Task& t, float* m_out, float* l_out, float* o_out,
                                     Scratch& s) {
  if (p.table_int32) attend_range_impl<BF16, int32_t, DOT16, Wide>(p, t.b, t.hk, t.i0, t.i1, t.k0, t.k1, m_out, l_out, o_out, s);
  else attend_range_impl<BF16, int64_t, DOT16, Wide>(p, t.b, t.hk, t.i0, t.i1, t.k0, t.k1, m_out, l_out, o_out, s);
}

// The bf16-pair path needs AVX-512 BF16, hence always runs wide; the float32 path runs wide where `wide_panels`.
DSPARK_CPU_CLONES
void attend_range(const PagedRows& p, bool dot16, bool wide, const Task& t, float* m_out, float* l_out,
                  float* o_out, Scratch& s) {
  if (p.kv_bf16 && dot16) attend_range_with<true, true, true>(p, t, m_out, l_out, o_out, s);
  else if (p.kv_bf16 && wide) attend_range_with<true, false, true>(p, t, m_out, l_out, o_out, s);
  else if (p.kv_bf16) attend_range_with<true, false, false>(p, t, m_out, l_out, o_out, s);
  else if (wide) attend_range_with<false, false, true>(p, t, m_out, l_out, o_out, s);
  else attend_range_with<false, false, false>(p, t, m_out, l_out, o_out, s);
}

// Whether the float32 path runs its 16-lane loops (the clone the loader picked says which instructions run,
// not how many registers they have): on AVX-512 CPUs. DSPARK_CPU_ATTENTION_PANELS=narrow / wide forces the
// 8-lane / 16-lane loops (read per call: a test runs the narrow ones on any host, a benchmark the wide ones
// on an AVX2 host, where they are what this kernel ran before it had narrow ones).
bool wide_panels() {
  const char* env = std::getenv("DSPARK_CPU_ATTENTION_PANELS");
  if (env != nullptr && std::strcmp(env, "narrow") == 0) return false;
  if (env != nullptr && std::strcmp(env, "wide") == 0) return true;
  return dspark::cpu::has_avx512();
}

// Query rows per task of a request with m extend rows: all of them for decode rows and verify windows (m ≤ 8),
// else about 64 score lanes (64 / g rows) per task, so that a prefill chunk runs as many row blocks, each over
// the keys it can see (causal: up to its last row) — a key tile is read once per row block.
int64_t rows_per_task(int64_t m, int64_t g) {
  return m <= kShortRows ? std::max<int64_t>(m, 1) : std::max<int64_t>(1, kBlockLanes / g);
}

// Work (multiply-adds) below which a call runs on the calling thread alone; DSPARK_CPU_ATTENTION_PARALLEL_MACS
// overrides it (hosts with many idle cores gain from a lower value).
double parallel_macs() {
  static const double value = [] {
    const char* env = std::getenv("DSPARK_CPU_ATTENTION_PARALLEL_MACS");
    return env != nullptr ? std::atof(env) : 2e6;
  }();
  return value;
}

}  // namespace

void attend_paged_rows(const PagedRows& p) {
  const int64_t g = p.heads / p.kv_heads, Dv = p.v_head_dim;
  int64_t max_rp = 0, total_keys = 0;
  for (int64_t b = 0; b < p.batch; ++b) {
    max_rp = std::max(max_rp, (rows_per_task(p.ext_lens[b], g) * g + kLanes - 1) / kLanes * kLanes);
    total_keys += p.ext_lens[b] > 0 ? p.seq_lens[b] : 0;
  }
  if (total_keys == 0) return;
  // One thread for small work: on a loaded host the hand-off to a parallel region (the other threads must
  // be scheduled, then joined) costs more than it saves. Larger work splits long contexts so that the
  // tasks outnumber the threads ~2× even for one request (B·HK tasks alone can be fewer than threads).
  double macs = 0;  // multiply-adds of the scores and outputs
  for (int64_t b = 0; b < p.batch; ++b) macs += double(p.ext_lens[b] * g * p.kv_heads) * (p.head_dim + Dv) * p.seq_lens[b];
  const int64_t threads = macs >= parallel_macs() ? at::get_num_threads() : 1;
  std::vector<Task> tasks;
  std::vector<std::pair<int64_t, int64_t>> groups;  // [first, last) task of each (b, hk, row block) split over keys
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t n = p.seq_lens[b], m = p.ext_lens[b], prefix = n - m;
    if (m == 0 || n == 0) continue;
    const int64_t block = rows_per_task(m, g);
    if (block < m) {  // a long extend: one task per row block and KV head, over the keys its rows can see
      for (int64_t hk = 0; hk < p.kv_heads; ++hk)
        for (int64_t i0 = 0; i0 < m; i0 += block) {
          const int64_t i1 = std::min(m, i0 + block);
          tasks.push_back({b, hk, i0, i1, 0, p.fresh == FreshKeys::kAll ? n : prefix + i1});
        }
      continue;
    }
    const int64_t fair = (2 * threads * n + total_keys * p.kv_heads - 1) / (total_keys * p.kv_heads);
    int64_t splits = threads > 1 ? std::clamp<int64_t>(n / kMinSplit, 1, fair) : 1;
    // few tasks (one long request): a task count that the threads divide, else one thread idles at the end
    while (threads > 1 && p.batch * p.kv_heads < 4 * threads && (p.kv_heads * splits) % threads != 0 &&
           n / (splits + 1) >= kMinSplit / 2) {
      ++splits;
    }
    for (int64_t hk = 0; hk < p.kv_heads; ++hk) {
      const int64_t first = static_cast<int64_t>(tasks.size());
      for (int64_t sp = 0; sp < splits; ++sp) tasks.push_back({b, hk, 0, m, n * sp / splits, n * (sp + 1) / splits});
      if (splits > 1) groups.emplace_back(first, first + splits);
    }
  }
  const bool dot16 = use_dot16(p), wide = wide_panels();
  const int64_t part_stride = 2 * max_rp + max_rp * Dv;  // m, l, O of one task
  // tasks of a split group keep their (m, l, O) for the merge; the others normalise straight into out
  std::vector<int64_t> slot(tasks.size(), -1);
  int64_t kept = 0;
  for (const auto& [first, last] : groups)
    for (int64_t i = first; i < last; ++i) slot[i] = kept++;
  std::vector<float> parts(kept * part_stride);
  const auto out_row = [&](const Task& t, int64_t ix) {  // out row of lane ix of task t
    return p.out + ((p.starts[t.b] + t.i0 + ix / g) * p.heads + t.hk * g + ix % g) * Dv;
  };
  const auto run = [&](int64_t begin, int64_t end) {
    Scratch s;
    std::vector<float> own(part_stride);  // (m, l, O) of a task that normalises into out itself
    for (int64_t i = begin; i < end; ++i) {
      const Task& t = tasks[i];
      float* base = slot[i] >= 0 ? parts.data() + slot[i] * part_stride : own.data();
      attend_range(p, dot16, wide, t, base, base + max_rp, base + 2 * max_rp, s);
      if (slot[i] >= 0) continue;
      for (int64_t ix = 0; ix < (t.i1 - t.i0) * g; ++ix) {  // O / l (zeros when no key was visible: l = 0)
        const float l = base[max_rp + ix];
        const float inv = l > 0.f ? 1.f / l : 0.f;
        const float* o = base + 2 * max_rp + ix * Dv;
        float* dst = out_row(t, ix);
        for (int64_t d = 0; d < Dv; ++d) dst[d] = o[d] * inv;
      }
    }
  };
  if (threads > 1) {
    at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, run);
  } else {
    run(0, static_cast<int64_t>(tasks.size()));
  }
  // Merge the key ranges of each split (request, KV head): M = max m_s, O = Σ e^{m_s − M} O_s / Σ e^{m_s − M} l_s.
  // O(R · splits · Dv) per group: on the calling thread, cheaper than a parallel region.
  for (const auto& [i0, i1] : groups) {
    const Task& t0 = tasks[i0];
    const int64_t R = (t0.i1 - t0.i0) * g;
    for (int64_t ix = 0; ix < R; ++ix) {
      float mx = kNegInf;
      for (int64_t i = i0; i < i1; ++i) mx = std::max(mx, parts[slot[i] * part_stride + ix]);
      float denom = 0.f;
      float* dst = out_row(t0, ix);
      std::fill(dst, dst + Dv, 0.f);
      for (int64_t i = i0; i < i1; ++i) {
        const float* base = parts.data() + slot[i] * part_stride;
        if (base[ix] == kNegInf) continue;  // no visible key in this range
        const float w = std::exp(base[ix] - mx);
        denom += w * base[max_rp + ix];
        const float* o = base + 2 * max_rp + ix * Dv;
        for (int64_t d = 0; d < Dv; ++d) dst[d] += w * o[d];
      }
      const float inv = denom > 0.f ? 1.f / denom : 0.f;
      for (int64_t d = 0; d < Dv; ++d) dst[d] *= inv;
    }
  }
}

}  // namespace sgl_cpu
