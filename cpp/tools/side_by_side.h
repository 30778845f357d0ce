// What the kernel-library side-by-sides (tools/onednn/onednn_bench.cc, tools/xnnpack/xnnpack_bench.cc)
// share: their flags and the matrices of one SmolLM2-135M layer.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

namespace cascade {
namespace tools {

// A weight matrix's shape: y[out] = W[out, in] . x[in].
struct MatrixShape {
  int64_t in, out;
};

// q, k, v, o, gate, up, down of one SmolLM2-135M layer.
inline std::vector<MatrixShape> SmolLM2LayerShapes() {
  return {{576, 576}, {576, 192}, {576, 192}, {576, 576}, {576, 1536}, {576, 1536}, {1536, 576}};
}

// [--runs 9] [--layers 30] [--only ours|<library>]: each side in a process of its own.
struct SideBySideFlags {
  int runs = 9, layers = 30;
  std::string only;  // empty: both sides
  bool Ours() const { return only.empty() || only == "ours"; }
  bool Theirs() const { return only != "ours"; }
};

inline SideBySideFlags ParseSideBySideFlags(int argc, char** argv) {
  SideBySideFlags f;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--runs") f.runs = std::atoi(argv[i + 1]);
    else if (a == "--layers") f.layers = std::atoi(argv[i + 1]);
    else if (a == "--only") f.only = argv[i + 1];
  }
  return f;
}

}  // namespace tools
}  // namespace cascade
