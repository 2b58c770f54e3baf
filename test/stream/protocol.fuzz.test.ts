import { describe, expect, test } from "bun:test";
import { encode } from "../../src/core/codec.ts";
import { StoaError } from "../../src/core/errors.ts";
import {
  decodeServiceFrame,
  encodeServiceMessage,
  MAX_SERVICE_FRAME_BYTES,
  type ServiceMessage,
} from "../../src/stream/protocol.ts";
import { valueProblem, type Value } from "../../src/stream/value.ts";
import { fuzzSeed, mutate, type Prng, prng } from "../helpers/prng.ts";

const ITERATIONS = 100_000;
/** The longest test here takes about 1.1 s on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const FUZZ_TIMEOUT_MS = 30_000;
const ts = "2026-03-01T12:00:00.123Z";

function randomValue(rng: Prng, depth: number): Value {
  switch (rng.int(depth > 3 ? 5 : 7)) {
    case 0:
      return rng.pick([null, true, false]);
    case 1:
      return rng.pick([0, 1, -1, 23, 24, 255, 65536, 2 ** 32, 2 ** 53, 0.5, -1e-300]);
    case 2:
      return rng.pick(["", "hello", "ünïcödé", "🚀", "x".repeat(100)]);
    case 3:
      return rng.bytes(rng.int(24));
    case 4:
      return rng.next() - 2 ** 31;
    case 5:
      return Array.from({ length: rng.int(4) }, () => randomValue(rng, depth + 1));
    default: {
      const out: { [key: string]: Value } = {};
      for (let i = rng.int(4); i > 0; i--) out[rng.pick(["a", "t", "seq", "value", "ключ"])] = randomValue(rng, depth + 1);
      return out;
    }
  }
}

function randomMessage(rng: Prng): ServiceMessage {
  const seq = rng.pick([1, 2, 255, 65_536, 2 ** 40, Number.MAX_SAFE_INTEGER]);
  switch (rng.int(3)) {
    case 0:
      return { t: "hello", v: 1, epoch: rng.pick(["e", "deL4cNZh9vZhIdo0"]), next: seq };
    case 1:
      return { t: "gap", next: seq, dropped: rng.pick([1, 7, 100_000]) };
    default:
      return { t: "v", seq, ts, value: randomValue(rng, 0) };
  }
}

/** CBOR that is well-formed but not a service frame, to reach the schema checks. */
function nearMiss(rng: Prng): Uint8Array {
  return encode(
    rng.pick<unknown>([
      { t: "v", seq: 0, ts, value: 1 },
      { t: "v", seq: 1.5, ts, value: 1 },
      { t: "v", seq: 1, ts: "yesterday", value: 1 },
      { t: "v", seq: 1, ts, value: undefined },
      { t: "v", seq: 1, ts, value: 2n ** 64n },
      { t: "hello", v: 2, epoch: "e", next: 1 },
      { t: "gap", next: 3, dropped: 0 },
      { t: "x" },
      [1, 2, 3],
      "v",
    ]),
  );
}

describe("service frame decoder", () => {
  test("round-trips every message type", () => {
    const rng = prng(1);
    for (let i = 0; i < 1_000; i++) {
      const msg = randomMessage(rng);
      expect(decodeServiceFrame(encodeServiceMessage(msg))).toEqual(msg);
    }
  }, FUZZ_TIMEOUT_MS);

  test("refuses an oversized frame before decoding it", () => {
    const err = (() => {
      try {
        decodeServiceFrame(new Uint8Array(MAX_SERVICE_FRAME_BYTES + 1));
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("too_large");
  }, FUZZ_TIMEOUT_MS);

  test(`throws only StoaError on ${ITERATIONS.toLocaleString("en")} random and mutated inputs`, () => {
    const seed = fuzzSeed(0x5eed_0003);
    const rng = prng(seed);
    const seeds = Array.from({ length: 64 }, () => encodeServiceMessage(randomMessage(rng)));
    let accepted = 0;
    for (let i = 0; i < ITERATIONS; i++) {
      const kind = rng.int(10);
      const input =
        kind === 0 ? rng.bytes(rng.int(64)) : kind === 1 ? mutate(rng, nearMiss(rng)) : mutate(rng, rng.pick(seeds));
      try {
        const msg = decodeServiceFrame(rng.int(2) === 0 ? input : input.slice().buffer);
        accepted++;
        // What gets through is a well-typed message.
        expect(["hello", "v", "gap"]).toContain(msg.t);
        if (msg.t === "v") {
          expect(Number.isSafeInteger(msg.seq) && msg.seq >= 1).toBe(true);
          expect(valueProblem(msg.value)).toBeNull();
        }
      } catch (err) {
        if (!(err instanceof StoaError)) {
          throw new Error(`seed ${seed}, iteration ${i}: ${String(err)} escaped for ${Buffer.from(input).toString("hex")}`);
        }
        expect(["too_large", "decode", "schema"]).toContain(err.code);
      }
    }
    // Mutations leave many frames valid; a decoder that refused everything would be broken too.
    expect(accepted).toBeGreaterThan(ITERATIONS / 100);
  }, FUZZ_TIMEOUT_MS);
});
