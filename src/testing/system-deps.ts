/**
 * The system components the test suite needs, in one place.
 *
 * Every Debian package the tests use is listed here, once, with a probe that tells whether the
 * component is really there. `scripts/run-tests.ts` (the README's `npm test`) reads this list and
 * installs what is missing from Debian's archive when it can (root, or passwordless sudo), or stops
 * at once naming the exact command to run. `.ci/run` calls `npm test` and nothing else of substance.
 *
 * Tests say what they need with `needs(...)` (options for `test`/`describe`) and
 * `requireComponents(...)` (called in the body or a `before` hook): a missing component fails the
 * test with the install hint. Only an explicit partial run (`FTVM_TEST_PARTIAL=1`) skips instead, and
 * the runner's last line counts the skips and says why.
 */
import { accessSync, constants, existsSync } from 'node:fs';
import path from 'node:path';

export type ComponentId = 'clang-wasi' | 'rust-wasi' | 'redis-tools' | 'redis-server' | 'etcd' | 'chromium';

export interface Component {
  readonly id: ComponentId;
  /** What the tests use it for (printed in hints). */
  readonly purpose: string;
  /** Debian packages that provide it. */
  readonly packages: readonly string[];
  /** Commands that must be on PATH, or absolute paths of files that must exist. */
  readonly probes: readonly string[];
}

export const COMPONENTS: readonly Component[] = [
  {
    id: 'clang-wasi',
    purpose: 'compiles the C example guests (clang --target=wasm32-wasi with wasi-libc)',
    packages: ['clang', 'lld', 'wasi-libc', 'libclang-rt-14-dev-wasm32'],
    probes: ['clang', 'wasm-ld', '/usr/lib/wasm32-wasi/libc.a', '/usr/lib/llvm-14/lib/clang/14.0.6/lib/wasi/libclang_rt.builtins-wasm32.a'],
  },
  {
    id: 'rust-wasi',
    purpose: "compiles the Rust example guest with Debian's rustc for wasm32-wasi (called as /usr/bin/rustc: a rustup toolchain earlier on PATH may lack the target)",
    packages: ['rustc', 'libstd-rust-dev-wasm32'],
    probes: ['/usr/bin/rustc', '/usr/lib/rustlib/wasm32-wasi/lib/self-contained/libc.a'],
  },
  {
    id: 'redis-tools',
    purpose: 'redis-cli and redis-benchmark, real clients of the kv guest',
    packages: ['redis-tools'],
    probes: ['redis-cli', 'redis-benchmark'],
  },
  {
    id: 'redis-server',
    purpose: 'a real Redis server, the reference peer of the client and fault-proxy tests',
    packages: ['redis-server'],
    probes: ['redis-server'],
  },
  {
    id: 'etcd',
    purpose: 'etcd, the production arbiter',
    packages: ['etcd-server', 'etcd-client'],
    probes: ['etcd', 'etcdctl'],
  },
  {
    id: 'chromium',
    purpose: 'headless Chromium, driven by playwright-core, for the dashboard\'s browser test',
    packages: ['chromium'],
    // The command (found on PATH, so a restricted PATH shows it missing) and the path the test launches.
    probes: ['chromium', '/usr/bin/chromium'],
  },
];

/** Every Debian package of the list, in order, without repeats. */
export function allPackages(components: readonly Component[] = COMPONENTS): string[] {
  return [...new Set(components.flatMap((c) => c.packages))];
}

function onPath(command: string): boolean {
  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter((d) => d !== '');
  for (const dir of dirs) {
    try {
      accessSync(path.join(dir, command), constants.X_OK);
      return true;
    } catch {
      // not in this directory
    }
  }
  return false;
}

/** Whether one probe (a command on PATH, or an absolute path) is satisfied. */
export function probeOk(probe: string): boolean {
  return path.isAbsolute(probe) ? existsSync(probe) : onPath(probe);
}

export function isPresent(c: Component): boolean {
  return c.probes.every(probeOk);
}

export function missingComponents(components: readonly Component[] = COMPONENTS): Component[] {
  return components.filter((c) => !isPresent(c));
}

export function componentById(id: ComponentId): Component {
  const c = COMPONENTS.find((x) => x.id === id);
  if (c === undefined) throw new Error(`assertion: unknown component ${id}`);
  return c;
}

/** The one command that installs these components on Debian. */
export function installCommand(components: readonly Component[], asRoot: boolean): string {
  const pkgs = allPackages(components).join(' ');
  const sudo = asRoot ? '' : 'sudo ';
  return `${sudo}apt-get update && ${sudo}apt-get install -y --no-install-recommends ${pkgs}`;
}

function describeMissing(c: Component): string {
  const absent = c.probes.filter((p) => !probeOk(p));
  return `${c.id} (${absent.join(', ')} not found; Debian package${c.packages.length > 1 ? 's' : ''} ${c.packages.join(' ')})`;
}

/** True when the user asked for a partial run: tests whose components are missing are skipped. */
export function partialRun(): boolean {
  const v = process.env.FTVM_TEST_PARTIAL;
  return v !== undefined && v !== '' && v !== '0';
}

/** The error a test fails with when a component it needs is missing. */
export class MissingComponentError extends Error {
  readonly code = 'FTVM_ERR_MISSING_COMPONENT';
  constructor(readonly missing: readonly Component[]) {
    super(
      `this test needs ${missing.map(describeMissing).join('; ')}. ` +
        `Install with: ${installCommand(missing, process.getuid?.() === 0)} ` +
        `(the README's \`npm test\` does this itself when it runs as root or with passwordless sudo; ` +
        `FTVM_TEST_PARTIAL=1 npm test skips such tests instead).`,
    );
    this.name = 'MissingComponentError';
  }
}

/** Throws `MissingComponentError` unless every component is present. */
export function requireComponents(...ids: ComponentId[]): void {
  const missing = ids.map(componentById).filter((c) => !isPresent(c));
  if (missing.length > 0) throw new MissingComponentError(missing);
}

/**
 * Options for `test`/`describe` that need these components. All present: `{}`. Missing in a
 * partial run: `{ skip: reason }` (the runner's closing line counts skips by reason). Missing
 * otherwise: `{}` — the test's own `requireComponents` then fails it with the install hint (a
 * missing component never passes silently as a skip).
 */
export function needs(...ids: ComponentId[]): { skip?: string } {
  const missing = ids.map(componentById).filter((c) => !isPresent(c));
  if (missing.length === 0 || !partialRun()) return {};
  return { skip: `missing ${missing.map((c) => c.id).join(', ')} (apt-get install ${allPackages(missing).join(' ')})` };
}
