// The generation loop on random models through the real XLA CPU plugin: speculative decoding is
// token-for-token identical to target-only greedy decoding, and follows the target's
// distribution when sampling (with a negative control that must fail).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "cascade/chi_square.h"
#include "cascade/engine.h"
#include "model/matmul_mode.h"
#include "model/tiny.h"
#include "pjrt/api.h"
#include "pjrt/plugin_locator.h"
#include "random_model.h"
#include "cpu_client.h"

namespace cascade {
namespace {

std::shared_ptr<Client> Cpu() { return testing::CpuClient(); }

EngineOptions Options(WeightPrecision target = WeightPrecision::kF32, int64_t max_context = 128,
                      WeightPrecision draft = WeightPrecision::kInt8) {
  EngineOptions o;
  o.target_precision = target;
  o.draft_precision = draft;
  o.max_context = max_context;
  o.draft_layers = 1;
  return o;
}

TEST(Engine, SpeculativeGreedyIsIdenticalToTargetGreedy) {
  ModelWeights target = testing::SmallRandomModel(testing::SmallLlama(false), 11, 1.0f);
  CascadeEngine self_spec(Cpu(), target, std::nullopt, Options());
  ModelWeights other = testing::SmallRandomModel(testing::SmallLlama(false), 12, 1.0f);
  CascadeEngine separate(Cpu(), target, other, Options());
  CascadeEngine q4_draft(Cpu(), target, std::nullopt, Options(WeightPrecision::kF32, 128, WeightPrecision::kQ4));
  const std::vector<int32_t> prompt = {5, 17, 3, 88, 41, 9, 60};
  GenerateOptions g;
  g.max_tokens = 40;
  g.mode = DecodeMode::kTarget;
  const auto reference = self_spec.Generate(prompt, g).tokens;
  ASSERT_EQ(reference.size(), 40u);
  for (CascadeEngine* engine : {&self_spec, &separate, &q4_draft}) {
    for (int64_t L : {1, 4, 16}) {
      g.mode = DecodeMode::kSpeculative;
      g.proposal_length = L;
      auto r = engine->Generate(prompt, g);
      EXPECT_EQ(r.tokens, reference) << "L=" << L;
      EXPECT_GT(r.stats.target_calls, 0);
      EXPECT_LE(r.stats.target_calls, 40);
      EXPECT_GE(r.stats.tau(), 1.0);
      std::printf("  %s L=%lld: tau %.2f, gamma21 %.2f\n",
                  engine == &self_spec ? "self" : engine == &separate ? "separate" : "self, q4 draft",
                  static_cast<long long>(L), r.stats.tau(), r.stats.gamma21());
    }
  }
}

// EngineOptions::target_kv_dtype / draft_kv_dtype: a bf16 KV cache (half the bytes) on either
// model keeps speculative decoding identical to target-only with that target's cache.
TEST(Engine, Bf16KvCachesKeepSpeculativeIdenticalToTargetOnly) {
  ModelWeights target = testing::SmallRandomModel(testing::SmallLlama(false), 11, 1.0f);
  const std::vector<int32_t> prompt = {5, 17, 3, 88, 41, 9, 60};
  EngineOptions defaults = Options(WeightPrecision::kBF16, 128, WeightPrecision::kQ4);
  CascadeEngine plain(Cpu(), target, std::nullopt, defaults);
  // The CPU plugin's defaults (model/decoder.h DefaultKvDtype): bf16 for the bf16 target in the
  // fused layer stack (f32 under CASCADE_FFI_KERNELS=0), f32 for the draft whatever its weights
  // and for f32 weights.
  const bool fused = UsesLayerArena(ChooseMatmulMode(*Cpu(), WeightPrecision::kBF16, MatmulMode::kAuto));
  ASSERT_EQ(plain.target().kv_dtype(), fused ? DType::kBF16 : DType::kF32);
  ASSERT_EQ(plain.draft().kv_dtype(), DType::kF32);
  EXPECT_EQ(CascadeEngine(Cpu(), target, std::nullopt, Options(WeightPrecision::kF32, 128, WeightPrecision::kQ4))
                .target()
                .kv_dtype(),
            DType::kF32);
  EXPECT_EQ(CascadeEngine(Cpu(), target, std::nullopt, Options(WeightPrecision::kBF16, 128, WeightPrecision::kBF16))
                .draft()
                .kv_dtype(),
            DType::kF32);
  const int64_t f32_bytes = plain.target().k_cache().byte_size() * (fused ? 2 : 1);
  for (auto [t, d] : {std::pair{DType::kF32, DType::kF32}, std::pair{DType::kBF16, DType::kF32},
                      std::pair{DType::kBF16, DType::kBF16}, std::pair{DType::kF32, DType::kBF16}}) {
    EngineOptions o = defaults;
    o.target_kv_dtype = t;
    o.draft_kv_dtype = d;
    CascadeEngine engine(Cpu(), target, std::nullopt, o);
    EXPECT_EQ(engine.target().kv_dtype(), t);
    EXPECT_EQ(engine.draft().kv_dtype(), d);
    EXPECT_EQ(engine.target().k_cache().byte_size(), t == DType::kBF16 ? f32_bytes / 2 : f32_bytes);
    GenerateOptions g;
    g.max_tokens = 32;
    g.mode = DecodeMode::kTarget;
    const auto reference = engine.Generate(prompt, g).tokens;
    ASSERT_EQ(reference.size(), 32u);
    for (int64_t L : {1, 4, 12}) {
      g.mode = DecodeMode::kSpeculative;
      g.proposal_length = L;
      EXPECT_EQ(engine.Generate(prompt, g).tokens, reference) << "target " << DTypeName(t) << " draft " << DTypeName(d) << " L=" << L;
    }
  }
  EngineOptions bad = defaults;
  bad.target_kv_dtype = DType::kS32;
  EXPECT_THROW(CascadeEngine(Cpu(), target, std::nullopt, bad), InvalidArgumentError);
}

// The draft lookahead (GenerateOptions::lookahead) guesses the draft's next tokens from an earlier
// occurrence of the last two; rows of one call are bit-identical to separate calls, so turning it
// on changes nothing but how many draft calls a generation makes, greedy or sampled.
TEST(Engine, LookaheadChangesNothingButTheDraftCalls) {
  EXPECT_EQ(LookaheadGuess({1, 2, 3, 4, 1, 2}, {}, 3), (std::vector<int32_t>{3, 4, 1}));
  EXPECT_EQ(LookaheadGuess({1, 2, 3, 1, 2, 9, 1}, {2}, 2), (std::vector<int32_t>{9, 1}));  // the latest match
  EXPECT_EQ(LookaheadGuess({1, 2, 3, 4}, {1, 2}, 8), (std::vector<int32_t>{3, 4, 1, 2}));  // up to the end
  EXPECT_TRUE(LookaheadGuess({1, 2, 3, 4, 5}, {}, 3).empty());
  // No earlier pair: what followed the last token's latest earlier occurrence, one guess.
  EXPECT_EQ(LookaheadGuess({5, 2, 8, 9, 4, 2, 7, 6, 2}, {}, 3), (std::vector<int32_t>{7}));
  EXPECT_EQ(LookaheadGuess({5, 2, 8, 9}, {4, 2}, 2), (std::vector<int32_t>{8}));
  EXPECT_TRUE(LookaheadGuess({5, 2, 8, 9, 4, 2}, {}, 3, 3).empty());  // beyond the window
  EXPECT_TRUE(LookaheadGuess({7, 7}, {}, 3).empty());
  EXPECT_TRUE(LookaheadGuess({1, 2, 3, 1, 2}, {}, 0).empty());
  EXPECT_TRUE(LookaheadGuess({1, 2, 3, 4, 5, 6, 1, 2}, {}, 3, 4).empty());  // beyond the window

  ModelConfig config = testing::SmallLlama(false, 300);
  ModelWeights target = testing::SmallRandomModel(config, 13, 1.0f);
  EngineOptions o = Options(WeightPrecision::kF32, 128, WeightPrecision::kQ4);
  o.draft_layers = config.num_layers;  // a draft that agrees with the target: long chains
  CascadeEngine engine(Cpu(), target, std::nullopt, o);
  engine.SetTiny(RandomTiny(config.hidden_size, 32, config.vocab_size, 5, 1.0f, TinyInput::kDraftHidden));
  const std::vector<int32_t> prompt = {5, 17, 3, 88, 41, 5, 17, 3, 88, 41, 5, 17};
  int64_t hits[2] = {0, 0};  // greedy, sampled
  for (double temperature : {0.0, 0.1}) {
    for (DecodeMode mode : {DecodeMode::kSpeculative, DecodeMode::kCascade, DecodeMode::kAuto}) {
      // Sampled auto output is not a function of the seed alone: which kind a round runs follows
      // the measured times, and the kinds draw different random numbers.
      if (mode == DecodeMode::kAuto && temperature > 0) continue;
      GenerateOptions g;
      g.max_tokens = 60;
      g.mode = mode;
      g.proposal_length = 6;
      g.candidates = 32;
      g.sampling.temperature = temperature;
      g.seed = 3;
      g.lookahead = false;
      const GenerateResult off = engine.Generate(prompt, g);
      g.lookahead = true;
      const GenerateResult on = engine.Generate(prompt, g);
      const std::string what = std::string(DecodeModeName(mode)) + " T=" + std::to_string(temperature);
      EXPECT_EQ(on.tokens, off.tokens) << what;
      EXPECT_EQ(off.stats.lookahead_guesses + off.stats.lookahead_hits, 0) << what;
      EXPECT_LE(on.stats.lookahead_hits, on.stats.lookahead_guesses * kLookaheadTokens) << what;
      hits[temperature > 0] += on.stats.lookahead_hits;
      std::printf("  %s: draft calls %lld -> %lld, guesses %lld, hits %lld\n", what.c_str(),
                  static_cast<long long>(off.stats.draft_calls), static_cast<long long>(on.stats.draft_calls),
                  static_cast<long long>(on.stats.lookahead_guesses), static_cast<long long>(on.stats.lookahead_hits));
    }
  }
  // The test exercised computed-ahead steps, greedy and sampled.
  EXPECT_GT(hits[0], 0);
  EXPECT_GT(hits[1], 0);
}

TEST(Engine, CascadeGreedyIsIdenticalToTargetGreedyForEveryK0AndL) {
  ModelConfig config = testing::SmallLlama(false, 300);
  ModelWeights target = testing::SmallRandomModel(config, 13, 1.0f);
  CascadeEngine engine(Cpu(), target, std::nullopt, Options());
  const std::vector<int32_t> prompt = {5, 17, 3, 88, 41};
  GenerateOptions g;
  g.max_tokens = 24;
  g.mode = DecodeMode::kTarget;
  const auto reference = engine.Generate(prompt, g).tokens;
  // The tiny on the draft's hidden state (in the draft step), then on the input embedding (a table).
  engine.SetTiny(RandomTiny(config.hidden_size, 32, config.vocab_size, 5, 1.0f, TinyInput::kDraftHidden));
  g.mode = DecodeMode::kCascade;
  g.coverage_every = 1;
  for (int64_t k0 : {8, 64}) {
    g.candidates = k0;
    g.proposal_length = 4;
    EXPECT_EQ(engine.Generate(prompt, g).tokens, reference) << "hidden-state tiny, K0=" << k0;
    g.branches = 2;
    EXPECT_EQ(engine.Generate(prompt, g).tokens, reference) << "hidden-state tiny, 2 branches, K0=" << k0;
    g.branches = 1;
  }
  {  // The same with a q4 draft (4-bit blocks): the draft changes, the tokens do not.
    CascadeEngine q4(Cpu(), target, std::nullopt, Options(WeightPrecision::kF32, 128, WeightPrecision::kQ4));
    q4.SetTiny(RandomTiny(config.hidden_size, 32, config.vocab_size, 5, 1.0f, TinyInput::kDraftHidden));
    for (int64_t k0 : {8, 64}) {
      g.candidates = k0;
      EXPECT_EQ(q4.Generate(prompt, g).tokens, reference) << "q4 draft, hidden-state tiny, K0=" << k0;
    }
  }
  engine.SetTiny(RandomTiny(config.hidden_size, 32, config.vocab_size, 5));
  for (int64_t k0 : {8, 64, 256}) {
    for (int64_t L : {1, 4, 16}) {
      if (L > k0) continue;
      g.candidates = k0;
      g.proposal_length = L;
      auto r = engine.Generate(prompt, g);
      EXPECT_EQ(r.tokens, reference) << "K0=" << k0 << " L=" << L;
      EXPECT_GT(r.stats.coverage_samples, 0);
      std::printf("  cascade K0=%lld L=%lld: tau %.2f, gamma21 %.2f, gamma0 %.2f\n", static_cast<long long>(k0),
                  static_cast<long long>(L), r.stats.tau(), r.stats.gamma21(), r.stats.gamma0());
    }
  }
  // Several branches per step (verified as a tree in one target call).
  for (DecodeMode mode : {DecodeMode::kSpeculative, DecodeMode::kCascade}) {
    for (int64_t B : {2, 4}) {
      g.mode = mode;
      g.candidates = 64;
      g.proposal_length = 3;
      g.branches = B;
      auto r = engine.Generate(prompt, g);
      EXPECT_EQ(r.tokens, reference) << DecodeModeName(mode) << " B=" << B;
      std::printf("  %s B=%lld L=3: tau %.2f\n", DecodeModeName(mode), static_cast<long long>(B), r.stats.tau());
    }
  }
  g.branches = 1;
  g.mode = DecodeMode::kCascade;
  g.candidates = 4;
  g.proposal_length = 8;
  EXPECT_THROW(engine.Generate(prompt, g), InvalidArgumentError);  // K1 > K0
  g.candidates = 301;
  EXPECT_THROW(engine.Generate(prompt, g), InvalidArgumentError);  // K0 > vocab
  CascadeEngine no_tiny(Cpu(), target, std::nullopt, Options());
  g.candidates = 8;
  g.proposal_length = 2;
  EXPECT_THROW(no_tiny.Generate(prompt, g), InvalidArgumentError);
}

// A generation that leaves k1 unset proposes EngineOptions::proposal_length tokens a round when
// greedy and sampled_proposal_length when sampling (the first round and the last are shorter).
TEST(Engine, UnsetProposalLengthDependsOnSampling) {
  ModelWeights target = testing::SmallRandomModel(testing::SmallLlama(false), 11, 1.0f);
  EngineOptions o = Options();
  o.proposal_length = 12;
  o.sampled_proposal_length = 5;
  CascadeEngine engine(Cpu(), target, std::nullopt, o);
  const std::vector<int32_t> prompt = {5, 17, 3, 88, 41, 9, 60};
  GenerateOptions g;
  g.max_tokens = 60;
  g.mode = DecodeMode::kSpeculative;
  const GenerationStats greedy = engine.Generate(prompt, g).stats;
  ASSERT_GT(greedy.steps_speculative, 2);
  EXPECT_LE(greedy.length_sum, 12 * greedy.steps_speculative);
  EXPECT_GT(greedy.length_sum, 5 * greedy.steps_speculative) << "greedy rounds should propose up to 12";
  EXPECT_EQ(greedy.proposal_length, 12) << "the stats report the resolved k1";
  g.sampling.temperature = 0.8;
  g.seed = 3;
  const GenerationStats sampled = engine.Generate(prompt, g).stats;
  ASSERT_GT(sampled.steps_speculative, 2);
  EXPECT_LE(sampled.length_sum, 5 * sampled.steps_speculative) << "sampled rounds should propose at most 5";
  EXPECT_GT(sampled.length_sum, 4 * (sampled.steps_speculative - 2));
  EXPECT_EQ(sampled.proposal_length, 5);
  g.proposal_length = 9;  // the call's own k1 wins
  const GenerationStats own = engine.Generate(prompt, g).stats;
  EXPECT_GT(own.length_sum, 5 * own.steps_speculative);
  EXPECT_EQ(own.proposal_length, 9);
  g.mode = DecodeMode::kTarget;
  EXPECT_EQ(engine.Generate(prompt, g).stats.proposal_length, 0) << "target mode proposes nothing";
}

TEST(Engine, AutoModeAndDynamicHorizonKeepGreedyOutputIdentical) {
  ModelConfig config = testing::SmallLlama(false, 300);
  ModelWeights target = testing::SmallRandomModel(config, 14, 1.0f);
  CascadeEngine engine(Cpu(), target, std::nullopt, Options());
  engine.SetTiny(RandomTiny(config.hidden_size, 32, config.vocab_size, 6));
  const std::vector<int32_t> prompt = {9, 8, 7, 6};
  GenerateOptions g;
  g.max_tokens = 64;
  const auto reference = engine.Generate(prompt, g).tokens;
  g.proposal_length = 8;
  g.candidates = 64;
  // Auto on a fresh engine (its cost model has seen nothing), then again on the same one (greedy
  // output identical both times).
  CascadeEngine fresh(Cpu(), target, std::nullopt, Options());
  fresh.SetTiny(RandomTiny(config.hidden_size, 32, config.vocab_size, 6));
  int auto_runs = 0;
  for (DecodeMode mode : {DecodeMode::kSpeculative, DecodeMode::kCascade, DecodeMode::kAuto, DecodeMode::kAuto}) {
    g.mode = mode;
    g.dynamic_length = true;
    auto r = (mode == DecodeMode::kAuto ? fresh : engine).Generate(prompt, g);
    EXPECT_EQ(r.tokens, reference) << DecodeModeName(mode);
    EXPECT_GT(r.stats.predicted_speedup, 0);
    if (mode == DecodeMode::kAuto && auto_runs++ == 0) {
      // Auto explores every kind before settling.
      EXPECT_GT(r.stats.steps_target, 0);
      EXPECT_GT(r.stats.steps_speculative, 0);
      EXPECT_GT(r.stats.steps_cascade, 0);
    }
    // (Which kinds it settles on here depends on this machine's timings of a tiny random model:
    // the rules are tested deterministically in cost_model_test.)
    std::printf("  %s dynamic: rounds t/s/c %lld/%lld/%lld, mean L %.1f, predicted %.2fx, measured %.2fx\n",
                DecodeModeName(mode), static_cast<long long>(r.stats.steps_target),
                static_cast<long long>(r.stats.steps_speculative), static_cast<long long>(r.stats.steps_cascade),
                r.stats.steps_speculative + r.stats.steps_cascade
                    ? static_cast<double>(r.stats.length_sum) / (r.stats.steps_speculative + r.stats.steps_cascade)
                    : 0.0,
                r.stats.predicted_speedup, r.stats.measured_speedup);
  }
  // The cost model's pieces.
  EXPECT_NEAR(CostModel::ExpectedTokens(0.0, 4), 1.0, 1e-12);
  EXPECT_NEAR(CostModel::ExpectedTokens(0.5, 1), 1.5, 1e-12);
  EXPECT_NEAR(CostModel::ExpectedTokens(0.9, 4), (1 - std::pow(0.9, 5)) / 0.1, 1e-9);
  CostModel m;
  m.ObserveDecode(10);
  m.ObserveDraftStep(StepKind::kSpeculative, 1);
  m.ObserveVerify(2, 12);
  m.ObserveVerify(5, 15);
  m.ObserveAcceptance(StepKind::kSpeculative, 4, 4);
  EXPECT_NEAR(m.VerifyMs(4), 15, 1e-9);  // the line through (2, 12) and (5, 15)
  EXPECT_GT(m.BestLength(StepKind::kSpeculative, {1, 2, 4, 8}).length, 1);  // high acceptance: long proposals pay
  for (int i = 0; i < 20; ++i) m.ObserveAcceptance(StepKind::kSpeculative, 1, 0);
  EXPECT_EQ(m.BestLength(StepKind::kSpeculative, {1, 2, 4, 8}).length, 1);
  EXPECT_LT(m.PredictedSpeedup(StepKind::kSpeculative, 1), 1.0);  // no acceptance: slower than the target
}

TEST(Engine, TheCostModelChoosesTheDraftDepth) {
  ModelConfig config = testing::SmallLlama(false, 97);
  config.num_layers = 8;
  ModelWeights target = testing::SmallRandomModel(config, 15, 1.0f);
  EngineOptions o = Options();
  o.draft_layers = 0;  // choose
  CascadeEngine engine(Cpu(), target, std::nullopt, o);
  const auto& candidates = engine.draft_candidates();
  ASSERT_EQ(candidates.size(), 5u);  // 1, 2, 4, 6 of 8 layers, and all 8 (int8 draft, f32 target)
  EXPECT_EQ(candidates.back().layers, 8);
  const DraftCandidate* best = &candidates[0];
  for (const auto& c : candidates) {
    EXPECT_GE(c.agreement, 0.0);
    EXPECT_LE(c.agreement, 1.0);
    EXPECT_GT(c.relative_cost, 0.0);
    EXPECT_LT(c.relative_cost, 1.0);
    if (c.predicted_speedup > best->predicted_speedup) best = &c;
    std::printf("  draft %lld layers: agreement %.2f, cost %.2f, predicted %.2fx\n", static_cast<long long>(c.layers),
                c.agreement, c.relative_cost, c.predicted_speedup);
  }
  EXPECT_EQ(engine.draft_config().num_layers, best->layers);
}

TEST(Engine, ShardedVerificationGivesTheSameTokensOnOneTwoAndFourDevices) {
  ClientOptions four;
  four.cpu_device_count = 4;
  auto client = Client::Create(Api::Load(LocatePlugin("cpu")), four);
  ModelConfig config = testing::SmallLlama(false, 300);
  ModelWeights target = testing::SmallRandomModel(config, 16, 1.0f);
  const std::vector<int32_t> prompt = {3, 1, 4, 1, 5};
  // The f32 target with its f32 KV cache, and the bf16 target with its default bf16 cache
  // (model/decoder.h DefaultKvDtype), replicated on every device.
  for (WeightPrecision precision : {WeightPrecision::kF32, WeightPrecision::kBF16}) {
    GenerateOptions g;
    g.mode = DecodeMode::kTarget;
    g.max_tokens = 24;
    const auto greedy_reference = [&] {
      CascadeEngine one(client, target, std::nullopt, Options(precision));
      return one.Generate(prompt, g).tokens;
    }();
    g.mode = DecodeMode::kCascade;
    g.candidates = 32;
    g.proposal_length = 3;
    std::vector<std::vector<int32_t>> sampled;
    for (int64_t D : {1, 2, 4}) {
      EngineOptions o = Options(precision);
      o.devices = D;
      CascadeEngine engine(client, target, std::nullopt, o);
      const bool fused = UsesLayerArena(ChooseMatmulMode(*client, precision, MatmulMode::kAuto));
      ASSERT_EQ(engine.target().kv_dtype(), precision == WeightPrecision::kBF16 && fused ? DType::kBF16 : DType::kF32);
      const std::string where = std::string(WeightPrecisionName(precision)) + " D=" + std::to_string(D);
      // Each replica runs the tiny on its own shard's hidden states.
      engine.SetTiny(RandomTiny(config.hidden_size, 32, config.vocab_size, 8, 1.0f, TinyInput::kDraftHidden));
      g.sampling = {};
      EXPECT_EQ(engine.Generate(prompt, g).tokens, greedy_reference) << "hidden-state tiny, " << where;
      engine.SetTiny(RandomTiny(config.hidden_size, 32, config.vocab_size, 8));
      for (int64_t B : {1, 3, 4}) {
        g.branches = B;
        g.sampling = {};
        auto r = engine.Generate(prompt, g);
        EXPECT_EQ(r.tokens, greedy_reference) << "T=0 " << where << " B=" << B;
        g.sampling = {0.8, 0, 1.0};
        g.seed = 42;
        auto s = engine.Generate(prompt, g);
        if (D == 1) sampled.push_back(s.tokens);
        else EXPECT_EQ(s.tokens, sampled[B == 1 ? 0 : B == 3 ? 1 : 2]) << "T=0.8 " << where << " B=" << B;
        std::printf("  %s B=%lld: tau %.2f (greedy), %.2f (T=0.8)\n", where.c_str(), static_cast<long long>(B),
                    r.stats.tau(), s.stats.tau());
      }
    }
  }
}

TEST(Engine, StopTokensMaxTokensAndCallbacks) {
  ModelWeights target = testing::SmallRandomModel(testing::SmallLlama(false), 21, 1.0f);
  CascadeEngine engine(Cpu(), target, std::nullopt, Options());
  GenerateOptions g;
  g.mode = DecodeMode::kTarget;
  g.max_tokens = 12;
  auto full = engine.Generate({1, 2, 3}, g).tokens;
  ASSERT_EQ(full.size(), 12u);
  g.stop_tokens = {full[4]};
  for (DecodeMode mode : {DecodeMode::kTarget, DecodeMode::kSpeculative}) {
    g.mode = mode;
    auto r = engine.Generate({1, 2, 3}, g);
    size_t first = std::find(full.begin(), full.end(), full[4]) - full.begin();
    EXPECT_EQ(r.tokens, std::vector<int32_t>(full.begin(), full.begin() + first + 1));
    EXPECT_EQ(r.stats.stop_reason, "stop_token");
  }
  g.stop_tokens.clear();
  int calls = 0;
  g.on_tokens = [&](const std::vector<int32_t>&) { return ++calls < 2; };
  auto r = engine.Generate({1, 2, 3}, g);
  EXPECT_EQ(r.stats.stop_reason, "callback");
  EXPECT_LT(r.tokens.size(), 12u);
  EXPECT_THROW(engine.Generate({}, g), InvalidArgumentError);
  EXPECT_THROW(engine.Generate({1, 500}, g), InvalidArgumentError);
  {
    // The first round proposes at most kFirstRoundLength (time to first token), later rounds k1:
    // with a draft that agrees with the target, the first chunk is short and a later one longer.
    ModelConfig config = testing::SmallLlama(false, 300);
    EngineOptions o = Options(WeightPrecision::kF32, 128, WeightPrecision::kQ4);
    o.draft_layers = config.num_layers;
    CascadeEngine agreeing(Cpu(), testing::SmallRandomModel(config, 13, 1.0f), std::nullopt, o);
    GenerateOptions s;
    s.mode = DecodeMode::kSpeculative;
    s.proposal_length = 12;
    s.max_tokens = 60;
    std::vector<size_t> chunks;
    s.on_tokens = [&](const std::vector<int32_t>& c) {
      chunks.push_back(c.size());
      return true;
    };
    agreeing.Generate({5, 17, 3}, s);
    ASSERT_GE(chunks.size(), 2u);
    EXPECT_LE(chunks[0], static_cast<size_t>(kFirstRoundLength + 1));
    EXPECT_GT(*std::max_element(chunks.begin() + 1, chunks.end()), static_cast<size_t>(kFirstRoundLength + 1));
  }
  std::vector<int32_t> too_long(128, 1);
  EXPECT_THROW(engine.Generate(too_long, g), InvalidArgumentError);
}

// The first two sampled tokens against the target's exact distribution.
ChiSquareResult FirstTwoTokens(CascadeEngine& engine, GenerateOptions g, int samples) {
  const std::vector<int32_t> prompt = {7, 20};
  const int64_t V = engine.target_config().vocab_size;
  // Exact joint: p1(a) p2(b | a) from the target's own logits.
  std::vector<double> exact(V * V, 0.0);
  auto logits1 = engine.target().Forward(prompt, 0, {HeadKind::kLogits, 0}).logits;
  // (The penalties count the prompt, then the prompt and the first token.)
  TokenDist p1 = Transform(logits1.data() + V, V, g.sampling, nullptr, TokenHistory(prompt));
  for (size_t i = 0; i < p1.size(); ++i) {
    auto l2 = engine.target().Forward({p1.ids()[i]}, 2, {HeadKind::kLogits, 0}).logits;
    const std::vector<int32_t> context = {prompt[0], prompt[1], p1.ids()[i]};
    TokenDist p2 = Transform(l2.data(), V, g.sampling, nullptr, TokenHistory(context));
    for (size_t k = 0; k < p2.size(); ++k) exact[p1.ids()[i] * V + p2.ids()[k]] = p1.probs()[i] * p2.probs()[k];
  }
  std::vector<int64_t> counts(V * V, 0);
  // 3, not 2: a round proposes at most max_tokens - 1 tokens, and both counted tokens should come
  // from one chain's acceptances (x_1 and x_2 of a round of L >= 2).
  g.max_tokens = 3;
  for (int s = 0; s < samples; ++s) {
    g.seed = 1000 + s;
    auto t = engine.Generate(prompt, g).tokens;
    counts[t[0] * V + t[1]]++;
  }
  auto r = ChiSquareTest(counts, exact);
  std::printf("  %s B=%lld: chi2 %.1f dof %d p %.3g\n", DecodeModeName(g.mode), static_cast<long long>(g.branches),
              r.statistic, r.degrees_of_freedom, r.p_value);
  return r;
}

constexpr int kSamples = 20000;

TEST(Engine, SampledOutputFollowsTheTargetDistribution) {
  ModelWeights target = testing::SmallRandomModel(testing::SmallLlama(false, 24), 31, 1.0f);
  CascadeEngine engine(Cpu(), target, std::nullopt, Options(WeightPrecision::kF32, 8));  // short cache: cheap calls
  GenerateOptions g;
  g.sampling = {0.8, 12, 0.95};
  g.proposal_length = 3;
  // A tiny whose candidates often miss target mass: q~ differs a lot from the draft's full softmax.
  engine.SetTiny(RandomTiny(target.config.hidden_size, 16, target.config.vocab_size, 9));
  g.candidates = 6;
  for (DecodeMode mode : {DecodeMode::kTarget, DecodeMode::kSpeculative, DecodeMode::kCascade, DecodeMode::kAuto}) {
    g.mode = mode;
    g.dynamic_length = mode == DecodeMode::kAuto;
    EXPECT_GT(FirstTwoTokens(engine, g, kSamples).p_value, 1e-3) << DecodeModeName(mode);
  }
  g.dynamic_length = false;
  // Several branches (SpecInfer's multi-step speculative sampling over i.i.d. first tokens).
  g.mode = DecodeMode::kCascade;
  g.branches = 2;
  g.proposal_length = 2;
  EXPECT_GT(FirstTwoTokens(engine, g, kSamples).p_value, 1e-3) << "cascade, 2 branches";
  {  // The tiny on the draft's hidden state: q~ over candidates that change with the context.
    CascadeEngine hidden(Cpu(), target, std::nullopt, Options(WeightPrecision::kF32, 8));
    hidden.SetTiny(RandomTiny(target.config.hidden_size, 16, target.config.vocab_size, 9, 1.0f, TinyInput::kDraftHidden));
    GenerateOptions h = g;
    for (int64_t B : {1, 2}) {
      h.branches = B;
      EXPECT_GT(FirstTwoTokens(hidden, h, kSamples).p_value, 1e-3) << "cascade, hidden-state tiny, B=" << B;
    }
    h.branches = 1;
    h.proposal_length = 3;
    h.broken_acceptance_for_testing = true;
    EXPECT_LT(FirstTwoTokens(hidden, h, kSamples / 4).p_value, 1e-3) << "negative control passed: hidden-state tiny";
  }
  {  // A q4 draft (4-bit blocks): its q~ is its own distribution, so the target's stays exact.
    CascadeEngine q4(Cpu(), target, std::nullopt, Options(WeightPrecision::kF32, 8, WeightPrecision::kQ4));
    q4.SetTiny(RandomTiny(target.config.hidden_size, 16, target.config.vocab_size, 9, 1.0f, TinyInput::kDraftHidden));
    GenerateOptions h = g;
    h.branches = 1;
    h.proposal_length = 3;
    h.mode = DecodeMode::kCascade;  // (speculative's q~ is computed by the same code on the same draft)
    EXPECT_GT(FirstTwoTokens(q4, h, kSamples).p_value, 1e-3) << "q4 draft, cascade";
    h.broken_acceptance_for_testing = true;
    EXPECT_LT(FirstTwoTokens(q4, h, kSamples / 4).p_value, 1e-3) << "negative control passed: q4 draft";
  }
  g.proposal_length = 3;
  g.broken_acceptance_for_testing = true;  // fails by a wide margin (chi2 in the thousands)
  for (DecodeMode mode : {DecodeMode::kSpeculative, DecodeMode::kCascade}) {
    for (int64_t B : {1, 2}) {
      g.mode = mode;
      g.branches = B;
      EXPECT_LT(FirstTwoTokens(engine, g, kSamples / 4).p_value, 1e-3)
          << "negative control passed: " << DecodeModeName(mode) << " B=" << B;
    }
  }
}


// minP, penalties and logit bias, applied to p and q~ alike (q~ over the tiny's candidates by token
// id; each position with its own chain's history): every mode samples the target's distribution.
// Each option alone in one of the modes, all of them together in every mode, and the negative
// control still caught with them.
TEST(Engine, SamplingOptionsKeepTheTargetDistribution) {
  ModelWeights target = testing::SmallRandomModel(testing::SmallLlama(false, 24), 31, 1.0f);
  CascadeEngine engine(Cpu(), target, std::nullopt, Options(WeightPrecision::kF32, 8));
  engine.SetTiny(RandomTiny(target.config.hidden_size, 16, target.config.vocab_size, 9));
  GenerateOptions g;
  g.candidates = 6;
  g.proposal_length = 3;
  const SamplingParams base{0.9, 0, 1.0};
  struct Case {
    const char* name;
    SamplingParams sampling;
    DecodeMode mode;
    int64_t branches;
  };
  std::vector<Case> cases;
  SamplingParams s = base;
  s.min_p = 0.15;
  cases.push_back({"minP", s, DecodeMode::kSpeculative, 1});
  s = base;
  s.repeat_penalty = 1.8;
  cases.push_back({"repeatPenalty", s, DecodeMode::kCascade, 1});
  s = base;
  s.presence_penalty = 1.2;
  cases.push_back({"presencePenalty", s, DecodeMode::kCascade, 2});
  s = base;
  s.frequency_penalty = 1.0;
  s.penalty_last_n = 2;
  cases.push_back({"frequencyPenalty, penaltyLastN 2", s, DecodeMode::kSpeculative, 2});
  s = base;
  s.logit_bias = {{3, -INFINITY}, {5, 2.0}, {11, -1.0}};
  cases.push_back({"logitBias", s, DecodeMode::kCascade, 1});
  s = SamplingParams{0.8, 12, 0.95};
  s.min_p = 0.05;
  s.repeat_penalty = 1.3;
  s.presence_penalty = 0.5;
  s.frequency_penalty = 0.4;
  s.logit_bias = {{3, -INFINITY}, {5, 1.5}};
  cases.push_back({"all together", s, DecodeMode::kTarget, 1});
  cases.push_back({"all together", s, DecodeMode::kSpeculative, 1});
  cases.push_back({"all together", s, DecodeMode::kCascade, 1});
  cases.push_back({"all together", s, DecodeMode::kCascade, 2});
  for (const Case& c : cases) {
    g.sampling = c.sampling;
    g.mode = c.mode;
    g.branches = c.branches;
    std::printf("  %s\n", c.name);
    const int samples = std::string(c.name) == "all together" ? kSamples : kSamples / 2;
    EXPECT_GT(FirstTwoTokens(engine, g, samples).p_value, 1e-3) << c.name << ", " << DecodeModeName(c.mode) << " B=" << c.branches;
  }
  g.sampling = s;
  g.broken_acceptance_for_testing = true;
  for (DecodeMode mode : {DecodeMode::kSpeculative, DecodeMode::kCascade}) {
    g.mode = mode;
    g.branches = mode == DecodeMode::kCascade ? 2 : 1;
    EXPECT_LT(FirstTwoTokens(engine, g, kSamples / 4).p_value, 1e-3)
        << "negative control passed with the sampling options: " << DecodeModeName(mode);
  }
}

// T = 0 with bias and penalties: the argmax after the transform, in every mode the same tokens as
// target-only decoding, which itself follows the transform of the target's logits step by step.
// Two settings: mixed options with bans, and a strongly biased token that a presence penalty over
// a short window pushes out for three tokens at a time (it recurs inside speculative chains, so a
// p_j or q~_j that missed the chain's earlier proposals would pick it again).
TEST(Engine, GreedyWithPenaltiesAndBiasIsIdenticalAcrossModes) {
  ModelConfig config = testing::SmallLlama(false, 300);
  ModelWeights target = testing::SmallRandomModel(config, 13, 1.0f);
  CascadeEngine engine(Cpu(), target, std::nullopt, Options());
  engine.SetTiny(RandomTiny(config.hidden_size, 32, config.vocab_size, 5));
  const std::vector<int32_t> prompt = {5, 17, 3, 88, 41};
  GenerateOptions g;
  g.max_tokens = 24;
  g.mode = DecodeMode::kTarget;
  const auto plain = engine.Generate(prompt, g).tokens;
  ASSERT_EQ(plain.size(), 24u);
  SamplingParams mixed;
  mixed.repeat_penalty = 1.5;
  mixed.presence_penalty = 0.3;
  mixed.frequency_penalty = 0.2;
  mixed.penalty_last_n = 16;
  mixed.logit_bias = {{plain[0], -INFINITY}, {plain[3], -INFINITY}, {42, 0.5}};
  SamplingParams periodic;
  periodic.logit_bias = {{42, 30.0}};
  periodic.presence_penalty = 60.0;
  periodic.penalty_last_n = 4;
  for (const bool is_mixed : {true, false}) {
    const SamplingParams& shaped = is_mixed ? mixed : periodic;
    g.sampling = shaped;
    g.mode = DecodeMode::kTarget;
    g.proposal_length = 4;
    g.branches = 1;
    g.candidates = 64;
    const auto reference = engine.Generate(prompt, g).tokens;
    ASSERT_EQ(reference.size(), 24u);
    EXPECT_NE(reference, plain);  // the options do change greedy decoding
    if (is_mixed) {
      for (int32_t t : reference) {
        EXPECT_NE(t, plain[0]);
        EXPECT_NE(t, plain[3]);
      }
    } else {
      EXPECT_EQ(std::count(reference.begin(), reference.end(), 42), 5);  // every 5th token (positions 0, 5, ..., 20)
    }
    // Target-only by hand: the argmax of the transformed logits after each context.
    std::vector<int32_t> context = prompt;
    const int64_t V = config.vocab_size;
    for (size_t i = 0; i < reference.size(); ++i) {
      const auto logits = engine.TargetLogits(context);
      const int32_t expected =
          Transform(logits.data() + (context.size() - 1) * V, V, shaped, nullptr, TokenHistory(context)).Argmax();
      ASSERT_EQ(reference[i], expected) << "token " << i;
      context.push_back(expected);
    }
    struct Run {
      DecodeMode mode;
      int64_t length, branches, candidates;
    };
    for (const Run& run : {Run{DecodeMode::kSpeculative, 1, 1, 64}, Run{DecodeMode::kSpeculative, 4, 1, 64},
                           Run{DecodeMode::kSpeculative, 8, 1, 64}, Run{DecodeMode::kCascade, 4, 1, 8},
                           Run{DecodeMode::kCascade, 6, 1, 64}, Run{DecodeMode::kSpeculative, 3, 3, 64},
                           Run{DecodeMode::kCascade, 3, 2, 64}, Run{DecodeMode::kAuto, 4, 1, 64}}) {
      g.mode = run.mode;
      g.proposal_length = run.length;
      g.branches = run.branches;
      g.candidates = run.candidates;
      auto r = engine.Generate(prompt, g);
      EXPECT_EQ(r.tokens, reference) << (is_mixed ? "mixed " : "periodic ") << DecodeModeName(run.mode)
                                     << " L=" << run.length << " B=" << run.branches << " K0=" << run.candidates;
      std::printf("  %s %s L=%lld B=%lld K0=%lld: tau %.2f\n", is_mixed ? "mixed" : "periodic", DecodeModeName(run.mode),
                  static_cast<long long>(run.length), static_cast<long long>(run.branches),
                  static_cast<long long>(run.candidates), r.stats.tau());
    }
  }
  // Validation reaches Generate: a bias id outside the vocabulary, a bad penalty.
  g.sampling = mixed;
  g.sampling.logit_bias[300] = 1.0;
  EXPECT_THROW(engine.Generate(prompt, g), InvalidArgumentError);
  g.sampling = mixed;
  g.sampling.repeat_penalty = 0;
  EXPECT_THROW(engine.Generate(prompt, g), InvalidArgumentError);
}

}  // namespace
}  // namespace cascade
