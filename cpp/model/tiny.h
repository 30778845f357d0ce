// The tiny model of the cascade (stage 0; docs/how-the-cascade-works.md, 'The exact algorithm', step 1): a
// two-layer projection from an input row x [d] to a candidate set C = TopK0(logits) of next tokens.
//
//   x      = what the tiny reads (TinyInput, model/programs.h; metadata "input"):
//            "draft_final_hidden" (kDraftHidden, the default fit): the draft's final hidden state
//            at the same position, after its final norm: what the draft's LM head reads. It
//            carries the whole context, so the tiny is a cheap stand-in for the draft's head.
//            "draft_input_embedding" (kInputEmbedding): the draft's input embedding of the last
//            token: exactly what the draft's first layer sees, i.e. the `model.embed_tokens.weight`
//            row (as the draft program holds it: bf16-rounded for bf16 / int8 drafts, f32 for f32
//            drafts), times sqrt(d) for Gemma-family drafts. TinyInputEmbeddings() computes
//            these rows on the host. A function of the last token only: a bigram model.
//   z      = W1 x + b1                                   W1: [hidden, d], b1: [hidden]
//   h      = ReLU(LayerNorm(z) * ln_w + ln_b)            LayerNorm over hidden, eps 1e-5 (biased var)
//   logits = W2 h + b2                                   W2: [vocab, hidden], b2: [vocab]
//   C      = the K0 largest logits (ties: lowest id first, as chlo.top_k)
//
// It is fused into the draft's step (HeadKind::kCandidates in model/programs.h): the draft then
// computes its logits only for those K0 candidates. A kInputEmbedding tiny becomes a table
// token -> K0 candidates evaluated once; a kDraftHidden tiny runs in every draft step after the
// draft's layers, with W2 in int8 (per-row scales; the candidates only shape the proposals, never
// the output, so its rounding costs acceptance at most, not exactness).
//
// File format (safetensors, little-endian F32, canonical [out, in] layout like nn.Linear):
//   proj_in.weight  [hidden, input_dim]     proj_in.bias  [hidden]
//   norm.weight     [hidden]                norm.bias     [hidden]
//   proj_out.weight [vocab, hidden]         proj_out.bias [vocab]
//   __metadata__ (all strings): format = "cascade-xla-tiny", version = "1", input_dim, hidden,
//   vocab (decimal), input = "draft_final_hidden" | "draft_input_embedding" (x as defined above;
//   absent: the input embedding), layer_norm_eps = "1e-05", and optional provenance: draft (the
//   draft it was fitted for, e.g. its file and layer count), draft_family ("llama" | "gemma"), fit
//   (how it was made, e.g. "closed_form_ridge").
// F16 / BF16 tensors are accepted on load (converted to f32).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/programs.h"
#include "model/weights.h"
#include "pjrt/dtype.h"

namespace cascade {

class DecoderModel;

constexpr double kTinyLayerNormEps = 1e-5;
constexpr int64_t kTinyDefaultHidden = 256;
// Written by FitTiny as metadata "fit_version"; the load-time cache refits a tiny of
// another version (a better fit of the same kind).
constexpr const char* kTinyFitVersion = "4";

struct TinyWeights {
  int64_t input_dim = 0, hidden = 0, vocab = 0;
  TinyInput input = TinyInput::kInputEmbedding;
  HostTensor w1, b1, ln_w, ln_b, w2, b2;  // f32, shapes as in the file format above
  // Free-form provenance written to / read from __metadata__ (draft, draft_family, fit, ...);
  // the format keys (format, version, input_dim, hidden, vocab, input, layer_norm_eps) are not
  // kept here.
  std::map<std::string, std::string> metadata;

