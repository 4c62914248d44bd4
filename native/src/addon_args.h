// Reading the engine's arguments from JavaScript values, with errors that
// name the field and what was wrong; shared by the CPU and CUDA stage classes.
#pragma once
#include <napi.h>
#include <cmath>
#include <string>
#include <vector>
#include "config.h"
#include "layout.h"

namespace caravan::addon {

inline double number_field(const Napi::Object& o, const char* object_name, const char* key, bool required, double fallback) {
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

inline int int_field(const Napi::Object& o, const char* object_name, const char* key, bool required, int fallback) {
  double d = number_field(o, object_name, key, required, fallback);
  if (d != std::floor(d) || std::fabs(d) > 2147483647.0) {
    throw Napi::TypeError::New(o.Env(), std::string(object_name) + "." + key + " must be an integer, got " + std::to_string(d));
  }
  return (int)d;
}

inline ModelConfig model_from(const Napi::Object& o) {
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

inline OptimConfig optim_from(const Napi::Object& o) {
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

inline int64_t microbatch_id(const Napi::Value& v) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), "microbatch id must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != std::floor(d) || d < 0 || d > 9007199254740991.0) {
    throw Napi::TypeError::New(v.Env(), "microbatch id must be a non-negative safe integer, got " + v.ToString().Utf8Value());
  }
  return (int64_t)d;
}

inline int dim(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string(name) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != std::floor(d) || d < 1 || d > 1e9) throw Napi::TypeError::New(v.Env(), std::string(name) + " must be a positive integer, got " + v.ToString().Utf8Value());
  return (int)d;
}

// Data() of an empty typed array is null, which the engine reads as "not
// given"; an empty array is given, with length 0, and gets the length error.
template <typename T>
inline const T* data_of(Napi::TypedArrayOf<T> a) {
  static const T empty{};
  return a.ElementLength() == 0 ? &empty : a.Data();
}

inline bool is_typed(const Napi::Value& v, napi_typedarray_type type) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == type;
}

inline const char* typed_name(const Napi::Value& v) {
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


// tensors(): [{name, shape, offset, numel, decay}] in model order.
inline Napi::Array tensor_list(Napi::Env env, const std::vector<TensorInfo>& ts) {
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

// Runs f, turning a C++ exception into a JavaScript Error with its message.
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

}  // namespace caravan::addon
