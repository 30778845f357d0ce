#include "model/loader.h"

#include <sys/stat.h>

#include <charconv>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include "model/safetensors.h"
#include "pjrt/errors.h"

namespace cascade {

namespace {

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool IsFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
std::string DirName(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}
std::string Join(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}
bool StartsWith(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool HasGgufMagic(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {0};
  return in.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

// GGUF stores eps and theta as float32; the decimal the converter wrote (1e-5, not
// 9.99999974738e-06) is the shortest string that reads back to the same float.
double FloatMetadata(const GgufFile& f, const std::string& key, double fallback) {
  const GgufValue* v = f.Find(key);
  if (!v) return fallback;
  const double d = f.GetFloat(key);
  if (v->type != GgufValueType::kFloat32) return d;
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof(buf), static_cast<float>(d));
  double out = d;
  std::from_chars(buf, r.ptr, out);
  return out;
}

[[noreturn]] void ConfigFail(const std::string& source, const std::string& what) {
  throw ModelFormatError(source + ": " + what);
}

void ValidateConfig(const ModelConfig& c, const std::string& source, const std::string& prefix) {
  auto positive = [&](int64_t v, const char* field) {
    if (v <= 0) ConfigFail(source, prefix + field + " = " + std::to_string(v) + " must be positive");
  };
  positive(c.vocab_size, "vocab_size");
  positive(c.hidden_size, "hidden_size");
  positive(c.intermediate_size, "intermediate_size");
  positive(c.num_layers, "num_layers");
  positive(c.num_heads, "num_heads");
  positive(c.num_kv_heads, "num_kv_heads");
  positive(c.head_dim, "head_dim");
  positive(c.context_length, "context_length");
  if (c.num_heads % c.num_kv_heads != 0)
    ConfigFail(source, prefix + "num_heads " + std::to_string(c.num_heads) +
                           " is not a multiple of num_kv_heads " + std::to_string(c.num_kv_heads));
  if (c.head_dim % 2 != 0)
    ConfigFail(source, prefix + "head_dim " + std::to_string(c.head_dim) + " must be even for RoPE");
  if (!(c.rms_norm_eps > 0)) ConfigFail(source, prefix + "rms_norm_eps must be positive");
  if (!(c.rope_theta > 0)) ConfigFail(source, prefix + "rope_theta must be positive");
  // Bounds that keep shape arithmetic far from overflow on crafted files.
  const int64_t kMax = int64_t{1} << 24;
  if (c.hidden_size > kMax || c.intermediate_size > kMax || c.num_heads > kMax ||
      c.head_dim > kMax || c.num_layers > 65536 || c.vocab_size > (int64_t{1} << 28))
    ConfigFail(source, prefix + "dimensions are implausibly large");
}

HostTensor PermuteRows(const HostTensor& in, int64_t n_heads, bool to_gguf) {
  if (in.dims.empty() || n_heads <= 0 || in.dims[0] % n_heads != 0 ||
      (in.dims[0] / n_heads) % 2 != 0)
    throw InvalidArgumentError("Q/K permutation: " + ShapeString(in.dtype, in.dims) +
                               " does not split into " + std::to_string(n_heads) +
                               " heads of even size");
  const int64_t rows = in.dims[0];
  const int64_t head_dim = rows / n_heads;
  const int64_t half = head_dim / 2;
  const size_t row_bytes = rows ? in.data.size() / static_cast<size_t>(rows) : 0;
  HostTensor out = in;
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t s = 0; s < 2; ++s)
      for (int64_t i = 0; i < half; ++i) {
        const int64_t hf = h * head_dim + s * half + i;    // Hugging Face (rotate-half) row
        const int64_t gg = h * head_dim + 2 * i + s;       // llama.cpp (interleaved) row
        const int64_t src = to_gguf ? hf : gg;
        const int64_t dst = to_gguf ? gg : hf;
        std::memcpy(out.data.data() + dst * row_bytes, in.data.data() + src * row_bytes, row_bytes);
      }
  return out;
}

HostTensor ToF32(const HostTensor& t) {
  if (t.dtype == DType::kF32) return t;
  HostTensor out(DType::kF32, t.dims);
  const int64_t n = t.element_count();
  float* dst = out.as<float>();
  const uint16_t* src = t.as<uint16_t>();
  if (t.dtype == DType::kF16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = F16ToF32(src[i]);
  } else if (t.dtype == DType::kBF16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = BF16ToF32(src[i]);
  } else {
    throw InvalidArgumentError("cannot convert " + ShapeString(t.dtype, t.dims) + " to f32");
  }
  return out;
}

}  // namespace

// --------------------------------------------------------------------------------------------

HostTensor PermuteQKForGguf(const HostTensor& hf, int64_t n_heads) { return PermuteRows(hf, n_heads, true); }
HostTensor UnpermuteQKFromGguf(const HostTensor& gguf, int64_t n_heads) {
  return PermuteRows(gguf, n_heads, false);
}

std::string CanonicalNameFromGguf(const std::string& name) {
  if (name == "token_embd.weight") return "model.embed_tokens.weight";
  if (name == "output_norm.weight") return "model.norm.weight";
  if (name == "output.weight") return "lm_head.weight";
  if (!StartsWith(name, "blk.")) return "";
  size_t p = 4;
  size_t q = p;
  while (q < name.size() && name[q] >= '0' && name[q] <= '9') ++q;
  if (q == p || q - p > 6 || q >= name.size() || name[q] != '.') return "";
  if (name[p] == '0' && q - p > 1) return "";  // no leading zeros
  const std::string layer = name.substr(p, q - p);
  const std::string rest = name.substr(q + 1);
  static const std::pair<const char*, const char*> kMap[] = {
      {"attn_norm.weight", "input_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"},
  };
  for (const auto& [g, hf] : kMap)
    if (rest == g) return "model.layers." + layer + "." + hf;
  return "";
}

std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedTensorShapes(const ModelConfig& c) {
  const int64_t d = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const int64_t f = c.intermediate_size;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, d}});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.push_back({p + "input_layernorm.weight", {d}});
    out.push_back({p + "self_attn.q_proj.weight", {q, d}});
    out.push_back({p + "self_attn.k_proj.weight", {kv, d}});
    out.push_back({p + "self_attn.v_proj.weight", {kv, d}});
    out.push_back({p + "self_attn.o_proj.weight", {d, q}});
    out.push_back({p + "post_attention_layernorm.weight", {d}});
    out.push_back({p + "mlp.gate_proj.weight", {f, d}});
    out.push_back({p + "mlp.up_proj.weight", {f, d}});
    out.push_back({p + "mlp.down_proj.weight", {d, f}});
  }
  out.push_back({"model.norm.weight", {d}});
  if (!c.tied_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, d}});
  return out;
}

