/**
 * Jepsen-style clients: each does random SET/GET on a small key set with unique values, on one RESP
 * connection at a time, and records every call with its invocation and completion times.
 *
 * Outcomes: a reply → `ok` (a server error reply is recorded as it came: the checker then rejects it);
 * the call was written and the connection failed or timed out → `indeterminate` (its completion time is
 * +infinity); the call was certainly never written → `failed`. After any failure the client drops the
 * connection and connects to whichever replica serves; it never retries the same operation.
 */
import { performance } from 'node:perf_hooks';
import { isIndeterminate, RespClient, RespError, type RespValue } from '../client/resp.js';
import type { KvInput, KvOperation, KvOutput } from '../check/kv-model.js';
import type { Prng } from '../testing/prng.js';

/** The history of a run: operations in invocation order; times in ms since `t0`. */
export class History {
  readonly ops: KvOperation[] = [];
  readonly t0 = performance.now();

  now(): number {
    return performance.now() - this.t0;
  }

  /** Records an invocation; complete it with `ok`, `indeterminate` or `failed`. */
  invoke(client: number, input: KvInput): KvOperation {
    const op: KvOperation = { client, input, call: this.now(), status: 'indeterminate' };
    this.ops.push(op);
    return op;
  }

  ok(op: KvOperation, output: KvOutput): void {
    op.return = Math.max(op.call, this.now());
    op.output = output;
    op.status = 'ok';
  }

  indeterminate(op: KvOperation): void {
    op.status = 'indeterminate';
  }

  failed(op: KvOperation): void {
    op.status = 'failed';
  }
}

/** The reply of a GET or SET as the history records it. */
export function toOutput(v: RespValue): KvOutput {
  if (v === null) return null;
  if (Buffer.isBuffer(v)) return v.toString('utf8');
  if (typeof v === 'string' || typeof v === 'number' || typeof v === 'bigint') return v;
  if (v instanceof RespError) return { error: v.message };
  return { error: `unexpected reply ${JSON.stringify(v)}` };
}

export interface KvCallOptions {
  connectTimeoutMs: number;
  callTimeoutMs: number;
}

/**
 * How the register operations of the checker (kv-model.ts) are spoken to one guest. Every guest is
 * reached over RESP; what differs is the command and the shape of its reply.
 */
export interface KvProtocol {
  readonly name: string;
  /** Idempotent commands run (and retried until acknowledged) once before the clients start. */
  readonly setup: readonly (readonly string[])[];
  command(input: KvInput): string[];
  output(reply: RespValue): KvOutput;
}

/** The kv guest and the C and Rust servers: Redis's own SET/GET/DEL/INCR. */
export const RESP_KV: KvProtocol = {
  name: 'resp',
  setup: [],
  command: (input) => (input.f === 'set' ? ['SET', input.key, input.value] : input.f === 'get' ? ['GET', input.key] : [input.f.toUpperCase(), input.key]),
  output: toOutput,
};

const sqlText = (v: string): string => `'${v.replace(/'/g, "''")}'`;

/**
 * The SQLite guest through SQL (not its SET/GET shortcut): a write is a transaction (BEGIN; upsert;
 * COMMIT), a read a SELECT; replies are arrays of rows of bulk strings.
 */
export const SQL_KV: KvProtocol = {
  name: 'sql',
  setup: [['SQL', 'CREATE TABLE IF NOT EXISTS jepsen(k TEXT PRIMARY KEY, v TEXT NOT NULL)']],
  command(input) {
    const k = sqlText(input.key);
    switch (input.f) {
      case 'set':
        return ['SQL', `BEGIN; INSERT INTO jepsen(k, v) VALUES(${k}, ${sqlText(input.value)}) ON CONFLICT(k) DO UPDATE SET v = excluded.v; COMMIT`];
      case 'get':
        return ['SQL', `SELECT v FROM jepsen WHERE k = ${k}`];
      default:
        throw new Error(`assertion: the SQL protocol has no ${input.f}`);
    }
  },
  output(reply) {
    if (reply instanceof RespError) return { error: reply.message };
    if (!Array.isArray(reply)) return { error: `unexpected reply ${JSON.stringify(reply)}` };
    if (reply.length === 0) return null; // no row (a GET of an absent key), or a write's empty result: see below
    const row = reply[0];
    if (reply.length !== 1 || !Array.isArray(row) || row.length !== 1 || !Buffer.isBuffer(row[0])) return { error: `unexpected rows ${JSON.stringify(reply)}` };
    return row[0].toString('utf8');
  },
};

