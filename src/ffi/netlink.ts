/**
 * rtnetlink through bun:ffi: add and delete addresses (RTM_NEWADDR / RTM_DELADDR, IFA_F_NODAD),
 * list them (RTM_GETADDR dump), add and delete `local` routes (RTM_NEWROUTE / RTM_DELROUTE of
 * type RTN_LOCAL) and list routes (RTM_GETROUTE dump) — microseconds per request, where running
 * `ip` costs milliseconds. Message layouts: src/addr/model.ts; bytes: netlink-codec.ts.
 *
 * Contract:
 * - One NETLINK_ROUTE socket per process, opened on first use and closed at exit (or by
 *   `closeNetlink()`). It lives in the network namespace of the process that opened it.
 * - Calls are synchronous: the kernel answers a request within microseconds, so a blocking
 *   `recvfrom` is fine — but never an unbounded one: SO_RCVTIMEO caps every wait, and a whole
 *   request at REPLY_TIMEOUT_MS, after which it fails with `StoaError("timeout")`.
 * - Every request carries its own sequence number and is read until its ACK / NLMSG_ERROR or,
 *   for a dump, NLMSG_DONE, across as many datagrams as the kernel sends. Datagrams not from the
 *   kernel and replies with another sequence number are skipped.
 * - Kernel errors become `NetlinkError` (a StoaError with the errno), with one clear line:
 *   EPERM → CAP_NET_ADMIN, EEXIST, ENODEV, EADDRNOTAVAIL, ESRCH, EINVAL (+ the kernel's own words).
 */
import { StoaError, type ErrorCode } from "../core/errors.ts";
import { AF_NETLINK, Errno, MSG_TRUNC, SOCK_CLOEXEC, SOCK_RAW, SOL_SOCKET, cString, errno, libc, strerror } from "./libc.ts";
import {
  AF_INET,
  AF_INET6,
  type AddrEntry,
  Flag,
  Ifa,
  IfaFlag,
  MAX_DATAGRAM_BYTES,
  MsgType,
  RTN_LOCAL,
  RT_SCOPE_HOST,
  RT_SCOPE_UNIVERSE,
  RT_TABLE_LOCAL,
  ReplyCollector,
  type RouteEntry,
  Rta,
  decodeAddr,
  decodeRoute,
  encodeRequest,
  ifaddrmsg,
  rtmsg,
  u32Attr,
} from "./netlink-codec.ts";

const NETLINK_ROUTE = 0;
/** sizeof(struct sockaddr_nl): u16 family, u16 pad, u32 port id, u32 groups. */
const SOCKADDR_NL_LEN = 12;
const SO_RCVTIMEO = 20; // SO_RCVTIMEO_OLD: struct timeval of two longs (64-bit Linux)
const SOL_NETLINK = 270;
const NETLINK_CAP_ACK = 10; // ACKs do not echo our request back
const NETLINK_EXT_ACK = 11; // errors carry the kernel's own message
/** Linux IFNAMSIZ (16) minus the NUL. */
const IFNAME_MAX = 15;

/** The longest a request may take, all datagrams of a dump included. */
const REPLY_TIMEOUT_MS = 2_000;
/** A dump the kernel marks inconsistent (table changed meanwhile) is retried this often. */
const DUMP_ATTEMPTS = 3;

/** What every permission failure tells the user. */
export const NEEDS_NET_ADMIN = "needs CAP_NET_ADMIN: run as root, or sudo setcap cap_net_admin+ep $(command -v stoa)";

/** A failure the kernel reported for a request; `errno` is positive (EEXIST = 17, …). */
export class NetlinkError extends StoaError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly errno: number,
    readonly extack: string | undefined,
  ) {
    super(code, message);
  }
}

/** Names the object of a request in error messages: `address fd00::5/128`, `dev eth0`. */
interface Subject {
  readonly object: string;
  readonly dev?: string;
}

