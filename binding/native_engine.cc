// NativeEngine: the generation engine (cpp/cascade/engine.h) for JS. Generating runs on the thread
// pool; new tokens reach JS through a thread-safe function as they are committed; cancel() stops a
// generation at the next step.
#include "native_engine.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <atomic>
#include <chrono>
#include <memory>

#include "marshal.h"
#include "promise_worker.h"
#include "reader_gate.h"

namespace cascade::binding {

namespace {

Napi::FunctionReference* g_engine_ctor = nullptr;
// The least time between two deliveries of streamed tokens to JavaScript (Generate below).
constexpr int64_t kStreamIntervalMs = 20;

Napi::Object ConfigToJs(Napi::Env env, const ModelConfig& c) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("family", ModelFamilyName(c.family));
  o.Set("architecture", c.architecture);
  o.Set("vocabSize", static_cast<double>(c.vocab_size));
  o.Set("hiddenSize", static_cast<double>(c.hidden_size));
  o.Set("intermediateSize", static_cast<double>(c.intermediate_size));
  o.Set("layers", static_cast<double>(c.num_layers));
  o.Set("heads", static_cast<double>(c.num_heads));
  o.Set("kvHeads", static_cast<double>(c.num_kv_heads));
  o.Set("headDim", static_cast<double>(c.head_dim));
  o.Set("contextLength", static_cast<double>(c.context_length));
  o.Set("tiedEmbeddings", c.tied_embeddings);
  o.Set("bosTokenId", static_cast<double>(c.bos_token_id));
  o.Set("eosTokenId", static_cast<double>(c.eos_token_id));
  return o;
}

Napi::Object StatsToJs(Napi::Env env, const GenerationStats& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("promptTokens", static_cast<double>(s.prompt_tokens));
  o.Set("generatedTokens", static_cast<double>(s.generated_tokens));
  o.Set("cachedTokens", static_cast<double>(s.cached_tokens));
  o.Set("targetCalls", static_cast<double>(s.target_calls));
  o.Set("draftCalls", static_cast<double>(s.draft_calls));
  o.Set("proposed", static_cast<double>(s.proposed));
  o.Set("attempted", static_cast<double>(s.attempted));
  o.Set("accepted", static_cast<double>(s.accepted));
  Napi::Array per = Napi::Array::New(env, s.position_attempted.size());
  for (size_t j = 0; j < s.position_attempted.size(); ++j)
    per.Set(j, s.position_attempted[j] ? static_cast<double>(s.position_accepted[j]) / s.position_attempted[j] : 0.0);
  o.Set("positionAcceptance", per);
  Napi::Object t = Napi::Object::New(env);
  t.Set("prefill", s.times.prefill_ms);
  t.Set("tiny", s.times.tiny_ms);
  t.Set("draft", s.times.draft_ms);
  t.Set("target", s.times.target_ms);
  t.Set("host", s.times.host_ms);
  t.Set("compile", s.times.compile_ms);
  o.Set("stageMs", t);
  o.Set("totalMs", s.total_ms);
  o.Set("tau", s.tau());
  o.Set("gamma21", s.gamma21());
  o.Set("gammaTotal", s.gamma_total());
  if (s.gamma0() >= 0) o.Set("gamma0", s.gamma0());
  else o.Set("gamma0", env.Null());
  o.Set("lookaheadGuesses", static_cast<double>(s.lookahead_guesses));
  o.Set("lookaheadHits", static_cast<double>(s.lookahead_hits));
  o.Set("tokensPerSecond", s.tokens_per_second());
  o.Set("stopReason", s.stop_reason);
  o.Set("predictedSpeedup", s.predicted_speedup);
  o.Set("measuredSpeedup", s.measured_speedup >= 0 ? Napi::Value(Napi::Number::New(env, s.measured_speedup)) : env.Null());
  Napi::Object rounds = Napi::Object::New(env);
  rounds.Set("target", static_cast<double>(s.steps_target));
  rounds.Set("speculative", static_cast<double>(s.steps_speculative));
  rounds.Set("cascade", static_cast<double>(s.steps_cascade));
  o.Set("rounds", rounds);
  const int64_t spec_rounds = s.steps_speculative + s.steps_cascade;
  o.Set("meanProposalLength", spec_rounds ? static_cast<double>(s.length_sum) / spec_rounds : 0.0);
  o.Set("proposalLength", static_cast<double>(s.proposal_length));
  return o;
}

class NativeEngine : public Napi::ObjectWrap<NativeEngine> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeEngine",
                       {InstanceMethod("info", &NativeEngine::Info), InstanceMethod("generate", &NativeEngine::Generate),
                        InstanceMethod("cancel", &NativeEngine::Cancel),
                        InstanceMethod("consumed", &NativeEngine::Consumed),
                        InstanceMethod("abort", &NativeEngine::Abort),
                        InstanceMethod("evaluate", &NativeEngine::Evaluate),
                        InstanceMethod("releaseSequence", &NativeEngine::ReleaseSequence),
                        InstanceMethod("dispose", &NativeEngine::Dispose)});
  }
  explicit NativeEngine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeEngine>(info) {}
  void Attach(std::shared_ptr<CascadeEngine> engine) { engine_ = std::move(engine); }

 private:
  std::shared_ptr<CascadeEngine> Live(Napi::Env env) {
    if (!engine_) throw ToJsError(env, DisposedError("the model has been disposed"));
    return engine_;
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto engine = Live(env);
    Napi::Object o = Napi::Object::New(env);
    o.Set("target", ConfigToJs(env, engine->target_config()));
    o.Set("draft", ConfigToJs(env, engine->draft_config()));
    o.Set("targetWeightBytes", static_cast<double>(engine->target().weight_bytes()));
    o.Set("draftWeightBytes", static_cast<double>(engine->draft().weight_bytes()));
    // kBF16Q4 is the bf16 model (its arithmetic and weights, bit for bit) stored as 4-bit blocks:
    // precision 'bf16', storage 'q4-blocks'.
    const WeightPrecision tp = engine->target().options().precision;
    o.Set("targetPrecision", WeightPrecisionName(tp == WeightPrecision::kBF16Q4 ? WeightPrecision::kBF16 : tp));
    o.Set("targetStorage", tp == WeightPrecision::kBF16Q4 ? "q4-blocks" : "dense");
    o.Set("draftPrecision", WeightPrecisionName(engine->draft().options().precision));
    o.Set("targetKvCache", DTypeName(engine->target().kv_dtype()));
    o.Set("draftKvCache", DTypeName(engine->draft().kv_dtype()));
    o.Set("maxContext", static_cast<double>(engine->target().max_context()));
    o.Set("devices", static_cast<double>(engine->target().replicas()));
    o.Set("maxSequences", static_cast<double>(engine->max_sequences()));
    o.Set("hasTiny", engine->has_tiny());
    // Device memory per model (XLA CPU reports no memory stats, so these are the buffers we own).
    auto memory = [&](DecoderModel& m) {
      Napi::Object mem = Napi::Object::New(env);
      mem.Set("weightBytes", static_cast<double>(m.weight_bytes()));
      mem.Set("kvCacheBytes", static_cast<double>(m.k_cache().byte_size() + m.v_cache().byte_size()));
      mem.Set("tinyBytes", static_cast<double>(m.tiny_bytes()));
      // The bytes the upload put into 2 MiB pages (util/huge_pages.h): of the weights, of the tiny.
      mem.Set("hugePageBytes", static_cast<double>(m.huge_page_bytes()));
      mem.Set("tinyHugePageBytes", static_cast<double>(m.tiny_huge_page_bytes()));
      // The weight bytes a one-token step reads (the lookup embedding, when the head has its own
      // copy, reads a row): what the memory-bound floor of a step is measured against.
      mem.Set("stepBytes", static_cast<double>(StepBytes(m.config(), m.options().precision)));
      return mem;
    };
    Napi::Object memories = Napi::Object::New(env);
    memories.Set("target", memory(engine->target()));
    memories.Set("draft", memory(engine->draft()));
    o.Set("memory", memories);
    const auto& candidates = engine->draft_candidates();
    Napi::Array choice = Napi::Array::New(env, candidates.size());
    for (size_t i = 0; i < candidates.size(); ++i) {
      Napi::Object c = Napi::Object::New(env);
      c.Set("layers", static_cast<double>(candidates[i].layers));
      c.Set("agreement", candidates[i].agreement);
      c.Set("relativeCost", candidates[i].relative_cost);
      c.Set("predictedSpeedup", candidates[i].predicted_speedup);
      choice.Set(i, c);
    }
    o.Set("draftChoice", choice);
    return o;
  }

  // generate(prompt: Int32Array, options, onTokens?: (ids: Int32Array) => void): Promise<{ tokens, stats }>
  Napi::Value Generate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto engine = Live(env);
    auto options = std::make_shared<GenerateOptions>();
    std::vector<int32_t> prompt;
    try {
      if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsObject())
        throw InvalidArgumentError("generate(prompt: Int32Array, options: object, onTokens?)");
      Napi::TypedArray array = info[0].As<Napi::TypedArray>();
      if (array.TypedArrayType() != napi_int32_array) throw InvalidArgumentError("prompt must be an Int32Array");
      Napi::Int32Array ids = array.As<Napi::Int32Array>();
      prompt.assign(ids.Data(), ids.Data() + ids.ElementLength());
      Napi::Object o = info[1].As<Napi::Object>();
      // Every value is optional: what is missing keeps the default of the C++ options structs
      // (GenerateOptions, SamplingParams; k1/k0: the engine's), the one place defaults live.
      GenerateOptions& g = *options;
      if (!o.Get("mode").IsUndefined()) {
        const std::string mode = o.Get("mode").IsString() ? o.Get("mode").As<Napi::String>().Utf8Value() : "";
        if (mode == "target") g.mode = DecodeMode::kTarget;
        else if (mode == "speculative") g.mode = DecodeMode::kSpeculative;
        else if (mode == "cascade") g.mode = DecodeMode::kCascade;
        else if (mode == "auto") g.mode = DecodeMode::kAuto;
        else throw InvalidArgumentError("mode must be 'target', 'speculative', 'cascade' or 'auto'");
      }
      SamplingParams& sp = g.sampling;
      sp.temperature = NumberFromJs(o, "temperature", sp.temperature);
      sp.top_k = static_cast<int>(NumberFromJs(o, "topK", sp.top_k));
      sp.top_p = NumberFromJs(o, "topP", sp.top_p);
      sp.min_p = NumberFromJs(o, "minP", sp.min_p);
      sp.repeat_penalty = NumberFromJs(o, "repeatPenalty", sp.repeat_penalty);
      sp.presence_penalty = NumberFromJs(o, "presencePenalty", sp.presence_penalty);
      sp.frequency_penalty = NumberFromJs(o, "frequencyPenalty", sp.frequency_penalty);
      sp.penalty_last_n = static_cast<int64_t>(NumberFromJs(o, "penaltyLastN", static_cast<double>(sp.penalty_last_n)));
      // logitBias as two arrays: token ids (Int32Array) and their biases (Float64Array, -Infinity bans).
      Napi::Value bias_ids = o.Get("logitBiasIds");
      Napi::Value bias_values = o.Get("logitBiasValues");
      if (!bias_ids.IsUndefined() || !bias_values.IsUndefined()) {
        if (!bias_ids.IsTypedArray() || bias_ids.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
            !bias_values.IsTypedArray() || bias_values.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
            bias_ids.As<Napi::TypedArray>().ElementLength() != bias_values.As<Napi::TypedArray>().ElementLength())
          throw InvalidArgumentError("logitBiasIds (Int32Array) and logitBiasValues (Float64Array) must come together, of the same length");
        Napi::Int32Array ids = bias_ids.As<Napi::Int32Array>();
        Napi::Float64Array values = bias_values.As<Napi::Float64Array>();
        for (size_t i = 0; i < ids.ElementLength(); ++i) options->sampling.logit_bias[ids[i]] = values[i];
      }
      g.seed = static_cast<uint64_t>(NumberFromJs(o, "seed", static_cast<double>(g.seed)));
      g.max_tokens = static_cast<int64_t>(NumberFromJs(o, "maxTokens", static_cast<double>(g.max_tokens)));
      g.proposal_length = static_cast<int64_t>(NumberFromJs(o, "k1", static_cast<double>(g.proposal_length)));
      g.candidates = static_cast<int64_t>(NumberFromJs(o, "k0", static_cast<double>(g.candidates)));
      if (!o.Get("dynamicHorizon").IsUndefined()) g.dynamic_length = o.Get("dynamicHorizon").ToBoolean();
      if (!o.Get("lookahead").IsUndefined()) g.lookahead = o.Get("lookahead").ToBoolean();
      g.branches = static_cast<int64_t>(NumberFromJs(o, "branches", static_cast<double>(g.branches)));
      g.sequence = static_cast<int64_t>(NumberFromJs(o, "sequence", static_cast<double>(g.sequence)));
      options->broken_acceptance_for_testing = o.Get("brokenAcceptanceForTesting").ToBoolean();
      Napi::Value stops = o.Get("stopTokens");
      if (stops.IsTypedArray()) {
        Napi::Int32Array s = stops.As<Napi::Int32Array>();
        options->stop_tokens.assign(s.Data(), s.Data() + s.ElementLength());
      }
    } catch (const Error& e) {
      throw ToJsError(env, e);
    }
    bool expected = false;
    if (!busy_->compare_exchange_strong(expected, true))
      throw ToJsError(env, InvalidArgumentError("generate: this model is already generating (calls must be queued)"));
    cancel_->store(false);
    abort_->store(false);
    gate_->Reset();

    std::optional<Napi::ThreadSafeFunction> tsfn;
    if (info.Length() > 2 && info[2].IsFunction())
      tsfn = Napi::ThreadSafeFunction::New(env, info[2].As<Napi::Function>(), "cascade.tokens", 0, 1);
    auto cancel = cancel_;
    auto abort = abort_;
    auto busy = busy_;
    auto gate = gate_;
    options->interrupted = [abort] { return abort->load(); };
    // Tokens reach JavaScript at most every kStreamIntervalMs after the first: each delivery runs
    // JavaScript on the main thread, which on a 2-core host preempts a kernel thread of the next
    // step (target-only with one delivery a token: 5.18-5.63 ms a step, against 5.08-5.44 with
    // this; 4 alternations). Tokens held back at the end arrive with the result (Cascade's
    // reconciliation of result.tokens); a speculative round outlasts the interval anyway.
    struct Held {
      std::vector<int32_t> tokens;
      std::chrono::steady_clock::time_point last{};
      bool sent = false;
    };
    auto held = std::make_shared<Held>();
    options->on_tokens = [tsfn, cancel, abort, gate, held](const std::vector<int32_t>& fresh) {
      if (tsfn) {
        held->tokens.insert(held->tokens.end(), fresh.begin(), fresh.end());
        const auto now = std::chrono::steady_clock::now();
        if (held->sent && now - held->last < std::chrono::milliseconds(kStreamIntervalMs)) return !cancel->load();
        held->sent = true;
        held->last = now;
        auto* copy = new std::vector<int32_t>(std::move(held->tokens));
        held->tokens.clear();
        const size_t copy_size = copy->size();
        napi_status status = tsfn->NonBlockingCall(copy, [](Napi::Env env, Napi::Function fn, std::vector<int32_t>* ids) {
          Napi::Int32Array out = Napi::Int32Array::New(env, ids->size());
          std::copy(ids->begin(), ids->end(), out.Data());
          delete ids;
          fn.Call({out});
        });
        if (status != napi_ok) {
          delete copy;  // the JavaScript side is closing: nobody will read, so never wait for a reader
        } else {
          // Backpressure: a stream whose consumer stops reading pauses the generation here.
          gate->Sent(static_cast<int64_t>(copy_size));
          gate->WaitForReader(*abort);
        }
      }
      return !cancel->load();
    };
    auto result = std::make_shared<GenerateResult>();
    auto release = [tsfn, busy]() mutable {
      if (tsfn) tsfn->Release();
      busy->store(false);
    };
    return PromiseWorker::Start(
        env, "cascade.generate",
        [engine, prompt, options, result, release]() mutable {
          try {
            *result = engine->Generate(prompt, *options);
          } catch (...) {
            release();
            throw;
          }
          release();
        },
        [result](Napi::Env env) -> Napi::Value {
          Napi::Object o = Napi::Object::New(env);
          Napi::Int32Array tokens = Napi::Int32Array::New(env, result->tokens.size());
          std::copy(result->tokens.begin(), result->tokens.end(), tokens.Data());
          o.Set("tokens", tokens);
          o.Set("stats", StatsToJs(env, result->stats));
          return o;
        });
  }

  // evaluate(tokens: Int32Array): Promise<Float32Array> (target logits [T * vocab])
  Napi::Value Evaluate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto engine = Live(env);
    if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw ToJsError(env, InvalidArgumentError("evaluate(tokens: Int32Array)"));
    Napi::Int32Array ids = info[0].As<Napi::Int32Array>();
    std::vector<int32_t> tokens(ids.Data(), ids.Data() + ids.ElementLength());
    bool expected = false;
    if (!busy_->compare_exchange_strong(expected, true))
      throw ToJsError(env, InvalidArgumentError("evaluate: this model is busy (calls must be queued)"));
    auto logits = std::make_shared<std::vector<float>>();
    auto busy = busy_;
    return PromiseWorker::Start(
        env, "cascade.evaluate",
        [engine, tokens, logits, busy] {
          try {
            *logits = engine->TargetLogits(tokens);
          } catch (...) {
            busy->store(false);
            throw;
          }
          busy->store(false);
        },
        [logits](Napi::Env env) -> Napi::Value {
          Napi::Float32Array out = Napi::Float32Array::New(env, logits->size());
          std::copy(logits->begin(), logits->end(), out.Data());
          return out;
        });
  }

  // releaseSequence(id): frees a sequence's KV caches (a closed ChatSession). Callers queue it
  // behind generations (Cascade's queue); while one runs it is refused.
  Napi::Value ReleaseSequence(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto engine = Live(env);
    if (info.Length() < 1 || !info[0].IsNumber()) throw ToJsError(env, InvalidArgumentError("releaseSequence(id: number)"));
    bool expected = false;
    if (!busy_->compare_exchange_strong(expected, true))
      throw ToJsError(env, InvalidArgumentError("releaseSequence: this model is busy (calls must be queued)"));
    engine->ReleaseSequence(info[0].As<Napi::Number>().Int64Value());
    busy_->store(false);
    return env.Undefined();
  }

  // Ends the generation after the tokens of the current step (stop strings): it resolves normally.
  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    cancel_->store(true);
    gate_->Wake();
    return info.Env().Undefined();
  }

  // consumed(n): the stream's reader has taken n more of the generated tokens.
  Napi::Value Consumed(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsNumber())
      throw ToJsError(info.Env(), InvalidArgumentError("consumed(tokens: number)"));
    gate_->Consumed(info[0].As<Napi::Number>().Int64Value());
    return info.Env().Undefined();
  }

  // Ends the generation before its next device call (AbortSignal, dispose): it rejects with an
  // AbortError naming the stage.
  Napi::Value Abort(const Napi::CallbackInfo& info) {
    cancel_->store(true);
    abort_->store(true);
    gate_->Wake();
    return info.Env().Undefined();
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    cancel_->store(true);
    abort_->store(true);
    gate_->Wake();
    // A generation in flight keeps its own reference and finishes at the next step; whichever
    // reference goes last trims (TrimmedWhenReleased).
    engine_.reset();
    return info.Env().Undefined();
  }

  std::shared_ptr<CascadeEngine> engine_;
  std::shared_ptr<std::atomic<bool>> cancel_ = std::make_shared<std::atomic<bool>>(false);
  std::shared_ptr<std::atomic<bool>> abort_ = std::make_shared<std::atomic<bool>>(false);
  std::shared_ptr<std::atomic<bool>> busy_ = std::make_shared<std::atomic<bool>>(false);
  std::shared_ptr<ReaderGate> gate_ = std::make_shared<ReaderGate>();
};

}  // namespace

