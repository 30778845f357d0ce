#include "cascade/cost_model.h"

#include "kernels/int8_matmul.h"
#include "kernels/thread_team.h"
#include "util/huge_pages.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

namespace cascade {

namespace {
constexpr double kEmaWeight = 0.2;      // weight of a new sample once warmed up
constexpr int64_t kExploreRounds = 2;   // auto mode: rounds of each drafting kind before exploiting
// ...and of target-only: the median of 3 decodes (one round, one token each). Of 2, a single slow
// call (4-7 ms more in ~10-20% of a 2-vCPU host's sampled decodes) set the decode at 7.8 ms
// against 4.4 and auto ran the cascade at 0.8x target-only for a predicted 1.1x (session 22).
constexpr int64_t kTargetExploreRounds = 3;
// auto mode: retry a kind now and then (they take turns), every this many tokens. Counted in
// rounds (16), target-only rounds of one token each re-tried speculation every 48 tokens, each time
// a draft catch-up and a round at ~0.8x: auto ran target-only steps at 0.83x target-only (session
// 22, Zen 4, where speculation over the block-stored target is ~0.8x).
constexpr int64_t kReexploreTokens = 160;
// Target-only is tried again more often: its decode cost is the yardstick of every prediction, and
// the first decodes of a run can all be slow (three at 7.9-8.1 ms against 4.4 steady on a 2-vCPU
// host): without fresh samples auto ran the cascade for a predicted 1.6x that measured 0.8x.
// A host busy for a while (decodes at 12-13 ms against 5) left a median that a retry every 480
// tokens could not move back: auto then kept speculation at 0.55x target-only (session 22).
constexpr int64_t kTargetRetryTokens = 32;
// ...when predicted at >= this share of the best, or while fewer decodes than the window are
// timed (three slow first ones, say). At 0.7 a cascade at ~1.4x target-only (the dense-stored
// target at T = 0.8 on Zen 4) was interrupted every 32 tokens, ~5% of its rate (session 23); a
// decode cost off by that much is caught by the stale-decode retry below instead.
constexpr double kTargetRetryShare = 0.9;
// ...and whatever its prediction when its newest decode is this many tokens old: a decode cost
// from a busy moment otherwise stays while another kind runs (one round per 256 tokens costs at
// most ~0.4% where target-only is half as fast as the best).
constexpr int64_t kDecodeStaleTokens = 256;
// Explore and re-explore rounds propose at most this many tokens: a kind far behind then costs
// a few draft steps, not k1 of them (cost and acceptance are learned per proposal and position).
constexpr int64_t kExploreLength = 4;
// ...but only a kind predicted at >= this share of the best: the drift re-exploring guards
// against is ~10-20% (the text changes, the machine's load), and a round of a kind far behind
// costs a round's worth of tokens (a target-only round at ~0.5x of speculation gave up ~4% of a
// 128-token generation in `bench --suite modes`, session 8). At T = 0.8 speculation is predicted
// at ~0.8 of the cascade: with a share of 0.75 it was re-tried every 48 rounds, each time a round
// at ~0.75x (session 9), though no drift seen here closes a 20% gap.
constexpr double kReexploreShare = 0.85;
// Exploiting, the kind of the last round is kept unless another is predicted this much faster:
// the per-call costs are medians of samples that vary ~10% round to round, and speculation and the
// cascade are predicted within ~5% of each other here, so without it auto flipped between them on
// noise.
constexpr double kSwitchMargin = 0.04;
// Until both are timed, a verify of x tokens is taken to cost a decode times (1 + s (x - 1)): the
// BF16 target (AMX) verified 5 tokens for 1.16-1.2 decodes and 7 for ~1.35 (decoder_bench,
// session 9: s ~ 0.05); with the cheaper decode of the block-stored target (sessions 15-16) a
// verify of 11 costs 1.64 decodes and of 13 1.83 (s ~ 0.065-0.07), and at s = 0.06 the demo (a
// cascade run that never decodes alone) put the decode at 5.7 ms against ~5.0 and predicted 1.42x
// for a measured 1.12x. With s = 0.1 of the verify's own cost instead, session 9's demo put the
// decode at 15.8 ms against 12.8.
constexpr double kVerifyTokenShare = 0.07;
// A re-try of a drafting kind whose draft is behind first feeds it everything since: after 160
// tokens of target-only rounds, ~50 ms of q4 draft calls, ~11 target decodes (Zen 4). One such
// re-try of the cascade (predicted at 0.93x target-only, so re-tried) cost a 128-token generation
// 20% of its rate (auto 174.5 tokens/s against target-only 221.0, session 23). A re-try is made
// only when the catch-up and the round's expected loss cost at most this share of the time the
// tokens until the next re-try take at the best rate.
constexpr double kReexploreBudget = 0.03;
// Catch-ups of at least this many tokens give the per-token cost (smaller ones are a call's
// fixed cost more than tokens).
constexpr int64_t kCatchUpSampleTokens = 8;
// Without a tokens-left figure, a switch to a drafting kind is taken to last this many tokens.
constexpr int64_t kUnknownHorizonTokens = 256;
double VerifyOverDecode(double tokens) { return 1.0 + kVerifyTokenShare * (tokens - 1.0); }
}  // namespace

void RecentMedian::Add(double sample) {
  samples_[static_cast<size_t>(count_ % kWindow)] = sample;
  ++count_;
}

double RecentMedian::value() const {
  const int64_t n = std::min<int64_t>(count_, kWindow);
  if (n == 0) return 0;
  std::array<double, kWindow> sorted = samples_;
  std::sort(sorted.begin(), sorted.begin() + n);
  // An even count (only before the window fills): the mean of the middle two.
  return n % 2 ? sorted[static_cast<size_t>(n / 2)] : 0.5 * (sorted[static_cast<size_t>(n / 2 - 1)] + sorted[static_cast<size_t>(n / 2)]);
}

double RecentMedian::lower() const {
  const int64_t n = std::min<int64_t>(count_, kWindow);
  if (n == 0) return 0;
  std::array<double, kWindow> sorted = samples_;
  std::sort(sorted.begin(), sorted.begin() + n);
  return sorted[static_cast<size_t>((n - 1) / 3)];
}

// The tiny's coverage: misses are rare (K0 = 256 covers ~0.998), so a slow average that starts
// from 20 samples' worth of full coverage (means of 1 hit in 1 sample), and one early miss does
// not read as 0.8.
constexpr double kCoverageWeight = 0.01;
constexpr int64_t kCoveragePriorSamples = 20;

CostModel::CostModel() : agreement_{kEmaWeight}, coverage_{kCoverageWeight, 1.0, 1.0, kCoveragePriorSamples} {}

void CostModel::Ema(double& value, int64_t& count, double sample) {
  // Plain mean for the first samples (they include nothing special), EMA afterwards.
  ++count;
  const double w = std::max(kEmaWeight, 1.0 / static_cast<double>(count));
  value += w * (sample - value);
}

void CostModel::ObserveDecode(double ms) {
  decode_ms_.Add(ms);
  decoded_at_tokens_ = tokens_;
}

void CostModel::ObserveVerify(int64_t tokens, double ms) {
  const double x = static_cast<double>(tokens);
  sx_ += x;
  sy_ += ms;
  sxx_ += x * x;
  sxy_ += x * ms;
  decode_equivalent_sum_ += ms / VerifyOverDecode(x);
  ++verify_n_;
}

void CostModel::ObserveCatchUp(int64_t tokens, double ms) {
  if (tokens >= kCatchUpSampleTokens) catch_up_token_ms_.Add(ms / static_cast<double>(tokens));
}

double CostModel::CatchUpMs(int64_t tokens) const {
  if (tokens <= 0) return 0;
  double call = 0;  // one draft call: the cheaper drafting kind's measured step, else a decode
  for (StepKind kind : {StepKind::kSpeculative, StepKind::kCascade})
    if (draft_ms(kind) > 0 && (call == 0 || draft_ms(kind) < call)) call = draft_ms(kind);
  if (call == 0) call = DecodeEstimate();
  const double per_token = catch_up_token_ms_.count() > 0 ? catch_up_token_ms_.value() : call / 3;
  return std::max(call, static_cast<double>(tokens) * per_token);
}

void CostModel::ObserveHost(StepKind kind, int64_t rows, double ms) {
  if (rows <= 0) return;
  const int i = static_cast<int>(kind);
  Ema(host_row_ms_[i], host_n_[i], ms / static_cast<double>(rows));
}

void CostModel::ObserveDraftStep(StepKind kind, double ms) {
  DraftingCosts& d = Drafting(kind);
  d.step_ms.Add(ms);
}

void CostModel::PooledRatio::Add(double num, double den) {
  ++count;
  const double w = std::max(min_weight, 1.0 / static_cast<double>(count));
  numerator += w * (num - numerator);
  denominator += w * (den - denominator);
}

void CostModel::ObserveAcceptance(StepKind kind, int64_t examined, int64_t accepted) {
  if (examined <= 0) return;
  // Per-position acceptance: accepted of the examined positions, pooled over recent rounds (the
  // ratio of two moving averages). An average of per-round ratios let one round rejected at its
  // first position (0 of 1) weigh as much as a round of 6 of 6: the estimate swung by 0.2 a round
  // and auto mode left a mode for dozens of rounds after one unlucky round. A cascade round's
  // acceptances are the draft's agreements the tiny's candidates held: divided by the coverage.
  double agreed = static_cast<double>(accepted);
  if (kind == StepKind::kCascade) agreed = std::min(static_cast<double>(examined), agreed / std::max(0.05, coverage()));
  agreement_.Add(agreed, static_cast<double>(examined));
}

void CostModel::ObserveCoverage(int64_t samples, int64_t hits) {
  if (samples > 0) coverage_.Add(static_cast<double>(hits), static_cast<double>(samples));
}

double CostModel::acceptance(StepKind kind) const {
  const double agreement = agreement_.Ratio(0.5);
  return kind == StepKind::kCascade ? agreement * coverage() : agreement;
}

double CostModel::ExpectedTokens(double a, int64_t length) {
  a = std::clamp(a, 0.0, 0.999999);
  return (1.0 - std::pow(a, static_cast<double>(length + 1))) / (1.0 - a);
}

double CostModel::DecodeEstimate() const {
  if (decode_ms_.count() > 0) return decode_ms();
  // No decode timed yet: each verify read back through the prior ratio, averaged. Not the verify
  // line at one token: the BF16 (AMX) kernel costs about the same from 2 to 16 rows and a decode
  // runs another path, so the line through verifies of 3, 5 and 13 tokens (the first and last
  // rounds are short) put the decode at 13.0 ms against 10.8 measured, and the demo predicted
  // 2.1-2.8x for a measured 1.6-1.8x (session 12).
  if (verify_n_ > 0) return std::max(1e-3, decode_equivalent_sum_ / static_cast<double>(verify_n_));
  return 1.0;
}

double CostModel::VerifyMs(int64_t length) const {
  const double x = static_cast<double>(length + 1);
  const double decode = DecodeEstimate();
  if (verify_n_ == 0) return decode * VerifyOverDecode(x);
  const double mean_x = sx_ / verify_n_, mean_y = sy_ / verify_n_;
  const double var = sxx_ / verify_n_ - mean_x * mean_x;
  if (var < 1e-9) {  // one length seen: the line through it and a measured decode, else the prior
    // (the prior's slope is the AMX target's, ~0.07 a token; on Zen 4 a token costs ~0.25).
    if (decode_ms_.count() > 0 && mean_x > 1.5) return std::max(decode, decode + (mean_y - decode) * (x - 1) / (mean_x - 1));
    return mean_y * VerifyOverDecode(x) / VerifyOverDecode(mean_x);
  }
  const double b = std::max(0.0, (sxy_ / verify_n_ - mean_x * mean_y) / var);
  return std::max(decode, mean_y + b * (x - mean_x));
}

double CostModel::Throughput(StepKind kind, int64_t length) const {
  const double decode = DecodeEstimate();
  const double host_row = host_row_ms_[static_cast<int>(kind)];
  if (kind == StepKind::kTarget) return 1.0 / (decode + host_row);
  const double draft = draft_ms(kind) > 0 ? draft_ms(kind) : decode * 0.25;
  return ExpectedTokens(acceptance(kind), length) /
         (static_cast<double>(length) * draft + VerifyMs(length) + static_cast<double>(length + 1) * host_row);
}

double CostModel::PredictedSpeedup(StepKind kind, int64_t length) const {
  return Throughput(kind, length) / Throughput(StepKind::kTarget, 0);
}

StepChoice CostModel::BestLength(StepKind kind, const std::vector<int64_t>& lengths) const {
  StepChoice best{kind, lengths.empty() ? 1 : lengths.front(), -1};
  for (int64_t L : lengths) {
    const double t = Throughput(kind, L);
    if (t > best.predicted_tokens_per_ms) best = {kind, L, t};
  }
  return best;
}

StepChoice CostModel::Choose(bool allow_speculative, bool allow_cascade, const std::vector<int64_t>& lengths,
                             const RoundContext& where) {
  // The longest allowed length up to kExploreLength.
  int64_t explore_length = lengths.empty() ? 1 : lengths.front();
  for (int64_t L : lengths)
    if (L <= kExploreLength) explore_length = std::max(explore_length, L);
  auto short_round = [&](StepKind kind) { return StepChoice{kind, explore_length, Throughput(kind, explore_length), true}; };
  // Explore: every kind a few rounds first.
  if (decode_ms_.count() < kTargetExploreRounds) return {StepKind::kTarget, 0, Throughput(StepKind::kTarget, 0)};
  if (allow_speculative && speculative_.step_ms.count() < kExploreRounds) return short_round(StepKind::kSpeculative);
  if (allow_cascade && cascade_.step_ms.count() < kExploreRounds) return short_round(StepKind::kCascade);
  // Exploit: the best prediction. A drafting kind is compared by its rate over the tokens left
  // with the draft's catch-up paid first (its steady rate when the draft is not behind).
  const double catch_up = CatchUpMs(where.draft_behind);
  const double horizon = static_cast<double>(where.tokens_left >= 0 ? std::max<int64_t>(1, where.tokens_left) : kUnknownHorizonTokens);
  auto caught_up = [&](double rate) { return rate > 0 ? horizon / (horizon / rate + catch_up) : 0.0; };
  StepChoice best{StepKind::kTarget, 0, Throughput(StepKind::kTarget, 0)};
  double best_rate = best.predicted_tokens_per_ms;  // best's rate with any catch-up
  StepChoice speculative, cascade;
  double speculative_rate = 0, cascade_rate = 0;
  if (allow_speculative) {
    speculative = BestLength(StepKind::kSpeculative, lengths);
    speculative_rate = caught_up(speculative.predicted_tokens_per_ms);
    if (speculative_rate > best_rate) best = speculative, best_rate = speculative_rate;
  }
  if (allow_cascade) {
    cascade = BestLength(StepKind::kCascade, lengths);
    cascade_rate = caught_up(cascade.predicted_tokens_per_ms);
    if (cascade_rate > best_rate) best = cascade, best_rate = cascade_rate;
  }
  // Stay with the last exploited kind unless the best is clearly ahead of it.
  const bool previous_speculative = last_exploited_ == StepKind::kSpeculative && allow_speculative;
  const bool previous_cascade = last_exploited_ == StepKind::kCascade && allow_cascade;
  if (previous_speculative || previous_cascade) {
    const StepChoice& previous = previous_speculative ? speculative : cascade;
    const double previous_rate = previous_speculative ? speculative_rate : cascade_rate;
    if (previous.kind != best.kind && previous_rate >= (1 - kSwitchMargin) * best_rate) best = previous, best_rate = previous_rate;
  }
  last_exploited_ = best.kind;
  // Re-explore now and then (costs drift): target-only often, the drafting kinds in turn and only
  // when they are close and the re-try is cheap.
  const double target = Throughput(StepKind::kTarget, 0);
  const bool target_close = target >= kTargetRetryShare * best_rate;
  const bool decode_stale = tokens_ - decoded_at_tokens_ >= kDecodeStaleTokens;
  if (best.kind != StepKind::kTarget &&
      (decode_stale || ((decode_ms_.count() < RecentMedian::kWindow || target_close) &&
                        tokens_ - target_retried_at_tokens_ >= kTargetRetryTokens))) {
    target_retried_at_tokens_ = tokens_;
    return {StepKind::kTarget, 0, target, true};
  }
  if (tokens_ - reexplored_at_tokens_ >= kReexploreTokens) {
    reexplored_at_tokens_ = tokens_;
    const bool cascade_turn = reexplore_turn_++ % 2 == 1;
    const StepChoice& candidate = cascade_turn ? cascade : speculative;
    const bool allowed = cascade_turn ? allow_cascade : allow_speculative;
    if (allowed && candidate.kind != best.kind &&
        candidate.predicted_tokens_per_ms >= kReexploreShare * best_rate) {
      const StepChoice probe = short_round(candidate.kind);
      const double tokens = ExpectedTokens(acceptance(candidate.kind), probe.length);
      const double loss = std::max(0.0, tokens / probe.predicted_tokens_per_ms - tokens / best_rate);
      if (catch_up + loss <= kReexploreBudget * static_cast<double>(kReexploreTokens) / best_rate) return probe;
    }
  }
  return best;
}

double MeasureReadBandwidthGBs(size_t bytes) {
  // What the decode kernels can read: every thread of the kernel team, the widest loads the CPU
  // has (a scalar loop on one thread measured a third of it, session 3).
  const size_t n = bytes / sizeof(float);
  // In 2 MiB pages, as the weights are (util/huge_pages.h).
  const std::unique_ptr<float[], HugePageFree> buffer = AllocateFloatsInHugePages(n);
  for (size_t i = 0; i < n; ++i) buffer[i] = static_cast<float>(i & 1023);
  const int64_t chunk = int64_t{1} << 16, chunks = static_cast<int64_t>((n + chunk - 1) / chunk);
  std::vector<float> sums(static_cast<size_t>(chunks));
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    kernels::ThreadTeam::Global().Run(chunks, [&](int64_t c) {
      const float* p = buffer.get() + c * chunk;
      sums[c] = kernels::SumForBandwidth(p, p + std::min<int64_t>(chunk, static_cast<int64_t>(n) - c * chunk));
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, static_cast<double>(n * sizeof(float)) / s / 1e9);
  }
  volatile float sink = sums[0];
  (void)sink;
  return best;
}

}  // namespace cascade
