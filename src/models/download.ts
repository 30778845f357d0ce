/**
 * Models by URL: {@link downloadModel} fetches a GGUF file over HTTP(S) into the cache, with
 * resume, sha256 verification and an atomic move into place. `Cascade.load({ target: url })` and
 * `cascade-xla pull <url>` use it.
 *
 * Layout: every URL gets its own folder, `<cacheRoot()>/models/url/<first 16 hex of sha256(url)>/`,
 * holding
 * - `<name>.gguf`, the finished file (the name is the URL's last path segment), and `source.json`
 *   (URL, size, sha256, ETag), written only after the file is complete and verified;
 * - while downloading: `.partial` (the bytes received so far), `.partial.json` (the URL and the
 *   server's ETag / Last-Modified / size, used for `If-Range`) and `.lock` (the writer's pid).
 *
 * A download that fails half-way (network error, killed process) keeps `.partial`; the next call
 * for the same URL resumes it with an HTTP `Range` request. A server that ignores `Range` (200
 * instead of 206), or whose file changed (ETag), restarts from byte 0. The partial file is never
 * removed by the cache sweep at load (it only cleans the top of `models/`); delete the URL's folder,
 * or pull with `force`, to drop it.
 *
 * The finished file is checked (sha256 when one is given, always the GGUF magic) before the rename;
 * a mismatch throws {@link ChecksumMismatchError} and removes the partial file, so nothing wrong
 * is ever visible under the final name.
 *
 * Node's built-in `fetch` does the transfer: redirects are followed, and proxies from
 * `HTTPS_PROXY` are not used (Node 20's fetch ignores them).
 *
 * @example
 * ```ts
 * import { downloadModel } from 'cascade-xla';
 * const { path } = await downloadModel('https://example.com/models/tiny.gguf', {
 *   sha256: '<64 hex digits>',
 *   onProgress: ({ received, total }) => console.error(received, total),
 * });
 * ```
 * @module
 */

