// Softmax cross-entropy fused with its backward (as llm.c does): the bf16
// logits of a row are read once for the max and the sum, and overwritten by
// their gradient, so the last stage keeps one [N,V] buffer, not two.
#include <cfloat>
#include "block_reduce.cuh"
#include "kernels.h"

namespace caravan::cuda {

namespace {
constexpr int kThreads = 512;

__global__ void cross_entropy_kernel(bf16* logits, float* loss, const int32_t* targets, int V, float scale) {
  __shared__ float shared[32];
  const size_t row = blockIdx.x;
  bf16* l = logits + row * V;
  const int target = targets[row];
  float mx = -FLT_MAX;
  for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, __bfloat162float(l[j]));
  mx = block_reduce<true>(mx, shared);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < V; j += blockDim.x) sum += __expf(__bfloat162float(l[j]) - mx);
  sum = block_reduce<false>(sum, shared);
  const float lse = mx + __logf(sum);
  if (threadIdx.x == 0) loss[row] = lse - __bfloat162float(l[target]);
  __syncthreads();  // every thread has read l[target] before it is overwritten
  const float inv = 1.0f / sum;
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    const float p = __expf(__bfloat162float(l[j]) - mx) * inv;
    l[j] = __float2bfloat16((p - (j == target ? 1.0f : 0.0f)) * scale);
  }
}
}  // namespace

void cross_entropy_fused(bf16* logits_to_grad, float* loss, const int32_t* targets, int N, int V, float scale, cudaStream_t s) {
  cross_entropy_kernel<<<N, kThreads, 0, s>>>(logits_to_grad, loss, targets, V, scale);
  CUDA_LAUNCHED("cross_entropy_fused");
}

}  // namespace caravan::cuda
