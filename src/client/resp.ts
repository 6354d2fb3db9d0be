/**
 * A small RESP2 client for Node: the project's TypeScript client library, also used by the integration
 * tests, the Jepsen-style nemesis test and the benchmarks.
 *
 * - {@link RespParser}: an incremental, bounded RESP2 reply parser (push bytes, pull complete values).
 * - {@link RespClient}: one TCP connection, pipelined calls whose replies are matched in order, a per-call
 *   timeout, bounded in-flight calls with backpressure, and honest failure reporting.
 *
 * Failure semantics (what a history checker needs). Every rejected call carries a stable `code`:
 *
 * | code | meaning | may the call have taken effect? |
 * |---|---|---|
 * | `FTVM_ERR_CLIENT_TIMEOUT` | the call was written and no reply came within `callTimeoutMs`; the connection is then closed (replies are matched by order, so it cannot be trusted any more) | yes: unknown |
 * | `FTVM_ERR_CLIENT_INDETERMINATE` | the call was written, then the connection failed (reset, EOF, another call's timeout, a protocol error, `close()`) before its reply | yes: unknown |
 * | `FTVM_ERR_CLIENT_NOT_SENT` | the call was never written (the connection was already down, or it timed out while waiting for in-flight capacity) | no |
 * | `FTVM_ERR_BAD_ARGUMENT` | the arguments were not a command (never written) | no |
 *
 * {@link isIndeterminate} tells the first two from the rest. A server's error reply (`-ERR ...`) is not a
 * rejection: it resolves the call with a {@link RespError} value, since the server did answer.
 *
 * The client never reconnects by itself: a Jepsen-style client must know which connection an operation
 * used. Connect a new client after a failure.
 */
import { Buffer } from 'node:buffer';
import type { Duplex } from 'node:stream';
import net from 'node:net';
import { performance } from 'node:perf_hooks';

// ---------------------------------------------------------------------------------------------------
// Values and errors

/** A server's error reply (`-ERR unknown command`), delivered as a value: the server did answer. */
export class RespError {
  constructor(readonly message: string) {}

  /** The first word of the message by Redis convention (`ERR`, `WRONGTYPE`, `MOVED`, ...). */
  get prefix(): string {
    const space = this.message.indexOf(' ');
    return space === -1 ? this.message : this.message.slice(0, space);
  }

  toString(): string {
    return `RespError: ${this.message}`;
  }
}

/**
 * A RESP2 reply: simple string → `string`, bulk string → `Buffer`, null bulk / null array → `null`,
 * integer → `number` (or `bigint` when it lies outside ±(2^53 − 1), so no 64-bit value is silently
 * rounded), error → {@link RespError}, array → `RespValue[]`.
 */
export type RespValue = string | Buffer | null | number | bigint | RespError | RespValue[];

export type RespClientErrorCode =
  | 'FTVM_ERR_CLIENT_TIMEOUT'
  | 'FTVM_ERR_CLIENT_INDETERMINATE'
  | 'FTVM_ERR_CLIENT_NOT_SENT'
  | 'FTVM_ERR_CLIENT_CONNECT'
  | 'FTVM_ERR_CLIENT_CONNECTION_LOST'
  | 'FTVM_ERR_RESP_PROTOCOL'
  | 'FTVM_ERR_RESP_LIMIT'
  | 'FTVM_ERR_BAD_ARGUMENT';

/** Every error this module produces. `code` is stable; `message` is for people. */
export class RespClientError extends Error {
  readonly code: RespClientErrorCode;
  constructor(code: RespClientErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'RespClientError';
  }
}

/**
 * True when the error means "the call was written and its outcome is unknown" (record the operation as
 * indeterminate / `:info`); false when the call certainly did not take effect or the error is not a call
 * failure of this client.
 */
export function isIndeterminate(err: unknown): boolean {
  return (
    err instanceof RespClientError &&
    (err.code === 'FTVM_ERR_CLIENT_TIMEOUT' || err.code === 'FTVM_ERR_CLIENT_INDETERMINATE')
  );
}

// ---------------------------------------------------------------------------------------------------
// Encoding

