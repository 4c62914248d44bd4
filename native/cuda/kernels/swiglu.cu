// SwiGLU gate on bf16, two elements per thread.
#include "kernels.h"

namespace caravan::cuda {

namespace {
__global__ void swiglu_forward_kernel(bf16* act, const bf16* gate, const bf16* up, size_t n) {
  const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 2;
  for (size_t k = i; k < min(n, i + 2); k++) {
    const float z = __bfloat162float(gate[k]);
    act[k] = __float2bfloat16(z / (1.0f + __expf(-z)) * __bfloat162float(up[k]));
  }
}

__global__ void swiglu_backward_kernel(bf16* dgate, bf16* dup, const bf16* dact, const bf16* gate, const bf16* up,
                                       size_t n) {
  const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 2;
  for (size_t k = i; k < min(n, i + 2); k++) {
    const float z = __bfloat162float(gate[k]), u = __bfloat162float(up[k]), g = __bfloat162float(dact[k]);
    const float sg = 1.0f / (1.0f + __expf(-z));
    dup[k] = __float2bfloat16(g * z * sg);
    dgate[k] = __float2bfloat16(g * u * sg * (1.0f + z * (1.0f - sg)));
  }
}
}  // namespace

void swiglu_forward(bf16* act, const bf16* gate, const bf16* up, size_t n, cudaStream_t s) {
  swiglu_forward_kernel<<<blocks_for((n + 1) / 2, 256), 256, 0, s>>>(act, gate, up, n);
  CUDA_LAUNCHED("swiglu_forward");
}

void swiglu_backward(bf16* dgate, bf16* dup, const bf16* dact, const bf16* gate, const bf16* up, size_t n, cudaStream_t s) {
  swiglu_backward_kernel<<<blocks_for((n + 1) / 2, 256), 256, 0, s>>>(dgate, dup, dact, gate, up, n);
  CUDA_LAUNCHED("swiglu_backward");
}

}  // namespace caravan::cuda
