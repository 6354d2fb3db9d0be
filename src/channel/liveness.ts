/**
 * Evidence of death, not suspicion (fast failover for the common failure: a process that crashed on a
 * host that is still up).
 *
 * A node opens a *liveness port*: a TCP listener that accepts and closes at once, and that lives exactly
 * as long as the node's process. The primary advertises its address in HELLO. When the logging channel
 * closes, the backup probes that address:
 *
 * | probe result  | what it means                                  | what the backup does                     |
 * |---------------|------------------------------------------------|------------------------------------------|
 * | `refused`     | the host answered, nothing listens (refused, or | drain and claim now (`peer-gone`)        |
 * |               | reset from the backlog of a closing listener):  |                                          |
 * |               | the process is gone (its kernel closed the port)|                                          |
 * | `answered`    | the process accepted and closed the probe: it   | nothing: the full fail timeout applies   |
 * |               | is alive                                        |                                          |
 * | `no-answer`   | a silent host, a partition, a stopped process   | nothing: the full fail timeout applies   |
 * |               | (SIGSTOP: its kernel completes the handshake,   |                                          |
 * |               | nobody closes), a probe that hangs              |                                          |
 *
 * The primary needs no probe of its own: it dials the backup's channel address, and a refusal there
 * after the channel closed is the same evidence. Evidence only shortens detection; the arbiter still
 * decides who is live, so a wrong guess costs an availability blip, never safety.
 *
 * The port reveals nothing but "this process is alive" (no data is read or written); it is bound to
 * the host the node serves on (docs/SECURITY.md).
 */
import net from 'node:net';
import { FtvmError } from '../util/errors.js';

export type ProbeResult = 'refused' | 'answered' | 'no-answer';

/** How long a probe may take before it counts as no answer (no evidence). */
export const PROBE_TIMEOUT_MS = 100;

/**
 * Socket error codes that mean "the host answered: nothing listens there (any more)": refused at
 * connect, or reset while waiting in the backlog of a listener that closed.
 */
const REFUSED_CODES = new Set(['ECONNREFUSED', 'ECONNRESET']);

/** True when a connect error is a refusal by the peer's host (evidence that the process is gone). */
export function isRefusal(err: unknown): boolean {
  return typeof (err as { code?: unknown })?.code === 'string' && REFUSED_CODES.has((err as { code: string }).code);
}

/** A listener that accepts and closes at once; open while this process lives. */
export class LivenessPort {
  private constructor(
    private readonly server: net.Server,
    /** `host:port` as advertised in HELLO. */
    readonly address: string,
  ) {}

  /** Listens on `host` (port 0: the kernel picks one). */
  static async open(host: string): Promise<LivenessPort> {
    const server = net.createServer({ pauseOnConnect: true }, (s) => s.destroy());
    server.maxConnections = 64; // a probe is one connection, closed at once; bound the rest
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new FtvmError('FTVM_ERR_LIVENESS_BIND', `cannot open the liveness port on ${host}: ${err.message}`, { cause: err })));
      server.listen({ host, port: 0, exclusive: true }, () => resolve());
    });
    const a = server.address() as net.AddressInfo;
    const shown = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return new LivenessPort(server, `${shown}:${a.port}`);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** Parses `host:port` or `[v6]:port`; undefined when malformed or empty. */
export function parseLivenessAddress(addr: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(addr);
  if (m === null) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: (m[1] ?? m[2])!, port };
}

/** One probe of a liveness address: refused (evidence of death), answered, or no answer in time. */
export function probeLiveness(addr: { host: string; port: number }, timeoutMs = PROBE_TIMEOUT_MS): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let done = false;
    const s = net.connect({ host: addr.host, port: addr.port });
    const finish = (r: ProbeResult): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => finish('no-answer'), timeoutMs);
    // The kernel completes a handshake from the listen backlog even while the process is being torn
    // down (or stopped), so a connection alone proves nothing: the process itself must close it. A
    // close from the process (FIN) is an answer; a reset (the listener went away with this connection
    // still in its backlog) is a refusal; nothing before the timeout is no answer.
    s.once('end', () => finish('answered'));
    s.once('close', (hadError) => {
      if (!hadError) finish('answered');
    });
    s.once('error', (err) => finish(isRefusal(err) ? 'refused' : 'no-answer'));
    s.resume();
  });
}

/** What `probePeer` needs of a closed channel connection. */
export interface ClosedPeer {
  peerHello?: { liveness: string } | undefined;
  readonly remoteHost: string | undefined;
}

/**
 * A channel to `peer` closed: probe the liveness port it advertised in HELLO. When the probe is
 * refused and `stillRelevant()` holds (no new connection since, nothing decided yet), `onGone` gets the
 * evidence. Anything else is no evidence: the fail timeout decides. A peer that advertised no port is
 * never probed.
 */
export function probePeer(
  peer: ClosedPeer,
  who: string,
  env: { probeLiveness(addr: { host: string; port: number }): Promise<ProbeResult>; clock: { now(): number } },
  log: { info(obj: object, msg: string): void },
  stillRelevant: () => boolean,
  onGone: (evidence: string) => void,
): void {
  const addr = parseLivenessAddress(peer.peerHello?.liveness ?? '');
  if (addr === undefined) return;
  // A wildcard address means "the host you reached me on".
  if (addr.host === '0.0.0.0' || addr.host === '::') addr.host = peer.remoteHost ?? '127.0.0.1';
  const t0 = env.clock.now();
  void env.probeLiveness(addr).then((r) => {
    if (!stillRelevant()) return;
    const at = `${addr.host}:${addr.port}`;
    const probeMs = Number((env.clock.now() - t0).toFixed(1));
    // Evidence acts first (the claim goes out), the log line follows.
    if (r === 'refused') onGone(`its liveness port ${at} refused a connection`);
    log.info({ liveness: at, result: r, probeMs }, `liveness probe of the ${who}: ${r}`);
  });
}
