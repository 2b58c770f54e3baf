import { describe, expect, test } from "bun:test";
import { encode } from "../../src/core/codec.ts";
import { StoaError } from "../../src/core/errors.ts";
import { encodeFrame, FrameDecoder } from "../../src/core/frame.ts";
import { isValidPubId } from "../../src/stream/names.ts";
import {
  type ControlRequestInput,
  controlRequestCodec,
  controlResponseCodec,
  MAX_CONTROL_REQUEST_BYTES,
  parseTarget,
} from "../../src/gateway/protocol.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const ITERATIONS = 100_000;
/** The longest test here takes about 2.2 s on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const FUZZ_TIMEOUT_MS = 30_000;

function randomRequest(rng: Prng): unknown {
  const id = rng.pick(["p1", "abc.def", "..", "a/b", "", "x".repeat(70), "%2e"]);
  const kind = rng.pick(["service", "string", "ping", "other"]);
  const target = rng.pick(["unix:/tmp/x.sock", "tcp:[::1]:4100", "tcp:127.0.0.1:0", "ws://h/x", "unix:rel", "tcp:HOST:80"]);
  switch (rng.int(8)) {
    case 0:
      return { type: "register", pub_id: id, kind, target };
    case 1:
      return rng.int(2) === 0 ? { type: "deregister", pub_id: id } : { type: "deregister", pub_id: id, kind };
    case 2:
      return { type: "list" };
    case 3:
      return { type: "health", extra: rng.int(100) };
    case 4:
      return { type: "info" };
    case 5:
      return { type: "handover", pid: rng.pick([1, -1, 1.5, 2 ** 40]), version: "0.1.0" };
    case 6:
      return { type: rng.pick(["nope", 7, null]) };
    default:
      return [1, "register", { pub_id: id }];
  }
}

function randomResponse(rng: Prng): unknown {
  const health = { state: rng.pick(["up", "down", "unknown", "sideways"]), error: rng.pick([null, "ECONNREFUSED"]), since: null };
  switch (rng.int(5)) {
    case 0:
      return { type: "list", entries: [{ pub_id: "p1", kind: "ping", target: "unix:/a", source: "convention", health }], truncated: false };
    case 1:
      return { type: "info", ports: { service: 1, string: 2, ping: rng.pick([3, 70000]) }, listen: ["::"], pid: 1, version: "x", tls: false, workers: 1 };
    case 2:
      return { type: "error", error: { code: "closed", message: "m" } };
    case 3:
      return { type: "register", entry: { pub_id: "p", kind: "ping", target: rng.pick(["tcp:[::1]:1", "ws://x/"]) } };
    default:
      return { type: "health", status: "serving", pid: 1, uptime_ms: 5, connections_open: 0, targets: { up: 1, down: 0 } };
  }
}

describe("control message fuzzing", () => {
  test(`${ITERATIONS} random and mutated requests and responses: a typed value or a StoaError`, () => {
    const seed = fuzzSeed(0xc0de);
    const rng = prng(seed);
    const outcomes = { ok: 0, failed: 0 };
    let i = 0;
    try {
      for (; i < ITERATIONS; i++) {
        const request = i % 2 === 0;
        const base = encode(request ? randomRequest(rng) : randomResponse(rng));
        const input = rng.int(10) < 7 ? mutate(rng, base) : rng.int(2) === 0 ? base : rng.bytes(rng.int(64));
        const codec = request ? controlRequestCodec : controlResponseCodec;
        const result = codec.safeDecode(input); // never throws
        if (!result.ok) {
          outcomes.failed++;
          expect(result.error).toBeInstanceOf(StoaError);
          expect(["decode", "schema", "too_large"]).toContain(result.error.code);
          continue;
        }
        outcomes.ok++;
        const value = result.value as Record<string, unknown>;
        // Whatever decodes obeys the rules the gateway relies on.
        if (typeof value.pub_id === "string") expect(isValidPubId(value.pub_id)).toBe(true);
        if (value.type === "register" && typeof value.target === "string") {
          expect(() => parseTarget(value.target as string)).not.toThrow();
        }
        // And re-encodes to something that decodes to the same value.
        const again = request
          ? controlRequestCodec.decode(controlRequestCodec.encode(value as ControlRequestInput))
          : controlResponseCodec.decode(encode(value));
        expect(again as unknown).toEqual(value);
      }
    } catch (err) {
      throw new Error(`seed ${seed} iteration ${i}: ${String(err)}`);
    }
    expect(outcomes.ok).toBeGreaterThan(ITERATIONS / 20);
    expect(outcomes.failed).toBeGreaterThan(ITERATIONS / 20);
  }, FUZZ_TIMEOUT_MS);

  test("a stream of framed requests with corrupted headers yields frames or a too_large StoaError", () => {
    const rng = prng(fuzzSeed(0xf4a));
    for (let i = 0; i < 10_000; i++) {
      const frames = Array.from({ length: 1 + rng.int(4) }, () => encodeFrame(encode(randomRequest(rng))));
      const stream = mutate(rng, Buffer.concat(frames));
      const decoder = new FrameDecoder({ maxBytes: MAX_CONTROL_REQUEST_BYTES });
      try {
        for (const frame of decoder.push(stream)) {
          const r = controlRequestCodec.safeDecode(frame);
          if (!r.ok) expect(r.error).toBeInstanceOf(StoaError);
        }
      } catch (err) {
        expect(err).toBeInstanceOf(StoaError);
        expect((err as StoaError).code).toBe("too_large");
      }
    }
  }, FUZZ_TIMEOUT_MS);
});
