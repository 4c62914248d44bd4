// RMSNorm on the GPU: one block per row for the forward and the input
// gradient; the weight gradient as a column reduction over fixed row chunks.
#include "block_reduce.cuh"
#include "kernels.h"

namespace caravan::cuda {

namespace {
constexpr int kThreads = 256;

__global__ void rmsnorm_forward_kernel(bf16* y, float* rstd, const float* x, const float* w, int d, float eps) {
  __shared__ float shared[32];
  const size_t row = blockIdx.x;
  const float* xr = x + row * d;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < d; j += blockDim.x) ss += xr[j] * xr[j];
  ss = block_reduce<false>(ss, shared);
  const float r = rsqrtf(ss / d + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  for (int j = threadIdx.x; j < d; j += blockDim.x) y[row * d + j] = __float2bfloat16(xr[j] * r * w[j]);
}

__global__ void rmsnorm_backward_dx_kernel(float* dx, const float* dy, const float* x, const float* w,
                                           const float* rstd, int d) {
  __shared__ float shared[32];
  const size_t row = blockIdx.x;
  const float r = rstd[row];
  const float* xr = x + row * d;
  const float* dyr = dy + row * d;
  float dot = 0.0f;
  for (int j = threadIdx.x; j < d; j += blockDim.x) dot += dyr[j] * w[j] * xr[j] * r;
  const float mean = block_reduce<false>(dot, shared) / d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) dx[row * d + j] += r * (dyr[j] * w[j] - xr[j] * r * mean);
}

// partial[chunk, j] = Σ_{rows in chunk} dy·x·rstd, rows in order.
__global__ void rmsnorm_dw_partial_kernel(float* partial, const float* dy, const float* x, const float* rstd,
                                          int N, int d) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int chunk = blockIdx.y;
  if (j >= d) return;
  const int rows = (N + kRmsChunks - 1) / kRmsChunks;
  const int begin = chunk * rows, end = min(N, begin + rows);
  float s = 0.0f;
  for (int i = begin; i < end; i++) s += dy[(size_t)i * d + j] * x[(size_t)i * d + j] * rstd[i];
  partial[(size_t)chunk * d + j] = s;
}

__global__ void rmsnorm_dw_sum_kernel(float* dw, const float* partial, int d) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= d) return;
  float s = 0.0f;
  for (int c = 0; c < kRmsChunks; c++) s += partial[(size_t)c * d + j];
  dw[j] += s;
}
}  // namespace

void rmsnorm_forward(bf16* y, float* rstd, const float* x, const float* w, int N, int d, float eps, cudaStream_t s) {
  rmsnorm_forward_kernel<<<N, kThreads, 0, s>>>(y, rstd, x, w, d, eps);
  CUDA_LAUNCHED("rmsnorm_forward");
}

void rmsnorm_backward(float* dx, float* dw, float* partial, const float* dy, const float* x, const float* w,
                      const float* rstd, int N, int d, cudaStream_t s) {
  rmsnorm_backward_dx_kernel<<<N, kThreads, 0, s>>>(dx, dy, x, w, rstd, d);
  CUDA_LAUNCHED("rmsnorm_backward_dx");
  if (dw) rmsnorm_backward_weight(dw, partial, dy, x, rstd, N, d, s);
}

void rmsnorm_backward_weight(float* dw, float* partial, const float* dy, const float* x, const float* rstd, int N, int d,
                             cudaStream_t s) {
  rmsnorm_dw_partial_kernel<<<dim3(blocks_for(d, 128), kRmsChunks), 128, 0, s>>>(partial, dy, x, rstd, N, d);
  CUDA_LAUNCHED("rmsnorm_dw_partial");
  rmsnorm_dw_sum_kernel<<<blocks_for(d, 128), 128, 0, s>>>(dw, partial, d);
  CUDA_LAUNCHED("rmsnorm_dw_sum");
}

}  // namespace caravan::cuda
