import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import { ReorderBuffer } from "../../src/hotlink/reorder.ts";
import { type Prng, fuzzSeed, prng } from "../helpers/prng.ts";

/** The random-input tests: about 0.25 s each on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const RANDOM_ROUNDS_TIMEOUT_MS = 20_000;

/** A payload that says which frame it is. */
function frame(seq: number, size = 4): Uint8Array {
  const out = new Uint8Array(Math.max(4, size));
  new DataView(out.buffer).setUint32(0, seq);
  return out;
}

function seqOf(payload: Uint8Array): number {
  return new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getUint32(0);
}

function pushAll(buffer: ReorderBuffer, seqs: number[]): number[] {
  const out: number[] = [];
  for (const seq of seqs) for (const payload of buffer.push(seq, frame(seq))) out.push(seqOf(payload));
  return out;
}

function tooLarge(fn: () => unknown): StoaError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("too_large");
    return err as StoaError;
  }
  throw new Error("expected a too_large error");
}

const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe("in-order frames", () => {
  test("delivers each frame at once, the same payload object, and advances nextSeq", () => {
    const buffer = new ReorderBuffer({ maxFrames: 8, maxBytes: 1024 });
    expect(buffer.nextSeq).toBe(1);
    for (let seq = 1; seq <= 100; seq++) {
      const payload = frame(seq, 10);
      const out = buffer.push(seq, payload);
      expect(out).toHaveLength(1);
      expect(out[0]).toBe(payload);
    }
    expect(buffer.nextSeq).toBe(101);
    expect(buffer.delivered).toBe(100);
    expect(buffer.deliveredBytes).toBe(1000);
    expect(buffer.duplicates).toBe(0);
    expect(buffer.reordered).toBe(0);
    expect(buffer.maxBuffered).toBe(0);
  });

  test("starts at firstSeq", () => {
    const buffer = new ReorderBuffer({ maxFrames: 4, maxBytes: 1024, firstSeq: 0 });
    expect(pushAll(buffer, [1, 0, 2])).toEqual([0, 1, 2]);
  });

  test("accepts bigint seqs as CBOR may decode u64 fields", () => {
    const buffer = new ReorderBuffer({ maxFrames: 4, maxBytes: 1024 });
    expect(buffer.push(2n, frame(2))).toEqual([]);
    expect(buffer.push(1n, frame(1)).map(seqOf)).toEqual([1, 2]);
  });
});

describe("out-of-order frames", () => {
  test("holds frames until the gap closes, then flushes them in order", () => {
    const buffer = new ReorderBuffer({ maxFrames: 8, maxBytes: 1024 });
    expect(buffer.push(3, frame(3))).toEqual([]);
    expect(buffer.push(2, frame(2))).toEqual([]);
    expect(buffer.bufferedFrames).toBe(2);
    expect(buffer.bufferedBytes).toBe(8);
    expect(buffer.push(1, frame(1)).map(seqOf)).toEqual([1, 2, 3]);
    expect(buffer.bufferedFrames).toBe(0);
    expect(buffer.bufferedBytes).toBe(0);
    expect(buffer.nextSeq).toBe(4);
    expect(buffer.maxBuffered).toBe(2);
    expect(buffer.reordered).toBe(2);
  });

  test("flushes only up to the next gap", () => {
    const buffer = new ReorderBuffer({ maxFrames: 8, maxBytes: 1024 });
    expect(pushAll(buffer, [2, 4, 5, 1])).toEqual([1, 2]);
    expect(buffer.nextSeq).toBe(3);
    expect(buffer.bufferedFrames).toBe(2);
    expect(pushAll(buffer, [3])).toEqual([3, 4, 5]);
  });

  test("keeps working as the window wraps around the ring many times", () => {
    const buffer = new ReorderBuffer({ maxFrames: 3, maxBytes: 1024 });
    const order: number[] = [];
    for (let base = 1; base < 300; base += 3) order.push(base + 2, base + 1, base);
    expect(pushAll(buffer, order)).toEqual(range(1, 300));
  });
});

describe("duplicates", () => {
  test("drops a seq already delivered and counts it", () => {
    const buffer = new ReorderBuffer({ maxFrames: 8, maxBytes: 1024 });
    expect(pushAll(buffer, [1, 2, 1, 2, 3, 1])).toEqual([1, 2, 3]);
    expect(buffer.duplicates).toBe(3);
    expect(buffer.delivered).toBe(3);
  });

  test("drops a seq already held, keeping the first copy", () => {
    const buffer = new ReorderBuffer({ maxFrames: 8, maxBytes: 1024 });
    const first = frame(2);
    expect(buffer.push(2, first)).toEqual([]);
    expect(buffer.push(2, frame(2))).toEqual([]);
    expect(buffer.duplicates).toBe(1);
    expect(buffer.bufferedFrames).toBe(1);
    const out = buffer.push(1, frame(1));
    expect(out[1]).toBe(first);
  });
});

/** `1..n` shuffled only within a sliding distance, so at most `window` frames are early at once. */
function localShuffle(rng: Prng, n: number, window: number): number[] {
  const order = range(1, n);
  for (let i = 0; i < n; i++) {
    const j = Math.min(n - 1, i + rng.int(window));
    [order[i], order[j]] = [order[j] as number, order[i] as number];
  }
  return order;
}

