/**
 * Descriptor passing between the supervisor and its workers (spec/supervisor.md, "Processes"):
 * a connected AF_UNIX socket pair, and messages that carry bytes plus descriptors (SCM_RIGHTS)
 * through sendmsg(2)/recvmsg(2). Bun has neither (1.4.5), so this is bun:ffi over libc.
 *
 * Why SOCK_SEQPACKET: each sendmsg is one message and each recvmsg returns exactly one, whole
 * (or flagged MSG_TRUNC), with its descriptors attached to it. On a stream socket the rights
 * ride on some byte of a byte stream, and a reader that splits or coalesces reads can attach
 * them to the wrong message or drop them; a datagram pair keeps boundaries but has no EOF (a
 * worker that dies is not seen on read). A SEQPACKET send is also atomic: all of it or nothing.
 *
 * Ownership — every fd has one owner and is closed exactly once (seed 002: fds closed twice):
 * - `OwnedFd` wraps one descriptor; `close()` is idempotent, using it after close throws, and
 *   `take()` hands the raw number to an owner that closes it itself (`Bun.listen({ fd })`).
 *   `Bun.spawn`'s stdio is no such owner: it dup2s the fd into the child as fd 3, 4, … and the
 *   parent keeps its own copy, to close once the child is started (measured on 1.4.5).
 * - `sendFds` never takes ownership: the kernel puts its own references in the message, so after
 *   "sent" the sender still owns (and must close) every fd it passed. Closing it early is safe.
 * - `recvFds` returns new descriptors (close-on-exec, MSG_CMSG_CLOEXEC) owned by the receiver.
 *   On any failure — control data truncated (MSG_CTRUNC: the peer sent more than
 *   MAX_FDS_PER_MESSAGE), data truncated (MSG_TRUNC), malformed control data — every descriptor
 *   that did arrive is closed before the error is thrown: nothing leaks.
 *
 * Blocking: the calls follow the socket's mode. A blocking socket (the default, a worker's fd 3)
 * waits; a non-blocking one (`socketPair({ nonBlocking: true })`, a supervisor on its event loop)
 * returns "again" instead of waiting — for a send nothing was queued and the caller still owns
 * everything. EINTR is retried. A peer that went away is "closed" (EOF, EPIPE, ECONNRESET);
 * every message carries at least one byte, so a zero-length read is always EOF.
 *
 * Layouts, 64-bit Linux (x86_64 and aarch64 share them: LP64, little-endian; glibc = kernel):
 *   struct iovec   (16): 0 iov_base ptr · 8 iov_len size_t
 *   struct msghdr  (56): 0 msg_name ptr · 8 msg_namelen u32 (+4 pad) · 16 msg_iov ptr ·
 *                        24 msg_iovlen size_t · 32 msg_control ptr · 40 msg_controllen size_t ·
 *                        48 msg_flags i32 (+4 pad)
 *   struct cmsghdr (16): 0 cmsg_len size_t (header + payload, unpadded) · 8 cmsg_level i32 ·
 *                        12 cmsg_type i32 · 16 payload (SCM_RIGHTS: i32 fds)
 *   CMSG_ALIGN(n) = (n + 7) & ~7 (sizeof(size_t)); CMSG_LEN(n) = 16 + n;
 *   CMSG_SPACE(n) = 16 + CMSG_ALIGN(n); the next header starts CMSG_ALIGN(cmsg_len) after this one.
 */
import { ptr } from "bun:ffi";
import { StoaError } from "../core/errors.ts";
import { AF_UNIX, Errno, MSG_NOSIGNAL, MSG_TRUNC, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_SEQPACKET, SOL_SOCKET, errno, libc, strerror } from "./libc.ts";

/** The most descriptors one message carries (ours; the kernel's SCM_MAX_FD is 253). */
export const MAX_FDS_PER_MESSAGE = 16;
/**
 * The most bytes one message carries: a SEQPACKET message must fit the socket's send buffer
 * whole (net.core.wmem_default, 208 KiB by default), and supervisor commands are far smaller.
 */
export const MAX_MESSAGE_BYTES = 64 * 1024;

