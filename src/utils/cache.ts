/**
 * Where cascade-xla keeps downloaded things (PJRT plugins, models).
 *
 * The rule is shared with the native side (`cpp/pjrt/plugin_locator.cc`), so both find the same
 * files: `$CASCADE_CACHE_DIR`, else `$XDG_CACHE_HOME/cascade-xla`, else `$HOME/.cache/cascade-xla`
 * (`/tmp/.cache/cascade-xla` when `HOME` is unset). Empty variables count as unset.
 *
 * @example
 * ```ts
 * import { cacheRoot, cachePath } from './utils/cache.js';
 * cacheRoot();                       // '/home/me/.cache/cascade-xla'
 * cachePath('plugins', 'xla-cpu-pjrt-0.0.1'); // '/home/me/.cache/cascade-xla/plugins/xla-cpu-pjrt-0.0.1'
 * ```
 * @module
 */

import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';

function env(name: string): string | undefined {
  const v = process.env[name];
  return v === undefined || v === '' ? undefined : v;
}

/** The cache root directory (not created). Re-reads the environment on every call. */
export function cacheRoot(): string {
  const explicit = env('CASCADE_CACHE_DIR');
  if (explicit !== undefined) return explicit;
  const xdg = env('XDG_CACHE_HOME');
  if (xdg !== undefined) return join(xdg, 'cascade-xla');
  return join(env('HOME') ?? '/tmp', '.cache', 'cascade-xla');
}

/** A path inside the cache root: `cachePath('plugins')` is `<root>/plugins`. */
export function cachePath(...segments: string[]): string {
  return join(cacheRoot(), ...segments);
}

/** Stale temp entries (from a crashed process) older than this are removed before a download. */
const STALE_MS = 24 * 3600 * 1000;

/**
 * The process that writes a temporary, from its name: `.name.<pid>.<hex>.tmp` (extracted files),
 * `.download-<pid>-<random>` (download folders), `name.tmp<pid>` (tiny models, draft choices),
 * `name.tmp<pid>-<hex>` (compiled programs).
 */
function temporaryOwner(name: string): number | undefined {
  const m =
    /^\..*\.(\d+)\.[0-9a-f]+\.tmp$/.exec(name) ?? /^\.download-(\d+)-/.exec(name) ?? /\.tmp(\d+)(?:-[0-9a-f]+)?$/.exec(name);
  return m ? Number(m[1]) : undefined;
}

/** Whether process `pid` exists (this one counts; another user's too). @internal */
export function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // exists, another user's
  }
}

/**
 * Removes what crashed or killed processes left in `dir`: temporaries whose writer is gone (at
 * once), and `.download-*` folders and `.*.tmp` files older than a day. Ignores errors (another
 * process may be cleaning too).
 */
export async function removeStaleTemps(dir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  const now = Date.now();
  for (const n of names) {
    const owner = temporaryOwner(n);
    const p = join(dir, n);
    try {
      if (owner !== undefined && !processAlive(owner)) {
        await rm(p, { recursive: true, force: true });
        continue;
      }
      if (!n.startsWith('.') || !(n.endsWith('.tmp') || n.startsWith('.download-'))) continue;
      if (now - (await stat(p)).mtimeMs > STALE_MS) await rm(p, { recursive: true, force: true });
    } catch {
      // another process may be removing it too
    }
  }
}

/** The compile cache's folder, as the native side picks it (cpp/pjrt/compile_cache.cc). */
export function compileCacheDir(): string {
  return env('CASCADE_COMPILE_CACHE_DIR') ?? cachePath('xla-cache');
}

let swept: Promise<void> | undefined;
/** Once per process: {@link removeStaleTemps} over every cache folder cascade-xla writes. */
export function sweepCacheTemporaries(): Promise<void> {
  swept ??= (async () => {
    const plugins = await readdir(cachePath('plugins')).catch(() => [] as string[]);
    const dirs = ['tiny', 'draft-choice', 'models', 'bench'].map((d) => cachePath(d));
    dirs.push(compileCacheDir(), ...plugins.map((p) => cachePath('plugins', p)));
    await Promise.all(dirs.map((d) => removeStaleTemps(d)));
  })();
  return swept;
}
