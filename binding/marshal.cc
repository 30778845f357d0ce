#include "marshal.h"

#include <cmath>
#include <cstring>

namespace cascade::binding {

Napi::Error ToJsError(Napi::Env env, const Error& error) {
  Napi::Error js = Napi::Error::New(env, error.what());
  js.Set("kind", Napi::String::New(env, ErrorKindName(error.kind())));
  if (error.kind() == ErrorKind::kPjrt) js.Set("pjrtCode", Napi::Number::New(env, error.code()));
  return js;
}

Napi::Error ToJsError(Napi::Env env, const std::exception& error) {
  if (auto* typed = dynamic_cast<const Error*>(&error)) return ToJsError(env, *typed);
  Napi::Error js = Napi::Error::New(env, error.what());
  js.Set("kind", Napi::String::New(env, "InternalError"));
  return js;
}

namespace {

napi_typedarray_type JsArrayType(DType dtype) {
  switch (dtype) {
    case DType::kF32: return napi_float32_array;
    case DType::kF64: return napi_float64_array;
    case DType::kF16:
    case DType::kBF16:
    case DType::kU16: return napi_uint16_array;  // f16/bf16: raw bits; Node 20 has no Float16Array
    case DType::kS32: return napi_int32_array;
    case DType::kU32: return napi_uint32_array;
    case DType::kS8: return napi_int8_array;
    case DType::kU8:
    case DType::kPred: return napi_uint8_array;
    case DType::kS64: return napi_bigint64_array;
  }
  return napi_uint8_array;
}

const char* JsArrayName(DType dtype) {
  switch (JsArrayType(dtype)) {
    case napi_float32_array: return "Float32Array";
    case napi_float64_array: return "Float64Array";
    case napi_uint16_array: return "Uint16Array";
    case napi_int32_array: return "Int32Array";
    case napi_uint32_array: return "Uint32Array";
    case napi_int8_array: return "Int8Array";
    case napi_bigint64_array: return "BigInt64Array";
    default: return "Uint8Array";
  }
}

}  // namespace

HostTensor TensorFromJs(const Napi::Value& value, const std::string& where) {
  if (!value.IsObject()) throw InvalidArgumentError(where + ": expected a tensor { dtype, shape, data }");
  Napi::Object obj = value.As<Napi::Object>();
  Napi::Value dtype_value = obj.Get("dtype");
  if (!dtype_value.IsString()) throw InvalidArgumentError(where + ": dtype must be a string such as 'f32'");
  const std::string dtype_name = dtype_value.As<Napi::String>().Utf8Value();
  auto dtype = DTypeFromName(dtype_name);
  if (!dtype) throw InvalidArgumentError(where + ": unknown dtype '" + dtype_name + "'");

  Napi::Value shape_value = obj.Get("shape");
  if (!shape_value.IsArray()) throw InvalidArgumentError(where + ": shape must be an array of integers");
  Napi::Array shape = shape_value.As<Napi::Array>();
  if (shape.Length() > 64) throw InvalidArgumentError(where + ": shape has more than 64 dimensions");
  std::vector<int64_t> dims;
  for (uint32_t i = 0; i < shape.Length(); ++i) {
    Napi::Value d = shape.Get(i);
    double v = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
    if (!(v >= 0) || v != std::floor(v) || v > 9.0e15)
      throw InvalidArgumentError(where + ": shape[" + std::to_string(i) + "] must be a non-negative integer");
    dims.push_back(static_cast<int64_t>(v));
  }
  Napi::Value data_value = obj.Get("data");
  if (!data_value.IsTypedArray())
    throw InvalidArgumentError(where + ": data must be a " + JsArrayName(*dtype) + " for dtype " + dtype_name);
  Napi::TypedArray array = data_value.As<Napi::TypedArray>();
  if (array.TypedArrayType() != JsArrayType(*dtype))
    throw InvalidArgumentError(where + ": dtype " + dtype_name + " needs a " + JsArrayName(*dtype));
  const int64_t count = ElementCount(dims);
  if (static_cast<int64_t>(array.ElementLength()) != count)
    throw InvalidArgumentError(where + ": shape " + ShapeString(*dtype, dims) + " has " + std::to_string(count) +
                               " elements but data has " + std::to_string(array.ElementLength()));
  const uint8_t* bytes = static_cast<const uint8_t*>(array.ArrayBuffer().Data()) + array.ByteOffset();
  return HostTensor(*dtype, std::move(dims), bytes, array.ByteLength());
}

Napi::Object TensorToJs(Napi::Env env, HostTensor&& tensor) {
  Napi::Object obj = Napi::Object::New(env);
  obj.Set("dtype", Napi::String::New(env, DTypeName(tensor.dtype)));
  Napi::Array shape = Napi::Array::New(env, tensor.dims.size());
  for (size_t i = 0; i < tensor.dims.size(); ++i) shape.Set(i, Napi::Number::New(env, static_cast<double>(tensor.dims[i])));
  obj.Set("shape", shape);
  const size_t bytes = tensor.data.size();
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, bytes);
  if (bytes) std::memcpy(buffer.Data(), tensor.data.data(), bytes);
  const size_t length = bytes / DTypeSize(tensor.dtype);
  napi_value typed;
  napi_status status = napi_create_typedarray(env, JsArrayType(tensor.dtype), length, buffer, 0, &typed);
  NAPI_THROW_IF_FAILED(env, status, obj);
  obj.Set("data", Napi::Value(env, typed));
  return obj;
}

