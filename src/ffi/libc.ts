/**
 * The libc symbols stoa calls through bun:ffi, opened once on first use: this is the one
 * `dlopen` of libc (once per thread — a Worker, such as the fdsplice engine's, has its own module
 * state and so its own table). A binding module that needs another libc function adds it to
 * the table below rather than opening libc itself. Only libc — never a raw syscall for
 * something libc wraps with process-wide semantics (setresuid & co., see bun-notes). Each
 * binding module in src/ffi/ builds on `libc()` and `errno()`.
 */
import { FFIType, dlopen, read } from "bun:ffi";

const symbols = {
  syscall: {
    // long syscall(long number, ...): six register arguments cover every Linux syscall.
    args: [FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64],
    returns: FFIType.i64,
  },
  close: { args: [FFIType.i32], returns: FFIType.i32 },
  // Sockets (netlink.ts): int socket(int, int, int); int bind(int, const sockaddr *, socklen_t); …
  socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  bind: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
  setsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
  // int getsockopt(int, int, int, void *, socklen_t *): a fanout group's id, a socket's type.
  getsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  // int listen(int, int): the supervisor's control socket, bound before its fd is passed on.
  listen: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  // int connect(int, const sockaddr *, socklen_t): the supervisor's output sockets (a UDP socket connected to group:port).
  connect: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
  // int getsockname(int, sockaddr *, socklen_t *): the address an inherited socket is bound to.
  getsockname: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  // int fcntl(int, int, int): F_DUPFD_CLOEXEC, so each listener owns (and closes) its own copy.
  fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  // ssize_t sendto(int, const void *, size_t, int, const sockaddr *, socklen_t)
  sendto: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i64_fast },
  // ssize_t recvfrom(int, void *, size_t, int, sockaddr *, socklen_t *)
  recvfrom: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i64_fast },
  // Interface names ↔ indexes, resolved in the caller's network namespace.
  if_nametoindex: { args: [FFIType.ptr], returns: FFIType.u32 },
  if_indextoname: { args: [FFIType.u32, FFIType.ptr], returns: FFIType.ptr },
  // int flock(int fd, int op): advisory whole-file locks, released by the kernel when the fd closes.
  flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  // int getrlimit(int resource, struct rlimit *); int setrlimit(int, const struct rlimit *):
  // process-wide on Linux (the limits live in the shared signal struct, not per thread).
  getrlimit: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  setrlimit: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  // The data path (epoll.ts, core/fdsplice-engine.ts): epoll, eventfd and plain socket I/O on
  // raw fds. recv/send/read/write are declared to return i32: a ssize_t below 2^31 (every read
  // and write there is at most a few hundred KiB) keeps its value and -1 stays -1, and an i32
  // result avoids the slower 64-bit return path of bun:ffi.
  epoll_create1: { args: [FFIType.i32], returns: FFIType.i32 },
  epoll_ctl: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  epoll_wait: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  recv: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i32 },
  send: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i32 },
  shutdown: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  eventfd: { args: [FFIType.u32, FFIType.i32], returns: FFIType.i32 },
  read: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i32 },
  write: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i32 },
  // ssize_t splice(int fd_in, loff_t *off_in, int fd_out, loff_t *off_out, size_t len, unsigned
  // flags): socket → pipe → socket in the kernel (epoll.ts); offsets are always null (no file
  // offsets on sockets and pipes), the result an i32 as for recv/send (at most a pipe's size).
  splice: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.u32], returns: FFIType.i32 },
  // io_uring.ts: void *mmap(void *, size_t, int prot, int flags, int fd, off_t) maps a ring;
  // declared to return i64 so MAP_FAILED ((void *)-1) arrives as -1, not as a pointer.
  mmap: { args: [FFIType.u64, FFIType.u64, FFIType.i32, FFIType.i32, FFIType.i32, FFIType.i64], returns: FFIType.i64 },
  munmap: { args: [FFIType.u64, FFIType.u64], returns: FFIType.i32 },
  // int socketpair(int domain, int type, int protocol, int sv[2]): two connected sockets.
  socketpair: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  // Descriptor passing (fdpass.ts, with socketpair above): ssize_t sendmsg(int, const struct
  // msghdr *, int); ssize_t recvmsg(int, struct msghdr *, int). i32 results for the reason given
  // for recv/send: a message is at most fdpass's MAX_MESSAGE_BYTES (64 KiB).
  // int pipe2(int fds[2], int flags): the descriptors fdpass's tests pass to a child.
  sendmsg: { args: [FFIType.i32, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
  recvmsg: { args: [FFIType.i32, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
  pipe2: { args: [FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
  // Privileges (privileges.ts): libc's set*id, which apply to every thread of the process (glibc's
  // setxid broadcast), never the raw syscalls, which change the calling thread only.
  setgroups: { args: [FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
  setresgid: { args: [FFIType.u32, FFIType.u32, FFIType.u32], returns: FFIType.i32 },
  setresuid: { args: [FFIType.u32, FFIType.u32, FFIType.u32], returns: FFIType.i32 },
  // int clock_gettime(clockid_t, struct timespec *): CLOCK_MONOTONIC for systemd's MONOTONIC_USEC
  // (Bun's process.hrtime counts from the process's start, not from boot).
  clock_gettime: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  // int sched_setscheduler(pid_t, int policy, const struct sched_param *); int sched_getscheduler(pid_t):
  // given a thread id, glibc's act on that thread alone (core/runtime.ts).
  sched_setscheduler: { args: [FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  sched_getscheduler: { args: [FFIType.i32], returns: FFIType.i32 },
  // int execve(const char *path, char *const argv[], char *const envp[]): a service execs itself
  // once with its allocator's setting in the environment (core/runtime.ts).
  execve: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  __errno_location: { args: [], returns: FFIType.ptr },
  strerror: { args: [FFIType.i32], returns: FFIType.cstring },
} as const;

type Libc = ReturnType<typeof dlopen<typeof symbols>>["symbols"];
let opened: Libc | undefined;

/**
 * The libc symbol table, opened on first use in each thread (lazily: commands that never touch
 * FFI never load libc).
 */
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

/** A NUL-terminated copy of `text` for a `const char *` argument (keep it referenced during the call). */
export function cString(text: string): Buffer {
  return Buffer.from(`${text}\0`, "utf8");
}

const CLOCK_MONOTONIC = 1;

/** clock_gettime(CLOCK_MONOTONIC) in microseconds: the clock systemd and every process share. */
export function monotonicMicros(): bigint {
  // struct timespec { time_t tv_sec; long tv_nsec; }: two i64 on 64-bit Linux.
  const ts = new BigInt64Array(2);
  if (libc().clock_gettime(CLOCK_MONOTONIC, ts) !== 0) throw new Error(`clock_gettime: ${strerror(errno())}`);
  return (ts[0] ?? 0n) * 1_000_000n + (ts[1] ?? 0n) / 1000n;
}

/** `RLIMIT_NOFILE` (asm-generic/resource.h): one more than the highest fd number a process may open. */
export const RLIMIT_NOFILE = 7;

/** A resource limit: `cur` (soft, enforced) and `max` (hard, the ceiling `cur` may be raised to). */
interface Rlimit {
  cur: number;
  max: number;
}

/**
 * getrlimit(2). `RLIM_INFINITY` comes back as `Infinity`. Throws on failure (it cannot fail for
 * a valid resource).
 * @example
 * const { cur, max } = getRlimit(RLIMIT_NOFILE);
 */
export function getRlimit(resource: number): Rlimit {
  // struct rlimit { rlim_t rlim_cur; rlim_t rlim_max; }: two u64 on every 64-bit Linux.
  const buf = new BigUint64Array(2);
  if (libc().getrlimit(resource, buf) !== 0) throw new Error(`getrlimit(${resource}): ${strerror(errno())}`);
  return { cur: fromRlim(buf[0] ?? 0n), max: fromRlim(buf[1] ?? 0n) };
}

/** setrlimit(2); returns 0 or the errno (EPERM: above the hard limit without CAP_SYS_RESOURCE). */
export function setRlimit(resource: number, limit: Rlimit): number {
  const buf = new BigUint64Array([toRlim(limit.cur), toRlim(limit.max)]);
  return libc().setrlimit(resource, buf) === 0 ? 0 : errno();
}

const RLIM_INFINITY = 0xffff_ffff_ffff_ffffn;

function fromRlim(v: bigint): number {
  return v === RLIM_INFINITY ? Number.POSITIVE_INFINITY : Number(v);
}

function toRlim(v: number): bigint {
  return v === Number.POSITIVE_INFINITY ? RLIM_INFINITY : BigInt(Math.floor(v));
}

/**
 * Numbers of socket.h and fcntl.h that several bindings use, defined once: Linux's, the same on
 * every architecture stoa builds for (x86_64, aarch64). A constant only one module needs stays
 * there.
 */
export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const AF_NETLINK = 16;
export const AF_PACKET = 17;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_RAW = 3;
export const SOCK_SEQPACKET = 5;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
/** recv/send: do not wait (EAGAIN instead). */
export const MSG_DONTWAIT = 0x40;
/** send: no SIGPIPE for a peer that went away (EPIPE instead). */
export const MSG_NOSIGNAL = 0x4000;
/** msg_flags on return: the message was longer than the buffer; the rest is gone. */
export const MSG_TRUNC = 0x20;
export const F_SETFL = 4;
export const O_NONBLOCK = 0o4000;

/** Linux errno values stoa reacts to (asm-generic/errno-base.h, errno.h). */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  ENXIO: 6,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  EPIPE: 32,
  ENOSYS: 38,
  EADDRINUSE: 98,
  EADDRNOTAVAIL: 99,
  ECONNRESET: 104,
  ENOBUFS: 105,
  ECONNREFUSED: 111,
} as const;
