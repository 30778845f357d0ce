// loadEngine and measureBandwidth: loading runs cpp/cascade/loading.h's LoadEngine on the thread
// pool and hands the engine to JS as a NativeEngine (binding/native_engine.h).
#include <napi.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>

#include "cascade/cost_model.h"
#include "cascade/loading.h"
#include "marshal.h"
#include "native_engine.h"
#include "async_call.h"
#include "promise_worker.h"
#include "runtime.h"

namespace cascade::binding {

namespace {

// loadEngine(client, { target, draft?, targetPrecision?, draftPrecision?, targetStorage? ('auto' | 'dense'), targetKvCache?,
//   draftKvCache? ('f32' | 'bf16'), maxContext?, draftLayers?,
//   deviceMemoryLimit?, ... }, onProgress?) -> { promise: Promise<NativeEngine>, cancel(): void }.
// cancel() makes the load stop at its next stage (after reading a file, after the upload, between
// warm-up compiles, during a tiny fit) with an AbortError; what it had uploaded is released.
Napi::Value LoadEngine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsObject())
    throw ToJsError(env, InvalidArgumentError("loadEngine(client, options)"));
  std::shared_ptr<Client> client = ClientFromJs(env, info[0]);
  Napi::Object o = info[1].As<Napi::Object>();
  EngineLoadOptions load;
  EngineOptions& options = load.engine;
  try {
    if (!o.Get("target").IsString()) throw InvalidArgumentError("target must be a model file path");
    load.target = o.Get("target").As<Napi::String>().Utf8Value();
    if (o.Get("draft").IsString()) load.draft = o.Get("draft").As<Napi::String>().Utf8Value();
    if (o.Get("tiny").IsString()) load.tiny = o.Get("tiny").As<Napi::String>().Utf8Value();
    load.fit_tiny = o.Get("fitTiny").ToBoolean();
    load.warmup = o.Get("warmup").ToBoolean();
    if (o.Get("tinyCachePath").IsString()) load.tiny_cache = o.Get("tinyCachePath").As<Napi::String>().Utf8Value();
    load.tiny_fit_prompts = TokenListsFromJs(o, "tinyFitPrompts");
    options.target_precision = PrecisionFromJs(o, "targetPrecision", options.target_precision);
    options.draft_precision = PrecisionFromJs(o, "draftPrecision", options.draft_precision);
    if (o.Has("targetStorage") && !o.Get("targetStorage").IsUndefined()) {
      const Napi::Value v = o.Get("targetStorage");
      const std::string storage = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
      if (storage != "auto" && storage != "dense") throw InvalidArgumentError("targetStorage must be 'auto' or 'dense'");
      load.bf16_from_blocks = storage == "auto";
    }
    options.target_kv_dtype = KvCacheTypeFromJs(o, "targetKvCache");
    options.draft_kv_dtype = KvCacheTypeFromJs(o, "draftKvCache");
    options.max_context = static_cast<int64_t>(NumberFromJs(o, "maxContext", static_cast<double>(options.max_context)));
    options.draft_layers = static_cast<int64_t>(NumberFromJs(o, "draftLayers", 0));
    // A load's k1 is every generation's default, sampling or not (EngineOptions::sampled_proposal_length).
    options.proposal_length = static_cast<int64_t>(NumberFromJs(o, "k1", static_cast<double>(options.proposal_length)));
    if (o.Has("k1") && !o.Get("k1").IsUndefined()) options.sampled_proposal_length = options.proposal_length;
    options.candidates = static_cast<int64_t>(NumberFromJs(o, "k0", static_cast<double>(options.candidates)));
    options.device_index = static_cast<size_t>(NumberFromJs(o, "deviceIndex", 0));
    options.devices = static_cast<int64_t>(NumberFromJs(o, "devices", 1));
    options.max_sequences = static_cast<int64_t>(NumberFromJs(o, "maxSequences", static_cast<double>(options.max_sequences)));
    load.device_memory_limit = static_cast<int64_t>(NumberFromJs(o, "deviceMemoryLimit", 0));
  } catch (const Error& e) {
    throw ToJsError(env, e);
  }
  auto engine = std::make_shared<std::shared_ptr<CascadeEngine>>();
  ProgressCallback progress(info, 2, "cascade.load.progress");  // (stage, done, total)
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  Napi::Promise promise = PromiseWorker::Start(
      env, "cascade.load",
      [client, load, engine, progress, cancel]() mutable {
        try {
          *engine = TrimmedWhenReleased(cascade::LoadEngine(client, load, [cancel] { return cancel->load(); }, progress));
        } catch (...) {
          progress.Release();
          ReleaseFreedMemory();  // the host copies of the weights (and, failed, the uploaded model)
          throw;
        }
        progress.Release();
        ReleaseFreedMemory();
      },
      [engine](Napi::Env) -> Napi::Value { return WrapEngine(std::move(*engine)); });
  return CancellableHandle(env, promise, cancel);
}

}  // namespace

// measureBandwidth(): Promise<number>: this machine's memory read bandwidth in GB/s (the BW_i of
// the cost model, for the host-memory devices of the CPU plugin).
Napi::Value MeasureBandwidth(const Napi::CallbackInfo& info) {
  auto gbs = std::make_shared<double>(0);
  return PromiseWorker::Start(
      info.Env(), "cascade.bandwidth", [gbs] { *gbs = MeasureReadBandwidthGBs(); },
      [gbs](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *gbs); });
}

// engineDefaults: what a load uses for an option it is not given (EngineOptions, the one owner of
// these defaults), for the layers above that show or need them (cache file names, --help).
Napi::Object EngineDefaults(Napi::Env env) {
  const EngineOptions d;
  Napi::Object o = Napi::Object::New(env);
  o.Set("targetPrecision", WeightPrecisionName(d.target_precision));
  o.Set("draftPrecision", WeightPrecisionName(d.draft_precision));
  o.Set("maxContext", static_cast<double>(d.max_context));
  o.Set("maxSequences", static_cast<double>(d.max_sequences));
  o.Set("k1", static_cast<double>(d.proposal_length));
  o.Set("k1Sampled", static_cast<double>(d.sampled_proposal_length));
  o.Set("k0", static_cast<double>(d.candidates));
  return o;
}

void InitEngine(Napi::Env env, Napi::Object exports) {
  DefineNativeEngine(env);
  exports.Set("loadEngine", Napi::Function::New(env, LoadEngine, "loadEngine"));
  exports.Set("measureBandwidth", Napi::Function::New(env, MeasureBandwidth, "measureBandwidth"));
  exports.Set("engineDefaults", EngineDefaults(env));
}

}  // namespace cascade::binding
