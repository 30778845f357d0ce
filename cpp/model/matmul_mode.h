// Which matmul path a program is emitted with, per plugin and weight precision: the dispatch
// policy between XLA's own code and our kernels (cpp/kernels), kept here so that the kernels know
// nothing of programs and models.
#pragma once

#include "model/programs.h"
#include "pjrt/client.h"

namespace cascade {

// The matmul mode a program for `precision` on `client` should be emitted with. On the CPU plugin,
// when our FFI handlers register (registering them once): kAuto and kFused give kFused, the whole
// layer stack in one custom call, for every precision (decoder_bench: the fastest there; see
// docs/precision.md); kFfi gives per-matrix custom calls (kAuto for f32, which has none). On other
// plugins, or when the handlers do not register, kAuto stays kAuto and an explicit kFfi or kFused
// throws PluginIncompatibleError saying why. Other modes are returned as they are.
MatmulMode ChooseMatmulMode(const Client& client, WeightPrecision precision, MatmulMode requested);

}  // namespace cascade
