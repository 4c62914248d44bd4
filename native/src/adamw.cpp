// AdamW with decoupled weight decay, and the deterministic squared norm used
// for clipping by global norm.
#include <algorithm>
#include <cmath>
#include <vector>
#include "ops.h"

namespace caravan {

void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, float grad_scale, int t) {
  const float c1 = 1.0f - (float)std::pow((double)beta1, t);
  const float c2 = 1.0f - (float)std::pow((double)beta2, t);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; i++) {
    const float gi = g[i] * grad_scale;
    m[i] = beta1 * m[i] + (1.0f - beta1) * gi;
    v[i] = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    const float mhat = m[i] / c1;
    const float vhat = v[i] / c2;
    p[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + weight_decay * p[i]);
  }
}

double sum_squares(const float* g, size_t n) {
  constexpr size_t chunk = 4096;
  const size_t chunks = (n + chunk - 1) / chunk;
  std::vector<double> partial(chunks);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t c = 0; c < chunks; c++) {
    double s = 0.0;
    const size_t end = std::min(n, (c + 1) * chunk);
    for (size_t i = c * chunk; i < end; i++) s += (double)g[i] * g[i];
    partial[c] = s;
  }
  double total = 0.0;
  for (double s : partial) total += s;
  return total;
}

}  // namespace caravan
