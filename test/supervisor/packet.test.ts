import { describe, expect, test } from "bun:test";
import { ipv4ToNumber, matchKey, parseUdpFrame, type UdpView } from "../../src/supervisor/packet-wire.ts";
import { frame } from "../fixtures/udp-frames.ts";

const view = (): UdpView => ({ dst: 0, dstPort: 0, srcPort: 0, payloadOffset: 0, payloadLength: 0 });

describe("parseUdpFrame", () => {
  test("a datagram: its destination, ports and payload; with a VLAN tag, IPv4 options, Ethernet padding", () => {
    for (const [o, offset] of [[{}, 42], [{ vlan: true }, 46], [{ ihl: 7 }, 50], [{ pad: 18, payload: 2 }, 42]] as const) {
      const out = view();
      const f = frame(o);
      expect(parseUdpFrame(f, f.length, out)).toBeNull();
      expect(out).toEqual({ dst: ipv4ToNumber("239.1.2.3"), dstPort: 5000, srcPort: 40000, payloadOffset: offset, payloadLength: "payload" in o ? o.payload! : 10 });
    }
    for (const size of [46, 64, 1472]) {
      const out = view();
      const f = frame({ payload: size });
      expect(parseUdpFrame(f, f.length, out)).toBeNull();
      expect(out.payloadLength).toBe(size);
      expect(f[out.payloadOffset + size - 1]).toBe((size - 1) & 0xff);
    }
  });

  test("every kind of bad frame is a named drop", () => {
    const drop = (f: Uint8Array, length = f.length) => parseUdpFrame(f, length, view());
    expect(drop(frame(), 13)).toBe("short");
    expect(drop(frame(), 30)).toBe("short");
    const arp = frame();
    arp[12] = 0x08;
    arp[13] = 0x06;
    expect(drop(arp)).toBe("not_ipv4");
    const v6 = frame();
    v6[14] = 0x65;
    expect(drop(v6)).toBe("bad_header");
    expect(drop(frame({ ihl: 4 }))).toBe("bad_header");
    expect(drop(frame({ flags: 0x2000 }))).toBe("fragment");
    expect(drop(frame({ flags: 0x0001 }))).toBe("fragment");
    expect(drop(frame({ proto: 6 }))).toBe("not_udp");
    expect(drop(frame({ totalDelta: 1 }))).toBe("bad_length");
    expect(drop(frame({ udpDelta: 1 }))).toBe("bad_length");
    expect(drop(frame({ udpDelta: -20 }))).toBe("bad_length");
    // The received length rules, not the buffer's: a reused big buffer with a short packet in it.
    const big = new Uint8Array(2048);
    big.set(frame({ payload: 100 }));
    expect(drop(big, 60)).toBe("bad_length");
  });

  test("match keys: one integer per (address, port), distinct", () => {
    expect(matchKey(ipv4ToNumber("239.1.1.1"), 5000)).not.toBe(matchKey(ipv4ToNumber("239.1.1.1"), 5001));
    expect(matchKey(ipv4ToNumber("255.255.255.255"), 65535)).toBeLessThanOrEqual(Number.MAX_SAFE_INTEGER);
    expect(ipv4ToNumber("239.1.2.3")).toBe(0xef010203);
  });
});
