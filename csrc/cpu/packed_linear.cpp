// CPU face of pack_linear_weight / packed_linear (spec: dspark_sglang/ops/reference.py::packed_linear_ref).
//
// y[M, N] = x[M, K] · Wᵀ + bias over a weight packed once at load time: 16 output columns per block,
// P = 2 (bf16: a dword holds the pair W[n, 2q], W[n, 2q+1], the operand layout of AVX-512 BF16's
// vdpbf16ps) or P = 1 (fp32). A tile of MT rows × NT column blocks keeps MT·NT 16-lane fp32
// accumulators in registers; each step over K loads NT weight vectors once and broadcasts one x pair (or
// value) per row, so every weight byte is read once per tile of rows and a row never needs a horizontal sum.
// Accumulation runs over K in the same order whatever M is or where the row sits in x: row m of the output
// is bit-identical whether it is computed alone (a decode step) or inside a verify window.
//
// Faces, best first (`packed_linear_backend` says which one runs for a dtype):
//   amx_bf16     bf16 through AMX tiles (Sapphire Rapids and later, where Linux grants the tile state): a
//                packed block's 16 pairs of one 32-wide K step are exactly one 1 KB B tile, so the same packed
//                weight feeds tdpbf16ps; 16 rows × 64 columns or 32 rows × 32 columns per pass, where vdpbf16ps
//                does 6 × 64. Weights whose in_features is not a multiple of 32 run avx512_bf16 (per weight,
//                whatever M is);
//   avx512_bf16  bf16 pairs through vdpbf16ps (CPUs with AVX-512 BF16: Sapphire Rapids, Zen 4 and later);
//   avx512       16-lane float32 FMA; bf16 weights widened to float32 in registers (Skylake-SP .. Ice Lake);
//   avx2         8-lane float32 FMA, bf16 widened the same way (CPUs without AVX-512: Zen 2/3, Haswell ..);
//   generic      a plain loop for every other CPU (correct everywhere, fast nowhere).
// The widening faces accumulate W[n, 2q]·x[2q] then W[n, 2q+1]·x[2q+1] in float32, the generic loop's order,
// and a bf16 × bf16 product is exact in float32, so their outputs equal the generic loop's bit for bit.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <atomic>
#include <cstring>
#include <string>
#include <type_traits>

#include "../checks.h"
#include "../ops.h"
#include "cpu_features.h"
#include "stream_bandwidth.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DSPARK_X86 1
#endif

namespace dspark {
namespace {

constexpr int64_t kCols = 16;       // output columns per packed block
constexpr int64_t kRowTile = 6;     // MT: rows per register tile
constexpr int64_t kBlockTile = 4;   // NT: column blocks per register tile (64 columns)
constexpr int64_t kRowChunk = 48;   // rows kept hot in L1/L2 while a thread walks its column blocks
constexpr int64_t kAmxRowChunk = 256;  // the same on AMX (x rows re-read per column pair from L2; the weights
                                       // stream from memory once per chunk)
constexpr double kSplitGain = 1.3;  // thread_stream_gain from which decode-sized calls split over threads

// The CPU faces, worst to best (see the file comment).
enum class Face { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmxBf16 = 4 };
constexpr int kNumFaces = 5;

int64_t pair_width(at::ScalarType dtype) { return dtype == at::kBFloat16 ? 2 : 1; }

float to_float(float v) { return v; }
float to_float(at::BFloat16 v) { return static_cast<float>(v); }

// Generic face: rows [m0, m1) × blocks [b0, b1), any CPU.
template <typename T>
void linear_generic(const T* x, int64_t K, const T* w, int64_t Kq, int64_t P, const float* bias, T* y, int64_t N,
                    int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    const T* wb = w + b * Kq * kCols * P;  // [Kq, 16, P]
    for (int64_t m = m0; m < m1; ++m) {
      float acc[kCols] = {};
      const T* xm = x + m * K;
      for (int64_t q = 0; q < Kq; ++q) {
        for (int64_t p = 0; p < P; ++p) {
          const int64_t k = q * P + p;
          if (k >= K) break;
          const float xv = to_float(xm[k]);
          for (int64_t j = 0; j < kCols; ++j) acc[j] += xv * to_float(wb[(q * kCols + j) * P + p]);
        }
      }
      for (int64_t j = 0; j < kCols && b * kCols + j < N; ++j) {
        const int64_t n = b * kCols + j;
        y[m * N + n] = static_cast<T>(acc[j] + (bias ? bias[n] : 0.f));
      }
    }
  }
}

#ifdef DSPARK_X86
#define DSPARK_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define DSPARK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define DSPARK_AVX2 __attribute__((target("avx2,fma")))

// One register tile, bf16: rows x[0, MT) (K even, padded by the caller), blocks w[0, NT) of Kq pairs each.
template <int MT, int NT>
DSPARK_AVX512_BF16 void tile_bf16(const uint16_t* x, int64_t K, const uint16_t* w, int64_t Kq, const float* bias,
                                  uint16_t* y, int64_t N, int64_t n0) {
  __m512 acc[MT][NT];
  for (int m = 0; m < MT; ++m)
    for (int t = 0; t < NT; ++t) acc[m][t] = _mm512_setzero_ps();
  const int64_t block_stride = Kq * kCols * 2;  // uint16 elements per packed block
  for (int64_t q = 0; q < Kq; ++q) {
    __m512bh wv[NT];
    for (int t = 0; t < NT; ++t)
      wv[t] = (__m512bh)_mm512_loadu_si512(w + t * block_stride + q * kCols * 2);
    for (int m = 0; m < MT; ++m) {
      int32_t pair;
      std::memcpy(&pair, x + m * K + 2 * q, sizeof(pair));
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
      for (int t = 0; t < NT; ++t) acc[m][t] = _mm512_dpbf16_ps(acc[m][t], wv[t], xv);
    }
  }
  for (int t = 0; t < NT; ++t) {
    const int64_t n = n0 + t * kCols;
    const int64_t valid = std::min<int64_t>(kCols, N - n);
    const __mmask16 mask = valid >= kCols ? __mmask16(0xFFFF) : __mmask16((1u << valid) - 1);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + n) : _mm512_setzero_ps();
    for (int m = 0; m < MT; ++m) {
      const __m256bh out = _mm512_cvtneps_pbh(_mm512_add_ps(acc[m][t], b));
      _mm256_mask_storeu_epi16(y + m * N + n, mask, (__m256i)out);
    }
  }
}