/** Encodes a command as a RESP array of bulk strings (strings are written as UTF-8). */
export function encodeCommand(args: readonly (string | Uint8Array)[]): Buffer {
  let size = 1 + decimalLength(args.length) + 2;
  const lengths = new Array<number>(args.length);
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const n = typeof a === 'string' ? Buffer.byteLength(a, 'utf8') : a.byteLength;
    lengths[i] = n;
    size += 1 + decimalLength(n) + 2 + n + 2;
  }
  const out = Buffer.allocUnsafe(size);
  let o = out.write(`*${args.length}\r\n`, 0, 'latin1');
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const n = lengths[i]!;
    o += out.write(`$${n}\r\n`, o, 'latin1');
    if (typeof a === 'string') o += out.write(a, o, 'utf8');
    else {
      out.set(a, o);
      o += n;
    }
    out[o++] = CR;
    out[o++] = LF;
  }
  return out;
}

function decimalLength(n: number): number {
  let d = 1;
  while (n >= 10) {
    n = Math.floor(n / 10);
    d++;
  }
  return d;
}

// ---------------------------------------------------------------------------------------------------
// Parsing

const CR = 0x0d;
const LF = 0x0a;
const MINUS = 0x2d;
const ZERO = 0x30;
const NINE = 0x39;

export interface RespParserOptions {
  /** Largest bulk string accepted; a longer one is refused with `FTVM_ERR_RESP_LIMIT`. Default 512 MiB. */
  maxBulkBytes?: number;
  /** Deepest array nesting accepted (a top-level array is depth 1). Default 32. */
  maxDepth?: number;
  /** Longest header or simple line (`+...`, `-...`, `:...`, `$n`, `*n`) accepted. Default 1 MiB. */
  maxLineBytes?: number;
  /** Largest element count of one array. Default 2^31 − 1. */
  maxArrayLength?: number;
}

interface Frame {
  readonly items: RespValue[];
  remaining: number;
}

/** Marks "the value just parsed completed a nested element, not a top-level reply". */
const INCOMPLETE: unique symbol = Symbol('incomplete');

/**
 * Incremental RESP2 parser. `push` bytes as they arrive (split anywhere, down to single bytes); `pull`
 * returns the next complete top-level value, or `undefined` when more bytes are needed (`null` is a value:
 * the null bulk string or null array).
 *
 * Bounded: it refuses bulk strings over `maxBulkBytes`, nesting deeper than `maxDepth`, header lines over
 * `maxLineBytes` and malformed input, by throwing a {@link RespClientError} (`FTVM_ERR_RESP_LIMIT` or
 * `FTVM_ERR_RESP_PROTOCOL`) from `pull`. The parser is then failed for good: the stream cannot be resynced.
 * Memory use is the unparsed input plus the partial array being built; a large bulk string arriving in
 * many chunks is copied once, when complete.
 *
 * The parser keeps references to pushed buffers until they are consumed: do not modify them after push.
 * Bulk strings are returned as fresh buffers that share no memory with the input.
 */
export class RespParser {
  private readonly maxBulkBytes: number;
  private readonly maxDepth: number;
  private readonly maxLineBytes: number;
  private readonly maxArrayLength: number;

  /** Unconsumed input: `chunks[0]` from offset `head`, then the other chunks whole. */
  private chunks: Buffer[] = [];
  private head = 0;
  private avail = 0;
  /** Where the search for the current line's LF resumes (chunk index, offset), and bytes scanned so far. */
  private scanChunk = 0;
  private scanOffset = 0;
  private scanned = 0;
  /** Arrays being filled, outermost first. */
  private readonly stack: Frame[] = [];
  /** Length of the bulk string whose header has been read and whose body has not, or -1. */
  private bulkLength = -1;
  private failure: RespClientError | null = null;

  constructor(options: RespParserOptions = {}) {
    this.maxBulkBytes = options.maxBulkBytes ?? 512 * 1024 * 1024;
    this.maxDepth = options.maxDepth ?? 32;
    this.maxLineBytes = options.maxLineBytes ?? 1024 * 1024;
    this.maxArrayLength = options.maxArrayLength ?? 2 ** 31 - 1;
  }

  /** Unconsumed input bytes (including a partially received value). */
  get bufferedBytes(): number {
    return this.avail;
  }

  /** True when no partial value is pending: the input so far ended exactly at a reply boundary. */
  get idle(): boolean {
    return this.avail === 0 && this.stack.length === 0 && this.bulkLength === -1;
  }

  /** Adds input. Throws the parser's failure if it has already failed. */
  push(data: Uint8Array): void {
    if (this.failure) throw this.failure;
    if (data.byteLength === 0) return;
    const b = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    this.chunks.push(b);
    this.avail += b.length;
  }

