// Our matmul kernels side by side with oneDNN's (Debian's libdnnl-dev; built only where CMake
// finds it), as issue #13 asks of every kernel library we could use instead of our own code: the
// matrices of 30 SmolLM2-135M layers, each read once per pass, at T = 1 and T = 5, both threads,
// per weight type. oneDNN gets its best case: weights reordered once into the layout it picks
// (format_tag::any), one primitive per shape created before the timing, activations already in
// its source type.
//
//   onednn_bench [--runs 9] [--layers 30] [--only ours|onednn]
//
// Run each side in a process of its own (--only) for the figures: GNU OpenMP's threads spin after
// each oneDNN call (OMP_WAIT_POLICY=active, its default and its fast setting) and then take cycles
// from our kernel team when the two alternate; with OMP_WAIT_POLICY=passive each oneDNN call
// wakes its threads and runs ~2.5x slower.
//
// The oneDNN rows are what a decode step would read through oneDNN; they do not include the
// per-32 activation blocks our int8 kernel uses (oneDNN's s8 source has one scale per tensor), so
// its int8 row is a lower bound of the work ours does.
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/decoder_layers.h"
#include "kernels/ffi_handlers.h"
#include "kernels/int8_matmul.h"
#include "kernels/thread_team.h"
#include "tools/median.h"
#include "tools/side_by_side.h"

using namespace cascade::kernels;
using Clock = std::chrono::steady_clock;
using cascade::tools::Median;

namespace {

using Shape = cascade::tools::MatrixShape;

enum class Type { kF32, kBf16, kInt8 };
const char* Name(Type t) { return t == Type::kF32 ? "f32" : t == Type::kBf16 ? "bf16" : "int8"; }
int64_t Bytes(Type t) { return t == Type::kF32 ? 4 : t == Type::kBf16 ? 2 : 1; }

uint16_t Bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

}  // namespace