import { createHash } from 'node:crypto';
import { mkdir, open, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { DownloadError, ModelFormatError } from '../errors.js';
import { sha256File } from '../plugin/wheel.js';
import { cachePath, processAlive } from '../utils/cache.js';

/**
 * The downloaded file's sha256 is not the one asked for. The partial file is removed and nothing
 * is moved into the cache; `expected` and `actual` are lowercase hex.
 *
 * @example
 * ```ts
 * try { await downloadModel(url, { sha256: pin }); }
 * catch (e) { if (e instanceof ChecksumMismatchError) console.error(e.url, e.expected, e.actual); }
 * ```
 */
export class ChecksumMismatchError extends DownloadError {
  /** The URL that was downloaded. */
  readonly url: string;
  /** The sha256 that was asked for. */
  readonly expected: string;
  /** The sha256 of what the server sent. */
  readonly actual: string;
  constructor(url: string, expected: string, actual: string, bytes: number) {
    super(
      `sha256 mismatch for ${url}: expected ${expected}, got ${actual} (${bytes} bytes). ` +
        'The server sent a different or corrupt file; it was deleted and nothing was put in the cache.',
    );
    this.url = url;
    this.expected = expected;
    this.actual = actual;
  }
}

/**
 * The server answered with an HTTP error status (404, 403, 500, ...). `status` is the code and
 * `url` the address that answered it (after redirects).
 *
 * @example
 * ```ts
 * try { await downloadModel('https://example.com/missing.gguf'); }
 * catch (e) { if (e instanceof HttpStatusError && e.status === 404) console.error('no such model'); }
 * ```
 */
export class HttpStatusError extends DownloadError {
  /** The HTTP status code. */
  readonly status: number;
  /** The URL that answered with it. */
  readonly url: string;
  constructor(url: string, status: number, statusText: string) {
    super(`HTTP ${status}${statusText ? ` ${statusText}` : ''} from ${url}`);
    this.status = status;
    this.url = url;
  }
}

/** Progress of a {@link downloadModel} call. */
export interface DownloadProgress {
  /** The URL being fetched. */
  url: string;
  /** Bytes of the file on disk so far (resumed bytes included). */
  received: number;
  /** The file's size, when the server said (Content-Length / Content-Range). */
  total: number | undefined;
  /** Bytes that were already on disk when this call started (resumed), 0 for a fresh download. */
  resumedFrom: number;
  /** `'download'` while bytes arrive, `'verify'` while the finished file is hashed. */
  phase: 'download' | 'verify';
}

/** Options of {@link downloadModel}. */
export interface DownloadModelOptions {
  /** Expected sha256 of the file (64 hex digits, any case). A mismatch throws {@link ChecksumMismatchError}. */
  sha256?: string | undefined;
  /** Called as bytes arrive (at most every 100 ms, and at the end of each phase). */
  onProgress?: ((progress: DownloadProgress) => void) | undefined;
  /** Aborts the download; the partial file is kept for a later resume. */
  signal?: AbortSignal | undefined;
  /** Download again even when the file is cached (a partial file is discarded too). */
  force?: boolean | undefined;
  /** Further attempts after a network error or a 5xx status, each resuming where the last stopped (default 3). */
  retries?: number | undefined;
  /** An attempt that receives nothing for this long is dropped and retried (default 30000 ms). */
  idleTimeoutMs?: number | undefined;
}

/** What {@link downloadModel} returns. */
export interface DownloadedModel {
  /** Absolute path of the file in the cache. */
  path: string;
  /** `'cache'` when it was there already, `'download'` when fetched by this call. */
  source: 'cache' | 'download';
  /** Its size in bytes. */
  bytes: number;
  /** Its sha256 (lowercase hex). */
  sha256: string;
}

interface SourceRecord {
  url: string;
  file: string;
  bytes: number;
  sha256: string;
  etag?: string | undefined;
}

interface PartialRecord {
  url: string;
  validator?: string | undefined;
  total?: number | undefined;
}

const HEX64 = /^[0-9a-f]{64}$/;

/** A network failure of one attempt (connection refused or dropped, idle timeout): retried. */
class TransferError extends DownloadError {}

/** True for an `http:` or `https:` URL string. */
export function isModelUrl(spec: string): boolean {
  return /^https?:\/\//i.test(spec);
}

/** The cache folder of one URL's download: `<cacheRoot()>/models/url/<16 hex>`. */
export function urlCacheDir(url: string): string {
  return cachePath('models', 'url', createHash('sha256').update(url).digest('hex').slice(0, 16));
}

/** The file name for a URL: its last path segment, made safe, ending in `.gguf`. */
function fileNameFor(url: string): string {
  let last = '';
  try {
    last = decodeURIComponent(new URL(url).pathname.split('/').pop() ?? '');
  } catch {
    last = '';
  }
  let name = last.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '');
  if (name === '') name = 'model';
  if (!name.toLowerCase().endsWith('.gguf')) name += '.gguf';
  return name;
}

function abortError(signal: AbortSignal): unknown {
  if (signal.reason !== undefined) return signal.reason;
  const e = new Error('The download was aborted');
  e.name = 'AbortError';
  return e;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', stop);
      resolve();
    }, ms);
    function stop(): void {
      clearTimeout(t);
      reject(abortError(signal!));
    }
    signal?.addEventListener('abort', stop, { once: true });
  });
}

async function readJson<T>(path: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

async function fileSize(path: string): Promise<number | undefined> {
  try {
    const st = await stat(path);
    return st.isFile() ? st.size : undefined;
  } catch {
    return undefined;
  }
}

async function isGguf(path: string): Promise<boolean> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(4);
    const { bytesRead } = await fh.read(buf, 0, 4, 0);
    return bytesRead === 4 && buf.toString('latin1') === 'GGUF';
  } finally {
    await fh.close();
  }
}


/**
 * Takes `<dir>/.lock` (our pid inside). A lock whose writer is gone is taken over; a live one is
 * waited for (another process downloads the same URL). Returns the release function.
 */
