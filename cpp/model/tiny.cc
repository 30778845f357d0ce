#include "util/timer.h"
#include "model/tiny.h"

#include "model/json.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <unordered_map>

#include "kernels/int8_matmul.h"
#include "model/decoder.h"
#include "model/programs.h"
#include "model/safetensors.h"
#include "model/tiny_training.h"
#include "pjrt/errors.h"

namespace cascade {
namespace {

constexpr const char* kFormat = "cascade-xla-tiny";
constexpr const char* kVersion = "1";


struct TensorSlot {
  const char* name;
  HostTensor TinyWeights::*member;
};
constexpr TensorSlot kSlots[] = {
    {"proj_in.weight", &TinyWeights::w1}, {"proj_in.bias", &TinyWeights::b1},   {"norm.weight", &TinyWeights::ln_w},
    {"norm.bias", &TinyWeights::ln_b},    {"proj_out.weight", &TinyWeights::w2}, {"proj_out.bias", &TinyWeights::b2},
};

std::vector<int64_t> ExpectedDims(const TinyWeights& t, const std::string& name) {
  if (name == "proj_in.weight") return {t.hidden, t.input_dim};
  if (name == "proj_out.weight") return {t.vocab, t.hidden};
  if (name == "proj_out.bias") return {t.vocab};
  return {t.hidden};
}

bool IsFormatKey(const std::string& k) {
  return k == "format" || k == "version" || k == "input_dim" || k == "hidden" || k == "vocab" || k == "input" ||
         k == "layer_norm_eps" || k == "checksum";
}

// FNV-1a 64 over the six tensors' f32 bytes in file order, as 16 hex digits: the "checksum"
// metadata SaveTiny writes and LoadTiny verifies (a cache file cut short or overwritten by other
// bytes must not load as a model, issue #18).
std::string TensorChecksum(const TinyWeights& t) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const TensorSlot& s : kSlots)
    for (uint8_t b : (t.*s.member).data) h = (h ^ b) * 0x100000001b3ULL;
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return hex;
}


std::string DimsJson(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? "," : "") + std::to_string(dims[i]);
  return s + "]";
}

HostTensor Transposed(const HostTensor& t) {
  const int64_t rows = t.dims[0], cols = t.dims[1];
  HostTensor out(DType::kF32, {cols, rows});
  const float* in = t.as<float>();
  float* o = out.as<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) o[c * rows + r] = in[r * cols + c];
  return out;
}

// Symmetric eigen-decomposition (cyclic Jacobi) of a [n, n] row-major matrix: eigenvalues
// descending, eigenvectors as rows of `vectors`.
void SymmetricEigen(std::vector<double> a, int64_t n, std::vector<double>& values, std::vector<double>& vectors) {
  std::vector<double> v(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) v[i * n + i] = 1.0;
  for (int sweep = 0; sweep < 60; ++sweep) {
    double off = 0, total = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) (i == j ? total : off) += a[i * n + j] * a[i * n + j];
    if (off <= 1e-22 * (total + off)) break;
    for (int64_t p = 0; p < n; ++p) {
      for (int64_t q = p + 1; q < n; ++q) {
        const double apq = a[p * n + q];
        if (std::fabs(apq) < 1e-300) continue;
        const double theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (int64_t k = 0; k < n; ++k) {  // columns p, q
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (int64_t k = 0; k < n; ++k) {  // rows p, q
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        for (int64_t k = 0; k < n; ++k) {  // eigenvectors as rows of v
          const double vp = v[p * n + k], vq = v[q * n + k];
          v[p * n + k] = c * vp - s * vq;
          v[q * n + k] = s * vp + c * vq;
        }
      }
    }
  }
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return a[x * n + x] > a[y * n + y]; });
  values.resize(static_cast<size_t>(n));
  vectors.resize(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i) {
    values[i] = a[order[i] * n + order[i]];
    std::copy(v.begin() + order[i] * n, v.begin() + (order[i] + 1) * n, vectors.begin() + i * n);
  }
}

// Cholesky factor L (lower, row-major) of a symmetric positive definite [n, n] matrix.
std::vector<double> Cholesky(const std::vector<double>& a, int64_t n) {
  std::vector<double> l(static_cast<size_t>(n * n), 0.0);
  for (int64_t j = 0; j < n; ++j) {
    double s = a[j * n + j];
    for (int64_t k = 0; k < j; ++k) s -= l[j * n + k] * l[j * n + k];
    if (!(s > 0)) throw InvalidArgumentError("tiny fit: the ridge system is not positive definite (raise ridge)");
    const double d = std::sqrt(s);
    l[j * n + j] = d;
    for (int64_t i = j + 1; i < n; ++i) {
      double t = a[i * n + j];
      for (int64_t k = 0; k < j; ++k) t -= l[i * n + k] * l[j * n + k];
      l[i * n + j] = t / d;
    }
  }
  return l;
}

// A^-1 from its Cholesky factor (solves L L^T X = I column by column).
std::vector<double> CholeskyInverse(const std::vector<double>& l, int64_t n) {
  std::vector<double> inv(static_cast<size_t>(n * n), 0.0), y(static_cast<size_t>(n));
  for (int64_t c = 0; c < n; ++c) {
    for (int64_t i = 0; i < n; ++i) {
      double s = i == c ? 1.0 : 0.0;
      for (int64_t k = 0; k < i; ++k) s -= l[i * n + k] * y[k];
      y[i] = s / l[i * n + i];
    }
    for (int64_t i = n - 1; i >= 0; --i) {
      double s = y[i];
      for (int64_t k = i + 1; k < n; ++k) s -= l[k * n + i] * inv[k * n + c];
      inv[i * n + c] = s / l[i * n + i];
    }
  }
  return inv;
}

}  // namespace

// ------------------------------------------------------------------------------ weights, files

int64_t TinyWeights::byte_size() const {
  return 4 * (hidden * input_dim + 3 * hidden + vocab * hidden + vocab);
}

void ValidateTiny(const TinyWeights& t) {
  if (t.input_dim < 1 || t.hidden < 1 || t.vocab < 1)
    throw InvalidArgumentError("tiny model: input_dim, hidden and vocab must be positive, got " +
                               std::to_string(t.input_dim) + ", " + std::to_string(t.hidden) + ", " +
                               std::to_string(t.vocab));
  for (const TensorSlot& s : kSlots) {
    const HostTensor& x = t.*s.member;
    const auto dims = ExpectedDims(t, s.name);
    if (x.dtype != DType::kF32 || x.dims != dims)
      throw InvalidArgumentError(std::string("tiny model: ") + s.name + " is " + ShapeString(x.dtype, x.dims) +
                                 ", expected " + ShapeString(DType::kF32, dims));
  }
}

void CheckTinyFitsDraft(const TinyWeights& t, const ModelConfig& draft) {
  if (t.input_dim != draft.hidden_size || t.vocab != draft.vocab_size)
    throw InvalidArgumentError("tiny model (input_dim " + std::to_string(t.input_dim) + ", vocab " +
                               std::to_string(t.vocab) + ") does not fit the draft (hidden_size " +
                               std::to_string(draft.hidden_size) + ", vocab " + std::to_string(draft.vocab_size) + ")");
}

