/** Shared by the checkpoint tests: a primary checkpointing the kv guest at idle points, and restoring. */
import { CheckpointEncoder } from '../src/checkpoint/wire.js';
import { DEFAULT_VM_CONFIG } from '../src/log/recording.js';
import { ScriptedEnv } from '../src/machine/env.js';
import { Machine, type Snapshot } from '../src/machine/machine.js';
import { guest, hex } from './helpers.js';

export const cfg = DEFAULT_VM_CONFIG;

/** The state hash of a fresh machine restored from `s` (what a backup going live from it starts with). */
export function restoredHash(s: Snapshot): string {
  const g = guest('kv');
  const m = new Machine({ instrumented: g.instrumented, compiled: g.compiled, config: cfg, sink: { entry() {}, output() {} }, mode: 'record', env: new ScriptedEnv([], { seed: 1 }) });
  m.restore(s);
  return hex(m.stateHash());
}

/**
 * A ScriptedEnv that checkpoints the machine at every `every`-th idle wait, and at idle wait `stopAt`
 * takes a last checkpoint and ends the run (the primary dies right after the backup acknowledged it).
 */
export class CheckpointingEnv extends ScriptedEnv {
  waits = 0;
  machine: Machine | undefined;
  readonly encoder = new CheckpointEncoder();
  readonly checkpoints: Array<{ data: Uint8Array; hash: string; snap: Snapshot }> = [];
  stopped = false;
  constructor(
    inputs: ConstructorParameters<typeof ScriptedEnv>[0],
    opts: ConstructorParameters<typeof ScriptedEnv>[1],
    private readonly epoch: number,
    private readonly every: number,
    private readonly stopAt: number,
  ) {
    super(inputs, opts);
  }
  override waitForWork(count: number, deadline: number | undefined): boolean {
    this.waits++;
    const m = this.machine;
    if (m !== undefined && !this.stopped && (this.waits % this.every === 0 || this.waits === this.stopAt)) {
      const snap = m.snapshot();
      const n = this.checkpoints.length + 1;
      this.checkpoints.push({ data: this.encoder.encode(this.epoch, n, snap), hash: hex(m.stateHash()), snap });
      if (this.waits === this.stopAt) {
        this.stopped = true;
        return false;
      }
    }
    return super.waitForWork(count, deadline);
  }
}

