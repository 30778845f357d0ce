// The C++ driver: runs a generation with the cascade from the command line, no Node needed (the
// GPU machines have none), and prints the same stage/acceptance table as `cascade-xla run`.
//
//   cascade_run --plugin cpu|PATH --model M.gguf|--random-smollm2 [--mode target|speculative|cascade|auto]
//               [--precision f32|bf16|int8|q4|bf16q4] [--draft-precision P] [--draft-layers N] [--k1 L] [--k0 K0] [--branches B]
//               [--devices D] [--max-tokens N] [--max-context C] [--temperature T] [--seed S] [--compare] [--tiny FILE]
//               [--prompt-ids 1,2,3] [--coverage-every N] [--tiny FILE]
// The prompt is a fixed list of token ids (no tokenizer in C++); with --random-smollm2 the model
// is a random SmolLM2-135M-shaped one (weights do not matter for speed, and no file is needed).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>
#include <string>

#include "cascade/engine.h"
#include "model/loader.h"
#include "model/tiny.h"
#include "pjrt/api.h"
#include "pjrt/plugin_locator.h"

using namespace cascade;

namespace {

ModelWeights RandomSmolLM2() {
  ModelConfig c;
  c.family = ModelFamily::kLlama;
  c.architecture = "random-smollm2-135m";
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.intermediate_size = 1536;
  c.num_layers = 30;
  c.num_heads = 9;
  c.num_kv_heads = 3;
  c.head_dim = 64;
  c.context_length = 2048;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 100000;
  c.tied_embeddings = true;
  ModelWeights w;
  w.config = c;
  w.source = "random SmolLM2-135M shape";
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0, 1);
  for (const WeightParam& p : WeightParamLayout(c, WeightPrecision::kF32)) {
    std::vector<int64_t> dims = p.dims;
    if (p.transposed) std::swap(dims[0], dims[1]);
    HostTensor t(DType::kF32, dims);
    float* v = t.as<float>();
    const float scale = dims.size() == 1 ? 0.f : 1.0f / std::sqrt(static_cast<float>(dims.back()));
    for (int64_t i = 0; i < t.element_count(); ++i) v[i] = dims.size() == 1 ? 1.0f : scale * normal(rng);
    w.tensors[p.tensor] = std::move(t);
  }
  return w;
}

WeightPrecision Precision(const std::string& s) {
  WeightPrecision p = WeightPrecision::kF32;
  if (!ParseWeightPrecision(s, &p)) {
    std::fprintf(stderr, "precision must be f32, bf16, int8, q4 or bf16q4, got %s\n", s.c_str());
    std::exit(2);
  }
  return p;
}

DecodeMode Mode(const std::string& s) {
  if (s == "target") return DecodeMode::kTarget;
  if (s == "cascade") return DecodeMode::kCascade;
  if (s == "auto") return DecodeMode::kAuto;
  return DecodeMode::kSpeculative;
}

void Print(const char* label, const GenerationStats& s) {
  const auto& t = s.times;
  const double total = t.draft_ms + t.target_ms + t.host_ms;
  std::printf("%s\n  stage    ms        share\n", label);
  std::printf("  tiny     %-9.1f %5.1f%%  (fused into the draft step)\n", 0.0, 0.0);
  std::printf("  draft    %-9.1f %5.1f%%\n", t.draft_ms, total ? 100 * t.draft_ms / total : 0);
  std::printf("  target   %-9.1f %5.1f%%\n", t.target_ms, total ? 100 * t.target_ms / total : 0);
  std::printf("  host     %-9.1f %5.1f%%\n", t.host_ms, total ? 100 * t.host_ms / total : 0);
  std::printf("  prefill %.0f ms, compile %.0f ms (excluded); %lld tokens\n", t.prefill_ms, t.compile_ms,
              static_cast<long long>(s.generated_tokens));
  std::printf("  tau %.2f  gamma2|1 %.2f  gammaTotal %.2f  gamma0 %s  tokens/s %.1f  predicted %.2fx\n", s.tau(),
              s.gamma21(), s.gamma_total(), s.gamma0() < 0 ? "n/a" : std::to_string(s.gamma0()).substr(0, 4).c_str(),
              s.tokens_per_second(), s.predicted_speedup);
  std::printf("  target calls %lld (%.2f ms each)  draft calls %lld (%.2f ms each)  proposed %lld  lookahead %lld/%lld\n",
              static_cast<long long>(s.target_calls), s.target_calls ? t.target_ms / s.target_calls : 0.0,
              static_cast<long long>(s.draft_calls), s.draft_calls ? t.draft_ms / s.draft_calls : 0.0,
              static_cast<long long>(s.proposed), static_cast<long long>(s.lookahead_hits),
              static_cast<long long>(s.lookahead_guesses));
}

}  // namespace

