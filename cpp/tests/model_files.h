// Test helpers that WRITE small model files: a GGUF writer, a safetensors writer, ggml block
// quantisers (written from the block formulas, independently of cpp/model/gguf.cc), the
// llama.cpp Q/K row permutation, and a tiny Llama/Gemma model in both formats. Fuzz seeds reuse
// these. Header-only; no dependency on the loaders under test except F16ToF32/F32ToF16
// style conversions, which are re-implemented here too.
#pragma once

#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "util/float16.h"

namespace cascade {
namespace testing_files {

using Bytes = std::vector<uint8_t>;

// ---------------------------------------------------------------- files and directories

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/cascade_model_test_XXXXXX";
    if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() { RemoveAll(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  std::string Subdir(const std::string& name) const {
    std::string p = File(name);
    ::mkdir(p.c_str(), 0755);
    return p;
  }

 private:
  static void RemoveAll(const std::string& p) {
    struct stat st;
    if (::lstat(p.c_str(), &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
      if (DIR* d = ::opendir(p.c_str())) {
        while (dirent* e = ::readdir(d)) {
          std::string n = e->d_name;
          if (n != "." && n != "..") RemoveAll(p + "/" + n);
        }
        ::closedir(d);
      }
      ::rmdir(p.c_str());
    } else {
      ::unlink(p.c_str());
    }
  }
  std::string path_;
};

inline void WriteFile(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}
inline void WriteFile(const std::string& path, const std::string& text) {
  WriteFile(path, Bytes(text.begin(), text.end()));
}

template <typename T>
void Put(Bytes& b, T v) {
  uint8_t tmp[sizeof(T)];
  std::memcpy(tmp, &v, sizeof(T));
  b.insert(b.end(), tmp, tmp + sizeof(T));
}
template <typename T>
void PutAt(Bytes& b, size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof(T));
}

// ---------------------------------------------------------------- float formats

using cascade::F32Bits;  // util/float16.h
using cascade::F32FromBits;
// f32 -> f16, round to nearest even (normal and subnormal ranges; tests stay within them).
inline uint16_t ToF16(float f) {
  uint32_t x = F32Bits(f);
  uint16_t sign = (x >> 16) & 0x8000;
  x &= 0x7FFFFFFF;
  if (x >= 0x477FF000u) return sign | 0x7C00;
  if (x < 0x38800000u) return sign | static_cast<uint16_t>(std::nearbyint(F32FromBits(x) * 16777216.0f));
  uint32_t mant = x & 0x7FFFFF, exp = (x >> 23) - 112;
  uint32_t h = (exp << 10) | (mant >> 13), rem = mant & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return sign | static_cast<uint16_t>(h);
}
inline float FromF16(uint16_t h) {
  int exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  float v = exp == 0 ? std::ldexp(static_cast<float>(mant), -24)
                     : std::ldexp(static_cast<float>(mant + 1024), exp - 25);
  return (h & 0x8000) ? -v : v;
}
inline uint16_t ToBF16(float f) {  // round to nearest even
  uint32_t x = F32Bits(f);
  x += 0x7FFF + ((x >> 16) & 1);
  return static_cast<uint16_t>(x >> 16);
}
inline float FromBF16(uint16_t b) { return F32FromBits(static_cast<uint32_t>(b) << 16); }

// ---------------------------------------------------------------- ggml block quantisers
// Each returns the packed blocks; `expected` receives the values ggml's dequantisation must give,
// computed here from the integer codes and the (f16-rounded) scales.

inline Bytes QuantizeQ8_0(const std::vector<float>& x, std::vector<float>* expected) {
  Bytes out;
  for (size_t b = 0; b < x.size(); b += 32) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[b + j]));
    const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
    const uint16_t dh = ToF16(d);
    Put(out, dh);
    for (int j = 0; j < 32; ++j) {
      const int8_t q = static_cast<int8_t>(std::round(x[b + j] * id));
      Put(out, q);
      expected->push_back(q * FromF16(dh));
    }
  }
  return out;
}

