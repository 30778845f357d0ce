// Loads a model for cascade-xla: a GGUF file (llama.cpp) or a Hugging Face checkpoint
// (safetensors + config.json), for the Llama and Gemma families, into the canonical tensor names
// and layout of model/config.h. Every tensor's shape is checked against the config.
//
// Errors: ModelFormatError naming the file and the tensor or field.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/gguf.h"
#include "model/json.h"
#include "model/weights.h"

namespace cascade {

// `path`: a .gguf file (recognised by its magic), a .safetensors file or
// model.safetensors.index.json (config.json next to it), or a directory with config.json and
// model.safetensors / model.safetensors.index.json.
ModelWeights LoadModel(const std::string& path);
ModelWeights LoadGgufModel(const std::string& path);
ModelWeights LoadSafetensorsModel(const std::string& path);

// ModelConfig from GGUF metadata (general.architecture = llama | gemma, <arch>.* keys,
// tokenizer.ggml.*). Tied head when the file has no output.weight.
ModelConfig ConfigFromGguf(const GgufFile& file);
// ModelConfig from a Hugging Face config.json (LlamaForCausalLM / GemmaForCausalLM).
ModelConfig ConfigFromHfJson(const json::Value& config, const std::string& source);
ModelConfig ReadHfConfig(const std::string& config_json_path);

// The canonical name of a GGUF tensor ("blk.3.attn_q.weight" ->
// "model.layers.3.self_attn.q_proj.weight"), or "" for names that are not model weights.
std::string CanonicalNameFromGguf(const std::string& gguf_name);

// Canonical tensors a config requires, with their shapes (lm_head.weight only when untied).
std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedTensorShapes(
    const ModelConfig& config);
// Checks that every expected tensor is present with its shape, and no lm_head when tied.
void CheckWeights(const ModelWeights& weights);

// llama.cpp's convert_hf_to_gguf.py permutes the rows of q_proj / k_proj for its interleaved
// RoPE: viewing the [heads*head_dim, ...] matrix as [heads, 2, head_dim/2, ...] it swaps the
// middle axes. PermuteQKForGguf does that (Hugging Face order -> GGUF order);
// UnpermuteQKFromGguf is its inverse. `n_heads` is the tensor's own head count (num_heads for
// q_proj, num_kv_heads for k_proj). Any dtype; rows are moved whole.
HostTensor PermuteQKForGguf(const HostTensor& hf, int64_t n_heads);
HostTensor UnpermuteQKFromGguf(const HostTensor& gguf, int64_t n_heads);

}  // namespace cascade
