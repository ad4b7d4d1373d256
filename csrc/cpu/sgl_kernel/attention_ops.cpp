// Paged attention for SGLang's intel_amx attention backend on CPUs (see common.h):
//
//   decode_attention_cpu   one query per request over req_to_token[r, :seq_len] (writes the new K/V first)
//   extend_attention_cpu   extend_seq_len queries per request: committed prefix from the KV pool, the
//                          new tokens from k_extend/v_extend; causal, non-causal, or a draft-token tree
//                          mask ([n, n] per request, as NGRAM/EAGLE verify passes it)
//
// Math is float32 whatever the storage dtype (fp32, bf16, fp16, fp8-e4m3 KV with k_scale/v_scale):
//   s_j = sm_scale * <q, k_j>, capped as logit_cap * tanh(s_j / logit_cap) when logit_cap > 0,
//   o = sum_j softmax(s)_j v_j, where an attention sink adds exp(sink_h) to the denominator only.
// A key at position p is visible to a query at position t when p <= t (causal) and, with a sliding
// window w > 0, t - p < w. attn_logits (the split-K scratch of the sgl-kernel decode kernel) and
// max_len_extend are accepted for schema compatibility and unused: this kernel does not split K.
// Decode rows, verify windows (<= 8 rows per request) and prefill chunks over fp32 / bf16 pools go to the
// paged-rows kernel (attention_rows.h: each key read once for all rows and heads of a row block, online
// softmax, long contexts of short extends split over threads); the loops below serve fp16 / fp8 pools,
// windows, caps and sinks, and tree masks on long extends: those gather each request's K/V once and run
// S = QK^T and O = PV as GEMMs, masking S in between.
#include <cmath>
#include <limits>
#include <vector>

#include "attention_rows.h"
#include "common.h"
#include "vec16.h"

namespace sgl_cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kQueryChunk = 64;  // extend queries per GEMM task: bounds the [chunk, keys] score tile
constexpr int64_t kSmallExtend = 64; // extends up to this many queries per request take extend_small_request
constexpr int64_t kTinyExtend = 8;   // batches whose extends are all this short take the paged-rows kernel
                                     // (fp32 / bf16 pools) or extend_tiny_impl (fp16 / fp8 pools, causal)

template <typename T>
inline float dot_mixed(const float* __restrict q, const T* __restrict k, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t d = 0; d < n; ++d) acc += q[d] * static_cast<float>(k[d]);
  return acc;
}

inline float cap(float s, float logit_cap) { return logit_cap > 0.f ? logit_cap * std::tanh(s / logit_cap) : s; }

// Turns scores[0:n) (-inf = masked) into probabilities in place; returns 1 / denominator.
inline float softmax_in_place(float* scores, int64_t n, const float* sink) {
  float mx = sink ? *sink : kNegInf;
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, scores[j]);
  if (mx == kNegInf) return 0.f;  // nothing visible: output zeros
  float sum = sink ? std::exp(*sink - mx) : 0.f;
  for (int64_t j = 0; j < n; ++j) {
    const float p = scores[j] == kNegInf ? 0.f : std::exp(scores[j] - mx);
    scores[j] = p;
    sum += p;
  }
  return 1.f / sum;
}

struct Shape {
  int64_t heads, kv_heads, head_dim, v_head_dim;
  int64_t group() const { return heads / kv_heads; }
};

void check_common(const at::Tensor& q, const at::Tensor& k_buf, const at::Tensor& v_buf, const at::Tensor& out,
                  const at::Tensor& req_to_token, bool is_cross, const std::optional<at::Tensor>& sinks,
                  const char* op, Shape* shape) {
  for (const auto* t : {&q, &k_buf, &v_buf, &out}) check_cpu(*t, op, "q/k/v/o");
  check_index(req_to_token, op, "req_to_token");
  SGL_CPU_CHECK(!is_cross, op, "cross attention (is_cross=True) is not supported by the dspark CPU host ops");
  SGL_CPU_CHECK(q.dim() == 3 && k_buf.dim() == 3 && v_buf.dim() == 3 && out.dim() == 3, op,
                "query, k_buffer, v_buffer and output must be 3-D [tokens, heads, dim]; got ", q.sizes(), ", ",
                k_buf.sizes(), ", ", v_buf.sizes(), ", ", out.sizes());
  SGL_CPU_CHECK(k_buf.stride(2) == 1 && v_buf.stride(2) == 1, op, "KV buffers need a unit stride on head_dim");
  SGL_CPU_CHECK(req_to_token.dim() == 2 && req_to_token.is_contiguous(), op,
                "req_to_token must be a contiguous 2-D tensor");
  *shape = {q.size(1), k_buf.size(1), q.size(2), v_buf.size(2)};
  SGL_CPU_CHECK(k_buf.size(2) == shape->head_dim, op, "k_buffer head_dim ", k_buf.size(2), " != query head_dim ",
                shape->head_dim);
  SGL_CPU_CHECK(shape->heads % shape->kv_heads == 0, op, "query heads (", shape->heads,
                ") must be a multiple of KV heads (", shape->kv_heads, ")");
  SGL_CPU_CHECK(out.size(1) == shape->heads && out.size(2) == shape->v_head_dim, op, "output must be [tokens, ",
                shape->heads, ", ", shape->v_head_dim, "]; got ", out.sizes());
  if (sinks.has_value()) {
    SGL_CPU_CHECK(sinks->numel() == shape->heads, op, "sinks needs one value per head (", shape->heads, ")");
  }
}

