/**
 * The option, result and statistics types of {@link Cascade}.
 * @module
 */
import type { OutOfMemoryError } from '../errors.js';
import type { Runtime } from '../runtime/runtime.js';
import type { Cascade } from './cascade.js';
import type { ConversationCache } from './conversation-cache.js';

/**
 * Weight precisions a model can take on the device. 'q4': the layer matrices in 4-bit blocks of 32
 * (GGUF's Q4_1; a Q4_1 file's own blocks), the head int8: a draft's precision. A 'bf16' target whose
 * layer weights are 4-bit block values (a Q4_1 GGUF's) is stored as those blocks on the CPU plugin
 * (`info.targetStorage` says 'q4-blocks'): with AMX multiplied as the blocks' exact weights (bf16
 * activations, f32 sums), else as each weight's bf16 rounding (the dense model bit for bit).
 */
export const PRECISIONS = ['f32', 'bf16', 'int8', 'q4'] as const;
/** Weight precision of a model on the device. */
export type Precision = (typeof PRECISIONS)[number];

/** Element types a model's KV cache can take ({@link CascadeLoadOptions.kvCache}). */
export const KV_CACHE_TYPES = ['f32', 'bf16'] as const;
/** Element type of a model's KV cache. */
export type KvCacheType = (typeof KV_CACHE_TYPES)[number];

/** How tokens are produced. All modes give the target's output; they differ in speed. */
export type DecodeMode = 'target' | 'speculative' | 'cascade' | 'auto';

