// Runs a piece of core work on the libuv thread pool and settles a Promise on the JS thread, so
// nothing (plugin loading, compile, execute, transfers) blocks the event loop.
#pragma once

#include <napi.h>

#include <exception>
#include <functional>

#include "marshal.h"

namespace cascade::binding {

class PromiseWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<void()>;                      // runs off the JS thread; may throw
  using Settle = std::function<Napi::Value(Napi::Env)>;    // runs on the JS thread after Work

  static Napi::Promise Start(Napi::Env env, const char* name, Work work, Settle settle) {
    auto* worker = new PromiseWorker(env, name, std::move(work), std::move(settle));
    Napi::Promise promise = worker->deferred_.Promise();
    worker->Queue();
    return promise;
  }

 protected:
  void Execute() override {
    try {
      work_();
    } catch (...) {
      failure_ = std::current_exception();
      SetError("failed");
    }
  }
  void OnOK() override {
    Napi::HandleScope scope(Env());
    try {
      deferred_.Resolve(settle_(Env()));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    } catch (const std::exception& e) {
      deferred_.Reject(ToJsError(Env(), e).Value());
    }
  }
  void OnError(const Napi::Error&) override {
    Napi::HandleScope scope(Env());
    try {
      std::rethrow_exception(failure_);
    } catch (const std::exception& e) {
      deferred_.Reject(ToJsError(Env(), e).Value());
    } catch (...) {
      deferred_.Reject(Napi::Error::New(Env(), "unknown native error").Value());
    }
  }

 private:
  PromiseWorker(Napi::Env env, const char* name, Work work, Settle settle)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)), settle_(std::move(settle)) {}

  Napi::Promise::Deferred deferred_;
  Work work_;
  Settle settle_;
  std::exception_ptr failure_;
};

}  // namespace cascade::binding
