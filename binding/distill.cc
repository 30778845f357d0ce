// distillTiny: cpp/cascade/loading.h's DistillTinyToFile on the thread pool, with its progress.
#include <napi.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "cascade/loading.h"
#include "marshal.h"
#include "async_call.h"
#include "promise_worker.h"
#include "runtime.h"

namespace cascade::binding {

namespace {

// distillTiny(client, { target, draft?, draftLayers?, precision?, out, positions?, hidden?, seed?, prompts? }, onProgress?)
//   -> Promise<{ path, gamma0: [[k0, coverage]], trainPositions, heldoutPositions, ms: {...} }>
// The tiny is fitted on text the *target* writes (what the cascade will commit); the draft gives
// the logits it learns.
Napi::Value DistillTiny(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsObject()) throw ToJsError(env, InvalidArgumentError("distillTiny(client, options)"));
  std::shared_ptr<Client> client = ClientFromJs(env, info[0]);
  Napi::Object o = info[1].As<Napi::Object>();
  DistillOptions distill;
  try {
    if (!o.Get("target").IsString() || !o.Get("out").IsString()) throw InvalidArgumentError("target and out are required paths");
    distill.target = o.Get("target").As<Napi::String>().Utf8Value();
    distill.out = o.Get("out").As<Napi::String>().Utf8Value();
    if (o.Get("draft").IsString()) distill.draft = o.Get("draft").As<Napi::String>().Utf8Value();
    distill.draft_layers = static_cast<int64_t>(NumberFromJs(o, "draftLayers", 0));
    distill.precision = PrecisionFromJs(o, "precision", distill.precision);
    TinyFitOptions& fit = distill.fit;
    fit.positions = static_cast<int64_t>(NumberFromJs(o, "positions", static_cast<double>(fit.positions)));
    fit.hidden = static_cast<int64_t>(NumberFromJs(o, "hidden", static_cast<double>(fit.hidden)));
    fit.seed = static_cast<uint64_t>(NumberFromJs(o, "seed", 1));
    fit.prompts = TokenListsFromJs(o, "prompts");
  } catch (const Error& e) {
    throw ToJsError(env, e);
  }
  ProgressCallback progress(info, 2, "cascade.distill");  // (done, total)
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  auto report = std::make_shared<TinyFitReport>();
  Napi::Promise promise = PromiseWorker::Start(
      env, "cascade.distill",
      [client, distill, report, progress, cancel]() mutable {
        try {
          int64_t last = -1;
          *report = DistillTinyToFile(client, distill, [&progress, cancel, &last](int64_t done, int64_t total) {
            if (done - last >= 10 || done == total) {
              last = done;
              progress(nullptr, done, total);
            }
            return !cancel->load();
          });
        } catch (...) {
          progress.Release();
          throw;
        }
        progress.Release();
      },
      [report, out = distill.out](Napi::Env env) -> Napi::Value {
        Napi::Object r = Napi::Object::New(env);
        r.Set("path", out);
        Napi::Array g = Napi::Array::New(env, report->gamma0.size());
        for (size_t i = 0; i < report->gamma0.size(); ++i) {
          Napi::Array pair = Napi::Array::New(env, 2);
          pair.Set(0u, static_cast<double>(report->gamma0[i].first));
          pair.Set(1u, report->gamma0[i].second);
          g.Set(i, pair);
        }
        r.Set("gamma0", g);
        r.Set("trainPositions", static_cast<double>(report->train_positions));
        r.Set("heldoutPositions", static_cast<double>(report->heldout_positions));
        Napi::Object ms = Napi::Object::New(env);
        ms.Set("generate", report->generate_ms);
        ms.Set("solve", report->projection_ms + report->accumulate_ms + report->solve_ms);
        ms.Set("evaluate", report->eval_ms);
        ms.Set("total", report->total_ms());
        r.Set("ms", ms);
        return r;
      });
  // The JS side cancels through this (AbortSignal).
  return CancellableHandle(env, promise, cancel);
}

}  // namespace

void InitDistill(Napi::Env env, Napi::Object exports) {
  exports.Set("distillTiny", Napi::Function::New(env, DistillTiny, "distillTiny"));
}

}  // namespace cascade::binding
