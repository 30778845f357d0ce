#include "util/float16.h"
#include "hlo/builder.h"

#include <algorithm>
#include <cctype>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>

#include "pjrt/errors.h"

namespace cascade {
namespace hlo {
namespace {

[[noreturn]] void Fail(const std::string& op, const std::string& message) {
  throw InvalidArgumentError("hlo::" + op + ": " + message);
}

std::string DimsText(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

std::string Shape(const Value& v) { return ShapeString(v.dtype, v.dims); }

void CheckDims(const std::string& op, const std::vector<int64_t>& dims) {
  for (int64_t d : dims)
    if (d < 0) Fail(op, "negative dimension in " + DimsText(dims));
}

// Distinct, in range [0, rank).
void CheckAxes(const std::string& op, const std::vector<int64_t>& axes, int64_t rank, const char* what) {
  std::set<int64_t> seen;
  for (int64_t a : axes) {
    if (a < 0 || a >= rank) Fail(op, std::string(what) + " " + DimsText(axes) + " out of range for rank " + std::to_string(rank));
    if (!seen.insert(a).second) Fail(op, std::string(what) + " " + DimsText(axes) + " repeats an axis");
  }
}

void CheckScalarIndex(const std::string& op, const Value& v) {
  if (!v.dims.empty() || (v.dtype != DType::kS32 && v.dtype != DType::kS64))
    Fail(op, "start index must be a scalar s32/s64, got " + Shape(v));
}

const char* CompareTypeFor(DType dtype) {
  if (IsFloat(dtype)) return "FLOAT";
  if (dtype == DType::kU8 || dtype == DType::kU16 || dtype == DType::kU32 || dtype == DType::kPred) return "UNSIGNED";
  return "SIGNED";
}

// A scalar literal in the element syntax MLIR's dense<> accepts, exact for floats.
std::string ScalarLiteral(DType dtype, double value) {
  char buf[40];
  switch (dtype) {
    case DType::kF32: {
      float f = static_cast<float>(value);
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      std::snprintf(buf, sizeof(buf), "0x%08" PRIX32, bits);
      return buf;
    }
    case DType::kBF16:
      std::snprintf(buf, sizeof(buf), "0x%04X", static_cast<unsigned>(F32ToBF16(static_cast<float>(value))));
      return buf;
    case DType::kF64: {
      uint64_t bits;
      std::memcpy(&bits, &value, 8);
      std::snprintf(buf, sizeof(buf), "0x%016" PRIX64, bits);
      return buf;
    }
    case DType::kPred:
      return value != 0 ? "true" : "false";
    case DType::kS32: case DType::kS8: case DType::kS64: case DType::kU8: case DType::kU16: case DType::kU32:
      if (value != std::floor(value)) Fail("Constant", "non-integer value for " + std::string(DTypeName(dtype)));
      return std::to_string(static_cast<long long>(value));
    default:
      Fail("Constant", std::string("unsupported element type ") + DTypeName(dtype));
  }
}

std::string HexBytes(const void* data, size_t size) {
  static const char* kHex = "0123456789ABCDEF";
  std::string s = "\"0x";
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < size; ++i) {
    s += kHex[p[i] >> 4];
    s += kHex[p[i] & 15];
  }
  return s + "\"";
}

std::string SanitizeName(const std::string& name) {
  std::string s;
  for (char c : name) s += (std::isalnum(static_cast<unsigned char>(c)) || c == '_') ? c : '_';
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) s = "p" + s;
  return s;
}

std::vector<int64_t> AllBut(int64_t rank, int64_t dim) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < rank; ++i)
    if (i != dim) out.push_back(i);
  return out;
}

}  // namespace

int64_t Value::dim(int64_t i) const {
  int64_t r = rank();
  if (i < 0) i += r;
  if (i < 0 || i >= r) throw InvalidArgumentError("hlo::Value::dim: axis out of range for " + ShapeString(dtype, dims));
  return dims[static_cast<size_t>(i)];
}

std::string TensorTypeText(DType dtype, const std::vector<int64_t>& dims) {
  std::string s = "tensor<";
  for (int64_t d : dims) s += std::to_string(d) + "x";
  return s + DTypeMlirName(dtype) + ">";
}

bool IsFloat(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16 || dtype == DType::kF64;
}

bool IsInteger(DType dtype) {
  return dtype == DType::kS32 || dtype == DType::kS8 || dtype == DType::kU8 || dtype == DType::kS64 ||
         dtype == DType::kU16 || dtype == DType::kU32;
}

// ---------------------------------------------------------------- signature and text

Value Function::Param(const std::string& name, DType dtype, std::vector<int64_t> dims,
                      std::optional<int> alias_output) {
  if (returned_) Fail("Param", "function already returned");
  CheckDims("Param", dims);
  std::string base = SanitizeName(name), ref = base;
  for (int n = 1;; ++n) {
    bool clash = false;
    for (const auto& p : params_) clash |= p.value.ref == "%" + ref;
    if (!clash) break;
    ref = base + "_" + std::to_string(n);
  }
  if (alias_output && *alias_output < 0) Fail("Param", "negative aliasing output for " + name);
  for (const auto& p : params_)
    if (alias_output && p.alias_output == alias_output)
      Fail("Param", "result " + std::to_string(*alias_output) + " is already aliased by " + p.value.ref);
  Value v{"%" + ref, dtype, std::move(dims)};
  params_.push_back({v, alias_output});
  return v;
}

