// Gradient checks: every op's backward against central finite differences of
// its forward, in fp32, on small random shapes; and whole stages the same way.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace caravan {

struct GradCheckResult {
  std::string op;      // "rmsnorm", "attention", "stage[0,2)", ...
  std::string input;   // which gradient: "x", "w", "q", a tensor name, ...
  int samples;         // elements compared
  double rel_err;      // ‖analytic − numeric‖₂ / max(‖analytic‖₂, ‖numeric‖₂) over the samples
  double tolerance;
};

std::vector<GradCheckResult> gradcheck_all(uint64_t seed);

}  // namespace caravan
