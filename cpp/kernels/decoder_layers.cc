#include "kernels/decoder_layers.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>

#if defined(__x86_64__)
#include "kernels/x86_intrinsics.h"  // first: before transpose16.h's <immintrin.h>
#define CASCADE_HAS_X86 1
#define CASCADE_AVX512_FN __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#else
#define CASCADE_HAS_X86 0
#endif

#include "kernels/thread_team.h"
#include "kernels/transpose16.h"

namespace cascade {
namespace kernels {
namespace {

// ---------------------------------------------------------------- vector helpers
// dot(a, b) and y += s * x over n floats. Each has one summation order per implementation (16
// lane partial sums, then a fixed tree), used for every row alike.

float DotScalar(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}
void AxpyScalar(float s, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += s * x[i];
}

#if CASCADE_HAS_X86
CASCADE_AVX512_FN float DotAvx512(const float* a, const float* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
}
CASCADE_AVX512_FN void AxpyAvx512(float s, const float* x, float* y, int64_t n) {
  const __m512 sv = _mm512_set1_ps(s);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(sv, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(sv, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}
#endif

// Attention's two loops over the visible slots, one call each (rows given by pointer: cache slots,
// then the visible new tokens). Every slot's score goes through the same instruction sequence
// whichever group it falls in, and out[:] accumulates the rows in slot order with one FMA per
// element, as `n` axpy calls would: rows stay bit-identical between a decode(1) and a verify(T).
void ScoresScalar(const float* q, const float* const* rows, int64_t n, int64_t hd, float* scores) {
  for (int64_t i = 0; i < n; ++i) scores[i] = DotScalar(q, rows[i], hd);
}
// The scores of `heads` consecutive query vectors q[heads][hd] against the same rows, into
// scores[heads][n].
// (kt, ready: ScoresHeadsLanes's pre-transposed key blocks, which only the AVX-512 one reads.)
void ScoresHeadsScalar(const float* q, int64_t heads, const float* const* rows, int64_t n, int64_t hd, float* scores,
                       const float*, int64_t) {
  for (int64_t k = 0; k < heads; ++k) ScoresScalar(q + k * hd, rows, n, hd, scores + k * n);
}
void WeightedRowsScalar(const float* w, const float* const* rows, int64_t n, int64_t hd, float* out) {
  for (int64_t i = 0; i < n; ++i) AxpyScalar(w[i], rows[i], out, hd);
}
// s[i] = e^(scale * s[i] - m) in place with m = max(scale * s); *max_out = m; returns the sum of
// the new s[i]. A chunk's unnormalised share of a softmax (LayerRunner::AttentionChunk).
float ExpShiftedScalar(float* s, int64_t n, float scale, float* max_out) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    s[i] *= scale;
    mx = std::max(mx, s[i]);
  }
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    s[i] = std::exp(s[i] - mx);
    sum += s[i];
  }
  *max_out = mx;
  return sum;
}

// y[i] = x[i] * r * w[i] (w[i] + 1 with plus_one): RmsNorm's scaling of one row.
void ScaleRowScalar(const float* x, float r, const float* w, bool plus_one, float* y, int64_t d) {
  for (int64_t i = 0; i < d; ++i) y[i] = x[i] * r * (plus_one ? w[i] + 1.0f : w[i]);
}

// Rotate-half RoPE of one head vector v[2 half] in place.
void RopeHeadScalar(float* v, const float* c, const float* s, int64_t half) {
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = v[i], x2 = v[i + half];
    v[i] = x1 * c[i] - x2 * s[i];
    v[i + half] = x2 * c[i] + x1 * s[i];
  }
}

// h[i] += a[i].
void AddScalar(float* h, const float* a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] += a[i];
}

// gate[i] = SiLU(gate[i]) * up[i].
void SiluGateScalar(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

// heads weight vectors w[heads][n] over the same rows into out[heads][hd]: each head as
// WeightedRows alone would compute it.
void WeightedRowsHeadsScalar(const float* w, int64_t heads, const float* const* rows, int64_t n, int64_t hd,
                             float* out) {
  for (int64_t k = 0; k < heads; ++k) WeightedRowsScalar(w + k * n, rows, n, hd, out + k * hd);
}

// bf16 bit patterns -> f32 (exact: the top half of the f32's bits).
void WidenBf16Scalar(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(x[i]) << 16;
    std::memcpy(y + i, &u, sizeof(u));
  }
}

#if CASCADE_HAS_X86
// How far ahead attention's loops prefetch cache slots (rows of head_dim floats).
constexpr int64_t kPrefetchSlots = 8;

// Four dots of q against rows a..d (hd % 16 == 0): 16-lane FMA partial sums, then per row the tree
// (lanes i + i+8) + (i+4 + i+12) -> ((0 + 2) + (1 + 3)), four rows at once in the last step.
CASCADE_AVX512_FN __m128 Dot4Avx512(const float* q, const float* a, const float* b, const float* c, const float* d,
                                     int64_t hd) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  const float* rows[4] = {a, b, c, d};
  for (int64_t i = 0; i < hd; i += 16) {
    const __m512 qv = _mm512_loadu_ps(q + i);
    for (int r = 0; r < 4; ++r) acc[r] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(rows[r] + i), acc[r]);
  }
  __m128 s[4];
  for (int r = 0; r < 4; ++r) {  // quarters e0..e3: (e0 + e2) + (e1 + e3)
    const __m128 e0 = _mm512_castps512_ps128(acc[r]), e1 = _mm512_extractf32x4_ps(acc[r], 1),
                 e2 = _mm512_extractf32x4_ps(acc[r], 2), e3 = _mm512_extractf32x4_ps(acc[r], 3);
    s[r] = _mm_add_ps(_mm_add_ps(e0, e2), _mm_add_ps(e1, e3));
  }
  _MM_TRANSPOSE4_PS(s[0], s[1], s[2], s[3]);  // s[k] lane r = row r's lane k
  return _mm_add_ps(_mm_add_ps(s[0], s[2]), _mm_add_ps(s[1], s[3]));
}

CASCADE_AVX512_FN void ScoresAvx512(const float* q, const float* const* rows, int64_t n, int64_t hd, float* scores) {
  if (hd % 16 != 0) {
    for (int64_t i = 0; i < n; ++i) scores[i] = DotAvx512(q, rows[i], hd);
    return;
  }
  for (int64_t i = 0; i < n; i += 4) {
    // The rows kPrefetchSlots ahead (measured, decoder_bench q4 at position 1500: attention
    // 5.07 -> 4.36 ms a step, one run each).
    for (int k = 0; k < 4 && i + kPrefetchSlots + k < n; ++k)
      for (int64_t b = 0; b < hd; b += 16) _mm_prefetch(reinterpret_cast<const char*>(rows[i + kPrefetchSlots + k] + b), _MM_HINT_T0);
    // A short last group repeats its last row (those results are dropped).
    const float* r[4];
    for (int k = 0; k < 4; ++k) r[k] = rows[std::min(i + k, n - 1)];
    alignas(16) float out[4];
    _mm_store_ps(out, Dot4Avx512(q, r[0], r[1], r[2], r[3], hd));
    for (int k = 0; k < 4 && i + k < n; ++k) scores[i + k] = out[k];
  }
}

