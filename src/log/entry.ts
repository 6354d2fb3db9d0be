/**
 * Log entries: every nondeterministic event of a guest's run, stamped with the instruction number `n`
 * at which it happened. The backup replays a run from these alone.
 *
 * Kinds of entry:
 * - sync: the result of a host call the guest made (clock, random bytes, memory.grow) and the outputs it
 *   produced (net send/close, console). Replay meets them as the guest makes the same calls.
 * - async: a delivery the VMM performed (NIC records into the receive ring, a timer firing), at a budget
 *   checkpoint (`idle: false`) or at an idle point before a step (`idle: true`).
 * - meta: STATE_HASH (taken at an idle point) and HALT (the guest exited or trapped).
 */
export const EntryType = {
  CLOCK: 1,
  RANDOM: 2,
  MEMGROW: 3,
  /** WASI sock_accept: the errno and the virtual connection accepted (0 if none). */
  SOCK_ACCEPT: 4,
  /** WASI sock_recv / fd_read on a socket: the errno and the bytes received (empty with errno 0 = end of input). */
  SOCK_RECV: 5,
  /** WASI poll_oneoff: which subscriptions fired, with their errno, nbytes and flags. */
  POLL: 6,
  NIC_OPEN: 10,
  NIC_DATA: 11,
  NIC_CLOSE: 12,
  TIMER: 13,
  // 14: reserved by the codec (log format 2) for a run of NIC_DATA entries on the wire.
  OUT_NET: 20,
  OUT_CLOSE: 21,
  OUT_CONSOLE: 22,
  /**
   * Log format 2: the outputs since the previous digest (their count and a running CRC-32 of each one's
   * kind, connection or fd, length and CRC-32), at the idle point or checkpoint where the batch that
   * carries them was cut. Outputs are not logged one by one in format 2 (docs/PROTOCOL.md).
   */
  OUT_DIGEST: 23,
  STATE_HASH: 30,
  HALT: 31,
} as const;
export type EntryTypeCode = (typeof EntryType)[keyof typeof EntryType];

export const ENTRY_TYPE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(EntryType).map(([k, v]) => [v, k]));

export type ClockEntry = { type: typeof EntryType.CLOCK; n: number; clock: number; valueNs: bigint };
export type RandomEntry = { type: typeof EntryType.RANDOM; n: number; bytes: Uint8Array };
export type MemGrowEntry = { type: typeof EntryType.MEMGROW; n: number; deltaPages: number; result: number };
/** `tag`: a proxied connection's owner (docs/PROXY.md), as on NIC_OPEN. */
export type SockAcceptEntry = { type: typeof EntryType.SOCK_ACCEPT; n: number; errno: number; conn: number; tag?: Uint8Array };
export type SockRecvEntry = { type: typeof EntryType.SOCK_RECV; n: number; errno: number; data: Uint8Array };
export interface PollEvent {
  /** Index of the subscription that fired. */
  index: number;
  errno: number;
  nbytes: number;
  /** WASI eventrwflags (1 = hangup). */
  flags: number;
}
export type PollEntry = { type: typeof EntryType.POLL; n: number; events: PollEvent[] };
/**
 * `tag`: the connection's owner outside the VM when it is a proxied connection (docs/PROXY.md: proxy id
 * and the proxy's connection number), so a replica that goes live knows whom the connection belongs to.
 */
export type NicOpenEntry = { type: typeof EntryType.NIC_OPEN; n: number; idle: boolean; conn: number; tag?: Uint8Array };
export type NicDataEntry = { type: typeof EntryType.NIC_DATA; n: number; idle: boolean; conn: number; data: Uint8Array };
export type NicCloseEntry = { type: typeof EntryType.NIC_CLOSE; n: number; idle: boolean; conn: number };
export type TimerEntry = { type: typeof EntryType.TIMER; n: number; idle: boolean; timer: number };
export type OutNetEntry = { type: typeof EntryType.OUT_NET; n: number; conn: number; len: number; hash: number };
export type OutCloseEntry = { type: typeof EntryType.OUT_CLOSE; n: number; conn: number };
export type OutConsoleEntry = { type: typeof EntryType.OUT_CONSOLE; n: number; fd: number; len: number; hash: number };
/** `idle`: cut at an idle point (else at a budget checkpoint), like a delivery's. */
export type OutDigestEntry = { type: typeof EntryType.OUT_DIGEST; n: number; idle: boolean; count: number; crc: number };
export type StateHashEntry = { type: typeof EntryType.STATE_HASH; n: number; hash: Uint8Array };
export type HaltEntry = { type: typeof EntryType.HALT; n: number; kind: HaltKind; code: number; message: string };

