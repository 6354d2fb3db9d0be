/**
 * Helpers for tests that run real processes (an ftvm primary and backup, a redis-server, ...).
 *
 * - {@link spawnNode} / {@link spawnProcess}: start a process with piped output captured as lines;
 *   `waitForLine`, `kill`, `stop` (SIGTERM, then SIGKILL after a grace period), `exited`.
 * - A registry of live processes: `await stopAll()` in an `after` hook so a test never leaks one. As a last
 *   resort, processes still alive when this Node process exits are sent SIGKILL.
 * - {@link freePort}, {@link waitForPort}: 127.0.0.1 ports.
 *
 * Signals are always sent by PID (`process.kill(pid, signal)`), never by process name.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { NODE_FLAGS } from '../cli/node-flags.js';

export type ProcessErrorCode =
  | 'FTVM_ERR_PROCESS_SPAWN'
  | 'FTVM_ERR_PROCESS_EXITED'
  | 'FTVM_ERR_PROCESS_TIMEOUT'
  | 'FTVM_ERR_BAD_ARGUMENT';

export class ProcessError extends Error {
  readonly code: ProcessErrorCode;
  constructor(code: ProcessErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'ProcessError';
  }
}

export interface ExitStatus {
  /** Exit code, or null when the process was ended by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
}

export type StreamName = 'stdout' | 'stderr';

/** Position in a process's output, from {@link ProcessHandle.mark}; lines before it are ignored by `waitForLine`. */
export interface OutputMark {
  readonly stdout: number;
  readonly stderr: number;
}

export interface WaitForLineOptions {
  /** Which output to search. Default both. */
  stream?: StreamName | 'both';
  /** Only lines after this mark (default: every line kept since the start). */
  since?: OutputMark;
}

/**
 * Lines of one output stream. Keeps at least the last `maxLines` lines (older ones are dropped in batches,
 * and counted); a line longer than `maxLineChars` is split.
 */
export class LineBuffer {
  private kept: string[] = [];
  private partial = '';
  private dropped = 0;
  private readonly listeners = new Set<(line: string, index: number) => void>();

  constructor(
    readonly maxLines = 10_000,
    readonly maxLineChars = 1024 * 1024,
  ) {}

  /** The lines kept (the last `maxLines`). */
  get lines(): readonly string[] {
    return this.kept;
  }

  /** Lines seen since the start, including dropped ones: the index the next line will get. */
  get total(): number {
    return this.dropped + this.kept.length;
  }

  /** The kept lines joined with newlines. */
  text(): string {
    return this.kept.join('\n');
  }

  /** The last `n` lines. */
  tail(n = 20): string[] {
    return this.kept.slice(-n);
  }

  /** The kept line with this index (as counted by `total`), if still kept. */
  line(index: number): string | undefined {
    return this.kept[index - this.dropped];
  }

  /** Calls `listener` with each new line and its index; returns the unsubscribe function. */
  onLine(listener: (line: string, index: number) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Feeds text (already decoded). */
  write(text: string): void {
    let data = this.partial + text;
    for (let nl = data.indexOf('\n'); nl !== -1; nl = data.indexOf('\n')) {
      this.add(data.slice(0, nl));
      data = data.slice(nl + 1);
    }
    while (data.length > this.maxLineChars) {
      this.add(data.slice(0, this.maxLineChars));
      data = data.slice(this.maxLineChars);
    }
    this.partial = data;
  }

  /** The stream ended: a final line without a newline is kept too. */
  end(): void {
    if (this.partial.length > 0) this.add(this.partial);
    this.partial = '';
  }

  private add(raw: string): void {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    const index = this.total;
    this.kept.push(line);
    if (this.kept.length > this.maxLines) {
      const excess = this.kept.length - this.maxLines;
      // Trim in batches so that a chatty process costs amortized O(1) per line.
      if (excess >= Math.max(1, this.maxLines >> 3)) {
        this.kept = this.kept.slice(excess);
        this.dropped += excess;
      }
    }
    for (const l of this.listeners) l(line, index);
  }
}

export interface SpawnOptions {
  /** Added to (not replacing) this process's environment; `undefined` removes a variable. */
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** For messages and echoed output. Default: the command's base name. */
  name?: string;
  /** Copy each output line to this process's stderr, prefixed with the name. Default: env FTVM_TEST_ECHO=1. */
  echo?: boolean;
  /** Lines kept per stream. Default 10,000. */
  maxLines?: number;
  /** Open a Node IPC channel to the child (`send`, `onMessage`); the child must be a Node process. */
  ipc?: boolean;
}

const live = new Set<ProcessHandle>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const p of live) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A running (or finished) child process. */
export class ProcessHandle {
  readonly pid: number;
  readonly name: string;
  readonly stdout: LineBuffer;
  readonly stderr: LineBuffer;
  /**
   * Resolves when the process has exited and its output has been read (or 1 s after exit, should a
   * grandchild keep the pipes open). Never rejects.
   */
  readonly exited: Promise<ExitStatus>;
  private status: ExitStatus | null = null;
  private readonly child: ChildProcess;

