// Quantised matmul kernels for the XLA CPU path (issue #7): XLA CPU converts a whole s8 weight
// matrix to f32 in memory before its dot, so int8 weights were slower than f32. These kernels read
// the s8 weights directly (4x fewer bytes than f32) and are registered as XLA FFI custom calls
// (kernels/ffi_handlers.h).
//
//   y[T, out] = (x[T, in] . W[out, in]^T) * scale[out]      x, y, scale f32; W s8 (row-major)
//
// Exactness contract: y[t, :] depends only on x[t, :] (and W, scale), bit for bit, whatever T,
// the output range a call covers, or the thread count. The cascade relies on verify(k) and
// decode(1) producing identical logits per row. Every implementation below keeps it; different
// implementations (scalar vs AVX-512) may differ from each other in the last bits.
#pragma once

#include <cstdint>
#include <functional>
#include <new>
#include <string>
#include <vector>

namespace cascade {
namespace kernels {

enum class Int8Impl {
  kScalar,      // portable C++ (any CPU)
  kAvx2,        // AVX2 + FMA: s8 -> f32 in registers, f32 FMA
  kAvx512,      // AVX-512: s8 -> f32 in registers, f32 FMA (activations stay f32)
  kAvx512Vnni,  // AVX-512 VNNI: activations quantised per 32-block to s8 (Q8_0-like), vpdpbusd
  // bf16 weights only: activations rounded to bf16 (nearest even, as XLA's kBF16Activations),
  // AVX512_BF16 vdpbf16ps. For int8 calls it means the best int8 impl.
  kAvx512Bf16,
  // bf16 weights only: AMX tiles (tdpbf16ps), activations rounded to bf16 as kAvx512Bf16. The
  // weight rows are the A operand as stored (16 rows x 32 k per tile) and the activations the B
  // operand (up to 16 tokens per tile), so a verify of T <= 16 tokens costs about what one token
  // costs: the weights are read once and AMX does the arithmetic (Sapphire Rapids and later, with
  // the kernel's permission for the tile state). Rows of a matrix whose `in` is not a multiple of
  // 32, and the last out % 16 rows, use kAvx512Bf16. For int8 calls it means the best int8 impl.
  kAmxBf16,
};
const char* Int8ImplName(Int8Impl impl);
bool Int8ImplSupported(Int8Impl impl);  // this CPU can run it
// The fastest measured implementation this CPU supports (see the .cc for the numbers).
Int8Impl BestInt8Impl();
// The fastest bf16 implementation this CPU supports (kAmxBf16 with AMX, else kAvx512Bf16 when it
// has AVX512_BF16).
Int8Impl BestBf16Impl();
// "scalar" / "avx2" / "avx512" / "avx512vnni" / "avx512bf16" -> impl; false when unknown.
bool ParseInt8Impl(const std::string& name, Int8Impl* impl);

struct Int8MatmulShape {
  int64_t T = 0, in = 0, out = 0;
};
// Empty when the shape is one we compute; otherwise why not (positive sizes, T <= 4096, in small
// enough for exact int32 accumulation).
std::string ValidateInt8Matmul(const Int8MatmulShape& shape);

// Runs a task on another thread (e.g. XLA's intra-op pool); may also never run it (the caller
// then does all the work). nullptr: single-threaded.
using Spawner = std::function<void(std::function<void()>)>;

// The whole product. `helpers`: how many extra threads to ask `spawn` for (0: run here only).
// Small products (under ~256K multiply-adds) always run on the calling thread. Throws
// std::invalid_argument on a shape ValidateInt8Matmul rejects or an unsupported impl.
void Int8Matmul(Int8Impl impl, const float* x, const int8_t* w, const float* scale, float* y,
                const Int8MatmulShape& shape, int helpers = 0, const Spawner& spawn = nullptr);

// The LM head's logits at k ids per row only (the cascade's candidates head):
//   y[t, j] = (x[t, :] . W[ids[t, j], :]) * scale[ids[t, j]]      ids s32[T, k], y f32[T, k]
// bit-identical to Int8Matmul's y[t, ids[t, j]] with the same impl. Ids outside [0, out) are
// clamped, as XLA's gather clamps. Single-threaded (T * k rows is small).
void Int8GatherMatmul(Int8Impl impl, const float* x, const int8_t* w, const float* scale, const int32_t* ids, float* y,
                      const Int8MatmulShape& shape, int64_t k);

// bf16 weights (raw bf16 bits, row-major [out, in]), no scale: y = x . W^T with W upcast exactly
// to f32 in registers (what XLA's upcast path computes, in our summation order). `impl` as for
// int8 (kAvx512Vnni means kAvx512 here: activations stay f32). Same row-exactness contract.
void Bf16Matmul(Int8Impl impl, const float* x, const uint16_t* w, float* y, const Int8MatmulShape& shape,
                int helpers = 0, const Spawner& spawn = nullptr);
void Bf16GatherMatmul(Int8Impl impl, const float* x, const uint16_t* w, const int32_t* ids, float* y,
                      const Int8MatmulShape& shape, int64_t k);

// ---- Building blocks of the fused decoder step (kernels/decoder_layers.h) ----

// out[i] = the bf16 bits of x[i], rounded to nearest even as XLA's convert rounds (a NaN stays a
// quiet NaN): AVX-512 where the CPU has it, the same bits either way.
void RoundToBf16(const float* x, int64_t n, uint16_t* out);

// A weight matrix as stored on the device. kF32Transposed: f32 [in, out] (the f32 upload layout,
// model/programs.h); kBf16: bf16 bits [out, in]; kInt8: s8 [out, in] with f32 scale[out]; kQ4:
// 4-bit blocks in panels of 16 rows (kQ4PanelRows below) with f16 block scales and minimums;
// kQ4Bf16: stored as kQ4 with each row's values together (Q4Order::kRows), computed as kBf16 with the bf16 rounding of each weight d * q + m: the
// rows equal, bit for bit, kBf16's on those bf16 weights (a bf16 target whose weights came from
// 4-bit blocks, e.g. a Q4_1 GGUF's, read at ~5 bits a weight instead of 16); kQ8Bf16: s8 blocks of 32
// with an f16 scale each (GGUF's Q8_0) in panels of 16 rows (below), computed as kBf16 with
// the bf16 rounding of each weight d * q (the bf16 target's head from a Q8_0 embedding);
// kF32Panels: kF32Transposed's values in panels of kF32PanelColumns outputs (below), the layer
// arenas' f32 layout: the same arithmetic and bits, read as contiguous streams; kInt8Panels:
// kInt8's values in panels of 16 rows (below), the layer arenas' int8 layout; kQ4ExactBf16: 4-bit
// blocks (Q4Order::kPairs) times bf16 activations with the blocks' exact weights, not their bf16
// rounding: per row and 32-block b, s = sum over the block of x * (128 + q) (bf16(128 + q) is the
// word 0x4300 | q, every product exact in f32), then acc = fma(d, s, acc) and acc = fma(m - 128 d,
// sum of the block's x, acc). Rows of every T equal T = 1's, bit for bit, on one CPU; they are
// not kBf16's (docs/bench/decoder.md, session 32: the tile build without kQ4Bf16's tables).
struct WeightMatrix {
  // (The numbers are the fused layer call's `weights` attribute: append only.)
  enum class Kind { kF32Transposed, kBf16, kInt8, kQ4, kQ4Bf16, kQ8Bf16, kF32Panels, kInt8Panels, kQ4ExactBf16 };
  Kind kind = Kind::kF32Transposed;
  const void* data = nullptr;
  const float* scale = nullptr;  // kInt8, kInt8Panels: f32 [out]
  int64_t in = 0, out = 0;
  const uint16_t* block_scale = nullptr;  // kQ4, kQ4Bf16, kQ8Bf16: f16 bits (panels of 16 rows)
  const uint16_t* block_min = nullptr;    // kQ4, kQ4Bf16: f16 bits [out, in / 32]
};

// ---- f32 weights in panels (kF32Panels) ----
// W^T [in, out] cut into panels of 64 outputs, each stored whole: panel p (outputs 64p..64p+n,
// n = min(64, out - 64p)) starts at element 64p * in and holds [in][n]. A matmul task (64
// outputs) then reads one contiguous run of in * 256 bytes instead of 256 bytes of every row of
// [in, out]: xnnpack_bench, the 30 SmolLM2 layers at T = 1, 21.7 -> 15.8 ms, the same bits.
constexpr int64_t kF32PanelColumns = 64;
// wt [in, out] -> panels (in * out floats).
void PackF32Panels(const float* wt, int64_t in, int64_t out, float* panels);

// ---- 4-bit weights (the draft's "q4" precision; the blocks of GGUF's Q4_1) ----
// Per 32-block b of a row: w = d[b] * q + m[b], q in 0..15, d and m f16. The rows are stored in
// panels of 16 (kQ4PanelRows; the last panel holds out % 16 rows when that is not 0), so that a
// kernel computes 16 outputs per instruction (vpdpbusd with one token's 4 inputs broadcast):
//   values: panel p (width n) starts at byte 16p * in / 2; in it, per 64 inputs (chunk c, blocks
//     2c and 2c + 1), per r in 0..7, per row j < n, 4 bytes: byte k holds the weight of input
//     64c + 4r + k in its low nibble and of input 64c + 32 + 4r + k in its high nibble;
//   block scales and minimums: panel p starts at element 16p * in / 32; in it [block][row j < n].
// The tensors keep the shapes u8 [out, in / 2] and f16 [out, in / 32]: a panel is a run of whole
// rows of those shapes. `in` must be a multiple of 64. A Q4_1 GGUF tensor's dequantised values
// quantise back to its own blocks.
constexpr int64_t kQ4Block = 32;
constexpr int64_t kQ4PanelRows = 16;
// The order of the values within a panel's 64-input chunk. kInterleaved (kQ4, above) serves the
// VNNI kernel's 16-row dword loads. kRows (kQ4Bf16) keeps a row's 32 bytes together: per chunk c,
// per row j < n, 32 bytes, byte k holding input 64c + k low and 64c + 32 + k high, so the AMX
// kernel loads each row of a tile as it is (kInterleaved cost it an 8 x 16 dword transpose per
// chunk: ~20% of its time, docs/bench/decoder.md session 15). kPairs (kQ4ExactBf16): per 32-block b
// of a panel, 16 n bytes at b * 16 n, in 4 groups g of 4 n bytes (the block's inputs 8g..8g+7):
// 2 n little-endian words, word i (row i / 2, e = i % 2) holding in bits 4k..4k+3 the weight of
// input 8g + 2k + e. With n = 16 a group is one 64-byte load whose nibbles k, OR'd with 0x4300,
// are tdpbf16ps's B tile rows 4g + k (each row's pair of inputs side by side for 16 rows).
// Scales and minimums alike in all three.
enum class Q4Order { kInterleaved, kRows, kPairs };
inline Q4Order Q4OrderOf(WeightMatrix::Kind kind) {
  if (kind == WeightMatrix::Kind::kQ4Bf16) return Q4Order::kRows;
  return kind == WeightMatrix::Kind::kQ4ExactBf16 ? Q4Order::kPairs : Q4Order::kInterleaved;
}
std::string ValidateQ4Matrix(int64_t in, int64_t out);  // empty when in % 64 == 0 and both positive
// Quantises rows w[out, in] (f32) as ggml's Q4_1: d = (max - min) / 15, m = min (both rounded to
// f16 first), q = round((w - m) / d) clamped to 0..15.
void QuantizeQ4Rows(const float* w, int64_t in, int64_t out, uint8_t* packed, uint16_t* block_scale,
                    uint16_t* block_min, Q4Order order = Q4Order::kInterleaved);
// The f32 weights of row o: what every Q4 kernel multiplies by.
void DequantizeQ4Row(const uint8_t* packed, const uint16_t* block_scale, const uint16_t* block_min, int64_t in,
                     int64_t out, int64_t o, float* w, Q4Order order = Q4Order::kInterleaved);
// ---- 8-bit blocks (kQ8Bf16: GGUF's Q8_0, in panels) ----
// Per 32-block b of a row: w = d[b] * q, q in -127..127, d f16. Stored in panels of 16 rows (the
// last one holds out % 16 when that is not 0): panel p (n rows) starts at byte 16p * in; in it, per
// block b, per row j < n, the block's 32 bytes; its scales start at element 16p * in / 32: [b][j].
// A panel is a run of whole rows of the shapes s8 [out, in] and f16 [out, in / 32], and
// AmxQ8Bf16Rows reads it front to back (row-major, its 16 rows' blocks were 16 streams a tile).
// Quantises rows w[out, in] (in % 32 == 0) as ggml's Q8_0: d = amax / 127 rounded to f16, q =
// round(w / d). Returns whether the blocks hold every weight's bf16 rounding exactly (bf16(d * q)
// == bf16(w)), as they do for a Q8_0 GGUF tensor's values.
bool QuantizeQ8Rows(const float* w, int64_t in, int64_t out, int8_t* q, uint16_t* block_scale);
// The f32 values d * q of row o.
void DequantizeQ8Row(const int8_t* q, const uint16_t* block_scale, int64_t in, int64_t out, int64_t o, float* w);

// ---- int8 rows in panels (kInt8Panels: the int8 layer matrices of a fused model's arena) ----
// kInt8's s8 [out, in] values in panels of 16 rows (the last one holds out % 16 when that is not
// 0), so that the VNNI kernel computes 16 outputs per vpdpbusd, as for kQ4: panel p (n rows)
// starts at byte 16p * in; in it, per 32-input block b, per r in 0..7, per row j < n, 4 bytes: the
// weights of inputs 32b + 4r .. 32b + 4r + 3, each stored XOR 0x80 (w + 128 as u8, vpdpbusd's
// unsigned operand). The scales stay f32 [out]. A panel is a run of whole rows of [out, in]; `in`
// must be a multiple of 32. The row-major kernel spent 3 instructions per row, 64 inputs and
// token (a float conversion and an FMA per vpdpbusd); this one 1.25 (docs/bench/decoder.md).
std::string ValidateInt8Panels(int64_t in, int64_t out);  // empty when in % 32 == 0 and both positive
void PackInt8Panels(const int8_t* w, int64_t in, int64_t out, uint8_t* panels);
// Rows [o0, o1) of a kInt8Panels matrix back as s8 rows [o1 - o0, in].
void UnpackInt8PanelRows(const uint8_t* panels, int64_t in, int64_t out, int64_t o0, int64_t o1, int8_t* rows);

// Whether the q4 blocks of w[out, in] (f32) hold every weight's bf16 rounding exactly: the bf16
// rounding of QuantizeQ4Rows's dequantised values equals that of w, weight for weight (then
// kQ4Bf16 computes what kBf16 computes on the bf16 weights). True for a Q4_1 GGUF tensor's values.
bool Q4HoldsBf16Exactly(const float* w, int64_t in, int64_t out, const uint8_t* packed, const uint16_t* block_scale,
                        const uint16_t* block_min, Q4Order order = Q4Order::kInterleaved);

// The implementations a process uses per weight kind (chosen once: rows computed by different
// programs then agree bit for bit).
struct KernelImpls {
  Int8Impl int8 = Int8Impl::kScalar;
  Int8Impl bf16 = Int8Impl::kScalar;
  Int8Impl f32 = Int8Impl::kScalar;  // kScalar or kAvx512 (f32 [in, out] weights)
};

// Memory for vectors a kernel reads 64 bytes at a time: whole cache lines (a 64-byte load that
// spans two lines costs ~1.3x on Zen 4: vdpbf16ps over 16 tokens' bf16 rows, session 22).
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64})); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t{64}); }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};
using Bf16Rows = std::vector<uint16_t, CacheLineAllocator<uint16_t>>;

