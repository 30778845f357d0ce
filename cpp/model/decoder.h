// A decoder model on one PJRT device: weights uploaded once (converted / quantised on the host to
// the requested precision), a KV cache that lives on the device and is donated to every call
// (XLA updates it in place; it is never copied back), and programs compiled lazily, cached by
// (T, head, tree mask).
//
//   DecoderModel m(client, weights, {WeightPrecision::kBF16, /*max_context=*/512});
//   auto r = m.Forward(prompt, 0, {HeadKind::kArgmax});          // prefill
//   auto s = m.Forward({next}, prompt.size(), {HeadKind::kArgmax});  // decode
//   auto v = m.Forward(draft, pos, {HeadKind::kTokenLogprob}, inputs);  // verify (inputs.target_ids)
//   m.SetTiny(LoadTiny("tiny.safetensors", &m.config()));                  // cascade draft step:
//   auto c = m.Forward({last}, pos, {HeadKind::kCandidates, /*K0=*/64});    // c.candidate_ids/logits
//
// Rollback: the cache holds whatever was last written at each slot, and a call at start_pos only
// attends to slots < start_pos + i + 1. After a rejected speculation, just call with the accepted
// length as start_pos: the stale slots are masked, then overwritten. Nothing to undo.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "model/programs.h"
#include "util/float16.h"  // BF16ToF32, F32ToBF16 (callers of this header use them)
#include "model/tiny.h"
#include "model/weights.h"
#include "pjrt/client.h"

namespace cascade {

// ---- host-side weight preparation (also used by tests and references) ----
HostTensor ToF32(const HostTensor& t);   // f32 / f16 / bf16 -> f32
HostTensor ToBF16(const HostTensor& t);  // f32 / f16 / bf16 -> bf16 (round to nearest even)
struct Int8Matrix {
  HostTensor values;  // s8 [out, in]
  HostTensor scales;  // f32 [out]
};
// Per output row c: s_c = max|W_c| / 127 (1 for an all-zero row), W_int8 = round(W / s_c).
Int8Matrix QuantizeInt8PerChannel(const HostTensor& w);
// The tensors of WeightParamLayout(config, precision), in its order (a model with layer arenas
// packs the layers' ones: model/programs.h, LayerArenaPieces).
std::vector<HostTensor> PrepareWeightParams(const ModelWeights& weights, WeightPrecision precision);
// The weights as the program sees them, as f32 (bf16 rounding / int8 dequantisation applied):
// a reference forward on these should match the program tightly.
ModelWeights EffectiveWeights(const ModelWeights& weights, WeightPrecision precision);

struct DecoderOptions {
  WeightPrecision precision = WeightPrecision::kF32;
  int64_t max_context = 256;        // cache slots C
  // Default: DefaultKvDtype below. bf16 on the CPU plugin works in the fused layer stack (stored as
  // u16 bits, model/programs.h KvCacheStorage; new rows rounded before any row reads them). In the
  // plain programs (matmul modes other than kFused) XLA CPU updates a bf16 cache by converting the
  // whole [layers, ...] cache to f32 and back in every layer: O(layers^2 x context) bytes per step,
  // measured 2.5x slower than the int8 weights' own cost.
  std::optional<DType> kv_dtype;
  size_t device_index = 0;
  MatmulMode matmul = MatmulMode::kAuto;
  // pmap style: weights and KV cache replicated on devices 0..replicas-1, every program compiled
  // with num_replicas = replicas. Forward() runs the same inputs on every replica (the caches stay
  // identical); ForwardSharded() gives each replica its own inputs (e.g. a share of the branches).
  int64_t replicas = 1;
};

// The KV cache type a model takes when DecoderOptions::kv_dtype is unset. f32 for f32 weights
// (the exact reference). On the CPU plugin: bf16 for a model with bf16 weights (kBF16, kBF16Q4) in
// the fused layer stack (`fused_layers`: UsesLayerArena; the plain programs update a bf16 cache by
// converting all of it, DecoderOptions::kv_dtype) unless it is a `draft`; f32 otherwise. On other
// plugins bf16. On the CPU plugin a bf16 target cache costs nothing at short contexts and saves
// ~8-12% of a target-only token after a 1,436-token prompt (session 20, scripts/long-context.mjs),
// with the same retention against the f32 model (precision_report: top-1 0.9971 vs 0.9966); a
// bf16 draft cache cost acceptance (session 18: speculative 10.3 -> 9.85 tokens per target call on
// chat text), so a draft keeps f32 there whatever its weights.
DType DefaultKvDtype(bool cpu_plugin, bool fused_layers, WeightPrecision precision, bool draft = false);
// The same for a model of `precision` on `client` whose matmuls are `matmul` (DecoderModel's own
// choice, ChooseMatmulMode): what a DecoderModel (draft = false) or CascadeEngine's draft takes,
// and what the pre-upload memory check counts (cascade/loading.cc).
DType DefaultKvDtype(const Client& client, WeightPrecision precision, MatmulMode matmul = MatmulMode::kAuto,
                     bool draft = false);

// Extra inputs of a Forward call.
struct ForwardInputs {
  std::vector<int32_t> target_ids;        // HeadKind::kTokenLogprob: one per token
  std::vector<uint8_t> tree_mask;         // optional [T*T] row-major, nonzero = may attend
  std::vector<int32_t> position_offsets;  // with tree_mask: RoPE position offsets (default 0..T-1)
};

// Host results of one call; which fields are set depends on the head (see HeadKind).
struct ForwardResult {
  int64_t num_tokens = 0;
  std::vector<float> logits;          // kLogits: [T * vocab]
  std::vector<int32_t> argmax;        // kArgmax, kTokenLogprob: [T]
  std::vector<float> topk_values;     // kTopK: [T * k]
  std::vector<int32_t> topk_indices;  // kTopK: [T * k]
  std::vector<float> logsumexp;       // kTopK: [T]
  std::vector<float> token_logprobs;  // kTokenLogprob: [T]
  // kCandidates (k = K0): the tiny's candidates per token and the draft's logits at them; argmax
  // then holds the candidate with the largest logit (the greedy proposal), and full_argmax the
  // unrestricted argmax when HeadSpec::full_argmax was asked for.
  std::vector<int32_t> candidate_ids;   // [T * K0]
  std::vector<float> candidate_logits;  // [T * K0]
  std::vector<int32_t> full_argmax;     // [T], only with HeadSpec::full_argmax
  std::vector<float> hidden;            // kHidden: [T * d] (logits then holds the logits)
};

class DecoderModel {
 public:
  DecoderModel(std::shared_ptr<Client> client, const ModelWeights& weights, const DecoderOptions& options);
  DecoderModel(const DecoderModel&) = delete;
  DecoderModel& operator=(const DecoderModel&) = delete;

