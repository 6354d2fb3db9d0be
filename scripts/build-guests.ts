// Builds the example guests into build/guests/<name>.wasm and checks each one against the guest
// ABI (docs/GUEST_ABI.md): imports only from the ABI (with the right signatures), one memory that
// is neither imported nor shared, no passive data segments, only the accepted wasm features, and
// the exports the guest shape needs.
//
//   node dist/scripts/build-guests.js [--force] [--update-prebuilt] [name ...]
//
//   --force            rebuild even if the output is newer than all its sources
//   --update-prebuilt  after building the C guests with clang, refresh guests/c/prebuilt/*.wasm
//   name ...           build only these guests (kv, spin, chaos, compute_c, c_server, threaded_kv,
//                      sqlite_server, rust_server, kernels_as, kernels_c)
//
// sqlite_server also compiles SQLite's amalgamation, fetched once with `npm pack better-sqlite3@12.11.1`
// into build/cache/ (no native build; no other download). Without clang, or when the fetch fails, the
// checked-in prebuilt module is used.
//   --check file.wasm ...  only check existing modules against the guest ABI (no build)
//
// AssemblyScript guests are compiled with the AssemblyScript compiler's API (no child process).
// C guests are compiled with clang (--target=wasm32-wasi) if it is on PATH; otherwise the
// checked-in prebuilt module from guests/c/prebuilt/ is copied, so Node + npm alone suffice.
// The Rust guest is compiled with Debian's rustc (/usr/bin/rustc, by path: a rustup toolchain without
// the wasm32-wasi target may come first on PATH) and libstd-rust-dev-wasm32; without them, the
// checked-in prebuilt module is copied.
// A guest is skipped when its output is newer than all of its sources and was built with the same
// command line (recorded in build/guests/.build-stamps.json).

import { spawn, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

// ---------------------------------------------------------------------------------------------
// Paths

/** The repository root: the nearest ancestor of this script holding the ftvm package.json
 *  (dist/scripts/build-guests.js -> ../../, but also works if run from scripts/ directly). */
function findRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = path.join(dir, "package.json");
    if (existsSync(pkg)) {
      try {
        const name: unknown = (JSON.parse(readFileSync(pkg, "utf8")) as { name?: unknown }).name;
        if (name === "ftvm") return dir;
      } catch {
        // keep looking
      }
    }
    const up = path.dirname(dir);
    if (up === dir) return fileURLToPath(new URL("../../", import.meta.url));
    dir = up;
  }
}

const ROOT = findRoot();
const OUT_DIR = path.join(ROOT, "build", "guests");
const STAMPS = path.join(OUT_DIR, ".build-stamps.json");
const rel = (p: string): string => path.relative(ROOT, p) || ".";

// ---------------------------------------------------------------------------------------------
// Guest table

type Shape = "reactor" | "command" | "library";

interface AsGuest {
  kind: "as";
  name: string;
  entry: string;
  runtime: "incremental" | "minimal" | "stub";
  /** Files and directories (all *.ts inside) whose change triggers a rebuild. */
  sources: string[];
  shape: Shape;
  exports: string[];
}

interface CGuest {
  kind: "c";
  name: string;
  source: string;
  flags: string[];
  sources: string[];
  shape: Shape;
  exports: string[];
  /** Also compile SQLite's amalgamation (fetched with `npm pack`, see sqliteDir). */
  sqlite?: boolean;
  /** More files given to clang after `source` (e.g. an assembly file). */
  extra?: string[];
  /**
   * A wasi-threads guest (checkpoint mode only): it imports a shared memory (env.memory) and
   * wasi.thread-spawn, exports wasi_thread_start, and uses atomics and passive data segments.
   */
  threads?: boolean;
}

interface RustGuest {
  kind: "rust";
  name: string;
  source: string;
  flags: string[];
  sources: string[];
  shape: Shape;
  exports: string[];
}

type Guest = AsGuest | CGuest | RustGuest;

const SDK = "guests/sdk";

