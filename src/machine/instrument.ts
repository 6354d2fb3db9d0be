/**
 * Instrumentation: rewrites a guest module with binaryen so that the VMM can count and stop it.
 *
 * - A fuel counter (i64) is charged at every function entry and loop header with the static size of the
 *   region that can run before the next charge (at least 1). The counter lives in a function local; it is
 *   flushed to the global `__ftvm_fuel` before every call and return and reloaded after every call
 *   (wasmtime's scheme). The instruction count is `budgetEnd - fuel`, where the VMM knows budgetEnd.
 * - When a charge would make fuel negative, the guest refunds it and calls the VMM's
 *   `ftvm_internal.budget(k, fuel) -> fuel` import. For loops that call sits outside the loop: the loop branches out
 *   to it and re-enters (a call inside the loop makes V8 spill loop values; DESIGN.md §3). On return the
 *   VMM guarantees fuel >= k, so the re-charge succeeds. The VMM therefore sees the guest at an exact
 *   count at every stop, and counts strictly increase.
 * - A deterministic call-depth limit (global `__ftvm_depth`), so traps never depend on the native stack.
 * - `memory.grow` is routed through `ftvm_internal.memory_grow` so the VMM logs its result.
 * - A `start` function becomes the export `__ftvm_start`, so it runs metered.
 * - Mutable globals are exported as `__ftvm_g<i>` and memory as `__ftvm_memory` for snapshots.
 */
import binaryen from 'binaryen';
import { FtvmError } from '../util/errors.js';

/** Features a guest may use. Named one by one: `Features.All` emits encodings V8 11.3 rejects. */
export const ALLOWED_FEATURES =
  binaryen.Features.MutableGlobals |
  binaryen.Features.NontrappingFPToInt |
  binaryen.Features.SignExt |
  binaryen.Features.BulkMemory |
  binaryen.Features.BulkMemoryOpt |
  binaryen.Features.SIMD128 |
  binaryen.Features.Multivalue;

/** Features we read with so that we can name them in a refusal instead of failing to parse. */
const READ_FEATURES =
  ALLOWED_FEATURES |
  binaryen.Features.Atomics |
  binaryen.Features.RelaxedSIMD |
  binaryen.Features.ExceptionHandling |
  binaryen.Features.TailCall |
  binaryen.Features.ReferenceTypes |
  binaryen.Features.Memory64 |
  binaryen.Features.MultiMemory |
  binaryen.Features.ExtendedConst |
  binaryen.Features.BulkMemoryOpt |
  binaryen.Features.CallIndirectOverlong;

import {
  DEPTH_GLOBAL,
  DEFAULT_MAX_CALL_DEPTH,
  FUEL_GLOBAL,
  GLOBAL_EXPORT_PREFIX,
  INTERNAL_MODULE,
  MEMORY_EXPORT,
  START_EXPORT,
  type InstrumentOptions,
  type InstrumentedModule,
} from './instrumented.js';
export * from './instrumented.js';

// binaryen.js exposes per-expression accessor classes (binaryen.Block, binaryen.Loop, ...) that its
// .d.ts does not declare. This is the narrow typed view we use.
type Ref = number;
interface Accessors {
  [name: string]: (expr: Ref, ...args: number[]) => number;
}
const B = binaryen as unknown as Record<string, Accessors> & {
  _BinaryenFunctionAddVar(func: Ref, type: number): number;
};

interface ChildSlot {
  get(expr: Ref): Ref;
  set(expr: Ref, child: Ref): void;
}

function slot(kind: string, name: string): ChildSlot {
  const acc = B[kind];
  if (acc === undefined) throw new Error(`binaryen has no accessor class ${kind}`);
  const getter = acc[`get${name}`];
  const setter = acc[`set${name}`];
  if (getter === undefined || setter === undefined) throw new Error(`binaryen.${kind} lacks get/set${name}`);
  return { get: (e) => getter(e), set: (e, c) => void setter(e, c) };
}

