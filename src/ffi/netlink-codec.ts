/**
 * rtnetlink messages as bytes: builders for the requests stoa sends and a bounds-checked decoder
 * for the kernel's replies. Pure code, no FFI — the socket is in netlink.ts; the layouts are
 * documented once, in src/addr/model.ts.
 *
 * The decoder trusts nothing: every nlmsg_len and rta_len is checked against what is left of
 * the datagram before it is used, counts are capped before anything is stored, and the only
 * error it throws is `StoaError("decode" | "too_large")`. `ReplyCollector` is the state machine
 * of one request: it is fed datagrams as they arrive, skips messages of other sequence numbers
 * (late replies to a request that timed out), and ends on the ACK / NLMSG_ERROR of a plain
 * request or on NLMSG_DONE / NLMSG_ERROR of a dump — never on "the end of one read".
 */
import { StoaError } from "../core/errors.ts";

/** Netlink headers and attributes are in host byte order (only addresses are big-endian). */
const LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** sizeof(struct nlmsghdr), linux/netlink.h. */
const NLMSG_HDRLEN = 16;
/** sizeof(struct ifaddrmsg), linux/if_addr.h. */
const IFADDRMSG_LEN = 8;
/** sizeof(struct rtmsg), linux/rtnetlink.h. */
const RTMSG_LEN = 12;
/** sizeof(struct rtattr), linux/rtnetlink.h. */
const RTA_HDRLEN = 4;
/** sizeof(struct nlmsgerr) without the echoed request's payload: int error + struct nlmsghdr. */
const NLMSGERR_LEN = 4 + NLMSG_HDRLEN;

/** The receive buffer: larger than any datagram the kernel builds for a dump (≤ 32 KiB, af_netlink.c). */
export const MAX_DATAGRAM_BYTES = 64 * 1024;
/** Attributes read from one message; the kernel sends about ten per address or route. */
export const MAX_ATTRS_PER_MESSAGE = 256;
/** Entries kept from one dump (addresses or routes): far above any real host, bounds memory. */
const MAX_DUMP_ENTRIES = 1 << 20;
/** Longest kernel error string kept from an extended ACK. */
const MAX_EXTACK_CHARS = 512;

/** nlmsg_type values: linux/netlink.h (1–4) and linux/rtnetlink.h (RTM_*). */
export const MsgType = {
  NOOP: 1,
  ERROR: 2,
  DONE: 3,
  OVERRUN: 4,
  RTM_NEWADDR: 20,
  RTM_DELADDR: 21,
  RTM_GETADDR: 22,
  RTM_NEWROUTE: 24,
  RTM_DELROUTE: 25,
  RTM_GETROUTE: 26,
} as const;

/** nlmsg_flags, linux/netlink.h. Values above 0xff mean different things for GET, NEW and ACK. */
export const Flag = {
  REQUEST: 0x1,
  MULTI: 0x2,
  ACK: 0x4,
  DUMP_INTR: 0x10,
  DUMP: 0x300, // NLM_F_ROOT | NLM_F_MATCH, on GET requests
  EXCL: 0x200, // on NEW requests
  CREATE: 0x400, // on NEW requests
  CAPPED: 0x100, // on ACKs: the request's payload is not echoed
  ACK_TLVS: 0x200, // on ACKs: extended-ACK attributes follow
} as const;

/** enum nlmsgerr_attrs, linux/netlink.h. */
const NLMSGERR_ATTR_MSG = 1;

/** Address families, linux/socket.h. */
export const AF_INET = 2;
export const AF_INET6 = 10;

/** IFA_* attribute types of an RTM_*ADDR message, linux/if_addr.h. */
export const Ifa = { ADDRESS: 1, LOCAL: 2, LABEL: 3, CACHEINFO: 6, FLAGS: 8 } as const;

/** IFA_F_* address flags, linux/if_addr.h (the low 8 also fit ifaddrmsg.ifa_flags). */
export const IfaFlag = {
  SECONDARY: 0x01,
  NODAD: 0x02,
  OPTIMISTIC: 0x04,
  DADFAILED: 0x08,
  HOMEADDRESS: 0x10,
  DEPRECATED: 0x20,
  TENTATIVE: 0x40,
  PERMANENT: 0x80,
  MANAGETEMPADDR: 0x100,
  NOPREFIXROUTE: 0x200,
  MCAUTOJOIN: 0x400,
  STABLE_PRIVACY: 0x800,
} as const;

/** RTA_* attribute types of an RTM_*ROUTE message, linux/rtnetlink.h. */
export const Rta = { DST: 1, OIF: 4, PRIORITY: 6, TABLE: 15 } as const;

