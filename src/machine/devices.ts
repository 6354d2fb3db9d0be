/**
 * Virtual devices of the machine. Their state is deterministic (a function of the log) and is part of
 * snapshots and the state hash. Real time appears only in timer deadlines on the recording side.
 */
import { FtvmError, assert } from '../util/errors.js';

export const RecordType = { OPEN: 1, DATA: 2, CLOSE: 3, TIMER: 4 } as const;
export const RING_HEADER_BYTES = 16;
export const RECORD_HEADER_BYTES = 12;
export const RING_MIN_CAPACITY = 256;
export const RING_MAX_CAPACITY = 16 * 1024 * 1024;
export const MAX_TIMERS = 1024;

export const align4 = (n: number): number => (n + 3) & ~3;

/**
 * The virtual NIC's receive ring in guest memory (layout in docs/GUEST_ABI.md). The VMM is the only
 * producer; the guest advances `tail`.
 */
export class RxRing {
  /** Told every range `write` changes (the store barrier's host marking, dirty-pages.ts). */
  marker: ((addr: number, len: number) => void) | undefined;

  constructor(
    readonly ptr: number,
    readonly capacity: number,
  ) {}

  static validate(ptr: number, capacity: number, memoryBytes: number): string | undefined {
    if (capacity < RING_MIN_CAPACITY || capacity > RING_MAX_CAPACITY || (capacity & (capacity - 1)) !== 0) {
      return `ring capacity ${capacity} must be a power of two between ${RING_MIN_CAPACITY} and ${RING_MAX_CAPACITY}`;
    }
    if (ptr < 0 || ptr % 4 !== 0) return `ring pointer ${ptr} must be 4-byte aligned`;
    if (ptr + RING_HEADER_BYTES + capacity > memoryBytes) return `ring [${ptr}, +${RING_HEADER_BYTES + capacity}) is outside guest memory`;
    return undefined;
  }

  /** Bytes free for new records, or -1 when the guest corrupted head/tail. */
  free(mem: DataView): number {
    const head = mem.getUint32(this.ptr, true);
    const tail = mem.getUint32(this.ptr + 4, true);
    const used = (head - tail) >>> 0;
    if (used > this.capacity) return -1;
    return this.capacity - used;
  }

  /**
   * Writes one record if it fits; returns false (and writes nothing) if it does not. The record (header,
   * payload, zero padding to 4 bytes) goes straight into guest memory, wrapping at the ring's end; the
   * marker is told the record's bytes (one range, two when it wraps) and then the head word.
   */
  write(mem: DataView, bytes: Uint8Array, type: number, id: number, payload?: Uint8Array): boolean {
    const len = payload === undefined ? 0 : payload.length;
    const padded = align4(len);
    const size = RECORD_HEADER_BYTES + padded;
    const free = this.free(mem);
    if (free < size) return false;
    const cap = this.capacity;
    const head = mem.getUint32(this.ptr, true);
    const base = this.ptr + RING_HEADER_BYTES;
    const at = head % cap;
    // Header: u16 type, u16 0, u32 id, u32 payload length (little-endian).
    if (at + RECORD_HEADER_BYTES <= cap) {
      const p = base + at;
      mem.setUint16(p, type, true);
      mem.setUint16(p + 2, 0, true);
      mem.setUint32(p + 4, id >>> 0, true);
      mem.setUint32(p + 8, len, true);
    } else {
      // The header wraps (the guest's head is not a multiple of 4, or the ring ends within it).
      const t = type & 0xffff;
      const i = id >>> 0;
      for (let k = 0; k < RECORD_HEADER_BYTES; k++) {
        const v = k < 2 ? t >>> (8 * k) : k < 4 ? 0 : k < 8 ? i >>> (8 * (k - 4)) : len >>> (8 * (k - 8));
        bytes[base + ((at + k) % cap)] = v & 0xff;
      }
    }
    // Payload: size <= free <= capacity, so it wraps at most once.
    let pos = (at + RECORD_HEADER_BYTES) % cap;
    if (payload !== undefined && len > 0) {
      const first = cap - pos;
      if (len <= first) {
        bytes.set(payload, base + pos);
      } else {
        bytes.set(payload.subarray(0, first), base + pos);
        bytes.set(payload.subarray(first), base);
      }
      pos = (pos + len) % cap;
    }
    const pad = padded - len;
    if (pad > 0) {
      const first = cap - pos;
      if (pad <= first) {
        bytes.fill(0, base + pos, base + pos + pad);
      } else {
        bytes.fill(0, base + pos, base + cap);
        bytes.fill(0, base, base + pad - first);
      }
    }
    mem.setUint32(this.ptr, (head + size) >>> 0, true);
    const marker = this.marker;
    if (marker !== undefined) {
      if (at + size <= cap) {
        marker(base + at, size);
      } else {
        marker(base + at, cap - at);
        marker(base, size - (cap - at));
      }
      marker(this.ptr, 4);
    }
    return true;
  }
}

