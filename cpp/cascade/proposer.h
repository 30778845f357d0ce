// Drafting strategies: how a round's proposals are made. One implementation per strategy behind
// one interface (as llama.cpp's common/speculative.cpp has one per drafting method); the engine's
// speculative and branching steps take whichever the round uses:
//   DraftProposer      the draft model alone, over the whole vocabulary (mode 'speculative')
//   TinyDraftProposer  the tiny's K0 candidates, then the draft restricted to them, in one
//                      program (mode 'cascade'; docs/how-the-cascade-works.md, steps 1-2)
#pragma once

#include <cstdint>
#include <vector>

#include "cascade/acceptance.h"
#include "cascade/cost_model.h"
#include "cascade/distribution.h"
#include "cascade/random.h"
#include "model/decoder.h"

namespace cascade {

struct GenerateOptions;   // cascade/engine.h
struct GenerationStats;   // cascade/engine.h

// What one draft call needs from the round: the user's options, the sampler's randomness, the
// statistics to count into, and the committed tokens (the penalties' context).
struct ProposeContext {
  const GenerateOptions& options;
  Rng& rng;
  GenerationStats& stats;
  const std::vector<int32_t>& committed;
  // How many guessed tokens this call may feed after its inputs (the chain's steps left after
  // it, at most kLookaheadTokens; 0: none).
  int64_t lookahead = 0;
};

// Up to `count` guesses of the tokens after committed ++ proposed: the tokens that followed the
// latest earlier occurrence of the last two (searching back at most `window` tokens); without
// one, the token that followed the latest earlier occurrence of the last token (one guess); empty
// when there is neither. Measured on SmolLM2 chat answers (session 10): a first guess from two
// tokens exists at 27% of positions and is the draft's greedy token at 65% of those; a linear
// predictor from the draft's hidden state and the last token reached 19% top-1. Session 17
// (cascade_run, 256 tokens, T = 0): the one-token fallback doubled the guessing calls (49 -> 97
// of ~230) at about half their hit rate, draft calls 243 -> 227 (cascade) and 239 -> 218
// (speculative); two fallback guesses saved 3 calls more but cost ~10% more per call.
std::vector<int32_t> LookaheadGuess(const std::vector<int32_t>& committed, const std::vector<int32_t>& proposed,
                                    size_t count, size_t window = 4096);
// Guessed tokens per call. Measured (6 chat requests x 128 tokens, T = 0, q4 draft): session 10,
// row-major q4 kernel: 3 cut the speculative draft calls 18% but each guessing call cost ~1.8
// draft steps, so 1 was better (draft time -6%). Session 11, q4 in panels (verify(3) ~ decode(1)):
// draft calls 1224 without lookahead, 1064 / 1016 / 1002 / 986 with 1 / 2 / 3 / 4 guesses; draft
// time -11% / -13% / -9% / -11% (speculative), -7% / -9% / -8% / -6% (cascade), one run each
// against its own run without (runs without varied +-8% among themselves).
constexpr int64_t kLookaheadTokens = 2;

class Proposer {
 public:
  virtual ~Proposer() = default;
  // The cost model's name for the rounds this strategy drives.
  virtual StepKind kind() const = 0;
  // One draft call: `inputs` (usually one token; a round's first call also feeds what the draft
  // has not seen) at positions position..; returns the proposal after the last of them. At T > 0
  // appends the distribution it was drawn from to proposal.q (the q~ of the acceptance ratio).
  virtual int32_t Propose(const std::vector<int32_t>& inputs, int64_t position, const ProposeContext& context,
                          Proposal& proposal) = 0;
  // The distribution after `input` at `position` without sampling, and (ranked) its `top` most
  // likely tokens: the shared first step of several branches. T = 0 ranks by the plain softmax.
  virtual TokenDist Distribution(int32_t input, int64_t position, const ProposeContext& context,
                                 std::vector<int32_t>* ranked, size_t top) = 0;

