/**
 * The values of OpenFlow fields, read as users write them and as `ovs-ofctl` prints them and
 * written in one canonical form (flow-syntax.ts's header says which): the fields stoa knows
 * (names, aliases, kinds, widths), their values (numbers, masks, MACs, IPv4/IPv6 addresses and
 * prefixes, flag sets, ports), and subfields (`NXM_OF_ETH_DST[]`, `reg0[0..15]`).
 */
import { StoaError } from "../core/errors.ts";
import { formatIPv6, parseIPv6 } from "../core/ipv6.ts";

/**
 * A flow stoa cannot read; the message says which and what is wrong. A user's flow spec is a
 * `config` error, a line of ovs-ofctl's output a `decode` one.
 */
export class FlowSyntaxError extends StoaError {
  constructor(message: string, code: "config" | "decode" = "config") {
    super(code, message);
  }
}

/** A number is at most this many characters (a 128-bit value in hex is 34). */
const MAX_NUMBER_CHARS = 40;

export type Kind = "port" | "mac" | "ipv4" | "ipv6" | "dec" | "hex" | "tcp_flags" | "ct_state" | "word";
export interface Field {
  readonly name: string; // the canonical (printed) name
  readonly aliases: readonly string[];
  readonly kind: Kind;
  readonly bits: number;
}

const field = (name: string, kind: Kind, bits: number, ...aliases: string[]): Field => ({ name, aliases, kind, bits });
const REGISTERS = Array.from({ length: 16 }, (_, i) => field(`reg${i}`, "hex", 32));

/** Match fields in canonical order (dl_type and nw_proto are printed as the shorthand instead). */
const FIELDS: readonly Field[] = [
  field("in_port", "port", 32),
  field("dl_vlan", "dec", 12),
  field("dl_vlan_pcp", "dec", 3),
  field("vlan_tci", "hex", 16),
  field("dl_src", "mac", 48, "eth_src"),
  field("dl_dst", "mac", 48, "eth_dst"),
  field("dl_type", "hex", 16, "eth_type"),
  field("nw_proto", "dec", 8, "ip_proto"),
  field("nw_src", "ipv4", 32, "ip_src"),
  field("nw_dst", "ipv4", 32, "ip_dst"),
  field("arp_spa", "ipv4", 32),
  field("arp_tpa", "ipv4", 32),
  field("arp_sha", "mac", 48),
  field("arp_tha", "mac", 48),
  field("arp_op", "dec", 16),
  field("ipv6_src", "ipv6", 128),
  field("ipv6_dst", "ipv6", 128),
  field("ipv6_label", "hex", 20),
  field("nw_tos", "dec", 8),
  field("nw_ecn", "dec", 2, "ip_ecn"),
  field("nw_ttl", "dec", 8),
  field("nw_frag", "word", 0, "ip_frag"),
  field("tp_src", "dec", 16, "tcp_src", "udp_src", "sctp_src"),
  field("tp_dst", "dec", 16, "tcp_dst", "udp_dst", "sctp_dst"),
  field("icmp_type", "dec", 8, "icmpv4_type", "icmpv6_type"),
  field("icmp_code", "dec", 8, "icmpv4_code", "icmpv6_code"),
  field("nd_target", "ipv6", 128),
  field("nd_sll", "mac", 48),
  field("nd_tll", "mac", 48),
  field("tcp_flags", "tcp_flags", 12),
  field("ct_state", "ct_state", 32),
  field("ct_zone", "dec", 16),
  field("ct_mark", "hex", 32),
  field("ct_label", "hex", 128),
  field("metadata", "hex", 64),
  field("tun_id", "hex", 64, "tunnel_id"),
  field("tun_src", "ipv4", 32),
  field("tun_dst", "ipv4", 32),
  field("pkt_mark", "hex", 32),
  field("recirc_id", "hex", 32),
  field("conj_id", "dec", 32),
  field("mpls_label", "dec", 20),
  field("mpls_tc", "dec", 3),
  field("mpls_bos", "dec", 1),
  ...REGISTERS,
];
export const FIELD_BY_NAME = new Map<string, Field>();
for (const f of FIELDS) for (const n of [f.name, ...f.aliases]) FIELD_BY_NAME.set(n, f);
export const FIELD_ORDER = new Map(FIELDS.map((f, i) => [f.name, i]));

