// Validation shared by the CPU and CUDA faces of every op. Value checks (ranges, monotonicity) use
// device-agnostic ATen reductions: on CUDA they cost one host sync, which is the price of never
// returning a silently wrong answer.
#include <cmath>

#include "checks.h"
#include "ops.h"

namespace dspark {
namespace {

// Value checks: plain loops on CPU tensors (cheap enough for the scheduler's µs budget), ATen
// reductions plus one host sync on CUDA tensors.
void check_lens_in_range(const char* op, const at::Tensor& verify_lens, int64_t gamma) {
  if (verify_lens.numel() == 0) return;
  int64_t row = -1;
  if (verify_lens.is_cpu()) {
    const auto lens = verify_lens.contiguous();
    const int32_t* l = lens.data_ptr<int32_t>();
    for (int64_t r = 0; r < lens.numel() && row < 0; ++r)
      if (l[r] < 0 || l[r] > gamma) row = r;
  } else {
    const auto bad = at::logical_or(verify_lens < 0, verify_lens > gamma);
    if (bad.any().item<bool>()) row = bad.nonzero().select(1, 0)[0].item<int64_t>();  // sync: error check
  }
  TORCH_CHECK(row < 0, "dspark.", op, ": verify_lens must be in [0, ", gamma, "] (the block size); verify_lens[", row,
              "] = ", row < 0 ? 0 : verify_lens[row].item<int64_t>());
}

void check_ids_in_vocab(const char* op, const at::Tensor& ids, int64_t vocab) {
  if (ids.numel() == 0) return;
  bool ok = true;
  int64_t found = 0;
  if (ids.is_cpu()) {
    const auto c = ids.contiguous();
    const int64_t* x = c.data_ptr<int64_t>();
    for (int64_t i = 0; i < c.numel() && ok; ++i)
      if (x[i] < 0 || x[i] >= vocab) ok = false, found = x[i];
  } else {
    const auto bad = at::logical_or(ids < 0, ids >= vocab);
    ok = !bad.any().item<bool>();  // sync: error check
    if (!ok) found = ids.masked_select(bad)[0].item<int64_t>();
  }
  TORCH_CHECK(ok, "dspark.", op, ": draft_ids must be in [0, ", vocab,
              ") (the vocabulary of draft_probs/target_probs); found ", found);
}

// True when every element is finite and > 0.
bool all_positive_finite(const at::Tensor& t) {
  if (t.is_cpu()) {
    const auto c = t.to(at::kDouble).contiguous();
    const double* x = c.data_ptr<double>();
    for (int64_t i = 0; i < c.numel(); ++i)
      if (!(x[i] > 0.0 && std::isfinite(x[i]))) return false;
    return true;
  }
  return at::logical_and(t > 0, t.isfinite()).all().item<bool>();  // sync: error check
}

// Index of the first i with t[i+1] > t[i] along the last dim of a 1-D/2-D tensor, or -1 (row-major).
int64_t first_rise(const at::Tensor& t) {
  const int64_t n = t.size(-1);
  if (n < 2 || t.numel() == 0) return -1;
  if (t.is_cpu()) {
    const auto c = t.to(at::kDouble).contiguous();
    const double* x = c.data_ptr<double>();
    const int64_t rows = c.numel() / n;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i + 1 < n; ++i)
        if (x[r * n + i + 1] > x[r * n + i]) return r * n + i;
    return -1;
  }
  const auto rising = (t.narrow(-1, 1, n - 1) > t.narrow(-1, 0, n - 1)).reshape({-1, n - 1});
  if (!rising.any().item<bool>()) return -1;  // sync: error check
  const auto where = rising.nonzero()[0];
  return where[0].item<int64_t>() * n + where[1].item<int64_t>();
}

}  // namespace

void check_verify_greedy(const at::Tensor& draft_ids, const at::Tensor& target_ids, const at::Tensor& verify_lens) {
  constexpr const char* op = "verify_greedy";
  DSPARK_CHECK_DTYPE("verify_greedy", draft_ids, at::kLong);
  DSPARK_CHECK_DTYPE("verify_greedy", target_ids, at::kLong);
  DSPARK_CHECK_DTYPE("verify_greedy", verify_lens, at::kInt);
  DSPARK_CHECK_DIM("verify_greedy", draft_ids, 2);
  DSPARK_CHECK_DIM("verify_greedy", target_ids, 2);
  DSPARK_CHECK_DIM("verify_greedy", verify_lens, 1);
  DSPARK_CHECK_SAME_DEVICE("verify_greedy", target_ids, draft_ids);
  DSPARK_CHECK_SAME_DEVICE("verify_greedy", verify_lens, draft_ids);
  const int64_t R = draft_ids.size(0), gamma = draft_ids.size(1);
  DSPARK_CHECK_SIZE("verify_greedy", target_ids, 0, R, "R = draft_ids.size(0)");
  DSPARK_CHECK_SIZE("verify_greedy", target_ids, 1, gamma + 1, "γ+1 = draft_ids.size(1)+1");
  DSPARK_CHECK_SIZE("verify_greedy", verify_lens, 0, R, "R = draft_ids.size(0)");
  check_lens_in_range(op, verify_lens, gamma);
}

