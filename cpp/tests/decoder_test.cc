// The StableHLO builder, the decoder programs and DecoderModel against the real XLA CPU plugin,
// checked against a naive C++ reference forward written here from the same ModelWeights.
// (Suite names start with "decoder" so `ctest -R decoder` selects them.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "hlo/builder.h"
#include "model/decoder.h"
#include "model/matmul_mode.h"
#include "model/programs.h"
#include "pjrt/api.h"
#include "pjrt/client.h"
#include "pjrt/errors.h"
#include "pjrt/plugin_locator.h"
#include "logit_distance.h"

namespace cascade {
namespace {

std::shared_ptr<Client> Cpu() {
  static std::shared_ptr<Client> client = [] {
    ClientOptions options;
    options.cpu_device_count = 1;
    return Client::Create(Api::Load(LocatePlugin("cpu")), options);
  }();
  return client;
}

HostTensor F32(std::vector<int64_t> dims, const std::vector<float>& v) {
  return HostTensor(DType::kF32, std::move(dims), v.data(), v.size() * 4);
}
HostTensor S32(std::vector<int64_t> dims, const std::vector<int32_t>& v) {
  return HostTensor(DType::kS32, std::move(dims), v.data(), v.size() * 4);
}
std::vector<float> Floats(const HostTensor& t) { return {t.as<float>(), t.as<float>() + t.element_count()}; }
std::vector<int32_t> Ints(const HostTensor& t) { return {t.as<int32_t>(), t.as<int32_t>() + t.element_count()}; }

// ------------------------------------------------------------------------------------ builder

TEST(decoder_builder, OpsComputeWhatTheySay) {
  hlo::Function f;
  auto x = f.Param("x", DType::kF32, {2, 5});
  auto table = f.Param("table", DType::kF32, {4, 3});
  auto ids = f.Param("ids", DType::kS32, {3});
  auto cache = f.Param("cache", DType::kF32, {2, 6}, 0);
  auto pos = f.Param("pos", DType::kS32, {});
  auto zero = f.Constant(DType::kS32, 0);
  auto upd = f.DynamicUpdateSlice(cache, f.Constant(DType::kF32, 7, {2, 2}), {zero, pos});
  auto top = f.TopK(x, 2);
  f.Return({upd, f.Argmax(x, 1), top.first, top.second, f.GatherRows(table, ids), f.Softmax(x, 1),
            f.LogSumExp(x, 1), f.TakeAlongLastDim(x, f.ConstantS32({2}, {4, 0})),
            f.DynamicSlice(cache, {zero, pos}, {1, 3}), f.Reduce(x, hlo::ReduceKind::kSum, {0}),
            f.RmsNorm(x, f.ConstantF32({5}, {1, 1, 1, 1, 2}), 0.0, false)});
  auto exe = Cpu()->Compile(f.ToText(), {1});
  std::vector<float> xs = {1, 5, 3, 5, -2, 0.5f, -1, 2, 0, 9};
  std::vector<float> tab = {0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32};
  std::vector<float> c(12);
  std::iota(c.begin(), c.end(), 100.0f);
  auto out = exe->ExecuteHost({{F32({2, 5}, xs), F32({4, 3}, tab), S32({3}, {3, 0, 2}), F32({2, 6}, c), S32({}, {3})}})[0];
  EXPECT_EQ(Floats(out[0]), (std::vector<float>{100, 101, 102, 7, 7, 105, 106, 107, 108, 7, 7, 111}));
  EXPECT_EQ(Ints(out[1]), (std::vector<int32_t>{1, 4})) << "first index wins ties";
  EXPECT_EQ(Floats(out[2]), (std::vector<float>{5, 5, 9, 2}));
  EXPECT_EQ(Ints(out[3]), (std::vector<int32_t>{1, 3, 4, 2}));
  EXPECT_EQ(Floats(out[4]), (std::vector<float>{30, 31, 32, 0, 1, 2, 20, 21, 22}));
  auto sm = Floats(out[5]);
  auto lse = Floats(out[6]);
  for (int r = 0; r < 2; ++r) {
    double z = 0;
    for (int i = 0; i < 5; ++i) z += std::exp(xs[r * 5 + i]);
    EXPECT_NEAR(lse[r], std::log(z), 1e-5);
    for (int i = 0; i < 5; ++i) EXPECT_NEAR(sm[r * 5 + i], std::exp(xs[r * 5 + i]) / z, 1e-6);
  }
  EXPECT_EQ(Floats(out[7]), (std::vector<float>{-2, 0.5f}));
  EXPECT_EQ(Floats(out[8]), (std::vector<float>{103, 104, 105}));
  EXPECT_EQ(Floats(out[9]), (std::vector<float>{1.5f, 4, 5, 5, 7}));
  auto rn = Floats(out[10]);
  double ms = (1 + 25 + 9 + 25 + 4) / 5.0;
  EXPECT_NEAR(rn[4], -2 * 2 / std::sqrt(ms), 1e-5);
}

TEST(decoder_builder, RejectsMisuseInCpp) {
  hlo::Function f;
  auto a = f.Param("a", DType::kF32, {2, 3});
  auto b = f.Param("b", DType::kF32, {3, 2});
  auto i = f.Param("i", DType::kS32, {2});
  EXPECT_THROW(f.Add(a, b), InvalidArgumentError);
  EXPECT_THROW(f.Add(a, f.Convert(a, DType::kBF16)), InvalidArgumentError);
  EXPECT_THROW(f.DotGeneral(a, a, {}, {}, {1}, {1 + 1}), InvalidArgumentError);
  EXPECT_THROW(f.DotGeneral(a, b, {}, {}, {1}, {1}), InvalidArgumentError);  // 3 vs 2
  EXPECT_NO_THROW(f.DotGeneral(a, b, {}, {}, {1}, {0}));
  EXPECT_THROW(f.DotGeneral(a, f.Convert(b, DType::kBF16), {}, {}, {1}, {0}), InvalidArgumentError);
  EXPECT_THROW(f.Reshape(a, {4}), InvalidArgumentError);
  EXPECT_THROW(f.Transpose(a, {0, 0}), InvalidArgumentError);
  EXPECT_THROW(f.BroadcastInDim(a, {2, 4}, {0, 1}), InvalidArgumentError);
  EXPECT_THROW(f.Slice(a, {0, 2}, {2, 4}), InvalidArgumentError);
  EXPECT_THROW(f.DynamicSlice(a, {i, i}, {1, 1}), InvalidArgumentError);  // non-scalar start
  EXPECT_THROW(f.Exp(i), InvalidArgumentError);
  EXPECT_THROW(f.TopK(a, 4), InvalidArgumentError);
  EXPECT_THROW(f.Select(f.Compare(hlo::CompareDirection::kLt, i, i), a, a), InvalidArgumentError);
  EXPECT_THROW(f.GatherRows(a, f.Convert(i, DType::kF32)), InvalidArgumentError);
  EXPECT_THROW(f.Concatenate({a, b}, 0), InvalidArgumentError);
  EXPECT_THROW(f.ToText(), InvalidArgumentError);  // no Return yet
  hlo::Function g;
  auto p = g.Param("p", DType::kF32, {2}, 1);
  EXPECT_THROW(g.Return({p}), InvalidArgumentError);  // aliased with a result that does not exist
}

// ------------------------------------------------------------------------------------ models

ModelConfig TinyLlama(bool tied = true) {
  ModelConfig c;
  c.family = ModelFamily::kLlama;
  c.vocab_size = 97;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.context_length = 64;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  c.tied_embeddings = tied;
  return c;
}

ModelConfig TinyGemma() {
  ModelConfig c = TinyLlama();
  c.family = ModelFamily::kGemma;
  c.num_heads = 4;
  c.num_kv_heads = 1;  // MQA
  c.head_dim = 24;     // != d / heads
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 500;
  return c;
}

ModelWeights RandomWeights(const ModelConfig& c, uint32_t seed) {
  std::mt19937 rng(seed);
  ModelWeights w;
  w.config = c;
  w.source = "random";
  for (const WeightParam& p : WeightParamLayout(c, WeightPrecision::kF32)) {
    std::vector<int64_t> dims = p.dims;  // canonical [out, in]
    if (p.transposed) std::swap(dims[0], dims[1]);
    HostTensor t(DType::kF32, dims);
    std::normal_distribution<float> n(0, 1);
    float* v = t.as<float>();
    const int64_t count = t.element_count();
    if (p.dims.size() == 1) {  // norms: near 1 for llama (w), near 0 for gemma (1 + w)
      for (int64_t i = 0; i < count; ++i) v[i] = (c.family == ModelFamily::kGemma ? 0.f : 1.f) + 0.1f * n(rng);
    } else {
      float scale = p.tensor == "model.embed_tokens.weight" ? (c.family == ModelFamily::kGemma ? 0.1f : 0.5f)
                                                            : 1.0f / std::sqrt(static_cast<float>(dims[1]));
      for (int64_t i = 0; i < count; ++i) v[i] = scale * n(rng);
    }
    w.tensors[p.tensor] = std::move(t);
  }
  return w;
}

// Naive f32-weights, double-accumulation reference forward with its own KV cache.
class Reference {
 public:
  Reference(const ModelWeights& w, int64_t max_context) : w_(w), c_(w.config), C_(max_context) {
    size_t n = static_cast<size_t>(c_.num_layers * C_ * c_.num_kv_heads * c_.head_dim);
    k_.assign(n, 0);
    v_.assign(n, 0);
  }

