import { ptr } from "bun:ffi";

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
  copyInto(out, 0, bytes);
  return out;
}

/**
 * Copies `src[start, end)` to `dst` at `at`. A short range is copied with no view of `src`
 * made: the first view of a fresh Bun read gives it an ArrayBuffer of its own (~0.6 µs here,
 * and garbage), which a small frame forwarded from the read it came in would pay for nothing
 * (Node's Buffer copy takes any Uint8Array). A long one goes through `copyInto` (its aliasing
 * rule), where a view costs little beside the copy. Throws RangeError when it does not fit.
 */
export function copyRange(dst: Uint8Array, at: number, src: Uint8Array, start: number, end: number): void {
  const n = end - start;
  if (!(start >= 0 && n >= 0 && end <= src.byteLength && at >= 0 && at + n <= dst.byteLength)) {
    throw new RangeError(`copyRange: ${n} bytes from ${start} to ${at} do not fit ${src.byteLength} → ${dst.byteLength}`);
  }
  if (n >= ALIAS_CHECKED_FROM) copyInto(dst, at, src.subarray(start, end));
  else if (n > 0) bufferCopy.call(src, dst, at, start, end);
}

const bufferCopy = Buffer.prototype.copy as (this: Uint8Array, target: Uint8Array, targetStart: number, sourceStart: number, sourceEnd: number) => number;

/** Page size of the aliasing rule in `copyInto` (x86's 4 KiB store-to-load check). */
const ALIAS_PAGE = 4096;
/** A destination this few bytes ahead of the source, modulo `ALIAS_PAGE`, takes the slow copy. */
const ALIAS_WINDOW = 64;
/** Copies below this go straight to `set`: the slow case costs little on them. */
const ALIAS_CHECKED_FROM = 1024;
/** The bounce buffer's size: a copy goes through it in pieces of this many bytes. */
const BOUNCE_BYTES = 64 * 1024;
let bounce: Uint8Array | null = null;

/**
 * `dst.set(src, at)`, at full speed whatever the two addresses are. The engine's copy (rep movsb)
 * runs 12–16× slower when the destination is 1–63 bytes ahead of the source modulo 4 KiB, each
 * load waiting on the store before it (measured here: 64 KiB in 22 µs against 1.5 µs). That
 * is no corner case on a data path: a frame's payload copied to offset 4 of a fresh buffer
 * from a page-aligned socket chunk lands there. Such a copy goes through a bounce buffer placed
 * half a page away from both: two fast copies instead of one slow one. `src` must not overlap
 * `dst` (use `copyWithin` inside one buffer).
 */
export function copyInto(dst: Uint8Array, at: number, src: Uint8Array): void {
  const n = src.byteLength;
  if (n < ALIAS_CHECKED_FROM) {
    dst.set(src, at);
    return;
  }
  // set's own check, made before any piece below is written.
  if (!(at >= 0 && at + n <= dst.byteLength)) throw new RangeError(`copyInto: ${n} bytes at ${at} do not fit ${dst.byteLength}`);
  const from = ptr(src);
  // `&` works on the low 32 bits, which hold the distance modulo a page.
  const distance = (ptr(dst, at) - from) & (ALIAS_PAGE - 1);
  if (distance === 0 || distance >= ALIAS_WINDOW) {
    dst.set(src, at);
    return;
  }
  bounce ??= new Uint8Array(BOUNCE_BYTES + ALIAS_PAGE);
  // Half a page from the source (pieces start a whole number of pages into it, so one offset
  // serves all), so half a page from the destination too.
  const o = (from + ALIAS_PAGE / 2 - ptr(bounce)) & (ALIAS_PAGE - 1);
  for (let done = 0; done < n; done += BOUNCE_BYTES) {
    const size = Math.min(BOUNCE_BYTES, n - done);
    bounce.set(src.subarray(done, done + size), o);
    dst.set(bounce.subarray(o, o + size), at + done);
  }
}

/** A new buffer of `length` bytes with `parts` one after another from its start (past their sum it is left unwritten). */
export function joinBytes(parts: readonly Uint8Array[], length: number): Uint8Array {
  const joined = uninitializedBytes(length);
  let at = 0;
  for (const part of parts) {
    copyInto(joined, at, part);
    at += part.byteLength;
  }
  return joined;
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
