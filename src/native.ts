/**
 * Loads the N-API addon (a prebuild from `prebuilds/` or the local `build/Release`) and turns the
 * plain errors it rejects with into the typed classes of `errors.ts`.
 * @internal
 * @module
 */
import type { Cascade } from './cascade/cascade.js';
import type { CascadeLoadOptions, CascadeStats, GenerateOptions, KvCacheType, ModelInfo, Precision } from './cascade/types.js';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  CascadeError,
  DisposedError,
  InvalidArgumentError,
  ModelFormatError,
  OutOfMemoryError,
  PjrtError,
  PluginIncompatibleError,
  PluginNotFoundError,
} from './errors.js';

/** Root of the installed package (the folder holding package.json). */
export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** @internal A tensor as the addon reads and writes it. */
export interface NativeTensor {
  dtype: string;
  shape: number[];
  data: ArrayBufferView;
}

/** @internal */
export interface NativeTensorType {
  dtype: string;
  shape: number[];
}

/** @internal */
export interface NativeExecutable {
  execute(perDevice: NativeTensor[][]): Promise<NativeTensor[][]>;
  signature(): { parameters: NativeTensorType[]; results: NativeTensorType[]; deviceIndices: number[]; replicas: number };
  dispose(): void;
}

/** @internal */
export interface NativeClientInfo {
  pluginPath: string;
  apiVersion: { major: number; minor: number };
  headerApiVersion: { major: number; minor: number };
  platform: string;
  platformVersion: string;
  attributes: Record<string, string>;
  extensions: string[];
  devices: Array<{
    index: number;
    id: number;
    kind: string;
    localHardwareId: number;
    description: string;
    memories: Array<{ id: number; kind: string; isDefault: boolean }>;
  }>;
}

/** @internal */
export interface NativeClient {
  info(): NativeClientInfo;
  compile(text: string, replicas: number): Promise<NativeExecutable>;
  memoryStats(deviceIndex: number): { bytesInUse: number; peakBytesInUse?: number; bytesLimit?: number } | null;
  close(): void;
}

/**
 * What `loadEngine` reads (binding/load_engine.cc -> EngineLoadOptions in cpp/cascade/loading.h):
 * these {@link CascadeLoadOptions} under the same names and meanings, plus what {@link Cascade.load}
 * resolves from the others. A missing field keeps the C++ struct's default, the one place
 * defaults live.
 * @internal
 */
export interface NativeLoadOptions
  extends Pick<CascadeLoadOptions, 'target' | 'draft' | 'tiny' | 'maxContext' | 'draftLayers' | 'devices' | 'maxSequences' | 'k1' | 'k0' | 'warmup' | 'targetStorage'> {
  /** `precision`, resolved per model. */
  targetPrecision?: Precision;
  draftPrecision?: Precision;
  /** `kvCache` per model (unset: the plugin's default). */
  targetKvCache?: KvCacheType;
  draftKvCache?: KvCacheType;
  /** `tiny: 'fit'`: fit one in closed form, read from / saved to `tinyCachePath` when set (instead of `tiny`). */
  fitTiny?: boolean;
  tinyCachePath?: string;
  /** The fit's text starts from these token ids, in turn (src/cascade/tiny-fit-prompts.ts). */
  tinyFitPrompts?: Int32Array[];
  /** `maxDeviceMemory`, resolved (0: what the device reports). */
  deviceMemoryLimit?: number;
}

/**
 * The {@link GenerateOptions} that `NativeEngine.generate` reads under the same names and
 * meanings (binding/native_engine.cc -> GenerateOptions / SamplingParams in cpp/cascade/engine.h
 * and distribution.h); a missing one keeps those structs' default.
 * @internal
 */
export const NATIVE_GENERATE_FIELDS = [
  'mode',
  'maxTokens',
  'temperature',
  'topK',
  'topP',
  'minP',
  'repeatPenalty',
  'presencePenalty',
  'frequencyPenalty',
  'penaltyLastN',
  'seed',
  'k1',
  'k0',
  'dynamicHorizon',
  'lookahead',
  'branches',
  'brokenAcceptanceForTesting',
] as const satisfies readonly (keyof GenerateOptions)[];

/** @internal The fields of {@link NATIVE_GENERATE_FIELDS}. */
export type NativeGenerateFields = Pick<GenerateOptions, (typeof NATIVE_GENERATE_FIELDS)[number]>;

