/**
 * `Cascade`: load a target model (and optionally a draft and a tiny model) and generate text with
 * target-only, speculative (draft -> target) or cascaded decoding. The output is exactly the
 * target's: identical tokens at temperature 0, the same distribution when sampling.
 * @module
 */
import { copyFile, readFile } from 'node:fs/promises';

import { DisposedError, InvalidArgumentError } from '../errors.js';
import { call, callSync, native, nativeGenerateFields, type NativeEngine } from '../native.js';
import { resolveModel, type ResolveProgress } from '../models/catalog.js';
import { Runtime } from '../runtime/runtime.js';
import type { Tokenizer, ChatMessage } from '../tokenizer/index.js';
import { ChatSession, type ChatSessionOptions } from './chat-session.js';
import { ConversationCache, conversationId, registerConversationCache } from './conversation-cache.js';
import { choiceChecksum, draftChoicePath, findTokenizer, rememberedDraftLayers, tinyCachePath, writeFileAtomic } from './model-files.js';
import { tinyFitPrompts } from './tiny-fit-prompts.js';
import { checkGenerateOptions, checkInteger, checkKvCache, checkPrecision, checkTargetStorage, checkProposal, checkSignal, deviceMemoryLimit, emptyStats, logitBiasArrays } from './options.js';
import { placementReport, type PlacementReport } from './placement.js';
import { StopStringStream } from './text-stream.js';
import type { CascadeLoadOptions, CascadeStats, GenerateOptions, GenerationResult, StageTimes, StreamPiece } from './types.js';
import { abortReason, onAbort, raceAbort, throwIfAborted } from '../utils/abort.js';
import { sweepCacheTemporaries } from '../utils/cache.js';

