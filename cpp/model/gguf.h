// GGUF (v2 and v3) reader over a read-only mapping of the file: header, metadata key/values,
// tensor infos, alignment and the data section, with every count, length, offset and size
// checked against the mapping (overflow-safe). Tensors are read as dense row-major HostTensors:
// F32/F16/BF16 keep their type, quantised ggml blocks are dequantised to f32 exactly as ggml does.
//
// Errors: ModelFormatError whose message names the file and the key or tensor concerned.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "util/float16.h"
#include "model/mapped_file.h"
#include "pjrt/dtype.h"

namespace cascade {

// GGUF metadata value types (gguf.h numbering).
enum class GgufValueType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6,
  kBool = 7, kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};
const char* GgufValueTypeName(GgufValueType type);

// ggml tensor types (ggml.h numbering). Only some are dequantised; see GgmlTypeCanDequantize.
enum class GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ8_1 = 9,
  kQ2_K = 10, kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kQ8_K = 15,
  kIQ4_NL = 20, kIQ4_XS = 23, kI8 = 24, kI16 = 25, kI32 = 26, kI64 = 27, kF64 = 28, kBF16 = 30,
};
std::string GgmlTypeName(uint32_t type);  // "Q4_1", or "type 99" when unknown
// Elements per block and bytes per block; false when the type's layout is unknown to us.
bool GgmlTypeLayout(uint32_t type, uint64_t* block_elements, uint64_t* block_bytes);
bool GgmlTypeCanDequantize(uint32_t type);

// Dequantises `n` elements (a multiple of the type's block size) of `type` from `src` (exactly
// n / block_elements * block_bytes bytes) into `dst`, bit-for-bit as ggml's dequantize_row_*.
// F32/F16/BF16 are converted too. Throws ModelFormatError for types it cannot convert.
void DequantizeRow(uint32_t type, const uint8_t* src, float* dst, int64_t n);


// One metadata value. Scalars live in the first fields; arrays in the vector matching their
// element type (integers and bools widen to int64 / uint64, floats to double).
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  GgufValueType array_type = GgufValueType::kUint8;  // for kArray
  bool nested = false;    // kArray of kArray: parsed over and validated, contents not kept
  uint64_t array_length = 0;
  int64_t i = 0;          // signed integers, bool
  uint64_t u = 0;         // unsigned integers
  double f = 0;           // floats
  std::string s;          // kString
  std::vector<std::string> strings;  // array of strings
  std::vector<int64_t> ints;         // array of signed ints / bools / unsigned ints <= INT64_MAX
  std::vector<uint64_t> uints;       // array of unsigned ints (also filled for them)
  std::vector<double> floats;        // array of floats
};

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // ggml order: ne[0] is the innermost (row length)
  uint32_t type = 0;         // GgmlType value (may be one we cannot dequantise)
  uint64_t offset = 0;       // relative to the data section
  uint64_t size = 0;         // bytes in the file; 0 when the type's layout is unknown
  uint64_t elements = 0;
  bool layout_known = false;
  // Row-major dims as PyTorch sees them: ne reversed ({in, out} -> {out, in}).
  std::vector<int64_t> dims() const;
};

class GgufFile {
 public:
  // Maps and parses `path`; throws ModelFormatError on anything malformed.
  explicit GgufFile(const std::string& path);

  const std::string& path() const { return file_.path(); }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute file offset of tensor data
  uint64_t file_size() const { return file_.size(); }

  // Metadata, in file order, and by key.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* Find(const std::string& key) const;
  bool Has(const std::string& key) const { return Find(key) != nullptr; }

  // Typed lookups. Get* throw ModelFormatError naming the file and key when the key is missing or
  // holds another type; Find* return nullopt when missing (and still throw on a wrong type).
  // Integer lookups accept any integer type (and bool) whose value fits int64; float lookups
  // accept float32/float64 and integers.
  std::string GetString(const std::string& key) const;
  std::optional<std::string> FindString(const std::string& key) const;
  int64_t GetInt(const std::string& key) const;
  std::optional<int64_t> FindInt(const std::string& key) const;
  double GetFloat(const std::string& key) const;
  std::optional<double> FindFloat(const std::string& key) const;
  bool GetBool(const std::string& key) const;
  std::optional<bool> FindBool(const std::string& key) const;
  const std::vector<std::string>& GetStringArray(const std::string& key) const;
  const std::vector<int64_t>& GetIntArray(const std::string& key) const;
  const std::vector<double>& GetFloatArray(const std::string& key) const;
  uint64_t GetArrayLength(const std::string& key) const;

  // Tensors, in file order, and by name.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(const std::string& name) const;
  // The tensor's bytes inside the mapping (size() bytes).
  const uint8_t* TensorData(const GgufTensorInfo& info) const;
  // A dense row-major tensor with dims() as shape: F32/F16/BF16 copied as they are, quantised
  // types dequantised to f32. Throws ModelFormatError naming the tensor for unsupported types.
  HostTensor ReadTensor(const std::string& name) const;
  HostTensor ReadTensor(const GgufTensorInfo& info) const;
  // The same, always converted to f32.
  HostTensor ReadTensorF32(const GgufTensorInfo& info) const;

 private:
  [[noreturn]] void Fail(const std::string& what) const;
  const GgufValue& Need(const std::string& key) const;
  MappedFile file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace cascade
