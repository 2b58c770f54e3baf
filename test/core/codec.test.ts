import { describe, expect, test } from "bun:test";
import { z } from "zod";
import {
  MAX_MESSAGE_BYTES,
  createCodec,
  decodeMessage,
  encode,
  safeDecodeMessage,
} from "../../src/core/codec.ts";
import { StoaError } from "../../src/core/errors.ts";

const hex = (text: string): Uint8Array => new Uint8Array(Buffer.from(text.replace(/\s+/g, ""), "hex"));
const toHex = (bytes: Uint8Array): string => Buffer.from(bytes).toString("hex");

/** The error a decode fails with; fails the test if it succeeds or throws something else. */
function decodeError(bytes: Uint8Array, schema: z.ZodType = z.unknown(), maxBytes?: number): StoaError {
  const result = safeDecodeMessage(bytes, schema, maxBytes === undefined ? {} : { maxBytes });
  if (result.ok) throw new Error(`expected a failure, decoded ${String(result.value)}`);
  expect(result.error).toBeInstanceOf(StoaError);
  expect(() => decodeMessage(bytes, schema, maxBytes === undefined ? {} : { maxBytes })).toThrow(StoaError);
  return result.error;
}

function encodeError(value: unknown): StoaError {
  try {
    encode(value);
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    return err as StoaError;
  }
  throw new Error("expected encode to fail");
}

describe("round trips", () => {
  test("a typical message with nested maps and arrays comes back equal", () => {
    const Message = z.object({
      type: z.literal("publish"),
      stream: z.string(),
      seq: z.number().int(),
      meta: z.object({ tags: z.array(z.string()), ttl: z.number().nullable(), retained: z.boolean() }),
      route: z.array(z.object({ host: z.string(), port: z.number() })),
    });
    const message: z.infer<typeof Message> = {
      type: "publish",
      stream: "sensors/température",
      seq: 4_000_000_000,
      meta: { tags: ["a", "", "ünïcödé 🚀"], ttl: null, retained: false },
      route: [
        { host: "::1", port: 8081 },
        { host: "10.0.0.2", port: 8082 },
      ],
    };
    expect(decodeMessage(encode(message), Message)).toEqual(message);
  });

  test("writes plain CBOR: shortest map headers, untagged byte strings, no records", () => {
    expect(toHex(encode({ a: 1 }))).toBe("a1616101");
    expect(toHex(encode(new Uint8Array([1, 2, 3])))).toBe("43010203");
    expect(toHex(encode([{ a: 1 }, { a: 2 }]))).toBe("82a16161 01a16161 02".replace(/\s/g, ""));
    expect(toHex(encode(new Map([["k", true]])))).toBe("a1616bf5");
  });

  test("Uint8Array payloads come back as plain Uint8Array copies that do not alias the input", () => {
    const payload = new Uint8Array([0, 1, 2, 250, 255]);
    const bytes = encode({ payload });
    const { payload: decoded } = decodeMessage(bytes, z.object({ payload: z.instanceof(Uint8Array) }));
    expect(Object.getPrototypeOf(decoded)).toBe(Uint8Array.prototype);
    expect(decoded).toEqual(payload);
    bytes.fill(0);
    expect(decoded).toEqual(payload);
    expect(decoded.buffer.byteLength).toBe(payload.byteLength);
  });

  test("tag 64 byte strings from cbor-x peers decode as Uint8Array", () => {
    expect(decodeMessage(hex("d840 43 010203"), z.instanceof(Uint8Array))).toEqual(new Uint8Array([1, 2, 3]));
  });

  test("encode returns a buffer that owns exactly its bytes", () => {
    const bytes = encode({ hello: "world" });
    expect(bytes.byteOffset).toBe(0);
    expect(bytes.buffer.byteLength).toBe(bytes.byteLength);
  });

  test("numbers: integers up to 2^32 as CBOR integers, the rest as float64, all back as numbers", () => {
    for (const n of [0, -1, 23, 24, 255, 65536, 2 ** 32, -(2 ** 32), 2 ** 40, 2 ** 53, 1.5, -0.25, 1e300, Infinity]) {
      expect(decodeMessage(encode(n), z.unknown())).toBe(n);
    }
    expect(toHex(encode(2 ** 32))).toBe("fb41f0000000000000");
    expect(decodeMessage(encode(NaN), z.unknown())).toBeNaN();
  });

  test("bigints round-trip as bigints, including u64 extremes and beyond 64 bits", () => {
    for (const n of [0n, 5n, 2n ** 32n, 2n ** 64n - 1n, 2n ** 64n, -5n, -(2n ** 64n), -(2n ** 64n) - 1n]) {
      expect(decodeMessage(encode(n), z.bigint())).toBe(n);
    }
    expect(toHex(encode(5n))).toBe("1b0000000000000005");
  });

  test("a u64 from another encoder is a number in short form and a bigint in 8-byte form", () => {
    expect(decodeMessage(hex("05"), z.unknown())).toBe(5);
    expect(decodeMessage(hex("1a ffffffff"), z.unknown())).toBe(0xffffffff);
    expect(decodeMessage(hex("1b 0000000000000005"), z.unknown())).toBe(5n);
    const U64 = z.union([z.bigint(), z.number().int()]).transform(BigInt);
    expect(decodeMessage(hex("05"), U64)).toBe(5n);
    expect(decodeMessage(hex("1b ffffffffffffffff"), U64)).toBe(2n ** 64n - 1n);
  });

  test("undefined fields survive for optional schema fields", () => {
    const Schema = z.object({ a: z.number().optional(), b: z.array(z.undefined()) });
    expect(decodeMessage(encode({ a: undefined, b: [undefined] }), Schema)).toEqual({ a: undefined, b: [undefined] });
  });

  test("maps decode as plain objects; keys like __proto_ and constructor are ordinary data", () => {
    const value = decodeMessage(encode({ __proto_: 1, constructor: 2, toString: 3 }), z.record(z.string(), z.number()));
    expect(Object.getPrototypeOf(value)).toBe(Object.prototype);
    expect(Object.keys(value)).toEqual(["__proto_", "constructor", "toString"]);
    expect(Reflect.get(value, "constructor")).toBe(2);
  });
});

