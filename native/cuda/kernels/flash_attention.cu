// Causal attention without materialising the scores, on FlashAttention-2's
// schedule: a block of 64 query rows walks the key tiles up to its causal
// edge keeping a running max and sum per row, and stores only the output and
// each row's log-sum-exp. Backward recomputes the probabilities tile by tile
// in two kernels, one that owns a tile of keys (dK, dV: every query head of
// its kv group and every query tile added in a fixed order) and one that owns
// a tile of queries (dQ), so no gradient needs atomics and every run sums in
// the same order. Products are bf16 tensor-core MMAs (WMMA, 16×16×16) with
// fp32 accumulators (in shared memory for the output, which is rescaled as
// the running max moves; in registers for the gradients); softmax runs in fp32.
//
// Shapes: q, out, dq [B,T,H,hd]; k, v, dk, dv [B,T,Hkv,hd]; lse, delta [B,H,T].
#include <mma.h>
#include <cmath>
#include "kernels.h"

namespace caravan::cuda {

namespace {
using namespace nvcuda;

constexpr int kTile = 64;             // query rows and keys per tile
constexpr int kWarps = 4;             // 16 rows of a tile each
constexpr int kThreads = 32 * kWarps;
constexpr int kSld = kTile + 4;       // row stride of a warp's fp32 score tile
constexpr int kPld = kTile + 8;       // row stride of a warp's bf16 probability tile

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

template <int HD>
struct Sizes {
  static constexpr int ld = HD + 8;   // bf16 operand tiles [64, HD] (the padding spreads banks)
  static constexpr int old = HD + 4;  // fp32 accumulators [16, HD]
  static constexpr size_t tile_bytes = (size_t)kTile * ld * sizeof(bf16);
  static constexpr size_t scores_bytes = 16 * kSld * sizeof(float);
  static constexpr size_t probs_bytes = 16 * kPld * sizeof(bf16);
  static constexpr size_t acc_bytes = 16 * old * sizeof(float);
  static constexpr size_t stats_bytes = 2 * kTile * sizeof(float);
  static constexpr size_t forward = 3 * tile_bytes + kWarps * (scores_bytes + probs_bytes + acc_bytes);
  // Backward keeps its accumulators in registers (they are never rescaled),
  // which leaves room for two blocks per SM.
  static constexpr size_t backward = 4 * tile_bytes + stats_bytes + kWarps * (scores_bytes + probs_bytes);
};

// Rows [t0, t0+64) of one head's [T, HD] slice (row stride ld_global) into a
// shared tile; rows past T are zeros. 16-byte pieces.
template <int HD>
__device__ void load_tile(bf16* tile, const bf16* src, int ld_global, int t0, int T) {
  constexpr int pieces = HD / 8;
  for (int i = threadIdx.x; i < kTile * pieces; i += kThreads) {
    const int r = i / pieces, c = (i % pieces) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (t0 + r < T) v = *reinterpret_cast<const uint4*>(src + (size_t)(t0 + r) * ld_global + c);
    *reinterpret_cast<uint4*>(tile + r * Sizes<HD>::ld + c) = v;
  }
}

// One warp: c[16, 64] (fp32, row stride kSld) = a[16, K] · bᵀ, b[64, K] row-major.
template <int K>
__device__ void warp_mma_abt(float* c, const bf16* a, int lda, const bf16* b, int ldb) {
  for (int n = 0; n < kTile / 16; n++) {
    FragC acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k = 0; k < K / 16; k++) {
      FragA fa;
      FragBCol fb;
      wmma::load_matrix_sync(fa, a + k * 16, lda);
      wmma::load_matrix_sync(fb, b + n * 16 * ldb + k * 16, ldb);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(c + n * 16, acc, kSld, wmma::mem_row_major);
  }
}

// One warp: acc (16×16) += a[16, 64] (bf16, row stride kPld) · b[64, 16] (row-major, row stride ldb).
__device__ void add_a_times_b_columns(FragC& acc, const bf16* a, const bf16* b, int ldb) {
#pragma unroll
  for (int k = 0; k < kTile / 16; k++) {
    FragA fa;
    FragBRow fb;
    wmma::load_matrix_sync(fa, a + k * 16, kPld);
    wmma::load_matrix_sync(fb, b + k * 16 * ldb, ldb);
    wmma::mma_sync(acc, fa, fb, acc);
  }
}

// One warp: acc[n] (16×16 pieces of c[16, N], in registers) += a[16, 64] (bf16, row stride kPld) · b[64, N] row-major.
template <int N>
__device__ void warp_mma_ab_add_regs(FragC (&acc)[N / 16], const bf16* a, const bf16* b, int ldb) {
#pragma unroll
  for (int n = 0; n < N / 16; n++) add_a_times_b_columns(acc[n], a, b + n * 16, ldb);
}

// Writes a warp's register accumulators [16, HD] as bf16 rows: row r of the
// 16 to dst + row_offset(r) when the row is valid, through the warp's score
// tile (64 columns at a time). Lanes 2r and 2r+1 write row r.
template <int HD, typename RowPtr>
__device__ void warp_store_rows(const FragC (&acc)[HD / 16], float* scratch, RowPtr row_ptr) {
  constexpr int chunk = HD < kTile ? HD : kTile;
  const int lane = threadIdx.x % 32, r = lane >> 1, half = lane & 1;
  bf16* dst = row_ptr(r);
#pragma unroll
  for (int c0 = 0; c0 < HD; c0 += chunk) {
#pragma unroll
    for (int n = 0; n < chunk / 16; n++) wmma::store_matrix_sync(scratch + n * 16, acc[c0 / 16 + n], kSld, wmma::mem_row_major);
    __syncwarp();
    if (dst) {
      for (int d = half * (chunk / 2); d < (half + 1) * (chunk / 2); d++) dst[c0 + d] = __float2bfloat16(scratch[r * kSld + d]);
    }
    __syncwarp();
  }
}

// One warp: c[16, N] (fp32, row stride ldc) += a[16, 64] (bf16, row stride kPld) · b[64, N] row-major.
template <int N>
__device__ void warp_mma_ab_add(float* c, int ldc, const bf16* a, const bf16* b, int ldb) {
  for (int n = 0; n < N / 16; n++) {
    FragC acc;
    wmma::load_matrix_sync(acc, c + n * 16, ldc, wmma::mem_row_major);
    add_a_times_b_columns(acc, a, b + n * 16, ldb);
    wmma::store_matrix_sync(c + n * 16, acc, ldc, wmma::mem_row_major);
  }
}

// Each warp's private pieces of shared memory, after the block's shared tiles.
template <int HD>
struct WarpTiles {
  float* scores;  // [16, kSld]
  bf16* probs;    // [16, kPld]
  float* acc;      // [16, old] (forward only)
  __device__ WarpTiles(char* base, int warp, bool with_acc) {
    const size_t bytes = Sizes<HD>::scores_bytes + Sizes<HD>::probs_bytes + (with_acc ? Sizes<HD>::acc_bytes : 0);
    char* p = base + warp * bytes;
    scores = reinterpret_cast<float*>(p);
    probs = reinterpret_cast<bf16*>(p + Sizes<HD>::scores_bytes);
    acc = with_acc ? reinterpret_cast<float*>(p + Sizes<HD>::scores_bytes + Sizes<HD>::probs_bytes) : nullptr;
  }
};

__device__ float pair_max(float x) { return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1)); }
__device__ float pair_sum(float x) { return x + __shfl_xor_sync(0xffffffffu, x, 1); }

