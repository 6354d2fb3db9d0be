/**
 * The process drivers take time, sockets and the vCPU only through their injected environment
 * (src/replication/env.ts), so that the simulator runs exactly the code that ships: no driver file
 * touches timers, clocks, sockets, the worker-thread Vcpu or the TCP client service directly.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const DRIVERS = [
  'src/replication/primary-node.ts',
  'src/replication/node.ts',
  'src/replication/standby.ts',
  'src/replication/node-common.ts',
  'src/channel/endpoints.ts',
  'src/channel/connection.ts',
];

const FORBIDDEN: Array<[RegExp, string]> = [
  [/\bsetTimeout\s*\(/, 'setTimeout'],
  [/\bsetInterval\s*\(/, 'setInterval'],
  [/\bsetImmediate\s*\(/, 'setImmediate'],
  [/\bDate\.now\s*\(/, 'Date.now'],
  [/\bperformance\.now\s*\(/, 'performance.now'],
  [/(?<!\.)\brandomBytes\s*\(/, 'crypto randomBytes'],
  [/from\s+'node:(net|tls|dgram|http|https|worker_threads)'/, 'a node socket or thread module'],
  [/\bnew\s+Vcpu\s*\(/, 'the worker-thread Vcpu'],
  [/\bnew\s+ClientService\s*\(/, 'the TCP client service'],
];

/** The source without comments (a comment may name what the code must not call). */
function code(path: string): string {
  const src = readFileSync(fileURLToPath(new URL(`../../${path}`, import.meta.url)), 'utf8');
  return src.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:])\/\/.*$/gm, '$1');
}

for (const file of DRIVERS) {
  test(`${file} goes through its injected environment (no timers, clocks, sockets or vCPU of its own)`, () => {
    const src = code(file);
    assert.ok(src.length > 500, `${file} was not read`);
    for (const [re, what] of FORBIDDEN) assert.doesNotMatch(src, re, `${file} uses ${what} directly; take it from NodeEnv (src/replication/env.ts)`);
  });
}

test('the check itself notices a forbidden call', () => {
  const sample = 'const t = setTimeout(() => 1, 5); const n = performance.now();';
  assert.match(sample, FORBIDDEN[0]![0]);
  assert.match(sample, FORBIDDEN[4]![0]);
});
