// A 16 x 16 float transpose in AVX-512 registers: the AMX kernel's C tiles (outputs in rows,
// tokens in columns; kernels/int8_matmul.cc AmxBf16Rows) and attention's blocks of 16 keys (slots
// in rows, dimensions in columns; kernels/decoder_layers.cc ScoresHeadsLanes). It only moves
// values, so it changes no result.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

namespace cascade {
namespace kernels {

// GCC 12's AVX-512 headers build the shuffles from _mm512_undefined_ps() and then warn that it
// "may be used uninitialized" wherever they are inlined; it is never read.
#pragma GCC diagnostic push
#if !defined(__clang__)  // clang has no -Wmaybe-uninitialized (and warns about the name)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"
// In place: afterwards r[j] lane i is what r[i] lane j was.
__attribute__((target("avx512f"), always_inline)) inline void Transpose16x16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
      t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
  }
}
#pragma GCC diagnostic pop

}  // namespace kernels
}  // namespace cascade
#endif
