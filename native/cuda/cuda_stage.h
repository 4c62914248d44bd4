// A pipeline stage on an NVIDIA GPU: the CPU Stage's API and tensors
// (native/src/stage.h), with bf16 copies of the weights for the GEMMs
// (cuBLAS, fp32 accumulation), fp32 master weights, gradients and AdamW
// moments, and a fp32 residual stream. Inputs and outputs are device
// pointers, except token ids and targets, which the data loader holds on the
// host anyway.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>
#include "../src/config.h"
#include "../src/layout.h"
#include "common.h"
#include "device.h"

namespace caravan::cuda {

struct CudaStash;
struct CudaWorkspace;

class CudaStage {
 public:
  CudaStage(const ModelConfig& model, const OptimConfig& optim, int begin, int end, uint64_t seed, int gpu);
  ~CudaStage();
  CudaStage(const CudaStage&) = delete;
  CudaStage& operator=(const CudaStage&) = delete;

  bool is_first() const { return begin_ == 0; }
  bool is_last() const { return end_ == model_.n_layers; }
  std::string describe() const;
  const DeviceInfo& device() const { return device_; }
  const std::vector<TensorInfo>& tensors() const { return layout_.tensors; }
  size_t param_count() const { return layout_.total; }
  // Attention's two paths: "gemm" materialises each layer's scores and
  // keeps its probabilities [B,H,T,T] for backward (cuBLAS; the faster one on
  // an H100 at T ≤ 2048); "flash" (kernels/flash_attention.cu) keeps one row
  // statistic per query instead. `automatic` takes flash where a layer's
  // probabilities would pass 1/64 of the GPU's memory, and where the head dim
  // has a flash kernel; the choice depends on B, T, the model and the GPU,
  // never on the split, so every split computes the same bits.
  // CARAVAN_ATTENTION=auto|flash|gemm sets the request; choose_attention()
  // overrides it before the first forward.
  enum class AttentionPath { automatic, flash, gemm };
  void choose_attention(AttentionPath path);
  const char* attention_kind() const;  // "flash", "gemm", or "unchosen" before the first forward

  // As Stage::forward: host tokens[B·T] on stage 0, device acts[B·T·d]
  // elsewhere; the last stage returns the mean loss given host targets, or
  // writes fp32 logits[B·T·V] to d_out; others write acts[B·T·d] to d_out.
  double forward(int64_t mb, const int32_t* tokens, const float* d_acts, int B, int T, const int32_t* targets,
                 float* d_out, bool train);
  // d_grad_out[B·T·d] (none on the last stage) → d_grad_in[B·T·d] (none on stage 0).
  void backward(int64_t mb, const float* d_grad_out, float* d_grad_in);
  // The split backward, as Stage::backward_input / backward_weight
  // (native/src/stage.h): B writes d_grad_in and leaves the gradients alone;
  // W adds the weight gradients with the fused path's GEMMs and kernels, in
  // its order, and frees the stash. W's in microbatch order give the fused
  // backward's bits. B keeps, in a second allocation of the stash made on its
  // first B (and kept for reuse): per layer dy and dh [N,d] bf16 (the GEMM
  // operands) and the norms' dxn2, dxn1 [N,d] fp32; dgate, dup, dq, dk, dv are
  // copied over gate, up, q, k, v; stage 0 keeps the embedding's output
  // gradient [N,d] fp32, the last stage its final norm's dxn [N,d] fp32
  // (dlogits already sit in the stash). The forward stash is one allocation,
  // so B frees nothing of it (the probabilities stay until W).
  void backward_input(int64_t mb, const float* d_grad_out, float* d_grad_in);
  void backward_weight(int64_t mb);
  // Device bytes of the stashed microbatches (both allocations).
  size_t stashed_bytes() const;
  std::vector<double> grad_sum_squares();
  double step(double grad_scale);
  void zero_grad();
  // As Stage: step after saving params, grads and both moments on the device
  // (4 × params floats until undo_step, drop_undo, step or an upload).
  double step_with_undo(double grad_scale);
  void undo_step();
  void drop_undo();
  void synchronize();

