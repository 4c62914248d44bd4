// RMSNorm over the last axis; rows are independent, so rows run in parallel.
#include <cmath>
#include "ops.h"

namespace caravan {

void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int N, int d, float eps) {
#pragma omp parallel for schedule(static) if ((size_t)N * d >= kParallelMin)
  for (int i = 0; i < N; i++) {
    const float* xi = x + (size_t)i * d;
    float* yi = y + (size_t)i * d;
    double ss = 0.0;
    for (int j = 0; j < d; j++) ss += (double)xi[j] * xi[j];
    float r = (float)(1.0 / std::sqrt(ss / d + eps));
    rstd[i] = r;
    for (int j = 0; j < d; j++) yi[j] = xi[j] * r * w[j];
  }
}

void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                      const float* rstd, int N, int d, bool accumulate_dx) {
  // With xh = x·r and y = xh·w:  dx = r · (dxh − xh · mean(dxh · xh)),  dxh = dy·w.
#pragma omp parallel for schedule(static) if ((size_t)N * d >= kParallelMin)
  for (int i = 0; i < N; i++) {
    const float* xi = x + (size_t)i * d;
    const float* dyi = dy + (size_t)i * d;
    float* dxi = dx + (size_t)i * d;
    const float r = rstd[i];
    double dot = 0.0;
    for (int j = 0; j < d; j++) dot += (double)dyi[j] * w[j] * xi[j] * r;
    const float mean = (float)(dot / d);
    for (int j = 0; j < d; j++) {
      float g = r * (dyi[j] * w[j] - xi[j] * r * mean);
      dxi[j] = accumulate_dx ? dxi[j] + g : g;
    }
  }
  if (dw) rmsnorm_backward_weight(dw, dy, x, rstd, N, d);
}

void rmsnorm_backward_weight(float* dw, const float* dy, const float* x, const float* rstd, int N, int d) {
  // Weight gradient sums over rows: done serially so the order is fixed.
  for (int i = 0; i < N; i++) {
    const float* xi = x + (size_t)i * d;
    const float* dyi = dy + (size_t)i * d;
    const float r = rstd[i];
    for (int j = 0; j < d; j++) dw[j] += dyi[j] * xi[j] * r;
  }
}

}  // namespace caravan
