#include "util/float16.h"
#include "kernels/int8_matmul.h"

#if defined(__x86_64__) || defined(__i386__)
#include "kernels/x86_intrinsics.h"  // first: before cpu_relax.h's and transpose16.h's <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define CASCADE_X86 1
#else
#define CASCADE_X86 0  // portable C++ only: every SIMD impl reports unsupported (Int8ImplSupported)
#endif

#include "kernels/cpu_relax.h"
#include "kernels/transpose16.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

// The SIMD code is compiled with per-function target attributes (no global -march), so the
// library runs on any x86-64 and picks an implementation at runtime (__builtin_cpu_supports).
#if CASCADE_X86
#define CASCADE_AVX2 __attribute__((target("avx2,fma")))
#define CASCADE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define CASCADE_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))
#define CASCADE_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))
#define CASCADE_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16,fma")))
#endif

namespace cascade {
namespace kernels {
namespace {

constexpr int64_t kMaxT = 4096;
// VNNI: |x_q| <= 127 and |w^0x80| <= 255 per product, 4 products per lane per 64-byte chunk, and
// a lane holds one 32-block's quarter only within one chunk, so int32 never overflows per chunk.
// The f32 paths have no limit; keep one bound for all so a shape is valid for every impl.
constexpr int64_t kMaxIn = int64_t{1} << 24;

// Output rows per register block. Every (t, o) element is computed by the same instruction
// sequence whichever block sizes are used around it: that is what makes rows independent of T.
constexpr int kOB = 4;
// How far ahead of its loads a weight-streaming kernel prefetches, in bytes of the row stream
// (a task's rows are contiguous). The weights come from DRAM once per call. Session 9's sweep of
// decoder_bench decode(1): q4 5.9 ms at 1 KB (the old value, which for a q4 block of 4 rows of
// 288 bytes prefetched within the block being read), 4.1-4.5 ms at 4-12 KB; int8 ~6% faster at
// 6 KB than at 2 KB. The AMX bf16 tiles were slower with any software prefetch (hardware only).
constexpr int kPrefetchBytes = 6144;

#if !CASCADE_X86
// Stand-ins with the SIMD blocks' signatures on other CPUs: never called (the dispatch only
// picks an impl that Int8ImplSupported reports, and no SIMD impl is supported there).
[[noreturn]] inline void NoSimd() { throw std::logic_error("kernels: x86 SIMD code called on another CPU"); }
#endif
// The t / o loops of a block must be fully unrolled so the accumulators live in registers (GCC 12
// at -O2 kept them on the stack without the pragmas: 2-3x slower).

// ---------------------------------------------------------------- scalar

void ScalarRows(const float* x, const int8_t* w, const float* scale, float* y, int64_t T, int64_t in, int64_t out,
                int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    const int8_t* wr = w + o * in;
    for (int64_t t = 0; t < T; ++t) {
      const float* xr = x + t * in;
      float acc = 0.0f;
      for (int64_t i = 0; i < in; ++i) acc += xr[i] * static_cast<float>(wr[i]);
      y[t * out + o] = acc * scale[o];
    }
  }
}

#if CASCADE_X86
// ---------------------------------------------------------------- AVX2 (8 lanes)

CASCADE_AVX2 inline float HSum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Blocks compute y[t * ldy + o] for t < TB, o < OB from x rows x + t * in, weight rows w + o * in
// and scale[o] (callers offset the pointers to the block).
template <int TB, int OB>
CASCADE_AVX2 void Avx2Block(const float* x, const int8_t* w, const float* scale, float* y, int64_t in, int64_t ldy) {
  constexpr int64_t t0 = 0, o0 = 0;
  __m256 acc[TB][OB];
  #pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) acc[t][o] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= in; i += 8) {
    __m256 wf[OB];
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) {
      __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + (o0 + o) * in + i));
      wf[o] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
    }
    #pragma GCC unroll 16
    for (int t = 0; t < TB; ++t) {
      __m256 xv = _mm256_loadu_ps(x + (t0 + t) * in + i);
      #pragma GCC unroll 16
      for (int o = 0; o < OB; ++o) acc[t][o] = _mm256_fmadd_ps(xv, wf[o], acc[t][o]);
    }
  }
  #pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) {
      float s = HSum256(acc[t][o]);
      const float* xr = x + (t0 + t) * in;
      const int8_t* wr = w + (o0 + o) * in;
      for (int64_t j = i; j < in; ++j) s += xr[j] * static_cast<float>(wr[j]);
      y[(t0 + t) * ldy + o0 + o] = s * scale[o0 + o];
    }
}

// ---------------------------------------------------------------- AVX-512 f32 (16 lanes)

template <int TB, int OB>
CASCADE_AVX512 void Avx512Block(const float* x, const int8_t* w, const float* scale, float* y, int64_t in, int64_t ldy) {
  constexpr int64_t t0 = 0, o0 = 0;
  __m512 acc[TB][OB];
  #pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) acc[t][o] = _mm512_setzero_ps();
  const int8_t* wr[OB];
  const float* xr[TB];
  #pragma GCC unroll 16
  for (int o = 0; o < OB; ++o) wr[o] = w + (o0 + o) * in;
  #pragma GCC unroll 16
  for (int t = 0; t < TB; ++t) xr[t] = x + (t0 + t) * in;
  int64_t i = 0;
  for (; i + 16 <= in; i += 16) {
    __m512 wf[OB];
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o)
      wf[o] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr[o] + i))));
    #pragma GCC unroll 16
    for (int t = 0; t < TB; ++t) {
      __m512 xv = _mm512_loadu_ps(xr[t] + i);
      #pragma GCC unroll 16
      for (int o = 0; o < OB; ++o) acc[t][o] = _mm512_fmadd_ps(xv, wf[o], acc[t][o]);
    }
  }
  if (i < in) {  // masked tail: same lanes, zeros beyond `in`
    const __mmask16 m = static_cast<__mmask16>((1u << (in - i)) - 1);
    __m512 wf[OB];
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) wf[o] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, wr[o] + i)));
    #pragma GCC unroll 16
    for (int t = 0; t < TB; ++t) {
      __m512 xv = _mm512_maskz_loadu_ps(m, xr[t] + i);
      #pragma GCC unroll 16
      for (int o = 0; o < OB; ++o) acc[t][o] = _mm512_fmadd_ps(xv, wf[o], acc[t][o]);
    }
  }
  #pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) y[(t0 + t) * ldy + o0 + o] = _mm512_reduce_add_ps(acc[t][o]) * scale[o0 + o];
}

#else
template <int TB, int OB>
void Avx2Block(const float*, const int8_t*, const float*, float*, int64_t, int64_t) { NoSimd(); }
template <int TB, int OB>
void Avx512Block(const float*, const int8_t*, const float*, float*, int64_t, int64_t) { NoSimd(); }
#endif  // CASCADE_X86

// ---------------------------------------------------------------- AVX-512 VNNI (Q8 activations)

// Activations of one call, quantised per 32-block (llama.cpp's Q8_0 idea): per row t and 64-byte
// chunk c, the s8 values, the f32 block scales laid out per int32 lane (lanes 0-7: first block,
// 8-15: second), and -128 * (sum of the lane's 4 values), the initial accumulator that cancels the
// +128 the kernel adds to every weight (vpdpbusd multiplies unsigned by signed bytes).
// (The VNNI fields of PreparedActivations, int8_matmul.h.)
using QuantizedX = PreparedActivations;

#if CASCADE_X86
// One 32-block of QuantizeRows with AVX-512: the same amax, scale and round-to-nearest-even
// (cvtps_epi32 under the default MXCSR, as lrintf), so the same bits as the scalar loop.
CASCADE_AVX512 float QuantizeBlockAvx512(const float* x, int64_t n, int8_t* q) {
  const __mmask16 m0 = n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1);
  const __mmask16 m1 = n >= 32 ? static_cast<__mmask16>(0xffff) : n > 16 ? static_cast<__mmask16>((1u << (n - 16)) - 1) : 0;
  const __m512 v0 = _mm512_maskz_loadu_ps(m0, x), v1 = _mm512_maskz_loadu_ps(m1, x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
  const float d = amax / 127.0f;
  const float inv = d > 0.0f ? 1.0f / d : 0.0f;
  const __m512 s = _mm512_set1_ps(inv);
  _mm_mask_storeu_epi8(q, m0, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, s))));
  _mm_mask_storeu_epi8(q + 16, m1, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, s))));
  return d;
}
// kQ4ExactBf16's sums of each 32-block of a row of bf16 activations: per 32-bit lane its two
// values added, then _mm512_reduce_add_ps's fixed tree, instead of a chain of 32 dependent adds
// per block (~130 cycles; ~620 blocks a row pass of a verify of 13 at in = 1536). Measured end to
// end, verify(13) did not move (docs/bench/decoder.md, session 32).
CASCADE_AVX512 void SumBf16BlocksAvx512(const uint16_t* xb, int64_t blocks, float* sums) {
  const __m512i high_halves = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t b = 0; b < blocks; ++b) {
    const __m512i v = _mm512_loadu_si512(xb + b * 32);
    const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(v, high_halves));
    sums[b] = _mm512_reduce_add_ps(_mm512_add_ps(even, odd));
  }
}
#else
float QuantizeBlockAvx512(const float*, int64_t, int8_t*) { NoSimd(); }
void SumBf16BlocksAvx512(const uint16_t*, int64_t, float*) { NoSimd(); }
#endif

bool HasAvx512();  // CPU has AVX-512 (F, BW, VL): the vector paths of the helpers below

void QuantizeRows(const float* x, int64_t T, int64_t in, QuantizedX* qx) {
  const int64_t chunks = (in + 63) / 64, padded = chunks * 64;
  qx->chunks = chunks;
  qx->q.assign(static_cast<size_t>(T * padded), 0);
  qx->lane_scale.assign(static_cast<size_t>(T * chunks * 16), 0.0f);
  qx->lane_bias.assign(static_cast<size_t>(T * chunks * 16), 0);
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * in;
    int8_t* qr = qx->q.data() + t * padded;
    for (int64_t b = 0; b < chunks * 2; ++b) {
      const int64_t lo = b * 32, hi = std::min(in, lo + 32);
      float d = 0.0f;
      if (hi > lo && HasAvx512()) {
        d = QuantizeBlockAvx512(xr + lo, hi - lo, qr + lo);
      } else {
        float amax = 0.0f;
        for (int64_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(xr[i]));
        d = amax / 127.0f;
        const float inv = d > 0.0f ? 1.0f / d : 0.0f;
        for (int64_t i = lo; i < hi; ++i) qr[i] = static_cast<int8_t>(std::lrintf(xr[i] * inv));
      }
      float* ls = qx->lane_scale.data() + (t * chunks + b / 2) * 16 + (b % 2) * 8;
      for (int j = 0; j < 8; ++j) ls[j] = d;
    }
    for (int64_t c = 0; c < chunks; ++c)
      for (int j = 0; j < 16; ++j) {
        const int8_t* p = qr + c * 64 + j * 4;
        qx->lane_bias[(t * chunks + c) * 16 + j] = -128 * (p[0] + p[1] + p[2] + p[3]);
      }
  }
}

#if CASCADE_X86
// As the other blocks, but the activations are rows t0.. of qx.
template <int TB, int OB>
CASCADE_VNNI void VnniBlock(const QuantizedX& qx, int64_t t0, const int8_t* w, const float* scale, float* y, int64_t in,
                            int64_t ldy) {
  constexpr int64_t o0 = 0;
  const int64_t chunks = qx.chunks, padded = chunks * 64;
  __m512 acc[TB][OB];
  #pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) acc[t][o] = _mm512_setzero_ps();
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i = c * 64;
    const int64_t n = std::min<int64_t>(64, in - i);
    const __mmask64 m = n == 64 ? ~__mmask64{0} : ((__mmask64{1} << n) - 1);
    __m512i wu[OB];
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) {
      // Software prefetch measured 10-25% faster than the hardware prefetcher alone (kPrefetchBytes).
      _mm_prefetch(reinterpret_cast<const char*>(w + (o0 + o) * in + i) + kPrefetchBytes, _MM_HINT_T0);
      wu[o] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, w + (o0 + o) * in + i), flip);
    }
    #pragma GCC unroll 16
    for (int t = 0; t < TB; ++t) {
      const int64_t row = (t0 + t) * chunks + c;
      const __m512i xq = _mm512_loadu_si512(qx.q.data() + (t0 + t) * padded + i);
      const __m512i bias = _mm512_loadu_si512(qx.lane_bias.data() + row * 16);
      const __m512 ds = _mm512_loadu_ps(qx.lane_scale.data() + row * 16);
      #pragma GCC unroll 16
      for (int o = 0; o < OB; ++o) {
        __m512i dot = _mm512_dpbusd_epi32(bias, wu[o], xq);  // exact: x_q . w per lane
        acc[t][o] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), ds, acc[t][o]);
      }
    }
  }
  #pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) y[t * ldy + o0 + o] = _mm512_reduce_add_ps(acc[t][o]) * scale[o0 + o];
}

#else
template <int TB, int OB>
void VnniBlock(const PreparedActivations&, int64_t, const int8_t*, const float*, float*, int64_t, int64_t) { NoSimd(); }
#endif  // CASCADE_X86

// ---------------------------------------------------------------- 4-bit weights (panels of 16 rows)

// Portable: the row dequantised to f32 (exactly: d * q + m in f32), then an f32 dot in order.
void ScalarRowsQ4(const float* x, const uint8_t* w, const uint16_t* bs, const uint16_t* bm, float* y, int64_t T,
                  int64_t in, int64_t out, int64_t o0, int64_t o1) {
  std::vector<float> row(static_cast<size_t>(in));
  for (int64_t o = o0; o < o1; ++o) {
    DequantizeQ4Row(w, bs, bm, in, out, o, row.data());
    for (int64_t t = 0; t < T; ++t) {
      const float* xr = x + t * in;
      float acc = 0.0f;
      for (int64_t i = 0; i < in; ++i) acc += xr[i] * row[i];
      y[t * out + o] = acc;
    }
  }
}

#if CASCADE_X86
// One panel (16 outputs; kFull false: a panel of n < 16 rows) x TB tokens from row t0 of qx
// (activations quantised per 32-block as for int8). Per 32-block b: 8 vpdpbusd, each a token's 4
// inputs (broadcast) times a panel row of 16 x 4 weights (q, 0..15), give the exact integer dot
// of every output's block; then
//   acc += float(dot) * (d[b] * d_x[b]) + m[b] * (d_x[b] * sum of x_q over b)   (llama.cpp's Q4_1 x Q8_1).
// The second block of a chunk keeps its nibbles in place (16 q; the scale is divided by 16, exact),
// which saves a shift. Every (t, o) element gets this sequence whatever TB or the range: rows
// are T-independent. Against the earlier row-major kernel (one vector per output row, a float
// conversion per 4 inputs): about half the instructions per weight at T = 1 (session 11).
template <int TB, bool kFull>
CASCADE_VNNI void Q4PanelBlock(const QuantizedX& qx, int64_t t0, const uint8_t* w, const uint16_t* bs,
                               const uint16_t* bm, float* y, int64_t in, int64_t ldy, int64_t n) {
  const int64_t chunks = in / 64, padded = qx.chunks * 64, x_blocks = qx.chunks * 2;
  const int64_t row_stride = kFull ? 64 : 4 * n;  // bytes per r (16 or n rows x 4)
  const __mmask64 byte_mask = kFull ? ~__mmask64{0} : (__mmask64{1} << (4 * n)) - 1;
  const __mmask16 out_mask = kFull ? __mmask16{0xffff} : FirstLanes16(n);
  const __m512i low_nibbles = _mm512_set1_epi8(0x0F), high_nibbles = _mm512_set1_epi8(static_cast<char>(0xF0));
  const __m512 sixteenth = _mm512_set1_ps(1.0f / 16.0f);
  __m512 acc[TB];
  #pragma GCC unroll 16
  for (int t = 0; t < TB; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t c = 0; c < chunks; ++c) {
    #pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {
      const int64_t b = c * 2 + half;
      __m512i dot[TB];
      #pragma GCC unroll 16
      for (int t = 0; t < TB; ++t) dot[t] = _mm512_setzero_si512();
      #pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) {
        const uint8_t* p = w + c * 8 * row_stride + r * row_stride;
        if (half == 0) _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0);
        const __m512i v = kFull ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(byte_mask, p);
        const __m512i wq = _mm512_and_si512(v, half == 0 ? low_nibbles : high_nibbles);
        #pragma GCC unroll 16
        for (int t = 0; t < TB; ++t) {
          int32_t four;
          std::memcpy(&four, qx.q.data() + (t0 + t) * padded + b * kQ4Block + r * 4, 4);
          dot[t] = _mm512_dpbusd_epi32(dot[t], wq, _mm512_set1_epi32(four));  // exact
        }
      }
      const int64_t at = b * (kFull ? kQ4PanelRows : n);
      __m512 d = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(out_mask, bs + at));
      if (half == 1) d = _mm512_mul_ps(d, sixteenth);
      const __m512 m = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(out_mask, bm + at));
      #pragma GCC unroll 16
      for (int t = 0; t < TB; ++t) {
        const __m512 dx = _mm512_set1_ps(qx.block_scale[(t0 + t) * x_blocks + b]);
        const __m512 sum = _mm512_set1_ps(qx.block_sum[(t0 + t) * x_blocks + b]);
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t]), _mm512_mul_ps(d, dx), acc[t]);
        acc[t] = _mm512_fmadd_ps(m, sum, acc[t]);
      }
    }
  }
  #pragma GCC unroll 16
  for (int t = 0; t < TB; ++t) _mm512_mask_storeu_ps(y + t * ldy, out_mask, acc[t]);
}