// Decode: one query per request, every key read in place from the KV pool.
template <typename KV>
void decode_impl(const at::Tensor& q, const at::Tensor& k_buf, const at::Tensor& v_buf, float k_scale, float v_scale,
                 at::Tensor& out, const at::Tensor& req_to_token, const at::Tensor& rows, const at::Tensor& lens,
                 float sm_scale, float logit_cap, int64_t window, const float* sinks, const Shape& s) {
  const int64_t bs = q.size(0), pool_len = req_to_token.size(1);
  const float* qp = q.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const KV* kp = k_buf.data_ptr<KV>();
  const KV* vp = v_buf.data_ptr<KV>();
  const int64_t ks = k_buf.stride(0), khs = k_buf.stride(1), vs = v_buf.stride(0), vhs = v_buf.stride(1);
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t* sl = lens.data_ptr<int64_t>();
  const int64_t g = s.group();
  with_index_type(req_to_token, [&](auto* table) {
    // One task per (request, KV head): each cached K/V row is read once for the g query heads sharing it.
    at::parallel_for(0, bs * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scores;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / s.kv_heads, hk = task % s.kv_heads;
        const auto* locs = table + r[b] * pool_len;
        const int64_t n = sl[b], lo = window > 0 ? std::max<int64_t>(0, n - window) : 0, len = n - lo;
        const float* qg = qp + (b * s.heads + hk * g) * s.head_dim;  // the g heads of this KV head
        scores.assign(g * len, 0.f);
        for (int64_t j = lo; j < n; ++j) {
          const KV* kr = kp + static_cast<int64_t>(locs[j]) * ks + hk * khs;
          for (int64_t x = 0; x < g; ++x) {
            scores[x * len + j - lo] = cap(sm_scale * k_scale * dot_mixed(qg + x * s.head_dim, kr, s.head_dim),
                                           logit_cap);
          }
        }
        std::vector<float> inv(g);
        for (int64_t x = 0; x < g; ++x) {
          const int64_t h = hk * g + x;
          inv[x] = softmax_in_place(scores.data() + x * len, len, sinks ? sinks + h : nullptr);
        }
        float* og = op + (b * s.heads + hk * g) * s.v_head_dim;
        for (int64_t d = 0; d < g * s.v_head_dim; ++d) og[d] = 0.f;
        for (int64_t j = lo; j < n; ++j) {
          const KV* vr = vp + static_cast<int64_t>(locs[j]) * vs + hk * vhs;
          for (int64_t x = 0; x < g; ++x) {
            const float p = scores[x * len + j - lo];
            if (p == 0.f) continue;
            float* o = og + x * s.v_head_dim;
#pragma omp simd
            for (int64_t d = 0; d < s.v_head_dim; ++d) o[d] += p * static_cast<float>(vr[d]);
          }
        }
        for (int64_t x = 0; x < g; ++x) {
          const float scale = inv[x] * v_scale;
          for (int64_t d = 0; d < s.v_head_dim; ++d) og[x * s.v_head_dim + d] *= scale;
        }
      }
    });
  });
}

// The pool, table and shape fields of a PagedRows call (the per-request arrays are set by the caller).
PagedRows paged_rows(const at::Tensor& q, at::Tensor& out, const at::Tensor& k_buf, const at::Tensor& v_buf,
                     double k_scale, double v_scale, double sm_scale, const at::Tensor& req_to_token, const Shape& s) {
  PagedRows p;
  p.q = q.data_ptr<float>();
  p.out = out.data_ptr<float>();
  p.k_buf = k_buf.data_ptr();
  p.v_buf = v_buf.data_ptr();
  p.kv_bf16 = k_buf.scalar_type() == at::kBFloat16;
  p.k_stride = k_buf.stride(0);
  p.k_head_stride = k_buf.stride(1);
  p.v_stride = v_buf.stride(0);
  p.v_head_stride = v_buf.stride(1);
  p.k_scale = static_cast<float>(k_scale);
  p.v_scale = static_cast<float>(v_scale);
  p.sm_scale = static_cast<float>(sm_scale);
  p.req_to_token = req_to_token.data_ptr();
  p.table_int32 = req_to_token.scalar_type() == at::kInt;
  p.pool_len = req_to_token.size(1);
  p.heads = s.heads;
  p.kv_heads = s.kv_heads;
  p.head_dim = s.head_dim;
  p.v_head_dim = s.v_head_dim;
  return p;
}

