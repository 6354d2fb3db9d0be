/**
 * Progress of long work (benchmarks, the Jepsen run) on a terminal: a bar from `cli-progress` (a kept,
 * widely used library) on stderr when stderr is a TTY, with log lines printed above it; nothing but the
 * log lines when it is not (CI logs, pipes), so output meant for files stays clean.
 */
import cliProgress from 'cli-progress';

export interface Progress {
  /** Moves the bar to `done` of its total; `info` is shown beside it. */
  update(done: number, info?: string): void;
  /** A line of text above the bar (or on stderr when there is no bar). */
  log(line: string): void;
  stop(): void;
}

export function progress(label: string, total: number, stream: NodeJS.WriteStream = process.stderr): Progress {
  if (!stream.isTTY) {
    return {
      update: () => undefined,
      log: (line) => void stream.write(`${line}\n`),
      stop: () => undefined,
    };
  }
  const multi = new cliProgress.MultiBar(
    {
      stream,
      format: `${label} [{bar}] {value}/{total} {percentage}% | {eta_formatted} left | {info}`,
      hideCursor: true,
      clearOnComplete: false,
      etaBuffer: 20,
    },
    cliProgress.Presets.shades_classic,
  );
  const bar = multi.create(total, 0, { info: '' });
  return {
    update: (done, info) => bar.update(done, { info: info ?? '' }),
    log: (line) => multi.log(`${line}\n`),
    stop: () => multi.stop(),
  };
}
