#!/usr/bin/env -S node --max-semi-space-size=2
/**
 * The `ftvm` command. commander (well kept, typed, generates --help) parses the arguments.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_VM_CONFIG, type VmConfig } from '../log/recording.js';
import type { ScheduledInput } from '../machine/env.js';
import { DEFAULT_SLICE_UNITS } from '../machine/machine.js';
import { chaosWorkload, kvWorkload, loadWorkloadScript, spinWorkload } from '../machine/workloads.js';
import { DeterminismViolation, FtvmError } from '../util/errors.js';
import { hex, inspectFile, loadGuestFile, parseDump, recordToFile, replayFile, travelFile } from './recording-cmds.js';
import { TIMING_DEFAULTS, WAIT_STATES, controlAuth, loadKeyring, parseAddr, reloadSecretsOnSighup, runNode, runStandby, status, type WaitState } from './run-cmds.js';
import { EmbeddedArbiterServer } from '../arbiter/embedded.js';
import { logger } from '../util/log.js';
import { demoGuest, pairDemo } from './demo.js';
import { runDashboard, type DashboardCliOptions } from './dashboard-cmd.js';
import { controlRequest, metricsScrapeToken } from '../service/control.js';
import { FtvmProxy } from '../proxy/proxy.js';
import { replicaSourceFrom } from '../proxy/discovery.js';

const intArg =
  (name: string, min: number, max = Number.MAX_SAFE_INTEGER) =>
  (v: string): number => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be an integer in [${min}, ${max}]`);
    return n;
  };

async function workloadFor(kind: string, ops: number, conns: number, seed: number): Promise<ScheduledInput[]> {
  switch (kind) {
    case 'kv':
      return kvWorkload({ ops, conns, seed });
    case 'spin':
      return spinWorkload({ ops, seed });
    case 'chaos':
      return chaosWorkload({ ops, seed });
    case 'none':
      return [];
    default:
      return loadWorkloadScript(kind);
  }
}

function vmConfig(o: { name: string; memoryMaxPages: number; maxCallDepth: number; arg: string[]; env: string[] }): VmConfig {
  return { ...DEFAULT_VM_CONFIG, name: o.name, memoryMaxPages: o.memoryMaxPages, maxCallDepth: o.maxCallDepth, args: o.arg, env: o.env };
}

const collect = (v: string, prev: string[]): string[] => [...prev, v];

/** What ftvm does with each WASI call it supports (the table in docs/GUEST_ABI.md). */
const WASI_CALL_KINDS: Record<string, string> = {
  args_get: 'deterministic (VM config)', args_sizes_get: 'deterministic (VM config)', environ_get: 'deterministic (VM config)', environ_sizes_get: 'deterministic (VM config)',
  clock_time_get: 'logged (CLOCK)', clock_res_get: 'deterministic', random_get: 'logged (RANDOM)', proc_exit: 'halts the guest (logged HALT)', sched_yield: 'deterministic',
  fd_write: 'output (console, sockets) or disk', fd_read: 'logged on sockets (SOCK_RECV; may block), disk otherwise', fd_close: 'output on sockets (close), disk otherwise',
  fd_seek: 'disk', fd_tell: 'disk', fd_fdstat_get: 'deterministic', fd_fdstat_set_flags: 'deterministic (O_NONBLOCK, O_APPEND)',
  fd_prestat_get: 'deterministic (/data)', fd_prestat_dir_name: 'deterministic (/data)',
  sock_accept: 'logged (SOCK_ACCEPT; may block)', sock_recv: 'logged (SOCK_RECV; may block)', sock_send: 'output', sock_shutdown: 'output (SHUT_WR) / deterministic',
  poll_oneoff: 'logged (POLL; may block)',
  path_open: 'disk', fd_pread: 'disk', fd_pwrite: 'disk', fd_sync: 'disk (writes this replica\'s image)', fd_datasync: 'disk (writes this replica\'s image)',
  fd_filestat_get: 'disk', fd_filestat_set_size: 'disk', fd_filestat_set_times: 'disk', fd_advise: 'disk (no-op)', fd_allocate: 'disk', fd_readdir: 'disk',
  path_filestat_get: 'disk', path_filestat_set_times: 'disk', path_unlink_file: 'disk', path_rename: 'disk', path_create_directory: 'disk', path_remove_directory: 'disk',
  path_readlink: 'disk (no symbolic links: EINVAL)',
};

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('ftvm')
    .description('Fault-tolerant virtual machines: WebAssembly guests recorded on a primary and replayed on a backup.')
    .showHelpAfterError()
    .exitOverride();

  program
    .command('record')
    .description('Run a guest under a scripted or generated input workload and record every nondeterministic event')
    .argument('<guest.wasm>', 'the guest module (see docs/GUEST_ABI.md)')
    .requiredOption('-o, --out <recording>', 'recording file to write')
    .option('-w, --workload <kind|file.json>', 'kv | spin | chaos | none | a JSON script of {atCount, kind, conn, data}', 'kv')
    .option('--ops <n>', 'operations the generated workload sends', intArg('--ops', 0, 10_000_000), 2000)
    .option('--conns <n>', 'client connections of the kv workload', intArg('--conns', 1, 10_000), 8)
    .option('--seed <n>', 'seed of the workload, virtual clock and random bytes', intArg('--seed', 0), 1)
    .option('--slice <units>', 'instructions between input polls while the guest computes', intArg('--slice', 1000), DEFAULT_SLICE_UNITS)
    .option('--name <name>', 'VM name (argv[0] for WASI guests)', 'vm')
    .option('--arg <value>', 'a WASI argument (repeatable)', collect, [])
    .option('--env <K=V>', 'a WASI environment variable (repeatable)', collect, [])
    .option('--memory-max-pages <n>', 'refuse memory.grow past this many 64 KiB pages', intArg('--memory-max-pages', 1, 65536), DEFAULT_VM_CONFIG.memoryMaxPages)
    .option('--max-call-depth <n>', 'deterministic guest call-depth limit', intArg('--max-call-depth', 16, 100_000), DEFAULT_VM_CONFIG.maxCallDepth)
    .option('--disk-size <bytes>', 'give the VM a virtual disk of this many bytes, pre-opened as /data', intArg('--disk-size', 0, 1024 * 1024 * 1024), 0)
    .action(async (guestPath: string, o) => {
      const config = { ...vmConfig(o), ...(o.diskSize > 0 ? { diskBytes: o.diskSize as number } : {}) };
      const guest = await loadGuestFile(guestPath, config.maxCallDepth);
      const inputs = await workloadFor(o.workload, o.ops, o.conns, o.seed);
      const s = await recordToFile(guest, config, inputs, { out: o.out, seed: o.seed, sliceUnits: o.slice, onOutput: (t) => process.stdout.write(t) });
      console.log(`recorded ${s.entries} log entries and ${s.outputs} outputs (${s.outputBytes} bytes) to ${o.out} in ${s.wallMs.toFixed(0)} ms`);
      if (s.halt) console.log(`guest halted: ${s.halt.kind} code ${s.halt.code}${s.halt.message ? ` (${s.halt.message})` : ''}`);
      console.log(`final instruction number ${s.count}`);
      console.log(`final state hash ${hex(s.finalHash)}`);
    });

  program
    .command('replay')
    .description('Replay a recording on a fresh machine; with --verify, exit 0 only if it is identical')
    .argument('<recording>', 'a recording made by `ftvm record`')
    .option('--verify', 'check every output, host call and state hash against the recording; non-zero exit at the first divergence')
    .option('--to <n>', 'time travel: replay to this instruction number and show the machine there (state hash, devices, entries around it)', intArg('--to', 0))
    .option('--dump <addr:len>', 'with --to: hex dump of a guest memory range there (repeatable; decimal or 0x hex; at most 1 MiB)', (v: string, acc: Array<[number, number]>) => [...acc, parseDump(v)], [] as Array<[number, number]>)
    .option('--step', 'with --to: then walk on entry by entry, showing where each leaves the machine')
    .option('--steps <k>', 'with --step: how many entries to walk', intArg('--steps', 1, 1_000_000), 10)
    .option('--around <k>', 'with --to: entries shown either side of the point', intArg('--around', 0, 1000), 5)
    .option('--disk', "with --to: list the virtual disk's files there (path, size, SHA-256)")
    .option('--disk-file <path>', 'with --to: hex dump of one file of the disk there (e.g. /data/kv.db; at most 1 MiB)')
    .action(async (path: string, o: { verify?: boolean; to?: number; dump: Array<[number, number]>; step?: boolean; steps: number; around: number; disk?: boolean; diskFile?: string }) => {
      if (o.to === undefined) {
        if (o.dump.length > 0 || o.step || o.disk || o.diskFile !== undefined) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', '--dump, --step, --disk and --disk-file go with --to <instruction number>');
      } else {
        if (o.verify) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', '--verify replays the whole recording; it does not go with --to');
        const t = await travelFile(path, { to: o.to, dumps: o.dump, around: o.around, steps: o.step ? o.steps : 0, ...(o.disk ? { disk: true } : {}), ...(o.diskFile !== undefined ? { diskFile: o.diskFile } : {}) });
        console.log(t.lines.join('\n'));
        return;
      }
      const s = await replayFile(path);
      console.log(`replayed ${s.entries} entries in ${s.wallMs.toFixed(0)} ms`);
      if (s.halt) console.log(`guest halted: ${s.halt.kind} code ${s.halt.code}${s.halt.message ? ` (${s.halt.message})` : ''}`);
      console.log(`final instruction number ${s.count}`);
      console.log(`final state hash ${hex(s.finalHash)}`);
      if (s.truncated || s.midStep || (s.recordedHash === null && s.halt === null)) {
        const why = s.truncated ? 'the recording is truncated' : 'the recording ends without a final state hash';
        console.error(`ftvm: ${why}: replay stopped at instruction ${s.count}, at the end of the log, without running ahead`);
        process.exitCode = 3;
        return;
      }
      if (o.verify) {
        const same = s.recordedHash !== null && s.finalHash !== null && Buffer.from(s.recordedHash).equals(Buffer.from(s.finalHash)) && s.recordedCount === s.count;
        if (!same && s.halt === null) {
          console.error(`ftvm: verify FAILED: recorded final state ${hex(s.recordedHash)} at ${s.recordedCount}, replayed ${hex(s.finalHash)} at ${s.count}`);
          process.exitCode = 1;
          return;
        }
        console.log(`verify OK: identical to the recording (state hash ${hex(s.recordedHash ?? s.finalHash)} at instruction ${s.recordedHash ? s.recordedCount : s.count})`);
      }
    });

  program
    .command('inspect')
    .description('Describe a recording: header, guest module hash, entry counts, the first entries')
    .argument('<recording>')
    .option('-n, --entries <n>', 'how many entries to list', intArg('--entries', 0), 20)
    .action(async (path: string, o: { entries: number }) => {
      console.log(await inspectFile(path, o));
    });

  program
    .command('check')
    .description('Check a guest module against the guest ABI and instrument it, without running it')
    .argument('<guest.wasm>')
    .action(async (path: string) => {
      // The WASI calls the module imports, each with what ftvm does with it (docs/GUEST_ABI.md), before
      // loading refuses an unsupported one.
      let wasi: string[] = [];
      try {
        const bytes = await readFile(path);
        wasi = WebAssembly.Module.imports(new WebAssembly.Module(bytes)).filter((i) => i.module === 'wasi_snapshot_preview1' && i.kind === 'function').map((i) => i.name);
      } catch {
        // not readable or not wasm: loadGuestFile reports it with its error code
      }
      if (wasi.length > 0) {
        console.log(`WASI preview1 calls imported (${wasi.length}):`);
        for (const name of wasi) console.log(`  ${name.padEnd(26)} ${WASI_CALL_KINDS[name] ?? 'UNSUPPORTED (refused at load: FTVM_ERR_ABI_IMPORT)'}`);
      }
      const g = await loadGuestFile(path);
      console.log(`ok: ${path} is a valid ftvm guest`);
      if (g.instrumented.asyncified) console.log('blocking calls: asyncified (a guest blocked in one can be snapshotted for re-replication)');
      console.log(`imports: ${g.instrumented.imports.map((i) => `${i.module}.${i.name}`).join(', ') || '(none)'}`);
      console.log(`exports: ${g.instrumented.exports.join(', ')}`);
      console.log(`start function: ${g.instrumented.hasStart ? 'yes (metered)' : 'no'}; mutable globals: ${g.instrumented.globalExports.length}`);
    });

  /** The replication mode of a replica (`run`, `standby`): every replica of a VM must use the same. */
  const modeOptions = (cmd: Command): Command =>
    cmd
      .option('--mode <mode>', "replay (the backup replays the primary's log; single-threaded guests) | checkpoint (state transfer: the backup keeps the last checkpoint and goes live from it; any guest)", 'replay')
      .option('--checkpoint-interval-ms <ms>', '--mode checkpoint: a checkpoint at least this often (and at once when outputs wait)', intArg('--checkpoint-interval-ms', 1, 60_000), 20)
      .option('--dirty-tracking <how>', '--mode checkpoint: how the primary finds the pages written since the last checkpoint: barrier (the default: a store barrier marks them) | compare (every page compared with a shadow copy)');

  const run = program
    .command('run')
    .description('Run a guest as the primary (serving clients, streaming its log) or the backup (replaying it) of a fault-tolerant pair')
    .argument('<guest.wasm>', 'the guest module; both replicas must run the same one')
    .requiredOption('--role <role>', 'primary | backup')
    .option('--peer <host:port>', "primary: the backup's channel address; omit to start without a backup (FT off, or with --arbiter: recruit one from the standby pool)")
    .option('--channel <host:port>', "backup: where to listen for the primary's logging channel");
  modeOptions(run);
  nodeOptions(run).action(async (guestPath: string, o) => {
    await runNode(guestPath, o);
  });

  const standbyCmd = program
    .command('standby')
    .description("Join a VM's standby pool at the arbiter: wait until a primary running alone recruits this host, receive a clone of the running VM, and become its backup")
    .argument('<guest.wasm>', "the guest module (must be the primary's)")
    .requiredOption('--channel <host:port>', 'where to listen for the recruiting primary (registered in the pool)')
    .option('--advertise <host:port>', 'the channel address to register in the pool, if primaries reach this host elsewhere (default: --channel)')
    .option('--lease-ttl-ms <ms>', 'lease of the pool entry: a standby that stops renewing drops out after this long', intArg('--lease-ttl-ms', 1000, 3_600_000), 3000);
  modeOptions(standbyCmd);
  nodeOptions(standbyCmd).action(async (guestPath: string, o) => {
    await runStandby(guestPath, o);
  });

  program
    .command('proxy')
    .description("A VM's stable client address: each client TCP connection is a virtual connection of the VM that survives failover (docs/PROXY.md)")
    .requiredOption('--listen <host:port>', 'where clients connect')
    .option('--replicas <list>', "the replicas' --proxy-listen addresses, comma-separated (every replica and standby slot of the VM); or --arbiter")
    .option('--arbiter <url>', "find the serving primary at the VM's arbiter instead of --replicas: ftvm://host:port or etcd://host:port,host:port (the nodes announce their --proxy-listen there when run with --arbiter and --control)")
    .option('--insecure-channel', 'the embedded arbiter runs with --insecure-channel (plain HTTP)')
    .requiredOption('--secret-file <path>', "the VM's secret: the proxy session (and an ftvm:// arbiter's requests) are authenticated with it")
    .option('--accept-secret-file <path>', 'also accept this secret (a rotation)')
    .option('--vm-name <name>', 'VM name', 'vm')
    .option('--input-max-bytes <n>', "per connection: input not yet acknowledged by the VM's backup past which the client's socket is paused", intArg('--input-max-bytes', 64 * 1024), 4 * 1024 * 1024)
    .option('--session-timeout-ms <ms>', 'a replica silent this long (it sends a heartbeat every 200 ms) is taken for stopped or cut off: the proxy looks for the serving primary', intArg('--session-timeout-ms', 400, 600_000), 1500)
    .action(async (o: { listen: string; replicas?: string; arbiter?: string; insecureChannel?: boolean; secretFile: string; acceptSecretFile?: string; vmName: string; inputMaxBytes: number; sessionTimeoutMs: number }) => {
      const keys = loadKeyring(o.secretFile, o.acceptSecretFile, 'ftvm proxy');
      const log = logger('proxy');
      const found = replicaSourceFrom(
        { vmName: o.vmName, replicas: o.replicas?.split(',').map((r) => r.trim()).filter((r) => r.length > 0), arbiter: o.arbiter, insecureArbiter: o.insecureChannel },
        keys,
        log,
      );
      const proxy = new FtvmProxy({ listen: parseAddr('--listen', o.listen), vmName: o.vmName, keys, replicas: found.source, log, inputMaxBytes: o.inputMaxBytes, sessionTimeoutMs: o.sessionTimeoutMs });
      await proxy.start();
      reloadSecretsOnSighup(keys, log);
      await new Promise<void>((resolve) => {
        const stop = (): void => resolve();
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
      });
      await proxy.close();
      await found.close();
      process.exit(0);
    });

  program
    .command('metrics-token')
    .description("Print the read-only bearer token that opens a node's GET /metrics (for Prometheus or curl), derived from the VM's secret")
    .requiredOption('--secret-file <path>', "the VM's secret")
    .addHelpText('after', '\nExample:\n  curl -H "Authorization: Bearer $(ftvm metrics-token --secret-file ftvm.secret)" http://127.0.0.1:7100/metrics\nThe token opens /metrics only; every other request must be signed with the secret itself.')
    .action((o: { secretFile: string }) => {
      console.log(metricsScrapeToken(controlAuth(o).secret));
    });

  program
    .command('status')
    .description("Print a running node's role, process id, host id, start time, epoch, instruction number, lag, log bytes/s and outputs held")
    .argument('<host:port>', 'the node\'s --control address')
    .option('--json', 'print one JSON object')
    .option('--secret-file <path>', "the VM's secret: every control request is signed with it")
    .option('--tls-ca <path>', 'the endpoint serves HTTPS: verify its certificate with this CA (PEM)')
    .option('--pid', "print only the node's process id (e.g. `kill -9 $(ftvm status 127.0.0.1:7100 --pid)`)")
    .addOption(
      new Option('--wait <state>', 'first wait until the node answers (up), serves clients as the primary (serving), or serves with a connected backup (protected)').choices(WAIT_STATES),
    )
    .option('--timeout-ms <ms>', 'give up waiting after this long (exit 2, FTVM_ERR_TIMEOUT)', intArg('--timeout-ms', 1, 3_600_000), 60_000)
    .action(async (addr: string, o: { json?: boolean; pid?: boolean; wait?: WaitState; timeoutMs: number; secretFile?: string; tlsCa?: string }) => {
      await status(addr, controlAuth(o), { json: o.json === true, pid: o.pid === true, timeoutMs: o.timeoutMs, ...(o.wait !== undefined ? { wait: o.wait } : {}) });
    });

  program
    .command('arbiter')
    .description('Run the embedded arbiter: a durable, authenticated test-and-set server deciding which replica of each VM is live (one machine; use etcd across machines)')
    .requiredOption('--data <dir>', 'directory for the durable records (created if missing; written with fsync and atomic rename)')
    .option('--listen <host:port>', 'loopback address to serve on', '127.0.0.1:7300')
    .requiredOption('--secret-file <path>', 'shared secret keying TLS and authenticating every request (>= 16 bytes, mode 600)')
    .option('--accept-secret-file <path>', 'also accept this secret (a rotation; re-read with --secret-file on SIGHUP; a missing file is no extra secret)')
    .option('--insecure-channel', 'plain HTTP instead of TLS-PSK (benchmarks; the replicas need it too)')
    .action(async (o: { data: string; listen: string; secretFile: string; acceptSecretFile?: string; insecureChannel?: boolean }) => {
      const addr = parseAddr('--listen', o.listen);
      const secret = loadKeyring(o.secretFile, o.acceptSecretFile, 'the arbiter');
      const log = logger('arbiter');
      reloadSecretsOnSighup(secret, log);
      const server = await EmbeddedArbiterServer.start({ dataDir: o.data, host: addr.host, port: addr.port, secret, log, ...(o.insecureChannel ? { insecure: true } : {}) });
      log.info({ listen: o.listen, data: o.data }, 'arbiter is listening');
      const stop = (): void => {
        void server.close().finally(() => process.exit(0));
      };
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
      await new Promise<never>(() => undefined);
    });

  program
    .command('dashboard')
    .description("Serve a live page of one VM on loopback: its pair and standbys with their roles, execution lag and log bandwidth over time, held outputs, and each failover and re-replication as a timeline")
    .requiredOption('--arbiter <url>', "the VM's arbiter: ftvm://host:port or etcd://host:port,host:port (its record and standby pool are shown)")
    .option('--secret-file <path>', 'the shared secret (needed for an ftvm:// arbiter)')
    .option('--vm-name <name>', 'the VM to show', 'vm')
    .option('--nodes <host:port,...>', "control addresses (--control) to watch besides the nodes announced at the arbiter (nodes run with --arbiter and --control announce themselves)")
    .option('--listen <host:port>', 'where to serve the page (loopback only)', '127.0.0.1:7400')
    .option('--poll-ms <ms>', 'ask the arbiter and the nodes this often', intArg('--poll-ms', 100, 60_000), 500)
    .addHelpText(
      'after',
      `
The page updates live (server-sent events). If the arbiter is down the page says so and recovers when
it answers again. Example:
  ftvm dashboard --arbiter ftvm://127.0.0.1:7300 --secret-file ftvm.secret --vm-name kv
The VM's nodes announce their --control address at the arbiter; --nodes adds others.
then open http://127.0.0.1:7400/ (from another machine: ssh -L 7400:127.0.0.1:7400 host).`,
    )
    .action(async (o: DashboardCliOptions) => {
      await runDashboard(o);
    });

  program
    .command('switchover')
    .description('Planned handover: the primary stops at an idle point once its backup holds the whole log; the backup goes live there, nothing lost')
    .argument('<host:port>', "the primary's --control address")
    .option('--secret-file <path>', "the VM's secret: every control request is signed with it")
    .option('--tls-ca <path>', 'the endpoint serves HTTPS: verify its certificate with this CA (PEM)')
    .action(async (addr: string, o: { secretFile?: string; tlsCa?: string }) => {
      const r = (await controlRequest(addr, controlAuth(o), 'POST', '/switchover', 30_000)) as { instructionNumber: number; entries: number };
      console.log(`switched over at instruction ${r.instructionNumber} after ${r.entries} log entries; the backup is going live`);
    });

  program
    .command('stop')
    .description('Stop a primary intentionally: its backup is told not to go live')
    .argument('<host:port>', "the primary's --control address")
    .option('--secret-file <path>', "the VM's secret: every control request is signed with it")
    .option('--tls-ca <path>', 'the endpoint serves HTTPS: verify its certificate with this CA (PEM)')
    .action(async (addr: string, o: { secretFile?: string; tlsCa?: string }) => {
      await controlRequest(addr, controlAuth(o), 'POST', '/stop');
      console.log(`stop requested at ${addr}`);
    });

  program
    .command('demo')
    .description('On loopback: an arbiter, a primary, a backup, a standby and the dashboard; kv load, kill -9 of the primary, the backup goes live with nothing lost, the standby is cloned into a new backup (equal state hashes), and its recording is replayed to the primary\'s logged hash')
    .option('--guest <name|path>', 'kv (default), c-server, rust-server, sqlite (SQL transactions on a replicated virtual disk), or a path to a kv-protocol guest', 'kv')
    .option('--ops <n>', 'commands per client (default 300; 40 with sqlite)', intArg('--ops', 1, 1_000_000))
    .option('--clients <n>', 'concurrent clients', intArg('--clients', 1, 1000), 8)
    .option('--offline', 'instead: record a kv session to a file and replay it in one process')
    .option('--keep', 'leave the VM, the arbiter and the dashboard running after the demo (Ctrl-C stops them)')
    .addOption(new Option('--mode <mode>', 'replay (the backup replays the log) | checkpoint (state transfer: the backup keeps the last checkpoint)').choices(['replay', 'checkpoint']).default('replay'))
    .action(async (o: { guest: string; ops?: number; clients: number; offline?: boolean; keep?: boolean; mode: 'replay' | 'checkpoint' }) => {
      if (!o.offline) {
        if (!(await pairDemo(o))) process.exitCode = 1;
        return;
      }
      const dir = await mkdtemp(join(tmpdir(), 'ftvm-demo-'));
      try {
        const out = join(dir, 'kv.ftlog');
        const guest = await loadGuestFile(demoGuest(o.guest).path);
        const opsPerClient = o.ops ?? 300;
        console.log(`== ftvm demo (offline): deterministic record and replay of a key/value guest ==`);
        console.log(`1. recording ${opsPerClient * o.clients} RESP commands from ${o.clients} clients on ${o.guest} (the primary's view)`);
        const r = await recordToFile(guest, DEFAULT_VM_CONFIG, kvWorkload({ ops: opsPerClient * o.clients, conns: o.clients, seed: 7 }), { out, seed: 7, sliceUnits: DEFAULT_SLICE_UNITS });
        for (const s of r.sampleOutputs) console.log(`   reply ${s}`);
        console.log(`   ${r.entries} log entries, ${r.outputs} outputs, final instruction ${r.count}`);
        console.log(`   primary state hash  ${hex(r.finalHash)}`);
        console.log(`2. replaying the log on a fresh machine (the backup's view)`);
        const p = await replayFile(out);
        console.log(`   every host call, delivery and output matched; final instruction ${p.count}`);
        console.log(`   replica state hash  ${hex(p.finalHash)}`);
        const equal = r.finalHash !== null && p.finalHash !== null && Buffer.from(r.finalHash).equals(Buffer.from(p.finalHash)) && r.count === p.count;
        console.log(equal ? '3. IDENTICAL: the backup reproduced the primary exactly.' : '3. DIFFERENT: replay diverged!');
        if (!equal) process.exitCode = 1;
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });

  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    const e = err as { code?: string; exitCode?: number };
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) {
      return e.exitCode ?? 2; // commander already printed help or the error
    }
    if (err instanceof DeterminismViolation) {
      console.error(`ftvm: ${err.message}`);
      return 1;
    }
    if (err instanceof FtvmError) {
      console.error(`ftvm: error [${err.code}]: ${err.message}`);
      return 2;
    }
    console.error(`ftvm: internal error: ${(err as Error).stack ?? String(err)}`);
    return 70;
  }
}

