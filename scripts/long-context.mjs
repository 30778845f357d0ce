// Decoding speed after a long prompt, per mode and KV cache type, end to end through
// Cascade.generate (docs/bench/decoder.md, session 19): one chat request whose text is WORDS words
// (~1,440 tokens at the default 1400), 64 greedy tokens, each (mode, cache) twice in turn after the
// loads; the second pass is the one to read for speed (the first also warms the programs; its
// first token includes the prompt's prefill, which later calls reuse).
//
//   node scripts/long-context.mjs
//   WORDS=2800 CTX=4096 KV=f32/f32,bf16/bf16 MODES=target,speculative,auto node scripts/long-context.mjs
//   LLAMA=1 node scripts/long-context.mjs      # also node-llama-cpp (1 and 2 threads) on the same prompt ids
//
// KV lists target/draft cache types (Cascade.load's kvCache). Needs `npm run build` first.
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { Cascade } = await import(pathToFileURL(path.join(root, 'dist', 'index.js')).href);
const { ensureDefaultModel } = await import(pathToFileURL(path.join(root, 'dist', 'models', 'default-model.js')).href);

const list = (name, fallback) => (process.env[name] ?? fallback).split(',').map((s) => s.trim());
const words = Number(process.env.WORDS ?? 1400);
const maxContext = Number(process.env.CTX ?? 2048);
const caches = list('KV', 'f32/f32,bf16/f32,bf16/bf16');
const modes = list('MODES', 'target,speculative,auto');

const vocabulary = ['the', 'river', 'flows', 'past', 'old', 'stone', 'walls', 'and', 'green', 'fields'];
const text = Array.from({ length: words }, (_, i) => vocabulary[(i * 7 + (i >> 3)) % vocabulary.length]).join(' ');
const prompt = [{ role: 'user', content: `Summarize this text: ${text}` }];

const { path: model } = await ensureDefaultModel();
const loaded = {};
for (const kv of caches) {
  const [target, draft = 'f32'] = kv.split('/');
  loaded[kv] = await Cascade.load({ target: model, maxContext, kvCache: { target, draft }, draftLayers: 30, warmup: true });
}
for (let pass = 0; pass < 2; pass++)
  for (const mode of modes)
    for (const kv of caches) {
      const r = await loaded[kv].generate(prompt, { mode, maxTokens: 64, stopAtEos: false });
      const s = r.stats;
      console.log(
        `pass ${pass} ${mode.padEnd(11)} kv ${kv.padEnd(9)} ${s.tokensPerSecond.toFixed(1).padStart(6)} tokens/s  prompt ${s.promptTokens} tokens  ` +
          `tau ${s.tau.toFixed(2)}  draft calls ${s.draftCalls}  target calls ${s.targetCalls}  ` +
          `draft ${s.stageMs.draft.toFixed(0)} ms  target ${s.stageMs.target.toFixed(0)} ms  ` +
          `first token after ${s.firstTokenMs.toFixed(0)} ms (${s.cachedTokens} prompt tokens reused)`,
      );
    }
// The prompt's token ids, for node-llama-cpp below (every loaded Cascade has the same tokenizer).
const { tokenizer } = Object.values(loaded)[0];
const ids = tokenizer.encode(tokenizer.applyChatTemplate(prompt, { addGenerationPrompt: true }));
for (const c of Object.values(loaded)) await c.dispose();

// node-llama-cpp on the same token ids, as the bench's worker runs it (scripts/bench-llama-worker.mjs:
// the prebuilt CPU binary, greedy), with a context as long as ours.
if (process.env.LLAMA) {
  process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = 'true';
  const { getLlama, LlamaLogLevel } = await import('node-llama-cpp');
  const llama = await getLlama({ gpu: false, build: 'never', usePrebuiltBinaries: true, skipDownload: true, progressLogs: false, logLevel: LlamaLogLevel.error, maxThreads: 2 });
  const llamaModel = await llama.loadModel({ modelPath: model, gpuLayers: 0 });
  for (let pass = 0; pass < 2; pass++)
    for (const threads of [1, 2]) {
      const context = await llamaModel.createContext({ contextSize: maxContext, sequences: 1, threads, batchSize: 512 });
      let n = 0;
      let first = 0;
      const start = performance.now();
      for await (const token of context.getSequence().evaluate(ids, { temperature: 0 })) {
        void token;
        if (n === 0) first = performance.now();
        if (++n >= 64) break;
      }
      const end = performance.now();
      console.log(
        `pass ${pass} node-llama-cpp ${threads} thread(s)  ${((n - 1) / ((end - first) / 1000)).toFixed(1).padStart(6)} tokens/s  ` +
          `prompt ${ids.length} tokens  first token after ${(first - start).toFixed(0)} ms`,
      );
      await context.dispose();
    }
  await llamaModel.dispose();
}