const GUESTS: Guest[] = [
  {
    kind: "as", name: "kv", entry: "guests/kv/kv.ts", runtime: "incremental",
    sources: ["guests/kv", SDK], shape: "reactor", exports: ["ftvm_init", "ftvm_step"],
  },
  {
    kind: "as", name: "spin", entry: "guests/spin/spin.ts", runtime: "stub",
    sources: ["guests/spin", SDK], shape: "reactor", exports: ["ftvm_init", "ftvm_step"],
  },
  {
    kind: "as", name: "chaos", entry: "guests/chaos/chaos.ts", runtime: "stub",
    sources: ["guests/chaos", SDK], shape: "reactor", exports: ["ftvm_init", "ftvm_step"],
  },
  {
    kind: "c", name: "compute_c", source: "guests/c/compute.c",
    flags: ["--target=wasm32-wasi", "-O2", "-Wall"],
    sources: ["guests/c/compute.c"], shape: "command", exports: ["_start"],
  },
  {
    kind: "c", name: "c_server", source: "guests/c-server/server.c",
    flags: ["--target=wasm32-wasi", "-O2", "-Wall"],
    sources: ["guests/c-server"], shape: "command", exports: ["_start"],
  },
  {
    // Freestanding (no wasi-libc: Debian's is not built with atomics, so wasm-ld refuses --shared-memory with it).
    kind: "c", name: "threaded_kv", source: "guests/threaded-kv/server.c", extra: ["guests/threaded-kv/thread_start.s"],
    flags: [
      "--target=wasm32-wasi", "-O2", "-Wall", "-nostdlib", "-ffreestanding", "-matomics", "-mbulk-memory",
      "-Wl,--shared-memory", "-Wl,--import-memory", "-Wl,--max-memory=67108864",
      "-Wl,--export=wasi_thread_start", "-Wl,--export=_start", "-Wl,--no-entry",
    ],
    sources: ["guests/threaded-kv"], shape: "command", exports: ["_start", "wasi_thread_start"], threads: true,
  },
  {
    kind: "c", name: "sqlite_server", source: "guests/sqlite/sqlite-server.c",
    flags: ["--target=wasm32-wasi", "-O2", "-Wall", "-DSQLITE_OMIT_LOAD_EXTENSION", "-DSQLITE_THREADSAFE=0"],
    sources: ["guests/sqlite", "guests/c-server"], shape: "command", exports: ["_start"], sqlite: true,
  },
  {
    kind: "rust", name: "rust_server", source: "guests/rust-server/server.rs",
    flags: ["--target", "wasm32-wasi", "--edition", "2021", "-O", "-C", "strip=debuginfo"],
    sources: ["guests/rust-server"], shape: "command", exports: ["_start"],
  },
  {
    kind: "as", name: "kernels_as", entry: "guests/bench/kernels.ts", runtime: "stub",
    sources: ["guests/bench/kernels.ts"], shape: "library", exports: ["hash_bytes", "sum_loop", "fib", "matmul"],
  },
  {
    kind: "c", name: "kernels_c", source: "guests/bench/kernels.c",
    flags: ["--target=wasm32-wasi", "-O2", "-Wall", "-mexec-model=reactor"],
    sources: ["guests/bench/kernels.c"], shape: "library", exports: ["c_qsort", "c_crc32", "c_sieve"],
  },
];

const PREBUILT_DIR = "guests/c/prebuilt";

// ---------------------------------------------------------------------------------------------
// The guest ABI, as far as a module's static shape is concerned.

type ValType = "i32" | "i64";
interface Sig { params: ValType[]; results: ValType[] }
const sig = (params: ValType[], results: ValType[] = []): Sig => ({ params, results });

