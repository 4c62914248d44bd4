// SwiGLU gate: act = silu(gate) · up, elementwise.
#include <cmath>
#include "ops.h"

namespace caravan {

void swiglu_forward(float* act, const float* gate, const float* up, size_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; i++) {
    const float z = gate[i];
    act[i] = z / (1.0f + std::exp(-z)) * up[i];
  }
}

void swiglu_backward(float* dgate, float* dup, const float* dact, const float* gate,
                     const float* up, size_t n) {
  // silu'(z) = s · (1 + z · (1 − s)), s = sigmoid(z)
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; i++) {
    const float z = gate[i];
    const float s = 1.0f / (1.0f + std::exp(-z));
    dup[i] = dact[i] * z * s;
    dgate[i] = dact[i] * up[i] * s * (1.0f + z * (1.0f - s));
  }
}

}  // namespace caravan