/** rtm_type RTN_LOCAL: "accept locally" — every address the route covers is this host's. */
export const RTN_LOCAL = 2;
/** The `local` routing table (RT_TABLE_LOCAL), where the kernel keeps its own addresses. */
export const RT_TABLE_LOCAL = 255;
/** rt_scope_t, linux/rtnetlink.h. */
export const RT_SCOPE_UNIVERSE = 0;
export const RT_SCOPE_HOST = 254;

interface Attr {
  readonly type: number;
  readonly value: Uint8Array;
}

/**
 * `value` as 4 host-order bytes at `at`. Small arrays are written byte by byte, not through a
 * DataView: a DataView needs the array's ArrayBuffer, and materialising one costs more (~170 ns
 * in Bun) than the whole message.
 */
function putU32(out: Uint8Array, at: number, value: number): void {
  for (let i = 0; i < 4; i++) out[at + (LE ? i : 3 - i)] = (value >>> (8 * i)) & 0xff;
}

export function u32Attr(type: number, value: number): Attr {
  const bytes = new Uint8Array(4);
  putU32(bytes, 0, value);
  return { type, value: bytes };
}

const align4 = (n: number): number => (n + 3) & ~3;

/** Where requests are assembled (grown on demand), so encoding one allocates only its copy. */
let scratch = new Uint8Array(new ArrayBuffer(256));
let scratchView = new DataView(scratch.buffer);

/** One request: nlmsghdr (nlmsg_pid 0: the kernel fills in our port) + fixed body + attributes. */
export function encodeRequest(type: number, flags: number, seq: number, body: Uint8Array, attrs: readonly Attr[] = []): Uint8Array {
  let length = NLMSG_HDRLEN + align4(body.length);
  for (const a of attrs) length += align4(RTA_HDRLEN + a.value.length);
  if (length > scratch.length) {
    scratch = new Uint8Array(new ArrayBuffer(align4(length * 2)));
    scratchView = new DataView(scratch.buffer);
  }
  const out = scratch;
  const view = scratchView;
  out.fill(0, 0, length);
  view.setUint32(0, length, LE);
  view.setUint16(4, type, LE);
  view.setUint16(6, flags, LE);
  view.setUint32(8, seq >>> 0, LE);
  out.set(body, NLMSG_HDRLEN);
  let at = NLMSG_HDRLEN + align4(body.length);
  for (const a of attrs) {
    view.setUint16(at, RTA_HDRLEN + a.value.length, LE);
    view.setUint16(at + 2, a.type, LE);
    out.set(a.value, at + RTA_HDRLEN);
    at += align4(RTA_HDRLEN + a.value.length);
  }
  return out.slice(0, length);
}

/** struct ifaddrmsg. `flags` keeps only its low 8 bits here; IFA_FLAGS carries all 32. */
export function ifaddrmsg(m: { family: number; prefixlen: number; flags: number; scope: number; index: number }): Uint8Array {
  const out = new Uint8Array(IFADDRMSG_LEN);
  out[0] = m.family;
  out[1] = m.prefixlen;
  out[2] = m.flags & 0xff;
  out[3] = m.scope;
  putU32(out, 4, m.index);
  return out;
}

/** struct rtmsg. */
export function rtmsg(m: {
  family: number;
  dstLen: number;
  table: number;
  protocol: number;
  scope: number;
  type: number;
}): Uint8Array {
  const out = new Uint8Array(RTMSG_LEN);
  out[0] = m.family;
  out[1] = m.dstLen;
  out[4] = m.table;
  out[5] = m.protocol;
  out[6] = m.scope;
  out[7] = m.type;
  return out;
}

interface NlMessage {
  readonly type: number;
  readonly flags: number;
  readonly seq: number;
  readonly pid: number;
  /** A view into the datagram: copy it if the datagram's buffer is reused. */
  readonly payload: Uint8Array;
}