  /** The next complete top-level value, or `undefined` if more input is needed. Throws on bad input. */
  pull(): RespValue | undefined {
    if (this.failure) throw this.failure;
    try {
      return this.parse();
    } catch (err) {
      if (err instanceof RespClientError) this.failure = err;
      throw err;
    }
  }

  /** Every complete value now available, in order. */
  pullAll(): RespValue[] {
    const out: RespValue[] = [];
    for (let v = this.pull(); v !== undefined; v = this.pull()) out.push(v);
    return out;
  }

  private parse(): RespValue | undefined {
    for (;;) {
      let value: RespValue;
      if (this.bulkLength >= 0) {
        const n = this.bulkLength;
        const body = this.take(n + 2, true);
        if (!body) return undefined;
        if (body[n] !== CR || body[n + 1] !== LF) throw protocolError('bulk string not terminated by CRLF');
        this.bulkLength = -1;
        value = body.subarray(0, n);
      } else {
        const line = this.readLine();
        if (!line) return undefined;
        const type = line[0];
        switch (type) {
          case 0x2b: // '+'
            value = line.toString('utf8', 1);
            break;
          case 0x2d: // '-'
            value = new RespError(line.toString('utf8', 1));
            break;
          case 0x3a: // ':'
            value = parseInteger(line);
            break;
          case 0x24: {
            // '$'
            const n = parseLength(line, 'bulk string');
            if (n === -1) {
              value = null;
              break;
            }
            if (n > this.maxBulkBytes) {
              throw new RespClientError('FTVM_ERR_RESP_LIMIT', `bulk string of ${n} bytes exceeds the limit of ${this.maxBulkBytes}`);
            }
            this.bulkLength = n;
            continue;
          }
          case 0x2a: {
            // '*'
            const n = parseLength(line, 'array');
            if (n === -1) {
              value = null;
              break;
            }
            if (n > this.maxArrayLength) {
              throw new RespClientError('FTVM_ERR_RESP_LIMIT', `array of ${n} elements exceeds the limit of ${this.maxArrayLength}`);
            }
            if (n === 0) {
              value = [];
              break;
            }
            if (this.stack.length + 1 > this.maxDepth) {
              throw new RespClientError('FTVM_ERR_RESP_LIMIT', `arrays nested deeper than ${this.maxDepth}`);
            }
            this.stack.push({ items: [], remaining: n });
            continue;
          }
          default:
            throw protocolError(
              type === undefined ? 'empty line' : `unexpected type byte 0x${type.toString(16).padStart(2, '0')} (not a RESP2 reply)`,
            );
        }
      }
      const done = this.attach(value);
      if (done !== INCOMPLETE) return done;
    }
  }

  /** Places a finished value into the innermost open array; returns it if it is a whole top-level reply. */
  private attach(value: RespValue): RespValue | typeof INCOMPLETE {
    let v = value;
    for (;;) {
      const top = this.stack[this.stack.length - 1];
      if (!top) return v;
      top.items.push(v);
      if (--top.remaining > 0) return INCOMPLETE;
      this.stack.pop();
      v = top.items;
    }
  }

  /** The next line without its CRLF, consumed; `undefined` if its LF has not arrived yet. */
  private readLine(): Buffer | undefined {
    let i = this.scanChunk;
    let offset = i === 0 ? Math.max(this.scanOffset, this.head) : this.scanOffset;
    let scanned = this.scanned;
    while (i < this.chunks.length) {
      const c = this.chunks[i]!;
      const lf = c.indexOf(LF, offset);
      if (lf !== -1) {
        const length = scanned + (lf - offset); // bytes before the LF
        if (length - 1 > this.maxLineBytes) throw lineTooLong(this.maxLineBytes);
        const raw = this.take(length + 1)!;
        if (length === 0 || raw[length - 1] !== CR) throw protocolError('line not terminated by CRLF');
        return raw.subarray(0, length - 1);
      }
      scanned += c.length - offset;
      if (scanned > this.maxLineBytes + 1) throw lineTooLong(this.maxLineBytes);
      i++;
      offset = 0;
    }
    this.scanChunk = i;
    this.scanOffset = 0;
    this.scanned = scanned;
    return undefined;
  }