TinyWeights LoadTiny(const std::string& path, const ModelConfig* draft, bool require_checksum) {
  SafetensorsFile file(path);
  auto fail = [&](const std::string& what) -> void { throw ModelFormatError(path + ": " + what); };
  const auto& meta = file.metadata();
  auto field = [&](const char* key) -> std::string {
    auto it = meta.find(key);
    if (it == meta.end()) fail(std::string("__metadata__ has no \"") + key + "\" (not a cascade-xla tiny model file?)");
    return it->second;
  };
  if (field("format") != kFormat)
    fail("__metadata__ \"format\" is \"" + field("format") + "\", expected \"" + kFormat + "\"");
  if (field("version") != kVersion)
    fail("__metadata__ \"version\" is \"" + field("version") + "\"; this build reads version " + kVersion);
  auto size = [&](const char* key) -> int64_t {
    const std::string s = field(key);
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(s, &used);
    } catch (...) {
      used = 0;
    }
    if (used != s.size() || s.empty() || v < 1) fail(std::string("__metadata__ \"") + key + "\" is \"" + s + "\", not a positive integer");
    return static_cast<int64_t>(v);
  };
  TinyWeights t;
  t.input_dim = size("input_dim");
  t.hidden = size("hidden");
  t.vocab = size("vocab");
  if (meta.count("input")) {
    const std::string& input = meta.at("input");
    if (input == TinyInputName(TinyInput::kDraftHidden)) {
      t.input = TinyInput::kDraftHidden;
    } else if (input != TinyInputName(TinyInput::kInputEmbedding)) {
      fail("__metadata__ \"input\" is \"" + input + "\", expected \"" + TinyInputName(TinyInput::kDraftHidden) +
           "\" or \"" + TinyInputName(TinyInput::kInputEmbedding) + "\"");
    }
  }
  for (const auto& [k, v] : meta)
    if (!IsFormatKey(k)) t.metadata[k] = v;
  for (const auto& info : file.tensors()) {
    bool known = false;
    for (const TensorSlot& s : kSlots) known = known || info.name == s.name;
    if (!known) fail("unexpected tensor \"" + info.name + "\" (a tiny model file holds proj_in.*, norm.*, proj_out.*)");
  }
  for (const TensorSlot& s : kSlots) {
    const SafetensorsTensorInfo* info = file.FindTensor(s.name);
    if (!info) fail(std::string("missing tensor \"") + s.name + "\"");
    if (!info->supported)
      fail(std::string("tensor \"") + s.name + "\" has dtype " + info->dtype_name + "; F32, F16 or BF16 expected");
    const auto dims = ExpectedDims(t, s.name);
    if (info->shape != dims)
      fail(std::string("tensor \"") + s.name + "\" has shape " + DimsJson(info->shape) + ", expected " + DimsJson(dims) +
           " (input_dim " + std::to_string(t.input_dim) + ", hidden " + std::to_string(t.hidden) + ", vocab " +
           std::to_string(t.vocab) + ")");
    t.*s.member = ToF32(file.ReadTensor(*info));
  }
  if (meta.count("checksum") && meta.at("checksum") != TensorChecksum(t))
    fail("the tensors do not match the file's checksum " + meta.at("checksum") + " (got " + TensorChecksum(t) +
         "): the file is corrupt or was cut short");
  if (require_checksum && !meta.count("checksum")) fail("__metadata__ has no \"checksum\" (written by an older cascade-xla)");
  if (draft && (t.input_dim != draft->hidden_size || t.vocab != draft->vocab_size))
    fail("the tiny model (input_dim " + std::to_string(t.input_dim) + ", vocab " + std::to_string(t.vocab) +
         ") does not fit the draft (hidden_size " + std::to_string(draft->hidden_size) + ", vocab " +
         std::to_string(draft->vocab_size) + ")");
  return t;
}

void SaveTiny(const TinyWeights& t, const std::string& path) {
  ValidateTiny(t);
  std::map<std::string, std::string> meta = t.metadata;
  for (auto it = meta.begin(); it != meta.end();) it = IsFormatKey(it->first) ? meta.erase(it) : std::next(it);
  meta["checksum"] = TensorChecksum(t);
  meta["format"] = kFormat;
  meta["version"] = kVersion;
  meta["input_dim"] = std::to_string(t.input_dim);
  meta["hidden"] = std::to_string(t.hidden);
  meta["vocab"] = std::to_string(t.vocab);
  meta["input"] = TinyInputName(t.input);
  meta["layer_norm_eps"] = "1e-05";
  std::string header = "{\"__metadata__\":{";
  bool first = true;
  for (const auto& [k, v] : meta) {
    header += (first ? "" : ",") + json::Quote(k) + ":" + json::Quote(v);
    first = false;
  }
  header += "}";
  uint64_t offset = 0;
  for (const TensorSlot& s : kSlots) {
    const HostTensor& x = t.*s.member;
    header += std::string(",") + json::Quote(s.name) + ":{\"dtype\":\"F32\",\"shape\":" + DimsJson(x.dims) +
              ",\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + x.data.size()) + "]}";
    offset += x.data.size();
  }
  header += "}";
  while (header.size() % 8) header += ' ';

  const std::string tmp = path + ".tmp" + std::to_string(static_cast<unsigned long>(::getpid()));
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw Error(ErrorKind::kModelFormat, path + ": cannot open " + tmp + " for writing: " + std::strerror(errno));
  const uint64_t n = header.size();
  bool ok = std::fwrite(&n, 8, 1, f) == 1 && std::fwrite(header.data(), 1, header.size(), f) == header.size();
  for (const TensorSlot& s : kSlots) {
    const HostTensor& x = t.*s.member;
    ok = ok && std::fwrite(x.data.data(), 1, x.data.size(), f) == x.data.size();
  }
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(ErrorKind::kModelFormat, path + ": writing the tiny model failed: " + std::strerror(errno));
  }
}

TinyWeights RandomTiny(int64_t input_dim, int64_t hidden, int64_t vocab, uint32_t seed, float scale, TinyInput input) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, 1);
  TinyWeights t;
  t.input = input;
  t.input_dim = input_dim;
  t.hidden = hidden;
  t.vocab = vocab;
  auto fill = [&](std::vector<int64_t> dims, float mean, float sd) {
    HostTensor x(DType::kF32, std::move(dims));
    for (int64_t i = 0; i < x.element_count(); ++i) x.as<float>()[i] = mean + sd * normal(rng);
    return x;
  };
  t.w1 = fill({hidden, input_dim}, 0, scale / std::sqrt(static_cast<float>(input_dim)));
  t.b1 = fill({hidden}, 0, 0.1f);
  t.ln_w = fill({hidden}, 1, 0.1f);
  t.ln_b = fill({hidden}, 0, 0.1f);
  t.w2 = fill({vocab, hidden}, 0, scale / std::sqrt(static_cast<float>(hidden)));
  t.b2 = fill({vocab}, 0, 0.1f);
  t.metadata["fit"] = "random";
  return t;
}

