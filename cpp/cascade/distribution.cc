#include "cascade/distribution.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "kernels/argmax.h"
#include "kernels/exp_weights.h"
#include "pjrt/errors.h"

namespace cascade {

void ValidateSamplingParams(const SamplingParams& params, int64_t vocab_size) {
  if (!std::isfinite(params.temperature) || params.temperature < 0)
    throw InvalidArgumentError("temperature must be a finite number >= 0, got " + std::to_string(params.temperature));
  if (params.top_k < 0) throw InvalidArgumentError("topK must be >= 0, got " + std::to_string(params.top_k));
  if (!(params.top_p > 0 && params.top_p <= 1))
    throw InvalidArgumentError("topP must be in (0, 1], got " + std::to_string(params.top_p));
  if (!(params.min_p >= 0 && params.min_p <= 1))
    throw InvalidArgumentError("minP must be in [0, 1], got " + std::to_string(params.min_p));
  if (!std::isfinite(params.repeat_penalty) || params.repeat_penalty <= 0)
    throw InvalidArgumentError("repeatPenalty must be a finite number > 0, got " + std::to_string(params.repeat_penalty));
  if (!std::isfinite(params.presence_penalty))
    throw InvalidArgumentError("presencePenalty must be a finite number, got " + std::to_string(params.presence_penalty));
  if (!std::isfinite(params.frequency_penalty))
    throw InvalidArgumentError("frequencyPenalty must be a finite number, got " + std::to_string(params.frequency_penalty));
  if (params.penalty_last_n < -1)
    throw InvalidArgumentError("penaltyLastN must be >= -1 (-1: the whole context), got " + std::to_string(params.penalty_last_n));
  for (const auto& [id, bias] : params.logit_bias) {
    if (id < 0 || (vocab_size > 0 && id >= vocab_size))
      throw InvalidArgumentError("logitBias: token id " + std::to_string(id) + " is outside the vocabulary" +
                                 (vocab_size > 0 ? " (0.." + std::to_string(vocab_size - 1) + ")" : std::string()));
    if (std::isnan(bias) || bias == std::numeric_limits<double>::infinity())
      throw InvalidArgumentError("logitBias[" + std::to_string(id) + "] must be a finite number or -Infinity, got " +
                                 std::to_string(bias));
  }
}

TokenDist::TokenDist(std::vector<int32_t> ids, std::vector<double> probs) {
  if (ids.size() != probs.size()) throw InvalidArgumentError("TokenDist: ids and probs differ in length");
  double total = 0;
  size_t kept = 0;  // in id order: ids_[0..kept), probs_[0..kept)
  auto take = [&](int32_t id, double p) {
    if (!(p >= 0) || !std::isfinite(p)) throw InvalidArgumentError("TokenDist: probabilities must be finite and >= 0");
    if (p == 0) return;
    if (kept > 0 && ids_[kept - 1] == id) throw InvalidArgumentError("TokenDist: duplicate token id");
    ids_[kept] = id;
    probs_[kept] = p;
    total += p;
    ++kept;
  };
  bool increasing = true;
  for (size_t i = 1; i < ids.size(); ++i) increasing &= ids[i - 1] < ids[i];
  if (increasing) {
    // Already in id order (a whole-vocabulary distribution): compacted in place, no index sort
    // and no new buffers. At 49152 ids the sort and the buffers' page faults were ~60% of a
    // T > 0 Transform (session 11); then the one-at-a-time checks and the serial sum were ~70%
    // (session 12): now one vector pass checks and sums (a fixed order, kernels/exp_weights.h),
    // and the zeros are dropped only if there are any.
    ids_ = std::move(ids);
    probs_ = std::move(probs);
    const size_t n = probs_.size();
    bool invalid = false, zeros = false;
    total = kernels::SumOfWeights(probs_.data(), static_cast<int64_t>(n), &invalid, &zeros);
    if (invalid) throw InvalidArgumentError("TokenDist: probabilities must be finite and >= 0");
    if (zeros) {
      for (size_t j = 0; j < n; ++j)
        if (probs_[j] != 0) {
          ids_[kept] = ids_[j];
          probs_[kept] = probs_[j];
          ++kept;
        }
    } else {
      kept = n;
    }
  } else {
    std::vector<size_t> order(ids.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ids[a] < ids[b]; });
    ids_.resize(ids.size());
    probs_.resize(ids.size());
    for (size_t i : order) take(ids[i], probs[i]);
  }
  ids_.resize(kept);
  probs_.resize(kept);
  if (ids_.empty()) throw InvalidArgumentError("TokenDist: no token has positive probability");
  const double inv = 1.0 / total;
  for (double& p : probs_) p *= inv;
}