void CheckWeights(const ModelWeights& w) {
  auto shape = [](const std::vector<int64_t>& dims) {
    std::string s = "[";
    for (size_t i = 0; i < dims.size(); ++i) s += (i ? "," : "") + std::to_string(dims[i]);
    return s + "]";
  };
  const auto expected = ExpectedTensorShapes(w.config);
  std::set<std::string> names;
  for (const auto& [name, dims] : expected) {
    names.insert(name);
    auto it = w.tensors.find(name);
    if (it == w.tensors.end()) {
      if (name == "lm_head.weight")
        throw ModelFormatError(w.source + ": missing tensor lm_head.weight (the config says the "
                               "head is not tied to the embeddings)");
      throw ModelFormatError(w.source + ": missing tensor " + name);
    }
    if (it->second.dims != dims)
      throw ModelFormatError(w.source + ": tensor " + name + " has shape " + shape(it->second.dims) +
                             " but the config needs " + shape(dims));
    const DType t = it->second.dtype;
    if (t != DType::kF32 && t != DType::kF16 && t != DType::kBF16)
      throw ModelFormatError(w.source + ": tensor " + name + " has dtype " + DTypeName(t) +
                             ", expected f32, f16 or bf16");
  }
  for (const auto& [name, t] : w.tensors)
    if (!names.count(name))
      throw ModelFormatError(w.source + ": unexpected tensor " + name +
                             (name == "lm_head.weight" ? " (the head is tied)" : ""));
}

// --------------------------------------------------------------------------------------------

