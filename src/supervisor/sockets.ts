/**
 * The sockets the privileged supervisor opens for the data plane (protocol.ts's diagram says
 * who holds and closes each): the ingress AF_PACKET socket of an input interface, joined to the
 * interface's PACKET_FANOUT group so the data-plane workers share its packets (each packet to
 * one worker, by flow hash), and one UDP socket per output, bound to its interface and connected
 * to its group:port, so a worker only ever `send`s (io_uring SEND) and needs no privilege.
 *
 * Ingress details: SOCK_RAW with protocol ETH_P_IP (IPv4 frames only, Ethernet header included),
 * bound to the interface's index; PACKET_IGNORE_OUTGOING, since an AF_PACKET socket also sees the
 * packets sent out of its interface (a relay whose output shares the interface would otherwise
 * read its own output); non-blocking (the ring does the waiting). All structures are Linux's on
 * 64-bit (x86_64, aarch64 alike): sockaddr_ll 20 bytes, sockaddr_in 16.
 */
import { StoaError } from "../core/errors.ts";
import { interfaceIndex } from "../ffi/netlink.ts";
import { AF_INET, AF_PACKET, Errno, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, SOCK_RAW, SOL_SOCKET, cString, errno, libc, strerror } from "../ffi/libc.ts";

const ETH_P_IP = 0x0800;
const SO_BINDTODEVICE = 25;
const SOL_PACKET = 263;
const PACKET_FANOUT = 18;
const PACKET_IGNORE_OUTGOING = 23;
/** PACKET_FANOUT_HASH: packets of one flow go to one socket (in order). */
const PACKET_FANOUT_HASH = 0;
/** With id 0: the kernel picks an id no group in this namespace has (read it with `fanoutIdOf`). */
const PACKET_FANOUT_FLAG_UNIQUEID = 0x2000;
const SO_RCVBUFFORCE = 33;
/**
 * An ingress socket's receive queue: frames wait here while the worker's RECVs are all busy
 * (a burst, a worker being restarted). The default (~208 KiB) holds ~150 frames of 1,400 B; this
 * holds ~3,000. SO_RCVBUFFORCE, so net.core.rmem_max does not cap it (root; with CAP_NET_RAW
 * alone the capped SO_RCVBUF).
 */
const INGRESS_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024;
const SO_SNDBUFFORCE = 32;
/**
 * An output socket's send queue: a worker's SENDs wait here while the output is slower than the
 * input for a moment; the default (~208 KiB, ~150 copies of 1,400 B) would fail SENDs into the
 * send pool's limit instead (buffer_exhausted at a burst). This holds a worker's whole send pool.
 */
const OUTPUT_SEND_BUFFER_BYTES = 4 * 1024 * 1024;
const IPPROTO_IP = 0;
const IP_MULTICAST_TTL = 33;
const IP_MULTICAST_LOOP = 34;
/** Multicast hops for relayed packets (the kernel's default of 1 stays on the link). */
export const OUTPUT_MULTICAST_TTL = 8;

function htons(n: number): number {
  return ((n & 0xff) << 8) | ((n >> 8) & 0xff);
}

function fail(what: string): never {
  const code = errno();
  if (code === Errno.EPERM || code === Errno.EACCES) throw new StoaError("permission", `${what}: ${strerror(code)} (the supervisor needs root, or CAP_NET_RAW for AF_PACKET)`);
  throw new StoaError("io", `${what}: ${strerror(code)}`);
}

const SO_SNDBUF = 7;
const SO_RCVBUF = 8;

/**
 * A socket buffer of `bytes`: the FORCE option (past net.core.[rw]mem_max) needs CAP_NET_ADMIN;
 * without it (a supervisor with CAP_NET_RAW alone) the plain option, which the kernel caps.
 */
function setBuffer(fd: number, kind: "send" | "receive", bytes: number, what: string): void {
  const [force, plain] = kind === "send" ? [SO_SNDBUFFORCE, SO_SNDBUF] : [SO_RCVBUFFORCE, SO_RCVBUF];
  const v = new Int32Array([bytes]);
  if (libc().setsockopt(fd, SOL_SOCKET, force, v, 4) === 0) return;
  setInt(fd, SOL_SOCKET, plain, bytes, what);
}

function setInt(fd: number, level: number, option: number, value: number, what: string): void {
  const v = new Int32Array([value]);
  if (libc().setsockopt(fd, level, option, v, 4) !== 0) {
    const code = errno();
    libc().close(fd);
    if (code === Errno.EPERM || code === Errno.EACCES) throw new StoaError("permission", `${what}: ${strerror(code)}`);
    throw new StoaError("io", `${what}: ${strerror(code)}`);
  }
}

