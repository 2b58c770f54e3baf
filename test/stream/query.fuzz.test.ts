/**
 * The subscribe query parser (`?from=`, protocol.ts) against 100,000 random and mutated queries:
 * it never throws, accepts only what the grammar allows, and reads back what `subscribeQuery`
 * writes. Seeded by `STOA_FUZZ_SEED`.
 */
import { describe, expect, test } from "bun:test";
import { type From, MAX_SUBSCRIBE_QUERY_BYTES, parseSubscribeQuery, subscribeQuery } from "../../src/stream/protocol.ts";
import { fuzzSeed, mutate, type Prng, prng } from "../helpers/prng.ts";

const ITERATIONS = 100_000;
/** The longest test here takes about 0.4 s on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const FUZZ_TIMEOUT_MS = 20_000;
const EPOCH = /^[A-Za-z0-9_-]{1,64}$/;

function randomFrom(rng: Prng): From {
  switch (rng.int(4)) {
    case 0:
      return { at: "latest" };
    case 1:
      return { at: "now" };
    case 2:
      return { at: "oldest" };
    default:
      return {
        at: "seq",
        seq: rng.pick([1, 2, 9, 10, 99, 2 ** 32, Number.MAX_SAFE_INTEGER, 1 + rng.int(1_000_000)]),
        epoch: rng.int(2) === 0 ? undefined : rng.pick(["e", "AbC_-9", "x".repeat(64), Buffer.from(rng.bytes(12)).toString("base64url")]),
      };
  }
}

/** Whether an accepted result is allowed by the grammar of the query it came from. */
function consistent(query: string, from: From): boolean {
  const q = query.startsWith("?") ? query.slice(1) : query;
  const pairs = q === "" ? [] : q.split("&").map((p) => [p.split("=")[0], p.slice(p.indexOf("=") + 1)] as const);
  const froms = pairs.filter(([k]) => k === "from");
  const epochs = pairs.filter(([k]) => k === "epoch");
  if (froms.length > 1 || epochs.length > 1) return false;
  if (froms.length === 0) return from.at === "latest" && epochs.length === 0;
  const value = froms[0]?.[1] ?? "";
  if (from.at !== "seq") return value === from.at && epochs.length === 0;
  return String(from.seq) === value && Number.isSafeInteger(from.seq) && from.seq >= 1 && (from.epoch === undefined || EPOCH.test(from.epoch));
}

describe("parseSubscribeQuery", () => {
  test("reads back every query subscribeQuery writes, with or without its '?'", () => {
    const rng = prng(fuzzSeed(0x51_0e_51));
    for (let i = 0; i < 10_000; i++) {
      const from = randomFrom(rng);
      const query = subscribeQuery(from);
      expect(parseSubscribeQuery(query)).toEqual({ ok: true, from });
      expect(parseSubscribeQuery(query.replace(/^\?/, ""))).toEqual({ ok: true, from });
    }
  }, FUZZ_TIMEOUT_MS);

  test("edge cases: the default, unknown parameters ignored, duplicates and bad values refused", () => {
    expect(parseSubscribeQuery("")).toEqual({ ok: true, from: { at: "latest" } });
    expect(parseSubscribeQuery("?")).toEqual({ ok: true, from: { at: "latest" } });
    expect(parseSubscribeQuery("?x=1&from=now&y")).toEqual({ ok: true, from: { at: "now" } });
    for (const bad of ["from=", "from=Now", "from=0", "from=01", "from=-1", "from=1.5", "from=9007199254740992", "from=now&from=now", "from=1&epoch=a&epoch=a", "from=1&epoch=", "from=1&epoch=%41", "epoch=e", "from=oldest&epoch=e", "from=%6eow", "x".repeat(MAX_SUBSCRIBE_QUERY_BYTES + 1)]) {
      const result = parseSubscribeQuery(bad);
      expect(result.ok, bad).toBe(false);
    }
  }, FUZZ_TIMEOUT_MS);

  test(`never throws and accepts only the grammar, over ${ITERATIONS} random and mutated queries`, () => {
    const seed = fuzzSeed(0xf00d_0001);
    const rng = prng(seed);
    const seeds = ["?from=latest", "?from=now", "?from=oldest", "?from=42&epoch=AbC_-9", "from=1", "?a=b&from=7", "?from=now&from=now"];
    for (let i = 0; i < ITERATIONS; i++) {
      let query: string;
      if (rng.int(4) === 0) query = Buffer.from(rng.bytes(rng.int(64))).toString("latin1");
      else query = Buffer.from(mutate(rng, Buffer.from(rng.pick(seeds), "latin1"))).toString("latin1");
      if (rng.int(200) === 0) query = query.repeat(1 + rng.int(200));
      let result: ReturnType<typeof parseSubscribeQuery>;
      try {
        result = parseSubscribeQuery(query);
      } catch (err) {
        throw new Error(`seed ${seed}, iteration ${i}: threw on ${JSON.stringify(query)}: ${String(err)}`);
      }
      if (result.ok) {
        if (query.length > MAX_SUBSCRIBE_QUERY_BYTES + 1 || !consistent(query, result.from)) {
          throw new Error(`seed ${seed}, iteration ${i}: accepted ${JSON.stringify(query)} as ${JSON.stringify(result.from)}`);
        }
      } else {
        expect(typeof result.message).toBe("string");
      }
    }
  }, FUZZ_TIMEOUT_MS);
});
