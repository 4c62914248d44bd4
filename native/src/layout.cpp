#include "layout.h"
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include "ops.h"

namespace caravan {

StageLayout stage_layout(const ModelConfig& model, int begin, int end) {
  const std::string range = "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
  if (begin < 0 || end > model.n_layers || begin >= end) {
    throw std::invalid_argument("invalid layer range " + range + " for a model of " + std::to_string(model.n_layers) + " layers");
  }
  const bool first = begin == 0, last = end == model.n_layers;
  if (model.tied_embeddings && !(first && last)) {
    throw std::invalid_argument("tiedEmbeddings needs the embedding and the head on one stage (layers [0, " +
                                std::to_string(model.n_layers) + ")); got stage " + range + " of " + std::to_string(model.n_layers) + " layers");
  }
  StageLayout L;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool decay, float init_std) {
    size_t numel = 1;
    for (int64_t s : shape) numel *= (size_t)s;
    L.tensors.push_back({name, std::move(shape), L.total, numel, decay, init_std});
    L.total += numel;
    return L.tensors.back().offset;
  };
  const int d = model.d_model, hd = model.head_dim(), H = model.n_heads, Hkv = model.n_kv_heads,
            F = model.ffn_hidden, V = model.vocab;
  const float std_in = 0.02f;
  const float std_out = 0.02f / std::sqrt(2.0f * model.n_layers);  // residual projections, as GPT-2
  if (first) L.emb = add("model.embed_tokens.weight", {V, d}, true, std_in);
  // Model order puts a bottleneck's down-projection after layer p-1 and its
  // up-projection before layer p, so concatenating stages gives one order.
  auto bottleneck_name = [](int at, const char* half) {
    return "model.bottlenecks." + std::to_string(at) + "." + half + ".weight";
  };
  for (int l = begin; l < end; l++) {
    if (int k = model.bottleneck_at(l)) {
      if (l == begin) L.bottlenecks.push_back({l, k});
      if (model.bottleneck_embed) L.bottlenecks.back().embed = add(bottleneck_name(l, "embed_tokens"), {V, d}, true, std_in);
      L.bottlenecks.back().up = add(bottleneck_name(l, "up_proj"), {d, k}, true, std_in);
    }
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerOffsets o;
    o.norm1 = add(p + "input_layernorm.weight", {d}, false, 0);
    o.wq = add(p + "self_attn.q_proj.weight", {H * hd, d}, true, std_in);
    o.wk = add(p + "self_attn.k_proj.weight", {Hkv * hd, d}, true, std_in);
    o.wv = add(p + "self_attn.v_proj.weight", {Hkv * hd, d}, true, std_in);
    o.wo = add(p + "self_attn.o_proj.weight", {d, H * hd}, true, std_out);
    o.norm2 = add(p + "post_attention_layernorm.weight", {d}, false, 0);
    o.wg = add(p + "mlp.gate_proj.weight", {F, d}, true, std_in);
    o.wu = add(p + "mlp.up_proj.weight", {F, d}, true, std_in);
    o.wd = add(p + "mlp.down_proj.weight", {d, F}, true, std_out);
    L.layers.push_back(o);
    if (int k = model.bottleneck_at(l + 1)) {
      L.bottlenecks.push_back({l + 1, k});
      L.bottlenecks.back().down = add(bottleneck_name(l + 1, "down_proj"), {k, d}, true, std_in);
    }
  }
  if (last) {
    L.norm_f = add("model.norm.weight", {d}, false, 0);
    L.head = model.tied_embeddings ? L.emb : add("lm_head.weight", {V, d}, true, std_in);
  }
  return L;
}

void init_parameters(float* params, const StageLayout& layout, uint64_t seed) {
  for (const TensorInfo& t : layout.tensors) {
    float* p = params + t.offset;
    if (t.init_std > 0) fill_normal(p, t.numel, seed, stream_id(t.name.c_str()), t.init_std);
    else std::fill(p, p + t.numel, 1.0f);  // norm gains start at one
  }
}

}  // namespace caravan
