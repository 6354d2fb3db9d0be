/**
 * The floor under the latency figures: what one round trip costs on this machine before ftvm does any
 * work. `npm run bench` measures it in the same run as the systems (docs/PERFORMANCE.md, "The floor"):
 *
 *   tcp     two Node processes on loopback, a 60-byte message and its echo (the client ↔ server hop)
 *   tls     the same over TLS 1.3 with a pre-shared key (the primary ↔ backup hop: the logging channel)
 *   thread  a Node main thread and a worker: the main thread wakes the worker through a SharedArrayBuffer
 *           (Atomics.notify), the worker answers with a message (the I/O thread ↔ vCPU worker hop)
 *
 * Each is the median of `count` round trips after a warm-up. An FT-on request at one connection makes
 * at least one tcp and one tls round trip (the client's, and the log's with its ACK), and in this
 * design one thread round trip (input to the vCPU and its batch back); in this design the log's round
 * trip also starts only after the guest's step (the log leaves with the reply's batch).
 *
 * Also an entry point: `node dist/bench/floor.js` prints the three figures as one JSON line;
 * `node dist/bench/floor.js --echo tcp|tls` is the echo server it starts (prints its port).
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { median, round } from './stats.js';

export interface Floor {
  /** Median round trip between two Node processes over loopback TCP (µs). */
  tcp_rtt_us: number;
  /** The same over TLS 1.3 with a pre-shared key (µs). */
  tls_rtt_us: number;
  /** Median round trip between a main thread and a worker: Atomics.notify there, a message back (µs). */
  thread_rtt_us: number;
}

const MESSAGE_BYTES = 60;
const PSK = Buffer.alloc(32, 0x5a);
const PSK_IDENTITY = 'ftvm-floor';
const TLS_BASE = { minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' } as const;
const SELF = fileURLToPath(import.meta.url);

/** The echo server (child process): listens on 127.0.0.1, prints its port, echoes every chunk. */
function echoServer(kind: 'tcp' | 'tls'): void {
  const onSocket = (s: net.Socket): void => {
    s.setNoDelay(true);
    s.on('data', (d: Buffer) => s.write(d));
    s.on('error', () => undefined);
  };
  const server =
    kind === 'tls'
      ? tls.createServer({ ...TLS_BASE, pskCallback: (_s, id) => (id === PSK_IDENTITY ? PSK : null), ciphers: 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256' }, onSocket)
      : net.createServer(onSocket);
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write(`${(server.address() as net.AddressInfo).port}\n`);
  });
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0)); // the parent ended: so does the server
}

/** Round trips to an echo server in a child process. */
async function processRtt(kind: 'tcp' | 'tls', warmup: number, count: number): Promise<number> {
  const child = spawn(process.execPath, [SELF, '--echo', kind], { stdio: ['pipe', 'pipe', 'inherit'] });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const line = out.split('\n')[0];
        if (out.includes('\n') && line !== undefined) resolve(Number(line));
      });
      child.once('exit', (code) => reject(new Error(`the ${kind} echo server exited (${code}) before listening`)));
      setTimeout(() => reject(new Error(`the ${kind} echo server did not listen within 10 s`)), 10_000).unref();
    });
    const socket: net.Socket =
      kind === 'tls'
        ? tls.connect({ ...TLS_BASE, host: '127.0.0.1', port, pskCallback: () => ({ psk: PSK, identity: PSK_IDENTITY }), ciphers: 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256', checkServerIdentity: () => undefined })
        : net.connect(port, '127.0.0.1');
    socket.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      socket.once(kind === 'tls' ? 'secureConnect' : 'connect', () => resolve());
      socket.once('error', reject);
    });
    const samples: number[] = [];
    const msg = Buffer.alloc(MESSAGE_BYTES, 0x61);
    await new Promise<void>((resolve, reject) => {
      let got = 0;
      let sent = 0;
      let t0 = 0n;
      const send = (): void => {
        got = 0;
        sent++;
        t0 = process.hrtime.bigint();
        socket.write(msg);
      };
      socket.on('data', (d: Buffer) => {
        got += d.length;
        if (got < MESSAGE_BYTES) return; // the echo may come in pieces
        if (sent > warmup) samples.push(Number(process.hrtime.bigint() - t0) / 1000);
        if (sent >= warmup + count) resolve();
        else send();
      });
      socket.once('error', reject);
      send();
    });
    socket.destroy();
    return median(samples);
  } finally {
    child.stdin.end();
    child.kill();
  }
}

const THREAD_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const flag = new Int32Array(workerData);
let seen = 0;
for (;;) {
  Atomics.wait(flag, 0, seen);
  seen = Atomics.load(flag, 0);
  if (seen < 0) break;
  parentPort.postMessage(seen);
}
`;

/** Round trips between this thread and a worker: Atomics.notify to wake it, a message back. */
async function threadRtt(warmup: number, count: number): Promise<number> {
  const sab = new SharedArrayBuffer(4);
  const flag = new Int32Array(sab);
  const worker = new Worker(THREAD_WORKER, { eval: true, workerData: sab });
  try {
    const samples: number[] = [];
    await new Promise<void>((resolve, reject) => {
      let n = 0;
      let t0 = 0n;
      const send = (): void => {
        n++;
        t0 = process.hrtime.bigint();
        Atomics.store(flag, 0, n);
        Atomics.notify(flag, 0);
      };
      worker.on('message', () => {
        if (n > warmup) samples.push(Number(process.hrtime.bigint() - t0) / 1000);
        if (n >= warmup + count) resolve();
        else setImmediate(send); // as the I/O thread does: the notify at the end of a turn
      });
      worker.once('error', reject);
      send();
    });
    return median(samples);
  } finally {
    Atomics.store(flag, 0, -1);
    Atomics.notify(flag, 0);
    await worker.terminate();
  }
}

/** The three round trips, `count` of each after a warm-up of count / 10. */
export async function measureFloor(count = 3000): Promise<Floor> {
  const warmup = Math.max(50, Math.floor(count / 10));
  const tcp = await processRtt('tcp', warmup, count);
  const tlsRtt = await processRtt('tls', warmup, count);
  const thread = await threadRtt(warmup, count);
  return { tcp_rtt_us: round(tcp, 1), tls_rtt_us: round(tlsRtt, 1), thread_rtt_us: round(thread, 1) };
}

if (process.argv[1] === SELF) {
  const i = process.argv.indexOf('--echo');
  if (i >= 0) {
    const kind = process.argv[i + 1];
    if (kind !== 'tcp' && kind !== 'tls') {
      process.stderr.write('usage: floor.js [--echo tcp|tls]\n');
      process.exit(2);
    }
    echoServer(kind);
  } else {
    console.log(JSON.stringify(await measureFloor()));
  }
}