// Activations x[T, in] prepared once for every matrix that reads them (q/k/v, gate/up): VNNI
// quantises them per 32-block, the bf16 dot rounds them to bf16; the f32 paths read x as is.
struct PreparedActivations {
  const float* x = nullptr;
  int64_t T = 0, in = 0;
  int64_t chunks = 0;                // VNNI: ceil(in / 64)
  std::vector<int8_t> q;             // VNNI: [T][chunks * 64]
  std::vector<float> lane_scale;     // VNNI: [T][chunks][16]
  std::vector<int32_t> lane_bias;    // VNNI: [T][chunks][16]
  std::vector<float> block_sum;      // VNNI, Q4 weights: [T][chunks * 2] block scale * sum of its s8 values
  std::vector<float> block_scale;    // VNNI, Q4 and int8 panels: [T][chunks * 2] the block scales
  std::vector<int32_t> block_bias;   // VNNI, int8 panels: [T][chunks * 2] -128 * sum of the block's s8 values
  int64_t ldx = 0;                   // bf16 dot: row stride of xb
  Bf16Rows xb;                       // bf16 dot: [T][ldx], rows of whole cache lines
  std::vector<uint16_t> amx;         // AMX: B tiles [ceil(T/16)][in/32][16 pairs][min(T, 16) tokens][2]
  std::vector<float> xb_block_sum;   // kQ4ExactBf16: [T][in / 32] each 32-block of xb summed (one order per CPU)
};
void PrepareActivations(WeightMatrix::Kind kind, const KernelImpls& impls, const float* x, int64_t T, int64_t in,
                        PreparedActivations* a);

