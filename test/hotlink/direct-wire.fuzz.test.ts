import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import {
  AckReader,
  type AckResult,
  DIRECT_ACK_BYTES,
  HelloReader,
  type HelloResult,
  MAX_DIRECT_HELLO_BYTES,
  encodeDirectAck,
  encodeDirectHello,
} from "../../src/hotlink/direct-wire.ts";
import { MAX_DIRECT_TOKEN_LENGTH, MAX_SID_LENGTH, MIN_DIRECT_TOKEN_LENGTH } from "../../src/hotlink/protocol.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const ITERATIONS = 100_000;
/** Generous for 100,000 small inputs on a loaded 2-core machine (a few seconds unloaded). */
const FUZZ_TIMEOUT_MS = 120_000;

const ID = "ABCXYZabcxyz0189_-";
const ID_RE = "[A-Za-z0-9_-]";
/** What the reader must make of a whole input, written independently of it. */
const WHOLE = new RegExp(`^HLD1 (${ID_RE}{1,${MAX_SID_LENGTH}}) (${ID_RE}{${MIN_DIRECT_TOKEN_LENGTH},${MAX_DIRECT_TOKEN_LENGTH}})\n`);
const PREFIX = new RegExp(
  `^(?:H|HL|HLD|HLD1|HLD1 ${ID_RE}{0,${MAX_SID_LENGTH}}|HLD1 ${ID_RE}{1,${MAX_SID_LENGTH}} ${ID_RE}{0,${MAX_DIRECT_TOKEN_LENGTH}})?$`,
);

function id(rng: Prng, min: number, max: number): string {
  let out = "";
  for (let n = min + rng.int(max - min + 1); n > 0; n--) out += ID[rng.int(ID.length)];
  return out;
}

/** A valid hello, or one with a field just past a limit, then some HLNK-ish bytes. */
function randomStream(rng: Prng): Uint8Array {
  const sid = rng.int(20) === 0 ? id(rng, MAX_SID_LENGTH + 1, MAX_SID_LENGTH + 3) : id(rng, 1, MAX_SID_LENGTH);
  const tok =
    rng.int(20) === 0
      ? id(rng, rng.pick([0, MIN_DIRECT_TOKEN_LENGTH - 1, MAX_DIRECT_TOKEN_LENGTH + 1]), MAX_DIRECT_TOKEN_LENGTH + 2)
      : id(rng, MIN_DIRECT_TOKEN_LENGTH, MAX_DIRECT_TOKEN_LENGTH);
  return Buffer.concat([encodeDirectHello(sid, tok), rng.bytes(rng.int(32))]);
}

/** Random cut points: `input` as 1–8 chunks (empty ones included). */
function split(rng: Prng, input: Uint8Array): Uint8Array[] {
  const cuts = Array.from({ length: rng.int(8) }, () => rng.int(input.length + 1)).sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let at = 0;
  for (const cut of [...cuts, input.length]) {
    chunks.push(input.slice(at, cut));
    at = cut;
  }
  return chunks;
}

/** Feeds chunks until the reader settles; checks the bounds on the way. The rest is joined. */
function feedHello(chunks: Uint8Array[]): { result: HelloResult; rest: Uint8Array } {
  const reader = new HelloReader();
  let result: HelloResult = { state: "more" };
  const rest: Uint8Array[] = [];
  for (const chunk of chunks) {
    if (result.state === "done") {
      rest.push(chunk);
      continue;
    }
    result = reader.push(chunk); // a throw fails the test, with the seed
    expect(reader.buffered).toBeLessThanOrEqual(MAX_DIRECT_HELLO_BYTES);
    if (result.state === "error") break;
    if (result.state === "done") rest.push(result.rest);
  }
  return { result, rest: Buffer.concat(rest) };
}

function expectTyped(result: HelloResult | AckResult): void {
  const error = "state" in result ? (result.state === "error" ? result.error : null) : result.ok ? null : result.error;
  if (error === null) return;
  expect(error).toBeInstanceOf(StoaError);
  expect(["decode", "too_large"]).toContain(error.code);
}

/** The hello, or else the error, in a form that must not depend on the chunking. */
function outcome(run: { result: HelloResult; rest: Uint8Array }): string {
  const r = run.result;
  if (r.state === "done") return `done ${r.sid} ${r.tok} rest=${Buffer.from(run.rest).toString("hex")}`;
  if (r.state === "error") return `error ${r.error.code} ${r.error.message}`;
  return "more";
}

function check(seed: number, body: (rng: Prng, i: number) => void): void {
  const rng = prng(seed);
  let i = 0;
  try {
    for (; i < ITERATIONS; i++) body(rng, i);
  } catch (err) {
    throw new Error(`seed ${seed} iteration ${i}: ${String(err)}`);
  }
}

