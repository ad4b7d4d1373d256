// Work sharing for the CPU kernels (see work_sharing.h for why).
//
// Home ranges with stealing: participant t (the caller is 0, helper k is k) owns the t-th of `threads` equal
// ranges, as in OpenMP's static split, so on an idle host each thread streams the same part of a weight on
// every call (the part stays in the caches near its core: lm_head's 57 MB ran 25 % slower when threads took
// chunks in claim order). A participant claims its own range in chunks of an eighth of it, then claims the
// chunks left in the others' ranges — what the caller does for a helper that has not started.
//
// One job slot, one caller at a time (a try-lock; a nested or concurrent call runs serially). Protocol:
//   caller: write the job, open = true; wake the helpers; claim chunks until none is left;
//           open = false; wait until `active` is 0; return.
//   helper: active += 1; if open: claim chunks until none is left; active -= 1.
// A helper raises `active` before it reads the job, and the caller closes the job before it waits for
// `active` to drain, so (sequentially consistent atomics) either the caller waits for that helper or the
// helper sees the job closed: a late helper never runs a chunk of a job that has returned, and the next job
// cannot be written while a helper still reads the current one.
#include "work_sharing.h"

#include <ATen/Parallel.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DSPARK_CPU_RELAX() _mm_pause()
#else
#define DSPARK_CPU_RELAX() std::this_thread::yield()
#endif

namespace dspark {
namespace cpu {
namespace {

// A helper that finished a job keeps polling this long before it sleeps: a forward pass issues its calls a
// few µs apart, and a sleeping helper costs a futex wake-up (tens of µs on an idle core) per call.
// DSPARK_CPU_POOL_SPIN_US overrides it.
std::chrono::microseconds helper_spin() {
  static const std::chrono::microseconds value{[] {
    const char* env = std::getenv("DSPARK_CPU_POOL_SPIN_US");
    return env != nullptr ? std::atoll(env) : 100LL;
  }()};
  return value;
}
// Chunks per home range: what a late helper's range is cut into for the others to take over, and the most
// the threads can finish apart (one chunk).
constexpr int64_t kChunksPerRange = 8;
// Participants (home ranges) at most; more threads than this share the last ranges by stealing.
constexpr int64_t kMaxRanges = 256;
// The caller polls the helpers' claimed chunks this long before it yields the core between polls.
constexpr auto kCallerSpin = std::chrono::microseconds(20);

// True on a thread while it runs chunks: a nested call runs serially instead of re-entering the pool.
thread_local bool in_chunk = false;

class Pool {
 public:
  void run(int64_t begin, int64_t end, int64_t grain, ChunkFn fn, const void* ctx) {
    const int64_t n = end - begin;
    if (n <= 0) return;
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    const int64_t g = std::max<int64_t>(grain, 1);
    if (threads == 1 || g >= n || in_chunk || at::in_parallel_region()) {
      fn(ctx, begin, end);
      return;
    }
    std::unique_lock<std::mutex> caller(caller_mutex_, std::try_to_lock);
    if (!caller.owns_lock()) {  // another thread's job is running
      fn(ctx, begin, end);
      return;
    }
    ensure_helpers(threads - 1);
    fn_ = fn;
    ctx_ = ctx;
    error_ = nullptr;
    ranges_count_ = std::min<int64_t>(threads, kMaxRanges);
    const int64_t per = ((n + ranges_count_ - 1) / ranges_count_ + g - 1) / g * g;  // a multiple of the grain
    for (int64_t t = 0; t < ranges_count_; ++t) {
      Range& r = ranges_[t];
      r.end = std::min(end, begin + (t + 1) * per);
      r.next.store(std::min(end, begin + t * per), std::memory_order_relaxed);
      r.chunk = ((per + kChunksPerRange - 1) / kChunksPerRange + g - 1) / g * g;
    }
    {
      std::lock_guard<std::mutex> lock(wake_mutex_);
      open_.store(true);
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    work(0);
    open_.store(false);
    const auto spin_until = std::chrono::steady_clock::now() + kCallerSpin;
    while (active_.load() != 0) {
      if (std::chrono::steady_clock::now() < spin_until) DSPARK_CPU_RELAX();
      else std::this_thread::yield();
    }
    if (error_) std::rethrow_exception(error_);
  }

  int64_t helpers() {
    std::lock_guard<std::mutex> lock(wake_mutex_);
    return static_cast<int64_t>(helpers_);
  }

  // After fork() the child has only the forking thread: forget the parent's helpers (their objects leak).
  void reset_after_fork() {
    new (&caller_mutex_) std::mutex();
    new (&wake_mutex_) std::mutex();
    new (&error_mutex_) std::mutex();
    new (&wake_) std::condition_variable();
    helpers_ = 0;
    active_.store(0);
    open_.store(false);
  }

 private:
  // Claims and runs chunks of the open job until none is left: its own range `home` first, then the others'.
  void work(int64_t home) {
    in_chunk = true;
    const int64_t count = ranges_count_;
    for (int64_t i = 0; i < count; ++i) {
      Range& r = ranges_[(home + i) % count];
      for (;;) {
        const int64_t b = r.next.fetch_add(r.chunk);
        if (b >= r.end) break;
        try {
          fn_(ctx_, b, std::min(r.end, b + r.chunk));
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex_);
          if (!error_) error_ = std::current_exception();
        }
      }
    }
    in_chunk = false;
  }

