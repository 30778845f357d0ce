// GGUF reader and GGUF model loading: files written by model_files.h with known contents.
#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>

#include "model/gguf.h"
#include "model/loader.h"
#include "model_files.h"
#include "pjrt/errors.h"

namespace cascade {
namespace {

using namespace testing_files;

std::vector<float> AsFloats(const HostTensor& t) {
  EXPECT_EQ(t.dtype, DType::kF32);
  return std::vector<float>(t.as<float>(), t.as<float>() + t.element_count());
}

// Values spread over a few magnitudes, deterministic.
std::vector<float> Signal(size_t n, float scale, uint32_t seed) {
  std::vector<float> v(n);
  uint32_t s = seed;
  for (size_t i = 0; i < n; ++i) {
    s = s * 1664525u + 1013904223u;
    v[i] = scale * (static_cast<float>((s >> 8) & 0xFFFF) / 32768.0f - 1.0f) * (1.0f + (i % 7));
  }
  return v;
}

// Expects fn() to throw a ModelFormatError whose message contains every needle.
void ExpectModelFormatError(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown; expected one mentioning " << needles[0];
  } catch (const ModelFormatError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kModelFormat);
    for (const auto& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "message \"" << e.what() << "\" lacks \"" << n << "\"";
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

TEST(Gguf, MetadataReadsBack) {
  TempDir dir;
  for (uint32_t version : {2u, 3u}) {
    GgufWriter g;
    g.version = version;
    g.alignment = 64;
    g.write_alignment_key = true;
    g.KvString("general.architecture", "llama");
    g.KvU32("a.u32", 4000000000u);
    g.KvI32("a.i32", -7);
    g.KvU64("a.u64", 1ull << 40);
    g.KvF32("a.f32", 0.5f);
    g.KvF64("a.f64", 1e-300);
    g.KvBool("a.bool", true);
    g.KvStrings("tokenizer.ggml.tokens", {"<s>", "</s>", "h\xC3\xA9llo", ""});
    g.KvI32s("tokenizer.ggml.token_type", {1, 3, -2});
    g.KvF32s("tokenizer.ggml.scores", {0.0f, -1.5f, 2.25f});
    Bytes nested;  // array of 2 arrays of u8: [[1,2],[]]
    Put<uint32_t>(nested, kGgufArray);
    Put<uint64_t>(nested, 2);
    Put<uint32_t>(nested, kGgufU8);
    Put<uint64_t>(nested, 2);
    nested.push_back(1);
    nested.push_back(2);
    Put<uint32_t>(nested, kGgufU8);
    Put<uint64_t>(nested, 0);
    g.KvRaw("a.nested", kGgufArray, nested);
    g.TensorF32("t", {3}, {1, 2, 3});
    const std::string path = dir.File("meta" + std::to_string(version) + ".gguf");
    WriteFile(path, g.Build());

    GgufFile f(path);
    EXPECT_EQ(f.version(), version);
    EXPECT_EQ(f.alignment(), 64u);
    EXPECT_EQ(f.data_offset() % 64, 0u);
    EXPECT_EQ(f.data_offset(), g.layout.data_at);
    EXPECT_EQ(f.GetString("general.architecture"), "llama");
    EXPECT_EQ(f.GetInt("a.u32"), 4000000000);
    EXPECT_EQ(f.GetInt("a.i32"), -7);
    EXPECT_EQ(f.GetInt("a.u64"), int64_t{1} << 40);
    EXPECT_EQ(f.GetFloat("a.f32"), 0.5);
    EXPECT_EQ(f.GetFloat("a.f64"), 1e-300);
    EXPECT_EQ(f.GetFloat("a.i32"), -7.0);
    EXPECT_TRUE(f.GetBool("a.bool"));
    EXPECT_EQ(f.GetStringArray("tokenizer.ggml.tokens"),
              (std::vector<std::string>{"<s>", "</s>", "h\xC3\xA9llo", ""}));
    EXPECT_EQ(f.GetArrayLength("tokenizer.ggml.tokens"), 4u);
    EXPECT_EQ(f.GetIntArray("tokenizer.ggml.token_type"), (std::vector<int64_t>{1, 3, -2}));
    EXPECT_EQ(f.GetFloatArray("tokenizer.ggml.scores"), (std::vector<double>{0.0, -1.5, 2.25}));
    EXPECT_EQ(f.GetArrayLength("a.nested"), 2u);
    EXPECT_FALSE(f.FindString("missing").has_value());
    EXPECT_FALSE(f.FindInt("missing").has_value());
    ExpectModelFormatError([&] { f.GetIntArray("a.nested"); }, {path, "a.nested", "array of arrays"});
    ExpectModelFormatError([&] { f.GetString("a.u32"); }, {path, "a.u32", "uint32"});
    ExpectModelFormatError([&] { f.GetInt("nope"); }, {path, "nope", "missing"});
    ASSERT_EQ(f.tensors().size(), 1u);
    EXPECT_EQ(f.tensors()[0].name, "t");
    EXPECT_EQ(AsFloats(f.ReadTensor("t")), (std::vector<float>{1, 2, 3}));
  }
}

TEST(Gguf, FloatTensorsExact) {
  TempDir dir;
  const std::vector<float> v = Signal(6 * 4, 3.0f, 7);
  std::vector<float> v16, vb16;
  for (float x : v) v16.push_back(FromF16(ToF16(x)));
  for (float x : v) vb16.push_back(FromBF16(ToBF16(x)));
  GgufWriter g;
  g.TensorF32("f32", {4, 6}, v);
  g.Tensor("f16", {4, 6}, kGgmlF16, F16Bytes(v));
  g.Tensor("bf16", {4, 6}, kGgmlBF16, BF16Bytes(v));
  const std::string path = dir.File("f.gguf");
  WriteFile(path, g.Build());
  GgufFile f(path);

  HostTensor a = f.ReadTensor("f32");
  EXPECT_EQ(a.dtype, DType::kF32);
  EXPECT_EQ(a.dims, (std::vector<int64_t>{6, 4}));  // ne {4, 6} -> row-major [6, 4]
  EXPECT_EQ(AsFloats(a), v);

  HostTensor h = f.ReadTensor("f16");
  EXPECT_EQ(h.dtype, DType::kF16);
  EXPECT_EQ(h.dims, (std::vector<int64_t>{6, 4}));
  EXPECT_EQ(h.data, F16Bytes(v));
  EXPECT_EQ(AsFloats(f.ReadTensorF32(*f.FindTensor("f16"))), v16);

  HostTensor b = f.ReadTensor("bf16");
  EXPECT_EQ(b.dtype, DType::kBF16);
  EXPECT_EQ(b.data, BF16Bytes(v));
  EXPECT_EQ(AsFloats(f.ReadTensorF32(*f.FindTensor("bf16"))), vb16);
}

TEST(Gguf, HalfConversions) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    if (((bits >> 10) & 0x1F) == 0x1F) continue;  // inf / nan
    const float f = F16ToF32(bits);
    ASSERT_EQ(F32Bits(f), F32Bits(FromF16(bits))) << h;
    ASSERT_EQ(F32ToF16(f), bits) << h;
  }
  EXPECT_TRUE(std::isinf(F16ToF32(0x7C00)));
  EXPECT_TRUE(std::isnan(F16ToF32(0x7E00)));
  const std::vector<float> v = Signal(4096, 100.0f, 3);
  for (float x : v) ASSERT_EQ(F32ToF16(x), ToF16(x)) << x;
  EXPECT_EQ(BF16ToF32(0x3F80), 1.0f);
}

struct QuantCase {
  const char* name;
  uint32_t type;
  Bytes (*quantize)(const std::vector<float>&, std::vector<float>*);
  size_t n;
  float tolerance;  // relative to the block's max |x|
};

TEST(Gguf, DequantisesQuantisedFloats) {
  TempDir dir;
  const QuantCase cases[] = {
      {"Q8_0", kGgmlQ8_0, QuantizeQ8_0, 32 * 8, 0.01f},
      {"Q4_0", kGgmlQ4_0, QuantizeQ4_0, 32 * 8, 0.15f},
      {"Q4_1", kGgmlQ4_1, QuantizeQ4_1, 32 * 8, 0.1f},
      {"Q6_K", kGgmlQ6_K, QuantizeQ6_K, 256 * 4, 0.05f},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::vector<float> x = Signal(c.n, 0.25f, 11);
    std::vector<float> expected;
    Bytes blocks = c.quantize(x, &expected);
    const uint64_t row = c.n / 2;
    GgufWriter g;
    g.Tensor("q", {row, 2}, c.type, blocks);
    const std::string path = dir.File(std::string(c.name) + ".gguf");
    WriteFile(path, g.Build());
    GgufFile f(path);
    EXPECT_EQ(GgmlTypeName(f.tensors()[0].type), c.name);
    HostTensor t = f.ReadTensor("q");
    EXPECT_EQ(t.dims, (std::vector<int64_t>{2, static_cast<int64_t>(row)}));
    const std::vector<float> got = AsFloats(t);
    ASSERT_EQ(got.size(), expected.size());
    float amax = 0;
    for (float v : x) amax = std::fmax(amax, std::fabs(v));
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_FLOAT_EQ(got[i], expected[i]) << "element " << i;
      ASSERT_NEAR(got[i], x[i], c.tolerance * amax) << "element " << i;
    }
    // The free function gives the same.
    std::vector<float> direct(c.n);
    DequantizeRow(c.type, blocks.data(), direct.data(), static_cast<int64_t>(c.n));
    EXPECT_EQ(direct, got);
  }
}