/** Subfields (`NAME[a..b]`) as OVS prints them: by NXM/OXM name, with the field's width. */
const SUBFIELDS: readonly { nxm: string; bits: number; aliases: readonly string[] }[] = [
  { nxm: "NXM_OF_IN_PORT", bits: 16, aliases: ["in_port"] },
  { nxm: "NXM_OF_ETH_SRC", bits: 48, aliases: ["eth_src", "dl_src"] },
  { nxm: "NXM_OF_ETH_DST", bits: 48, aliases: ["eth_dst", "dl_dst"] },
  { nxm: "NXM_OF_ETH_TYPE", bits: 16, aliases: ["eth_type", "dl_type"] },
  { nxm: "NXM_OF_VLAN_TCI", bits: 16, aliases: ["vlan_tci"] },
  { nxm: "NXM_OF_IP_TOS", bits: 8, aliases: ["nw_tos"] },
  { nxm: "NXM_OF_IP_PROTO", bits: 8, aliases: ["nw_proto", "ip_proto"] },
  { nxm: "NXM_OF_IP_SRC", bits: 32, aliases: ["ip_src", "nw_src"] },
  { nxm: "NXM_OF_IP_DST", bits: 32, aliases: ["ip_dst", "nw_dst"] },
  { nxm: "NXM_OF_TCP_SRC", bits: 16, aliases: ["tcp_src", "tp_src"] },
  { nxm: "NXM_OF_TCP_DST", bits: 16, aliases: ["tcp_dst", "tp_dst"] },
  { nxm: "NXM_OF_UDP_SRC", bits: 16, aliases: ["udp_src"] },
  { nxm: "NXM_OF_UDP_DST", bits: 16, aliases: ["udp_dst"] },
  { nxm: "NXM_OF_ARP_OP", bits: 16, aliases: ["arp_op"] },
  { nxm: "NXM_OF_ARP_SPA", bits: 32, aliases: ["arp_spa"] },
  { nxm: "NXM_OF_ARP_TPA", bits: 32, aliases: ["arp_tpa"] },
  { nxm: "NXM_NX_ARP_SHA", bits: 48, aliases: ["arp_sha"] },
  { nxm: "NXM_NX_ARP_THA", bits: 48, aliases: ["arp_tha"] },
  { nxm: "NXM_NX_IPV6_SRC", bits: 128, aliases: ["ipv6_src"] },
  { nxm: "NXM_NX_IPV6_DST", bits: 128, aliases: ["ipv6_dst"] },
  { nxm: "NXM_NX_IP_TTL", bits: 8, aliases: ["nw_ttl"] },
  { nxm: "NXM_NX_TUN_ID", bits: 64, aliases: ["tun_id", "tunnel_id"] },
  { nxm: "OXM_OF_METADATA", bits: 64, aliases: ["metadata"] },
  { nxm: "NXM_NX_PKT_MARK", bits: 32, aliases: ["pkt_mark"] },
  { nxm: "NXM_NX_CT_MARK", bits: 32, aliases: ["ct_mark"] },
  ...REGISTERS.map((r, i) => ({ nxm: `NXM_NX_REG${i}`, bits: 32, aliases: [r.name] })),
];
export const SUBFIELD_BY_NAME = new Map<string, { nxm: string; bits: number }>();
for (const s of SUBFIELDS) for (const n of [s.nxm.toLowerCase(), ...s.aliases]) SUBFIELD_BY_NAME.set(n, s);