void Function::Return(const std::vector<Value>& results) {
  if (returned_) Fail("Return", "called twice");
  if (results.empty()) Fail("Return", "@main needs at least one result");
  for (const auto& p : params_) {
    if (!p.alias_output) continue;
    size_t r = static_cast<size_t>(*p.alias_output);
    if (r >= results.size())
      Fail("Return", p.value.ref + " is aliased with result " + std::to_string(r) + " but there are only " +
                         std::to_string(results.size()) + " results");
    if (results[r].dtype != p.value.dtype || results[r].dims != p.value.dims)
      Fail("Return", p.value.ref + " (" + Shape(p.value) + ") is aliased with result " + std::to_string(r) + " of type " +
                         Shape(results[r]));
  }
  results_ = results;
  returned_ = true;
}

std::string Function::ToText() const {
  if (!returned_) Fail("ToText", "Return was not called");
  std::ostringstream os;
  os << "module @cascade {\n  func.func public @main(";
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& p = params_[i];
    os << (i ? ",\n      " : "") << p.value.ref << ": " << TypeText(p.value);
    if (p.alias_output) os << " {tf.aliasing_output = " << *p.alias_output << " : i32}";
  }
  os << ") -> (";
  for (size_t i = 0; i < results_.size(); ++i) os << (i ? ", " : "") << TypeText(results_[i]);
  os << ") {\n";
  for (const auto& line : body_) os << line << "\n";
  os << "    return ";
  for (size_t i = 0; i < results_.size(); ++i) os << (i ? ", " : "") << results_[i].ref;
  os << " : ";
  for (size_t i = 0; i < results_.size(); ++i) os << (i ? ", " : "") << TypeText(results_[i]);
  os << "\n  }\n}\n";
  return os.str();
}

std::string Function::NewRef() { return "%" + std::to_string(next_id_++); }

Value Function::Emit(const std::string& rhs, DType dtype, std::vector<int64_t> dims) {
  if (returned_) throw InvalidArgumentError("hlo: op emitted after Return");
  Value v{NewRef(), dtype, std::move(dims)};
  body_.push_back("    " + v.ref + " = " + rhs);
  return v;
}

// ---------------------------------------------------------------- constants

Value Function::Constant(DType dtype, double value, std::vector<int64_t> dims) {
  CheckDims("Constant", dims);
  if (IsFloat(dtype) && dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF64)
    Fail("Constant", std::string("unsupported float type ") + DTypeName(dtype));
  return Emit("stablehlo.constant dense<" + ScalarLiteral(dtype, value) + "> : " + TensorTypeText(dtype, dims), dtype,
              dims);
}

Value Function::ConstantF32(std::vector<int64_t> dims, const std::vector<float>& values) {
  CheckDims("ConstantF32", dims);
  if (static_cast<int64_t>(values.size()) != ElementCount(dims))
    Fail("ConstantF32", std::to_string(values.size()) + " values for shape " + DimsText(dims));
  return Emit("stablehlo.constant dense<" + HexBytes(values.data(), values.size() * 4) + "> : " +
                  TensorTypeText(DType::kF32, dims),
              DType::kF32, dims);
}

Value Function::ConstantS32(std::vector<int64_t> dims, const std::vector<int32_t>& values) {
  CheckDims("ConstantS32", dims);
  if (static_cast<int64_t>(values.size()) != ElementCount(dims))
    Fail("ConstantS32", std::to_string(values.size()) + " values for shape " + DimsText(dims));
  return Emit("stablehlo.constant dense<" + HexBytes(values.data(), values.size() * 4) + "> : " +
                  TensorTypeText(DType::kS32, dims),
              DType::kS32, dims);
}

Value Function::Iota(DType dtype, std::vector<int64_t> dims, int64_t iota_dim) {
  CheckDims("Iota", dims);
  if (iota_dim < 0 || iota_dim >= static_cast<int64_t>(dims.size())) Fail("Iota", "iota_dim out of range");
  if (!IsFloat(dtype) && !IsInteger(dtype)) Fail("Iota", "numeric element type required");
  return Emit("stablehlo.iota dim = " + std::to_string(iota_dim) + " : " + TensorTypeText(dtype, dims), dtype, dims);
}

// ---------------------------------------------------------------- elementwise

Value Function::Elementwise(const char* op, const Value& a, const Value& b) {
  if (a.dtype != b.dtype || a.dims != b.dims)
    Fail(op, "operand types differ: " + Shape(a) + " vs " + Shape(b) + " (broadcast explicitly)");
  if (a.dtype == DType::kPred && std::strcmp(op, "and") != 0 && std::strcmp(op, "or") != 0 &&
      std::strcmp(op, "maximum") != 0 && std::strcmp(op, "minimum") != 0)
    Fail(op, "arithmetic on pred");
  return Emit(std::string("stablehlo.") + op + " " + a.ref + ", " + b.ref + " : " + TypeText(a), a.dtype, a.dims);
}