void check_verify_sampled(const at::Tensor& draft_ids, const at::Tensor& draft_probs, const at::Tensor& target_probs,
                          const at::Tensor& verify_lens, const at::Tensor& is_greedy, int64_t seed, int64_t offset) {
  constexpr const char* op = "verify_sampled";
  DSPARK_CHECK_DTYPE("verify_sampled", draft_ids, at::kLong);
  DSPARK_CHECK_DTYPE("verify_sampled", verify_lens, at::kInt);
  DSPARK_CHECK_DTYPE("verify_sampled", is_greedy, at::kBool);
  TORCH_CHECK(at::isFloatingType(draft_probs.scalar_type()),
              "dspark.verify_sampled: draft_probs must be float32, float16 or bfloat16; got ", draft_probs.scalar_type());
  TORCH_CHECK(target_probs.scalar_type() == draft_probs.scalar_type(),
              "dspark.verify_sampled: target_probs must have the dtype of draft_probs (", draft_probs.scalar_type(),
              "); got ", target_probs.scalar_type());
  DSPARK_CHECK_DIM("verify_sampled", draft_ids, 2);
  DSPARK_CHECK_DIM("verify_sampled", draft_probs, 3);
  DSPARK_CHECK_DIM("verify_sampled", target_probs, 3);
  DSPARK_CHECK_DIM("verify_sampled", verify_lens, 1);
  DSPARK_CHECK_DIM("verify_sampled", is_greedy, 1);
  DSPARK_CHECK_SAME_DEVICE("verify_sampled", draft_probs, draft_ids);
  DSPARK_CHECK_SAME_DEVICE("verify_sampled", target_probs, draft_ids);
  DSPARK_CHECK_SAME_DEVICE("verify_sampled", verify_lens, draft_ids);
  DSPARK_CHECK_SAME_DEVICE("verify_sampled", is_greedy, draft_ids);
  const int64_t R = draft_ids.size(0), gamma = draft_ids.size(1), V = target_probs.size(2);
  TORCH_CHECK(gamma >= 1, "dspark.verify_sampled: draft_ids.size(1) (the block size γ) must be >= 1; got ", gamma);
  DSPARK_CHECK_SIZE("verify_sampled", draft_probs, 0, R, "R = draft_ids.size(0)");
  DSPARK_CHECK_SIZE("verify_sampled", draft_probs, 1, gamma, "γ = draft_ids.size(1)");
  DSPARK_CHECK_SIZE("verify_sampled", draft_probs, 2, V, "V = target_probs.size(2), the vocabulary");
  DSPARK_CHECK_SIZE("verify_sampled", target_probs, 0, R, "R = draft_ids.size(0)");
  DSPARK_CHECK_SIZE("verify_sampled", target_probs, 1, gamma + 1, "γ+1 = draft_ids.size(1)+1");
  DSPARK_CHECK_SIZE("verify_sampled", verify_lens, 0, R, "R = draft_ids.size(0)");
  DSPARK_CHECK_SIZE("verify_sampled", is_greedy, 0, R, "R = draft_ids.size(0)");
  TORCH_CHECK(V >= 1 && V < (int64_t{1} << 31), "dspark.verify_sampled: vocabulary size must be in [1, 2^31); got ", V);
  TORCH_CHECK(R < (int64_t{1} << 31), "dspark.verify_sampled: R must be < 2^31; got ", R);
  TORCH_CHECK(seed >= 0, "dspark.verify_sampled: seed must be >= 0; got ", seed);
  TORCH_CHECK(offset >= 0, "dspark.verify_sampled: offset must be >= 0; got ", offset);
  check_lens_in_range(op, verify_lens, gamma);
  check_ids_in_vocab(op, draft_ids, V);
}

void check_confidence_survival(const at::Tensor& conf_logits, const at::Tensor& sts_temperatures, double threshold) {
  DSPARK_CHECK_DTYPE("confidence_survival", conf_logits, at::kFloat);
  DSPARK_CHECK_DTYPE("confidence_survival", sts_temperatures, at::kFloat);
  DSPARK_CHECK_DIM("confidence_survival", conf_logits, 2);
  DSPARK_CHECK_DIM("confidence_survival", sts_temperatures, 1);
  DSPARK_CHECK_SAME_DEVICE("confidence_survival", sts_temperatures, conf_logits);
  DSPARK_CHECK_SIZE("confidence_survival", sts_temperatures, 0, conf_logits.size(1), "γ = conf_logits.size(1)");
  TORCH_CHECK(threshold >= 0.0 && threshold <= 1.0,
              "dspark.confidence_survival: threshold must be in [0, 1]; got ", threshold);
  TORCH_CHECK(all_positive_finite(sts_temperatures),
              "dspark.confidence_survival: sts_temperatures must all be finite and > 0; got ", sts_temperatures);
}