/** OpenFlow 1.0 reserved port numbers (OpenFlow 1.1+ spells them 0xffffff00 higher). */
const RESERVED_PORTS = new Map<number, string>([
  [0xfff8, "IN_PORT"], [0xfff9, "TABLE"], [0xfffa, "NORMAL"], [0xfffb, "FLOOD"],
  [0xfffc, "ALL"], [0xfffd, "CONTROLLER"], [0xfffe, "LOCAL"], [0xffff, "NONE"],
]);
const RESERVED_BY_NAME = new Map([...RESERVED_PORTS].map(([n, name]) => [name.toLowerCase(), name]));
RESERVED_BY_NAME.set("any", "NONE");
const OF11_RESERVED_BASE = 0xffffff00;
const MAX_PORT = 0xffffffff;

const TCP_FLAG_BITS = ["fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr", "ns"];
const CT_STATE_BITS = ["new", "est", "rel", "rpl", "inv", "trk", "snat", "dnat"];

export type Ports = ReadonlyMap<string, number> | undefined;

/** A decimal or 0x-hex number no larger than `max`. */
export function parseNumber(text: string, what: string, max: bigint): bigint {
  const t = text.trim();
  if (t.length > MAX_NUMBER_CHARS || !/^(0x[0-9a-f]+|[0-9]+)$/i.test(t)) throw new FlowSyntaxError(`${what}: "${t}" is not a number`);
  const n = BigInt(t);
  if (n > max) throw new FlowSyntaxError(`${what}: ${t} is larger than ${max}`);
  return n;
}

export const hex = (n: bigint): string => `0x${n.toString(16)}`;
const ONES = Array.from({ length: 129 }, (_, bits) => (1n << BigInt(bits)) - 1n);
export const ones = (bits: number): bigint => ONES[bits] ?? (1n << BigInt(bits)) - 1n;
/** Values already in canonical form (what OVS prints, what stoa writes): returned as they are, unparsed. */
const CANONICAL_IPV4 = /^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$/;
const CANONICAL_DEC = /^(?:0|[1-9][0-9]{0,8})$/;

export function fieldNamed(name: string): Field {
  const f = FIELD_BY_NAME.get(name);
  if (f === undefined) throw new Error(`no field ${name} in FIELDS`);
  return f;
}

/** A field's value in canonical form, or null when its mask makes it match everything. */
export function fieldValue(f: Field, text: string, ports: Ports): string | null {
  const slash = text.indexOf("/");
  if (slash < 0 && f.kind === "ipv4" && CANONICAL_IPV4.test(text)) return text;
  if (slash < 0 && f.kind === "dec" && CANONICAL_DEC.test(text) && Number(text) <= Number(ones(f.bits))) return text;
  const value = slash < 0 ? text : text.slice(0, slash);
  const mask = slash < 0 ? undefined : text.slice(slash + 1);
  switch (f.kind) {
    case "port":
      if (mask !== undefined) throw new FlowSyntaxError(`${f.name} takes no mask`);
      return portName(value, ports, f.name);
    case "mac":
      return masked(parseMac(value, f.name), mask === undefined ? undefined : parseMac(mask, f.name), 48, formatMac);
    case "ipv4":
      return masked(parseIpv4(value, f.name), mask === undefined ? undefined : ipv4Mask(mask, f.name), 32, (n, m) =>
        m === undefined ? formatIpv4(n) : `${formatIpv4(n)}/${prefixOf(m, 32) ?? formatIpv4(m)}`,
      );
    case "ipv6":
      return masked(parseIpv6Bits(value, f.name), mask === undefined ? undefined : ipv6Mask(mask, f.name), 128, (n, m) =>
        m === undefined ? formatIpv6Bits(n) : `${formatIpv6Bits(n)}/${prefixOf(m, 128) ?? formatIpv6Bits(m)}`,
      );
    case "dec":
    case "hex": {
      const max = ones(f.bits);
      const m = mask === undefined ? undefined : parseNumber(mask, f.name, max);
      return masked(parseNumber(value, f.name, max), m, f.bits, (n, mm) =>
        mm === undefined ? (f.kind === "dec" ? n.toString() : hex(n)) : `${hex(n)}/${hex(mm)}`,
      );
    }
    case "tcp_flags":
      return flagSet(text, TCP_FLAG_BITS, f);
    case "ct_state":
      return flagSet(text, CT_STATE_BITS, f);
    case "word":
      if (!/^[a-z_]+$/i.test(text)) throw new FlowSyntaxError(`${f.name}: cannot read "${text}"`);
      return text.toLowerCase();
  }
}