  /** @internal use {@link spawnProcess} */
  constructor(child: ChildProcess, name: string, options: SpawnOptions) {
    if (child.pid === undefined) throw new ProcessError('FTVM_ERR_PROCESS_SPAWN', `could not start ${name}`);
    this.pid = child.pid;
    this.name = name;
    this.child = child;
    this.stdout = new LineBuffer(options.maxLines);
    this.stderr = new LineBuffer(options.maxLines);
    const echo = options.echo ?? process.env['FTVM_TEST_ECHO'] === '1';
    for (const [stream, buffer] of [
      [child.stdout, this.stdout],
      [child.stderr, this.stderr],
    ] as const) {
      if (!stream) continue;
      stream.setEncoding('utf8');
      stream.on('data', (text: string) => buffer.write(text));
      stream.on('end', () => buffer.end());
      stream.on('error', () => buffer.end());
      if (echo) buffer.onLine((line) => process.stderr.write(`[${name}] ${line}\n`));
    }
    this.exited = new Promise<ExitStatus>((resolve) => {
      let exitStatus: ExitStatus | null = null;
      let settled = false;
      const finish = (): void => {
        if (settled || !exitStatus) return;
        settled = true;
        this.stdout.end();
        this.stderr.end();
        this.status = exitStatus;
        live.delete(this);
        resolve(exitStatus);
      };
      child.once('exit', (code, signal) => {
        exitStatus = { code, signal };
        setTimeout(finish, 1000).unref();
      });
      child.once('close', (code: number | null, signal: NodeJS.Signals | null) => {
        exitStatus ??= { code, signal };
        finish();
      });
    });
  }

  /** Sends a message over the IPC channel (spawned with `ipc: true`); false if the channel is closed. */
  send(message: unknown): boolean {
    if (!this.child.send) throw new ProcessError('FTVM_ERR_BAD_ARGUMENT', `${this.name} was started without an IPC channel`);
    if (!this.child.connected) return false;
    return this.child.send(message as object);
  }

  /** Calls `listener` with each IPC message from the child; returns the unsubscribe function. */
  onMessage(listener: (message: unknown) => void): () => void {
    this.child.on('message', listener);
    return () => this.child.off('message', listener);
  }

  /** The exit status, once known (after `exited` resolved). */
  get exitStatus(): ExitStatus | null {
    return this.status;
  }

  /** True until `exited` has resolved. */
  get running(): boolean {
    return this.status === null;
  }

  /** The current end of both outputs: pass as `since` to wait only for lines printed after now. */
  mark(): OutputMark {
    return { stdout: this.stdout.total, stderr: this.stderr.total };
  }

  /**
   * Resolves with the match of the first line matching `regex` (already printed, or printed later).
   * Rejects with `FTVM_ERR_PROCESS_TIMEOUT` after `timeoutMs`, or `FTVM_ERR_PROCESS_EXITED` if the process
   * exits first; both messages carry the tail of the output.
   */
  waitForLine(regex: RegExp, timeoutMs = 10_000, options: WaitForLineOptions = {}): Promise<RegExpExecArray> {
    // A global or sticky regex keeps state between exec calls: use a stateless copy.
    const re = new RegExp(regex.source, regex.flags.replace(/[gy]/g, ''));
    const which = options.stream ?? 'both';
    const buffers: [StreamName, LineBuffer][] = [];
    if (which !== 'stderr') buffers.push(['stdout', this.stdout]);
    if (which !== 'stdout') buffers.push(['stderr', this.stderr]);
    for (const [stream, buffer] of buffers) {
      const from = Math.max(options.since?.[stream] ?? 0, buffer.total - buffer.lines.length);
      for (let i = from; i < buffer.total; i++) {
        const m = re.exec(buffer.line(i) ?? '');
        if (m) return Promise.resolve(m);
      }
    }
    return new Promise<RegExpExecArray>((resolve, reject) => {
      const unsubscribe: (() => void)[] = [];
      const done = (): void => {
        clearTimeout(timer);
        for (const u of unsubscribe) u();
      };
      for (const [, buffer] of buffers) {
        unsubscribe.push(
          buffer.onLine((line) => {
            const m = re.exec(line);
            if (m) {
              done();
              resolve(m);
            }
          }),
        );
      }
      const timer = setTimeout(() => {
        done();
        reject(new ProcessError('FTVM_ERR_PROCESS_TIMEOUT', `${this.name} printed no line matching ${re} within ${timeoutMs} ms${this.outputTail()}`));
      }, timeoutMs);
      let active = true;
      unsubscribe.push(() => (active = false));
      void this.exited.then((status) => {
        if (!active) return;
        done();
        reject(
          new ProcessError(
            'FTVM_ERR_PROCESS_EXITED',
            `${this.name} exited (${describe(status)}) before printing a line matching ${re}${this.outputTail()}`,
          ),
        );
      });
    });
  }

