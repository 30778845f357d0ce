// Our int8 matmul kernels (cpp/kernels): against a double reference, rows bit-identical whatever
// T / threads / gather, and as XLA FFI custom calls in the real CPU plugin (registration, the
// handler's shape errors, and a decoder with int8 weights against the XLA-only int8 path).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <thread>

#include "hlo/builder.h"
#include "kernels/argmax.h"
#include "kernels/decoder_layers.h"
#include "kernels/exp_weights.h"
#include "kernels/head_argmax.h"
#include "kernels/ffi_handlers.h"
#include "kernels/thread_team.h"
#include "model/matmul_mode.h"
#include "kernels/int8_matmul.h"
#include "kernels/tiny_candidates.h"
#include "model/decoder.h"
#include "pjrt/api.h"
#include "pjrt/client.h"
#include "pjrt/errors.h"
#include "pjrt/ffi.h"
#include "pjrt/plugin_locator.h"
#include "random_model.h"

namespace cascade {
namespace {

using kernels::Int8Impl;
using kernels::Int8MatmulShape;

std::vector<Int8Impl> SupportedImpls() {
  std::vector<Int8Impl> out;
  for (Int8Impl i : {Int8Impl::kScalar, Int8Impl::kAvx2, Int8Impl::kAvx512, Int8Impl::kAvx512Vnni, Int8Impl::kAvx512Bf16,
                     Int8Impl::kAmxBf16})
    if (kernels::Int8ImplSupported(i)) out.push_back(i);
  return out;
}

struct Problem {
  int64_t T, in, out;
  std::vector<float> x, scale;
  std::vector<int8_t> w;
};

Problem MakeProblem(int64_t T, int64_t in, int64_t out, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, 1);
  Problem p{T, in, out, {}, {}, {}};
  p.x.resize(static_cast<size_t>(T * in));
  for (auto& v : p.x) v = normal(rng);
  if (in > 3) p.x[3] = 25.0f;  // an outlier channel, as real activations have
  p.w.resize(static_cast<size_t>(out * in));
  for (auto& v : p.w) v = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
  p.scale.resize(static_cast<size_t>(out));
  for (auto& v : p.scale) v = 0.001f + 0.01f * std::fabs(normal(rng));
  return p;
}

std::vector<float> RunKernel(Int8Impl impl, const Problem& p, int helpers = 0) {
  std::vector<float> y(static_cast<size_t>(p.T * p.out), -1.0f);
  kernels::Spawner spawn = [](std::function<void()> f) { std::thread(std::move(f)).detach(); };
  kernels::Int8Matmul(impl, p.x.data(), p.w.data(), p.scale.data(), y.data(), {p.T, p.in, p.out}, helpers,
                      helpers ? spawn : kernels::Spawner());
  return y;
}

TEST(kernels_int8, MatchesReference) {
  for (Int8Impl impl : SupportedImpls()) {
    for (auto [T, in, out] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 1, 1}, {1, 17, 5}, {3, 64, 9}, {8, 100, 130}, {5, 576, 67}, {64, 33, 16}, {2, 1536, 40}}) {
      Problem p = MakeProblem(T, in, out, static_cast<uint32_t>(T * 1000 + in + out));
      std::vector<float> y = RunKernel(impl, p);
      double worst_ratio = 0;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t o = 0; o < out; ++o) {
          double ref = 0, mag = 0, qerr = 0;
          for (int64_t i = 0; i < in; ++i) {
            const double xv = p.x[t * in + i], wv = p.w[o * in + i];
            ref += xv * wv;
            mag += std::fabs(xv * wv);
            if (impl == Int8Impl::kAvx512Vnni ||
                ((impl == Int8Impl::kAvx512Bf16 || impl == Int8Impl::kAmxBf16) &&
                 kernels::BestInt8Impl() == Int8Impl::kAvx512Vnni)) {
              // Activations rounded per 32-block: |dx| <= amax(block) / 127 / 2.
              const int64_t b0 = i / 32 * 32, b1 = std::min(in, b0 + 32);
              double amax = 0;
              for (int64_t j = b0; j < b1; ++j) amax = std::max(amax, static_cast<double>(std::fabs(p.x[t * in + j])));
              qerr += std::fabs(wv) * amax / 127.0 / 2.0;
            }
          }
          ref *= p.scale[o];
          const double bound = (qerr + mag * 1e-6 * (1 + in / 64.0)) * p.scale[o] * 1.001 + 1e-30;
          const double err = std::fabs(y[t * out + o] - ref);
          ASSERT_LE(err, bound) << kernels::Int8ImplName(impl) << " T=" << T << " in=" << in << " out=" << out
                                << " t=" << t << " o=" << o;
          worst_ratio = std::max(worst_ratio, err / bound);
        }
    }
  }
}

// The cascade's exactness contract: row r's bits do not depend on which other rows share the call
// (verify(k) vs decode(1)), on the thread split, or on the candidates gather.
TEST(kernels_int8, RowsBitIdenticalWhateverTAndThreads) {
  const int64_t T = 64;
  for (Int8Impl impl : SupportedImpls()) {
    for (auto [in, out] : std::vector<std::pair<int64_t, int64_t>>{{576, 192}, {100, 37}, {1536, 64}}) {
      Problem full = MakeProblem(T, in, out, 7);
      const std::vector<float> all = RunKernel(impl, full);
      const std::vector<float> threaded = RunKernel(impl, full, 1);
      ASSERT_EQ(0, std::memcmp(all.data(), threaded.data(), all.size() * 4)) << kernels::Int8ImplName(impl);
      int64_t compared = 0;
      for (int64_t k : {1, 2, 3, 4, 5, 8, 16}) {
        for (int64_t r0 = 0; r0 + k <= T; r0 += k + 3) {
          Problem part{k, in, out, {full.x.begin() + r0 * in, full.x.begin() + (r0 + k) * in}, full.scale, full.w};
          const std::vector<float> y = RunKernel(impl, part, k % 2);
          for (int64_t t = 0; t < k; ++t, ++compared)
            ASSERT_EQ(0, std::memcmp(y.data() + t * out, all.data() + (r0 + t) * out, out * 4))
                << kernels::Int8ImplName(impl) << ": row " << r0 + t << " differs between T=" << T << " and T=" << k;
        }
      }
      // Candidates: k ids per row, some repeated, some out of range (clamped).
      const int64_t K = 5;
      std::vector<int32_t> ids(static_cast<size_t>(T * K));
      for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7919) % out);
      ids[1] = -3;
      ids[2] = static_cast<int32_t>(out + 10);
      std::vector<float> g(ids.size());
      kernels::Int8GatherMatmul(impl, full.x.data(), full.w.data(), full.scale.data(), ids.data(), g.data(),
                                {T, in, out}, K);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < K; ++j) {
          const int64_t o = std::clamp<int64_t>(ids[t * K + j], 0, out - 1);
          ASSERT_EQ(0, std::memcmp(&g[t * K + j], &all[t * out + o], 4)) << kernels::Int8ImplName(impl);
        }
      std::printf("[ measured ] %s in=%lld out=%lld: %lld rows bit-identical across T in {1..16} vs T=64, threads, gather\n",
                  kernels::Int8ImplName(impl), (long long)in, (long long)out, (long long)compared);
    }
  }
}

// f32 weights in panels of 64 outputs (the layer arenas' f32 layout): the same bits as the upload
// layout [in, out], row by row whatever T and range, with the AVX-512 and the portable kernels,
// a narrower last panel included.
TEST(kernels_f32, PanelsGiveTheTransposedLayoutsBits) {
  for (auto [in, out] : std::vector<std::pair<int64_t, int64_t>>{{96, 200}, {576, 192}, {64, 40}}) {
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0, 1);
    const int64_t T = 9;
    std::vector<float> wt(static_cast<size_t>(in * out)), x(static_cast<size_t>(T * in)), panels(wt.size());
    for (auto& v : wt) v = 0.05f * normal(rng);
    for (auto& v : x) v = normal(rng);
    kernels::PackF32Panels(wt.data(), in, out, panels.data());
    for (Int8Impl impl : {Int8Impl::kScalar, Int8Impl::kAvx512}) {
      if (!kernels::Int8ImplSupported(impl)) continue;
      kernels::KernelImpls impls;
      impls.f32 = impl;
      const kernels::WeightMatrix dense{kernels::WeightMatrix::Kind::kF32Transposed, wt.data(), nullptr, in, out};
      const kernels::WeightMatrix packed{kernels::WeightMatrix::Kind::kF32Panels, panels.data(), nullptr, in, out};
      for (int64_t k : {1, 2, 5, 7, 9}) {
        for (auto [o0, o1] : std::vector<std::pair<int64_t, int64_t>>{{0, out}, {0, std::min<int64_t>(64, out)}, {3, out - 5}, {out - 8, out}}) {
          if (o0 >= o1) continue;
          std::vector<float> a(static_cast<size_t>(k * out), -1.0f), b(a.size(), -2.0f);
          kernels::PreparedActivations pa, pb;
          kernels::PrepareActivations(dense.kind, impls, x.data(), k, in, &pa);
          kernels::PrepareActivations(packed.kind, impls, x.data(), k, in, &pb);
          kernels::MatmulRange(dense, impls, pa, a.data(), o0, o1);
          kernels::MatmulRange(packed, impls, pb, b.data(), o0, o1);
          for (int64_t t = 0; t < k; ++t)
            ASSERT_EQ(0, std::memcmp(a.data() + t * out + o0, b.data() + t * out + o0, (o1 - o0) * 4))
                << kernels::Int8ImplName(impl) << " in=" << in << " out=" << out << " T=" << k << " row " << t
                << " outputs " << o0 << ".." << o1;
        }
      }
      // Row r of a T-row call is the row alone (verify(T) = decode(1)), through the team too.
      std::vector<float> all(static_cast<size_t>(T * out)), one(static_cast<size_t>(out));
      kernels::TeamMatmul(packed, impls, x.data(), T, all.data(), kernels::ThreadTeam::Global());
      for (int64_t t = 0; t < T; ++t) {
        kernels::TeamMatmul(packed, impls, x.data() + t * in, 1, one.data(), kernels::ThreadTeam::Global());
        ASSERT_EQ(0, std::memcmp(one.data(), all.data() + t * out, out * 4)) << kernels::Int8ImplName(impl) << " row " << t;
      }
    }
  }
}