 protected:
  // The draft's rows for `inputs` at `position`; *row is the last input's. When the call before
  // fed a guess that this call's input turned out to be (same chain, next position, same head),
  // its rows already hold this step and no call is made. Otherwise one draft call, which with
  // context.lookahead also feeds LookaheadGuess's token after the inputs.
  const ForwardResult& DraftRows(DecoderModel& draft, const std::vector<int32_t>& inputs, int64_t position,
                                 const HeadSpec& head, const ProposeContext& context, const Proposal& proposal,
                                 size_t* row);
  // Whether a call now would feed lookahead guesses (DraftRows).
  static bool WouldGuess(const ProposeContext& context, const Proposal& proposal);
  // Calls outside a chain's steps (the branches' shared first step) end any lookahead. (A chain's
  // first step always does: a round that ended early, e.g. aborted, leaves nothing usable.)
  void ForgetAhead() { ahead_.valid = false; }

 private:
  ForwardResult rows_;
  // The guessed rows of rows_ (valid: the last call fed guesses, the first `used` of them were
  // right): guess k is the step of the chain `proposal` with `proposed` + 1 + k tokens, input
  // tokens[k] at position + k, head `head`, in row first_row + k.
  struct Ahead {
    bool valid = false;
    const Proposal* proposal = nullptr;
    size_t proposed = 0;
    int64_t position = 0;
    std::vector<int32_t> tokens;
    size_t used = 0;
    HeadSpec head;
    size_t first_row = 0;
  } ahead_;
};

// The draft model's full next-token distribution.
class DraftProposer : public Proposer {
 public:
  explicit DraftProposer(DecoderModel& draft) : draft_(draft) {}
  StepKind kind() const override { return StepKind::kSpeculative; }
  int32_t Propose(const std::vector<int32_t>& inputs, int64_t position, const ProposeContext& context,
                  Proposal& proposal) override;
  TokenDist Distribution(int32_t input, int64_t position, const ProposeContext& context, std::vector<int32_t>* ranked,
                         size_t top) override;

 private:
  DecoderModel& draft_;
};

// The tiny's K0 candidates, then the draft's distribution restricted to them (zero elsewhere),
// computed in one program (HeadKind::kCandidates). Every GenerateOptions::coverage_every-th call
// also measures gamma0 (the draft's unrestricted argmax among the candidates), or the next call
// after it that would feed no lookahead guesses: a measuring call feeds none (its full head is
// one more program shape per width), so measuring a step that had guesses to feed cost the next
// step its lookahead (cascade_run, 256 tokens: draft calls 227 with the samples where due, 218
// without samples and 218 with them deferred).
class TinyDraftProposer : public Proposer {
 public:
  explicit TinyDraftProposer(DecoderModel& draft) : draft_(draft) {}
  StepKind kind() const override { return StepKind::kCascade; }
  int32_t Propose(const std::vector<int32_t>& inputs, int64_t position, const ProposeContext& context,
                  Proposal& proposal) override;
  TokenDist Distribution(int32_t input, int64_t position, const ProposeContext& context, std::vector<int32_t>* ranked,
                         size_t top) override;

 private:
  DecoderModel& draft_;
  int64_t calls_ = 0;         // for spacing the gamma0 samples
  bool sample_due_ = false;  // a gamma0 sample waits for a call without guesses
};

// ---- shared by the proposers and the engine's steps ----
// Throws Error(kAborted) when the caller asked to stop (GenerateOptions::interrupted).
void CheckInterrupted(const GenerateOptions& options, const char* stage);
// Plain greedy decoding: the model's argmax head is the answer. Bias and penalties move the
// argmax, so with them even T = 0 takes the full logits and the argmax after the transform.
bool ArgmaxOnly(const SamplingParams& sampling);
HeadSpec HeadFor(const SamplingParams& sampling);
// The token taken from a transformed distribution: its argmax at T = 0 (no randomness), else a draw.
int32_t Choose(const TokenDist& dist, const SamplingParams& sampling, Rng& rng);

}  // namespace cascade
