/**
 * IPv6 addresses as text and as 16 network-order bytes: RFC 4291 input (an embedded IPv4 tail
 * allowed), RFC 5952 canonical output. The one conversion for every subsystem (stoa addr's
 * arithmetic in addr/ipv6.ts, STUN's addresses in hotlink/stun-wire.ts, OpenFlow match values in
 * flows/flow-values.ts, tcp:[…] endpoints in core/endpoint.ts). No zone ids (`%eth0`).
 */
import { StoaError } from "./errors.ts";

/** Longest text accepted for an address: 8 groups of 4 + 7 colons, or the IPv4-embedded form. */
const MAX_ADDRESS_CHARS = 45;
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

/** The first 12 bytes of an IPv4-mapped address (::ffff:0:0/96, RFC 4291 2.5.5.2). */
const IPV4_MAPPED_PREFIX = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/**
 * RFC 5952 text: lower case, no leading zeros, the longest run (≥ 2) of zero groups as `::`.
 * With `ipv4Mapped`, an IPv4-mapped address ends in its IPv4 address (`::ffff:192.0.2.1`,
 * RFC 5952 section 5), as inet_ntop and so ovs-ofctl print it. Off by default, matching the
 * WHATWG URL serializer that every URL (and so every endpoint) goes through.
 */
export function formatIPv6(bytes: Uint8Array, { ipv4Mapped = false }: { ipv4Mapped?: boolean } = {}): string {
  if (bytes.length !== 16) throw new StoaError("internal", `an IPv6 address is 16 bytes, got ${bytes.length}`);
  if (ipv4Mapped && IPV4_MAPPED_PREFIX.every((b, i) => bytes[i] === b)) return `::ffff:${bytes.subarray(12).join(".")}`;
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

