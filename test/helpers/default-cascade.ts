// A Cascade on the default model (SmolLM2-135M-Instruct, fetched once into the cache) for the
// tests of one describe block: loaded before them, disposed after them.
import { afterAll, beforeAll } from 'vitest';

import { Cascade, type CascadeLoadOptions } from '../../src/index.js';
import { ensureDefaultModel } from '../../src/models/default-model.js';

/** f32 weights (the model's exact arithmetic), a 128-token context and an 8-layer draft. */
export const SMALL_F32: Omit<CascadeLoadOptions, 'target'> = { maxContext: 128, precision: { target: 'f32', draft: 'f32' }, draftLayers: 8 };

/**
 * Loads the default model with `options` in a `beforeAll` (10 minutes allowed: a first run
 * downloads it) and hands the Cascade to `set`; disposes it in an `afterAll`.
 */
export function withDefaultCascade(set: (cascade: Cascade) => void, options: Omit<CascadeLoadOptions, 'target'>): void {
  let loaded: Cascade | undefined;
  beforeAll(async () => {
    const { path } = await ensureDefaultModel();
    loaded = await Cascade.load({ target: path, ...options });
    set(loaded);
  }, 600_000);
  afterAll(async () => {
    await loaded?.dispose();
  });
}
