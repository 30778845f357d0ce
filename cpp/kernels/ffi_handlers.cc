#include "kernels/ffi_handlers.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "kernels/argmax.h"
#include "kernels/head_argmax.h"
#include "kernels/decoder_layers.h"
#include "kernels/int8_matmul.h"
#include "kernels/thread_team.h"
#include "kernels/tiny_candidates.h"
#include "pjrt/ffi.h"
#include "util/float16.h"
// The XLA FFI header (third party) trips -Wall/-Wextra here; its warnings are not ours.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wattributes"
#pragma GCC diagnostic ignored "-Wreturn-type"
#if defined(__clang__)
#pragma GCC diagnostic ignored "-Wbitwise-instead-of-logical"
#endif
#include "xla/ffi/api/ffi.h"
#pragma GCC diagnostic pop

namespace ffi = xla::ffi;

namespace cascade {
namespace kernels {


namespace {

struct Settings {
  Int8Impl impl = Int8Impl::kScalar;
  Int8Impl bf16_impl = Int8Impl::kScalar;
};

// Read once: every handler call of the process uses the same implementation, so rows computed by
// different programs (decode vs verify) agree bit for bit.
const Settings& GetSettings() {
  static const Settings settings = [] {
    Settings s;
    s.impl = BestInt8Impl();
    if (const char* v = std::getenv("CASCADE_INT8_KERNEL")) {
      Int8Impl impl;
      if (ParseInt8Impl(v, &impl) && Int8ImplSupported(impl)) s.impl = impl;
    }
    s.bf16_impl = BestBf16Impl();
    if (const char* v = std::getenv("CASCADE_BF16_KERNEL")) {
      Int8Impl impl;
      if (ParseInt8Impl(v, &impl) && Int8ImplSupported(impl)) s.bf16_impl = impl;
    }
    return s;
  }();
  return settings;
}

KernelImpls Impls() {
  const Settings& s = GetSettings();
  KernelImpls k;
  k.int8 = s.impl == Int8Impl::kAvx512Bf16 ? BestInt8Impl() : s.impl;
  k.bf16 = s.bf16_impl;
  k.f32 = BestF32Impl();
  return k;
}

std::atomic<int64_t> g_calls{0}, g_nanoseconds{0}, g_matmul_nanoseconds{0}, g_attention_nanoseconds{0},
    g_layers_nanoseconds{0};
std::atomic<std::thread::id> g_layers_thread{};

// Adds the wall time of one handler call to the stats.
// (A plain matmul call counts as matmul time too.)
class Timed {
 public:
  enum class Kind { kOther, kMatmul, kLayers };
  explicit Timed(bool matmul = false) : Timed(matmul ? Kind::kMatmul : Kind::kOther) {}
  explicit Timed(Kind kind) : kind_(kind), start_(std::chrono::steady_clock::now()) {}
  ~Timed() {
    const int64_t ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start_).count();
    g_calls.fetch_add(1, std::memory_order_relaxed);
    g_nanoseconds.fetch_add(ns, std::memory_order_relaxed);
    if (kind_ == Kind::kMatmul) g_matmul_nanoseconds.fetch_add(ns, std::memory_order_relaxed);
    if (kind_ == Kind::kLayers) g_layers_nanoseconds.fetch_add(ns, std::memory_order_relaxed);
  }

 private:
  Kind kind_;
  std::chrono::steady_clock::time_point start_;
};

// y[T, out] = x . m on the process's kernel team: the body every plain matmul handler shares once
// its shapes are checked. An exception becomes the handler's error status, named by `target`.
ffi::Error TeamMatmulCall(const char* target, const WeightMatrix& m, const float* x, int64_t T, float* y) {
  try {
    TeamMatmul(m, Impls(), x, T, y, ThreadTeam::Global());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string(target) + ": " + e.what());
  }
  return ffi::Error::Success();
}

std::string DimsText(ffi::Span<const int64_t> d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? "," : "") + std::to_string(d[i]);
  return s + "]";
}

