#!/usr/bin/env node
// Builds the libFuzzer targets of the model-file parsers (cpp/fuzz/*_fuzz.cc) with clang, ASan and
// UBSan in build/fuzz, writes their seed corpora (cpp/fuzz/make_corpus.cc) and runs each target
// for N seconds, J targets at a time (--jobs, default one per CPU; also the build's parallelism).
// Prints the executions per target and any crash (the reproducer is kept under
// build/fuzz/crashes/<target>/); exits non-zero when a target crashed.
//
//   node scripts/fuzz.mjs [--seconds N] [--only gguf,json,...] [--jobs J]
//
// clang and its compiler-rt (libFuzzer) are installed with apt-get when missing, as .ci/run does
// for libgtest-dev. Not part of `npm test`.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dir = path.join(root, 'build', 'fuzz');

function parseArgs(argv) {
  const o = { seconds: 60, only: undefined, jobs: undefined };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[++i];
      if (v === undefined) usage(`${a} needs a value`);
      return v;
    };
    if (a === '--seconds' || a.startsWith('--seconds=')) o.seconds = Number(value());
    else if (a === '--only' || a.startsWith('--only=')) o.only = value().split(',').map((s) => s.trim().replace(/_fuzz$/, ''));
    else if (a === '--jobs' || a.startsWith('--jobs=')) o.jobs = Number(value());
    else if (a === '-h' || a === '--help') usage();
    else usage(`unknown argument ${a}`);
  }
  if (!Number.isInteger(o.seconds) || o.seconds < 1) usage('--seconds must be a positive integer');
  if (o.jobs !== undefined && (!Number.isInteger(o.jobs) || o.jobs < 1)) usage('--jobs must be a positive integer');
  return o;
}

function usage(error) {
  if (error) console.error(`fuzz: ${error}`);
  console.error('usage: node scripts/fuzz.mjs [--seconds N] [--only gguf,safetensors,json,tiny,hf_config] [--jobs J]');
  process.exit(error ? 2 : 0);
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });
  if (r.error) {
    console.error(`fuzz: cannot run ${cmd}: ${r.error.message}`);
    process.exit(1);
  }
  if (r.status !== 0) {
    console.error(`fuzz: ${cmd} ${args.join(' ')} failed (exit ${r.status ?? r.signal})`);
    process.exit(r.status || 1);
  }
}