  // Logits [T * vocab]. tree: optional [T*T] (i may attend j <= i iff tree[i*T+j] or i == j);
  // offsets: RoPE position offsets.
  std::vector<float> Forward(const std::vector<int32_t>& tokens, int64_t start, const std::vector<uint8_t>& tree = {},
                             const std::vector<int32_t>& offsets = {}) {
    const int64_t T = tokens.size(), d = c_.hidden_size, H = c_.num_heads, KV = c_.num_kv_heads, hd = c_.head_dim,
                  F = c_.intermediate_size, V = c_.vocab_size;
    const bool gemma = c_.family == ModelFamily::kGemma;
    std::vector<std::vector<double>> h(T, std::vector<double>(d));
    const float* emb = Get("model.embed_tokens.weight");
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < d; ++i)
        h[t][i] = emb[tokens[t] * d + i] * (gemma ? std::sqrt(static_cast<double>(d)) : 1.0);
    for (int64_t l = 0; l < c_.num_layers; ++l) {
      std::string p = "model.layers." + std::to_string(l) + ".";
      std::vector<std::vector<double>> q(T), k(T), v(T), attn(T, std::vector<double>(H * hd));
      for (int64_t t = 0; t < T; ++t) {
        auto x = Norm(h[t], p + "input_layernorm.weight");
        q[t] = Mat(p + "self_attn.q_proj.weight", x);
        k[t] = Mat(p + "self_attn.k_proj.weight", x);
        v[t] = Mat(p + "self_attn.v_proj.weight", x);
        int64_t position = start + (offsets.empty() ? t : offsets[t]);
        Rope(q[t], H, position);
        Rope(k[t], KV, position);
        for (int64_t i = 0; i < KV * hd; ++i) {
          k_[Slot(l, start + t) + i] = static_cast<float>(k[t][i]);
          v_[Slot(l, start + t) + i] = static_cast<float>(v[t][i]);
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t head = 0; head < H; ++head) {
          int64_t kvh = head / (H / KV);
          std::vector<double> s;
          std::vector<int64_t> slots;
          for (int64_t c = 0; c <= start + t; ++c) {
            int64_t j = c - start;
            if (j >= 0 && !tree.empty() && j != t && !tree[t * T + j]) continue;
            double dot = 0;
            for (int64_t i = 0; i < hd; ++i) dot += q[t][head * hd + i] * k_[Slot(l, c) + kvh * hd + i];
            s.push_back(dot / std::sqrt(static_cast<double>(hd)));
            slots.push_back(c);
          }
          double m = *std::max_element(s.begin(), s.end()), z = 0;
          for (double& e : s) z += (e = std::exp(e - m));
          for (size_t n = 0; n < s.size(); ++n)
            for (int64_t i = 0; i < hd; ++i) attn[t][head * hd + i] += s[n] / z * v_[Slot(l, slots[n]) + kvh * hd + i];
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        auto o = Mat(p + "self_attn.o_proj.weight", attn[t]);
        for (int64_t i = 0; i < d; ++i) h[t][i] += o[i];
        auto x = Norm(h[t], p + "post_attention_layernorm.weight");
        auto g = Mat(p + "mlp.gate_proj.weight", x), u = Mat(p + "mlp.up_proj.weight", x);
        std::vector<double> a(F);
        for (int64_t i = 0; i < F; ++i) {
          double gi = g[i];
          double act = gemma ? 0.5 * gi * (1 + std::tanh(std::sqrt(2 / M_PI) * (gi + 0.044715 * gi * gi * gi)))
                             : gi / (1 + std::exp(-gi));
          a[i] = act * u[i];
        }
        auto dn = Mat(p + "mlp.down_proj.weight", a);
        for (int64_t i = 0; i < d; ++i) h[t][i] += dn[i];
      }
    }
    std::vector<float> logits(T * V);
    for (int64_t t = 0; t < T; ++t) {
      auto x = Norm(h[t], "model.norm.weight");
      auto y = Mat(c_.tied_embeddings ? "model.embed_tokens.weight" : "lm_head.weight", x);
      for (int64_t i = 0; i < V; ++i) logits[t * V + i] = static_cast<float>(y[i]);
    }
    return logits;
  }

