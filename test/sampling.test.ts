// The sampling options minP, repeatPenalty, presencePenalty, frequencyPenalty, penaltyLastN and
// logitBias on the real SmolLM2-135M-Instruct GGUF: bad values are rejected by name, a banned
// token never appears, penalties change the output, and at temperature 0 speculative decoding
// (chains and branches) stays token-for-token identical to target-only decoding with them.
import { describe, expect, it } from 'vitest';

import { Cascade, InvalidArgumentError, type GenerateOptions } from '../src/index.js';
import { SMALL_F32, withDefaultCascade } from './helpers/default-cascade.js';

const PROMPT = 'Repeat after me: the cat sat on the mat, the cat sat on the mat, the cat sat on the mat,';

describe('sampling options on SmolLM2-135M-Instruct', () => {
  let c: Cascade;
  withDefaultCascade((loaded) => (c = loaded), SMALL_F32);

  it('rejects bad values with an InvalidArgumentError naming the option', async () => {
    const bad: [GenerateOptions, RegExp][] = [
      [{ minP: -0.1 }, /^minP must be a number in \[0, 1\], got -0.1$/],
      [{ minP: 1.5 }, /minP/],
      [{ minP: Number.NaN }, /minP/],
      [{ minP: '0.1' as never }, /minP/],
      [{ repeatPenalty: 0 }, /^repeatPenalty must be a finite number > 0, got 0$/],
      [{ repeatPenalty: Number.POSITIVE_INFINITY }, /repeatPenalty/],
      [{ presencePenalty: Number.NaN }, /^presencePenalty must be a finite number/],
      [{ frequencyPenalty: Number.NEGATIVE_INFINITY }, /^frequencyPenalty must be a finite number/],
      [{ penaltyLastN: -2 }, /^penaltyLastN must be an integer in -1\.\./],
      [{ penaltyLastN: 1.5 }, /penaltyLastN/],
      [{ logitBias: [1, 2] as never }, /^logitBias must be an object/],
      [{ logitBias: null as never }, /^logitBias must be an object/],
      [{ logitBias: { 49152: 1 } }, /^logitBias: token id 49152 is outside the vocabulary \(0\.\.49151\)$/],
      [{ logitBias: { '-1': 1 } as never }, /logitBias: token id -1/],
      [{ logitBias: { 'x': 1 } as never }, /logitBias: token id x/],
      [{ logitBias: { 5: Number.NaN } }, /^logitBias\[5\] must be a finite number or -Infinity, got NaN$/],
      [{ logitBias: { 5: Number.POSITIVE_INFINITY } }, /logitBias\[5\]/],
      [{ logitBias: { 5: '1' as never } }, /logitBias\[5\]/],
    ];
    for (const [options, message] of bad) {
      const run = c.generate('x', { maxTokens: 2, ...options });
      await expect(run, JSON.stringify(options)).rejects.toThrow(InvalidArgumentError);
      await expect(run, JSON.stringify(options)).rejects.toThrow(message);
    }
    // The edges of the ranges are accepted.
    const edges = await c.generate('x', {
      maxTokens: 2,
      minP: 1,
      repeatPenalty: 0.5,
      presencePenalty: -2,
      frequencyPenalty: 2,
      penaltyLastN: -1,
      logitBias: { 0: Number.NEGATIVE_INFINITY, 49151: -100 },
    });
    expect(edges.tokens).toHaveLength(2);
  });

  it('never generates a token that logitBias bans, greedy or sampled, in every mode', async () => {
    const plain = await c.generate(PROMPT, { mode: 'target', maxTokens: 16, stopAtEos: false });
    const banned = [...new Set(plain.tokens)];
    expect(banned.length).toBeGreaterThan(1);
    const logitBias = Object.fromEntries(banned.map((t) => [t, Number.NEGATIVE_INFINITY]));
    const runs: GenerateOptions[] = [
      { mode: 'target' },
      { mode: 'speculative', k1: 4 },
      { mode: 'speculative', temperature: 1, seed: 1 },
      { mode: 'speculative', temperature: 1.5, seed: 2, k1: 3, branches: 2 },
      { mode: 'target', temperature: 1.5, seed: 3 },
    ];
    for (const options of runs) {
      const r = await c.generate(PROMPT, { ...options, maxTokens: 16, stopAtEos: false, logitBias });
      expect(r.tokens).toHaveLength(16);
      for (const t of r.tokens) expect(banned, JSON.stringify(options)).not.toContain(t);
    }
    // A positive bias makes a token the greedy choice.
    const forced = await c.generate(PROMPT, { mode: 'speculative', maxTokens: 4, stopAtEos: false, logitBias: { 42: 100 } });
    expect(forced.tokens).toEqual([42, 42, 42, 42]);
  }, 300_000);

  it('penalties change the output; a large presence penalty never repeats a token of the context', async () => {
    const plain = await c.generate(PROMPT, { mode: 'target', maxTokens: 20, stopAtEos: false });
    for (const options of [{ repeatPenalty: 1.5 }, { presencePenalty: 1 }, { frequencyPenalty: 1 }] as GenerateOptions[]) {
      const r = await c.generate(PROMPT, { ...options, mode: 'target', maxTokens: 20, stopAtEos: false });
      expect(r.tokens, JSON.stringify(options)).not.toEqual(plain.tokens);
    }
    // The window covers the prompt and what was generated (-1: the whole context).
    const prompt = c.tokenizer.encode(PROMPT);
    const fresh = await c.generate(PROMPT, { mode: 'speculative', presencePenalty: 100, penaltyLastN: -1, maxTokens: 20, stopAtEos: false });
    expect(new Set(fresh.tokens).size).toBe(fresh.tokens.length);
    for (const t of fresh.tokens) expect(prompt).not.toContain(t);
    // penaltyLastN 0 turns the penalties off.
    const off = await c.generate(PROMPT, { mode: 'target', repeatPenalty: 1.5, presencePenalty: 1, penaltyLastN: 0, maxTokens: 20, stopAtEos: false });
    expect(off.tokens).toEqual(plain.tokens);
  }, 300_000);

  it('at temperature 0 speculative decoding with the options is identical to target-only with them', async () => {
    const options: GenerateOptions = {
      repeatPenalty: 1.3,
      presencePenalty: 0.3,
      frequencyPenalty: 0.2,
      penaltyLastN: 32,
      minP: 0.05,
      logitBias: { 11: -2, 28: 1.5 },
      maxTokens: 24,
      stopAtEos: false,
    };
    const base = await c.generate(PROMPT, { ...options, mode: 'target' });
    expect(base.tokens).toHaveLength(24);
    const plain = await c.generate(PROMPT, { mode: 'target', maxTokens: 24, stopAtEos: false });
    expect(base.tokens).not.toEqual(plain.tokens);
    for (const extra of [{ k1: 1 }, { k1: 4 }, { k1: 3, branches: 3 }, { mode: 'auto' as const }]) {
      const spec = await c.generate(PROMPT, { ...options, mode: 'speculative', ...extra });
      expect(spec.tokens, JSON.stringify(extra)).toEqual(base.tokens);
      expect(spec.text).toBe(base.text);
    }
  }, 300_000);
});
