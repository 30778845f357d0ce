/**
 * `bench --suite compare`: cascade-xla next to the tools users would pick instead, on the same
 * GGUF, the same prompts (BENCH_PROMPTS, chat-templated and tokenised once by cascade-xla's
 * tokenizer), the same machine, in one run, interleaved (prompt by prompt, every runtime in turn),
 * greedy, medians over the prompts. Each runtime runs in its own child process (so its peak RSS
 * is its own) that speaks JSON lines:
 *
 * - cascade-xla (scripts/bench-cascade-worker.mjs): target, speculative, cascade, auto;
 * - node-llama-cpp 3.21.1 (scripts/bench-llama-worker.mjs): 1 and 2 threads, and with its
 *   DraftSequenceTokenPredictor on a GGUF copy that keeps the target's first N blocks
 *   (scripts/bench-truncate-gguf.py), N = cascade-xla's draft depth, requantised to Q8_0 when
 *   cascade-xla's draft is int8;
 * - Hugging Face transformers (test/oracle/bench_hf.py, oracle venv, torch CPU, 2 threads):
 *   greedy `generate` and assisted generation with the same first-N-layers draft (int8 by
 *   torch's dynamic quantisation when cascade-xla's draft is int8).
 *
 * Writes docs/bench/compare.{json,md,png}. A runtime that cannot run is recorded as blocked with
 * its error. Not part of `npm test` (minutes).
 * @internal
 * @module
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { ensureDefaultModel } from '../../models/default-model.js';
import { Tokenizer } from '../../tokenizer/index.js';
import { cachePath } from '../../utils/cache.js';
import { median, table } from '../output.js';
import { BENCH_PROMPTS } from './bench-modes.js';

export interface CompareBenchOptions {
  model?: string;
  maxTokens: number;
  k1: number;
  k0: number;
  out: string;
  plugin: string;
}

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const progress = (m: string) => process.stderr.write(`compare: ${m}\n`);

interface Reply {
  tokens: number[];
  ttftMs: number;
  decodeMs: number;
  firstChunk: number;
  stats?: { tau: number; gammaTotal: number; accepted: number; proposed: number; promptTokens: number; tokensPerSecond: number; stageMs: { compile: number } };
  predictions?: { validated: number; refuted: number; used: number };
  targetCalls?: number;
  draftCalls?: number;
  error?: string;
}

/** A child process answering one JSON line per request line. */
class Worker {
  readonly name: string;
  readonly child: ChildProcess;
  readonly #lines: string[] = [];
  readonly #waiters: ((line: string | undefined) => void)[] = [];
  #closed = false;
  stderrTail = '';

  constructor(name: string, cmd: string, args: string[]) {
    this.name = name;
    this.child = spawn(cmd, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: 'true' } });
    this.child.on('error', (e) => {
      this.stderrTail += `\n${String(e)}`;
      this.#finish();
    });
    this.child.stderr!.on('data', (d: Buffer) => {
      this.stderrTail = (this.stderrTail + d.toString()).slice(-4000);
    });
    const rl = createInterface({ input: this.child.stdout! });
    rl.on('line', (line) => {
      if (!line.trim().startsWith('{')) return;
      const w = this.#waiters.shift();
      if (w) w(line);
      else this.#lines.push(line);
    });
    rl.on('close', () => this.#finish());
  }

  #finish(): void {
    this.#closed = true;
    for (const w of this.#waiters.splice(0)) w(undefined);
  }

  async next<T>(): Promise<T> {
    const line = this.#lines.shift() ?? (this.#closed ? undefined : await new Promise<string | undefined>((r) => this.#waiters.push(r)));
    if (line === undefined) throw new Error(`${this.name} exited: ${this.stderrTail.trim().split('\n').slice(-6).join('\n')}`);
    return JSON.parse(line) as T;
  }

  async request<T>(req: object): Promise<T> {
    this.child.stdin!.write(`${JSON.stringify(req)}\n`);
    return this.next<T>();
  }

  async exit(): Promise<number | null> {
    try {
      const r = await this.request<{ maxRssBytes?: number }>({ cmd: 'exit' });
      return r.maxRssBytes ?? null;
    } catch {
      return null;
    } finally {
      this.child.stdin!.end();
    }
  }
}