function has(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

// clang++ that can link -fsanitize=fuzzer (compiler-rt's libFuzzer is a separate Debian package).
function fuzzerLinks(cxx) {
  const tmp = path.join(os.tmpdir(), `cascade-fuzz-probe-${process.pid}`);
  mkdirSync(tmp, { recursive: true });
  try {
    const src = path.join(tmp, 'probe.cc');
    spawnSync('sh', ['-c', `printf '%s\\n' '#include <cstddef>' '#include <cstdint>' 'extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }' > ${src}`]);
    const r = spawnSync(cxx, ['-fsanitize=fuzzer,address,undefined', src, '-o', path.join(tmp, 'probe')], { stdio: 'ignore' });
    return r.status === 0;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

function findClang() {
  const candidates = [process.env.CASCADE_FUZZ_CXX, 'clang++', ...[19, 18, 17, 16, 15, 14].map((v) => `clang++-${v}`)].filter(Boolean);
  for (const c of candidates) if (has(c) && fuzzerLinks(c)) return c;
  return undefined;
}

function installClang() {
  if (!has('apt-get')) {
    console.error('fuzz: clang++ with libFuzzer (compiler-rt) is missing and apt-get is not available; install clang and compiler-rt, or set CASCADE_FUZZ_CXX');
    process.exit(1);
  }
  const sudo = process.getuid?.() === 0 ? [] : ['sudo'];
  console.error('fuzz: installing clang and libFuzzer with apt-get');
  const apt = (args) => run(sudo.length ? 'sudo' : 'apt-get', [...(sudo.length ? ['apt-get'] : []), ...args], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  apt(['update', '-q']);
  // Debian splits libFuzzer into libclang-rt-<major>-dev; pick the one matching clang's version.
  apt(['install', '-y', '-q', '--no-install-recommends', 'clang']);
  const version = spawnSync('clang++', ['-dumpversion'], { encoding: 'utf8' }).stdout?.trim().split('.')[0];
  const rt = version && spawnSync('apt-cache', ['show', `libclang-rt-${version}-dev`], { stdio: 'ignore' }).status === 0 ? `libclang-rt-${version}-dev` : 'libclang-rt-dev';
  apt(['install', '-y', '-q', '--no-install-recommends', rt]);
}

// libFuzzer's final stats line: "#1234\tDONE   cov: ... exec/s: 456 ..." (or the last pulse line).
function lastExecs(log) {
  let execs;
  for (const m of log.matchAll(/^#(\d+)\s+(?:DONE|pulse|NEW|REDUCE|INITED)/gm)) execs = Number(m[1]);
  const done = /stat::number_of_executed_units:\s*(\d+)/.exec(log);
  if (done) execs = Number(done[1]);
  return execs;
}

function runTarget(exe, corpus, seconds, crashDir) {
  return new Promise((resolve) => {
    const args = [
      `-max_total_time=${seconds}`,
      '-print_final_stats=1',
      '-timeout=10',
      '-rss_limit_mb=2048',
      '-max_len=65536',
      `-artifact_prefix=${crashDir}/`,
      corpus,
    ];
    const env = { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:allocator_may_return_null=0', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' };
    const child = spawn(exe, args, { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    child.stdout.on('data', (d) => (log += d));
    child.stderr.on('data', (d) => (log += d));
    // libFuzzer stops itself after max_total_time; this guards against a wedged process.
    const guard = setTimeout(() => child.kill('SIGKILL'), (seconds + 120) * 1000);
    child.on('close', (code, signal) => {
      clearTimeout(guard);
      resolve({ code, signal, log });
    });
  });
}

const opts = parseArgs(process.argv.slice(2));
let cxx = findClang();
if (!cxx) {
  installClang();
  cxx = findClang();
  if (!cxx) {
    console.error('fuzz: clang++ still cannot link -fsanitize=fuzzer after installing clang; is compiler-rt (libclang-rt-*-dev) installed?');
    process.exit(1);
  }
}

const all = readdirSync(path.join(root, 'cpp', 'fuzz'))
  .filter((f) => f.endsWith('_fuzz.cc'))
  .map((f) => f.replace(/_fuzz\.cc$/, ''))
  .sort();
const targets = opts.only ?? all;
for (const t of targets) if (!all.includes(t)) usage(`no fuzz target ${t} (have ${all.join(', ')})`);

const jobs = String(opts.jobs ?? Math.max(1, os.availableParallelism?.() ?? os.cpus().length));
const configure = ['-S', root, '-B', dir, '-DCASCADE_FUZZ=ON', `-DCMAKE_CXX_COMPILER=${cxx}`, '-DCMAKE_BUILD_TYPE=RelWithDebInfo'];
// Reuse the PJRT headers the normal build already fetched, if any (the fuzz targets never load a plugin).
const pjrt = path.join(root, 'build', 'native', 'pjrt-include');
if (!process.env.CASCADE_PJRT_INCLUDE_DIR && existsSync(path.join(pjrt, 'xla', 'pjrt', 'c', 'pjrt_c_api.h'))) {
  configure.push(`-DCASCADE_PJRT_INCLUDE_DIR=${pjrt}`);
}
run('cmake', configure);
run('cmake', ['--build', dir, '-j', jobs, '--target', 'make_corpus', ...targets.map((t) => `${t}_fuzz`)]);

const corpusRoot = path.join(dir, 'corpus');
run(path.join(dir, 'make_corpus'), [corpusRoot]);

// One target per core at a time: each still gets its full --seconds of fuzzing, and six targets
// take three minutes of CI instead of six on this 2-core machine.
async function fuzzTarget(t) {
  const corpus = path.join(corpusRoot, t);
  mkdirSync(corpus, { recursive: true });
  const crashDir = path.join(dir, 'crashes', t);
  mkdirSync(crashDir, { recursive: true });
  const before = new Set(readdirSync(crashDir));
  console.log(`fuzz: ${t}_fuzz for ${opts.seconds} s (corpus ${path.relative(root, corpus)})`);
  const r = await runTarget(path.join(dir, `${t}_fuzz`), corpus, opts.seconds, crashDir);
  const artifacts = readdirSync(crashDir).filter((f) => !before.has(f) && statSync(path.join(crashDir, f)).isFile());
  const crashed = r.code !== 0 || artifacts.length > 0;
  const execs = lastExecs(r.log);
  if (crashed) {
    // One block per crash (targets run side by side, so their reports are printed whole).
    const lines = r.log.split('\n');
    // The sanitizer / libFuzzer report: from the first "==ERROR" or "runtime error" line on.
    const start = lines.findIndex((l) => /==\d+==ERROR|runtime error:|uncaught exception|terminate called|deadly signal|out-of-memory|timeout/i.test(l));
    const report = [`fuzz: ${t}_fuzz CRASHED (exit ${r.code ?? r.signal}) after ${execs ?? '?'} executions`, ...lines.slice(Math.max(0, start), start + 60)];
    for (const a of artifacts) report.push(`fuzz: reproducer ${path.relative(root, a)} (run: ${path.relative(root, path.join(dir, `${t}_fuzz`))} ${path.relative(root, a)})`);
    console.log(report.join('\n'));
  }
  return { target: t, execs, crashed, artifacts: artifacts.map((f) => path.join(crashDir, f)) };
}

const results = new Array(targets.length);
let next = 0;
await Promise.all(
  Array.from({ length: Math.min(Number(jobs), targets.length) }, async () => {
    while (next < targets.length) {
      const k = next++;
      results[k] = await fuzzTarget(targets[k]);
    }
  }),
);

console.log('\nfuzz: target            executions  result');
for (const r of results) {
  console.log(`fuzz: ${`${r.target}_fuzz`.padEnd(18)} ${String(r.execs ?? '?').padStart(11)}  ${r.crashed ? 'CRASH' : 'ok'}`);
}
process.exit(results.some((r) => r.crashed) ? 1 : 0);