ffi::Error Int8MatmulImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> w,
                          ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> y) {
  Timed timed(/*matmul=*/true);
  // Shapes are checked when the program is emitted; check again here so a hand-written program
  // gets an error status, never a crash.
  auto xd = x.dimensions(), wd = w.dimensions(), sd = scale.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 2 || sd.size() != 1 || yd.size() != 2 || xd[1] != wd[1] || sd[0] != wd[0] ||
      yd[0] != xd[0] || yd[1] != wd[0])
    return ffi::Error::InvalidArgument(std::string(kInt8MatmulTarget) + ": expected x[T,in], w[out,in], scale[out] -> y[T,out]; got x" +
                                       DimsText(xd) + " w" + DimsText(wd) + " scale" + DimsText(sd) + " y" + DimsText(yd));
  const Int8MatmulShape shape{xd[0], xd[1], wd[0]};
  const std::string bad = ValidateInt8Matmul(shape);
  if (!bad.empty()) return ffi::Error::InvalidArgument(bad);
  const WeightMatrix m{WeightMatrix::Kind::kInt8, w.typed_data(), scale.typed_data(), shape.in, shape.out};
  return TeamMatmulCall(kInt8MatmulTarget, m, x.typed_data(), shape.T, y->typed_data());
}

ffi::Error Int8GatherMatmulImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S32> ids, ffi::Buffer<ffi::S8> w,
                                ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> y) {
  Timed timed;
  auto xd = x.dimensions(), id = ids.dimensions(), wd = w.dimensions(), sd = scale.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || id.size() != 2 || wd.size() != 2 || sd.size() != 1 || yd.size() != 2 || id[0] != xd[0] ||
      xd[1] != wd[1] || sd[0] != wd[0] || yd[0] != xd[0] || yd[1] != id[1])
    return ffi::Error::InvalidArgument(std::string(kInt8GatherMatmulTarget) +
                                       ": expected x[T,in], ids[T,K], w[out,in], scale[out] -> y[T,K]; got x" +
                                       DimsText(xd) + " ids" + DimsText(id) + " w" + DimsText(wd) + " scale" +
                                       DimsText(sd) + " y" + DimsText(yd));
  const Int8MatmulShape shape{xd[0], xd[1], wd[0]};
  const std::string bad = ValidateInt8Matmul(shape);
  if (!bad.empty()) return ffi::Error::InvalidArgument(bad);
  try {
    Int8GatherMatmul(GetSettings().impl, x.typed_data(), w.typed_data(), scale.typed_data(), ids.typed_data(),
                     y->typed_data(), shape, id[1]);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string(kInt8GatherMatmulTarget) + ": " + e.what());
  }
  return ffi::Error::Success();
}