// One register tile, fp32.
template <int MT, int NT>
DSPARK_AVX512 void tile_f32(const float* x, int64_t K, const float* w, int64_t Kq, const float* bias, float* y,
                            int64_t N, int64_t n0) {
  __m512 acc[MT][NT];
  for (int m = 0; m < MT; ++m)
    for (int t = 0; t < NT; ++t) acc[m][t] = _mm512_setzero_ps();
  const int64_t block_stride = Kq * kCols;
  for (int64_t k = 0; k < Kq; ++k) {
    __m512 wv[NT];
    for (int t = 0; t < NT; ++t) wv[t] = _mm512_loadu_ps(w + t * block_stride + k * kCols);
    for (int m = 0; m < MT; ++m) {
      const __m512 xv = _mm512_set1_ps(x[m * K + k]);
      for (int t = 0; t < NT; ++t) acc[m][t] = _mm512_fmadd_ps(wv[t], xv, acc[m][t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    const int64_t n = n0 + t * kCols;
    const int64_t valid = std::min<int64_t>(kCols, N - n);
    const __mmask16 mask = valid >= kCols ? __mmask16(0xFFFF) : __mmask16((1u << valid) - 1);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + n) : _mm512_setzero_ps();
    for (int m = 0; m < MT; ++m) _mm512_mask_storeu_ps(y + m * N + n, mask, _mm512_add_ps(acc[m][t], b));
  }
}

// float32 -> bf16 bits through c10::BFloat16(float), the conversion the generic loop's static_cast makes, so
// the widening faces store exactly what it stores.
inline uint16_t bf16_bits(float v) { return c10::BFloat16(v).x; }

// GCC 12 flags the undefined source operand inside _mm512_slli_epi32 as maybe-uninitialized (a false alarm).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// One register tile, bf16 weights widened on AVX-512F: rows xf[0, MT) are x already in float32; each dword
// of a packed block holds (W[n, 2q] low half, W[n, 2q+1] high half): a 16-bit left shift gives the even
// value as float32, masking off the low half the odd one.
template <int MT, int NT>
DSPARK_AVX512 void tile_bf16_widen512(const float* xf, int64_t K, const uint16_t* w, int64_t Kq, const float* bias,
                                      uint16_t* y, int64_t N, int64_t n0) {
  __m512 acc[MT][NT];
#pragma GCC unroll 6
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) acc[m][t] = _mm512_setzero_ps();
  const int64_t block_stride = Kq * kCols * 2;
  const __m512i odd_mask = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  for (int64_t q = 0; q < Kq; ++q) {
    // unrolled, so that the MT·NT accumulators stay in registers
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) {
      const __m512i raw = _mm512_loadu_si512(w + t * block_stride + q * kCols * 2);
      const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
      const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(raw, odd_mask));
#pragma GCC unroll 6
      for (int m = 0; m < MT; ++m) {
        acc[m][t] = _mm512_fmadd_ps(even, _mm512_set1_ps(xf[m * K + 2 * q]), acc[m][t]);
        acc[m][t] = _mm512_fmadd_ps(odd, _mm512_set1_ps(xf[m * K + 2 * q + 1]), acc[m][t]);
      }
    }
  }
  alignas(64) float out[kCols];
