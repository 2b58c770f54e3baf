/** Kernel-shaped rtnetlink replies for the codec's tests and fuzzer. */
import {
  AF_INET6,
  Flag,
  Ifa,
  MsgType,
  RT_SCOPE_HOST,
  Rta,
  encodeRequest,
  ifaddrmsg,
  rtmsg,
  u32Attr,
} from "../../src/ffi/netlink-codec.ts";

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** An RTM_NEWADDR as a dump sends it. */
export function addrMessage(m: {
  seq: number;
  address: Uint8Array;
  index?: number;
  flags?: number;
  label?: string;
  multi?: boolean;
  extraFlags?: number;
}): Uint8Array {
  const attrs = [{ type: Ifa.ADDRESS, value: m.address }, u32Attr(Ifa.FLAGS, m.flags ?? 0)];
  if (m.label !== undefined) attrs.push({ type: Ifa.LABEL, value: Buffer.from(`${m.label}\0`) });
  attrs.push({ type: Ifa.CACHEINFO, value: new Uint8Array(16) });
  const body = ifaddrmsg({ family: AF_INET6, prefixlen: 128, flags: (m.flags ?? 0) & 0xff, scope: 0, index: m.index ?? 1 });
  return encodeRequest(MsgType.RTM_NEWADDR, (m.multi ? Flag.MULTI : 0) | (m.extraFlags ?? 0), m.seq, body, attrs);
}

/** An RTM_NEWROUTE as a dump sends it. */
export function routeMessage(m: { seq: number; dst: Uint8Array; dstLen: number; oif: number; table: number; protocol: number; type: number }): Uint8Array {
  const body = rtmsg({ family: AF_INET6, dstLen: m.dstLen, table: Math.min(m.table, 252), protocol: m.protocol, scope: RT_SCOPE_HOST, type: m.type });
  const attrs = [u32Attr(Rta.TABLE, m.table), { type: Rta.DST, value: m.dst }, u32Attr(Rta.OIF, m.oif), u32Attr(Rta.PRIORITY, 1024)];
  return encodeRequest(MsgType.RTM_NEWROUTE, Flag.MULTI, m.seq, body, attrs);
}

/** NLMSG_DONE with its status. */
export function doneMessage(seq: number, status = 0): Uint8Array {
  return encodeRequest(MsgType.DONE, Flag.MULTI, seq, Buffer.from(Int32Array.of(status).buffer));
}

/**
 * NLMSG_ERROR: `errno` 0 is an ACK. With `extack`, the kernel's message as NLMSGERR_ATTR_MSG,
 * after the request's header (capped) or the whole request (not capped).
 */
export function errorMessage(m: { seq: number; errno: number; extack?: string; capped?: boolean }): Uint8Array {
  const request = encodeRequest(MsgType.RTM_NEWADDR, Flag.REQUEST | Flag.ACK, m.seq, new Uint8Array(8), [u32Attr(Ifa.FLAGS, 2)]);
  const capped = m.capped ?? true;
  const echoed = capped ? request.subarray(0, 16) : request;
  const tlvs = m.extack === undefined ? new Uint8Array(0) : encodeRequest(0, 0, 0, new Uint8Array(0), [{ type: 1, value: Buffer.from(`${m.extack}\0`) }]).subarray(16);
  const body = concat(Buffer.from(Int32Array.of(-m.errno).buffer), echoed, tlvs);
  const flags = (capped ? Flag.CAPPED : 0) | (m.extack === undefined ? 0 : Flag.ACK_TLVS);
  return encodeRequest(MsgType.ERROR, flags, m.seq, body);
}
