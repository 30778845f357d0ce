// A small StableHLO text builder: typed SSA values, one function (@main) with named params and
// results, and the ops a decoder needs. Every op checks its operand types in C++ and throws
// InvalidArgumentError on misuse, so a bug in a program emitter is a C++ error with a message,
// not an XLA parse failure or crash.
//
// The text is the "pretty" StableHLO syntax that jax.jit(...).lower(...).as_text() prints
// (jax 0.10.2), which the XLA CPU PJRT plugin parses.
//
//   hlo::Function f;
//   hlo::Value x = f.Param("x", DType::kF32, {2, 3});
//   hlo::Value y = f.Exp(x);
//   f.Return({y});
//   std::string text = f.ToText();
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "pjrt/dtype.h"

namespace cascade {
namespace hlo {

// An SSA value of a tensor type. Cheap to copy; only meaningful inside the Function that made it.
struct Value {
  std::string ref;            // "%x", "%v12", "%v3#1"
  DType dtype = DType::kF32;
  std::vector<int64_t> dims;  // static; empty = scalar
  int64_t rank() const { return static_cast<int64_t>(dims.size()); }
  int64_t dim(int64_t i) const;  // negative i counts from the back; throws when out of range
};

std::string TensorTypeText(DType dtype, const std::vector<int64_t>& dims);  // tensor<2x3xf32>
inline std::string TypeText(const Value& v) { return TensorTypeText(v.dtype, v.dims); }
bool IsFloat(DType dtype);
bool IsInteger(DType dtype);  // signed or unsigned integer (not pred)

enum class CompareDirection { kEq, kNe, kLt, kLe, kGt, kGe };
enum class ReduceKind { kSum, kMax, kMin };

class Function {
 public:
  Function() = default;

  // --- signature ---
  // A parameter of @main, in call order. `alias_output`: the result index this parameter is
  // donated to (`tf.aliasing_output`); its type must equal that result's type (checked in Return).
  Value Param(const std::string& name, DType dtype, std::vector<int64_t> dims,
              std::optional<int> alias_output = std::nullopt);
  // Sets @main's results (once).
  void Return(const std::vector<Value>& results);
  // The whole module. Throws if Return was not called.
  std::string ToText() const;
  size_t num_params() const { return params_.size(); }

  // --- constants and index generators ---
  Value Constant(DType dtype, double value, std::vector<int64_t> dims = {});  // splat
  Value ConstantF32(std::vector<int64_t> dims, const std::vector<float>& values);  // dense, exact
  Value ConstantS32(std::vector<int64_t> dims, const std::vector<int32_t>& values);
  Value Iota(DType dtype, std::vector<int64_t> dims, int64_t iota_dim);

  // --- elementwise (operands of identical type; no implicit broadcasting) ---
  Value Add(const Value& a, const Value& b);
  Value Sub(const Value& a, const Value& b);
  Value Mul(const Value& a, const Value& b);
  Value Div(const Value& a, const Value& b);
  Value Max(const Value& a, const Value& b);
  Value Min(const Value& a, const Value& b);
  Value And(const Value& a, const Value& b);  // pred or integer
  Value Or(const Value& a, const Value& b);
  Value Negate(const Value& x);
  Value Abs(const Value& x);
  Value Exp(const Value& x);                   // float only, as the rest of the unary ops below
  Value Log(const Value& x);
  Value Rsqrt(const Value& x);
  Value Sqrt(const Value& x);
  Value Tanh(const Value& x);
  Value Logistic(const Value& x);
  Value Cos(const Value& x);
  Value Sin(const Value& x);
  Value Convert(const Value& x, DType dtype);
  // The same bytes as another type: x's element width equals dtype's (dims unchanged), or x has
  // one extra minor dimension of (dtype's width / x's width) elements (dims: x's without it).
  Value BitcastConvert(const Value& x, DType dtype, std::vector<int64_t> dims);
  Value Compare(CompareDirection direction, const Value& a, const Value& b);  // -> pred, same dims
  // pred is a scalar or has x's dims; on_true and on_false have identical types.
  Value Select(const Value& pred, const Value& on_true, const Value& on_false);