// grid (ceil(T/64), H, B). In a warp, lanes 2r and 2r+1 own row r of the
// warp's 16, each for half the columns.
template <int HD>
__global__ void __launch_bounds__(kThreads) flash_forward_kernel(bf16* out, float* lse, const bf16* q, const bf16* k,
                                                                 const bf16* v, int T, int H, int Hkv, float scale) {
  constexpr int ld = Sizes<HD>::ld, old = Sizes<HD>::old;
  extern __shared__ __align__(128) char smem[];
  const int qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / Hkv);
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane >> 1, half = lane & 1;
  const int ldq = H * HD, ldk = Hkv * HD;
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  bf16* Ks = Qs + kTile * ld;
  bf16* Vs = Ks + kTile * ld;
  WarpTiles<HD> my(smem + 3 * Sizes<HD>::tile_bytes, w, true);
  const int q0 = qb * kTile, qi = q0 + w * 16 + r;
  load_tile<HD>(Qs, q + (size_t)b * T * ldq + h * HD, ldq, q0, T);
  for (int i = lane; i < 16 * old; i += 32) my.acc[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const bf16* kbase = k + (size_t)b * T * ldk + kvh * HD;
  const bf16* vbase = v + (size_t)b * T * ldk + kvh * HD;
  for (int j = 0; j <= qb; j++) {  // key tiles up to the causal edge
    __syncthreads();
    load_tile<HD>(Ks, kbase, ldk, j * kTile, T);
    load_tile<HD>(Vs, vbase, ldk, j * kTile, T);
    __syncthreads();
    warp_mma_abt<HD>(my.scores, Qs + w * 16 * ld, ld, Ks, ld);
    __syncwarp();
    float* srow = my.scores + r * kSld + half * 32;
    bf16* prow = my.probs + r * kPld + half * 32;
    const int key0 = j * kTile + half * 32;
    float mx = -INFINITY;
    for (int c = 0; c < 32; c++) {
      const float s = key0 + c <= qi ? srow[c] * scale : -INFINITY;
      srow[c] = s;
      mx = fmaxf(mx, s);
    }
    const float m_new = fmaxf(m, pair_max(mx));  // finite: key 0 is visible to every row
    const float alpha = __expf(m - m_new);
    float sum = 0.0f;
    for (int c = 0; c < 32; c++) {
      const float p = __expf(srow[c] - m_new);
      prow[c] = __float2bfloat16(p);
      sum += p;
    }
    l = l * alpha + pair_sum(sum);
    m = m_new;
    float* orow = my.acc + r * old + half * (HD / 2);
    for (int d = 0; d < HD / 2; d++) orow[d] *= alpha;
    __syncwarp();
    warp_mma_ab_add<HD>(my.acc, old, my.probs, Vs, ld);
    __syncwarp();
  }
  if (qi < T) {
    const float inv = 1.0f / l;
    const float* orow = my.acc + r * old + half * (HD / 2);
    bf16* dst = out + ((size_t)b * T + qi) * ldq + h * HD + half * (HD / 2);
    for (int d = 0; d < HD / 2; d++) dst[d] = __float2bfloat16(orow[d] * inv);
    if (half == 0) lse[((size_t)b * H + h) * T + qi] = m + __logf(l);
  }
}

