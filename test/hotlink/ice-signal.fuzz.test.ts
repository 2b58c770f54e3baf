/**
 * The ICE Signals' JSON (ice.ts parseCandidate, parseDescription) against 50,000 random and
 * mutated tokens (seeded: STOA_FUZZ_SEED replays one): a candidate or description within its
 * limits, or null — never a throw, never a value outside the limits.
 */
import { expect, test } from "bun:test";
import { parseCandidate, parseDescription } from "../../src/hotlink/ice.ts";
import { fuzzSeed, mutate, prng } from "../helpers/prng.ts";

test("50,000 random and mutated ICE signal tokens: a bounded value or null", () => {
  const rand = prng(fuzzSeed(0x1ce));
  const enc = new TextEncoder();
  const dec = new TextDecoder();
  const seeds = [
    JSON.stringify({ candidate: "candidate:1 1 udp 2122260223 10.0.0.2 50000 typ host generation 0", sdpMid: "0", sdpMLineIndex: 0 }),
    JSON.stringify({ candidate: "candidate:2 1 udp 1686052607 203.0.113.7 40000 typ srflx raddr 10.0.0.2 rport 50000", sdpMid: null, sdpMLineIndex: null }),
    JSON.stringify({ type: "offer", sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n" }),
    JSON.stringify({ type: "answer", sdp: "v=0\r\n" }),
  ].map((s) => enc.encode(s));
  let candidates = 0;
  let descriptions = 0;
  for (let i = 0; i < 50_000; i++) {
    const tok = dec.decode(i % 5 === 0 ? rand.bytes(rand.int(80)) : mutate(rand, rand.pick(seeds)));
    const c = parseCandidate(tok);
    if (c !== null) {
      candidates++;
      expect(typeof c.candidate).toBe("string");
      expect(c.candidate.length).toBeLessThanOrEqual(1024);
      if (c.sdpMid !== null) expect(c.sdpMid.length).toBeLessThanOrEqual(64);
      if (c.sdpMLineIndex !== null) expect(Number.isInteger(c.sdpMLineIndex) && c.sdpMLineIndex >= 0 && c.sdpMLineIndex <= 64).toBe(true);
    }
    for (const type of ["offer", "answer"] as const) {
      const d = parseDescription(tok, type);
      if (d !== null) {
        descriptions++;
        expect(typeof d).toBe("string");
      }
    }
  }
  expect(parseCandidate(undefined)).toBeNull();
  expect(parseDescription(JSON.stringify({ type: "answer", sdp: "x" }), "offer")).toBeNull();
  expect(candidates).toBeGreaterThan(1_000);
  expect(descriptions).toBeGreaterThan(1_000);
});
