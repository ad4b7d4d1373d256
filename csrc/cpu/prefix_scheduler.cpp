// CPU faces of schedule_prefix (DSpark Algorithm 1) and schedule_topk
// (spec: dspark_sglang/ops/reference.py). Candidates are sorted as one uint64 key each:
// high word = ~bits(a) (positive floats order like their bit patterns), low word = (j << 24) | r,
// which gives a descending, then slot j ascending, then request r ascending.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../ops.h"

namespace dspark {
namespace {

std::vector<uint64_t> sorted_candidates(const float* a, int64_t R, int64_t gamma, int64_t min_len, int64_t max_len) {
  std::vector<uint64_t> keys;
  keys.reserve(static_cast<size_t>(R * (max_len - min_len)));
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t j = min_len; j < max_len; ++j) {
      const float v = a[r * gamma + j];
      if (!(v > 0.0f)) break;  // a is non-increasing: the rest of the row is 0 too (DSpark Alg. 1: a > 0)
      uint32_t bits;
      std::memcpy(&bits, &v, sizeof(bits));
      keys.push_back((static_cast<uint64_t>(~bits) << 32) | (static_cast<uint64_t>(j) << 24) |
                     static_cast<uint64_t>(r));
    }
  }
  std::sort(keys.begin(), keys.end());
  return keys;
}

inline int64_t key_row(uint64_t key) { return static_cast<int64_t>(key & 0xFFFFFF); }
inline int64_t key_slot(uint64_t key) { return static_cast<int64_t>((key >> 24) & 0xFF); }
inline double key_value(uint64_t key) {
  const uint32_t bits = ~static_cast<uint32_t>(key >> 32);
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return static_cast<double>(v);
}

at::Tensor lens_from_admitted(const std::vector<uint64_t>& keys, int64_t num_admitted, int64_t R, int64_t min_len,
                              const at::TensorOptions& options) {
  auto lens = at::full({R}, min_len, options.dtype(at::kInt));
  int32_t* l = lens.data_ptr<int32_t>();
  for (int64_t i = 0; i < num_admitted; ++i) {
    const int64_t r = key_row(keys[i]);
    l[r] = std::max<int32_t>(l[r], static_cast<int32_t>(key_slot(keys[i]) + 1));
  }
  return lens;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> schedule_prefix_cpu(const at::Tensor& survival, const at::Tensor& sps_table,
                                                       int64_t min_len, int64_t max_len, std::string mode) {
  check_schedule("schedule_prefix", survival, min_len, max_len);
  check_sps_table(sps_table, survival.size(0), max_len);
  const int global = schedule_mode_from_string(mode);
  const auto surv = survival.contiguous();
  const auto sps = sps_table.to(at::kDouble).contiguous();
  const int64_t R = surv.size(0), gamma = surv.size(1);
  const float* a = surv.data_ptr<float>();
  const double* s = sps.data_ptr<double>();

  const auto keys = sorted_candidates(a, R, gamma, min_len, max_len);
  double tau = static_cast<double>(R);  // every request yields at least its correction/bonus token
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < min_len; ++j) tau += static_cast<double>(a[r * gamma + j]);
  int64_t B = R * (1 + min_len);
  double best = tau * s[B];
  int64_t num_admitted = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    tau += key_value(keys[i]);  // admit (r, j): ℓ_r = j+1, B += 1, τ* += a_{r,j}
    const double theta = tau * s[++B];
    if (theta > best) {
      best = theta;
      num_admitted = static_cast<int64_t>(i) + 1;
    } else if (!global) {
      break;  // lossless early stop at the first non-improvement
    }
  }
  auto lens = lens_from_admitted(keys, num_admitted, R, min_len, surv.options());
  return {lens, at::scalar_tensor(best, surv.options().dtype(at::kDouble))};
}

at::Tensor schedule_topk_cpu(const at::Tensor& survival, int64_t budget, int64_t min_len, int64_t max_len) {
  check_schedule("schedule_topk", survival, min_len, max_len);
  TORCH_CHECK(budget >= 0, "dspark.schedule_topk: budget (total draft tokens to verify) must be >= 0; got ", budget);
  const auto surv = survival.contiguous();
  const int64_t R = surv.size(0), gamma = surv.size(1);
  const auto keys = sorted_candidates(surv.data_ptr<float>(), R, gamma, min_len, max_len);
  const int64_t extra = std::clamp<int64_t>(budget - R * min_len, 0, static_cast<int64_t>(keys.size()));
  return lens_from_admitted(keys, extra, R, min_len, surv.options());
}

}  // namespace dspark