interface Variant {
  id: string;
  runtime: 'cascade-xla' | 'node-llama-cpp' | 'transformers';
  label: string;
  worker: string;
  request: (prompt: number) => object;
  weightBytes?: number;
}

interface Row {
  id: string;
  runtime: string;
  label: string;
  status: 'ok' | 'blocked';
  error?: string;
  tokensPerSecond?: number;
  ttftMs?: number;
  tau?: number | null;
  acceptance?: number | null;
  peakRssBytes?: number | null;
  weightBytes?: number;
  boundTokensPerSecond?: number;
  ofBound?: number;
  sameTokensAsTarget?: number;
  perPrompt?: { tokensPerSecond: number; ttftMs: number }[];
  samples?: object[];
}

function oraclePython(): { python?: string; error?: string } {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'scripts/oracle-env.mjs'), '--with-torch'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const python = r.stdout.trim().split('\n').pop();
  if (r.status !== 0 || !python) return { error: `oracle-env.mjs --with-torch exited ${r.status}: ${r.stderr.trim().split('\n').slice(-3).join(' ')}` };
  return { python };
}

export async function benchCompare(o: CompareBenchOptions): Promise<Row[]> {
  const started = performance.now();
  const target = o.model ?? (await ensureDefaultModel({ onProgress: progress })).path;
  const tok = await Tokenizer.fromGguf(target);
  const chats = BENCH_PROMPTS.map((p) => [{ role: 'user', content: p }]);
  const ids = chats.map((chat) => tok.encode(tok.applyChatTemplate(chat, { addGenerationPrompt: true }), { addBos: false }));
  const fileBytes = (await stat(target)).size;
  const blocked = new Map<string, string>();

  progress('starting cascade-xla (load, tiny fit/cache, warm-up compile)');
  const workers = new Map<string, Worker>();
  type CxReady = { ready: boolean; error?: string; loadMs: number; warmupMs: number; info: { draft: { layers: number }; targetPrecision: string; targetStorage?: string; draftPrecision: string; memory: { target: { weightBytes: number; stepBytes?: number } } }; costModel?: { bandwidthGBs: number } };
  const cx = new Worker('cascade-xla', process.execPath, [path.join(ROOT, 'scripts/bench-cascade-worker.mjs'), JSON.stringify({ gguf: target, plugin: o.plugin, k1: o.k1, k0: o.k0 })]);
  const cxReady = await cx.next<CxReady>();
  if (!cxReady.ready) throw new Error(`cascade-xla worker failed: ${cxReady.error}`);
  workers.set('cascade-xla', cx);
  // The f32 target (the model's own arithmetic) side by side, target-only and speculative.
  progress('starting cascade-xla with the f32 target');
  const cxF32 = new Worker('cascade-xla-f32', process.execPath, [path.join(ROOT, 'scripts/bench-cascade-worker.mjs'), JSON.stringify({ gguf: target, plugin: o.plugin, k1: o.k1, k0: o.k0, targetPrecision: 'f32', modes: ['target', 'speculative'] })]);
  const cxF32Ready = await cxF32.next<CxReady>().catch((e: Error) => ({ ready: false, error: e.message }) as CxReady);
  if (cxF32Ready.ready) workers.set('cascade-xla-f32', cxF32);
  else blocked.set('cx-f32-target', `cascade-xla f32 worker: ${cxF32Ready.error}`), blocked.set('cx-f32-speculative', `cascade-xla f32 worker: ${cxF32Ready.error}`);
  // A bf16 target kept as its 4-bit blocks reads the draft's bytes a step; stored dense (as a bf16
  // checkpoint is) it reads ~2.8x more, the seed's setting. The same model bit for bit, so its rows
  // must give cx-target's tokens.
  const denseModes = ['target', 'speculative', 'cascade'] as const;
  let cxDenseReady: CxReady | undefined;
  if (cxReady.info.targetStorage === 'q4-blocks') {
    progress('starting cascade-xla with the bf16 target stored dense');
    const cxDense = new Worker('cascade-xla-dense', process.execPath, [path.join(ROOT, 'scripts/bench-cascade-worker.mjs'), JSON.stringify({ gguf: target, plugin: o.plugin, k1: o.k1, k0: o.k0, targetStorage: 'dense', modes: denseModes })]);
    cxDenseReady = await cxDense.next<CxReady>().catch((e: Error) => ({ ready: false, error: e.message }) as CxReady);
    if (cxDenseReady.ready) workers.set('cascade-xla-dense', cxDense);
    else for (const mode of denseModes) blocked.set(`cx-dense-${mode}`, `cascade-xla dense worker: ${cxDenseReady.error}`);
  }
  const targetName = cxReady.info.targetPrecision;
  const draftLayers = cxReady.info.draft.layers;
  // The same draft in each runtime: its first N layers, at int8 (Q8_0 for llama.cpp) when
  // cascade-xla's draft is int8; a q4 draft is the GGUF's own 4-bit blocks in both.
  const int8Draft = cxReady.info.draftPrecision === 'int8';
  const draftName = `${cxReady.info.draftPrecision} copy of the first ${draftLayers} layers`;
  // The bytes a step reads (a bf16 target stored as blocks keeps a dense embedding for the lookup).
  const cxBytes = cxReady.info.memory.target.stepBytes ?? cxReady.info.memory.target.weightBytes;
  const f32Bytes = cxF32Ready.ready ? (cxF32Ready.info.memory.target.stepBytes ?? cxF32Ready.info.memory.target.weightBytes) : cxBytes;
  const denseBytes = cxDenseReady?.ready ? (cxDenseReady.info.memory.target.stepBytes ?? cxDenseReady.info.memory.target.weightBytes) : undefined;
  const bandwidthGBs = cxReady.costModel?.bandwidthGBs ?? 0;

  const py = oraclePython();
  let draftGguf: string | undefined;
  if (py.python) {
    draftGguf = cachePath('bench', `${path.basename(target, '.gguf')}-first${draftLayers}${int8Draft ? '-q8_0' : ''}.gguf`);
    if (!existsSync(draftGguf)) {
      await mkdir(path.dirname(draftGguf), { recursive: true });
      const r = spawnSync(py.python, [path.join(ROOT, 'scripts/bench-truncate-gguf.py'), target, draftGguf, String(draftLayers), ...(int8Draft ? ['--q8_0'] : [])], { encoding: 'utf8' });
      if (r.status !== 0) {
        blocked.set('llama-draft', `bench-truncate-gguf.py: ${r.stderr.trim().split('\n').slice(-2).join(' ')}`);
        draftGguf = undefined;
      }
    }
  } else {
    blocked.set('llama-draft', `no python with gguf for the truncated draft: ${py.error}`);
  }

  progress('starting node-llama-cpp and transformers');
  const ll = new Worker('node-llama-cpp', process.execPath, [path.join(ROOT, 'scripts/bench-llama-worker.mjs'), JSON.stringify({ gguf: target, draftGguf, draftMaxTokens: o.k1, draftLayers })]);
  const hf = py.python ? new Worker('transformers', py.python, [path.join(ROOT, 'test/oracle/bench_hf.py'), JSON.stringify({ gguf: target, draft_layers: draftLayers, int8: int8Draft, k1: o.k1, threads: 2 })]) : undefined;
  if (!hf) for (const id of ['hf-greedy', 'hf-assisted']) blocked.set(id, `oracle venv: ${py.error}`);
  const llReady = await ll.next<{ ready: boolean; error?: string; [k: string]: unknown }>().catch((e: Error) => ({ ready: false, error: e.message }));
  if (llReady.ready) workers.set('node-llama-cpp', ll);
  else for (const id of ['llama-t1', 'llama-t2', 'llama-draft']) blocked.set(id, `node-llama-cpp: ${llReady.error}`);
  const hfReady = hf ? await hf.next<{ ready: boolean; error?: string; [k: string]: unknown }>().catch((e: Error) => ({ ready: false, error: e.message })) : undefined;
  if (hf && hfReady?.ready) workers.set('transformers', hf);
  else if (hf) for (const id of ['hf-greedy', 'hf-assisted']) blocked.set(id, `transformers: ${hfReady?.error}`);

  const n = o.maxTokens;
  const variants: Variant[] = [
    ...(['target', 'speculative', 'cascade', 'auto'] as const).map((mode): Variant => ({
      id: `cx-${mode}`, runtime: 'cascade-xla', label: `cascade-xla ${mode} (${targetName} target)`, worker: 'cascade-xla', weightBytes: cxBytes,
      request: (p) => ({ mode, messages: chats[p], maxTokens: n }),
    })),
    ...(['target', 'speculative'] as const).map((mode): Variant => ({
      id: `cx-f32-${mode}`, runtime: 'cascade-xla', label: `cascade-xla ${mode} (f32 target)`, worker: 'cascade-xla-f32', weightBytes: f32Bytes,
      request: (p) => ({ mode, messages: chats[p], maxTokens: n }),
    })),
    ...(cxDenseReady ? denseModes : []).map((mode): Variant => ({
      id: `cx-dense-${mode}`, runtime: 'cascade-xla', label: `cascade-xla ${mode} (${targetName} target stored dense)`, worker: 'cascade-xla-dense', weightBytes: denseBytes,
      request: (p) => ({ mode, messages: chats[p], maxTokens: n }),
    })),
    { id: 'llama-t1', runtime: 'node-llama-cpp', label: 'node-llama-cpp 1 thread', worker: 'node-llama-cpp', weightBytes: fileBytes, request: (p) => ({ variant: 't1', tokens: ids[p], maxTokens: n }) },
    { id: 'llama-t2', runtime: 'node-llama-cpp', label: 'node-llama-cpp 2 threads', worker: 'node-llama-cpp', weightBytes: fileBytes, request: (p) => ({ variant: 't2', tokens: ids[p], maxTokens: n }) },
    { id: 'llama-draft', runtime: 'node-llama-cpp', label: `node-llama-cpp 2 threads + draft (${int8Draft ? 'Q8_0 copy of the ' : ''}first ${draftLayers} layers)`, worker: 'node-llama-cpp', weightBytes: fileBytes, request: (p) => ({ variant: 'draft', tokens: ids[p], maxTokens: n }) },
    { id: 'hf-greedy', runtime: 'transformers', label: 'transformers generate (f32, 2 threads)', worker: 'transformers', weightBytes: f32Bytes, request: (p) => ({ variant: 'greedy', tokens: ids[p], maxTokens: n }) },
    { id: 'hf-assisted', runtime: 'transformers', label: `transformers assisted (${int8Draft ? 'int8 copy of the ' : 'f32 '}first ${draftLayers} layers)`, worker: 'transformers', weightBytes: f32Bytes, request: (p) => ({ variant: 'assisted', tokens: ids[p], maxTokens: n }) },
  ];
  if (!draftGguf && !blocked.has('llama-draft')) blocked.set('llama-draft', 'no draft GGUF');
  const active = () => variants.filter((v) => !blocked.has(v.id) && workers.has(v.worker));

  const run = async (v: Variant, p: number, maxTokens: number): Promise<Reply | undefined> => {
    try {
      const r = await workers.get(v.worker)!.request<Reply>({ ...v.request(p), maxTokens });
      if (r.error) throw new Error(r.error);
      return r;
    } catch (e) {
      blocked.set(v.id, (e as Error).message);
      return undefined;
    }
  };
  // Warm-up: every variant on every prompt (compiles cascade-xla's prefill shapes, pages weights in).
  // cascade-xla's warm-up is the timed generation itself: its program shapes (the verify widths a
  // round ends with, the prefill of each prompt) follow the tokens, and greedy repeats them, so
  // no timed run compiles (a dense bf16 shape compiles for ~0.1 s, a third of a 64-token run).
  progress(`warm-up pass (untimed: cascade-xla ${n} tokens per prompt, the others 4)`);
  for (let p = 0; p < ids.length; p++) for (const v of active()) await run(v, p, v.runtime === 'cascade-xla' ? n : 4);

  const samples = new Map<string, Reply[]>();
  for (let p = 0; p < ids.length; p++) {
    for (const v of active()) {
      const r = await run(v, p, n);
      if (!r) continue;
      if (!samples.has(v.id)) samples.set(v.id, []);
      samples.get(v.id)!.push(r);
      const tps = (r.tokens.length - r.firstChunk) / (r.decodeMs / 1000);
      progress(`prompt ${p + 1}/${ids.length} ${v.label}: ${tps.toFixed(1)} tok/s, ttft ${r.ttftMs.toFixed(0)} ms`);
    }
  }
  const rss = new Map<string, number | null>();
  for (const [name, w] of workers) rss.set(name, await w.exit());
  if (hf && !workers.has('transformers')) hf.child.kill();
  if (!workers.has('node-llama-cpp')) ll.child.kill();

  const rows: Row[] = variants.map((v): Row => {
    // Every mode of one cascade-xla worker must give its own target-only tokens.
    const reference = samples.get(v.worker === 'cascade-xla-f32' ? 'cx-f32-target' : 'cx-target');
    const s = samples.get(v.id);
    if (!s || blocked.has(v.id)) return { id: v.id, runtime: v.runtime, label: v.label, status: 'blocked', error: blocked.get(v.id) ?? 'no samples' };
    const perPrompt = s.map((r) => ({ tokensPerSecond: (r.tokens.length - r.firstChunk) / (r.decodeMs / 1000), ttftMs: r.ttftMs }));
    let tau: number | null = null;
    let acceptance: number | null = null;
    if (v.runtime === 'cascade-xla' && v.id !== 'cx-target' && v.id !== 'cx-f32-target' && v.id !== 'cx-dense-target') {
      tau = median(s.map((r) => r.stats!.tau));
      acceptance = median(s.map((r) => r.stats!.accepted / Math.max(1, r.stats!.proposed)));
    } else if (v.id === 'llama-draft') {
      const made = s.filter((r) => r.predictions!.validated + r.predictions!.refuted > 0);
      acceptance = made.length ? median(made.map((r) => r.predictions!.validated / (r.predictions!.validated + r.predictions!.refuted))) : null;
    } else if (v.id === 'hf-assisted') {
      tau = median(s.map((r) => r.tokens.length / Math.max(1, r.targetCalls!)));
      acceptance = median(s.map((r) => (r.tokens.length - r.targetCalls!) / Math.max(1, r.draftCalls!)));
    }
    const tps = median(perPrompt.map((x) => x.tokensPerSecond));
    const bound = bandwidthGBs > 0 && v.weightBytes ? (bandwidthGBs * 1e9) / v.weightBytes : undefined;
    const same = reference ? median(s.map((r, i) => {
      const ref = reference[i]?.tokens ?? [];
      let k = 0;
      while (k < r.tokens.length && r.tokens[k] === ref[k]) k++;
      return k;
    })) : undefined;
    return {
      id: v.id, runtime: v.runtime, label: v.label, status: 'ok',
      tokensPerSecond: tps,
      ttftMs: median(perPrompt.map((x) => x.ttftMs)),
      tau, acceptance,
      peakRssBytes: rss.get(v.worker) ?? null,
      weightBytes: v.weightBytes,
      boundTokensPerSecond: bound,
      ofBound: bound ? tps / bound : undefined,
      sameTokensAsTarget: same,
      perPrompt,
      samples: s.map(({ tokens, ...rest }) => ({ ...rest, generated: tokens.length })),
    };
  });
  const promptLengthCheck = samples.get('cx-target')?.map((r, i) => ({ cascadeXla: r.stats?.promptTokens, others: ids[i]!.length }));
  const seconds = (performance.now() - started) / 1000;
  const machine = {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model,
    memoryGiB: os.totalmem() / 2 ** 30,
    loadAverageAtEnd: os.loadavg(),
    node: process.version,
    platform: `${os.platform()} ${os.release()}`,
    bandwidthGBs,
  };
  const command = 'npm run build && npm run bench';
  await mkdir(o.out, { recursive: true });
  const result = {
    model: path.basename(target), modelFileBytes: fileBytes, f32WeightBytes: f32Bytes, draftLayers, int8Draft, draftPrecision: cxReady.info.draftPrecision, targetStorage: cxReady.info.targetStorage ?? 'dense', prompts: BENCH_PROMPTS,
    promptLengthCheck, options: o, machine, command, suiteSeconds: seconds,
    workers: { cascadeXla: { loadMs: cxReady.loadMs, warmupMs: cxReady.warmupMs }, cascadeXlaF32: cxF32Ready.ready ? { loadMs: cxF32Ready.loadMs, warmupMs: cxF32Ready.warmupMs } : cxF32Ready.error,
      cascadeXlaDense: cxDenseReady === undefined ? 'not run (the default target is stored dense)' : cxDenseReady.ready ? { loadMs: cxDenseReady.loadMs, warmupMs: cxDenseReady.warmupMs } : cxDenseReady.error, nodeLlamaCpp: llReady, transformers: hfReady ?? py.error },
    rows,
  };
  await writeFile(path.join(o.out, 'compare.json'), `${JSON.stringify(result, null, 2)}\n`);
  await writeFile(path.join(o.out, 'compare.md'), markdown(result));
  const png = await renderChart(rows, `tokens/s (decode, greedy, ${n} tokens), ${path.basename(target)}, ${machine.cpus} vCPUs`).catch((e: Error) => {
    progress(`chart not written: ${e.message}`);
    return undefined;
  });
  if (png) await writeFile(path.join(o.out, 'compare.png'), png);
  console.log(
    table([
      ['runtime', 'tok/s', 'TTFT ms', 'tau', 'accept', 'RSS MiB', 'of W/BW bound'],
      ...rows.map((r) => r.status === 'blocked'
        ? [r.label, 'blocked', '', '', '', '', '']
        : [r.label, r.tokensPerSecond!.toFixed(1), r.ttftMs!.toFixed(0), r.tau == null ? '-' : r.tau.toFixed(2), r.acceptance == null ? '-' : r.acceptance.toFixed(3),
          r.peakRssBytes == null ? '-' : (r.peakRssBytes / 2 ** 20).toFixed(0), r.ofBound === undefined ? '-' : `${(100 * r.ofBound).toFixed(0)}%`]),
    ]),
  );
  console.log(`wrote ${path.join(o.out, 'compare.{json,md,png}')} in ${seconds.toFixed(0)} s`);
  return rows;
}

