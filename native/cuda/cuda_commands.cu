// cuda-info:  the GPU the backend would use, or why it cannot.
// cuda-check: the CUDA backend against the CPU backend on a small model
//             (loss and every gradient within bf16 tolerance, a few training
//             steps), plus bitwise repeatability and split invariance on the GPU.
// cuda-bench: timed full training steps (forward, backward, clip, AdamW) of a
//             named configuration, one JSON line.
#include "cuda_commands.h"
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include "../src/stage.h"
#include "cublas_api.h"
#include "cuda_stage.h"
#include "device.h"

namespace caravan::cuda {

namespace {
std::string arg(const std::map<std::string, std::string>& a, const std::string& k, const std::string& fallback) {
  auto it = a.find(k);
  return it == a.end() ? fallback : it->second;
}

// PaLM's model FLOPs per token for the layers a stage holds (and the head if
// it holds it), training = 3 × forward; bench/flops.ts uses the same rule.
double train_flops_per_token(const ModelConfig& m, int begin, int end, int T) {
  const double hd = m.head_dim();
  const double per_layer = m.d_model * m.n_heads * hd * 2 + m.d_model * m.n_kv_heads * hd * 2 + 3.0 * m.d_model * m.ffn_hidden;
  double matmul = (end - begin) * per_layer;
  if (end == m.n_layers) matmul += (double)m.vocab * m.d_model;
  return 3.0 * (2.0 * matmul + (end - begin) * 4.0 * T * m.d_model);
}

void fill_ids(std::vector<int32_t>& ids, int V, uint64_t salt) {
  for (size_t i = 0; i < ids.size(); i++) ids[i] = (int32_t)(((i + salt) * 2654435761ull + salt * 40503ull) % V);
}

double rel_l2(const float* a, const float* b, size_t n) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < n; i++) { diff += (double)(a[i] - b[i]) * (a[i] - b[i]); norm += (double)b[i] * b[i]; }
  return std::sqrt(diff / std::max(norm, 1e-30));
}

double clip_scale(const std::vector<std::vector<double>>& sums, int M, double max_norm) {
  double total = 0;
  for (auto& s : sums) for (double v : s) total += v;
  const double norm = std::sqrt(total) / M;
  return (max_norm > 0 && norm > max_norm ? max_norm / (norm + 1e-6) : 1.0) / M;
}

// Trains a chain of CUDA stages on a fixed batch; returns the losses.
std::vector<double> train_cuda(std::vector<std::unique_ptr<CudaStage>>& stages, const ModelConfig& m, int B, int T,
                               int steps, const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets) {
  const size_t N = (size_t)B * T;
  float *act = nullptr, *grad = nullptr, *grad2 = nullptr;
  CUDA_CHECK(cudaMalloc(&act, N * m.d_model * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&grad, N * m.d_model * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&grad2, N * m.d_model * sizeof(float)));
  std::vector<double> losses;
  for (int step = 0; step < steps; step++) {
    double loss = 0;
    // Each stage has its own stream: a stage's output is complete before the next stage reads it.
    for (size_t s = 0; s < stages.size(); s++) {
      CudaStage& st = *stages[s];
      loss += st.forward(step, tokens.data(), s == 0 ? nullptr : act, B, T, st.is_last() ? targets.data() : nullptr,
                         st.is_last() ? nullptr : act, true);
      st.synchronize();
    }
    for (size_t s = stages.size(); s-- > 0;) {
      stages[s]->backward(step, stages[s]->is_last() ? nullptr : grad, s == 0 ? nullptr : grad2);
      stages[s]->synchronize();
      std::swap(grad, grad2);
    }
    std::vector<std::vector<double>> sums;
    for (auto& st : stages) sums.push_back(st->grad_sum_squares());
    const double scale = clip_scale(sums, 1, 1.0);
    for (auto& st : stages) st->step(scale);
    losses.push_back(loss);
  }
  cudaFree(act);
  cudaFree(grad);
  cudaFree(grad2);
  return losses;
}

