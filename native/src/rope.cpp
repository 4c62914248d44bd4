// Rotary position embedding in the rotate_half layout of transformers' Llama:
// element i pairs with element i + hd/2.
#include <cmath>
#include "ops.h"

namespace caravan {

void rope_tables(float* cos_t, float* sin_t, int max_seq, int hd, float theta) {
  const int half = hd / 2;
  for (int t = 0; t < max_seq; t++) {
    for (int i = 0; i < half; i++) {
      // inv_freq in float, as transformers computes it, then the angle in double.
      float inv_freq = (float)(1.0 / std::pow((double)theta, (2.0 * i) / hd));
      double a = (double)t * inv_freq;
      cos_t[(size_t)t * half + i] = (float)std::cos(a);
      sin_t[(size_t)t * half + i] = (float)std::sin(a);
    }
  }
}

static void rotate(float* x, const float* cos_t, const float* sin_t, int B, int T, int nh, int hd,
                   float sign) {
  const int half = hd / 2;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * T * nh * hd >= kParallelMin)
  for (int b = 0; b < B; b++) {
    for (int t = 0; t < T; t++) {
      const float* c = cos_t + (size_t)t * half;
      const float* s = sin_t + (size_t)t * half;
      for (int h = 0; h < nh; h++) {
        float* v = x + (((size_t)b * T + t) * nh + h) * hd;
        for (int i = 0; i < half; i++) {
          float a = v[i], bb = v[i + half];
          v[i] = a * c[i] - sign * bb * s[i];
          v[i + half] = bb * c[i] + sign * a * s[i];
        }
      }
    }
  }
}

// x[B,T,nh,hd]
void rope_forward(float* x, const float* cos_t, const float* sin_t, int B, int T, int nh, int hd) {
  rotate(x, cos_t, sin_t, B, T, nh, hd, 1.0f);
}

// The rotation is orthogonal: its transpose is the rotation by −angle.
void rope_backward(float* dx, const float* cos_t, const float* sin_t, int B, int T, int nh, int hd) {
  rotate(dx, cos_t, sin_t, B, T, nh, hd, -1.0f);
}

}  // namespace caravan
