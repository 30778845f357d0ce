// Times DecoderModel on a random model of a given shape (default: SmolLM2-135M: 30 layers,
// d=576, 9 heads, 3 KV heads, head_dim 64, ffn 1536, vocab 49152, tied) on the XLA CPU plugin:
// decode(1) per weight precision, and verify(k) / decode(1) for several k. Medians of --runs.
//
//   decoder_bench [--precision f32,bf16,int8,q4] [--matmul auto|fused|upcast|bf16act|ffi|xla] [--k 2,4,8,16,32]
//                 [--context 512] [--pos 128] [--runs 7] [--layers 30] [--plugin cpu] [--head argmax|logits]
// A precision may name its matmul mode, so modes run side by side in one process:
//   --precision f32,int8:xla,int8:ffi   (xla = the XLA-only int8 path, ffi = our int8 kernel)
// and its KV cache's type after '@' (default: DecoderOptions'): --precision q4@f32,q4@bf16
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cascade/engine.h"
#include "util/float16.h"
#include "kernels/ffi_handlers.h"
#include "model/matmul_mode.h"
#include "kernels/int8_matmul.h"
#include "kernels/thread_team.h"
#include "model/decoder.h"
#include "model/tiny.h"
#include "pjrt/api.h"
#include "pjrt/client.h"
#include "pjrt/plugin_locator.h"
#include "tools/median.h"
#include "util/huge_pages.h"

using namespace cascade;
using tools::Median;

namespace {

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

ModelWeights RandomWeights(const ModelConfig& c) {
  ModelWeights w;
  w.config = c;
  w.source = "random";
  uint64_t state = 0x9e3779b97f4a7c15ull;
  for (const WeightParam& p : WeightParamLayout(c, WeightPrecision::kF32)) {
    std::vector<int64_t> dims = p.dims;  // canonical [out, in]
    if (p.transposed) std::swap(dims[0], dims[1]);
    HostTensor t(DType::kF32, dims);
    float scale = p.dims.size() == 1 ? 0.1f : 1.0f / std::sqrt(static_cast<float>(dims[1]));
    float* v = t.as<float>();
    for (int64_t i = 0; i < t.element_count(); ++i) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      float u = static_cast<float>((state >> 40) & 0xffffff) / 16777216.0f;  // [0, 1)
      v[i] = (p.dims.size() == 1 ? 1.0f : 0.0f) + scale * 3.4641f * (u - 0.5f);  // unit variance * scale
    }
    // The layer matrices as the values of 4-bit blocks and the embedding / head as those of 8-bit
    // blocks (as a Q4_1 GGUF's, e.g. SmolLM2's), so that every precision, bf16q4 included, runs on
    // the same weights.
    if (dims.size() == 2 && (p.tensor == "model.embed_tokens.weight" || p.tensor == "lm_head.weight")) {
      const int64_t out = dims[0], in = dims[1];
      std::vector<int8_t> q(static_cast<size_t>(out * in));
      std::vector<uint16_t> scales(static_cast<size_t>(out * in / 32));
      kernels::QuantizeQ8Rows(v, in, out, q.data(), scales.data());
      for (int64_t o = 0; o < out; ++o) kernels::DequantizeQ8Row(q.data(), scales.data(), in, out, o, v + o * in);
    }
    if (dims.size() == 2 && p.tensor.rfind("model.layers.", 0) == 0 && dims[1] % 64 == 0) {
      const int64_t out = dims[0], in = dims[1];
      std::vector<uint8_t> packed(static_cast<size_t>(out * in / 2));
      std::vector<uint16_t> scales(static_cast<size_t>(out * in / kernels::kQ4Block)), mins(scales.size());
      kernels::QuantizeQ4Rows(v, in, out, packed.data(), scales.data(), mins.data());
      for (int64_t o = 0; o < out; ++o)
        kernels::DequantizeQ4Row(packed.data(), scales.data(), mins.data(), in, out, o, v + o * in);
    }
    w.tensors[p.tensor] = std::move(t);
  }
  return w;
}

