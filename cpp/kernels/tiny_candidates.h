// The tiny model's candidates in one kernel (the cascade_tiny_candidates custom call,
// kernels/ffi_handlers.h), for a tiny on the draft's hidden state (model/tiny.h):
//   ids[t, :] = the k largest of W2 ReLU(LayerNorm(W1 x_t + b1) * ln_w + ln_b) + b2, largest first,
//   lower id first among equal logits (chlo.top_k's order).
// As a plain program this is a dot, a LayerNorm, an int8 matmul over the vocabulary and XLA's
// top-k over [T, vocab]; here the logits never leave the cache and the top-k is one pass with a
// running threshold. The candidates only choose which proposals the draft may make (the
// acceptance test keeps the output exact whatever they are), so this kernel need not match the
// plain program bit for bit.
#pragma once

#include <cstdint>

#include "kernels/int8_matmul.h"

namespace cascade {
namespace kernels {

class ThreadTeam;

struct TinyParams {
  const float* w1t = nullptr;       // [d, hidden] (W1 transposed)
  const float* b1 = nullptr;        // [hidden]
  const float* ln_w = nullptr;      // [hidden]
  const float* ln_b = nullptr;      // [hidden]
  // W2 [vocab, hidden]: int8 with per-row scales, or (w2_q4) 4-bit blocks as the q4 draft's
  // (kernels/int8_matmul.h: u8 [vocab, hidden / 2], f16 scales and minimums [vocab, hidden / 32]).
  bool w2_q4 = false;
  const void* w2 = nullptr;
  const float* w2_scale = nullptr;             // int8: [vocab]
  const uint16_t* w2_block_scale = nullptr;    // q4
  const uint16_t* w2_block_min = nullptr;      // q4
  const float* b2 = nullptr;        // [vocab]
  int64_t d = 0, hidden = 0, vocab = 0;
  float eps = 1e-5f;
};

// x [T, d] -> ids [T, k] (1 <= k <= vocab). The vocabulary matmul runs on `team`.
void TinyCandidates(const TinyParams& p, const KernelImpls& impls, const float* x, int64_t T, int64_t k, int32_t* ids,
                    ThreadTeam& team);

// The k largest of values[0, n) as ids, largest first, lower id first on ties (NaN counts as -inf).
void TopKIds(const float* values, int64_t n, int64_t k, int32_t* ids);

}  // namespace kernels
}  // namespace cascade