// 16 elements of a key or value row as floats: f32 rows as they are, bf16 rows (a bf16 cache's)
// widened exactly, so every kernel below computes the same FMAs on either.
CASCADE_AVX512_FN inline __m512 LoadRow16(const float* p) { return _mm512_loadu_ps(p); }
CASCADE_AVX512_FN inline __m512 LoadRow16(const uint16_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

// As ScoresHeadsScalar for hd % 16 == 0 and G heads, 16 slots in the lanes of a vector: each
// block of 16 keys x 16 dimensions is transposed in registers (a vector then holds one dimension
// of 16 slots) and a score is two FMA chains, over its even and its odd dimensions in order, then
// their sum. No horizontal sums (ScoresAvx512 pays ~3 shuffles and adds per slot and head for
// them), and each key is loaded once for the G heads. A score depends only on q and its key,
// never on n or which block the slot falls in: rows stay bit-identical between a decode(1) and a
// verify(T). The first `ready` blocks come already transposed in kt ([block][hd][16], made by
// TransposeKeyBlocksAvx512 once for all rows of a verify, whose cached slots are the same keys): the
// same vectors, so the same FMAs. Rows of E = float, or uint16_t for bf16 rows (LoadRow16).
template <int G, typename E = float>
CASCADE_AVX512_FN void ScoresHeadsLanes(const float* q, const E* const* rows, int64_t n, int64_t hd, float* s,
                                        const float* kt, int64_t ready) {
  for (int64_t i = 0; i < n; i += 16) {
    const bool transposed = i / 16 < ready;
    if (!transposed)
      for (int64_t k = i + 16; k < std::min(i + 32, n); ++k)
        for (int64_t b = 0; b < hd; b += 16) _mm_prefetch(reinterpret_cast<const char*>(rows[k] + b), _MM_HINT_T0);
    // A short last block repeats its last row (those lanes are not stored).
    const E* r[16];
    for (int64_t k = 0; k < 16; ++k) r[k] = rows[std::min(i + k, n - 1)];
    __m512 even[G], odd[G];
    for (int h = 0; h < G; ++h) even[h] = odd[h] = _mm512_setzero_ps();
    for (int64_t d0 = 0; d0 < hd; d0 += 16) {
      __m512 v[16];
      if (transposed) {
        const float* block = kt + ((i / 16) * hd + d0) * 16;
        for (int j = 0; j < 16; ++j) v[j] = _mm512_loadu_ps(block + j * 16);
      } else {
        for (int k = 0; k < 16; ++k) v[k] = LoadRow16(r[k] + d0);
        Transpose16x16(v);  // v[j] = dimension d0 + j of the 16 slots
      }
      for (int j = 0; j < 16; j += 2)
        for (int h = 0; h < G; ++h) {
          even[h] = _mm512_fmadd_ps(_mm512_set1_ps(q[h * hd + d0 + j]), v[j], even[h]);
          odd[h] = _mm512_fmadd_ps(_mm512_set1_ps(q[h * hd + d0 + j + 1]), v[j + 1], odd[h]);
        }
    }
    const __mmask16 m = FirstLanes16(n - i);
    for (int h = 0; h < G; ++h) _mm512_mask_storeu_ps(s + h * n + i, m, _mm512_add_ps(even[h], odd[h]));
  }
}

// The scores of two rows of a verify over the same transposed key blocks (kt, as
// TransposeKeyBlocksAvx512 makes them): per row and head the very FMAs ScoresHeadsLanes makes for
// those blocks (the even and odd chains in the same order, then their sum), with twice the chains
// in flight and each key vector loaded once for both rows (bf16q4 verify(13) at slot 250: the
// scores ran at ~0.6 FMAs a cycle one row at a time, session 18). Head h's scores of row a go to
// sa + h * lda (row b: sb + h * ldb), block `b` at 16 b.
template <int G>
CASCADE_AVX512_FN void ScoresKtPairLanes(const float* qa, const float* qb, const float* kt, int64_t blocks, int64_t hd,
                                         float* sa, int64_t lda, float* sb, int64_t ldb) {
  for (int64_t b = 0; b < blocks; ++b) {
    __m512 ea[G], oa[G], eb[G], ob[G];
    for (int h = 0; h < G; ++h) ea[h] = oa[h] = eb[h] = ob[h] = _mm512_setzero_ps();
    for (int64_t d0 = 0; d0 < hd; d0 += 16) {
      const float* block = kt + (b * hd + d0) * 16;
      for (int j = 0; j < 16; j += 2) {
        const __m512 ve = _mm512_loadu_ps(block + j * 16), vo = _mm512_loadu_ps(block + (j + 1) * 16);
        for (int h = 0; h < G; ++h) {
          ea[h] = _mm512_fmadd_ps(_mm512_set1_ps(qa[h * hd + d0 + j]), ve, ea[h]);
          oa[h] = _mm512_fmadd_ps(_mm512_set1_ps(qa[h * hd + d0 + j + 1]), vo, oa[h]);
          eb[h] = _mm512_fmadd_ps(_mm512_set1_ps(qb[h * hd + d0 + j]), ve, eb[h]);
          ob[h] = _mm512_fmadd_ps(_mm512_set1_ps(qb[h * hd + d0 + j + 1]), vo, ob[h]);
        }
      }
    }
    for (int h = 0; h < G; ++h) {
      _mm512_storeu_ps(sa + h * lda + 16 * b, _mm512_add_ps(ea[h], oa[h]));
      _mm512_storeu_ps(sb + h * ldb + 16 * b, _mm512_add_ps(eb[h], ob[h]));
    }
  }
}

// kt[b][d][k] = rows[16 b + k][d] for `blocks` whole blocks of 16 keys (hd % 16 == 0).
CASCADE_AVX512_FN void TransposeKeyBlocksAvx512(const float* const* rows, int64_t blocks, int64_t hd, float* kt) {
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t d0 = 0; d0 < hd; d0 += 16) {
      __m512 v[16];
      for (int k = 0; k < 16; ++k) v[k] = _mm512_loadu_ps(rows[16 * b + k] + d0);
      Transpose16x16(v);
      for (int j = 0; j < 16; ++j) _mm512_storeu_ps(kt + (b * hd + d0 + j) * 16, v[j]);
    }
}

// out (64 floats) in registers across all rows.
CASCADE_AVX512_FN void WeightedRowsAvx512(const float* w, const float* const* rows, int64_t n, int64_t hd, float* out) {
  if (hd != 64) {
    for (int64_t i = 0; i < n; ++i) AxpyAvx512(w[i], rows[i], out, hd);
    return;
  }
  __m512 o0 = _mm512_loadu_ps(out), o1 = _mm512_loadu_ps(out + 16), o2 = _mm512_loadu_ps(out + 32),
         o3 = _mm512_loadu_ps(out + 48);
  for (int64_t i = 0; i < n; ++i) {
    const __m512 s = _mm512_set1_ps(w[i]);
    const float* x = rows[i];
    o0 = _mm512_fmadd_ps(s, _mm512_loadu_ps(x), o0);
    o1 = _mm512_fmadd_ps(s, _mm512_loadu_ps(x + 16), o1);
    o2 = _mm512_fmadd_ps(s, _mm512_loadu_ps(x + 32), o2);
    o3 = _mm512_fmadd_ps(s, _mm512_loadu_ps(x + 48), o3);
  }
  _mm512_storeu_ps(out, o0);
  _mm512_storeu_ps(out + 16, o1);
  _mm512_storeu_ps(out + 32, o2);
  _mm512_storeu_ps(out + 48, o3);
}

// Up to 4 heads' outputs (64 floats each) in registers at once, each row read once for all of
// them; per head the same FMAs in the same order as WeightedRowsAvx512.
template <int K, typename E = float>
CASCADE_AVX512_FN void WeightedRowsHeadsAvx512(const float* w, const E* const* rows, int64_t n, float* out) {
  __m512 o[K][4];
  for (int k = 0; k < K; ++k)
    for (int j = 0; j < 4; ++j) o[k][j] = _mm512_loadu_ps(out + k * 64 + j * 16);
  for (int64_t i = 0; i < n; ++i) {
    if (i + kPrefetchSlots < n)
      for (int j = 0; j < 4; ++j) _mm_prefetch(reinterpret_cast<const char*>(rows[i + kPrefetchSlots] + j * 16), _MM_HINT_T0);
    const E* x = rows[i];
    const __m512 x0 = LoadRow16(x), x1 = LoadRow16(x + 16), x2 = LoadRow16(x + 32), x3 = LoadRow16(x + 48);
    for (int k = 0; k < K; ++k) {
      const __m512 s = _mm512_set1_ps(w[k * n + i]);
      o[k][0] = _mm512_fmadd_ps(s, x0, o[k][0]);
      o[k][1] = _mm512_fmadd_ps(s, x1, o[k][1]);
      o[k][2] = _mm512_fmadd_ps(s, x2, o[k][2]);
      o[k][3] = _mm512_fmadd_ps(s, x3, o[k][3]);
    }
  }
  for (int k = 0; k < K; ++k)
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(out + k * 64 + j * 16, o[k][j]);
}

