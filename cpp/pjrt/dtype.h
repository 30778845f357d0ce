// Element types the runtime moves between host and device, and their names in our API
// ('f32', 'bf16', ...), in StableHLO ('f32', 'bf16', 'i32', 'i8', 'ui8', 'i1') and in PJRT.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "xla/pjrt/c/pjrt_c_api.h"

namespace cascade {

enum class DType { kF32, kF16, kBF16, kS32, kS8, kU8, kPred, kS64, kU32, kF64, kU16 };

size_t DTypeSize(DType dtype);
const char* DTypeName(DType dtype);                          // 'f32', 'bf16', 's32', 'pred', ...
std::optional<DType> DTypeFromName(const std::string& name);  // inverse of DTypeName
std::optional<DType> DTypeFromMlir(const std::string& name);  // 'f32', 'i32', 'i1', 'ui8', ...
const char* DTypeMlirName(DType dtype);
PJRT_Buffer_Type ToPjrt(DType dtype);
std::optional<DType> FromPjrt(PJRT_Buffer_Type type);

// Number of elements of a shape; throws InvalidArgumentError on negative dims or overflow.
int64_t ElementCount(const std::vector<int64_t>& dims);
std::string ShapeString(DType dtype, const std::vector<int64_t>& dims);  // e.g. f32[2,3]

// A dense, row-major tensor in host memory.
struct HostTensor {
  DType dtype = DType::kF32;
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;

  HostTensor() = default;
  HostTensor(DType d, std::vector<int64_t> shape) : dtype(d), dims(std::move(shape)) {
    data.resize(static_cast<size_t>(ElementCount(dims)) * DTypeSize(dtype));
  }
  HostTensor(DType d, std::vector<int64_t> shape, const void* bytes, size_t size);
  int64_t element_count() const { return ElementCount(dims); }
  template <typename T>
  T* as() { return reinterpret_cast<T*>(data.data()); }
  template <typename T>
  const T* as() const { return reinterpret_cast<const T*>(data.data()); }
};

}  // namespace cascade