// The tiny's shapes (W2 as stored, w2d; w2_hidden: the width H it holds) and its call.
ffi::Error RunTinyCandidates(const char* target, ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& w1t,
                             ffi::Buffer<ffi::F32>& b1, ffi::Buffer<ffi::F32>& ln_w, ffi::Buffer<ffi::F32>& ln_b,
                             ffi::Span<const int64_t> w2d, int64_t w2_hidden, ffi::Buffer<ffi::F32>& b2,
                             ffi::ResultBuffer<ffi::S32>& ids, float eps, TinyParams p) {
  auto xd = x.dimensions(), w1d = w1t.dimensions(), od = ids->dimensions();
  const bool ranks = xd.size() == 2 && w1d.size() == 2 && w2d.size() == 2 && od.size() == 2 &&
                     b1.dimensions().size() == 1 && ln_w.dimensions().size() == 1 && ln_b.dimensions().size() == 1 &&
                     b2.dimensions().size() == 1;
  if (!ranks || w1d[0] != xd[1] || b1.dimensions()[0] != w1d[1] || ln_w.dimensions()[0] != w1d[1] ||
      ln_b.dimensions()[0] != w1d[1] || w2_hidden != w1d[1] ||
      b2.dimensions()[0] != w2d[0] || od[0] != xd[0] || od[1] < 1 || od[1] > w2d[0])
    return ffi::Error::InvalidArgument(std::string(target) +
                                       ": expected x[T,d], w1t[d,H], b1/ln_w/ln_b[H], w2[V,H] (q4: [V,H/2]), b2[V] -> "
                                       "ids[T,K] with 1 <= K <= V; got x" +
                                       DimsText(xd) + " w1t" + DimsText(w1d) + " w2" + DimsText(w2d) + " ids" +
                                       DimsText(od));
  const std::string bad = p.w2_q4 ? ValidateQ4Matrix(w1d[1], w2d[0]) : ValidateInt8Matmul({xd[0], w2d[1], w2d[0]});
  if (!bad.empty()) return ffi::Error::InvalidArgument(bad);
  p.w1t = w1t.typed_data();
  p.b1 = b1.typed_data();
  p.ln_w = ln_w.typed_data();
  p.ln_b = ln_b.typed_data();
  p.b2 = b2.typed_data();
  p.d = xd[1];
  p.hidden = w1d[1];
  p.vocab = w2d[0];
  p.eps = eps;
  try {
    TinyCandidates(p, Impls(), x.typed_data(), xd[0], od[1], ids->typed_data(), ThreadTeam::Global());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string(target) + ": " + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error TinyCandidatesImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w1t, ffi::Buffer<ffi::F32> b1,
                              ffi::Buffer<ffi::F32> ln_w, ffi::Buffer<ffi::F32> ln_b, ffi::Buffer<ffi::S8> w2,
                              ffi::Buffer<ffi::F32> w2_scale, ffi::Buffer<ffi::F32> b2, ffi::ResultBuffer<ffi::S32> ids,
                              float eps) {
  Timed timed;
  if (w2_scale.dimensions().size() != 1 || w2.dimensions().size() != 2 || w2_scale.dimensions()[0] != w2.dimensions()[0])
    return ffi::Error::InvalidArgument(std::string(kTinyCandidatesTarget) + ": w2_scale must be [V] for w2[V,H], got " +
                                       DimsText(w2_scale.dimensions()) + " for " + DimsText(w2.dimensions()));
  TinyParams p;
  p.w2 = w2.typed_data();
  p.w2_scale = w2_scale.typed_data();
  return RunTinyCandidates(kTinyCandidatesTarget, x, w1t, b1, ln_w, ln_b, w2.dimensions(), w2.dimensions()[1], b2, ids,
                           eps, p);
}

ffi::Error TinyCandidatesQ4Impl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w1t, ffi::Buffer<ffi::F32> b1,
                                ffi::Buffer<ffi::F32> ln_w, ffi::Buffer<ffi::F32> ln_b, ffi::Buffer<ffi::U8> w2,
                                ffi::Buffer<ffi::F16> w2_scale, ffi::Buffer<ffi::F16> w2_min, ffi::Buffer<ffi::F32> b2,
                                ffi::ResultBuffer<ffi::S32> ids, float eps) {
  Timed timed;
  auto wd = w2.dimensions(), sd = w2_scale.dimensions(), md = w2_min.dimensions();
  if (wd.size() != 2 || sd.size() != 2 || md.size() != 2 || sd[0] != wd[0] || md[0] != wd[0] ||
      sd[1] * kQ4Block != wd[1] * 2 || md[1] != sd[1])
    return ffi::Error::InvalidArgument(std::string(kTinyCandidatesQ4Target) +
                                       ": w2_scale and w2_min must be [V,H/32] for w2[V,H/2], got " + DimsText(sd) +
                                       " and " + DimsText(md) + " for " + DimsText(wd));
  TinyParams p;
  p.w2_q4 = true;
  p.w2 = w2.typed_data();
  p.w2_block_scale = reinterpret_cast<const uint16_t*>(w2_scale.untyped_data());
  p.w2_block_min = reinterpret_cast<const uint16_t*>(w2_min.untyped_data());
  return RunTinyCandidates(kTinyCandidatesQ4Target, x, w1t, b1, ln_w, ln_b, wd, wd[1] * 2, b2, ids, eps, p);
}

// rows[t] = table[ids[t]] as f32 (bf16 widened exactly), times `scale` when it is not 1 (Gemma's
// sqrt(d)): the token embeddings as StableHLO's gather + convert (+ multiply) give them. In XLA
// that gather fuses with a convert that XLA's cost model counts over the whole table, so the
// program never counts as cheap and runs on another thread (model/programs.cc, Embed).
ffi::Error EmbedRowsImpl(ffi::AnyBuffer table, ffi::Buffer<ffi::S32> ids, ffi::ResultBuffer<ffi::F32> rows,
                         float scale) {
  Timed timed;
  const std::string name = kEmbedRowsTarget;
  auto td = table.dimensions(), id = ids.dimensions(), rd = rows->dimensions();
  const ffi::DataType type = table.element_type();
  if (td.size() != 2 || id.size() != 1 || rd.size() != 2 || rd[0] != id[0] || rd[1] != td[1] ||
      (type != ffi::DataType::F32 && type != ffi::DataType::BF16))
    return ffi::Error::InvalidArgument(name + ": expected table f32|bf16[V,d], ids[T] -> rows f32[T,d]; got table" +
                                       DimsText(td) + " ids" + DimsText(id) + " rows" + DimsText(rd));
  const int64_t V = td[0], d = td[1], T = id[0];
  const int32_t* tokens = ids.typed_data();
  for (int64_t t = 0; t < T; ++t)
    if (tokens[t] < 0 || tokens[t] >= V)
      return ffi::Error::InvalidArgument(name + ": id " + std::to_string(tokens[t]) + " at " + std::to_string(t) +
                                         " is outside the table of " + std::to_string(V) + " rows");
  float* out = rows->typed_data();
  for (int64_t t = 0; t < T; ++t) {
    float* y = out + t * d;
    if (type == ffi::DataType::F32) {
      const float* x = static_cast<const float*>(table.untyped_data()) + tokens[t] * d;
      std::copy(x, x + d, y);
    } else {
      const uint16_t* x = static_cast<const uint16_t*>(table.untyped_data()) + tokens[t] * d;
      for (int64_t i = 0; i < d; ++i) y[i] = BF16ToF32(x[i]);
    }
    if (scale != 1.0f)
      for (int64_t i = 0; i < d; ++i) y[i] *= scale;
  }
  return ffi::Error::Success();
}