inline Bytes QuantizeQ4_0(const std::vector<float>& x, std::vector<float>* expected) {
  Bytes out;
  for (size_t b = 0; b < x.size(); b += 32) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j)
      if (std::fabs(x[b + j]) > amax) {
        amax = std::fabs(x[b + j]);
        max = x[b + j];
      }
    const float d = max / -8.0f, id = d ? 1.0f / d : 0.0f;
    const uint16_t dh = ToF16(d);
    Put(out, dh);
    int codes[32];
    for (int j = 0; j < 32; ++j) {
      int q = static_cast<int>(x[b + j] * id + 8.5f);
      codes[j] = q > 15 ? 15 : q < 0 ? 0 : q;
    }
    for (int j = 0; j < 16; ++j) Put(out, static_cast<uint8_t>(codes[j] | (codes[j + 16] << 4)));
    for (int j = 0; j < 32; ++j) expected->push_back((codes[j] - 8) * FromF16(dh));
  }
  return out;
}

inline Bytes QuantizeQ4_1(const std::vector<float>& x, std::vector<float>* expected) {
  Bytes out;
  for (size_t b = 0; b < x.size(); b += 32) {
    float mn = x[b], mx = x[b];
    for (int j = 0; j < 32; ++j) {
      mn = std::fmin(mn, x[b + j]);
      mx = std::fmax(mx, x[b + j]);
    }
    const float d = (mx - mn) / 15.0f, id = d ? 1.0f / d : 0.0f;
    const uint16_t dh = ToF16(d), mh = ToF16(mn);
    Put(out, dh);
    Put(out, mh);
    int codes[32];
    for (int j = 0; j < 32; ++j) {
      int q = static_cast<int>((x[b + j] - mn) * id + 0.5f);
      codes[j] = q > 15 ? 15 : q < 0 ? 0 : q;
    }
    for (int j = 0; j < 16; ++j) Put(out, static_cast<uint8_t>(codes[j] | (codes[j + 16] << 4)));
    for (int j = 0; j < 32; ++j) expected->push_back(codes[j] * FromF16(dh) + FromF16(mh));
  }
  return out;
}

