// Exactness on the real SmolLM2-135M-Instruct (Q4_1 GGUF): every decoding mode gives the target's
// greedy tokens, for K0 in {8, 64, 256} and L in {1, 4, 16}. `npm test` fetches the model first
// and passes its path in CASCADE_TEST_MODEL (scripts/cpp-tests.mjs).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "cascade/engine.h"
#include "model/loader.h"
#include "model/tiny.h"
#include "pjrt/api.h"
#include "pjrt/plugin_locator.h"

namespace cascade {
namespace {

TEST(SmolLM2, EveryModeIsIdenticalToTargetGreedy) {
  const char* path = std::getenv("CASCADE_TEST_MODEL");
  ASSERT_NE(path, nullptr) << "set CASCADE_TEST_MODEL to the SmolLM2 GGUF (npm test does)";
  ModelWeights target = LoadModel(path);
  ASSERT_EQ(target.config.num_layers, 30);
  ClientOptions client_options;
  client_options.cpu_device_count = 1;
  auto client = Client::Create(Api::Load(LocatePlugin("cpu")), client_options);
  EngineOptions options;
  options.target_precision = WeightPrecision::kF32;
  options.draft_precision = WeightPrecision::kF32;
  options.max_context = 64;
  options.draft_layers = 6;
  CascadeEngine engine(client, target, std::nullopt, options);
  // Exactness does not depend on the tiny's quality: a random one exercises the restriction hardest.
  engine.SetTiny(RandomTiny(target.config.hidden_size, 64, target.config.vocab_size, 3));

  // "The three primary colors are" in SmolLM2's vocabulary (ids from its tokenizer).
  const std::vector<int32_t> prompt = {504, 1296, 3003, 4683, 359};
  GenerateOptions g;
  g.mode = DecodeMode::kTarget;
  g.max_tokens = 20;
  const auto reference = engine.Generate(prompt, g).tokens;
  ASSERT_EQ(reference.size(), 20u);
  g.mode = DecodeMode::kSpeculative;
  g.proposal_length = 4;
  EXPECT_EQ(engine.Generate(prompt, g).tokens, reference) << "speculative";
  g.mode = DecodeMode::kCascade;
  for (int64_t k0 : {8, 64, 256}) {
    for (int64_t L : {1, 4, 16}) {
      if (L > k0) continue;
      g.candidates = k0;
      g.proposal_length = L;
      auto r = engine.Generate(prompt, g);
      EXPECT_EQ(r.tokens, reference) << "cascade K0=" << k0 << " L=" << L;
      std::printf("  cascade K0=%lld L=%lld: tau %.2f gamma21 %.2f gamma0 %.2f\n", static_cast<long long>(k0),
                  static_cast<long long>(L), r.stats.tau(), r.stats.gamma21(), r.stats.gamma0());
    }
  }
  g.mode = DecodeMode::kAuto;
  g.dynamic_length = true;
  g.candidates = 64;
  g.proposal_length = 8;
  EXPECT_EQ(engine.Generate(prompt, g).tokens, reference) << "auto";
}

}  // namespace
}  // namespace cascade
