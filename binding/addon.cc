// Entry point of the N-API addon (cascade_xla.node). Only marshalling lives in binding/;
// everything else is in the C++ core (cpp/).
#include <napi.h>

namespace cascade::binding {
Napi::Object InitRuntime(Napi::Env env, Napi::Object exports);
void InitEngine(Napi::Env env, Napi::Object exports);
void InitDistill(Napi::Env env, Napi::Object exports);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  cascade::binding::InitRuntime(env, exports);
  cascade::binding::InitEngine(env, exports);
  cascade::binding::InitDistill(env, exports);
  return exports;
}

NODE_API_MODULE(cascade_xla, Init)