// Every token, 8 at a time, over the panel at output o (n rows; a verify of 5 tokens as 4 + 1
// unpacked the panel twice: 1.6x a decode on Zen 4).
template <bool kFull>
void Q4PanelTokens(const QuantizedX& qx, const uint8_t* w, const uint16_t* bs, const uint16_t* bm, float* y,
                   int64_t in, int64_t out, int64_t o, int64_t n) {
  const int64_t T = qx.T, blocks = in / kQ4Block;
  const uint8_t* wp = w + o * (in / 2);
  const uint16_t *sp = bs + o * blocks, *mp = bm + o * blocks;
  int64_t t = 0;
  for (; t + 8 <= T; t += 8) Q4PanelBlock<8, kFull>(qx, t, wp, sp, mp, y + t * out + o, in, out, n);
  switch (T - t) {
    case 7: Q4PanelBlock<7, kFull>(qx, t, wp, sp, mp, y + t * out + o, in, out, n); break;
    case 6: Q4PanelBlock<6, kFull>(qx, t, wp, sp, mp, y + t * out + o, in, out, n); break;
    case 5: Q4PanelBlock<5, kFull>(qx, t, wp, sp, mp, y + t * out + o, in, out, n); break;
    case 4: Q4PanelBlock<4, kFull>(qx, t, wp, sp, mp, y + t * out + o, in, out, n); break;
    case 3: Q4PanelBlock<3, kFull>(qx, t, wp, sp, mp, y + t * out + o, in, out, n); break;
    case 2: Q4PanelBlock<2, kFull>(qx, t, wp, sp, mp, y + t * out + o, in, out, n); break;
    case 1: Q4PanelBlock<1, kFull>(qx, t, wp, sp, mp, y + t * out + o, in, out, n); break;
    default: break;
  }
}

// Outputs [o0, o1) (o0 a multiple of 16; o1 too unless it is `out`): one panel at a time, so the
// weights are read in one stream (4 panels at a time for a decode read DRAM at half the rate on
// Zen 4: one thread, 576 x 1536 from DRAM, 10.1 GB/s against 21.1; T = 5 9.3 against 11.6).
void Q4Panels(const QuantizedX& qx, const uint8_t* w, const uint16_t* bs, const uint16_t* bm, float* y, int64_t in,
              int64_t out, int64_t o0, int64_t o1) {
  int64_t o = o0;
  for (; o + kQ4PanelRows <= o1; o += kQ4PanelRows) Q4PanelTokens<true>(qx, w, bs, bm, y, in, out, o, 16);
  if (o < o1) Q4PanelTokens<false>(qx, w, bs, bm, y, in, out, o, o1 - o);
}
#else
void Q4Panels(const PreparedActivations&, const uint8_t*, const uint16_t*, const uint16_t*, float*, int64_t, int64_t,
              int64_t, int64_t) {
  NoSimd();
}
#endif  // CASCADE_X86

// ---------------------------------------------------------------- int8 weights in panels of 16 rows

#if CASCADE_X86
// TB tokens from row t0 of qx over one panel of kInt8Panels (16 outputs; kFull false: n < 16).
// Per 32-block b: 8 vpdpbusd, each a token's 4 inputs (broadcast) times a panel row of 16 x 4
// weights + 128, started at -128 * (the block's sum of x_q) so that the +128 cancels, give the
// exact integer dot of every output's block; then acc += float(dot) * d_x[b], and y = acc *
// scale. Every (t, o) element gets this sequence whatever TB or the range: rows are T-independent.
template <int TB, bool kFull>
CASCADE_VNNI void Int8PanelBlock(const QuantizedX& qx, int64_t t0, const uint8_t* w, const float* scale, float* y,
                                 int64_t in, int64_t ldy, int64_t n) {
  const int64_t blocks = in / 32, padded = qx.chunks * 64, x_blocks = qx.chunks * 2;
  const int64_t row_stride = kFull ? 64 : 4 * n;  // bytes per r (16 or n rows x 4)
  const __mmask64 byte_mask = kFull ? ~__mmask64{0} : (__mmask64{1} << (4 * n)) - 1;
  const __mmask16 out_mask = kFull ? __mmask16{0xffff} : FirstLanes16(n);
  __m512 acc[TB];
  #pragma GCC unroll 16
  for (int t = 0; t < TB; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    __m512i dot[TB];
    #pragma GCC unroll 16
    for (int t = 0; t < TB; ++t) dot[t] = _mm512_set1_epi32(qx.block_bias[(t0 + t) * x_blocks + b]);
    #pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) {
      const uint8_t* p = w + (b * 8 + r) * row_stride;
      _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0);
      const __m512i wu = kFull ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(byte_mask, p);
      #pragma GCC unroll 16
      for (int t = 0; t < TB; ++t) {
        int32_t four;
        std::memcpy(&four, qx.q.data() + (t0 + t) * padded + b * 32 + r * 4, 4);
        dot[t] = _mm512_dpbusd_epi32(dot[t], wu, _mm512_set1_epi32(four));  // exact
      }
    }
    #pragma GCC unroll 16
    for (int t = 0; t < TB; ++t)
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t]), _mm512_set1_ps(qx.block_scale[(t0 + t) * x_blocks + b]),
                               acc[t]);
  }
  const __m512 s = _mm512_maskz_loadu_ps(out_mask, scale);
  #pragma GCC unroll 16
  for (int t = 0; t < TB; ++t) _mm512_mask_storeu_ps(y + t * ldy, out_mask, _mm512_mul_ps(acc[t], s));
}

// Every token, 8 at a time, over the panel at output o (n rows).
template <bool kFull>
void Int8PanelTokens(const QuantizedX& qx, const uint8_t* w, const float* scale, float* y, int64_t in, int64_t out,
                     int64_t o, int64_t n) {
  const int64_t T = qx.T;
  const uint8_t* wp = w + o * in;
  int64_t t = 0;
  for (; t + 8 <= T; t += 8) Int8PanelBlock<8, kFull>(qx, t, wp, scale + o, y + t * out + o, in, out, n);
  switch (T - t) {
    case 7: Int8PanelBlock<7, kFull>(qx, t, wp, scale + o, y + t * out + o, in, out, n); break;
    case 6: Int8PanelBlock<6, kFull>(qx, t, wp, scale + o, y + t * out + o, in, out, n); break;
    case 5: Int8PanelBlock<5, kFull>(qx, t, wp, scale + o, y + t * out + o, in, out, n); break;
    case 4: Int8PanelBlock<4, kFull>(qx, t, wp, scale + o, y + t * out + o, in, out, n); break;
    case 3: Int8PanelBlock<3, kFull>(qx, t, wp, scale + o, y + t * out + o, in, out, n); break;
    case 2: Int8PanelBlock<2, kFull>(qx, t, wp, scale + o, y + t * out + o, in, out, n); break;
    case 1: Int8PanelBlock<1, kFull>(qx, t, wp, scale + o, y + t * out + o, in, out, n); break;
    default: break;
  }
}

// Outputs [o0, o1) (o0 a multiple of 16; o1 too unless it is `out`), one panel at a time: the
// weights read in one stream.
void Int8Panels(const QuantizedX& qx, const uint8_t* w, const float* scale, float* y, int64_t in, int64_t out,
                int64_t o0, int64_t o1) {
  int64_t o = o0;
  for (; o + kQ4PanelRows <= o1; o += kQ4PanelRows) Int8PanelTokens<true>(qx, w, scale, y, in, out, o, 16);
  if (o < o1) Int8PanelTokens<false>(qx, w, scale, y, in, out, o, o1 - o);
}
#else
void Int8Panels(const PreparedActivations&, const uint8_t*, const float*, float*, int64_t, int64_t, int64_t, int64_t) {
  NoSimd();
}
#endif  // CASCADE_X86

// ---------------------------------------------------------------- bf16 weights (no scale)

// bf16 -> f32 is exact (the bf16 bits are the top half of the f32), so these compute what XLA's
// upcast path computes (x f32 . W f32), in our summation order.

void ScalarRowsBf16(const float* x, const uint16_t* w, float* y, int64_t T, int64_t in, int64_t ldy, int64_t o0,
                    int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    const uint16_t* wr = w + o * in;
    for (int64_t t = 0; t < T; ++t) {
      const float* xr = x + t * in;
      float acc = 0.0f;
      for (int64_t i = 0; i < in; ++i) acc += xr[i] * BF16ToF32(wr[i]);
      y[t * ldy + o] = acc;
    }
  }
}

// Verifies of up to this many tokens run the blocks' tokens kernels (BlocksTokensDot);
// more tokens expand each panel into a bf16 scratch once (Q4PanelToBf16) and run Bf16DotBlock
// (BlocksDotRange).
constexpr int64_t kBlocksTokensMax = 8;

// The next panel's bytes (values, scales, minimums) for PanelPrefetcher.
struct PanelAhead {
  const void* part[3] = {};
  int64_t bytes[3] = {};
};
#if CASCADE_X86
template <int TB, int OB>
CASCADE_AVX2 void Avx2BlockBf16(const float* x, const uint16_t* w, float* y, int64_t in, int64_t ldy) {
  __m256 acc[TB][OB];
  #pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) acc[t][o] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= in; i += 8) {
    __m256 wf[OB];
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) {
      __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + o * in + i));
      wf[o] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
    }
    #pragma GCC unroll 16
    for (int t = 0; t < TB; ++t) {
      __m256 xv = _mm256_loadu_ps(x + t * in + i);
      #pragma GCC unroll 16
      for (int o = 0; o < OB; ++o) acc[t][o] = _mm256_fmadd_ps(xv, wf[o], acc[t][o]);
    }
  }
  #pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) {
      float s = HSum256(acc[t][o]);
      for (int64_t j = i; j < in; ++j) s += x[t * in + j] * BF16ToF32(w[o * in + j]);
      y[t * ldy + o] = s;
    }
}

template <int TB, int OB>
CASCADE_AVX512 void Avx512BlockBf16(const float* x, const uint16_t* w, float* y, int64_t in, int64_t ldy) {
  __m512 acc[TB][OB];
  #pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) acc[t][o] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i < in; i += 16) {
    const int64_t n = std::min<int64_t>(16, in - i);
    const __mmask16 m = n == 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1);
    __m512 wf[OB];
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) {
      _mm_prefetch(reinterpret_cast<const char*>(w + o * in + i) + 2048, _MM_HINT_T0);
      __m256i b = _mm256_maskz_loadu_epi16(m, w + o * in + i);
      wf[o] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
    }
    #pragma GCC unroll 16
    for (int t = 0; t < TB; ++t) {
      __m512 xv = _mm512_maskz_loadu_ps(m, x + t * in + i);
      #pragma GCC unroll 16
      for (int o = 0; o < OB; ++o) acc[t][o] = _mm512_fmadd_ps(xv, wf[o], acc[t][o]);
    }
  }
  #pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
    #pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) y[t * ldy + o] = _mm512_reduce_add_ps(acc[t][o]);
}

// vdpbf16ps: per f32 lane, acc += x[2j] * w[2j] + x[2j+1] * w[2j+1] on bf16 inputs. `xb` holds
// the activations rounded to bf16, rows of `ldx` (in rounded up to 32, zero padded).
template <int TB, int OB>
CASCADE_BF16 void Bf16DotBlock(const uint16_t* xb, int64_t ldx, const uint16_t* w, float* y, int64_t in, int64_t ldy) {
  __m512 acc[TB][OB];
#pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
#pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) acc[t][o] = _mm512_setzero_ps();
  for (int64_t i = 0; i < in; i += 32) {
    const int64_t n = std::min<int64_t>(32, in - i);
    const __mmask32 m = n == 32 ? ~__mmask32{0} : ((__mmask32{1} << n) - 1);
    __m512bh wv[OB];
#pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) {
      _mm_prefetch(reinterpret_cast<const char*>(w + o * in + i) + 2048, _MM_HINT_T0);
      wv[o] = reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(m, w + o * in + i));
    }
#pragma GCC unroll 16
    for (int t = 0; t < TB; ++t) {
      const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(xb + t * ldx + i));
#pragma GCC unroll 16
      for (int o = 0; o < OB; ++o) acc[t][o] = _mm512_dpbf16_ps(acc[t][o], xv, wv[o]);
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
#pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) y[t * ldy + o] = _mm512_reduce_add_ps(acc[t][o]);
}

// A float broadcast to 16 lanes by a load (vbroadcastss from memory: a load port only). With
// _mm512_set1_ps on a value just stored from a vector, GCC forwards it through registers as
// vpermd, a shuffle-port uop each: 4 per row of the block expanders below, where the shuffle port
// is their bottleneck.
CASCADE_AVX512 inline __m512 BroadcastFromMemory(const float* p) {
  __m512 r;
  asm("vbroadcastss %1, %0" : "=v"(r) : "m"(*p));
  return r;
}

// 32 bf16 values as vdpbf16ps's operand. (A cast of _mm512_loadu_si512's result made GCC 12 store
// and reload every such operand through the stack in the kernels below.)
CASCADE_BF16 inline __m512bh LoadBf16x32(const uint16_t* p) {
  __m512bh v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// kQ4Bf16 and kQ8Bf16 on CPUs with AVX512-BF16 and no AMX: Bf16DotBlock's arithmetic exactly (per
// row and token one accumulator, vdpbf16ps over the 32-input steps in order, then the same
// reduction), on the weights the blocks hold, built in registers from the blocks (Q4RowChunk,
// Q8RowBlock). A decode (Q4Bf16Decode<16>, Q8Bf16Decode<16>) keeps a panel's 16 rows in 16
// accumulators and reads the panel in order; 2..kBlocksTokensMax tokens build each row's weights
// in registers once per chunk for all the tokens (BlocksTokensDot); more tokens expand a panel
// into a bf16 scratch in L1 first (Q4PanelToBf16, Q8PanelToBf16) and run Bf16DotBlock itself over
// it. All read the blocks strictly in order: on Zen 4 two or more interleaved streams (rows of a
// matrix, panels) read DRAM at about half the rate of one (session 22). (Expanding rows in scalar code, as the AMX CPUs'
// tail rows do, ran a bf16q4 decode step at 237 ms on a Zen 4.)
//
// q4: one panel of n rows (Q4Order::kRows, int8_matmul.h: per 64-input chunk c, row j's 32 bytes
// at c * 32 n + 32 j, byte k holding input 64c + k low and 64c + 32 + k high; the two blocks'
// scales and minimums at (2c) n + j and (2c + 1) n + j). Per row and chunk a 32-entry table of
// bf16(d q + m) for the two blocks (as Q4ChunkToBf16Tiles), looked up with vpermw.
// The chunk's d and m of its low block, then of its high block, for rows [j0, j0 + 16) (masked).
CASCADE_AVX512 inline void Q4ChunkScales(const uint16_t* ps, const uint16_t* pm, int64_t n, int64_t j0, int64_t c,
                                         __mmask16 rows, float (*out)[16]) {
  const uint16_t* s0 = ps + 2 * c * n + j0;
  const uint16_t* m0 = pm + 2 * c * n + j0;
  _mm512_store_ps(out[0], _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(rows, s0)));
  _mm512_store_ps(out[1], _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(rows, m0)));
  _mm512_store_ps(out[2], _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(rows, s0 + n)));
  _mm512_store_ps(out[3], _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(rows, m0 + n)));
}

