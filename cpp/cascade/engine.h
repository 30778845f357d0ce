// The generation loop: target-only decoding and speculative decoding (draft -> target), and the
// cascade (tiny -> draft -> target) built on them. One readable function per stage; the loop in
// Generate() reads like the algorithm of docs/how-the-cascade-works.md:
//   catch up the caches -> propose (a Proposer: the draft, or tiny -> draft; cascade/proposer.h)
//   -> verify (one target call) -> accept (exact) -> commit.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cascade/acceptance.h"
#include "cascade/cost_model.h"
#include "cascade/distribution.h"
#include "cascade/proposer.h"
#include "cascade/random.h"
#include "model/decoder.h"
#include "model/tiny.h"
#include "model/weights.h"
#include "pjrt/client.h"

namespace cascade {

enum class DecodeMode { kTarget, kSpeculative, kCascade, kAuto };
const char* DecodeModeName(DecodeMode mode);

// The most proposals of a generation's first round, whatever k1: its first tokens reach the
// caller after a few draft steps (with k1 = 12 the first round's 12 draft steps added ~20 ms to
// the time to first token in npm run bench, session 11).
constexpr int64_t kFirstRoundLength = 4;

struct EngineOptions {
  WeightPrecision target_precision = WeightPrecision::kBF16;
  // q4: 4-bit blocks read ~0.6 of int8's bytes, and on a 4-bit GGUF (most downloads) they are the
  // file's own weights, closer to the target than int8 (docs/precision.md: SmolLM2 Q4_1, top-1
  // vs f32 0.977 against int8's 0.969). A draft from 8- or 16-bit weights may prefer int8.
  WeightPrecision draft_precision = WeightPrecision::kQ4;
  int64_t max_context = 1024;
  // Element type of each model's KV cache, f32 or bf16 (a bf16 cache halves its memory and the
  // bytes attention reads; each new key and value is rounded to bf16 before any row attends to
  // it). Unset: DecoderModel's default (model/decoder.h DefaultKvDtype: on the CPU plugin bf16 for
  // a bf16 / bf16q4 target in the fused layer stack, f32 for f32 weights and for the draft
  // whatever its weights; bf16 elsewhere). On the CPU
  // plugin a bf16 *draft* cache cost acceptance (12 chat requests x 128 tokens: 10.30 -> 9.85
  // tokens per target call) and saved nothing at those positions; a bf16 target cache kept it
  // (10.32) and at position 1,500 cut a decode's attention from ~3.9 to ~3.0-3.4 ms
  // (docs/bench/decoder.md, sessions 18-19).
  std::optional<DType> target_kv_dtype, draft_kv_dtype;
  // Self-speculative draft: the target's first `draft_layers` layers + final norm + head, used
  // when no draft model is given. 0: chosen by the cost model (see ChooseDraftLayers).
  int64_t draft_layers = 0;
  // L (k1): draft tokens per target call, for greedy generations that do not set their own (in
  // cascade mode at most their k0; sampling ones: sampled_proposal_length below), and what the
  // self-speculative draft's depth is chosen for. The q4 draft's proposals are accepted ~94-98%
  // of the time. 6 in sessions 6-10 (k1 = 8 measured below it then); 12 since session 11, when a
  // draft step with lookahead and a bf16 verify of up to 16 tokens got cheaper: 12 chat requests
  // x 128 tokens (K0 256), cascade T = 0 156 / 172 / 184 / 179 / 166 tok/s at k1 = 6 / 8 / 10 /
  // 13 / 16, T = 0.8 130 / 135 / 138 / 142 / 143; speculative T = 0 174 / 181 / 160 at 10 / 13 /
  // 16, T = 0.8 106 / 117 / 116.
  int64_t proposal_length = 12;
  // The same for generations that sample (T > 0). 6: at T = 0 the q4 draft's greedy proposals are
  // accepted ~98-100% of the time and a longer round wastes little; sampled, ~95% per position,
  // and the proposals drafted past a rejection are wasted, more of them in a longer round. Bench
  // prompts x 128 tokens at T = 0.8, variants alternated in one process (session 26,
  // docs/how-the-cascade-works.md), k1 6 against 12: dense-stored target, cascade 1.08-1.15x in
  // five runs, auto 1.13x, speculative 1.11x; block-stored, speculative 1.16x. At T = 0 x 64
  // tokens 6 ran 0.91-0.98x of 12. A load's k1 (CascadeLoadOptions.k1) sets both.
  int64_t sampled_proposal_length = 6;
  // K0 (k0): the tiny's candidates per draft step, for generations that do not set their own.
  // 256 (64 before session 11): 12 chat requests x 128 tokens, tokens per target call at T = 0
  // 5.85 at 64, 6.24 at 256, 6.30 at 512; at T = 0.8 5.47 / 6.01 / 6.06; the draft step costs the
  // same (the 256 head rows are 147 KB of its ~80 MB). tok/s +3% (T = 0) and +12% (T = 0.8).
  int64_t candidates = 256;
  size_t device_index = 0;
  // pmap-style verification: the target (weights and KV cache) replicated on devices 0..D-1; with
  // several branches, each device verifies a balanced share of them in the same call.
  int64_t devices = 1;
  // Sequences whose KV caches stay resident for reuse (GenerateOptions::sequence): beyond it, the
  // least recently used one gives its caches up (its next call prefills from scratch). Each costs
  // one target and one draft cache (StepBytes' companion: CascadeEngine::SequenceBytes()).
  int64_t max_sequences = 4;
};

struct GenerateOptions {
  DecodeMode mode = DecodeMode::kSpeculative;
  SamplingParams sampling;
  uint64_t seed = 0;
  int64_t max_tokens = 128;
  // Which resident sequence (KV caches) to continue: the prompt's longest common prefix with what
  // that sequence's caches hold is not computed again (llama.cpp's prompt cache). Any id; ids the
  // engine has not seen start empty. 0 is the default sequence of plain generate calls.
  int64_t sequence = 0;
  std::vector<int32_t> stop_tokens;  // e.g. EOS ids: generation ends after emitting one
  // L (k1; the design's K1): draft tokens per target call. 0: EngineOptions' proposal_length at
  // T = 0, its sampled_proposal_length when sampling.
  int64_t proposal_length = 0;
  int64_t candidates = 0;       // K0 (k0): the tiny's candidates per draft step (cascade). 0: EngineOptions'
  // B: proposal branches per step (the design's several proposals). Their first tokens are drawn
  // i.i.d. from q~_1 (at T = 0: its top B), each continued as a chain; all are verified in one
  // target call with a tree mask and accepted by multi-step speculative sampling (SpecInfer).
  int64_t branches = 1;
  // Cascade mode: measure gamma0 (the draft's own argmax among the candidates) on one draft
  // step in `coverage_every` (that step also runs the full head). 0 turns it off.
  int64_t coverage_every = 8;
  // Draft lookahead (speculative and cascade rounds): when the text so far has an earlier
  // occurrence of its last two tokens, a draft call also feeds the token that followed them
  // there (kLookaheadTokens), a guess of its own proposal; when the proposal equals it, the next draft step is
  // already computed (rows of one call are bit-identical to separate calls, so the output does not
  // change). proposer.h, LookaheadGuess.
  bool lookahead = true;
  // Dynamic horizon (seed: future optimisation 1): pick L per step from the measured costs and
  // acceptance, among 1, 2, 3, 4, 6, 8, 12, 16 up to proposal_length.
  // Unset: off (in every mode since session 8; engine.cc Resolve says why).
  std::optional<bool> dynamic_length;
  // Called with each batch of newly committed tokens; return false to stop (abort, stop strings).
  std::function<bool(const std::vector<int32_t>&)> on_tokens;
  // Polled before every device call (each prefill chunk, draft step and verify): when it returns
  // true, Generate throws Error(kAborted) naming the stage. Nothing is left half-done: the caches
  // belong to the generation, so the engine stays usable.
  std::function<bool()> interrupted;
  // Testing only: use the draft's distribution without the sampling transform in the acceptance
  // ratio. This breaks exactness on purpose (the negative control of the distribution tests).
  bool broken_acceptance_for_testing = false;
};

struct StageTimes {
  double prefill_ms = 0;  // catching the caches up with the prompt
  double tiny_ms = 0;
  double draft_ms = 0;
  double target_ms = 0;
  double host_ms = 0;  // sampling, acceptance, bookkeeping
  double compile_ms = 0;  // compiling (or loading cached) programs on first use of a shape: not in the others
};

struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;   // prompt tokens the target's cache already held (not prefilled again)
  int64_t generated_tokens = 0;
  int64_t target_calls = 0;    // verify / decode calls after the prompt
  int64_t draft_calls = 0;
  int64_t proposed = 0;        // draft tokens proposed
  int64_t attempted = 0;       // proposals the target examined (position j only if 1..j-1 accepted)
  int64_t accepted = 0;
  int64_t coverage_samples = 0;  // draft steps where gamma0 was measured
  int64_t coverage_hits = 0;     // ... whose unrestricted draft argmax was among the candidates
  int64_t lookahead_guesses = 0;  // draft calls that fed a guess of their proposal (GenerateOptions::lookahead)
  int64_t lookahead_hits = 0;     // ... whose proposal was the guess: a draft step without a call
  std::vector<int64_t> position_attempted;  // per proposal position j
  std::vector<int64_t> position_accepted;
  StageTimes times;
  double total_ms = 0;
  std::string stop_reason;  // "max_tokens", "stop_token", "callback", "context"
  int64_t steps_target = 0, steps_speculative = 0, steps_cascade = 0;  // rounds per kind (auto mode mixes them)
  int64_t length_sum = 0;  // sum of L over speculative/cascade rounds
  int64_t proposal_length = 0;  // the generation's L (k1) as resolved (GenerateOptions::proposal_length); 0: target mode
  double predicted_speedup = 0;  // the cost model's prediction for the rounds run, vs target-only
  double measured_speedup = -1;  // tokens/s of this run / the measured target-only rate (-1: no target decode measured yet)

