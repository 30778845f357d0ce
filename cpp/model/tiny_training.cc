#include "model/tiny_training.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <optional>
#include <random>

#include "hlo/builder.h"
#include "pjrt/errors.h"
#include "util/timer.h"

namespace cascade {

namespace {

void CheckTrainOptions(const TinyTrainOptions& o) {
  if (o.steps < 0) throw InvalidArgumentError("tiny training: steps must be >= 0, got " + std::to_string(o.steps));
  if (o.batch < 1) throw InvalidArgumentError("tiny training: batch must be >= 1, got " + std::to_string(o.batch));
  if (!(o.learning_rate > 0) || !std::isfinite(o.learning_rate))
    throw InvalidArgumentError("tiny training: learning_rate must be a positive number");
  if (!(o.beta1 >= 0 && o.beta1 < 1) || !(o.beta2 >= 0 && o.beta2 < 1))
    throw InvalidArgumentError("tiny training: beta1 and beta2 must be in [0, 1)");
  if (!(o.epsilon > 0)) throw InvalidArgumentError("tiny training: epsilon must be positive");
  if (o.teacher_top_k < 0) throw InvalidArgumentError("tiny training: teacher_top_k must be >= 0");
  if (!(o.teacher_temperature > 0) || !std::isfinite(o.teacher_temperature))
    throw InvalidArgumentError("tiny training: teacher_temperature must be a positive number");
}

// The tiny's forward pass on x [N, d] (model/tiny.h), with what the backward pass reads.
struct TinyForward {
  hlo::Value rstd, zhat;   // LayerNorm's 1/std [N] and normalised z [N, H]
  hlo::Value active;       // pred [N, H]: where ReLU passes
  hlo::Value h, logits;    // [N, H], [N, V]
};

TinyForward EmitTinyForward(hlo::Function& f, const hlo::Value& x, const hlo::Value& w1, const hlo::Value& b1,
                            const hlo::Value& ln_w, const hlo::Value& ln_b, const hlo::Value& w2, const hlo::Value& b2) {
  const int64_t N = x.dims[0], H = w1.dims[0], V = w2.dims[0];
  auto rows = [&](const hlo::Value& r, std::vector<int64_t> dims) { return f.BroadcastInDim(r, std::move(dims), {0}); };
  auto cols = [&](const hlo::Value& c, std::vector<int64_t> dims) { return f.BroadcastInDim(c, std::move(dims), {1}); };
  const hlo::Value inv_h = f.Constant(DType::kF32, 1.0 / static_cast<double>(H), {N});
  TinyForward out;
  const hlo::Value z = f.Add(f.DotGeneral(x, w1, {}, {}, {1}, {1}), cols(b1, {N, H}));  // x W1^T + b1
  const hlo::Value zc = f.Sub(z, rows(f.Mul(f.Reduce(z, hlo::ReduceKind::kSum, {1}), inv_h), {N, H}));
  const hlo::Value var = f.Mul(f.Reduce(f.Mul(zc, zc), hlo::ReduceKind::kSum, {1}), inv_h);  // biased, as LayerNorm
  out.rstd = f.Rsqrt(f.Add(var, f.Constant(DType::kF32, kTinyLayerNormEps, {N})));
  out.zhat = f.Mul(zc, rows(out.rstd, {N, H}));
  const hlo::Value ln = f.Add(f.Mul(out.zhat, cols(ln_w, {N, H})), cols(ln_b, {N, H}));
  const hlo::Value zero = f.ScalarLike(ln, 0.0);
  out.active = f.Compare(hlo::CompareDirection::kGt, ln, zero);
  out.h = f.Select(out.active, ln, zero);  // ReLU
  out.logits = f.Add(f.DotGeneral(out.h, w2, {}, {}, {1}, {1}), cols(b2, {N, V}));  // h W2^T + b2
  return out;
}

}  // namespace

std::string TinyTrainStepProgram(int64_t d, int64_t H, int64_t V, int64_t B, const TinyTrainOptions& o) {
  CheckTrainOptions(o);
  if (d < 1 || H < 1 || V < 1 || B < 1) throw InvalidArgumentError("tiny training: sizes must be >= 1");
  const DType f32 = DType::kF32;
  hlo::Function f;
  const std::vector<std::vector<int64_t>> shapes = {{H, d}, {H}, {H}, {H}, {V, H}, {V}};
  const char* names[] = {"w1", "b1", "ln_w", "ln_b", "w2", "b2"};
  std::vector<hlo::Value> p, m, v;
  for (int i = 0; i < 6; ++i) p.push_back(f.Param(names[i], f32, shapes[i], i));
  for (int i = 0; i < 6; ++i) m.push_back(f.Param(std::string("m_") + names[i], f32, shapes[i], 6 + i));
  for (int i = 0; i < 6; ++i) v.push_back(f.Param(std::string("v_") + names[i], f32, shapes[i], 12 + i));
  const hlo::Value x = f.Param("x", f32, {B, d});
  const hlo::Value y = f.Param("y", f32, {B, V});
  const hlo::Value step_size = f.Param("step_size", f32, {});
  const hlo::Value &w1 = p[0], &b1 = p[1], &ln_w = p[2], &ln_b = p[3], &w2 = p[4], &b2 = p[5];
  auto scalar = [&](const hlo::Value& like, double value) { return f.ScalarLike(like, value); };
  auto rows = [&](const hlo::Value& r, const hlo::Value& like) { return f.BroadcastLike(r, like, {0}); };  // [B] -> [B, n]
  auto cols = [&](const hlo::Value& c, const hlo::Value& like) { return f.BroadcastLike(c, like, {1}); };  // [n] -> [B, n]
  auto mean_rows = [&](const hlo::Value& a) {  // [B, n] -> [B]: mean over n
    hlo::Value s = f.Reduce(a, hlo::ReduceKind::kSum, {1});
    return f.Div(s, scalar(s, static_cast<double>(a.dims[1])));
  };

  // ---- forward (model/tiny.h) ----
  const TinyForward fwd = EmitTinyForward(f, x, w1, b1, ln_w, ln_b, w2, b2);
  const hlo::Value &rstd = fwd.rstd, &zhat = fwd.zhat, &active = fwd.active, &h = fwd.h, &logits = fwd.logits;
  const hlo::Value zero_bh = scalar(h, 0.0);
  const hlo::Value log_q = f.LogSoftmax(logits, 1);
  const hlo::Value scaled_y = o.teacher_temperature == 1.0 ? y : f.Div(y, scalar(y, o.teacher_temperature));
  hlo::Value teacher_logits = scaled_y;
  std::optional<hlo::Value> in_top;  // the teacher's top-k tokens (ties at the k-th value included)
  if (o.teacher_top_k > 0) {
    const hlo::Value threshold = f.Param("threshold", f32, {B});
    in_top = f.Compare(hlo::CompareDirection::kGe, scaled_y, rows(threshold, scaled_y));
    teacher_logits = f.Select(*in_top, scaled_y, scalar(scaled_y, -1e30));
  }
  const hlo::Value log_p = f.LogSoftmax(teacher_logits, 1);
  const hlo::Value teacher = f.Exp(log_p);  // exactly 0 outside the top k
  hlo::Value kl_terms = f.Mul(teacher, f.Sub(log_p, log_q));
  if (in_top) kl_terms = f.Select(*in_top, kl_terms, scalar(kl_terms, 0.0));
  const hlo::Value kl = f.Reduce(kl_terms, hlo::ReduceKind::kSum, {0, 1});
  const hlo::Value loss = f.Div(kl, scalar(kl, static_cast<double>(B)));

  // ---- backward ----
  const hlo::Value g_logits = f.Div(f.Sub(f.Exp(log_q), teacher), scalar(y, static_cast<double>(B)));  // (q - p) / B
  const hlo::Value g_w2 = f.DotGeneral(g_logits, h, {}, {}, {0}, {0});                // [V, H] = g^T h
  const hlo::Value g_b2 = f.Reduce(g_logits, hlo::ReduceKind::kSum, {0});
  const hlo::Value g_h = f.DotGeneral(g_logits, w2, {}, {}, {1}, {0});                // [B, H] = g W2
  const hlo::Value g_ln = f.Select(active, g_h, zero_bh);                             // through ReLU
  const hlo::Value g_ln_w = f.Reduce(f.Mul(g_ln, zhat), hlo::ReduceKind::kSum, {0});
  const hlo::Value g_ln_b = f.Reduce(g_ln, hlo::ReduceKind::kSum, {0});
  // Through the normalisation: dz = rstd (dzhat - mean(dzhat) - zhat mean(dzhat zhat)).
  const hlo::Value g_zhat = f.Mul(g_ln, cols(ln_w, g_ln));
  const hlo::Value g_z =
      f.Mul(rows(rstd, zhat), f.Sub(f.Sub(g_zhat, rows(mean_rows(g_zhat), zhat)), f.Mul(zhat, rows(mean_rows(f.Mul(g_zhat, zhat)), zhat))));
  const hlo::Value g_w1 = f.DotGeneral(g_z, x, {}, {}, {0}, {0});                     // [H, d] = dz^T x
  const hlo::Value g_b1 = f.Reduce(g_z, hlo::ReduceKind::kSum, {0});
  const hlo::Value grads[6] = {g_w1, g_b1, g_ln_w, g_ln_b, g_w2, g_b2};

  // ---- Adam (Kingma & Ba, with the bias corrections folded into step_size) ----
  std::vector<hlo::Value> new_p, new_m, new_v;
  for (int i = 0; i < 6; ++i) {
    if (i == 4 && !o.train_output) {  // W2 and its moments pass through
      new_p.push_back(p[i]);
      new_m.push_back(m[i]);
      new_v.push_back(v[i]);
      continue;
    }
    const hlo::Value& g = grads[i];
    hlo::Value mi = f.Add(f.Mul(scalar(g, o.beta1), m[i]), f.Mul(scalar(g, 1 - o.beta1), g));
    hlo::Value vi = f.Add(f.Mul(scalar(g, o.beta2), v[i]), f.Mul(scalar(g, 1 - o.beta2), f.Mul(g, g)));
    hlo::Value denom = f.Add(f.Sqrt(vi), scalar(g, o.epsilon));
    hlo::Value update = f.Mul(f.BroadcastInDim(step_size, g.dims, {}), f.Div(mi, denom));
    new_p.push_back(f.Sub(p[i], update));
    new_m.push_back(mi);
    new_v.push_back(vi);
  }
  std::vector<hlo::Value> results = new_p;
  results.insert(results.end(), new_m.begin(), new_m.end());
  results.insert(results.end(), new_v.begin(), new_v.end());
  results.push_back(loss);
  f.Return(results);
  return f.ToText();
}

std::string TinyRanksProgram(int64_t d, int64_t H, int64_t V, int64_t N) {
  if (d < 1 || H < 1 || V < 1 || N < 1) throw InvalidArgumentError("tiny training: sizes must be >= 1");
  const DType f32 = DType::kF32;
  hlo::Function f;
  const hlo::Value w1 = f.Param("w1", f32, {H, d}), b1 = f.Param("b1", f32, {H}), ln_w = f.Param("ln_w", f32, {H}),
                   ln_b = f.Param("ln_b", f32, {H}), w2 = f.Param("w2", f32, {V, H}), b2 = f.Param("b2", f32, {V});
  const hlo::Value x = f.Param("x", f32, {N, d}), ids = f.Param("ids", DType::kS32, {N});
  auto bcast = [&](const hlo::Value& v, std::vector<int64_t> dims, std::vector<int64_t> at) { return f.BroadcastInDim(v, dims, at); };
  const hlo::Value logits = EmitTinyForward(f, x, w1, b1, ln_w, ln_b, w2, b2).logits;
  const hlo::Value mine = bcast(f.TakeAlongLastDim(logits, ids), {N, V}, {0});
  const hlo::Value above = f.Compare(hlo::CompareDirection::kGt, logits, mine);
  const hlo::Value tie_before = f.And(f.Compare(hlo::CompareDirection::kEq, logits, mine),
                                      f.Compare(hlo::CompareDirection::kLt, f.Iota(DType::kS32, {N, V}, 1), bcast(ids, {N, V}, {0})));
  const hlo::Value one = f.Constant(DType::kS32, 1, {N, V}), zero = f.Constant(DType::kS32, 0, {N, V});
  const hlo::Value ahead = f.Select(f.Or(above, tie_before), one, zero);
  f.Return({f.Reduce(ahead, hlo::ReduceKind::kSum, {1})});
  return f.ToText();
}

void TrainTinyKd(Client& client, TinyWeights& t, const float* rows, const float* logits, int64_t count,
                 const TinyTrainOptions& o, const std::function<bool(int64_t, int64_t)>& progress,
                 TinyTrainReport* report, const TinyValidation* validation, const std::vector<int64_t>& use) {
  CheckTrainOptions(o);
  ValidateTiny(t);
  if (count < 1) throw InvalidArgumentError("tiny training: no training rows");
  if (!rows || !logits) throw InvalidArgumentError("tiny training: rows and logits are required");
  std::vector<int64_t> order = use;  // the rows it learns from, shuffled every epoch
  if (order.empty()) {
    order.resize(static_cast<size_t>(count));
    std::iota(order.begin(), order.end(), 0);
  }
  for (int64_t i : order)
    if (i < 0 || i >= count) throw InvalidArgumentError("tiny training: row " + std::to_string(i) + " is not among the rows");
  const int64_t used = static_cast<int64_t>(order.size());
  TinyTrainReport rep;
  rep.batch = std::min(o.batch, used);
  if (o.steps == 0) {
    if (report) *report = rep;
    return;
  }
  const int64_t d = t.input_dim, H = t.hidden, V = t.vocab, B = rep.batch;
  if (validation && (validation->count < 1 || !validation->rows || !validation->ids || validation->k < 1))
    throw InvalidArgumentError("tiny training: the validation needs rows, ids and k >= 1");
  if (validation)
    for (int64_t i = 0; i < validation->count; ++i)
      if (validation->ids[i] < 0 || validation->ids[i] >= V)
        throw InvalidArgumentError("tiny training: validation id " + std::to_string(validation->ids[i]) + " is outside the vocabulary");
  auto t0 = Clock::now();
  std::shared_ptr<LoadedExecutable> exe = client.Compile(TinyTrainStepProgram(d, H, V, B, o), CompileOptions{});
  std::shared_ptr<LoadedExecutable> ranks_exe =
      validation ? client.Compile(TinyRanksProgram(d, H, V, validation->count), CompileOptions{}) : nullptr;
  rep.compile_ms = MsSince(t0);
  t0 = Clock::now();

  // The teacher's top-k threshold per training row, once (as the program compares: f32 y / tau).
  std::vector<float> thresholds;
  if (o.teacher_top_k > 0) {
    thresholds.resize(static_cast<size_t>(count));
    std::vector<float> scaled(static_cast<size_t>(V));
    const int64_t k = std::min(o.teacher_top_k, V);
    for (int64_t i : order) {
      for (int64_t v = 0; v < V; ++v) scaled[v] = static_cast<float>(logits[i * V + v] / o.teacher_temperature);
      std::nth_element(scaled.begin(), scaled.begin() + (k - 1), scaled.end(), std::greater<float>());
      thresholds[i] = scaled[k - 1];
    }
  }

  HostTensor* params[6] = {&t.w1, &t.b1, &t.ln_w, &t.ln_b, &t.w2, &t.b2};
  std::vector<std::unique_ptr<Buffer>> state;  // params, m, v (18)
  for (int i = 0; i < 6; ++i) state.push_back(client.ToDevice(*params[i], 0));
  for (int k = 0; k < 2; ++k)
    for (int i = 0; i < 6; ++i) state.push_back(client.ToDevice(HostTensor(DType::kF32, params[i]->dims), 0));

  // Validation: coverage of the validation rows by the weights in `state`; the best are kept.
  std::unique_ptr<Buffer> val_x, val_ids;
  if (validation) {
    val_x = client.ToDevice(HostTensor(DType::kF32, {validation->count, d}, validation->rows,
                                       static_cast<size_t>(validation->count * d) * sizeof(float)),
                            0);
    val_ids = client.ToDevice(HostTensor(DType::kS32, {validation->count}, validation->ids,
                                         static_cast<size_t>(validation->count) * sizeof(int32_t)),
                              0);
    rep.validation_k = validation->k;
  }
  double best_coverage = -1;
  auto validate = [&](int64_t step) {
    std::vector<Buffer*> args;
    for (int i = 0; i < 6; ++i) args.push_back(state[i].get());
    args.push_back(val_x.get());
    args.push_back(val_ids.get());
    const HostTensor ranks = ranks_exe->Execute({args})[0][0]->ToHost();
    int64_t hit = 0;
    for (int64_t i = 0; i < validation->count; ++i) hit += ranks.as<int32_t>()[i] < validation->k;
    const double coverage = static_cast<double>(hit) / static_cast<double>(validation->count);
    rep.validation.push_back({step, coverage});
    if (coverage > best_coverage) {  // strictly: ties keep the earlier (fewer steps) weights
      best_coverage = coverage;
      rep.best_step = step;
      if (step > 0)
        for (int i = 0; i < 6; ++i) *params[i] = state[i]->ToHost();
    }
  };
  const int64_t steps_per_epoch = std::max<int64_t>(1, used / B);
  const int64_t every = validation ? (validation->every > 0 ? validation->every : steps_per_epoch) : 0;
  if (validation) validate(0);

  std::mt19937_64 rng(o.seed);
  size_t next = order.size();  // reshuffle before the first batch
  HostTensor xb(DType::kF32, {B, d}), yb(DType::kF32, {B, V}), step_size(DType::kF32, {}), tb(DType::kF32, {B});
  double last_epoch_loss = 0;
  int64_t last_epoch_steps = 0;
  for (int64_t step = 1; step <= o.steps; ++step) {
    for (int64_t b = 0; b < B; ++b) {
      if (next == order.size()) {
        std::shuffle(order.begin(), order.end(), rng);
        next = 0;
      }
      const int64_t i = order[next++];
      std::memcpy(xb.as<float>() + b * d, rows + i * d, static_cast<size_t>(d) * sizeof(float));
      std::memcpy(yb.as<float>() + b * V, logits + i * V, static_cast<size_t>(V) * sizeof(float));
      if (!thresholds.empty()) tb.as<float>()[b] = thresholds[i];
    }
    const double correction = std::sqrt(1 - std::pow(o.beta2, static_cast<double>(step))) /
                              (1 - std::pow(o.beta1, static_cast<double>(step)));
    step_size.as<float>()[0] = static_cast<float>(o.learning_rate * correction);
    std::unique_ptr<Buffer> xd = client.ToDevice(xb, 0), yd = client.ToDevice(yb, 0), sd = client.ToDevice(step_size, 0);
    std::unique_ptr<Buffer> td = thresholds.empty() ? nullptr : client.ToDevice(tb, 0);
    std::vector<Buffer*> args;
    for (auto& s : state) args.push_back(s.get());
    args.push_back(xd.get());
    args.push_back(yd.get());
    args.push_back(sd.get());
    if (td) args.push_back(td.get());
    std::vector<std::unique_ptr<Buffer>> out = std::move(exe->Execute({args})[0]);
    const double loss = out[18]->ToHost().as<float>()[0];
    if (!std::isfinite(loss)) throw Error(ErrorKind::kInternal, "tiny training: the loss is not finite at step " + std::to_string(step));
    for (int i = 0; i < 18; ++i) state[i] = std::move(out[i]);
    if (step == 1) rep.first_loss = loss;
    if (step > o.steps - steps_per_epoch) {
      last_epoch_loss += loss;
      ++last_epoch_steps;
    }
    if (validation && (step % every == 0 || step == o.steps)) validate(step);
    if (progress && !progress(step, o.steps)) throw Error(ErrorKind::kAborted, "tiny training: cancelled");
  }
  if (!validation) {
    for (int i = 0; i < 6; ++i) *params[i] = state[i]->ToHost();
    rep.best_step = o.steps;
  }
  rep.steps = o.steps;
  rep.last_loss = last_epoch_steps ? last_epoch_loss / static_cast<double>(last_epoch_steps) : rep.first_loss;
  rep.train_ms = MsSince(t0);
  if (report) *report = rep;
}

double TinyKdLoss(const TinyWeights& t, const float* rows, const float* logits, int64_t count, double tau,
                  int64_t top_k) {
  const int64_t V = t.vocab;
  double total = 0;
  std::vector<double> sorted(static_cast<size_t>(V));
  for (int64_t i = 0; i < count; ++i) {
    const std::vector<float> q = TinyLogits(t, rows + i * t.input_dim);
    const float* y = logits + i * V;
    double kth = -INFINITY;  // the teacher's tokens: y / tau >= kth
    if (top_k > 0 && top_k < V) {
      for (int64_t v = 0; v < V; ++v) sorted[v] = static_cast<float>(y[v] / tau);  // as the program's f32
      std::nth_element(sorted.begin(), sorted.begin() + (top_k - 1), sorted.end(), std::greater<double>());
      kth = sorted[top_k - 1];
    }
    auto teacher = [&](int64_t v) { return static_cast<double>(static_cast<float>(y[v] / tau)) >= kth; };
    double ymax = -INFINITY, qmax = -INFINITY;
    for (int64_t v = 0; v < V; ++v) {
      if (teacher(v)) ymax = std::max(ymax, y[v] / tau);
      qmax = std::max(qmax, static_cast<double>(q[v]));
    }
    double zy = 0, zq = 0;
    for (int64_t v = 0; v < V; ++v) {
      if (teacher(v)) zy += std::exp(y[v] / tau - ymax);
      zq += std::exp(q[v] - qmax);
    }
    const double ly = std::log(zy) + ymax, lq = std::log(zq) + qmax;
    for (int64_t v = 0; v < V; ++v) {
      if (!teacher(v)) continue;
      const double log_p = y[v] / tau - ly, log_q = q[v] - lq;
      total += std::exp(log_p) * (log_p - log_q);
    }
  }
  return total / static_cast<double>(count);
}

}  // namespace cascade