// Row r's 64 weights of a chunk (its 32 bytes at v, its scales in sc from Q4ChunkScales).
CASCADE_BF16 inline void Q4RowChunk(const float (*sc)[16], int r, const uint8_t* v, __m512bh* lo, __m512bh* hi) {
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i upper = _mm512_set1_epi16(0x10);  // word index bit 4: the table's upper 16 entries
  const __m512 flo = _mm512_fmadd_ps(iota, BroadcastFromMemory(&sc[0][r]), BroadcastFromMemory(&sc[1][r]));
  const __m512 fhi = _mm512_fmadd_ps(iota, BroadcastFromMemory(&sc[2][r]), BroadcastFromMemory(&sc[3][r]));
  const __m512i table = (__m512i)_mm512_cvtne2ps_pbh(flo, fhi);  // words 0..15 the high block's, 16..31 the low's
  const __m512i idx = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v)));
  *lo = (__m512bh)_mm512_permutexvar_epi16(_mm512_or_si512(idx, upper), table);
  *hi = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(idx, 4), table);
}

// One token over rows [j0, j0 + RB) of a q4 panel; y[r] for row j0 + r. RB 16: a whole panel in
// order; RB 1: a last panel's rows past a multiple of 16 (or a range's cut).
template <int RB>
CASCADE_BF16 void Q4Bf16Decode(const uint16_t* xb, const uint8_t* panel, const uint16_t* ps, const uint16_t* pm,
                               int64_t n, int64_t j0, int64_t in, float* y) {
  const __mmask16 rows = FirstLanes16(RB);
  __m512 acc[RB];
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r) acc[r] = _mm512_setzero_ps();
  // Per chunk (two buffers), stored a chunk ahead of their broadcasts, so no broadcast reads a
  // 64-byte store still in flight (measured alike with one buffer on Zen 4; kept for safety).
  alignas(64) float sc[2][4][16];
  const int64_t chunks = in / 64;
  Q4ChunkScales(ps, pm, n, j0, 0, rows, sc[0]);
  for (int64_t c = 0; c < chunks; ++c) {
    if (c + 1 < chunks) Q4ChunkScales(ps, pm, n, j0, c + 1, rows, sc[(c + 1) & 1]);
    const uint8_t* v = panel + c * 32 * n + 32 * j0;
    for (int k = 0; k < RB / 2; ++k) _mm_prefetch(reinterpret_cast<const char*>(v + kPrefetchBytes + 64 * k), _MM_HINT_T0);
    const __m512bh x0 = LoadBf16x32(xb + c * 64), x1 = LoadBf16x32(xb + c * 64 + 32);
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) {
      __m512bh lo, hi;
      Q4RowChunk(sc[c & 1], r, v + 32 * r, &lo, &hi);
      acc[r] = _mm512_dpbf16_ps(acc[r], x0, lo);
      acc[r] = _mm512_dpbf16_ps(acc[r], x1, hi);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r) y[r] = _mm512_reduce_add_ps(acc[r]);
}

// Prefetches the next panel a share per row pair while the tokens kernels compute the current one
// from L1. They go through a panel row pair by row pair, so the hardware's stream prefetch does
// not run ahead into the next panel: without this each panel started with its misses, and a
// verify of 5 ran ~20% slower (decoder_bench bf16q4, session 25).
class PanelPrefetcher {
 public:
  PanelPrefetcher(const PanelAhead& next, int64_t steps) : next_(next) {
    int64_t total = 0;
    for (int64_t b : next.bytes) total += b;
    per_step_ = steps > 0 ? (total / steps + 63) / 64 * 64 : 0;
  }
  CASCADE_AVX512 void Step() {
    for (int64_t left = per_step_; left > 0 && part_ < 3; left -= 64) {
      if (at_ >= next_.bytes[part_]) {
        ++part_, at_ = 0;
        continue;
      }
      _mm_prefetch(static_cast<const char*>(next_.part[part_]) + at_, _MM_HINT_T0);
      at_ += 64;
    }
  }

 private:
  PanelAhead next_;
  int64_t per_step_ = 0, part_ = 0, at_ = 0;
};

// T tokens (2..8) over RB (1 or 2) rows of a block-stored panel: per row and token the decode's
// arithmetic (Q4Bf16Decode / Q8Bf16Decode: one accumulator, vdpbf16ps over the blocks in order,
// the same reduction), each row's weights built in registers once per step (`rows.Build`: a q4
// chunk's two vectors, a q8 block's one) for all T tokens. Against the bf16 scratch
// (Q4PanelToBf16 then Bf16DotBlock) this saves its stores and reloads: kernel_bench --kinds hot on
// Zen 4, bf16q4, ns per row and 64 inputs, T = 2 / 5 / 8 4.73-5.43 / 6.61-6.90 / 8.96-9.03 ->
// 3.75-3.90 / 5.49-5.66 / 7.33-7.56 (session 25; rows of 3 or 4 ran no faster: building a row's
// weights, ~9.5 cycles a chunk, competes with vdpbf16ps for the same pipes). y[t * ldy + r] for
// the rows' row r.
template <int T, int RB, typename Rows>
CASCADE_BF16 inline void BlocksTokensDot(const uint16_t* xb, int64_t ldx, int64_t steps, const Rows& rows, float* y,
                                         int64_t ldy) {
  constexpr int W = Rows::kVectors;  // bf16 weight vectors (32 inputs each) a row has per step
  __m512 acc[RB][T];
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t c = 0; c < steps; ++c) {
    __m512bh w[RB][W];
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) rows.Build(c, r, w[r]);
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 2
      for (int k = 0; k < W; ++k) {
        const __m512bh x = LoadBf16x32(xb + t * ldx + (c * W + k) * 32);
#pragma GCC unroll 16
        for (int r = 0; r < RB; ++r) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], x, w[r][k]);
      }
  }
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

// Rows j0.. of a q4 panel for BlocksTokensDot: per 64-input chunk a row's two weight vectors
// (Q4RowChunk), sc the panel's scales per chunk (Q4ChunkScales for its 16 rows).
struct Q4PanelRows {
  static constexpr int kVectors = 2;
  const uint8_t* panel;
  const float (*sc)[4][16];
  int64_t n, j0;
  CASCADE_BF16 void Build(int64_t c, int r, __m512bh* w) const {
    Q4RowChunk(sc[c], static_cast<int>(j0) + r, panel + c * 32 * n + 32 * (j0 + r), &w[0], &w[1]);
  }
};

// Rows [j0, j1) of a block-stored panel for T tokens, two rows at a time through BlocksTokensDot,
// the next panel prefetched as the row pairs go.
template <int T, typename Rows>
CASCADE_BF16 void PanelRowPairs(const uint16_t* xb, int64_t ldx, int64_t steps, Rows rows, int64_t j0, int64_t j1,
                                float* y, int64_t ldy, const PanelAhead& next) {
  PanelPrefetcher ahead(next, (j1 - j0 + 1) / 2);
  int64_t j = j0;
  for (; j + 2 <= j1; j += 2) {
    ahead.Step();
    rows.j0 = j;
    BlocksTokensDot<T, 2>(xb, ldx, steps, rows, y + j, ldy);
  }
  if (j < j1) {
    rows.j0 = j;
    BlocksTokensDot<T, 1>(xb, ldx, steps, rows, y + j, ldy);
  }
}

// Rows [j0, j1) of a q4 panel for T tokens (2..8); the panel's scales go to `scales` (chunks x 4
// x 16 floats).
template <int T>
CASCADE_BF16 void Q4Bf16PanelTokens(const uint16_t* xb, int64_t ldx, const uint8_t* panel, const uint16_t* ps,
                                    const uint16_t* pm, int64_t n, int64_t j0, int64_t j1, int64_t in, float* y,
                                    int64_t ldy, float (*scales)[4][16], const PanelAhead& next) {
  const int64_t chunks = in / 64;
  for (int64_t c = 0; c < chunks; ++c) Q4ChunkScales(ps, pm, n, 0, c, FirstLanes16(static_cast<int>(n)), scales[c]);
  PanelRowPairs<T>(xb, ldx, chunks, Q4PanelRows{panel, scales, n, 0}, j0, j1, y, ldy, next);
}

// Rows [j0, j1) of a q4 panel as bf16 rows of `in` at buf (row j0 first), the panel read in order.
CASCADE_BF16 void Q4PanelToBf16(const uint8_t* panel, const uint16_t* ps, const uint16_t* pm, int64_t n, int64_t j0,
                                int64_t j1, int64_t in, uint16_t* buf) {
  const int rows = static_cast<int>(j1 - j0);
  alignas(64) float sc[2][4][16];
  const int64_t chunks = in / 64;
  Q4ChunkScales(ps, pm, n, j0, 0, FirstLanes16(rows), sc[0]);
  for (int64_t c = 0; c < chunks; ++c) {
    if (c + 1 < chunks) Q4ChunkScales(ps, pm, n, j0, c + 1, FirstLanes16(rows), sc[(c + 1) & 1]);
    const uint8_t* v = panel + c * 32 * n + 32 * j0;
    for (int k = 0; k < 8; ++k) _mm_prefetch(reinterpret_cast<const char*>(v + kPrefetchBytes + 64 * k), _MM_HINT_T0);
    for (int r = 0; r < rows; ++r) {
      __m512bh lo, hi;
      Q4RowChunk(sc[c & 1], r, v + 32 * r, &lo, &hi);
      std::memcpy(buf + r * in + c * 64, &lo, 64);
      std::memcpy(buf + r * in + c * 64 + 32, &hi, 64);
    }
  }
}

// q8: one panel of n rows (int8_matmul.h: per 32-input block b, row j's 32 bytes at (b n + j) *
// 32, its f16 scale at b n + j): the weights bf16(d q), d q exact in f32 (as Q8BlockToBf16Tile).
CASCADE_BF16 inline __m512bh Q8RowBlock(const float* d, const int8_t* row) {
  const __m512 dr = BroadcastFromMemory(d);
  const __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)))), dr);
  const __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16)))), dr);
  return _mm512_cvtne2ps_pbh(hi, lo);
}

// Block b's f16 scales of rows [j0, j0 + 16) (masked) as floats.
CASCADE_AVX512 inline void Q8BlockScales(const uint16_t* ps, int64_t n, int64_t j0, int64_t b, __mmask16 rows,
                                         float* out) {
  _mm512_store_ps(out, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(rows, ps + b * n + j0)));
}

template <int RB>
CASCADE_BF16 void Q8Bf16Decode(const uint16_t* xb, const int8_t* panel, const uint16_t* ps, int64_t n, int64_t j0,
                               int64_t in, float* y) {
  const __mmask16 rows = FirstLanes16(RB);
  __m512 acc[RB];
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r) acc[r] = _mm512_setzero_ps();
  alignas(64) float ds[2][16];  // per block (two buffers), stored a block ahead (as Q4Bf16Decode)
  const int64_t blocks = in / 32;
  Q8BlockScales(ps, n, j0, 0, rows, ds[0]);
  for (int64_t b = 0; b < blocks; ++b) {
    if (b + 1 < blocks) Q8BlockScales(ps, n, j0, b + 1, rows, ds[(b + 1) & 1]);
    const int8_t* v = panel + (b * n + j0) * 32;
    for (int k = 0; k < RB / 2; ++k) _mm_prefetch(reinterpret_cast<const char*>(v + kPrefetchBytes + 64 * k), _MM_HINT_T0);
    const __m512bh x = LoadBf16x32(xb + b * 32);
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], x, Q8RowBlock(&ds[b & 1][r], v + 32 * r));
  }
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r) y[r] = _mm512_reduce_add_ps(acc[r]);
}

CASCADE_BF16 void Q8PanelToBf16(const int8_t* panel, const uint16_t* ps, int64_t n, int64_t j0, int64_t j1, int64_t in,
                                uint16_t* buf) {
  const int rows = static_cast<int>(j1 - j0);
  alignas(64) float ds[2][16];
  const int64_t blocks = in / 32;
  Q8BlockScales(ps, n, j0, 0, FirstLanes16(rows), ds[0]);
  for (int64_t b = 0; b < blocks; ++b) {
    if (b + 1 < blocks) Q8BlockScales(ps, n, j0, b + 1, FirstLanes16(rows), ds[(b + 1) & 1]);
    const int8_t* v = panel + (b * n + j0) * 32;
    for (int k = 0; k < 8; ++k) _mm_prefetch(reinterpret_cast<const char*>(v + kPrefetchBytes + 64 * k), _MM_HINT_T0);
    for (int r = 0; r < rows; ++r) {
      const __m512bh w = Q8RowBlock(&ds[b & 1][r], v + 32 * r);
      std::memcpy(buf + r * in + b * 32, &w, 64);
    }
  }
}

// Rows j0.. of a q8 panel for BlocksTokensDot: per 32-input block a row's weight vector
// (Q8RowBlock), ds the panel's scales per block (Q8BlockScales for its 16 rows).
struct Q8PanelRows {
  static constexpr int kVectors = 1;
  const int8_t* panel;
  const float (*ds)[16];
  int64_t n, j0;
  CASCADE_BF16 void Build(int64_t b, int r, __m512bh* w) const {
    w[0] = Q8RowBlock(&ds[b][j0 + r], panel + (b * n + j0 + r) * 32);
  }
};

// Rows [j0, j1) of a q8 panel for T tokens (2..8); the panel's scales go to `ds` (blocks x 16).
template <int T>
CASCADE_BF16 void Q8Bf16PanelTokens(const uint16_t* xb, int64_t ldx, const int8_t* panel, const uint16_t* ps,
                                    int64_t n, int64_t j0, int64_t j1, int64_t in, float* y, int64_t ldy,
                                    float (*ds)[16], const PanelAhead& next) {
  const int64_t blocks = in / 32;
  for (int64_t b = 0; b < blocks; ++b) Q8BlockScales(ps, n, 0, b, FirstLanes16(static_cast<int>(n)), ds[b]);
  PanelRowPairs<T>(xb, ldx, blocks, Q8PanelRows{panel, ds, n, 0}, j0, j1, y, ldy, next);
}

template <int T>
CASCADE_BF16 void BlocksPanelTokensOf(const uint16_t* xb, int64_t ldx, const uint8_t* panel, const uint16_t* ps,
                                      const uint16_t* pm, int64_t n, int64_t j0, int64_t j1, int64_t in, float* y,
                                      int64_t ldy, float* scales, const PanelAhead& next) {
  if (pm)
    Q4Bf16PanelTokens<T>(xb, ldx, panel, ps, pm, n, j0, j1, in, y, ldy, reinterpret_cast<float (*)[4][16]>(scales), next);
  else
    Q8Bf16PanelTokens<T>(xb, ldx, reinterpret_cast<const int8_t*>(panel), ps, n, j0, j1, in, y, ldy,
                         reinterpret_cast<float (*)[16]>(scales), next);
}

// Rows [j0, j1) of one q4 (pm set) or q8 panel for T tokens (2..kBlocksTokensMax); `scales` a
// 64-byte aligned scratch of 2 * 16 * in / 32 floats.
CASCADE_BF16 void BlocksPanelTokens(int64_t T, const uint16_t* xb, int64_t ldx, const uint8_t* panel,
                                    const uint16_t* ps, const uint16_t* pm, int64_t n, int64_t j0, int64_t j1,
                                    int64_t in, float* y, int64_t ldy, float* scales, const PanelAhead& next) {
  using Fn = void (*)(const uint16_t*, int64_t, const uint8_t*, const uint16_t*, const uint16_t*, int64_t, int64_t,
                      int64_t, int64_t, float*, int64_t, float*, const PanelAhead&);
  static constexpr Fn kByTokens[kBlocksTokensMax + 1] = {
      nullptr, nullptr, &BlocksPanelTokensOf<2>, &BlocksPanelTokensOf<3>, &BlocksPanelTokensOf<4>,
      &BlocksPanelTokensOf<5>, &BlocksPanelTokensOf<6>, &BlocksPanelTokensOf<7>, &BlocksPanelTokensOf<8>};
  kByTokens[T](xb, ldx, panel, ps, pm, n, j0, j1, in, y, ldy, scales, next);
}

