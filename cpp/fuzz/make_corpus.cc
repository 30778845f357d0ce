// Writes the seed corpora of the fuzz targets (valid files from cpp/tests/model_files.h, plus a
// few hand-written JSON texts) into <out>/<target>/. Run by scripts/fuzz.mjs; nothing it writes
// is committed.
//   make_corpus <out-dir>
#include <sys/stat.h>

#include <cstdio>
#include <string>
#include <vector>

#include "model_files.h"

using namespace cascade::testing_files;

namespace {

std::string out_dir;
int written = 0;

void Seed(const std::string& target, const std::string& name, const Bytes& bytes) {
  const std::string dir = out_dir + "/" + target;
  ::mkdir(dir.c_str(), 0755);
  WriteFile(dir + "/" + name, bytes);
  ++written;
}
void Seed(const std::string& target, const std::string& name, const std::string& text) {
  Seed(target, name, Bytes(text.begin(), text.end()));
}

TinyConfig Small(bool gemma, bool tied) {
  TinyConfig c;
  c.gemma = gemma;
  c.vocab = 8;
  c.d = 8;
  c.ffn = 8;
  c.layers = 1;
  c.heads = 2;
  c.kv_heads = 1;
  c.head_dim = 4;
  c.ctx = 16;
  c.tied = tied;
  return c;
}

void GgufSeeds() {
  for (bool gemma : {false, true})
    for (bool tied : {true, false}) {
      const TinyConfig c = Small(gemma, tied);
      GgufWriter g = TinyGguf(c, TinyWeights(c));
      Seed("gguf", std::string(gemma ? "gemma" : "llama") + (tied ? "_tied" : "_untied") + ".gguf", g.Build());
    }
  // Every metadata type, a nested array, and quantised tensors of each dequantised layout.
  for (uint32_t version : {2u, 3u}) {
    GgufWriter g;
    g.version = version;
    g.alignment = 64;
    g.write_alignment_key = true;
    g.KvString("general.architecture", "llama");
    g.KvU32("a.u32", 7);
    g.KvI32("a.i32", -7);
    g.KvU64("a.u64", 1ull << 40);
    g.KvF32("a.f32", 0.5f);
    g.KvF64("a.f64", 1e-300);
    g.KvBool("a.bool", true);
    g.KvStrings("tokenizer.ggml.tokens", {"<s>", "</s>", "h\xC3\xA9llo", ""});
    g.KvI32s("tokenizer.ggml.token_type", {1, 3, -2});
    g.KvF32s("tokenizer.ggml.scores", {0.0f, -1.5f, 2.25f});
    Bytes nested;
    Put<uint32_t>(nested, kGgufArray);
    Put<uint64_t>(nested, 2);
    Put<uint32_t>(nested, kGgufU8);
    Put<uint64_t>(nested, 2);
    nested.push_back(1);
    nested.push_back(2);
    Put<uint32_t>(nested, kGgufU8);
    Put<uint64_t>(nested, 0);
    g.KvRaw("a.nested", kGgufArray, nested);
    std::vector<float> x32 = Values(64, 3), x256 = Values(256, 4), expected;
    g.TensorF32("f32", {4, 2}, Values(8, 1));
    g.Tensor("f16", {4}, kGgmlF16, F16Bytes(Values(4, 2)));
    g.Tensor("bf16", {4}, kGgmlBF16, BF16Bytes(Values(4, 2)));
    g.Tensor("q8_0", {32, 2}, kGgmlQ8_0, QuantizeQ8_0(x32, &expected));
    g.Tensor("q4_0", {64}, kGgmlQ4_0, QuantizeQ4_0(x32, &expected));
    g.Tensor("q4_1", {64}, kGgmlQ4_1, QuantizeQ4_1(x32, &expected));
    g.Tensor("q6_k", {256}, kGgmlQ6_K, QuantizeQ6_K(x256, &expected));
    std::vector<int> codes5(32), codes_k(256), scales(8), mins(8);
    for (int i = 0; i < 32; ++i) codes5[i] = (i * 7) % 32;
    for (int i = 0; i < 256; ++i) codes_k[i] = (i * 5) % 16;
    for (int i = 0; i < 8; ++i) scales[i] = 3 + i, mins[i] = 60 - i;
    std::vector<float> d1 = {0.25f}, m1 = {-1.0f};
    g.Tensor("q5_0", {32}, kGgmlQ5_0, PackQ5(codes5, d1, nullptr, &expected));
    g.Tensor("q5_1", {32}, kGgmlQ5_1, PackQ5(codes5, d1, &m1, &expected));
    g.Tensor("q4_k", {256}, kGgmlQ4_K, PackQK(false, codes_k, scales, mins, d1, d1, &expected));
    g.Tensor("q5_k", {256}, kGgmlQ5_K, PackQK(true, codes_k, scales, mins, d1, d1, &expected));
    g.Tensor("unknown", {4}, 99, Bytes(16, 1));
    Seed("gguf", "types_v" + std::to_string(version) + ".gguf", g.Build());
  }
  GgufWriter empty;
  Seed("gguf", "empty.gguf", empty.Build());
}

void SafetensorsSeeds() {
  const TinyConfig c = Small(false, false);
  const auto w = TinyWeights(c);
  for (const char* dtype : {"F32", "F16", "BF16"})
    Seed("safetensors", std::string("tiny_") + dtype + ".safetensors", BuildSafetensors(TinySafetensors(w, dtype)));
  Seed("safetensors", "meta.safetensors",
       BuildSafetensors({{"a", "F32", {2, 2}, F32Bytes({1, 2, 3, 4})},
                         {"b", "I64", {1}, Bytes(8, 0)},
                         {"c", "BF16", {0, 3}, Bytes()},
                         {"d", "U8", {}, Bytes(1, 7)}},
                        "", "{\"format\":\"pt\",\"k\":\"v\"}"));
  Seed("safetensors", "empty.safetensors", BuildSafetensors({}));
}

void TinySeeds() {
  const int64_t input_dim = 8, hidden = 4, vocab = 16;
  const std::string meta = "{\"format\":\"cascade-xla-tiny\",\"version\":\"1\",\"input_dim\":\"8\",\"hidden\":\"4\","
                           "\"vocab\":\"16\",\"input\":\"draft_input_embedding\",\"layer_norm_eps\":\"1e-05\","
                           "\"draft\":\"fuzz\",\"draft_family\":\"llama\",\"fit\":\"closed_form_ridge\"}";
  for (const char* dtype : {"F32", "F16", "BF16"}) {
    auto bytes = [&](size_t n, uint32_t seed) {
      const auto v = Values(n, seed);
      const std::string d = dtype;
      return d == "F32" ? F32Bytes(v) : d == "F16" ? F16Bytes(v) : BF16Bytes(v);
    };
    Seed("tiny", std::string("tiny_") + dtype + ".safetensors",
         BuildSafetensors({{"proj_in.weight", dtype, {hidden, input_dim}, bytes(hidden * input_dim, 1)},
                           {"proj_in.bias", dtype, {hidden}, bytes(hidden, 2)},
                           {"norm.weight", dtype, {hidden}, bytes(hidden, 3)},
                           {"norm.bias", dtype, {hidden}, bytes(hidden, 4)},
                           {"proj_out.weight", dtype, {vocab, hidden}, bytes(vocab * hidden, 5)},
                           {"proj_out.bias", dtype, {vocab}, bytes(vocab, 6)}},
                          "", meta));
  }
}

void JsonSeeds() {
  const char* texts[] = {
      "{}", "[]", "null", "true", "false", "0", "-0.5e-3", "12345678901234567890", "1E400",
      "\"a\\u00e9\\ud83d\\ude00\\n\\t\\\"\\\\\\/\"", "[1,[2,[3,[4,[5]]]]]",
      "{\"a\":1,\"b\":[true,false,null],\"c\":{\"d\":\"\xC3\xA9\"}}",
      " \t\r\n{\"x\" : [ -1 , 2.5 , \"s\" ] } ",
  };
  int i = 0;
  for (const char* t : texts) Seed("json", "seed" + std::to_string(i++) + ".json", std::string(t));
  for (bool gemma : {false, true}) {
    const std::string cfg = TinyHfConfigJson(Small(gemma, !gemma));
    Seed("json", std::string(gemma ? "gemma" : "llama") + "_config.json", cfg);
    Seed("hf_config", std::string(gemma ? "gemma" : "llama") + "_config.json", cfg);
  }
  Seed("hf_config", "rope_parameters.json",
       "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":8,\"hidden_size\":8,\"intermediate_size\":8,"
       "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"num_key_value_heads\":1,"
       "\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":500000.0},\"eos_token_id\":[2,3],"
       "\"bos_token_id\":null,\"tie_word_embeddings\":true,\"attention_bias\":false,\"mlp_bias\":false}");
  Seed("hf_config", "model_type_only.json",
       "{\"model_type\":\"gemma\",\"vocab_size\":8,\"hidden_size\":8,\"intermediate_size\":8,"
       "\"num_hidden_layers\":1,\"num_attention_heads\":1,\"head_dim\":8,\"hidden_activation\":\"gelu\"}");
}

}  // namespace

