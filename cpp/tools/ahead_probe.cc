// Measures the lever issue #14 calls vertical drafting: could a tiny propose the draft's choice
// one step AHEAD, so that a draft call also computes that guessed step (as the n-gram
// LookaheadGuess in cascade/proposer.h does) and the next step costs no call? The draft's final
// hidden state h_s is only known after the call that feeds token_s, so the guess for the token
// after token_s must come from [h_{s-1}; E(token_s)] (the state before token_s, and token_s's
// input embedding): a tiny of input 2d, trained by distillation (TrainTinyKd) on the draft's
// distribution after token_s. Reports, on held-out sequences' generated positions, how often its
// top guess is the draft's greedy choice and the probability that a sampled choice (at
// --eval-temperature) is it; the same for LookaheadGuess, for a bigram table of the draft's
// greedy choices on the training text, and for the n-gram guess with either as the fallback
// (docs/how-the-cascade-works.md, "Session 26").
//
//   ahead_probe [--model PATH (default: the cached SmolLM2-135M-Instruct-Q4_1.gguf)]
//               [--positions 8000] [--seq-len 256] [--temperature 0.8 (the text's; 0 greedy)]
//               [--eval-temperature 0.8] [--steps 2000 (0: no tiny)] [--batch 128] [--lr 1e-3]
//               [--hidden 256] [--kd-top-k 0] --prompt-ids "1,2,3;4,5"
// Prompt ids: e.g. tinyFitPrompts (src/cascade/tiny-fit-prompts.ts) rendered with the model's
// tokenizer. The draft is the target's q4 copy (all layers). The last 20% of the sequences are
// held out; at --temperature 0 they repeat the training sequences' text (the same prompts), so
// measure on sampled text. Holds every step's logits twice (~3.2 GB at 8000 positions).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "cascade/proposer.h"
#include "model/decoder.h"
#include "model/loader.h"
#include "model/tiny.h"
#include "model/tiny_training.h"
#include "pjrt/api.h"
#include "pjrt/client.h"
#include "pjrt/plugin_locator.h"
#include "util/timer.h"

using namespace cascade;

