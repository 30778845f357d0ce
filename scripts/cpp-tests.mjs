#!/usr/bin/env node
// Builds the C++ core, tools and GoogleTest suites without Node (build/native) and runs them with
// ctest. Part of `npm test`.
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dir = path.join(root, 'build', 'native');
const jobs = String(Math.max(1, os.availableParallelism?.() ?? os.cpus().length));

function run(cmd, args, cwd = root) {
  const r = spawnSync(cmd, args, { cwd, stdio: 'inherit' });
  if (r.error) {
    console.error(`cpp-tests: cannot run ${cmd}: ${r.error.message}`);
    process.exit(1);
  }
  if (r.status !== 0) process.exit(r.status ?? 1);
}

run('cmake', ['-S', root, '-B', dir, '-DCMAKE_BUILD_TYPE=Release']);
run('cmake', ['--build', dir, '-j', jobs]);
run('ctest', ['--test-dir', dir, '--output-on-failure', '-j', jobs, ...process.argv.slice(2)]);
