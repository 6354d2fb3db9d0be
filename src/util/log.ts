/**
 * Structured logs (pino: fast, JSON lines, well kept). One logger per process; components take a child.
 * Logs go to stderr so stdout stays for command output.
 */
import { pino, destination, stdTimeFunctions, type Logger } from 'pino';

export type { Logger };

let root: Logger | undefined;

export function rootLogger(): Logger {
  root ??= pino(
    { level: process.env.FTVM_LOG_LEVEL ?? 'info', base: { pid: process.pid }, timestamp: stdTimeFunctions.isoTime },
    destination({ fd: 2, sync: true }),
  );
  return root;
}

export function logger(component: string, bindings: Record<string, unknown> = {}): Logger {
  return rootLogger().child({ component, ...bindings });
}

/** A logger that discards everything (tests of pure parts). */
export const silentLogger: Logger = pino({ level: 'silent' });