// Q6_K: 256 values, 16 sub-blocks of 16 with an int8 scale each, 6-bit codes.
inline Bytes QuantizeQ6_K(const std::vector<float>& x, std::vector<float>* expected) {
  Bytes out;
  for (size_t b = 0; b < x.size(); b += 256) {
    float sub[16];
    float max_sub = 0;
    for (int s = 0; s < 16; ++s) {
      float amax = 0;
      for (int j = 0; j < 16; ++j) amax = std::fmax(amax, std::fabs(x[b + 16 * s + j]));
      sub[s] = amax / 31.0f;
      max_sub = std::fmax(max_sub, sub[s]);
    }
    const float d = max_sub / 127.0f;
    const uint16_t dh = ToF16(d);
    const float df = FromF16(dh);
    int8_t sc[16];
    for (int s = 0; s < 16; ++s) sc[s] = df ? static_cast<int8_t>(std::round(sub[s] / df)) : 0;
    int L[256];
    for (int e = 0; e < 256; ++e) {
      const float step = df * sc[e / 16];
      int q = step ? static_cast<int>(std::round(x[b + e] / step)) : 0;
      q = q < -32 ? -32 : q > 31 ? 31 : q;
      L[e] = q + 32;
    }
    uint8_t ql[128] = {0}, qh[64] = {0};
    for (int half = 0; half < 2; ++half) {
      const int j = half * 128;
      uint8_t* pl = ql + half * 64;
      uint8_t* ph = qh + half * 32;
      for (int l = 0; l < 32; ++l) {
        pl[l] = static_cast<uint8_t>((L[j + l] & 0xF) | ((L[j + l + 64] & 0xF) << 4));
        pl[l + 32] = static_cast<uint8_t>((L[j + l + 32] & 0xF) | ((L[j + l + 96] & 0xF) << 4));
        ph[l] = static_cast<uint8_t>((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                                     ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
      }
    }
    out.insert(out.end(), ql, ql + 128);
    out.insert(out.end(), qh, qh + 64);
    for (int s = 0; s < 16; ++s) Put(out, sc[s]);
    Put(out, dh);
    for (int e = 0; e < 256; ++e) expected->push_back(df * sc[e / 16] * static_cast<int8_t>(L[e] - 32));
  }
  return out;
}

// Q5_0 / Q5_1 from given 5-bit codes (0..31) per 32-block.
inline Bytes PackQ5(const std::vector<int>& codes, const std::vector<float>& d,
                    const std::vector<float>* m, std::vector<float>* expected) {
  Bytes out;
  for (size_t b = 0; b * 32 < codes.size(); ++b) {
    const uint16_t dh = ToF16(d[b]);
    Put(out, dh);
    uint16_t mh = 0;
    if (m) {
      mh = ToF16((*m)[b]);
      Put(out, mh);
    }
    uint32_t qh = 0;
    uint8_t qs[16];
    for (int j = 0; j < 16; ++j) {
      const int c0 = codes[b * 32 + j], c1 = codes[b * 32 + j + 16];
      qs[j] = static_cast<uint8_t>((c0 & 0xF) | ((c1 & 0xF) << 4));
      qh |= static_cast<uint32_t>((c0 >> 4) & 1) << j;
      qh |= static_cast<uint32_t>((c1 >> 4) & 1) << (j + 16);
    }
    Put(out, qh);
    out.insert(out.end(), qs, qs + 16);
    for (int j = 0; j < 32; ++j) {
      const int c = codes[b * 32 + j];
      expected->push_back(m ? c * FromF16(dh) + FromF16(mh) : (c - 16) * FromF16(dh));
    }
  }
  return out;
}

// Q4_K / Q5_K from given codes (0..15 / 0..31), 6-bit scales and mins (8 per 256-block).
inline Bytes PackQK(bool five, const std::vector<int>& codes, const std::vector<int>& scales,
                    const std::vector<int>& mins, const std::vector<float>& d,
                    const std::vector<float>& dmin, std::vector<float>* expected) {
  Bytes out;
  for (size_t b = 0; b * 256 < codes.size(); ++b) {
    const uint16_t dh = ToF16(d[b]), mh = ToF16(dmin[b]);
    Put(out, dh);
    Put(out, mh);
    uint8_t q[12] = {0};
    for (int j = 0; j < 8; ++j) {
      const int sc = scales[b * 8 + j], mn = mins[b * 8 + j];
      if (j < 4) {
        q[j] |= sc & 63;
        q[j + 4] |= mn & 63;
      } else {
        q[j + 4] |= static_cast<uint8_t>((sc & 0xF) | ((mn & 0xF) << 4));
        q[j - 4] |= static_cast<uint8_t>((sc >> 4) << 6);
        q[j] |= static_cast<uint8_t>((mn >> 4) << 6);
      }
    }
    out.insert(out.end(), q, q + 12);
    const int* c = codes.data() + b * 256;
    if (five) {
      uint8_t qh[32] = {0};
      for (int e = 0; e < 256; ++e) {
        const int chunk = e / 64, second = (e % 64) / 32, l = e % 32;
        if (c[e] & 16) qh[l] |= static_cast<uint8_t>(1 << (2 * chunk + second));
      }
      out.insert(out.end(), qh, qh + 32);
    }
    uint8_t qs[128];
    for (int chunk = 0; chunk < 4; ++chunk)
      for (int l = 0; l < 32; ++l)
        qs[chunk * 32 + l] =
            static_cast<uint8_t>((c[chunk * 64 + l] & 0xF) | ((c[chunk * 64 + 32 + l] & 0xF) << 4));
    out.insert(out.end(), qs, qs + 128);
    for (int e = 0; e < 256; ++e) {
      const float d1 = FromF16(dh) * scales[b * 8 + e / 32];
      const float m1 = FromF16(mh) * mins[b * 8 + e / 32];
      expected->push_back(d1 * c[e] - m1);
    }
  }
  return out;
}

// ---------------------------------------------------------------- GGUF writer

enum GgufType : uint32_t {
  kGgufU8 = 0, kGgufI8 = 1, kGgufU16 = 2, kGgufI16 = 3, kGgufU32 = 4, kGgufI32 = 5,
  kGgufF32 = 6, kGgufBool = 7, kGgufString = 8, kGgufArray = 9, kGgufU64 = 10, kGgufI64 = 11,
  kGgufF64 = 12,
};
enum GgmlTypeId : uint32_t {
  kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ4_0 = 2, kGgmlQ4_1 = 3, kGgmlQ5_0 = 6, kGgmlQ5_1 = 7,
  kGgmlQ8_0 = 8, kGgmlQ4_K = 12, kGgmlQ5_K = 13, kGgmlQ6_K = 14, kGgmlQ8_K = 15, kGgmlBF16 = 30,
};

inline void PutGgufString(Bytes& b, const std::string& s) {
  Put<uint64_t>(b, s.size());
  b.insert(b.end(), s.begin(), s.end());
}

struct GgufTensorSpec {
  std::string name;
  std::vector<uint64_t> ne;  // innermost first
  uint32_t type;
  Bytes data;
};

// Builds a GGUF file. Layout records where fields landed, so tests can corrupt them.
class GgufWriter {
 public:
  uint32_t version = 3;
  uint32_t alignment = 32;        // used for padding; written as general.alignment if set_alignment
  bool write_alignment_key = false;

  void KvString(const std::string& k, const std::string& v) { Kv(k, kGgufString, [&](Bytes& b) { PutGgufString(b, v); }); }
  void KvU32(const std::string& k, uint32_t v) { Kv(k, kGgufU32, [&](Bytes& b) { Put(b, v); }); }
  void KvI32(const std::string& k, int32_t v) { Kv(k, kGgufI32, [&](Bytes& b) { Put(b, v); }); }
  void KvU64(const std::string& k, uint64_t v) { Kv(k, kGgufU64, [&](Bytes& b) { Put(b, v); }); }
  void KvF32(const std::string& k, float v) { Kv(k, kGgufF32, [&](Bytes& b) { Put(b, v); }); }
  void KvF64(const std::string& k, double v) { Kv(k, kGgufF64, [&](Bytes& b) { Put(b, v); }); }
  void KvBool(const std::string& k, bool v) { Kv(k, kGgufBool, [&](Bytes& b) { Put<uint8_t>(b, v); }); }
  void KvStrings(const std::string& k, const std::vector<std::string>& v) {
    Kv(k, kGgufArray, [&](Bytes& b) {
      Put<uint32_t>(b, kGgufString);
      Put<uint64_t>(b, v.size());
      for (const auto& s : v) PutGgufString(b, s);
    });
  }
  void KvI32s(const std::string& k, const std::vector<int32_t>& v) {
    Kv(k, kGgufArray, [&](Bytes& b) {
      Put<uint32_t>(b, kGgufI32);
      Put<uint64_t>(b, v.size());
      for (int32_t x : v) Put(b, x);
    });
  }
  void KvF32s(const std::string& k, const std::vector<float>& v) {
    Kv(k, kGgufArray, [&](Bytes& b) {
      Put<uint32_t>(b, kGgufF32);
      Put<uint64_t>(b, v.size());
      for (float x : v) Put(b, x);
    });
  }
  // A raw key/value: the key, then `type` and the already-encoded value bytes.
  void KvRaw(const std::string& k, uint32_t type, const Bytes& value) {
    Kv(k, type, [&](Bytes& b) { b.insert(b.end(), value.begin(), value.end()); });
  }
  void Tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, Bytes data) {
    tensors_.push_back({name, std::move(ne), type, std::move(data)});
  }
  void TensorF32(const std::string& name, std::vector<uint64_t> ne, const std::vector<float>& v) {
    Bytes b(v.size() * 4);
    if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
    Tensor(name, std::move(ne), kGgmlF32, std::move(b));
  }

  // Where things are in the last Build() output.
  struct Layout {
    size_t tensor_count_at = 0, kv_count_at = 0;
    std::vector<size_t> kv_at;              // start of each key/value (its key length)
    std::vector<size_t> tensor_info_at;     // start of each tensor info (its name length)
    std::vector<size_t> tensor_offset_at;   // the u64 offset field of each tensor info
    std::vector<size_t> tensor_ndims_at;    // the u32 n_dims field
    std::vector<size_t> tensor_type_at;     // the u32 type field
    std::vector<uint64_t> tensor_offset;    // relative offsets written
    size_t data_at = 0;                     // absolute start of the data section
  } layout;

  Bytes Build() {
    layout = Layout();
    Bytes b = {'G', 'G', 'U', 'F'};
    Put(b, version);
    layout.tensor_count_at = b.size();
    Put<uint64_t>(b, tensors_.size());
    layout.kv_count_at = b.size();
    std::vector<std::pair<std::string, Bytes>> kvs = kvs_;
    if (write_alignment_key) {
      Bytes v;
      Put<uint32_t>(v, kGgufU32);
      Put<uint32_t>(v, alignment);
      kvs.insert(kvs.begin(), {"general.alignment", v});
    }
    Put<uint64_t>(b, kvs.size());
    for (const auto& [k, v] : kvs) {
      layout.kv_at.push_back(b.size());
      PutGgufString(b, k);
      b.insert(b.end(), v.begin(), v.end());
    }
    uint64_t offset = 0;
    for (const auto& t : tensors_) {
      layout.tensor_info_at.push_back(b.size());
      PutGgufString(b, t.name);
      layout.tensor_ndims_at.push_back(b.size());
      Put<uint32_t>(b, static_cast<uint32_t>(t.ne.size()));
      for (uint64_t n : t.ne) Put(b, n);
      layout.tensor_type_at.push_back(b.size());
      Put(b, t.type);
      layout.tensor_offset_at.push_back(b.size());
      Put(b, offset);
      layout.tensor_offset.push_back(offset);
      offset += (t.data.size() + alignment - 1) / alignment * alignment;
    }
    while (b.size() % alignment) b.push_back(0);
    layout.data_at = b.size();
    for (const auto& t : tensors_) {
      b.insert(b.end(), t.data.begin(), t.data.end());
      while ((b.size() - layout.data_at) % alignment) b.push_back(0);
    }
    return b;
  }

 private:
  template <typename F>
  void Kv(const std::string& k, uint32_t type, F&& value) {
    Bytes v;
    Put(v, type);
    value(v);
    kvs_.push_back({k, std::move(v)});
  }
  std::vector<std::pair<std::string, Bytes>> kvs_;
  std::vector<GgufTensorSpec> tensors_;
};

// ---------------------------------------------------------------- safetensors writer

struct SafetensorsSpec {
  std::string name, dtype;
  std::vector<int64_t> shape;
  Bytes data;
};

inline std::string ShapeJson(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// A safetensors file; `header_override` replaces the generated JSON header when non-empty.
inline Bytes BuildSafetensors(const std::vector<SafetensorsSpec>& tensors,
                              const std::string& header_override = "",
                              const std::string& metadata_json = "") {
  std::string header = "{";
  Bytes data;
  bool first = true;
  if (!metadata_json.empty()) {
    header += "\"__metadata__\":" + metadata_json;
    first = false;
  }
  for (const auto& t : tensors) {
    const size_t begin = data.size();
    data.insert(data.end(), t.data.begin(), t.data.end());
    header += std::string(first ? "" : ",") + "\"" + t.name + "\":{\"dtype\":\"" + t.dtype +
              "\",\"shape\":" + ShapeJson(t.shape) + ",\"data_offsets\":[" + std::to_string(begin) +
              "," + std::to_string(data.size()) + "]}";
    first = false;
  }
  header += "}";
  if (!header_override.empty()) header = header_override;
  while ((8 + header.size()) % 8) header += ' ';
  Bytes out;
  Put<uint64_t>(out, header.size());
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

inline Bytes F32Bytes(const std::vector<float>& v) {
  Bytes b(v.size() * 4);
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}
inline Bytes F16Bytes(const std::vector<float>& v) {
  Bytes b;
  for (float f : v) Put(b, ToF16(f));
  return b;
}
inline Bytes BF16Bytes(const std::vector<float>& v) {
  Bytes b;
  for (float f : v) Put(b, ToBF16(f));
  return b;
}

// ---------------------------------------------------------------- tiny models

// Deterministic values k/64 with |k| <= 64: exact in f32, f16 and bf16.
inline std::vector<float> Values(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  uint32_t s = seed * 2654435761u + 12345u;
  for (size_t i = 0; i < n; ++i) {
    s = s * 1664525u + 1013904223u;
    v[i] = static_cast<float>(static_cast<int>((s >> 8) % 129) - 64) / 64.0f;
  }
  return v;
}

// llama.cpp's convert_hf_to_gguf.py permute(): rows viewed as [n_head, 2, rows/n_head/2] with
// the last two axes swapped. Written from the Python, independently of the loader.
inline std::vector<float> ConverterPermute(const std::vector<float>& w, int64_t rows, int64_t cols,
                                           int64_t n_head) {
  const int64_t half = rows / n_head / 2;
  std::vector<float> out(w.size());
  // out.reshape(n_head, half, 2, cols)[h][i][s] = w.reshape(n_head, 2, half, cols)[h][s][i]
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t s = 0; s < 2; ++s) {
        const int64_t dst = (h * half + i) * 2 + s;
        const int64_t src = (h * 2 + s) * half + i;
        std::memcpy(&out[dst * cols], &w[src * cols], cols * sizeof(float));
      }
  return out;
}

struct TinyConfig {
  bool gemma = false;
  int64_t vocab = 48, d = 64, ffn = 96, layers = 2, heads = 4, kv_heads = 2, head_dim = 16, ctx = 128;
  bool tied = true;
  float eps = 1e-5f;
  float theta = 10000.0f;
  int64_t bos = 1, eos = 2;
};

// Canonical (Hugging Face) tensors of a tiny model, as f32 with exact values.
struct TinyTensor {
  std::vector<int64_t> shape;
  std::vector<float> values;
};
inline std::map<std::string, TinyTensor> TinyWeights(const TinyConfig& c) {
  std::map<std::string, TinyTensor> w;
  uint32_t seed = 1;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    w[name] = {shape, Values(n, seed++)};
  };
  const int64_t q = c.heads * c.head_dim, kv = c.kv_heads * c.head_dim;
  add("model.embed_tokens.weight", {c.vocab, c.d});
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", {c.d});
    add(p + "self_attn.q_proj.weight", {q, c.d});
    add(p + "self_attn.k_proj.weight", {kv, c.d});
    add(p + "self_attn.v_proj.weight", {kv, c.d});
    add(p + "self_attn.o_proj.weight", {c.d, q});
    add(p + "post_attention_layernorm.weight", {c.d});
    add(p + "mlp.gate_proj.weight", {c.ffn, c.d});
    add(p + "mlp.up_proj.weight", {c.ffn, c.d});
    add(p + "mlp.down_proj.weight", {c.d, c.ffn});
  }
  add("model.norm.weight", {c.d});
  if (!c.tied) add("lm_head.weight", {c.vocab, c.d});
  return w;
}

