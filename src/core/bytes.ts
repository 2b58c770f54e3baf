/**
 * Bytes without a zero fill, for a buffer the caller writes in full before anyone reads it (a
 * message encoded to its exact size, a payload gathered to its announced length). Its own
 * memory, not Buffer's shared pool, and a plain Uint8Array: `slice()` copies, as callers expect.
 * Small sizes are a plain `new Uint8Array`: the engine allocates those inline, and zeroing a few
 * KiB costs less than the three objects and the buffer lookup of an unfilled Buffer.
 */
export function uninitializedBytes(size: number): Uint8Array {
  if (size <= ZERO_FILL_BELOW) return new Uint8Array(size);
  const raw = Buffer.allocUnsafeSlow(size);
  return new Uint8Array(raw.buffer, raw.byteOffset, size);
}

/** Sizes up to this are zero-filled (see `uninitializedBytes`). */
const ZERO_FILL_BELOW = 4096;

/**
 * A copy of `bytes` in a plain Uint8Array of its own. `Uint8Array.prototype.slice` on a Buffer
 * (what Bun's sockets hand over) constructs through Buffer's species: a JS-level constructor
 * per copy.
 */
export function copyBytes(bytes: Uint8Array): Uint8Array {
  const out = uninitializedBytes(bytes.byteLength);
  out.set(bytes);
  return out;
}

/**
 * `value` (0..2^32-1) as 4 big-endian bytes at `at`, byte by byte: no DataView, whose
 * ArrayBuffer lookup costs more than the write (frame headers, HLNK and CBOR heads).
 */
export function putU32BE(out: Uint8Array, at: number, value: number): void {
  out[at] = value >>> 24;
  out[at + 1] = (value >>> 16) & 0xff;
  out[at + 2] = (value >>> 8) & 0xff;
  out[at + 3] = value & 0xff;
}
