import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';

import { Command } from 'commander';

import { native } from '../../native.js';
import { pluginCacheInfo } from '../../plugin/index.js';
import { Runtime } from '../../runtime/runtime.js';
import { PLACEMENT_NOTE, cpuCaches } from '../../cascade/placement.js';
import { cacheRoot } from '../../utils/cache.js';
import { devicesOption, pluginOption } from '../options.js';
import { formatBytes, printJson } from '../output.js';

/** Sizes of the cache's folders (models, tiny models, compiled programs, the oracle venv, ...). */
async function cacheFolders(): Promise<{ name: string; path: string; files: number; bytes: number }[]> {
  const root = cacheRoot();
  const out: { name: string; path: string; files: number; bytes: number }[] = [];
  const entries = await readdir(root, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    if (!e.isDirectory() || e.name === 'plugins') continue;
    const dir = path.join(root, e.name);
    let files = 0;
    let bytes = 0;
    const walk = async (d: string): Promise<void> => {
      for (const f of await readdir(d, { withFileTypes: true }).catch(() => [])) {
        const p = path.join(d, f.name);
        if (f.isDirectory()) await walk(p);
        else if (f.isFile()) {
          files++;
          bytes += (await stat(p).catch(() => ({ size: 0 }))).size;
        }
      }
    };
    await walk(dir);
    out.push({ name: e.name, path: dir, files, bytes });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

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
      const cache = { ...(await pluginCacheInfo()), folders: await cacheFolders() };
      const caches = rt.platform === 'cpu' ? await cpuCaches() : [];
      const info = {
        plugin: { path: rt.pluginPath, kind: rt.pluginKind, apiVersion: rt.apiVersion, attributes: rt.attributes, extensions: rt.extensions },
        compiledAgainst: native().pjrtHeaderVersion,
        platform: rt.platform,
        platformVersion: rt.platformVersion,
        devices: rt.devices,
        cpuCaches: caches,
        placementNote: PLACEMENT_NOTE,
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
      if (caches.length) console.log(`cpu caches    ${caches.map((c) => `L${c.level} ${c.type.toLowerCase()} ${formatBytes(c.bytes)}`).join(', ')}`);
      console.log(`placement     ${PLACEMENT_NOTE}`);
      console.log(`cache         ${cache.root}`);
      for (const p of cache.plugins) console.log(`  plugin  ${p.name}/${p.path.split('/').pop()}  ${formatBytes(p.bytes)}`);
      for (const f of cache.folders) console.log(`  ${f.name.padEnd(12)}${String(f.files).padStart(5)} files  ${formatBytes(f.bytes).padStart(10)}  ${f.path}`);
    });
}