#else
template <int RB>
void Q4Bf16Decode(const uint16_t*, const uint8_t*, const uint16_t*, const uint16_t*, int64_t, int64_t, int64_t, float*) {
  NoSimd();
}
void BlocksPanelTokens(int64_t, const uint16_t*, int64_t, const uint8_t*, const uint16_t*, const uint16_t*, int64_t,
                       int64_t, int64_t, int64_t, float*, int64_t, float*, const PanelAhead&) {
  NoSimd();
}
void Q4PanelToBf16(const uint8_t*, const uint16_t*, const uint16_t*, int64_t, int64_t, int64_t, int64_t, uint16_t*) {
  NoSimd();
}
template <int RB>
void Q8Bf16Decode(const uint16_t*, const int8_t*, const uint16_t*, int64_t, int64_t, int64_t, float*) { NoSimd(); }
void Q8PanelToBf16(const int8_t*, const uint16_t*, int64_t, int64_t, int64_t, int64_t, uint16_t*) { NoSimd(); }
template <int TB, int OB>
void Avx2BlockBf16(const float*, const uint16_t*, float*, int64_t, int64_t) { NoSimd(); }
template <int TB, int OB>
void Avx512BlockBf16(const float*, const uint16_t*, float*, int64_t, int64_t) { NoSimd(); }
template <int TB, int OB>
void Bf16DotBlock(const uint16_t*, int64_t, const uint16_t*, float*, int64_t, int64_t) { NoSimd(); }
#endif  // CASCADE_X86

// Activations rounded to bf16 (nearest even; NaN stays NaN), rows padded with zeros to ldx.
#if CASCADE_X86
// 16 floats -> bf16 with the scalar rule below (nearest even, NaN quieted): the same bits.
CASCADE_AVX512 void RoundToBf16Avx512(const float* x, int64_t n, uint16_t* out) {
  int64_t i = 0;
  for (; i < n; i += 16) {
    const __mmask16 m = FirstLanes16(n - i);
    const __m512i u = _mm512_maskz_loadu_epi32(m, x + i);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    const __m512i hi = _mm512_srli_epi32(u, 16);
    const __m512i rne = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(hi, _mm512_set1_epi32(1)))), 16);
    const __m512i b = _mm512_mask_blend_epi32(nan, rne, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
    _mm256_mask_storeu_epi16(out + i, m, _mm512_cvtepi32_epi16(b));
  }
}
#else
void RoundToBf16Avx512(const float*, int64_t, uint16_t*) { NoSimd(); }
#endif

}  // namespace

void RoundToBf16(const float* x, int64_t n, uint16_t* out) {
  if (HasAvx512()) {
    RoundToBf16Avx512(x, n, out);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) out[i] = static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
    else out[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

namespace {

Bf16Rows RoundRowsToBf16(const float* x, int64_t T, int64_t in, int64_t* ldx) {
  *ldx = (in + 31) / 32 * 32;
  Bf16Rows xb(static_cast<size_t>(T * *ldx), 0);
  for (int64_t t = 0; t < T; ++t) RoundToBf16(x + t * in, in, xb.data() + t * *ldx);
  return xb;
}

template <int TB, int OB>
struct Bf16DotB {
  static void Run(int64_t t, int64_t o, const uint16_t* xb, int64_t ldx, const uint16_t* w, float* y, int64_t in,
                  int64_t out) {
    Bf16DotBlock<TB, OB>(xb + t * ldx, ldx, w + o * in, y + t * out + o, in, out);
  }
};

template <int TB, int OB>
struct Avx2Bf16B {
  static void Run(int64_t t, int64_t o, const float* x, const uint16_t* w, float* y, int64_t in, int64_t out) {
    Avx2BlockBf16<TB, OB>(x + t * in, w + o * in, y + t * out + o, in, out);
  }
};
template <int TB, int OB>
struct Avx512Bf16B {
  static void Run(int64_t t, int64_t o, const float* x, const uint16_t* w, float* y, int64_t in, int64_t out) {
    Avx512BlockBf16<TB, OB>(x + t * in, w + o * in, y + t * out + o, in, out);
  }
};

// ---------------------------------------------------------------- AMX bf16 (tiles)

#if CASCADE_X86
// The tile registers need the kernel's permission once per process (Linux >= 5.16).
bool AmxPermitted() {
  static const bool ok = [] {
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

struct AmxTileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(AmxTileConfig) == 64, "ldtilecfg reads a 64-byte configuration");

// ldtilecfg with all 64 bytes of the configuration as the asm's input. GCC 12's _tile_loadconfig
// (amxtileintrin.h) names only its first 8 bytes (`"m" (*(const void **)config)`), so the
// compiler may drop the stores of rows and colsb before it as dead: a probe built with -O2 did
// (scripts/bf16q4-factored-probe.cc; the tiles then unconfigured, SIGILL at the first tile load).
CASCADE_AMX inline void LoadTileConfigBytes(const AmxTileConfig& cfg) { asm volatile("ldtilecfg %0" : : "m"(cfg)); }

// Tiles 0..5 as every AMX kernel here uses them: C 0..3 (f32 [16 rows][n tokens], one per
// 16-token group), A 4 (16 weight rows x 32 bf16), B 5 (16 pairs x n tokens), n = min(T, 16).
// Narrow C and B tiles when T < 16: a decode's tdpbf16ps then computes one column, not 16 (the
// q4 kernel 0.058 -> 0.046 ns a weight, session 15); each element's arithmetic is the same
// whatever the width (kernels_q4bf16 and kernels_bf16 check rows of every T against T = 1).
CASCADE_AMX inline void LoadTileConfig(int64_t T) {
  const auto n = static_cast<uint16_t>(4 * std::min<int64_t>(T, 16));
  AmxTileConfig cfg;
  for (int i = 0; i < 6; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = i == 4 ? 64 : n;
  }
  LoadTileConfigBytes(cfg);
}

// B tiles from activations x[T, in] (in % 32 == 0), n = min(T, 16) tokens wide (LoadTileConfig):
// per 16-token group g and k block kb, a tile of 16 rows x n pairs, row r holding for token m the
// bf16 pair x[16g + m][32 kb + 2r .. +1] (zeros past T). A decode's tiles are x itself, in order
// (the full 16-token width zeroed and wrote 18-48 KB a matrix for one token's 1-3 KB). A group's
// tile is its tokens' 16 pairs of block kb transposed (one register transpose: the element loop
// cost a verify of 13 tokens ~0.6 ms, ~90 packings).
CASCADE_AVX512 void PackAmxActivations(const uint16_t* xb, int64_t ldx, int64_t T, int64_t in,
                                       std::vector<uint16_t>* b) {
  const int64_t n = std::min<int64_t>(T, 16), groups = (T + 15) / 16, kblocks = in / 32, tile = 32 * n;
  b->resize(static_cast<size_t>(groups * kblocks * tile));
  if (T == 1) {
    std::copy(xb, xb + in, b->data());
    return;
  }
  const __mmask16 lanes = FirstLanes16(n);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t tokens = std::min<int64_t>(16, T - 16 * g);
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      __m512 r[16];
      for (int64_t m = 0; m < 16; ++m)
        r[m] = m < tokens ? _mm512_loadu_ps(xb + (16 * g + m) * ldx + kb * 32) : _mm512_setzero_ps();
      Transpose16x16(r);  // r[row] lane m: token m's pair `row`
      uint16_t* bt = b->data() + (g * kblocks + kb) * tile;
      for (int64_t row = 0; row < 16; ++row) _mm512_mask_storeu_ps(bt + row * 2 * n, lanes, r[row]);
    }
  }
}

// The AMX kernels' shared steps. C tile g (0..3) accumulates A (tile 4: 16 weight rows x 32 k)
// times the packed activations' B tile of k block kb for token group g.
CASCADE_AMX inline void DotTokenGroups(const std::vector<uint16_t>& packed, int64_t T, int64_t kb, int64_t kblocks,
                                       int64_t groups) {
  const int64_t n = std::min<int64_t>(T, 16), tile = 32 * n, stride = 4 * n;
  const uint16_t* bt = packed.data() + kb * tile;
  _tile_loadd(5, bt, stride);
  _tile_dpbf16ps(0, 4, 5);
  if (groups > 1) {
    _tile_loadd(5, bt + kblocks * tile, stride);
    _tile_dpbf16ps(1, 4, 5);
  }
  if (groups > 2) {
    _tile_loadd(5, bt + 2 * kblocks * tile, stride);
    _tile_dpbf16ps(2, 4, 5);
  }
  if (groups > 3) {
    _tile_loadd(5, bt + 3 * kblocks * tile, stride);
    _tile_dpbf16ps(3, 4, 5);
  }
}

// The C tiles' 16 outputs per token into y (token m's at y + m * ldy). C holds the tokens in
// columns; a register transpose writes each token's 16 outputs with one store (reading the
// columns back element by element cost a verify of 13 tokens ~2 ms more than a decode: bf16
// target, 269 MB, 14.6k blocks x 208 loads and stores).
CASCADE_AMX inline void StoreTokenGroups(int64_t T, int64_t groups, float* y, int64_t ldy) {
  alignas(64) float c[16][16];
  for (int64_t g = 0; g < groups; ++g) {
    switch (g) {
      case 0: _tile_stored(0, c, 64); break;
      case 1: _tile_stored(1, c, 64); break;
      case 2: _tile_stored(2, c, 64); break;
      default: _tile_stored(3, c, 64); break;
    }
    const int64_t tokens = std::min<int64_t>(16, T - g * 16);
    float* yg = y + g * 16 * ldy;
    if (tokens == 1) {
      for (int64_t i = 0; i < 16; ++i) yg[i] = c[i][0];
      continue;
    }
    __m512 r[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_load_ps(c[i]);
    Transpose16x16(r);
    for (int64_t m = 0; m < tokens; ++m) _mm512_storeu_ps(yg + m * ldy, r[m]);
  }
}

// y rows [o0, o1) (whole 16-row blocks) of y = x . W^T: C[16 rows of W][16 tokens] accumulates
// A (16 weight rows x 32 k, straight from W) times B (the packed activations) over the k blocks,
// one C tile per 16-token group (at most 4: T <= 64).
CASCADE_AMX void AmxBf16Rows(const std::vector<uint16_t>& packed, int64_t T, const uint16_t* w, float* y, int64_t in,
                             int64_t out, int64_t o0, int64_t o1) {
  LoadTileConfig(T);
  const int64_t groups = (T + 15) / 16, kblocks = in / 32;
  for (int64_t n0 = o0; n0 + 16 <= o1; n0 += 16) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    const uint16_t* a = w + n0 * in;
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      _tile_loadd(4, a + kb * 32, in * 2);
      DotTokenGroups(packed, T, kb, kblocks, groups);
    }
    StoreTokenGroups(T, groups, y + n0, out);
  }
  _tile_release();
}

// kQ4Bf16: y rows [o0, o1) (o0, o1 multiples of 16: whole 16-row panels) of y = x . W^T, W the
// bf16 rounding of a q4 matrix's values d * q + m. AmxBf16Rows's arithmetic exactly (its tiles in
// its roles and k order), the A tiles built from the blocks instead of loaded from bf16 rows: per
// 64-input chunk of a panel and row (Q4Order::kRows: the row's 32 bytes together; byte i holds
// input i low, input 32 + i high), a 32-entry table of bf16(d * q + m) for the chunk's two blocks
// (fma over q = 0..15, exact before the rounding since d * q has at most 15 significant bits)
// looked up with the bytes widened to word indices (vpermw reads an index's low 5 bits: bit 4 set
// picks the low block's half). y points at output o0 of token 0; token rows ldy floats apart.
// One 64-input chunk of a kQ4Bf16 panel as AmxQ4Bf16Rows's two A tiles a[0] (its first 32 inputs)
// and a[1] (the next 32), bf16 [16 rows][32].
CASCADE_AMX inline void Q4ChunkToBf16Tiles(const uint8_t* v, const uint16_t* ps, const uint16_t* pm,
                                           uint16_t (*a)[16][32]) {
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i upper = _mm512_set1_epi16(0x10);  // word index bit 4: the table's upper 16 entries
  alignas(64) float sc[4][16];       // per row: d and m of the chunk's two blocks
  _mm512_store_ps(sc[0], _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ps))));
  _mm512_store_ps(sc[1], _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pm))));
  _mm512_store_ps(sc[2], _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ps + 16))));
  _mm512_store_ps(sc[3], _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pm + 16))));
  // 4 chunks (2 KB) ahead: 2, 4, 8, 16 and 32 measured alike within ~10%, 4 best (session 15).
  for (int k = 0; k < 8; ++k) _mm_prefetch(reinterpret_cast<const char*>(v + 4 * 512 + k * 64), _MM_HINT_T0);
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) {
    const __m512 flo = _mm512_fmadd_ps(iota, BroadcastFromMemory(&sc[0][j]), BroadcastFromMemory(&sc[1][j]));
    const __m512 fhi = _mm512_fmadd_ps(iota, BroadcastFromMemory(&sc[2][j]), BroadcastFromMemory(&sc[3][j]));
    const __m512i table = (__m512i)_mm512_cvtne2ps_pbh(flo, fhi);  // words 0..15 the high block's, 16..31 the low's
    const __m512i idx = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 32 * j)));
    _mm512_store_si512(a[0][j], _mm512_permutexvar_epi16(_mm512_or_si512(idx, upper), table));
    _mm512_store_si512(a[1][j], _mm512_permutexvar_epi16(_mm512_srli_epi16(idx, 4), table));
  }
}

CASCADE_AMX void AmxQ4Bf16Rows(const std::vector<uint16_t>& packed, int64_t T, const uint8_t* w, const uint16_t* bs,
                               const uint16_t* bm, float* y, int64_t ldy, int64_t in, int64_t o0, int64_t o1) {
  LoadTileConfig(T);
  const int64_t groups = (T + 15) / 16, kblocks = in / 32, chunks = in / 64;
  alignas(64) uint16_t a[2][2][16][32];  // two chunks' two A tiles each: 16 rows x 32 k, bf16
  for (int64_t n0 = o0; n0 + 16 <= o1; n0 += 16) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    const uint8_t* panel = w + n0 * (in / 2);
    const uint16_t* ps = bs + n0 * (in / kQ4Block);
    const uint16_t* pm = bm + n0 * (in / kQ4Block);
    // Software-pipelined: chunk ch + 1's tiles are built before chunk ch's are loaded, so a tile
    // load never waits on the stores that just wrote it (a tile load takes no store forwarding:
    // perf showed ~25% of this kernel's time stalled there).
    Q4ChunkToBf16Tiles(panel, ps, pm, a[0]);
    for (int64_t ch = 0; ch < chunks; ++ch) {
      if (ch + 1 < chunks) Q4ChunkToBf16Tiles(panel + (ch + 1) * 512, ps + (ch + 1) * 32, pm + (ch + 1) * 32, a[(ch + 1) & 1]);
      for (int h = 0; h < 2; ++h) {
        _tile_loadd(4, a[ch & 1][h], 64);
        DotTokenGroups(packed, T, 2 * ch + h, kblocks, groups);
      }
    }
    StoreTokenGroups(T, groups, y + (n0 - o0), ldy);
  }
  _tile_release();
}

// One 32-input block of a kQ8Bf16 panel (16 rows x 32 bytes, then 16 f16 scales) as an A tile:
// bf16(d * q) per weight (d * q has at most 19 significant bits: exact in f32 before the rounding).
CASCADE_AMX inline void Q8BlockToBf16Tile(const int8_t* v, const uint16_t* s, uint16_t (*a)[32]) {
  alignas(64) float d[16];
  _mm512_store_ps(d, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s))));
  // 4 blocks (2 KB) ahead, as the q4 kernel.
  for (int k = 0; k < 8; ++k) _mm_prefetch(reinterpret_cast<const char*>(v + 4 * 512 + k * 64), _MM_HINT_T0);
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) {
    const __m512 dj = BroadcastFromMemory(&d[j]);
    const int8_t* row = v + 32 * j;
    const __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)))), dj);
    const __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16)))), dj);
    _mm512_store_si512(a[j], (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
}

// kQ8Bf16: y rows [o0, o1) (whole 16-row panels) of y = x . W^T with W the bf16 rounding of
// d * q: AmxBf16Rows's tiles, roles and k order (bit-identical to the bf16 weights' kernel), the
// A tiles built from the blocks one k block ahead of their loads (as AmxQ4Bf16Rows). y points at
// output o0 of token 0; token rows ldy floats apart.
CASCADE_AMX void AmxQ8Bf16Rows(const std::vector<uint16_t>& packed, int64_t T, const int8_t* w, const uint16_t* bs,
                               float* y, int64_t ldy, int64_t in, int64_t o0, int64_t o1) {
  LoadTileConfig(T);
  const int64_t groups = (T + 15) / 16, kblocks = in / 32;
  alignas(64) uint16_t a[2][16][32];
  for (int64_t n0 = o0; n0 + 16 <= o1; n0 += 16) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    const int8_t* panel = w + n0 * in;
    const uint16_t* scales = bs + n0 * kblocks;
    Q8BlockToBf16Tile(panel, scales, a[0]);
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      if (kb + 1 < kblocks) Q8BlockToBf16Tile(panel + (kb + 1) * 512, scales + (kb + 1) * 16, a[(kb + 1) & 1]);
      _tile_loadd(4, a[kb & 1], 64);
      DotTokenGroups(packed, T, kb, kblocks, groups);
    }
    StoreTokenGroups(T, groups, y + (n0 - o0), ldy);
  }
  _tile_release();
}

