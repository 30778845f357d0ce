// A table of bad model inputs that the per-format suites (gguf_test, safetensors_test,
// tiny_test) do not already cover: hyperparameters of the wrong type, sign or size, vocabularies
// that disagree inside one file, unreadable weight types, config.json edge cases (deep nesting,
// invalid UTF-8, huge numbers), tiny metadata that does not parse, and the regression inputs the
// fuzz targets (cpp/fuzz) found. Every case must throw a typed cascade::Error (ModelFormatError)
// whose message names the file and the field or tensor, and a valid load must work right after
// it (the process stays usable).
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "model/gguf.h"
#include "model/json.h"
#include "model/loader.h"
#include "model/tiny.h"
#include "model_files.h"
#include "pjrt/errors.h"

namespace cascade {
namespace {

using namespace testing_files;

// Checks that fn() throws a ModelFormatError mentioning every needle.
void ExpectFormatError(const std::string& label, const std::function<void()>& fn,
                       const std::vector<std::string>& needles) {
  SCOPED_TRACE(label);
  try {
    fn();
    ADD_FAILURE() << label << ": no error thrown";
  } catch (const ModelFormatError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kModelFormat);
    for (const auto& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << label << ": message \"" << e.what() << "\" lacks \"" << n << "\"";
  } catch (const std::exception& e) {
    ADD_FAILURE() << label << ": wrong exception type (not ModelFormatError): " << e.what();
  } catch (...) {
    ADD_FAILURE() << label << ": a non-std exception";
  }
}

// The tiny Llama model of model_files.h as a GGUF, with the metadata written by hand so a test can
// drop a key (`skip`) and add its own replacement (`extra`).
struct GgufModelSpec {
  TinyConfig c;
  std::string skip;                                   // metadata key not written
  std::function<void(GgufWriter&)> extra;             // adds keys (after the standard ones)
  std::function<void(std::map<std::string, TinyTensor>&)> edit_weights;
  std::vector<std::string> tokens;                    // default: vocab tokens
  std::map<std::string, uint32_t> tensor_types;      // GGUF tensor name -> raw ggml type (data kept)
};

Bytes BuildModelGguf(const GgufModelSpec& s) {
  const TinyConfig& c = s.c;
  auto w = testing_files::TinyWeights(c);
  if (s.edit_weights) s.edit_weights(w);
  GgufWriter g;
  const std::string a = c.gemma ? "gemma" : "llama";
  auto want = [&](const std::string& k) { return k != s.skip; };
  if (want("general.architecture")) g.KvString("general.architecture", a);
  auto u32 = [&](const std::string& k, int64_t v) { if (want(k)) g.KvU32(k, static_cast<uint32_t>(v)); };
  u32(a + ".context_length", c.ctx);
  u32(a + ".embedding_length", c.d);
  u32(a + ".block_count", c.layers);
  u32(a + ".feed_forward_length", c.ffn);
  u32(a + ".attention.head_count", c.heads);
  u32(a + ".attention.head_count_kv", c.kv_heads);
  if (want(a + ".attention.layer_norm_rms_epsilon")) g.KvF32(a + ".attention.layer_norm_rms_epsilon", c.eps);
  u32(a + ".attention.key_length", c.head_dim);
  u32(a + ".attention.value_length", c.head_dim);
  std::vector<std::string> tokens = s.tokens;
  if (tokens.empty())
    for (int64_t i = 0; i < c.vocab; ++i) tokens.push_back("tok" + std::to_string(i));
  if (want("tokenizer.ggml.tokens")) g.KvStrings("tokenizer.ggml.tokens", tokens);
  u32("tokenizer.ggml.bos_token_id", c.bos);
  u32("tokenizer.ggml.eos_token_id", c.eos);
  if (s.extra) s.extra(g);
  for (const auto& [name, t] : w) {
    std::vector<uint64_t> ne(t.shape.rbegin(), t.shape.rend());
    const std::string gname = GgufNameFor(name);
    auto it = s.tensor_types.find(gname);
    if (it != s.tensor_types.end()) {
      g.Tensor(gname, ne, it->second, F32Bytes(t.values));
    } else {
      g.TensorF32(gname, ne, t.values);  // Q/K not permuted: values do not matter here
    }
  }
  return g.Build();
}

TinyConfig SmallConfig() {
  TinyConfig c;
  c.vocab = 16;
  c.d = 16;
  c.ffn = 32;
  c.layers = 1;
  c.heads = 2;
  c.kv_heads = 1;
  c.head_dim = 8;
  c.ctx = 32;
  return c;
}

TEST(BadInputs, GgufModelMetadataAndShapes) {
  TempDir dir;
  const std::string good = dir.File("good.gguf");
  WriteFile(good, BuildModelGguf({SmallConfig()}));
  ASSERT_NO_THROW(LoadGgufModel(good));

  struct Case {
    std::string label;
    GgufModelSpec spec;
    std::vector<std::string> needles;
  };
  const std::string L = "llama.";
  std::vector<Case> cases;
  auto add = [&](std::string label, std::function<void(GgufModelSpec&)> edit, std::vector<std::string> needles) {
    GgufModelSpec s{SmallConfig()};
    edit(s);
    cases.push_back({std::move(label), std::move(s), std::move(needles)});
  };
  add("hyperparameter of the wrong type",
      [&](GgufModelSpec& s) { s.skip = L + "block_count"; s.extra = [&](GgufWriter& g) { g.KvString(L + "block_count", "1"); }; },
      {"llama.block_count"});
  add("negative hyperparameter",
      [&](GgufModelSpec& s) { s.skip = L + "block_count"; s.extra = [&](GgufWriter& g) { g.KvI32(L + "block_count", -1); }; },
      {"num_layers = -1", "positive"});
  add("zero context length",
      [&](GgufModelSpec& s) { s.skip = L + "context_length"; s.extra = [&](GgufWriter& g) { g.KvU32(L + "context_length", 0); }; },
      {"context_length = 0"});
  add("implausibly large width",
      [&](GgufModelSpec& s) { s.skip = L + "embedding_length"; s.extra = [&](GgufWriter& g) { g.KvU32(L + "embedding_length", 1u << 30); }; },
      {"implausibly large"});
  add("u64 hyperparameter past int64",
      [&](GgufModelSpec& s) { s.skip = L + "block_count"; s.extra = [&](GgufWriter& g) { g.KvU64(L + "block_count", (1ull << 63) + 5); }; },
      {"llama.block_count"});
  add("odd head_dim (RoPE needs pairs)",
      [&](GgufModelSpec& s) { s.c.head_dim = 7; },
      {"head_dim 7", "even"});
  add("zero kv heads",
      [&](GgufModelSpec& s) { s.skip = L + "attention.head_count_kv"; s.extra = [&](GgufWriter& g) { g.KvU32(L + "attention.head_count_kv", 0); }; },
      {"num_kv_heads = 0"});
  add("negative rms epsilon",
      [&](GgufModelSpec& s) { s.skip = L + "attention.layer_norm_rms_epsilon"; s.extra = [&](GgufWriter& g) { g.KvF32(L + "attention.layer_norm_rms_epsilon", -1e-5f); }; },
      {"rms_norm_eps"});
  add("value length differs from key length",
      [&](GgufModelSpec& s) { s.skip = L + "attention.value_length"; s.extra = [&](GgufWriter& g) { g.KvU32(L + "attention.value_length", 16); }; },
      {"llama.attention.value_length"});
  add("unknown architecture (metadata under its own prefix)",
      [&](GgufModelSpec& s) { s.skip = "general.architecture"; s.extra = [&](GgufWriter& g) { g.KvString("general.architecture", "qwen2"); }; },
      {"unsupported architecture \"qwen2\""});
  add("architecture is not a string",
      [&](GgufModelSpec& s) { s.skip = "general.architecture"; s.extra = [&](GgufWriter& g) { g.KvU32("general.architecture", 1); }; },
      {"general.architecture"});
  add("token list shorter than the embedding (vocabulary mismatch inside one file)",
      [&](GgufModelSpec& s) { for (int i = 0; i < 12; ++i) s.tokens.push_back("t" + std::to_string(i)); },
      {"token_embd.weight", "[12,16]", "[16,16]"});
  add("token list is not strings",
      [&](GgufModelSpec& s) { s.skip = "tokenizer.ggml.tokens"; s.extra = [&](GgufWriter& g) { g.KvI32s("tokenizer.ggml.tokens", {1, 2}); }; },
      {"token_embd.weight"});
  add("weight of a type that cannot be dequantised (IQ2_XXS)",
      [&](GgufModelSpec& s) { s.tensor_types["blk.0.ffn_up.weight"] = 16; },
      {"blk.0.ffn_up.weight"});
  add("weight with a zero dimension",
      [&](GgufModelSpec& s) {
        s.edit_weights = [](std::map<std::string, TinyTensor>& w) { w["model.norm.weight"] = {{0}, {}}; };
      },
      {"output_norm.weight", "[0]", "[16]"});
  add("weight of rank 3 where a matrix is expected",
      [&](GgufModelSpec& s) {
        s.edit_weights = [](std::map<std::string, TinyTensor>& w) {
          auto& t = w["model.layers.0.mlp.down_proj.weight"];
          t.shape = {16, 2, 16};
        };
      },
      {"blk.0.ffn_down.weight", "[16,2,16]", "[16,32]"});

  int k = 0;
  for (const Case& c : cases) {
    const std::string path = dir.File("bad" + std::to_string(k++) + ".gguf");
    Bytes bytes;
    try {
      bytes = BuildModelGguf(c.spec);
    } catch (const std::exception& e) {
      ADD_FAILURE() << c.label << ": cannot build the file: " << e.what();
      continue;
    }
    WriteFile(path, bytes);
    std::vector<std::string> needles = c.needles;
    needles.push_back(path);
    ExpectFormatError(c.label, [&] { LoadGgufModel(path); }, needles);
    // Also through the generic entry point the engine uses.
    ExpectFormatError(c.label + " (LoadModel)", [&] { LoadModel(path); }, {path});
    // The process stays usable: a valid file still loads.
    ASSERT_NO_THROW(LoadGgufModel(good)) << "after " << c.label;
  }
}

TEST(BadInputs, GgufFilesThatAreNotFiles) {
  TempDir dir;
  ExpectFormatError("a directory", [&] { GgufFile f(dir.path()); }, {dir.path()});
  ExpectFormatError("a directory through LoadModel", [&] { LoadModel(dir.path()); }, {dir.path()});
  ExpectFormatError("a missing file", [&] { LoadModel(dir.File("absent.gguf")); }, {"absent.gguf"});
  WriteFile(dir.File("text.gguf"), std::string("this is not a GGUF file at all, just text\n"));
  ExpectFormatError("text with a .gguf name", [&] { LoadModel(dir.File("text.gguf")); }, {"text.gguf", "magic"});
  // Each prefix of a valid model file is rejected with a typed error, never read out of bounds.
  const Bytes good = BuildModelGguf({SmallConfig()});
  const std::string cut = dir.File("cut.gguf");
  for (size_t n = 0; n < good.size(); n += (n < 512 ? 1 : 97)) {
    WriteFile(cut, Bytes(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n)));
    ExpectFormatError("prefix of " + std::to_string(n) + " bytes", [&] { LoadGgufModel(cut); }, {cut});
  }
}

// Hugging Face config.json edge cases (the per-field table lives in safetensors_test).
TEST(BadInputs, HfConfigJson) {
  const std::string base = TinyHfConfigJson(SmallConfig());
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string s = base;
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) s.replace(at, from.size(), to);
    return s;
  };
  struct Case {
    std::string label, text;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {"vocab_size past int64", replace("\"vocab_size\": 16", "\"vocab_size\": 123456789012345678901234567890"),
       {"\"vocab_size\"", "not an integer"}},
      {"vocab_size as a float", replace("\"vocab_size\": 16", "\"vocab_size\": 16.0"), {"\"vocab_size\"", "not an integer"}},
      {"vocab_size implausibly large", replace("\"vocab_size\": 16", "\"vocab_size\": 4611686018427387904"),
       {"implausibly large"}},
      {"negative layers", replace("\"num_hidden_layers\": 1", "\"num_hidden_layers\": -3"), {"num_layers = -3"}},
      {"too many layers", replace("\"num_hidden_layers\": 1", "\"num_hidden_layers\": 1000000"), {"implausibly large"}},
      {"number too large for a double", replace("\"rope_theta\": 10000.0", "\"rope_theta\": 1e999"), {"config.json"}},
      {"NaN is not JSON", replace("\"rope_theta\": 10000.0", "\"rope_theta\": NaN"), {"config.json", "line"}},
      {"architectures is empty and no model_type", replace("\"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",", ""),
       {"unsupported architecture"}},
      {"architectures holds a number", replace("[\"LlamaForCausalLM\"]", "[7]"), {"\"architectures\""}},
      {"hidden_act gelu for llama", replace("\"silu\"", "\"gelu\""), {"\"hidden_act\"", "gelu"}},
      {"attention_bias", replace("\"torch_dtype\"", "\"attention_bias\": true, \"torch_dtype\""), {"attention_bias"}},
      {"rope_type llama3", replace("\"torch_dtype\"", "\"rope_parameters\": {\"rope_type\": \"llama3\"}, \"torch_dtype\""),
       {"rope_type"}},
      {"invalid UTF-8 in a string", replace("\"float32\"", "\"float\xC3\x28\""), {"config.json", "UTF-8"}},
      {"deep nesting", std::string(100000, '[') + std::string(100000, ']'), {"config.json", "nesting"}},
      {"not an object", "[1, 2, 3]", {"not a JSON object"}},
      {"empty text", "", {"config.json"}},
      {"a BOM before the object", "\xEF\xBB\xBF" + base, {"config.json"}},
  };
  for (const Case& c : cases) {
    ExpectFormatError(c.label, [&] { ConfigFromHfJson(json::Parse(c.text, "config.json"), "config.json"); }, c.needles);
    ASSERT_NO_THROW(ConfigFromHfJson(json::Parse(base, "config.json"), "config.json")) << "after " << c.label;
  }
}