void decode_attention_cpu(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                          double k_scale, double v_scale, const at::Tensor& output,
                          const std::optional<at::Tensor>& key, const std::optional<at::Tensor>& value,
                          const at::Tensor& loc, const at::Tensor& attn_logits, const at::Tensor& req_to_token,
                          const at::Tensor& req_pool_indices, const at::Tensor& seq_lens, double sm_scale,
                          double logit_cap, bool is_cross, int64_t sliding_window,
                          const std::optional<at::Tensor>& encoder_lens, const std::optional<at::Tensor>& sinks) {
  constexpr const char* op = "decode_attention_cpu";
  Shape s;
  check_common(query, k_cache, v_cache, output, req_to_token, is_cross, sinks, op, &s);
  const int64_t bs = query.size(0);
  SGL_CPU_CHECK(req_pool_indices.numel() == bs && seq_lens.numel() == bs, op,
                "req_pool_indices and seq_lens need one entry per query (", bs, ")");
  if (key.has_value() && value.has_value()) {
    // The new token's K/V go into the pool first, as the backend leaves that write to this kernel.
    const auto idx = as_long(loc);
    auto kc = k_cache;
    auto vc = v_cache;
    kc.index_copy_(0, idx, key->reshape({-1, s.kv_heads, s.head_dim}).to(k_cache.scalar_type()));
    vc.index_copy_(0, idx, value->reshape({-1, s.kv_heads, s.v_head_dim}).to(v_cache.scalar_type()));
  }
  if (bs == 0) return;
  const auto q = query.to(at::kFloat).contiguous();
  auto out = at::empty({bs, s.heads, s.v_head_dim}, q.options());
  const auto rows = as_long(req_pool_indices);
  const auto lens = as_long(seq_lens);
  SGL_CPU_CHECK(v_cache.scalar_type() == k_cache.scalar_type(), op, "k_cache and v_cache dtypes differ");
  if (sliding_window <= 0 && logit_cap == 0.0 && !sinks.has_value() && paged_rows_supports(k_cache.scalar_type())) {
    const auto ones = at::ones({bs}, rows.options());
    const auto starts = at::arange(bs, rows.options());
    auto pr = paged_rows(q, out, k_cache, v_cache, k_scale, v_scale, sm_scale, req_to_token, s);
    pr.q_bf16 = query.scalar_type() == at::kBFloat16;
    pr.pool_rows = rows.data_ptr<int64_t>();
    pr.seq_lens = lens.data_ptr<int64_t>();
    pr.ext_lens = ones.data_ptr<int64_t>();
    pr.starts = starts.data_ptr<int64_t>();
    pr.batch = bs;
    for (int64_t b = 0; b < bs; ++b) {
      SGL_CPU_CHECK(pr.seq_lens[b] >= 1 && pr.seq_lens[b] <= req_to_token.size(1), op, "request ", b,
                    " has seq_len ", pr.seq_lens[b], " (needs 1..", req_to_token.size(1), ")");
    }
    attend_paged_rows(pr);
    auto o = output;
    o.copy_(out);
    return;
  }
  at::Tensor sink_f;
  if (sinks.has_value()) sink_f = sinks->to(at::kFloat).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kBFloat16, at::kHalf, at::kFloat8_e4m3fn, k_cache.scalar_type(), op, [&] {
    decode_impl<scalar_t>(q, k_cache, v_cache, static_cast<float>(k_scale), static_cast<float>(v_scale), out,
                          req_to_token, rows, lens, static_cast<float>(sm_scale), static_cast<float>(logit_cap),
                          sliding_window, sink_f.defined() ? sink_f.data_ptr<float>() : nullptr, s);
  });
  auto o = output;
  o.copy_(out);
}

// Scores [rows, n_keys] of consecutive queries at positions first_pos, first_pos + 1, ... to probabilities,
// in place: query t sees keys [t − window + 1 (window > 0), t] when causal, [.., n_keys) otherwise.
DSPARK_CPU_CLONES
void softmax_query_rows(float* scores, int64_t rows, int64_t n_keys, int64_t first_pos, int64_t window, bool causal,
                        float scale) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = first_pos + r;
    const int64_t lo = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
    const int64_t hi = causal ? std::min(t + 1, n_keys) : n_keys;
    vec::softmax_span(scores + r * n_keys, n_keys, lo, hi, scale);
  }
}

