// CPU face of sample_categorical (spec: dspark_sglang/ops/reference.py::sample_categorical_ref).
//
// Per row: pass 1 sums blocks of kBlock probabilities in float64 (kLanes independent accumulators, so the
// compiler vectorises it without reassociating anything) and the row total; pass 2 walks the block sums to
// the block holding u·total, then that block's entries one by one. About 2 reads of the row, vs
// torch.multinomial's ~1 ms per 49k-entry row on this kind of host.
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "../ops.h"

namespace dspark {
namespace {

constexpr int64_t kBlock = 256;
constexpr int kLanes = 8;

// The last index with p > 0, or -1.
int64_t last_positive(const float* p, int64_t V) {
  for (int64_t i = V - 1; i >= 0; --i)
    if (p[i] > 0.f) return i;
  return -1;
}

int64_t draw_row(const float* p, int64_t V, double u, std::vector<double>& block_sums) {
  const int64_t blocks = (V + kBlock - 1) / kBlock;
  block_sums.resize(blocks);
  double total = 0.0;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kBlock, end = std::min(V, begin + kBlock);
    double lane[kLanes] = {};
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes)
      for (int j = 0; j < kLanes; ++j) lane[j] += static_cast<double>(p[i + j]);
    double s = 0.0;
    for (int j = 0; j < kLanes; ++j) s += lane[j];
    for (; i < end; ++i) s += static_cast<double>(p[i]);
    block_sums[b] = s;
    total += s;
  }
  if (!(total > 0.0) || !std::isfinite(total)) return -1;
  const double x = u * total;
  double before = 0.0;  // mass of the blocks before b
  int64_t b = 0;
  while (b < blocks - 1 && before + block_sums[b] <= x) before += block_sums[b++];
  double acc = before;
  for (int64_t i = b * kBlock; i < V; ++i) {  // normally ends inside block b; past it only by rounding
    acc += static_cast<double>(p[i]);
    if (acc > x && p[i] > 0.f) return i;
  }
  return last_positive(p, V);
}

}  // namespace

at::Tensor sample_categorical_cpu(const at::Tensor& probs_in, const at::Tensor& uniforms_in) {
  check_sample_categorical(probs_in, uniforms_in);
  const auto probs = probs_in.contiguous();
  const auto uniforms = uniforms_in.contiguous();
  const int64_t N = probs.size(0), V = probs.size(1);
  auto ids = at::empty({N}, probs.options().dtype(at::kLong));
  const float* p = probs.data_ptr<float>();
  const double* u = uniforms.data_ptr<double>();
  int64_t* out = ids.data_ptr<int64_t>();
  // rows in parallel once there is enough work for a second thread (~64k entries)
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(V, 1));
  at::parallel_for(0, N, grain, [&](int64_t r0, int64_t r1) {
    std::vector<double> block_sums;
    for (int64_t r = r0; r < r1; ++r) out[r] = draw_row(p + r * V, V, u[r], block_sums);
  });
  return ids;
}

}  // namespace dspark