HostTensor TinyInputEmbeddings(const ModelWeights& draft, WeightPrecision precision) {
  const HostTensor& emb = draft.at("model.embed_tokens.weight");
  HostTensor e = precision == WeightPrecision::kF32 ? ToF32(emb) : ToF32(ToBF16(emb));
  if (draft.config.family == ModelFamily::kGemma) {
    // As the program: the (f32) row times sqrt(d) rounded to f32.
    const float s = static_cast<float>(std::sqrt(static_cast<double>(draft.config.hidden_size)));
    for (int64_t i = 0; i < e.element_count(); ++i) e.as<float>()[i] *= s;
  }
  return e;
}

std::vector<double> TinyFeatures(const TinyWeights& t, const float* e) {
  const int64_t H = t.hidden, d = t.input_dim;
  std::vector<double> z(static_cast<size_t>(H));
  const float* w1 = t.w1.as<float>();
  for (int64_t j = 0; j < H; ++j) {
    double s = t.b1.as<float>()[j];
    for (int64_t i = 0; i < d; ++i) s += static_cast<double>(w1[j * d + i]) * e[i];
    z[j] = s;
  }
  double mean = 0, var = 0;
  for (double x : z) mean += x;
  mean /= H;
  for (double x : z) var += (x - mean) * (x - mean);
  var /= H;
  const double r = 1 / std::sqrt(var + kTinyLayerNormEps);
  for (int64_t j = 0; j < H; ++j)
    z[j] = std::max(0.0, (z[j] - mean) * r * t.ln_w.as<float>()[j] + t.ln_b.as<float>()[j]);
  return z;
}

std::vector<float> TinyLogits(const TinyWeights& t, const float* e) {
  const std::vector<double> h = TinyFeatures(t, e);
  const int64_t H = t.hidden, V = t.vocab;
  std::vector<float> out(static_cast<size_t>(V));
  const float* w2 = t.w2.as<float>();
  for (int64_t v = 0; v < V; ++v) {
    double s = t.b2.as<float>()[v];
    for (int64_t j = 0; j < H; ++j) s += static_cast<double>(w2[v * H + j]) * h[j];
    out[v] = static_cast<float>(s);
  }
  return out;
}

std::vector<int32_t> TopKIds(const float* logits, int64_t count, int64_t k) {
  k = std::min(k, count);
  std::vector<int32_t> ids(static_cast<size_t>(count));
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  });
  ids.resize(static_cast<size_t>(k));
  return ids;
}

namespace {

// W2 [vocab, hidden] as int8 rows with scale max|row| / 127 (as model/weights.h quantises).
void QuantizeRows(const HostTensor& w, HostTensor& values, HostTensor& scales) {
  const int64_t rows = w.dims[0], cols = w.dims[1];
  values = HostTensor(DType::kS8, {rows, cols});
  scales = HostTensor(DType::kF32, {rows});
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = w.as<float>() + r * cols;
    float m = 0;
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, std::fabs(in[c]));
    const float scale = m > 0 ? m / 127.0f : 1.0f;
    scales.as<float>()[r] = scale;
    int8_t* out = reinterpret_cast<int8_t*>(values.data.data()) + r * cols;
    for (int64_t c = 0; c < cols; ++c)
      out[c] = static_cast<int8_t>(std::max(-127.0f, std::min(127.0f, std::nearbyint(in[c] / scale))));
  }
}

}  // namespace

std::vector<HostTensor> PrepareTinyParams(const TinyWeights& tiny) {
  ValidateTiny(tiny);
  TinyWeights rounded;
  const bool q4 = tiny.input == TinyInput::kDraftHidden && TinyW2InQ4(tiny.hidden);
  if (q4) {
    rounded = tiny;
    RoundTinyAsProgramHolds(rounded);  // b2 corrected for the rounding (its blocks quantise back exactly)
  }
  const TinyWeights& t = q4 ? rounded : tiny;
  std::vector<HostTensor> out;
  out.push_back(Transposed(t.w1));
  out.push_back(t.b1);
  out.push_back(t.ln_w);
  out.push_back(t.ln_b);
  if (t.input == TinyInput::kDraftHidden && TinyW2InQ4(t.hidden)) {
    const int64_t V = t.vocab, H = t.hidden;
    out.emplace_back(DType::kU8, std::vector<int64_t>{V, H / 2});
    out.emplace_back(DType::kF16, std::vector<int64_t>{V, H / kernels::kQ4Block});
    out.emplace_back(DType::kF16, std::vector<int64_t>{V, H / kernels::kQ4Block});
    const size_t n = out.size();
    kernels::QuantizeQ4Rows(t.w2.as<float>(), H, V, out[n - 3].as<uint8_t>(), out[n - 2].as<uint16_t>(),
                            out[n - 1].as<uint16_t>());
  } else if (t.input == TinyInput::kDraftHidden) {
    HostTensor values, scales;
    QuantizeRows(t.w2, values, scales);
    out.push_back(std::move(values));
    out.push_back(std::move(scales));
  } else {
    out.push_back(Transposed(t.w2));
  }
  out.push_back(t.b2);
  return out;
}

void RoundTinyAsProgramHolds(TinyWeights& t) {
  if (t.input != TinyInput::kDraftHidden) return;
  HostTensor rounded = RoundedTinyW2(t);
  if (TinyW2InQ4(t.hidden)) {
    // The features h are ~ relu(ln_b) + a zero-mean part (the closed form puts every unit at 4,
    // docs/how-the-cascade-works.md), so (W2 - rounded) h carries a large common part that b2 can
    // take: b2 += (W2 - rounded) mu with mu = relu(ln_b). A W2 already in q4 blocks changes nothing.
    const int64_t V = t.vocab, H = t.hidden;
    const float* w = t.w2.as<float>();
    const float* r = rounded.as<float>();
    const float* lb = t.ln_b.as<float>();
    float* b2 = t.b2.as<float>();
    for (int64_t v = 0; v < V; ++v) {
      double shift = 0;
      for (int64_t j = 0; j < H; ++j)
        shift += (static_cast<double>(w[v * H + j]) - r[v * H + j]) * std::max(0.0f, lb[j]);
      b2[v] = static_cast<float>(b2[v] + shift);
    }
  }
  t.w2 = std::move(rounded);
}

HostTensor RoundedTinyW2(const TinyWeights& t) {
  if (TinyW2InQ4(t.hidden)) {
    const int64_t V = t.vocab, H = t.hidden;
    std::vector<uint8_t> packed(static_cast<size_t>(V * H / 2));
    std::vector<uint16_t> scale(static_cast<size_t>(V * H / kernels::kQ4Block)), min(scale.size());
    kernels::QuantizeQ4Rows(t.w2.as<float>(), H, V, packed.data(), scale.data(), min.data());
    HostTensor out(DType::kF32, t.w2.dims);
    for (int64_t r = 0; r < V; ++r)
      kernels::DequantizeQ4Row(packed.data(), scale.data(), min.data(), H, V, r, out.as<float>() + r * H);
    return out;
  }
  HostTensor values, scales;
  QuantizeRows(t.w2, values, scales);
  HostTensor out(DType::kF32, t.w2.dims);
  const int8_t* v = reinterpret_cast<const int8_t*>(values.data.data());
  for (int64_t r = 0; r < t.vocab; ++r)
    for (int64_t c = 0; c < t.hidden; ++c)
      out.as<float>()[r * t.hidden + c] = static_cast<float>(v[r * t.hidden + c]) * scales.as<float>()[r];
  return out;
}