const ABI_IMPORTS: Record<string, Record<string, Sig>> = {
  ftvm: {
    rx_ring: sig(["i32", "i32"]),
    clock_now: sig(["i32"], ["i64"]),
    random_fill: sig(["i32", "i32"]),
    timer_set: sig(["i32", "i32"]),
    timer_cancel: sig(["i32"]),
    console_write: sig(["i32", "i32"]),
    net_send: sig(["i32", "i32", "i32"], ["i32"]),
    net_close: sig(["i32"], ["i32"]),
  },
  env: {
    abort: sig(["i32", "i32", "i32", "i32"]),
  },
  wasi_snapshot_preview1: {
    clock_time_get: sig(["i32", "i64", "i32"], ["i32"]),
    random_get: sig(["i32", "i32"], ["i32"]),
    fd_write: sig(["i32", "i32", "i32", "i32"], ["i32"]),
    fd_close: sig(["i32"], ["i32"]),
    fd_seek: sig(["i32", "i64", "i32", "i32"], ["i32"]),
    fd_read: sig(["i32", "i32", "i32", "i32"], ["i32"]),
    fd_fdstat_get: sig(["i32", "i32"], ["i32"]),
    fd_prestat_get: sig(["i32", "i32"], ["i32"]),
    fd_prestat_dir_name: sig(["i32", "i32", "i32"], ["i32"]),
    proc_exit: sig(["i32"]),
    args_sizes_get: sig(["i32", "i32"], ["i32"]),
    args_get: sig(["i32", "i32"], ["i32"]),
    environ_sizes_get: sig(["i32", "i32"], ["i32"]),
    environ_get: sig(["i32", "i32"], ["i32"]),
    sched_yield: sig([], ["i32"]),
    clock_res_get: sig(["i32", "i32"], ["i32"]),
    fd_fdstat_set_flags: sig(["i32", "i32"], ["i32"]),
    sock_accept: sig(["i32", "i32", "i32"], ["i32"]),
    sock_recv: sig(["i32", "i32", "i32", "i32", "i32", "i32"], ["i32"]),
    sock_send: sig(["i32", "i32", "i32", "i32", "i32"], ["i32"]),
    sock_shutdown: sig(["i32", "i32"], ["i32"]),
    poll_oneoff: sig(["i32", "i32", "i32", "i32"], ["i32"]),
    path_open: sig(["i32", "i32", "i32", "i32", "i32", "i64", "i64", "i32", "i32"], ["i32"]),
    fd_pread: sig(["i32", "i32", "i32", "i64", "i32"], ["i32"]),
    fd_pwrite: sig(["i32", "i32", "i32", "i64", "i32"], ["i32"]),
    fd_tell: sig(["i32", "i32"], ["i32"]),
    fd_sync: sig(["i32"], ["i32"]),
    fd_datasync: sig(["i32"], ["i32"]),
    fd_filestat_get: sig(["i32", "i32"], ["i32"]),
    fd_filestat_set_size: sig(["i32", "i64"], ["i32"]),
    fd_filestat_set_times: sig(["i32", "i64", "i64", "i32"], ["i32"]),
    fd_advise: sig(["i32", "i64", "i64", "i32"], ["i32"]),
    fd_allocate: sig(["i32", "i64", "i64"], ["i32"]),
    fd_readdir: sig(["i32", "i32", "i32", "i64", "i32"], ["i32"]),
    path_filestat_get: sig(["i32", "i32", "i32", "i32", "i32"], ["i32"]),
    path_filestat_set_times: sig(["i32", "i32", "i32", "i32", "i64", "i64", "i32"], ["i32"]),
    path_unlink_file: sig(["i32", "i32", "i32"], ["i32"]),
    path_rename: sig(["i32", "i32", "i32", "i32", "i32", "i32"], ["i32"]),
    path_create_directory: sig(["i32", "i32", "i32"], ["i32"]),
    path_remove_directory: sig(["i32", "i32", "i32"], ["i32"]),
    path_readlink: sig(["i32", "i32", "i32", "i32", "i32", "i32"], ["i32"]),
  },
};

const SHAPE_EXPORTS: Record<string, Sig> = {
  ftvm_init: sig([]),
  ftvm_step: sig([], ["i32"]),
  _start: sig([]),
};

// ---------------------------------------------------------------------------------------------
// Helpers

class BuildError extends Error {}

function listSources(entries: string[]): string[] {
  const files: string[] = [];
  const walk = (p: string): void => {
    const st = statSync(p);
    if (st.isDirectory()) {
      for (const e of readdirSync(p).sort()) {
        const q = path.join(p, e);
        if (statSync(q).isDirectory()) {
          if (e !== "prebuilt") walk(q);
        } else if (/\.(ts|c|h|rs|s)$/.test(e)) {
          files.push(q);
        }
      }
    } else {
      files.push(p);
    }
  };
  for (const e of entries) walk(path.join(ROOT, e));
  return files;
}

function mtime(p: string): number {
  try {
    return statSync(p).mtimeMs;
  } catch {
    return -1;
  }
}

function loadStamps(): Record<string, string> {
  try {
    const v: unknown = JSON.parse(readFileSync(STAMPS, "utf8"));
    if (v !== null && typeof v === "object") return v as Record<string, string>;
  } catch {
    // missing or corrupt: rebuild
  }
  return {};
}

function isFresh(out: string, sources: string[], stamp: string, stamps: Record<string, string>, name: string): boolean {
  const outTime = mtime(out);
  if (outTime < 0 || stamps[name] !== stamp) return false;
  return sources.every((s) => mtime(s) < outTime);
}

