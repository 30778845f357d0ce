/**
 * Fitting the tiny projection model (stage 0) for a draft.
 * @module
 */
import { InvalidArgumentError } from '../errors.js';
import { call, native } from '../native.js';
import { Runtime } from '../runtime/runtime.js';
import { abortReason, onAbort, throwIfAborted } from '../utils/abort.js';
import type { Precision } from './cascade.js';
import { draftChoicePath, findTokenizer, rememberedDraftLayers, tinyCachePath } from './model-files.js';
import { checkPrecision } from './options.js';
import { tinyFitPrompts } from './tiny-fit-prompts.js';

/** Options of {@link distillTiny}. */
export interface DistillOptions {
  /** The target model (it writes the training text: what the cascade will commit). */
  target: string;
  /** A draft model; default: the target's first `draftLayers` layers (self-speculative). */
  draft?: string;
  /** Layers of the self-speculative draft. Default: all of the target's (its low-precision copy). */
  draftLayers?: number;
  /**
   * Where to write the tiny model (`.safetensors`, the cascade-xla tiny format). Default: the
   * cache file `Cascade.load({ tiny: 'fit' })` reads for this target, draft and precision, so the
   * next load uses the distilled tiny instead of fitting one.
   */
  out?: string;
  /** Positions of generated text to learn from (20% are held out to measure gamma0). Default 3000. */
  positions?: number;
  /** The tiny's hidden width. Default 256. */
  hidden?: number;
  /** Weight precision per model, as in `Cascade.load`. Default `'auto'`: the engine's (a BF16 target, a q4 draft). */
  precision?: 'auto' | { target?: Precision; draft?: Precision };
  /** Adam steps of distillation after the closed-form fit (0: the closed form alone). Default 200. */
  steps?: number;
  /** Rows per Adam minibatch. Default 128. */
  batch?: number;
  /** Adam's step size. Default 1e-5. */
  learningRate?: number;
  seed?: number;
  /** PJRT plugin, as in {@link Runtime.open}. */
  plugin?: string;
  /** Progress per phase: `'generate'` (positions of text written) then `'train'` (Adam steps). */
  onProgress?: (phase: 'generate' | 'train', done: number, total: number) => void;
  signal?: AbortSignal;
}

/** What {@link distillTiny} measured. */
export interface DistillReport {
  /** The file written. */
  path: string;
  /** Held-out coverage per K0: the share of draft steps whose own choice is among the tiny's K0 candidates. */
  gamma0: [k0: number, coverage: number][];
  /** The same for the closed-form fit before distillation (empty with `steps: 0`). */
  closedFormGamma0: [k0: number, coverage: number][];
  trainPositions: number;
  heldoutPositions: number;
  /**
   * The distillation: Adam steps, rows per step, the KL (nats) of its first step and last epoch;
   * the coverage at K0 = `validationK` of the validation rows (the last 10% of the training text,
   * kept out of the training) per [step, coverage], step 0 being the closed form; and `bestStep`,
   * the step whose weights were kept (0: no step beat the closed form, which is then the result).
   */
  train: {
    steps: number;
    batch: number;
    firstLoss: number;
    lastLoss: number;
    validationK: number;
    validation: [step: number, coverage: number][];
    bestStep: number;
  };
  /** Milliseconds spent generating text, in the closed-form fit, training, evaluating, and in all. */
  ms: { generate: number; solve: number; train: number; evaluate: number; total: number };
}

/**
 * Fits the tiny model by knowledge distillation from the draft, on text the models generate
 * themselves (no dataset): the target writes the text, the draft's next-token logits on it are the
 * teacher. The tiny (projection -> LayerNorm -> ReLU -> projection, reading the draft's final
 * hidden state) starts from a closed-form fit to the draft's head (cpp/model/tiny.h), then Adam
 * minimises the KL from the draft's distribution in a StableHLO training program on the same PJRT
 * device (cpp/model/tiny_training.h): forward, backward and update in one program per step.
 *
 * @example
 * ```ts
 * const r = await distillTiny({ target: 'model.gguf' });  // written where Cascade.load looks
 * console.log(r.gamma0); // [[8, 0.82], [64, 0.99], [256, 1]]
 * ```
 */
export async function distillTiny(options: DistillOptions): Promise<DistillReport> {
  if (!options || typeof options.target !== 'string' || !options.target || (options.out !== undefined && (typeof options.out !== 'string' || !options.out))) {
    throw new InvalidArgumentError('distillTiny: target must be a file path, and out a file path when given');
  }
  for (const [name, v, min] of [
    ['positions', options.positions, 10],
    ['hidden', options.hidden, 1],
    ['draftLayers', options.draftLayers, 1],
    ['steps', options.steps, 0],
    ['batch', options.batch, 1],
  ] as const) {
    if (v !== undefined && (!Number.isInteger(v) || v < min)) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got ${String(v)}`);
  }
  if (options.learningRate !== undefined && !(Number.isFinite(options.learningRate) && options.learningRate > 0)) {
    throw new InvalidArgumentError(`learningRate must be a positive number, got ${String(options.learningRate)}`);
  }
  checkPrecision(options.precision);
  throwIfAborted(options.signal);
  const precision = options.precision === undefined || options.precision === 'auto' ? {} : options.precision;
  const targetPrecision = precision.target ?? native().engineDefaults.targetPrecision;
  const draftPrecision = precision.draft ?? native().engineDefaults.draftPrecision;
  const out = options.out ?? (await distilledTinyPath(options.target, options.draft, options.draftLayers, targetPrecision, draftPrecision));
  const tokenizer = await findTokenizer(options.target).catch(() => undefined);  // the fit's prompts
  await using rt = await Runtime.open({ plugin: options.plugin, devices: 1, signal: options.signal });
  const handle = native().distillTiny(
    rt.nativeClient(),
    {
      target: options.target,
      draft: options.draft,
      draftLayers: options.draftLayers,
      out,
      positions: options.positions,
      hidden: options.hidden,
      targetPrecision,
      draftPrecision,
      steps: options.steps,
      batch: options.batch,
      learningRate: options.learningRate,
      seed: options.seed,
      prompts: tokenizer ? tinyFitPrompts(tokenizer) : undefined,
    },
    options.onProgress as ((phase: string, done: number, total: number) => void) | undefined,
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

/**
 * The cache file `Cascade.load({ tiny: 'fit' })` reads for this target and draft: for the given
 * depth, else for the depth the load remembers for these precisions, else the one a first load
 * (no remembered depth) reads.
 */
async function distilledTinyPath(target: string, draft: string | undefined, draftLayers: number | undefined, targetPrecision: Precision, draftPrecision: Precision): Promise<string> {
  if (draft !== undefined) return tinyCachePath(target, draft, undefined, draftPrecision);
  const layers = draftLayers ?? (await rememberedDraftLayers(await draftChoicePath(target, targetPrecision, draftPrecision)));
  return tinyCachePath(target, undefined, layers, draftPrecision);
}
