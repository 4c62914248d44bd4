// The model and optimizer settings a stage is built from. Plain structs so the
// Node addon and the standalone driver fill them the same way.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace caravan {

struct ModelConfig {
  int vocab = 256;      // V
  int d_model = 128;    // d
  int n_layers = 4;     // L
  int n_heads = 4;      // H
  int n_kv_heads = 4;   // Hkv, divides H
  int ffn_hidden = 352; // F
  int max_seq = 128;    // longest T a stage accepts
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  bool tied_embeddings = false;
  // Residual bottlenecks (bottleneck.cpp): (position p, width k), p in [1, L),
  // increasing. Position p sits between layers p-1 and p, so a stage boundary
  // at p sends k channels instead of d. Part of the model, not of the split:
  // a boundary inside a stage computes exactly what a wire boundary does.
  std::vector<std::pair<int, int>> bottlenecks;
  // Quantize each bottleneck's output (forward) and its gradient (backward)
  // to MX int8 (mxint8.cpp), inside the model, so the wire carries it losslessly.
  bool bottleneck_mxint8 = false;
  // Each bottleneck's up side adds a token embedding of its own, so the
  // token's identity need not cross the wire: the receiving stage reads the
  // microbatch's token ids itself (they are data, not activations).
  bool bottleneck_embed = false;
  int head_dim() const { return d_model / n_heads; }
  // k of the bottleneck at position p, or 0 where there is none.
  int bottleneck_at(int p) const {
    for (const auto& b : bottlenecks) if (b.first == p) return b.second;
    return 0;
  }
};

struct OptimConfig {
  float lr = 3e-3f;
  float min_lr_ratio = 0.1f;  // cosine decays to lr * min_lr_ratio
  int warmup_steps = 10;
  int total_steps = 1000;     // end of the cosine; after it lr stays at the minimum
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;  // decoupled, matrices only
};

// Throws std::invalid_argument naming the first field that is wrong.
void validate(const ModelConfig& c);
void validate(const OptimConfig& c);

}  // namespace caravan
