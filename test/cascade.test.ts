// The Cascade API on the real SmolLM2-135M-Instruct GGUF through the XLA CPU plugin: speculative
// decoding gives exactly the target's tokens, streaming equals generate, and the lifecycle
// (abort, queueing, dispose, bad options) behaves.
import { readFileSync } from 'node:fs';
import os from 'node:os';

import { describe, expect, it } from 'vitest';

import { Cascade, DisposedError, InvalidArgumentError, OutOfMemoryError } from '../src/index.js';
import { ensureDefaultModel } from '../src/models/default-model.js';
import { SMALL_F32, withDefaultCascade } from './helpers/default-cascade.js';

const PROMPTS = ['The three primary colors are', 'def fibonacci(n):'];

/** Whether this host lets the upload collapse weights into 2 MiB pages (cpp/util/huge_pages.h). */
function hugePagesExpected(): boolean {
  if (process.platform !== 'linux' || process.env.CASCADE_NO_HUGE_PAGES !== undefined) return false;
  const [major, minor] = os.release().split('.').map(Number);
  if (!(major! > 6 || (major === 6 && minor! >= 1))) return false;
  try {
    return !readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8').includes('[never]');
  } catch {
    return false;
  }
}

describe('Cascade on SmolLM2-135M-Instruct', () => {
  let c: Cascade;
  withDefaultCascade((loaded) => (c = loaded), SMALL_F32);

  it('loads the model and its tokenizer', () => {
    expect(c.info.target.family).toBe('llama');
    expect(c.info.target.layers).toBe(30);
    expect(c.info.target.vocabSize).toBe(49152);
    expect(c.info.draft.layers).toBe(8);
    expect(c.tokenizer.vocabSize).toBe(49152);
  });

  it('speculative greedy decoding is token-for-token identical to target-only', async () => {
    for (const prompt of PROMPTS) {
      const base = await c.generate(prompt, { mode: 'target', maxTokens: 24, stopAtEos: false });
      expect(base.tokens).toHaveLength(24);
      expect(base.stats.tau).toBe(1);
      for (const k1 of [1, 4]) {
        const spec = await c.generate(prompt, { mode: 'speculative', k1, maxTokens: 24, stopAtEos: false });
        expect(spec.tokens).toEqual(base.tokens);
        expect(spec.text).toBe(base.text);
        expect(spec.stats.targetCalls).toBeLessThanOrEqual(24);
        expect(spec.stats.positionAcceptance.length).toBe(k1);
      }
      const tree = await c.generate(prompt, { mode: 'speculative', k1: 3, branches: 3, maxTokens: 24, stopAtEos: false });
      expect(tree.tokens).toEqual(base.tokens);
    }
  }, 600_000);

  it('answers a chat prompt coherently and stops at the end of the turn', async () => {
    const r = await c.generate([{ role: 'user', content: 'What is the capital of France?' }], { maxTokens: 40 });
    expect(r.text).toMatch(/Paris/);
    expect(r.stats.stopReason).toBe('stop_token');
    expect(r.text).not.toMatch(/<\|im_end\|>/);
  }, 300_000);

  it('stream pieces add up to the generated text', async () => {
    const opts = { mode: 'speculative' as const, maxTokens: 20, stopAtEos: false };
    const whole = await c.generate(PROMPTS[0]!, opts);
    let streamed = '';
    let pieces = 0;
    for await (const piece of c.stream(PROMPTS[0]!, opts)) {
      streamed += piece.text;
      pieces++;
    }
    expect(streamed).toBe(whole.text);
    expect(pieces).toBeGreaterThan(1);
  }, 300_000);

  it('sampling with a seed is reproducible', async () => {
    const opts = { temperature: 0.8, topP: 0.95, seed: 7, maxTokens: 12, stopAtEos: false, mode: 'speculative' as const };
    const a = await c.generate(PROMPTS[1]!, opts);
    const b = await c.generate(PROMPTS[1]!, opts);
    expect(a.tokens).toEqual(b.tokens);
  }, 300_000);

  it('stop strings end the text before the stop string', async () => {
    const base = await c.generate(PROMPTS[0]!, { maxTokens: 24, stopAtEos: false });
    const words = base.text.trim().split(/\s+/);
    const stop = words[Math.min(3, words.length - 1)]!;
    const r = await c.generate(PROMPTS[0]!, { maxTokens: 24, stopAtEos: false, stop: [stop] });
    expect(r.text).toBe(base.text.slice(0, base.text.indexOf(stop)));
    expect(r.stats.stopReason).toBe('stop_string');
  }, 300_000);

  it('an AbortSignal stops a generation within a step, and the next call works', async () => {
    const controller = new AbortController();
    const started = performance.now();
    const pieces: string[] = [];
    const run = (async () => {
      for await (const piece of c.stream(PROMPTS[0]!, { maxTokens: 100, stopAtEos: false, signal: controller.signal })) {
        pieces.push(piece.text);
        if (pieces.length === 2) controller.abort();
      }
    })();
    await expect(run).rejects.toThrow(/abort/i);
    expect(pieces.length).toBeLessThan(10);
    expect(performance.now() - started).toBeLessThan(60_000);
    const after = await c.generate(PROMPTS[0]!, { maxTokens: 4, stopAtEos: false });
    expect(after.tokens).toHaveLength(4);
  }, 300_000);

  it('queues concurrent calls instead of interleaving them', async () => {
    const opts = { maxTokens: 8, stopAtEos: false };
    const sequential = [await c.generate(PROMPTS[0]!, opts), await c.generate(PROMPTS[1]!, opts)];
    const concurrent = await Promise.all([c.generate(PROMPTS[0]!, opts), c.generate(PROMPTS[1]!, opts)]);
    expect(concurrent.map((r) => r.tokens)).toEqual(sequential.map((r) => r.tokens));
  }, 300_000);

  it('evaluate gives the next-token logits of every position', async () => {
    const ids = c.tokenizer.encode('The capital of France is');
    const logits = await c.evaluate(ids);
    expect(logits.length).toBe(ids.length * 49152);
    const last = logits.subarray((ids.length - 1) * 49152);
    let best = 0;
    for (let v = 1; v < 49152; v++) if (last[v]! > last[best]!) best = v;
    const greedy = await c.generate('The capital of France is', { maxTokens: 1, mode: 'target', stopAtEos: false });
    expect(greedy.tokens[0]).toBe(best);
  }, 300_000);

  it('reports where each model lives and the tiny against the CPU caches', async () => {
    const p = await c.placement();
    expect(p.models.map((m) => m.model)).toEqual(['target', 'draft']);
    for (const m of p.models) {
      expect(m.memoryKind).toBe('device');
      expect(m.bytes).toBeGreaterThan(0);
      expect(m.share).toBeGreaterThan(0);
      expect(m.share).toBeLessThan(1);
    }
    // f32 target: 30 layers + embedding of SmolLM2-135M, about 513 MiB of weights.
    expect(p.models[0]!.bytes).toBeGreaterThan(500 * 2 ** 20);
    // The upload leaves the weights in 2 MiB pages where Linux can collapse them (6.1+, THP not off).
    if (hugePagesExpected()) {
      for (const [i, m] of p.models.entries()) {
        const weights = c.info.memory[i === 0 ? 'target' : 'draft'].weightBytes;
        expect(m.hugePageBytes).toBeGreaterThan(0.9 * weights);
      }
    } else {
      for (const m of p.models) expect(m.hugePageBytes).toBe(0);
    }
    expect(p.cpuCaches.length).toBeGreaterThan(0);
    expect(p.tinyVersusCache).toBeNull(); // no tiny loaded here
    expect(p.note).toMatch(/VMEM/);
  });

  it('rejects bad options with InvalidArgumentError', async () => {
    await expect(c.generate('x', { maxTokens: -1 })).rejects.toThrow(InvalidArgumentError);
    await expect(c.generate('x', { temperature: Number.NaN })).rejects.toThrow(InvalidArgumentError);
    await expect(c.generate('x', { topP: 0 })).rejects.toThrow(InvalidArgumentError);
    await expect(c.generate('x', { k0: 4, k1: 8 })).rejects.toThrow(/k1 \(8\) must not exceed k0 \(4\)/);
    await expect(c.generate('x', { mode: 'fastest' as never })).rejects.toThrow(InvalidArgumentError);
    await expect(c.evaluate([1, 2, 999999])).rejects.toThrow(/outside the vocabulary/);
    const long = 'word '.repeat(400);
    await expect(c.generate(long, { maxTokens: 4 })).rejects.toThrow(/context/);
    await expect(Cascade.load({ target: '' })).rejects.toThrow(InvalidArgumentError);
    await expect(Cascade.load({ target: '/nonexistent/model.gguf' })).rejects.toThrow();
    await expect(Cascade.load({ target: 'x.gguf', kvCache: { target: 'f16' as never } })).rejects.toThrow(/kvCache\.target must be one of f32, bf16/);
    await expect(Cascade.load({ target: 'x.gguf', kvCache: 'small' as never })).rejects.toThrow(InvalidArgumentError);
  }, 300_000);
});

