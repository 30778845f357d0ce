// Verification of speculated tokens against the target: docs/how-the-cascade-works.md, 'The exact algorithm', steps 4 and 6.
//
// A speculation is B branches from the current position. Branch b proposes x_b1..x_bL; its
// first tokens were drawn i.i.d. from the same q~_1, and x_bj (j > 1) from q~_bj. The target
// gives p_bj at every position of every branch (p_b1 is the same root distribution for all).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "cascade/distribution.h"
#include "cascade/random.h"

namespace cascade {

struct Proposal {
  std::vector<int32_t> tokens;  // x_1..x_L (L >= 0)
  std::vector<TokenDist> q;     // the distribution each token was drawn from, same length
};

struct Verdict {
  size_t branch = 0;     // the branch whose prefix was accepted (0 when none was)
  size_t accepted = 0;   // how many of its tokens were accepted
  int32_t next = -1;     // the token the target emits after them (correction or bonus)
};

// p(b, j): the target's transformed distribution at position j (0-based: before token j) of
// branch b; j == L gives the bonus position after all L tokens. Called lazily, only for the
// positions the verdict needs.
using TargetDist = std::function<TokenDist(size_t branch, size_t position)>;

// Exact speculative sampling. One branch: for j = 1..L accept x_j with probability
// min(1, p_j(x_j) / q_j(x_j)); at the first rejection emit y ~ norm(max(0, p_j - q_j)); if all are
// accepted emit y ~ p_{L+1}. Several branches (SpecInfer's multi-step speculative sampling): at the
// root try each branch's first token in turn with min(1, p(x)/q~_1(x)), replacing p by
// norm(max(0, p - q~_1)) after each rejection; if none survives emit y ~ p; otherwise continue
// down the accepted branch by the one-branch rule. The output is distributed exactly as the
// target's own sampling.
Verdict VerifySampled(const std::vector<Proposal>& branches, const TargetDist& p, Rng& rng);

// T = 0: `target_argmax[b][j]` is the target's argmax at position j of branch b (L_b + 1 each).
// Accepts the longest branch prefix equal to the target's argmax and emits the target's argmax
// after it: identical to target-only greedy decoding.
Verdict VerifyGreedy(const std::vector<std::vector<int32_t>>& branch_tokens,
                     const std::vector<std::vector<int32_t>>& target_argmax);

}  // namespace cascade
