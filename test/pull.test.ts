// Models by URL against a local HTTP server on 127.0.0.1 (node:http, no mocks): a full download,
// resume with Range after a dropped connection (in one call, and across calls), a server that
// ignores Range, a wrong checksum, a 404, a non-GGUF answer, a redirect, 5xx retries, the
// `cascade-xla pull` command, and `Cascade.load({ target: url })` of the real default model.
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, beforeEach, describe, expect, it, onTestFinished } from 'vitest';

import { DownloadError, ModelFormatError } from '../src/errors.js';
import { findCatalogModel, resolveModel } from '../src/models/catalog.js';
import { ModelNotFoundError } from '../src/models/default-model.js';
import { ChecksumMismatchError, HttpStatusError, downloadModel, urlCacheDir, type DownloadProgress } from '../src/models/download.js';

const run = promisify(execFile);
const cli = path.resolve(import.meta.dirname, '..', 'dist', 'cli', 'main.js');

/** A GGUF-looking payload: the magic, then random bytes. */
function payload(bytes: number): Buffer {
  const b = randomBytes(bytes);
  b.write('GGUF', 0, 'latin1');
  return b;
}
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const DATA = payload(3 * 1024 * 1024 + 123);
const OTHER = payload(2 * 1024 * 1024);
const ETAG = `"${sha(DATA).slice(0, 16)}"`;

interface Logged {
  path: string;
  range: string | undefined;
  ifRange: string | undefined;
  status: number;
}

/** Routes: what each path does. Paths carry a test-unique prefix so cache folders never collide. */
let log: Logged[] = [];
/** Requests seen per path, for the routes that change behaviour after the first one. */
const seen = new Map<string, number>();

function sendRange(req: IncomingMessage, res: ServerResponse, body: Buffer, p: string, honourRange = true): void {
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  if (honourRange && m && (req.headers['if-range'] === undefined || req.headers['if-range'] === ETAG)) {
    const start = Number(m[1]);
    if (start >= body.length) {
      log.push({ path: p, range: req.headers.range, ifRange: req.headers['if-range'] as string | undefined, status: 416 });
      res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end();
      return;
    }
    log.push({ path: p, range: req.headers.range, ifRange: req.headers['if-range'] as string | undefined, status: 206 });
    res.writeHead(206, {
      'content-length': body.length - start,
      'content-range': `bytes ${start}-${body.length - 1}/${body.length}`,
      etag: ETAG,
      'accept-ranges': 'bytes',
    });
    res.end(body.subarray(start));
    return;
  }
  log.push({ path: p, range: req.headers.range, ifRange: req.headers['if-range'] as string | undefined, status: 200 });
  res.writeHead(200, { 'content-length': body.length, etag: ETAG, ...(honourRange ? { 'accept-ranges': 'bytes' } : {}) });
  res.end(body);
}

/** Sends the headers of the whole file, 40% of the body, then drops the connection. */
function sendAndDrop(req: IncomingMessage, res: ServerResponse, body: Buffer, p: string): void {
  log.push({ path: p, range: req.headers.range, ifRange: req.headers['if-range'] as string | undefined, status: 200 });
  res.writeHead(200, { 'content-length': body.length, etag: ETAG, 'accept-ranges': 'bytes' });
  res.write(body.subarray(0, Math.floor(body.length * 0.4)), () => setTimeout(() => res.socket?.destroy(), 50));
}

function sendSlowly(req: IncomingMessage, res: ServerResponse, p: string): void {
  const start = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
  log.push({ path: p, range: req.headers.range, ifRange: req.headers['if-range'] as string | undefined, status: start > 0 ? 206 : 200 });
  res.writeHead(start > 0 ? 206 : 200, {
    'content-length': DATA.length - start,
    ...(start > 0 ? { 'content-range': `bytes ${start}-${DATA.length - 1}/${DATA.length}` } : {}),
    etag: ETAG,
  });
  let at = start;
  const timer = setInterval(() => {
    if (res.destroyed) return clearInterval(timer);
    const end = Math.min(DATA.length, at + 65536);
    res.write(DATA.subarray(at, end));
    at = end;
    if (at >= DATA.length) {
      clearInterval(timer);
      res.end();
    }
  }, 20);
  res.on('close', () => clearInterval(timer));
}