export type HaltKind = 'exit' | 'trap';

export type AsyncEntry = NicOpenEntry | NicDataEntry | NicCloseEntry | TimerEntry;
export type OutputEntry = OutNetEntry | OutCloseEntry | OutConsoleEntry;
export type LogEntry = ClockEntry | RandomEntry | MemGrowEntry | SockAcceptEntry | SockRecvEntry | PollEntry | AsyncEntry | OutputEntry | OutDigestEntry | StateHashEntry | HaltEntry;

export function isAsync(e: LogEntry): e is AsyncEntry {
  return e.type >= EntryType.NIC_OPEN && e.type <= EntryType.TIMER;
}

export function isOutput(e: LogEntry): e is OutputEntry {
  return e.type >= EntryType.OUT_NET && e.type <= EntryType.OUT_CONSOLE;
}

/** One line describing an entry, for `ftvm inspect` and error messages. */
export function describeEntry(e: LogEntry): string {
  const name = ENTRY_TYPE_NAMES[e.type] ?? `type${e.type}`;
  switch (e.type) {
    case EntryType.CLOCK:
      return `${name} clock=${e.clock} value=${e.valueNs}ns`;
    case EntryType.RANDOM:
      return `${name} ${e.bytes.length} bytes`;
    case EntryType.MEMGROW:
      return `${name} delta=${e.deltaPages} result=${e.result}`;
    case EntryType.SOCK_ACCEPT:
      return `${name} errno=${e.errno} conn=${e.conn}`;
    case EntryType.SOCK_RECV:
      return `${name} errno=${e.errno} ${e.data.length} bytes`;
    case EntryType.POLL:
      return `${name} ${e.events.map((v) => `#${v.index}${v.errno ? ` errno=${v.errno}` : ''} nbytes=${v.nbytes}${v.flags ? ' hangup' : ''}`).join(', ') || 'none'}`;
    case EntryType.NIC_OPEN:
      return `${name} conn=${e.conn}${e.tag !== undefined ? ` tag=${Buffer.from(e.tag).toString('hex')}` : ''}${e.idle ? ' @idle' : ' @checkpoint'}`;
    case EntryType.NIC_CLOSE:
      return `${name} conn=${e.conn}${e.idle ? ' @idle' : ' @checkpoint'}`;
    case EntryType.NIC_DATA:
      return `${name} conn=${e.conn} ${e.data.length} bytes${e.idle ? ' @idle' : ' @checkpoint'}`;
    case EntryType.TIMER:
      return `${name} timer=${e.timer}${e.idle ? ' @idle' : ' @checkpoint'}`;
    case EntryType.OUT_NET:
      return `${name} conn=${e.conn} ${e.len} bytes crc=${e.hash.toString(16).padStart(8, '0')}`;
    case EntryType.OUT_CLOSE:
      return `${name} conn=${e.conn}`;
    case EntryType.OUT_CONSOLE:
      return `${name} fd=${e.fd} ${e.len} bytes crc=${e.hash.toString(16).padStart(8, '0')}`;
    case EntryType.OUT_DIGEST:
      return `${name} ${e.count} output(s) crc=${e.crc.toString(16).padStart(8, '0')}${e.idle ? ' @idle' : ' @checkpoint'}`;
    case EntryType.STATE_HASH:
      return `${name} ${Buffer.from(e.hash).toString('hex')}`;
    case EntryType.HALT:
      return `${name} ${e.kind} code=${e.code}${e.message ? ` ${JSON.stringify(e.message)}` : ''}`;
  }
}
