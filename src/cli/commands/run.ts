import { Command } from 'commander';

import { mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';

import { Cascade, type CascadeStats, type DecodeMode, type KvCacheType, type Precision } from '../../cascade/cascade.js';
import { resolveModel } from '../../models/catalog.js';
import { cachePath, compileCacheDir } from '../../utils/cache.js';
import { printJson, table } from '../output.js';
import { phaseTimer, progressBar, progressMode, type Progress } from '../progress.js';
import { addDecodingOptions, addModelOptions, addSamplingOptions, decodingFromFlags, engineDefaults, positiveInteger, samplingFromFlags, type DecodingFlags, type SamplingFlags } from '../options.js';
import { downloadReporter } from './pull.js';

interface RunOptions extends LoadFlags, SamplingFlags {
  maxTokens: number;
  branches: number;
  dynamic?: boolean;
  raw?: boolean;
  compare?: boolean;
  json?: boolean;
  stats?: boolean;
}

/** The seed's throughput table for one run, plus the acceptance figures. */
export function statsTable(stats: CascadeStats, baseline?: CascadeStats): string {
  const s = stats.stageMs;
  const total = s.tiny + s.draft + s.target + s.host || 1;
  const row = (name: string, ms: number) => [name, ms.toFixed(1), `${((100 * ms) / total).toFixed(1)}%`];
  const lines = [
    table([['stage', 'ms', 'share'], row('tiny', s.tiny), row('draft', s.draft), row('target', s.target), row('host', s.host)]),
    '',
    `prefill ${s.prefill.toFixed(0)} ms for ${stats.promptTokens} prompt tokens; ${stats.generatedTokens} tokens generated`,
    `tau (tokens per target call) ${stats.tau.toFixed(2)}   gamma2|1 (acceptance) ${stats.gamma21.toFixed(2)}   ` +
      `gammaTotal ${stats.gammaTotal.toFixed(2)}   gamma0 ${stats.gamma0 === null ? 'n/a (no tiny model)' : stats.gamma0.toFixed(2)}`,
    `per-position acceptance ${stats.positionAcceptance.map((a) => a.toFixed(2)).join(' ') || 'n/a'}`,
    `tokens/s ${stats.tokensPerSecond.toFixed(1)}   rounds target/speculative/cascade ${stats.rounds.target}/${stats.rounds.speculative}/${stats.rounds.cascade}   mean L ${stats.meanProposalLength.toFixed(1)}`,
    `cost model: predicted speedup ${stats.predictedSpeedup.toFixed(2)}x, measured ${stats.measuredSpeedup === null ? 'n/a' : `${stats.measuredSpeedup.toFixed(2)}x`}` +
      `   (compile ${s.compile.toFixed(0)} ms, excluded)`,
  ];
  if (baseline) {
    lines.push(
      `target-only tokens/s ${baseline.tokensPerSecond.toFixed(1)}  ->  speedup ${(stats.tokensPerSecond / baseline.tokensPerSecond).toFixed(2)}x`,
    );
  }
  return lines.join('\n');
}

/** What a command needs to load a Cascade (run and chat share it). */
export interface LoadFlags extends DecodingFlags {
  model?: string | undefined;
  draft?: string | undefined;
  tiny?: string | undefined;
  devices: number;
  draftLayers?: number | undefined;
  targetPrecision?: Precision | undefined;
  draftPrecision?: Precision | undefined;
  targetStorage?: 'auto' | 'dense' | undefined;
  targetKvCache?: KvCacheType | undefined;
  draftKvCache?: KvCacheType | undefined;
  maxContext?: number;
  /** Conversations whose KV caches stay resident (serve sets it to its slots). */
  maxSequences?: number;
  plugin: string;
}

/** How long each model setup took to load last time (`<cache>/load-times.json`), for the load phase's ETA. */
type LoadTimes = Record<string, number>;
const LOAD_TIMES_KEPT = 50;

async function loadKey(target: string, draft: string | undefined, opts: LoadFlags, tiny: string | undefined): Promise<string> {
  const st = await stat(target).catch(() => undefined);
  return JSON.stringify([target, st?.size, st?.mtimeMs, draft, opts.targetPrecision, opts.draftPrecision, opts.targetStorage, opts.targetKvCache, opts.draftKvCache, opts.draftLayers, opts.maxContext, opts.devices, tiny, opts.plugin]);
}

async function readLoadTimes(): Promise<LoadTimes> {
  try {
    const t = JSON.parse(await readFile(cachePath('load-times.json'), 'utf8')) as unknown;
    return t !== null && typeof t === 'object' && !Array.isArray(t) ? (t as LoadTimes) : {};
  } catch {
    return {};
  }
}

async function writeLoadTimes(times: LoadTimes): Promise<void> {
  // The newest entries win; a failed write only loses the next ETA.
  const kept = Object.fromEntries(Object.entries(times).slice(-LOAD_TIMES_KEPT));
  const file = cachePath('load-times.json');
  const tmp = `${file}.tmp${process.pid}`;
  try {
    await mkdir(dirname(file), { recursive: true });
    await writeFile(tmp, `${JSON.stringify(kept)}\n`);
    await rename(tmp, file);
  } catch {
    await rm(tmp, { force: true }).catch(() => undefined);
  }
}

async function compiledProgramCount(): Promise<number> {
  return (await readdir(compileCacheDir()).catch(() => [] as string[])).length;
}

/**
 * Resolves the models (a path, a URL or a catalogue name; default: the default model), then loads
 * them with the warm-up, showing each phase that lasts over a second: the download (bytes, ETA),
 * the load (elapsed seconds: reading, uploading, and on a first load measuring the draft and fitting
 * the tiny model) and the XLA programs (count, ETA), labelled "compiling" only when the compile
 * cache grew, else "loading ... from the cache".
 */
export async function loadForCli(opts: LoadFlags, quiet: boolean): Promise<{ cascade: Cascade; target: string; loadMs: number }> {
  const mode = progressMode(quiet);
  const started = performance.now();
  const reporter = downloadReporter(quiet);
  let target: string;
  let draft: string | undefined;
  try {
    target = (await resolveModel(opts.model ?? 'default', { onProgress: reporter.onProgress })).path;
    draft = opts.draft === undefined ? undefined : (await resolveModel(opts.draft, { onProgress: reporter.onProgress })).path;
  } finally {
    reporter.stop();
  }
  const cacheOff = /^(0|false|no|off)$/i.test(process.env.CASCADE_COMPILE_CACHE?.trim() ?? '');
  const programsBefore = cacheOff ? 0 : await compiledProgramCount();
  const tiny = opts.tiny ?? (opts.mode === 'cascade' || opts.mode === 'auto' ? 'fit' : undefined);
  const key = await loadKey(target, draft, opts, tiny);
  const times = await readLoadTimes();
  const expected = times[key];
  const label =
    expected === undefined
      ? `loading ${basename(target)} (a first load measures the draft${tiny === 'fit' ? ', fits the tiny model' : ''} and compiles XLA programs; all cached afterwards)`
      : `loading ${basename(target)}`;
  const loading = phaseTimer(label, mode, 1000, expected);
  const loadStarted = performance.now();
  let bar: Progress | undefined;
  let fitBar: Progress | undefined;
  let programs: Promise<void> = Promise.resolve();
  try {
    const cascade = await Cascade.load({
      target,
      draft,
      warmup: true,
      measureBandwidth: true,
      k1: opts.k1,
      k0: opts.k0,
      onProgress: (stage, done, total) => {
        if (stage === 'fit') {
          loading.stop();
          fitBar ??= progressBar('fitting the tiny model on text the target writes (first load; cached afterwards)', mode);
          fitBar.update(done, total);
          return;
        }
        if (stage !== 'compile') return;
        loading.stop();
        fitBar?.stop();
        // Label the phase by what happened to the first program: a new compile-cache entry means compiled.
        programs = programs.then(async () => {
          if (bar === undefined) {
            const compiled = cacheOff || (await compiledProgramCount()) > programsBefore;
            bar = progressBar(compiled ? 'compiling XLA programs (first run; cached afterwards)' : 'loading XLA programs from the cache', mode);
          }
          bar.update(done, total);
        });
      },
      plugin: opts.plugin,
      devices: opts.devices,
      maxContext: opts.maxContext,
      maxSequences: opts.maxSequences,
      draftLayers: opts.draftLayers,
      tiny,
      precision: opts.targetPrecision || opts.draftPrecision ? { target: opts.targetPrecision, draft: opts.draftPrecision } : 'auto',
      targetStorage: opts.targetStorage,
      kvCache: opts.targetKvCache || opts.draftKvCache ? { target: opts.targetKvCache, draft: opts.draftKvCache } : 'auto',
    });
    await programs;
    times[key] = Math.round(performance.now() - loadStarted);
    await writeLoadTimes(times);
    return { cascade, target, loadMs: performance.now() - started };
  } finally {
    loading.stop();
    fitBar?.stop();
    bar?.stop();
  }
}

/** One line for stderr after a reply: tokens, speed, and what the mode did. */
export function summaryLine(stats: CascadeStats, mode: DecodeMode, loadMs?: number): string {
  const cached = stats.cachedTokens > 0 ? ` (${stats.cachedTokens} reused from the KV cache)` : '';
  const parts = [`${stats.promptTokens} prompt tokens${cached}`, `${stats.generatedTokens} tokens`, `${stats.tokensPerSecond.toFixed(1)} tokens/s`, `mode ${mode}`];
  if (stats.targetCalls > 0 && mode !== 'target') parts.push(`${stats.tau.toFixed(2)} tokens per target call`);
  if (loadMs !== undefined) parts.push(`load ${(loadMs / 1000).toFixed(1)} s`);
  return parts.join(', ');
}

async function run(prompt: string, opts: RunOptions, quiet: boolean): Promise<void> {
  const { cascade: c, target, loadMs } = await loadForCli(opts, quiet);
  try {
    const generation = { ...decodingFromFlags(opts), maxTokens: opts.maxTokens, ...samplingFromFlags(opts) };
    const input = opts.raw ? prompt : [{ role: 'user', content: prompt }];
    // --compare: a few target-only tokens first, so the cost model has timed a decode of its own
    // (without one it reads the decode back from the verify calls, ~10% high here) and the stats
    // carry its predicted and measured speedup.
    if (opts.compare && opts.mode !== 'target') await c.generate(input, { ...generation, mode: 'target', maxTokens: 24 });
    let text = '';
    const first = performance.now();
    for await (const piece of c.stream(input, generation)) {
      text += piece.text;
      if (!opts.json) process.stdout.write(piece.text);
    }
    const stats = c.lastStats!;
    const firstMs = performance.now() - first;
    let baseline: CascadeStats | undefined;
    if (opts.compare && opts.mode !== 'target') {
      baseline = (await c.generate(input, { ...generation, mode: 'target' })).stats;
    }
    if (opts.json) {
      printJson({ model: target, mode: opts.mode, text, stats, baseline, loadMs, generateMs: firstMs, info: c.info, placement: await c.placement() });
      return;
    }
    process.stdout.write('\n');
    if (!opts.stats || quiet) {
      if (!quiet) process.stderr.write(`${summaryLine(stats, opts.mode, loadMs)}${baseline ? `; target-only ${baseline.tokensPerSecond.toFixed(1)} tokens/s` : ''}\n`);
      return;
    }
    console.log('');
    console.log(`${c.info.target.family} target: ${c.info.target.layers} layers (${c.info.targetPrecision}); draft: ${c.info.draft.layers} layers (${c.info.draftPrecision}); mode ${opts.mode}${stats.proposalLength ? `, k1 ${stats.proposalLength}` : ''}`);
    console.log(statsTable(stats, baseline));
    const placement = await c.placement();
    console.log(
      `placement: ${placement.models.map((m) => `${m.model} ${(m.bytes / 1048576).toFixed(0)} MiB in "${m.memoryKind}"${m.share === null ? '' : ` (${(100 * m.share).toFixed(1)}%)`}${m.hugePageBytes > 0 ? `, ${(m.hugePageBytes / 1048576).toFixed(0)} MiB in 2 MiB pages` : ''}`).join(', ')}` +
        (placement.tinyVersusCache
          ? `; tiny ${(placement.tinyVersusCache.tinyBytes / 1048576).toFixed(1)} MiB vs largest CPU cache ${(placement.tinyVersusCache.cacheBytes / 1048576).toFixed(1)} MiB (${placement.tinyVersusCache.fits ? 'fits' : 'does not fit'})`
          : ''),
    );
    const cm = c.costModel;
    if (cm) {
      console.log(
        `memory bandwidth ${cm.bandwidthGBs.toFixed(1)} GB/s: weight-read floor per step target ${cm.targetFloorMs.toFixed(1)} ms ` +
          `(${(c.info.memory.target.stepBytes / 1048576).toFixed(0)} MiB), draft+tiny ${cm.draftFloorMs.toFixed(1)} ms ` +
          `(${((c.info.memory.draft.stepBytes + c.info.memory.draft.tinyBytes) / 1048576).toFixed(0)} MiB)`,
      );
    }
  } finally {
    await c.dispose();
  }
}

export function runCommand(name = 'run'): Command {
  const cmd = new Command(name).argument(name === 'demo' ? '[prompt]' : '<prompt>', 'what to ask (rendered with the model chat template unless --raw)');
  addDecodingOptions(addModelOptions(cmd), { mode: name === 'demo' ? 'cascade' : 'speculative', branches: true })
    .option('--max-tokens <n>', 'most tokens to generate', positiveInteger('--max-tokens'), 128);
  addSamplingOptions(cmd)
    .option('--max-context <n>', `KV cache length in tokens (default: the library's${engineDefaults() ? `, ${engineDefaults()!.maxContext}` : ''})`, positiveInteger('--max-context'))
    .option('--raw', 'send the prompt as plain text, without the chat template')
    .option('--compare', 'also run target-only decoding and report the speedup', name === 'demo')
    .option('--json', 'print one JSON object (text, stats) instead of streaming')
    .option('--stats', 'after the answer, print the statistics: stage times, acceptance, placement, bandwidth (default: one summary line on stderr)', name === 'demo');
  if (name === 'demo') {
    cmd.description(
      'The demo: fetch SmolLM2-135M-Instruct and build its default draft and tiny model (once, cached), stream an ' +
        'answer with cascaded decoding (tiny -> draft -> target), then print the stage table and the target-only speed ' +
        'for comparison.',
    );
  } else {
    cmd.description('Generate a reply to a prompt, streaming it to stdout; one summary line on stderr (--stats for the full statistics, --quiet for none).');
  }
  cmd.addHelpText('after', `\nExamples:\n  $ cascade-xla ${name} "Why is the sky blue?"\n  $ cascade-xla ${name} --mode target --max-tokens 64 --temperature 0.8 --seed 1 "Write a haiku"`);
  return cmd.action((prompt: string | undefined, opts: RunOptions, command: Command) =>
    run(prompt ?? 'Write a short story about a robot who learns to paint.', opts, command.optsWithGlobals().quiet === true),
  );
}
