/**
 * `Cascade`: load a target model (and optionally a draft and a tiny model) and generate text with
 * target-only, speculative (draft -> target) or cascaded decoding. The output is exactly the
 * target's: identical tokens at temperature 0, the same distribution when sampling.
 * @module
 */
import { createHash } from 'node:crypto';
import { access, copyFile, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

import { DisposedError, InvalidArgumentError, type OutOfMemoryError } from '../errors.js';
import { call, callSync, native, type NativeGenerateOptions } from '../native.js';
import { resolveModel, type ResolveProgress } from '../models/catalog.js';
import { Runtime } from '../runtime/runtime.js';
import { Tokenizer, type ChatMessage } from '../tokenizer/index.js';
import { ChatSession, type ChatSessionOptions } from './chat-session.js';
import { ConversationCache, conversationId, registerConversationCache } from './conversation-cache.js';
import { placementReport, type PlacementReport } from './placement.js';
import { abortReason, onAbort, raceAbort, throwIfAborted } from '../utils/abort.js';
import { cachePath, sweepCacheTemporaries } from '../utils/cache.js';

/** Weight precision of a model on the device. */
export type Precision = 'f32' | 'bf16' | 'int8';

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
   * Weight precision per model. Default `'auto'`: the design's BF16 target and INT8 draft on every
   * plugin. On the XLA CPU plugin both run through our fused layer kernel (docs/precision.md), where
   * a BF16 target decodes ~1.8x faster than an f32 one; `{ target: 'f32' }` gives the model's
   * exact f32 arithmetic (the reference of the oracle tests).
   */
  precision?: 'auto' | { target?: Precision; draft?: Precision };
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
  /** Tiny candidates per draft step (K0) for generations that do not set `k0`. Default 64. */
  k0?: number;
  /**
   * Draft proposals per target call (K1, the proposal length L) for generations that do not set
   * `k1`, and what the self-speculative draft's depth is chosen for. Default 4.
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
  /** Seed of the sampler: the same seed gives the same output. */
  seed?: number;
  /**
   * Default `'speculative'`. `'cascade'` needs a tiny model (`Cascade.load({ tiny })`). `'auto'`
   * lets the cost model pick target-only, speculative or cascade decoding per step.
   */
  mode?: DecodeMode;
  /** Tiny candidates per draft step (K0). Default: the load's `k0` (64). */
  k0?: number;
  /** Draft proposals per target call (K1 = L). Default: the load's `k1` (4). */
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
   * costs and acceptance (default: on in `'auto'` mode, off otherwise).
   */
  dynamicHorizon?: boolean;
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

type NativeStats = CascadeStats;

/** The conversation (KV cache) of plain {@link Cascade.generate} calls; sessions get 1, 2, ... */
const DEFAULT_SEQUENCE = 0;

/**
 * Engines with a generation in flight. On process exit their native generations are aborted:
 * exit joins Node's thread pool, and a generation paused for its stream's reader (backpressure)
 * would otherwise never return.
 */
const generating = new Set<{ abort(): void }>();
let exitHookInstalled = false;
function abortGenerationsAtExit(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const engine of generating) engine.abort();
  });
}
interface NativeEngine {
  info(): {
    target: ModelInfo;
    draft: ModelInfo;
    targetWeightBytes: number;
    draftWeightBytes: number;
    targetPrecision: Precision;
    draftPrecision: Precision;
    maxContext: number;
    /** Devices the target is replicated on. */
    devices: number;
    hasTiny: boolean;
    /** Device memory per model: weights, KV cache and (draft) the tiny model, in bytes. */
    memory: Record<'target' | 'draft', { weightBytes: number; kvCacheBytes: number; tinyBytes: number }>;
    /**
     * How the self-speculative draft's depth was chosen when `draftLayers` was not given: per
     * candidate depth, the greedy agreement with the target on calibration text, the estimated
     * step cost relative to the target, and the cost model's predicted speedup (the best is used).
     */
    draftChoice: { layers: number; agreement: number; relativeCost: number; predictedSpeedup: number }[];
  };
  generate(prompt: Int32Array, options: NativeGenerateOptions, onTokens?: (ids: Int32Array) => void): Promise<{ tokens: Int32Array; stats: NativeStats }>;
  evaluate(tokens: Int32Array): Promise<Float32Array>;
  /** Ends the generation after the current step (it resolves). */
  cancel(): void;
  /** Ends the generation before its next device call (it rejects with an AbortError). */
  abort(): void;
  /** The stream's reader has taken `tokens` more tokens (the generation pauses while too many are unread). */
  consumed(tokens: number): void;
  /** Frees a conversation's KV caches (not while a call runs). */
  releaseSequence(id: number): void;
  dispose(): void;
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

const MODES: readonly DecodeMode[] = ['target', 'speculative', 'cascade', 'auto'];

function checkInteger(name: string, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new InvalidArgumentError(`${name} must be an integer in ${min}..${max}, got ${String(v)}`);
  }
}