Value Function::Add(const Value& a, const Value& b) { return Elementwise("add", a, b); }
Value Function::Sub(const Value& a, const Value& b) { return Elementwise("subtract", a, b); }
Value Function::Mul(const Value& a, const Value& b) { return Elementwise("multiply", a, b); }
Value Function::Div(const Value& a, const Value& b) { return Elementwise("divide", a, b); }
Value Function::Max(const Value& a, const Value& b) { return Elementwise("maximum", a, b); }
Value Function::Min(const Value& a, const Value& b) { return Elementwise("minimum", a, b); }
Value Function::And(const Value& a, const Value& b) {
  if (IsFloat(a.dtype)) Fail("and", "float operands");
  return Elementwise("and", a, b);
}
Value Function::Or(const Value& a, const Value& b) {
  if (IsFloat(a.dtype)) Fail("or", "float operands");
  return Elementwise("or", a, b);
}

Value Function::Unary(const char* op, const Value& x, bool float_only) {
  if (float_only && !IsFloat(x.dtype)) Fail(op, "float operand required, got " + Shape(x));
  if (x.dtype == DType::kPred) Fail(op, "pred operand");
  return Emit(std::string("stablehlo.") + op + " " + x.ref + " : " + TypeText(x), x.dtype, x.dims);
}

Value Function::Negate(const Value& x) { return Unary("negate", x, false); }
Value Function::Abs(const Value& x) { return Unary("abs", x, false); }
Value Function::Exp(const Value& x) { return Unary("exponential", x, true); }
Value Function::Log(const Value& x) { return Unary("log", x, true); }
Value Function::Rsqrt(const Value& x) { return Unary("rsqrt", x, true); }
Value Function::Sqrt(const Value& x) { return Unary("sqrt", x, true); }
Value Function::Tanh(const Value& x) { return Unary("tanh", x, true); }
Value Function::Logistic(const Value& x) { return Unary("logistic", x, true); }
Value Function::Cos(const Value& x) { return Unary("cosine", x, true); }
Value Function::Sin(const Value& x) { return Unary("sine", x, true); }

Value Function::Convert(const Value& x, DType dtype) {
  if (x.dtype == dtype) return x;
  return Emit("stablehlo.convert " + x.ref + " : (" + TypeText(x) + ") -> " + TensorTypeText(dtype, x.dims), dtype,
              x.dims);
}

Value Function::BitcastConvert(const Value& x, DType dtype, std::vector<int64_t> dims) {
  CheckDims("BitcastConvert", dims);
  const size_t from = DTypeSize(x.dtype), to = DTypeSize(dtype);
  bool ok = from == to && dims == x.dims;
  if (from < to && x.rank() == static_cast<int64_t>(dims.size()) + 1 && x.dims.back() * from == to)
    ok = std::equal(dims.begin(), dims.end(), x.dims.begin());
  if (!ok) Fail("BitcastConvert", Shape(x) + " cannot be read as " + TensorTypeText(dtype, dims));
  return Emit("stablehlo.bitcast_convert " + x.ref + " : (" + TypeText(x) + ") -> " + TensorTypeText(dtype, dims), dtype,
              dims);
}

Value Function::Compare(CompareDirection direction, const Value& a, const Value& b) {
  if (a.dtype != b.dtype || a.dims != b.dims) Fail("Compare", "operand types differ: " + Shape(a) + " vs " + Shape(b));
  static const char* kNames[] = {"EQ", "NE", "LT", "LE", "GT", "GE"};
  std::string out = TensorTypeText(DType::kPred, a.dims);
  return Emit(std::string("stablehlo.compare ") + kNames[static_cast<int>(direction)] + ", " + a.ref + ", " + b.ref +
                  ", " + CompareTypeFor(a.dtype) + " : (" + TypeText(a) + ", " + TypeText(b) + ") -> " + out,
              DType::kPred, a.dims);
}

Value Function::Select(const Value& pred, const Value& on_true, const Value& on_false) {
  if (pred.dtype != DType::kPred) Fail("Select", "predicate must be pred, got " + Shape(pred));
  if (on_true.dtype != on_false.dtype || on_true.dims != on_false.dims)
    Fail("Select", "branch types differ: " + Shape(on_true) + " vs " + Shape(on_false));
  if (!pred.dims.empty() && pred.dims != on_true.dims)
    Fail("Select", "predicate " + Shape(pred) + " must be scalar or match " + Shape(on_true));
  return Emit("stablehlo.select " + pred.ref + ", " + on_true.ref + ", " + on_false.ref + " : (" + TypeText(pred) +
                  ", " + TypeText(on_true) + ", " + TypeText(on_false) + ") -> " + TypeText(on_true),
              on_true.dtype, on_true.dims);
}

// ---------------------------------------------------------------- shapes