// Gathers one request's keys and values as float [kv_heads, seq_len, dim]: positions below `fresh`
// from the pool (times the pool scale), the rest from the extend tensors when given.
template <typename KV>
void gather_request(const at::Tensor& k_buf, const at::Tensor& v_buf, float k_scale, float v_scale,
                    const at::Tensor& k_ext, const at::Tensor& v_ext, const int64_t* locs_l, int64_t seq_len,
                    int64_t fresh, int64_t ext_start, const Shape& s, float* kf, float* vf) {
  const KV* kp = k_buf.data_ptr<KV>();
  const KV* vp = v_buf.data_ptr<KV>();
  const int64_t ks = k_buf.stride(0), khs = k_buf.stride(1), vs = v_buf.stride(0), vhs = v_buf.stride(1);
  const bool from_ext = k_ext.defined();
  at::parallel_for(0, seq_len, 64, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      for (int64_t hk = 0; hk < s.kv_heads; ++hk) {
        float* kd = kf + (hk * seq_len + j) * s.head_dim;
        float* vd = vf + (hk * seq_len + j) * s.v_head_dim;
        if (from_ext && j >= fresh) {
          const float* ke = k_ext.data_ptr<float>() + ((ext_start + j - fresh) * s.kv_heads + hk) * s.head_dim;
          const float* ve = v_ext.data_ptr<float>() + ((ext_start + j - fresh) * s.kv_heads + hk) * s.v_head_dim;
          for (int64_t d = 0; d < s.head_dim; ++d) kd[d] = ke[d];
          for (int64_t d = 0; d < s.v_head_dim; ++d) vd[d] = ve[d];
        } else {
          const KV* kr = kp + locs_l[j] * ks + hk * khs;
          const KV* vr = vp + locs_l[j] * vs + hk * vhs;
          for (int64_t d = 0; d < s.head_dim; ++d) kd[d] = k_scale * static_cast<float>(kr[d]);
          for (int64_t d = 0; d < s.v_head_dim; ++d) vd[d] = v_scale * static_cast<float>(vr[d]);
        }
      }
    }
  });
}

// Keys/values of positions [0, count) of one request from the pool, as float [kv_heads, count, dim]:
// a strided VIEW of the pool when it is float32, unscaled and the request's slots are consecutive (the
// common case: SGLang allocates a request's slots in order), else an index_select gather.
at::Tensor pool_rows(const at::Tensor& buf, const std::vector<int64_t>& locs, int64_t count, float scale) {
  bool consecutive = buf.scalar_type() == at::kFloat && scale == 1.f;
  for (int64_t j = 1; consecutive && j < count; ++j) consecutive = locs[j] == locs[0] + j;
  at::Tensor rows;
  if (consecutive) {
    rows = buf.narrow(0, locs[0], count);
  } else {
    const auto idx = at::from_blob(const_cast<int64_t*>(locs.data()), {count}, at::kLong);
    rows = buf.index_select(0, idx).to(at::kFloat);
    if (scale != 1.f) rows.mul_(scale);
  }
  return rows.permute({1, 0, 2});  // [kv_heads, count, dim]
}

