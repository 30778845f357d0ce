#include "util/float16.h"
#include "model/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "pjrt/errors.h"

namespace cascade {

static_assert(sizeof(float) == 4, "f32");
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader assumes a little-endian host"
#endif

namespace {

constexpr uint32_t kMaxDims = 4;             // GGML_MAX_DIMS
constexpr int kMaxArrayNesting = 8;          // nested metadata arrays are parsed this deep
constexpr uint64_t kMaxAlignment = 1u << 30;

struct TypeLayout {
  uint32_t type;
  const char* name;
  uint64_t block_elements;
  uint64_t block_bytes;
  bool dequantize;
};

constexpr TypeLayout kLayouts[] = {
    {0, "F32", 1, 4, true},         {1, "F16", 1, 2, true},
    {2, "Q4_0", 32, 18, true},      {3, "Q4_1", 32, 20, true},
    {6, "Q5_0", 32, 22, true},      {7, "Q5_1", 32, 24, true},
    {8, "Q8_0", 32, 34, true},      {9, "Q8_1", 32, 36, false},
    {10, "Q2_K", 256, 84, false},   {11, "Q3_K", 256, 110, false},
    {12, "Q4_K", 256, 144, true},   {13, "Q5_K", 256, 176, true},
    {14, "Q6_K", 256, 210, true},   {15, "Q8_K", 256, 292, true},
    {20, "IQ4_NL", 32, 18, false},  {23, "IQ4_XS", 256, 136, false},
    {24, "I8", 1, 1, false},        {25, "I16", 1, 2, false},
    {26, "I32", 1, 4, false},       {27, "I64", 1, 8, false},
    {28, "F64", 1, 8, false},       {30, "BF16", 1, 2, true},
};

const TypeLayout* FindLayout(uint32_t type) {
  for (const auto& l : kLayouts)
    if (l.type == type) return &l;
  return nullptr;
}

// Names of ggml types whose block layout we do not carry, for messages.
const char* OtherTypeName(uint32_t type) {
  switch (type) {
    case 16: return "IQ2_XXS";
    case 17: return "IQ2_XS";
    case 18: return "IQ3_XXS";
    case 19: return "IQ1_S";
    case 21: return "IQ3_S";
    case 22: return "IQ2_S";
    case 29: return "IQ1_M";
    case 34: return "TQ1_0";
    case 35: return "TQ2_0";
    case 39: return "MXFP4";
  }
  return nullptr;
}

uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
float LoadF16(const uint8_t* p) { return F16ToF32(LoadU16(p)); }

// --- dequantisation, one block at a time (layouts as in ggml-common.h) ---

void DeqQ8_0(const uint8_t* b, float* y) {
  const float d = LoadF16(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = qs[j] * d;
}

void DeqQ4_0(const uint8_t* b, float* y) {
  const float d = LoadF16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    const int x0 = (qs[j] & 0x0F) - 8;
    const int x1 = (qs[j] >> 4) - 8;
    y[j] = x0 * d;
    y[j + 16] = x1 * d;
  }
}

void DeqQ4_1(const uint8_t* b, float* y) {
  const float d = LoadF16(b);
  const float m = LoadF16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    const int x0 = qs[j] & 0x0F;
    const int x1 = qs[j] >> 4;
    y[j] = x0 * d + m;
    y[j + 16] = x1 * d + m;
  }
}

void DeqQ5_0(const uint8_t* b, float* y) {
  const float d = LoadF16(b);
  const uint32_t qh = LoadU32(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const uint8_t h0 = ((qh >> j) << 4) & 0x10;
    const uint8_t h1 = (qh >> (j + 12)) & 0x10;
    const int32_t x0 = ((qs[j] & 0x0F) | h0) - 16;
    const int32_t x1 = ((qs[j] >> 4) | h1) - 16;
    y[j] = x0 * d;
    y[j + 16] = x1 * d;
  }
}

void DeqQ5_1(const uint8_t* b, float* y) {
  const float d = LoadF16(b);
  const float m = LoadF16(b + 2);
  const uint32_t qh = LoadU32(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const uint8_t h0 = ((qh >> j) << 4) & 0x10;
    const uint8_t h1 = (qh >> (j + 12)) & 0x10;
    const int x0 = (qs[j] & 0x0F) | h0;
    const int x1 = (qs[j] >> 4) | h1;
    y[j] = x0 * d + m;
    y[j + 16] = x1 * d + m;
  }
}

// 6-bit scale and min number j of a Q4_K/Q5_K block's 12 packed bytes.
void ScaleMinK4(int j, const uint8_t* q, uint8_t* sc, uint8_t* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

void DeqQ4_K(const uint8_t* b, float* y) {
  const float d = LoadF16(b);
  const float dmin = LoadF16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  int is = 0;
  for (int j = 0; j < 256; j += 64) {
    uint8_t sc, mn;
    ScaleMinK4(is, scales, &sc, &mn);
    const float d1 = d * sc, m1 = dmin * mn;
    ScaleMinK4(is + 1, scales, &sc, &mn);
    const float d2 = d * sc, m2 = dmin * mn;
    for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0x0F) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
    q += 32;
    is += 2;
  }
}

void DeqQ5_K(const uint8_t* b, float* y) {
  const float d = LoadF16(b);
  const float dmin = LoadF16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  int is = 0;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0; j < 256; j += 64) {
    uint8_t sc, mn;
    ScaleMinK4(is, scales, &sc, &mn);
    const float d1 = d * sc, m1 = dmin * mn;
    ScaleMinK4(is + 1, scales, &sc, &mn);
    const float d2 = d * sc, m2 = dmin * mn;
    for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0x0F) + (qh[l] & u1 ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
    ql += 32;
    is += 2;
    u1 <<= 2;
    u2 <<= 2;
  }
}

