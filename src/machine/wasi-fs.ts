/**
 * WASI preview1 file calls on the replicated virtual disk (disk.ts), pre-opened as `/data` at fd 3.
 * Every result is a deterministic function of the disk, the fd table and the VM's logged clock, so none
 * is logged. Paths are resolved inside the pre-opened directory only: absolute paths and `..` above it
 * are ENOTCAPABLE.
 */
import { FdKind, RIGHT_READ, RIGHT_WRITE, type FdState } from './devices.js';
import { E, KIND_DIR, KIND_FILE, ROOT_INO, type VirtualDisk } from './disk.js';
import type { Machine } from './machine.js';

const ERRNO_BADF = 8;
const ERRNO_INVAL = 28;
const ERRNO_NOTSUP = 58;
const ERRNO_SPIPE = 70;
const OFLAGS_CREAT = 1;
const OFLAGS_DIRECTORY = 2;
const OFLAGS_EXCL = 4;
const OFLAGS_TRUNC = 8;
const FDFLAGS_APPEND = 1;
const WASI_RIGHT_FD_READ = 0x2n;
const WASI_RIGHT_FD_WRITE = 0x40n;
const RIGHTS_ALL = 0x1fffffffn;
const FSTFLAGS_ATIM = 1;
const FSTFLAGS_ATIM_NOW = 2;
const FSTFLAGS_MTIM = 4;
const FSTFLAGS_MTIM_NOW = 8;
const MAX_PATH_BYTES = 4096;
const MAX_IO_BYTES = 16 * 1024 * 1024;
const DIRENT_BYTES = 24;

export interface FsImports {
  /** The fd if it is a file or directory on the disk. */
  fileFd(fd: number): FdState | undefined;
  read(f: FdState, bufs: Uint8Array[]): [number, number];
  write(f: FdState, bufs: Uint8Array[]): [number, number];
  seek(f: FdState, offset: bigint, whence: number): [number, bigint];
  close(fd: number, f: FdState): number;
  fdstat(f: FdState, out: number): number;
  setFlags(f: FdState, flags: number): number;
  calls: Record<string, (...args: never[]) => unknown>;
}

