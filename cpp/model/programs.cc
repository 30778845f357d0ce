#include "model/programs.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <map>

#include "hlo/builder.h"
#include "kernels/decoder_layers.h"
#include "kernels/ffi_handlers.h"
#include "pjrt/errors.h"

namespace cascade {
namespace {

// An f32 custom-call attribute as MLIR text, with every digit the float needs to read back exactly.
std::string F32Attribute(float v) {
  char text[64];
  std::snprintf(text, sizeof(text), "%.9e : f32", v);
  return text;
}

using hlo::CompareDirection;
using hlo::Value;

std::string Layer(int64_t i, const char* rest) { return "model.layers." + std::to_string(i) + "." + rest; }

bool IsMatrix(const std::string& name) {
  for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    if (name.find(m) != std::string::npos) return true;
  return name == "lm_head.weight";
}

kernels::WeightMatrix::Kind ArenaMatrixKind(const ModelConfig& c, WeightPrecision precision) {
  switch (precision) {
    case WeightPrecision::kF32: return kernels::WeightMatrix::Kind::kF32Panels;
    case WeightPrecision::kBF16: return kernels::WeightMatrix::Kind::kBf16;
    case WeightPrecision::kInt8:
      // Panels of 16 rows take whole 32-blocks of inputs (kernels/int8_matmul.h); any other
      // shape keeps the rows as uploaded.
      return c.hidden_size % 32 == 0 && (c.num_heads * c.head_dim) % 32 == 0 && c.intermediate_size % 32 == 0
                 ? kernels::WeightMatrix::Kind::kInt8Panels
                 : kernels::WeightMatrix::Kind::kInt8;
    case WeightPrecision::kQ4: return kernels::WeightMatrix::Kind::kQ4;
    case WeightPrecision::kBF16Q4: return kernels::BlockStoredBf16Kind();
  }
  return kernels::WeightMatrix::Kind::kF32Transposed;
}

// The layer index of a "model.layers.<l>.*" param, else -1.
int64_t LayerOf(const WeightParam& p) {
  static const std::string kPrefix = "model.layers.";
  if (p.tensor.rfind(kPrefix, 0) != 0) return -1;
  return std::stoll(p.tensor.substr(kPrefix.size()));
}

// Where each weight param lives in @main's param list.
struct WeightRef {
  Value w;                   // dense weight, or int8 / q4 values
  std::optional<Value> scale;  // int8 per row, q4 per block (f16)
  std::optional<Value> min;    // q4 per block (f16)
  bool transposed = false;     // w is [in, out]
  // w is flat, in panels as its layer arena holds it (ArenaPackingOf): f32 [in * out], W^T as
  // kernels::WeightMatrix::Kind::kF32Panels, its shape [in, out] in panel_dims; or s8 [out * in]
  // as kInt8Panels, its shape [out, in] in panel_dims.
  bool panels = false;
  kernels::WeightMatrix::Kind panel_kind = kernels::WeightMatrix::Kind::kF32Panels;
  std::vector<int64_t> panel_dims;
};

class Emitter {
 public:
  Emitter(const ModelConfig& c, const ProgramSpec& s) : c_(c), s_(s) {
    if (s.matmul == MatmulMode::kFused && !s.layer_arena)
      throw InvalidArgumentError("programs: the fused layer stack takes its weights as the layer arena "
                                 "(ProgramSpec::layer_arena)");
    fused_ = s.matmul == MatmulMode::kFused && s.num_tokens <= kFfiMaxTokens;
    ffi_ = s.matmul == MatmulMode::kFfi || s.matmul == MatmulMode::kFused;
    mode_ = s.matmul;
    if (mode_ == MatmulMode::kAuto || mode_ == MatmulMode::kFfi || mode_ == MatmulMode::kXlaAuto ||
        mode_ == MatmulMode::kFused)
      // Measured on XLA CPU (decoder_bench, 49152x576 head): at T=1 the upcast fuses into the
      // matrix-vector loop (bf16: 2.8 ms vs 5.4 ms); at T>=2 only the bf16 x bf16 -> f32 dot
      // stays a GEMM (20 ms vs 400+ ms).
      mode_ = s.num_tokens == 1 ? MatmulMode::kUpcastWeights : MatmulMode::kBF16Activations;
  }

