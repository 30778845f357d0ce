// Times our CPU matmul kernels alone (no PJRT) on the SmolLM2-135M matrices, per weight kind,
// at T = 1, 5 and 13 (a speculative round's verify), with 1 thread and with the whole kernel team, against the read bandwidth
// measured in the same run. What a decode step's matrices can reach on this machine. `hot`: each
// kind's instruction cost alone, one thread, one 576 x 256 matrix in L2 (docs/bench/decoder.md).
//
//   kernel_bench [--runs 15] [--kinds f32,bf16,int8,int8p,q4,bf16q4,q4exact,head,tiny,hot,pages] [--cold]
//
// `pages` (not in the default list): a plain read of 64 MB, in 4 KiB pages against 2 MiB pages,
// after 1 GiB read (util/huge_pages.h: why the weights are collapsed).
// --cold: each timed pass over the layer matrices follows a 1 GiB read, so they come from DRAM
// (otherwise the 66 MB of q4 / bf16q4 matrices stay in a large L3 between passes).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/decoder_layers.h"
#include "util/float16.h"
#include "util/huge_pages.h"
#include "kernels/argmax.h"
#include "kernels/ffi_handlers.h"
#include "kernels/head_argmax.h"
#include "kernels/int8_matmul.h"
#include "kernels/tiny_candidates.h"
#include "kernels/thread_team.h"
#include "tools/median.h"

using namespace cascade::kernels;
using Clock = std::chrono::steady_clock;
using cascade::tools::Median;