TEST(Gguf, DequantisesPackedCodes) {
  uint32_t s = 99;
  auto rnd = [&](int mod) {
    s = s * 1664525u + 1013904223u;
    return static_cast<int>((s >> 8) % static_cast<uint32_t>(mod));
  };
  // Q5_0 and Q5_1
  for (bool with_min : {false, true}) {
    SCOPED_TRACE(with_min ? "Q5_1" : "Q5_0");
    std::vector<int> codes(64);
    for (int& c : codes) c = rnd(32);
    std::vector<float> d = {0.0625f, -0.125f}, m = {-1.5f, 0.25f}, expected;
    Bytes b = PackQ5(codes, d, with_min ? &m : nullptr, &expected);
    std::vector<float> got(64);
    DequantizeRow(with_min ? kGgmlQ5_1 : kGgmlQ5_0, b.data(), got.data(), 64);
    for (int i = 0; i < 64; ++i) ASSERT_FLOAT_EQ(got[i], expected[i]) << i;
  }
  // Q4_K and Q5_K
  for (bool five : {false, true}) {
    SCOPED_TRACE(five ? "Q5_K" : "Q4_K");
    std::vector<int> codes(512), scales(16), mins(16);
    for (int& c : codes) c = rnd(five ? 32 : 16);
    for (int& c : scales) c = rnd(64);
    for (int& c : mins) c = rnd(64);
    std::vector<float> d = {0.01f, 0.003f}, dmin = {0.02f, 0.5f}, expected;
    Bytes b = PackQK(five, codes, scales, mins, d, dmin, &expected);
    ASSERT_EQ(b.size(), five ? 352u : 288u);
    std::vector<float> got(512);
    DequantizeRow(five ? kGgmlQ5_K : kGgmlQ4_K, b.data(), got.data(), 512);
    for (int i = 0; i < 512; ++i) ASSERT_FLOAT_EQ(got[i], expected[i]) << i;
  }
  // Q8_K: f32 scale, 256 int8, 16 int16 sums.
  {
    Bytes b;
    const float d = 0.0078125f;
    Put(b, d);
    std::vector<float> expected;
    for (int i = 0; i < 256; ++i) {
      const int8_t q = static_cast<int8_t>(rnd(256) - 128);
      Put(b, q);
      expected.push_back(d * q);
    }
    for (int i = 0; i < 16; ++i) Put<int16_t>(b, 0);
    std::vector<float> got(256);
    DequantizeRow(kGgmlQ8_K, b.data(), got.data(), 256);
    EXPECT_EQ(got, expected);
  }
}

