import path from 'node:path';

import { Command, Option } from 'commander';

import type { Precision } from '../../cascade/cascade.js';
import { PRECISIONS } from '../../cascade/types.js';
import { distillTiny } from '../../cascade/distill.js';
import { ensureDefaultModel } from '../../models/default-model.js';
import { native } from '../../native.js';
import { nonNegativeInteger, pluginOption, positiveInteger, positiveNumber } from '../options.js';
import { printJson, table } from '../output.js';
import { type Progress, progressBar, progressMode } from '../progress.js';

function defaults(): { positions: number; hidden: number; steps: number; batch: number; learningRate: number } | undefined {
  try {
    return native().distillDefaults;
  } catch {
    return undefined;  // --help works without the addon
  }
}

export function distillCommand(): Command {
  const d = defaults();
  const dflt = (v: number | undefined) => (v === undefined ? '' : ` (default ${v})`);
  return new Command('distill')
    .description(
      'Train the tiny projection model (stage 0) by knowledge distillation from the draft, on text the target writes ' +
        '(no dataset needed). The tiny reads the draft\'s final hidden state; it starts from a closed-form fit to the ' +
        "draft's head, then Adam minimises the KL from the draft's next-token distribution, each step one StableHLO " +
        'program (forward, backward, update) on the PJRT device. 20% of the text is held out to report gamma0, the share ' +
        "of draft steps whose own choice is among the tiny's K0 candidates. By default the result is written where " +
        "Cascade.load({ tiny: 'fit' }) (and `run --mode cascade`) looks, so the next load uses it.",
    )
    .option('--target <path>', 'target model (default: SmolLM2-135M-Instruct, downloaded once)')
    .option('--draft <path>', "draft model (default: the target's first --draft-layers layers)")
    .option('--draft-layers <n>', "layers of the self-speculative draft (default: the depth a load remembers, else all the target's)", positiveInteger('--draft-layers'))
    .option('--out <file>', 'where to write the tiny model (.safetensors; default: the load cache)')
    .option('--positions <n>', `positions of generated text to learn from${dflt(d?.positions)}`, positiveInteger('--positions'))
    .option('--hidden <n>', `hidden width of the tiny${dflt(d?.hidden)}`, positiveInteger('--hidden'))
    .option('--steps <n>', `Adam steps after the closed form; 0: the closed form alone${dflt(d?.steps)}`, nonNegativeInteger('--steps'))
    .option('--batch <n>', `rows per Adam minibatch${dflt(d?.batch)}`, positiveInteger('--batch'))
    .option('--learning-rate <x>', `Adam's step size${dflt(d?.learningRate)}`, positiveNumber('--learning-rate'))
    .addOption(new Option('--target-precision <p>', 'target weights while writing the text (default: as a load)').choices(PRECISIONS))
    .addOption(new Option('--draft-precision <p>', 'draft weights (default: as a load; the tiny reads this draft)').choices(PRECISIONS))
    .option('--seed <n>', 'seed of the generated text and the minibatch order', positiveInteger('--seed'), 1)
    .option('--json', 'print the report as JSON')
    .option('--quiet', 'no progress on stderr')
    .addOption(pluginOption())
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  $ cascade-xla distill                          # the default model; the next cascade load uses the result\n' +
        '  $ cascade-xla run --mode cascade "Hello"\n' +
        '  $ cascade-xla distill --steps 0 --out tiny.safetensors   # the closed form alone, to a file\n' +
        '  $ cascade-xla run --mode cascade --tiny tiny.safetensors "Hello"',
    )
    .action(
      async (opts: {
        target?: string; draft?: string; draftLayers?: number; out?: string; positions?: number; hidden?: number; steps?: number;
        batch?: number; learningRate?: number; targetPrecision?: Precision; draftPrecision?: Precision; seed: number; json?: boolean;
        quiet?: boolean; plugin: string;
      }) => {
        const target = opts.target ?? (await ensureDefaultModel({ onProgress: (m) => process.stderr.write(`${m}\n`) })).path;
        const mode = opts.json || opts.quiet ? 'off' : progressMode();
        // Each phase's bar starts with its first update (its ETA is the phase's own).
        const labels = { generate: 'writing text', train: 'training (Adam)' } as const;
        const bars: Partial<Record<keyof typeof labels, Progress>> = {};
        let phase: keyof typeof labels = 'generate';
        const stopAll = () => Object.values(bars).forEach((b) => b.stop());
        const controller = new AbortController();
        const onSigint = () => controller.abort();
        process.once('SIGINT', onSigint);
        try {
          const r = await distillTiny({
            target,
            draft: opts.draft,
            draftLayers: opts.draft ? undefined : opts.draftLayers,
            out: opts.out === undefined ? undefined : path.resolve(opts.out),
            positions: opts.positions,
            hidden: opts.hidden,
            steps: opts.steps,
            batch: opts.batch,
            learningRate: opts.learningRate,
            precision: opts.targetPrecision || opts.draftPrecision ? { target: opts.targetPrecision, draft: opts.draftPrecision } : 'auto',
            seed: opts.seed,
            plugin: opts.plugin,
            onProgress: (p, done, total) => {
              if (p !== phase) bars[phase]?.stop();
              phase = p;
              (bars[p] ??= progressBar(labels[p], mode)).update(done, total);
            },
            signal: controller.signal,
          });
          stopAll();
          if (opts.json) return printJson(r);
          console.log(`wrote ${r.path}: learned from ${r.trainPositions} positions, ${r.heldoutPositions} held out`);
          const before = new Map(r.closedFormGamma0);
          const header = r.train.steps > 0 ? ['K0', 'gamma0 (held out)', 'closed form alone'] : ['K0', 'gamma0 (held out)'];
          console.log(table([header, ...r.gamma0.map(([k, g]) => [String(k), g.toFixed(3), ...(r.train.steps > 0 ? [before.get(k)?.toFixed(3) ?? ''] : [])])]));
          if (r.train.steps > 0) {
            console.log(`distillation: ${r.train.steps} Adam steps of ${r.train.batch} rows, KL ${r.train.firstLoss.toFixed(3)} -> ${r.train.lastLoss.toFixed(3)} nats`);
            const v = (step: number) => r.train.validation.find(([s]) => s === step)?.[1].toFixed(3) ?? '?';
            console.log(
              r.train.bestStep > 0
                ? `kept the weights of step ${r.train.bestStep} (validation coverage at K0 = ${r.train.validationK}: ${v(r.train.bestStep)}, closed form ${v(0)})`
                : `kept the closed form: no step beat its validation coverage at K0 = ${r.train.validationK} (${v(0)})`,
            );
          }
          const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
          console.log(`time: generate ${s(r.ms.generate)}, closed form ${s(r.ms.solve)}, train ${s(r.ms.train)}, evaluate ${s(r.ms.evaluate)}, total ${s(r.ms.total)}`);
        } finally {
          stopAll();
          process.off('SIGINT', onSigint);
        }
      },
    );
}
