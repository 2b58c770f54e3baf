/**
 * A seeded PRNG and a byte mutator for fuzz tests, so every failure can be replayed.
 *
 * Fuzz tests use `fuzzSeed(default)`: the fixed default keeps CI deterministic, and
 * `STOA_FUZZ_SEED=<u32>` explores other inputs. Report the seed (and iteration) on failure.
 */

/** A deterministic random source (mulberry32: small, fast, good enough for fuzzing). */
export interface Prng {
  readonly seed: number;
  /** A uniformly random unsigned 32-bit integer. */
  next(): number;
  /** A uniformly random integer in [0, n). */
  int(n: number): number;
  /** `n` random bytes. */
  bytes(n: number): Uint8Array;
  /** A random element of a non-empty array. */
  pick<T>(items: readonly T[]): T;
}

/** Creates a PRNG; the same seed always gives the same sequence. */
export function prng(seed: number): Prng {
  let state = seed >>> 0;
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
  const int = (n: number): number => Math.floor((next() / 0x1_0000_0000) * n);
  return {
    seed: seed >>> 0,
    next,
    int,
    bytes(n) {
      const out = new Uint8Array(n);
      for (let i = 0; i < n; i++) out[i] = next() & 0xff;
      return out;
    },
    pick<T>(items: readonly T[]): T {
      if (items.length === 0) throw new Error("pick from an empty array");
      return items[int(items.length)] as T;
    },
  };
}

/** The seed for a fuzz test: `STOA_FUZZ_SEED` when set, else the test's fixed default. */
export function fuzzSeed(fallback: number): number {
  const fromEnv = process.env.STOA_FUZZ_SEED;
  if (fromEnv === undefined || fromEnv === "") return fallback >>> 0;
  const seed = Number(fromEnv);
  if (!Number.isInteger(seed)) throw new Error(`STOA_FUZZ_SEED must be an integer, got ${fromEnv}`);
  return seed >>> 0;
}

// Bytes that tend to hit edge cases in length fields and type tags.
const INTERESTING = [0x00, 0x01, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1f, 0x7f, 0x80, 0x9f, 0xbf, 0xff];

/**
 * Returns a mutated copy of `input` (the input is not changed): 1–4 of bit flips, random or
 * interesting bytes, truncation, insertion, deletion, duplication of a slice, or a random
 * big-endian 32-bit value written over 4 bytes (a plausible-looking length).
 */
export function mutate(rng: Prng, input: Uint8Array): Uint8Array {
  let data: Uint8Array = input.slice();
  const rounds = 1 + rng.int(4);
  for (let r = 0; r < rounds; r++) {
    const at = rng.int(data.length + 1);
    switch (rng.int(8)) {
      case 0: // flip a bit
        if (data.length > 0) flip(data, rng.int(data.length), rng.int(8));
        break;
      case 1: // set a byte
        if (at < data.length) data[at] = rng.int(2) === 0 ? rng.next() & 0xff : rng.pick(INTERESTING);
        break;
      case 2: // truncate
        data = data.slice(0, rng.int(data.length + 1));
        break;
      case 3: // insert random bytes
        data = concat(data.subarray(0, at), rng.bytes(1 + rng.int(8)), data.subarray(at));
        break;
      case 4: {
        // delete a range
        const len = 1 + rng.int(8);
        data = concat(data.subarray(0, at), data.subarray(at + len));
        break;
      }
      case 5: {
        // duplicate a slice in place
        const len = rng.int(Math.min(16, data.length - at) + 1);
        data = concat(data.subarray(0, at + len), data.subarray(at, at + len), data.subarray(at + len));
        break;
      }
      case 6: {
        // write a random big-endian u32, biased towards small and huge values
        if (data.length < 4) break;
        const pos = rng.int(data.length - 3);
        const value = rng.pick([rng.int(256), rng.int(65536), rng.next(), 0xffffffff, 0x7fffffff]);
        new DataView(data.buffer, data.byteOffset, data.byteLength).setUint32(pos, value);
        break;
      }
      default: // append an interesting byte
        data = concat(data, Uint8Array.of(rng.pick(INTERESTING)));
    }
  }
  return data;
}

function flip(data: Uint8Array, index: number, bit: number): void {
  data[index] = (data[index] ?? 0) ^ (1 << bit);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}
