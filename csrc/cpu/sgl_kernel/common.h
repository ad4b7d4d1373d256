// Shared helpers for the CPU implementations of SGLang's `sgl_kernel::*_cpu` ops.
//
// These ops replace the ones a CPU build of sgl-kernel would provide, so that stock SGLang serves on a
// host whose sgl-kernel wheel is CUDA-only (see dspark_sglang/serving/cpu_host/). The schemas follow
// the Python wrappers in sgl_kernel/speculative.py, sgl_kernel/kvcacheio.py and the call sites in
// sglang/srt/layers/attention/intel_amx_backend.py; argument names follow those wrappers.
//
// Index tensors arrive as int32 or int64 depending on the call site, so the small per-request
// tensors are read through `as_long` (a contiguous int64 copy, O(batch)), while the large
// `req_to_token` table is read in place through `with_index_type`.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/all.h>

namespace sgl_cpu {

#define SGL_CPU_CHECK(cond, op, ...) TORCH_CHECK((cond), "sgl_kernel.", op, ": ", __VA_ARGS__)

inline void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "sgl_kernel.", op, ": ", name, " must be a CPU tensor; got ", t.device());
}

inline void check_index(const at::Tensor& t, const char* op, const char* name) {
  check_cpu(t, op, name);
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, "sgl_kernel.", op, ": ", name,
              " must be int32 or int64; got ", t.scalar_type());
}

// Contiguous int64 view of a small index tensor (a copy only when the dtype or layout differs).
inline at::Tensor as_long(const at::Tensor& t) { return t.to(at::kLong).contiguous(); }

// Calls f(ptr) with a typed pointer to a contiguous int32/int64 tensor.
template <typename F>
inline void with_index_type(const at::Tensor& t, F&& f) {
  if (t.scalar_type() == at::kInt) {
    f(t.data_ptr<int32_t>());
  } else {
    f(t.data_ptr<int64_t>());
  }
}

// Writes an int64 result into a caller-owned output of any integer dtype and layout.
inline void write_back(at::Tensor& out, const at::Tensor& result) {
  if (out.data_ptr() != result.data_ptr()) out.copy_(result.view(out.sizes()));
}

// A writable int64 scratch for a caller-owned output: the output itself when it already is
// contiguous int64, otherwise a copy to be written back with write_back.
inline at::Tensor long_scratch(const at::Tensor& out) {
  if (out.scalar_type() == at::kLong && out.is_contiguous()) return out;
  return out.to(at::kLong).contiguous();
}

}  // namespace sgl_cpu
