// Causal softmax attention. Each (batch, head) is an independent pair of small
// GEMMs, so those pairs run in parallel with OpenBLAS held to one thread each;
// the big projections elsewhere keep OpenBLAS's own threading.
#include <algorithm>
#include <cmath>
#include <vector>
#include "blas.h"
#include "ops.h"

namespace caravan {

namespace {
// Holds OpenBLAS to one thread for the lifetime of the guard.
struct SingleThreadedBlas {
  int previous;
  SingleThreadedBlas() : previous(openblas_get_num_threads()) { openblas_set_num_threads(1); }
  ~SingleThreadedBlas() { openblas_set_num_threads(previous); }
};
}  // namespace

void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                       int B, int T, int H, int Hkv, int hd) {
  const int group = H / Hkv;
  const float scale = 1.0f / std::sqrt((float)hd);
  const int ldq = H * hd, ldk = Hkv * hd;
  SingleThreadedBlas guard;
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int b = 0; b < B; b++) {
    for (int h = 0; h < H; h++) {
      const int kvh = h / group;
      const float* qh = q + (size_t)b * T * ldq + (size_t)h * hd;   // [T,hd] stride ldq
      const float* kh = k + (size_t)b * T * ldk + (size_t)kvh * hd; // [T,hd] stride ldk
      const float* vh = v + (size_t)b * T * ldk + (size_t)kvh * hd;
      float* p = probs + ((size_t)b * H + h) * T * T;                // [T,T]
      float* oh = out + (size_t)b * T * ldq + (size_t)h * hd;
      // p[T,T] = scale · qh · khᵀ (the upper triangle is masked below)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, qh, ldq, kh, ldk, 0.0f, p, T);
      for (int i = 0; i < T; i++) {
        float* row = p + (size_t)i * T;
        float mx = row[0];
        for (int j = 1; j <= i; j++) mx = std::max(mx, row[j]);
        double sum = 0.0;
        for (int j = 0; j <= i; j++) {
          row[j] = std::exp(row[j] - mx);
          sum += row[j];
        }
        const float inv = (float)(1.0 / sum);
        for (int j = 0; j <= i; j++) row[j] *= inv;
        for (int j = i + 1; j < T; j++) row[j] = 0.0f;
      }
      // oh[T,hd] = p[T,T] · vh[T,hd]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, p, T, vh, ldk, 0.0f, oh, ldq);
    }
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs,
                        const float* q, const float* k, const float* v,
                        int B, int T, int H, int Hkv, int hd) {
  const int group = H / Hkv;
  const float scale = 1.0f / std::sqrt((float)hd);
  const int ldq = H * hd, ldk = Hkv * hd;
  SingleThreadedBlas guard;
  // One task per (batch, kv head): the query heads sharing a kv head add into
  // its dk/dv in head order, so the sums are the same on any thread count.
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int b = 0; b < B; b++) {
    for (int kvh = 0; kvh < Hkv; kvh++) {
      thread_local std::vector<float> ds;  // [T,T], kept per thread across calls
      ds.resize((size_t)T * T);
      const float* kh = k + (size_t)b * T * ldk + (size_t)kvh * hd;
      const float* vh = v + (size_t)b * T * ldk + (size_t)kvh * hd;
      float* dkh = dk + (size_t)b * T * ldk + (size_t)kvh * hd;
      float* dvh = dv + (size_t)b * T * ldk + (size_t)kvh * hd;
      for (int t = 0; t < T; t++) {
        std::fill(dkh + (size_t)t * ldk, dkh + (size_t)t * ldk + hd, 0.0f);
        std::fill(dvh + (size_t)t * ldk, dvh + (size_t)t * ldk + hd, 0.0f);
      }
      for (int g = 0; g < group; g++) {
        const int h = kvh * group + g;
        const float* qh = q + (size_t)b * T * ldq + (size_t)h * hd;
        const float* doh = dout + (size_t)b * T * ldq + (size_t)h * hd;
        float* dqh = dq + (size_t)b * T * ldq + (size_t)h * hd;
        const float* p = probs + ((size_t)b * H + h) * T * T;
        // dp[T,T] = doh · vhᵀ
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, doh, ldq, vh, ldk, 0.0f, ds.data(), T);
        // dvh[T,hd] += pᵀ · doh
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, p, T, doh, ldq, 1.0f, dvh, ldk);
        // softmax backward: ds = p ⊙ (dp − Σ_j p·dp) · scale; masked entries have p = 0
        for (int i = 0; i < T; i++) {
          const float* pr = p + (size_t)i * T;
          float* dr = ds.data() + (size_t)i * T;
          double dot = 0.0;
          for (int j = 0; j <= i; j++) dot += (double)pr[j] * dr[j];
          const float fdot = (float)dot;
          for (int j = 0; j <= i; j++) dr[j] = pr[j] * (dr[j] - fdot) * scale;
          for (int j = i + 1; j < T; j++) dr[j] = 0.0f;
        }
        // dqh[T,hd] = ds · kh;  dkh[T,hd] += dsᵀ · qh
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, ds.data(), T, kh, ldk, 0.0f, dqh, ldq);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, ds.data(), T, qh, ldq, 1.0f, dkh, ldk);
      }
    }
  }
}

}  // namespace caravan