namespace {

// The rank of targets[i] among the tiny's logits for rows[i]; rows repeated by pointer (one
// token's embedding) are evaluated once.
std::vector<int64_t> RanksOfRowPointers(const TinyWeights& t, const std::vector<const float*>& rows,
                                        const std::vector<int32_t>& targets) {
  // Logits in f32 as rows of W2^T (axpy over the vocabulary, skipping ReLU zeros): ~10x faster
  // than TinyLogits' double dot products; ranks can differ from it only at f32 near-ties.
  const int64_t H = t.hidden, V = t.vocab;
  const HostTensor w2t = Transposed(t.w2);
  auto logits_of = [&](const float* x) {
    const std::vector<double> h = TinyFeatures(t, x);
    std::vector<float> out(t.b2.as<float>(), t.b2.as<float>() + V);
    for (int64_t a = 0; a < H; ++a) {
      if (h[a] == 0) continue;
      const float ha = static_cast<float>(h[a]);
      const float* row = w2t.as<float>() + a * V;
      for (int64_t v = 0; v < V; ++v) out[v] += ha * row[v];
    }
    return out;
  };
  std::unordered_map<const float*, std::vector<float>> logits_cache;
  std::vector<int64_t> ranks;
  ranks.reserve(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    auto it = logits_cache.find(rows[i]);
    if (it == logits_cache.end()) {
      if (logits_cache.size() > 4096) logits_cache.clear();  // rows of hidden states rarely repeat
      it = logits_cache.emplace(rows[i], logits_of(rows[i])).first;
    }
    const std::vector<float>& l = it->second;
    const int32_t y = targets[i];
    int64_t rank = 0;  // ids ranked before y: larger logits, or equal logits with lower ids
    for (int64_t v = 0; v < t.vocab; ++v) rank += l[v] > l[y] || (l[v] == l[y] && v < y);
    ranks.push_back(rank);
  }
  return ranks;
}

}  // namespace

std::vector<int64_t> TinyRanks(const TinyWeights& t, const HostTensor& inputs_e, const std::vector<int32_t>& inputs,
                               const std::vector<int32_t>& targets) {
  if (inputs.size() != targets.size()) throw InvalidArgumentError("TinyRanks: inputs and targets differ in length");
  std::vector<const float*> rows;
  rows.reserve(inputs.size());
  for (int32_t token : inputs) rows.push_back(inputs_e.as<float>() + static_cast<int64_t>(token) * t.input_dim);
  return RanksOfRowPointers(t, rows, targets);
}

std::vector<int64_t> TinyRanksOfRows(const TinyWeights& t, const float* x, const std::vector<int32_t>& targets) {
  std::vector<const float*> rows;
  rows.reserve(targets.size());
  for (size_t i = 0; i < targets.size(); ++i) rows.push_back(x + static_cast<int64_t>(i) * t.input_dim);
  return RanksOfRowPointers(t, rows, targets);
}

double TinyCoverage(const TinyWeights& t, const HostTensor& inputs_e, const std::vector<int32_t>& inputs,
                    const std::vector<int32_t>& draft_argmax, int64_t k) {
  if (inputs.empty()) return 0;
  int64_t hit = 0;
  for (int64_t r : TinyRanks(t, inputs_e, inputs, draft_argmax)) hit += r < k;
  return static_cast<double>(hit) / static_cast<double>(inputs.size());
}

// ------------------------------------------------------------------------------ closed-form fit

namespace {

// ---- the phases of FitTiny ----

// W1, b1: a projection of the input rows e [count, d] (PCA directions at unit variance, then
// random rows), centred by the rows' mean.
void FitProjection(TinyWeights& t, const float* e, int64_t count, int64_t d, int64_t H, const TinyFitOptions& o,
                   std::mt19937_64& rng) {
  const int64_t V = count;
  // Mean and covariance of (up to 4096 sampled) rows.
  std::vector<int64_t> rows(static_cast<size_t>(V));
  std::iota(rows.begin(), rows.end(), 0);
  std::shuffle(rows.begin(), rows.end(), rng);
  rows.resize(static_cast<size_t>(std::min<int64_t>(V, 4096)));
  std::vector<double> mean(static_cast<size_t>(d), 0.0);
  for (int64_t r : rows)
    for (int64_t i = 0; i < d; ++i) mean[i] += e[r * d + i];
  for (double& m : mean) m /= static_cast<double>(rows.size());
  std::normal_distribution<double> normal(0, 1);
  std::vector<double> w1(static_cast<size_t>(H * d));
  int64_t pca_rows = 0;
  if (o.projection == TinyFitOptions::Projection::kPca) {
    std::vector<double> cov(static_cast<size_t>(d * d), 0.0), x(static_cast<size_t>(d));
    for (int64_t r : rows) {
      for (int64_t i = 0; i < d; ++i) x[i] = e[r * d + i] - mean[i];
      for (int64_t i = 0; i < d; ++i) {
        const double xi = x[i];
        double* row = &cov[i * d];
        for (int64_t j = 0; j <= i; ++j) row[j] += xi * x[j];
      }
    }
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j <= i; ++j) cov[j * d + i] = cov[i * d + j] /= static_cast<double>(rows.size());
    std::vector<double> values, vectors;
    SymmetricEigen(cov, d, values, vectors);
    pca_rows = std::min(H, d);
    for (int64_t j = 0; j < pca_rows; ++j) {
      const double s = 1 / std::sqrt(std::max(values[j], 1e-12));  // unit variance along each direction
      for (int64_t i = 0; i < d; ++i) w1[j * d + i] = vectors[j * d + i] * s;
    }
  }
  // Random rows (all of them for kRandom, those beyond d for kPca), scaled to unit variance.
  double total_var = 0;
  for (int64_t r : rows)
    for (int64_t i = 0; i < d; ++i) total_var += (e[r * d + i] - mean[i]) * (e[r * d + i] - mean[i]);
  total_var /= static_cast<double>(rows.size());
  for (int64_t j = pca_rows; j < H; ++j)
    for (int64_t i = 0; i < d; ++i) w1[j * d + i] = normal(rng) / std::sqrt(std::max(total_var, 1e-12));
  for (int64_t j = 0; j < H; ++j) {
    double b = 0;
    for (int64_t i = 0; i < d; ++i) {
      t.w1.as<float>()[j * d + i] = static_cast<float>(w1[j * d + i]);
      b -= static_cast<double>(t.w1.as<float>()[j * d + i]) * mean[i];
    }
    t.b1.as<float>()[j] = static_cast<float>(b);
  }
}

// kHeadSvd (a kDraftHidden tiny only). The draft's logits are a linear map of x, y = W x (W the
// LM head [V, d]), so the best rank-k stand-in for y over the x the text produces is
// U_k U_k^T W x, with U_k S_k the k leading left singular vectors and values of W R (R = S^(1/2),
// S = E[x x^T]). With k = min(hidden - 1, d) the tiny computes a positive multiple of it:
//   z' = U_k^T W x                the rank-k logits' coordinates
//   z  = B z'                     B [hidden, k]: orthonormal random columns orthogonal to 1, so
//                                 mean(z) = 0 (LayerNorm only divides z by its rms) and every unit
//                                 mixes all k coordinates (about the same, near-Gaussian spread)
//   h  = ReLU(z / rms(z) + c)     ln_b = c = 4: the offset keeps ReLU from cutting (|n| > 4 is rare)
//   W2 = U_k B^T, b2 = -c W2 1    (W2 after its int8 rounding, so the offset cancels exactly)
// so W2 h + b2 = U_k z' / rms(z) = U_k U_k^T W x / rms(z): the ranking of the rank-k logits.
// Nothing is regressed on the training logits: only S is estimated from the text (shrunk by
// `ridge` x its mean eigenvalue towards I, for directions the text never took).
constexpr float kHeadSvdOffset = 4.0f;