function masked(value: bigint, mask: bigint | undefined, bits: number, format: (v: bigint, m?: bigint) => string): string | null {
  if (mask === undefined || mask === ones(bits)) return format(value);
  if (mask === 0n) return null;
  return format(value & mask, mask);
}

function flagSet(text: string, names: readonly string[], f: Field): string | null {
  let value = 0n;
  let mask = 0n;
  if (/^[+-]/.test(text)) {
    const parts = text.match(/[+-][a-z]+/gi);
    if (parts === null || parts.join("") !== text) throw new FlowSyntaxError(`${f.name}: cannot read "${text}"`);
    for (const part of parts) {
      const bit = names.indexOf(part.slice(1).toLowerCase());
      if (bit < 0) throw new FlowSyntaxError(`${f.name}: no flag "${part.slice(1)}" (known: ${names.join(", ")})`);
      const b = 1n << BigInt(bit);
      mask |= b;
      if (part[0] === "+") value |= b;
    }
  } else {
    const [v = "", m, extra] = text.split("/");
    if (extra !== undefined) throw new FlowSyntaxError(`${f.name}: cannot read "${text}"`);
    mask = m === undefined ? ones(f.bits) : parseNumber(m, f.name, ones(f.bits));
    value = parseNumber(v, f.name, ones(f.bits)) & mask;
  }
  if (mask === 0n) return null;
  if (mask >> BigInt(names.length) !== 0n) return `${hex(value)}/${hex(mask)}`;
  let out = "";
  for (let bit = 0; bit < names.length; bit++) {
    const b = 1n << BigInt(bit);
    if ((mask & b) !== 0n) out += `${(value & b) !== 0n ? "+" : "-"}${names[bit]}`;
  }
  return out;
}

/** A port as OVS prints it with --no-names: its number, or a reserved port's name. */
export function portName(text: string, ports: Ports, what: string): string {
  const t = text.trim();
  const reserved = RESERVED_BY_NAME.get(t.toLowerCase());
  if (reserved !== undefined) return reserved;
  if (/^(0x[0-9a-f]+|[0-9]+)$/i.test(t)) {
    let n = Number(parseNumber(t, what, BigInt(MAX_PORT)));
    if (n >= OF11_RESERVED_BASE + 0xf8) n = n - OF11_RESERVED_BASE + 0xff00;
    return RESERVED_PORTS.get(n) ?? String(n);
  }
  const n = ports?.get(t);
  if (n === undefined) throw new FlowSyntaxError(`no port ${t} on the bridge`);
  return RESERVED_PORTS.get(n) ?? String(n);
}

export function parseMac(text: string, what: string): bigint {
  if (!/^[0-9a-f]{1,2}(:[0-9a-f]{1,2}){5}$/i.test(text)) throw new FlowSyntaxError(`${what}: "${text}" is not a MAC address`);
  return text.split(":").reduce((acc, b) => (acc << 8n) | BigInt(`0x${b}`), 0n);
}

export function formatMac(n: bigint, mask?: bigint): string {
  const one = (v: bigint): string =>
    Array.from({ length: 6 }, (_, i) => ((v >> BigInt(40 - 8 * i)) & 0xffn).toString(16).padStart(2, "0")).join(":");
  return mask === undefined ? one(n) : `${one(n)}/${one(mask)}`;
}

