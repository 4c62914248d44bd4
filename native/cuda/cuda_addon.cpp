// The Node-API face of CudaStage: the CPU Stage class's methods, with host
// typed arrays in and out. Inputs are copied to the GPU, and outputs back,
// only because they come from and go onto the wire; everything between
// (weights, stashes, gradients, moments) stays on the device. Arenas are
// host copies here, not views: arena() downloads, setArena() uploads.
#include "cuda_addon.h"
#include "../src/addon_args.h"
#include "cuda_stage.h"
#include "device.h"

namespace caravan::cuda {

namespace {
using namespace caravan::addon;

// Device memory for one call's input or output, grown on demand.
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  void* reserve(size_t n, const std::string& what) {
    if (n <= bytes) return ptr;
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    bytes = 0;
    cudaError_t e = cudaMalloc(&ptr, n);
    if (e != cudaSuccess) {
      ptr = nullptr;
      throw std::runtime_error("out of GPU memory allocating " + std::to_string(n >> 20) + " MiB for " + what + ": " + cudaGetErrorString(e));
    }
    bytes = n;
    return ptr;
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
};

Napi::Object device_object(Napi::Env env, const DeviceInfo& d) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("index", d.index);
  o.Set("name", d.name);
  o.Set("totalBytes", Napi::Number::New(env, (double)d.total_bytes));
  o.Set("freeBytes", Napi::Number::New(env, (double)d.free_bytes));
  o.Set("computeCapability", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor));
  o.Set("multiprocessors", d.multiprocessors);
  o.Set("peakBf16Tflops", d.peak_bf16_tflops);
  return o;
}

CudaStage::ArenaKind arena_kind(Napi::Env env, const Napi::Value& v) {
  const std::string which = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (which == "params") return CudaStage::ArenaKind::params;
  if (which == "grads") return CudaStage::ArenaKind::grads;
  if (which == "exp_avg") return CudaStage::ArenaKind::exp_avg;
  if (which == "exp_avg_sq") return CudaStage::ArenaKind::exp_avg_sq;
  throw Napi::TypeError::New(env, "arena must be one of params, grads, exp_avg, exp_avg_sq; got '" + which + "'");
}

