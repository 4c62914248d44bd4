// The Node-API surface of the engine: one Stage class and a few module
// functions. Inputs are read straight from the caller's typed arrays and
// outputs are computed straight into new ArrayBuffers; parameter and
// optimizer arenas are exposed as zero-copy views that keep the arena alive.
#include <napi.h>
#include <malloc.h>
#include <omp.h>
#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <mutex>
#include <vector>
#include "addon_args.h"
#include "blas.h"
#include "gradcheck.h"
#include "ops.h"
#include "stage.h"
#ifdef CARAVAN_CUDA
#include "../cuda/cuda_addon.h"
#endif

using namespace caravan;
using namespace caravan::addon;


// The OpenMP thread count setThreads fixed; a call on a pool thread sets it
// there too (OpenMP's count is per calling thread, and the sums depend on it).
static std::atomic<int> g_threads{0};

// One engine computation at a time in this process. OpenBLAS's thread count is
// process-wide (attention sets it to 1 for its small GEMMs and back) and the
// sums' order depends on it, so two stages computing at once — hosts sharing
// a process (`caravan host --count`) — would each get other bits than alone.
static std::mutex g_compute;

// One engine computation, ready to run: `run` computes (returning the loss of
// a last stage's forward, else 0) into buffers that `keep` holds alive;
// `value` is what the call gives back (the output array, null, or undefined),
// unless `loss` says the result is the number `run` returns.
struct PreparedCall {
  std::function<double()> run;
  Napi::Value value;
  bool loss = false;
  std::vector<Napi::Value> keep;
};

// A computation on libuv's thread pool, so the host's event loop goes on
// reading and sending frames while the stage computes. It resolves with
// {value, deviceMs} (deviceMs: how long the computation itself took) or
// rejects with the engine's error. `busy` marks the stage taken meanwhile.
class StageCall : public Napi::AsyncWorker {
 public:
  StageCall(Napi::Env env, PreparedCall call, Napi::Object stage, std::atomic<bool>* busy)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), run_(std::move(call.run)), loss_(call.loss), busy_(busy), threads_(g_threads.load()) {
    keep_.push_back(Napi::Persistent(stage));
    if (call.value.IsObject()) value_ = Napi::Persistent(call.value.As<Napi::Object>());
    else returns_null_ = call.value.IsNull();
    for (auto& v : call.keep) if (v.IsObject()) keep_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    if (threads_ > 0) omp_set_num_threads(threads_);
    std::lock_guard<std::mutex> one_at_a_time(g_compute);
    auto t0 = std::chrono::steady_clock::now();
    try {
      result_ = run_();
    } catch (const std::exception& e) {
      SetError(e.what());
    }
    ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }

  void OnOK() override {
    Napi::Env env = Env();
    busy_->store(false);
    Napi::Object out = Napi::Object::New(env);
    out.Set("value", loss_ ? Napi::Number::New(env, result_) : !value_.IsEmpty() ? value_.Value() : returns_null_ ? env.Null() : env.Undefined());
    out.Set("deviceMs", Napi::Number::New(env, ms_));
    deferred_.Resolve(out);
  }

  void OnError(const Napi::Error& e) override {
    busy_->store(false);
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<double()> run_;
  bool loss_;
  bool returns_null_ = false;
  std::atomic<bool>* busy_;
  int threads_;
  double result_ = 0, ms_ = 0;
  Napi::ObjectReference value_;
  std::vector<Napi::ObjectReference> keep_;
};

