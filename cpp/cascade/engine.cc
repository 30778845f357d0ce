#include "cascade/engine.h"

#include <algorithm>
#include <functional>
#include <chrono>
#include <cmath>

#include "cascade/acceptance.h"
#include "util/timer.h"
#include "pjrt/errors.h"

namespace cascade {

namespace {

// Runs `fn` and returns its milliseconds without the time `model` spent compiling programs
// (first use of a shape): stage times and the cost model measure execution, not compilation.
template <typename Fn>
double TimedExecution(const DecoderModel& model, double& compile_sink, Fn&& fn) {
  const double compiled_before = model.compile_ms();
  const auto start = Clock::now();
  fn();
  const double compiled = model.compile_ms() - compiled_before;
  compile_sink += compiled;
  return std::max(0.0, MsSince(start) - compiled);
}

// Adds the time of a scope to a counter.
class StageTimer {
 public:
  // `also` (optional) receives the same milliseconds (e.g. the cost model's observation).
  explicit StageTimer(double& sink, std::function<void(double)> also = {})
      : sink_(sink), also_(std::move(also)), start_(Clock::now()) {}
  ~StageTimer() {
    const double ms = MsSince(start_);
    sink_ += ms;
    if (also_) also_(ms);
  }

 private:
  double& sink_;
  std::function<void(double)> also_;
  Clock::time_point start_;
};

// Runs tokens[from .. to-1] at their own positions in chunks whose sizes are powers of two (<= 64),
// so a handful of compiled shapes serve every length; `each` sees every chunk's result.
template <typename Each>
void ForwardInChunks(DecoderModel& model, const std::vector<int32_t>& tokens, int64_t from, int64_t to,
                     const HeadSpec& head, Each&& each) {
  while (from < to) {
    int64_t chunk = 64;
    while (chunk > to - from) chunk /= 2;
    std::vector<int32_t> part(tokens.begin() + from, tokens.begin() + from + chunk);
    each(model.Forward(part, from, head));
    from += chunk;
  }
}

std::vector<int32_t> ArgmaxOf(DecoderModel& model, const std::vector<int32_t>& tokens) {
  std::vector<int32_t> out;
  ForwardInChunks(model, tokens, 0, static_cast<int64_t>(tokens.size()), {HeadKind::kArgmax, 0},
                  [&](const ForwardResult& r) { out.insert(out.end(), r.argmax.begin(), r.argmax.end()); });
  return out;
}

}  // namespace

const char* DecodeModeName(DecodeMode mode) {
  switch (mode) {
    case DecodeMode::kTarget: return "target";
    case DecodeMode::kSpeculative: return "speculative";
    case DecodeMode::kCascade: return "cascade";
    case DecodeMode::kAuto: return "auto";
  }
  return "?";
}

ModelWeights TruncateLayers(const ModelWeights& model, int64_t layers) {
  if (layers < 1 || layers > model.config.num_layers)
    throw InvalidArgumentError("draft layers must be in 1.." + std::to_string(model.config.num_layers) + ", got " +
                               std::to_string(layers));
  ModelWeights out;
  out.config = model.config;
  out.config.num_layers = layers;
  out.source = model.source + " (first " + std::to_string(layers) + " layers)";
  for (const auto& [name, tensor] : model.tensors) {
    const std::string prefix = "model.layers.";
    if (name.compare(0, prefix.size(), prefix) == 0) {
      const int64_t layer = std::stoll(name.substr(prefix.size()));
      if (layer >= layers) continue;
    }
    out.tensors.emplace(name, tensor);
  }
  return out;
}

int64_t StepBytes(const ModelConfig& config, WeightPrecision precision) {
  int64_t bytes = 0;
  const std::vector<WeightParam> layout = WeightParamLayout(config, precision);
  const bool own_head = std::any_of(layout.begin(), layout.end(), [](const WeightParam& p) { return p.tensor == "lm_head.weight"; });
  for (const WeightParam& p : layout) {
    // The embedding is gathered (a few rows a step), unless it is the head too.
    if (p.tensor == "model.embed_tokens.weight" && own_head) continue;
    int64_t n = DTypeSize(p.dtype);
    for (int64_t dim : p.dims) n *= dim;
    bytes += n;
  }
  return bytes;
}

struct CascadeEngine::Sequence {
  std::vector<int32_t> tokens;  // prompt + generated
  size_t prompt_length = 0;
  int64_t target_valid = 0;  // cache slots 0..valid-1 hold these tokens' keys/values
  int64_t draft_valid = 0;
  bool done = false;
};

CascadeEngine::CascadeEngine(std::shared_ptr<Client> client, const ModelWeights& target,
                             const std::optional<ModelWeights>& draft, const EngineOptions& options)
    : client_(std::move(client)), options_(options) {
  if (draft && draft->config.vocab_size != target.config.vocab_size)
    throw InvalidArgumentError("the draft " + draft->source + " has a vocabulary of " +
                               std::to_string(draft->config.vocab_size) + " tokens; the target's (" + target.source +
                               ") has " + std::to_string(target.config.vocab_size));
  DecoderOptions t;
  t.precision = options.target_precision;
  t.max_context = options.max_context;
  t.device_index = options.device_index;
  t.replicas = options.devices;
  t.kv_dtype = options.target_kv_dtype;
  target_ = std::make_unique<DecoderModel>(client_, target, t);

  DecoderOptions d = t;
  d.replicas = 1;
  d.precision = options.draft_precision;
  // A draft's cache stays f32 on the CPU plugin whatever its weights (model/decoder.h DefaultKvDtype).
  d.kv_dtype = options.draft_kv_dtype.value_or(DefaultKvDtype(*client_, d.precision, d.matmul, /*draft=*/true));
  if (draft) {
    draft_ = std::make_unique<DecoderModel>(client_, *draft, d);
  } else {
    const int64_t layers = options.draft_layers > 0 ? options.draft_layers : ChooseDraftLayers(target, d);
    draft_ = std::make_unique<DecoderModel>(client_, TruncateLayers(target, layers), d);
  }
  draft_proposer_ = std::make_unique<DraftProposer>(*draft_);
}

namespace {
// What a step costs, as bytes of a memory-bound read: StepBytes, except for kBF16Q4, whose
// expansion of its blocks is bound by instructions rather than its 97 MB: decoder_bench measured
// its decode(1) at ~0.55 of the dense bf16 step (6.1 / 11.2 ms, docs/bench/decoder.md, session 15).
double StepCostBytes(const ModelConfig& config, WeightPrecision precision) {
  if (precision == WeightPrecision::kBF16Q4) return 0.55 * static_cast<double>(StepBytes(config, WeightPrecision::kBF16));
  return static_cast<double>(StepBytes(config, precision));
}
}  // namespace

int64_t CascadeEngine::ChooseDraftLayers(const ModelWeights& target, const DecoderOptions& draft_options) {
  const ModelConfig& c = target.config;
  if (c.num_layers <= 2) return 1;
  // Calibration text: the target's own greedy continuation of a few tokens (what it will verify).
  const int64_t length = std::min<int64_t>(48, options_.max_context);
  std::vector<int32_t> text = {static_cast<int32_t>(c.bos_token_id >= 0 ? c.bos_token_id : 1)};
  std::vector<double> decode_ms;
  ForwardResult r = target_->Forward(text, 0, {HeadKind::kArgmax, 0});
  while (static_cast<int64_t>(text.size()) < length) {
    text.push_back(r.argmax[0]);
    const auto start = Clock::now();
    const double compiled = target_->compile_ms();
    r = target_->Forward({text.back()}, static_cast<int64_t>(text.size()) - 1, {HeadKind::kArgmax, 0});
    const double ms = MsSince(start) - (target_->compile_ms() - compiled);
    decode_ms.push_back(ms);
    for (CostModel& cost : costs_) cost.ObserveDecode(ms);
  }
  const std::vector<int32_t> input(text.begin(), text.end() - 1);
  const std::vector<int32_t> target_argmax = ArgmaxOf(*target_, input);
  // A step's cost ~ the weight bytes it reads (decoding is memory-bound: W / BW of the cost
  // model), at each model's precision (StepCostBytes).
  const double full = StepCostBytes(c, target_->options().precision);
  std::vector<int64_t> candidates;
  for (double share : {0.125, 0.25, 0.5, 0.75}) {
    const int64_t n = std::max<int64_t>(1, static_cast<int64_t>(std::lround(share * c.num_layers)));
    if (std::find(candidates.begin(), candidates.end(), n) == candidates.end() && n < c.num_layers) candidates.push_back(n);
  }
  // All layers at a lower precision: the design's INT8 draft, of the target itself (top-1 agreement
  // ~98% on SmolLM2, docs/precision.md), where no smaller model of the family exists.
  if (StepCostBytes(c, draft_options.precision) < full) candidates.push_back(c.num_layers);
  const int64_t L = std::max<int64_t>(1, options_.proposal_length);
  int64_t best = candidates.front();
  double best_speedup = -1;
  for (int64_t n : candidates) {
    DecoderModel draft(client_, TruncateLayers(target, n), draft_options);
    const std::vector<int32_t> draft_argmax = ArgmaxOf(draft, input);
    int64_t agree = 0;
    for (size_t i = 0; i < draft_argmax.size(); ++i) agree += draft_argmax[i] == target_argmax[i];
    DraftCandidate cand;
    cand.layers = n;
    cand.agreement = static_cast<double>(agree) / static_cast<double>(draft_argmax.size());
    cand.relative_cost = StepCostBytes(draft.config(), draft_options.precision) / full;
    const double c_decode = cost_->decode_ms() > 0 ? cost_->decode_ms() : 1.0;
    const double throughput = CostModel::ExpectedTokens(cand.agreement, L) /
                              (L * cand.relative_cost * c_decode + cost_->VerifyMs(L));
    cand.predicted_speedup = throughput * c_decode;
    draft_candidates_.push_back(cand);
    if (cand.predicted_speedup > best_speedup) {
      best_speedup = cand.predicted_speedup;
      best = n;
    }
  }
  return best;
}

// Feeds tokens[valid .. upto-1] so the cache holds them. Chunks are powers of two (<= 64), so a
// handful of compiled shapes serve every prompt length.
void CascadeEngine::CatchUp(DecoderModel& model, int64_t& valid, const std::vector<int32_t>& tokens, int64_t upto,
                           const GenerateOptions& options, const char* stage) {
  CheckInterrupted(options, stage);
  ForwardInChunks(model, tokens, valid, upto, {HeadKind::kArgmax, 0},
                  [&](const ForwardResult&) { CheckInterrupted(options, stage); });
  valid = std::max(valid, upto);
}

// Target-only: one decode of the last committed token, then sample from p.
void CascadeEngine::TargetOnlyStep(Sequence& seq, const GenerateOptions& options, Rng& rng, GenerationStats& stats) {
  const int64_t n = static_cast<int64_t>(seq.tokens.size());
  CheckInterrupted(options, "decode");
  ForwardResult r;
  {
    const double ms = TimedExecution(*target_, stats.times.compile_ms,
                                     [&] { r = target_->Forward({seq.tokens.back()}, n - 1, HeadFor(options.sampling)); });
    stats.times.target_ms += ms;
    cost_->ObserveDecode(ms);
  }
  ++stats.steps_target;
  StageTimer host(stats.times.host_ms, [&](double ms) { cost_->ObserveHost(StepKind::kTarget, 1, ms); });
  ++stats.target_calls;
  seq.target_valid = n;
  const size_t vocab = static_cast<size_t>(target_->config().vocab_size);
  const int32_t y =
      ArgmaxOnly(options.sampling)
          ? r.argmax[0]
          : Choose(Transform(r.logits.data(), vocab, options.sampling, nullptr, TokenHistory(seq.tokens)), options.sampling, rng);
  seq.tokens.push_back(y);
}

void CascadeEngine::Warmup(int64_t proposal_length, int64_t candidates,
                          const std::function<void(int64_t, int64_t)>& progress) {
  std::vector<std::pair<DecoderModel*, std::pair<int64_t, HeadSpec>>> shapes = {
      {target_.get(), {1, {HeadKind::kArgmax, 0}}},
      {target_.get(), {proposal_length + 1, {HeadKind::kArgmax, 0}}},
      {draft_.get(), {1, {HeadKind::kArgmax, 0}}},
  };
  // Sampling generations' rounds (EngineOptions::sampled_proposal_length) verify another length.
  if (options_.sampled_proposal_length != proposal_length)
    shapes.push_back({target_.get(), {options_.sampled_proposal_length + 1, {HeadKind::kArgmax, 0}}});
  // A round's first draft call feeds 2 tokens (SpeculativeStep); with lookahead guesses a call
  // feeds up to kLookaheadTokens more.
  for (int64_t T = 2; T <= 2 + kLookaheadTokens; ++T) shapes.push_back({draft_.get(), {T, {HeadKind::kArgmax, 0}}});
  if (has_tiny_) {
    HeadSpec cand{HeadKind::kCandidates, std::min<int64_t>(candidates, draft_->config().vocab_size)};
    for (int64_t T = 1; T <= 2 + kLookaheadTokens; ++T) shapes.push_back({draft_.get(), {T, cand}});
    cand.full_argmax = true;
    shapes.push_back({draft_.get(), {1, cand}});
  }
  const int64_t total = static_cast<int64_t>(shapes.size());
  for (int64_t i = 0; i < total; ++i) {
    shapes[i].first->Prepare(shapes[i].second.first, shapes[i].second.second);
    if (progress) progress(i + 1, total);
  }
}

void CascadeEngine::SetTiny(const TinyWeights& tiny) {
  CheckTinyFitsDraft(tiny, draft_->config());
  draft_->SetTiny(tiny);
  tiny_draft_proposer_ = std::make_unique<TinyDraftProposer>(*draft_);
  has_tiny_ = true;
}

// A round's acceptance, into the statistics and the cost model: of a chain of `length`, the
// target examined the accepted positions and the first rejected one.
void CascadeEngine::RecordAcceptance(StepKind kind, int64_t proposed, int64_t length, int64_t accepted,
                                     GenerationStats& stats) {
  const int64_t examined = std::min<int64_t>(accepted + 1, length);
  stats.proposed += proposed;
  stats.attempted += examined;
  stats.accepted += accepted;
  cost_->ObserveAcceptance(kind, examined, accepted);
  if (static_cast<int64_t>(stats.position_attempted.size()) < length) {
    stats.position_attempted.resize(length, 0);
    stats.position_accepted.resize(length, 0);
  }
  for (int64_t j = 0; j < examined; ++j) {
    ++stats.position_attempted[j];
    if (j < accepted) ++stats.position_accepted[j];
  }
}

// Several branches: the first tokens are B draws from q~_1 (T = 0: its B best), each branch is
// continued by the draft as a chain, and the target verifies the whole tree in one call
// ([last, branch 0, branch 1, ...] with a tree mask: a token sees the root and its own branch).
void CascadeEngine::BranchingStep(Sequence& seq, const GenerateOptions& options, Proposer& proposer, int64_t length,
                                  Rng& rng, GenerationStats& stats) {
  const int64_t n = static_cast<int64_t>(seq.tokens.size());
  const size_t vocab = static_cast<size_t>(target_->config().vocab_size);
  const bool greedy = options.sampling.greedy();
  const int64_t B = options.branches;
  const int64_t per_replica = (B + options_.devices - 1) / options_.devices;
  const int64_t L = std::min<int64_t>(length, (options_.max_context - n) / per_replica);
  if (L < 1) return SpeculativeStep(seq, options, proposer, std::min<int64_t>(length, options_.max_context - n), rng, stats);
  const ProposeContext context{options, rng, stats, seq.tokens};

  // 1. Propose: the shared first draft step, then each branch's chain.
  std::vector<Proposal> branches(static_cast<size_t>(B));
  double draft_ms = 0;
  {
    std::vector<int32_t> ranked;
    TokenDist q1;
    draft_ms += TimedExecution(*draft_, stats.times.compile_ms, [&] {
      q1 = proposer.Distribution(seq.tokens.back(), n - 1, context, &ranked, static_cast<size_t>(B));
    });
    for (int64_t b = 0; b < B; ++b) {
      Proposal& p = branches[b];
      // T = 0: the B best distinct first tokens (fewer if q~_1 has fewer); T > 0: i.i.d. draws.
      const int32_t first = greedy ? ranked[std::min<size_t>(b, ranked.size() - 1)] : q1.Sample(rng);
      p.tokens.push_back(first);
      if (!greedy) p.q.push_back(q1);
      int32_t input = first;
      for (int64_t j = 1; j < L; ++j) {
        int32_t x = -1;
        draft_ms += TimedExecution(*draft_, stats.times.compile_ms,
                                   [&] { x = proposer.Propose({input}, n - 1 + j, context, p); });
        p.tokens.push_back(x);
        input = x;
      }
    }
  }
  stats.times.draft_ms += draft_ms;
  ++(proposer.kind() == StepKind::kCascade ? stats.steps_cascade : stats.steps_speculative);
  stats.length_sum += L;

  // 2. Verify the tree in one target call: replica d gets the root and branches
  //    [d * per, (d + 1) * per) (pmap style; a replica short of branches repeats one, ignored).
  const int64_t D = target_->replicas();
  const int64_t per = (B + D - 1) / D;
  const int64_t T = 1 + per * L;
  std::vector<DecoderModel::Shard> shards(static_cast<size_t>(D));
  for (int64_t d = 0; d < D; ++d) {
    DecoderModel::Shard& shard = shards[d];
    shard.tokens = {seq.tokens.back()};
    ForwardInputs& tree = shard.inputs;
    tree.tree_mask.assign(static_cast<size_t>(T * T), 0);
    tree.position_offsets.assign(static_cast<size_t>(T), 0);
    tree.tree_mask[0] = 1;
    for (int64_t i = 0; i < per; ++i) {
      const int64_t b = std::min(d * per + i, B - 1);
      for (int64_t j = 0; j < L; ++j) {
        const int64_t node = 1 + i * L + j;
        shard.tokens.push_back(branches[b].tokens[j]);
        tree.position_offsets[node] = static_cast<int32_t>(j + 1);
        tree.tree_mask[node * T + 0] = 1;
        for (int64_t k = 0; k <= j; ++k) tree.tree_mask[node * T + 1 + i * L + k] = 1;
      }
    }
  }
  std::vector<ForwardResult> v;
  CheckInterrupted(options, "verify");
  const double ms = TimedExecution(*target_, stats.times.compile_ms,
                                   [&] { v = target_->ForwardSharded(shards, n - 1, HeadFor(options.sampling)); });
  stats.times.target_ms += ms;
  cost_->ObserveVerify(T, ms);
  ++stats.target_calls;

  // 3. Accept: p at branch b position j is the output of the root (j = 0) or of node (b, j-1) on
  //    the replica that verified branch b.
  StageTimer host(stats.times.host_ms, [&](double ms) { cost_->ObserveHost(proposer.kind(), L + 1, ms); });
  auto replica_of = [&](size_t b) -> const ForwardResult& { return v[b / static_cast<size_t>(per)]; };
  auto node_of = [&](size_t b, size_t j) -> size_t {
    return j == 0 ? 0 : 1 + (b % static_cast<size_t>(per)) * static_cast<size_t>(L) + (j - 1);
  };
  // p at (b, j) is transformed in branch b's own context: the committed tokens and x_b1..x_bj-1.
  auto target_dist = [&](size_t b, size_t j) {
    return Transform(replica_of(b).logits.data() + node_of(b, j) * vocab, vocab, options.sampling, nullptr,
                     TokenHistory(seq.tokens, branches[b].tokens.data(), j));
  };
  Verdict verdict;
  if (greedy) {
    std::vector<std::vector<int32_t>> tokens, target_argmax;
    for (int64_t b = 0; b < B; ++b) {
      tokens.push_back(branches[b].tokens);
      std::vector<int32_t> am;
      for (int64_t j = 0; j <= L; ++j)
        am.push_back(ArgmaxOnly(options.sampling) ? replica_of(b).argmax[node_of(b, j)] : target_dist(b, j).Argmax());
      target_argmax.push_back(am);
    }
    verdict = VerifyGreedy(tokens, target_argmax);
  } else {
    verdict = VerifySampled(branches, target_dist, rng);
  }
  const int64_t k = static_cast<int64_t>(verdict.accepted);
  RecordAcceptance(proposer.kind(), B * L, L, k, stats);

  // 4. Commit. Branch 0 sits in the target's cache slots n.. contiguously; any other accepted
  //    branch is re-fed by the next round's catch-up (its slots are not contiguous). The draft's
  //    cache holds the last branch it ran.
  const Proposal& chosen = branches[verdict.branch];
  seq.tokens.insert(seq.tokens.end(), chosen.tokens.begin(), chosen.tokens.begin() + k);
  seq.tokens.push_back(verdict.next);
  seq.target_valid = verdict.branch == 0 && D == 1 ? n + k : n;
  seq.draft_valid = verdict.branch == static_cast<size_t>(B - 1) ? std::min(n - 1 + L, n + k) : n;
}

// Draft -> target: propose L tokens with the draft, verify them in one target call, accept.
void CascadeEngine::SpeculativeStep(Sequence& seq, const GenerateOptions& options, Proposer& proposer, int64_t length,
                                    Rng& rng, GenerationStats& stats) {
  const int64_t n = static_cast<int64_t>(seq.tokens.size());
  const size_t vocab = static_cast<size_t>(target_->config().vocab_size);
  const bool greedy = options.sampling.greedy();
  // Room in the cache for the verify block [last, x_1..x_L].
  const int64_t L = std::min<int64_t>(length, options_.max_context - n);
  if (L < 1) return TargetOnlyStep(seq, options, rng, stats);

  // 1. Propose: L draft steps (each with the tiny's candidates in cascade mode) from the last
  //    committed token.
  //    The first draft call also feeds what the draft has not seen of the last round (the main
  //    loop leaves it one token: the last accepted proposal before the bonus token).
  Proposal proposal;
  const ProposeContext context{options, rng, stats, seq.tokens};
  const int64_t seen = std::min(seq.draft_valid, n - 1);
  std::vector<int32_t> inputs(seq.tokens.begin() + seen, seq.tokens.end());
  int64_t position = seen;
  // Every call but the last may look ahead (the next round starts from the target's tokens). The
  // cost model takes the round's draft time per proposal: a step computed ahead costs nothing.
  ProposeContext chain = context;
  double round_ms = 0;
  for (int64_t j = 0; j < L; ++j) {
    int32_t x = -1;
    chain.lookahead = std::min<int64_t>(kLookaheadTokens, L - 1 - j);
    round_ms += TimedExecution(*draft_, stats.times.compile_ms,
                               [&] { x = proposer.Propose(inputs, position, chain, proposal); });
    proposal.tokens.push_back(x);
    position += static_cast<int64_t>(inputs.size());
    inputs = {x};
  }
  stats.times.draft_ms += round_ms;
  cost_->ObserveDraftStep(proposer.kind(), round_ms / static_cast<double>(L));
  ++(proposer.kind() == StepKind::kCascade ? stats.steps_cascade : stats.steps_speculative);
  stats.length_sum += L;
  seq.draft_valid = n - 1 + L;  // holds [last, x_1..x_{L-1}]

  // 2. Verify: one target call over [last, x_1..x_L] gives p_1..p_{L+1}.
  std::vector<int32_t> block = {seq.tokens.back()};
  block.insert(block.end(), proposal.tokens.begin(), proposal.tokens.end());
  ForwardResult v;
  CheckInterrupted(options, "verify");
  {
    const double ms = TimedExecution(*target_, stats.times.compile_ms,
                                     [&] { v = target_->Forward(block, n - 1, HeadFor(options.sampling)); });
    stats.times.target_ms += ms;
    cost_->ObserveVerify(L + 1, ms);
  }
  ++stats.target_calls;

  // 3. Accept.
  StageTimer host(stats.times.host_ms, [&](double ms) { cost_->ObserveHost(proposer.kind(), L + 1, ms); });
  // p_j is transformed in the context it is used in: the committed tokens and x_1..x_j-1.
  auto target_dist = [&](size_t, size_t j) {
    return Transform(v.logits.data() + j * vocab, vocab, options.sampling, nullptr,
                     TokenHistory(seq.tokens, proposal.tokens.data(), j));
  };
  Verdict verdict;
  if (greedy) {
    std::vector<int32_t> target_argmax = v.argmax;
    if (!ArgmaxOnly(options.sampling)) {
      target_argmax.clear();
      for (int64_t j = 0; j <= L; ++j) target_argmax.push_back(target_dist(0, static_cast<size_t>(j)).Argmax());
    }
    verdict = VerifyGreedy({proposal.tokens}, {target_argmax});
  } else {
    verdict = VerifySampled({proposal}, target_dist, rng);
  }
  RecordAcceptance(proposer.kind(), L, L, static_cast<int64_t>(verdict.accepted), stats);

  // 4. Commit: the accepted prefix and the target's token. The caches keep what matches.
  const int64_t k = static_cast<int64_t>(verdict.accepted);
  seq.tokens.insert(seq.tokens.end(), proposal.tokens.begin(), proposal.tokens.begin() + k);
  seq.tokens.push_back(verdict.next);
  seq.target_valid = n + k;
  seq.draft_valid = std::min(seq.draft_valid, n + k);
}

CascadeEngine::ResidentSequence& CascadeEngine::Activate(int64_t id) {
  ResidentSequence& current = sequences_[active_sequence_];
  if (target_->cache_version() != target_version_) current.target_valid = 0;
  if (draft_->cache_version() != draft_version_) current.draft_valid = 0;
  if (id != active_sequence_) {
    ResidentSequence& next = sequences_[id];  // (std::map: references survive the insertion)
    if (next.target_cache.empty()) {
      // It needs caches of its own: new ones while under the limit, else the least recently used
      // sequence's (which then starts from scratch next time).
      int64_t holding = 1;  // the active sequence's, inside the models
      ResidentSequence* lru = nullptr;
      for (auto& [key, s] : sequences_) {
        if (s.target_cache.empty()) continue;
        ++holding;
        if (!lru || s.last_used < lru->last_used) lru = &s;
      }
      if (holding >= std::max<int64_t>(1, options_.max_sequences)) {
        ResidentSequence& victim = lru ? *lru : current;
        victim.tokens.clear();
        victim.target_valid = victim.draft_valid = 0;
        if (!lru) {
          // A limit of one: the new sequence takes over the models' caches as they are.
          active_sequence_ = id;
          target_version_ = target_->cache_version();
          draft_version_ = draft_->cache_version();
          return next;
        }
        next.target_cache = std::move(victim.target_cache);
        next.draft_cache = std::move(victim.draft_cache);
        victim.target_cache.clear();
        victim.draft_cache.clear();
      }
    }
    target_->SwapCache(next.target_cache);
    draft_->SwapCache(next.draft_cache);
    current.target_cache = std::move(next.target_cache);
    current.draft_cache = std::move(next.draft_cache);
    next.target_cache.clear();
    next.draft_cache.clear();
    active_sequence_ = id;
  }
  target_version_ = target_->cache_version();
  draft_version_ = draft_->cache_version();
  return sequences_[id];
}

void CascadeEngine::ReleaseSequence(int64_t id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return;
  if (id == active_sequence_) {
    // Its caches are the models'; they stay there for whoever comes next, holding nothing.
    it->second.tokens.clear();
    it->second.target_valid = it->second.draft_valid = 0;
    return;
  }
  sequences_.erase(it);
}

int64_t CascadeEngine::SequenceBytes() const { return target_->cache_bytes() + draft_->cache_bytes(); }

int64_t CascadeEngine::resident_sequences() const {
  int64_t n = 1;
  for (const auto& [key, s] : sequences_)
    if (!s.target_cache.empty()) ++n;
  return n;
}

std::vector<float> CascadeEngine::TargetLogits(const std::vector<int32_t>& tokens) {
  const int64_t T = static_cast<int64_t>(tokens.size());
  if (T < 1) throw InvalidArgumentError("evaluate: no tokens");
  if (T > options_.max_context)
    throw InvalidArgumentError("evaluate: " + std::to_string(T) + " tokens do not fit the context of " +
                               std::to_string(options_.max_context));
  std::vector<float> out;
  out.reserve(static_cast<size_t>(T * target_->config().vocab_size));
  ForwardInChunks(*target_, tokens, 0, T, {HeadKind::kLogits, 0},
                  [&](const ForwardResult& r) { out.insert(out.end(), r.logits.begin(), r.logits.end()); });
  return out;
}

// The call's options with the engine's defaults filled in (one default per setting:
// EngineOptions), checked against the prompt and the models; throws InvalidArgumentError.
GenerateOptions CascadeEngine::Resolve(const std::vector<int32_t>& prompt, const GenerateOptions& requested) const {
  // What the call left unset takes the engine's defaults (one default per setting: EngineOptions).
  GenerateOptions options = requested;
  if (options.candidates == 0) options.candidates = options_.candidates;
  if (options.proposal_length == 0) {
    options.proposal_length = options.sampling.greedy() ? options_.proposal_length : options_.sampled_proposal_length;
    // The default k1 never exceeds a k0 the call asked for (k1 <= k0 is checked below).
    if (options.mode == DecodeMode::kCascade || (options.mode == DecodeMode::kAuto && has_tiny_))
      options.proposal_length = std::min(options.proposal_length, std::max<int64_t>(1, options.candidates));
  }
  // Off unless asked, auto included: its per-step L followed the acceptance estimate down at
  // T = 0.8 (L ~3 against k1 = 6) and gave up 13% of the cascade's median (session 8, bench
  // --suite modes-style runs, 64 tokens; 5% with it off).
  if (!options.dynamic_length) options.dynamic_length = false;
  ValidateSamplingParams(options.sampling, target_->config().vocab_size);
  if (prompt.empty()) throw InvalidArgumentError("the prompt has no tokens");
  if (options.max_tokens < 0) throw InvalidArgumentError("maxTokens must be >= 0");
  if (options.branches < 1 || options.branches > 16)
    throw InvalidArgumentError("branches must be in 1..16, got " + std::to_string(options.branches));
  if (options.proposal_length < 1 || options.proposal_length > 64)
    throw InvalidArgumentError("proposal length (k1) must be in 1..64, got " + std::to_string(options.proposal_length));
  const int64_t context = options_.max_context;
  if (static_cast<int64_t>(prompt.size()) >= context)
    throw InvalidArgumentError("the prompt has " + std::to_string(prompt.size()) + " tokens; the context holds " +
                               std::to_string(context) + " (room for at least one more is needed)");
  const int64_t vocab = target_->config().vocab_size;
  for (int32_t t : prompt)
    if (t < 0 || t >= vocab) throw InvalidArgumentError("prompt token id " + std::to_string(t) + " is outside the vocabulary");
  if (options.mode == DecodeMode::kCascade || (options.mode == DecodeMode::kAuto && has_tiny_)) {
    if (!has_tiny_) throw InvalidArgumentError("mode 'cascade' needs a tiny model (load one, or fit one from the draft)");
    if (options.candidates < 1 || options.candidates > vocab)
      throw InvalidArgumentError("k0 must be in 1.." + std::to_string(vocab) + ", got " + std::to_string(options.candidates));
    if (options.proposal_length > options.candidates)
      throw InvalidArgumentError("k1 (" + std::to_string(options.proposal_length) + ") must not exceed k0 (" +
                                 std::to_string(options.candidates) + ")");
  }
  return options;
}

// Reuse what the sequence's caches hold: the prompt's longest common prefix with the tokens they
// saw (keys and values depend only on the tokens before them, and every kernel computes a row the
// same in any call shape, so these entries are bit-identical to a fresh prefill's). The last
// prompt token is always fed again: its step gives the first new token.
void CascadeEngine::Resume(const ResidentSequence& resident, Sequence& seq) {
  size_t common = 0;
  const size_t limit = std::min(resident.tokens.size(), seq.prompt_length - 1);
  while (common < limit && resident.tokens[common] == seq.tokens[common]) ++common;
  seq.target_valid = std::min<int64_t>(resident.target_valid, static_cast<int64_t>(common));
  seq.draft_valid = std::min<int64_t>(resident.draft_valid, static_cast<int64_t>(common));
}

// Predicted vs measured speedup over target-only decoding, for the rounds this generation ran.
void CascadeEngine::PredictSpeedup(GenerationStats& stats) const {
  const int64_t spec_rounds = stats.steps_speculative + stats.steps_cascade;
  const int64_t rounds = stats.steps_target + spec_rounds;
  if (rounds > 0) {
    const int64_t mean_length = spec_rounds ? std::max<int64_t>(1, stats.length_sum / spec_rounds) : 0;
    stats.predicted_speedup = (stats.steps_target * 1.0 +
                               stats.steps_speculative * cost_->PredictedSpeedup(StepKind::kSpeculative, mean_length) +
                               stats.steps_cascade * cost_->PredictedSpeedup(StepKind::kCascade, mean_length)) /
                              static_cast<double>(rounds);
  }
  if (cost_->decode_ms() > 0 && stats.tokens_per_second() > 0)
    stats.measured_speedup = stats.tokens_per_second() / (1000.0 / cost_->decode_ms());
}

GenerateResult CascadeEngine::Generate(const std::vector<int32_t>& prompt, const GenerateOptions& requested) {
  const GenerateOptions options = Resolve(prompt, requested);
  const bool dynamic_length = *options.dynamic_length;
  const DecodeMode mode = options.mode;
  const int64_t context = options_.max_context;

  const auto start = Clock::now();
  cost_ = &costs_[options.sampling.greedy() ? 0 : 1];
  GenerateResult result;
  GenerationStats& stats = result.stats;
  stats.prompt_tokens = static_cast<int64_t>(prompt.size());
  stats.proposal_length = mode == DecodeMode::kTarget ? 0 : options.proposal_length;
  Rng rng(options.seed);
  Sequence seq;
  seq.tokens = prompt;
  seq.prompt_length = prompt.size();
  ResidentSequence& resident = Activate(options.sequence);
  resident.last_used = ++use_clock_;
  Resume(resident, seq);
  stats.cached_tokens = seq.target_valid;
  // However the call ends (done, aborted, failed), remember what the caches now hold.
  struct Remember {
    CascadeEngine& engine;
    ResidentSequence& resident;
    Sequence& seq;
    ~Remember() {
      resident.tokens = seq.tokens;
      resident.target_valid = std::min<int64_t>(seq.target_valid, static_cast<int64_t>(seq.tokens.size()));
      resident.draft_valid = std::min<int64_t>(seq.draft_valid, static_cast<int64_t>(seq.tokens.size()));
      engine.target_version_ = engine.target_->cache_version();
      engine.draft_version_ = engine.draft_->cache_version();
    }
  } remember{*this, resident, seq};

  std::vector<int64_t> lengths;
  for (int64_t L : {1, 2, 3, 4, 6, 8, 12, 16})
    if (L <= options.proposal_length) lengths.push_back(L);
  while (true) {
    const int64_t generated = static_cast<int64_t>(seq.tokens.size() - seq.prompt_length);
    if (generated >= options.max_tokens) {
      stats.stop_reason = "max_tokens";
      break;
    }
    if (static_cast<int64_t>(seq.tokens.size()) >= context) {
      stats.stop_reason = "context";
      break;
    }
    const int64_t n = static_cast<int64_t>(seq.tokens.size());
    (generated == 0 ? stats.times.prefill_ms : stats.times.target_ms) += TimedExecution(
        *target_, stats.times.compile_ms, [&] { CatchUp(*target_, seq.target_valid, seq.tokens, n - 1, options, generated == 0 ? "prefill" : "catch-up"); });
    const size_t before = seq.tokens.size();
    // What to run this round: the mode asked for, or (auto) what the cost model predicts fastest;
    // the proposal length fixed, or (dynamic horizon) the predicted best.
    StepKind kind = mode == DecodeMode::kTarget        ? StepKind::kTarget
                    : mode == DecodeMode::kSpeculative ? StepKind::kSpeculative
                                                       : StepKind::kCascade;
    int64_t length = options.proposal_length;
    // A drafting round first feeds the draft what it has not seen, but for one token, which the
    // chain's first draft call takes with it (SpeculativeStep).
    const int64_t draft_upto = options.branches == 1 && n - 1 - seq.draft_valid == 1 ? n - 2 : n - 1;
    if (mode == DecodeMode::kAuto) {
      RoundContext where;
      where.draft_behind = std::max<int64_t>(0, draft_upto - seq.draft_valid);
      where.tokens_left = std::min(options.max_tokens - generated, context - n);
      StepChoice choice = cost_->Choose(true, has_tiny_, lengths, where);
      kind = choice.kind;
      length = dynamic_length || choice.exploring ? choice.length : options.proposal_length;
    } else if (dynamic_length && kind != StepKind::kTarget) {
      length = cost_->BestLength(kind, lengths).length;
    }
    // A generation's first round proposes at most kFirstRoundLength, so its first tokens reach
    // the caller after a few draft steps rather than k1 of them.
    if (generated == 0) length = std::min(length, kFirstRoundLength);
    // A round gives at most length + 1 tokens: no proposals past max_tokens (the last round's
    // draft steps beyond it were wasted work, up to k1 - 1 of them).
    length = std::min(length, std::max<int64_t>(1, options.max_tokens - generated - 1));
    if (kind == StepKind::kTarget) {
      TargetOnlyStep(seq, options, rng, stats);
    } else {
      const int64_t behind = draft_upto - seq.draft_valid;
      const double catch_up_ms = TimedExecution(*draft_, stats.times.compile_ms, [&] {
        CatchUp(*draft_, seq.draft_valid, seq.tokens, draft_upto, options, generated == 0 ? "prefill" : "catch-up");
      });
      (generated == 0 ? stats.times.prefill_ms : stats.times.draft_ms) += catch_up_ms;
      cost_->ObserveCatchUp(behind, catch_up_ms);
      Proposer& proposer = kind == StepKind::kCascade ? *tiny_draft_proposer_ : *draft_proposer_;
      const int64_t samples = stats.coverage_samples, hits = stats.coverage_hits;
      if (options.branches > 1)
        BranchingStep(seq, options, proposer, length, rng, stats);
      else
        SpeculativeStep(seq, options, proposer, length, rng, stats);
      cost_->ObserveCoverage(stats.coverage_samples - samples, stats.coverage_hits - hits);
    }
    // Deliver the new tokens, cut at max_tokens and after a stop token.
    std::vector<int32_t> fresh(seq.tokens.begin() + before, seq.tokens.end());
    const int64_t room = options.max_tokens - generated;
    if (static_cast<int64_t>(fresh.size()) > room) fresh.resize(room);
    for (size_t i = 0; i < fresh.size(); ++i) {
      if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), fresh[i]) != options.stop_tokens.end()) {
        fresh.resize(i + 1);
        seq.done = true;
        stats.stop_reason = "stop_token";
        break;
      }
    }
    seq.tokens.resize(before + fresh.size());
    seq.target_valid = std::min<int64_t>(seq.target_valid, seq.tokens.size());
    seq.draft_valid = std::min<int64_t>(seq.draft_valid, seq.tokens.size());
    result.tokens.insert(result.tokens.end(), fresh.begin(), fresh.end());
    cost_->ObserveRoundTokens(static_cast<int64_t>(fresh.size()));
    if (options.on_tokens && !fresh.empty() && !options.on_tokens(fresh)) {
      stats.stop_reason = "callback";
      break;
    }
    if (seq.done) break;
  }
  stats.generated_tokens = static_cast<int64_t>(result.tokens.size());
  stats.total_ms = MsSince(start);
  PredictSpeedup(stats);
  return result;
}

}  // namespace cascade