async function lock(dir: string, signal: AbortSignal | undefined, onWait: () => void): Promise<() => Promise<void>> {
  const file = join(dir, '.lock');
  let told = false;
  for (;;) {
    if (signal?.aborted) throw abortError(signal);
    try {
      await writeFile(file, String(process.pid), { flag: 'wx' });
      return () => rm(file, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const owner = Number((await readFile(file, 'utf8').catch(() => '')).trim());
    if (!Number.isInteger(owner) || owner <= 0 || !processAlive(owner)) {
      await rm(file, { force: true });
      continue;
    }
    if (owner === process.pid) throw new DownloadError(`internal: ${dir} is already locked by this process`);
    if (!told) {
      told = true;
      onWait();
    }
    await sleep(500, signal);
  }
}

/** The cached file of `dir` when its record says it is complete (and has the asked sha256). */
async function cached(dir: string, url: string, sha256: string | undefined): Promise<DownloadedModel | undefined> {
  const record = await readJson<SourceRecord>(join(dir, 'source.json'));
  if (!record || record.url !== url || typeof record.file !== 'string') return undefined;
  const path = join(dir, record.file);
  if ((await fileSize(path)) !== record.bytes) return undefined;
  if (sha256 !== undefined && record.sha256 !== sha256) return undefined;
  return { path, source: 'cache', bytes: record.bytes, sha256: record.sha256 };
}

/** `bytes <start>-<end>/<total>` -> start and total (total undefined for `*`). */
function parseContentRange(value: string | null): { start: number; total: number | undefined } | undefined {
  const m = /^bytes\s+(\d+)-(\d+)\/(\d+|\*)$/i.exec(value?.trim() ?? '');
  if (!m) return undefined;
  return { start: Number(m[1]), total: m[3] === '*' ? undefined : Number(m[3]) };
}

function transient(status: number): boolean {
  return status >= 500 || status === 408 || status === 429;
}

/**
 * Downloads the GGUF file at `url` into the cache (see the module docs), or returns the cached
 * copy. Concurrent calls for one URL in this process share one download; another process waits for
 * the first one's lock.
 *
 * @throws HttpStatusError when the server answers with an error status (after the retries for 5xx).
 * @throws ChecksumMismatchError when `sha256` is given and the file's differs.
 * @throws ModelFormatError when the file is not a GGUF file (no `GGUF` magic).
 * @throws DownloadError on network errors once the retries are spent (the partial file is kept).
 */
export function downloadModel(url: string, options: DownloadModelOptions = {}): Promise<DownloadedModel> {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return Promise.reject(new DownloadError(`not a URL: '${url}'`));
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    return Promise.reject(new DownloadError(`only http and https URLs can be downloaded, got '${url}'`));
  }
  const sha = options.sha256?.trim().toLowerCase();
  if (sha !== undefined && !HEX64.test(sha)) {
    return Promise.reject(new DownloadError(`sha256 must be 64 hex digits, got '${options.sha256}'`));
  }
  const key = `${urlCacheDir(url)}\0${sha ?? ''}`;
  const running = inflight.get(key);
  if (running && options.force !== true && options.signal === undefined) return running;
  const job = downloadUnshared(url, sha, options);
  if (options.signal === undefined) {
    inflight.set(key, job);
    const forget = () => {
      if (inflight.get(key) === job) inflight.delete(key);
    };
    job.then(forget, forget);
  }
  return job;
}

const inflight = new Map<string, Promise<DownloadedModel>>();

async function downloadUnshared(url: string, sha: string | undefined, options: DownloadModelOptions): Promise<DownloadedModel> {
  const { signal } = options;
  if (signal?.aborted) throw abortError(signal);
  try {
    return await downloadLocked(url, sha, options);
  } catch (e) {
    // Whatever stage the abort reached (transfer, hashing), the caller gets the signal's reason.
    if (signal?.aborted) throw abortError(signal);
    throw e;
  }
}

async function downloadLocked(url: string, sha: string | undefined, options: DownloadModelOptions): Promise<DownloadedModel> {
  const { signal } = options;
  const dir = urlCacheDir(url);
  if (options.force !== true) {
    const hit = await cached(dir, url, sha);
    if (hit) return hit;
  }
  await mkdir(dir, { recursive: true });
  const unlock = await lock(dir, signal, () => undefined);
  try {
    // Another process may have finished it while we waited for the lock.
    if (options.force !== true) {
      const hit = await cached(dir, url, sha);
      if (hit) return hit;
    }
    const partial = join(dir, '.partial');
    const partialMeta = join(dir, '.partial.json');
    if (options.force === true) {
      await rm(partial, { force: true });
      await rm(partialMeta, { force: true });
    }
    const result = await transfer(url, dir, partial, partialMeta, options);
    const report = (received: number) =>
      options.onProgress?.({ url, received, total: result.bytes, resumedFrom: result.resumedFrom, phase: 'verify' });
    report(0);
    const actual = await sha256File(partial, signal);
    report(result.bytes);
    if (sha !== undefined && actual !== sha) {
      await rm(partial, { force: true });
      await rm(partialMeta, { force: true });
      throw new ChecksumMismatchError(result.finalUrl, sha, actual, result.bytes);
    }
    if (!(await isGguf(partial))) {
      await rm(partial, { force: true });
      await rm(partialMeta, { force: true });
      throw new ModelFormatError(
        `${result.finalUrl} is not a GGUF file (no 'GGUF' magic in its first bytes; ${result.bytes} bytes received). ` +
          'Only single-file GGUF models can be loaded from a URL.',
      );
    }
    // The name: the URL's last segment, or the redirect target's when only that one ends in .gguf.
    const file = /\.gguf$/i.test(new URL(url).pathname) ? fileNameFor(url) : fileNameFor(result.finalUrl);
    const dest = join(dir, file);
    // Older files of this URL (a force re-download, a server that renamed it) go first.
    for (const n of await readdir(dir)) if (n.endsWith('.gguf') && n !== file) await rm(join(dir, n), { force: true });
    await rename(partial, dest);
    const record: SourceRecord = { url, file, bytes: result.bytes, sha256: actual, etag: result.etag };
    await writeFile(join(dir, 'source.json.tmp'), `${JSON.stringify(record, null, 2)}\n`);
    await rename(join(dir, 'source.json.tmp'), join(dir, 'source.json'));
    await rm(partialMeta, { force: true });
    return { path: dest, source: 'download', bytes: result.bytes, sha256: actual };
  } finally {
    await unlock();
  }
}

interface TransferResult {
  bytes: number;
  resumedFrom: number;
  finalUrl: string;
  etag: string | undefined;
}

/** Fills `partial` with the whole file, resuming and retrying; returns its size. */
async function transfer(url: string, dir: string, partial: string, partialMeta: string, options: DownloadModelOptions): Promise<TransferResult> {
  const { signal } = options;
  const retries = options.retries ?? 3;
  const idleMs = options.idleTimeoutMs ?? 30_000;
  let meta = await readJson<PartialRecord>(partialMeta);
  let have = meta?.url === url ? ((await fileSize(partial)) ?? 0) : 0;
  if (have === 0 || meta?.url !== url) {
    await rm(partial, { force: true });
    meta = undefined;
    have = 0;
  }
  const resumedFrom = have;
  let failures = 0;
  let lastError: unknown;
  for (;;) {
    if (signal?.aborted) throw abortError(signal);
    if (failures > 0) await sleep(Math.min(4000, 250 * 2 ** (failures - 1)), signal);
    const attempt = new AbortController();
    const stopAttempt = () => attempt.abort(signal?.reason);
    signal?.addEventListener('abort', stopAttempt, { once: true });
    let idle: NodeJS.Timeout | undefined;
    const armIdle = () => {
      clearTimeout(idle);
      idle = setTimeout(() => attempt.abort(new DownloadError(`no data from ${url} for ${idleMs} ms`)), idleMs);
    };
    try {
      const headers: Record<string, string> = { 'accept-encoding': 'identity', 'user-agent': 'cascade-xla' };
      if (have > 0) {
        headers.range = `bytes=${have}-`;
        if (meta?.validator) headers['if-range'] = meta.validator;
      }
      armIdle();
      let response: Response;
      try {
        response = await fetch(url, { headers, redirect: 'follow', signal: attempt.signal });
      } catch (e) {
        throw networkError(url, e, attempt.signal);
      }
      const finalUrl = response.url || url;
      if (response.status === 416 && have > 0) {
        // Nothing left past `have`: complete if the server's size says so, else start over.
        const total = parseContentRange(response.headers.get('content-range'))?.total ?? meta?.total;
        await response.body?.cancel();
        if (total === have) return { bytes: have, resumedFrom, finalUrl, etag: undefined };
        await rm(partial, { force: true });
        have = 0;
        meta = undefined;
        continue;
      }
      if (!response.ok) {
        await response.body?.cancel().catch(() => undefined);
        const error = new HttpStatusError(finalUrl, response.status, response.statusText);
        if (transient(response.status) && failures < retries) {
          failures++;
          lastError = error;
          continue;
        }
        throw error;
      }
      let offset: number;
      let total: number | undefined;
      const length = response.headers.get('content-length');
      if (response.status === 206) {
        const range = parseContentRange(response.headers.get('content-range'));
        if (!range || range.start > have) {
          await response.body?.cancel();
          throw new DownloadError(`${finalUrl} answered a Range request with a bad Content-Range '${response.headers.get('content-range')}'`);
        }
        offset = range.start;
        total = range.total;
      } else {
        // 200: the whole file (the server ignored Range, or If-Range said the file changed).
        offset = 0;
        total = length !== null && /^\d+$/.test(length) ? Number(length) : undefined;
      }
      const etag = response.headers.get('etag') ?? undefined;
      const validator = etag && !etag.startsWith('W/') ? etag : (response.headers.get('last-modified') ?? undefined);
      meta = { url, validator, total };
      await writeFile(partialMeta, `${JSON.stringify(meta)}\n`);
      const fh = await open(partial, offset === 0 ? 'w' : 'r+');
      let position = offset;
      let lastReport = 0;
      let trailing: NodeJS.Timeout | undefined;
      const report = (force: boolean) => {
        if (!options.onProgress) return;
        const now = Date.now();
        clearTimeout(trailing);
        trailing = undefined;
        if (!force && now - lastReport < 100) {
          // The latest count still goes out, 100 ms after the last report, if no chunk comes first.
          trailing = setTimeout(() => report(true), 100 - (now - lastReport));
          trailing.unref();
          return;
        }
        lastReport = now;
        options.onProgress({ url, received: position, total, resumedFrom, phase: 'download' });
      };
      try {
        if (offset > 0) await fh.truncate(offset);
        report(true);
        if (response.body) {
          try {
            for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
              armIdle();
              await fh.write(chunk, 0, chunk.length, position);
              position += chunk.length;
              report(false);
            }
          } catch (e) {
            throw networkError(finalUrl, e, attempt.signal);
          }
        }
        await fh.sync();
      } finally {
        clearTimeout(trailing);
        await fh.close();
        have = position;
      }
      report(true);
      if (total !== undefined && position !== total) {
        throw new TransferError(`${finalUrl} ended after ${position} of ${total} bytes`);
      }
      return { bytes: position, resumedFrom, finalUrl, etag };
    } catch (e) {
      if (signal?.aborted) throw abortError(signal);
      if (!(e instanceof TransferError)) throw e;
      lastError = e;
      if (failures >= retries) {
        throw new DownloadError(
          `${(e as Error).message}; gave up after ${failures + 1} attempt(s). ${have} bytes are kept in ${dir} and the next download of this URL resumes from there.`,
          { cause: lastError },
        );
      }
      failures++;
    } finally {
      clearTimeout(idle);
      signal?.removeEventListener('abort', stopAttempt);
    }
  }
}

/** A fetch or body error as a retryable TransferError (the idle timeout's reason passes through). */
function networkError(url: string, e: unknown, attemptSignal: AbortSignal): TransferError {
  if (attemptSignal.aborted && attemptSignal.reason instanceof DownloadError) {
    return new TransferError(attemptSignal.reason.message, { cause: e });
  }
  const err = e as Error & { cause?: { code?: string; message?: string } };
  const detail = err.cause?.message ?? err.cause?.code ?? err.message ?? String(e);
  return new TransferError(`downloading ${url} failed: ${detail}`, { cause: e });
}
