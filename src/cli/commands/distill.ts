import path from 'node:path';

import { Command, Option } from 'commander';

import type { Precision } from '../../cascade/cascade.js';
import { PRECISIONS } from '../../cascade/types.js';
import { distillTiny } from '../../cascade/distill.js';
import { ensureDefaultModel } from '../../models/default-model.js';
import { pluginOption, positiveInteger } from '../options.js';
import { printJson, table } from '../output.js';
import { progressBar } from '../progress.js';

export function distillCommand(): Command {
  return new Command('distill')
    .description(
      'Train the tiny projection model (stage 0) by knowledge distillation from the draft, on text the target writes ' +
        '(no dataset needed), and write it as a .safetensors file for `run --tiny` / Cascade.load({ tiny }). The fit is ' +
        'closed-form (ridge regression on projected embeddings); 20% of the text is held out to report gamma0, the share ' +
        "of draft steps whose own choice is among the tiny's K0 candidates.",
    )
    .option('--target <path>', 'target model (default: SmolLM2-135M-Instruct, downloaded once)')
    .option('--draft <path>', "draft model (default: the target's first --draft-layers layers)")
    .option('--draft-layers <n>', 'layers of the self-speculative draft', positiveInteger('--draft-layers'), 8)
    .requiredOption('--out <file>', 'where to write the tiny model (.safetensors)')
    .option('--positions <n>', 'positions of generated text to fit on', positiveInteger('--positions'), 3000)
    .option('--hidden <n>', 'hidden width of the tiny', positiveInteger('--hidden'), 256)
    .addOption(new Option('--precision <p>', 'weights while generating').choices(PRECISIONS).default('f32'))
    .option('--seed <n>', 'seed of the generated text', positiveInteger('--seed'), 1)
    .option('--json', 'print the report as JSON')
    .addOption(pluginOption())
    .addHelpText('after', '\nExample:\n  $ cascade-xla distill --draft-layers 8 --out tiny.safetensors\n  $ cascade-xla run --mode cascade --draft-layers 8 --tiny tiny.safetensors "Hello"')
    .action(
      async (opts: { target?: string; draft?: string; draftLayers: number; out: string; positions: number; hidden: number; precision: Precision; seed: number; json?: boolean; plugin: string }) => {
        const target = opts.target ?? (await ensureDefaultModel({ onProgress: (m) => process.stderr.write(`${m}\n`) })).path;
        const bar = progressBar('distilling', !opts.json && process.stderr.isTTY === true);
        const controller = new AbortController();
        const onSigint = () => controller.abort();
        process.once('SIGINT', onSigint);
        try {
          const r = await distillTiny({
            target,
            draft: opts.draft,
            draftLayers: opts.draft ? undefined : opts.draftLayers,
            out: path.resolve(opts.out),
            positions: opts.positions,
            hidden: opts.hidden,
            precision: opts.precision,
            seed: opts.seed,
            plugin: opts.plugin,
            onProgress: (done, total) => bar.update(done, total),
            signal: controller.signal,
          });
          bar.stop();
          if (opts.json) return printJson(r);
          console.log(`wrote ${r.path}: fitted on ${r.trainPositions} positions, ${r.heldoutPositions} held out`);
          console.log(table([['K0', 'gamma0 (held out)'], ...r.gamma0.map(([k, g]) => [String(k), g.toFixed(3)])]));
          console.log(`time: generate ${(r.ms.generate / 1000).toFixed(1)} s, solve ${(r.ms.solve / 1000).toFixed(1)} s, total ${(r.ms.total / 1000).toFixed(1)} s`);
        } finally {
          bar.stop();
          process.off('SIGINT', onSigint);
        }
      },
    );
}
