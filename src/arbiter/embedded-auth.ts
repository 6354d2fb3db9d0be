/**
 * The embedded arbiter's authentication (embedded.ts describes the protocol): request and reply MACs,
 * request signing, the secret check, and the client's TLS-PSK options.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type tls from 'node:tls';
import { Keyring, pskIdentity, tlsPsk } from '../security/secrets.js';
import { MAX_CLOCK_SKEW_MS, NonceWindow } from '../security/nonces.js';
import { FtvmError } from '../util/errors.js';

export const MIN_SECRET_BYTES = 16;
export const HEADER_TS = 'x-ftvm-ts';
export const HEADER_NONCE = 'x-ftvm-nonce';
export const HEADER_MAC = 'x-ftvm-mac';
export const NONCE_PATTERN = /^[0-9a-f]{32}$/;
export const TS_PATTERN = /^[0-9]{1,16}$/;
export const MAC_PATTERN = /^[0-9a-f]{64}$/;
export { MAX_CLOCK_SKEW_MS, NonceWindow };


export function requestMac(secret: Uint8Array, method: string, path: string, ts: string, nonce: string, body: Uint8Array): string {
  return createHmac('sha256', secret).update(`ftvm-arbiter-req-v1\n${method}\n${path}\n${ts}\n${nonce}\n`).update(body).digest('hex');
}

export function responseMac(secret: Uint8Array, nonce: string, status: number, body: Uint8Array): string {
  return createHmac('sha256', secret).update(`ftvm-arbiter-resp-v1\n${nonce}\n${status}\n`).update(body).digest('hex');
}

/** Headers that authenticate one request (a fresh nonce, the current time unless given). */
export function signRequest(secret: Uint8Array, method: string, path: string, body: Uint8Array, now = Date.now()): Record<string, string> {
  const ts = String(now);
  const nonce = randomBytes(16).toString('hex');
  return { [HEADER_TS]: ts, [HEADER_NONCE]: nonce, [HEADER_MAC]: requestMac(secret, method, path, ts, nonce, body) };
}

export function macEqual(hexA: string, hexB: string): boolean {
  const a = Buffer.from(hexA, 'hex');
  const b = Buffer.from(hexB, 'hex');
  return a.length === b.length && a.length === 32 && timingSafeEqual(a, b);
}

export function checkSecret(secret: unknown, who: string): Keyring {
  if (secret instanceof Keyring) return secret;
  if (!(secret instanceof Uint8Array) || secret.length < MIN_SECRET_BYTES) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `${who}: the shared secret must be at least ${MIN_SECRET_BYTES} bytes`);
  }
  return new Keyring(secret);
}

/**
 * The arbiter's transport: TLS 1.3 keyed by the PSK derived from the secret (as the logging channel,
 * src/channel/transport.ts), unless `insecure` (plain HTTP, for benchmarks: `--insecure-channel`).
 * The request and reply MACs run inside either way.
 */
export function arbiterClientTls(secretOf: () => Uint8Array): tls.ConnectionOptions {
  return {
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    pskCallback: () => {
      const s = secretOf();
      return { psk: tlsPsk(s), identity: pskIdentity(s) };
    },
    checkServerIdentity: () => undefined,
  };
}

/** A TLS failure that means the peer does not hold our secret (or is no ftvm arbiter): not worth a retry. */
export function isTlsRefusal(err: NodeJS.ErrnoException): boolean {
  return err.code === 'EPROTO' || (typeof err.code === 'string' && err.code.startsWith('ERR_SSL_'));
}
