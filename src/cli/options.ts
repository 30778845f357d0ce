/** Options shared by several commands. @internal @module */
import { type Command, Option } from 'commander';

import type { DecodeMode, GenerateOptions } from '../cascade/cascade.js';
import { KV_CACHE_TYPES, PRECISIONS } from '../cascade/types.js';
import { type NativeAddon, native } from '../native.js';

export const pluginOption = () =>
  new Option('--plugin <plugin>', "PJRT plugin: 'cpu', 'cuda', 'tpu' or a path to a plugin .so (CASCADE_PJRT_PLUGIN overrides 'cpu')").default('cpu');

export const devicesOption = () =>
  new Option('--devices <n>', 'number of devices (CPU plugin: how many CPU devices to create)').argParser(positiveInteger('--devices'));

/**
 * The library's defaults (owned by the native engine) for help texts and flag defaults; undefined
 * when the addon cannot load (then `--help` still works and the library applies its own).
 */
export function engineDefaults(): NativeAddon['engineDefaults'] | undefined {
  try {
    return native().engineDefaults;
  } catch {
    return undefined;
  }
}

/** The default proposal length (k1) as help text: greedy and sampling generations differ. */
export function k1Default(): string {
  const d = engineDefaults();
  return d ? `${d.k1} at temperature 0, ${d.k1Sampled} when sampling` : '12 at temperature 0, 6 when sampling';
}

export function positiveInteger(flag: string): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} must be a positive integer, got '${v}'`);
    return n;
  };
}

export function nonNegativeInteger(flag: string): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`${flag} must be an integer >= 0, got '${v}'`);
    return n;
  };
}

export function positiveNumber(flag: string): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`${flag} must be a positive number, got '${v}'`);
    return n;
  };
}

export function nonNegativeNumber(flag: string): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${flag} must be a number >= 0, got '${v}'`);
    return n;
  };
}

/**
 * The options that say which models to load and how (run, demo, chat, serve): --model, --draft,
 * --tiny, --devices, --draft-layers, --target-precision, --draft-precision, --target-storage,
 * --target-kv-cache, --draft-kv-cache, --plugin.
 */
export function addModelOptions(cmd: Command): Command {
  return cmd
    .option('--model <model>', 'target model: a GGUF file, a Hugging Face folder, an http(s) URL of a GGUF file or a catalogue name (default: SmolLM2-135M-Instruct, downloaded once)')
    .option('--draft <model>', "draft model with the same vocabulary, given like --model (default: the target's first layers)")
    .option('--tiny <path>', "tiny model for --mode cascade: a .safetensors file, or 'fit' to fit one from the draft (cached)")
    .option('--devices <n>', 'devices the target is replicated on; branches are split across them', positiveInteger('--devices'), 1)
    .option('--draft-layers <n>', 'layers of the self-speculative draft', positiveInteger('--draft-layers'))
    .addOption(new Option('--target-precision <p>', 'target weights on the device').choices(PRECISIONS))
    .addOption(new Option('--draft-precision <p>', 'draft weights on the device').choices(PRECISIONS))
    .addOption(new Option('--target-storage <s>', "how a bf16 target's weights are stored (auto: a 4-bit GGUF's own blocks where our CPU kernels run, the fastest target; dense: two bytes per weight, as a bf16 checkpoint is)").choices(['auto', 'dense']))
    .addOption(new Option('--target-kv-cache <t>', "the target's KV cache element type (bf16: half the memory, faster at long contexts; default: bf16 for a bf16 target, f32 for f32 / int8 / q4 weights)").choices(KV_CACHE_TYPES))
    .addOption(new Option('--draft-kv-cache <t>', "the draft's KV cache element type (default: f32 on the CPU plugin, bf16 on others unless its weights are f32)").choices(KV_CACHE_TYPES))
    .addOption(pluginOption());
}

/** The decoding flags as commander parses them ({@link addDecodingOptions}). */
export interface DecodingFlags {
  mode: DecodeMode;
  /** Undefined only when the addon cannot load (no default to show). */
  k1?: number;
  k0?: number;
  /** Only on commands that offer --branches and --dynamic. */
  branches?: number;
  dynamic?: boolean;
  /** --no-lookahead sets it false. */
  lookahead?: boolean;
}

/**
 * How tokens are proposed (run, demo, chat, serve): --mode (default `mode`), --k1, --k0, and where
 * `branches` is set, --branches and --dynamic. Read them with {@link decodingFromFlags}.
 */
export function addDecodingOptions(cmd: Command, defaults: { mode: DecodeMode; branches: boolean }): Command {
  cmd
    .addOption(new Option('--mode <mode>', "decoding mode (all give the target's output; they differ in speed)").choices(['target', 'speculative', 'cascade', 'auto']).default(defaults.mode))
    .option('--k1 <n>', `draft proposals per target call${defaults.branches ? ' (the most, with --dynamic)' : ''} (default: ${k1Default()})`, positiveInteger('--k1'))
    .option('--k0 <n>', 'tiny candidates per draft step (cascade mode)', positiveInteger('--k0'), engineDefaults()?.k0)
    .option('--no-lookahead', "do not compute a guessed draft step ahead (the same output; it only changes the speed)");
  if (!defaults.branches) return cmd;
  return cmd
    .option('--branches <n>', 'proposal branches per step, verified as a tree in one target call', positiveInteger('--branches'), 1)
    .option('--dynamic', 'choose the proposal length per step from the cost model');
}

/** The flags of {@link addDecodingOptions} as generation options. */
export function decodingFromFlags(opts: DecodingFlags): Pick<GenerateOptions, 'mode' | 'k1' | 'k0' | 'branches' | 'dynamicHorizon' | 'lookahead'> {
  return {
    mode: opts.mode,
    k1: opts.k1,
    k0: opts.k0,
    ...(opts.branches === undefined ? {} : { branches: opts.branches }),
    ...(opts.dynamic ? { dynamicHorizon: true } : {}),
    ...(opts.lookahead === false ? { lookahead: false } : {}),
  };
}

/** The sampling flags as commander parses them ({@link addSamplingOptions}). */
export interface SamplingFlags {
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
}

/** How each token is drawn (run, demo, chat): --temperature, --top-k, --top-p, --seed. Read them with {@link samplingFromFlags}. */
export function addSamplingOptions(cmd: Command): Command {
  return cmd
    .option('--temperature <t>', '0 is greedy', nonNegativeNumber('--temperature'), 0)
    .option('--top-k <k>', 'keep the k most likely tokens (0 = off)', nonNegativeNumber('--top-k'), 0)
    .option('--top-p <p>', 'nucleus sampling threshold (1 = off)', nonNegativeNumber('--top-p'), 1)
    .option('--seed <n>', 'sampler seed', nonNegativeNumber('--seed'), 0);
}

/** The flags of {@link addSamplingOptions} as generation options. */
export function samplingFromFlags(opts: SamplingFlags): Pick<GenerateOptions, keyof SamplingFlags> {
  return { temperature: opts.temperature, topK: opts.topK, topP: opts.topP, seed: opts.seed };
}
