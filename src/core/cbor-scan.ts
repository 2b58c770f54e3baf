/**
 * The well-formedness scan behind src/core/codec.ts: walks bytes as exactly one CBOR item of
 * stoa's data model (see codec.ts) without building values, so cbor-x only ever decodes what
 * stoa allows. Iterative, every length checked against the bytes present, nothing allocated
 * that a peer can inflate.
 */
import { Buffer, isUtf8 } from "node:buffer";

/** Deepest nesting of arrays and maps. No stoa message comes near it; cbor-x reads
 * recursively, so the limit also keeps a hostile message from exhausting the stack. */
const MAX_DEPTH = 64;

/** Largest bignum (tags 2/3) payload: 64 bytes = 512 bits. cbor-x builds a bignum with one
 * shift per byte, quadratic in its length, so an unbounded one would be a CPU bomb. */
const MAX_BIGNUM_BYTES = 64;

const PROTO_KEY = "__proto__";

/** Strings longer than this are checked by the native UTF-8 validator; shorter ones in JS,
 * which avoids a native call per map key and short value. */
const NATIVE_UTF8_FROM = 64;

/**
 * Walks the bytes as exactly one CBOR item of stoa's data model, without building values.
 * Returns null when they are acceptable, or the reason they are not. It runs before cbor-x
 * sees the bytes, so cbor-x only ever decodes what we allow. Iterative, with every length
 * checked against the bytes actually present, so it allocates nothing a peer can inflate.
 */
export function checkWellFormed(bytes: Uint8Array): string | null {
  const end = bytes.byteLength;
  // Items still expected in each open container; the root is a one-item "array".
  const remaining: number[] = [1];
  // For each open container: where its keys start in `keys`, or -1 for an array.
  const keysFrom: number[] = [-1];
  // [offset, length] of every key of the open maps, innermost map last. A closed inner map's
  // keys are dropped, so each open map's keys stay contiguous.
  const keys: number[] = [];
  // For an open map with many keys, by depth: its keys as latin1 strings (see MANY_KEYS).
  const keySets = new Map<number, Set<string>>();
  let pos = 0;
  while (remaining.length > 0) {
    const top = remaining.length - 1;
    const left = remaining[top] ?? 0;
    const from = keysFrom[top] ?? -1;
    if (left === 0) {
      remaining.pop();
      keysFrom.pop();
      if (from >= 0) {
        keys.length = from;
        keySets.delete(top);
      }
      continue;
    }
    const isKey = from >= 0 && left % 2 === 0;
    remaining[top] = left - 1;

    const start = pos;
    const initial = bytes[pos];
    if (initial === undefined) return `truncated at byte ${pos}`;
    const major = initial >> 5;
    const info = initial & 0x1f;
    let arg = info;
    if (info < 24) {
      pos++;
    } else {
      arg = readArgument(bytes, pos);
      if (arg < 0) return headProblem(bytes, pos);
      pos += headLength(info);
    }
    if (isKey && major !== 3) return `map key at byte ${start} is not a text string`;

    switch (major) {
      case 0: // unsigned integer
      case 1: // negative integer
        break;
      case 2: // byte string
        if (arg > end - pos) return `truncated string at byte ${start}`;
        pos += arg;
        break;
      case 3: {
        // text string
        if (arg > end - pos) return `truncated string at byte ${start}`;
        if (!validUtf8(bytes, pos, pos + arg)) return `text string at byte ${start} is not valid UTF-8`;
        if (isKey) {
          if (arg === PROTO_KEY.length && latin1(bytes, pos, pos + arg) === PROTO_KEY) {
            return `map key "__proto__" at byte ${start} (not accepted)`;
          }
          if (!addKey(bytes, keys, from, keySets, top, pos, arg)) return `duplicate map key at byte ${start}`;
        }
        pos += arg;
        break;
      }
      case 4: // array: every item takes at least one byte
      case 5: {
        // map: every entry takes at least two
        const items = major === 4 ? arg : arg * 2;
        if (items > end - pos) return `truncated ${major === 4 ? "array" : "map"} at byte ${start}`;
        if (remaining.length > MAX_DEPTH) return `nesting deeper than ${MAX_DEPTH} levels at byte ${start}`;
        remaining.push(items);
        keysFrom.push(major === 5 ? keys.length : -1);
        break;
      }
      case 6: {
        // tag: only bignums (2, 3) and Uint8Array (64), each over a byte string
        if (arg !== 2 && arg !== 3 && arg !== 64) return `CBOR tag ${arg} at byte ${start} is not accepted`;
        const inner = bytes[pos];
        const length = readArgument(bytes, pos);
        if (inner === undefined || length < 0) return headProblem(bytes, pos);
        if (inner >> 5 !== 2) return `tag ${arg} at byte ${start} must wrap a byte string`;
        pos += headLength(inner & 0x1f);
        if (arg !== 64 && length > MAX_BIGNUM_BYTES) {
          return `bignum of ${length} bytes at byte ${start} (limit ${MAX_BIGNUM_BYTES})`;
        }
        if (length > end - pos) return `truncated byte string at byte ${start}`;
        pos += length;
        break;
      }
      default: {
        // simple values and floats: false, true, null, undefined, float16/32/64
        if (!(info >= 20 && info <= 23) && !(info >= 25 && info <= 27)) {
          return `simple value ${info === 24 ? arg : info} at byte ${start} is not accepted`;
        }
      }
    }
  }
  const trailing = end - pos;
  if (trailing !== 0) return `${trailing} trailing byte${trailing === 1 ? "" : "s"} after the message`;
  return null;
}