Value Function::BroadcastInDim(const Value& x, std::vector<int64_t> dims, std::vector<int64_t> broadcast_dims) {
  CheckDims("BroadcastInDim", dims);
  if (static_cast<int64_t>(broadcast_dims.size()) != x.rank())
    Fail("BroadcastInDim", "need one broadcast dim per operand dim: " + Shape(x) + " with " + DimsText(broadcast_dims));
  CheckAxes("BroadcastInDim", broadcast_dims, static_cast<int64_t>(dims.size()), "broadcast_dims");
  for (size_t i = 0; i < broadcast_dims.size(); ++i) {
    int64_t out = dims[static_cast<size_t>(broadcast_dims[i])];
    if (x.dims[i] != out && x.dims[i] != 1)
      Fail("BroadcastInDim", "operand " + Shape(x) + " dim " + std::to_string(i) + " cannot broadcast to " + DimsText(dims));
  }
  if (x.dims == dims && std::is_sorted(broadcast_dims.begin(), broadcast_dims.end())) return x;
  return Emit("stablehlo.broadcast_in_dim " + x.ref + ", dims = " + DimsText(broadcast_dims) + " : (" + TypeText(x) +
                  ") -> " + TensorTypeText(x.dtype, dims),
              x.dtype, dims);
}

Value Function::Reshape(const Value& x, std::vector<int64_t> dims) {
  CheckDims("Reshape", dims);
  if (ElementCount(dims) != ElementCount(x.dims))
    Fail("Reshape", Shape(x) + " cannot be reshaped to " + DimsText(dims));
  if (dims == x.dims) return x;
  return Emit("stablehlo.reshape " + x.ref + " : (" + TypeText(x) + ") -> " + TensorTypeText(x.dtype, dims), x.dtype,
              dims);
}

Value Function::Transpose(const Value& x, std::vector<int64_t> permutation) {
  if (static_cast<int64_t>(permutation.size()) != x.rank()) Fail("Transpose", "permutation rank differs from " + Shape(x));
  CheckAxes("Transpose", permutation, x.rank(), "permutation");
  std::vector<int64_t> dims;
  bool identity = true;
  for (size_t i = 0; i < permutation.size(); ++i) {
    dims.push_back(x.dims[static_cast<size_t>(permutation[i])]);
    identity &= permutation[i] == static_cast<int64_t>(i);
  }
  if (identity) return x;
  return Emit("stablehlo.transpose " + x.ref + ", dims = " + DimsText(permutation) + " : (" + TypeText(x) + ") -> " +
                  TensorTypeText(x.dtype, dims),
              x.dtype, dims);
}

Value Function::Slice(const Value& x, std::vector<int64_t> start, std::vector<int64_t> limit) {
  if (x.rank() == 0) Fail("Slice", "scalar operand");
  if (static_cast<int64_t>(start.size()) != x.rank() || static_cast<int64_t>(limit.size()) != x.rank())
    Fail("Slice", "start/limit rank differs from " + Shape(x));
  std::vector<int64_t> dims;
  std::string ranges;
  for (size_t i = 0; i < start.size(); ++i) {
    if (start[i] < 0 || start[i] > limit[i] || limit[i] > x.dims[i])
      Fail("Slice", "bad range " + std::to_string(start[i]) + ":" + std::to_string(limit[i]) + " in dim " +
                        std::to_string(i) + " of " + Shape(x));
    dims.push_back(limit[i] - start[i]);
    ranges += (i ? ", " : "") + std::to_string(start[i]) + ":" + std::to_string(limit[i]);
  }
  if (dims == x.dims) return x;
  return Emit("stablehlo.slice " + x.ref + " [" + ranges + "] : (" + TypeText(x) + ") -> " +
                  TensorTypeText(x.dtype, dims),
              x.dtype, dims);
}

Value Function::DynamicSlice(const Value& x, const std::vector<Value>& starts, std::vector<int64_t> sizes) {
  if (static_cast<int64_t>(starts.size()) != x.rank() || static_cast<int64_t>(sizes.size()) != x.rank())
    Fail("DynamicSlice", "need one start and one size per dim of " + Shape(x));
  std::string operands = x.ref, types = TypeText(x);
  for (size_t i = 0; i < starts.size(); ++i) {
    CheckScalarIndex("DynamicSlice", starts[i]);
    if (sizes[i] < 0 || sizes[i] > x.dims[i]) Fail("DynamicSlice", "size " + DimsText(sizes) + " exceeds " + Shape(x));
    operands += ", " + starts[i].ref;
    types += ", " + TypeText(starts[i]);
  }
  return Emit("stablehlo.dynamic_slice " + operands + ", sizes = " + DimsText(sizes) + " : (" + types + ") -> " +
                  TensorTypeText(x.dtype, sizes),
              x.dtype, sizes);
}

