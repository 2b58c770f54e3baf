import { describe, expect, test } from "bun:test";
import { BufferPool } from "../../src/supervisor/buffers.ts";
import { fuzzSeed, prng } from "../helpers/prng.ts";

describe("BufferPool", () => {
  test("take picks the smallest class that fits; views are the buffer's own bytes, 64-byte aligned, never overlapping", () => {
    const pool = new BufferPool([{ size: 2048, count: 2 }, { size: 128, count: 3 }]);
    expect(pool.size).toBe(5);
    const small = pool.take(100);
    expect(pool.view(small).length).toBe(128);
    const big = pool.take(1500);
    expect(pool.view(big).length).toBe(2048);
    const spans: [number, number][] = [];
    for (let i = 0; i < pool.size; i++) {
      const v = pool.view(i);
      expect(v.byteOffset % 64).toBe(0);
      spans.push([v.byteOffset, v.byteOffset + v.length]);
    }
    spans.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < spans.length; i++) expect(spans[i]![0]).toBeGreaterThanOrEqual(spans[i - 1]![1]);
    pool.view(small).fill(7);
    expect(pool.view(big).every((b) => b === 0)).toBe(true);
  });

  test("an empty class borrows from a larger one, then -1 with the exhaustion counted", () => {
    const pool = new BufferPool([{ size: 64, count: 1 }, { size: 256, count: 1 }]);
    expect(pool.take(10)).not.toBe(-1);
    expect(pool.view(pool.take(10)).length).toBe(256);
    expect(pool.take(10)).toBe(-1);
    expect(pool.take(1000)).toBe(-1);
    expect(pool.exhausted).toBe(2);
  });

  test("a buffer given back twice, never taken, or out of range throws: an ownership bug shows at once", () => {
    const pool = new BufferPool([{ size: 64, count: 2 }]);
    const b = pool.take(1);
    pool.give(b);
    expect(() => pool.give(b)).toThrow(/ownership bug/);
    expect(() => pool.give(pool.size)).toThrow(/no buffer/);
    expect(() => pool.give(-1)).toThrow(/no buffer/);
    expect(() => new BufferPool([])).toThrow();
    expect(() => new BufferPool([{ size: 0, count: 1 }])).toThrow();
  });

  test("random takes and gives keep every buffer with exactly one holder", () => {
    const rng = prng(fuzzSeed(5));
    const pool = new BufferPool([{ size: 64, count: 8 }, { size: 512, count: 4 }, { size: 2048, count: 2 }]);
    const held = new Set<number>();
    for (let i = 0; i < 100_000; i++) {
      if (held.size > 0 && rng.int(2) === 0) {
        const list = [...held];
        const b = list[rng.int(list.length)]!;
        pool.give(b);
        held.delete(b);
      } else {
        const b = pool.take(rng.int(2100));
        if (b === -1) continue;
        expect(held.has(b)).toBe(false);
        held.add(b);
      }
      if (i % 1000 === 0) expect(pool.freeCounts().reduce((a, n) => a + n, 0) + held.size).toBe(pool.size);
    }
  });
});