// delta[b,h,t] = Σ_d dout·out over one row: a warp per (b, t, h).
template <int HD>
__global__ void flash_delta_kernel(float* delta, const bf16* out, const bf16* dout, int B, int T, int H) {
  const size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;  // (b·T + t)·H + h
  if (row >= (size_t)B * T * H) return;
  const int lane = threadIdx.x % 32;
  float s = 0.0f;
  for (int d = lane; d < HD; d += 32) s += __bfloat162float(out[row * HD + d]) * __bfloat162float(dout[row * HD + d]);
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) {
    const size_t h = row % H, t = (row / H) % T, b = row / ((size_t)H * T);
    delta[(b * H + h) * T + t] = s;
  }
}

// Loads lse and delta of query rows [t0, t0+64) of head (b, h).
__device__ void load_row_stats(float* lse_s, float* delta_s, const float* lse, const float* delta, size_t head_row0,
                               int t0, int T) {
  for (int i = threadIdx.x; i < kTile; i += kThreads) {
    const bool in = t0 + i < T;
    lse_s[i] = in ? lse[head_row0 + t0 + i] : 0.0f;
    delta_s[i] = in ? delta[head_row0 + t0 + i] : 0.0f;
  }
}

// grid (ceil(T/64), Hkv, B): dK and dV of one tile of keys. A warp owns 16
// keys (rows of Sᵀ), lanes 2r and 2r+1 key r.
template <int HD>
__global__ void __launch_bounds__(kThreads, 2) flash_backward_kv_kernel(bf16* dk, bf16* dv, const bf16* q, const bf16* k,
                                                                        const bf16* v, const bf16* dout, const float* lse,
                                                                        const float* delta, int T, int H, int Hkv,
                                                                        float scale) {
  constexpr int ld = Sizes<HD>::ld;
  extern __shared__ __align__(128) char smem[];
  const int kb = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, g = H / Hkv;
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane >> 1, half = lane & 1;
  const int ldq = H * HD, ldk = Hkv * HD;
  bf16* Ks = reinterpret_cast<bf16*>(smem);
  bf16* Vs = Ks + kTile * ld;
  bf16* Qs = Vs + kTile * ld;
  bf16* dOs = Qs + kTile * ld;
  float* lse_s = reinterpret_cast<float*>(dOs + kTile * ld);
  float* delta_s = lse_s + kTile;
  WarpTiles<HD> my(smem + 4 * Sizes<HD>::tile_bytes + Sizes<HD>::stats_bytes, w, false);
  FragC dK[HD / 16], dV[HD / 16];
#pragma unroll
  for (int n = 0; n < HD / 16; n++) {
    wmma::fill_fragment(dK[n], 0.0f);
    wmma::fill_fragment(dV[n], 0.0f);
  }
  const int k0 = kb * kTile, key = k0 + w * 16 + r;
  load_tile<HD>(Ks, k + (size_t)b * T * ldk + kvh * HD, ldk, k0, T);
  load_tile<HD>(Vs, v + (size_t)b * T * ldk + kvh * HD, ldk, k0, T);
  const int tiles = (T + kTile - 1) / kTile;
  for (int hh = 0; hh < g; hh++) {
    const int h = kvh * g + hh;
    for (int qb = kb; qb < tiles; qb++) {  // earlier query tiles see none of these keys
      __syncthreads();
      load_tile<HD>(Qs, q + (size_t)b * T * ldq + h * HD, ldq, qb * kTile, T);
      load_tile<HD>(dOs, dout + (size_t)b * T * ldq + h * HD, ldq, qb * kTile, T);
      load_row_stats(lse_s, delta_s, lse, delta, ((size_t)b * H + h) * T, qb * kTile, T);
      __syncthreads();
      warp_mma_abt<HD>(my.scores, Ks + w * 16 * ld, ld, Qs, ld);  // Sᵀ[16 keys, 64 queries]
      __syncwarp();
      const float* srow = my.scores + r * kSld + half * 32;
      bf16* prow = my.probs + r * kPld + half * 32;
      const int col0 = half * 32, query0 = qb * kTile + col0;
      for (int c = 0; c < 32; c++) {
        const int qi = query0 + c;
        const float p = qi >= key && qi < T ? __expf(srow[c] * scale - lse_s[col0 + c]) : 0.0f;
        prow[c] = __float2bfloat16(p);
      }
      __syncwarp();
      warp_mma_ab_add_regs<HD>(dV, my.probs, dOs, ld);            // dV += Pᵀ·dO
      warp_mma_abt<HD>(my.scores, Vs + w * 16 * ld, ld, dOs, ld);  // dPᵀ = V·dOᵀ
      __syncwarp();
      for (int c = 0; c < 32; c++) {  // dSᵀ = Pᵀ ⊙ (dPᵀ − delta) · scale, over Pᵀ
        prow[c] = __float2bfloat16(__bfloat162float(prow[c]) * (srow[c] - delta_s[col0 + c]) * scale);
      }
      __syncwarp();
      warp_mma_ab_add_regs<HD>(dK, my.probs, Qs, ld);  // dK += dSᵀ·Q
      __syncwarp();
    }
  }
  const size_t row0 = (size_t)b * T * ldk + kvh * HD;
  auto rows_of = [&](bf16* base) {
    return [=](int rr) { const int kk = k0 + w * 16 + rr; return kk < T ? base + row0 + (size_t)kk * ldk : nullptr; };
  };
  warp_store_rows<HD>(dK, my.scores, rows_of(dk));
  warp_store_rows<HD>(dV, my.scores, rows_of(dv));
}

