/**
 * Progress on stderr for the CLI (cli-progress). Three modes: `'bar'` (a live bar with ETA, on a
 * terminal), `'lines'` (a line every 10%, when stderr is a file or a pipe) and `'off'` (`--quiet`).
 * Nothing is shown for a phase that ends within `delayMs` (default 1 s), so a cached step is silent.
 * @internal
 * @module
 */
import cliProgress from 'cli-progress';

import { formatBytes } from './output.js';

export type ProgressMode = 'bar' | 'lines' | 'off';

/** The mode for stderr: off when quiet, a bar on a terminal, lines otherwise. */
export function progressMode(quiet = false): ProgressMode {
  if (quiet) return 'off';
  return process.stderr.isTTY === true ? 'bar' : 'lines';
}

export interface Progress {
  update(done: number, total: number): void;
  stop(): void;
}

export interface ProgressOptions {
  /** `'bytes'` shows sizes and a transfer rate. */
  units?: 'count' | 'bytes';
  /** Show nothing until the phase has run this long (default 1000 ms). */
  delayMs?: number;
}

function seconds(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '?';
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - 60 * m)} s`;
}

/**
 * A progress bar with ETA. `mode` may also be a boolean: true is `'bar'`, false `'lines'`
 * (what the older callers pass).
 */
export function progressBar(label: string, mode: ProgressMode | boolean = progressMode(), options: ProgressOptions = {}): Progress {
  const m: ProgressMode = mode === true ? 'bar' : mode === false ? 'lines' : mode;
  const bytes = options.units === 'bytes';
  const delayMs = options.delayMs ?? 1000;
  const started = Date.now();
  const amount = (v: number) => (bytes ? formatBytes(v) : String(v));
  if (m === 'off') return { update() {}, stop() {} };
  if (m === 'lines') {
    let lastShare = -1;
    let last: [number, number] | undefined;
    let printed = false;
    return {
      update(done, total) {
        last = [done, total];
        if (Date.now() - started < delayMs) return;
        const share = total > 0 ? Math.floor((10 * done) / total) : -2;
        if (share !== lastShare) {
          lastShare = share;
          printed = true;
          const eta = done > 0 && total > 0 ? `, eta ${seconds(((Date.now() - started) / 1000) * (total / done - 1))}` : '';
          process.stderr.write(`${label}: ${amount(done)}${total > 0 ? `/${amount(total)}` : ''}${eta}\n`);
        }
      },
      stop() {
        if (printed && last && last[0] !== last[1]) process.stderr.write(`${label}: ${amount(last[0])}\n`);
      },
    };
  }
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      hideCursor: true,
      clearOnComplete: false,
      etaBuffer: 20,
      format: (opts, params) => {
        const elapsed = (Date.now() - params.startTime) / 1000;
        const known = params.total > 0;
        const rate = bytes && elapsed > 0 ? `  ${formatBytes(params.value / elapsed)}/s` : '';
        const eta = known && params.value < params.total ? `  eta ${seconds(params.eta)}` : '';
        const share = known ? ` ${Math.floor(params.progress * 100)}%` : '';
        const barText = known ? ` [${cliProgress.Format.BarFormat(params.progress, opts)}]` : '';
        return `${label}${barText}${share}  ${amount(params.value)}${known ? `/${amount(params.total)}` : ''}${rate}${eta}`;
      },
    },
    cliProgress.Presets.shades_classic,
  );
  let shown = false;
  let last: [number, number] | undefined;
  const show = () => {
    if (shown || !last) return;
    shown = true;
    bar.start(last[1], last[0]);
  };
  const timer = setTimeout(show, delayMs);
  timer.unref();
  return {
    update(done, total) {
      last = [done, total];
      if (!shown) {
        if (Date.now() - started >= delayMs) show();
        return;
      }
      bar.setTotal(total);
      bar.update(done);
    },
    stop() {
      clearTimeout(timer);
      if (shown) {
        if (last) bar.update(last[0]);
        bar.stop();
      }
    },
  };
}

/**
 * A phase whose progress cannot be measured (reading and uploading a model): after `delayMs` it
 * shows the label and the seconds elapsed (a live counter on a terminal, one line otherwise), with
 * an ETA when `expectedMs` (the same phase's duration last time) is known; `stop()` clears it.
 */
export function phaseTimer(label: string, mode: ProgressMode = progressMode(), delayMs = 1000, expectedMs?: number): { stop(): void } {
  if (mode === 'off') return { stop() {} };
  const started = Date.now();
  let shown = false;
  let tick: NodeJS.Timeout | undefined;
  // With a duration measured last time: an ETA from it while the phase is within it.
  const eta = () => {
    if (expectedMs === undefined) return '';
    const left = (expectedMs - (Date.now() - started)) / 1000;
    return left >= 1 ? `, eta ${seconds(left)} (as long as last time)` : '';
  };
  const render = () => {
    shown = true;
    process.stderr.write(`\r${label} ... ${seconds((Date.now() - started) / 1000)}${eta()}\x1b[K`);
  };
  const first = setTimeout(() => {
    if (mode === 'lines') {
      shown = true;
      process.stderr.write(`${label} ...${expectedMs !== undefined ? ` (${seconds(expectedMs / 1000)} last time)` : ''}\n`);
      return;
    }
    render();
    tick = setInterval(render, 1000);
    tick.unref();
  }, delayMs);
  first.unref();
  let stopped = false;
  return {
    stop() {
      if (stopped) return;
      stopped = true;
      clearTimeout(first);
      clearInterval(tick);
      if (shown && mode === 'bar') process.stderr.write('\r\x1b[K');
      if (shown && mode === 'lines') process.stderr.write(`${label}: ${seconds((Date.now() - started) / 1000)}\n`);
    },
  };
}
