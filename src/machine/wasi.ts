/**
 * A WASI preview1 subset, so ordinary wasi-libc C programs run as guests. Written here rather than
 * using node:wasi because node:wasi writes results straight into guest memory, where the VMM could not
 * log them. Every result is either deterministic (from the VM configuration) or goes through the
 * machine's logged clock/random paths. fd 1 and 2 are the console, an output under the output rule.
 */
import type { Machine } from './machine.js';

const ERRNO_SUCCESS = 0;
const ERRNO_BADF = 8;
const ERRNO_INVAL = 28;
const FILETYPE_CHARACTER_DEVICE = 2;
const MAX_IOVS = 1024;
const MAX_WRITE_BYTES = 1024 * 1024;

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
  return {
    args_sizes_get: (countPtr: number, sizePtr: number) => sizes([m.config.name, ...m.config.args], countPtr, sizePtr),
    args_get: (ptrs: number, buf: number) => fill([m.config.name, ...m.config.args], ptrs, buf),
    environ_sizes_get: (countPtr: number, sizePtr: number) => sizes(m.config.env, countPtr, sizePtr),
    environ_get: (ptrs: number, buf: number) => fill(m.config.env, ptrs, buf),
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
    fd_read: () => ERRNO_BADF,
    fd_close: () => ERRNO_BADF,
    fd_seek: () => ERRNO_BADF,
    fd_prestat_get: () => ERRNO_BADF,
    fd_prestat_dir_name: () => ERRNO_BADF,
    fd_fdstat_get: (fd: number, out: number): number => {
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