/** Up to this many keys a map's keys are compared byte by byte (no strings, no Set); past
 * it they go into a Set, so a huge map costs O(n) rather than O(n^2). */
const MANY_KEYS = 16;

/**
 * Records the key at [at, at + length) for the map whose keys start at keys[from]; returns
 * false if the map already has it. Keys compare as bytes, exact because UTF-8 was checked.
 */
function addKey(
  bytes: Uint8Array,
  keys: number[],
  from: number,
  keySets: Map<number, Set<string>>,
  level: number,
  at: number,
  length: number,
): boolean {
  let set = keySets.get(level);
  if (set === undefined && keys.length - from >= 2 * MANY_KEYS) {
    set = new Set();
    for (let k = from; k < keys.length; k += 2) {
      const offset = keys[k] ?? 0;
      set.add(latin1(bytes, offset, offset + (keys[k + 1] ?? 0)));
    }
    keySets.set(level, set);
  }
  if (set !== undefined) {
    const key = latin1(bytes, at, at + length);
    if (set.has(key)) return false;
    set.add(key);
    keys.push(at, length);
    return true;
  }
  for (let k = from; k < keys.length; k += 2) {
    if (keys[k + 1] !== length) continue;
    const offset = keys[k] ?? 0;
    let i = 0;
    while (i < length && bytes[offset + i] === bytes[at + i]) i++;
    if (i === length) return false;
  }
  keys.push(at, length);
  return true;
}

/** Bytes taken by an item head with this additional-information value (0..27). */
function headLength(info: number): number {
  return info < 24 ? 1 : 1 + (1 << (info - 24));
}

/**
 * The argument of the item head at `pos`, saturated at 2^53 (no length that large fits in a
 * message), or -1 when the head is truncated, reserved or indefinite (see `headProblem`).
 */
function readArgument(bytes: Uint8Array, pos: number): number {
  const info = (bytes[pos] ?? 0xff) & 0x1f;
  if (pos >= bytes.byteLength || info >= 28) return -1;
  if (info < 24) return info;
  const length = 1 << (info - 24);
  if (bytes.byteLength - pos - 1 < length) return -1;
  let arg = 0;
  for (let i = 1; i <= length; i++) arg = arg * 256 + (bytes[pos + i] ?? 0);
  return Math.min(arg, Number.MAX_SAFE_INTEGER);
}

/** Why `readArgument` refused the head at `pos`. */
function headProblem(bytes: Uint8Array, pos: number): string {
  const initial = bytes[pos];
  if (initial === undefined) return `truncated at byte ${pos}`;
  const info = initial & 0x1f;
  if (info === 31) return `indefinite-length item at byte ${pos} (not accepted)`;
  if (info >= 28) return `reserved header byte 0x${initial.toString(16)} at byte ${pos}`;
  return `truncated at byte ${pos}`;
}

/** Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF. */
function validUtf8(bytes: Uint8Array, from: number, to: number): boolean {
  if (to - from >= NATIVE_UTF8_FROM) return isUtf8(bytes.subarray(from, to));
  let i = from;
  while (i < to) {
    const b0 = bytes[i] ?? 0;
    if (b0 < 0x80) {
      i++;
      continue;
    }
    // Sequence length and the allowed range of the second byte, per RFC 3629's table.
    let need: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (b0 >= 0xc2 && b0 <= 0xdf) need = 1;
    else if (b0 >= 0xe0 && b0 <= 0xef) {
      need = 2;
      if (b0 === 0xe0) lo = 0xa0;
      if (b0 === 0xed) hi = 0x9f;
    } else if (b0 >= 0xf0 && b0 <= 0xf4) {
      need = 3;
      if (b0 === 0xf0) lo = 0x90;
      if (b0 === 0xf4) hi = 0x8f;
    } else return false;
    if (to - i - 1 < need) return false;
    const b1 = bytes[i + 1] ?? 0;
    if (b1 < lo || b1 > hi) return false;
    for (let k = 2; k <= need; k++) {
      const b = bytes[i + k] ?? 0;
      if (b < 0x80 || b > 0xbf) return false;
    }
    i += need + 1;
  }
  return true;
}

/** One char per byte: distinct byte strings give distinct strings, cheaply for short keys. */
function latin1(bytes: Uint8Array, from: number, to: number): string {
  if (to - from > 32) return Buffer.from(bytes.buffer, bytes.byteOffset + from, to - from).toString("latin1");
  let out = "";
  for (let i = from; i < to; i++) out += String.fromCharCode(bytes[i] ?? 0);
  return out;
}