#pragma GCC unroll 4
  for (int t = 0; t < NT; ++t) {
    const int64_t n = n0 + t * kCols;
    const int64_t valid = std::min<int64_t>(kCols, N - n);
    const __mmask16 mask = valid >= kCols ? __mmask16(0xFFFF) : __mmask16((1u << valid) - 1);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + n) : _mm512_setzero_ps();
#pragma GCC unroll 6
    for (int m = 0; m < MT; ++m) {
      _mm512_store_ps(out, _mm512_add_ps(acc[m][t], b));
      for (int64_t j = 0; j < valid; ++j) y[m * N + n + j] = bf16_bits(out[j]);
    }
  }
}

#pragma GCC diagnostic pop

// AVX2 + FMA faces: a 16-column block is two 8-lane halves. T = uint16_t (bf16 weights widened as above,
// rows xf in float32) or float; NT = 1 block per tile (MT·2 accumulators of the 16 ymm registers).
template <typename T, int MT>
DSPARK_AVX2 void tile_avx2(const float* xf, int64_t K, const T* w, int64_t Kq, const float* bias, T* y, int64_t N,
                           int64_t n0) {
  constexpr bool bf16 = std::is_same_v<T, uint16_t>;
  __m256 acc[MT][2];
#pragma GCC unroll 6
  for (int m = 0; m < MT; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  if constexpr (bf16) {
    const __m256i odd_mask = _mm256_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
    for (int64_t q = 0; q < Kq; ++q) {
      const __m256i raw0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + q * kCols * 2));
      const __m256i raw1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + q * kCols * 2 + 16));
      const __m256 even0 = _mm256_castsi256_ps(_mm256_slli_epi32(raw0, 16));
      const __m256 even1 = _mm256_castsi256_ps(_mm256_slli_epi32(raw1, 16));
      const __m256 odd0 = _mm256_castsi256_ps(_mm256_and_si256(raw0, odd_mask));
      const __m256 odd1 = _mm256_castsi256_ps(_mm256_and_si256(raw1, odd_mask));
#pragma GCC unroll 6
      for (int m = 0; m < MT; ++m) {
        const __m256 x_even = _mm256_broadcast_ss(xf + m * K + 2 * q);
        const __m256 x_odd = _mm256_broadcast_ss(xf + m * K + 2 * q + 1);
        acc[m][0] = _mm256_fmadd_ps(even0, x_even, acc[m][0]);
        acc[m][1] = _mm256_fmadd_ps(even1, x_even, acc[m][1]);
        acc[m][0] = _mm256_fmadd_ps(odd0, x_odd, acc[m][0]);
        acc[m][1] = _mm256_fmadd_ps(odd1, x_odd, acc[m][1]);
      }
    }
  } else {
    for (int64_t k = 0; k < Kq; ++k) {
      const __m256 w0 = _mm256_loadu_ps(w + k * kCols), w1 = _mm256_loadu_ps(w + k * kCols + 8);
#pragma GCC unroll 6
      for (int m = 0; m < MT; ++m) {
        const __m256 xv = _mm256_broadcast_ss(xf + m * K + k);
        acc[m][0] = _mm256_fmadd_ps(w0, xv, acc[m][0]);
        acc[m][1] = _mm256_fmadd_ps(w1, xv, acc[m][1]);
      }
    }
  }
  const int64_t valid = std::min<int64_t>(kCols, N - n0);
  alignas(32) float out[kCols];
#pragma GCC unroll 6
  for (int m = 0; m < MT; ++m) {
    _mm256_store_ps(out, acc[m][0]);
    _mm256_store_ps(out + 8, acc[m][1]);
    for (int64_t j = 0; j < valid; ++j) {
      const float v = out[j] + (bias ? bias[n0 + j] : 0.f);
      if constexpr (bf16) y[m * N + n0 + j] = bf16_bits(v);
      else y[m * N + n0 + j] = v;
    }
  }
}