const SCM_RIGHTS = 1;
/** socket.h: received descriptors are close-on-exec from the start (no fork/exec race). */
const MSG_CMSG_CLOEXEC = 0x4000_0000;
/** msg_flags on return: control data (descriptors) did not fit and were dropped. */
const MSG_CTRUNC = 0x8;

const IOVEC_BYTES = 16;
const MSGHDR_BYTES = 56;
const MSG_IOV = 16;
const MSG_IOVLEN = 24;
const MSG_CONTROL = 32;
const MSG_CONTROLLEN = 40;
const MSG_FLAGS = 48;
const CMSG_HDR_BYTES = 16;
const CMSG_LEVEL = 8;
const CMSG_TYPE = 12;
const FD_BYTES = 4;

const cmsgAlign = (n: number): number => (n + 7) & ~7;
const cmsgSpace = (n: number): number => CMSG_HDR_BYTES + cmsgAlign(n);
/** Room for one SCM_RIGHTS message of MAX_FDS_PER_MESSAGE descriptors. */
const CONTROL_BYTES = cmsgSpace(MAX_FDS_PER_MESSAGE * FD_BYTES);

/** One descriptor and the duty to close it once. */
export class OwnedFd implements Disposable {
  #fd: number;
  readonly #what: string;

  /** Takes ownership of `fd`; `what` names it in errors ("worker 2's supervisor socket"). */
  constructor(fd: number, what = "descriptor") {
    if (!Number.isInteger(fd) || fd < 0) throw new StoaError("internal", `${what}: ${fd} is not a descriptor`);
    this.#fd = fd;
    this.#what = what;
  }