ffi::Error ArgmaxImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::S32> ids) {
  Timed timed;
  auto xd = x.dimensions(), od = ids->dimensions();
  if (xd.size() != 2 || od.size() != 1 || od[0] != xd[0] || xd[1] < 1)
    return ffi::Error::InvalidArgument(std::string(kArgmaxTarget) + ": expected x[T,n] with n >= 1 -> ids[T]; got x" +
                                       DimsText(xd) + " ids" + DimsText(od));
  ArgmaxRows(x.typed_data(), xd[0], xd[1], ids->typed_data());
  return ffi::Error::Success();
}

ffi::Error Bf16MatmulImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::BF16> w,
                          ffi::ResultBuffer<ffi::F32> y) {
  Timed timed(/*matmul=*/true);
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 2 || yd.size() != 2 || xd[1] != wd[1] || yd[0] != xd[0] || yd[1] != wd[0])
    return ffi::Error::InvalidArgument(std::string(kBf16MatmulTarget) + ": expected x[T,in], w[out,in] -> y[T,out]; got x" +
                                       DimsText(xd) + " w" + DimsText(wd) + " y" + DimsText(yd));
  const Int8MatmulShape shape{xd[0], xd[1], wd[0]};
  const std::string bad = ValidateInt8Matmul(shape);
  if (!bad.empty()) return ffi::Error::InvalidArgument(bad);
  const WeightMatrix m{WeightMatrix::Kind::kBf16, w.typed_data(), nullptr, shape.in, shape.out};
  return TeamMatmulCall(kBf16MatmulTarget, m, x.typed_data(), shape.T, y->typed_data());
}

// x[T,in], w[out,in] and scale[out,in/32] (in a multiple of 32) as a kQ8Bf16 matrix and its shape,
// when they and the result (`result_ok`, described by `result` for the message) agree.
ffi::Error Q8Operands(const char* target, ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::S8>& w,
                      ffi::Buffer<ffi::F16>& scale, bool result_ok, const std::string& result, WeightMatrix* m,
                      Int8MatmulShape* shape) {
  auto xd = x.dimensions(), wd = w.dimensions(), sd = scale.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || sd.size() != 2 || xd[1] != wd[1] || wd[1] % 32 != 0 || sd[0] != wd[0] ||
      sd[1] * 32 != wd[1] || wd[0] < 1 || !result_ok)
    return ffi::Error::InvalidArgument(std::string(target) +
                                       ": expected x[T,in], w[out,in], scale[out,in/32] (in a multiple of 32) -> " +
                                       result + "; got x" + DimsText(xd) + " w" + DimsText(wd) + " scale" + DimsText(sd));
  *shape = {xd[0], xd[1], wd[0]};
  const std::string bad = ValidateInt8Matmul(*shape);
  if (!bad.empty()) return ffi::Error::InvalidArgument(bad);
  *m = {WeightMatrix::Kind::kQ8Bf16, w.typed_data(), nullptr, shape->in, shape->out};
  m->block_scale = reinterpret_cast<const uint16_t*>(scale.untyped_data());
  return ffi::Error::Success();
}

ffi::Error Q8Bf16MatmulImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> w, ffi::Buffer<ffi::F16> scale,
                           ffi::ResultBuffer<ffi::F32> y) {
  Timed timed(/*matmul=*/true);
  auto yd = y->dimensions();
  const bool y_ok = yd.size() == 2 && x.dimensions().size() == 2 && w.dimensions().size() == 2 &&
                    yd[0] == x.dimensions()[0] && yd[1] == w.dimensions()[0];
  WeightMatrix m;
  Int8MatmulShape shape;
  ffi::Error e = Q8Operands(kQ8Bf16MatmulTarget, x, w, scale, y_ok, "y[T,out], y" + DimsText(yd), &m, &shape);
  if (e.failure()) return e;
  return TeamMatmulCall(kQ8Bf16MatmulTarget, m, x.typed_data(), shape.T, y->typed_data());
}

