// StableHLO decoder programs for a ModelConfig (Llama and Gemma families), emitted with
// hlo::Function. One program runs T new tokens through the model against a KV cache that stays
// on the device, and returns what the caller asked for (the "head").
//
// Parameters of @main, in this order:
//   1. the weights, in ModelParamLayout(config, precision, spec.layer_arena) order: one param per
//      canonical tensor (an INT8 matrix is two params: its s8 values, then its f32 per-row scales;
//      a q4 matrix three), or with layer arenas one u8 param per layer in place of its tensors;
//   2. k_cache, v_cache: kv_dtype[layers, kv_heads, C, head_dim], aliased with results 0 and 1
//      (`tf.aliasing_output`), so XLA updates them in place and the caller's buffers are donated;
//   3. tokens s32[T];
//   4. start_pos s32[]: the new tokens occupy cache slots start_pos .. start_pos+T-1 (and RoPE
//      positions start_pos+i); the caller keeps start_pos + T <= C (XLA would clamp otherwise);
//   5. only for HeadKind::kTokenLogprob: target_ids s32[T];
//   6. only with tree_mask: tree_mask pred[T,T] (new token i may attend new token j, j <= i; the
//      diagonal is always allowed) and position_offsets s32[T] (RoPE position = start_pos +
//      offset[i], e.g. the depth of token i in the tree).
//   7. only for HeadKind::kCandidates, by what the tiny reads (TinyInput below, model/tiny.h):
//      kInputEmbedding: candidate_table s32[vocab, K0], row t = the tiny model's top-K0 ids for
//      input token t. Its input is the embedding of the last token, so its candidates are a
//      function of that token alone: DecoderModel evaluates the tiny once per vocabulary entry
//      (EmitTinyTableProgram) and a draft step gathers one row.
//      kDraftHidden: the tiny's params (TinyParamLayout; W2 in q4 blocks or int8), run in the
//      program on each token's final hidden state (after the final norm: the head's input).
// Attention: query i sees cache slots 0 .. start_pos+i (slots beyond are masked, whatever they
// hold), further restricted to tree_mask inside the new block. So rolling the cache back after a
// rejected speculation is free: the next call simply starts at an earlier start_pos and
// overwrites the stale slots. (After a tree verify, the accepted path is not contiguous in the
// cache: re-run the accepted tokens from the first branch slot to compact it.)
//
// Results: k_cache, v_cache, then the head outputs (HeadOutputs lists them).
//
// Precision (weights; activations, norms, softmax and the residual stream are always f32):
//   kF32:  every tensor f32, matrices (and the embedding / tied head) stored transposed, [in,
//          out]: XLA CPU runs x[T,in] . W[in,out] as a fast GEMM, while x . W[out,in]^T with
//          T >= 2 took ~10x longer (measured: 30 ms vs 350 ms for the 49152x576 head at T=4).
//          The embedding lookup then gathers columns of [d, vocab].
//   kBF16: matrices and the embedding bf16, canonical [out, in] layout (the tied head reads the bf16 embedding); norm
//          weights f32 (tiny, and where rounding would cost most).
//   kInt8: the linear matrices (q/k/v/o, gate/up/down, an untied lm_head) s8 with one f32 scale
//          per output row: s_c = max|W_c| / 127, W_int8 = round(W / s_c); the program computes
//          (x . W_int8) * s (s8 upcast exactly to f32 or bf16 per MatmulMode, the scale applied to
//          the output). The
//          embedding stays bf16: its rows are gathered, not multiplied. A tied head gets an int8
//          copy of its own (param lm_head.weight, quantised per vocabulary row), so the lookup
//          is not quantised while the head's matmul reads half the bytes. Norm weights f32.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "pjrt/dtype.h"

