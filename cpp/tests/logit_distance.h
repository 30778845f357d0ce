// How far apart two logit vectors are, for tests that compare models computing the same thing
// in different arithmetic (e.g. the block-stored target's fused and plain programs).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace cascade::testing {

// max_i |a[i] - b[i]|; infinity when the sizes differ (so any bound on it fails).
inline float MaxAbsDifference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::numeric_limits<float>::infinity();
  float worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
  return worst;
}

// max_i |a[i]|: the scale a difference is judged against.
inline float MaxAbs(const std::vector<float>& a) {
  float m = 0;
  for (float v : a) m = std::max(m, std::fabs(v));
  return m;
}

}  // namespace cascade::testing