// 4-bit weights (the q4 draft precision): quantising a Q4_1 matrix's own dequantised values gives
// back its blocks; every impl against a double reference on the dequantised weights (the VNNI impl
// quantises activations per 32-block, as for int8); rows bit-identical whatever T and threads.
// y[T, out] of a block-quantised matrix (weights w [out, in] as the kernels multiply by them)
// within f32 rounding (1e-5 per `span` inputs summed in order) plus, for VNNI, the activations'
// rounding to s8 per 32-block, of the exact product.
void ExpectNearTheExactProduct(Int8Impl impl, const std::vector<float>& x, const std::vector<float>& w,
                               const std::vector<float>& y, int64_t T, int64_t in, int64_t out, int64_t span) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double ref = 0, mag = 0, qerr = 0;
      for (int64_t i = 0; i < in; ++i) {
        const double xv = x[t * in + i], wv = w[o * in + i];
        ref += xv * wv;
        mag += std::fabs(xv * wv);
        if (impl == Int8Impl::kAvx512Vnni) {
          const int64_t b0 = i / 32 * 32;
          double amax = 0;
          for (int64_t j = b0; j < b0 + 32; ++j) amax = std::max(amax, static_cast<double>(std::fabs(x[t * in + j])));
          qerr += std::fabs(wv) * amax / 127.0 / 2.0;
        }
      }
      const double bound = (qerr + mag * 1e-5 * (1 + in / static_cast<double>(span))) * 1.001 + 1e-6;
      ASSERT_LE(std::fabs(y[t * out + o] - ref), bound)
          << kernels::Int8ImplName(impl) << " in=" << in << " t=" << t << " o=" << o;
    }
}

// Rows of fewer tokens (1, 3, 5 from several offsets, one or two threads) give the very bits of
// the T-token call `all`.
void ExpectRowsIndependentOfT(const kernels::WeightMatrix& m, const kernels::KernelImpls& k, const std::vector<float>& x,
                              const std::vector<float>& all, int64_t T, kernels::ThreadTeam& one,
                              kernels::ThreadTeam& two, Int8Impl impl) {
  const int64_t in = m.in, out = m.out;
  for (int64_t k1 : {1, 3, 5})
    for (int64_t r0 = 0; r0 + k1 <= T; r0 += k1 + 2) {
      std::vector<float> y(static_cast<size_t>(k1 * out));
      kernels::TeamMatmul(m, k, x.data() + r0 * in, k1, y.data(), k1 % 2 ? two : one);
      ASSERT_EQ(0, std::memcmp(y.data(), all.data() + r0 * out, y.size() * 4))
          << kernels::Int8ImplName(impl) << ": rows " << r0 << ".. differ between T=" << T << " and T=" << k1;
    }
}

TEST(kernels_q4, BlocksRoundTripMatchReferenceAndRowsBitIdentical) {
  using kernels::WeightMatrix;
  EXPECT_NE("", kernels::ValidateQ4Matrix(96, 4));  // not a multiple of 64
  EXPECT_NE("", kernels::ValidateQ4Matrix(64, 0));
  EXPECT_EQ("", kernels::ValidateQ4Matrix(576, 3));
  std::vector<Int8Impl> impls = {Int8Impl::kScalar};
  if (kernels::Int8ImplSupported(Int8Impl::kAvx512Vnni)) impls.push_back(Int8Impl::kAvx512Vnni);
  kernels::ThreadTeam one(0), two(1);
  for (auto [in, out] : std::vector<std::pair<int64_t, int64_t>>{{64, 5}, {576, 67}, {1536, 40}}) {
    Problem p = MakeProblem(1, in, out, static_cast<uint32_t>(in + out));
    std::vector<float> wf(static_cast<size_t>(in * out));
    for (size_t i = 0; i < wf.size(); ++i) wf[i] = static_cast<float>(p.w[i]) * 0.01f + (i % 97 == 0 ? 0.5f : 0.0f);
    const int64_t blocks = in / kernels::kQ4Block;
    std::vector<uint8_t> packed(static_cast<size_t>(out * in / 2));
    std::vector<uint16_t> scale(static_cast<size_t>(out * blocks)), mins(scale.size());
    kernels::QuantizeQ4Rows(wf.data(), in, out, packed.data(), scale.data(), mins.data());
    std::vector<float> deq(wf.size());
    for (int64_t o = 0; o < out; ++o) kernels::DequantizeQ4Row(packed.data(), scale.data(), mins.data(), in, out, o, deq.data() + o * in);
    for (size_t i = 0; i < wf.size(); ++i) {
      // Within half a step of its block (step = range / 15, the f16 rounding of d and m aside).
      const size_t b0 = i / kernels::kQ4Block * kernels::kQ4Block;
      const auto [lo, hi] = std::minmax_element(wf.begin() + b0, wf.begin() + b0 + kernels::kQ4Block);
      const float step = (*hi - *lo) / 15.0f;
      ASSERT_LE(std::fabs(deq[i] - wf[i]), step * 0.5f * 1.01f + 2e-3f * std::fabs(wf[i]) + 1e-6f) << i;
    }
    {
      std::vector<uint8_t> packed2(packed.size());
      std::vector<uint16_t> scale2(scale.size()), mins2(mins.size());
      kernels::QuantizeQ4Rows(deq.data(), in, out, packed2.data(), scale2.data(), mins2.data());
      EXPECT_EQ(packed, packed2) << "in=" << in;
      EXPECT_EQ(mins, mins2) << "in=" << in;
    }
    const WeightMatrix m{WeightMatrix::Kind::kQ4, packed.data(), nullptr, in, out, scale.data(), mins.data()};
    if (in == 64) {  // a weight f16 cannot hold: the decoder's weight preparation refuses the model
      ModelConfig c = testing::SmallLlama(true);
      ModelWeights w = testing::SmallRandomModel(c, 3);
      w.tensors.at("model.layers.0.mlp.up_proj.weight").as<float>()[5] = 1e6f;
      try {
        PrepareWeightParams(w, WeightPrecision::kQ4);
        ADD_FAILURE() << "no error for a weight of 1e6 at q4";
      } catch (const InvalidArgumentError& e) {
        EXPECT_NE(std::string(e.what()).find("up_proj"), std::string::npos) << e.what();
      }
    }
    const int64_t T = 16;
    Problem xs = MakeProblem(T, in, 1, 11);
    for (Int8Impl impl : impls) {
      kernels::KernelImpls k;
      k.int8 = impl;
      std::vector<float> all(static_cast<size_t>(T * out)), threaded(all.size());
      kernels::TeamMatmul(m, k, xs.x.data(), T, all.data(), one);
      kernels::TeamMatmul(m, k, xs.x.data(), T, threaded.data(), two);
      ASSERT_EQ(0, std::memcmp(all.data(), threaded.data(), all.size() * 4)) << kernels::Int8ImplName(impl);
      ExpectNearTheExactProduct(impl, xs.x, deq, all, T, in, out, 64);
      ExpectRowsIndependentOfT(m, k, xs.x, all, T, one, two, impl);
    }
  }
}