const code = await main(process.argv);
process.exitCode = code;

/** The options every replica process takes (`run` and `standby`). */
function nodeOptions(cmd: Command): Command {
  return cmd
    .option('--service <host:port>', 'where clients connect (each TCP connection is a virtual connection of the guest); a backup or standby serves there once it goes live')
    .option('--proxy-listen <host:port>', 'serve `ftvm proxy` here while this node is the serving primary (proxied connections survive failover: docs/PROXY.md); a backup or standby serves there once it goes live')
    .option('--proxy-reattach-timeout-ms <ms>', 'a proxied connection whose proxy does not re-attach within this long is closed', intArg('--proxy-reattach-timeout-ms', 100, 3_600_000), 30_000)
    .option('--control <host:port>', 'HTTP/JSON control endpoint for `ftvm status|stop|switchover` (signed requests; loopback unless --tls-cert/--tls-key)')
    .option('--secret-file <path>', 'shared secret keying the channel (TLS-PSK), its frames, the arbiter and the control endpoint (same file on every replica, >= 16 bytes, mode 600)')
    .option('--accept-secret-file <path>', 'also accept this secret from peers and clients (a rotation; both files re-read on SIGHUP; a missing file is no extra secret)')
    .option('--insecure-channel', 'run the logging channel and the arbiter traffic over plain TCP (authenticated, NOT encrypted): for benchmarks')
    .option('--tls-cert <path>', 'PEM certificate the control endpoint serves HTTPS with (required for a non-loopback --control)')
    .option('--tls-key <path>', 'PEM private key of --tls-cert')
    .option('--vm-name <name>', 'VM name; every replica must agree', 'vm')
    .option('--node-id <id>', "this replica's identity at the arbiter (default: host-role-pid)")
    .option('--host-id <id>', 'this machine in the standby pool: a primary never recruits a standby with its own host id', hostname())
    .option('--no-recruit', 'a primary running alone does not recruit standbys from the pool')
    .option('--arbiter <url>', 'who decides which replica is live after a failure: ftvm://host:port (an `ftvm arbiter` server) or etcd://host:port,host:port')
    .option('--fail-timeout-ms <ms>', 'silence on the logging channel for this long means the peer failed', intArg('--fail-timeout-ms', 10, 600_000), TIMING_DEFAULTS.failTimeoutMs)
    .option('--no-fast-failover', 'wait out --fail-timeout-ms even when the peer\'s process is known to be gone (a refused connection to its liveness port or channel address); by default that evidence fails over at once')
    .option('--arbiter-deadline-ms <ms>', 'deadline of each arbiter call (and retry interval when it is unreachable)', intArg('--arbiter-deadline-ms', 10, 600_000), TIMING_DEFAULTS.arbiterDeadlineMs)
    .option('--epoch <n>', 'epoch of this pair (frames from older epochs are refused)', intArg('--epoch', 0), 1)
    .option('--heartbeat-interval-ms <ms>', 'heartbeat/ACK interval on the channel', intArg('--heartbeat-interval-ms', 1, 60_000), TIMING_DEFAULTS.heartbeatIntervalMs)
    .option('--grant-interval-ms <ms>', 'primary: progress grants to the backup at most this often while the guest computes', intArg('--grant-interval-ms', 1, 60_000), TIMING_DEFAULTS.grantIntervalMs)
    .option('--lag-max-ms <ms>', 'primary: slow the guest when the backup replays more than this far behind', intArg('--lag-max-ms', 1, 600_000), TIMING_DEFAULTS.lagMaxMs)
    .option('--tick-ms <ms>', 'driver tick (timeouts and heartbeats are checked this often)', intArg('--tick-ms', 1, 1000), TIMING_DEFAULTS.tickMs)
    .option('--state-hash-interval-ms <ms>', 'primary: log a state hash at an idle point this often for the backup to check (0 = only on request)', intArg('--state-hash-interval-ms', 0), TIMING_DEFAULTS.stateHashIntervalMs)
    .option('--slice <units>', 'instructions between input polls while the guest computes', intArg('--slice', 1000))
    .option('--record <dir>', 'backup/standby: keep a continuous recording of the VM (segments from the last snapshot on) for `ftvm replay --to`')
    .option('--record-max-bytes <n>', 'with --record: the segments kept take at most this many bytes (oldest deleted first)', intArg('--record-max-bytes', 4 * 1024 * 1024), 256 * 1024 * 1024)
    .option('--disk <file>', "this replica's disk image: the VM gets a virtual disk, pre-opened as /data (same --disk-size on every replica; each writes its own file)")
    .option('--disk-size <bytes>', 'size of the virtual disk (its quota: writes past it get ENOSPC)', intArg('--disk-size', 0, 1024 * 1024 * 1024), 64 * 1024 * 1024)
    .option('--arg <value>', 'a WASI argument, argv[1..] (repeatable; the same on every replica)', collect, []);
}
