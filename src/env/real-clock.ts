/** The real clock of a process (src/replication/env.ts NodeClock): node timers and performance.now. */
import { randomBytes } from 'node:crypto';
import type { NodeClock, Timer } from '../replication/env.js';

export const realClock: NodeClock = {
  now: () => performance.now(),
  after(ms: number, fn: () => void, background = false): Timer {
    const t = setTimeout(fn, ms);
    if (background) t.unref();
    return { cancel: () => clearTimeout(t) };
  },
  every(ms: number, fn: () => void, background = false): Timer {
    const t = setInterval(fn, ms);
    if (background) t.unref();
    return { cancel: () => clearInterval(t) };
  },
  sleep: (ms: number) => new Promise<void>((r) => setTimeout(r, ms)),
  yieldIo: () => new Promise<void>((r) => setImmediate(r)),
  randomBytes: (n: number) => randomBytes(n),
};
