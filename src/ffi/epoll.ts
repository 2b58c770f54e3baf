/**
 * epoll, eventfd, pipes, splice and plain socket I/O on file descriptors through bun:ffi: what a
 * data path needs when it moves bytes between two sockets without going through Bun's socket layer (see
 * src/core/fdsplice.ts for why). The calls themselves (epoll_wait, recv, send, eventfd, …) are
 * in libc.ts's one symbol table, `libc()`; this module holds their constants and the helpers
 * around them. Every call returns the raw libc result (-1 on failure, then read `errno()` at
 * once); nothing here allocates on the hot path.
 */
import { ptr } from "bun:ffi";
import { Errno, O_NONBLOCK, SOL_SOCKET, errno, libc } from "./libc.ts";

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
export const SHUT_WR = 1;
const F_DUPFD_CLOEXEC = 1030;
const SO_LINGER = 13;
const O_CLOEXEC = 0o2000000;
const F_SETPIPE_SZ = 1031;
/** splice(2): move pages rather than copy them (a hint), and never block on the pipe. */
export const SPLICE_F_MOVE = 1;
export const SPLICE_F_NONBLOCK = 2;

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
  return libc().epoll_ctl(epfd, op, fd, ptr(ctlEvent));
}

/** One reusable `int[2]` for pipe2 (per thread). */
let pipeFds: Int32Array | undefined;

/**
 * A nonblocking, close-on-exec pipe for splice(2): `[read end, write end]`, or null (errno set)
 * when none can be made (EMFILE, ENFILE). `bytes` > 0 asks for that capacity (F_SETPIPE_SZ);
 * a refusal (EPERM past the user's pipe quota) keeps the default size, which works the same.
 */
export function openPipe(bytes: number): [number, number] | null {
  pipeFds ??= new Int32Array(2);
  if (libc().pipe2(ptr(pipeFds), O_NONBLOCK | O_CLOEXEC) < 0) return null;
  const r = pipeFds[0] ?? -1;
  const w = pipeFds[1] ?? -1;
  if (bytes > 0) libc().fcntl(w, F_SETPIPE_SZ, bytes);
  return [r, w];
}

/**
 * splice(2) of up to `len` bytes from `from` to `to`, one of them a pipe, without blocking on
 * the pipe (a socket blocks or not by its own O_NONBLOCK). Returns the bytes moved, 0 at a
 * socket's EOF, -1 on failure (errno set; EAGAIN: nothing to move now).
 */
export function spliceFds(from: number, to: number, len: number): number {
  return libc().splice(from, null, to, null, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
}

/** A close-on-exec duplicate of `fd` (a second reference to the same open socket). */
export function dupCloexec(fd: number): number {
  return libc().fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

const LINGER_OFF = new Int32Array([0, 0]);
const LINGER_RESET = new Int32Array([1, 0]);

/**
 * Sets SO_LINGER: `reset` true makes the next close() send a reset (drop unsent data), false
 * restores the default graceful close. Options belong to the socket, not the descriptor, so
 * this also undoes what another descriptor of the same socket set.
 */
export function setLingerReset(fd: number, reset: boolean): number {
  return libc().setsockopt(fd, SOL_SOCKET, SO_LINGER, ptr(reset ? LINGER_RESET : LINGER_OFF), 8);
}

/** Adds 1 to an eventfd counter, waking a thread blocked in epoll_wait on it. */
export function signalEventfd(efd: number): void {
  const one = new BigUint64Array([1n]);
  // EAGAIN only when the counter would overflow 2^64-2: the reader is already due to wake.
  libc().write(efd, ptr(one), 8);
}

/** True when the last call failed only because it would block. */
export function wouldBlock(): boolean {
  const e = errno();
  return e === Errno.EAGAIN || e === Errno.EINTR;
}