describe("size limits", () => {
  test("rejects a message over the limit as too_large before decoding it", () => {
    // Garbage that would be a decode error: the size check must come first.
    const error = decodeError(new Uint8Array(101).fill(0xff), z.unknown(), 100);
    expect(error.code).toBe("too_large");
    expect(error.message).toContain("100-byte limit");
  });

  test("accepts a message of exactly the limit", () => {
    const bytes = encode("x".repeat(96));
    expect(safeDecodeMessage(bytes, z.string(), { maxBytes: bytes.byteLength }).ok).toBe(true);
    expect(decodeError(bytes, z.string(), bytes.byteLength - 1).code).toBe("too_large");
  });

  test("the default limit is MAX_MESSAGE_BYTES (1 MiB)", () => {
    expect(MAX_MESSAGE_BYTES).toBe(1024 * 1024);
    const fits = encode(new Uint8Array(MAX_MESSAGE_BYTES - 5)); // 5-byte byte-string header
    expect(fits.byteLength).toBe(MAX_MESSAGE_BYTES);
    expect(decodeMessage(fits, z.instanceof(Uint8Array)).byteLength).toBe(MAX_MESSAGE_BYTES - 5);
    const over = new Uint8Array(MAX_MESSAGE_BYTES + 1);
    expect(decodeError(over).code).toBe("too_large");
  });

  test("encode refuses to produce a message the peer would reject", () => {
    expect(() => encode("x".repeat(200), { maxBytes: 100 })).toThrow(/over the 100-byte limit/);
    try {
      encode(new Uint8Array(MAX_MESSAGE_BYTES));
      throw new Error("expected too_large");
    } catch (err) {
      expect((err as StoaError).code).toBe("too_large");
    }
  });

  test("rejects a nonsensical limit as a config error", () => {
    for (const maxBytes of [-1, 1.5, NaN]) {
      expect(() => safeDecodeMessage(hex("00"), z.unknown(), { maxBytes })).toThrow(StoaError);
    }
  });
});

