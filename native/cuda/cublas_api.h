// cuBLAS, loaded at run time. Development machines' CUDA toolkits have no
// cuBLAS headers or libraries, GPU machines' do: declaring the few entry
// points we use and resolving them with dlopen lets every toolkit compile the
// backend, and a machine without libcublas get a clear error when it runs.
#pragma once
#include <library_types.h>  // cudaDataType_t: part of the CUDA runtime headers
#include <cstdint>
#include <string>

namespace caravan::cuda {

using cublasHandle_t = void*;
using cublasStatus_t = int;
enum cublasOperation_t : int { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasComputeType_t : int { CUBLAS_COMPUTE_32F = 68 };
enum cublasGemmAlgo_t : int { CUBLAS_GEMM_DEFAULT = -1 };

struct CublasApi {
  cublasStatus_t (*create)(cublasHandle_t*);
  cublasStatus_t (*destroy)(cublasHandle_t);
  cublasStatus_t (*set_stream)(cublasHandle_t, void* stream);
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType_t Atype, int lda, const void* B,
                            cudaDataType_t Btype, int ldb, const void* beta, void* C, cudaDataType_t Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo);
  cublasStatus_t (*gemm_batched_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int m, int n, int k,
                                    const void* alpha, const void* const A[], cudaDataType_t Atype, int lda,
                                    const void* const B[], cudaDataType_t Btype, int ldb, const void* beta,
                                    void* const C[], cudaDataType_t Ctype, int ldc, int batchCount,
                                    cublasComputeType_t computeType, cublasGemmAlgo_t algo);
  std::string library;  // the file that was loaded
};

// Loads libcublas once; throws std::runtime_error naming what was tried.
const CublasApi& cublas();

}  // namespace caravan::cuda
