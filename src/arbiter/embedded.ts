/**
 * The embedded arbiter: a small HTTP/1.1 + JSON server for one machine (`ftvm arbiter`) and its client.
 * Split by concern: embedded-auth.ts (MACs, signing, TLS-PSK), embedded-store.ts (durable records, the
 * lock), embedded-request.ts (parsing), embedded-server.ts, embedded-client.ts; the state changes are
 * pure, in state.ts (shared with the simulator). This module re-exports the public parts.
 *
 * API (all POST, JSON bodies, every request and every reply authenticated):
 *
 *   /v1/init     {vm, epoch, owner}    → 200 {record}                    create if absent
 *   /v1/claim    {vm, epoch, claimant} → 200 {won, record}               test-and-set epoch → epoch+1
 *   /v1/advance  {vm, epoch, owner}    → 200 {advanced, record|null}     {epoch, owner} → {epoch+1, owner}
 *   /v1/read     {vm}                  → 200 {record|null}
 *   errors → {error: {code, message}}: 400 bad request, 401 authentication, 404 no record (claim),
 *   404/405 unknown path/method, 500 corrupt record, 503 storage failure (retry).
 *
 * Authentication: headers x-ftvm-ts (ms since the Unix epoch), x-ftvm-nonce (32 hex digits, random),
 * x-ftvm-mac = hex HMAC-SHA256(secret, "ftvm-arbiter-req-v1\n" method "\n" path "\n" ts "\n" nonce "\n"
 * body). The server refuses a missing or wrong MAC, a timestamp more than 30 s away from its clock and
 * a nonce it has seen (it keeps recent nonces, bounded: see NonceWindow). Each reply carries x-ftvm-mac
 * = HMAC(secret, "ftvm-arbiter-resp-v1\n" nonce "\n" status "\n" body), bound to the request's nonce,
 * so a process without the secret can neither claim nor tell a claimant it won.
 *
 * Durability: one file per VM, `vm-<name>.json`, holding the record, the VM name and a SHA-256
 * checksum. It is replaced by write-to-temp, fsync, rename, fsync of the directory, all before the
 * reply. Operations on one VM are serialized, so the test-and-set is atomic. At start every file is
 * read and checked; a corrupt one is reported (an error log line, and FTVM_ERR_ARBITER_CORRUPT for
 * every request on that VM) and left untouched: it is never reset. A `LOCK` file stops two servers from
 * sharing a data directory.
 */
export { EmbeddedArbiterServer, type EmbeddedArbiterServerOptions } from './embedded-server.js';
export { EmbeddedArbiterClient, type EmbeddedArbiterClientOptions } from './embedded-client.js';
export { HEADER_MAC, HEADER_NONCE, HEADER_TS, MAX_CLOCK_SKEW_MS, MIN_SECRET_BYTES, NonceWindow, arbiterClientTls, requestMac, responseMac, signRequest } from './embedded-auth.js';
export { decodeRecordFile, recordFileName } from './embedded-store.js';
export { MAX_BODY_BYTES } from './embedded-request.js';