double TokenDist::Prob(int32_t id) const {
  auto it = std::lower_bound(ids_.begin(), ids_.end(), id);
  return it != ids_.end() && *it == id ? probs_[it - ids_.begin()] : 0.0;
}

int32_t TokenDist::Sample(Rng& rng) const {
  const double u = rng.Uniform();
  double acc = 0;
  for (size_t i = 0; i < ids_.size(); ++i) {
    acc += probs_[i];
    if (u < acc) return ids_[i];
  }
  return ids_.back();  // u within rounding of 1
}

int32_t TokenDist::Argmax() const {
  size_t best = 0;
  for (size_t i = 1; i < probs_.size(); ++i)
    if (probs_[i] > probs_[best]) best = i;
  return ids_[best];
}

std::vector<int32_t> TokenDist::TopN(size_t n) const {
  std::vector<size_t> order(ids_.size());
  std::iota(order.begin(), order.end(), 0);
  n = std::min(n, order.size());
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n), order.end(), [&](size_t a, size_t b) {
    return probs_[a] != probs_[b] ? probs_[a] > probs_[b] : ids_[a] < ids_[b];
  });
  std::vector<int32_t> out;
  for (size_t i = 0; i < n; ++i) out.push_back(ids_[order[i]]);
  return out;
}

TokenDist TokenDist::Residual(const TokenDist& p, const TokenDist& q) {
  std::vector<int32_t> ids;
  std::vector<double> probs;
  for (size_t i = 0; i < p.ids_.size(); ++i) {
    const double r = p.probs_[i] - q.Prob(p.ids_[i]);
    if (r > 0) {
      ids.push_back(p.ids_[i]);
      probs.push_back(r);
    }
  }
  if (ids.empty()) return p;
  return TokenDist(std::move(ids), std::move(probs));
}

namespace {

// Stores `value` as a logit: finite values past float's range saturate (a huge bias must not turn
// into +inf and then NaN); -inf (a ban) stays.
float ToLogit(double value) {
  constexpr double kMax = std::numeric_limits<float>::max();
  if (value > kMax) return static_cast<float>(kMax);
  if (value < -kMax && std::isfinite(value)) return static_cast<float>(-kMax);
  return static_cast<float>(value);
}

// The logits after logit_bias and the penalties (same layout as the input: per vocabulary id, or
// per candidate).
void ShapeLogits(const float* logits, size_t count, const SamplingParams& params, const int32_t* candidates,
                 const TokenHistory& history, std::vector<float>& out) {
  out.assign(logits, logits + count);
  if (!params.logit_bias.empty()) {
    if (candidates) {
      for (size_t i = 0; i < count; ++i) {
        auto it = params.logit_bias.find(candidates[i]);
        if (it != params.logit_bias.end()) out[i] = ToLogit(static_cast<double>(out[i]) + it->second);
      }
    } else {
      for (const auto& [id, bias] : params.logit_bias)
        if (id >= 0 && static_cast<size_t>(id) < count) out[id] = ToLogit(static_cast<double>(out[id]) + bias);
    }
  }
  if (!params.penalized()) return;
  // The window: the last penalty_last_n tokens of committed ++ pending, sorted so equal ids are adjacent.
  const size_t total = history.committed_size + history.pending_size;
  const size_t n = params.penalty_last_n < 0 ? total : std::min(total, static_cast<size_t>(params.penalty_last_n));
  std::vector<int32_t> window;
  window.reserve(n);
  for (size_t k = total - n; k < total; ++k)
    window.push_back(k < history.committed_size ? history.committed[k] : history.pending[k - history.committed_size]);
  std::sort(window.begin(), window.end());
  auto penalize = [&](float& logit, size_t times) {
    double l = logit;
    if (params.repeat_penalty != 1.0) l = l > 0 ? l / params.repeat_penalty : l * params.repeat_penalty;
    l -= params.presence_penalty + params.frequency_penalty * static_cast<double>(times);
    logit = ToLogit(l);
  };
  if (candidates) {
    for (size_t i = 0; i < count; ++i) {
      auto [lo, hi] = std::equal_range(window.begin(), window.end(), candidates[i]);
      if (hi != lo) penalize(out[i], static_cast<size_t>(hi - lo));
    }
  } else {
    for (size_t a = 0; a < window.size();) {
      size_t b = a;
      while (b < window.size() && window[b] == window[a]) ++b;
      if (window[a] >= 0 && static_cast<size_t>(window[a]) < count) penalize(out[window[a]], b - a);
      a = b;
    }
  }
}

}  // namespace