describe("direct hello fuzzing", () => {
  test(
    `${ITERATIONS} valid, oversize, mutated and random inputs: the oracle's verdict whatever the chunking, typed errors only`,
    () => {
      const seen = { done: 0, error: 0, more: 0 };
      check(fuzzSeed(0x41d1), (rng) => {
        const base = randomStream(rng);
        const input = rng.int(10) < 4 ? mutate(rng, base) : rng.int(8) === 0 ? rng.bytes(rng.int(MAX_DIRECT_HELLO_BYTES + 64)) : base;
        const whole = feedHello([input]);
        const chunked = feedHello(split(rng, input));
        expectTyped(whole.result);
        expect(outcome(chunked)).toBe(outcome(whole));
        seen[whole.result.state]++;
        const text = Buffer.from(input).toString("latin1");
        const match = WHOLE.exec(text);
        if (match !== null) {
          expect(whole.result).toMatchObject({ state: "done", sid: match[1], tok: match[2] });
          expect(Buffer.from(whole.rest).equals(Buffer.from(input.subarray(match[0].length)))).toBe(true);
        } else if (PREFIX.test(text)) {
          expect(whole.result.state).toBe("more"); // a truncated hello waits; it is never wrong yet
        } else {
          expect(whole.result.state).toBe("error");
        }
      });
      expect(seen.done).toBeGreaterThan(ITERATIONS / 10);
      expect(seen.error).toBeGreaterThan(ITERATIONS / 10);
    },
    FUZZ_TIMEOUT_MS,
  );

  test(
    `${ITERATIONS} truncations of valid hellos wait for more, holding exactly what came`,
    () => {
      check(fuzzSeed(0x41d2), (rng) => {
        const hello = encodeDirectHello(id(rng, 1, MAX_SID_LENGTH), id(rng, MIN_DIRECT_TOKEN_LENGTH, MAX_DIRECT_TOKEN_LENGTH));
        const cut = rng.int(hello.length); // never the LF
        const reader = new HelloReader();
        let held = 0;
        for (const chunk of split(rng, hello.subarray(0, cut))) {
          expect(reader.push(chunk)).toEqual({ state: "more" });
          held += chunk.length;
          expect(reader.buffered).toBe(held);
        }
      });
    },
    FUZZ_TIMEOUT_MS,
  );

  test(
    "an endless hello without LF, sid or token past its limit, fails by MAX_DIRECT_HELLO_BYTES and holds no more",
    () => {
      const rng = prng(fuzzSeed(0x41d3));
      for (let i = 0; i < 1000; i++) {
        const reader = new HelloReader();
        const prefix = rng.pick(["HLD1 ", `HLD1 ${id(rng, 1, MAX_SID_LENGTH)} `]);
        let result = reader.push(Buffer.from(prefix, "latin1"));
        let fed = prefix.length;
        while (result.state === "more") {
          const more = id(rng, 1, 40);
          result = reader.push(Buffer.from(more, "latin1"));
          fed += more.length;
          expect(reader.buffered).toBeLessThanOrEqual(MAX_DIRECT_HELLO_BYTES);
          expect(fed).toBeLessThan(MAX_DIRECT_HELLO_BYTES + 40); // failed within the chunk that crossed the limit
        }
        expect(result.state).toBe("error");
        if (result.state === "error") expect(result.error.code).toBe("too_large");
      }
    },
    FUZZ_TIMEOUT_MS,
  );
});

/** What an acknowledgement stream means, read independently of the reader: the highest seq,
 * or the index of the first acknowledgement that breaks the rules. */
function ackOracle(input: Uint8Array): { acked: number } | { bad: number } {
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  let acked = 0;
  for (let at = 0; at + DIRECT_ACK_BYTES <= input.length; at += DIRECT_ACK_BYTES) {
    const seq = view.getBigUint64(at);
    if (seq > BigInt(Number.MAX_SAFE_INTEGER) || Number(seq) <= acked) return { bad: at / DIRECT_ACK_BYTES };
    acked = Number(seq);
  }
  return { acked };
}

function randomAcks(rng: Prng): Uint8Array {
  const parts: Uint8Array[] = [];
  let seq = 0;
  for (let n = rng.int(12); n > 0; n--) {
    seq += rng.pick([1, 1 + rng.int(100), 1 + rng.int(1 << 30)]);
    if (rng.int(40) === 0) seq = Number.MAX_SAFE_INTEGER - rng.int(2);
    parts.push(encodeDirectAck(Math.min(seq, Number.MAX_SAFE_INTEGER)));
  }
  return Buffer.concat(parts);
}

describe("acknowledgement stream fuzzing", () => {
  test(
    `${ITERATIONS} valid, mutated, truncated and random streams: the oracle's verdict whatever the chunking, at most 7 bytes held`,
    () => {
      const seen = { ok: 0, failed: 0 };
      check(fuzzSeed(0xac5), (rng) => {
        const base = randomAcks(rng);
        const input = rng.int(10) < 4 ? mutate(rng, base) : rng.int(8) === 0 ? rng.bytes(rng.int(80)) : base;
        const reader = new AckReader();
        let last: AckResult = { ok: true, acked: 0 };
        let highest = 0;
        for (const chunk of split(rng, input)) {
          last = reader.push(chunk);
          expectTyped(last);
          if (!last.ok) break;
          expect(last.acked).toBeGreaterThanOrEqual(highest); // only ever forward
          highest = last.acked;
          expect(reader.buffered).toBeLessThan(DIRECT_ACK_BYTES);
        }
        const expected = ackOracle(input);
        if ("acked" in expected) {
          expect(last).toEqual({ ok: true, acked: expected.acked });
          expect(reader.buffered).toBe(input.length % DIRECT_ACK_BYTES);
          seen.ok++;
        } else {
          expect(last.ok).toBe(false);
          expect(reader.push(encodeDirectAck(Number.MAX_SAFE_INTEGER))).toEqual(last); // stays failed
          seen.failed++;
        }
      });
      expect(seen.ok).toBeGreaterThan(ITERATIONS / 10);
      expect(seen.failed).toBeGreaterThan(ITERATIONS / 20);
    },
    FUZZ_TIMEOUT_MS,
  );
});
