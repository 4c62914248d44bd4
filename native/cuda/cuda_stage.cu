// The CUDA stage: the CPU Stage's wiring (native/src/stage.cpp) op for op,
// with GEMMs through cuBLAS (bf16 operands, fp32 accumulation) and the other
// op families in kernels/. Every reduction has a fixed order, so a run is
// bitwise repeatable on the same GPU model.
#include "cuda_stage.h"
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include "../src/ops.h"
#include "../src/schedule.h"
#include "cublas_api.h"
#include "kernels/kernels.h"

namespace caravan::cuda {

namespace {
// Hands out aligned pieces of one device allocation. Run once with base ==
// nullptr to size it, then again over the allocation.
struct Carver {
  char* base = nullptr;
  size_t used = 0;
  template <typename T>
  T* take(size_t count) {
    used = (used + 255) & ~size_t(255);
    T* p = base ? reinterpret_cast<T*>(base + used) : nullptr;
    used += count * sizeof(T);
    return p;
  }
};

struct DeviceAllocation {
  void* ptr = nullptr;
  size_t bytes = 0;
  void allocate(size_t n, const std::string& what) {
    release();
    cudaError_t e = cudaMalloc(&ptr, n);
    if (e != cudaSuccess) {
      ptr = nullptr;
      throw std::runtime_error("out of GPU memory allocating " + std::to_string(n >> 20) + " MiB for " + what + ": " +
                               cudaGetErrorString(e));
    }
    bytes = n;
  }
  void release() {
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    bytes = 0;
  }
  ~DeviceAllocation() { release(); }
};
}  // namespace

struct CudaLayerStash {
  // x, h [N,d] fp32; rstd1, rstd2 [N]; xn1, xn2 [N,d] bf16; q, attn [N,H·hd];
  // k, v [N,Hkv·hd]; gate, up, act [N,F]; and attention's own: lse [B,H,T]
  // with flash attention, else probs [B,H,T,T] (becomes dS in backward).
  float *x, *h, *rstd1, *rstd2, *lse;
  bf16 *xn1, *xn2, *q, *k, *v, *attn, *probs, *gate, *up, *act;
  // The split backward's B (W's operands, in CudaStash::split): dy_bf, dh_bf
  // [N,d] bf16, dxn2, dxn1 [N,d] fp32; gate, up, q, k, v then hold dgate,
  // dup, dq, dk, dv.
  bf16 *dy_bf = nullptr, *dh_bf = nullptr;
  float *dxn2 = nullptr, *dxn1 = nullptr;
};

struct CudaStash {
  int B = 0, T = 0;
  bool train = false;
  std::vector<CudaLayerStash> layers;
  int32_t *tokens = nullptr, *targets = nullptr, *order = nullptr, *starts = nullptr, *ids = nullptr;
  int unique = 0;
  float *final_in = nullptr, *rstd_f = nullptr, *loss_rows = nullptr;  // [N,d], [N], [N]
  bf16 *xn_f = nullptr, *logits = nullptr;                              // [N,d], [N,V] (dlogits after the loss)
  DeviceAllocation memory;
  // The split backward: B has run; its kept gradients (dxn_f, demb [N,d] fp32).
  bool input_done = false;
  float *dxn_f = nullptr, *demb = nullptr;
  DeviceAllocation split;
};

struct CudaWorkspace {
  int B = 0, T = 0;
  float *x, *dx, *scores, *dh, *dxn, *dk32, *dv32, *rms_partial, *delta;
  const void** batch_ptrs;  // A, B and C pointer arrays of gemm_grid
  bf16 *dx_bf, *dh_bf, *dact, *dgate, *dup, *dattn, *dq, *dk, *dv;
  DeviceAllocation memory;
};

CudaStage::CudaStage(const ModelConfig& model, const OptimConfig& optim, int begin, int end, uint64_t seed, int gpu)
    : model_(model), optim_(optim), begin_(begin), end_(end) {
  validate(model_);
  validate(optim_);
  if (!model_.bottlenecks.empty()) throw std::invalid_argument("the CUDA backend has no residual bottlenecks yet: run models with bottlenecks on the CPU backend");
  layout_ = stage_layout(model_, begin, end);
  if (const char* a = std::getenv("CARAVAN_ATTENTION"); a && *a) {
    const std::string want = a;
    if (want == "flash") attention_ = AttentionPath::flash;
    else if (want == "gemm") attention_ = AttentionPath::gemm;
    else if (want != "auto") throw std::invalid_argument("CARAVAN_ATTENTION must be auto, flash or gemm, got '" + want + "'");
    if (attention_ == AttentionPath::flash && !flash_attention_supported(model_.head_dim())) {
      throw std::invalid_argument("CARAVAN_ATTENTION=flash: flash attention has kernels for head dims 16, 32, 64 and 128, not " + std::to_string(model_.head_dim()));
    }
  }
  device_ = open_device(gpu);
  const CublasApi& api = cublas();
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  if (api.create(&cublas_) != 0) throw std::runtime_error("cublasCreate failed on GPU " + std::to_string(gpu));
  api.set_stream(cublas_, stream_);
  const size_t n = layout_.total;
  std::vector<float> host(n);
  init_parameters(host.data(), layout_, seed);
  CUDA_CHECK(cudaMalloc(&d_params_, n * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&d_grads_, n * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&d_m_, n * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&d_v_, n * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&d_params_bf16_, n * sizeof(bf16)));
  CUDA_CHECK(cudaMemsetAsync(d_grads_, 0, n * sizeof(float), stream_));
  CUDA_CHECK(cudaMemsetAsync(d_m_, 0, n * sizeof(float), stream_));
  CUDA_CHECK(cudaMemsetAsync(d_v_, 0, n * sizeof(float), stream_));
  upload_params(host);
  const int hd = model_.head_dim();
  std::vector<float> cos_t((size_t)model_.max_seq * hd / 2), sin_t(cos_t.size());
  rope_tables(cos_t.data(), sin_t.data(), model_.max_seq, hd, model_.rope_theta);  // the CPU's own tables
  CUDA_CHECK(cudaMalloc(&d_rope_cos_, cos_t.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&d_rope_sin_, sin_t.size() * sizeof(float)));
  CUDA_CHECK(cudaMemcpy(d_rope_cos_, cos_t.data(), cos_t.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(d_rope_sin_, sin_t.data(), sin_t.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMalloc(&d_sumsq_, layout_.tensors.size() * kSumSqBlocks * sizeof(double)));
}

CudaStage::~CudaStage() {
  if (d_undo_) cudaFree(d_undo_);
  stash_.clear();
  spare_.clear();
  ws_.reset();
  for (void* p : {(void*)d_params_, (void*)d_grads_, (void*)d_m_, (void*)d_v_, (void*)d_params_bf16_,
                  (void*)d_rope_cos_, (void*)d_rope_sin_, (void*)d_sumsq_}) {
    if (p) cudaFree(p);
  }
  if (cublas_) cublas().destroy(cublas_);
  if (stream_) cudaStreamDestroy(stream_);
}

const char* CudaStage::attention_kind() const {
  if (attention_ == AttentionPath::automatic) return "unchosen";
  return flash_ ? "flash" : "gemm";
}

void CudaStage::choose_attention(AttentionPath path) {
  if (ws_ || !stash_.empty() || !spare_.empty()) throw std::logic_error(describe() + ": the attention path is chosen before the first forward");
  if (path == AttentionPath::flash && !flash_attention_supported(model_.head_dim())) {
    throw std::invalid_argument(describe() + ": flash attention has no kernel for head dim " + std::to_string(model_.head_dim()));
  }
  attention_ = path;
}

void CudaStage::resolve_attention(int B, int T) {
  if (attention_ == AttentionPath::automatic) {
    const double probs_bytes = 2.0 * B * model_.n_heads * (double)T * T;
    const bool large = probs_bytes > device_.total_bytes / 64.0;
    attention_ = large && flash_attention_supported(model_.head_dim()) ? AttentionPath::flash : AttentionPath::gemm;
  }
  flash_ = attention_ == AttentionPath::flash;
}

std::string CudaStage::describe() const {
  return "cuda stage [" + std::to_string(begin_) + ", " + std::to_string(end_) + ") of " +
         std::to_string(model_.n_layers) + " layers on GPU " + std::to_string(device_.index);
}

void CudaStage::gemm(bool ta, bool tb, int M, int N, int K, const bf16* A, int lda, const bf16* B, int ldb, void* C,
                     bool c_fp32, int ldc, float beta, float alpha) {
  // cuBLAS is column-major: row-major C = op(A)·op(B) is column-major
  // Cᵀ = op(B)ᵀ·op(A)ᵀ, so the operands swap and keep their own flags.
  const cublasOperation_t opx = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opy = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int status = cublas().gemm_ex(cublas_, opx, opy, N, M, K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda,
                                      &beta, C, c_fp32 ? CUDA_R_32F : CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT);
  if (status != 0) {
    throw std::runtime_error(describe() + ": cuBLAS GEMM " + std::to_string(M) + "x" + std::to_string(N) + "x" +
                             std::to_string(K) + " failed with status " + std::to_string(status));
  }
}

void CudaStage::gemm_grid(bool ta, bool tb, int M, int N, int K, const bf16* A, int lda, long long a_outer,
                          long long a_inner, const bf16* B, int ldb, long long b_outer, long long b_inner, void* C,
                          bool c_fp32, int ldc, long long c_outer, long long c_inner, float beta, float alpha,
                          int outer, int inner) {
  const int n = outer * inner;
  const long long cs = c_fp32 ? 4 : 2;
  BatchGrid grid{{reinterpret_cast<const char*>(A), reinterpret_cast<const char*>(B), static_cast<const char*>(C)},
                 {a_outer * 2, b_outer * 2, c_outer * cs},
                 {a_inner * 2, b_inner * 2, c_inner * cs}};
  const void** ptrs = ws_->batch_ptrs;
  fill_batch_pointers(ptrs, grid, outer, inner, stream_);
  // Column-major swap as in gemm(): cuBLAS's A is our B and its B our A.
  const cublasOperation_t opx = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opy = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int status = cublas().gemm_batched_ex(cublas_, opx, opy, N, M, K, &alpha, ptrs + n, CUDA_R_16BF, ldb, ptrs,
                                              CUDA_R_16BF, lda, &beta, const_cast<void* const*>(ptrs + 2 * n),
                                              c_fp32 ? CUDA_R_32F : CUDA_R_16BF, ldc, n, CUBLAS_COMPUTE_32F,
                                              CUBLAS_GEMM_DEFAULT);
  if (status != 0) {
    throw std::runtime_error(describe() + ": cuBLAS batched GEMM " + std::to_string(M) + "x" + std::to_string(N) + "x" +
                             std::to_string(K) + " (batch " + std::to_string(n) + ") failed with status " +
                             std::to_string(status));
  }
}

CudaWorkspace& CudaStage::workspace(int B, int T) {
  if (ws_ && (size_t)ws_->B * ws_->T >= (size_t)B * T && ws_->T >= T) return *ws_;
  const size_t N = (size_t)B * T, d = model_.d_model, hd = model_.head_dim(), H = model_.n_heads,
               Hkv = model_.n_kv_heads, F = model_.ffn_hidden;
  auto carve = [&](Carver& c, CudaWorkspace& w) {
    w.x = c.take<float>(N * d);
    w.dx = c.take<float>(N * d);
    // The GEMM path's scores (forward) and dP (backward); flash attention's row sums.
    w.scores = c.take<float>(flash_ ? 0 : (size_t)B * H * T * T);
    w.delta = c.take<float>(flash_ ? (size_t)B * H * T : 0);
    w.dh = c.take<float>(N * d);
    w.dxn = c.take<float>(N * d);
    w.dk32 = c.take<float>(N * Hkv * hd);
    w.dv32 = c.take<float>(N * Hkv * hd);
    w.rms_partial = c.take<float>((size_t)kRmsChunks * d);
    w.batch_ptrs = c.take<const void*>(3 * (size_t)B * H);
    w.dx_bf = c.take<bf16>(N * d);
    w.dh_bf = c.take<bf16>(N * d);
    w.dact = c.take<bf16>(N * F);
    w.dgate = c.take<bf16>(N * F);
    w.dup = c.take<bf16>(N * F);
    w.dattn = c.take<bf16>(N * H * hd);
    w.dq = c.take<bf16>(N * H * hd);
    w.dk = c.take<bf16>(N * Hkv * hd);
    w.dv = c.take<bf16>(N * Hkv * hd);
  };
  auto w = std::make_unique<CudaWorkspace>();
  Carver sizing;
  carve(sizing, *w);
  ws_.reset();  // free the smaller one first
  w->memory.allocate(sizing.used, describe() + " workspace");
  Carver real{static_cast<char*>(w->memory.ptr)};
  carve(real, *w);
  w->B = B;
  w->T = T;
  ws_ = std::move(w);
  return *ws_;
}

std::unique_ptr<CudaStash> CudaStage::take_stash(int B, int T, bool train) {
  for (size_t i = 0; i < spare_.size(); i++) {
    if (spare_[i]->B == B && spare_[i]->T == T && spare_[i]->train == train) {
      std::unique_ptr<CudaStash> st = std::move(spare_[i]);
      spare_.erase(spare_.begin() + i);
      return st;
    }
  }
  const size_t N = (size_t)B * T, d = model_.d_model, hd = model_.head_dim(), H = model_.n_heads,
               Hkv = model_.n_kv_heads, F = model_.ffn_hidden, V = model_.vocab;
  auto st = std::make_unique<CudaStash>();
  st->B = B;
  st->T = T;
  st->train = train;
  st->layers.resize(train ? end_ - begin_ : 1);
  auto carve = [&](Carver& c) {
    for (CudaLayerStash& l : st->layers) {
      l.x = c.take<float>(N * d);
      l.h = c.take<float>(N * d);
      l.rstd1 = c.take<float>(N);
      l.rstd2 = c.take<float>(N);
      l.xn1 = c.take<bf16>(N * d);
      l.xn2 = c.take<bf16>(N * d);
      l.q = c.take<bf16>(N * H * hd);
      l.attn = c.take<bf16>(N * H * hd);
      l.k = c.take<bf16>(N * Hkv * hd);
      l.v = c.take<bf16>(N * Hkv * hd);
      l.probs = c.take<bf16>(flash_ ? 0 : (size_t)B * H * T * T);
      l.lse = c.take<float>(flash_ ? (size_t)B * H * T : 0);
      l.gate = c.take<bf16>(N * F);
      l.up = c.take<bf16>(N * F);
      l.act = c.take<bf16>(N * F);
    }
    if (is_first()) {
      st->tokens = c.take<int32_t>(N);
      st->order = c.take<int32_t>(N);
      st->starts = c.take<int32_t>(N + 1);
      st->ids = c.take<int32_t>(N);
    }
    if (is_last()) {
      st->targets = c.take<int32_t>(N);
      st->final_in = c.take<float>(N * d);
      st->rstd_f = c.take<float>(N);
      st->loss_rows = c.take<float>(N);
      st->xn_f = c.take<bf16>(N * d);
      st->logits = c.take<bf16>(N * V);
    }
  };
  Carver sizing;
  carve(sizing);
  st->memory.allocate(sizing.used, describe() + " microbatch stash");
  Carver real{static_cast<char*>(st->memory.ptr)};
  carve(real);
  return st;
}

namespace {
// Query rows go in blocks; block r needs keys [0, (r+1)·Tb) only, so the
// GEMMs skip most of the masked triangle: (nb+1)/(2·nb) of the full work.
int query_blocks(int T) {
  int nb = 1;
  while (nb < 8 && T % (nb * 2) == 0 && T / (nb * 2) >= 256) nb *= 2;
  return nb;
}
}  // namespace

void CudaStage::attention_forward(CudaLayerStash& c, int B, int T) {
  const int H = model_.n_heads, Hkv = model_.n_kv_heads, hd = model_.head_dim(), g = H / Hkv;
  if (flash_) return flash_attention_forward(c.attn, c.lse, c.q, c.k, c.v, B, T, H, Hkv, hd, 1.0f / std::sqrt((float)hd), stream_);
  const int ldq = H * hd, ldk = Hkv * hd, nb = query_blocks(T), Tb = T / nb;
  const float scale = 1.0f / std::sqrt((float)hd);
  CudaWorkspace& w = *ws_;
  const long long TT = (long long)T * T;
  // Matrices form a (batch row b, kv head kvh) grid per position j within a
  // kv group: query head h = kvh·g + j reads kv head kvh. Strides:
  const long long q_b = (long long)T * ldq, q_h = (long long)g * hd;   // q, attn, dq [B,T,H,hd]
  const long long k_b = (long long)T * ldk, k_h = hd;                  // k, v [B,T,Hkv,hd]
  const long long p_b = (long long)H * TT, p_h = g * TT;               // scores, probs [B,H,T,T]
  for (int j = 0; j < g; j++) {
    for (int r = 0; r < nb; r++) {
      const size_t q0 = (size_t)r * Tb;
      // s[q0:q0+Tb, 0:keys] = scale · q[q0:q0+Tb] · k[0:keys]ᵀ
      gemm_grid(false, true, Tb, (r + 1) * Tb, hd, c.q + j * hd + q0 * ldq, ldq, q_b, q_h, c.k, ldk, k_b, k_h,
                w.scores + j * TT + q0 * T, true, T, p_b, p_h, 0.0f, scale, B, Hkv);
    }
  }
  causal_softmax_forward(c.probs, w.scores, (size_t)B * H * T, T, Tb, stream_);
  for (int j = 0; j < g; j++) {
    for (int r = 0; r < nb; r++) {
      const size_t q0 = (size_t)r * Tb;
      // o[q0:q0+Tb] = p[q0:q0+Tb, 0:keys] · v[0:keys]
      gemm_grid(false, false, Tb, hd, (r + 1) * Tb, c.probs + j * TT + q0 * T, T, p_b, p_h, c.v, ldk, k_b, k_h,
                c.attn + j * hd + q0 * ldq, false, ldq, q_b, q_h, 0.0f, 1.0f, B, Hkv);
    }
  }
}

void CudaStage::attention_backward(CudaLayerStash& c, const bf16* dattn, bf16* dq, bf16* dk, bf16* dv, int B, int T) {
  const int H = model_.n_heads, Hkv = model_.n_kv_heads, hd = model_.head_dim(), g = H / Hkv;
  if (flash_) {
    return flash_attention_backward(dq, dk, dv, ws_->delta, c.q, c.k, c.v, c.attn, dattn, c.lse, B, T, H, Hkv, hd,
                                    1.0f / std::sqrt((float)hd), stream_);
  }
  const int ldq = H * hd, ldk = Hkv * hd, nb = query_blocks(T), Tb = T / nb;
  const float scale = 1.0f / std::sqrt((float)hd);
  CudaWorkspace& w = *ws_;
  const long long TT = (long long)T * T;
  const long long q_b = (long long)T * ldq, q_h = (long long)g * hd;
  const long long k_b = (long long)T * ldk, k_h = hd;
  const long long p_b = (long long)H * TT, p_h = g * TT;
  // dK and dV gather from every query block and every head of a kv group.
  // The last block reaches all keys, so it goes first and initialises them
  // (beta 0); the rest add in a fixed order.
  for (int j = 0; j < g; j++) {
    for (int r = nb - 1; r >= 0; r--) {
      const size_t q0 = (size_t)r * Tb;
      const int keys = (r + 1) * Tb;
      const float beta = (j > 0 || r < nb - 1) ? 1.0f : 0.0f;
      // dP = dO·Vᵀ;  dV[0:keys] += Pᵀ·dO
      gemm_grid(false, true, Tb, keys, hd, dattn + j * hd + q0 * ldq, ldq, q_b, q_h, c.v, ldk, k_b, k_h,
                w.scores + j * TT + q0 * T, true, T, p_b, p_h, 0.0f, 1.0f, B, Hkv);
      gemm_grid(true, false, keys, hd, Tb, c.probs + j * TT + q0 * T, T, p_b, p_h, dattn + j * hd + q0 * ldq, ldq,
                q_b, q_h, w.dv32, true, ldk, k_b, k_h, beta, 1.0f, B, Hkv);
    }
  }
  causal_softmax_backward(c.probs, w.scores, (size_t)B * H * T, T, scale, stream_);  // probs now hold dS
  for (int j = 0; j < g; j++) {
    for (int r = nb - 1; r >= 0; r--) {
      const size_t q0 = (size_t)r * Tb;
      const int keys = (r + 1) * Tb;
      const float beta = (j > 0 || r < nb - 1) ? 1.0f : 0.0f;
      // dQ = dS·K;  dK[0:keys] += dSᵀ·Q
      gemm_grid(false, false, Tb, hd, keys, c.probs + j * TT + q0 * T, T, p_b, p_h, c.k, ldk, k_b, k_h,
                dq + j * hd + q0 * ldq, false, ldq, q_b, q_h, 0.0f, 1.0f, B, Hkv);
      gemm_grid(true, false, keys, hd, Tb, c.probs + j * TT + q0 * T, T, p_b, p_h, c.q + j * hd + q0 * ldq, ldq,
                q_b, q_h, w.dk32, true, ldk, k_b, k_h, beta, 1.0f, B, Hkv);
    }
  }
  const size_t nkv = (size_t)B * T * ldk;
  f32_to_bf16(dk, w.dk32, nkv, stream_);
  f32_to_bf16(dv, w.dv32, nkv, stream_);
}

template <typename F>
void CudaStage::profiled(F&& f) {
  if (!profiling_) return f();
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  CUDA_CHECK(cudaEventRecord(a, stream_));
  f();
  CUDA_CHECK(cudaEventRecord(b, stream_));
  events_.emplace_back(a, b);
}

double CudaStage::attention_ms() {
  synchronize();
  double total = 0;
  for (auto& [a, b] : events_) {
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    total += ms;
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  events_.clear();
  return total;
}

void CudaStage::block_forward(int layer, float* x, CudaLayerStash& c, int B, int T) {
  const LayerOffsets& o = layout_.layers[layer - begin_];
  const int N = B * T, d = model_.d_model, hd = model_.head_dim(), H = model_.n_heads, Hkv = model_.n_kv_heads,
            F = model_.ffn_hidden;
  const size_t bytes = (size_t)N * d * sizeof(float);
  CUDA_CHECK(cudaMemcpyAsync(c.x, x, bytes, cudaMemcpyDeviceToDevice, stream_));
  rmsnorm_forward(c.xn1, c.rstd1, x, P(o.norm1), N, d, model_.norm_eps, stream_);
  gemm(false, true, N, H * hd, d, c.xn1, d, W(o.wq), d, c.q, false, H * hd, 0.0f);
  gemm(false, true, N, Hkv * hd, d, c.xn1, d, W(o.wk), d, c.k, false, Hkv * hd, 0.0f);
  gemm(false, true, N, Hkv * hd, d, c.xn1, d, W(o.wv), d, c.v, false, Hkv * hd, 0.0f);
  rope_forward(c.q, d_rope_cos_, d_rope_sin_, B, T, H, hd, stream_);
  rope_forward(c.k, d_rope_cos_, d_rope_sin_, B, T, Hkv, hd, stream_);
  profiled([&] { attention_forward(c, B, T); });
  CUDA_CHECK(cudaMemcpyAsync(c.h, x, bytes, cudaMemcpyDeviceToDevice, stream_));  // h = x + o_proj(attn)
  gemm(false, true, N, d, H * hd, c.attn, H * hd, W(o.wo), H * hd, c.h, true, d, 1.0f);
  rmsnorm_forward(c.xn2, c.rstd2, c.h, P(o.norm2), N, d, model_.norm_eps, stream_);
  gemm(false, true, N, F, d, c.xn2, d, W(o.wg), d, c.gate, false, F, 0.0f);
  gemm(false, true, N, F, d, c.xn2, d, W(o.wu), d, c.up, false, F, 0.0f);
  swiglu_forward(c.act, c.gate, c.up, (size_t)N * F, stream_);
  CUDA_CHECK(cudaMemcpyAsync(x, c.h, bytes, cudaMemcpyDeviceToDevice, stream_));  // out = h + down_proj(act)
  gemm(false, true, N, d, F, c.act, F, W(o.wd), F, x, true, d, 1.0f);
}

void CudaStage::block_backward(int layer, float* dx, CudaLayerStash& c, int B, int T, bool split) {
  const LayerOffsets& o = layout_.layers[layer - begin_];
  const int N = B * T, d = model_.d_model, hd = model_.head_dim(), H = model_.n_heads, Hkv = model_.n_kv_heads,
            F = model_.ffn_hidden;
  CudaWorkspace& w = *ws_;
  const size_t bytes = (size_t)N * d * sizeof(float);
  // split (B): no weight gradients; their dy operands go to the stash for W.
  bf16* dy_bf = split ? c.dy_bf : w.dx_bf;
  bf16* dh_bf = split ? c.dh_bf : w.dh_bf;
  float* dxn2 = split ? c.dxn2 : w.dxn;
  float* dxn1 = split ? c.dxn1 : w.dxn;
  f32_to_bf16(dy_bf, dx, (size_t)N * d, stream_);
  gemm(false, false, N, F, d, dy_bf, d, W(o.wd), F, w.dact, false, F, 0.0f);   // dact = dy·Wd
  if (!split) gemm(true, false, d, F, N, dy_bf, d, c.act, F, G(o.wd), true, F, 1.0f);  // dWd += dyᵀ·act
  swiglu_backward(w.dgate, w.dup, w.dact, c.gate, c.up, (size_t)N * F, stream_);
  gemm(false, false, N, d, F, w.dgate, F, W(o.wg), d, dxn2, true, d, 0.0f);
  gemm(false, false, N, d, F, w.dup, F, W(o.wu), d, dxn2, true, d, 1.0f);
  if (!split) {
    gemm(true, false, F, d, N, w.dgate, F, c.xn2, d, G(o.wg), true, d, 1.0f);
    gemm(true, false, F, d, N, w.dup, F, c.xn2, d, G(o.wu), true, d, 1.0f);
  }
  CUDA_CHECK(cudaMemcpyAsync(w.dh, dx, bytes, cudaMemcpyDeviceToDevice, stream_));  // residual path
  rmsnorm_backward(w.dh, split ? nullptr : G(o.norm2), w.rms_partial, dxn2, c.h, P(o.norm2), c.rstd2, N, d, stream_);
  f32_to_bf16(dh_bf, w.dh, (size_t)N * d, stream_);
  gemm(false, false, N, H * hd, d, dh_bf, d, W(o.wo), H * hd, w.dattn, false, H * hd, 0.0f);
  if (!split) gemm(true, false, d, H * hd, N, dh_bf, d, c.attn, H * hd, G(o.wo), true, H * hd, 1.0f);
  profiled([&] { attention_backward(c, w.dattn, w.dq, w.dk, w.dv, B, T); });
  rope_backward(w.dq, d_rope_cos_, d_rope_sin_, B, T, H, hd, stream_);
  rope_backward(w.dk, d_rope_cos_, d_rope_sin_, B, T, Hkv, hd, stream_);
  gemm(false, false, N, d, H * hd, w.dq, H * hd, W(o.wq), d, dxn1, true, d, 0.0f);
  gemm(false, false, N, d, Hkv * hd, w.dk, Hkv * hd, W(o.wk), d, dxn1, true, d, 1.0f);
  gemm(false, false, N, d, Hkv * hd, w.dv, Hkv * hd, W(o.wv), d, dxn1, true, d, 1.0f);
  if (!split) {
    gemm(true, false, H * hd, d, N, w.dq, H * hd, c.xn1, d, G(o.wq), true, d, 1.0f);
    gemm(true, false, Hkv * hd, d, N, w.dk, Hkv * hd, c.xn1, d, G(o.wk), true, d, 1.0f);
    gemm(true, false, Hkv * hd, d, N, w.dv, Hkv * hd, c.xn1, d, G(o.wv), true, d, 1.0f);
  }
  CUDA_CHECK(cudaMemcpyAsync(dx, w.dh, bytes, cudaMemcpyDeviceToDevice, stream_));
  rmsnorm_backward(dx, split ? nullptr : G(o.norm1), w.rms_partial, dxn1, c.x, P(o.norm1), c.rstd1, N, d, stream_);
  if (split) {
    // W reads dgate, dup, dq, dk, dv where gate, up, q, k, v were.
    const size_t nf = (size_t)N * F * sizeof(bf16), nq = (size_t)N * H * hd * sizeof(bf16),
                 nkv = (size_t)N * Hkv * hd * sizeof(bf16);
    CUDA_CHECK(cudaMemcpyAsync(c.gate, w.dgate, nf, cudaMemcpyDeviceToDevice, stream_));
    CUDA_CHECK(cudaMemcpyAsync(c.up, w.dup, nf, cudaMemcpyDeviceToDevice, stream_));
    CUDA_CHECK(cudaMemcpyAsync(c.q, w.dq, nq, cudaMemcpyDeviceToDevice, stream_));
    CUDA_CHECK(cudaMemcpyAsync(c.k, w.dk, nkv, cudaMemcpyDeviceToDevice, stream_));
    CUDA_CHECK(cudaMemcpyAsync(c.v, w.dv, nkv, cudaMemcpyDeviceToDevice, stream_));
  }
}

// W of one layer: block_backward's weight-gradient GEMMs and kernels, in its
// order, on the operands B kept.
void CudaStage::block_weight(int layer, const CudaLayerStash& c, int N) {
  const LayerOffsets& o = layout_.layers[layer - begin_];
  const int d = model_.d_model, hd = model_.head_dim(), H = model_.n_heads, Hkv = model_.n_kv_heads,
            F = model_.ffn_hidden;
  CudaWorkspace& w = *ws_;
  const bf16 *dgate = c.gate, *dup = c.up, *dq = c.q, *dk = c.k, *dv = c.v;
  gemm(true, false, d, F, N, c.dy_bf, d, c.act, F, G(o.wd), true, F, 1.0f);
  gemm(true, false, F, d, N, dgate, F, c.xn2, d, G(o.wg), true, d, 1.0f);
  gemm(true, false, F, d, N, dup, F, c.xn2, d, G(o.wu), true, d, 1.0f);
  rmsnorm_backward_weight(G(o.norm2), w.rms_partial, c.dxn2, c.h, c.rstd2, N, d, stream_);
  gemm(true, false, d, H * hd, N, c.dh_bf, d, c.attn, H * hd, G(o.wo), true, H * hd, 1.0f);
  gemm(true, false, H * hd, d, N, dq, H * hd, c.xn1, d, G(o.wq), true, d, 1.0f);
  gemm(true, false, Hkv * hd, d, N, dk, Hkv * hd, c.xn1, d, G(o.wk), true, d, 1.0f);
  gemm(true, false, Hkv * hd, d, N, dv, Hkv * hd, c.xn1, d, G(o.wv), true, d, 1.0f);
  rmsnorm_backward_weight(G(o.norm1), w.rms_partial, c.dxn1, c.x, c.rstd1, N, d, stream_);
}

// The split backward's own buffers in a stash, made on its first B.
void CudaStage::split_memory(CudaStash& st) {
  if (st.split.ptr) return;
  const size_t N = (size_t)st.B * st.T, d = model_.d_model;
  auto carve = [&](Carver& c) {
    for (CudaLayerStash& l : st.layers) {
      l.dy_bf = c.take<bf16>(N * d);
      l.dh_bf = c.take<bf16>(N * d);
      l.dxn2 = c.take<float>(N * d);
      l.dxn1 = c.take<float>(N * d);
    }
    st.dxn_f = c.take<float>(is_last() ? N * d : 0);
    st.demb = c.take<float>(is_first() ? N * d : 0);
  };
  Carver sizing;
  carve(sizing);
  st.split.allocate(sizing.used, describe() + " split-backward stash");
  Carver real{static_cast<char*>(st.split.ptr)};
  carve(real);
}

double CudaStage::forward(int64_t mb, const int32_t* tokens, const float* d_acts, int B, int T,
                          const int32_t* targets, float* d_out, bool train) {
  const std::string where = describe() + ", microbatch " + std::to_string(mb);
  const int d = model_.d_model, V = model_.vocab;
  if (B <= 0 || T <= 0 || T > model_.max_seq) {
    throw std::invalid_argument(where + ": need B > 0 and 0 < T <= maxSeqLen " + std::to_string(model_.max_seq) +
                                ", got B=" + std::to_string(B) + " T=" + std::to_string(T));
  }
  const int N = B * T;
  if (is_first() && !tokens) throw std::invalid_argument(where + ": stage 0 takes token ids");
  if (!is_first() && !d_acts) throw std::invalid_argument(where + ": this stage takes activations");
  if (is_last() && train && !targets) throw std::invalid_argument(where + ": the last stage needs targets to train");
  if (targets && !is_last()) throw std::invalid_argument(where + ": only the last stage takes targets");
  for (const int32_t* ids : {is_first() ? tokens : nullptr, targets}) {
    if (!ids) continue;
    for (int i = 0; i < N; i++) {
      if (ids[i] < 0 || ids[i] >= V) throw std::invalid_argument(where + ": id " + std::to_string(ids[i]) + " at position " + std::to_string(i) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
    }
  }
  if (train && stash_.count(mb)) throw std::invalid_argument(where + ": microbatch already has a stashed forward");
  if (!ws_) resolve_attention(B, T);
  CudaWorkspace& w = workspace(B, T);
  std::unique_ptr<CudaStash> st = take_stash(B, T, train);
  st->input_done = false;
  if (train) weighted_.erase(mb);
  if (is_first()) {
    CUDA_CHECK(cudaMemcpyAsync(st->tokens, tokens, (size_t)N * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    embedding_forward(w.x, st->tokens, P(layout_.emb), N, d, stream_);
    if (train) {
      // Positions grouped by token, in position order (a counting sort), for
      // the atomic-free embedding gradient.
      std::vector<int32_t> count(V + 1, 0), order(N), starts, ids;
      for (int i = 0; i < N; i++) count[tokens[i] + 1]++;
      for (int t = 0; t < V; t++) count[t + 1] += count[t];
      std::vector<int32_t> next(count.begin(), count.end() - 1);
      for (int i = 0; i < N; i++) order[next[tokens[i]]++] = i;
      for (int t = 0; t < V; t++) {
        if (count[t + 1] > count[t]) { ids.push_back(t); starts.push_back(count[t]); }
      }
      starts.push_back(N);
      st->unique = (int)ids.size();
      CUDA_CHECK(cudaMemcpyAsync(st->order, order.data(), order.size() * 4, cudaMemcpyHostToDevice, stream_));
      CUDA_CHECK(cudaMemcpyAsync(st->starts, starts.data(), starts.size() * 4, cudaMemcpyHostToDevice, stream_));
      CUDA_CHECK(cudaMemcpyAsync(st->ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice, stream_));
      CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host vectors go out of scope
    }
  } else {
    CUDA_CHECK(cudaMemcpyAsync(w.x, d_acts, (size_t)N * d * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
  }
  for (int l = begin_; l < end_; l++) block_forward(l, w.x, st->layers[train ? l - begin_ : 0], B, T);
  double loss = 0.0;
  if (is_last()) {
    CUDA_CHECK(cudaMemcpyAsync(st->final_in, w.x, (size_t)N * d * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
    rmsnorm_forward(st->xn_f, st->rstd_f, w.x, P(layout_.norm_f), N, d, model_.norm_eps, stream_);
    gemm(false, true, N, V, d, st->xn_f, d, W(layout_.head), d, st->logits, false, V, 0.0f);
    if (targets) {
      CUDA_CHECK(cudaMemcpyAsync(st->targets, targets, (size_t)N * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
      cross_entropy_fused(st->logits, st->loss_rows, st->targets, N, V, 1.0f / N, stream_);
      std::vector<float> rows(N);
      CUDA_CHECK(cudaMemcpyAsync(rows.data(), st->loss_rows, (size_t)N * sizeof(float), cudaMemcpyDeviceToHost, stream_));
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      for (float r : rows) loss += r;  // in row order
      loss /= N;
    } else {
      bf16_to_f32(d_out, st->logits, (size_t)N * V, stream_);
    }
  } else {
    CUDA_CHECK(cudaMemcpyAsync(d_out, w.x, (size_t)N * d * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
  }
  if (train) stash_[mb] = std::move(st);
  else spare_.push_back(std::move(st));
  return loss;
}

void CudaStage::backward(int64_t mb, const float* d_grad_out, float* d_grad_in) {
  backward_impl(mb, d_grad_out, d_grad_in, false);
}

void CudaStage::backward_input(int64_t mb, const float* d_grad_out, float* d_grad_in) {
  backward_impl(mb, d_grad_out, d_grad_in, true);
}

void CudaStage::backward_impl(int64_t mb, const float* d_grad_out, float* d_grad_in, bool split) {
  const std::string where = describe() + ", microbatch " + std::to_string(mb);
  const char* what = split ? "backwardInput" : "backward";
  auto it = stash_.find(mb);
  if (it == stash_.end()) throw std::invalid_argument(where + ": " + what + " for a microbatch with no stashed forward");
  CudaStash& st = *it->second;
  if (st.input_done) throw std::invalid_argument(where + ": " + what + " after backwardInput already ran for this microbatch (its backwardWeight is due)");
  if (!is_last() && !d_grad_out) throw std::invalid_argument(describe() + ": backward needs the gradient of this stage's output");
  const int B = st.B, T = st.T, N = B * T, d = model_.d_model, V = model_.vocab;
  CudaWorkspace& w = workspace(B, T);
  if (split) split_memory(st);
  const size_t bytes = (size_t)N * d * sizeof(float);
  if (is_last()) {
    float* dxn = split ? st.dxn_f : w.dxn;
    gemm(false, false, N, d, V, st.logits, V, W(layout_.head), d, dxn, true, d, 0.0f);   // dxn = dlogits·Wh
    if (!split) gemm(true, false, V, d, N, st.logits, V, st.xn_f, d, G(layout_.head), true, d, 1.0f);  // dWh += dlogitsᵀ·xn
    CUDA_CHECK(cudaMemsetAsync(w.dx, 0, bytes, stream_));
    rmsnorm_backward(w.dx, split ? nullptr : G(layout_.norm_f), w.rms_partial, dxn, st.final_in, P(layout_.norm_f), st.rstd_f, N, d, stream_);
  } else {
    CUDA_CHECK(cudaMemcpyAsync(w.dx, d_grad_out, bytes, cudaMemcpyDeviceToDevice, stream_));
  }
  for (int l = end_ - 1; l >= begin_; l--) block_backward(l, w.dx, st.layers[l - begin_], B, T, split);
  if (is_first()) {
    if (split) CUDA_CHECK(cudaMemcpyAsync(st.demb, w.dx, bytes, cudaMemcpyDeviceToDevice, stream_));
    else embedding_backward(G(layout_.emb), w.dx, st.order, st.starts, st.ids, st.unique, d, stream_);
  } else {
    CUDA_CHECK(cudaMemcpyAsync(d_grad_in, w.dx, bytes, cudaMemcpyDeviceToDevice, stream_));
  }
  if (split) {
    st.input_done = true;
    return;
  }
  spare_.push_back(std::move(it->second));
  stash_.erase(it);
}

// W: backward_impl's weight-gradient calls, in its order, on what B kept.
void CudaStage::backward_weight(int64_t mb) {
  const std::string where = describe() + ", microbatch " + std::to_string(mb);
  auto it = stash_.find(mb);
  if (it == stash_.end()) {
    if (weighted_.count(mb)) throw std::invalid_argument(where + ": backwardWeight already ran for this microbatch (it is called once per backwardInput)");
    throw std::invalid_argument(where + ": backwardWeight for a microbatch with no stashed forward");
  }
  CudaStash& st = *it->second;
  if (!st.input_done) throw std::invalid_argument(where + ": backwardWeight before backwardInput (run backwardInput for this microbatch first)");
  const int N = st.B * st.T, d = model_.d_model, V = model_.vocab;
  CudaWorkspace& w = workspace(st.B, st.T);
  if (is_last()) {
    gemm(true, false, V, d, N, st.logits, V, st.xn_f, d, G(layout_.head), true, d, 1.0f);
    rmsnorm_backward_weight(G(layout_.norm_f), w.rms_partial, st.dxn_f, st.final_in, st.rstd_f, N, d, stream_);
  }
  for (int l = end_ - 1; l >= begin_; l--) block_weight(l, st.layers[l - begin_], N);
  if (is_first()) embedding_backward(G(layout_.emb), st.demb, st.order, st.starts, st.ids, st.unique, d, stream_);
  st.input_done = false;
  weighted_.insert(mb);
  spare_.push_back(std::move(it->second));
  stash_.erase(it);
}

size_t CudaStage::stashed_bytes() const {
  size_t total = 0;
  for (const auto& [mb, st] : stash_) total += st->memory.bytes + st->split.bytes;
  return total;
}

std::vector<double> CudaStage::grad_sum_squares() {
  const auto& ts = layout_.tensors;
  for (size_t i = 0; i < ts.size(); i++) sum_squares_partial(d_sumsq_ + i * kSumSqBlocks, G(ts[i].offset), ts[i].numel, stream_);
  std::vector<double> partial(ts.size() * kSumSqBlocks);
  CUDA_CHECK(cudaMemcpyAsync(partial.data(), d_sumsq_, partial.size() * sizeof(double), cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::vector<double> out(ts.size(), 0.0);
  for (size_t i = 0; i < ts.size(); i++) {
    for (int b = 0; b < kSumSqBlocks; b++) out[i] += partial[i * kSumSqBlocks + b];
  }
  return out;
}

double CudaStage::step(double grad_scale) {
  drop_undo();
  return adamw_step(grad_scale);
}

double CudaStage::step_with_undo(double grad_scale) {
  const size_t n = layout_.total, bytes = n * sizeof(float);
  if (!d_undo_) {
    cudaError_t e = cudaMalloc(&d_undo_, 4 * bytes);
    if (e != cudaSuccess) {
      d_undo_ = nullptr;
      throw std::runtime_error(describe() + ": out of GPU memory allocating " + std::to_string((4 * bytes) >> 20) +
                               " MiB for stepWithUndo's saved copy: " + cudaGetErrorString(e));
    }
  }
  const float* from[4] = {d_params_, d_grads_, d_m_, d_v_};
  for (int i = 0; i < 4; i++) CUDA_CHECK(cudaMemcpyAsync(d_undo_ + i * n, from[i], bytes, cudaMemcpyDeviceToDevice, stream_));
  undo_optimizer_step_ = optimizer_step;
  return adamw_step(grad_scale);
}

void CudaStage::undo_step() {
  if (!d_undo_) throw std::logic_error(describe() + ": undoStep with nothing to undo (no stepWithUndo since the last step, undoStep or dropUndo)");
  const size_t n = layout_.total, bytes = n * sizeof(float);
  float* to[4] = {d_params_, d_grads_, d_m_, d_v_};
  for (int i = 0; i < 4; i++) CUDA_CHECK(cudaMemcpyAsync(to[i], d_undo_ + i * n, bytes, cudaMemcpyDeviceToDevice, stream_));
  // The bf16 copies are the master weights rounded, as adamw_update writes them.
  f32_to_bf16(d_params_bf16_, d_params_, n, stream_);
  optimizer_step = undo_optimizer_step_;
  drop_undo();
}

void CudaStage::drop_undo() {
  if (!d_undo_) return;
  synchronize();  // copies in flight read or write it
  cudaFree(d_undo_);
  d_undo_ = nullptr;
}

double CudaStage::adamw_step(double grad_scale) {
  const double lr = lr_at(optim_, optimizer_step);
  optimizer_step++;
  for (const TensorInfo& t : layout_.tensors) {
    adamw_update(P(t.offset), W(t.offset), G(t.offset), d_m_ + t.offset, d_v_ + t.offset, t.numel, (float)lr,
                 optim_.beta1, optim_.beta2, optim_.eps, t.decay ? optim_.weight_decay : 0.0f, (float)grad_scale,
                 optimizer_step, stream_);
  }
  zero_grad();
  return lr;
}

void CudaStage::zero_grad() {
  CUDA_CHECK(cudaMemsetAsync(d_grads_, 0, layout_.total * sizeof(float), stream_));
  weighted_.clear();
}

void CudaStage::synchronize() { CUDA_CHECK(cudaStreamSynchronize(stream_)); }

std::vector<int64_t> CudaStage::stashed() const {
  std::vector<int64_t> ids;
  for (const auto& [mb, st] : stash_) ids.push_back(mb);
  return ids;
}

bool CudaStage::drop(int64_t mb) {
  auto it = stash_.find(mb);
  if (it == stash_.end()) return false;
  spare_.push_back(std::move(it->second));
  stash_.erase(it);
  return true;
}

bool CudaStage::stash_shape(int64_t mb, int* B, int* T) const {
  auto it = stash_.find(mb);
  if (it == stash_.end()) return false;
  *B = it->second->B;
  *T = it->second->T;
  return true;
}

namespace {
float* arena_of(CudaStage::ArenaKind kind, float* params, float* grads, float* m, float* v) {
  switch (kind) {
    case CudaStage::ArenaKind::params: return params;
    case CudaStage::ArenaKind::grads: return grads;
    case CudaStage::ArenaKind::exp_avg: return m;
    case CudaStage::ArenaKind::exp_avg_sq: return v;
  }
  return nullptr;
}
}  // namespace

void CudaStage::download(ArenaKind kind, float* out) {
  copy_to_host(out, arena_of(kind, d_params_, d_grads_, d_m_, d_v_), layout_.total * sizeof(float));
}

void CudaStage::upload(ArenaKind kind, const float* in) {
  float* d = arena_of(kind, d_params_, d_grads_, d_m_, d_v_);
  CUDA_CHECK(cudaMemcpyAsync(d, in, layout_.total * sizeof(float), cudaMemcpyHostToDevice, stream_));
  if (kind == ArenaKind::params) f32_to_bf16(d_params_bf16_, d_params_, layout_.total, stream_);
  drop_undo();  // a saved step would restore over the new state
  synchronize();
}

void CudaStage::download_params(std::vector<float>& out) {
  out.resize(layout_.total);
  download(ArenaKind::params, out.data());
}

void CudaStage::download_grads(std::vector<float>& out) {
  out.resize(layout_.total);
  download(ArenaKind::grads, out.data());
}

void CudaStage::upload_params(const std::vector<float>& in) {
  if (in.size() != layout_.total) throw std::invalid_argument(describe() + ": upload_params needs " + std::to_string(layout_.total) + " floats");
  upload(ArenaKind::params, in.data());
}

void CudaStage::copy_to_device(void* device, const void* host, size_t bytes) {
  CUDA_CHECK(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream_));
  synchronize();
}

void CudaStage::copy_to_host(void* host, const void* device, size_t bytes) {
  CUDA_CHECK(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream_));
  synchronize();
}

}  // namespace caravan::cuda