// e^x (x clamped to [-87, 88]): x = n ln2 + r with |r| <= ln2 / 2, e^r by
// its degree-6 Taylor polynomial (relative error ~1e-7), times 2^n. Each lane on its own, so a
// score's weight does not depend on its neighbours.
CASCADE_AVX512_FN __m512 ExpAvx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// As ExpShiftedScalar, 16 lanes at a time: the sum in 16 lane partial sums then
// _mm512_reduce_add_ps, an order fixed by n alone.
CASCADE_AVX512_FN float ExpShiftedAvx512(float* s, int64_t n, float scale, float* max_out) {
  const __m512 sv = _mm512_set1_ps(scale);
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = FirstLanes16(n - i);
    const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + i), sv);
    _mm512_mask_storeu_ps(s + i, m, v);
    mx = _mm512_mask_max_ps(mx, m, mx, v);
  }
  const float top_value = _mm512_reduce_max_ps(mx);
  const __m512 top = _mm512_set1_ps(top_value);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = FirstLanes16(n - i);
    const __m512 e = ExpAvx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + i), top));
    _mm512_mask_storeu_ps(s + i, m, e);
    sum = _mm512_mask_add_ps(sum, m, sum, e);
  }
  *max_out = top_value;
  return _mm512_reduce_add_ps(sum);
}

// gate[i] = SiLU(gate[i]) * up[i] = gate / (1 + e^-gate) * up, 16 lanes at a time.
CASCADE_AVX512_FN void SiluGateAvx512(float* gate, const float* up, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = FirstLanes16(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, ExpAvx512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_mask_storeu_ps(gate + i, m, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(m, up + i)));
  }
}

// The element loops above, 16 lanes at a time with each lane's arithmetic the scalar loop's:
// multiplies and adds with explicit rounding (GCC contracts a plain vector a * b - c * d into an
// FMA, which rounds once where the scalar code rounds twice).
constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
CASCADE_AVX512_FN void ScaleRowAvx512(const float* x, float r, const float* w, bool plus_one, float* y, int64_t d) {
  const __m512 rv = _mm512_set1_ps(r), one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < d; i += 16) {
    const __mmask16 m = FirstLanes16(d - i);
    __m512 wv = _mm512_maskz_loadu_ps(m, w + i);
    if (plus_one) wv = _mm512_add_round_ps(wv, one, kRne);
    _mm512_mask_storeu_ps(y + i, m, _mm512_mul_round_ps(_mm512_mul_round_ps(_mm512_maskz_loadu_ps(m, x + i), rv, kRne), wv, kRne));
  }
}
CASCADE_AVX512_FN void RopeHeadAvx512(float* v, const float* c, const float* s, int64_t half) {
  for (int64_t i = 0; i < half; i += 16) {
    const __mmask16 m = FirstLanes16(half - i);
    const __m512 x1 = _mm512_maskz_loadu_ps(m, v + i), x2 = _mm512_maskz_loadu_ps(m, v + i + half),
                 cv = _mm512_maskz_loadu_ps(m, c + i), sv = _mm512_maskz_loadu_ps(m, s + i);
    _mm512_mask_storeu_ps(v + i, m, _mm512_sub_round_ps(_mm512_mul_round_ps(x1, cv, kRne), _mm512_mul_round_ps(x2, sv, kRne), kRne));
    _mm512_mask_storeu_ps(v + i + half, m,
                          _mm512_add_round_ps(_mm512_mul_round_ps(x2, cv, kRne), _mm512_mul_round_ps(x1, sv, kRne), kRne));
  }
}
// How far ahead (elements) the widening prefetches: a chunk's rows are a few KB, so the
// hardware's stream prefetch barely starts before they end.
constexpr int64_t kWidenPrefetch = 2048;
CASCADE_AVX512_FN void WidenBf16Avx512(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    if (i % 32 == 0) _mm_prefetch(reinterpret_cast<const char*>(x + i + kWidenPrefetch), _MM_HINT_T0);
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)));
    _mm512_storeu_ps(y + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
  WidenBf16Scalar(x + i, y + i, n - i);
}
CASCADE_AVX512_FN void AddAvx512(float* h, const float* a, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = FirstLanes16(n - i);
    _mm512_mask_storeu_ps(h + i, m, _mm512_add_round_ps(_mm512_maskz_loadu_ps(m, h + i), _mm512_maskz_loadu_ps(m, a + i), kRne));
  }
}


// Every head's weighted sum for hd = 64, up to 4 heads per pass over the rows (f32 or bf16 rows).
template <typename E>
void WeightedRowsHeads64(const float* w, int64_t heads, const E* const* rows, int64_t n, float* out) {
  int64_t k = 0;
  for (; k + 4 <= heads; k += 4) WeightedRowsHeadsAvx512<4>(w + k * n, rows, n, out + k * 64);
  switch (heads - k) {
    case 3: WeightedRowsHeadsAvx512<3>(w + k * n, rows, n, out + k * 64); break;
    case 2: WeightedRowsHeadsAvx512<2>(w + k * n, rows, n, out + k * 64); break;
    case 1: WeightedRowsHeadsAvx512<1>(w + k * n, rows, n, out + k * 64); break;
    default: break;
  }
}

// ScoresHeadsLanes for 1..8 heads (f32 or bf16 rows); false: more heads than that.
template <typename E>
bool ScoresHeadsLanesAny(const float* q, int64_t heads, const E* const* rows, int64_t n, int64_t hd, float* scores,
                         const float* kt, int64_t ready) {
  switch (heads) {
    case 1: ScoresHeadsLanes<1>(q, rows, n, hd, scores, kt, ready); return true;
    case 2: ScoresHeadsLanes<2>(q, rows, n, hd, scores, kt, ready); return true;
    case 3: ScoresHeadsLanes<3>(q, rows, n, hd, scores, kt, ready); return true;
    case 4: ScoresHeadsLanes<4>(q, rows, n, hd, scores, kt, ready); return true;
    case 5: ScoresHeadsLanes<5>(q, rows, n, hd, scores, kt, ready); return true;
    case 6: ScoresHeadsLanes<6>(q, rows, n, hd, scores, kt, ready); return true;
    case 7: ScoresHeadsLanes<7>(q, rows, n, hd, scores, kt, ready); return true;
    case 8: ScoresHeadsLanes<8>(q, rows, n, hd, scores, kt, ready); return true;
    default: return false;
  }
}

void WeightedRowsHeadsAvx512Any(const float* w, int64_t heads, const float* const* rows, int64_t n, int64_t hd,
                                float* out) {
  if (hd != 64) {
    for (int64_t k = 0; k < heads; ++k) WeightedRowsAvx512(w + k * n, rows, n, hd, out + k * hd);
    return;
  }
  WeightedRowsHeads64(w, heads, rows, n, out);
}
#endif

#if CASCADE_HAS_X86
void ScoresHeadsAvx512(const float* q, int64_t heads, const float* const* rows, int64_t n, int64_t hd, float* scores,
                       const float* kt, int64_t ready) {
  if (hd % 16 == 0 && ScoresHeadsLanesAny(q, heads, rows, n, hd, scores, kt, ready)) return;
  for (int64_t k = 0; k < heads; ++k) ScoresAvx512(q + k * hd, rows, n, hd, scores + k * n);
}

// Scores and weighted sums straight from bf16 rows (a bf16 cache's and the new tokens' rounded
// rows), widened in registers: the FMAs of ScoresHeadsAvx512 / WeightedRowsHeadsAvx512Any on the
// widened rows, without writing them out first. false: not computed (hd not 64, or > 8 heads).
bool ScoresHeadsBf16Avx512(const float* q, int64_t heads, const uint16_t* const* rows, int64_t n, int64_t hd,
                           float* scores) {
  return hd == 64 && ScoresHeadsLanesAny(q, heads, rows, n, hd, scores, nullptr, 0);
}
bool WeightedRowsHeadsBf16Avx512(const float* w, int64_t heads, const uint16_t* const* rows, int64_t n, int64_t hd,
                                 float* out) {
  if (hd != 64) return false;
  WeightedRowsHeads64(w, heads, rows, n, out);
  return true;
}