// kInt8Panels (the int8 layer matrices of a fused model's arena): the panels hold the rows exactly;
// with VNNI the panel kernel's rows are within the activations' rounding of the exact product and
// bit-identical whatever T or threads; without it they are kInt8's own kernel's bits.
TEST(kernels_int8_panels, RoundTripMatchReferenceAndRowsBitIdentical) {
  using kernels::WeightMatrix;
  EXPECT_NE("", kernels::ValidateInt8Panels(40, 4));  // not a multiple of 32
  EXPECT_NE("", kernels::ValidateInt8Panels(64, 0));
  EXPECT_EQ("", kernels::ValidateInt8Panels(96, 3));
  std::vector<Int8Impl> impls;
  for (Int8Impl i : {Int8Impl::kScalar, Int8Impl::kAvx2, Int8Impl::kAvx512, Int8Impl::kAvx512Vnni})
    if (kernels::Int8ImplSupported(i)) impls.push_back(i);
  kernels::ThreadTeam one(0), two(1);
  for (auto [in, out] : std::vector<std::pair<int64_t, int64_t>>{{96, 5}, {576, 67}, {1536, 40}}) {
    Problem p = MakeProblem(1, in, out, static_cast<uint32_t>(in * 3 + out));
    std::vector<uint8_t> panels(static_cast<size_t>(out * in));
    kernels::PackInt8Panels(p.w.data(), in, out, panels.data());
    std::vector<int8_t> back(p.w.size());
    kernels::UnpackInt8PanelRows(panels.data(), in, out, 0, out, back.data());
    ASSERT_EQ(p.w, back) << "in=" << in;
    const WeightMatrix packed{WeightMatrix::Kind::kInt8Panels, panels.data(), p.scale.data(), in, out};
    const WeightMatrix rows{WeightMatrix::Kind::kInt8, p.w.data(), p.scale.data(), in, out};
    const int64_t T = 16;
    Problem xs = MakeProblem(T, in, 1, 12);
    for (Int8Impl impl : impls) {
      kernels::KernelImpls k;
      k.int8 = impl;
      std::vector<float> all(static_cast<size_t>(T * out)), threaded(all.size()), by_rows(all.size());
      kernels::TeamMatmul(packed, k, xs.x.data(), T, all.data(), one);
      kernels::TeamMatmul(packed, k, xs.x.data(), T, threaded.data(), two);
      ASSERT_EQ(0, std::memcmp(all.data(), threaded.data(), all.size() * 4)) << kernels::Int8ImplName(impl);
      kernels::TeamMatmul(rows, k, xs.x.data(), T, by_rows.data(), one);
      if (impl != Int8Impl::kAvx512Vnni)
        ASSERT_EQ(0, std::memcmp(all.data(), by_rows.data(), all.size() * 4)) << kernels::Int8ImplName(impl);
      std::vector<float> wv(p.w.size());
      for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < in; ++i) wv[o * in + i] = static_cast<float>(p.w[o * in + i] * static_cast<double>(p.scale[o]));
      ExpectNearTheExactProduct(impl, xs.x, wv, all, T, in, out, 32);
      ExpectRowsIndependentOfT(packed, k, xs.x, all, T, one, two, impl);
    }
  }
}

// bf16 weights: exact upcast, so only f32 summation order differs from a double reference; rows
// bit-identical across T, threads and the gather, as for int8.
TEST(kernels_bf16, MatchesReferenceAndRowsBitIdentical) {
  for (Int8Impl impl : SupportedImpls()) {
    // AMX (in % 32 == 0, whole 16-row blocks of W): 13 tokens in one tile, 17 (a last tile of one
    // token) and 64 (four full tiles) each write their rows from a transposed C tile.
    for (auto [T, in, out] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 1, 1}, {3, 17, 9}, {13, 576, 48}, {17, 64, 35}, {64, 576, 70}}) {
      Problem p = MakeProblem(T, in, out, 11);
      std::vector<uint16_t> w(static_cast<size_t>(out * in));
      for (size_t i = 0; i < w.size(); ++i) w[i] = F32ToBF16(p.x[i % p.x.size()] * 0.1f + 0.01f * p.w[i]);
      std::vector<float> y(static_cast<size_t>(T * out)), y2(y.size());
      kernels::Bf16Matmul(impl, p.x.data(), w.data(), y.data(), {T, in, out});
      kernels::Spawner spawn = [](std::function<void()> f) { std::thread(std::move(f)).detach(); };
      kernels::Bf16Matmul(impl, p.x.data(), w.data(), y2.data(), {T, in, out}, 1, spawn);
      ASSERT_EQ(0, std::memcmp(y.data(), y2.data(), y.size() * 4));
      for (int64_t t = 0; t < T; ++t) {
        std::vector<float> row(static_cast<size_t>(out));
        kernels::Bf16Matmul(impl, p.x.data() + t * in, w.data(), row.data(), {1, in, out});
        ASSERT_EQ(0, std::memcmp(row.data(), y.data() + t * out, out * 4)) << kernels::Int8ImplName(impl) << " row " << t;
        for (int64_t o = 0; o < out; ++o) {
          double ref = 0, mag = 0;
          for (int64_t i = 0; i < in; ++i) {
            const double v = p.x[t * in + i] * static_cast<double>(BF16ToF32(w[o * in + i]));
            ref += v;
            mag += std::fabs(v);
          }
          // avx512bf16 rounds the activations to bf16: |dx| <= 2^-9 |x|.
          const double rel = impl == Int8Impl::kAvx512Bf16 || impl == Int8Impl::kAmxBf16 ? 1.0 / 512 : 0.0;
          ASSERT_NEAR(y[t * out + o], ref, mag * (rel + 1e-6 * (1 + in / 16.0)) + 1e-30) << kernels::Int8ImplName(impl);
        }
      }
      const int64_t K = std::min<int64_t>(2, out);
      std::vector<int32_t> ids(static_cast<size_t>(T * K));
      for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 31) % out);
      std::vector<float> g(ids.size());
      kernels::Bf16GatherMatmul(impl, p.x.data(), w.data(), ids.data(), g.data(), {T, in, out}, K);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < K; ++j) ASSERT_EQ(0, std::memcmp(&g[t * K + j], &y[t * out + ids[t * K + j]], 4));
    }
  }
}

// A block-stored bf16 matrix (kQ4Bf16 / kQ8Bf16) against the dense kBf16 one on the bf16 weights
// its blocks hold: every row bit-identical, whatever T, the thread count, or output ranges that
// cut a 16-row block (one token at a time).
void ExpectBlocksEqualDense(const kernels::WeightMatrix& blocks, const kernels::WeightMatrix& dense,
                            const kernels::KernelImpls& k, const Problem& p, int64_t T, int64_t cut) {
  kernels::ThreadTeam one(0), two(1);
  const int64_t in = dense.in, out = dense.out;
  const char* impl = kernels::Int8ImplName(k.bf16);
  std::vector<float> want(static_cast<size_t>(T * out)), got(want.size()), threaded(want.size());
  kernels::TeamMatmul(dense, k, p.x.data(), T, want.data(), one);
  kernels::TeamMatmul(blocks, k, p.x.data(), T, got.data(), one);
  kernels::TeamMatmul(blocks, k, p.x.data(), T, threaded.data(), two);
  for (int64_t i = 0; i < T * out; ++i)
    ASSERT_EQ(0, std::memcmp(&want[i], &got[i], 4))
        << impl << " T=" << T << " in=" << in << " row " << i / out << " out " << i % out << ": " << want[i] << " vs " << got[i];
  ASSERT_EQ(0, std::memcmp(got.data(), threaded.data(), got.size() * 4)) << impl;
  kernels::PreparedActivations a;
  for (int64_t t = 0; t < T; t += std::max<int64_t>(1, T / 3)) {
    kernels::PrepareActivations(blocks.kind, k, p.x.data() + t * in, 1, in, &a);
    std::vector<float> row(static_cast<size_t>(out), -1.0f);
    const int64_t c = std::min(out, cut);
    kernels::MatmulRange(blocks, k, a, row.data(), 0, c);
    kernels::MatmulRange(blocks, k, a, row.data(), c, out);
    ASSERT_EQ(0, std::memcmp(row.data(), want.data() + t * out, out * 4)) << impl << " t=" << t;
  }
}