const mib = (b: number | null | undefined) => (b == null ? '-' : `${(b / 2 ** 20).toFixed(0)}`);

function markdown(r: {
  model: string; modelFileBytes: number; f32WeightBytes: number; draftLayers: number; int8Draft: boolean; draftPrecision: string; targetStorage: string; options: CompareBenchOptions; command: string; suiteSeconds: number;
  machine: { cpus: number; cpuModel?: string; memoryGiB: number; loadAverageAtEnd: number[]; node: string; platform: string; bandwidthGBs: number };
  rows: Row[];
}): string {
  const m = r.machine;
  const lines = [
    `# cascade-xla next to node-llama-cpp and transformers`,
    '',
    `${r.model}, the same ${BENCH_PROMPTS.length} chat prompts (BENCH_PROMPTS, templated and tokenised once), greedy, ` +
      `${r.options.maxTokens} new tokens (no stop at end-of-text), medians over the prompts, one run, interleaved prompt by prompt ` +
      `(after an untimed warm-up pass: the same generations for cascade-xla, so that no timed run compiles a program, 4 tokens for the others). Each runtime in its own process.`,
    '',
    `Reproduce: \`${r.command}\` (the suite took ${r.suiteSeconds.toFixed(0)} s).`,
    '',
    `Machine: ${m.cpus} vCPUs (${m.cpuModel ?? '?'}), ${m.memoryGiB.toFixed(0)} GiB, ${m.platform}, Node ${m.node}; measured read bandwidth ` +
      `${m.bandwidthGBs.toFixed(1)} GB/s; load average at the end ${m.loadAverageAtEnd.map((x) => x.toFixed(1)).join(' / ')} ` +
      `(a shared, noisy machine: other jobs ran at the same time, so treat differences under ~30% as noise).`,
    '',
    '| runtime | tokens/s | TTFT ms | tau | accepted/proposed | peak RSS MiB | weights MiB | W/BW bound tok/s | of bound | same tokens as cascade-xla target |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...r.rows.map((x) => x.status === 'blocked'
      ? `| ${x.label} | blocked | | | | | | | | |`
      : `| ${x.label} | ${x.tokensPerSecond!.toFixed(1)} | ${x.ttftMs!.toFixed(0)} | ${x.tau == null ? '-' : x.tau.toFixed(2)} | ` +
        `${x.acceptance == null ? '-' : x.acceptance.toFixed(3)} | ${mib(x.peakRssBytes)} | ${mib(x.weightBytes)} | ` +
        `${x.boundTokensPerSecond === undefined ? '-' : x.boundTokensPerSecond.toFixed(1)} | ${x.ofBound === undefined ? '-' : `${(100 * x.ofBound).toFixed(0)}%`} | ` +
        `${x.sameTokensAsTarget === undefined ? '-' : `${x.sameTokensAsTarget}/${r.options.maxTokens}`} |`),
    '',
    ...r.rows.filter((x) => x.status === 'blocked').map((x) => `- **${x.label}: blocked**: \`${(x.error ?? '').replace(/\s+/g, ' ').slice(0, 400)}\``),
    '',
    '![tokens/s](compare.png)',
    '',
    '## What the rows and columns mean',
    '',
    `- **cascade-xla target / speculative / cascade / auto**: \`Cascade.load({ tiny: 'fit', warmup: true, measureBandwidth: true })\` ` +
      `on the XLA CPU plugin (the default target precision, bf16, ${r.targetStorage === 'q4-blocks' ? "its layer weights kept as the GGUF's Q4_1 blocks: with AMX our kernels multiply by their exact weights, without it by the dense bf16 target's weights bit for bit, docs/precision.md" : 'dequantised from the GGUF'}; the "f32 target" rows pass ` +
      `\`precision: { target: 'f32' }\`, in a second process${r.targetStorage === 'q4-blocks' ? "; the \"stored dense\" rows pass `targetStorage: 'dense'` (two bytes per layer weight, as a bf16 checkpoint's target is stored: the seed's setting, where the target reads ~2.8x the draft's bytes), in a third" : ''}), \`generate\` with \`mode\` = target-only, ` +
      `speculative (draft = ${r.draftPrecision === 'int8' ? 'an int8 copy (per-channel scales, our FFI kernels) of ' : r.draftPrecision === 'q4' ? "a q4 copy (the GGUF's own 4-bit blocks, our FFI kernels) of " : ''}the target's first ${r.draftLayers} layers, as the cost model chose, k1 ${r.options.k1}), cascade (+ the fitted tiny model, k0 ${r.options.k0}), ` +
      `and auto (the cost model picks per step). Compile time is excluded (warm-up at load and an untimed warm-up pass).`,
    `- **node-llama-cpp** 3.21.1, its prebuilt linux-x64 CPU binary from npm (\`gpu: false\`, \`build: 'never'\`, \`skipDownload: true\`), ` +
      `Q4_1 weights as they are in the file, \`LlamaContextSequence.evaluate\` at temperature 0 with 1 and 2 threads; ` +
      `"+ draft" is its \`DraftSequenceTokenPredictor\` (minTokens = maxTokens = ${r.options.k1} drafts per round, confidence threshold off) on a GGUF copy that keeps the ` +
      `target's first ${r.draftLayers} blocks${r.int8Draft ? ', requantised to Q8_0 (llama.cpp\'s int8 format)' : ''} (\`scripts/bench-truncate-gguf.py\`; there is no separate small SmolLM2 draft file).`,
    `- **transformers** 5.18 on torch 2.13 CPU (\`torch.set_num_threads(2)\`): the GGUF dequantised to f32, greedy \`generate\`; ` +
      `"assisted" passes \`assistant_model\` = a deep copy of the model with \`model.model.layers\` cut to the first ${r.draftLayers}${r.int8Draft ? ', its Linear layers int8 by `torch.ao.quantization.quantize_dynamic`' : ''} ` +
      `(${r.options.k1} assistant tokens per round, constant schedule, confidence threshold 0). Loaded with test/oracle/hf_gguf_model.py's ` +
      `loader (\`load_gguf_checkpoint\`: the oracle venv has no \`accelerate\`, which \`from_pretrained(gguf_file=)\` insists on).`,
    `- **tokens/s**: decode rate, prompt excluded: (tokens after the first chunk) / (time from the first token to the last). ` +
      `**TTFT**: request to the first generated token (prefill + first step). Medians over the prompts.`,
    `- **tau**: tokens per target call. **accepted/proposed**: share of draft tokens the target accepted ` +
      `(cascade-xla: stats.accepted / stats.proposed; node-llama-cpp: validated / (validated + refuted) predictions; ` +
      `transformers: (tokens - target calls) / assistant forward calls).`,
    `- **peak RSS**: \`process.resourceUsage().maxRSS\` (Node) / \`getrusage\` (Python) of that runtime's child process, all its variants together.`,
    `- **W/BW bound**: measured read bandwidth / weight bytes, the memory-bound ceiling of one-token-per-step decoding: ` +
      `the weight bytes a target step reads for cascade-xla (weights MiB column; \`info.memory.target.stepBytes\`), f32 for transformers (${mib(r.f32WeightBytes)} MiB), the Q4_1 file for llama.cpp (${mib(r.modelFileBytes)} MiB). ` +
      `**of bound** = tokens/s over that ceiling (speculative rows can exceed it).`,
    `- **same tokens as cascade-xla target**: median length of the prefix that equals cascade-xla's target-only output ` +
      `at the same target precision (every cascade-xla mode must give all of them; llama.cpp computes in Q4_1/Q8 and ` +
      `transformers in f32, so they may drift after some tokens).`,
    '',
  ];
  return lines.join('\n');
}

