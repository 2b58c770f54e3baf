import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import {
  AF_INET,
  AF_INET6,
  Flag,
  Ifa,
  IfaFlag,
  MAX_ATTRS_PER_MESSAGE,
  MsgType,
  RTN_LOCAL,
  RT_SCOPE_HOST,
  RT_TABLE_LOCAL,
  ReplyCollector,
  Rta,
  decodeAddr,
  decodeError,
  decodeRoute,
  encodeRequest,
  ifaddrmsg,
  parseAttrs,
  rtmsg,
  splitDatagram,
  u32Attr,
} from "../../src/ffi/netlink-codec.ts";
import { addrMessage, concat, doneMessage, errorMessage, routeMessage } from "./netlink-messages.ts";

const ADDR = Uint8Array.from(Buffer.from("fd000001000200030000000000000010", "hex"));
const le32 = (n: number) => Buffer.from(Uint32Array.of(n).buffer);

function decodeFailure(fn: () => unknown): StoaError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    return err as StoaError;
  }
  throw new Error("expected a StoaError");
}

describe("building requests", () => {
  test("RTM_NEWADDR of a /128 with nodad: header, ifaddrmsg and three attributes, 4-byte aligned", () => {
    const body = ifaddrmsg({ family: AF_INET6, prefixlen: 128, flags: IfaFlag.NODAD, scope: 0, index: 7 });
    const msg = encodeRequest(MsgType.RTM_NEWADDR, Flag.REQUEST | Flag.ACK | Flag.CREATE | Flag.EXCL, 42, body, [
      { type: Ifa.LOCAL, value: ADDR },
      { type: Ifa.ADDRESS, value: ADDR },
      u32Attr(Ifa.FLAGS, IfaFlag.NODAD),
    ]);
    const v = new DataView(msg.buffer);
    expect(msg.length).toBe(16 + 8 + 20 + 20 + 8);
    expect(v.getUint32(0, true)).toBe(msg.length);
    expect(v.getUint16(4, true)).toBe(20);
    expect(v.getUint16(6, true)).toBe(0x605);
    expect(v.getUint32(8, true)).toBe(42);
    expect(v.getUint32(12, true)).toBe(0);
    expect([...msg.subarray(16, 24)]).toEqual([10, 128, 2, 0, 7, 0, 0, 0]);
    expect([v.getUint16(24, true), v.getUint16(26, true)]).toEqual([20, Ifa.LOCAL]);
    expect(Buffer.from(msg.subarray(28, 44)).toString("hex")).toBe("fd000001000200030000000000000010");
    expect([v.getUint16(44, true), v.getUint16(46, true)]).toEqual([20, Ifa.ADDRESS]);
    expect([v.getUint16(64, true), v.getUint16(66, true), v.getUint32(68, true)]).toEqual([8, Ifa.FLAGS, 2]);
  });

  test("an attribute whose value is not a multiple of 4 is padded, its rta_len is not", () => {
    const msg = encodeRequest(1, 0, 1, new Uint8Array(0), [{ type: 3, value: Uint8Array.of(1, 2, 3, 4, 5) }, u32Attr(8, 9)]);
    expect(msg.length).toBe(16 + 12 + 8);
    const v = new DataView(msg.buffer);
    expect(v.getUint16(16, true)).toBe(9);
    expect(v.getUint16(28, true)).toBe(8);
    expect(parseAttrs(msg.subarray(16)).get(8)).toEqual(Uint8Array.of(9, 0, 0, 0));
  });

  test("each request is its own copy, however long: the shared scratch buffer never leaks between calls", () => {
    const first = encodeRequest(MsgType.RTM_DELADDR, Flag.REQUEST, 1, new Uint8Array(8), [{ type: Ifa.LOCAL, value: ADDR }]);
    const copy = Uint8Array.from(first);
    const long = encodeRequest(MsgType.RTM_NEWADDR, 0, 2, new Uint8Array(8), [{ type: Ifa.LABEL, value: new Uint8Array(300).fill(0xff) }]);
    const short = encodeRequest(1, 0, 3, new Uint8Array(0), [u32Attr(8, 9)]);
    expect(first).toEqual(copy);
    expect(long.length).toBe(16 + 8 + 304);
    expect(new DataView(long.buffer).getUint32(0, true)).toBe(long.length);
    // Zeroed where nothing was written: nlmsg_pid and the padding after an odd-length value.
    expect([...short.subarray(12, 16)]).toEqual([0, 0, 0, 0]);
    expect([...encodeRequest(1, 0, 4, new Uint8Array(0), [{ type: 3, value: Uint8Array.of(7) }]).subarray(21)]).toEqual([0, 0, 0]);
  });

  test("rtmsg of a local route: table local, scope host, type local", () => {
    expect([...rtmsg({ family: AF_INET6, dstLen: 64, table: RT_TABLE_LOCAL, protocol: 83, scope: RT_SCOPE_HOST, type: RTN_LOCAL })]).toEqual([
      10, 64, 0, 0, 255, 83, 254, 2, 0, 0, 0, 0,
    ]);
  });
});