Napi::Object TensorTypeToJs(Napi::Env env, const TensorType& type) {
  Napi::Object obj = Napi::Object::New(env);
  obj.Set("dtype", Napi::String::New(env, DTypeName(type.dtype)));
  Napi::Array shape = Napi::Array::New(env, type.dims.size());
  for (size_t i = 0; i < type.dims.size(); ++i) shape.Set(i, Napi::Number::New(env, static_cast<double>(type.dims[i])));
  obj.Set("shape", shape);
  return obj;
}

WeightPrecision PrecisionFromJs(const Napi::Object& o, const char* key, WeightPrecision fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  WeightPrecision p = fallback;
  // kBF16Q4 is chosen by the load (EngineLoadOptions::bf16_from_blocks), not asked for.
  if (!ParseWeightPrecision(s, &p) || p == WeightPrecision::kBF16Q4)
    throw InvalidArgumentError(std::string(key) + " must be 'f32', 'bf16', 'int8' or 'q4'");
  return p;
}

std::optional<DType> KvCacheTypeFromJs(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return std::nullopt;
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (s == "f32") return DType::kF32;
  if (s == "bf16") return DType::kBF16;
  throw InvalidArgumentError(std::string(key) + " must be 'f32' or 'bf16'");
}

double NumberFromJs(const Napi::Object& o, const char* key, double fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsNumber()) throw InvalidArgumentError(std::string(key) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

std::vector<std::vector<int32_t>> TokenListsFromJs(const Napi::Object& o, const char* key) {
  std::vector<std::vector<int32_t>> lists;
  Napi::Value value = o.Get(key);
  if (value.IsUndefined()) return lists;
  if (!value.IsArray()) throw InvalidArgumentError(std::string(key) + " must be an array of Int32Array");
  Napi::Array array = value.As<Napi::Array>();
  for (uint32_t i = 0; i < array.Length(); ++i) {
    Napi::Value item = array.Get(i);
    if (!item.IsTypedArray() || item.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw InvalidArgumentError(std::string(key) + "[" + std::to_string(i) + "] must be an Int32Array");
    Napi::Int32Array ids = item.As<Napi::Int32Array>();
    lists.emplace_back(ids.Data(), ids.Data() + ids.ElementLength());
  }
  return lists;
}

}  // namespace cascade::binding
