// Our matmul kernels side by side with XNNPACK's (Debian's libxnnpack-dev + libpthreadpool-dev;
// built only where CMake finds them), as issue #13 asks of every kernel library we could use
// instead of our own code, in the shape of cpp/tools/onednn/onednn_bench.cc: the matrices of 30
// SmolLM2-135M layers, each read once per pass, at T = 1 and T = 5, both threads, per weight type
// XNNPACK has an operator for (ours: the layouts the decoder's layer arenas hold, f32 in panels
// of 64 outputs). XNNPACK gets its best case: weights packed once at operator
// creation, one operator per matrix set up for T before the timing, its own pthreadpool of as
// many threads as our team.
//
//   xnnpack_bench [--runs 9] [--layers 30] [--only ours|xnnpack]
//
// What Debian's XNNPACK (a 2022-02 snapshot) offers for our precisions:
//   f32:  fully connected f32 (AVX-512 microkernels): the same semantics as ours.
//   int8: the closest is a 1x1 convolution qc8 (int8 activations with one scale per tensor,
//         int8 weights with one scale per output channel, requantised to int8 outputs); ours
//         rounds the activations per 32-block and writes f32, so its row does less work than ours.
//   bf16, 4-bit blocks: no operators (nor f16 ones on x86 in this snapshot: create fails with
//         unsupported hardware, which the tool reports).
#include <pthreadpool.h>
#include <xnnpack.h>

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

enum class Type { kF32, kInt8 };
const char* Name(Type t) { return t == Type::kF32 ? "f32" : "int8"; }
int64_t Bytes(Type t) { return t == Type::kF32 ? 4 : 1; }

bool Ok(xnn_status s, const char* what) {
  if (s == xnn_status_success) return true;
  std::printf("XNNPACK %s: status %d%s\n", what, static_cast<int>(s),
              s == xnn_status_unsupported_hardware ? " (unsupported hardware)" : "");
  return false;
}

// One XNNPACK operator for a [out, in] matrix (the weights packed at creation).
xnn_operator_t Create(Type type, const Shape& s, const void* w, const std::vector<float>& channel_scales) {
  xnn_operator_t op = nullptr;
  xnn_status st;
  if (type == Type::kF32)
    st = xnn_create_fully_connected_nc_f32(s.in, s.out, s.in, s.out, static_cast<const float*>(w), nullptr,
                                           -INFINITY, INFINITY, 0, &op);
  else
    st = xnn_create_convolution2d_nhwc_qc8(0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, s.in, s.out, s.in, s.out, 0, 0.01f,
                                           channel_scales.data(), static_cast<const int8_t*>(w), nullptr, 0, 0.05f,
                                           -128, 127, 0, &op);
  return Ok(st, type == Type::kF32 ? "create fully_connected_nc_f32" : "create convolution2d_nhwc_qc8 (1x1)") ? op : nullptr;
}

bool Setup(Type type, xnn_operator_t op, int64_t T, const void* x, void* y, pthreadpool_t pool) {
  const xnn_status st =
      type == Type::kF32
          ? xnn_setup_fully_connected_nc_f32(op, T, static_cast<const float*>(x), static_cast<float*>(y), pool)
          : xnn_setup_convolution2d_nhwc_qc8(op, 1, 1, T, static_cast<const int8_t*>(x), static_cast<int8_t*>(y), pool);
  return Ok(st, "setup");
}

}  // namespace