int main(int argc, char** argv) {
  const char* home = std::getenv("HOME");
  std::string model_path = std::string(home ? home : ".") + "/.cache/cascade-xla/models/SmolLM2-135M-Instruct-Q4_1.gguf";
  int64_t positions = 8000, seq_len = 256, hidden = 256;
  double temperature = 0.8, eval_t = 0.8;
  TinyTrainOptions to;
  to.steps = 2000;
  to.learning_rate = 1e-3;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--model") model_path = v;
    else if (a == "--positions") positions = std::stoll(v);
    else if (a == "--seq-len") seq_len = std::stoll(v);
    else if (a == "--temperature") temperature = std::stod(v);
    else if (a == "--eval-temperature") eval_t = std::stod(v);
    else if (a == "--steps") to.steps = std::stoll(v);
    else if (a == "--batch") to.batch = std::stoll(v);
    else if (a == "--lr") to.learning_rate = std::stod(v);
    else if (a == "--hidden") hidden = std::stoll(v);
    else if (a == "--kd-top-k") to.teacher_top_k = std::stoll(v);
    else if (a == "--prompt-ids") {  // "1,2,3;4,5": each sequence starts from one, in turn
      std::stringstream all(v);
      for (std::string one; std::getline(all, one, ';');) {
        prompts.emplace_back();
        std::stringstream ss(one);
        for (std::string item; std::getline(ss, item, ',');) prompts.back().push_back(std::stoi(item));
      }
    }
  }
  if (prompts.empty()) {
    std::fprintf(stderr, "ahead_probe: --prompt-ids is required (chat-formatted prompts as token ids)\n");
    return 2;
  }
  try {
    ModelWeights full = LoadModel(model_path);
    ClientOptions co;
    co.cpu_device_count = 1;
    auto client = Client::Create(Api::Load(LocatePlugin("cpu")), co);
    DecoderOptions o;
    o.precision = WeightPrecision::kQ4;
    o.max_context = seq_len + 8;
    DecoderModel draft(client, full, o);
    const int64_t d = full.config.hidden_size, V = full.config.vocab_size;
    HostTensor E = TinyInputEmbeddings(full, WeightPrecision::kQ4);

    // Generate: per step the sequence, input token, hidden state, logits.
    std::vector<int32_t> seq_of, pos_of, token_of, argmax_of, prompt_len_of;
    std::vector<float> hid, logit;
    hid.reserve(positions * d);
    logit.reserve(positions * V);
    std::mt19937_64 rng(1);
    std::uniform_real_distribution<double> uni(0, 1);
    std::vector<double> probs(V);
    auto t0 = Clock::now();
    int32_t seq = 0;
    for (int64_t step = 0; step < positions; ++seq) {
      const auto& p = prompts[seq % prompts.size()];
      int32_t token = p[0];
      for (int64_t pos = 0; pos < seq_len && step < positions; ++pos, ++step) {
        ForwardResult r = draft.Forward({token}, pos, {HeadKind::kHidden, 0});
        const float* y = r.logits.data();
        const int32_t am = static_cast<int32_t>(std::max_element(y, y + V) - y);
        seq_of.push_back(seq);
        pos_of.push_back(pos);
        token_of.push_back(token);
        argmax_of.push_back(am);
        prompt_len_of.push_back(static_cast<int32_t>(p.size()));
        hid.insert(hid.end(), r.hidden.begin(), r.hidden.end());
        logit.insert(logit.end(), y, y + V);
        int32_t next = am;
        if (temperature > 0) {
          double z = 0;
          for (int64_t v = 0; v < V; ++v) z += (probs[v] = std::exp((y[v] - y[am]) / temperature));
          double u = uni(rng) * z;
          next = static_cast<int32_t>(V - 1);
          for (int64_t v = 0; v < V; ++v)
            if ((u -= probs[v]) <= 0) {
              next = static_cast<int32_t>(v);
              break;
            }
        }
        token = pos + 1 < static_cast<int64_t>(p.size()) ? p[pos + 1] : next;
      }
    }
    const int64_t n = static_cast<int64_t>(seq_of.size());
    std::printf("generated %lld steps in %d sequences, %.0f ms\n", (long long)n, seq, MsSince(t0));

    // Ahead rows: step s with a predecessor in its sequence: x = [h_{s-1}; E(token_s)], teacher y_s.
    const int32_t heldout_from = static_cast<int32_t>(seq * 0.8);
    std::vector<float> rows, ys;
    std::vector<int32_t> ids;
    std::vector<int64_t> step_of_row, train_rows;
    std::vector<float> vrows;
    std::vector<int32_t> vids;
    for (int64_t s = 1; s < n; ++s) {
      if (seq_of[s] != seq_of[s - 1]) continue;
      const int64_t r = static_cast<int64_t>(step_of_row.size());
      step_of_row.push_back(s);
      rows.insert(rows.end(), hid.begin() + (s - 1) * d, hid.begin() + s * d);
      rows.insert(rows.end(), E.as<float>() + token_of[s] * d, E.as<float>() + (token_of[s] + 1) * d);
      ys.insert(ys.end(), logit.begin() + s * V, logit.begin() + (s + 1) * V);
      ids.push_back(argmax_of[s]);
      if (seq_of[s] < heldout_from) train_rows.push_back(r);
    }
    const int64_t R = static_cast<int64_t>(step_of_row.size());
    // Early stopping watches every 10th training row (top-1 agreement, TinyValidation k = 1).
    TinyWeights tiny = RandomTiny(2 * d, hidden, V, 3, 1.0f, TinyInput::kDraftHidden);
    std::vector<int64_t> use;
    for (size_t i = 0; i < train_rows.size(); ++i) {
      const int64_t r = train_rows[i];
      if (i % 10 == 9) {
        vrows.insert(vrows.end(), rows.begin() + r * 2 * d, rows.begin() + (r + 1) * 2 * d);
        vids.push_back(ids[r]);
      } else {
        use.push_back(r);
      }
    }
    TinyValidation val{vrows.data(), vids.data(), static_cast<int64_t>(vids.size()), 1, 250};
    TinyTrainReport rep;
    auto t1 = Clock::now();
    if (to.steps > 0) TrainTinyKd(*client, tiny, rows.data(), ys.data(), R, to, {}, &rep, &val, use);
    // Bigram table from the training sequences: token -> the draft's most frequent choice after it.
    std::unordered_map<int32_t, std::unordered_map<int32_t, int>> follow;
    for (int64_t r : train_rows) ++follow[token_of[step_of_row[r]]][argmax_of[step_of_row[r]]];
    std::unordered_map<int32_t, int32_t> bigram;
    for (const auto& [tok, after] : follow) {
      int best = -1;
      int32_t choice = 0;
      for (const auto& [next, count] : after)
        if (count > best || (count == best && next < choice)) {
          best = count;
          choice = next;
        }
      bigram[tok] = choice;
    }
    if (to.steps > 0)
      std::printf("trained %lld steps on %zu rows in %.0f ms; kept step %lld; KL %.3f -> %.3f\n", (long long)to.steps, use.size(),
                MsSince(t1), (long long)rep.best_step, rep.first_loss, rep.last_loss);
    for (auto& [st, cov] : rep.validation) std::printf("  val step %lld top1 %.3f\n", (long long)st, cov);

    // Held-out evaluation over generated positions (after the prompt): hit rates of the tiny's top
    // guess and of LookaheadGuess, greedy (== the draft's argmax) and sampled at eval_t (q(guess)).
    double bi_g = 0, bi_s = 0, ngbi_g = 0, ngbi_s = 0;
    int64_t bi_have = 0;
    double tiny_g = 0, tiny_s = 0, ng_g = 0, ng_s = 0, both_g = 0, both_s = 0, top2_g = 0;
    int64_t count = 0, ng_have = 0;
    for (int64_t r = 0; r < R; ++r) {
      const int64_t s = step_of_row[r];
      if (seq_of[s] < heldout_from || pos_of[s] < prompt_len_of[s]) continue;
      const float* y = logit.data() + s * V;
      auto q = [&](int32_t g) {
        const float m = y[argmax_of[s]];
        double z = 0;
        for (int64_t v = 0; v < V; ++v) z += std::exp((y[v] - m) / eval_t);
        return std::exp((y[g] - m) / eval_t) / z;
      };
      std::vector<float> lg = TinyLogits(tiny, rows.data() + r * 2 * d);
      std::vector<int32_t> top = TopKIds(lg.data(), V, 2);
      // n-gram guess from the committed text up to token_s (the engine: committed ++ proposed).
      std::vector<int32_t> committed;
      for (int64_t k = s; k >= 0 && seq_of[k] == seq_of[s]; --k) committed.insert(committed.begin(), token_of[k]);
      std::vector<int32_t> ng = LookaheadGuess(committed, {}, 1);
      ++count;
      const double qt = q(top[0]);
      tiny_g += top[0] == argmax_of[s];
      tiny_s += qt;
      top2_g += top[0] == argmax_of[s] || top[1] == argmax_of[s];
      const auto bit = bigram.find(token_of[s]);
      if (bit != bigram.end()) {
        ++bi_have;
        bi_g += bit->second == argmax_of[s];
        bi_s += q(bit->second);
      }
      const bool bigram_only = ng.empty() && bit != bigram.end();
      if (!ng.empty() || bigram_only) {
        const int32_t guess = ng.empty() ? bit->second : ng[0];
        ngbi_g += guess == argmax_of[s];
        ngbi_s += q(guess);
      }
      if (!ng.empty()) {
        ++ng_have;
        ng_g += ng[0] == argmax_of[s];
        ng_s += q(ng[0]);
        both_g += ng[0] == argmax_of[s];
        both_s += q(ng[0]);
      } else {
        both_g += top[0] == argmax_of[s];
        both_s += qt;
      }
    }
    std::printf("held-out generated positions %lld\n", (long long)count);
    if (to.steps > 0)
      std::printf("tiny ahead: greedy hit %.3f (top-2 %.3f), sampled(T=%.2f) hit %.3f\n", tiny_g / count, top2_g / count, eval_t,
                tiny_s / count);
    std::printf("n-gram: guess at %.3f of positions, greedy hit %.3f of those, sampled %.3f\n", (double)ng_have / count,
                ng_g / std::max<int64_t>(1, ng_have), ng_s / std::max<int64_t>(1, ng_have));
    std::printf("bigram: at %.3f, greedy hit %.3f of those, sampled %.3f; n-gram else bigram: greedy %.3f sampled %.3f\n",
                (double)bi_have / count, bi_g / std::max<int64_t>(1, bi_have), bi_s / std::max<int64_t>(1, bi_have), ngbi_g / count, ngbi_s / count);
    if (to.steps > 0) std::printf("n-gram else tiny: greedy hit %.3f, sampled %.3f\n", both_g / count, both_s / count);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ahead_probe: %s\n", e.what());
    return 1;
  }
  return 0;
}