// grid (ceil(T/64), H, B): dQ of one tile of queries; lanes as in forward.
template <int HD>
__global__ void __launch_bounds__(kThreads, 2) flash_backward_q_kernel(bf16* dq, const bf16* q, const bf16* k,
                                                                       const bf16* v, const bf16* dout, const float* lse,
                                                                       const float* delta, int T, int H, int Hkv,
                                                                       float scale) {
  constexpr int ld = Sizes<HD>::ld;
  extern __shared__ __align__(128) char smem[];
  const int qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / Hkv);
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane >> 1, half = lane & 1;
  const int ldq = H * HD, ldk = Hkv * HD;
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  bf16* dOs = Qs + kTile * ld;
  bf16* Ks = dOs + kTile * ld;
  bf16* Vs = Ks + kTile * ld;
  float* lse_s = reinterpret_cast<float*>(Vs + kTile * ld);
  float* delta_s = lse_s + kTile;
  WarpTiles<HD> my(smem + 4 * Sizes<HD>::tile_bytes + Sizes<HD>::stats_bytes, w, false);
  FragC dQ[HD / 16];
#pragma unroll
  for (int n = 0; n < HD / 16; n++) wmma::fill_fragment(dQ[n], 0.0f);
  const int q0 = qb * kTile, row = w * 16 + r, qi = q0 + row;
  load_tile<HD>(Qs, q + (size_t)b * T * ldq + h * HD, ldq, q0, T);
  load_tile<HD>(dOs, dout + (size_t)b * T * ldq + h * HD, ldq, q0, T);
  load_row_stats(lse_s, delta_s, lse, delta, ((size_t)b * H + h) * T, q0, T);
  const bf16* kbase = k + (size_t)b * T * ldk + kvh * HD;
  const bf16* vbase = v + (size_t)b * T * ldk + kvh * HD;
  for (int j = 0; j <= qb; j++) {
    __syncthreads();
    load_tile<HD>(Ks, kbase, ldk, j * kTile, T);
    load_tile<HD>(Vs, vbase, ldk, j * kTile, T);
    __syncthreads();
    warp_mma_abt<HD>(my.scores, Qs + w * 16 * ld, ld, Ks, ld);  // S[16 queries, 64 keys]
    __syncwarp();
    const float* srow = my.scores + r * kSld + half * 32;
    bf16* prow = my.probs + r * kPld + half * 32;
    const int key0 = j * kTile + half * 32;
    const float row_lse = lse_s[row];
    for (int c = 0; c < 32; c++) {
      const float p = key0 + c <= qi && qi < T ? __expf(srow[c] * scale - row_lse) : 0.0f;
      prow[c] = __float2bfloat16(p);
    }
    __syncwarp();
    warp_mma_abt<HD>(my.scores, dOs + w * 16 * ld, ld, Vs, ld);  // dP = dO·Vᵀ
    __syncwarp();
    const float row_delta = delta_s[row];
    for (int c = 0; c < 32; c++) prow[c] = __float2bfloat16(__bfloat162float(prow[c]) * (srow[c] - row_delta) * scale);
    __syncwarp();
    warp_mma_ab_add_regs<HD>(dQ, my.probs, Ks, ld);  // dQ += dS·K
    __syncwarp();
  }
  warp_store_rows<HD>(dQ, my.scores, [=](int rr) {
    const int t = q0 + w * 16 + rr;
    return t < T ? dq + ((size_t)b * T + t) * ldq + h * HD : nullptr;
  });
}