void FitHeadSvd(TinyWeights& t, const ModelWeights& dw, const float* x, int64_t n, int64_t d, int64_t H, int64_t V,
                double ridge, std::mt19937_64& rng) {
  if (H < 2) throw InvalidArgumentError("tiny fit: the head-SVD fit needs hidden >= 2, got " + std::to_string(H));
  int64_t k = std::min(H - 1, d);  // hidden > d: the whole head, exactly
  const HostTensor head = ToF32(dw.at(dw.tensors.count("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight"));
  const float* w = head.as<float>();
  // S = E[x x^T] and R = S^(1/2).
  std::vector<double> S(static_cast<size_t>(d * d), 0.0);
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * d;
    for (int64_t i = 0; i < d; ++i) {
      const double xi = xr[i];
      double* row = &S[i * d];
      for (int64_t j = 0; j <= i; ++j) row[j] += xi * xr[j];
    }
  }
  double trace = 0;
  for (int64_t i = 0; i < d; ++i) {
    for (int64_t j = 0; j <= i; ++j) S[j * d + i] = S[i * d + j] /= static_cast<double>(n);
    trace += S[i * d + i];
  }
  // Shrunk towards a multiple of I: directions the text never took still get (a little) weight,
  // so the stand-in covers the head's own leading directions there.
  for (int64_t i = 0; i < d; ++i) S[i * d + i] += ridge * trace / static_cast<double>(d);
  std::vector<double> values, vectors;
  SymmetricEigen(S, d, values, vectors);
  std::vector<double> root(static_cast<size_t>(d * d), 0.0);
  for (int64_t e = 0; e < d; ++e) {
    const double l = std::sqrt(std::max(values[e], 0.0));
    const double* v = &vectors[e * d];
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j < d; ++j) root[i * d + j] += l * v[i] * v[j];
  }
  // G = W^T W, accumulated in f32 per block of rows, in double across blocks.
  std::vector<double> G(static_cast<size_t>(d * d), 0.0);
  std::vector<float> block(static_cast<size_t>(d * d));
  for (int64_t v0 = 0; v0 < V; v0 += 512) {
    std::fill(block.begin(), block.end(), 0.0f);
    for (int64_t v = v0; v < std::min(V, v0 + 512); ++v) {
      const float* wr = w + v * d;
      for (int64_t i = 0; i < d; ++i) {
        const float wi = wr[i];
        float* row = &block[i * d];
        for (int64_t j = 0; j < d; ++j) row[j] += wi * wr[j];
      }
    }
    for (int64_t i = 0; i < d * d; ++i) G[i] += block[i];
  }
  auto mul = [d](const std::vector<double>& a, const std::vector<double>& b) {
    std::vector<double> c(static_cast<size_t>(d * d), 0.0);
    for (int64_t i = 0; i < d; ++i)
      for (int64_t l = 0; l < d; ++l) {
        const double ail = a[i * d + l];
        for (int64_t j = 0; j < d; ++j) c[i * d + j] += ail * b[l * d + j];
      }
    return c;
  };
  // R G R = V diag(s^2) V^T: V the right singular vectors of W R.
  const std::vector<double> RG = mul(root, G);
  std::vector<double> sv, right;
  SymmetricEigen(mul(RG, root), d, sv, right);
  // Directions the text never moves along (s ~ 0) carry no signal, only noise divided by s.
  int64_t significant = 0;
  while (significant < d && sv[significant] > 1e-9 * std::max(sv[0], 1e-300)) ++significant;
  k = std::max<int64_t>(1, std::min(k, significant));
  // B: random Gaussian columns, centred (orthogonal to 1), then Gram-Schmidt.
  std::normal_distribution<double> normal(0, 1);
  std::vector<double> B(static_cast<size_t>(H * k));  // [H, k]
  for (int64_t j = 0; j < k; ++j) {
    double mean = 0;
    for (int64_t i = 0; i < H; ++i) mean += (B[i * k + j] = normal(rng));
    mean /= static_cast<double>(H);
    for (int64_t i = 0; i < H; ++i) B[i * k + j] -= mean;
    for (int pass = 0; pass < 2; ++pass)
      for (int64_t p = 0; p < j; ++p) {
        double dot = 0;
        for (int64_t i = 0; i < H; ++i) dot += B[i * k + j] * B[i * k + p];
        for (int64_t i = 0; i < H; ++i) B[i * k + j] -= dot * B[i * k + p];
      }
    double norm = 0;
    for (int64_t i = 0; i < H; ++i) norm += B[i * k + j] * B[i * k + j];
    norm = std::sqrt(norm);
    for (int64_t i = 0; i < H; ++i) B[i * k + j] /= norm;
  }
  // Q [k, d]: row j = u_j^T W = v_j^T R G / s_j; P [d, k]: column j = R v_j / s_j (W P = U_k).
  std::vector<double> Q(static_cast<size_t>(k * d)), P(static_cast<size_t>(d * k));
  for (int64_t j = 0; j < k; ++j) {
    const double s = std::sqrt(std::max(sv[j], 1e-300));
    for (int64_t i = 0; i < d; ++i) {
      double q = 0, p = 0;
      for (int64_t l = 0; l < d; ++l) {
        q += right[j * d + l] * RG[l * d + i];
        p += root[i * d + l] * right[j * d + l];
      }
      Q[j * d + i] = q / s;
      P[i * k + j] = p / s;
    }
  }
  // W1 = B Q [H, d]; M = P B^T [d, H], so W2 = W M.
  float* w1 = t.w1.as<float>();
  for (int64_t i = 0; i < H; ++i)
    for (int64_t c = 0; c < d; ++c) {
      double a = 0;
      for (int64_t j = 0; j < k; ++j) a += B[i * k + j] * Q[j * d + c];
      w1[i * d + c] = static_cast<float>(a);
    }
  std::vector<float> M(static_cast<size_t>(d * H));
  for (int64_t i = 0; i < d; ++i)
    for (int64_t h = 0; h < H; ++h) {
      double a = 0;
      for (int64_t j = 0; j < k; ++j) a += P[i * k + j] * B[h * k + j];
      M[i * H + h] = static_cast<float>(a);
    }
  float* w2 = t.w2.as<float>();
  for (int64_t v = 0; v < V; ++v) {
    float* out = w2 + v * H;
    std::fill(out, out + H, 0.0f);
    const float* wr = w + v * d;
    for (int64_t i = 0; i < d; ++i) {
      const float wi = wr[i];
      const float* m = &M[i * H];
      for (int64_t h = 0; h < H; ++h) out[h] += wi * m[h];
    }
  }
  t.w2 = RoundedTinyW2(t);  // as the program holds it (rounding it again changes nothing; b2 follows below)
  w2 = t.w2.as<float>();
  std::fill(t.b1.as<float>(), t.b1.as<float>() + H, 0.0f);
  std::fill(t.ln_w.as<float>(), t.ln_w.as<float>() + H, 1.0f);
  std::fill(t.ln_b.as<float>(), t.ln_b.as<float>() + H, kHeadSvdOffset);
  for (int64_t v = 0; v < V; ++v) {
    double sum = 0;
    for (int64_t h = 0; h < H; ++h) sum += w2[v * H + h];
    t.b2.as<float>()[v] = static_cast<float>(-kHeadSvdOffset * sum);
  }
}

