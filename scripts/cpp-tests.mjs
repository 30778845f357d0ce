#!/usr/bin/env node
// Builds the C++ core, tools and GoogleTest suites without Node (build/native) and runs them with
// ctest. Part of `npm test`.
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

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

// The SmolLM2 exactness test needs the default model: fetch it (once per machine) through the
// package's own downloader, which needs the TypeScript build (npm test's pretest does it).
if (!process.env.CASCADE_TEST_MODEL) {
  const { ensureDefaultModel } = await import(pathToFileURL(path.join(root, 'dist', 'models', 'default-model.js')).href);
  process.env.CASCADE_TEST_MODEL = (await ensureDefaultModel({ onProgress: (m) => console.error(m) })).path;
}

run('cmake', ['-S', root, '-B', dir, '-DCMAKE_BUILD_TYPE=Release']);
run('cmake', ['--build', dir, '-j', jobs]);
run('ctest', ['--test-dir', dir, '--output-on-failure', '-j', jobs, ...process.argv.slice(2)]);
