/**
 * The data plane's parser: one frame as an AF_PACKET socket gives it (Ethernet header first) →
 * the UDP datagram inside, or why not. Every length is checked against the bytes that arrived
 * before it is used, so a short, lying or hostile frame is a counted drop, never a read past
 * the buffer; nothing is allocated per packet.
 *
 *   Ethernet   dst(6) src(6) type(2)            one 802.1Q tag (type 0x8100, 4 bytes) is skipped
 *   IPv4       version 4, IHL ≥ 5 (× 4 bytes, within the frame), total length ≥ IHL × 4 and
 *              ≤ the bytes left (Ethernet padding after it is ignored), no fragment (MF set or
 *              offset ≠ 0: dropped — the relay forwards whole datagrams only), protocol 17
 *   UDP        length ≥ 8 and ≤ what the IPv4 total length leaves; the payload is [8, length)
 *
 * The checksum is not verified (the kernel's receive path already did for a local packet, and
 * a relay forwards what it got); the match key is (destination address, destination port).
 */

/** Why a frame is not relayed (the `filtered` counter's reasons). */
export type Drop = "short" | "not_ipv4" | "bad_header" | "bad_length" | "fragment" | "not_udp";

export interface UdpView {
  /** Destination IPv4 address as an unsigned 32-bit number (network order read as big-endian). */
  dst: number;
  dstPort: number;
  srcPort: number;
  /** Where the payload starts in the frame, and its length. */
  payloadOffset: number;
  payloadLength: number;
}

const ETHERNET_HEADER = 14;
const VLAN_TAG = 4;
const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_VLAN = 0x8100;
const IPV4_MIN_HEADER = 20;
const UDP_HEADER = 8;
const PROTOCOL_UDP = 17;

/**
 * Reads the UDP datagram in `frame[0, length)` into `out` and answers null, or answers why the
 * frame is dropped (then `out` is unspecified). `out` is the caller's, reused for every packet.
 * @example
 *   const view: UdpView = { dst: 0, dstPort: 0, srcPort: 0, payloadOffset: 0, payloadLength: 0 };
 *   if (parseUdpFrame(buffer, received, view) === null) lookup(matchKey(view.dst, view.dstPort));
 */
export function parseUdpFrame(frame: Uint8Array, length: number, out: UdpView): Drop | null {
  const end = Math.min(length, frame.length);
  if (end < ETHERNET_HEADER) return "short";
  let at = 12;
  let type = (frame[at]! << 8) | frame[at + 1]!;
  at += 2;
  if (type === ETHERTYPE_VLAN) {
    if (end < at + VLAN_TAG) return "short";
    type = (frame[at + 2]! << 8) | frame[at + 3]!;
    at += VLAN_TAG;
  }
  if (type !== ETHERTYPE_IPV4) return "not_ipv4";
  if (end < at + IPV4_MIN_HEADER) return "short";
  const versionIhl = frame[at]!;
  if (versionIhl >> 4 !== 4) return "bad_header";
  const headerBytes = (versionIhl & 0x0f) * 4;
  if (headerBytes < IPV4_MIN_HEADER) return "bad_header";
  if (end < at + headerBytes) return "short";
  const totalLength = (frame[at + 2]! << 8) | frame[at + 3]!;
  if (totalLength < headerBytes || at + totalLength > end) return "bad_length";
  const flagsFragment = (frame[at + 6]! << 8) | frame[at + 7]!;
  // MF (0x2000) or a fragment offset: a piece of a datagram, not a datagram.
  if ((flagsFragment & 0x3fff) !== 0) return "fragment";
  if (frame[at + 9] !== PROTOCOL_UDP) return "not_udp";
  const dst = ((frame[at + 16]! << 24) | (frame[at + 17]! << 16) | (frame[at + 18]! << 8) | frame[at + 19]!) >>> 0;
  const udp = at + headerBytes;
  const udpRoom = totalLength - headerBytes;
  if (udpRoom < UDP_HEADER) return "bad_length";
  const udpLength = (frame[udp + 4]! << 8) | frame[udp + 5]!;
  if (udpLength < UDP_HEADER || udpLength > udpRoom) return "bad_length";
  out.dst = dst;
  out.srcPort = (frame[udp]! << 8) | frame[udp + 1]!;
  out.dstPort = (frame[udp + 2]! << 8) | frame[udp + 3]!;
  out.payloadOffset = udp + UDP_HEADER;
  out.payloadLength = udpLength - UDP_HEADER;
  return null;
}

/** The rule table's key of (address, port): one safe integer, no string per packet. */
export function matchKey(dst: number, port: number): number {
  return dst * 65536 + port;
}

/** "239.1.1.1" → its unsigned 32-bit number (the address is already validated by protocol.ts). */
export function ipv4ToNumber(address: string): number {
  return address.split(".").reduce((n, part) => n * 256 + Number(part), 0);
}