function bad(message: string): StoaError {
  return new StoaError("decode", `netlink: ${message}`);
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Where the message after the one at `at` starts, its length checked against what remains. */
function nextMessage(v: DataView, at: number): number {
  const left = v.byteLength - at;
  if (left < NLMSG_HDRLEN) throw bad(`${left} trailing bytes, shorter than a message header`);
  const length = v.getUint32(at, LE);
  if (length < NLMSG_HDRLEN || length > left) throw bad(`message length ${length} with ${left} bytes left`);
  // The last message may omit its padding.
  return Math.min(v.byteLength, at + align4(length));
}

/** The message at `at`, whose length nextMessage has checked. */
function messageAt(datagram: Uint8Array, v: DataView, at: number): NlMessage {
  return {
    type: v.getUint16(at + 4, LE),
    flags: v.getUint16(at + 6, LE),
    seq: v.getUint32(at + 8, LE),
    pid: v.getUint32(at + 12, LE),
    payload: datagram.subarray(at + NLMSG_HDRLEN, at + v.getUint32(at, LE)),
  };
}

/** The messages of one datagram, each length checked against what remains. */
export function splitDatagram(datagram: Uint8Array): NlMessage[] {
  const v = view(datagram);
  const messages: NlMessage[] = [];
  for (let at = 0; at < datagram.length; ) {
    const next = nextMessage(v, at);
    messages.push(messageAt(datagram, v, at));
    at = next;
  }
  return messages;
}

/**
 * The attributes in `bytes` (type → value; a repeated type keeps the first). Fewer than 4
 * trailing bytes are ignored, as the kernel's own nla_ok() does; anything else malformed throws.
 */
export function parseAttrs(bytes: Uint8Array): Map<number, Uint8Array> {
  const v = view(bytes);
  const attrs = new Map<number, Uint8Array>();
  let at = 0;
  let count = 0;
  while (bytes.length - at >= RTA_HDRLEN) {
    if (++count > MAX_ATTRS_PER_MESSAGE) throw new StoaError("too_large", `netlink: more than ${MAX_ATTRS_PER_MESSAGE} attributes in one message`);
    const length = v.getUint16(at, LE);
    // NLA_F_NESTED and NLA_F_NET_BYTEORDER ride in the top bits of the type.
    const type = v.getUint16(at + 2, LE) & 0x3fff;
    if (length < RTA_HDRLEN || length > bytes.length - at) {
      throw bad(`attribute length ${length} with ${bytes.length - at} bytes left`);
    }
    if (!attrs.has(type)) attrs.set(type, bytes.subarray(at + RTA_HDRLEN, at + length));
    at += align4(length);
  }
  return attrs;
}

function u32Of(value: Uint8Array | undefined, what: string): number | undefined {
  if (value === undefined) return undefined;
  if (value.length !== 4) throw bad(`${what} is ${value.length} bytes, expected 4`);
  return view(value).getUint32(0, LE);
}

function addressOf(value: Uint8Array | undefined, family: number, what: string): Uint8Array | undefined {
  if (value === undefined) return undefined;
  const expected = family === AF_INET6 ? 16 : 4;
  if (value.length !== expected) throw bad(`${what} is ${value.length} bytes, expected ${expected}`);
  return value.slice();
}

/** One address from an RTM_NEWADDR reply. */
export interface AddrEntry {
  family: number;
  prefixlen: number;
  /** All IFA_F_* flags (IFA_FLAGS when present, else the 8-bit ifa_flags). */
  flags: number;
  scope: number;
  index: number;
  /** Network byte order, 16 bytes for IPv6. */
  address: Uint8Array;
  label: string | undefined;
}

/** Decodes an ifaddrmsg + attributes; undefined for families other than IPv4/IPv6 or no address. */
export function decodeAddr(payload: Uint8Array): AddrEntry | undefined {
  if (payload.length < IFADDRMSG_LEN) throw bad(`address message of ${payload.length} bytes`);
  const family = payload[0] ?? 0;
  if (family !== AF_INET6 && family !== AF_INET) return undefined;
  const attrs = parseAttrs(payload.subarray(IFADDRMSG_LEN));
  // For IPv6 IFA_ADDRESS is the address (IFA_LOCAL appears only with a peer); for IPv4, IFA_LOCAL.
  const address = addressOf(attrs.get(Ifa.LOCAL), family, "IFA_LOCAL") ?? addressOf(attrs.get(Ifa.ADDRESS), family, "IFA_ADDRESS");
  if (address === undefined) return undefined;
  const label = attrs.get(Ifa.LABEL);
  return {
    family,
    prefixlen: payload[1] ?? 0,
    flags: u32Of(attrs.get(Ifa.FLAGS), "IFA_FLAGS") ?? payload[2] ?? 0,
    scope: payload[3] ?? 0,
    index: view(payload).getUint32(4, LE),
    address,
    label: label === undefined ? undefined : cText(label, 16),
  };
}

/** One route from an RTM_NEWROUTE reply. */
export interface RouteEntry {
  family: number;
  dstLen: number;
  table: number;
  protocol: number;
  scope: number;
  type: number;
  /** Undefined for a default route. */
  dst: Uint8Array | undefined;
  oif: number | undefined;
}

export function decodeRoute(payload: Uint8Array): RouteEntry | undefined {
  if (payload.length < RTMSG_LEN) throw bad(`route message of ${payload.length} bytes`);
  const family = payload[0] ?? 0;
  if (family !== AF_INET6 && family !== AF_INET) return undefined;
  const attrs = parseAttrs(payload.subarray(RTMSG_LEN));
  return {
    family,
    dstLen: payload[1] ?? 0,
    // rtm_table is 8 bits; RTA_TABLE holds the full 32-bit id.
    table: u32Of(attrs.get(Rta.TABLE), "RTA_TABLE") ?? payload[4] ?? 0,
    protocol: payload[5] ?? 0,
    scope: payload[6] ?? 0,
    type: payload[7] ?? 0,
    dst: addressOf(attrs.get(Rta.DST), family, "RTA_DST"),
    oif: u32Of(attrs.get(Rta.OIF), "RTA_OIF"),
  };
}

function cText(bytes: Uint8Array, max: number): string {
  const nul = bytes.indexOf(0);
  const end = Math.min(nul < 0 ? bytes.length : nul, max);
  return new TextDecoder("utf-8", { fatal: false }).decode(bytes.subarray(0, end));
}

/** The outcome carried by an NLMSG_ERROR message: errno 0 is an ACK. */
interface Ack {
  errno: number;
  /** The kernel's own words (extended ACK, NETLINK_EXT_ACK), when it sent some. */
  extack: string | undefined;
}

export function decodeError(msg: NlMessage): Ack {
  const p = msg.payload;
  if (p.length < 4) throw bad(`error message of ${p.length} bytes`);
  const v = view(p);
  const error = v.getInt32(0, LE);
  if (error > 0) throw bad(`positive error ${error}`);
  let extack: string | undefined;
  if (msg.flags & Flag.ACK_TLVS && p.length >= NLMSGERR_LEN) {
    // Without NLM_F_CAPPED the whole request is echoed before the TLVs: skip its nlmsg_len.
    const echoed = msg.flags & Flag.CAPPED ? NLMSG_HDRLEN : v.getUint32(4, LE);
    if (echoed < NLMSG_HDRLEN || 4 + echoed > p.length) throw bad(`echoed request length ${echoed} with ${p.length - 4} bytes left`);
    const text = parseAttrs(p.subarray(4 + align4(echoed))).get(NLMSGERR_ATTR_MSG);
    if (text !== undefined) extack = cText(text, MAX_EXTACK_CHARS) || undefined;
  }
  return { errno: error === 0 ? 0 : -error, extack };
}

/**
 * The replies to one request, fed datagram by datagram. A plain request (sent with NLM_F_ACK)
 * ends with its NLMSG_ERROR; a dump ends with NLMSG_DONE, or NLMSG_ERROR if it failed.
 */
export class ReplyCollector {
  done = false;
  errno = 0;
  extack: string | undefined;
  /** The dump's entries (copied out of the datagram). */
  readonly entries: Uint8Array[] = [];
  /** The kernel's table changed during the dump (NLM_F_DUMP_INTR): the entries may be inconsistent. */
  interrupted = false;

  readonly #seq: number;
  readonly #dump: boolean;
  /** The data message type a dump returns (RTM_NEWADDR, RTM_NEWROUTE). */
  readonly #entryType: number;

  constructor(seq: number, dump: boolean, entryType = 0) {
    this.#seq = seq;
    this.#dump = dump;
    this.#entryType = entryType;
  }

  feed(datagram: Uint8Array): void {
    // Walked in place rather than through splitDatagram: no array and no object per message
    // (this runs once per request). As there, the whole datagram's framing is checked first.
    const v = view(datagram);
    for (let at = 0; at < datagram.length; ) at = nextMessage(v, at);
    for (let at = 0; at < datagram.length && !this.done; at = nextMessage(v, at)) {
      // A reply to an earlier request that timed out: not ours.
      if (v.getUint32(at + 8, LE) !== this.#seq) continue;
      const type = v.getUint16(at + 4, LE);
      if (v.getUint16(at + 6, LE) & Flag.DUMP_INTR) this.interrupted = true;
      switch (type) {
        case MsgType.NOOP:
          break;
        case MsgType.ERROR: {
          const ack = decodeError(messageAt(datagram, v, at));
          this.errno = ack.errno;
          this.extack = ack.extack;
          this.done = true;
          break;
        }
        case MsgType.DONE: {
          if (!this.#dump) throw bad("NLMSG_DONE in reply to a request that is not a dump");
          // The dump's status: 0, or a negative errno when the dump failed part-way.
          const status = v.getUint32(at, LE) >= NLMSG_HDRLEN + 4 ? v.getInt32(at + NLMSG_HDRLEN, LE) : 0;
          this.errno = status < 0 ? -status : 0;
          this.done = true;
          break;
        }
        case MsgType.OVERRUN:
          throw bad("the kernel reported a receive overrun (data lost)");
        default:
          if (!this.#dump || type !== this.#entryType) break;
          if (this.entries.length >= MAX_DUMP_ENTRIES) {
            throw new StoaError("too_large", `netlink: a dump of more than ${MAX_DUMP_ENTRIES} entries`);
          }
          this.entries.push(datagram.slice(at + NLMSG_HDRLEN, at + v.getUint32(at, LE)));
      }
    }
  }
}
