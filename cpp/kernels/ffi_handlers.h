// Our kernels as XLA FFI handlers (typed FFI, api_version 4), and their registration with a PJRT
// plugin through the PJRT FFI extension (pjrt/ffi.h).
//
// Custom call targets (StableHLO: stablehlo.custom_call @name(...) {api_version = 4 : i32, ...}):
//   cascade_int8_matmul(x f32[T, in], w s8[out, in], scale f32[out]) -> f32[T, out]
//     y = (x . w^T) * scale, row-major operands (kernels/int8_matmul.h).
//   cascade_int8_gather_matmul(x f32[T, in], ids s32[T, K], w s8[out, in], scale f32[out]) -> f32[T, K]
//     y[t, j] = the matmul's y[t, ids[t, j]], bit for bit (the candidates head).
//   cascade_bf16_matmul(x f32[T, in], w bf16[out, in]) -> f32[T, out]          y = x . w^T
//   cascade_bf16_gather_matmul(x f32[T, in], ids s32[T, K], w bf16[out, in]) -> f32[T, K]
//   cascade_f32t_matmul(x f32[T, in], wt f32[in, out]) -> f32[T, out]       y = x . wt (f32 upload layout)
//   cascade_decoder_layers(hidden f32[T, d], rope_cos f32[T, hd/2], rope_sin, block_mask pred[T, T],
//       start_pos s32[], k_cache f32[L, KV, C, hd], v_cache, final_norm f32[d], then per layer an
//       arena u8[bytes]: the layer's weights in one buffer, laid out as kernels/decoder_layers.h
//       (ArenaLayer) says)
//     -> hidden f32[T, d] (after the final norm), k_new f32[L, KV, T, hd], v_new (RoPE applied)
//     attributes layers, heads, kv_heads, head_dim, intermediate (i64), eps (f32), gemma (bool),
//     weights (i64: the matrices' WeightMatrix::Kind, 0 f32 [in, out] .. 3 q4).
//     The whole layer stack in one call (kernels/decoder_layers.h); the caller writes k_new/v_new
//     into the caches at start_pos.
//   cascade_embed_rows(table f32|bf16[V, d], ids s32[T]) -> f32[T, d], attribute scale (f32)
//     rows of the embedding as f32, times scale when it is not 1 (an id outside the table: an error).
//   cascade_tiny_candidates(x f32[T, d], w1t f32[d, H], b1 f32[H], ln_w f32[H], ln_b f32[H],
//       w2 s8[V, H], w2_scale f32[V], b2 f32[V]) -> ids s32[T, K], attribute eps (f32)
//     the top K of a tiny on the draft's hidden state (kernels/tiny_candidates.h).
//   cascade_argmax(x f32[T, n]) -> s32[T]
//     each row's argmax as StableHLO's argmax reduce gives it (kernels/argmax.h).
// Every matmul runs on kernels::ThreadTeam::Global() (both cores).
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "kernels/int8_matmul.h"
#include "pjrt/api.h"
#include "pjrt/client.h"

namespace cascade {
namespace kernels {

inline constexpr char kInt8MatmulTarget[] = "cascade_int8_matmul";
inline constexpr char kInt8GatherMatmulTarget[] = "cascade_int8_gather_matmul";
inline constexpr char kBf16MatmulTarget[] = "cascade_bf16_matmul";
inline constexpr char kBf16GatherMatmulTarget[] = "cascade_bf16_gather_matmul";
inline constexpr char kQ8Bf16MatmulTarget[] = "cascade_q8bf16_matmul";  // y = x . W^T, W = bf16(d * q), Q8_0 blocks
inline constexpr char kF32TMatmulTarget[] = "cascade_f32t_matmul";
inline constexpr char kF32PanelsMatmulTarget[] = "cascade_f32_panels_matmul";  // W^T as kF32Panels, flat
inline constexpr char kInt8PanelsMatmulTarget[] = "cascade_int8_panels_matmul";  // W as kInt8Panels, flat
inline constexpr char kDecoderLayersTarget[] = "cascade_decoder_layers";
inline constexpr char kEmbedRowsTarget[] = "cascade_embed_rows";
inline constexpr char kTinyCandidatesTarget[] = "cascade_tiny_candidates";
inline constexpr char kTinyCandidatesQ4Target[] = "cascade_tiny_candidates_q4";
inline constexpr char kArgmaxTarget[] = "cascade_argmax";
// ids[T] = the argmax of x . W^T for W = bf16(d * q) (Q8_0 blocks): kernels/head_argmax.h.
inline constexpr char kQ8Bf16ArgmaxTarget[] = "cascade_q8bf16_argmax";

struct KernelRegistration {
  bool registered = false;
  std::string reason;  // why not, when !registered
};

// Registers every cascade handler with the plugin, once per loaded plugin (later calls return the
// first outcome). Never throws: a plugin without the FFI extension, or one that refuses the
// handler, gives registered=false and the reason (callers then keep the XLA-only programs).
// CASCADE_FFI_KERNELS=0 in the environment disables it.
KernelRegistration RegisterKernels(const Api& api);

// Time spent inside our handlers since the process started (all threads' calls, wall time of
// each call), for profiles: decoder_bench reports it per forward.
struct KernelStats {
  int64_t calls = 0;
  int64_t nanoseconds = 0;
  // Of which inside the fused layer stack's matmuls (cascade_decoder_layers), caller's view.
  int64_t matmul_nanoseconds = 0;
  int64_t attention_nanoseconds = 0;  // and inside its attention
  // The thread that ran the latest cascade_decoder_layers call: the caller's own when the plugin
  // ran the program inline (a cheap program, model/programs.cc FusedLayers), else a pool thread.
  std::thread::id layers_thread;
  // Wall time inside cascade_decoder_layers calls (the fused stack); the rest of `nanoseconds` is
  // the head, the embedding and the plain matmul handlers.
  int64_t layers_nanoseconds = 0;
};
KernelStats GetKernelStats();

// The implementations the handlers run (default BestInt8Impl() / BestBf16Impl();
// CASCADE_INT8_KERNEL=scalar|avx2|avx512|avx512vnni and CASCADE_BF16_KERNEL=scalar|avx2|avx512|
// avx512bf16 override them, when the CPU supports it) and the threads of the kernel team
// (kernels/thread_team.h; CASCADE_KERNEL_THREADS=n, default: the CPUs this process may use).
std::string KernelDescription();

// The kernel kind of the block-stored bf16 target (WeightPrecision::kBF16Q4's layer matrices), one
// per process as the bf16 implementation above: kQ4ExactBf16 (the blocks' exact weights, d q + m,
// times bf16 activations: tiles without tables, docs/bench/decoder.md session 32) where the bf16
// kernels are AMX, else kQ4Bf16 (each weight rounded to bf16: the dense bf16 model bit for bit).
WeightMatrix::Kind BlockStoredBf16Kind();

}  // namespace kernels
}  // namespace cascade
