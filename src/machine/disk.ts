/**
 * The replicated virtual disk: an in-memory file tree behind the guest's pre-opened `/data` directory.
 * Every operation is a deterministic function of the tree (timestamps come from the VM's logged clock,
 * ENOSPC from the VM's quota), so file operations are not logged; the tree is part of the state hash and
 * of every snapshot. Each replica persists its own copy to its image file (`--disk <file>`) when the guest
 * syncs: written to a temporary file, fsynced and renamed, so the image is always a whole tree. A host
 * I/O error there fails this replica (FTVM_ERR_DISK_IO); it never becomes a result the guest sees.
 */
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, openSync, renameSync, writeSync } from 'node:fs';
import { ByteReader, ByteWriter } from '../log/codec.js';
import { FtvmError } from '../util/errors.js';

export const ROOT_INO = 1;
export const KIND_FILE = 4; // WASI filetype REGULAR_FILE
export const KIND_DIR = 3; // WASI filetype DIRECTORY
const MAGIC = Buffer.from('FTVMDSK1', 'latin1');
export const MAX_DISK_BYTES = 1024 * 1024 * 1024;
const MAX_NAME_BYTES = 255;
const MAX_INODES = 100_000;

export const E = {
  SUCCESS: 0,
  EXIST: 20,
  INVAL: 28,
  ISDIR: 31,
  NAMETOOLONG: 37,
  NOENT: 44,
  NOSPC: 51,
  NOTDIR: 54,
  NOTEMPTY: 55,
  NOTCAPABLE: 76,
} as const;

export interface Inode {
  kind: number;
  /** File contents: `data[0, size)` (capacity may be larger). */
  data: Uint8Array;
  size: number;
  /** Directory entries: name → inode number. */
  entries: Map<string, number>;
  atimNs: bigint;
  mtimNs: bigint;
  ctimNs: bigint;
}

export type Lookup = { errno: number } | { errno: 0; ino: number; parent: number; name: string; exists: boolean };

export class VirtualDisk {
  readonly inodes = new Map<number, Inode>();
  nextIno = ROOT_INO + 1;
  usedBytes = 0;
  /** Changed since the image was last written. */
  private dirty = true;

