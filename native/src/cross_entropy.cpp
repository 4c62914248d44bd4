// Softmax cross-entropy over the vocabulary, one row per position.
#include <algorithm>
#include <cmath>
#include <vector>
#include "ops.h"

namespace caravan {

double cross_entropy_forward(float* probs, const float* logits, const int32_t* targets, int N, int V) {
  std::vector<double> row_loss(N);
#pragma omp parallel for schedule(static) if ((size_t)N * V >= kParallelMin)
  for (int i = 0; i < N; i++) {
    const float* l = logits + (size_t)i * V;
    float* p = probs + (size_t)i * V;
    float mx = l[0];
    for (int j = 1; j < V; j++) mx = std::max(mx, l[j]);
    double sum = 0.0;
    for (int j = 0; j < V; j++) {
      p[j] = std::exp(l[j] - mx);
      sum += p[j];
    }
    const float inv = (float)(1.0 / sum);
    for (int j = 0; j < V; j++) p[j] *= inv;
    row_loss[i] = -((double)l[targets[i]] - mx - std::log(sum));
  }
  double total = 0.0;  // summed in row order: the same on any thread count
  for (int i = 0; i < N; i++) total += row_loss[i];
  return total;
}

void cross_entropy_backward(float* dlogits, const float* probs, const int32_t* targets,
                            int N, int V, float scale) {
#pragma omp parallel for schedule(static) if ((size_t)N * V >= kParallelMin)
  for (int i = 0; i < N; i++) {
    const float* p = probs + (size_t)i * V;
    float* g = dlogits + (size_t)i * V;
    for (int j = 0; j < V; j++) g[j] = p[j] * scale;
    g[targets[i]] -= scale;
  }
}

}  // namespace caravan
