// The op families of the CPU reference backend: plain functions over flat fp32
// buffers, each forward beside its backward. Shapes are written beside every
// declaration; N = B*T rows. Backward functions that write a weight gradient
// always accumulate into it (+=), so microbatches add up in call order.
#pragma once
#include <cstddef>
#include <cstdint>

namespace caravan {

// Elementwise loops smaller than this run on one thread: waking the OpenMP
// team costs more than the loop.
constexpr size_t kParallelMin = 1 << 15;

// linear.cpp — y = x · Wᵀ with W stored [out, in] (as torch.nn.Linear).
// y[N,out] (= or +=) x[N,in] · w[out,in]ᵀ; += folds a residual add into the GEMM
void linear_forward(float* y, const float* x, const float* w, int N, int in, int out,
                    bool accumulate = false);
// dx[N,in] (= or +=) dy[N,out] · w[out,in];  dw[out,in] += dy[N,out]ᵀ · x[N,in]
// dx or dw may be null: that half is skipped (the split backward's B and W).
void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                     int N, int in, int out, bool accumulate_dx);
// dw[out,in] += dy[N,out]ᵀ · x[N,in]: the very sgemm linear_backward makes for dw.
void linear_backward_weight(float* dw, const float* dy, const float* x, int N, int in, int out);

// rmsnorm.cpp — y = x / sqrt(mean(x²) + eps) * w over the last axis.
// y[N,d], rstd[N] = 1/sqrt(mean(x²)+eps); x[N,d]; w[d]
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int N, int d, float eps);
// dx[N,d] (= or +=); dw[d] += (skipped when dw is null)
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                      const float* rstd, int N, int d, bool accumulate_dx);
// dw[d] += Σ_rows dy·x·rstd, rows in order: the loop rmsnorm_backward runs for dw.
void rmsnorm_backward_weight(float* dw, const float* dy, const float* x, const float* rstd, int N, int d);

// rope.cpp — rotary positions, rotate_half convention.
// cos/sin [max_seq, hd/2]
void rope_tables(float* cos_t, float* sin_t, int max_seq, int hd, float theta);
// x[B,T,nh,hd] rotated in place; position = t
void rope_forward(float* x, const float* cos_t, const float* sin_t, int B, int T, int nh, int hd);
// dx[B,T,nh,hd] rotated back in place (the transpose of the rotation)
void rope_backward(float* dx, const float* cos_t, const float* sin_t, int B, int T, int nh, int hd);

// attention.cpp — causal softmax attention, query head h reads kv head h / (H/Hkv).
// out[B,T,H,hd]; probs[B,H,T,T] (kept for backward); q[B,T,H,hd]; k,v[B,T,Hkv,hd]
void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                       int B, int T, int H, int Hkv, int hd);
// dq[B,T,H,hd] =; dk,dv[B,T,Hkv,hd] =
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs,
                        const float* q, const float* k, const float* v,
                        int B, int T, int H, int Hkv, int hd);

// swiglu.cpp — act = silu(gate) * up, elementwise over n = N*F.
void swiglu_forward(float* act, const float* gate, const float* up, size_t n);
void swiglu_backward(float* dgate, float* dup, const float* dact, const float* gate,
                     const float* up, size_t n);

// embedding.cpp — out[N,d] (= or +=) table[tokens[N], :]; table[V,d]
void embedding_forward(float* out, const int32_t* tokens, const float* table, int N, int d,
                       bool accumulate = false);
// dtable[V,d] += scatter of dout[N,d], rows in order (deterministic)
void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int N, int d);

// cross_entropy.cpp — probs[N,V] = softmax(logits[N,V]); returns the summed loss (double)
double cross_entropy_forward(float* probs, const float* logits, const int32_t* targets, int N, int V);
// dlogits[N,V] = (probs - onehot(targets)) * scale
void cross_entropy_backward(float* dlogits, const float* probs, const int32_t* targets,
                            int N, int V, float scale);

// adamw.cpp — decoupled weight decay; g is multiplied by grad_scale first
// (1/microbatches × the clip factor). t is the 1-based step count.
void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, float grad_scale, int t);
// Σ g² in double, summed in fixed-size chunks in a fixed order so the result
// does not depend on the thread count.
double sum_squares(const float* g, size_t n);

// bottleneck.cpp — residual bottleneck, wd[k,d] (down), wu[d,k] (up), k <= d.
// z[N,k] = h[N,d]·wdᵀ + h[:, :k]
void bottleneck_down_forward(float* z, const float* h, const float* wd, int N, int d, int k);
// dh[N,d] =; dwd[k,d] += (skipped when dwd is null: linear_backward_weight(dwd, dz, h, N, d, k) is that half)
void bottleneck_down_backward(float* dh, float* dwd, const float* dz, const float* h, const float* wd,
                              int N, int d, int k);
// y[N,d] = z[N,k]·wuᵀ, y[:, :k] += z
void bottleneck_up_forward(float* y, const float* z, const float* wu, int N, int d, int k);
// dz[N,k] =; dwu[d,k] += (skipped when dwu is null: linear_backward_weight(dwu, dy, z, N, k, d) is that half)
void bottleneck_up_backward(float* dz, float* dwu, const float* dy, const float* z, const float* wu,
                            int N, int d, int k);

// mxint8.cpp — each row (token) of x[rows, width] is cut into blocks of up to
// kMxBlock values that share a scale 2^e, e in [-106, 122]; blocks whose
// largest magnitude is below kMxZeroBelow become zeros (exponent
// kMxZeroExponent). A block holding NaN or ±Inf becomes NaN.
constexpr int kMxBlock = 32;
constexpr int kMxZeroExponent = -128;
constexpr float kMxZeroBelow = 0x1p-100f;
int mxint8_exponent(float amax);
// x[rows, width] = dequantize(quantize(x)) in place
void mxint8_round_trip(float* x, size_t rows, int width);

// Deterministic N(0, std²) fill from (seed, stream): same stream, same numbers.
void fill_normal(float* x, size_t n, uint64_t seed, uint64_t stream, float std);
uint64_t stream_id(const char* name);

}  // namespace caravan