/**
 * An AF_PACKET socket receiving the IPv4 frames of `ifname`, in fanout group `fanoutId` (the
 * same id for every worker's socket of that interface; a 16-bit number), or — `fanoutId` 0 — in
 * a new group with an id no other group here has (`fanoutIdOf` reads it, for the next sockets).
 * The caller owns the fd.
 */
export function openPacketSocket(ifname: string, fanoutId: number): number {
  const index = interfaceIndex(ifname);
  const fd = libc().socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_IP));
  if (fd < 0) fail(`AF_PACKET socket for ${ifname}`);
  // struct sockaddr_ll { u16 family; u16 protocol (BE); i32 ifindex; u16 hatype; u8 pkttype; u8 halen; u8 addr[8]; }
  const addr = new Uint8Array(20);
  const view = new DataView(addr.buffer);
  view.setUint16(0, AF_PACKET, true);
  view.setUint16(2, ETH_P_IP, false);
  view.setInt32(4, index, true);
  if (libc().bind(fd, addr, addr.length) !== 0) {
    const message = `bind AF_PACKET socket to ${ifname}: ${strerror(errno())}`;
    libc().close(fd);
    throw new StoaError("io", message);
  }
  setInt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1, `PACKET_IGNORE_OUTGOING on ${ifname}`);
  setBuffer(fd, "receive", INGRESS_RECEIVE_BUFFER_BYTES, `the receive buffer of ${ifname}'s AF_PACKET socket`);
  const mode = fanoutId === 0 ? PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_UNIQUEID : PACKET_FANOUT_HASH;
  setInt(fd, SOL_PACKET, PACKET_FANOUT, (fanoutId & 0xffff) | (mode << 16), `PACKET_FANOUT group ${fanoutId === 0 ? "(new)" : fanoutId} on ${ifname}`);
  return fd;
}

/** The fanout group id of an AF_PACKET socket that joined one (getsockopt PACKET_FANOUT: id in the low 16 bits). */
export function fanoutIdOf(fd: number): number {
  const value = new Int32Array(1);
  const length = new Uint32Array([4]);
  if (libc().getsockopt(fd, SOL_PACKET, PACKET_FANOUT, value, length) !== 0) throw new StoaError("io", `getsockopt PACKET_FANOUT on fd ${fd}: ${strerror(errno())}`);
  return value[0]! & 0xffff;
}

/**
 * A UDP socket that sends out of `ifname` to `group:port` (connected: a worker only calls send).
 * Multicast groups get OUTPUT_MULTICAST_TTL and no loopback to this host. The caller owns the fd.
 */
export function openOutputSocket(ifname: string, group: string, port: number): number {
  interfaceIndex(ifname); // a clear "no such interface" before anything is opened
  const fd = libc().socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail(`UDP socket for ${group}:${port} on ${ifname}`);
  const name = cString(ifname);
  if (libc().setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, name, name.length) !== 0) {
    const code = errno();
    libc().close(fd);
    if (code === Errno.EPERM) throw new StoaError("permission", `SO_BINDTODEVICE ${ifname}: ${strerror(code)} (needs CAP_NET_RAW)`);
    throw new StoaError("io", `SO_BINDTODEVICE ${ifname}: ${strerror(code)}`);
  }
  setBuffer(fd, "send", OUTPUT_SEND_BUFFER_BYTES, `the send buffer of the output socket to ${group}:${port}`);
  const first = Number(group.split(".")[0]);
  if (first >= 224 && first <= 239) {
    setInt(fd, IPPROTO_IP, IP_MULTICAST_TTL, OUTPUT_MULTICAST_TTL, `IP_MULTICAST_TTL for ${group}`);
    setInt(fd, IPPROTO_IP, IP_MULTICAST_LOOP, 0, `IP_MULTICAST_LOOP for ${group}`);
  }
  // struct sockaddr_in { u16 family; u16 port (BE); u8 addr[4]; u8 zero[8]; }
  const addr = new Uint8Array(16);
  const view = new DataView(addr.buffer);
  view.setUint16(0, AF_INET, true);
  view.setUint16(2, port, false);
  addr.set(group.split(".").map(Number), 4);
  if (libc().connect(fd, addr, addr.length) !== 0) {
    const message = `connect the output socket to ${group}:${port} on ${ifname}: ${strerror(errno())}`;
    libc().close(fd);
    throw new StoaError("io", message);
  }
  return fd;
}