Value Function::DynamicUpdateSlice(const Value& x, const Value& update, const std::vector<Value>& starts) {
  if (update.dtype != x.dtype) Fail("DynamicUpdateSlice", "update " + Shape(update) + " vs operand " + Shape(x));
  if (update.rank() != x.rank() || static_cast<int64_t>(starts.size()) != x.rank())
    Fail("DynamicUpdateSlice", "rank mismatch: operand " + Shape(x) + ", update " + Shape(update) + ", " +
                                   std::to_string(starts.size()) + " starts");
  std::string operands = x.ref + ", " + update.ref, types = TypeText(x) + ", " + TypeText(update);
  for (size_t i = 0; i < starts.size(); ++i) {
    CheckScalarIndex("DynamicUpdateSlice", starts[i]);
    if (update.dims[i] > x.dims[i]) Fail("DynamicUpdateSlice", "update " + Shape(update) + " larger than " + Shape(x));
    operands += ", " + starts[i].ref;
    types += ", " + TypeText(starts[i]);
  }
  return Emit("stablehlo.dynamic_update_slice " + operands + " : (" + types + ") -> " + TypeText(x), x.dtype, x.dims);
}

Value Function::Concatenate(const std::vector<Value>& parts, int64_t dim) {
  if (parts.empty()) Fail("Concatenate", "no operands");
  const Value& first = parts[0];
  if (dim < 0 || dim >= first.rank()) Fail("Concatenate", "dim out of range for " + Shape(first));
  std::vector<int64_t> dims = first.dims;
  dims[static_cast<size_t>(dim)] = 0;
  std::string operands, types;
  for (size_t i = 0; i < parts.size(); ++i) {
    const Value& p = parts[i];
    if (p.dtype != first.dtype || p.rank() != first.rank()) Fail("Concatenate", Shape(p) + " vs " + Shape(first));
    for (int64_t d = 0; d < p.rank(); ++d)
      if (d != dim && p.dims[d] != first.dims[d]) Fail("Concatenate", Shape(p) + " vs " + Shape(first) + " off dim");
    dims[static_cast<size_t>(dim)] += p.dims[static_cast<size_t>(dim)];
    operands += (i ? ", " : "") + p.ref;
    types += (i ? ", " : "") + TypeText(p);
  }
  if (parts.size() == 1) return first;
  return Emit("stablehlo.concatenate " + operands + ", dim = " + std::to_string(dim) + " : (" + types + ") -> " +
                  TensorTypeText(first.dtype, dims),
              first.dtype, dims);
}

// ---------------------------------------------------------------- contractions and reductions

Value Function::DotGeneral(const Value& lhs, const Value& rhs, std::vector<int64_t> lhs_batch,
                           std::vector<int64_t> rhs_batch, std::vector<int64_t> lhs_contract,
                           std::vector<int64_t> rhs_contract, std::optional<DType> result_dtype) {
  const std::string op = "DotGeneral";
  if (lhs.dtype != rhs.dtype) Fail(op, "operand element types differ: " + Shape(lhs) + " vs " + Shape(rhs));
  if (lhs_batch.size() != rhs_batch.size() || lhs_contract.size() != rhs_contract.size())
    Fail(op, "lhs and rhs need the same number of batch and of contracting dims");
  if (lhs_contract.empty()) Fail(op, "at least one contracting dim required");
  std::vector<int64_t> lhs_axes = lhs_batch, rhs_axes = rhs_batch;
  lhs_axes.insert(lhs_axes.end(), lhs_contract.begin(), lhs_contract.end());
  rhs_axes.insert(rhs_axes.end(), rhs_contract.begin(), rhs_contract.end());
  CheckAxes(op, lhs_axes, lhs.rank(), "lhs batch+contracting dims");
  CheckAxes(op, rhs_axes, rhs.rank(), "rhs batch+contracting dims");
  std::vector<int64_t> dims;
  for (size_t i = 0; i < lhs_batch.size(); ++i) {
    if (lhs.dims[lhs_batch[i]] != rhs.dims[rhs_batch[i]])
      Fail(op, "batch dim sizes differ: " + Shape(lhs) + " vs " + Shape(rhs));
    dims.push_back(lhs.dims[lhs_batch[i]]);
  }
  for (size_t i = 0; i < lhs_contract.size(); ++i)
    if (lhs.dims[lhs_contract[i]] != rhs.dims[rhs_contract[i]])
      Fail(op, "contracting dim sizes differ: " + Shape(lhs) + " " + DimsText(lhs_contract) + " vs " + Shape(rhs) + " " +
                   DimsText(rhs_contract));
  for (int64_t d = 0; d < lhs.rank(); ++d)
    if (std::find(lhs_axes.begin(), lhs_axes.end(), d) == lhs_axes.end()) dims.push_back(lhs.dims[d]);
  for (int64_t d = 0; d < rhs.rank(); ++d)
    if (std::find(rhs_axes.begin(), rhs_axes.end(), d) == rhs_axes.end()) dims.push_back(rhs.dims[d]);
  DType out = result_dtype.value_or(lhs.dtype);
  std::string text = "stablehlo.dot_general " + lhs.ref + ", " + rhs.ref + ", ";
  if (!lhs_batch.empty()) text += "batching_dims = " + DimsText(lhs_batch) + " x " + DimsText(rhs_batch) + ", ";
  text += "contracting_dims = " + DimsText(lhs_contract) + " x " + DimsText(rhs_contract) +
          ", precision = [DEFAULT, DEFAULT] : (" + TypeText(lhs) + ", " + TypeText(rhs) + ") -> " +
          TensorTypeText(out, dims);
  return Emit(text, out, dims);
}

