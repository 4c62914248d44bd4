// MX int8: blocks of 32 consecutive values share one power-of-two scale 2^e
// (one byte on the wire) and each value is an int8 code, as in the OCP
// Microscaling MXINT8 format. A power-of-two scale makes the round trip
// idempotent: quantizing values that are already on the grid gives back the
// same codes and exponent, so a sender that quantized inside the model
// loses nothing more on the wire. runtime/codecs/mxint8.ts is the same
// arithmetic in TypeScript; the two must agree bit for bit.
#include <cmath>
#include "ops.h"

namespace caravan {

int mxint8_exponent(float amax) {
  if (!(amax >= kMxZeroBelow)) return kMxZeroExponent;  // also NaN: callers check finiteness first
  int E;
  std::frexp(amax, &E);  // amax = m · 2^E, m in [0.5, 1)
  // The smallest e with amax / 2^e <= 127: amax / 2^(E-7) = 128·m is in [64, 128).
  return std::ldexp(amax, 7 - E) <= 127.0f ? E - 7 : E - 6;
}

void mxint8_round_trip(float* x, size_t rows, int width) {
  for (size_t r = 0; r < rows; r++) {
    float* row = x + r * (size_t)width;
    for (int b = 0; b < width; b += kMxBlock) {
      const int end = b + kMxBlock < width ? b + kMxBlock : width;
      float amax = 0.0f;
      bool finite = true;
      for (int i = b; i < end; i++) {
        const float a = std::fabs(row[i]);
        if (!std::isfinite(a)) finite = false;
        else if (a > amax) amax = a;
      }
      if (!finite) {  // poisoned values stay visible downstream
        for (int i = b; i < end; i++) row[i] = NAN;
        continue;
      }
      const int e = mxint8_exponent(amax);
      if (e == kMxZeroExponent) {
        for (int i = b; i < end; i++) row[i] = 0.0f;
        continue;
      }
      for (int i = b; i < end; i++) {
        // nearbyint rounds half to even in the default rounding mode; the
        // scaling by 2^-e is exact.
        float q = std::nearbyint(std::ldexp(row[i], -e));
        q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
        row[i] = q == 0.0f ? 0.0f : std::ldexp(q, e);  // +0 for -0, as an int8 code has no sign of zero
      }
    }
  }
}

}  // namespace caravan
