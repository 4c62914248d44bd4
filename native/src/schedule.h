// Learning rate: linear warmup, then cosine decay to lr · min_lr_ratio.
#pragma once
#include "config.h"

namespace caravan {
// step is 0-based (the step about to be taken).
double lr_at(const OptimConfig& c, int step);
}