Value Function::Reduce(const Value& x, ReduceKind kind, std::vector<int64_t> dims) {
  CheckAxes("Reduce", dims, x.rank(), "dims");
  if (dims.empty()) return x;
  if (x.dtype == DType::kPred) Fail("Reduce", "pred operand");
  std::sort(dims.begin(), dims.end());
  double init = 0;
  const char* body = "add";
  bool f = IsFloat(x.dtype);
  if (kind == ReduceKind::kMax) {
    body = "maximum";
    init = f ? -std::numeric_limits<double>::infinity() : (x.dtype == DType::kS32 ? INT32_MIN : 0);
  } else if (kind == ReduceKind::kMin) {
    body = "minimum";
    init = f ? std::numeric_limits<double>::infinity() : (x.dtype == DType::kS32 ? INT32_MAX : 0);
    if (!f && x.dtype != DType::kS32) Fail("Reduce", "min over this integer type not supported");
  }
  Value c = Constant(x.dtype, init);
  std::vector<int64_t> out;
  for (int64_t d = 0; d < x.rank(); ++d)
    if (!std::binary_search(dims.begin(), dims.end(), d)) out.push_back(x.dims[d]);
  return Emit("stablehlo.reduce(" + x.ref + " init: " + c.ref + ") applies stablehlo." + body + " across dimensions = " +
                  DimsText(dims) + " : (" + TypeText(x) + ", " + TypeText(c) + ") -> " + TensorTypeText(x.dtype, out),
              x.dtype, out);
}

namespace {
// Row-major layouts (minor-to-major = rank-1 .. 0), so the handler sees dense row-major data.
std::string RowMajorLayout(int64_t rank) {
  std::string s = "dense<";
  if (rank > 1) s += "[";
  for (int64_t i = rank - 1; i >= 0; --i) s += std::to_string(i) + (i ? ", " : "");
  if (rank > 1) s += "]";
  if (rank == 0) s += "[]";
  return s + "> : tensor<" + std::to_string(rank) + "xindex>";
}
bool IsIdentifier(const std::string& s) {
  return !s.empty() &&
         s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == std::string::npos;
}
}  // namespace

Value Function::CustomCall(const std::string& target, const std::vector<Value>& operands, DType dtype,
                           std::vector<int64_t> dims) {
  std::vector<Value> r = CustomCall(target, operands, {{dtype, std::move(dims)}}, {});
  return r[0];
}

std::vector<Value> Function::CustomCall(const std::string& target, const std::vector<Value>& operands,
                                        const std::vector<ResultType>& results,
                                        const std::vector<std::pair<std::string, std::string>>& attributes) {
  if (!IsIdentifier(target)) Fail("CustomCall", "target name must be [A-Za-z0-9_]+, got '" + target + "'");
  if (results.empty()) Fail("CustomCall", "needs at least one result");
  for (const ResultType& r : results) CheckDims("CustomCall", r.dims);
  std::string args, types, layouts, result_types, result_layouts, attrs;
  for (size_t i = 0; i < operands.size(); ++i) {
    args += (i ? ", " : "") + operands[i].ref;
    types += (i ? ", " : "") + TypeText(operands[i]);
    layouts += (i ? ", " : "") + RowMajorLayout(operands[i].rank());
  }
  for (size_t i = 0; i < results.size(); ++i) {
    result_types += (i ? ", " : "") + TensorTypeText(results[i].dtype, results[i].dims);
    result_layouts += (i ? ", " : "") + RowMajorLayout(static_cast<int64_t>(results[i].dims.size()));
  }
  for (size_t i = 0; i < attributes.size(); ++i) {
    if (!IsIdentifier(attributes[i].first)) Fail("CustomCall", "attribute name must be [A-Za-z0-9_]+");
    attrs += (i ? ", " : "") + attributes[i].first + " = " + attributes[i].second;
  }
  const bool many = results.size() > 1;
  const std::string text = "stablehlo.custom_call @" + target + "(" + args + ") {api_version = 4 : i32, backend_config = {" +
                           attrs + "}, operand_layouts = [" + layouts + "], result_layouts = [" + result_layouts +
                           "]} : (" + types + ") -> " + (many ? "(" + result_types + ")" : result_types);
  if (returned_) throw InvalidArgumentError("hlo: op emitted after Return");
  const std::string r = NewRef();
  body_.push_back("    " + r + (many ? ":" + std::to_string(results.size()) : "") + " = " + text);
  std::vector<Value> out;
  for (size_t i = 0; i < results.size(); ++i)
    out.push_back(Value{many ? r + "#" + std::to_string(i) : r, results[i].dtype, results[i].dims});
  return out;
}

