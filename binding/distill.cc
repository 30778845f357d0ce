// distillTiny: cpp/cascade/loading.h's DistillTinyToFile on the thread pool, with its progress.
#include <napi.h>

#include <atomic>
#include <cstring>
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

// distillTiny(client, { target, draft?, draftLayers?, targetPrecision?, draftPrecision?, out, positions?, hidden?,
//                       steps?, batch?, learningRate?, seed?, prompts? }, onProgress?(phase, done, total))
//   -> Promise<{ path, gamma0: [[k0, coverage]], closedFormGamma0, trainPositions, heldoutPositions, train: {...},
//                ms: {...} }>
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
    distill.target_precision = PrecisionFromJs(o, "targetPrecision", distill.target_precision);
    distill.draft_precision = PrecisionFromJs(o, "draftPrecision", distill.draft_precision);
    TinyFitOptions& fit = distill.fit;
    fit.positions = static_cast<int64_t>(NumberFromJs(o, "positions", static_cast<double>(fit.positions)));
    fit.hidden = static_cast<int64_t>(NumberFromJs(o, "hidden", static_cast<double>(fit.hidden)));
    fit.seed = static_cast<uint64_t>(NumberFromJs(o, "seed", 1));
    fit.train.steps = static_cast<int64_t>(NumberFromJs(o, "steps", static_cast<double>(fit.train.steps)));
    fit.train.batch = static_cast<int64_t>(NumberFromJs(o, "batch", static_cast<double>(fit.train.batch)));
    fit.train.learning_rate = NumberFromJs(o, "learningRate", fit.train.learning_rate);
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
          const char* last_phase = "";
          *report = DistillTinyToFile(client, distill, [&](const char* phase, int64_t done, int64_t total) {
            if (std::string(phase) != last_phase) last = -1;
            last_phase = phase;
            if (done - last >= 10 || done == total || std::strcmp(phase, "train") == 0) {  // every training step: they are slow
              last = done;
              progress(phase, done, total);
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
        auto coverage = [&](const std::vector<std::pair<int64_t, double>>& pairs) {
          Napi::Array g = Napi::Array::New(env, pairs.size());
          for (size_t i = 0; i < pairs.size(); ++i) {
            Napi::Array pair = Napi::Array::New(env, 2);
            pair.Set(0u, static_cast<double>(pairs[i].first));
            pair.Set(1u, pairs[i].second);
            g.Set(i, pair);
          }
          return g;
        };
        r.Set("gamma0", coverage(report->gamma0));
        r.Set("closedFormGamma0", coverage(report->closed_form_gamma0));
        Napi::Object train = Napi::Object::New(env);
        train.Set("steps", static_cast<double>(report->train.steps));
        train.Set("batch", static_cast<double>(report->train.batch));
        train.Set("firstLoss", report->train.first_loss);
        train.Set("lastLoss", report->train.last_loss);
        train.Set("bestStep", static_cast<double>(report->train.best_step));
        train.Set("validationK", static_cast<double>(report->train.validation_k));
        Napi::Array validation = Napi::Array::New(env, report->train.validation.size());
        for (size_t i = 0; i < report->train.validation.size(); ++i) {
          Napi::Array pair = Napi::Array::New(env, 2);
          pair.Set(0u, static_cast<double>(report->train.validation[i].first));
          pair.Set(1u, report->train.validation[i].second);
          validation.Set(i, pair);
        }
        train.Set("validation", validation);
        r.Set("train", train);
        r.Set("trainPositions", static_cast<double>(report->train_positions));
        r.Set("heldoutPositions", static_cast<double>(report->heldout_positions));
        Napi::Object ms = Napi::Object::New(env);
        ms.Set("generate", report->generate_ms);
        ms.Set("solve", report->projection_ms + report->accumulate_ms + report->solve_ms);
        ms.Set("train", report->train.compile_ms + report->train.train_ms);
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
  // What distillTiny uses for an option it is not given (DistillOptions owns these defaults).
  const DistillOptions d;
  Napi::Object defaults = Napi::Object::New(env);
  defaults.Set("positions", static_cast<double>(d.fit.positions));
  defaults.Set("hidden", static_cast<double>(d.fit.hidden));
  defaults.Set("steps", static_cast<double>(d.fit.train.steps));
  defaults.Set("batch", static_cast<double>(d.fit.train.batch));
  defaults.Set("learningRate", d.fit.train.learning_rate);
  exports.Set("distillDefaults", defaults);
}

}  // namespace cascade::binding
