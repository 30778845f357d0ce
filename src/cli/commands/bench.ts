import { Command, Option } from 'commander';

import type { DecodeMode, Precision } from '../../cascade/cascade.js';
import { PRECISIONS } from '../../cascade/types.js';
import { Runtime } from '../../runtime/runtime.js';
import { benchModes } from './bench-modes.js';
import { benchCompare } from './bench-compare.js';
import { benchChat } from './bench-chat.js';
import { tensor } from '../../runtime/tensor.js';
import { median, printJson, table } from '../output.js';
import { engineDefaults, k1Default, pluginOption, positiveInteger } from '../options.js';

const MATMUL = (n: number) => `
func.func public @main(%a: tensor<${n}x${n}xf32>, %b: tensor<${n}x${n}xf32>) -> tensor<${n}x${n}xf32> {
  %c = stablehlo.dot_general %a, %b, contracting_dims = [1] x [0] : (tensor<${n}x${n}xf32>, tensor<${n}x${n}xf32>) -> tensor<${n}x${n}xf32>
  return %c : tensor<${n}x${n}xf32>
}`;

interface RuntimeSample {
  devices: number;
  openMs: number;
  compileMs: number;
  firstExecuteMs: number;
  executeMs: number;
}

/** Open + compile + execute an n x n f32 matmul on `devices` devices (each device its own copy). */
async function runtimeSample(plugin: string, devices: number, n: number, repeats: number): Promise<RuntimeSample> {
  const t0 = performance.now();
  await using rt = await Runtime.open({ plugin, devices });
  const t1 = performance.now();
  const exe = await rt.compile(MATMUL(n), { replicas: devices });
  const t2 = performance.now();
  const a = tensor('f32', [n, n], new Float32Array(n * n).fill(0.5));
  const inputs = Array.from({ length: devices }, () => [a, a]);
  await exe.execute(inputs);
  const t3 = performance.now();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const s = performance.now();
    await exe.execute(inputs);
    times.push(performance.now() - s);
  }
  return { devices, openMs: t1 - t0, compileMs: t2 - t1, firstExecuteMs: t3 - t2, executeMs: median(times) };
}