// Short extends (verify windows, small chunks: m <= kSmallExtend queries) as a few batched ATen calls per
// request instead of per-head loops: per KV head the g*m query rows that share it form one GEMM against
// the request's keys, the fresh keys are masked (causal or tree mask), and the softmax is ATen's
// vectorised one. Plain causal/tree/non-causal only: no sliding window, logit cap or sinks.
void extend_small_request(const at::Tensor& q, const at::Tensor& k_ext, const at::Tensor& v_ext,
                          const at::Tensor& k_buf, const at::Tensor& v_buf, float k_scale, float v_scale,
                          const std::vector<int64_t>& locs, int64_t n, int64_t m, int64_t start,
                          const bool* tree, bool is_causal, float scale, const Shape& s, at::Tensor& out) {
  const int64_t prefix = n - m, g = s.group();
  // Keys from the pool: all n when no extend K/V is passed, else only the committed prefix.
  const int64_t n_pool = k_ext.defined() ? prefix : n;
  const auto qg = q.narrow(0, start, m).view({m, s.kv_heads, g, s.head_dim}).permute({1, 2, 0, 3})
                      .reshape({s.kv_heads, g * m, s.head_dim});                       // [HK, g*m, D]
  std::vector<at::Tensor> score_parts, values;
  if (n_pool > 0) {
    const auto kp = pool_rows(k_buf, locs, n_pool, k_scale);                             // [HK, n_pool, D]
    score_parts.push_back(at::bmm(qg, kp.transpose(1, 2)));
    values.push_back(pool_rows(v_buf, locs, n_pool, v_scale));
  }
  if (n_pool < n) {
    const auto ke = k_ext.narrow(0, start, m).permute({1, 0, 2});                        // [HK, m, D]
    score_parts.push_back(at::bmm(qg, ke.transpose(1, 2)));
    values.push_back(v_ext.narrow(0, start, m).permute({1, 0, 2}));
  }
  auto scores = score_parts.size() == 1 ? score_parts[0] : at::cat(score_parts, 2);     // [HK, g*m, n]
  scores.mul_(scale);
  if (is_causal || tree != nullptr) {
    // Visibility of the m fresh keys for query row (x, i): causal j <= i, or the tree mask row i.
    auto hidden = at::empty({m, m}, at::kBool);
    bool* hp = hidden.data_ptr<bool>();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < m; ++j) hp[i * m + j] = tree != nullptr ? !tree[i * m + j] : j > i;
    scores.narrow(2, prefix, m).view({s.kv_heads, g, m, m}).masked_fill_(hidden, -std::numeric_limits<float>::infinity());
  }
  const auto probs = at::softmax(scores, -1);                                            // [HK, g*m, n]
  at::Tensor o;
  int64_t col = 0;
  for (const auto& v : values) {
    const int64_t len = v.size(1);
    const auto part = at::bmm(probs.narrow(2, col, len), v);                            // [HK, g*m, Dv]
    o = o.defined() ? o.add_(part) : part;
    col += len;
  }
  out.narrow(0, start, m).copy_(o.view({s.kv_heads, g, m, s.v_head_dim}).permute({2, 0, 1, 3})
                                    .reshape({m, s.heads, s.v_head_dim}));
}

// Short causal extends (every request <= kTinyExtend queries: speculative verify windows), no tree mask,
// window, cap or sinks. One task per (request, KV head), like decode, with no ATen call inside: query row i
// of request b sees the pool keys [0, prefix) and the fresh keys 0..i (from k_ext when given, else the
// pool). With many requests per batch the per-request GEMM path spent most of its time in op dispatch.
template <typename KV>
void extend_tiny_impl(const at::Tensor& q, const at::Tensor& k_ext, const at::Tensor& v_ext, const at::Tensor& k_buf,
                      const at::Tensor& v_buf, float k_scale, float v_scale, at::Tensor& out,
                      const at::Tensor& req_to_token, const int64_t* r, const int64_t* sl, const int64_t* el,
                      const int64_t* st, int64_t bs, float scale, const Shape& s) {
  const int64_t pool_len = req_to_token.size(1), g = s.group(), hd = s.head_dim, vd = s.v_head_dim;
  const float* qp = q.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const KV* kp = k_buf.data_ptr<KV>();
  const KV* vp = v_buf.data_ptr<KV>();
  const int64_t ks = k_buf.stride(0), khs = k_buf.stride(1), vs = v_buf.stride(0), vhs = v_buf.stride(1);
  const bool ext = k_ext.defined();
  const float* kep = ext ? k_ext.data_ptr<float>() : nullptr;  // [T, HK, D] contiguous
  const float* vep = ext ? v_ext.data_ptr<float>() : nullptr;
  with_index_type(req_to_token, [&](auto* table) {
    at::parallel_for(0, bs * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scores, inv;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / s.kv_heads, hk = task % s.kv_heads;
        const int64_t n = sl[b], m = el[b], prefix = n - m, n_pool = ext ? prefix : n;
        if (m == 0) continue;
        const auto* locs = table + r[b] * pool_len;
        // scores[(i * g + x) * n + j]: query row i, head x of this KV head, key j (visible iff j <= prefix + i)
        scores.assign(m * g * n, 0.f);
        for (int64_t j = 0; j < n; ++j) {
          const int64_t i0 = std::max<int64_t>(0, j - prefix);  // first query row that sees key j
          for (int64_t i = i0; i < m; ++i) {
            const float* qi = qp + ((st[b] + i) * s.heads + hk * g) * hd;
            for (int64_t x = 0; x < g; ++x) {
              float dot;
              if (j < n_pool) {
                dot = k_scale * dot_mixed(qi + x * hd, kp + static_cast<int64_t>(locs[j]) * ks + hk * khs, hd);
              } else {
                dot = dot_mixed(qi + x * hd, kep + ((st[b] + j - prefix) * s.kv_heads + hk) * hd, hd);
              }
              scores[(i * g + x) * n + j] = scale * dot;
            }
          }
        }
        inv.resize(m * g);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t x = 0; x < g; ++x) inv[i * g + x] = softmax_in_place(scores.data() + (i * g + x) * n, prefix + i + 1, nullptr);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t d = 0; d < g * vd; ++d) op[((st[b] + i) * s.heads + hk * g) * vd + d] = 0.f;
        for (int64_t j = 0; j < n; ++j) {
          const bool from_pool = j < n_pool;
          const KV* vr = from_pool ? vp + static_cast<int64_t>(locs[j]) * vs + hk * vhs : nullptr;
          const float* ve = from_pool ? nullptr : vep + ((st[b] + j - prefix) * s.kv_heads + hk) * vd;
          const float vsc = from_pool ? v_scale : 1.f;
          for (int64_t i = std::max<int64_t>(0, j - prefix); i < m; ++i) {
            for (int64_t x = 0; x < g; ++x) {
              const float p = scores[(i * g + x) * n + j] * inv[i * g + x] * vsc;
              if (p == 0.f) continue;
              float* o = op + ((st[b] + i) * s.heads + hk * g + x) * vd;
              if (from_pool) {
#pragma omp simd
                for (int64_t d = 0; d < vd; ++d) o[d] += p * static_cast<float>(vr[d]);
              } else {
#pragma omp simd
                for (int64_t d = 0; d < vd; ++d) o[d] += p * ve[d];
              }
            }
          }
        }
      }
    });
  });
}

