/**
 * The client service's early bind (ClientService.listen): a backup that won the claim binds its service
 * address before its vCPU finished the takeover; connections that arrive in between are held, unread,
 * and served in the order they came once the service starts. Real sockets on 127.0.0.1, no processes.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { ClientService, type InputSink } from '../src/service/clients.js';
import { freePort } from '../src/testing/processes.js';
import { silentLogger } from '../src/util/log.js';

function recordingSink(): InputSink & { events: string[]; waitFor(n: number): Promise<void> } {
  const events: string[] = [];
  let wake: (() => void) | undefined;
  return {
    events,
    backlogBytes: 0,
    input(kind, conn, data) {
      events.push(`${kind} ${conn}${data ? ` ${Buffer.from(data).toString('utf8')}` : ''}`);
      wake?.();
    },
    async waitFor(n: number) {
      const until = Date.now() + 5000;
      while (events.length < n && Date.now() < until) await new Promise<void>((r) => ((wake = r), setTimeout(r, 50)));
    },
  };
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => resolve(s));
    s.once('error', reject);
  });
}

test('an early listen holds connections, unread, and start serves them in the order they came', async () => {
  const port = await freePort();
  const svc = new ClientService({ host: '127.0.0.1', port, log: silentLogger });
  await svc.listen();
  const a = await connect(port);
  a.write('first');
  await new Promise((r) => setTimeout(r, 30)); // a is accepted (held) before b connects
  const b = await connect(port);
  b.write('second');
  await new Promise((r) => setTimeout(r, 50));
  const sink = recordingSink();
  assert.equal(sink.events.length, 0);
  svc.firstConnectionId = 7;
  await svc.start(sink);
  await sink.waitFor(4);
  assert.deepEqual(sink.events.slice(0, 4).sort(), ['data 7 first', 'data 8 second', 'open 7', 'open 8']);
  assert.ok(sink.events.indexOf('open 7') < sink.events.indexOf('open 8'), sink.events.join(', '));
  // Served from now on: a reply reaches the held client, and a new connection is accepted directly.
  const got = new Promise<string>((r) => a.once('data', (d: Buffer) => r(d.toString('utf8'))));
  svc.deliver([{ seq: 1, n: 1, kind: 'net', conn: 7, fd: 0, data: Buffer.from('reply') }]);
  assert.equal(await got, 'reply');
  const c = await connect(port);
  c.write('third');
  await sink.waitFor(6);
  assert.ok(sink.events.includes('open 9') && sink.events.includes('data 9 third'), sink.events.join(', '));
  for (const s of [a, b, c]) s.destroy();
  await svc.close();
});

test('close before start drops the held connections', async () => {
  const port = await freePort();
  const svc = new ClientService({ host: '127.0.0.1', port, log: silentLogger });
  await svc.listen();
  const a = await connect(port);
  const closed = new Promise<void>((r) => a.once('close', () => r()));
  a.on('error', () => undefined);
  a.resume();
  await new Promise((r) => setTimeout(r, 30));
  await svc.close();
  await closed;
});