  std::string Emit() {
    const int64_t T = s_.num_tokens, C = s_.max_context;
    AddParams(ModelParamLayout(c_, s_.precision, s_.layer_arena));
    std::vector<int64_t> kv_dims = KvCacheDims(c_, C);
    const DType storage = KvCacheStorage(s_.kv_dtype, s_.layer_arena);
    Value k_cache = f_.Param("k_cache", storage, kv_dims, 0);
    Value v_cache = f_.Param("v_cache", storage, kv_dims, 1);
    Value tokens = f_.Param("tokens", DType::kS32, {T});
    Value start = f_.Param("start_pos", DType::kS32, {});
    std::optional<Value> target_ids, tree, offsets;
    if (s_.head.kind == HeadKind::kTokenLogprob) target_ids = f_.Param("target_ids", DType::kS32, {T});
    if (s_.tree_mask) {
      tree = f_.Param("tree_mask", DType::kPred, {T, T});
      offsets = f_.Param("position_offsets", DType::kS32, {T});
    }
    const bool candidates = s_.head.kind == HeadKind::kCandidates;
    const bool tiny_in_program = candidates && s_.tiny_input == TinyInput::kDraftHidden;
    std::optional<Value> table;  // s32[vocab, K0]: the tiny's candidates per input token
    if (candidates && !tiny_in_program) table = f_.Param("candidate_table", DType::kS32, {c_.vocab_size, s_.head.k});
    if (tiny_in_program) AddParams(TinyParamLayout(c_, s_.tiny_hidden, s_.tiny_input));

    Value h = Embed(tokens);

    // RoPE tables for the T positions.
    Value start_t = f_.BroadcastInDim(start, {T}, {});
    Value pos = f_.Add(start_t, offsets ? *offsets : f_.Iota(DType::kS32, {T}, 0));
    RopeTables(pos);

    // Attention mask [T, C]: slot c is visible to new token t iff c <= start_pos + t, and inside
    // the new block also iff tree_mask[t, c - start_pos] (diagonal forced on).
    Value slot = f_.Iota(DType::kS32, {T, C}, 1);
    Value last = f_.Add(f_.BroadcastInDim(start, {T, C}, {}), f_.Iota(DType::kS32, {T, C}, 0));
    Value mask = f_.Compare(CompareDirection::kLe, slot, last);
    if (tree) {
      Value eye = f_.Compare(CompareDirection::kEq, f_.Iota(DType::kS32, {T, T}, 0), f_.Iota(DType::kS32, {T, T}, 1));
      Value block = f_.Or(*tree, eye);
      Value full = f_.DynamicUpdateSlice(f_.Constant(DType::kPred, 1, {T, C}), block, {Zero(), start});
      mask = f_.And(mask, full);
    }

    if (fused_) {
      h = FusedLayers(h, tree, start, k_cache, v_cache);
    } else {
      for (int64_t l = 0; l < c_.num_layers; ++l) {
        Value x = Norm(h, Layer(l, "input_layernorm.weight"));
        h = f_.Add(h, Attention(l, x, mask, start, k_cache, v_cache));
        x = Norm(h, Layer(l, "post_attention_layernorm.weight"));
        h = f_.Add(h, Mlp(l, x));
      }
    }
    if (!fused_) h = Norm(h, "model.norm.weight");  // the fused call ends with it
    const std::string head_name = weights_.count("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight";
    const bool full_head = !candidates || s_.head.full_argmax;
    // A greedy head over 8-bit blocks (bf16q4's) goes to one kernel that needs no logits.
    const std::optional<Value> q8_argmax = s_.head.kind == HeadKind::kArgmax ? Q8HeadArgmax(h, head_name) : std::nullopt;
    Value logits = full_head && !q8_argmax ? Linear(h, head_name) : Value{};  // [T, V]

    std::vector<Value> results = {k_cache, v_cache};
    switch (s_.head.kind) {
      case HeadKind::kLogits:
        results.push_back(logits);
        break;
      case HeadKind::kArgmax:
        results.push_back(q8_argmax ? *q8_argmax : HeadArgmax(logits));
        break;
      case HeadKind::kTopK: {
        auto top = f_.TopK(logits, s_.head.k);
        results.push_back(top.first);
        results.push_back(top.second);
        results.push_back(f_.LogSumExp(logits, 1));
        break;
      }
      case HeadKind::kTokenLogprob:
        results.push_back(f_.Sub(f_.TakeAlongLastDim(logits, *target_ids), f_.LogSumExp(logits, 1)));
        results.push_back(HeadArgmax(logits));
        break;
      case HeadKind::kHidden:
        results.push_back(h);
        results.push_back(logits);
        break;
      case HeadKind::kCandidates: {
        Value ids = tiny_in_program ? TinyCandidates(h, s_.head.k)  // [T, K0]
                                    : f_.GatherRows(*table, tokens);
        Value cand = CandidateLogits(h, head_name, ids);       // [T, K0]
        results.push_back(ids);
        results.push_back(cand);
        // cascade_argmax on the CPU plugin (the same ids): XLA's reduce over K0 candidates would
        // take the draft step past the plugin's cheap-program mark (FusedLayers).
        results.push_back(f_.TakeAlongLastDim(ids, HeadArgmax(cand)));
        if (s_.head.full_argmax) results.push_back(HeadArgmax(logits));
        break;
      }
    }
    f_.Return(results);
    return f_.ToText();
  }

  // The tiny's candidate table rows for tokens s32[T]: params the embedding (as in
  // WeightParamLayout), tokens, then the tiny (TinyParamLayout); result s32[T, K0].
  std::string EmitTinyTable() {
    for (const WeightParam& p : WeightParamLayout(c_, s_.precision))
      if (p.tensor == "model.embed_tokens.weight") {
        if (p.role != WeightParam::Role::kDense) throw InvalidArgumentError("programs: the embedding must be dense");
        weights_[p.tensor].w = f_.Param(p.name(), p.dtype, p.dims);
        weights_[p.tensor].transposed = p.transposed;
      }
    Value tokens = f_.Param("tokens", DType::kS32, {s_.num_tokens});
    AddParams(TinyParamLayout(c_, s_.tiny_hidden, TinyInput::kInputEmbedding));
    f_.Return({f_.TopK(TinyLogits(Embed(tokens)), s_.head.k).second});
    return f_.ToText();
  }

 private:
  // Params for `layout`, entered in weights_ by tensor name (an int8 matrix's scales beside it).
  void AddParams(const std::vector<WeightParam>& layout) {
    for (const WeightParam& p : layout) {
      Value v = f_.Param(p.name(), p.dtype, p.dims);
      if (p.role == WeightParam::Role::kLayerArena) {
        arenas_.push_back(v);  // layer l's arena is the l-th
        continue;
      }
      if (p.role == WeightParam::Role::kInt8Scales || p.role == WeightParam::Role::kQ4Scales ||
          p.role == WeightParam::Role::kQ8Scales) {
        weights_[p.tensor].scale = v;
      } else if (p.role == WeightParam::Role::kQ4Mins) {
        weights_[p.tensor].min = v;
      } else {
        weights_[p.tensor].w = v;
        weights_[p.tensor].transposed = p.transposed;
      }
    }
  }

  // Token embeddings [T, d] in f32 (Gemma scales by sqrt(d)); also the tiny's input e (model/tiny.h).
  Value Embed(const Value& tokens) {
    const WeightRef& emb = W("model.embed_tokens.weight");
    const float scale = c_.family == ModelFamily::kGemma ? static_cast<float>(std::sqrt(static_cast<double>(c_.hidden_size))) : 1.0f;
    // On the CPU plugin, our kernel: XLA fuses the gather with the bf16 -> f32 convert, and its
    // cost model then counts the convert over the whole table, so the program never counts as
    // cheap (under 1,000 flops) and the plugin runs it on a pool thread: ~0.1 ms of hand-offs
    // each decode step (docs/bench/decoder.md, session 30). The same values, bit for bit.
    if (ffi_ && !emb.transposed && (emb.w.dtype == DType::kBF16 || emb.w.dtype == DType::kF32)) {
      return f_.CustomCall(kernels::kEmbedRowsTarget, {emb.w, tokens}, {{DType::kF32, {tokens.dims[0], c_.hidden_size}}},
                           {{"scale", F32Attribute(scale)}})[0];
    }
    Value h = f_.Convert(emb.transposed ? f_.GatherColumns(emb.w, tokens) : f_.GatherRows(emb.w, tokens), DType::kF32);
    if (c_.family == ModelFamily::kGemma) h = f_.Mul(h, f_.ScalarLike(h, scale));
    return h;
  }

  const WeightRef& W(const std::string& name) {
    auto it = weights_.find(name);
    if (it == weights_.end() && !arenas_.empty()) return ArenaWeight(name);
    if (it == weights_.end()) throw InvalidArgumentError("programs: no weight param " + name);
    return it->second;
  }

  // A layer tensor as slices of its layer's arena, reinterpreted as its params' types (the plain layers of
  // a program with more tokens than the fused call takes).
  const WeightRef& ArenaWeight(const std::string& name) {
    if (arena_pieces_.empty()) {  // once per program (a few hundred tensors look them up)
      arena_layout_ = WeightParamLayout(c_, s_.precision);
      arena_pieces_ = LayerArenaPieces(c_, s_.precision);
    }
    const std::vector<WeightParam>& layout = arena_layout_;
    bool found = false;
    for (const ArenaPiece& piece : arena_pieces_) {
      const WeightParam& p = layout[piece.param];
      if (p.tensor != name) continue;
      found = true;
      Value bytes = f_.Slice(arenas_.at(static_cast<size_t>(piece.layer)), {piece.offset}, {piece.offset + piece.bytes});
      const int64_t width = DTypeSize(p.dtype), n = piece.bytes / width;
      Value v = width == 1 ? bytes
                           : f_.BitcastConvert(f_.Reshape(bytes, {n, width}), p.dtype, {n});
      if (width == 1 && p.dtype != DType::kU8) v = f_.BitcastConvert(v, p.dtype, {n});
      WeightRef& ref = weights_[name];
      const ArenaPacking packing = ArenaPackingOf(c_, p, s_.precision);
      if (packing != ArenaPacking::kAsUploaded) {  // stays flat: Linear passes it to the panels kernel
        ref.w = v;
        ref.transposed = packing == ArenaPacking::kF32Panels;
        ref.panels = true;
        ref.panel_kind = packing == ArenaPacking::kF32Panels ? kernels::WeightMatrix::Kind::kF32Panels
                                                             : kernels::WeightMatrix::Kind::kInt8Panels;
        ref.panel_dims = p.dims;
        continue;
      }
      v = f_.Reshape(v, p.dims);
      if (p.role == WeightParam::Role::kInt8Scales || p.role == WeightParam::Role::kQ4Scales ||
          p.role == WeightParam::Role::kQ8Scales) {
        ref.scale = v;
      } else if (p.role == WeightParam::Role::kQ4Mins) {
        ref.min = v;
      } else {
        ref.w = v;
        ref.transposed = p.transposed;
      }
    }
    if (!found) throw InvalidArgumentError("programs: no weight param " + name);
    return weights_.at(name);
  }
  Value Zero() { return f_.Constant(DType::kS32, 0); }

  Value Norm(const Value& x, const std::string& name) {
    return f_.RmsNorm(x, W(name).w, c_.rms_norm_eps, c_.family == ModelFamily::kGemma);
  }

  // The layer stack and the final norm as one cascade_decoder_layers call (kernels/ffi_handlers.h),
  // then the new keys/values written into the donated caches at start_pos. With the norm inside,
  // what XLA itself computes in a decode step (RoPE tables, masks, the cache update) stays under
  // the CPU plugin's 1,000-flop mark for a cheap program, which it runs on the calling thread.
  Value FusedLayers(const Value& h, const std::optional<Value>& tree, const Value& start, Value& k_cache,
                    Value& v_cache) {
    const int64_t T = h.dims[0], L = c_.num_layers, KV = c_.num_kv_heads, hd = c_.head_dim;
    // New token t may attend new token j: j <= t, or the tree's edges (diagonal always).
    Value eye = f_.Compare(CompareDirection::kEq, f_.Iota(DType::kS32, {T, T}, 0), f_.Iota(DType::kS32, {T, T}, 1));
    Value block = tree ? f_.Or(*tree, eye)
                       : f_.Compare(CompareDirection::kGe, f_.Iota(DType::kS32, {T, T}, 0), f_.Iota(DType::kS32, {T, T}, 1));
    std::vector<Value> operands = {h, cos_, sin_, block, start, k_cache, v_cache, W("model.norm.weight").w};
    operands.insert(operands.end(), arenas_.begin(), arenas_.end());
    const std::string eps = F32Attribute(static_cast<float>(c_.rms_norm_eps));
    auto i64 = [](int64_t v) { return std::to_string(v) + " : i64"; };
    std::vector<Value> r = f_.CustomCall(
        kernels::kDecoderLayersTarget, operands,
        {{DType::kF32, h.dims}, {k_cache.dtype, {L, KV, T, hd}}, {v_cache.dtype, {L, KV, T, hd}}},
        {{"layers", i64(L)},
         {"heads", i64(c_.num_heads)},
         {"kv_heads", i64(KV)},
         {"head_dim", i64(hd)},
         {"intermediate", i64(c_.intermediate_size)},
         {"eps", eps},
         {"gemma", c_.family == ModelFamily::kGemma ? "true" : "false"},
         {"weights", i64(static_cast<int64_t>(ArenaMatrixKind(c_, s_.precision)))}});
    std::vector<Value> at = {Zero(), Zero(), start, Zero()};
    k_cache = f_.DynamicUpdateSlice(k_cache, r[1], at);
    v_cache = f_.DynamicUpdateSlice(v_cache, r[2], at);
    return r[0];
  }

  // The argmax of each row of the head's logits [T, V]: our kernel on the CPU plugin (XLA's
  // compiled reduce took ~80 us per row, kernels/argmax.h), else StableHLO's argmax.
  Value HeadArgmax(const Value& logits) {
    if (ffi_ && logits.rank() == 2 && logits.dtype == DType::kF32)
      return f_.CustomCall(kernels::kArgmaxTarget, {logits}, DType::kS32, {logits.dims[0]});
    return f_.Argmax(logits, 1);
  }

  // The argmax of x [T, in] . W^T for a head stored as 8-bit blocks, on the CPU plugin: one
  // kernel (kernels/head_argmax.h) that bounds every logit cheaply and computes exactly only the
  // rows that can be the largest, the same ids as HeadArgmax(Linear(x, name)). Otherwise none.
  std::optional<Value> Q8HeadArgmax(const Value& x, const std::string& name) {
    const WeightRef& ref = W(name);
    const Value& w = ref.w;
    if (!ffi_ || w.dtype != DType::kS8 || !ref.scale || ref.scale->rank() != 2 || ref.transposed || x.rank() != 2 ||
        x.dims[0] > kFfiMaxTokens || x.dims[1] != w.dims[1])
      return std::nullopt;
    return f_.CustomCall(kernels::kQ8Bf16ArgmaxTarget, {x, w, *ref.scale}, DType::kS32, {x.dims[0]});
  }

  // x [T, in] f32 times W^T (W [out, in]) -> [T, out] f32.
  Value Linear(const Value& x, const std::string& name) {
    const WeightRef& ref = W(name);
    if (ref.panels) {  // [..., in] rows through the panels kernel, in the layout they are stored in
      const bool int8 = ref.panel_kind == kernels::WeightMatrix::Kind::kInt8Panels;
      const int64_t in = ref.panel_dims[int8 ? 1 : 0], out = ref.panel_dims[int8 ? 0 : 1];
      const int64_t rows = ElementCount(x.dims) / in;
      std::vector<int64_t> y_dims = x.dims;
      y_dims.back() = out;
      Value x2 = x.rank() == 2 ? x : f_.Reshape(x, {rows, in});
      if (int8 && !ref.scale) throw InvalidArgumentError("programs: int8 panels without their scales");
      Value y = int8 ? f_.CustomCall(kernels::kInt8PanelsMatmulTarget, {x2, ref.w, *ref.scale}, DType::kF32, {rows, out})
                     : f_.CustomCall(kernels::kF32PanelsMatmulTarget, {x2, ref.w}, DType::kF32, {rows, out});
      return x.rank() == 2 ? y : f_.Reshape(y, y_dims);
    }
    Value w = ref.w;
    if (fused_ && w.dtype == DType::kF32 && ref.transposed && x.rank() == 2 && x.dims[1] == w.dims[0])
      return f_.CustomCall(kernels::kF32TMatmulTarget, {x, w}, DType::kF32, {x.dims[0], w.dims[1]});
    if (w.dtype == DType::kF32) return f_.DotGeneral(x, w, {}, {}, {1}, {ref.transposed ? 0 : 1});
    if (ref.transposed) throw InvalidArgumentError("programs: transposed low-precision weights are not emitted");
    const std::optional<Value>* scale = &ref.scale;
    static const std::optional<Value> kNoScale;
    if (w.dtype == DType::kU8) {
      if (s_.precision != WeightPrecision::kBF16Q4) return f_.DotGeneral(x, DequantizeQ4(ref), {}, {}, {1}, {1});
      // bf16q4 with kQ4ExactBf16: the blocks' exact weights times the bf16-rounded activations.
      if (ArenaMatrixKind(c_, s_.precision) == kernels::WeightMatrix::Kind::kQ4ExactBf16)
        return f_.DotGeneral(f_.Convert(f_.Convert(x, DType::kBF16), DType::kF32), DequantizeQ4(ref), {}, {}, {1}, {1});
      // kQ4Bf16: the bf16 weights the blocks hold (each d * q + m rounded to bf16), then as bf16.
      w = f_.Convert(DequantizeQ4(ref), DType::kBF16);
      scale = &kNoScale;
    }
    if (w.dtype == DType::kS8 && ref.scale && ref.scale->rank() == 2) {  // 8-bit blocks (bf16q4's head)
      if (ffi_ && x.rank() == 2 && x.dims[0] <= kFfiMaxTokens && x.dims[1] == w.dims[1])
        return f_.CustomCall(kernels::kQ8Bf16MatmulTarget, {x, w, *ref.scale}, DType::kF32, {x.dims[0], w.dims[0]});
      // The bf16 weights d * q rounds to, then as bf16.
      w = f_.Convert(DequantizeQ8(ref), DType::kBF16);
      scale = &kNoScale;
    }
    if (ffi_ && x.rank() == 2 && w.rank() == 2 && x.dims[0] <= kFfiMaxTokens && x.dims[1] == w.dims[1]) {
      if (w.dtype == DType::kS8 && *scale && (*scale)->dims == std::vector<int64_t>{w.dims[0]})
        return f_.CustomCall(kernels::kInt8MatmulTarget, {x, w, **scale}, DType::kF32, {x.dims[0], w.dims[0]});
      if (w.dtype == DType::kBF16 && !*scale)
        return f_.CustomCall(kernels::kBf16MatmulTarget, {x, w}, DType::kF32, {x.dims[0], w.dims[0]});
    }
    Value y;
    if (mode_ == MatmulMode::kBF16Activations) {
      y = f_.DotGeneral(f_.Convert(x, DType::kBF16), f_.Convert(w, DType::kBF16), {}, {}, {1}, {1}, DType::kF32);
    } else {
      y = f_.DotGeneral(x, f_.Convert(w, DType::kF32), {}, {}, {1}, {1});
    }
    if (*scale) y = f_.Mul(y, f_.BroadcastInDim(**scale, y.dims, {1}));
    return y;
  }

  // Rows [0, out) of panels of 16 (the last one n = out % 16 rows when that is not 0) from
  // panels(r0, r1, n), each panel a run of whole rows of the stored shapes.
  template <typename Panels>
  Value ByPanels(int64_t out, const Panels& panels) {
    const int64_t panel = kernels::kQ4PanelRows, full = out / panel * panel;
    if (full == out) return panels(0, out, panel);
    if (full == 0) return panels(0, out, out);
    return f_.Concatenate({panels(0, full, panel), panels(full, out, out - full)}, 0);
  }
  Value RowsOf(const Value& v, int64_t r0, int64_t r1) {
    return r0 == 0 && r1 == v.dims[0] ? v : f_.Slice(v, {r0, 0}, {r1, v.dims[1]});
  }
  // A panel's per-block values [blocks][n] (scales, minimums) as [n, blocks, 32] f32.
  Value PerBlock(const Value& v, int64_t r0, int64_t r1, int64_t n, int64_t blocks) {
    const int64_t count = (r1 - r0) / n;
    Value by_row = f_.Reshape(f_.Transpose(f_.Reshape(RowsOf(v, r0, r1), {count, blocks, n}), {0, 2, 1}),
                              {count * n, blocks});
    return f_.BroadcastInDim(f_.Convert(by_row, DType::kF32), {count * n, blocks, 32}, {0, 1});
  }

  // 8-bit blocks (kernels/int8_matmul.h: panels of 16 rows, per block the n rows' 32 bytes; scales
  // [block][n] per panel) as f32 [out, in].
  Value DequantizeQ8(const WeightRef& ref) {
    const int64_t out = ref.w.dims[0], in = ref.w.dims[1], blocks = in / 32;
    return ByPanels(out, [&](int64_t r0, int64_t r1, int64_t n) {
      const int64_t count = (r1 - r0) / n;
      Value q = f_.Reshape(f_.Convert(RowsOf(ref.w, r0, r1), DType::kF32), {count, blocks, n, 32});
      q = f_.Reshape(f_.Transpose(q, {0, 2, 1, 3}), {count * n, blocks, 32});
      return f_.Reshape(f_.Mul(q, PerBlock(*ref.scale, r0, r1, n, blocks)), {count * n, in});
    });
  }

  // 4-bit blocks (kernels/int8_matmul.h: panels of 16 rows) as f32 [out, in]: per panel of n rows
  // and 64 inputs, 8 x n x 4 bytes (Q4Order::kInterleaved) or n x 32 bytes (kRows), low nibbles the
  // first 32-block, high the second; or per 32-block 4 groups g x n rows x 2 e x 2 bytes c, nibble
  // h of byte c the input 8 g + 4 c + 2 h + e (kPairs); scales and minimums [block][n] per panel.
  Value DequantizeQ4(const WeightRef& ref) {
    const int64_t out = ref.w.dims[0], half = ref.w.dims[1], in = half * 2, chunks = in / 64, blocks = in / 32;
    const kernels::Q4Order order = kernels::Q4OrderOf(ArenaMatrixKind(c_, s_.precision));
    return ByPanels(out, [&](int64_t r0, int64_t r1, int64_t n) {
      const int64_t count = (r1 - r0) / n;
      Value bytes = f_.Convert(RowsOf(ref.w, r0, r1), DType::kS32);
      Value q;
      if (order == kernels::Q4Order::kPairs) {
        bytes = f_.Reshape(bytes, {count, blocks, 4, n, 2, 2, 1});
        Value nibbles = f_.Concatenate({f_.And(bytes, f_.ScalarLike(bytes, 15)), f_.Div(bytes, f_.ScalarLike(bytes, 16))}, 6);
        // [count, blocks, g, n, e, c, h] -> [count, n, blocks, g, c, h, e]
        q = f_.Reshape(f_.Transpose(nibbles, {0, 3, 1, 2, 5, 6, 4}), {count * n, blocks, 32});
      } else {
        const bool rows_order = order == kernels::Q4Order::kRows;
        auto in_order = [&](const Value& v) {  // -> [count * n, chunks, 32]
          if (rows_order) return f_.Reshape(f_.Transpose(v, {0, 2, 1, 3}), {count * n, chunks, 32});
          return f_.Reshape(f_.Transpose(v, {0, 3, 1, 2, 4}), {count * n, chunks, 32});
        };
        bytes = rows_order ? f_.Reshape(bytes, {count, chunks, n, 32}) : f_.Reshape(bytes, {count, chunks, 8, n, 4});
        Value low = in_order(f_.And(bytes, f_.ScalarLike(bytes, 15)));
        Value high = in_order(f_.Div(bytes, f_.ScalarLike(bytes, 16)));
        q = f_.Reshape(f_.Concatenate({low, high}, 2), {count * n, blocks, 32});
      }
      q = f_.Convert(q, DType::kF32);
      return f_.Reshape(f_.Add(f_.Mul(q, PerBlock(*ref.scale, r0, r1, n, blocks)), PerBlock(*ref.min, r0, r1, n, blocks)),
                        {count * n, in});
    });
  }

  // The top-k ids s32[T, k] of a tiny on the draft's hidden state: one kernel on the CPU plugin
  // (kernels/tiny_candidates.h), else TinyLogits and XLA's top-k.
  Value TinyCandidates(const Value& x, int64_t k) {
    const int64_t T = x.dims[0];
    if (ffi_ && T <= kFfiMaxTokens) {
      std::vector<Value> operands = {x};
      for (const char* name : {"tiny.proj_in.weight", "tiny.proj_in.bias", "tiny.norm.weight", "tiny.norm.bias",
                               "tiny.proj_out.weight"})
        operands.push_back(W(name).w);
      const WeightRef& w2 = W("tiny.proj_out.weight");
      operands.push_back(*w2.scale);
      if (w2.min) operands.push_back(*w2.min);  // q4 blocks
      operands.push_back(W("tiny.proj_out.bias").w);
      return f_.CustomCall(w2.min ? kernels::kTinyCandidatesQ4Target : kernels::kTinyCandidatesTarget, operands,
                           {{DType::kS32, {T, k}}}, {{"eps", F32Attribute(1e-5f)}})[0];
    }
    return f_.TopK(TinyLogits(x), k).second;
  }

  // The tiny model's logits f32[T, vocab] on its inputs x [T, d] (model/tiny.h):
  // W2 ReLU(LayerNorm(W1 x + b1)) + b2, with W2 through Linear (int8 for kDraftHidden).
  Value TinyLogits(const Value& x) {
    const int64_t T = x.dims[0], H = s_.tiny_hidden, V = c_.vocab_size;
    auto w = [&](const char* name) { return W(name).w; };
    Value z = f_.Add(f_.DotGeneral(x, w("tiny.proj_in.weight"), {}, {}, {1}, {0}),
                     f_.BroadcastInDim(w("tiny.proj_in.bias"), {T, H}, {1}));
    Value inv_n = f_.Constant(DType::kF32, 1.0 / static_cast<double>(H), {T});
    Value mean = f_.Mul(f_.Reduce(z, hlo::ReduceKind::kSum, {1}), inv_n);
    Value zc = f_.Sub(z, f_.BroadcastInDim(mean, {T, H}, {0}));
    Value var = f_.Mul(f_.Reduce(f_.Mul(zc, zc), hlo::ReduceKind::kSum, {1}), inv_n);
    Value r = f_.Rsqrt(f_.Add(var, f_.Constant(DType::kF32, 1e-5, {T})));
    Value n = f_.Mul(zc, f_.BroadcastInDim(r, {T, H}, {0}));
    n = f_.Add(f_.Mul(n, f_.BroadcastInDim(w("tiny.norm.weight"), {T, H}, {1})),
               f_.BroadcastInDim(w("tiny.norm.bias"), {T, H}, {1}));
    Value act = f_.Max(n, f_.ScalarLike(n, 0.0));
    return f_.Add(Linear(act, "tiny.proj_out.weight"), f_.BroadcastInDim(w("tiny.proj_out.bias"), {T, V}, {1}));
  }

  // The LM head's logits at ids s32[T, K] only: K gathered rows of the head per token, dotted
  // with h [T, d], computed as Linear computes the full head (same dtypes, mode and scale).
  Value CandidateLogits(const Value& h, const std::string& name, const Value& ids) {
    const WeightRef& ref = W(name);
    // Candidates are a draft's head (int8 / q4 / bf16); bf16q4 is a target's precision.
    if (ref.w.dtype == DType::kS8 && ref.scale && ref.scale->rank() == 2)
      throw InvalidArgumentError("programs: the candidates head is not emitted for bf16q4 weights");
    const int64_t T = ids.dims[0], K = ids.dims[1], d = c_.hidden_size;
    if (ffi_ && !ref.transposed && T <= kFfiMaxTokens && h.rank() == 2 && ref.w.rank() == 2 &&
        h.dims[1] == ref.w.dims[1]) {
      // Bit-identical to the full head's FFI logits at those ids (same kernel per element).
      if (ref.w.dtype == DType::kS8 && ref.scale)
        return f_.CustomCall(kernels::kInt8GatherMatmulTarget, {h, ids, ref.w, *ref.scale}, DType::kF32, {T, K});
      if (ref.w.dtype == DType::kBF16 && !ref.scale)
        return f_.CustomCall(kernels::kBf16GatherMatmulTarget, {h, ids, ref.w}, DType::kF32, {T, K});
    }
    Value flat = f_.Reshape(ids, {T * K});
    Value rows = f_.Reshape(ref.transposed ? f_.GatherColumns(ref.w, flat) : f_.GatherRows(ref.w, flat), {T, K, d});
    Value y;
    if (rows.dtype == DType::kF32) {
      y = f_.DotGeneral(rows, h, {0}, {0}, {2}, {1});
    } else if (mode_ == MatmulMode::kBF16Activations) {
      y = f_.DotGeneral(f_.Convert(rows, DType::kBF16), f_.Convert(h, DType::kBF16), {0}, {0}, {2}, {1}, DType::kF32);
    } else {
      y = f_.DotGeneral(f_.Convert(rows, DType::kF32), h, {0}, {0}, {2}, {1});
    }
    if (ref.scale) y = f_.Mul(y, f_.Reshape(f_.GatherRows(*ref.scale, flat), {T, K}));
    return y;  // [T, K]
  }

  void RopeTables(const Value& pos) {
    const int64_t half = c_.head_dim / 2, T = pos.dims[0];
    std::vector<float> inv_freq(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i)  // HF: 1 / theta^(2i / head_dim), in f32
      inv_freq[i] = static_cast<float>(1.0 / std::pow(c_.rope_theta, static_cast<double>(2 * i) / c_.head_dim));
    Value inv = f_.BroadcastInDim(f_.ConstantF32({half}, inv_freq), {T, half}, {1});
    Value angle = f_.Mul(f_.BroadcastInDim(f_.Convert(pos, DType::kF32), {T, half}, {0}), inv);
    cos_ = f_.Cos(angle);
    sin_ = f_.Sin(angle);
  }

  // x [T, heads, head_dim]: Hugging Face rotate-half RoPE.
  Value Rope(const Value& x) {
    const int64_t T = x.dims[0], n = x.dims[1], hd = x.dims[2], half = hd / 2;
    Value x1 = f_.Slice(x, {0, 0, 0}, {T, n, half});
    Value x2 = f_.Slice(x, {0, 0, half}, {T, n, hd});
    Value cos = f_.BroadcastInDim(cos_, x1.dims, {0, 2});
    Value sin = f_.BroadcastInDim(sin_, x1.dims, {0, 2});
    Value o1 = f_.Sub(f_.Mul(x1, cos), f_.Mul(x2, sin));
    Value o2 = f_.Add(f_.Mul(x2, cos), f_.Mul(x1, sin));
    return f_.Concatenate({o1, o2}, 2);
  }

  Value Attention(int64_t l, const Value& x, const Value& mask, const Value& start, Value& k_cache, Value& v_cache) {
    const int64_t T = x.dims[0], C = s_.max_context, H = c_.num_heads, KV = c_.num_kv_heads, hd = c_.head_dim,
                  G = H / KV;
    Value q = Rope(f_.Reshape(Linear(x, Layer(l, "self_attn.q_proj.weight")), {T, H, hd}));
    Value k = Rope(f_.Reshape(Linear(x, Layer(l, "self_attn.k_proj.weight")), {T, KV, hd}));
    Value v = f_.Reshape(Linear(x, Layer(l, "self_attn.v_proj.weight")), {T, KV, hd});

    // Write the new keys/values at [l, :, start_pos .. start_pos+T-1] (in place: the caches are donated).
    Value layer = f_.Constant(DType::kS32, static_cast<double>(l));
    std::vector<Value> at = {layer, Zero(), start, Zero()};
    const bool bits = k_cache.dtype != s_.kv_dtype;  // bf16 stored as u16 (KvCacheStorage)
    auto heads_first = [&](const Value& x) {  // [T, KV, hd] -> [1, KV, T, hd]
      Value y = f_.Reshape(f_.Transpose(f_.Convert(x, s_.kv_dtype), {1, 0, 2}), {1, KV, T, hd});
      return bits ? f_.BitcastConvert(y, k_cache.dtype, y.dims) : y;
    };
    k_cache = f_.DynamicUpdateSlice(k_cache, heads_first(k), at);
    v_cache = f_.DynamicUpdateSlice(v_cache, heads_first(v), at);
    auto layer_f32 = [&](const Value& cache) {  // [KV, C, hd]
      Value y = f_.Reshape(f_.Slice(cache, {l, 0, 0, 0}, {l + 1, KV, C, hd}), {KV, C, hd});
      return f_.Convert(bits ? f_.BitcastConvert(y, s_.kv_dtype, y.dims) : y, DType::kF32);
    };
    Value keys = layer_f32(k_cache);
    Value vals = layer_f32(v_cache);

    // Query head h uses kv head h / G (Hugging Face repeat_kv order).
    Value q4 = f_.Reshape(q, {T, KV, G, hd});
    Value scores = f_.DotGeneral(q4, keys, {1}, {0}, {3}, {2});  // [KV, T, G, C]
    scores = f_.Mul(scores, f_.ScalarLike(scores, 1.0 / std::sqrt(static_cast<double>(hd))));
    Value m = f_.BroadcastInDim(mask, scores.dims, {1, 3});
    scores = f_.Select(m, scores, f_.ScalarLike(scores, -std::numeric_limits<double>::infinity()));
    Value probs = f_.Softmax(scores, 3);
    Value out = f_.DotGeneral(probs, vals, {0}, {0}, {3}, {1});  // [KV, T, G, hd]
    out = f_.Reshape(f_.Transpose(out, {1, 0, 2, 3}), {T, H * hd});
    return Linear(out, Layer(l, "self_attn.o_proj.weight"));
  }

  Value Mlp(int64_t l, const Value& x) {
    Value gate = Linear(x, Layer(l, "mlp.gate_proj.weight"));
    Value up = Linear(x, Layer(l, "mlp.up_proj.weight"));
    Value act;
    if (c_.family == ModelFamily::kGemma) {
      // GELU, tanh approximation: 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))
      Value g3 = f_.Mul(f_.Mul(gate, gate), gate);
      Value inner = f_.Add(gate, f_.Mul(g3, f_.ScalarLike(gate, 0.044715)));
      inner = f_.Mul(inner, f_.ScalarLike(gate, std::sqrt(2.0 / M_PI)));
      Value t = f_.Add(f_.Tanh(inner), f_.ScalarLike(gate, 1.0));
      act = f_.Mul(f_.Mul(gate, t), f_.ScalarLike(gate, 0.5));
    } else {
      act = f_.Mul(gate, f_.Logistic(gate));  // SiLU
    }
    return Linear(f_.Mul(act, up), Layer(l, "mlp.down_proj.weight"));
  }

  const ModelConfig& c_;
  const ProgramSpec& s_;
  MatmulMode mode_;
  bool ffi_ = false;  // int8 / bf16 matrices through our custom calls (MatmulMode::kFfi, kFused)
  bool fused_ = false;  // the layer stack as one custom call (MatmulMode::kFused)
  hlo::Function f_;
  std::map<std::string, WeightRef> weights_;
  std::vector<Value> arenas_;  // the layer arena params, one per layer (ProgramSpec::layer_arena)
  std::vector<WeightParam> arena_layout_;  // ArenaWeight's layout and pieces, computed on first use
  std::vector<ArenaPiece> arena_pieces_;
  Value cos_, sin_;
};

}  // namespace

const char* WeightPrecisionName(WeightPrecision precision) {
  switch (precision) {
    case WeightPrecision::kF32: return "f32";
    case WeightPrecision::kBF16: return "bf16";
    case WeightPrecision::kInt8: return "int8";
    case WeightPrecision::kQ4: return "q4";
    case WeightPrecision::kBF16Q4: return "bf16q4";
  }
  return "unknown";
}

bool ParseWeightPrecision(const std::string& name, WeightPrecision* precision) {
  for (WeightPrecision p : {WeightPrecision::kF32, WeightPrecision::kBF16, WeightPrecision::kInt8, WeightPrecision::kQ4,
                            WeightPrecision::kBF16Q4})
    if (name == WeightPrecisionName(p)) {
      *precision = p;
      return true;
    }
  return false;
}

const char* HeadKindName(HeadKind kind) {
  switch (kind) {
    case HeadKind::kLogits: return "logits";
    case HeadKind::kArgmax: return "argmax";
    case HeadKind::kTopK: return "topk";
    case HeadKind::kTokenLogprob: return "token_logprob";
    case HeadKind::kCandidates: return "candidates";
    case HeadKind::kHidden: return "hidden";
  }
  return "unknown";
}

std::string WeightParam::name() const {
  switch (role) {
    case Role::kDense: return tensor;
    case Role::kInt8Values: return tensor + ":int8";
    case Role::kInt8Scales: return tensor + ":scale";
    case Role::kQ8Values: return tensor + ":q8";
    case Role::kQ8Scales: return tensor + ":q8scale";
    case Role::kQ4Values: return tensor + ":q4";
    case Role::kQ4Scales: return tensor + ":q4scale";
    case Role::kQ4Mins: return tensor + ":q4min";
    case Role::kLayerArena: return tensor;
  }
  return tensor;
}

void ValidateDecoderConfig(const ModelConfig& c) {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw InvalidArgumentError("decoder config: " + what);
  };
  need(c.vocab_size > 0, "vocab_size must be positive");
  need(c.hidden_size > 0, "hidden_size must be positive");
  need(c.intermediate_size > 0, "intermediate_size must be positive");
  need(c.num_layers > 0, "num_layers must be positive");
  need(c.num_heads > 0 && c.num_kv_heads > 0, "num_heads and num_kv_heads must be positive");
  need(c.num_heads % c.num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads");
  need(c.head_dim > 0 && c.head_dim % 2 == 0, "head_dim must be positive and even (RoPE)");
  need(c.rms_norm_eps > 0, "rms_norm_eps must be positive");
  need(c.rope_theta > 0, "rope_theta must be positive");
  need(c.family != ModelFamily::kGemma || c.tied_embeddings, "Gemma has a tied head");
}

std::vector<WeightParam> WeightParamLayout(const ModelConfig& c, WeightPrecision precision) {
  ValidateDecoderConfig(c);
  const int64_t d = c.hidden_size, hd = c.head_dim;
  std::vector<std::pair<std::string, std::vector<int64_t>>> tensors;
  tensors.push_back({"model.embed_tokens.weight", {c.vocab_size, d}});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    tensors.push_back({Layer(l, "input_layernorm.weight"), {d}});
    tensors.push_back({Layer(l, "self_attn.q_proj.weight"), {c.num_heads * hd, d}});
    tensors.push_back({Layer(l, "self_attn.k_proj.weight"), {c.num_kv_heads * hd, d}});
    tensors.push_back({Layer(l, "self_attn.v_proj.weight"), {c.num_kv_heads * hd, d}});
    tensors.push_back({Layer(l, "self_attn.o_proj.weight"), {d, c.num_heads * hd}});
    tensors.push_back({Layer(l, "post_attention_layernorm.weight"), {d}});
    tensors.push_back({Layer(l, "mlp.gate_proj.weight"), {c.intermediate_size, d}});
    tensors.push_back({Layer(l, "mlp.up_proj.weight"), {c.intermediate_size, d}});
    tensors.push_back({Layer(l, "mlp.down_proj.weight"), {d, c.intermediate_size}});
  }
  tensors.push_back({"model.norm.weight", {d}});
  // kInt8 (and kQ4) with a tied head: an int8 copy of the embedding as lm_head (the embedding
  // itself stays bf16 for the lookup): a draft step then reads 28 MB of head instead of 57 MB on
  // SmolLM2.
  const bool quantised = precision == WeightPrecision::kInt8 || precision == WeightPrecision::kQ4;
  // kBF16Q4: the head as 8-bit blocks (a tied one as a copy of the embedding's).
  if (!c.tied_embeddings || quantised || precision == WeightPrecision::kBF16Q4)
    tensors.push_back({"lm_head.weight", {c.vocab_size, d}});
  const bool blocks = precision == WeightPrecision::kQ4 || precision == WeightPrecision::kBF16Q4;
  if (blocks)
    for (auto& [name, dims] : tensors)
      if (IsMatrix(name) && name != "lm_head.weight" && dims[1] % 64 != 0)
        throw InvalidArgumentError(std::string(WeightPrecisionName(precision)) + " weights need every layer matrix's input size to be a multiple of 64; " + name +
                                   " has " + std::to_string(dims[1]));