namespace {

// A buffer for the read-bandwidth probe in 2 MiB pages, as the weights are (util/huge_pages.h).
struct ProbeBuffer {
  // Varied values: pages of one repeated value may be merged by the host and then not read from
  // DRAM (or read through its 4 KiB mappings).
  explicit ProbeBuffer(size_t n) : data(cascade::AllocateFloatsInHugePages(n)), count(n) {
    for (size_t i = 0; i < n; ++i) data[i] = static_cast<float>(i & 1023);
  }
  std::unique_ptr<float[], cascade::HugePageFree> data;
  size_t count;
};

double Bandwidth(ThreadTeam& team, const ProbeBuffer& probe) {
  const float* buf = probe.data.get();
  const int64_t chunk = int64_t{1} << 16, n = static_cast<int64_t>(probe.count);
  std::vector<float> sums(static_cast<size_t>((n + chunk - 1) / chunk));
  auto t0 = Clock::now();
  team.Run(static_cast<int64_t>(sums.size()), [&](int64_t c) {
    const float* p = buf + c * chunk;
    sums[c] = SumForBandwidth(p, p + std::min(chunk, n - c * chunk));
  });
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  volatile float sink = sums[0];
  (void)sink;
  return n * sizeof(float) / s / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 15;
  std::string kinds = "f32,bf16,int8,int8p,q4,bf16q4,q4exact,head,tiny,hot";
  bool cold = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--cold") cold = true;
    else if (a == "--runs" && i + 1 < argc) runs = std::atoi(argv[++i]);
    else if (a == "--kinds" && i + 1 < argc) kinds = argv[++i];
  }
  auto wanted = [&](const std::string& name) { return ("," + kinds + ",").find("," + name + ",") != std::string::npos; };
  // One layer's matrices of SmolLM2-135M repeated to ~the model's size, so they stream from DRAM.
  struct Shape { int64_t in, out; };
  const std::vector<Shape> layer = {{576, 576}, {576, 192}, {576, 192}, {576, 576}, {576, 1536}, {576, 1536}, {1536, 576}};
  const int layers = 30;
  ThreadTeam one(0);
  ThreadTeam& all = ThreadTeam::Global();
  KernelImpls impls;
  impls.int8 = BestInt8Impl();
  impls.bf16 = BestBf16Impl();
  impls.f32 = BestF32Impl();
  std::printf("kernels: %s\n", KernelDescription().c_str());
  const ProbeBuffer big(size_t{1} << 28);  // 1 GiB
  std::vector<double> bw1, bw2;
  for (int r = 0; r < 3; ++r) {
    bw1.push_back(Bandwidth(one, big));
    bw2.push_back(Bandwidth(all, big));
  }
  std::printf("read bandwidth: 1 thread %.1f GB/s, %d threads %.1f GB/s\n", Median(bw1), all.helpers() + 1, Median(bw2));
  for (WeightMatrix::Kind kind : {WeightMatrix::Kind::kF32Transposed, WeightMatrix::Kind::kBf16, WeightMatrix::Kind::kInt8,
                                  WeightMatrix::Kind::kInt8Panels, WeightMatrix::Kind::kQ4, WeightMatrix::Kind::kQ4Bf16,
                                  WeightMatrix::Kind::kQ4ExactBf16}) {
    const bool q4 = kind == WeightMatrix::Kind::kQ4 || kind == WeightMatrix::Kind::kQ4Bf16 ||
                    kind == WeightMatrix::Kind::kQ4ExactBf16;
    const bool int8 = kind == WeightMatrix::Kind::kInt8 || kind == WeightMatrix::Kind::kInt8Panels;
    // int8p: the int8 layer matrices as a fused model's arena holds them (kInt8Panels).
    // q4exact: kQ4ExactBf16, the block-stored bf16 target's tiles without tables (session 32).
    const char* name = kind == WeightMatrix::Kind::kQ4ExactBf16 ? "q4exact" : kind == WeightMatrix::Kind::kQ4Bf16 ? "bf16q4" : q4 ? "q4" : kind == WeightMatrix::Kind::kInt8 ? "int8" : int8 ? "int8p" : kind == WeightMatrix::Kind::kBf16 ? "bf16" : "f32";
    if (!wanted(name)) continue;
    const int64_t elem = int8 ? 1 : kind == WeightMatrix::Kind::kBf16 ? 2 : 4;
    std::vector<std::vector<uint8_t>> data;
    std::vector<std::vector<float>> scales;
    std::vector<std::vector<uint16_t>> blocks;  // q4: f16 scales and minimums per 32-block
    std::vector<WeightMatrix> ms;
    int64_t bytes = 0;
    for (int l = 0; l < layers; ++l)
      for (const Shape& s : layer) {
        const int64_t matrix_bytes = q4 ? s.in * s.out / 2 : s.in * s.out * elem;
        // Varied bytes: pages of one repeated value may be shared by the host (a VM's page
        // merging) and then read from the cache, not DRAM.
        data.emplace_back(static_cast<size_t>(matrix_bytes));
        for (size_t i = 0; i < data.back().size(); ++i) data.back()[i] = static_cast<uint8_t>((i * 2654435761u + data.size()) >> 13);
        scales.emplace_back(static_cast<size_t>(s.out), 0.01f);
        ms.push_back({kind, data.back().data(), scales.back().data(), s.in, s.out});
        bytes += matrix_bytes;
        if (q4) {
          blocks.emplace_back(static_cast<size_t>(s.out * s.in / 32 * 2), uint16_t{0x2000});
          ms.back().block_scale = blocks.back().data();
          ms.back().block_min = blocks.back().data() + s.out * s.in / 32;
          bytes += s.out * s.in / 32 * 4;
        }
      }
    // In 2 MiB pages, as a model's upload leaves its weights (model/decoder.cc).
    if (!cascade::HugePagesDisabled()) {
      std::vector<std::pair<const void*, size_t>> ranges;
      for (const auto& d : data) ranges.push_back({d.data(), d.size()});
      for (const auto& b : blocks) ranges.push_back({b.data(), b.size() * sizeof(uint16_t)});
      for (const auto& f : scales) ranges.push_back({f.data(), f.size() * sizeof(float)});
      cascade::CollapseIntoHugePages(ranges);
    }
    for (int64_t T : {1, 5, 13}) {
      std::vector<float> x(static_cast<size_t>(T * 1536), 0.5f), y(static_cast<size_t>(T * 1536));
      for (ThreadTeam* team : {&one, &all}) {
        std::vector<double> t;
        for (int r = 0; r < runs; ++r) {
          if (cold) Bandwidth(all, big);
          auto t0 = Clock::now();
          for (const WeightMatrix& m : ms) TeamMatmul(m, impls, x.data(), T, y.data(), *team);
          t.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        }
        const double ms_med = Median(t);
        const double bw = team == &one ? Median(bw1) : Median(bw2);
        std::printf("%-5s T=%lld %d thread(s)%s: %7.2f ms for %.1f MB = %5.1f GB/s (%.2f of the read bandwidth)\n", name,
                    (long long)T, team->helpers() + 1, cold ? " cold" : "", ms_med, bytes / 1e6, bytes / ms_med / 1e6,
                    bytes / ms_med / 1e6 / bw);
      }
    }
  }

