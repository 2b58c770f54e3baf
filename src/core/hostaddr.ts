/**
 * Which address of this host to tell others about when nothing more specific is known (the
 * gateway listens on every address): a global or unique-local IPv6 address first (stoa's
 * network is IPv6-first), then a non-loopback IPv4, then loopback. Link-local addresses are
 * never picked: they mean nothing without a zone, and a metaserver URL cannot carry one.
 */
import { networkInterfaces } from "node:os";

type Iface = { address: string; family: string; internal: boolean };

/** Unspecified listen addresses: the gateway serves every address of the host. */
function isWildcard(address: string): boolean {
  return address === "::" || address === "0.0.0.0" || address === "[::]";
}

/** A loopback address (`::1`, 127.0.0.0/8, `localhost`; brackets allowed): reachable from this host only. */
export function isLoopback(address: string): boolean {
  const bare = address.replace(/^\[(.*)\]$/, "$1").toLowerCase();
  return bare === "::1" || bare === "localhost" || /^127\./.test(bare);
}

function rank(a: Iface): number {
  if (a.family === "IPv6") {
    if (a.internal || a.address === "::1") return 3;
    if (/^fe[89ab]/i.test(a.address)) return 99; // link-local
    return /^f[cd]/i.test(a.address) ? 1 : 0; // global before unique-local
  }
  if (a.internal || a.address.startsWith("127.")) return 4;
  if (a.address.startsWith("169.254.")) return 99;
  return 2;
}

/**
 * The address to advertise for a service listening on `listen` (the first specific address
 * wins; wildcards fall back to this host's best address).
 */
export function advertisedAddress(
  listen: readonly string[],
  ifaces: Record<string, readonly Iface[] | undefined> = networkInterfaces(),
): string {
  const specific = listen.find((a) => !isWildcard(a));
  if (specific !== undefined) return specific.replace(/^\[(.*)\]$/, "$1");
  const all: Iface[] = Object.values(ifaces).flatMap((list) => list ?? []);
  const best = all.filter((a) => rank(a) < 99).sort((x, y) => rank(x) - rank(y))[0];
  return best?.address ?? "::1";
}