// What the fit learns from: per step of the text, the input token and the draft's argmax; for
// training steps, the centred logits: summed per input token (kInputEmbedding), or per step with
// the step's hidden state (kDraftHidden).
struct FitSteps {
  std::vector<int32_t> inputs, argmaxes;
  std::unordered_map<int32_t, std::pair<int64_t, std::vector<float>>> sums;  // token -> (count, sum of centred y)
  std::vector<float> rows;     // kDraftHidden: every step's hidden state [steps, d]
  std::vector<float> train_y;  // kDraftHidden: every training step's centred y [n_train, V]
  std::vector<double> sum_y;
};

// The text model writes `o.positions` steps (training sequences end at n_train, so held-out steps
// come from fresh sequences); the draft gives the logits at each.
FitSteps CollectSteps(DecoderModel& draft, DecoderModel* text, const TinyFitOptions& o, int64_t V, int64_t seq_len,
                      int64_t n_train, std::mt19937_64& rng) {
  FitSteps steps;
  const bool hidden_input = o.input == TinyInput::kDraftHidden;
  steps.sum_y.assign(static_cast<size_t>(V), 0.0);
  if (hidden_input) steps.train_y.reserve(static_cast<size_t>(n_train * V));
  std::uniform_int_distribution<int32_t> any_token(0, static_cast<int32_t>(V - 1));
  std::uniform_real_distribution<double> uniform(0, 1);
  std::vector<double> probs(static_cast<size_t>(V));
  int64_t step = 0;
  size_t sequences = 0;
  while (step < o.positions) {
    // Training sequences end at n_train, so held-out steps come from fresh sequences.
    const int64_t limit = step < n_train ? n_train : o.positions;
    // A sequence starts from one of the prompts (in turn), else from a random token.
    static const std::vector<int32_t> kNone;
    const std::vector<int32_t>& prompt = o.prompts.empty() ? kNone : o.prompts[sequences++ % o.prompts.size()];
    int32_t token = prompt.empty() ? any_token(rng) : prompt[0];
    for (int64_t pos = 0; pos < seq_len && step < limit; ++pos, ++step) {
      ForwardResult r = draft.Forward({token}, pos, {hidden_input ? HeadKind::kHidden : HeadKind::kLogits, 0});
      const float* y = r.logits.data();
      if (hidden_input) steps.rows.insert(steps.rows.end(), r.hidden.begin(), r.hidden.end());
      const int32_t am = static_cast<int32_t>(std::max_element(y, y + V) - y);
      ForwardResult text_r;
      if (text != &draft) text_r = text->Forward({token}, pos, {HeadKind::kLogits, 0});
      const float* ty = text != &draft ? text_r.logits.data() : y;
      const int32_t text_am = static_cast<int32_t>(std::max_element(ty, ty + V) - ty);
      steps.inputs.push_back(token);
      steps.argmaxes.push_back(am);
      if (step < n_train) {
        double mean = 0;
        for (int64_t v = 0; v < V; ++v) mean += y[v];
        mean /= static_cast<double>(V);
        float* sum = nullptr;
        if (hidden_input) {
          steps.train_y.resize(steps.train_y.size() + static_cast<size_t>(V));
          sum = steps.train_y.data() + steps.train_y.size() - V;
        } else {
          auto& slot = steps.sums[token];
          if (slot.second.empty()) slot.second.assign(static_cast<size_t>(V), 0.f);
          ++slot.first;
          sum = slot.second.data();
        }
        for (int64_t v = 0; v < V; ++v) {
          const float yc = static_cast<float>(y[v] - mean);
          sum[v] += yc;
          steps.sum_y[v] += yc;
        }
      }
      int32_t next = text_am;
      if (o.temperature > 0) {
        double z = 0;
        for (int64_t v = 0; v < V; ++v) z += (probs[v] = std::exp((ty[v] - ty[text_am]) / o.temperature));
        double u = uniform(rng) * z;
        next = static_cast<int32_t>(V - 1);
        for (int64_t v = 0; v < V; ++v)
          if ((u -= probs[v]) <= 0) {
            next = static_cast<int32_t>(v);
            break;
          }
      }
      token = pos + 1 < static_cast<int64_t>(prompt.size()) ? prompt[pos + 1] : next;
      if (o.progress && !o.progress("generate", step + 1, o.positions)) throw Error(ErrorKind::kAborted, "tiny fit: cancelled");
    }
  }
  return steps;
}

// Sufficient statistics over the training steps, grouped by input token.
struct FitMoments {
  std::vector<double> shh, sh, shy;
};

FitMoments AccumulateMoments(const TinyWeights& t, const float* e, int64_t d, int64_t H, int64_t V, const FitSteps& steps) {
  FitMoments m;
  m.shh.assign(static_cast<size_t>(H * H), 0.0);
  m.sh.assign(static_cast<size_t>(H), 0.0);
  m.shy.assign(static_cast<size_t>(H * V), 0.0);  // sum_i h_i y_i^T
  std::vector<float> block(static_cast<size_t>(V));
  // One group: input row x seen n times with centred logits summing to y_sum.
  auto add = [&](const float* x, double n, const float* y_sum) {
    const std::vector<double> h = TinyFeatures(t, x);
    for (int64_t a = 0; a < H; ++a) {
      m.sh[a] += n * h[a];
      if (h[a] == 0) continue;
      for (int64_t b = 0; b <= a; ++b) m.shh[a * H + b] += n * h[a] * h[b];
      const float ha = static_cast<float>(h[a]);
      for (int64_t v = 0; v < V; ++v) block[v] = ha * y_sum[v];
      double* row = &m.shy[a * V];
      for (int64_t v = 0; v < V; ++v) row[v] += block[v];
    }
  };
  for (const auto& [token, slot] : steps.sums)
    add(e + static_cast<int64_t>(token) * d, static_cast<double>(slot.first), slot.second.data());
  for (size_t i = 0; i * V < steps.train_y.size(); ++i)
    add(steps.rows.data() + i * d, 1.0, steps.train_y.data() + i * V);
  return m;
}

