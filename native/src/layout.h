// Where a stage's tensors live in its flat arenas, and how they start out.
// Shared by the CPU and CUDA backends so both hold the same tensors, in the
// same order, with the same initial values.
#pragma once
#include <cstdint>
#include <cstddef>
#include <string>
#include <vector>
#include "config.h"

namespace caravan {

struct TensorInfo {
  std::string name;            // transformers' Llama name
  std::vector<int64_t> shape;
  size_t offset;               // in floats, into each arena
  size_t numel;
  bool decay;                  // weight decay applies (matrices only)
  float init_std;              // N(0, std²); 0 means ones (norm gains)
};

struct LayerOffsets { size_t norm1, wq, wk, wv, wo, norm2, wg, wu, wd; };

// A bottleneck this stage touches. A stage owns the down-projection of the
// bottleneck at its end, the up-projection of the one at its beginning, and
// both halves of those strictly inside it. Unowned offsets are kNone.
struct BottleneckOffsets {
  static constexpr size_t kNone = SIZE_MAX;
  int at, width;
  size_t down = kNone, up = kNone, embed = kNone;
};

struct StageLayout {
  std::vector<TensorInfo> tensors;  // model order
  std::vector<LayerOffsets> layers; // one per layer of the stage
  std::vector<BottleneckOffsets> bottlenecks;  // by position
  size_t emb = 0, norm_f = 0, head = 0;
  size_t total = 0;                 // floats in an arena
};

// Throws std::invalid_argument for a bad layer range or a tied head split from its embedding.
StageLayout stage_layout(const ModelConfig& model, int begin, int end);
// Deterministic from (seed, tensor name): see init.cpp.
void init_parameters(float* params, const StageLayout& layout, uint64_t seed);

}  // namespace caravan
