// The Node-API surface of the engine: one Stage class and a few module
// functions. Inputs are read straight from the caller's typed arrays and
// outputs are computed straight into new ArrayBuffers; parameter and
// optimizer arenas are exposed as zero-copy views that keep the arena alive.
#include <napi.h>
#include <malloc.h>
#include <omp.h>
#include <chrono>
#include <cmath>
#include <vector>
#include "blas.h"
#include "gradcheck.h"
#include "ops.h"
#include "stage.h"

using namespace caravan;

namespace {

double number_field(const Napi::Object& o, const char* object_name, const char* key, bool required, double fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) {
    if (required) throw Napi::TypeError::New(o.Env(), std::string(object_name) + "." + key + " is required");
    return fallback;
  }
  if (!v.IsNumber() || !std::isfinite(v.As<Napi::Number>().DoubleValue())) {
    throw Napi::TypeError::New(o.Env(), std::string(object_name) + "." + key + " must be a finite number");
  }
  return v.As<Napi::Number>().DoubleValue();
}

int int_field(const Napi::Object& o, const char* object_name, const char* key, bool required, int fallback) {
  double d = number_field(o, object_name, key, required, fallback);
  if (d != std::floor(d) || std::fabs(d) > 2147483647.0) {
    throw Napi::TypeError::New(o.Env(), std::string(object_name) + "." + key + " must be an integer, got " + std::to_string(d));
  }
  return (int)d;
}

ModelConfig model_from(const Napi::Object& o) {
  ModelConfig m;
  m.vocab = int_field(o, "model", "vocabSize", true, 0);
  m.d_model = int_field(o, "model", "dModel", true, 0);
  m.n_layers = int_field(o, "model", "nLayers", true, 0);
  m.n_heads = int_field(o, "model", "nHeads", true, 0);
  m.n_kv_heads = int_field(o, "model", "nKvHeads", false, m.n_heads);
  m.ffn_hidden = int_field(o, "model", "ffnHidden", true, 0);
  m.max_seq = int_field(o, "model", "maxSeqLen", true, 0);
  m.rope_theta = (float)number_field(o, "model", "ropeTheta", false, 10000.0);
  m.norm_eps = (float)number_field(o, "model", "normEps", false, 1e-5);
  Napi::Value tied = o.Get("tiedEmbeddings");
  m.tied_embeddings = tied.IsBoolean() && tied.As<Napi::Boolean>().Value();
  Napi::Value bottlenecks = o.Get("bottlenecks");
  if (!bottlenecks.IsUndefined() && !bottlenecks.IsNull()) {
    if (!bottlenecks.IsArray()) throw Napi::TypeError::New(o.Env(), "model.bottlenecks must be an array of {at, width}");
    Napi::Array list = bottlenecks.As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Value b = list.Get(i);
      if (!b.IsObject()) throw Napi::TypeError::New(o.Env(), "model.bottlenecks[" + std::to_string(i) + "] must be an object {at, width}");
      const std::string name = "model.bottlenecks[" + std::to_string(i) + "]";
      m.bottlenecks.push_back({int_field(b.As<Napi::Object>(), name.c_str(), "at", true, 0),
                               int_field(b.As<Napi::Object>(), name.c_str(), "width", true, 0)});
    }
  }
  Napi::Value quant = o.Get("bottleneckQuant");
  if (!quant.IsUndefined() && !quant.IsNull()) {
    const std::string q = quant.IsString() ? quant.As<Napi::String>().Utf8Value() : "";
    if (q != "none" && q != "mxint8") throw Napi::TypeError::New(o.Env(), "model.bottleneckQuant must be 'none' or 'mxint8'");
    m.bottleneck_mxint8 = q == "mxint8";
  }
  Napi::Value embed = o.Get("bottleneckEmbed");
  m.bottleneck_embed = embed.IsBoolean() && embed.As<Napi::Boolean>().Value();
  return m;
}

OptimConfig optim_from(const Napi::Object& o) {
  OptimConfig c;
  c.lr = (float)number_field(o, "optim", "lr", false, c.lr);
  c.min_lr_ratio = (float)number_field(o, "optim", "minLrRatio", false, c.min_lr_ratio);
  c.warmup_steps = int_field(o, "optim", "warmupSteps", false, c.warmup_steps);
  c.total_steps = int_field(o, "optim", "totalSteps", false, c.total_steps);
  c.beta1 = (float)number_field(o, "optim", "beta1", false, c.beta1);
  c.beta2 = (float)number_field(o, "optim", "beta2", false, c.beta2);
  c.eps = (float)number_field(o, "optim", "eps", false, c.eps);
  c.weight_decay = (float)number_field(o, "optim", "weightDecay", false, c.weight_decay);
  return c;
}

int64_t microbatch_id(const Napi::Value& v) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), "microbatch id must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != std::floor(d) || d < 0 || d > 9007199254740991.0) {
    throw Napi::TypeError::New(v.Env(), "microbatch id must be a non-negative safe integer, got " + v.ToString().Utf8Value());
  }
  return (int64_t)d;
}

int dim(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string(name) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != std::floor(d) || d < 1 || d > 1e9) throw Napi::TypeError::New(v.Env(), std::string(name) + " must be a positive integer, got " + v.ToString().Utf8Value());
  return (int)d;
}

// Data() of an empty typed array is null, which the engine reads as "not
// given"; an empty array is given, with length 0, and gets the length error.
template <typename T>
const T* data_of(Napi::TypedArrayOf<T> a) {
  static const T empty{};
  return a.ElementLength() == 0 ? &empty : a.Data();
}

bool is_typed(const Napi::Value& v, napi_typedarray_type type) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == type;
}