/** Options of {@link Cascade.load}. */
export interface CascadeLoadOptions {
  /**
   * The target model: a GGUF file, a Hugging Face folder (config.json + safetensors +
   * tokenizer.json), an http(s) URL of a GGUF file (downloaded into the cache once, see
   * {@link downloadModel}), or a catalogue name such as `'smollm2-135m-instruct'` (see {@link resolveModel}).
   */
  target: string;
  /** A draft model with the same vocabulary (path, URL or name, like `target`). Default: the target's first layers (self-speculative). */
  draft?: string;
  /**
   * The tiny projection model for `mode: 'cascade'`: a `.safetensors` file in the cascade-xla tiny
   * format (see `cascade-xla distill`), or `'fit'` to fit one from the draft in closed form on
   * text the draft generates (about a minute for SmolLM2; cached under the cache directory).
   */
  tiny?: string;
  /** PJRT plugin, as in {@link Runtime.open}. Ignored when `runtime` is given. */
  plugin?: string;
  /**
   * Devices the target is replicated on (pmap style): with several `branches`, each device
   * verifies a balanced share of them in the same call. On the CPU plugin this also opens that
   * many CPU devices. Default 1.
   */
  devices?: number;
  /** Share an open runtime between several models (it is not closed by {@link Cascade.dispose}). */
  runtime?: Runtime;
  /**
   * Weight precision per model. Default `'auto'`: a BF16 target and a q4 draft (4-bit blocks; a
   * 4-bit GGUF's own weights) on every plugin. On the XLA CPU plugin both run through our fused
   * layer kernel (docs/precision.md), where a BF16 target decodes ~1.8x faster than an f32 one;
   * `{ target: 'f32' }` gives the model's exact f32 arithmetic (the reference of the oracle tests).
   * A draft from an 8- or 16-bit file may do better as `{ draft: 'int8' }`.
   */
  precision?: 'auto' | { target?: Precision; draft?: Precision };
  /**
   * How a BF16 target's weights are stored on the device. Default `'auto'`: where our CPU kernels
   * run and the layer weights are exactly 4-bit block values (a Q4_1 GGUF's), as those blocks
   * (`info.targetStorage` 'q4-blocks': ~2.8x fewer bytes a step, so target-only decoding is
   * fastest; with AMX our kernels multiply by the blocks' exact weights, the file's own, where the
   * dense copy rounds each to bf16: logits within a bf16 rounding of the dense model's, not bit for
   * bit; without AMX the dense model bit for bit); otherwise dense. `'dense'`: two bytes per weight whatever
   * the file, as a BF16 checkpoint is stored: the setting of the seed's cascade, where the target
   * reads several times the draft's bytes and speculation pays most (SmolLM2 on this project's
   * test machine: target-only ~100 tokens/s, speculative ~2x that; docs/bench/compare.md).
   */
  targetStorage?: 'auto' | 'dense';
  /**
   * Element type of each model's KV cache. Default `'auto'`: f32 for f32 weights; on the XLA CPU
   * plugin bf16 for a target with bf16 weights while our CPU kernels run (f32 under
   * `CASCADE_FFI_KERNELS=0`), f32 for int8 / q4 targets and for the draft whatever its weights;
   * bf16 on other plugins. A bf16 cache takes half the memory (`info.memory.*.kvCacheBytes`) and half the
   * bytes attention reads at each step, which pays at long contexts (the target's decode at
   * position 1,500 of SmolLM2: attention ~3.9 -> ~3.0-3.4 ms of a ~9 ms step on this project's
   * 2-core test machine); each new key and value is rounded to bf16, so the outputs differ slightly
   * from an f32 cache's (every decoding mode still gives the target's output for the cache type it
   * has). On the CPU plugin a bf16 *draft* cache lowered its acceptance a little (10.3 -> 9.85
   * tokens per target call on chat text), a bf16 target cache did not; after a 1,436-token prompt
   * the bf16 target cache made target-only decoding ~8-12% faster, and no slower at short ones. `info.targetKvCache` and
   * `info.draftKvCache` say what was used.
   */
  kvCache?: 'auto' | { target?: KvCacheType; draft?: KvCacheType };
  /** KV cache length in tokens (prompt + generated). Default 1024 (capped at the model's context). */
  maxContext?: number;
  /**
   * Layers of the self-speculative draft (the target's first layers, at the draft's precision).
   * Default: chosen by the cost model from 1/8, 1/4, 1/2 and 3/4 of the target's layers, and all
   * of them when the draft's precision is lower than the target's (the INT8 copy of the target),
   * by their measured agreement and the bytes a step reads (see `info.draftChoice`), measured once
   * per model file and precisions and remembered in the cache.
   */
  draftLayers?: number;
  /**
   * Compile the programs a greedy generation uses while loading (cached on disk after the first
   * time), instead of on first use. Default false.
   */
  warmup?: boolean;
  /**
   * Progress while loading: `('download', bytes, totalBytes)` while a URL's file is downloaded
   * (`totalBytes` 0 when the server did not say), `('fit', positions, total)` while `tiny: 'fit'`
   * fits the tiny model (first load only; cached afterwards), `('compile', done, total)` during the
   * warm-up.
   */
  onProgress?: (stage: 'download' | 'fit' | 'compile', done: number, total: number) => void;
  /** Measure the memory bandwidth at load (~0.3 s) for {@link Cascade.costModel}. Default false. */
  measureBandwidth?: boolean;
  /**
   * Conversations whose KV caches stay resident for reuse: the default one of {@link Cascade.generate}
   * and one per {@link ChatSession}. A prompt that extends what a conversation's caches hold
   * prefills only its new tokens. Beyond this many, the least recently used conversation gives
   * its caches up (its next turn prefills from scratch). Each costs one target and one draft KV
   * cache of `maxContext` tokens (`info.memory.*.kvCacheBytes`). Default 4.
   */
  maxSequences?: number;
  /** Tiny candidates per draft step (K0) for generations that do not set `k0`. Default 256. */
  k0?: number;
  /**
   * Draft proposals per target call (K1, the proposal length L) for generations that do not set
   * `k1`, sampling or not, and what the self-speculative draft's depth is chosen for. Default: 12
   * for greedy generations, 6 for sampling ones (T > 0: a sampled proposal is rejected more often,
   * and a shorter round wastes fewer drafted tokens after a rejection; 1.08-1.16x at T = 0.8).
   */
  k1?: number;
  /**
   * Device memory the models may use, in bytes. Before anything is uploaded, the weights at their
   * precision plus the KV cache of `maxContext` tokens (the target on each replica, and the draft)
   * are compared with it, and a load that would not fit throws {@link OutOfMemoryError}. Default:
   * `CASCADE_DEVICE_MEMORY_LIMIT` (bytes) if set, else what the device has free (the plugin's
   * memory stats; on the CPU plugin, whose device memory is host memory, `MemAvailable`).
   */
  maxDeviceMemory?: number;
  /**
   * Cancels the load: the promise rejects with the signal's reason at once, whatever the stage
   * (tokenizer, plugin open, model upload, warm-up compile); the work in flight stops at its next
   * stage and what it loaded is released.
   */
  signal?: AbortSignal;
  /** @internal Testing only: called as each loading stage starts. */
  onStageForTesting?: (stage: 'tokenizer' | 'open' | 'upload') => void;
}

