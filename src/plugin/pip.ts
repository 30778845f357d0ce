/**
 * Talking to Python: finding site-packages and running `pip download`.
 * @module
 */

import { spawn } from 'node:child_process';

import { DownloadError, PluginNotFoundError } from '../errors.js';

/** The Python interpreter used for pip and site-packages discovery. */
export const PYTHON = 'python3';

/** Advice appended to every error about Python, pip or the network. */
export const PYTHON_ADVICE =
  'Install Python 3 with pip (and network access to PyPI, or set CASCADE_PYPI_INDEX_URL to a mirror), ' +
  'or set CASCADE_PJRT_PLUGIN to the path of a PJRT plugin .so';

/** The error a rejected promise carries when `signal` aborts. */
export function abortReason(signal: AbortSignal): unknown {
  if (signal.reason !== undefined) return signal.reason;
  const e = new Error('The operation was aborted');
  e.name = 'AbortError';
  return e;
}

/**
 * The site-packages folders of `python3` (system and user), in Python's order. Empty when
 * python3 is missing or fails: callers then just find nothing installed.
 */
export async function sitePackages(): Promise<string[]> {
  const code = "import site,sys; print('\\n'.join(site.getsitepackages()+[site.getusersitepackages()]))";
  return new Promise((resolve) => {
    let out = '';
    let child;
    try {
      child = spawn(PYTHON, ['-c', code], { stdio: ['ignore', 'pipe', 'ignore'] });
    } catch {
      resolve([]);
      return;
    }
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => (out += d));
    child.on('error', () => resolve([]));
    child.on('close', (rc) => {
      if (rc !== 0) return resolve([]);
      resolve(
        out
          .split('\n')
          .map((s) => s.trim())
          .filter((s) => s !== ''),
      );
    });
  });
}

/** Options of {@link pipDownload}. */
export interface PipDownloadOptions {
  /** Receives every line pip prints (progress, warnings, errors). */
  onLine: (line: string) => void;
  /** Kills pip and rejects with the signal's reason. */
  signal?: AbortSignal | undefined;
  /** `--index-url` for a mirror (default: `$CASCADE_PYPI_INDEX_URL`, else pip's own settings). */
  indexUrl?: string | undefined;
  /**
   * Download the source distribution instead of a wheel: `--no-binary :all:` in place of
   * `--only-binary :all:` (default false). Used for the default model, which ships as an sdist.
   */
  noBinary?: boolean | undefined;
  /** Replaces {@link PYTHON_ADVICE} at the end of error messages (what the user can do instead). */
  advice?: string | undefined;
}

/** pip lines that mean the index was not reachable. */
const NETWORK_TROUBLE =
  /NewConnectionError|Failed to establish a new connection|Connection refused|Name or service not known|Temporary failure in name resolution|ProxyError|SSLError|ConnectTimeout|Read timed out|Network is unreachable/;

/** How many of pip's last lines an error quotes. */
const TAIL_LINES = 12;

/**
 * `python3 -m pip download --no-deps --only-binary :all: <pkg>==<version> -d <dest>`
 * (`--no-binary :all:` with `noBinary`).
 * Resolves when pip exits 0. pip's own settings apply (config files, `PIP_*` variables,
 * `HTTPS_PROXY`), except that `indexUrl` replaces the main index.
 *
 * @throws PluginNotFoundError when python3 or pip is missing.
 * @throws DownloadError when pip fails; the message quotes pip's last lines.
 */
export async function pipDownload(
  pkg: string,
  version: string,
  dest: string,
  options: PipDownloadOptions,
): Promise<void> {
  const { onLine, signal } = options;
  const advice = options.advice ?? PYTHON_ADVICE;
  if (signal?.aborted) throw abortReason(signal);
  const indexUrl = options.indexUrl ?? (process.env['CASCADE_PYPI_INDEX_URL'] || undefined);
  const args = [
    '-m',
    'pip',
    'download',
    '--no-deps',
    options.noBinary === true ? '--no-binary' : '--only-binary',
    ':all:',
    '--no-input',
    '--disable-pip-version-check',
    '--progress-bar',
    'on',
    '-d',
    dest,
  ];
  if (indexUrl !== undefined) args.push('--index-url', indexUrl);
  args.push(`${pkg}==${version}`);

  const tail: string[] = [];
  const emit = (line: string): void => {
    const l = line.trimEnd();
    if (l.trim() === '') return;
    tail.push(l);
    if (tail.length > TAIL_LINES) tail.shift();
    onLine(l);
  };

  await new Promise<void>((resolve, reject) => {
    let settled = false;
    const finish = (err?: unknown): void => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener('abort', onAbort);
      if (err === undefined) resolve();
      else reject(err);
    };

    const child = spawn(PYTHON, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PYTHONUNBUFFERED: '1' },
    });

    let killTimer: NodeJS.Timeout | undefined;
    function onAbort(): void {
      child.kill('SIGTERM');
      killTimer = setTimeout(() => child.kill('SIGKILL'), 2000);
      killTimer.unref();
      // Settle once pip is gone (the 'close' handler), so callers can clean up safely.
    }
    signal?.addEventListener('abort', onAbort, { once: true });

    // pip draws progress with '\r'; split on both so each update is one line.
    const lineReader = (): ((chunk: string) => void) => {
      let buf = '';
      return (chunk: string) => {
        buf += chunk;
        const parts = buf.split(/\r\n|\r|\n/);
        buf = parts.pop() ?? '';
        for (const p of parts) emit(p);
      };
    };
    const outReader = lineReader();
    const errReader = lineReader();
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', outReader);
    child.stderr.on('data', errReader);

    child.on('error', (err: NodeJS.ErrnoException) => {
      if (killTimer) clearTimeout(killTimer);
      if (err.code === 'ENOENT') {
        finish(new PluginNotFoundError(`${PYTHON} was not found on PATH, so ${pkg} cannot be downloaded. ${advice}.`, { cause: err }));
      } else {
        finish(new DownloadError(`could not run ${PYTHON} -m pip: ${err.message}. ${advice}.`, { cause: err }));
      }
    });
    child.on('close', (rc, sig) => {
      if (killTimer) clearTimeout(killTimer);
      outReader('\n');
      errReader('\n');
      if (signal?.aborted) return finish(abortReason(signal));
      if (rc === 0) return finish();
      const quoted = tail.map((l) => `  | ${l}`).join('\n');
      const cmd = `${PYTHON} ${args.join(' ')}`;
      if (tail.some((l) => /No module named pip\b/.test(l))) {
        return finish(new PluginNotFoundError(`pip is not installed for ${PYTHON} (\`${cmd}\` failed):\n${quoted}\n${advice}.`));
      }
      const how = sig !== null ? `was killed by ${sig}` : `exited with code ${rc}`;
      const unreachable = tail.some((l) => NETWORK_TROUBLE.test(l))
        ? ` pip could not reach the package index${indexUrl !== undefined ? ` ${indexUrl}` : ''} (no network, a wrong proxy or mirror?).`
        : '';
      finish(
        new DownloadError(
          `downloading ${pkg}==${version} failed: \`${cmd}\` ${how}.${unreachable} pip's last lines:\n${quoted}\n${advice}.`,
        ),
      );
    });
  });
}
