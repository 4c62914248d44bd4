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

__global__ void causal_softmax_forward_kernel(bf16* probs, const float* scores, int T, int block) {
  __shared__ float shared[32];
  const size_t row = blockIdx.x;
  const int i = row % T;  // query position: keys 0..i are visible
  const float* s = scores + row * T;
  bf16* p = probs + row * T;
  float mx = -FLT_MAX;
  for (int j = threadIdx.x; j <= i; j += blockDim.x) mx = fmaxf(mx, s[j]);
  mx = block_reduce<true>(mx, shared);
  float sum = 0.0f;
  for (int j = threadIdx.x; j <= i; j += blockDim.x) sum += __expf(s[j] - mx);
  sum = block_reduce<false>(sum, shared);
  const float inv = 1.0f / sum;
  const int end = (i / block + 1) * block;  // the keys this query block's GEMMs read
  for (int j = threadIdx.x; j < end; j += blockDim.x) {
    p[j] = __float2bfloat16(j <= i ? __expf(s[j] - mx) * inv : 0.0f);
  }
}

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
  causal_softmax_forward_kernel<<<(unsigned)rows, kThreads, 0, s>>>(probs, scores, T, block);
  CUDA_LAUNCHED("causal_softmax_forward");
}

void causal_softmax_backward(bf16* probs_to_ds, const float* dp, size_t rows, int T, float scale, cudaStream_t s) {
  causal_softmax_backward_kernel<<<(unsigned)rows, kThreads, 0, s>>>(probs_to_ds, dp, T, scale);
  CUDA_LAUNCHED("causal_softmax_backward");
}

}  // namespace caravan::cuda