// kQ4ExactBf16 (int8_matmul.h) with tiles: C 0..3 [tokens][16 rows] (one block each, in turn), A 4
// [tokens][32 bf16] (the rows of xb), B 5 / 7 [16 pairs][16 rows] built from a kPairs block.
CASCADE_AMX inline void LoadExactTileConfig(int64_t tokens) {
  AmxTileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = static_cast<uint8_t>(i == 5 || i == 7 ? 16 : tokens);
    cfg.colsb[i] = 64;
  }
  LoadTileConfigBytes(cfg);
}

// One 32-input block of a whole kPairs panel (256 bytes) as a B tile: group g's 64 bytes give rows
// 4g..4g+3, nibble k of every word OR'd with 0x4300 = bf16(128 + q). No table: ~2 vector
// operations per 32 weights against kQ4Bf16's ~6.5 (docs/bench/decoder.md, session 32).
CASCADE_AMX inline void Q4PairsToTile(const uint8_t* v, uint16_t (*b)[32]) {
  const __m512i low = _mm512_set1_epi16(0x000F), bias = _mm512_set1_epi16(0x4300);
  // 8 blocks (2 KB) ahead, as the kQ4Bf16 kernel's 4 chunks.
  for (int k = 0; k < 4; ++k) _mm_prefetch(reinterpret_cast<const char*>(v + 8 * 256 + k * 64), _MM_HINT_T0);
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) {
    const __m512i q = _mm512_loadu_si512(v + 64 * g);
    _mm512_store_si512(b[4 * g + 0], _mm512_ternarylogic_epi32(q, low, bias, 0xEA));  // (q & low) | bias
    _mm512_store_si512(b[4 * g + 1], _mm512_ternarylogic_epi32(_mm512_srli_epi16(q, 4), low, bias, 0xEA));
    _mm512_store_si512(b[4 * g + 2], _mm512_ternarylogic_epi32(_mm512_srli_epi16(q, 8), low, bias, 0xEA));
    _mm512_store_si512(b[4 * g + 3], _mm512_or_si512(_mm512_srli_epi16(q, 12), bias));
  }
}

// A block's C (kTokens x 16 rows at c) into the accumulators: per token acc = fma(d, C, acc),
// then acc = fma(m - 128 d, the token's sum of the block, acc); sums[t * stride] is token t's. The
// token count is a template argument so the accumulators stay in registers (a run-time count kept
// them in memory: verify(13) 7-8% slower than kQ4Bf16, docs/bench/decoder.md session 33).
template <int kTokens>
CASCADE_AMX inline void FoldExactBlock(const float* c, const uint16_t* ps, const uint16_t* pm, const float* sums,
                                       int64_t stride, __m512* acc) {
  const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ps)));
  const __m512 m = _mm512_fmadd_ps(_mm512_set1_ps(-128.0f), d,
                                   _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pm))));
#pragma GCC unroll 16
  for (int t = 0; t < kTokens; ++t) {
    acc[t] = _mm512_fmadd_ps(d, _mm512_load_ps(c + 16 * t), acc[t]);
    acc[t] = _mm512_fmadd_ps(m, BroadcastFromMemory(sums + t * stride), acc[t]);
  }
}

#define CASCADE_EXACT_BLOCK(CT, BT, B, X, STRIDE) \
  do {                                            \
    _tile_zero(CT);                               \
    _tile_loadd(BT, B, 64);                       \
    _tile_loadd(4, X, STRIDE);                    \
    _tile_dpbf16ps(CT, 4, BT);                    \
  } while (0)

// C tile j % 4 (block j's) to c[j % 4].
CASCADE_AMX inline void StoreExactTile(int64_t j, float (*c)[16 * 16]) {
  switch (j & 3) {
    case 0: _tile_stored(0, c[0], 64); break;
    case 1: _tile_stored(1, c[1], 64); break;
    case 2: _tile_stored(2, c[2], 64); break;
    default: _tile_stored(3, c[3], 64); break;
  }
}

// Whole 16-row panels [o0, o1) of a kQ4ExactBf16 matrix for kTokens tokens (<= 16, the tile
// configuration's rows) from xg (rows of xb, stride elements apart) with their block sums; y points
// at output o0 of the first token, token rows ldy floats apart. Block j's B tile is built two blocks
// ahead of its load (a tile load takes no store forwarding); its C tile (one of four) is stored two
// blocks after its tdpbf16ps (a store right after it waited out the product's latency: ~30% of
// the kernel's time, perf, session 33) and folded in one block after that.
template <int kTokens>
CASCADE_AMX void AmxQ4ExactPanels(const uint16_t* xg, int64_t stride, const float* sums, const uint8_t* w,
                                  const uint16_t* bs, const uint16_t* bm, float* y, int64_t ldy, int64_t in, int64_t o0,
                                  int64_t o1) {
  constexpr int64_t kAhead = 2;
  const int64_t blocks = in / kQ4Block;
  alignas(64) uint16_t b_tiles[4][16][32];
  alignas(64) float c[4][16 * 16];
  for (int64_t n0 = o0; n0 + 16 <= o1; n0 += 16) {
    const uint8_t* panel = w + n0 * (in / 2);
    const uint16_t* ps = bs + n0 * blocks;
    const uint16_t* pm = bm + n0 * blocks;
    __m512 acc[kTokens];
#pragma GCC unroll 16
    for (int t = 0; t < kTokens; ++t) acc[t] = _mm512_setzero_ps();
    // (Functions, not lambdas: clang gives a lambda none of its function's target features.)
#define CASCADE_EXACT_FOLD(j) FoldExactBlock<kTokens>(c[(j) & 3], ps + (j) * 16, pm + (j) * 16, sums + (j), blocks, acc)
    for (int64_t b = 0; b < kAhead && b < blocks; ++b) Q4PairsToTile(panel + b * 256, b_tiles[b & 3]);
    for (int64_t b = 0; b < blocks; ++b) {
      if (b + kAhead < blocks) Q4PairsToTile(panel + (b + kAhead) * 256, b_tiles[(b + kAhead) & 3]);
      const uint16_t* xb = xg + b * kQ4Block;
      switch (b & 3) {
        case 0: CASCADE_EXACT_BLOCK(0, 5, b_tiles[0], xb, stride); break;
        case 1: CASCADE_EXACT_BLOCK(1, 7, b_tiles[1], xb, stride); break;
        case 2: CASCADE_EXACT_BLOCK(2, 5, b_tiles[2], xb, stride); break;
        default: CASCADE_EXACT_BLOCK(3, 7, b_tiles[3], xb, stride); break;
      }
      if (b >= 2) StoreExactTile(b - 2, c);
      if (b >= 3) CASCADE_EXACT_FOLD(b - 3);
    }
    for (int64_t j = std::max<int64_t>(0, blocks - 2); j < blocks; ++j) StoreExactTile(j, c);
    for (int64_t j = std::max<int64_t>(0, blocks - 3); j < blocks; ++j) CASCADE_EXACT_FOLD(j);
#undef CASCADE_EXACT_FOLD
#pragma GCC unroll 16
    for (int t = 0; t < kTokens; ++t) _mm512_storeu_ps(y + t * ldy + (n0 - o0), acc[t]);
  }
}

// Every token of a, 16 at a time, through AmxQ4ExactPanels.
CASCADE_AMX void AmxQ4ExactRows(const PreparedActivations& a, const uint8_t* w, const uint16_t* bs, const uint16_t* bm,
                                float* y, int64_t ldy, int64_t in, int64_t o0, int64_t o1) {
  using Panels = void (*)(const uint16_t*, int64_t, const float*, const uint8_t*, const uint16_t*, const uint16_t*,
                          float*, int64_t, int64_t, int64_t, int64_t);
  static constexpr Panels kByTokens[16] = {
      AmxQ4ExactPanels<1>,  AmxQ4ExactPanels<2>,  AmxQ4ExactPanels<3>,  AmxQ4ExactPanels<4>,
      AmxQ4ExactPanels<5>,  AmxQ4ExactPanels<6>,  AmxQ4ExactPanels<7>,  AmxQ4ExactPanels<8>,
      AmxQ4ExactPanels<9>,  AmxQ4ExactPanels<10>, AmxQ4ExactPanels<11>, AmxQ4ExactPanels<12>,
      AmxQ4ExactPanels<13>, AmxQ4ExactPanels<14>, AmxQ4ExactPanels<15>, AmxQ4ExactPanels<16>};
  const int64_t T = a.T, blocks = in / kQ4Block;
  for (int64_t t0 = 0; t0 < T; t0 += 16) {
    const int64_t tokens = std::min<int64_t>(16, T - t0);
    LoadExactTileConfig(tokens);
    kByTokens[tokens - 1](a.xb.data() + t0 * a.ldx, a.ldx * 2, a.xb_block_sum.data() + t0 * blocks, w, bs, bm,
                          y + t0 * ldy, ldy, in, o0, o1);
  }
  _tile_release();
}
#undef CASCADE_EXACT_BLOCK
#else
[[maybe_unused]] bool AmxPermitted() { return false; }
void AmxQ4ExactRows(const PreparedActivations&, const uint8_t*, const uint16_t*, const uint16_t*, float*, int64_t,
                    int64_t, int64_t, int64_t) {
  NoSimd();
}
void PackAmxActivations(const uint16_t*, int64_t, int64_t, int64_t, std::vector<uint16_t>*) { NoSimd(); }
void AmxBf16Rows(const std::vector<uint16_t>&, int64_t, const uint16_t*, float*, int64_t, int64_t, int64_t, int64_t) {
  NoSimd();
}
void AmxQ4Bf16Rows(const std::vector<uint16_t>&, int64_t, const uint8_t*, const uint16_t*, const uint16_t*, float*,
                   int64_t, int64_t, int64_t, int64_t) {
  NoSimd();
}
void AmxQ8Bf16Rows(const std::vector<uint16_t>&, int64_t, const int8_t*, const uint16_t*, float*, int64_t, int64_t,
                   int64_t, int64_t) {
  NoSimd();
}
#endif  // CASCADE_X86

// Rows [0, AmxRowsEnd) of a bf16 matrix go through AMX tiles (whole 16-row blocks of a matrix
// whose `in` is a multiple of 32), the rest through kAvx512Bf16, whatever T or the task split.
int64_t AmxRowsEnd(int64_t in, int64_t out) { return in % 32 == 0 ? out / 16 * 16 : 0; }

// ---------------------------------------------------------------- f32 weights stored [in, out]

// y[t, o0..o0+n) for the f32 upload layout W^T [in, out]: per element a sequential FMA chain over
// i, so every (t, o) gets the same sequence whatever the block sizes around it.
void ScalarColsF32T(const float* x, const float* wt, float* y, int64_t T, int64_t in, int64_t out, int64_t o0,
                    int64_t o1) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = o0; o < o1; ++o) {
      float acc = 0.0f;
      for (int64_t i = 0; i < in; ++i) acc += x[t * in + i] * wt[i * out + o];
      y[t * out + o] = acc;
    }
}

// Outputs [o0, o1) of a kF32Panels matrix as runs within one panel each: run(w, ldw, o, n) for the
// weights of outputs o..o+n (column o's element of row i at w[i * ldw]).
template <typename Run>
void ForPanelRuns(const float* panels, int64_t in, int64_t out, int64_t o0, int64_t o1, Run run) {
  for (int64_t o = o0; o < o1;) {
    const int64_t p0 = o / kF32PanelColumns * kF32PanelColumns, width = std::min(kF32PanelColumns, out - p0);
    const int64_t end = std::min(o1, p0 + width);
    run(panels + p0 * in + (o - p0), width, o, end - o);
    o = end;
  }
}

void ScalarPanelsF32(const float* x, const float* panels, float* y, int64_t T, int64_t in, int64_t out, int64_t o0,
                     int64_t o1) {
  ForPanelRuns(panels, in, out, o0, o1, [&](const float* w, int64_t ldw, int64_t o, int64_t n) {
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < n; ++j) {
        float acc = 0.0f;
        for (int64_t i = 0; i < in; ++i) acc += x[t * in + i] * w[i * ldw + j];
        y[t * out + o + j] = acc;
      }
  });
}

#if CASCADE_X86
// TB rows x up to 64 columns (four 16-lane vectors, masked beyond n).
// (wt's rows are ldw floats apart, y's `out`.)
template <int TB>
CASCADE_AVX512 void Avx512BlockF32T(const float* x, const float* wt, float* y, int64_t in, int64_t ldw, int64_t out,
                                    int64_t n) {
  __m512 acc[TB][4];
  __mmask16 m[4];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, n - 16 * j));
    m[j] = left == 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
  }
#pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[t][j] = _mm512_setzero_ps();
  for (int64_t i = 0; i < in; ++i) {
    const float* wr = wt + i * ldw;
    // Rows of W^T are `ldw` floats apart: prefetch the panel a few rows ahead.
    _mm_prefetch(reinterpret_cast<const char*>(wr + 8 * ldw), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(wr + 8 * ldw + 32), _MM_HINT_T0);
    __m512 wv[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) wv[j] = _mm512_maskz_loadu_ps(m[j], wr + 16 * j);
#pragma GCC unroll 16
    for (int t = 0; t < TB; ++t) {
      const __m512 xv = _mm512_set1_ps(x[t * in + i]);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[t][j] = _mm512_fmadd_ps(xv, wv[j], acc[t][j]);
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) _mm512_mask_storeu_ps(y + t * out + 16 * j, m[j], acc[t][j]);
}

// T rows x up to 64 columns whose weights start at w (rows ldw apart), into y + o.
void Avx512RunF32T(const float* x, const float* w, int64_t ldw, float* y, int64_t T, int64_t in, int64_t out, int64_t o,
                   int64_t n) {
  // A verify of up to 6 tokens streams the weights once (24 accumulators + 4 weight vectors;
  // T = 5 was a pass of 4 and a pass of 1: verify(5) 1.56x decode(1), now 1.46x). Longer calls
  // go 4 tokens a pass (T = 8 as 6 + 2 measured 50.9 ms against 45.8 as 4 + 4).
  int64_t t = 0;
  if (T > 6)
    for (; t + 4 <= T; t += 4) Avx512BlockF32T<4>(x + t * in, w, y + t * out + o, in, ldw, out, n);
  switch (T - t) {
    case 6: Avx512BlockF32T<6>(x + t * in, w, y + t * out + o, in, ldw, out, n); break;
    case 5: Avx512BlockF32T<5>(x + t * in, w, y + t * out + o, in, ldw, out, n); break;
    case 4: Avx512BlockF32T<4>(x + t * in, w, y + t * out + o, in, ldw, out, n); break;
    case 3: Avx512BlockF32T<3>(x + t * in, w, y + t * out + o, in, ldw, out, n); break;
    case 2: Avx512BlockF32T<2>(x + t * in, w, y + t * out + o, in, ldw, out, n); break;
    case 1: Avx512BlockF32T<1>(x + t * in, w, y + t * out + o, in, ldw, out, n); break;
    default: break;
  }
}

void Avx512ColsF32T(const float* x, const float* wt, float* y, int64_t T, int64_t in, int64_t out, int64_t o0,
                    int64_t o1) {
  for (int64_t o = o0; o < o1; o += 64) Avx512RunF32T(x, wt + o, out, y, T, in, out, o, std::min<int64_t>(64, o1 - o));
}

void Avx512PanelsF32(const float* x, const float* panels, float* y, int64_t T, int64_t in, int64_t out, int64_t o0,
                     int64_t o1) {
  ForPanelRuns(panels, in, out, o0, o1, [&](const float* w, int64_t ldw, int64_t o, int64_t n) {
    Avx512RunF32T(x, w, ldw, y, T, in, out, o, n);
  });
}