// One forward and backward of model m on the CPU and on the GPU from the
// same weights: prints the loss and every gradient's error; returns the
// worst gradient error, or a negative number when a check failed.
double compare_with_cpu(Stage& cpu, CudaStage& gpu_stage, const ModelConfig& m, int B, int T, const char* shape) {
  const int N = B * T;
  const double loss_tol = 1e-2, grad_tol = 5e-2;
  std::vector<int32_t> tokens(N), targets(N);
  fill_ids(tokens, m.vocab, 1);
  fill_ids(targets, m.vocab, 2);
  bool ok = true;
  std::vector<float> p;
  gpu_stage.download_params(p);
  const bool same_init = std::memcmp(p.data(), cpu.params->data(), p.size() * sizeof(float)) == 0;
  ok &= same_init;
  std::printf("{\"check\":\"same initial weights\",\"shape\":\"%s\",\"ok\":%s}\n", shape, same_init ? "true" : "false");
  const double cpu_loss = cpu.forward(0, tokens.data(), nullptr, N, B, T, targets.data(), N, nullptr, 0, true);
  cpu.backward(0, nullptr, 0, nullptr, 0);
  const double gpu_loss = gpu_stage.forward(0, tokens.data(), nullptr, B, T, targets.data(), nullptr, true);
  gpu_stage.backward(0, nullptr, nullptr);
  const double loss_err = std::fabs(gpu_loss - cpu_loss) / cpu_loss;
  ok &= loss_err <= loss_tol;
  std::printf("{\"check\":\"loss\",\"shape\":\"%s\",\"attention\":\"%s\",\"cpu\":%.6f,\"cuda\":%.6f,\"rel_err\":%.2e,\"tolerance\":%.0e,\"ok\":%s}\n",
              shape, gpu_stage.attention_kind(), cpu_loss, gpu_loss, loss_err, loss_tol, loss_err <= loss_tol ? "true" : "false");
  std::vector<float> g;
  gpu_stage.download_grads(g);
  double worst = 0;
  for (const TensorInfo& t : cpu.tensors()) {
    const double e = rel_l2(g.data() + t.offset, cpu.grads->data() + t.offset, t.numel);
    worst = std::max(worst, e);
    std::printf("{\"check\":\"gradient\",\"shape\":\"%s\",\"tensor\":\"%s\",\"rel_l2_err\":%.2e,\"ok\":%s}\n", shape,
                t.name.c_str(), e, e <= grad_tol ? "true" : "false");
  }
  ok &= worst <= grad_tol;
  cpu.zero_grad();
  gpu_stage.zero_grad();
  return ok ? worst : -1.0;
}

