/**
 * Logging-channel frames (docs/PROTOCOL.md). Bodies are binary, encoded with the log codec's varints.
 * Decoding is strict: a malformed body is an FtvmError with FTVM_ERR_BAD_FRAME, never a crash.
 */
import { ByteReader, ByteWriter } from '../log/codec.js';
import { FtvmError } from '../util/errors.js';

/** 2: re-replication (SNAPSHOT frames, the standby role, CONTROL ARMED). */
export const PROTOCOL_VERSION = 2;

export const FrameType = {
  HELLO: 1,
  LOG: 2,
  ACK: 3,
  HEARTBEAT: 4,
  STATE_HASH: 5,
  CONTROL: 6,
  REFUSE: 7,
  SNAPSHOT: 8,
} as const;
export type FrameTypeCode = (typeof FrameType)[keyof typeof FrameType];
export const FRAME_TYPE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(FrameType).map(([k, v]) => [v, k]));

/** A standby is a backup-to-be in a pool: it accepts any epoch from the primary that recruited it. */
export type Role = 'primary' | 'backup' | 'standby';
const ROLE_CODES: Record<Role, number> = { primary: 1, backup: 2, standby: 3 };
const ROLES: Record<number, Role> = { 1: 'primary', 2: 'backup', 3: 'standby' };

export interface HelloFrame {
  type: typeof FrameType.HELLO;
  version: number;
  role: Role;
  vmName: string;
  moduleHash: Uint8Array;
  epoch: number;
  arch: string;
  nonce: Uint8Array;
  /** Primary: the sequence number of the first entry it will send. Backup: the next entry it expects. */
  nextSeq: number;
}

/** A batch of log entries [firstSeq, firstSeq + count); the primary had reached `instructionNumber`. */
export interface LogFrame {
  type: typeof FrameType.LOG;
  epoch: number;
  firstSeq: number;
  count: number;
  instructionNumber: number;
  batch: Uint8Array;
}

/** Cumulative: the backup holds every entry with seq < `ackSeq`. Also reports replay progress. */
export interface AckFrame {
  type: typeof FrameType.ACK;
  epoch: number;
  ackSeq: number;
  replayedInstructionNumber: number;
}

/** Primary → backup: it has reached `instructionNumber` with `nextSeq` entries logged before it. */
export interface HeartbeatFrame {
  type: typeof FrameType.HEARTBEAT;
  epoch: number;
  instructionNumber: number;
  nextSeq: number;
}

/** Backup → primary: the replica verified (or failed) the state hash logged at instruction `n`. */
export interface StateHashFrame {
  type: typeof FrameType.STATE_HASH;
  epoch: number;
  n: number;
  hash: Uint8Array;
  ok: boolean;
}

/**
 * STOP: an intentional stop (the backup must not go live). DIVERGED: the backup's replica diverged.
 * SWITCHOVER: a planned handover. ARMED: a joined backup caught up; the pair is protected at the frame's
 * (new) epoch and the backup may fail over from now on.
 */
export const ControlKind = { STOP: 1, DIVERGED: 2, SWITCHOVER: 3, ARMED: 4 } as const;
export interface ControlFrame {
  type: typeof FrameType.CONTROL;
  epoch: number;
  kind: number;
  reason: string;
}

/** Sent before closing a connection that is refused (wrong module, older epoch…). */
export interface RefuseFrame {
  type: typeof FrameType.REFUSE;
  code: string;
  reason: string;
}

/**
 * Primary → joining standby: the running VM's snapshot (src/machine/snapshot-codec.ts), streamed while
 * the primary keeps running. Part BEGIN carries the VM config (JSON) and the snapshot's header chunk;
 * then one CHUNK per memory chunk. The log from the snapshot's entry follows as ordinary LOG frames.
 */
export const SnapshotPart = { BEGIN: 0, CHUNK: 1 } as const;
export interface SnapshotFrame {
  type: typeof FrameType.SNAPSHOT;
  epoch: number;
  part: number;
  /** BEGIN: the VM config as JSON; CHUNK: empty. */
  config: string;
  data: Uint8Array;
}

export type Frame = HelloFrame | LogFrame | AckFrame | HeartbeatFrame | StateHashFrame | ControlFrame | RefuseFrame | SnapshotFrame;

function bad(msg: string): never {
  throw new FtvmError('FTVM_ERR_BAD_FRAME', msg);
}

function str(w: ByteWriter, s: string): void {
  const b = Buffer.from(s, 'utf8');
  w.varint(b.length);
  w.bytes(b);
}

function readStr(r: ByteReader, max = 4096): string {
  const n = r.varint();
  if (n > max) bad(`string of ${n} bytes exceeds ${max}`);
  return Buffer.from(r.bytes(n)).toString('utf8');
}