  double tau() const { return target_calls ? static_cast<double>(generated_tokens) / target_calls : 0; }
  double gamma21() const { return attempted ? static_cast<double>(accepted) / attempted : 0; }
  double gamma_total() const { return proposed ? static_cast<double>(accepted) / proposed : 0; }
  // -1 when not measured (no cascade steps).
  double gamma0() const { return coverage_samples ? static_cast<double>(coverage_hits) / coverage_samples : -1; }
  double tokens_per_second() const {
    const double ms = total_ms - times.prefill_ms - times.compile_ms;
    return ms > 0 ? generated_tokens * 1000.0 / ms : 0;
  }
};

// One candidate of the self-speculative draft choice.
struct DraftCandidate {
  int64_t layers = 0;
  double agreement = 0;          // share of calibration positions where draft and target argmax agree
  double relative_cost = 0;      // estimated draft step cost / target decode cost (weight bytes read, StepBytes; engine.cc StepCostBytes)
  double predicted_speedup = 0;  // the cost model's speedup over target-only at the planned L
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated tokens only
  GenerationStats stats;
};

class CascadeEngine {
 public:
  // `draft`: a compatible model (same vocabulary), or nullopt for the self-speculative draft.
  CascadeEngine(std::shared_ptr<Client> client, const ModelWeights& target, const std::optional<ModelWeights>& draft,
                const EngineOptions& options);

