// Precision report for a model (issue: models): per weight precision, load time, peak RSS,
// decode(1) tokens/s and verify(k)/decode(1); and the accuracy retention of bf16 (with an f32 and a
// bf16 KV cache), int8 and q4 against f32: top-1 agreement and mean KL(p_f32 || p_x) over positions
// of text the f32 model samples.
//
//   precision_report --model M.gguf --precision f32|bf16|int8|q4     (one precision, run one per process for RSS)
//   precision_report --model M.gguf --retention [--positions 2048]
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "util/timer.h"
#include "cascade/distribution.h"
#include "cascade/random.h"
#include "model/decoder.h"
#include "model/loader.h"
#include "pjrt/api.h"
#include "pjrt/plugin_locator.h"
#include "tools/median.h"

using namespace cascade;
using tools::Median;

namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : (v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2);
}
long PeakRssMb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024;
}
WeightPrecision Parse(const std::string& s) {
  WeightPrecision p = WeightPrecision::kF32;
  if (ParseWeightPrecision(s, &p)) return p;
  std::fprintf(stderr, "precision must be f32, bf16, int8 or q4\n");
  std::exit(2);
}

std::shared_ptr<Client> Cpu() {
  ClientOptions o;
  o.cpu_device_count = 1;
  return Client::Create(Api::Load(LocatePlugin("cpu")), o);
}

void OnePrecision(const std::string& model, WeightPrecision precision) {
  const auto start = std::chrono::steady_clock::now();
  ModelWeights w = LoadModel(model);
  auto client = Cpu();
  DecoderOptions o;
  o.precision = precision;
  o.max_context = 512;
  DecoderModel m(client, w, o);
  const double load_ms = MsSince(start);
  std::vector<int32_t> prompt = {504, 1296, 3003, 4683, 359};
  m.Forward(prompt, 0, {HeadKind::kArgmax, 0});  // compile / warm
  int32_t next = 28;
  m.Forward({next}, 5, {HeadKind::kArgmax, 0});
  std::vector<double> decode;
  for (int i = 0; i < 24; ++i) {
    const auto s = std::chrono::steady_clock::now();
    next = m.Forward({next}, 6 + i, {HeadKind::kArgmax, 0}).argmax[0];
    decode.push_back(MsSince(s));
  }
  const double d1 = Median(decode);
  std::printf("%s: load %.0f ms, peak RSS %ld MiB, device weights %.0f MiB, decode(1) %.1f ms = %.1f tokens/s\n",
              WeightPrecisionName(precision), load_ms, PeakRssMb(), m.weight_bytes() / 1048576.0, d1, 1000.0 / d1);
  for (int64_t k : {4, 8, 16, 32}) {
    std::vector<int32_t> block(k, 28);
    m.Forward(block, 100, {HeadKind::kArgmax, 0});  // compile
    std::vector<double> t;
    for (int i = 0; i < 5; ++i) {
      const auto s = std::chrono::steady_clock::now();
      m.Forward(block, 100, {HeadKind::kArgmax, 0});
      t.push_back(MsSince(s));
    }
    std::printf("  verify(%lld) %.1f ms = %.2fx decode(1)\n", static_cast<long long>(k), Median(t), Median(t) / d1);
  }
}

