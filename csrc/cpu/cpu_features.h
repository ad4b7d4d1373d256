// Run-time x86 feature checks shared by the CPU kernels that carry AVX-512 (BF16) faces beside generic ones.
// Each answer is computed once per process; false on other compilers and architectures.
#pragma once

namespace dspark::cpu {

#if defined(__x86_64__) && defined(__GNUC__)
// AVX2 + FMA: the float32 8-lane faces (x86 CPUs without AVX-512).
inline bool has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
// AVX-512 F / BW / VL: the float32 16-lane faces.
inline bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return yes;
}
// ... and AVX-512 BF16 (vdpbf16ps): the bf16-pair faces.
inline bool has_avx512_bf16() {
  static const bool yes = has_avx512() && __builtin_cpu_supports("avx512bf16");
  return yes;
}
#else
inline bool has_avx2_fma() { return false; }
inline bool has_avx512() { return false; }
inline bool has_avx512_bf16() { return false; }
#endif

}  // namespace dspark::cpu