// Hands the memory of a released model back to the system. The host copies of the weights and the
// CPU plugin's device buffers are large blocks freed on pool threads; glibc keeps them in its
// per-thread arenas (its mmap threshold grows with each large free), so without a trim every
// load/dispose cycle left ~0.5 GB of RSS behind (measured: 5 cycles of SmolLM2 f32, 0.9 -> 3.5 GB).
void ReleaseFreedMemory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

// Trimming in dispose() only when it held the last reference was a race: a generation's worker
// can still hold one for a moment after its promise settled (more often on a loaded machine), and
// that release did not trim: one load/dispose cycle in CI kept ~400 MiB (test/reliability.test.ts
// "memory of loads"). The deleter trims on whichever thread lets the engine go.
std::shared_ptr<CascadeEngine> TrimmedWhenReleased(std::shared_ptr<CascadeEngine> engine) {
  CascadeEngine* raw = engine.get();
  return std::shared_ptr<CascadeEngine>(raw, [owner = std::move(engine)](CascadeEngine*) mutable {
    owner.reset();
    ReleaseFreedMemory();
  });
}

void DefineNativeEngine(Napi::Env env) {
  g_engine_ctor = new Napi::FunctionReference(Napi::Persistent(NativeEngine::Define(env)));
}

Napi::Object WrapEngine(std::shared_ptr<CascadeEngine> engine) {
  Napi::Object obj = g_engine_ctor->New({});
  NativeEngine::Unwrap(obj)->Attach(std::move(engine));
  return obj;
}

}  // namespace cascade::binding
