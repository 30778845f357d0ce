#include "kernels/head_argmax.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/argmax.h"
#include "kernels/decoder_layers.h"
#include "kernels/thread_team.h"
#include "util/float16.h"

#if defined(__x86_64__)
#include "kernels/x86_intrinsics.h"
#define CASCADE_HEAD_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#endif

namespace cascade {
namespace kernels {
namespace {

// More candidates than this (a nearly flat distribution, or activations the bound serves badly):
// the full head is cheaper than gathering their panels one by one.
constexpr int64_t kMaxCandidates = 64;
// The bound's constants assume in * 2^-24 stays small and activations of a sane size (the DAZ /
// FTZ of the exact kernel's bf16 dot then moves a logit by < 1e-20, see kAbsoluteSlack).
constexpr int64_t kMaxBoundedIn = int64_t{1} << 16;
constexpr float kMaxActivation = 1e6f, kMinActivation = 1e-20f;
constexpr float kAbsoluteSlack = 1e-20f;

// The constants of E_r = (c_s * S_r + c_m * M_r) * (1 + 2^-10) + 2^-20 |A_r| + kAbsoluteSlack.
// S_r = sum_b |d_b| * B_b (B_b the L1 norm of block b of the bf16 activations b), M_r = sum_b |d_b|.
// With |q| <= 128 and u = 2^-24 (f32), gamma(n) = n u / (1 - n u):
//  - the exact kernel's weights bf16(d q) differ from d q by <= 2^-8 |d q| (bf16 round to
//    nearest): <= 2^-8 * 128 * S_r;
//  - its f32 sum of `in` exact bf16 products, in any order: <= gamma(in) * sum |bf16(dq) b|
//    <= gamma(in) * (1 + 2^-8) * 128 * S_r;
//  - the approximation uses x16 * sx for b, |b - x16 sx| <= sx / 2: <= 128 * 32 * sx / 2 * M_r;
//  - its own f32 sum (one fma per block and lane, then a 16-lane reduction; the int32 pair sums
//    are < 2^24, so converted exactly): <= gamma(blocks + 16) * 128 * (S_r + 16 sx M_r).
// The factor (1 + 2^-10) covers the f32 rounding of S, M, B and E themselves, 2^-20 |A| that of
// A -+ E. (No Q8_0 writer stores -128, but a file may: 128, not 127.)
struct BoundConstants {
  float sx = 1, c_s = 0, c_m = 0;
};

[[maybe_unused]] BoundConstants MakeBoundConstants(int64_t in, float sx) {  // x86 only
  const double u = std::ldexp(1.0, -24);
  auto gamma = [&](double n) { return n * u / (1 - n * u); };
  const double blocks_gamma = gamma(static_cast<double>(in / 32 + 16));
  BoundConstants c;
  c.sx = sx;
  c.c_s = static_cast<float>(128.0 * (std::ldexp(1.0, -8) + gamma(static_cast<double>(in)) * (1 + std::ldexp(1.0, -8)) +
                                      blocks_gamma));
  c.c_m = static_cast<float>(128.0 * 16.0 * sx + blocks_gamma * 128.0 * 16.0 * sx);
  return c;
}

#if defined(__x86_64__)
bool HasAvx512() {
  static const bool ok = Int8ImplSupported(Int8Impl::kAvx512);
  return ok;
}

// A float broadcast by a load (see BroadcastFromMemory in int8_matmul.cc: GCC otherwise forwards
// just-stored scales through shuffle-port vpermd).
CASCADE_HEAD_AVX512 inline __m512 BroadcastLoad(const float* p) {
  __m512 r;
  asm("vbroadcastss %1, %0" : "=v"(r) : "m"(*p));
  return r;
}

// Panels [p0, p1) of a kQ8Bf16 matrix (int8_matmul.h: per panel, per 32-input block, 16 rows of
// 32 bytes, then the 16 f16 scales of the block): upper[r] = A_r + E_r for their rows, and the
// largest A_r - E_r. False when a value is not finite (a NaN or infinite scale).
CASCADE_HEAD_AVX512 bool BoundPanelsAvx512(const int8_t* w, const uint16_t* scale, int64_t in, int64_t p0, int64_t p1,
                                           const int16_t* x16, const float* block_l1, const BoundConstants& c,
                                           float* upper, float* lower_max) {
  const int64_t blocks = in / 32;
  const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __mmask16 finite = 0xffff;
  for (int64_t p = p0; p < p1; ++p) {
    const int8_t* panel = w + p * 16 * in;
    const uint16_t* ps = scale + p * 16 * blocks;
    __m512 acc[16];
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
    __m512 s = _mm512_setzero_ps(), m = _mm512_setzero_ps();
    alignas(64) float d[16];
    for (int64_t b = 0; b < blocks; ++b) {
      const __m512 db = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ps + b * 16)));
      _mm512_store_ps(d, db);
      const __m512 ad = _mm512_abs_ps(db);
      s = _mm512_fmadd_ps(ad, _mm512_set1_ps(block_l1[b]), s);
      m = _mm512_add_ps(m, ad);
      const __m512i xv = _mm512_loadu_si512(x16 + b * 32);
      const int8_t* rows = panel + b * 512;
      // 16 blocks (8 KB) ahead: this pass streams at the memory's speed, unlike the exact kernel
      // (AmxQ8Bf16Rows, 2 KB ahead), which builds tiles. kernel_bench --kinds head, six
      // alternating pairs (session 29, Intel host): 2 KB 0.61-0.67 ms hot / 0.87-0.97 cold, 8 KB
      // 0.55-0.61 / 0.70-0.89; 16 KB as 8.
      for (int k = 0; k < 8; ++k) _mm_prefetch(reinterpret_cast<const char*>(rows + 8192 + 64 * k), _MM_HINT_T0);
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) {
        const __m512i wj = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + 32 * j)));
        const __m512 pairs = _mm512_cvtepi32_ps(_mm512_madd_epi16(wj, xv));
        acc[j] = _mm512_fmadd_ps(pairs, BroadcastLoad(&d[j]), acc[j]);
      }
    }
    alignas(64) float a[16];
    for (int j = 0; j < 16; ++j) a[j] = _mm512_reduce_add_ps(acc[j]);
    const __m512 av = _mm512_mul_ps(_mm512_load_ps(a), _mm512_set1_ps(c.sx));
    __m512 e = _mm512_fmadd_ps(s, _mm512_set1_ps(c.c_s), _mm512_mul_ps(m, _mm512_set1_ps(c.c_m)));
    e = _mm512_fmadd_ps(e, _mm512_set1_ps(1.0f + 1.0f / 1024), _mm512_set1_ps(kAbsoluteSlack));
    e = _mm512_fmadd_ps(_mm512_abs_ps(av), _mm512_set1_ps(1.0f / (1 << 20)), e);
    const __m512 hi = _mm512_add_ps(av, e), lo = _mm512_sub_ps(av, e);
    finite &= _mm512_cmp_ps_mask(_mm512_abs_ps(hi), inf, _CMP_LT_OQ);
    finite &= _mm512_cmp_ps_mask(_mm512_abs_ps(lo), inf, _CMP_LT_OQ);
    _mm512_storeu_ps(upper + p * 16, hi);
    best = _mm512_max_ps(best, lo);
  }
  *lower_max = _mm512_reduce_max_ps(best);
  return finite == 0xffff;
}