// kQ4Bf16 (the bf16 target stored as 4-bit blocks): every row bit-identical to kBf16's on the
// bf16 weights the blocks hold, with each bf16 impl, whatever T (1..64, a last tile of 1; 2..8
// through the tokens kernel, kBlocksTokensMax in int8_matmul.cc), the output range (ranges
// cutting a 16-row panel, a last panel of < 16 rows) or the thread count.
TEST(kernels_q4bf16, RowsEqualTheBf16KernelsOnTheWeightsTheBlocksHold) {
  using kernels::WeightMatrix;
  for (Int8Impl impl : SupportedImpls()) {
    kernels::KernelImpls k;
    k.bf16 = impl;
    k.int8 = impl;
    for (auto [T, in, out] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 64, 16}, {13, 576, 48}, {17, 576, 35}, {5, 128, 5}, {64, 1536, 70}, {33, 192, 64},
             {2, 576, 35}, {8, 1536, 48}, {3, 64, 17}, {9, 192, 33}}) {
      Problem p = MakeProblem(T, in, out, static_cast<uint32_t>(T * 7 + in + out));
      std::vector<float> wf(static_cast<size_t>(in * out));
      for (size_t i = 0; i < wf.size(); ++i) wf[i] = static_cast<float>(p.w[i]) * 0.013f - (i % 89 == 0 ? 0.7f : 0.0f);
      const int64_t blocks = in / kernels::kQ4Block;
      std::vector<uint8_t> packed(static_cast<size_t>(out * in / 2));
      std::vector<uint16_t> scale(static_cast<size_t>(out * blocks)), mins(scale.size());
      const kernels::Q4Order rows = kernels::Q4Order::kRows;
      kernels::QuantizeQ4Rows(wf.data(), in, out, packed.data(), scale.data(), mins.data(), rows);
      std::vector<float> deq(wf.size());
      std::vector<uint16_t> wb(wf.size());
      for (int64_t o = 0; o < out; ++o)
        kernels::DequantizeQ4Row(packed.data(), scale.data(), mins.data(), in, out, o, deq.data() + o * in, rows);
      for (size_t i = 0; i < wf.size(); ++i) wb[i] = F32ToBF16(deq[i]);
      // The blocks hold their own values' bf16 weights; not the bf16 weights of arbitrary values.
      EXPECT_TRUE(kernels::Q4HoldsBf16Exactly(deq.data(), in, out, packed.data(), scale.data(), mins.data(), rows));
      EXPECT_FALSE(kernels::Q4HoldsBf16Exactly(wf.data(), in, out, packed.data(), scale.data(), mins.data(), rows));
      {  // the two orders hold the same values
        std::vector<uint8_t> interleaved(packed.size());
        std::vector<float> deq2(static_cast<size_t>(in));
        kernels::QuantizeQ4Rows(wf.data(), in, out, interleaved.data(), scale.data(), mins.data());
        if (out > 16) EXPECT_NE(interleaved, packed);
        for (int64_t o = 0; o < out; ++o) {
          kernels::DequantizeQ4Row(interleaved.data(), scale.data(), mins.data(), in, out, o, deq2.data());
          ASSERT_EQ(0, std::memcmp(deq2.data(), deq.data() + o * in, in * 4)) << "row " << o;
        }
      }
      const WeightMatrix dense{WeightMatrix::Kind::kBf16, wb.data(), nullptr, in, out};
      const WeightMatrix q4{WeightMatrix::Kind::kQ4Bf16, packed.data(), nullptr, in, out, scale.data(), mins.data()};
      ExpectBlocksEqualDense(q4, dense, k, p, T, 5);
    }
  }
}

// kQ4ExactBf16 (4-bit blocks in Q4Order::kPairs times bf16 activations, the blocks' exact weights;
// docs/bench/decoder.md session 32): kPairs holds the same values as the other orders; every row
// is within f32 rounding of the exact dot of the bf16 activations and the blocks' values, and
// bit-identical whatever T (1..64: token groups of 16), the output range (cutting a panel, a last
// panel of < 16 rows) or the thread count, with each bf16 impl (AMX tiles, else scalar code).
TEST(kernels_q4exact, RowsAreTheExactWeightsDotAndTIndependent) {
  using kernels::WeightMatrix;
  for (Int8Impl impl : SupportedImpls()) {
    kernels::KernelImpls k;
    k.bf16 = impl;
    k.int8 = impl;
    for (auto [T, in, out] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 64, 16}, {13, 576, 48}, {17, 576, 35}, {5, 128, 5}, {64, 1536, 70}, {33, 192, 64},
             {2, 576, 35}, {16, 1536, 48}, {3, 64, 17}}) {
      Problem p = MakeProblem(T, in, out, static_cast<uint32_t>(T * 11 + in + out));
      std::vector<float> wf(static_cast<size_t>(in * out));
      for (size_t i = 0; i < wf.size(); ++i) wf[i] = static_cast<float>(p.w[i]) * 0.013f - (i % 89 == 0 ? 0.7f : 0.0f);
      const int64_t blocks = in / kernels::kQ4Block;
      std::vector<uint8_t> packed(static_cast<size_t>(out * in / 2)), interleaved(packed.size());
      std::vector<uint16_t> scale(static_cast<size_t>(out * blocks)), mins(scale.size()), scale2(scale.size()),
          mins2(scale.size());
      kernels::QuantizeQ4Rows(wf.data(), in, out, packed.data(), scale.data(), mins.data(), kernels::Q4Order::kPairs);
      kernels::QuantizeQ4Rows(wf.data(), in, out, interleaved.data(), scale2.data(), mins2.data());
      if (out > 16) EXPECT_NE(interleaved, packed);
      std::vector<float> deq(wf.size()), deq2(static_cast<size_t>(in));
      for (int64_t o = 0; o < out; ++o) {  // the same values as the VNNI order
        kernels::DequantizeQ4Row(packed.data(), scale.data(), mins.data(), in, out, o, deq.data() + o * in,
                                 kernels::Q4Order::kPairs);
        kernels::DequantizeQ4Row(interleaved.data(), scale2.data(), mins2.data(), in, out, o, deq2.data());
        ASSERT_EQ(0, std::memcmp(deq2.data(), deq.data() + o * in, in * 4)) << "row " << o;
      }
      const WeightMatrix q4{WeightMatrix::Kind::kQ4ExactBf16, packed.data(), nullptr, in, out, scale.data(), mins.data()};
      const char* name = kernels::Int8ImplName(impl);
      kernels::ThreadTeam one(0), two(1);
      std::vector<float> got(static_cast<size_t>(T * out)), threaded(got.size());
      kernels::TeamMatmul(q4, k, p.x.data(), T, got.data(), one);
      kernels::TeamMatmul(q4, k, p.x.data(), T, threaded.data(), two);
      ASSERT_EQ(0, std::memcmp(got.data(), threaded.data(), got.size() * 4)) << name;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t o = 0; o < out; ++o) {
          double exact = 0.0, size = 0.0;
          for (int64_t i = 0; i < in; ++i) {
            const double v = static_cast<double>(BF16ToF32(F32ToBF16(p.x[t * in + i]))) * deq[o * in + i];
            exact += v;
            size += std::fabs(v);
          }
          ASSERT_LE(std::fabs(got[t * out + o] - exact), 1e-5 * size + 1e-30)
              << name << " T=" << T << " in=" << in << " token " << t << " out " << o;
        }
      kernels::PreparedActivations a;
      for (int64_t t = 0; t < T; t += std::max<int64_t>(1, T / 3)) {
        kernels::PrepareActivations(q4.kind, k, p.x.data() + t * in, 1, in, &a);
        std::vector<float> row(static_cast<size_t>(out), -1.0f);
        const int64_t c = std::min<int64_t>(out, 5);
        kernels::MatmulRange(q4, k, a, row.data(), 0, c);
        kernels::MatmulRange(q4, k, a, row.data(), c, out);
        ASSERT_EQ(0, std::memcmp(row.data(), got.data() + t * out, out * 4)) << name << " T=" << T << " t=" << t;
      }
    }
  }
}

// kQ8Bf16 (the bf16 target's head from a Q8_0 embedding): rows bit-identical to kBf16's on the
// bf16 weights d * q rounds to, whatever T, range or threads; QuantizeQ8Rows gives a Q8_0
// tensor's blocks back and says whether they hold the weights' bf16 rounding.
TEST(kernels_q8bf16, RowsEqualTheBf16KernelsOnTheWeightsTheBlocksHold) {
  using kernels::WeightMatrix;
  for (Int8Impl impl : SupportedImpls()) {
    kernels::KernelImpls k;
    k.bf16 = impl;
    k.int8 = impl;
    for (auto [T, in, out] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 64, 16}, {13, 576, 48}, {17, 96, 35}, {5, 32, 5}, {64, 1536, 70}, {2, 576, 35}, {8, 96, 48},
             {7, 64, 33}}) {
      Problem p = MakeProblem(T, in, out, static_cast<uint32_t>(T * 5 + in + out));
      std::vector<float> wf(static_cast<size_t>(in * out));
      for (size_t i = 0; i < wf.size(); ++i) wf[i] = static_cast<float>(p.w[i]) * 0.0137f + (i % 71 == 0 ? 0.9f : 0.0f);
      std::vector<int8_t> q(wf.size()), q2(wf.size());
      std::vector<uint16_t> scale(static_cast<size_t>(out * in / 32)), scale2(scale.size());
      EXPECT_FALSE(kernels::QuantizeQ8Rows(wf.data(), in, out, q.data(), scale.data()));  // arbitrary values
      std::vector<float> deq(wf.size());
      std::vector<uint16_t> wb(wf.size());
      for (int64_t o = 0; o < out; ++o) kernels::DequantizeQ8Row(q.data(), scale.data(), in, out, o, deq.data() + o * in);
      for (size_t i = 0; i < wf.size(); ++i) {
        // Q8_0's value: the block's scale times the byte (row-major reference).
        float amax = 0.0f;
        for (int64_t j = i / 32 * 32; j < static_cast<int64_t>(i / 32 * 32 + 32); ++j) amax = std::max(amax, std::fabs(wf[j]));
        const float d = F16ToF32(F32ToF16(amax / 127.0f));
        ASSERT_EQ(deq[i], d > 0.0f ? std::clamp(std::nearbyint(wf[i] / d), -127.0f, 127.0f) * d : 0.0f) << i;
        wb[i] = F32ToBF16(deq[i]);
      }
      EXPECT_TRUE(kernels::QuantizeQ8Rows(deq.data(), in, out, q2.data(), scale2.data()));
      EXPECT_EQ(q, q2);
      EXPECT_EQ(scale, scale2);
      const WeightMatrix dense{WeightMatrix::Kind::kBf16, wb.data(), nullptr, in, out};
      const WeightMatrix q8{WeightMatrix::Kind::kQ8Bf16, q.data(), nullptr, in, out, scale.data(), nullptr};
      ExpectBlocksEqualDense(q8, dense, k, p, T, 7);
    }
  }
}

