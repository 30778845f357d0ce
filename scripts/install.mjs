#!/usr/bin/env node
// `npm install` step: (1) the native addon: a prebuild that fits, else a source build with
// cmake-js (which also extracts the PJRT header, see cmake/PjrtHeaders.cmake); (2) in a git
// checkout, the TypeScript build; (3) the XLA CPU PJRT plugin into the user cache, unless
// CASCADE_SKIP_PLUGIN_DOWNLOAD is set. Each step says what it does and how to fix a failure.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const devCheckout = existsSync(path.join(root, '.git')) || existsSync(path.join(root, 'src', 'index.ts'));
const say = (msg) => process.stderr.write(`cascade-xla: ${msg}\n`);

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: process.env });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited with ${r.status}`);
}

function prebuildFits() {
  try {
    const load = require('node-gyp-build');
    const found = load.resolve(root);
    return found && !found.includes(`${path.sep}build${path.sep}`) ? found : null;
  } catch {
    return null;
  }
}

// 1. Native addon.
const prebuild = devCheckout ? null : prebuildFits();
if (prebuild) {
  say(`using the prebuilt addon ${path.relative(root, prebuild)}`);
} else {
  say('building the native addon with cmake-js (needs cmake >= 3.18, a C++17 compiler, python3 with pip)');
  try {
    run(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), 'compile', '--out', 'build']);
  } catch (error) {
    say(`native build failed: ${error.message}`);
    say('install cmake and g++ (Debian: apt-get install cmake g++), make PyPI reachable for the PJRT header,');
    say('or set CASCADE_PJRT_INCLUDE_DIR to a folder holding xla/pjrt/c/pjrt_c_api.h, then run `npm rebuild cascade-xla`.');
    process.exit(1);
  }
}

// 2. TypeScript (only a checkout has sources; the published package ships dist/).
if (devCheckout && existsSync(path.join(root, 'tsconfig.json'))) {
  say('compiling TypeScript');
  run(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', 'tsconfig.json']);
}

// 3. The PJRT plugin.
if (process.env.CASCADE_SKIP_PLUGIN_DOWNLOAD) {
  say('CASCADE_SKIP_PLUGIN_DOWNLOAD is set: not fetching the PJRT plugin (set CASCADE_PJRT_PLUGIN or run `npx cascade-xla plugin fetch cpu` later)');
} else {
  const { ensurePlugin } = await import(pathToFileURL(path.join(root, 'dist', 'plugin', 'index.js')).href);
  try {
    const plugin = await ensurePlugin('cpu', { onProgress: (m) => say(m) });
    say(`PJRT CPU plugin: ${plugin.path} (${plugin.source})`);
  } catch (error) {
    say(`could not get the XLA CPU PJRT plugin: ${error.message}`);
    process.exit(1);
  }
}