  int64_t byte_size() const;  // f32 bytes of the six tensors
};

// Throws InvalidArgumentError unless every tensor is f32 with the shape the sizes imply.
void ValidateTiny(const TinyWeights& tiny);
// Throws InvalidArgumentError (naming both sizes) unless input_dim == hidden_size and
// vocab == vocab_size of the draft.
void CheckTinyFitsDraft(const TinyWeights& tiny, const ModelConfig& draft);

// Loads a tiny file. Errors: ModelFormatError naming the file and the tensor / metadata field
// (missing tensor, wrong rank or shape, unsupported dtype, sizes that disagree with the
// metadata, wrong format). With `draft`, also a ModelFormatError when the tiny's input_dim or
// vocab differs from the draft's hidden_size / vocab_size.
// A file with a "checksum" (SaveTiny writes one) must match it; `require_checksum` also refuses
// a file without one (the product's own cache).
TinyWeights LoadTiny(const std::string& path, const ModelConfig* draft = nullptr, bool require_checksum = false);
// Writes a tiny file (atomically: a temporary file renamed into place). Throws
// InvalidArgumentError on inconsistent weights, Error(kModelFormat) on I/O failure.
void SaveTiny(const TinyWeights& tiny, const std::string& path);

// Random weights (for tests): W1, W2 ~ N(0, 1/fan_in) * scale, biases small, ln_w ~ 1.
TinyWeights RandomTiny(int64_t input_dim, int64_t hidden, int64_t vocab, uint32_t seed, float scale = 1.0f,
                       TinyInput input = TinyInput::kInputEmbedding);

// The tiny's input rows e for every token of the draft, f32 [vocab, d], as defined above (bf16
// rounding when `precision` is not kF32, sqrt(d) scaling for Gemma).
HostTensor TinyInputEmbeddings(const ModelWeights& draft, WeightPrecision precision);

// Host reference forward: the tiny's logits for one input row x [input_dim] (double accumulation).
std::vector<float> TinyLogits(const TinyWeights& tiny, const float* x);
// The features h [hidden] for one input row.
std::vector<double> TinyFeatures(const TinyWeights& tiny, const float* x);
// The K largest of `logits` (descending, lowest id first on ties).
std::vector<int32_t> TopKIds(const float* logits, int64_t count, int64_t k);

// The tensors as the programs take them (TinyParamLayout order for tiny.input): W1^T [d, hidden],
// b1, ln_w, ln_b (f32), then W2^T [hidden, vocab] f32 (kInputEmbedding) or, for kDraftHidden,
// W2 in q4 blocks (u8 [vocab, hidden / 2], f16 scales and minimums [vocab, hidden / 32]) when
// hidden is a multiple of 64, else int8 [vocab, hidden] and its f32 row scales; then b2.
std::vector<HostTensor> PrepareTinyParams(const TinyWeights& tiny);
// W2 as a kDraftHidden program computes with it, back in f32 (for host references of the fused
// head and the coverage a fitted tiny will have): q4 blocks as the q4 draft's weights, or each
// row rounded to int8 with scale max|row| / 127.
HostTensor RoundedTinyW2(const TinyWeights& tiny);
// The tiny as a kDraftHidden program holds it: W2 = RoundedTinyW2, and with q4 blocks b2 takes
// the rounding's share at the features' typical value (relu(ln_b)). PrepareTinyParams applies
// this; evaluating the result on the host then measures what the program computes.
void RoundTinyAsProgramHolds(TinyWeights& tiny);

// Knowledge distillation with Adam on the PJRT device (model/tiny_training.h).
struct TinyTrainOptions {
  int64_t steps = 0;             // Adam updates; 0 = no training
  int64_t batch = 128;           // rows per minibatch (at most the training rows)
  double learning_rate = 2e-4;   // Adam's alpha
  double beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8;
  double teacher_temperature = 1.0;  // tau of p = softmax(y / tau)
  // > 0: the teacher is its top `teacher_top_k` tokens only (p renormalised over them, 0
  // elsewhere): coverage asks for the draft's top choices to rank high, and the full KL spends the
  // tiny's capacity on the tail of 49k tokens (measured: it lowers coverage). 0: the full p.
  int64_t teacher_top_k = 0;
  // Whether W2 [vocab, hidden] (all but ~1% of the parameters) is trained too; false trains W1,
  // b1, the LayerNorm and b2 on the closed form's output projection.
  bool train_output = true;
  uint64_t seed = 1;             // minibatch order
  // FitTiny: this share of the training steps (whole sequences, every 1/share-th) is kept out of
  // the training to choose the weights it ends with (coverage at validation_k; the closed form's
  // when no step beats it).
  double validation_share = 0.1;
  int64_t validation_k = 64;
};

struct TinyTrainReport {
  int64_t steps = 0, batch = 0;
  double first_loss = 0, last_loss = 0;  // the KL of the first step / mean of the last epoch's steps
  // With validation rows: (step, coverage at the validation K0) per validation (step 0: the
  // starting weights), and the step whose weights the tiny ends with.
  std::vector<std::pair<int64_t, double>> validation;
  int64_t validation_k = 0, best_step = 0;
  double compile_ms = 0, train_ms = 0;
};

// ---- the fit: closed form, then (optionally) distillation with Adam ----
//
// 1. Data: text the models generate themselves: from random seed tokens, the text model (the
//    draft itself by default, or `text_model`, e.g. the target, whose text is what the cascade
//    commits) samples at `temperature` (0 = greedy) one token at a time, `positions` steps in
//    all, each sequence at most `sequence_length` tokens (and the caches). Each step gives a
//    pair (input row x, the draft's next-token logits y [vocab]) on that text.
// 2. W1, b1: `projection`: kPca = the leading principal directions of the input rows x (the
//    covariance of up to 4,096 rows: sampled uniformly from the vocabulary for the input
//    embedding, the training steps' rows for the hidden state; Jacobi eigensolver), each scaled
//    to unit variance, then random Gaussian rows for hidden > d; kRandom = Gaussian rows scaled
//    to unit total variance. b1 = -W1 mean(x) (centred). LayerNorm weight 1, bias 0.
//    kHeadSvd (the default; kDraftHidden only): the whole tiny in closed form from the draft's
//    head W and the second moment of the training steps' hidden states: a rank-(hidden - 1)
//    stand-in for W x (see FitHeadSvd in tiny.cc); steps 3 is then skipped.
// 3. W2, b2: ridge regression of the centred logits (each y minus its own mean over the
//    vocabulary: logits are shift invariant) on the features h, with an unpenalised intercept:
//    W2^T = (Hc^T Hc + lambda I)^-1 Hc^T Yc, b2 = mean(y) - W2 mean(h), lambda = ridge *
//    trace(Hc^T Hc) / hidden; the hidden x hidden system is solved by Cholesky in double. The
//    sums are grouped by input token for the input embedding (h depends on the token only: host
//    memory ~ distinct input tokens x vocab x 4 bytes); for the hidden state every training step
//    keeps its logits (positions x vocab x 4 bytes, ~240 MB for 1,200 steps at a 49152 vocabulary).
// 4. Evaluation: the last `holdout` share of the positions (whole sequences, generated after
//    the training ones) are not used for fitting; gamma0(K0) = share of those steps whose draft
//    argmax is among the tiny's top-K0.
// 5. Distillation (`train.steps` > 0; kDraftHidden only): from the closed-form weights (their
//    logit scale calibrated first), Adam on the KL from the draft's distribution (or its top k)
//    over the training steps (TrainTinyKd, model/tiny_training.h, a StableHLO program on the
//    draft's PJRT device), `train.validation_share` of them (whole sequences) held back to keep
//    the best weights (the closed form's when no step beats them); W2 is then rounded as the
//    program holds it. The report keeps the closed form's held-out coverage beside the result's.
struct TinyFitOptions {
  enum class Projection { kPca, kRandom, kHeadSvd };
  TinyInput input = TinyInput::kDraftHidden;
  int64_t hidden = kTinyDefaultHidden;
  int64_t positions = 3000;
  int64_t sequence_length = 256;
  double temperature = 1.0;
  // Token ids each sequence starts from, in turn (e.g. chat-formatted requests: the hidden states
  // the tiny meets in use); empty: a random token. The text model continues from the prompt.
  std::vector<std::vector<int32_t>> prompts;
  double ridge = 1e-3;
  double holdout = 0.2;
  Projection projection = Projection::kHeadSvd;
  std::vector<int64_t> eval_k = {8, 64, 256};  // values > vocab are skipped
  uint64_t seed = 1;
  std::string draft_name;  // provenance written into metadata["draft"]
  // Generates the text (same vocabulary; its cache is overwritten); nullptr: the draft.
  DecoderModel* text_model = nullptr;
  TinyTrainOptions train;  // step 5; steps = 0 skips it
  // Called with (phase, done, total): phase "generate" after every generated position, "train"
  // after every Adam step; returning false cancels the fit (it then throws Error(kAborted)).
  std::function<bool(const char*, int64_t, int64_t)> progress;
};

struct TinyFitReport {
  int64_t train_positions = 0, heldout_positions = 0;
  int64_t distinct_train_tokens = 0;
  std::vector<std::pair<int64_t, double>> gamma0;        // (K0, held-out coverage)
  std::vector<std::pair<int64_t, double>> train_gamma0;  // (K0, coverage on the training steps)
  // With distillation: the closed form's held-out coverage (before training), and the training.
  std::vector<std::pair<int64_t, double>> closed_form_gamma0;
  TinyTrainReport train;
  double generate_ms = 0, projection_ms = 0, accumulate_ms = 0, solve_ms = 0, eval_ms = 0;
  double total_ms() const {
    return generate_ms + projection_ms + accumulate_ms + solve_ms + eval_ms + train.compile_ms + train.train_ms;
  }
};

// `draft` must be a DecoderModel of `draft_weights` (its cache is overwritten). Throws
// InvalidArgumentError on bad options.
TinyWeights FitTiny(DecoderModel& draft, const ModelWeights& draft_weights, const TinyFitOptions& options = {},
                              TinyFitReport* report = nullptr);

// The rank of targets[i] among the tiny's logits for inputs[i] (0 = its top candidate; ties
// rank the lower id first, as TopKIds): targets[i] is among the top-k iff rank < k.
std::vector<int64_t> TinyRanks(const TinyWeights& tiny, const HostTensor& input_embeddings,
                               const std::vector<int32_t>& inputs, const std::vector<int32_t>& targets);
// The same for input rows given directly: rows [count, input_dim] (a kDraftHidden tiny's hidden states).
std::vector<int64_t> TinyRanksOfRows(const TinyWeights& tiny, const float* rows, const std::vector<int32_t>& targets);
// gamma0 on given steps: share of `inputs[i]` whose `draft_argmax[i]` is in the tiny's top-k.
double TinyCoverage(const TinyWeights& tiny, const HostTensor& input_embeddings, const std::vector<int32_t>& inputs,
                    const std::vector<int32_t>& draft_argmax, int64_t k);

}  // namespace cascade
