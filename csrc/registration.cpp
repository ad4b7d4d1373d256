// Op schemas (one m.def per op) and the Python module `dspark_sglang._C`.
#include <torch/extension.h>

#include "ops.h"
#include "cpu/stream_bandwidth.h"

TORCH_LIBRARY(dspark, m) {
  m.def("verify_greedy(Tensor draft_ids, Tensor target_ids, Tensor verify_lens) -> (Tensor accept_lens, Tensor out_ids)");
  m.def("verify_sampled(Tensor draft_ids, Tensor draft_probs, Tensor target_probs, Tensor verify_lens,"
        " Tensor is_greedy, int seed, int offset) -> (Tensor accept_lens, Tensor out_ids)");
  m.def("confidence_survival(Tensor conf_logits, Tensor sts_temperatures, float threshold)"
        " -> (Tensor survival, Tensor threshold_lens)");
  m.def("schedule_prefix(Tensor survival, Tensor sps_table, int min_len, int max_len, str mode)"
        " -> (Tensor verify_lens, Tensor expected_throughput)");
  m.def("schedule_topk(Tensor survival, int budget, int min_len, int max_len) -> Tensor verify_lens");
  m.def("sample_categorical(Tensor probs, Tensor uniforms) -> Tensor ids");
  m.def("pack_linear_weight(Tensor weight) -> Tensor packed");
  m.def("packed_linear(Tensor x, Tensor packed, Tensor? bias, int out_features) -> Tensor y");
}

TORCH_LIBRARY_IMPL(dspark, CPU, m) {
  m.impl("verify_greedy", &dspark::verify_greedy_cpu);
  m.impl("verify_sampled", &dspark::verify_sampled_cpu);
  m.impl("confidence_survival", &dspark::confidence_survival_cpu);
  m.impl("schedule_prefix", &dspark::schedule_prefix_cpu);
  m.impl("schedule_topk", &dspark::schedule_topk_cpu);
  m.impl("sample_categorical", &dspark::sample_categorical_cpu);
  m.impl("pack_linear_weight", &dspark::pack_linear_weight);
  m.impl("packed_linear", &dspark::packed_linear_cpu);
}

#ifdef DSPARK_WITH_CUDA
TORCH_LIBRARY_IMPL(dspark, CUDA, m) {
  m.impl("verify_greedy", &dspark::verify_greedy_cuda);
  m.impl("verify_sampled", &dspark::verify_sampled_cuda);
  m.impl("confidence_survival", &dspark::confidence_survival_cuda);
  m.impl("schedule_prefix", &dspark::schedule_prefix_cuda);
  m.impl("schedule_topk", &dspark::schedule_topk_cuda);
  m.impl("sample_categorical", &dspark::sample_categorical_cuda);
  m.impl("pack_linear_weight", &dspark::pack_linear_weight);
  m.impl("packed_linear", &dspark::packed_linear_cuda);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "dspark native ops; they are reached through torch.ops.dspark.*";
#ifdef DSPARK_WITH_CUDA
  module.attr("with_cuda") = true;
#else
  module.attr("with_cuda") = false;
#endif
  module.def(
      "packed_linear_backend",
      [](const std::string& dtype) {
        if (dtype == "bfloat16") return dspark::packed_linear_backend(at::kBFloat16);
        if (dtype == "float32") return dspark::packed_linear_backend(at::kFloat);
        throw std::invalid_argument("packed_linear_backend: dtype must be 'bfloat16' or 'float32'; got '" + dtype + "'");
      },
      "The CPU face packed_linear runs for a dtype on this CPU: 'amx_bf16', 'avx512_bf16', 'avx512', 'avx2' or "
      "'generic'.");
  module.def("packed_linear_amx_calls", &dspark::packed_linear_amx_calls,
             "packed_linear calls that ran the AMX face in this process (weights whose in_features is not a multiple "
             "of 32 run avx512_bf16 and do not count).");
  module.def("packed_linear_parallel_macs", &dspark::packed_linear_parallel_macs,
             "Multiply-adds from which a packed_linear call splits over the intra-op threads on this host "
             "(DSPARK_CPU_LINEAR_PARALLEL_MACS, else chosen by thread_stream_gain).");
  module.def("thread_stream_gain", &dspark::cpu::thread_stream_gain,
             "One thread's time to read 64 MiB over the intra-op threads' time (measured once per process).");
  module.def("set_packed_linear_max_face", &dspark::set_packed_linear_max_face,
             "Tests and benchmarks: the best CPU face packed_linear may run ('generic', 'avx2', 'avx512', "
             "'avx512_bf16' or 'amx_bf16', the default: whatever the CPU has).");
}
