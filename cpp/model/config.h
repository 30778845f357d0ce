// The decoder families cascade-xla runs, and the shape of one model. Read from GGUF metadata
// (llama.*, gemma.*) or a Hugging Face config.json by the weight loaders.
#pragma once

#include <cstdint>
#include <string>

namespace cascade {

enum class ModelFamily {
  kLlama,  // SmolLM2, Llama 2/3, TinyLlama: RMSNorm(w), SwiGLU, RoPE, GQA, tied or untied head
  kGemma,  // Gemma 2B/7B: RMSNorm(1 + w), GeGLU (tanh), embeddings * sqrt(d), tied head
};

const char* ModelFamilyName(ModelFamily family);

struct ModelConfig {
  ModelFamily family = ModelFamily::kLlama;
  std::string architecture;     // as written in the file: "llama", "LlamaForCausalLM", "gemma", ...
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;        // d
  int64_t intermediate_size = 0;  // FFN width
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;       // < num_heads: GQA; 1: MQA
  int64_t head_dim = 0;           // usually hidden_size / num_heads; 256 in Gemma
  int64_t context_length = 0;     // max positions
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  bool tied_embeddings = true;    // lm_head shares model.embed_tokens.weight
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;
};

// Canonical tensor names (Hugging Face layout; every loader maps its file's names to these):
//   model.embed_tokens.weight                      [vocab, d]
//   model.layers.{i}.input_layernorm.weight        [d]
//   model.layers.{i}.self_attn.q_proj.weight       [heads*head_dim, d]
//   model.layers.{i}.self_attn.k_proj.weight       [kv_heads*head_dim, d]
//   model.layers.{i}.self_attn.v_proj.weight       [kv_heads*head_dim, d]
//   model.layers.{i}.self_attn.o_proj.weight       [d, heads*head_dim]
//   model.layers.{i}.post_attention_layernorm.weight [d]
//   model.layers.{i}.mlp.gate_proj.weight          [ffn, d]
//   model.layers.{i}.mlp.up_proj.weight            [ffn, d]
//   model.layers.{i}.mlp.down_proj.weight          [d, ffn]
//   model.norm.weight                              [d]
//   lm_head.weight                                 [vocab, d]  (absent when tied)
// Matrices are row-major [out, in] as in PyTorch's nn.Linear. Q and K rows are in Hugging Face
// order (the rotate-half RoPE convention), so GGUF files, whose llama Q/K rows are permuted for
// llama.cpp's interleaved RoPE, are un-permuted on load.

}  // namespace cascade