 private:
  const float* Get(const std::string& n) { return w_.at(n).as<float>(); }
  size_t Slot(int64_t l, int64_t c) const {
    return static_cast<size_t>((l * C_ + c) * c_.num_kv_heads * c_.head_dim);
  }
  std::vector<double> Mat(const std::string& n, const std::vector<double>& x) {
    const HostTensor& t = w_.at(n);
    const int64_t out = t.dims[0], in = t.dims[1];
    const float* m = t.as<float>();
    std::vector<double> y(out);
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t i = 0; i < in; ++i) s += m[o * in + i] * x[i];
      y[o] = s;
    }
    return y;
  }
  std::vector<double> Norm(const std::vector<double>& x, const std::string& n) {
    const float* w = Get(n);
    double ms = 0;
    for (double e : x) ms += e * e;
    double r = 1 / std::sqrt(ms / x.size() + c_.rms_norm_eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i)
      y[i] = x[i] * r * (c_.family == ModelFamily::kGemma ? 1.0 + w[i] : w[i]);
    return y;
  }
  void Rope(std::vector<double>& x, int64_t heads, int64_t pos) {
    const int64_t hd = c_.head_dim, half = hd / 2;
    for (int64_t hh = 0; hh < heads; ++hh) {
      double* v = &x[hh * hd];
      for (int64_t i = 0; i < half; ++i) {
        double a = pos / std::pow(c_.rope_theta, 2.0 * i / hd);
        double x1 = v[i], x2 = v[i + half];
        v[i] = x1 * std::cos(a) - x2 * std::sin(a);
        v[i + half] = x2 * std::cos(a) + x1 * std::sin(a);
      }
    }
  }

