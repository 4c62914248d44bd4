// Rotary embedding in place on bf16 heads, rotate_half layout.
#include "kernels.h"

namespace caravan::cuda {

namespace {
__global__ void rope_kernel(bf16* x, const float* cos_t, const float* sin_t, size_t pairs, int T, int nh, int hd,
                            float sign) {
  const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= pairs) return;
  const int half = hd / 2;
  const int i = idx % half;
  const size_t head = idx / half;       // (b·T + t)·nh + h
  const int t = (head / nh) % T;
  bf16* v = x + head * hd;
  const float c = cos_t[(size_t)t * half + i], sn = sign * sin_t[(size_t)t * half + i];
  const float a = __bfloat162float(v[i]), b = __bfloat162float(v[i + half]);
  v[i] = __float2bfloat16(a * c - b * sn);
  v[i + half] = __float2bfloat16(b * c + a * sn);
}
}  // namespace

void rope_forward(bf16* x, const float* cos_t, const float* sin_t, int B, int T, int nh, int hd, cudaStream_t s) {
  const size_t pairs = (size_t)B * T * nh * (hd / 2);
  rope_kernel<<<blocks_for(pairs, 256), 256, 0, s>>>(x, cos_t, sin_t, pairs, T, nh, hd, 1.0f);
  CUDA_LAUNCHED("rope_forward");
}

void rope_backward(bf16* dx, const float* cos_t, const float* sin_t, int B, int T, int nh, int hd, cudaStream_t s) {
  const size_t pairs = (size_t)B * T * nh * (hd / 2);
  rope_kernel<<<blocks_for(pairs, 256), 256, 0, s>>>(dx, cos_t, sin_t, pairs, T, nh, hd, -1.0f);
  CUDA_LAUNCHED("rope_backward");
}

}  // namespace caravan::cuda