export function encodeFrameBody(f: Frame, w = new ByteWriter(256)): Uint8Array {
  w.reset();
  w.u8(f.type);
  switch (f.type) {
    case FrameType.HELLO:
      w.varint(f.version);
      w.u8(ROLE_CODES[f.role]);
      str(w, f.vmName);
      w.bytes(f.moduleHash);
      w.varint(f.epoch);
      str(w, f.arch);
      w.bytes(f.nonce);
      w.varint(f.nextSeq);
      break;
    case FrameType.LOG:
      w.varint(f.epoch);
      w.varint(f.firstSeq);
      w.varint(f.count);
      w.varint(f.instructionNumber);
      w.bytes(f.batch);
      break;
    case FrameType.ACK:
      w.varint(f.epoch);
      w.varint(f.ackSeq);
      w.varint(f.replayedInstructionNumber);
      break;
    case FrameType.HEARTBEAT:
      w.varint(f.epoch);
      w.varint(f.instructionNumber);
      w.varint(f.nextSeq);
      break;
    case FrameType.STATE_HASH:
      w.varint(f.epoch);
      w.varint(f.n);
      w.bytes(f.hash);
      w.u8(f.ok ? 1 : 0);
      break;
    case FrameType.CONTROL:
      w.varint(f.epoch);
      w.u8(f.kind);
      str(w, f.reason);
      break;
    case FrameType.REFUSE:
      str(w, f.code);
      str(w, f.reason);
      break;
    case FrameType.SNAPSHOT:
      w.varint(f.epoch);
      w.u8(f.part);
      str(w, f.config);
      w.bytes(f.data);
      break;
  }
  return w.finish();
}

export function decodeFrameBody(buf: Uint8Array): Frame {
  if (buf.length < 1) bad('empty frame');
  const r = new ByteReader(buf);
  let f: Frame;
  try {
    const type = r.u8();
    switch (type) {
      case FrameType.HELLO: {
        const version = r.varint();
        const roleByte = r.u8();
        const role = ROLES[roleByte];
        if (role === undefined) bad(`HELLO with unknown role ${roleByte}`);
        const vmName = readStr(r, 256);
        const moduleHash = r.bytes(32);
        const epoch = r.varint();
        const arch = readStr(r, 64);
        const nonce = r.bytes(16);
        const nextSeq = r.varint();
        f = { type, version, role, vmName, moduleHash, epoch, arch, nonce, nextSeq };
        break;
      }
      case FrameType.LOG: {
        const epoch = r.varint();
        const firstSeq = r.varint();
        const count = r.varint();
        const instructionNumber = r.varint();
        f = { type, epoch, firstSeq, count, instructionNumber, batch: r.bytes(r.remaining) };
        break;
      }
      case FrameType.ACK:
        f = { type, epoch: r.varint(), ackSeq: r.varint(), replayedInstructionNumber: r.varint() };
        break;
      case FrameType.HEARTBEAT:
        f = { type, epoch: r.varint(), instructionNumber: r.varint(), nextSeq: r.varint() };
        break;
      case FrameType.STATE_HASH: {
        const epoch = r.varint();
        const n = r.varint();
        const hash = r.bytes(32);
        f = { type, epoch, n, hash, ok: r.u8() === 1 };
        break;
      }
      case FrameType.CONTROL:
        f = { type, epoch: r.varint(), kind: r.u8(), reason: readStr(r) };
        break;
      case FrameType.REFUSE:
        f = { type, code: readStr(r, 64), reason: readStr(r) };
        break;
      case FrameType.SNAPSHOT: {
        const epoch = r.varint();
        const part = r.u8();
        if (part !== SnapshotPart.BEGIN && part !== SnapshotPart.CHUNK) bad(`SNAPSHOT with unknown part ${part}`);
        const config = readStr(r, 65536);
        f = { type, epoch, part, config, data: r.bytes(r.remaining) };
        break;
      }
      default:
        bad(`unknown frame type ${type}`);
    }
  } catch (err) {
    if (err instanceof FtvmError && err.code === 'FTVM_ERR_BAD_FRAME') throw err;
    bad(`malformed frame body: ${(err as Error).message}`);
  }
  if (r.remaining !== 0) bad(`${r.remaining} trailing bytes in ${FRAME_TYPE_NAMES[f.type]} frame`);
  return f;
}

export function describeFrame(f: Frame): string {
  switch (f.type) {
    case FrameType.HELLO:
      return `HELLO v${f.version} ${f.role} vm=${f.vmName} epoch=${f.epoch} nextSeq=${f.nextSeq}`;
    case FrameType.LOG:
      return `LOG epoch=${f.epoch} seq=${f.firstSeq}+${f.count} n=${f.instructionNumber} ${f.batch.length}B`;
    case FrameType.ACK:
      return `ACK epoch=${f.epoch} ack=${f.ackSeq} replayed=${f.replayedInstructionNumber}`;
    case FrameType.HEARTBEAT:
      return `HEARTBEAT epoch=${f.epoch} n=${f.instructionNumber} nextSeq=${f.nextSeq}`;
    case FrameType.STATE_HASH:
      return `STATE_HASH epoch=${f.epoch} n=${f.n} ${f.ok ? 'ok' : 'MISMATCH'}`;
    case FrameType.CONTROL:
      return `CONTROL epoch=${f.epoch} kind=${f.kind} ${f.reason}`;
    case FrameType.REFUSE:
      return `REFUSE ${f.code} ${f.reason}`;
    case FrameType.SNAPSHOT:
      return `SNAPSHOT epoch=${f.epoch} ${f.part === SnapshotPart.BEGIN ? 'begin' : 'chunk'} ${f.data.length}B`;
  }
}
