// The CUDA backend's op families, mirroring native/src/ops.h name for name.
// Storage: activations fed to GEMMs are bf16; the residual stream, norms'
// statistics, gradients of weights and the optimizer are fp32. Shapes beside
// every declaration; N = B*T rows. All launches go to `stream`.
#pragma once
#include <cstddef>
#include <cstdint>
#include "../common.h"

namespace caravan::cuda {

// rmsnorm.cu — y[N,d] (bf16) = x[N,d] / sqrt(mean(x²)+eps) * w[d]; rstd[N]
void rmsnorm_forward(bf16* y, float* rstd, const float* x, const float* w, int N, int d, float eps, cudaStream_t s);
// dx[N,d] += rstd·(dy·w − xh·mean(dy·w·xh)), xh = x·rstd; dy[N,d] fp32.
// dw[d] += Σ_rows dy·xh, summed over fixed row chunks in a fixed order
// (partial: scratch of kRmsChunks·d floats).
constexpr int kRmsChunks = 64;
void rmsnorm_backward(float* dx, float* dw, float* partial, const float* dy, const float* x, const float* w,
                      const float* rstd, int N, int d, cudaStream_t s);
// rmsnorm_backward's weight half (dw null there skips it): dw[d] += Σ dy·x·rstd.
void rmsnorm_backward_weight(float* dw, float* partial, const float* dy, const float* x, const float* rstd, int N, int d,
                             cudaStream_t s);

// rope.cu — x[B,T,nh,hd] rotated in place (rotate_half); cos/sin [max_seq, hd/2]
void rope_forward(bf16* x, const float* cos_t, const float* sin_t, int B, int T, int nh, int hd, cudaStream_t s);
void rope_backward(bf16* dx, const float* cos_t, const float* sin_t, int B, int T, int nh, int hd, cudaStream_t s);

// attention.cu — causal softmax over score rows: scores[rows, T] fp32 (row r
// is query position i = r % T). Queries come in blocks of `block` rows, and a
// block's GEMMs cover keys up to the block's end only, so scores are read for
// j ≤ i and probs (bf16) written for j < end of i's block (zeros past i).
void causal_softmax_forward(bf16* probs, const float* scores, size_t rows, int T, int block, cudaStream_t s);
// in place: probs[rows,T] (bf16) becomes dS = P ⊙ (dP − Σ P·dP) · scale for j ≤ i; dP fp32
void causal_softmax_backward(bf16* probs_to_ds, const float* dp, size_t rows, int T, float scale, cudaStream_t s);

// flash_attention.cu — causal attention without materialised scores, for
// head dims 16, 32, 64 and 128 (others use the GEMM path of cuda_stage.cu).
// q, out [B,T,H,hd]; k, v [B,T,Hkv,hd] (bf16, GQA: head h reads kv head
// h / (H/Hkv)); lse [B,H,T] (fp32): each row's log-sum-exp of scale·q·kᵀ.
bool flash_attention_supported(int hd);
void flash_attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                             int Hkv, int hd, float scale, cudaStream_t s);
// dq [B,T,H,hd], dk, dv [B,T,Hkv,hd] (bf16, overwritten) from dout [B,T,H,hd];
// delta [B,H,T] is scratch.
void flash_attention_backward(bf16* dq, bf16* dk, bf16* dv, float* delta, const bf16* q, const bf16* k, const bf16* v,
                              const bf16* out, const bf16* dout, const float* lse, int B, int T, int H, int Hkv, int hd,
                              float scale, cudaStream_t s);

// swiglu.cu — act = silu(gate) · up over n elements (bf16)
void swiglu_forward(bf16* act, const bf16* gate, const bf16* up, size_t n, cudaStream_t s);
void swiglu_backward(bf16* dgate, bf16* dup, const bf16* dact, const bf16* gate, const bf16* up, size_t n, cudaStream_t s);

// embedding.cu — out[N,d] (fp32) = table[tokens[N]]
void embedding_forward(float* out, const int32_t* tokens, const float* table, int N, int d, cudaStream_t s);
// dtable[V,d] += dout rows, each token's rows added in position order:
// order[N] = positions sorted by token (stable), starts[U+1] segment bounds,
// ids[U] the token of each segment.
void embedding_backward(float* dtable, const float* dout, const int32_t* order, const int32_t* starts,
                        const int32_t* ids, int unique, int d, cudaStream_t s);

// cross_entropy.cu — logits[N,V] (bf16) are replaced by dlogits = (softmax − onehot) · scale;
// loss[N] (fp32) per row.
void cross_entropy_fused(bf16* logits_to_grad, float* loss, const int32_t* targets, int N, int V, float scale, cudaStream_t s);

// adamw.cu — p (fp32 master) and its bf16 copy updated from g·grad_scale.
void adamw_update(float* p, bf16* p_bf16, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, float grad_scale, int t, cudaStream_t s);
// partial[kSumSqBlocks]: Σ g² per block, in double, in a fixed order
constexpr int kSumSqBlocks = 1024;
void sum_squares_partial(double* partial, const float* g, size_t n, cudaStream_t s);

// attention.cu — pointer arrays for a batched GEMM over a 2-D grid of
// matrices: entry i = (outer, inner) = (i / inner_count, i % inner_count)
// points at base + outer·outer_stride + inner·inner_stride (bytes), for A, B, C.
struct BatchGrid {
  const char* base[3];
  long long outer_stride[3], inner_stride[3];
};
void fill_batch_pointers(const void** out, BatchGrid grid, int outer_count, int inner_count, cudaStream_t s);

// convert.cu
void f32_to_bf16(bf16* out, const float* in, size_t n, cudaStream_t s);
void bf16_to_f32(float* out, const bf16* in, size_t n, cudaStream_t s);
void add_f32(float* acc, const float* x, size_t n, cudaStream_t s);  // acc += x

}  // namespace caravan::cuda
