import { Command } from 'commander';

import { ensurePlugin, pluginCacheInfo, resolvePlugin } from '../../plugin/index.js';
import { formatBytes, printJson } from '../output.js';

export function pluginCommand(): Command {
  const cmd = new Command('plugin').description('Find, fetch and list PJRT plugins.');
  cmd
    .command('fetch')
    .description(
      "Download a PJRT plugin into the cache (cpu: PyPI xla-cpu-pjrt, sha256-checked; cuda: PyPI jax-cuda13-pjrt) " +
        'using python3 -m pip download. Set CASCADE_PYPI_INDEX_URL for a mirror; pip honours HTTPS_PROXY.',
    )
    .argument('[kind]', "'cpu' or 'cuda'", 'cpu')
    .option('--force', 'download again even if cached')
    .option('--json', 'print the result as JSON')
    .action(async (kind: string, opts: { force?: boolean; json?: boolean }) => {
      if (kind !== 'cpu' && kind !== 'cuda') throw new Error(`plugin fetch: kind must be 'cpu' or 'cuda', got '${kind}'`);
      const r = await ensurePlugin(kind, { force: opts.force, onProgress: (m) => process.stderr.write(`${m}\n`) });
      if (opts.json) printJson(r);
      else console.log(`${r.path} (${r.source})`);
    });
  cmd
    .command('path')
    .description('Print the plugin file that would be used, without downloading.')
    .argument('[spec]', "'cpu', 'cuda', 'tpu' or a path", 'cpu')
    .option('--json', 'print the result as JSON')
    .action(async (spec: string, opts: { json?: boolean }) => {
      const r = await resolvePlugin(spec, { download: false });
      if (opts.json) printJson(r);
      else console.log(r.path);
    });
  cmd
    .command('list')
    .description('List the plugins in the cache with their sizes.')
    .option('--json', 'print the result as JSON')
    .action(async (opts: { json?: boolean }) => {
      const info = await pluginCacheInfo();
      if (opts.json) return printJson(info);
      console.log(info.pluginsDir);
      for (const p of info.plugins) console.log(`  ${p.kind.padEnd(6)} ${p.name}  ${formatBytes(p.bytes)}  ${p.path}`);
      if (!info.plugins.length) console.log('  (empty)');
    });
  return cmd;
}