function listSlots(kind: string, count: string, getAt: string, setAt: string): (expr: Ref) => ChildSlot[] {
  const acc = B[kind]!;
  const n = acc[count]!;
  const g = acc[getAt]!;
  const s = acc[setAt]!;
  return (expr) => {
    const out: ChildSlot[] = [];
    const len = n(expr);
    for (let i = 0; i < len; i++) out.push({ get: (e) => g(e, i), set: (e, c) => void s(e, i, c) });
    return out;
  };
}

const ids = binaryen as unknown as Record<string, number>;
function fixed(kind: string, ...names: string[]): (expr: Ref) => ChildSlot[] {
  const slots = names.map((n) => slot(kind, n));
  return () => slots;
}

/** Children of every expression kind we accept, in evaluation order. Kinds absent here are refused. */
const CHILDREN = new Map<number, (expr: Ref) => ChildSlot[]>([
  [ids.BlockId!, listSlots('Block', 'getNumChildren', 'getChildAt', 'setChildAt')],
  [ids.IfId!, fixed('If', 'Condition', 'IfTrue', 'IfFalse')],
  [ids.LoopId!, fixed('Loop', 'Body')],
  [ids.BreakId!, fixed('Break', 'Value', 'Condition')],
  [ids.SwitchId!, fixed('Switch', 'Value', 'Condition')],
  [ids.CallId!, listSlots('Call', 'getNumOperands', 'getOperandAt', 'setOperandAt')],
  [
    ids.CallIndirectId!,
    (e) => [...listSlots('CallIndirect', 'getNumOperands', 'getOperandAt', 'setOperandAt')(e), slot('CallIndirect', 'Target')],
  ],
  [ids.LocalGetId!, () => []],
  [ids.LocalSetId!, fixed('LocalSet', 'Value')],
  [ids.GlobalGetId!, () => []],
  [ids.GlobalSetId!, fixed('GlobalSet', 'Value')],
  [ids.MemorySizeId!, () => []],
  [ids.MemoryGrowId!, fixed('MemoryGrow', 'Delta')],
  [ids.LoadId!, fixed('Load', 'Ptr')],
  [ids.StoreId!, fixed('Store', 'Ptr', 'Value')],
  [ids.ConstId!, () => []],
  [ids.UnaryId!, fixed('Unary', 'Value')],
  [ids.BinaryId!, fixed('Binary', 'Left', 'Right')],
  [ids.SelectId!, fixed('Select', 'IfTrue', 'IfFalse', 'Condition')],
  [ids.DropId!, fixed('Drop', 'Value')],
  [ids.ReturnId!, fixed('Return', 'Value')],
  [ids.NopId!, () => []],
  [ids.UnreachableId!, () => []],
  [ids.SIMDExtractId!, fixed('SIMDExtract', 'Vec')],
  [ids.SIMDReplaceId!, fixed('SIMDReplace', 'Vec', 'Value')],
  [ids.SIMDShuffleId!, fixed('SIMDShuffle', 'Left', 'Right')],
  [ids.SIMDTernaryId!, fixed('SIMDTernary', 'A', 'B', 'C')],
  [ids.SIMDShiftId!, fixed('SIMDShift', 'Vec', 'Shift')],
  [ids.SIMDLoadId!, fixed('SIMDLoad', 'Ptr')],
  [ids.SIMDLoadStoreLaneId!, fixed('SIMDLoadStoreLane', 'Ptr', 'Vec')],
  [ids.MemoryInitId!, fixed('MemoryInit', 'Dest', 'Offset', 'Size')],
  [ids.MemoryCopyId!, fixed('MemoryCopy', 'Dest', 'Source', 'Size')],
  [ids.MemoryFillId!, fixed('MemoryFill', 'Dest', 'Value', 'Size')],
  [ids.TupleMakeId!, listSlots('TupleMake', 'getNumOperands', 'getOperandAt', 'setOperandAt')],
  [ids.TupleExtractId!, fixed('TupleExtract', 'Tuple')],
]);