// y[t, o] for t < T, o in [o0, o1) of y = x . W^T (times scale for int8), y row-major [T, m.out].
// Each element is computed by one instruction sequence whatever the range or T: rows are
// T-independent, bit for bit (the contract above).
void MatmulRange(const WeightMatrix& m, const KernelImpls& impls, const PreparedActivations& a, float* y, int64_t o0,
                 int64_t o1);
// How many outputs one task of a parallel matmul should cover (a multiple of 16, about 128 KB of
// weights; 64 columns for f32 [in, out]).
int64_t MatmulTaskOutputs(const WeightMatrix& m);

// Whether the f32 [in, out] kernel has a SIMD implementation here (else scalar).
Int8Impl BestF32Impl();

// Sums floats [begin, end) with the widest loads this CPU has: a read-bandwidth probe (the
// physical bound a decode step is measured against, tools/decoder_bench and kernel_bench).
float SumForBandwidth(const float* begin, const float* end);

// The mask of a 16-lane vector's first min(left, 16) lanes (left >= 0): loop tails of the AVX-512
// paths.
inline uint16_t FirstLanes16(int64_t left) {
  return left >= 16 ? uint16_t{0xffff} : static_cast<uint16_t>((1u << left) - 1);
}

// Runs task(0..n-1), each exactly once, on the calling thread and up to `helpers` spawned tasks
// that pull indices from a shared counter. Returns when all n are done. Safe when spawned tasks
// start late or never (the caller then claims every index) and when they outlive the call.
void ParallelTasks(int64_t n, const std::function<void(int64_t)>& task, int helpers, const Spawner& spawn);

}  // namespace kernels
}  // namespace cascade
