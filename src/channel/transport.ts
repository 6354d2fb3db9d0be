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
