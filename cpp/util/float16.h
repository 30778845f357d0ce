// The one home of the 16-bit float conversions (IEEE binary16 "f16" and bfloat16 "bf16"), used
// by the loaders, the program builder, the host-side weight preparation and the kernels.
// Header-only and inline: the kernels call them in inner loops.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace cascade {

// A float's bits and back.
inline uint32_t F32Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float F32FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// bf16 -> f32 is exact: the bf16 bits are the top half of the f32's.
inline float BF16ToF32(uint16_t bits) { return F32FromBits(static_cast<uint32_t>(bits) << 16); }

// f32 -> bf16, round to nearest even; a NaN stays a (quiet) NaN with its sign.
inline uint16_t F32ToBF16(float value) {
  uint32_t bits = F32Bits(value);
  if (std::isnan(value)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

// f16 -> f32, exact (subnormals included).
inline float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  const uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    bits = mant == 0 ? sign : F32Bits(std::ldexp(static_cast<float>(mant), -24)) | sign;  // exact
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  return F32FromBits(bits);
}

// f32 -> f16, round to nearest even (overflow to infinity, NaN stays NaN).
inline uint16_t F32ToF16(float f) {
  uint32_t x = F32Bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  x &= 0x7FFFFFFFu;
  if (x >= 0x7F800000u) return sign | 0x7C00 | (x > 0x7F800000u ? 0x200 : 0);  // inf / nan
  if (x >= 0x477FF000u) return sign | 0x7C00;                                 // rounds to inf
  if (x < 0x38800000u) {                                                       // subnormal half
    const float r = std::nearbyint(F32FromBits(x) * 16777216.0f);  // exact scaling, round to nearest even
    return sign | static_cast<uint16_t>(r);
  }
  const uint32_t mant = x & 0x7FFFFF;
  const uint32_t exp = (x >> 23) - 127 + 15;
  uint32_t half = (exp << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) ++half;
  return sign | static_cast<uint16_t>(half);
}

}  // namespace cascade