// Read bandwidth of the kernel team (every thread sums its share of a buffer much larger than
// the caches' share this process can expect), in GB/s: the physical bound of a decode step.
constexpr int64_t kBandwidthBytes = int64_t{1} << 30;
double ReadBandwidth() {
  // In 2 MiB pages, as the weights are (util/huge_pages.h): the memory's bound, not the page walks'.
  static const std::unique_ptr<float[], HugePageFree> buffer = [] {
    // Varied values: pages of one repeated value may be merged by the host.
    auto b = AllocateFloatsInHugePages(kBandwidthBytes / sizeof(float));
    for (size_t i = 0; i < kBandwidthBytes / sizeof(float); ++i) b[i] = static_cast<float>(i & 1023);
    return b;
  }();
  const int64_t n = kBandwidthBytes / static_cast<int64_t>(sizeof(float)), chunk = int64_t{1} << 16;
  std::vector<float> sums(static_cast<size_t>((n + chunk - 1) / chunk));
  auto t0 = std::chrono::steady_clock::now();
  kernels::ThreadTeam::Global().Run(static_cast<int64_t>(sums.size()), [&](int64_t c) {
    const float* p = buffer.get() + c * chunk;
    sums[c] = kernels::SumForBandwidth(p, p + std::min(chunk, n - c * chunk));
  });
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  volatile float sink = sums[0];
  (void)sink;
  return kBandwidthBytes / sec / 1e9;
}

}  // namespace

int Main(int argc, char** argv);

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "decoder_bench: %s\n", e.what());
    return 1;
  }
}