// Rows per register tile and column blocks per tile of a face, sized so that the accumulators, the weight
// vectors and the broadcast x values fit the registers (AVX2 has 16, AVX-512 32; the widening faces hold
// two x values per row and per pair). bf16 = a bf16 call.
constexpr int64_t rows_per_tile(Face face, bool bf16) {
  return (face == Face::kAvx2 || face == Face::kAvx512) && bf16 ? 4 : kRowTile;
}
constexpr int64_t blocks_per_tile(Face face) { return face == Face::kAvx2 ? 1 : kBlockTile; }

// One tile of a face at the runtime shape (mt <= rows_per_tile(F, bf16) rows, nt <= blocks_per_tile blocks). T is
// uint16_t (bf16 bits) or float; xf is x in float32 (x itself for float).
template <Face F, typename T, int MT>
void tile_rows(const T* x, const float* xf, int64_t K, const T* w, int64_t Kq, const float* bias, T* y, int64_t N,
               int64_t n0, int64_t nt) {
  constexpr bool bf16 = std::is_same_v<T, uint16_t>;
  if constexpr (F == Face::kAvx2) {
    tile_avx2<T, MT>(xf, K, w, Kq, bias, y, N, n0);
  } else {
    auto run = [&](auto nt_const) {
      constexpr int NT = decltype(nt_const)::value;
      if constexpr (bf16 && F == Face::kAvx512Bf16) tile_bf16<MT, NT>(x, K, w, Kq, bias, y, N, n0);
      else if constexpr (bf16) tile_bf16_widen512<MT, NT>(xf, K, w, Kq, bias, y, N, n0);
      else tile_f32<MT, NT>(xf, K, w, Kq, bias, y, N, n0);
    };
    switch (nt) {
      case 4: run(std::integral_constant<int, 4>{}); break;
      case 3: run(std::integral_constant<int, 3>{}); break;
      case 2: run(std::integral_constant<int, 2>{}); break;
      default: run(std::integral_constant<int, 1>{}); break;
    }
  }
}

template <Face F, typename T>
void tile(const T* x, const float* xf, int64_t K, const T* w, int64_t Kq, const float* bias, T* y, int64_t N,
          int64_t n0, int64_t mt, int64_t nt) {
  switch (mt) {
    case 6: tile_rows<F, T, 6>(x, xf, K, w, Kq, bias, y, N, n0, nt); break;
    case 5: tile_rows<F, T, 5>(x, xf, K, w, Kq, bias, y, N, n0, nt); break;
    case 4: tile_rows<F, T, 4>(x, xf, K, w, Kq, bias, y, N, n0, nt); break;
    case 3: tile_rows<F, T, 3>(x, xf, K, w, Kq, bias, y, N, n0, nt); break;
    case 2: tile_rows<F, T, 2>(x, xf, K, w, Kq, bias, y, N, n0, nt); break;
    default: tile_rows<F, T, 1>(x, xf, K, w, Kq, bias, y, N, n0, nt); break;
  }
}

// Rows [m0, m1) × blocks [b0, b1) with a face's vector tiles.
template <Face F, typename T>
void linear_vector(const T* x, const float* xf, int64_t K, const T* w, int64_t Kq, int64_t P, const float* bias, T* y,
                   int64_t N, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  const int64_t block_elems = Kq * kCols * P;
  for (int64_t b = b0; b < b1; b += blocks_per_tile(F)) {
    const int64_t nt = std::min(blocks_per_tile(F), b1 - b);
    constexpr int64_t rows = rows_per_tile(F, std::is_same_v<T, uint16_t>);
    for (int64_t m = m0; m < m1; m += rows) {
      const int64_t mt = std::min(rows, m1 - m);
      const float* xf_m = xf != nullptr ? xf + m * K : nullptr;
      tile<F, T>(x + m * K, xf_m, K, w + b * block_elems, Kq, bias, y + m * N, N, b * kCols, mt, nt);
    }
  }
}

// ---- AMX face (bf16). Tile registers: 0..3 fp32 accumulators (mt rows × 16 columns of one packed block),
// 4 and 5 x rows of one 32-wide K step (mt rows × 32 bf16), 6 and 7 weight tiles (16 pairs × 16 columns: one
// packed block's K step, 1 KB contiguous). tdpbf16ps adds each row's 16 pair products per column in fp32, in
// K steps of 32 whatever the tiling; a row's result depends on that row of x alone, so a row is bit-identical
// at any M (a decode row == the same row inside a verify window).
#define DSPARK_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

