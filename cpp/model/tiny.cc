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

#include "model/decoder.h"
#include "model/safetensors.h"
#include "pjrt/errors.h"

namespace cascade {
namespace {

constexpr const char* kFormat = "cascade-xla-tiny";
constexpr const char* kVersion = "1";
constexpr const char* kInput = "draft_input_embedding";


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
  if (meta.count("input") && meta.at("input") != kInput)
    fail("__metadata__ \"input\" is \"" + meta.at("input") + "\", expected \"" + kInput + "\"");
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
  meta["input"] = kInput;
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

TinyWeights RandomTiny(int64_t input_dim, int64_t hidden, int64_t vocab, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, 1);
  TinyWeights t;
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

std::vector<HostTensor> PrepareTinyParams(const TinyWeights& t) {
  ValidateTiny(t);
  std::vector<HostTensor> out;
  out.push_back(Transposed(t.w1));
  out.push_back(t.b1);
  out.push_back(t.ln_w);
  out.push_back(t.ln_b);
  out.push_back(Transposed(t.w2));
  out.push_back(t.b2);
  return out;
}

std::vector<int64_t> TinyRanks(const TinyWeights& t, const HostTensor& inputs_e, const std::vector<int32_t>& inputs,
                               const std::vector<int32_t>& targets) {
  if (inputs.size() != targets.size()) throw InvalidArgumentError("TinyRanks: inputs and targets differ in length");
  // Logits in f32 as rows of W2^T (axpy over the vocabulary, skipping ReLU zeros): ~10x faster
  // than TinyLogits' double dot products; ranks can differ from it only at f32 near-ties.
  const int64_t H = t.hidden, V = t.vocab;
  const HostTensor w2t = Transposed(t.w2);
  auto logits_of = [&](int32_t token) {
    const std::vector<double> h = TinyFeatures(t, inputs_e.as<float>() + static_cast<int64_t>(token) * t.input_dim);
    std::vector<float> out(t.b2.as<float>(), t.b2.as<float>() + V);
    for (int64_t a = 0; a < H; ++a) {
      if (h[a] == 0) continue;
      const float ha = static_cast<float>(h[a]);
      const float* row = w2t.as<float>() + a * V;
      for (int64_t v = 0; v < V; ++v) out[v] += ha * row[v];
    }
    return out;
  };
  std::unordered_map<int32_t, std::vector<float>> logits_cache;  // token -> tiny logits
  std::vector<int64_t> ranks;
  ranks.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    auto it = logits_cache.find(inputs[i]);
    if (it == logits_cache.end()) it = logits_cache.emplace(inputs[i], logits_of(inputs[i])).first;
    const std::vector<float>& l = it->second;
    const int32_t y = targets[i];
    int64_t rank = 0;  // ids ranked before y: larger logits, or equal logits with lower ids
    for (int64_t v = 0; v < t.vocab; ++v) rank += l[v] > l[y] || (l[v] == l[y] && v < y);
    ranks.push_back(rank);
  }
  return ranks;
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

// ---- the phases of FitTinyClosedForm ----

// W1, b1: a projection of the input rows (PCA directions at unit variance, then random rows),
// centred by the rows' mean.
void FitProjection(TinyWeights& t, const float* e, int64_t V, int64_t d, int64_t H, const TinyFitOptions& o,
                   std::mt19937_64& rng) {
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

// What the fit learns from: per step of the text, the input token and the draft's argmax; for
// training steps, the centred logits summed per input token.
struct FitSteps {
  std::vector<int32_t> inputs, argmaxes;
  std::unordered_map<int32_t, std::pair<int64_t, std::vector<float>>> sums;  // token -> (count, sum of centred y)
  std::vector<double> sum_y;
};

// The text model writes `o.positions` steps (training sequences end at n_train, so held-out steps
// come from fresh sequences); the draft gives the logits at each.
FitSteps CollectSteps(DecoderModel& draft, DecoderModel* text, const TinyFitOptions& o, int64_t V, int64_t seq_len,
                      int64_t n_train, std::mt19937_64& rng) {
  FitSteps steps;
  steps.sum_y.assign(static_cast<size_t>(V), 0.0);
  std::uniform_int_distribution<int32_t> any_token(0, static_cast<int32_t>(V - 1));
  std::uniform_real_distribution<double> uniform(0, 1);
  std::vector<double> probs(static_cast<size_t>(V));
  int64_t step = 0;
  while (step < o.positions) {
    // Training sequences end at n_train, so held-out steps come from fresh sequences.
    const int64_t limit = step < n_train ? n_train : o.positions;
    int32_t token = any_token(rng);
    for (int64_t pos = 0; pos < seq_len && step < limit; ++pos, ++step) {
      ForwardResult r = draft.Forward({token}, pos, {HeadKind::kLogits, 0});
      const float* y = r.logits.data();
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
        auto& slot = steps.sums[token];
        if (slot.second.empty()) slot.second.assign(static_cast<size_t>(V), 0.f);
        ++slot.first;
        for (int64_t v = 0; v < V; ++v) {
          const float yc = static_cast<float>(y[v] - mean);
          slot.second[v] += yc;
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
      token = next;
      if (o.progress && !o.progress(step + 1, o.positions)) throw Error(ErrorKind::kAborted, "tiny fit: cancelled");
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
  for (const auto& [token, slot] : steps.sums) {
    const std::vector<double> h = TinyFeatures(t, e + static_cast<int64_t>(token) * d);
    const double n = static_cast<double>(slot.first);
    for (int64_t a = 0; a < H; ++a) {
      m.sh[a] += n * h[a];
      if (h[a] == 0) continue;
      for (int64_t b = 0; b <= a; ++b) m.shh[a * H + b] += n * h[a] * h[b];
      const float ha = static_cast<float>(h[a]);
      for (int64_t v = 0; v < V; ++v) block[v] = ha * slot.second[v];
      double* row = &m.shy[a * V];
      for (int64_t v = 0; v < V; ++v) row[v] += block[v];
    }
  }
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
                      const std::vector<int64_t>& eval_k, int64_t V, TinyFitReport& rep) {
  const std::vector<int32_t>& inputs = steps.inputs;
  const std::vector<int32_t>& argmaxes = steps.argmaxes;
  const std::vector<int32_t> train_in(inputs.begin(), inputs.begin() + n_train),
      train_am(argmaxes.begin(), argmaxes.begin() + n_train), held_in(inputs.begin() + n_train, inputs.end()),
      held_am(argmaxes.begin() + n_train, argmaxes.end());
  const std::vector<int64_t> held_rank = TinyRanks(t, E, held_in, held_am), train_rank = TinyRanks(t, E, train_in, train_am);
  auto share = [](const std::vector<int64_t>& ranks, int64_t k) {
    int64_t hit = 0;
    for (int64_t r : ranks) hit += r < k;
    return ranks.empty() ? 0.0 : static_cast<double>(hit) / static_cast<double>(ranks.size());
  };
  for (int64_t k : eval_k) {
    if (k < 1 || k > V) continue;
    if (!held_in.empty()) rep.gamma0.push_back({k, share(held_rank, k)});
    rep.train_gamma0.push_back({k, share(train_rank, k)});
  }
}

}  // namespace

TinyWeights FitTinyClosedForm(DecoderModel& draft, const ModelWeights& dw, const TinyFitOptions& o,
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
  const int64_t V = c.vocab_size, d = c.hidden_size, H = o.hidden;
  DecoderModel* text = o.text_model ? o.text_model : &draft;
  if (text->config().vocab_size != V)
    throw InvalidArgumentError("tiny fit: the text model's vocabulary differs from the draft's");
  const int64_t seq_len = std::min({o.sequence_length, draft.max_context(), text->max_context()});
  const int64_t n_train = std::max<int64_t>(1, static_cast<int64_t>(std::llround(o.positions * (1 - o.holdout))));
  TinyFitReport rep;
  std::mt19937_64 rng(o.seed);

  // W1, b1: a projection of the input rows.
  auto t0 = Clock::now();
  const HostTensor E = TinyInputEmbeddings(dw, draft.options().precision);
  const float* e = E.as<float>();
  TinyWeights t;
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
  FitProjection(t, e, V, d, H, o, rng);
  rep.projection_ms = MsSince(t0);

  // The data: the text model's text, (input token, the draft's logits) per step.
  t0 = Clock::now();
  FitSteps steps = CollectSteps(draft, text, o, V, seq_len, n_train, rng);
  rep.generate_ms = MsSince(t0);
  rep.train_positions = n_train;
  rep.heldout_positions = o.positions - n_train;
  rep.distinct_train_tokens = static_cast<int64_t>(steps.sums.size());

  t0 = Clock::now();
  FitMoments moments = AccumulateMoments(t, e, d, H, V, steps);
  steps.sums.clear();
  rep.accumulate_ms = MsSince(t0);

  t0 = Clock::now();
  SolveRidge(t, moments, steps.sum_y, static_cast<double>(n_train), H, V, o.ridge);
  rep.solve_ms = MsSince(t0);

  t0 = Clock::now();
  EvaluateCoverage(t, E, steps, n_train, o.eval_k, V, rep);
  rep.eval_ms = MsSince(t0);

  t.metadata["fit"] = "closed_form_ridge";
  t.metadata["fit_positions"] = std::to_string(n_train);
  t.metadata["fit_projection"] = o.projection == TinyFitOptions::Projection::kPca ? "pca" : "random";
  t.metadata["draft_family"] = ModelFamilyName(c.family);
  t.metadata["draft_precision"] = WeightPrecisionName(draft.options().precision);
  t.metadata["draft"] = o.draft_name.empty() ? dw.source : o.draft_name;
  if (report) *report = rep;
  return t;
}

}  // namespace cascade
