// The model and optimizer settings a stage is built from. Plain structs so the
// Node addon and the standalone driver fill them the same way.
#pragma once
#include <cstdint>
#include <string>

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
  int head_dim() const { return d_model / n_heads; }
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