constexpr int64_t kAmxRows = 16;    // rows per tile
constexpr int64_t kAmxPairs = 16;   // K pairs per tile step (32 bf16)

struct alignas(64) AmxTileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row
  uint8_t rows[16] = {};
};

// Tiles 0..5 get mt rows, the weight tiles 16 (pairs); every row is 64 bytes. Loading a configuration zeroes
// every tile.
DSPARK_AMX void amx_configure(int64_t mt) {
  AmxTileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = static_cast<uint8_t>(t < 6 ? mt : kAmxPairs);
  }
  // ldtilecfg with the whole 64-byte struct as the memory operand: GCC 12's _tile_loadconfig names only its
  // first 8 bytes, so the compiler may drop the stores of the row and column sizes (then every tile
  // instruction faults as unconfigured)
  asm volatile("ldtilecfg %0" : : "m"(cfg));
}

// acc [16 rows][16 columns] fp32 (its first mt rows) + bias -> bf16 y[0, mt) columns [n, n + 16) ∩ [0, N).
DSPARK_AMX void amx_store_block(const float* acc, int64_t mt, const float* bias, uint16_t* y, int64_t N, int64_t n) {
  const int64_t valid = std::min<int64_t>(kCols, N - n);
  const __mmask16 mask = valid >= kCols ? __mmask16(0xFFFF) : __mmask16((1u << valid) - 1);
  const __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + n) : _mm512_setzero_ps();
  for (int64_t m = 0; m < mt; ++m) {
    const __m256bh out = _mm512_cvtneps_pbh(_mm512_add_ps(_mm512_load_ps(acc + m * kCols), b));
    _mm256_mask_storeu_epi16(y + m * N + n, mask, (__m256i)out);
  }
}