Value Function::Argmax(const Value& x, int64_t dim) {
  if (dim < 0) dim += x.rank();
  if (dim < 0 || dim >= x.rank()) Fail("Argmax", "dim out of range for " + Shape(x));
  if (!IsFloat(x.dtype)) Fail("Argmax", "float operand required, got " + Shape(x));
  Value idx = Iota(DType::kS32, x.dims, dim);
  Value vinit = Constant(x.dtype, -std::numeric_limits<double>::infinity());
  Value iinit = Constant(DType::kS32, 0);
  std::vector<int64_t> out;
  for (int64_t d = 0; d < x.rank(); ++d)
    if (d != dim) out.push_back(x.dims[d]);
  std::string st = TensorTypeText(x.dtype, {}), it = TensorTypeText(DType::kS32, {});
  std::string ot = TensorTypeText(x.dtype, out), oit = TensorTypeText(DType::kS32, out);
  std::string r = NewRef();
  std::string a = NewRef(), b = NewRef(), ai = NewRef(), bi = NewRef();
  std::string gt = NewRef(), nan = NewRef(), pick = NewRef(), eq = NewRef(), lt = NewRef(), tie = NewRef(),
              pick_i = NewRef(), v = NewRef(), i = NewRef();
  std::ostringstream s;
  s << "    " << r << ":2 = stablehlo.reduce(" << x.ref << " init: " << vinit.ref << "), (" << idx.ref
    << " init: " << iinit.ref << ") across dimensions = [" << dim << "] : (" << TypeText(x) << ", " << TypeText(idx)
    << ", " << st << ", " << it << ") -> (" << ot << ", " << oit << ")\n"
    << "     reducer(" << a << ": " << st << ", " << b << ": " << st << ") (" << ai << ": " << it << ", " << bi << ": "
    << it << ") {\n"
    << "      " << gt << " = stablehlo.compare GT, " << a << ", " << b << ", FLOAT : (" << st << ", " << st
    << ") -> tensor<i1>\n"
    << "      " << nan << " = stablehlo.compare NE, " << a << ", " << a << ", FLOAT : (" << st << ", " << st
    << ") -> tensor<i1>\n"
    << "      " << pick << " = stablehlo.or " << gt << ", " << nan << " : tensor<i1>\n"
    << "      " << eq << " = stablehlo.compare EQ, " << a << ", " << b << ", FLOAT : (" << st << ", " << st
    << ") -> tensor<i1>\n"
    << "      " << lt << " = stablehlo.compare LT, " << ai << ", " << bi << ", SIGNED : (" << it << ", " << it
    << ") -> tensor<i1>\n"
    << "      " << tie << " = stablehlo.and " << eq << ", " << lt << " : tensor<i1>\n"
    << "      " << pick_i << " = stablehlo.or " << pick << ", " << tie << " : tensor<i1>\n"
    << "      " << v << " = stablehlo.select " << pick << ", " << a << ", " << b << " : tensor<i1>, " << st << "\n"
    << "      " << i << " = stablehlo.select " << pick_i << ", " << ai << ", " << bi << " : tensor<i1>, " << it << "\n"
    << "      stablehlo.return " << v << ", " << i << " : " << st << ", " << it << "\n"
    << "    }";
  if (returned_) throw InvalidArgumentError("hlo: op emitted after Return");
  body_.push_back(s.str());
  return Value{r + "#1", DType::kS32, out};
}

std::pair<Value, Value> Function::TopK(const Value& x, int64_t k) {
  if (x.rank() < 1) Fail("TopK", "scalar operand");
  if (!IsFloat(x.dtype)) Fail("TopK", "float operand required, got " + Shape(x));
  if (k < 1 || k > x.dim(-1)) Fail("TopK", "k=" + std::to_string(k) + " out of range for " + Shape(x));
  std::vector<int64_t> out = x.dims;
  out.back() = k;
  std::string r = NewRef();
  std::string vt = TensorTypeText(x.dtype, out), it = TensorTypeText(DType::kS32, out);
  if (returned_) throw InvalidArgumentError("hlo: op emitted after Return");
  body_.push_back("    " + r + ":2 = chlo.top_k(" + x.ref + ", k = " + std::to_string(k) + ") : " + TypeText(x) +
                  " -> (" + vt + ", " + it + ")");
  return {Value{r + "#0", x.dtype, out}, Value{r + "#1", DType::kS32, out}};
}

Value Function::GatherRows(const Value& table, const Value& indices) {
  if (table.rank() < 1) Fail("GatherRows", "scalar table");
  if (indices.rank() != 1 || indices.dtype != DType::kS32) Fail("GatherRows", "indices must be s32[M], got " + Shape(indices));
  Value idx = Reshape(indices, {indices.dims[0], 1});
  std::vector<int64_t> out = {indices.dims[0]}, slice = {1}, offset;
  for (int64_t d = 1; d < table.rank(); ++d) {
    out.push_back(table.dims[d]);
    slice.push_back(table.dims[d]);
    offset.push_back(d);
  }
  std::string sizes;
  for (size_t i = 0; i < slice.size(); ++i) sizes += (i ? ", " : "") + std::to_string(slice[i]);
  std::string dn = "#stablehlo.gather<";
  if (!offset.empty()) dn += "offset_dims = " + DimsText(offset) + ", ";
  dn += "collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = 1>";
  return Emit("\"stablehlo.gather\"(" + table.ref + ", " + idx.ref + ") <{dimension_numbers = " + dn +
                  ", indices_are_sorted = false, slice_sizes = array<i64: " + sizes + ">}> : (" + TypeText(table) +
                  ", " + TypeText(idx) + ") -> " + TensorTypeText(table.dtype, out),
              table.dtype, out);
}