/** The one-line error for a kernel errno, phrased for `action` on `subject`. */
export function kernelError(code: number, extack: string | undefined, action: "add" | "delete" | "list", subject: Subject): NetlinkError {
  const kernel = extack ? ` (kernel: ${extack})` : "";
  const on = subject.dev ? ` on ${subject.dev}` : "";
  const fail = (c: ErrorCode, text: string) => new NetlinkError(c, text, code, extack);
  switch (code) {
    case Errno.EPERM:
      return fail("permission", `cannot ${action} ${subject.object}: ${NEEDS_NET_ADMIN}`);
    case Errno.EEXIST:
      return fail("exists", `cannot add ${subject.object}${on}: it already exists`);
    case Errno.ENODEV:
      return fail("not_found", `no such interface${subject.dev ? `: ${subject.dev}` : ""} (see 'ip link')`);
    case Errno.EADDRNOTAVAIL:
      return fail("not_found", `${subject.object} is not on ${subject.dev ?? "this interface"} (see 'stoa addr ls')`);
    case Errno.ESRCH:
      return fail("not_found", `${subject.object} does not exist (see 'stoa addr ls')`);
    case Errno.EACCES:
      // For addresses the kernel's EACCES means IPv6 is switched off on that interface.
      return fail(
        "permission",
        subject.dev
          ? `cannot ${action} ${subject.object}${on}: IPv6 is disabled there (sysctl -w net.ipv6.conf.${subject.dev}.disable_ipv6=0)`
          : `cannot ${action} ${subject.object}: ${NEEDS_NET_ADMIN}`,
      );
    case Errno.EINVAL:
      return fail("io", `cannot ${action} ${subject.object}${on}: the kernel rejected the request as invalid${kernel}`);
    default:
      return fail("io", `cannot ${action} ${subject.object}${on}: ${strerror(code)}${kernel}`);
  }
}

class RouteSocket {
  #seq = Math.floor(Math.random() * 0x7fff_ffff);
  // Kept for the life of the socket: FFI reads and writes them during each call.
  readonly #buf = new Uint8Array(MAX_DATAGRAM_BYTES);
  /** struct sockaddr_nl as host-order u32s: [family | pad, port id, groups]. */
  readonly #from = new Uint32Array(SOCKADDR_NL_LEN / 4);
  readonly #fromLen = new Uint32Array(1);

  #fd: number;

  private constructor(fd: number) {
    this.#fd = fd;
  }

