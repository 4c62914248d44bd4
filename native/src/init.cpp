// Deterministic initialisation: every tensor draws from its own stream, named
// by the tensor's full name (which holds the layer index), so a layer gets the
// same weights whichever stage owns it.
#include <cmath>
#include "ops.h"

namespace caravan {

static uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t stream_id(const char* name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (const char* c = name; *c; c++) h = (h ^ (uint8_t)*c) * 0x100000001b3ull;
  return h;
}

void fill_normal(float* x, size_t n, uint64_t seed, uint64_t stream, float std) {
  uint64_t s = seed ^ (stream * 0xD1342543DE82EF95ull);
  for (size_t i = 0; i < n; i += 2) {
    // Box–Muller in double from two 53-bit uniforms in (0, 1].
    double u1 = ((splitmix64(s) >> 11) + 1.0) * 0x1.0p-53;
    double u2 = ((splitmix64(s) >> 11) + 1.0) * 0x1.0p-53;
    double r = std::sqrt(-2.0 * std::log(u1));
    x[i] = (float)(r * std::cos(2.0 * M_PI * u2) * std);
    if (i + 1 < n) x[i + 1] = (float)(r * std::sin(2.0 * M_PI * u2) * std);
  }
}

}  // namespace caravan
