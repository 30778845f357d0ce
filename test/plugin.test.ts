// PJRT plugin acquisition: real pip downloads from PyPI, no mocks.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';

import { DownloadError, InvalidArgumentError, PluginIncompatibleError, PluginNotFoundError } from '../src/errors.js';
import {
  CPU_PLUGIN,
  cachedPluginPath,
  ensurePlugin,
  guessKind,
  installFromWheel,
  pluginCacheInfo,
  resolvePlugin,
  sha256File,
} from '../src/plugin/index.js';
import { cacheRoot } from '../src/utils/cache.js';

const ENV_KEYS = [
  'CASCADE_CACHE_DIR',
  'CASCADE_PJRT_PLUGIN',
  'CASCADE_SKIP_PLUGIN_DOWNLOAD',
  'CASCADE_PYPI_INDEX_URL',
  'TPU_LIBRARY_PATH',
  'XDG_CACHE_HOME',
  'HOME',
  'PIP_CONFIG_FILE',
  'PIP_FIND_LINKS',
  'PIP_EXTRA_INDEX_URL',
  'PIP_INDEX_URL',
  'PIP_NO_INDEX',
  'PIP_RETRIES',
  'PATH',
] as const;
const savedEnv = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));

function restoreEnv(): void {
  for (const k of ENV_KEYS) {
    const v = savedEnv[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
}

const CPU_SO_BYTES = 259_284_552; // xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so in the 0.0.1 wheel
const tempDirs: string[] = [];
function tempDir(tag: string): string {
  const d = mkdtempSync(join(tmpdir(), `cascade-plugin-${tag}-`));
  tempDirs.push(d);
  return d;
}
/** A fresh, empty cache root, set as CASCADE_CACHE_DIR. */
function freshCache(tag: string): string {
  const d = tempDir(tag);
  process.env['CASCADE_CACHE_DIR'] = d;
  return d;
}
function elfMagic(path: string): number[] {
  return [...readFileSync(path).subarray(0, 4)];
}
/** Everything under a folder (recursive), relative names. */
function listAll(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true }).map(String).sort();
}

beforeEach(() => {
  restoreEnv();
  delete process.env['CASCADE_PJRT_PLUGIN'];
  delete process.env['CASCADE_SKIP_PLUGIN_DOWNLOAD'];
  delete process.env['CASCADE_PYPI_INDEX_URL'];
  delete process.env['TPU_LIBRARY_PATH'];
});
afterEach(restoreEnv);
afterAll(() => {
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
});

describe('cacheRoot', () => {
  it('follows CASCADE_CACHE_DIR, then XDG_CACHE_HOME, then HOME (same rule as the native locator)', () => {
    process.env['CASCADE_CACHE_DIR'] = '/x/cache';
    process.env['XDG_CACHE_HOME'] = '/x/xdg';
    process.env['HOME'] = '/x/home';
    expect(cacheRoot()).toBe('/x/cache');
    process.env['CASCADE_CACHE_DIR'] = '';
    expect(cacheRoot()).toBe('/x/xdg/cascade-xla');
    delete process.env['XDG_CACHE_HOME'];
    expect(cacheRoot()).toBe('/x/home/.cache/cascade-xla');
    delete process.env['HOME'];
    expect(cacheRoot()).toBe('/tmp/.cache/cascade-xla');
  });
});