function handler(req: IncomingMessage, res: ServerResponse): void {
  const p = new URL(req.url ?? '/', 'http://x').pathname;
  const n = (seen.get(p) ?? 0) + 1;
  seen.set(p, n);
  const kind = p.split('/')[2];
  switch (kind) {
    case 'full':
      return sendRange(req, res, DATA, p);
    case 'other':
      return sendRange(req, res, OTHER, p);
    case 'drop': // the first answer drops half-way, later ones honour Range
      return n === 1 ? sendAndDrop(req, res, DATA, p) : sendRange(req, res, DATA, p);
    case 'drop-norange': // the first answer drops half-way, later ones ignore Range (200, whole file)
      return n === 1 ? sendAndDrop(req, res, DATA, p) : sendRange(req, res, DATA, p, false);
    case 'slow': // 64 KiB every 20 ms (Range honoured)
      return sendSlowly(req, res, p);
    case 'flaky': // 503 twice, then the file
      if (n <= 2) {
        log.push({ path: p, range: req.headers.range, ifRange: undefined, status: 503 });
        res.writeHead(503).end('busy');
        return;
      }
      return sendRange(req, res, DATA, p);
    case 'redirect': {
      log.push({ path: p, range: req.headers.range, ifRange: undefined, status: 302 });
      res.writeHead(302, { location: p.replace('/redirect/', '/full/') }).end();
      return;
    }
    case 'html':
      log.push({ path: p, range: req.headers.range, ifRange: undefined, status: 200 });
      res.writeHead(200, { 'content-type': 'text/html' }).end('<html><body>Sign in to download this model</body></html>');
      return;
    case 'gguf': {
      return sendRange(req, res, readFileSync(REAL_GGUF), p);
    }
    default:
      log.push({ path: p, range: req.headers.range, ifRange: undefined, status: 404 });
      res.writeHead(404, 'Not Found').end('no such file');
  }
}

/** The real cache's models folder (the test itself runs with a temp CASCADE_CACHE_DIR). */
const REAL_CACHE_MODELS = (() => {
  const explicit = process.env.CASCADE_CACHE_DIR;
  const root = explicit || (process.env.XDG_CACHE_HOME ? path.join(process.env.XDG_CACHE_HOME, 'cascade-xla') : path.join(os.homedir(), '.cache', 'cascade-xla'));
  return path.join(root, 'models');
})();
const REAL_GGUF = path.join(REAL_CACHE_MODELS, 'SmolLM2-135M-Instruct-Q4_1.gguf');

let server: Server;
let base: string;
let cacheDir: string;
const savedCacheDir = process.env.CASCADE_CACHE_DIR;
let unique = 0;
/** A URL on the test server whose path is unique to this call (its own cache folder). */
const url = (kind: string, name = 'model.gguf') => `${base}/t${++unique}-${process.pid}/${kind}/${name}`;

beforeAll(async () => {
  server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  cacheDir = mkdtempSync(path.join(os.tmpdir(), 'cascade-pull-'));
  process.env.CASCADE_CACHE_DIR = cacheDir;
});

afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeAllConnections();
  if (savedCacheDir === undefined) delete process.env.CASCADE_CACHE_DIR;
  else process.env.CASCADE_CACHE_DIR = savedCacheDir;
  rmSync(cacheDir, { recursive: true, force: true });
});

beforeEach(() => {
  log = [];
});

const requestsFor = (u: string) => log.filter((l) => u.endsWith(l.path));

