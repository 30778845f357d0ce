// Exactness of the acceptance rules on synthetic models, where the target's true distribution is
// known: the cascade's output must follow it (chi-square, fixed seeds), and a deliberately broken
// rule must be caught by the same test.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
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
  // Negative control of the penalties: p_j counts only the committed tokens, not the chain's
  // x_1..x_j-1 it is used after.
  bool stale_target_history = false;

  // The penalties' context for `ctx`, whose first `committed` tokens are committed and the rest a
  // speculative chain's proposals (`stale`: the chain left out).
  static TokenHistory History(const std::vector<int32_t>& ctx, size_t committed = SIZE_MAX, bool stale = false) {
    TokenHistory h;
    h.committed = ctx.data();
    h.committed_size = std::min(committed, ctx.size());
    h.pending = ctx.data() + h.committed_size;
    h.pending_size = stale ? 0 : ctx.size() - h.committed_size;
    return h;
  }
  TokenDist Target(const std::vector<int32_t>& ctx, size_t committed = SIZE_MAX) const {
    auto l = Logits(ctx, 1, 2.0);
    return Transform(l.data(), l.size(), params, nullptr, History(ctx, committed, stale_target_history));
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
    return Transform(l.data(), l.size(), params, cand.data(), History(ctx));
  }
  TokenDist DraftUnrestricted(const std::vector<int32_t>& ctx) const {
    auto full = Logits(ctx, 2, draft_scale);
    return Transform(full.data(), full.size(), params, nullptr, History(ctx));
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
    Verdict v = VerifySampled(props, [&](size_t b, size_t j) { return Target(contexts[b][j], ctx.size()); }, rng);
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


// ---- minP, penalties, logit bias -------------------------------------------------------------

SamplingParams AtTemperature(double t) {
  SamplingParams p;
  p.temperature = t;
  return p;
}

// Softmax of `logits` (temperature 1) at `id`.
double Softmax(const std::vector<double>& logits, size_t id) {
  double z = 0;
  for (double l : logits) z += std::exp(l);
  return std::exp(logits[id]) / z;
}

TEST(Transform, LogitBiasIsAddedFirstAndMinusInfinityBans) {
  std::vector<float> l = {0.5f, 2.0f, 1.0f, -1.0f};
  SamplingParams p = AtTemperature(1.0);
  p.logit_bias = {{1, -INFINITY}, {3, 1.5}};
  TokenDist t = Transform(l.data(), 4, p);
  EXPECT_EQ(t.Prob(1), 0.0);
  const double z = std::exp(0.5) + std::exp(1.0) + std::exp(0.5);
  EXPECT_NEAR(t.Prob(0), std::exp(0.5) / z, 1e-7);
  EXPECT_NEAR(t.Prob(3), std::exp(0.5) / z, 1e-7);
  p.temperature = 0;  // greedy takes the argmax after the bias: 0.5, -inf, 1.0, 0.5
  EXPECT_EQ(Transform(l.data(), 4, p).Argmax(), 2);
  // Over candidates the bias goes by token id: ids 3, 1, 0 with logits 0.5, 2.0, 1.0.
  std::vector<int32_t> cand = {3, 1, 0};
  p.temperature = 1.0;
  TokenDist c = Transform(l.data(), 3, p, cand.data());
  EXPECT_EQ(c.ids(), (std::vector<int32_t>{0, 3}));
  EXPECT_NEAR(c.Prob(3), std::exp(2.0) / (std::exp(2.0) + std::exp(1.0)), 1e-7);
  // Everything banned: an error over the vocabulary, the uniform distribution over candidates.
  p.logit_bias = {{0, -INFINITY}, {1, -INFINITY}, {2, -INFINITY}, {3, -INFINITY}};
  EXPECT_THROW(Transform(l.data(), 4, p), InvalidArgumentError);
  p.temperature = 0;
  EXPECT_THROW(Transform(l.data(), 4, p), InvalidArgumentError);
  p.temperature = 1.0;
  TokenDist u = Transform(l.data(), 3, p, cand.data());
  EXPECT_EQ(u.ids(), (std::vector<int32_t>{0, 1, 3}));
  EXPECT_NEAR(u.Prob(1), 1.0 / 3, 1e-12);
  // A huge finite bias saturates (no +inf, no NaN).
  p.logit_bias = {{2, 1e300}};
  EXPECT_NEAR(Transform(l.data(), 4, p).Prob(2), 1.0, 1e-12);
}

TEST(Transform, RepeatPenaltyDividesPositiveAndMultipliesNegativeLogitsOfRecentTokens) {
  std::vector<float> l = {2.0f, -1.0f, 1.0f, 0.5f};
  SamplingParams p = AtTemperature(1.0);
  p.repeat_penalty = 2.0;
  const std::vector<int32_t> history = {0, 1, 0};
  TokenDist t = Transform(l.data(), 4, p, nullptr, TokenHistory(history));
  const std::vector<double> expected = {1.0, -2.0, 1.0, 0.5};  // counts do not matter, presence does
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(t.Prob(static_cast<int32_t>(i)), Softmax(expected, i), 1e-7) << i;
  // The chain's pending proposals count like committed tokens.
  const std::vector<int32_t> none;
  const int32_t pending[] = {2};
  TokenDist q = Transform(l.data(), 4, p, nullptr, TokenHistory(none, pending, 1));
  EXPECT_NEAR(q.Prob(2), Softmax({2.0, -1.0, 0.5, 0.5}, 2), 1e-7);
  // The window: the last penalty_last_n tokens of committed ++ pending.
  p.penalty_last_n = 1;
  TokenDist w = Transform(l.data(), 4, p, nullptr, TokenHistory(history, pending, 1));  // only 2 counts
  EXPECT_NEAR(w.Prob(0), Softmax({2.0, -1.0, 0.5, 0.5}, 0), 1e-7);
  p.penalty_last_n = 0;  // off
  TokenDist off = Transform(l.data(), 4, p, nullptr, TokenHistory(history));
  EXPECT_NEAR(off.Prob(0), Softmax({2.0, -1.0, 1.0, 0.5}, 0), 1e-7);
  p.penalty_last_n = -1;  // the whole context
  std::vector<int32_t> long_history(200, 3);
  long_history[0] = 0;
  TokenDist all = Transform(l.data(), 4, p, nullptr, TokenHistory(long_history));
  EXPECT_NEAR(all.Prob(0), Softmax({1.0, -1.0, 1.0, 0.25}, 0), 1e-7);
  p.penalty_last_n = 64;  // the default window misses the first token
  TokenDist recent = Transform(l.data(), 4, p, nullptr, TokenHistory(long_history));
  EXPECT_NEAR(recent.Prob(0), Softmax({2.0, -1.0, 1.0, 0.25}, 0), 1e-7);
  // Greedy: the argmax after the penalty (2.0 / 2 < 1.5).
  std::vector<float> g = {2.0f, 1.5f};
  p.temperature = 0;
  const std::vector<int32_t> zero = {0};
  EXPECT_EQ(Transform(g.data(), 2, p, nullptr, TokenHistory(zero)).Argmax(), 1);
  EXPECT_EQ(Transform(g.data(), 2, p).Argmax(), 0);  // no history: no penalty
}

TEST(Transform, PresenceAndFrequencyPenaltiesSubtractPerOccurrence) {
  std::vector<float> l = {1.0f, 1.0f, 1.0f, 1.0f};
  SamplingParams p = AtTemperature(1.0);
  p.presence_penalty = 0.5;
  p.frequency_penalty = 0.25;
  const std::vector<int32_t> history = {2, 2, 1};
  const int32_t pending[] = {2};
  // Token 2 occurs 3 times: 1 - 0.5 - 0.75; token 1 once: 1 - 0.5 - 0.25.
  TokenDist t = Transform(l.data(), 4, p, nullptr, TokenHistory(history, pending, 1));
  const std::vector<double> expected = {1.0, 0.25, -0.25, 1.0};
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(t.Prob(static_cast<int32_t>(i)), Softmax(expected, i), 1e-7) << i;
  // Over candidates, by token id.
  std::vector<int32_t> cand = {2, 3};
  TokenDist c = Transform(l.data(), 2, p, cand.data(), TokenHistory(history, pending, 1));
  EXPECT_NEAR(c.Prob(2), Softmax({-0.25, 1.0}, 0), 1e-7);
  // Window of 2: {1, 2}, once each.
  p.penalty_last_n = 2;
  TokenDist w = Transform(l.data(), 4, p, nullptr, TokenHistory(history, pending, 1));
  EXPECT_NEAR(w.Prob(2), Softmax({1.0, 0.25, 0.25, 1.0}, 2), 1e-7);
  // Negative penalties encourage repeats.
  p.penalty_last_n = 64;
  p.presence_penalty = -1.0;
  p.frequency_penalty = 0;
  p.temperature = 0;
  EXPECT_EQ(Transform(l.data(), 4, p, nullptr, TokenHistory(history)).Argmax(), 1);
}

TEST(Transform, MinPKeepsTokensWithinAFactorOfTheMostLikelyAfterTemperature) {
  // Weights 1, 0.5, 0.2, 0.05 at temperature 1.
  std::vector<float> l = {0.0f, std::log(0.5f), std::log(0.2f), std::log(0.05f)};
  SamplingParams p = AtTemperature(1.0);
  p.min_p = 0.3;
  TokenDist t = Transform(l.data(), 4, p);
  EXPECT_EQ(t.ids(), (std::vector<int32_t>{0, 1}));
  EXPECT_NEAR(t.Prob(0), 2.0 / 3, 1e-6);
  p.min_p = 0.1;
  EXPECT_EQ(Transform(l.data(), 4, p).ids(), (std::vector<int32_t>{0, 1, 2}));
  // Temperature 2 flattens first: weights 1, 0.71, 0.45, 0.22.
  p.temperature = 2.0;
  p.min_p = 0.3;
  EXPECT_EQ(Transform(l.data(), 4, p).ids(), (std::vector<int32_t>{0, 1, 2}));
  p.min_p = 1.0;  // only the most likely
  EXPECT_EQ(Transform(l.data(), 4, p).ids(), (std::vector<int32_t>{0}));
  p.min_p = 0.0;
  EXPECT_EQ(Transform(l.data(), 4, p).size(), 4u);
  // With candidates.
  std::vector<int32_t> cand = {9, 4, 6, 2};
  p.temperature = 1.0;
  p.min_p = 0.3;
  EXPECT_EQ(Transform(l.data(), 4, p, cand.data()).ids(), (std::vector<int32_t>{4, 9}));
}

// Expects `params` to be rejected with a message naming `field`.
void ExpectRejected(const SamplingParams& params, const std::string& field, int64_t vocab = 0) {
  try {
    ValidateSamplingParams(params, vocab);
    ADD_FAILURE() << field << " was accepted";
  } catch (const InvalidArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
  }
}

TEST(Transform, TheNewOptionsAreValidatedByName) {
  SamplingParams ok = AtTemperature(0.7);
  ok.min_p = 0.1;
  ok.repeat_penalty = 1.1;
  ok.presence_penalty = -2;
  ok.frequency_penalty = 2;
  ok.penalty_last_n = -1;
  ok.logit_bias = {{0, -INFINITY}, {99, 3.5}};
  EXPECT_NO_THROW(ValidateSamplingParams(ok, 100));
  SamplingParams p = ok;
  for (double bad : {-0.1, 1.5, static_cast<double>(NAN)}) {
    p.min_p = bad;
    ExpectRejected(p, "minP");
  }
  p = ok;
  for (double bad : {0.0, -1.0, static_cast<double>(INFINITY), static_cast<double>(NAN)}) {
    p.repeat_penalty = bad;
    ExpectRejected(p, "repeatPenalty");
  }
  p = ok;
  p.presence_penalty = NAN;
  ExpectRejected(p, "presencePenalty");
  p = ok;
  p.frequency_penalty = INFINITY;
  ExpectRejected(p, "frequencyPenalty");
  p = ok;
  p.penalty_last_n = -2;
  ExpectRejected(p, "penaltyLastN");
  p = ok;
  p.logit_bias[100] = 1;
  ExpectRejected(p, "logitBias", 100);  // outside the vocabulary
  p = ok;
  p.logit_bias[-1] = 1;
  ExpectRejected(p, "logitBias");
  p = ok;
  p.logit_bias[5] = INFINITY;
  ExpectRejected(p, "logitBias");
  p.logit_bias[5] = NAN;
  ExpectRejected(p, "logitBias");
}

// Each option (and all together), applied to p and q~ alike with the chain's own history (p_j and
// q~_j both see x_1..x_j-1), keeps the output distributed as the target's: chains and branches.
TEST(VerifySampled, MinPPenaltiesAndLogitBiasKeepSpeculativeSamplingExact) {
  std::vector<std::pair<const char*, SamplingParams>> cases;
  const SamplingParams base = AtTemperature(0.9);
  SamplingParams p = base;
  p.min_p = 0.2;
  cases.push_back({"minP", p});
  p = base;
  p.repeat_penalty = 1.8;
  cases.push_back({"repeatPenalty", p});
  p = base;
  p.presence_penalty = 1.2;
  cases.push_back({"presencePenalty", p});
  p = base;
  p.frequency_penalty = 0.9;
  cases.push_back({"frequencyPenalty", p});
  p.penalty_last_n = 2;
  cases.push_back({"frequencyPenalty, penaltyLastN 2", p});
  p = base;
  p.logit_bias = {{3, -INFINITY}, {5, 1.5}, {8, -0.7}};
  cases.push_back({"logitBias", p});
  p = AtTemperature(0.8);
  p.top_k = 8;
  p.top_p = 0.95;
  p.min_p = 0.05;
  p.repeat_penalty = 1.3;
  p.presence_penalty = 0.4;
  p.frequency_penalty = 0.3;
  p.logit_bias = {{3, -INFINITY}, {5, 1.0}};
  cases.push_back({"all together", p});
  uint64_t seed = 500;
  for (const auto& [name, params] : cases) {
    World w;
    w.params = params;
    for (auto [B, L] : {std::pair<size_t, size_t>{1, 3}, {2, 2}}) {
      auto r = RunJointTest(w, B, L, kSamples, seed++);
      EXPECT_GT(r.p_value, 1e-3) << name << " B=" << B << " L=" << L << " chi2=" << r.statistic;
    }
  }
}

// A bias that bans every candidate of some contexts: q~ falls back to the uniform over the
// candidates, which the target (probability 0 on all of them) always rejects: still exact.
TEST(VerifySampled, BiasBanningEveryCandidateStaysExact) {
  World w;
  w.params = AtTemperature(1.0);
  for (int32_t id : {0, 1, 2, 4, 6, 8, 9, 11}) w.params.logit_bias[id] = -INFINITY;
  w.candidates = 3;
  auto r = RunJointTest(w, 2, 2, kSamples, 600);
  EXPECT_GT(r.p_value, 1e-3) << "chi2=" << r.statistic;
}

// Negative controls with the new options: the draft's unrestricted softmax in the ratio, and a
// target whose penalties forget the chain's earlier proposals, are both caught.
TEST(VerifySampled, NegativeControlsWithPenaltiesAreCaught) {
  World w;
  w.params = AtTemperature(1.0);
  w.params.frequency_penalty = 1.5;
  w.params.logit_bias = {{5, 1.0}};
  w.broken_ratio = true;
  auto broken = RunJointTest(w, 1, 2, kSamples, 700);
  EXPECT_LT(broken.p_value, 1e-3) << "the broken ratio went unnoticed: chi2=" << broken.statistic;
  w.broken_ratio = false;
  w.stale_target_history = true;
  auto stale = RunJointTest(w, 1, 3, kSamples, 701);
  EXPECT_LT(stale.p_value, 1e-3) << "a stale penalty history went unnoticed: chi2=" << stale.statistic;
  w.stale_target_history = false;  // the same world, correct: passes
  auto right = RunJointTest(w, 1, 3, kSamples, 702);
  EXPECT_GT(right.p_value, 1e-3) << "chi2=" << right.statistic;
}

}  // namespace
}  // namespace cascade