describe('resolvePlugin cpu: download, cache, env', () => {
  let root = '';
  let cached = '';

  it('downloads the sha-verified XLA CPU plugin into the cache (concurrent callers share one download)', async () => {
    root = freshCache('dl');
    const progress: string[] = [];
    const [a, b] = await Promise.all([
      resolvePlugin('cpu', { onProgress: (m) => progress.push(m) }),
      resolvePlugin(undefined, { onProgress: (m) => progress.push(`second: ${m}`) }),
    ]);
    cached = join(root, 'plugins', 'xla-cpu-pjrt-0.0.1', 'xla_cpu_pjrt.so');
    expect(a).toEqual({ path: cached, kind: 'cpu', source: 'download' });
    expect(b).toEqual(a);
    expect(cachedPluginPath(CPU_PLUGIN)).toBe(cached);
    expect(elfMagic(cached)).toEqual([0x7f, 0x45, 0x4c, 0x46]);
    const st = statSync(cached);
    expect(st.size).toBe(CPU_SO_BYTES);
    expect(st.mode & 0o777).toBe(0o755);
    // pip's output and our steps reached the callback, once (the second caller shared the download)
    expect(progress.some((m) => m.includes('verifying sha256'))).toBe(true);
    expect(progress.some((m) => /xla.cpu.pjrt/i.test(m) && /Collecting|Downloading|File was already downloaded|Saved/.test(m))).toBe(true);
    expect(progress.filter((m) => m.startsWith('second:'))).toEqual([]);
    // no temp file or download folder is left behind
    expect(listAll(join(root, 'plugins'))).toEqual(['xla-cpu-pjrt-0.0.1', 'xla-cpu-pjrt-0.0.1/xla_cpu_pjrt.so']);
  }, 120_000);

  it('a second resolve is a fast cache hit', async () => {
    expect(cached).not.toBe('');
    process.env['CASCADE_CACHE_DIR'] = root;
    const t0 = performance.now();
    const r = await resolvePlugin('cpu', { onProgress: () => expect.fail('a cache hit reports nothing') });
    const ms = performance.now() - t0;
    expect(r).toEqual({ path: cached, kind: 'cpu', source: 'cache' });
    expect(ms).toBeLessThan(500);
    expect(await resolvePlugin()).toEqual(r);
    expect(await ensurePlugin('cpu', { download: false })).toEqual(r);

    const info = await pluginCacheInfo();
    expect(info.root).toBe(root);
    expect(info.plugins).toEqual([
      { name: 'xla-cpu-pjrt-0.0.1', kind: 'cpu', path: cached, bytes: CPU_SO_BYTES, modified: expect.any(Date) },
    ]);
    expect(info.totalBytes).toBe(CPU_SO_BYTES);
  });

  it('CASCADE_PJRT_PLUGIN wins over the cache for the default/cpu spec; an explicit path wins over both', async () => {
    process.env['CASCADE_CACHE_DIR'] = root;
    const dir = tempDir('env');
    const custom = join(dir, 'my_cuda_plugin.so');
    symlinkSync(process.execPath, custom); // any ELF file will do for resolution
    process.env['CASCADE_PJRT_PLUGIN'] = custom;
    expect(await resolvePlugin()).toEqual({ path: custom, kind: 'cuda', source: 'env' });
    expect(await resolvePlugin('cpu')).toEqual({ path: custom, kind: 'cuda', source: 'env' });
    expect(await resolvePlugin(cached)).toEqual({ path: cached, kind: 'cpu', source: 'option' });

    process.env['CASCADE_PJRT_PLUGIN'] = join(dir, 'missing.so');
    const err = await resolvePlugin('cpu').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PluginNotFoundError);
    expect((err as Error).message).toContain('CASCADE_PJRT_PLUGIN');
    expect((err as Error).message).toContain(join(dir, 'missing.so'));
  });
});