describe("splitting a datagram into messages", () => {
  test("reads several messages, the last one without its padding", () => {
    const a = addrMessage({ seq: 5, address: ADDR, label: "eth0x" });
    const b = doneMessage(5);
    const unpadded = errorMessage({ seq: 6, errno: 0 }).subarray(0, 36);
    const messages = splitDatagram(concat(a, b, unpadded));
    expect(messages.map((m) => [m.type, m.seq])).toEqual([
      [MsgType.RTM_NEWADDR, 5],
      [MsgType.DONE, 5],
      [MsgType.ERROR, 6],
    ]);
  });

  test("refuses a length shorter than a header, longer than what is left, or a short tail", () => {
    const msg = doneMessage(1);
    const short = msg.slice();
    new DataView(short.buffer).setUint32(0, 15, true);
    expect(decodeFailure(() => splitDatagram(short)).message).toContain("message length 15");
    const long = msg.slice();
    new DataView(long.buffer).setUint32(0, 21, true);
    expect(decodeFailure(() => splitDatagram(long)).message).toContain("message length 21 with 20 bytes left");
    expect(decodeFailure(() => splitDatagram(concat(msg, Uint8Array.of(1, 2, 3)))).message).toContain("3 trailing bytes");
    expect(splitDatagram(new Uint8Array(0))).toEqual([]);
  });
});

describe("attributes", () => {
  test("a repeated type keeps the first; flag bits in the type are masked", () => {
    const attrs = concat(Uint8Array.of(8, 0, 1, 0x80), le32(7), Uint8Array.of(8, 0, 1, 0), le32(9));
    expect(parseAttrs(attrs).get(1)).toEqual(new Uint8Array(le32(7)));
  });

  test("rta_len below 4 or past the end is an error; fewer than 4 trailing bytes are ignored", () => {
    expect(decodeFailure(() => parseAttrs(Uint8Array.of(3, 0, 1, 0))).code).toBe("decode");
    expect(decodeFailure(() => parseAttrs(Uint8Array.of(9, 0, 1, 0, 1, 2, 3, 4))).message).toContain("attribute length 9 with 8 bytes left");
    expect(parseAttrs(Uint8Array.of(5, 0, 1, 0, 7, 0, 0, 0, 1, 2)).get(1)).toEqual(Uint8Array.of(7));
  });

  test(`more than ${MAX_ATTRS_PER_MESSAGE} attributes is too_large`, () => {
    const many = new Uint8Array(4 * (MAX_ATTRS_PER_MESSAGE + 1));
    for (let i = 0; i < MAX_ATTRS_PER_MESSAGE + 1; i++) many[4 * i] = 4;
    expect(decodeFailure(() => parseAttrs(many)).code).toBe("too_large");
  });
});

describe("decoding addresses, routes and errors", () => {
  test("an IPv6 address: IFA_ADDRESS, all 32 flag bits from IFA_FLAGS, label", () => {
    const [msg] = splitDatagram(addrMessage({ seq: 1, address: ADDR, index: 3, flags: IfaFlag.NODAD | IfaFlag.NOPREFIXROUTE, label: "eth0" }));
    const entry = decodeAddr(msg?.payload ?? new Uint8Array(0));
    expect(entry).toEqual({ family: AF_INET6, prefixlen: 128, flags: 0x202, scope: 0, index: 3, address: ADDR, label: "eth0" });
  });

  test("IFA_LOCAL wins over IFA_ADDRESS (a peer address); other families are skipped; a wrong size is an error", () => {
    const peer = Uint8Array.from(ADDR).fill(0xee, 8);
    const body = concat(ifaddrmsg({ family: AF_INET6, prefixlen: 64, flags: 0, scope: 0, index: 1 }));
    const both = encodeRequest(MsgType.RTM_NEWADDR, 0, 1, body, [{ type: Ifa.ADDRESS, value: peer }, { type: Ifa.LOCAL, value: ADDR }]);
    expect(decodeAddr(both.subarray(16))?.address).toEqual(ADDR);
    const link = encodeRequest(MsgType.RTM_NEWADDR, 0, 1, Uint8Array.of(17, 0, 0, 0, 1, 0, 0, 0), []);
    expect(decodeAddr(link.subarray(16))).toBeUndefined();
    const v4 = encodeRequest(MsgType.RTM_NEWADDR, 0, 1, ifaddrmsg({ family: AF_INET, prefixlen: 8, flags: 0, scope: 0, index: 1 }), [
      { type: Ifa.LOCAL, value: Uint8Array.of(127, 0, 0, 1) },
    ]);
    expect(decodeAddr(v4.subarray(16))?.address).toEqual(Uint8Array.of(127, 0, 0, 1));
    const bad = encodeRequest(MsgType.RTM_NEWADDR, 0, 1, body, [{ type: Ifa.ADDRESS, value: ADDR.subarray(0, 15) }]);
    expect(decodeFailure(() => decodeAddr(bad.subarray(16))).message).toContain("IFA_ADDRESS is 15 bytes, expected 16");
    expect(decodeFailure(() => decodeAddr(Uint8Array.of(10, 128))).message).toContain("address message of 2 bytes");
  });

  test("a local route: RTA_TABLE overrides rtm_table, RTA_DST and RTA_OIF", () => {
    const [msg] = splitDatagram(routeMessage({ seq: 1, dst: ADDR, dstLen: 64, oif: 1, table: 1000, protocol: 83, type: RTN_LOCAL }));
    expect(decodeRoute(msg?.payload ?? new Uint8Array(0))).toEqual({
      family: AF_INET6,
      dstLen: 64,
      table: 1000,
      protocol: 83,
      scope: RT_SCOPE_HOST,
      type: RTN_LOCAL,
      dst: ADDR,
      oif: 1,
    });
  });

  test("NLMSG_ERROR: 0 is an ACK; a negative errno with the kernel's message, capped or with the request echoed", () => {
    const [ack] = splitDatagram(errorMessage({ seq: 1, errno: 0 }));
    expect(decodeError(ack ?? { type: 0, flags: 0, seq: 0, pid: 0, payload: new Uint8Array(0) })).toEqual({ errno: 0, extack: undefined });
    for (const capped of [true, false]) {
      const [err] = splitDatagram(errorMessage({ seq: 1, errno: 17, extack: "Address already assigned", capped }));
      expect(err && decodeError(err)).toEqual({ errno: 17, extack: "Address already assigned" });
    }
    const broken = errorMessage({ seq: 1, errno: 22, extack: "x", capped: false });
    new DataView(broken.buffer).setUint32(20, 0xffff, true); // the echoed request's nlmsg_len
    const [msg] = splitDatagram(broken);
    expect(decodeFailure(() => msg && decodeError(msg)).message).toContain("echoed request length 65535");
  });
});

