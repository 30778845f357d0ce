// Fits the closed-form tiny model (model/tiny.h) for a draft and reports its coverage gamma0 (the
// share of held-out draft steps whose own argmax is among the tiny's top-K0) per K0, and the fit
// time. The draft is the first --draft-layers layers of --model (default: the first *.gguf in
// ~/.cache/cascade-xla/models, else a random SmolLM2-135M-shaped model). With --check N it
// also runs N greedy cascade draft steps through the fused candidates head per K0 (gamma0 as the
// head measures it, with full_argmax) and times them against the full-head draft step.
//
//   tiny_fit [--model PATH|random] [--draft-layers 3] [--precision f32|bf16|int8]
//            [--positions 3000] [--hidden 256] [--ridge 1e-3] [--projection head-svd|pca|random]
//            [--input hidden|embedding (the draft's final hidden state, or the last token's embedding)]
//            [--prompt-ids "1,2,3;4,5" (each sequence starts from one of these, in turn)]
//            [--temperature 1] [--seq-len 256] [--k 8,64,256] [--seed 1] [--check 0]
//            [--text-layers 0 (0: the draft writes the text; 30: the whole model does)]
//            [--train-steps 0 (Adam distillation steps after the closed form)] [--batch 128] [--lr 2e-4]
//            [--kd-temperature 1] [--kd-top-k 0] [--out tiny.safetensors] [--plugin cpu]
#include <dirent.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "util/timer.h"
#include "cascade/engine.h"
#include "model/decoder.h"
#include "model/loader.h"
#include "model/tiny.h"
#include "pjrt/api.h"
#include "pjrt/client.h"
#include "pjrt/plugin_locator.h"

using namespace cascade;

namespace {


std::vector<int64_t> Ints(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoll(item));
  return out;
}

std::string DefaultModel() {
  const char* home = std::getenv("HOME");
  if (!home) return "";
  const std::string dir = std::string(home) + "/.cache/cascade-xla/models";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return "";
  std::vector<std::string> found;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 5 && n.compare(n.size() - 5, 5, ".gguf") == 0) found.push_back(dir + "/" + n);
  }
  ::closedir(d);
  std::sort(found.begin(), found.end());
  return found.empty() ? "" : found[0];
}

