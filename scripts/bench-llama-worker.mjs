#!/usr/bin/env node
/**
 * node-llama-cpp worker of `cascade-xla bench --suite compare` (one child process, so its peak
 * RSS is its own). Uses only the prebuilt linux-x64 CPU binary that npm installed as an optional
 * dependency: `gpu: false`, `build: 'never'`, `skipDownload: true` (nothing is fetched or built).
 *
 *   node scripts/bench-llama-worker.mjs '{"gguf": "...", "draftGguf": "..." | null, "draftMaxTokens": 4}'
 *
 * Protocol: JSON lines. It prints `{"ready": true, ...}` once loaded, then answers each request
 * line `{"variant": "t1" | "t2" | "draft", "tokens": [prompt ids], "maxTokens": 64}` with
 * `{"tokens": [...], "ttftMs", "decodeMs", "firstChunk", "predictions"?}`, and `{"cmd": "exit"}`
 * with `{"maxRssBytes"}`. Greedy (temperature 0), no stop at end-of-generation tokens.
 */
import { createInterface } from 'node:readline';

const send = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const cfg = JSON.parse(process.argv[2] ?? '{}');
process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = 'true';

let llama;
try {
  const { getLlama, LlamaLogLevel, DraftSequenceTokenPredictor } = await import('node-llama-cpp');
  const t0 = performance.now();
  llama = await getLlama({
    gpu: false,
    build: 'never',
    usePrebuiltBinaries: true,
    skipDownload: true,
    progressLogs: false,
    logLevel: LlamaLogLevel.error,
    maxThreads: 2,
  });
  const model = await llama.loadModel({ modelPath: cfg.gguf, gpuLayers: 0 });
  const ctx = (threads) => model.createContext({ contextSize: 512, sequences: 1, threads, batchSize: 512 });
  const variants = { t1: (await ctx(1)).getSequence(), t2: (await ctx(2)).getSequence() };
  let draftInfo = null;
  if (cfg.draftGguf) {
    const draftModel = await llama.loadModel({ modelPath: cfg.draftGguf, gpuLayers: 0 });
    const draftCtx = await draftModel.createContext({ contextSize: 512, sequences: 1, threads: 2, batchSize: 512 });
    const predictor = new DraftSequenceTokenPredictor(draftCtx.getSequence(), {
      maxTokens: cfg.draftMaxTokens ?? 4,
      // Wait for a full round of maxTokens drafts each time, confidence threshold off: the fixed-k1
      // speculative decoding of the other rows. (The default, minTokens 0, drafts opportunistically
      // in the background and, on 2 busy vCPUs, never got a prediction in before the target asked.)
      minTokens: cfg.draftMaxTokens ?? 4,
      minConfidence: 0,
    });
    variants.draft = (await ctx(2)).getSequence({ tokenPredictor: predictor });
    draftInfo = { layers: cfg.draftLayers ?? null, maxTokens: cfg.draftMaxTokens ?? 4 };
  }
  send({
    ready: true,
    loadMs: performance.now() - t0,
    gpu: llama.gpu,
    buildType: llama.buildType,
    cpuMathCores: llama.cpuMathCores,
    llamaCppRelease: llama.llamaCppRelease,
    draft: draftInfo,
  });

  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const req = JSON.parse(line);
    if (req.cmd === 'exit') break;
    const seq = variants[req.variant];
    if (!seq) {
      send({ error: `unknown variant ${req.variant}` });
      continue;
    }
    await seq.clearHistory();
    const before = { ...seq.tokenPredictions };
    const out = [];
    const t = performance.now();
    let tFirst = 0;
    for await (const token of seq.evaluate(req.tokens, { temperature: 0, yieldEogToken: true })) {
      if (out.length === 0) tFirst = performance.now();
      out.push(token);
      if (out.length >= req.maxTokens) break;
    }
    const tEnd = performance.now();
    const after = seq.tokenPredictions;
    send({
      tokens: out,
      ttftMs: tFirst - t,
      decodeMs: tEnd - tFirst,
      firstChunk: 1,
      predictions: req.variant === 'draft'
        ? { validated: after.validated - before.validated, refuted: after.refuted - before.refuted, used: after.used - before.used }
        : undefined,
    });
  }
  send({ maxRssBytes: process.resourceUsage().maxRSS * 1024 });
  await llama.dispose();
  process.exit(0);
} catch (error) {
  send({ ready: false, error: String(error?.stack ?? error) });
  process.exit(0);
}