// The greedy head over 8-bit blocks (kernels/head_argmax.h): the ids ArgmaxRows gives over every
// logit of the kQ8Bf16 kernel, with each bf16 impl and thread count: activations the bound serves
// (it must then run: bounded, few exact rows), exact ties (the lowest index wins), a row one
// quantisation step from the best, a last panel of < 16 rows, several tokens, zeros, a NaN, an
// infinity, huge activations and a NaN block scale (the full head then).
TEST(kernels_q8bf16_argmax, SameIdsAsArgmaxOfEveryLogit) {
  using kernels::WeightMatrix;
  for (Int8Impl impl : SupportedImpls()) {
    kernels::KernelImpls k;
    k.bf16 = impl;
    k.int8 = impl;
    const bool bf16_dot = impl == Int8Impl::kAmxBf16 || impl == Int8Impl::kAvx512Bf16;
    for (auto [in, out] : std::vector<std::pair<int64_t, int64_t>>{{576, 4099}, {64, 35}, {96, 16}}) {
      std::mt19937 rng(static_cast<uint32_t>(in + out));
      std::uniform_real_distribution<float> uniform(-0.1f, 0.1f);
      std::normal_distribution<float> normal(0.0f, 3.0f);
      std::vector<float> wf(static_cast<size_t>(in * out));
      for (float& v : wf) v = uniform(rng);
      std::vector<int8_t> q(wf.size());
      std::vector<uint16_t> scale(static_cast<size_t>(out * in / 32));
      const WeightMatrix m{WeightMatrix::Kind::kQ8Bf16, q.data(), nullptr, in, out, scale.data(), nullptr};
      auto expect_same = [&](const std::vector<float>& x, int64_t T, const char* what, bool must_bound) {
        std::vector<float> logits(static_cast<size_t>(T * out));
        std::vector<int32_t> want(static_cast<size_t>(T)), got(want.size(), -1), threaded(want.size(), -1);
        kernels::ThreadTeam one(0), two(1);
        kernels::TeamMatmul(m, k, x.data(), T, logits.data(), one);
        kernels::ArgmaxRows(logits.data(), T, out, want.data());
        kernels::HeadArgmaxStats stats, stats2;
        kernels::Q8Bf16HeadArgmax(m, k, x.data(), T, got.data(), one, &stats);
        kernels::Q8Bf16HeadArgmax(m, k, x.data(), T, threaded.data(), two, &stats2);
        EXPECT_EQ(want, got) << kernels::Int8ImplName(impl) << " in=" << in << " out=" << out << " " << what;
        EXPECT_EQ(want, threaded) << kernels::Int8ImplName(impl) << " in=" << in << " out=" << out << " " << what;
        if (must_bound) {
          EXPECT_TRUE(stats.bounded) << kernels::Int8ImplName(impl) << " " << what;
          EXPECT_LE(stats.candidates, 16) << what;
          EXPECT_GE(stats.candidates, 1) << what;
        }
        return want[0];
      };
      kernels::QuantizeQ8Rows(wf.data(), in, out, q.data(), scale.data());
      std::vector<float> x(static_cast<size_t>(in));
      for (float& v : x) v = normal(rng);
      x[1] = 40.0f;  // an outlier channel, as real hidden states have
      const int32_t best = expect_same(x, 1, "normal activations", bf16_dot && out == 4099);
      // Exact ties: the best row copied below and above it, and to its panel's neighbour.
      const int64_t copies[] = {best / 2, best + (out - best) / 2, best ^ 1};
      for (int64_t c : copies) std::copy(wf.begin() + best * in, wf.begin() + best * in + in, wf.begin() + c * in);
      kernels::QuantizeQ8Rows(wf.data(), in, out, q.data(), scale.data());
      EXPECT_EQ(std::min<int64_t>(best / 2, best ^ 1), expect_same(x, 1, "ties", false));
      // A row one step of its block's scale above the best in one input: both can be the largest.
      {
        const int64_t near = (best + 7) % out;
        std::copy(wf.begin() + best * in, wf.begin() + best * in + in, wf.begin() + near * in);
        int64_t i = 2;  // not the outlier input; the step's sign follows x so the logit grows
        while (std::fabs(wf[near * in + i]) > 0.05f) ++i;
        float amax = 0.0f;
        for (int64_t j = i / 32 * 32; j < i / 32 * 32 + 32; ++j) amax = std::max(amax, std::fabs(wf[near * in + j]));
        wf[near * in + i] += (x[i] > 0 ? 1.0f : -1.0f) * F16ToF32(F32ToF16(amax / 127.0f));
        kernels::QuantizeQ8Rows(wf.data(), in, out, q.data(), scale.data());
        expect_same(x, 1, "a row one step from the best", false);
      }
      std::vector<float> three(static_cast<size_t>(3 * in));
      for (float& v : three) v = normal(rng);
      expect_same(three, 3, "three tokens", false);
      std::vector<float> odd = x;
      expect_same(std::vector<float>(static_cast<size_t>(in), 0.0f), 1, "zeros", false);
      odd[5] = std::numeric_limits<float>::quiet_NaN();
      expect_same(odd, 1, "a NaN", false);
      odd[5] = std::numeric_limits<float>::infinity();
      expect_same(odd, 1, "an infinity", false);
      odd[5] = 3e7f;
      expect_same(odd, 1, "huge", false);
      scale[scale.size() / 2] = 0x7e00;  // f16 NaN
      expect_same(x, 1, "a NaN scale", false);
    }
  }
}

