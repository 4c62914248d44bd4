// The stage: wiring of the op families into Llama blocks, forward and backward.
#include "stage.h"
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include "ops.h"
#include "schedule.h"

namespace caravan {

struct LayerCache {
  // x, xn1, h, xn2 [N,d]; rstd1, rstd2 [N]; q, attn [N,H·hd]; k, v [N,Hkv·hd];
  // probs [B,H,T,T]; gate, up, act [N,F]
  std::vector<float> x, rstd1, xn1, q, k, v, probs, attn, h, rstd2, xn2, gate, up, act;
  // After the split backward's B (W's operands): dy, the block's output
  // gradient, dh, the gradient at h (o_proj's dy), dxn2 and dxn1, the norms'
  // output gradients, all [N,d]; and in place of the forward values B no
  // longer needs, gate → dgate, up → dup [N,F], q → dq [N,H·hd], k → dk,
  // v → dv [N,Hkv·hd] (buffers swapped, not copied); probs freed.
  std::vector<float> dy, dh, dxn2, dxn1;
};

struct Stash {
  int B = 0, T = 0;
  std::vector<int32_t> tokens, targets;   // [N]
  std::vector<LayerCache> layers;
  std::vector<float> final_in, rstd_f, xn_f, probs;  // [N,d], [N], [N,d], [N,V]
  // By bottleneck position: the residual stream going into the down-projection
  // [N,d], and the (quantized) bottleneck going into the up-projection [N,k].
  std::map<int, std::vector<float>> bn_h, bn_z;
  // After B (W's operands): probs hold dlogits [N,V]; dxn_f [N,d], the final
  // norm's output gradient; demb [N,d], the embedding's output gradient
  // (stage 0); by bottleneck position, the up-projection's dy [N,d] and the
  // down-projection's dz [N,k].
  bool input_done = false;
  std::vector<float> dxn_f, demb;
  std::map<int, std::vector<float>> bn_dy, bn_dz;
};

static std::string fmt_shape(std::initializer_list<long long> dims) {
  std::ostringstream o;
  o << "[";
  bool first = true;
  for (long long v : dims) { o << (first ? "" : ",") << v; first = false; }
  o << "]";
  return o.str();
}

Stage::Stage(const ModelConfig& model, const OptimConfig& optim, int begin, int end, uint64_t seed)
    : model_(model), optim_(optim), begin_(begin), end_(end) {
  validate(model_);
  validate(optim_);
  layout_ = stage_layout(model_, begin, end);
  params = std::make_shared<std::vector<float>>(layout_.total);
  init_parameters(params->data(), layout_, seed);
  const int hd = model.head_dim();
  const size_t n = params->size();
  grads = std::make_shared<std::vector<float>>(n, 0.0f);
  exp_avg = std::make_shared<std::vector<float>>(n, 0.0f);
  exp_avg_sq = std::make_shared<std::vector<float>>(n, 0.0f);
  rope_cos_.resize((size_t)model.max_seq * hd / 2);
  rope_sin_.resize((size_t)model.max_seq * hd / 2);
  rope_tables(rope_cos_.data(), rope_sin_.data(), model.max_seq, hd, model.rope_theta);
}

Stage::~Stage() = default;

std::string Stage::describe() const {
  return "stage [" + std::to_string(begin_) + ", " + std::to_string(end_) + ") of " +
         std::to_string(model_.n_layers) + " layers";
}

void Stage::check_forward(int64_t mb, const int32_t* tokens, const float* acts, size_t input_len, int B, int T,
                          const int32_t* targets, size_t targets_len, bool train) const {
  const int d = model_.d_model, V = model_.vocab;
  const std::string where = describe() + ", microbatch " + std::to_string(mb);
  if (B <= 0 || T <= 0) throw std::invalid_argument(where + ": B and T must be > 0, got B=" + std::to_string(B) + " T=" + std::to_string(T));
  if (T > model_.max_seq) throw std::invalid_argument(where + ": T=" + std::to_string(T) + " exceeds maxSeqLen " + std::to_string(model_.max_seq));
  const size_t N = (size_t)B * T;
  if (is_first()) {
    if (!tokens) throw std::invalid_argument(where + ": stage 0 takes token ids (Int32Array of shape [B,T])");
    if (input_len != N) throw std::invalid_argument(where + ": expected token ids of shape " + fmt_shape({B, T}) + " (" + std::to_string(N) + " values), got " + std::to_string(input_len));
  } else {
    const size_t w = in_width();
    if (!acts) throw std::invalid_argument(where + ": this stage takes activations (Float32Array of shape [B,T," + std::to_string(w) + "])");
    if (input_len != N * w) throw std::invalid_argument(where + ": expected activations of shape " + fmt_shape({B, T, (long long)w}) + " (" + std::to_string(N * w) + " floats), got " + std::to_string(input_len));
    if (needs_tokens() && !tokens) throw std::invalid_argument(where + ": this stage re-embeds tokens at its bottleneck and needs the microbatch's token ids [B,T] beside its activations");
  }
  // The engine indexes with int: the widest buffer, B·T·max(d, V, F, H·T), must fit.
  const size_t widest = (size_t)std::max({d, V, model_.ffn_hidden, model_.n_heads * T});
  if (N * widest > (size_t)INT32_MAX) throw std::invalid_argument(where + ": B=" + std::to_string(B) + " T=" + std::to_string(T) + " is too large a microbatch for this model");
  if (needs_tokens()) {
    for (size_t i = 0; i < N; i++) {
      if (tokens[i] < 0 || tokens[i] >= V) throw std::invalid_argument(where + ": token id " + std::to_string(tokens[i]) + " at position " + std::to_string(i) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
    }
  }
  if (is_last() && train && !targets) throw std::invalid_argument(where + ": the last stage needs targets of shape [B,T] to train");
  if (targets) {
    if (!is_last()) throw std::invalid_argument(where + ": only the last stage takes targets");
    if (targets_len != N) throw std::invalid_argument(where + ": expected targets of shape " + fmt_shape({B, T}) + ", got " + std::to_string(targets_len) + " values");
    for (size_t i = 0; i < N; i++) {
      if (targets[i] < 0 || targets[i] >= V) throw std::invalid_argument(where + ": target id " + std::to_string(targets[i]) + " at position " + std::to_string(i) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
    }
  }
  if (train && stash_.count(mb)) throw std::invalid_argument(where + ": microbatch already has a stashed forward (backward not yet run)");

}

int Stage::in_width() const {
  const int k = is_first() ? 0 : model_.bottleneck_at(begin_);
  return k ? k : model_.d_model;
}

int Stage::out_width() const {
  const int k = is_last() ? 0 : model_.bottleneck_at(end_);
  return k ? k : model_.d_model;
}

const BottleneckOffsets* Stage::bottleneck(int at) const {
  for (const BottleneckOffsets& b : layout_.bottlenecks) if (b.at == at) return &b;
  return nullptr;
}

void Stage::bottleneck_down(const BottleneckOffsets& b, float* z, const float* h, int N) {
  bottleneck_down_forward(z, h, P(b.down), N, model_.d_model, b.width);
  if (model_.bottleneck_mxint8) mxint8_round_trip(z, N, b.width);
}

void Stage::bottleneck_down_grad(const BottleneckOffsets& b, float* dh, const float* dz, const float* h, int N, bool weights) {
  // The quantizer's gradient is taken as the identity (straight-through).
  bottleneck_down_backward(dh, weights ? G(b.down) : nullptr, dz, h, P(b.down), N, model_.d_model, b.width);
}

bool Stage::needs_tokens() const {
  if (is_first()) return true;
  for (const BottleneckOffsets& b : layout_.bottlenecks) if (b.embed != BottleneckOffsets::kNone) return true;
  return false;
}

void Stage::bottleneck_up(const BottleneckOffsets& b, float* y, const float* z, const int32_t* tokens, int N) {
  bottleneck_up_forward(y, z, P(b.up), N, model_.d_model, b.width);
  if (b.embed != BottleneckOffsets::kNone) embedding_forward(y, tokens, P(b.embed), N, model_.d_model, true);
}

void Stage::bottleneck_up_grad(const BottleneckOffsets& b, float* dz, const float* dy, const float* z, const int32_t* tokens, int N, bool weights) {
  if (weights && b.embed != BottleneckOffsets::kNone) embedding_backward(G(b.embed), dy, tokens, N, model_.d_model);
  bottleneck_up_backward(dz, weights ? G(b.up) : nullptr, dy, z, P(b.up), N, model_.d_model, b.width);
  if (model_.bottleneck_mxint8) mxint8_round_trip(dz, N, b.width);
}

// bottleneck_up_grad's weight half, in its order.
void Stage::bottleneck_up_weight(const BottleneckOffsets& b, const float* dy, const float* z, const int32_t* tokens, int N) {
  if (b.embed != BottleneckOffsets::kNone) embedding_backward(G(b.embed), dy, tokens, N, model_.d_model);
  linear_backward_weight(G(b.up), dy, z, N, b.width, model_.d_model);
}

size_t Stage::output_len(int B, int T, bool logits) const {
  return (size_t)B * T * (logits ? model_.vocab : out_width());
}

void Stage::block_forward(int layer, float* x, LayerCache& c, int B, int T) {
  const LayerOffsets& o = layout_.layers[layer - begin_];
  const int N = B * T, d = model_.d_model, hd = model_.head_dim(), H = model_.n_heads,
            Hkv = model_.n_kv_heads, F = model_.ffn_hidden;
  c.x.assign(x, x + (size_t)N * d);
  c.rstd1.resize(N);
  c.xn1.resize((size_t)N * d);
  rmsnorm_forward(c.xn1.data(), c.rstd1.data(), x, P(o.norm1), N, d, model_.norm_eps);
  c.q.resize((size_t)N * H * hd);
  c.k.resize((size_t)N * Hkv * hd);
  c.v.resize((size_t)N * Hkv * hd);
  linear_forward(c.q.data(), c.xn1.data(), P(o.wq), N, d, H * hd);
  linear_forward(c.k.data(), c.xn1.data(), P(o.wk), N, d, Hkv * hd);
  linear_forward(c.v.data(), c.xn1.data(), P(o.wv), N, d, Hkv * hd);
  rope_forward(c.q.data(), rope_cos_.data(), rope_sin_.data(), B, T, H, hd);
  rope_forward(c.k.data(), rope_cos_.data(), rope_sin_.data(), B, T, Hkv, hd);
  c.probs.resize((size_t)B * H * T * T);
  c.attn.resize((size_t)N * H * hd);
  attention_forward(c.attn.data(), c.probs.data(), c.q.data(), c.k.data(), c.v.data(), B, T, H, Hkv, hd);
  c.h = c.x;  // h = x + o_proj(attn)
  linear_forward(c.h.data(), c.attn.data(), P(o.wo), N, H * hd, d, true);
  c.rstd2.resize(N);
  c.xn2.resize((size_t)N * d);
  rmsnorm_forward(c.xn2.data(), c.rstd2.data(), c.h.data(), P(o.norm2), N, d, model_.norm_eps);
  c.gate.resize((size_t)N * F);
  c.up.resize((size_t)N * F);
  c.act.resize((size_t)N * F);
  linear_forward(c.gate.data(), c.xn2.data(), P(o.wg), N, d, F);
  linear_forward(c.up.data(), c.xn2.data(), P(o.wu), N, d, F);
  swiglu_forward(c.act.data(), c.gate.data(), c.up.data(), (size_t)N * F);
  std::memcpy(x, c.h.data(), sizeof(float) * N * d);  // out = h + down_proj(act)
  linear_forward(x, c.act.data(), P(o.wd), N, F, d, true);
}

void Stage::block_backward(int layer, float* dx, LayerCache& c, int B, int T, bool split) {
  const LayerOffsets& o = layout_.layers[layer - begin_];
  const int N = B * T, d = model_.d_model, hd = model_.head_dim(), H = model_.n_heads,
            Hkv = model_.n_kv_heads, F = model_.ffn_hidden;
  Workspace& w = ws_;
  // The fused backward accumulates weight gradients as it goes; B (split)
  // passes null for them and keeps their dy operands in c for W instead.
  auto gw = [&](size_t off) { return split ? nullptr : G(off); };
  std::vector<float>& dh = split ? c.dh : w.dh;
  std::vector<float>& dxn2 = split ? c.dxn2 : w.dxn;
  std::vector<float>& dxn1 = split ? c.dxn1 : w.dxn;
  if (split) c.dy.assign(dx, dx + (size_t)N * d);
  dh.assign(dx, dx + (size_t)N * d);  // residual path
  w.dact.resize((size_t)N * F);
  w.dgate.resize((size_t)N * F);
  w.dup.resize((size_t)N * F);
  dxn2.resize((size_t)N * d);
  dxn1.resize((size_t)N * d);
  w.dattn.resize((size_t)N * H * hd);
  w.dq.resize((size_t)N * H * hd);
  w.dk.resize((size_t)N * Hkv * hd);
  w.dv.resize((size_t)N * Hkv * hd);
  std::vector<float>&dact = w.dact, &dgate = w.dgate, &dup = w.dup, &dattn = w.dattn, &dq = w.dq, &dk = w.dk,
                    &dv = w.dv;
  linear_backward(dact.data(), gw(o.wd), dx, c.act.data(), P(o.wd), N, F, d, false);
  swiglu_backward(dgate.data(), dup.data(), dact.data(), c.gate.data(), c.up.data(), (size_t)N * F);
  linear_backward(dxn2.data(), gw(o.wg), dgate.data(), c.xn2.data(), P(o.wg), N, d, F, false);
  linear_backward(dxn2.data(), gw(o.wu), dup.data(), c.xn2.data(), P(o.wu), N, d, F, true);
  rmsnorm_backward(dh.data(), gw(o.norm2), dxn2.data(), c.h.data(), P(o.norm2), c.rstd2.data(), N, d, true);
  linear_backward(dattn.data(), gw(o.wo), dh.data(), c.attn.data(), P(o.wo), N, H * hd, d, false);
  attention_backward(dq.data(), dk.data(), dv.data(), dattn.data(), c.probs.data(), c.q.data(), c.k.data(),
                     c.v.data(), B, T, H, Hkv, hd);
  rope_backward(dq.data(), rope_cos_.data(), rope_sin_.data(), B, T, H, hd);
  rope_backward(dk.data(), rope_cos_.data(), rope_sin_.data(), B, T, Hkv, hd);
  linear_backward(dxn1.data(), gw(o.wq), dq.data(), c.xn1.data(), P(o.wq), N, d, H * hd, false);
  linear_backward(dxn1.data(), gw(o.wk), dk.data(), c.xn1.data(), P(o.wk), N, d, Hkv * hd, true);
  linear_backward(dxn1.data(), gw(o.wv), dv.data(), c.xn1.data(), P(o.wv), N, d, Hkv * hd, true);
  std::memcpy(dx, dh.data(), sizeof(float) * N * d);
  rmsnorm_backward(dx, gw(o.norm1), dxn1.data(), c.x.data(), P(o.norm1), c.rstd1.data(), N, d, true);
  if (split) {
    // W reads dgate, dup, dq, dk, dv where gate, up, q, k, v were; the
    // workspace takes the forward buffers for the next call.
    std::swap(c.gate, w.dgate);
    std::swap(c.up, w.dup);
    std::swap(c.q, w.dq);
    std::swap(c.k, w.dk);
    std::swap(c.v, w.dv);
    std::vector<float>().swap(c.probs);
  }
}

// W of one layer: block_backward's weight-gradient calls, in its order, with
// its operands (kept by B).
void Stage::block_weight(int layer, const LayerCache& c, int N) {
  const LayerOffsets& o = layout_.layers[layer - begin_];
  const int d = model_.d_model, hd = model_.head_dim(), H = model_.n_heads, Hkv = model_.n_kv_heads,
            F = model_.ffn_hidden;
  const std::vector<float>&dgate = c.gate, &dup = c.up, &dq = c.q, &dk = c.k, &dv = c.v;
  linear_backward_weight(G(o.wd), c.dy.data(), c.act.data(), N, F, d);
  linear_backward_weight(G(o.wg), dgate.data(), c.xn2.data(), N, d, F);
  linear_backward_weight(G(o.wu), dup.data(), c.xn2.data(), N, d, F);
  rmsnorm_backward_weight(G(o.norm2), c.dxn2.data(), c.h.data(), c.rstd2.data(), N, d);
  linear_backward_weight(G(o.wo), c.dh.data(), c.attn.data(), N, H * hd, d);
  linear_backward_weight(G(o.wq), dq.data(), c.xn1.data(), N, d, H * hd);
  linear_backward_weight(G(o.wk), dk.data(), c.xn1.data(), N, d, Hkv * hd);
  linear_backward_weight(G(o.wv), dv.data(), c.xn1.data(), N, d, Hkv * hd);
  rmsnorm_backward_weight(G(o.norm1), c.dxn1.data(), c.x.data(), c.rstd1.data(), N, d);
}

double Stage::forward(int64_t mb, const int32_t* tokens, const float* acts, size_t input_len, int B, int T,
                      const int32_t* targets, size_t targets_len, float* out, size_t out_len, bool train,
                      bool checked) {
  if (!checked) check_forward(mb, tokens, acts, input_len, B, T, targets, targets_len, train);
  const int d = model_.d_model, V = model_.vocab, N = B * T;
  const bool loss_mode = is_last() && targets;
  if (!loss_mode && out_len != output_len(B, T, is_last())) {
    throw std::invalid_argument(describe() + ", microbatch " + std::to_string(mb) + ": output buffer has " + std::to_string(out_len) + " floats, expected " + std::to_string(output_len(B, T, is_last())));
  }

  std::unique_ptr<Stash> st = take_stash();
  st->B = B;
  st->T = T;
  st->input_done = false;
  if (train) weighted_.erase(mb);
  std::vector<float>& x = ws_.x;
  x.resize((size_t)N * d);
  if (!is_first() && needs_tokens()) st->tokens.assign(tokens, tokens + N);
  if (is_first()) {
    embedding_forward(x.data(), tokens, P(layout_.emb), N, d);
    st->tokens.assign(tokens, tokens + N);
  } else if (const BottleneckOffsets* b = bottleneck(begin_)) {
    std::vector<float>& z = st->bn_z[begin_];
    z.assign(acts, acts + (size_t)N * b->width);
    bottleneck_up(*b, x.data(), z.data(), st->tokens.data(), N);
  } else {
    std::memcpy(x.data(), acts, sizeof(float) * x.size());
  }
  // Inference reuses one cache for every layer; training keeps one per layer.
  st->layers.resize(train ? layout_.layers.size() : 1);
  for (int l = begin_; l < end_; l++) {
    block_forward(l, x.data(), st->layers[train ? l - begin_ : 0], B, T);
    const BottleneckOffsets* b = l + 1 < model_.n_layers ? bottleneck(l + 1) : nullptr;
    if (!b) continue;
    std::vector<float>& h = st->bn_h[l + 1];
    h.assign(x.begin(), x.end());
    if (l + 1 == end_) {  // this stage's output is the bottleneck
      bottleneck_down(*b, out, h.data(), N);
    } else {
      std::vector<float>& z = st->bn_z[l + 1];
      z.resize((size_t)N * b->width);
      bottleneck_down(*b, z.data(), h.data(), N);
      bottleneck_up(*b, x.data(), z.data(), st->tokens.data(), N);
    }
  }
  double loss = 0.0;
  if (is_last()) {
    st->rstd_f.resize(N);
    st->xn_f.resize((size_t)N * d);
    rmsnorm_forward(st->xn_f.data(), st->rstd_f.data(), x.data(), P(layout_.norm_f), N, d, model_.norm_eps);
    if (loss_mode) {
      std::vector<float>& logits = ws_.logits;
      logits.resize((size_t)N * V);
      linear_forward(logits.data(), st->xn_f.data(), P(layout_.head), N, d, V);
      st->probs.resize((size_t)N * V);
      loss = cross_entropy_forward(st->probs.data(), logits.data(), targets, N, V) / N;
      st->targets.assign(targets, targets + N);
    } else {
      linear_forward(out, st->xn_f.data(), P(layout_.head), N, d, V);
    }
    st->final_in.assign(x.begin(), x.end());
  } else if (!bottleneck(end_)) {
    std::memcpy(out, x.data(), sizeof(float) * x.size());
  }
  if (train) stash_[mb] = std::move(st);
  else spare_.push_back(std::move(st));
  return loss;
}

void Stage::backward(int64_t mb, const float* grad_out, size_t grad_len, float* grad_in, size_t grad_in_len) {
  backward_impl(mb, grad_out, grad_len, grad_in, grad_in_len, false);
}

void Stage::backward_input(int64_t mb, const float* grad_out, size_t grad_len, float* grad_in, size_t grad_in_len) {
  backward_impl(mb, grad_out, grad_len, grad_in, grad_in_len, true);
}

static std::string stash_list(const std::map<int64_t, std::unique_ptr<Stash>>& stash) {
  std::string have;
  for (auto& kv : stash) have += (have.empty() ? "" : ", ") + std::to_string(kv.first);
  return have.empty() ? "none" : have;
}

void Stage::backward_impl(int64_t mb, const float* grad_out, size_t grad_len, float* grad_in, size_t grad_in_len,
                          bool split) {
  const std::string where = describe() + ", microbatch " + std::to_string(mb);
  const char* what = split ? "backwardInput" : "backward";
  auto it = stash_.find(mb);
  if (it == stash_.end()) {
    throw std::invalid_argument(where + ": " + what + " for a microbatch with no stashed forward (stashed: " + stash_list(stash_) + ")");
  }
  Stash& st = *it->second;
  if (st.input_done) {
    throw std::invalid_argument(where + ": " + what + " after backwardInput already ran for this microbatch (its backwardWeight is due)");
  }
  const int B = st.B, T = st.T, N = B * T, d = model_.d_model, V = model_.vocab;
  const int dout = out_width(), din = in_width();
  if (is_last()) {
    if (grad_out) throw std::invalid_argument(where + ": the last stage starts backward from its loss and takes no gradient");
  } else {
    if (!grad_out) throw std::invalid_argument(where + ": backward needs the gradient of this stage's output");
    if (grad_len != (size_t)N * dout) throw std::invalid_argument(where + ": expected a gradient of shape " + fmt_shape({B, T, dout}) + " (" + std::to_string((size_t)N * dout) + " floats), got " + std::to_string(grad_len));
  }
  if (!is_first() && grad_in_len != (size_t)N * din) throw std::invalid_argument(where + ": grad_in buffer has " + std::to_string(grad_in_len) + " floats, expected " + std::to_string((size_t)N * din));

  std::vector<float>& dx = ws_.x;  // block_backward's scratch is separate
  dx.resize((size_t)N * d);
  if (is_last()) {
    // B keeps dlogits for W: computed in place of the probabilities (the
    // same values cross_entropy_backward writes elsewhere).
    float* dlogits = split ? st.probs.data() : (ws_.dlogits.resize((size_t)N * V), ws_.dlogits.data());
    std::vector<float>& dxn = split ? st.dxn_f : ws_.dxn;
    dxn.resize((size_t)N * d);
    cross_entropy_backward(dlogits, st.probs.data(), st.targets.data(), N, V, 1.0f / N);
    linear_backward(dxn.data(), split ? nullptr : G(layout_.head), dlogits, st.xn_f.data(), P(layout_.head), N, d, V, false);
    rmsnorm_backward(dx.data(), split ? nullptr : G(layout_.norm_f), dxn.data(), st.final_in.data(), P(layout_.norm_f), st.rstd_f.data(), N, d, false);
  } else if (const BottleneckOffsets* b = bottleneck(end_)) {
    if (split) st.bn_dz[end_].assign(grad_out, grad_out + (size_t)N * b->width);
    bottleneck_down_grad(*b, dx.data(), grad_out, st.bn_h.at(end_).data(), N, !split);
  } else {
    std::memcpy(dx.data(), grad_out, sizeof(float) * dx.size());
  }
  for (int l = end_ - 1; l >= begin_; l--) {
    block_backward(l, dx.data(), st.layers[l - begin_], B, T, split);
    const BottleneckOffsets* b = l > begin_ ? bottleneck(l) : nullptr;
    if (!b) continue;
    std::vector<float>& dz = split ? st.bn_dz[l] : ws_.z;
    dz.resize((size_t)N * b->width);
    if (split) st.bn_dy[l].assign(dx.begin(), dx.end());
    bottleneck_up_grad(*b, dz.data(), dx.data(), st.bn_z.at(l).data(), st.tokens.data(), N, !split);
    bottleneck_down_grad(*b, dx.data(), dz.data(), st.bn_h.at(l).data(), N, !split);
  }
  if (is_first()) {
    if (split) st.demb.assign(dx.begin(), dx.end());
    else embedding_backward(G(layout_.emb), dx.data(), st.tokens.data(), N, d);
  } else if (const BottleneckOffsets* b = bottleneck(begin_)) {
    if (split) st.bn_dy[begin_].assign(dx.begin(), dx.end());
    bottleneck_up_grad(*b, grad_in, dx.data(), st.bn_z.at(begin_).data(), st.tokens.data(), N, !split);
  } else {
    std::memcpy(grad_in, dx.data(), sizeof(float) * dx.size());
  }
  if (split) {
    st.input_done = true;
    return;
  }
  spare_.push_back(std::move(it->second));
  stash_.erase(it);
}

// W: backward_impl's weight-gradient calls, in its order, on what B kept.
void Stage::backward_weight(int64_t mb) {
  const std::string where = describe() + ", microbatch " + std::to_string(mb);
  auto it = stash_.find(mb);
  if (it == stash_.end()) {
    if (weighted_.count(mb)) throw std::invalid_argument(where + ": backwardWeight already ran for this microbatch (it is called once per backwardInput)");
    throw std::invalid_argument(where + ": backwardWeight for a microbatch with no stashed forward (stashed: " + stash_list(stash_) + ")");
  }
  Stash& st = *it->second;
  if (!st.input_done) throw std::invalid_argument(where + ": backwardWeight before backwardInput (run backwardInput for this microbatch first)");
  const int N = st.B * st.T, d = model_.d_model, V = model_.vocab;
  if (is_last()) {
    linear_backward_weight(G(layout_.head), st.probs.data(), st.xn_f.data(), N, d, V);
    rmsnorm_backward_weight(G(layout_.norm_f), st.dxn_f.data(), st.final_in.data(), st.rstd_f.data(), N, d);
  } else if (const BottleneckOffsets* b = bottleneck(end_)) {
    linear_backward_weight(G(b->down), st.bn_dz.at(end_).data(), st.bn_h.at(end_).data(), N, d, b->width);
  }
  for (int l = end_ - 1; l >= begin_; l--) {
    block_weight(l, st.layers[l - begin_], N);
    const BottleneckOffsets* b = l > begin_ ? bottleneck(l) : nullptr;
    if (!b) continue;
    bottleneck_up_weight(*b, st.bn_dy.at(l).data(), st.bn_z.at(l).data(), st.tokens.data(), N);
    linear_backward_weight(G(b->down), st.bn_dz.at(l).data(), st.bn_h.at(l).data(), N, d, b->width);
  }
  if (is_first()) {
    embedding_backward(G(layout_.emb), st.demb.data(), st.tokens.data(), N, d);
  } else if (const BottleneckOffsets* b = bottleneck(begin_)) {
    bottleneck_up_weight(*b, st.bn_dy.at(begin_).data(), st.bn_z.at(begin_).data(), st.tokens.data(), N);
  }
  st.input_done = false;
  weighted_.insert(mb);
  spare_.push_back(std::move(it->second));
  stash_.erase(it);
}

size_t Stage::stashed_bytes() const {
  auto bytes = [](const auto& v) { return v.capacity() * sizeof(v[0]); };
  size_t total = 0;
  for (const auto& [mb, st] : stash_) {
    total += bytes(st->tokens) + bytes(st->targets) + bytes(st->final_in) + bytes(st->rstd_f) + bytes(st->xn_f) +
             bytes(st->probs) + bytes(st->dxn_f) + bytes(st->demb);
    for (const auto* m : {&st->bn_h, &st->bn_z, &st->bn_dy, &st->bn_dz}) {
      for (const auto& kv : *m) total += bytes(kv.second);
    }
    for (const LayerCache& c : st->layers) {
      for (const std::vector<float>* v : {&c.x, &c.rstd1, &c.xn1, &c.q, &c.k, &c.v, &c.probs, &c.attn, &c.h, &c.rstd2,
                                          &c.xn2, &c.gate, &c.up, &c.act, &c.dy, &c.dh, &c.dxn2, &c.dxn1}) {
        total += bytes(*v);
      }
    }
  }
  return total;
}

std::unique_ptr<Stash> Stage::take_stash() {
  if (spare_.empty()) return std::make_unique<Stash>();
  std::unique_ptr<Stash> st = std::move(spare_.back());
  spare_.pop_back();
  return st;
}

std::vector<int64_t> Stage::stashed() const {
  std::vector<int64_t> ids;
  for (auto& kv : stash_) ids.push_back(kv.first);
  return ids;
}

bool Stage::drop(int64_t mb) { return stash_.erase(mb) > 0; }

bool Stage::stash_shape(int64_t mb, int* B, int* T) const {
  auto it = stash_.find(mb);
  if (it == stash_.end()) return false;
  *B = it->second->B;
  *T = it->second->T;
  return true;
}

std::vector<double> Stage::grad_sum_squares() const {
  std::vector<double> out;
  for (const TensorInfo& t : layout_.tensors) out.push_back(sum_squares(grads->data() + t.offset, t.numel));
  return out;
}

double Stage::step(double grad_scale) {
  drop_undo();
  return adamw_step(grad_scale);
}

double Stage::step_with_undo(double grad_scale) {
  auto u = std::make_unique<UndoCopy>();
  u->params = *params;
  u->grads = *grads;
  u->exp_avg = *exp_avg;
  u->exp_avg_sq = *exp_avg_sq;
  u->optimizer_step = optimizer_step;
  const double lr = adamw_step(grad_scale);
  undo_ = std::move(u);
  return lr;
}

void Stage::undo_step() {
  if (!undo_) throw std::logic_error(describe() + ": undoStep with nothing to undo (no stepWithUndo since the last step, undoStep or dropUndo)");
  // Copied into the arenas, not swapped: views handed out keep seeing them.
  std::copy(undo_->params.begin(), undo_->params.end(), params->begin());
  std::copy(undo_->grads.begin(), undo_->grads.end(), grads->begin());
  std::copy(undo_->exp_avg.begin(), undo_->exp_avg.end(), exp_avg->begin());
  std::copy(undo_->exp_avg_sq.begin(), undo_->exp_avg_sq.end(), exp_avg_sq->begin());
  optimizer_step = undo_->optimizer_step;
  undo_.reset();
}

void Stage::drop_undo() { undo_.reset(); }

double Stage::adamw_step(double grad_scale) {
  const double lr = lr_at(optim_, optimizer_step);
  optimizer_step++;
  for (const TensorInfo& t : layout_.tensors) {
    adamw_update(params->data() + t.offset, grads->data() + t.offset, exp_avg->data() + t.offset,
                 exp_avg_sq->data() + t.offset, t.numel, (float)lr, optim_.beta1, optim_.beta2, optim_.eps,
                 t.decay ? optim_.weight_decay : 0.0f, (float)grad_scale, optimizer_step);
  }
  zero_grad();
  return lr;
}

void Stage::zero_grad() {
  std::fill(grads->begin(), grads->end(), 0.0f);
  weighted_.clear();  // bounds it; a second W after a step is named as having no stash
}

}  // namespace caravan