export const ConnState = { OPEN: 1, PEER_CLOSED: 2 } as const;

/** WASI file descriptors beyond stdio: the pre-opened listening socket and accepted connections. */
export const FdKind = { LISTENER: 1, SOCKET: 2, DIR: 3, FILE: 4 } as const;
export const RIGHT_READ = 1;
export const RIGHT_WRITE = 2;
export const SHUT_RD = 1;
export const SHUT_WR = 2;
/** Highest file descriptor number the VMM hands out (EMFILE beyond). */
export const MAX_FD = 1023;

export interface FdState {
  kind: number;
  /** Virtual connection id (SOCKET). */
  conn: number;
  /** O_NONBLOCK (WASI fdflags NONBLOCK). */
  nonblock: boolean;
  /** SHUT_RD | SHUT_WR bits (SOCKET). */
  shut: number;
  /** FILE / DIR: the disk inode. */
  ino?: number;
  /** FILE: the file position. */
  offset?: number;
  /** FILE: O_APPEND. */
  append?: boolean;
  /** FILE / DIR: RIGHT_READ | RIGHT_WRITE. */
  rights?: number;
  /** DIR: the pre-opened directory's name (fd_prestat_*). */
  preopen?: string;
}

export interface TimerState {
  delayMs: number;
  /** Real-time deadline (monotonic ms), known only on the recording side; NaN on replay. */
  deadlineMs: number;
  /** Order of arming, to fire timers with equal deadlines deterministically. */
  armSeq: number;
}

/**
 * A proxied virtual connection (docs/PROXY.md): its owner outside the VM (the tag: proxy id and the
 * proxy's connection number) and its byte offsets — input delivered to the guest, output the guest sent —
 * a function of the log, so a replica that goes live (or a standby cloned from a snapshot) knows them.
 */
export interface ProxiedConn {
  /** The owner, hex. */
  tag: string;
  /** Bytes of input delivered into the guest (logged). */
  inBytes: number;
  /** The client's end of input was delivered. */
  inEof: boolean;
  /** Bytes the guest sent on the connection. */
  outBytes: number;
}

/** Serializable device state (snapshots). */
export interface DeviceState {
  ring: { ptr: number; capacity: number } | null;
  timers: Array<[number, TimerState]>;
  conns: Array<[number, number]>;
  armSeq: number;
  maxConn: number;
  /** WASI descriptors (absent in snapshots of guests without sockets). */
  fds?: Array<[number, FdState]>;
  /** The last realtime clock value the guest read (ns, decimal): file timestamps. */
  clockNs?: string;
  /** Proxied connections (absent when there are none). */
  proxied?: Array<[number, ProxiedConn]>;
  /**
   * Log format 2: the outputs since the last OUT_DIGEST (count, running CRC-32) and the instruction
   * number of that digest; absent when no output waits for a digest (not part of the state hash).
   */
  outDigest?: { count: number; crc: number; sinceN: number };
  /**
   * The log's coding state after the last entry before this point (log format 2: the next batch's first
   * entry is coded against it): that entry's instruction number and the last NIC connection.
   */
  logCoding?: { n: number; conn: number };
}

export class Devices {
  ring: RxRing | null = null;
  readonly timers = new Map<number, TimerState>();
  /** Virtual connections the guest can see: id → ConnState. Closed-by-guest ids are removed. */
  readonly conns = new Map<number, number>();
  armSeq = 0;
  /** Highest connection id ever opened: a new primary numbers its clients above it. */
  maxConn = 0;
  /** WASI descriptors above stdio (deterministic: the listener is set up from the module's imports). */
  readonly fds = new Map<number, FdState>();
  /** The last realtime clock value the guest read (a logged value, so deterministic): file timestamps. */
  clockNs = 0n;
  /** Open proxied connections: conn → owner and offsets (removed when the guest closes the connection). */
  readonly proxied = new Map<number, ProxiedConn>();
  /** Log format 2: outputs since the last OUT_DIGEST and their running CRC-32; where that digest was. */
  outCount = 0;
  outCrc = 0;
  outSinceN = 0;
  /** The instruction number of the last entry logged or consumed, and the last NIC entry's connection. */
  logN = 0;
  logConn = 0;

  /** The lowest free descriptor at or above `from`, or -1 when all up to MAX_FD are taken. */
  allocFd(from: number): number {
    for (let fd = from; fd <= MAX_FD; fd++) if (!this.fds.has(fd)) return fd;
    return -1;
  }

  openConn(id: number): void {
    this.conns.set(id, ConnState.OPEN);
    if (id > this.maxConn) this.maxConn = id;
  }