/** Expression kinds refused with the feature they belong to. */
const REFUSED_KINDS = new Map<number, string>([
  [ids.AtomicRMWId!, 'threads (atomic instructions)'],
  [ids.AtomicCmpxchgId!, 'threads (atomic instructions)'],
  [ids.AtomicWaitId!, 'threads (atomic wait)'],
  [ids.AtomicNotifyId!, 'threads (atomic notify)'],
  [ids.AtomicFenceId!, 'threads (atomic fence)'],
  [ids.DataDropId!, 'data.drop (dropped-segment state cannot be snapshotted)'],
  [ids.TableGrowId!, 'table.grow'],
  [ids.TableSetId!, 'table.set'],
  [ids.TableGetId!, 'reference types (table.get)'],
  [ids.TableSizeId!, 'reference types (table.size)'],
  [ids.RefNullId!, 'reference types'],
  [ids.RefIsNullId!, 'reference types'],
  [ids.RefFuncId!, 'reference types'],
  [ids.RefEqId!, 'reference types'],
  [ids.TryId!, 'exception handling'],
  [ids.ThrowId!, 'exception handling'],
  [ids.RethrowId!, 'exception handling'],
  [ids.PopId!, 'exception handling'],
]);

/** Relaxed-SIMD ops, per expression kind (binaryen numbers unary, binary and ternary ops separately). */
function relaxedOps(match: (name: string) => boolean): Set<number> {
  return new Set<number>(
    Object.keys(binaryen)
      .filter((k) => k.startsWith('Relaxed') && k !== 'RelaxedSIMD' && k !== 'RelaxedAtomics' && match(k))
      .map((k) => ids[k])
      .filter((v): v is number => typeof v === 'number'),
  );
}
const isTernaryRelaxed = (k: string): boolean => /Madd|Nmadd|Laneselect|AddS/.test(k);
const RELAXED_UNARY = relaxedOps((k) => k.startsWith('RelaxedTrunc'));
const RELAXED_TERNARY = relaxedOps(isTernaryRelaxed);
const RELAXED_BINARY = relaxedOps((k) => !k.startsWith('RelaxedTrunc') && !isTernaryRelaxed(k));

/** Kinds whose details (atomic, tail call, relaxed op) must be inspected. */
const CHECKED_KINDS = new Set<number>([ids.LoadId!, ids.StoreId!, ids.CallId!, ids.CallIndirectId!, ids.UnaryId!, ids.BinaryId!, ids.SIMDTernaryId!]);

function refuse(feature: string, where: string): never {
  throw new FtvmError('FTVM_ERR_UNSUPPORTED_FEATURE', `unsupported wasm feature: ${feature} (in ${where}); ftvm cannot make it deterministic`);
}

/** Per-function rewriting state. */
class FunctionRewriter {
  private labelCounter = 0;
  private readonly fuelLocal: number;
  private readonly tempLocals = new Map<number, number[]>();
  private readonly tempsInUse = new Map<number, number>();

  constructor(
    private readonly mod: binaryen.Module,
    private readonly funcRef: Ref,
    private readonly funcName: string,
    private readonly maxCallDepth: number,
  ) {
    this.fuelLocal = B._BinaryenFunctionAddVar(funcRef, binaryen.i64);
  }

  private label(kind: string): string {
    return `__ftvm_${kind}_${this.labelCounter++}`;
  }

  /** A fresh temp local of `type`; temps are never reused (cheap, and keeps lifetimes obviously right). */
  private temp(type: number): number {
    return B._BinaryenFunctionAddVar(this.funcRef, type);
  }

  private flush(): Ref {
    return this.mod.global.set(FUEL_GLOBAL, this.mod.local.get(this.fuelLocal, binaryen.i64));
  }

  private reload(): Ref {
    return this.mod.local.set(this.fuelLocal, this.mod.global.get(FUEL_GLOBAL, binaryen.i64));
  }

  private depthDec(): Ref {
    const m = this.mod;
    return m.global.set(DEPTH_GLOBAL, m.i32.sub(m.global.get(DEPTH_GLOBAL, binaryen.i32), m.i32.const(1)));
  }