  std::vector<WeightParam> out;
  for (auto& [name, dims] : tensors) {
    bool norm = dims.size() == 1;
    if (precision == WeightPrecision::kBF16Q4 && name == "lm_head.weight") {
      out.push_back({name, WeightParam::Role::kQ8Values, DType::kS8, dims});
      out.push_back({name, WeightParam::Role::kQ8Scales, DType::kF16, {dims[0], dims[1] / 32}});
    } else if (blocks && IsMatrix(name) && name != "lm_head.weight") {
      out.push_back({name, WeightParam::Role::kQ4Values, DType::kU8, {dims[0], dims[1] / 2}});
      out.push_back({name, WeightParam::Role::kQ4Scales, DType::kF16, {dims[0], dims[1] / 32}});
      out.push_back({name, WeightParam::Role::kQ4Mins, DType::kF16, {dims[0], dims[1] / 32}});
    } else if (quantised && IsMatrix(name)) {
      out.push_back({name, WeightParam::Role::kInt8Values, DType::kS8, dims});
      out.push_back({name, WeightParam::Role::kInt8Scales, DType::kF32, {dims[0]}});
    } else {
      DType dtype = (precision == WeightPrecision::kF32 || norm) ? DType::kF32 : DType::kBF16;
      bool transposed = precision == WeightPrecision::kF32 && !norm;
      if (transposed) std::swap(dims[0], dims[1]);
      out.push_back({name, WeightParam::Role::kDense, dtype, dims, transposed});
    }
  }
  return out;
}

std::vector<ArenaPiece> LayerArenaPieces(const ModelConfig& c, WeightPrecision precision) {
  const std::vector<WeightParam> layout = WeightParamLayout(c, precision);
  std::vector<ArenaPiece> pieces;
  int64_t end = 0, layer = -1;
  for (size_t i = 0; i < layout.size(); ++i) {
    const int64_t l = LayerOf(layout[i]);
    if (l < 0) continue;
    if (l != layer) end = 0;  // a new layer's arena
    layer = l;
    const int64_t offset = (end + kernels::kArenaAlignment - 1) / kernels::kArenaAlignment * kernels::kArenaAlignment;
    const int64_t bytes = ElementCount(layout[i].dims) * static_cast<int64_t>(DTypeSize(layout[i].dtype));
    pieces.push_back({i, l, offset, bytes});
    end = offset + bytes;
  }
  // The fused call reads each arena by the kernels' own account of the same order: they must agree.
  kernels::DecoderLayersConfig k;
  k.layers = c.num_layers;
  k.hidden = c.hidden_size;
  k.heads = c.num_heads;
  k.kv_heads = c.num_kv_heads;
  k.head_dim = c.head_dim;
  k.intermediate = c.intermediate_size;
  const std::vector<int64_t> kernel_bytes = kernels::ArenaPieceBytes(k, ArenaMatrixKind(c, precision));
  bool agree = static_cast<int64_t>(pieces.size()) == c.num_layers * static_cast<int64_t>(kernel_bytes.size());
  for (size_t i = 0; agree && i < pieces.size(); ++i)
    agree = kernel_bytes[i % kernel_bytes.size()] == pieces[i].bytes &&
            pieces[i].layer == static_cast<int64_t>(i / kernel_bytes.size());
  if (!agree) throw Error(ErrorKind::kInternal, "programs: the layer arenas' pieces disagree with kernels::ArenaPieceBytes");
  return pieces;
}

ArenaPacking ArenaPackingOf(const ModelConfig& c, const WeightParam& p, WeightPrecision precision) {
  if (LayerOf(p) < 0 || p.dims.size() != 2) return ArenaPacking::kAsUploaded;
  const kernels::WeightMatrix::Kind kind = ArenaMatrixKind(c, precision);
  if (p.transposed && p.dtype == DType::kF32 && kind == kernels::WeightMatrix::Kind::kF32Panels)
    return ArenaPacking::kF32Panels;
  if (p.role == WeightParam::Role::kInt8Values && kind == kernels::WeightMatrix::Kind::kInt8Panels)
    return ArenaPacking::kInt8Panels;
  return ArenaPacking::kAsUploaded;
}

int64_t LayerArenaBytes(const ModelConfig& c, WeightPrecision precision) {
  int64_t end = 0;
  for (const ArenaPiece& piece : LayerArenaPieces(c, precision))
    if (piece.layer == 0) end = piece.offset + piece.bytes;
  return (end + kernels::kArenaAlignment - 1) / kernels::kArenaAlignment * kernels::kArenaAlignment;
}

std::vector<WeightParam> ModelParamLayout(const ModelConfig& c, WeightPrecision precision, bool layer_arena) {
  std::vector<WeightParam> layout = WeightParamLayout(c, precision);
  if (!layer_arena) return layout;
  const int64_t bytes = LayerArenaBytes(c, precision);
  std::vector<WeightParam> out;
  int64_t last = -1;
  for (const WeightParam& p : layout) {
    const int64_t l = LayerOf(p);
    if (l < 0) {
      out.push_back(p);
    } else if (l != last) {
      out.push_back({"model.layers." + std::to_string(l), WeightParam::Role::kLayerArena, DType::kU8, {bytes}});
      last = l;
    }
  }
  return out;
}

DType KvCacheStorage(DType kv_dtype, bool layer_arena) {
  return kv_dtype == DType::kBF16 && layer_arena ? DType::kU16 : kv_dtype;
}

bool UsesLayerArena(MatmulMode chosen) { return chosen == MatmulMode::kFused; }

const char* TinyInputName(TinyInput input) {
  return input == TinyInput::kDraftHidden ? "draft_final_hidden" : "draft_input_embedding";
}

bool TinyW2InQ4(int64_t tiny_hidden) { return tiny_hidden % 64 == 0; }

std::vector<WeightParam> TinyParamLayout(const ModelConfig& c, int64_t tiny_hidden, TinyInput input) {
  if (tiny_hidden < 1) throw InvalidArgumentError("tiny model: hidden width must be >= 1");
  const int64_t d = c.hidden_size, H = tiny_hidden, V = c.vocab_size;
  using R = WeightParam::Role;
  std::vector<WeightParam> out = {{"tiny.proj_in.weight", R::kDense, DType::kF32, {d, H}, true},
                                  {"tiny.proj_in.bias", R::kDense, DType::kF32, {H}, false},
                                  {"tiny.norm.weight", R::kDense, DType::kF32, {H}, false},
                                  {"tiny.norm.bias", R::kDense, DType::kF32, {H}, false}};
  if (input == TinyInput::kDraftHidden && TinyW2InQ4(H)) {
    // Read every draft step: 4-bit blocks as the q4 draft's (7.9 MB at 256 x 49152 with the
    // f16 scales and minimums; int8 was 12.6 MB).
    out.push_back({"tiny.proj_out.weight", R::kQ4Values, DType::kU8, {V, H / 2}, false});
    out.push_back({"tiny.proj_out.weight", R::kQ4Scales, DType::kF16, {V, H / kernels::kQ4Block}, false});
    out.push_back({"tiny.proj_out.weight", R::kQ4Mins, DType::kF16, {V, H / kernels::kQ4Block}, false});
  } else if (input == TinyInput::kDraftHidden) {
    // int8 (a quarter of f32) where the width is no multiple of 64 (the q4 blocks' requirement).
    out.push_back({"tiny.proj_out.weight", R::kInt8Values, DType::kS8, {V, H}, false});
    out.push_back({"tiny.proj_out.weight", R::kInt8Scales, DType::kF32, {V}, false});
  } else {
    out.push_back({"tiny.proj_out.weight", R::kDense, DType::kF32, {H, V}, true});
  }
  out.push_back({"tiny.proj_out.bias", R::kDense, DType::kF32, {V}, false});
  return out;
}

std::vector<int64_t> KvCacheDims(const ModelConfig& c, int64_t max_context) {
  // Heads before slots: attention is then a batched dot over contiguous [C, head_dim] blocks, with
  // no per-layer transpose of the whole cache (which XLA CPU otherwise copies on every call).
  return {c.num_layers, c.num_kv_heads, max_context, c.head_dim};
}

std::vector<HeadOutput> HeadOutputs(const ModelConfig& c, const ProgramSpec& s) {
  const int64_t T = s.num_tokens;
  switch (s.head.kind) {
    case HeadKind::kLogits: return {{"logits", DType::kF32, {T, c.vocab_size}}};
    case HeadKind::kArgmax: return {{"argmax", DType::kS32, {T}}};
    case HeadKind::kTopK:
      return {{"topk_values", DType::kF32, {T, s.head.k}},
              {"topk_indices", DType::kS32, {T, s.head.k}},
              {"logsumexp", DType::kF32, {T}}};
    case HeadKind::kTokenLogprob:
      return {{"token_logprobs", DType::kF32, {T}}, {"argmax", DType::kS32, {T}}};
    case HeadKind::kCandidates: {
      std::vector<HeadOutput> out = {{"candidate_ids", DType::kS32, {T, s.head.k}},
                                     {"candidate_logits", DType::kF32, {T, s.head.k}},
                                     {"candidate_argmax", DType::kS32, {T}}};
      if (s.head.full_argmax) out.push_back({"full_argmax", DType::kS32, {T}});
      return out;
    }
    case HeadKind::kHidden:
      return {{"hidden", DType::kF32, {T, c.hidden_size}}, {"logits", DType::kF32, {T, c.vocab_size}}};
  }
  return {};
}

std::string EmitDecoderProgram(const ModelConfig& config, const ProgramSpec& spec) {
  ValidateDecoderConfig(config);
  if (spec.num_tokens < 1) throw InvalidArgumentError("decoder program: num_tokens must be >= 1");
  if (spec.max_context < spec.num_tokens)
    throw InvalidArgumentError("decoder program: max_context " + std::to_string(spec.max_context) +
                               " is smaller than num_tokens " + std::to_string(spec.num_tokens));
  if (spec.kv_dtype != DType::kF32 && spec.kv_dtype != DType::kBF16)
    throw InvalidArgumentError("decoder program: kv_dtype must be f32 or bf16");
  if (spec.head.kind == HeadKind::kTopK && (spec.head.k < 1 || spec.head.k > config.vocab_size))
    throw InvalidArgumentError("decoder program: top-k needs 1 <= k <= vocab_size, got k=" + std::to_string(spec.head.k));
  if (spec.head.kind == HeadKind::kCandidates) {
    if (spec.head.k < 1 || spec.head.k > config.vocab_size)
      throw InvalidArgumentError("decoder program: the candidates head needs 1 <= K0 <= vocab_size, got K0=" +
                                 std::to_string(spec.head.k));
    if (spec.tiny_input == TinyInput::kDraftHidden && spec.tiny_hidden < 1)
      throw InvalidArgumentError("decoder program: a tiny on the draft's hidden state needs tiny_hidden >= 1");
  }
  if (spec.head.full_argmax && spec.head.kind != HeadKind::kCandidates)
    throw InvalidArgumentError("decoder program: full_argmax is an option of the candidates head only");
  return Emitter(config, spec).Emit();
}

std::string EmitTinyTableProgram(const ModelConfig& config, WeightPrecision precision, int64_t tiny_hidden,
                                 int64_t rows, int64_t k) {
  ValidateDecoderConfig(config);
  if (rows < 1) throw InvalidArgumentError("tiny table program: rows must be >= 1");
  if (k < 1 || k > config.vocab_size)
    throw InvalidArgumentError("tiny table program: needs 1 <= K0 <= vocab_size, got K0=" + std::to_string(k));
  if (tiny_hidden < 1) throw InvalidArgumentError("tiny table program: tiny_hidden must be >= 1");
  ProgramSpec spec;
  spec.num_tokens = rows;
  spec.max_context = rows;
  spec.head = {HeadKind::kCandidates, k};
  spec.precision = precision;
  spec.tiny_hidden = tiny_hidden;
  return Emitter(config, spec).EmitTinyTable();
}

}  // namespace cascade
