// Loading an engine and distilling a tiny, without Node: read the model files, check that they fit
// the device before uploading, build the engine, install (or fit and cache) the tiny, warm up.
// binding/engine.cc only converts the JS options and runs these on a worker thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "cascade/engine.h"
#include "model/tiny.h"
#include "pjrt/client.h"

namespace cascade {

struct EngineLoadOptions {
  std::string target;  // a model file (GGUF) or folder (config.json + safetensors)
  std::string draft;   // empty: the self-speculative draft (EngineOptions::draft_layers)
  EngineOptions engine;
  // Stage 0: a tiny file to install, or (fit_tiny) one fitted in closed form on text the target
  // writes, read from / saved to tiny_cache when that is set.
  std::string tiny;
  bool fit_tiny = false;
  std::string tiny_cache;
  int64_t tiny_fit_positions = 1500;  // positions of target-written text the load-time fit uses
  // Token ids the fit's sequences start from (TinyFitOptions::prompts), e.g. chat-formatted requests.
  std::vector<std::vector<int32_t>> tiny_fit_prompts;
  // Compile the programs a greedy generation with the engine's default k1 and k0 uses now,
  // instead of on first use.
  bool warmup = false;
  // Device memory the models may use, bytes; 0: what the device reports (CheckDeviceMemory).
  int64_t device_memory_limit = 0;
  // A bf16 target whose layer weights are 4-bit block values (a Q4_1 GGUF's) is uploaded as
  // those blocks where our CPU kernels run (WeightPrecision::kBF16Q4: the same model bit for bit,
  // ~2.2x fewer bytes a step). False: the bf16 weights as they are.
  bool bf16_from_blocks = true;
};

// Whether `target`'s layer matrices look like 4-bit block values whose bf16 weights the blocks
// hold exactly (the first rows of each checked; the upload checks every row), and `client` runs
// the fused CPU kernels kBF16Q4 needs.
bool Bf16FromBlocksApplies(const Client& client, const ModelWeights& target);

// Progress of a load stage: ("fit", positions done, total) while the tiny is fitted, ("compile",
// programs done, total) during the warm-up.
using LoadProgress = std::function<void(const char* stage, int64_t done, int64_t total)>;

// Loads as `options` says. `cancelled` is polled between stages (and during a tiny fit and the
// warm-up): when it returns true the load throws Error(kAborted) naming the stage, and what was
// uploaded is released.
std::shared_ptr<CascadeEngine> LoadEngine(std::shared_ptr<Client> client, const EngineLoadOptions& options,
                                          const std::function<bool()>& cancelled = {}, const LoadProgress& progress = {});

// Throws OutOfMemoryError when the target (on each of its replicas) and the draft would not fit
// the device's memory, before anything is uploaded. `limit` > 0 overrides what the device reports.
// The self-speculative draft whose depth is still to be chosen counts as its largest candidate
// (CascadeEngine::ChooseDraftLayers: 3/4 of the layers, or all of them when the draft's precision
// reads fewer bytes than the target's).
void CheckDeviceMemory(const Client& client, const ModelWeights& target, const std::optional<ModelWeights>& draft,
                       const EngineOptions& options, int64_t limit);

// Device bytes of a DecoderModel's weights at `precision` (all of them; StepBytes counts what a
// step reads).
int64_t WeightBytes(const ModelConfig& config, WeightPrecision precision);

struct DistillOptions {
  std::string target;
  std::string draft;          // empty: the target's first draft_layers layers
  int64_t draft_layers = 0;   // 0: all of the target's layers (the draft is its low-precision copy)
  // As the engine's defaults (EngineOptions): the tiny reads the draft's hidden state at the
  // draft's precision, and the target writes the text at its own.
  WeightPrecision target_precision = EngineOptions{}.target_precision;
  WeightPrecision draft_precision = EngineOptions{}.draft_precision;
  std::string out;            // where the tiny (.safetensors) is written
  TinyFitOptions fit = DistillFit();  // text_model, draft_name and progress are set here

  // The fit `cascade-xla distill` runs by default: the closed form, then Adam distillation on the
  // draft's top 8 tokens, the weights chosen by coverage at K0 = 8 (at 64 the closed form's ~0.99
  // leaves a validation of a few hundred rows nothing to tell apart). On SmolLM2 (3,000
  // positions, docs/how-the-cascade-works.md) the validation coverage peaked within 16-48 steps
  // at this step size and fell after (the tiny's 12.7M weights learn the training text).
  static TinyFitOptions DistillFit() {
    TinyFitOptions fit;
    fit.train.steps = 64;
    fit.train.learning_rate = 1e-5;
    fit.train.teacher_top_k = 8;
    fit.train.validation_k = 8;
    // 128-token sequences (as the load's fit): more of them, so a fifth of them held back for
    // the validation is several whole sequences.
    fit.sequence_length = 128;
    fit.train.validation_share = 0.2;
    return fit;
  }
};

// Fits a tiny on text the target writes (what the cascade will commit), with the draft's logits
// as what it learns (closed form, then fit.train.steps of Adam distillation), and saves it to
// options.out. `progress(phase, done, total)` ("generate" / "train") returns false to cancel.
TinyFitReport DistillTinyToFile(std::shared_ptr<Client> client, const DistillOptions& options,
                                const std::function<bool(const char*, int64_t, int64_t)>& progress = {});

}  // namespace cascade
