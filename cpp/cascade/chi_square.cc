#include "cascade/chi_square.h"

#include <cmath>
#include <numeric>

#include "pjrt/errors.h"

namespace cascade {

namespace {

// Regularised lower incomplete gamma P(a, x) by its series (x < a + 1).
double GammaPSeries(double a, double x) {
  double sum = 1.0 / a, term = sum;
  for (int n = 1; n < 10000; ++n) {
    term *= x / (a + n);
    sum += term;
    if (std::fabs(term) < std::fabs(sum) * 1e-15) break;
  }
  return sum * std::exp(-x + a * std::log(x) - std::lgamma(a));
}

// Regularised upper incomplete gamma Q(a, x) by Lentz's continued fraction (x >= a + 1).
double GammaQFraction(double a, double x) {
  const double tiny = 1e-300;
  double b = x + 1 - a, c = 1 / tiny, d = 1 / b, h = d;
  for (int i = 1; i < 10000; ++i) {
    const double an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (std::fabs(d) < tiny) d = tiny;
    c = b + an / c;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1 / d;
    const double delta = d * c;
    h *= delta;
    if (std::fabs(delta - 1) < 1e-15) break;
  }
  return std::exp(-x + a * std::log(x) - std::lgamma(a)) * h;
}

}  // namespace

double ChiSquareSurvival(double x, int k) {
  if (k <= 0) return 1.0;
  if (x <= 0) return 1.0;
  const double a = k / 2.0, half = x / 2.0;
  return half < a + 1 ? 1.0 - GammaPSeries(a, half) : GammaQFraction(a, half);
}

ChiSquareResult ChiSquareTest(const std::vector<int64_t>& observed, const std::vector<double>& expected_probs,
                              double min_expected) {
  if (observed.size() != expected_probs.size()) throw InvalidArgumentError("ChiSquareTest: size mismatch");
  const double n = static_cast<double>(std::accumulate(observed.begin(), observed.end(), int64_t{0}));
  ChiSquareResult r;
  double pooled_obs = 0, pooled_exp = 0;
  int cells = 0;
  for (size_t i = 0; i < observed.size(); ++i) {
    const double e = expected_probs[i] * n;
    if (e < min_expected) {
      pooled_obs += static_cast<double>(observed[i]);
      pooled_exp += e;
      continue;
    }
    r.statistic += (observed[i] - e) * (observed[i] - e) / e;
    ++cells;
  }
  if (pooled_exp > 0 || pooled_obs > 0) {
    // An observation where the expectation is (near) zero is itself strong evidence of a bias.
    const double e = std::max(pooled_exp, 1e-9);
    r.statistic += (pooled_obs - e) * (pooled_obs - e) / e;
    ++cells;
  }
  r.degrees_of_freedom = std::max(cells - 1, 1);
  r.p_value = ChiSquareSurvival(r.statistic, r.degrees_of_freedom);
  return r;
}

}  // namespace cascade