/** The device memory limit: the option, else `CASCADE_DEVICE_MEMORY_LIMIT` (bytes), else none (0). */
function deviceMemoryLimit(option: number | undefined): number {
  if (option !== undefined) return option;
  const env = process.env['CASCADE_DEVICE_MEMORY_LIMIT'];
  if (env === undefined || env.trim() === '') return 0;
  const bytes = Number(env);
  if (!Number.isSafeInteger(bytes) || bytes < 1) {
    throw new InvalidArgumentError(`CASCADE_DEVICE_MEMORY_LIMIT must be a positive integer number of bytes, got ${JSON.stringify(env)}`);
  }
  return bytes;
}

function checkSignal(signal: unknown): void {
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new InvalidArgumentError('signal must be an AbortSignal');
}

const PRECISIONS: readonly Precision[] = ['f32', 'bf16', 'int8'];

function checkPrecision(p: unknown): void {
  if (p === undefined || p === 'auto') return;
  if (typeof p !== 'object' || p === null) {
    throw new InvalidArgumentError(`precision must be 'auto' or { target?, draft? } with 'f32' | 'bf16' | 'int8', got ${JSON.stringify(p)}`);
  }
  for (const key of ['target', 'draft'] as const) {
    const v = (p as Record<string, unknown>)[key];
    if (v !== undefined && !PRECISIONS.includes(v as Precision)) {
      throw new InvalidArgumentError(`precision.${key} must be 'f32', 'bf16' or 'int8', got ${JSON.stringify(v)}`);
    }
  }
}

function checkNumber(name: string, v: unknown, ok: (v: number) => boolean, expected: string): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !ok(v)) throw new InvalidArgumentError(`${name} must be ${expected}, got ${String(v)}`);
}

/** Checks `logitBias` against the vocabulary and returns it as the native side's two arrays. */
function logitBiasArrays(bias: unknown, vocabSize: number): { logitBiasIds?: Int32Array; logitBiasValues?: Float64Array } {
  if (bias === undefined) return {};
  if (bias === null || typeof bias !== 'object' || Array.isArray(bias)) {
    throw new InvalidArgumentError(`logitBias must be an object { [tokenId]: bias }, got ${Array.isArray(bias) ? 'an array' : String(bias)}`);
  }
  const entries = Object.entries(bias as Record<string, unknown>);
  const ids = new Int32Array(entries.length);
  const values = new Float64Array(entries.length);
  entries.forEach(([key, value], i) => {
    const id = Number(key);
    if (!/^\d+$/.test(key) || id >= vocabSize) {
      throw new InvalidArgumentError(`logitBias: token id ${key} is outside the vocabulary (0..${vocabSize - 1})`);
    }
    if (typeof value !== 'number' || Number.isNaN(value) || value === Infinity) {
      throw new InvalidArgumentError(`logitBias[${key}] must be a finite number or -Infinity, got ${String(value)}`);
    }
    ids[i] = id;
    values[i] = value;
  });
  return entries.length ? { logitBiasIds: ids, logitBiasValues: values } : {};
}

function checkGenerateOptions(o: GenerateOptions): void {
  if (o === null || typeof o !== 'object') throw new InvalidArgumentError('generate: options must be an object');
  checkSignal(o.signal);
  checkInteger('maxTokens', o.maxTokens, 0);
  checkInteger('topK', o.topK, 0);
  checkInteger('seed', o.seed, 0);
  checkInteger('k0', o.k0, 1);
  checkInteger('k1', o.k1, 1, 64);
  checkInteger('branches', o.branches, 1, 16);
  if (o.k0 !== undefined && o.k1 !== undefined && o.k1 > o.k0) {
    throw new InvalidArgumentError(`k1 (${o.k1}) must not exceed k0 (${o.k0})`);
  }
  if (o.temperature !== undefined && (typeof o.temperature !== 'number' || !Number.isFinite(o.temperature) || o.temperature < 0)) {
    throw new InvalidArgumentError(`temperature must be a finite number >= 0, got ${String(o.temperature)}`);
  }
  if (o.topP !== undefined && (typeof o.topP !== 'number' || !(o.topP > 0 && o.topP <= 1))) {
    throw new InvalidArgumentError(`topP must be in (0, 1], got ${String(o.topP)}`);
  }
  checkNumber('minP', o.minP, (v) => v >= 0 && v <= 1, 'a number in [0, 1]');
  checkNumber('repeatPenalty', o.repeatPenalty, (v) => Number.isFinite(v) && v > 0, 'a finite number > 0');
  checkNumber('presencePenalty', o.presencePenalty, Number.isFinite, 'a finite number');
  checkNumber('frequencyPenalty', o.frequencyPenalty, Number.isFinite, 'a finite number');
  checkInteger('penaltyLastN', o.penaltyLastN, -1);
  if (o.mode !== undefined && !MODES.includes(o.mode)) {
    throw new InvalidArgumentError(`mode must be one of ${MODES.join(', ')}, got ${String(o.mode)}`);
  }
  if (o.stop !== undefined && (!Array.isArray(o.stop) || o.stop.some((s) => typeof s !== 'string' || s === ''))) {
    throw new InvalidArgumentError('stop must be an array of non-empty strings');
  }
}

