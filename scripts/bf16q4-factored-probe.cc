// Would a cheaper tile build move the block-stored bf16 target (bf16q4) to the speed of its bytes?
// Issue #13; the figures are in docs/bench/decoder.md (session 32). A standalone probe (no project
// code), AMX hosts only:
//
//   g++ -O2 -std=c++17 -march=sapphirerapids -o /tmp/bf16q4-factored-probe scripts/bf16q4-factored-probe.cc -lpthread
//   /tmp/bf16q4-factored-probe [layers, default 30]
//
// It times SmolLM2-135M's 30 layers of q4 matrices (random blocks) at T = 1, 5 and 13 tokens, one
// and two threads, from the L3 ("warm") and after reading 1 GiB ("cold"), and one layer's q/k/v/o
// repeated from L2 ("hot"), for three kernels:
//   table:      the tiles as AmxQ4Bf16Rows builds them today (Q4Order::kRows, as
//               cpp/kernels/int8_matmul.h lays the blocks out): per row and 64-input chunk a
//               32-entry table of bf16(d q + m) (two FMAs, one vcvtne2ps2bf16), looked up with
//               vpermw; C accumulates over the whole row (bit-identical to the dense bf16 kernel).
//   factored:   w = d (128 + q) + (m - 128 d). bf16(128 + q) is the word 0x4300 | q (bf16 has an
//               ulp of 1 in [128, 256)), so a tile is the nibbles OR'd with a constant (no table),
//               and x . (128 + q) is exact per product in f32; each 32-input block's C is stored
//               and folded in as acc += d * C + (m - 128 d) * sum(x of the block). Weights as the
//               A tile (the same storage as today's), C = [16 rows][T tokens].
//   factored-B: the same arithmetic with the weights as the B tile (a storage order whose words
//               unpack straight into tdpbf16ps's pair layout) and C = [T tokens][16 rows], so a
//               block folds in with three operations a token.
// The weights are the file's exact values, not their bf16 rounding, so the factored kernels are
// NOT the dense bf16 target bit for bit; their rows of every T are bit-identical to T = 1 (checked).
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