  // Runs tokens (T >= 1) at cache slots start_pos .. start_pos+T-1 (needs start_pos + T <=
  // max_context) and returns the head's results. The KV cache is updated on the device.
  ForwardResult Forward(const std::vector<int32_t>& tokens, int64_t start_pos, const HeadSpec& head = {},
                        const ForwardInputs& inputs = {});
  // Compiles (or loads from the compile cache) the program of a call shape without running it.
  // (A candidates head also builds its candidate table.)
  void Prepare(int64_t num_tokens, const HeadSpec& head);
  // One replica's inputs for ForwardSharded.
  struct Shard {
    std::vector<int32_t> tokens;
    ForwardInputs inputs;
  };
  // Runs replica d on shards[d] (one per replica, all with the same number of tokens and the same
  // kind of inputs) at the same start_pos; returns each replica's results. Replica d's cache then
  // holds its own shard's entries at slots start_pos.. (callers re-feed what they keep).
  std::vector<ForwardResult> ForwardSharded(const std::vector<Shard>& shards, int64_t start_pos, const HeadSpec& head);
  int64_t replicas() const { return options_.replicas; }
  // The client the model's programs run on (e.g. to train the tiny on the same device).
  const std::shared_ptr<Client>& client() const { return client_; }

  // Zeroes the cache (not needed for correctness: unwritten slots are always masked).
  void ResetCache();
  // A KV cache's device buffers (a key and a value buffer per replica) held outside the model,
  // while another sequence uses the model (CascadeEngine keeps one per conversation). Empty: none.
  struct KvCache {
    std::vector<std::unique_ptr<Buffer>> k, v;
    bool empty() const { return k.empty(); }
    void clear() {
      k.clear();
      v.clear();
    }
  };
  // Exchanges the model's cache with `other`; an empty `other` first gets a zeroed cache.
  void SwapCache(KvCache& other);
  // Changes with every write to the model's cache (each Forward, ResetCache, SwapCache): whoever
  // remembers what the cache holds compares it to know whether someone else used the model since.
  uint64_t cache_version() const { return cache_version_; }
  // Device bytes of one KV cache (all replicas).
  int64_t cache_bytes() const;
  // Uploads the tiny model (once) for HeadKind::kCandidates; replaces a previous one (and its
  // candidate tables). Throws InvalidArgumentError when it does not fit this model (input_dim !=
  // hidden_size or vocab != vocab_size).
  void SetTiny(const TinyWeights& tiny);
  bool has_tiny() const { return tiny_hidden_ > 0; }
  int64_t tiny_hidden() const { return tiny_hidden_; }
  TinyInput tiny_input() const { return tiny_input_; }
  int64_t tiny_bytes() const;  // device bytes of the tiny's params (0 without one)
  // A tiny on the input embedding (TinyInput::kInputEmbedding): its top-K0 candidates for every
  // input token, s32[vocab, K0] on each replica's device (model/programs.h, 7.): evaluated on the
  // device, in blocks of vocabulary rows spread over the replicas, the first time a candidates
  // head with this K0 is prepared or run. Nothing to build for a kDraftHidden tiny.
  void BuildCandidateTable(int64_t k0);
  int64_t candidate_table_bytes() const;  // device bytes of the tables built so far (one replica)

