// Checks a config before anything is allocated, so a bad one fails with the
// field's name instead of a crash later.
#include <stdexcept>
#include <string>
#include "config.h"

namespace caravan {

static void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("invalid config: " + what);
}

void validate(const ModelConfig& c) {
  require(c.vocab > 0, "vocab must be > 0, got " + std::to_string(c.vocab));
  require(c.d_model > 0, "dModel must be > 0, got " + std::to_string(c.d_model));
  require(c.n_layers > 0, "nLayers must be > 0, got " + std::to_string(c.n_layers));
  require(c.n_heads > 0 && c.d_model % c.n_heads == 0,
          "nHeads (" + std::to_string(c.n_heads) + ") must divide dModel (" + std::to_string(c.d_model) + ")");
  require(c.head_dim() % 2 == 0, "head dim dModel/nHeads must be even for rotary, got " + std::to_string(c.head_dim()));
  require(c.n_kv_heads > 0 && c.n_heads % c.n_kv_heads == 0,
          "nKvHeads (" + std::to_string(c.n_kv_heads) + ") must divide nHeads (" + std::to_string(c.n_heads) + ")");
  require(c.ffn_hidden > 0, "ffnHidden must be > 0, got " + std::to_string(c.ffn_hidden));
  require(c.max_seq > 0, "maxSeqLen must be > 0, got " + std::to_string(c.max_seq));
  require(c.rope_theta > 0, "ropeTheta must be > 0");
  require(c.norm_eps > 0, "normEps must be > 0");
  int previous = 0;
  for (const auto& [at, width] : c.bottlenecks) {
    const std::string which = "bottleneck at " + std::to_string(at);
    require(at > previous && at < c.n_layers, which + ": positions must increase within [1, nLayers) = [1, " + std::to_string(c.n_layers) + ")");
    require(width > 0 && width <= c.d_model, which + ": width must be in [1, dModel] = [1, " + std::to_string(c.d_model) + "], got " + std::to_string(width));
    previous = at;
  }
  require(!c.bottleneck_mxint8 || !c.bottlenecks.empty(), "bottleneckQuant 'mxint8' needs at least one bottleneck");
  require(!c.bottleneck_embed || !c.bottlenecks.empty(), "bottleneckEmbed needs at least one bottleneck");
}

void validate(const OptimConfig& c) {
  require(c.lr >= 0, "lr must be >= 0");
  require(c.min_lr_ratio >= 0 && c.min_lr_ratio <= 1, "minLrRatio must be in [0, 1]");
  require(c.warmup_steps >= 0, "warmupSteps must be >= 0");
  require(c.total_steps > 0, "totalSteps must be > 0");
  require(c.beta1 >= 0 && c.beta1 < 1, "beta1 must be in [0, 1)");
  require(c.beta2 >= 0 && c.beta2 < 1, "beta2 must be in [0, 1)");
  require(c.eps > 0, "eps must be > 0");
  require(c.weight_decay >= 0, "weightDecay must be >= 0");
}

}  // namespace caravan
