// Central differences in fp32 have truncation error O(eps²) and round-off
// O(ulp(loss)/eps). Single ops are checked element by element (eps = 1e-2 on
// inputs of unit scale): measured error ~5e-5 over 40 seeds, tolerance 1e-3.
// Whole stages are checked along random directions with Richardson
// extrapolation (see compare_directional): measured ~2e-3 at worst over 40
// seeds, limited by the fp32 loss, tolerance 1e-2. A wrong gradient term is
// off by O(1), far above either.
#include "gradcheck.h"
#include <algorithm>
#include <cmath>
#include <functional>
#include "ops.h"
#include "stage.h"

namespace caravan {

namespace {

constexpr double kOpTolerance = 1e-3;
constexpr double kStageTolerance = 1e-2;

std::vector<float> randn(size_t n, uint64_t seed, uint64_t stream, float std = 1.0f) {
  std::vector<float> v(n);
  fill_normal(v.data(), n, seed, stream, std);
  return v;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); i++) s += (double)a[i] * b[i];
  return s;
}

// Compares analytic[i] with (f(x+eps) − f(x−eps)) / 2eps at up to max_samples
// indices spread over the buffer.
GradCheckResult compare(const std::string& op, const std::string& input, const std::function<double()>& f,
                        float* x, const float* analytic, size_t n, float eps, int max_samples = 24) {
  const size_t samples = std::min<size_t>(n, max_samples);
  double diff2 = 0.0, a2 = 0.0, n2 = 0.0;
  for (size_t s = 0; s < samples; s++) {
    const size_t i = samples == n ? s : (s * 2654435761ull + 7) % n;
    const float orig = x[i];
    x[i] = orig + eps;
    const double fp = f();
    x[i] = orig - eps;
    const double fm = f();
    x[i] = orig;
    const double num = (fp - fm) / (2.0 * eps);
    diff2 += (analytic[i] - num) * (analytic[i] - num);
    a2 += (double)analytic[i] * analytic[i];
    n2 += num * num;
  }
  const double denom = std::max(std::sqrt(std::max(a2, n2)), 1e-12);
  return {op, input, (int)samples, std::sqrt(diff2) / denom, kOpTolerance};
}

// For a whole tensor of a model: the derivative along random directions u,
// (f(x+eps·u) − f(x−eps·u)) / 2eps against g·u. One direction sums every
// element's contribution, so the signal is ‖g‖ rather than one |g_i|, and fp32
// round-off in the loss stays far below it.
GradCheckResult compare_directional(const std::string& op, const std::string& input, const std::function<double()>& f,
                                    float* x, const float* analytic, size_t n, float eps, uint64_t seed, int directions = 4) {
  std::vector<float> orig(x, x + n);
  double diff2 = 0.0, a2 = 0.0, n2 = 0.0;
  for (int k = 0; k < directions; k++) {
    auto u = randn(n, seed, 1000 + k);
    double ana = 0.0;
    for (size_t i = 0; i < n; i++) ana += (double)analytic[i] * u[i];
    auto central = [&](float h) {
      for (size_t i = 0; i < n; i++) x[i] = orig[i] + h * u[i];
      const double fp = f();
      for (size_t i = 0; i < n; i++) x[i] = orig[i] - h * u[i];
      const double fm = f();
      std::copy(orig.begin(), orig.end(), x);
      return (fp - fm) / (2.0 * h);
    };
    // Richardson extrapolation cancels the O(eps²) term, which dominates for
    // the strongly curved loss of a model with large random weights.
    const double num = (4.0 * central(eps / 2) - central(eps)) / 3.0;
    diff2 += (ana - num) * (ana - num);
    a2 += ana * ana;
    n2 += num * num;
  }
  const double denom = std::max(std::sqrt(std::max(a2, n2)), 1e-12);
  return {op, input, directions, std::sqrt(diff2) / denom, kStageTolerance};
}

}  // namespace

