/**
 * Bytes without a zero fill, for a buffer the caller writes in full before anyone reads it (a
 * message encoded to its exact size, a payload gathered to its announced length). Its own
 * memory, not Buffer's shared pool, and a plain Uint8Array: `slice()` copies, as callers expect.
 */
export function uninitializedBytes(size: number): Uint8Array {
  const raw = Buffer.allocUnsafeSlow(size);
  return new Uint8Array(raw.buffer, raw.byteOffset, size);
}
