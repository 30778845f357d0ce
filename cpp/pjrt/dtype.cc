#include "pjrt/dtype.h"

#include <cstring>
#include <limits>

#include "pjrt/errors.h"

namespace cascade {

namespace {
struct DTypeInfo {
  DType dtype;
  const char* name;
  const char* mlir;
  size_t size;
  PJRT_Buffer_Type pjrt;
};
constexpr DTypeInfo kInfo[] = {
    {DType::kF32, "f32", "f32", 4, PJRT_Buffer_Type_F32},
    {DType::kF16, "f16", "f16", 2, PJRT_Buffer_Type_F16},
    {DType::kBF16, "bf16", "bf16", 2, PJRT_Buffer_Type_BF16},
    {DType::kS32, "s32", "i32", 4, PJRT_Buffer_Type_S32},
    {DType::kS8, "s8", "i8", 1, PJRT_Buffer_Type_S8},
    {DType::kU8, "u8", "ui8", 1, PJRT_Buffer_Type_U8},
    {DType::kPred, "pred", "i1", 1, PJRT_Buffer_Type_PRED},
    {DType::kS64, "s64", "i64", 8, PJRT_Buffer_Type_S64},
    {DType::kU32, "u32", "ui32", 4, PJRT_Buffer_Type_U32},
    {DType::kF64, "f64", "f64", 8, PJRT_Buffer_Type_F64},
    {DType::kU16, "u16", "ui16", 2, PJRT_Buffer_Type_U16},
};
const DTypeInfo& Info(DType dtype) {
  for (const auto& info : kInfo)
    if (info.dtype == dtype) return info;
  throw InvalidArgumentError("unknown dtype");
}
}  // namespace

size_t DTypeSize(DType dtype) { return Info(dtype).size; }
const char* DTypeName(DType dtype) { return Info(dtype).name; }
const char* DTypeMlirName(DType dtype) { return Info(dtype).mlir; }
PJRT_Buffer_Type ToPjrt(DType dtype) { return Info(dtype).pjrt; }

std::optional<DType> DTypeFromName(const std::string& name) {
  for (const auto& info : kInfo)
    if (name == info.name) return info.dtype;
  return std::nullopt;
}

std::optional<DType> DTypeFromMlir(const std::string& name) {
  for (const auto& info : kInfo)
    if (name == info.mlir) return info.dtype;
  if (name == "si32") return DType::kS32;  // signed spellings are equivalent in StableHLO
  if (name == "si8") return DType::kS8;
  if (name == "si64") return DType::kS64;
  return std::nullopt;
}

std::optional<DType> FromPjrt(PJRT_Buffer_Type type) {
  for (const auto& info : kInfo)
    if (info.pjrt == type) return info.dtype;
  return std::nullopt;
}

int64_t ElementCount(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0) throw InvalidArgumentError("negative dimension " + std::to_string(d));
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d)
      throw InvalidArgumentError("shape element count overflows int64");
    n *= d;
  }
  return n;
}

std::string ShapeString(DType dtype, const std::vector<int64_t>& dims) {
  std::string s = DTypeName(dtype);
  s += "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? "," : "") + std::to_string(dims[i]);
  return s + "]";
}

HostTensor::HostTensor(DType d, std::vector<int64_t> shape, const void* bytes, size_t size)
    : dtype(d), dims(std::move(shape)) {
  const size_t expected = static_cast<size_t>(ElementCount(dims)) * DTypeSize(dtype);
  if (size != expected)
    throw InvalidArgumentError("tensor " + ShapeString(dtype, dims) + " needs " +
                               std::to_string(expected) + " bytes, got " + std::to_string(size));
  data.resize(size);
  if (size) std::memcpy(data.data(), bytes, size);
}

}  // namespace cascade