inline std::string GgufNameFor(const std::string& canonical) {
  if (canonical == "model.embed_tokens.weight") return "token_embd.weight";
  if (canonical == "model.norm.weight") return "output_norm.weight";
  if (canonical == "lm_head.weight") return "output.weight";
  static const std::pair<const char*, const char*> kMap[] = {
      {"input_layernorm.weight", "attn_norm.weight"}, {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},   {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},    {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
  };
  const std::string prefix = "model.layers.";
  size_t dot = canonical.find('.', prefix.size());
  const std::string layer = canonical.substr(prefix.size(), dot - prefix.size());
  const std::string rest = canonical.substr(dot + 1);
  for (const auto& [hf, g] : kMap)
    if (rest == hf) return "blk." + layer + "." + g;
  throw std::runtime_error("no GGUF name for " + canonical);
}

// A GGUF writer filled as llama.cpp's converter would write the tiny model: metadata, the
// tokenizer token list, Q/K permuted (llama), norms + 1 (gemma), all tensors f32.
inline GgufWriter TinyGguf(const TinyConfig& c, const std::map<std::string, TinyTensor>& w) {
  GgufWriter g;
  const std::string a = c.gemma ? "gemma" : "llama";
  g.KvString("general.architecture", a);
  g.KvString("general.name", "tiny");
  g.KvU32(a + ".context_length", static_cast<uint32_t>(c.ctx));
  g.KvU32(a + ".embedding_length", static_cast<uint32_t>(c.d));
  g.KvU32(a + ".block_count", static_cast<uint32_t>(c.layers));
  g.KvU32(a + ".feed_forward_length", static_cast<uint32_t>(c.ffn));
  g.KvU32(a + ".attention.head_count", static_cast<uint32_t>(c.heads));
  g.KvU32(a + ".attention.head_count_kv", static_cast<uint32_t>(c.kv_heads));
  g.KvF32(a + ".attention.layer_norm_rms_epsilon", c.eps);
  g.KvF32(a + ".rope.freq_base", c.theta);
  g.KvU32(a + ".attention.key_length", static_cast<uint32_t>(c.head_dim));
  g.KvU32(a + ".attention.value_length", static_cast<uint32_t>(c.head_dim));
  g.KvString("tokenizer.ggml.model", c.gemma ? "llama" : "gpt2");
  std::vector<std::string> tokens;
  for (int64_t i = 0; i < c.vocab; ++i) tokens.push_back("tok" + std::to_string(i));
  g.KvStrings("tokenizer.ggml.tokens", tokens);
  g.KvU32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(c.bos));
  g.KvU32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(c.eos));
  for (const auto& [name, t] : w) {
    std::vector<uint64_t> ne(t.shape.rbegin(), t.shape.rend());
    std::vector<float> v = t.values;
    const bool is_q = name.find("q_proj") != std::string::npos;
    const bool is_k = name.find("k_proj") != std::string::npos;
    if (!c.gemma && (is_q || is_k))
      v = ConverterPermute(v, t.shape[0], t.shape[1], is_q ? c.heads : c.kv_heads);
    if (c.gemma && name.size() >= 11 && name.compare(name.size() - 11, 11, "norm.weight") == 0)
      for (float& x : v) x += 1.0f;
    g.TensorF32(GgufNameFor(name), ne, v);
  }
  return g;
}