// ScoresKtPairLanes for 1..4 heads (more would not fit the registers); false: not computed.
bool ScoresKtPairAvx512(const float* qa, const float* qb, int64_t heads, const float* kt, int64_t blocks, int64_t hd,
                        float* sa, int64_t lda, float* sb, int64_t ldb) {
  if (hd % 16 != 0) return false;
  switch (heads) {
    case 1: ScoresKtPairLanes<1>(qa, qb, kt, blocks, hd, sa, lda, sb, ldb); return true;
    case 2: ScoresKtPairLanes<2>(qa, qb, kt, blocks, hd, sa, lda, sb, ldb); return true;
    case 3: ScoresKtPairLanes<3>(qa, qb, kt, blocks, hd, sa, lda, sb, ldb); return true;
    case 4: ScoresKtPairLanes<4>(qa, qb, kt, blocks, hd, sa, lda, sb, ldb); return true;
    default: return false;
  }
}
#endif

float SumSquaresScalar(const float* x, int64_t n) { return DotScalar(x, x, n); }
#if CASCADE_HAS_X86
float SumSquaresAvx512(const float* x, int64_t n) { return DotAvx512(x, x, n); }
#endif

struct VectorOps {
  float (*sum_squares)(const float*, int64_t) = SumSquaresScalar;
  void (*scores_heads)(const float*, int64_t, const float* const*, int64_t, int64_t, float*, const float*, int64_t) =
      ScoresHeadsScalar;
  // Key blocks transposed once for every row of a verify (ScoresHeadsLanes); null: not used.
  void (*transpose_key_blocks)(const float* const*, int64_t, int64_t, float*) = nullptr;
  // Two rows' scores over transposed key blocks at once (ScoresKtPairLanes); null: not used.
  bool (*scores_kt_pair)(const float*, const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t, float*,
                         int64_t) = nullptr;
  void (*weighted_rows_heads)(const float*, int64_t, const float* const*, int64_t, int64_t, float*) =
      WeightedRowsHeadsScalar;
  float (*exp_shifted)(float*, int64_t, float, float*) = ExpShiftedScalar;
  void (*silu_gate)(float*, const float*, int64_t) = SiluGateScalar;
  void (*scale_row)(const float*, float, const float*, bool, float*, int64_t) = ScaleRowScalar;
  void (*rope_head)(float*, const float*, const float*, int64_t) = RopeHeadScalar;
  void (*add)(float*, const float*, int64_t) = AddScalar;
  void (*widen_bf16)(const uint16_t*, float*, int64_t) = WidenBf16Scalar;
  // Scores and weighted sums over bf16 rows (ScoresHeadsBf16Avx512); null: widen the rows first.
  bool (*scores_heads_bf16)(const float*, int64_t, const uint16_t* const*, int64_t, int64_t, float*) = nullptr;
  bool (*weighted_rows_heads_bf16)(const float*, int64_t, const uint16_t* const*, int64_t, int64_t, float*) = nullptr;
};

const VectorOps& Ops() {
  static const VectorOps ops = [] {
    VectorOps o;
#if CASCADE_HAS_X86
    if (BestF32Impl() == Int8Impl::kAvx512) {
      o.scores_heads = ScoresHeadsAvx512;
      o.transpose_key_blocks = TransposeKeyBlocksAvx512;
      o.scores_kt_pair = ScoresKtPairAvx512;
      o.sum_squares = SumSquaresAvx512;
      o.weighted_rows_heads = WeightedRowsHeadsAvx512Any;
      o.exp_shifted = ExpShiftedAvx512;
      o.silu_gate = SiluGateAvx512;
      o.scale_row = ScaleRowAvx512;
      o.rope_head = RopeHeadAvx512;
      o.add = AddAvx512;
      o.widen_bf16 = WidenBf16Avx512;
      o.scores_heads_bf16 = ScoresHeadsBf16Avx512;
      o.weighted_rows_heads_bf16 = WeightedRowsHeadsBf16Avx512;
    }
#endif
    return o;
  }();
  return ops;
}

// ---------------------------------------------------------------- the pieces of a layer

// Visible slots per attention task (LayerRunner::AttentionChunk). Fixed, never a function of T
// or the thread count: a row's arithmetic must not depend on the call it is in. 64: SmolLM2's 3
// KV groups at position ~128 make 6 tasks for the 2 cores, not 3.
constexpr int64_t kAttentionChunk = 64;

// From how many tokens the gate's SiLU runs on both threads (a verify of 13: ~10 us a layer alone).
constexpr int64_t kParallelGateTokens = 4;

// y[t] = x[t] * rsqrt(mean(x[t]^2) + eps) * w  (w + 1 for Gemma), per row; the sum of squares
// by Ops().sum_squares (one order per implementation).
void RmsNorm(const float* x, const float* w, float* y, int64_t T, int64_t d, float eps, bool plus_one) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * d;
    const float r = 1.0f / std::sqrt(Ops().sum_squares(xr, d) / static_cast<float>(d) + eps);
    Ops().scale_row(xr, r, w, plus_one, y + t * d, d);
  }
}

// Hugging Face rotate-half RoPE in place on x[T, heads, hd].
void Rope(float* x, int64_t T, int64_t heads, int64_t hd, const float* cos, const float* sin) {
  const int64_t half = hd / 2;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < heads; ++h) Ops().rope_head(x + (t * heads + h) * hd, cos + t * half, sin + t * half, half);
}

float GeluTanh(float g) {
  const float inner = (g + g * g * g * 0.044715f) * 0.7978845608028654f;
  return g * (std::tanh(inner) + 1.0f) * 0.5f;
}

// Adds the wall time of its scope to *total (nothing when total is null): the profile's split of
// a step (decoder_bench: matmuls, attention).
class Timed {
 public:
  explicit Timed(int64_t* total) : total_(total), start_(std::chrono::steady_clock::now()) {}
  ~Timed() {
    if (total_)
      *total_ += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start_).count();
  }
  Timed(const Timed&) = delete;
  Timed& operator=(const Timed&) = delete;

 private:
  int64_t* total_;
  std::chrono::steady_clock::time_point start_;
};

// The tasks of one parallel job over up to 4 matrices: whole 16-row blocks split evenly within a
// matrix, each task at most one thread's share of the job's weight bytes, and as many tasks in all
// as a multiple of the team's threads, the extra ones going to the matrix with the largest tasks.
// With 2 threads: q/k/v as q/2, q/2, k, v; gate and up whole; o and down in halves. Every task
// restarts its kernel's pipeline and prefetch stream, so few large tasks beat session 10's ~128 KB
// ones (3-7% a decode step on the Intel host: docs/bench/decoder.md, session 29). Tasks are claimed
// dynamically, so tasks of one size end together. Every output is computed alike whatever its
// range (MatmulRange).
class MatmulSplit {
 public:
  static int64_t RowBytes(const WeightMatrix& m) {
    switch (m.kind) {
      case WeightMatrix::Kind::kQ4:
      case WeightMatrix::Kind::kQ4Bf16:
      case WeightMatrix::Kind::kQ4ExactBf16: return m.in / 2;
      case WeightMatrix::Kind::kInt8:
      case WeightMatrix::Kind::kInt8Panels:
      case WeightMatrix::Kind::kQ8Bf16: return m.in;
      case WeightMatrix::Kind::kBf16: return m.in * 2;
      default: return m.in * 4;
    }
  }