function emptyStats(): CascadeStats {
  return {
    promptTokens: 0,
    cachedTokens: 0,
    firstTokenMs: 0,
    generatedTokens: 0,
    targetCalls: 0,
    draftCalls: 0,
    proposed: 0,
    attempted: 0,
    accepted: 0,
    gamma0: null,
    gamma21: 0,
    gammaTotal: 0,
    tau: 0,
    positionAcceptance: [],
    stageMs: { prefill: 0, tiny: 0, draft: 0, target: 0, host: 0, compile: 0 },
    totalMs: 0,
    predictedSpeedup: 0,
    measuredSpeedup: null,
    rounds: { target: 0, speculative: 0, cascade: 0 },
    meanProposalLength: 0,
    tokensPerSecond: 0,
    stopReason: '',
  };
}

/** Where a fitted tiny for this target/draft is cached. */
async function tinyCachePath(target: string, draft: string | undefined, draftLayers: number | undefined, precision: string): Promise<string> {
  const source = draft ?? target;
  const st = await stat(source).catch(() => undefined);
  const name = `${path.basename(source).replace(/[^A-Za-z0-9._-]/g, '_')}-${st?.size ?? 0}-${draft ? 'draft' : `L${draftLayers ?? 'auto'}`}-${precision}.safetensors`;
  const dir = cachePath('tiny');
  await mkdir(dir, { recursive: true });
  return path.join(dir, name);
}

/** The sha256 a remembered draft choice carries over its content (a file of other bytes is measured again). */
function choiceChecksum(layers: unknown, candidates: unknown): string {
  return createHash('sha256').update(JSON.stringify({ layers, candidates })).digest('hex');
}

