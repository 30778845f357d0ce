#include "kernels/exp_weights.h"

#include <cmath>
#include <limits>

#include "kernels/int8_matmul.h"

#if defined(__x86_64__)
#include "kernels/x86_intrinsics.h"
#define CASCADE_EXP_AVX512 __attribute__((target("avx512f,avx512vl")))
#endif

namespace cascade {
namespace kernels {

void ExpWeightsScalar(const float* x, int64_t n, double shift, double inv_temperature, double* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::exp((static_cast<double>(x[i]) - shift) * inv_temperature);
}

double SumOfWeightsScalar(const double* p, int64_t n, bool* invalid, bool* zero) {
  double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  bool bad = false, zeros = false;
  for (int64_t i = 0; i < n; ++i) {
    const double v = p[i];
    bad |= !(v >= 0 && v <= std::numeric_limits<double>::max());
    zeros |= v == 0;
    part[i % 8] += v;
  }
  *invalid = bad;
  *zero = zeros;
  return ((part[0] + part[4]) + (part[2] + part[6])) + ((part[1] + part[5]) + (part[3] + part[7]));
}

namespace {

#if defined(__x86_64__)
// e^z for z <= 0: z = k ln2 + r with |r| <= ln2 / 2 (ln2 split in two so k * ln2_hi is exact),
// e^r by its Taylor polynomial to r^12 (truncation ~2e-16 relative), times 2^k by scalef.
CASCADE_EXP_AVX512 __m512d ExpPd(__m512d z) {
  const __mmask8 zero = _mm512_cmp_pd_mask(z, _mm512_set1_pd(-745.0), _CMP_LT_OQ);
  z = _mm512_max_pd(z, _mm512_set1_pd(-745.0));
  const __m512d k = _mm512_roundscale_pd(_mm512_mul_pd(z, _mm512_set1_pd(1.4426950408889634)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512d r = _mm512_fnmadd_pd(k, _mm512_set1_pd(6.93147180369123816490e-01), z);
  r = _mm512_fnmadd_pd(k, _mm512_set1_pd(1.90821492927058770002e-10), r);
  double c = 1.0;
  for (int i = 2; i <= 12; ++i) c /= i;  // 1/12!
  __m512d p = _mm512_set1_pd(c);
  for (int i = 11; i >= 1; --i) {
    c *= (i + 1);  // 1/i!
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(c));
  }
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0));
  return _mm512_maskz_mov_pd(static_cast<__mmask8>(~zero), _mm512_scalef_pd(p, k));
}

CASCADE_EXP_AVX512 void ExpWeightsAvx512(const float* x, int64_t n, double shift, double inv_temperature, double* out) {
  const __m512d s = _mm512_set1_pd(shift), t = _mm512_set1_pd(inv_temperature);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + i));
    _mm512_storeu_pd(out + i, ExpPd(_mm512_mul_pd(_mm512_sub_pd(v, s), t)));
  }
  if (i < n) {
    const __mmask8 m = static_cast<__mmask8>((1u << (n - i)) - 1);
    const __m512d v = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, x + i));
    _mm512_mask_storeu_pd(out + i, m, ExpPd(_mm512_mul_pd(_mm512_sub_pd(v, s), t)));
  }
}
CASCADE_EXP_AVX512 double SumOfWeightsAvx512(const double* p, int64_t n, bool* invalid, bool* zero) {
  __m512d sum = _mm512_setzero_pd();
  const __m512d top = _mm512_set1_pd(std::numeric_limits<double>::max());
  __mmask8 bad = 0, zeros = 0;
  for (int64_t i = 0; i < n; i += 8) {
    const __mmask8 m = n - i >= 8 ? static_cast<__mmask8>(0xff) : static_cast<__mmask8>((1u << (n - i)) - 1);
    const __m512d v = _mm512_maskz_loadu_pd(m, p + i);
    // In range: 0 <= v <= max (false for NaN, -x and +inf).
    const __mmask8 ok = _mm512_mask_cmp_pd_mask(m, v, _mm512_setzero_pd(), _CMP_GE_OQ) &
                        _mm512_mask_cmp_pd_mask(m, v, top, _CMP_LE_OQ);
    bad |= static_cast<__mmask8>(m & ~ok);
    zeros |= _mm512_mask_cmp_pd_mask(m, v, _mm512_setzero_pd(), _CMP_EQ_OQ);
    sum = _mm512_add_pd(sum, v);  // masked-off lanes add +0.0: no change
  }
  *invalid = bad != 0;
  *zero = zeros != 0;
  alignas(64) double part[8];
  _mm512_store_pd(part, sum);
  return ((part[0] + part[4]) + (part[2] + part[6])) + ((part[1] + part[5]) + (part[3] + part[7]));
}
#endif

}  // namespace

double SumOfWeights(const double* p, int64_t n, bool* invalid, bool* zero) {
#if defined(__x86_64__)
  static const bool avx512 = BestF32Impl() == Int8Impl::kAvx512;
  if (avx512) return SumOfWeightsAvx512(p, n, invalid, zero);
#endif
  return SumOfWeightsScalar(p, n, invalid, zero);
}

void ExpWeights(const float* x, int64_t n, double shift, double inv_temperature, double* out) {
#if defined(__x86_64__)
  static const bool avx512 = BestF32Impl() == Int8Impl::kAvx512;
  if (avx512) return ExpWeightsAvx512(x, n, shift, inv_temperature, out);
#endif
  ExpWeightsScalar(x, n, shift, inv_temperature, out);
}

}  // namespace kernels
}  // namespace cascade
