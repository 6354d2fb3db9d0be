/**
 * Free loopback ports for the processes tests, benchmarks and the demo start.
 *
 * Binding port 0 hands out a port from the kernel's ephemeral range, the same range every outgoing
 * connection takes its local port from: under load (clients reconnecting, arbiter calls) a port chosen
 * that way is often taken by someone's outgoing connection before the server binds it (EADDRINUSE).
 * So ports are chosen below the ephemeral range (Linux default 32768–60999), in a slice of it that this
 * process holds alone, handed out in turn within the slice (never twice until it wraps), and each is
 * checked by binding it first.
 *
 * A slice is claimed with a lock file (`<tmpdir>/ftvm-port-slices/<n>`, created exclusively, holding
 * the pid; a lock whose process is gone is taken over) and released at exit. Without it, two concurrent
 * processes that picked the same slice handed out the same ports: a harness that restarts a node on
 * its fixed port (the Jepsen slots) lost that port, while the node was down, to a test process that
 * started meanwhile, and then received that process's requests on its logging channel. When every
 * slice is held, the pid picks one (the old behaviour).
 */
import { mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const RANGE_LOW = 20_000;
const RANGE_HIGH = 32_000; // exclusive; below the ephemeral range
const SLICE = 200;
const SLICES = Math.floor((RANGE_HIGH - RANGE_LOW) / SLICE);
let sliceBase: number | undefined;
let nextOffset = 0;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === 'EPERM';
  }
}

/** Claims a slice no live process holds (lock file), or falls back to the pid's; once per process. */
function claimSlice(): number {
  const dir = join(tmpdir(), 'ftvm-port-slices');
  try {
    mkdirSync(dir, { recursive: true });
  } catch {
    return process.pid % SLICES;
  }
  for (let i = 0; i < SLICES; i++) {
    const n = (process.pid + i) % SLICES;
    const file = join(dir, String(n));
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        writeFileSync(file, String(process.pid), { flag: 'wx' });
        process.once('exit', () => {
          try {
            if (readFileSync(file, 'utf8') === String(process.pid)) unlinkSync(file);
          } catch {
            /* already gone */
          }
        });
        return n;
      } catch (err) {
        if ((err as { code?: string }).code !== 'EEXIST') return process.pid % SLICES;
        let holder = NaN;
        try {
          holder = Number(readFileSync(file, 'utf8'));
        } catch {
          /* removed meanwhile: try again */
        }
        if (Number.isInteger(holder) && holder > 0 && alive(holder)) break; // held: next slice
        try {
          unlinkSync(file); // stale: its process is gone
        } catch {
          /* someone else took it over first */
        }
      }
    }
  }
  return process.pid % SLICES;
}

function canBind(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen({ host: '127.0.0.1', port, exclusive: true }, () => s.close(() => resolve(true)));
  });
}

/** A port that was free on 127.0.0.1 a moment ago, outside the ephemeral range; distinct within this process. */
export async function freePort(): Promise<number> {
  for (let tries = 0; tries < RANGE_HIGH - RANGE_LOW; tries++) {
    // Walk this process's slice first, then the rest of the range.
    sliceBase ??= RANGE_LOW + claimSlice() * SLICE;
    const i = nextOffset++;
    const port = i < SLICE ? sliceBase + i : RANGE_LOW + ((sliceBase - RANGE_LOW + i) % (RANGE_HIGH - RANGE_LOW));
    if (await canBind(port)) return port;
  }
  throw new Error('no free loopback port below the ephemeral range');
}

/** `n` distinct free ports. */
export async function freePorts(n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(await freePort());
  return out;
}