TEST(Gguf, QkUnpermutationInvertsTheConverter) {
  for (auto [rows, cols, heads] : {std::tuple<int64_t, int64_t, int64_t>{64, 8, 4}, {32, 5, 2}, {16, 3, 1}}) {
    const std::vector<float> hf = Signal(static_cast<size_t>(rows * cols), 1.0f, 5);
    const std::vector<float> permuted = ConverterPermute(hf, rows, cols, heads);
    HostTensor t(DType::kF32, {rows, cols}, permuted.data(), permuted.size() * 4);
    HostTensor back = UnpermuteQKFromGguf(t, heads);
    EXPECT_EQ(AsFloats(back), hf);
    HostTensor h(DType::kF32, {rows, cols}, hf.data(), hf.size() * 4);
    EXPECT_EQ(AsFloats(PermuteQKForGguf(h, heads)), permuted);
    if (heads > 1) EXPECT_NE(permuted, hf);
  }
  HostTensor odd(DType::kF32, {6, 2});
  EXPECT_THROW(UnpermuteQKFromGguf(odd, 4), InvalidArgumentError);
}

TEST(Gguf, NameMapping) {
  EXPECT_EQ(CanonicalNameFromGguf("token_embd.weight"), "model.embed_tokens.weight");
  EXPECT_EQ(CanonicalNameFromGguf("blk.12.attn_q.weight"), "model.layers.12.self_attn.q_proj.weight");
  EXPECT_EQ(CanonicalNameFromGguf("blk.0.ffn_norm.weight"), "model.layers.0.post_attention_layernorm.weight");
  EXPECT_EQ(CanonicalNameFromGguf("blk.3.attn_output.weight"), "model.layers.3.self_attn.o_proj.weight");
  EXPECT_EQ(CanonicalNameFromGguf("output.weight"), "lm_head.weight");
  EXPECT_EQ(CanonicalNameFromGguf("blk.01.attn_q.weight"), "");
  EXPECT_EQ(CanonicalNameFromGguf("blk..attn_q.weight"), "");
  EXPECT_EQ(CanonicalNameFromGguf("blk.1.attn_rot_embd"), "");
}

