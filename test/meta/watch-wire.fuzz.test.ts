/**
 * The watch's SSE decoder (watch-wire.ts) under random input: random bytes, mutated real
 * streams and real streams cut at random places never throw anything but a StoaError, never
 * allocate past the limits, and a valid stream decodes to the same events however it is split
 * and whichever line ends it uses.
 */
import { expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import type { PublisherInfo } from "../../src/meta/protocol.ts";
import {
  encodeChange,
  encodeWatching,
  KEEPALIVE,
  MAX_SSE_EVENT_BYTES,
  MAX_SSE_LINE_BYTES,
  type SseEvent,
  SseDecoder,
  watchEventOf,
} from "../../src/meta/watch-wire.ts";
import { fuzzSeed, mutate, type Prng, prng } from "../helpers/prng.ts";

const ITERATIONS = 3_000;
/** About a second idle; several on a loaded 2-core machine. */
const FUZZ_TIMEOUT_MS = 30_000;

const info = (name: string, pubId: string): PublisherInfo => ({
  name,
  pub_id: pubId,
  host: "fd00::1",
  ports: { service: 8081, string: 8082, ping: 8083 },
  urls: { service: `ws://[fd00::1]:8081/pub/${pubId}`, string: `ws://[fd00::1]:8082/pub/${pubId}`, ping: `ws://[fd00::1]:8083/pub/${pubId}` },
  state: "live",
  registered_at: "2026-12-01T18:00:00.000Z",
});

const STREAM =
  encodeWatching("lab") +
  encodeChange({ type: "registered", publisher: { ...info("lab/a", "p1"), state: "pending" } }) +
  KEEPALIVE +
  encodeChange({ type: "confirmed", publisher: info("lab/a", "p1") }) +
  encodeChange({ type: "stale", publisher: { ...info("lab/ü", "p2"), state: "stale" } }) +
  encodeChange({ type: "removed", publisher: info("lab/a", "p1") });

/** Decodes `bytes` fed in random pieces: the events, or the StoaError it failed with. */
function decodeSplit(rng: Prng, bytes: Uint8Array): SseEvent[] | StoaError {
  const decoder = new SseDecoder();
  const out: SseEvent[] = [];
  try {
    for (let at = 0; at < bytes.length; ) {
      const n = 1 + rng.int(Math.min(bytes.length - at, rng.pick([1, 3, 17, 200, 5000])));
      out.push(...decoder.push(bytes.subarray(at, at + n)));
      at += n;
    }
    return out;
  } catch (err) {
    if (!(err instanceof StoaError)) throw new Error(`seed ${rng.seed}: a ${String(err)} escaped the decoder`);
    return err;
  }
}

test("a real stream decodes the same in any split, with LF, CRLF or CR line ends", () => {
  const rng = prng(fuzzSeed(0x5e5e));
  const whole = new SseDecoder().push(new TextEncoder().encode(STREAM));
  expect(whole.map((e) => e.event)).toEqual(["watching", "registered", "confirmed", "stale", "removed"]);
  expect(whole.map((e) => watchEventOf(e)?.type)).toEqual(["watching", "registered", "confirmed", "stale", "removed"]);
  for (let i = 0; i < ITERATIONS; i++) {
    const ends = rng.pick(["\n", "\r\n", "\r"]);
    const text = STREAM.replaceAll("\n", ends);
    const got = decodeSplit(rng, new TextEncoder().encode(text));
    if (got instanceof StoaError) throw new Error(`seed ${rng.seed} iteration ${i}: ${got.message}`);
    expect(got).toEqual(whole);
  }
}, FUZZ_TIMEOUT_MS);

test("random bytes and mutated streams: events or a StoaError, never anything else", () => {
  const rng = prng(fuzzSeed(0xfa11));
  const real = new TextEncoder().encode(STREAM);
  let failures = 0;
  for (let i = 0; i < ITERATIONS; i++) {
    const input = rng.int(2) === 0 ? rng.bytes(rng.int(4096)) : mutate(rng, real);
    const got = decodeSplit(rng, input);
    if (got instanceof StoaError) {
      failures++;
      expect(["decode", "too_large"]).toContain(got.code);
      continue;
    }
    for (const event of got) {
      expect(event.data.length).toBeLessThanOrEqual(MAX_SSE_EVENT_BYTES);
      try {
        watchEventOf(event);
      } catch (err) {
        if (!(err instanceof StoaError)) throw new Error(`seed ${rng.seed} iteration ${i}: ${String(err)} escaped watchEventOf`);
        expect(["decode", "schema"]).toContain(err.code);
      }
    }
  }
  // Random bytes are mostly not UTF-8: the fuzz did reach the failure paths.
  expect(failures).toBeGreaterThan(0);
}, FUZZ_TIMEOUT_MS);

test("limits: a line or an event over the limit fails before it is kept, and the decoder stays failed", () => {
  const long = new SseDecoder();
  expect(() => {
    for (let i = 0; i <= MAX_SSE_LINE_BYTES; i += 1000) long.push(new Uint8Array(1000).fill(0x61));
  }).toThrow(/line longer than 16384 bytes/);
  expect(() => long.push(new TextEncoder().encode("\n\n"))).toThrow(/line longer/);

  const big = new SseDecoder();
  const line = `data: ${"x".repeat(MAX_SSE_LINE_BYTES - 100)}\n`;
  expect(() => big.push(new TextEncoder().encode(line.repeat(3)))).toThrow(/event larger than 32768 bytes/);
  // Comments between events do not add up: the blank line after each starts a new event.
  const quiet = new SseDecoder();
  for (let i = 0; i < 10_000; i++) quiet.push(new TextEncoder().encode(KEEPALIVE));

  expect(() => new SseDecoder().push(Uint8Array.of(0x64, 0x61, 0x74, 0x61, 0x3a, 0xff, 0x0a))).toThrow(/not UTF-8/);
});

test("watchEventOf: unknown event names are skipped, known ones must match the protocol", () => {
  expect(watchEventOf({ event: "future", data: "whatever" })).toBeNull();
  expect(watchEventOf({ event: "message", data: "{}" })).toBeNull();
  expect(() => watchEventOf({ event: "confirmed", data: "{" })).toThrow(/not JSON/);
  expect(() => watchEventOf({ event: "confirmed", data: JSON.stringify({ type: "confirmed", publisher: { name: "x" } }) })).toThrow(/does not match/);
  expect(() => watchEventOf({ event: "stale", data: JSON.stringify({ type: "confirmed", publisher: info("a", "b") }) })).toThrow(/does not match/);
  expect(watchEventOf({ event: "watching", data: '{"type":"watching","prefix":""}' })).toEqual({ type: "watching", prefix: "" });
});
