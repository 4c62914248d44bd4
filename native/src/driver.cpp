// caravan-engine: the engine without Node.js, for GPU machines (which have no
// Node) and for checks that the addon and a plain C++ program agree bit for bit.
//
//   caravan-engine gradcheck [--seed N]
//   caravan-engine train --tokens FILE [--stages S] [model and optimizer flags]
//   caravan-engine bench [model flags] [--batch B] [--seq T] [--reps R]
//
// `train` replays a batch file written by the runtime (int32 little-endian:
// for each step, for each microbatch, tokens[B·T] then targets[B·T]) through S
// stages chained in process, with the runtime's clipping rule, and prints one
// JSON line per step; `--dump-params FILE` writes every stage's parameters in
// model order as raw fp32.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>
#include "blas.h"
#include "gradcheck.h"
#include "stage.h"
#if defined(CARAVAN_CUDA)
#include "../cuda/cuda_commands.h"
#endif

using namespace caravan;

namespace {

struct Args {
  std::map<std::string, std::string> kv;
  std::string get(const std::string& k, const std::string& fallback) const {
    auto it = kv.find(k);
    return it == kv.end() ? fallback : it->second;
  }
  int geti(const std::string& k, int fallback) const { return std::stoi(get(k, std::to_string(fallback))); }
  double getd(const std::string& k, double fallback) const { return std::stod(get(k, std::to_string(fallback))); }
};

const char* kUsage =
    "usage: caravan-engine <gradcheck|train|bench|cuda-info|cuda-check|cuda-bench> [--flag value ...]\n"
    "  model:     --vocab 256 --d 128 --layers 4 --heads 4 --kv-heads 4 --ffn 352 --max-seq 128 --tied 0\n"
    "  optimizer: --lr 3e-3 --warmup 10 --total-steps 1000 --weight-decay 0.1 --clip 1.0\n"
    "  train:     --tokens FILE --steps N --microbatches M --batch B --seq T --stages S --seed N [--dump-params FILE]\n"
    "  bench:     --batch B --seq T --reps R (also prints a plain sgemm's GFLOP/s)\n"
    "  cuda-info [--gpu N]                        the GPU the CUDA backend would use\n"
    "  cuda-check [--gpu N]                       CUDA backend against the CPU backend\n"
    "  cuda-bench --preset gpt2-124m|stage-4096|tiny [--steps N] [--warmup N] [--gpu N]\n";

ModelConfig model_from(const Args& a) {
  ModelConfig m;
  m.vocab = a.geti("vocab", m.vocab);
  m.d_model = a.geti("d", m.d_model);
  m.n_layers = a.geti("layers", m.n_layers);
  m.n_heads = a.geti("heads", m.n_heads);
  m.n_kv_heads = a.geti("kv-heads", m.n_heads);
  m.ffn_hidden = a.geti("ffn", m.ffn_hidden);
  m.max_seq = a.geti("max-seq", m.max_seq);
  m.tied_embeddings = a.geti("tied", 0) != 0;
  return m;
}

OptimConfig optim_from(const Args& a) {
  OptimConfig o;
  o.lr = (float)a.getd("lr", o.lr);
  o.warmup_steps = a.geti("warmup", o.warmup_steps);
  o.total_steps = a.geti("total-steps", o.total_steps);
  o.weight_decay = (float)a.getd("weight-decay", o.weight_decay);
  return o;
}

// Layer ranges of S stages as even as possible, earlier stages taking the remainder.
std::vector<std::pair<int, int>> split_layers(int layers, int stages) {
  if (stages < 1 || stages > layers) throw std::invalid_argument("--stages must be in [1, layers]");
  std::vector<std::pair<int, int>> r;
  int begin = 0;
  for (int s = 0; s < stages; s++) {
    int n = layers / stages + (s < layers % stages ? 1 : 0);
    r.push_back({begin, begin + n});
    begin += n;
  }
  return r;
}

int gradcheck(const Args& a) {
  int failed = 0;
  for (const GradCheckResult& r : gradcheck_all((uint64_t)a.geti("seed", 1))) {
    bool ok = r.rel_err <= r.tolerance;
    failed += ok ? 0 : 1;
    std::printf("{\"op\":\"%s\",\"input\":\"%s\",\"samples\":%d,\"rel_err\":%.3e,\"tolerance\":%.1e,\"ok\":%s}\n",
                r.op.c_str(), r.input.c_str(), r.samples, r.rel_err, r.tolerance, ok ? "true" : "false");
  }
  return failed == 0 ? 0 : 1;
}

int train(const Args& a) {
  const ModelConfig m = model_from(a);
  const OptimConfig o = optim_from(a);
  const int steps = a.geti("steps", 10), M = a.geti("microbatches", 2), B = a.geti("batch", 4),
            T = a.geti("seq", 64), S = a.geti("stages", 1);
  const double clip = a.getd("clip", 1.0);
  const std::string path = a.get("tokens", "");
  if (path.empty()) throw std::invalid_argument("train needs --tokens FILE");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open token file " + path);
  const size_t per_mb = (size_t)B * T * 2;
  std::vector<int32_t> data((size_t)steps * M * per_mb);
  f.read(reinterpret_cast<char*>(data.data()), (std::streamsize)(data.size() * sizeof(int32_t)));
  if ((size_t)f.gcount() != data.size() * sizeof(int32_t)) {
    throw std::runtime_error(path + ": expected " + std::to_string(data.size() * 4) + " bytes of batches, got " + std::to_string(f.gcount()));
  }
  std::vector<std::unique_ptr<Stage>> stages;
  for (auto [b, e] : split_layers(m.n_layers, S)) stages.push_back(std::make_unique<Stage>(m, o, b, e, (uint64_t)a.geti("seed", 1)));
  const size_t N = (size_t)B * T;
  for (int step = 0; step < steps; step++) {
    double loss_sum = 0.0;
    for (int mb = 0; mb < M; mb++) {
      const int32_t* tokens = data.data() + ((size_t)step * M + mb) * per_mb;
      const int32_t* targets = tokens + N;
      std::vector<float> act;
      for (int s = 0; s < S; s++) {
        Stage& st = *stages[s];
        if (st.is_last()) {
          loss_sum += st.forward(mb, tokens, act.data(), s == 0 ? N : act.size(), B, T, targets, N, nullptr, 0, true);
        } else {
          std::vector<float> out(st.output_len(B, T, false));
          st.forward(mb, tokens, act.data(), s == 0 ? N : act.size(), B, T, nullptr, 0, out.data(), out.size(), true);
          act = std::move(out);
        }
      }
      std::vector<float> grad;
      for (int s = S - 1; s >= 0; s--) {
        std::vector<float> gin(s == 0 ? 0 : N * m.d_model);
        stages[s]->backward(mb, grad.empty() ? nullptr : grad.data(), grad.size(), gin.data(), gin.size());
        grad = std::move(gin);
      }
    }
    // Global norm over all stages in model order, as the runtime combines it.
    double sumsq = 0.0;
    for (auto& st : stages) for (double v : st->grad_sum_squares()) sumsq += v;
    const double norm = std::sqrt(sumsq) / M;
    const double factor = clip > 0 && norm > clip ? clip / (norm + 1e-6) : 1.0;
    double lr = 0.0;
    for (auto& st : stages) lr = st->step(factor / M);
    std::printf("{\"step\":%d,\"loss\":%.17g,\"grad_norm\":%.17g,\"lr\":%.17g}\n", step, loss_sum / M, norm, lr);
  }
  const std::string dump = a.get("dump-params", "");
  if (!dump.empty()) {
    std::ofstream out(dump, std::ios::binary);
    for (auto& st : stages) out.write(reinterpret_cast<const char*>(st->params->data()), (std::streamsize)(st->params->size() * sizeof(float)));
  }
  return 0;
}

int bench(const Args& a) {
  const ModelConfig m = model_from(a);
  const int B = a.geti("batch", 8), T = a.geti("seq", 128), reps = a.geti("reps", 3);
  Stage st(m, optim_from(a), 0, m.n_layers, 1);
  const size_t N = (size_t)B * T;
  std::vector<int32_t> tokens(N), targets(N);
  for (size_t i = 0; i < N; i++) { tokens[i] = (int32_t)((i * 2654435761u) % m.vocab); targets[i] = (int32_t)((i * 40503u + 1) % m.vocab); }
  std::vector<float> logits(st.output_len(B, T, true));
  auto now = [] { return std::chrono::steady_clock::now(); };
  auto secs = [](auto t0, auto t1) { return std::chrono::duration<double>(t1 - t0).count(); };
  st.forward(0, tokens.data(), nullptr, N, B, T, nullptr, 0, logits.data(), logits.size(), false);
  auto t0 = now();
  for (int r = 0; r < reps; r++) st.forward(0, tokens.data(), nullptr, N, B, T, nullptr, 0, logits.data(), logits.size(), false);
  const double fwd = secs(t0, now()) / reps;
  t0 = now();
  for (int r = 0; r < reps; r++) {
    st.forward(r, tokens.data(), nullptr, N, B, T, targets.data(), N, nullptr, 0, true);
    st.backward(r, nullptr, 0, nullptr, 0);
    st.step(1.0);
  }
  const double train_s = secs(t0, now()) / reps;
  const int sm = 1024;
  std::vector<float> x((size_t)sm * sm, 0.5f), y((size_t)sm * sm, 0.25f), z((size_t)sm * sm);
  t0 = now();
  for (int r = 0; r < 5; r++) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, sm, sm, sm, 1.0f, x.data(), sm, y.data(), sm, 0.0f, z.data(), sm);
  const double sgemm = 2.0 * sm * sm * sm * 5 / secs(t0, now()) / 1e9;
  std::printf("{\"bench\":\"engine-driver\",\"fwd_tok_s\":%.1f,\"train_tok_s\":%.1f,\"sgemm_gflops\":%.1f}\n",
              N / fwd, N / train_s, sgemm);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // OpenMP threads spinning after each loop starve OpenBLAS's threads (half
  // the throughput on 2 cores); libgomp reads its policy before main, so set
  // it and start again once.
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);
  }
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  Args a;
  for (int i = 2; i < argc; i++) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0 || i + 1 >= argc) {
      std::fprintf(stderr, "caravan-engine: expected --flag value, got '%s'\n%s", k.c_str(), kUsage);
      return 2;
    }
    a.kv[k.substr(2)] = argv[++i];
  }
  try {
    std::string cmd = argv[1];
    if (cmd == "gradcheck") return gradcheck(a);
    if (cmd == "train") return train(a);
    if (cmd == "bench") return bench(a);
    if (cmd.rfind("cuda-", 0) == 0) {
#if defined(CARAVAN_CUDA)
      return caravan::cuda::run_cuda_command(cmd, a.kv);
#else
      std::fprintf(stderr, "caravan-engine: this build has no CUDA backend (no CUDA compiler was found when it was built)\n");
      return 2;
#endif
    }
    std::fprintf(stderr, "caravan-engine: unknown command '%s'\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "caravan-engine: %s\n", e.what());
    return 1;
  }
}