/** A horizontal bar chart of tokens/s, drawn as SVG and rasterised by @resvg/resvg-js. */
async function renderChart(rows: Row[], title: string): Promise<Buffer> {
  const ok = rows.filter((r) => r.status === 'ok');
  const max = Math.max(1, ...ok.map((r) => Math.max(r.tokensPerSecond!, r.boundTokensPerSecond ?? 0)));
  const W = 1080;
  const left = 480;
  const barH = 26;
  const top = 50;
  const H = top + rows.length * (barH + 10) + 40;
  const colour: Record<string, string> = { 'cascade-xla': '#2b6cb0', 'node-llama-cpp': '#c05621', transformers: '#6b46c1' };
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const scale = (v: number) => ((W - left - 80) * v) / max;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="DejaVu Sans, sans-serif">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${W / 2}" y="28" font-size="16" text-anchor="middle">${esc(title)}</text>`,
  ];
  rows.forEach((r, i) => {
    const y = top + i * (barH + 10);
    parts.push(`<text x="${left - 8}" y="${y + barH * 0.7}" font-size="13" text-anchor="end">${esc(r.label)}</text>`);
    if (r.status === 'blocked') {
      parts.push(`<text x="${left + 4}" y="${y + barH * 0.7}" font-size="13" fill="#999">blocked</text>`);
      return;
    }
    const w = scale(r.tokensPerSecond!);
    parts.push(`<rect x="${left}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${colour[r.runtime] ?? '#555'}"/>`);
    if (r.boundTokensPerSecond) {
      const bx = left + scale(r.boundTokensPerSecond);
      parts.push(`<line x1="${bx.toFixed(1)}" x2="${bx.toFixed(1)}" y1="${y - 2}" y2="${y + barH + 2}" stroke="#222" stroke-dasharray="3,2"/>`);
    }
    parts.push(`<text x="${left + w + 6}" y="${y + barH * 0.7}" font-size="13">${r.tokensPerSecond!.toFixed(1)}</text>`);
  });
  parts.push(`<text x="${left}" y="${H - 12}" font-size="12" fill="#444">dashed line: W/BW memory-bandwidth bound of one-token-per-step decoding</text>`);
  parts.push('</svg>');
  const { Resvg } = await import('@resvg/resvg-js');
  return new Resvg(parts.join(''), { font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans' } }).render().asPng();
}