class StageWrap : public Napi::ObjectWrap<StageWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Stage", {
      InstanceMethod("forward", &StageWrap::Forward),
      InstanceMethod("backward", &StageWrap::Backward),
      InstanceMethod("backwardInput", &StageWrap::BackwardInput),
      InstanceMethod("backwardWeight", &StageWrap::BackwardWeight),
      InstanceMethod("forwardAsync", &StageWrap::ForwardAsync),
      InstanceMethod("backwardAsync", &StageWrap::BackwardAsync),
      InstanceMethod("backwardInputAsync", &StageWrap::BackwardInputAsync),
      InstanceMethod("backwardWeightAsync", &StageWrap::BackwardWeightAsync),
      InstanceMethod("stashedBytes", &StageWrap::StashedBytes),
      InstanceMethod("stepWithUndo", &StageWrap::StepWithUndo),
      InstanceMethod("undoStep", &StageWrap::UndoStep),
      InstanceMethod("dropUndo", &StageWrap::DropUndo),
      InstanceMethod("gradSumSquares", &StageWrap::GradSumSquares),
      InstanceMethod("step", &StageWrap::Step),
      InstanceMethod("zeroGrad", &StageWrap::ZeroGrad),
      InstanceMethod("tensors", &StageWrap::Tensors),
      InstanceMethod("arena", &StageWrap::ArenaView),
      InstanceMethod("setArena", &StageWrap::SetArena),
      InstanceMethod("stashed", &StageWrap::Stashed),
      InstanceMethod("drop", &StageWrap::Drop),
      InstanceAccessor("optimizerStep", &StageWrap::GetOptimizerStep, &StageWrap::SetOptimizerStep),
      InstanceAccessor("inWidth", &StageWrap::GetInWidth, nullptr),
      InstanceAccessor("outWidth", &StageWrap::GetOutWidth, nullptr),
      InstanceAccessor("needsTokens", &StageWrap::GetNeedsTokens, nullptr),
    });
  }

  StageWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<StageWrap>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) throw Napi::TypeError::New(env, "new Stage({model, optim, layerBegin, layerEnd, seed}) expects an object");
    Napi::Object o = info[0].As<Napi::Object>();
    if (!o.Get("model").IsObject()) throw Napi::TypeError::New(env, "model config is required");
    ModelConfig model = model_from(o.Get("model").As<Napi::Object>());
    OptimConfig optim = o.Get("optim").IsObject() ? optim_from(o.Get("optim").As<Napi::Object>()) : OptimConfig{};
    int begin = int_field(o, "stage", "layerBegin", true, 0);
    int end = int_field(o, "stage", "layerEnd", true, 0);
    double seed = number_field(o, "stage", "seed", false, 0);
    if (seed < 0 || seed != std::floor(seed)) throw Napi::TypeError::New(env, "seed must be a non-negative integer");
    try {
      stage_ = std::make_unique<Stage>(model, optim, begin, end, (uint64_t)seed);
    } catch (const std::exception& e) {
      throw Napi::Error::New(env, e.what());
    }
  }

 private:
  // forward(mb, input, B, T, targets|null, train, tokens|null) → loss (number) | Float32Array
  // tokens: the microbatch's token ids, for a non-first stage that needs them
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    EnsureIdle(info);
    return RunNow(info.Env(), PrepareForward(info));
  }
  // forwardAsync(…forward's arguments) → Promise<{value, deviceMs}>
  Napi::Value ForwardAsync(const Napi::CallbackInfo& info) {
    EnsureIdle(info);
    return RunOffLoop(info, PrepareForward(info));
  }

  PreparedCall PrepareForward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Stage& s = *stage_;
    const int64_t mb = microbatch_id(info[0]);
    const int B = dim(info[2], "B"), T = dim(info[3], "T");
    const bool train = info[5].ToBoolean().Value();
    const std::string where = s.describe() + ", microbatch " + std::to_string(mb);
    const int32_t* tokens = nullptr;
    const float* acts = nullptr;
    size_t input_len = 0;
    if (s.is_first()) {
      if (!is_typed(info[1], napi_int32_array)) throw Napi::TypeError::New(env, where + ": stage 0 takes token ids as an Int32Array, got " + typed_name(info[1]));
      auto a = info[1].As<Napi::Int32Array>();
      tokens = data_of(a);
      input_len = a.ElementLength();
    } else {
      if (!is_typed(info[1], napi_float32_array)) throw Napi::TypeError::New(env, where + ": this stage takes activations as a Float32Array, got " + typed_name(info[1]));
      auto a = info[1].As<Napi::Float32Array>();
      acts = data_of(a);
      input_len = a.ElementLength();
      if (s.needs_tokens()) {
        if (!is_typed(info[6], napi_int32_array)) throw Napi::TypeError::New(env, where + ": this stage re-embeds tokens at its bottleneck and needs the microbatch's token ids as an Int32Array, got " + typed_name(info[6]));
        auto ids = info[6].As<Napi::Int32Array>();
        if (ids.ElementLength() != (size_t)B * T) throw Napi::RangeError::New(env, where + ": expected token ids of shape [" + std::to_string(B) + "," + std::to_string(T) + "], got " + std::to_string(ids.ElementLength()) + " values");
        tokens = data_of(ids);
      }
    }
    const int32_t* targets = nullptr;
    size_t targets_len = 0;
    if (!info[4].IsNull() && !info[4].IsUndefined()) {
      if (!is_typed(info[4], napi_int32_array)) throw Napi::TypeError::New(env, where + ": targets must be an Int32Array, got " + typed_name(info[4]));
      auto t = info[4].As<Napi::Int32Array>();
      targets = data_of(t);
      targets_len = t.ElementLength();
    }
    // Shapes are checked before the output is allocated, so a wrong B or T
    // is an error rather than a huge allocation.
    guarded(env, [&] { s.check_forward(mb, tokens, acts, input_len, B, T, targets, targets_len, train); return 0; });
    PreparedCall call;
    call.keep = {info[1], info[4], info[6]};
    Stage* st = &s;
    if (s.is_last() && targets) {
      call.loss = true;
      call.value = env.Undefined();
      call.run = [=] { return st->forward(mb, tokens, acts, input_len, B, T, targets, targets_len, nullptr, 0, train, true); };
      return call;
    }
    const size_t n = s.output_len(B, T, s.is_last());
    Napi::Float32Array out = Napi::Float32Array::New(env, n);
    float* dst = out.Data();
    call.value = out;
    call.run = [=] { st->forward(mb, tokens, acts, input_len, B, T, targets, targets_len, dst, n, train, true); return 0.0; };
    return call;
  }

  // Runs a prepared computation here and now; engine errors become JS errors.
  static Napi::Value RunNow(Napi::Env env, PreparedCall call) {
    double r = guarded(env, [&] { std::lock_guard<std::mutex> one_at_a_time(g_compute); return call.run(); });
    return call.loss ? Napi::Number::New(env, r) : call.value;
  }

  // Starts a prepared computation on the thread pool: a Promise of {value, deviceMs}.
  Napi::Value RunOffLoop(const Napi::CallbackInfo& info, PreparedCall call) {
    auto* worker = new StageCall(info.Env(), std::move(call), info.This().As<Napi::Object>(), &busy_);
    Napi::Promise promise = worker->Promise();
    busy_.store(true);
    worker->Queue();
    return promise;
  }

  // An engine call while another runs on the pool would race it: a clear error instead.
  void EnsureIdle(const Napi::CallbackInfo& info) {
    if (busy_.load()) throw Napi::Error::New(info.Env(), stage_->describe() + ": a computation is still running off the event loop; wait for its promise before calling the stage again");
  }

  // backward(mb, gradOut|null) → Float32Array gradIn | null (stage 0)
  Napi::Value Backward(const Napi::CallbackInfo& info) { EnsureIdle(info); return RunNow(info.Env(), PrepareBackward(info, false)); }
  // backwardInput(mb, gradOut|null): as backward, without the weight gradients (B)
  Napi::Value BackwardInput(const Napi::CallbackInfo& info) { EnsureIdle(info); return RunNow(info.Env(), PrepareBackward(info, true)); }
  // backwardWeight(mb): the weight gradients of a microbatch whose B has run (W)
  Napi::Value BackwardWeight(const Napi::CallbackInfo& info) { EnsureIdle(info); return RunNow(info.Env(), PrepareWeight(info)); }
  // The same three off the event loop: Promise<{value, deviceMs}>.
  Napi::Value BackwardAsync(const Napi::CallbackInfo& info) { EnsureIdle(info); return RunOffLoop(info, PrepareBackward(info, false)); }
  Napi::Value BackwardInputAsync(const Napi::CallbackInfo& info) { EnsureIdle(info); return RunOffLoop(info, PrepareBackward(info, true)); }
  Napi::Value BackwardWeightAsync(const Napi::CallbackInfo& info) { EnsureIdle(info); return RunOffLoop(info, PrepareWeight(info)); }

  PreparedCall PrepareWeight(const Napi::CallbackInfo& info) {
    const int64_t mb = microbatch_id(info[0]);
    Stage* st = stage_.get();
    PreparedCall call;
    call.value = info.Env().Undefined();
    call.run = [=] { st->backward_weight(mb); return 0.0; };
    return call;
  }

  Napi::Value StashedBytes(const Napi::CallbackInfo& info) {
    EnsureIdle(info);
    return Napi::Number::New(info.Env(), (double)stage_->stashed_bytes());
  }

  PreparedCall PrepareBackward(const Napi::CallbackInfo& info, bool split) {
    Napi::Env env = info.Env();
    Stage& s = *stage_;
    const int64_t mb = microbatch_id(info[0]);
    const float* grad = nullptr;
    size_t grad_len = 0;
    if (!info[1].IsNull() && !info[1].IsUndefined()) {
      if (!is_typed(info[1], napi_float32_array)) throw Napi::TypeError::New(env, s.describe() + ", microbatch " + std::to_string(mb) + ": gradient must be a Float32Array, got " + typed_name(info[1]));
      auto g = info[1].As<Napi::Float32Array>();
      grad = data_of(g);
      grad_len = g.ElementLength();
    }
    Stage* st = &s;
    PreparedCall call;
    call.keep = {info[1]};
    float* dst = nullptr;
    size_t n = 0;
    if (s.is_first()) {
      call.value = env.Null();
    } else {
      int B = 0, T = 0;
      n = s.stash_shape(mb, &B, &T) ? (size_t)B * T * s.in_width() : 0;
      Napi::Float32Array out = Napi::Float32Array::New(env, n);
      dst = out.Data();
      call.value = out;
    }
    call.run = [=] {
      if (split) st->backward_input(mb, grad, grad_len, dst, n);
      else st->backward(mb, grad, grad_len, dst, n);
      return 0.0;
    };
    return call;
  }

  Napi::Value GradSumSquares(const Napi::CallbackInfo& info) {
    EnsureIdle(info);
    std::vector<double> ss = stage_->grad_sum_squares();
    Napi::Float64Array out = Napi::Float64Array::New(info.Env(), ss.size());
    std::copy(ss.begin(), ss.end(), out.Data());
    return out;
  }

  static double grad_scale(const Napi::CallbackInfo& info, const char* method) {
    if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(method) + "(gradScale) expects a number");
    double scale = info[0].As<Napi::Number>().DoubleValue();
    if (!std::isfinite(scale) || scale < 0) throw Napi::RangeError::New(info.Env(), "gradScale must be finite and >= 0");
    return scale;
  }

  Napi::Value Step(const Napi::CallbackInfo& info) {
    EnsureIdle(info);
    return Napi::Number::New(info.Env(), stage_->step(grad_scale(info, "step")));
  }

  Napi::Value StepWithUndo(const Napi::CallbackInfo& info) {
    EnsureIdle(info);
    const double scale = grad_scale(info, "stepWithUndo");
    return Napi::Number::New(info.Env(), guarded(info.Env(), [&] { return stage_->step_with_undo(scale); }));
  }

  Napi::Value UndoStep(const Napi::CallbackInfo& info) {
    EnsureIdle(info);
    guarded(info.Env(), [&] { stage_->undo_step(); return 0; });
    return info.Env().Undefined();
  }

  Napi::Value DropUndo(const Napi::CallbackInfo& info) {
    EnsureIdle(info);
    stage_->drop_undo();
    return info.Env().Undefined();
  }

  Napi::Value ZeroGrad(const Napi::CallbackInfo& info) {
    EnsureIdle(info);
    stage_->zero_grad();
    return info.Env().Undefined();
  }

  Napi::Value Tensors(const Napi::CallbackInfo& info) { return tensor_list(info.Env(), stage_->tensors()); }

  // arena('params'|'grads'|'exp_avg'|'exp_avg_sq') → a Float32Array over the
  // engine's own memory; the view holds a reference that keeps it alive.
  Napi::Value ArenaView(const Napi::CallbackInfo& info) {
    EnsureIdle(info);
    Napi::Env env = info.Env();
    Arena a = arena_named(env, info[0]);
    auto* keep = new Arena(a);
    Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, a->data(), a->size() * sizeof(float),
                                                   [](Napi::Env, void*, Arena* k) { delete k; }, keep);
    return Napi::Float32Array::New(env, a->size(), buf, 0);
  }

  // setArena(kind, Float32Array): overwrites a whole arena (state loading).
  Napi::Value SetArena(const Napi::CallbackInfo& info) {
    EnsureIdle(info);
    Napi::Env env = info.Env();
    Arena a = arena_named(env, info[0]);
    if (!is_typed(info[1], napi_float32_array)) throw Napi::TypeError::New(env, "setArena expects a Float32Array, got " + std::string(typed_name(info[1])));
    auto src = info[1].As<Napi::Float32Array>();
    if (src.ElementLength() != a->size()) throw Napi::RangeError::New(env, stage_->describe() + ": setArena needs " + std::to_string(a->size()) + " floats, got " + std::to_string(src.ElementLength()));
    std::copy(src.Data(), src.Data() + a->size(), a->data());
    stage_->drop_undo();  // a saved step would restore over the new state
    return env.Undefined();
  }

  Arena arena_named(Napi::Env env, const Napi::Value& kind) {
    std::string which = kind.IsString() ? kind.As<Napi::String>().Utf8Value() : "";
    if (which == "params") return stage_->params;
    if (which == "grads") return stage_->grads;
    if (which == "exp_avg") return stage_->exp_avg;
    if (which == "exp_avg_sq") return stage_->exp_avg_sq;
    throw Napi::TypeError::New(env, "arena must be one of params, grads, exp_avg, exp_avg_sq; got '" + which + "'");
  }

  Napi::Value Stashed(const Napi::CallbackInfo& info) {
    EnsureIdle(info);
    auto ids = stage_->stashed();
    Napi::Array arr = Napi::Array::New(info.Env(), ids.size());
    for (size_t i = 0; i < ids.size(); i++) arr.Set(i, Napi::Number::New(info.Env(), (double)ids[i]));
    return arr;
  }

  Napi::Value Drop(const Napi::CallbackInfo& info) {
    EnsureIdle(info);
    return Napi::Boolean::New(info.Env(), stage_->drop(microbatch_id(info[0])));
  }

  Napi::Value GetInWidth(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), stage_->in_width()); }
  Napi::Value GetOutWidth(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), stage_->out_width()); }
  Napi::Value GetNeedsTokens(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), stage_->needs_tokens()); }

  Napi::Value GetOptimizerStep(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), stage_->optimizer_step);
  }

  void SetOptimizerStep(const Napi::CallbackInfo& info, const Napi::Value& v) {
    if (!v.IsNumber()) throw Napi::TypeError::New(info.Env(), "optimizerStep must be a number");
    double d = v.As<Napi::Number>().DoubleValue();
    if (d < 0 || d != std::floor(d) || d > 2147483647.0) throw Napi::RangeError::New(info.Env(), "optimizerStep must be a non-negative integer");
    stage_->optimizer_step = (int)d;
  }

  std::unique_ptr<Stage> stage_;
  std::atomic<bool> busy_{false};  // a computation runs on the pool (RunOffLoop)
};