let clangVersionCache: string | null | undefined;
/** The first line of `clang --version`, or null if clang is not on PATH. */
function clangVersion(): string | null {
  if (clangVersionCache !== undefined) return clangVersionCache;
  const r = spawnSync("clang", ["--version"], { encoding: "utf8" });
  clangVersionCache = r.error || r.status !== 0 ? null : (r.stdout.split("\n")[0] ?? "clang").trim();
  return clangVersionCache;
}

/** Debian's rustc, called by path (a rustup toolchain earlier on PATH usually lacks wasm32-wasi). */
const DEBIAN_RUSTC = "/usr/bin/rustc";
/** Where libstd-rust-dev-wasm32 puts std for wasm32-wasi. */
const RUST_WASI_STD = "/usr/lib/rustlib/wasm32-wasi/lib";

let rustcVersionCache: string | null | undefined;
/** `rustc --version` of Debian's rustc, or null if it or its wasm32-wasi std is missing. */
function rustcVersion(): string | null {
  if (rustcVersionCache !== undefined) return rustcVersionCache;
  if (!existsSync(RUST_WASI_STD)) return (rustcVersionCache = null);
  const r = spawnSync(DEBIAN_RUSTC, ["--version"], { encoding: "utf8" });
  rustcVersionCache = r.error || r.status !== 0 ? null : (r.stdout.split("\n")[0] ?? "rustc").trim();
  return rustcVersionCache;
}

function buildRust(g: RustGuest, out: string): void {
  const args = [...g.flags, "-o", out, path.join(ROOT, g.source)];
  const r = spawnSync(DEBIAN_RUSTC, args, { encoding: "utf8", cwd: ROOT });
  if (r.stdout) process.stdout.write(r.stdout);
  if (r.stderr) process.stderr.write(r.stderr);
  if (r.error) throw new BuildError(`${DEBIAN_RUSTC} failed to start for ${g.source}: ${r.error.message}`);
  if (r.status !== 0) throw new BuildError(`${DEBIAN_RUSTC} ${args.join(" ")} failed with exit code ${r.status ?? r.signal}`);
}

function asVersion(): string {
  const pkg = JSON.parse(readFileSync(path.join(ROOT, "node_modules", "assemblyscript", "package.json"), "utf8")) as {
    version?: string;
  };
  return pkg.version ?? "?";
}

// ---------------------------------------------------------------------------------------------
// Compilers

function asArgs(g: AsGuest, out: string): string[] {
  // AssemblyScript 0.28 enables sign-extension, mutable-globals, nontrapping-f2i and bulk-memory by
  // default; all are in the set the VMM accepts (bulk memory: memory.copy/memory.fill only, which
  // verify() checks), so nothing is disabled. No --noAssert: asserts stay in.
  return [rel(path.join(ROOT, g.entry)), "--outFile", rel(out), "-O3", "--runtime", g.runtime, "--noColors"];
}

// The compiler API, typed locally: importing assemblyscript/asc's own .d.ts would pull
// AssemblyScript's global declarations (its `console`, `i32`, ...) into the whole tsc program.
interface AscStream {
  write(chunk: Uint8Array | string): void;
}
interface AscApi {
  main(argv: string[], options?: { stdout?: AscStream; stderr?: AscStream }): Promise<{ error: Error | null }>;
  createMemoryStream(fn?: (chunk: Uint8Array | string) => void): AscStream;
}
let ascPromise: Promise<AscApi> | undefined;
function loadAsc(): Promise<AscApi> {
  const specifier: string = "assemblyscript/asc"; // not a literal: keeps tsc from resolving its types
  ascPromise ??= (import(specifier) as Promise<{ default: AscApi }>).then((m) => m.default);
  return ascPromise;
}

async function buildAs(g: AsGuest, out: string): Promise<void> {
  const asc = await loadAsc();
  let stdout = "";
  let stderr = "";
  const result = await asc.main(asArgs(g, out).concat(["--baseDir", ROOT]), {
    stdout: asc.createMemoryStream((c) => { stdout += typeof c === "string" ? c : Buffer.from(c).toString("utf8"); }),
    stderr: asc.createMemoryStream((c) => { stderr += typeof c === "string" ? c : Buffer.from(c).toString("utf8"); }),
  });
  if (stdout.trim()) process.stdout.write(stdout.endsWith("\n") ? stdout : stdout + "\n");
  if (result.error) {
    throw new BuildError(`AssemblyScript compile of ${g.entry} failed: ${result.error.message}\n${stderr.trim()}`);
  }
  if (stderr.trim()) process.stderr.write(stderr.endsWith("\n") ? stderr : stderr + "\n");
  if (!existsSync(out)) throw new BuildError(`AssemblyScript compile of ${g.entry} produced no ${rel(out)}`);
}

