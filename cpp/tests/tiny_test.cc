// The tiny model (stage 0) and the fused cascade draft head (HeadKind::kCandidates) against the
// real XLA CPU plugin: the program's candidates equal a C++ reference of the tiny, the
// candidate logits equal the full head's logits at those ids, the greedy proposal is the argmax
// restricted to the candidates; the tiny's safetensors format round-trips and bad files give
// typed errors; the closed-form fit covers the draft's choice far above chance on a random model.
// (Suite names start with "tiny" so `ctest -R tiny` selects them.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "model/decoder.h"
#include "model/safetensors.h"
#include "model/tiny.h"
#include "model_files.h"
#include "pjrt/api.h"
#include "pjrt/errors.h"
#include "pjrt/plugin_locator.h"
#include "random_model.h"
#include "cpu_client.h"

namespace cascade {
namespace {

namespace tf = testing_files;

std::shared_ptr<Client> Cpu() { return testing::CpuClient(); }

ModelConfig SmallGemma() {
  ModelConfig c = testing::SmallLlama(true);
  c.family = ModelFamily::kGemma;
  c.num_kv_heads = 1;
  c.head_dim = 24;
  c.rms_norm_eps = 1e-6;
  return c;
}

// The tiny's top-k from the host reference must match the program's candidates: the same set,
// except that ids whose reference logits tie with the boundary within `tie` may swap.
void ExpectSameCandidates(const std::vector<float>& ref_logits, const int32_t* got, int64_t k, float tie,
                          const std::string& where) {
  const int64_t V = static_cast<int64_t>(ref_logits.size());
  auto want = TopKIds(ref_logits.data(), V, k);
  const float boundary = ref_logits[want.back()];
  std::set<int32_t> seen;
  for (int64_t j = 0; j < k; ++j) {
    ASSERT_GE(got[j], 0) << where;
    ASSERT_LT(got[j], V) << where;
    EXPECT_TRUE(seen.insert(got[j]).second) << where << ": duplicate candidate " << got[j];
    EXPECT_GE(ref_logits[got[j]], boundary - tie) << where << ": candidate " << j << " = " << got[j]
                                                   << " is not among the reference top-" << k;
    if (j > 0) EXPECT_GE(ref_logits[got[j - 1]], ref_logits[got[j]] - tie) << where << ": not in descending order";
  }
}

struct HeadCase {
  ModelConfig config;
  WeightPrecision precision;
  float tolerance;  // candidate logits vs the full head's logits
  const char* name;
};

// Prefill T=7, then three decode steps, on two models of the same weights: one with the full
// logits head (the reference the decoder tests check against a C++ forward), one with the fused
// candidates head (+ full argmax).
// With TinyInput::kDraftHidden the tiny runs in the program on the final hidden state (the
// kHidden head of a third model gives the reference rows), with W2 in int8: the reference uses
// the rounded W2, and the kernel's activation rounding leaves `tie` of slack.
// A tiny 64 (or any multiple of 64) wide keeps W2 in q4 blocks instead (programs.h, TinyW2InQ4).
void CheckCandidatesHead(const HeadCase& hc, int64_t K0, TinyInput input = TinyInput::kInputEmbedding,
                         MatmulMode matmul = MatmulMode::kAuto, int64_t tiny_hidden = 48) {
  SCOPED_TRACE(std::string(hc.name) + " K0=" + std::to_string(K0) + " input " + TinyInputName(input) + " tiny width " +
               std::to_string(tiny_hidden));
  ModelWeights w = testing::SmallRandomModel(hc.config, 7, 1.0f);
  DecoderOptions o;
  o.precision = hc.precision;
  o.matmul = matmul;
  o.max_context = 32;
  DecoderModel full(Cpu(), w, o), cascade(Cpu(), w, o), hidden(Cpu(), w, o);
  TinyWeights tiny = RandomTiny(hc.config.hidden_size, tiny_hidden, hc.config.vocab_size, 3, 1.0f, input);
  const bool on_hidden = input == TinyInput::kDraftHidden;
  if (on_hidden) tiny.w2 = RoundedTinyW2(tiny);
  const float tie = on_hidden ? 0.05f : 1e-4f;
  cascade.SetTiny(tiny);
  const HostTensor E = TinyInputEmbeddings(w, hc.precision);
  const int64_t V = hc.config.vocab_size, d = hc.config.hidden_size;

  const std::vector<std::vector<int32_t>> calls = {{5, 17, 42, 3, 96, 0, 61}, {11}, {70}, {2}};
  int64_t pos = 0;
  float worst = 0;
  for (const auto& tokens : calls) {
    const int64_t T = static_cast<int64_t>(tokens.size());
    ForwardResult f = full.Forward(tokens, pos, {HeadKind::kLogits, 0});
    ForwardResult c = cascade.Forward(tokens, pos, {HeadKind::kCandidates, K0, /*full_argmax=*/true});
    ForwardResult h = hidden.Forward(tokens, pos, {HeadKind::kHidden, 0});
    ASSERT_EQ(h.hidden.size(), static_cast<size_t>(T * d));
    EXPECT_EQ(h.logits, f.logits) << "the hidden head's logits are the logits head's";
    ASSERT_EQ(c.candidate_ids.size(), static_cast<size_t>(T * K0));
    ASSERT_EQ(c.candidate_logits.size(), static_cast<size_t>(T * K0));
    ASSERT_EQ(c.argmax.size(), static_cast<size_t>(T));
    ASSERT_EQ(c.full_argmax.size(), static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      const std::string where = "pos " + std::to_string(pos + t);
      const float* logits = f.logits.data() + t * V;
      const int32_t* ids = c.candidate_ids.data() + t * K0;
      const float* cl = c.candidate_logits.data() + t * K0;
      const float* x = on_hidden ? h.hidden.data() + t * d : E.as<float>() + tokens[t] * d;
      ExpectSameCandidates(TinyLogits(tiny, x), ids, K0, tie, where);
      int64_t best = 0;
      for (int64_t j = 0; j < K0; ++j) {
        worst = std::max(worst, std::fabs(cl[j] - logits[ids[j]]));
        if (logits[ids[j]] > logits[ids[best]]) best = j;
      }
      // The greedy proposal: the argmax of the full head restricted to the candidates (ties
      // within rounding aside).
      EXPECT_NEAR(logits[c.argmax[t]], logits[ids[best]], hc.tolerance) << where;
      EXPECT_TRUE(std::find(ids, ids + K0, c.argmax[t]) != ids + K0) << where;
      const int32_t full_argmax = static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
      EXPECT_NEAR(logits[c.full_argmax[t]], logits[full_argmax], hc.tolerance) << where;
    }
    pos += T;
  }
  EXPECT_LE(worst, hc.tolerance);
  std::printf("  %s K0=%lld: candidate logits vs full head max |diff| %.2g\n", hc.name, static_cast<long long>(K0),
              worst);
}

TEST(tiny_program, CandidatesHeadMatchesReferenceF32) {
  CheckCandidatesHead({testing::SmallLlama(true), WeightPrecision::kF32, 1e-4f, "llama tied f32"}, 16);
  CheckCandidatesHead({testing::SmallLlama(false), WeightPrecision::kF32, 1e-4f, "llama untied f32"}, 8);
  CheckCandidatesHead({SmallGemma(), WeightPrecision::kF32, 1e-4f, "gemma f32"}, 16);
}

TEST(tiny_program, CandidatesHeadOnTheDraftsHiddenState) {
  CheckCandidatesHead({testing::SmallLlama(true), WeightPrecision::kF32, 1e-4f, "llama tied f32"}, 16,
                      TinyInput::kDraftHidden);
  CheckCandidatesHead({SmallGemma(), WeightPrecision::kF32, 1e-4f, "gemma f32"}, 8, TinyInput::kDraftHidden);
  CheckCandidatesHead({testing::SmallLlama(false), WeightPrecision::kInt8, 2e-3f, "llama untied int8"}, 16,
                      TinyInput::kDraftHidden);
  CheckCandidatesHead({testing::SmallLlama(true), WeightPrecision::kBF16, 2e-3f, "llama tied bf16"}, 1,
                      TinyInput::kDraftHidden);
  // Without our kernels (other plugins): the tiny as XLA ops and XLA's top-k.
  CheckCandidatesHead({testing::SmallLlama(false), WeightPrecision::kInt8, 2e-3f, "llama untied int8, XLA only"}, 16,
                      TinyInput::kDraftHidden, MatmulMode::kXlaAuto);
  // W2 in q4 blocks: our kernel, and the plain program's dequantisation of the same blocks.
  CheckCandidatesHead({testing::SmallLlama(true), WeightPrecision::kF32, 1e-4f, "llama tied f32, q4 W2"}, 16,
                      TinyInput::kDraftHidden, MatmulMode::kAuto, 64);
  CheckCandidatesHead({testing::SmallLlama(false), WeightPrecision::kQ4, 2e-3f, "llama untied q4, q4 W2"}, 16,
                      TinyInput::kDraftHidden, MatmulMode::kAuto, 128);
  CheckCandidatesHead({testing::SmallLlama(false), WeightPrecision::kInt8, 2e-3f, "llama untied int8, q4 W2, XLA only"},
                      16, TinyInput::kDraftHidden, MatmulMode::kXlaAuto, 64);
}

TEST(tiny_program, CandidatesHeadEdgeSizes) {
  CheckCandidatesHead({testing::SmallLlama(true), WeightPrecision::kF32, 1e-4f, "llama K0=1"}, 1);
  CheckCandidatesHead({testing::SmallLlama(true), WeightPrecision::kF32, 1e-4f, "llama K0=vocab"}, 97);
}

TEST(tiny_program, CandidatesHeadMatchesFullHeadLowPrecision) {
  // Same dequantised weights and matmul mode on both sides; only the summation order differs.
  CheckCandidatesHead({testing::SmallLlama(false), WeightPrecision::kInt8, 2e-3f, "llama untied int8"}, 16);
  CheckCandidatesHead({testing::SmallLlama(true), WeightPrecision::kBF16, 2e-3f, "llama tied bf16"}, 16);
}

TEST(tiny_program, ProgramLayoutAndMisuse) {
  ModelConfig c = testing::SmallLlama(true);
  ProgramSpec s;
  s.num_tokens = 2;
  s.max_context = 8;
  s.head = {HeadKind::kCandidates, 5, true};
  auto outs = HeadOutputs(c, s);
  ASSERT_EQ(outs.size(), 4u);
  EXPECT_EQ(outs[0].name, "candidate_ids");
  EXPECT_EQ(outs[0].dims, (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(outs[1].dtype, DType::kF32);
  EXPECT_EQ(outs[3].name, "full_argmax");
  auto layout = TinyParamLayout(c, 12);
  ASSERT_EQ(layout.size(), 6u);
  EXPECT_EQ(layout[0].dims, (std::vector<int64_t>{64, 12}));
  EXPECT_EQ(layout[4].dims, (std::vector<int64_t>{12, 97}));
  // The draft step gathers candidates from the table; the tiny itself runs in the table program.
  const std::string text = EmitDecoderProgram(c, s);
  EXPECT_NE(text.find("tensor<97x5xi32>"), std::string::npos) << "candidate_table param";
  EXPECT_EQ(text.find("chlo.top_k"), std::string::npos) << "no per-step top-k over the vocabulary";
  const std::string table = EmitTinyTableProgram(c, WeightPrecision::kF32, 12, 16, 5);
  EXPECT_NE(table.find("tensor<12x97xf32>"), std::string::npos) << "W2^T param";
  EXPECT_NE(table.find("chlo.top_k"), std::string::npos);
  EXPECT_THROW(EmitTinyTableProgram(c, WeightPrecision::kF32, 0, 16, 5), InvalidArgumentError);
  EXPECT_THROW(EmitTinyTableProgram(c, WeightPrecision::kF32, 12, 0, 5), InvalidArgumentError);
  EXPECT_THROW(EmitTinyTableProgram(c, WeightPrecision::kF32, 12, 16, 98), InvalidArgumentError);
  s.head.k = 98;
  EXPECT_THROW(EmitDecoderProgram(c, s), InvalidArgumentError);
  s.head = {HeadKind::kArgmax, 0, true};
  EXPECT_THROW(EmitDecoderProgram(c, s), InvalidArgumentError);

  ModelWeights w = testing::SmallRandomModel(c, 1);
  DecoderOptions o;
  o.max_context = 8;
  DecoderModel m(Cpu(), w, o);
  EXPECT_THROW(m.Forward({1}, 0, {HeadKind::kCandidates, 4}), InvalidArgumentError) << "no tiny yet";
  EXPECT_THROW(m.SetTiny(RandomTiny(64, 8, 96, 1)), InvalidArgumentError) << "vocab differs";
  EXPECT_THROW(m.SetTiny(RandomTiny(32, 8, 97, 1)), InvalidArgumentError) << "input_dim differs";
  m.SetTiny(RandomTiny(64, 8, 97, 1));
  EXPECT_EQ(m.tiny_bytes(), RandomTiny(64, 8, 97, 1).byte_size());
  EXPECT_THROW(m.Forward({1}, 0, {HeadKind::kCandidates, 0}), InvalidArgumentError);
  EXPECT_THROW(m.Forward({1}, 0, {HeadKind::kArgmax, 0, true}), InvalidArgumentError);
  auto a = m.Forward({1}, 0, {HeadKind::kCandidates, 4});
  EXPECT_TRUE(a.full_argmax.empty());
  // A tiny of another width replaces the first; its programs are recompiled.
  TinyWeights wider = RandomTiny(64, 16, 97, 2);
  m.SetTiny(wider);
  auto b = m.Forward({1}, 0, {HeadKind::kCandidates, 4});
  ExpectSameCandidates(TinyLogits(wider, TinyInputEmbeddings(w, WeightPrecision::kF32).as<float>() + 64), b.candidate_ids.data(),
                       4, 1e-4f, "after SetTiny");
}

// ------------------------------------------------------------------------------------ files

TEST(tiny_file, RoundTripIsIdentical) {
  tf::TempDir dir;
  TinyWeights t = RandomTiny(64, 24, 97, 5);
  t.metadata["draft"] = "some \"draft\" \\ file.gguf (first 3 layers)";
  t.metadata["fit"] = "closed_form_ridge";
  SaveTiny(t, dir.File("tiny.safetensors"));
  ModelConfig c = testing::SmallLlama(true);
  TinyWeights u = LoadTiny(dir.File("tiny.safetensors"), &c);
  EXPECT_EQ(u.input_dim, 64);
  EXPECT_EQ(u.hidden, 24);
  EXPECT_EQ(u.vocab, 97);
  EXPECT_EQ(u.metadata, t.metadata);
  for (auto m : {&TinyWeights::w1, &TinyWeights::b1, &TinyWeights::ln_w, &TinyWeights::ln_b, &TinyWeights::w2,
                 &TinyWeights::b2}) {
    EXPECT_EQ((u.*m).dims, (t.*m).dims);
    EXPECT_EQ((u.*m).data, (t.*m).data);
  }
  // The file is plain safetensors with the documented metadata.
  SafetensorsFile f(dir.File("tiny.safetensors"));
  EXPECT_EQ(f.metadata().at("format"), "cascade-xla-tiny");
  EXPECT_EQ(f.metadata().at("version"), "1");
  EXPECT_EQ(f.metadata().at("hidden"), "24");
  EXPECT_EQ(f.FindTensor("proj_out.weight")->shape, (std::vector<int64_t>{97, 24}));
}

std::string Meta(int64_t in, int64_t hidden, int64_t vocab, const std::string& format = "cascade-xla-tiny") {
  return "{\"format\":\"" + format + "\",\"version\":\"1\",\"input_dim\":\"" + std::to_string(in) +
         "\",\"hidden\":\"" + std::to_string(hidden) + "\",\"vocab\":\"" + std::to_string(vocab) + "\"}";
}

std::vector<tf::SafetensorsSpec> Specs(int64_t in, int64_t hidden, int64_t vocab) {
  auto f32 = [](std::vector<int64_t> shape) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return tf::SafetensorsSpec{"", "F32", shape, tf::F32Bytes(std::vector<float>(n, 0.5f))};
  };
  std::vector<tf::SafetensorsSpec> s = {f32({hidden, in}), f32({hidden}), f32({hidden}),
                                        f32({hidden}),     f32({vocab, hidden}), f32({vocab})};
  const char* names[] = {"proj_in.weight", "proj_in.bias", "norm.weight", "norm.bias", "proj_out.weight", "proj_out.bias"};
  for (int i = 0; i < 6; ++i) s[i].name = names[i];
  return s;
}

// The error is a ModelFormatError whose message names the file and `needle`.
void ExpectFormatError(const std::string& path, const std::string& needle, const ModelConfig* draft = nullptr) {
  try {
    LoadTiny(path, draft);
    ADD_FAILURE() << "loaded " << path << " (expected an error naming " << needle << ")";
  } catch (const ModelFormatError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kModelFormat);
  }
}

TEST(tiny_file, BadFilesGiveTypedErrors) {
  tf::TempDir dir;
  auto write = [&](const std::string& name, const std::vector<tf::SafetensorsSpec>& specs, const std::string& meta) {
    tf::WriteFile(dir.File(name), tf::BuildSafetensors(specs, "", meta));
    return dir.File(name);
  };
  ASSERT_NO_THROW(LoadTiny(write("good.safetensors", Specs(64, 8, 97), Meta(64, 8, 97))));

  auto wrong_shape = Specs(64, 8, 97);
  wrong_shape[4].shape = {96, 8};
  wrong_shape[4].data.resize(96 * 8 * 4);
  ExpectFormatError(write("shape.safetensors", wrong_shape, Meta(64, 8, 97)), "proj_out.weight");

  auto missing = Specs(64, 8, 97);
  missing.erase(missing.begin() + 2);
  ExpectFormatError(write("missing.safetensors", missing, Meta(64, 8, 97)), "norm.weight");

  auto bad_dtype = Specs(64, 8, 97);
  bad_dtype[1].dtype = "I32";
  ExpectFormatError(write("dtype.safetensors", bad_dtype, Meta(64, 8, 97)), "proj_in.bias");

  auto extra = Specs(64, 8, 97);
  extra.push_back({"lm_head.weight", "F32", {1}, tf::F32Bytes({1.f})});
  ExpectFormatError(write("extra.safetensors", extra, Meta(64, 8, 97)), "lm_head.weight");

  ExpectFormatError(write("nometa.safetensors", Specs(64, 8, 97), ""), "format");
  ExpectFormatError(write("format.safetensors", Specs(64, 8, 97), Meta(64, 8, 97, "other")), "format");
  ExpectFormatError(write("meta.safetensors", Specs(64, 8, 97), Meta(64, 9, 97)), "proj_in.weight");

  // A consistent file for another draft: wrong vocab / width against the draft's config.
  const std::string other = write("vocab.safetensors", Specs(64, 8, 120), Meta(64, 8, 120));
  ModelConfig c = testing::SmallLlama(true);
  ASSERT_NO_THROW(LoadTiny(other));
  ExpectFormatError(other, "vocab", &c);
  ExpectFormatError(write("width.safetensors", Specs(32, 8, 97), Meta(32, 8, 97)), "input_dim", &c);
  ExpectFormatError(dir.File("absent.safetensors"), "absent.safetensors");

  // F16 tensors are accepted and converted.
  auto half = Specs(64, 8, 97);
  half[5] = {"proj_out.bias", "F16", {97}, tf::F16Bytes(std::vector<float>(97, 0.25f))};
  TinyWeights h = LoadTiny(write("f16.safetensors", half, Meta(64, 8, 97)));
  EXPECT_EQ(h.b2.dtype, DType::kF32);
  EXPECT_EQ(h.b2.as<float>()[96], 0.25f);
}

// ------------------------------------------------------------------------------------ fit

// The fits' draft: a peaked random model (its next token depends mostly, not only, on the last
// token), vocabulary 97, a 64-slot cache.
struct FitDraft {
  ModelConfig config = testing::SmallLlama(true, 97);
  ModelWeights weights = testing::SmallRandomModel(config, 41, 1.0f);
  DecoderModel model{Cpu(), weights, [] {
                       DecoderOptions o;
                       o.max_context = 64;
                       return o;
                     }()};
};

TEST(tiny_fit, ClosedFormCoversTheDraftsChoice) {
  FitDraft f;
  const ModelWeights& w = f.weights;
  DecoderModel& draft = f.model;
  TinyFitOptions fo;
  fo.input = TinyInput::kInputEmbedding;
  fo.projection = TinyFitOptions::Projection::kPca;
  fo.hidden = 48;
  fo.positions = 1200;
  fo.sequence_length = 8;  // many random seed tokens: every input token gets seen
  fo.eval_k = {1, 8, 24, 48};
  TinyFitReport rep;
  TinyWeights tiny = FitTiny(draft, w, fo, &rep);
  ValidateTiny(tiny);
  EXPECT_EQ(rep.train_positions, 960);
  EXPECT_EQ(rep.heldout_positions, 240);
  ASSERT_EQ(rep.gamma0.size(), 4u);
  for (size_t i = 0; i < rep.gamma0.size(); ++i)
    std::printf("  K0=%lld: gamma0 held-out %.3f (train %.3f, chance %.3f)\n",
                static_cast<long long>(rep.gamma0[i].first), rep.gamma0[i].second, rep.train_gamma0[i].second,
                rep.gamma0[i].first / 97.0);
  std::printf("  fit: %lld distinct inputs, generate %.0f ms, projection %.0f ms, accumulate %.0f ms, solve %.0f ms\n",
              static_cast<long long>(rep.distinct_train_tokens), rep.generate_ms, rep.projection_ms,
              rep.accumulate_ms, rep.solve_ms);
  // Measured (seed 41): held-out K0=1 0.67, K0=8..48 0.93 (train 0.98-1.0); chance is K0/97.
  // The held-out misses are at input tokens the training text never had.
  EXPECT_GT(rep.gamma0[1].second, 3 * 8 / 97.0);
  EXPECT_GT(rep.gamma0[3].second, 0.75) << "K0 = vocab/2";
  for (size_t i = 1; i < rep.gamma0.size(); ++i) EXPECT_GE(rep.gamma0[i].second, rep.gamma0[i - 1].second);

  // The fused head measures the same coverage as the host reference on the same steps.
  draft.SetTiny(tiny);
  const HostTensor E = TinyInputEmbeddings(w, WeightPrecision::kF32);
  std::vector<int32_t> inputs, draft_argmax;
  int64_t hits = 0;
  int32_t token = 3;
  for (int64_t pos = 0; pos < 40; ++pos) {
    auto r = draft.Forward({token}, pos, {HeadKind::kCandidates, 24, true});
    inputs.push_back(token);
    draft_argmax.push_back(r.full_argmax[0]);
    hits += std::find(r.candidate_ids.begin(), r.candidate_ids.end(), r.full_argmax[0]) != r.candidate_ids.end();
    token = r.argmax[0];  // greedy cascade draft: the best candidate
  }
  EXPECT_NEAR(hits / 40.0, TinyCoverage(tiny, E, inputs, draft_argmax, 24), 1.0 / 40 + 1e-9);
}

// The default fit: the tiny on the draft's final hidden state, in closed form from the head
// (kHeadSvd). Wider than the draft (80 > 64 + 1), it stands in for the whole head, so it ranks
// the draft's own argmax first up to the int8 rounding of W2 and of the activations.
TEST(tiny_fit, HeadSvdOnTheHiddenStateCoversTheDraftsChoice) {
  FitDraft f;
  const ModelConfig& c = f.config;
  const ModelWeights& w = f.weights;
  DecoderModel& draft = f.model;
  TinyFitOptions fo;
  fo.hidden = 80;
  fo.positions = 300;
  fo.sequence_length = 32;
  fo.eval_k = {1, 4, 8};
  TinyFitReport rep;
  TinyWeights tiny = FitTiny(draft, w, fo, &rep);
  EXPECT_EQ(tiny.input, TinyInput::kDraftHidden);
  EXPECT_EQ(tiny.metadata.at("fit_projection"), "head_svd");
  ValidateTiny(tiny);
  ASSERT_EQ(rep.gamma0.size(), 3u);
  for (const auto& [k, g] : rep.gamma0) std::printf("  K0=%lld: gamma0 held-out %.3f\n", static_cast<long long>(k), g);
  EXPECT_GE(rep.gamma0[0].second, 0.9) << "K0 = 1";
  EXPECT_GE(rep.gamma0[2].second, 0.99) << "K0 = 8";

  // Saved and loaded, it keeps its input kind; in the fused head it covers the draft's argmax.
  tf::TempDir dir;
  SaveTiny(tiny, dir.File("hidden.safetensors"));
  TinyWeights loaded = LoadTiny(dir.File("hidden.safetensors"), &c, true);
  EXPECT_EQ(loaded.input, TinyInput::kDraftHidden);
  draft.SetTiny(loaded);
  int64_t hits = 0;
  int32_t token = 3;
  for (int64_t pos = 0; pos < 40; ++pos) {
    auto r = draft.Forward({token}, pos, {HeadKind::kCandidates, 4, true});
    hits += std::find(r.candidate_ids.begin(), r.candidate_ids.end(), r.full_argmax[0]) != r.candidate_ids.end();
    token = r.argmax[0];
  }
  EXPECT_GE(hits, 39) << "of 40 greedy steps";

  fo.hidden = 1;
  EXPECT_THROW(FitTiny(draft, w, fo), InvalidArgumentError);
  fo.hidden = 8;
  fo.input = TinyInput::kInputEmbedding;  // head-SVD needs the hidden state
  EXPECT_THROW(FitTiny(draft, w, fo), InvalidArgumentError);
}

TEST(tiny_fit, DistillationAfterTheClosedFormReportsBoth) {
  FitDraft f;
  TinyFitOptions fo;
  fo.hidden = 12;  // below the draft's width: the closed form is a rank-11 stand-in, with room to learn
  fo.positions = 300;
  fo.sequence_length = 32;
  fo.eval_k = {1, 4, 8};
  fo.train.steps = 60;
  fo.train.batch = 32;
  fo.train.learning_rate = 1e-3;
  fo.train.validation_k = 1;  // K0 = 1 leaves the closed form room to be beaten here
  std::vector<std::string> phases;
  fo.progress = [&](const char* phase, int64_t done, int64_t total) {
    if (phases.empty() || phases.back() != phase) phases.push_back(phase);
    EXPECT_LE(done, total);
    return true;
  };
  TinyFitReport rep;
  TinyWeights tiny = FitTiny(f.model, f.weights, fo, &rep);
  ValidateTiny(tiny);
  EXPECT_EQ(phases, (std::vector<std::string>{"generate", "train"}));
  EXPECT_EQ(tiny.metadata.at("kd_steps"), "60");
  // Validation on the last 10% of the training steps, before the first step and once per epoch.
  ASSERT_GE(rep.train.validation.size(), 2u);
  EXPECT_EQ(rep.train.validation.front().first, 0);
  EXPECT_EQ(rep.train.validation.back().first, 60);
  EXPECT_EQ(tiny.metadata.at("kd_best_step"), std::to_string(rep.train.best_step));
  EXPECT_EQ(tiny.metadata.at("fit"), rep.train.best_step > 0 ? "closed_form_ridge+kd_adam" : "closed_form_ridge");
  EXPECT_EQ(rep.train.steps, 60);
  EXPECT_EQ(rep.train.batch, 32);
  ASSERT_EQ(rep.closed_form_gamma0.size(), 3u);
  ASSERT_EQ(rep.gamma0.size(), 3u);
  for (size_t i = 0; i < 3; ++i)
    std::printf("  K0=%lld: gamma0 held-out %.3f (closed form %.3f)\n", static_cast<long long>(rep.gamma0[i].first),
                rep.gamma0[i].second, rep.closed_form_gamma0[i].second);
  EXPECT_LT(rep.train.last_loss, rep.train.first_loss) << "the KL fell";
  EXPECT_GT(rep.train.compile_ms + rep.train.train_ms, 0);
  // W2 is held as the program holds it (int8 rows).
  EXPECT_EQ(tiny.w2.data, RoundedTinyW2(tiny).data);
  // Cancelling during training throws kAborted.
  fo.progress = [](const char* phase, int64_t done, int64_t) { return !(std::string(phase) == "train" && done == 3); };
  try {
    FitTiny(f.model, f.weights, fo);
    ADD_FAILURE() << "not cancelled";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kAborted);
  }
  fo.progress = nullptr;
  fo.input = TinyInput::kInputEmbedding;  // distillation needs the hidden state's rows
  fo.projection = TinyFitOptions::Projection::kPca;
  EXPECT_THROW(FitTiny(f.model, f.weights, fo), InvalidArgumentError);
}

TEST(tiny_fit, RejectsBadOptions) {
  ModelConfig c = testing::SmallLlama(true);
  ModelWeights w = testing::SmallRandomModel(c, 1);
  DecoderOptions o;
  o.max_context = 16;
  DecoderModel draft(Cpu(), w, o);
  TinyFitOptions fo;
  fo.positions = 1;
  EXPECT_THROW(FitTiny(draft, w, fo), InvalidArgumentError);
  fo = {};
  fo.ridge = 0;
  EXPECT_THROW(FitTiny(draft, w, fo), InvalidArgumentError);
  fo = {};
  fo.holdout = 1;
  EXPECT_THROW(FitTiny(draft, w, fo), InvalidArgumentError);
  ModelWeights other = testing::SmallRandomModel(testing::SmallLlama(true, 50), 1);
  EXPECT_THROW(FitTiny(draft, other, {}), InvalidArgumentError);
}

}  // namespace
}  // namespace cascade
