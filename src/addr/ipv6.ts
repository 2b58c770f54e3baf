/**
 * IPv6 address arithmetic for stoa addr: text ↔ 16 network-order bytes (RFC 4291 input, RFC 5952
 * canonical output), `ADDR/LEN` and prefix parsing with clear usage errors, and random addresses
 * inside a prefix. No zone ids (`%eth0`): stoa's addresses are never link-local.
 */
import { StoaError } from "../core/errors.ts";

/** Longest text accepted for an address: 8 groups of 4 + 7 colons, or the IPv4-embedded form. */
const MAX_ADDRESS_CHARS = 45;
/** Attempts to draw a usable random address before giving up (only tiny prefixes ever need >1). */
const RANDOM_ATTEMPTS = 64;

/** 16 bytes, or undefined if `text` is not an IPv6 address. */
export function parseIPv6(text: string): Uint8Array | undefined {
  if (text.length < 2 || text.length > MAX_ADDRESS_CHARS) return undefined;
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const groups = (part: string): number[] | undefined => {
    if (part === "") return [];
    const out: number[] = [];
    const fields = part.split(":");
    for (const [i, field] of fields.entries()) {
      if (i === fields.length - 1 && field.includes(".")) {
        const v4 = parseIPv4(field);
        if (v4 === undefined) return undefined;
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(field)) return undefined;
        out.push(Number.parseInt(field, 16));
      }
    }
    return out;
  };
  const head = groups(halves[0] ?? "");
  const tail = halves.length === 2 ? groups(halves[1] ?? "") : [];
  if (head === undefined || tail === undefined) return undefined;
  // An IPv4 tail is only allowed at the very end.
  if (halves.length === 2 && (halves[0] ?? "").includes(".")) return undefined;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return undefined;
  const all = [...head, ...new Array<number>(halves.length === 2 ? missing : 0).fill(0), ...tail];
  const out = new Uint8Array(16);
  all.forEach((g, i) => {
    out[2 * i] = g >> 8;
    out[2 * i + 1] = g & 0xff;
  });
  return out;
}

function parseIPv4(text: string): [number, number, number, number] | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  const out = parts.map((p) => (/^(0|[1-9][0-9]{0,2})$/.test(p) ? Number(p) : 256));
  if (out.some((n) => n > 255)) return undefined;
  return [out[0] ?? 0, out[1] ?? 0, out[2] ?? 0, out[3] ?? 0];
}

/** RFC 5952 text: lower case, no leading zeros, the longest run (≥ 2) of zero groups as `::`. */
export function formatIPv6(bytes: Uint8Array): string {
  if (bytes.length !== 16) throw new StoaError("internal", `an IPv6 address is 16 bytes, got ${bytes.length}`);
  const groups = Array.from({ length: 8 }, (_, i) => ((bytes[2 * i] ?? 0) << 8) | (bytes[2 * i + 1] ?? 0));
  let bestAt = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [bestAt, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (gs: number[]) => gs.map((g) => g.toString(16)).join(":");
  if (bestAt < 0) return hex(groups);
  return `${hex(groups.slice(0, bestAt))}::${hex(groups.slice(bestAt + bestLen))}`;
}

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
