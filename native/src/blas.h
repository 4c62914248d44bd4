// The one BLAS call the CPU backend makes, cblas_sgemm, plus OpenBLAS's
// thread controls (attention runs many small GEMMs one per thread). With
// OpenBLAS (CARAVAN_OPENBLAS) these come from its cblas.h; without it — GPU
// machines whose image has no OpenBLAS, where the CPU backend is only the
// reference for checks — from blas_fallback.cpp, plain loops.
#pragma once
#if defined(CARAVAN_OPENBLAS)
#include <cblas.h>
#else
enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112 };
void cblas_sgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
                 const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc);
int openblas_get_num_threads();
void openblas_set_num_threads(int n);
const char* openblas_get_config();
#endif