/** @internal The {@link NATIVE_GENERATE_FIELDS} of `options` (unset ones stay unset). */
export function nativeGenerateFields(options: GenerateOptions): NativeGenerateFields {
  return Object.fromEntries(NATIVE_GENERATE_FIELDS.map((key) => [key, options[key]])) as NativeGenerateFields;
}

/**
 * What `NativeEngine.generate` reads: {@link NATIVE_GENERATE_FIELDS}, plus what {@link Cascade}
 * converts from the other options.
 * @internal
 */
export interface NativeGenerateOptions extends NativeGenerateFields {
  /** `logitBias` as two parallel arrays (ids checked against the vocabulary). */
  logitBiasIds?: Int32Array;
  logitBiasValues?: Float64Array;
  /** The conversation whose KV caches to continue, from `cache` (0: plain generate calls). */
  sequence?: number;
  /** The end-of-generation token ids (`stopAtEos`; stop strings stay in TypeScript). */
  stopTokens?: Int32Array;
}

/** @internal */
export interface NativeAddon {
  openClient(pluginPath: string, options: { cpuDeviceCount?: number }): Promise<NativeClient>;
  loadEngine(
    client: NativeClient,
    options: NativeLoadOptions,
    onProgress?: (stage: 'fit' | 'compile', done: number, total: number) => void,
  ): { promise: Promise<unknown>; cancel(): void };
  distillTiny(client: NativeClient, options: object, onProgress?: (phase: string, done: number, total: number) => void): { promise: Promise<unknown>; cancel(): void };
  /** What distillTiny uses for an option it is not given (the C++ DistillOptions own these defaults). */
  distillDefaults: { positions: number; hidden: number; steps: number; batch: number; learningRate: number };
  pjrtHeaderVersion: string;
  measureBandwidth(): Promise<number>;
  /** What a load uses for an option it is not given (the C++ EngineOptions own these defaults). */
  engineDefaults: { targetPrecision: Precision; draftPrecision: Precision; maxContext: number; maxSequences: number; k1: number; k1Sampled: number; k0: number };
}

/**
 * The native addon could not be loaded: no binary fits this machine, or the one found fails to
 * load (built for a newer glibc, damaged, not the cascade-xla addon). `file` is the binary that
 * was tried, when there was one; the message says how to get a working one.
 * @internal Exported from the package root as soon as `index.ts` re-exports it.
 */
export class NativeAddonError extends CascadeError {
  /** The `.node` file that failed to load; undefined when none was found. */
  readonly file: string | undefined;
  constructor(message: string, file: string | undefined, options?: ErrorOptions) {
    super(message, options);
    this.file = file;
  }
}

const REBUILD =
  'Run `npm rebuild cascade-xla` (it uses a prebuilt binary when one loads here, else builds from source: ' +
  'needs cmake >= 3.18, a C++17 compiler and python3 with pip), or force a source build with ' +
  '`CASCADE_BUILD_FROM_SOURCE=1 npm rebuild cascade-xla`. See docs/troubleshooting.md.';

function firstLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.split('\n')[0]!.trim();
}

function loadHint(message: string): string {
  if (/GLIBC_|GLIBCXX_|CXXABI_/.test(message)) return ' It needs a newer C/C++ runtime library than this system has.';
  if (/invalid ELF header|file too short|wrong ELF class/i.test(message)) return ' The file is damaged or built for another platform.';
  return '';
}

let addon: NativeAddon | undefined;

/**
 * @internal Loads the addon once (node-gyp-build: `build/Release`, then
 * `prebuilds/<platform>-<arch>/*.node`).
 * @throws NativeAddonError when there is none, or it does not load.
 */
export function native(): NativeAddon {
  if (addon) return addon;
  const require = createRequire(import.meta.url);
  const load = require('node-gyp-build') as { resolve(dir: string): string };
  let file: string;
  try {
    file = load.resolve(packageRoot);
  } catch (cause) {
    throw new NativeAddonError(
      `cascade-xla's native addon is missing: no prebuilt binary for ${process.platform}-${process.arch} in ` +
        `${path.join(packageRoot, 'prebuilds')} and no source build in ${path.join(packageRoot, 'build', 'Release')}. ${REBUILD}`,
      undefined,
      { cause },
    );
  }
  let loaded: Partial<NativeAddon>;
  try {
    loaded = require(file) as Partial<NativeAddon>;
  } catch (cause) {
    // dlopen's message starts with the file name, which the message below already says.
    const why = firstLine(cause).replace(`${file}: `, '');
    throw new NativeAddonError(
      `cascade-xla's native addon ${file} failed to load: ${why}.${loadHint(why)} ${REBUILD}`,
      file,
      { cause },
    );
  }
  if (typeof loaded.openClient !== 'function' || typeof loaded.pjrtHeaderVersion !== 'string') {
    throw new NativeAddonError(
      `${file} loaded but is not cascade-xla's native addon (it lacks openClient / pjrtHeaderVersion). ${REBUILD}`,
      file,
    );
  }
  addon = loaded as NativeAddon;
  return addon;
}

