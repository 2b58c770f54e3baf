import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import { parseRights } from "../../src/ffi/fdpass.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const ITERATIONS = 100_000;
/** About 1.7 s on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const FUZZ_TIMEOUT_MS = 30_000;
/** Bytes after the view given to the parser: reading them would change its answer or throw a RangeError. */
const GUARD_BYTES = 64;

/** Random control data in the kernel's shape (fdpass.ts header), and the descriptors it holds. */
function wellFormed(rng: Prng): { bytes: Uint8Array; fds: number[] } {
  const parts: Uint8Array[] = [];
  const fds: number[] = [];
  const count = rng.int(4);
  for (let i = 0; i < count; i++) {
    const n = rng.int(17);
    const len = 16 + n * 4;
    const last = i === count - 1;
    const part = new Uint8Array(last && rng.int(2) === 0 ? len : (len + 7) & ~7);
    const v = new DataView(part.buffer);
    v.setBigUint64(0, BigInt(len), true);
    v.setInt32(8, 1, true); // SOL_SOCKET
    v.setInt32(12, 1, true); // SCM_RIGHTS
    for (let j = 0; j < n; j++) {
      const fd = rng.pick([rng.int(1024), rng.next() >>> 1, 0x7fffffff]);
      v.setInt32(16 + j * 4, fd, true);
      fds.push(fd);
    }
    parts.push(part);
  }
  const bytes = new Uint8Array(parts.reduce((sum, p) => sum + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.byteLength;
  }
  return { bytes, fds };
}

/** `bytes` as a view into a larger buffer whose trailing guard bytes look like one more header. */
function guarded(rng: Prng, bytes: Uint8Array): Uint8Array {
  const backing = new Uint8Array(bytes.byteLength + GUARD_BYTES);
  backing.set(bytes);
  const guard = new DataView(backing.buffer, bytes.byteLength);
  guard.setUint32(0, 24, true);
  guard.setInt32(8, 1, true);
  guard.setInt32(12, 1, true);
  guard.setInt32(16, 1 + rng.int(1000), true);
  return backing.subarray(0, bytes.byteLength);
}

/** The parser's answer: the descriptors, or the decode error (with what it had seen). Any other throw fails the test. */
function run(bytes: Uint8Array): { fds: number[]; error: boolean } {
  const into: number[] = [];
  try {
    parseRights(bytes, into);
    return { fds: into, error: false };
  } catch (err) {
    if (!(err instanceof StoaError) || err.code !== "decode") throw err;
    return { fds: into, error: true };
  }
}

describe("parseRights fuzz", () => {
  test(
    "well-formed control data gives exactly its descriptors; mutated data gives descriptors it holds or a decode error, never another throw",
    () => {
      const seed = fuzzSeed(0x5c3a_f00d);
      const rng = prng(seed);
      let errors = 0;
      for (let i = 0; i < ITERATIONS; i++) {
        const { bytes, fds } = wellFormed(rng);
        const context = `seed ${seed}, iteration ${i}`;
        const clean = run(guarded(rng, bytes));
        if (clean.error || clean.fds.join() !== fds.join()) throw new Error(`${context}: well-formed input gave ${JSON.stringify(clean)}, want ${fds.join()}`);
        const input = rng.int(4) === 0 ? rng.bytes(rng.int(200)) : mutate(rng, bytes);
        const got = run(guarded(rng, input));
        if (got.error) errors++;
        // Each descriptor is 4 bytes of the input after a 16-byte header: never more than fit in it.
        if (got.fds.length > Math.max(0, (input.byteLength - 16) / 4)) throw new Error(`${context}: ${got.fds.length} descriptors from ${input.byteLength} bytes`);
        if (got.fds.some((fd) => !Number.isInteger(fd) || fd < 0)) throw new Error(`${context}: a negative descriptor was accepted`);
      }
      // The mutations reach the error paths, not only the happy one.
      expect(errors).toBeGreaterThan(ITERATIONS / 10);
    },
    FUZZ_TIMEOUT_MS,
  );
});