  const ModelWeights& w_;
  ModelConfig c_;
  int64_t C_;
  std::vector<float> k_, v_;
};

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  return testing::MaxAbsDifference(a, b);
}

std::vector<float> Row(const std::vector<float>& m, int64_t row, int64_t width) {
  return {m.begin() + row * width, m.begin() + (row + 1) * width};
}

constexpr int64_t kContext = 32;
const std::vector<int32_t> kPrompt = {5, 17, 42, 3, 96, 0, 61};

// Prefill T=7, then decode steps continuing from the device cache, against the reference.
void CheckPrefillAndDecode(const ModelConfig& config, uint32_t seed, DecoderOptions options,
                           WeightPrecision reference_precision, float tolerance, float* worst = nullptr) {
  ModelWeights w = RandomWeights(config, seed);
  ModelWeights ref_weights = EffectiveWeights(w, reference_precision);
  Reference ref(ref_weights, kContext);
  options.max_context = kContext;
  DecoderModel m(Cpu(), w, options);
  const int64_t V = config.vocab_size;
  float max_diff = MaxAbsDiff(m.Forward(kPrompt, 0).logits, ref.Forward(kPrompt, 0));
  std::vector<int32_t> next = {11, 70, 2, 33};
  for (size_t i = 0; i < next.size(); ++i) {
    auto got = m.Forward({next[i]}, kPrompt.size() + i).logits;
    ASSERT_EQ(got.size(), static_cast<size_t>(V));
    max_diff = std::max(max_diff, MaxAbsDiff(got, ref.Forward({next[i]}, kPrompt.size() + i)));
  }
  EXPECT_LE(max_diff, tolerance) << ModelFamilyName(config.family) << " " << WeightPrecisionName(options.precision);
  if (worst) *worst = max_diff;
  EXPECT_EQ(m.num_compiled(), 2u) << "prefill(7) and decode(1)";
}

