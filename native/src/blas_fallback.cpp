// Plain-loop sgemm for machines without OpenBLAS (row-major only, which is
// all the engine uses). Correct, not fast: it serves the CPU reference in
// CUDA checks on GPU machines.
#include "blas.h"
#if !defined(CARAVAN_OPENBLAS)
#include <stdexcept>

void cblas_sgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
                 const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  if (order != CblasRowMajor) throw std::invalid_argument("blas_fallback: only row-major sgemm");
  const bool at = ta == CblasTrans, bt = tb == CblasTrans;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < M; i++) {
    float* c = C + (size_t)i * ldc;
    for (int j = 0; j < N; j++) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
    for (int k = 0; k < K; k++) {
      const float a = alpha * (at ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]);
      if (bt) {
        for (int j = 0; j < N; j++) c[j] += a * B[(size_t)j * ldb + k];
      } else {
        const float* b = B + (size_t)k * ldb;
        for (int j = 0; j < N; j++) c[j] += a * b[j];
      }
    }
  }
}

int openblas_get_num_threads() { return 1; }
void openblas_set_num_threads(int) {}
const char* openblas_get_config() { return "caravan blas_fallback (no OpenBLAS)"; }
#endif
