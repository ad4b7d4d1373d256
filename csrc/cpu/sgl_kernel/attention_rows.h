// Causal paged attention for the query rows of each request over its committed context: the decode row (one
// query) and the speculative verify window (ℓ + 1 ≤ 8 queries) — the two shapes of every decode-phase step
// SGLang's CPU engine runs through `decode_attention_cpu` / `extend_attention_cpu` — and prefill chunks, whose
// rows run as blocks of ~64 score lanes, each over the keys its rows see.
//
// Per (request, KV head) the g query heads sharing that KV head and the request's m rows form R = m·g
// score lanes; each key row is read ONCE (bf16 / fp32, converted in registers) for all R lanes, scores
// and P·V accumulate flash-style over key tiles (online softmax), and long contexts split their keys
// over threads (partial max / sum / output merged at the end). The hot loops are compiled for AVX-512,
// AVX2 and baseline x86-64 and the loader picks the best the CPU runs (GCC target_clones); other
// compilers and architectures build the baseline loop.
//
// Visibility: every row sees the request's committed prefix (its first n - m keys); of the request's own m
// keys, row i sees key c by the `fresh` rule: causal (c <= i; the decode row, m = 1, sees all n), all
// (non-causal) or a packed [m, m] tree mask (mask[i·m + c], as NGRAM / EAGLE verify). A row that sees no
// key outputs zeros. No sliding window, logit cap or attention sinks here (the callers keep their general
// paths for those).
#pragma once
#include <cstdint>

#include <ATen/ATen.h>

namespace sgl_cpu {

enum class FreshKeys { kCausal, kAll, kTree };

struct PagedRows {
  const float* q = nullptr;        // [T, H, D] float32 contiguous, T = Σ_b m_b (request b's rows start at starts[b])
  bool q_bf16 = false;             // q holds bfloat16 values (the caller's query was bf16): with a bf16 pool and
                                   // k/v_ext_bf16 given with k/v_ext, attention may run on bf16 pairs (AVX-512 BF16)
  float* out = nullptr;            // [T, H, Dv] float32 contiguous
  const void* k_buf = nullptr;     // KV pool [slots, HK, D] / [slots, HK, Dv], float32 or bfloat16
  const void* v_buf = nullptr;
  bool kv_bf16 = false;
  int64_t k_stride = 0, k_head_stride = 0, v_stride = 0, v_head_stride = 0;  // elements
  float k_scale = 1.f, v_scale = 1.f, sm_scale = 1.f;
  const float* k_ext = nullptr;    // [T, HK, D] float32: the rows' own keys (null: they are in the pool)
  const float* v_ext = nullptr;    // [T, HK, Dv]
  const uint16_t* k_ext_bf16 = nullptr;  // [T, HK, D] the same keys as bfloat16 bits, when the caller's were bf16
  const uint16_t* v_ext_bf16 = nullptr;  // [T, HK, Dv] the same values as bfloat16 bits
  const void* req_to_token = nullptr;  // [rows, pool_len] int32 or int64
  bool table_int32 = false;
  int64_t pool_len = 0;
  const int64_t* pool_rows = nullptr;  // [B] req_to_token row of each request
  const int64_t* seq_lens = nullptr;   // [B] n_b: keys, the request's own rows included
  const int64_t* ext_lens = nullptr;   // [B] m_b: query rows (1 for decode)
  const int64_t* starts = nullptr;     // [B] first row of request b in q / out / k_ext
  int64_t batch = 0, heads = 0, kv_heads = 0, head_dim = 0, v_head_dim = 0;
  FreshKeys fresh = FreshKeys::kCausal;
  const bool* tree_mask = nullptr;     // kTree: request b's [m_b, m_b] block starts at tree_mask + mask_offsets[b]
  const int64_t* mask_offsets = nullptr;
};

// Whether attend_paged_rows serves a KV pool of this dtype (float32, bfloat16).
inline bool paged_rows_supports(at::ScalarType kv) { return kv == at::kFloat || kv == at::kBFloat16; }

// out = softmax(sm_scale · q kᵀ, causal) v for every request's rows (see the header comment).
void attend_paged_rows(const PagedRows& p);

}  // namespace sgl_cpu