TEST(decoder_llama, PrefillAndDecodeMatchReferenceF32) {
  CheckPrefillAndDecode(TinyLlama(), 1, {}, WeightPrecision::kF32, 1e-4f);
}

TEST(decoder_llama, UntiedHeadMatchesReferenceF32) {
  CheckPrefillAndDecode(TinyLlama(/*tied=*/false), 2, {}, WeightPrecision::kF32, 1e-4f);
}

TEST(decoder_gemma, MqaWideHeadsMatchReferenceF32) {
  CheckPrefillAndDecode(TinyGemma(), 3, {}, WeightPrecision::kF32, 1e-4f);
}

TEST(decoder_llama, VerifyEqualsSingleDecodesAndRollsBack) {
  ModelWeights w = RandomWeights(TinyLlama(), 4);
  DecoderOptions o;
  o.max_context = kContext;
  DecoderModel a(Cpu(), w, o), b(Cpu(), w, o);
  const int64_t V = 97, P = kPrompt.size();
  a.Forward(kPrompt, 0);
  b.Forward(kPrompt, 0);
  std::vector<int32_t> draft = {9, 8, 7, 6};
  auto verify = a.Forward(draft, P).logits;
  ASSERT_EQ(verify.size(), static_cast<size_t>(4 * V));
  for (int i = 0; i < 4; ++i)
    EXPECT_LE(MaxAbsDiff(Row(verify, i, V), b.Forward({draft[i]}, P + i).logits), 1e-5f) << "position " << i;

  // Reject after the 2nd draft token: continue at P+2 with a different token. The stale slots
  // P+2, P+3 are masked, then overwritten.
  Reference ref(w, kContext);
  ref.Forward(kPrompt, 0);
  ref.Forward({9, 8}, P);
  EXPECT_LE(MaxAbsDiff(a.Forward({50, 51}, P + 2).logits, ref.Forward({50, 51}, P + 2)), 1e-4f);
  EXPECT_LE(MaxAbsDiff(a.Forward({52}, P + 4).logits, ref.Forward({52}, P + 4)), 1e-4f);
}

TEST(decoder_llama, HeadsAgreeWithFullLogits) {
  ModelWeights w = RandomWeights(TinyLlama(), 5);
  DecoderOptions o;
  o.max_context = kContext;
  DecoderModel m(Cpu(), w, o);
  const int64_t V = 97, T = 4, K = 5, P = kPrompt.size();
  m.Forward(kPrompt, 0);
  std::vector<int32_t> block = {1, 2, 3, 4};
  // Re-running the same tokens at the same slots rewrites the same cache entries, so every head
  // sees the same state.
  auto logits = m.Forward(block, P).logits;
  auto am = m.Forward(block, P, {HeadKind::kArgmax}).argmax;
  auto top = m.Forward(block, P, {HeadKind::kTopK, K});
  ForwardInputs in;
  in.target_ids = {90, 0, 45, 7};
  auto lp = m.Forward(block, P, {HeadKind::kTokenLogprob}, in);
  for (int64_t t = 0; t < T; ++t) {
    auto row = Row(logits, t, V);
    std::vector<int32_t> order(V);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return row[x] > row[y]; });
    EXPECT_EQ(am[t], order[0]);
    EXPECT_EQ(lp.argmax[t], order[0]);
    double m0 = row[order[0]], z = 0;
    for (float e : row) z += std::exp(e - m0);
    double lse = m0 + std::log(z);
    EXPECT_NEAR(top.logsumexp[t], lse, 1e-4);
    for (int64_t j = 0; j < K; ++j) {
      EXPECT_EQ(top.topk_indices[t * K + j], order[j]) << "t=" << t << " j=" << j;
      EXPECT_NEAR(top.topk_values[t * K + j], row[order[j]], 1e-5);
    }
    EXPECT_NEAR(lp.token_logprobs[t], row[in.target_ids[t]] - lse, 1e-4);
  }
  EXPECT_EQ(m.num_compiled(), 5u);
  EXPECT_THROW(m.Forward(block, P, {HeadKind::kTokenLogprob}), InvalidArgumentError);  // no target ids
}

