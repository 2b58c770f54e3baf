/**
 * IPv6 address arithmetic for stoa addr: text ↔ 16 network-order bytes (core/ipv6.ts: RFC 4291 input, RFC 5952
 * canonical output), `ADDR/LEN` and prefix parsing with clear usage errors, and random addresses
 * inside a prefix. No zone ids (`%eth0`): stoa's addresses are never link-local.
 */
import { StoaError } from "../core/errors.ts";
import { formatIPv6, parseIPv6 } from "../core/ipv6.ts";

export { formatIPv6, parseIPv6 };

/** Attempts to draw a usable random address before giving up (only tiny prefixes ever need >1). */
const RANDOM_ATTEMPTS = 64;

/** An address or prefix: 16 bytes and a length in bits. */
export interface Cidr {
  readonly bytes: Uint8Array;
  readonly length: number;
}

function hostBitsZero(c: Cidr): boolean {
  for (let bit = c.length; bit < 128; bit++) {
    if (((c.bytes[bit >> 3] ?? 0) >> (7 - (bit & 7))) & 1) return false;
  }
  return true;
}

function splitCidr(text: string, what: string, example: string): Cidr {
  const slash = text.indexOf("/");
  if (slash < 0) throw new StoaError("usage", `${what} '${text}' needs a prefix length, e.g. ${example}`);
  const bytes = parseIPv6(text.slice(0, slash));
  if (bytes === undefined) throw new StoaError("usage", `${what} '${text}': '${text.slice(0, slash)}' is not an IPv6 address (e.g. ${example})`);
  const lenText = text.slice(slash + 1);
  const length = /^(0|[1-9][0-9]{0,2})$/.test(lenText) ? Number(lenText) : Number.NaN;
  if (!(length >= 0 && length <= 128)) throw new StoaError("usage", `${what} '${text}': prefix length must be 0 to 128`);
  return { bytes, length };
}

/**
 * `ADDR/128` → the address. stoa adds single addresses only (a /64 on an interface would answer
 * Neighbor Discovery for nothing but itself anyway — see model.ts).
 */
export function parseHostAddress(text: string): Cidr {
  const c = splitCidr(text, "address", "fd00:1:2:3::10/128");
  if (c.length !== 128) throw new StoaError("usage", `address '${text}': stoa adds single addresses, write it as ${formatIPv6(c.bytes)}/128`);
  return c;
}

/** `PREFIX/LEN` with no host bits set, length 1–128. */
export function parsePrefix(text: string): Cidr {
  const c = splitCidr(text, "prefix", "fd00:1:2:3::/64");
  if (c.length === 0) throw new StoaError("usage", `prefix '${text}': a /0 would take every IPv6 address; give a real prefix such as fd00:1:2:3::/64`);
  if (!hostBitsZero(c)) {
    throw new StoaError("usage", `prefix '${text}' has bits set past /${c.length}; did you mean ${formatIPv6(mask(c))}/${c.length}?`);
  }
  return c;
}

function mask(c: Cidr): Uint8Array {
  const out = c.bytes.slice();
  for (let bit = c.length; bit < 128; bit++) out[bit >> 3] = (out[bit >> 3] ?? 0) & ~(1 << (7 - (bit & 7)));
  return out;
}

/** Whether `address` (16 bytes) lies inside `prefix`. */
export function contains(prefix: Cidr, address: Uint8Array): boolean {
  for (let bit = 0; bit < prefix.length; bit++) {
    const m = 1 << (7 - (bit & 7));
    if (((prefix.bytes[bit >> 3] ?? 0) & m) !== ((address[bit >> 3] ?? 0) & m)) return false;
  }
  return true;
}

/** RFC 2526: the top 128 interface ids of a /64 are reserved subnet anycast addresses. */
function reservedAnycast(bytes: Uint8Array, length: number): boolean {
  if (length !== 64) return false;
  return bytes.subarray(8, 15).every((b, i) => b === (i === 0 ? 0xfd : 0xff)) && (bytes[15] ?? 0) >= 0x80;
}

/**
 * A random address inside `prefix` (`fd00:1:2:3::/64`), canonical text. Never the all-zero
 * host part (the Subnet-Router anycast address) nor, in a /64, the RFC 2526 reserved anycast ids.
 * Throws `StoaError("usage")` for a malformed prefix.
 * @example
 * const addr = randomAddressIn("fd00:1:2:3::/64"); // "fd00:1:2:3:9c1e:4a2:77f0:1b3d"
 */
export function randomAddressIn(prefix: string, random: (n: number) => Uint8Array = (n) => crypto.getRandomValues(new Uint8Array(n))): string {
  const p = parsePrefix(prefix);
  if (p.length === 128) return formatIPv6(p.bytes);
  for (let attempt = 0; attempt < RANDOM_ATTEMPTS; attempt++) {
    const bytes = random(16);
    for (let bit = 0; bit < p.length; bit++) {
      const i = bit >> 3;
      const m = 1 << (7 - (bit & 7));
      bytes[i] = ((bytes[i] ?? 0) & ~m) | ((p.bytes[i] ?? 0) & m);
    }
    if (hostBitsZero({ bytes, length: p.length }) || reservedAnycast(bytes, p.length)) continue;
    return formatIPv6(bytes);
  }
  throw new StoaError("usage", `prefix '${prefix}' has no usable host addresses; use a /64 or similar`);
}
