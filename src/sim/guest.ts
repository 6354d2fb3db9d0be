/**
 * The simulator's guest: a deterministic model of a kv server running on the deterministic machine,
 * fast enough to run thousands of seeds. It keeps the properties of the real machine that the
 * replication protocol depends on:
 *
 * - an instruction counter that advances only while the guest computes (an idle guest stands still);
 * - client requests enter as ASYNC entries (IN) at whatever instruction the primary had reached when it
 *   delivered them (mid-computation too), so a replica must stop exactly there and never run past a
 *   delivery it does not hold;
 * - replies are SYNC entries (OUT) at deterministic instruction numbers (each request costs `work`
 *   instructions, queued FIFO), carrying the output whose release the output rule governs;
 * - replay honours grants: with no async entry ahead, the replica may run to the highest instruction
 *   number granted (heartbeats) or implied by the entries it holds, never further (machine.ts
 *   `replayLimit`); and it checks every entry it meets (type, instruction number, reply value, state
 *   hash after the entry), the way the real replica checks the log (a mismatch is a divergence);
 * - go-live takes over only where the log ends (vcpu-worker.ts `takeOver`): every held entry consumed,
 *   nothing more runnable, mid-operation or idle.
 *
 * Entries travel as bytes (JSON) in LOG frames, encoded, MAC'd and decoded by the real channel code.
 */
import { mix } from './prng.js';

export const KEYS = 4;

export type OpKind = 'incr' | 'get' | 'set' | 'compute';
export interface Op {
  kind: OpKind;
  key: number;
  val: number;
  /** Instructions the guest spends on this request before replying. */
  work: number;
}

interface EntryBase {
  /** Globally unique id of this entry (who logged it, which one): simulation metadata. */
  id: number;
  seq: number;
  n: number;
  conn: number;
  req: number;
  /** The producer's state hash right after this entry. */
  hashAfter: number;
}
export interface InEntry extends EntryBase {
  kind: 'in';
  op: Op;
}
export interface OutEntry extends EntryBase {
  kind: 'out';
  value: number;
}
export type ModelEntry = InEntry | OutEntry;

interface Pending {
  conn: number;
  req: number;
  op: Op;
}

/** The guest's whole state: what a snapshot copies. */
export class GuestState {
  /** Instruction number. */
  n = 0;
  /** Entries produced or consumed so far (the next entry's seq). */
  seq = 0;
  kv: number[] = new Array<number>(KEYS).fill(0);
  queue: Pending[] = [];
  qHead = 0;
  cur: (Pending & { endN: number }) | null = null;
  hash = 0x811c9dc5;
  /** History: the id of the entry at each seq (simulation metadata, for the lost-output checker). */
  ids: number[] = [];

  clone(): GuestState {
    const g = new GuestState();
    g.n = this.n;
    g.seq = this.seq;
    g.kv = this.kv.slice();
    g.queue = this.queue.slice(this.qHead);
    g.qHead = 0;
    g.cur = this.cur ? { ...this.cur } : null;
    g.hash = this.hash;
    g.ids = this.ids.slice();
    return g;
  }

  /** Hash of the whole state (instruction number, log position, kv, queue, current operation). */
  stateHash(): number {
    let h = mix(this.hash, this.n);
    h = mix(h, this.seq);
    for (const v of this.kv) h = mix(h, v);
    h = mix(h, this.queue.length - this.qHead);
    h = mix(h, this.cur ? this.cur.endN : -1);
    return h;
  }

  lastId(): number {
    return this.ids[this.seq - 1] ?? -1;
  }

  /** An input delivered at the current instruction. */
  deliver(conn: number, req: number, op: Op, id: number): void {
    this.queue.push({ conn, req, op });
    let h = mix(this.hash, 1);
    h = mix(h, this.n);
    h = mix(h, conn);
    h = mix(h, req);
    h = mix(h, op.key * 7 + op.kind.length);
    h = mix(h, op.val);
    this.hash = mix(h, op.work);
    this.ids[this.seq] = id;
    this.seq++;
    if (this.cur === null) this.startNext();
  }

  private startNext(): void {
    if (this.qHead >= this.queue.length) {
      this.cur = null;
      if (this.qHead > 0) {
        this.queue.length = 0;
        this.qHead = 0;
      }
      return;
    }
    const p = this.queue[this.qHead++]!;
    this.cur = { ...p, endN: this.n + p.op.work };
  }

  /** The reply the current operation produces when it completes (the guest's own computation). */
  replyValue(): number {
    const c = this.cur!;
    switch (c.op.kind) {
      case 'incr':
        return this.kv[c.op.key]! + 1;
      case 'get':
        return this.kv[c.op.key]!;
      case 'set':
        return c.op.val;
      case 'compute':
        return mix(c.op.work, c.op.val);
    }
  }

  /** Completes the current operation at its end instruction: applies it, logs the reply. */
  complete(value: number, id: number): Pending {
    const c = this.cur!;
    if (c.op.kind === 'incr' || c.op.kind === 'set') this.kv[c.op.key] = value;
    let h = mix(this.hash, 2);
    h = mix(h, this.n);
    h = mix(h, c.req);
    this.hash = mix(h, value);
    this.ids[this.seq] = id;
    this.seq++;
    this.startNext();
    return c;
  }
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** A batch of entries as bytes (what a LOG frame carries over the simulated wire). */
export function encodeBatch(entries: ModelEntry[]): Uint8Array {
  return enc.encode(JSON.stringify(entries));
}

export function decodeBatch(b: Uint8Array): ModelEntry[] {
  return JSON.parse(dec.decode(b)) as ModelEntry[];
}

/** A client's reply, as the output's bytes carry it. */
export interface Reply {
  req: number;
  value: number;
  entryId: number;
}

export function encodeJson(v: unknown): Uint8Array {
  return enc.encode(JSON.stringify(v));
}

export function decodeJson<T>(b: Uint8Array): T {
  return JSON.parse(dec.decode(b)) as T;
}

/** The guest's state as plain data (what a snapshot's memory carries). */
export function stateToJson(g: GuestState): unknown {
  return { n: g.n, seq: g.seq, kv: g.kv, queue: g.queue.slice(g.qHead), cur: g.cur, hash: g.hash, ids: g.ids };
}

export function stateFromJson(v: unknown): GuestState {
  const o = v as { n: number; seq: number; kv: number[]; queue: GuestState['queue']; cur: GuestState['cur']; hash: number; ids: number[] };
  const g = new GuestState();
  g.n = o.n;
  g.seq = o.seq;
  g.kv = o.kv;
  g.queue = o.queue;
  g.qHead = 0;
  g.cur = o.cur;
  g.hash = o.hash;
  g.ids = o.ids;
  return g;
}
