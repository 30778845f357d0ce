// What other binding files need from runtime.cc.
#pragma once

#include <napi.h>

#include <memory>

#include "pjrt/client.h"

namespace cascade::binding {

// The core client behind a NativeClient object (DisposedError once closed).
std::shared_ptr<Client> ClientFromJs(Napi::Env env, const Napi::Value& value);

}  // namespace cascade::binding
