#!/usr/bin/env node
// Builds the C++ core, tools and GoogleTest suites with AddressSanitizer, LeakSanitizer and UBSan
// (cmake -DCASCADE_SANITIZE=ON, build/asan) and runs them with ctest. .ci/run runs it after
// `npm test`; not part of `npm test` itself.
//
//   node scripts/sanitize-tests.mjs [--jobs J] [--all] [-- ctest args...]
//
// The suites load the prebuilt XLA CPU PJRT plugin, which is not built with ASan: its memory
// still goes through ASan's malloc, so LSan checks it too, and needs no suppression (none is
// reported). The statistical tests in SLOW below take minutes even without ASan and are skipped
// unless --all is given.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dir = path.join(root, 'build', 'asan');

// ctest names (Suite.Test) of the tests too slow under ASan: statistical checks that sample the
// engine thousands of times through the same code paths the other engine tests cover (the first
// ~2 min without ASan, over 15 min with it; the second 87 s without, 469 s with it in the
// session-18 CI, most of this stage's time). Both still run in `npm test`'s plain ctest. The
// VerifySampled.* distribution tests are short and stay.
const SLOW = ['Engine.SampledOutputFollowsTheTargetDistribution', 'Engine.SamplingOptionsKeepTheTargetDistribution'];

const argv = process.argv.slice(2);
let jobs = Math.max(1, os.availableParallelism?.() ?? os.cpus().length);
let all = false;
const ctestArgs = [];
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--') {
    ctestArgs.push(...argv.slice(i + 1));
    break;
  } else if (a === '--jobs' || a.startsWith('--jobs=')) {
    jobs = Number(a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[++i]);
    if (!Number.isInteger(jobs) || jobs < 1) usage('--jobs must be a positive integer');
  } else if (a === '--all') all = true;
  else if (a === '-h' || a === '--help') usage();
  else usage(`unknown argument ${a}`);
}

function usage(error) {
  if (error) console.error(`sanitize-tests: ${error}`);
  console.error('usage: node scripts/sanitize-tests.mjs [--jobs J] [--all] [-- ctest args...]');
  process.exit(error ? 2 : 0);
}

function run(cmd, args, env = process.env) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env });
  if (r.error) {
    console.error(`sanitize-tests: cannot run ${cmd}: ${r.error.message}`);
    process.exit(1);
  }
  if (r.status !== 0) {
    console.error(`sanitize-tests: ${cmd} ${args.join(' ')} failed (exit ${r.status ?? r.signal})`);
    process.exit(r.status || 1);
  }
}

// The SmolLM2 exactness test needs the default model (as in scripts/cpp-tests.mjs).
if (!process.env.CASCADE_TEST_MODEL) {
  const { ensureDefaultModel } = await import(pathToFileURL(path.join(root, 'dist', 'models', 'default-model.js')).href);
  process.env.CASCADE_TEST_MODEL = (await ensureDefaultModel({ onProgress: (m) => console.error(m) })).path;
}

const configure = ['-S', root, '-B', dir, '-DCASCADE_SANITIZE=ON', '-DCMAKE_BUILD_TYPE=RelWithDebInfo'];
// Reuse the PJRT headers the normal build already fetched, if any.
const pjrt = path.join(root, 'build', 'native', 'pjrt-include');
if (!process.env.CASCADE_PJRT_INCLUDE_DIR && existsSync(path.join(pjrt, 'xla', 'pjrt', 'c', 'pjrt_c_api.h'))) {
  configure.push(`-DCASCADE_PJRT_INCLUDE_DIR=${pjrt}`);
}

const env = {
  ...process.env,
  // detect_leaks is on by default on x86-64 Linux; spelled out because it is the point.
  ASAN_OPTIONS: ['detect_leaks=1', 'abort_on_error=0', 'strict_string_checks=1', 'detect_stack_use_after_return=1', process.env.ASAN_OPTIONS]
    .filter(Boolean)
    .join(':'),
  UBSAN_OPTIONS: ['print_stacktrace=1', 'halt_on_error=1', process.env.UBSAN_OPTIONS].filter(Boolean).join(':'),
};

const started = Date.now();
run('cmake', configure, env);
run('cmake', ['--build', dir, '-j', String(jobs)], env);
const built = Date.now();
const exclude = !all && SLOW.length ? ['-E', `^(${SLOW.map((t) => t.replace(/\./g, '\\.')).join('|')})$`] : [];
// Each test already runs in a process of its own under ctest, so a leak or error names its test.
run('ctest', ['--test-dir', dir, '--output-on-failure', '-j', String(jobs), '--timeout', '1800', ...exclude, ...ctestArgs], env);
const done = Date.now();
console.log(`sanitize-tests: build ${((built - started) / 1000).toFixed(0)} s, tests ${((done - built) / 1000).toFixed(0)} s${exclude.length ? `, skipped ${SLOW.join(', ')}` : ''}`);
