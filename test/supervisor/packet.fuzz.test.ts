import { expect, test } from "bun:test";
import { parseUdpFrame, type UdpView } from "../../src/supervisor/packet-wire.ts";
import { frame } from "../fixtures/udp-frames.ts";
import { fuzzSeed, mutate, prng } from "../helpers/prng.ts";

test("200,000 mutated and random frames: parseUdpFrame never throws and never claims bytes past what arrived", () => {
  const rng = prng(fuzzSeed(21));
  const seeds = [frame(), frame({ vlan: true }), frame({ ihl: 6, payload: 64 }), frame({ payload: 1472 })];
  const out: UdpView = { dst: 0, dstPort: 0, srcPort: 0, payloadOffset: 0, payloadLength: 0 };
  for (let i = 0; i < 200_000; i++) {
    const input = i % 5 === 0 ? rng.bytes(rng.int(80)) : mutate(rng, seeds[i % seeds.length]!);
    const length = i % 7 === 0 ? rng.int(input.length + 1) : input.length;
    if (parseUdpFrame(input, length, out) === null) {
      expect(out.payloadOffset + out.payloadLength).toBeLessThanOrEqual(Math.min(length, input.length));
      expect(out.payloadLength).toBeGreaterThanOrEqual(0);
    }
  }
}, 60_000);
