// Type conversions and a residual add.
#include "kernels.h"

namespace caravan::cuda {

namespace {
__global__ void f32_to_bf16_kernel(bf16* out, const float* in, size_t n) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __float2bfloat16(in[i]);
}
__global__ void bf16_to_f32_kernel(float* out, const bf16* in, size_t n) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __bfloat162float(in[i]);
}
__global__ void add_f32_kernel(float* acc, const float* x, size_t n) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) acc[i] += x[i];
}
}  // namespace

void f32_to_bf16(bf16* out, const float* in, size_t n, cudaStream_t s) {
  f32_to_bf16_kernel<<<blocks_for(n, 256), 256, 0, s>>>(out, in, n);
  CUDA_LAUNCHED("f32_to_bf16");
}
void bf16_to_f32(float* out, const bf16* in, size_t n, cudaStream_t s) {
  bf16_to_f32_kernel<<<blocks_for(n, 256), 256, 0, s>>>(out, in, n);
  CUDA_LAUNCHED("bf16_to_f32");
}
void add_f32(float* acc, const float* x, size_t n, cudaStream_t s) {
  add_f32_kernel<<<blocks_for(n, 256), 256, 0, s>>>(acc, x, n);
  CUDA_LAUNCHED("add_f32");
}

}  // namespace caravan::cuda