void DeqQ6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = LoadF16(b + 208);
  for (int n = 0; n < 256; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int8_t q1 = static_cast<int8_t>((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int8_t q2 = static_cast<int8_t>((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int8_t q3 = static_cast<int8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int8_t q4 = static_cast<int8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * sc[is] * q1;
      y[l + 32] = d * sc[is + 2] * q2;
      y[l + 64] = d * sc[is + 4] * q3;
      y[l + 96] = d * sc[is + 6] * q4;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

void DeqQ8_K(const uint8_t* b, float* y) {
  float d;
  std::memcpy(&d, b, 4);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 4);
  for (int j = 0; j < 256; ++j) y[j] = d * qs[j];
}

}  // namespace

// ---------------------------------------------------------------------------------------------

std::string GgmlTypeName(uint32_t type) {
  if (const TypeLayout* l = FindLayout(type)) return l->name;
  if (const char* n = OtherTypeName(type)) return n;
  return "type " + std::to_string(type);
}

bool GgmlTypeLayout(uint32_t type, uint64_t* block_elements, uint64_t* block_bytes) {
  const TypeLayout* l = FindLayout(type);
  if (!l) return false;
  *block_elements = l->block_elements;
  *block_bytes = l->block_bytes;
  return true;
}

bool GgmlTypeCanDequantize(uint32_t type) {
  const TypeLayout* l = FindLayout(type);
  return l && l->dequantize;
}

void DequantizeRow(uint32_t type, const uint8_t* src, float* dst, int64_t n) {
  const TypeLayout* l = FindLayout(type);
  if (!l || !l->dequantize)
    throw ModelFormatError("cannot convert ggml type " + GgmlTypeName(type) + " to f32");
  if (n < 0 || static_cast<uint64_t>(n) % l->block_elements != 0)
    throw InvalidArgumentError("DequantizeRow: " + std::to_string(n) +
                               " elements is not a whole number of " + l->name + " blocks");
  const uint64_t blocks = static_cast<uint64_t>(n) / l->block_elements;
  void (*fn)(const uint8_t*, float*) = nullptr;
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32:
      if (n) std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = LoadF16(src + 2 * i);
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = BF16ToF32(LoadU16(src + 2 * i));
      return;
    case GgmlType::kQ4_0: fn = DeqQ4_0; break;
    case GgmlType::kQ4_1: fn = DeqQ4_1; break;
    case GgmlType::kQ5_0: fn = DeqQ5_0; break;
    case GgmlType::kQ5_1: fn = DeqQ5_1; break;
    case GgmlType::kQ8_0: fn = DeqQ8_0; break;
    case GgmlType::kQ4_K: fn = DeqQ4_K; break;
    case GgmlType::kQ5_K: fn = DeqQ5_K; break;
    case GgmlType::kQ6_K: fn = DeqQ6_K; break;
    case GgmlType::kQ8_K: fn = DeqQ8_K; break;
    default:
      throw ModelFormatError("cannot convert ggml type " + GgmlTypeName(type) + " to f32");
  }
  for (uint64_t i = 0; i < blocks; ++i) fn(src + i * l->block_bytes, dst + i * l->block_elements);
}

const char* GgufValueTypeName(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8: return "uint8";
    case GgufValueType::kInt8: return "int8";
    case GgufValueType::kUint16: return "uint16";
    case GgufValueType::kInt16: return "int16";
    case GgufValueType::kUint32: return "uint32";
    case GgufValueType::kInt32: return "int32";
    case GgufValueType::kFloat32: return "float32";
    case GgufValueType::kBool: return "bool";
    case GgufValueType::kString: return "string";
    case GgufValueType::kArray: return "array";
    case GgufValueType::kUint64: return "uint64";
    case GgufValueType::kInt64: return "int64";
    case GgufValueType::kFloat64: return "float64";
  }
  return "invalid";
}

std::vector<int64_t> GgufTensorInfo::dims() const {
  std::vector<int64_t> d(ne.rbegin(), ne.rend());
  return d;
}

// ---------------------------------------------------------------------------------------------

namespace {

// Fixed size of a scalar value type; 0 for string/array; -1 for an invalid type.
int ScalarSize(uint32_t t) {
  switch (static_cast<GgufValueType>(t)) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool: return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16: return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32: return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64: return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray: return 0;
  }
  return -1;
}

bool IsSigned(GgufValueType t) {
  return t == GgufValueType::kInt8 || t == GgufValueType::kInt16 || t == GgufValueType::kInt32 ||
         t == GgufValueType::kInt64 || t == GgufValueType::kBool;
}
bool IsUnsigned(GgufValueType t) {
  return t == GgufValueType::kUint8 || t == GgufValueType::kUint16 ||
         t == GgufValueType::kUint32 || t == GgufValueType::kUint64;
}
bool IsFloat(GgufValueType t) {
  return t == GgufValueType::kFloat32 || t == GgufValueType::kFloat64;
}

class Reader {
 public:
  Reader(const MappedFile& f) : base_(f.data()), size_(f.size()), path_(f.path()) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  [[noreturn]] void Fail(const std::string& what) const { throw ModelFormatError(path_ + ": " + what); }

  void Need(uint64_t n, const std::string& what) const {
    if (n > remaining())
      Fail("truncated: " + what + " needs " + std::to_string(n) + " bytes at offset " +
           std::to_string(pos_) + " but the file ends at " + std::to_string(size_));
  }

  template <typename T>
  T Read(const std::string& what) {
    Need(sizeof(T), what);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string ReadString(const std::string& what) {
    const uint64_t len = Read<uint64_t>("length of " + what);
    if (len > remaining())
      Fail(what + ": string length " + std::to_string(len) + " at offset " +
           std::to_string(pos_ - 8) + " exceeds the " + std::to_string(remaining()) +
           " bytes left in the file");
    std::string s(reinterpret_cast<const char*>(base_ + pos_), static_cast<size_t>(len));
    pos_ += len;
    return s;
  }

 private:
  const uint8_t* base_;
  uint64_t size_;
  const std::string& path_;
  uint64_t pos_ = 0;
};

void ReadScalar(Reader& r, GgufValueType t, GgufValue& v, const std::string& what) {
  v.type = t;
  switch (t) {
    case GgufValueType::kUint8: v.u = r.Read<uint8_t>(what); break;
    case GgufValueType::kInt8: v.i = r.Read<int8_t>(what); break;
    case GgufValueType::kUint16: v.u = r.Read<uint16_t>(what); break;
    case GgufValueType::kInt16: v.i = r.Read<int16_t>(what); break;
    case GgufValueType::kUint32: v.u = r.Read<uint32_t>(what); break;
    case GgufValueType::kInt32: v.i = r.Read<int32_t>(what); break;
    case GgufValueType::kUint64: v.u = r.Read<uint64_t>(what); break;
    case GgufValueType::kInt64: v.i = r.Read<int64_t>(what); break;
    case GgufValueType::kFloat32: v.f = r.Read<float>(what); break;
    case GgufValueType::kFloat64: v.f = r.Read<double>(what); break;
    case GgufValueType::kBool: {
      uint8_t b = r.Read<uint8_t>(what);
      if (b > 1) r.Fail(what + ": bool value " + std::to_string(b) + " is neither 0 nor 1");
      v.i = b;
      break;
    }
    case GgufValueType::kString: v.s = r.ReadString(what); break;
    case GgufValueType::kArray: break;  // handled by the caller
  }
  if (IsUnsigned(t)) v.i = static_cast<int64_t>(v.u);
  if (IsSigned(t)) v.u = static_cast<uint64_t>(v.i);
}

void ReadValue(Reader& r, uint32_t raw_type, GgufValue& v, const std::string& what, int depth) {
  if (ScalarSize(raw_type) < 0)
    r.Fail(what + ": invalid value type " + std::to_string(raw_type));
  const auto t = static_cast<GgufValueType>(raw_type);
  if (t != GgufValueType::kArray) {
    ReadScalar(r, t, v, what);
    return;
  }
  v.type = GgufValueType::kArray;
  const uint32_t elem_raw = r.Read<uint32_t>("element type of " + what);
  const int elem_size = ScalarSize(elem_raw);
  if (elem_size < 0)
    r.Fail(what + ": invalid array element type " + std::to_string(elem_raw));
  const auto et = static_cast<GgufValueType>(elem_raw);
  const uint64_t n = r.Read<uint64_t>("array length of " + what);
  // Every element takes at least this many bytes, which bounds n by the file size before any
  // allocation: strings carry an 8-byte length, nested arrays a 4-byte type and 8-byte count.
  const uint64_t min_elem = et == GgufValueType::kString ? 8 : et == GgufValueType::kArray ? 12
                                                                                        : elem_size;
  uint64_t need;
  if (!CheckedMul(n, min_elem, &need) || need > r.remaining())
    r.Fail(what + ": array length " + std::to_string(n) + " of " + GgufValueTypeName(et) +
           " exceeds the " + std::to_string(r.remaining()) + " bytes left in the file");
  v.array_type = et;
  v.array_length = n;
  if (et == GgufValueType::kArray) {
    if (depth >= kMaxArrayNesting)
      r.Fail(what + ": arrays nested deeper than " + std::to_string(kMaxArrayNesting));
    v.nested = true;
    for (uint64_t k = 0; k < n; ++k) {
      GgufValue inner;
      const uint32_t inner_type = static_cast<uint32_t>(GgufValueType::kArray);
      ReadValue(r, inner_type, inner, what + "[" + std::to_string(k) + "]", depth + 1);
    }
    return;
  }
  const size_t count = static_cast<size_t>(n);
  if (et == GgufValueType::kString) {
    v.strings.reserve(count);
    for (uint64_t k = 0; k < n; ++k) v.strings.push_back(r.ReadString(what + "[" + std::to_string(k) + "]"));
    return;
  }
  if (IsFloat(et)) {
    v.floats.reserve(count);
  } else {
    v.ints.reserve(count);
    if (IsUnsigned(et)) v.uints.reserve(count);
  }
  // Fixed-size elements: the whole array is inside the file (checked above).
  for (uint64_t k = 0; k < n; ++k) {
    switch (et) {
      case GgufValueType::kFloat32: v.floats.push_back(r.Read<float>(what)); break;
      case GgufValueType::kFloat64: v.floats.push_back(r.Read<double>(what)); break;
      case GgufValueType::kInt8: v.ints.push_back(r.Read<int8_t>(what)); break;
      case GgufValueType::kInt16: v.ints.push_back(r.Read<int16_t>(what)); break;
      case GgufValueType::kInt32: v.ints.push_back(r.Read<int32_t>(what)); break;
      case GgufValueType::kInt64: v.ints.push_back(r.Read<int64_t>(what)); break;
      case GgufValueType::kBool: {
        const uint8_t b = r.Read<uint8_t>(what);
        if (b > 1) r.Fail(what + ": bool value " + std::to_string(b) + " is neither 0 nor 1");
        v.ints.push_back(b);
        break;
      }
      default: {
        uint64_t u = 0;
        if (et == GgufValueType::kUint8) u = r.Read<uint8_t>(what);
        else if (et == GgufValueType::kUint16) u = r.Read<uint16_t>(what);
        else if (et == GgufValueType::kUint32) u = r.Read<uint32_t>(what);
        else u = r.Read<uint64_t>(what);
        v.uints.push_back(u);
        v.ints.push_back(static_cast<int64_t>(u));
      }
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

GgufFile::GgufFile(const std::string& path) : file_(path) {
  Reader r(file_);
  if (file_.size() < 4) r.Fail("truncated: " + std::to_string(file_.size()) + " bytes is too short for a GGUF header");
  const uint32_t magic = r.Read<uint32_t>("magic");
  if (magic != 0x46554747u) {  // "GGUF"
    char m[5] = {0};
    std::memcpy(m, file_.data(), 4);
    for (int i = 0; i < 4; ++i)
      if (m[i] < 0x20 || m[i] > 0x7e) m[i] = '?';
    r.Fail(std::string("bad magic \"") + m + "\": not a GGUF file");
  }
  version_ = r.Read<uint32_t>("version");
  if (version_ != 2 && version_ != 3) {
    std::string hint;
    if (version_ == 1) hint = " (GGUF v1 is obsolete; re-convert the model)";
    else if ((version_ & 0xFFFF) == 0 && version_ != 0) hint = " (a big-endian GGUF?)";
    r.Fail("unsupported GGUF version " + std::to_string(version_) + hint);
  }
  const uint64_t tensor_count = r.Read<uint64_t>("tensor count");
  const uint64_t kv_count = r.Read<uint64_t>("metadata key/value count");
  // Bounds before any allocation: a key/value takes >= 13 bytes (8 length + 4 type + 1 value),
  // a tensor info >= 24 bytes (8 name length + 4 dims + 4 type + 8 offset).
  uint64_t need_kv, need_t, need;
  if (!CheckedMul(kv_count, 13, &need_kv) || !CheckedMul(tensor_count, 24, &need_t) ||
      !CheckedAdd(need_kv, need_t, &need) || need > r.remaining())
    r.Fail("tensor count " + std::to_string(tensor_count) + " and metadata count " +
           std::to_string(kv_count) + " exceed what the " + std::to_string(file_.size()) +
           "-byte file can hold");

  kv_.reserve(static_cast<size_t>(kv_count));
  for (uint64_t k = 0; k < kv_count; ++k) {
    std::string key = r.ReadString("metadata key #" + std::to_string(k));
    const std::string what = "metadata key \"" + key + "\"";
    const uint32_t type = r.Read<uint32_t>("value type of " + what);
    GgufValue v;
    ReadValue(r, type, v, what, 0);
    if (kv_index_.count(key)) r.Fail("duplicate " + what);
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const GgufValue* a = Find("general.alignment")) {
    if (a->type == GgufValueType::kArray || a->type == GgufValueType::kString || IsFloat(a->type) ||
        a->type == GgufValueType::kBool)
      r.Fail("metadata key \"general.alignment\" has type " + std::string(GgufValueTypeName(a->type)) +
             ", expected an unsigned integer");
    const int64_t al = a->i;
    if (al <= 0 || static_cast<uint64_t>(al) > kMaxAlignment || (al & (al - 1)) != 0)
      r.Fail("metadata key \"general.alignment\" = " + std::to_string(al) +
             " is not a power of two between 1 and 2^30");
    alignment_ = static_cast<uint64_t>(al);
  }

  tensors_.reserve(static_cast<size_t>(tensor_count));
  for (uint64_t k = 0; k < tensor_count; ++k) {
    GgufTensorInfo t;
    t.name = r.ReadString("name of tensor #" + std::to_string(k));
    const std::string what = "tensor \"" + t.name + "\"";
    const uint32_t n_dims = r.Read<uint32_t>("dimension count of " + what);
    if (n_dims > kMaxDims)
      r.Fail(what + " has " + std::to_string(n_dims) + " dimensions (at most " +
             std::to_string(kMaxDims) + ")");
    uint64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = r.Read<uint64_t>("dimension " + std::to_string(d) + " of " + what);
      if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          !CheckedMul(elements, ne, &elements) ||
          elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        r.Fail(what + ": dimension " + std::to_string(d) + " = " + std::to_string(ne) +
               " makes the element count overflow");
      t.ne.push_back(ne);
    }
    t.elements = elements;
    t.type = r.Read<uint32_t>("type of " + what);
    t.offset = r.Read<uint64_t>("data offset of " + what);
    uint64_t blk, bytes;
    if (GgmlTypeLayout(t.type, &blk, &bytes)) {
      t.layout_known = true;
      const uint64_t row = t.ne.empty() ? 1 : t.ne[0];
      if (row % blk != 0)
        r.Fail(what + ": row length " + std::to_string(row) + " is not a multiple of the " +
               GgmlTypeName(t.type) + " block size " + std::to_string(blk));
      if (!CheckedMul(elements / blk, bytes, &t.size))
        r.Fail(what + ": byte size overflows");
    } else if (!OtherTypeName(t.type)) {
      r.Fail(what + " has unknown ggml type " + std::to_string(t.type));
    }
    if (tensor_index_.count(t.name)) r.Fail("duplicate " + what);
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment.
  const uint64_t end_of_infos = r.pos();
  uint64_t padded;
  if (!CheckedAdd(end_of_infos, alignment_ - 1, &padded)) r.Fail("data offset overflows");
  data_offset_ = padded / alignment_ * alignment_;
  const uint64_t data_size = data_offset_ <= file_.size() ? file_.size() - data_offset_ : 0;

  std::vector<const GgufTensorInfo*> by_offset;
  for (const auto& t : tensors_) {
    const std::string what = "tensor \"" + t.name + "\"";
    if (t.offset % alignment_ != 0)
      r.Fail(what + ": data offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
             std::to_string(alignment_));
    if (!t.layout_known) continue;  // read would fail anyway; size unknown
    uint64_t end;
    if (!CheckedAdd(t.offset, t.size, &end) || end > data_size)
      r.Fail(what + ": data [" + std::to_string(t.offset) + ", " +
             (CheckedAdd(t.offset, t.size, &end) ? std::to_string(end) : std::string("overflow")) +
             ") lies past the end of the data section (" + std::to_string(data_size) +
             " bytes from offset " + std::to_string(data_offset_) + ", file size " +
             std::to_string(file_.size()) + ")");
    if (t.size > 0) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const GgufTensorInfo* a = by_offset[k - 1];
    const GgufTensorInfo* b = by_offset[k];
    if (a->offset + a->size > b->offset)
      r.Fail("tensor \"" + a->name + "\" [" + std::to_string(a->offset) + ", " +
             std::to_string(a->offset + a->size) + ") overlaps tensor \"" + b->name + "\" at " +
             std::to_string(b->offset));
  }
}

void GgufFile::Fail(const std::string& what) const { throw ModelFormatError(path() + ": " + what); }

const GgufValue* GgufFile::Find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufValue& GgufFile::Need(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (!v) Fail("missing metadata key \"" + key + "\"");
  return *v;
}

namespace {
std::string TypeDesc(const GgufValue& v) {
  if (v.type != GgufValueType::kArray) return GgufValueTypeName(v.type);
  return std::string("array of ") + (v.nested ? "arrays" : GgufValueTypeName(v.array_type));
}
}  // namespace

std::string GgufFile::GetString(const std::string& key) const {
  const GgufValue& v = Need(key);
  if (v.type != GgufValueType::kString)
    Fail("metadata key \"" + key + "\" is " + TypeDesc(v) + ", expected string");
  return v.s;
}

std::optional<std::string> GgufFile::FindString(const std::string& key) const {
  if (!Find(key)) return std::nullopt;
  return GetString(key);
}

int64_t GgufFile::GetInt(const std::string& key) const {
  const GgufValue& v = Need(key);
  if (IsSigned(v.type)) return v.i;
  if (IsUnsigned(v.type)) {
    if (v.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      Fail("metadata key \"" + key + "\" = " + std::to_string(v.u) + " does not fit int64");
    return static_cast<int64_t>(v.u);
  }
  Fail("metadata key \"" + key + "\" is " + TypeDesc(v) + ", expected an integer");
}

std::optional<int64_t> GgufFile::FindInt(const std::string& key) const {
  if (!Find(key)) return std::nullopt;
  return GetInt(key);
}

double GgufFile::GetFloat(const std::string& key) const {
  const GgufValue& v = Need(key);
  if (IsFloat(v.type)) return v.f;
  if (IsSigned(v.type) && v.type != GgufValueType::kBool) return static_cast<double>(v.i);
  if (IsUnsigned(v.type)) return static_cast<double>(v.u);
  Fail("metadata key \"" + key + "\" is " + TypeDesc(v) + ", expected a number");
}

std::optional<double> GgufFile::FindFloat(const std::string& key) const {
  if (!Find(key)) return std::nullopt;
  return GetFloat(key);
}

bool GgufFile::GetBool(const std::string& key) const {
  const GgufValue& v = Need(key);
  if (v.type != GgufValueType::kBool)
    Fail("metadata key \"" + key + "\" is " + TypeDesc(v) + ", expected bool");
  return v.i != 0;
}

std::optional<bool> GgufFile::FindBool(const std::string& key) const {
  if (!Find(key)) return std::nullopt;
  return GetBool(key);
}

const std::vector<std::string>& GgufFile::GetStringArray(const std::string& key) const {
  const GgufValue& v = Need(key);
  if (v.type != GgufValueType::kArray || v.nested || v.array_type != GgufValueType::kString)
    Fail("metadata key \"" + key + "\" is " + TypeDesc(v) + ", expected array of string");
  return v.strings;
}

const std::vector<int64_t>& GgufFile::GetIntArray(const std::string& key) const {
  const GgufValue& v = Need(key);
  if (v.type != GgufValueType::kArray || v.nested ||
      !(IsSigned(v.array_type) || IsUnsigned(v.array_type)))
    Fail("metadata key \"" + key + "\" is " + TypeDesc(v) + ", expected array of integers");
  if (v.array_type == GgufValueType::kUint64)
    for (uint64_t u : v.uints)
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        Fail("metadata key \"" + key + "\" holds " + std::to_string(u) + ", which does not fit int64");
  return v.ints;
}

const std::vector<double>& GgufFile::GetFloatArray(const std::string& key) const {
  const GgufValue& v = Need(key);
  if (v.type != GgufValueType::kArray || v.nested || !IsFloat(v.array_type))
    Fail("metadata key \"" + key + "\" is " + TypeDesc(v) + ", expected array of floats");
  return v.floats;
}

uint64_t GgufFile::GetArrayLength(const std::string& key) const {
  const GgufValue& v = Need(key);
  if (v.type != GgufValueType::kArray)
    Fail("metadata key \"" + key + "\" is " + TypeDesc(v) + ", expected an array");
  return v.array_length;
}

const GgufTensorInfo* GgufFile::FindTensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const uint8_t* GgufFile::TensorData(const GgufTensorInfo& info) const {
  if (!info.layout_known)
    Fail("tensor \"" + info.name + "\" has ggml type " + GgmlTypeName(info.type) +
         ", which cascade-xla cannot read");
  // Re-checked here so that a GgufTensorInfo from elsewhere cannot point outside the mapping.
  uint64_t start, end;
  if (!CheckedAdd(data_offset_, info.offset, &start) || !CheckedAdd(start, info.size, &end) ||
      end > file_.size())
    Fail("tensor \"" + info.name + "\" lies past the end of the file");
  return file_.data() + start;
}

HostTensor GgufFile::ReadTensor(const std::string& name) const {
  const GgufTensorInfo* info = FindTensor(name);
  if (!info) Fail("missing tensor \"" + name + "\"");
  return ReadTensor(*info);
}

HostTensor GgufFile::ReadTensor(const GgufTensorInfo& info) const {
  const uint8_t* data = TensorData(info);
  switch (static_cast<GgmlType>(info.type)) {
    case GgmlType::kF32: return HostTensor(DType::kF32, info.dims(), data, info.size);
    case GgmlType::kF16: return HostTensor(DType::kF16, info.dims(), data, info.size);
    case GgmlType::kBF16: return HostTensor(DType::kBF16, info.dims(), data, info.size);
    default: return ReadTensorF32(info);
  }
}

HostTensor GgufFile::ReadTensorF32(const GgufTensorInfo& info) const {
  const uint8_t* data = TensorData(info);
  if (!GgmlTypeCanDequantize(info.type))
    Fail("tensor \"" + info.name + "\" has ggml type " + GgmlTypeName(info.type) +
         ", which cascade-xla cannot dequantise");
  HostTensor out(DType::kF32, info.dims());
  DequantizeRow(info.type, data, out.as<float>(), static_cast<int64_t>(info.elements));
  return out;
}

}  // namespace cascade
