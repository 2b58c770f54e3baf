/**
 * Routed local prefixes ("AnyIP"): a route of type local in table local on `lo` makes every
 * address of a prefix this host's own, with no per-address work. Routes carry rtm_protocol
 * RTPROT_STOA, so stoa lists and deletes only its own (model.ts).
 *
 * Binding: a listener on the wildcard `[::]` accepts connections to every address of the prefix
 * at once. Binding one specific address of it needs `net.ipv6.ip_nonlocal_bind=1` (or
 * IP_FREEBIND): unlike IPv4, Linux's IPv6 bind() checks the interface addresses, not the local
 * routes (measured: EADDRNOTAVAIL without it; test/e2e/addr.test.ts).
 */
import { AF_INET6, RTN_LOCAL, RT_TABLE_LOCAL } from "../ffi/netlink-codec.ts";
import { Errno } from "../ffi/libc.ts";
import { NetlinkError, addLocalRoute, deleteLocalRoute, interfaceIndex, interfaceNamer, listRoutes } from "../ffi/netlink.ts";
import { type Cidr, formatIPv6, parsePrefix } from "./ipv6.ts";
import { RTPROT_STOA } from "./model.ts";

const LOOPBACK = "lo";

function prefixSubject(p: Cidr): { object: string; dev: string } {
  return { object: `local route ${formatIPv6(p.bytes)}/${p.length}`, dev: LOOPBACK };
}

/**
 * Makes every address of `prefix` this host's own: a `local` route (RTN_LOCAL, table local) on
 * `lo`, marked as stoa's (RTPROT_STOA). Peers need a route to the prefix via this host.
 */
export function addPrefix(prefix: string): string {
  const p = parsePrefix(prefix);
  const subject = prefixSubject(p);
  addLocalRoute({ dst: p.bytes, dstLen: p.length, ifindex: interfaceIndex(LOOPBACK), protocol: RTPROT_STOA }, subject);
  return `${formatIPv6(p.bytes)}/${p.length}`;
}

/** Removes the local route of `prefix` that stoa added; "not_found" if there is none. */
export function removePrefix(prefix: string): string {
  const p = parsePrefix(prefix);
  const shown = `${formatIPv6(p.bytes)}/${p.length}`;
  try {
    deleteLocalRoute({ dst: p.bytes, dstLen: p.length, ifindex: interfaceIndex(LOOPBACK), protocol: RTPROT_STOA }, prefixSubject(p));
  } catch (err) {
    if (err instanceof NetlinkError && err.errno === Errno.ESRCH) {
      throw new NetlinkError("not_found", `no local route for ${shown} that stoa added (see 'stoa addr ls')`, err.errno, err.extack);
    }
    throw err;
  }
  return shown;
}

/** A local prefix stoa added. */
interface PrefixInfo {
  prefix: string;
  dev: string;
}

/** The local routes stoa added in this network namespace. */
export function listPrefixes(): PrefixInfo[] {
  const name = interfaceNamer();
  return listRoutes(AF_INET6)
    .filter((r) => r.type === RTN_LOCAL && r.table === RT_TABLE_LOCAL && r.protocol === RTPROT_STOA && r.dst !== undefined)
    .map((r) => ({ prefix: `${formatIPv6(r.dst ?? new Uint8Array(16))}/${r.dstLen}`, dev: r.oif === undefined ? LOOPBACK : name(r.oif) }));
}
