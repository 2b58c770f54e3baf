/**
 * AF_UNIX datagram sockets through libc, for what Bun cannot do: `Bun.udpSocket` takes IP
 * addresses only (1.4.5). Used to send sd_notify messages (core/daemon.ts) and, in tests, to
 * receive them. Addresses (`/path` or `@abstract`): sockets.ts `unixSockaddr`.
 */
import { ptr } from "bun:ffi";
import { describeError } from "../core/errors.ts";
import { unixSockaddr as sockaddr } from "./sockets.ts";
import { AF_UNIX, MSG_DONTWAIT, MSG_NOSIGNAL, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, errno, libc, strerror } from "./libc.ts";

/** Sends one datagram to `address`; returns null or what went wrong. Never throws. */
export function sendUnixDatagram(address: string, data: Uint8Array): string | null {
  let target: { addr: Buffer; len: number };
  try {
    target = sockaddr(address);
  } catch (err) {
    return describeError(err);
  }
  const c = libc();
  const fd = c.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return `socket: ${strerror(errno())}`;
  try {
    const body = data.length === 0 ? new Uint8Array(1) : data;
    const sent = c.sendto(fd, ptr(body), data.length, MSG_NOSIGNAL, ptr(target.addr), target.len);
    return sent < 0 ? `sendto ${address}: ${strerror(errno())}` : null;
  } finally {
    c.close(fd);
  }
}

/**
 * A bound AF_UNIX datagram socket to read from without blocking (tests: a NOTIFY_SOCKET
 * listener). `receive()` returns the next datagram as text, or null when none is queued.
 */
export class UnixDatagramReceiver {
  readonly #fd: number;
  readonly #buf = Buffer.alloc(65_536);

  constructor(readonly path: string) {
    const { addr, len } = sockaddr(path);
    const c = libc();
    this.#fd = c.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (this.#fd < 0) throw new Error(`socket: ${strerror(errno())}`);
    if (c.bind(this.#fd, ptr(addr), len) !== 0) {
      const e = errno();
      c.close(this.#fd);
      throw new Error(`bind ${path}: ${strerror(e)}`);
    }
    // A path keeps its file: the caller removes it (it owns the directory).
  }

  receive(): string | null {
    const n = libc().recvfrom(this.#fd, ptr(this.#buf), this.#buf.length, MSG_DONTWAIT, null, null);
    return n < 0 ? null : this.#buf.toString("utf8", 0, Number(n));
  }

  close(): void {
    libc().close(this.#fd);
  }
}