const char* typed_name(const Napi::Value& v) {
  if (!v.IsTypedArray()) return v.IsNull() || v.IsUndefined() ? "nothing" : "a non-typed-array value";
  switch (v.As<Napi::TypedArray>().TypedArrayType()) {
    case napi_float32_array: return "a Float32Array";
    case napi_int32_array: return "an Int32Array";
    case napi_float64_array: return "a Float64Array";
    case napi_uint16_array: return "a Uint16Array";
    case napi_uint8_array: return "a Uint8Array";
    default: return "another typed array";
  }
}

}  // namespace

class StageWrap : public Napi::ObjectWrap<StageWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Stage", {
      InstanceMethod("forward", &StageWrap::Forward),
      InstanceMethod("backward", &StageWrap::Backward),
      InstanceMethod("gradSumSquares", &StageWrap::GradSumSquares),
      InstanceMethod("step", &StageWrap::Step),
      InstanceMethod("zeroGrad", &StageWrap::ZeroGrad),
      InstanceMethod("tensors", &StageWrap::Tensors),
      InstanceMethod("arena", &StageWrap::ArenaView),
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
  template <typename F>
  auto guarded(Napi::Env env, F&& f) -> decltype(f()) {
    try {
      return f();
    } catch (const Napi::Error&) {
      throw;
    } catch (const std::exception& e) {
      throw Napi::Error::New(env, e.what());
    }
  }

  // forward(mb, input, B, T, targets|null, train, tokens|null) → loss (number) | Float32Array
  // tokens: the microbatch's token ids, for a non-first stage that needs them
  Napi::Value Forward(const Napi::CallbackInfo& info) {
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
    if (s.is_last() && targets) {
      double loss = guarded(env, [&] { return s.forward(mb, tokens, acts, input_len, B, T, targets, targets_len, nullptr, 0, train, true); });
      return Napi::Number::New(env, loss);
    }
    const size_t n = s.output_len(B, T, s.is_last());
    Napi::Float32Array out = Napi::Float32Array::New(env, n);
    guarded(env, [&] { return s.forward(mb, tokens, acts, input_len, B, T, targets, targets_len, out.Data(), n, train, true); });
    return out;
  }

  // backward(mb, gradOut|null) → Float32Array gradIn | null (stage 0)
  Napi::Value Backward(const Napi::CallbackInfo& info) {
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
    if (s.is_first()) {
      guarded(env, [&] { s.backward(mb, grad, grad_len, nullptr, 0); return 0; });
      return env.Null();
    }
    int B = 0, T = 0;
    const size_t n = s.stash_shape(mb, &B, &T) ? (size_t)B * T * s.in_width() : 0;
    Napi::Float32Array out = Napi::Float32Array::New(env, n);
    guarded(env, [&] { s.backward(mb, grad, grad_len, out.Data(), n); return 0; });
    return out;
  }

  Napi::Value GradSumSquares(const Napi::CallbackInfo& info) {
    std::vector<double> ss = stage_->grad_sum_squares();
    Napi::Float64Array out = Napi::Float64Array::New(info.Env(), ss.size());
    std::copy(ss.begin(), ss.end(), out.Data());
    return out;
  }

  Napi::Value Step(const Napi::CallbackInfo& info) {
    if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "step(gradScale) expects a number");
    double scale = info[0].As<Napi::Number>().DoubleValue();
    if (!std::isfinite(scale) || scale < 0) throw Napi::RangeError::New(info.Env(), "gradScale must be finite and >= 0");
    return Napi::Number::New(info.Env(), stage_->step(scale));
  }

  Napi::Value ZeroGrad(const Napi::CallbackInfo& info) {
    stage_->zero_grad();
    return info.Env().Undefined();
  }

  Napi::Value Tensors(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const auto& ts = stage_->tensors();
    Napi::Array arr = Napi::Array::New(env, ts.size());
    for (size_t i = 0; i < ts.size(); i++) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("name", ts[i].name);
      Napi::Array shape = Napi::Array::New(env, ts[i].shape.size());
      for (size_t j = 0; j < ts[i].shape.size(); j++) shape.Set(j, Napi::Number::New(env, (double)ts[i].shape[j]));
      o.Set("shape", shape);
      o.Set("offset", Napi::Number::New(env, (double)ts[i].offset));
      o.Set("numel", Napi::Number::New(env, (double)ts[i].numel));
      o.Set("decay", Napi::Boolean::New(env, ts[i].decay));
      arr.Set(i, o);
    }
    return arr;
  }

  // arena('params'|'grads'|'exp_avg'|'exp_avg_sq') → a Float32Array over the
  // engine's own memory; the view holds a reference that keeps it alive.
  Napi::Value ArenaView(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string which = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    Arena a;
    if (which == "params") a = stage_->params;
    else if (which == "grads") a = stage_->grads;
    else if (which == "exp_avg") a = stage_->exp_avg;
    else if (which == "exp_avg_sq") a = stage_->exp_avg_sq;
    else throw Napi::TypeError::New(env, "arena must be one of params, grads, exp_avg, exp_avg_sq; got '" + which + "'");
    auto* keep = new Arena(a);
    Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, a->data(), a->size() * sizeof(float),
                                                   [](Napi::Env, void*, Arena* k) { delete k; }, keep);
    return Napi::Float32Array::New(env, a->size(), buf, 0);
  }

  Napi::Value Stashed(const Napi::CallbackInfo& info) {
    auto ids = stage_->stashed();
    Napi::Array arr = Napi::Array::New(info.Env(), ids.size());
    for (size_t i = 0; i < ids.size(); i++) arr.Set(i, Napi::Number::New(info.Env(), (double)ids[i]));
    return arr;
  }

  Napi::Value Drop(const Napi::CallbackInfo& info) {
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
  return exports;
}

NODE_API_MODULE(caravan_engine, Init)
