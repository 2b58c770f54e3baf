import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import { type HotlinkMessageInput, MessageType, encodeMessage, parseMessage, safeParseMessage } from "../../src/hotlink/protocol.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const ITERATIONS = 100_000;
const MAX_BYTES = 64 * 1024;

function randomMessage(rng: Prng): HotlinkMessageInput {
  const sid = rng.pick(["s1", "6f1c2e0a-9b7d-4e3f-8a21-0c5d4b3a2f10", "x".repeat(64)]);
  const path = rng.pick(["alice/x", "alice@example.org/mpc/run1/0_to_1", "ü/🚀"]);
  switch (rng.int(11)) {
    case 0:
      return { t: MessageType.Hello, v: 1, agt: "stoa" };
    case 1:
      return { t: MessageType.Welcome, v: 1, usr: "alice", mmb: 1 << 20, mpb: 1 << 19 };
    case 2:
      return { t: rng.pick([MessageType.Ping, MessageType.Pong]), n: rng.next() };
    case 3:
      return { t: MessageType.Error, code: "schema", msg: "bad", sid };
    case 4:
      return { t: MessageType.Open, sid, pth: path, to: "bob" };
    case 5:
      return { t: MessageType.Accept, sid, frm: "bob" };
    case 6:
      return { t: MessageType.Reject, sid, rsn: "no receiver" };
    case 7:
      return { t: MessageType.Close, sid, rsn: "peer gone" };
    case 8:
      return { t: MessageType.Signal, sid, knd: "direct_offer", adr: ["[::1]:4000", "10.0.0.1:5"], tok: "t".repeat(22), fpr: "0f".repeat(32) };
    case 9:
      return { t: MessageType.Signal, sid, knd: rng.pick(["direct_answer", "sdp_offer", "ice_candidate"] as const), err: "e" };
    default:
      return {
        t: MessageType.Data,
        sid,
        seq: rng.pick([1, 24, 256, 65_536, 2 ** 32, Number.MAX_SAFE_INTEGER]),
        pth: path,
        etg: "v1",
        pay: rng.bytes(rng.pick([0, 1, rng.int(40), rng.int(300)])),
      };
  }
}

describe("hotlink message fuzzing", () => {
  test(`${ITERATIONS} random and mutated messages never throw from safeParseMessage`, () => {
    const seed = fuzzSeed(0x40714c);
    const rng = prng(seed);
    let i = 0;
    let input: Uint8Array = new Uint8Array(0);
    let accepted = 0;
    try {
      for (; i < ITERATIONS; i++) {
        input = rng.int(5) === 0 ? rng.bytes(rng.int(64)) : mutate(rng, encodeMessage(randomMessage(rng)));
        const result = safeParseMessage(input, { maxBytes: MAX_BYTES });
        if (result.ok) {
          accepted++;
          // Whatever we accept, we can send on unchanged.
          expect(parseMessage(encodeMessage(result.value), { maxBytes: MAX_BYTES })).toEqual(result.value);
        } else {
          expect(result.error).toBeInstanceOf(StoaError);
          expect(["decode", "schema", "too_large"]).toContain(result.error.code);
        }
      }
    } catch (err) {
      console.error(`hotlink protocol fuzz failed: STOA_FUZZ_SEED=${seed}, iteration ${i}, input ${Buffer.from(input).toString("hex")}`);
      throw err;
    }
    expect(accepted).toBeGreaterThan(1000);
    expect(accepted).toBeLessThan(ITERATIONS - 1000);
  });
});
