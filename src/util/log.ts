/**
 * Structured logs (pino: fast, JSON lines, well kept). One logger per process; components take a child.
 * Logs go to stderr so stdout stays for command output.
 *
 * Every line of a node carries its VM name, current role and epoch: the drivers bind a context to their
 * logger (`bindLogContext`), which a pino mixin reads at each line. Role and epoch change while a node
 * runs (a backup goes live at a new epoch), so they are read when the line is written, not bound once.
 * pino children inherit from their parent (Object.create), so a context bound to a node's logger is
 * seen by every child logger made from it, before or after the binding.
 */
import { pino, destination, stdTimeFunctions, type Logger } from 'pino';

export type { Logger };

/** What a node's log lines carry besides their own fields. */
export interface LogContext {
  vm: string;
  role: string;
  epoch: number;
}

const contextSym = Symbol.for('ftvm.logContext');

type WithContext = { [contextSym]?: () => LogContext };

/**
 * Makes every line logged through `log` (and its children) carry `vm`, `role` and `epoch` as the
 * function returns them at that moment. A later binding on the same logger replaces an earlier one (a
 * backup that goes live hands its logger to the PrimaryNode that continues it).
 */
export function bindLogContext(log: Logger, context: () => LogContext): void {
  (log as unknown as WithContext)[contextSym] = context;
}

function mixin(_obj: object, _level: number, log: unknown): object {
  const ctx = (log as WithContext | undefined)?.[contextSym];
  if (!ctx) return {};
  try {
    const c = ctx();
    return { vm: c.vm, role: c.role, epoch: c.epoch };
  } catch {
    return {};
  }
}

let root: Logger | undefined;

export function rootLogger(): Logger {
  root ??= pino(
    { level: process.env.FTVM_LOG_LEVEL ?? 'info', base: { pid: process.pid }, timestamp: stdTimeFunctions.isoTime, mixin },
    destination({ fd: 2, sync: true }),
  );
  return root;
}

export function logger(component: string, bindings: Record<string, unknown> = {}): Logger {
  return rootLogger().child({ component, ...bindings });
}

/** A logger that discards everything (tests of pure parts). */
export const silentLogger: Logger = pino({ level: 'silent' });
