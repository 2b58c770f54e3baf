import { describe, expect, test } from "bun:test";
import { z } from "zod";
import { encode, safeDecodeMessage } from "../../src/core/codec.ts";
import { StoaError } from "../../src/core/errors.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const ITERATIONS = 100_000;
/** The longest test here takes about 1.6 s on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const FUZZ_TIMEOUT_MS = 30_000;
const MAX_BYTES = 4096;

const KEYS = ["a", "type", "seq", "", "__proto_", "constructor", "toString", "ключ", "🚀", "x".repeat(30)];
const STRINGS = ["", "hello", "ünïcödé", "🚀🚀", "\u0000", "x".repeat(300)];
const NUMBERS = [0, 1, -1, 23, 24, 255, 256, 65535, 65536, 2 ** 32, -(2 ** 32) - 1, 2 ** 53, 0.5, -1e-300, Infinity];
const BIGINTS = [0n, 1n, 2n ** 63n, 2n ** 64n - 1n, 2n ** 64n, -(2n ** 70n)];

/** A random value of the codec's data model, small enough to mutate thousands of times. */
function randomValue(rng: Prng, depth: number): unknown {
  switch (rng.int(depth > 3 ? 6 : 8)) {
    case 0:
      return rng.pick([null, undefined, true, false]);
    case 1:
      return rng.int(2) === 0 ? rng.pick(NUMBERS) : rng.next() - 2 ** 31;
    case 2:
      return rng.pick(BIGINTS);
    case 3:
      return rng.pick(STRINGS);
    case 4:
      return rng.bytes(rng.int(40));
    case 5:
      return rng.int(1000) / 7;
    case 6:
      return Array.from({ length: rng.int(5) }, () => randomValue(rng, depth + 1));
    default: {
      const object: Record<string, unknown> = {};
      if (rng.int(8) === 0) {
        // wide maps: past the decoder's threshold for hashing keys instead of comparing bytes
        for (let i = rng.int(40); i > 0; i--) object[`k${rng.int(60)}`] = rng.int(100);
        return object;
      }
      for (let i = rng.int(5); i > 0; i--) object[rng.pick(KEYS)] = randomValue(rng, depth + 1);
      return object;
    }
  }
}

/** Fails unless `value` is made only of the data model's types with their own prototypes. */
function assertPlain(value: unknown, depth = 0): void {
  expect(depth).toBeLessThanOrEqual(64);
  if (value === null || ["undefined", "boolean", "number", "bigint", "string"].includes(typeof value)) return;
  if (value instanceof Uint8Array) {
    expect(Object.getPrototypeOf(value)).toBe(Uint8Array.prototype);
    return;
  }
  if (Array.isArray(value)) {
    expect(Object.getPrototypeOf(value)).toBe(Array.prototype);
    for (const item of value) assertPlain(item, depth + 1);
    return;
  }
  expect(Object.getPrototypeOf(value)).toBe(Object.prototype);
  expect(Object.hasOwn(value as object, "__proto__")).toBe(false);
  for (const item of Object.values(value as object)) assertPlain(item, depth + 1);
}

/** Deep equality where NaN equals NaN and -0 equals 0 (CBOR may shorten either). */
function same(a: unknown, b: unknown): boolean {
  if (typeof a === "number" && typeof b === "number") return a === b || (Number.isNaN(a) && Number.isNaN(b));
  if (a instanceof Uint8Array && b instanceof Uint8Array) return Buffer.from(a).equals(Buffer.from(b));
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => same(x, b[i]));
  if (a !== null && b !== null && typeof a === "object" && typeof b === "object") {
    const ka = Object.keys(a);
    const kb = Object.keys(b);
    return ka.length === kb.length && ka.every((k) => k in b && same(Reflect.get(a, k), Reflect.get(b, k)));
  }
  return a === b;
}

const Message = z.object({ type: z.string(), seq: z.number().int().optional(), a: z.unknown() });

describe("codec fuzzing", () => {
  test(`${ITERATIONS} random and mutated messages raise only StoaError, and what decodes is plain data`, () => {
    const seed = fuzzSeed(0xc0dec);
    const rng = prng(seed);
    const valid: Uint8Array[] = Array.from({ length: 200 }, () => encode(randomValue(rng, 0)));
    const outcomes = { ok: 0, too_large: 0, decode: 0, schema: 0 };
    let i = 0;
    let input: Uint8Array = new Uint8Array(0);
    try {
      for (; i < ITERATIONS; i++) {
        const roll = rng.int(10);
        input = roll < 8 ? mutate(rng, rng.pick(valid)) : roll < 9 ? rng.bytes(rng.int(64)) : rng.bytes(MAX_BYTES + 1);
        const result = safeDecodeMessage(input, rng.int(4) === 0 ? Message : z.unknown(), { maxBytes: MAX_BYTES });
        if (!result.ok) {
          expect(result.error).toBeInstanceOf(StoaError);
          outcomes[result.error.code as keyof typeof outcomes]++;
          continue;
        }
        outcomes.ok++;
        assertPlain(result.value);
        // Whatever we accept, we can send on unchanged.
        const again = safeDecodeMessage(encode(result.value), z.unknown());
        expect(again.ok && same(again.value, result.value)).toBe(true);
      }
    } catch (err) {
      console.error(`codec fuzz failed: STOA_FUZZ_SEED=${seed}, iteration ${i}, input ${Buffer.from(input).toString("hex")}`);
      throw err;
    }
    // The mutations must reach every outcome, or the fuzzer is not testing much.
    for (const count of Object.values(outcomes)) expect(count).toBeGreaterThan(100);
  }, FUZZ_TIMEOUT_MS);

  test("unmutated encodings of random values always round-trip", () => {
    const seed = fuzzSeed(0xc0dec + 1);
    const rng = prng(seed);
    for (let i = 0; i < 10_000; i++) {
      const value = randomValue(rng, 0);
      const result = safeDecodeMessage(encode(value), z.unknown());
      if (!result.ok || !same(result.value, value)) {
        console.error(`codec round trip failed: STOA_FUZZ_SEED=${seed}, iteration ${i}`);
      }
      expect(result.ok && same(result.value, value)).toBe(true);
    }
  }, FUZZ_TIMEOUT_MS);
});