  /** The descriptor's number; throws once it was closed or taken (a use after close is a bug). */
  get fd(): number {
    if (this.#fd < 0) throw new StoaError("closed", `${this.#what} was already closed or handed over; open a new one`);
    return this.#fd;
  }

  get closed(): boolean {
    return this.#fd < 0;
  }

  /** Hands the number to a new owner that will close it; this object no longer closes it. */
  take(): number {
    const fd = this.fd;
    this.#fd = -1;
    return fd;
  }

  /**
   * Closes the descriptor; a second call does nothing. EBADF means someone else closed our fd
   * (an ownership bug that would otherwise close an unrelated, reused number later): it throws.
   */
  close(): void {
    const fd = this.#fd;
    if (fd < 0) return;
    this.#fd = -1;
    // Linux releases the fd even when close fails with EINTR or EIO: never retry.
    if (libc().close(fd) !== 0 && errno() === Errno.EBADF) {
      throw new StoaError("internal", `${this.#what} (fd ${fd}) was closed by someone else: every fd must have one owner`);
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * A connected pair of AF_UNIX SOCK_SEQPACKET sockets, close-on-exec (a child gets one only
 * through Bun.spawn's stdio, which dup2s it without the flag).
 * @example
 * const [mine, theirs] = socketPair();
 * Bun.spawn([process.execPath, "worker"], { stdio: ["ignore", "inherit", "inherit", theirs.fd] });
 * theirs.close(); // the child has its own copy as fd 3
 */
export function socketPair(options: { nonBlocking?: boolean } = {}): [OwnedFd, OwnedFd] {
  const sv = new Int32Array(2);
  const type = SOCK_SEQPACKET | SOCK_CLOEXEC | (options.nonBlocking === true ? SOCK_NONBLOCK : 0);
  if (libc().socketpair(AF_UNIX, type, 0, sv) !== 0) {
    throw new StoaError("io", `socketpair(AF_UNIX, SOCK_SEQPACKET): ${strerror(errno())}; check the descriptor limit (ulimit -n)`);
  }
  return [new OwnedFd(sv[0] ?? -1, "socket pair end 0"), new OwnedFd(sv[1] ?? -1, "socket pair end 1")];
}

/** A u64 field (pointer or size_t) of a little-endian struct. */
function setWord(view: DataView, offset: number, value: number): void {
  view.setBigUint64(offset, BigInt(value), true);
}

/** An msghdr over one iovec and an optional control buffer; keep every buffer referenced during the call. */
function msghdr(iov: Uint8Array, data: Uint8Array, control: Uint8Array | null): Uint8Array {
  const iovView = new DataView(iov.buffer, iov.byteOffset, IOVEC_BYTES);
  setWord(iovView, 0, ptr(data));
  setWord(iovView, 8, data.byteLength);
  const msg = new Uint8Array(MSGHDR_BYTES);
  const view = new DataView(msg.buffer);
  setWord(view, MSG_IOV, ptr(iov));
  setWord(view, MSG_IOVLEN, 1);
  if (control !== null) {
    setWord(view, MSG_CONTROL, ptr(control));
    setWord(view, MSG_CONTROLLEN, control.byteLength);
  }
  return msg;
}

/** "again": nothing happened, try when the socket is ready; "closed": the peer is gone. */
type Outcome = "again" | "closed";

/** The outcome an errno means for sendmsg/recvmsg, or a thrown StoaError("io"). */
function failure(call: string, code: number): Outcome {
  if (code === Errno.EAGAIN) return "again";
  if (code === Errno.EPIPE || code === Errno.ECONNRESET) return "closed";
  throw new StoaError("io", `${call}: ${strerror(code)}`);
}

/**
 * Sends `data` (1..MAX_MESSAGE_BYTES bytes) and copies of `fds` (at most MAX_FDS_PER_MESSAGE)
 * as one message. Limits are checked before anything is sent. The caller keeps owning `sock`
 * and every fd in `fds`, whatever the outcome.
 * @example
 * if (sendFds(sock, encodeCommand(cmd), [listener]) === "sent") listener.close();
 */
export function sendFds(sock: OwnedFd, data: Uint8Array, fds: readonly OwnedFd[] = []): "sent" | Outcome {
  if (data.byteLength === 0) throw new StoaError("internal", "sendFds: a message needs at least one byte (an empty read means EOF)");
  if (data.byteLength > MAX_MESSAGE_BYTES) {
    throw new StoaError("too_large", `sendFds: ${data.byteLength} bytes is over MAX_MESSAGE_BYTES (${MAX_MESSAGE_BYTES}); send a smaller message`);
  }
  if (fds.length > MAX_FDS_PER_MESSAGE) {
    throw new StoaError("too_large", `sendFds: ${fds.length} descriptors is over MAX_FDS_PER_MESSAGE (${MAX_FDS_PER_MESSAGE}); split them over several messages`);
  }
  let control: Uint8Array | null = null;
  if (fds.length > 0) {
    control = new Uint8Array(cmsgSpace(fds.length * FD_BYTES));
    const view = new DataView(control.buffer);
    setWord(view, 0, CMSG_HDR_BYTES + fds.length * FD_BYTES); // CMSG_LEN
    view.setInt32(CMSG_LEVEL, SOL_SOCKET, true);
    view.setInt32(CMSG_TYPE, SCM_RIGHTS, true);
    fds.forEach((owned, i) => view.setInt32(CMSG_HDR_BYTES + i * FD_BYTES, owned.fd, true));
  }
  const iov = new Uint8Array(IOVEC_BYTES);
  const msg = msghdr(iov, data, control);
  const fd = sock.fd;
  for (;;) {
    const sent = libc().sendmsg(fd, msg, MSG_NOSIGNAL);
    if (sent >= 0) return "sent"; // SEQPACKET: all of it (atomic), never a part
    const code = errno();
    if (code !== Errno.EINTR) return failure(`sendmsg on fd ${fd}`, code);
  }
}

/** One message: its bytes and the descriptors that came with it, now the receiver's. */
export interface Received {
  data: Uint8Array;
  fds: OwnedFd[];
}

/**
 * Receives one message of at most `maxData` bytes (≤ MAX_MESSAGE_BYTES). Throws StoaError
 * ("too_large" for a longer message, "decode" for control data over MAX_FDS_PER_MESSAGE or
 * malformed) after closing every descriptor that arrived with it.
 */
export function recvFds(sock: OwnedFd, maxData: number = MAX_MESSAGE_BYTES): Received | Outcome {
  if (!Number.isInteger(maxData) || maxData < 1 || maxData > MAX_MESSAGE_BYTES) {
    throw new StoaError("internal", `recvFds: maxData must be 1..${MAX_MESSAGE_BYTES}, got ${maxData}`);
  }
  const data = new Uint8Array(maxData);
  const control = new Uint8Array(CONTROL_BYTES);
  const iov = new Uint8Array(IOVEC_BYTES);
  const msg = msghdr(iov, data, control);
  const fd = sock.fd;
  let n: number;
  for (;;) {
    n = libc().recvmsg(fd, msg, MSG_CMSG_CLOEXEC);
    if (n >= 0) break;
    const code = errno();
    if (code !== Errno.EINTR) return failure(`recvmsg on fd ${fd}`, code);
  }
  const view = new DataView(msg.buffer);
  const flags = view.getInt32(MSG_FLAGS, true);
  const controlLength = Math.min(Number(view.getBigUint64(MSG_CONTROLLEN, true)), CONTROL_BYTES);
  const raw: number[] = [];
  try {
    parseRights(control.subarray(0, controlLength), raw);
    if ((flags & MSG_CTRUNC) !== 0) {
      throw new StoaError("decode", `recvmsg on fd ${fd}: more than MAX_FDS_PER_MESSAGE (${MAX_FDS_PER_MESSAGE}) descriptors in one message; the sender must split them`);
    }
    if ((flags & MSG_TRUNC) !== 0) {
      throw new StoaError("too_large", `recvmsg on fd ${fd}: a message over ${maxData} bytes; the sender must keep messages within the receiver's limit`);
    }
    if (n === 0 && raw.length > 0) {
      throw new StoaError("decode", `recvmsg on fd ${fd}: descriptors without data; every message carries at least one byte`);
    }
  } catch (err) {
    // They arrived, so they are ours: closed here, once, before anyone sees their numbers.
    for (const r of raw) libc().close(r);
    throw err;
  }
  if (n === 0) return "closed";
  return { data: data.slice(0, n), fds: raw.map((r, i) => new OwnedFd(r, `descriptor ${i} received on fd ${fd}`)) };
}

/** Where the control-data walker is: at a header, or done. Payload and padding are consumed per header. */
type WalkState = "header" | "done";

/**
 * Walks the control bytes recvmsg returned and appends the descriptors of every SCM_RIGHTS
 * message to `into`. Every length is checked against `control` before it is read. Throws
 * StoaError("decode") for malformed bytes or another kind of control message — with `into`
 * holding the descriptors seen so far (the caller closes them) — and never reads past `control`.
 */
export function parseRights(control: Uint8Array, into: number[]): void {
  const view = new DataView(control.buffer, control.byteOffset, control.byteLength);
  const end = control.byteLength;
  let offset = 0;
  let unexpected: string | null = null;
  let state: WalkState = end === 0 ? "done" : "header";
  while (state === "header") {
    const left = end - offset;
    if (left < CMSG_HDR_BYTES) throw new StoaError("decode", `control data: ${left} trailing bytes at ${offset}, shorter than a cmsghdr (${CMSG_HDR_BYTES})`);
    const high = view.getUint32(offset + 4, true);
    const len = view.getUint32(offset, true);
    if (high !== 0 || len < CMSG_HDR_BYTES || len > left) {
      throw new StoaError("decode", `control data: cmsg_len ${high !== 0 ? "over 4 GiB" : len} at ${offset} outside ${CMSG_HDR_BYTES}..${left}`);
    }
    const level = view.getInt32(offset + CMSG_LEVEL, true);
    const type = view.getInt32(offset + CMSG_TYPE, true);
    const payload = len - CMSG_HDR_BYTES;
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      if (payload % FD_BYTES !== 0) throw new StoaError("decode", `control data: SCM_RIGHTS payload of ${payload} bytes at ${offset} is not whole descriptors`);
      for (let at = offset + CMSG_HDR_BYTES; at < offset + len; at += FD_BYTES) {
        const fd = view.getInt32(at, true);
        if (fd < 0) throw new StoaError("decode", `control data: descriptor ${fd} at ${at} is negative`);
        into.push(fd);
      }
    } else {
      // Keep walking: a later SCM_RIGHTS message's descriptors must still reach the caller to be closed.
      unexpected ??= `control data: unexpected control message level ${level} type ${type} at ${offset} (only SCM_RIGHTS is sent)`;
    }
    // The last message's padding may be cut off when the buffer ends first (the kernel does so).
    offset = Math.min(offset + cmsgAlign(len), end);
    if (offset === end) state = "done";
  }
  if (unexpected !== null) throw new StoaError("decode", unexpected);
}