describe("malformed input is a decode error, never a crash", () => {
  const cases: [string, string, RegExp][] = [
    ["empty input", "", /truncated/],
    ["a truncated map", "a2 6161 01", /truncated/],
    ["a truncated string", "65 6162", /truncated string/],
    ["trailing garbage", "a1616101 00", /1 trailing byte after/],
    ["two messages back to back", "01 02", /trailing/],
    ["an indefinite-length array", "9f 01 ff", /indefinite-length/],
    ["a lone break byte", "ff", /indefinite-length/],
    ["a reserved header", "1c", /reserved/],
    ["a date (tag 1)", "c1 1a00000000", /tag 1 /],
    ["a shared reference (tag 28)", "d81c a0", /tag 28 /],
    ["a cbor-x record (tag 105)", "d869 83 00 81 6161 01", /tag 105 /],
    ["a packed table (tag 51)", "d833 84 80 80 80 00", /tag 51 /],
    ["a set (tag 258)", "d90102 80", /tag 258 /],
    ["a regexp or error (tag 27)", "d81b 83 6552656745 78 61 61", /tag 27 /],
    ["a bignum over 64 bytes", `c2 5841 ${"01".repeat(65)}`, /bignum of 65 bytes/],
    ["a bignum tag around a non-byte-string", "c2 01", /must wrap a byte string/],
    ["invalid UTF-8 (overlong)", "62 c19f", /not valid UTF-8/],
    ["invalid UTF-8 (surrogate)", "63 eda080", /not valid UTF-8/],
    ["an integer map key", "a1 01 01", /not a text string/],
    ["an array as map key", "a1 80 01", /not a text string/],
    ["a duplicate map key", "a2 6161 01 6161 02", /duplicate map key/],
    ["a __proto__ key", `a1 69 ${Buffer.from("__proto__").toString("hex")} a0`, /__proto__/],
    ["a nested __proto__ key", `81 a1 69 ${Buffer.from("__proto__").toString("hex")} 01`, /__proto__/],
    ["an unassigned simple value", "f0", /simple value 16/],
    ["a one-byte simple value", "f8 ff", /simple value 255/],
    ["an array claiming 2^64-1 items", "9b ffffffffffffffff 00", /truncated array/],
    ["a map claiming 2^32 entries", "ba ffffffff 00", /truncated map/],
    ["a byte string claiming 4 GiB", "5a ffffffff 00", /truncated string/],
    ["nesting 65 levels deep", `${"81".repeat(65)}00`, /nesting deeper than 64/],
  ];
  for (const [name, input, reason] of cases) {
    test(`rejects ${name}`, () => {
      const error = decodeError(hex(input));
      expect(error.code).toBe("decode");
      expect(error.message).toMatch(reason);
    });
  }

  test("finds a duplicate key in a large map", () => {
    const entries = (keys: string[]): Uint8Array => {
      const body = keys.map((k) => `${toHex(encode(k))}01`).join("");
      return hex(`b8${keys.length.toString(16).padStart(2, "0")}${body}`);
    };
    const keys = Array.from({ length: 40 }, (_, i) => `key-${i}`);
    expect(safeDecodeMessage(entries(keys), z.unknown()).ok).toBe(true);
    expect(decodeError(entries([...keys, "key-3"])).message).toContain("duplicate map key");
    expect(decodeError(entries([...keys.slice(0, 5), "key-3"])).message).toContain("duplicate map key");
  });

  test("the same key in different maps is not a duplicate", () => {
    const value = { a: { a: 1, b: { a: 2 } }, b: [{ a: 1 }, { a: 2, b: 3 }], c: 0 };
    expect(decodeMessage(encode(value), z.unknown())).toEqual(value);
  });

  test("accepts nesting of exactly 64 levels", () => {
    expect(safeDecodeMessage(hex(`${"81".repeat(64)}00`), z.unknown()).ok).toBe(true);
  });

  test("a __proto__ key never reaches a prototype", () => {
    const polluted = JSON.parse('{"__proto__": {"polluted": true}}') as unknown;
    expect(encodeError(polluted).message).toContain("__proto__");
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

describe("schema validation", () => {
  const Hello = z.object({ type: z.literal("hello"), version: z.number().int(), name: z.string() });

  test("returns the parsed, typed value", () => {
    const value = decodeMessage(encode({ type: "hello", version: 2, name: "n1", extra: true }), Hello);
    expect(value).toEqual({ type: "hello", version: 2, name: "n1" });
  });

  test("a mismatch is a schema error naming the field", () => {
    const error = decodeError(encode({ type: "hello", version: "2", name: "n1" }), Hello);
    expect(error.code).toBe("schema");
    expect(error.message).toContain("version");
    expect(error.message).toContain("expected number");
  });

  test("many mismatches are summarized, not dumped", () => {
    const Wide = z.object(Object.fromEntries(["a", "b", "c", "d", "e"].map((k) => [k, z.string()])));
    const error = decodeError(encode({}), Wide);
    expect(error.message).toContain("and 2 more");
    expect(error.message.length).toBeLessThan(400);
  });

  test("a top-level mismatch names the message", () => {
    expect(decodeError(encode([1]), Hello).message).toContain("(message):");
  });
});

describe("encode rejects values outside the data model", () => {
  const cases: [string, unknown][] = [
    ["a Date", new Date(0)],
    ["a Set", new Set([1])],
    ["a Float32Array", new Float32Array([1])],
    ["a Map with a number key", new Map([[1, "a"]])],
    ["a regular expression", /x/],
  ];
  for (const [name, value] of cases) {
    test(`refuses ${name}`, () => {
      const error = encodeError({ value });
      expect(error.code).toBe("internal");
      expect(error.message).toContain("cannot encode message");
    });
  }

  test("refuses a cycle", () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const error = encodeError(cyclic);
    expect(error.code).toBe("internal");
    expect(error.message).toContain("cyclic");
    expect(toHex(encode({ a: 1 }))).toBe("a1616101"); // the shared encoder recovered
  });
});

describe("createCodec", () => {
  const Ping = z.object({ type: z.literal("ping"), seq: z.number().int() });
  const codec = createCodec(Ping, { maxBytes: 64 });

  test("encodes and decodes with the bound schema", () => {
    expect(codec.decode(codec.encode({ type: "ping", seq: 7 }))).toEqual({ type: "ping", seq: 7 });
  });

  test("safeDecode reports errors instead of throwing", () => {
    const tooLarge = codec.safeDecode(new Uint8Array(65));
    const malformed = codec.safeDecode(hex("a2"));
    const wrong = codec.safeDecode(encode({ type: "pong", seq: 1 }));
    expect([tooLarge, malformed, wrong].map((r) => (r.ok ? "ok" : r.error.code))).toEqual([
      "too_large",
      "decode",
      "schema",
    ]);
  });

  test("applies the bound limit to encode too", () => {
    expect(() => codec.encode({ type: "ping", seq: 1, pad: "x".repeat(100) } as z.input<typeof Ping>)).toThrow(
      /64-byte limit/,
    );
  });

  test("rejects a bad limit when created", () => {
    expect(() => createCodec(Ping, { maxBytes: -5 })).toThrow(StoaError);
  });
});
