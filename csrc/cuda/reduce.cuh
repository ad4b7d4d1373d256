// Block-wide argmax reductions shared by the CUDA kernels. Ties go to the lowest index, matching
// torch.argmax and the sequential CPU loops.
#pragma once
#include <cuda_runtime.h>

namespace dspark {

template <typename T>
struct ArgBest {
  T value;
  int idx;
};

template <typename T>
__device__ __forceinline__ ArgBest<T> better(ArgBest<T> a, ArgBest<T> b) {
  return (b.value > a.value || (b.value == a.value && b.idx < a.idx)) ? b : a;
}

// Reduce one ArgBest per thread to the block's best; every thread receives the result.
// `scratch` needs blockDim.x / 32 entries.
template <typename T>
__device__ ArgBest<T> block_argbest(ArgBest<T> mine, ArgBest<T>* scratch) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  for (int delta = 16; delta > 0; delta >>= 1) {
    ArgBest<T> other{__shfl_down_sync(0xffffffffu, mine.value, delta), __shfl_down_sync(0xffffffffu, mine.idx, delta)};
    mine = better(mine, other);
  }
  if (lane == 0) scratch[warp] = mine;
  __syncthreads();
  const unsigned num_warps = (blockDim.x + 31u) >> 5;
  if (warp == 0) {
    mine = lane < num_warps ? scratch[lane] : scratch[0];
    for (int delta = 16; delta > 0; delta >>= 1) {
      ArgBest<T> other{__shfl_down_sync(0xffffffffu, mine.value, delta),
                       __shfl_down_sync(0xffffffffu, mine.idx, delta)};
      mine = better(mine, other);
    }
    if (lane == 0) scratch[0] = mine;
  }
  __syncthreads();
  const ArgBest<T> result = scratch[0];
  __syncthreads();  // scratch may be reused right after
  return result;
}

}  // namespace dspark