// The greedy head of a Q8_0-blocks head: the ids ArgmaxRows gives over Q8Bf16MatmulImpl's logits.
ffi::Error Q8Bf16ArgmaxImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> w, ffi::Buffer<ffi::F16> scale,
                            ffi::ResultBuffer<ffi::S32> ids) {
  Timed timed(/*matmul=*/true);
  auto od = ids->dimensions();
  const bool ids_ok = od.size() == 1 && x.dimensions().size() == 2 && od[0] == x.dimensions()[0];
  WeightMatrix m;
  Int8MatmulShape shape;
  ffi::Error e = Q8Operands(kQ8Bf16ArgmaxTarget, x, w, scale, ids_ok, "ids[T], ids" + DimsText(od), &m, &shape);
  if (e.failure()) return e;
  try {
    Q8Bf16HeadArgmax(m, Impls(), x.typed_data(), shape.T, ids->typed_data(), ThreadTeam::Global());
  } catch (const std::exception& ex) {
    return ffi::Error::Internal(std::string(kQ8Bf16ArgmaxTarget) + ": " + ex.what());
  }
  return ffi::Error::Success();
}

ffi::Error Bf16GatherMatmulImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S32> ids, ffi::Buffer<ffi::BF16> w,
                                ffi::ResultBuffer<ffi::F32> y) {
  Timed timed;
  auto xd = x.dimensions(), id = ids.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || id.size() != 2 || wd.size() != 2 || yd.size() != 2 || id[0] != xd[0] || xd[1] != wd[1] ||
      yd[0] != xd[0] || yd[1] != id[1])
    return ffi::Error::InvalidArgument(std::string(kBf16GatherMatmulTarget) +
                                       ": expected x[T,in], ids[T,K], w[out,in] -> y[T,K]; got x" + DimsText(xd) +
                                       " ids" + DimsText(id) + " w" + DimsText(wd) + " y" + DimsText(yd));
  const Int8MatmulShape shape{xd[0], xd[1], wd[0]};
  const std::string bad = ValidateInt8Matmul(shape);
  if (!bad.empty()) return ffi::Error::InvalidArgument(bad);
  try {
    Bf16GatherMatmul(GetSettings().bf16_impl, x.typed_data(), w.typed_data(), ids.typed_data(), y->typed_data(), shape,
                     id[1]);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string(kBf16GatherMatmulTarget) + ": " + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error F32TMatmulImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wt, ffi::ResultBuffer<ffi::F32> y) {
  Timed timed(/*matmul=*/true);
  auto xd = x.dimensions(), wd = wt.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 2 || yd.size() != 2 || xd[1] != wd[0] || yd[0] != xd[0] || yd[1] != wd[1])
    return ffi::Error::InvalidArgument(std::string(kF32TMatmulTarget) + ": expected x[T,in], wt[in,out] -> y[T,out]; got x" +
                                       DimsText(xd) + " wt" + DimsText(wd) + " y" + DimsText(yd));
  const Int8MatmulShape shape{xd[0], xd[1], wd[1]};
  const std::string bad = ValidateInt8Matmul(shape);
  if (!bad.empty()) return ffi::Error::InvalidArgument(bad);
  const WeightMatrix m{WeightMatrix::Kind::kF32Transposed, wt.typed_data(), nullptr, shape.in, shape.out};
  return TeamMatmulCall(kF32TMatmulTarget, m, x.typed_data(), shape.T, y->typed_data());
}

// y[T, out] = x . W for W^T stored as kF32Panels (kernels/int8_matmul.h), flat: the f32 layer
// matrices a plain program slices out of the layer arenas.
ffi::Error F32PanelsMatmulImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> panels, ffi::ResultBuffer<ffi::F32> y) {
  Timed timed(/*matmul=*/true);
  auto xd = x.dimensions(), wd = panels.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 1 || yd.size() != 2 || yd[0] != xd[0] || wd[0] != xd[1] * yd[1])
    return ffi::Error::InvalidArgument(std::string(kF32PanelsMatmulTarget) +
                                       ": expected x[T,in], panels[in*out] -> y[T,out]; got x" + DimsText(xd) +
                                       " panels" + DimsText(wd) + " y" + DimsText(yd));
  const Int8MatmulShape shape{xd[0], xd[1], yd[1]};
  const std::string bad = ValidateInt8Matmul(shape);
  if (!bad.empty()) return ffi::Error::InvalidArgument(bad);
  const WeightMatrix m{WeightMatrix::Kind::kF32Panels, panels.typed_data(), nullptr, shape.in, shape.out};
  return TeamMatmulCall(kF32PanelsMatmulTarget, m, x.typed_data(), shape.T, y->typed_data());
}