  MatmulSplit(const WeightMatrix* const* matrices, int64_t count, int64_t threads) : count_(count) {
    int64_t job_bytes = 0;
    for (int64_t j = 0; j < count; ++j) {
      const WeightMatrix& m = *matrices[j];
      // f32 [in, out] ranges are columns (64 a task).
      const int64_t unit = m.kind == WeightMatrix::Kind::kF32Transposed || m.kind == WeightMatrix::Kind::kF32Panels ? 64 : 16;
      blocks_[j] = (m.out + unit - 1) / unit;
      unit_[j] = unit;
      out_[j] = m.out;
      bytes_per_block_[j] = unit * RowBytes(m);
      job_bytes += bytes_per_block_[j] * blocks_[j];
    }
    // parts = ceil(bytes / (job_bytes / threads)), at least 1, at most one per block.
    int64_t total = 0;
    for (int64_t j = 0; j < count; ++j) {
      const int64_t bytes = bytes_per_block_[j] * blocks_[j];
      parts_[j] = std::min(blocks_[j], std::max<int64_t>(1, (bytes * threads + job_bytes - 1) / std::max<int64_t>(1, job_bytes)));
      total += parts_[j];
    }
    for (int64_t extra = (threads - total % threads) % threads; extra > 0; --extra) {
      int64_t widest = -1;
      double widest_bytes = 0;
      for (int64_t j = 0; j < count; ++j) {
        const double bytes = static_cast<double>(bytes_per_block_[j]) * blocks_[j] / parts_[j];
        if (parts_[j] < blocks_[j] && bytes > widest_bytes) widest = j, widest_bytes = bytes;
      }
      if (widest < 0) break;
      ++parts_[widest];
    }
    for (int64_t j = 0; j < count; ++j) first_[j + 1] = first_[j] + parts_[j];
  }
  int64_t tasks() const { return first_[count_]; }
  // Task `task`'s matrix (the return value) and its output range [*o0, *o1).
  int64_t Range(int64_t task, int64_t* o0, int64_t* o1) const {
    int64_t j = count_ - 1;
    while (first_[j] > task) --j;
    const int64_t i = task - first_[j];
    *o0 = i * blocks_[j] / parts_[j] * unit_[j];
    *o1 = std::min(out_[j], (i + 1) * blocks_[j] / parts_[j] * unit_[j]);
    return j;
  }

 private:
  int64_t count_;
  int64_t blocks_[4] = {}, unit_[4] = {}, out_[4] = {}, parts_[4] = {}, bytes_per_block_[4] = {}, first_[5] = {};
};

// Several matrices that read the same activations, as one parallel job of output ranges.
struct MatmulJob {
  const WeightMatrix* m;
  const PreparedActivations* a;
  float* y;
};

// Requests every cache line of [p, p + bytes) (a hint; nothing depends on it).
inline void PrefetchLines(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 3);
}

