// Token distributions and the user's sampling transform (temperature, top-k, top-p).
//
// The same transform is applied to the target's logits (giving p) and to the draft's logits
// restricted to the tiny model's candidates (giving q~): the output distribution of the cascade
// is transform(target logits), exactly, because acceptance uses the q~ the proposal was really
// drawn from.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cascade/random.h"

namespace cascade {

struct SamplingParams {
  double temperature = 0.0;  // 0: greedy (argmax, lowest id wins ties)
  int top_k = 0;             // 0: off
  double top_p = 1.0;        // 1: off
  bool greedy() const { return temperature <= 0.0; }
};

// Validates ranges; throws InvalidArgumentError naming the field.
void ValidateSamplingParams(const SamplingParams& params);

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
// are then per candidate, in the same order), divide by temperature, keep the top_k largest,
// softmax, keep the smallest prefix (by probability) whose mass reaches top_p, renormalise.
// With temperature 0 the result is the one-hot distribution of the argmax.
TokenDist Transform(const float* logits, size_t count, const SamplingParams& params,
                    const int32_t* candidates = nullptr);

}  // namespace cascade
