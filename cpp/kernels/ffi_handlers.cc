#include "kernels/ffi_handlers.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>

#include "kernels/int8_matmul.h"
#include "pjrt/ffi.h"
// The XLA FFI header (third party) trips -Wall/-Wextra here; its warnings are not ours.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wattributes"
#pragma GCC diagnostic ignored "-Wreturn-type"
#include "xla/ffi/api/ffi.h"
#pragma GCC diagnostic pop

namespace ffi = xla::ffi;

namespace cascade {
namespace kernels {


namespace {

struct Settings {
  Int8Impl impl = Int8Impl::kScalar;
  Int8Impl bf16_impl = Int8Impl::kScalar;
  int helpers = 1;
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
    if (const char* v = std::getenv("CASCADE_KERNEL_HELPERS")) {
      int n = std::atoi(v);
      if (n >= 0 && n <= 64) s.helpers = n;
    }
    return s;
  }();
  return settings;
}

std::atomic<int64_t> g_calls{0}, g_nanoseconds{0};

// Adds the wall time of one handler call to the stats.
class Timed {
 public:
  Timed() : start_(std::chrono::steady_clock::now()) {}
  ~Timed() {
    g_calls.fetch_add(1, std::memory_order_relaxed);
    g_nanoseconds.fetch_add(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start_).count(),
        std::memory_order_relaxed);
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

std::string DimsText(ffi::Span<const int64_t> d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? "," : "") + std::to_string(d[i]);
  return s + "]";
}

ffi::Error Int8MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> w,
                          ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> y) {
  Timed timed;
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
  const Settings& s = GetSettings();
  try {
    Spawner spawn = [&pool](std::function<void()> task) { pool.Schedule(std::move(task)); };
    Int8Matmul(s.impl, x.typed_data(), w.typed_data(), scale.typed_data(), y->typed_data(), shape, s.helpers,
               s.helpers > 0 ? spawn : Spawner());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string(kInt8MatmulTarget) + ": " + e.what());
  }
  return ffi::Error::Success();
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

ffi::Error Bf16MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::BF16> w,
                          ffi::ResultBuffer<ffi::F32> y) {
  Timed timed;
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 2 || yd.size() != 2 || xd[1] != wd[1] || yd[0] != xd[0] || yd[1] != wd[0])
    return ffi::Error::InvalidArgument(std::string(kBf16MatmulTarget) + ": expected x[T,in], w[out,in] -> y[T,out]; got x" +
                                       DimsText(xd) + " w" + DimsText(wd) + " y" + DimsText(yd));
  const Int8MatmulShape shape{xd[0], xd[1], wd[0]};
  const std::string bad = ValidateInt8Matmul(shape);
  if (!bad.empty()) return ffi::Error::InvalidArgument(bad);
  const Settings& s = GetSettings();
  try {
    Spawner spawn = [&pool](std::function<void()> task) { pool.Schedule(std::move(task)); };
    Bf16Matmul(s.bf16_impl, x.typed_data(), w.typed_data(), y->typed_data(), shape, s.helpers,
               s.helpers > 0 ? spawn : Spawner());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string(kBf16MatmulTarget) + ": " + e.what());
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

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeBf16MatmulHandler, Bf16MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
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
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

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
      RegisterFfiHandler(api, kBf16GatherMatmulTarget, "Host",
                         reinterpret_cast<void*>(&CascadeBf16GatherMatmulHandler));
      r.registered = true;
    } catch (const std::exception& e) {
      r.reason = e.what();
    }
  }
  (*done)[api.raw()] = r;
  return r;
}

MatmulMode ChooseMatmulMode(const Client& client, WeightPrecision precision, MatmulMode requested) {
  if (requested != MatmulMode::kAuto && requested != MatmulMode::kFfi) return requested;
  // f32 weights have no low-precision matrix for the kernels (and XLA's f32 GEMMs are fast).
  if (precision == WeightPrecision::kF32) return requested == MatmulMode::kFfi ? MatmulMode::kAuto : requested;
  // bf16 weights: with AVX512_BF16 (vdpbf16ps) only, unless asked for. Measured (decoder_bench,
  // SmolLM2 shape, loaded 2-core machine, medians): vdpbf16ps kernel vs XLA T=1 44.5 vs 47.8 ms,
  // T=2 42.8 vs 62.2, T=8 69.3 vs 70.9; the f32-FMA kernel is ~1.3x slower than XLA at T=8.
  if (precision == WeightPrecision::kBF16 && requested == MatmulMode::kAuto &&
      GetSettings().bf16_impl != Int8Impl::kAvx512Bf16)
    return MatmulMode::kAuto;
  // The handler is registered for XLA's CPU platform only.
  std::string why;
  if (client.platform_name() != "cpu") {
    why = "the int8 FFI kernel runs on the CPU plugin only, not on " + client.platform_name();
  } else {
    KernelRegistration r = RegisterKernels(client.api());
    if (r.registered) return MatmulMode::kFfi;
    why = r.reason;
  }
  if (requested == MatmulMode::kFfi) throw PluginIncompatibleError("matmul mode ffi: " + why);
  return MatmulMode::kAuto;
}

KernelStats GetKernelStats() {
  return {g_calls.load(std::memory_order_relaxed), g_nanoseconds.load(std::memory_order_relaxed)};
}

std::string KernelDescription() {
  const Settings& s = GetSettings();
  return "int8 " + std::string(Int8ImplName(s.impl)) + ", bf16 " + Int8ImplName(s.bf16_impl) + ", " +
         std::to_string(s.helpers) + " helper thread(s)";
}

}  // namespace kernels
}  // namespace cascade