int main(int argc, char** argv) {
  std::string plugin = "cpu", model, mode = "speculative", precision = "f32", draft_precision;
  bool random_model = false, compare = false, print_tokens = false;
  std::string tiny_path;  // a tiny file (tiny_fit --out); else a random tiny
  std::vector<int32_t> prompt = {1, 504, 1296, 3003, 4683, 359};
  EngineOptions eo;
  eo.max_context = 512;
  GenerateOptions g;
  g.max_tokens = 64;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--plugin") plugin = next();
    else if (a == "--model") model = next();
    else if (a == "--random-smollm2") random_model = true;
    else if (a == "--mode") mode = next();
    else if (a == "--precision") precision = next();
    else if (a == "--draft-precision") draft_precision = next();
    else if (a == "--draft-layers") eo.draft_layers = std::stoll(next());
    else if (a == "--k1") g.proposal_length = std::stoll(next());
    else if (a == "--k0") g.candidates = std::stoll(next());
    else if (a == "--branches") g.branches = std::stoll(next());
    else if (a == "--devices") eo.devices = std::stoll(next());
    else if (a == "--max-tokens") g.max_tokens = std::stoll(next());
    else if (a == "--max-context") eo.max_context = std::stoll(next());
    else if (a == "--temperature") g.sampling.temperature = std::stod(next());
    else if (a == "--seed") g.seed = std::stoull(next());
    else if (a == "--compare") compare = true;
    else if (a == "--print-tokens") print_tokens = true;
    else if (a == "--tiny") tiny_path = next();
    else if (a == "--prompt-ids") {
      prompt.clear();
      std::stringstream ids(next());
      for (std::string id; std::getline(ids, id, ',');) prompt.push_back(static_cast<int32_t>(std::stoi(id)));
    } else if (a == "--coverage-every") g.coverage_every = std::stoll(next());
    else {
      std::fprintf(stderr,
                   "usage: cascade_run --plugin cpu|PATH (--model M.gguf | --random-smollm2) [--mode target|speculative|"
                   "cascade|auto] [--precision f32|bf16|int8|q4|bf16q4] [--draft-precision P] [--draft-layers N] [--k1 L] [--k0 K0] [--branches B] "
                   "[--devices D] [--max-tokens N] [--max-context C] [--temperature T] [--seed S] [--compare] [--tiny FILE] [--prompt-ids 1,2,3] [--coverage-every N] [--print-tokens]\n");
      return 2;
    }
  }
  try {
    auto api = Api::Load(LocatePlugin(plugin));
    ClientOptions co;
    if (plugin == "cpu" || plugin.find("cpu") != std::string::npos) co.cpu_device_count = std::max<int64_t>(1, eo.devices);
    auto client = Client::Create(api, co);
    std::printf("plugin %s (PJRT %d.%d), platform %s %s, %zu devices (%s)\n", api->path().c_str(), api->major_version(),
                api->minor_version(), client->platform_name().c_str(), client->platform_version().c_str(),
                client->devices().size(), client->devices()[0].kind.c_str());
    ModelWeights target = random_model ? RandomSmolLM2() : LoadModel(model);
    eo.target_precision = eo.draft_precision = Precision(precision);
    if (!draft_precision.empty()) eo.draft_precision = Precision(draft_precision);
    if (eo.draft_layers == 0) eo.draft_layers = std::max<int64_t>(1, target.config.num_layers / 4);
    CascadeEngine engine(client, target, std::nullopt, eo);
    g.mode = Mode(mode);
    if (g.mode == DecodeMode::kCascade || g.mode == DecodeMode::kAuto)
      engine.SetTiny(tiny_path.empty() ? RandomTiny(target.config.hidden_size, 256, target.config.vocab_size, 1)
                                       : LoadTiny(tiny_path, &engine.draft_config()));
    engine.Warmup(g.proposal_length, g.candidates);
    engine.Generate(prompt, g);  // warm every shape once
    auto r = engine.Generate(prompt, g);
    std::printf("%s: %d layers (%s), draft %lld layers, k1 %lld, k0 %lld, branches %lld, devices %lld\n",
                target.source.c_str(), static_cast<int>(target.config.num_layers), precision.c_str(),
                static_cast<long long>(engine.draft_config().num_layers), static_cast<long long>(g.proposal_length),
                static_cast<long long>(g.candidates), static_cast<long long>(g.branches), static_cast<long long>(eo.devices));
    Print(DecodeModeName(g.mode), r.stats);
    if (print_tokens) {  // the generated ids, to compare builds token for token
      std::printf("  tokens");
      for (int32_t id : r.tokens) std::printf(" %d", id);
      std::printf("\n");
    }
    if (compare && g.mode != DecodeMode::kTarget) {
      GenerateOptions t = g;
      t.mode = DecodeMode::kTarget;
      engine.Generate(prompt, t);
      auto b = engine.Generate(prompt, t);
      Print("target-only", b.stats);
      std::printf("speedup %.2fx\n", r.stats.tokens_per_second() / b.stats.tokens_per_second());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cascade_run: %s\n", e.what());
    return 1;
  }
  return 0;
}