TokenDist Transform(const float* logits, size_t count, const SamplingParams& params, const int32_t* candidates,
                    const TokenHistory& history) {
  if (count == 0) throw InvalidArgumentError("Transform: no logits");
  auto id_of = [&](size_t i) { return candidates ? candidates[i] : static_cast<int32_t>(i); };
  std::vector<float> shaped;  // only with bias or penalties
  if (params.shapes_logits()) {
    ShapeLogits(logits, count, params, candidates, history, shaped);
    logits = shaped.data();
    if (std::all_of(shaped.begin(), shaped.end(), [](float l) { return l == -std::numeric_limits<float>::infinity(); })) {
      if (!candidates) throw InvalidArgumentError("logitBias bans every token: nothing is left to sample");
      return TokenDist(std::vector<int32_t>(candidates, candidates + count), std::vector<double>(count, 1.0));
    }
  }
  if (params.greedy()) {
    size_t best = 0;
    for (size_t i = 1; i < count; ++i)
      if (logits[i] > logits[best] || (logits[i] == logits[best] && id_of(i) < id_of(best))) best = i;
    return TokenDist({id_of(best)}, {1.0});
  }
  const bool cuts = (params.top_k > 0 && static_cast<size_t>(params.top_k) < count) || params.top_p < 1.0;
  if (!cuts) {
    // Every token stays, in id order: the max and the weights by vector kernels, no index order.
    int32_t top = 0;
    kernels::ArgmaxRows(logits, 1, static_cast<int64_t>(count), &top);
    if (!std::isnan(logits[top])) {  // (NaN: the general path below reports it)
      std::vector<double> weights(count);
      kernels::ExpWeights(logits, static_cast<int64_t>(count), logits[top], 1.0 / params.temperature, weights.data());
      if (params.min_p > 0) {
        const double floor = params.min_p * *std::max_element(weights.begin(), weights.end());
        for (double& w : weights)
          if (w < floor) w = 0.0;
      }
      std::vector<int32_t> ids(count);
      if (candidates) std::copy(candidates, candidates + count, ids.begin());
      else std::iota(ids.begin(), ids.end(), 0);
      return TokenDist(std::move(ids), std::move(weights));
    }
  }
  // Order by logit (then id) so top-k and top-p cut deterministically.
  thread_local std::vector<size_t> order;
  order.resize(count);
  std::iota(order.begin(), order.end(), 0);
  auto better = [&](size_t a, size_t b) { return logits[a] != logits[b] ? logits[a] > logits[b] : id_of(a) < id_of(b); };
  size_t keep = count;
  if (params.top_k > 0 && static_cast<size_t>(params.top_k) < count) {
    keep = static_cast<size_t>(params.top_k);
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep), order.end(), better);
  } else if (params.top_p < 1.0) {
    std::sort(order.begin(), order.end(), better);
  }
  const double max_logit = logits[*std::max_element(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep),
                                                     [&](size_t a, size_t b) { return logits[a] < logits[b]; })];
  std::vector<double> weights(keep);
  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    weights[i] = std::exp((static_cast<double>(logits[order[i]]) - max_logit) / params.temperature);
    total += weights[i];
  }
  if (params.top_p < 1.0) {  // `order` is sorted over the kept prefix here
    double mass = 0;
    size_t cut = keep;
    for (size_t i = 0; i < keep; ++i) {
      mass += weights[i] / total;
      if (mass >= params.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
  }
  // min-p: p_i >= min_p * p_max compares the unnormalised weights alike (same normaliser).
  const double floor =
      params.min_p > 0 ? params.min_p * *std::max_element(weights.begin(), weights.begin() + static_cast<std::ptrdiff_t>(keep)) : 0.0;
  std::vector<int32_t> ids(keep);
  for (size_t i = 0; i < keep; ++i) {
    ids[i] = id_of(order[i]);
    if (weights[i] < floor) weights[i] = 0.0;  // TokenDist drops the zeros
  }
  weights.resize(keep);
  return TokenDist(std::move(ids), std::move(weights));
}

}  // namespace cascade
