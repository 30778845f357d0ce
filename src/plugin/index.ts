/**
 * Finding (and, for the CPU and CUDA plugins, fetching) a PJRT plugin.
 *
 * `resolvePlugin(spec)` looks, in order:
 * 1. a `spec` that is a path (contains `/` or ends in `.so`): that file, nothing else;
 * 2. `CASCADE_PJRT_PLUGIN`, when `spec` is undefined or `'cpu'` (the default). An explicit path
 *    in the environment wins over the cache, exactly as the native locator does; an explicit
 *    other kind (`'cuda'`, `'tpu'`) ignores it;
 * 3. for `'cuda'` and `'tpu'`: a plugin installed in python3's site-packages
 *    (`jax_plugins/xla_cuda13` / `xla_cuda12`, `libtpu`);
 * 4. the cache (`<cacheRoot()>/plugins/<package>-<version>/<file>`);
 * 5. a download with pip (`'cpu'`, `'cuda'`), unless `download: false` or
 *    `CASCADE_SKIP_PLUGIN_DOWNLOAD` is set.
 *
 * @example
 * ```ts
 * import { resolvePlugin } from 'cascade-xla/plugin';
 * const { path, kind, source } = await resolvePlugin('cpu', { onProgress: (m) => console.error(m) });
 * // { path: '~/.cache/cascade-xla/plugins/xla-cpu-pjrt-0.0.1/xla_cpu_pjrt.so', kind: 'cpu', source: 'download' }
 * ```
 * @module
 */

import { mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { basename, join, resolve as resolvePath } from 'node:path';

import { DownloadError, InvalidArgumentError, PluginIncompatibleError, PluginNotFoundError } from '../errors.js';
import { cachePath, cacheRoot, removeStaleTemps } from '../utils/cache.js';
import {
  CPU_PLUGIN,
  CUDA_PLUGIN,
  type PluginPackage,
  cachedPluginPath,
  packageDir,
} from './packages.js';
import { PYTHON_ADVICE, abortReason, pipDownload, sitePackages } from './pip.js';
import { installFromWheel, isElf } from './wheel.js';

export { CPU_PLUGIN, CUDA_PLUGIN, cachedPluginPath, packageDir, type PluginPackage } from './packages.js';
export { installFromWheel, isElf, sha256File, type WheelInstall } from './wheel.js';

/** The kind of accelerator a plugin drives. `'custom'` is any other plugin given by path. */
export type PluginKind = 'cpu' | 'cuda' | 'tpu' | 'custom';

/** A plugin file found by {@link resolvePlugin}. */
export interface ResolvedPlugin {
  /** Absolute path of the plugin shared library. */
  path: string;
  kind: PluginKind;
  /**
   * Where it came from: the `spec` argument, an environment variable (`CASCADE_PJRT_PLUGIN`,
   * `TPU_LIBRARY_PATH`), the cascade-xla cache, a Python install, or a download just now.
   */
  source: 'option' | 'env' | 'cache' | 'installed' | 'download';
}

/** Options of {@link resolvePlugin}. */
export interface ResolveOptions {
  /** Allow a download when nothing is found (default true; `CASCADE_SKIP_PLUGIN_DOWNLOAD` also forbids it). */
  download?: boolean;
  /**
   * Receives progress messages (pip's output and our steps). Without it, a download reports
   * progress on stderr; lookups that find a file say nothing.
   */
  onProgress?: (msg: string) => void;
  /** Aborts a download (pip is killed, temp files removed); the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** Options of {@link ensurePlugin}. */
export interface EnsureOptions extends ResolveOptions {
  /** Download again even when the plugin is cached (ignores `CASCADE_PJRT_PLUGIN` and installs). */
  force?: boolean;
}

/** A plugin file in the cache, as listed by {@link pluginCacheInfo}. */
export interface CachedPlugin {
  /** The package folder name, e.g. `xla-cpu-pjrt-0.0.1`. */
  name: string;
  kind: PluginKind;
  path: string;
  bytes: number;
  modified: Date;
}

/** What {@link pluginCacheInfo} returns. */
export interface PluginCacheInfo {
  /** {@link cacheRoot}() */
  root: string;
  /** `<root>/plugins` */
  pluginsDir: string;
  plugins: CachedPlugin[];
  totalBytes: number;
}

const ENV_PLUGIN = 'CASCADE_PJRT_PLUGIN';
const ENV_SKIP = 'CASCADE_SKIP_PLUGIN_DOWNLOAD';

function envValue(name: string): string | undefined {
  const v = process.env[name];
  return v === undefined || v.trim() === '' ? undefined : v.trim();
}

function downloadsForbiddenByEnv(): boolean {
  const v = envValue(ENV_SKIP);
  return v !== undefined && !/^(0|false|no|off)$/i.test(v);
}

/** True when `spec` names a file rather than a kind. */
export function isPathSpec(spec: string): boolean {
  return spec.includes('/') || spec.endsWith('.so');
}

/** Guess a plugin's kind from its file name: contains 'cpu', 'cuda' or 'tpu', else 'custom'. */
export function guessKind(path: string): PluginKind {
  const name = basename(path).toLowerCase();
  if (name.includes('cpu')) return 'cpu';
  if (name.includes('cuda')) return 'cuda';
  if (name.includes('tpu')) return 'tpu';
  return 'custom';
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/** A plugin the user named by path (spec or environment): it must exist and look like a shared library. */
async function explicitFile(path: string, what: string, source: 'option' | 'env'): Promise<ResolvedPlugin> {
  const abs = resolvePath(path);
  let st;
  try {
    st = await stat(abs);
  } catch {
    throw new PluginNotFoundError(
      `PJRT plugin not found: ${abs} (from ${what}) does not exist. ` +
        `Point ${what} at an existing plugin .so, or unset it to use the cached XLA CPU plugin ` +
        '(`npx cascade-xla plugin fetch cpu` downloads it).',
    );
  }
  if (!st.isFile()) {
    throw new PluginNotFoundError(`PJRT plugin not found: ${abs} (from ${what}) is not a regular file.`);
  }
  if (process.platform === 'linux' && !(await isElf(abs))) {
    throw new PluginIncompatibleError(`${abs} (from ${what}) is not a PJRT plugin: it is not an ELF shared library.`);
  }
  return { path: abs, kind: guessKind(abs), source };
}

/** A cached plugin file, or undefined. A file that is not ELF (truncated by a crash, say) counts as missing. */
async function cachedFile(p: PluginPackage): Promise<string | undefined> {
  const path = cachedPluginPath(p);
  if (!(await isFile(path))) return undefined;
  if (!(await isElf(path))) return undefined;
  return path;
}

async function installedFile(relative: string[]): Promise<string | undefined> {
  const dirs = await sitePackages();
  for (const rel of relative) {
    for (const dir of dirs) {
      const path = join(dir, rel);
      if (await isFile(path)) return path;
    }
  }
  return undefined;
}

const CUDA_INSTALLED = ['jax_plugins/xla_cuda13/xla_cuda_plugin.so', 'jax_plugins/xla_cuda12/xla_cuda_plugin.so'];
const TPU_INSTALLED = ['libtpu/libtpu.so'];


/** One download per package at a time in this process; concurrent callers share it. */
const inflight = new Map<string, Promise<string>>();

function progressSink(options: ResolveOptions): (msg: string) => void {
  if (options.onProgress) return options.onProgress;
  return (msg: string) => process.stderr.write(`cascade-xla: ${msg}\n`);
}

/**
 * Download `p` with pip into a temp folder inside its cache folder, verify the wheel's sha256,
 * extract the plugin atomically, and remove the temp folder whatever happens.
 */
async function download(p: PluginPackage, options: ResolveOptions): Promise<string> {
  const key = `${cacheRoot()}\0${p.pkg}==${p.version}`;
  const running = inflight.get(key);
  if (running !== undefined && options.signal === undefined) return running;
  const job = downloadUnshared(p, options);
  if (options.signal === undefined) {
    inflight.set(key, job);
    const forget = (): void => {
      if (inflight.get(key) === job) inflight.delete(key);
    };
    job.then(forget, forget);
  }
  return job;
}

async function downloadUnshared(p: PluginPackage, options: ResolveOptions): Promise<string> {
  const { signal } = options;
  const say = progressSink(options);
  if (signal?.aborted) throw abortReason(signal);
  const dir = packageDir(p);
  try {
    await mkdir(dir, { recursive: true });
  } catch (e) {
    throw new DownloadError(`cannot create the plugin cache folder ${dir}: ${(e as Error).message}`, { cause: e });
  }
  await removeStaleTemps(dir);
  const tmp = await mkdtemp(join(dir, `.download-${process.pid}-`));
  try {
    say(`downloading ${p.pkg}==${p.version} with pip into ${dir}`);
    await pipDownload(p.pkg, p.version, tmp, { onLine: say, signal });
    const wheels = (await readdir(tmp)).filter((n) => n.endsWith('.whl'));
    if (wheels.length !== 1) {
      throw new DownloadError(
        `pip reported success but left ${wheels.length} wheel(s) for ${p.pkg}==${p.version} in ${tmp}: ${wheels.join(', ') || 'none'}`,
      );
    }
    const wheelName = wheels[0]!;
    const sha = p.wheelSha256[wheelName];
    if (sha === undefined) {
      const known = Object.keys(p.wheelSha256).join(', ');
      if (p.requireKnownSha) {
        throw new DownloadError(
          `pip downloaded ${wheelName}, which has no pinned sha256 (known: ${known}); refusing to install it. ` +
            `Set ${ENV_PLUGIN} to a plugin .so you trust instead.`,
        );
      }
      say(`note: no pinned sha256 for ${wheelName} (pinned: ${known}); trusting pip's TLS download`);
    }
    const path = await installFromWheel({
      wheel: join(tmp, wheelName),
      sha256: sha,
      member: p.member,
      dest: cachedPluginPath(p),
      signal,
      onProgress: say,
    });
    say(`installed ${path}`);
    return path;
  } finally {
    await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
  }
}

function notFound(what: string, looked: string[], p: PluginPackage | undefined, why: string): PluginNotFoundError {
  const fetch = p ? ` Run \`npx cascade-xla plugin fetch ${p === CPU_PLUGIN ? 'cpu' : 'cuda'}\` to download ${p.pkg}==${p.version},` : '';
  return new PluginNotFoundError(
    `No ${what} found (looked at: ${looked.join(', ')}); ${why}.${fetch} or set ${ENV_PLUGIN} to the path of a PJRT plugin .so.`,
  );
}

function downloadAllowed(options: ResolveOptions): { ok: boolean; why: string } {
  if (options.download === false) return { ok: false, why: 'downloading is disabled (download: false)' };
  if (downloadsForbiddenByEnv()) return { ok: false, why: `downloading is disabled (${ENV_SKIP} is set)` };
  return { ok: true, why: '' };
}

async function resolveCpu(options: ResolveOptions): Promise<ResolvedPlugin> {
  const cached = await cachedFile(CPU_PLUGIN);
  if (cached !== undefined) return { path: cached, kind: 'cpu', source: 'cache' };
  const allowed = downloadAllowed(options);
  if (!allowed.ok) throw notFound('XLA CPU PJRT plugin', [cachedPluginPath(CPU_PLUGIN)], CPU_PLUGIN, allowed.why);
  return { path: await download(CPU_PLUGIN, options), kind: 'cpu', source: 'download' };
}

async function resolveCuda(options: ResolveOptions): Promise<ResolvedPlugin> {
  const installed = await installedFile(CUDA_INSTALLED);
  if (installed !== undefined) return { path: installed, kind: 'cuda', source: 'installed' };
  const cached = await cachedFile(CUDA_PLUGIN);
  if (cached !== undefined) return { path: cached, kind: 'cuda', source: 'cache' };
  const allowed = downloadAllowed(options);
  if (!allowed.ok) {
    throw notFound(
      'XLA CUDA PJRT plugin',
      [...CUDA_INSTALLED.map((r) => `<python3 site-packages>/${r}`), cachedPluginPath(CUDA_PLUGIN)],
      CUDA_PLUGIN,
      `${allowed.why}; \`pip install jax[cuda13]\` also provides it`,
    );
  }
  return { path: await download(CUDA_PLUGIN, options), kind: 'cuda', source: 'download' };
}

async function resolveTpu(): Promise<ResolvedPlugin> {
  const fromEnv = envValue('TPU_LIBRARY_PATH');
  if (fromEnv !== undefined) return explicitFile(fromEnv, 'TPU_LIBRARY_PATH', 'env');
  const installed = await installedFile(TPU_INSTALLED);
  if (installed !== undefined) return { path: installed, kind: 'tpu', source: 'installed' };
  throw new PluginNotFoundError(
    'No TPU PJRT plugin found: libtpu is not installed in any python3 site-packages folder ' +
      `(looked for ${TPU_INSTALLED[0]}). Run \`pip install libtpu\` on the TPU VM, ` +
      `or set TPU_LIBRARY_PATH or ${ENV_PLUGIN} to libtpu.so.`,
  );
}

/**
 * Find a PJRT plugin, downloading the CPU or CUDA one when needed (see the module docs for
 * the order).
 *
 * @param spec `'cpu'` (default), `'cuda'`, `'tpu'`, or a path to a plugin `.so`.
 * @throws PluginNotFoundError when nothing is found and no download is possible (the message
 *   says where it looked, and mentions `CASCADE_PJRT_PLUGIN`).
 * @throws PluginIncompatibleError when an explicit path is not a shared library.
 * @throws DownloadError when pip or the index fails, or the wheel's sha256 does not match.
 * @throws InvalidArgumentError for an unknown kind.
 */
export async function resolvePlugin(spec?: string, options: ResolveOptions = {}): Promise<ResolvedPlugin> {
  const s = spec?.trim() === '' ? undefined : spec?.trim();
  if (s !== undefined && isPathSpec(s)) return explicitFile(s, 'the plugin option', 'option');
  const kind = s ?? 'cpu';
  if (kind === 'cpu') {
    const fromEnv = envValue(ENV_PLUGIN);
    if (fromEnv !== undefined) return explicitFile(fromEnv, ENV_PLUGIN, 'env');
    return resolveCpu(options);
  }
  if (kind === 'cuda') return resolveCuda(options);
  if (kind === 'tpu') return resolveTpu();
  throw new InvalidArgumentError(
    `plugin: unknown plugin ${JSON.stringify(spec)}; expected 'cpu', 'cuda', 'tpu' or a path to a PJRT plugin .so`,
  );
}

/**
 * Make sure the plugin of `kind` is available, downloading it when it is not; used by the
 * install script and `cascade-xla plugin fetch`. With `force`, downloads again (the CPU and CUDA
 * plugins) even when one is cached, replacing it atomically.
 *
 * @example
 * ```ts
 * const p = await ensurePlugin('cpu');   // { path: '.../xla_cpu_pjrt.so', kind: 'cpu', source: 'cache' | 'download' | 'env' }
 * ```
 */
export async function ensurePlugin(
  kind: Exclude<PluginKind, 'custom'>,
  options: EnsureOptions = {},
): Promise<ResolvedPlugin> {
  const { force, ...rest } = options;
  if (force && (kind === 'cpu' || kind === 'cuda')) {
    const p = kind === 'cpu' ? CPU_PLUGIN : CUDA_PLUGIN;
    const allowed = downloadAllowed(rest);
    if (!allowed.ok) {
      throw new PluginNotFoundError(`cannot download the ${kind} plugin: ${allowed.why}. Set ${ENV_PLUGIN} to a plugin .so instead.`);
    }
    return { path: await download(p, rest), kind, source: 'download' };
  }
  return resolvePlugin(kind, rest);
}

const KNOWN: readonly { pkg: PluginPackage; kind: PluginKind }[] = [
  { pkg: CPU_PLUGIN, kind: 'cpu' },
  { pkg: CUDA_PLUGIN, kind: 'cuda' },
];

/**
 * List the plugin files in the cache (`<root>/plugins/<folder>/*.so`) with their sizes.
 * Temp files of running or crashed downloads are not listed.
 *
 * @example
 * ```ts
 * const info = await pluginCacheInfo();
 * for (const p of info.plugins) console.log(p.name, p.kind, p.bytes);
 * ```
 */
export async function pluginCacheInfo(): Promise<PluginCacheInfo> {
  const root = cacheRoot();
  const pluginsDir = cachePath('plugins');
  const plugins: CachedPlugin[] = [];
  let folders: string[] = [];
  try {
    folders = (await readdir(pluginsDir, { withFileTypes: true }))
      .filter((d) => d.isDirectory() && !d.name.startsWith('.'))
      .map((d) => d.name)
      .sort();
  } catch {
    // no cache yet
  }
  for (const name of folders) {
    let files: string[];
    try {
      files = (await readdir(join(pluginsDir, name))).filter((f) => !f.startsWith('.') && f.endsWith('.so')).sort();
    } catch {
      continue;
    }
    for (const f of files) {
      const path = join(pluginsDir, name, f);
      try {
        const st = await stat(path);
        if (!st.isFile()) continue;
        const known = KNOWN.find((k) => `${k.pkg.pkg}-${k.pkg.version}` === name && k.pkg.fileName === f);
        plugins.push({ name, kind: known?.kind ?? guessKind(f), path, bytes: st.size, modified: st.mtime });
      } catch {
        // removed meanwhile
      }
    }
  }
  return { root, pluginsDir, plugins, totalBytes: plugins.reduce((a, p) => a + p.bytes, 0) };
}
