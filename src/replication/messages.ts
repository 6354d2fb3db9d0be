/**
 * The messages of the replication protocol: frame types and bodies, the roles, and the guest output a
 * primary holds under the output rule. Both sides import them from here: the pure cores
 * (primary.ts, backup.ts) and the wire codec (channel/frames.ts, which encodes and decodes them). The
 * cores import nothing from the codec or the vCPU worker protocol.
 */
import type { GuestOutput } from '../machine/machine.js';

/** An output of the guest as the vCPU reports it (bytes for a connection or the console). */
export type WireOutput = GuestOutput;

/**
 * 2: re-replication (SNAPSHOT frames, the standby role, CONTROL ARMED). 3: HELLO carries the liveness
 * address (fast failover on evidence of a dead process). 4: LOG batches in log format 2 (output
 * digests instead of one entry per output, compact entry headers: src/log/codec.ts). Still 4: HELLO
 * may end with the sender's replication mode (absent = replay), so replay HELLOs are unchanged.
 */
export const PROTOCOL_VERSION = 4;

/** `ftvm run --mode`: the backup replays the primary's log, or applies its checkpoints (src/checkpoint). */
export type ReplicationMode = 'replay' | 'checkpoint';

export const FrameType = {
  HELLO: 1,
  LOG: 2,
  ACK: 3,
  HEARTBEAT: 4,
  STATE_HASH: 5,
  CONTROL: 6,
  REFUSE: 7,
  SNAPSHOT: 8,
  CHECKPOINT: 9,
  CHECKPOINT_ACK: 10,
} as const;
export type FrameTypeCode = (typeof FrameType)[keyof typeof FrameType];
export const FRAME_TYPE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(FrameType).map(([k, v]) => [v, k]));

/** A standby is a backup-to-be in a pool: it accepts any epoch from the primary that recruited it. */
export type Role = 'primary' | 'backup' | 'standby';

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
  /**
   * `host:port` of the sender's liveness port ('' = none): a port that lives exactly as long as the
   * sender's process. A refused connection there is evidence that the process is gone
   * (src/channel/liveness.ts).
   */
  liveness: string;
  /**
   * The sender's replication mode, after liveness; absent means replay (a replay node never sends it, so
   * its HELLO is what it was before modes existed). A string, so that a mode this node does not know is
   * still refused by name rather than as a malformed HELLO. Both ends must run the same mode.
   */
  mode?: string;
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

/**
 * Checkpoint mode (src/checkpoint/): primary → backup, piece `part` of `parts` of checkpoint `checkpoint`
 * of `epoch`; the pieces' data, in order, is the encoded checkpoint (src/checkpoint/wire.ts: memory delta
 * since the previous checkpoint, globals, devices, under one CRC-32, repeating the epoch and number under
 * its checksum). A checkpoint larger than a frame (a base of a large memory) goes in several pieces.
 */
export interface CheckpointFrame {
  type: typeof FrameType.CHECKPOINT;
  epoch: number;
  checkpoint: number;
  /** 0-based; pieces of one checkpoint go in order on one connection. */
  part: number;
  /** At least 1. */
  parts: number;
  data: Uint8Array;
}

/** Checkpoint mode: backup → primary, cumulative: every checkpoint up to `checkpoint` is applied. */
export interface CheckpointAckFrame {
  type: typeof FrameType.CHECKPOINT_ACK;
  epoch: number;
  checkpoint: number;
}

export type Frame = HelloFrame | LogFrame | AckFrame | HeartbeatFrame | StateHashFrame | ControlFrame | RefuseFrame | SnapshotFrame | CheckpointFrame | CheckpointAckFrame;
