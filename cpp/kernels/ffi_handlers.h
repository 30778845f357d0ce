// Our kernels as XLA FFI handlers (typed FFI, api_version 4), and their registration with a PJRT
// plugin through the PJRT FFI extension (pjrt/ffi.h).
//
// Custom call targets (StableHLO: stablehlo.custom_call @name(...) {api_version = 4 : i32, ...}):
//   cascade_int8_matmul(x f32[T, in], w s8[out, in], scale f32[out]) -> f32[T, out]
//     y = (x . w^T) * scale, row-major operands (kernels/int8_matmul.h).
//   cascade_int8_gather_matmul(x f32[T, in], ids s32[T, K], w s8[out, in], scale f32[out]) -> f32[T, K]
//     y[t, j] = the matmul's y[t, ids[t, j]], bit for bit (the candidates head).
//   cascade_bf16_matmul(x f32[T, in], w bf16[out, in]) -> f32[T, out]          y = x . w^T
//   cascade_bf16_gather_matmul(x f32[T, in], ids s32[T, K], w bf16[out, in]) -> f32[T, K]
#pragma once

#include <memory>
#include <string>

#include "model/programs.h"
#include "pjrt/api.h"
#include "pjrt/client.h"

namespace cascade {
namespace kernels {

inline constexpr char kInt8MatmulTarget[] = "cascade_int8_matmul";
inline constexpr char kInt8GatherMatmulTarget[] = "cascade_int8_gather_matmul";
inline constexpr char kBf16MatmulTarget[] = "cascade_bf16_matmul";
inline constexpr char kBf16GatherMatmulTarget[] = "cascade_bf16_gather_matmul";

struct KernelRegistration {
  bool registered = false;
  std::string reason;  // why not, when !registered
};

// Registers every cascade handler with the plugin, once per loaded plugin (later calls return the
// first outcome). Never throws: a plugin without the FFI extension, or one that refuses the
// handler, gives registered=false and the reason (callers then keep the XLA-only programs).
// CASCADE_FFI_KERNELS=0 in the environment disables it.
KernelRegistration RegisterKernels(const Api& api);

// The matmul mode a program for `precision` on `client` should be emitted with: kAuto on the CPU
// plugin with int8 weights becomes kFfi when our handlers register (registering them, once); bf16
// weights too when the CPU has AVX512_BF16 (else only when asked for; see the .cc for why);
// an explicit kFfi the plugin cannot honour throws PluginIncompatibleError; anything else is
// returned as is.
MatmulMode ChooseMatmulMode(const Client& client, WeightPrecision precision, MatmulMode requested);

// Time spent inside our handlers since the process started (all threads' calls, wall time of
// each call), for profiles: decoder_bench reports it per forward.
struct KernelStats {
  int64_t calls = 0;
  int64_t nanoseconds = 0;
};
KernelStats GetKernelStats();

// The implementations the handlers run (default BestInt8Impl() / BestBf16Impl();
// CASCADE_INT8_KERNEL=scalar|avx2|avx512|avx512vnni and CASCADE_BF16_KERNEL=scalar|avx2|avx512|
// avx512bf16 override them, when the CPU supports it) and the extra threads they ask XLA's
// intra-op pool for (default 1; CASCADE_KERNEL_HELPERS=n).
std::string KernelDescription();

}  // namespace kernels
}  // namespace cascade