#else
void Avx512ColsF32T(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t) { NoSimd(); }
void Avx512PanelsF32(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t) { NoSimd(); }
#endif  // CASCADE_X86

// ---------------------------------------------------------------- dispatch over blocks

// Tokens [t, t + left) (1 <= left <= TB) as one block of `left` tokens over outputs [o, o + OB).
template <template <int, int> class B, int OB, int TB, typename... A>
void TokensRest(int64_t left, int64_t t, int64_t o, A&... a) {
  if constexpr (TB > 0) {
    if (left == TB) B<TB, OB>::Run(t, o, a...);
    else TokensRest<B, OB, TB - 1>(left, t, o, a...);
  }
}

// Tokens [0, T) in blocks of up to kMax over outputs [o, o + OB).
template <template <int, int> class B, int OB, int kMax, typename... A>
void TokensOver(int64_t T, int64_t o, A&... a) {
  int64_t t = 0;
  for (; t + kMax <= T; t += kMax) B<kMax, OB>::Run(t, o, a...);
  if (t < T) TokensRest<B, OB, kMax - 1>(T - t, t, o, a...);
}

// Calls block<TB, OB>(t0, o0) over rows [0, T) x outputs [o0, o1). A decode takes one output row
// at a time (the weights read in one stream), more tokens OB = kOB rows then 1 for the rest, 4
// tokens at a time. On Zen 4 two or more interleaved streams read DRAM at about half the rate of
// one (session 22, one thread, 576 x 1536 matrices from DRAM, T = 1: int8 9.5 -> 17.7 GB/s, bf16
// 11.2 -> 18.1).
template <template <int, int> class B, typename... A>
void Tile(int64_t T, int64_t o0, int64_t o1, A&&... a) {
  int64_t o = o0;
  if (T == 1) {
    for (; o < o1; ++o) B<1, 1>::Run(0, o, a...);
    return;
  }
  for (; o + kOB <= o1; o += kOB) TokensOver<B, kOB, 4>(T, o, a...);
  for (; o < o1; ++o) TokensOver<B, 1, 4>(T, o, a...);
}

// One output row at a time over every token (8 at a time): the rows read in order, for weights
// streamed from DRAM (bf16, T = 5, one thread: 9.0 -> 15.1 GB/s against Tile's 4 rows on Zen 4).
template <template <int, int> class B, typename... A>
void TileRowsInOrder(int64_t T, int64_t o0, int64_t o1, A&&... a) {
  for (int64_t o = o0; o < o1; ++o) TokensOver<B, 1, 8>(T, o, a...);
}

// Two output rows at a time over every token (8 at a time), for weights already in L1/L2.
template <template <int, int> class B, typename... A>
void TileRowPairs(int64_t T, int64_t o0, int64_t o1, A&&... a) {
  int64_t o = o0;
  for (; o + 2 <= o1; o += 2) TokensOver<B, 2, 8>(T, o, a...);
  for (; o < o1; ++o) TokensOver<B, 1, 8>(T, o, a...);
}

template <int TB, int OB>
struct Avx2B {
  static void Run(int64_t t, int64_t o, const float* x, const int8_t* w, const float* s, float* y, int64_t in,
                  int64_t out) {
    Avx2Block<TB, OB>(x + t * in, w + o * in, s + o, y + t * out + o, in, out);
  }
};
template <int TB, int OB>
struct Avx512B {
  static void Run(int64_t t, int64_t o, const float* x, const int8_t* w, const float* s, float* y, int64_t in,
                  int64_t out) {
    Avx512Block<TB, OB>(x + t * in, w + o * in, s + o, y + t * out + o, in, out);
  }
};
template <int TB, int OB>
struct VnniB {
  static void Run(int64_t t, int64_t o, const QuantizedX& qx, const int8_t* w, const float* s, float* y, int64_t in,
                  int64_t out) {
    VnniBlock<TB, OB>(qx, t, w + o * in, s + o, y + t * out + o, in, out);
  }
};

bool CpuHas(const char* feature);
bool HasAvx512() {
  static const bool has = CpuHas("avx512");
  return has;
}

bool CpuHas(const char* feature) {
#if !CASCADE_X86
  (void)feature;
  return false;
#else
  __builtin_cpu_init();
  if (std::string(feature) == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (std::string(feature) == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
  if (std::string(feature) == "vnni") return CpuHas("avx512") && __builtin_cpu_supports("avx512vnni");
  if (std::string(feature) == "bf16") return CpuHas("avx512") && __builtin_cpu_supports("avx512bf16");
  if (std::string(feature) == "amxbf16") {
    // CPUID.(EAX=7, ECX=0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    return CpuHas("bf16") && (d >> 22 & 1) && (d >> 24 & 1) && AmxPermitted();
  }
  return false;
#endif
}

}  // namespace

const char* Int8ImplName(Int8Impl impl) {
  switch (impl) {
    case Int8Impl::kScalar: return "scalar";
    case Int8Impl::kAvx2: return "avx2";
    case Int8Impl::kAvx512: return "avx512";
    case Int8Impl::kAvx512Vnni: return "avx512vnni";
    case Int8Impl::kAvx512Bf16: return "avx512bf16";
    case Int8Impl::kAmxBf16: return "amxbf16";
  }
  return "unknown";
}

bool ParseInt8Impl(const std::string& name, Int8Impl* impl) {
  for (Int8Impl i : {Int8Impl::kScalar, Int8Impl::kAvx2, Int8Impl::kAvx512, Int8Impl::kAvx512Vnni, Int8Impl::kAvx512Bf16,
                     Int8Impl::kAmxBf16})
    if (name == Int8ImplName(i)) {
      *impl = i;
      return true;
    }
  return false;
}

bool Int8ImplSupported(Int8Impl impl) {
  switch (impl) {
    case Int8Impl::kScalar: return true;
    case Int8Impl::kAvx2: return CpuHas("avx2");
    case Int8Impl::kAvx512: return CpuHas("avx512");
    case Int8Impl::kAvx512Vnni: return CpuHas("vnni");
    case Int8Impl::kAvx512Bf16: return CpuHas("bf16");
    case Int8Impl::kAmxBf16: return CpuHas("amxbf16");
  }
  return false;
}

Int8Impl BestInt8Impl() {
  // Measured on Zen 5 (SmolLM2-135M matrices, one thread): VNNI 2.2x faster than AVX-512 f32 at
  // T=1 and 2.3x at T=8; AVX-512 f32 and AVX2 within noise of each other.
  static const Int8Impl best = [] {
    if (Int8ImplSupported(Int8Impl::kAvx512Vnni)) return Int8Impl::kAvx512Vnni;
    if (Int8ImplSupported(Int8Impl::kAvx512)) return Int8Impl::kAvx512;
    if (Int8ImplSupported(Int8Impl::kAvx2)) return Int8Impl::kAvx2;
    return Int8Impl::kScalar;
  }();
  return best;
}

Int8Impl BestBf16Impl() {
  static const Int8Impl best = [] {
    if (Int8ImplSupported(Int8Impl::kAmxBf16)) return Int8Impl::kAmxBf16;
    if (Int8ImplSupported(Int8Impl::kAvx512Bf16)) return Int8Impl::kAvx512Bf16;
    if (Int8ImplSupported(Int8Impl::kAvx512)) return Int8Impl::kAvx512;
    if (Int8ImplSupported(Int8Impl::kAvx2)) return Int8Impl::kAvx2;
    return Int8Impl::kScalar;
  }();
  return best;
}

std::string ValidateInt8Matmul(const Int8MatmulShape& s) {
  if (s.T < 1 || s.in < 1 || s.out < 1)
    return "int8 matmul: T, in and out must be positive (got T=" + std::to_string(s.T) + ", in=" +
           std::to_string(s.in) + ", out=" + std::to_string(s.out) + ")";
  if (s.T > kMaxT) return "int8 matmul: T=" + std::to_string(s.T) + " exceeds " + std::to_string(kMaxT);
  if (s.in > kMaxIn) return "int8 matmul: in=" + std::to_string(s.in) + " exceeds " + std::to_string(kMaxIn);
  return "";
}

void ParallelTasks(int64_t n, const std::function<void(int64_t)>& task, int helpers, const Spawner& spawn) {
  if (n <= 0) return;
  if (helpers <= 0 || !spawn || n == 1) {
    for (int64_t i = 0; i < n; ++i) task(i);
    return;
  }
  // Shared with the helpers, which may start after this call returned: they then find no index
  // left and never touch `task`.
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    int64_t n = 0;
    const std::function<void(int64_t)>* task = nullptr;
  };
  auto state = std::make_shared<State>();
  state->n = n;
  state->task = &task;
  auto work = [](State& s) {
    for (;;) {
      int64_t i = s.next.fetch_add(1, std::memory_order_relaxed);
      if (i >= s.n) return;
      (*s.task)(i);
      s.done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int h = 0; h < helpers && h + 1 < n; ++h) spawn([state, work] { work(*state); });
  work(*state);
  // Only indices a helper has claimed are still running: short waits.
  while (state->done.load(std::memory_order_acquire) < n) {
    for (int k = 0; k < 64; ++k) CASCADE_CPU_RELAX();
    std::this_thread::yield();
  }
}

void Int8Matmul(Int8Impl impl, const float* x, const int8_t* w, const float* scale, float* y,
                const Int8MatmulShape& shape, int helpers, const Spawner& spawn) {
  const std::string bad = ValidateInt8Matmul(shape);
  if (!bad.empty()) throw std::invalid_argument(bad);
  if (impl == Int8Impl::kAvx512Bf16 || impl == Int8Impl::kAmxBf16) impl = BestInt8Impl();  // a bf16-only impl
  if (!Int8ImplSupported(impl)) throw std::invalid_argument(std::string("int8 matmul: this CPU cannot run ") + Int8ImplName(impl));
  const int64_t T = shape.T, in = shape.in, out = shape.out;
  // Below this, waking a helper costs more than it saves (measured: see kernels_test Bench).
  constexpr int64_t kMinParallelMacs = int64_t{1} << 18;
  if (T * in * out < kMinParallelMacs) helpers = 0;

  QuantizedX qx;
  if (impl == Int8Impl::kAvx512Vnni) QuantizeRows(x, T, in, &qx);
  // Tasks are ranges of output rows (multiples of kOB), about 4 per thread.
  const int64_t threads = helpers + 1;
  int64_t rows = (out + threads * 4 - 1) / (threads * 4);
  rows = std::max<int64_t>(16, (rows + kOB - 1) / kOB * kOB);
  const int64_t tasks = (out + rows - 1) / rows;
  auto run = [&](int64_t k) {
    const int64_t o0 = k * rows, o1 = std::min(out, o0 + rows);
    switch (impl) {
      case Int8Impl::kScalar: ScalarRows(x, w, scale, y, T, in, out, o0, o1); break;
      case Int8Impl::kAvx2: Tile<Avx2B>(T, o0, o1, x, w, scale, y, in, out); break;
      case Int8Impl::kAvx512: Tile<Avx512B>(T, o0, o1, x, w, scale, y, in, out); break;
      case Int8Impl::kAvx512Vnni: Tile<VnniB>(T, o0, o1, qx, w, scale, y, in, out); break;
      default: break;  // bf16-only impls were mapped to BestInt8Impl() above
    }
  };
  ParallelTasks(tasks, run, helpers, spawn);
}

void Int8GatherMatmul(Int8Impl impl, const float* x, const int8_t* w, const float* scale, const int32_t* ids, float* y,
                      const Int8MatmulShape& shape, int64_t k) {
  const std::string bad = ValidateInt8Matmul(shape);
  if (!bad.empty()) throw std::invalid_argument(bad);
  if (k < 1 || k > shape.out) throw std::invalid_argument("int8 gather matmul: need 1 <= k <= out, got k=" + std::to_string(k));
  if (impl == Int8Impl::kAvx512Bf16 || impl == Int8Impl::kAmxBf16) impl = BestInt8Impl();
  if (!Int8ImplSupported(impl)) throw std::invalid_argument(std::string("int8 matmul: this CPU cannot run ") + Int8ImplName(impl));
  const int64_t T = shape.T, in = shape.in, out = shape.out;
  QuantizedX qx;
  if (impl == Int8Impl::kAvx512Vnni) QuantizeRows(x, T, in, &qx);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t o = std::min<int64_t>(std::max<int32_t>(ids[t * k + j], 0), out - 1);  // clamp, as XLA's gather
      float* yo = y + t * k + j;
      // The same single-element computation Int8Matmul does for (t, o): bit-identical logits.
      switch (impl) {
        case Int8Impl::kScalar: {
          float tmp[1];
          ScalarRows(x + t * in, w + o * in, scale + o, tmp, 1, in, 1, 0, 1);
          *yo = tmp[0];
          break;
        }
        case Int8Impl::kAvx2: Avx2Block<1, 1>(x + t * in, w + o * in, scale + o, yo, in, 1); break;
        case Int8Impl::kAvx512: Avx512Block<1, 1>(x + t * in, w + o * in, scale + o, yo, in, 1); break;
        case Int8Impl::kAvx512Vnni: VnniBlock<1, 1>(qx, t, w + o * in, scale + o, yo, in, 1); break;
        default: break;  // bf16-only impls were mapped to BestInt8Impl() above
      }
    }
}

void Bf16Matmul(Int8Impl impl, const float* x, const uint16_t* w, float* y, const Int8MatmulShape& shape, int helpers,
                const Spawner& spawn) {
  const std::string bad = ValidateInt8Matmul(shape);
  if (!bad.empty()) throw std::invalid_argument("bf16 " + bad);
  if (impl == Int8Impl::kAvx512Vnni) impl = Int8Impl::kAvx512;  // no activation quantisation for bf16
  if (!Int8ImplSupported(impl)) throw std::invalid_argument(std::string("bf16 matmul: this CPU cannot run ") + Int8ImplName(impl));
  if (impl == Int8Impl::kAmxBf16 && shape.T > 64) impl = Int8Impl::kAvx512Bf16;
  constexpr int64_t kMinParallelMacs = int64_t{1} << 18;
  if (shape.T * shape.in * shape.out < kMinParallelMacs) helpers = 0;
  KernelImpls impls;
  impls.bf16 = impl;
  const WeightMatrix m{WeightMatrix::Kind::kBf16, w, nullptr, shape.in, shape.out};
  PreparedActivations a;
  PrepareActivations(m.kind, impls, x, shape.T, shape.in, &a);
  const int64_t per = MatmulTaskOutputs(m);
  ParallelTasks((shape.out + per - 1) / per, [&](int64_t k) { MatmulRange(m, impls, a, y, k * per, std::min(shape.out, (k + 1) * per)); },
                helpers, spawn);
}

void Bf16GatherMatmul(Int8Impl impl, const float* x, const uint16_t* w, const int32_t* ids, float* y,
                      const Int8MatmulShape& shape, int64_t k) {
  const std::string bad = ValidateInt8Matmul(shape);
  if (!bad.empty()) throw std::invalid_argument("bf16 " + bad);
  if (k < 1 || k > shape.out) throw std::invalid_argument("bf16 gather matmul: need 1 <= k <= out, got k=" + std::to_string(k));
  if (impl == Int8Impl::kAvx512Vnni) impl = Int8Impl::kAvx512;
  if (!Int8ImplSupported(impl)) throw std::invalid_argument(std::string("bf16 matmul: this CPU cannot run ") + Int8ImplName(impl));
  const int64_t T = shape.T, in = shape.in, out = shape.out;
  int64_t ldx = 0;
  Bf16Rows xb;
  if (impl == Int8Impl::kAvx512Bf16 || impl == Int8Impl::kAmxBf16) xb = RoundRowsToBf16(x, T, in, &ldx);
  // AMX: the rows a full matmul computes with tiles (AmxRowsEnd) go through tiles here too, 16
  // gathered rows at a time against token t alone: the same per-element arithmetic.
  const int64_t amx_end = impl == Int8Impl::kAmxBf16 ? AmxRowsEnd(in, out) : 0;
  std::vector<uint16_t> rows, packed;
  int32_t slot_of[16];
  float tile_y[16];
  for (int64_t t = 0; t < T; ++t) {
    int64_t pending = 0;
    auto flush = [&] {
      if (!pending) return;
      for (int64_t i = pending; i < 16; ++i) std::fill(rows.begin() + i * in, rows.begin() + (i + 1) * in, uint16_t{0});
      AmxBf16Rows(packed, 1, rows.data(), tile_y, in, 16, 0, 16);
      for (int64_t i = 0; i < pending; ++i) y[t * k + slot_of[i]] = tile_y[i];
      pending = 0;
    };
    if (amx_end) {
      rows.resize(static_cast<size_t>(16 * in));
      PackAmxActivations(xb.data() + t * ldx, ldx, 1, in, &packed);
    }
    for (int64_t j = 0; j < k; ++j) {
      const int64_t o = std::min<int64_t>(std::max<int32_t>(ids[t * k + j], 0), out - 1);
      float* yo = y + t * k + j;
      if (o < amx_end) {
        std::copy(w + o * in, w + (o + 1) * in, rows.begin() + pending * in);
        slot_of[pending++] = static_cast<int32_t>(j);
        if (pending == 16) flush();
        continue;
      }
      switch (impl) {
        case Int8Impl::kAvx512Bf16:
        case Int8Impl::kAmxBf16: Bf16DotBlock<1, 1>(xb.data() + t * ldx, ldx, w + o * in, yo, in, 1); break;
        case Int8Impl::kScalar: ScalarRowsBf16(x + t * in, w + o * in, yo, 1, in, 1, 0, 1); break;
        case Int8Impl::kAvx2: Avx2BlockBf16<1, 1>(x + t * in, w + o * in, yo, in, 1); break;
        default: Avx512BlockBf16<1, 1>(x + t * in, w + o * in, yo, in, 1); break;
      }
    }
    flush();
  }
}