  /**
   * Consumes exactly `n` bytes as one contiguous buffer: a view of the input when they lie in one chunk
   * (unless `copy`), else a fresh buffer.
   */
  private take(n: number, copy = false): Buffer | undefined {
    if (this.avail < n) return undefined;
    this.scanChunk = 0;
    this.scanOffset = 0;
    this.scanned = 0;
    this.avail -= n;
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) {
      const view = first.subarray(this.head, this.head + n);
      const out = copy ? Buffer.from(view) : view;
      this.head += n;
      if (this.head === first.length) {
        this.chunks.shift();
        this.head = 0;
      }
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let used = 0;
    while (filled < n) {
      const c = this.chunks[used]!;
      const start = used === 0 ? this.head : 0;
      const k = Math.min(c.length - start, n - filled);
      c.copy(out, filled, start, start + k);
      filled += k;
      if (start + k === c.length) {
        used++;
        this.head = 0;
      } else {
        this.head = start + k;
      }
    }
    this.chunks.splice(0, used);
    return out;
  }
}

function protocolError(what: string): RespClientError {
  return new RespClientError('FTVM_ERR_RESP_PROTOCOL', `RESP protocol error: ${what}`);
}

function lineTooLong(max: number): RespClientError {
  return new RespClientError('FTVM_ERR_RESP_LIMIT', `RESP line longer than ${max} bytes`);
}

/** `:<integer>` — a signed 64-bit decimal; `bigint` when outside the safe integer range. */
function parseInteger(line: Buffer): number | bigint {
  let i = 1;
  const negative = line[i] === MINUS;
  if (negative) i++;
  const digits = line.length - i;
  if (digits === 0 || digits > 20) throw protocolError(`bad integer ${JSON.stringify(line.toString('latin1'))}`);
  let v = 0;
  for (let j = i; j < line.length; j++) {
    const d = line[j]!;
    if (d < ZERO || d > NINE) throw protocolError(`bad integer ${JSON.stringify(line.toString('latin1'))}`);
    v = v * 10 + (d - ZERO);
  }
  if (v <= Number.MAX_SAFE_INTEGER) return negative ? 0 - v : v;
  const big = BigInt(line.toString('latin1', 1));
  if (big > 0x7fffffffffffffffn || big < -0x8000000000000000n) {
    throw protocolError(`integer out of the 64-bit range: ${big}`);
  }
  return big;
}

