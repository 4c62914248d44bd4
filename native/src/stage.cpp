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
};

struct Stash {
  int B = 0, T = 0;
  std::vector<int32_t> tokens, targets;   // [N]
  std::vector<LayerCache> layers;
  std::vector<float> final_in, rstd_f, xn_f, probs;  // [N,d], [N], [N,d], [N,V]
  // By bottleneck position: the residual stream going into the down-projection
  // [N,d], and the (quantized) bottleneck going into the up-projection [N,k].
  std::map<int, std::vector<float>> bn_h, bn_z;
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

void Stage::bottleneck_down_grad(const BottleneckOffsets& b, float* dh, const float* dz, const float* h, int N) {
  // The quantizer's gradient is taken as the identity (straight-through).
  bottleneck_down_backward(dh, G(b.down), dz, h, P(b.down), N, model_.d_model, b.width);
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

void Stage::bottleneck_up_grad(const BottleneckOffsets& b, float* dz, const float* dy, const float* z, const int32_t* tokens, int N) {
  if (b.embed != BottleneckOffsets::kNone) embedding_backward(G(b.embed), dy, tokens, N, model_.d_model);
  bottleneck_up_backward(dz, G(b.up), dy, z, P(b.up), N, model_.d_model, b.width);
  if (model_.bottleneck_mxint8) mxint8_round_trip(dz, N, b.width);
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

void Stage::block_backward(int layer, float* dx, const LayerCache& c, int B, int T) {
  const LayerOffsets& o = layout_.layers[layer - begin_];
  const int N = B * T, d = model_.d_model, hd = model_.head_dim(), H = model_.n_heads,
            Hkv = model_.n_kv_heads, F = model_.ffn_hidden;
  Workspace& w = ws_;
  w.dh.assign(dx, dx + (size_t)N * d);  // residual path
  w.dact.resize((size_t)N * F);
  w.dgate.resize((size_t)N * F);
  w.dup.resize((size_t)N * F);
  w.dxn.resize((size_t)N * d);
  w.dattn.resize((size_t)N * H * hd);
  w.dq.resize((size_t)N * H * hd);
  w.dk.resize((size_t)N * Hkv * hd);
  w.dv.resize((size_t)N * Hkv * hd);
  std::vector<float>&dh = w.dh, &dact = w.dact, &dgate = w.dgate, &dup = w.dup, &dxn = w.dxn, &dattn = w.dattn,
                    &dq = w.dq, &dk = w.dk, &dv = w.dv;
  linear_backward(dact.data(), G(o.wd), dx, c.act.data(), P(o.wd), N, F, d, false);
  swiglu_backward(dgate.data(), dup.data(), dact.data(), c.gate.data(), c.up.data(), (size_t)N * F);
  linear_backward(dxn.data(), G(o.wg), dgate.data(), c.xn2.data(), P(o.wg), N, d, F, false);
  linear_backward(dxn.data(), G(o.wu), dup.data(), c.xn2.data(), P(o.wu), N, d, F, true);
  rmsnorm_backward(dh.data(), G(o.norm2), dxn.data(), c.h.data(), P(o.norm2), c.rstd2.data(), N, d, true);
  linear_backward(dattn.data(), G(o.wo), dh.data(), c.attn.data(), P(o.wo), N, H * hd, d, false);
  attention_backward(dq.data(), dk.data(), dv.data(), dattn.data(), c.probs.data(), c.q.data(), c.k.data(),
                     c.v.data(), B, T, H, Hkv, hd);
  rope_backward(dq.data(), rope_cos_.data(), rope_sin_.data(), B, T, H, hd);
  rope_backward(dk.data(), rope_cos_.data(), rope_sin_.data(), B, T, Hkv, hd);
  linear_backward(dxn.data(), G(o.wq), dq.data(), c.xn1.data(), P(o.wq), N, d, H * hd, false);
  linear_backward(dxn.data(), G(o.wk), dk.data(), c.xn1.data(), P(o.wk), N, d, Hkv * hd, true);
  linear_backward(dxn.data(), G(o.wv), dv.data(), c.xn1.data(), P(o.wv), N, d, Hkv * hd, true);
  std::memcpy(dx, dh.data(), sizeof(float) * N * d);
  rmsnorm_backward(dx, G(o.norm1), dxn.data(), c.x.data(), P(o.norm1), c.rstd1.data(), N, d, true);
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
  const std::string where = describe() + ", microbatch " + std::to_string(mb);
  auto it = stash_.find(mb);
  if (it == stash_.end()) {
    std::string have;
    for (auto& kv : stash_) have += (have.empty() ? "" : ", ") + std::to_string(kv.first);
    throw std::invalid_argument(where + ": backward for a microbatch with no stashed forward (stashed: " + (have.empty() ? "none" : have) + ")");
  }
  Stash& st = *it->second;
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
    std::vector<float>& dlogits = ws_.dlogits;
    std::vector<float>& dxn = ws_.dxn;
    dlogits.resize((size_t)N * V);
    dxn.resize((size_t)N * d);
    cross_entropy_backward(dlogits.data(), st.probs.data(), st.targets.data(), N, V, 1.0f / N);
    linear_backward(dxn.data(), G(layout_.head), dlogits.data(), st.xn_f.data(), P(layout_.head), N, d, V, false);
    rmsnorm_backward(dx.data(), G(layout_.norm_f), dxn.data(), st.final_in.data(), P(layout_.norm_f), st.rstd_f.data(), N, d, false);
  } else if (const BottleneckOffsets* b = bottleneck(end_)) {
    bottleneck_down_grad(*b, dx.data(), grad_out, st.bn_h.at(end_).data(), N);
  } else {
    std::memcpy(dx.data(), grad_out, sizeof(float) * dx.size());
  }
  for (int l = end_ - 1; l >= begin_; l--) {
    block_backward(l, dx.data(), st.layers[l - begin_], B, T);
    const BottleneckOffsets* b = l > begin_ ? bottleneck(l) : nullptr;
    if (!b) continue;
    std::vector<float>& dz = ws_.z;
    dz.resize((size_t)N * b->width);
    bottleneck_up_grad(*b, dz.data(), dx.data(), st.bn_z.at(l).data(), st.tokens.data(), N);
    bottleneck_down_grad(*b, dx.data(), dz.data(), st.bn_h.at(l).data(), N);
  }
  if (is_first()) {
    embedding_backward(G(layout_.emb), dx.data(), st.tokens.data(), N, d);
  } else if (const BottleneckOffsets* b = bottleneck(begin_)) {
    bottleneck_up_grad(*b, grad_in, dx.data(), st.bn_z.at(begin_).data(), st.tokens.data(), N);
  } else {
    std::memcpy(grad_in, dx.data(), sizeof(float) * dx.size());
  }
  spare_.push_back(std::move(it->second));
  stash_.erase(it);
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

void Stage::zero_grad() { std::fill(grads->begin(), grads->end(), 0.0f); }

}  // namespace caravan