std::vector<GradCheckResult> gradcheck_all(uint64_t seed) {
  std::vector<GradCheckResult> out;
  const float eps = 1e-2f;

  {  // linear: x[N,in], w[out,in]
    const int N = 5, in = 6, outd = 7;
    auto x = randn(N * in, seed, 1), w = randn(outd * in, seed, 2, 0.5f), r = randn(N * outd, seed, 3);
    std::vector<float> y(N * outd), dx(N * in), dw(outd * in, 0.0f);
    auto f = [&] { linear_forward(y.data(), x.data(), w.data(), N, in, outd); return dot(y, r); };
    linear_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), N, in, outd, false);
    out.push_back(compare("linear", "x", f, x.data(), dx.data(), x.size(), eps));
    out.push_back(compare("linear", "w", f, w.data(), dw.data(), w.size(), eps));
  }
  {  // rmsnorm: x[N,d], w[d]
    const int N = 4, d = 8;
    auto x = randn(N * d, seed, 4), w = randn(d, seed, 5), r = randn(N * d, seed, 6);
    std::vector<float> y(N * d), rstd(N), dx(N * d), dw(d, 0.0f);
    auto f = [&] { rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, d, 1e-5f); return dot(y, r); };
    f();
    rmsnorm_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), N, d, false);
    out.push_back(compare("rmsnorm", "x", f, x.data(), dx.data(), x.size(), eps));
    out.push_back(compare("rmsnorm", "w", f, w.data(), dw.data(), w.size(), eps));
  }
  {  // rope: x[B,T,nh,hd]
    const int B = 2, T = 5, nh = 3, hd = 8;
    std::vector<float> c(T * hd / 2), s(T * hd / 2);
    rope_tables(c.data(), s.data(), T, hd, 10000.0f);
    auto x = randn(B * T * nh * hd, seed, 7), r = randn(x.size(), seed, 8);
    std::vector<float> y(x.size());
    auto f = [&] { y = x; rope_forward(y.data(), c.data(), s.data(), B, T, nh, hd); return dot(y, r); };
    std::vector<float> dx = r;
    rope_backward(dx.data(), c.data(), s.data(), B, T, nh, hd);
    out.push_back(compare("rope", "x", f, x.data(), dx.data(), x.size(), eps));
  }
  {  // attention with grouped kv heads: q[B,T,H,hd], k,v[B,T,Hkv,hd]
    const int B = 2, T = 6, H = 4, Hkv = 2, hd = 4;
    auto q = randn(B * T * H * hd, seed, 9), k = randn(B * T * Hkv * hd, seed, 10),
         v = randn(B * T * Hkv * hd, seed, 11), r = randn(B * T * H * hd, seed, 12);
    std::vector<float> o(q.size()), p((size_t)B * H * T * T), dq(q.size()), dk(k.size()), dv(v.size());
    auto f = [&] { attention_forward(o.data(), p.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, hd); return dot(o, r); };
    f();
    attention_backward(dq.data(), dk.data(), dv.data(), r.data(), p.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, hd);
    out.push_back(compare("attention", "q", f, q.data(), dq.data(), q.size(), eps));
    out.push_back(compare("attention", "k", f, k.data(), dk.data(), k.size(), eps));
    out.push_back(compare("attention", "v", f, v.data(), dv.data(), v.size(), eps));
  }
  {  // swiglu: gate, up[n]
    const size_t n = 20;
    auto g = randn(n, seed, 13), u = randn(n, seed, 14), r = randn(n, seed, 15);
    std::vector<float> a(n), dg(n), du(n);
    auto f = [&] { swiglu_forward(a.data(), g.data(), u.data(), n); return dot(a, r); };
    swiglu_backward(dg.data(), du.data(), r.data(), g.data(), u.data(), n);
    out.push_back(compare("swiglu", "gate", f, g.data(), dg.data(), n, eps));
    out.push_back(compare("swiglu", "up", f, u.data(), du.data(), n, eps));
  }
  {  // embedding: table[V,d], repeated tokens
    const int V = 7, d = 4, N = 9;
    const int32_t tokens[N] = {3, 1, 3, 6, 0, 3, 2, 1, 5};
    auto t = randn(V * d, seed, 16), r = randn(N * d, seed, 17);
    std::vector<float> y(N * d), dt(V * d, 0.0f);
    auto f = [&] { embedding_forward(y.data(), tokens, t.data(), N, d); return dot(y, r); };
    embedding_backward(dt.data(), r.data(), tokens, N, d);
    out.push_back(compare("embedding", "table", f, t.data(), dt.data(), t.size(), eps));
  }
  {  // cross-entropy: logits[N,V] → mean loss
    const int N = 4, V = 9;
    const int32_t targets[N] = {2, 8, 0, 2};
    auto l = randn(N * V, seed, 18, 2.0f);
    std::vector<float> p(N * V), dl(N * V);
    auto f = [&] { return cross_entropy_forward(p.data(), l.data(), targets, N, V) / N; };
    f();
    cross_entropy_backward(dl.data(), p.data(), targets, N, V, 1.0f / N);
    out.push_back(compare("cross_entropy", "logits", f, l.data(), dl.data(), l.size(), eps));
  }

  {  // residual bottleneck halves: h[N,d], wd[k,d]; z[N,k], wu[d,k]
    const int N = 5, d = 8, k = 3;
    auto h = randn(N * d, seed, 22), wd = randn(k * d, seed, 23, 0.5f), rz = randn(N * k, seed, 24);
    std::vector<float> z(N * k), dh(N * d), dwd(k * d, 0.0f);
    auto f = [&] { bottleneck_down_forward(z.data(), h.data(), wd.data(), N, d, k); return dot(z, rz); };
    bottleneck_down_backward(dh.data(), dwd.data(), rz.data(), h.data(), wd.data(), N, d, k);
    out.push_back(compare("bottleneck_down", "h", f, h.data(), dh.data(), h.size(), eps));
    out.push_back(compare("bottleneck_down", "w", f, wd.data(), dwd.data(), wd.size(), eps));
    auto zin = randn(N * k, seed, 25), wu = randn(d * k, seed, 26, 0.5f), ry = randn(N * d, seed, 27);
    std::vector<float> y(N * d), dz(N * k), dwu(d * k, 0.0f);
    auto g = [&] { bottleneck_up_forward(y.data(), zin.data(), wu.data(), N, d, k); return dot(y, ry); };
    bottleneck_up_backward(dz.data(), dwu.data(), ry.data(), zin.data(), wu.data(), N, d, k);
    out.push_back(compare("bottleneck_up", "z", g, zin.data(), dz.data(), zin.size(), eps));
    out.push_back(compare("bottleneck_up", "w", g, wu.data(), dwu.data(), wu.size(), eps));
  }

  // Whole stages, with weights larger than at initialisation so every
  // gradient is well above round-off.
  auto randomise = [&](Stage& st) {
    for (const TensorInfo& t : st.tensors()) {
      float* p = st.params->data() + t.offset;
      fill_normal(p, t.numel, seed, stream_id(t.name.c_str()) + 99, 0.3f);
      if (t.shape.size() == 1) for (size_t i = 0; i < t.numel; i++) p[i] += 1.0f;
    }
  };
  // One stage holding the whole model, embedding to loss: plain, with a tied
  // head, and with a residual bottleneck inside (unquantized, so the function
  // is smooth).
  for (int variant = 0; variant < 4; variant++) {
    const bool tied = variant == 1;
    ModelConfig m;
    m.vocab = 11; m.d_model = 16; m.n_layers = 2; m.n_heads = 4; m.n_kv_heads = 2; m.ffn_hidden = 24;
    m.max_seq = 8; m.tied_embeddings = tied;
    if (variant >= 2) m.bottlenecks = {{1, 4}};
    m.bottleneck_embed = variant == 3;
    Stage st(m, OptimConfig{}, 0, 2, seed);
    randomise(st);
    const int B = 2, T = 6, N = B * T;
    std::vector<int32_t> tokens(N), targets(N);
    for (int i = 0; i < N; i++) { tokens[i] = (i * 7 + 3) % m.vocab; targets[i] = (i * 5 + 1) % m.vocab; }
    auto f = [&] { return st.forward(-1, tokens.data(), nullptr, N, B, T, targets.data(), N, nullptr, 0, false); };
    st.forward(0, tokens.data(), nullptr, N, B, T, targets.data(), N, nullptr, 0, true);
    st.backward(0, nullptr, 0, nullptr, 0);
    const std::string op = variant == 0 ? "model" : variant == 1 ? "model (tied head)" : variant == 2 ? "model (bottleneck at 1)" : "model (bottleneck at 1, re-embedding)";
    for (const TensorInfo& t : st.tensors()) {
      out.push_back(compare_directional(op, t.name, f, st.params->data() + t.offset, st.grads->data() + t.offset, t.numel, 1e-3f, seed ^ stream_id(t.name.c_str())));
    }
  }
  {  // a middle stage: gradient with respect to its input activations
    ModelConfig m;
    m.vocab = 11; m.d_model = 16; m.n_layers = 3; m.n_heads = 4; m.n_kv_heads = 4; m.ffn_hidden = 24; m.max_seq = 8;
    Stage st(m, OptimConfig{}, 1, 2, seed);
    randomise(st);
    const int B = 2, T = 5, N = B * T, d = m.d_model;
    auto x = randn((size_t)N * d, seed, 20), r = randn((size_t)N * d, seed, 21);
    std::vector<float> y((size_t)N * d), dx((size_t)N * d);
    auto f = [&] { st.forward(-1, nullptr, x.data(), x.size(), B, T, nullptr, 0, y.data(), y.size(), false); return dot(y, r); };
    st.forward(0, nullptr, x.data(), x.size(), B, T, nullptr, 0, y.data(), y.size(), true);
    st.backward(0, r.data(), r.size(), dx.data(), dx.size());
    out.push_back(compare_directional("stage [1, 2)", "input activations", f, x.data(), dx.data(), x.size(), 1e-3f, seed));
  }
  {  // a middle stage between two bottlenecks: input [N,k_in] → output [N,k_out]
    ModelConfig m;
    m.vocab = 11; m.d_model = 16; m.n_layers = 3; m.n_heads = 4; m.n_kv_heads = 4; m.ffn_hidden = 24; m.max_seq = 8;
    m.bottlenecks = {{1, 4}, {2, 6}};
    m.bottleneck_embed = true;
    Stage st(m, OptimConfig{}, 1, 2, seed);
    randomise(st);
    const int B = 2, T = 5, N = B * T;
    std::vector<int32_t> tokens(N);
    for (int i = 0; i < N; i++) tokens[i] = (i * 3 + 2) % m.vocab;
    auto x = randn((size_t)N * 4, seed, 28), r = randn((size_t)N * 6, seed, 29);
    std::vector<float> y((size_t)N * 6), dx((size_t)N * 4);
    auto f = [&] { st.forward(-1, tokens.data(), x.data(), x.size(), B, T, nullptr, 0, y.data(), y.size(), false); return dot(y, r); };
    st.forward(0, tokens.data(), x.data(), x.size(), B, T, nullptr, 0, y.data(), y.size(), true);
    st.backward(0, r.data(), r.size(), dx.data(), dx.size());
    const std::string op = "stage [1, 2) between bottlenecks";
    out.push_back(compare_directional(op, "input activations", f, x.data(), dx.data(), x.size(), 1e-3f, seed));
    for (const TensorInfo& t : st.tensors()) {
      if (t.name.find("bottlenecks") == std::string::npos) continue;
      out.push_back(compare_directional(op, t.name, f, st.params->data() + t.offset, st.grads->data() + t.offset, t.numel, 1e-3f, seed ^ stream_id(t.name.c_str())));
    }
  }
  return out;
}

}  // namespace caravan
