#!/usr/bin/env node
/**
 * cascade-xla worker of `cascade-xla bench --suite compare` (one child process, so its peak RSS
 * is its own). Loads the built package (dist/) with the Cascade API: target + self-speculative
 * draft + tiny ('fit', cached), `warmup: true`, `measureBandwidth: true`, then warms every mode up
 * once so that no timed run compiles.
 *
 *   node scripts/bench-cascade-worker.mjs '{"gguf": "...", "plugin": "cpu", "k1": 4, "k0": 64, "targetPrecision": "f32"}'
 * (targetPrecision, targetStorage: omitted = the library's default; modes: the modes to warm up and serve.)
 *
 * Protocol: JSON lines, as scripts/bench-llama-worker.mjs: `{"ready": true, info, costModel}`,
 * then `{"mode", "messages": [chat], "maxTokens"}` -> `{"tokens", "ttftMs", "decodeMs",
 * "firstChunk", "stats"}`, `{"cmd": "exit"}` -> `{"maxRssBytes"}`. Greedy, no stop at EOS.
 * The other runtimes get the same chat rendered and tokenised by cascade-xla's tokenizer, as
 * Cascade.generate does (the compare suite checks the prompt lengths agree).
 */
import { createInterface } from 'node:readline';

const send = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const cfg = JSON.parse(process.argv[2] ?? '{}');

try {
  const { Cascade } = await import('../dist/index.js');
  const t0 = performance.now();
  const c = await Cascade.load({
    target: cfg.gguf,
    plugin: cfg.plugin ?? 'cpu',
    maxContext: 512,
    tiny: 'fit',
    ...(cfg.targetPrecision ? { precision: { target: cfg.targetPrecision } } : {}),
    ...(cfg.targetStorage ? { targetStorage: cfg.targetStorage } : {}),
    warmup: true,
    measureBandwidth: true,
  });
  const loadMs = performance.now() - t0;
  const base = { maxTokens: 8, k1: cfg.k1 ?? 4, k0: cfg.k0 ?? 64, stopAtEos: false, temperature: 0 };
  for (const mode of cfg.modes ?? ['target', 'speculative', 'cascade', 'auto']) await c.generate('Hello there, how are you?', { ...base, mode });
  send({ ready: true, loadMs, warmupMs: performance.now() - t0 - loadMs, info: c.info, costModel: c.costModel });

  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const req = JSON.parse(line);
    if (req.cmd === 'exit') break;
    const out = [];
    let tFirst = 0;
    let firstChunk = 0;
    const t = performance.now();
    for await (const piece of c.stream(req.messages, { ...base, maxTokens: req.maxTokens, mode: req.mode })) {
      if (out.length === 0 && piece.tokens.length) {
        tFirst = performance.now();
        firstChunk = piece.tokens.length;
      }
      out.push(...piece.tokens);
    }
    const tEnd = performance.now();
    send({ tokens: out, ttftMs: tFirst - t, decodeMs: tEnd - tFirst, firstChunk, stats: c.lastStats });
  }
  send({ maxRssBytes: process.resourceUsage().maxRSS * 1024 });
  await c.dispose();
  process.exit(0);
} catch (error) {
  send({ ready: false, error: String(error?.stack ?? error) });
  process.exit(0);
}