TEST(decoder_llama, TreeMaskVerifiesTwoBranchesAtOnce) {
  ModelWeights w = RandomWeights(TinyLlama(), 6);
  DecoderOptions o;
  o.max_context = kContext;
  DecoderModel m(Cpu(), w, o);
  const int64_t V = 97, P = kPrompt.size();
  m.Forward(kPrompt, 0);
  // Block [x, y1, y2]: y1 and y2 are alternative continuations of x (both at depth 1).
  ForwardInputs in;
  in.tree_mask = {1, 0, 0,  //
                  1, 1, 0,  //
                  1, 0, 1};
  in.position_offsets = {0, 1, 1};
  auto got = m.Forward({30, 31, 32}, P, {}, in).logits;
  for (int32_t y : {31, 32}) {
    Reference ref(w, kContext);
    ref.Forward(kPrompt, 0);
    ref.Forward({30}, P);
    auto want = ref.Forward({y}, P + 1);
    EXPECT_LE(MaxAbsDiff(Row(got, y == 31 ? 1 : 2, V), want), 1e-4f) << "branch " << y;
  }
  // A causal tree mask is plain verification.
  ForwardInputs causal;
  causal.tree_mask = {1, 0, 0, 1, 1, 0, 1, 1, 1};
  auto tree = m.Forward({30, 31, 32}, P, {}, causal).logits;
  EXPECT_LE(MaxAbsDiff(tree, m.Forward({30, 31, 32}, P).logits), 1e-5f);
}

TEST(decoder_llama, KvCacheIsDonatedAndUpdatedInPlace) {
  ModelWeights w = RandomWeights(TinyLlama(), 7);
  DecoderOptions o;
  o.max_context = kContext;
  auto client = Cpu();
  DecoderModel m(client, w, o);
  auto address = [&](const Buffer& b) {
    auto args = CASCADE_PJRT_STRUCT(PJRT_Buffer_UnsafePointer_Args);
    args.buffer = b.raw();
    PJRT_Error* e = client->api().raw()->PJRT_Buffer_UnsafePointer(&args);
    EXPECT_EQ(e, nullptr);
    return args.buffer_pointer;
  };
  uintptr_t k0 = address(m.k_cache()), v0 = address(m.v_cache());
  m.Forward(kPrompt, 0, {HeadKind::kArgmax});
  m.Forward({1}, kPrompt.size(), {HeadKind::kArgmax});
  EXPECT_EQ(address(m.k_cache()), k0) << "k cache moved: XLA copied instead of updating in place";
  EXPECT_EQ(address(m.v_cache()), v0);
  {  // a bf16 cache of the fused stack (u16 bits, model/programs.h KvCacheStorage): also in place
    DecoderOptions b = o;
    b.precision = WeightPrecision::kQ4;
    b.kv_dtype = DType::kBF16;
    DecoderModel q(client, w, b);
    ASSERT_EQ(q.k_cache().dtype(), DType::kU16);
    const uintptr_t k1 = address(q.k_cache());
    q.Forward(kPrompt, 0, {HeadKind::kArgmax});
    q.Forward({1}, kPrompt.size(), {HeadKind::kArgmax});
    EXPECT_EQ(address(q.k_cache()), k1) << "bf16 k cache moved";
    // held as u16, so the update is a plain copy of the new rows, not a convert of the whole
    // cache (XLA CPU's float normalization does that to a bf16 dynamic-update-slice)
    const std::string text = q.ProgramText(1, {HeadKind::kArgmax}, false);
    const size_t at = text.find("%k_cache: tensor<");
    ASSERT_NE(at, std::string::npos);
    const std::string type = text.substr(at, text.find('>', at) - at);
    EXPECT_NE(type.find("xui16"), std::string::npos) << type;
  }

  // The same at the program level: the caller's cache buffers are donated (deleted by PJRT).
  ProgramSpec spec;
  spec.num_tokens = 1;
  spec.max_context = kContext;
  spec.head = {HeadKind::kArgmax};
  auto exe = client->Compile(EmitDecoderProgram(w.config, spec), {1});
  std::vector<std::unique_ptr<Buffer>> bufs;
  for (auto& t : PrepareWeightParams(w, WeightPrecision::kF32)) bufs.push_back(client->ToDevice(t, 0));
  HostTensor zeros(DType::kF32, KvCacheDims(w.config, kContext));
  auto k = client->ToDevice(zeros, 0), v = client->ToDevice(zeros, 0);
  auto tok = client->ToDevice(S32({1}, {4}), 0), pos = client->ToDevice(S32({}, {0}), 0);
  std::vector<Buffer*> args;
  for (auto& b : bufs) args.push_back(b.get());
  for (Buffer* b : {k.get(), v.get(), tok.get(), pos.get()}) args.push_back(b);
  uintptr_t kaddr = address(*k);
  auto out = exe->Execute({args});
  EXPECT_TRUE(k->donated());
  EXPECT_TRUE(v->donated());
  EXPECT_FALSE(tok->donated());
  auto del = CASCADE_PJRT_STRUCT(PJRT_Buffer_IsDeleted_Args);
  del.buffer = k->raw();
  ASSERT_EQ(client->api().raw()->PJRT_Buffer_IsDeleted(&del), nullptr);
  EXPECT_TRUE(del.is_deleted);
  EXPECT_EQ(address(*out[0][0]), kaddr);
  EXPECT_THROW(k->ToHost(), InvalidArgumentError);
}

