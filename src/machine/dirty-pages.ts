/**
 * Dirty-page tracking by a store barrier (checkpoint mode, `--dirty-tracking barrier`): the instrumenter
 * (instrument.ts, option `dirtyPages`) puts a barrier before every store of the guest — plain and SIMD
 * stores, memory.fill, memory.copy, memory.init (atomic read-modify-writes never reach it: threads are
 * refused) — that marks the 4 KiB pages it writes in a byte map; the VMM marks the pages its host calls
 * write (Machine.guestBytes, the receive ring, the asyncify buffer). A checkpoint then copies and encodes
 * only the marked pages instead of comparing all of memory with its shadow.
 *
 * Where the map lives, so that the guest can neither read nor corrupt it: in the memory of a separate,
 * VMM-owned wasm instance (this module's helper: one exported memory `bitmap` of 1 MiB — a byte per 4 KiB
 * page of a full 4 GiB wasm32 memory — and `mark(addr, len)`). The guest imports only `mark`
 * (`ftvm_dirty.mark`, a wasm-to-wasm call, no JavaScript on the way); it has no instruction that
 * addresses another instance's memory (multi-memory is not available to guests). The barrier calls it only
 * when a store leaves the page of the previous marking store: that page's base address is cached in an
 * instrumenter-added global (`__ftvm_dirty_page`), which the guest's code never names. The VMM resets the
 * cache whenever it clears the map (at a checkpoint, the guest idle), so every page written after a
 * clear is marked again.
 *
 * The check costs one subtraction and one unsigned compare per store: `(addr - cache) >u (4096 - bytes)`
 * is false exactly when the store lies inside the cached page. The reset value 0xFFFFF000 makes every
 * store miss except into the last 4 KiB of a full 4 GiB memory, which the snapshot therefore always
 * counts as dirty.
 */
export const DIRTY_PAGE_BYTES = 4096;
export const DIRTY_MODULE = 'ftvm_dirty';
export const DIRTY_CACHE_GLOBAL = '__ftvm_dirty_page';
/** The cache's value after a clear: no page (see above). */
export const DIRTY_CACHE_RESET = -4096;
const MAX_PAGES = 1 << 20; // 4 GiB / 4 KiB

/** `(memory 16 16) (export "bitmap") (func (export "mark") (param addr len) …)`, built with binaryen (see docs/PERFORMANCE.md). */
const HELPER_WASM = Buffer.from(
  'AGFzbQEAAAABBgFgAn9/AAMCAQAFBAEBEBAHEQIGYml0bWFwAgAEbWFyawAACkMBQQAgAUUEQA8LIAAgAUEBa2oiASAASQRAQX8hAQsgAEEMdiEAIAFBDHYhAQNAIABBAToAACABIABBAWoiAE8NAAsL',
  'base64',
);
let helperModule: WebAssembly.Module | undefined;

/** One guest's dirty-page map and its marking function. */
export class DirtyPages {
  private readonly instance: WebAssembly.Instance;
  /** The byte map: 1 = written since the last clear. */
  readonly map: Uint8Array;
  readonly mark: (addr: number, len: number) => void;
  /**
   * Until the first clear after the guest was instantiated or restored, the map says nothing: data
   * segments and restores write memory without marking it. A snapshot then reports everything as dirty.
   */
  complete = false;
  /** Clears so far: a snapshot's map is the `seq`-th; a reader that missed one must compare everything. */
  seq = 0;

  constructor() {
    helperModule ??= new WebAssembly.Module(HELPER_WASM);
    this.instance = new WebAssembly.Instance(helperModule, {});
    this.map = new Uint8Array((this.instance.exports.bitmap as WebAssembly.Memory).buffer);
    this.mark = this.instance.exports.mark as (addr: number, len: number) => void;
  }

  /** The guest's imports for the barrier. */
  get imports(): WebAssembly.ModuleImports {
    return { mark: this.mark };
  }

  /** markHost, bound (a callback for the receive ring's writes). */
  readonly markRange = (addr: number, len: number): void => this.markHost(addr, len);

  /** Marks [addr, addr + len) from the host (JavaScript; the guest's barrier calls `mark` directly). */
  markHost(addr: number, len: number): void {
    if (len <= 0) return;
    const first = addr >>> 12;
    const last = Math.min(MAX_PAGES - 1, Math.floor((addr + len - 1) / DIRTY_PAGE_BYTES));
    this.map.fill(1, first, last + 1);
  }

  /**
   * The pages of a `memoryBytes` memory written since the last clear (a copy), or undefined when the map is
   * not complete; then clears the map (the caller resets the guest's cache global).
   */
  take(memoryBytes: number): { map: Uint8Array | undefined; seq: number } {
    const pages = Math.ceil(memoryBytes / DIRTY_PAGE_BYTES);
    const map = this.complete ? this.map.slice(0, pages) : undefined;
    if (map !== undefined && pages === MAX_PAGES) map[MAX_PAGES - 1] = 1; // the cache's reset value hides it
    this.map.fill(0, 0, pages);
    this.complete = true;
    this.seq++;
    return { map, seq: this.seq };
  }
}
