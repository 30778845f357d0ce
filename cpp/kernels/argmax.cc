#include "kernels/argmax.h"

#include <cmath>

#include "kernels/int8_matmul.h"

#if defined(__x86_64__)
#include "kernels/x86_intrinsics.h"
#define CASCADE_ARGMAX_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#endif

namespace cascade {
namespace kernels {

int32_t ArgmaxScalar(const float* row, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(row[i])) return static_cast<int32_t>(i);
    if (row[i] > row[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

namespace {

#if defined(__x86_64__)
// Pass 1: the largest value and whether any lane is NaN; pass 2: the first index equal to it.
CASCADE_ARGMAX_AVX512 int32_t ArgmaxAvx512(const float* row, int64_t n) {
  __m512 top = _mm512_set1_ps(-INFINITY);
  __mmask16 nan = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = FirstLanes16(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, row + i);
    nan |= _mm512_mask_cmp_ps_mask(m, v, v, _CMP_UNORD_Q);
    top = _mm512_mask_max_ps(top, m, top, v);
  }
  if (nan) return ArgmaxScalar(row, n);
  const __m512 best = _mm512_set1_ps(_mm512_reduce_max_ps(top));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 hit = _mm512_mask_cmp_ps_mask(FirstLanes16(n - i), _mm512_maskz_loadu_ps(FirstLanes16(n - i), row + i),
                                                  best, _CMP_EQ_OQ);
    if (hit) return static_cast<int32_t>(i + __builtin_ctz(hit));
  }
  return 0;  // every value -inf: the reduce's initial index
}
#endif

}  // namespace

void ArgmaxRows(const float* x, int64_t T, int64_t n, int32_t* ids) {
#if defined(__x86_64__)
  static const bool avx512 = BestF32Impl() == Int8Impl::kAvx512;
  if (avx512) {
    for (int64_t t = 0; t < T; ++t) ids[t] = ArgmaxAvx512(x + t * n, n);
    return;
  }
#endif
  for (int64_t t = 0; t < T; ++t) ids[t] = ArgmaxScalar(x + t * n, n);
}

}  // namespace kernels
}  // namespace cascade