/** @internal Maps an error rejected by the addon to its typed class. */
export function typedError(error: unknown): Error {
  if (!(error instanceof Error)) return new CascadeError(String(error));
  if (error instanceof CascadeError) return error;
  const kind = (error as { kind?: string }).kind;
  const options = { cause: error };
  switch (kind) {
    case 'PjrtError':
      return new PjrtError(error.message, (error as { pjrtCode?: number }).pjrtCode ?? 2, options);
    case 'PluginNotFoundError':
      return new PluginNotFoundError(error.message, options);
    case 'PluginIncompatibleError':
      return new PluginIncompatibleError(error.message, options);
    case 'InvalidArgumentError':
      return new InvalidArgumentError(error.message, options);
    case 'DisposedError':
      return new DisposedError(error.message, options);
    case 'ModelFormatError':
      return new ModelFormatError(error.message, options);
    case 'OutOfMemoryError':
      return new OutOfMemoryError(error.message, options);
    case 'AbortError':
      // Native work stopped by a cancel (callers that hold the AbortSignal rethrow its reason).
      return new DOMException(error.message, 'AbortError');
    default:
      return new CascadeError(error.message, options);
  }
}

/** @internal Awaits a native promise, rethrowing typed errors. */
export async function call<T>(promise: Promise<T>): Promise<T> {
  try {
    return await promise;
  } catch (error) {
    throw typedError(error);
  }
}

/** @internal Runs a synchronous native call, rethrowing typed errors. */
export function callSync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (error) {
    throw typedError(error);
  }
}

/**
 * A loaded engine (binding/native_engine.cc).
 * @internal
 */
export interface NativeEngine {
  info(): {
    target: ModelInfo;
    draft: ModelInfo;
    targetWeightBytes: number;
    draftWeightBytes: number;
    targetPrecision: Precision;
    /**
     * How the target's weights are stored: 'dense' (as its precision says), or 'q4-blocks' (a bf16
     * target whose layer weights are 4-bit block values, e.g. a Q4_1 GGUF's, kept as those blocks
     * and expanded to bf16 in our CPU kernels: the same model bit for bit, ~2.2x fewer bytes a
     * step; chosen by the load where it applies).
     */
    targetStorage: 'dense' | 'q4-blocks';
    draftPrecision: Precision;
    /** Element type of each model's KV cache (the load's `kvCache`, or the plugin's default). */
    targetKvCache: KvCacheType;
    draftKvCache: KvCacheType;
    maxContext: number;
    /** Devices the target is replicated on. */
    devices: number;
    /** Conversations whose KV caches stay resident (the load's `maxSequences`). */
    maxSequences: number;
    hasTiny: boolean;
    /**
     * Device memory per model: weights, KV cache and (draft) the tiny model, in bytes; the weight
     * bytes a one-token step reads (`stepBytes`: the lookup embedding reads a row); and of the
     * weights and of the tiny, the bytes in 2 MiB pages (`hugePageBytes`, `tinyHugePageBytes`: CPU
     * plugin on Linux 6.1+, else 0; `CASCADE_NO_HUGE_PAGES` turns it off).
     */
    memory: Record<
      'target' | 'draft',
      {
        weightBytes: number;
        kvCacheBytes: number;
        tinyBytes: number;
        stepBytes: number;
        hugePageBytes: number;
        tinyHugePageBytes: number;
      }
    >;
    /**
     * How the self-speculative draft's depth was chosen when `draftLayers` was not given: per
     * candidate depth, the greedy agreement with the target on calibration text, the estimated
     * step cost relative to the target, and the cost model's predicted speedup (the best is used).
     */
    draftChoice: { layers: number; agreement: number; relativeCost: number; predictedSpeedup: number }[];
  };
  generate(prompt: Int32Array, options: NativeGenerateOptions, onTokens?: (ids: Int32Array) => void): Promise<{ tokens: Int32Array; stats: CascadeStats }>;
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