class LayerRunner {
 public:
  LayerRunner(const DecoderLayersConfig& c, const DecoderLayersCall& call, const KernelImpls& impls, ThreadTeam& team,
              DecoderLayersStats* stats)
      : c_(c), call_(call), impls_(impls), team_(team), stats_(stats) {
    const int64_t T = call.num_tokens;
    x_.resize(static_cast<size_t>(T * c.hidden));
    h_.assign(call.hidden_in, call.hidden_in + T * c.hidden);
    q_.resize(static_cast<size_t>(T * c.heads * c.head_dim));
    k_.resize(static_cast<size_t>(T * c.kv_heads * c.head_dim));
    v_.resize(k_.size());
    attn_.resize(q_.size());
    gate_.resize(static_cast<size_t>(T * c.intermediate));
    up_.resize(gate_.size());
    tmp_.resize(static_cast<size_t>(T * c.hidden));
    // Row t sees the cache's slots 0..start-1, then the new tokens its mask shows (and itself).
    visible_new_.resize(static_cast<size_t>(T));
    int64_t most = 0;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < T; ++j)
        if (j == t || call.block_mask[t * T + j]) visible_new_[t].push_back(static_cast<int32_t>(j));
      most = std::max(most, call.start_pos + static_cast<int64_t>(visible_new_[t].size()));
    }
    chunks_ = (most + kAttentionChunk - 1) / kAttentionChunk;
    const int64_t G = c.heads / c.kv_heads;
    part_max_.resize(static_cast<size_t>(c.kv_heads * chunks_ * T * G));
    part_sum_.resize(part_max_.size());
    part_acc_.resize(part_max_.size() * static_cast<size_t>(c.head_dim));
    chunks_left_ = std::make_unique<std::atomic<int64_t>[]>(static_cast<size_t>(c.kv_heads));
  }

  void Run(const std::vector<DecoderLayerWeights>& layers) {
    for (size_t l = 0; l < layers.size(); ++l) Layer(static_cast<int64_t>(l), layers[l]);
    if (call_.final_norm)
      RmsNorm(h_.data(), call_.final_norm, call_.hidden_out, call_.num_tokens, c_.hidden, c_.rms_norm_eps, c_.gemma);
    else
      std::copy(h_.begin(), h_.end(), call_.hidden_out);
  }

 private:
  void Layer(int64_t l, const DecoderLayerWeights& w) {
    const VectorOps& ops = Ops();
    const int64_t T = call_.num_tokens, d = c_.hidden, hd = c_.head_dim, H = c_.heads, KV = c_.kv_heads;
    RmsNorm(h_.data(), w.input_norm, x_.data(), T, d, c_.rms_norm_eps, c_.gemma);
    PrepareActivations(w.q.kind, impls_, x_.data(), T, d, &ax_);
    Matmuls({{&w.q, &ax_, q_.data()}, {&w.k, &ax_, k_.data()}, {&w.v, &ax_, v_.data()}});
    Rope(q_.data(), T, H, hd, call_.rope_cos, call_.rope_sin);
    Rope(k_.data(), T, KV, hd, call_.rope_cos, call_.rope_sin);
    // The new keys/values, heads first: [l, g, t, :] (the caller writes them into the cache).
    // Attention reads the new rows from k_ / v_, so with a bf16 cache they are rounded first.
    if (call_.kv_bf16) {
      uint16_t* kn = static_cast<uint16_t*>(call_.k_new);
      uint16_t* vn = static_cast<uint16_t*>(call_.v_new);
      for (int64_t g = 0; g < KV; ++g)
        for (int64_t t = 0; t < T; ++t) {
          const int64_t dst = ((l * KV + g) * T + t) * hd, src = (t * KV + g) * hd;
          RoundToBf16(&k_[src], hd, kn + dst);
          RoundToBf16(&v_[src], hd, vn + dst);
          ops.widen_bf16(kn + dst, &k_[src], hd);
          ops.widen_bf16(vn + dst, &v_[src], hd);
        }
    } else {
      float* kn = static_cast<float*>(call_.k_new);
      float* vn = static_cast<float*>(call_.v_new);
      for (int64_t g = 0; g < KV; ++g)
        for (int64_t t = 0; t < T; ++t) {
          const int64_t dst = ((l * KV + g) * T + t) * hd, src = (t * KV + g) * hd;
          std::copy(k_.begin() + src, k_.begin() + src + hd, kn + dst);
          std::copy(v_.begin() + src, v_.begin() + src + hd, vn + dst);
        }
    }
    {
      const Timed timed(stats_ ? &stats_->attention_nanoseconds : nullptr);
      // The last chunk task of a group to finish merges the group's chunks (no second job).
      for (int64_t g = 0; g < KV; ++g) chunks_left_[g].store(chunks_, std::memory_order_relaxed);
      team_.Run(KV * chunks_, [&](int64_t i) {
        const int64_t g = i / chunks_;
        AttentionChunk(l, g, i % chunks_);
        if (chunks_left_[g].fetch_sub(1, std::memory_order_acq_rel) == 1)
          for (int64_t t = 0; t < T; ++t) CombineChunks(g, t);
      });
    }
    PrepareActivations(w.o.kind, impls_, attn_.data(), T, H * hd, &aa_);
    Matmuls({{&w.o, &aa_, tmp_.data()}});
    Ops().add(h_.data(), tmp_.data(), T * d);

    RmsNorm(h_.data(), w.post_attention_norm, x_.data(), T, d, c_.rms_norm_eps, c_.gemma);
    PrepareActivations(w.gate.kind, impls_, x_.data(), T, d, &ax_);
    Matmuls({{&w.gate, &ax_, gate_.data()}, {&w.up, &ax_, up_.data()}});
    const int64_t I = c_.intermediate;
    if (c_.gemma) {
      for (int64_t i = 0; i < T * I; ++i) gate_[i] = GeluTanh(gate_[i]) * up_[i];
    } else if (T >= kParallelGateTokens) {
      // One part per thread, split at multiples of 16 (each element's arithmetic is its own).
      const int64_t n = T * I, parts = team_.helpers() + 1, step = (n / parts + 15) / 16 * 16;
      team_.Run(parts, [&](int64_t part) {
        const int64_t lo = std::min(n, part * step), hi = part + 1 == parts ? n : std::min(n, lo + step);
        Ops().silu_gate(gate_.data() + lo, up_.data() + lo, hi - lo);
      });
    } else {
      Ops().silu_gate(gate_.data(), up_.data(), T * I);
    }
    PrepareActivations(w.down.kind, impls_, gate_.data(), T, I, &ag_);
    Matmuls({{&w.down, &ag_, tmp_.data()}});
    Ops().add(h_.data(), tmp_.data(), T * d);
  }

  void Matmuls(std::initializer_list<MatmulJob> jobs) {
    const int64_t count = static_cast<int64_t>(jobs.size());
    const WeightMatrix* matrices[4] = {};
    for (int64_t j = 0; j < count; ++j) matrices[j] = jobs.begin()[j].m;
    const MatmulSplit split(matrices, count, team_.helpers() + 1);
    const Timed timed(stats_ ? &stats_->matmul_nanoseconds : nullptr);
    team_.Run(split.tasks(), [&](int64_t task) {
      int64_t o0 = 0, o1 = 0;
      const MatmulJob& job = jobs.begin()[split.Range(task, &o0, &o1)];
      MatmulRange(*job.m, impls_, *job.a, job.y, o0, o1);
    });
  }

  // Attention by chunks of kAttentionChunk visible slots (as flash-decoding splits it): task (g, c)
  // takes chunk c of every row's visible slots for the query heads of KV group g, so both cores
  // share a step's attention however few the groups (SmolLM2 has 3), and a key or value row is
  // read from memory once for all T rows and G heads. Per row and head the chunk leaves its score
  // maximum m, sum of e^(score - m) and the e-weighted sum of its values; CombineChunks merges
  // them in chunk order. Chunk c is visible slots c*64.. of the row's own list, the same list
  // the row has when decoded alone, so rows stay bit-identical between a decode(1) and a
  // verify(T) (and a tree's rows to their chains).
  void AttentionChunk(int64_t l, int64_t g, int64_t c) {
    const VectorOps& ops = Ops();
    const int64_t T = call_.num_tokens, C = call_.max_context, start = call_.start_pos, hd = c_.head_dim,
                  KV = c_.kv_heads, G = c_.heads / KV, lo = c * kAttentionChunk;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    thread_local std::vector<const float*> keys, values;
    thread_local std::vector<float> scores, kt, k_wide, v_wide;
    // The chunk's cached slots [lo, lo + cached); the new tokens' rows are k_ / v_ ([T, KV, hd]).
    const int64_t cached = std::max<int64_t>(0, std::min(lo + kAttentionChunk, start) - lo);
    if (call_.kv_bf16 && T == 1 && ops.scores_heads_bf16 && AttentionChunkBf16(l, g, c, lo)) return;
    const float* kc = nullptr;  // slot lo's key; slot lo + i at kc + i * hd
    const float* vc = nullptr;
    if (call_.kv_bf16) {
      // A bf16 cache halves the bytes attention reads; the chunk's rows are widened once here for
      // every row and head of the call (the same f32 values whoever reads them).
      const size_t at = static_cast<size_t>(((l * KV + g) * C + lo) * hd);
      k_wide.resize(static_cast<size_t>(cached * hd));
      v_wide.resize(k_wide.size());
      ops.widen_bf16(static_cast<const uint16_t*>(call_.k_cache) + at, k_wide.data(), cached * hd);
      ops.widen_bf16(static_cast<const uint16_t*>(call_.v_cache) + at, v_wide.data(), cached * hd);
      kc = k_wide.data();
      vc = v_wide.data();
    } else {
      kc = static_cast<const float*>(call_.k_cache) + ((l * KV + g) * C + lo) * hd;
      vc = static_cast<const float*>(call_.v_cache) + ((l * KV + g) * C + lo) * hd;
      // The chunk's cached keys and values (16 KB each at 64 slots of 64 floats) requested at
      // once: the scores read the keys 16 slots by 16 slots, a line of each at a time, and
      // demand misses came back a few at a time (a 64-slot chunk's scores took ~4.5 us, ~3.6 GB/s).
      // decoder_bench q4 (f32 cache), attention per decode: 1.72 -> 1.28 ms at position 400,
      // 0.65 -> 0.56 at 128 (session 25, in one process). The bf16 cache's widening already reads
      // ahead (WidenBf16Avx512); the same requests there measured no faster.
      PrefetchLines(kc, cached * hd * static_cast<int64_t>(sizeof(float)));
      PrefetchLines(vc, cached * hd * static_cast<int64_t>(sizeof(float)));
    }
    const float* kn = k_.data() + g * hd;  // new token j's key at kn + j * KV * hd
    const float* vn = v_.data() + g * hd;
    // The chunk's whole blocks of 16 cached slots are the same keys for every row: with several
    // rows, transposed once here instead of once per row (decoder_bench bf16q4 verify(13): attention
    // 1.80 -> 1.43-1.65 ms, session 17).
    int64_t ready = 0;
    if (T > 1 && ops.transpose_key_blocks && hd % 16 == 0 && G <= 8) {
      ready = cached / 16;
      if (ready > 0) {
        keys.resize(static_cast<size_t>(16 * ready));
        for (int64_t i = 0; i < 16 * ready; ++i) keys[i] = kc + i * hd;
        kt.resize(static_cast<size_t>(16 * ready * hd));
        ops.transpose_key_blocks(keys.data(), ready, hd, kt.data());
      }
    }
    // Each row's visible slots in this chunk, and where its scores go ([G][n] per row).
    thread_local std::vector<int64_t> row_n, row_at;
    thread_local std::vector<float> tail;
    row_n.resize(static_cast<size_t>(T));
    row_at.resize(static_cast<size_t>(T) + 1);
    row_at[0] = 0;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t hi = std::min(lo + kAttentionChunk, start + static_cast<int64_t>(visible_new_[t].size()));
      row_n[t] = std::max<int64_t>(0, hi - lo);
      row_at[t + 1] = row_at[t] + G * row_n[t];
    }
    scores.resize(static_cast<size_t>(row_at[T]));
    // The transposed blocks' scores for the rows in pairs (every row sees them: they are cached
    // slots); each row's other slots below.
    bool paired = false;
    if (ready > 0 && ops.scores_kt_pair) {
      paired = true;
      for (int64_t t = 0; t < T && paired; t += 2) {
        const int64_t u = std::min(t + 1, T - 1);  // an odd last row pairs with itself
        paired = ops.scores_kt_pair(q_.data() + (t * c_.heads + g * G) * hd, q_.data() + (u * c_.heads + g * G) * hd,
                                    G, kt.data(), ready, hd, scores.data() + row_at[t], row_n[t],
                                    scores.data() + row_at[u], row_n[u]);
      }
    }
    for (int64_t t = 0; t < T; ++t) {
      const std::vector<int32_t>& fresh = visible_new_[t];
      const int64_t hi = lo + row_n[t];
      if (hi <= lo) continue;
      const int64_t n = hi - lo;
      keys.resize(static_cast<size_t>(n));
      values.resize(static_cast<size_t>(n));
      for (int64_t i = lo; i < hi; ++i) {
        if (i < start) {
          keys[i - lo] = kc + (i - lo) * hd;
          values[i - lo] = vc + (i - lo) * hd;
        } else {
          const int64_t j = fresh[i - start];
          keys[i - lo] = kn + j * KV * hd;
          values[i - lo] = vn + j * KV * hd;
        }
      }
      float* s = scores.data() + row_at[t];
      const size_t part = static_cast<size_t>(((g * chunks_ + c) * T + t) * G);
      const float* q = q_.data() + (t * c_.heads + g * G) * hd;
      if (paired) {
        const int64_t done = 16 * ready, rest = n - done;
        if (rest > 0) {
          tail.resize(static_cast<size_t>(G * rest));
          ops.scores_heads(q, G, keys.data() + done, rest, hd, tail.data(), nullptr, 0);
          for (int64_t k = 0; k < G; ++k) std::copy(tail.begin() + k * rest, tail.begin() + (k + 1) * rest, s + k * n + done);
        }
      } else {
        ops.scores_heads(q, G, keys.data(), n, hd, s, kt.data(), std::min(ready, n / 16));
      }
      for (int64_t k = 0; k < G; ++k) part_sum_[part + k] = ops.exp_shifted(s + k * n, n, scale, &part_max_[part + k]);
      float* acc = part_acc_.data() + part * hd;
      std::fill(acc, acc + G * hd, 0.0f);
      ops.weighted_rows_heads(s, G, values.data(), n, hd, acc);
    }
  }

  // A decode's chunk over a bf16 cache, its rows read as bf16 (ops.scores_heads_bf16): the same
  // scores, weights and sums as the widening path above, without writing the widened rows out
  // (decoder_bench bf16q4, attention per decode 1.18 -> 0.92 ms at position 400, 0.44 -> 0.33 at
  // 128, session 25, in one process; requesting the rows up front as the f32 path does measured
  // the same). The new token's own row is its bf16 rounding in k_new / v_new, whose widening is
  // k_ / v_. false: the kernels do not take this shape.
  bool AttentionChunkBf16(int64_t l, int64_t g, int64_t c, int64_t lo) {
    const VectorOps& ops = Ops();
    const int64_t C = call_.max_context, start = call_.start_pos, hd = c_.head_dim, KV = c_.kv_heads,
                  G = c_.heads / KV;
    const int64_t hi = std::min(lo + kAttentionChunk, start + static_cast<int64_t>(visible_new_[0].size()));
    const int64_t n = hi - lo;
    if (n <= 0) return true;
    const size_t at = static_cast<size_t>(((l * KV + g) * C + lo) * hd);
    const uint16_t* kc = static_cast<const uint16_t*>(call_.k_cache) + at;
    const uint16_t* vc = static_cast<const uint16_t*>(call_.v_cache) + at;
    const uint16_t* kn = static_cast<const uint16_t*>(call_.k_new) + (l * KV + g) * hd;  // [l, g, t = 0, :]
    const uint16_t* vn = static_cast<const uint16_t*>(call_.v_new) + (l * KV + g) * hd;
    thread_local std::vector<const uint16_t*> keys, values;
    thread_local std::vector<float> scores;
    keys.resize(static_cast<size_t>(n));
    values.resize(keys.size());
    for (int64_t i = 0; i < n; ++i) {
      const bool old = lo + i < start;
      keys[i] = old ? kc + i * hd : kn;
      values[i] = old ? vc + i * hd : vn;
    }
    scores.resize(static_cast<size_t>(G * n));
    const float* q = q_.data() + g * G * hd;
    if (!ops.scores_heads_bf16(q, G, keys.data(), n, hd, scores.data())) return false;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const size_t part = static_cast<size_t>((g * chunks_ + c) * G);
    for (int64_t k = 0; k < G; ++k)
      part_sum_[part + k] = ops.exp_shifted(scores.data() + k * n, n, scale, &part_max_[part + k]);
    float* acc = part_acc_.data() + part * hd;
    std::fill(acc, acc + G * hd, 0.0f);
    return ops.weighted_rows_heads_bf16(scores.data(), G, values.data(), n, hd, acc);
  }

  // Row t's heads of group g from its chunks: with M the largest chunk maximum and w_c =
  // e^(m_c - M), out = (sum_c w_c acc_c) / (sum_c w_c sum_c), chunks in order.
  void CombineChunks(int64_t g, int64_t t) {
    const int64_t T = call_.num_tokens, hd = c_.head_dim, G = c_.heads / c_.kv_heads;
    const int64_t n = call_.start_pos + static_cast<int64_t>(visible_new_[t].size());
    const int64_t used = (n + kAttentionChunk - 1) / kAttentionChunk;
    for (int64_t k = 0; k < G; ++k) {
      auto at = [&](int64_t c) { return static_cast<size_t>(((g * chunks_ + c) * T + t) * G + k); };
      float top = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < used; ++c) top = std::max(top, part_max_[at(c)]);
      float* out = attn_.data() + (t * c_.heads + g * G + k) * hd;
      std::fill(out, out + hd, 0.0f);
      float total = 0.0f;
      for (int64_t c = 0; c < used; ++c) {
        const float w = std::exp(part_max_[at(c)] - top);
        total += w * part_sum_[at(c)];
        const float* acc = part_acc_.data() + at(c) * hd;
        for (int64_t d = 0; d < hd; ++d) out[d] += w * acc[d];
      }
      const float inv = 1.0f / total;
      for (int64_t d = 0; d < hd; ++d) out[d] *= inv;
    }
  }

  const DecoderLayersConfig& c_;
  const DecoderLayersCall& call_;
  const KernelImpls& impls_;
  ThreadTeam& team_;
  DecoderLayersStats* stats_;
  std::vector<float> h_, x_, q_, k_, v_, attn_, gate_, up_, tmp_;
  PreparedActivations ax_, aa_, ag_;
  // Attention's plan (per call) and per-chunk partial results, [KV, chunks, T, G] (x head_dim).
  std::vector<std::vector<int32_t>> visible_new_;
  int64_t chunks_ = 0;
  std::vector<float> part_max_, part_sum_, part_acc_;
  std::unique_ptr<std::atomic<int64_t>[]> chunks_left_;  // per KV group, during a layer's attention
};