  /** Sends a signal by PID. False if the process has already exited. */
  kill(signal: NodeJS.Signals = 'SIGTERM'): boolean {
    if (this.status) return false;
    try {
      process.kill(this.pid, signal);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
      throw err;
    }
  }

  /** SIGTERM, then SIGKILL if it has not exited after `graceMs`; resolves with the exit status. */
  async stop(graceMs = 5000): Promise<ExitStatus> {
    if (this.status) return this.status;
    this.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), graceMs)));
    const first = await Promise.race([this.exited, graceOver]);
    clearTimeout(timer);
    if (first === 'timeout') this.kill('SIGKILL');
    return this.exited;
  }

  /** The last lines of both outputs, for error messages. */
  outputTail(n = 15): string {
    const out = this.stdout.tail(n);
    const err = this.stderr.tail(n);
    let s = '';
    if (out.length > 0) s += `\n--- ${this.name} stdout (last ${out.length} lines) ---\n${out.join('\n')}`;
    if (err.length > 0) s += `\n--- ${this.name} stderr (last ${err.length} lines) ---\n${err.join('\n')}`;
    return s;
  }
}

function describe(status: ExitStatus): string {
  return status.signal ? `signal ${status.signal}` : `code ${status.code}`;
}

/**
 * Starts `command` with `args` (no shell), output piped and captured, and registers it for
 * {@link stopAll}. Throws `FTVM_ERR_PROCESS_SPAWN` if it cannot be started (e.g. not installed).
 */
export function spawnProcess(command: string, args: readonly string[], options: SpawnOptions = {}): ProcessHandle {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const [k, v] of Object.entries(options.env ?? {})) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  const name = options.name ?? command.split('/').pop() ?? command;
  const child = spawn(command, args, {
    env,
    ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
    stdio: options.ipc === true ? ['ignore', 'pipe', 'pipe', 'ipc'] : ['ignore', 'pipe', 'pipe'],
  });
  let spawnError: Error | undefined;
  child.on('error', (err) => (spawnError = err));
  if (child.pid === undefined) {
    // spawn reports ENOENT and the like through an 'error' event; the missing pid tells us now.
    throw new ProcessError('FTVM_ERR_PROCESS_SPAWN', `could not start ${name} (${command}): ${spawnError?.message ?? 'no such command or not executable'}`);
  }
  const handle = new ProcessHandle(child, name, options);
  installExitHook();
  live.add(handle);
  return handle;
}

/** Starts a Node.js script with this process's `node` binary: `spawnNode(['dist/src/cli/main.js', 'primary', ...])`. */
export function spawnNode(args: readonly string[], options: SpawnOptions = {}): ProcessHandle {
  const script = args.find((a) => !a.startsWith('-'));
  const name = script !== undefined && args[0] !== '-e' && args[0] !== '--eval' ? (script.split('/').pop() ?? script) : 'node';
  return spawnProcess(process.execPath, [...NODE_FLAGS, ...args], { name, ...options });
}

/** Processes started by this module and not yet exited. */
export function liveProcesses(): ProcessHandle[] {
  return [...live];
}

/** Stops every live process (SIGTERM, then SIGKILL after `graceMs`), concurrently. */
export async function stopAll(graceMs = 5000): Promise<ExitStatus[]> {
  return Promise.all([...live].map((p) => p.stop(graceMs)));
}

export { freePort } from '../util/ports.js';

/**
 * Resolves once a TCP connection to 127.0.0.1:`port` succeeds (the connection is closed at once);
 * rejects with `FTVM_ERR_PROCESS_TIMEOUT` after `timeoutMs`.
 */
export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => {
        s.destroy();
        resolve(false);
      });
    });
    if (ok) return;
    if (Date.now() >= deadline) throw new ProcessError('FTVM_ERR_PROCESS_TIMEOUT', `nothing listening on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await sleep(50);
  }
}
