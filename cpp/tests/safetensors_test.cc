// safetensors reader, sharded checkpoints, config.json, the strict JSON parser, and loading the
// same tiny model from safetensors and from GGUF.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

#include "model/json.h"
#include "model/loader.h"
#include "model/safetensors.h"
#include "model_files.h"
#include "pjrt/errors.h"

namespace cascade {
namespace {

using namespace testing_files;

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

std::vector<float> AsFloats(const HostTensor& t) {
  EXPECT_EQ(t.dtype, DType::kF32);
  return std::vector<float>(t.as<float>(), t.as<float>() + t.element_count());
}

// ------------------------------------------------------------------ JSON

TEST(Json, ParsesValues) {
  json::Value v = json::Parse(
      " {\"a\": [1, -2, 3.5, -0, 1e3, 12345678901234567890], \"b\": {\"c\": null, \"d\": true},"
      " \"e\": \"x\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\", \"f\": false, \"g\": \"h\xC3\xA9\"} ",
      "test");
  ASSERT_TRUE(v.is_object());
  const auto& a = v.find("a")->as_array();
  ASSERT_EQ(a.size(), 6u);
  EXPECT_TRUE(a[0].is_integer());
  EXPECT_EQ(a[0].as_int(), 1);
  EXPECT_EQ(a[1].as_int(), -2);
  EXPECT_FALSE(a[2].is_integer());
  EXPECT_EQ(a[2].as_number(), 3.5);
  EXPECT_EQ(a[3].as_int(), 0);
  EXPECT_EQ(a[4].as_number(), 1000.0);
  EXPECT_FALSE(a[5].is_integer());  // beyond int64: a double
  EXPECT_EQ(a[5].as_number(), 12345678901234567890.0);
  EXPECT_TRUE(v.find("b")->find("c")->is_null());
  EXPECT_TRUE(v.find("b")->find("d")->as_bool());
  EXPECT_EQ(v.find("e")->as_string(), "x\"\\/\b\f\n\r\t\xC3\xA9\xF0\x9F\x98\x80");
  EXPECT_FALSE(v.find("f")->as_bool());
  EXPECT_EQ(v.find("g")->as_string(), "h\xC3\xA9");
  EXPECT_EQ(v.find("missing"), nullptr);
  EXPECT_EQ(v.as_object()[0].first, "a");  // file order kept
  EXPECT_EQ(json::Parse(json::Serialize(v), "again").find("e")->as_string(), v.find("e")->as_string());
  EXPECT_THROW(v.find("e")->as_int(), ModelFormatError);
}

TEST(Json, RejectsInvalidText) {
  const std::pair<const char*, const char*> bad[] = {
      {"", "unexpected end"},
      {"{\"a\":1,}", "string key"},
      {"[1,2,]", "unexpected character"},
      {"[01]", "leading zero"},
      {"[1.]", "digits after"},
      {"[1e]", "exponent"},
      {"[.5]", "unexpected character"},
      {"[NaN]", "unexpected character"},
      {"// c\n{}", "unexpected character"},
      {"{\"a\" 1}", "':'"},
      {"{\"a\":1 \"b\":2}", "',' or '}'"},
      {"{\"a\":1,\"a\":2}", "duplicate object key \"a\""},
      {"\"abc", "unterminated string"},
      {"\"a\tb\"", "control character"},
      {"\"\\x\"", "invalid escape"},
      {"\"\\u12G4\"", "hex digit"},
      {"\"\\ud800\"", "unpaired high surrogate"},
      {"\"\\udc00\"", "unpaired low surrogate"},
      {"\"\xC0\xAF\"", "invalid UTF-8"},
      {"\"\xE0\x80\xAF\"", "invalid UTF-8"},
      {"\"\xED\xA0\x80\"", "invalid UTF-8"},
      {"\"\xF4\x90\x80\x80\"", "invalid UTF-8"},
      {"\"\xE2\x82\"", "UTF-8"},
      {"{} x", "after the JSON value"},
      {"tru", "invalid literal"},
      {"[1e999]", "out of range"},
      {"\xEF\xBB\xBF{}", "unexpected character"},
  };
  for (const auto& [text, needle] : bad) {
    SCOPED_TRACE(text);
    ExpectModelFormatError([&] { json::Parse(text, "bad.json"); }, {"bad.json", "invalid JSON", needle});
  }
  // Depth limit: 64 levels parse, 65 do not; a deep bomb fails fast without exhausting the stack.
  EXPECT_NO_THROW(json::Parse(std::string(64, '[') + std::string(64, ']'), "deep"));
  ExpectModelFormatError([] { json::Parse(std::string(65, '[') + std::string(65, ']'), "deep"); },
                         {"deep", "nesting deeper than 64"});
  ExpectModelFormatError([] { json::Parse(std::string(1000000, '['), "bomb"); }, {"bomb", "nesting"});
  ExpectModelFormatError([] { json::Parse("{\"a\":\n  [1,\n  x]}", "pos"); }, {"line 3 column 3"});
}

// ------------------------------------------------------------------ safetensors files

TEST(Safetensors, ReadsF32F16BF16Exactly) {
  TempDir dir;
  const std::vector<float> v = Values(12, 3);
  const std::string path = dir.File("t.safetensors");
  WriteFile(path, BuildSafetensors({{"a", "F32", {3, 4}, F32Bytes(v)},
                                    {"b", "F16", {12}, F16Bytes(v)},
                                    {"c", "BF16", {2, 2, 3}, BF16Bytes(v)},
                                    {"i", "I64", {2}, Bytes(16)},
                                    {"empty", "F32", {0, 4}, Bytes()}},
                                   "", "{\"format\":\"pt\"}"));
  SafetensorsFile f(path);
  EXPECT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  HostTensor a = f.ReadTensor("a");
  EXPECT_EQ(a.dtype, DType::kF32);
  EXPECT_EQ(a.dims, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(AsFloats(a), v);
  HostTensor b = f.ReadTensor("b");
  EXPECT_EQ(b.dtype, DType::kF16);
  EXPECT_EQ(b.data, F16Bytes(v));
  HostTensor c = f.ReadTensor("c");
  EXPECT_EQ(c.dtype, DType::kBF16);
  EXPECT_EQ(c.dims, (std::vector<int64_t>{2, 2, 3}));
  EXPECT_EQ(c.data, BF16Bytes(v));
  EXPECT_EQ(f.ReadTensor("empty").element_count(), 0);
  ExpectModelFormatError([&] { f.ReadTensor("i"); }, {path, "tensor \"i\"", "I64", "F32, F16 and BF16"});
  ExpectModelFormatError([&] { f.ReadTensor("zz"); }, {path, "missing tensor \"zz\""});
}

struct BadFile {
  const char* name;
  std::function<Bytes()> make;
  std::vector<std::string> needles;
};

Bytes WithHeader(const std::string& header, size_t data_bytes) {
  Bytes out;
  Put<uint64_t>(out, header.size());
  out.insert(out.end(), header.begin(), header.end());
  out.resize(out.size() + data_bytes);
  return out;
}

TEST(SafetensorsBadFiles, EachFailsWithATypedErrorNamingTheFileAndField) {
  TempDir dir;
  const std::vector<BadFile> cases = {
      {"empty", [] { return Bytes(); }, {"too short"}},
      {"truncated length", [] { return Bytes{1, 2, 3}; }, {"too short"}},
      {"truncated header", [] { Bytes b = WithHeader("{\"a\":{}}", 0); b.resize(b.size() - 2); return b; },
       {"truncated", "header length 8"}},
      {"huge header length", [] { Bytes b; Put<uint64_t>(b, ~0ull); return b; }, {"header length 18446744073709551615"}},
      {"invalid JSON header", [] { return WithHeader("{\"a\":", 0); }, {"(header)", "invalid JSON"}},
      {"header not an object", [] { return WithHeader("[1, 2]", 0); }, {"not an object"}},
      {"entry not an object", [] { return WithHeader("{\"w\": 3}", 0); }, {"tensor \"w\"", "not an object"}},
      {"missing dtype", [] { return WithHeader("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4); },
       {"tensor \"w\"", "\"dtype\""}},
      {"unknown dtype", [] { return WithHeader("{\"w\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4); },
       {"tensor \"w\"", "unknown dtype \"Q4\""}},
      {"negative shape", [] { return WithHeader("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4); },
       {"tensor \"w\"", "\"shape\""}},
      {"shape overflow",
       [] { return WithHeader("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4); },
       {"tensor \"w\"", "overflow"}},
      {"offsets out of order", [] { return WithHeader("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 8); },
       {"tensor \"w\"", "out of order"}},
      {"offsets not a pair", [] { return WithHeader("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 8); },
       {"tensor \"w\"", "two integers"}},
      {"offset past the end", [] { return WithHeader("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 8); },
       {"tensor \"w\"", "past the end"}},
      {"offset overflow",
       [] { return WithHeader("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551615]}}", 8); },
       {"tensor \"w\"", "non-negative integer"}},
      {"truncated data",
       [] {
         Bytes b = BuildSafetensors({{"w", "F32", {4}, F32Bytes({1, 2, 3, 4})}});
         b.resize(b.size() - 4);
         return b;
       },
       {"tensor \"w\"", "past the end"}},
      {"size disagrees with shape", [] { return WithHeader("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8); },
       {"tensor \"w\"", "span 4 bytes", "needs 8"}},
      {"overlapping",
       [] {
         return WithHeader("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12);
       },
       {"tensor \"a\"", "overlap", "tensor \"b\""}},
      {"bad metadata", [] { return WithHeader("{\"__metadata__\":{\"k\":1}}", 0); }, {"__metadata__", "\"k\""}},
      {"duplicate tensor",
       [] {
         return WithHeader("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                           "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8);
       },
       {"duplicate object key \"a\""}},
  };
  int k = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = dir.File("bad" + std::to_string(k++) + ".safetensors");
    WriteFile(path, c.make());
    std::vector<std::string> needles = c.needles;
    needles.insert(needles.begin(), path);
    ExpectModelFormatError([&] { SafetensorsFile f(path); }, needles);
  }
}

TEST(SafetensorsBadFiles, TruncationsAndCorruptionsOnlyThrowModelFormatError) {
  TempDir dir;
  const Bytes good = BuildSafetensors({{"a", "F32", {2, 3}, F32Bytes(Values(6, 1))},
                                       {"b", "BF16", {4}, BF16Bytes(Values(4, 2))}},
                                      "", "{\"format\":\"pt\"}");
  const std::string path = dir.File("x.safetensors");
  auto attempt = [&](const Bytes& b) {
    WriteFile(path, b);
    try {
      SafetensorsFile f(path);
      for (const auto& t : f.tensors()) f.ReadTensor(t);
    } catch (const ModelFormatError&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "unexpected exception: " << e.what();
    }
  };
  for (size_t n = 0; n < good.size(); ++n) attempt(Bytes(good.begin(), good.begin() + n));
  uint32_t s = 777;
  for (int i = 0; i < 1000; ++i) {
    Bytes b = good;
    s = s * 1664525u + 1013904223u;
    const size_t at = (s >> 4) % b.size();
    s = s * 1664525u + 1013904223u;
    // Mostly printable bytes, so that many corruptions still parse as JSON.
    b[at] = (i % 3) ? static_cast<uint8_t>(0x20 + (s >> 24) % 95) : static_cast<uint8_t>(s >> 24);
    attempt(b);
  }
}

// ------------------------------------------------------------------ sharded checkpoints

TEST(Safetensors, ShardedCheckpoint) {
  TempDir dir;
  const std::vector<float> a = Values(8, 1), b = Values(6, 2), c = Values(4, 3);
  WriteFile(dir.File("model-00001-of-00002.safetensors"),
            BuildSafetensors({{"a", "F32", {2, 4}, F32Bytes(a)}, {"b", "BF16", {6}, BF16Bytes(b)}}));
  WriteFile(dir.File("model-00002-of-00002.safetensors"), BuildSafetensors({{"c", "F16", {4}, F16Bytes(c)}}));
  WriteFile(dir.File("model.safetensors.index.json"),
            std::string("{\"metadata\":{\"total_size\":36},\"weight_map\":{"
                        "\"a\":\"model-00001-of-00002.safetensors\","
                        "\"b\":\"model-00001-of-00002.safetensors\","
                        "\"c\":\"model-00002-of-00002.safetensors\"}}"));
  EXPECT_EQ(SafetensorsCheckpointFiles(dir.path()).size(), 2u);
  for (const std::string& path : {dir.path(), dir.File("model.safetensors.index.json")}) {
    auto t = LoadSafetensors(path);
    ASSERT_EQ(t.size(), 3u);
    EXPECT_EQ(AsFloats(t.at("a")), a);
    EXPECT_EQ(t.at("b").data, BF16Bytes(b));
    EXPECT_EQ(t.at("c").data, F16Bytes(c));
  }
  auto only_c = LoadSafetensors(dir.path(), [](const std::string& n) { return n == "c"; });
  EXPECT_EQ(only_c.size(), 1u);

  // The index names a tensor its shard lacks / a missing shard / a path outside the directory.
  WriteFile(dir.File("model.safetensors.index.json"),
            std::string("{\"weight_map\":{\"a\":\"model-00002-of-00002.safetensors\"}}"));
  ExpectModelFormatError([&] { LoadSafetensors(dir.path()); },
                         {"model-00002-of-00002.safetensors", "missing tensor \"a\"", "index.json"});
  WriteFile(dir.File("model.safetensors.index.json"), std::string("{\"weight_map\":{\"a\":\"gone.safetensors\"}}"));
  ExpectModelFormatError([&] { LoadSafetensors(dir.path()); }, {"index.json", "gone.safetensors", "tensor \"a\""});
  WriteFile(dir.File("model.safetensors.index.json"), std::string("{\"weight_map\":{\"a\":\"../x.safetensors\"}}"));
  ExpectModelFormatError([&] { LoadSafetensors(dir.path()); }, {"index.json", "tensor \"a\"", "plain file name"});
  WriteFile(dir.File("model.safetensors.index.json"), std::string("{\"weight_map\":[]}"));
  ExpectModelFormatError([&] { LoadSafetensors(dir.path()); }, {"index.json", "weight_map"});
}

// ------------------------------------------------------------------ models

void ExpectSameWeights(const ModelWeights& w, const std::map<std::string, TinyTensor>& hf,
                       const std::string& dtype) {
  ASSERT_EQ(w.tensors.size(), hf.size());
  for (const auto& [name, t] : hf) {
    SCOPED_TRACE(name);
    const HostTensor& got = w.at(name);
    EXPECT_EQ(got.dims, t.shape);
    if (dtype == "F32") EXPECT_EQ(AsFloats(got), t.values);
    if (dtype == "F16") EXPECT_EQ(got.data, F16Bytes(t.values));
    if (dtype == "BF16") EXPECT_EQ(got.data, BF16Bytes(t.values));
  }
}

TEST(SafetensorsModel, TinyLlamaAndGemmaInEveryDtype) {
  for (bool gemma : {false, true}) {
    for (const std::string dtype : {"F32", "F16", "BF16"}) {
      SCOPED_TRACE(std::string(gemma ? "gemma " : "llama ") + dtype);
      TempDir dir;
      TinyConfig c;
      c.gemma = gemma;
      c.tied = gemma;
      if (gemma) c.eps = 1e-6f;
      const auto hf = TinyWeights(c);
      WriteFile(dir.File("config.json"), TinyHfConfigJson(c));
      WriteFile(dir.File("model.safetensors"), BuildSafetensors(TinySafetensors(hf, dtype)));
      for (const std::string& path : {dir.path(), dir.File("model.safetensors")}) {
        ModelWeights w = LoadModel(path);
        EXPECT_EQ(w.config.family, gemma ? ModelFamily::kGemma : ModelFamily::kLlama);
        EXPECT_EQ(w.config.architecture, gemma ? "GemmaForCausalLM" : "LlamaForCausalLM");
        EXPECT_EQ(w.config.vocab_size, c.vocab);
        EXPECT_EQ(w.config.hidden_size, c.d);
        EXPECT_EQ(w.config.intermediate_size, c.ffn);
        EXPECT_EQ(w.config.num_layers, c.layers);
        EXPECT_EQ(w.config.num_heads, c.heads);
        EXPECT_EQ(w.config.num_kv_heads, c.kv_heads);
        EXPECT_EQ(w.config.head_dim, c.head_dim);
        EXPECT_EQ(w.config.context_length, c.ctx);
        EXPECT_EQ(w.config.rms_norm_eps, gemma ? 1e-6 : 1e-5);
        EXPECT_EQ(w.config.rope_theta, 10000.0);
        EXPECT_EQ(w.config.tied_embeddings, c.tied);
        EXPECT_EQ(w.config.bos_token_id, c.bos);
        EXPECT_EQ(w.config.eos_token_id, c.eos);
        ExpectSameWeights(w, hf, dtype);
      }
    }
  }
}

TEST(SafetensorsModel, SameWeightsAsTheGgufConversion) {
  for (bool gemma : {false, true}) {
    SCOPED_TRACE(gemma ? "gemma" : "llama");
    TempDir dir;
    TinyConfig c;
    c.gemma = gemma;
    c.tied = !gemma ? false : true;
    const auto hf = TinyWeights(c);
    WriteFile(dir.File("config.json"), TinyHfConfigJson(c));
    WriteFile(dir.File("model.safetensors"), BuildSafetensors(TinySafetensors(hf, "F32")));
    WriteFile(dir.File("model.gguf"), TinyGguf(c, hf).Build());
    ModelWeights from_st = LoadModel(dir.path());
    ModelWeights from_gguf = LoadModel(dir.File("model.gguf"));
    ASSERT_EQ(from_st.tensors.size(), from_gguf.tensors.size());
    for (const auto& [name, t] : from_st.tensors) {
      SCOPED_TRACE(name);
      EXPECT_EQ(t.dims, from_gguf.at(name).dims);
      EXPECT_EQ(t.data, from_gguf.at(name).data);
    }
    EXPECT_EQ(from_st.config.hidden_size, from_gguf.config.hidden_size);
    EXPECT_EQ(from_st.config.num_kv_heads, from_gguf.config.num_kv_heads);
    EXPECT_EQ(from_st.config.tied_embeddings, from_gguf.config.tied_embeddings);
    EXPECT_EQ(from_st.config.rms_norm_eps, from_gguf.config.rms_norm_eps);
  }
}

TEST(SafetensorsModel, ShardedModelAndTiedHeadDropped) {
  TempDir dir;
  TinyConfig c;
  auto hf = TinyWeights(c);  // tied
  auto specs = TinySafetensors(hf, "BF16");
  // An lm_head copy that Hugging Face would tie anyway, and a buffer we do not use.
  specs.push_back({"lm_head.weight", "BF16", {c.vocab, c.d}, BF16Bytes(hf.at("model.embed_tokens.weight").values)});
  specs.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", "F32", {8}, F32Bytes(Values(8, 9))});
  std::vector<SafetensorsSpec> first(specs.begin(), specs.begin() + specs.size() / 2);
  std::vector<SafetensorsSpec> second(specs.begin() + specs.size() / 2, specs.end());
  WriteFile(dir.File("s1.safetensors"), BuildSafetensors(first));
  WriteFile(dir.File("s2.safetensors"), BuildSafetensors(second));
  std::string index = "{\"metadata\":{},\"weight_map\":{";
  for (size_t i = 0; i < specs.size(); ++i)
    index += std::string(i ? "," : "") + "\"" + specs[i].name + "\":\"" +
             (i < first.size() ? "s1" : "s2") + ".safetensors\"";
  WriteFile(dir.File("model.safetensors.index.json"), index + "}}");
  WriteFile(dir.File("config.json"), TinyHfConfigJson(c));
  ModelWeights w = LoadModel(dir.path());
  EXPECT_TRUE(w.config.tied_embeddings);
  EXPECT_EQ(w.tensors.count("lm_head.weight"), 0u);
  ExpectSameWeights(w, hf, "BF16");
}

std::string ReplaceOnce(std::string s, const std::string& from, const std::string& to) {
  size_t at = s.find(from);
  if (at == std::string::npos) throw std::runtime_error("no " + from);
  return s.replace(at, from.size(), to);
}

TEST(SafetensorsModel, BadModels) {
  TinyConfig c;
  c.tied = false;
  const auto hf = TinyWeights(c);
  const std::string good_config = TinyHfConfigJson(c);
  struct Case {
    const char* name;
    std::string config;                          // "" = no config.json
    std::function<void(std::vector<SafetensorsSpec>&)> edit;
    std::vector<std::string> needles;            // besides the directory
    bool config_file_named = false;              // message names config.json rather than the dir
  };
  const std::vector<Case> cases = {
      {"no config.json", "", nullptr, {"config.json"}},
      {"unknown architecture",
       ReplaceOnce(ReplaceOnce(good_config, "LlamaForCausalLM", "MistralForCausalLM"), "\"llama\"", "\"mistral\""),
       nullptr, {"unsupported architecture \"MistralForCausalLM\""}, true},
      {"model_type disagrees", ReplaceOnce(good_config, "\"llama\"", "\"gemma\""), nullptr, {"model_type"}, true},
      {"invalid JSON", ReplaceOnce(good_config, "\"vocab_size\": 48,", "\"vocab_size\": 48,,"), nullptr,
       {"invalid JSON", "line"}, true},
      {"missing field", ReplaceOnce(good_config, "\"hidden_size\": 64,", ""), nullptr, {"\"hidden_size\""}, true},
      {"wrong field type", ReplaceOnce(good_config, "\"num_hidden_layers\": 2", "\"num_hidden_layers\": \"2\""), nullptr,
       {"\"num_hidden_layers\"", "not an integer"}, true},
      {"rope scaling", ReplaceOnce(good_config, "\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"linear\"}"),
       nullptr, {"rope_scaling", "not supported"}, true},
      {"zero heads", ReplaceOnce(good_config, "\"num_attention_heads\": 4", "\"num_attention_heads\": 0"), nullptr,
       {"num_heads", "positive"}, true},
      {"shape disagrees with config", good_config,
       [](std::vector<SafetensorsSpec>& s) {
         for (auto& t : s)
           if (t.name == "model.layers.1.self_attn.o_proj.weight") {
             t.shape = {64, 32};
             t.data.resize(64 * 32 * 4);
           }
       },
       {"tensor model.layers.1.self_attn.o_proj.weight", "[64,32]", "[64,64]"}},
      {"missing untied head", good_config,
       [](std::vector<SafetensorsSpec>& s) {
         s.erase(std::remove_if(s.begin(), s.end(), [](const auto& t) { return t.name == "lm_head.weight"; }), s.end());
       },
       {"missing tensor lm_head.weight", "not tied"}},
      {"unsupported dtype for a weight", good_config,
       [](std::vector<SafetensorsSpec>& s) {
         for (auto& t : s)
           if (t.name == "model.norm.weight") {
             t.dtype = "F64";
             t.data.resize(64 * 8);
           }
       },
       {"tensor \"model.norm.weight\"", "F64"}},
  };
  int k = 0;
  for (const auto& cs : cases) {
    SCOPED_TRACE(cs.name);
    TempDir dir;
    const std::string model_dir = dir.Subdir("m" + std::to_string(k++));
    if (!cs.config.empty()) WriteFile(model_dir + "/config.json", cs.config);
    auto specs = TinySafetensors(hf, "F32");
    if (cs.edit) cs.edit(specs);
    WriteFile(model_dir + "/model.safetensors", BuildSafetensors(specs));
    std::vector<std::string> needles = cs.needles;
    needles.insert(needles.begin(), cs.config_file_named ? model_dir + "/config.json" : model_dir);
    ExpectModelFormatError([&] { LoadModel(model_dir); }, needles);
  }
}

TEST(HfConfig, DefaultsAndTokenLists) {
  json::Value v = json::Parse(
      "{\"architectures\":[\"GemmaForCausalLM\"],\"vocab_size\":256000,\"hidden_size\":2048,"
      "\"intermediate_size\":16384,\"num_hidden_layers\":18,\"num_attention_heads\":8,"
      "\"num_key_value_heads\":1,\"head_dim\":256,\"bos_token_id\":2,\"eos_token_id\":[1,107]}",
      "gemma.json");
  ModelConfig c = ConfigFromHfJson(v, "gemma.json");
  EXPECT_EQ(c.family, ModelFamily::kGemma);
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_TRUE(c.tied_embeddings);  // Gemma's default
  EXPECT_EQ(c.context_length, 8192);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.bos_token_id, 2);
  EXPECT_EQ(c.eos_token_id, 1);
  json::Value l = json::Parse(
      "{\"model_type\":\"llama\",\"vocab_size\":32000,\"hidden_size\":64,\"intermediate_size\":128,"
      "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"bos_token_id\":null}",
      "llama.json");
  ModelConfig d = ConfigFromHfJson(l, "llama.json");
  EXPECT_EQ(d.family, ModelFamily::kLlama);
  EXPECT_EQ(d.architecture, "llama");
  EXPECT_EQ(d.num_kv_heads, 4);
  EXPECT_EQ(d.head_dim, 16);
  EXPECT_FALSE(d.tied_embeddings);  // Llama's default
  EXPECT_EQ(d.bos_token_id, -1);
}

}  // namespace
}  // namespace cascade