  /** flush + depth-- : what every exit from the function does. */
  private exitCode(): Ref[] {
    return [this.flush(), this.depthDec()];
  }

  private charge(k: number): Ref {
    const m = this.mod;
    return m.local.set(this.fuelLocal, m.i64.sub(m.local.get(this.fuelLocal, binaryen.i64), m.i64.const(BigInt(k) as never)));
  }

  private fuelNegative(): Ref {
    const m = this.mod;
    return m.i64.lt_s(m.local.get(this.fuelLocal, binaryen.i64), m.i64.const(0n as never));
  }

  /**
   * Refund k and ask the VMM, passing the fuel; the VMM returns the new fuel (>= k). The global is not
   * flushed here, so its value only ever reflects call/return boundaries: the count seen after a trap is
   * then the same on every replica, wherever their budget stops fell.
   */
  private slowPath(k: number): Ref[] {
    const m = this.mod;
    return [
      m.local.set(this.fuelLocal, m.i64.add(m.local.get(this.fuelLocal, binaryen.i64), m.i64.const(BigInt(k) as never))),
      m.local.set(this.fuelLocal, m.call(`${INTERNAL_MODULE}.budget`, [m.i32.const(k), m.local.get(this.fuelLocal, binaryen.i64)], binaryen.i64)),
    ];
  }

  /** Rewrites the function body. */
  run(): void {
    const m = this.mod;
    const info = binaryen.getFunctionInfo(this.funcRef);
    const { expr: body, cost } = this.visit(info.body);
    const k = Math.max(1, cost);
    const results = info.results;
    let inner: Ref;
    if (results === binaryen.none) {
      inner = m.block(null, [body, ...this.exitCode()], binaryen.none);
    } else if (binaryen.getExpressionType(body) === binaryen.unreachable) {
      inner = body;
    } else {
      const t = this.temp(results);
      inner = m.block(null, [m.local.set(t, body), ...this.exitCode(), m.local.get(t, results)], results);
    }
    const prologue: Ref[] = [
      this.reload(),
      m.global.set(DEPTH_GLOBAL, m.i32.add(m.global.get(DEPTH_GLOBAL, binaryen.i32), m.i32.const(1))),
      m.if(
        m.i32.gt_u(m.global.get(DEPTH_GLOBAL, binaryen.i32), m.i32.const(this.maxCallDepth)),
        m.block(null, [this.flush(), m.call(`${INTERNAL_MODULE}.depth_exceeded`, [], binaryen.none), m.unreachable()]),
      ),
      this.charge(k),
      m.if(this.fuelNegative(), m.block(null, [...this.slowPath(k), this.charge(k)])),
    ];
    B.Function!.setBody!(this.funcRef, m.block(null, [...prologue, inner], results === binaryen.none ? binaryen.none : results));
  }

  /**
   * Rewrites `expr` bottom-up. Returns the new expression, the static cost of its part of the enclosing
   * region (nodes not inside a nested loop; a nested loop counts 1) and whether it contains a loop.
   */
  private visit(expr: Ref): { expr: Ref; cost: number; hasLoop: boolean } {
    if (expr === 0) return { expr, cost: 0, hasLoop: false };
    const id = binaryen.getExpressionId(expr);
    const refused = REFUSED_KINDS.get(id);
    if (refused !== undefined) refuse(refused, `function ${this.funcName}`);
    const childrenOf = CHILDREN.get(id);
    if (childrenOf === undefined) refuse(`expression kind ${id}`, `function ${this.funcName}`);
    this.checkNode(expr, id);

    let cost = 1;
    let hasLoop = false;
    for (const s of childrenOf(expr)) {
      const child = s.get(expr);
      if (child === 0) continue;
      const r = this.visit(child);
      if (r.expr !== child) s.set(expr, r.expr);
      cost += r.cost;
      hasLoop ||= r.hasLoop;
    }

    if (id === ids.LoopId) return { expr: this.wrapLoop(expr, cost - 1), cost: 1, hasLoop: true };
    if (id === ids.CallId || id === ids.CallIndirectId) return { expr: this.wrapCall(expr, id, hasLoop), cost, hasLoop };
    if (id === ids.MemoryGrowId) {
      const delta = B.MemoryGrow!.getDelta!(expr);
      const call = this.mod.call(`${INTERNAL_MODULE}.memory_grow`, [delta], binaryen.i32);
      return { expr: this.wrapCall(call, ids.CallId!, hasLoop), cost, hasLoop };
    }
    if (id === ids.ReturnId) return { expr: this.wrapReturn(expr), cost, hasLoop };
    return { expr, cost, hasLoop };
  }