// y[T, out] = (x . W^T) * scale for W stored as kInt8Panels (kernels/int8_matmul.h), flat: the
// int8 layer matrices a plain program slices out of the layer arenas.
ffi::Error Int8PanelsMatmulImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> panels, ffi::Buffer<ffi::F32> scale,
                                ffi::ResultBuffer<ffi::F32> y) {
  Timed timed(/*matmul=*/true);
  auto xd = x.dimensions(), wd = panels.dimensions(), sd = scale.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 1 || sd.size() != 1 || yd.size() != 2 || yd[0] != xd[0] || sd[0] != yd[1] ||
      wd[0] != xd[1] * yd[1])
    return ffi::Error::InvalidArgument(std::string(kInt8PanelsMatmulTarget) +
                                       ": expected x[T,in], panels[out*in], scale[out] -> y[T,out]; got x" +
                                       DimsText(xd) + " panels" + DimsText(wd) + " scale" + DimsText(sd) + " y" +
                                       DimsText(yd));
  const Int8MatmulShape shape{xd[0], xd[1], yd[1]};
  std::string bad = ValidateInt8Matmul(shape);
  if (bad.empty()) bad = ValidateInt8Panels(shape.in, shape.out);
  if (!bad.empty()) return ffi::Error::InvalidArgument(std::string(kInt8PanelsMatmulTarget) + ": " + bad);
  const WeightMatrix m{WeightMatrix::Kind::kInt8Panels, panels.typed_data(), scale.typed_data(), shape.in, shape.out};
  return TeamMatmulCall(kInt8PanelsMatmulTarget, m, x.typed_data(), shape.T, y->typed_data());
}

