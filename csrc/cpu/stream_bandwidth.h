// How much memory bandwidth the intra-op threads add to one thread's on this host, measured once per process.
// packed_linear uses it to decide from which size a decode-sized call splits its weight stream over threads.
#pragma once

namespace dspark::cpu {

// One thread's time to read a 64 MiB buffer divided by the time of at::parallel_for over the same buffer on
// the intra-op threads (best of 5 each, ≈ 0.1 s, measured at the first call; 1.0 with one thread).
double thread_stream_gain();

}  // namespace dspark::cpu