describe('resolvePlugin errors', () => {
  it('an explicit path that does not exist is PluginNotFoundError; a non-ELF file is PluginIncompatibleError', async () => {
    freshCache('missing');
    await expect(resolvePlugin('/no/such/dir/xla_cpu_pjrt.so')).rejects.toThrow(PluginNotFoundError);
    await expect(resolvePlugin('nonexistent_plugin.so')).rejects.toThrow(/does not exist/);
    const dir = tempDir('notelf');
    const text = join(dir, 'fake_plugin.so');
    writeFileSync(text, 'not a shared library\n');
    await expect(resolvePlugin(text)).rejects.toThrow(PluginIncompatibleError);
    await expect(resolvePlugin(dir + '/')).rejects.toThrow(PluginNotFoundError);
  });

  it('download: false (or CASCADE_SKIP_PLUGIN_DOWNLOAD) with an empty cache is PluginNotFoundError naming CASCADE_PJRT_PLUGIN', async () => {
    const root = freshCache('nodl');
    const err = await resolvePlugin('cpu', { download: false }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PluginNotFoundError);
    expect((err as Error).message).toContain('CASCADE_PJRT_PLUGIN');
    expect((err as Error).message).toContain(join(root, 'plugins', 'xla-cpu-pjrt-0.0.1', 'xla_cpu_pjrt.so'));

    process.env['CASCADE_SKIP_PLUGIN_DOWNLOAD'] = '1';
    const err2 = await resolvePlugin().catch((e: unknown) => e);
    expect(err2).toBeInstanceOf(PluginNotFoundError);
    expect((err2 as Error).message).toMatch(/CASCADE_SKIP_PLUGIN_DOWNLOAD.*CASCADE_PJRT_PLUGIN/s);
    expect(listAll(root)).toEqual([]);
  });

  it('an unreachable mirror with an empty cache is DownloadError quoting pip, and leaves nothing behind', async () => {
    const root = freshCache('mirror');
    // Keep pip from finding the wheel anywhere else: no config files (this machine's adds
    // find-links and extra local indexes), no PIP_* index settings from the environment.
    process.env['PIP_CONFIG_FILE'] = '/dev/null';
    delete process.env['PIP_FIND_LINKS'];
    delete process.env['PIP_EXTRA_INDEX_URL'];
    delete process.env['PIP_INDEX_URL'];
    delete process.env['PIP_NO_INDEX'];
    process.env['PIP_RETRIES'] = '1'; // one retry: pip prints the connection error only when it retries
    process.env['CASCADE_PYPI_INDEX_URL'] = 'http://127.0.0.1:9/simple';
    const lines: string[] = [];
    const err = await resolvePlugin('cpu', { onProgress: (m) => lines.push(m) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DownloadError);
    const msg = (err as Error).message;
    expect(msg).toContain('--index-url http://127.0.0.1:9/simple');
    // the failure is the refused connection to the mirror, not something else
    expect(msg).toMatch(/Connection refused|Failed to establish a new connection/);
    expect(msg).toContain('could not reach the package index');
    expect(msg).toContain('No matching distribution found for xla-cpu-pjrt==0.0.1');
    expect(msg).toContain('CASCADE_PJRT_PLUGIN');
    expect(lines.some((l) => l.includes('Looking in indexes: http://127.0.0.1:9/simple'))).toBe(true);
    expect(listAll(join(root, 'plugins'))).toEqual(['xla-cpu-pjrt-0.0.1']);
  }, 60_000);

  it('without python3 on PATH, a download is PluginNotFoundError saying to install Python 3 with pip', async () => {
    const root = freshCache('nopython');
    process.env['PATH'] = tempDir('emptypath');
    const err = await resolvePlugin('cpu').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PluginNotFoundError);
    expect((err as Error).message).toContain('python3 was not found');
    expect((err as Error).message).toContain('Install Python 3 with pip');
    expect((err as Error).message).toContain('CASCADE_PJRT_PLUGIN');
    expect(listAll(join(root, 'plugins'))).toEqual(['xla-cpu-pjrt-0.0.1']);
  });

  it('an AbortSignal kills pip and removes the temp files', async () => {
    const root = freshCache('abort');
    const ac = new AbortController();
    const err = await resolvePlugin('cpu', {
      signal: ac.signal,
      onProgress: (m) => {
        if (/Collecting|Downloading|Looking in/.test(m)) ac.abort();
      },
    }).catch((e: unknown) => e);
    expect(ac.signal.aborted).toBe(true);
    expect((err as Error).name).toBe('AbortError');
    expect(listAll(join(root, 'plugins'))).toEqual(['xla-cpu-pjrt-0.0.1']);

    const pre = await resolvePlugin('cpu', { signal: AbortSignal.abort() }).catch((e: unknown) => e);
    expect((pre as Error).name).toBe('AbortError');
  }, 60_000);

  it('unknown kinds are InvalidArgumentError; tpu without libtpu says to pip install libtpu', async () => {
    freshCache('kinds');
    await expect(resolvePlugin('rocm')).rejects.toThrow(InvalidArgumentError);
    const tpu = await resolvePlugin('tpu').catch((e: unknown) => e);
    if (tpu instanceof Error) {
      expect(tpu).toBeInstanceOf(PluginNotFoundError);
      expect(tpu.message).toContain('pip install libtpu');
    } else {
      expect(tpu).toMatchObject({ kind: 'tpu', source: 'installed' });
    }
    // cuda: never downloaded in tests (124 MB); without an installed jax plugin it is not found
    const cuda = await resolvePlugin('cuda', { download: false }).catch((e: unknown) => e);
    if (cuda instanceof Error) {
      expect(cuda).toBeInstanceOf(PluginNotFoundError);
      expect(cuda.message).toContain('CASCADE_PJRT_PLUGIN');
      expect(cuda.message).toContain('jax-cuda13-pjrt-0.10.2/xla_cuda_plugin.so');
    } else {
      expect(cuda).toMatchObject({ kind: 'cuda', source: 'installed' });
    }
  });

  it('guesses the kind from the file name', () => {
    expect(guessKind('/a/xla_cpu_pjrt.so')).toBe('cpu');
    expect(guessKind('/a/xla_cuda_plugin.so')).toBe('cuda');
    expect(guessKind('/a/libtpu.so')).toBe('tpu');
    expect(guessKind('/a/pjrt_c_api_gpu_plugin.so')).toBe('custom');
  });

  it('pluginCacheInfo of an empty cache lists nothing', async () => {
    const root = freshCache('info');
    expect(await pluginCacheInfo()).toEqual({ root, pluginsDir: join(root, 'plugins'), plugins: [], totalBytes: 0 });
  });
});