void ExpectWeightsEqual(const ModelWeights& w, const std::map<std::string, TinyTensor>& hf) {
  ASSERT_EQ(w.tensors.size(), hf.size());
  for (const auto& [name, t] : hf) {
    SCOPED_TRACE(name);
    const HostTensor& got = w.at(name);
    EXPECT_EQ(got.dims, t.shape);
    ASSERT_EQ(got.dtype, DType::kF32);
    EXPECT_EQ(AsFloats(got), t.values);
  }
}

TEST(GgufModel, TinyLlamaEqualsHuggingFaceLayout) {
  TempDir dir;
  for (bool tied : {true, false}) {
    TinyConfig c;
    c.tied = tied;
    const auto hf = TinyWeights(c);
    GgufWriter g = TinyGguf(c, hf);
    const std::string path = dir.File(tied ? "tied.gguf" : "untied.gguf");
    WriteFile(path, g.Build());
    ModelWeights w = LoadModel(path);
    EXPECT_EQ(w.source, path);
    EXPECT_EQ(w.config.family, ModelFamily::kLlama);
    EXPECT_EQ(w.config.architecture, "llama");
    EXPECT_EQ(w.config.vocab_size, c.vocab);
    EXPECT_EQ(w.config.hidden_size, c.d);
    EXPECT_EQ(w.config.intermediate_size, c.ffn);
    EXPECT_EQ(w.config.num_layers, c.layers);
    EXPECT_EQ(w.config.num_heads, c.heads);
    EXPECT_EQ(w.config.num_kv_heads, c.kv_heads);
    EXPECT_EQ(w.config.head_dim, c.head_dim);
    EXPECT_EQ(w.config.context_length, c.ctx);
    EXPECT_EQ(w.config.rms_norm_eps, 1e-5);  // float32 1e-5 read back as the decimal 1e-5
    EXPECT_EQ(w.config.rope_theta, 10000.0);
    EXPECT_EQ(w.config.tied_embeddings, tied);
    EXPECT_EQ(w.config.bos_token_id, c.bos);
    EXPECT_EQ(w.config.eos_token_id, c.eos);
    ExpectWeightsEqual(w, hf);
  }
}

TEST(GgufModel, TinyGemmaNormsAndNoPermutation) {
  TempDir dir;
  TinyConfig c;
  c.gemma = true;
  c.heads = 2;
  c.kv_heads = 1;
  c.head_dim = 32;
  c.eps = 1e-6f;
  const auto hf = TinyWeights(c);
  const std::string path = dir.File("gemma.gguf");
  WriteFile(path, TinyGguf(c, hf).Build());
  ModelWeights w = LoadModel(path);
  EXPECT_EQ(w.config.family, ModelFamily::kGemma);
  EXPECT_EQ(w.config.head_dim, 32);
  EXPECT_EQ(w.config.rms_norm_eps, 1e-6);
  EXPECT_TRUE(w.config.tied_embeddings);
  ExpectWeightsEqual(w, hf);  // norms - 1 restored exactly; Q/K rows untouched
}

