// Exactness of the acceptance rules on synthetic models, where the target's true distribution is
// known: the cascade's output must follow it (chi-square, fixed seeds), and a deliberately broken
// rule must be caught by the same test.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <map>
#include <vector>

#include "cascade/acceptance.h"
#include "cascade/chi_square.h"
#include "cascade/distribution.h"
#include "pjrt/errors.h"

namespace cascade {
namespace {

constexpr int kVocab = 12;

// Deterministic pseudo-random logits for a context: a stand-in "model".
std::vector<float> Logits(const std::vector<int32_t>& context, uint64_t salt, double scale) {
  uint64_t h = 1469598103934665603ULL ^ salt;
  for (int32_t t : context) h = (h ^ static_cast<uint64_t>(t + 1)) * 1099511628211ULL;
  Rng rng(h);
  std::vector<float> out(kVocab);
  for (auto& v : out) v = static_cast<float>((rng.Uniform() * 2 - 1) * scale);
  return out;
}

struct World {
  SamplingParams params;
  double draft_scale = 2.5;
  size_t candidates = 5;      // K0 of the tiny model
  bool broken_ratio = false;  // negative control: use the draft's unrestricted softmax in the ratio

  TokenDist Target(const std::vector<int32_t>& ctx) const {
    auto l = Logits(ctx, 1, 2.0);
    return Transform(l.data(), l.size(), params);
  }
  // The tiny model's candidate set: a context-dependent subset that may miss target mass.
  std::vector<int32_t> Candidates(const std::vector<int32_t>& ctx) const {
    auto l = Logits(ctx, 3, 1.0);
    SamplingParams all{1.0, 0, 1.0};
    return Transform(l.data(), l.size(), all).TopN(candidates);
  }
  // q~: the draft restricted to the candidates, after the user's transform.
  TokenDist DraftRestricted(const std::vector<int32_t>& ctx) const {
    auto full = Logits(ctx, 2, draft_scale);
    auto cand = Candidates(ctx);
    std::vector<float> l;
    for (int32_t c : cand) l.push_back(full[c]);
    return Transform(l.data(), l.size(), params, cand.data());
  }
  TokenDist DraftUnrestricted(const std::vector<int32_t>& ctx) const {
    auto full = Logits(ctx, 2, draft_scale);
    return Transform(full.data(), full.size(), params);
  }

  // One speculation step from `ctx` with `branches` x length `L`; returns the emitted tokens.
  std::vector<int32_t> Step(const std::vector<int32_t>& ctx, size_t branches, size_t L, Rng& rng) const {
    std::vector<Proposal> props(branches);
    std::vector<std::vector<std::vector<int32_t>>> contexts(branches);
    const TokenDist q1 = DraftRestricted(ctx);
    for (size_t b = 0; b < branches; ++b) {
      std::vector<int32_t> c = ctx;
      for (size_t j = 0; j < L; ++j) {
        TokenDist q = j == 0 ? q1 : DraftRestricted(c);
        int32_t x = q.Sample(rng);
        props[b].tokens.push_back(x);
        props[b].q.push_back(broken_ratio ? DraftUnrestricted(c) : q);
        contexts[b].push_back(c);
        c.push_back(x);
      }
      contexts[b].push_back(c);
    }
    Verdict v = VerifySampled(props, [&](size_t b, size_t j) { return Target(contexts[b][j]); }, rng);
    std::vector<int32_t> out(props[v.branch].tokens.begin(), props[v.branch].tokens.begin() + v.accepted);
    out.push_back(v.next);
    return out;
  }

  // The first two generated tokens, speculating until there are two.
  std::pair<int32_t, int32_t> FirstTwo(size_t branches, size_t L, Rng& rng) const {
    std::vector<int32_t> ctx = {7};
    std::vector<int32_t> generated;
    while (generated.size() < 2) {
      auto step = Step(ctx, branches, L, rng);
      for (int32_t t : step) {
        generated.push_back(t);
        ctx.push_back(t);
      }
    }
    return {generated[0], generated[1]};
  }

