/**
 * The libc symbols stoa calls through bun:ffi, opened once on first use. Only libc — never a
 * raw syscall for something libc wraps with process-wide semantics (setresuid & co., see
 * bun-notes). Each binding module in src/ffi/ builds on `libc()` and `errno()`.
 */
import { FFIType, dlopen, read } from "bun:ffi";

const symbols = {
  syscall: {
    // long syscall(long number, ...): six register arguments cover every Linux syscall.
    args: [FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64],
    returns: FFIType.i64,
  },
  close: { args: [FFIType.i32], returns: FFIType.i32 },
  __errno_location: { args: [], returns: FFIType.ptr },
  strerror: { args: [FFIType.i32], returns: FFIType.cstring },
} as const;

type Libc = ReturnType<typeof dlopen<typeof symbols>>["symbols"];
let opened: Libc | undefined;

/** The libc symbol table (opened lazily: commands that never touch FFI never load libc). */
export function libc(): Libc {
  opened ??= dlopen("libc.so.6", symbols).symbols;
  return opened;
}

/** errno of the calling thread; read it right after the failing call. */
export function errno(): number {
  const where = libc().__errno_location();
  return where === null ? 0 : read.i32(where, 0);
}

/** The libc description of an errno value, e.g. "Operation not permitted". */
export function strerror(code: number): string {
  return String(libc().strerror(code));
}

/** Linux errno values stoa reacts to (asm-generic/errno-base.h, errno.h). */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENOSYS: 38,
  EADDRINUSE: 98,
  EADDRNOTAVAIL: 99,
  ECONNREFUSED: 111,
} as const;