TEST(decoder_llama, RejectsBadCallsBeforeThePlugin) {
  ModelWeights w = RandomWeights(TinyLlama(), 8);
  DecoderOptions o;
  o.max_context = 8;
  DecoderModel m(Cpu(), w, o);
  EXPECT_THROW(m.Forward({}, 0), InvalidArgumentError);
  EXPECT_THROW(m.Forward({1, 2, 3}, 6), InvalidArgumentError);  // slots 6..8 exceed 8
  EXPECT_THROW(m.Forward({97}, 0), InvalidArgumentError);
  EXPECT_THROW(m.Forward({1}, -1), InvalidArgumentError);
  EXPECT_THROW(m.Forward({1}, 0, {HeadKind::kTopK, 0}), InvalidArgumentError);
  ModelWeights bad = w;
  bad.tensors.erase("model.norm.weight");
  EXPECT_THROW(DecoderModel(Cpu(), bad, o), Error);
  ModelConfig c = TinyLlama();
  c.num_kv_heads = 3;
  EXPECT_THROW(WeightParamLayout(c, WeightPrecision::kF32), InvalidArgumentError);
}

// ------------------------------------------------------------------------------------ precision

// The KV cache type a model takes by default (model/decoder.h DefaultKvDtype): on the CPU plugin
// bf16 only for bf16 weights in the fused layer stack (the plain programs update a bf16 cache by
// converting all of it), f32 for f32, int8 and q4 weights; bf16 on other plugins unless f32.
TEST(decoder_precision, DefaultKvCacheType) {
  EXPECT_EQ(DefaultKvDtype(true, true, WeightPrecision::kBF16), DType::kBF16);
  EXPECT_EQ(DefaultKvDtype(true, true, WeightPrecision::kBF16Q4), DType::kBF16);
  EXPECT_EQ(DefaultKvDtype(true, false, WeightPrecision::kBF16), DType::kF32);
  EXPECT_EQ(DefaultKvDtype(true, false, WeightPrecision::kBF16Q4), DType::kF32);
  EXPECT_EQ(DefaultKvDtype(true, true, WeightPrecision::kBF16, /*draft=*/true), DType::kF32);
  EXPECT_EQ(DefaultKvDtype(false, false, WeightPrecision::kBF16, /*draft=*/true), DType::kBF16);
  for (WeightPrecision p : {WeightPrecision::kF32, WeightPrecision::kInt8, WeightPrecision::kQ4})
    EXPECT_EQ(DefaultKvDtype(true, true, p), DType::kF32) << WeightPrecisionName(p);
  EXPECT_EQ(DefaultKvDtype(false, false, WeightPrecision::kF32), DType::kF32);
  for (WeightPrecision p : {WeightPrecision::kBF16, WeightPrecision::kInt8, WeightPrecision::kQ4})
    EXPECT_EQ(DefaultKvDtype(false, false, p), DType::kBF16) << WeightPrecisionName(p);
  ModelWeights w = RandomWeights(TinyLlama(), 7);
  auto client = Cpu();
  // (CASCADE_FFI_KERNELS=0 turns the fused stack off: then f32 in both modes.)
  const bool fused = UsesLayerArena(ChooseMatmulMode(*client, WeightPrecision::kBF16, MatmulMode::kAuto));
  for (MatmulMode mode : {MatmulMode::kAuto, MatmulMode::kUpcastWeights}) {
    DecoderOptions o;
    o.max_context = kContext;
    o.precision = WeightPrecision::kBF16;
    o.matmul = mode;
    DecoderModel m(client, w, o);
    EXPECT_EQ(m.kv_dtype(), mode == MatmulMode::kAuto && fused ? DType::kBF16 : DType::kF32)
        << "matmul mode " << static_cast<int>(mode);
  }
}

