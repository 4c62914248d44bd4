// A pipeline stage: a contiguous slice of layers [begin, end) of the model,
// with its parameters, gradients, AdamW moments and per-microbatch stashes.
// Stage 0 also owns the embedding; the last stage the final norm, head and loss.
//
// Determinism: every op sums in a fixed order, gradients accumulate in the
// order backward() is called, and initialisation depends only on (seed,
// tensor name), so the same layers give the same bits however the model is
// split into stages.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>
#include "config.h"
#include "layout.h"

namespace caravan {

// One contiguous fp32 buffer; shared so that views handed to JavaScript keep it alive.
using Arena = std::shared_ptr<std::vector<float>>;

struct LayerCache;
struct Stash;

class Stage {
 public:
  Stage(const ModelConfig& model, const OptimConfig& optim, int begin, int end, uint64_t seed);
  ~Stage();

  bool is_first() const { return begin_ == 0; }
  bool is_last() const { return end_ == model_.n_layers; }
  int begin() const { return begin_; }
  int end() const { return end_; }
  const ModelConfig& model() const { return model_; }
  const OptimConfig& optim() const { return optim_; }
  std::string describe() const;  // "stage [a, b) of L layers"
  // Channels of the activations this stage takes and sends: k where a
  // bottleneck sits at that boundary, else d.
  int in_width() const;
  int out_width() const;
  // Stage 0, and a stage that re-embeds tokens at a bottleneck it receives
  // (ModelConfig::bottleneck_embed), take the microbatch's token ids.
  bool needs_tokens() const;

  // Input: stage 0 takes tokens[B,T] (int32); other stages acts[B,T,in_width],
  // and when needs_tokens() also tokens[B,T] (B·T values: the caller checks
  // the length).
  // Output: a non-last stage writes out[B,T,out_width]. The last stage with targets
  // returns the mean loss; without targets it writes logits[B,T,V] to out.
  // train=true keeps what backward needs under the microbatch id.
  // checked=true: the caller has just run check_forward on these arguments.
  double forward(int64_t mb, const int32_t* tokens, const float* acts, size_t input_len, int B, int T,
                 const int32_t* targets, size_t targets_len, float* out, size_t out_len, bool train,
                 bool checked = false);
  // grad_out[B,T,out_width] (none for the last stage, which starts from its
  // loss); writes grad_in[B,T,in_width] unless this is stage 0. Frees the stash.
  void backward(int64_t mb, const float* grad_out, size_t grad_len, float* grad_in, size_t grad_in_len);

  // The split backward (zero-bubble pipelines): backward() cut into B, the
  // input gradient (on the pipeline's critical path), and W, the weight
  // gradients (which can wait).
  //
  // backward_input (B): backward()'s arguments, result and errors, but it
  // leaves the gradient arena alone. It keeps in the microbatch's stash what
  // W needs: per layer the output gradients of the linears and norms (dy of
  // the block [N,d], dh [N,d], the two norms' dxn [N,d] each, and dgate, dup
  // [N,F], dq [N,H·hd], dk, dv [N,Hkv·hd], which take the places of gate, up,
  // q, k, v), beside the forward activations the weight gradients read (x,
  // xn1, attn, h, xn2, act, rstd1, rstd2); it frees the attention
  // probabilities [B,H,T,T]. The last stage keeps dlogits [N,V] (in place of
  // the probabilities) and the final norm's dxn [N,d]; stage 0 the embedding's
  // output gradient [N,d]; bottlenecks their dy [N,d] and dz [N,k].
  // Per layer that is 4·N·d floats more and N·H·T fewer than the forward stash.
  void backward_input(int64_t mb, const float* grad_out, size_t grad_len, float* grad_in, size_t grad_in_len);
  // backward_weight (W): adds the microbatch's weight gradients into the
  // gradient arena, with the very calls and operands backward() makes and in
  // its order, and releases the stash. Throws if B has not run for mb, or W
  // already has. Bit-identity with backward(): B's may run in any order, but
  // W's must run in microbatch order (the order the fused backward() calls
  // would have run), since each weight's gradient is a sum in call order.
  void backward_weight(int64_t mb);
  // Bytes of the buffers the stashed microbatches hold (forward stashes and
  // what B keeps for W); stashes kept for reuse after backward are not counted.
  size_t stashed_bytes() const;
  // The checks forward() makes before touching anything; throws std::invalid_argument.
  void check_forward(int64_t mb, const int32_t* tokens, const float* acts, size_t input_len, int B, int T,
                     const int32_t* targets, size_t targets_len, bool train) const;
  size_t output_len(int B, int T, bool logits) const;
  std::vector<int64_t> stashed() const;
  bool drop(int64_t mb);
  // Shape of a stashed microbatch, for callers sizing grad buffers.
  bool stash_shape(int64_t mb, int* B, int* T) const;

