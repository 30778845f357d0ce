#!/usr/bin/env node
// Compiles the C++ core (cpp/, without tests, tools and fuzz targets) for linux-arm64 with Debian's
// cross compiler, so the x86-only code stays behind its guards (issue #13: the SIMD kernels pick
// an implementation at run time; other CPUs get the portable C++). Objects only: nothing links or
// runs (no arm64 PJRT plugin here). Installs g++-aarch64-linux-gnu when missing (apt, as root).
//
//   node scripts/cross-check.mjs
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cxx = 'aarch64-linux-gnu-g++';
const has = () => spawnSync(cxx, ['--version'], { stdio: 'ignore' }).status === 0;
if (!has()) {
  console.log(`cross-check: installing g++-aarch64-linux-gnu`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
  spawnSync('apt-get', ['install', '-y', '-qq', 'g++-aarch64-linux-gnu'], { stdio: 'inherit', env });
  if (!has()) {
    console.error(`cross-check: ${cxx} is not available`);
    process.exit(1);
  }
}
const include = path.join(root, 'build', 'native', 'pjrt-include');
if (!existsSync(path.join(include, 'xla', 'pjrt', 'c', 'pjrt_c_api.h'))) {
  console.error(`cross-check: no PJRT headers at ${include} (run npm test or npm run test:cpp first)`);
  process.exit(1);
}
const sources = readdirSync(path.join(root, 'cpp'), { withFileTypes: true })
  .filter((d) => d.isDirectory() && !['tests', 'tools', 'fuzz'].includes(d.name))
  .flatMap((d) => readdirSync(path.join(root, 'cpp', d.name)).filter((f) => f.endsWith('.cc')).map((f) => path.join('cpp', d.name, f)));
const out = mkdtempSync(path.join(os.tmpdir(), 'cascade-arm64-'));
let failed = 0;
for (const src of sources) {
  const r = spawnSync(cxx, ['-std=c++17', '-O1', '-Wall', '-Wextra', '-Wno-unused-parameter', '-Werror=unused-function',
    `-I${path.join(root, 'cpp')}`, `-I${include}`, '-c', src, '-o', path.join(out, `${path.basename(src)}.o`)], { cwd: root, encoding: 'utf8' });
  if (r.status !== 0) {
    failed++;
    console.error(`cross-check: ${src} does not compile for arm64:\n${r.stderr.split('\n').slice(0, 20).join('\n')}`);
  }
}
rmSync(out, { recursive: true, force: true });
console.log(`cross-check: ${sources.length - failed}/${sources.length} core sources compile for linux-arm64 (${cxx})`);
process.exit(failed ? 1 : 0);