  armTimer(id: number, delayMs: number, deadlineMs: number): void {
    assert(Number.isInteger(id) && id >= 0 && id < MAX_TIMERS, 'timer id checked by caller');
    this.timers.set(id, { delayMs, deadlineMs, armSeq: this.armSeq++ });
  }

  /** Timers due at `nowMs`, ordered by deadline then arming order. */
  dueTimers(nowMs: number): number[] {
    const due: Array<[number, TimerState]> = [];
    for (const [id, t] of this.timers) if (t.deadlineMs <= nowMs) due.push([id, t]);
    due.sort((a, b) => a[1].deadlineMs - b[1].deadlineMs || a[1].armSeq - b[1].armSeq);
    return due.map(([id]) => id);
  }

  nextDeadlineMs(): number | undefined {
    let min: number | undefined;
    for (const t of this.timers.values()) if (min === undefined || t.deadlineMs < min) min = t.deadlineMs;
    return min;
  }

  save(): DeviceState {
    return {
      ring: this.ring ? { ptr: this.ring.ptr, capacity: this.ring.capacity } : null,
      timers: [...this.timers].map(([id, t]) => [id, { ...t }]),
      conns: [...this.conns],
      armSeq: this.armSeq,
      maxConn: this.maxConn,
      fds: [...this.fds].map(([fd, f]) => [fd, { ...f }]),
      clockNs: this.clockNs.toString(),
      ...(this.proxied.size > 0 ? { proxied: [...this.proxied].map(([c, p]): [number, ProxiedConn] => [c, { ...p }]) } : {}),
      ...(this.logN > 0 || this.logConn > 0 ? { logCoding: { n: this.logN, conn: this.logConn } } : {}),
      ...(this.outCount > 0 || this.outSinceN > 0 ? { outDigest: { count: this.outCount, crc: this.outCrc, sinceN: this.outSinceN } } : {}),
    };
  }

  load(s: DeviceState): void {
    this.ring = s.ring ? new RxRing(s.ring.ptr, s.ring.capacity) : null;
    this.timers.clear();
    for (const [id, t] of s.timers) this.timers.set(id, { ...t });
    this.conns.clear();
    for (const [id, st] of s.conns) this.conns.set(id, st);
    this.armSeq = s.armSeq;
    this.maxConn = s.maxConn;
    this.fds.clear();
    for (const [fd, f] of s.fds ?? []) this.fds.set(fd, { ...f });
    this.clockNs = BigInt(s.clockNs ?? '0');
    this.proxied.clear();
    for (const [c, p] of s.proxied ?? []) this.proxied.set(c, { ...p });
    this.outCount = s.outDigest?.count ?? 0;
    this.outCrc = s.outDigest?.crc ?? 0;
    this.outSinceN = s.outDigest?.sinceN ?? 0;
    this.logN = s.logCoding?.n ?? 0;
    this.logConn = s.logCoding?.conn ?? 0;
  }

  /** The deterministic part, for the state hash (deadlines are real time: excluded). */
  hashBytes(): Uint8Array {
    const parts: number[] = [];
    parts.push(this.ring ? 1 : 0, this.ring?.ptr ?? 0, this.ring?.capacity ?? 0, this.armSeq, this.maxConn);
    const timers = [...this.timers].sort((a, b) => a[0] - b[0]);
    parts.push(timers.length);
    for (const [id, t] of timers) parts.push(id, t.delayMs, t.armSeq);
    const conns = [...this.conns].sort((a, b) => a[0] - b[0]);
    parts.push(conns.length);
    for (const [id, st] of conns) parts.push(id, st);
    if (this.fds.size > 0) {
      const fds = [...this.fds].sort((a, b) => a[0] - b[0]);
      parts.push(fds.length);
      for (const [fd, f] of fds) parts.push(fd, f.kind, f.conn, f.nonblock ? 1 : 0, f.shut, f.ino ?? 0, f.offset ?? 0, f.append ? 1 : 0, f.rights ?? 0);
      parts.push(Number(this.clockNs % 1_000_000_000_000n), Number(this.clockNs / 1_000_000_000_000n));
    }
    if (this.proxied.size > 0) {
      const ps = [...this.proxied].sort((a, b) => a[0] - b[0]);
      parts.push(ps.length);
      for (const [c, p] of ps) {
        parts.push(c, p.inBytes, p.inEof ? 1 : 0, p.outBytes, p.tag.length);
        for (let i = 0; i < p.tag.length; i++) parts.push(p.tag.charCodeAt(i));
      }
    }
    const out = new Float64Array(parts);
    return new Uint8Array(out.buffer);
  }
}

export function badGuestPointer(what: string, ptr: number, len: number, memBytes: number): FtvmError {
  return new FtvmError('FTVM_ERR_GUEST_TRAP', `${what}: [${ptr}, +${len}) is outside guest memory (${memBytes} bytes)`);
}
