/**
 * Instrumentation: rewrites a guest module with binaryen so that the VMM can count and stop it.
 *
 * - A fuel counter (i64) is charged at every function entry and loop header with the static size of the
 *   region that can run before the next charge (at least 1). The instruction count is
 *   `budgetEnd - fuel`, where the VMM knows budgetEnd.
 * - Fuel and call depth are threaded through the guest's own functions: every defined function gets two
 *   extra trailing parameters (`fuel: i64`, `depth: i32`) and one extra trailing result (the fuel left
 *   when it returns, after its original results). A call passes the caller's fuel and `depth + 1` and
 *   takes the fuel back; `call_indirect` uses the threaded type, so every function in a table is
 *   threaded (an imported function placed in a table goes through a small threaded wrapper). Fuel thus
 *   stays in locals and registers across calls instead of making a store/load round trip through a
 *   global at every call and return.
 * - The global `__ftvm_fuel` is written only where the VMM reads the count: before every call to an
 *   imported function (a host call; the fuel is reloaded from the global after it), before
 *   `ftvm_internal.depth_exceeded`, and by the export wrappers on return. It is read by the export
 *   wrappers on entry. So while the guest runs, `budgetEnd - __ftvm_fuel` is the count at the last host
 *   call or at the entry of the running export (or at the last budget stop where the VMM delivered
 *   input: machine.ts keeps the global there): points every replica passes at the same count. After a
 *   trap the VMM therefore reads the same count on every replica, wherever their budget stops fell.
 * - When a charge would make fuel negative, the guest refunds it and calls the VMM's
 *   `ftvm_internal.budget(k, fuel) -> fuel` import (fuel as an argument: this call does not write the
 *   global, see above). For loops that call sits outside the loop: the loop branches out to it and
 *   re-enters (a call inside the loop makes V8 spill loop values; DESIGN.md §3). On return the VMM
 *   guarantees fuel >= k, so the re-charge succeeds. The VMM therefore sees the guest at an exact count
 *   at every stop, and counts strictly increase.
 * - Exports keep their original signatures: each exported guest function is exported through a wrapper
 *   that reads `__ftvm_fuel`, calls the threaded function with depth 1 and writes the fuel back. Depth
 *   starts at 1 on every export call because the guest is only ever entered from an idle VMM: host
 *   functions never call back into the guest. (If one did, the fuel would still be right, since a host
 *   call flushes it and reloads it, but the nested call would count depth from 1 again.) The global
 *   `__ftvm_depth` stays exported for the VMM but is no longer maintained: it is always 0.
 * - A deterministic call-depth limit: a function entered with `depth > maxCallDepth` flushes the fuel
 *   and calls `ftvm_internal.depth_exceeded`, which traps; traps never depend on the native stack.
 * - `memory.grow` is routed through `ftvm_internal.memory_grow` (a host call) so the VMM logs its result.
 * - A `start` function becomes the export `__ftvm_start`, so it runs metered.
 * - Mutable globals are exported as `__ftvm_g<i>` and memory as `__ftvm_memory` for snapshots.
 */
import binaryen from 'binaryen';
import { FtvmError } from '../util/errors.js';
import { DIRTY_CACHE_GLOBAL, DIRTY_CACHE_RESET, DIRTY_MODULE, DIRTY_PAGE_BYTES } from './dirty-pages.js';

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
  ASYNC_WASI_CALL_NAMES,
  ATOMIC_WAIT32,
  ATOMIC_WAIT64,
  INDIRECT_GLOBAL,
  THREAD_SPAWN_MODULE,
  THREAD_SPAWN_NAME,
  type SharedMemorySpec,
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
  _BinaryenElementSegmentIsPassive(segment: Ref): number;
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