export function makeFsImports(m: Machine, iovecs: (iovs: number, len: number, what: string) => Uint8Array[] | undefined): FsImports {
  const disk = (): VirtualDisk => m.disk!;
  const now = (): bigint => m.devices.clockNs;
  const fileFd = (fd: number): FdState | undefined => {
    const f = m.devices.fds.get(fd);
    return f !== undefined && (f.kind === FdKind.FILE || f.kind === FdKind.DIR) && m.disk !== undefined ? f : undefined;
  };
  const dirFd = (fd: number): FdState | number => {
    const f = fileFd(fd);
    if (f === undefined) return ERRNO_BADF;
    if (f.kind !== FdKind.DIR) return E.NOTDIR;
    return f;
  };
  const pathArg = (ptr: number, len: number): string | number => {
    if (len >>> 0 > MAX_PATH_BYTES) return E.NAMETOOLONG;
    const b = m.guestBytes(ptr, len, 'path');
    if (b.includes(0)) return ERRNO_INVAL;
    return Buffer.from(b).toString('utf8');
  };
  /** Resolves (dirfd, path) → lookup, or an errno. */
  const lookup = (fd: number, ptr: number, len: number): ReturnType<VirtualDisk['resolve']> => {
    const d = dirFd(fd);
    if (typeof d === 'number') return { errno: d };
    const p = pathArg(ptr, len);
    if (typeof p === 'number') return { errno: p };
    return disk().resolve(d.ino!, p);
  };
  const isOpen = (ino: number): boolean => {
    for (const f of m.devices.fds.values()) if (f.ino === ino && (f.kind === FdKind.FILE || f.kind === FdKind.DIR)) return true;
    return false;
  };
  const writeFilestat = (ino: number, out: number): void => {
    const n = disk().get(ino)!;
    m.guestBytes(out, 64, 'filestat').fill(0);
    const v = m.guestView();
    v.setBigUint64(out, 1n, true); // dev
    v.setBigUint64(out + 8, BigInt(ino), true);
    v.setUint8(out + 16, n.kind);
    v.setBigUint64(out + 24, 1n, true); // nlink
    v.setBigUint64(out + 32, BigInt(n.kind === KIND_FILE ? n.size : 4096), true);
    v.setBigUint64(out + 40, n.atimNs, true);
    v.setBigUint64(out + 48, n.mtimNs, true);
    v.setBigUint64(out + 56, n.ctimNs, true);
  };
  const setTimes = (ino: number, atim: bigint, mtim: bigint, fst: number): number => {
    if ((fst & FSTFLAGS_ATIM && fst & FSTFLAGS_ATIM_NOW) || (fst & FSTFLAGS_MTIM && fst & FSTFLAGS_MTIM_NOW) || fst & ~15) return ERRNO_INVAL;
    const n = disk().get(ino)!;
    if (fst & FSTFLAGS_ATIM) n.atimNs = atim;
    if (fst & FSTFLAGS_ATIM_NOW) n.atimNs = now();
    if (fst & FSTFLAGS_MTIM) n.mtimNs = mtim;
    if (fst & FSTFLAGS_MTIM_NOW) n.mtimNs = now();
    n.ctimNs = now();
    disk().touch();
    return E.SUCCESS;
  };
  const gather = (bufs: Uint8Array[]): Uint8Array => {
    let total = 0;
    for (const b of bufs) total += b.length;
    if (total > MAX_IO_BYTES) total = MAX_IO_BYTES;
    const out = new Uint8Array(total);
    let off = 0;
    for (const b of bufs) {
      const k = Math.min(b.length, total - off);
      out.set(b.subarray(0, k), off);
      off += k;
      if (off >= total) break;
    }
    return out;
  };
  const scatter = (bufs: Uint8Array[], data: Uint8Array): void => {
    let off = 0;
    for (const b of bufs) {
      if (off >= data.length) break;
      const k = Math.min(b.length, data.length - off);
      b.set(data.subarray(off, off + k));
      off += k;
    }
  };
  const readAt = (f: FdState, bufs: Uint8Array[], offset: number): [number, number] => {
    if (f.kind !== FdKind.FILE) return [E.ISDIR, 0];
    if (((f.rights ?? 0) & RIGHT_READ) === 0) return [ERRNO_BADF, 0];
    const want = Math.min(MAX_IO_BYTES, bufs.reduce((a, b) => a + b.length, 0));
    const data = disk().read(f.ino!, offset, want);
    scatter(bufs, data);
    return [E.SUCCESS, data.length];
  };
  const writeAt = (f: FdState, bufs: Uint8Array[], offset: number): [number, number] => {
    if (f.kind !== FdKind.FILE) return [E.ISDIR, 0];
    if (((f.rights ?? 0) & RIGHT_WRITE) === 0) return [ERRNO_BADF, 0];
    const data = gather(bufs);
    const errno = disk().write(f.ino!, offset, data, now());
    return errno === E.SUCCESS ? [E.SUCCESS, data.length] : [errno, 0];
  };
  const u64 = (v: bigint): number | undefined => (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER) ? undefined : Number(v));
  const persist = (): void => {
    if (m.diskImagePath !== undefined) disk().persist(m.diskImagePath);
  };
  /** Is `inner` (a directory inode) `outer` or inside it? */
  const within = (outer: number, inner: number): boolean => {
    if (outer === inner) return true;
    const n = disk().get(outer);
    if (n === undefined || n.kind !== KIND_DIR) return false;
    for (const child of n.entries.values()) if (within(child, inner)) return true;
    return false;
  };

  const calls: Record<string, (...args: never[]) => unknown> = {
    path_open: (fd: number, _dirflags: number, path: number, pathLen: number, oflags: number, rightsBase: bigint, _rightsInh: bigint, fdflags: number, fdOut: number): number => {
      const r = lookup(fd, path, pathLen);
      if (r.errno !== 0 || !('ino' in r)) return r.errno;
      m.guestBytes(fdOut, 4, 'path_open fd');
      const d = disk();
      let ino = r.ino;
      if (!r.exists) {
        if ((oflags & OFLAGS_CREAT) === 0) return E.NOENT;
        if ((oflags & OFLAGS_DIRECTORY) !== 0) return ERRNO_INVAL;
        if (r.name === '..' || r.name === '.') return E.EXIST;
      } else if ((oflags & OFLAGS_CREAT) !== 0 && (oflags & OFLAGS_EXCL) !== 0) {
        return E.EXIST;
      }
      const newFd = m.devices.allocFd(3);
      if (newFd < 0) return 33; // EMFILE
      if (!r.exists) {
        const c = d.create(r.parent, r.name, KIND_FILE, now());
        if (typeof c !== 'number') return c.errno;
        ino = c;
      }
      const node = d.get(ino)!;
      if ((oflags & OFLAGS_DIRECTORY) !== 0 && node.kind !== KIND_DIR) return E.NOTDIR;
      const rights = ((rightsBase & WASI_RIGHT_FD_READ) !== 0n ? RIGHT_READ : 0) | ((rightsBase & WASI_RIGHT_FD_WRITE) !== 0n ? RIGHT_WRITE : 0);
      if (node.kind === KIND_DIR) {
        if ((oflags & OFLAGS_TRUNC) !== 0) return E.ISDIR;
        m.devices.fds.set(newFd, { kind: FdKind.DIR, conn: 0, nonblock: false, shut: 0, ino, rights: RIGHT_READ });
      } else {
        if ((oflags & OFLAGS_TRUNC) !== 0 && node.size > 0) {
          if ((rights & RIGHT_WRITE) === 0) return ERRNO_BADF;
          const e = d.resize(ino, 0, now());
          if (e !== E.SUCCESS) return e;
        }
        m.devices.fds.set(newFd, { kind: FdKind.FILE, conn: 0, nonblock: false, shut: 0, ino, offset: 0, append: (fdflags & FDFLAGS_APPEND) !== 0, rights });
      }
      m.guestView().setUint32(fdOut, newFd, true);
      return E.SUCCESS;
    },
    fd_pread: (fd: number, iovs: number, iovsLen: number, offset: bigint, nread: number): number => {
      const f = fileFd(fd);
      if (f === undefined) return m.devices.fds.has(fd) ? ERRNO_SPIPE : ERRNO_BADF;
      const bufs = iovecs(iovs, iovsLen, 'fd_pread');
      if (bufs === undefined) return ERRNO_INVAL;
      m.guestBytes(nread, 4, 'fd_pread nread');
      const off = u64(offset);
      if (off === undefined) return ERRNO_INVAL;
      const [errno, n] = readAt(f, bufs, off);
      if (errno !== E.SUCCESS) return errno;
      m.guestView().setUint32(nread, n, true);
      return E.SUCCESS;
    },
    fd_pwrite: (fd: number, iovs: number, iovsLen: number, offset: bigint, nwritten: number): number => {
      const f = fileFd(fd);
      if (f === undefined) return m.devices.fds.has(fd) ? ERRNO_SPIPE : ERRNO_BADF;
      const bufs = iovecs(iovs, iovsLen, 'fd_pwrite');
      if (bufs === undefined) return ERRNO_INVAL;
      m.guestBytes(nwritten, 4, 'fd_pwrite nwritten');
      const off = u64(offset);
      if (off === undefined || off > 1024 * 1024 * 1024) return ERRNO_INVAL;
      const [errno, n] = writeAt(f, bufs, off);
      if (errno !== E.SUCCESS) return errno;
      m.guestView().setUint32(nwritten, n, true);
      return E.SUCCESS;
    },
    fd_tell: (fd: number, out: number): number => {
      const f = fileFd(fd);
      if (f === undefined) return m.devices.fds.has(fd) ? ERRNO_SPIPE : ERRNO_BADF;
      m.guestBytes(out, 8, 'fd_tell');
      m.guestView().setBigUint64(out, BigInt(f.offset ?? 0), true);
      return E.SUCCESS;
    },
    fd_sync: (fd: number): number => {
      if (fileFd(fd) === undefined) return ERRNO_BADF;
      persist();
      return E.SUCCESS;
    },
    fd_datasync: (fd: number): number => {
      if (fileFd(fd) === undefined) return ERRNO_BADF;
      persist();
      return E.SUCCESS;
    },
    fd_filestat_get: (fd: number, out: number): number => {
      const f = fileFd(fd);
      if (f === undefined) {
        const other = m.devices.fds.get(fd);
        if (other === undefined && (fd < 0 || fd > 2)) return ERRNO_BADF;
        m.guestBytes(out, 64, 'filestat').fill(0);
        m.guestView().setUint8(out + 16, other === undefined ? 2 : 6); // character device / socket stream
        return E.SUCCESS;
      }
      writeFilestat(f.ino!, out);
      return E.SUCCESS;
    },
    fd_filestat_set_size: (fd: number, size: bigint): number => {
      const f = fileFd(fd);
      if (f === undefined) return ERRNO_BADF;
      if (f.kind !== FdKind.FILE) return E.ISDIR;
      if (((f.rights ?? 0) & RIGHT_WRITE) === 0) return ERRNO_BADF;
      const s = u64(size);
      if (s === undefined || s > 1024 * 1024 * 1024) return ERRNO_INVAL;
      return disk().resize(f.ino!, s, now());
    },
    fd_filestat_set_times: (fd: number, atim: bigint, mtim: bigint, fst: number): number => {
      const f = fileFd(fd);
      if (f === undefined) return ERRNO_BADF;
      return setTimes(f.ino!, atim, mtim, fst);
    },
    fd_advise: (fd: number): number => (fileFd(fd) === undefined ? ERRNO_BADF : E.SUCCESS),
    fd_allocate: (fd: number, offset: bigint, len: bigint): number => {
      const f = fileFd(fd);
      if (f === undefined) return ERRNO_BADF;
      if (f.kind !== FdKind.FILE) return E.ISDIR;
      const end = u64(offset + len);
      if (end === undefined || end > 1024 * 1024 * 1024) return ERRNO_INVAL;
      const n = disk().get(f.ino!)!;
      return end > n.size ? disk().resize(f.ino!, end, now()) : E.SUCCESS;
    },
    path_filestat_get: (fd: number, _flags: number, path: number, pathLen: number, out: number): number => {
      const r = lookup(fd, path, pathLen);
      if (r.errno !== 0 || !('ino' in r)) return r.errno;
      if (!r.exists) return E.NOENT;
      writeFilestat(r.ino, out);
      return E.SUCCESS;
    },
    path_filestat_set_times: (fd: number, _flags: number, path: number, pathLen: number, atim: bigint, mtim: bigint, fst: number): number => {
      const r = lookup(fd, path, pathLen);
      if (r.errno !== 0 || !('ino' in r)) return r.errno;
      if (!r.exists) return E.NOENT;
      return setTimes(r.ino, atim, mtim, fst);
    },
    path_unlink_file: (fd: number, path: number, pathLen: number): number => {
      const r = lookup(fd, path, pathLen);
      if (r.errno !== 0 || !('ino' in r)) return r.errno;
      if (!r.exists) return E.NOENT;
      if (disk().get(r.ino)!.kind === KIND_DIR) return E.ISDIR;
      disk().unlink(r.parent, r.name, now(), isOpen);
      return E.SUCCESS;
    },
    path_create_directory: (fd: number, path: number, pathLen: number): number => {
      const r = lookup(fd, path, pathLen);
      if (r.errno !== 0 || !('ino' in r)) return r.errno;
      if (r.exists) return E.EXIST;
      const c = disk().create(r.parent, r.name, KIND_DIR, now());
      return typeof c === 'number' ? E.SUCCESS : c.errno;
    },
    path_remove_directory: (fd: number, path: number, pathLen: number): number => {
      const r = lookup(fd, path, pathLen);
      if (r.errno !== 0 || !('ino' in r)) return r.errno;
      if (!r.exists) return E.NOENT;
      if (r.name === '.' || r.name === '..' || r.ino === ROOT_INO) return ERRNO_INVAL;
      const n = disk().get(r.ino)!;
      if (n.kind !== KIND_DIR) return E.NOTDIR;
      if (n.entries.size > 0) return E.NOTEMPTY;
      disk().unlink(r.parent, r.name, now(), isOpen);
      return E.SUCCESS;
    },
    path_rename: (fd: number, oldPath: number, oldLen: number, newFd: number, newPath: number, newLen: number): number => {
      const a = lookup(fd, oldPath, oldLen);
      if (a.errno !== 0 || !('ino' in a)) return a.errno;
      const b = lookup(newFd, newPath, newLen);
      if (b.errno !== 0 || !('ino' in b)) return b.errno;
      if (!a.exists) return E.NOENT;
      if (a.name === '.' || a.name === '..' || b.name === '.' || b.name === '..' || a.ino === ROOT_INO) return ERRNO_INVAL;
      const d = disk();
      const src = d.get(a.ino)!;
      if (b.exists) {
        if (b.ino === a.ino) return E.SUCCESS;
        const dst = d.get(b.ino)!;
        if (src.kind === KIND_DIR && dst.kind !== KIND_DIR) return E.NOTDIR;
        if (src.kind !== KIND_DIR && dst.kind === KIND_DIR) return E.ISDIR;
        if (dst.kind === KIND_DIR && dst.entries.size > 0) return E.NOTEMPTY;
      }
      if (src.kind === KIND_DIR && within(a.ino, b.parent)) return ERRNO_INVAL;
      const t = now();
      const oldParent = d.get(a.parent)!;
      const newParent = d.get(b.parent)!;
      const replaced = b.exists ? b.ino : undefined;
      oldParent.entries.delete(a.name);
      newParent.entries.set(b.name, a.ino);
      oldParent.mtimNs = newParent.mtimNs = t;
      src.ctimNs = t;
      if (replaced !== undefined && !isOpen(replaced)) d.free(replaced);
      d.touch();
      return E.SUCCESS;
    },
    fd_readdir: (fd: number, buf: number, bufLen: number, cookie: bigint, bufusedOut: number): number => {
      const f = fileFd(fd);
      if (f === undefined) return ERRNO_BADF;
      if (f.kind !== FdKind.DIR) return E.NOTDIR;
      const out = m.guestBytes(buf, bufLen, 'fd_readdir buffer');
      m.guestBytes(bufusedOut, 4, 'fd_readdir bufused');
      const n = disk().get(f.ino!)!;
      const list: Array<[string, number, number]> = [
        ['.', f.ino!, KIND_DIR],
        ['..', f.ino!, KIND_DIR],
        ...[...n.entries.keys()].sort().map((name): [string, number, number] => [name, n.entries.get(name)!, disk().get(n.entries.get(name)!)!.kind]),
      ];
      const start = u64(cookie) ?? list.length;
      let used = 0;
      for (let i = start; i < list.length && used < out.length; i++) {
        const [name, ino, kind] = list[i]!;
        const nameBytes = Buffer.from(name, 'utf8');
        const ent = Buffer.alloc(DIRENT_BYTES + nameBytes.length);
        ent.writeBigUInt64LE(BigInt(i + 1), 0);
        ent.writeBigUInt64LE(BigInt(ino), 8);
        ent.writeUInt32LE(nameBytes.length, 16);
        ent.writeUInt8(kind, 20);
        nameBytes.copy(ent, DIRENT_BYTES);
        const k = Math.min(ent.length, out.length - used);
        out.set(ent.subarray(0, k), used);
        used += k;
      }
      m.guestView().setUint32(bufusedOut, used, true);
      return E.SUCCESS;
    },
    path_readlink: (fd: number, path: number, pathLen: number, _buf: number, _bufLen: number, _used: number): number => {
      const r = lookup(fd, path, pathLen);
      if (r.errno !== 0 || !('ino' in r)) return r.errno;
      return r.exists ? ERRNO_INVAL : E.NOENT; // there are no symbolic links on the disk
    },
  };

  return {
    fileFd,
    calls,
    read(f, bufs) {
      const [errno, n] = readAt(f, bufs, f.offset ?? 0);
      if (errno === E.SUCCESS) f.offset = (f.offset ?? 0) + n;
      return [errno, n];
    },
    write(f, bufs) {
      const at = f.append ? disk().get(f.ino!)!.size : (f.offset ?? 0);
      const [errno, n] = writeAt(f, bufs, at);
      if (errno === E.SUCCESS) f.offset = at + n;
      return [errno, n];
    },
    seek(f, offset, whence) {
      if (f.kind !== FdKind.FILE) return [ERRNO_SPIPE, 0n];
      const base = whence === 0 ? 0n : whence === 1 ? BigInt(f.offset ?? 0) : whence === 2 ? BigInt(disk().get(f.ino!)!.size) : -1n;
      if (base < 0n) return [ERRNO_INVAL, 0n];
      const next = base + offset;
      if (next < 0n || next > BigInt(Number.MAX_SAFE_INTEGER)) return [ERRNO_INVAL, 0n];
      f.offset = Number(next);
      return [E.SUCCESS, next];
    },
    close(fd, f) {
      m.devices.fds.delete(fd);
      if (f.ino !== undefined && !isOpen(f.ino)) disk().free(f.ino);
      return E.SUCCESS;
    },
    fdstat(f, out) {
      m.guestBytes(out, 24, 'fd_fdstat_get').fill(0);
      const v = m.guestView();
      v.setUint8(out, f.kind === FdKind.DIR ? KIND_DIR : KIND_FILE);
      v.setUint16(out + 2, f.append ? FDFLAGS_APPEND : 0, true);
      let rights = RIGHTS_ALL;
      if (((f.rights ?? 0) & RIGHT_READ) === 0) rights &= ~WASI_RIGHT_FD_READ;
      if (((f.rights ?? 0) & RIGHT_WRITE) === 0) rights &= ~WASI_RIGHT_FD_WRITE;
      v.setBigUint64(out + 8, rights, true);
      v.setBigUint64(out + 16, RIGHTS_ALL, true);
      return E.SUCCESS;
    },
    setFlags(f, flags) {
      if ((flags & ~(FDFLAGS_APPEND | 4)) !== 0) return ERRNO_NOTSUP;
      if (f.kind === FdKind.FILE) f.append = (flags & FDFLAGS_APPEND) !== 0;
      return E.SUCCESS;
    },
  };
}