describe('the KV cache types', () => {
  // CASCADE_FFI_KERNELS=0 (the plain programs) keeps f32 for the target too (model/decoder.h DefaultKvDtype).
  const fused = process.env['CASCADE_FFI_KERNELS'] !== '0';
  it('default to bf16 for the bf16 target and f32 for the q4 draft on the CPU plugin, and keep speculative decoding identical to target-only', async () => {
    const { path } = await ensureDefaultModel();
    const maxContext = 256;
    for (const kvCache of ['auto', { target: 'f32', draft: 'bf16' }] as const) {
      await using c = await Cascade.load({ target: path, maxContext, kvCache, draftLayers: 30 });
      const [target, draft] = kvCache === 'auto' ? [fused ? 'bf16' : 'f32', 'f32'] : ['f32', 'bf16'];
      expect(c.info.targetKvCache).toBe(target);
      expect(c.info.draftKvCache).toBe(draft);
      const { layers, kvHeads, headDim } = c.info.target;
      const slots = 2 * layers * kvHeads * maxContext * headDim;
      expect(c.info.memory.target.kvCacheBytes).toBe(slots * (target === 'bf16' ? 2 : 4));
      expect(c.info.memory.draft.kvCacheBytes).toBe(slots * (draft === 'bf16' ? 2 : 4));
      const base = await c.generate(PROMPTS[0]!, { mode: 'target', maxTokens: 24, stopAtEos: false });
      expect(base.tokens).toHaveLength(24);
      const spec = await c.generate(PROMPTS[0]!, { mode: 'speculative', k1: 6, maxTokens: 24, stopAtEos: false });
      expect(spec.tokens).toEqual(base.tokens);
      expect([base.stats.proposalLength, spec.stats.proposalLength]).toEqual([0, 6]);
    }
  }, 600_000);

  it('the memory check counts the cache type the target will take', async () => {
    if (!fused) return;
    const { path } = await ensureDefaultModel();
    const options = { target: path, maxContext: 2048, draftLayers: 30 } as const;
    const probe = await Cascade.load(options);
    const { target, draft } = probe.info.memory;
    expect(probe.info.targetKvCache).toBe('bf16');
    // A limit between what the default (bf16 target cache) and an f32 target cache need.
    const limit = target.weightBytes + target.kvCacheBytes + draft.weightBytes + draft.kvCacheBytes + target.kvCacheBytes / 2;
    await probe.dispose();
    const fits = await Cascade.load({ ...options, maxDeviceMemory: Math.round(limit) });
    expect(fits.info.targetKvCache).toBe('bf16');
    await fits.dispose();
    await expect(Cascade.load({ ...options, kvCache: { target: 'f32' }, maxDeviceMemory: Math.round(limit) })).rejects.toThrow(OutOfMemoryError);
  }, 600_000);
});

