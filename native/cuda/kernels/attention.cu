// The non-GEMM parts of causal attention: softmax over each score row and
// its backward. The score and value products themselves are strided-batched
// cuBLAS GEMMs over blocks of query rows that stop at the causal edge
// (cuda_stage.cu); scores are materialised per layer, which on an 80 GB GPU
// fits the configurations we train and keeps the kernels plain.
#include <cfloat>
#include "block_reduce.cuh"
#include "kernels.h"

namespace caravan::cuda {

namespace {
constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;  // a warp per score row

// Max and sum of exp over a row in one read (the running-max form), then a
// second read to write the probabilities: a warp per row, no block-wide
// barriers. Lane partials combine over a fixed shuffle tree, so every run
// sums alike.
__global__ void causal_softmax_forward_kernel(bf16* probs, const float* scores, size_t rows, int T, int block) {
  const size_t row = (size_t)blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const int i = row % T;  // query position: keys 0..i are visible
  const float* s = scores + row * T;
  bf16* p = probs + row * T;
  float m = -FLT_MAX, l = 0.0f;
  for (int j = lane; j <= i; j += 32) {
    const float x = s[j];
    if (x > m) {
      l = l * __expf(m - x) + 1.0f;
      m = x;
    } else {
      l += __expf(x - m);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), l2 = __shfl_xor_sync(0xffffffffu, l, o);
    const float mm = fmaxf(m, m2);
    l = l * __expf(m - mm) + l2 * __expf(m2 - mm);
    m = mm;
  }
  const float inv = 1.0f / l;
  const int end = (i / block + 1) * block;  // the keys this query block's GEMMs read
  for (int j = lane; j < end; j += 32) p[j] = __float2bfloat16(j <= i ? __expf(s[j] - m) * inv : 0.0f);
}

// A block per row here: a warp per row measured 10 ms slower a step at the
// stage configuration (its one dependent chain of loads per lane).
__global__ void causal_softmax_backward_kernel(bf16* p_to_ds, const float* dp, int T, float scale) {
  __shared__ float shared[32];
  const size_t row = blockIdx.x;
  const int i = row % T;
  bf16* p = p_to_ds + row * T;
  const float* g = dp + row * T;
  float dot = 0.0f;
  for (int j = threadIdx.x; j <= i; j += blockDim.x) dot += __bfloat162float(p[j]) * g[j];
  dot = block_reduce<false>(dot, shared);
  for (int j = threadIdx.x; j <= i; j += blockDim.x) {
    p[j] = __float2bfloat16(__bfloat162float(p[j]) * (g[j] - dot) * scale);
  }
}

__global__ void fill_batch_pointers_kernel(const void** out, BatchGrid grid, int outer_count, int inner_count) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int n = outer_count * inner_count;
  if (i >= n) return;
  const long long outer = i / inner_count, inner = i % inner_count;
  for (int m = 0; m < 3; m++) out[m * n + i] = grid.base[m] + outer * grid.outer_stride[m] + inner * grid.inner_stride[m];
}
}  // namespace

void fill_batch_pointers(const void** out, BatchGrid grid, int outer_count, int inner_count, cudaStream_t s) {
  const int n = outer_count * inner_count;
  fill_batch_pointers_kernel<<<blocks_for(n, 128), 128, 0, s>>>(out, grid, outer_count, inner_count);
  CUDA_LAUNCHED("fill_batch_pointers");
}

void causal_softmax_forward(bf16* probs, const float* scores, size_t rows, int T, int block, cudaStream_t s) {
  causal_softmax_forward_kernel<<<(unsigned)((rows + kRowsPerBlock - 1) / kRowsPerBlock), kThreads, 0, s>>>(probs, scores, rows, T, block);
  CUDA_LAUNCHED("causal_softmax_forward");
}

void causal_softmax_backward(bf16* probs_to_ds, const float* dp, size_t rows, int T, float scale, cudaStream_t s) {
  causal_softmax_backward_kernel<<<(unsigned)rows, kThreads, 0, s>>>(probs_to_ds, dp, T, scale);
  CUDA_LAUNCHED("causal_softmax_backward");
}

}  // namespace caravan::cuda