  // Per-tensor Σg² in tensor order; the caller combines them in model order
  // across stages into one clip factor.
  std::vector<double> grad_sum_squares() const;
  // AdamW step with g · grad_scale; advances the schedule; zeroes gradients.
  // Returns the learning rate used.
  double step(double grad_scale);
  void zero_grad();
  // step(), after saving params, both moments, the gradients and the
  // optimizer step (4 × params floats, held until undo_step or drop_undo).
  double step_with_undo(double grad_scale);
  // Restores what step_with_undo saved: the weights, moments and step from
  // before it, and its accumulated gradients (anything added since is
  // discarded). Throws when nothing is saved. step() drops the saved copy.
  void undo_step();
  void drop_undo();
  bool has_undo() const { return undo_ != nullptr; }

  const std::vector<TensorInfo>& tensors() const { return layout_.tensors; }
  Arena params, grads, exp_avg, exp_avg_sq;
  int optimizer_step = 0;  // steps taken

 private:
  void block_forward(int layer, float* x, LayerCache& c, int B, int T);
  // split: B's half (no weight gradients; keeps W's operands in c).
  void block_backward(int layer, float* dx, LayerCache& c, int B, int T, bool split);
  void block_weight(int layer, const LayerCache& c, int N);
  void backward_impl(int64_t mb, const float* grad_out, size_t grad_len, float* grad_in, size_t grad_in_len, bool split);
  double adamw_step(double grad_scale);
  // Bottleneck halves; mxint8 quantization follows the down-projection
  // forward and the up-projection backward when the model asks for it.
  void bottleneck_down(const BottleneckOffsets& b, float* z, const float* h, int N);
  // weights=false: B's half, leaving the gradient arena alone.
  void bottleneck_down_grad(const BottleneckOffsets& b, float* dh, const float* dz, const float* h, int N, bool weights = true);
  void bottleneck_up(const BottleneckOffsets& b, float* y, const float* z, const int32_t* tokens, int N);
  void bottleneck_up_grad(const BottleneckOffsets& b, float* dz, const float* dy, const float* z, const int32_t* tokens, int N, bool weights = true);
  void bottleneck_up_weight(const BottleneckOffsets& b, const float* dy, const float* z, const int32_t* tokens, int N);
  const BottleneckOffsets* bottleneck(int at) const;
  float* P(size_t off) { return params->data() + off; }
  float* G(size_t off) { return grads->data() + off; }

  ModelConfig model_;
  OptimConfig optim_;
  int begin_, end_;
  StageLayout layout_;
  std::vector<float> rope_cos_, rope_sin_;  // [max_seq, hd/2]
  std::map<int64_t, std::unique_ptr<Stash>> stash_;
  // Stashes freed by backward, kept with their buffers: the next forward of
  // the same shape reuses them instead of faulting in fresh pages.
  std::vector<std::unique_ptr<Stash>> spare_;
  std::unique_ptr<Stash> take_stash();
  // Microbatches whose W has run since their forward (to name a second W).
  std::set<int64_t> weighted_;
  struct UndoCopy {
    std::vector<float> params, grads, exp_avg, exp_avg_sq;
    int optimizer_step = 0;
  };
  std::unique_ptr<UndoCopy> undo_;
  // Scratch of one forward or backward call, reused across calls.
  struct Workspace {
    std::vector<float> x, logits, dh, dact, dgate, dup, dxn, dattn, dq, dk, dv, dlogits, z;
  } ws_;
};

}  // namespace caravan
