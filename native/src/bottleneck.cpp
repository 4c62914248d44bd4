// The residual bottleneck at a stage boundary (in the spirit of ResBM): the
// sending side projects the residual stream down to k channels and keeps its
// first k channels as an identity path; the receiving side projects back up
// and adds the identity path in again. At initialisation the boundary passes
// the first k channels through almost unchanged, so gradients flow from the
// first step while the projections learn what else to carry.
#include <cstring>
#include "ops.h"

namespace caravan {

void bottleneck_down_forward(float* z, const float* h, const float* wd, int N, int d, int k) {
  // z[N,k] = h[N,d] · wd[k,d]ᵀ + h[:, :k]
  for (int n = 0; n < N; n++) std::memcpy(z + (size_t)n * k, h + (size_t)n * d, sizeof(float) * k);
  linear_forward(z, h, wd, N, d, k, true);
}

void bottleneck_down_backward(float* dh, float* dwd, const float* dz, const float* h, const float* wd,
                              int N, int d, int k) {
  // dh[N,d] = dz[N,k] · wd[k,d], then dh[:, :k] += dz; dwd[k,d] += dzᵀ · h
  linear_backward(dh, dwd, dz, h, wd, N, d, k, false);
  for (int n = 0; n < N; n++) {
    float* row = dh + (size_t)n * d;
    const float* g = dz + (size_t)n * k;
    for (int c = 0; c < k; c++) row[c] += g[c];
  }
}

void bottleneck_up_forward(float* y, const float* z, const float* wu, int N, int d, int k) {
  // y[N,d] = z[N,k] · wu[d,k]ᵀ, then y[:, :k] += z
  linear_forward(y, z, wu, N, k, d);
  for (int n = 0; n < N; n++) {
    float* row = y + (size_t)n * d;
    const float* zr = z + (size_t)n * k;
    for (int c = 0; c < k; c++) row[c] += zr[c];
  }
}

void bottleneck_up_backward(float* dz, float* dwu, const float* dy, const float* z, const float* wu,
                            int N, int d, int k) {
  // dz[N,k] = dy[N,d] · wu[d,k] + dy[:, :k]; dwu[d,k] += dyᵀ · z
  for (int n = 0; n < N; n++) std::memcpy(dz + (size_t)n * k, dy + (size_t)n * d, sizeof(float) * k);
  linear_backward(dz, dwu, dy, z, wu, N, k, d, true);
}

}  // namespace caravan