describe("the target's storage", () => {
  const fused = process.env['CASCADE_FFI_KERNELS'] !== '0';
  // With AMX the blocks are multiplied as the file's exact weights (docs/precision.md), not rounded
  // to bf16 as the dense copy is: close, not bit for bit; this prompt's tokens agree all the same.
  it("keeps a Q4_1 file's bf16 target as its 4-bit blocks by default, and 'dense' gives this prompt's tokens from two bytes per weight", async () => {
    const { path } = await ensureDefaultModel();
    const options = { target: path, maxContext: 256, draftLayers: 30 } as const;
    const tokens: number[][] = [];
    for (const targetStorage of [undefined, 'dense'] as const) {
      await using c = await Cascade.load({ ...options, targetStorage });
      expect(c.info.targetPrecision).toBe('bf16');
      expect(c.info.targetStorage).toBe(targetStorage === 'dense' || !fused ? 'dense' : 'q4-blocks');
      const base = await c.generate(PROMPTS[1]!, { mode: 'target', maxTokens: 24, stopAtEos: false });
      const spec = await c.generate(PROMPTS[1]!, { mode: 'speculative', k1: 6, maxTokens: 24, stopAtEos: false });
      expect(spec.tokens).toEqual(base.tokens);
      tokens.push(base.tokens);
      // A dense step reads two bytes per layer weight; the blocks, 4-bit values and their scales.
      if (targetStorage === 'dense') expect(c.info.memory.target.stepBytes).toBeGreaterThan(2 * c.info.memory.draft.stepBytes);
    }
    expect(tokens[1]).toEqual(tokens[0]);
    await expect(Cascade.load({ ...options, targetStorage: 'blocks' as never })).rejects.toThrow(/targetStorage must be 'auto' or 'dense'/);
  }, 600_000);
});

describe('Cascade lifecycle', () => {
  it('dispose during a generation ends it, and later calls throw DisposedError', async () => {
    const { path } = await ensureDefaultModel();
    const c = await Cascade.load({ target: path, maxContext: 64, precision: { target: 'f32', draft: 'f32' }, draftLayers: 2 });
    const running = c.generate('Once upon a time', { maxTokens: 50, stopAtEos: false, mode: 'target' }).catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 200));
    await c.dispose();
    await running; // settles (either finished early or rejected); it must not hang
    expect(c.disposed).toBe(true);
    await expect(c.generate('x')).rejects.toThrow(DisposedError);
    await c.dispose();
  }, 600_000);
});