/** Threads (checkpoint mode): the atomic kinds and data.drop, accepted; atomic wait is rewritten into a host call. */
const THREAD_CHILDREN = new Map<number, (expr: Ref) => ChildSlot[]>([
  [ids.AtomicRMWId!, fixed('AtomicRMW', 'Ptr', 'Value')],
  [ids.AtomicCmpxchgId!, fixed('AtomicCmpxchg', 'Ptr', 'Expected', 'Replacement')],
  [ids.AtomicWaitId!, fixed('AtomicWait', 'Ptr', 'Expected', 'Timeout')],
  [ids.AtomicNotifyId!, fixed('AtomicNotify', 'Ptr', 'NotifyCount')],
  [ids.AtomicFenceId!, () => []],
  [ids.DataDropId!, () => []],
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
  if (/^threads|^shared memory/.test(feature)) {
    // What checkpoint mode accepts: say so, since that is the way to run this guest.
    throw new FtvmError(
      'FTVM_ERR_UNSUPPORTED_FEATURE',
      `unsupported wasm feature: ${feature} (in ${where}); replay mode cannot make a threaded guest deterministic: run it with --mode checkpoint (state transfer), which accepts wasi-threads guests`,
    );
  }
  throw new FtvmError('FTVM_ERR_UNSUPPORTED_FEATURE', `unsupported wasm feature: ${feature} (in ${where}); ftvm cannot make it deterministic`);
}

/** The threaded form of a function type: `(params..., fuel: i64, depth: i32) -> (results..., fuel: i64)`. */
interface Threaded {
  /** Original parameter and result types, expanded. */
  params: number[];
  results: number[];
  /** The threaded parameter and result types. */
  tparams: number;
  tresults: number;
}

function threaded(params: number, results: number): Threaded {
  const ps = binaryen.expandType(params);
  const rs = binaryen.expandType(results);
  return {
    params: ps,
    results: rs,
    tparams: binaryen.createType([...ps, binaryen.i64, binaryen.i32]),
    tresults: binaryen.createType([...rs, binaryen.i64]),
  };
}

/** `value` (of the original result types `results`) followed by `fuel`, as one threaded result. */
function withFuel(m: binaryen.Module, results: number[], value: Ref, fuel: Ref, temp: (t: number) => number): Ref {
  if (results.length === 0) return value === 0 ? fuel : m.block(null, [value, fuel], binaryen.i64);
  if (results.length === 1) return m.tuple.make([value, fuel]);
  // Several results: through a temp, as a tuple can only be extended element by element.
  const type = binaryen.createType(results);
  const t = temp(type);
  const parts = results.map((_, i) => m.tuple.extract(m.local.get(t, type), i));
  return m.block(null, [m.local.set(t, value), m.tuple.make([...parts, fuel])], binaryen.createType([...results, binaryen.i64]));
}

/**
 * Splits the threaded result of `call` (original results `results`, then the fuel): the fuel goes to
 * `setFuel`, the original results are the block's value.
 */
function splitFuel(m: binaryen.Module, th: Threaded, call: Ref, setFuel: (fuel: Ref) => Ref, temp: (t: number) => number): Ref {
  if (th.results.length === 0) return setFuel(call);
  const t = temp(th.tresults);
  const n = th.results.length;
  const part = (i: number): Ref => m.tuple.extract(m.local.get(t, th.tresults), i);
  const value = n === 1 ? part(0) : m.tuple.make(th.results.map((_, i) => part(i)));
  return m.block(null, [m.local.set(t, call), setFuel(part(n)), value], binaryen.createType(th.results));
}

/** Per-function rewriting state. */
class FunctionRewriter {
  private labelCounter = 0;
  /** The threaded parameters: the fuel (a parameter, so no load at entry) and the call depth. */
  private readonly fuelLocal: number;
  private readonly depthLocal: number;

  constructor(
    private readonly mod: binaryen.Module,
    private readonly funcRef: Ref,
    private readonly funcName: string,
    private readonly maxCallDepth: number,
    private readonly sig: Threaded,
    /** Threaded signatures of the module's defined functions, by name. */
    private readonly sigs: ReadonlyMap<string, Threaded>,
    /** Count the indirect calls in progress in INDIRECT_GLOBAL (asyncified commands). */
    private readonly countIndirect = false,
    /** Put the dirty-page barrier before every memory write (InstrumentOptions.dirtyPages). */
    private readonly dirty = false,
    /** Checkpoint mode: accept atomics and data.drop; rewrite atomic waits into host calls. */
    private readonly threads = false,
  ) {
    this.fuelLocal = sig.params.length;
    this.depthLocal = sig.params.length + 1;
  }

  private label(kind: string): string {
    return `__ftvm_${kind}_${this.labelCounter++}`;
  }

  /** A fresh temp local of `type`; temps are never reused (cheap, and keeps lifetimes obviously right). */
  private readonly temp = (type: number): number => B._BinaryenFunctionAddVar(this.funcRef, type);

  private fuel(): Ref {
    return this.mod.local.get(this.fuelLocal, binaryen.i64);
  }

  private flush(): Ref {
    return this.mod.global.set(FUEL_GLOBAL, this.fuel());
  }

  private reload(): Ref {
    return this.mod.local.set(this.fuelLocal, this.mod.global.get(FUEL_GLOBAL, binaryen.i64));
  }

  private readonly setFuel = (fuel: Ref): Ref => this.mod.local.set(this.fuelLocal, fuel);

  private charge(k: number): Ref {
    const m = this.mod;
    return m.local.set(this.fuelLocal, m.i64.sub(this.fuel(), m.i64.const(BigInt(k) as never)));
  }

  private fuelNegative(): Ref {
    const m = this.mod;
    return m.i64.lt_s(this.fuel(), m.i64.const(0n as never));
  }

  /**
   * Refund k and ask the VMM, passing the fuel; the VMM returns the new fuel (>= k). The global is not
   * written here, so its value only ever reflects host calls and export entries/exits: the count seen
   * after a trap is then the same on every replica, wherever their budget stops fell.
   */
  private slowPath(k: number): Ref[] {
    const m = this.mod;
    return [
      m.local.set(this.fuelLocal, m.i64.add(this.fuel(), m.i64.const(BigInt(k) as never))),
      m.local.set(this.fuelLocal, m.call(`${INTERNAL_MODULE}.budget`, [m.i32.const(k), this.fuel()], binaryen.i64)),
    ];
  }

  /** Rewrites the function body (whose locals still have their original numbering). */
  run(): void {
    const m = this.mod;
    const info = binaryen.getFunctionInfo(this.funcRef);
    const { expr: body, cost } = this.visit(info.body);
    const k = Math.max(1, cost);
    const inner = binaryen.getExpressionType(body) === binaryen.unreachable ? body : withFuel(m, this.sig.results, body, this.fuel(), this.temp);
    const prologue: Ref[] = [
      m.if(
        m.i32.gt_u(m.local.get(this.depthLocal, binaryen.i32), m.i32.const(this.maxCallDepth)),
        m.block(null, [this.flush(), m.call(`${INTERNAL_MODULE}.depth_exceeded`, [], binaryen.none), m.unreachable()]),
      ),
      this.charge(k),
      m.if(this.fuelNegative(), m.block(null, [...this.slowPath(k), this.charge(k)])),
    ];
    B.Function!.setBody!(this.funcRef, m.block(null, [...prologue, inner], this.sig.tresults));
  }

  /**
   * Rewrites `expr` bottom-up. Returns the new expression, the static cost of its part of the enclosing
   * region (nodes not inside a nested loop; a nested loop counts 1) and whether evaluating it can change
   * the fuel local (it contains a loop, a call or a memory.grow).
   */
  private visit(expr: Ref): { expr: Ref; cost: number; touchesFuel: boolean } {
    if (expr === 0) return { expr, cost: 0, touchesFuel: false };
    const id = binaryen.getExpressionId(expr);
    const threadKind = this.threads ? THREAD_CHILDREN.get(id) : undefined;
    const refused = threadKind === undefined ? REFUSED_KINDS.get(id) : undefined;
    if (refused !== undefined) refuse(refused, `function ${this.funcName}`);
    const childrenOf = threadKind ?? CHILDREN.get(id);
    if (childrenOf === undefined) refuse(`expression kind ${id}`, `function ${this.funcName}`);
    this.checkNode(expr, id);
    // The two threaded parameters sit between the original parameters and the original locals.
    if (id === ids.LocalGetId || id === ids.LocalSetId) {
      const acc = id === ids.LocalGetId ? B.LocalGet! : B.LocalSet!;
      const index = acc.getIndex!(expr);
      if (index >= this.sig.params.length) acc.setIndex!(expr, index + 2);
    }

    let cost = 1;
    let touchesFuel = false;
    for (const s of childrenOf(expr)) {
      const child = s.get(expr);
      if (child === 0) continue;
      const r = this.visit(child);
      if (r.expr !== child) s.set(expr, r.expr);
      cost += r.cost;
      touchesFuel ||= r.touchesFuel;
    }

    if (id === ids.LoopId) return { expr: this.wrapLoop(expr, cost - 1), cost: 1, touchesFuel: true };
    if (id === ids.CallId || id === ids.CallIndirectId) return { expr: this.wrapCall(expr, id, touchesFuel), cost, touchesFuel: true };
    if (id === ids.MemoryGrowId) {
      const delta = B.MemoryGrow!.getDelta!(expr);
      const call = this.mod.call(`${INTERNAL_MODULE}.memory_grow`, [delta], binaryen.i32);
      return { expr: this.wrapCall(call, ids.CallId!, touchesFuel), cost, touchesFuel: true };
    }
    if (id === ids.ReturnId) return { expr: this.wrapReturn(expr), cost, touchesFuel };
    if (id === ids.AtomicWaitId) return { expr: this.rewriteWait(expr, touchesFuel), cost, touchesFuel: true };
    if (this.dirty) return { expr: this.withBarrier(expr, id), cost, touchesFuel };
    return { expr, cost, touchesFuel };
  }

  /**
   * The dirty-page barrier (dirty-pages.ts), right before the write, after every operand was evaluated
   * (so no checkpoint can fall between the marking and the write): the operands go to temps, then
   * `mark` runs unless the write lies in the cached page, then the write itself.
   */
  private withBarrier(expr: Ref, id: number): Ref {
    const m = this.mod;
    type Slot = { get: (e: Ref) => Ref; set: (e: Ref, c: Ref) => void };
    let slots: Slot[];
    let addrSlot = 0;
    let sizeSlot = -1;
    let bytes = 0;
    let offset = 0;
    if (id === ids.StoreId) {
      slots = [{ get: B.Store!.getPtr!, set: (e, c) => void B.Store!.setPtr!(e, c) }, { get: B.Store!.getValue!, set: (e, c) => void B.Store!.setValue!(e, c) }];
      bytes = B.Store!.getBytes!(expr);
      offset = B.Store!.getOffset!(expr);
    } else if (id === ids.SIMDLoadStoreLaneId && B.SIMDLoadStoreLane!.isStore!(expr) !== 0) {
      slots = [{ get: B.SIMDLoadStoreLane!.getPtr!, set: (e, c) => void B.SIMDLoadStoreLane!.setPtr!(e, c) }, { get: B.SIMDLoadStoreLane!.getVec!, set: (e, c) => void B.SIMDLoadStoreLane!.setVec!(e, c) }];
      bytes = 16; // at most a lane of a v128: 16 over-approximates every lane size
      offset = B.SIMDLoadStoreLane!.getOffset!(expr);
    } else if (id === ids.MemoryFillId || id === ids.MemoryCopyId || id === ids.MemoryInitId) {
      const k = id === ids.MemoryFillId ? 'MemoryFill' : id === ids.MemoryCopyId ? 'MemoryCopy' : 'MemoryInit';
      const second = id === ids.MemoryFillId ? 'Value' : id === ids.MemoryCopyId ? 'Source' : 'Offset';
      slots = ['Dest', second, 'Size'].map((n) => ({ get: B[k]![`get${n}`]!, set: (e: Ref, c: Ref) => void B[k]![`set${n}`]!(e, c) }));
      sizeSlot = 2;
    } else {
      return expr;
    }
    const ops = slots.map((sl) => sl.get(expr));
    // An operand that never completes: the write never happens (and its block must keep type-checking).
    if (ops.some((o) => binaryen.getExpressionType(o) === binaryen.unreachable)) return expr;
    const pre: Ref[] = [];
    const temps = ops.map((o, i) => {
      const type = binaryen.getExpressionType(o);
      const t = this.temp(type);
      pre.push(m.local.set(t, o));
      slots[i]!.set(expr, m.local.get(t, type));
      return { t, type };
    });
    const get = (i: number): Ref => m.local.get(temps[i]!.t, temps[i]!.type);
    const mark = `${DIRTY_MODULE}.mark`;
    let barrier: Ref;
    if (sizeSlot >= 0) {
      barrier = m.call(mark, [get(addrSlot), get(sizeSlot)], binaryen.none);
    } else {
      const addr = (): Ref => (offset === 0 ? get(addrSlot) : m.i32.add(get(addrSlot), m.i32.const(offset | 0)));
      barrier = m.if(
        m.i32.gt_u(m.i32.sub(addr(), m.global.get(DIRTY_CACHE_GLOBAL, binaryen.i32)), m.i32.const(DIRTY_PAGE_BYTES - bytes)),
        m.block(null, [m.call(mark, [addr(), m.i32.const(bytes)], binaryen.none), m.global.set(DIRTY_CACHE_GLOBAL, m.i32.and(addr(), m.i32.const(-DIRTY_PAGE_BYTES)))]),
      );
    }
    return m.block(null, [...pre, barrier, expr], binaryen.getExpressionType(expr));
  }

  /**
   * `memory.atomic.wait32/64 offset=o (ptr, expected, timeout)` → `ftvm_internal.atomic_wait32/64(ptr + o,
   * expected, timeout)`: a waiting thread is then in a host call (a place where the VMM can stop it, and
   * a blocking point for a snapshot). The effective address is computed in i64 so that ptr + o cannot
   * wrap; the host traps on an address out of bounds or misaligned, as the instruction would.
   */
  private rewriteWait(expr: Ref, touchesFuel: boolean): Ref {
    const m = this.mod;
    const wait = B.AtomicWait!;
    const is64 = wait.getExpectedType!(expr) === binaryen.i64;
    // binaryen.js has no accessor for an atomic wait's offset: read it from the expression's first text line.
    const head = binaryen.emitText(expr).split('\n', 1)[0] ?? '';
    const offset = Number(/\boffset=(\d+)/.exec(head)?.[1] ?? '0');
    const ptr = m.i64.add(m.i64.extend_u(wait.getPtr!(expr)), m.i64.const(BigInt(offset) as never));
    const name = `${INTERNAL_MODULE}.${is64 ? ATOMIC_WAIT64 : ATOMIC_WAIT32}`;
    const call = m.call(name, [ptr, wait.getExpected!(expr), wait.getTimeout!(expr)], binaryen.i32);
    return this.wrapCall(call, ids.CallId!, touchesFuel);
  }

  private checkNode(expr: Ref, id: number): void {
    if (!CHECKED_KINDS.has(id)) return;
    const info = binaryen.getExpressionInfo(expr) as binaryen.ExpressionInfo & {
      isAtomic?: boolean;
      isReturn?: boolean;
      op?: number;
    };
    if ((id === ids.LoadId || id === ids.StoreId) && info.isAtomic === true && !this.threads) refuse('threads (atomic load/store)', `function ${this.funcName}`);
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

  /** Evaluates the operands (and call_indirect's target) of `call` into temps, in order; returns the sets. */
  private spillOperands(call: Ref, id: number): Ref[] {
    const m = this.mod;
    const pre: Ref[] = [];
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
    return pre;
  }

  /** `childrenTouchFuel`: evaluating the operands (or the target) can change the fuel local. */
  private wrapCall(call: Ref, id: number, childrenTouchFuel: boolean): Ref {
    const m = this.mod;
    const type = binaryen.getExpressionType(call);
    let th: Threaded | undefined;
    if (id === ids.CallIndirectId) {
      th = threaded(B.CallIndirect!.getParams!(call), B.CallIndirect!.getResults!(call));
    } else {
      th = this.sigs.get(B.Call!.getTarget!(call) as unknown as string);
    }
    if (th === undefined) {
      // A host call: the VMM reads the count from the global, and the import never changes the fuel
      // (only `budget` does, and it returns it), but reload anyway: host calls are rare.
      if (type === binaryen.unreachable) return call; // an operand never returns: the call never happens
      // Charges inside operands land in the fuel local: evaluate operands first, then flush.
      const pre = childrenTouchFuel ? this.spillOperands(call, id) : [];
      pre.push(this.flush());
      if (type === binaryen.none) return m.block(null, [...pre, call, this.reload()], binaryen.none);
      const t = this.temp(type);
      return m.block(null, [...pre, m.local.set(t, call), this.reload(), m.local.get(t, type)], type);
    }
    // A threaded call: pass (fuel, depth + 1) after the original operands, take the fuel back.
    // call_indirect evaluates its target after the operands: when the target can change the fuel,
    // evaluate everything into temps first so that the fuel passed is the fuel at the call.
    const pre = id === ids.CallIndirectId && childrenTouchFuel && type !== binaryen.unreachable ? this.spillOperands(call, id) : [];
    const acc = id === ids.CallId ? B.Call! : B.CallIndirect!;
    acc.appendOperand!(call, this.fuel());
    acc.appendOperand!(call, m.i32.add(m.local.get(this.depthLocal, binaryen.i32), m.i32.const(1)));
    if (id === ids.CallIndirectId) {
      B.CallIndirect!.setParams!(call, th.tparams);
      B.CallIndirect!.setResults!(call, th.tresults);
    }
    if (type === binaryen.unreachable) {
      B.Expression!.setType!(call, binaryen.unreachable);
      return call; // an operand never returns: the call never happens (but must still type-check)
    }
    B.Expression!.setType!(call, th.tresults);
    let split = splitFuel(m, th, call, this.setFuel, this.temp);
    if (id === ids.CallIndirectId && this.countIndirect) {
      // Asyncify is told indirect calls never unwind (else it would rewrite nearly every function):
      // the VMM unwinds a blocked command only while no indirect call is in progress.
      const bump = (d: number): Ref => m.global.set(INDIRECT_GLOBAL, m.i32.add(m.global.get(INDIRECT_GLOBAL, binaryen.i32), m.i32.const(d)));
      if (type === binaryen.none) {
        split = m.block(null, [bump(1), split, bump(-1)], binaryen.none);
      } else {
        const t = this.temp(type);
        split = m.block(null, [bump(1), m.local.set(t, split), bump(-1), m.local.get(t, type)], type);
      }
    }
    return pre.length === 0 ? split : m.block(null, [...pre, split], type);
  }

  private wrapReturn(ret: Ref): Ref {
    const value = B.Return!.getValue!(ret);
    if (value !== 0 && binaryen.getExpressionType(value) === binaryen.unreachable) return ret;
    B.Return!.setValue!(ret, withFuel(this.mod, this.sig.results, value, this.fuel(), this.temp));
    return ret;
  }
}

/** Reads, checks and instruments a guest module. Throws FtvmError with a clear message for bad input. */
/**
 * WASI calls in which a command may block: a command importing any of them is rewritten by binaryen's
 * Asyncify pass at these imports only, so that a guest blocked in one can unwind its stack into linear
 * memory (a snapshot) and be rewound into the same call on another replica.
 */
export const ASYNC_WASI_CALLS = [...ASYNC_WASI_CALL_NAMES];

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
    return instrumentModule(mod, maxCallDepth, options.asyncify ?? true, options.threads ?? false, options.dirtyPages === true);
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

/** A function name not yet used in the module. */
function freshName(mod: binaryen.Module, base: string): string {
  let name = base;
  for (let i = 1; mod.getFunction(name) !== 0; i++) name = `${base}_${i}`;
  return name;
}

function instrumentModule(mod: binaryen.Module, maxCallDepth: number, asyncifyOpt: boolean, threads: boolean, dirtyOpt: boolean): InstrumentedModule {
  // --- module-level checks ---
  const memoryCount = (mod as unknown as { getNumMemories?: () => number }).getNumMemories?.() ?? (mod.hasMemory() ? 1 : 0);
  if (memoryCount > 1) refuse('multiple memories', 'module');
  if (!mod.hasMemory()) throw new FtvmError('FTVM_ERR_ABI_EXPORT', 'the guest has no memory; ABI v1 needs one (exported as "memory")');
  const mem = mod.getMemoryInfo();
  if (mem.shared && !threads) refuse('shared memory (threads)', 'memory');
  if (mem.is64) refuse('memory64', 'memory');
  const memImported = mem.module !== '' && mem.module !== null && mem.module !== undefined;
  let sharedMemory: SharedMemorySpec | undefined;
  if (threads && (mem.shared || memImported)) {
    // wasi-threads: every thread's instance imports the one shared memory.
    if (!mem.shared || !memImported) refuse(`a ${mem.shared ? 'shared memory the guest defines itself' : 'memory imported but not shared'}; a threaded guest imports a shared memory (wasi-threads)`, 'memory');
    if (mem.max === undefined) refuse('a shared memory without a maximum size', 'memory');
    sharedMemory = { module: mem.module!, base: mem.base ?? '', initialPages: mem.initial, maximumPages: mem.max! };
  } else if (memImported) {
    refuse(`imported memory (${mem.module}.${mem.base}); the guest must define its own memory`, 'module');
  }
  const asyncify = asyncifyOpt;
  // The store barrier marks pages in a map of the VMM's own instance on the vCPU thread; a threaded
  // guest's other threads run on workers of their own, so a threaded guest is tracked by comparing pages.
  const dirty = dirtyOpt && sharedMemory === undefined;
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
      if (info.module === THREAD_SPAWN_MODULE && info.base === THREAD_SPAWN_NAME && sharedMemory === undefined) {
        refuse('threads (the wasi-threads import wasi.thread-spawn)', 'imports');
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

  // Element segments: the only way functions get into tables (table.set, table.grow and ref.func are refused).
  const segments: binaryen.ElementSegmentInfo[] = [];
  for (let i = 0; i < mod.getNumElementSegments(); i++) {
    const ref = mod.getElementSegmentByIndex(i);
    // Passive segments only serve table.init (refused); the MVP validation refused them before.
    if (B._BinaryenElementSegmentIsPassive(ref) !== 0) refuse('passive element segments (reference types)', `element segment ${i}`);
    let s: binaryen.ElementSegmentInfo;
    try {
      s = binaryen.getElementSegmentInfo(ref);
    } catch {
      return refuse('reference types (an element that is not a function)', `element segment ${i}`);
    }
    if (s.data.some((d) => typeof d !== 'string' || d === '')) refuse('reference types (a null element)', `element segment ${s.name}`);
    segments.push(s);
  }

  // --- VMM globals, imports and exports ---
  const globalExports: string[] = [];
  let stackPointerExport: string | undefined;
  const nGlobals = mod.getNumGlobals();
  for (let i = 0; i < nGlobals; i++) {
    const g = binaryen.getGlobalInfo(mod.getGlobalByIndex(i));
    if (g.mutable) {
      if (g.type === binaryen.v128) refuse('a mutable v128 global (JavaScript cannot read it into a snapshot)', `global ${g.name}`);
      const name = `${GLOBAL_EXPORT_PREFIX}${i}`;
      mod.addGlobalExport(g.name, name);
      globalExports.push(name);
      if (g.name === '__stack_pointer' && g.type === binaryen.i32) stackPointerExport = name;
    }
  }
  // A module without a name section (clang runs wasm-opt when it finds one on PATH, which drops the
  // names): wasm-ld always defines __stack_pointer as the module's first global, a mutable i32.
  if (stackPointerExport === undefined && sharedMemory !== undefined && nGlobals > 0) {
    const g0 = binaryen.getGlobalInfo(mod.getGlobalByIndex(0));
    if (g0.mutable && g0.type === binaryen.i32 && !g0.module) stackPointerExport = `${GLOBAL_EXPORT_PREFIX}0`;
  }
  mod.addGlobal(FUEL_GLOBAL, binaryen.i64, true, mod.i64.const(0n as never));
  // Kept for the VMM's view of the module; depth is threaded as a parameter, so this stays 0.
  mod.addGlobal(DEPTH_GLOBAL, binaryen.i32, true, mod.i32.const(0));
  mod.addGlobalExport(FUEL_GLOBAL, FUEL_GLOBAL);
  const blocking = asyncify && exports.includes('_start') && !exports.includes('ftvm_step') ? imports.filter((i) => i.module === 'wasi_snapshot_preview1' && ASYNC_WASI_CALLS.includes(i.name)) : [];
  // A threaded guest's threads also park in their futex waits (the rewritten atomic waits).
  const asyncWaits = blocking.length > 0 && sharedMemory !== undefined ? [ATOMIC_WAIT32, ATOMIC_WAIT64].map((n) => `${INTERNAL_MODULE}.${n}`) : [];
  if (blocking.length > 0) {
    mod.addGlobal(INDIRECT_GLOBAL, binaryen.i32, true, mod.i32.const(0));
    mod.addGlobalExport(INDIRECT_GLOBAL, INDIRECT_GLOBAL);
  }
  mod.addGlobalExport(DEPTH_GLOBAL, DEPTH_GLOBAL);
  mod.addFunctionImport(`${INTERNAL_MODULE}.budget`, INTERNAL_MODULE, 'budget', binaryen.createType([binaryen.i32, binaryen.i64]), binaryen.i64);
  mod.addFunctionImport(`${INTERNAL_MODULE}.depth_exceeded`, INTERNAL_MODULE, 'depth_exceeded', binaryen.none, binaryen.none);
  mod.addFunctionImport(`${INTERNAL_MODULE}.memory_grow`, INTERNAL_MODULE, 'memory_grow', binaryen.i32, binaryen.i32);
  if (sharedMemory !== undefined) {
    const waitParams = (t: number): number => binaryen.createType([binaryen.i64, t, binaryen.i64]);
    mod.addFunctionImport(`${INTERNAL_MODULE}.${ATOMIC_WAIT32}`, INTERNAL_MODULE, ATOMIC_WAIT32, waitParams(binaryen.i32), binaryen.i32);
    mod.addFunctionImport(`${INTERNAL_MODULE}.${ATOMIC_WAIT64}`, INTERNAL_MODULE, ATOMIC_WAIT64, waitParams(binaryen.i64), binaryen.i32);
  }
  // A threaded guest's memory is the VMM's own (it creates the shared memory every instance imports).
  if (sharedMemory === undefined) mod.addMemoryExport(memoryName, MEMORY_EXPORT);
  if (dirty) {
    mod.addGlobal(DIRTY_CACHE_GLOBAL, binaryen.i32, true, mod.i32.const(DIRTY_CACHE_RESET));
    mod.addGlobalExport(DIRTY_CACHE_GLOBAL, DIRTY_CACHE_GLOBAL);
    mod.addFunctionImport(`${DIRTY_MODULE}.mark`, DIRTY_MODULE, 'mark', binaryen.createType([binaryen.i32, binaryen.i32]), binaryen.none);
  }

  const startRef = mod.getStart();
  let hasStart = false;
  if (startRef !== 0) {
    const name = binaryen.getFunctionInfo(startRef).name;
    mod.setStart(0);
    mod.addFunctionExport(name, START_EXPORT);
    hasStart = true;
  }

  // --- give every defined function its threaded type ---
  // binaryen cannot change a function's type in place: re-add it under the same name with the same
  // body (expressions live in the module's arena). Its locals are renumbered while it is rewritten.
  const sigs = new Map<string, Threaded>();
  const infos = defined.map((f) => binaryen.getFunctionInfo(f));
  const rewritten: Array<{ ref: Ref; name: string }> = [];
  for (const info of infos) {
    const th = threaded(info.params, info.results);
    mod.removeFunction(info.name);
    const ref = mod.addFunction(info.name, th.tparams, th.tresults, info.vars ?? [], info.body);
    sigs.set(info.name, th);
    rewritten.push({ ref, name: info.name });
  }

  // --- tables: imported functions get threaded wrappers; segments are rebuilt against the new types ---
  const importWrappers = new Map<string, string>();
  const m = mod;
  for (const s of segments) {
    for (const name of s.data) {
      if (sigs.has(name) || importWrappers.has(name)) continue;
      const info = binaryen.getFunctionInfo(mod.getFunction(name));
      const th = threaded(info.params, info.results);
      const wrapper = freshName(mod, `__ftvm_table_${name}`);
      const nP = th.params.length;
      const vars: number[] = [];
      const temp = (t: number): number => nP + 2 + vars.push(t) - 1;
      const call = m.call(name, th.params.map((t, i) => m.local.get(i, t)), info.results);
      const body = m.block(
        null,
        [m.global.set(FUEL_GLOBAL, m.local.get(nP, binaryen.i64)), withFuel(m, th.results, call, m.global.get(FUEL_GLOBAL, binaryen.i64), temp)],
        th.tresults,
      );
      mod.addFunction(wrapper, th.tparams, th.tresults, vars, body);
      importWrappers.set(name, wrapper);
    }
  }
  for (const s of segments) mod.removeElementSegment(s.name);
  for (const s of segments) mod.addActiveElementSegment(s.table, s.name, s.data.map((n) => importWrappers.get(n) ?? n), s.offset);

  // --- rewrite every defined function ---
  for (const { ref, name } of rewritten) new FunctionRewriter(mod, ref, name, maxCallDepth, sigs.get(name)!, sigs, blocking.length > 0, dirty, sharedMemory !== undefined).run();

  // --- exports keep their original signatures through wrappers ---
  const exportWrappers = new Map<string, string>();
  const functionExports: Array<{ name: string; value: string }> = [];
  for (let i = 0; i < mod.getNumExports(); i++) {
    const e = binaryen.getExportInfo(mod.getExportByIndex(i));
    if (e.kind === binaryen.ExternalFunction && sigs.has(e.value)) functionExports.push({ name: e.name, value: e.value });
  }
  for (const e of functionExports) {
    let wrapper = exportWrappers.get(e.value);
    if (wrapper === undefined) {
      const th = sigs.get(e.value)!;
      wrapper = freshName(mod, `__ftvm_export_${e.value}`);
      // Depth 1: the guest is entered only from an idle VMM (host functions never call back into it).
      const call = m.call(e.value, [...th.params.map((t, i) => m.local.get(i, t)), m.global.get(FUEL_GLOBAL, binaryen.i64), m.i32.const(1)], th.tresults);
      const vars: number[] = [];
      const temp = (t: number): number => th.params.length + vars.push(t) - 1;
      const body = splitFuel(m, th, call, (fuel) => m.global.set(FUEL_GLOBAL, fuel), temp);
      mod.addFunction(wrapper, binaryen.createType(th.params), binaryen.createType(th.results), vars, body);
      exportWrappers.set(e.value, wrapper);
    }
    mod.removeExport(e.name);
    mod.addFunctionExport(wrapper, e.name);
  }

  mod.setFeatures(ALLOWED_FEATURES | (sharedMemory !== undefined ? binaryen.Features.Atomics : 0));
  if (!mod.validate()) {
    throw new FtvmError('FTVM_ERR_UNSUPPORTED_FEATURE', 'the instrumented module does not validate with the allowed features (MVP, mutable-globals, sign-ext, nontrapping-fptoint, bulk-memory, simd128, multivalue)');
  }
  // --- Asyncify at the blocking WASI calls of a command (snapshots of a guest blocked in a call) ---
  if (blocking.length > 0) {
    binaryen.setPassArgument('asyncify-ignore-indirect', 'true');
    binaryen.setPassArgument('asyncify-imports', [...blocking.map((i) => `${i.module}.${i.name}`), ...asyncWaits].join(','));
    const level = binaryen.getOptimizeLevel();
    try {
      binaryen.setOptimizeLevel(0); // 1 or 2 shrink the code but cost seconds at every load
      mod.runPasses(['asyncify']);
    } finally {
      binaryen.setOptimizeLevel(level);
      binaryen.clearPassArguments();
    }
    if (!mod.validate()) throw new FtvmError('FTVM_ERR_UNSUPPORTED_FEATURE', 'the module does not validate after the asyncify pass');
  }
  const binary = mod.emitBinary();
  return { binary, hasStart, globalExports, imports, exports, maxCallDepth, asyncified: blocking.length > 0, ...(dirty ? { dirtyPages: true } : {}), ...(sharedMemory !== undefined ? { sharedMemory } : {}), ...(stackPointerExport !== undefined ? { stackPointerExport } : {}) };
}