// SQLite's official amalgamation, unmodified, as npm's better-sqlite3 ships it. `npm pack` fetches the
// tarball from the registry without building anything; it is unpacked under build/cache/.
const SQLITE_PACKAGE = "better-sqlite3@12.11.1";
const SQLITE_CACHE = path.join(ROOT, "build", "cache", "better-sqlite3-12.11.1");

function sqliteDir(): string {
  const dir = path.join(SQLITE_CACHE, "package", "deps", "sqlite3");
  if (existsSync(path.join(dir, "sqlite3.c"))) return dir;
  mkdirSync(SQLITE_CACHE, { recursive: true });
  console.log(`  fetching SQLite's amalgamation: npm pack ${SQLITE_PACKAGE} (into ${rel(SQLITE_CACHE)})`);
  const p = spawnSync("npm", ["pack", SQLITE_PACKAGE, "--silent"], { encoding: "utf8", cwd: SQLITE_CACHE });
  if (p.error || p.status !== 0) throw new BuildError(`npm pack ${SQLITE_PACKAGE} failed: ${p.error?.message ?? p.stderr}`);
  const tgz = path.join(SQLITE_CACHE, p.stdout.trim().split("\n").pop() ?? "");
  const t = spawnSync("tar", ["xzf", tgz, "-C", SQLITE_CACHE, "package/deps/sqlite3/sqlite3.c", "package/deps/sqlite3/sqlite3.h"], { encoding: "utf8" });
  if (t.error || t.status !== 0) throw new BuildError(`cannot unpack ${tgz}: ${t.error?.message ?? t.stderr}`);
  return dir;
}

/** Runs clang as a child process (asynchronously, so AssemblyScript builds proceed meanwhile). */
async function buildC(g: CGuest, out: string): Promise<void> {
  const extra = g.sqlite ? ["-I", sqliteDir(), path.join(sqliteDir(), "sqlite3.c")] : [];
  const args = [...g.flags, "-o", out, path.join(ROOT, g.source), ...(g.extra ?? []).map((f) => path.join(ROOT, f)), ...extra];
  const r = await new Promise<{ status: number | null; signal: NodeJS.Signals | null; error?: Error; stdout: string; stderr: string }>((resolve) => {
    const child = spawn("clang", args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => { stdout += c; });
    child.stderr.setEncoding("utf8").on("data", (c: string) => { stderr += c; });
    child.on("error", (error) => resolve({ status: null, signal: null, error, stdout, stderr }));
    child.on("close", (status, signal) => resolve({ status, signal, stdout, stderr }));
  });
  if (r.stdout) process.stdout.write(r.stdout);
  if (r.stderr) process.stderr.write(r.stderr);
  if (r.error) throw new BuildError(`clang failed to start for ${g.source}: ${r.error.message}`);
  if (r.status !== 0) throw new BuildError(`clang ${args.join(" ")} failed with exit code ${r.status ?? r.signal}`);
}

// ---------------------------------------------------------------------------------------------
// Verification against the ABI

interface ModuleReport {
  imports: string[];
  exports: string[];
  memoryPages: number;
}

type Binaryen = typeof import("binaryen").default;
type BinaryenModule = import("binaryen").default.Module;
interface DataSegmentApi {
  getNumDataSegments(): number;
  getDataSegmentByIndex(index: number): number;
  getDataSegmentInfo(segment: number): { name: string; passive: boolean };
}
let binaryenPromise: Promise<Binaryen> | undefined;
function loadBinaryen(): Promise<Binaryen> {
  binaryenPromise ??= import("binaryen").then((m) => m.default);
  return binaryenPromise;
}

