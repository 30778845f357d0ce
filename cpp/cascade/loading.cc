#include "cascade/loading.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "kernels/int8_matmul.h"
#include "model/decoder.h"
#include "model/loader.h"
#include "model/matmul_mode.h"
#include "pjrt/errors.h"

namespace cascade {
namespace {

// Device bytes a DecoderModel of `config` uploads: its weights at `precision` and the K and V
// caches of `max_context` slots, of the type the model will take (DefaultKvDtype when unset).
int64_t DeviceBytes(const Client& client, const ModelConfig& config, WeightPrecision precision, int64_t max_context,
                    const std::optional<DType>& kv_dtype, bool draft) {
  const int64_t kv_bytes = kv_dtype.value_or(DefaultKvDtype(client, precision, MatmulMode::kAuto, draft)) == DType::kBF16 ? 2 : 4;
  return WeightBytes(config, precision) + 2 * ElementCount(KvCacheDims(config, max_context)) * kv_bytes;
}

std::string MiB(int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return text;
}

}  // namespace

int64_t WeightBytes(const ModelConfig& config, WeightPrecision precision) {
  int64_t bytes = 0;
  for (const WeightParam& w : WeightParamLayout(config, precision))
    bytes += ElementCount(w.dims) * static_cast<int64_t>(DTypeSize(w.dtype));
  return bytes;
}

bool Bf16FromBlocksApplies(const Client& client, const ModelWeights& target) {
  std::vector<WeightParam> layout;
  try {
    layout = WeightParamLayout(target.config, WeightPrecision::kBF16Q4);
  } catch (const InvalidArgumentError&) {
    return false;  // a layer matrix's input size is no multiple of 64
  }
  for (const WeightParam& p : layout) {
    if (p.role == WeightParam::Role::kQ8Values) {  // the head (a tied one: the embedding)
      const std::string& name = target.config.tied_embeddings ? "model.embed_tokens.weight" : p.tensor;
      const HostTensor w = ToF32(target.at(name));
      const int64_t in = w.dims[1], rows = std::min<int64_t>(w.dims[0], 32);
      if (in % 32 != 0) return false;
      std::vector<int8_t> q(static_cast<size_t>(rows * in));
      std::vector<uint16_t> scales(static_cast<size_t>(rows * in / 32));
      if (!kernels::QuantizeQ8Rows(w.as<float>(), in, rows, q.data(), scales.data())) return false;
      continue;
    }
    if (p.role != WeightParam::Role::kQ4Values) continue;
    const HostTensor w = ToF32(target.at(p.tensor));
    const int64_t in = w.dims[1], rows = std::min<int64_t>(w.dims[0], 32);
    if (!kernels::ValidateQ4Matrix(in, rows).empty()) return false;
    std::vector<uint8_t> packed(static_cast<size_t>(rows * in / 2));
    std::vector<uint16_t> scales(static_cast<size_t>(rows * in / kernels::kQ4Block)), mins(scales.size());
    kernels::QuantizeQ4Rows(w.as<float>(), in, rows, packed.data(), scales.data(), mins.data());
    if (!kernels::Q4HoldsBf16Exactly(w.as<float>(), in, rows, packed.data(), scales.data(), mins.data())) return false;
  }
  return ChooseMatmulMode(client, WeightPrecision::kBF16Q4, MatmulMode::kAuto) == MatmulMode::kFused;
}

void CheckDeviceMemory(const Client& client, const ModelWeights& target, const std::optional<ModelWeights>& draft,
                       const EngineOptions& options, int64_t limit) {
  ValidateDecoderConfig(target.config);
  if (draft) ValidateDecoderConfig(draft->config);
  std::optional<Client::AvailableMemory> available;
  if (limit > 0) available = Client::AvailableMemory{limit, "the limit set by maxDeviceMemory / CASCADE_DEVICE_MEMORY_LIMIT"};
  else available = client.AvailableDeviceMemory(options.device_index);
  if (!available) return;  // the plugin does not say: let the upload find out
  const bool cpu = client.platform_name() == "cpu";
  const int64_t target_bytes =
      DeviceBytes(client, target.config, options.target_precision, options.max_context, options.target_kv_dtype, false);
  ModelConfig draft_config = draft ? draft->config : target.config;
  if (!draft) {
    const int64_t layers = target.config.num_layers;
    const bool all = WeightBytes(target.config, options.draft_precision) < WeightBytes(target.config, options.target_precision);
    draft_config.num_layers = options.draft_layers > 0 ? std::min(options.draft_layers, layers)
                              : all                    ? layers
                                                       : std::max<int64_t>(1, std::lround(0.75 * layers));
  }
  const int64_t draft_bytes =
      DeviceBytes(client, draft_config, options.draft_precision, options.max_context, options.draft_kv_dtype, true);
  // The CPU plugin's devices share host memory: every replica counts. Elsewhere each device holds one.
  const int64_t replicas = cpu ? std::max<int64_t>(1, options.devices) : 1;
  const int64_t need = target_bytes * replicas + draft_bytes;
  if (need <= available->bytes) return;
  throw OutOfMemoryError(
      "the models need " + MiB(need) + " of device memory (target " + target.source + ": " + MiB(target_bytes) +
      (replicas > 1 ? " x " + std::to_string(replicas) + " replicas" : "") + ", draft " +
      (draft ? draft->source : "(first " + std::to_string(draft_config.num_layers) + " layers)") + ": " +
      MiB(draft_bytes) + ", weights and KV cache of " + std::to_string(options.max_context) +
      " tokens) but the device has " + MiB(available->bytes) + " available (" + available->source +
      "); use a smaller maxContext or precision, or a smaller model");
}

std::shared_ptr<CascadeEngine> LoadEngine(std::shared_ptr<Client> client, const EngineLoadOptions& options,
                                          const std::function<bool()>& cancelled, const LoadProgress& progress) {
  auto check = [&](const char* stage) {
    if (cancelled && cancelled()) throw Error(ErrorKind::kAborted, std::string("load aborted ") + stage);
  };
  check("before reading the model");
  ModelWeights target = LoadModel(options.target);
  std::optional<ModelWeights> draft;
  if (!options.draft.empty()) draft = LoadModel(options.draft);
  check("after reading the model files");
  EngineOptions engine_options = options.engine;
  const bool blocks = options.bf16_from_blocks && engine_options.target_precision == WeightPrecision::kBF16 &&
                      Bf16FromBlocksApplies(*client, target);
  if (blocks) engine_options.target_precision = WeightPrecision::kBF16Q4;
  CheckDeviceMemory(*client, target, draft, engine_options, options.device_memory_limit);
  std::shared_ptr<CascadeEngine> engine;
  try {
    engine = std::make_shared<CascadeEngine>(client, target, draft, engine_options);
  } catch (const InvalidArgumentError&) {
    if (!blocks) throw;
    // A row past the probe's that its blocks do not hold: the bf16 weights as they are.
    engine_options.target_precision = WeightPrecision::kBF16;
    CheckDeviceMemory(*client, target, draft, engine_options, options.device_memory_limit);
    engine = std::make_shared<CascadeEngine>(client, target, draft, engine_options);
  }
  check("after uploading the models");
  if (!options.tiny.empty()) {
    engine->SetTiny(LoadTiny(options.tiny, &engine->draft_config()));
  } else if (options.fit_tiny) {
    std::optional<TinyWeights> tiny;
    if (!options.tiny_cache.empty()) {
      try {
        tiny = LoadTiny(options.tiny_cache, &engine->draft_config(), /*require_checksum=*/true);
        auto version = tiny->metadata.find("fit_version");
        if (version == tiny->metadata.end() || version->second != kTinyFitVersion) tiny.reset();  // an older fit
        // One fitted (or distilled) for another draft: its depth or precision differs. (The cache
        // file's name already says which model file; a path spelled another way is the same file.)
        if (tiny) {
          const auto& meta = tiny->metadata;
          auto layers = meta.find("draft_layers"), precision = meta.find("draft_precision");
          if ((layers != meta.end() && layers->second != std::to_string(engine->draft_config().num_layers)) ||
              (precision != meta.end() && precision->second != WeightPrecisionName(options.engine.draft_precision)))
            tiny.reset();
        }
      } catch (const Error&) {
        // Missing, stale or damaged: fitted again below (and the cache rewritten).
      }
    }
    if (!tiny) {
      const ModelWeights draft_weights = draft ? *draft : TruncateLayers(target, engine->draft_config().num_layers);
      // The target writes the text (what the cascade commits; a draft alone falls into loops).
      TinyFitOptions fit;
      fit.positions = options.tiny_fit_positions;
      fit.prompts = options.tiny_fit_prompts;
      fit.sequence_length = std::min<int64_t>(128, options.engine.max_context);
      fit.text_model = &engine->target();
      fit.draft_name = draft_weights.source;
      int64_t last = -1;
      fit.progress = [&](const char*, int64_t done, int64_t total) {  // the load's fit generates only
        if (progress && (done - last >= 10 || done == total)) {
          last = done;
          progress("fit", done, total);
        }
        return !(cancelled && cancelled());
      };
      tiny = FitTiny(engine->draft(), draft_weights, fit);
      tiny->metadata["fit_text"] = "target";
      if (!options.tiny_cache.empty()) SaveTiny(*tiny, options.tiny_cache);
    }
    engine->SetTiny(*tiny);
  }
  if (options.warmup) {
    engine->Warmup(options.engine.proposal_length, options.engine.candidates, [&](int64_t done, int64_t total) {
      check("during the warm-up compile");
      if (progress) progress("compile", done, total);
    });
  }
  check("after the warm-up");
  return engine;
}

TinyFitReport DistillTinyToFile(std::shared_ptr<Client> client, const DistillOptions& options,
                                const std::function<bool(const char*, int64_t, int64_t)>& progress) {
  ModelWeights target = LoadModel(options.target);
  ModelWeights draft = options.draft.empty()
                           ? TruncateLayers(target, options.draft_layers > 0 ? options.draft_layers : target.config.num_layers)
                           : LoadModel(options.draft);
  DecoderOptions text_options, draft_options;
  text_options.precision = options.target_precision;
  draft_options.precision = options.draft_precision;
  text_options.max_context = draft_options.max_context = options.fit.sequence_length;
  DecoderModel draft_model(client, draft, draft_options);
  DecoderModel text_model(client, target, text_options);
  TinyFitOptions fit = options.fit;
  fit.text_model = &text_model;
  fit.draft_name = draft.source;
  fit.progress = progress;
  TinyFitReport report;
  TinyWeights tiny = FitTiny(draft_model, draft, fit, &report);
  tiny.metadata["fit_text"] = "target";
  SaveTiny(tiny, options.out);
  return report;
}

}  // namespace cascade
