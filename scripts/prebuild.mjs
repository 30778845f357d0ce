#!/usr/bin/env node
// `npm run prebuild`: the prebuilt addon for this machine's platform, in the layout that
// `prebuildify --napi --strip --tag-libc` produces and node-gyp-build resolves:
//
//   prebuilds/<platform>-<arch>/cascade-xla.napi.<libc>.node     (e.g. linux-x64/cascade-xla.napi.glibc.node)
//
// prebuildify itself only drives node-gyp (and moves the build output away), so this script does
// its steps with cmake-js: a Release build in build/prebuild (separate from the development build
// in build/Release) with libstdc++ and libgcc linked statically, so the binary needs only glibc
// (and the Node-API of Node >= 20) from the machine it lands on; `strip --strip-all`; a test load
// in a child process; then the copy into prebuilds/.
//
// Options: --reuse  copy build/Release/cascade_xla.node (the dev build) instead of building
//                   (quicker, but links libstdc++ dynamically).
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { checkAddonFile } from './addon-check.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const say = (msg) => process.stderr.write(`prebuild: ${msg}\n`);
const reuse = process.argv.includes('--reuse');

function run(cmd, args, env = process.env) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env });
  if (r.error) throw new Error(`cannot run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited with ${r.status ?? r.signal}`);
}

function libc() {
  if (process.platform !== 'linux') return '';
  // The same rule as node-gyp-build and prebuildify: musl on Alpine, else glibc.
  return existsSync('/etc/alpine-release') ? 'musl' : 'glibc';
}

try {
  let built;
  if (reuse) {
    built = path.join(root, 'build', 'Release', 'cascade_xla.node');
    if (!existsSync(built)) throw new Error(`${built} does not exist: run \`npm run build:native\` first, or drop --reuse`);
  } else {
    const out = path.join('build', 'prebuild');
    const env = { ...process.env };
    // Reuse the PJRT headers the development build already extracted (saves a PyPI download).
    const devHeaders = path.join(root, 'build', 'pjrt-include');
    if (!env.CASCADE_PJRT_INCLUDE_DIR && existsSync(path.join(devHeaders, 'xla', 'pjrt', 'c', 'pjrt_c_api.h'))) {
      env.CASCADE_PJRT_INCLUDE_DIR = devHeaders;
    }
    const linkFlags = process.platform === 'linux' ? ['--CDCMAKE_SHARED_LINKER_FLAGS=-static-libstdc++ -static-libgcc'] : [];
    say(`building the addon with cmake-js in ${out}`);
    run(process.execPath, [
      require.resolve('cmake-js/bin/cmake-js'), 'compile', '--out', out,
      '--parallel', String(Math.max(1, os.availableParallelism?.() ?? os.cpus().length)),
      ...linkFlags,
    ], env);
    built = path.join(root, out, 'Release', 'cascade_xla.node');
  }

  const tuple = `${process.platform}-${process.arch}`;
  const dir = path.join(root, 'prebuilds', tuple);
  mkdirSync(dir, { recursive: true });
  const tags = ['cascade-xla', 'napi', libc()].filter(Boolean);
  const dest = path.join(dir, `${tags.join('.')}.node`);
  const tmp = `${dest}.tmp`;
  copyFileSync(built, tmp);
  if (process.platform === 'linux') {
    const r = spawnSync(process.env.PREBUILD_STRIP_BIN || 'strip', ['--strip-all', tmp], { stdio: 'inherit' });
    if (r.error || r.status !== 0) say('strip failed or is missing: keeping the unstripped binary');
  }
  const check = checkAddonFile(tmp);
  if (!check.ok) {
    rmSync(tmp, { force: true });
    throw new Error(`the built addon does not load: ${check.reason}`);
  }
  renameSync(tmp, dest);
  // Leave only this one binary for this platform (older names would shadow it or ship twice).
  for (const f of readdirSync(dir)) if (f.endsWith('.node') && path.join(dir, f) !== dest) rmSync(path.join(dir, f));
  say(`${path.relative(root, dest)} (${(statSync(dest).size / 1e6).toFixed(2)} MB, PJRT header ${check.pjrtHeaderVersion})`);
} catch (error) {
  say(`failed: ${error.message}`);
  process.exit(1);
}