int cuda_check(const std::map<std::string, std::string>& a) {
  const int gpu = std::stoi(arg(a, "gpu", "0"));
  ModelConfig m;
  m.vocab = 256; m.d_model = 128; m.n_layers = 2; m.n_heads = 4; m.n_kv_heads = 2; m.ffn_hidden = 352; m.max_seq = 512;
  OptimConfig o;
  o.lr = 3e-3f; o.warmup_steps = 2; o.total_steps = 10;
  const int B = 2, T = 512, N = B * T, steps = 5;  // T = 512: several query tiles (and blocks of the GEMM path)
  const double loss_tol = 1e-2;
  std::vector<int32_t> tokens(N), targets(N);
  fill_ids(tokens, m.vocab, 1);
  fill_ids(targets, m.vocab, 2);
  bool ok = true;

  Stage cpu(m, o, 0, m.n_layers, 1);
  CudaStage gpu_stage(m, o, 0, m.n_layers, 1, gpu);
  double worst = compare_with_cpu(cpu, gpu_stage, m, B, T, "hd32-T512");
  ok &= worst >= 0;
  {
    Stage c(m, o, 0, m.n_layers, 1);
    CudaStage g(m, o, 0, m.n_layers, 1, gpu);
    g.choose_attention(CudaStage::AttentionPath::flash);
    const double e = compare_with_cpu(c, g, m, B, T, "hd32-T512");
    ok &= e >= 0;
    worst = std::max(worst, e);
  }
  // Head dims 64 and 128, sequences that end mid-tile, and both attention paths.
  for (int hd : {64, 128}) {
    ModelConfig w = m;
    w.d_model = 256; w.n_heads = 256 / hd; w.n_kv_heads = hd == 64 ? 2 : 1; w.n_layers = 1; w.max_seq = 200;
    for (bool gemm : {false, true}) {
      Stage c(w, o, 0, 1, 1);
      CudaStage g(w, o, 0, 1, 1, gpu);
      g.choose_attention(gemm ? CudaStage::AttentionPath::gemm : CudaStage::AttentionPath::flash);
      const std::string shape = "hd" + std::to_string(hd) + "-T" + std::to_string(hd == 64 ? 200 : 130);
      const double e = compare_with_cpu(c, g, w, 2, hd == 64 ? 200 : 130, shape.c_str());
      ok &= e >= 0;
      worst = std::max(worst, e);
    }
  }

  // A few steps on both backends from the same start.
  std::vector<double> cpu_losses;
  for (int step = 0; step < steps; step++) {
    cpu_losses.push_back(cpu.forward(step, tokens.data(), nullptr, N, B, T, targets.data(), N, nullptr, 0, true));
    cpu.backward(step, nullptr, 0, nullptr, 0);
    cpu.step(clip_scale({cpu.grad_sum_squares()}, 1, 1.0));
  }
  // Per attention path: training against the CPU's losses, then the same
  // run again and the model split in two, which must give the same bits.
  for (auto path : {CudaStage::AttentionPath::gemm, CudaStage::AttentionPath::flash}) {
    const char* name = path == CudaStage::AttentionPath::flash ? "flash" : "gemm";
    auto stages = [&](std::vector<std::pair<int, int>> ranges) {
      std::vector<std::unique_ptr<CudaStage>> out;
      for (auto [b, e] : ranges) {
        out.push_back(std::make_unique<CudaStage>(m, o, b, e, 1, gpu));
        out.back()->choose_attention(path);
      }
      return out;
    };
    auto one = stages({{0, m.n_layers}});
    const std::vector<double> cuda_losses = train_cuda(one, m, B, T, steps, tokens, targets);
    double train_err = 0;
    for (int s = 0; s < steps; s++) train_err = std::max(train_err, std::fabs(cuda_losses[s] - cpu_losses[s]) / cpu_losses[s]);
    ok &= train_err <= 2 * loss_tol;
    std::printf("{\"check\":\"training losses\",\"attention\":\"%s\",\"cpu_first\":%.5f,\"cpu_last\":%.5f,\"cuda_first\":%.5f,"
                "\"cuda_last\":%.5f,\"max_rel_err\":%.2e,\"tolerance\":%.0e,\"ok\":%s}\n",
                name, cpu_losses.front(), cpu_losses.back(), cuda_losses.front(), cuda_losses.back(), train_err,
                2 * loss_tol, train_err <= 2 * loss_tol ? "true" : "false");
    std::vector<float> ref;
    one[0]->download_params(ref);
    auto again = stages({{0, m.n_layers}});
    auto split = stages({{0, 1}, {1, 2}});
    const bool repeat_losses = train_cuda(again, m, B, T, steps, tokens, targets) == cuda_losses;
    const bool split_losses = train_cuda(split, m, B, T, steps, tokens, targets) == cuda_losses;
    std::vector<float> x, y0, y1;
    again[0]->download_params(x);
    split[0]->download_params(y0);
    split[1]->download_params(y1);
    y0.insert(y0.end(), y1.begin(), y1.end());
    const bool repeat = repeat_losses && x == ref, split_ok = split_losses && y0 == ref;
    ok &= repeat && split_ok;
    std::printf("{\"check\":\"bitwise repeatable\",\"attention\":\"%s\",\"ok\":%s}\n"
                "{\"check\":\"1 stage vs 2 stages bitwise\",\"attention\":\"%s\",\"ok\":%s}\n",
                name, repeat ? "true" : "false", name, split_ok ? "true" : "false");
  }
  std::printf("{\"check\":\"cuda-vs-cpu\",\"gpu\":\"%s\",\"cublas\":\"%s\",\"worst_grad_rel_err\":%.2e,\"ok\":%s}\n",
              gpu_stage.device().name.c_str(), cublas().library.c_str(), worst, ok ? "true" : "false");
  return ok ? 0 : 1;
}

