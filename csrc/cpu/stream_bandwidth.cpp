// thread_stream_gain (stream_bandwidth.h): a read-only pass over a buffer larger than the caches, timed on one
// thread and split over the intra-op threads. The sum is over uint64 words, which GCC vectorises at -O3
// without fast-math, so a pass is bound by memory, not by an add chain.
#include "stream_bandwidth.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

namespace dspark::cpu {
namespace {

uint64_t sum_words(const uint64_t* p, int64_t n) {
  uint64_t s = 0;
  for (int64_t i = 0; i < n; ++i) s += p[i];
  return s;
}

double best_seconds(int reps, const auto& pass) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    pass();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

double thread_stream_gain() {
  static const double gain = [] {
    if (at::get_num_threads() < 2) return 1.0;
    constexpr int64_t kWords = (64 << 20) / sizeof(uint64_t);
    std::vector<uint64_t> buffer(kWords, 1);  // written once, so every page is committed before timing
    volatile uint64_t sink = 0;
    const double one = best_seconds(5, [&] { sink = sink + sum_words(buffer.data(), kWords); });
    const double all = best_seconds(5, [&] {
      at::parallel_for(0, kWords, kWords / 64, [&](int64_t b, int64_t e) {
        const uint64_t s = sum_words(buffer.data() + b, e - b);
        if (s == 0) sink = sink + 1;  // keeps the pass from being optimised away
      });
    });
    return one / all;
  }();
  return gain;
}

}  // namespace dspark::cpu