void extend_attention_cpu(const at::Tensor& q_extend, const std::optional<at::Tensor>& k_extend,
                          const std::optional<at::Tensor>& v_extend, const at::Tensor& o_extend,
                          const at::Tensor& k_buffer, const at::Tensor& v_buffer, double k_scale, double v_scale,
                          const at::Tensor& req_to_token, const at::Tensor& req_pool_indices,
                          const at::Tensor& seq_lens, const at::Tensor& extend_seq_lens,
                          const at::Tensor& extend_start_loc, int64_t max_len_extend, double sm_scale,
                          double logit_cap, bool is_cross, int64_t sliding_window,
                          const std::optional<at::Tensor>& encoder_lens, const std::optional<at::Tensor>& sinks,
                          const std::optional<at::Tensor>& tree_mask, bool is_causal) {
  constexpr const char* op = "extend_attention_cpu";
  Shape s;
  check_common(q_extend, k_buffer, v_buffer, o_extend, req_to_token, is_cross, sinks, op, &s);
  const int64_t bs = req_pool_indices.numel(), pool_len = req_to_token.size(1);
  SGL_CPU_CHECK(seq_lens.numel() == bs && extend_seq_lens.numel() == bs && extend_start_loc.numel() == bs, op,
                "seq_lens, extend_seq_lens and extend_start_loc need one entry per request (", bs, ")");
  SGL_CPU_CHECK(k_extend.has_value() == v_extend.has_value(), op, "k_extend and v_extend must be given together");
  if (bs == 0 || q_extend.size(0) == 0) return;
  const auto q = q_extend.to(at::kFloat).contiguous();
  at::Tensor k_ext, v_ext;
  if (k_extend.has_value()) {
    k_ext = k_extend->to(at::kFloat).reshape({-1, s.kv_heads, s.head_dim}).contiguous();
    v_ext = v_extend->to(at::kFloat).reshape({-1, s.kv_heads, s.v_head_dim}).contiguous();
  }
  at::Tensor mask;
  if (tree_mask.has_value() && tree_mask->numel() > 0) mask = tree_mask->view(-1).to(at::kBool).contiguous();
  at::Tensor sink_f;
  if (sinks.has_value()) sink_f = sinks->to(at::kFloat).contiguous();
  const float* sink = sink_f.defined() ? sink_f.data_ptr<float>() : nullptr;
  const auto rows = as_long(req_pool_indices);
  const auto lens = as_long(seq_lens);
  const auto ext_lens = as_long(extend_seq_lens);
  const auto starts = as_long(extend_start_loc);
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t* sl = lens.data_ptr<int64_t>();
  const int64_t* el = ext_lens.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  auto out = at::zeros({q.size(0), s.heads, s.v_head_dim}, q.options());
  const float scale = static_cast<float>(sm_scale), lcap = static_cast<float>(logit_cap);
  // Verify windows: every extend <= kTinyExtend rows (tree masks are packed [m_b, m_b] blocks)
  bool all_short = true, all_fit = true;
  std::vector<int64_t> mask_offsets(bs, 0);
  int64_t mask_total = 0;
  for (int64_t b = 0; b < bs; ++b) {
    const bool fits = el[b] >= 0 && el[b] <= sl[b] && sl[b] <= pool_len;
    all_fit = all_fit && fits;
    all_short = all_short && fits && el[b] <= kTinyExtend;
    mask_offsets[b] = mask_total;
    mask_total += el[b] * el[b];
  }
  const bool plain_scores = sliding_window <= 0 && lcap == 0.f && sink == nullptr;  // no window, cap or sinks
  // ... over fp32 / bf16 pools, causal, non-causal or tree-masked (verify windows), and prefill chunks (causal or
  // not, no tree mask): the paged-rows kernel (attention_rows.h)
  if (plain_scores && (all_short || (all_fit && !mask.defined())) && paged_rows_supports(k_buffer.scalar_type()) &&
      v_buffer.scalar_type() == k_buffer.scalar_type()) {
    auto pr = paged_rows(q, out, k_buffer, v_buffer, k_scale, v_scale, sm_scale, req_to_token, s);
    pr.q_bf16 = q_extend.scalar_type() == at::kBFloat16;
    at::Tensor k_ext16, v_ext16;
    if (k_ext.defined()) {
      pr.k_ext = k_ext.data_ptr<float>();
      pr.v_ext = v_ext.data_ptr<float>();
      if (k_extend->scalar_type() == at::kBFloat16 && v_extend->scalar_type() == at::kBFloat16) {
        // the same keys and values as bf16 bits, for the bf16-pair path
        k_ext16 = k_extend->reshape({-1, s.kv_heads, s.head_dim}).contiguous();
        v_ext16 = v_extend->reshape({-1, s.kv_heads, s.v_head_dim}).contiguous();
        pr.k_ext_bf16 = reinterpret_cast<const uint16_t*>(k_ext16.data_ptr<at::BFloat16>());
        pr.v_ext_bf16 = reinterpret_cast<const uint16_t*>(v_ext16.data_ptr<at::BFloat16>());
      }
    }
    pr.pool_rows = r;
    pr.seq_lens = sl;
    pr.ext_lens = el;
    pr.starts = st;
    pr.batch = bs;
    if (mask.defined()) {
      SGL_CPU_CHECK(mask_total <= mask.numel(), op, "tree_mask has ", mask.numel(), " entries; the batch's [m, m] "
                    "blocks need ", mask_total);
      pr.fresh = FreshKeys::kTree;
      pr.tree_mask = mask.data_ptr<bool>();
      pr.mask_offsets = mask_offsets.data();
    } else {
      pr.fresh = is_causal ? FreshKeys::kCausal : FreshKeys::kAll;
    }
    attend_paged_rows(pr);
    auto o = o_extend;
    o.copy_(out);
    return;
  }
  if (all_short && plain_scores && is_causal && !mask.defined()) {  // ... over fp16 / fp8 pools, causal
    AT_DISPATCH_FLOATING_TYPES_AND3(at::kBFloat16, at::kHalf, at::kFloat8_e4m3fn, k_buffer.scalar_type(), op, [&] {
      extend_tiny_impl<scalar_t>(q, k_ext, v_ext, k_buffer, v_buffer, static_cast<float>(k_scale),
                                 static_cast<float>(v_scale), out, req_to_token, r, sl, el, st, bs, scale, s);
    });
    auto o = o_extend;
    o.copy_(out);
    return;
  }
  std::vector<int64_t> locs;
  std::vector<float> kf, vf;
  int64_t mask_offset = 0;  // tree masks are packed [el_b, el_b] blocks, one per request
  for (int64_t b = 0; b < bs; ++b) {
    const int64_t n = sl[b], m = el[b], prefix = n - m;
    SGL_CPU_CHECK(m >= 0 && prefix >= 0 && n <= pool_len, op, "request ", b, " has seq_len ", n,
                  " and extend_seq_len ", m);
    if (m == 0) continue;
    if (mask.defined()) {
      SGL_CPU_CHECK(mask_offset + m * m <= mask.numel(), op, "tree_mask is too small for request ", b);
    }
    locs.resize(n);
    with_index_type(req_to_token, [&](auto* table) {
      const auto* row = table + r[b] * pool_len;
      for (int64_t j = 0; j < n; ++j) locs[j] = static_cast<int64_t>(row[j]);
    });
    const bool* mb_small = mask.defined() ? mask.data_ptr<bool>() + mask_offset : nullptr;
    bool diag_visible = true;  // a tree row that hides its own token would leave nothing visible
    for (int64_t i = 0; mb_small != nullptr && i < m; ++i) diag_visible = diag_visible && mb_small[i * m + i];
    if (m <= kSmallExtend && sliding_window <= 0 && lcap == 0.f && sink == nullptr && diag_visible) {
      extend_small_request(q, k_ext, v_ext, k_buffer, v_buffer, static_cast<float>(k_scale),
                           static_cast<float>(v_scale), locs, n, m, st[b], mb_small, is_causal, scale, s, out);
      if (mask.defined()) mask_offset += m * m;
      continue;
    }
    kf.resize(s.kv_heads * n * s.head_dim);
    vf.resize(s.kv_heads * n * s.v_head_dim);
    AT_DISPATCH_FLOATING_TYPES_AND3(at::kBFloat16, at::kHalf, at::kFloat8_e4m3fn, k_buffer.scalar_type(), op, [&] {
      gather_request<scalar_t>(k_buffer, v_buffer, static_cast<float>(k_scale), static_cast<float>(v_scale), k_ext,
                               v_ext, locs.data(), n, prefix, st[b], s, kf.data(), vf.data());
    });
    const bool* mb = mask.defined() ? mask.data_ptr<bool>() + mask_offset : nullptr;
    const auto kt = at::from_blob(kf.data(), {s.kv_heads, n, s.head_dim}, q.options());
    const auto vt = at::from_blob(vf.data(), {s.kv_heads, n, s.v_head_dim}, q.options());
    const int64_t num_chunks = (m + kQueryChunk - 1) / kQueryChunk;
    // One task per (head, chunk of queries): S = Q K^T and O = P V are GEMMs (single-threaded inside
    // the parallel region); masking, capping and the softmax run on S in place.
    at::parallel_for(0, s.heads * num_chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t h = task / num_chunks, i0 = (task % num_chunks) * kQueryChunk;
        const int64_t rows = std::min(m, i0 + kQueryChunk) - i0, hk = h / s.group();
        // Keys past the last query of the chunk are invisible under plain causal masking.
        const int64_t n_keys = (is_causal && mb == nullptr) ? prefix + i0 + rows : n;
        const auto qc = q.select(1, h).narrow(0, st[b] + i0, rows);
        auto scores = at::mm(qc, kt[hk].narrow(0, 0, n_keys).t()).contiguous();
        float* sp = scores.data_ptr<float>();
        if (mb == nullptr && lcap == 0.f && sink == nullptr) {  // the prefill case: vectorised
          softmax_query_rows(sp, rows, n_keys, prefix + i0, sliding_window, is_causal, scale);
        } else {
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = i0 + r, t = prefix + i;
            const int64_t lo = sliding_window > 0 ? std::max<int64_t>(0, t - sliding_window + 1) : 0;
            const int64_t hi_key = (is_causal && mb == nullptr) ? t + 1 : n_keys;
            float* row = sp + r * n_keys;
            for (int64_t j = 0; j < n_keys; ++j) {
              bool visible = j >= lo && j < hi_key;
              if (visible && mb != nullptr && j >= prefix) visible = mb[i * m + (j - prefix)];
              row[j] = visible ? cap(scale * row[j], lcap) : kNegInf;
            }
            const float inv = softmax_in_place(row, n_keys, sink ? sink + h : nullptr);
            for (int64_t j = 0; j < n_keys; ++j) row[j] *= inv;
          }
        }
        out.select(1, h).narrow(0, st[b] + i0, rows).copy_(at::mm(scores, vt[hk].narrow(0, 0, n_keys)));
      }
    });
    if (mask.defined()) mask_offset += m * m;
  }
  auto o = o_extend;
  o.copy_(out);
}

}  // namespace
}  // namespace sgl_cpu

