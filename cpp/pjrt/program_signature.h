// Reads the parameter and result types of `@main` from StableHLO text, so that execute() can
// check argument count, dtype and shape before the plugin sees them (XLA CHECK-fails on some
// mismatches instead of returning an error).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "pjrt/dtype.h"

namespace cascade {

struct TensorType {
  DType dtype;
  std::vector<int64_t> dims;
  bool operator==(const TensorType& o) const { return dtype == o.dtype && dims == o.dims; }
};

struct ProgramSignature {
  std::vector<TensorType> params;
  std::vector<TensorType> results;
  // For each param, the result index it is aliased with (tf.aliasing_output), or -1.
  std::vector<int> aliasing_output;
};

// Parses `func.func [public] @main(...) -> (...)`. Returns nullopt when the text has no @main.
// Throws InvalidArgumentError when @main's signature uses a type we cannot move (dynamic dims,
// tuples, unsupported element types).
std::optional<ProgramSignature> ParseMainSignature(const std::string& text);

std::string TypeString(const TensorType& type);

// What the plugin's parser can take without crashing: text that nests brackets (regions, types,
// attributes) deeper than this overflows its recursive descent. Measured through the XLA CPU
// plugin (issue #18): regions ~1000 deep kill the process with SIGSEGV inside compile, 500 deep
// compile. Our own programs nest < 10 deep.
constexpr int kMaxProgramNesting = 256;
constexpr size_t kMaxProgramBytes = size_t{1} << 30;
// Throws InvalidArgumentError, saying where, when the text nests deeper than
// kMaxProgramNesting (counting ( [ { < outside string literals) or is larger than
// kMaxProgramBytes. Every program is checked before any plugin call (Client::Compile).
void CheckProgramText(const std::string& text);

}  // namespace cascade
