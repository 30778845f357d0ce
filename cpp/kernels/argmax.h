// The greedy head's argmax over a row of logits as one kernel (the cascade_argmax custom call,
// kernels/ffi_handlers.h). XLA CPU compiles the StableHLO argmax (a variadic reduce of value and
// index, hlo/builder.cc Function::Argmax) to a scalar loop: ~80 us per 49,152-logit row, 0.55 ms
// of a verify(7) step (decoder_bench --head, session 9). This is two vector passes over the row.
//
// Same answer as that reduce: the lowest index holding the row's largest value; a row with a NaN
// gives its first NaN (the reducer prefers NaN); -inf everywhere gives 0. Each row on its own, so a
// verify(T)'s rows match decode(1)'s.
#pragma once

#include <cstdint>

namespace cascade {
namespace kernels {

// ids[t] = argmax of x[t * n .. t * n + n) for t < T (n >= 1).
void ArgmaxRows(const float* x, int64_t T, int64_t n, int32_t* ids);

// The plain loop ArgmaxRows must agree with (kernels_test compares them).
int32_t ArgmaxScalar(const float* row, int64_t n);

}  // namespace kernels
}  // namespace cascade
