// Work sharing for the CPU kernels: a parallel-for whose calling thread never waits for a helper that has
// not started.
//
// at::parallel_for (OpenMP) gives each thread of the team a fixed share and ends in a barrier: when another
// process holds the second core of a 2-core host (SGLang's tokenizer and detokenizer, the HTTP clients, a
// training job), the call waits for the descheduled thread to be woken and to do its share — measured 7-8 ms
// per call for work the calling thread alone does in 90 µs. Here the range is cut into many chunks; the
// calling thread and the helpers that are awake claim chunks from one counter, and the caller waits only
// for chunks a helper has already claimed. On an idle host every helper joins and the speed is that of
// the static split; on a contended one the call costs at most the one-thread time plus one chunk.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dspark {
namespace cpu {

using ChunkFn = void (*)(const void* ctx, int64_t begin, int64_t end);

// Runs fn(ctx, b, e) over disjoint [b, e) covering [begin, end), each a multiple of `grain` long (except
// the last), on the calling thread and up to at::get_num_threads() - 1 helper threads. Returns when every chunk
// has run. Nested or concurrent calls run serially on their own thread. An exception thrown by a chunk is
// rethrown here after the other chunks finish.
void share_work_impl(int64_t begin, int64_t end, int64_t grain, ChunkFn fn, const void* ctx);

// "pool" (the default) or "openmp": at::parallel_for with its static split, the behaviour before the pool.
// The environment variable DSPARK_CPU_WORK_SHARING sets the mode at load; benchmarks switch it per call.
std::string work_sharing_mode();
void set_work_sharing_mode(const std::string& mode);

// The helper threads the pool has started (tests, diagnostics).
int64_t work_sharing_helpers();

// Tests: runs share_work over [0, n) with `grain` (each chunk sleeping `chunk_us` µs) and returns how many
// times each index ran, then the number of distinct threads that ran chunks as the last element. With
// `throw_at` in [0, n) the chunk holding it throws std::runtime_error (rethrown by the call). With `nested`
// each index is counted by an inner share_work over 4 items (4 hits per index).
std::vector<int64_t> work_sharing_coverage(int64_t n, int64_t grain, int64_t chunk_us, int64_t throw_at, bool nested);

// `share_work(begin, end, grain, [&](int64_t b, int64_t e) { ... })`: the lambda form of share_work_impl.
template <typename F>
void share_work(int64_t begin, int64_t end, int64_t grain, const F& f) {
  share_work_impl(begin, end, grain,
                  [](const void* ctx, int64_t b, int64_t e) { (*static_cast<const F*>(ctx))(b, e); }, &f);
}

}  // namespace cpu
}  // namespace dspark