describe('downloadModel against a local server', () => {
  it('downloads a whole file, verifies it, moves it into the cache, and serves the cache afterwards', async () => {
    const u = url('full');
    const progress: DownloadProgress[] = [];
    const got = await downloadModel(u, { sha256: sha(DATA).toUpperCase(), onProgress: (p) => progress.push(p) });
    expect(got.source).toBe('download');
    expect(got.path).toBe(path.join(urlCacheDir(u), 'model.gguf'));
    expect(got.path.startsWith(path.join(cacheDir, 'models', 'url'))).toBe(true);
    expect(got.bytes).toBe(DATA.length);
    expect(got.sha256).toBe(sha(DATA));
    expect(readFileSync(got.path).equals(DATA)).toBe(true);
    expect(readdirSync(urlCacheDir(u)).sort()).toEqual(['model.gguf', 'source.json']); // no partial, lock or temp left
    const downloads = progress.filter((p) => p.phase === 'download');
    expect(downloads.at(-1)).toMatchObject({ received: DATA.length, total: DATA.length, resumedFrom: 0 });
    expect(progress.at(-1)!.phase).toBe('verify');
    expect(requestsFor(u)).toHaveLength(1);

    const again = await downloadModel(u, { sha256: sha(DATA) });
    expect(again).toEqual({ ...got, source: 'cache' });
    expect(requestsFor(u)).toHaveLength(1); // nothing asked of the server

    // A different pin for the same URL is not satisfied by the cache: it downloads and checks again.
    await expect(downloadModel(u, { sha256: sha(OTHER) })).rejects.toBeInstanceOf(ChecksumMismatchError);
    expect(requestsFor(u)).toHaveLength(2);
  });

  it('follows a redirect and names the file after the URL asked for', async () => {
    const u = url('redirect', 'SmolThing-Q8_0.gguf');
    const got = await downloadModel(u);
    expect(path.basename(got.path)).toBe('SmolThing-Q8_0.gguf');
    expect(readFileSync(got.path).equals(DATA)).toBe(true);
    expect(requestsFor(u).map((l) => l.status)).toEqual([302]);
    expect(log.map((l) => l.status)).toEqual([302, 200]);
  });

  it('resumes with a Range request when the connection drops mid-body (one call, retried)', async () => {
    const u = url('drop');
    const progress: DownloadProgress[] = [];
    const got = await downloadModel(u, { sha256: sha(DATA), onProgress: (p) => progress.push(p) });
    expect(readFileSync(got.path).equals(DATA)).toBe(true);
    const reqs = requestsFor(u);
    expect(reqs.map((r) => r.status)).toEqual([200, 206]);
    const resumedAt = Number(/^bytes=(\d+)-$/.exec(reqs[1]!.range ?? '')?.[1]);
    expect(resumedAt).toBeGreaterThan(0);
    expect(resumedAt).toBeLessThan(DATA.length);
    expect(reqs[1]!.ifRange).toBe(ETAG); // the validator from the first answer
    expect(Math.max(...progress.map((p) => p.received))).toBe(DATA.length);
  });

  it('keeps the partial file when a download fails and resumes it in the next call', async () => {
    const u = url('drop');
    const error = await downloadModel(u, { retries: 0 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DownloadError);
    expect(error).not.toBeInstanceOf(HttpStatusError);
    expect((error as Error).message).toMatch(/resumes from there/);
    const partial = path.join(urlCacheDir(u), '.partial');
    const kept = statSync(partial).size;
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThan(DATA.length);
    expect(existsSync(path.join(urlCacheDir(u), 'model.gguf'))).toBe(false);

    const progress: DownloadProgress[] = [];
    const got = await downloadModel(u, { sha256: sha(DATA), onProgress: (p) => progress.push(p) });
    expect(readFileSync(got.path).equals(DATA)).toBe(true);
    const reqs = requestsFor(u);
    expect(reqs.at(-1)).toMatchObject({ status: 206, range: `bytes=${kept}-` });
    expect(progress[0]!.resumedFrom).toBe(kept);
    expect(existsSync(partial)).toBe(false);
  });

  it('starts again from byte 0 when the server ignores Range (200 instead of 206)', async () => {
    const u = url('drop-norange');
    await expect(downloadModel(u, { retries: 0 })).rejects.toBeInstanceOf(DownloadError);
    const kept = statSync(path.join(urlCacheDir(u), '.partial')).size;
    expect(kept).toBeGreaterThan(0);
    const got = await downloadModel(u, { sha256: sha(DATA) });
    // The whole file came again; appending it to the partial would have made it longer and wrong.
    expect(got.bytes).toBe(DATA.length);
    expect(readFileSync(got.path).equals(DATA)).toBe(true);
    expect(requestsFor(u).at(-1)).toMatchObject({ status: 200, range: `bytes=${kept}-` });
  });

  it('a wrong checksum is a ChecksumMismatchError and nothing is moved into the cache', async () => {
    const u = url('full');
    const wrong = sha(OTHER);
    const error = await downloadModel(u, { sha256: wrong }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ChecksumMismatchError);
    expect(error).toBeInstanceOf(DownloadError);
    const e = error as ChecksumMismatchError;
    expect(e.expected).toBe(wrong);
    expect(e.actual).toBe(sha(DATA));
    expect(e.message).toContain(u);
    expect(readdirSync(urlCacheDir(u)).filter((n) => !n.startsWith('.lock'))).toEqual([]); // no model, no source.json, no partial
  });

  it('a 404 is an HttpStatusError naming the URL and the status', async () => {
    const u = url('nothing-here');
    const error = await downloadModel(u).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HttpStatusError);
    expect((error as HttpStatusError).status).toBe(404);
    expect((error as HttpStatusError).url).toBe(u);
    expect((error as Error).message).toBe(`HTTP 404 Not Found from ${u}`);
    expect(requestsFor(u)).toHaveLength(1); // a 404 is not retried
  });

  it('retries a 503 and then succeeds', async () => {
    const u = url('flaky');
    const got = await downloadModel(u, { sha256: sha(DATA) });
    expect(readFileSync(got.path).equals(DATA)).toBe(true);
    expect(requestsFor(u).map((r) => r.status)).toEqual([503, 503, 200]);
  });

  it('an answer that is not a GGUF file (a login page) is a ModelFormatError and is not kept', async () => {
    const u = url('html');
    await expect(downloadModel(u)).rejects.toThrow(ModelFormatError);
    expect(readdirSync(urlCacheDir(u)).filter((n) => !n.startsWith('.lock'))).toEqual([]);
  });

  it('bad arguments are rejected before any request', async () => {
    await expect(downloadModel('ftp://127.0.0.1/x.gguf')).rejects.toThrow(/only http and https/);
    await expect(downloadModel(url('full'), { sha256: 'abc' })).rejects.toThrow(/64 hex digits/);
    expect(log).toEqual([]);
  });

  it('an abort keeps the partial file for a later resume', async () => {
    const u = url('slow');
    const ac = new AbortController();
    const error = await downloadModel(u, {
      signal: ac.signal,
      onProgress: (p) => {
        if (p.received > 256 * 1024) ac.abort(new Error('stop'));
      },
    }).catch((e: unknown) => e);
    expect((error as Error).message).toBe('stop');
    expect(existsSync(path.join(urlCacheDir(u), 'model.gguf'))).toBe(false);
    const kept = statSync(path.join(urlCacheDir(u), '.partial')).size;
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThan(DATA.length);
    const got = await downloadModel(u, { sha256: sha(DATA) });
    expect(readFileSync(got.path).equals(DATA)).toBe(true);
    expect(requestsFor(u).map((r) => r.range)).toEqual([undefined, `bytes=${kept}-`]);
  });
});