static Napi::Value GradCheck(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t seed = info[0].IsNumber() ? (uint64_t)info[0].As<Napi::Number>().Int64Value() : 1;
  auto results = gradcheck_all(seed);
  Napi::Array arr = Napi::Array::New(env, results.size());
  for (size_t i = 0; i < results.size(); i++) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("op", results[i].op);
    o.Set("input", results[i].input);
    o.Set("samples", results[i].samples);
    o.Set("relErr", results[i].rel_err);
    o.Set("tolerance", results[i].tolerance);
    arr.Set(i, o);
  }
  return arr;
}

// sgemm(M, N, K, reps) → GFLOP/s of a plain row-major cblas_sgemm, the
// machine's practical fp32 peak for the benchmark.
static Napi::Value SgemmGflops(const Napi::CallbackInfo& info) {
  const int M = dim(info[0], "M"), N = dim(info[1], "N"), K = dim(info[2], "K"), reps = dim(info[3], "reps");
  std::vector<float> a((size_t)M * K, 0.5f), b((size_t)K * N, 0.25f), c((size_t)M * N);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a.data(), K, b.data(), N, 0.0f, c.data(), N);
  auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; r++) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a.data(), K, b.data(), N, 0.0f, c.data(), N);
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return Napi::Number::New(info.Env(), 2.0 * M * N * K * reps / s / 1e9);
}

