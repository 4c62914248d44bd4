// Token embedding lookup and its scatter-add gradient.
#include <cstring>
#include "ops.h"

namespace caravan {

void embedding_forward(float* out, const int32_t* tokens, const float* table, int N, int d, bool accumulate) {
  for (int i = 0; i < N; i++) {
    float* row = out + (size_t)i * d;
    const float* e = table + (size_t)tokens[i] * d;
    if (accumulate) for (int j = 0; j < d; j++) row[j] += e[j];
    else std::memcpy(row, e, sizeof(float) * d);
  }
}

void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int N, int d) {
  // Serial on purpose: repeated tokens add into one row, and the order of
  // those additions must not depend on threads.
  for (int i = 0; i < N; i++) {
    float* row = dtable + (size_t)tokens[i] * d;
    const float* g = dout + (size_t)i * d;
    for (int j = 0; j < d; j++) row[j] += g[j];
  }
}

}  // namespace caravan