describe('installFromWheel', () => {
  const member = 'pkg/lib_plugin.so';
  const elfBody = Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46]), Buffer.alloc(4096, 7)]);

  /** Build a small wheel (zip) with python3's zipfile. */
  function makeWheel(dir: string, entries: Record<string, Buffer>): string {
    const wheel = join(dir, 'fake-1.0-py3-none-any.whl');
    const spec = Object.fromEntries(Object.entries(entries).map(([k, v]) => [k, v.toString('base64')]));
    execFileSync('python3', [
      '-c',
      'import base64,json,sys,zipfile\n' +
        'z=zipfile.ZipFile(sys.argv[1],"w",zipfile.ZIP_DEFLATED)\n' +
        'for k,v in json.loads(sys.argv[2]).items(): z.writestr(k, base64.b64decode(v))\n' +
        'z.close()',
      wheel,
      JSON.stringify(spec),
    ]);
    return wheel;
  }

  it('refuses a sha256 mismatch, naming both hashes, and installs nothing', async () => {
    const dir = tempDir('wheel');
    const wheel = makeWheel(dir, { [member]: elfBody });
    const actual = await sha256File(wheel);
    const wrong = 'ab'.repeat(32);
    const destDir = join(dir, 'dest');
    const dest = join(destDir, 'lib_plugin.so');
    const err = await installFromWheel({ wheel, sha256: wrong, member, dest }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DownloadError);
    expect((err as Error).message).toContain(wrong);
    expect((err as Error).message).toContain(actual);
    expect(existsSync(dest)).toBe(false);

    expect(await installFromWheel({ wheel, sha256: actual, member, dest })).toBe(dest);
    expect(readFileSync(dest).equals(elfBody)).toBe(true);
    expect(statSync(dest).mode & 0o777).toBe(0o755);
    expect(listAll(destDir)).toEqual(['lib_plugin.so']);
  });

  it('a missing member or a non-ELF member is DownloadError and leaves no temp file', async () => {
    const dir = tempDir('wheel2');
    const wheel = makeWheel(dir, { [member]: Buffer.from('#!/bin/sh\necho not elf\n'), 'other.txt': Buffer.from('x') });
    const destDir = join(dir, 'dest');
    const dest = join(destDir, 'lib_plugin.so');
    await expect(installFromWheel({ wheel, sha256: undefined, member: 'pkg/absent.so', dest })).rejects.toThrow(/no member pkg\/absent.so/);
    await expect(installFromWheel({ wheel, sha256: undefined, member, dest })).rejects.toThrow(/not an ELF/);
    expect(listAll(destDir)).toEqual([]);
    const notZip = join(dir, 'broken.whl');
    writeFileSync(notZip, 'garbage');
    await expect(installFromWheel({ wheel: notZip, sha256: undefined, member, dest })).rejects.toThrow(DownloadError);
    expect(listAll(destDir)).toEqual([]);
  });
});