/** Inserts copies of already-sent seqs at later random positions. */
function withDuplicates(rng: Prng, order: number[], count: number): number[] {
  const out = order.slice();
  for (let k = 0; k < count; k++) {
    const at = rng.int(out.length);
    out.splice(at + 1 + rng.int(out.length - at), 0, out[at] as number);
  }
  return out;
}

describe("random permutations with duplicates", () => {
  test("deliver exactly the original order, every frame once", () => {
    const seed = fuzzSeed(0x5e9);
    const rng = prng(seed);
    for (let iteration = 0; iteration < 500; iteration++) {
      const n = 1 + rng.int(300);
      const fullyRandom = rng.int(4) === 0;
      const order = fullyRandom ? localShuffle(rng, n, n) : localShuffle(rng, n, 1 + rng.int(16));
      const arrivals = withDuplicates(rng, order, rng.int(n));
      // Enough room for any permutation: a frame is never more than n ahead.
      const buffer = new ReorderBuffer({ maxFrames: n, maxBytes: n * 4 });
      const context = `seed ${seed} iteration ${iteration}`;
      expect({ context, out: pushAll(buffer, arrivals) }).toEqual({ context, out: range(1, n) });
      expect({ context, duplicates: buffer.duplicates }).toEqual({ context, duplicates: arrivals.length - n });
      expect(buffer.bufferedFrames).toBe(0);
      expect(buffer.bufferedBytes).toBe(0);
      expect(buffer.nextSeq).toBe(n + 1);
    }
  }, RANDOM_ROUNDS_TIMEOUT_MS);
});

describe("overflow", () => {
  test("accepts a seq exactly maxFrames ahead and refuses one further", () => {
    const buffer = new ReorderBuffer({ maxFrames: 4, maxBytes: 1024 });
    expect(buffer.push(5, frame(5))).toEqual([]);
    const err = tooLarge(() => buffer.push(6, frame(6)));
    expect(err.message).toContain("seq 6");
    expect(err.message).toContain("missing seq 1");
  });

  test("holds at most maxFrames frames", () => {
    const buffer = new ReorderBuffer({ maxFrames: 4, maxBytes: 1024 });
    expect(pushAll(buffer, [2, 3, 4, 5])).toEqual([]);
    expect(buffer.bufferedFrames).toBe(4);
    tooLarge(() => buffer.push(6, frame(6)));
  });

  test("refuses a frame that would put the held bytes over maxBytes", () => {
    const buffer = new ReorderBuffer({ maxFrames: 100, maxBytes: 100 });
    expect(buffer.push(2, frame(2, 60))).toEqual([]);
    const err = tooLarge(() => buffer.push(3, frame(3, 41)));
    expect(err.message).toContain("100 bytes");
  });

  test("does not count in-order frames against maxBytes", () => {
    const buffer = new ReorderBuffer({ maxFrames: 4, maxBytes: 10 });
    expect(buffer.push(1, frame(1, 1000))).toHaveLength(1);
  });

  test("stays failed: every later push throws the same error", () => {
    const buffer = new ReorderBuffer({ maxFrames: 2, maxBytes: 1024 });
    const err = tooLarge(() => buffer.push(10, frame(10)));
    expect(buffer.error).toBe(err);
    expect(() => buffer.push(1, frame(1))).toThrow(err);
    expect(buffer.bufferedFrames).toBe(0);
  });
});

describe("bad input", () => {
  test("refuses a seq that is not a non-negative safe integer without failing the buffer", () => {
    const buffer = new ReorderBuffer({ maxFrames: 4, maxBytes: 1024 });
    for (const seq of [-1, 1.5, Number.NaN, 2 ** 53, -1n, 2n ** 64n]) {
      try {
        buffer.push(seq, frame(1));
        throw new Error(`accepted ${String(seq)}`);
      } catch (err) {
        expect((err as StoaError).code).toBe("schema");
      }
    }
    expect(buffer.push(1, frame(1))).toHaveLength(1);
  });

  test("refuses options out of range", () => {
    for (const options of [
      { maxFrames: 0, maxBytes: 1 },
      { maxFrames: 2 ** 30, maxBytes: 1 },
      { maxFrames: 1, maxBytes: -1 },
      { maxFrames: 1, maxBytes: 1, firstSeq: -1 },
    ]) {
      expect(() => new ReorderBuffer(options)).toThrow(StoaError);
    }
  });
});

describe("takeNext: the in-order case without an array", () => {
  test("takes only the seq expected next with nothing held, and counts it as push would", () => {
    const r = new ReorderBuffer({ maxFrames: 8, maxBytes: 1 << 20 });
    expect(r.takeNext(1, 10)).toBe(true);
    expect(r.takeNext(1, 10)).toBe(false); // a duplicate: for push to count
    expect(r.takeNext(3, 10)).toBe(false); // ahead: for push to hold
    expect(r.push(3, new Uint8Array(10))).toEqual([]);
    expect(r.takeNext(2, 10)).toBe(false); // the gap's frame, but 3 is held: push delivers both
    expect(r.push(2, new Uint8Array(10)).length).toBe(2);
    expect(r.takeNext(4, 5)).toBe(true);
    expect(r.nextSeq).toBe(5);
    expect(r.delivered).toBe(4);
    expect(r.deliveredBytes).toBe(35);
  });
});