  private checkNode(expr: Ref, id: number): void {
    if (!CHECKED_KINDS.has(id)) return;
    const info = binaryen.getExpressionInfo(expr) as binaryen.ExpressionInfo & {
      isAtomic?: boolean;
      isReturn?: boolean;
      op?: number;
    };
    if ((id === ids.LoadId || id === ids.StoreId) && info.isAtomic === true) refuse('threads (atomic load/store)', `function ${this.funcName}`);
    if ((id === ids.CallId || id === ids.CallIndirectId) && info.isReturn === true) refuse('tail calls', `function ${this.funcName}`);
    if (info.op !== undefined && info.type === binaryen.v128) {
      const relaxed = id === ids.UnaryId ? RELAXED_UNARY : id === ids.BinaryId ? RELAXED_BINARY : id === ids.SIMDTernaryId ? RELAXED_TERNARY : undefined;
      if (relaxed?.has(info.op) === true) refuse('relaxed SIMD', `function ${this.funcName}`);
    }
  }

  private wrapLoop(loop: Ref, bodyCost: number): Ref {
    const m = this.mod;
    const k = Math.max(1, bodyCost + 1);
    const type = binaryen.getExpressionType(loop);
    const body = B.Loop!.getBody!(loop);
    const slow = this.label('slow');
    const retry = this.label('retry');
    const done = this.label('done');
    // The original loop keeps its label, so its own `br` still reaches its header, which now charges.
    B.Loop!.setBody!(
      loop,
      m.block(null, [this.charge(k), m.br(slow, this.fuelNegative()), body], type === binaryen.unreachable ? binaryen.none : type),
    );
    B.Expression!.finalize!(loop);
    const resultType = binaryen.getExpressionType(loop);
    if (resultType === binaryen.unreachable) {
      // The loop never falls through: exits are branches to outer labels or returns.
      return m.loop(retry, m.block(null, [m.block(slow, [loop], binaryen.none), ...this.slowPath(k), m.br(retry)], binaryen.unreachable));
    }
    const exit = resultType === binaryen.none ? m.block(null, [loop, m.br(done)], binaryen.unreachable) : m.br(done, 0, loop);
    return m.block(
      done,
      [m.loop(retry, m.block(null, [m.block(slow, [exit], binaryen.none), ...this.slowPath(k), m.br(retry)], binaryen.unreachable))],
      resultType,
    );
  }

  private wrapCall(call: Ref, id: number, operandsHaveLoop: boolean): Ref {
    const m = this.mod;
    const type = binaryen.getExpressionType(call);
    if (type === binaryen.unreachable) return call; // an operand never returns: the call never happens
    const pre: Ref[] = [];
    if (operandsHaveLoop) {
      // Charges inside operands land in the fuel local; evaluate operands first, then flush.
      const acc = id === ids.CallId ? B.Call! : B.CallIndirect!;
      const n = acc.getNumOperands!(call);
      for (let i = 0; i < n; i++) {
        const op = acc.getOperandAt!(call, i);
        const t = this.temp(binaryen.getExpressionType(op));
        pre.push(m.local.set(t, op));
        acc.setOperandAt!(call, i, m.local.get(t, binaryen.getExpressionType(op)));
      }
      if (id === ids.CallIndirectId) {
        const target = B.CallIndirect!.getTarget!(call);
        const t = this.temp(binaryen.i32);
        pre.push(m.local.set(t, target));
        B.CallIndirect!.setTarget!(call, m.local.get(t, binaryen.i32));
      }
    }
    pre.push(this.flush());
    if (type === binaryen.none) return m.block(null, [...pre, call, this.reload()], binaryen.none);
    const t = this.temp(type);
    return m.block(null, [...pre, m.local.set(t, call), this.reload(), m.local.get(t, type)], type);
  }