namespace {

struct alignas(64) TileConfig {
  uint8_t palette_id = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
// C 0..3 [16 rows][T tokens], A 4 / 6 [16 rows][32 bf16], B 5 [16 pairs][T tokens].
void LoadConfig(int T) {
  TileConfig c;
  for (int i = 0; i < 8; ++i) {
    c.rows[i] = 16;
    c.colsb[i] = (i == 4 || i == 6) ? 64 : static_cast<uint16_t>(4 * T);
  }
  // Not _tile_loadconfig: GCC 12's names only the config's first 8 bytes as the asm's input, and
  // -O2 dropped the stores of rows and colsb here (SIGILL at the first tile load); the kernels'
  // LoadTileConfigBytes (cpp/kernels/int8_matmul.cc) does the same.
  asm volatile("ldtilecfg %0" : : "m"(c));
}
inline __m512 Broadcast(const float* p) {
  __m512 r;
  asm("vbroadcastss %1, %0" : "=v"(r) : "m"(*p));
  return r;
}
uint16_t ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFF + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}
float FromBf16(uint16_t b) {
  const uint32_t u = uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct Matrix {  // q4 panels of 16 rows: per 64-input chunk 16 rows x 32 bytes; f16 d, m [panel][block][16]
  int64_t out, in;
  std::vector<uint8_t> q;
  std::vector<uint16_t> d, m;
};
struct Activations {  // T <= 16 tokens, bf16
  int T;
  std::vector<uint16_t> x;       // [T][in]
  std::vector<uint16_t> packed;  // per block: [16 pairs][T tokens] pairs (the B tiles)
  std::vector<float> sums;       // per block: [16] (lane t: token t's sum of the block's 32 bf16)
};
Activations Prepare(const std::vector<uint16_t>& x, int T, int64_t in) {
  Activations a{T, x, {}, {}};
  const int64_t blocks = in / 32;
  a.packed.assign(blocks * 16 * 2 * T, 0);
  a.sums.assign(blocks * 16, 0.f);
  for (int64_t b = 0; b < blocks; ++b)
    for (int t = 0; t < T; ++t) {
      float s = 0;  // a fixed order, the same for every T
      for (int k = 0; k < 32; ++k) s += FromBf16(x[t * in + 32 * b + k]);
      a.sums[b * 16 + t] = s;
      for (int r = 0; r < 16; ++r)
        for (int e = 0; e < 2; ++e) a.packed[((b * 16 + r) * T + t) * 2 + e] = x[t * in + 32 * b + 2 * r + e];
    }
  return a;
}

// ---- table (today's AmxQ4Bf16Rows)
inline void TableChunk(const uint8_t* v, const uint16_t* ps, const uint16_t* pm, uint16_t (*a)[16][32]) {
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i upper = _mm512_set1_epi16(0x10);
  alignas(64) float sc[4][16];
  _mm512_store_ps(sc[0], _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ps))));
  _mm512_store_ps(sc[1], _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pm))));
  _mm512_store_ps(sc[2], _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ps + 16))));
  _mm512_store_ps(sc[3], _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pm + 16))));
  for (int k = 0; k < 8; ++k) _mm_prefetch(reinterpret_cast<const char*>(v + 4 * 512 + k * 64), _MM_HINT_T0);
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) {
    const __m512 flo = _mm512_fmadd_ps(iota, Broadcast(&sc[0][j]), Broadcast(&sc[1][j]));
    const __m512 fhi = _mm512_fmadd_ps(iota, Broadcast(&sc[2][j]), Broadcast(&sc[3][j]));
    const __m512i table = (__m512i)_mm512_cvtne2ps_pbh(flo, fhi);
    const __m512i idx = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 32 * j)));
    _mm512_store_si512(a[0][j], _mm512_permutexvar_epi16(_mm512_or_si512(idx, upper), table));
    _mm512_store_si512(a[1][j], _mm512_permutexvar_epi16(_mm512_srli_epi16(idx, 4), table));
  }
}
void TableRows(const Activations& x, const Matrix& w, float* y, int64_t p0, int64_t p1) {
  LoadConfig(x.T);
  const int64_t in = w.in, chunks = in / 64;
  alignas(64) uint16_t a[2][2][16][32];
  alignas(64) float c[16][16];
  for (int64_t p = p0; p < p1; ++p) {
    _tile_zero(0);
    const uint8_t* panel = w.q.data() + p * 16 * (in / 2);
    const uint16_t* ps = w.d.data() + p * 16 * (in / 32);
    const uint16_t* pm = w.m.data() + p * 16 * (in / 32);
    TableChunk(panel, ps, pm, a[0]);
    for (int64_t ch = 0; ch < chunks; ++ch) {
      if (ch + 1 < chunks) TableChunk(panel + (ch + 1) * 512, ps + (ch + 1) * 32, pm + (ch + 1) * 32, a[(ch + 1) & 1]);
      for (int h = 0; h < 2; ++h) {
        _tile_loadd(4, a[ch & 1][h], 64);
        _tile_loadd(5, x.packed.data() + (2 * ch + h) * 32 * x.T, 4 * x.T);
        _tile_dpbf16ps(0, 4, 5);
      }
    }
    _tile_stored(0, c, 64);
    for (int t = 0; t < x.T; ++t)
      for (int r = 0; r < 16; ++r) y[t * w.out + p * 16 + r] = c[r][t];
  }
  _tile_release();
}

// ---- factored
inline void FactoredChunk(const uint8_t* v, uint16_t (*a)[16][32]) {
  const __m512i low = _mm512_set1_epi16(0x000F), bias = _mm512_set1_epi16(0x4300);
  for (int k = 0; k < 8; ++k) _mm_prefetch(reinterpret_cast<const char*>(v + 4 * 512 + k * 64), _MM_HINT_T0);
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) {
    const __m512i idx = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 32 * j)));
    _mm512_store_si512(a[0][j], _mm512_ternarylogic_epi32(idx, low, bias, 0xEA));  // (idx & 15) | 0x4300
    _mm512_store_si512(a[1][j], _mm512_or_si512(_mm512_srli_epi16(idx, 4), bias));
  }
}
// Block b's C (in c[b & 3]) into the accumulators: per row and token acc = fma(d, C, acc) then
// acc = fma(m - 128 d, sum, acc), the same two roundings at every T.
inline void FoldBlock(const Activations& x, const uint16_t* ps, const uint16_t* pm, const float (*c)[256], int64_t b,
                      __m512* acc) {
  const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ps + b * 16)));
  const __m512 m = _mm512_fmadd_ps(_mm512_set1_ps(-128.f), d,
                                   _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pm + b * 16))));
  if (x.T == 1) {  // acc[0]: lanes are the 16 rows
    acc[0] = _mm512_fmadd_ps(d, _mm512_load_ps(c[b & 3]), acc[0]);
    acc[0] = _mm512_fmadd_ps(m, Broadcast(&x.sums[b * 16]), acc[0]);
    return;
  }
  alignas(64) float ds[16], ms[16];  // acc[r]: lanes are the tokens
  _mm512_store_ps(ds, d);
  _mm512_store_ps(ms, m);
  const __m512 sums = _mm512_loadu_ps(&x.sums[b * 16]);
  const __mmask16 lanes = static_cast<__mmask16>((1u << x.T) - 1);
