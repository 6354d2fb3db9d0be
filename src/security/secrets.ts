/**
 * The VM's shared secret(s): reading a secret file safely, and the keyring a node authenticates with.
 *
 * One secret authenticates everything of one VM: logging-channel frames, the channel's TLS-PSK key,
 * requests to the embedded arbiter and to the control endpoint. A node holds a keyring: the `current`
 * secret (it signs and dials with it) and the secrets it also `accepts` from peers (the current one plus
 * at most one more during a rotation: `--accept-secret-file`). The keyring is re-read from its files on
 * SIGHUP, so a secret can be rotated without stopping a VM (docs/SECURITY.md, "Rotating the secret").
 */
import { createHmac } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { FtvmError } from '../util/errors.js';

export const MIN_SECRET_BYTES = 16;

/**
 * Reads and checks one secret file: refused if group or others may read or write it (as ssh refuses a
 * private key), if it is not a regular file, or if it holds fewer than MIN_SECRET_BYTES bytes. Leading and
 * trailing ASCII whitespace of a text secret (printable ASCII only) is ignored; a binary secret is taken
 * byte for byte.
 */
export function readSecretFileSync(path: string): Buffer {
  let mode: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new FtvmError('FTVM_ERR_SECRET_UNREADABLE', `secret file ${path} is not a regular file`);
    mode = st.mode;
  } catch (err) {
    if (err instanceof FtvmError) throw err;
    throw new FtvmError('FTVM_ERR_SECRET_UNREADABLE', `cannot read secret file ${path}: ${(err as Error).message}`, { cause: err });
  }
  if ((mode & 0o077) !== 0) {
    throw new FtvmError(
      'FTVM_ERR_SECRET_PERMISSIONS',
      `secret file ${path} is accessible by group or others (mode ${(mode & 0o777).toString(8).padStart(3, '0')}); it must be readable by its owner only: chmod 600 ${path}`,
    );
  }
  let raw: Buffer;
  try {
    raw = readFileSync(path);
  } catch (err) {
    throw new FtvmError('FTVM_ERR_SECRET_UNREADABLE', `cannot read secret file ${path}: ${(err as Error).message}`, { cause: err });
  }
  // A text secret (printable ASCII, e.g. from `openssl rand -hex 32 > f`) loses the whitespace around it
  // (an editor's final newline); a binary one (`head -c 32 /dev/urandom`) is taken byte for byte, even
  // when its first or last byte happens to be a space or a newline.
  const text = raw.toString('latin1');
  const isText = /^[\x20-\x7e\t\r\n]*$/.test(text);
  const secret = isText ? Buffer.from(text.trim(), 'latin1') : raw;
  if (secret.length < MIN_SECRET_BYTES) {
    throw new FtvmError('FTVM_ERR_SECRET_TOO_SHORT', `secret file ${path} holds ${secret.length} bytes; use at least ${MIN_SECRET_BYTES} (e.g. \`(umask 077; head -c 32 /dev/urandom > ${path}; chmod 600 ${path})\`)`);
  }
  return secret;
}

/** A short public fingerprint of a secret (names the key in TLS-PSK identities and logs; reveals nothing). */
export function keyId(secret: Uint8Array): string {
  return createHmac('sha256', secret).update('ftvm-key-id-v1').digest('hex').slice(0, 16);
}

/** The TLS pre-shared key derived from a secret (never the secret itself). */
export function tlsPsk(secret: Uint8Array): Buffer {
  return createHmac('sha256', secret).update('ftvm-tls-psk-v1').digest();
}

export const PSK_IDENTITY_PREFIX = 'ftvm1-';

export function pskIdentity(secret: Uint8Array): string {
  return `${PSK_IDENTITY_PREFIX}${keyId(secret)}`;
}

/**
 * The secrets a node signs with (`current`) and accepts (`accepted`: current first). Mutable: `set`
 * (after a reload) changes what every later handshake and request uses; open connections are kept.
 */
export class Keyring {
  private cur: Uint8Array;
  private acc: Uint8Array[];

  constructor(current: Uint8Array, also: Uint8Array[] = []) {
    Keyring.check(current);
    this.cur = current;
    this.acc = Keyring.accepting(current, also);
  }

  /** A keyring from a secret, or the keyring itself. */
  static of(k: Uint8Array | Keyring): Keyring {
    return k instanceof Keyring ? k : new Keyring(k);
  }

  private static check(s: Uint8Array): void {
    if (!(s instanceof Uint8Array) || s.length < MIN_SECRET_BYTES) throw new FtvmError('FTVM_ERR_SECRET_TOO_SHORT', `a shared secret must be at least ${MIN_SECRET_BYTES} bytes`);
  }

  private static accepting(current: Uint8Array, also: Uint8Array[]): Uint8Array[] {
    const out = [current];
    for (const s of also) {
      Keyring.check(s);
      if (!out.some((o) => Buffer.from(o).equals(Buffer.from(s)))) out.push(s);
    }
    return out;
  }

  get current(): Uint8Array {
    return this.cur;
  }

  /** Every secret accepted from a peer, the current one first. */
  get accepted(): readonly Uint8Array[] {
    return this.acc;
  }

  set(current: Uint8Array, also: Uint8Array[] = []): void {
    Keyring.check(current);
    this.acc = Keyring.accepting(current, also);
    this.cur = current;
  }

  /** The accepted secret whose PSK identity this is, if any. */
  byPskIdentity(identity: string): Uint8Array | undefined {
    return this.acc.find((s) => pskIdentity(s) === identity);
  }

  /** Public fingerprints: what `ftvm status` shows. */
  describe(): { current: string; accepted: string[] } {
    return { current: keyId(this.cur), accepted: this.acc.map(keyId) };
  }
}

/**
 * A keyring backed by files: `secretFile` (current) and optionally `acceptFile` (also accepted; a
 * missing accept file means none). `reload()` re-reads both and swaps them in only if both are valid.
 */
export class FileKeyring extends Keyring {
  constructor(
    readonly secretFile: string,
    readonly acceptFile?: string,
  ) {
    const [cur, also] = FileKeyring.read(secretFile, acceptFile);
    super(cur, also);
  }

  private static read(secretFile: string, acceptFile: string | undefined): [Buffer, Buffer[]] {
    const cur = readSecretFileSync(secretFile);
    const also: Buffer[] = [];
    if (acceptFile !== undefined) {
      let exists = true;
      try {
        statSync(acceptFile);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') exists = false;
        else throw new FtvmError('FTVM_ERR_SECRET_UNREADABLE', `cannot read secret file ${acceptFile}: ${(err as Error).message}`);
      }
      if (exists) also.push(readSecretFileSync(acceptFile));
    }
    return [cur, also];
  }

  /** Re-reads the files; throws (and keeps the old secrets) if either is invalid. */
  reload(): { current: string; accepted: string[] } {
    const [cur, also] = FileKeyring.read(this.secretFile, this.acceptFile);
    this.set(cur, also);
    return this.describe();
  }
}