void Retention(const std::string& model, int64_t positions) {
  ModelWeights w = LoadModel(model);
  auto client = Cpu();
  const int64_t V = w.config.vocab_size, seq_len = 256;
  DecoderOptions o;
  o.max_context = seq_len;
  DecoderModel f32(client, w, o);
  // Text the f32 model samples (T = 0.8) from a few seed tokens.
  std::vector<std::vector<int32_t>> texts;
  Rng rng(17);
  SamplingParams sampling{0.8, 0, 1.0};
  const int32_t seeds[] = {504, 1780, 2683, 330, 1070, 1385, 378, 2399};
  int64_t total = 0;
  for (size_t s = 0; total < positions; ++s) {
    std::vector<int32_t> t = {seeds[s % 8]};
    ForwardResult r = f32.Forward({t[0]}, 0, {HeadKind::kLogits, 0});
    while (static_cast<int64_t>(t.size()) < seq_len && total < positions) {
      t.push_back(Transform(r.logits.data(), V, sampling).Sample(rng));
      ++total;
      if (static_cast<int64_t>(t.size()) < seq_len) r = f32.Forward({t.back()}, t.size() - 1, {HeadKind::kLogits, 0});
    }
    texts.push_back(t);
  }
  std::printf("retention over %lld positions (%zu sequences the f32 model sampled at T=0.8)\n", static_cast<long long>(total),
              texts.size());
  auto logits_of = [&](DecoderModel& m, const std::vector<int32_t>& t) {
    std::vector<float> out;
    for (int64_t at = 0; at < static_cast<int64_t>(t.size());) {
      int64_t chunk = 64;
      while (chunk > static_cast<int64_t>(t.size()) - at) chunk /= 2;
      std::vector<int32_t> part(t.begin() + at, t.begin() + at + chunk);
      auto r = m.Forward(part, at, {HeadKind::kLogits, 0});
      out.insert(out.end(), r.logits.begin(), r.logits.end());
      at += chunk;
    }
    return out;
  };
  std::vector<std::vector<float>> reference;
  for (auto& t : texts) reference.push_back(logits_of(f32, t));
  // The weights at each precision with an f32 KV cache, and bf16 weights with a bf16 cache
  // (EngineOptions::target_kv_dtype).
  const std::pair<WeightPrecision, DType> variants[] = {{WeightPrecision::kBF16, DType::kF32},
                                                         {WeightPrecision::kBF16, DType::kBF16},
                                                         {WeightPrecision::kInt8, DType::kF32},
                                                         {WeightPrecision::kQ4, DType::kF32}};
  for (auto [p, kv] : variants) {
    DecoderOptions po = o;
    po.precision = p;
    po.kv_dtype = kv;
    DecoderModel m(client, w, po);
    int64_t n = 0, agree = 0;
    double kl = 0;
    for (size_t s = 0; s < texts.size(); ++s) {
      auto l = logits_of(m, texts[s]);
      for (size_t i = 0; i + 1 < texts[s].size(); ++i) {  // positions whose next token was sampled
        const float* a = reference[s].data() + i * V;
        const float* b = l.data() + i * V;
        agree += std::max_element(a, a + V) - a == std::max_element(b, b + V) - b;
        const double ma = *std::max_element(a, a + V), mb = *std::max_element(b, b + V);
        double za = 0, zb = 0;
        for (int64_t v = 0; v < V; ++v) za += std::exp(a[v] - ma), zb += std::exp(b[v] - mb);
        const double la = std::log(za), lb = std::log(zb);
        double k = 0;
        for (int64_t v = 0; v < V; ++v) {
          const double lpa = a[v] - ma - la, lpb = b[v] - mb - lb;
          k += std::exp(lpa) * (lpa - lpb);
        }
        kl += k;
        ++n;
      }
    }
    std::printf("  %s (%s KV cache) vs f32: top-1 agreement %.4f (%lld/%lld), mean KL %.5f nats\n", WeightPrecisionName(p), DTypeName(kv),
                static_cast<double>(agree) / n, static_cast<long long>(agree), static_cast<long long>(n), kl / n);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, precision;
  bool retention = false;
  int64_t positions = 2048;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--model" && i + 1 < argc) model = argv[++i];
    else if (a == "--precision" && i + 1 < argc) precision = argv[++i];
    else if (a == "--retention") retention = true;
    else if (a == "--positions" && i + 1 < argc) positions = std::stoll(argv[++i]);
    else {
      std::fprintf(stderr, "usage: precision_report --model M.gguf (--precision f32|bf16|int8 | --retention [--positions N])\n");
      return 2;
    }
  }
  if (model.empty()) return std::fprintf(stderr, "--model is required\n"), 2;
  try {
    if (retention) Retention(model, positions);
    else OnePrecision(model, Parse(precision.empty() ? "f32" : precision));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "precision_report: %s\n", e.what());
    return 1;
  }
  return 0;
}