  GenerateResult Generate(const std::vector<int32_t>& prompt, const GenerateOptions& options);

  // The target's logits after each of `tokens` ([T * vocab], f32), from an empty context.
  std::vector<float> TargetLogits(const std::vector<int32_t>& tokens);

  // Compiles the programs a greedy generation with these settings uses (decode, verify(L+1), draft
  // steps, the cascade's fused step if a tiny is installed), calling progress(done, total) after
  // each; later generations then start without compiling.
  void Warmup(int64_t proposal_length, int64_t candidates, const std::function<void(int64_t, int64_t)>& progress = {});

  // Forgets a sequence and frees its caches (a closed conversation). Unknown ids are ignored.
  void ReleaseSequence(int64_t id);
  // Device bytes one resident sequence costs (a target and a draft KV cache).
  int64_t SequenceBytes() const;
  int64_t resident_sequences() const;
  int64_t max_sequences() const { return std::max<int64_t>(1, options_.max_sequences); }

  // Installs the tiny model (stage 0) on the draft: enables DecodeMode::kCascade.
  void SetTiny(const TinyWeights& tiny);
  bool has_tiny() const { return has_tiny_; }

  const CostModel& cost_model() const { return *cost_; }  // the last generation's regime
  // How the self-speculative draft's depth was chosen (empty when given or fixed).
  const std::vector<DraftCandidate>& draft_candidates() const { return draft_candidates_; }
  const ModelConfig& target_config() const { return target_->config(); }
  const ModelConfig& draft_config() const { return draft_->config(); }
  DecoderModel& target() { return *target_; }
  DecoderModel& draft() { return *draft_; }