TEST(GgufModel, QuantisedTensorsDequantiseInPlace) {
  TempDir dir;
  TinyConfig c;
  const auto hf = TinyWeights(c);
  // Same metadata as the tiny model; the embedding stored as Q8_0, a q_proj as Q4_0, a v_proj
  // as Q4_1, an up_proj as F16.
  GgufWriter g = TinyGguf(c, {});
  std::map<std::string, std::vector<float>> expected;
  for (const auto& [name, t] : hf) {
    std::vector<uint64_t> ne(t.shape.rbegin(), t.shape.rend());
    std::vector<float> v = t.values;
    const bool is_q = name.find("q_proj") != std::string::npos, is_k = name.find("k_proj") != std::string::npos;
    if (is_q || is_k) v = ConverterPermute(v, t.shape[0], t.shape[1], is_q ? c.heads : c.kv_heads);
    if (name == "model.embed_tokens.weight") {
      std::vector<float> e;
      g.Tensor(GgufNameFor(name), ne, kGgmlQ8_0, QuantizeQ8_0(v, &e));
      expected[name] = e;
    } else if (name == "model.layers.1.self_attn.v_proj.weight") {
      std::vector<float> e;
      g.Tensor(GgufNameFor(name), ne, kGgmlQ4_1, QuantizeQ4_1(v, &e));
      expected[name] = e;
    } else if (name == "model.layers.0.self_attn.q_proj.weight") {
      std::vector<float> e;
      g.Tensor(GgufNameFor(name), ne, kGgmlQ4_0, QuantizeQ4_0(v, &e));
      // The loader un-permutes after dequantising: expected rows in HF order.
      std::vector<float> unperm(e.size());
      const int64_t rows = t.shape[0], cols = t.shape[1], heads = c.heads, half = rows / heads / 2;
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t s = 0; s < 2; ++s)
          for (int64_t i = 0; i < half; ++i)
            std::memcpy(&unperm[((h * 2 + s) * half + i) * cols], &e[((h * half + i) * 2 + s) * cols],
                        cols * sizeof(float));
      expected[name] = unperm;
    } else if (name == "model.layers.0.mlp.up_proj.weight") {
      g.Tensor(GgufNameFor(name), ne, kGgmlF16, F16Bytes(v));
    } else {
      g.TensorF32(GgufNameFor(name), ne, v);
    }
  }
  const std::string path = dir.File("mixed.gguf");
  WriteFile(path, g.Build());
  ModelWeights w = LoadModel(path);
  for (const auto& [name, e] : expected) {
    SCOPED_TRACE(name);
    EXPECT_EQ(w.at(name).dtype, DType::kF32);
    EXPECT_EQ(w.at(name).dims, hf.at(name).shape);
    EXPECT_EQ(AsFloats(w.at(name)), e);
  }
  EXPECT_EQ(w.at("model.layers.0.mlp.up_proj.weight").dtype, DType::kF16);
  EXPECT_EQ(w.at("model.layers.0.mlp.up_proj.weight").data, F16Bytes(hf.at("model.layers.0.mlp.up_proj.weight").values));
  EXPECT_EQ(AsFloats(w.at("model.layers.1.self_attn.q_proj.weight")), hf.at("model.layers.1.self_attn.q_proj.weight").values);
}

// ------------------------------------------------------------------ bad files

struct BadGguf {
  const char* name;
  std::function<Bytes()> make;
  std::vector<std::string> needles;  // besides the path
  bool via_loader = false;           // LoadModel instead of GgufFile
};

Bytes Small(GgufWriter* out = nullptr) {
  GgufWriter g;
  g.KvString("general.architecture", "llama");
  g.KvStrings("tokenizer.ggml.tokens", {"a", "b"});
  g.TensorF32("first.weight", {32, 2}, std::vector<float>(64, 1.0f));
  g.TensorF32("second.weight", {32}, std::vector<float>(32, 2.0f));
  Bytes b = g.Build();
  if (out) *out = g;
  return b;
}