namespace cascade {

// kQ4: the layer matrices in 4-bit blocks (kernels::kQ4Block, GGUF's Q4_1), the head int8 (as
// kInt8's), the embedding bf16: a draft's precision (a step reads ~5 bits per layer weight).
// kBF16Q4: kBF16's arithmetic and weights (the bf16 rounding of each weight), the layer matrices
// stored as kQ4's blocks and expanded in registers: for a model whose weights come from 4-bit
// blocks (a Q4_1 GGUF), the bf16 target bit for bit at ~5 bits a layer weight instead of 16.
// The upload refuses a tensor whose blocks do not hold its bf16 weights exactly
// (kernels::Q4HoldsBf16Exactly). The embedding as kBF16's; the head (lm_head, or a tied
// embedding's copy) stored as 8-bit blocks (GGUF's Q8_0: the default SmolLM2 file's embedding)
// expanded to its bf16 weights likewise (kernels::QuantizeQ8Rows says whether they hold them).
enum class WeightPrecision { kF32, kBF16, kInt8, kQ4, kBF16Q4 };
const char* WeightPrecisionName(WeightPrecision precision);  // "f32", "bf16", "int8", "q4", "bf16q4"
// The inverse of WeightPrecisionName; false when the name is none of them.
bool ParseWeightPrecision(const std::string& name, WeightPrecision* precision);

// How a matmul against low-precision (bf16 / int8) weights is written. Both are exact in the
// weights; they differ in what XLA does with the activations and how fast it runs per backend.
enum class MatmulMode {
  kAuto,             // the measured fastest on XLA CPU: kUpcastWeights for T=1, kBF16Activations for T>=2
  kUpcastWeights,    // weights -> f32, f32 x f32 dot
  kBF16Activations,  // activations -> bf16, bf16 x bf16 dot with f32 result (s8 -> bf16 is exact)
  // int8 and bf16 matrices (and the tied bf16 head) through our FFI kernels (custom calls
  // cascade_int8_matmul / cascade_bf16_matmul, kernels/ffi_handlers.h) for T <= kFfiMaxTokens:
  // the weights are read in their stored type, never converted in memory. Needs the handlers
  // registered with the plugin (kernels::RegisterKernels); DecoderModel picks it for kAuto with
  // int8 weights, and bf16 ones on CPUs with AVX512_BF16 (ChooseMatmulMode).
  // T > kFfiMaxTokens as kAuto.
  kFfi,
  kXlaAuto,  // kAuto's choice without the FFI kernel (XLA ops only, whatever the plugin offers)
  // The whole layer stack as one custom call (cascade_decoder_layers, kernels/decoder_layers.h)
  // for T <= kFfiMaxTokens with an f32 or bf16 KV cache, every weight precision; the LM head through
  // the matmul custom calls (f32 too: cascade_f32t_matmul). kAuto's choice on the CPU plugin
  // when the handlers register (ChooseMatmulMode). Other T as kAuto.
  kFused,
};
constexpr int64_t kFfiMaxTokens = 64;

struct WeightParam {
  // kQ4Values u8 [out, in / 2], kQ4Scales and kQ4Mins f16 [out, in / 32] (kernels/int8_matmul.h).
  // kLayerArena: u8 [bytes], one layer's weights in one buffer (LayerArenaPieces).
  // kQ8Values / kQ8Scales: s8 [out, in] and f16 [out, in / 32] (GGUF's Q8_0 blocks; kBF16Q4's head).
  enum class Role { kDense, kInt8Values, kInt8Scales, kQ4Values, kQ4Scales, kQ4Mins, kQ8Values, kQ8Scales, kLayerArena };
  std::string tensor;  // the canonical tensor it comes from (model/config.h)
  Role role = Role::kDense;
  DType dtype = DType::kF32;
  std::vector<int64_t> dims;  // as uploaded (transposed when `transposed`)
  // Stored as W^T [in, out] (the embedding as [d, vocab]) instead of the canonical [out, in].
  bool transposed = false;
  std::string name() const;  // tensor, or tensor + ":int8" / ":scale"
};

// The weight parameters of every decoder program for (config, precision), in param order:
// embed_tokens; per layer input_layernorm, q, k, v, o, post_attention_layernorm, gate, up, down;
// model.norm; lm_head (when untied, and kInt8's copy of a tied head).
std::vector<WeightParam> WeightParamLayout(const ModelConfig& config, WeightPrecision precision);

// The weights of a model whose programs take layer arenas (ProgramSpec::layer_arena): each layer's
// "model.layers.<l>.*" params of WeightParamLayout, in that order, packed into one u8 buffer per
// layer at the offsets kernels/decoder_layers.h (ArenaLayer) reads them from. The fused layer call
// then takes one operand per layer instead of ~23 (q4 SmolLM2: ~700 in all), and programs with
// more tokens than the fused call takes slice their weights out of the arenas.
struct ArenaPiece {
  size_t param = 0;  // index into WeightParamLayout
  int64_t layer = 0;
  int64_t offset = 0, bytes = 0;  // within the layer's arena
};
std::vector<ArenaPiece> LayerArenaPieces(const ModelConfig& config, WeightPrecision precision);
// How the arena holds `param` when not in its upload layout (kernels/int8_matmul.h): an f32 matrix
// (upload layout [in, out]) as kernels::WeightMatrix::Kind::kF32Panels; int8 values (s8 [out, in])
// as kInt8Panels where every layer matrix's input size is a multiple of 32.
enum class ArenaPacking { kAsUploaded, kF32Panels, kInt8Panels };
ArenaPacking ArenaPackingOf(const ModelConfig& config, const WeightParam& param, WeightPrecision precision);
int64_t LayerArenaBytes(const ModelConfig& config, WeightPrecision precision);  // of one layer's arena
// WeightParamLayout with each layer's params replaced by one kLayerArena param ("model.layers.<l>")
// when `layer_arena`: the params a model's programs take, in order.
std::vector<WeightParam> ModelParamLayout(const ModelConfig& config, WeightPrecision precision, bool layer_arena);
// Whether a model's programs take the layer arena: the fused layer stack (any KV cache type).
bool UsesLayerArena(MatmulMode chosen);
// The element type a KV cache of `kv_dtype` is stored as. A bf16 cache of the fused layer stack
// (layer_arena) is u16 holding bf16 bits: XLA CPU's float normalization turned each step's
// dynamic-update-slice of a bf16 cache into a convert of the whole cache to f32 and back
// (decoder_bench at 1,024 slots: +1.7 ms a q4 step); an integer cache is only moved. Programs
// read it as bf16 (bitcast) wherever they compute with it.
DType KvCacheStorage(DType kv_dtype, bool layer_arena);

// Checks that the config is one we can emit (positive sizes, heads divisible by kv heads, even
// head_dim, ...). Throws InvalidArgumentError naming the field.
void ValidateDecoderConfig(const ModelConfig& config);

enum class HeadKind {
  kLogits,        // logits f32[T, vocab]
  kArgmax,        // argmax s32[T]
  kTopK,          // values f32[T, k] (logits, descending), indices s32[T, k], logsumexp f32[T]
  kTokenLogprob,  // extra input target_ids s32[T] -> logprob f32[T] (log softmax at target_ids), argmax s32[T]
  // The cascade draft head (brief 5.1-5.2), k = K0: per token, the tiny's candidates C = top-K0
  // of the tiny's logits on the token's input embedding (extra tiny params, see 7. above), then
  // the draft's logits for those K0 ids only (K0 gathered rows of the LM head, no full-vocabulary
  // matmul): candidate_ids s32[T, K0] (tiny order: its logits descending), candidate_logits
  // f32[T, K0] (the draft's logits at those ids), candidate_argmax s32[T] (the id of the largest
  // candidate logit, first candidate on ties: the greedy proposal). With HeadSpec::full_argmax
  // also full_argmax s32[T], the argmax of the full head (costs the full matmul: for measuring
  // gamma0 on a sample of steps).
  kCandidates,
  // The final hidden state f32[T, d] (after the final norm: what the LM head reads) and the
  // logits f32[T, vocab]: the data a kDraftHidden tiny is fitted on.
  kHidden,
};

// What the tiny model (stage 0, model/tiny.h) reads.
enum class TinyInput {
  kInputEmbedding,  // the last token's input embedding: the candidates are a per-token table
  kDraftHidden,     // the draft's final hidden state at the same position: sees the context
};
const char* TinyInputName(TinyInput input);  // "draft_input_embedding" | "draft_final_hidden"
const char* HeadKindName(HeadKind kind);

struct HeadSpec {
  HeadKind kind = HeadKind::kLogits;
  int64_t k = 0;  // kTopK; kCandidates: K0
  bool full_argmax = false;  // kCandidates only: also return the unrestricted argmax
  bool operator<(const HeadSpec& o) const {
    if (kind != o.kind) return kind < o.kind;
    if (k != o.k) return k < o.k;
    return full_argmax < o.full_argmax;
  }
  bool operator==(const HeadSpec& o) const { return kind == o.kind && k == o.k && full_argmax == o.full_argmax; }
};

struct ProgramSpec {
  int64_t num_tokens = 1;    // T: prefill T, decode 1, verify k
  int64_t max_context = 0;   // C: cache slots
  HeadSpec head;
  bool tree_mask = false;    // adds the tree_mask and position_offsets inputs
  WeightPrecision precision = WeightPrecision::kF32;
  DType kv_dtype = DType::kF32;  // f32 or bf16
  MatmulMode matmul = MatmulMode::kAuto;
  bool layer_arena = false;  // each layer's weights come as one arena param (ModelParamLayout)
  // The tiny model (kCandidates, and EmitTinyTableProgram): its hidden width and input.
  int64_t tiny_hidden = 0;
  TinyInput tiny_input = TinyInput::kInputEmbedding;
};

// The tiny model's params: after the embedding and the tokens of a tiny table program
// (kInputEmbedding: all f32, W1 and W2 transposed), or in a kCandidates program after the
// other inputs (kDraftHidden: W1^T f32, then W2 in q4 blocks [vocab, hidden / 2] with f16 scales
// and minimums [vocab, hidden / 32] when TinyW2InQ4(hidden), else int8 [vocab, hidden] with f32
// scales [vocab]).
bool TinyW2InQ4(int64_t tiny_hidden);  // hidden % 64 == 0 (kernels/int8_matmul.h, the q4 blocks)
std::vector<WeightParam> TinyParamLayout(const ModelConfig& config, int64_t tiny_hidden,
                                         TinyInput input = TinyInput::kInputEmbedding);

// kv_dtype[layers, kv_heads, C, head_dim]
std::vector<int64_t> KvCacheDims(const ModelConfig& config, int64_t max_context);

// Types of the head outputs (results 2..) of a program.
struct HeadOutput {
  std::string name;
  DType dtype;
  std::vector<int64_t> dims;
};
std::vector<HeadOutput> HeadOutputs(const ModelConfig& config, const ProgramSpec& spec);

// The whole module text. Throws InvalidArgumentError on a bad config or spec.
std::string EmitDecoderProgram(const ModelConfig& config, const ProgramSpec& spec);

// The tiny's candidate table for `rows` tokens: params the embedding (its WeightParamLayout
// param for `precision`), tokens s32[rows], the tiny (TinyParamLayout, f32); result s32[rows, k],
// each row the top-k ids of W2 ReLU(LayerNorm(W1 e + b1)) + b2, largest first.
std::string EmitTinyTableProgram(const ModelConfig& config, WeightPrecision precision, int64_t tiny_hidden,
                                 int64_t rows, int64_t k);

}  // namespace cascade
