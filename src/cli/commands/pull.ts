import { Command } from 'commander';

import { MODEL_CATALOG, resolveModel, type ResolveProgress } from '../../models/catalog.js';
import { isModelUrl } from '../../models/download.js';
import { formatBytes } from '../output.js';
import { progressBar, progressMode, type Progress } from '../progress.js';

interface PullOptions {
  sha256?: string;
  force?: boolean;
  list?: boolean;
}

/** Download progress on stderr: a byte bar for URLs, pip's lines for the PyPI default model. */
export function downloadReporter(quiet: boolean): { onProgress: (p: ResolveProgress) => void; stop(): void } {
  const mode = progressMode(quiet);
  let bar: Progress | undefined;
  let verify: Progress | undefined;
  return {
    onProgress(p) {
      if (mode === 'off') return;
      if (p.kind === 'message') {
        process.stderr.write(`${p.message}\n`);
        return;
      }
      const name = decodeURIComponent(new URL(p.url).pathname.split('/').pop() || p.url);
      if (p.phase === 'download') {
        bar ??= progressBar(`downloading ${name}${p.resumedFrom > 0 ? ` (resuming at ${formatBytes(p.resumedFrom)})` : ''}`, mode, { units: 'bytes' });
        bar.update(p.received, p.total ?? 0);
      } else {
        bar?.stop();
        verify ??= progressBar(`verifying ${name}`, mode, { units: 'bytes' });
        verify.update(p.received, p.total ?? 0);
      }
    },
    stop() {
      bar?.stop();
      verify?.stop();
    },
  };
}

async function pull(spec: string | undefined, opts: PullOptions, quiet: boolean): Promise<void> {
  if (opts.list || spec === undefined) {
    for (const m of MODEL_CATALOG) process.stdout.write(`${m.name}  (${[...m.aliases].join(', ')})\n  ${m.description}\n`);
    return;
  }
  if (opts.sha256 !== undefined && !isModelUrl(spec)) {
    throw new Error(`--sha256 applies to URLs; '${spec}' is a catalogue name (its checksum is pinned) or a path`);
  }
  const reporter = downloadReporter(quiet);
  const started = Date.now();
  let got;
  try {
    got = await resolveModel(spec, { sha256: opts.sha256, force: opts.force, onProgress: reporter.onProgress });
  } finally {
    reporter.stop();
  }
  if (!quiet) {
    const how = got.source === 'download' ? `downloaded in ${((Date.now() - started) / 1000).toFixed(1)} s` : got.source === 'cache' ? 'already in the cache' : 'a local path';
    const pin =
      opts.sha256 !== undefined ? 'sha256 ok' : got.model ? 'sha256 pinned by the catalogue' : got.sha256 ? `sha256 ${got.sha256} (pass --sha256 to check it)` : '';
    process.stderr.write(`${how}${pin ? `; ${pin}` : ''}\n`);
  }
  process.stdout.write(`${got.path}\n`);
}

export function pullCommand(): Command {
  return new Command('pull')
    .description(
      'Download a model into the cache: a URL of a GGUF file (resumed if interrupted, checked with --sha256) or a catalogue name. ' +
        'Prints the path; `run --model` and `chat --model` take the same URL or name.',
    )
    .argument('[model]', 'an http(s) URL of a GGUF file, or a catalogue name (see --list)')
    .option('--sha256 <hex>', 'expected sha256 of the file (a mismatch fails and keeps nothing)')
    .option('--force', 'download again even when cached')
    .option('--list', 'list the catalogue')
    .addHelpText(
      'after',
      '\nExamples:\n  $ cascade-xla pull smollm2-135m-instruct\n  $ cascade-xla pull https://huggingface.co/<user>/<repo>/resolve/main/<file>.gguf --sha256 <hex>',
    )
    .action((spec: string | undefined, opts: PullOptions, cmd: Command) => pull(spec, opts, cmd.optsWithGlobals().quiet === true));
}