template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

template <int HD>
void forward_hd(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int Hkv,
                float scale, cudaStream_t s) {
  allow_shared(flash_forward_kernel<HD>, Sizes<HD>::forward);
  const dim3 grid((T + kTile - 1) / kTile, H, B);
  flash_forward_kernel<HD><<<grid, kThreads, Sizes<HD>::forward, s>>>(out, lse, q, k, v, T, H, Hkv, scale);
  CUDA_LAUNCHED("flash_attention_forward");
}

template <int HD>
void backward_hd(bf16* dq, bf16* dk, bf16* dv, float* delta, const bf16* q, const bf16* k, const bf16* v,
                 const bf16* out, const bf16* dout, const float* lse, int B, int T, int H, int Hkv, float scale,
                 cudaStream_t s) {
  const size_t rows = (size_t)B * T * H;
  flash_delta_kernel<HD><<<blocks_for(rows, 8), 256, 0, s>>>(delta, out, dout, B, T, H);
  CUDA_LAUNCHED("flash_attention_delta");
  allow_shared(flash_backward_kv_kernel<HD>, Sizes<HD>::backward);
  allow_shared(flash_backward_q_kernel<HD>, Sizes<HD>::backward);
  const int tiles = (T + kTile - 1) / kTile;
  flash_backward_kv_kernel<HD><<<dim3(tiles, Hkv, B), kThreads, Sizes<HD>::backward, s>>>(
      dk, dv, q, k, v, dout, lse, delta, T, H, Hkv, scale);
  CUDA_LAUNCHED("flash_attention_backward_kv");
  flash_backward_q_kernel<HD><<<dim3(tiles, H, B), kThreads, Sizes<HD>::backward, s>>>(
      dq, q, k, v, dout, lse, delta, T, H, Hkv, scale);
  CUDA_LAUNCHED("flash_attention_backward_q");
}
}  // namespace

