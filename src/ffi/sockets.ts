/**
 * Inherited listening sockets (systemd socket activation, core/daemon.ts `listenFds`): what
 * one is bound to, and copies for Bun. `Bun.listen({ fd })` takes over the descriptor it is
 * given and closes it on `stop()` (measured on 1.4.5), so every listener gets its own
 * `F_DUPFD_CLOEXEC` copy and the inherited one stays open for the next bind.
 */
import { ptr } from "bun:ffi";
import { AF_INET, AF_INET6, errno, libc, strerror } from "./libc.ts";

const F_DUPFD_CLOEXEC = 1030;
/** sizeof(struct sockaddr_storage). */
const SOCKADDR_STORAGE_BYTES = 128;

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
