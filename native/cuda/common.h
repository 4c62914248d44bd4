// Shared helpers of the CUDA backend: error checks that name the call, and
// the element types (bf16 storage, fp32 accumulation).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdexcept>
#include <string>

namespace caravan::cuda {

using bf16 = __nv_bfloat16;

inline void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA error in ") + what + " (" + file + ":" + std::to_string(line) +
                             "): " + cudaGetErrorString(e));
  }
}
#define CUDA_CHECK(call) ::caravan::cuda::check((call), #call, __FILE__, __LINE__)
// After a kernel launch: reports a bad launch configuration at once.
#define CUDA_LAUNCHED(name) ::caravan::cuda::check(cudaGetLastError(), name, __FILE__, __LINE__)

inline int blocks_for(size_t n, int threads) { return (int)((n + threads - 1) / threads); }

}  // namespace caravan::cuda