// One row tile (the configured mt rows of x) × NT ≤ 4 column blocks from w (packed blocks of Kq pairs, Kq a
// multiple of 16): accumulators 0..NT-1, x in tile 4, weights through tiles 6 and 7.
template <int NT>
DSPARK_AMX void amx_pass(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t Kq, const float* bias,
                         uint16_t* y, int64_t N, int64_t n0, int64_t mt) {
  const int64_t block_stride = Kq * kCols * 2;  // uint16 elements per packed block
  const int64_t x_stride = ldx * 2;             // bytes per x row
  _tile_zero(0);
  if constexpr (NT > 1) _tile_zero(1);
  if constexpr (NT > 2) _tile_zero(2);
  if constexpr (NT > 3) _tile_zero(3);
  for (int64_t q = 0; q < Kq; q += kAmxPairs) {
    const uint16_t* wq = w + q * kCols * 2;
    _tile_loadd(4, x + 2 * q, x_stride);
    _tile_loadd(6, wq, 64);
    if constexpr (NT > 1) _tile_loadd(7, wq + block_stride, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NT > 1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (NT > 2) {
      _tile_loadd(6, wq + 2 * block_stride, 64);
      if constexpr (NT > 3) _tile_loadd(7, wq + 3 * block_stride, 64);
      _tile_dpbf16ps(2, 4, 6);
      if constexpr (NT > 3) _tile_dpbf16ps(3, 4, 7);
    }
  }
  alignas(64) float acc[4][kAmxRows * kCols];  // [block][row][column]
  _tile_stored(0, acc[0], 64);
  if constexpr (NT > 1) _tile_stored(1, acc[1], 64);
  if constexpr (NT > 2) _tile_stored(2, acc[2], 64);
  if constexpr (NT > 3) _tile_stored(3, acc[3], 64);
  for (int t = 0; t < NT; ++t) amx_store_block(acc[t], mt, bias, y, N, n0 + t * kCols);
}

// Two full row tiles (32 rows of x) × NB ≤ 2 column blocks: accumulators 0, 1 (rows 0..15) and 2, 3 (rows
// 16..31), x in tiles 4 and 5, weights in 6 and 7 — each weight tile loaded serves 32 rows, half the weight
// reads of two single-tile passes.
template <int NB>
DSPARK_AMX void amx_pass_2x(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t Kq, const float* bias,
                            uint16_t* y, int64_t N, int64_t n0) {
  const int64_t block_stride = Kq * kCols * 2;
  const int64_t x_stride = ldx * 2;
  const uint16_t* x1 = x + kAmxRows * ldx;
  _tile_zero(0);
  _tile_zero(2);
  if constexpr (NB > 1) {
    _tile_zero(1);
    _tile_zero(3);
  }
  for (int64_t q = 0; q < Kq; q += kAmxPairs) {
    const uint16_t* wq = w + q * kCols * 2;
    _tile_loadd(4, x + 2 * q, x_stride);
    _tile_loadd(6, wq, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(5, x1 + 2 * q, x_stride);
    _tile_dpbf16ps(2, 5, 6);
    if constexpr (NB > 1) {
      _tile_loadd(7, wq + block_stride, 64);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  alignas(64) float acc[4][kAmxRows * kCols];  // [row tile · 2 + block][row][column]
  _tile_stored(0, acc[0], 64);
  _tile_stored(2, acc[2], 64);
  if constexpr (NB > 1) {
    _tile_stored(1, acc[1], 64);
    _tile_stored(3, acc[3], 64);
  }
  for (int r = 0; r < 2; ++r)
    for (int t = 0; t < NB; ++t)
      amx_store_block(acc[r * 2 + t], kAmxRows, bias, y + r * kAmxRows * N, N, n0 + t * kCols);
}

// Rows [m0, m1) × blocks [b0, b1) on AMX: pairs of full 16-row tiles through the 2 × 2 pass, a last full
// tile and then the tail rows (under their own configuration) through single-tile passes of 4 blocks. A
// configuration is per thread; the tiles are released at the end.
DSPARK_AMX void linear_amx(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t Kq, const float* bias,
                           uint16_t* y, int64_t N, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  const int64_t block_elems = Kq * kCols * 2;
  const int64_t full_tiles = (m1 - m0) / kAmxRows;
  const int64_t pair_end = m0 + full_tiles / 2 * 2 * kAmxRows;
  const int64_t full_end = m0 + full_tiles * kAmxRows;
  const auto single_tiles = [&](int64_t r0, int64_t r1, int64_t mt) {
    for (int64_t b = b0; b < b1; b += kBlockTile) {
      const int64_t nt = std::min(kBlockTile, b1 - b);
      for (int64_t m = r0; m < r1; m += mt) {
        const uint16_t* xm = x + m * ldx;
        const uint16_t* wb = w + b * block_elems;
        uint16_t* ym = y + m * N;
        switch (nt) {
          case 4: amx_pass<4>(xm, ldx, wb, Kq, bias, ym, N, b * kCols, mt); break;
          case 3: amx_pass<3>(xm, ldx, wb, Kq, bias, ym, N, b * kCols, mt); break;
          case 2: amx_pass<2>(xm, ldx, wb, Kq, bias, ym, N, b * kCols, mt); break;
          default: amx_pass<1>(xm, ldx, wb, Kq, bias, ym, N, b * kCols, mt); break;
        }
      }
    }
  };
  if (full_end > m0) {
    amx_configure(kAmxRows);
    for (int64_t b = b0; b < b1; b += 2)
      for (int64_t m = m0; m < pair_end; m += 2 * kAmxRows) {
        if (b + 1 < b1) amx_pass_2x<2>(x + m * ldx, ldx, w + b * block_elems, Kq, bias, y + m * N, N, b * kCols);
        else amx_pass_2x<1>(x + m * ldx, ldx, w + b * block_elems, Kq, bias, y + m * N, N, b * kCols);
      }
    single_tiles(pair_end, full_end, kAmxRows);
  }
  if (m1 > full_end) {
    amx_configure(m1 - full_end);
    single_tiles(full_end, m1, m1 - full_end);
  }
  _tile_release();
}
#endif  // DSPARK_X86

// The best face a caller allows (tests and benchmarks cap it to compare faces on one CPU).
std::atomic<int> max_face{static_cast<int>(Face::kAmxBf16)};

// Calls that ran the AMX face (tests read it to prove the tiles, not a fallback, computed a result).
std::atomic<int64_t> amx_calls{0};

// Work (multiply-adds) below which a call runs on the calling thread alone; DSPARK_CPU_LINEAR_PARALLEL_MACS
// overrides it. The default depends on what a second thread adds to one thread's memory stream here
// (cpu::thread_stream_gain, measured once): on a host where one thread streams most of the bandwidth (AMD
// EPYC with AVX-512 BF16, 2 cores: ~23 of ~27 GB/s) a decode-sized call stays on its thread, which never
// waits for a core that SGLang's tokenizer / detokenizer processes hold; where one thread gets far less than
// the host streams (Ice Lake, 2 cores: ~9 of ~17 GB/s, `bench_packed_linear.py`) every layer of a decode
// row splits (SmolLM2-135M's smallest, o_proj, is 3.3·10⁵).
double parallel_macs() {
  static const double value = [] {
    const char* env = std::getenv("DSPARK_CPU_LINEAR_PARALLEL_MACS");
    if (env != nullptr) return std::atof(env);
    return cpu::thread_stream_gain() >= kSplitGain ? 2.5e5 : 4e6;
  }();
  return value;
}

constexpr const char* kFaceNames[] = {"generic", "avx2", "avx512", "avx512_bf16", "amx_bf16"};

// The face a call of this dtype runs: the best this CPU has (CPU features are read once), capped by max_face.
Face face_for(at::ScalarType dtype) {
  Face best = Face::kGeneric;
#ifdef DSPARK_X86
  if (cpu::has_avx2_fma()) best = Face::kAvx2;
  if (cpu::has_avx512()) best = Face::kAvx512;
  if (dtype == at::kBFloat16 && cpu::has_avx512_bf16()) best = Face::kAvx512Bf16;
  if (dtype == at::kBFloat16 && cpu::has_amx_bf16()) best = Face::kAmxBf16;
#endif
  return static_cast<Face>(std::min(static_cast<int>(best), max_face.load()));
}

}  // namespace

double packed_linear_parallel_macs() { return parallel_macs(); }

void set_packed_linear_max_face(const std::string& name) {
  for (int f = 0; f < kNumFaces; ++f)
    if (name == kFaceNames[f]) {
      max_face = f;
      return;
    }
  TORCH_CHECK(false,
              "dspark.set_packed_linear_max_face: name must be one of generic, avx2, avx512, avx512_bf16, amx_bf16; got '",
              name, "'");
}

int64_t packed_linear_amx_calls() { return amx_calls.load(); }

std::string packed_linear_backend(at::ScalarType dtype) { return kFaceNames[static_cast<int>(face_for(dtype))]; }

void check_packed_linear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                         int64_t out_features) {
  DSPARK_CHECK_DIM("packed_linear", x, 2);
  DSPARK_CHECK_DIM("packed_linear", packed, 2);
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
              "dspark.packed_linear: x must be bfloat16 or float32; got ", x.scalar_type());
  TORCH_CHECK(packed.scalar_type() == x.scalar_type(), "dspark.packed_linear: packed must have x's dtype ",
              x.scalar_type(), "; got ", packed.scalar_type(), " (pack the weight with pack_linear_weight in that dtype)");
  DSPARK_CHECK_SAME_DEVICE("packed_linear", packed, x);
  TORCH_CHECK(out_features > 0 && packed.size(0) == (out_features + kCols - 1) / kCols * kCols,
              "dspark.packed_linear: packed.size(0) must be out_features = ", out_features,
              " rounded up to a multiple of 16; got ", packed.size(0));
  const int64_t P = pair_width(x.scalar_type());
  TORCH_CHECK(packed.size(1) == (x.size(1) + P - 1) / P * P, "dspark.packed_linear: packed.size(1) must be x.size(1) = ",
              x.size(1), " rounded up to a multiple of ", P, " (the weight's in_features); got ", packed.size(1));
  TORCH_CHECK(packed.is_contiguous(), "dspark.packed_linear: packed must be contiguous (as pack_linear_weight returns it)");
  if (bias.has_value()) {
    const auto& bias_t = *bias;
    TORCH_CHECK(bias_t.dim() == 1 && bias_t.size(0) == out_features, "dspark.packed_linear: bias must have shape [",
                out_features, "] (out_features); got ", bias_t.sizes());
    TORCH_CHECK(bias_t.device() == x.device(), "dspark.packed_linear: bias must be on ", x.device(), " like x; got ",
                bias_t.device());
  }
}

at::Tensor pack_linear_weight(const at::Tensor& weight) {
  DSPARK_CHECK_DIM("pack_linear_weight", weight, 2);
  TORCH_CHECK(weight.scalar_type() == at::kBFloat16 || weight.scalar_type() == at::kFloat,
              "dspark.pack_linear_weight: weight must be bfloat16 or float32; got ", weight.scalar_type());
  const int64_t N = weight.size(0), K = weight.size(1), P = pair_width(weight.scalar_type());
  const int64_t Np = (N + kCols - 1) / kCols * kCols, Kq = (K + P - 1) / P;
  // [N, K] -> zero-padded [Np, Kq·P] -> [Np/16, 16, Kq, P] -> [Np/16, Kq, 16, P], stored as [Np, Kq·P]
  const auto padded = at::constant_pad_nd(weight, {0, Kq * P - K, 0, Np - N});
  return padded.view({Np / kCols, kCols, Kq, P}).permute({0, 2, 1, 3}).contiguous().view({Np, Kq * P});
}

at::Tensor packed_linear_cpu(const at::Tensor& x_in, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                             int64_t out_features) {
  check_packed_linear(x_in, packed, bias, out_features);
  TORCH_CHECK(x_in.device().is_cpu(), "dspark.packed_linear: x must be a CPU tensor here; got ", x_in.device());
  const int64_t P = pair_width(x_in.scalar_type());
  const int64_t M = x_in.size(0), K = x_in.size(1), N = out_features;
  const int64_t Kq = packed.size(1) / P, blocks = packed.size(0) / kCols;
  // x rows contiguous with an even length for the bf16 pairs (a padded copy only when K is odd)
  const auto x = (K % P == 0 ? x_in : at::constant_pad_nd(x_in, {0, Kq * P - K})).contiguous();
  const int64_t ldx = x.size(1);
  auto y = at::empty({M, N}, x.options());
  if (M == 0) return y;
  const auto bias_f = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* b = bias.has_value() ? bias_f.data_ptr<float>() : nullptr;
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  Face face = face_for(x.scalar_type());
  if (face == Face::kAmxBf16 && Kq % kAmxPairs != 0) face = Face::kAvx512Bf16;  // per weight: K not 32-aligned
  if (face == Face::kAmxBf16) amx_calls.fetch_add(1, std::memory_order_relaxed);
  // the widening faces read x in float32 (one conversion per call, not one per column block)
  const auto x_f = bf16 && (face == Face::kAvx2 || face == Face::kAvx512) ? x.to(at::kFloat) : x;
  const float* xf = x_f.scalar_type() == at::kFloat ? x_f.data_ptr<float>() : nullptr;  // [M, ldx] float32
  // Threads split the column blocks (each thread streams its share of the weight once per row chunk); a
  // call under parallel_macs() multiply-adds stays on the calling thread.
  const bool parallel = static_cast<double>(M) * static_cast<double>(ldx) * static_cast<double>(N) >= parallel_macs();
  const int64_t row_chunk = face == Face::kAmxBf16 ? kAmxRowChunk : kRowChunk;
  for (int64_t m0 = 0; m0 < M; m0 += row_chunk) {
    const int64_t m1 = std::min(M, m0 + row_chunk);
    const auto run = [&](int64_t b0, int64_t b1) {
#ifdef DSPARK_X86
      if (face == Face::kAmxBf16)
        return linear_amx(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), ldx,
                          reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>()), Kq, b,
                          reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()), N, m0, m1, b0, b1);
      if (face != Face::kGeneric) {
        const auto go = [&](auto face_const, auto* xp, auto* wp, auto* yp) {
          using T = std::remove_const_t<std::remove_pointer_t<decltype(wp)>>;
          constexpr Face F = decltype(face_const)::value;
          linear_vector<F, T>(xp, xf, ldx, wp, Kq, P, b, yp, N, m0, m1, b0, b1);
        };
        const auto by_face = [&](auto* xp, auto* wp, auto* yp) {
          if (face == Face::kAvx2) return go(std::integral_constant<Face, Face::kAvx2>{}, xp, wp, yp);
          if (face == Face::kAvx512) return go(std::integral_constant<Face, Face::kAvx512>{}, xp, wp, yp);
          return go(std::integral_constant<Face, Face::kAvx512Bf16>{}, xp, wp, yp);
        };
        if (bf16)  // the vector faces work on the raw bf16 bits
          return by_face(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()),
                         reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>()),
                         reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()));
        return by_face(x.data_ptr<float>(), static_cast<const float*>(packed.data_ptr<float>()), y.data_ptr<float>());
      }
#endif
      if (bf16)
        linear_generic<at::BFloat16>(x.data_ptr<at::BFloat16>(), ldx, packed.data_ptr<at::BFloat16>(), Kq, P, b,
                                     y.data_ptr<at::BFloat16>(), N, m0, m1, b0, b1);
      else
        linear_generic<float>(x.data_ptr<float>(), ldx, packed.data_ptr<float>(), Kq, P, b, y.data_ptr<float>(), N, m0,
                              m1, b0, b1);
    };
    if (parallel) at::parallel_for(0, blocks, 1, run);
    else run(0, blocks);
  }
  return y;
}

}  // namespace dspark
