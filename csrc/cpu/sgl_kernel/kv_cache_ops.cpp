// KV-pool bookkeeping ops SGLang's CPU engine calls through torch.ops.sgl_kernel (see common.h).
//
//   copy_all_layer_kv_cache_cpu       move KV rows src_loc -> tgt_loc in every layer buffer
//   assign_req_to_token_pool_cpu      req_to_token[r, start:end] = packed out_cache_loc
//   assign_extend_cache_locs_cpu      packed out_cache_loc = req_to_token[r, start:end]
//   assign_draft_cache_locs_contiguous_cpu   out[i] = req_to_token[r_i, seq_i : seq_i + topk*steps]
//   build_draft_decode_metadata_cpu   per (request, branch) row: committed prefix + that branch's slots
#include <cstring>
#include <vector>

#include "common.h"

namespace sgl_cpu {
namespace {

// Every buffer b is a [rows, strides[b]] byte matrix at address data_ptrs[b]. Rows are gathered into
// a scratch before they are scattered, so overlapping src/tgt sets read the pre-copy values.
void copy_all_layer_kv_cache_cpu(const at::Tensor& data_ptrs, const at::Tensor& strides, const at::Tensor& tgt_loc,
                                 const at::Tensor& src_loc) {
  constexpr const char* op = "copy_all_layer_kv_cache_cpu";
  check_index(tgt_loc, op, "tgt_loc");
  check_index(src_loc, op, "src_loc");
  SGL_CPU_CHECK(tgt_loc.numel() == src_loc.numel(), op, "tgt_loc and src_loc must have the same length; got ",
                tgt_loc.numel(), " and ", src_loc.numel());
  SGL_CPU_CHECK(data_ptrs.numel() == strides.numel(), op, "data_ptrs and strides must have the same length; got ",
                data_ptrs.numel(), " and ", strides.numel());
  const int64_t n = tgt_loc.numel();
  if (n == 0 || data_ptrs.numel() == 0) return;
  const auto ptrs = as_long(data_ptrs.cpu());
  const auto row_bytes = as_long(strides.cpu());
  const auto tgt = as_long(tgt_loc);
  const auto src = as_long(src_loc);
  const int64_t* p = ptrs.data_ptr<int64_t>();
  const int64_t* rb = row_bytes.data_ptr<int64_t>();
  const int64_t* t = tgt.data_ptr<int64_t>();
  const int64_t* s = src.data_ptr<int64_t>();
  at::parallel_for(0, ptrs.numel(), 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> scratch;
    for (int64_t b = begin; b < end; ++b) {
      auto* base = reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(p[b]));
      const int64_t w = rb[b];
      scratch.resize(static_cast<size_t>(n * w));
      for (int64_t i = 0; i < n; ++i) std::memcpy(scratch.data() + i * w, base + s[i] * w, w);
      for (int64_t i = 0; i < n; ++i) std::memcpy(base + t[i] * w, scratch.data() + i * w, w);
    }
  });
}

void check_req_to_token(const at::Tensor& req_to_token, int64_t pool_len, const char* op) {
  check_index(req_to_token, op, "req_to_token");
  SGL_CPU_CHECK(req_to_token.dim() == 2 && req_to_token.is_contiguous(), op,
                "req_to_token must be a contiguous 2-D tensor; got shape ", req_to_token.sizes());
  SGL_CPU_CHECK(req_to_token.size(1) == pool_len, op, "pool_len (", pool_len, ") must equal req_to_token.size(1) (",
                req_to_token.size(1), ")");
}

// Direction of the copy between req_to_token rows and the packed out_cache_loc.
enum class Copy { kIntoTable, kFromTable };

template <Copy dir>
void copy_ranges(const at::Tensor& req_pool_indices, const at::Tensor& req_to_token, const at::Tensor& start_offset,
                 const at::Tensor& end_offset, const at::Tensor& out_cache_loc, int64_t pool_len, const char* op) {
  check_req_to_token(req_to_token, pool_len, op);
  check_index(req_pool_indices, op, "req_pool_indices");
  check_index(start_offset, op, "start_offset");
  check_index(end_offset, op, "end_offset");
  check_index(out_cache_loc, op, "out_cache_loc");
  const int64_t bs = req_pool_indices.numel();
  SGL_CPU_CHECK(start_offset.numel() == bs && end_offset.numel() == bs, op,
                "start_offset and end_offset need one entry per request (", bs, ")");
  const auto rows = as_long(req_pool_indices);
  const auto starts = as_long(start_offset);
  const auto ends = as_long(end_offset);
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t* s = starts.data_ptr<int64_t>();
  const int64_t* e = ends.data_ptr<int64_t>();
  std::vector<int64_t> out_off(bs + 1, 0);  // request i's run starts at out_off[i] in out_cache_loc
  for (int64_t i = 0; i < bs; ++i) {
    const int64_t len = e[i] - s[i];
    SGL_CPU_CHECK(len >= 0 && s[i] >= 0 && e[i] <= pool_len, op, "request ", i, " has invalid range [", s[i], ", ",
                  e[i], ") for pool_len ", pool_len);
    out_off[i + 1] = out_off[i] + len;
  }
  SGL_CPU_CHECK(out_cache_loc.numel() >= out_off[bs], op, "out_cache_loc holds ", out_cache_loc.numel(),
                " slots but the ranges need ", out_off[bs]);
  at::Tensor packed = dir == Copy::kIntoTable ? as_long(out_cache_loc) : long_scratch(out_cache_loc);
  int64_t* loc = packed.data_ptr<int64_t>();
  with_index_type(req_to_token, [&](auto* table) {
    using T = std::remove_pointer_t<decltype(table)>;
    for (int64_t i = 0; i < bs; ++i) {
      T* row = table + r[i] * pool_len + s[i];
      int64_t* run = loc + out_off[i];
      const int64_t len = e[i] - s[i];
      if constexpr (dir == Copy::kIntoTable) {
        for (int64_t j = 0; j < len; ++j) row[j] = static_cast<T>(run[j]);
      } else {
        for (int64_t j = 0; j < len; ++j) run[j] = static_cast<int64_t>(row[j]);
      }
    }
  });
  if constexpr (dir == Copy::kFromTable) {
    auto out = out_cache_loc;
    write_back(out, packed);
  }
}

