// What the long native calls (loadEngine, distillTiny) share: a JS progress callback that worker
// threads call without blocking, and the { promise, cancel() } handle they return.
#pragma once

#include <napi.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace cascade::binding {

class ProgressCallback {
 public:
  // info[index] when it is a function; otherwise every call does nothing.
  ProgressCallback(const Napi::CallbackInfo& info, size_t index, const char* name) {
    if (info.Length() > index && info[index].IsFunction())
      tsfn_ = Napi::ThreadSafeFunction::New(info.Env(), info[index].As<Napi::Function>(), name, 0, 1);
  }
  // Queues fn(stage, done, total), or fn(done, total) when `stage` is null; an update the queue
  // refuses is dropped (the next one says more).
  void operator()(const char* stage, int64_t done, int64_t total) const {
    if (!tsfn_) return;
    auto* update = new Update{stage ? std::optional<std::string>(stage) : std::nullopt, done, total};
    auto call = [](Napi::Env env, Napi::Function fn, Update* u) {
      const Napi::Value done_js = Napi::Number::New(env, static_cast<double>(u->done));
      const Napi::Value total_js = Napi::Number::New(env, static_cast<double>(u->total));
      if (u->stage) fn.Call({Napi::String::New(env, *u->stage), done_js, total_js});
      else fn.Call({done_js, total_js});
      delete u;
    };
    if (tsfn_->NonBlockingCall(update, call) != napi_ok) delete update;
  }
  // Once the work is over (success or failure).
  void Release() {
    if (tsfn_) tsfn_->Release();
    tsfn_.reset();
  }

 private:
  struct Update {
    std::optional<std::string> stage;
    int64_t done, total;
  };
  std::optional<Napi::ThreadSafeFunction> tsfn_;
};

// { promise, cancel() }: cancel() sets `cancel`, which the work polls between its stages.
inline Napi::Object CancellableHandle(Napi::Env env, const Napi::Promise& promise, std::shared_ptr<std::atomic<bool>> cancel) {
  Napi::Object handle = Napi::Object::New(env);
  handle.Set("promise", promise);
  handle.Set("cancel", Napi::Function::New(env, [cancel](const Napi::CallbackInfo& info) {
               cancel->store(true);
               return info.Env().Undefined();
             }));
  return handle;
}

}  // namespace cascade::binding