TEST(decoder_precision, Int8QuantisationIsPerOutputRow) {
  HostTensor w = F32({2, 3}, {0.5f, -1.27f, 0.01f, 0, 0, 0});
  Int8Matrix q = QuantizeInt8PerChannel(w);
  EXPECT_FLOAT_EQ(q.scales.as<float>()[0], 1.27f / 127);
  EXPECT_EQ(q.values.as<int8_t>()[0], 50);
  EXPECT_EQ(q.values.as<int8_t>()[1], -127);
  EXPECT_EQ(q.values.as<int8_t>()[2], 1);
  EXPECT_FLOAT_EQ(q.scales.as<float>()[1], 1.0f);  // all-zero row
  auto layout = WeightParamLayout(TinyLlama(false), WeightPrecision::kInt8);
  int int8 = 0, bf16 = 0;
  for (auto& p : layout) {
    int8 += p.dtype == DType::kS8;
    bf16 += p.dtype == DType::kBF16;
  }
  EXPECT_EQ(int8, 2 * 7 + 1) << "7 matrices per layer and the untied head";
  EXPECT_EQ(bf16, 1) << "the embedding";
}

// bf16 / int8 against (a) a reference on the same rounded / quantised weights (tight, with an f32
// KV cache so the only difference is arithmetic order), and (b) the f32 reference (measured
// quantisation error, with the default KV cache: bf16 for bf16 weights, f32 for int8 on the CPU plugin).
TEST(decoder_precision, BF16AndInt8MatchTheirEffectiveWeights) {
  for (ModelConfig c : {TinyLlama(), TinyLlama(false), TinyGemma()}) {
    for (WeightPrecision p : {WeightPrecision::kBF16, WeightPrecision::kInt8}) {
      for (MatmulMode mode : {MatmulMode::kUpcastWeights, MatmulMode::kBF16Activations}) {
        DecoderOptions o;
        o.precision = p;
        o.kv_dtype = DType::kF32;
        o.matmul = mode;
        // bf16 activations round each matmul input to 8 bits: only the upcast mode is exact.
        float tol = mode == MatmulMode::kUpcastWeights ? 2e-4f : 0.15f;
        float worst = 0;
        CheckPrefillAndDecode(c, 11, o, p, tol, &worst);
        std::printf("[ measured ] %s %s matmul=%s vs same-weights reference: max |dlogit| = %.3g\n",
                    ModelFamilyName(c.family), WeightPrecisionName(p),
                    mode == MatmulMode::kUpcastWeights ? "upcast" : "bf16-act", worst);
      }
    }
  }
}

TEST(decoder_precision, BF16AndInt8StayCloseToF32) {
  for (ModelConfig c : {TinyLlama(), TinyGemma()}) {
    for (WeightPrecision p : {WeightPrecision::kBF16, WeightPrecision::kInt8}) {
      DecoderOptions o;
      o.precision = p;  // the default KV cache (DefaultKvDtype)
      float worst = 0;
      // Measured max |dlogit| over prefill(7) + 4 decodes (logits span about +-10 here):
      // llama 0.11 (bf16) / 0.25 (int8), gemma 0.018 / 0.034. The bounds leave room for seeds.
      CheckPrefillAndDecode(c, 12, o, WeightPrecision::kF32, p == WeightPrecision::kBF16 ? 0.25f : 0.5f, &worst);
      std::printf("[ measured ] %s %s (%s kv) vs f32 reference: max |dlogit| = %.3g\n", ModelFamilyName(c.family),
                  WeightPrecisionName(p), DTypeName(DefaultKvDtype(*Cpu(), p)), worst);
    }
  }
}

}  // namespace
}  // namespace cascade