  void ensure_helpers(int64_t wanted) {
    std::lock_guard<std::mutex> lock(wake_mutex_);
    while (helpers_ < static_cast<size_t>(wanted)) {
      ++helpers_;
      std::thread(&Pool::helper_loop, this, static_cast<int64_t>(helpers_), generation_.load()).detach();
    }
  }

  // Helper `id` (1, 2, ...) owns home range `id` (modulo the job's ranges).
  void helper_loop(int64_t id, uint64_t seen) {
    for (;;) {
      const auto spin_until = std::chrono::steady_clock::now() + helper_spin();
      while (generation_.load() == seen && std::chrono::steady_clock::now() < spin_until) DSPARK_CPU_RELAX();
      if (generation_.load() == seen) {
        std::unique_lock<std::mutex> lock(wake_mutex_);
        wake_.wait(lock, [&] { return generation_.load() != seen; });
      }
      seen = generation_.load();
      active_.fetch_add(1);
      if (open_.load()) work(id % ranges_count_);
      active_.fetch_sub(1);
    }
  }

  std::mutex caller_mutex_;
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  std::mutex error_mutex_;
  size_t helpers_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> open_{false};
  std::atomic<int64_t> active_{0};
  // The job; written by the caller before `open_` is set, read by helpers after they see it set.
  struct alignas(64) Range {  // one cache line each: the threads claim from different ranges
    std::atomic<int64_t> next{0};
    int64_t end = 0, chunk = 1;
  };
  Range ranges_[kMaxRanges];
  int64_t ranges_count_ = 1;
  ChunkFn fn_ = nullptr;
  const void* ctx_ = nullptr;
  std::exception_ptr error_;
};

// Never destroyed: detached helpers may still poll it while the process exits.
Pool& pool() {
  static Pool* instance = [] {
    auto* p = new Pool();
    pthread_atfork(nullptr, nullptr, [] { pool().reset_after_fork(); });
    return p;
  }();
  return *instance;
}

bool parse_openmp(const std::string& mode) {
  if (mode == "pool") return false;
  if (mode == "openmp") return true;
  throw std::invalid_argument("DSPARK_CPU_WORK_SHARING must be 'pool' or 'openmp'; got '" + mode + "'");
}

std::atomic<bool>& use_openmp() {
  static std::atomic<bool> value{[] {
    const char* env = std::getenv("DSPARK_CPU_WORK_SHARING");
    return env != nullptr && *env != '\0' && parse_openmp(env);
  }()};
  return value;
}

}  // namespace

void share_work_impl(int64_t begin, int64_t end, int64_t grain, ChunkFn fn, const void* ctx) {
  if (use_openmp().load(std::memory_order_relaxed)) {
    at::parallel_for(begin, end, std::max<int64_t>(grain, 1), [&](int64_t b, int64_t e) { fn(ctx, b, e); });
    return;
  }
  pool().run(begin, end, grain, fn, ctx);
}

std::string work_sharing_mode() { return use_openmp().load() ? "openmp" : "pool"; }

void set_work_sharing_mode(const std::string& mode) { use_openmp().store(parse_openmp(mode)); }

int64_t work_sharing_helpers() { return pool().helpers(); }

std::vector<int64_t> work_sharing_coverage(int64_t n, int64_t grain, int64_t chunk_us, int64_t throw_at, bool nested) {
  std::vector<std::atomic<int64_t>> hits(static_cast<size_t>(std::max<int64_t>(n, 0)));
  std::mutex ids_mutex;
  std::vector<std::thread::id> ids;
  share_work(0, n, grain, [&](int64_t b, int64_t e) {
    {
      std::lock_guard<std::mutex> lock(ids_mutex);
      if (std::find(ids.begin(), ids.end(), std::this_thread::get_id()) == ids.end())
        ids.push_back(std::this_thread::get_id());
    }
    if (chunk_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(chunk_us));
    for (int64_t i = b; i < e; ++i) {
      if (i == throw_at) throw std::runtime_error("work_sharing_coverage: chunk throws at " + std::to_string(i));
      if (nested) {
        share_work(0, 4, 1, [&](int64_t b2, int64_t e2) { hits[static_cast<size_t>(i)].fetch_add(e2 - b2); });
      } else {
        hits[static_cast<size_t>(i)].fetch_add(1);
      }
    }
  });
  std::vector<int64_t> out;
  for (auto& h : hits) out.push_back(h.load());
  out.push_back(static_cast<int64_t>(ids.size()));
  return out;
}

}  // namespace cpu
}  // namespace dspark