TEST(GgufBadFiles, EachFailsWithATypedErrorNamingTheFileAndField) {
  TempDir dir;
  GgufWriter L;
  Small(&L);
  const auto& lay = L.layout;
  const std::vector<BadGguf> cases = {
      {"empty", [] { return Bytes(); }, {"too short"}},
      {"truncated header", [] { Bytes b = Small(); b.resize(12); return b; }, {"truncated", "tensor count"}},
      {"bad magic", [] { Bytes b = Small(); b[0] = 'X'; return b; }, {"bad magic", "XGUF"}},
      {"version 1", [] { Bytes b = Small(); PutAt<uint32_t>(b, 4, 1); return b; }, {"unsupported GGUF version 1"}},
      {"version 4", [] { Bytes b = Small(); PutAt<uint32_t>(b, 4, 4); return b; }, {"unsupported GGUF version 4"}},
      {"big-endian", [] { Bytes b = Small(); PutAt<uint32_t>(b, 4, 0x03000000); return b; }, {"big-endian"}},
      {"tensor count overflow", [&] { Bytes b = Small(); PutAt<uint64_t>(b, lay.tensor_count_at, ~0ull); return b; },
       {"tensor count 18446744073709551615"}},
      {"kv count overflow", [&] { Bytes b = Small(); PutAt<uint64_t>(b, lay.kv_count_at, 1ull << 62); return b; },
       {"metadata count"}},
      {"key length overflow", [&] { Bytes b = Small(); PutAt<uint64_t>(b, lay.kv_at[0], ~0ull - 3); return b; },
       {"metadata key #0", "string length"}},
      {"string value length overflow",
       [&] { Bytes b = Small(); PutAt<uint64_t>(b, lay.kv_at[0] + 8 + 20 + 4, 1ull << 63); return b; },
       {"general.architecture", "string length"}},
      {"array length overflow",
       [&] {
         Bytes b = Small();
         // kv 1: key "tokenizer.ggml.tokens" (21), type u32, elem type u32, count u64
         PutAt<uint64_t>(b, lay.kv_at[1] + 8 + 21 + 4 + 4, (1ull << 61) + 1);
         return b;
       },
       {"tokenizer.ggml.tokens", "array length"}},
      {"array element string overflow",
       [&] {
         Bytes b = Small();
         PutAt<uint64_t>(b, lay.kv_at[1] + 8 + 21 + 4 + 4 + 8, ~0ull);
         return b;
       },
       {"\"tokenizer.ggml.tokens\"[0]", "string length"}},
      {"invalid value type",
       [&] { Bytes b = Small(); PutAt<uint32_t>(b, lay.kv_at[0] + 8 + 20, 13); return b; },
       {"general.architecture", "invalid value type 13"}},
      {"tensor name overflow",
       [&] { Bytes b = Small(); PutAt<uint64_t>(b, lay.tensor_info_at[0], 1ull << 40); return b; },
       {"name of tensor #0", "string length"}},
      {"too many dims", [&] { Bytes b = Small(); PutAt<uint32_t>(b, lay.tensor_ndims_at[0], 9); return b; },
       {"first.weight", "9 dimensions"}},
      {"dims overflow",
       [&] {
         Bytes b = Small();
         PutAt<uint64_t>(b, lay.tensor_ndims_at[0] + 4, 1ull << 40);
         PutAt<uint64_t>(b, lay.tensor_ndims_at[0] + 12, 1ull << 40);
         return b;
       },
       {"first.weight", "overflow"}},
      {"unknown ggml type", [&] { Bytes b = Small(); PutAt<uint32_t>(b, lay.tensor_type_at[1], 777); return b; },
       {"second.weight", "unknown ggml type 777"}},
      {"row not a whole block", [&] { Bytes b = Small(); PutAt<uint32_t>(b, lay.tensor_type_at[1], kGgmlQ6_K); return b; },
       {"second.weight", "block size 256"}},
      {"misaligned offset",
       [&] { Bytes b = Small(); PutAt<uint64_t>(b, lay.tensor_offset_at[1], lay.tensor_offset[1] + 4); return b; },
       {"second.weight", "alignment"}},
      {"offset past the end",
       [&] { Bytes b = Small(); PutAt<uint64_t>(b, lay.tensor_offset_at[1], 1ull << 20); return b; },
       {"second.weight", "past the end"}},
      {"offset overflow",
       [&] { Bytes b = Small(); PutAt<uint64_t>(b, lay.tensor_offset_at[1], ~0ull - 31); return b; },
       {"second.weight", "past the end"}},
      {"truncated data", [] { Bytes b = Small(); b.resize(b.size() - 40); return b; }, {"second.weight", "past the end"}},
      {"truncated tensor infos", [&] { Bytes b = Small(); b.resize(lay.tensor_offset_at[1] + 3); return b; },
       {"truncated", "data offset of tensor \"second.weight\""}},
      {"overlapping tensors", [&] { Bytes b = Small(); PutAt<uint64_t>(b, lay.tensor_offset_at[1], 128); return b; },
       {"first.weight", "overlaps", "second.weight"}},
      {"duplicate key",
       [] {
         GgufWriter g;
         g.KvU32("x", 1);
         g.KvU32("x", 2);
         return g.Build();
       },
       {"duplicate metadata key \"x\""}},
      {"duplicate tensor",
       [] {
         GgufWriter g;
         g.TensorF32("t", {1}, {1});
         g.TensorF32("t", {1}, {1});
         return g.Build();
       },
       {"duplicate tensor \"t\""}},
      {"bad alignment",
       [] {
         GgufWriter g;
         g.KvU32("general.alignment", 24);
         return g.Build();
       },
       {"general.alignment", "power of two"}},
      {"bool out of range",
       [] {
         GgufWriter g;
         g.KvRaw("flag", kGgufBool, Bytes{7});
         return g.Build();
       },
       {"flag", "bool"}},
      {"unknown architecture",
       [] {
         GgufWriter g;
         g.KvString("general.architecture", "mamba");
         return g.Build();
       },
       {"unsupported architecture \"mamba\""}, true},
      {"missing architecture", [] { return GgufWriter().Build(); }, {"general.architecture", "missing"}, true},
      {"missing hyperparameter",
       [] {
         TinyConfig c;
         GgufWriter g;
         g.KvString("general.architecture", "llama");
         g.KvU32("llama.embedding_length", 64);
         return g.Build();
       },
       {"llama.block_count"}, true},
      {"shape disagrees with config",
       [] {
         TinyConfig c;
         auto w = TinyWeights(c);
         w["model.layers.1.mlp.up_proj.weight"].shape = {c.ffn - 32, c.d};
         w["model.layers.1.mlp.up_proj.weight"].values.resize((c.ffn - 32) * c.d);
         return TinyGguf(c, w).Build();
       },
       {"blk.1.ffn_up.weight", "model.layers.1.mlp.up_proj.weight", "[64,64]", "[96,64]"}, true},
      {"missing tensor",
       [] {
         TinyConfig c;
         auto w = TinyWeights(c);
         w.erase("model.layers.1.self_attn.k_proj.weight");
         return TinyGguf(c, w).Build();
       },
       {"missing tensor model.layers.1.self_attn.k_proj.weight"}, true},
      {"layer beyond block_count",
       [] {
         TinyConfig c;
         auto w = TinyWeights(c);
         w["model.layers.7.input_layernorm.weight"] = w["model.norm.weight"];
         return TinyGguf(c, w).Build();
       },
       {"blk.7.attn_norm.weight", "2 layers"}, true},
      {"heads not dividing",
       [] {
         TinyConfig c;
         c.kv_heads = 3;
         return TinyGguf(c, {}).Build();
       },
       {"num_heads 4 is not a multiple of num_kv_heads 3"}, true},
      {"rope scaling",
       [] {
         TinyConfig c;
         GgufWriter g = TinyGguf(c, {});
         g.KvString("llama.rope.scaling.type", "yarn");
         return g.Build();
       },
       {"llama.rope.scaling.type", "not supported"}, true},
  };
  int k = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = dir.File("bad" + std::to_string(k++) + ".gguf");
    WriteFile(path, c.make());
    std::vector<std::string> needles = c.needles;
    needles.insert(needles.begin(), path);
    if (c.via_loader) {
      ExpectModelFormatError([&] { LoadModel(path); }, needles);
    } else {
      ExpectModelFormatError([&] { GgufFile f(path); }, needles);
    }
  }
}

