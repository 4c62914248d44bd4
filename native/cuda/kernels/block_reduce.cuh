// A block-wide sum or max of one float per thread, in a fixed tree (the same
// result every run). blockDim.x must be a multiple of 32, at most 1024;
// `shared` holds 32 floats. Every thread gets the result.
#pragma once
#include <cfloat>

namespace caravan::cuda {

template <bool kMax>
__device__ inline float block_reduce(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffff, v, o);
    v = kMax ? fmaxf(v, w) : v + w;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < blockDim.x / 32 ? shared[lane] : (kMax ? -FLT_MAX : 0.0f);
    for (int o = 16; o > 0; o >>= 1) {
      const float w = __shfl_xor_sync(0xffffffff, v, o);
      v = kMax ? fmaxf(v, w) : v + w;
    }
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  v = shared[0];
  __syncthreads();
  return v;
}

}  // namespace caravan::cuda
