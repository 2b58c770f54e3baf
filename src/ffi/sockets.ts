/**
 * Socket facts and addresses through libc, for what Bun does not expose.
 *
 * Inherited listening sockets (systemd socket activation, core/daemon.ts `listenFds`): what
 * one is bound to, and copies for Bun. `Bun.listen({ fd })` takes over the descriptor it is
 * given and closes it on `stop()` (measured on 1.4.5), so every listener gets its own
 * `F_DUPFD_CLOEXEC` copy and the inherited one stays open for the next bind.
 */
import { ptr } from "bun:ffi";
import { AF_INET, AF_INET6, AF_UNIX, SOL_SOCKET, errno, libc, strerror } from "./libc.ts";

const F_DUPFD_CLOEXEC = 1030;
/** sizeof(struct sockaddr_storage). */
const SOCKADDR_STORAGE_BYTES = 128;
/** sizeof(sun_path). */
const SUN_PATH_BYTES = 108;
/** socket.h option names (SOL_SOCKET level). */
const SO_TYPE = 3;
const SO_PEERCRED = 17;
const SO_RCVTIMEO = 20; // SO_RCVTIMEO_OLD: struct timeval of two longs (64-bit Linux)
const SO_DOMAIN = 39;

/**
 * `address` (`/path` or `@abstract`) as a `struct sockaddr_un` (u16 AF_UNIX, then
 * `char sun_path[108]`) and its length. A path address is NUL-terminated; an abstract one
 * (`@name`, as in NOTIFY_SOCKET) starts with a NUL and its length is exactly what is given.
 * Throws for a name over sun_path.
 */
export function unixSockaddr(address: string): { addr: Buffer; len: number } {
  const abstract = address.startsWith("@");
  const name = Buffer.from(abstract ? address.slice(1) : address, "utf8");
  // A path needs room for its NUL; an abstract name has a leading NUL instead.
  if (name.length + 1 > SUN_PATH_BYTES) throw new Error(`unix socket address too long (${name.length} bytes): ${address}`);
  const addr = Buffer.alloc(2 + SUN_PATH_BYTES);
  addr.writeUInt16LE(AF_UNIX, 0);
  name.copy(addr, abstract ? 3 : 2);
  return { addr, len: 2 + name.length + 1 };
}

/** An int-valued SOL_SOCKET option, or -1 with errno set. */
function intOption(fd: number, name: number): number {
  const value = new Int32Array(1);
  const length = new Uint32Array([4]);
  return libc().getsockopt(fd, SOL_SOCKET, name, value, length) === 0 ? (value[0] ?? -1) : -1;
}

/** A socket's type (SOCK_STREAM, SOCK_SEQPACKET, …) and address family, or -1s when `fd` is not a socket. */
export function socketKind(fd: number): { type: number; domain: number } {
  return { type: intOption(fd, SO_TYPE), domain: intOption(fd, SO_DOMAIN) };
}

/** Who is at the other end of a connected Unix socket (SO_PEERCRED), as of its connect; null if unknown. */
export function peerCredentials(fd: number): { pid: number; uid: number; gid: number } | null {
  const cred = new Int32Array(3); // struct ucred: pid_t pid; uid_t uid; gid_t gid
  const length = new Uint32Array([12]);
  if (libc().getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cred, length) !== 0) return null;
  return { pid: cred[0] ?? -1, uid: (cred[1] ?? -1) >>> 0, gid: (cred[2] ?? -1) >>> 0 };
}

/** Bounds every blocking receive on `fd` to `ms` (SO_RCVTIMEO); false with errno set if refused. */
export function setReceiveTimeout(fd: number, ms: number): boolean {
  const tv = new BigInt64Array([BigInt(Math.floor(ms / 1000)), BigInt((ms % 1000) * 1000)]);
  return libc().setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, tv, 16) === 0;
}

/** A copy of `fd` (close-on-exec) at 3 or above. Throws with the errno's text. */
export function dupFd(fd: number): number {
  const copy = libc().fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) throw new Error(`fcntl(${fd}, F_DUPFD_CLOEXEC): ${strerror(errno())}`);
  return copy;
}

/**
 * The IP address and port a socket is bound to (getsockname(2)); throws for anything but an
 * IPv4/IPv6 socket (a Unix socket, a closed fd).
 */
export function boundAddress(fd: number): { host: string; port: number } {
  const addr = Buffer.alloc(SOCKADDR_STORAGE_BYTES);
  const len = new Uint32Array([SOCKADDR_STORAGE_BYTES]);
  if (libc().getsockname(fd, ptr(addr), ptr(len)) !== 0) throw new Error(`getsockname(${fd}): ${strerror(errno())}`);
  const family = addr.readUInt16LE(0);
  const port = addr.readUInt16BE(2); // sin_port / sin6_port, network order
  if (family === AF_INET) return { host: [...addr.subarray(4, 8)].join("."), port };
  if (family === AF_INET6) {
    const groups: string[] = [];
    for (let i = 8; i < 24; i += 2) groups.push(addr.readUInt16BE(i).toString(16));
    return { host: compressV6(groups), port };
  }
  throw new Error(`fd ${fd} is not an IP socket (address family ${family})`);
}

/** RFC 5952 text: the longest run (≥ 2) of zero groups becomes `::`. */
function compressV6(groups: string[]): string {
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== "0") {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === "0") j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(":");
  return `${groups.slice(0, best).join(":")}::${groups.slice(best + bestLen).join(":")}`;
}
