import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import {
  type ControlAnswer,
  type HotlinkMessageInput,
  MessageType,
  controlAnswerCodec,
  controlRequestCodec,
  encodeMessage,
  parseMessage,
  safeParseMessage,
} from "../../src/hotlink/protocol.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const ITERATIONS = 100_000;
const MAX_BYTES = 64 * 1024;
/** Generous for 100,000 inputs on a loaded 2-core machine (a few seconds unloaded). */
const FUZZ_TIMEOUT_MS = 120_000;

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
  }, FUZZ_TIMEOUT_MS);
});

const counters = (rng: Prng) => ({
  relay: { txPackets: rng.int(9), txBytes: rng.next(), rxPackets: 0, rxBytes: 2 ** 40 },
  direct: { txPackets: 1, txBytes: 2, rxPackets: 3, rxBytes: 4, offers: 5, answers: 6, failures: 7, fallbacks: 8 },
  ice: { txPackets: 8, txBytes: 7, rxPackets: 6, rxBytes: 5, offers: 4, answers: 3, failures: 2, fallbacks: 1 },
  turn: { txPackets: rng.int(3), txBytes: 2 ** 33, rxPackets: 0, rxBytes: 1 },
  latency_us: { send_avg: rng.next() / 7, send_max: 12.5, write_avg: 0, write_max: 3 },
});

function randomAnswer(rng: Prng): ControlAnswer {
  const out = rng.pick([null, { sid: "s1", state: rng.pick(["opening", "open", "closed"] as const), seq: rng.int(9), bytes: rng.next(), rung: rng.pick(["tls", "ice", "turn", "relay"] as const), failed: rng.pick([[], [{ rung: "tls" as const, error: "10.0.0.2:4000: closed" }, { rung: "ice" as const, error: "no candidate pair within 10 s" }]]) }]);
  const tunnel = {
    channel: "alice/x",
    listen: "127.0.0.1:4000",
    port: 4000,
    peer: rng.pick([null, "bob"]),
    app: rng.int(2) === 0,
    out,
    in: rng.pick([null, { sid: "s2", delivered: 3, bytes: 4, duplicates: 0, rung: "ice" as const }]),
    held: rng.int(100),
    origin: rng.pick(["flag", "control", "watch"] as const),
  };
  const ipc = { channel: "alice/i", path: "/tmp/i.sock", apps: 2, out, in: [{ sid: "s3", from: "bob", delivered: 1, bytes: 1, duplicates: 1, rung: "relay" as const }], held: 0, origin: "flag" as const };
  switch (rng.int(5)) {
    case 0:
      return { ok: true, type: "tunnel", tunnel };
    case 1:
      return { ok: true, type: "ipc", ipc };
    case 2:
      return { ok: false, code: rng.pick(["exists", "not_found", "a_newer_code"]), message: "m".repeat(rng.int(50)) };
    default:
      return {
        ok: true,
        type: "ls",
        status: {
          user: "alice",
          server: "ws://127.0.0.1:8090/v1/hotlink",
          connected: rng.int(2) === 0,
          tunnels: rng.int(2) === 0 ? [] : [tunnel],
          ipc: rng.int(2) === 0 ? [] : [ipc],
          sessions: { outgoing: rng.int(4), incoming: rng.int(4) },
          counters: counters(rng),
          rungs: rng.pick([[], ["tls" as const], ["ice" as const], ["tls" as const, "ice" as const]]),
          ice_servers: rng.pick([[], ["stun:[2001:db8::1]:3478", "turn:u:***@relay.example:3479"]]),
          link: { tx: 1, txBytes: 2, rx: 3, rxBytes: 4 },
        },
      };
  }
}

describe("control socket message fuzzing", () => {
  test(
    `${ITERATIONS} random and mutated answers (statuses with every counter) and requests: typed errors only, and what decodes re-encodes to itself`,
    () => {
      const seed = fuzzSeed(0xc0a75);
      const rng = prng(seed);
      let i = 0;
      let input: Uint8Array = new Uint8Array(0);
      let accepted = 0;
      try {
        for (; i < ITERATIONS; i++) {
          const answer = rng.int(4) > 0;
          const base = answer
            ? controlAnswerCodec.encode(randomAnswer(rng))
            : controlRequestCodec.encode(rng.pick([{ type: "ls" as const }, { type: "close" as const, channel: "alice/x" }]));
          input = rng.int(5) === 0 ? rng.bytes(rng.int(64)) : rng.int(4) === 0 ? base : mutate(rng, base);
          const result = answer ? controlAnswerCodec.safeDecode(input) : controlRequestCodec.safeDecode(input);
          if (result.ok) {
            accepted++;
            const again = answer ? controlAnswerCodec.decode(controlAnswerCodec.encode(result.value as ControlAnswer)) : result.value;
            expect(again).toEqual(result.value);
          } else {
            expect(result.error).toBeInstanceOf(StoaError);
            expect(["decode", "schema", "too_large"]).toContain(result.error.code);
          }
        }
      } catch (err) {
        console.error(`control protocol fuzz failed: STOA_FUZZ_SEED=${seed}, iteration ${i}, input ${Buffer.from(input).toString("hex")}`);
        throw err;
      }
      expect(accepted).toBeGreaterThan(ITERATIONS / 10);
      expect(accepted).toBeLessThan(ITERATIONS - ITERATIONS / 10);
    },
    FUZZ_TIMEOUT_MS,
  );
});