/** Options of {@link Cascade.generate} and {@link Cascade.stream}. */
export interface GenerateOptions {
  /** Most tokens to generate (default 128). */
  maxTokens?: number;
  /** 0 (default) is greedy decoding. */
  temperature?: number;
  /** Keep the k most likely tokens (0 = off). */
  topK?: number;
  /** Nucleus sampling threshold in (0, 1] (1 = off). */
  topP?: number;
  /**
   * Min-p sampling, in [0, 1] (0 = off, the default): keeps the tokens whose probability, after
   * temperature, top-k and top-p, is at least `minP` times the most likely token's (as in
   * llama.cpp and node-llama-cpp). It never changes the most likely token, so it has no effect at
   * temperature 0.
   */
  minP?: number;
  /**
   * llama.cpp's repetition penalty, a finite number > 0 (1 = off, the default; above 1 discourages
   * repeats): a token that occurs in the penalty window (`penaltyLastN`) has its logit divided by
   * it when positive and multiplied by it otherwise.
   *
   * The sampling transform runs in this order: `logitBias`, the penalties (repeat, then presence
   * and frequency), `temperature`, `topK`, softmax, `topP`, `minP`. The target's distribution and
   * the draft's get the same transform, each speculated position with the tokens proposed before
   * it counted as context, so speculative decoding stays exact: at temperature 0 the tokens are
   * the argmax after bias and penalties, identical to `mode: 'target'`.
   */
  repeatPenalty?: number;
  /**
   * OpenAI's presence penalty, a finite number (0 = off, the default): subtracted once from the
   * logit of every token that occurs in the penalty window. Negative values encourage repeats.
   */
  presencePenalty?: number;
  /**
   * OpenAI's frequency penalty, a finite number (0 = off, the default): subtracted from a token's
   * logit once per occurrence in the penalty window. Negative values encourage repeats.
   */
  frequencyPenalty?: number;
  /**
   * The penalty window: how many of the context's last tokens, prompt included, the penalties
   * count (default 64; -1 = the whole context; 0 turns the penalties off).
   */
  penaltyLastN?: number;
  /**
   * Added to the logits of these token ids before anything else: `{ [tokenId]: bias }`, ids in
   * the vocabulary; `-Infinity` bans a token (it is never generated; banning every token is an
   * error).
   */
  logitBias?: Record<number, number>;
  /**
   * Seed of the sampler: the same seed and mode give the same output. Each mode draws its random
   * numbers in its own way (every mode samples the target's distribution), so with sampling the
   * text for a seed differs between modes, and under `mode: 'auto'` (whose choice per step follows
   * measured times) it can differ from call to call.
   */
  seed?: number;
  /**
   * Default `'speculative'`. `'cascade'` needs a tiny model (`Cascade.load({ tiny })`). `'auto'`
   * lets the cost model pick target-only, speculative or cascade decoding per step.
   */
  mode?: DecodeMode;
  /** Tiny candidates per draft step (K0). Default: the load's `k0` (256). */
  k0?: number;
  /**
   * Draft proposals per target call (K1 = L). Default: the load's `k1`, else 12 at temperature 0
   * and 6 when sampling (in cascade mode at most `k0`).
   */
  k1?: number;
  /**
   * Proposal branches per step (B; the design's several proposals): their first tokens are drawn
   * independently from the draft (at temperature 0: its B best), each is continued as a chain, and
   * the target verifies all of them in one call with a tree mask (SpecInfer's multi-step
   * speculative sampling keeps the output exact). Default 1.
   */
  branches?: number;
  /**
   * Dynamic horizon: choose the proposal length per step (up to `k1`) from the measured stage
   * costs and acceptance. Default off in every mode: with the q4 draft `k1` itself was as fast
   * or faster (docs/how-the-cascade-works.md).
   */
  dynamicHorizon?: boolean;
  /**
   * Draft lookahead (speculative and cascade rounds): where the text so far has an earlier
   * occurrence of its last two tokens, a draft call also computes the tokens that followed them
   * there (up to 2), guesses of its own next proposals; while the draft proposes those tokens,
   * its next steps are already done. The output is the same either way (only the speed changes). Default true.
   */
  lookahead?: boolean;
  /** Stop when the text contains one of these (the stop string is not included). */
  stop?: string[];
  /** Stop at the model's end-of-generation tokens (default true). */
  stopAtEos?: boolean;
  /**
   * Cancels the generation, queued or running: it rejects at once with the signal's reason (an
   * `AbortError` unless one was given). The native side stops before its next device call (a
   * prefill chunk, a draft step or a verify), and the next call on this Cascade waits for that.
   */
  signal?: AbortSignal;
  /** @internal Testing only: breaks the acceptance rule (negative control of the distribution tests). */
  brokenAcceptanceForTesting?: boolean;
  /**
   * The conversation whose KV caches to continue ({@link Cascade.createConversationCache}).
   * Default: the Cascade's default conversation, shared by every call without one.
   */
  cache?: ConversationCache;
}

