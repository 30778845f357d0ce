// Token distributions and the user's sampling transform (logit bias, repetition / presence /
// frequency penalties, temperature, top-k, top-p, min-p).
//
// The same transform is applied to the target's logits (giving p) and to the draft's logits
// restricted to the tiny model's candidates (giving q~): the output distribution of the cascade
// is transform(target logits), exactly, because acceptance uses the q~ the proposal was really
// drawn from.
// The penalties depend on the context, so both are computed with the same TokenHistory: at
// position j of a speculative chain, the committed tokens and the chain's x_1..x_j-1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "cascade/random.h"

namespace cascade {

struct SamplingParams {
  double temperature = 0.0;  // 0: greedy (argmax, lowest id wins ties)
  int top_k = 0;             // 0: off
  double top_p = 1.0;        // 1: off
  // Keep tokens whose probability (after temperature, top-k, top-p) is >= min_p * the largest.
  double min_p = 0.0;  // 0: off
  // The penalties count the tokens in the last `penalty_last_n` of the context (prompt included;
  // -1: the whole context; 0: penalties off). A token present there has its logit divided by
  // repeat_penalty when positive and multiplied by it otherwise (llama.cpp), then lowered by
  // presence_penalty + frequency_penalty * count (OpenAI).
  double repeat_penalty = 1.0;     // 1: off
  double presence_penalty = 0.0;   // 0: off
  double frequency_penalty = 0.0;  // 0: off
  int64_t penalty_last_n = 64;
  // Added to the logit of each token id before everything else; -infinity bans the token.
  std::map<int32_t, double> logit_bias;

  bool greedy() const { return temperature <= 0.0; }
  bool penalized() const {
    return penalty_last_n != 0 && (repeat_penalty != 1.0 || presence_penalty != 0.0 || frequency_penalty != 0.0);
  }
  // Whether the logits are changed before temperature (bias, penalties): then even greedy decoding
  // needs the full logits, not the model's argmax.
  bool shapes_logits() const { return penalized() || !logit_bias.empty(); }
};

// Validates ranges; throws InvalidArgumentError naming the field. With `vocab_size` > 0, the
// logitBias ids must lie in the vocabulary.
void ValidateSamplingParams(const SamplingParams& params, int64_t vocab_size = 0);

// The context a distribution is computed in, for the penalties: the `committed` tokens followed
// by the `pending` ones (a speculative chain's earlier proposals: p_j and q~_j both see
// x_1..x_{j-1}). Only pointers: building one allocates nothing.
struct TokenHistory {
  const int32_t* committed = nullptr;
  size_t committed_size = 0;
  const int32_t* pending = nullptr;
  size_t pending_size = 0;

  TokenHistory() = default;
  explicit TokenHistory(const std::vector<int32_t>& tokens, const int32_t* pending_tokens = nullptr, size_t pending_count = 0)
      : committed(tokens.data()), committed_size(tokens.size()), pending(pending_tokens), pending_size(pending_count) {}
};

// A probability distribution over token ids: `ids` strictly increasing, `probs` > 0, summing
// to 1. Tokens not listed have probability 0.
class TokenDist {
 public:
  TokenDist() = default;
  TokenDist(std::vector<int32_t> ids, std::vector<double> probs);  // normalises; drops zeros

  const std::vector<int32_t>& ids() const { return ids_; }
  const std::vector<double>& probs() const { return probs_; }
  size_t size() const { return ids_.size(); }
  bool empty() const { return ids_.empty(); }

  double Prob(int32_t id) const;
  // Inverse-CDF draw with one uniform from `rng`.
  int32_t Sample(Rng& rng) const;
  // The most likely token (lowest id on ties).
  int32_t Argmax() const;
  // The `n` most likely tokens, most likely first (lowest id on ties).
  std::vector<int32_t> TopN(size_t n) const;

  // norm(max(0, p - q)): the residual a rejection samples from. If p <= q everywhere (p == q up
  // to rounding), returns p itself: then the rejection had probability 0 anyway.
  static TokenDist Residual(const TokenDist& p, const TokenDist& q);

 private:
  std::vector<int32_t> ids_;
  std::vector<double> probs_;
};

// transform(logits): restrict to `candidates` if given (ids into the vocabulary; the logits
// are then per candidate, in the same order), add logit_bias, apply the penalties counted over
// `history` (by token id, candidates included), divide by temperature, keep the top_k largest,
// softmax, keep the smallest prefix (by probability) whose mass reaches top_p, keep the tokens
// with probability >= min_p * the largest, renormalise. With temperature 0 the result is the
// one-hot distribution of the argmax after bias and penalties.
// When the bias bans every token: throws InvalidArgumentError over the whole vocabulary; over
// candidates it returns the uniform distribution on them (any q~ keeps speculative sampling exact
// as long as the proposal is drawn from it: the target, which gives them probability 0, rejects).
// Without bias and penalties the logits are read in place (no copy).
TokenDist Transform(const float* logits, size_t count, const SamplingParams& params,
                    const int32_t* candidates = nullptr, const TokenHistory& history = TokenHistory());

}  // namespace cascade