describe('resolveModel', () => {
  it('keeps a local path, downloads a URL, and names the known models in its error', async () => {
    const file = path.join(cacheDir, 'local.gguf');
    writeFileSync(file, OTHER);
    expect(await resolveModel(file)).toEqual({ path: file, source: 'path' });
    const u = url('other');
    expect(await resolveModel(u, { sha256: sha(OTHER) })).toMatchObject({ path: path.join(urlCacheDir(u), 'model.gguf'), source: 'download' });
    // A missing file spelled as a path is left for the loader to report (ModelFormatError naming it).
    expect(await resolveModel(path.join(cacheDir, 'absent.gguf'))).toEqual({ path: path.join(cacheDir, 'absent.gguf'), source: 'path' });
    const error = await resolveModel('HuggingFaceTB/NoSuchModel').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ModelNotFoundError);
    expect((error as Error).message).toMatch(/no model 'HuggingFaceTB\/NoSuchModel'.*smollm2-135m-instruct/);
  });

  it('Cascade.load rejects a spec that is neither a path, a URL nor a name with ModelNotFoundError (before opening a plugin)', async () => {
    const { Cascade } = await import('../src/cascade/cascade.js');
    await expect(Cascade.load({ target: 'HuggingFaceTB/SmolLM2-135M-Instruct' })).rejects.toThrow(ModelNotFoundError);
    await expect(Cascade.load({ target: url('nothing-here') })).rejects.toThrow(HttpStatusError);
  });

  it('a catalogue entry of kind url is downloaded and checked against its pin', async () => {
    const u = url('other', 'cat.gguf');
    const catalog = [{ name: 'test-model', aliases: ['tm'], description: 'test', bytes: OTHER.length, sha256: sha(OTHER), source: { kind: 'url' as const, url: u } }];
    const got = await resolveModel('TM', { catalog });
    expect(got.source).toBe('download');
    expect(got.model?.name).toBe('test-model');
    expect(readFileSync(got.path).equals(OTHER)).toBe(true);
    const bad = [{ ...catalog[0]!, sha256: sha(DATA) }];
    await expect(resolveModel('test-model', { catalog: bad, force: true })).rejects.toBeInstanceOf(ChecksumMismatchError);
  });

  it('knows the default model by its names', () => {
    for (const n of ['default', 'smollm2-135m-instruct', 'SmolLM2-135M-Instruct', 'SmolLM2-135M-Instruct-Q4_1.gguf']) {
      expect(findCatalogModel(n)?.source.kind).toBe('pypi-default');
    }
    expect(findCatalogModel('llama-70b')).toBeUndefined();
  });
});

