// The decoder's layer stack as one CPU kernel (the custom call cascade_decoder_layers,
// kernels/ffi_handlers.h): for T new tokens, every layer's RMSNorm, q/k/v, RoPE, attention over
// the valid cache prefix, o, residual, RMSNorm, gate/up, SiLU or GELU, down, residual.
//
// Why: through XLA CPU a decode step ran ~600 small fusions and thunks around the matrices
// (~6 ms per SmolLM2 step, issue #13), and XLA's attention reads all C cache slots. Here the
// matrices go to both cores through kernels/thread_team.h and everything else is a few loops.
// The StableHLO program (model/programs.cc) stays the reference and the path of other plugins.
//
// Exactness: row t of a T-token call is bit-identical to the same token run alone at
// start_pos + t after the rows before it (verify(T) equals decode(1) row by row): every matrix
// row is T-independent (int8_matmul.h), and attention visits the same keys in the same order
// (cache slots 0 .. start_pos-1, then the visible new tokens in order), split into the same
// chunks of 64 (decoder_layers.cc, kAttentionChunk) whatever else the call holds.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/int8_matmul.h"

namespace cascade {
namespace kernels {

class ThreadTeam;

struct DecoderLayersConfig {
  int64_t layers = 0, hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, intermediate = 0;
  float rms_norm_eps = 1e-6f;
  bool gemma = false;  // RMSNorm scales by (1 + w), GELU (tanh) instead of SiLU
};

struct DecoderLayerWeights {
  const float* input_norm = nullptr;  // [hidden]
  WeightMatrix q, k, v, o;
  const float* post_attention_norm = nullptr;  // [hidden]
  WeightMatrix gate, up, down;
};

struct DecoderLayersCall {
  int64_t num_tokens = 0;   // T
  int64_t max_context = 0;  // C
  int64_t start_pos = 0;    // cache slots 0 .. start_pos-1 hold the earlier tokens
  const float* hidden_in = nullptr;          // [T, hidden]
  const float* rope_cos = nullptr;           // [T, head_dim / 2] at each token's position
  const float* rope_sin = nullptr;           // [T, head_dim / 2]
  const bool* block_mask = nullptr;          // [T, T]: new token t may attend new token j (diagonal forced)
  // The caches' element type, also that of k_new / v_new: f32, or bf16 (uint16 bit patterns).
  // With bf16 the new keys and values are rounded to bf16 (nearest even, as XLA converts) before
  // any row attends to them: a later decode reads them back from the cache, so a verify's rows
  // must see the rounded values too to stay bit-identical to it.
  bool kv_bf16 = false;
  const void* k_cache = nullptr;             // [layers, kv_heads, C, head_dim]
  const void* v_cache = nullptr;
  // The model's final norm weights [hidden]: when set, hidden_out is RMSNorm(h) with them (the
  // head's input), else h itself. Inside the call so a decode step leaves XLA almost nothing to
  // compute: the CPU plugin then runs the program on the calling thread (model/programs.cc,
  // FusedLayers).
  const float* final_norm = nullptr;
  float* hidden_out = nullptr;               // [T, hidden]
  void* k_new = nullptr;                     // [layers, kv_heads, T, head_dim] (after RoPE)
  void* v_new = nullptr;
};

// ---- layer arenas: each layer's weights in one buffer ----
// The fused call takes a layer's weights as one u8 operand instead of one per tensor: a q4
// SmolLM2 step passed ~700 buffers, and the plugin's per-buffer work (usage holds, events, the
// call frame) cost ~1 us each per step (issue #13). One buffer per layer, not one for the whole
// stack, so a load never holds more than one extra layer on the host. Per layer, in order: input
// norm f32[hidden]; q, k, v, o; post-attention norm f32[hidden]; gate, up, down. A matrix
// [out, in] is, by kind: kF32Transposed f32[in, out]; kBf16 bf16[out, in]; kInt8 s8[out, in]
// then f32 scales[out]; kQ4 u8[out, in / 2] then f16 scales and minimums [out, in / 32]
// (int8_matmul.h). Every piece starts at a multiple of kArenaAlignment bytes from the arena's
// start. model/programs.h (LayerArenaPieces) packs the same order.
constexpr int64_t kArenaAlignment = 64;
// Byte sizes of one layer's pieces in order.
std::vector<int64_t> ArenaPieceBytes(const DecoderLayersConfig& config, WeightMatrix::Kind kind);
// Bytes of one layer's arena (the last piece's end, rounded up to kArenaAlignment).
int64_t ArenaBytes(const DecoderLayersConfig& config, WeightMatrix::Kind kind);
// A layer's weights inside `arena` (of `bytes` bytes; its start 16-byte aligned at least). Empty
// string on success; otherwise what is wrong (a size that does not match the config).
std::string ArenaLayer(const DecoderLayersConfig& config, WeightMatrix::Kind kind, const uint8_t* arena, int64_t bytes,
                       DecoderLayerWeights* layer);

// Empty when the config and call are ones we compute; otherwise what is wrong.
std::string ValidateDecoderLayers(const DecoderLayersConfig& config, const std::vector<DecoderLayerWeights>& layers,
                                  const DecoderLayersCall& call);

// Wall time of the matmul and attention jobs as the calling thread sees them (ns), for profiles
// (decoder_bench).
struct DecoderLayersStats {
  int64_t matmul_nanoseconds = 0;
  int64_t attention_nanoseconds = 0;
};

// Runs the layer stack. Throws std::invalid_argument when ValidateDecoderLayers complains.
void RunDecoderLayers(const DecoderLayersConfig& config, const std::vector<DecoderLayerWeights>& layers,
                      const DecoderLayersCall& call, const KernelImpls& impls, ThreadTeam& team,
                      DecoderLayersStats* stats = nullptr);

// y[T, m.out] = x[T, m.in] . W^T on the team (the plain matmul custom calls, the LM head).
void TeamMatmul(const WeightMatrix& m, const KernelImpls& impls, const float* x, int64_t T, float* y, ThreadTeam& team);

}  // namespace kernels
}  // namespace cascade