int main(int argc, char** argv) {
  const cascade::tools::SideBySideFlags flags = cascade::tools::ParseSideBySideFlags(argc, argv);
  const int runs = flags.runs, layers = flags.layers;
  const bool run_ours = flags.Ours(), run_dnnl = flags.Theirs();
  const std::vector<Shape> layer = cascade::tools::SmolLM2LayerShapes();
  ThreadTeam& team = ThreadTeam::Global();
  KernelImpls impls;
  impls.int8 = BestInt8Impl();
  impls.bf16 = BestBf16Impl();
  impls.f32 = BestF32Impl();
  const dnnl_version_t* v = dnnl_version();
  std::printf("ours: %s\noneDNN %d.%d.%d, effective ISA %d (dnnl::cpu_isa), threads: OpenMP\n", KernelDescription().c_str(),
              v->major, v->minor, v->patch, static_cast<int>(dnnl::get_effective_cpu_isa()));
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;

  // Our exactness contract needs row r of a T-row product to be bit-identical to the row computed
  // alone (verify(T) = decode(1) row by row). Does oneDNN's matmul keep it? Per type and shape:
  // T = 5 rows, then row 3 alone, compared bit for bit.
  if (run_dnnl)
    for (Type type : {Type::kF32, Type::kBf16, Type::kInt8})
      for (const Shape& s : layer) {
        const dt src_type = type == Type::kF32 ? dt::f32 : type == Type::kBf16 ? dt::bf16 : dt::s8;
        std::vector<uint8_t> w(static_cast<size_t>(s.in * s.out * Bytes(type)));
        for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
        if (type == Type::kF32)
          for (int64_t i = 0; i < s.in * s.out; ++i) { const float f = std::sin(0.1f * i) * 0.05f; std::memcpy(&w[i * 4], &f, 4); }
        if (type == Type::kBf16)
          for (int64_t i = 0; i < s.in * s.out; ++i) { const uint16_t b = Bf16(std::sin(0.1f * i) * 0.05f); std::memcpy(&w[i * 2], &b, 2); }
        std::vector<float> rows[2];
        for (int64_t T : {5, 1}) {
          std::vector<float> xf(static_cast<size_t>(5 * s.in));
          for (size_t i = 0; i < xf.size(); ++i) xf[i] = std::cos(0.37f * i);
          std::vector<uint16_t> xb(xf.size());
          std::vector<int8_t> xq(xf.size());
          for (size_t i = 0; i < xf.size(); ++i) { xb[i] = Bf16(xf[i]); xq[i] = static_cast<int8_t>(std::lrint(xf[i] * 100)); }
          const int64_t first = T == 5 ? 0 : 3;  // T = 1: row 3 alone
          void* data = type == Type::kF32 ? static_cast<void*>(xf.data() + first * s.in)
                       : type == Type::kBf16 ? static_cast<void*>(xb.data() + first * s.in)
                                             : static_cast<void*>(xq.data() + first * s.in);
          dnnl::memory::desc src_md({T, s.in}, src_type, tag::ab), wei_md({s.in, s.out}, src_type, tag::any),
              dst_md({T, s.out}, dt::f32, tag::ab);
          dnnl::primitive_attr attr;
          if (type == Type::kInt8) attr.set_output_scales(1 << 1, std::vector<float>(static_cast<size_t>(s.out), 1e-5f));
          dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, wei_md, dst_md), attr, eng);
          dnnl::memory user({{s.in, s.out}, src_type, type == Type::kF32 ? tag::ab : tag::ba}, eng, w.data());
          dnnl::memory packed(pd.weights_desc(), eng);
          dnnl::reorder(user, packed).execute(strm, user, packed);
          std::vector<float> y(static_cast<size_t>(T * s.out));
          dnnl::memory src(src_md, eng, data), dst(dst_md, eng, y.data());
          dnnl::matmul(pd).execute(strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, packed}, {DNNL_ARG_DST, dst}});
          strm.wait();
          rows[T == 5 ? 0 : 1].assign(y.begin() + (T == 5 ? 3 * s.out : 0), y.begin() + (T == 5 ? 4 * s.out : s.out));
        }
        double diff = 0;
        for (int64_t o = 0; o < s.out; ++o) diff = std::max(diff, std::fabs(double(rows[0][o]) - rows[1][o]));
        std::printf("oneDNN %-4s [%lld x %lld]: row 3 of T=5 %s row 3 alone (max |diff| %.3g)\n", Name(type),
                    (long long)s.out, (long long)s.in,
                    std::memcmp(rows[0].data(), rows[1].data(), rows[0].size() * 4) == 0 ? "bit-identical to" : "DIFFERS from",
                    diff);
      }

  for (Type type : {Type::kF32, Type::kBf16, Type::kInt8}) {
    // Our weights, and oneDNN's copy of the same values in its chosen layout.
    std::vector<std::vector<uint8_t>> ours;
    std::vector<std::vector<float>> scales;
    std::vector<WeightMatrix> ms;
    int64_t bytes = 0;
    for (int l = 0; l < layers; ++l)
      for (const Shape& s : layer) {
        std::vector<uint8_t> w(static_cast<size_t>(s.in * s.out * Bytes(type)));
        for (int64_t i = 0; i < s.in * s.out; ++i) {
          const float value = std::sin(static_cast<float>(i * 7 + l * 13 + ms.size())) * 0.05f;
          if (type == Type::kF32) std::memcpy(&w[i * 4], &value, 4);  // [in, out] (our f32 layout)
          else if (type == Type::kBf16) { const uint16_t b = Bf16(value); std::memcpy(&w[i * 2], &b, 2); }
          else w[i] = static_cast<uint8_t>(static_cast<int8_t>(std::lrint(value * 2540)));
        }
        ours.push_back(std::move(w));
        scales.emplace_back(static_cast<size_t>(s.out), 0.0004f);
        const WeightMatrix::Kind kind = type == Type::kF32 ? WeightMatrix::Kind::kF32Transposed
                                        : type == Type::kBf16 ? WeightMatrix::Kind::kBf16
                                                              : WeightMatrix::Kind::kInt8;
        ms.push_back({kind, ours.back().data(), scales.back().data(), s.in, s.out});
        bytes += s.in * s.out * Bytes(type);
      }
    for (int64_t T : {1, 5}) {
      std::vector<float> x(static_cast<size_t>(T * 1536)), y(static_cast<size_t>(T * 1536));
      for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(static_cast<float>(i)) * 0.7f;
      // oneDNN: one primitive per distinct shape, the weights reordered once per matrix.
      const dt src_type = type == Type::kF32 ? dt::f32 : type == Type::kBf16 ? dt::bf16 : dt::s8;
      const dt wei_type = src_type;
      std::vector<dnnl::matmul> prims;
      std::vector<dnnl::matmul::primitive_desc> pds;
      for (const Shape& s : layer) {
        dnnl::memory::desc src_md({T, s.in}, src_type, tag::ab), wei_md({s.in, s.out}, wei_type, tag::any),
            dst_md({T, s.out}, dt::f32, tag::ab);
        dnnl::primitive_attr attr;
        if (type == Type::kInt8) attr.set_output_scales(1 << 1, std::vector<float>(static_cast<size_t>(s.out), 0.0004f * 0.01f));
        pds.emplace_back(dnnl::matmul::desc(src_md, wei_md, dst_md), attr, eng);
        prims.emplace_back(pds.back());
      }
      std::vector<dnnl::memory> wmem;
      for (size_t m = 0; m < ms.size(); ++m) {
        const Shape& s = layer[m % layer.size()];
        // Our f32 weights are [in, out] (tag ab); bf16 / int8 are [out, in], i.e. [in, out] as ba.
        dnnl::memory user({{s.in, s.out}, wei_type, type == Type::kF32 ? tag::ab : tag::ba}, eng, ours[m].data());
        dnnl::memory packed(pds[m % layer.size()].weights_desc(), eng);
        dnnl::reorder(user, packed).execute(strm, user, packed);
        wmem.push_back(packed);
      }
      strm.wait();
      std::vector<uint16_t> xb(x.size());
      std::vector<int8_t> xq(x.size());
      for (size_t i = 0; i < x.size(); ++i) {
        xb[i] = Bf16(x[i]);
        xq[i] = static_cast<int8_t>(std::lrint(x[i] * 100));
      }
      void* src_data = type == Type::kF32 ? static_cast<void*>(x.data())
                       : type == Type::kBf16 ? static_cast<void*>(xb.data())
                                             : static_cast<void*>(xq.data());
      std::vector<dnnl::memory> src, dst;
      for (const Shape& s : layer) {
        src.emplace_back(dnnl::memory::desc({T, s.in}, src_type, tag::ab), eng, src_data);
        dst.emplace_back(dnnl::memory::desc({T, s.out}, dt::f32, tag::ab), eng, y.data());
      }
      std::vector<double> t_ours, t_dnnl;
      for (int r = 0; r < runs; ++r) {
        auto t0 = Clock::now();
        if (run_ours)
          for (const WeightMatrix& m : ms) TeamMatmul(m, impls, x.data(), T, y.data(), team);
        t_ours.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        t0 = Clock::now();
        if (run_dnnl) {
          for (size_t m = 0; m < ms.size(); ++m) {
            const size_t k = m % layer.size();
            prims[k].execute(strm, {{DNNL_ARG_SRC, src[k]}, {DNNL_ARG_WEIGHTS, wmem[m]}, {DNNL_ARG_DST, dst[k]}});
          }
          strm.wait();
        }
        t_dnnl.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      }
      const double a = Median(t_ours), b = Median(t_dnnl);
      std::printf("%-5s T=%lld: ours %7.2f ms (%5.1f GB/s), oneDNN %7.2f ms (%5.1f GB/s, impl %s): ours at %.2fx oneDNN's speed\n",
                  Name(type), (long long)T, a, bytes / a / 1e6, b, bytes / b / 1e6, pds[0].impl_info_str(), b / a);
    }
  }
  return 0;
}
