#!/usr/bin/env node
// `npm install` step:
// 1. the native addon. Installed as a package: a prebuilt binary from prebuilds/ when one fits
//    this machine and passes a test load in a child process (a broken binary gives a message, not
//    a crash); otherwise, or in a git checkout, or with CASCADE_BUILD_FROM_SOURCE=1 /
//    `npm install --build-from-source`, a source build with cmake-js (which also extracts the PJRT
//    header, see cmake/PjrtHeaders.cmake), test-loaded the same way. No addon = install fails.
// 2. in a git checkout, the TypeScript build;
// 3. the XLA CPU PJRT plugin into the user cache, unless CASCADE_SKIP_PLUGIN_DOWNLOAD is set.
//    This download is optional: when it fails (offline, no pip, PyPI unreachable) the install
//    still succeeds with a warning, and the first Runtime.open() tries again and throws a typed
//    error that says what to do. Other plugins (CUDA, TPU) are never fetched at install time.
// Each step says what it does and how to fix a failure (see docs/troubleshooting.md).
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { checkAddon, loadFailureHint } from './addon-check.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const devCheckout = existsSync(path.join(root, '.git')) || existsSync(path.join(root, 'src', 'index.ts'));
const say = (msg) => process.stderr.write(`cascade-xla: ${msg}\n`);
const truthy = (v) => v !== undefined && v !== '' && !/^(0|false|no|off)$/i.test(v.trim());
const GUIDE = 'see docs/troubleshooting.md in the package';

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: process.env });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited with ${r.status ?? r.signal}`);
}

// 1. Native addon.
const fromSource =
  devCheckout || truthy(process.env.CASCADE_BUILD_FROM_SOURCE) || truthy(process.env.npm_config_build_from_source);
let addonReady = false;
if (!fromSource) {
  const pre = checkAddon(root, { prebuildsOnly: true });
  if (pre.ok) {
    say(`using the prebuilt addon ${path.relative(root, pre.file)} (PJRT C API header ${pre.pjrtHeaderVersion})`);
    // A build/ left by an earlier source build would win over the prebuild at run time.
    rmSync(path.join(root, 'build'), { recursive: true, force: true });
    addonReady = true;
  } else if (pre.file) {
    const hint = loadFailureHint(pre.reason);
    say(`the prebuilt addon ${path.relative(root, pre.file)} does not load here${hint ? ` (${hint})` : ''}:`);
    say(`  ${pre.reason.split('\n')[0]}`);
    say('building from source instead');
  } else {
    say(`no prebuilt addon for ${process.platform}-${process.arch} (${pre.reason}); building from source`);
  }
} else if (!devCheckout) {
  say('building from source as asked (CASCADE_BUILD_FROM_SOURCE / --build-from-source)');
}

if (!addonReady) {
  say('building the native addon with cmake-js (needs cmake >= 3.18, a C++17 compiler, python3 with pip)');
  try {
    run(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), 'compile', '--out', 'build']);
  } catch (error) {
    say(`native build failed: ${error.message}`);
    say('install cmake and g++ (Debian/Ubuntu: apt-get install cmake g++), make PyPI reachable for the PJRT header');
    say('(or set CASCADE_PJRT_INCLUDE_DIR to a folder holding xla/pjrt/c/pjrt_c_api.h), then run `npm rebuild cascade-xla`;');
    say(GUIDE);
    process.exit(1);
  }
  const built = checkAddon(root);
  if (!built.ok) {
    say(`the addon built from source does not load: ${built.reason}`);
    say(`remove ${path.join(root, 'build')} and run \`npm rebuild cascade-xla\`; ${GUIDE}`);
    process.exit(1);
  }
  say(`native addon ready: ${path.relative(root, built.file)}`);
}

// 2. TypeScript (only a checkout has sources; the published package ships dist/).
if (devCheckout && existsSync(path.join(root, 'tsconfig.json'))) {
  say('compiling TypeScript');
  try {
    run(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', 'tsconfig.json']);
  } catch (error) {
    say(`TypeScript build failed: ${error.message}`);
    process.exit(1);
  }
}

// 3. The XLA CPU PJRT plugin (optional at install time).
if (truthy(process.env.CASCADE_SKIP_PLUGIN_DOWNLOAD)) {
  say('CASCADE_SKIP_PLUGIN_DOWNLOAD is set: not fetching the PJRT plugin (set CASCADE_PJRT_PLUGIN or run `npx cascade-xla plugin fetch cpu` later)');
} else if (process.env.CASCADE_PJRT_PLUGIN) {
  say(`CASCADE_PJRT_PLUGIN is set (${process.env.CASCADE_PJRT_PLUGIN}): not fetching the XLA CPU plugin`);
} else {
  try {
    const { ensurePlugin } = await import(pathToFileURL(path.join(root, 'dist', 'plugin', 'index.js')).href);
    const plugin = await ensurePlugin('cpu', { onProgress: (m) => say(m) });
    say(`PJRT CPU plugin: ${plugin.path} (${plugin.source})`);
  } catch (error) {
    say('WARNING: could not download the XLA CPU PJRT plugin now; the install itself is fine.');
    say(`  why: ${String(error?.message ?? error).split('\n').join('\n  ')}`);
    say('  Runtime.open() will try again on first use and throw a DownloadError / PluginNotFoundError if it still cannot.');
    say('  Fix: make PyPI reachable for `python3 -m pip` (HTTPS_PROXY, or CASCADE_PYPI_INDEX_URL for a mirror), then');
    say('  run `npx cascade-xla plugin fetch cpu`; or set CASCADE_PJRT_PLUGIN to a PJRT plugin .so you already have.');
  }
}
