import { Command } from 'commander';

import { native } from '../../native.js';
import { pluginCacheInfo } from '../../plugin/index.js';
import { Runtime } from '../../runtime/runtime.js';
import { devicesOption, pluginOption } from '../options.js';
import { formatBytes, printJson } from '../output.js';

export function infoCommand(): Command {
  return new Command('info')
    .description('Show the PJRT plugin (path, API and platform versions, extensions), its devices and memories, and the cache.')
    .addOption(pluginOption())
    .addOption(devicesOption())
    .option('--json', 'print one JSON object instead of text')
    .addHelpText(
      'after',
      '\nExamples:\n  $ cascade-xla info\n  $ cascade-xla info --plugin cuda --json\n  $ CASCADE_PJRT_PLUGIN=/opt/pjrt/libtpu.so cascade-xla info',
    )
    .action(async (opts: { plugin: string; devices?: number; json?: boolean }) => {
      await using rt = await Runtime.open({ plugin: opts.plugin, devices: opts.devices });
      const cache = await pluginCacheInfo();
      const info = {
        plugin: { path: rt.pluginPath, kind: rt.pluginKind, apiVersion: rt.apiVersion, attributes: rt.attributes, extensions: rt.extensions },
        compiledAgainst: native().pjrtHeaderVersion,
        platform: rt.platform,
        platformVersion: rt.platformVersion,
        devices: rt.devices,
        cache,
      };
      if (opts.json) return printJson(info);
      const v = rt.apiVersion;
      console.log(`plugin        ${rt.pluginPath} (${rt.pluginKind})`);
      console.log(`PJRT C API    ${v.major}.${v.minor} (cascade-xla compiled against ${info.compiledAgainst})`);
      console.log(`platform      ${rt.platform} ${rt.platformVersion}`);
      for (const [k, val] of Object.entries(rt.attributes)) console.log(`  ${k.padEnd(28)}${val}`);
      console.log(`extensions    ${rt.extensions.join(', ') || '(none)'}`);
      console.log(`devices       ${rt.devices.length}`);
      for (const d of rt.devices) {
        const mems = d.memories.map((m) => (m.isDefault ? `${m.kind}*` : m.kind)).join(', ');
        console.log(`  [${d.index}] id ${d.id} ${d.kind}  memories: ${mems}`);
      }
      console.log(`cache         ${cache.root}`);
      for (const p of cache.plugins) console.log(`  ${p.name}/${p.path.split('/').pop()}  ${formatBytes(p.bytes)}`);
    });
}