// The rows r < n (a multiple of 16) with upper[r] >= tau, in order, into *rows; false past
// kMaxCandidates of them. 16 at a time (the scalar loop was ~37 us a greedy step, session 29);
// a NaN bound is never >= tau, as in the scalar comparison.
CASCADE_HEAD_AVX512 bool UpperAtLeast(const float* upper, int64_t n, float tau, std::vector<int64_t>* rows) {
  const __m512 t = _mm512_set1_ps(tau);
  for (int64_t r = 0; r < n; r += 16) {
    for (uint32_t m = _mm512_cmp_ps_mask(_mm512_loadu_ps(upper + r), t, _CMP_GE_OQ); m; m &= m - 1) {
      rows->push_back(r + __builtin_ctz(m));
      if (static_cast<int64_t>(rows->size()) > kMaxCandidates) return false;
    }
  }
  return true;
}
#endif

void FullHead(const WeightMatrix& m, const KernelImpls& impls, const float* x, int64_t T, int32_t* ids,
              ThreadTeam& team) {
  thread_local std::vector<float> logits;
  logits.resize(static_cast<size_t>(T * m.out));
  TeamMatmul(m, impls, x, T, logits.data(), team);
  ArgmaxRows(logits.data(), T, m.out, ids);
}

// One token through the bound (header). False: take the full head instead.
bool BoundedArgmax(const WeightMatrix& m, const KernelImpls& impls, const float* x, ThreadTeam& team, int32_t* id,
                   HeadArgmaxStats* stats) {
#if defined(__x86_64__)
  const int64_t in = m.in, out = m.out, blocks = in / 32, panels = out / 16, whole = panels * 16;
  if (!HasAvx512() || in % 32 != 0 || in > kMaxBoundedIn || panels == 0) return false;
  // The exact kernel's activations (bf16 rounded): the bound is about them.
  PreparedActivations a;
  PrepareActivations(m.kind, impls, x, 1, in, &a);
  if (a.xb.empty()) return false;
  std::vector<float> b(static_cast<size_t>(in));
  float top = 0;
  for (int64_t k = 0; k < in; ++k) {
    b[k] = BF16ToF32(a.xb[k]);
    if (!std::isfinite(b[k])) return false;
    top = std::max(top, std::fabs(b[k]));
  }
  if (top > kMaxActivation || top < kMinActivation) return false;
  // sx: a power of two above top / 32767, so each b / sx is exact and rounds into int16.
  int e = 0;
  std::frexp(top / 32767.0f, &e);
  const float sx = std::ldexp(1.0f, e);
  std::vector<int16_t> x16(static_cast<size_t>(in));
  std::vector<float> block_l1(static_cast<size_t>(blocks), 0.0f);
  for (int64_t k = 0; k < in; ++k) {
    x16[k] = static_cast<int16_t>(std::nearbyint(b[k] / sx));
    block_l1[k / 32] += std::fabs(b[k]);
  }
  const BoundConstants c = MakeBoundConstants(in, sx);

  // The caller's buffers (a lambda names a thread_local as each helper's own: pass pointers).
  thread_local std::vector<float> upper_buffer;
  upper_buffer.resize(static_cast<size_t>(out));
  float* upper = upper_buffer.data();
  const int64_t per_task = std::max<int64_t>(1, MatmulTaskOutputs(m) / 16);
  const int64_t tasks = (panels + per_task - 1) / per_task;
  std::vector<float> lower(static_cast<size_t>(tasks));
  std::vector<char> ok(static_cast<size_t>(tasks));
  const auto* w = static_cast<const int8_t*>(m.data);
  team.Run(tasks, [&](int64_t t) {
    const int64_t p0 = t * per_task, p1 = std::min(panels, p0 + per_task);
    ok[t] = BoundPanelsAvx512(w, m.block_scale, in, p0, p1, x16.data(), block_l1.data(), c, upper, &lower[t]);
  });
  if (std::find(ok.begin(), ok.end(), 0) != ok.end()) return false;
  const float tau = *std::max_element(lower.begin(), lower.end());
  std::vector<int64_t> candidates;
  if (!UpperAtLeast(upper, whole, tau, &candidates)) return false;
  for (int64_t r = whole; r < out; ++r) candidates.push_back(r);
  // Their exact logits, each from the head's own kernel on its 16-row panel (a row's value never
  // depends on the range it is computed in: MatmulRange's contract).
  thread_local std::vector<float> y;
  y.resize(static_cast<size_t>(out));
  int64_t done_panel = -1;
  for (int64_t r : candidates) {
    if (r >= whole) {
      MatmulRange(m, impls, a, y.data(), whole, out);
      break;
    }
    if (r / 16 != done_panel) {
      done_panel = r / 16;
      MatmulRange(m, impls, a, y.data(), done_panel * 16, done_panel * 16 + 16);
    }
  }
  int64_t best = candidates.front();
  for (int64_t r : candidates) {
    if (std::isnan(y[r])) return false;
    if (y[r] > y[best]) best = r;  // ascending: a tie keeps the lowest index
  }
  *id = static_cast<int32_t>(best);
  if (stats) {
    stats->bounded = true;
    stats->candidates = static_cast<int64_t>(candidates.size());
  }
  return true;
#else
  (void)m, (void)impls, (void)x, (void)team, (void)id, (void)stats;
  return false;
#endif
}

}  // namespace

void Q8Bf16HeadArgmax(const WeightMatrix& m, const KernelImpls& impls, const float* x, int64_t T, int32_t* ids,
                      ThreadTeam& team, HeadArgmaxStats* stats) {
  if (stats) *stats = {};
  // The bound assumes the exact kernel multiplies bf16 activations exactly (the bf16 dot
  // instructions); other impls read x in f32.
  const bool bf16_dot = impls.bf16 == Int8Impl::kAmxBf16 || impls.bf16 == Int8Impl::kAvx512Bf16;
  if (m.kind == WeightMatrix::Kind::kQ8Bf16 && T == 1 && bf16_dot && BoundedArgmax(m, impls, x, team, ids, stats))
    return;
  FullHead(m, impls, x, T, ids, team);
}

}  // namespace kernels
}  // namespace cascade
