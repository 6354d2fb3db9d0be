/**
 * A WASI preview1 subset, so ordinary wasi-libc C programs run as guests. Written here rather than
 * using node:wasi because node:wasi writes results straight into guest memory, where the VMM could not
 * log them. Every result is either deterministic (from the VM configuration and the machine's device
 * state) or logged: clock and random through the machine's paths, and the results of the socket calls
 * that depend on client input (sock_accept, sock_recv / fd_read on a socket, poll_oneoff) as SOCK_ACCEPT,
 * SOCK_RECV and POLL entries at the call's instruction number. fd 1 and 2 are the console and client
 * sockets are virtual connections: writes to them are outputs under the output rule.
 *
 * Blocking calls (a blocking sock_accept or sock_recv, poll_oneoff without a ready subscription) block
 * the vCPU thread inside the host call (Machine.blockFor) until input arrives; the backup returns the
 * logged result when its guest makes the same call at the same count.
 */
import { EntryType, type PollEvent } from '../log/entry.js';
import { ConnState, FdKind, SHUT_RD, SHUT_WR, type FdState } from './devices.js';
import type { Machine } from './machine.js';
import { makeFsImports } from './wasi-fs.js';

const ERRNO_SUCCESS = 0;
const ERRNO_AGAIN = 6;
const ERRNO_BADF = 8;
const ERRNO_INVAL = 28;
const ERRNO_MFILE = 33;
const ERRNO_NOTCONN = 53;
const ERRNO_NOTSOCK = 57;
const ERRNO_PIPE = 64;
const ERRNO_SPIPE = 70;
const FILETYPE_CHARACTER_DEVICE = 2;
const FILETYPE_SOCKET_STREAM = 6;
const FDFLAGS_NONBLOCK = 4;
const EVENTTYPE_CLOCK = 0;
const EVENTTYPE_FD_READ = 1;
const EVENTTYPE_FD_WRITE = 2;
const SUBCLOCKFLAGS_ABSTIME = 1;
const EVENTRWFLAGS_HANGUP = 1;
const RIFLAGS_PEEK = 1;
const RIFLAGS_WAITALL = 2;
const SUBSCRIPTION_BYTES = 48;
const EVENT_BYTES = 32;
const MAX_SUBSCRIPTIONS = 4096;
const MAX_IOVS = 1024;
const MAX_WRITE_BYTES = 1024 * 1024;
const MAX_RECV_BYTES = 1024 * 1024;
/** What an FD_WRITE event reports as writable (outputs are held by the VMM, never refused). */
const WRITE_ROOM_BYTES = 65536;
const RIGHTS_ALL = 0x1fffffffn;

interface Subscription {
  userdata: bigint;
  tag: number;
  fd: number;
  /** CLOCK: deadline in the environment's monotonic ms (record side only). */
  clockId: number;
  timeoutNs: bigint;
  abstime: boolean;
}

