// Test-loads the native addon in a child process, so that a broken binary (wrong glibc, missing
// symbol, truncated file, even a crash in its initialiser) gives an error message instead of
// taking the caller down. Used by scripts/install.mjs (prebuild or source build?), by
// scripts/prebuild.mjs and by scripts/install-test.mjs.
//
//   checkAddon(root, { prebuildsOnly })  -> { ok: true, file, pjrtHeaderVersion } | { ok: false, file?, reason }
//   checkAddonFile(file)                 -> the same for one .node file
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

// Runs in the child: resolve (node-gyp-build, or a given file), load, check the exports, print JSON.
const CHILD = `
const [mode, arg, ngb] = process.argv.slice(1);
let file = arg;
const out = (o) => process.stdout.write(JSON.stringify(o));
try {
  if (mode === 'root') file = require(ngb).resolve(arg);
} catch (e) {
  out({ ok: false, reason: String(e.message).split('\\n')[0].trim() });
  process.exit(0);
}
try {
  const mod = { exports: {} };
  process.dlopen(mod, file);   // like require() of a .node file, whatever the file is named
  const m = mod.exports;
  if (typeof m.openClient !== 'function' || typeof m.pjrtHeaderVersion !== 'string') {
    out({ ok: false, file, reason: 'it loaded but is not the cascade-xla addon (no openClient / pjrtHeaderVersion export)' });
  } else {
    out({ ok: true, file, pjrtHeaderVersion: m.pjrtHeaderVersion });
  }
} catch (e) {
  out({ ok: false, file, reason: String(e.message).trim() });
}
`;

function runChild(args, env) {
  const r = spawnSync(process.execPath, ['-e', CHILD, ...args], {
    env,
    encoding: 'utf8',
    timeout: 120_000,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (r.error) return { ok: false, reason: `could not run the load test: ${r.error.message}` };
  if (r.signal) return { ok: false, reason: `loading it killed the process (${r.signal})${r.stderr ? `: ${r.stderr.trim()}` : ''}` };
  try {
    return JSON.parse(r.stdout);
  } catch {
    return { ok: false, reason: `the load test exited with ${r.status}: ${(r.stderr || r.stdout).trim().slice(0, 2000)}` };
  }
}

/**
 * Resolve the addon the way the package does at run time (node-gyp-build: `build/Release`, then
 * `prebuilds/<platform>-<arch>/`) and load it in a child. With `prebuildsOnly`, `build/` is ignored.
 */
export function checkAddon(root, { prebuildsOnly = false } = {}) {
  const env = { ...process.env };
  if (prebuildsOnly) env.PREBUILDS_ONLY = '1';
  else delete env.PREBUILDS_ONLY;
  return runChild(['root', root, require.resolve('node-gyp-build')], env);
}

/** Load one `.node` file in a child. */
export function checkAddonFile(file) {
  return runChild(['file', file, ''], process.env);
}

/** A hint for a load failure's message, or ''. */
export function loadFailureHint(reason = '') {
  if (/GLIBC_|GLIBCXX_|CXXABI_/.test(reason)) {
    return 'the binary needs a newer C/C++ runtime library than this system has';
  }
  if (/invalid ELF header|file too short|not an ELF|wrong ELF class/i.test(reason)) {
    return 'the file is damaged or built for another platform';
  }
  if (/undefined symbol/.test(reason)) return 'the binary does not match this Node.js or its own sources';
  return '';
}
