// The seed's cost model, measured online, and the choices it drives: the proposal length L per
// step (dynamic horizon) and, in `auto` mode, which of target-only / draft -> target /
// tiny -> draft -> target to run.
//
//   C_total = sum_i [W_i / BW_i + T_i] * E[N_i]                       (docs/how-the-cascade-works.md, "Metrics and the cost model")
//   tokens per target call with per-position acceptance a and length L:
//     E = (1 - a^(L+1)) / (1 - a)                                      (same section)
//   throughput(target)    = 1 / (c_decode + h_target)
//   throughput(spec, L)   = E(a_spec, L)    / (L * c_draft + c_verify(L) + (L + 1) h_spec)
//   throughput(cascade, L)= E(a_cascade, L) / (L * c_tiny_draft + c_verify(L) + (L + 1) h_cascade)
// (h_kind: the host's work per target row after the call, ObserveHost). In auto mode a drafting
// kind whose draft is behind (after target-only rounds, or at a generation's start) first pays the
// catch-up c_catch_up(D) = D * (ms per token of earlier catch-ups): over the H tokens left it runs
// at H / (H / throughput + c_catch_up(D)) (Choose).
// Costs are per call and measured as the engine runs: c_decode and c_draft the median of the last
// few calls (RecentMedian), c_verify(L) a line a + b * (L + 1) fitted to the verify calls seen;
// the acceptance rates and host work are exponential moving averages.
// The bandwidth term W_i / BW_i is reported as the memory-bound floor of each call.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace cascade {

enum class StepKind { kTarget, kSpeculative, kCascade };

// Where a generation stands when its next round is chosen (auto mode).
struct RoundContext {
  // Tokens the draft must be fed before a drafting round can start (its cache lags behind the
  // text after target-only rounds, or holds another text at a generation's start). 0: none.
  int64_t draft_behind = 0;
  // Tokens the generation may still produce; -1: unknown.
  int64_t tokens_left = -1;
};

struct StepChoice {
  StepKind kind = StepKind::kTarget;
  int64_t length = 0;             // L (0 for target-only)
  double predicted_tokens_per_ms = 0;
  bool exploring = false;  // an explore or re-explore round: run `length` even without a dynamic horizon
};

// The median of the last kWindow samples (draft costs: one per round since session 10, the round's
// draft time per proposal; target decodes: one per call). On this shared 2-core machine a whole
// round now and then runs 1.5-2x slow; with an EMA one such cascade round left the cascade
// predicted ~15% slow, and since a kind not run is not measured, auto kept speculation for the
// rest of the generation and the next (session 9, a script like `bench --suite modes`: 16
// speculative rounds in a row while the cascade was as fast). One slow round is a minority here.
class RecentMedian {
 public:
  static constexpr int kWindow = 9;
  void Add(double sample);
  double value() const;  // 0 before the first sample
  // The lower tercile of the window (the smallest of up to 3 samples): a host's noise only ever
  // slows a call, and a burst of it can fill half a window (below).
  double lower() const;
  int64_t count() const { return count_; }

 private:
  std::array<double, kWindow> samples_{};
  int64_t count_ = 0;
};

class CostModel {
 public:
  CostModel();

  // Observations.
  void ObserveDecode(double ms);                          // target, T = 1
  void ObserveVerify(int64_t tokens, double ms);          // target, T = L + 1
  void ObserveDraftStep(StepKind kind, double ms);        // a round's draft time per proposal
  void ObserveAcceptance(StepKind kind, int64_t examined, int64_t accepted);
  // The tiny's coverage (gamma0): of `samples` cascade draft steps checked, `hits` had the draft's
  // unrestricted choice among the candidates.
  void ObserveCoverage(int64_t samples, int64_t hits);
  // Host work after a target call (sampling transforms, acceptance) over `rows` target rows: at
  // T > 0 it is ~10% of a round (a transform of 49,152 logits per row), and without it the model
  // predicted speculation at T = 0.8 18% too fast (session 8).
  void ObserveHost(StepKind kind, int64_t rows, double ms);
  // The draft fed `tokens` it was behind by in one catch-up (several calls), taking `ms`.
  void ObserveCatchUp(int64_t tokens, double ms);
  // Tokens a round gave (any kind): re-exploration is paced in tokens, not rounds.
  void ObserveRoundTokens(int64_t tokens) { tokens_ += tokens; }

