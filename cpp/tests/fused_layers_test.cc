// The fused layer stack (kernels/decoder_layers.h, MatmulMode::kFused) in the real CPU plugin:
// verify(T) rows bit-identical to decode(1) for every weight precision and both families, tree
// rows bit-identical to their chains, closeness to the plain StableHLO program (the reference),
// argument checks, and the kernel team running every task exactly once.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <thread>

#include "cascade/loading.h"
#include "kernels/decoder_layers.h"
#include "kernels/ffi_handlers.h"
#include "kernels/int8_matmul.h"
#include "model/matmul_mode.h"
#include "kernels/thread_team.h"
#include "model/decoder.h"
#include "cpu_client.h"
#include "logit_distance.h"
#include "random_model.h"

namespace cascade {
namespace {

std::shared_ptr<Client> Cpu() { return testing::CpuClient(); }

struct Case {
  WeightPrecision precision;
  ModelFamily family;
  bool tied;
  DType kv = DType::kF32;  // the KV cache's element type
};

std::string Name(const Case& c) {
  return std::string(WeightPrecisionName(c.precision)) + " " + ModelFamilyName(c.family) + (c.tied ? " tied" : " untied") +
         " kv " + DTypeName(c.kv);
}

std::vector<Case> AllCases() {
  std::vector<Case> out;
  for (WeightPrecision p : {WeightPrecision::kF32, WeightPrecision::kBF16, WeightPrecision::kInt8, WeightPrecision::kQ4}) {
    out.push_back({p, ModelFamily::kLlama, true});
    out.push_back({p, ModelFamily::kLlama, false});
    out.push_back({p, ModelFamily::kGemma, true});
  }
  // A bf16 KV cache (an option on the CPU plugin): the new keys and values are rounded before any
  // row reads them, so verify rows still equal decodes.
  for (WeightPrecision p : {WeightPrecision::kBF16, WeightPrecision::kQ4}) {
    out.push_back({p, ModelFamily::kLlama, true, DType::kBF16});
    out.push_back({p, ModelFamily::kGemma, true, DType::kBF16});
  }
  return out;
}

ModelConfig Config(const Case& k) {
  ModelConfig c = testing::SmallLlama(k.tied, 211);
  c.family = k.family;
  c.hidden_size = 128;  // several 32-blocks per row (the VNNI activation blocks)
  c.intermediate_size = 320;
  c.head_dim = 32;
  if (k.family == ModelFamily::kGemma) {
    c.num_kv_heads = 1;  // multi-query, as Gemma-2B: 4 heads per group
    c.head_dim = 64;     // the AVX-512 attention's register-resident path (kernels/decoder_layers.cc)
  }
  return c;
}

DecoderModel Model(const ModelWeights& w, WeightPrecision precision, MatmulMode matmul, int64_t max_context = 64,
                   DType kv = DType::kF32) {
  DecoderOptions o;
  o.precision = precision;
  o.max_context = max_context;
  o.kv_dtype = kv;
  o.matmul = matmul;
  return DecoderModel(Cpu(), w, o);
}

const std::vector<int32_t> kPrompt = {3, 17, 42, 99, 5, 150, 7, 8};

bool RowsEqual(const float* a, const float* b, int64_t n) { return std::memcmp(a, b, sizeof(float) * n) == 0; }

// 130 tokens: attention then spans three 64-slot chunks (kernels/decoder_layers.cc,
// kAttentionChunk), the last one partly filled.
std::vector<int32_t> LongPrompt(int64_t vocab) {
  std::vector<int32_t> p;
  for (int i = 0; i < 130; ++i) p.push_back(static_cast<int32_t>((i * 37 + 11) % vocab));
  return p;
}

// Fills the cache with `prompt` in fused calls of at most 50 tokens (longer ones take the plain program).
void Prefill(DecoderModel& m, const std::vector<int32_t>& prompt) {
  for (size_t at = 0; at < prompt.size(); at += 50) {
    const size_t end = std::min(prompt.size(), at + 50);
    m.Forward(std::vector<int32_t>(prompt.begin() + at, prompt.begin() + end), static_cast<int64_t>(at));
  }
}

TEST(fused_layers, ProgramsUseTheFusedCallAndKAutoPicksIt) {
  for (WeightPrecision p : {WeightPrecision::kF32, WeightPrecision::kBF16, WeightPrecision::kInt8, WeightPrecision::kQ4}) {
    EXPECT_EQ(ChooseMatmulMode(*Cpu(), p, MatmulMode::kAuto), MatmulMode::kFused) << WeightPrecisionName(p);
    ModelConfig c = Config({p, ModelFamily::kLlama, true});
    DecoderModel m = Model(testing::SmallRandomModel(c, 1), p, MatmulMode::kAuto, 2 * kFfiMaxTokens);
    const std::string text = m.ProgramText(4, {HeadKind::kArgmax}, false);
    EXPECT_NE(text.find(kernels::kDecoderLayersTarget), std::string::npos) << WeightPrecisionName(p);
    // Prefill chunks longer than the custom calls take keep the plain program.
    EXPECT_EQ(m.ProgramText(kFfiMaxTokens + 1, {HeadKind::kArgmax}, false).find(kernels::kDecoderLayersTarget),
              std::string::npos);
  }
}

// A decode step leaves XLA under the CPU plugin's 1,000-flop mark for a cheap program (the final
// norm inside the layer call, the embedding as cascade_embed_rows), so the plugin runs it on the
// calling thread instead of handing it to its pool and back (~0.1 ms of a 4.5 ms target step,
// docs/bench/decoder.md session 30). Every precision and both families, with the greedy head.
TEST(fused_layers, ADecodeStepRunsOnTheCallingThread) {
  for (WeightPrecision p : {WeightPrecision::kF32, WeightPrecision::kBF16, WeightPrecision::kInt8, WeightPrecision::kQ4})
    for (ModelFamily family : {ModelFamily::kLlama, ModelFamily::kGemma}) {
      const Case k{p, family, true};
      DecoderModel m = Model(testing::SmallRandomModel(Config(k), 1), p, MatmulMode::kAuto);
      m.Forward(kPrompt, 0, {HeadKind::kArgmax});
      m.Forward({5}, static_cast<int64_t>(kPrompt.size()), {HeadKind::kArgmax});
      EXPECT_EQ(kernels::GetKernelStats().layers_thread, std::this_thread::get_id()) << Name(k);
    }
}

// A fused model keeps each layer's weights in one arena buffer (model/programs.h, ModelParamLayout):
// its prefill programs longer than the fused call takes read them as slices of those, and compute
// what the plain program over separate weight buffers computes.
TEST(fused_layers, LongPrefillReadsTheLayerArena) {
  for (WeightPrecision p : {WeightPrecision::kF32, WeightPrecision::kBF16, WeightPrecision::kInt8, WeightPrecision::kQ4}) {
    ModelConfig c = Config({p, ModelFamily::kLlama, false});
    ModelWeights w = testing::SmallRandomModel(c, 3, 1.0f);
    DecoderModel fused = Model(w, p, MatmulMode::kFused, 2 * kFfiMaxTokens);
    DecoderModel plain = Model(w, p, MatmulMode::kXlaAuto, 2 * kFfiMaxTokens);
    const std::string text = fused.ProgramText(kFfiMaxTokens + 1, {HeadKind::kLogits}, false);
    EXPECT_NE(text.find("%model_layers_0: tensor<"), std::string::npos) << WeightPrecisionName(p);
    EXPECT_EQ(text.find("model_layers_0_"), std::string::npos) << WeightPrecisionName(p);
    std::vector<int32_t> prompt;
    for (int64_t i = 0; i <= kFfiMaxTokens; ++i) prompt.push_back(static_cast<int32_t>((i * 37 + 5) % c.vocab_size));
    ForwardResult a = fused.Forward(prompt, 0, {HeadKind::kLogits});
    ForwardResult b = plain.Forward(prompt, 0, {HeadKind::kLogits});
    ASSERT_EQ(a.logits.size(), b.logits.size());
    float worst = 0, span = 0;
    for (size_t i = 0; i < a.logits.size(); ++i) {
      worst = std::max(worst, std::fabs(a.logits[i] - b.logits[i]));
      span = std::max(span, std::fabs(b.logits[i]));
    }
    // int8: the arena's panels go through our kernel at any length (activations rounded to s8 per
    // 32-block, as in every fused step), the separate buffers through XLA's f32 dot past the
    // custom calls' kFfiMaxTokens.
    if (p == WeightPrecision::kInt8) EXPECT_LE(worst, 0.05f * span) << "int8";
    else EXPECT_LT(worst, 1e-3f) << WeightPrecisionName(p);
    // Then the fused decode continues from that cache like the plain model.
    ForwardResult x = fused.Forward({9}, kFfiMaxTokens + 1, {HeadKind::kArgmax});
    ForwardResult y = plain.Forward({9}, kFfiMaxTokens + 1, {HeadKind::kArgmax});
    EXPECT_EQ(x.argmax, y.argmax) << WeightPrecisionName(p);
  }
}

// The cascade's exactness rests on this: a block of T proposals verified at once gives, row by
// row, the very bits the target gives decoding them one at a time.
TEST(fused_layers, VerifyRowsBitIdenticalToDecodeEveryPrecision) {
  for (const Case& k : AllCases()) {
    ModelConfig c = Config(k);
    ModelWeights w = testing::SmallRandomModel(c, 7, 1.0f);
    DecoderModel a = Model(w, k.precision, MatmulMode::kFused, 64, k.kv), b = Model(w, k.precision, MatmulMode::kFused, 64, k.kv);
    const int64_t V = c.vocab_size, P = static_cast<int64_t>(kPrompt.size());
    a.Forward(kPrompt, 0);
    b.Forward(kPrompt, 0);
    const std::vector<int32_t> block = {11, 70, 2, 33, 190};
    ForwardResult verify = a.Forward(block, P, {HeadKind::kLogits});
    for (size_t t = 0; t < block.size(); ++t) {
      ForwardResult one = b.Forward({block[t]}, P + static_cast<int64_t>(t), {HeadKind::kLogits});
      EXPECT_TRUE(RowsEqual(verify.logits.data() + t * V, one.logits.data(), V)) << Name(k) << " row " << t;
    }
    // A rejected tail rolls back for free: re-verify from P+2 with other tokens, again against
    // single decodes (b's cache holds the same first two entries).
    ForwardResult again = a.Forward({60, 61}, P + 2, {HeadKind::kLogits});
    EXPECT_TRUE(RowsEqual(again.logits.data(), b.Forward({60}, P + 2, {HeadKind::kLogits}).logits.data(), V)) << Name(k);
    EXPECT_TRUE(RowsEqual(again.logits.data() + V, b.Forward({61}, P + 3, {HeadKind::kLogits}).logits.data(), V))
        << Name(k);
  }
}

// Past one attention chunk: verify rows still equal decodes bit for bit, and the logits stay
// close to the plain StableHLO program's (attention is the same code for every precision; both
// families, grouped and multi-query attention).
TEST(fused_layers, RowsBitIdenticalAndCloseToPlainAcrossAttentionChunks) {
  const std::vector<Case> cases = {{WeightPrecision::kF32, ModelFamily::kLlama, true},
                                   {WeightPrecision::kQ4, ModelFamily::kLlama, false},
                                   {WeightPrecision::kBF16, ModelFamily::kGemma, true},
                                   {WeightPrecision::kQ4, ModelFamily::kLlama, false, DType::kBF16},
                                   {WeightPrecision::kBF16, ModelFamily::kGemma, true, DType::kBF16}};
  for (const Case& k : cases) {
    ModelConfig c = Config(k);
    ModelWeights w = testing::SmallRandomModel(c, 8, 1.0f);
    DecoderModel a = Model(w, k.precision, MatmulMode::kFused, 160, k.kv),
                 b = Model(w, k.precision, MatmulMode::kFused, 160, k.kv),
                 plain = Model(w, k.precision, MatmulMode::kXlaAuto, 160, k.kv);
    const std::vector<int32_t> prompt = LongPrompt(c.vocab_size);
    const int64_t V = c.vocab_size, P = static_cast<int64_t>(prompt.size());
    Prefill(a, prompt);
    Prefill(b, prompt);
    Prefill(plain, prompt);
    const std::vector<int32_t> block = {11, 70, 2, 33, 190, 4};
    ForwardResult verify = a.Forward(block, P, {HeadKind::kLogits});
    ForwardResult reference = plain.Forward(block, P, {HeadKind::kLogits});
    double worst = 0, span = 0;
    for (size_t i = 0; i < verify.logits.size(); ++i) {
      worst = std::max(worst, static_cast<double>(std::fabs(verify.logits[i] - reference.logits[i])));
      span = std::max(span, static_cast<double>(std::fabs(reference.logits[i])));
    }
    EXPECT_LE(worst, (k.precision == WeightPrecision::kF32 ? 1e-4 : 0.05) * span) << Name(k);
    for (size_t t = 0; t < block.size(); ++t) {
      ForwardResult one = b.Forward({block[t]}, P + static_cast<int64_t>(t), {HeadKind::kLogits});
      EXPECT_TRUE(RowsEqual(verify.logits.data() + t * V, one.logits.data(), V)) << Name(k) << " row " << t;
    }
  }
}

// Two branches verified as one tree: each branch's rows equal its chain decoded alone.
TEST(fused_layers, TreeRowsBitIdenticalToTheirChains) {
  for (const Case& k : {Case{WeightPrecision::kF32, ModelFamily::kLlama, true},
                        Case{WeightPrecision::kInt8, ModelFamily::kLlama, true},
                        Case{WeightPrecision::kQ4, ModelFamily::kLlama, true},
                        Case{WeightPrecision::kQ4, ModelFamily::kLlama, true, DType::kBF16}}) {
    const WeightPrecision p = k.precision;
    ModelConfig c = Config(k);
    ModelWeights w = testing::SmallRandomModel(c, 9, 1.0f);
    for (const std::vector<int32_t>& prompt : {kPrompt, LongPrompt(c.vocab_size)}) {
      DecoderModel tree = Model(w, p, MatmulMode::kFused, 160, k.kv), chain = Model(w, p, MatmulMode::kFused, 160, k.kv);
      const int64_t V = c.vocab_size, P = static_cast<int64_t>(prompt.size());
      Prefill(tree, prompt);
      Prefill(chain, prompt);
      // Tokens: root 40, branch A (41, 42), branch B (43): parents root <- A1 <- A2, root <- B1.
      ForwardInputs in;
      in.tree_mask = {1, 0, 0, 0,  //
                      1, 1, 0, 0,  //
                      1, 1, 1, 0,  //
                      1, 0, 0, 1};
      in.position_offsets = {0, 1, 2, 1};
      ForwardResult t = tree.Forward({40, 41, 42, 43}, P, {HeadKind::kLogits}, in);
      ForwardResult a = chain.Forward({40, 41, 42}, P, {HeadKind::kLogits});
      for (int r = 0; r < 3; ++r) EXPECT_TRUE(RowsEqual(t.logits.data() + r * V, a.logits.data() + r * V, V)) << r;
      ForwardResult b = chain.Forward({43}, P + 1, {HeadKind::kLogits});
      EXPECT_TRUE(RowsEqual(t.logits.data() + 3 * V, b.logits.data(), V)) << WeightPrecisionName(p) << " prompt " << P;
    }
  }
}

// The plain StableHLO program is the reference: same weights, close logits, same greedy tokens.
TEST(fused_layers, MatchesThePlainProgram) {
  for (const Case& k : AllCases()) {
    ModelConfig c = Config(k);
    ModelWeights w = testing::SmallRandomModel(c, 5, 1.0f);
    DecoderModel fused = Model(w, k.precision, MatmulMode::kFused, 64, k.kv),
                 plain = Model(w, k.precision, MatmulMode::kXlaAuto, 64, k.kv);
    ASSERT_EQ(plain.ProgramText(1, {HeadKind::kLogits}, false).find("custom_call"), std::string::npos);
    const int64_t V = c.vocab_size;
    std::vector<int32_t> seq = kPrompt;
    ForwardResult a = fused.Forward(kPrompt, 0, {HeadKind::kLogits});
    ForwardResult b = plain.Forward(kPrompt, 0, {HeadKind::kLogits});
    double worst = 0, span = 0;
    int agree = 0, rows = 0;
    for (int step = 0; step < 8; ++step) {
      for (int64_t r = 0; r < a.num_tokens; ++r, ++rows) {
        const float* fa = a.logits.data() + r * V;
        const float* fb = b.logits.data() + r * V;
        for (int64_t v = 0; v < V; ++v) {
          worst = std::max(worst, static_cast<double>(std::fabs(fa[v] - fb[v])));
          span = std::max(span, static_cast<double>(std::fabs(fb[v])));
        }
        agree += (std::max_element(fa, fa + V) - fa) == (std::max_element(fb, fb + V) - fb);
      }
      const float* last = b.logits.data() + (b.num_tokens - 1) * V;
      seq.push_back(static_cast<int32_t>(std::max_element(last, last + V) - last));
      a = fused.Forward({seq.back()}, static_cast<int64_t>(seq.size()) - 1, {HeadKind::kLogits});
      b = plain.Forward({seq.back()}, static_cast<int64_t>(seq.size()) - 1, {HeadKind::kLogits});
    }
    std::printf("[ measured ] %s: fused vs plain max |dlogit| %.3g (span %.3g), top-1 agree %d/%d\n", Name(k).c_str(),
                worst, span, agree, rows);
    // f32: both are f32 arithmetic in other orders. bf16/int8: ours rounds activations to bf16 /
    // Q8 blocks for the matrices, XLA's plain path keeps them f32 at T=1.
    EXPECT_LE(worst, (k.precision == WeightPrecision::kF32 ? 1e-4 : 0.05) * span) << Name(k);
    EXPECT_GE(agree, rows - (k.precision == WeightPrecision::kF32 ? 0 : 2)) << Name(k);
  }
}

// q4 matrices are stored in panels of 16 rows (kernels/int8_matmul.h); k/v projections of 24 and
// 8 rows end in a narrower panel (24 = 16 + 8) or are one (8). The fused kernels and the plain
// program's dequantisation read those the same way: close logits, verify rows equal to decodes.
TEST(fused_layers, Q4PanelsNarrowerThan16) {
  for (int64_t head_dim : {24, 8}) {
    ModelConfig c = testing::SmallLlama(true, 211);
    c.hidden_size = 128;
    c.intermediate_size = 192;
    c.num_heads = 8;
    c.num_kv_heads = 1;
    c.head_dim = head_dim;
    ModelWeights w = testing::SmallRandomModel(c, 13, 1.0f);
    DecoderModel fused = Model(w, WeightPrecision::kQ4, MatmulMode::kFused),
                 plain = Model(w, WeightPrecision::kQ4, MatmulMode::kXlaAuto),
                 single = Model(w, WeightPrecision::kQ4, MatmulMode::kFused);
    const int64_t V = c.vocab_size, P = static_cast<int64_t>(kPrompt.size());
    ForwardResult a = fused.Forward(kPrompt, 0, {HeadKind::kLogits});
    ForwardResult b = plain.Forward(kPrompt, 0, {HeadKind::kLogits});
    single.Forward(kPrompt, 0);
    double worst = 0, span = 0;
    for (size_t i = 0; i < a.logits.size(); ++i) {
      worst = std::max(worst, static_cast<double>(std::fabs(a.logits[i] - b.logits[i])));
      span = std::max(span, static_cast<double>(std::fabs(b.logits[i])));
    }
    EXPECT_LE(worst, 0.05 * span) << "head_dim " << head_dim;
    const std::vector<int32_t> block = {11, 70, 2};
    ForwardResult verify = fused.Forward(block, P, {HeadKind::kLogits});
    for (size_t t = 0; t < block.size(); ++t) {
      ForwardResult one = single.Forward({block[t]}, P + static_cast<int64_t>(t), {HeadKind::kLogits});
      EXPECT_TRUE(RowsEqual(verify.logits.data() + t * V, one.logits.data(), V)) << "head_dim " << head_dim << " row " << t;
    }
  }
}

// bf16q4 (model/programs.h): the bf16 target with its layer matrices stored as 4-bit blocks, on a
// model whose layer weights are 4-bit block values (as a Q4_1 GGUF's); a model whose weights are
// not block values is refused. With AMX (kQ4ExactBf16, kernels/ffi_handlers.h BlockStoredBf16Kind)
// it multiplies by the blocks' exact weights: the plain program's f32 dot within rounding, close to
// the dense bf16 model but not it. Else (kQ4Bf16) every logit equals the bf16 model's bit for bit,
// fused and plain. Either way verify rows are decode(1)'s bit for bit; narrow panels (k/v of 24
// rows) included.
TEST(fused_layers, Bf16Q4ComputesWithItsBlocks) {
  const bool exact = kernels::BlockStoredBf16Kind() == kernels::WeightMatrix::Kind::kQ4ExactBf16;
  auto block_valued = [](ModelWeights& w) {
    for (auto& [name, t] : w.tensors) {
      if (t.dims.size() == 2 && (name == "lm_head.weight" || name == "model.embed_tokens.weight")) {  // Q8_0 values
        const int64_t out = t.dims[0], in = t.dims[1];
        std::vector<int8_t> q(static_cast<size_t>(out * in));
        std::vector<uint16_t> scales(static_cast<size_t>(out * in / 32));
        kernels::QuantizeQ8Rows(t.as<float>(), in, out, q.data(), scales.data());
        for (int64_t o = 0; o < out; ++o) kernels::DequantizeQ8Row(q.data(), scales.data(), in, out, o, t.as<float>() + o * in);
        continue;
      }
      if (t.dims.size() != 2 || name.rfind("model.layers.", 0) != 0) continue;
      const int64_t out = t.dims[0], in = t.dims[1];
      std::vector<uint8_t> packed(static_cast<size_t>(out * in / 2));
      std::vector<uint16_t> scales(static_cast<size_t>(out * in / kernels::kQ4Block)), mins(scales.size());
      kernels::QuantizeQ4Rows(t.as<float>(), in, out, packed.data(), scales.data(), mins.data());
      for (int64_t o = 0; o < out; ++o)
        kernels::DequantizeQ4Row(packed.data(), scales.data(), mins.data(), in, out, o, t.as<float>() + o * in);
    }
  };
  {  // a layer matrix whose input size is no multiple of 64: not applicable, no error
    ModelConfig odd = testing::SmallLlama(true, 211);
    odd.intermediate_size = 96;
    EXPECT_FALSE(Bf16FromBlocksApplies(*Cpu(), testing::SmallRandomModel(odd, 3, 1.0f)));
  }
  for (int64_t head_dim : {32, 24}) {
    for (const Case& k : {Case{WeightPrecision::kBF16Q4, ModelFamily::kLlama, true},
                          Case{WeightPrecision::kBF16Q4, ModelFamily::kLlama, false},
                          Case{WeightPrecision::kBF16Q4, ModelFamily::kGemma, true}}) {
      ModelConfig c = Config(k);
      if (k.family == ModelFamily::kLlama && head_dim == 24) {  // k/v of 24 rows: a panel of 16, then one of 8
        c.head_dim = 24;
        c.num_heads = 8;
        c.num_kv_heads = 1;
      }
      ModelWeights w = testing::SmallRandomModel(c, 17, 1.0f);
      if (head_dim == 32) {  // random weights are not block values: refused, naming the tensor
        try {
          Model(w, WeightPrecision::kBF16Q4, MatmulMode::kFused);
          ADD_FAILURE() << "bf16q4 accepted weights its blocks cannot hold";
        } catch (const InvalidArgumentError& e) {
          EXPECT_NE(std::string(e.what()).find("model.layers.0."), std::string::npos) << e.what();
        }
      }
      EXPECT_FALSE(Bf16FromBlocksApplies(*Cpu(), w));  // the load keeps such weights dense
      block_valued(w);
      EXPECT_TRUE(Bf16FromBlocksApplies(*Cpu(), w));
      const std::string name = Name(k) + " head_dim " + std::to_string(c.head_dim);
      DecoderModel bf16 = Model(w, WeightPrecision::kBF16, MatmulMode::kFused),
                   q4 = Model(w, WeightPrecision::kBF16Q4, MatmulMode::kFused),
                   q4_plain = Model(w, WeightPrecision::kBF16Q4, MatmulMode::kXlaAuto),
                   bf16_plain = Model(w, WeightPrecision::kBF16, MatmulMode::kXlaAuto);
      const int64_t V = c.vocab_size, P = static_cast<int64_t>(kPrompt.size());
      ForwardResult a = bf16.Forward(kPrompt, 0, {HeadKind::kLogits});
      ForwardResult b = q4.Forward(kPrompt, 0, {HeadKind::kLogits});
      ForwardResult pa = bf16_plain.Forward(kPrompt, 0, {HeadKind::kLogits});
      ForwardResult pb = q4_plain.Forward(kPrompt, 0, {HeadKind::kLogits});
      if (!exact) {
        EXPECT_TRUE(RowsEqual(a.logits.data(), b.logits.data(), static_cast<int64_t>(a.logits.size()))) << name;
        EXPECT_TRUE(RowsEqual(pa.logits.data(), pb.logits.data(), static_cast<int64_t>(pa.logits.size()))) << name;
      } else {
        // The plain program multiplies the blocks' f32 weights (model/programs.cc DequantizeQ4) by
        // the bf16-rounded activations: the kernel's products, rounded and summed in another order.
        // The dense bf16 model rounds each weight too: further off, though still the same model.
        const float worst = testing::MaxAbsDifference(b.logits, pb.logits),
                    dense = testing::MaxAbsDifference(b.logits, a.logits), span = testing::MaxAbs(pb.logits);
        // These random models amplify a layer's last-bit differences to ~1e-3 of the logits' span
        // (measured 2.4e-4..1.1e-3); a wrong weight order (DequantizeQ4) changes them wholesale.
        EXPECT_LE(worst, 3e-3f * span) << name;
        EXPECT_GT(dense, 0.0f) << name << ": the bf16-rounded weights give the same logits";
        EXPECT_LE(dense, 0.05f * span) << name;
      }
      // verify(T) rows are decode(1)'s bit for bit: the dense model's too where the blocks hold it.
      DecoderModel& single = exact ? q4 : bf16;
      const std::vector<int32_t> block = {11, 70, 2, 33, 190};
      ForwardResult verify = q4.Forward(block, P, {HeadKind::kLogits});
      for (size_t t = 0; t < block.size(); ++t) {
        ForwardResult one = single.Forward({block[t]}, P + static_cast<int64_t>(t), {HeadKind::kLogits});
        EXPECT_TRUE(RowsEqual(verify.logits.data() + t * V, one.logits.data(), V)) << name << " row " << t;
      }
    }
  }
}

TEST(fused_layers, RejectsWhatItCannotCompute) {
  kernels::DecoderLayersConfig c;
  c.layers = 1;
  c.hidden = 8;
  c.heads = 3;
  c.kv_heads = 2;
  c.head_dim = 4;
  c.intermediate = 16;
  kernels::DecoderLayersCall call;
  call.num_tokens = 1;
  call.max_context = 4;
  std::vector<kernels::DecoderLayerWeights> none(1);
  EXPECT_NE(kernels::ValidateDecoderLayers(c, none, call).find("multiple of kv_heads"), std::string::npos);
  c.kv_heads = 1;
  call.start_pos = 4;
  EXPECT_NE(kernels::ValidateDecoderLayers(c, none, call).find("exceeds the cache"), std::string::npos);
  call.start_pos = 0;
  EXPECT_NE(kernels::ValidateDecoderLayers(c, none, call).find("missing"), std::string::npos);
  EXPECT_THROW(kernels::RunDecoderLayers(c, none, call, {}, kernels::ThreadTeam::Global()), std::invalid_argument);
}

TEST(thread_team, EveryTaskRunsOnceWithConcurrentCallers) {
  kernels::ThreadTeam team(3);
  std::atomic<int64_t> bad{0};
  auto caller = [&](uint32_t seed) {
    for (int job = 0; job < 2000; ++job) {
      const int64_t n = 1 + (seed * 2654435761u + job * 40503u) % 97;
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      team.Run(n, [&](int64_t i) { hits[i].fetch_add(1); });
      for (auto& h : hits) bad += h.load() != 1;
    }
  };
  std::thread other(caller, 2);
  caller(1);
  other.join();
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
}  // namespace cascade