void check_schedule(const char* op, const at::Tensor& survival, int64_t min_len, int64_t max_len) {
  TORCH_CHECK(survival.scalar_type() == at::kFloat, "dspark.", op, ": survival must have dtype Float; got ",
              survival.scalar_type());
  TORCH_CHECK(survival.dim() == 2, "dspark.", op, ": survival must be 2-D [R, γ]; got shape ", survival.sizes());
  const int64_t gamma = survival.size(1);
  TORCH_CHECK(0 <= min_len && min_len <= max_len && max_len <= gamma, "dspark.", op,
              ": need 0 <= min_len <= max_len <= γ = survival.size(1) = ", gamma, "; got min_len = ", min_len,
              ", max_len = ", max_len);
  TORCH_CHECK(survival.size(0) < (int64_t{1} << 24), "dspark.", op, ": R = survival.size(0) must be < 2^24; got ",
              survival.size(0));
  TORCH_CHECK(gamma < 256, "dspark.", op, ": γ = survival.size(1) must be < 256; got ", gamma);
  if (survival.numel() == 0) return;
  bool in_range = true;
  if (survival.is_cpu()) {
    const auto c = survival.contiguous();
    const float* x = c.data_ptr<float>();
    for (int64_t i = 0; i < c.numel() && in_range; ++i) in_range = x[i] >= 0.0f && x[i] <= 1.0f;
  } else {
    in_range = at::logical_and(survival >= 0, survival <= 1).all().item<bool>();  // sync: error check
  }
  TORCH_CHECK(in_range, "dspark.", op, ": survival must lie in [0, 1] (products of confidences); got min ",
              survival.min().item<float>(), ", max ", survival.max().item<float>());
  const int64_t rise = first_rise(survival);
  TORCH_CHECK(rise < 0, "dspark.", op, ": survival must be non-increasing along each row (a_k = Π_{i<=k} c_i); row ",
              rise / std::max<int64_t>(gamma, 1), " rises at slot ", rise % std::max<int64_t>(gamma, 1) + 1);
}

void check_sps_table(const at::Tensor& sps_table, int64_t num_reqs, int64_t max_len) {
  TORCH_CHECK(sps_table.scalar_type() == at::kFloat || sps_table.scalar_type() == at::kDouble,
              "dspark.schedule_prefix: sps_table must be float32 or float64; got ", sps_table.scalar_type());
  TORCH_CHECK(sps_table.dim() == 1, "dspark.schedule_prefix: sps_table must be 1-D [B_max+1]; got shape ",
              sps_table.sizes());
  const int64_t needed = num_reqs * (max_len + 1) + 1;
  TORCH_CHECK(sps_table.size(0) >= needed, "dspark.schedule_prefix: sps_table needs at least R*(max_len+1)+1 = ",
              needed, " entries (SPS at every verify size up to ", needed - 1, "); got ", sps_table.size(0),
              ". Profile a larger table or lower max_len");
  const auto used = sps_table.slice(0, 1, needed);
  TORCH_CHECK(all_positive_finite(used), "dspark.schedule_prefix: sps_table[1:", needed,
              "] must be finite and > 0 (steps per second)");
  const int64_t rise = first_rise(used);
  TORCH_CHECK(rise < 0, "dspark.schedule_prefix: sps_table must be non-increasing in B (a larger verify batch is "
              "never faster); it rises at B = ", rise + 2, ". Take the running minimum of the profile");
}

int schedule_mode_from_string(const std::string& mode) {
  if (mode == "early_stop") return 0;
  if (mode == "global") return 1;
  TORCH_CHECK(false, "dspark.schedule_prefix: mode must be \"early_stop\" or \"global\"; got \"", mode, "\"");
}

void check_sample_categorical(const at::Tensor& probs, const at::Tensor& uniforms) {
  DSPARK_CHECK_DTYPE("sample_categorical", probs, at::kFloat);
  DSPARK_CHECK_DTYPE("sample_categorical", uniforms, at::kDouble);
  DSPARK_CHECK_DIM("sample_categorical", probs, 2);
  DSPARK_CHECK_DIM("sample_categorical", uniforms, 1);
  DSPARK_CHECK_SAME_DEVICE("sample_categorical", uniforms, probs);
  DSPARK_CHECK_SIZE("sample_categorical", uniforms, 0, probs.size(0), "one uniform per row of probs");
  TORCH_CHECK(probs.size(1) > 0, "dspark.sample_categorical: probs needs at least one column; got shape ",
              probs.sizes());
}

}  // namespace dspark