#pragma GCC unroll 16
  for (int r = 0; r < 16; ++r) {
    acc[r] = _mm512_fmadd_ps(Broadcast(&ds[r]), _mm512_maskz_loadu_ps(lanes, c[b & 3] + r * x.T), acc[r]);
    acc[r] = _mm512_fmadd_ps(Broadcast(&ms[r]), sums, acc[r]);
  }
}
#define FACTORED_BLOCK(CT, AT, A, X, C)         \
  do {                                          \
    _tile_zero(CT);                             \
    _tile_loadd(AT, A, 64);                     \
    _tile_loadd(5, X, 4 * T);                   \
    _tile_dpbf16ps(CT, AT, 5);                  \
    _tile_stored(CT, C, 4 * T);                 \
  } while (0)
void FactoredRows(const Activations& x, const Matrix& w, float* y, int64_t p0, int64_t p1) {
  const int T = x.T;
  LoadConfig(T);
  const int64_t in = w.in, chunks = in / 64, blocks = in / 32;
  alignas(64) uint16_t a[2][2][16][32];
  alignas(64) float c[4][256] = {};
  for (int64_t p = p0; p < p1; ++p) {
    const uint8_t* panel = w.q.data() + p * 16 * (in / 2);
    const uint16_t* ps = w.d.data() + p * 16 * (in / 32);
    const uint16_t* pm = w.m.data() + p * 16 * (in / 32);
    __m512 acc[16];
    for (auto& v : acc) v = _mm512_setzero_ps();
    FactoredChunk(panel, a[0]);
    for (int64_t ch = 0; ch < chunks; ++ch) {
      if (ch + 1 < chunks) FactoredChunk(panel + (ch + 1) * 512, a[(ch + 1) & 1]);
      const int64_t b = 2 * ch;
      const uint16_t* xb = x.packed.data() + b * 32 * T;
      if (ch & 1) {
        FACTORED_BLOCK(2, 4, a[1][0][0], xb, c[2]);
        FACTORED_BLOCK(3, 6, a[1][1][0], xb + 32 * T, c[3]);
      } else {
        FACTORED_BLOCK(0, 4, a[0][0][0], xb, c[0]);
        FACTORED_BLOCK(1, 6, a[0][1][0], xb + 32 * T, c[1]);
      }
      if (b >= 2) {  // two blocks behind: no wait on the tile stores
        FoldBlock(x, ps, pm, c, b - 2, acc);
        FoldBlock(x, ps, pm, c, b - 1, acc);
      }
    }
    FoldBlock(x, ps, pm, c, blocks - 2, acc);
    FoldBlock(x, ps, pm, c, blocks - 1, acc);
    if (T == 1) {
      _mm512_storeu_ps(y + p * 16, acc[0]);
    } else {
      alignas(64) float t16[16][16];
      for (int r = 0; r < 16; ++r) _mm512_store_ps(t16[r], acc[r]);
      for (int t = 0; t < T; ++t)
        for (int r = 0; r < 16; ++r) y[t * w.out + p * 16 + r] = t16[r][t];
    }
  }
  _tile_release();
}

