#include "cascade/acceptance.h"

#include <algorithm>
#include <string>

#include "pjrt/errors.h"

namespace cascade {

namespace {

// min(1, p(x)/q(x)) tested against one uniform, without dividing.
bool Accept(double p_x, double q_x, Rng& rng) {
  if (q_x <= 0) throw Error(ErrorKind::kInternal, "a proposal has probability 0 under the distribution it was drawn from");
  return rng.Uniform() * q_x < p_x;
}

Verdict ContinueChain(const Proposal& branch, size_t b, size_t from, const TargetDist& p, Rng& rng) {
  const size_t length = branch.tokens.size();
  for (size_t j = from; j < length; ++j) {
    const TokenDist pj = p(b, j);
    const int32_t x = branch.tokens[j];
    if (!Accept(pj.Prob(x), branch.q[j].Prob(x), rng))
      return {b, j, TokenDist::Residual(pj, branch.q[j]).Sample(rng)};
  }
  return {b, length, p(b, length).Sample(rng)};
}

}  // namespace

Verdict VerifySampled(const std::vector<Proposal>& branches, const TargetDist& p, Rng& rng) {
  if (branches.empty()) return {0, 0, p(0, 0).Sample(rng)};
  for (size_t b = 0; b < branches.size(); ++b)
    if (branches[b].tokens.size() != branches[b].q.size())
      throw InvalidArgumentError("branch " + std::to_string(b) + ": tokens and q differ in length");
  if (branches.size() == 1 || branches[0].tokens.empty()) return ContinueChain(branches[0], 0, 0, p, rng);

  // Root: the first tokens are i.i.d. draws from the same q~_1.
  TokenDist root = p(0, 0);
  const TokenDist& q1 = branches[0].q[0];
  for (size_t b = 0; b < branches.size(); ++b) {
    if (branches[b].tokens.empty()) continue;
    const int32_t x = branches[b].tokens[0];
    if (Accept(root.Prob(x), q1.Prob(x), rng)) return ContinueChain(branches[b], b, 1, p, rng);
    root = TokenDist::Residual(root, q1);
  }
  return {0, 0, root.Sample(rng)};
}

Verdict VerifyGreedy(const std::vector<std::vector<int32_t>>& branch_tokens,
                     const std::vector<std::vector<int32_t>>& target_argmax) {
  if (target_argmax.empty() || target_argmax.size() != std::max<size_t>(branch_tokens.size(), 1))
    throw InvalidArgumentError("VerifyGreedy: one argmax list per branch");
  for (size_t b = 0; b < branch_tokens.size(); ++b)
    if (target_argmax[b].size() != branch_tokens[b].size() + 1)
      throw InvalidArgumentError("VerifyGreedy: branch " + std::to_string(b) + " needs L + 1 target argmaxes");
  const int32_t root = target_argmax[0][0];
  for (size_t b = 0; b < branch_tokens.size(); ++b) {
    if (branch_tokens[b].empty() || branch_tokens[b][0] != root) continue;
    size_t n = 0;
    while (n < branch_tokens[b].size() && branch_tokens[b][n] == target_argmax[b][n]) ++n;
    return {b, n, target_argmax[b][n]};
  }
  return {0, 0, root};
}

}  // namespace cascade
