import { describe, expect, test } from "bun:test";
import { FirstLineParser, type FirstLineResult } from "../../src/gateway/firstline.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const ITERATIONS = 100_000;
/** The longest test here takes about 1.3 s on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const FUZZ_TIMEOUT_MS = 30_000;
const PUB_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const ID_CHARS = "abcXYZ019._-%/?#. ";

type Expected =
  | { state: "more" }
  | { state: "error"; error: string }
  | { state: "done"; mode: "http" | "prelude"; pubId: string; lf: number }
  | { state: "health"; check: "ready" | "healthz" };

const HEALTH: Record<string, "ready" | "healthz"> = { "GET /ready HTTP/1.1": "ready", "GET /healthz HTTP/1.1": "healthz" };

/**
 * The same rules stated over the whole input: the earliest failing position wins (a wrong
 * prefix byte, a byte that is not printable ASCII, a CR not followed by LF, or reaching the
 * limit without a LF); a complete line is then matched with regular expressions.
 */
function reference(input: Uint8Array, max: number): Expected {
  const first = input[0];
  // The three GET forms share "GET /"; the sixth byte picks which one the line is held to.
  const get = input[5] === 0x72 ? "GET /ready HTTP/1.1" : input[5] === 0x68 ? "GET /healthz HTTP/1.1" : "GET /pub/";
  const prefix = first === 0x47 ? get : first === 0x53 ? "STOA1 " : null;
  let fail: { at: number; error: string } | null = null;
  const failAt = (at: number, error: string) => {
    if (fail === null || at < fail.at) fail = { at, error };
  };
  const lf = input.indexOf(0x0a);
  const end = lf < 0 ? input.length : lf;
  // First, so it wins a tie: the byte at index `max` is never examined.
  if (lf < 0 ? input.length > max : lf >= max) failAt(max, "first_line_too_long");
  if (input.length > 0 && prefix === null) failAt(0, "bad_request_line");
  if (prefix !== null) {
    for (let i = 0; i < Math.min(prefix.length, input.length); i++) {
      if (input[i] !== prefix.charCodeAt(i)) {
        failAt(i, "bad_request_line");
        break;
      }
    }
    for (let i = prefix.length; i < end; i++) {
      const b = input[i] as number;
      if (b === 0x0d) {
        if (i + 1 < end) failAt(i + 1, "bad_request_line"); // the CR is followed by something else
      } else if (b < 0x20 || b > 0x7e) {
        failAt(i, "bad_request_line");
      }
    }
    if (lf >= 0 && lf < prefix.length) failAt(lf, "bad_request_line");
  }
  const failure = fail as { at: number; error: string } | null;
  if (failure !== null) return { state: "error", error: failure.error };
  if (lf < 0) return { state: "more" };
  const line = Buffer.from(input.subarray(0, lf)).toString("latin1").replace(/\r$/, "");
  const check = HEALTH[prefix ?? ""];
  if (check !== undefined) return line === prefix ? { state: "health", check } : { state: "error", error: "bad_request_line" };
  if (prefix === "GET /pub/") {
    const m = /^GET \/pub\/([^ ]*) HTTP\/1\.1$/.exec(line);
    if (m === null) return { state: "error", error: "bad_request_line" };
    const target = m[1] ?? "";
    const pubId = target.split(/[/?]/)[0] ?? "";
    const path = target.split("?")[0] ?? "";
    const ambiguous = path.split("/").some((seg) => seg === "." || seg === "..") || /%2e|%2f|%5c|%25|\\/i.test(path);
    return PUB_ID.test(pubId) && !ambiguous ? { state: "done", mode: "http", pubId, lf } : { state: "error", error: "invalid_pub_id" };
  }
  const pubId = line.slice("STOA1 ".length);
  return PUB_ID.test(pubId) ? { state: "done", mode: "prelude", pubId, lf } : { state: "error", error: "invalid_pub_id" };
}

