/**
 * SVG charts of the benchmark suite's results, drawn by Vega-Lite (compiled to a Vega spec and rendered
 * headless to SVG by Vega's own renderer: no browser, no canvas). Chosen because it is the standard
 * declarative chart grammar, renders to SVG in Node with no native code, and keeps this file to data
 * and encodings instead of hand-placed coordinates.
 */
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

async function render(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

export interface ThroughputPoint {
  system: string;
  conns: number;
  opsPerSec: number;
}

/** Throughput by number of connections, one line per system. */
export function throughputChart(points: readonly ThroughputPoint[], subtitle: string): Promise<string> {
  return render({
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'Throughput by connections (closed loop, SET, 3-byte values)', subtitle },
    width: 520,
    height: 300,
    background: 'white',
    data: { values: points.map((p) => ({ ...p })) },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'conns', type: 'ordinal', title: 'connections' },
      y: { field: 'opsPerSec', type: 'quantitative', title: 'operations / s' },
      color: { field: 'system', type: 'nominal', title: 'system' },
    },
  });
}

export interface LatencyPoint {
  system: string;
  conns: number;
  percentile: string;
  ms: number;
}

/** Latency percentiles (p50, p99) per system, one panel per connection count. */
export function latencyChart(points: readonly LatencyPoint[], subtitle: string): Promise<string> {
  return render({
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'Latency percentiles (ms, log scale)', subtitle },
    background: 'white',
    data: { values: points.map((p) => ({ ...p })) },
    mark: { type: 'point', filled: true, size: 90 },
    encoding: {
      column: { field: 'conns', type: 'ordinal', title: 'connections' },
      x: { field: 'system', type: 'nominal', title: null, axis: { labelAngle: -40 } },
      y: { field: 'ms', type: 'quantitative', title: 'ms', scale: { type: 'log' } },
      color: { field: 'system', type: 'nominal', legend: null },
      shape: { field: 'percentile', type: 'nominal' },
    },
    width: { step: 36 },
    height: 260,
  });
}

export interface TimelineSegment {
  segment: string;
  startMs: number;
  endMs: number;
}

/** The failover timeline: kill → detection → drain + claim → go-live → the client's first reply. */
export function failoverChart(segments: readonly TimelineSegment[], subtitle: string): Promise<string> {
  return render({
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'Failover timeline after kill -9 of the primary (median of runs)', subtitle },
    width: 560,
    height: 160,
    background: 'white',
    data: { values: segments.map((s, i) => ({ ...s, order: i })) },
    mark: { type: 'bar', height: 22 },
    encoding: {
      y: { field: 'segment', type: 'nominal', sort: { field: 'order' }, title: null },
      x: { field: 'startMs', type: 'quantitative', title: 'ms after the kill' },
      x2: { field: 'endMs' },
      color: { field: 'segment', type: 'nominal', legend: null, sort: { field: 'order' } },
    },
  });
}