  // Expected tokens per target call.
  static double ExpectedTokens(double acceptance, int64_t length);
  double VerifyMs(int64_t length) const;
  double Throughput(StepKind kind, int64_t length) const;  // tokens per ms
  // The best L in `lengths` for a kind (speculative or cascade).
  StepChoice BestLength(StepKind kind, const std::vector<int64_t>& lengths) const;
  // The best of the allowed kinds for the next auto-mode round. Kinds never observed are explored
  // first (target-only 3 rounds, the others 2 short ones); then the best prediction, keeping the
  // last choice unless another is predicted >4% faster. Counted in tokens over the model's life
  // (not per generation): target-only, the yardstick, is tried again every 32 when predicted at
  // >= 90% of the best (a round of it costs at most one token's worth of the difference), and
  // every 256 whatever its prediction (its decodes then timed afresh);
  // speculation and the cascade in turn every 160 with a short proposal, when at >= 85%. A drafting
  // kind whose draft is behind (`where`) pays the catch-up first: it is exploited only when its
  // gain over the tokens left repays that, and re-tried only when the catch-up and the round's
  // loss cost at most kReexploreBudget of the tokens until the next re-try.
  StepChoice Choose(bool allow_speculative, bool allow_cascade, const std::vector<int64_t>& lengths,
                    const RoundContext& where = {});

  // Per-position acceptance of a proposer's rounds. Both run the same draft, so one estimate of
  // how often the target takes the draft's choice serves both (updated by either kind's rounds:
  // how hard the text is shows in both); the cascade's is that times the tiny's coverage, since its
  // proposal is the draft's choice when the candidates hold it. With an estimate per kind, a stretch
  // of text the draft got wrong cut the cascade's (0.98 -> 0.93), speculation took over, and the
  // cascade's stayed there past the stretch: auto ran speculation at 0.9x the cascade (session 23).
  // A prior of 0.5 until observed; coverage 1 until sampled.
  double acceptance(StepKind kind) const;
  double coverage() const { return coverage_.Ratio(1.0); }
  // The target's decode cost: the lower tercile of its recent decodes. With their median, a burst
  // of slow decodes at the end of a target-only generation (7.5 ms against ~4.5) set it for the
  // next, and auto ran the cascade at 0.94x target-only for a predicted 1.7x (session 23).
  double decode_ms() const { return decode_ms_.lower(); }
  int64_t decode_samples() const { return decode_ms_.count(); }
  // The target decode cost: measured, else read off the verify line at one token, else 1 ms.
  double DecodeEstimate() const;
  // One draft call of a proposer, ms (0 until observed).
  double draft_ms(StepKind kind) const { return Drafting(kind).step_ms.value(); }
  // Feeding the draft `tokens` it is behind by, ms: measured per token on catch-ups of >= 8
  // tokens, at least one draft call; before any, a third of a draft call per token.
  double CatchUpMs(int64_t tokens) const;
  // Predicted speedup of a choice over target-only decoding.
  double PredictedSpeedup(StepKind kind, int64_t length) const;

 private:
  static void Ema(double& value, int64_t& count, double sample);
  // What the model has learned about one proposer (StepKind::kSpeculative, kCascade).
  struct DraftingCosts {
    RecentMedian step_ms;
  };
  // A ratio of two exponential moving averages (pooled over recent rounds: a round rejected at its
  // first position, 0 of 1, weighs less than one of 6 of 6).
  struct PooledRatio {
    double min_weight = 0;  // a new observation's weight once warmed up (plain means before)
    double numerator = 0, denominator = 0;
    int64_t count = 0;
    void Add(double num, double den);
    double Ratio(double prior) const { return denominator > 0 ? numerator / denominator : prior; }
  };
  PooledRatio agreement_;  // accepted / examined positions of the draft's own choices
  PooledRatio coverage_;   // the tiny's hits / gamma0 samples (the constructor's prior)
  const DraftingCosts& Drafting(StepKind kind) const { return kind == StepKind::kCascade ? cascade_ : speculative_; }
  DraftingCosts& Drafting(StepKind kind) { return kind == StepKind::kCascade ? cascade_ : speculative_; }
  RecentMedian decode_ms_;
  RecentMedian catch_up_token_ms_;  // per token, catch-ups of >= 8 tokens
  double host_row_ms_[3] = {0, 0, 0};  // per StepKind
  int64_t host_n_[3] = {0, 0, 0};
  DraftingCosts speculative_, cascade_;
  // Least-squares line through (tokens, ms) of verify calls.
  double sx_ = 0, sy_ = 0, sxx_ = 0, sxy_ = 0;
  double decode_equivalent_sum_ = 0;  // sum over verify calls of ms / (1 + s (tokens - 1))
  int64_t verify_n_ = 0;
  int64_t tokens_ = 0;                  // ObserveRoundTokens's sum
  int64_t decoded_at_tokens_ = 0;        // tokens_ at the last decode sample
  int64_t reexplored_at_tokens_ = 0;    // tokens_ at the last re-exploration of a drafting kind
  int64_t target_retried_at_tokens_ = 0;  // ...and of target-only
  uint64_t reexplore_turn_ = 0;         // which drafting kind re-explores next
  StepKind last_exploited_ = StepKind::kTarget;  // Choose's last exploiting choice
};

// Memory read bandwidth of this machine in GB/s (sums a buffer larger than the caches; takes
// ~100 ms). For the W_i / BW_i term of the cost model.
double MeasureReadBandwidthGBs(size_t bytes = size_t{256} << 20);

}  // namespace cascade
