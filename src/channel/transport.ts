/**
 * What the logging channel runs over: TLS 1.3 keyed by a pre-shared key derived from the VM's secret
 * (the default), or plain TCP (`--insecure-channel`, for benchmarks). Either way the channel's own
 * HMAC framing runs inside (docs/PROTOCOL.md): TLS adds confidentiality (clients' bytes and the guest's
 * memory during a clone are encrypted) and forward secrecy (psk_dhe_ke: an ECDHE exchange under the PSK).
 *
 * TLS-PSK: the dialer offers identity `ftvm1-<keyId>` (a public fingerprint of its current secret) and
 * the key HMAC-SHA256(secret, "ftvm-tls-psk-v1"); the listener looks the identity up among the secrets
 * it accepts (a rotation window accepts two). No certificates: the secret both replicas already share
 * authenticates both ends. TLS 1.3 only.
 */
import net from 'node:net';
import tls from 'node:tls';
import { Keyring, pskIdentity, tlsPsk } from '../security/secrets.js';
import type { Logger } from '../util/log.js';

export type ChannelSecurity = 'tls-psk' | 'plain';

/**
 * The byte stream under a channel connection (a net.Socket or tls.TLSSocket here; a simulated stream in
 * src/sim/net.ts). Events: 'data' (Buffer), 'error' (Error), 'close', 'drain'.
 */
export interface ChannelSocket {
  write(data: Uint8Array): boolean;
  /** Bytes written and not yet sent. */
  readonly writableLength: number;
  readonly remoteAddress?: string | undefined;
  readonly remotePort?: number | undefined;
  on(event: 'data', fn: (chunk: Buffer) => void): this;
  on(event: 'error', fn: (err: Error) => void): this;
  on(event: 'close' | 'drain', fn: () => void): this;
  /** Half-closes after what was written (FIN). */
  end(): void;
  destroy(): void;
  /**
   * True on a TLS socket (tls.TLSSocket sets it): the transport authenticates and orders every byte,
   * and protocol 4 frames carry no MAC of their own (connection.ts).
   */
  readonly encrypted?: boolean;
  /** Buffers writes until `uncork` (one TLS record and system call for a turn's frames). */
  cork(): void;
  uncork(): void;
}

/** A listening channel endpoint. */
export interface ChannelServer {
  readonly address: { address: string; port: number } | undefined;
  close(): Promise<void>;
}

/** How the channel endpoints (endpoints.ts) listen and dial. */
export interface ChannelTransport {
  /** Starts listening; `onSocket` gets each usable connection with the keys its peer proved. */
  listen(host: string, port: number, keyring: Keyring, log: Logger, onSocket: (s: ChannelSocket, keys: Keyring) => void): Promise<ChannelServer>;
  /** Dials with the keyring's current secret; the socket connects in the background ('close' if it cannot). */
  connect(keyring: Keyring, host: string, port: number): { socket: ChannelSocket; keys: Keyring };
}

/** TCP (plain) or TLS 1.3-PSK over TCP: the transport of a real process. */
export function tcpChannelTransport(security: ChannelSecurity): ChannelTransport {
  return {
    async listen(host, port, keyring, log, onSocket) {
      const server = createChannelServer(security, keyring, log, (s, keys) => {
        s.setNoDelay(true);
        onSocket(s, keys);
      });
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => {
          server.off('error', reject);
          resolve();
        });
      });
      return {
        get address() {
          const a = server.address();
          return a && typeof a === 'object' ? { address: a.address, port: a.port } : undefined;
        },
        close: () => new Promise<void>((r) => server.close(() => r())),
      };
    },
    connect: (keyring, host, port) => connectChannel(security, keyring, host, port),
  };
}

export const DEFAULT_CHANNEL_SECURITY: ChannelSecurity = 'tls-psk';

/** What `ftvm status` shows for a channel security mode. */
export function describeSecurity(s: ChannelSecurity): string {
  return s === 'tls-psk' ? 'tls1.3-psk (encrypted and authenticated)' : 'plain (--insecure-channel: authenticated, NOT encrypted)';
}

const TLS_BASE = { minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' } as const;
/** A handshake that has not finished by then is dropped (a stalled or hostile dialer holds nothing). */
export const TLS_HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * A listening server for channel connections. `onSocket` gets each connection once it is usable (for
 * TLS: after the handshake) and a keyring whose current secret is the one the peer proved it holds.
 */
export function createChannelServer(
  security: ChannelSecurity,
  keyring: Keyring,
  log: Logger,
  onSocket: (s: net.Socket, keys: Keyring) => void,
): net.Server {
  if (security === 'plain') {
    return net.createServer({ noDelay: true }, (s) => onSocket(s, snapshot(keyring, keyring.current)));
  }
  const chosen = new WeakMap<object, Uint8Array>();
  const server = tls.createServer(
    {
      ...TLS_BASE,
      handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS,
      pskCallback: (socket: tls.TLSSocket, identity: string) => {
        const s = keyring.byPskIdentity(identity);
        if (!s) return null;
        chosen.set(socket, s);
        return tlsPsk(s);
      },
    },
    (s) => {
      s.setNoDelay(true);
      const secret = chosen.get(s);
      if (!secret) {
        s.destroy();
        return;
      }
      onSocket(s, snapshot(keyring, secret));
    },
  );
  server.on('tlsClientError', (err: Error & { code?: string }, s: tls.TLSSocket) => {
    log.warn({ peer: `${s.remoteAddress ?? '?'}:${s.remotePort ?? '?'}`, code: err.code, err: err.message }, 'channel: refused peer: TLS handshake failed (wrong secret, or not an ftvm peer with the same channel security)');
  });
  return server;
}

/** Dials a channel peer with the keyring's current secret. */
export function connectChannel(security: ChannelSecurity, keyring: Keyring, host: string, port: number): { socket: net.Socket; keys: Keyring } {
  const secret = keyring.current;
  const keys = snapshot(keyring, secret);
  if (security === 'plain') return { socket: net.connect({ host, port, noDelay: true }), keys };
  const socket = tls.connect({
    ...TLS_BASE,
    host,
    port,
    pskCallback: () => ({ psk: tlsPsk(secret), identity: pskIdentity(secret) }),
    // No certificate is involved in a PSK handshake; the PSK authenticates the server.
    checkServerIdentity: () => undefined,
  });
  socket.setNoDelay(true);
  return { socket, keys };
}

/** This connection's keys: `current` = the secret of its handshake; the node's accepted ones after it. */
function snapshot(keyring: Keyring, current: Uint8Array): Keyring {
  return new Keyring(current, [...keyring.accepted]);
}
