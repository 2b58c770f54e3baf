import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import {
  HLNK_HEADER_BYTES,
  type HlnkFrame,
  type HlnkLimits,
  HlnkDecoder,
  decodeHlnkOne,
  encodeHlnk,
} from "../../src/hotlink/hlnk.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const ITERATIONS = 100_000;
/** The longest test here takes about 3.8 s on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const FUZZ_TIMEOUT_MS = 60_000;

interface Run {
  frames: HlnkFrame[];
  /** Each run of skipped bytes with the number of frames decoded before it. */
  garbage: { before: number; bytes: Uint8Array }[];
  skipped: number;
  resyncs: number;
  buffered: number;
}

function decode(chunks: Uint8Array[], limits: HlnkLimits): Run {
  const garbage: Run["garbage"] = [];
  const decoder: HlnkDecoder = new HlnkDecoder({
    ...limits,
    views: (chunks.length & 1) === 1, // both modes over the runs: the chunks are never written

    onGarbage: (bytes) => garbage.push({ before: decoder.frames, bytes: bytes.slice() }),
  });
  const frames = chunks.flatMap((chunk) => decoder.push(chunk)).map(plainFrame);
  return { frames, garbage, skipped: decoder.skipped, resyncs: decoder.resyncs, buffered: decoder.buffered };
}

/** A frame as a plain object (a views decoder's frame spanning chunks holds `parts`; checked here). */
function plainFrame(f: HlnkFrame): HlnkFrame {
  if (f.parts !== undefined) {
    expect(f.parts.length).toBeGreaterThanOrEqual(2);
    expect(f.parts.reduce((n, p) => n + p.byteLength, 0)).toBe(f.payloadLength ?? -1);
    expect(f.payload).toEqual(concat([...f.parts]));
  }
  return { path: f.path, etag: f.etag, seq: f.seq, payload: f.payload };
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

/** Garbage and re-encoded frames in stream order: must give back the input, less what is
 * still buffered. */
function reconstruct(run: Run, limits: HlnkLimits): Uint8Array {
  const parts: Uint8Array[] = [];
  let g = 0;
  for (let i = 0; i <= run.frames.length; i++) {
    for (; g < run.garbage.length && (run.garbage[g]?.before ?? 0) <= i; g++) parts.push(run.garbage[g]?.bytes ?? new Uint8Array(0));
    const frame = run.frames[i];
    if (frame !== undefined) parts.push(encodeHlnk(frame, limits));
  }
  return concat(parts);
}

function randomStream(rng: Prng, limits: HlnkLimits): Uint8Array {
  const parts: Uint8Array[] = [];
  for (let n = rng.int(5); n > 0; n--) {
    if (rng.int(6) === 0) parts.push(rng.bytes(rng.int(12)));
    parts.push(
      encodeHlnk(
        {
          path: pickFitting(rng, ["", "a", "alice/mpc/0_to_1", "ü/🚀"], limits.maxPathBytes),
          etag: pickFitting(rng, ["", "e", "etag-1", "é"], limits.maxEtagBytes),
          seq: rng.pick([0n, 1n, BigInt(rng.next()), 2n ** 64n - 1n]),
          payload: rng.bytes(Math.min(rng.pick([0, 1, rng.int(40), rng.int(300)]), limits.maxPayloadBytes ?? 300)),
        },
        limits,
      ),
    );
  }
  return concat(parts);
}

function pickFitting(rng: Prng, texts: string[], maxBytes = Infinity): string {
  return rng.pick(texts.filter((text) => Buffer.byteLength(text) <= maxBytes));
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

describe("HLNK decoder fuzzing", () => {
  test(`${ITERATIONS} random and mutated streams never throw, and every byte is a frame, garbage or buffered`, () => {
    const seed = fuzzSeed(0x4c4e4b);
    const rng = prng(seed);
    let i = 0;
    let input: Uint8Array = new Uint8Array(0);
    let framesSeen = 0;
    let garbageSeen = 0;
    try {
      for (; i < ITERATIONS; i++) {
        const limits: HlnkLimits =
          rng.int(2) === 0 ? {} : { maxPathBytes: 1 + rng.int(24), maxEtagBytes: rng.int(8), maxPayloadBytes: rng.int(200) };
        const roll = rng.int(10);
        input = roll < 6 ? mutate(rng, randomStream(rng, limits)) : roll < 8 ? randomStream(rng, limits) : rng.bytes(rng.int(100));

        const whole = decode([input], limits);
        const headMax = HLNK_HEADER_BYTES + (limits.maxPathBytes ?? 4096) + (limits.maxEtagBytes ?? 128);
        expect(whole.buffered).toBeLessThanOrEqual(Math.max(headMax, HLNK_HEADER_BYTES + 4096 + 128 + (limits.maxPayloadBytes ?? 300)));
        expect(reconstruct(whole, limits)).toEqual(input.subarray(0, input.length - whole.buffered));
        expect(whole.skipped).toBe(whole.garbage.reduce((n, g) => n + g.bytes.length, 0));

        // However the stream is cut, the decoder finds the same frames and skips the same bytes.
        const pieces = decode(split(rng, input), limits);
        expect(pieces.frames).toEqual(whole.frames);
        expect(pieces.skipped).toBe(whole.skipped);
        expect(pieces.resyncs).toBe(whole.resyncs);
        expect(pieces.buffered).toBe(whole.buffered);
        expect(concat(pieces.garbage.map((g) => g.bytes))).toEqual(concat(whole.garbage.map((g) => g.bytes)));

        // A message decoder accepts exactly the inputs that are one frame and nothing else.
        let one: HlnkFrame | null = null;
        try {
          one = decodeHlnkOne(input, limits);
        } catch (err) {
          expect(err).toBeInstanceOf(StoaError);
          expect(["decode", "too_large"]).toContain((err as StoaError).code);
        }
        const isOne = whole.frames.length === 1 && whole.skipped === 0 && whole.buffered === 0;
        expect(one === null ? null : [one]).toEqual(isOne ? whole.frames : null);

        framesSeen += whole.frames.length;
        garbageSeen += whole.resyncs;
      }
    } catch (err) {
      console.error(`HLNK fuzz failed: STOA_FUZZ_SEED=${seed}, iteration ${i}, input ${Buffer.from(input).toString("hex")}`);
      throw err;
    }
    // The inputs exercised both paths a lot.
    expect(framesSeen).toBeGreaterThan(ITERATIONS);
    expect(garbageSeen).toBeGreaterThan(ITERATIONS / 4);
  }, FUZZ_TIMEOUT_MS);
});