describe('cascade-xla pull', () => {
  it('downloads with --sha256 and prints the path; a wrong checksum and a 404 fail with typed messages', async () => {
    const u = url('full', 'pulled.gguf');
    const env = { ...process.env, CASCADE_CACHE_DIR: cacheDir };
    const ok = await run(process.execPath, [cli, 'pull', u, '--sha256', sha(DATA)], { env });
    expect(ok.stdout.trim()).toBe(path.join(urlCacheDir(u), 'pulled.gguf'));
    expect(ok.stderr).toMatch(/sha256 ok/);
    const unpinned = url('other', 'unpinned.gguf');
    const told = await run(process.execPath, [cli, 'pull', unpinned], { env });
    expect(told.stderr).toContain(`sha256 ${sha(OTHER)} (pass --sha256 to check it)`);
    const quiet = await run(process.execPath, [cli, 'pull', u, '--quiet'], { env });
    expect(quiet.stdout.trim()).toBe(path.join(urlCacheDir(u), 'pulled.gguf'));
    expect(quiet.stderr).toBe('');

    const bad = await run(process.execPath, [cli, 'pull', url('full'), '--sha256', sha(OTHER)], { env }).catch((e: { code: number; stderr: string }) => e);
    expect((bad as { code: number }).code).toBe(1);
    expect((bad as { stderr: string }).stderr).toMatch(/ChecksumMismatchError: sha256 mismatch for http:\/\/127\.0\.0\.1/);
    const missing = url('nothing-here');
    const gone = await run(process.execPath, [cli, 'pull', missing], { env }).catch((e: { code: number; stderr: string }) => e);
    expect((gone as { code: number }).code).toBe(1);
    expect((gone as { stderr: string }).stderr).toContain(`HttpStatusError: HTTP 404 Not Found from ${missing}`);
  });
});

describe('Cascade.load from a URL', () => {
  it.skipIf(!existsSync(REAL_GGUF))('serves the default GGUF by URL; loading it gives the tokens of the local file', async () => {
    const { Cascade } = await import('../src/cascade/cascade.js');
    // The plugin and compiled programs of the real cache (this file's cache is a temp folder).
    const realRoot = path.dirname(REAL_CACHE_MODELS);
    const plugin = path.join(realRoot, 'plugins', 'xla-cpu-pjrt-0.0.1', 'xla_cpu_pjrt.so');
    const saved = { plugin: process.env.CASCADE_PJRT_PLUGIN, compile: process.env.CASCADE_COMPILE_CACHE_DIR };
    if (saved.plugin === undefined && existsSync(plugin)) process.env.CASCADE_PJRT_PLUGIN = plugin;
    process.env.CASCADE_COMPILE_CACHE_DIR ??= path.join(realRoot, 'xla-cache');
    onTestFinished(() => {
      for (const [k, v] of [['CASCADE_PJRT_PLUGIN', saved.plugin], ['CASCADE_COMPILE_CACHE_DIR', saved.compile]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    });
    const u = url('gguf', 'SmolLM2-135M-Instruct-Q4_1.gguf');
    const seenStages = new Set<string>();
    const options = { maxContext: 64, draftLayers: 4, precision: { target: 'f32', draft: 'f32' } as const };
    const generation = { maxTokens: 6, temperature: 0, mode: 'target' as const };
    const fromUrl = await Cascade.load({ target: u, ...options, onProgress: (stage) => seenStages.add(stage) });
    let a: string;
    try {
      a = (await fromUrl.generate('The capital of France is', generation)).text;
    } finally {
      await fromUrl.dispose();
    }
    expect(seenStages.has('download')).toBe(true);
    const fromPath = await Cascade.load({ target: REAL_GGUF, ...options });
    try {
      expect((await fromPath.generate('The capital of France is', generation)).text).toBe(a);
    } finally {
      await fromPath.dispose();
    }
    expect(a.length).toBeGreaterThan(0);
    expect(sha(readFileSync(path.join(urlCacheDir(u), 'SmolLM2-135M-Instruct-Q4_1.gguf')))).toBe(findCatalogModel('default')!.sha256);
  }, 600_000);
});