// ---- factored, weights as the B tile (C = [tokens][16 rows]: a block folds in with 3 ops a token)
// Storage per panel and 32-input block: 256 bytes, 4 loads of 64; word i (0..31) of load L holds
// 4 nibbles j (bits 4j..4j+3) = q[row i / 2][input 8 L + 2 j + i % 2] of the block, so that
// nibble j of every word, OR'd with 0x4300, is B row 4 L + j: the pair (2k, 2k + 1) of each of
// the 16 rows (tdpbf16ps's VNNI layout). (A storage order the file's blocks would be permuted
// into at load, as Q4Order::kRows is today.)
int QB(const Matrix& w, int64_t o, int64_t k) {
  const int64_t kk = k % 32, L = kk / 8, j = (kk % 8) / 2, i = 2 * (o % 16) + kk % 2;
  const uint8_t* p = w.q.data() + (o / 16) * 16 * (w.in / 2) + (k / 32) * 256 + L * 64 + 2 * i;
  return ((p[0] | (p[1] << 8)) >> (4 * j)) & 15;
}
inline void FactoredBTile(const uint8_t* v, uint16_t (*bt)[32]) {
  const __m512i low = _mm512_set1_epi16(0x000F), bias = _mm512_set1_epi16(0x4300);
  for (int k = 0; k < 4; ++k) _mm_prefetch(reinterpret_cast<const char*>(v + 8 * 256 + k * 64), _MM_HINT_T0);
#pragma GCC unroll 4
  for (int L = 0; L < 4; ++L) {
    const __m512i q = _mm512_loadu_si512(v + 64 * L);
    _mm512_store_si512(bt[4 * L + 0], _mm512_ternarylogic_epi32(q, low, bias, 0xEA));
    _mm512_store_si512(bt[4 * L + 1], _mm512_ternarylogic_epi32(_mm512_srli_epi16(q, 4), low, bias, 0xEA));
    _mm512_store_si512(bt[4 * L + 2], _mm512_ternarylogic_epi32(_mm512_srli_epi16(q, 8), low, bias, 0xEA));
    _mm512_store_si512(bt[4 * L + 3], _mm512_or_si512(_mm512_srli_epi16(q, 12), bias));
  }
}
// C 0..3 [T tokens][16 rows], A 4 [T tokens][32 bf16] (x itself), B 5 / 7 [16 pairs][16 rows].
void LoadConfigB(int T) {
  TileConfig c;
  for (int i = 0; i < 8; ++i) {
    c.rows[i] = static_cast<uint8_t>(i == 5 || i == 7 ? 16 : T);
    c.colsb[i] = 64;
  }
  asm volatile("ldtilecfg %0" : : "m"(c));
}
inline void FoldBlockB(const Activations& x, const uint16_t* ps, const uint16_t* pm, const float (*c)[256], int64_t b,
                       __m512* acc) {
  const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ps + b * 16)));
  const __m512 m = _mm512_fmadd_ps(_mm512_set1_ps(-128.f), d,
                                   _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pm + b * 16))));
  for (int t = 0; t < x.T; ++t) {
    acc[t] = _mm512_fmadd_ps(d, _mm512_load_ps(c[b & 3] + 16 * t), acc[t]);
    acc[t] = _mm512_fmadd_ps(m, Broadcast(&x.sums[b * 16 + t]), acc[t]);
  }
}
#define FACTORED_B_BLOCK(CT, BT, B, X, C) \
  do {                                    \
    _tile_zero(CT);                       \
    _tile_loadd(BT, B, 64);               \
    _tile_loadd(4, X, 2 * in);            \
    _tile_dpbf16ps(CT, 4, BT);            \
    _tile_stored(CT, C, 64);              \
  } while (0)