  // Microbatches with a stashed forward, and dropping one (recovery).
  std::vector<int64_t> stashed() const;
  bool drop(int64_t mb);
  bool stash_shape(int64_t mb, int* B, int* T) const;

  // Host copies of a whole fp32 arena in model order (the master weights,
  // the gradients, or an AdamW moment), and writing one back; writing the
  // weights refreshes their bf16 copies.
  enum class ArenaKind { params, grads, exp_avg, exp_avg_sq };
  void download(ArenaKind kind, float* out);
  void upload(ArenaKind kind, const float* in);
  void download_params(std::vector<float>& out);
  void download_grads(std::vector<float>& out);
  void upload_params(const std::vector<float>& in);
  // Host ↔ device copies on this stage's stream, finished when they return.
  void copy_to_device(void* device, const void* host, size_t bytes);
  void copy_to_host(void* host, const void* device, size_t bytes);

  int optimizer_step = 0;

  // Profiling for cuda-bench: with it on, attention's forward and backward
  // are bracketed by events; attention_ms() sums them (it synchronizes).
  void set_profiling(bool on) { profiling_ = on; }
  double attention_ms();

 private:
  template <typename F>
  void profiled(F&& f);
  void block_forward(int layer, float* x, struct CudaLayerStash& c, int B, int T);
  void block_backward(int layer, float* dx, struct CudaLayerStash& c, int B, int T, bool split);
  void block_weight(int layer, const struct CudaLayerStash& c, int N);
  void backward_impl(int64_t mb, const float* d_grad_out, float* d_grad_in, bool split);
  void split_memory(CudaStash& st);
  double adamw_step(double grad_scale);
  void attention_forward(struct CudaLayerStash& c, int B, int T);
  void attention_backward(struct CudaLayerStash& c, const bf16* dattn, bf16* dq, bf16* dk, bf16* dv, int B, int T);
  // Row-major C[M,N] (+)= op(A)[M,K] · op(B)[K,N]; C is bf16 or fp32.
  void gemm(bool ta, bool tb, int M, int N, int K, const bf16* A, int lda, const bf16* B, int ldb, void* C,
            bool c_fp32, int ldc, float beta, float alpha = 1.0f);
  // The same GEMM for every (outer, inner) of a grid of matrices, in one
  // batched cuBLAS call; strides in elements of each operand.
  void gemm_grid(bool ta, bool tb, int M, int N, int K, const bf16* A, int lda, long long a_outer, long long a_inner,
                 const bf16* B, int ldb, long long b_outer, long long b_inner, void* C, bool c_fp32, int ldc,
                 long long c_outer, long long c_inner, float beta, float alpha, int outer, int inner);
  CudaWorkspace& workspace(int B, int T);
  std::unique_ptr<CudaStash> take_stash(int B, int T, bool train);
  float* P(size_t off) { return d_params_ + off; }
  bf16* W(size_t off) { return d_params_bf16_ + off; }
  float* G(size_t off) { return d_grads_ + off; }

  ModelConfig model_;
  OptimConfig optim_;
  int begin_, end_;
  DeviceInfo device_;
  StageLayout layout_;
  cudaStream_t stream_ = nullptr;
  void* cublas_ = nullptr;
  float *d_params_ = nullptr, *d_grads_ = nullptr, *d_m_ = nullptr, *d_v_ = nullptr;
  bf16* d_params_bf16_ = nullptr;
  float *d_rope_cos_ = nullptr, *d_rope_sin_ = nullptr;
  double* d_sumsq_ = nullptr;
  std::unique_ptr<CudaWorkspace> ws_;
  std::map<int64_t, std::unique_ptr<CudaStash>> stash_;
  std::vector<std::unique_ptr<CudaStash>> spare_;
  std::set<int64_t> weighted_;  // microbatches whose W has run since their forward
  float* d_undo_ = nullptr;     // params, grads, exp_avg, exp_avg_sq [4·n] while an undo is held
  int undo_optimizer_step_ = 0;
  AttentionPath attention_ = AttentionPath::automatic;  // resolved to flash or gemm by the first forward
  bool flash_ = false;
  void resolve_attention(int B, int T);
  bool profiling_ = false;
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> events_;
};

}  // namespace caravan::cuda