describe("collecting the replies to one request", () => {
  test("a plain request ends with its ACK; replies to other sequence numbers are skipped", () => {
    const reply = new ReplyCollector(9, false);
    reply.feed(concat(errorMessage({ seq: 8, errno: 17 }), addrMessage({ seq: 9, address: ADDR })));
    expect(reply.done).toBe(false);
    reply.feed(errorMessage({ seq: 9, errno: 0 }));
    expect([reply.done, reply.errno]).toEqual([true, 0]);
  });

  test("a dump spans datagrams until NLMSG_DONE, and its entries are copies", () => {
    const reply = new ReplyCollector(3, true, MsgType.RTM_NEWADDR);
    const first = concat(addrMessage({ seq: 3, address: ADDR, multi: true }), addrMessage({ seq: 3, address: ADDR, index: 2, multi: true }));
    reply.feed(first);
    first.fill(0);
    reply.feed(routeMessage({ seq: 3, dst: ADDR, dstLen: 64, oif: 1, table: 255, protocol: 2, type: 2 }));
    expect(reply.done).toBe(false);
    reply.feed(concat(addrMessage({ seq: 3, address: ADDR, index: 3, multi: true }), doneMessage(3), addrMessage({ seq: 3, address: ADDR, index: 4 })));
    expect(reply.done).toBe(true);
    expect(reply.errno).toBe(0);
    expect(reply.entries.map((e) => decodeAddr(e)?.index)).toEqual([1, 2, 3]);
  });

  test("a dump that failed reports the errno; one marked NLM_F_DUMP_INTR is flagged", () => {
    const failed = new ReplyCollector(1, true, MsgType.RTM_NEWADDR);
    failed.feed(doneMessage(1, -16));
    expect([failed.done, failed.errno]).toEqual([true, 16]);
    const refused = new ReplyCollector(1, true, MsgType.RTM_NEWADDR);
    refused.feed(errorMessage({ seq: 1, errno: 1 }));
    expect([refused.done, refused.errno]).toEqual([true, 1]);
    const intr = new ReplyCollector(1, true, MsgType.RTM_NEWADDR);
    intr.feed(concat(addrMessage({ seq: 1, address: ADDR, multi: true, extraFlags: Flag.DUMP_INTR }), doneMessage(1)));
    expect(intr.interrupted).toBe(true);
  });

  test("the whole datagram's framing is checked, also past the ACK", () => {
    const reply = new ReplyCollector(5, false);
    const err = decodeFailure(() => reply.feed(concat(errorMessage({ seq: 5, errno: 0 }), Uint8Array.of(1, 2, 3))));
    expect(err.message).toContain("3 trailing bytes");
    expect(reply.done).toBe(false);
  });

  test("an overrun, or NLMSG_DONE for a plain request, is a decode error", () => {
    const overrun = encodeRequest(MsgType.OVERRUN, 0, 1, new Uint8Array(0));
    expect(decodeFailure(() => new ReplyCollector(1, true).feed(overrun)).message).toContain("overrun");
    expect(decodeFailure(() => new ReplyCollector(1, false).feed(doneMessage(1))).message).toContain("not a dump");
  });
});