export function makeWasiImports(m: Machine): Record<string, (...args: never[]) => unknown> {
  const strings = (list: string[]): Buffer[] => list.map((s) => Buffer.from(`${s}\0`, 'utf8'));
  const sizes = (list: string[], countPtr: number, sizePtr: number): number => {
    const bufs = strings(list);
    const v = m.guestView();
    m.guestBytes(countPtr, 4, 'sizes_get');
    m.guestBytes(sizePtr, 4, 'sizes_get');
    v.setUint32(countPtr, bufs.length, true);
    v.setUint32(sizePtr, bufs.reduce((a, b) => a + b.length, 0), true);
    return ERRNO_SUCCESS;
  };
  const fill = (list: string[], ptrsPtr: number, bufPtr: number): number => {
    const bufs = strings(list);
    m.guestBytes(ptrsPtr, 4 * bufs.length, 'args_get');
    let at = bufPtr;
    bufs.forEach((b, i) => {
      m.guestBytes(at, b.length, 'args_get').set(b);
      m.guestView().setUint32(ptrsPtr + 4 * i, at, true);
      at += b.length;
    });
    return ERRNO_SUCCESS;
  };
  /** The iovec list [ptr, len) pairs, checked against guest memory. */
  const iovecs = (iovs: number, iovsLen: number, what: string): Uint8Array[] | undefined => {
    if (iovsLen >>> 0 > MAX_IOVS) return undefined;
    m.guestBytes(iovs, 8 * iovsLen, `${what} iovs`);
    const out: Uint8Array[] = [];
    for (let i = 0; i < iovsLen; i++) {
      const ptr = m.guestView().getUint32(iovs + 8 * i, true);
      const len = m.guestView().getUint32(iovs + 8 * i + 4, true);
      out.push(m.guestBytes(ptr, len, `${what} buffer`));
    }
    return out;
  };
  const fs = makeFsImports(m, iovecs);
  const socketOf = (fd: number): FdState | number => {
    const f = m.devices.fds.get(fd);
    if (f === undefined) return fd >= 0 && fd <= 2 ? ERRNO_NOTSOCK : ERRNO_BADF;
    if (f.kind === FdKind.FILE || f.kind === FdKind.DIR) return ERRNO_NOTSOCK;
    return f;
  };
  /** Receives into `bufs` from connection fd `f` (sock_recv and fd_read). Returns [errno, bytes]. */
  const receive = (f: FdState, bufs: Uint8Array[], peek: boolean, waitAll: boolean): [number, number] => {
    if (f.kind !== FdKind.SOCKET) return [ERRNO_NOTCONN, 0];
    if ((f.shut & SHUT_RD) !== 0) return [ERRNO_SUCCESS, 0];
    const want = Math.min(MAX_RECV_BYTES, bufs.reduce((a, b) => a + b.length, 0));
    if (want === 0) return [ERRNO_SUCCESS, 0];
    const conn = f.conn;
    const e = m.syscall(EntryType.SOCK_RECV, `a receive on connection ${conn}`, !f.nonblock, () => {
      const ready = (): boolean => {
        const a = m.inbox.available(conn);
        return a.eof || a.bytes >= (waitAll ? want : 1);
      };
      m.pumpSocketInputs();
      if (!ready()) {
        if (f.nonblock) return { errno: ERRNO_AGAIN, data: new Uint8Array(0) };
        m.blockFor(ready, undefined);
      }
      return { errno: ERRNO_SUCCESS, data: m.inbox.take(conn, want, peek) };
    });
    if (e.errno !== ERRNO_SUCCESS) return [e.errno, 0];
    if (e.data.length > want) m.divergence(`a receive of at most ${want} bytes on connection ${conn}`, e);
    let off = 0;
    for (const b of bufs) {
      if (off >= e.data.length) break;
      const k = Math.min(b.length, e.data.length - off);
      b.set(e.data.subarray(off, off + k));
      off += k;
    }
    if (e.data.length === 0) m.devices.conns.set(conn, ConnState.PEER_CLOSED);
    const px = m.devices.proxied.get(conn);
    if (px !== undefined && !peek) {
      px.inBytes += e.data.length;
      if (e.data.length === 0) px.inEof = true;
    }
    return [ERRNO_SUCCESS, e.data.length];
  };
  /** Sends gathered `bufs` on connection fd `f` (sock_send and fd_write). Returns [errno, bytes]. */
  const send = (f: FdState, bufs: Uint8Array[]): [number, number] => {
    if (f.kind !== FdKind.SOCKET) return [ERRNO_NOTCONN, 0];
    if ((f.shut & SHUT_WR) !== 0) return [ERRNO_PIPE, 0];
    const parts: Uint8Array[] = [];
    let total = 0;
    for (const b of bufs) {
      const k = Math.min(b.length, MAX_WRITE_BYTES - total);
      if (k > 0) parts.push(b.subarray(0, k));
      total += k;
    }
    if (total > 0) m.output('net', f.conn, 0, Buffer.concat(parts));
    return [ERRNO_SUCCESS, total];
  };
  /** Record: the events ready now among `subs` (deadlines in env ms for CLOCK subscriptions). */
  const readyEvents = (subs: Subscription[], deadlines: number[], nowMs: number): PollEvent[] => {
    const out: PollEvent[] = [];
    subs.forEach((s, index) => {
      if (s.tag === EVENTTYPE_CLOCK) {
        if (nowMs >= deadlines[index]!) out.push({ index, errno: ERRNO_SUCCESS, nbytes: 0, flags: 0 });
        return;
      }
      const f = m.devices.fds.get(s.fd);
      if (f !== undefined && (f.kind === FdKind.FILE || f.kind === FdKind.DIR)) {
        out.push({ index, errno: ERRNO_SUCCESS, nbytes: 0, flags: 0 }); // files are always ready
        return;
      }
      if (f === undefined) {
        if (s.fd >= 0 && s.fd <= 2) out.push({ index, errno: ERRNO_SUCCESS, nbytes: s.tag === EVENTTYPE_FD_WRITE ? WRITE_ROOM_BYTES : 0, flags: 0 });
        else out.push({ index, errno: ERRNO_BADF, nbytes: 0, flags: 0 });
        return;
      }
      if (f.kind === FdKind.LISTENER) {
        if (s.tag === EVENTTYPE_FD_WRITE) out.push({ index, errno: ERRNO_NOTSOCK, nbytes: 0, flags: 0 });
        else if (m.inbox.acceptQueue.length > 0) out.push({ index, errno: ERRNO_SUCCESS, nbytes: 1, flags: 0 });
        return;
      }
      if (s.tag === EVENTTYPE_FD_WRITE) {
        out.push({ index, errno: ERRNO_SUCCESS, nbytes: (f.shut & SHUT_WR) !== 0 ? 0 : WRITE_ROOM_BYTES, flags: (f.shut & SHUT_WR) !== 0 ? EVENTRWFLAGS_HANGUP : 0 });
        return;
      }
      const a = (f.shut & SHUT_RD) !== 0 ? { bytes: 0, eof: true } : m.inbox.available(f.conn);
      if (a.bytes > 0) out.push({ index, errno: ERRNO_SUCCESS, nbytes: a.bytes, flags: 0 });
      else if (a.eof) out.push({ index, errno: ERRNO_SUCCESS, nbytes: 0, flags: EVENTRWFLAGS_HANGUP });
    });
    return out;
  };
  return {
    ...fs.calls,
    sock_accept: (fd: number, flags: number, fdOut: number): number => {
      const l = socketOf(fd);
      if (typeof l === 'number') return l;
      if (l.kind !== FdKind.LISTENER) return ERRNO_INVAL;
      if ((flags & ~FDFLAGS_NONBLOCK) !== 0) return ERRNO_INVAL;
      m.guestBytes(fdOut, 4, 'sock_accept fd');
      const newFd = m.devices.allocFd(fd + 1);
      if (newFd < 0) return ERRNO_MFILE;
      const nonblock = l.nonblock;
      const e = m.syscall(EntryType.SOCK_ACCEPT, 'an accept', !nonblock, () => {
        m.pumpSocketInputs();
        if (m.inbox.acceptQueue.length === 0) {
          if (nonblock) return { errno: ERRNO_AGAIN, conn: 0 };
          m.blockFor(() => m.inbox.acceptQueue.length > 0, undefined);
        }
        const conn = m.inbox.acceptQueue.shift()!;
        const tag = m.inbox.tags.get(conn);
        m.inbox.tags.delete(conn);
        return { errno: ERRNO_SUCCESS, conn, ...(tag !== undefined ? { tag } : {}) };
      });
      if (e.errno !== ERRNO_SUCCESS) return e.errno;
      if (e.conn <= 0 || m.devices.conns.has(e.conn)) m.divergence(`an accept on fd ${fd}`, e);
      m.devices.openConn(e.conn);
      if (e.tag !== undefined) m.devices.proxied.set(e.conn, { tag: Buffer.from(e.tag).toString('hex'), inBytes: 0, inEof: false, outBytes: 0 });
      m.devices.fds.set(newFd, { kind: FdKind.SOCKET, conn: e.conn, nonblock: (flags & FDFLAGS_NONBLOCK) !== 0, shut: 0 });
      m.guestView().setUint32(fdOut, newFd, true);
      return ERRNO_SUCCESS;
    },
    sock_recv: (fd: number, iovs: number, iovsLen: number, riFlags: number, datalenOut: number, roflagsOut: number): number => {
      const f = socketOf(fd);
      if (typeof f === 'number') return f;
      if ((riFlags & ~(RIFLAGS_PEEK | RIFLAGS_WAITALL)) !== 0) return ERRNO_INVAL;
      const bufs = iovecs(iovs, iovsLen, 'sock_recv');
      if (bufs === undefined) return ERRNO_INVAL;
      m.guestBytes(datalenOut, 4, 'sock_recv datalen');
      m.guestBytes(roflagsOut, 2, 'sock_recv roflags');
      const [errno, n] = receive(f, bufs, (riFlags & RIFLAGS_PEEK) !== 0, (riFlags & RIFLAGS_WAITALL) !== 0);
      if (errno !== ERRNO_SUCCESS) return errno;
      m.guestView().setUint32(datalenOut, n, true);
      m.guestView().setUint16(roflagsOut, 0, true);
      return ERRNO_SUCCESS;
    },
    sock_send: (fd: number, iovs: number, iovsLen: number, siFlags: number, datalenOut: number): number => {
      const f = socketOf(fd);
      if (typeof f === 'number') return f;
      if (siFlags !== 0) return ERRNO_INVAL;
      const bufs = iovecs(iovs, iovsLen, 'sock_send');
      if (bufs === undefined) return ERRNO_INVAL;
      m.guestBytes(datalenOut, 4, 'sock_send datalen');
      const [errno, n] = send(f, bufs);
      if (errno !== ERRNO_SUCCESS) return errno;
      m.guestView().setUint32(datalenOut, n, true);
      return ERRNO_SUCCESS;
    },
    sock_shutdown: (fd: number, how: number): number => {
      const f = socketOf(fd);
      if (typeof f === 'number') return f;
      if (f.kind !== FdKind.SOCKET) return ERRNO_NOTCONN;
      if (how === 0 || (how & ~(SHUT_RD | SHUT_WR)) !== 0) return ERRNO_INVAL;
      if ((how & SHUT_WR) !== 0 && (f.shut & SHUT_WR) === 0) m.output('close', f.conn, 0, new Uint8Array(0));
      f.shut |= how;
      return ERRNO_SUCCESS;
    },
    poll_oneoff: (inPtr: number, outPtr: number, nsubs: number, neventsOut: number): number => {
      nsubs >>>= 0;
      if (nsubs === 0 || nsubs > MAX_SUBSCRIPTIONS) return ERRNO_INVAL;
      m.guestBytes(inPtr, SUBSCRIPTION_BYTES * nsubs, 'poll_oneoff subscriptions');
      m.guestBytes(outPtr, EVENT_BYTES * nsubs, 'poll_oneoff events');
      m.guestBytes(neventsOut, 4, 'poll_oneoff nevents');
      const v = m.guestView();
      const subs: Subscription[] = [];
      for (let i = 0; i < nsubs; i++) {
        const at = inPtr + SUBSCRIPTION_BYTES * i;
        const tag = v.getUint8(at + 8);
        if (tag > EVENTTYPE_FD_WRITE) return ERRNO_INVAL;
        const clockId = tag === EVENTTYPE_CLOCK ? v.getUint32(at + 16, true) : 0;
        if (tag === EVENTTYPE_CLOCK && clockId !== 0 && clockId !== 1) return ERRNO_INVAL;
        subs.push({
          userdata: v.getBigUint64(at, true),
          tag,
          fd: tag === EVENTTYPE_CLOCK ? -1 : v.getUint32(at + 16, true),
          clockId,
          timeoutNs: tag === EVENTTYPE_CLOCK ? v.getBigUint64(at + 24, true) : 0n,
          abstime: tag === EVENTTYPE_CLOCK && (v.getUint16(at + 40, true) & SUBCLOCKFLAGS_ABSTIME) !== 0,
        });
      }
      const e = m.syscall(EntryType.POLL, `a poll of ${nsubs} subscriptions`, true, () => {
        const now = m.recordNowMs();
        const deadlines = subs.map((s) => {
          if (s.tag !== EVENTTYPE_CLOCK) return Number.POSITIVE_INFINITY;
          const relNs = s.abstime ? s.timeoutNs - m.recordNowNs(s.clockId) : s.timeoutNs;
          return now + Number(relNs > 0n ? relNs : 0n) / 1e6;
        });
        const soonest = Math.min(...deadlines);
        m.pumpSocketInputs();
        let events = readyEvents(subs, deadlines, now);
        if (events.length === 0) {
          m.blockFor(() => (events = readyEvents(subs, deadlines, m.recordNowMs())).length > 0, Number.isFinite(soonest) ? soonest : undefined);
          if (events.length === 0) events = readyEvents(subs, deadlines, Math.max(m.recordNowMs(), soonest));
        }
        return { events };
      });
      const seen = new Set<number>();
      for (const ev of e.events) {
        if (ev.index >= nsubs || seen.has(ev.index)) m.divergence(`a poll of ${nsubs} subscriptions`, e);
        seen.add(ev.index);
      }
      e.events.forEach((ev, i) => {
        const at = outPtr + EVENT_BYTES * i;
        const s = subs[ev.index]!;
        m.guestBytes(at, EVENT_BYTES, 'poll_oneoff event').fill(0);
        v.setBigUint64(at, s.userdata, true);
        v.setUint16(at + 8, ev.errno, true);
        v.setUint8(at + 10, s.tag);
        if (s.tag !== EVENTTYPE_CLOCK) {
          v.setBigUint64(at + 16, BigInt(ev.nbytes), true);
          v.setUint16(at + 24, ev.flags, true);
        }
      });
      v.setUint32(neventsOut, e.events.length, true);
      return ERRNO_SUCCESS;
    },
    fd_fdstat_set_flags: (fd: number, flags: number): number => {
      const file = fs.fileFd(fd);
      if (file !== undefined) return fs.setFlags(file, flags);
      const f = m.devices.fds.get(fd);
      if (f === undefined) return fd >= 0 && fd <= 2 ? ERRNO_INVAL : ERRNO_BADF;
      if ((flags & ~FDFLAGS_NONBLOCK) !== 0) return ERRNO_INVAL;
      f.nonblock = (flags & FDFLAGS_NONBLOCK) !== 0;
      return ERRNO_SUCCESS;
    },
    args_sizes_get: (countPtr: number, sizePtr: number) => sizes([m.config.name, ...m.config.args], countPtr, sizePtr),
    args_get: (ptrs: number, buf: number) => fill([m.config.name, ...m.config.args], ptrs, buf),
    environ_sizes_get: (countPtr: number, sizePtr: number) => sizes(m.environ, countPtr, sizePtr),
    environ_get: (ptrs: number, buf: number) => fill(m.environ, ptrs, buf),
    clock_time_get: (id: number, _precision: bigint, out: number): number => {
      if (id !== 0 && id !== 1) return ERRNO_INVAL;
      m.guestBytes(out, 8, 'clock_time_get');
      const v = m.clockNow(id);
      m.guestView().setBigUint64(out, v, true);
      return ERRNO_SUCCESS;
    },
    clock_res_get: (id: number, out: number): number => {
      if (id !== 0 && id !== 1) return ERRNO_INVAL;
      m.guestBytes(out, 8, 'clock_res_get');
      m.guestView().setBigUint64(out, 1000n, true);
      return ERRNO_SUCCESS;
    },
    random_get: (buf: number, len: number): number => {
      if (len >>> 0 > MAX_WRITE_BYTES) return ERRNO_INVAL;
      m.randomInto(m.guestBytes(buf, len, 'random_get'));
      return ERRNO_SUCCESS;
    },
    fd_write: (fd: number, iovs: number, iovsLen: number, nwritten: number): number => {
      const sock = m.devices.fds.get(fd);
      if (sock !== undefined) {
        const bufs = iovecs(iovs, iovsLen, 'fd_write');
        if (bufs === undefined) return ERRNO_INVAL;
        m.guestBytes(nwritten, 4, 'fd_write nwritten');
        const file = fs.fileFd(fd);
        const [errno, n] = file !== undefined ? fs.write(file, bufs) : send(sock, bufs);
        if (errno !== ERRNO_SUCCESS) return errno;
        m.guestView().setUint32(nwritten, n, true);
        return ERRNO_SUCCESS;
      }
      if (fd !== 1 && fd !== 2) return ERRNO_BADF;
      if (iovsLen >>> 0 > MAX_IOVS) return ERRNO_INVAL;
      m.guestBytes(iovs, 8 * iovsLen, 'fd_write iovs');
      m.guestBytes(nwritten, 4, 'fd_write nwritten');
      const parts: Uint8Array[] = [];
      let total = 0;
      for (let i = 0; i < iovsLen; i++) {
        const ptr = m.guestView().getUint32(iovs + 8 * i, true);
        const len = m.guestView().getUint32(iovs + 8 * i + 4, true);
        total += len;
        if (total > MAX_WRITE_BYTES) return ERRNO_INVAL;
        parts.push(m.guestBytes(ptr, len, 'fd_write buffer'));
      }
      if (total > 0) m.output('console', 0, fd, Buffer.concat(parts));
      m.guestView().setUint32(nwritten, total, true);
      return ERRNO_SUCCESS;
    },
    fd_read: (fd: number, iovs: number, iovsLen: number, nread: number): number => {
      const sock = m.devices.fds.get(fd);
      if (sock === undefined) return ERRNO_BADF;
      const bufs = iovecs(iovs, iovsLen, 'fd_read');
      if (bufs === undefined) return ERRNO_INVAL;
      m.guestBytes(nread, 4, 'fd_read nread');
      const file = fs.fileFd(fd);
      const [errno, n] = file !== undefined ? fs.read(file, bufs) : receive(sock, bufs, false, false);
      if (errno !== ERRNO_SUCCESS) return errno;
      m.guestView().setUint32(nread, n, true);
      return ERRNO_SUCCESS;
    },
    fd_close: (fd: number): number => {
      const file = fs.fileFd(fd);
      if (file !== undefined) return fs.close(fd, file);
      const f = m.devices.fds.get(fd);
      if (f === undefined) return ERRNO_BADF;
      if (f.kind === FdKind.SOCKET) {
        if ((f.shut & SHUT_WR) === 0) m.output('close', f.conn, 0, new Uint8Array(0));
        m.devices.conns.delete(f.conn);
        m.devices.proxied.delete(f.conn);
        if (m.mode === 'record') m.inbox.drop(f.conn);
      }
      m.devices.fds.delete(fd);
      return ERRNO_SUCCESS;
    },
    fd_seek: (fd: number, offset: bigint, whence: number, out: number): number => {
      const f = m.devices.fds.get(fd);
      if (f === undefined) return ERRNO_BADF;
      const file = fs.fileFd(fd);
      if (file === undefined) return ERRNO_SPIPE;
      m.guestBytes(out, 8, 'fd_seek');
      const [errno, at] = fs.seek(file, offset, whence);
      if (errno !== ERRNO_SUCCESS) return errno;
      m.guestView().setBigUint64(out, at, true);
      return ERRNO_SUCCESS;
    },
    fd_prestat_get: (fd: number, out: number): number => {
      const f = m.devices.fds.get(fd);
      if (f?.preopen === undefined) return ERRNO_BADF; // also for the listening socket: wasi-libc stops scanning here
      m.guestBytes(out, 8, 'fd_prestat_get').fill(0);
      m.guestView().setUint32(out + 4, Buffer.byteLength(f.preopen), true);
      return ERRNO_SUCCESS;
    },
    fd_prestat_dir_name: (fd: number, path: number, len: number): number => {
      const f = m.devices.fds.get(fd);
      if (f?.preopen === undefined) return ERRNO_BADF;
      const name = Buffer.from(f.preopen, 'utf8');
      if (len >>> 0 < name.length) return ERRNO_INVAL;
      m.guestBytes(path, name.length, 'fd_prestat_dir_name').set(name);
      return ERRNO_SUCCESS;
    },
    fd_fdstat_get: (fd: number, out: number): number => {
      const file = fs.fileFd(fd);
      if (file !== undefined) return fs.fdstat(file, out);
      const sock = m.devices.fds.get(fd);
      if (sock !== undefined) {
        m.guestBytes(out, 24, 'fd_fdstat_get').fill(0);
        const v = m.guestView();
        v.setUint8(out, FILETYPE_SOCKET_STREAM);
        v.setUint16(out + 2, sock.nonblock ? FDFLAGS_NONBLOCK : 0, true);
        v.setBigUint64(out + 8, RIGHTS_ALL, true);
        v.setBigUint64(out + 16, RIGHTS_ALL, true);
        return ERRNO_SUCCESS;
      }
      if (fd < 0 || fd > 2) return ERRNO_BADF;
      m.guestBytes(out, 24, 'fd_fdstat_get').fill(0);
      const v = m.guestView();
      v.setUint8(out, FILETYPE_CHARACTER_DEVICE);
      v.setBigUint64(out + 8, fd === 0 ? 0x2n : 0x40n, true); // rights: fd_read / fd_write
      return ERRNO_SUCCESS;
    },
    proc_exit: (code: number): never => m.exit(code),
    sched_yield: () => ERRNO_SUCCESS,
  };
}
