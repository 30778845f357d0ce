// Resident sequences (GenerateOptions::sequence): a prompt that extends what a sequence's caches
// hold prefills only the new tokens, and the output is exactly what a fresh engine produces, in
// every mode, greedy and sampled; sequences keep their own caches, the least recently used one
// gives its caches up beyond EngineOptions::max_sequences, and a model used by someone else
// (evaluate) or an aborted call leaves nothing stale behind.
#include <gtest/gtest.h>

#include "cascade/engine.h"
#include "cpu_client.h"
#include "model/tiny.h"
#include "random_model.h"

namespace cascade {
namespace {

EngineOptions Options(int64_t max_sequences = 4) {
  EngineOptions o;
  o.target_precision = WeightPrecision::kF32;
  o.draft_precision = WeightPrecision::kInt8;
  o.max_context = 128;
  o.draft_layers = 1;
  o.max_sequences = max_sequences;
  return o;
}

const ModelWeights& Target() {
  static const ModelWeights w = testing::SmallRandomModel(testing::SmallLlama(false), 21, 1.0f);
  return w;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

GenerateOptions Greedy(DecodeMode mode, int64_t max_tokens, int64_t sequence = 0) {
  GenerateOptions g;
  g.mode = mode;
  g.max_tokens = max_tokens;
  g.proposal_length = 4;
  g.sequence = sequence;
  return g;
}

TEST(SequenceReuse, ASecondTurnPrefillsOnlyItsNewTokensAndMatchesAFreshEngine) {
  for (DecodeMode mode : {DecodeMode::kTarget, DecodeMode::kSpeculative}) {
    for (double temperature : {0.0, 0.9}) {
      CascadeEngine reused(testing::CpuClient(), Target(), std::nullopt, Options());
      GenerateOptions g = Greedy(mode, 12);
      g.sampling.temperature = temperature;
      g.seed = 7;
      const std::vector<int32_t> first = {5, 17, 3, 88, 41, 9, 60};
      const GenerateResult turn1 = reused.Generate(first, g);
      EXPECT_EQ(turn1.stats.cached_tokens, 0);
      // The next turn: the whole history plus new tokens, as a chat would send it.
      const std::vector<int32_t> second = Concat(Concat(first, turn1.tokens), {12, 30, 2});
      const GenerateResult turn2 = reused.Generate(second, g);
      CascadeEngine fresh(testing::CpuClient(), Target(), std::nullopt, Options());
      const GenerateResult reference = fresh.Generate(second, g);
      EXPECT_EQ(turn2.tokens, reference.tokens) << DecodeModeName(mode) << " T=" << temperature;
      EXPECT_EQ(reference.stats.cached_tokens, 0);
      // The target's cache holds the first turn's prompt and all but (at most) its last tokens.
      EXPECT_GE(turn2.stats.cached_tokens, static_cast<int64_t>(first.size()));
      EXPECT_LE(turn2.stats.cached_tokens, static_cast<int64_t>(first.size() + turn1.tokens.size()));
      // The same prompt again: everything but its last token comes from the cache.
      const GenerateResult again = reused.Generate(second, g);
      EXPECT_EQ(again.tokens, reference.tokens);
      EXPECT_EQ(again.stats.cached_tokens, static_cast<int64_t>(second.size()) - 1);
      // A prompt that diverges early reuses only the common prefix.
      std::vector<int32_t> diverged = second;
      diverged[3] = 4;
      const GenerateResult other = reused.Generate(diverged, g);
      EXPECT_EQ(other.stats.cached_tokens, 3);
      CascadeEngine fresh2(testing::CpuClient(), Target(), std::nullopt, Options());
      EXPECT_EQ(other.tokens, fresh2.Generate(diverged, g).tokens);
    }
  }
}

TEST(SequenceReuse, TheCascadeReusesTheCachesToo) {
  CascadeEngine reused(testing::CpuClient(), Target(), std::nullopt, Options());
  CascadeEngine fresh(testing::CpuClient(), Target(), std::nullopt, Options());
  const ModelConfig& c = reused.draft_config();
  const TinyWeights tiny = RandomTiny(c.hidden_size, 16, c.vocab_size, 3);
  reused.SetTiny(tiny);
  fresh.SetTiny(tiny);
  GenerateOptions g = Greedy(DecodeMode::kCascade, 10);
  g.candidates = 16;
  const std::vector<int32_t> first = {8, 1, 44, 2};
  const GenerateResult turn1 = reused.Generate(first, g);
  const std::vector<int32_t> second = Concat(Concat(first, turn1.tokens), {19});
  const GenerateResult turn2 = reused.Generate(second, g);
  EXPECT_GT(turn2.stats.cached_tokens, static_cast<int64_t>(first.size()) - 1);
  EXPECT_EQ(turn2.tokens, fresh.Generate(second, g).tokens);
}

TEST(SequenceReuse, SequencesKeepTheirOwnCachesAndTheLeastRecentlyUsedGivesThemUp) {
  CascadeEngine engine(testing::CpuClient(), Target(), std::nullopt, Options(/*max_sequences=*/2));
  CascadeEngine fresh(testing::CpuClient(), Target(), std::nullopt, Options());
  const std::vector<std::vector<int32_t>> prompts = {{3, 9, 27, 81, 50}, {70, 60, 50, 40, 30, 20}, {11, 22, 33}};
  std::vector<std::vector<int32_t>> histories;
  for (int64_t id = 1; id <= 2; ++id) {
    const GenerateResult r = engine.Generate(prompts[id - 1], Greedy(DecodeMode::kSpeculative, 6, id));
    histories.push_back(Concat(prompts[id - 1], r.tokens));
  }
  EXPECT_EQ(engine.resident_sequences(), 2);
  // Interleaved second turns: each sequence finds its own history.
  for (int64_t id : {1, 2}) {
    const std::vector<int32_t> next = Concat(histories[id - 1], {5});
    const GenerateResult r = engine.Generate(next, Greedy(DecodeMode::kSpeculative, 6, id));
    EXPECT_GE(r.stats.cached_tokens, static_cast<int64_t>(prompts[id - 1].size())) << "sequence " << id;
    EXPECT_EQ(r.tokens, fresh.Generate(next, Greedy(DecodeMode::kSpeculative, 6)).tokens);
    histories[id - 1] = Concat(next, r.tokens);
  }
  // A third sequence at a limit of two: sequence 1 (least recently used) gives its caches up.
  engine.Generate(prompts[2], Greedy(DecodeMode::kSpeculative, 4, 3));
  EXPECT_EQ(engine.resident_sequences(), 2);
  const GenerateResult evicted = engine.Generate(Concat(histories[0], {6}), Greedy(DecodeMode::kSpeculative, 4, 1));
  EXPECT_EQ(evicted.stats.cached_tokens, 0);
  EXPECT_EQ(evicted.tokens, fresh.Generate(Concat(histories[0], {6}), Greedy(DecodeMode::kSpeculative, 4)).tokens);
  // Sequence 2 was the least recently used at that point: gone too. Sequence 3 is kept.
  const GenerateResult kept = engine.Generate(Concat(prompts[2], {1}), Greedy(DecodeMode::kSpeculative, 4, 3));
  EXPECT_EQ(kept.stats.cached_tokens, static_cast<int64_t>(prompts[2].size()));
  // Released: its next call starts empty.
  engine.ReleaseSequence(3);
  const GenerateResult released = engine.Generate(Concat(prompts[2], {1}), Greedy(DecodeMode::kSpeculative, 4, 3));
  EXPECT_EQ(released.stats.cached_tokens, 0);
  EXPECT_EQ(released.tokens, kept.tokens);
}

TEST(SequenceReuse, EvaluateAndAbortedCallsLeaveNothingStale) {
  CascadeEngine engine(testing::CpuClient(), Target(), std::nullopt, Options());
  CascadeEngine fresh(testing::CpuClient(), Target(), std::nullopt, Options());
  const std::vector<int32_t> prompt = {31, 41, 59, 26, 53, 58, 97 % 90};
  const GenerateResult first = engine.Generate(prompt, Greedy(DecodeMode::kSpeculative, 8));
  // evaluate() runs the target from slot 0 over other tokens: the sequence's target cache is stale.
  engine.TargetLogits({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  const std::vector<int32_t> next = Concat(prompt, first.tokens);
  const GenerateResult after = engine.Generate(next, Greedy(DecodeMode::kSpeculative, 8));
  EXPECT_EQ(after.stats.cached_tokens, 0);
  EXPECT_EQ(after.tokens, fresh.Generate(next, Greedy(DecodeMode::kSpeculative, 8)).tokens);
  // Aborted in the middle of a generation: what the caches hold so far is still used, exactly.
  GenerateOptions stop = Greedy(DecodeMode::kSpeculative, 40);
  int polls = 0;
  stop.interrupted = [&] { return ++polls > 6; };
  const std::vector<int32_t> longer = Concat(next, after.tokens);
  EXPECT_THROW(engine.Generate(longer, stop), Error);
  const GenerateResult resumed = engine.Generate(longer, Greedy(DecodeMode::kSpeculative, 12));
  EXPECT_GT(resumed.stats.cached_tokens, 0);
  EXPECT_EQ(resumed.tokens, fresh.Generate(longer, Greedy(DecodeMode::kSpeculative, 12)).tokens);
}

}  // namespace
}  // namespace cascade