// Two rows the approximation orders one way and the exact head the other (a row a little above
// another only through the bf16 rounding of its weights): the exact one wins, so the answer comes
// from the bound's candidates computed exactly, not from the approximate order. The best row is a
// strong match of x; a copy later in the matrix is one 8-bit step higher in input i and one lower
// in input j (same block), with x_i = 1 + 2^-7 > x_j = 1: the approximation gains d (x_i - x_j) > 0
// while the exact bf16 steps are chosen so that step_i x_i < step_j x_j.
TEST(kernels_q8bf16_argmax, TheExactLogitsNotTheApproximationDecide) {
  using kernels::WeightMatrix;
  const int64_t in = 64, out = 48, best = 5, copy = 40;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> small(-0.01f, 0.01f), unit(0.0f, 1.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(in)), wf(static_cast<size_t>(in * out));
  for (float& v : x) v = normal(rng);
  for (float& v : wf) v = small(rng);
  for (int64_t k = 0; k < in; ++k) wf[best * in + k] = (x[k] > 0 ? 1.0f : -1.0f) * (0.05f + 0.05f * unit(rng));
  std::vector<int8_t> q(wf.size());
  std::vector<uint16_t> scale(static_cast<size_t>(out * in / 32));
  kernels::QuantizeQ8Rows(wf.data(), in, out, q.data(), scale.data());
  std::vector<float> row(static_cast<size_t>(in));
  kernels::DequantizeQ8Row(q.data(), scale.data(), in, out, best, row.data());
  // In block 0: i with the smallest bf16 step up, j with the largest bf16 step down (weights > 0).
  float amax = 0.0f;
  for (int64_t k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(row[k]));
  const float step = F16ToF32(F32ToF16(amax / 127.0f));
  auto up = [&](int64_t k) { return BF16ToF32(F32ToBF16(row[k] + step)) - BF16ToF32(F32ToBF16(row[k])); };
  auto down = [&](int64_t k) { return BF16ToF32(F32ToBF16(row[k])) - BF16ToF32(F32ToBF16(row[k] - step)); };
  int64_t i = -1, j = -1;
  for (int64_t k = 0; k < 32; ++k) {
    if (row[k] <= 0 || row[k] + step >= amax) continue;
    if (i < 0 || up(k) < up(i)) i = k;
  }
  for (int64_t k = 0; k < 32; ++k) {
    if (row[k] <= 0 || k == i) continue;
    if (j < 0 || down(k) > down(j)) j = k;
  }
  ASSERT_TRUE(i >= 0 && j >= 0);
  ASSERT_LT(up(i) * (1.0f + 1.0f / 128), down(j)) << "no pair of inputs with unequal bf16 steps";
  x[i] = 1.0f + 1.0f / 128;
  x[j] = 1.0f;
  std::copy(row.begin(), row.end(), wf.begin() + best * in);
  std::copy(row.begin(), row.end(), wf.begin() + copy * in);
  wf[copy * in + i] += step;
  wf[copy * in + j] -= step;
  kernels::QuantizeQ8Rows(wf.data(), in, out, q.data(), scale.data());
  const WeightMatrix m{WeightMatrix::Kind::kQ8Bf16, q.data(), nullptr, in, out, scale.data(), nullptr};
  for (Int8Impl impl : SupportedImpls()) {
    kernels::KernelImpls k;
    k.bf16 = impl;
    k.int8 = impl;
    kernels::ThreadTeam one(0);
    std::vector<float> logits(static_cast<size_t>(out));
    kernels::TeamMatmul(m, k, x.data(), 1, logits.data(), one);
    int32_t want = -1, got = -1;
    kernels::ArgmaxRows(logits.data(), 1, out, &want);
    ASSERT_EQ(best, want) << kernels::Int8ImplName(impl) << ": the setup's exact logits " << logits[best] << " vs "
                          << logits[copy];
    kernels::HeadArgmaxStats stats;
    kernels::Q8Bf16HeadArgmax(m, k, x.data(), 1, &got, one, &stats);
    EXPECT_EQ(want, got) << kernels::Int8ImplName(impl);
    if (impl == Int8Impl::kAmxBf16 || impl == Int8Impl::kAvx512Bf16) {
      EXPECT_TRUE(stats.bounded) << kernels::Int8ImplName(impl);
      EXPECT_EQ(2, stats.candidates) << kernels::Int8ImplName(impl);
    }
  }
}

// The sampler's softmax weights (cascade/distribution.cc Transform): the vector exp within a few
// ulp of exp, exactly 0 where exp underflows, and the checked sum bit for bit the plain loop's.
TEST(kernels_sampling, ExpWeightsAndSumOfWeightsMatchThePlainLoops) {
  std::mt19937 rng(4);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (int64_t n : {1, 7, 8, 9, 49152}) {
    std::vector<float> x(static_cast<size_t>(n));
    for (float& v : x) v = normal(rng);
    if (n > 1) x[0] = -std::numeric_limits<float>::infinity();
    if (n > 2) x[2] = -3000.0f;  // e^(-3000 / 0.8) underflows to 0
    const double top = *std::max_element(x.begin(), x.end());
    std::vector<double> fast(x.size()), plain(x.size());
    kernels::ExpWeights(x.data(), n, top, 1.0 / 0.8, fast.data());
    kernels::ExpWeightsScalar(x.data(), n, top, 1.0 / 0.8, plain.data());
    double worst = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (plain[i] == 0) {
        EXPECT_EQ(fast[i], 0.0) << "n " << n << " i " << i;
        continue;
      }
      worst = std::max(worst, std::fabs(fast[i] - plain[i]) / plain[i]);
    }
    EXPECT_LT(worst, 1e-15) << "n " << n;
    bool bad_fast = true, zero_fast = false, bad_plain = true, zero_plain = false;
    const double a = kernels::SumOfWeights(fast.data(), n, &bad_fast, &zero_fast);
    const double b = kernels::SumOfWeightsScalar(fast.data(), n, &bad_plain, &zero_plain);
    EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0) << "n " << n;
    EXPECT_FALSE(bad_fast);
    EXPECT_FALSE(bad_plain);
    EXPECT_EQ(zero_fast, n > 1);
    EXPECT_EQ(zero_plain, n > 1);
  }
  for (double poison : {-1.0, std::numeric_limits<double>::infinity(), std::nan("")}) {
    std::vector<double> p(13, 0.5);
    p[9] = poison;
    bool bad = false, zero = true;
    kernels::SumOfWeights(p.data(), 13, &bad, &zero);
    EXPECT_TRUE(bad) << poison;
    EXPECT_FALSE(zero) << poison;
  }
}

TEST(kernels_tiny, TopKIdsOrderTiesAndNaN) {
  const float nan = std::nanf("");
  const std::vector<float> v = {1, 5, 3, 5, nan, 2, 5, -1};
  std::vector<int32_t> ids(3);
  kernels::TopKIds(v.data(), static_cast<int64_t>(v.size()), 3, ids.data());
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 3, 6})) << "equal values: lower id first";
  ids.resize(5);
  kernels::TopKIds(v.data(), static_cast<int64_t>(v.size()), 5, ids.data());
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 3, 6, 2, 5})) << "a NaN is never a candidate";
  // Against a full sort on random rows (ties made common by rounding).
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> small(-20, 20);
  // n = 49152 takes the threshold path (a cascade draft step's top 256, 512 or 1024: groups of 64,
  // 32 and 16 values), with NaN and infinities.
  for (int64_t n : {1, 7, 64, 1000, 49152}) {
    std::vector<float> r(static_cast<size_t>(n));
    for (float& x : r) x = static_cast<float>(small(rng)) / 4;
    if (n == 49152)
      for (int64_t i = 0; i < n; i += 97) r[i] = i % 3 == 0 ? nan : (i % 3 == 1 ? -INFINITY : INFINITY);
    auto rank = [&](int32_t i) { return std::isnan(r[i]) ? -INFINITY : r[i]; };
    for (int64_t k : {int64_t{1}, std::min<int64_t>(n, 5), std::min<int64_t>(n, 256), std::min<int64_t>(n, 512),
                      std::min<int64_t>(n, 1024), n}) {
      std::vector<int32_t> got(static_cast<size_t>(k)), want(static_cast<size_t>(n));
      kernels::TopKIds(r.data(), n, k, got.data());
      for (int64_t i = 0; i < n; ++i) want[i] = static_cast<int32_t>(i);
      std::stable_sort(want.begin(), want.end(), [&](int32_t a, int32_t b) { return rank(a) > rank(b); });
      want.resize(static_cast<size_t>(k));
      EXPECT_EQ(got, want) << "n=" << n << " k=" << k;
    }
  }
}

TEST(kernels_int8, RejectsBadShapesWithoutAborting) {
  EXPECT_NE("", kernels::ValidateInt8Matmul({0, 4, 4}));
  EXPECT_NE("", kernels::ValidateInt8Matmul({1, -1, 4}));
  EXPECT_NE("", kernels::ValidateInt8Matmul({5000, 4, 4}));
  EXPECT_EQ("", kernels::ValidateInt8Matmul({64, 1536, 49152}));
  float x = 0, y = 0, s = 1;
  int8_t w = 0;
  int32_t id = 0;
  EXPECT_THROW(kernels::Int8Matmul(Int8Impl::kScalar, &x, &w, &s, &y, {0, 1, 1}), std::invalid_argument);
  EXPECT_THROW(kernels::Int8GatherMatmul(Int8Impl::kScalar, &x, &w, &s, &id, &y, {1, 1, 1}, 2), std::invalid_argument);
  Int8Impl parsed;
  EXPECT_FALSE(kernels::ParseInt8Impl("avx1024", &parsed));
  EXPECT_TRUE(kernels::ParseInt8Impl("avx512vnni", &parsed));
}

// ------------------------------------------------------------------ through the XLA CPU plugin

std::shared_ptr<Client> Cpu() {
  static std::shared_ptr<Client> client = [] {
    ClientOptions options;
    options.cpu_device_count = 1;
    return Client::Create(Api::Load(LocatePlugin("cpu")), options);
  }();
  return client;
}