ModelConfig ConfigFromGguf(const GgufFile& f) {
  ModelConfig c;
  const std::string arch = f.GetString("general.architecture");
  c.architecture = arch;
  if (arch == "llama") {
    c.family = ModelFamily::kLlama;
  } else if (arch == "gemma") {
    c.family = ModelFamily::kGemma;
  } else {
    ConfigFail(f.path(), "unsupported architecture \"" + arch +
                             "\" in general.architecture (cascade-xla reads llama and gemma)");
  }
  const std::string a = arch + ".";
  c.hidden_size = f.GetInt(a + "embedding_length");
  c.num_layers = f.GetInt(a + "block_count");
  c.intermediate_size = f.GetInt(a + "feed_forward_length");
  c.num_heads = f.GetInt(a + "attention.head_count");
  c.num_kv_heads = f.FindInt(a + "attention.head_count_kv").value_or(c.num_heads);
  c.context_length = f.GetInt(a + "context_length");
  c.rms_norm_eps = FloatMetadata(f, a + "attention.layer_norm_rms_epsilon",
                                 c.family == ModelFamily::kGemma ? 1e-6 : 1e-5);
  c.rope_theta = FloatMetadata(f, a + "rope.freq_base", 10000.0);
  if (c.num_heads > 0)
    c.head_dim = f.FindInt(a + "attention.key_length").value_or(c.hidden_size / c.num_heads);
  if (auto vl = f.FindInt(a + "attention.value_length"); vl && *vl != c.head_dim)
    ConfigFail(f.path(), "metadata key \"" + a + "attention.value_length\" = " + std::to_string(*vl) +
                             " differs from the key length " + std::to_string(c.head_dim));
  if (auto rd = f.FindInt(a + "rope.dimension_count"); rd && *rd != c.head_dim)
    ConfigFail(f.path(), "metadata key \"" + a + "rope.dimension_count\" = " + std::to_string(*rd) +
                             ": partial rotary embeddings are not supported (head_dim " +
                             std::to_string(c.head_dim) + ")");
  if (auto st = f.FindString(a + "rope.scaling.type"); st && *st != "none")
    ConfigFail(f.path(), "metadata key \"" + a + "rope.scaling.type\" = \"" + *st +
                             "\": RoPE scaling is not supported");
  if (f.FindTensor("rope_freqs.weight"))
    ConfigFail(f.path(), "tensor \"rope_freqs.weight\": RoPE frequency factors (Llama 3 rope "
                         "scaling) are not supported");

  if (f.Has("tokenizer.ggml.tokens")) {
    c.vocab_size = static_cast<int64_t>(f.GetArrayLength("tokenizer.ggml.tokens"));
  } else if (auto vs = f.FindInt(a + "vocab_size")) {
    c.vocab_size = *vs;
  } else if (const GgufTensorInfo* emb = f.FindTensor("token_embd.weight"); emb && emb->ne.size() == 2) {
    c.vocab_size = static_cast<int64_t>(emb->ne[1]);
  }
  c.bos_token_id = f.FindInt("tokenizer.ggml.bos_token_id").value_or(-1);
  c.eos_token_id = f.FindInt("tokenizer.ggml.eos_token_id").value_or(-1);
  c.tied_embeddings = f.FindTensor("output.weight") == nullptr;
  ValidateConfig(c, f.path(), "GGUF metadata: ");
  return c;
}

namespace {

const json::Value* Field(const json::Value& cfg, const char* key) {
  const json::Value* v = cfg.find(key);
  return v && !v->is_null() ? v : nullptr;
}

int64_t IntField(const json::Value& cfg, const char* key, const std::string& source,
                 std::optional<int64_t> fallback = std::nullopt) {
  const json::Value* v = Field(cfg, key);
  if (!v) {
    if (fallback) return *fallback;
    ConfigFail(source, std::string("missing field \"") + key + "\"");
  }
  if (!v->is_integer()) ConfigFail(source, std::string("field \"") + key + "\" is not an integer");
  return v->as_int();
}

double NumberField(const json::Value& cfg, const char* key, const std::string& source, double fallback) {
  const json::Value* v = Field(cfg, key);
  if (!v) return fallback;
  if (!v->is_number()) ConfigFail(source, std::string("field \"") + key + "\" is not a number");
  return v->as_number();
}

bool BoolField(const json::Value& cfg, const char* key, const std::string& source, bool fallback) {
  const json::Value* v = Field(cfg, key);
  if (!v) return fallback;
  if (!v->is_bool()) ConfigFail(source, std::string("field \"") + key + "\" is not a boolean");
  return v->as_bool();
}

// bos/eos: an integer, a list of integers (the first is used) or null.
int64_t TokenField(const json::Value& cfg, const char* key, const std::string& source) {
  const json::Value* v = Field(cfg, key);
  if (!v) return -1;
  if (v->is_integer()) return v->as_int();
  if (v->is_array()) {
    if (v->size() == 0) return -1;
    const json::Value& first = v->as_array()[0];
    if (first.is_integer()) return first.as_int();
  }
  ConfigFail(source, std::string("field \"") + key + "\" is not an integer or a list of integers");
}

}  // namespace