bool CheckMatrix(const WeightMatrix& m, int64_t in, int64_t out) {
  if (!m.data || m.in != in || m.out != out) return false;
  if (m.kind == WeightMatrix::Kind::kQ8Bf16) return m.block_scale && in % 32 == 0;
  if (m.kind == WeightMatrix::Kind::kQ4 || m.kind == WeightMatrix::Kind::kQ4Bf16 || m.kind == WeightMatrix::Kind::kQ4ExactBf16)
    return m.block_scale && m.block_min && ValidateQ4Matrix(in, out).empty();
  if (m.kind == WeightMatrix::Kind::kInt8Panels) return m.scale && ValidateInt8Panels(in, out).empty();
  return m.kind != WeightMatrix::Kind::kInt8 || m.scale != nullptr;
}

}  // namespace

namespace {

// The matrices of a layer in arena order, as (out, in).
std::vector<std::pair<int64_t, int64_t>> LayerMatrixShapes(const DecoderLayersConfig& c) {
  const int64_t q = c.heads * c.head_dim, kv = c.kv_heads * c.head_dim;
  return {{q, c.hidden}, {kv, c.hidden}, {kv, c.hidden}, {c.hidden, q},
          {c.intermediate, c.hidden}, {c.intermediate, c.hidden}, {c.hidden, c.intermediate}};
}

void AddMatrixPieces(WeightMatrix::Kind kind, int64_t out, int64_t in, std::vector<int64_t>* bytes) {
  switch (kind) {
    case WeightMatrix::Kind::kF32Transposed:
    case WeightMatrix::Kind::kF32Panels: bytes->push_back(out * in * 4); break;
    case WeightMatrix::Kind::kBf16: bytes->push_back(out * in * 2); break;
    case WeightMatrix::Kind::kInt8:
    case WeightMatrix::Kind::kInt8Panels: bytes->insert(bytes->end(), {out * in, out * 4}); break;
    case WeightMatrix::Kind::kQ4:
    case WeightMatrix::Kind::kQ4Bf16:
    case WeightMatrix::Kind::kQ4ExactBf16: bytes->insert(bytes->end(), {out * in / 2, out * (in / kQ4Block) * 2, out * (in / kQ4Block) * 2}); break;
    case WeightMatrix::Kind::kQ8Bf16: bytes->insert(bytes->end(), {out * in, out * (in / 32) * 2}); break;
  }
}

int64_t AlignUp(int64_t n) { return (n + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment; }

}  // namespace

std::vector<int64_t> ArenaPieceBytes(const DecoderLayersConfig& c, WeightMatrix::Kind kind) {
  std::vector<int64_t> bytes;
  const auto shapes = LayerMatrixShapes(c);
  bytes.push_back(c.hidden * 4);  // input norm
  for (size_t m = 0; m < shapes.size(); ++m) {
    if (m == 4) bytes.push_back(c.hidden * 4);  // post-attention norm, before gate
    AddMatrixPieces(kind, shapes[m].first, shapes[m].second, &bytes);
  }
  return bytes;
}

int64_t ArenaBytes(const DecoderLayersConfig& c, WeightMatrix::Kind kind) {
  int64_t end = 0;
  for (int64_t b : ArenaPieceBytes(c, kind)) end = AlignUp(end) + b;
  return AlignUp(end);
}

std::string ArenaLayer(const DecoderLayersConfig& c, WeightMatrix::Kind kind, const uint8_t* arena, int64_t bytes,
                       DecoderLayerWeights* layer) {
  if (c.hidden < 1 || c.heads < 1 || c.kv_heads < 1 || c.head_dim < 1 || c.intermediate < 1)
    return "decoder layers: sizes must be positive";
  if (kind == WeightMatrix::Kind::kQ8Bf16 && (c.hidden % 32 != 0 || (c.heads * c.head_dim) % 32 != 0 || c.intermediate % 32 != 0))
    return "decoder layers: q8 blocks need every matrix's input size to be a multiple of 32";
  if ((kind == WeightMatrix::Kind::kQ4 || kind == WeightMatrix::Kind::kQ4Bf16 || kind == WeightMatrix::Kind::kQ4ExactBf16) && (c.hidden % 64 != 0 || (c.heads * c.head_dim) % 64 != 0 || c.intermediate % 64 != 0))
    return "decoder layers: q4 weights need every matrix's input size to be a multiple of 64";
  if (kind == WeightMatrix::Kind::kInt8Panels && (c.hidden % 32 != 0 || (c.heads * c.head_dim) % 32 != 0 || c.intermediate % 32 != 0))
    return "decoder layers: int8 panels need every matrix's input size to be a multiple of 32";
  const int64_t want = ArenaBytes(c, kind);
  if (bytes != want)
    return "decoder layers: a layer's weight arena holds " + std::to_string(bytes) + " bytes; the layer needs " +
           std::to_string(want);
  if (!arena || reinterpret_cast<uintptr_t>(arena) % 16 != 0)
    return "decoder layers: a layer's weight arena is not 16-byte aligned";
  int64_t offset = 0;
  auto next = [&](int64_t piece_bytes) {
    offset = AlignUp(offset);
    const uint8_t* p = arena + offset;
    offset += piece_bytes;
    return p;
  };
  auto matrix = [&](int64_t out, int64_t in) {
    WeightMatrix m;
    m.kind = kind;
    m.in = in;
    m.out = out;
    switch (kind) {
      case WeightMatrix::Kind::kF32Transposed:
      case WeightMatrix::Kind::kF32Panels: m.data = next(out * in * 4); break;
      case WeightMatrix::Kind::kBf16: m.data = next(out * in * 2); break;
      case WeightMatrix::Kind::kInt8:
      case WeightMatrix::Kind::kInt8Panels:
        m.data = next(out * in);
        m.scale = reinterpret_cast<const float*>(next(out * 4));
        break;
      case WeightMatrix::Kind::kQ8Bf16:
        m.data = next(out * in);
        m.block_scale = reinterpret_cast<const uint16_t*>(next(out * (in / 32) * 2));
        break;
      case WeightMatrix::Kind::kQ4:
      case WeightMatrix::Kind::kQ4Bf16:
      case WeightMatrix::Kind::kQ4ExactBf16:
        m.data = next(out * in / 2);
        m.block_scale = reinterpret_cast<const uint16_t*>(next(out * (in / kQ4Block) * 2));
        m.block_min = reinterpret_cast<const uint16_t*>(next(out * (in / kQ4Block) * 2));
        break;
    }
    return m;
  };
  const auto shapes = LayerMatrixShapes(c);
  DecoderLayerWeights& w = *layer;
  w.input_norm = reinterpret_cast<const float*>(next(c.hidden * 4));
  w.q = matrix(shapes[0].first, shapes[0].second);
  w.k = matrix(shapes[1].first, shapes[1].second);
  w.v = matrix(shapes[2].first, shapes[2].second);
  w.o = matrix(shapes[3].first, shapes[3].second);
  w.post_attention_norm = reinterpret_cast<const float*>(next(c.hidden * 4));
  w.gate = matrix(shapes[4].first, shapes[4].second);
  w.up = matrix(shapes[5].first, shapes[5].second);
  w.down = matrix(shapes[6].first, shapes[6].second);
  return "";
}

std::string ValidateDecoderLayers(const DecoderLayersConfig& c, const std::vector<DecoderLayerWeights>& layers,
                                  const DecoderLayersCall& call) {
  if (c.layers < 1 || c.hidden < 1 || c.heads < 1 || c.kv_heads < 1 || c.head_dim < 2 || c.intermediate < 1)
    return "decoder layers: sizes must be positive";
  if (c.heads % c.kv_heads != 0) return "decoder layers: heads must be a multiple of kv_heads";
  if (c.head_dim % 2 != 0) return "decoder layers: head_dim must be even";
  if (static_cast<int64_t>(layers.size()) != c.layers)
    return "decoder layers: " + std::to_string(layers.size()) + " layers of weights for " + std::to_string(c.layers);
  const int64_t T = call.num_tokens;
  if (T < 1 || T > 4096) return "decoder layers: num_tokens must be in 1..4096, got " + std::to_string(T);
  if (call.start_pos < 0 || call.start_pos + T > call.max_context)
    return "decoder layers: start_pos " + std::to_string(call.start_pos) + " + " + std::to_string(T) +
           " tokens exceeds the cache of " + std::to_string(call.max_context);
  if (!call.hidden_in || !call.rope_cos || !call.rope_sin || !call.block_mask || !call.k_cache || !call.v_cache ||
      !call.hidden_out || !call.k_new || !call.v_new)
    return "decoder layers: a buffer is missing";
  const int64_t d = c.hidden, q = c.heads * c.head_dim, kv = c.kv_heads * c.head_dim, I = c.intermediate;
  for (size_t l = 0; l < layers.size(); ++l) {
    const DecoderLayerWeights& w = layers[l];
    const bool ok = w.input_norm && w.post_attention_norm && CheckMatrix(w.q, d, q) && CheckMatrix(w.k, d, kv) &&
                    CheckMatrix(w.v, d, kv) && CheckMatrix(w.o, q, d) && CheckMatrix(w.gate, d, I) &&
                    CheckMatrix(w.up, d, I) && CheckMatrix(w.down, I, d);
    if (!ok) return "decoder layers: layer " + std::to_string(l) + "'s weights do not match the config";
  }
  return "";
}

void RunDecoderLayers(const DecoderLayersConfig& config, const std::vector<DecoderLayerWeights>& layers,
                      const DecoderLayersCall& call, const KernelImpls& impls, ThreadTeam& team,
                      DecoderLayersStats* stats) {
  const std::string bad = ValidateDecoderLayers(config, layers, call);
  if (!bad.empty()) throw std::invalid_argument(bad);
  LayerRunner(config, call, impls, team, stats).Run(layers);
}

void TeamMatmul(const WeightMatrix& m, const KernelImpls& impls, const float* x, int64_t T, float* y, ThreadTeam& team) {
  PreparedActivations a;
  PrepareActivations(m.kind, impls, x, T, m.in, &a);
  const WeightMatrix* matrices[1] = {&m};
  const MatmulSplit split(matrices, 1, team.helpers() + 1);
  team.Run(split.tasks(), [&](int64_t task) {
    int64_t o0 = 0, o1 = 0;
    split.Range(task, &o0, &o1);
    MatmulRange(m, impls, a, y, o0, o1);
  });
}

}  // namespace kernels
}  // namespace cascade