TORCH_LIBRARY_FRAGMENT(sgl_kernel, m) {
  m.def("decode_attention_cpu(Tensor query, Tensor(a!) k_cache, Tensor(b!) v_cache, float k_scale, float v_scale,"
        " Tensor(c!) output, Tensor? key, Tensor? value, Tensor loc, Tensor attn_logits, Tensor req_to_token,"
        " Tensor req_pool_indices, Tensor seq_lens, float sm_scale, float logit_cap, bool is_cross,"
        " int sliding_window, Tensor? encoder_lens, Tensor? sinks) -> ()");
  m.def("extend_attention_cpu(Tensor q_extend, Tensor? k_extend, Tensor? v_extend, Tensor(a!) o_extend,"
        " Tensor k_buffer, Tensor v_buffer, float k_scale, float v_scale, Tensor req_to_token,"
        " Tensor req_pool_indices, Tensor seq_lens, Tensor extend_seq_lens, Tensor extend_start_loc,"
        " int max_len_extend, float sm_scale, float logit_cap, bool is_cross, int sliding_window,"
        " Tensor? encoder_lens, Tensor? sinks, Tensor? tree_mask, bool is_causal) -> ()");
}

TORCH_LIBRARY_IMPL(sgl_kernel, CPU, m) {
  m.impl("decode_attention_cpu", &sgl_cpu::decode_attention_cpu);
  m.impl("extend_attention_cpu", &sgl_cpu::extend_attention_cpu);
}