export type {
  CascadeLoadOptions,
  CascadeStats,
  DecodeMode,
  GenerateOptions,
  GenerationResult,
  ModelInfo,
  Precision,
  KvCacheType,
  StageTimes,
  StreamPiece,
} from './types.js';


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
   * W_i (the weight bytes a step reads, `info.memory.*.stepBytes`), BW_i (this machine's memory read bandwidth, GB/s) and the
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
    checkKvCache(options.kvCache);
    checkTargetStorage(options.targetStorage);
    checkSignal(options.signal);
    checkInteger('maxContext', options.maxContext, 2, 1 << 20);
    checkInteger('devices', options.devices, 1, 1024);
    checkInteger('draftLayers', options.draftLayers, 1);
    checkProposal(options);
    checkInteger('maxSequences', options.maxSequences, 1, 1024);
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
      const targetPrecision = precision.target ?? native().engineDefaults.targetPrecision;
      const draftPrecision = precision.draft ?? native().engineDefaults.draftPrecision;
      // The cost model's choice of draft depth is measured once per model file and precisions, and remembered.
      const choiceFile =
        options.draft === undefined && options.draftLayers === undefined ? await draftChoicePath(options.target, targetPrecision, draftPrecision, options.targetStorage) : undefined;
      // A remembered choice that does not parse, or is no positive integer, is measured again.
      const rememberedLayers = choiceFile ? await rememberedDraftLayers(choiceFile) : undefined;
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
          targetStorage: options.targetStorage,
          ...(options.kvCache === undefined || options.kvCache === 'auto'
            ? {}
            : { targetKvCache: options.kvCache.target, draftKvCache: options.kvCache.draft }),
          maxContext: options.maxContext,
          draftLayers: options.draftLayers ?? rememberedLayers,
          devices: options.devices,
          maxSequences: options.maxSequences,
          k1: options.k1,
          k0: options.k0,
          warmup: options.warmup === true,
          deviceMemoryLimit: memoryLimit,
          ...(tinyFile ? { fitTiny: true, tinyCachePath: tinyFile, tinyFitPrompts: tinyFitPrompts(tokenizer) } : { tiny: options.tiny }),
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
          targetFloorMs: m.target.stepBytes / (gbs * 1e6),
          draftFloorMs: (m.draft.stepBytes + m.draft.tinyBytes) / (gbs * 1e6),
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
    const text = new StopStringStream(this.tokenizer.decodeStream({ skipSpecialTokens: true }), options.stop ?? []);
    const pending: StreamPiece[] = [];
    let wake: (() => void) | undefined;

    const started = performance.now();
    let firstTokenMs = 0;
    const onTokens = (fresh: Int32Array) => {
      if (firstTokenMs === 0 && fresh.length) firstTokenMs = performance.now() - started;
      if (text.stopped) return;
      const piece = text.push(Array.from(fresh));
      if (text.stopped) engine.cancel();
      if (piece.text || piece.tokens.length) pending.push(piece);
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
    const native = this.#startNative(engine, ids, options, sequence, onTokens, () => wake?.());
    const run = native.run;
    slot.native = run;
    try {
      while (!native.finished || pending.length) {
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
      if (native.failure !== undefined) throw native.failure;
      // Tokens the thread-safe callback had not delivered yet, and text held back for stop strings.
      const all = Array.from(result!.tokens);
      if (!text.stopped && all.length > text.tokens.length) onTokens(Int32Array.from(all.slice(text.tokens.length)));
      while (pending.length) {
        const piece = pending.shift()!;
        if (piece.text) yield piece;
      }
      const rest = text.flush();
      if (rest) yield { text: rest, tokens: [] };
      const stats: CascadeStats = {
        ...result!.stats,
        firstTokenMs,
        stopReason: text.stopped ? 'stop_string' : result!.stats.stopReason,
      };
      this.#accumulate(stats);
      this.lastStats = stats;
      done({ text: text.text, tokens: text.stopped ? text.tokens : all, stats });
    } finally {
      for (const u of unsubscribe) u();
      // Rejected early, or the consumer stopped iterating: end the native generation before its
      // next device call (the queue waits for it).
      if (!native.finished) engine.abort();
    }
  }

  /**
   * Starts the native generation: the options as the engine takes them, tracked for dispose and
   * process exit. `run` settles with the result (undefined on failure, then in `failure`);
   * `finished` turns true when it settles, and `settled` is called then.
   */
  #startNative(
    engine: NativeEngine,
    ids: number[],
    options: GenerateOptions,
    sequence: number,
    onTokens: (fresh: Int32Array) => void,
    settled: () => void,
  ): { run: Promise<Awaited<ReturnType<NativeEngine['generate']>> | undefined>; readonly finished: boolean; readonly failure: unknown } {
    const eos = options.stopAtEos === false ? [] : this.tokenizer.eosIds;
    const state = { finished: false, failure: undefined as unknown };
    const run = call(
      engine.generate(
        Int32Array.from(ids),
        {
          // Unset options stay unset: the engine's defaults apply (documented on GenerateOptions).
          ...nativeGenerateFields(options),
          ...logitBiasArrays(options.logitBias, this.info.target.vocabSize),
          sequence,
          stopTokens: Int32Array.from(eos),
          brokenAcceptanceForTesting: options.brokenAcceptanceForTesting === true,
        },
        onTokens,
      ),
    ).then(
      (r) => {
        state.finished = true;
        settled();
        return r;
      },
      (e: unknown) => {
        state.finished = true;
        state.failure = e;
        settled();
        return undefined;
      },
    );
    this.#track(run);
    generating.add(engine);
    void run.then(() => generating.delete(engine));
    return {
      run,
      get finished() {
        return state.finished;
      },
      get failure() {
        return state.failure;
      },
    };
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
    for (const k of ['promptTokens', 'cachedTokens', 'generatedTokens', 'targetCalls', 'draftCalls', 'lookaheadGuesses', 'lookaheadHits', 'proposed', 'attempted', 'accepted', 'totalMs'] as const) t[k] += s[k];
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
    t.proposalLength = s.proposalLength;
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
