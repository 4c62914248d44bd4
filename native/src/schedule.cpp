#include <algorithm>
#include <cmath>
#include "schedule.h"

namespace caravan {

double lr_at(const OptimConfig& c, int step) {
  if (step < c.warmup_steps) return (double)c.lr * (step + 1) / c.warmup_steps;
  const double min_lr = (double)c.lr * c.min_lr_ratio;
  const int span = std::max(1, c.total_steps - c.warmup_steps);
  const double progress = std::min(1.0, (double)(step - c.warmup_steps) / span);
  return min_lr + 0.5 * (c.lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace caravan