function randomId(rng: Prng): string {
  const n = rng.pick([0, 1, 2, 8, 64, 65]);
  let s = "";
  for (let i = 0; i < n; i++) s += rng.pick([...ID_CHARS, "a", "b", "1"]);
  return rng.int(3) === 0 ? s : s.replace(/[%/?#. ]/g, "a");
}

function validish(rng: Prng): Uint8Array {
  const id = randomId(rng);
  const eol = rng.pick(["\r\n", "\n", "\r", ""]);
  const rest = rng.pick(["", "Host: x\r\n\r\n", "payload", "\x00\xff"]);
  const roll = rng.int(20);
  const line =
    roll === 0
      ? rng.pick(["GET /ready HTTP/1.1", "GET /healthz HTTP/1.1", "GET /ready?x HTTP/1.1", "GET /healthz HTTP/1.0", "GET /readyz HTTP/1.1"])
      : roll < 10
      ? `GET /pub/${id}${rng.pick(["", "/", "/x/y", "?q=1", "", "/x/y", "/../..", "%2e", "/%252e%252e/x", "?q=%252e"])} ${rng.pick(["HTTP/1.1", "HTTP/1.0", "HTTP/1.1 "])}`
      : `STOA1 ${id}`;
  const padded = rng.int(20) === 0 ? line + "x".repeat(rng.int(300)) : line;
  return Buffer.from(padded + eol + rest, "latin1");
}

function split(rng: Prng, data: Uint8Array): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let at = 0; at < data.length; ) {
    const n = rng.pick([1, 1 + rng.int(4), 1 + rng.int(32), data.length]);
    chunks.push(data.subarray(at, at + n));
    at += n;
  }
  if (rng.int(8) === 0) chunks.splice(rng.int(chunks.length + 1), 0, new Uint8Array(0));
  return chunks;
}

describe("first-line parser fuzzing", () => {
  test(`${ITERATIONS} random and mutated inputs in random splits match a whole-input reference`, () => {
    const seed = fuzzSeed(0x9a7e);
    const rng = prng(seed);
    let i = 0;
    let input: Uint8Array = new Uint8Array(0);
    const seen = { done: 0, error: 0, more: 0, health: 0 };
    try {
      for (; i < ITERATIONS; i++) {
        const roll = rng.int(10);
        input = roll < 5 ? mutate(rng, validish(rng)) : roll < 9 ? validish(rng) : rng.bytes(rng.int(64));
        const max = rng.pick([8192, 64, 16, 1 + rng.int(40)]);
        const parser = new FirstLineParser(max);
        let result: FirstLineResult = { state: "more" };
        let consumed = 0;
        for (const chunk of split(rng, input)) {
          result = parser.push(chunk); // must never throw before a settled result
          consumed += chunk.length;
          if (result.state !== "more") break;
          expect(parser.buffered).toBeLessThanOrEqual(max);
        }
        const expected = reference(input, max);
        seen[result.state]++;
        expect(result.state).toBe(expected.state);
        if (result.state === "error" && expected.state === "error") expect(result.error as string).toBe(expected.error);
        if (result.state === "health" && expected.state === "health") expect(result.check).toBe(expected.check);
        if (result.state === "done" && expected.state === "done") {
          expect(result.mode).toBe(expected.mode);
          expect(result.pubId).toBe(expected.pubId);
          const forward = expected.mode === "http" ? input.subarray(0, consumed) : input.subarray(expected.lf + 1, consumed);
          expect(Buffer.from(result.forward).equals(Buffer.from(forward))).toBe(true);
        }
      }
    } catch (err) {
      throw new Error(`seed ${seed} iteration ${i} input ${JSON.stringify(Buffer.from(input).toString("latin1"))}: ${String(err)}`);
    }
    // The generators reach every outcome, or the comparison proves little.
    expect(seen.done).toBeGreaterThan(ITERATIONS / 20);
    expect(seen.error).toBeGreaterThan(ITERATIONS / 20);
    expect(seen.more).toBeGreaterThan(0);
    expect(seen.health).toBeGreaterThan(0);
  }, FUZZ_TIMEOUT_MS);
});
