#!/usr/bin/env node
/**
 * The `cascade-xla` command line.
 * @internal
 * @module
 */
import { readFileSync } from 'node:fs';

import { Command } from 'commander';

import { CascadeError } from '../errors.js';
import { benchCommand } from './commands/bench.js';
import { chatCommand } from './commands/chat.js';
import { distillCommand } from './commands/distill.js';
import { infoCommand } from './commands/info.js';
import { pluginCommand } from './commands/plugin.js';
import { pullCommand } from './commands/pull.js';
import { runCommand } from './commands/run.js';
import { selftestCommand } from './commands/selftest.js';
import { serveCommand } from './commands/serve.js';

const program = new Command()
  .name('cascade-xla')
  .description(
    'Cascaded speculative decoding (tiny -> 4-bit draft -> BF16 target) on XLA through the PJRT C API.\n' +
      'Runs on the XLA CPU plugin by default; point --plugin (or CASCADE_PJRT_PLUGIN) at a CUDA or TPU plugin to use those.',
  )
  .version((JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version, '-V, --version', 'print the version')
  .option('-q, --quiet', 'print only the answer (or the path): no progress, no statistics')
  .showHelpAfterError('(run with --help for usage)')
  .configureHelp({ sortSubcommands: true });

program.addCommand(runCommand('demo'));
program.addCommand(runCommand('run'));
program.addCommand(selftestCommand());
program.addCommand(infoCommand());
program.addCommand(pluginCommand());
program.addCommand(benchCommand());
program.addCommand(distillCommand());
program.addCommand(serveCommand());
program.addCommand(pullCommand());
program.addCommand(chatCommand());

try {
  await program.parseAsync(process.argv);
} catch (error) {
  const message = error instanceof Error ? error.message : String(error);
  const kind = error instanceof CascadeError ? `${error.name}: ` : '';
  process.stderr.write(`cascade-xla: ${kind}${message}\n`);
  process.exitCode = 1;
}
