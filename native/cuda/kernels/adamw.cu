// AdamW on the fp32 master weights, refreshing their bf16 copy in the same
// pass; and the per-block Σg² for clipping by global norm.
#include "kernels.h"

namespace caravan::cuda {

namespace {
__global__ void adamw_kernel(float* p, bf16* pb, const float* g, float* m, float* v, size_t n, float lr, float b1,
                             float b2, float eps, float wd, float grad_scale, float c1, float c2) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float gi = g[i] * grad_scale;
  const float mi = b1 * m[i] + (1.0f - b1) * gi;
  const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  const float pi = p[i] - lr * ((mi / c1) / (sqrtf(vi / c2) + eps) + wd * p[i]);
  p[i] = pi;
  if (pb) pb[i] = __float2bfloat16(pi);
}

// Enough blocks, and four loads in flight per thread, to keep the memory
// system busy: with one float per thread in flight this pass ran at a
// fraction of the bandwidth. The grouping is by index from the tensor's
// start, never by address, so the sum is the same wherever the tensor sits
// in its stage's arena (a 1-stage and a 2-stage model must agree bit for bit).
__global__ void sum_squares_kernel(double* partial, const float* g, size_t n) {
  __shared__ double shared[256];
  const size_t quads = n / 4;
  double s = 0.0;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < quads; i += (size_t)gridDim.x * blockDim.x) {
    const float a = g[4 * i], b = g[4 * i + 1], c = g[4 * i + 2], d = g[4 * i + 3];
    s += (double)a * a + (double)b * b + (double)c * c + (double)d * d;
  }
  if (blockIdx.x == 0) {
    for (size_t i = quads * 4 + threadIdx.x; i < n; i += blockDim.x) s += (double)g[i] * g[i];
  }
  shared[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {  // a fixed tree: the same sum every run
    if (threadIdx.x < w) shared[threadIdx.x] += shared[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = shared[0];
}
}  // namespace

void adamw_update(float* p, bf16* p_bf16, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, float grad_scale, int t, cudaStream_t s) {
  const float c1 = 1.0f - (float)pow((double)beta1, t), c2 = 1.0f - (float)pow((double)beta2, t);
  adamw_kernel<<<blocks_for(n, 256), 256, 0, s>>>(p, p_bf16, g, m, v, n, lr, beta1, beta2, eps, weight_decay,
                                                  grad_scale, c1, c2);
  CUDA_LAUNCHED("adamw_update");
}

void sum_squares_partial(double* partial, const float* g, size_t n, cudaStream_t s) {
  sum_squares_kernel<<<kSumSqBlocks, 256, 0, s>>>(partial, g, n);
  CUDA_LAUNCHED("sum_squares_partial");
}

}  // namespace caravan::cuda