ModelConfig ConfigFromHfJson(const json::Value& cfg, const std::string& source) {
  if (!cfg.is_object()) ConfigFail(source, "config is not a JSON object");
  ModelConfig c;
  std::string arch_name, model_type;
  if (const json::Value* archs = Field(cfg, "architectures")) {
    if (!archs->is_array()) ConfigFail(source, "field \"architectures\" is not an array");
    if (archs->size() > 0) {
      if (!archs->as_array()[0].is_string())
        ConfigFail(source, "field \"architectures\" holds a non-string");
      arch_name = archs->as_array()[0].as_string();
    }
  }
  if (const json::Value* mt = Field(cfg, "model_type")) {
    if (!mt->is_string()) ConfigFail(source, "field \"model_type\" is not a string");
    model_type = mt->as_string();
  }
  if (arch_name == "LlamaForCausalLM" || (arch_name.empty() && model_type == "llama")) {
    c.family = ModelFamily::kLlama;
  } else if (arch_name == "GemmaForCausalLM" || (arch_name.empty() && model_type == "gemma")) {
    c.family = ModelFamily::kGemma;
  } else {
    ConfigFail(source, "unsupported architecture \"" + (arch_name.empty() ? model_type : arch_name) +
                           "\" (cascade-xla reads LlamaForCausalLM / llama and GemmaForCausalLM / gemma)");
  }
  if (!model_type.empty() && model_type != (c.family == ModelFamily::kLlama ? "llama" : "gemma"))
    ConfigFail(source, "field \"model_type\" = \"" + model_type + "\" disagrees with architecture \"" +
                           arch_name + "\"");
  c.architecture = arch_name.empty() ? model_type : arch_name;
  const bool gemma = c.family == ModelFamily::kGemma;

  c.vocab_size = IntField(cfg, "vocab_size", source);
  c.hidden_size = IntField(cfg, "hidden_size", source);
  c.intermediate_size = IntField(cfg, "intermediate_size", source);
  c.num_layers = IntField(cfg, "num_hidden_layers", source);
  c.num_heads = IntField(cfg, "num_attention_heads", source);
  c.num_kv_heads = IntField(cfg, "num_key_value_heads", source, c.num_heads);
  c.head_dim = IntField(cfg, "head_dim", source, c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  c.context_length = IntField(cfg, "max_position_embeddings", source, gemma ? 8192 : 2048);
  c.rms_norm_eps = NumberField(cfg, "rms_norm_eps", source, 1e-6);
  c.rope_theta = NumberField(cfg, "rope_theta", source, 10000.0);
  c.tied_embeddings = BoolField(cfg, "tie_word_embeddings", source, gemma);
  c.bos_token_id = TokenField(cfg, "bos_token_id", source);
  c.eos_token_id = TokenField(cfg, "eos_token_id", source);

  // transformers >= 5 writes the RoPE base inside "rope_parameters" instead of a top-level
  // "rope_theta"; both spellings are read, and any RoPE type but the default is refused.
  if (const json::Value* rope = Field(cfg, "rope_parameters")) {
    if (!rope->is_object()) ConfigFail(source, "field \"rope_parameters\" is not an object");
    if (const json::Value* type = Field(*rope, "rope_type")) {
      if (!type->is_string() || type->as_string() != "default")
        ConfigFail(source, "field \"rope_parameters.rope_type\": only the default RoPE is supported");
    }
    if (Field(*rope, "rope_theta")) {
      const double theta = NumberField(*rope, "rope_theta", source, c.rope_theta);
      if (Field(cfg, "rope_theta") && theta != c.rope_theta)
        ConfigFail(source, "fields \"rope_theta\" and \"rope_parameters.rope_theta\" disagree");
      c.rope_theta = theta;
    }
  }
  if (Field(cfg, "rope_scaling"))
    ConfigFail(source, "field \"rope_scaling\": RoPE scaling is not supported");
  if (BoolField(cfg, "attention_bias", source, false))
    ConfigFail(source, "field \"attention_bias\": attention biases are not supported");
  if (BoolField(cfg, "mlp_bias", source, false))
    ConfigFail(source, "field \"mlp_bias\": MLP biases are not supported");
  for (const char* key : {"hidden_act", "hidden_activation"}) {
    const json::Value* act = Field(cfg, key);
    if (!act) continue;
    if (!act->is_string()) ConfigFail(source, std::string("field \"") + key + "\" is not a string");
    const std::string& s = act->as_string();
    const bool ok = gemma ? (s == "gelu" || s == "gelu_pytorch_tanh") : s == "silu";
    if (!ok) ConfigFail(source, std::string("field \"") + key + "\" = \"" + s + "\" is not supported");
  }
  ValidateConfig(c, source, "");
  return c;
}

ModelConfig ReadHfConfig(const std::string& path) { return ConfigFromHfJson(json::ParseFile(path), path); }

// --------------------------------------------------------------------------------------------

namespace {

// Gemma's converter bakes the "1 +" of Gemma's RMSNorm into the GGUF norm weights.
bool IsNorm(const std::string& canonical) { return EndsWith(canonical, "norm.weight"); }

void PostProcessGguf(ModelWeights& w) {
  const ModelConfig& c = w.config;
  for (auto& [name, t] : w.tensors) {
    if (c.family == ModelFamily::kLlama) {
      if (EndsWith(name, "self_attn.q_proj.weight")) t = UnpermuteQKFromGguf(t, c.num_heads);
      else if (EndsWith(name, "self_attn.k_proj.weight")) t = UnpermuteQKFromGguf(t, c.num_kv_heads);
    } else if (c.family == ModelFamily::kGemma && IsNorm(name)) {
      HostTensor f = ToF32(t);
      float* p = f.as<float>();
      for (int64_t i = 0, n = f.element_count(); i < n; ++i) p[i] -= 1.0f;
      t = std::move(f);
    }
  }
}

}  // namespace

ModelWeights LoadGgufModel(const std::string& path) {
  GgufFile f(path);
  ModelWeights w;
  w.source = path;
  w.config = ConfigFromGguf(f);
  // Every layer has 9 weight tensors: a file that cannot hold them is rejected before building the
  // expected names (a crafted block_count would otherwise cost seconds; found by the fuzzer).
  const uint64_t per_layer = 9;
  if (static_cast<uint64_t>(w.config.num_layers) > f.tensors().size() / per_layer)
    throw ModelFormatError(path + ": " + std::to_string(f.tensors().size()) + " tensors cannot hold the " +
                           std::to_string(w.config.num_layers) + " layers its metadata declares (" +
                           std::to_string(per_layer) + " per layer)");
  std::map<std::string, std::vector<int64_t>> expected;
  for (auto& [name, dims] : ExpectedTensorShapes(w.config)) expected.emplace(name, dims);
  for (const auto& info : f.tensors()) {
    const std::string canonical = CanonicalNameFromGguf(info.name);
    if (canonical.empty()) continue;
    // Check the shape before reading (and dequantising) anything.
    auto it = expected.find(canonical);
    if (it == expected.end())
      throw ModelFormatError(path + ": tensor \"" + info.name + "\" (" + canonical +
                             ") does not belong to a model of " + std::to_string(w.config.num_layers) +
                             " layers");
    if (info.dims() != it->second)
      throw ModelFormatError(path + ": tensor \"" + info.name + "\" (" + canonical + ") has shape " +
                             ShapeString(DType::kF32, info.dims()).substr(3) + " but the config needs " +
                             ShapeString(DType::kF32, it->second).substr(3));
    w.tensors.emplace(canonical, f.ReadTensor(info));
  }
  CheckWeights(w);  // names the canonical tensor on a shape mismatch
  PostProcessGguf(w);
  return w;
}

ModelWeights LoadSafetensorsModel(const std::string& path) {
  const std::string dir = IsDirectory(path) ? path : DirName(path);
  const std::string config_path = Join(dir, "config.json");
  if (!IsFile(config_path))
    throw ModelFormatError(path + ": no config.json next to the safetensors checkpoint (looked for " +
                           config_path + ")");
  ModelWeights w;
  w.source = path;
  w.config = ReadHfConfig(config_path);
  std::set<std::string> wanted;
  for (const auto& [name, dims] : ExpectedTensorShapes(w.config)) wanted.insert(name);
  wanted.insert("lm_head.weight");
  w.tensors = LoadSafetensors(path, [&](const std::string& n) { return wanted.count(n) > 0; });
  if (w.config.tied_embeddings) w.tensors.erase("lm_head.weight");  // Hugging Face ties it anyway
  CheckWeights(w);
  return w;
}

ModelWeights LoadModel(const std::string& path) {
  if (IsFile(path) && (HasGgufMagic(path) || EndsWith(path, ".gguf"))) return LoadGgufModel(path);
  if (!IsFile(path) && !IsDirectory(path)) throw ModelFormatError(path + ": no such file or directory");
  return LoadSafetensorsModel(path);
}

}  // namespace cascade
