// Small random decoder models for tests (both families), shaped like the real ones.
#pragma once

#include <cmath>
#include <random>
#include <utility>

#include "model/decoder.h"
#include "model/programs.h"
#include "model/weights.h"

namespace cascade::testing {

inline ModelConfig SmallLlama(bool tied = true, int64_t vocab = 97) {
  ModelConfig c;
  c.family = ModelFamily::kLlama;
  c.vocab_size = vocab;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.context_length = 256;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  c.tied_embeddings = tied;
  return c;
}

// Random weights in the canonical [out, in] layout; `embedding_scale` sets how peaked the
// next-token distributions are.
inline ModelWeights SmallRandomModel(const ModelConfig& c, uint32_t seed, float embedding_scale = 0.5f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, 1);
  ModelWeights w;
  w.config = c;
  w.source = "random";
  for (const WeightParam& p : WeightParamLayout(c, WeightPrecision::kF32)) {
    std::vector<int64_t> dims = p.dims;
    if (p.transposed) std::swap(dims[0], dims[1]);
    HostTensor t(DType::kF32, dims);
    float* v = t.as<float>();
    const int64_t count = t.element_count();
    const bool norm = dims.size() == 1;
    const float scale = p.tensor == "model.embed_tokens.weight" ? embedding_scale
                                                                : 1.0f / std::sqrt(static_cast<float>(dims.back()));
    for (int64_t i = 0; i < count; ++i)
      v[i] = norm ? (c.family == ModelFamily::kGemma ? 0.f : 1.f) + 0.1f * normal(rng) : scale * normal(rng);
    w.tensors[p.tensor] = std::move(t);
  }
  return w;
}

}  // namespace cascade::testing
