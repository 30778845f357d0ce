import { Command, Option } from 'commander';

import { Cascade, type CascadeStats, type DecodeMode, type Precision } from '../../cascade/cascade.js';
import { ensureDefaultModel } from '../../models/default-model.js';
import { printJson, table } from '../output.js';
import { progressBar } from '../progress.js';
import { pluginOption, positiveInteger } from '../options.js';

interface RunOptions {
  model?: string;
  draft?: string;
  mode: DecodeMode;
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
  k1: number;
  k0: number;
  tiny?: string;
  dynamic?: boolean;
  branches: number;
  devices: number;
  draftLayers?: number;
  targetPrecision?: Precision;
  draftPrecision?: Precision;
  maxContext: number;
  raw?: boolean;
  compare?: boolean;
  json?: boolean;
  plugin: string;
}

const nonNegativeNumber = (flag: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${flag} must be a number >= 0, got '${v}'`);
  return n;
};

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

async function run(prompt: string, opts: RunOptions): Promise<void> {
  const progress = (m: string) => process.stderr.write(`${m}\n`);
  const target = opts.model ?? (await ensureDefaultModel({ onProgress: progress })).path;
  const started = performance.now();
  if (!opts.json) progress(`loading ${target} (first run compiles the XLA programs, cached afterwards)`);
  const bar = progressBar('compiling programs (once per machine)', !opts.json && process.stderr.isTTY === true);
  await using c = await Cascade.load({
    target,
    warmup: true,
    measureBandwidth: true,
    k1: opts.k1,
    k0: opts.k0,
    onProgress: (_stage, done, total) => bar.update(done, total),
    draft: opts.draft,
    plugin: opts.plugin,
    devices: opts.devices,
    maxContext: opts.maxContext,
    draftLayers: opts.draftLayers,
    tiny: opts.tiny ?? (opts.mode === 'cascade' || opts.mode === 'auto' ? 'fit' : undefined),
    precision: opts.targetPrecision || opts.draftPrecision ? { target: opts.targetPrecision, draft: opts.draftPrecision } : 'auto',
  });
  bar.stop();
  const generation = {
    mode: opts.mode,
    maxTokens: opts.maxTokens,
    temperature: opts.temperature,
    topK: opts.topK,
    topP: opts.topP,
    seed: opts.seed,
    k1: opts.k1,
    k0: opts.k0,
    branches: opts.branches,
    ...(opts.dynamic ? { dynamicHorizon: true } : {}),
  };
  const input = opts.raw ? prompt : [{ role: 'user', content: prompt }];
  let text = '';
  let stats: CascadeStats | undefined;
  const first = performance.now();
  for await (const piece of c.stream(input, generation)) {
    text += piece.text;
    if (!opts.json) process.stdout.write(piece.text);
  }
  stats = c.lastStats!;
  const firstMs = performance.now() - first;
  let baseline: CascadeStats | undefined;
  if (opts.compare && opts.mode !== 'target') {
    baseline = (await c.generate(input, { ...generation, mode: 'target' })).stats;
  }
  if (opts.json) {
    printJson({ model: target, mode: opts.mode, text, stats, baseline, loadMs: first - started, generateMs: firstMs, info: c.info, placement: await c.placement() });
    return;
  }
  process.stdout.write('\n\n');
  console.log(`${c.info.target.family} target: ${c.info.target.layers} layers (${c.info.targetPrecision}); draft: ${c.info.draft.layers} layers (${c.info.draftPrecision}); mode ${opts.mode}, k1 ${opts.k1}`);
  console.log(statsTable(stats, baseline));
  const placement = await c.placement();
  console.log(
    `placement: ${placement.models.map((m) => `${m.model} ${(m.bytes / 1048576).toFixed(0)} MiB in "${m.memoryKind}"${m.share === null ? '' : ` (${(100 * m.share).toFixed(1)}%)`}`).join(', ')}` +
      (placement.tinyVersusCache
        ? `; tiny ${(placement.tinyVersusCache.tinyBytes / 1048576).toFixed(1)} MiB vs largest CPU cache ${(placement.tinyVersusCache.cacheBytes / 1048576).toFixed(1)} MiB (${placement.tinyVersusCache.fits ? 'fits' : 'does not fit'})`
        : ''),
  );
  const cm = c.costModel;
  if (cm) {
    console.log(
      `memory bandwidth ${cm.bandwidthGBs.toFixed(1)} GB/s: weight-read floor per step target ${cm.targetFloorMs.toFixed(1)} ms ` +
        `(${(c.info.memory.target.weightBytes / 1048576).toFixed(0)} MiB), draft+tiny ${cm.draftFloorMs.toFixed(1)} ms ` +
        `(${((c.info.memory.draft.weightBytes + c.info.memory.draft.tinyBytes) / 1048576).toFixed(0)} MiB)`,
    );
  }
}

export function runCommand(name = 'run'): Command {
  const cmd = new Command(name)
    .argument(name === 'demo' ? '[prompt]' : '<prompt>', 'what to ask (rendered with the model chat template unless --raw)')
    .option('--model <path>', 'target model: a GGUF file or a Hugging Face folder (default: SmolLM2-135M-Instruct, downloaded once)')
    .option('--draft <path>', 'draft model with the same vocabulary (default: the target\'s first layers)')
    .addOption(new Option('--mode <mode>', 'decoding mode').choices(['target', 'speculative', 'cascade', 'auto']).default(name === 'demo' ? 'cascade' : 'speculative'))
    .option('--max-tokens <n>', 'most tokens to generate', positiveInteger('--max-tokens'), 128)
    .option('--temperature <t>', '0 is greedy', nonNegativeNumber('--temperature'), 0)
    .option('--top-k <k>', 'keep the k most likely tokens (0 = off)', nonNegativeNumber('--top-k'), 0)
    .option('--top-p <p>', 'nucleus sampling threshold (1 = off)', nonNegativeNumber('--top-p'), 1)
    .option('--seed <n>', 'sampler seed', nonNegativeNumber('--seed'), 0)
    .option('--k1 <n>', 'draft proposals per target call (the most, with --dynamic)', positiveInteger('--k1'), 4)
    .option('--k0 <n>', 'tiny candidates per draft step (cascade mode)', positiveInteger('--k0'), 64)
    .option('--tiny <path>', "tiny model for --mode cascade: a .safetensors file, or 'fit' to fit one from the draft (cached)")
    .option('--devices <n>', 'devices the target is replicated on; branches are split across them', positiveInteger('--devices'), 1)
    .option('--branches <n>', 'proposal branches per step, verified as a tree in one target call', positiveInteger('--branches'), 1)
    .option('--dynamic', 'choose the proposal length per step from the cost model (on by default in auto mode)')
    .option('--draft-layers <n>', 'layers of the self-speculative draft', positiveInteger('--draft-layers'))
    .addOption(new Option('--target-precision <p>', 'target weights on the device').choices(['f32', 'bf16', 'int8']))
    .addOption(new Option('--draft-precision <p>', 'draft weights on the device').choices(['f32', 'bf16', 'int8']))
    .option('--max-context <n>', 'KV cache length in tokens', positiveInteger('--max-context'), 512)
    .option('--raw', 'send the prompt as plain text, without the chat template')
    .option('--compare', 'also run target-only decoding and report the speedup', name === 'demo')
    .option('--json', 'print one JSON object (text, stats) instead of streaming')
    .addOption(pluginOption());
  if (name === 'demo') {
    cmd.description(
      'The demo: fetch SmolLM2-135M-Instruct and build its default draft and tiny model (once, cached), stream an ' +
        'answer with cascaded decoding (tiny -> draft -> target), then print the stage table and the target-only speed ' +
        'for comparison.',
    );
  } else {
    cmd.description('Generate a reply to a prompt, streaming it to the terminal, then print the statistics.');
  }
  cmd.addHelpText('after', `\nExamples:\n  $ cascade-xla ${name} "Why is the sky blue?"\n  $ cascade-xla ${name} --mode target --max-tokens 64 --temperature 0.8 --seed 1 "Write a haiku"`);
  return cmd.action((prompt: string | undefined, opts: RunOptions) => run(prompt ?? 'Write a short story about a robot who learns to paint.', opts));
}
