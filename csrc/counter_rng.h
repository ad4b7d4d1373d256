// Counter-based random numbers of verify_sampled (token draws: E_i = −log u_i with
// u_i = uniform_from_hash(mix32(pos_key(base, row, pos, 1) ^ i))): the C++ twin of dspark_sglang/ops/counter_rng.py.
// Every draw is a pure function of (seed, offset, row, position, token), so the CPU kernel, the CUDA
// kernel and the torch reference produce identical samples.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DSPARK_HD __host__ __device__ __forceinline__
#else
#define DSPARK_HD inline
#endif

namespace dspark {

// Wellons' lowbias32: a bijection on 32-bit words with good avalanche.
DSPARK_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x21F0AAADu;
  x ^= x >> 15;
  x *= 0x735A2D97u;
  x ^= x >> 15;
  return x;
}

DSPARK_HD uint32_t base_key(uint64_t seed, uint64_t offset) {
  uint32_t h = mix32(static_cast<uint32_t>(seed));
  h = mix32(h ^ static_cast<uint32_t>(seed >> 32));
  h = mix32(h ^ static_cast<uint32_t>(offset));
  return mix32(h ^ static_cast<uint32_t>(offset >> 32));
}

// stream 0: the acceptance coin of (row, pos); stream 1: the token draw at (row, pos).
DSPARK_HD uint32_t pos_key(uint32_t base, uint32_t row, uint32_t pos, uint32_t stream) {
  return mix32(mix32(base ^ row) ^ (2u * pos + stream));
}

DSPARK_HD double uniform_from_hash(uint32_t h) {
  return (static_cast<double>(h) + 0.5) * (1.0 / 4294967296.0);
}

// Acceptance coin u(row, pos) in (0, 1).
DSPARK_HD double coin(uint32_t base, uint32_t row, uint32_t pos) {
  return uniform_from_hash(mix32(pos_key(base, row, pos, 0)));
}

}  // namespace dspark

namespace dspark {

// Exponential-race pruning: a token with weight w and uniform u has key w / (−log u), which beats
// `best` iff u > exp(−w / best). Because exp(−x) ≥ 1 − x, u ≤ (1 − w/best)(1 − 1e-9) proves it
// cannot, so the log is skipped; the margin dwarfs rounding, so results equal the unpruned race.
DSPARK_HD bool cannot_beat(double u, double w, double best) {
  return best > 0.0 && u <= (1.0 - w / best) * (1.0 - 1e-9);
}

}  // namespace dspark