/** The protocol of a guest by its Jepsen name. */
export function protocolFor(guest: string): KvProtocol {
  return guest === 'sqlite' ? SQL_KV : RESP_KV;
}

/** One operation on `client`; recorded in `history`. Returns false when the connection must be dropped. */
export async function recordedCall(history: History, clientId: number, conn: RespClient, input: KvInput, protocol: KvProtocol = RESP_KV): Promise<boolean> {
  const args = protocol.command(input);
  const op = history.invoke(clientId, input);
  try {
    const reply = await conn.call(...args);
    // A write's reply carries no value: an acknowledged SQL transaction (no rows, no error) is SET's OK.
    const out = protocol.output(reply);
    history.ok(op, input.f === 'set' && out === null ? 'OK' : out);
    return true;
  } catch (err) {
    if (isIndeterminate(err)) history.indeterminate(op);
    else history.failed(op);
    return false;
  }
}

/** Connects to the first of `ports` that accepts (in order), or undefined. */
export async function connectAny(ports: readonly number[], o: KvCallOptions): Promise<RespClient | undefined> {
  for (const port of ports) {
    try {
      return await RespClient.connect({ host: '127.0.0.1', port, connectTimeoutMs: o.connectTimeoutMs, callTimeoutMs: o.callTimeoutMs });
    } catch {
      // not serving there: the next
    }
  }
  return undefined;
}

export interface WorkloadOptions extends KvCallOptions {
  clients: number;
  keys: number;
  /** Fraction of GETs (default 0.5); the rest are SETs. */
  reads?: number;
  /** Pause between a client's operations, uniform in [0, thinkMs] (default 4). */
  thinkMs?: number;
  /** Stop after this many operations in all (a bound; default 1,000,000). */
  maxOps?: number;
  /** How operations are spoken to the guest (default: RESP SET/GET). */
  protocol?: KvProtocol;
}

export interface Workload {
  /** Stops the clients after their current call; resolves when they are all done. */
  stop(): Promise<void>;
  readonly stats: { connects: number; connectFailures: number };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function keyName(k: number): string {
  return `k${k}`;
}

/** Starts the clients; `ports()` lists the service ports to try, the likeliest first. */
export function startWorkload(history: History, ports: () => number[], rng: Prng, o: WorkloadOptions): Workload {
  let stopping = false;
  let total = 0;
  let unique = 0;
  const stats = { connects: 0, connectFailures: 0 };
  const maxOps = o.maxOps ?? 1_000_000;
  const reads = o.reads ?? 0.5;
  const think = o.thinkMs ?? 4;
  const run = async (id: number, r: Prng): Promise<void> => {
    let conn: RespClient | undefined;
    try {
      while (!stopping && total < maxOps) {
        if (!conn) {
          conn = await connectAny(ports(), o);
          if (!conn) {
            stats.connectFailures++;
            await sleep(20 + r.int(30));
            continue;
          }
          stats.connects++;
        }
        const key = keyName(r.int(o.keys));
        const input: KvInput = r.chance(reads) ? { f: 'get', key } : { f: 'set', key, value: `c${id}-${unique++}` };
        total++;
        if (!(await recordedCall(history, id, conn, input, o.protocol))) {
          conn.close();
          conn = undefined;
        }
        if (think > 0) await sleep(r.float() * think);
      }
    } finally {
      conn?.close();
    }
  };
  const all = Array.from({ length: o.clients }, (_, id) => run(id, rng.fork()));
  return {
    stats,
    async stop() {
      stopping = true;
      await Promise.all(all);
    },
  };
}
