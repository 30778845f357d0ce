// The sampler's softmax weights over a whole vocabulary (cascade/distribution.cc, Transform):
// out[i] = e^((x[i] - shift) * inv_temperature) in double precision. At T > 0 every target row
// and every full-vocabulary draft step computes 49,152 of them on the host; glibc's exp took
// ~45% of a 0.5 ms Transform (session 12). The AVX-512 path is 8 lanes of a degree-12
// polynomial (within ~2 ulp of exp); a value whose exponent is below -745 gives exactly 0, as
// exp does. Each element on its own, so a row's weights never depend on its neighbours.
#pragma once

#include <cstdint>

namespace cascade {
namespace kernels {

// x must hold no NaN; shift >= every x[i] (x[i] = -inf gives 0).
void ExpWeights(const float* x, int64_t n, double shift, double inv_temperature, double* out);

// The plain loop (any CPU; kernels_test compares the two).
void ExpWeightsScalar(const float* x, int64_t n, double shift, double inv_temperature, double* out);

// The sum of p[0, n) in 8 running partial sums (partial k takes p[i] with i % 8 == k), added
// ((0 + 4) + (2 + 6)) + ((1 + 5) + (3 + 7)): one order on every CPU. *invalid: some p[i] is
// negative, infinite or NaN; *zero: some p[i] is 0. (TokenDist's normaliser.)
double SumOfWeights(const double* p, int64_t n, bool* invalid, bool* zero);
double SumOfWeightsScalar(const double* p, int64_t n, bool* invalid, bool* zero);

}  // namespace kernels
}  // namespace cascade
