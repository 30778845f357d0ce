/**
 * Verifying a downloaded wheel and installing the plugin inside it atomically: the `.so` is
 * extracted to a temporary file in the destination folder, checked, made executable and renamed
 * into place, so no half-written plugin is ever visible and concurrent installs don't corrupt
 * each other (the last rename wins, and every candidate is complete).
 * @module
 */

import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, mkdir, open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';

import yauzl from 'yauzl';

import { DownloadError } from '../errors.js';
import { abortReason } from './pip.js';

/** The sha256 (lowercase hex) of a file. */
export async function sha256File(path: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash, signal ? { signal } : {});
  return hash.digest('hex');
}

/** True when the file starts with the ELF magic `7f 45 4c 46`. */
export async function isElf(path: string): Promise<boolean> {
  let fh;
  try {
    fh = await open(path, 'r');
    const buf = Buffer.alloc(4);
    const { bytesRead } = await fh.read(buf, 0, 4, 0);
    return bytesRead === 4 && buf[0] === 0x7f && buf[1] === 0x45 && buf[2] === 0x4c && buf[3] === 0x46;
  } catch {
    return false;
  } finally {
    await fh?.close();
  }
}

/** What {@link installFromWheel} needs to know. */
export interface WheelInstall {
  /** The wheel file. */
  wheel: string;
  /**
   * Expected sha256 (hex). `undefined` skips the check (only for wheels we have no pin for,
   * decided by the caller).
   */
  sha256: string | undefined;
  /** The member path inside the wheel, e.g. `xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so`. */
  member: string;
  /** The final plugin path. Its folder is created if needed. */
  dest: string;
  signal?: AbortSignal | undefined;
  onProgress?: ((msg: string) => void) | undefined;
}

function openZip(path: string): Promise<yauzl.ZipFile> {
  return new Promise((resolve, reject) => {
    yauzl.open(path, { lazyEntries: true, autoClose: false, validateEntrySizes: true }, (err, zip) => {
      if (err) reject(err);
      else resolve(zip);
    });
  });
}

function findEntry(zip: yauzl.ZipFile, member: string): Promise<yauzl.Entry | undefined> {
  return new Promise((resolve, reject) => {
    const onEntry = (entry: yauzl.Entry): void => {
      if (entry.fileName === member) {
        cleanup();
        resolve(entry);
      } else {
        zip.readEntry();
      }
    };
    const onEnd = (): void => {
      cleanup();
      resolve(undefined);
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(err);
    };
    const cleanup = (): void => {
      zip.off('entry', onEntry);
      zip.off('end', onEnd);
      zip.off('error', onError);
    };
    zip.on('entry', onEntry);
    zip.on('end', onEnd);
    zip.on('error', onError);
    zip.readEntry();
  });
}

function openEntryStream(zip: yauzl.ZipFile, entry: yauzl.Entry): Promise<NodeJS.ReadableStream> {
  return new Promise((resolve, reject) => {
    zip.openReadStream(entry, (err, stream) => {
      if (err) reject(err);
      else resolve(stream);
    });
  });
}

/**
 * Verify `wheel`'s sha256, extract `member` to `dest` atomically (temp file in the same folder,
 * chmod 0755, rename). The temp file is removed on every failure path. Returns `dest`.
 *
 * @throws DownloadError on a sha256 mismatch (naming both hashes), a missing member, a corrupt
 *   zip, or an extracted file that is not an ELF shared library.
 */
export async function installFromWheel(opts: WheelInstall): Promise<string> {
  const { wheel, member, dest, signal, onProgress } = opts;
  const check = (): void => {
    if (signal?.aborted) throw abortReason(signal);
  };
  check();

  if (opts.sha256 !== undefined) {
    onProgress?.(`verifying sha256 of ${basename(wheel)}`);
    const actual = await sha256File(wheel, signal);
    const expected = opts.sha256.toLowerCase();
    if (actual !== expected) {
      throw new DownloadError(
        `sha256 mismatch for ${basename(wheel)}: expected ${expected}, got ${actual}. ` +
          'The download is corrupt or the index served a different file; nothing was installed.',
      );
    }
  }
  check();

  const folder = dirname(dest);
  await mkdir(folder, { recursive: true });
  const tmp = join(folder, `.${basename(dest)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  let zip: yauzl.ZipFile | undefined;
  try {
    try {
      zip = await openZip(wheel);
    } catch (e) {
      throw new DownloadError(`${basename(wheel)} is not a readable zip/wheel: ${(e as Error).message}`, { cause: e });
    }
    const entry = await findEntry(zip, member);
    if (entry === undefined) {
      throw new DownloadError(`${basename(wheel)} has no member ${member}; is it the right package?`);
    }
    onProgress?.(`extracting ${member} (${(entry.uncompressedSize / 2 ** 20).toFixed(1)} MiB)`);
    const input = await openEntryStream(zip, entry);
    try {
      await pipeline(input, createWriteStream(tmp, { mode: 0o755, flags: 'wx' }), signal ? { signal } : {});
    } catch (e) {
      if (signal?.aborted) throw abortReason(signal);
      throw new DownloadError(`extracting ${member} from ${basename(wheel)} failed: ${(e as Error).message}`, { cause: e });
    }
    check();

    const fh = await open(tmp, 'r+');
    try {
      const { size } = await fh.stat();
      if (size !== entry.uncompressedSize) {
        throw new DownloadError(`extracted ${member} has ${size} bytes, expected ${entry.uncompressedSize}`);
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    if (!(await isElf(tmp))) {
      throw new DownloadError(`${member} in ${basename(wheel)} is not an ELF shared library`);
    }
    await chmod(tmp, 0o755); // the umask may have trimmed the mode given at creation
    check();
    await rename(tmp, dest);
    return dest;
  } catch (e) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw e;
  } finally {
    zip?.close();
  }
}