  const ModelConfig& config() const { return config_; }
  const DecoderOptions& options() const { return options_; }
  DType kv_dtype() const { return kv_dtype_; }
  int64_t max_context() const { return options_.max_context; }
  size_t num_compiled() const { return programs_.size(); }
  // Time spent compiling (or loading from the compile cache) programs so far, in ms: callers
  // subtract it from their stage timings.
  double compile_ms() const { return compile_ms_; }
  int64_t weight_bytes() const;
  // Weight bytes the upload put into 2 MiB pages (util/huge_pages.h; 0 off the CPU plugin or where
  // the kernel refused).
  int64_t huge_page_bytes() const { return huge_page_bytes_; }
  int64_t tiny_huge_page_bytes() const { return tiny_huge_page_bytes_; }  // the same for the tiny's params
  // The current cache buffers (replaced by every Forward; the previous ones are donated).
  const Buffer& k_cache() const { return *replicas_[0].k_cache; }
  const Buffer& v_cache() const { return *replicas_[0].v_cache; }
  // The program text for a call shape (what Forward compiles).
  std::string ProgramText(int64_t num_tokens, const HeadSpec& head, bool tree) const;

 private:
  std::shared_ptr<LoadedExecutable> Program(int64_t num_tokens, const HeadSpec& head, bool tree);
  // ForwardSharded's phases (decoder.cc).
  void CheckShards(const std::vector<Shard>& shards, int64_t start_pos, const HeadSpec& head) const;
  std::vector<std::vector<Buffer*>> UploadInputs(const std::vector<Shard>& shards, int64_t start_pos,
                                                 const HeadSpec& head,
                                                 std::vector<std::vector<std::unique_ptr<Buffer>>>& uploaded);
  std::vector<std::vector<std::unique_ptr<Buffer>>> ExecuteDonatingCaches(LoadedExecutable& exe,
                                                                          const std::vector<std::vector<Buffer*>>& args);
  static ForwardResult ReadResults(const std::vector<std::unique_ptr<Buffer>>& outputs, int64_t T, const HeadSpec& head);

  double compile_ms_ = 0;
  uint64_t cache_version_ = 0;
  int64_t huge_page_bytes_ = 0, tiny_huge_page_bytes_ = 0;
  std::shared_ptr<Client> client_;
  ModelConfig config_;
  DecoderOptions options_;
  DType kv_dtype_;
  // What lives on each replica's device.
  struct Replica {
    size_t device = 0;
    std::vector<std::unique_ptr<Buffer>> weights;
    std::unique_ptr<Buffer> k_cache, v_cache;
    std::vector<std::unique_ptr<Buffer>> tiny;  // TinyParamLayout order
    std::map<int64_t, std::unique_ptr<Buffer>> candidate_tables;  // by K0
  };
  std::vector<Replica> replicas_;

  bool layer_arena_ = false;  // each layer's weights live in one buffer (model/programs.h, ModelParamLayout)
  int64_t tiny_hidden_ = 0;
  TinyInput tiny_input_ = TinyInput::kInputEmbedding;
  std::map<std::tuple<int64_t, HeadSpec, bool>, std::shared_ptr<LoadedExecutable>> programs_;
};

}  // namespace cascade
