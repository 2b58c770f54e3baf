/**
 * The OVSDB stream splitter (src/flows/ovsdb-wire.ts): JSON texts back to back, found by their
 * structure alone, whatever the reads' boundaries; limits; garbage refused with its own error.
 */
import { describe, expect, test } from "bun:test";
import { JsonSplitError, JsonSplitter, MAX_OVSDB_JSON_DEPTH, optionalInteger, setMembers, uuidsOf } from "../../src/flows/ovsdb-wire.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const ITERATIONS = 20_000;
/** The fuzz loop takes about 1 s on an idle machine, several times that on a loaded 2-core one. */
const FUZZ_TIMEOUT_MS = 60_000;

const bytes = (text: string) => new TextEncoder().encode(text);

/** All texts of one push. */
function pushAll(splitter: JsonSplitter, chunk: Uint8Array): unknown[] {
  const out: unknown[] = [];
  splitter.push(chunk, (message) => out.push(message));
  return out;
}

/** Feeds `chunks` in order; the texts, and the error if one was thrown (then nothing more is fed). */
function feed(splitter: JsonSplitter, chunks: Uint8Array[]): { messages: unknown[]; error: unknown } {
  const messages: unknown[] = [];
  for (const chunk of chunks) {
    try {
      splitter.push(chunk, (message) => messages.push(message));
    } catch (error) {
      return { messages, error };
    }
  }
  return { messages, error: null };
}

/** Strings that stress the state machine: braces and quotes inside strings, escapes, multi-byte UTF-8. */
const TRICKY = ['{"a":[1,2]}', "}", "]", "[", "{", '\\"', "\\", "é", "日本", "🙂", "\u0000", "\n", "\\u00e9", "plain", ""];

function randomValue(rng: Prng, depth: number): unknown {
  const roll = rng.int(depth > 4 ? 4 : 7);
  switch (roll) {
    case 0:
      return rng.int(2) === 0 ? rng.int(100_000) - 50_000 : rng.int(1000) / 7;
    case 1:
      return Array.from({ length: rng.int(4) }, () => rng.pick(TRICKY)).join("");
    case 2:
      return rng.pick([true, false, null]);
    case 3:
      return rng.pick(["uuid", "set", "map", "named-uuid"]);
    case 4:
    case 5:
      return Array.from({ length: rng.int(5) }, () => randomValue(rng, depth + 1));
    default: {
      const out: Record<string, unknown> = {};
      for (let i = rng.int(5); i > 0; i--) out[String(randomValue(rng, 9))] = randomValue(rng, depth + 1);
      return out;
    }
  }
}

/** A JSON-RPC-shaped text: an object or an array at the top, as the splitter requires. */
function randomMessage(rng: Prng): unknown {
  if (rng.int(4) === 0) return Array.from({ length: rng.int(4) }, () => randomValue(rng, 1));
  return { id: rng.int(1000), result: randomValue(rng, 1), error: null, method: rng.pick(["echo", "update", "x"]) };
}

const WHITESPACE = ["", "", " ", "\n", "\r\n", "\t", "  \n "];

function randomStream(rng: Prng): { messages: unknown[]; data: Uint8Array } {
  const messages = Array.from({ length: rng.int(6) }, () => randomMessage(rng));
  const text = messages.map((m) => rng.pick(WHITESPACE) + JSON.stringify(m, null, rng.int(3) === 0 ? 1 : undefined)).join("") + rng.pick(WHITESPACE);
  return { messages, data: bytes(text) };
}

/** Random cut points: single bytes, small pieces, or the whole rest; sometimes an empty read. */
function split(rng: Prng, data: Uint8Array): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let at = 0; at < data.length; ) {
    const n = rng.pick([1, 1 + rng.int(8), 1 + rng.int(64), data.length]);
    chunks.push(data.subarray(at, at + n));
    at += n;
  }
  if (rng.int(8) === 0) chunks.splice(rng.int(chunks.length + 1), 0, new Uint8Array(0));
  return chunks;
}