  private wrapReturn(ret: Ref): Ref {
    const m = this.mod;
    const value = B.Return!.getValue!(ret);
    if (value === 0) return m.block(null, [...this.exitCode(), ret], binaryen.unreachable);
    const type = binaryen.getExpressionType(value);
    if (type === binaryen.unreachable) return ret;
    const t = this.temp(type);
    B.Return!.setValue!(ret, m.block(null, [m.local.set(t, value), ...this.exitCode(), m.local.get(t, type)], type));
    return ret;
  }
}

/** Reads, checks and instruments a guest module. Throws FtvmError with a clear message for bad input. */
export function instrument(original: Uint8Array, options: InstrumentOptions = {}): InstrumentedModule {
  const maxCallDepth = options.maxCallDepth ?? DEFAULT_MAX_CALL_DEPTH;
  if (original.length < 8 || original[0] !== 0x00 || original[1] !== 0x61 || original[2] !== 0x73 || original[3] !== 0x6d) {
    throw new FtvmError('FTVM_ERR_NOT_WASM', 'not a WebAssembly module (missing the \\0asm magic number)');
  }
  if (original[4] !== 1 || original[5] !== 0 || original[6] !== 0 || original[7] !== 0) {
    throw new FtvmError('FTVM_ERR_NOT_WASM', 'not a WebAssembly 1.0 binary module (unsupported version field)');
  }
  let mod: binaryen.Module;
  try {
    mod = (binaryen.readBinary as (d: Uint8Array, f?: number) => binaryen.Module)(original, READ_FEATURES);
  } catch (err) {
    throw new FtvmError('FTVM_ERR_INVALID_MODULE', `invalid WebAssembly module: ${String((err as Error).message ?? err)}`, { cause: err });
  }
  try {
    return instrumentModule(mod, maxCallDepth);
  } finally {
    mod.dispose();
  }
}

const TYPE_NAMES = new Map<number, string>([
  [binaryen.i32, 'i32'],
  [binaryen.i64, 'i64'],
  [binaryen.f32, 'f32'],
  [binaryen.f64, 'f64'],
  [binaryen.v128, 'v128'],
]);

function signatureOf(params: number, results: number): string {
  const names = (t: number): string => binaryen.expandType(t).map((x) => TYPE_NAMES.get(x) ?? `type${x}`).join(',');
  return `(${names(params)})->(${names(results)})`;
}

