// Run-time x86 feature checks shared by the CPU kernels that carry AVX-512 (BF16) faces beside generic ones.
// Each answer is computed once per process; false on other compilers and architectures.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

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
#endif

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
// ... and AMX tiles with the BF16 tile product (Sapphire Rapids and later), usable by this process: Linux
// hands out the tile register state only on request (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA; the
// permission is process-wide), and refuses where the kernel or the hypervisor does not enable it.
inline bool has_amx_bf16() {
  static const bool yes = [] {
    if (!has_avx512_bf16() || !__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16")) return false;
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return yes;
}
#else
inline bool has_amx_bf16() { return false; }
#endif

#if !(defined(__x86_64__) && defined(__GNUC__))
inline bool has_avx2_fma() { return false; }
inline bool has_avx512() { return false; }
inline bool has_avx512_bf16() { return false; }
#endif

}  // namespace dspark::cpu
