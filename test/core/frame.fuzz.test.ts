import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import { type FrameParts, FrameDecoder, MAX_FRAME_PARTS, encodeFrame } from "../../src/core/frame.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const ITERATIONS = 100_000;
/** The longest test here takes about 1.2 s on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const FUZZ_TIMEOUT_MS = 30_000;

/** The obvious whole-buffer parser, to check the streaming one against. */
function reference(stream: Uint8Array, maxBytes: number): { frames: Uint8Array[]; rest: number; tooLarge: boolean } {
  const view = new DataView(stream.buffer, stream.byteOffset, stream.byteLength);
  const frames: Uint8Array[] = [];
  let at = 0;
  while (stream.length - at >= 4) {
    const length = view.getUint32(at);
    if (length > maxBytes) return { frames, rest: 4, tooLarge: true };
    if (stream.length - at - 4 < length) break;
    frames.push(stream.slice(at + 4, at + 4 + length));
    at += 4 + length;
  }
  return { frames, rest: stream.length - at, tooLarge: false };
}

function randomStream(rng: Prng): Uint8Array {
  const frames = Array.from({ length: rng.int(6) }, () => encodeFrame(rng.bytes(rng.pick([0, 1, rng.int(40), rng.int(400)]))));
  const out = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let at = 0;
  for (const frame of frames) {
    out.set(frame, at);
    at += frame.length;
  }
  return out;
}

/** Random cut points: single bytes, small pieces, or the whole rest. */
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