// Ridge solve: (Hc^T Hc + lambda I) W2^T = Hc^T Yc, then W2 and b2 (consumes m.shy).
void SolveRidge(TinyWeights& t, FitMoments& m, const std::vector<double>& sum_y, double N, int64_t H, int64_t V,
                double ridge) {
  std::vector<double> mh(static_cast<size_t>(H)), my(static_cast<size_t>(V));
  for (int64_t a = 0; a < H; ++a) mh[a] = m.sh[a] / N;
  for (int64_t v = 0; v < V; ++v) my[v] = sum_y[v] / N;
  std::vector<double> A(static_cast<size_t>(H * H));
  double trace = 0;
  for (int64_t a = 0; a < H; ++a)
    for (int64_t b = 0; b <= a; ++b) {
      const double x = m.shh[a * H + b] - N * mh[a] * mh[b];
      A[a * H + b] = A[b * H + a] = x;
      if (a == b) trace += x;
    }
  const double lambda = ridge * std::max(trace, 1e-12) / static_cast<double>(H);
  for (int64_t a = 0; a < H; ++a) A[a * H + a] += lambda;
  const std::vector<double> Ainv = CholeskyInverse(Cholesky(A, H), H);
  // B = Hc^T Yc = shy - N mh my^T, in place.
  for (int64_t a = 0; a < H; ++a) {
    double* row = &m.shy[a * V];
    const double s = N * mh[a];
    for (int64_t v = 0; v < V; ++v) row[v] -= s * my[v];
  }
  // W2^T [H, V] = Ainv B.
  std::vector<double> w2t(static_cast<size_t>(H * V), 0.0);
  for (int64_t a = 0; a < H; ++a) {
    double* out = &w2t[a * V];
    for (int64_t b = 0; b < H; ++b) {
      const double k = Ainv[a * H + b];
      const double* in = &m.shy[b * V];
      for (int64_t v = 0; v < V; ++v) out[v] += k * in[v];
    }
  }
  float* w2 = t.w2.as<float>();
  for (int64_t v = 0; v < V; ++v) {
    double b = my[v];
    for (int64_t a = 0; a < H; ++a) {
      w2[v * H + a] = static_cast<float>(w2t[a * V + v]);
      b -= w2t[a * V + v] * mh[a];
    }
    t.b2.as<float>()[v] = static_cast<float>(b);
  }
}

// Held-out and training coverage (gamma0) at each K0 of eval_k.
void EvaluateCoverage(const TinyWeights& t, const HostTensor& E, const FitSteps& steps, int64_t n_train,
                      const std::vector<int64_t>& eval_k, int64_t V, TinyFitReport& rep, bool train_steps) {
  const std::vector<int32_t>& inputs = steps.inputs;
  const std::vector<int32_t>& argmaxes = steps.argmaxes;
  const std::vector<int32_t> train_in(inputs.begin(), inputs.begin() + n_train),
      train_am(argmaxes.begin(), argmaxes.begin() + n_train), held_in(inputs.begin() + n_train, inputs.end()),
      held_am(argmaxes.begin() + n_train, argmaxes.end());
  const bool hidden_input = t.input == TinyInput::kDraftHidden;
  const float* rows = steps.rows.data();
  const std::vector<int64_t> held_rank = hidden_input ? TinyRanksOfRows(t, rows + n_train * t.input_dim, held_am)
                                                      : TinyRanks(t, E, held_in, held_am);
  const std::vector<int64_t> train_rank =
      !train_steps ? std::vector<int64_t>{}
      : hidden_input ? TinyRanksOfRows(t, rows, train_am) : TinyRanks(t, E, train_in, train_am);
  auto share = [](const std::vector<int64_t>& ranks, int64_t k) {
    int64_t hit = 0;
    for (int64_t r : ranks) hit += r < k;
    return ranks.empty() ? 0.0 : static_cast<double>(hit) / static_cast<double>(ranks.size());
  };
  for (int64_t k : eval_k) {
    if (k < 1 || k > V) continue;
    if (!held_in.empty()) rep.gamma0.push_back({k, share(held_rank, k)});
    if (train_steps) rep.train_gamma0.push_back({k, share(train_rank, k)});
  }
}

// The closed forms rank well but are not calibrated (kHeadSvd's logits are the draft's divided by
// rms(z)): before distillation, W2 and b2 are scaled by the s that minimises the KL from the
// draft's distribution to softmax(s logits) on up to 64 training rows (a log-spaced grid, then a
// finer one), so Adam starts from the closed form's ranking instead of spending its steps (and
// the ranking) on the scale.
void CalibrateTinyScale(TinyWeights& t, const float* rows, const float* y, int64_t n, double tau, std::mt19937_64& rng) {
  const int64_t V = t.vocab, count = std::min<int64_t>(64, n);
  std::vector<int64_t> pick(static_cast<size_t>(n));
  std::iota(pick.begin(), pick.end(), 0);
  std::shuffle(pick.begin(), pick.end(), rng);
  std::vector<std::vector<float>> logits;
  for (int64_t i = 0; i < count; ++i) logits.push_back(TinyLogits(t, rows + pick[i] * t.input_dim));
  auto kl = [&](double scale) {
    double total = 0;
    for (int64_t i = 0; i < count; ++i) {
      const float* yi = y + pick[i] * V;
      const std::vector<float>& q = logits[i];
      double ym = -INFINITY, qm = -INFINITY;
      for (int64_t v = 0; v < V; ++v) ym = std::max(ym, yi[v] / tau), qm = std::max(qm, scale * q[v]);
      double zy = 0, zq = 0;
      for (int64_t v = 0; v < V; ++v) zy += std::exp(yi[v] / tau - ym), zq += std::exp(scale * q[v] - qm);
      const double ly = std::log(zy) + ym, lq = std::log(zq) + qm;
      for (int64_t v = 0; v < V; ++v) {
        const double lp = yi[v] / tau - ly;
        total += std::exp(lp) * (lp - (scale * q[v] - lq));
      }
    }
    return total / static_cast<double>(count);
  };
  double best = 1, best_kl = kl(1);
  for (double step : {std::pow(2.0, 0.5), std::pow(2.0, 0.125)}) {
    const double centre = best;
    for (int j = -8; j <= 8; ++j) {
      const double s = centre * std::pow(step, j);
      const double k = kl(s);
      if (k < best_kl) best_kl = k, best = s;
    }
  }
  float* w2 = t.w2.as<float>();
  for (int64_t i = 0; i < t.w2.element_count(); ++i) w2[i] = static_cast<float>(w2[i] * best);
  float* b2 = t.b2.as<float>();
  for (int64_t v = 0; v < V; ++v) b2[v] = static_cast<float>(b2[v] * best);
  t.metadata["kd_scale"] = std::to_string(best);
}

}  // namespace

