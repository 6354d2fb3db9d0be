/**
 * Errors a caller can expect carry a stable `code` (undici's UND_ERR_* style). Programmer errors and
 * broken invariants are not FtvmErrors: they go through `assert` and crash.
 */
export type FtvmErrorCode =
  | 'FTVM_ERR_NOT_WASM'
  | 'FTVM_ERR_INVALID_MODULE'
  | 'FTVM_ERR_ABI_IMPORT'
  | 'FTVM_ERR_ABI_EXPORT'
  | 'FTVM_ERR_UNSUPPORTED_FEATURE'
  | 'FTVM_ERR_GUEST_TRAP'
  | 'FTVM_ERR_GUEST_EXIT'
  | 'FTVM_ERR_DETERMINISM_VIOLATION'
  | 'FTVM_ERR_CORRUPT_RECORDING'
  | 'FTVM_ERR_RECORDING_VERSION'
  | 'FTVM_ERR_MODULE_MISMATCH'
  | 'FTVM_ERR_REPLAY_STARVED'
  | 'FTVM_ERR_RESOURCE_EXHAUSTED'
  | 'FTVM_ERR_BAD_ARGUMENT'
  | 'FTVM_ERR_SNAPSHOT'
  | 'FTVM_ERR_DISK_IO'
  | 'FTVM_ERR_BAD_FRAME'
  | 'FTVM_ERR_AUTH'
  | 'FTVM_ERR_STALE_EPOCH'
  | 'FTVM_ERR_FRAME_TOO_LARGE'
  | 'FTVM_ERR_PEER_REFUSED'
  /** The channel's peer runs another replication mode (`--mode replay` vs `--mode checkpoint`): refused at the handshake. */
  | 'FTVM_ERR_MODE_MISMATCH'
  | 'FTVM_ERR_CHANNEL_CLOSED'
  | 'FTVM_ERR_ARBITER_UNAVAILABLE'
  | 'FTVM_ERR_ARBITER_AUTH'
  | 'FTVM_ERR_ARBITER_CORRUPT'
  | 'FTVM_ERR_ARBITER_BAD_REQUEST'
  | 'FTVM_ERR_TIMEOUT'
  | 'FTVM_ERR_CONTROL_UNREACHABLE'
  | 'FTVM_ERR_SECRET_PERMISSIONS'
  | 'FTVM_ERR_SECRET_TOO_SHORT'
  | 'FTVM_ERR_SECRET_UNREADABLE'
  | 'FTVM_ERR_CONTROL_AUTH'
  | 'FTVM_ERR_CONTROL_FORBIDDEN'
  | 'FTVM_ERR_CONTROL_INSECURE'
  | 'FTVM_ERR_LIVENESS_BIND'
  | 'FTVM_ERR_ADDRESS_IN_USE'
  | 'FTVM_ERR_TLS_CONFIG'
  /** A proxy's offsets of a connection do not match the VM's state (docs/PROXY.md). */
  | 'FTVM_ERR_PROXY_OFFSET'
  /** A proxy named a connection the VM does not know, or broke the proxy protocol's rules. */
  | 'FTVM_ERR_PROXY_PROTOCOL'
  /** A proxied client stopped reading: its unread output passed the bound. */
  | 'FTVM_ERR_PROXY_OVERFLOW'
  /** `ftvm proxy --arbiter`: no node of the VM announces a proxy port at the arbiter. */
  | 'FTVM_ERR_PROXY_NO_REPLICA'
  /** Checkpoint mode: a checkpoint that is truncated, corrupt, of an older epoch or out of order (refused; the backup keeps its last complete one). */
  | 'FTVM_ERR_CHECKPOINT';

export class FtvmError extends Error {
  readonly code: FtvmErrorCode;
  constructor(code: FtvmErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'FtvmError';
  }
}

/** A guest trapped (wasm trap, abort, call depth, bad pointer). Deterministic: replay traps at the same count. */
export class GuestTrap extends FtvmError {
  readonly instructionNumber: number;
  constructor(message: string, instructionNumber: number, options?: { cause?: unknown }) {
    super('FTVM_ERR_GUEST_TRAP', `guest trapped at instruction ${instructionNumber}: ${message}`, options);
    this.name = 'GuestTrap';
    this.instructionNumber = instructionNumber;
  }
}

/**
 * Replay met something other than what the recording says. Carries both sides' instruction numbers
 * (the recorded entry's and the replica's own) so the first divergence can be located.
 */
export class DeterminismViolation extends FtvmError {
  readonly expectedInstructionNumber: number;
  readonly actualInstructionNumber: number;
  readonly entryIndex: number;
  constructor(detail: string, expected: number, actual: number, entryIndex: number) {
    super(
      'FTVM_ERR_DETERMINISM_VIOLATION',
      `determinism violation at log entry #${entryIndex}: ${detail} (recorded at instruction ${expected}, replica at ${actual})`,
    );
    this.name = 'DeterminismViolation';
    this.expectedInstructionNumber = expected;
    this.actualInstructionNumber = actual;
    this.entryIndex = entryIndex;
  }
}

export class AssertionFailure extends Error {
  constructor(message: string) {
    super(`assertion failed: ${message}`);
    this.name = 'AssertionFailure';
  }
}

/** Broken invariants crash: they are bugs in ftvm, never expected conditions. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionFailure(message);
}
