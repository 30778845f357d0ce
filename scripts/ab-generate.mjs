// One side of an A/B between two builds of cascade-xla, end to end through Cascade.generate:
// 6 chat requests x 2 seeds x 128 tokens (stopping at end of text) per mode and temperature,
// reported as sums over the 12 generations (tokens / time, tokens per target call, draft calls
// and their mean cost, lookahead guesses and hits). Run it for each build in turn, alternating,
// on the same machine; a build is a package root with dist/ and build/Release/ (another checkout
// after `npm run build`):
//
//   node scripts/ab-generate.mjs                       # this checkout
//   CASCADE_XLA_ROOT=/path/to/other/checkout node scripts/ab-generate.mjs
//   MODES=target,speculative,cascade TEMPERATURES=0,0.8 LOOKAHEAD=true,false node scripts/ab-generate.mjs
//
// Greedy texts differ between builds whose kernels sum in another order (each equals its own
// target-only output), so compare the rates, not the calls.
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = process.env.CASCADE_XLA_ROOT ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { Cascade } = await import(pathToFileURL(path.join(root, 'dist', 'index.js')).href);

const PROMPTS = [
  'Write a Python function that checks whether a string is a palindrome, with a docstring and two examples.',
  'List five tips for staying focused while studying, one line each.',
  'Explain what a hash table is to a beginner.',
  'Write a short story about a robot who learns to paint.',
  'What are the differences between TCP and UDP? Answer with a table.',
  'Give me a JSON object describing a book with title, author, year and three tags.',
];
const list = (name, fallback) => (process.env[name] ?? fallback).split(',').map((s) => s.trim());
const modes = list('MODES', 'target,speculative,cascade');
const temperatures = list('TEMPERATURES', '0,0.8').map(Number);
const lookaheads = list('LOOKAHEAD', 'true').map((s) => s === 'true');
const model = process.env.MODEL ?? path.join(os.homedir(), '.cache', 'cascade-xla', 'models', 'SmolLM2-135M-Instruct-Q4_1.gguf');

// The chat template written out (with SmolLM2's default system prompt), as the session-13 figures
// in docs/how-the-cascade-works.md were measured.
const chat = (prompt) =>
  `<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n` +
  `<|im_start|>user\n${prompt}<|im_end|>\n<|im_start|>assistant\n`;

async function measure(c) {
  for (const mode of modes) await c.generate(PROMPTS[0], { maxTokens: 16, mode }); // compile
  console.log(`${root} (${model}), load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  for (const temperature of temperatures) {
    const sums = new Map();
    for (const prompt of PROMPTS)
      for (const seed of [7, 8])
        for (const mode of modes)
          for (const lookahead of lookaheads) {
            const r = await c.generate(chat(prompt), { maxTokens: 128, mode, temperature, seed, stopAtEos: true, lookahead });
            const s = r.stats;
            const key = `T=${temperature} ${mode}${lookaheads.length > 1 ? ` lookahead=${lookahead}` : ''}`;
            const a = sums.get(key) ?? { tokens: 0, ms: 0, targetCalls: 0, draftCalls: 0, draftMs: 0, guesses: 0, hits: 0 };
            a.tokens += r.tokens.length;
            a.ms += s.totalMs;
            a.targetCalls += s.targetCalls;
            a.draftCalls += s.draftCalls;
            a.draftMs += s.stageMs.draft;
            a.guesses += s.lookaheadGuesses;
            a.hits += s.lookaheadHits;
            sums.set(key, a);
          }
    for (const [key, a] of sums)
      console.log(
        `${key}: ${((1000 * a.tokens) / a.ms).toFixed(1)} tok/s, ${a.tokens} tokens, ` +
          `${(a.tokens / Math.max(1, a.targetCalls)).toFixed(2)} tokens/target call, draft calls ${a.draftCalls}` +
          `${a.draftCalls ? ` (${(a.draftMs / a.draftCalls).toFixed(2)} ms each)` : ''}, lookahead guesses ${a.guesses} hits ${a.hits}`,
      );
  }
}

const c = await Cascade.load({ target: model, tiny: 'fit' });
try {
  await measure(c);
} finally {
  await c.dispose();
}
