// Conversions between JS values and core types, and core errors -> JS errors.
#pragma once

#include <napi.h>

#include <optional>
#include <string>
#include <vector>

#include "pjrt/dtype.h"
#include "pjrt/errors.h"
#include "pjrt/program_signature.h"
#include "model/programs.h"  // WeightPrecision

namespace cascade::binding {

// A JS Error whose `kind` names the TypeScript error class (PjrtError, InvalidArgumentError, ...)
// and whose `pjrtCode` holds the PJRT error code; src/native.ts turns it into the typed class.
Napi::Error ToJsError(Napi::Env env, const Error& error);
Napi::Error ToJsError(Napi::Env env, const std::exception& error);

// Reads { dtype, shape, data: TypedArray } and copies the bytes (the JS side may mutate or
// detach its buffer while the work runs on another thread). `where` prefixes messages.
HostTensor TensorFromJs(const Napi::Value& value, const std::string& where);
// Builds { dtype, shape, data } with a fresh typed array of the dtype's JS type.
Napi::Object TensorToJs(Napi::Env env, HostTensor&& tensor);
Napi::Object TensorTypeToJs(Napi::Env env, const TensorType& type);

// Option fields: a missing (undefined) field gives `fallback`, the C++ struct's default.
WeightPrecision PrecisionFromJs(const Napi::Object& o, const char* key, WeightPrecision fallback);
// o[key]: 'f32' or 'bf16' (a KV cache's element type); unset: nullopt. Throws InvalidArgumentError.
std::optional<DType> KvCacheTypeFromJs(const Napi::Object& o, const char* key);
double NumberFromJs(const Napi::Object& o, const char* key, double fallback);
// o[key] as token id lists (an array of Int32Array); absent: none. Throws InvalidArgumentError.
std::vector<std::vector<int32_t>> TokenListsFromJs(const Napi::Object& o, const char* key);

}  // namespace cascade::binding