describe("frame decoder fuzzing", () => {
  test(`${ITERATIONS} random and mutated streams in random splits match a whole-buffer parser`, () => {
    const seed = fuzzSeed(0xf4a3e);
    const rng = prng(seed);
    let failures = 0;
    let i = 0;
    let input: Uint8Array = new Uint8Array(0);
    try {
      for (; i < ITERATIONS; i++) {
        const roll = rng.int(10);
        input = roll < 7 ? mutate(rng, randomStream(rng)) : roll < 9 ? randomStream(rng) : rng.bytes(rng.int(100));
        const maxBytes = rng.pick([0, rng.int(64), rng.int(500), 1000]);
        // withHeader (the framed relay link's forwarder): the same frames, each with its own header in front.
        // lend: the same frames, valid until the next push (copied here at once).
        const withHeader = rng.int(2) === 0;
        const lend = rng.int(3) === 0;
        const decoder = new FrameDecoder({ maxBytes, withHeader, preallocate: rng.int(2) === 0, lend });
        const frames: Uint8Array[] = [];
        let error: unknown = null;
        for (const chunk of split(rng, input)) {
          try {
            for (const framed of decoder.push(chunk)) {
              const f = withHeader ? framed.subarray(4) : framed;
              if (withHeader) expect(framed).toEqual(encodeFrame(f));
              // Given, not lent: each frame its own buffer, header included with withHeader.
              if (!lend) expect(framed.buffer.byteLength).toBe(framed.byteLength);
              frames.push(f.slice());
            }
          } catch (err) {
            error = err;
            break;
          }
          expect(decoder.buffered).toBeLessThanOrEqual(4 + maxBytes);
        }
        const expected = reference(input, maxBytes);
        if (error !== null) {
          failures++;
          expect(error).toBeInstanceOf(StoaError);
          expect((error as StoaError).code).toBe("too_large");
          expect(expected.tooLarge).toBe(true);
          expect(decoder.buffered).toBeLessThanOrEqual(4);
          expect(() => decoder.push(new Uint8Array(1))).toThrow(StoaError);
        } else {
          expect(expected.tooLarge).toBe(false);
          expect(frames as Uint8Array[]).toEqual(expected.frames as Uint8Array[]);
          expect(decoder.buffered).toBe(expected.rest);
        }
      }
    } catch (err) {
      console.error(`frame fuzz failed: STOA_FUZZ_SEED=${seed}, iteration ${i}, input ${Buffer.from(input).toString("hex")}`);
      throw err;
    }
    expect(failures).toBeGreaterThan(1000);
    expect(failures).toBeLessThan(ITERATIONS - 1000);
  }, FUZZ_TIMEOUT_MS);

  test(`${ITERATIONS / 2} streams through pushViews in fresh chunks: the same frames, views only, the chunks never copied from but trickled ones`, () => {
    const seed = fuzzSeed(0xf4a3f);
    const rng = prng(seed);
    let i = 0;
    let input: Uint8Array = new Uint8Array(0);
    let asParts = 0;
    let gathered = 0;
    try {
      for (; i < ITERATIONS / 2; i++) {
        const roll = rng.int(10);
        input = roll < 7 ? mutate(rng, randomStream(rng)) : roll < 9 ? randomStream(rng) : rng.bytes(rng.int(100));
        const maxBytes = rng.pick([0, rng.int(64), rng.int(500), 1000]);
        const withHeader = rng.int(2) === 0;
        const decoder = new FrameDecoder({ maxBytes, views: true, withHeader });
        // Fresh chunks, as a socket's: each its own buffer.
        // A quarter of the streams trickle in 1-3 bytes a read: frames over MAX_FRAME_PARTS reads.
        const trickle = (data: Uint8Array) => {
          const out: Uint8Array[] = [];
          for (let at = 0; at < data.length; ) {
            const n = 1 + rng.int(3);
            out.push(data.subarray(at, at + n));
            at += n;
          }
          return out;
        };
        const chunks = (rng.int(4) === 0 ? trickle(input) : split(rng, input)).map((c) => c.slice());
        const buffers = new Set<ArrayBufferLike>(chunks.map((c) => c.buffer));
        const frames: Uint8Array[] = [];
        let error: unknown = null;
        for (const chunk of chunks) {
          try {
            for (const f of decoder.pushViews(chunk)) {
              let whole: Uint8Array;
              if (f instanceof Uint8Array) {
                // A view of a chunk, or (split over more than MAX_FRAME_PARTS reads, or a
                // withHeader empty frame whose header spanned reads) its own buffer.
                if (!buffers.has(f.buffer)) {
                  if (f.byteLength > 4) gathered++;
                  expect(f.buffer.byteLength).toBe(f.byteLength);
                }
                whole = f.slice();
              } else {
                const parts = (f as FrameParts).parts;
                asParts++;
                expect(parts.length).toBeGreaterThan(1);
                expect(parts.length).toBeLessThanOrEqual(MAX_FRAME_PARTS + 1);
                // Views of the chunks; only a header that spanned reads is a copy (4 bytes, first).
                parts.forEach((p, k) => expect(buffers.has(p.buffer) || (withHeader && k === 0 && p.byteLength === 4)).toBe(true));
                expect(parts.reduce((n, p) => n + p.byteLength, 0)).toBe(f.byteLength);
                whole = Buffer.concat(parts as Uint8Array[]);
              }
              if (withHeader) {
                const payload = whole.subarray(4);
                expect(Buffer.from(whole).equals(Buffer.from(encodeFrame(payload)))).toBe(true);
                whole = payload;
              }
              frames.push(whole);
            }
          } catch (err) {
            error = err;
            break;
          }
          expect(decoder.buffered).toBeLessThanOrEqual(4 + maxBytes);
        }
        const expected = reference(input, maxBytes);
        if (error !== null) {
          expect((error as StoaError).code).toBe("too_large");
          expect(expected.tooLarge).toBe(true);
        } else {
          expect(expected.tooLarge).toBe(false);
          expect(frames.map((f) => new Uint8Array(f)) as Uint8Array[]).toEqual(expected.frames as Uint8Array[]);
          expect(decoder.buffered).toBe(expected.rest);
        }
      }
    } catch (err) {
      console.error(`frame views fuzz failed: STOA_FUZZ_SEED=${seed}, iteration ${i}, input ${Buffer.from(input).toString("hex")}`);
      throw err;
    }
    // Both ways a split frame comes out were taken.
    expect(asParts).toBeGreaterThan(1000);
    expect(gathered).toBeGreaterThan(100);
  }, FUZZ_TIMEOUT_MS);
});
