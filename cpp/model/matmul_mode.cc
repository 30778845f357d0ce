#include "model/matmul_mode.h"

#include <string>

#include "kernels/ffi_handlers.h"
#include "pjrt/errors.h"

namespace cascade {

MatmulMode ChooseMatmulMode(const Client& client, WeightPrecision precision, MatmulMode requested) {
  if (requested != MatmulMode::kAuto && requested != MatmulMode::kFfi && requested != MatmulMode::kFused)
    return requested;
  // The handlers are registered for XLA's CPU platform only.
  std::string why;
  if (client.platform_name() != "cpu") {
    why = "our FFI kernels run on the CPU plugin only, not on " + client.platform_name();
  } else {
    kernels::KernelRegistration r = kernels::RegisterKernels(client.api());
    if (r.registered) {
      // kAuto: the fused layer stack for every precision (decoder_bench, issue #13: f32 / bf16 /
      // int8 decode(1) 40.5 / 25.5 / 19.9 ms through XLA with per-matrix kernels; see
      // docs/bench/ for the fused figures).
      if (requested == MatmulMode::kAuto || requested == MatmulMode::kFused) return MatmulMode::kFused;
      // kFfi: per-matrix custom calls; f32 weights have none there (XLA's GEMMs).
      return precision == WeightPrecision::kF32 ? MatmulMode::kAuto : MatmulMode::kFfi;
    }
    why = r.reason;
  }
  if (requested == MatmulMode::kFfi) throw PluginIncompatibleError("matmul mode ffi: " + why);
  if (requested == MatmulMode::kFused) throw PluginIncompatibleError("matmul mode fused: " + why);
  return MatmulMode::kAuto;
}

}  // namespace cascade