Value Function::GatherColumns(const Value& table, const Value& indices) {
  if (table.rank() != 2) Fail("GatherColumns", "table must be rank 2, got " + Shape(table));
  if (indices.rank() != 1 || indices.dtype != DType::kS32)
    Fail("GatherColumns", "indices must be s32[K], got " + Shape(indices));
  const int64_t n = table.dims[0], k = indices.dims[0];
  Value idx = Reshape(indices, {k, 1});
  return Emit("\"stablehlo.gather\"(" + table.ref + ", " + idx.ref +
                  ") <{dimension_numbers = #stablehlo.gather<offset_dims = [1], collapsed_slice_dims = [1], "
                  "start_index_map = [1], index_vector_dim = 1>, indices_are_sorted = false, slice_sizes = array<i64: " +
                  std::to_string(n) + ", 1>}> : (" + TypeText(table) + ", " + TypeText(idx) + ") -> " +
                  TensorTypeText(table.dtype, {k, n}),
              table.dtype, {k, n});
}

Value Function::TakeAlongLastDim(const Value& table, const Value& indices) {
  if (table.rank() != 2) Fail("TakeAlongLastDim", "table must be rank 2, got " + Shape(table));
  if (indices.rank() != 1 || indices.dtype != DType::kS32 || indices.dims[0] != table.dims[0])
    Fail("TakeAlongLastDim", "indices must be s32[" + std::to_string(table.dims[0]) + "], got " + Shape(indices));
  int64_t m = table.dims[0];
  Value rows = Iota(DType::kS32, {m, 1}, 0);
  Value cols = Reshape(indices, {m, 1});
  Value idx = Concatenate({rows, cols}, 1);
  return Emit("\"stablehlo.gather\"(" + table.ref + ", " + idx.ref +
                  ") <{dimension_numbers = #stablehlo.gather<collapsed_slice_dims = [0, 1], start_index_map = [0, 1], "
                  "index_vector_dim = 1>, indices_are_sorted = false, slice_sizes = array<i64: 1, 1>}> : (" +
                  TypeText(table) + ", " + TypeText(idx) + ") -> " + TensorTypeText(table.dtype, {m}),
              table.dtype, {m});
}

// ---------------------------------------------------------------- composites

Value Function::ScalarLike(const Value& like, double value) { return Constant(like.dtype, value, like.dims); }

Value Function::BroadcastLike(const Value& y, const Value& like, std::vector<int64_t> broadcast_dims) {
  return BroadcastInDim(y, like.dims, std::move(broadcast_dims));
}

Value Function::Softmax(const Value& x, int64_t dim) {
  if (dim < 0) dim += x.rank();
  if (!IsFloat(x.dtype)) Fail("Softmax", "float operand required");
  std::vector<int64_t> keep = AllBut(x.rank(), dim);
  Value m = BroadcastLike(Reduce(x, ReduceKind::kMax, {dim}), x, keep);
  Value e = Exp(Sub(x, m));
  Value s = BroadcastLike(Reduce(e, ReduceKind::kSum, {dim}), x, keep);
  return Div(e, s);
}

Value Function::LogSumExp(const Value& x, int64_t dim) {
  if (dim < 0) dim += x.rank();
  if (!IsFloat(x.dtype)) Fail("LogSumExp", "float operand required");
  std::vector<int64_t> keep = AllBut(x.rank(), dim);
  Value m = Reduce(x, ReduceKind::kMax, {dim});
  Value e = Exp(Sub(x, BroadcastLike(m, x, keep)));
  return Add(m, Log(Reduce(e, ReduceKind::kSum, {dim})));
}

Value Function::LogSoftmax(const Value& x, int64_t dim) {
  if (dim < 0) dim += x.rank();
  return Sub(x, BroadcastLike(LogSumExp(x, dim), x, AllBut(x.rank(), dim)));
}

Value Function::RmsNorm(const Value& x, const Value& weight, double eps, bool plus_one) {
  if (!IsFloat(x.dtype) || x.rank() < 1) Fail("RmsNorm", "float operand required, got " + Shape(x));
  if (weight.rank() != 1 || weight.dims[0] != x.dim(-1) || weight.dtype != x.dtype)
    Fail("RmsNorm", "weight " + Shape(weight) + " does not match " + Shape(x));
  int64_t last = x.rank() - 1;
  std::vector<int64_t> keep = AllBut(x.rank(), last);
  Value ms = Reduce(Mul(x, x), ReduceKind::kSum, {last});
  ms = Div(ms, ScalarLike(ms, static_cast<double>(x.dim(-1))));
  Value r = Rsqrt(Add(ms, ScalarLike(ms, eps)));
  Value y = Mul(x, BroadcastLike(r, x, keep));
  Value w = plus_one ? Add(weight, ScalarLike(weight, 1.0)) : weight;
  return Mul(y, BroadcastLike(w, x, {last}));
}

}  // namespace hlo
}  // namespace cascade