void FactoredBRows(const Activations& x, const Matrix& w, float* y, int64_t p0, int64_t p1) {
  // Tiles built two blocks ahead of their loads (a tile load takes no store forwarding; one block
  // ahead measured 3.34 against 2.38 ns a row-chunk at T = 1, three 2.50).
  constexpr int64_t kAhead = 2;
  const int T = x.T;
  LoadConfigB(T);
  const int64_t in = w.in, blocks = in / 32;
  alignas(64) uint16_t bt[4][16][32];
  alignas(64) float c[4][256] = {};
  for (int64_t p = p0; p < p1; ++p) {
    const uint8_t* panel = w.q.data() + p * 16 * (in / 2);
    const uint16_t* ps = w.d.data() + p * 16 * (in / 32);
    const uint16_t* pm = w.m.data() + p * 16 * (in / 32);
    __m512 acc[16];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < kAhead && b < blocks; ++b) FactoredBTile(panel + b * 256, bt[b & 3]);
    for (int64_t b = 0; b < blocks; ++b) {
      if (b + kAhead < blocks) FactoredBTile(panel + (b + kAhead) * 256, bt[(b + kAhead) & 3]);
      const uint16_t* xb = x.x.data() + 32 * b;
      switch (b & 3) {
        case 0: FACTORED_B_BLOCK(0, 5, bt[0][0], xb, c[0]); break;
        case 1: FACTORED_B_BLOCK(1, 7, bt[1][0], xb, c[1]); break;
        case 2: FACTORED_B_BLOCK(2, 5, bt[2][0], xb, c[2]); break;
        default: FACTORED_B_BLOCK(3, 7, bt[3][0], xb, c[3]); break;
      }
      if (b >= 2) FoldBlockB(x, ps, pm, c, b - 2, acc);
    }
    FoldBlockB(x, ps, pm, c, blocks - 2, acc);
    FoldBlockB(x, ps, pm, c, blocks - 1, acc);
    for (int t = 0; t < T; ++t) _mm512_storeu_ps(y + t * w.out + p * 16, acc[t]);
  }
  _tile_release();
}

