/**
 * The replication cores are pure state machines (docs/ARCHITECTURE.md): no sockets, timers, clocks or
 * randomness, and no dependency on the wire codec or the vCPU worker protocol — the simulator and the
 * real drivers run the same cores. This test reads their sources and holds them to it.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { REPO_ROOT } from '../src/testing/pair.js';

const CORES = ['src/replication/primary.ts', 'src/replication/backup.ts', 'src/replication/messages.ts'];
/** What a core may import: the protocol's messages, assertions and errors, and each other. */
const ALLOWED = new Set(['./messages.js', './primary.js', '../util/errors.js', '../machine/machine.js']);
const FORBIDDEN: Array<[RegExp, string]> = [
  [/\bsetTimeout\b|\bsetInterval\b|\bsetImmediate\b|\bqueueMicrotask\b/, 'timers'],
  [/\bDate\.now\b|\bperformance\.now\b|\bprocess\.hrtime\b|new Date\(/, 'clocks'],
  [/\bMath\.random\b|\brandomBytes\b|\bcrypto\./, 'randomness'],
  [/\bprocess\.\w+/, 'the process'],
];

test('the replication cores import only the protocol messages and stay free of timers, clocks, randomness and I/O', () => {
  for (const file of CORES) {
    const src = readFileSync(join(REPO_ROOT, file), 'utf8');
    const code = src.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '');
    for (const m of code.matchAll(/^\s*import\s+(type\s+)?[^'"]*?from\s+'([^']+)'/gm)) {
      const spec = m[2]!;
      assert.ok(ALLOWED.has(spec), `${file} imports ${spec}`);
      if (spec === '../machine/machine.js') assert.ok(m[1] !== undefined, `${file} may import only types from the machine`);
    }
    assert.doesNotMatch(code, /\bimport\(/, `${file} imports dynamically`);
    for (const [re, what] of FORBIDDEN) assert.doesNotMatch(code, re, `${file} uses ${what}`);
  }
});
