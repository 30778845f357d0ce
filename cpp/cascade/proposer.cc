#include "cascade/proposer.h"

#include <algorithm>
#include <string>

#include "cascade/engine.h"
#include "pjrt/errors.h"

namespace cascade {
namespace {

// The draft distribution as used in the acceptance ratio: the transformed one, or (testing
// only) the plain softmax, which breaks exactness.
TokenDist RatioDist(const float* logits, size_t vocab, const SamplingParams& sampling, bool broken) {
  if (!broken) return Transform(logits, vocab, sampling);
  SamplingParams plain;
  plain.temperature = 1.0;
  return Transform(logits, vocab, plain);
}

// T = 0 ranks by the plain softmax after bias and penalties: its first is the transform's argmax.
SamplingParams RankingParams(const SamplingParams& sampling) {
  SamplingParams ranking = sampling;
  if (ranking.greedy()) {
    ranking.temperature = 1.0;
    ranking.top_k = 0;
    ranking.top_p = 1.0;
    ranking.min_p = 0.0;
  }
  return ranking;
}

}  // namespace

void CheckInterrupted(const GenerateOptions& options, const char* stage) {
  if (options.interrupted && options.interrupted())
    throw Error(ErrorKind::kAborted, std::string("generation aborted during ") + stage);
}

bool ArgmaxOnly(const SamplingParams& sampling) { return sampling.greedy() && !sampling.shapes_logits(); }

HeadSpec HeadFor(const SamplingParams& sampling) {
  return {ArgmaxOnly(sampling) ? HeadKind::kArgmax : HeadKind::kLogits, 0};
}

int32_t Choose(const TokenDist& dist, const SamplingParams& sampling, Rng& rng) {
  return sampling.greedy() ? dist.Argmax() : dist.Sample(rng);
}

std::vector<int32_t> LookaheadGuess(const std::vector<int32_t>& committed, const std::vector<int32_t>& proposed,
                                    size_t count, size_t window) {
  const size_t n = committed.size() + proposed.size();
  if (n < 3 || count == 0) return {};
  auto at = [&](size_t i) { return i < committed.size() ? committed[i] : proposed[i - committed.size()]; };
  const int32_t a = at(n - 2), b = at(n - 1);
  const size_t stop = n > window ? n - window : 0;
  // (at(i - 1), at(i)) == (a, b) for the largest i < n - 1; the guesses are at(i + 1), ...
  auto after = [&](size_t i, size_t most) {
    std::vector<int32_t> guesses;
    for (size_t j = i + 1; j < n && guesses.size() < most; ++j) guesses.push_back(at(j));
    return guesses;
  };
  for (size_t i = n - 2; i >= stop + 1; --i)
    if (at(i) == b && at(i - 1) == a) return after(i, count);
  // No earlier (a, b): the token that followed the latest earlier b, one guess only (right about
  // half as often as a two-token match; a second guess cost more than it saved: session 17).
  for (size_t i = n - 2; i + 1 > stop; --i)
    if (at(i) == b) return after(i, 1);
  return {};
}

bool Proposer::WouldGuess(const ProposeContext& context, const Proposal& proposal) {
  return context.lookahead > 0 && context.options.lookahead &&
         !LookaheadGuess(context.committed, proposal.tokens, 1).empty();
}

const ForwardResult& Proposer::DraftRows(DecoderModel& draft, const std::vector<int32_t>& inputs, int64_t position,
                                         const HeadSpec& head, const ProposeContext& context, const Proposal& proposal,
                                         size_t* row) {
  Ahead& a = ahead_;
  const size_t k = a.used;
  if (a.valid && k < a.tokens.size() && a.proposal == &proposal && proposal.tokens.size() == a.proposed + 1 + k &&
      inputs.size() == 1 && inputs[0] == a.tokens[k] && position == a.position + static_cast<int64_t>(k) &&
      head.kind == a.head.kind && head.k == a.head.k) {
    ++context.stats.lookahead_hits;
    ++a.used;
    *row = a.first_row + k;
    return rows_;
  }
  a.valid = false;
  ++context.stats.draft_calls;
  std::vector<int32_t> guesses;
  if (context.lookahead > 0 && context.options.lookahead)
    guesses = LookaheadGuess(context.committed, proposal.tokens, static_cast<size_t>(context.lookahead));
  const int64_t vocab = draft.config().vocab_size;
  if (std::any_of(guesses.begin(), guesses.end(), [&](int32_t g) { return g < 0 || g >= vocab; })) guesses.clear();
  *row = inputs.size() - 1;
  if (guesses.empty()) {
    rows_ = draft.Forward(inputs, position, head);
    return rows_;
  }
  std::vector<int32_t> fed = inputs;
  fed.insert(fed.end(), guesses.begin(), guesses.end());
  rows_ = draft.Forward(fed, position, head);
  ++context.stats.lookahead_guesses;
  a = {true, &proposal, proposal.tokens.size(), position + static_cast<int64_t>(inputs.size()), std::move(guesses), 0,
       head, inputs.size()};
  return rows_;
}

int32_t DraftProposer::Propose(const std::vector<int32_t>& inputs, int64_t position, const ProposeContext& context,
                               Proposal& proposal) {
  const GenerateOptions& options = context.options;
  const size_t vocab = static_cast<size_t>(draft_.config().vocab_size);
  CheckInterrupted(options, "draft");
  // The proposal comes from the last input's row; the rows before it only fill the draft's cache.
  size_t last = 0;
  const ForwardResult& r = DraftRows(draft_, inputs, position, HeadFor(options.sampling), context, proposal, &last);
  if (ArgmaxOnly(options.sampling)) return r.argmax[last];
  // The context of this proposal: the committed tokens and the chain's proposals so far.
  const TokenHistory history(context.committed, proposal.tokens.data(), proposal.tokens.size());
  TokenDist q = Transform(r.logits.data() + last * vocab, vocab, options.sampling, nullptr, history);
  if (options.sampling.greedy()) return q.Argmax();
  const int32_t x = q.Sample(context.rng);
  proposal.q.push_back(options.broken_acceptance_for_testing
                           ? RatioDist(r.logits.data() + last * vocab, vocab, options.sampling, true)
                           : std::move(q));
  return x;
}

TokenDist DraftProposer::Distribution(int32_t input, int64_t position, const ProposeContext& context,
                                      std::vector<int32_t>* ranked, size_t top) {
  CheckInterrupted(context.options, "draft");
  ForgetAhead();
  ++context.stats.draft_calls;
  // Always the logits (not the argmax head): several branches need the ranking even at T = 0.
  const size_t vocab = static_cast<size_t>(draft_.config().vocab_size);
  ForwardResult r = draft_.Forward({input}, position, {HeadKind::kLogits, 0});
  TokenDist q = Transform(r.logits.data(), vocab, RankingParams(context.options.sampling), nullptr,
                          TokenHistory(context.committed));
  if (ranked) *ranked = q.TopN(top);
  return q;
}

int32_t TinyDraftProposer::Propose(const std::vector<int32_t>& inputs, int64_t position, const ProposeContext& context,
                                   Proposal& proposal) {
  const GenerateOptions& options = context.options;
  CheckInterrupted(options, "draft");
  if (options.coverage_every > 0 && calls_++ % options.coverage_every == 0) sample_due_ = true;
  bool measure = sample_due_ && !WouldGuess(context, proposal);
  HeadSpec head{HeadKind::kCandidates, options.candidates};
  head.full_argmax = measure;
  size_t last = 0;
  // A measuring call feeds no guesses (fewer program shapes); a step computed ahead lacks the
  // full argmax, and is then not measured (the sample waits for the next call).
  ProposeContext call = context;
  if (measure) call.lookahead = 0;
  const ForwardResult& r = DraftRows(draft_, inputs, position, head, call, proposal, &last);
  measure = measure && r.full_argmax.size() > last;
  if (measure) sample_due_ = false;
  const size_t k0 = static_cast<size_t>(options.candidates);
  const int32_t* ids = r.candidate_ids.data() + last * k0;
  if (measure) {
    ++context.stats.coverage_samples;
    if (std::find(ids, ids + k0, r.full_argmax[last]) != ids + k0) ++context.stats.coverage_hits;
  }
  if (ArgmaxOnly(options.sampling)) return r.argmax[last];  // the best candidate
  // q~: the user's transform of the draft's logits over the candidates, zero elsewhere.
  const TokenHistory history(context.committed, proposal.tokens.data(), proposal.tokens.size());
  TokenDist q = Transform(r.candidate_logits.data() + last * k0, k0, options.sampling, ids, history);
  if (options.sampling.greedy()) return q.Argmax();
  const int32_t x = q.Sample(context.rng);
  if (options.broken_acceptance_for_testing) {
    // Negative control: the draft's unrestricted softmax in the ratio (biased; see
    // docs/how-the-cascade-works.md, step 4).
    const int64_t input_position = position + static_cast<int64_t>(last);
    ForwardResult full = draft_.Forward({inputs.back()}, input_position, {HeadKind::kLogits, 0});
    const size_t vocab = static_cast<size_t>(draft_.config().vocab_size);
    proposal.q.push_back(RatioDist(full.logits.data(), vocab, options.sampling, true));
  } else {
    proposal.q.push_back(std::move(q));
  }
  return x;
}

TokenDist TinyDraftProposer::Distribution(int32_t input, int64_t position, const ProposeContext& context,
                                          std::vector<int32_t>* ranked, size_t top) {
  CheckInterrupted(context.options, "draft");
  ForgetAhead();
  ++context.stats.draft_calls;
  const GenerateOptions& options = context.options;
  ForwardResult r = draft_.Forward({input}, position, {HeadKind::kCandidates, options.candidates});
  TokenDist q = Transform(r.candidate_logits.data(), static_cast<size_t>(options.candidates),
                          RankingParams(options.sampling), r.candidate_ids.data(), TokenHistory(context.committed));
  if (ranked) *ranked = q.TopN(top);
  return q;
}

}  // namespace cascade
