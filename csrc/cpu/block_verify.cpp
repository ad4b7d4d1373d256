// CPU faces of verify_greedy and verify_sampled (spec: dspark_sglang/ops/reference.py).
// One request per task; each request reads only the probability rows it needs, so the work is
// O(R·γ) gathers plus O(V) per emitted token, with no temporaries beyond the outputs.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

#include "../counter_rng.h"
#include "../ops.h"

namespace dspark {

std::tuple<at::Tensor, at::Tensor> verify_greedy_cpu(const at::Tensor& draft_ids, const at::Tensor& target_ids,
                                                     const at::Tensor& verify_lens) {
  check_verify_greedy(draft_ids, target_ids, verify_lens);
  const auto draft = draft_ids.contiguous();
  const auto target = target_ids.contiguous();
  const auto lens = verify_lens.contiguous();
  const int64_t R = draft.size(0), gamma = draft.size(1);
  auto accept_lens = at::empty({R}, lens.options());
  auto out_ids = at::full({R, gamma + 1}, -1, draft.options());
  const int64_t* d = draft.data_ptr<int64_t>();
  const int64_t* t = target.data_ptr<int64_t>();
  const int32_t* l = lens.data_ptr<int32_t>();
  int32_t* acc = accept_lens.data_ptr<int32_t>();
  int64_t* out = out_ids.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r) {
    const int64_t* dr = d + r * gamma;
    const int64_t* tr = t + r * (gamma + 1);
    int64_t* o = out + r * (gamma + 1);
    int32_t k = 0;
    while (k < l[r] && dr[k] == tr[k]) {
      o[k] = dr[k];
      ++k;
    }
    o[k] = tr[k];  // correction at the first mismatch, or the bonus after verify_len passes
    acc[r] = k;
  }
  return {accept_lens, out_ids};
}

namespace {

template <typename scalar_t>
int64_t argmax_row(const scalar_t* p, int64_t V) {
  int64_t best = 0;
  float best_v = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < V; ++i) {
    const float v = static_cast<float>(p[i]);
    if (v > best_v) {
      best_v = v;
      best = i;
    }
  }
  return best;
}

// Exponential race over w = max(0, p − q) (or p when that is all zero, or when q is null):
// argmax_i w_i / E_i, first index on ties. E_i is only needed where p_i > 0 (w_i = 0 elsewhere) and
// where the token could still win (cannot_beat).
template <typename scalar_t>
int64_t race_row(const scalar_t* p, const scalar_t* q, int64_t V, uint32_t draw_key) {
  int64_t best_res = 0, best_p = 0;
  double key_res = 0.0, key_p = 0.0;
  bool any_res = false;
  for (int64_t i = 0; i < V; ++i) {
    const double pi = static_cast<double>(p[i]);
    if (!(pi > 0.0)) continue;
    const double res = q != nullptr ? pi - static_cast<double>(q[i]) : 0.0;
    any_res = any_res || res > 0.0;
    const double u = uniform_from_hash(mix32(draw_key ^ static_cast<uint32_t>(i)));
    if (cannot_beat(u, pi, key_p) && (!(res > 0.0) || cannot_beat(u, res, key_res))) continue;
    const double e = -std::log(u);  // E_i ~ Exp(1)
    if (pi / e > key_p) {
      key_p = pi / e;
      best_p = i;
    }
    if (res > 0.0 && res / e > key_res) {
      key_res = res / e;
      best_res = i;
    }
  }
  return any_res ? best_res : best_p;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> verify_sampled_cpu(const at::Tensor& draft_ids, const at::Tensor& draft_probs,
                                                      const at::Tensor& target_probs, const at::Tensor& verify_lens,
                                                      const at::Tensor& is_greedy, int64_t seed, int64_t offset) {
  check_verify_sampled(draft_ids, draft_probs, target_probs, verify_lens, is_greedy, seed, offset);
  const auto draft = draft_ids.contiguous();
  const auto q_all = draft_probs.contiguous();
  const auto p_all = target_probs.contiguous();
  const auto lens = verify_lens.contiguous();
  const auto greedy = is_greedy.contiguous();
  const int64_t R = draft.size(0), gamma = draft.size(1), V = p_all.size(2);
  auto accept_lens = at::empty({R}, lens.options());
  auto out_ids = at::full({R, gamma + 1}, -1, draft.options());
  const uint32_t base = base_key(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  const int64_t* d = draft.data_ptr<int64_t>();
  const int32_t* l = lens.data_ptr<int32_t>();
  const bool* g = greedy.data_ptr<bool>();
  int32_t* acc = accept_lens.data_ptr<int32_t>();
  int64_t* out = out_ids.data_ptr<int64_t>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p_all.scalar_type(), "verify_sampled_cpu", [&] {
    const scalar_t* p = p_all.data_ptr<scalar_t>();
    const scalar_t* q = q_all.data_ptr<scalar_t>();
    // Rows cost O(γ) unless they emit a token (O(V)): parallelise over rows, small grain for large V.
    const int64_t grain = V >= 4096 ? 1 : 64;
    at::parallel_for(0, R, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t* dr = d + r * gamma;
        const scalar_t* pr = p + r * (gamma + 1) * V;
        const scalar_t* qr = q + r * gamma * V;
        int64_t* o = out + r * (gamma + 1);
        int32_t k = 0;
        int64_t emitted;
        if (g[r]) {
          for (;; ++k) {
            const int64_t best = argmax_row(pr + k * V, V);
            if (k == l[r] || dr[k] != best) {
              emitted = best;
              break;
            }
            o[k] = dr[k];
          }
        } else {
          for (; k < l[r]; ++k) {
            const int64_t x = dr[k];
            const double px = static_cast<double>(pr[k * V + x]);
            const double qx = static_cast<double>(qr[k * V + x]);
            if (!(coin(base, static_cast<uint32_t>(r), static_cast<uint32_t>(k)) * qx < px)) break;
            o[k] = x;
          }
          const uint32_t key = pos_key(base, static_cast<uint32_t>(r), static_cast<uint32_t>(k), 1);
          emitted = race_row(pr + k * V, k < l[r] ? qr + k * V : static_cast<const scalar_t*>(nullptr), V, key);
        }
        o[k] = emitted;
        acc[r] = k;
      }
    });
  });
  return {accept_lens, out_ids};
}

}  // namespace dspark