  static open(): RouteSocket {
    const c = libc();
    const fd = c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) throw sysError("socket(AF_NETLINK)", errno());
    const sock = new RouteSocket(fd);
    try {
      const addr = new Uint8Array(SOCKADDR_NL_LEN);
      new DataView(addr.buffer).setUint16(0, AF_NETLINK, true);
      if (c.bind(fd, addr, SOCKADDR_NL_LEN) < 0) throw sysError("bind(AF_NETLINK)", errno());
      const tv = new BigInt64Array([BigInt(Math.floor(REPLY_TIMEOUT_MS / 1000)), BigInt((REPLY_TIMEOUT_MS % 1000) * 1000)]);
      if (c.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, tv, 16) < 0) throw sysError("setsockopt(SO_RCVTIMEO)", errno());
      // Both optional (Linux ≥ 4.3 / 4.12): without them errors are just shorter.
      const one = new Int32Array([1]);
      c.setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, one, 4);
      c.setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, one, 4);
    } catch (err) {
      sock.close();
      throw err;
    }
    return sock;
  }

  nextSeq(): number {
    this.#seq = (this.#seq + 1) >>> 0;
    return this.#seq;
  }

  /** Sends `request` (built with `seq`) and feeds every datagram to `reply` until it is done. */
  exchange(request: Uint8Array, reply: ReplyCollector): void {
    const c = libc();
    for (;;) {
      const sent = c.sendto(this.#fd, request, request.length, 0, null, 0);
      if (Number(sent) >= 0) break;
      const code = errno();
      if (code !== Errno.EINTR) throw sysError("send to the kernel (netlink)", code);
    }
    const deadline = performance.now() + REPLY_TIMEOUT_MS;
    while (!reply.done) {
      if (performance.now() > deadline) throw this.#timeout();
      this.#fromLen[0] = SOCKADDR_NL_LEN;
      const n = Number(c.recvfrom(this.#fd, this.#buf, this.#buf.length, MSG_TRUNC, this.#from, this.#fromLen));
      if (n < 0) {
        const code = errno();
        if (code === Errno.EINTR) continue;
        if (code === Errno.EAGAIN) throw this.#timeout();
        throw sysError("receive from the kernel (netlink)", code);
      }
      if (n > this.#buf.length) throw new StoaError("too_large", `netlink: a ${n}-byte reply exceeds the ${this.#buf.length}-byte buffer`);
      // Port id 0 is the kernel; anything else is another process writing to our port.
      if (this.#from[1] !== 0) continue;
      reply.feed(this.#buf.subarray(0, n));
    }
  }

  #timeout(): StoaError {
    return new StoaError("timeout", `the kernel did not answer a netlink request within ${REPLY_TIMEOUT_MS} ms; try again`);
  }

  close(): void {
    if (this.#fd >= 0) libc().close(this.#fd);
    this.#fd = -1;
  }
}

function sysError(what: string, code: number): StoaError {
  if (code === Errno.EPERM || code === Errno.EACCES) return new StoaError("permission", `${what}: ${NEEDS_NET_ADMIN}`);
  return new StoaError("io", `${what}: ${strerror(code)}`);
}

let shared: RouteSocket | undefined;
let closesAtExit = false;

function routeSocket(): RouteSocket {
  if (shared === undefined) {
    shared = RouteSocket.open();
    if (!closesAtExit) process.once("exit", closeNetlink);
    closesAtExit = true;
  }
  return shared;
}

/** Closes this process's netlink socket (the next request opens a new one). */
export function closeNetlink(): void {
  shared?.close();
  shared = undefined;
}

/** One request → its collector; a timed-out or garbled exchange drops the socket, so no stale reply is ever mixed in. */
function run(build: (seq: number) => Uint8Array, dump: boolean, entryType = 0): ReplyCollector {
  const sock = routeSocket();
  const seq = sock.nextSeq();
  const reply = new ReplyCollector(seq, dump, entryType);
  try {
    sock.exchange(build(seq), reply);
  } catch (err) {
    closeNetlink();
    throw err;
  }
  return reply;
}

function request(type: number, flags: number, body: Uint8Array, attrs: Parameters<typeof encodeRequest>[4], action: "add" | "delete", subject: Subject): void {
  const reply = run((seq) => encodeRequest(type, Flag.REQUEST | Flag.ACK | flags, seq, body, attrs), false);
  if (reply.errno !== 0) throw kernelError(reply.errno, reply.extack, action, subject);
}

function dump(type: number, entryType: number, body: Uint8Array): Uint8Array[] {
  for (let attempt = 1; ; attempt++) {
    const reply = run((seq) => encodeRequest(type, Flag.REQUEST | Flag.DUMP, seq, body), true, entryType);
    if (reply.errno !== 0) throw kernelError(reply.errno, reply.extack, "list", { object: type === MsgType.RTM_GETADDR ? "addresses" : "routes" });
    if (!reply.interrupted || attempt >= DUMP_ATTEMPTS) return reply.entries;
  }
}

function familyOf(address: Uint8Array): number {
  if (address.length === 16) return AF_INET6;
  if (address.length === 4) return AF_INET;
  throw new StoaError("internal", `an address of ${address.length} bytes`);
}

/** An address on an interface: network-order bytes (16 for IPv6), prefix length, ifindex. */
interface AddressRequest {
  readonly address: Uint8Array;
  readonly prefixlen: number;
  readonly ifindex: number;
  /** IFA_F_NODAD: usable at once, no duplicate address detection (~1 s). */
  readonly nodad?: boolean;
}

/** RTM_NEWADDR with NLM_F_EXCL: fails with code "exists" if the address is already there. */
export function addAddress(req: AddressRequest, subject: Subject): void {
  const flags = req.nodad ? IfaFlag.NODAD : 0;
  const family = familyOf(req.address);
  const body = ifaddrmsg({ family, prefixlen: req.prefixlen, flags, scope: RT_SCOPE_UNIVERSE, index: req.ifindex });
  const attrs = [
    { type: Ifa.LOCAL, value: req.address },
    { type: Ifa.ADDRESS, value: req.address },
    u32Attr(Ifa.FLAGS, flags),
  ];
  request(MsgType.RTM_NEWADDR, Flag.CREATE | Flag.EXCL, body, attrs, "add", subject);
}

/** RTM_DELADDR: fails with code "not_found" (EADDRNOTAVAIL) if the address is not there. */
export function deleteAddress(req: AddressRequest, subject: Subject): void {
  const family = familyOf(req.address);
  const body = ifaddrmsg({ family, prefixlen: req.prefixlen, flags: 0, scope: RT_SCOPE_UNIVERSE, index: req.ifindex });
  request(MsgType.RTM_DELADDR, 0, body, [{ type: Ifa.LOCAL, value: req.address }], "delete", subject);
}

/** Every address of `family` in this network namespace (RTM_GETADDR dump). */
export function listAddresses(family: number = AF_INET6): AddrEntry[] {
  const body = ifaddrmsg({ family, prefixlen: 0, flags: 0, scope: 0, index: 0 });
  const out: AddrEntry[] = [];
  for (const payload of dump(MsgType.RTM_GETADDR, MsgType.RTM_NEWADDR, body)) {
    const entry = decodeAddr(payload);
    if (entry !== undefined && entry.family === family) out.push(entry);
  }
  return out;
}

/** A `local` route (RTN_LOCAL, table local, scope host): every address under dst/dstLen is this host's. */
interface LocalRouteRequest {
  readonly dst: Uint8Array;
  readonly dstLen: number;
  /** Normally `lo`'s index. */
  readonly ifindex: number;
  /** rtm_protocol: who owns the route; deletion matches it, so others' routes are never touched. */
  readonly protocol: number;
}

function localRoute(req: LocalRouteRequest): { body: Uint8Array; attrs: Parameters<typeof encodeRequest>[4] } {
  const body = rtmsg({
    family: familyOf(req.dst),
    dstLen: req.dstLen,
    table: RT_TABLE_LOCAL,
    protocol: req.protocol,
    scope: RT_SCOPE_HOST,
    type: RTN_LOCAL,
  });
  const attrs = [{ type: Rta.DST, value: req.dst }, u32Attr(Rta.OIF, req.ifindex), u32Attr(Rta.TABLE, RT_TABLE_LOCAL)];
  return { body, attrs };
}

/** RTM_NEWROUTE with NLM_F_EXCL: code "exists" if the same route is there. */
export function addLocalRoute(req: LocalRouteRequest, subject: Subject): void {
  const { body, attrs } = localRoute(req);
  request(MsgType.RTM_NEWROUTE, Flag.CREATE | Flag.EXCL, body, attrs, "add", subject);
}

/** RTM_DELROUTE: code "not_found" (ESRCH) unless such a route with that protocol exists. */
export function deleteLocalRoute(req: LocalRouteRequest, subject: Subject): void {
  const { body, attrs } = localRoute(req);
  request(MsgType.RTM_DELROUTE, 0, body, attrs, "delete", subject);
}

/** Every route of `family`, all tables (RTM_GETROUTE dump). */
export function listRoutes(family: number = AF_INET6): RouteEntry[] {
  const body = rtmsg({ family, dstLen: 0, table: 0, protocol: 0, scope: 0, type: 0 });
  const out: RouteEntry[] = [];
  for (const payload of dump(MsgType.RTM_GETROUTE, MsgType.RTM_NEWROUTE, body)) {
    const entry = decodeRoute(payload);
    if (entry !== undefined && entry.family === family) out.push(entry);
  }
  return out;
}

/** Whether `name` is a name the kernel would accept for an interface (dev_valid_name). */
export function validInterfaceName(name: string): boolean {
  return (
    name.length > 0 && Buffer.byteLength(name) <= IFNAME_MAX && name !== "." && name !== ".." && !/[/:\s\0]/.test(name)
  );
}

/**
 * The index of interface `name` in this network namespace (if_nametoindex).
 * Throws "usage" for a name the kernel would refuse, "not_found" when there is no such interface.
 */
export function interfaceIndex(name: string): number {
  if (!validInterfaceName(name)) {
    throw new StoaError("usage", `invalid interface name '${name}': 1 to ${IFNAME_MAX} bytes, no '/', ':' or spaces`);
  }
  const cname = cString(name);
  const index = libc().if_nametoindex(cname);
  if (index === 0) {
    const code = errno();
    if (code === Errno.ENODEV || code === Errno.ENXIO || code === 0) throw kernelError(Errno.ENODEV, undefined, "list", { object: "interface", dev: name });
    throw sysError(`look up interface ${name}`, code);
  }
  return index;
}

/** The name of interface `index`, or undefined if there is none (if_indextoname). */
export function interfaceName(index: number): string | undefined {
  const out = new Uint8Array(IFNAME_MAX + 1);
  if (libc().if_indextoname(index, out) === null) return undefined;
  const end = out.indexOf(0);
  return new TextDecoder().decode(out.subarray(0, end < 0 ? out.length : end));
}

/** A lookup of interface names by index that asks the kernel once per index (for listings). */
export function interfaceNamer(): (index: number) => string {
  const names = new Map<number, string>();
  return (index) => {
    let name = names.get(index);
    if (name === undefined) {
      name = interfaceName(index) ?? `if${index}`;
      names.set(index, name);
    }
    return name;
  };
}