export function parseIpv4(text: string, what: string): bigint {
  const parts = text.split(".");
  if (parts.length !== 4 || !parts.every((p) => /^[0-9]{1,3}$/.test(p) && Number(p) <= 255)) {
    throw new FlowSyntaxError(`${what}: "${text}" is not an IPv4 address`);
  }
  return parts.reduce((acc, p) => (acc << 8n) | BigInt(p), 0n);
}

function ipv4Mask(text: string, what: string): bigint {
  if (/^[0-9]{1,2}$/.test(text)) return prefixMask(Number(text), 32, what);
  return parseIpv4(text, what);
}

function ipv6Mask(text: string, what: string): bigint {
  if (/^[0-9]{1,3}$/.test(text)) return prefixMask(Number(text), 128, what);
  return parseIpv6Bits(text, what);
}

function prefixMask(prefix: number, bits: number, what: string): bigint {
  if (prefix > bits) throw new FlowSyntaxError(`${what}: /${prefix} is longer than ${bits} bits`);
  return ones(bits) ^ ones(bits - prefix);
}

/** The prefix length of a contiguous mask, or undefined for another mask. */
function prefixOf(mask: bigint, bits: number): number | undefined {
  for (let p = 0; p <= bits; p++) if ((ones(bits) ^ ones(bits - p)) === mask) return p;
  return undefined;
}

export function formatIpv4(n: bigint): string {
  return [24n, 16n, 8n, 0n].map((s) => ((n >> s) & 0xffn).toString()).join(".");
}

function parseIpv6Bits(text: string, what: string): bigint {
  const bytes = parseIPv6(text);
  if (bytes === undefined) {
    // A bad IPv4 tail (`::ffff:10.0.0.300`) of what could otherwise be an address (at most one
    // `::`, 45 address characters) is named as such; anything else, the whole address.
    const last = text.slice(text.lastIndexOf(":") + 1);
    if (last.includes(".") && text.split("::").length <= 2 && /^[0-9a-f:.]{1,45}$/i.test(text)) parseIpv4(last, what);
    throw new FlowSyntaxError(`${what}: "${text}" is not an IPv6 address`);
  }
  return bytes.reduce((acc, b) => (acc << 8n) | BigInt(b), 0n);
}

/** RFC 5952, IPv4-mapped addresses as `::ffff:a.b.c.d` (as ovs-ofctl prints them). */
function formatIpv6Bits(n: bigint): string {
  const bytes = Uint8Array.from({ length: 16 }, (_, i) => Number((n >> BigInt(120 - 8 * i)) & 0xffn));
  return formatIPv6(bytes, { ipv4Mapped: true });
}

/** A subfield (`NXM_OF_ETH_DST[]`, `eth_dst[0..15]`, `reg0[3]`, `in_port`) as OVS prints it. */
export function subfield(text: string): string {
  const m = /^([a-z_][a-z0-9_]*)(?:\[(?:([0-9]{1,3})(?:\.\.([0-9]{1,3}))?)?\])?$/i.exec(text.trim());
  if (m === null) throw new FlowSyntaxError(`"${text}" is not a field or subfield`);
  const [, name = "", startText, endText] = m;
  const known = SUBFIELD_BY_NAME.get(name.toLowerCase());
  const canonical = known?.nxm ?? (/^(nxm|oxm)_/i.test(name) ? name.toUpperCase() : name.toLowerCase());
  if (startText === undefined) return `${canonical}[]`;
  const start = Number(startText);
  const end = endText === undefined ? start : Number(endText);
  if (end < start) throw new FlowSyntaxError(`${text}: the range ends before it starts`);
  if (known !== undefined && end >= known.bits) throw new FlowSyntaxError(`${text}: ${name} has ${known.bits} bits`);
  if (known !== undefined && start === 0 && end === known.bits - 1) return `${canonical}[]`;
  return start === end ? `${canonical}[${start}]` : `${canonical}[${start}..${end}]`;
}

export const looksLikeSubfield = (text: string): boolean =>
  text.includes("[") || (/^[a-z_][a-z0-9_]*$/i.test(text) && SUBFIELD_BY_NAME.has(text.toLowerCase()));