bool flash_attention_supported(int hd) { return hd == 16 || hd == 32 || hd == 64 || hd == 128; }

void flash_attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                             int Hkv, int hd, float scale, cudaStream_t s) {
  switch (hd) {
    case 16: return forward_hd<16>(out, lse, q, k, v, B, T, H, Hkv, scale, s);
    case 32: return forward_hd<32>(out, lse, q, k, v, B, T, H, Hkv, scale, s);
    case 64: return forward_hd<64>(out, lse, q, k, v, B, T, H, Hkv, scale, s);
    case 128: return forward_hd<128>(out, lse, q, k, v, B, T, H, Hkv, scale, s);
    default: throw std::invalid_argument("flash attention has no kernel for head dim " + std::to_string(hd));
  }
}

void flash_attention_backward(bf16* dq, bf16* dk, bf16* dv, float* delta, const bf16* q, const bf16* k, const bf16* v,
                              const bf16* out, const bf16* dout, const float* lse, int B, int T, int H, int Hkv, int hd,
                              float scale, cudaStream_t s) {
  switch (hd) {
    case 16: return backward_hd<16>(dq, dk, dv, delta, q, k, v, out, dout, lse, B, T, H, Hkv, scale, s);
    case 32: return backward_hd<32>(dq, dk, dv, delta, q, k, v, out, dout, lse, B, T, H, Hkv, scale, s);
    case 64: return backward_hd<64>(dq, dk, dv, delta, q, k, v, out, dout, lse, B, T, H, Hkv, scale, s);
    case 128: return backward_hd<128>(dq, dk, dv, delta, q, k, v, out, dout, lse, B, T, H, Hkv, scale, s);
    default: throw std::invalid_argument("flash attention has no kernel for head dim " + std::to_string(hd));
  }
}

}  // namespace caravan::cuda