TEST(kernels_ffi, CustomCallRunsOurKernelInThePlugin) {
  auto client = Cpu();
  ASSERT_TRUE(HasFfiHandlerRegistration(client->api()));
  kernels::KernelRegistration r = kernels::RegisterKernels(client->api());
  ASSERT_TRUE(r.registered) << r.reason;
  EXPECT_TRUE(kernels::RegisterKernels(client->api()).registered);  // once; later calls are no-ops

  const int64_t T = 3, in = 100, out = 37;
  Problem p = MakeProblem(T, in, out, 3);
  hlo::Function f;
  auto x = f.Param("x", DType::kF32, {T, in});
  auto w = f.Param("w", DType::kS8, {out, in});
  auto s = f.Param("s", DType::kF32, {out});
  auto ids = f.Param("ids", DType::kS32, {T, 2});
  f.Return({f.CustomCall(kernels::kInt8MatmulTarget, {x, w, s}, DType::kF32, {T, out}),
            f.CustomCall(kernels::kInt8GatherMatmulTarget, {x, ids, w, s}, DType::kF32, {T, 2})});
  auto exe = client->Compile(f.ToText(), {1});
  std::vector<int32_t> id = {0, 36, 5, 5, 20, 1};
  auto outs = exe->ExecuteHost({{HostTensor(DType::kF32, {T, in}, p.x.data(), p.x.size() * 4),
                                 HostTensor(DType::kS8, {out, in}, p.w.data(), p.w.size()),
                                 HostTensor(DType::kF32, {out}, p.scale.data(), p.scale.size() * 4),
                                 HostTensor(DType::kS32, {T, 2}, id.data(), id.size() * 4)}})[0];
  ASSERT_EQ(outs.size(), 2u);
  Int8Impl impl = kernels::BestInt8Impl();
  if (const char* v = std::getenv("CASCADE_INT8_KERNEL")) kernels::ParseInt8Impl(v, &impl);
  const std::vector<float> want = RunKernel(impl, p);
  EXPECT_EQ(0, std::memcmp(outs[0].as<float>(), want.data(), want.size() * 4)) << "plugin result != direct kernel call";
  for (int64_t t = 0; t < T; ++t)
    for (int j = 0; j < 2; ++j) EXPECT_EQ(outs[1].as<float>()[t * 2 + j], want[t * out + id[t * 2 + j]]);

  // bf16: the same through cascade_bf16_matmul / cascade_bf16_gather_matmul.
  std::vector<uint16_t> wb(p.w.size());
  for (size_t i = 0; i < wb.size(); ++i) wb[i] = F32ToBF16(0.01f * p.w[i]);
  hlo::Function g;
  auto gx = g.Param("x", DType::kF32, {T, in});
  auto gw = g.Param("w", DType::kBF16, {out, in});
  auto gids = g.Param("ids", DType::kS32, {T, 2});
  g.Return({g.CustomCall(kernels::kBf16MatmulTarget, {gx, gw}, DType::kF32, {T, out}),
            g.CustomCall(kernels::kBf16GatherMatmulTarget, {gx, gids, gw}, DType::kF32, {T, 2})});
  auto bouts = client->Compile(g.ToText(), {1})
                   ->ExecuteHost({{HostTensor(DType::kF32, {T, in}, p.x.data(), p.x.size() * 4),
                                   HostTensor(DType::kBF16, {out, in}, wb.data(), wb.size() * 2),
                                   HostTensor(DType::kS32, {T, 2}, id.data(), id.size() * 4)}})[0];
  std::vector<float> bwant(static_cast<size_t>(T * out));
  Int8Impl bimpl = kernels::BestBf16Impl();
  if (const char* v = std::getenv("CASCADE_BF16_KERNEL")) kernels::ParseInt8Impl(v, &bimpl);
  kernels::Bf16Matmul(bimpl, p.x.data(), wb.data(), bwant.data(), {T, in, out});
  EXPECT_EQ(0, std::memcmp(bouts[0].as<float>(), bwant.data(), bwant.size() * 4)) << "bf16: plugin != direct call";
  for (int64_t t = 0; t < T; ++t)
    for (int j = 0; j < 2; ++j) EXPECT_EQ(bouts[1].as<float>()[t * 2 + j], bwant[t * out + id[t * 2 + j]]);
}

// cascade_argmax (the greedy head's argmax on the CPU plugin) against StableHLO's argmax reduce in
// the same plugin, on rows built to have ties (lowest index wins), -0 beside +0, all -inf, a
// maximum in the last lanes, and lengths that are not a multiple of 16; and a NaN row directly.
TEST(kernels_ffi, ArgmaxMatchesTheStableHloArgmax) {
  auto client = Cpu();
  ASSERT_TRUE(kernels::RegisterKernels(client->api()).registered);
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> small(-6, 6);
  for (int64_t n : {int64_t{1}, int64_t{15}, int64_t{16}, int64_t{17}, int64_t{100}, int64_t{49152}}) {
    const int64_t T = 6;
    std::vector<float> x(static_cast<size_t>(T * n));
    for (float& v : x) v = static_cast<float>(small(rng));  // many equal maxima per row
    float* last = x.data() + 1 * n;
    std::fill(last, last + n, 0.0f);
    last[n - 1] = 1.0f;  // the largest in the last lane
    float* inf = x.data() + 2 * n;
    std::fill(inf, inf + n, -INFINITY);
    float* zeros = x.data() + 3 * n;
    std::fill(zeros, zeros + n, -1.0f);
    zeros[n / 2] = -0.0f;
    zeros[n - 1] = 0.0f;  // -0 == +0: the first of them
    hlo::Function f;
    auto p = f.Param("x", DType::kF32, {T, n});
    f.Return({f.CustomCall(kernels::kArgmaxTarget, {p}, DType::kS32, {T}), f.Argmax(p, 1)});
    auto outs = client->Compile(f.ToText(), {1})
                    ->ExecuteHost({{HostTensor(DType::kF32, {T, n}, x.data(), x.size() * 4)}})[0];
    for (int64_t t = 0; t < T; ++t) {
      EXPECT_EQ(outs[0].as<int32_t>()[t], outs[1].as<int32_t>()[t]) << "n=" << n << " row " << t;
      EXPECT_EQ(outs[0].as<int32_t>()[t], kernels::ArgmaxScalar(x.data() + t * n, n)) << "n=" << n << " row " << t;
    }
  }
  std::vector<float> row(40, 1.0f);
  row[7] = 9.0f;
  row[20] = std::nanf("");
  row[30] = std::nanf("");
  int32_t id = -1;
  kernels::ArgmaxRows(row.data(), 1, 40, &id);
  EXPECT_EQ(id, 20) << "a NaN wins, the first of them";
}

// cascade_embed_rows (the token embeddings of a program on the CPU plugin, model/programs.cc
// Embed) against StableHLO's gather + convert (+ multiply) in the same plugin, bit for bit: bf16
// and f32 tables holding -0, infinities, a NaN and subnormals, ids repeated and at both ends, with
// and without Gemma's scale; an id outside the table is an error, not a read past it.
TEST(kernels_ffi, EmbedRowsMatchTheStableHloGather) {
  auto client = Cpu();
  ASSERT_TRUE(kernels::RegisterKernels(client->api()).registered);
  const int64_t V = 37, d = 24;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> table(static_cast<size_t>(V * d));
  for (float& v : table) v = normal(rng);
  table[d + 1] = -0.0f;
  table[d + 2] = INFINITY;
  table[d + 3] = -INFINITY;
  table[d + 4] = std::nanf("");
  table[d + 5] = std::numeric_limits<float>::denorm_min() * 5;
  table[2 * d] = 1e-39f;  // subnormal in both types
  std::vector<uint16_t> table16(table.size());
  for (size_t i = 0; i < table.size(); ++i) table16[i] = F32ToBF16(table[i]);
  const std::vector<int32_t> ids = {1, 0, 36, 2, 1, 17};
  const int64_t T = static_cast<int64_t>(ids.size());
  for (DType type : {DType::kBF16, DType::kF32}) {
    for (float scale : {1.0f, static_cast<float>(std::sqrt(576.0))}) {
      hlo::Function f;
      auto tab = f.Param("table", type, {V, d});
      auto idv = f.Param("ids", DType::kS32, {T});
      char attr[64];
      std::snprintf(attr, sizeof(attr), "%.9e : f32", scale);
      hlo::Value ours = f.CustomCall(kernels::kEmbedRowsTarget, {tab, idv}, {{DType::kF32, {T, d}}}, {{"scale", attr}})[0];
      hlo::Value xla = f.Convert(f.GatherRows(tab, idv), DType::kF32);
      if (scale != 1.0f) xla = f.Mul(xla, f.ScalarLike(xla, scale));
      f.Return({ours, xla});
      const HostTensor t = type == DType::kBF16 ? HostTensor(type, {V, d}, table16.data(), table16.size() * 2)
                                                : HostTensor(type, {V, d}, table.data(), table.size() * 4);
      auto exe = client->Compile(f.ToText(), {1});
      auto outs = exe->ExecuteHost({{t, HostTensor(DType::kS32, {T}, ids.data(), ids.size() * 4)}})[0];
      EXPECT_EQ(0, std::memcmp(outs[0].as<float>(), outs[1].as<float>(), static_cast<size_t>(T * d) * 4))
          << DTypeName(type) << " scale " << scale;
      const std::vector<int32_t> bad = {0, 0, V, 0, 0, 0};
      EXPECT_THROW(exe->ExecuteHost({{t, HostTensor(DType::kS32, {T}, bad.data(), bad.size() * 4)}}), PjrtError);
    }
  }
}