/** Per-stage milliseconds, as in the design's throughput table. */
export interface StageTimes {
  /** Catching the caches up with the prompt. */
  prefill: number;
  /** The tiny model: fused into the draft step's program, so counted in `draft` (0 here). */
  tiny: number;
  /** Draft steps. */
  draft: number;
  /** Target decode and verify calls. */
  target: number;
  /** Sampling, acceptance and bookkeeping on the host. */
  host: number;
  /** Compiling (or loading cached) XLA programs on first use of a shape; excluded from the others. */
  compile: number;
}

/** Statistics of one generation (or, on {@link Cascade.stats}, of all of them). */
export interface CascadeStats {
  promptTokens: number;
  /**
   * Prompt tokens whose keys and values were already in the conversation's KV cache (a prompt
   * that extends the previous one of the same conversation), so they were not prefilled again.
   */
  cachedTokens: number;
  /** Milliseconds from the start of the generation (after waiting in the queue) to its first token. */
  firstTokenMs: number;
  generatedTokens: number;
  targetCalls: number;
  draftCalls: number;
  proposed: number;
  attempted: number;
  accepted: number;
  /** Draft calls that also computed a guess of their proposal (the `lookahead` option). */
  lookaheadGuesses: number;
  /** Draft steps that needed no call: the call before had computed them from a right guess. */
  lookaheadHits: number;
  /** Share of the draft's own choices among the tiny's candidates (null without a tiny model). */
  gamma0: number | null;
  /** Target acceptance rate of the proposals it examined (alpha). */
  gamma21: number;
  /** Accepted / proposed tokens. */
  gammaTotal: number;
  /** Tokens emitted per target call. */
  tau: number;
  /** Acceptance rate at each proposal position. */
  positionAcceptance: number[];
  stageMs: StageTimes;
  totalMs: number;
  /** The cost model's predicted speedup over target-only decoding for the steps run. */
  predictedSpeedup: number;
  /** Tokens/s of this run over the measured target-only rate (null until a target-only step was timed). */
  measuredSpeedup: number | null;
  /** Rounds of each kind (auto mode mixes them). */
  rounds: { target: number; speculative: number; cascade: number };
  /** Mean proposal length L over speculative and cascade rounds. */
  meanProposalLength: number;
  /**
   * The most proposals a round could make: the generation's `k1` as the engine resolved it (an
   * unset k1 is 12 at temperature 0 and 6 when sampling; in cascade mode at most `k0`); 0 in
   * target mode. With `dynamicHorizon` rounds choose their L up to it ({@link meanProposalLength}).
   */
  proposalLength: number;
  /** Generated tokens per second, prefill excluded. */
  tokensPerSecond: number;
  stopReason: string;
}

/** What {@link Cascade.generate} returns. */
export interface GenerationResult {
  text: string;
  tokens: number[];
  stats: CascadeStats;
}

/** One piece of a {@link Cascade.stream}. */
export interface StreamPiece {
  text: string;
  tokens: number[];
}

/** The shape of a loaded model. */
export interface ModelInfo {
  family: 'llama' | 'gemma';
  architecture: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  contextLength: number;
  tiedEmbeddings: boolean;
}