 private:
  struct Sequence;  // the committed tokens and how far each cache has seen them
  // A sequence between calls: what its caches hold, and the caches themselves while another
  // sequence has the models' (the active one's caches are inside the models).
  struct ResidentSequence {
    std::vector<int32_t> tokens;  // slots 0..valid-1 of each cache hold these tokens' keys/values
    int64_t target_valid = 0;
    int64_t draft_valid = 0;
    DecoderModel::KvCache target_cache, draft_cache;
    uint64_t last_used = 0;
  };
  // Puts sequence `id`'s caches into the models (stashing the active one's) and returns it, its
  // valid counts cleared when someone else used a model's cache since (evaluate, a tiny fit).
  ResidentSequence& Activate(int64_t id);

  GenerateOptions Resolve(const std::vector<int32_t>& prompt, const GenerateOptions& requested) const;
  static void Resume(const ResidentSequence& resident, Sequence& seq);
  void PredictSpeedup(GenerationStats& stats) const;
  void CatchUp(DecoderModel& model, int64_t& valid, const std::vector<int32_t>& tokens, int64_t upto,
               const GenerateOptions& options, const char* stage);
  void TargetOnlyStep(Sequence& seq, const GenerateOptions& options, Rng& rng, GenerationStats& stats);
  // B > 1 branches: proposals as a tree, one tree-masked verify call.
  void BranchingStep(Sequence& seq, const GenerateOptions& options, Proposer& proposer, int64_t length, Rng& rng,
                     GenerationStats& stats);
  void RecordAcceptance(StepKind kind, int64_t proposed, int64_t length, int64_t accepted, GenerationStats& stats);
  // Proposer -> target: L proposals, verified in one target call, accepted exactly.
  void SpeculativeStep(Sequence& seq, const GenerateOptions& options, Proposer& proposer, int64_t length, Rng& rng,
                       GenerationStats& stats);

  std::shared_ptr<Client> client_;
  EngineOptions options_;
  std::unique_ptr<DecoderModel> target_;
  std::unique_ptr<DecoderModel> draft_;
  // The cost model's choice of N for the self-speculative draft: measures how often the first N
  // layers (+ final norm + head) agree with the target's greedy choice on text the target writes,
  // estimates the draft step's cost from the parameters it reads, and keeps the N with the best
  // predicted throughput E(a, L) / (L c_draft + c_verify(L)).
  int64_t ChooseDraftLayers(const ModelWeights& target, const DecoderOptions& draft_options);

  std::vector<DraftCandidate> draft_candidates_;
  bool has_tiny_ = false;
  // The drafting strategies (cascade/proposer.h): the draft alone, and (with a tiny) tiny -> draft.
  std::unique_ptr<Proposer> draft_proposer_, tiny_draft_proposer_;
  // Learned over the engine's lifetime, one per sampling regime: greedy steps read argmax heads,
  // sampled ones full logits (host sampling; far cheaper over the cascade's K0 candidates), and
  // acceptance differs with the temperature. cost_ points at the current generation's.
  CostModel costs_[2];
  CostModel* cost_ = &costs_[0];
  std::map<int64_t, ResidentSequence> sequences_;
  int64_t active_sequence_ = 0;
  uint64_t target_version_ = 0, draft_version_ = 0;  // the models' cache_version() after the active sequence's last call
  uint64_t use_clock_ = 0;
};

// The first `layers` layers of `model` with its final norm and head: a self-speculative draft.
ModelWeights TruncateLayers(const ModelWeights& model, int64_t layers);
// Weight bytes one decode step of a model reads at `precision` (the embedding only when it is the
// tied head): the W of the cost model.
int64_t StepBytes(const ModelConfig& config, WeightPrecision precision);

}  // namespace cascade
