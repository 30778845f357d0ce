// Entry point of the N-API addon (cascade_xla.node). Only marshalling lives in binding/;
// everything else is in the C++ core (cpp/).
#include <napi.h>

namespace cascade::binding {
Napi::Object InitRuntime(Napi::Env env, Napi::Object exports);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) { return cascade::binding::InitRuntime(env, exports); }

NODE_API_MODULE(cascade_xla, Init)