  constructor(readonly quotaBytes: number) {
    if (!Number.isSafeInteger(quotaBytes) || quotaBytes < 0 || quotaBytes > MAX_DISK_BYTES) {
      throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `disk size ${quotaBytes} outside [0, ${MAX_DISK_BYTES}]`);
    }
    this.inodes.set(ROOT_INO, VirtualDisk.node(KIND_DIR, 0n));
  }

  private static node(kind: number, nowNs: bigint): Inode {
    return { kind, data: new Uint8Array(0), size: 0, entries: new Map(), atimNs: nowNs, mtimNs: nowNs, ctimNs: nowNs };
  }

  get(ino: number): Inode | undefined {
    return this.inodes.get(ino);
  }

  /**
   * Resolves `path` relative to directory `dirIno`. Absolute paths and `..` above the root are
   * ENOTCAPABLE (the guest cannot leave /data). The last component need not exist.
   */
  resolve(dirIno: number, path: string): Lookup {
    if (path.startsWith('/')) return { errno: E.NOTCAPABLE };
    const parts = path.split('/').filter((p) => p !== '' && p !== '.');
    // Walk with a stack of directories, so `..` goes back up but never above the pre-opened root.
    const stack: number[] = [dirIno];
    if (parts.length === 0) return { errno: 0, ino: dirIno, parent: dirIno, name: '.', exists: true };
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!;
      const last = i === parts.length - 1;
      if (Buffer.byteLength(p) > MAX_NAME_BYTES) return { errno: E.NAMETOOLONG };
      const cur = this.inodes.get(stack[stack.length - 1]!)!;
      if (cur.kind !== KIND_DIR) return { errno: E.NOTDIR };
      if (p === '..') {
        if (stack.length === 1) return { errno: E.NOTCAPABLE };
        stack.pop();
        if (last) {
          const ino = stack[stack.length - 1]!;
          return { errno: 0, ino, parent: stack[stack.length - 2] ?? ino, name: '..', exists: true };
        }
        continue;
      }
      const child = cur.entries.get(p);
      if (last) return { errno: 0, ino: child ?? 0, parent: stack[stack.length - 1]!, name: p, exists: child !== undefined };
      if (child === undefined) return { errno: E.NOENT };
      stack.push(child);
    }
    return { errno: E.INVAL };
  }

  /** Creates an entry `name` in `parent`. */
  create(parent: number, name: string, kind: number, nowNs: bigint): number | { errno: number } {
    if (this.inodes.size >= MAX_INODES) return { errno: E.NOSPC };
    const ino = this.nextIno++;
    this.inodes.set(ino, VirtualDisk.node(kind, nowNs));
    const p = this.inodes.get(parent)!;
    p.entries.set(name, ino);
    p.mtimNs = nowNs;
    p.ctimNs = nowNs;
    this.dirty = true;
    return ino;
  }

  /** Removes the entry; the inode is freed once unreferenced (`isOpen` tells whether an fd holds it). */
  unlink(parent: number, name: string, nowNs: bigint, isOpen: (ino: number) => boolean): void {
    const p = this.inodes.get(parent)!;
    const ino = p.entries.get(name);
    if (ino === undefined) return;
    p.entries.delete(name);
    p.mtimNs = nowNs;
    p.ctimNs = nowNs;
    if (!isOpen(ino)) this.free(ino);
    this.dirty = true;
  }

  /** Frees an inode no directory entry and no fd refers to. */
  free(ino: number): void {
    const n = this.inodes.get(ino);
    if (n === undefined || ino === ROOT_INO) return;
    for (const e of this.inodes.values()) for (const v of e.entries.values()) if (v === ino) return; // still linked
    this.usedBytes -= n.size;
    this.inodes.delete(ino);
    this.dirty = true;
  }

  /** Sets a file's size (zero-filling growth); ENOSPC past the quota. */
  resize(ino: number, size: number, nowNs: bigint): number {
    const n = this.inodes.get(ino)!;
    if (size === n.size) return E.SUCCESS;
    if (size > n.size && this.usedBytes + (size - n.size) > this.quotaBytes) return E.NOSPC;
    if (size > n.data.length) {
      let cap = Math.max(4096, n.data.length * 2);
      while (cap < size) cap *= 2;
      const d = new Uint8Array(cap);
      d.set(n.data.subarray(0, n.size));
      n.data = d;
    } else if (size < n.size) {
      n.data.fill(0, size, n.size);
    }
    this.usedBytes += size - n.size;
    n.size = size;
    n.mtimNs = nowNs;
    n.ctimNs = nowNs;
    this.dirty = true;
    return E.SUCCESS;
  }

  /** Writes `src` at `offset`, growing the file; all or nothing (ENOSPC). */
  write(ino: number, offset: number, src: Uint8Array, nowNs: bigint): number {
    const n = this.inodes.get(ino)!;
    const end = offset + src.length;
    if (end > n.size) {
      const r = this.resize(ino, end, nowNs);
      if (r !== E.SUCCESS) return r;
    }
    n.data.set(src, offset);
    n.mtimNs = nowNs;
    n.ctimNs = nowNs;
    this.dirty = true;
    return E.SUCCESS;
  }

  read(ino: number, offset: number, max: number): Uint8Array {
    const n = this.inodes.get(ino)!;
    if (offset >= n.size) return new Uint8Array(0);
    return n.data.subarray(offset, Math.min(n.size, offset + max));
  }

  touch(): void {
    this.dirty = true;
  }

  // ---------------------------------------------------------------- state

  /** The whole tree in one deterministic encoding (snapshots, the state hash, the image file). */
  serialize(): Uint8Array {
    const w = new ByteWriter(4096 + this.usedBytes, MAX_DISK_BYTES + 64 * 1024 * 1024);
    w.bytes(MAGIC);
    w.varint(this.quotaBytes);
    w.varint(this.nextIno);
    const inos = [...this.inodes.keys()].sort((a, b) => a - b);
    w.varint(inos.length);
    for (const ino of inos) {
      const n = this.inodes.get(ino)!;
      w.varint(ino);
      w.u8(n.kind);
      w.u64(n.atimNs);
      w.u64(n.mtimNs);
      w.u64(n.ctimNs);
      if (n.kind === KIND_FILE) {
        w.varint(n.size);
        w.bytes(n.data.subarray(0, n.size));
      } else {
        const names = [...n.entries.keys()].sort();
        w.varint(names.length);
        for (const name of names) {
          const b = Buffer.from(name, 'utf8');
          w.varint(b.length);
          w.bytes(b);
          w.varint(n.entries.get(name)!);
        }
      }
    }
    return w.finish();
  }

  static deserialize(buf: Uint8Array): VirtualDisk {
    const bad = (m: string): never => {
      throw new FtvmError('FTVM_ERR_SNAPSHOT', `bad disk image: ${m}`);
    };
    if (buf.length < 8 || !Buffer.from(buf.subarray(0, 8)).equals(MAGIC)) bad('no FTVMDSK1 magic');
    const r = new ByteReader(buf);
    r.pos = 8;
    const d = new VirtualDisk(r.varint());
    d.inodes.clear();
    d.nextIno = r.varint();
    const count = r.varint();
    if (count > MAX_INODES) bad(`${count} inodes`);
    for (let i = 0; i < count; i++) {
      const ino = r.varint();
      const kind = r.u8();
      if (kind !== KIND_FILE && kind !== KIND_DIR) bad(`inode kind ${kind}`);
      const n = VirtualDisk.node(kind, 0n);
      n.atimNs = r.u64();
      n.mtimNs = r.u64();
      n.ctimNs = r.u64();
      if (kind === KIND_FILE) {
        const size = r.varint();
        if (size > MAX_DISK_BYTES) bad(`file of ${size} bytes`);
        // Read directly: a file may exceed the log codec's per-field limit (16 MiB).
        if (size > r.remaining) bad(`file of ${size} bytes truncated at ${r.remaining}`);
        n.data = buf.slice(r.pos, r.pos + size);
        r.pos += size;
        n.size = size;
        d.usedBytes += size;
      } else {
        const k = r.varint();
        for (let j = 0; j < k; j++) {
          const name = Buffer.from(r.bytes(r.varint())).toString('utf8');
          n.entries.set(name, r.varint());
        }
      }
      d.inodes.set(ino, n);
    }
    if (!d.inodes.has(ROOT_INO) || d.inodes.get(ROOT_INO)!.kind !== KIND_DIR) bad('no root directory');
    if (r.remaining !== 0) bad('trailing bytes');
    return d;
  }

  hash(): Uint8Array {
    return createHash('sha256').update(this.serialize()).digest();
  }

  /**
   * Writes the tree to `path` (temp file, fsync, rename) if it changed since the last write. Host
   * errors fail this replica: FTVM_ERR_DISK_IO.
   */
  persist(path: string): void {
    if (!this.dirty) return;
    const tmp = `${path}.tmp`;
    try {
      const bytes = this.serialize();
      const fd = openSync(tmp, 'w');
      try {
        let off = 0;
        while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, path);
    } catch (err) {
      throw new FtvmError('FTVM_ERR_DISK_IO', `cannot write the disk image ${path}: ${(err as Error).message}`, { cause: err });
    }
    this.dirty = false;
  }
}