int cuda_bench(const std::map<std::string, std::string>& a) {
  const int gpu = std::stoi(arg(a, "gpu", "0"));
  const std::string preset = arg(a, "preset", "gpt2-124m");
  const int steps = std::stoi(arg(a, "steps", "10")), warmup = std::stoi(arg(a, "warmup", "3"));
  ModelConfig m;
  int B, T, begin, end;
  if (preset == "gpt2-124m") {  // Llama-style at GPT-2 small's size (llm.c's padded vocab)
    m.vocab = 50304; m.d_model = 768; m.n_layers = 12; m.n_heads = 12; m.n_kv_heads = 12; m.ffn_hidden = 2048;
    m.max_seq = 1024; B = 16; T = 1024; begin = 0; end = 12;
  } else if (preset == "stage-4096") {  // one middle pipeline stage of a large model
    m.vocab = 32000; m.d_model = 4096; m.n_layers = 4; m.n_heads = 32; m.n_kv_heads = 32; m.ffn_hidden = 11008;
    m.max_seq = 2048; B = 4; T = 2048; begin = 1; end = 3;
  } else if (preset == "tiny") {
    m.vocab = 256; m.d_model = 128; m.n_layers = 4; m.n_heads = 4; m.n_kv_heads = 2; m.ffn_hidden = 352;
    m.max_seq = 128; B = 8; T = 128; begin = 0; end = 4;
  } else {
    throw std::invalid_argument("unknown preset '" + preset + "': expected gpt2-124m, stage-4096 or tiny");
  }
  OptimConfig o;
  o.lr = 3e-4f;
  CudaStage st(m, o, begin, end, 1, gpu);
  const size_t N = (size_t)B * T;
  std::vector<int32_t> tokens(N), targets(N);
  fill_ids(tokens, m.vocab, 3);
  fill_ids(targets, m.vocab, 4);
  float *acts = nullptr, *out = nullptr, *grad = nullptr, *grad_in = nullptr;
  if (!st.is_first() || !st.is_last()) {
    // A middle stage's input and output gradient: fixed pseudo-random values.
    std::vector<float> host(N * m.d_model);
    for (size_t i = 0; i < host.size(); i++) host[i] = (float)((int)((i * 2654435761ull) % 2001) - 1000) / 1000.0f;
    for (float** p : {&acts, &out, &grad, &grad_in}) CUDA_CHECK(cudaMalloc(p, host.size() * sizeof(float)));
    CUDA_CHECK(cudaMemcpy(acts, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
    for (float& v : host) v *= 1e-3f;
    CUDA_CHECK(cudaMemcpy(grad, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  double loss = 0;
  auto one_step = [&](int i) {
    loss = st.forward(i, st.is_first() ? tokens.data() : nullptr, acts, B, T, st.is_last() ? targets.data() : nullptr,
                      st.is_last() ? nullptr : out, true);
    st.backward(i, st.is_last() ? nullptr : grad, st.is_first() ? nullptr : grad_in);
    st.step(clip_scale({st.grad_sum_squares()}, 1, 1.0));
  };
  for (int i = 0; i < warmup; i++) one_step(i);
  st.synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; i++) one_step(warmup + i);
  st.synchronize();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps;
  // Where a step's time goes: the same steps again, synchronized between
  // phases (not part of the timing above), attention bracketed by events.
  double fwd_ms = 0, bwd_ms = 0, opt_ms = 0, attn_ms = 0;
  st.set_profiling(true);
  for (int i = 0; i < steps; i++) {
    const int id = warmup + steps + i;
    auto t = std::chrono::steady_clock::now();
    auto lap = [&](double& into) {
      st.synchronize();
      const auto now = std::chrono::steady_clock::now();
      into += std::chrono::duration<double, std::milli>(now - t).count() / steps;
      t = now;
    };
    st.forward(id, st.is_first() ? tokens.data() : nullptr, acts, B, T, st.is_last() ? targets.data() : nullptr,
               st.is_last() ? nullptr : out, true);
    lap(fwd_ms);
    st.backward(id, st.is_last() ? nullptr : grad, st.is_first() ? nullptr : grad_in);
    lap(bwd_ms);
    st.step(clip_scale({st.grad_sum_squares()}, 1, 1.0));
    lap(opt_ms);
  }
  attn_ms = st.attention_ms() / steps;
  st.set_profiling(false);
  const double tok_s = N / secs;
  const double flops = train_flops_per_token(m, begin, end, T) * tok_s;
  const double peak = st.device().peak_bf16_tflops;
  std::printf("{\"bench\":\"cuda-ours\",\"config\":\"%s\",\"gpu\":\"%s\",\"batch\":%d,\"seq\":%d,\"step_ms\":%.2f,"
              "\"tok_s\":%.0f,\"tflops\":%.1f,\"peak_tflops\":%.1f,\"mfu_pct\":%.2f,\"loss\":%.4f,"
              "\"attention\":\"%s\",\"phases_ms\":{\"forward\":%.2f,\"backward\":%.2f,\"clip_adamw\":%.2f,\"attention\":%.2f}}\n",
              preset.c_str(), st.device().name.c_str(), B, T, secs * 1e3, tok_s, flops / 1e12, peak,
              peak > 0 ? 100.0 * flops / (peak * 1e12) : 0.0, loss, st.attention_kind(), fwd_ms, bwd_ms, opt_ms, attn_ms);
  for (float* p : {acts, out, grad, grad_in}) if (p) cudaFree(p);
  return 0;
}
}  // namespace

int run_cuda_command(const std::string& command, const std::map<std::string, std::string>& args) {
  if (command == "cuda-info") {
    std::printf("%s\n", to_json(open_device(std::stoi(arg(args, "gpu", "0")))).c_str());
    return 0;
  }
  if (command == "cuda-check") return cuda_check(args);
  if (command == "cuda-bench") return cuda_bench(args);
  throw std::invalid_argument("unknown command '" + command + "'");
}

}  // namespace caravan::cuda
