// Embedding lookup, and its gradient without atomics: positions are grouped
// by token on the host (a stable sort), and each token's rows are added in
// position order, so the sum is the same on every run.
#include "kernels.h"

namespace caravan::cuda {

namespace {
__global__ void embedding_forward_kernel(float* out, const int32_t* tokens, const float* table, int N, int d) {
  const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (size_t)N * d) return;
  const size_t i = idx / d, j = idx % d;
  out[idx] = table[(size_t)tokens[i] * d + j];
}

// grid: (unique tokens, column blocks)
__global__ void embedding_backward_kernel(float* dtable, const float* dout, const int32_t* order,
                                          const int32_t* starts, const int32_t* ids, int d) {
  const int u = blockIdx.x;
  const int j = blockIdx.y * blockDim.x + threadIdx.x;
  if (j >= d) return;
  float* row = dtable + (size_t)ids[u] * d;
  float acc = row[j];
  for (int k = starts[u]; k < starts[u + 1]; k++) acc += dout[(size_t)order[k] * d + j];
  row[j] = acc;
}
}  // namespace

void embedding_forward(float* out, const int32_t* tokens, const float* table, int N, int d, cudaStream_t s) {
  embedding_forward_kernel<<<blocks_for((size_t)N * d, 256), 256, 0, s>>>(out, tokens, table, N, d);
  CUDA_LAUNCHED("embedding_forward");
}

void embedding_backward(float* dtable, const float* dout, const int32_t* order, const int32_t* starts,
                        const int32_t* ids, int unique, int d, cudaStream_t s) {
  if (unique == 0) return;
  embedding_backward_kernel<<<dim3(unique, blocks_for(d, 128)), 128, 0, s>>>(dtable, dout, order, starts, ids, d);
  CUDA_LAUNCHED("embedding_backward");
}

}  // namespace caravan::cuda