describe("JsonSplitter", () => {
  test("splits texts written back to back, with or without whitespace between them", () => {
    const splitter = new JsonSplitter();
    expect(pushAll(splitter, bytes('{"id":1,"result":[],"error":null}{"id":2}\n [3] \r\n\t{"a":"}"}'))).toEqual([
      { id: 1, result: [], error: null },
      { id: 2 },
      [3],
      { a: "}" },
    ]);
    expect(splitter.buffered).toBe(0);
  });

  test("braces, brackets and escaped quotes inside strings count for nothing", () => {
    const text = '{"s":"{[\\"}]\\\\","t":["]","\\"{"]}';
    expect(pushAll(new JsonSplitter(), bytes(text))).toEqual([JSON.parse(text)]);
  });

  test("holds an incomplete text until it ends, also one byte at a time with UTF-8 split across reads", () => {
    const message = { id: 7, result: { name: "vé日🙂", ofport: 3 }, error: null };
    const data = bytes(JSON.stringify(message));
    const splitter = new JsonSplitter();
    const out: unknown[] = [];
    for (let i = 0; i < data.length; i++) {
      out.push(...pushAll(splitter, data.subarray(i, i + 1)));
      if (i < data.length - 1) expect(splitter.buffered).toBe(i + 1);
    }
    expect(out).toEqual([message]);
  });

  test("copies what it holds: the reader may reuse its buffer", () => {
    const splitter = new JsonSplitter();
    const buffer = bytes('{"a":"xy');
    expect(pushAll(splitter, buffer)).toEqual([]);
    buffer.fill(0x20);
    expect(pushAll(splitter, bytes('z"}'))).toEqual([{ a: "xyz" }]);
  });

  test("refuses a text over the size limit before buffering it, and stays failed", () => {
    const splitter = new JsonSplitter({ maxBytes: 16 });
    expect(pushAll(splitter, bytes('{"a":"0123456"}'))).toEqual([{ a: "0123456" }]); // 15 bytes
    expect(pushAll(splitter, bytes('{"a":"012'))).toEqual([]);
    let error: unknown;
    try {
      pushAll(splitter, bytes('3456789"}'));
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(JsonSplitError);
    expect((error as JsonSplitError).code).toBe("too_large");
    expect((error as Error).message).toContain("over 16 bytes (MAX_OVSDB_MESSAGE_BYTES)");
    expect(splitter.buffered).toBe(0);
    expect(() => pushAll(splitter, bytes("{}"))).toThrow(JsonSplitError);
  });

  test("refuses nesting deeper than MAX_OVSDB_JSON_DEPTH", () => {
    const ok = "[".repeat(MAX_OVSDB_JSON_DEPTH) + "]".repeat(MAX_OVSDB_JSON_DEPTH);
    expect(pushAll(new JsonSplitter(), bytes(ok))).toHaveLength(1);
    expect(() => pushAll(new JsonSplitter(), bytes(`[${ok}]`))).toThrow(/nests deeper than 128 levels/);
  });

  test("says what is wrong with garbage: a byte between texts, bad JSON inside one, bad UTF-8", () => {
    expect(() => pushAll(new JsonSplitter(), bytes('{"a":1} x'))).toThrow(/expected a JSON object or array, got 'x': the peer is not ovsdb-server/);
    expect(() => pushAll(new JsonSplitter(), bytes("42"))).toThrow(/got '4'/);
    expect(() => pushAll(new JsonSplitter(), bytes("}"))).toThrow(/got '}'/);
    expect(() => pushAll(new JsonSplitter(), bytes("HTTP/1.1 400 Bad Request\r\n"))).toThrow(/got 'H'/);
    expect(() => pushAll(new JsonSplitter(), bytes('{"a":1]'))).toThrow(/not valid JSON/);
    expect(() => pushAll(new JsonSplitter(), bytes("{abc}"))).toThrow(/not valid JSON/);
    expect(() => pushAll(new JsonSplitter(), new Uint8Array([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]))).toThrow(/not valid UTF-8/);
  });
});

describe("OVSDB datums", () => {
  test("a set is its members, a lone atom a set of one, the empty set none", () => {
    expect(setMembers(["set", [1, 2]])).toEqual([1, 2]);
    expect(setMembers(["uuid", "u1"])).toEqual([["uuid", "u1"]]);
    expect(uuidsOf(["set", [["uuid", "u1"], ["uuid", "u2"]]])).toEqual(["u1", "u2"]);
    expect(uuidsOf(["uuid", "u1"])).toEqual(["u1"]);
    expect(optionalInteger(["set", []])).toBeUndefined();
    expect(optionalInteger(5)).toBe(5);
    expect(optionalInteger(-1)).toBe(-1);
  });
});

describe("JsonSplitter fuzzing", () => {
  test(
    `${ITERATIONS} valid streams in random splits give their messages; mutated and random bytes give the same result whatever the splits, and only JsonSplitError`,
    () => {
      const seed = fuzzSeed(0x0f5db);
      const rng = prng(seed);
      let i = 0;
      let input: Uint8Array = new Uint8Array(0);
      let refused = 0;
      try {
        for (; i < ITERATIONS; i++) {
          const roll = rng.int(10);
          const stream = randomStream(rng);
          input = roll < 4 ? stream.data : roll < 9 ? mutate(rng, stream.data) : rng.bytes(rng.int(200));
          const maxBytes = rng.int(5) === 0 ? 1 + rng.int(300) : undefined;
          const whole = feed(new JsonSplitter({ maxBytes }), [input]);
          const splitter = new JsonSplitter({ maxBytes });
          const pieces = feed(splitter, split(rng, input));
          if (roll < 4 && maxBytes === undefined) {
            expect(pieces.error).toBeNull();
            expect(pieces.messages).toEqual(stream.messages);
          }
          expect(pieces.messages).toEqual(whole.messages);
          if (whole.error === null) {
            expect(pieces.error).toBeNull();
          } else {
            refused++;
            expect(whole.error).toBeInstanceOf(JsonSplitError);
            expect(pieces.error).toBeInstanceOf(JsonSplitError);
            expect((pieces.error as Error).message).toBe((whole.error as Error).message);
            expect(() => pushAll(splitter, bytes("{}"))).toThrow(JsonSplitError);
          }
          if (maxBytes !== undefined) expect(splitter.buffered).toBeLessThanOrEqual(maxBytes);
        }
      } catch (err) {
        console.error(`JsonSplitter fuzz failed: STOA_FUZZ_SEED=${seed}, iteration ${i}, input ${Buffer.from(input).toString("hex")}`);
        throw err;
      }
      expect(refused).toBeGreaterThan(ITERATIONS / 10);
      expect(refused).toBeLessThan(ITERATIONS - ITERATIONS / 10);
    },
    FUZZ_TIMEOUT_MS,
  );
});

describe("JsonSplitter on big texts", () => {
  test("a 20,000-row monitor update in 64 KiB reads is one message", () => {
    const rows: Record<string, unknown> = {};
    for (let i = 0; i < 20_000; i++) rows[crypto.randomUUID()] = { new: { name: `veth${i}`, ofport: i + 1, external_ids: ["map", [["container_id", `c${i}`]]] } };
    const message = { id: null, method: "update", params: ["stoa-interfaces-1", { Interface: rows }] };
    const data = bytes(JSON.stringify(message));
    const splitter = new JsonSplitter();
    const out: unknown[] = [];
    const started = performance.now();
    for (let at = 0; at < data.length; at += 65_536) splitter.push(data.subarray(at, at + 65_536), (m) => out.push(m));
    const elapsed = performance.now() - started;
    expect(out).toEqual([message]);
    console.log(`split ${(data.length / 1e6).toFixed(1)} MB in ${elapsed.toFixed(0)} ms`);
  });
});