TinyWeights FitTiny(DecoderModel& draft, const ModelWeights& dw, const TinyFitOptions& o,
                              TinyFitReport* report) {
  const ModelConfig& c = draft.config();
  if (dw.config.vocab_size != c.vocab_size || dw.config.hidden_size != c.hidden_size)
    throw InvalidArgumentError("tiny fit: draft_weights do not belong to the draft model");
  if (o.hidden < 1) throw InvalidArgumentError("tiny fit: hidden must be >= 1");
  if (o.positions < 2) throw InvalidArgumentError("tiny fit: positions must be >= 2");
  if (o.sequence_length < 1) throw InvalidArgumentError("tiny fit: sequence_length must be >= 1");
  if (!(o.holdout >= 0 && o.holdout < 1)) throw InvalidArgumentError("tiny fit: holdout must be in [0, 1)");
  if (!(o.ridge > 0)) throw InvalidArgumentError("tiny fit: ridge must be positive");
  if (!(o.temperature >= 0)) throw InvalidArgumentError("tiny fit: temperature must be >= 0");
  if (o.train.steps > 0 && o.input != TinyInput::kDraftHidden)
    throw InvalidArgumentError("tiny fit: distillation (train.steps > 0) needs the hidden-state input");
  for (const auto& prompt : o.prompts)
    for (int32_t t : prompt)
      if (t < 0 || t >= draft.config().vocab_size)
        throw InvalidArgumentError("tiny fit: prompt token " + std::to_string(t) + " is outside the vocabulary");
  const int64_t V = c.vocab_size, d = c.hidden_size, H = o.hidden;
  DecoderModel* text = o.text_model ? o.text_model : &draft;
  if (text->config().vocab_size != V)
    throw InvalidArgumentError("tiny fit: the text model's vocabulary differs from the draft's");
  const int64_t seq_len = std::min({o.sequence_length, draft.max_context(), text->max_context()});
  const int64_t n_train = std::max<int64_t>(1, static_cast<int64_t>(std::llround(o.positions * (1 - o.holdout))));
  TinyFitReport rep;
  std::mt19937_64 rng(o.seed);

  const bool hidden_input = o.input == TinyInput::kDraftHidden;
  auto t0 = Clock::now();
  const HostTensor E = TinyInputEmbeddings(dw, draft.options().precision);
  const float* e = E.as<float>();
  TinyWeights t;
  t.input = o.input;
  t.input_dim = d;
  t.hidden = H;
  t.vocab = V;
  t.w1 = HostTensor(DType::kF32, {H, d});
  t.b1 = HostTensor(DType::kF32, {H});
  t.ln_w = HostTensor(DType::kF32, {H});
  t.ln_b = HostTensor(DType::kF32, {H});
  t.w2 = HostTensor(DType::kF32, {V, H});
  t.b2 = HostTensor(DType::kF32, {V});
  for (int64_t j = 0; j < H; ++j) t.ln_w.as<float>()[j] = 1;
  // W1, b1: a projection of the input rows (the vocabulary's embeddings are known up front).
  if (!hidden_input) FitProjection(t, e, V, d, H, o, rng);
  rep.projection_ms = MsSince(t0);

  // The data: the text model's text, (input row, the draft's logits) per step.
  t0 = Clock::now();
  FitSteps steps = CollectSteps(draft, text, o, V, seq_len, n_train, rng);
  rep.generate_ms = MsSince(t0);
  const bool head_svd = o.projection == TinyFitOptions::Projection::kHeadSvd;
  if (head_svd && !hidden_input) throw InvalidArgumentError("tiny fit: the head-SVD projection needs the hidden-state input");
  if (hidden_input) {  // from the training steps' hidden states
    t0 = Clock::now();
    if (head_svd) {
      FitHeadSvd(t, dw, steps.rows.data(), n_train, d, H, V, o.ridge, rng);
    } else {
      FitProjection(t, steps.rows.data(), n_train, d, H, o, rng);
    }
    rep.projection_ms += MsSince(t0);
  }
  rep.train_positions = n_train;
  rep.heldout_positions = o.positions - n_train;
  rep.distinct_train_tokens = static_cast<int64_t>(steps.sums.size());

  if (!head_svd) {  // W2, b2 by ridge regression on the training logits
    t0 = Clock::now();
    FitMoments moments = AccumulateMoments(t, e, d, H, V, steps);
    steps.sums.clear();
    if (o.train.steps == 0) steps.train_y = {};  // step 5 learns from them
    rep.accumulate_ms = MsSince(t0);
    t0 = Clock::now();
    SolveRidge(t, moments, steps.sum_y, static_cast<double>(n_train), H, V, o.ridge);
    rep.solve_ms = MsSince(t0);
  }

  const bool train = o.train.steps > 0;
  if (train) {
    t0 = Clock::now();
    TinyFitReport closed_form;
    EvaluateCoverage(t, E, steps, n_train, o.eval_k, V, closed_form, /*train_steps=*/false);
    rep.closed_form_gamma0 = closed_form.gamma0;
    rep.eval_ms += MsSince(t0);
    CalibrateTinyScale(t, steps.rows.data(), steps.train_y.data(), n_train, o.train.teacher_temperature, rng);
    // Whole sequences spread over the text choose the weights (early stopping), the rest teach:
    // every 1/share-th training sequence (neighbouring positions of one sequence are alike, so a
    // validation from the same sequences as the training, or from one sequence, measures little).
    std::vector<int64_t> teach;
    std::vector<float> val_rows;
    std::vector<int32_t> val_ids;
    const int64_t every = o.train.validation_share > 0 ? std::max<int64_t>(2, std::llround(1 / o.train.validation_share)) : 0;
    const int64_t sequences = (n_train + seq_len - 1) / seq_len;
    for (int64_t i = 0; i < n_train; ++i) {
      const int64_t sequence = i / seq_len;
      const bool held = every > 0 && (sequences >= every ? sequence % every == every - 1
                                                         : i >= n_train - std::llround(n_train * o.train.validation_share));
      if (!held) {
        teach.push_back(i);
        continue;
      }
      val_rows.insert(val_rows.end(), steps.rows.begin() + i * d, steps.rows.begin() + (i + 1) * d);
      val_ids.push_back(steps.argmaxes[i]);
    }
    if (teach.empty()) throw InvalidArgumentError("tiny fit: no training positions are left beside the validation");
    TinyValidation validation{val_rows.data(), val_ids.data(), static_cast<int64_t>(val_ids.size()),
                              std::min(o.train.validation_k, V), 0};
    TrainTinyKd(*draft.client(), t, steps.rows.data(), steps.train_y.data(), n_train, o.train,
                [&](int64_t done, int64_t total) { return !o.progress || o.progress("train", done, total); }, &rep.train,
                val_ids.empty() ? nullptr : &validation, teach);
    RoundTinyAsProgramHolds(t);  // W2 (and b2) as the program holds them
  }

  t0 = Clock::now();
  EvaluateCoverage(t, E, steps, n_train, o.eval_k, V, rep, /*train_steps=*/true);
  rep.eval_ms += MsSince(t0);

  t.metadata["fit"] = train && rep.train.best_step > 0 ? "closed_form_ridge+kd_adam" : "closed_form_ridge";
  if (train) {
    t.metadata["kd_steps"] = std::to_string(o.train.steps);
    t.metadata["kd_batch"] = std::to_string(rep.train.batch);
    t.metadata["kd_learning_rate"] = std::to_string(o.train.learning_rate);
    t.metadata["kd_best_step"] = std::to_string(rep.train.best_step);
  }
  t.metadata["fit_positions"] = std::to_string(n_train);
  t.metadata["fit_version"] = kTinyFitVersion;
  t.metadata["fit_projection"] = o.projection == TinyFitOptions::Projection::kPca      ? "pca"
                                 : o.projection == TinyFitOptions::Projection::kHeadSvd ? "head_svd"
                                                                                        : "random";
  t.metadata["draft_family"] = ModelFamilyName(c.family);
  t.metadata["draft_precision"] = WeightPrecisionName(draft.options().precision);
  t.metadata["draft_layers"] = std::to_string(c.num_layers);
  t.metadata["draft"] = o.draft_name.empty() ? dw.source : o.draft_name;
  if (report) *report = rep;
  return t;
}

}  // namespace cascade
