#!/usr/bin/env node
/**
 * The oracle environment: a Python venv with Hugging Face `transformers` (and `gguf`,
 * `tokenizers`, `sentencepiece`, `protobuf`), used by tests as an independent reference
 * implementation. Created once, idempotently, under `<cacheRoot>/oracle-venv`, then reused.
 *
 *   node scripts/oracle-env.mjs              # prints the venv's python path (the only stdout line)
 *   node scripts/oracle-env.mjs --with-torch # also installs torch==2.13.0 (CPU build), for model oracles
 *   node scripts/oracle-env.mjs --check      # prints the path if the venv is ready, else exits 1 (installs nothing)
 *
 * Progress goes to stderr. The cache root follows src/utils/cache.ts: `$CASCADE_CACHE_DIR`, else
 * `$XDG_CACHE_HOME/cascade-xla`, else `$HOME/.cache/cascade-xla`. `CASCADE_ORACLE_VENV` overrides
 * the venv folder.
 *
 * torch: `pip install torch==2.13.0` must resolve to the CPU wheel (on the project machines it lies
 * on local disk as `torch-2.13.0+cpu`). It is installed first and on its own, and the script then
 * checks `torch.version.cuda is None`: it refuses to go on with a CUDA build (which would also be a
 * multi-gigabyte download). Torch is opt-in because the tokenizer oracles don't need it.
 *
 * Concurrent callers (vitest runs test files in parallel) serialise on a lock folder; the venv is
 * marked ready with a stamp file listing what was installed, so a half-built venv is never used.
 */

import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

/** Exact pins: reproducible oracles. All exist as wheels on PyPI (and on local disk here). */
export const ORACLE_PACKAGES = [
  'transformers==5.18.0',
  'tokenizers==0.23.2',
  'gguf==0.19.0',
  'sentencepiece==0.2.2',
  'protobuf==6.33.6',
];
export const TORCH = 'torch==2.13.0';

function env(name) {
  const v = process.env[name];
  return v === undefined || v === '' ? undefined : v;
}

export function cacheRoot() {
  const explicit = env('CASCADE_CACHE_DIR');
  if (explicit !== undefined) return explicit;
  const xdg = env('XDG_CACHE_HOME');
  if (xdg !== undefined) return join(xdg, 'cascade-xla');
  return join(env('HOME') ?? '/tmp', '.cache', 'cascade-xla');
}

export function venvDir() {
  return env('CASCADE_ORACLE_VENV') ?? join(cacheRoot(), 'oracle-venv');
}

const log = (msg) => process.stderr.write(`oracle-env: ${msg}\n`);

function run(cmd, args, { capture = false } = {}) {
  log(`$ ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, {
    stdio: capture ? ['ignore', 'pipe', 'pipe'] : ['ignore', 2, 2],
    encoding: 'utf8',
    env: { ...process.env, PIP_DISABLE_PIP_VERSION_CHECK: '1', PIP_NO_INPUT: '1' },
  });
  if (r.error) throw new Error(`could not run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) {
    const out = capture ? `\n${r.stdout}\n${r.stderr}` : '';
    throw new Error(`\`${cmd} ${args.join(' ')}\` exited with ${r.status ?? r.signal}${out}`);
  }
  return r;
}

function wanted(withTorch) {
  return withTorch ? [TORCH, ...ORACLE_PACKAGES] : [...ORACLE_PACKAGES];
}

function readStamp(dir) {
  try {
    return JSON.parse(readFileSync(join(dir, '.cascade-oracle.json'), 'utf8'));
  } catch {
    return undefined;
  }
}

function ready(dir, withTorch) {
  const stamp = readStamp(dir);
  if (!stamp || !Array.isArray(stamp.packages)) return false;
  if (!existsSync(join(dir, 'bin', 'python'))) return false;
  return wanted(withTorch).every((p) => stamp.packages.includes(p));
}

function sleep(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** mkdir-based lock; a lock older than 30 minutes is taken to be left by a dead process. */
function withLock(lock, fn) {
  const deadline = Date.now() + 45 * 60 * 1000;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
      try {
        if (Date.now() - statSync(lock).mtimeMs > 30 * 60 * 1000) {
          log(`removing stale lock ${lock}`);
          rmSync(lock, { recursive: true, force: true });
          continue;
        }
      } catch {
        continue;
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${lock}`);
      sleep(1000);
    }
  }
  try {
    return fn();
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

/** Creates (or completes) the venv and returns its python path. */
export function ensureOracleEnv({ withTorch = false } = {}) {
  const dir = venvDir();
  const python = join(dir, 'bin', 'python');
  if (ready(dir, withTorch)) return python;
  mkdirSync(join(dir, '..'), { recursive: true });
  return withLock(`${dir}.lock`, () => {
    if (ready(dir, withTorch)) return python;
    const t0 = Date.now();
    if (!existsSync(python)) run('python3', ['-m', 'venv', dir]);
    const pip = [python, '-m', 'pip', 'install', '--disable-pip-version-check', '--no-input'];
    const have = readStamp(dir)?.packages ?? [];
    if (withTorch && !have.includes(TORCH)) {
      // torch first, alone, so nothing else decides which build we get.
      const r = run(pip[0], [...pip.slice(1), '--only-binary', ':all:', TORCH], { capture: true });
      const picked = `${r.stdout}\n${r.stderr}`.split('\n').filter((l) => /torch-2\.13\.0/.test(l));
      for (const l of picked) log(`pip: ${l.trim()}`);
      const probe = run(python, ['-c', 'import torch,json;print(json.dumps([torch.__version__, torch.version.cuda]))'], {
        capture: true,
      });
      const [version, cuda] = JSON.parse(probe.stdout.trim().split('\n').pop());
      log(`torch ${version}, cuda ${cuda}`);
      if (cuda !== null) {
        throw new Error(`pip installed a CUDA build of torch (${version}, CUDA ${cuda}); the oracles need the CPU build`);
      }
    }
    run(pip[0], [...pip.slice(1), '--only-binary', ':all:', ...ORACLE_PACKAGES]);
    run(python, ['-c', 'import transformers, gguf, tokenizers, sentencepiece']);
    const packages = [...new Set([...have, ...wanted(withTorch)])];
    writeFileSync(join(dir, '.cascade-oracle.json'), JSON.stringify({ packages, created: new Date().toISOString() }, null, 2));
    log(`ready in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${dir}`);
    return python;
  });
}

const isMain = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (isMain) {
  const args = process.argv.slice(2);
  const withTorch = args.includes('--with-torch');
  try {
    if (args.includes('--check')) {
      if (!ready(venvDir(), withTorch)) process.exit(1);
      process.stdout.write(`${join(venvDir(), 'bin', 'python')}\n`);
    } else {
      process.stdout.write(`${ensureOracleEnv({ withTorch })}\n`);
    }
  } catch (e) {
    log(`failed: ${e.message}`);
    process.exit(1);
  }
}
