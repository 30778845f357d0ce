/**
 * Validation of {@link Cascade}'s options (typed errors that name the option) and the empty
 * statistics. Defaults are not here: they live in the engine's option structs (cpp/cascade/engine.h).
 * @internal
 * @module
 */
import { InvalidArgumentError } from '../errors.js';
import type { Cascade } from './cascade.js';
import { type CascadeStats, type DecodeMode, type GenerateOptions, KV_CACHE_TYPES, PRECISIONS } from './types.js';

const MODES: readonly DecodeMode[] = ['target', 'speculative', 'cascade', 'auto'];

export function checkInteger(name: string, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new InvalidArgumentError(`${name} must be an integer in ${min}..${max}, got ${String(v)}`);
  }
}

/** `k0` and `k1` (of a load, as the generations' defaults, or of one generation): K1 <= K0. */
export function checkProposal(o: { k0?: number | undefined; k1?: number | undefined }): void {
  checkInteger('k0', o.k0, 1);
  checkInteger('k1', o.k1, 1, 64);
  if (o.k0 !== undefined && o.k1 !== undefined && o.k1 > o.k0) {
    throw new InvalidArgumentError(`k1 (${o.k1}) must not exceed k0 (${o.k0})`);
  }
}

/** The device memory limit: the option, else `CASCADE_DEVICE_MEMORY_LIMIT` (bytes), else none (0). */
export function deviceMemoryLimit(option: number | undefined): number {
  if (option !== undefined) return option;
  const env = process.env['CASCADE_DEVICE_MEMORY_LIMIT'];
  if (env === undefined || env.trim() === '') return 0;
  const bytes = Number(env);
  if (!Number.isSafeInteger(bytes) || bytes < 1) {
    throw new InvalidArgumentError(`CASCADE_DEVICE_MEMORY_LIMIT must be a positive integer number of bytes, got ${JSON.stringify(env)}`);
  }
  return bytes;
}

export function checkSignal(signal: unknown): void {
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new InvalidArgumentError('signal must be an AbortSignal');
}


/** A per-model option (`precision`, `kvCache`): 'auto', or { target?, draft? } with values from `allowed`. */
function checkPerModel(name: string, v: unknown, allowed: readonly string[]): void {
  if (v === undefined || v === 'auto') return;
  if (typeof v !== 'object' || v === null) {
    throw new InvalidArgumentError(`${name} must be 'auto' or { target?, draft? } with ${allowed.map((x) => `'${x}'`).join(' | ')}, got ${JSON.stringify(v)}`);
  }
  for (const key of ['target', 'draft'] as const) {
    const value = (v as Record<string, unknown>)[key];
    if (value !== undefined && !allowed.includes(value as string)) {
      throw new InvalidArgumentError(`${name}.${key} must be one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`);
    }
  }
}

export function checkPrecision(p: unknown): void {
  checkPerModel('precision', p, PRECISIONS);
}

export function checkKvCache(c: unknown): void {
  checkPerModel('kvCache', c, KV_CACHE_TYPES);
}

export function checkTargetStorage(s: unknown): void {
  if (s !== undefined && s !== 'auto' && s !== 'dense') throw new InvalidArgumentError(`targetStorage must be 'auto' or 'dense', got ${String(s)}`);
}

export function checkNumber(name: string, v: unknown, ok: (v: number) => boolean, expected: string): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !ok(v)) throw new InvalidArgumentError(`${name} must be ${expected}, got ${String(v)}`);
}

/** Checks `logitBias` against the vocabulary and returns it as the native side's two arrays. */
export function logitBiasArrays(bias: unknown, vocabSize: number): { logitBiasIds?: Int32Array; logitBiasValues?: Float64Array } {
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

export function checkGenerateOptions(o: GenerateOptions): void {
  if (o === null || typeof o !== 'object') throw new InvalidArgumentError('generate: options must be an object');
  checkSignal(o.signal);
  checkInteger('maxTokens', o.maxTokens, 0);
  checkInteger('topK', o.topK, 0);
  checkInteger('seed', o.seed, 0);
  checkProposal(o);
  checkInteger('branches', o.branches, 1, 16);
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

export function emptyStats(): CascadeStats {
  return {
    promptTokens: 0,
    cachedTokens: 0,
    firstTokenMs: 0,
    generatedTokens: 0,
    targetCalls: 0,
    draftCalls: 0,
    lookaheadGuesses: 0,
    lookaheadHits: 0,
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
    proposalLength: 0,
    tokensPerSecond: 0,
    stopReason: '',
  };
}