ffi::Error DecoderLayersImpl(ffi::Buffer<ffi::F32> hidden, ffi::Buffer<ffi::F32> cos, ffi::Buffer<ffi::F32> sin,
                             ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::S32> start, ffi::AnyBuffer k_cache,
                             ffi::AnyBuffer v_cache, ffi::Buffer<ffi::F32> final_norm, ffi::RemainingArgs arenas,
                             ffi::ResultBuffer<ffi::F32> hidden_out, ffi::Result<ffi::AnyBuffer> k_new,
                             ffi::Result<ffi::AnyBuffer> v_new, int64_t layers, int64_t heads, int64_t kv_heads,
                             int64_t head_dim, int64_t intermediate, float eps, bool gemma, int64_t weights) {
  Timed timed(Timed::Kind::kLayers);
  DecoderLayersConfig c;
  c.layers = layers;
  c.heads = heads;
  c.kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.intermediate = intermediate;
  c.rms_norm_eps = eps;
  c.gemma = gemma;
  auto hd = hidden.dimensions(), kd = k_cache.dimensions(), vd = v_cache.dimensions();
  const std::string name = kDecoderLayersTarget;
  if (hd.size() != 2 || kd.size() != 4 || vd.size() != 4 || !std::equal(kd.begin(), kd.end(), vd.begin()) ||
      layers < 1 || kd[0] != layers || kd[1] != kv_heads || kd[3] != head_dim)
    return ffi::Error::InvalidArgument(name + ": expected hidden[T,d] and caches[layers,kv_heads,C,head_dim]; got hidden" +
                                       DimsText(hd) + " cache" + DimsText(kd));
  c.hidden = hd[1];
  const int64_t T = hd[0], half = head_dim / 2;
  auto shape_is = [](ffi::Span<const int64_t> d, std::initializer_list<int64_t> want) {
    return d.size() == want.size() && std::equal(want.begin(), want.end(), d.begin());
  };
  if (!shape_is(cos.dimensions(), {T, half}) || !shape_is(sin.dimensions(), {T, half}) ||
      !shape_is(mask.dimensions(), {T, T}) || start.dimensions().size() != 0 ||
      !shape_is(hidden_out->dimensions(), {T, hd[1]}) || !shape_is(k_new->dimensions(), {layers, kv_heads, T, head_dim}) ||
      !shape_is(v_new->dimensions(), {layers, kv_heads, T, head_dim}) || !shape_is(final_norm.dimensions(), {hd[1]}))
    return ffi::Error::InvalidArgument(name + ": rope tables, mask, start_pos, final norm or results do not match hidden" +
                                       DimsText(hd));
  // bf16 caches come as u16 bits (model/programs.h, KvCacheStorage); bf16 itself is taken too.
  const ffi::DataType kv = k_cache.element_type();
  if ((kv != ffi::DataType::F32 && kv != ffi::DataType::BF16 && kv != ffi::DataType::U16) ||
      v_cache.element_type() != kv || k_new->element_type() != kv || v_new->element_type() != kv)
    return ffi::Error::InvalidArgument(name + ": the caches and the new keys/values must all be f32, or all bf16 (or u16 bf16 bits)");
  if (weights < 0 || weights > static_cast<int64_t>(WeightMatrix::Kind::kQ4ExactBf16) ||
      weights == static_cast<int64_t>(WeightMatrix::Kind::kQ8Bf16) || static_cast<int64_t>(arenas.size()) != layers)
    return ffi::Error::InvalidArgument(name + ": expected one u8[bytes] weight arena per layer (" + std::to_string(layers) +
                                       "), got " + std::to_string(arenas.size()) + ", and weights = 0..4, 6, 7 or 8 (the matrix kind)");
  std::vector<DecoderLayerWeights> w(static_cast<size_t>(layers));
  for (int64_t l = 0; l < layers; ++l) {
    auto b = arenas.get<ffi::AnyBuffer>(static_cast<size_t>(l));
    if (!b.has_value() || b->element_type() != ffi::DataType::U8 || b->dimensions().size() != 1)
      return ffi::Error::InvalidArgument(name + ": layer " + std::to_string(l) + "'s weight arena must be u8[bytes]");
    const std::string bad = ArenaLayer(c, static_cast<WeightMatrix::Kind>(weights),
                                       static_cast<const uint8_t*>(b->untyped_data()), b->dimensions()[0], &w[l]);
    if (!bad.empty()) return ffi::Error::InvalidArgument(bad + " (layer " + std::to_string(l) + ")");
  }
  DecoderLayersCall call;
  call.num_tokens = T;
  call.max_context = kd[2];
  call.start_pos = *start.typed_data();
  call.hidden_in = hidden.typed_data();
  call.rope_cos = cos.typed_data();
  call.rope_sin = sin.typed_data();
  call.block_mask = mask.typed_data();
  call.kv_bf16 = kv != ffi::DataType::F32;
  call.k_cache = k_cache.untyped_data();
  call.v_cache = v_cache.untyped_data();
  call.final_norm = final_norm.typed_data();
  call.hidden_out = hidden_out->typed_data();
  call.k_new = k_new->untyped_data();
  call.v_new = v_new->untyped_data();
  const std::string bad = ValidateDecoderLayers(c, w, call);
  if (!bad.empty()) return ffi::Error::InvalidArgument(bad);
  DecoderLayersStats stats;
  try {
    RunDecoderLayers(c, w, call, Impls(), ThreadTeam::Global(), &stats);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(name + ": " + e.what());
  }
  g_matmul_nanoseconds.fetch_add(stats.matmul_nanoseconds, std::memory_order_relaxed);
  g_attention_nanoseconds.fetch_add(stats.attention_nanoseconds, std::memory_order_relaxed);
  g_layers_thread.store(std::this_thread::get_id(), std::memory_order_relaxed);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeF32TMatmulHandler, F32TMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeF32PanelsMatmulHandler, F32PanelsMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeInt8PanelsMatmulHandler, Int8PanelsMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeDecoderLayersHandler, DecoderLayersImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("layers")
                                  .Attr<int64_t>("heads")
                                  .Attr<int64_t>("kv_heads")
                                  .Attr<int64_t>("head_dim")
                                  .Attr<int64_t>("intermediate")
                                  .Attr<float>("eps")
                                  .Attr<bool>("gemma")
                                  .Attr<int64_t>("weights"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeEmbedRowsHandler, EmbedRowsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeBf16MatmulHandler, Bf16MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeQ8Bf16MatmulHandler, Q8Bf16MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeBf16GatherMatmulHandler, Bf16GatherMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeInt8GatherMatmulHandler, Int8GatherMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeInt8MatmulHandler, Int8MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeTinyCandidatesHandler, TinyCandidatesImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeTinyCandidatesQ4Handler, TinyCandidatesQ4Impl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::F16>>()
                                  .Arg<ffi::Buffer<ffi::F16>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeArgmaxHandler, ArgmaxImpl,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeQ8Bf16ArgmaxHandler, Q8Bf16ArgmaxImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F16>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

KernelRegistration RegisterKernels(const Api& api) {
  static std::mutex mu;
  static auto* done = new std::map<const PJRT_Api*, KernelRegistration>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = done->find(api.raw());
  if (it != done->end()) return it->second;
  KernelRegistration r;
  const char* off = std::getenv("CASCADE_FFI_KERNELS");
  if (off && std::string(off) == "0") {
    r.reason = "disabled by CASCADE_FFI_KERNELS=0";
  } else if (!HasFfiHandlerRegistration(api)) {
    r.reason = api.path() + " has no PJRT FFI extension with register_handler";
  } else {
    try {
      // "Host" is XLA's name of the CPU platform (jax registers CPU targets under it).
      RegisterFfiHandler(api, kInt8MatmulTarget, "Host", reinterpret_cast<void*>(&CascadeInt8MatmulHandler));
      RegisterFfiHandler(api, kInt8GatherMatmulTarget, "Host",
                         reinterpret_cast<void*>(&CascadeInt8GatherMatmulHandler));
      RegisterFfiHandler(api, kBf16MatmulTarget, "Host", reinterpret_cast<void*>(&CascadeBf16MatmulHandler));
      RegisterFfiHandler(api, kQ8Bf16MatmulTarget, "Host", reinterpret_cast<void*>(&CascadeQ8Bf16MatmulHandler));
      RegisterFfiHandler(api, kBf16GatherMatmulTarget, "Host",
                         reinterpret_cast<void*>(&CascadeBf16GatherMatmulHandler));
      RegisterFfiHandler(api, kF32TMatmulTarget, "Host", reinterpret_cast<void*>(&CascadeF32TMatmulHandler));
      RegisterFfiHandler(api, kF32PanelsMatmulTarget, "Host", reinterpret_cast<void*>(&CascadeF32PanelsMatmulHandler));
      RegisterFfiHandler(api, kInt8PanelsMatmulTarget, "Host", reinterpret_cast<void*>(&CascadeInt8PanelsMatmulHandler));
      RegisterFfiHandler(api, kDecoderLayersTarget, "Host", reinterpret_cast<void*>(&CascadeDecoderLayersHandler));
      RegisterFfiHandler(api, kEmbedRowsTarget, "Host", reinterpret_cast<void*>(&CascadeEmbedRowsHandler));
      RegisterFfiHandler(api, kTinyCandidatesTarget, "Host", reinterpret_cast<void*>(&CascadeTinyCandidatesHandler));
      RegisterFfiHandler(api, kTinyCandidatesQ4Target, "Host",
                         reinterpret_cast<void*>(&CascadeTinyCandidatesQ4Handler));
      RegisterFfiHandler(api, kArgmaxTarget, "Host", reinterpret_cast<void*>(&CascadeArgmaxHandler));
      RegisterFfiHandler(api, kQ8Bf16ArgmaxTarget, "Host", reinterpret_cast<void*>(&CascadeQ8Bf16ArgmaxHandler));
      r.registered = true;
    } catch (const std::exception& e) {
      r.reason = e.what();
    }
  }
  (*done)[api.raw()] = r;
  return r;
}

KernelStats GetKernelStats() {
  return {g_calls.load(std::memory_order_relaxed), g_nanoseconds.load(std::memory_order_relaxed),
          g_matmul_nanoseconds.load(std::memory_order_relaxed), g_attention_nanoseconds.load(std::memory_order_relaxed),
          g_layers_thread.load(std::memory_order_relaxed), g_layers_nanoseconds.load(std::memory_order_relaxed)};
}

std::string KernelDescription() {
  const Settings& s = GetSettings();
  return "int8 " + std::string(Int8ImplName(s.impl)) + ", bf16 " + Int8ImplName(s.bf16_impl) + ", f32 " +
         Int8ImplName(BestF32Impl()) + ", " + std::to_string(ThreadTeam::Global().helpers() + 1) + " thread(s)";
}

WeightMatrix::Kind BlockStoredBf16Kind() {
  return GetSettings().bf16_impl == Int8Impl::kAmxBf16 ? WeightMatrix::Kind::kQ4ExactBf16 : WeightMatrix::Kind::kQ4Bf16;
}

}  // namespace kernels
}  // namespace cascade
