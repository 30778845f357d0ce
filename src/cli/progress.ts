/** A progress bar on stderr (cli-progress), quiet when stderr is not a terminal. @internal @module */
import cliProgress from 'cli-progress';

export interface Progress {
  update(done: number, total: number): void;
  stop(): void;
}

export function progressBar(label: string, enabled = process.stderr.isTTY === true): Progress {
  if (!enabled) {
    let lastShare = -1;
    return {
      // Without a terminal: a line every 10%.
      update(done, total) {
        const share = Math.floor((10 * done) / Math.max(1, total));
        if (share !== lastShare) {
          lastShare = share;
          process.stderr.write(`${label}: ${done}/${total}\n`);
        }
      },
      stop() {},
    };
  }
  const bar = new cliProgress.SingleBar(
    { format: `${label} [{bar}] {percentage}% | {value}/{total} | eta {eta_formatted}`, stream: process.stderr, hideCursor: true },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update(done, total) {
      if (!started) {
        bar.start(total, done);
        started = true;
      } else {
        bar.setTotal(total);
        bar.update(done);
      }
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
