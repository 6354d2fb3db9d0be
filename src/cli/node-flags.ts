/**
 * Flags every `ftvm` process runs its Node.js with (the `ftvm` bin's shebang carries the same; the test
 * harness, the demo and the Jepsen cluster pass them when they start `node dist/src/cli/main.js`).
 *
 * `--max-semi-space-size=2` (MiB): V8's young generation otherwise grows to 3 × 16 MiB, which a replica
 * under a few thousand requests/s reaches only after a minute or more. Until then RSS climbs (76 → ~170
 * MiB, then a saw-tooth), which hides a real leak in a soak and makes a killed process slower to tear
 * down (the kernel closes its sockets only after unmapping its memory: the backup's evidence of death
 * comes later). The main thread's garbage is short-lived frames and buffers; measured under the same
 * load, a pair keeps ~75 MiB flat and serves as many requests (docs/PERFORMANCE.md, "Memory").
 * The vCPU worker's isolate is limited the same way through its resourceLimits (src/machine/vcpu.ts).
 */
export const NODE_FLAGS: readonly string[] = ['--max-semi-space-size=2'];