namespace {
#if CASCADE_X86
CASCADE_AVX512 float SumAvx512(const float* p, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p + i + 48));
  }
  float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  for (; i < n; ++i) s += p[i];
  return s;
}
#else
float SumAvx512(const float*, int64_t) { NoSimd(); }
#endif
}  // namespace

float SumForBandwidth(const float* begin, const float* end) {
  if (Int8ImplSupported(Int8Impl::kAvx512)) return SumAvx512(begin, end - begin);
  float acc[8] = {0};
  const int64_t n = end - begin;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += begin[i + j];
  float s = 0;
  for (; i < n; ++i) s += begin[i];
  for (float a : acc) s += a;
  return s;
}

Int8Impl BestF32Impl() {
  static const Int8Impl best = Int8ImplSupported(Int8Impl::kAvx512) ? Int8Impl::kAvx512 : Int8Impl::kScalar;
  return best;
}

std::string ValidateQ4Matrix(int64_t in, int64_t out) {
  if (in < 1 || out < 1) return "q4 matrix: sizes must be positive";
  if (in % 64 != 0) return "q4 matrix: the input size " + std::to_string(in) + " is not a multiple of 64";
  if (in > kMaxIn) return "q4 matrix: the input size is too large";
  return "";
}

namespace {
// Where weight (o, i) of a q4 matrix lives (int8_matmul.h): its byte, and whether it is the high
// nibble; and where its block's scale and minimum are.
struct Q4Place {
  int64_t byte = 0, scale = 0;
  bool high = false;
};
Q4Place Q4Where(int64_t in, int64_t out, int64_t o, int64_t i, Q4Order order) {
  const int64_t p = o / kQ4PanelRows, j = o % kQ4PanelRows, n = std::min(kQ4PanelRows, out - p * kQ4PanelRows);
  const int64_t c = i / 64, k = i % 32;
  Q4Place at;
  at.scale = p * kQ4PanelRows * (in / kQ4Block) + (i / kQ4Block) * n + j;
  if (order == Q4Order::kPairs) {  // block i / 32, group g, word 2 j + e, nibble h
    const int64_t g = k / 8, h = (k % 8) / 2, e = k % 2;
    at.byte = p * kQ4PanelRows * (in / 2) + (i / kQ4Block) * 16 * n + g * 4 * n + 2 * (2 * j + e) + h / 2;
    at.high = h % 2 == 1;
    return at;
  }
  at.high = i % 64 >= 32;
  at.byte = p * kQ4PanelRows * (in / 2) + c * 32 * n +
            (order == Q4Order::kRows ? j * 32 + k : (k / 4) * 4 * n + j * 4 + k % 4);
  return at;
}
}  // namespace

void QuantizeQ4Rows(const float* w, int64_t in, int64_t out, uint8_t* packed, uint16_t* block_scale,
                    uint16_t* block_min, Q4Order order) {
  const std::string why = ValidateQ4Matrix(in, out);
  if (!why.empty()) throw std::invalid_argument(why);
  const int64_t blocks = in / kQ4Block;
  std::memset(packed, 0, static_cast<size_t>(out * in / 2));
  for (int64_t o = 0; o < out; ++o) {
    const float* row = w + o * in;
    for (int64_t b = 0; b < blocks; ++b) {
      const float* x = row + b * kQ4Block;
      float lo = x[0], hi = x[0];
      for (int64_t i = 1; i < kQ4Block; ++i) {
        lo = std::min(lo, x[i]);
        hi = std::max(hi, x[i]);
      }
      const uint16_t d16 = F32ToF16((hi - lo) / 15.0f), m16 = F32ToF16(lo);
      const Q4Place first = Q4Where(in, out, o, b * kQ4Block, order);
      block_scale[first.scale] = d16;
      block_min[first.scale] = m16;
      const float d = F16ToF32(d16), m = F16ToF32(m16);
      const float inv = d > 0.0f ? 1.0f / d : 0.0f;
      for (int64_t i = 0; i < kQ4Block; ++i) {
        const auto q = static_cast<uint8_t>(std::clamp(std::nearbyint((x[i] - m) * inv), 0.0f, 15.0f));
        const Q4Place at = Q4Where(in, out, o, b * kQ4Block + i, order);
        packed[at.byte] = static_cast<uint8_t>(packed[at.byte] | (at.high ? q << 4 : q));
      }
    }
  }
}

void DequantizeQ4Row(const uint8_t* packed, const uint16_t* block_scale, const uint16_t* block_min, int64_t in,
                     int64_t out, int64_t o, float* w, Q4Order order) {
  for (int64_t i = 0; i < in; ++i) {
    const Q4Place at = Q4Where(in, out, o, i, order);
    const uint8_t byte = packed[at.byte];
    const float q = static_cast<float>(at.high ? byte >> 4 : byte & 0x0F);
    w[i] = F16ToF32(block_scale[at.scale]) * q + F16ToF32(block_min[at.scale]);
  }
}

bool Q4HoldsBf16Exactly(const float* w, int64_t in, int64_t out, const uint8_t* packed, const uint16_t* block_scale,
                        const uint16_t* block_min, Q4Order order) {
  std::vector<float> row(static_cast<size_t>(in));
  for (int64_t o = 0; o < out; ++o) {
    DequantizeQ4Row(packed, block_scale, block_min, in, out, o, row.data(), order);
    for (int64_t i = 0; i < in; ++i)
      if (F32ToBF16(row[i]) != F32ToBF16(w[o * in + i])) return false;
  }
  return true;
}

namespace {
// Where weight i of row o of a kInt8Panels matrix lives (int8_matmul.h).
int64_t Int8PanelByte(int64_t in, int64_t out, int64_t o, int64_t i) {
  const int64_t p = o / kQ4PanelRows, j = o % kQ4PanelRows, n = std::min(kQ4PanelRows, out - p * kQ4PanelRows);
  return p * kQ4PanelRows * in + (i / 4) * 4 * n + j * 4 + i % 4;
}
}  // namespace

std::string ValidateInt8Panels(int64_t in, int64_t out) {
  if (in < 1 || out < 1 || in % 32 != 0)
    return "int8 panels: need positive sizes and an input size that is a multiple of 32 (got in=" +
           std::to_string(in) + ", out=" + std::to_string(out) + ")";
  return "";
}

void PackInt8Panels(const int8_t* w, int64_t in, int64_t out, uint8_t* panels) {
  const std::string why = ValidateInt8Panels(in, out);
  if (!why.empty()) throw std::invalid_argument(why);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i)
      panels[Int8PanelByte(in, out, o, i)] = static_cast<uint8_t>(static_cast<uint8_t>(w[o * in + i]) ^ 0x80u);
}

void UnpackInt8PanelRows(const uint8_t* panels, int64_t in, int64_t out, int64_t o0, int64_t o1, int8_t* rows) {
  for (int64_t o = o0; o < o1; ++o)
    for (int64_t i = 0; i < in; ++i)
      rows[(o - o0) * in + i] = static_cast<int8_t>(panels[Int8PanelByte(in, out, o, i)] ^ 0x80u);
}

namespace {
// Where block b of row o of a kQ8Bf16 matrix lives (int8_matmul.h): its first byte and its scale.
struct Q8Place {
  int64_t byte = 0, scale = 0;
};
Q8Place Q8Where(int64_t in, int64_t out, int64_t o, int64_t b) {
  const int64_t p = o / kQ4PanelRows, j = o % kQ4PanelRows, n = std::min(kQ4PanelRows, out - p * kQ4PanelRows);
  return {p * kQ4PanelRows * in + (b * n + j) * 32, p * kQ4PanelRows * (in / 32) + b * n + j};
}
}  // namespace

bool QuantizeQ8Rows(const float* w, int64_t in, int64_t out, int8_t* q, uint16_t* block_scale) {
  if (in % 32 != 0) throw std::invalid_argument("q8 blocks: the input size is not a multiple of 32");
  bool exact = true;
  for (int64_t o = 0; o < out; ++o)
    for (int64_t b = 0; b < in / 32; ++b) {
      const float* x = w + o * in + b * 32;
      float amax = 0.0f;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
      const uint16_t d16 = F32ToF16(amax / 127.0f);
      const Q8Place at = Q8Where(in, out, o, b);
      block_scale[at.scale] = d16;
      const float d = F16ToF32(d16);
      for (int i = 0; i < 32; ++i) {
        const float v = d > 0.0f ? std::clamp(std::nearbyint(x[i] / d), -127.0f, 127.0f) : 0.0f;
        q[at.byte + i] = static_cast<int8_t>(v);
        exact = exact && F32ToBF16(v * d) == F32ToBF16(x[i]);
      }
    }
  return exact;
}

void DequantizeQ8Row(const int8_t* q, const uint16_t* block_scale, int64_t in, int64_t out, int64_t o, float* w) {
  for (int64_t b = 0; b < in / 32; ++b) {
    const Q8Place at = Q8Where(in, out, o, b);
    const float d = F16ToF32(block_scale[at.scale]);
    for (int i = 0; i < 32; ++i) w[b * 32 + i] = static_cast<float>(q[at.byte + i]) * d;
  }
}

void PackF32Panels(const float* wt, int64_t in, int64_t out, float* panels) {
  for (int64_t p0 = 0; p0 < out; p0 += kF32PanelColumns) {
    const int64_t width = std::min(kF32PanelColumns, out - p0);
    for (int64_t i = 0; i < in; ++i)
      std::memcpy(panels + p0 * in + i * width, wt + i * out + p0, static_cast<size_t>(width) * sizeof(float));
  }
}

void PrepareActivations(WeightMatrix::Kind kind, const KernelImpls& impls, const float* x, int64_t T, int64_t in,
                        PreparedActivations* a) {
  a->x = x;
  a->T = T;
  a->in = in;
  const bool panels = kind == WeightMatrix::Kind::kQ4 || kind == WeightMatrix::Kind::kInt8Panels;
  if ((kind == WeightMatrix::Kind::kInt8 || panels) && impls.int8 == Int8Impl::kAvx512Vnni) QuantizeRows(x, T, in, a);
  if (panels && impls.int8 == Int8Impl::kAvx512Vnni) {
    // Per 32-block: -128 * the sum of its s8 values (the lane biases' sum), and its scale times
    // that sum.
    const int64_t chunks = a->chunks;
    a->block_sum.assign(static_cast<size_t>(T * chunks * 2), 0.0f);
    a->block_scale.assign(static_cast<size_t>(T * chunks * 2), 0.0f);
    a->block_bias.assign(static_cast<size_t>(T * chunks * 2), 0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < chunks; ++c)
        for (int half = 0; half < 2; ++half) {
          const int64_t lane0 = (t * chunks + c) * 16 + half * 8;
          int32_t bias = 0;
          for (int j = 0; j < 8; ++j) bias += a->lane_bias[lane0 + j];
          a->block_bias[(t * chunks + c) * 2 + half] = bias;
          a->block_sum[(t * chunks + c) * 2 + half] = a->lane_scale[lane0] * static_cast<float>(bias / -128);
          a->block_scale[(t * chunks + c) * 2 + half] = a->lane_scale[lane0];
        }
  }
  if (kind == WeightMatrix::Kind::kQ4ExactBf16) {  // every implementation reads xb and its block sums
    a->xb = RoundRowsToBf16(x, T, in, &a->ldx);
    const int64_t blocks = in / kQ4Block;
    a->xb_block_sum.assign(static_cast<size_t>(T * blocks), 0.0f);
    for (int64_t t = 0; t < T; ++t) {  // per row by one code path per CPU: the same bits whatever T
      const uint16_t* row = a->xb.data() + t * a->ldx;
      float* sums = a->xb_block_sum.data() + t * blocks;
      if (HasAvx512()) {
        SumBf16BlocksAvx512(row, blocks, sums);
        continue;
      }
      for (int64_t b = 0; b < blocks; ++b) {
        float sum = 0.0f;
        for (int64_t k = 0; k < kQ4Block; ++k) sum += BF16ToF32(row[b * kQ4Block + k]);
        sums[b] = sum;
      }
    }
    return;
  }
  const bool bf16_dot = kind == WeightMatrix::Kind::kBf16 || kind == WeightMatrix::Kind::kQ4Bf16 ||
                        kind == WeightMatrix::Kind::kQ8Bf16;
  if (bf16_dot && (impls.bf16 == Int8Impl::kAvx512Bf16 || impls.bf16 == Int8Impl::kAmxBf16))
    a->xb = RoundRowsToBf16(x, T, in, &a->ldx);
  if (bf16_dot && impls.bf16 == Int8Impl::kAmxBf16 && in % 32 == 0)
    PackAmxActivations(a->xb.data(), a->ldx, T, in, &a->amx);
}

int64_t MatmulTaskOutputs(const WeightMatrix& m) {
  // f32 [in, out]: 64 columns (128 and 256 measured no better in session 10).
  if (m.kind == WeightMatrix::Kind::kF32Transposed || m.kind == WeightMatrix::Kind::kF32Panels) return 64;
  const bool q4 = m.kind == WeightMatrix::Kind::kQ4 || m.kind == WeightMatrix::Kind::kQ4Bf16 ||
                  m.kind == WeightMatrix::Kind::kQ4ExactBf16;
  const bool bytes1 = m.kind == WeightMatrix::Kind::kInt8 || m.kind == WeightMatrix::Kind::kInt8Panels ||
                      m.kind == WeightMatrix::Kind::kQ8Bf16;
  const int64_t row_bytes = q4 ? m.in / 2 : m.in * (bytes1 ? 1 : 2);
  // ~128 KB of weights a task. decoder_bench decode(1), three interleaved rounds (session 10):
  // bf16 13.4-14.1 ms at 32 KB, 12.4-13.2 at 64 KB, 12.0-13.2 at 128 KB; int8 7.2-7.9 / 6.9-7.5 /
  // 6.7-7.3; q4 5.6-6.4 / 5.4-6.1 / 5.5-5.9; 256 KB and 1 MB slower again (fewer, longer streams
  // per thread help the prefetchers; too few tasks leave one thread idle at the end).
  const int64_t rows = std::max<int64_t>(16, (int64_t{128} << 10) / std::max<int64_t>(1, row_bytes));
  // Whole 16-row blocks (AMX tiles; a multiple of kOB too).
  return (rows + 15) / 16 * 16;
}