int Main(int argc, char** argv) {
  std::vector<std::string> precisions = {"f32", "bf16", "int8"};
  std::vector<int64_t> ks = {4, 8, 16, 32};
  std::string matmul = "auto", plugin = "cpu", head_name = "argmax";
  int64_t context = 512, pos = 128, runs = 7, layers = 30;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i], v = argv[i + 1];
    if (a == "--precision") precisions = Split(v);
    else if (a == "--matmul") matmul = v;
    else if (a == "--k") { ks.clear(); for (auto& s : Split(v)) ks.push_back(std::stoll(s)); }
    else if (a == "--context") context = std::stoll(v);
    else if (a == "--pos") pos = std::stoll(v);
    else if (a == "--runs") runs = std::stoll(v);
    else if (a == "--layers") layers = std::stoll(v);
    else if (a == "--plugin") plugin = v;
    else if (a == "--head") head_name = v;
    else { std::fprintf(stderr, "unknown flag %s\n", a.c_str()); return 2; }
  }
  if (head_name != "argmax" && head_name != "logits" && head_name != "candidates" && head_name != "topk") {
    std::fprintf(stderr, "decoder_bench: --head must be argmax, logits, candidates or topk, got %s\n", head_name.c_str());
    return 2;
  }
  // candidates: the cascade's draft step (a random 256-wide tiny on the hidden state, K0 256).
  const HeadSpec head{head_name == "argmax"   ? HeadKind::kArgmax
                      : head_name == "logits" ? HeadKind::kLogits
                      : head_name == "topk"   ? HeadKind::kTopK
                                              : HeadKind::kCandidates,
                      head_name == "candidates" || head_name == "topk" ? 256 : 0};
  ModelConfig c;
  c.family = ModelFamily::kLlama;
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.intermediate_size = 1536;
  c.num_layers = layers;
  c.num_heads = 9;
  c.num_kv_heads = 3;
  c.head_dim = 64;
  c.context_length = context;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 100000;
  c.tied_embeddings = true;

  ClientOptions copt;
  if (plugin == "cpu") copt.cpu_device_count = 1;
  auto client = Client::Create(Api::Load(LocatePlugin(plugin)), copt);
  std::printf("platform %s %s; model %lld layers d=%lld vocab=%lld; context %lld, pos %lld, runs %lld, matmul %s\n",
              client->platform_name().c_str(), client->platform_version().c_str(), (long long)c.num_layers,
              (long long)c.hidden_size, (long long)c.vocab_size, (long long)context, (long long)pos, (long long)runs,
              matmul.c_str());
  ModelWeights w = RandomWeights(c);
  using Clock = std::chrono::steady_clock;
  auto ms = [](Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); };

  std::printf("int8 FFI kernel: %s\n", kernels::KernelDescription().c_str());
  std::vector<int64_t> sizes = {1};
  for (int64_t k : ks) sizes.push_back(k);
  // All models are loaded and every program compiled first; then the timed runs go round robin
  // over (model, T), so machine noise (other jobs on the 2 cores) hits every variant alike.
  struct Variant {
    std::string name;
    std::unique_ptr<DecoderModel> model;
    std::vector<std::vector<double>> times;  // per size
    std::vector<std::vector<double>> kernel;  // ms inside our FFI handlers, per size
    std::vector<std::vector<double>> matmul;  // ms inside the fused stack's matmuls, per size
    std::vector<std::vector<double>> attention;  // ms inside its attention, per size
    std::vector<std::vector<double>> layers;  // ms inside the fused layer call, per size
    std::vector<std::vector<double>> others;  // ms in the other handlers (head, embedding), per size
  };
  std::vector<Variant> variants;
  auto tokens_of = [&](int64_t T) {
    std::vector<int32_t> tokens(static_cast<size_t>(T));
    for (int64_t i = 0; i < T; ++i) tokens[i] = static_cast<int32_t>((i * 7919 + 13) % c.vocab_size);
    return tokens;
  };
  for (const std::string& entry : precisions) {
    const size_t at = entry.find('@');
    const std::string base = entry.substr(0, at);
    const size_t colon = base.find(':');
    const std::string pname = base.substr(0, colon);
    const std::string mode = colon == std::string::npos ? matmul : base.substr(colon + 1);
    DecoderOptions o;
    if (at != std::string::npos) {
      o.kv_dtype = DTypeFromName(entry.substr(at + 1));
      if (!o.kv_dtype || (*o.kv_dtype != DType::kF32 && *o.kv_dtype != DType::kBF16)) {
        std::fprintf(stderr, "decoder_bench: a KV cache type (after @) must be f32 or bf16, got %s\n", entry.c_str());
        return 2;
      }
    }
    if (!ParseWeightPrecision(pname, &o.precision)) {
      std::fprintf(stderr, "decoder_bench: precision must be f32, bf16, int8 or q4, got %s\n", pname.c_str());
      return 2;
    }
    o.max_context = context;
    o.matmul = mode == "upcast" ? MatmulMode::kUpcastWeights
               : mode == "bf16act" ? MatmulMode::kBF16Activations
               : mode == "ffi"     ? MatmulMode::kFfi
               : mode == "xla"     ? MatmulMode::kXlaAuto
               : mode == "fused"   ? MatmulMode::kFused
                                   : MatmulMode::kAuto;
    auto t0 = Clock::now();
    Variant v{entry, std::make_unique<DecoderModel>(client, w, o), std::vector<std::vector<double>>(sizes.size()),
              std::vector<std::vector<double>>(sizes.size()), std::vector<std::vector<double>>(sizes.size()),
              std::vector<std::vector<double>>(sizes.size()), std::vector<std::vector<double>>(sizes.size()),
              std::vector<std::vector<double>>(sizes.size())};
    if (head.kind == HeadKind::kCandidates)
      v.model->SetTiny(RandomTiny(c.hidden_size, 256, c.vocab_size, 5, 1.0f, TinyInput::kDraftHidden));
    const MatmulMode chosen = ChooseMatmulMode(*client, o.precision, o.matmul);
    std::printf("[%s] weights %.1f MB uploaded in %.0f ms (%.1f MB in 2 MiB pages); kv %s; matmuls by %s; compile+first run:",
                entry.c_str(), v.model->weight_bytes() / 1e6, ms(t0, Clock::now()), v.model->huge_page_bytes() / 1e6,
                DTypeName(v.model->kv_dtype()),
                chosen == MatmulMode::kFused ? "fused layers" : chosen == MatmulMode::kFfi ? "ffi" : "xla");
    for (int64_t T : sizes) {
      auto c0 = Clock::now();
      v.model->Forward(tokens_of(T), pos, head);
      std::printf(" T=%lld %.0f ms", (long long)T, ms(c0, Clock::now()));
      v.model->Forward(tokens_of(T), pos, head);
    }
    std::printf("\n");
    std::fflush(stdout);
    variants.push_back(std::move(v));
  }
  std::vector<double> bandwidth = {ReadBandwidth()};
  const bool bandwidth_every_run = true;
  for (int64_t r = 0; r < runs; ++r)
    for (Variant& v : variants)
      for (size_t i = 0; i < sizes.size(); ++i) {
        const std::vector<int32_t> tokens = tokens_of(sizes[i]);
        const kernels::KernelStats k0 = kernels::GetKernelStats();
        auto a = Clock::now();
        v.model->Forward(tokens, pos, head);  // same slots every run: a rollback each time
        v.times[i].push_back(ms(a, Clock::now()));
        const kernels::KernelStats k1 = kernels::GetKernelStats();
        v.kernel[i].push_back((k1.nanoseconds - k0.nanoseconds) / 1e6);
        v.matmul[i].push_back((k1.matmul_nanoseconds - k0.matmul_nanoseconds) / 1e6);
        v.attention[i].push_back((k1.attention_nanoseconds - k0.attention_nanoseconds) / 1e6);
        v.layers[i].push_back((k1.layers_nanoseconds - k0.layers_nanoseconds) / 1e6);
        v.others[i].push_back(v.kernel[i].back() - v.layers[i].back());
      }
    if (bandwidth_every_run) bandwidth.push_back(ReadBandwidth());
  const double bw = Median(bandwidth);
  std::printf("\nread bandwidth (%d thread(s), %lld MB buffer, median of %zu, measured between the runs): %.1f GB/s\n",
              kernels::ThreadTeam::Global().helpers() + 1, (long long)(kBandwidthBytes >> 20), bandwidth.size(), bw);
  for (Variant& v : variants) {
    std::printf("\n[%s]\n", v.name.c_str());
    const double decode = Median(v.times[0]);
    const double step_bytes = static_cast<double>(StepBytes(c, v.model->options().precision));
    const double bound = step_bytes / (bw * 1e9) * 1e3;
    std::printf("  weight bytes a step reads %.1f MB (of %.1f MB on the device): bound %.2f ms per step at %.1f GB/s; "
                "decode(1) at %.2f of it\n",
                step_bytes / 1e6, v.model->weight_bytes() / 1e6, bound, bw, bound / decode);
    for (size_t i = 0; i < sizes.size(); ++i) {
      const int64_t T = sizes[i];
      const double med = Median(v.times[i]);
      std::printf("  T=%-3lld median %8.2f ms  (min %8.2f)  ratio to decode(1) %.2f  per token %.2f ms  (%.1f tokens/s)"
                  "  in FFI kernels %.2f ms  outside matmuls %.2f ms (attention %.2f ms)\n",
                  (long long)T, med, *std::min_element(v.times[i].begin(), v.times[i].end()), med / decode, med / T,
                  1000.0 * T / med, Median(v.kernel[i]), med - Median(v.matmul[i]),
                  Median(v.attention[i]));
      // The fused stack's own wall time, and the other handlers' (the head, the embedding).
      if (Median(v.layers[i]) > 0)
        std::printf("        layer stack %.2f ms, other kernels (head, embedding) %.2f ms\n", Median(v.layers[i]),
                    Median(v.others[i]));
    }
  }
  return 0;
}
