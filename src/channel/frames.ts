/**
 * Logging-channel frames (docs/PROTOCOL.md). Bodies are binary, encoded with the log codec's varints.
 * Decoding is strict: a malformed body is an FtvmError with FTVM_ERR_BAD_FRAME, never a crash.
 */
import { ByteReader, ByteWriter } from '../log/codec.js';
import { FtvmError } from '../util/errors.js';
import { readLenString, writeLenString } from './framing.js';

export * from '../replication/messages.js';
import { ControlKind, FRAME_TYPE_NAMES, FrameType, SnapshotPart, type Frame, type Role } from '../replication/messages.js';

const ROLE_CODES: Record<Role, number> = { primary: 1, backup: 2, standby: 3 };
const ROLES: Record<number, Role> = { 1: 'primary', 2: 'backup', 3: 'standby' };

function bad(msg: string): never {
  throw new FtvmError('FTVM_ERR_BAD_FRAME', msg);
}

const str = writeLenString;
const readStr = (r: ByteReader, max = 4096): string => readLenString(r, max);

export function encodeFrameBody(f: Frame, w = new ByteWriter(256)): Uint8Array {
  const { head, tail } = encodeFrameParts(f, w);
  if (tail === undefined) return head.slice();
  const out = new Uint8Array(head.length + tail.length);
  out.set(head);
  out.set(tail, head.length);
  return out;
}

/**
 * A frame's body in two parts, without copying its payload: `head` (a view into `w`, valid until `w` is
 * used again) and `tail`, the LOG batch or SNAPSHOT data as given (undefined for other frames). The body
 * is head followed by tail (what encodeFrameBody returns in one piece).
 */
export function encodeFrameParts(f: Frame, w: ByteWriter): { head: Uint8Array; tail: Uint8Array | undefined } {
  w.reset();
  let tail: Uint8Array | undefined;
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
      str(w, f.liveness);
      // Replay is the default and is never written: a replay node's HELLO is byte-for-byte the old one.
      if (f.mode !== undefined && f.mode !== 'replay') str(w, f.mode);
      break;
    case FrameType.LOG:
      w.varint(f.epoch);
      w.varint(f.firstSeq);
      w.varint(f.count);
      w.varint(f.instructionNumber);
      tail = f.batch;
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
      tail = f.data;
      break;
    case FrameType.CHECKPOINT:
      w.varint(f.epoch);
      w.varint(f.checkpoint);
      w.varint(f.part);
      w.varint(f.parts);
      tail = f.data;
      break;
    case FrameType.CHECKPOINT_ACK:
      w.varint(f.epoch);
      w.varint(f.checkpoint);
      break;
  }
  return { head: w.bytesView(), tail };
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
        // A peer of an older version ends here; its version is refused at the handshake.
        const liveness = r.remaining > 0 ? readStr(r, 128) : '';
        // A replay node ends here; any other mode follows (refused at the handshake if it differs).
        const mode = r.remaining > 0 ? readStr(r, 32) : undefined;
        if (mode === '') bad('HELLO with an empty mode');
        f = { type, version, role, vmName, moduleHash, epoch, arch, nonce, nextSeq, liveness, ...(mode !== undefined && mode !== 'replay' ? { mode } : {}) };
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
      case FrameType.CHECKPOINT: {
        const epoch = r.varint();
        const checkpoint = r.varint();
        if (checkpoint < 1) bad('CHECKPOINT numbered 0');
        const part = r.varint();
        const parts = r.varint();
        if (parts < 1 || part >= parts) bad(`CHECKPOINT piece ${part} of ${parts}`);
        f = { type, epoch, checkpoint, part, parts, data: r.bytes(r.remaining) };
        break;
      }
      case FrameType.CHECKPOINT_ACK:
        f = { type, epoch: r.varint(), checkpoint: r.varint() };
        break;
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
      return `HELLO v${f.version} ${f.role} vm=${f.vmName} epoch=${f.epoch} nextSeq=${f.nextSeq}${f.mode !== undefined ? ` mode=${f.mode}` : ''}`;
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
    case FrameType.CHECKPOINT:
      return `CHECKPOINT epoch=${f.epoch} #${f.checkpoint} piece ${f.part + 1}/${f.parts} ${f.data.length}B`;
    case FrameType.CHECKPOINT_ACK:
      return `CHECKPOINT_ACK epoch=${f.epoch} #${f.checkpoint}`;
  }
}