  std::vector<double> ExactJoint() const {
    std::vector<double> probs(kVocab * kVocab, 0.0);
    TokenDist p1 = Target({7});
    for (size_t i = 0; i < p1.size(); ++i) {
      TokenDist p2 = Target({7, p1.ids()[i]});
      for (size_t k = 0; k < p2.size(); ++k) probs[p1.ids()[i] * kVocab + p2.ids()[k]] = p1.probs()[i] * p2.probs()[k];
    }
    return probs;
  }
};

ChiSquareResult RunJointTest(const World& w, size_t branches, size_t L, int samples, uint64_t seed) {
  Rng rng(seed);
  std::vector<int64_t> counts(kVocab * kVocab, 0);
  for (int s = 0; s < samples; ++s) {
    auto [a, b] = w.FirstTwo(branches, L, rng);
    counts[a * kVocab + b]++;
  }
  ChiSquareResult r = ChiSquareTest(counts, w.ExactJoint());
  std::printf("  B=%zu L=%zu: chi2 %.1f, dof %d, p %.3g\n", branches, L, r.statistic, r.degrees_of_freedom, r.p_value);
  return r;
}

TEST(ChiSquare, SurvivalFunctionMatchesKnownValues) {
  EXPECT_NEAR(ChiSquareSurvival(3.841458820694124, 1), 0.05, 1e-9);
  EXPECT_NEAR(ChiSquareSurvival(18.307038053275146, 10), 0.05, 1e-9);
  EXPECT_NEAR(ChiSquareSurvival(124.34211340400407, 100), 0.05, 1e-8);
  EXPECT_NEAR(ChiSquareSurvival(2.0, 2), std::exp(-1.0), 1e-12);
}

TEST(Transform, GreedyTopKTopPAndCandidates) {
  std::vector<float> l = {0.5f, 2.0f, 2.0f, -1.0f};
  EXPECT_EQ(Transform(l.data(), 4, {}).Argmax(), 1);  // tie: lowest id
  TokenDist t = Transform(l.data(), 4, {1.0, 0, 1.0});
  double z = std::exp(0.5) + 2 * std::exp(2.0) + std::exp(-1.0);
  EXPECT_NEAR(t.Prob(0), std::exp(0.5) / z, 1e-12);
  EXPECT_EQ(Transform(l.data(), 4, {1.0, 2, 1.0}).ids(), (std::vector<int32_t>{1, 2}));
  // top-p 0.5: the two tied 2.0 tokens hold 0.87 together; the first alone holds 0.43 < 0.5.
  EXPECT_EQ(Transform(l.data(), 4, {1.0, 0, 0.5}).ids(), (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(Transform(l.data(), 4, {1.0, 0, 0.4}).ids(), (std::vector<int32_t>{1}));
  std::vector<int32_t> cand = {40, 7, 9, 3};
  TokenDist c = Transform(l.data(), 4, {0.5, 0, 1.0}, cand.data());
  EXPECT_EQ(c.ids(), (std::vector<int32_t>{3, 7, 9, 40}));
  EXPECT_NEAR(c.Prob(7), c.Prob(9), 1e-12);
  EXPECT_THROW(ValidateSamplingParams({-1.0, 0, 1.0}), InvalidArgumentError);
  EXPECT_THROW(ValidateSamplingParams({1.0, -2, 1.0}), InvalidArgumentError);
  EXPECT_THROW(ValidateSamplingParams({1.0, 0, 0.0}), InvalidArgumentError);
  EXPECT_THROW(ValidateSamplingParams({NAN, 0, 1.0}), InvalidArgumentError);
}

TEST(Residual, IsNormalisedPositivePart) {
  TokenDist p({0, 1, 2}, {0.5, 0.3, 0.2});
  TokenDist q({1, 2, 5}, {0.1, 0.6, 0.3});
  TokenDist r = TokenDist::Residual(p, q);
  EXPECT_EQ(r.ids(), (std::vector<int32_t>{0, 1}));
  EXPECT_NEAR(r.Prob(0), 0.5 / 0.7, 1e-12);
  EXPECT_NEAR(r.Prob(1), 0.2 / 0.7, 1e-12);
}

TEST(VerifyGreedy, AcceptsTheLongestPrefixEqualToTheTargetArgmax) {
  // one branch
  Verdict v = VerifyGreedy({{4, 5, 6}}, {{4, 5, 9, 1}});
  EXPECT_EQ(v.accepted, 2u);
  EXPECT_EQ(v.next, 9);
  v = VerifyGreedy({{4, 5, 6}}, {{4, 5, 6, 1}});
  EXPECT_EQ(v.accepted, 3u);
  EXPECT_EQ(v.next, 1);
  v = VerifyGreedy({{3, 5}}, {{4, 5, 6}});
  EXPECT_EQ(v.accepted, 0u);
  EXPECT_EQ(v.next, 4);
  // several branches: the one starting with the root argmax wins
  v = VerifyGreedy({{3, 5}, {4, 8}, {2, 2}}, {{4, 0, 0}, {4, 8, 11}, {4, 0, 0}});
  EXPECT_EQ(v.branch, 1u);
  EXPECT_EQ(v.accepted, 2u);
  EXPECT_EQ(v.next, 11);
  v = VerifyGreedy({{3}, {2}}, {{4, 0}, {4, 0}});
  EXPECT_EQ(v.accepted, 0u);
  EXPECT_EQ(v.next, 4);
}

// The distribution tests: 40,000 seeded samples of the first two tokens, p > 1e-3 required.
constexpr int kSamples = 40000;

TEST(VerifySampled, ChainOutputFollowsTheTarget) {
  World w;
  w.params = {1.0, 0, 1.0};
  for (size_t L : {1u, 2u, 4u}) {
    auto r = RunJointTest(w, 1, L, kSamples, 100 + L);
    EXPECT_GT(r.p_value, 1e-3) << "L=" << L << " chi2=" << r.statistic << " dof=" << r.degrees_of_freedom;
  }
}

TEST(VerifySampled, BranchesOutputFollowsTheTarget) {
  World w;
  w.params = {0.8, 0, 1.0};
  for (size_t B : {2u, 3u}) {
    auto r = RunJointTest(w, B, 2, kSamples, 200 + B);
    EXPECT_GT(r.p_value, 1e-3) << "B=" << B << " chi2=" << r.statistic << " dof=" << r.degrees_of_freedom;
  }
}

TEST(VerifySampled, TopKTopPAndTemperatureApplyToTheTarget) {
  World w;
  w.params = {0.7, 6, 0.9};
  auto r = RunJointTest(w, 2, 3, kSamples, 300);
  EXPECT_GT(r.p_value, 1e-3) << "chi2=" << r.statistic << " dof=" << r.degrees_of_freedom;
}

TEST(VerifySampled, NegativeControlUnrestrictedDraftInTheRatioIsCaught) {
  World w;
  w.params = {1.0, 0, 1.0};
  w.broken_ratio = true;
  auto r = RunJointTest(w, 1, 2, kSamples, 400);
  EXPECT_LT(r.p_value, 1e-3) << "the broken rule went unnoticed: chi2=" << r.statistic;
}

}  // namespace
}  // namespace cascade