// The tiny model's __metadata__ sizes must be positive decimal integers.
TEST(BadInputs, TinyMetadataNumbers) {
  TempDir dir;
  auto file = [&](const std::string& name, const std::string& input_dim, const std::string& vocab) {
    const std::string meta = "{\"format\":\"cascade-xla-tiny\",\"version\":\"1\",\"input_dim\":\"" + input_dim +
                             "\",\"hidden\":\"4\",\"vocab\":\"" + vocab + "\",\"input\":\"draft_input_embedding\"}";
    const auto v = [](size_t n) { return F32Bytes(Values(n, 1)); };
    const std::string path = dir.File(name);
    WriteFile(path, BuildSafetensors({{"proj_in.weight", "F32", {4, 8}, v(32)},
                                      {"proj_in.bias", "F32", {4}, v(4)},
                                      {"norm.weight", "F32", {4}, v(4)},
                                      {"norm.bias", "F32", {4}, v(4)},
                                      {"proj_out.weight", "F32", {16, 4}, v(64)},
                                      {"proj_out.bias", "F32", {16}, v(16)}},
                                     "", meta));
    return path;
  };
  const std::string good = file("good.safetensors", "8", "16");
  ASSERT_NO_THROW(LoadTiny(good));
  struct Case {
    std::string input_dim, vocab;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {"99999999999999999999", "16", {"input_dim", "not a positive integer"}},
      {"8", "-16", {"vocab", "not a positive integer"}},
      {"8", "0", {"vocab", "not a positive integer"}},
      {"8", "16abc", {"vocab", "not a positive integer"}},
      {"8", "", {"vocab", "not a positive integer"}},
      {"8", "0x10", {"vocab", "not a positive integer"}},
      {"9223372036854775807", "16", {"proj_in.weight", "expected"}},
      {"8", "4611686018427387904", {"proj_out.weight", "expected"}},
  };
  int k = 0;
  for (const Case& c : cases) {
    const std::string path = file("bad" + std::to_string(k++) + ".safetensors", c.input_dim, c.vocab);
    auto needles = c.needles;
    needles.push_back(path);
    ExpectFormatError("input_dim \"" + c.input_dim + "\", vocab \"" + c.vocab + "\"", [&] { LoadTiny(path); }, needles);
    ASSERT_NO_THROW(LoadTiny(good));
  }
  // A tiny for another vocabulary than the draft's: typed error naming both sizes.
  ModelConfig draft;
  draft.hidden_size = 8;
  draft.vocab_size = 49152;
  ExpectFormatError("tiny vocab != draft vocab", [&] { LoadTiny(good, &draft); }, {"vocab 16", "vocab 49152"});
}

