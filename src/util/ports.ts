/**
 * Free loopback ports for the processes tests, benchmarks and the demo start.
 *
 * Binding port 0 hands out a port from the kernel's ephemeral range, the same range every outgoing
 * connection takes its local port from: under load (clients reconnecting, arbiter calls) a port chosen
 * that way is often taken by someone's outgoing connection before the server binds it (EADDRINUSE).
 * So ports are chosen below the ephemeral range (Linux default 32768–60999), in a slice of it picked
 * by this process's pid (so concurrent test processes rarely share a slice), handed out in turn within
 * the slice (never twice until it wraps), and each is checked by binding it first.
 */
import net from 'node:net';

const RANGE_LOW = 20_000;
const RANGE_HIGH = 32_000; // exclusive; below the ephemeral range
const SLICE = 500;
const SLICES = Math.floor((RANGE_HIGH - RANGE_LOW) / SLICE);
const sliceBase = RANGE_LOW + (process.pid % SLICES) * SLICE;
let nextOffset = 0;

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
