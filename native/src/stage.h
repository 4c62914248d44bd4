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

  const std::vector<TensorInfo>& tensors() const { return layout_.tensors; }
  Arena params, grads, exp_avg, exp_avg_sq;
  int optimizer_step = 0;  // steps taken

 private:
  void block_forward(int layer, float* x, LayerCache& c, int B, int T);
  void block_backward(int layer, float* dx, const LayerCache& c, int B, int T);
  // Bottleneck halves; mxint8 quantization follows the down-projection
  // forward and the up-projection backward when the model asks for it.
  void bottleneck_down(const BottleneckOffsets& b, float* z, const float* h, int N);
  void bottleneck_down_grad(const BottleneckOffsets& b, float* dh, const float* dz, const float* h, int N);
  void bottleneck_up(const BottleneckOffsets& b, float* y, const float* z, const int32_t* tokens, int N);
  void bottleneck_up_grad(const BottleneckOffsets& b, float* dz, const float* dy, const float* z, const int32_t* tokens, int N);
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
  // Scratch of one forward or backward call, reused across calls.
  struct Workspace {
    std::vector<float> x, logits, dh, dact, dgate, dup, dxn, dattn, dq, dk, dv, dlogits, z;
  } ws_;
};

}  // namespace caravan