float F16(uint16_t h) { return _cvtsh_ss(h); }
int Q(const Matrix& w, int64_t o, int64_t k) {
  const uint8_t byte = w.q[(o / 16) * 16 * (w.in / 2) + (k / 64) * 512 + (o % 16) * 32 + (k % 32)];
  return k % 64 < 32 ? (byte & 15) : (byte >> 4);
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IONBF, 0);
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) {
    std::puts("no AMX permission: this probe needs an AMX CPU (Sapphire Rapids or later) and Linux >= 5.16");
    return 1;
  }
  const int layers = argc > 1 ? std::atoi(argv[1]) : 30;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0, 1);
  const int64_t shapes[7][2] = {{576, 576}, {192, 576}, {192, 576}, {576, 576}, {1536, 576}, {1536, 576}, {576, 1536}};
  std::vector<Matrix> mats;
  double bytes = 0;
  for (int l = 0; l < layers; ++l)
    for (const auto& s : shapes) {
      Matrix m{s[0], s[1], {}, {}, {}};
      m.q.resize(m.out * m.in / 2);
      m.d.resize(m.out * m.in / 32);
      m.m.resize(m.out * m.in / 32);
      for (auto& b : m.q) b = static_cast<uint8_t>(rng());
      for (size_t i = 0; i < m.d.size(); ++i) {  // scales as a Q4_1 file's: m near -8 d
        const float d = 0.01f * (0.5f + static_cast<float>(rng() % 1000) / 1000.f);
        m.d[i] = _cvtss_sh(d, 0);
        m.m[i] = _cvtss_sh(-8 * d + 0.001f * normal(rng), 0);
      }
      bytes += static_cast<double>(m.q.size() + 4 * m.d.size());
      mats.push_back(std::move(m));
    }
  std::printf("%d layers of q4 matrices, %.1f MB\n", layers, bytes / 1e6);
  std::vector<uint16_t> x(16 * 1536);
  for (auto& v : x) v = ToBf16(normal(rng));
  auto input = [&](int T, int64_t in) {
    std::vector<uint16_t> xt(T * in);
    for (int t = 0; t < T; ++t) std::copy(x.begin() + t * 1536, x.begin() + t * 1536 + in, xt.begin() + t * in);
    return Prepare(xt, T, in);
  };
  // Checks: each factored kernel against the exact dot (f64) of its layout's weights, and every
  // T's rows against T = 1's bits.
  using Kernel = void (*)(const Activations&, const Matrix&, float*, int64_t, int64_t);
  auto check = [&](const char* name, Kernel kernel, int (*q)(const Matrix&, int64_t, int64_t)) {
    double worst = 0;
    long mismatches = 0;
    for (int mi = 0; mi < 7; ++mi) {
      const Matrix& w = mats[mi];
      std::vector<float> y1(w.out), y13(13 * w.out);
      kernel(input(1, w.in), w, y1.data(), 0, w.out / 16);
      kernel(input(13, w.in), w, y13.data(), 0, w.out / 16);
      for (int t = 0; t < 13; ++t) {
        std::vector<float> yt(w.out);
        std::vector<uint16_t> xt(x.begin() + t * 1536, x.begin() + t * 1536 + w.in);
        kernel(Prepare(xt, 1, w.in), w, yt.data(), 0, w.out / 16);
        mismatches += std::memcmp(yt.data(), y13.data() + t * w.out, 4 * w.out) != 0;
      }
      for (int64_t o = 0; o < w.out; ++o) {
        double exact = 0, size = 0;
        for (int64_t k = 0; k < w.in; ++k) {
          const int64_t blk = (o / 16) * 16 * (w.in / 32) + (k / 32) * 16 + o % 16;
          const double v = (F16(w.d[blk]) * q(w, o, k) + F16(w.m[blk])) * FromBf16(x[k]);
          exact += v;
          size += std::fabs(v);
        }
        worst = std::max(worst, std::fabs(y1[o] - exact) / size);
      }
    }
    std::printf("%s against the exact dot: largest |error| / sum |terms| %.1e; T = 13 rows differing from T = 1: %ld\n",
                name, worst, mismatches);
  };
  check("factored", FactoredRows, Q);
  check("factored-B", FactoredBRows, QB);
  std::vector<std::vector<float>> ys(mats.size());
  for (size_t i = 0; i < mats.size(); ++i) ys[i].resize(16 * mats[i].out);
  std::vector<char> flush(size_t{1} << 30, 1);
  auto pass = [&](int kernel, const std::vector<Activations>& acts, int threads, bool cold, bool hot) {
    if (cold) {
      volatile long s = 0;
      for (size_t i = 0; i < flush.size(); i += 64) s += flush[i];
      flush[static_cast<size_t>(rand()) % flush.size()]++;
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto work = [&](int t) {
      const size_t reps = hot ? 100 : 1, count = hot ? 4 : mats.size();
      for (size_t rep = 0; rep < reps; ++rep)
        for (size_t i = 0; i < count; ++i) {
          const Matrix& w = mats[i];
          const int64_t panels = w.out / 16, a = panels * t / threads, b = panels * (t + 1) / threads;
          const Activations& xa = acts[w.in == 576 ? 0 : 1];
          if (kernel == 1) FactoredRows(xa, w, ys[i].data(), a, b);
          else if (kernel == 2) FactoredBRows(xa, w, ys[i].data(), a, b);
          else TableRows(xa, w, ys[i].data(), a, b);
        }
    };
    if (threads == 1) {
      work(0);
    } else {
      std::thread helper(work, 1);
      work(0);
      helper.join();
    }
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  const double chunks_all = bytes / 40.0,  // 64 weights: 32 bytes of nibbles and 8 of scales
               chunks_hot = (576.0 * 576 * 2 + 192.0 * 576 * 2) / 64 * 100;
  for (int T : {1, 5, 13}) {
    const std::vector<Activations> acts = {input(T, 576), input(T, 1536)};
    for (int mode = 0; mode < 5; ++mode) {
      const bool hot = mode == 0, cold = mode >= 3;
      const int threads = mode == 0 || mode == 1 || mode == 3 ? 1 : 2;
      std::vector<double> tt, tf, tb;
      for (int r = 0; r < 9; ++r) {
        tt.push_back(pass(0, acts, threads, cold, hot));
        tf.push_back(pass(1, acts, threads, cold, hot));
        tb.push_back(pass(2, acts, threads, cold, hot));
      }
      std::sort(tt.begin(), tt.end());
      std::sort(tf.begin(), tf.end());
      std::sort(tb.begin(), tb.end());
      const char* what = hot ? "hot (L2), 1 thread" : cold ? (threads == 1 ? "cold, 1 thread" : "cold, 2 threads")
                                                        : (threads == 1 ? "warm, 1 thread" : "warm, 2 threads");
      const double per = 1e6 / (hot ? chunks_hot : chunks_all) * threads;
      std::printf("T = %2d  %-19s table %6.2f ms  factored %6.2f ms  factored-B %6.2f ms  (%.2f / %.2f / %.2f ns a row-chunk of 64 weights per thread)\n",
                  T, what, tt[4], tf[4], tb[4], tt[4] * per, tf[4] * per, tb[4] * per);
    }
  }
}
