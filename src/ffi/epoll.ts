/**
 * epoll, eventfd and plain socket I/O on file descriptors through bun:ffi: what a data path
 * needs when it moves bytes between two sockets without going through Bun's socket layer (see
 * src/core/fdsplice.ts for why). Every call returns the raw libc result (-1 on failure, then
 * read `errno()` at once); nothing here allocates on the hot path.
 *
 * `recv`/`send` are declared to return i32: a ssize_t below 2^31 (every read and write here is
 * at most a few hundred KiB) keeps its value and -1 stays -1, and an i32 result avoids the
 * slower 64-bit return path of bun:ffi.
 */
import { FFIType, dlopen, ptr } from "bun:ffi";
import { Errno, errno } from "./libc.ts";

const symbols = {
  epoll_create1: { args: [FFIType.i32], returns: FFIType.i32 },
  epoll_ctl: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  epoll_wait: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  recv: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i32 },
  send: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i32 },
  shutdown: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  close: { args: [FFIType.i32], returns: FFIType.i32 },
  eventfd: { args: [FFIType.u32, FFIType.i32], returns: FFIType.i32 },
  read: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i32 },
  write: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i32 },
  // int fcntl(int fd, int cmd, int arg): only F_DUPFD_CLOEXEC here.
  fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  setsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
} as const;

type Sys = ReturnType<typeof dlopen<typeof symbols>>["symbols"];
let opened: Sys | undefined;

/** The symbol table, opened on first use (per thread: each Worker has its own module state). */
export function sys(): Sys {
  opened ??= dlopen("libc.so.6", symbols).symbols;
  return opened;
}

export const EPOLL_CLOEXEC = 0o2000000;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLL_CTL_MOD = 3;
export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;
export const SHUT_WR = 1;
const F_DUPFD_CLOEXEC = 1030;
const SOL_SOCKET = 1;
const SO_LINGER = 13;

/**
 * `struct epoll_event` is packed on x86_64 (12 bytes: u32 events, u64 data) and naturally
 * aligned elsewhere (16 bytes, data at offset 8). Sizes in 32-bit words, for a Uint32Array view.
 */
export const EPOLL_EVENT_WORDS = process.arch === "x64" ? 3 : 4;
/** Where the low 32 bits of `data` (the fd stoa stores there) sit, in words. */
export const EPOLL_DATA_WORD = process.arch === "x64" ? 1 : 2;

/** One reusable `struct epoll_event` for epoll_ctl calls (per thread). */
let ctlEvent: Uint32Array | undefined;

/** epoll_ctl with `data` = the fd itself. Returns 0 or -1 (errno set). */
export function epollCtl(epfd: number, op: number, fd: number, events: number): number {
  ctlEvent ??= new Uint32Array(EPOLL_EVENT_WORDS);
  ctlEvent[0] = events;
  ctlEvent[EPOLL_DATA_WORD] = fd;
  ctlEvent[EPOLL_DATA_WORD + 1] = 0;
  return sys().epoll_ctl(epfd, op, fd, ptr(ctlEvent));
}

/** A close-on-exec duplicate of `fd` (a second reference to the same open socket). */
export function dupCloexec(fd: number): number {
  return sys().fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

const LINGER_OFF = new Int32Array([0, 0]);
const LINGER_RESET = new Int32Array([1, 0]);

/**
 * Sets SO_LINGER: `reset` true makes the next close() send a reset (drop unsent data), false
 * restores the default graceful close. Options belong to the socket, not the descriptor, so
 * this also undoes what another descriptor of the same socket set.
 */
export function setLingerReset(fd: number, reset: boolean): number {
  return sys().setsockopt(fd, SOL_SOCKET, SO_LINGER, ptr(reset ? LINGER_RESET : LINGER_OFF), 8);
}

/** Adds 1 to an eventfd counter, waking a thread blocked in epoll_wait on it. */
export function signalEventfd(efd: number): void {
  const one = new BigUint64Array([1n]);
  // EAGAIN only when the counter would overflow 2^64-2: the reader is already due to wake.
  sys().write(efd, ptr(one), 8);
}

/** True when the last call failed only because it would block. */
export function wouldBlock(): boolean {
  const e = errno();
  return e === Errno.EAGAIN || e === Errno.EINTR;
}
