// Pearson's chi-square goodness-of-fit test, for the distribution (exactness) tests.
#pragma once

#include <cstdint>
#include <vector>

namespace cascade {

struct ChiSquareResult {
  double statistic = 0;
  int degrees_of_freedom = 0;
  double p_value = 1;
};

// Observed counts against expected probabilities (same length). Cells whose expected count is
// below `min_expected` are pooled into one cell, as usual, so the chi-square approximation holds.
ChiSquareResult ChiSquareTest(const std::vector<int64_t>& observed, const std::vector<double>& expected_probs,
                              double min_expected = 5.0);

// Upper tail P(X >= x) for X ~ chi-square with k degrees of freedom.
double ChiSquareSurvival(double x, int k);

}  // namespace cascade