// From gguf_fuzz (a timeout): a 4 KB GGUF whose llama.block_count claims tens of thousands of
// layers while it holds the tensors of one. LoadGgufModel builds the expected name and shape of
// every layer's tensors (a map of 9 * block_count strings) before it looks at the file's tensors:
// ~1 s in a release build for 65536 layers, ~15 s under ASan, and only then the typed error.
// The error is right; the time is the finding (DISABLED_ below states the wanted bound).
Bytes ManyLayersFewTensors() {
  GgufModelSpec s{SmallConfig()};
  s.skip = "llama.block_count";
  s.extra = [](GgufWriter& g) { g.KvU32("llama.block_count", 65536); };
  return BuildModelGguf(s);
}

TEST(BadInputs, GgufManyLayersFewTensors) {
  TempDir dir;
  const std::string path = dir.File("many_layers.gguf");
  WriteFile(path, ManyLayersFewTensors());
  ExpectFormatError("65536 layers, tensors for 1", [&] { LoadGgufModel(path); }, {path, "65536 layers"});
}

TEST(BadInputs, GgufManyLayersFewTensorsFailsFast) {
  TempDir dir;
  const std::string path = dir.File("many_layers.gguf");
  WriteFile(path, ManyLayersFewTensors());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(LoadGgufModel(path), ModelFormatError);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 0.05) << "a 4 KB file should be rejected in well under 50 ms";
}

// From json_fuzz: "-0.0e-3" parses to the double -0.0, which Serialize writes as "-0", which
// parses back as the integer 0 (the sign is lost; likewise 3.0 -> "3" -> integer 3). Serialize's
// output must still parse, and the second round trip must be a fixed point.
TEST(BadInputs, JsonSerializeRoundTripOfNegativeZero) {
  for (const char* text : {"-0.0e-3", "-0.0", "[-0.0,3.0,1e300,-1e-300]"}) {
    SCOPED_TRACE(text);
    const std::string once = json::Serialize(json::Parse(text, "fuzz.json"));
    std::string twice, thrice;
    ASSERT_NO_THROW(twice = json::Serialize(json::Parse(once, "once.json")));
    ASSERT_NO_THROW(thrice = json::Serialize(json::Parse(twice, "twice.json")));
    EXPECT_EQ(twice, thrice);
  }
  EXPECT_EQ(json::Serialize(json::Parse("-0.0e-3", "fuzz.json")), "-0");
  EXPECT_EQ(json::Parse("-0", "fuzz.json").as_number(), 0.0);
}

}  // namespace
}  // namespace cascade