function instrumentModule(mod: binaryen.Module, maxCallDepth: number): InstrumentedModule {
  // --- module-level checks ---
  const memoryCount = (mod as unknown as { getNumMemories?: () => number }).getNumMemories?.() ?? (mod.hasMemory() ? 1 : 0);
  if (memoryCount > 1) refuse('multiple memories', 'module');
  if (!mod.hasMemory()) throw new FtvmError('FTVM_ERR_ABI_EXPORT', 'the guest has no memory; ABI v1 needs one (exported as "memory")');
  const mem = mod.getMemoryInfo();
  if (mem.shared) refuse('shared memory (threads)', 'memory');
  if (mem.is64) refuse('memory64', 'memory');
  if (mem.module !== '' && mem.module !== null && mem.module !== undefined) {
    refuse(`imported memory (${mem.module}.${mem.base}); the guest must define its own memory`, 'module');
  }
  if (mod.getNumTables() > 0) {
    for (let i = 0; i < mod.getNumTables(); i++) {
      const t = binaryen.getTableInfo(mod.getTableByIndex(i));
      if (t.module) refuse(`imported table (${t.module}.${t.base})`, 'module');
    }
  }

  const imports: InstrumentedModule['imports'] = [];
  const nFuncs = mod.getNumFunctions();
  const defined: Ref[] = [];
  for (let i = 0; i < nFuncs; i++) {
    const f = mod.getFunctionByIndex(i);
    const info = binaryen.getFunctionInfo(f);
    if (info.module) {
      if (info.module === INTERNAL_MODULE) {
        throw new FtvmError('FTVM_ERR_ABI_IMPORT', `the guest imports ${info.module}.${info.base}: module "${INTERNAL_MODULE}" is reserved for the VMM`);
      }
      imports.push({ module: info.module, name: info.base ?? '', signature: signatureOf(info.params, info.results) });
    } else {
      defined.push(f);
    }
  }
  for (let i = 0; i < mod.getNumGlobals(); i++) {
    const g = binaryen.getGlobalInfo(mod.getGlobalByIndex(i));
    if (g.module) throw new FtvmError('FTVM_ERR_ABI_IMPORT', `the guest imports global ${g.module}.${g.base}; ABI v1 imports only functions`);
  }

  const exports: string[] = [];
  let memoryName = '0'; // binaryen's name for an unnamed memory
  for (let i = 0; i < mod.getNumExports(); i++) {
    const e = binaryen.getExportInfo(mod.getExportByIndex(i));
    if (e.kind === binaryen.ExternalFunction) exports.push(e.name);
    if (e.kind === binaryen.ExternalMemory) memoryName = e.value;
    if (e.name.startsWith('__ftvm')) throw new FtvmError('FTVM_ERR_ABI_EXPORT', `the guest exports "${e.name}": names starting with __ftvm are reserved`);
  }

  // --- VMM globals, imports and exports ---
  const globalExports: string[] = [];
  const nGlobals = mod.getNumGlobals();
  for (let i = 0; i < nGlobals; i++) {
    const g = binaryen.getGlobalInfo(mod.getGlobalByIndex(i));
    if (g.mutable) {
      if (g.type === binaryen.v128) refuse('a mutable v128 global (JavaScript cannot read it into a snapshot)', `global ${g.name}`);
      const name = `${GLOBAL_EXPORT_PREFIX}${i}`;
      mod.addGlobalExport(g.name, name);
      globalExports.push(name);
    }
  }
  mod.addGlobal(FUEL_GLOBAL, binaryen.i64, true, mod.i64.const(0n as never));
  mod.addGlobal(DEPTH_GLOBAL, binaryen.i32, true, mod.i32.const(0));
  mod.addGlobalExport(FUEL_GLOBAL, FUEL_GLOBAL);
  mod.addGlobalExport(DEPTH_GLOBAL, DEPTH_GLOBAL);
  mod.addFunctionImport(`${INTERNAL_MODULE}.budget`, INTERNAL_MODULE, 'budget', binaryen.createType([binaryen.i32, binaryen.i64]), binaryen.i64);
  mod.addFunctionImport(`${INTERNAL_MODULE}.depth_exceeded`, INTERNAL_MODULE, 'depth_exceeded', binaryen.none, binaryen.none);
  mod.addFunctionImport(`${INTERNAL_MODULE}.memory_grow`, INTERNAL_MODULE, 'memory_grow', binaryen.i32, binaryen.i32);
  mod.addMemoryExport(memoryName, MEMORY_EXPORT);

  const startRef = mod.getStart();
  let hasStart = false;
  if (startRef !== 0) {
    const name = binaryen.getFunctionInfo(startRef).name;
    mod.setStart(0);
    mod.addFunctionExport(name, START_EXPORT);
    hasStart = true;
  }

  // --- rewrite every defined function ---
  for (const f of defined) {
    const info = binaryen.getFunctionInfo(f);
    new FunctionRewriter(mod, f, info.name, maxCallDepth).run();
  }

  mod.setFeatures(ALLOWED_FEATURES);
  if (!mod.validate()) {
    throw new FtvmError('FTVM_ERR_UNSUPPORTED_FEATURE', 'the instrumented module does not validate with the allowed features (MVP, mutable-globals, sign-ext, nontrapping-fptoint, bulk-memory, simd128, multivalue)');
  }
  const binary = mod.emitBinary();
  return { binary, hasStart, globalExports, imports, exports, maxCallDepth };
}