int main(int argc, char** argv) {
  const cascade::tools::SideBySideFlags flags = cascade::tools::ParseSideBySideFlags(argc, argv);
  const int runs = flags.runs, layers = flags.layers;
  const bool run_ours = flags.Ours(), run_xnn = flags.Theirs();
  const std::vector<Shape> layer = cascade::tools::SmolLM2LayerShapes();
  ThreadTeam& team = ThreadTeam::Global();
  KernelImpls impls;
  impls.int8 = BestInt8Impl();
  impls.f32 = BestF32Impl();
  if (!Ok(xnn_initialize(nullptr), "initialize")) return 1;
  pthreadpool_t pool = pthreadpool_create(static_cast<size_t>(team.helpers() + 1));
  std::printf("ours: %s\nXNNPACK (Debian libxnnpack0 0.0~git20220216), pthreadpool of %zu threads\n",
              KernelDescription().c_str(), pthreadpool_get_threads_count(pool));
  {  // f16: report whether this snapshot runs it here at all.
    xnn_operator_t op = nullptr;
    std::vector<uint16_t> w(576 * 576, 0x3c00);
    if (Ok(xnn_create_fully_connected_nc_f16(576, 576, 576, 576, w.data(), nullptr, -INFINITY, INFINITY, 0, &op),
           "create fully_connected_nc_f16"))
      xnn_delete_operator(op);
  }

  // Our exactness contract needs row r of a T-row product to be bit-identical to the row computed
  // alone (verify(T) = decode(1) row by row). Does XNNPACK's f32 fully connected keep it? T = 5
  // rows, then row 3 alone, compared bit for bit, per shape.
  if (run_xnn)
    for (const Shape& s : layer) {
      std::vector<float> w(static_cast<size_t>(s.in * s.out));
      for (size_t i = 0; i < w.size(); ++i) w[i] = std::sin(0.1f * i) * 0.05f;
      xnn_operator_t op = Create(Type::kF32, s, w.data(), {});
      if (!op) break;
      std::vector<float> x(static_cast<size_t>(5 * s.in));
      for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.37f * i);
      std::vector<float> y5(static_cast<size_t>(5 * s.out)), y1(static_cast<size_t>(s.out));
      if (!Setup(Type::kF32, op, 5, x.data(), y5.data(), pool) || !Ok(xnn_run_operator(op, pool), "run")) break;
      if (!Setup(Type::kF32, op, 1, x.data() + 3 * s.in, y1.data(), pool) || !Ok(xnn_run_operator(op, pool), "run")) break;
      double diff = 0;
      for (int64_t o = 0; o < s.out; ++o) diff = std::max(diff, std::fabs(double(y5[3 * s.out + o]) - y1[o]));
      std::printf("XNNPACK f32 [%lld x %lld]: row 3 of T=5 %s row 3 alone (max |diff| %.3g)\n", (long long)s.out,
                  (long long)s.in,
                  std::memcmp(y5.data() + 3 * s.out, y1.data(), y1.size() * 4) == 0 ? "bit-identical to" : "DIFFERS from",
                  diff);
      xnn_delete_operator(op);
    }

  for (Type type : {Type::kF32, Type::kInt8}) {
    // Our weights, and XNNPACK's operators over the same values ([out, in], as it expects).
    std::vector<std::vector<uint8_t>> ours, theirs;
    std::vector<std::vector<float>> scales;
    std::vector<WeightMatrix> ms;
    int64_t bytes = 0;
    for (int l = 0; l < layers; ++l)
      for (const Shape& s : layer) {
        std::vector<uint8_t> w(static_cast<size_t>(s.in * s.out * Bytes(type))), t(w.size());
        for (int64_t o = 0; o < s.out; ++o)
          for (int64_t i = 0; i < s.in; ++i) {
            const float value = std::sin(static_cast<float>((o * s.in + i) * 7 + l * 13 + ms.size())) * 0.05f;
            if (type == Type::kF32) {
              std::memcpy(&w[(i * s.out + o) * 4], &value, 4);  // [in, out], packed into panels below
              std::memcpy(&t[(o * s.in + i) * 4], &value, 4);
            } else {
              w[o * s.in + i] = t[o * s.in + i] = static_cast<uint8_t>(static_cast<int8_t>(std::lrint(value * 2540)));
            }
          }
        if (type == Type::kF32) {  // ours: the layer arenas' layout (kF32Panels)
          std::vector<uint8_t> panels(w.size());
          PackF32Panels(reinterpret_cast<const float*>(w.data()), s.in, s.out, reinterpret_cast<float*>(panels.data()));
          w.swap(panels);
        }
        ours.push_back(std::move(w));
        theirs.push_back(std::move(t));
        scales.emplace_back(static_cast<size_t>(s.out), 0.0004f);
        ms.push_back({type == Type::kF32 ? WeightMatrix::Kind::kF32Panels : WeightMatrix::Kind::kInt8,
                      ours.back().data(), scales.back().data(), s.in, s.out});
        bytes += s.in * s.out * Bytes(type);
      }
    std::vector<xnn_operator_t> ops;
    if (run_xnn)
      for (size_t m = 0; m < ms.size(); ++m) {
        xnn_operator_t op = Create(type, layer[m % layer.size()], theirs[m].data(), scales[m]);
        if (!op) break;
        ops.push_back(op);
      }
    if (run_xnn && ops.size() != ms.size()) return 1;
    theirs.clear();  // packed inside the operators
    for (int64_t T : {1, 5}) {
      std::vector<float> x(static_cast<size_t>(T * 1536)), y(static_cast<size_t>(T * 1536));
      for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(static_cast<float>(i)) * 0.7f;
      std::vector<int8_t> xq(x.size()), yq(y.size());
      for (size_t i = 0; i < x.size(); ++i) xq[i] = static_cast<int8_t>(std::lrint(x[i] * 100));
      for (xnn_operator_t op : ops)
        if (!Setup(type, op, T, type == Type::kF32 ? static_cast<const void*>(x.data()) : xq.data(),
                   type == Type::kF32 ? static_cast<void*>(y.data()) : yq.data(), pool))
          return 1;
      std::vector<double> t_ours, t_xnn;
      for (int r = 0; r < runs; ++r) {
        auto t0 = Clock::now();
        if (run_ours)
          for (const WeightMatrix& m : ms) TeamMatmul(m, impls, x.data(), T, y.data(), team);
        t_ours.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        t0 = Clock::now();
        for (xnn_operator_t op : ops)
          if (!Ok(xnn_run_operator(op, pool), "run")) return 1;
        t_xnn.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      }
      const double a = Median(t_ours), b = Median(t_xnn);
      std::printf("%-5s T=%lld: ours %7.2f ms (%5.1f GB/s), XNNPACK %7.2f ms (%5.1f GB/s, %s): ours at %.2fx XNNPACK's speed\n",
                  Name(type), (long long)T, a, bytes / a / 1e6, b, bytes / b / 1e6,
                  type == Type::kF32 ? "fully_connected_nc_f32" : "1x1 convolution qc8, int8 out", b / a);
    }
    for (xnn_operator_t op : ops) xnn_delete_operator(op);
  }
  pthreadpool_destroy(pool);
  xnn_deinitialize();
  return 0;
}