// StableHLO texts: a small program, one with an aliased cache parameter, and the nesting that
// crashed the XLA CPU plugin's parser (issue #18), above and below the checker's limit.
void ProgramSeeds() {
  Seed("program_text", "add.mlir",
       "func.func public @main(%x: tensor<4xf32>, %y: tensor<4xf32>) -> tensor<4xf32> {\n"
       "  %z = stablehlo.add %x, %y : tensor<4xf32>\n  return %z : tensor<4xf32>\n}\n");
  Seed("program_text", "aliased.mlir",
       "func.func public @main(%k: tensor<2x3xf32> {tf.aliasing_output = 0 : i32}, %t: tensor<i32>) -> "
       "(tensor<2x3xf32>, tensor<i32>) {\n  return %k, %t : tensor<2x3xf32>, tensor<i32>\n}\n");
  for (int depth : {100, 1000}) {
    std::string body = "stablehlo.return %x : tensor<f32>";
    for (int k = depth; k >= 1; --k)
      body = "%v" + std::to_string(k) + " = \"stablehlo.case\"(%i) ({\n" + body +
             "\n}) : (tensor<i32>) -> tensor<f32>\nstablehlo.return %v" + std::to_string(k) + " : tensor<f32>";
    Seed("program_text", "nested" + std::to_string(depth) + ".mlir",
         "func.func @main(%i: tensor<i32>, %x: tensor<f32>) -> tensor<f32> {\n" + body + "\n}\n");
  }
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_corpus <out-dir>\n");
    return 2;
  }
  out_dir = argv[1];
  ::mkdir(out_dir.c_str(), 0755);
  GgufSeeds();
  SafetensorsSeeds();
  TinySeeds();
  JsonSeeds();
  ProgramSeeds();
  std::printf("make_corpus: %d seed files under %s\n", written, out_dir.c_str());
  return 0;
}
