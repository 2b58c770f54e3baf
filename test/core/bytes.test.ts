import { describe, expect, test } from "bun:test";
import { ptr } from "bun:ffi";
import { copyBytes, copyInto, copyRange, putU32BE, uninitializedBytes } from "../../src/core/bytes.ts";

/** A deterministic byte pattern, different for each `seed`. */
function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed * 2654435761 + 1;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

/** The offset into `dst` at which a copy from `src` has `dst − src` ≡ `distance` (mod 4 KiB). */
function offsetAt(dst: Uint8Array, src: Uint8Array, distance: number): number {
  return (((ptr(src) + distance - ptr(dst)) % 4096) + 4096) % 4096;
}

describe("copyInto", () => {
  test("copies exactly, leaving the bytes around the destination alone, for every distance class", () => {
    // Sizes below the check, one piece, and several bounce pieces (64 KiB each) with a partial last one.
    for (const size of [0, 1, 100, 1023, 1024, 4097, 65_536, 65_540, 200_003]) {
      for (const distance of [0, 1, 4, 31, 32, 63, 64, 65, 2048, 4095]) {
        const backing = pattern(size + 16_384, size + distance);
        const src = backing.subarray(3, 3 + size);
        const dst = new Uint8Array(size + 16_384).fill(0xa5);
        const at = size === 0 ? 0 : offsetAt(dst, src, distance);
        if (size > 0) expect((ptr(dst, at) - ptr(src)) & 4095).toBe(distance);
        copyInto(dst, at, src);
        expect(Buffer.from(dst.subarray(at, at + size)).equals(Buffer.from(src))).toBe(true);
        expect(dst.subarray(0, at).every((b) => b === 0xa5)).toBe(true);
        expect(dst.subarray(at + size).every((b) => b === 0xa5)).toBe(true);
      }
    }
  });

  test("random sources, destinations and offsets (views of Buffers and of plain arrays)", () => {
    for (let i = 0; i < 300; i++) {
      const size = (i * 7919) % 150_000;
      const base = i % 2 === 0 ? Buffer.allocUnsafe(size + 5000) : new Uint8Array(size + 5000);
      const src = base.subarray(i % 97, (i % 97) + size);
      src.set(pattern(size, i));
      const dst = uninitializedBytes(size + 5000);
      const at = (i * 31) % 4900;
      copyInto(dst, at, src);
      expect(Buffer.compare(dst.subarray(at, at + size), src)).toBe(0);
    }
  });

  test("a destination past its end throws as set does", () => {
    const src = pattern(2000, 1);
    expect(() => copyInto(new Uint8Array(1500), 0, src)).toThrow(RangeError);
    expect(() => copyInto(new Uint8Array(3000), 1500, src)).toThrow(RangeError);
  });
});

describe("copyBytes, uninitializedBytes, putU32BE", () => {
  test("copyBytes gives its own plain copy", () => {
    for (const size of [0, 10, 4096, 70_000]) {
      const src = Buffer.from(pattern(size, size));
      const copy = copyBytes(src);
      expect(copy.constructor).toBe(Uint8Array);
      expect(Buffer.compare(copy, src)).toBe(0);
      if (size > 0) {
        src[0] = (src[0] ?? 0) ^ 0xff;
        expect(copy[0]).not.toBe(src[0]);
      }
    }
  });

  test("uninitializedBytes has the size asked for, small sizes zeroed", () => {
    expect(uninitializedBytes(4096).every((b) => b === 0)).toBe(true);
    expect(uninitializedBytes(100_000).byteLength).toBe(100_000);
    expect(uninitializedBytes(0).byteLength).toBe(0);
  });

  test("putU32BE writes big-endian", () => {
    const out = new Uint8Array(6);
    putU32BE(out, 1, 0xdeadbeef);
    expect([...out]).toEqual([0, 0xde, 0xad, 0xbe, 0xef, 0]);
  });
});

describe("copyRange", () => {
  test("copies a range of a Buffer or a plain Uint8Array, short (no view) and long (through copyInto), to any offset", () => {
    for (const n of [0, 1, 100, 1023, 1024, 5000, 70_000]) {
      const plain = Uint8Array.from({ length: n + 30 }, (_, i) => (i * 7 + 3) & 0xff);
      for (const src of [plain, Buffer.from(plain)]) {
        for (const at of [0, 1, 63, 4096 - 5]) {
          const dst = new Uint8Array(at + n + 8).fill(0xee);
          copyRange(dst, at, src, 13, 13 + n);
          expect(Buffer.from(dst.subarray(at, at + n)).equals(Buffer.from(plain.subarray(13, 13 + n)))).toBe(true);
          expect(dst.subarray(0, at).every((b) => b === 0xee)).toBe(true);
          expect(dst.subarray(at + n).every((b) => b === 0xee)).toBe(true);
        }
      }
    }
  });

  test("a range outside the source or past the destination throws RangeError and writes nothing", () => {
    const src = new Uint8Array(10).fill(1);
    const dst = new Uint8Array(10);
    expect(() => copyRange(dst, 0, src, 5, 11)).toThrow(RangeError);
    expect(() => copyRange(dst, 0, src, -1, 3)).toThrow(RangeError);
    expect(() => copyRange(dst, 0, src, 6, 5)).toThrow(RangeError);
    expect(() => copyRange(dst, 8, src, 0, 3)).toThrow(RangeError);
    expect(dst.every((b) => b === 0)).toBe(true);
  });
});
