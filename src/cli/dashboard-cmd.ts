/**
 * `ftvm dashboard`: checks its arguments (stable error codes), opens the arbiter and serves the page.
 */
import { parseArbiterUrl, openArbiter } from '../arbiter/index.js';
import { isValidVmName } from '../arbiter/record.js';
import { DashboardServer } from '../dashboard/server.js';
import { FtvmError } from '../util/errors.js';
import { logger } from '../util/log.js';
import { parseAddr, readSecret } from './run-cmds.js';

export interface DashboardCliOptions {
  arbiter: string;
  secretFile?: string;
  vmName: string;
  nodes?: string;
  listen: string;
  pollMs: number;
}

/** Loopback only: the page shows the VM's topology and is not authenticated. */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

export function parseNodeList(v: string | undefined): string[] {
  if (v === undefined) return [];
  const list = v.split(',').map((s) => s.trim());
  if (list.some((s) => s === '')) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--nodes ${JSON.stringify(v)}: an empty entry (expected host:port,host:port,...)`);
  const seen = new Set<string>();
  for (const n of list) {
    parseAddr('--nodes', n);
    if (seen.has(n)) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--nodes: ${n} is listed twice`);
    seen.add(n);
  }
  return list;
}

export async function runDashboard(o: DashboardCliOptions): Promise<void> {
  const spec = parseArbiterUrl(o.arbiter);
  if (!isValidVmName(o.vmName)) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--vm-name ${JSON.stringify(o.vmName)} must be 1–128 characters of [A-Za-z0-9._-]`);
  const listen = parseAddr('--listen', o.listen);
  if (!isLoopbackHost(listen.host)) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--listen ${o.listen}: the dashboard serves on loopback only (127.0.0.0/8, ::1 or localhost); reach it from elsewhere through an SSH tunnel`);
  }
  const nodes = parseNodeList(o.nodes);
  if (o.secretFile === undefined) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `the dashboard needs --secret-file (the VM's shared secret: the nodes' control endpoints${spec.kind === 'embedded' ? ' and the arbiter' : ''} answer only requests signed with it)`);
  }
  const secret = await readSecret(o.secretFile, true);
  const log = logger('dashboard', { vm: o.vmName });
  const arbiter = openArbiter(o.arbiter, secret, { log });
  const server = new DashboardServer({ arbiter, arbiterUrl: o.arbiter, vm: o.vmName, nodes, host: listen.host, port: listen.port, pollMs: o.pollMs, log, controlAuth: { secret } });
  try {
    await server.start();
  } catch (err) {
    await arbiter.close();
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE' || code === 'EADDRNOTAVAIL' || code === 'EACCES') throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--listen ${o.listen}: cannot listen there (${code})`);
    throw err;
  }
  const a = server.address!;
  const url = `http://${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}/`;
  log.info({ url, nodes, arbiter: o.arbiter }, 'dashboard is serving');
  console.log(`ftvm dashboard for VM "${o.vmName}": ${url}`);
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    void Promise.allSettled([server.close(), arbiter.close()]).finally(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  await new Promise<never>(() => undefined);
}
