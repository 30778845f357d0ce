// The greedy head's argmax over a kQ8Bf16 head (the default bf16q4 target's: the bf16 weights of
// a Q8_0 embedding) without every logit computed exactly: the same ids as ArgmaxRows over
// TeamMatmul's logits, bit for bit, for about half of the head's time at T = 1.
//
// Why: building the bf16 A tiles from the 8-bit blocks costs ~8 vector uops per row and 32
// inputs, which made the head (28 MB) ~1.2-1.5 ms of a 4.3-5.4 ms decode step, compute-bound
// rather than bandwidth-bound (docs/bench/decoder.md session 16). Greedy decoding only needs the
// argmax, so:
//   1. every row's logit approximately, A_r: the bytes times the activations rounded to int16
//      (vpmaddwd: ~4 uops per row and 32 inputs), with a rigorous bound E_r on |exact - A_r|
//      from the block scales alone (the bf16 rounding of d * q, the int16 rounding of x, f32
//      rounding in both sums; derivation at ApproximateLogits in head_argmax.cc);
//   2. the rows that can still hold the largest exact logit, A_r + E_r >= max_s (A_s - E_s),
//      computed exactly by the head's own kernel (MatmulRange on their 16-row panels, so each
//      value is the one TeamMatmul gives), and the argmax taken among them.
// Every other row's exact logit is strictly below that of the row with the largest A - E, so the
// answer (the lowest index holding the largest value) is ArgmaxRows's. On SmolLM2's text 1-2
// rows qualify on average (at most ~20 seen). Non-finite activations or scales, too many
// candidates, T > 1, or a CPU without the AVX-512 bf16 dot: the full head and ArgmaxRows.
#pragma once

#include <cstdint>

#include "kernels/int8_matmul.h"

namespace cascade {
namespace kernels {

class ThreadTeam;

// What one call did (tests and benchmarks check that the bounded path runs).
struct HeadArgmaxStats {
  bool bounded = false;     // took the approximate pass and the exact candidates
  int64_t candidates = 0;   // rows computed exactly there (of the last token)
};

// ids[t] = ArgmaxRows of row t of x[T, m.in] . W^T for a kQ8Bf16 matrix m.
void Q8Bf16HeadArgmax(const WeightMatrix& m, const KernelImpls& impls, const float* x, int64_t T, int32_t* ids,
                      ThreadTeam& team, HeadArgmaxStats* stats = nullptr);

}  // namespace kernels
}  // namespace cascade