  // --- shapes ---
  // Operand dimension i maps to result dimension broadcast_dims[i] (size equal, or 1).
  Value BroadcastInDim(const Value& x, std::vector<int64_t> dims, std::vector<int64_t> broadcast_dims);
  Value Reshape(const Value& x, std::vector<int64_t> dims);
  Value Transpose(const Value& x, std::vector<int64_t> permutation);
  Value Slice(const Value& x, std::vector<int64_t> start, std::vector<int64_t> limit);
  // Starts are scalar s32 values (clamped by XLA so the slice fits: callers must keep them in range).
  Value DynamicSlice(const Value& x, const std::vector<Value>& starts, std::vector<int64_t> sizes);
  Value DynamicUpdateSlice(const Value& x, const Value& update, const std::vector<Value>& starts);
  Value Concatenate(const std::vector<Value>& parts, int64_t dim);

  // --- contractions and reductions ---
  // Result dims: batch dims, then lhs free dims, then rhs free dims (StableHLO's order). Operand
  // element types must match; `result_dtype` defaults to theirs (e.g. bf16 x bf16 -> f32).
  Value DotGeneral(const Value& lhs, const Value& rhs, std::vector<int64_t> lhs_batch,
                   std::vector<int64_t> rhs_batch, std::vector<int64_t> lhs_contract,
                   std::vector<int64_t> rhs_contract, std::optional<DType> result_dtype = std::nullopt);
  Value Reduce(const Value& x, ReduceKind kind, std::vector<int64_t> dims);
  // Index of the largest element along `dim` (first one on ties; NaN counts as largest), s32.
  Value Argmax(const Value& x, int64_t dim);
  // The k largest along the last dim, sorted descending: (values, s32 indices). chlo.top_k.
  std::pair<Value, Value> TopK(const Value& x, int64_t k);
  // Rows of `table` [N, ...] picked by s32 `indices` [M] -> [M, ...] (stablehlo.gather).
  Value GatherRows(const Value& table, const Value& indices);
  // Columns of `table` [N, M] picked by s32 `indices` [K] -> [K, N] (rows of table^T).
  Value GatherColumns(const Value& table, const Value& indices);
  // table [M, N] (any element type), s32 indices [M] -> table[m, indices[m]] as [M].
  Value TakeAlongLastDim(const Value& table, const Value& indices);

  // --- custom calls ---
  // A typed XLA FFI call (api_version 4, as jax.ffi.ffi_call lowers) of a target registered with
  // the plugin, one result of (dtype, dims); operands and result row-major.
  Value CustomCall(const std::string& target, const std::vector<Value>& operands, DType dtype, std::vector<int64_t> dims);
  // Several results and attributes (the handler's backend_config dictionary, e.g. {"layers",
  // "30 : i64"}: MLIR attribute text, written as given).
  struct ResultType {
    DType dtype;
    std::vector<int64_t> dims;
  };
  std::vector<Value> CustomCall(const std::string& target, const std::vector<Value>& operands,
                                const std::vector<ResultType>& results,
                                const std::vector<std::pair<std::string, std::string>>& attributes);

  // --- composite helpers (built from the ops above) ---
  Value ScalarLike(const Value& like, double value);  // splat constant of like's type
  // BroadcastInDim(y, like.dims, broadcast_dims), with y's dtype.
  Value BroadcastLike(const Value& y, const Value& like, std::vector<int64_t> broadcast_dims);
  Value Softmax(const Value& x, int64_t dim);      // numerically stable, float
  Value LogSoftmax(const Value& x, int64_t dim);
  Value LogSumExp(const Value& x, int64_t dim);     // dim removed
  // RMSNorm over the last dim: x * rsqrt(mean(x^2) + eps) * (plus_one ? 1 + w : w); w [last dim].
  Value RmsNorm(const Value& x, const Value& weight, double eps, bool plus_one);

 private:
  struct ParamInfo {
    Value value;
    std::optional<int> alias_output;
  };
  std::string NewRef();
  Value Emit(const std::string& rhs, DType dtype, std::vector<int64_t> dims);
  Value Elementwise(const char* op, const Value& a, const Value& b);
  Value Unary(const char* op, const Value& x, bool float_only);

  std::vector<ParamInfo> params_;
  std::vector<std::string> body_;
  std::vector<Value> results_;
  bool returned_ = false;
  int next_id_ = 0;
};

}  // namespace hlo
}  // namespace cascade