TEST(kernels_ffi, HandlerRejectsMismatchedShapesWithAnError) {
  auto client = Cpu();
  ASSERT_TRUE(kernels::RegisterKernels(client->api()).registered);
  // A hand-written call whose shapes disagree (in 5 vs 4): the handler must return an error
  // status, which surfaces as a typed PjrtError (at compile or run), never a crash.
  hlo::Function f;
  auto x = f.Param("x", DType::kF32, {2, 5});
  auto w = f.Param("w", DType::kS8, {3, 4});
  auto s = f.Param("s", DType::kF32, {3});
  f.Return({f.CustomCall(kernels::kInt8MatmulTarget, {x, w, s}, DType::kF32, {2, 3})});
  std::vector<float> xs(10, 1.0f), ss(3, 1.0f);
  std::vector<int8_t> ws(12, 1);
  EXPECT_THROW(
      {
        auto exe = client->Compile(f.ToText(), {1});
        exe->ExecuteHost({{HostTensor(DType::kF32, {2, 5}, xs.data(), 40), HostTensor(DType::kS8, {3, 4}, ws.data(), 12),
                           HostTensor(DType::kF32, {3}, ss.data(), 12)}});
      },
      PjrtError);
}

TEST(kernels_ffi, ChooseMatmulMode) {
  auto client = Cpu();
  // kAuto: the fused layer stack for every precision (fused_layers_test covers it).
  for (WeightPrecision p : {WeightPrecision::kF32, WeightPrecision::kBF16, WeightPrecision::kInt8})
    EXPECT_EQ(ChooseMatmulMode(*client, p, MatmulMode::kAuto), MatmulMode::kFused);
  EXPECT_EQ(ChooseMatmulMode(*client, WeightPrecision::kInt8, MatmulMode::kXlaAuto), MatmulMode::kXlaAuto);
  EXPECT_EQ(ChooseMatmulMode(*client, WeightPrecision::kInt8, MatmulMode::kFfi), MatmulMode::kFfi);
  EXPECT_EQ(ChooseMatmulMode(*client, WeightPrecision::kBF16, MatmulMode::kFfi), MatmulMode::kFfi);
  EXPECT_EQ(ChooseMatmulMode(*client, WeightPrecision::kF32, MatmulMode::kFfi), MatmulMode::kAuto);
}

// A random model with int8 weights: our kernel against the XLA-only int8 path (same s8 weights and
// scales; ours rounds activations to Q8 blocks, XLA's T>=2 path to bf16), and verify(k) against
// decode(1) through the kernel.
TEST(kernels_ffi, DecoderInt8AndBf16AgreeWithXlaPath) {
  auto client = Cpu();
  for (auto [precision, tied] : std::vector<std::pair<WeightPrecision, bool>>{
           {WeightPrecision::kInt8, false}, {WeightPrecision::kInt8, true}, {WeightPrecision::kBF16, true}}) {
    const char* name = WeightPrecisionName(precision);
    ModelConfig c = testing::SmallLlama(tied, 211);
    c.hidden_size = 128;  // several 32-blocks per row
    c.intermediate_size = 320;
    c.head_dim = 32;
    ModelWeights weights = testing::SmallRandomModel(c, 5, 1.0f);
    DecoderOptions o;
    o.precision = precision;
    o.max_context = 64;
    o.kv_dtype = DType::kF32;
    o.matmul = MatmulMode::kFfi;
    DecoderModel ffi(client, weights, o);
    ASSERT_NE(ffi.ProgramText(1, {HeadKind::kLogits}, false)
                  .find(precision == WeightPrecision::kInt8 ? kernels::kInt8MatmulTarget : kernels::kBf16MatmulTarget),
              std::string::npos);
    o.matmul = MatmulMode::kXlaAuto;
    DecoderModel xla(client, weights, o);
    ASSERT_EQ(xla.ProgramText(1, {HeadKind::kLogits}, false).find("custom_call"), std::string::npos);

    std::vector<int32_t> prompt = {3, 17, 42, 99, 5, 150, 7, 8};
    const int64_t V = c.vocab_size, n = static_cast<int64_t>(prompt.size());
    double worst = 0, span = 0;
    int agree = 0, rows = 0;
    // Prefill T=8 then 8 single-token decodes of the argmax, both models fed the same tokens.
    ForwardResult a = ffi.Forward(prompt, 0, {HeadKind::kLogits});
    ForwardResult b = xla.Forward(prompt, 0, {HeadKind::kLogits});
    std::vector<float> ffi_logits = a.logits, xla_logits = b.logits;
    std::vector<int32_t> seq = prompt;
    for (int step = 0; step < 8; ++step) {
      const float* last = a.logits.data() + (a.num_tokens - 1) * V;
      int32_t next = static_cast<int32_t>(std::max_element(last, last + V) - last);
      seq.push_back(next);
      a = ffi.Forward({next}, static_cast<int64_t>(seq.size()) - 1, {HeadKind::kLogits});
      b = xla.Forward({next}, static_cast<int64_t>(seq.size()) - 1, {HeadKind::kLogits});
      ffi_logits.insert(ffi_logits.end(), a.logits.begin(), a.logits.end());
      xla_logits.insert(xla_logits.end(), b.logits.begin(), b.logits.end());
    }
    for (size_t r = 0; r * V < ffi_logits.size(); ++r, ++rows) {
      const float* fa = ffi_logits.data() + r * V;
      const float* fb = xla_logits.data() + r * V;
      for (int64_t v = 0; v < V; ++v) {
        worst = std::max(worst, static_cast<double>(std::fabs(fa[v] - fb[v])));
        span = std::max(span, static_cast<double>(std::fabs(fb[v])));
      }
      agree += std::max_element(fa, fa + V) == fa + (std::max_element(fb, fb + V) - fb);
    }
    std::printf("[ measured ] %s %s: FFI vs XLA path max |dlogit| = %.3g (logits span +-%.3g), top-1 agree %d/%d\n",
                tied ? "tied" : "untied", name, worst, span, agree, rows);
    EXPECT_LE(worst, 0.05 * span);
    EXPECT_GE(agree, rows - 2);

    // verify(k) vs decode(1): the last k tokens re-run as one block give the same logits rows
    // (the kernel's rows are T-independent; attention is XLA's, so compare argmax and closeness).
    const int64_t k = 4, start = static_cast<int64_t>(seq.size()) - k;
    std::vector<int32_t> block(seq.end() - k, seq.end());
    ForwardResult v = ffi.Forward(block, start, {HeadKind::kLogits});
    double vd = 0;
    for (int64_t t = 0; t < k; ++t) {
      const float* row_v = v.logits.data() + t * V;
      const float* row_d = ffi_logits.data() + (start + t) * V;  // row p: the logits after position p
      for (int64_t j = 0; j < V; ++j) vd = std::max(vd, static_cast<double>(std::fabs(row_v[j] - row_d[j])));
      EXPECT_EQ(std::max_element(row_v, row_v + V) - row_v, std::max_element(row_d, row_d + V) - row_d);
    }
    std::printf("[ measured ] %s %s FFI: verify(%lld) vs decode(1) rows max |dlogit| = %.3g\n", tied ? "tied" : "untied",
                name, (long long)k, vd);
    // Our kernels are row-exact; what remains is XLA's attention (T-dependent fusion order).
    EXPECT_LE(vd, 1e-4 * span);
  }
}

// The vector rounding the fused layers use for a bf16 KV cache's new rows (and the bf16 kernels
// for their activations) gives util/float16.h's F32ToBF16 bits: ties to even, NaNs quieted with
// their sign, infinities, zeros of both signs, subnormals, overflow to infinity, and lengths that
// are not a multiple of 16.
TEST(kernels_bf16, RoundToBf16GivesF32ToBF16Bits) {
  std::vector<uint32_t> bits = {0x00000000u, 0x80000000u, 0x3f800000u, 0x3f808000u, 0x3f818000u, 0x3f80ffffu,
                                0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00001u, 0x7f800001u, 0xff800100u,
                                0x00000001u, 0x807fffffu, 0x00008000u, 0x7f7fffffu, 0xff7f8000u, 0x7f7f7fffu};
  std::mt19937 rng(11);
  for (int i = 0; i < 1000; ++i) bits.push_back(static_cast<uint32_t>(rng()));
  for (size_t n : {size_t{1}, size_t{15}, size_t{16}, size_t{37}, bits.size()}) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) std::memcpy(&x[i], &bits[i], 4);
    std::vector<uint16_t> got(n + 1, 0xabcd);
    kernels::RoundToBf16(x.data(), static_cast<int64_t>(n), got.data());
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], F32ToBF16(x[i])) << "bits " << std::hex << bits[i];
    EXPECT_EQ(got[n], 0xabcd) << "wrote past n = " << n;
  }
}

}  // namespace
}  // namespace cascade