void assign_req_to_token_pool_cpu(const at::Tensor& req_pool_indices, const at::Tensor& req_to_token,
                                  const at::Tensor& start_offset, const at::Tensor& end_offset,
                                  const at::Tensor& out_cache_loc, int64_t pool_len) {
  copy_ranges<Copy::kIntoTable>(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len,
                                "assign_req_to_token_pool_cpu");
}

void assign_extend_cache_locs_cpu(const at::Tensor& req_pool_indices, const at::Tensor& req_to_token,
                                  const at::Tensor& start_offset, const at::Tensor& end_offset,
                                  const at::Tensor& out_cache_loc, int64_t pool_len) {
  copy_ranges<Copy::kFromTable>(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len,
                                "assign_extend_cache_locs_cpu");
}

void assign_draft_cache_locs_contiguous_cpu(const at::Tensor& req_pool_indices, const at::Tensor& req_to_token,
                                            const at::Tensor& seq_lens, const at::Tensor& out_cache_loc,
                                            int64_t pool_len, int64_t topk, int64_t num_steps) {
  constexpr const char* op = "assign_draft_cache_locs_contiguous_cpu";
  const auto starts = as_long(seq_lens);
  const auto ends = starts + topk * num_steps;
  copy_ranges<Copy::kFromTable>(req_pool_indices, req_to_token, starts, ends, out_cache_loc, pool_len, op);
}

// Row b*topk + k: req_to_token[r_b, :seq_b] followed by branch k's num_steps draft slots, which the
// draft allocator laid out at req_to_token[r_b, seq_b + k*num_steps : seq_b + (k+1)*num_steps].
// Columns past seq_b + num_steps are zero.
at::Tensor build_draft_decode_metadata_cpu(const at::Tensor& req_to_token, const at::Tensor& req_pool_indices,
                                           const at::Tensor& seq_lens, int64_t topk, int64_t num_steps,
                                           int64_t pool_len) {
  constexpr const char* op = "build_draft_decode_metadata_cpu";
  check_req_to_token(req_to_token, pool_len, op);
  check_index(req_pool_indices, op, "req_pool_indices");
  check_index(seq_lens, op, "seq_lens");
  const int64_t bs = req_pool_indices.numel();
  const auto rows = as_long(req_pool_indices);
  const auto lens = as_long(seq_lens);
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t* sl = lens.data_ptr<int64_t>();
  for (int64_t b = 0; b < bs; ++b) {
    SGL_CPU_CHECK(sl[b] >= 0 && sl[b] + topk * num_steps <= pool_len, op, "request ", b, " (seq_len ", sl[b],
                  ") overflows pool_len ", pool_len);
  }
  auto out = at::zeros({bs * topk, pool_len}, req_to_token.options());
  with_index_type(req_to_token, [&](auto* table) {
    using T = std::remove_pointer_t<decltype(table)>;
    T* dst = out.data_ptr<T>();
    at::parallel_for(0, bs * topk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / topk, k = i % topk;
        const T* row = table + r[b] * pool_len;
        T* o = dst + i * pool_len;
        std::memcpy(o, row, sizeof(T) * sl[b]);
        std::memcpy(o + sl[b], row + sl[b] + k * num_steps, sizeof(T) * num_steps);
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace sgl_cpu

TORCH_LIBRARY_FRAGMENT(sgl_kernel, m) {
  m.def("copy_all_layer_kv_cache_cpu(Tensor data_ptrs, Tensor strides, Tensor tgt_loc, Tensor src_loc) -> ()");
  m.def("assign_req_to_token_pool_cpu(Tensor req_pool_indices, Tensor(a!) req_to_token, Tensor start_offset,"
        " Tensor end_offset, Tensor out_cache_loc, int pool_len) -> ()");
  m.def("assign_extend_cache_locs_cpu(Tensor req_pool_indices, Tensor req_to_token, Tensor start_offset,"
        " Tensor end_offset, Tensor(a!) out_cache_loc, int pool_len) -> ()");
  m.def("assign_draft_cache_locs_contiguous_cpu(Tensor req_pool_indices, Tensor req_to_token, Tensor seq_lens,"
        " Tensor(a!) out_cache_loc, int pool_len, int topk, int num_steps) -> ()");
  m.def("build_draft_decode_metadata_cpu(Tensor req_to_token, Tensor req_pool_indices, Tensor seq_lens, int topk,"
        " int num_steps, int pool_len) -> Tensor");
}

TORCH_LIBRARY_IMPL(sgl_kernel, CPU, m) {
  m.impl("copy_all_layer_kv_cache_cpu", &sgl_cpu::copy_all_layer_kv_cache_cpu);
  m.impl("assign_req_to_token_pool_cpu", &sgl_cpu::assign_req_to_token_pool_cpu);
  m.impl("assign_extend_cache_locs_cpu", &sgl_cpu::assign_extend_cache_locs_cpu);
  m.impl("assign_draft_cache_locs_contiguous_cpu", &sgl_cpu::assign_draft_cache_locs_contiguous_cpu);
  m.impl("build_draft_decode_metadata_cpu", &sgl_cpu::build_draft_decode_metadata_cpu);
}