async function verify(g: Guest, file: string, label: string = rel(file)): Promise<ModuleReport> {
  const binaryen = await loadBinaryen();
  const F = binaryen.Features;
  // MVP + mutable-globals + sign-ext + nontrapping-f2i + bulk memory (memory.copy/fill only:
  // BulkMemoryOpt, not BulkMemory, so memory.init/data.drop fail validation) + SIMD128 + multivalue.
  // A wasi-threads guest (checkpoint mode) also has atomics and passive data segments (memory.init/data.drop
  // in wasm-ld's __wasm_init_memory: a shared memory is initialized once, by the first instance).
  const threads = g.kind === "c" && g.threads === true;
  const allowed = F.MutableGlobals | F.SignExt | F.NontrappingFPToInt | F.BulkMemoryOpt | F.SIMD128 | F.Multivalue | (threads ? F.Atomics | F.BulkMemory : 0);
  const bytes = readFileSync(file);
  const problems: string[] = [];
  const typeName = (t: number): string => {
    if (t === binaryen.i32) return "i32";
    if (t === binaryen.i64) return "i64";
    if (t === binaryen.f32) return "f32";
    if (t === binaryen.f64) return "f64";
    if (t === binaryen.v128) return "v128";
    return `type#${t}`;
  };
  const sigOf = (params: number, results: number): string =>
    `(${binaryen.expandType(params).map(typeName).join(", ")}) -> (${binaryen.expandType(results).map(typeName).join(", ")})`;
  const sigText = (s: Sig): string => `(${s.params.join(", ")}) -> (${s.results.join(", ")})`;

  // binaryen.js 132: readBinary(bytes, features) exists at run time (its .d.ts declares a
  // readBinaryWithFeatures that the JS does not have).
  const readBinary = binaryen.readBinary as unknown as (data: Uint8Array, features?: number) => BinaryenModule;
  let mod: BinaryenModule;
  try {
    mod = readBinary(bytes, allowed);
  } catch (e) {
    throw new BuildError(`${label}: binaryen cannot read it with the accepted feature set: ${String(e)}`);
  }
  try {
    mod.setFeatures(allowed);
    if (!mod.validate()) problems.push("does not validate with only the accepted wasm features (see binaryen output above)");

    const imports: string[] = [];
    for (let i = 0; i < mod.getNumFunctions(); i++) {
      const f = binaryen.getFunctionInfo(mod.getFunctionByIndex(i));
      if (!f.module) continue;
      const base = f.base ?? "";
      const got = sigOf(f.params, f.results);
      imports.push(`${f.module}.${base} ${got}`);
      const want = threads && f.module === "wasi" && base === "thread-spawn" ? sig(["i32"], ["i32"]) : ABI_IMPORTS[f.module]?.[base];
      if (!want) problems.push(`imports ${f.module}.${base}, which is not in the guest ABI`);
      else if (sigText(want) !== got) problems.push(`imports ${f.module}.${base} as ${got}; the ABI says ${sigText(want)}`);
    }
    for (let i = 0; i < mod.getNumGlobals(); i++) {
      const gl = binaryen.getGlobalInfo(mod.getGlobalByIndex(i));
      if (gl.module) problems.push(`imports global ${gl.module}.${gl.base ?? ""}`);
    }
    for (let i = 0; i < mod.getNumTables(); i++) {
      const t = binaryen.getTableInfo(mod.getTableByIndex(i));
      if (t.module) problems.push(`imports table ${t.module}.${t.base ?? ""}`);
    }

    let memoryPages = 0;
    if (!mod.hasMemory()) {
      problems.push("has no memory");
    } else {
      const m = mod.getMemoryInfo();
      memoryPages = m.initial;
      if (threads) {
        if (m.module !== "env" || m.base !== "memory") problems.push("is a threaded guest whose memory is not imported as env.memory");
        if (!m.shared) problems.push("is a threaded guest without a shared memory");
        if (m.max === undefined || m.max === 0) problems.push("is a threaded guest without a maximum memory size");
      } else {
        if (m.module) problems.push(`imports its memory (${m.module}.${m.base ?? ""})`);
        if (m.shared) problems.push("has a shared memory");
      }
      if (m.is64) problems.push("has a 64-bit memory");
    }
    // (the .d.ts names these getNumMemorySegments/getMemorySegmentInfo; the JS has these)
    const segs = mod as unknown as DataSegmentApi;
    for (let i = 0; i < segs.getNumDataSegments(); i++) {
      const seg = segs.getDataSegmentInfo(segs.getDataSegmentByIndex(i));
      if (seg.passive && !threads) problems.push(`has passive data segment ${seg.name} (needs memory.init/data.drop)`);
    }

    const exports: string[] = [];
    const exported = new Map<string, number>();
    for (let i = 0; i < mod.getNumExports(); i++) {
      const e = binaryen.getExportInfo(mod.getExportByIndex(i));
      exported.set(e.name, e.kind);
      if (e.kind === binaryen.ExternalFunction) {
        const f = binaryen.getFunctionInfo(mod.getFunction(e.value));
        exports.push(`${e.name} ${sigOf(f.params, f.results)}`);
        const want = SHAPE_EXPORTS[e.name];
        if (want && sigText(want) !== sigOf(f.params, f.results)) {
          problems.push(`exports ${e.name} as ${sigOf(f.params, f.results)}; the ABI says ${sigText(want)}`);
        }
      } else {
        const kind = e.kind === binaryen.ExternalMemory ? "memory" : e.kind === binaryen.ExternalTable ? "table" : e.kind === binaryen.ExternalGlobal ? "global" : "tag";
        exports.push(`${e.name} (${kind})`);
      }
    }
    if (!threads && exported.get("memory") !== binaryen.ExternalMemory) problems.push('does not export its memory as "memory"');
    for (const name of g.exports) {
      if (exported.get(name) !== binaryen.ExternalFunction) problems.push(`does not export function ${name}`);
    }
    if (g.shape === "reactor" && !exported.has("ftvm_step")) problems.push("is a reactor without ftvm_step");
    if (g.shape === "command" && !exported.has("_start")) problems.push("is a command without _start");

    if (problems.length > 0) {
      throw new BuildError(`${label} breaks the guest ABI:\n  - ${problems.join("\n  - ")}`);
    }
    return { imports, exports, memoryPages };
  } finally {
    mod.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// Main

/** `--check a.wasm b.wasm`: verify arbitrary modules (shape from their exports). */
async function checkFiles(files: string[]): Promise<void> {
  if (files.length === 0) throw new BuildError("--check needs at least one .wasm file");
  let failed = 0;
  for (const f of files) {
    const file = path.resolve(f);
    const g: AsGuest = { kind: "as", name: path.basename(file), entry: file, runtime: "stub", sources: [], shape: "library", exports: [] };
    try {
      const r = await verify(g, file, f);
      console.log(`${f}: ok (${r.memoryPages} pages)`);
      for (const i of r.imports) console.log(`  import ${i}`);
      for (const e of r.exports) console.log(`  export ${e}`);
    } catch (e) {
      failed++;
      console.error(e instanceof BuildError ? e.message : `${f}: ${String(e)}`);
    }
  }
  if (failed > 0) throw new BuildError(`${failed} of ${files.length} module(s) failed the ABI check`);
}

/** After a fresh build: refresh the checked-in prebuilt module (--update-prebuilt), or say it differs. */
function syncPrebuilt(out: string, prebuilt: string, update: boolean): void {
  if (update) {
    mkdirSync(path.dirname(prebuilt), { recursive: true });
    copyFileSync(out, prebuilt);
    console.log(`  updated ${rel(prebuilt)}`);
  } else if (existsSync(prebuilt) && !readFileSync(prebuilt).equals(readFileSync(out))) {
    console.log(`  note: ${rel(prebuilt)} differs from the fresh build (refresh it with --update-prebuilt)`);
  }
}

async function main(argv: string[]): Promise<void> {
  if (argv[0] === "--check") return checkFiles(argv.slice(1));
  const force = argv.includes("--force");
  const updatePrebuilt = argv.includes("--update-prebuilt");
  const verbose = argv.includes("--verbose") || argv.includes("-v");
  const unknownFlags = argv.filter((a) => a.startsWith("-") && !["--force", "--update-prebuilt", "--verbose", "-v"].includes(a));
  if (unknownFlags.length > 0) throw new BuildError(`unknown option(s): ${unknownFlags.join(" ")}`);
  const only = argv.filter((a) => !a.startsWith("-"));
  for (const n of only) {
    if (!GUESTS.some((g) => g.name === n)) throw new BuildError(`unknown guest "${n}" (known: ${GUESTS.map((g) => g.name).join(", ")})`);
  }
  const selected = only.length > 0 ? GUESTS.filter((g) => only.includes(g.name)) : GUESTS;

  mkdirSync(OUT_DIR, { recursive: true });
  const stamps = loadStamps();
  let clangNoticeShown = false;
  let rustNoticeShown = false;
  let built = 0;
  let skipped = 0;
  const t0 = Date.now();

  // clang runs as a child process, AssemblyScript in this one: the C guests build one after another
  // while the AssemblyScript guests do the same beside them (SQLite's amalgamation alone takes a minute).
  const buildOne = async (g: Guest): Promise<void> => {
    const out = path.join(OUT_DIR, `${g.name}.wasm`);
    const sources = listSources(g.sources);
    let stamp: string;
    let build: () => Promise<void> | void;

    if (g.kind === "as") {
      stamp = `asc ${asVersion()} ${asArgs(g, out).join(" ")}`;
      build = () => buildAs(g, out);
    } else if (g.kind === "rust") {
      const prebuilt = path.join(ROOT, PREBUILT_DIR, `${g.name}.wasm`);
      const rustc = rustcVersion();
      if (rustc !== null) {
        stamp = `${rustc} | rustc ${g.flags.join(" ")} ${g.source}`;
        build = () => {
          buildRust(g, out);
          syncPrebuilt(out, prebuilt, updatePrebuilt);
        };
      } else {
        if (!rustNoticeShown) {
          console.log(`build-guests: ${DEBIAN_RUSTC} or ${RUST_WASI_STD} not found (Debian packages rustc, libstd-rust-dev-wasm32); using the prebuilt Rust guest from ${PREBUILT_DIR}/`);
          rustNoticeShown = true;
        }
        if (!existsSync(prebuilt)) throw new BuildError(`Debian's rustc with the wasm32-wasi std is not installed and ${rel(prebuilt)} is missing`);
        stamp = `prebuilt ${PREBUILT_DIR}/${g.name}.wasm`;
        sources.push(prebuilt);
        build = () => copyFileSync(prebuilt, out);
      }
    } else {
      const prebuilt = path.join(ROOT, PREBUILT_DIR, `${g.name}.wasm`);
      const clang = clangVersion();
      if (clang !== null) {
        stamp = `${clang} | clang ${g.flags.join(" ")} ${[g.source, ...(g.extra ?? [])].join(" ")}`;
        build = async () => {
          if (g.sqlite && existsSync(prebuilt)) {
            try {
              sqliteDir();
            } catch (e) {
              console.log(`  ${(e as Error).message}; using ${rel(prebuilt)}`);
              copyFileSync(prebuilt, out);
              return;
            }
          }
          await buildC(g, out);
          syncPrebuilt(out, prebuilt, updatePrebuilt);
        };
      } else {
        if (!clangNoticeShown) {
          console.log(`build-guests: clang not found on PATH; using the prebuilt C guests from ${PREBUILT_DIR}/`);
          clangNoticeShown = true;
        }
        if (!existsSync(prebuilt)) throw new BuildError(`clang is not installed and ${rel(prebuilt)} is missing`);
        stamp = `prebuilt ${PREBUILT_DIR}/${g.name}.wasm`;
        sources.push(prebuilt);
        build = () => copyFileSync(prebuilt, out);
      }
    }

    if (!force && isFresh(out, sources, stamp, stamps, g.name)) {
      skipped++;
      if (verbose) console.log(`  ${g.name}: up to date`);
      return;
    }

    const t = Date.now();
    delete stamps[g.name];
    await build();
    const report = await verify(g, out);
    stamps[g.name] = stamp;
    writeFileSync(STAMPS, JSON.stringify(stamps, null, 2) + "\n");
    built++;
    console.log(`  built ${rel(out)} (${statSync(out).size} bytes, ${report.memoryPages} pages, ${Date.now() - t} ms)`);
    if (verbose) {
      for (const i of report.imports) console.log(`    import ${i}`);
      for (const e of report.exports) console.log(`    export ${e}`);
    }
  };
  const chain = async (gs: Guest[]): Promise<void> => {
    for (const g of gs) await buildOne(g);
  };
  // Both chains run to the end; the first failure is reported once both stopped.
  const results = await Promise.allSettled([chain(selected.filter((g) => g.kind === "c")), chain(selected.filter((g) => g.kind !== "c"))]);
  for (const r of results) if (r.status === "rejected") throw r.reason;
  console.log(`build-guests: ${built} built, ${skipped} up to date (${Date.now() - t0} ms)`);
}

main(process.argv.slice(2)).catch((e: unknown) => {
  if (e instanceof BuildError) {
    console.error(`build-guests: error: ${e.message}`);
  } else {
    console.error("build-guests: unexpected failure:", e);
  }
  process.exit(1);
});
