// Exactness on the real SmolLM2-135M-Instruct (Q4_1 GGUF): every decoding mode gives the target's
// greedy tokens, for K0 in {8, 64, 256} and L in {1, 4, 16}. `npm test` fetches the model first
// and passes its path in CASCADE_TEST_MODEL (scripts/cpp-tests.mjs).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cascade/engine.h"
#include "cascade/loading.h"
#include "kernels/ffi_handlers.h"
#include "model/decoder.h"
#include "model/loader.h"
#include "model/matmul_mode.h"
#include "model/tiny.h"
#include "pjrt/api.h"
#include "pjrt/plugin_locator.h"
#include "util/huge_pages.h"
#include "logit_distance.h"

namespace cascade {
namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif
#else
constexpr bool kAddressSanitizer = false;
#endif

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

// The GGUF's layer matrices are Q4_1 blocks: the load stores its bf16 target as those blocks
// (kBF16Q4). With AMX (kernels/ffi_handlers.h BlockStoredBf16Kind: kQ4ExactBf16) it multiplies by
// the blocks' exact weights: the plain program's f32 dot within rounding, the dense bf16 target's
// logits within 3% of their span (a bf16 weight's rounding) and its greedy tokens here. Without AMX (kQ4Bf16) it is
// the dense bf16 target bit for bit: every logit of a prompt and of a verify block, and the tokens.
// Either way speculative decoding gives its own target-only tokens.
TEST(SmolLM2, Bf16TargetFromItsBlocks) {
  const char* path = std::getenv("CASCADE_TEST_MODEL");
  ASSERT_NE(path, nullptr) << "set CASCADE_TEST_MODEL to the SmolLM2 GGUF (npm test does)";
  const bool exact = kernels::BlockStoredBf16Kind() == kernels::WeightMatrix::Kind::kQ4ExactBf16;
  ModelWeights target = LoadModel(path);
  ClientOptions client_options;
  client_options.cpu_device_count = 1;
  auto client = Client::Create(Api::Load(LocatePlugin("cpu")), client_options);
  ASSERT_TRUE(Bf16FromBlocksApplies(*client, target));
  DecoderOptions o;
  o.max_context = 64;
  o.kv_dtype = DType::kF32;  // the plain program's cache too: the logits differ by the matmuls alone
  o.precision = WeightPrecision::kBF16;
  DecoderModel dense(client, target, o);
  o.precision = WeightPrecision::kBF16Q4;
  DecoderModel blocks(client, target, o);
  o.matmul = MatmulMode::kXlaAuto;
  DecoderModel blocks_plain(client, target, o);
  EXPECT_LT(blocks.weight_bytes() * 10, dense.weight_bytes() * 6);  // 153 MB against 269 (the lookup embedding stays dense)
  // The upload leaves the weights in 2 MiB pages: > 90% of them with glibc's allocator (the
  // product's), > 50% under ASan, whose allocator spaces buffers apart (67% measured).
  if (CanCollapseHugePages() && !HugePagesDisabled())
    EXPECT_GT(blocks.huge_page_bytes() * 10, blocks.weight_bytes() * (kAddressSanitizer ? 5 : 9));
  const std::vector<int32_t> prompt = {504, 1296, 3003, 4683, 359};
  const std::vector<int32_t> block = {260, 2380, 30, 3656, 28, 284, 1017, 1744, 30, 11, 1022, 8};
  for (const auto& [tokens, start] : {std::pair{prompt, int64_t{0}}, std::pair{block, int64_t{5}}}) {
    const std::string what = start == 0 ? "prompt logits" : "verify logits";
    ForwardResult a = dense.Forward(tokens, start, {HeadKind::kLogits});
    ForwardResult b = blocks.Forward(tokens, start, {HeadKind::kLogits});
    ASSERT_EQ(a.logits.size(), b.logits.size());
    if (!exact) {
      EXPECT_EQ(0, std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * sizeof(float))) << what;
      continue;
    }
    ForwardResult p = blocks_plain.Forward(tokens, start, {HeadKind::kLogits});
    const float plain = testing::MaxAbsDifference(b.logits, p.logits),
                to_dense = testing::MaxAbsDifference(b.logits, a.logits), span = testing::MaxAbs(p.logits);
    // Activations rounded to bf16 turn last-bit differences upstream into 2^-9 ones: the dense
    // target's fused and plain programs differ by up to 0.5 here too (1.6% of the span, measured);
    // a wrong weight order would change the logits wholesale.
    EXPECT_LE(plain, 3e-2f * span) << what;
    EXPECT_LE(to_dense, 3e-2f * span) << what;
    EXPECT_GT(to_dense, 0.0f) << what << ": the blocks' exact weights give the bf16-rounded weights' logits";
  }

  EngineOptions options;
  options.target_precision = WeightPrecision::kBF16;
  options.draft_precision = WeightPrecision::kQ4;
  options.max_context = 96;
  options.draft_layers = 30;
  CascadeEngine dense_engine(client, target, std::nullopt, options);
  options.target_precision = WeightPrecision::kBF16Q4;
  CascadeEngine blocks_engine(client, target, std::nullopt, options);
  GenerateOptions g;
  g.mode = DecodeMode::kTarget;
  g.max_tokens = 48;
  const auto reference = blocks_engine.Generate(prompt, g).tokens;
  EXPECT_EQ(dense_engine.Generate(prompt, g).tokens, reference) << "target-only, dense";
  g.mode = DecodeMode::kSpeculative;
  g.proposal_length = 12;
  EXPECT_EQ(blocks_engine.Generate(prompt, g).tokens, reference) << "speculative";
}

}  // namespace
}  // namespace cascade
