// One declaration per op and backend; schemas live in registration.cpp, specs in
// dspark_sglang/ops/reference.py.
#pragma once
#include <torch/all.h>

#include <string>
#include <tuple>

namespace dspark {

// Shared validation (op_checks.cpp): raise with the tensor's name and the expected value.
void check_verify_greedy(const at::Tensor& draft_ids, const at::Tensor& target_ids, const at::Tensor& verify_lens);
void check_verify_sampled(const at::Tensor& draft_ids, const at::Tensor& draft_probs, const at::Tensor& target_probs,
                          const at::Tensor& verify_lens, const at::Tensor& is_greedy, int64_t seed, int64_t offset);
void check_confidence_survival(const at::Tensor& conf_logits, const at::Tensor& sts_temperatures, double threshold);
void check_schedule(const char* op, const at::Tensor& survival, int64_t min_len, int64_t max_len);
void check_sps_table(const at::Tensor& sps_table, int64_t num_reqs, int64_t max_len);
int schedule_mode_from_string(const std::string& mode);  // 0 = early_stop, 1 = global
void check_sample_categorical(const at::Tensor& probs, const at::Tensor& uniforms);

std::tuple<at::Tensor, at::Tensor> verify_greedy_cpu(const at::Tensor& draft_ids, const at::Tensor& target_ids,
                                                     const at::Tensor& verify_lens);
std::tuple<at::Tensor, at::Tensor> verify_sampled_cpu(const at::Tensor& draft_ids, const at::Tensor& draft_probs,
                                                      const at::Tensor& target_probs, const at::Tensor& verify_lens,
                                                      const at::Tensor& is_greedy, int64_t seed, int64_t offset);
std::tuple<at::Tensor, at::Tensor> confidence_survival_cpu(const at::Tensor& conf_logits,
                                                           const at::Tensor& sts_temperatures, double threshold);
std::tuple<at::Tensor, at::Tensor> schedule_prefix_cpu(const at::Tensor& survival, const at::Tensor& sps_table,
                                                       int64_t min_len, int64_t max_len, std::string mode);
at::Tensor schedule_topk_cpu(const at::Tensor& survival, int64_t budget, int64_t min_len, int64_t max_len);
at::Tensor sample_categorical_cpu(const at::Tensor& probs, const at::Tensor& uniforms);

// Packed-weight linear (cpu/packed_linear.cpp): the packing is a device-agnostic layout transform.
void check_packed_linear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                         int64_t out_features);
at::Tensor pack_linear_weight(const at::Tensor& weight);
at::Tensor packed_linear_cpu(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                             int64_t out_features);
std::string packed_linear_backend(at::ScalarType dtype);  // "amx_bf16" | "avx512_bf16" | "avx512" | "avx2" | "generic"
int64_t packed_linear_amx_calls();  // packed_linear calls that ran the AMX face so far (this process)
void set_packed_linear_max_face(const std::string& name);  // tests, benchmarks: the best face allowed
double packed_linear_parallel_macs();  // multiply-adds from which a call splits over threads on this host

#ifdef DSPARK_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> verify_greedy_cuda(const at::Tensor& draft_ids, const at::Tensor& target_ids,
                                                      const at::Tensor& verify_lens);
std::tuple<at::Tensor, at::Tensor> verify_sampled_cuda(const at::Tensor& draft_ids, const at::Tensor& draft_probs,
                                                       const at::Tensor& target_probs, const at::Tensor& verify_lens,
                                                       const at::Tensor& is_greedy, int64_t seed, int64_t offset);
std::tuple<at::Tensor, at::Tensor> confidence_survival_cuda(const at::Tensor& conf_logits,
                                                            const at::Tensor& sts_temperatures, double threshold);
std::tuple<at::Tensor, at::Tensor> schedule_prefix_cuda(const at::Tensor& survival, const at::Tensor& sps_table,
                                                        int64_t min_len, int64_t max_len, std::string mode);
at::Tensor schedule_topk_cuda(const at::Tensor& survival, int64_t budget, int64_t min_len, int64_t max_len);
at::Tensor sample_categorical_cuda(const at::Tensor& probs, const at::Tensor& uniforms);
at::Tensor packed_linear_cuda(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                              int64_t out_features);
#endif

}  // namespace dspark