  if (wanted("pages")) {
    const size_t n = size_t{16} << 20;  // 64 MB of floats
    // Varied values in both (pages of one repeated value may be merged by the host).
    std::vector<float> small(n);
    const ProbeBuffer huge(n);
    for (size_t i = 0; i < n; ++i) small[i] = static_cast<float>(i & 1023);
    std::vector<double> t4k, t2m;
    for (int r = 0; r < std::max(runs, 5); ++r)
      for (bool in_huge : {false, true}) {
        Bandwidth(all, big);
        auto t0 = Clock::now();
        all.Run(static_cast<int64_t>(n >> 16), [&](int64_t c) {
          const float* p = (in_huge ? huge.data.get() : small.data()) + (c << 16);
          volatile float sink = SumForBandwidth(p, p + (1 << 16));
          (void)sink;
        });
        (in_huge ? t2m : t4k).push_back(n * 4 / std::chrono::duration<double>(Clock::now() - t0).count() / 1e9);
      }
    std::printf("read of 64 MB after 1 GiB, %d threads: 4 KiB pages %.1f GB/s, 2 MiB pages %.1f GB/s\n",
                all.helpers() + 1, Median(t4k), Median(t2m));
  }

  // Hot: ns per output row and 64 inputs (per token in brackets) with the weights in L2, so the
  // instructions bound it, not DRAM: one thread, a 576 x 256 matrix, MatmulRange 2,000 times.
  if (wanted("hot")) {
    const int64_t in = 576, out = 256;
    std::vector<float> wf(static_cast<size_t>(in * out));
    for (size_t i = 0; i < wf.size(); ++i) wf[i] = 0.01f * static_cast<float>(static_cast<int>((i * 2654435761u >> 24) % 255) - 127);
    std::vector<int8_t> w8(wf.size());
    for (size_t i = 0; i < wf.size(); ++i) w8[i] = static_cast<int8_t>(std::lrint(wf[i] * 100.0f));
    std::vector<uint8_t> panels8(wf.size()), q4(wf.size() / 2), q4rows(wf.size() / 2), q4pairs(wf.size() / 2);
    PackInt8Panels(w8.data(), in, out, panels8.data());
    std::vector<uint16_t> s4(static_cast<size_t>(out * in / kQ4Block)), m4(s4.size()), s4r(s4.size()), m4r(s4.size()),
        s4p(s4.size()), m4p(s4.size());
    QuantizeQ4Rows(wf.data(), in, out, q4.data(), s4.data(), m4.data());
    QuantizeQ4Rows(wf.data(), in, out, q4rows.data(), s4r.data(), m4r.data(), Q4Order::kRows);
    QuantizeQ4Rows(wf.data(), in, out, q4pairs.data(), s4p.data(), m4p.data(), Q4Order::kPairs);
    std::vector<float> scale(static_cast<size_t>(out), 0.01f);
    std::vector<uint16_t> wbf(wf.size());
    for (size_t i = 0; i < wf.size(); ++i) wbf[i] = cascade::F32ToBF16(wf[i]);
    const std::vector<std::pair<const char*, WeightMatrix>> hot = {
        {"bf16", {WeightMatrix::Kind::kBf16, wbf.data(), nullptr, in, out}},
        {"int8", {WeightMatrix::Kind::kInt8, w8.data(), scale.data(), in, out}},
        {"int8p", {WeightMatrix::Kind::kInt8Panels, panels8.data(), scale.data(), in, out}},
        {"q4", {WeightMatrix::Kind::kQ4, q4.data(), nullptr, in, out, s4.data(), m4.data()}},
        {"bf16q4", {WeightMatrix::Kind::kQ4Bf16, q4rows.data(), nullptr, in, out, s4r.data(), m4r.data()}},
        {"q4exact", {WeightMatrix::Kind::kQ4ExactBf16, q4pairs.data(), nullptr, in, out, s4p.data(), m4p.data()}}};
    for (const auto& [name, m] : hot) {
      std::printf("hot %-7s", name);
      for (int64_t T : {1, 2, 5, 8, 13}) {
        std::vector<float> x(static_cast<size_t>(T * in)), y(static_cast<size_t>(T * out));
        for (size_t i = 0; i < x.size(); ++i) x[i] = 0.01f * static_cast<float>(i % 97) - 0.3f;
        PreparedActivations a;
        PrepareActivations(m.kind, impls, x.data(), T, in, &a);
        std::vector<double> t;
        for (int r = 0; r < std::max(3, runs / 3); ++r) {
          constexpr int kIters = 2000;
          auto t0 = Clock::now();
          for (int i = 0; i < kIters; ++i) MatmulRange(m, impls, a, y.data(), 0, out);
          t.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / kIters / (out * in / 64.0));
        }
        std::printf("  T=%lld %.2f (%.2f)", (long long)T, Median(t), Median(t) / T);
      }
      std::printf("  ns per row and 64 inputs (per token)\n");
    }
  }

  // The greedy head of the default (bf16q4) target: SmolLM2's 49152 x 576 Q8_0 embedding as
  // bf16 weights, one token. Every logit exactly (the kQ8Bf16 kernel, then ArgmaxRows) against
  // Q8Bf16HeadArgmax (an int16 bound, then the candidates exactly: head_argmax.h), both hot
  // (back to back) and cold (after reading 1 GiB), with the ids compared.
  if (wanted("head")) {
    const int64_t in = 576, out = 49152;
    std::vector<float> wf(static_cast<size_t>(in * out)), x(in);
    uint64_t state = 7;
    auto uniform = [&] {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      return static_cast<float>((state >> 40) & 0xffffff) / 16777216.0f - 0.5f;
    };
    for (float& v : wf) v = 0.2f * uniform();
    for (float& v : x) v = 8.0f * uniform();
    std::vector<int8_t> q(wf.size());
    std::vector<uint16_t> scale(static_cast<size_t>(out * in / 32));
    QuantizeQ8Rows(wf.data(), in, out, q.data(), scale.data());
    if (!cascade::HugePagesDisabled())
      cascade::CollapseIntoHugePages({{q.data(), q.size()}, {scale.data(), scale.size() * sizeof(uint16_t)}});
    const WeightMatrix head{WeightMatrix::Kind::kQ8Bf16, q.data(), nullptr, in, out, scale.data(), nullptr};
    std::vector<float> logits(static_cast<size_t>(out));
    std::vector<double> full_hot, full_cold, bound_hot, bound_cold;
    int32_t full_id = -1, bound_id = -1;
    HeadArgmaxStats stats;
    for (int r = 0; r < runs; ++r)
      for (bool cold : {true, false})
        for (bool bounded : {false, true}) {
          if (cold) Bandwidth(all, big);
          auto t0 = Clock::now();
          if (bounded) {
            Q8Bf16HeadArgmax(head, impls, x.data(), 1, &bound_id, all, &stats);
          } else {
            TeamMatmul(head, impls, x.data(), 1, logits.data(), all);
            ArgmaxRows(logits.data(), 1, out, &full_id);
          }
          const double t = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
          (bounded ? (cold ? bound_cold : bound_hot) : (cold ? full_cold : full_hot)).push_back(t);
        }
    const double mb = static_cast<double>(in * out + 2 * out * in / 32) / 1e6;
    std::printf("greedy head (%.1f MB Q8_0 as bf16, 1 token): every logit %.3f ms hot / %.3f cold; bound + %lld exact "
                "rows %.3f hot / %.3f cold (%s); DRAM bound %.3f ms\n",
                mb, Median(full_hot), Median(full_cold), (long long)stats.candidates, Median(bound_hot),
                Median(bound_cold), full_id == bound_id ? "same id" : "DIFFERENT ID", mb / Median(bw2));
  }

  // The tiny (stage 0) on its own, W2 in int8 and in q4 blocks (what a 256-wide tiny uses): the
  // same call back to back (W2 stays in the last-level cache if it holds it) against the same
  // call after 1 GiB was read in between (W2 then comes from DRAM).
  if (wanted("tiny")) {
    const int64_t d = 576, H = 256, V = 49152, K = 256;
    std::vector<float> w1t(static_cast<size_t>(d * H), 0.01f), b1(H, 0.f), ln_w(H, 1.f), ln_b(H, 4.f),
        w2_scale(V, 0.01f), b2(V, 0.f), x(d), w2f(static_cast<size_t>(V * H));
    std::vector<int8_t> w2(static_cast<size_t>(V * H));
    for (size_t i = 0; i < w2.size(); ++i) {
      w2[i] = static_cast<int8_t>((i * 2654435761u >> 24) % 255 - 127);
      w2f[i] = 0.01f * w2[i];
    }
    std::vector<uint8_t> q4(static_cast<size_t>(V * H / 2));
    std::vector<uint16_t> q4_scale(static_cast<size_t>(V * H / kQ4Block)), q4_min(q4_scale.size());
    QuantizeQ4Rows(w2f.data(), H, V, q4.data(), q4_scale.data(), q4_min.data());
    for (int64_t i = 0; i < d; ++i) x[i] = std::sin(static_cast<float>(i));
    if (!cascade::HugePagesDisabled())  // as DecoderModel::SetTiny leaves W2
      cascade::CollapseIntoHugePages({{w2.data(), w2.size()},
                                      {q4.data(), q4.size()},
                                      {q4_scale.data(), q4_scale.size() * sizeof(uint16_t)},
                                      {q4_min.data(), q4_min.size() * sizeof(uint16_t)}});
    for (bool q4_w2 : {false, true}) {
      TinyParams p;
      p.w1t = w1t.data();
      p.b1 = b1.data();
      p.ln_w = ln_w.data();
      p.ln_b = ln_b.data();
      p.w2_q4 = q4_w2;
      p.w2 = q4_w2 ? static_cast<const void*>(q4.data()) : static_cast<const void*>(w2.data());
      p.w2_scale = w2_scale.data();
      p.w2_block_scale = q4_scale.data();
      p.w2_block_min = q4_min.data();
      p.b2 = b2.data();
      p.d = d;
      p.hidden = H;
      p.vocab = V;
      std::vector<int32_t> ids(K);
      std::vector<double> hot, cold;
      for (int r = 0; r < runs; ++r) {
        Bandwidth(all, big);  // evicts W2
        auto t0 = Clock::now();
        TinyCandidates(p, impls, x.data(), 1, K, ids.data(), all);
        cold.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        for (int again = 0; again < 3; ++again) {
          t0 = Clock::now();
          TinyCandidates(p, impls, x.data(), 1, K, ids.data(), all);
          hot.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        }
      }
      const double mb = q4_w2 ? static_cast<double>(V * H / 2 + 2 * 2 * V * H / kQ4Block) / 1e6
                              : static_cast<double>(V * H + 4 * V) / 1e6;
      std::printf("tiny step (%.1f MB %s W2, top-%lld of %lld): back to back %.3f ms (%.1f GB/s), after reading 1 GiB "
                  "%.3f ms (%.1f GB/s); DRAM bound %.3f ms\n",
                  mb, q4_w2 ? "q4" : "int8", (long long)K, (long long)V, Median(hot), mb / Median(hot), Median(cold),
                  mb / Median(cold), mb / Median(bw2));
    }
  }
  return 0;
}