TEST(GgufBadFiles, UnreadableTypeFailsOnReadNotOnOpen) {
  TempDir dir;
  GgufWriter g;
  g.Tensor("iq", {256}, 16 /* IQ2_XXS */, Bytes(66));
  g.Tensor("q2k", {256}, 10 /* Q2_K */, Bytes(84));
  const std::string path = dir.File("iq.gguf");
  WriteFile(path, g.Build());
  GgufFile f(path);
  ExpectModelFormatError([&] { f.ReadTensor("iq"); }, {path, "\"iq\"", "IQ2_XXS"});
  ExpectModelFormatError([&] { f.ReadTensor("q2k"); }, {path, "\"q2k\"", "Q2_K"});
  ExpectModelFormatError([&] { f.ReadTensor("nope"); }, {path, "missing tensor \"nope\""});
}

TEST(GgufBadFiles, MissingFile) {
  ExpectModelFormatError([] { GgufFile f("/nonexistent/dir/x.gguf"); }, {"/nonexistent/dir/x.gguf", "cannot open"});
  ExpectModelFormatError([] { LoadModel("/nonexistent/dir/x.gguf"); }, {"/nonexistent/dir/x.gguf"});
}

// Every truncation and many random corruptions of a valid model file either load or throw
// ModelFormatError; nothing else escapes (run under ASan/UBSan to catch reads past the mapping).
TEST(GgufBadFiles, TruncationsAndCorruptionsOnlyThrowModelFormatError) {
  TempDir dir;
  TinyConfig c;
  c.layers = 1;
  c.vocab = 8;
  c.d = 32;
  c.ffn = 32;
  c.heads = 2;
  c.kv_heads = 1;
  const auto hf = TinyWeights(c);
  GgufWriter g = TinyGguf(c, hf);
  const Bytes good = g.Build();
  const std::string path = dir.File("m.gguf");
  auto attempt = [&](const Bytes& b) {
    WriteFile(path, b);
    try {
      ModelWeights w = LoadModel(path);
      GgufFile f(path);
      for (const auto& t : f.tensors())
        if (GgmlTypeCanDequantize(t.type)) f.ReadTensorF32(t);
    } catch (const ModelFormatError&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "unexpected exception: " << e.what();
    }
  };
  // Every truncation of the header region, then coarser steps through the data.
  for (size_t n = 0; n < good.size(); n += (n < g.layout.data_at + 64 ? 2 : 61)) {
    Bytes b(good.begin(), good.begin() + n);
    attempt(b);
  }
  uint32_t s = 12345;
  for (int i = 0; i < 500; ++i) {
    Bytes b = good;
    const int flips = 1 + i % 4;
    for (int k = 0; k < flips; ++k) {
      s = s * 1664525u + 1013904223u;
      const size_t at = (s >> 4) % g.layout.data_at;  // corrupt the header, not just weights
      s = s * 1664525u + 1013904223u;
      b[at] = static_cast<uint8_t>(s >> 24);
    }
    attempt(b);
  }
}

