// A loaded model: its config and its tensors under the canonical names of model/config.h.
#pragma once

#include <map>
#include <string>

#include "model/config.h"
#include "pjrt/dtype.h"

namespace cascade {

struct ModelWeights {
  ModelConfig config;
  // Canonical name -> tensor. Float tensors keep their stored type (f32, f16, bf16); quantised
  // GGUF blocks (Q8_0, Q4_0, Q4_1, Q6_K, ...) are dequantised to f32 on load.
  std::map<std::string, HostTensor> tensors;
  std::string source;  // the file it came from, for messages

  // The tensor, or ModelFormatError naming the file and the tensor.
  const HostTensor& at(const std::string& name) const;
};

}  // namespace cascade
