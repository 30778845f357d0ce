// The cost model's auto-mode choices (cascade/cost_model.h): every kind is explored first, then
// the best prediction is exploited, and a kind is tried again now and then only when its
// prediction is close to the best (counted over the model's life, not per generation).
#include <gtest/gtest.h>

#include <map>

#include "cascade/cost_model.h"

namespace cascade {
namespace {

const std::vector<int64_t> kLengths = {1, 2, 4, 6};

// Feeds a round of a kind as the engine does: its costs and its acceptance.
void Observe(CostModel& m, StepKind kind, double decode_ms, double draft_ms, double acceptance) {
  if (kind == StepKind::kTarget) {
    m.ObserveDecode(decode_ms);
    m.ObserveRoundTokens(1);
    return;
  }
  m.ObserveDraftStep(kind, draft_ms);  // a round's draft time per proposal
  m.ObserveVerify(7, decode_ms * 1.3);
  const int64_t accepted = static_cast<int64_t>(acceptance * 6 + 0.5);
  m.ObserveAcceptance(kind, 6, accepted);
  m.ObserveRoundTokens(accepted + 1);
}

// Decodes timed past the window the first rounds leave short (target-only is retried until then).
void SettleDecode(CostModel& m, double decode_ms = 10.0) {
  while (m.decode_samples() < 9) m.ObserveDecode(decode_ms);
}

std::map<StepKind, int> RunRounds(CostModel& m, int rounds, double spec_draft_ms, double cascade_draft_ms) {
  std::map<StepKind, int> counts;
  for (int r = 0; r < rounds; ++r) {
    const StepChoice c = m.Choose(true, true, kLengths);
    ++counts[c.kind];
    Observe(m, c.kind, 10.0, c.kind == StepKind::kCascade ? cascade_draft_ms : spec_draft_ms, 0.95);
  }
  return counts;
}

TEST(cost_model, ExploresEveryKindThenExploitsTheBest) {
  CostModel m;
  // Speculation at ~1.8x target-only, the cascade ~8% ahead of it.
  std::map<StepKind, int> first = RunRounds(m, 7, 5.0, 4.5);
  EXPECT_EQ(first[StepKind::kTarget], 3);  // three decodes, two rounds of each drafting kind
  EXPECT_EQ(first[StepKind::kSpeculative], 2);
  EXPECT_EQ(first[StepKind::kCascade], 2);
  SettleDecode(m);
  std::map<StepKind, int> later = RunRounds(m, 96, 5.0, 4.5);
  // Target-only (~0.55x the best) is never tried again; speculation (at ~0.93 of the best, above the 0.85 share) now and then.
  EXPECT_EQ(later[StepKind::kTarget], 0);
  EXPECT_GE(later[StepKind::kSpeculative], 1);
  EXPECT_LE(later[StepKind::kSpeculative], 3);
  EXPECT_GE(later[StepKind::kCascade], 93);
}

TEST(cost_model, ReexplorationIsCountedOverTheModelsLife) {
  // Generations of 12 rounds each (~84 tokens, shorter than the re-exploration period): a per-generation
  // count would never reach a re-exploration round; the model's own count does.
  CostModel m;
  RunRounds(m, 7, 5.0, 4.5);
  int speculative = 0;
  for (int generation = 0; generation < 8; ++generation) speculative += RunRounds(m, 12, 5.0, 4.5)[StepKind::kSpeculative];
  EXPECT_GE(speculative, 1);
}

// Where target-only is the best kind (a block-stored target on Zen 4, whose q4 draft reads the
// same bytes): the first rounds of the other kinds and their re-tries propose a few tokens, not
// k1; re-tries are paced in tokens (a target-only round gives one); one slow decode among the
// first three does not set the decode cost.
TEST(cost_model, TargetOnlyBestExploresShortAndRetriesRarely) {
  CostModel m;
  const std::vector<int64_t> lengths = {1, 2, 3, 4, 6, 8, 12};
  auto round = [&](const StepChoice& c, double decode_ms) {
    if (c.kind == StepKind::kTarget) {
      m.ObserveDecode(decode_ms);
      m.ObserveRoundTokens(1);
      return;
    }
    m.ObserveDraftStep(c.kind, c.kind == StepKind::kCascade ? 3.6 : 3.9);
    m.ObserveVerify(c.length + 1, 4.4 * (1 + 0.25 * static_cast<double>(c.length)));  // Zen 4: ~0.25 a token
    m.ObserveAcceptance(c.kind, 20, 19);
    m.ObserveRoundTokens(c.length + 1);
  };
  for (int r = 0; r < 7; ++r) {
    const StepChoice c = m.Choose(true, true, lengths);
    if (r < 3) {
      EXPECT_EQ(c.kind, StepKind::kTarget) << r;
    } else {
      EXPECT_NE(c.kind, StepKind::kTarget) << r;
      EXPECT_LE(c.length, 4) << "an exploring round proposes a few tokens";
    }
    round(c, r == 0 ? 7.9 : 4.4);  // the first decode slow
  }
  EXPECT_NEAR(m.DecodeEstimate(), 4.4, 1e-9);
  int drafting = 0, target = 0;
  for (int r = 0; r < 480; ++r) {
    const StepChoice c = m.Choose(true, true, lengths);
    if (c.kind == StepKind::kTarget) {
      ++target;
    } else {
      ++drafting;
      EXPECT_LE(c.length, 4) << "a re-try proposes a few tokens";
    }
    round(c, 4.4);
  }
  const StepChoice cascade = m.BestLength(StepKind::kCascade, lengths);
  EXPECT_GT(m.PredictedSpeedup(StepKind::kCascade, cascade.length), 0.85) << "close enough to be re-tried";
  EXPECT_LT(m.PredictedSpeedup(StepKind::kCascade, cascade.length), 1.0);
  EXPECT_GE(drafting, 1);
  EXPECT_LE(drafting, 4) << "counted in rounds (16) it was re-tried every 48 one-token rounds";
  EXPECT_GE(target, 470);
}

// The first three decodes all slow (8 ms against 4.4 steady: a busy moment of a shared host): the
// cascade looks 1.6x faster than it is. Target-only is retried until its window fills, and auto
// then runs it (session 22: auto had run the cascade at 0.8x for a predicted 1.6x).
TEST(cost_model, SlowFirstDecodesAreOutvoted) {
  CostModel m;
  const std::vector<int64_t> lengths = {1, 2, 3, 4, 6, 8, 12};
  int target_late = 0;
  for (int r = 0; r < 400; ++r) {
    const StepChoice c = m.Choose(true, true, lengths);
    if (c.kind == StepKind::kTarget) {
      m.ObserveDecode(r < 3 ? 8.0 : 4.4);
      m.ObserveRoundTokens(1);
      if (r >= 300) ++target_late;
      continue;
    }
    const int64_t L = c.exploring ? c.length : 12;
    m.ObserveDraftStep(c.kind, c.kind == StepKind::kCascade ? 3.6 : 3.9);
    m.ObserveVerify(L + 1, 4.4 * (1 + 0.25 * static_cast<double>(L)));
    m.ObserveAcceptance(c.kind, 20, 19);
    m.ObserveRoundTokens(L / 2 + 1);
  }
  EXPECT_NEAR(m.DecodeEstimate(), 4.4, 1e-9);
  EXPECT_GE(target_late, 95) << "the last 100 rounds run target-only";
}

TEST(cost_model, AKindThatFallsBehindIsLeft) {
  CostModel m;
  RunRounds(m, 7, 5.0, 4.5);
  SettleDecode(m);
  // The cascade's draft becomes slow (e.g. its tiny no longer fits a cache): speculation takes over.
  std::map<StepKind, int> counts = RunRounds(m, 48, 5.0, 12.0);
  EXPECT_GE(counts[StepKind::kSpeculative], 40);
}

TEST(cost_model, OneSlowRoundDoesNotFlipTheChoice) {
  CostModel m;
  RunRounds(m, 7, 5.0, 4.5);
  SettleDecode(m);
  RunRounds(m, 10, 5.0, 4.5);
  // A round of the cascade at 1.7x its cost (the machine busy for ~50 ms), then its usual cost.
  StepChoice c = m.Choose(true, true, kLengths);
  if (c.exploring) c = m.Choose(true, true, kLengths);  // a re-exploration due now: the next call exploits
  ASSERT_EQ(c.kind, StepKind::kCascade);
  Observe(m, StepKind::kCascade, 10.0, 4.5 * 1.7, 0.95);
  std::map<StepKind, int> counts = RunRounds(m, 12, 5.0, 4.5);
  // (At most one re-exploration round of speculation falls in 12 rounds: every 160 tokens, in turn.)
  EXPECT_LE(counts[StepKind::kSpeculative], 1) << "one slow round must not hand the next rounds to the slower kind";
  EXPECT_NEAR(m.draft_ms(StepKind::kCascade), 4.5, 1e-9);
}

TEST(cost_model, NearTiesDoNotFlipTheChoice) {
  CostModel m;
  RunRounds(m, 7, 5.0, 4.9);
  SettleDecode(m);
  // Draft costs that wobble +-6% round to round around a 2% gap: the choice stays put.
  StepKind last = m.Choose(true, true, kLengths).kind;
  int switches = 0;
  for (int r = 0; r < 60; ++r) {
    const StepChoice c = m.Choose(true, true, kLengths);
    if (c.kind != last) ++switches;
    last = c.kind;
    const double wobble = (r % 2 ? 1.06 : 0.94);
    Observe(m, c.kind, 10.0, (c.kind == StepKind::kCascade ? 4.9 : 5.0) * wobble, 0.95);
  }
  EXPECT_LE(switches, 8) << "re-explorations go and come back (4 in 60 rounds); noise should add none";
}

TEST(cost_model, HostWorkCountsInThePrediction) {
  CostModel m;
  m.ObserveDecode(10);
  m.ObserveDecode(10);
  m.ObserveDecode(10);  // past the exploration rounds
  m.ObserveVerify(7, 13);
  for (StepKind kind : {StepKind::kSpeculative, StepKind::kCascade}) {
    m.ObserveDraftStep(kind, 5);
    m.ObserveDraftStep(kind, 5);
    m.ObserveAcceptance(kind, 6, 6);
  }
  const double before = m.Throughput(StepKind::kSpeculative, 6);
  EXPECT_DOUBLE_EQ(before, m.Throughput(StepKind::kCascade, 6));
  // Sampling over the whole vocabulary after speculation's verify: 2 ms per target row.
  m.ObserveHost(StepKind::kSpeculative, 7, 14.0);
  m.ObserveHost(StepKind::kCascade, 7, 0.7);
  m.ObserveHost(StepKind::kTarget, 1, 1.0);
  const double e = CostModel::ExpectedTokens(m.acceptance(StepKind::kSpeculative), 6);
  EXPECT_NEAR(m.Throughput(StepKind::kSpeculative, 6), e / (6 * 5 + m.VerifyMs(6) + 7 * 2.0), 1e-12);
  EXPECT_NEAR(m.Throughput(StepKind::kTarget, 0), 1.0 / 11.0, 1e-12);
  EXPECT_LT(m.Throughput(StepKind::kSpeculative, 6), before);
  EXPECT_EQ(m.Choose(true, true, kLengths).kind, StepKind::kCascade);
}

// As a cascade generation with k1 12 sees them (session 12, cascade_run --compare: the decode it
// then timed took 10.8 ms): a short first round, full rounds, a short last one. The BF16 (AMX)
// verify costs about the same from 2 to 16 rows, so a line through them misreads the decode
// (13.0 ms: the demo's prediction was 30% high).
TEST(cost_model, DecodeReadOffVerifiesOfSeveralLengths) {
  CostModel m;
  m.ObserveVerify(5, 14.4);
  for (double ms : {16.9, 19.1, 17.3, 18.1, 17.1, 17.4, 17.1, 17.3, 17.5, 17.6}) m.ObserveVerify(13, ms);
  m.ObserveVerify(3, 14.5);
  EXPECT_NEAR(m.DecodeEstimate(), 10.8, 0.1 * 10.8);
}

TEST(cost_model, DecodeReadOffVerifiesOfOneLength) {
  // A cascade generation never decodes alone: the speedup it reports divides by a decode the
  // model infers from its verify calls (all of one length). A BF16 verify of 7 tokens costs
  // ~1.35 decodes (decoder_bench): a 12.8 ms decode gives 17.3 ms verifies.
  CostModel m;
  for (int i = 0; i < 20; ++i) m.ObserveVerify(7, 17.3);
  EXPECT_NEAR(m.DecodeEstimate(), 12.8, 0.05 * 12.8);
  EXPECT_NEAR(m.VerifyMs(6), 17.3, 1e-9);
  EXPECT_NEAR(m.VerifyMs(4), 12.8 * 1.24, 0.05 * 12.8);
}

}  // namespace
}  // namespace cascade
