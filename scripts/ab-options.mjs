// Generation options side by side in one process, end to end through Cascade.generate: each
// variant (a set of GenerateOptions, e.g. another k1) runs every mode on the `bench --suite modes`
// prompts (3 seeds each at T > 0), the variants alternated per sample and their order reversed
// every other round, so a noisy shared machine hits them alike. Prints per mode and temperature
// each variant's median tokens/s, its median tokens per target call, and the median over samples
// of its rate / the first variant's (the figure to read: the medians of rates mix prompts).
//
//   node scripts/ab-options.mjs
//   VARIANTS='{"k12":{"k1":12},"k6":{"k1":6},"dyn":{"k1":12,"dynamicHorizon":true}}' \
//     MODES=speculative,cascade,auto TEMPERATURES=0,0.8 TOKENS=128 ROUNDS=2 STORAGE=dense \
//     node scripts/ab-options.mjs
//
// (Session 26's k1 measurements in docs/how-the-cascade-works.md.)
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { Cascade } = await import(pathToFileURL(path.join(root, 'dist', 'index.js')).href);
const { BENCH_PROMPTS } = await import(pathToFileURL(path.join(root, 'dist', 'cli', 'commands', 'bench-modes.js')).href);

const list = (name, fallback) => (process.env[name] ?? fallback).split(',').map((s) => s.trim());
const modes = list('MODES', 'speculative,cascade,auto');
const temperatures = list('TEMPERATURES', '0,0.8').map(Number);
const maxTokens = Number(process.env.TOKENS ?? 128);
const rounds = Number(process.env.ROUNDS ?? 2);
const variants = JSON.parse(process.env.VARIANTS ?? '{"k12":{"k1":12},"k6":{"k1":6}}');
const names = Object.keys(variants);
const target = process.env.MODEL ?? path.join(os.homedir(), '.cache', 'cascade-xla', 'models', 'SmolLM2-135M-Instruct-Q4_1.gguf');

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const c = await Cascade.load({ target, targetStorage: process.env.STORAGE ?? 'auto', tiny: 'fit', maxContext: 512 });
try {
  // Every program shape first (compile time is excluded from the rates anyway).
  for (const mode of modes) for (const name of names) for (const temperature of temperatures)
    await c.generate(BENCH_PROMPTS[0], { maxTokens: 8, mode, temperature, seed: 1, ...variants[name] });

  for (const temperature of temperatures) {
    const rate = new Map(), tau = new Map(), ratio = new Map();
    const key = (mode, name) => `${mode}/${name}`;
    for (const mode of modes) for (const name of names) for (const m of [rate, tau, ratio]) m.set(key(mode, name), []);
    for (let round = 0; round < rounds; ++round) {
      for (const prompt of BENCH_PROMPTS) {
        for (const seed of temperature > 0 ? [1, 2, 3] : [1]) {
          const runs = modes.flatMap((mode) => names.map((name) => [mode, name]));
          if (round % 2) runs.reverse();
          const sample = new Map();
          for (const [mode, name] of runs) {
            const { stats } = await c.generate(prompt, { maxTokens, stopAtEos: false, mode, temperature, seed, ...variants[name] });
            rate.get(key(mode, name)).push(stats.tokensPerSecond);
            tau.get(key(mode, name)).push(stats.tau);
            sample.set(key(mode, name), stats.tokensPerSecond);
          }
          for (const mode of modes) for (const name of names) ratio.get(key(mode, name)).push(sample.get(key(mode, name)) / sample.get(key(mode, names[0])));
        }
      }
    }
    for (const mode of modes) {
      const cells = names.map((name) => {
        const k = key(mode, name);
        return `${name} ${median(rate.get(k)).toFixed(1)} tok/s, tau ${median(tau.get(k)).toFixed(2)}, x${median(ratio.get(k)).toFixed(3)}`;
      });
      console.log(`T=${temperature} ${maxTokens} tokens ${mode}: ${cells.join(' | ')}`);
    }
  }
} finally {
  await c.dispose();
}
