// Distillation of the tiny (model/tiny_training.h) on the real XLA CPU plugin: the training
// program's loss equals the host reference, its gradient (read from Adam's first moment after one
// step) equals central finite differences of that reference in every tensor, and training on a
// teacher the tiny can represent drives the loss down and the teacher's argmax into the top few.
// (Suite names start with "tiny" so `ctest -R tiny` selects them.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>

#include "hlo/builder.h"
#include "model/tiny.h"
#include "model/tiny_training.h"
#include "pjrt/errors.h"
#include "cpu_client.h"

namespace cascade {
namespace {

std::shared_ptr<Client> Cpu() { return testing::CpuClient(); }

std::vector<float> Gaussian(int64_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, scale);
  std::vector<float> out(static_cast<size_t>(n));
  for (float& v : out) v = normal(rng);
  return out;
}

class tiny_train_gradient : public ::testing::TestWithParam<int64_t> {};  // the teacher's top k (0: all)

TEST_P(tiny_train_gradient, OneStepsLossAndGradientMatchTheHostReference) {
  const int64_t d = 7, H = 5, V = 11, B = 4;
  TinyWeights t = RandomTiny(d, H, V, 3, 1.0f, TinyInput::kDraftHidden);
  const std::vector<float> x = Gaussian(B * d, 4, 1.0f), y = Gaussian(B * V, 5, 2.0f);
  TinyTrainOptions o;
  o.teacher_temperature = 1.5;
  o.teacher_top_k = GetParam();
  auto exe = Cpu()->Compile(TinyTrainStepProgram(d, H, V, B, o), CompileOptions{});
  std::vector<HostTensor> args = {t.w1, t.b1, t.ln_w, t.ln_b, t.w2, t.b2};
  for (int k = 0; k < 2; ++k)
    for (int i = 0; i < 6; ++i) args.push_back(HostTensor(DType::kF32, args[i].dims));
  args.push_back(HostTensor(DType::kF32, {B, d}, x.data(), x.size() * sizeof(float)));
  args.push_back(HostTensor(DType::kF32, {B, V}, y.data(), y.size() * sizeof(float)));
  HostTensor step(DType::kF32, {});
  step.as<float>()[0] = 1e-3f;
  args.push_back(step);
  if (o.teacher_top_k > 0) {  // each row's k-th largest y / tau
    HostTensor threshold(DType::kF32, {B});
    for (int64_t b = 0; b < B; ++b) {
      std::vector<float> row;
      for (int64_t v = 0; v < V; ++v) row.push_back(static_cast<float>(y[b * V + v] / o.teacher_temperature));
      std::sort(row.begin(), row.end(), std::greater<float>());
      threshold.as<float>()[b] = row[o.teacher_top_k - 1];
    }
    args.push_back(threshold);
  }
  const std::vector<HostTensor> out = exe->ExecuteHost({args})[0];
  ASSERT_EQ(out.size(), 19u);
  const double reference = TinyKdLoss(t, x.data(), y.data(), B, o.teacher_temperature, o.teacher_top_k);
  EXPECT_GT(reference, 0.01);
  EXPECT_NEAR(out[18].as<float>()[0], reference, 1e-5 * std::max(1.0, reference));

  // After one step from zero moments, m = (1 - beta1) g.
  TinyWeights probe = t;
  HostTensor* tensors[6] = {&probe.w1, &probe.b1, &probe.ln_w, &probe.ln_b, &probe.w2, &probe.b2};
  const char* names[6] = {"w1", "b1", "ln_w", "ln_b", "w2", "b2"};
  for (int i = 0; i < 6; ++i) {
    const float* m = out[6 + i].as<float>();
    float* w = tensors[i]->as<float>();
    for (int64_t j = 0; j < tensors[i]->element_count(); ++j) {
      const float saved = w[j];
      const float h = 1e-3f;
      w[j] = saved + h;
      const double up = TinyKdLoss(probe, x.data(), y.data(), B, o.teacher_temperature, o.teacher_top_k);
      w[j] = saved - h;
      const double down = TinyKdLoss(probe, x.data(), y.data(), B, o.teacher_temperature, o.teacher_top_k);
      w[j] = saved;
      const double numeric = (up - down) / (2.0 * h);
      const double program = m[j] / (1 - o.beta1);
      EXPECT_NEAR(program, numeric, 2e-4 + 2e-3 * std::fabs(numeric)) << names[i] << "[" << j << "]";
    }
    // The parameter moved against its gradient's sign (Adam's first step is ~step_size sign(g)).
    const float* moved = out[i].as<float>();
    const float* before = tensors[i]->as<float>();
    for (int64_t j = 0; j < tensors[i]->element_count(); ++j)
      if (std::fabs(m[j]) > 1e-6f) EXPECT_LT((moved[j] - before[j]) * m[j], 0.0f) << names[i] << "[" << j << "]";
  }
}

INSTANTIATE_TEST_SUITE_P(Teachers, tiny_train_gradient, ::testing::Values(int64_t{0}, int64_t{1}, int64_t{3}));

TEST(tiny_train, DistillationLearnsATeacherItCanRepresent) {
  // The teacher's logits are a linear map of the rows (as the draft's head is of its hidden
  // state); the tiny starts random and must learn it from minibatches.
  const int64_t d = 12, H = 24, V = 40, N = 600, heldout = 200;
  const std::vector<float> head = Gaussian(V * d, 11, 1.0f), x = Gaussian((N + heldout) * d, 12, 1.0f);
  std::vector<float> y(static_cast<size_t>((N + heldout) * V));
  for (int64_t i = 0; i < N + heldout; ++i)
    for (int64_t v = 0; v < V; ++v) {
      double a = 0;
      for (int64_t c = 0; c < d; ++c) a += head[v * d + c] * x[i * d + c];
      y[i * V + v] = static_cast<float>(a);
    }
  TinyWeights t = RandomTiny(d, H, V, 13, 1.0f, TinyInput::kDraftHidden);
  auto coverage = [&](const TinyWeights& tiny, int64_t k) {
    std::vector<int32_t> argmax;
    for (int64_t i = N; i < N + heldout; ++i)
      argmax.push_back(static_cast<int32_t>(std::max_element(&y[i * V], &y[i * V] + V) - &y[i * V]));
    const std::vector<int64_t> ranks = TinyRanksOfRows(tiny, x.data() + N * d, argmax);
    int64_t hit = 0;
    for (int64_t r : ranks) hit += r < k;
    return static_cast<double>(hit) / static_cast<double>(heldout);
  };
  const double before_loss = TinyKdLoss(t, x.data() + N * d, y.data() + N * V, heldout, 1.0);
  const double before_top3 = coverage(t, 3);
  TinyTrainOptions o;
  o.steps = 400;
  o.batch = 32;
  o.learning_rate = 1e-2;
  TinyTrainReport rep;
  int64_t calls = 0;
  TrainTinyKd(*Cpu(), t, x.data(), y.data(), N, o, [&](int64_t done, int64_t total) {
    EXPECT_EQ(done, ++calls);
    EXPECT_EQ(total, o.steps);
    return true;
  }, &rep);
  EXPECT_EQ(calls, o.steps);
  EXPECT_EQ(rep.steps, o.steps);
  EXPECT_EQ(rep.batch, 32);
  const double after_loss = TinyKdLoss(t, x.data() + N * d, y.data() + N * V, heldout, 1.0);
  const double after_top3 = coverage(t, 3);
  EXPECT_LT(rep.last_loss, 0.3 * rep.first_loss);
  EXPECT_LT(after_loss, 0.3 * before_loss) << "held-out KL " << before_loss << " -> " << after_loss;
  EXPECT_GT(after_top3, 0.9) << "held-out top-3 coverage " << before_top3 << " -> " << after_top3;
}

TEST(tiny_train, RanksProgramMatchesTheHostRanks) {
  const int64_t d = 6, H = 5, V = 30, N = 40;
  const TinyWeights t = RandomTiny(d, H, V, 21, 1.0f, TinyInput::kDraftHidden);
  const std::vector<float> x = Gaussian(N * d, 22, 1.0f);
  std::vector<int32_t> ids;
  for (int64_t n = 0; n < N; ++n) ids.push_back(static_cast<int32_t>((n * 7) % V));
  auto exe = Cpu()->Compile(TinyRanksProgram(d, H, V, N), CompileOptions{});
  const HostTensor ranks = exe->ExecuteHost({{t.w1, t.b1, t.ln_w, t.ln_b, t.w2, t.b2,
                                              HostTensor(DType::kF32, {N, d}, x.data(), x.size() * sizeof(float)),
                                              HostTensor(DType::kS32, {N}, ids.data(), ids.size() * sizeof(int32_t))}})[0][0];
  const std::vector<int64_t> host = TinyRanksOfRows(t, x.data(), ids);
  int64_t differ = 0;
  for (int64_t n = 0; n < N; ++n) differ += std::llabs(ranks.as<int32_t>()[n] - host[n]) > 0;
  EXPECT_LE(differ, 1) << "f32 logits vs the host's double accumulation may swap a near tie";
}

TEST(tiny_train, ValidationKeepsTheBestWeights) {
  const int64_t d = 12, H = 24, V = 40, N = 400, M = 100;
  const std::vector<float> head = Gaussian(V * d, 31, 1.0f), x = Gaussian((N + M) * d, 32, 1.0f);
  std::vector<float> y(static_cast<size_t>((N + M) * V));
  std::vector<int32_t> argmax;
  for (int64_t i = 0; i < N + M; ++i) {
    for (int64_t v = 0; v < V; ++v) {
      double a = 0;
      for (int64_t c = 0; c < d; ++c) a += head[v * d + c] * x[i * d + c];
      y[i * V + v] = static_cast<float>(a);
    }
    argmax.push_back(static_cast<int32_t>(std::max_element(&y[i * V], &y[i * V] + V) - &y[i * V]));
  }
  TinyValidation val{x.data() + N * d, argmax.data() + N, M, 1, 25};
  // Learning: a later step covers more than the random start and is kept.
  TinyWeights t = RandomTiny(d, H, V, 33, 1.0f, TinyInput::kDraftHidden);
  TinyTrainOptions o;
  o.steps = 200;
  o.batch = 32;
  o.learning_rate = 1e-2;
  o.teacher_top_k = 4;
  TinyTrainReport rep;
  TrainTinyKd(*Cpu(), t, x.data(), y.data(), N, o, {}, &rep, &val);
  ASSERT_EQ(rep.validation.size(), 9u);  // step 0, then every 25
  EXPECT_EQ(rep.validation.front().first, 0);
  EXPECT_EQ(rep.validation.back().first, 200);
  EXPECT_GT(rep.best_step, 0);
  double best = 0;
  for (const auto& [step, coverage] : rep.validation) best = std::max(best, coverage);
  EXPECT_GT(best, rep.validation.front().second + 0.3);
  std::vector<int32_t> held(argmax.begin() + N, argmax.end());
  const std::vector<int64_t> ranks = TinyRanksOfRows(t, x.data() + N * d, held);
  int64_t hit = 0;
  for (int64_t r : ranks) hit += r < 1;
  EXPECT_NEAR(static_cast<double>(hit) / M, best, 0.02) << "the tiny holds the best step's weights";
  // A step size that wrecks the weights: the starting weights are kept.
  TinyWeights start = RandomTiny(d, H, V, 33, 1.0f, TinyInput::kDraftHidden);
  TrainTinyKd(*Cpu(), start, x.data(), y.data(), N, o, {}, &rep);  // trained a little first
  TinyWeights kept = start;
  o.learning_rate = 5.0;
  o.steps = 50;
  TrainTinyKd(*Cpu(), kept, x.data(), y.data(), N, o, {}, &rep, &val);
  for (const auto& [step, coverage] : rep.validation) std::printf("  step %lld: coverage %.2f\n", static_cast<long long>(step), coverage);
  EXPECT_EQ(rep.best_step, 0);
  EXPECT_EQ(kept.w2.data, start.w2.data);
  EXPECT_EQ(kept.w1.data, start.w1.data);
}

TEST(tiny_train, ZeroStepsCancellationAndBadOptions) {
  const int64_t d = 4, H = 3, V = 6, N = 8;
  const std::vector<float> x = Gaussian(N * d, 1, 1.0f), y = Gaussian(N * V, 2, 1.0f);
  TinyWeights t = RandomTiny(d, H, V, 1, 1.0f, TinyInput::kDraftHidden);
  const TinyWeights before = t;
  TinyTrainOptions o;  // steps = 0: unchanged
  TrainTinyKd(*Cpu(), t, x.data(), y.data(), N, o);
  EXPECT_EQ(t.w2.data, before.w2.data);
  o.steps = 5;
  EXPECT_THROW(TrainTinyKd(*Cpu(), t, x.data(), y.data(), N, o, [](int64_t done, int64_t) { return done < 2; }),
               Error);
  for (auto bad : std::vector<std::function<void(TinyTrainOptions&)>>{
           [](TinyTrainOptions& b) { b.steps = -1; }, [](TinyTrainOptions& b) { b.batch = 0; },
           [](TinyTrainOptions& b) { b.learning_rate = 0; }, [](TinyTrainOptions& b) { b.beta2 = 1; },
           [](TinyTrainOptions& b) { b.teacher_temperature = -1; }, [](TinyTrainOptions& b) { b.teacher_top_k = -1; }}) {
    TinyTrainOptions b;
    b.steps = 1;
    bad(b);
    EXPECT_THROW(TrainTinyKd(*Cpu(), t, x.data(), y.data(), N, b), InvalidArgumentError);
  }
  EXPECT_THROW(TrainTinyKd(*Cpu(), t, x.data(), y.data(), 0, o), InvalidArgumentError);
}

}  // namespace
}  // namespace cascade