// setThreads(n): OpenBLAS and OpenMP thread counts for this process. OpenBLAS
// sums in a different order with a different thread count, so a run fixes it
// for every host to keep its bits independent of the machine.
static Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  const int n = dim(info[0], "threads");
  openblas_set_num_threads(n);
  omp_set_num_threads(n);
  g_threads.store(n);
  return info.Env().Undefined();
}

// tuneAllocator(): keeps freed large blocks in glibc's heap instead of
// returning them to the kernel. Every frame on the hot path is a fresh
// megabyte-sized buffer; with the default mmap threshold each one is mapped
// and faulted in anew, which measured 160 MB/s for allocate-and-copy on a VM
// here, against 2-3 GB/s for encoding a frame once the heap keeps its pages.
static Napi::Value TuneAllocator(const Napi::CallbackInfo& info) {
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 << 20);
  return info.Env().Undefined();
}

// mxint8RoundTrip(Float32Array x[rows, width], width): the engine's in-model
// quantizer, in place, so tests can hold the wire codec
// (runtime/codecs/mxint8.ts) to the same bits.
static Napi::Value Mxint8RoundTrip(const Napi::CallbackInfo& info) {
  if (!is_typed(info[0], napi_float32_array)) throw Napi::TypeError::New(info.Env(), "mxint8RoundTrip expects a Float32Array");
  auto a = info[0].As<Napi::Float32Array>();
  const int width = dim(info[1], "width");
  if (a.ElementLength() % width != 0) throw Napi::RangeError::New(info.Env(), "mxint8RoundTrip: length is not a multiple of width");
  mxint8_round_trip(a.Data(), a.ElementLength() / width, width);
  return info.Env().Undefined();
}

static Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("backend", "cpu");
#ifdef CARAVAN_CUDA
  o.Set("cuda", true);
#else
  o.Set("cuda", false);
#endif
  o.Set("blas", openblas_get_config());
  o.Set("blasThreads", openblas_get_num_threads());
  o.Set("ompThreads", omp_get_max_threads());
  return o;
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Stage", StageWrap::Define(env));
  exports.Set("gradcheck", Napi::Function::New(env, GradCheck));
  exports.Set("sgemmGflops", Napi::Function::New(env, SgemmGflops));
  exports.Set("info", Napi::Function::New(env, Info));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("tuneAllocator", Napi::Function::New(env, TuneAllocator));
  exports.Set("mxint8RoundTrip", Napi::Function::New(env, Mxint8RoundTrip));
#ifdef CARAVAN_CUDA
  caravan::cuda::register_addon(env, exports);
#endif
  return exports;
}

NODE_API_MODULE(caravan_engine, Init)
