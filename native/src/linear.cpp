// Dense layers through cblas_sgemm; W is [out, in] row-major.
#include "blas.h"
#include "ops.h"

namespace caravan {

void linear_forward(float* y, const float* x, const float* w, int N, int in, int out, bool accumulate) {
  // y[N,out] (+)= x[N,in] · w[out,in]ᵀ
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, out, in, 1.0f, x, in, w, in,
              accumulate ? 1.0f : 0.0f, y, out);
}

void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                     int N, int in, int out, bool accumulate_dx) {
  // dx[N,in] = dy[N,out] · w[out,in]
  if (dx) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, in, out, 1.0f, dy, out, w, in,
                accumulate_dx ? 1.0f : 0.0f, dx, in);
  }
  if (dw) linear_backward_weight(dw, dy, x, N, in, out);
}

void linear_backward_weight(float* dw, const float* dy, const float* x, int N, int in, int out) {
  // dw[out,in] += dy[N,out]ᵀ · x[N,in]
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, N, 1.0f, dy, out, x, in, 1.0f, dw, in);
}

}  // namespace caravan
