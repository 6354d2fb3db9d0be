/**
 * What a checkpointing primary tells operators and benchmarks about its checkpoints (issue #17): served by
 * a checkpoint node's control endpoint as Prometheus metrics (`GET /metrics`: the node's NodeMetrics
 * registry, ftvm_checkpoint_*) and as the recent pause samples (`GET /checkpoint/pauses/<n>`, for exact
 * quantiles over a window).
 *
 * - pause: how long the guest stood still while a checkpoint was captured (the vCPU worker's copy of the
 *   guest's state at an idle point; with the store barrier, the copy of the dirty pages only);
 * - encode: the I/O thread's time to turn the snapshot into a CHECKPOINT (the delta against the shadow;
 *   the guest keeps running meanwhile);
 * - counts and bytes of checkpoints captured and of CHECKPOINT data sent (resends included).
 *
 * Bounded: the last PAUSE_RING samples are kept (a window asks for the samples after a sequence number
 * and is told when some fell out of the ring).
 */
import type { NodeMetrics } from '../service/metrics.js';

export const PAUSE_RING = 8192;

export interface CheckpointSample {
  pauseMs: number;
  encodeMs: number;
  bytes: number;
  dirtyPages: number;
}

export class CheckpointMetrics {
  private readonly pauses = new Float64Array(PAUSE_RING);
  private readonly encodes = new Float64Array(PAUSE_RING);
  /** Checkpoints captured so far (the sequence number of the newest sample). */
  captured = 0;
  bytesCaptured = 0;
  bytesSent = 0;
  dirtyPages = 0;

  /** `node`: the node's Prometheus metrics, fed here (absent: samples and totals only). */
  constructor(private readonly node?: NodeMetrics) {}

  onCaptured(s: CheckpointSample): void {
    const i = this.captured % PAUSE_RING;
    this.pauses[i] = s.pauseMs;
    this.encodes[i] = s.encodeMs;
    this.captured++;
    this.bytesCaptured += s.bytes;
    this.dirtyPages += s.dirtyPages;
    this.node?.checkpoints.inc({ direction: 'out' });
    this.node?.checkpointBytes.inc({ direction: 'out' }, s.bytes);
    this.node?.checkpointPause.observe(s.pauseMs / 1000);
    this.node?.checkpointEncode.observe(s.encodeMs / 1000);
  }

  onSent(bytes: number): void {
    this.bytesSent += bytes;
    this.node?.checkpointSentBytes.inc(bytes);
  }

  /**
   * The samples of the checkpoints after the `after`-th (at most the last PAUSE_RING), oldest first.
   * `lost`: how many of the asked-for samples fell out of the ring.
   */
  samplesAfter(after: number): { captured: number; lost: number; pauseMs: number[]; encodeMs: number[] } {
    const from = Math.max(0, Math.min(after, this.captured));
    const first = Math.max(from, this.captured - PAUSE_RING);
    const pauseMs: number[] = [];
    const encodeMs: number[] = [];
    for (let k = first; k < this.captured; k++) {
      pauseMs.push(this.pauses[k % PAUSE_RING]!);
      encodeMs.push(this.encodes[k % PAUSE_RING]!);
    }
    return { captured: this.captured, lost: first - from, pauseMs, encodeMs };
  }

  totals(): { captured: number; bytesCaptured: number; bytesSent: number; dirtyPages: number } {
    return { captured: this.captured, bytesCaptured: this.bytesCaptured, bytesSent: this.bytesSent, dirtyPages: this.dirtyPages };
  }
}