export function benchCommand(): Command {
  return new Command('bench')
    .description(
      'Benchmarks, run side by side and reported as medians. Suite "compare" (the default): cascade-xla\'s modes next to ' +
        'node-llama-cpp and Hugging Face transformers on the same GGUF and prompts, written to docs/bench/compare.{json,md,png}. ' +
        'Suite "modes": target / speculative / cascade / auto in one process. Suite "runtime": open + compile + execute ' +
        'an n x n f32 matmul on 1 and on N devices, interleaved over several rounds (execute includes host<->device copies). ' +
        'Suite "chat": time to first token of a chat turn whose history is in the session\'s KV cache vs the same turn from scratch ' +
        '(docs/bench/chat.{json,md}).',
    )
    .addOption(new Option('--suite <name>', 'which benchmark').choices(['compare', 'modes', 'runtime', 'chat']).default('compare'))
    .option('--model <path>', 'modes: target model (default: SmolLM2-135M-Instruct)')
    .option('--modes <list>', 'modes: comma-separated decoding modes', 'target,speculative,cascade,auto')
    .option('--temperatures <list>', 'modes: comma-separated temperatures', '0,0.8')
    .option('--max-tokens <n>', 'modes: tokens per generation', positiveInteger('--max-tokens'), 64)
    .option('--k1 <n>', `compare, modes: draft proposals per target call (default: ${k1Default()})`, positiveInteger('--k1'))
    .option('--k0 <n>', 'modes: tiny candidates per draft step', positiveInteger('--k0'), engineDefaults()?.k0)
    .option('--draft-layers <n>', 'modes: layers of the self-speculative draft', positiveInteger('--draft-layers'))
    .option('--no-lookahead', 'modes: no draft lookahead (the same tokens; for a side-by-side)')
    .option('--seeds <n>', 'modes: seeds per prompt at T > 0 (each mode samples its own text; greedy runs once)', positiveInteger('--seeds'), 3)
    .addOption(new Option('--draft-precision <p>', 'modes: draft weights on the device').choices(PRECISIONS).default(engineDefaults()?.draftPrecision))
    .addOption(new Option('--target-storage <s>', "modes: how the bf16 target is stored (dense: two bytes per weight, the seed's setting; writes modes-dense.*)").choices(['auto', 'dense']))
    .option('--out <dir>', 'modes, chat: where to write their .json and .md', 'docs/bench')
    .option('--mode <mode>', 'chat: the decoding mode', 'speculative')
    .option('--runs <n>', 'chat: measured runs (medians)', positiveInteger('--runs'), 5)
    .addOption(pluginOption())
    .option('--devices <list>', 'comma-separated device counts', '1,4')
    .option('--size <n>', 'matrix size', positiveInteger('--size'), 1024)
    .option('--rounds <n>', 'runtime, modes: interleaved rounds (medians over rounds; modes: per prompt and seed)', positiveInteger('--rounds'), 3)
    .option('--repeats <n>', 'executions per round after the first', positiveInteger('--repeats'), 5)
    .option('--json', 'print JSON')
    .addHelpText('after', '\nExamples:\n  $ cascade-xla bench                      # the side-by-side comparison (~15 min)\n  $ cascade-xla bench --suite runtime --devices 1,4 --size 1024 --rounds 5')
    .action(async (opts: { suite: string; plugin: string; devices: string; size: number; rounds: number; repeats: number; json?: boolean;
      model?: string; modes: string; temperatures: string; maxTokens: number; k1?: number; k0: number; draftLayers?: number; lookahead: boolean; seeds: number; out: string;
      mode: string; runs: number; draftPrecision?: Precision; targetStorage?: 'auto' | 'dense' }) => {
      if (opts.suite === 'chat') {
        await benchChat({ model: opts.model, plugin: opts.plugin, mode: opts.mode as DecodeMode, runs: opts.runs, out: opts.out });
        return;
      }
      if (opts.suite === 'compare') {
        // Greedy generations only: the greedy default unless --k1.
        await benchCompare({ model: opts.model, maxTokens: opts.maxTokens, k1: opts.k1 ?? engineDefaults()?.k1 ?? 12, k0: opts.k0, out: opts.out, plugin: opts.plugin });
        return;
      }
      if (opts.suite === 'modes') {
        await benchModes({
          model: opts.model,
          modes: opts.modes.split(',').map((m) => m.trim()) as DecodeMode[],
          temperatures: opts.temperatures.split(',').map(Number),
          maxTokens: opts.maxTokens,
          k1: opts.k1,
          k0: opts.k0,
          draftLayers: opts.draftLayers,
          draftPrecision: opts.draftPrecision,
          targetStorage: opts.targetStorage,
          lookahead: opts.lookahead,
          seeds: opts.seeds,
          rounds: opts.rounds,
          out: opts.out,
          plugin: opts.plugin,
        });
        return;
      }
      const counts = opts.devices.split(',').map((v) => positiveInteger('--devices')(v.trim()));
      const samples = new Map<number, RuntimeSample[]>(counts.map((d) => [d, []]));
      for (let r = 0; r < opts.rounds; r++) {
        for (const d of counts) samples.get(d)!.push(await runtimeSample(opts.plugin, d, opts.size, opts.repeats));
      }
      const rows = counts.map((d) => {
        const s = samples.get(d)!;
        const pick = (k: keyof RuntimeSample) => median(s.map((x) => x[k]));
        return { devices: d, openMs: pick('openMs'), compileMs: pick('compileMs'), firstExecuteMs: pick('firstExecuteMs'), executeMs: pick('executeMs') };
      });
      const base = rows[0]!;
      if (opts.json) return printJson({ suite: 'runtime', size: opts.size, rounds: opts.rounds, repeats: opts.repeats, rows });
      console.log(`runtime: ${opts.size}x${opts.size} f32 matmul, medians of ${opts.rounds} interleaved rounds (execute: median of ${opts.repeats})`);
      console.log(
        table([
          ['devices', 'open ms', 'compile ms', 'first exec ms', 'exec ms', 'exec vs first row'],
          ...rows.map((r) => [String(r.devices), r.openMs.toFixed(1), r.compileMs.toFixed(1), r.firstExecuteMs.toFixed(1), r.executeMs.toFixed(1), `${(r.executeMs / base.executeMs).toFixed(2)}x`]),
        ]),
      );
    });
}