namespace {
// The bf16 weights of row o of a kQ4Bf16 / kQ8Bf16 matrix (rounded as the upload rounds a bf16
// tensor: model/decoder.cc ToBF16).
void BlocksRowToBf16(const WeightMatrix& m, int64_t o, float* scratch, uint16_t* row) {
  const int64_t in = m.in;
  if (m.kind == WeightMatrix::Kind::kQ4Bf16)
    DequantizeQ4Row(static_cast<const uint8_t*>(m.data), m.block_scale, m.block_min, in, m.out, o, scratch,
                    Q4Order::kRows);
  else
    DequantizeQ8Row(static_cast<const int8_t*>(m.data), m.block_scale, in, m.out, o, scratch);
  for (int64_t i = 0; i < in; ++i) row[i] = F32ToBF16(scratch[i]);
}

// kQ4Bf16 / kQ8Bf16 rows [o0, o1) through the bf16 weights' kernel itself: the rows expanded to
// their bf16 weights, a kBf16 matrix of just those rows, its outputs copied into y. For the rows
// of an AMX CPU past the last whole 16 (a kBf16 matrix's rows past out / 16 * 16 take the same
// non-AMX path) and for CPUs without AVX512-BF16 (with it: BlocksDotRange).
void BlocksThroughBf16(const WeightMatrix& m, const KernelImpls& impls, const PreparedActivations& a, float* y,
                       int64_t o0, int64_t o1) {
  const int64_t T = a.T, in = m.in, n = o1 - o0;
  std::vector<float> scratch(static_cast<size_t>(in));
  std::vector<uint16_t> wb(static_cast<size_t>(n * in));
  for (int64_t o = o0; o < o1; ++o) BlocksRowToBf16(m, o, scratch.data(), wb.data() + (o - o0) * in);
  for (int64_t s = 0; s < n; s += 16) {
    // 16 rows at a time: AMX (whole blocks of 16) exactly where the kBf16 matrix would use it.
    const int64_t e = std::min(n, s + 16);
    const WeightMatrix part{WeightMatrix::Kind::kBf16, wb.data() + s * in, nullptr, in, e - s};
    std::vector<float> yp(static_cast<size_t>(T * (e - s)));
    MatmulRange(part, impls, a, yp.data(), 0, e - s);
    for (int64_t t = 0; t < T; ++t)
      std::memcpy(y + t * m.out + o0 + s, yp.data() + t * (e - s), static_cast<size_t>(e - s) * sizeof(float));
  }
}

// kInt8Panels rows [o0, o1) on CPUs without VNNI: the rows back in kInt8's layout, through
// kInt8's kernel (its arithmetic and bits), 16 rows at a time.
void Int8PanelsThroughRows(const WeightMatrix& m, const KernelImpls& impls, const PreparedActivations& a, float* y,
                           int64_t o0, int64_t o1) {
  const int64_t T = a.T, in = m.in;
  std::vector<int8_t> rows(static_cast<size_t>(kQ4PanelRows * in));
  std::vector<float> yp(static_cast<size_t>(T * kQ4PanelRows));
  for (int64_t s = o0; s < o1; s += kQ4PanelRows) {
    const int64_t e = std::min(o1, s + kQ4PanelRows);
    UnpackInt8PanelRows(static_cast<const uint8_t*>(m.data), in, m.out, s, e, rows.data());
    const WeightMatrix part{WeightMatrix::Kind::kInt8, rows.data(), m.scale + s, in, e - s};
    MatmulRange(part, impls, a, yp.data(), 0, e - s);
    for (int64_t t = 0; t < T; ++t)
      std::memcpy(y + t * m.out + s, yp.data() + t * (e - s), static_cast<size_t>(e - s) * sizeof(float));
  }
}

// kQ4Bf16 / kQ8Bf16 rows [o0, o1) on CPUs with AVX512-BF16 and no AMX (Q4Bf16Decode and the rest
// above): per panel the rows the range holds. Every row is computed alike whatever T or the range:
// Bf16DotBlock's sequence on the weights the blocks hold.
void BlocksDotRange(const WeightMatrix& m, const PreparedActivations& a, float* y, int64_t o0, int64_t o1) {
  const int64_t in = m.in, panel_scales = kQ4PanelRows * (in / 32);
  const bool q4 = m.kind == WeightMatrix::Kind::kQ4Bf16;
  const int64_t panel_bytes = kQ4PanelRows * (q4 ? in / 2 : in);
  const auto* base = static_cast<const uint8_t*>(m.data);
  thread_local Bf16Rows scratch;  // T > kBlocksTokensMax: a panel's rows as bf16 (<= 48 KB for 1536 inputs)
  for (int64_t o = o0; o < o1;) {
    const int64_t p = o / kQ4PanelRows, n = std::min(kQ4PanelRows, m.out - p * kQ4PanelRows);
    const int64_t j0 = o - p * kQ4PanelRows, j1 = std::min(n, o1 - p * kQ4PanelRows);
    const uint8_t* panel = base + p * panel_bytes;
    const uint16_t* ps = m.block_scale + p * panel_scales;
    const uint16_t* pm = q4 ? m.block_min + p * panel_scales : nullptr;
    float* yp = y + p * kQ4PanelRows;
    if (a.T == 1) {
      int64_t j = j0;
      for (; j + 16 <= j1; j += 16)
        if (q4) Q4Bf16Decode<16>(a.xb.data(), panel, ps, pm, n, j, in, yp + j);
        else Q8Bf16Decode<16>(a.xb.data(), reinterpret_cast<const int8_t*>(panel), ps, n, j, in, yp + j);
      for (; j < j1; ++j)
        if (q4) Q4Bf16Decode<1>(a.xb.data(), panel, ps, pm, n, j, in, yp + j);
        else Q8Bf16Decode<1>(a.xb.data(), reinterpret_cast<const int8_t*>(panel), ps, n, j, in, yp + j);
    } else if (a.T <= kBlocksTokensMax) {
      thread_local std::vector<float> scales;
      scales.resize(static_cast<size_t>(in / 32 * 2 * 16) + 16);
      // 64-byte aligned: Q4ChunkScales and Q8BlockScales store whole vectors.
      float* sc = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scales.data()) + 63) / 64 * 64);
      PanelAhead next;
      const int64_t next_rows = std::min(kQ4PanelRows, std::min(o1, m.out) - (p + 1) * kQ4PanelRows);
      if (next_rows > 0) {
        next.part[0] = panel + panel_bytes;
        next.bytes[0] = next_rows * (q4 ? in / 2 : in);
        next.part[1] = ps + panel_scales;
        next.bytes[1] = next_rows * (in / 32) * 2;
        if (q4) next.part[2] = pm + panel_scales, next.bytes[2] = next.bytes[1];
      }
      BlocksPanelTokens(a.T, a.xb.data(), a.ldx, panel, ps, pm, n, j0, j1, in, yp, m.out, sc, next);
    } else {
      scratch.resize(static_cast<size_t>(kQ4PanelRows * in));
      if (q4) Q4PanelToBf16(panel, ps, pm, n, j0, j1, in, scratch.data());
      else Q8PanelToBf16(reinterpret_cast<const int8_t*>(panel), ps, n, j0, j1, in, scratch.data());
      // The scratch is in L1/L2: two rows x up to 8 tokens (hot, 576 x 1536, T = 5: 3.8 ns per 64
      // weights of a row against 4.4 with 4 x 4).
      TileRowPairs<Bf16DotB>(a.T, 0, j1 - j0, a.xb.data(), a.ldx, scratch.data(), yp + j0, in, m.out);
    }
    o = p * kQ4PanelRows + j1;
  }
}

// Rows [o0, o1) of a matrix of `out` rows whose whole 16-row panels go through tiles: rows(yr, ldy,
// r0, r1) computes whole panels [r0, r1) into yr (output r0 of token 0, token rows ldy apart); a
// panel the range cuts is computed whole into a scratch and the range's rows copied (a row's
// arithmetic never depends on the range); tail(r0, r1) takes the rows past the last whole panel.
template <typename Rows, typename Tail>
void AmxPanelsRange(int64_t T, int64_t out, float* y, int64_t o0, int64_t o1, Rows rows, Tail tail) {
  const int64_t whole = out / 16 * 16;
  const int64_t a0 = std::min((o0 + 15) / 16 * 16, whole), a1 = std::max(a0, std::min(o1, whole) / 16 * 16);
  auto cut_panel = [&](int64_t p0, int64_t r0, int64_t r1) {  // rows [r0, r1) of the panel at p0
    std::vector<float> tmp(static_cast<size_t>(T * 16));
    rows(tmp.data(), 16, p0, p0 + 16);
    for (int64_t t = 0; t < T; ++t)
      std::memcpy(y + t * out + r0, tmp.data() + t * 16 + (r0 - p0), static_cast<size_t>(r1 - r0) * sizeof(float));
  };
  if (o0 < a0) cut_panel(a0 - 16, o0, std::min(o1, a0));
  if (a1 > a0) rows(y + a0, out, a0, a1);
  if (a1 < o1 && a1 < whole) cut_panel(a1, std::max(o0, a1), std::min(o1, a1 + 16));
  if (o1 > whole) tail(std::max(o0, whole), o1);
}

// kQ4Bf16 / kQ8Bf16 rows [o0, o1) with AMX: whole 16-row blocks (q4: panels) through tiles
// (AmxPanelsRange), the rows past the last whole block through BlocksThroughBf16.
void AmxBlocksRange(const WeightMatrix& m, const KernelImpls& impls, const PreparedActivations& a, float* y,
                    int64_t o0, int64_t o1) {
  const int64_t T = a.T, in = m.in;
  if (T > 64) throw std::invalid_argument("bf16 matmul: the AMX kernel takes T <= 64");
  auto rows = [&](float* yr, int64_t ldy, int64_t r0, int64_t r1) {  // whole blocks [r0, r1)
    if (m.kind == WeightMatrix::Kind::kQ4Bf16)
      AmxQ4Bf16Rows(a.amx, T, static_cast<const uint8_t*>(m.data), m.block_scale, m.block_min, yr, ldy, in, r0, r1);
    else
      AmxQ8Bf16Rows(a.amx, T, static_cast<const int8_t*>(m.data), m.block_scale, yr, ldy, in, r0, r1);
  };
  AmxPanelsRange(T, m.out, y, o0, o1, rows, [&](int64_t r0, int64_t r1) { BlocksThroughBf16(m, impls, a, y, r0, r1); });
}

// kQ4ExactBf16 rows [o0, o1) in scalar code, the arithmetic of int8_matmul.h in a fixed order: for
// CPUs without AMX, and an AMX CPU's rows past the last whole panel.
void ScalarRowsQ4Exact(const WeightMatrix& m, const PreparedActivations& a, float* y, int64_t o0, int64_t o1) {
  const int64_t in = m.in, out = m.out, blocks = in / kQ4Block;
  const auto* packed = static_cast<const uint8_t*>(m.data);
  std::vector<float> w(static_cast<size_t>(in)), d(static_cast<size_t>(blocks)), shift(static_cast<size_t>(blocks));
  for (int64_t o = o0; o < o1; ++o) {
    for (int64_t i = 0; i < in; ++i) {
      const Q4Place at = Q4Where(in, out, o, i, Q4Order::kPairs);
      w[i] = static_cast<float>(128 + (at.high ? packed[at.byte] >> 4 : packed[at.byte] & 0x0F));  // bf16(128 + q)
      if (i % kQ4Block == 0) {
        d[i / kQ4Block] = F16ToF32(m.block_scale[at.scale]);
        shift[i / kQ4Block] = std::fma(-128.0f, d[i / kQ4Block], F16ToF32(m.block_min[at.scale]));
      }
    }
    for (int64_t t = 0; t < a.T; ++t) {
      const uint16_t* x = a.xb.data() + t * a.ldx;
      float acc = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) {
        float s = 0.0f;  // each product is exact in f32, so a contracted fma gives the same sum
        for (int64_t k = b * kQ4Block; k < (b + 1) * kQ4Block; ++k) s += BF16ToF32(x[k]) * w[k];
        acc = std::fma(d[b], s, acc);
        acc = std::fma(shift[b], a.xb_block_sum[t * blocks + b], acc);
      }
      y[t * out + o] = acc;
    }
  }
}

// kQ4ExactBf16 rows [o0, o1): with AMX whole panels through tiles (AmxPanelsRange), the rows past
// the last whole panel in scalar code; without AMX all in scalar code.
void Q4ExactRange(const WeightMatrix& m, const KernelImpls& impls, const PreparedActivations& a, float* y, int64_t o0,
                  int64_t o1) {
  if (impls.bf16 != Int8Impl::kAmxBf16) {
    ScalarRowsQ4Exact(m, a, y, o0, o1);
    return;
  }
  const auto* w = static_cast<const uint8_t*>(m.data);
  auto rows = [&](float* yr, int64_t ldy, int64_t r0, int64_t r1) {
    AmxQ4ExactRows(a, w, m.block_scale, m.block_min, yr, ldy, m.in, r0, r1);
  };
  AmxPanelsRange(a.T, m.out, y, o0, o1, rows, [&](int64_t r0, int64_t r1) { ScalarRowsQ4Exact(m, a, y, r0, r1); });
}
}  // namespace

void MatmulRange(const WeightMatrix& m, const KernelImpls& impls, const PreparedActivations& a, float* y, int64_t o0,
                 int64_t o1) {
  const int64_t T = a.T, in = m.in, out = m.out;
  switch (m.kind) {
    case WeightMatrix::Kind::kQ4Bf16:
    case WeightMatrix::Kind::kQ8Bf16:
      if (impls.bf16 == Int8Impl::kAmxBf16) AmxBlocksRange(m, impls, a, y, o0, o1);
      else if (impls.bf16 == Int8Impl::kAvx512Bf16) BlocksDotRange(m, a, y, o0, o1);
      else BlocksThroughBf16(m, impls, a, y, o0, o1);
      return;
    case WeightMatrix::Kind::kQ4ExactBf16: Q4ExactRange(m, impls, a, y, o0, o1); return;
    case WeightMatrix::Kind::kF32Transposed: {
      const float* wt = static_cast<const float*>(m.data);
      if (impls.f32 == Int8Impl::kAvx512) Avx512ColsF32T(a.x, wt, y, T, in, out, o0, o1);
      else ScalarColsF32T(a.x, wt, y, T, in, out, o0, o1);
      return;
    }
    case WeightMatrix::Kind::kF32Panels: {
      const float* w = static_cast<const float*>(m.data);
      if (impls.f32 == Int8Impl::kAvx512) Avx512PanelsF32(a.x, w, y, T, in, out, o0, o1);
      else ScalarPanelsF32(a.x, w, y, T, in, out, o0, o1);
      return;
    }
    case WeightMatrix::Kind::kInt8: {
      const int8_t* w = static_cast<const int8_t*>(m.data);
      switch (impls.int8) {
        case Int8Impl::kAvx512Vnni: Tile<VnniB>(T, o0, o1, a, w, m.scale, y, in, out); return;
        case Int8Impl::kAvx512: Tile<Avx512B>(T, o0, o1, a.x, w, m.scale, y, in, out); return;
        case Int8Impl::kAvx2: Tile<Avx2B>(T, o0, o1, a.x, w, m.scale, y, in, out); return;
        default: ScalarRows(a.x, w, m.scale, y, T, in, out, o0, o1); return;
      }
    }
    case WeightMatrix::Kind::kInt8Panels:
      if (impls.int8 == Int8Impl::kAvx512Vnni) Int8Panels(a, static_cast<const uint8_t*>(m.data), m.scale, y, in, out, o0, o1);
      else Int8PanelsThroughRows(m, impls, a, y, o0, o1);
      return;
    case WeightMatrix::Kind::kQ4: {
      const uint8_t* w = static_cast<const uint8_t*>(m.data);
      if (impls.int8 == Int8Impl::kAvx512Vnni) Q4Panels(a, w, m.block_scale, m.block_min, y, in, out, o0, o1);
      else ScalarRowsQ4(a.x, w, m.block_scale, m.block_min, y, T, in, out, o0, o1);
      return;
    }
    case WeightMatrix::Kind::kBf16: {
      const uint16_t* w = static_cast<const uint16_t*>(m.data);
      switch (impls.bf16) {
        case Int8Impl::kAvx512Bf16: TileRowsInOrder<Bf16DotB>(T, o0, o1, a.xb.data(), a.ldx, w, y, in, out); return;
        case Int8Impl::kAmxBf16: {
          if (T > 64) throw std::invalid_argument("bf16 matmul: the AMX kernel takes T <= 64");
          const int64_t split = std::clamp(AmxRowsEnd(in, out), o0, o1);
          if (split > o0) AmxBf16Rows(a.amx, T, w, y, in, out, o0, split);
          if (o1 > split) Tile<Bf16DotB>(T, split, o1, a.xb.data(), a.ldx, w, y, in, out);
          return;
        }
        case Int8Impl::kScalar: ScalarRowsBf16(a.x, w, y, T, in, out, o0, o1); return;
        case Int8Impl::kAvx2: Tile<Avx2Bf16B>(T, o0, o1, a.x, w, y, in, out); return;
        default: Tile<Avx512Bf16B>(T, o0, o1, a.x, w, y, in, out); return;
      }
    }
  }
}

}  // namespace kernels
}  // namespace cascade