// A real model, when one has been downloaded (never the only coverage).
TEST(GgufRealModel, LoadsIfPresent) {
  const char* home = std::getenv("HOME");
  if (!home) GTEST_SKIP() << "no HOME";
  const std::string models = std::string(home) + "/.cache/cascade-xla/models";
  std::string found;
  if (DIR* d = ::opendir(models.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n.size() > 5 && n.compare(n.size() - 5, 5, ".gguf") == 0) {
        found = models + "/" + n;
        break;
      }
    }
    ::closedir(d);
  }
  if (found.empty()) GTEST_SKIP() << "no .gguf under " << models;
  GgufFile f(found);
  EXPECT_GT(f.tensors().size(), 0u);
  EXPECT_GT(f.GetArrayLength("tokenizer.ggml.tokens"), 0u);
  ModelWeights w = LoadModel(found);
  EXPECT_GT(w.config.num_layers, 0);
  EXPECT_EQ(w.at("model.embed_tokens.weight").dims,
            (std::vector<int64_t>{w.config.vocab_size, w.config.hidden_size}));
  for (const auto& [name, t] : w.tensors) {
    if (t.dtype != DType::kF32) continue;
    const float* p = t.as<float>();
    for (int64_t i = 0; i < t.element_count(); ++i) ASSERT_TRUE(std::isfinite(p[i])) << name << " " << i;
  }
}

}  // namespace
}  // namespace cascade