/** `$<n>` / `*<n>`: -1 (null) or a non-negative count. */
function parseLength(line: Buffer, what: string): number {
  if (line.length === 3 && line[1] === MINUS && line[2] === 0x31) return -1;
  const digits = line.length - 1;
  if (digits === 0 || digits > 15) throw protocolError(`bad ${what} length ${JSON.stringify(line.toString('latin1'))}`);
  let v = 0;
  for (let j = 1; j < line.length; j++) {
    const d = line[j]!;
    if (d < ZERO || d > NINE) throw protocolError(`bad ${what} length ${JSON.stringify(line.toString('latin1'))}`);
    v = v * 10 + (d - ZERO);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------------
// The client

export interface RespClientOptions {
  /** Default `127.0.0.1`. */
  host?: string;
  port: number;
  /** Time allowed for the TCP connection to be established. Default 5000 ms. */
  connectTimeoutMs?: number;
  /**
   * Time allowed from `call` to its reply. Default 5000 ms; 0 disables. A written call that times out
   * rejects with `FTVM_ERR_CLIENT_TIMEOUT` and closes the connection (see the module comment).
   */
  callTimeoutMs?: number;
  /** Most calls written and awaiting replies at once; further calls wait unwritten. Default 10,000. */
  maxInFlight?: number;
  /** TCP_NODELAY. Default true (pipelined small requests should not wait for Nagle). */
  noDelay?: boolean;
  /** Limits of the reply parser. */
  parser?: RespParserOptions;
}

interface PendingCall {
  resolve(value: RespValue): void;
  reject(err: RespClientError): void;
  /** Encoded request; dropped once written. */
  payload: Buffer | null;
  /** performance.now() after which the call times out (Infinity: never). */
  readonly deadline: number;
}

/** FIFO with O(1) amortized shift (Array#shift is O(n) on large arrays). */
class Queue<T> {
  private items: (T | undefined)[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    this.items.push(item);
  }

  peek(): T | undefined {
    return this.items[this.head];
  }

  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  /** Removes and returns everything, in order. */
  drain(): T[] {
    const out = this.items.slice(this.head) as T[];
    this.items = [];
    this.head = 0;
    return out;
  }
}

/**
 * One RESP2 connection. Calls are pipelined: `call` writes at once (up to `maxInFlight` unanswered calls)
 * and replies are matched to calls in order. Not safe to share across logical clients of a linearizability
 * test (each such client should own one connection).
 */
export class RespClient {
  /** Connects, or rejects with `FTVM_ERR_CLIENT_CONNECT` (refused, unreachable, or timed out). */
  static connect(options: RespClientOptions): Promise<RespClient> {
    const host = options.host ?? '127.0.0.1';
    const { port } = options;
    const connectTimeoutMs = options.connectTimeoutMs ?? 5000;
    if (!Number.isInteger(port) || port <= 0 || port > 65535) {
      return Promise.reject(new RespClientError('FTVM_ERR_BAD_ARGUMENT', `bad port ${String(port)}`));
    }
    const where = `${host}:${port}`;
    return new Promise<RespClient>((resolve, reject) => {
      const socket = net.connect({ host, port });
      const timer =
        connectTimeoutMs > 0
          ? setTimeout(() => {
              socket.destroy();
              reject(new RespClientError('FTVM_ERR_CLIENT_CONNECT', `connecting to ${where} timed out after ${connectTimeoutMs} ms`));
            }, connectTimeoutMs)
          : null;
      const onError = (err: Error): void => {
        if (timer) clearTimeout(timer);
        socket.destroy();
        const code = (err as NodeJS.ErrnoException).code;
        reject(new RespClientError('FTVM_ERR_CLIENT_CONNECT', `cannot connect to ${where}: ${code ?? err.message}`, { cause: err }));
      };
      socket.once('error', onError);
      socket.once('connect', () => {
        if (timer) clearTimeout(timer);
        socket.removeListener('error', onError);
        resolve(new RespClient(socket, where, options));
      });
    });
  }

  /** `host:port` of the server. */
  readonly address: string;
  /**
   * Settles when the connection has ended: with the reason (code `FTVM_ERR_CLIENT_CONNECTION_LOST`,
   * `FTVM_ERR_CLIENT_TIMEOUT` or `FTVM_ERR_RESP_*`). Never rejects.
   */
  readonly closed: Promise<RespClientError>;

  private readonly socket: Duplex;
  private readonly parser: RespParser;
  private readonly callTimeoutMs: number;
  private readonly maxInFlight: number;
  /** Written, awaiting replies, in order. */
  private readonly sent = new Queue<PendingCall>();
  /** Not yet written (in-flight limit reached), in order. */
  private readonly waiting = new Queue<PendingCall>();
  private failure: RespClientError | null = null;
  private timer: NodeJS.Timeout | null = null;
  private corked = false;
  private readonly socketClosed: Promise<void>;
  private resolveClosed!: (reason: RespClientError) => void;

  /**
   * A client over any byte stream instead of a TCP connection it opens itself: e.g. a virtual
   * connection of `FtvmClient` (src/client/ftvm-client.ts), which survives failovers.
   */
  static over(stream: Duplex, address: string, options: Omit<RespClientOptions, 'host' | 'port' | 'connectTimeoutMs'> = {}): RespClient {
    return new RespClient(stream, address, { ...options, port: 0 });
  }

  private constructor(socket: Duplex, address: string, options: RespClientOptions) {
    this.socket = socket;
    this.address = address;
    this.callTimeoutMs = options.callTimeoutMs ?? 5000;
    this.maxInFlight = Math.max(1, options.maxInFlight ?? 10_000);
    this.parser = new RespParser(options.parser ?? {});
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.socketClosed = new Promise((resolve) => socket.once('close', () => resolve()));
    if (socket instanceof net.Socket) socket.setNoDelay(options.noDelay ?? true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => {
      const code = (err as NodeJS.ErrnoException).code;
      this.fail(new RespClientError('FTVM_ERR_CLIENT_CONNECTION_LOST', `connection to ${address} failed: ${code ?? err.message}`, { cause: err }));
    });
    socket.on('end', () => this.fail(new RespClientError('FTVM_ERR_CLIENT_CONNECTION_LOST', `connection to ${address} closed by the server`)));
    socket.on('close', () => this.fail(new RespClientError('FTVM_ERR_CLIENT_CONNECTION_LOST', `connection to ${address} closed`)));
  }

  /** Calls written and not yet answered. */
  get inFlight(): number {
    return this.sent.length;
  }

  /** Calls waiting to be written because `maxInFlight` calls are in flight. */
  get queued(): number {
    return this.waiting.length;
  }

  /** False once the connection has failed or been closed. */
  get connected(): boolean {
    return this.failure === null;
  }

  /**
   * Sends one command (`call('SET', 'k', value)`); resolves with its reply, which may be a
   * {@link RespError} value. Rejections carry a `code`: see the module comment.
   */
  call(...args: (string | Uint8Array)[]): Promise<RespValue> {
    if (args.length === 0) {
      return Promise.reject(new RespClientError('FTVM_ERR_BAD_ARGUMENT', 'a command needs at least one argument'));
    }
    for (const a of args as unknown[]) {
      if (typeof a !== 'string' && !(a instanceof Uint8Array)) {
        return Promise.reject(new RespClientError('FTVM_ERR_BAD_ARGUMENT', `command arguments must be strings or bytes, not ${typeof a}`));
      }
    }
    if (this.failure) {
      return Promise.reject(
        new RespClientError('FTVM_ERR_CLIENT_NOT_SENT', `not sent: ${this.failure.message}`, { cause: this.failure }),
      );
    }
    return new Promise<RespValue>((resolve, reject) => {
      const deadline = this.callTimeoutMs > 0 ? performance.now() + this.callTimeoutMs : Infinity;
      const call: PendingCall = { resolve, reject, payload: encodeCommand(args), deadline };
      if (this.waiting.length === 0 && this.sent.length < this.maxInFlight) this.write(call);
      else this.waiting.push(call);
      if (this.timer === null && deadline !== Infinity) this.armTimer();
    });
  }

  /**
   * Closes the connection now. Calls still awaiting replies reject with `FTVM_ERR_CLIENT_INDETERMINATE`
   * and unwritten ones with `FTVM_ERR_CLIENT_NOT_SENT`: await your calls first for a clean close.
   * Resolves when the socket is closed.
   */
  async close(): Promise<void> {
    this.fail(new RespClientError('FTVM_ERR_CLIENT_CONNECTION_LOST', `connection to ${this.address} closed by the client`));
    await this.socketClosed;
  }

  private write(call: PendingCall): void {
    const payload = call.payload!;
    call.payload = null;
    this.sent.push(call);
    if (!this.corked) {
      // Coalesce the calls made in one tick into one writev.
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    this.socket.write(payload);
  }

  private onData(chunk: Buffer): void {
    if (this.failure) return;
    try {
      this.parser.push(chunk);
      for (let v = this.parser.pull(); v !== undefined; v = this.parser.pull()) {
        const call = this.sent.shift();
        if (!call) throw protocolError('reply received with no call awaiting one');
        call.resolve(v);
      }
    } catch (err) {
      const e = err instanceof RespClientError ? err : protocolError(String(err));
      this.fail(e);
      return;
    }
    while (this.waiting.length > 0 && this.sent.length < this.maxInFlight) this.write(this.waiting.shift()!);
  }

  private armTimer(): void {
    if (this.timer !== null || this.failure) return;
    const head = this.sent.peek() ?? this.waiting.peek();
    if (!head || head.deadline === Infinity) return;
    const wait = Math.max(0, Math.ceil(head.deadline - performance.now()));
    this.timer = setTimeout(() => {
      this.timer = null;
      this.onTimer();
    }, wait);
  }

  private onTimer(): void {
    if (this.failure) return;
    const now = performance.now();
    const head = this.sent.peek();
    if (head && head.deadline <= now) {
      this.sent.shift();
      const err = new RespClientError(
        'FTVM_ERR_CLIENT_TIMEOUT',
        `no reply from ${this.address} within ${this.callTimeoutMs} ms; the call may or may not have taken effect (connection closed)`,
      );
      head.reject(err);
      this.fail(err);
      return;
    }
    // Calls that waited for in-flight capacity past their deadline were never written.
    if (!head) {
      for (let w = this.waiting.peek(); w && w.deadline <= now; w = this.waiting.peek()) {
        this.waiting.shift();
        w.reject(new RespClientError('FTVM_ERR_CLIENT_NOT_SENT', `not sent: waited ${this.callTimeoutMs} ms for in-flight capacity`));
      }
    }
    this.armTimer();
  }

  /** Ends the connection (idempotent), settling every outstanding call by whether it was written. */
  private fail(reason: RespClientError): void {
    if (this.failure) return;
    this.failure = reason;
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    this.socket.destroy();
    for (const call of this.sent.drain()) {
      call.reject(
        new RespClientError('FTVM_ERR_CLIENT_INDETERMINATE', `outcome unknown: the call was sent, then ${reason.message}`, {
          cause: reason,
        }),
      );
    }
    for (const call of this.waiting.drain()) {
      call.reject(new RespClientError('FTVM_ERR_CLIENT_NOT_SENT', `not sent: ${reason.message}`, { cause: reason }));
    }
    this.resolveClosed(reason);
  }
}