// SmolLM2-135M's shape with random weights (peaked enough to have preferences).
ModelWeights RandomSmolLM2(int64_t layers) {
  ModelConfig c;
  c.family = ModelFamily::kLlama;
  c.architecture = "random";
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.intermediate_size = 1536;
  c.num_layers = layers;
  c.num_heads = 9;
  c.num_kv_heads = 3;
  c.head_dim = 64;
  c.context_length = 2048;
  c.rope_theta = 100000;
  ModelWeights w;
  w.config = c;
  w.source = "random SmolLM2-135M-shaped";
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0, 1);
  for (const WeightParam& p : WeightParamLayout(c, WeightPrecision::kF32)) {
    std::vector<int64_t> dims = p.dims;
    if (p.transposed) std::swap(dims[0], dims[1]);
    HostTensor t(DType::kF32, dims);
    const bool norm = dims.size() == 1;
    const float scale = p.tensor == "model.embed_tokens.weight" ? 1.0f : 1.0f / std::sqrt(static_cast<float>(dims.back()));
    for (int64_t i = 0; i < t.element_count(); ++i) t.as<float>()[i] = norm ? 1.0f : scale * normal(rng);
    w.tensors[p.tensor] = std::move(t);
  }
  return w;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path = DefaultModel(), precision = "f32", projection = "head-svd", out, plugin = "cpu";
  int64_t draft_layers = 3, check = 0, context = 512, text_layers = 0;
  TinyFitOptions fo;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--model") model_path = v == "random" ? "" : v;
    else if (a == "--draft-layers") draft_layers = std::stoll(v);
    else if (a == "--text-layers") text_layers = std::stoll(v);
    else if (a == "--precision") precision = v;
    else if (a == "--positions") fo.positions = std::stoll(v);
    else if (a == "--hidden") fo.hidden = std::stoll(v);
    else if (a == "--prompt-ids") {  // sequences' prompts: "1,2,3;4,5"
      std::stringstream all(v);
      for (std::string one; std::getline(all, one, ';');) {
        fo.prompts.emplace_back();
        for (int64_t id : Ints(one)) fo.prompts.back().push_back(static_cast<int32_t>(id));
      }
    }
    else if (a == "--input") fo.input = v == "embedding" ? TinyInput::kInputEmbedding : TinyInput::kDraftHidden;
    else if (a == "--ridge") fo.ridge = std::stod(v);
    else if (a == "--projection") projection = v;
    else if (a == "--temperature") fo.temperature = std::stod(v);
    else if (a == "--seq-len") fo.sequence_length = std::stoll(v);
    else if (a == "--holdout") fo.holdout = std::stod(v);
    else if (a == "--k") fo.eval_k = Ints(v);
    else if (a == "--seed") fo.seed = std::stoull(v);
    else if (a == "--check") check = std::stoll(v);
    else if (a == "--train-steps") fo.train.steps = std::stoll(v);
    else if (a == "--batch") fo.train.batch = std::stoll(v);
    else if (a == "--lr") fo.train.learning_rate = std::stod(v);
    else if (a == "--train-output") fo.train.train_output = v == "1";
    else if (a == "--kd-temperature") fo.train.teacher_temperature = std::stod(v);
    else if (a == "--kd-top-k") fo.train.teacher_top_k = std::stoll(v);
    else if (a == "--validation-k") fo.train.validation_k = std::stoll(v);
    else if (a == "--context") context = std::stoll(v);
    else if (a == "--out") out = v;
    else if (a == "--plugin") plugin = v;
    else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  if (projection != "pca" && projection != "random" && projection != "head-svd") {
    std::fprintf(stderr, "--projection must be pca, random or head-svd\n");
    return 2;
  }
  fo.projection = projection == "pca"        ? TinyFitOptions::Projection::kPca
                  : projection == "head-svd" ? TinyFitOptions::Projection::kHeadSvd
                                             : TinyFitOptions::Projection::kRandom;
  WeightPrecision prec = WeightPrecision::kF32;
  if (!ParseWeightPrecision(precision, &prec)) {
    std::fprintf(stderr, "tiny_fit: precision must be f32, bf16, int8 or q4, got %s\n", precision.c_str());
    return 2;
  }
  try {
    auto t0 = Clock::now();
    ModelWeights full = model_path.empty() ? RandomSmolLM2(std::max(draft_layers, text_layers)) : LoadModel(model_path);
    ModelWeights draft_weights = TruncateLayers(full, draft_layers);
    std::printf("draft: %s, %s, d=%lld, vocab=%lld, %s weights (load %.0f ms)\n", draft_weights.source.c_str(),
                ModelFamilyName(draft_weights.config.family), static_cast<long long>(draft_weights.config.hidden_size),
                static_cast<long long>(draft_weights.config.vocab_size), WeightPrecisionName(prec), MsSince(t0));
    ClientOptions co;
    co.cpu_device_count = 1;
    auto client = Client::Create(Api::Load(LocatePlugin(plugin)), co);
    DecoderOptions o;
    o.precision = prec;
    o.max_context = std::max<int64_t>(context, std::min<int64_t>(fo.sequence_length, 4096));
    DecoderModel draft(client, draft_weights, o);
    fo.draft_name = draft_weights.source;
    std::unique_ptr<DecoderModel> text;
    if (text_layers > 0) {
      DecoderOptions to = o;
      to.precision = WeightPrecision::kF32;
      text = std::make_unique<DecoderModel>(client, TruncateLayers(full, std::min(text_layers, full.config.num_layers)), to);
      fo.text_model = text.get();
      std::printf("text: generated by the first %lld layers (f32)\n", static_cast<long long>(text->config().num_layers));
    } else {
      std::printf("text: generated by the draft itself\n");
    }

    TinyFitReport rep;
    TinyWeights tiny = FitTiny(draft, draft_weights, fo, &rep);
    std::printf("fit: hidden %lld, projection %s, ridge %g, temperature %g; %lld train positions (%lld distinct inputs), "
                "%lld held out\n",
                static_cast<long long>(fo.hidden), projection.c_str(), fo.ridge, fo.temperature,
                static_cast<long long>(rep.train_positions), static_cast<long long>(rep.distinct_train_tokens),
                static_cast<long long>(rep.heldout_positions));
    std::printf("time: generate %.0f ms, projection %.0f ms, accumulate %.0f ms, solve %.0f ms, eval %.0f ms; "
                "fit excluding generation %.0f ms\n",
                rep.generate_ms, rep.projection_ms, rep.accumulate_ms, rep.solve_ms, rep.eval_ms,
                rep.projection_ms + rep.accumulate_ms + rep.solve_ms);
    if (rep.train.steps > 0)
      std::printf("distillation: %lld Adam steps of %lld rows, lr %g, KL %.4f -> %.4f (last epoch), compile %.0f ms, "
                  "train %.0f ms (%.1f ms/step)\n",
                  static_cast<long long>(rep.train.steps), static_cast<long long>(rep.train.batch), fo.train.learning_rate,
                  rep.train.first_loss, rep.train.last_loss, rep.train.compile_ms, rep.train.train_ms,
                  rep.train.train_ms / rep.train.steps);
    for (const auto& [step, coverage] : rep.train.validation)
      std::printf("  validation after %lld steps: coverage at K0=%lld %.3f\n", static_cast<long long>(step),
                  static_cast<long long>(rep.train.validation_k), coverage);
    if (rep.train.steps > 0) std::printf("  kept the weights of step %lld\n", static_cast<long long>(rep.train.best_step));
    for (size_t i = 0; i < rep.closed_form_gamma0.size(); ++i)
      std::printf("K0=%-5lld gamma0 held-out, closed form before distillation %.3f\n",
                  static_cast<long long>(rep.closed_form_gamma0[i].first), rep.closed_form_gamma0[i].second);
    for (size_t i = 0; i < rep.train_gamma0.size(); ++i) {
      const int64_t k = rep.train_gamma0[i].first;
      const double held = i < rep.gamma0.size() ? rep.gamma0[i].second : NAN;
      std::printf("K0=%-5lld gamma0 held-out %.3f  train %.3f  (chance %.4f)\n", static_cast<long long>(k), held,
                  rep.train_gamma0[i].second, static_cast<double>(k) / draft_weights.config.vocab_size);
    }
    std::printf("tiny: %.1f MB f32\n", tiny.byte_size() / 1048576.0);
    if (!out.empty()) {
      SaveTiny(tiny, out);
      std::printf("wrote %s\n", out.c_str());
    }

    if (check > 0) {
      draft.SetTiny(tiny);
      const int64_t n = std::min<int64_t>(check, draft.max_context() - 1);
      auto run = [&](const HeadSpec& head, int64_t* hits) {
        draft.Forward({1}, 0, head);  // compile
        int32_t token = 1;
        double ms = 0;
        for (int64_t pos = 0; pos < n; ++pos) {
          auto s = Clock::now();
          ForwardResult r = draft.Forward({token}, pos, head);
          ms += MsSince(s);
          if (hits && std::find(r.candidate_ids.begin(), r.candidate_ids.end(), r.full_argmax[0]) != r.candidate_ids.end())
            ++*hits;
          token = r.argmax[0];
        }
        return ms / n;
      };
      // A round's first draft call feeds two tokens (the engine's SpeculativeStep).
      auto run_pairs = [&](const HeadSpec& head) {
        draft.Forward({1, 1}, 0, head);  // compile
        double ms = 0;
        int64_t hits = 0, rows = 0;
        int32_t a = 1, b = 2;
        for (int64_t pos = 0; pos + 2 <= n; pos += 2) {
          auto s = Clock::now();
          ForwardResult r = draft.Forward({a, b}, pos, head);
          ms += MsSince(s);
          if (head.full_argmax)
            for (int t = 0; t < 2; ++t, ++rows) {
              const int32_t* ids = r.candidate_ids.data() + t * head.k;
              hits += std::find(ids, ids + head.k, r.full_argmax[t]) != ids + head.k;
            }
          if (head.kind == HeadKind::kCandidates) {
            a = r.argmax[1];
            b = r.argmax[1];
          }
        }
        if (rows) std::printf("  two-token calls: gamma0 %.3f over %lld rows\n", static_cast<double>(hits) / rows, static_cast<long long>(rows));
        return ms / std::max<int64_t>(1, n / 2);
      };
      std::printf("full-head draft step (argmax): %.2f ms; of two tokens %.2f ms\n", run({HeadKind::kArgmax, 0}, nullptr),
                  run_pairs({HeadKind::kArgmax, 0}));
      for (int64_t k : fo.eval_k) {
        if (k < 1 || k > draft.config().vocab_size) continue;
        int64_t hits = 0;
        const double with_full = run({HeadKind::kCandidates, k, true}, &hits);
        const double fused = run({HeadKind::kCandidates, k, false}, nullptr);
        const double fused_pairs = run_pairs({HeadKind::kCandidates, k, false});
        run_pairs({HeadKind::kCandidates, k, true});
        std::printf("K0=%-5lld fused cascade step %.2f ms, of two tokens %.2f ms (with full argmax %.2f ms); gamma0 over "
                    "%lld greedy steps %.3f\n",
                    static_cast<long long>(k), fused, fused_pairs, with_full, static_cast<long long>(n),
                    static_cast<double>(hits) / n);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tiny_fit: %s\n", e.what());
    return 1;
  }
  return 0;
}
