/**
 * Fitting the tiny projection model (stage 0) for a draft.
 * @module
 */
import { InvalidArgumentError } from '../errors.js';
import { call, native } from '../native.js';
import { Runtime } from '../runtime/runtime.js';
import { abortReason, onAbort, throwIfAborted } from '../utils/abort.js';
import type { Precision } from './cascade.js';
import { findTokenizer } from './model-files.js';
import { tinyFitPrompts } from './tiny-fit-prompts.js';

/** Options of {@link distillTiny}. */
export interface DistillOptions {
  /** The target model (it writes the training text: what the cascade will commit). */
  target: string;
  /** A draft model; default: the target's first `draftLayers` layers (self-speculative). */
  draft?: string;
  /** Layers of the self-speculative draft (default: a quarter of the target's). */
  draftLayers?: number;
  /** Where to write the tiny model (`.safetensors`, the cascade-xla tiny format). */
  out: string;
  /** Positions of generated text to fit on (20% are held out to measure gamma0). Default 3000. */
  positions?: number;
  /** The tiny's hidden width. Default 256. */
  hidden?: number;
  /** Weight precision of the models while generating. Default f32. */
  precision?: Precision;
  seed?: number;
  /** PJRT plugin, as in {@link Runtime.open}. */
  plugin?: string;
  /** Progress: positions generated so far, of `total`. */
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

/** What {@link distillTiny} measured. */
export interface DistillReport {
  /** The file written. */
  path: string;
  /** Held-out coverage per K0: the share of draft steps whose own choice is among the tiny's K0 candidates. */
  gamma0: [k0: number, coverage: number][];
  trainPositions: number;
  heldoutPositions: number;
  /** Milliseconds spent generating text, solving, evaluating, and in all. */
  ms: { generate: number; solve: number; evaluate: number; total: number };
}

/**
 * Fits the tiny model by knowledge distillation from the draft, on text the models generate
 * themselves (no dataset): the target writes the text, the draft's next-token logits on it are the
 * teacher, and the tiny (projection -> LayerNorm -> ReLU -> projection) is solved in closed form by
 * ridge regression (see cpp/model/tiny.h for the method and its trade-offs).
 *
 * @example
 * ```ts
 * const r = await distillTiny({ target: 'model.gguf', draftLayers: 8, out: 'tiny.safetensors' });
 * console.log(r.gamma0); // [[8, 0.92], [64, 0.97], [256, 0.98]]
 * ```
 */
export async function distillTiny(options: DistillOptions): Promise<DistillReport> {
  if (!options || typeof options.target !== 'string' || typeof options.out !== 'string' || !options.target || !options.out) {
    throw new InvalidArgumentError('distillTiny: target and out must be file paths');
  }
  for (const [name, v, min] of [['positions', options.positions, 10], ['hidden', options.hidden, 1], ['draftLayers', options.draftLayers, 1]] as const) {
    if (v !== undefined && (!Number.isInteger(v) || v < min)) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got ${String(v)}`);
  }
  throwIfAborted(options.signal);
  const tokenizer = await findTokenizer(options.target).catch(() => undefined);  // the fit's prompts
  await using rt = await Runtime.open({ plugin: options.plugin, devices: 1, signal: options.signal });
  const handle = native().distillTiny(
    rt.nativeClient(),
    {
      target: options.target,
      draft: options.draft,
      draftLayers: options.draftLayers,
      out: options.out,
      positions: options.positions,
      hidden: options.hidden,
      precision: options.precision,
      seed: options.seed,
      prompts: tokenizer ? tinyFitPrompts(tokenizer) : undefined,
    },
    options.onProgress,
  );
  const unsubscribe = onAbort(options.signal, () => handle.cancel());
  try {
    return (await call(handle.promise)) as DistillReport;
  } catch (error) {
    if (options.signal?.aborted) throw abortReason(options.signal);
    throw error;
  } finally {
    unsubscribe();
  }
}