class CudaStageWrap : public Napi::ObjectWrap<CudaStageWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "CudaStage", {
      InstanceMethod("forward", &CudaStageWrap::Forward),
      InstanceMethod("backward", &CudaStageWrap::Backward),
      InstanceMethod("backwardInput", &CudaStageWrap::BackwardInput),
      InstanceMethod("backwardWeight", &CudaStageWrap::BackwardWeight),
      InstanceMethod("stashedBytes", &CudaStageWrap::StashedBytes),
      InstanceMethod("stepWithUndo", &CudaStageWrap::StepWithUndo),
      InstanceMethod("undoStep", &CudaStageWrap::UndoStep),
      InstanceMethod("dropUndo", &CudaStageWrap::DropUndo),
      InstanceMethod("gradSumSquares", &CudaStageWrap::GradSumSquares),
      InstanceMethod("step", &CudaStageWrap::Step),
      InstanceMethod("zeroGrad", &CudaStageWrap::ZeroGrad),
      InstanceMethod("tensors", &CudaStageWrap::Tensors),
      InstanceMethod("arena", &CudaStageWrap::ArenaCopy),
      InstanceMethod("setArena", &CudaStageWrap::SetArena),
      InstanceMethod("stashed", &CudaStageWrap::Stashed),
      InstanceMethod("drop", &CudaStageWrap::Drop),
      InstanceAccessor("optimizerStep", &CudaStageWrap::GetOptimizerStep, &CudaStageWrap::SetOptimizerStep),
      InstanceAccessor("inWidth", &CudaStageWrap::GetWidth, nullptr),
      InstanceAccessor("outWidth", &CudaStageWrap::GetWidth, nullptr),
      InstanceAccessor("needsTokens", &CudaStageWrap::GetNeedsTokens, nullptr),
      InstanceAccessor("device", &CudaStageWrap::GetDevice, nullptr),
    });
  }

  CudaStageWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CudaStageWrap>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) throw Napi::TypeError::New(env, "new CudaStage({model, optim, layerBegin, layerEnd, seed, gpu}) expects an object");
    Napi::Object o = info[0].As<Napi::Object>();
    if (!o.Get("model").IsObject()) throw Napi::TypeError::New(env, "model config is required");
    ModelConfig model = model_from(o.Get("model").As<Napi::Object>());
    OptimConfig optim = o.Get("optim").IsObject() ? optim_from(o.Get("optim").As<Napi::Object>()) : OptimConfig{};
    const int begin = int_field(o, "stage", "layerBegin", true, 0);
    const int end = int_field(o, "stage", "layerEnd", true, 0);
    const int gpu = int_field(o, "stage", "gpu", false, 0);
    const double seed = number_field(o, "stage", "seed", false, 0);
    if (seed < 0 || seed != std::floor(seed)) throw Napi::TypeError::New(env, "seed must be a non-negative integer");
    if (gpu < 0) throw Napi::RangeError::New(env, "gpu must be a non-negative index, got " + std::to_string(gpu));
    stage_ = guarded(env, [&] { return std::make_unique<CudaStage>(model, optim, begin, end, (uint64_t)seed, gpu); });
    d_ = model.d_model;
    vocab_ = model.vocab;
  }

 private:
  // forward(mb, input, B, T, targets|null, train) → loss | Float32Array (as the CPU Stage)
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CudaStage& s = *stage_;
    const int64_t mb = microbatch_id(info[0]);
    const int B = dim(info[2], "B"), T = dim(info[3], "T");
    const bool train = info[5].ToBoolean().Value();
    const std::string where = s.describe() + ", microbatch " + std::to_string(mb);
    const size_t N = (size_t)B * T;
    const int32_t* tokens = nullptr;
    const float* d_acts = nullptr;
    if (s.is_first()) {
      if (!is_typed(info[1], napi_int32_array)) throw Napi::TypeError::New(env, where + ": stage 0 takes token ids as an Int32Array, got " + typed_name(info[1]));
      auto a = info[1].As<Napi::Int32Array>();
      if (a.ElementLength() != N) throw Napi::RangeError::New(env, where + ": expected token ids of shape [" + std::to_string(B) + "," + std::to_string(T) + "], got " + std::to_string(a.ElementLength()) + " values");
      tokens = a.Data();
    } else {
      if (!is_typed(info[1], napi_float32_array)) throw Napi::TypeError::New(env, where + ": this stage takes activations as a Float32Array, got " + typed_name(info[1]));
      auto a = info[1].As<Napi::Float32Array>();
      if (a.ElementLength() != N * d_) throw Napi::RangeError::New(env, where + ": expected activations of shape [" + std::to_string(B) + "," + std::to_string(T) + "," + std::to_string(d_) + "], got " + std::to_string(a.ElementLength()) + " values");
      guarded(env, [&] {
        void* d = in_.reserve(a.ByteLength(), s.describe() + " input");
        s.copy_to_device(d, a.Data(), a.ByteLength());
        d_acts = static_cast<const float*>(d);
        return 0;
      });
    }
    const int32_t* targets = nullptr;
    if (!info[4].IsNull() && !info[4].IsUndefined()) {
      if (!is_typed(info[4], napi_int32_array)) throw Napi::TypeError::New(env, where + ": targets must be an Int32Array, got " + typed_name(info[4]));
      auto t = info[4].As<Napi::Int32Array>();
      if (t.ElementLength() != N) throw Napi::RangeError::New(env, where + ": expected targets of shape [" + std::to_string(B) + "," + std::to_string(T) + "], got " + std::to_string(t.ElementLength()) + " values");
      targets = t.Data();
    }
    if (s.is_last() && targets) {
      return Napi::Number::New(env, guarded(env, [&] { return s.forward(mb, tokens, d_acts, B, T, targets, nullptr, train); }));
    }
    const size_t n = N * (s.is_last() ? vocab_ : d_);
    Napi::Float32Array out = Napi::Float32Array::New(env, n);
    guarded(env, [&] {
      float* d_out = static_cast<float*>(out_.reserve(n * sizeof(float), s.describe() + " output"));
      s.forward(mb, tokens, d_acts, B, T, targets, d_out, train);
      s.copy_to_host(out.Data(), d_out, n * sizeof(float));
      return 0;
    });
    return out;
  }

  // backward(mb, gradOut|null) → Float32Array gradIn | null (stage 0)
  Napi::Value Backward(const Napi::CallbackInfo& info) { return BackwardOf(info, false); }
  // backwardInput(mb, gradOut|null): as backward, without the weight gradients (B)
  Napi::Value BackwardInput(const Napi::CallbackInfo& info) { return BackwardOf(info, true); }

  // backwardWeight(mb): the weight gradients of a microbatch whose B has run (W)
  Napi::Value BackwardWeight(const Napi::CallbackInfo& info) {
    const int64_t mb = microbatch_id(info[0]);
    guarded(info.Env(), [&] { stage_->backward_weight(mb); return 0; });
    return info.Env().Undefined();
  }

  Napi::Value StashedBytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), (double)stage_->stashed_bytes());
  }

  Napi::Value BackwardOf(const Napi::CallbackInfo& info, bool split) {
    Napi::Env env = info.Env();
    CudaStage& s = *stage_;
    const int64_t mb = microbatch_id(info[0]);
    const std::string where = s.describe() + ", microbatch " + std::to_string(mb);
    int B = 0, T = 0;
    if (!s.stash_shape(mb, &B, &T)) throw Napi::Error::New(env, where + ": " + (split ? "backwardInput" : "backward") + " for a microbatch with no stashed forward");
    const size_t n = (size_t)B * T * d_;
    const bool given = !info[1].IsNull() && !info[1].IsUndefined();
    if (s.is_last() && given) throw Napi::TypeError::New(env, where + ": the last stage starts backward from its loss and takes no gradient");
    const float* d_grad = nullptr;
    if (!s.is_last()) {
      if (!is_typed(info[1], napi_float32_array)) throw Napi::TypeError::New(env, where + ": gradient must be a Float32Array, got " + typed_name(info[1]));
      auto g = info[1].As<Napi::Float32Array>();
      if (g.ElementLength() != n) throw Napi::RangeError::New(env, where + ": expected a gradient of shape [" + std::to_string(B) + "," + std::to_string(T) + "," + std::to_string(d_) + "], got " + std::to_string(g.ElementLength()) + " values");
      guarded(env, [&] {
        void* d = in_.reserve(g.ByteLength(), s.describe() + " gradient input");
        s.copy_to_device(d, g.Data(), g.ByteLength());
        d_grad = static_cast<const float*>(d);
        return 0;
      });
    }
    if (s.is_first()) {
      guarded(env, [&] {
        if (split) s.backward_input(mb, d_grad, nullptr);
        else s.backward(mb, d_grad, nullptr);
        return 0;
      });
      return env.Null();
    }
    Napi::Float32Array out = Napi::Float32Array::New(env, n);
    guarded(env, [&] {
      float* d_out = static_cast<float*>(out_.reserve(n * sizeof(float), s.describe() + " gradient output"));
      if (split) s.backward_input(mb, d_grad, d_out);
      else s.backward(mb, d_grad, d_out);
      s.copy_to_host(out.Data(), d_out, n * sizeof(float));
      return 0;
    });
    return out;
  }

  Napi::Value GradSumSquares(const Napi::CallbackInfo& info) {
    std::vector<double> ss = guarded(info.Env(), [&] { return stage_->grad_sum_squares(); });
    Napi::Float64Array out = Napi::Float64Array::New(info.Env(), ss.size());
    std::copy(ss.begin(), ss.end(), out.Data());
    return out;
  }

  static double grad_scale(const Napi::CallbackInfo& info, const char* method) {
    if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(method) + "(gradScale) expects a number");
    const double scale = info[0].As<Napi::Number>().DoubleValue();
    if (!std::isfinite(scale) || scale < 0) throw Napi::RangeError::New(info.Env(), "gradScale must be finite and >= 0");
    return scale;
  }

  Napi::Value Step(const Napi::CallbackInfo& info) {
    const double scale = grad_scale(info, "step");
    return Napi::Number::New(info.Env(), guarded(info.Env(), [&] { return stage_->step(scale); }));
  }

  Napi::Value StepWithUndo(const Napi::CallbackInfo& info) {
    const double scale = grad_scale(info, "stepWithUndo");
    return Napi::Number::New(info.Env(), guarded(info.Env(), [&] { return stage_->step_with_undo(scale); }));
  }

  Napi::Value UndoStep(const Napi::CallbackInfo& info) {
    guarded(info.Env(), [&] { stage_->undo_step(); return 0; });
    return info.Env().Undefined();
  }

  Napi::Value DropUndo(const Napi::CallbackInfo& info) {
    guarded(info.Env(), [&] { stage_->drop_undo(); return 0; });
    return info.Env().Undefined();
  }

  Napi::Value ZeroGrad(const Napi::CallbackInfo& info) {
    guarded(info.Env(), [&] { stage_->zero_grad(); return 0; });
    return info.Env().Undefined();
  }

  Napi::Value Tensors(const Napi::CallbackInfo& info) { return tensor_list(info.Env(), stage_->tensors()); }

  Napi::Value ArenaCopy(const Napi::CallbackInfo& info) {
    const CudaStage::ArenaKind kind = arena_kind(info.Env(), info[0]);
    Napi::Float32Array out = Napi::Float32Array::New(info.Env(), stage_->param_count());
    guarded(info.Env(), [&] { stage_->download(kind, out.Data()); return 0; });
    return out;
  }

  Napi::Value SetArena(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const CudaStage::ArenaKind kind = arena_kind(env, info[0]);
    if (!is_typed(info[1], napi_float32_array)) throw Napi::TypeError::New(env, "setArena expects a Float32Array, got " + std::string(typed_name(info[1])));
    auto src = info[1].As<Napi::Float32Array>();
    if (src.ElementLength() != stage_->param_count()) throw Napi::RangeError::New(env, stage_->describe() + ": setArena needs " + std::to_string(stage_->param_count()) + " floats, got " + std::to_string(src.ElementLength()));
    guarded(env, [&] { stage_->upload(kind, src.Data()); return 0; });
    return env.Undefined();
  }

  Napi::Value Stashed(const Napi::CallbackInfo& info) {
    auto ids = stage_->stashed();
    Napi::Array arr = Napi::Array::New(info.Env(), ids.size());
    for (size_t i = 0; i < ids.size(); i++) arr.Set(i, Napi::Number::New(info.Env(), (double)ids[i]));
    return arr;
  }

  Napi::Value Drop(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), stage_->drop(microbatch_id(info[0]))); }
  Napi::Value GetWidth(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), d_); }
  Napi::Value GetNeedsTokens(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), false); }
  Napi::Value GetDevice(const Napi::CallbackInfo& info) { return device_object(info.Env(), stage_->device()); }
  Napi::Value GetOptimizerStep(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), stage_->optimizer_step); }

  void SetOptimizerStep(const Napi::CallbackInfo& info, const Napi::Value& v) {
    if (!v.IsNumber()) throw Napi::TypeError::New(info.Env(), "optimizerStep must be a number");
    const double d = v.As<Napi::Number>().DoubleValue();
    if (d < 0 || d != std::floor(d) || d > 2147483647.0) throw Napi::RangeError::New(info.Env(), "optimizerStep must be a non-negative integer");
    stage_->optimizer_step = (int)d;
  }

  std::unique_ptr<CudaStage> stage_;
  DeviceBuffer in_, out_;
  int d_ = 0, vocab_ = 0;
};

// cudaDevice(gpu) → {index, name, totalBytes, freeBytes, computeCapability, multiprocessors, peakBf16Tflops};
// throws, saying why, when the GPU cannot be used.
Napi::Value CudaDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const double g = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  if (g < 0 || g != std::floor(g) || g > 1e6) throw Napi::TypeError::New(env, "cudaDevice(gpu) expects a non-negative GPU index");
  return device_object(env, guarded(env, [&] { return open_device((int)g); }));
}

}  // namespace

void register_addon(Napi::Env env, Napi::Object exports) {
  exports.Set("CudaStage", CudaStageWrap::Define(env));
  exports.Set("cudaDevice", Napi::Function::New(env, CudaDevice));
}

}  // namespace caravan::cuda
