// Knowledge distillation of the tiny model (stage 0; model/tiny.h) from the draft with Adam, run
// as a StableHLO program on the PJRT device: the forward pass, its gradient and the Adam update in
// one program per step, so the same training runs on CPU, GPU and TPU plugins with no Python.
//
// The loss is the KL divergence from the draft's next-token distribution p = softmax(y / tau)
// (optionally only over the draft's top k tokens, TinyTrainOptions::teacher_top_k) to the tiny's
// q = softmax(logits), averaged over the minibatch:
//   loss = mean_b sum_v p[b,v] (log p[b,v] - log q[b,v]),   d loss / d logits = (q - p) / B.
// The backward pass through the tiny (projection -> LayerNorm -> ReLU -> projection) is written out
// by hand (TinyTrainStepProgram in tiny_training.cc, each line names the gradient it computes) and
// tested against central finite differences of the host forward (tiny_train test).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/tiny.h"
#include "pjrt/client.h"

namespace cascade {

// The text of one training step for a tiny of (input_dim d, hidden H, vocab V) on minibatches of
// B rows. Parameters, in order:
//   0-5   w1 [H, d], b1 [H], ln_w [H], ln_b [H], w2 [V, H], b2 [V]   (the file's layout)
//   6-11  Adam's first moments of the six, same shapes
//   12-17 Adam's second moments of the six
//   18    x [B, d]       the tiny's input rows
//   19    y [B, V]       the draft's logits at those rows (any shift per row)
//   20    step_size []   alpha sqrt(1 - beta2^t) / (1 - beta1^t), for step t = 1, 2, ...
//   21    threshold [B]  only with teacher_top_k > 0: each row's k-th largest y / tau (the host
//                        finds it once per row: XLA's top-k over the vocabulary costs ~5x the step)
// Results: the 18 updated tensors (params 0-17 are donated to them), then the loss [] before
// the update.
std::string TinyTrainStepProgram(int64_t d, int64_t H, int64_t V, int64_t B, const TinyTrainOptions& options);

// The text of the validation program: params 0-5 as above, x [N, d], ids s32[N] -> ranks s32[N],
// the rank of ids[n] among the tiny's logits for x[n] (0 = its top; ties rank the lower id
// first, as TopKIds), i.e. ids[n] is in the top k iff rank < k.
std::string TinyRanksProgram(int64_t d, int64_t H, int64_t V, int64_t N);

// Rows the training does not learn from, to choose the weights it ends with (early stopping).
struct TinyValidation {
  const float* rows = nullptr;    // [count, input_dim]
  const int32_t* ids = nullptr;   // [count]: the draft's choice at each row
  int64_t count = 0;
  int64_t k = 64;                 // the weights with the highest coverage at this K0 are kept
  int64_t every = 0;              // steps between validations; 0: once per epoch
};

// Trains `tiny` (any TinyInput kind; its rows x are given) in place on (rows[i], logits[i]),
// i < count: rows [count, input_dim], logits [count, vocab]. Starts from the tiny's current
// weights (e.g. a closed-form fit) with zero moments; minibatches are drawn without replacement,
// reshuffled every epoch. With `validation`, the coverage of the validation rows is measured
// before the first step and every `validation->every` steps, and the tiny ends with the weights
// that covered most (the starting weights when no step improves on them: the report's best_step
// is then 0). `progress(done, total)` after every step; returning false cancels (Error(kAborted)).
// Throws InvalidArgumentError on bad options or shapes.
// `use`: the rows (indices < count) it learns from; empty: all of them.
void TrainTinyKd(Client& client, TinyWeights& tiny, const float* rows, const float* logits, int64_t count,
                 const TinyTrainOptions& options, const std::function<bool(int64_t, int64_t)>& progress = {},
                 TinyTrainReport* report = nullptr, const TinyValidation* validation = nullptr,
                 const std::vector<int64_t>& use = {});

// Host reference of the loss above for one batch (double accumulation; for tests).
double TinyKdLoss(const TinyWeights& tiny, const float* rows, const float* logits, int64_t count,
                  double teacher_temperature, int64_t teacher_top_k = 0);

}  // namespace cascade