/** Writes `text` to a temporary next to `file` (named for this process) and renames it into place. */
async function writeFileAtomic(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp${process.pid}`;
  try {
    await writeFile(tmp, text);
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/** Where the measured draft-depth choice for a target file is remembered. */
async function draftChoicePath(target: string, targetPrecision: Precision, draftPrecision: Precision): Promise<string> {
  const st = await stat(target).catch(() => undefined);
  const dir = cachePath('draft-choice');
  await mkdir(dir, { recursive: true });
  const name = `${path.basename(target).replace(/[^A-Za-z0-9._-]/g, '_')}-${st?.size ?? 0}-${Math.floor(st?.mtimeMs ?? 0)}`;
  return path.join(dir, `${name}-${targetPrecision}-${draftPrecision}.json`);
}

async function findTokenizer(target: string): Promise<Tokenizer> {
  if (target.toLowerCase().endsWith('.gguf')) return Tokenizer.fromGguf(target);
  const dir = target.endsWith('.json') || target.endsWith('.safetensors') ? path.dirname(target) : target;
  const file = path.join(dir, 'tokenizer.json');
  try {
    await access(file);
  } catch {
    throw new InvalidArgumentError(`no tokenizer for ${target}: expected a .gguf file or ${file}`);
  }
  return Tokenizer.fromTokenizerJson(file);
}

/**
 * A loaded cascade: target, draft (and tiny) models on one device, with their tokenizer.
 * Calls to {@link generate} / {@link stream} on one Cascade are queued, never interleaved.
 *
 * @example
 * ```ts
 * import { Cascade } from 'cascade-xla';
 * await using c = await Cascade.load({ target: 'SmolLM2-135M-Instruct.Q4_1.gguf' });
 * const r = await c.generate('Once upon a time', { maxTokens: 32, temperature: 0 });
 * console.log(r.text, r.stats.tau, r.stats.tokensPerSecond);
 * for await (const piece of c.stream([{ role: 'user', content: 'Hi!' }], { maxTokens: 32 })) {
 *   process.stdout.write(piece.text);
 * }
 * ```
 */
export class Cascade {
  /** The tokenizer of the target model. */
  readonly tokenizer: Tokenizer;
  /** The runtime the models live on. */
  readonly runtime: Runtime;
  /** Shapes and precisions of the loaded models. */
  readonly info: ReturnType<NativeEngine['info']>;
  /** Totals over every generation so far. */
  readonly stats: CascadeStats = emptyStats();
  /**
   * The seed's cost-model inputs per model, measured at load when `measureBandwidth` is set:
   * W_i (device weight bytes), BW_i (this machine's memory read bandwidth, GB/s) and the
   * memory-bound floor W_i / BW_i of one step, in ms. The T_i terms are measured as generations
   * run (see {@link CascadeStats.predictedSpeedup}).
   */
  costModel: { bandwidthGBs: number; targetFloorMs: number; draftFloorMs: number } | undefined;
  /** Statistics of the most recent generation (also after a {@link stream}). */
  lastStats: CascadeStats | undefined;
  #engine: NativeEngine | undefined;
  readonly #ownsRuntime: boolean;
  #queue: Promise<unknown> = Promise.resolve();
  /** The next {@link ChatSession}'s conversation id (0 is {@link generate}'s). */
  #nextSequence = DEFAULT_SEQUENCE + 1;
  /** Native calls (generate, evaluate) not settled yet. */
  #inflight = new Set<Promise<unknown>>();
  /** Fires on {@link dispose}: calls running or queued end with DisposedError. */
  readonly #disposing = new AbortController();

  private constructor(engine: NativeEngine, tokenizer: Tokenizer, runtime: Runtime, ownsRuntime: boolean) {
    this.#engine = engine;
    this.tokenizer = tokenizer;
    this.runtime = runtime;
    this.#ownsRuntime = ownsRuntime;
    this.info = callSync(() => engine.info());
  }

  /** Loads the models (off the JS thread) and their tokenizer. */
  static async load(options: CascadeLoadOptions): Promise<Cascade> {
    if (!options || typeof options.target !== 'string' || options.target === '') {
      throw new InvalidArgumentError('Cascade.load: target must be the path of a model file or folder');
    }
    if (options.draft !== undefined && (typeof options.draft !== 'string' || options.draft === '')) {
      throw new InvalidArgumentError('Cascade.load: draft must be the path of a model file or folder');
    }
    checkPrecision(options.precision);
    checkSignal(options.signal);
    checkInteger('maxContext', options.maxContext, 2, 1 << 20);
    checkInteger('devices', options.devices, 1, 1024);
    checkInteger('draftLayers', options.draftLayers, 1);
    checkInteger('k0', options.k0, 1);
    checkInteger('k1', options.k1, 1, 64);
    checkInteger('maxSequences', options.maxSequences, 1, 1024);
    if (options.k0 !== undefined && options.k1 !== undefined && options.k1 > options.k0) {
      throw new InvalidArgumentError(`k1 (${options.k1}) must not exceed k0 (${options.k0})`);
    }
    if (options.tiny !== undefined && (typeof options.tiny !== 'string' || options.tiny === '')) {
      throw new InvalidArgumentError("Cascade.load: tiny must be a .safetensors path or 'fit'");
    }
    checkInteger('maxDeviceMemory', options.maxDeviceMemory, 1);
    const memoryLimit = deviceMemoryLimit(options.maxDeviceMemory);
    const signal = options.signal;
    const stage = options.onStageForTesting ?? (() => {});
    throwIfAborted(signal);
    // A URL or a catalogue name becomes a file in the cache (downloaded once).
    const fetchModel = async (spec: string) => {
      const onProgress = options.onProgress;
      const report = onProgress && ((p: ResolveProgress) => p.kind === 'bytes' && p.phase === 'download' && onProgress('download', p.received, p.total ?? 0));
      return (await resolveModel(spec, { signal, onProgress: report })).path;
    };
    options = { ...options, target: await fetchModel(options.target), draft: options.draft === undefined ? undefined : await fetchModel(options.draft) };
    stage('tokenizer');
    const tokenizer = await raceAbort(findTokenizer(options.target), signal);
    // The cost model's choice of draft depth is measured once per model file and remembered.
    throwIfAborted(signal);
    const ownsRuntime = options.runtime === undefined;
    if (ownsRuntime) stage('open');
    const runtime = options.runtime ?? (await Runtime.open({ plugin: options.plugin, devices: options.devices, signal }));
    let engine: NativeEngine | undefined;
    try {
      // What killed processes left in the caches goes first (once per process).
      await sweepCacheTemporaries();
      const precision = options.precision === undefined || options.precision === 'auto' ? {} : options.precision;
      const targetPrecision = precision.target ?? 'bf16';
      const draftPrecision = precision.draft ?? 'int8';
      // The cost model's choice of draft depth is measured once per model file and precisions, and remembered.
      const choiceFile =
        options.draft === undefined && options.draftLayers === undefined ? await draftChoicePath(options.target, targetPrecision, draftPrecision) : undefined;
      // A remembered choice that does not parse, or is no positive integer, is measured again.
      const rememberedLayers = choiceFile
        ? await readFile(choiceFile, 'utf8')
            .then((t) => {
              const { layers, candidates, checksum } = JSON.parse(t) as { layers?: unknown; candidates?: unknown; checksum?: unknown };
              if (checksum !== choiceChecksum(layers, candidates)) return undefined;
              return typeof layers === 'number' && Number.isInteger(layers) && layers > 0 ? layers : undefined;
            })
            .catch(() => undefined)
        : undefined;
      const tinyFile =
        options.tiny === 'fit' ? await tinyCachePath(options.target, options.draft, options.draftLayers ?? rememberedLayers, draftPrecision) : undefined;
      throwIfAborted(signal);
      stage('upload');
      const handle = native().loadEngine(
        runtime.nativeClient(),
        {
          target: options.target,
          draft: options.draft,
          targetPrecision,
          draftPrecision,
          maxContext: options.maxContext,
          draftLayers: options.draftLayers ?? rememberedLayers,
          devices: options.devices,
          maxSequences: options.maxSequences,
          k1: options.k1,
          k0: options.k0,
          warmup: options.warmup === true,
          deviceMemoryLimit: memoryLimit,
          ...(tinyFile ? { fitTiny: true, tinyCachePath: tinyFile } : { tiny: options.tiny }),
        },
        options.onProgress,
      );
      // An abort rejects at once; the native load stops at its next stage, and an engine that
      // still arrives is released (nothing stays on the device).
      const unsubscribe = onAbort(signal, () => handle.cancel());
      try {
        engine = (await raceAbort(call(handle.promise), signal)) as NativeEngine;
      } catch (error) {
        if (signal?.aborted) handle.promise.then((late) => (late as NativeEngine).dispose(), () => {});
        throw error;
      } finally {
        unsubscribe();
      }
      throwIfAborted(signal);
      const cascade = new Cascade(engine, tokenizer, runtime, ownsRuntime);
      if (options.measureBandwidth) {
        const gbs = await native().measureBandwidth();
        const m = cascade.info.memory;
        cascade.costModel = {
          bandwidthGBs: gbs,
          targetFloorMs: m.target.weightBytes / (gbs * 1e6),
          draftFloorMs: (m.draft.weightBytes + m.draft.tinyBytes) / (gbs * 1e6),
        };
      }
      if (choiceFile && rememberedLayers === undefined && cascade.info.draftChoice.length) {
        const layers = cascade.info.draft.layers;
        const candidates = cascade.info.draftChoice;
        const record = { layers, candidates, checksum: choiceChecksum(layers, candidates) };
        await writeFileAtomic(choiceFile, `${JSON.stringify(record, null, 2)}\n`).catch(() => {});
        // The tiny fitted for this depth: file it under the depth, where the next load looks.
        if (tinyFile) await copyFile(tinyFile, await tinyCachePath(options.target, undefined, layers, draftPrecision)).catch(() => {});
      }
      throwIfAborted(signal);
      return cascade;
    } catch (error) {
      engine?.dispose();
      if (ownsRuntime) await runtime.close();
      throw error;
    }
  }

  /** True once {@link dispose} has run. */
  get disposed(): boolean {
    return this.#engine === undefined;
  }

  /**
   * Generates a continuation of `prompt` (raw text, or chat messages rendered with the model's
   * chat template).
   */
  async generate(prompt: string | ChatMessage[], options: GenerateOptions = {}): Promise<GenerationResult> {
    let final: GenerationResult | undefined;
    for await (const piece of this.#run(prompt, options, (r) => (final = r), this.#sequenceOf(options))) void piece;
    return final!;
  }

  /**
   * Like {@link generate}, yielding text pieces as tokens are accepted; the generator's return
   * value (what `next()` gives with `done: true`) is the whole result, statistics included.
   */
  async *stream(prompt: string | ChatMessage[], options: GenerateOptions = {}): AsyncGenerator<StreamPiece, GenerationResult, undefined> {
    let final: GenerationResult | undefined;
    yield* this.#run(prompt, options, (r) => (final = r), this.#sequenceOf(options));
    return final!;
  }

  /**
   * A conversation with its own KV cache: each turn sends the whole history through the chat
   * template, and only what the cache has not seen yet is prefilled (see {@link ChatSession}).
   * Several sessions share the model; {@link CascadeLoadOptions.maxSequences} bounds how many keep
   * their caches.
   *
   * @example
   * ```ts
   * const chat = cascade.createChatSession({ systemPrompt: 'You are terse.' });
   * console.log((await chat.prompt('Name a prime number.')).text);
   * console.log((await chat.prompt('And the next one?')).text); // reuses the first turn's cache
   * await chat.dispose();
   * ```
   */
  createChatSession(options: ChatSessionOptions = {}): ChatSession {
    if (!this.#engine) throw new DisposedError('createChatSession: the Cascade has been disposed');
    const cache = this.createConversationCache();
    const id = conversationId(cache, this)!;
    return new ChatSession(
      {
        tokenizer: this.tokenizer,
        run: (messages, generateOptions, done) => this.#run(messages, generateOptions, done, id),
        release: () => cache.dispose(),
      },
      options,
    );
  }

  /**
   * A conversation's own KV caches, for `generate(prompt, { cache })` / `stream(prompt, { cache })`:
   * a prompt that extends what the cache holds prefills only its new tokens (see
   * {@link ConversationCache}). {@link CascadeLoadOptions.maxSequences} bounds how many keep
   * their caches on the device (least recently used first to give them up).
   *
   * @example
   * ```ts
   * const cache = c.createConversationCache();
   * const first = await c.generate(history, { cache });
   * const next = await c.generate([...history, { role: 'assistant', content: first.text }, question], { cache });
   * console.log(next.stats.cachedTokens); // most of the prompt
   * await cache.dispose();
   * ```
   */
  createConversationCache(): ConversationCache {
    if (!this.#engine) throw new DisposedError('createConversationCache: the Cascade has been disposed');
    const id = this.#nextSequence++;
    const cache = new ConversationCache(() => this.#releaseSequence(id));
    registerConversationCache(cache, this, id);
    return cache;
  }

  /** The engine conversation of a call: its cache's, else the default one. */
  #sequenceOf(options: GenerateOptions): number {
    if (options?.cache === undefined) return DEFAULT_SEQUENCE;
    const id = options.cache instanceof ConversationCache ? conversationId(options.cache, this) : undefined;
    if (id === undefined) throw new InvalidArgumentError('generate: cache must be a ConversationCache made by this Cascade');
    return id;
  }

  /** Frees a conversation's caches, in turn behind the calls queued before. */
  async #releaseSequence(id: number): Promise<void> {
    const turn = this.#enqueue();
    try {
      await turn.ready;
      this.#engine?.releaseSequence(id);
    } finally {
      turn.release();
    }
  }

  async *#run(
    prompt: string | ChatMessage[],
    options: GenerateOptions,
    done: (r: GenerationResult) => void,
    sequence: number,
  ): AsyncGenerator<StreamPiece, void, undefined> {
    if (typeof prompt !== 'string' && !Array.isArray(prompt)) {
      throw new InvalidArgumentError('prompt must be a string or an array of chat messages { role, content }');
    }
    checkGenerateOptions(options);
    if (!this.#engine) throw new DisposedError('generate: the Cascade has been disposed');
    logitBiasArrays(options.logitBias, this.info.target.vocabSize);
    throwIfAborted(options.signal);
    if (Array.isArray(prompt) && prompt.some((m) => typeof m?.role !== 'string' || typeof m?.content !== 'string')) {
      throw new InvalidArgumentError('prompt: every chat message needs a string role and a string content');
    }
    const text = typeof prompt === 'string' ? prompt : this.tokenizer.applyChatTemplate(prompt, { addGenerationPrompt: true });
    const ids = typeof prompt === 'string' ? this.tokenizer.encode(text) : this.tokenizer.encode(text, { addBos: false });

    // Wait our turn: one generation at a time per Cascade.
    const turn = this.#enqueue();
    const slot: { native?: Promise<unknown> } = {};
    try {
      await this.#waitTurn(turn.ready, options.signal, 'generate');
      yield* this.#generateNow(ids, options, done, slot, sequence);
    } finally {
      turn.release(slot.native);
    }
  }

  /**
   * Joins the queue. `ready` settles when every earlier call, native work included, has ended;
   * `release(after)` lets the next call go once `after` (this call's native work) has ended too,
   * so a call that rejected early (abort, dispose) never overlaps the native work it started.
   */
  #enqueue(): { ready: Promise<void>; release: (after?: Promise<unknown>) => void } {
    const previous = this.#queue;
    let release!: () => void;
    this.#queue = new Promise<void>((r) => (release = r));
    const ready = previous.then(
      () => {},
      () => {},
    );
    return {
      ready,
      release: (after) => {
        void ready.then(() => after?.catch(() => {})).then(release);
      },
    };
  }

  /** Remembers a native call until it settles (dispose waits for it). */
  #track<T>(native: Promise<T>): Promise<T> {
    this.#inflight.add(native);
    const forget = () => this.#inflight.delete(native);
    native.then(forget, forget);
    return native;
  }

  /** Waits for `ready`, rejecting at once when `signal` fires or the Cascade is disposed. */
  async #waitTurn(ready: Promise<void>, signal: AbortSignal | undefined, what: string): Promise<void> {
    await this.#race(ready, signal, what);
    if (!this.#engine) throw new DisposedError(`${what}: the Cascade has been disposed`);
    throwIfAborted(signal);
  }

  /** Settles with `promise`, or rejects as soon as `signal` fires or {@link dispose} is called. */
  async #race<T>(promise: Promise<T>, signal: AbortSignal | undefined, what: string): Promise<T> {
    const disposing = this.#disposing.signal;
    let reject!: (e: unknown) => void;
    const stopped = new Promise<never>((_, r) => (reject = r));
    const aborted = () => reject(abortReason(signal!));
    const disposed = () => reject(new DisposedError(`${what}: the Cascade was disposed while the call was running`));
    const unsubscribe = [onAbort(signal, aborted), onAbort(disposing, disposed)];
    try {
      if (signal?.aborted) aborted();
      else if (disposing.aborted) disposed();
      return await Promise.race([promise, stopped]);
    } finally {
      for (const u of unsubscribe) u();
      promise.catch(() => {}); // an abandoned native promise must not become an unhandled rejection
    }
  }

  async *#generateNow(
    ids: number[],
    options: GenerateOptions,
    done: (r: GenerationResult) => void,
    slot: { native?: Promise<unknown> },
    sequence: number,
  ): AsyncGenerator<StreamPiece, void, undefined> {
    const engine = this.#engine;
    if (!engine) throw new DisposedError('generate: the Cascade has been disposed');
    abortGenerationsAtExit();
    const signal = options.signal;
    const disposing = this.#disposing.signal;
    throwIfAborted(signal);
    const stops = options.stop ?? [];
    const holdBack = stops.reduce((m, s) => Math.max(m, s.length - 1), 0);
    const decoder = this.tokenizer.decodeStream({ skipSpecialTokens: true });
    let text = '';
    let emitted = 0;
    let stopped = false;
    const tokens: number[] = [];
    const pending: StreamPiece[] = [];
    let wake: (() => void) | undefined;

    const started = performance.now();
    let firstTokenMs = 0;
    const onTokens = (fresh: Int32Array) => {
      if (firstTokenMs === 0 && fresh.length) firstTokenMs = performance.now() - started;
      if (stopped) return;
      const list = Array.from(fresh);
      tokens.push(...list);
      text += decoder.push(list);
      let cut = -1;
      for (const s of stops) {
        const at = text.indexOf(s, Math.max(0, emitted - s.length));
        if (at >= 0 && (cut < 0 || at < cut)) cut = at;
      }
      if (cut >= 0) {
        text = text.slice(0, cut);
        stopped = true;
        engine.cancel();
      }
      const ready = stopped ? text.length : Math.max(emitted, text.length - holdBack);
      if (ready > emitted) {
        pending.push({ text: text.slice(emitted, ready), tokens: list });
        emitted = ready;
      } else if (list.length) {
        pending.push({ text: '', tokens: list });
      }
      wake?.();
    };
    // Abort and dispose end the native generation before its next device call (prefill chunk,
    // draft step or verify) and reject this call at once; the queue waits for the native side.
    const onStop = () => {
      engine.abort();
      wake?.();
    };
    const unsubscribe = [onAbort(signal, onStop), onAbort(disposing, onStop)];
    const interrupted = () => {
      if (signal?.aborted) throw abortReason(signal);
      if (disposing.aborted) throw new DisposedError('generate: the Cascade was disposed during the generation');
    };
    const eos = options.stopAtEos === false ? [] : this.tokenizer.eosIds;
    let finished = false;
    let failure: unknown;
    const run = call(
      engine.generate(
        Int32Array.from(ids),
        {
          // Unset options stay unset: the engine's defaults apply (documented on GenerateOptions).
          mode: options.mode,
          temperature: options.temperature,
          topK: options.topK,
          topP: options.topP,
          minP: options.minP,
          repeatPenalty: options.repeatPenalty,
          presencePenalty: options.presencePenalty,
          frequencyPenalty: options.frequencyPenalty,
          penaltyLastN: options.penaltyLastN,
          ...logitBiasArrays(options.logitBias, this.info.target.vocabSize),
          seed: options.seed,
          maxTokens: options.maxTokens,
          k1: options.k1,
          k0: options.k0,
          dynamicHorizon: options.dynamicHorizon,
          branches: options.branches,
          sequence,
          stopTokens: Int32Array.from(eos),
          brokenAcceptanceForTesting: options.brokenAcceptanceForTesting === true,
        },
        onTokens,
      ),
    ).then(
      (r) => {
        finished = true;
        wake?.();
        return r;
      },
      (e: unknown) => {
        finished = true;
        failure = e;
        wake?.();
        return undefined;
      },
    );
    slot.native = run;
    this.#track(run);
    generating.add(engine);
    void run.then(() => generating.delete(engine));
    try {
      while (!finished || pending.length) {
        interrupted();
        if (pending.length) {
          const piece = pending.shift()!;
          if (piece.text) yield piece;
          // The reader took it: the native side pauses while too much is unread (backpressure).
          engine.consumed(piece.tokens.length);
          continue;
        }
        await new Promise<void>((r) => (wake = r));
        wake = undefined;
      }
      const result = await run;
      interrupted();
      if (failure !== undefined) throw failure;
      // Tokens the thread-safe callback had not delivered yet, and text held back for stop strings.
      const all = Array.from(result!.tokens);
      if (!stopped && all.length > tokens.length) onTokens(Int32Array.from(all.slice(tokens.length)));
      if (!stopped) {
        text += decoder.flush();
        if (text.length > emitted) {
          yield { text: text.slice(emitted), tokens: [] };
          emitted = text.length;
        }
      }
      while (pending.length) {
        const piece = pending.shift()!;
        if (piece.text) yield piece;
      }
      const stats: CascadeStats = {
        ...result!.stats,
        firstTokenMs,
        stopReason: stopped ? 'stop_string' : result!.stats.stopReason,
      };
      this.#accumulate(stats);
      this.lastStats = stats;
      done({ text, tokens: stopped ? tokens : all, stats });
    } finally {
      for (const u of unsubscribe) u();
      // Rejected early, or the consumer stopped iterating: end the native generation before its
      // next device call (the queue waits for it).
      if (!finished) engine.abort();
    }
  }

  /**
   * The target model's next-token logits after each of `tokens`, from an empty context:
   * `logits[i * vocab + v]`. Queued like {@link generate}. An abort (or {@link dispose}) rejects at
   * once; the native pass in flight finishes first in the background.
   *
   * @example
   * ```ts
   * const ids = c.tokenizer.encode('The capital of France is');
   * const logits = await c.evaluate(ids);
   * ```
   */
  async evaluate(tokens: readonly number[], options: { signal?: AbortSignal } = {}): Promise<Float32Array> {
    if (!this.#engine) throw new DisposedError('evaluate: the Cascade has been disposed');
    if (!Array.isArray(tokens) || tokens.some((t) => !Number.isInteger(t))) {
      throw new InvalidArgumentError('evaluate: tokens must be an array of integer token ids');
    }
    if (options === null || typeof options !== 'object') throw new InvalidArgumentError('evaluate: options must be an object');
    checkSignal(options.signal);
    const vocab = this.info.target.vocabSize;
    const bad = tokens.find((t) => t < 0 || t >= vocab);
    if (bad !== undefined) throw new InvalidArgumentError(`evaluate: token id ${bad} is outside the vocabulary (0..${vocab - 1})`);
    throwIfAborted(options.signal);
    const turn = this.#enqueue();
    let native: Promise<Float32Array> | undefined;
    try {
      await this.#waitTurn(turn.ready, options.signal, 'evaluate');
      native = this.#track(call(this.#engine!.evaluate(Int32Array.from(tokens))));
      return await this.#race(native, options.signal, 'evaluate');
    } finally {
      turn.release(native);
    }
  }

  #accumulate(s: CascadeStats): void {
    const t = this.stats;
    for (const k of ['promptTokens', 'cachedTokens', 'generatedTokens', 'targetCalls', 'draftCalls', 'proposed', 'attempted', 'accepted', 'totalMs'] as const) t[k] += s[k];
    for (const k of Object.keys(t.stageMs) as (keyof StageTimes)[]) t.stageMs[k] += s.stageMs[k];
    t.tau = t.targetCalls ? t.generatedTokens / t.targetCalls : 0;
    t.gamma21 = t.attempted ? t.accepted / t.attempted : 0;
    t.gammaTotal = t.proposed ? t.accepted / t.proposed : 0;
    const ms = t.totalMs - t.stageMs.prefill - t.stageMs.compile;
    t.tokensPerSecond = ms > 0 ? (t.generatedTokens * 1000) / ms : 0;
    t.stopReason = s.stopReason;
    for (const k of ['target', 'speculative', 'cascade'] as const) t.rounds[k] += s.rounds[k];
    t.predictedSpeedup = s.predictedSpeedup;
    t.measuredSpeedup = s.measuredSpeedup;
    t.meanProposalLength = s.meanProposalLength;
    t.firstTokenMs = s.firstTokenMs;
  }

  /**
   * Where each model lives: device, memory kind, bytes and share of capacity, and the tiny's bytes
   * against the CPU caches (see {@link PlacementReport}).
   *
   * @example
   * ```ts
   * const p = await c.placement();
   * for (const m of p.models) console.log(m.model, m.memoryKind, m.bytes, m.share);
   * ```
   */
  async placement(): Promise<PlacementReport> {
    if (!this.#engine) throw new DisposedError('placement: the Cascade has been disposed');
    return placementReport(this.info.memory, this.runtime.devices, this.runtime.platform, (d) => this.runtime.memoryStats(d));
  }

  /**
   * Releases the models and closes the runtime it opened. A generation in flight and the calls
   * queued behind it reject with {@link DisposedError} at once; the native work stops before its
   * next device call, and the models are released after it. Later calls throw
   * {@link DisposedError}. Idempotent.
   */
  async dispose(): Promise<void> {
    const engine = this.#engine;
    if (!engine) return;
    this.#engine = undefined;
    this.#disposing.abort();
    // Wait for the native work in flight (it stops before its next device call), not for the
    // callers: a stream whose consumer stopped reading never runs its cleanup, and must not
    // keep dispose from settling.
    await Promise.allSettled([...this.#inflight]);
    engine.dispose();
    if (this.#ownsRuntime) await this.runtime.close();
  }

  /** Same as {@link dispose}, for `await using c = await Cascade.load(...)`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}