inline std::string TinyHfConfigJson(const TinyConfig& c) {
  std::string s = "{\n";
  s += c.gemma ? "  \"architectures\": [\"GemmaForCausalLM\"],\n  \"model_type\": \"gemma\",\n"
                   "  \"hidden_act\": \"gelu_pytorch_tanh\",\n"
               : "  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
                 "  \"hidden_act\": \"silu\",\n";
  s += "  \"vocab_size\": " + std::to_string(c.vocab) + ",\n";
  s += "  \"hidden_size\": " + std::to_string(c.d) + ",\n";
  s += "  \"intermediate_size\": " + std::to_string(c.ffn) + ",\n";
  s += "  \"num_hidden_layers\": " + std::to_string(c.layers) + ",\n";
  s += "  \"num_attention_heads\": " + std::to_string(c.heads) + ",\n";
  s += "  \"num_key_value_heads\": " + std::to_string(c.kv_heads) + ",\n";
  s += "  \"head_dim\": " + std::to_string(c.head_dim) + ",\n";
  s += "  \"max_position_embeddings\": " + std::to_string(c.ctx) + ",\n";
  char eps[32];
  std::snprintf(eps, sizeof(eps), "%g", static_cast<double>(c.eps));
  s += std::string("  \"rms_norm_eps\": ") + eps + ",\n";
  s += "  \"rope_theta\": " + std::to_string(static_cast<int64_t>(c.theta)) + ".0,\n";
  s += "  \"rope_scaling\": null,\n";
  s += std::string("  \"tie_word_embeddings\": ") + (c.tied ? "true" : "false") + ",\n";
  s += "  \"bos_token_id\": " + std::to_string(c.bos) + ",\n";
  s += "  \"eos_token_id\": " + std::to_string(c.eos) + ",\n";
  s += "  \"torch_dtype\": \"float32\"\n}\n";
  return s;
}

// Safetensors specs of the tiny model in the given dtype ("F32", "F16", "BF16").
inline std::vector<SafetensorsSpec> TinySafetensors(const std::map<std::string, TinyTensor>& w,
                                                    const std::string& dtype) {
  std::vector<SafetensorsSpec> out;
  for (const auto& [name, t] : w) {
    Bytes b = dtype == "F32" ? F32Bytes(t.values) : dtype == "F16" ? F16Bytes(t.values) : BF16Bytes(t.values);
    out.push_back({name, dtype, t.shape, std::move(b)});
  }
  return out;
}

}  // namespace testing_files
}  // namespace cascade
