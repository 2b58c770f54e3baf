/**
 * The values a stream carries, and their text form.
 *
 * A value is JSON's data model plus byte strings: string, finite number, boolean, null,
 * Uint8Array, arrays and plain objects of values, nested at most `MAX_VALUE_DEPTH` deep. That is
 * exactly what survives both of a publisher's encodings: CBOR on service.sock (bytes stay
 * bytes) and text on string.sock and in ping replies. Everything else (undefined, NaN and
 * ±Infinity, bigint, Date, Map, class instances, lone UTF-16 surrogates, a `__proto__` key)
 * is refused when published rather than silently changed on the way.
 *
 * Text form (string.sock frames, the `value` of a ping reply, `stoa sub` output):
 * - a string is itself;
 * - a Uint8Array is its UTF-8 text when it is valid UTF-8 (a raw stream of text stays
 *   readable), otherwise its standard padded base64 (RFC 4648 §4);
 * - anything else is JSON (`JSON.stringify`), with nested byte strings as base64 strings.
 * The text form is deliberately lossy about types ("1" and 1 look alike); service.sock is the
 * exact one.
 */
import { Buffer, isUtf8 } from "node:buffer";

/** A value published on a stream. */
export type Value = string | number | boolean | null | Uint8Array | Value[] | { [key: string]: Value };

/** A value with byte strings replaced by base64 strings: what `JSON.stringify` can write. */
type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** Deepest nesting of arrays and objects in a value. The service envelope adds one level, and
 * core/codec.ts refuses more than 64, so this leaves room while no real value comes near it. */
export const MAX_VALUE_DEPTH = 32;

/**
 * Why `value` is not a stream value, naming where in it (`$.a[2]`), or null when it is one.
 * Iterative, so a hostile or cyclic input cannot exhaust the stack: a cycle is reported as
 * nesting deeper than `MAX_VALUE_DEPTH`.
 */
export function valueProblem(value: unknown): string | null {
  const stack: { v: unknown; path: string; depth: number }[] = [{ v: value, path: "$", depth: 0 }];
  for (let item = stack.pop(); item !== undefined; item = stack.pop()) {
    const { v, path, depth } = item;
    if (v === null || typeof v === "boolean") continue;
    if (typeof v === "string") {
      if (!v.isWellFormed()) return `${path} is a string with an unpaired UTF-16 surrogate`;
      continue;
    }
    if (typeof v === "number") {
      if (!Number.isFinite(v)) return `${path} is ${v}; only finite numbers survive JSON`;
      continue;
    }
    if (v instanceof Uint8Array) continue;
    if (typeof v !== "object") return `${path} is ${describe(v)}`;
    if (depth >= MAX_VALUE_DEPTH) return `${path} is nested deeper than ${MAX_VALUE_DEPTH} levels (or cyclic)`;
    if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) stack.push({ v: v[i], path: `${path}[${i}]`, depth: depth + 1 });
      continue;
    }
    const proto: unknown = Object.getPrototypeOf(v);
    if (proto !== Object.prototype && proto !== null) return `${path} is ${describe(v)}, not a plain object`;
    if (Object.getOwnPropertySymbols(v).length > 0) return `${path} has symbol keys`;
    const entries = Object.entries(v);
    for (let i = entries.length - 1; i >= 0; i--) {
      const [key, child] = entries[i] ?? ["", null];
      if (key === "__proto__") return `${path} has a "__proto__" key, which CBOR peers must refuse`;
      if (!key.isWellFormed()) return `${path} has a key with an unpaired UTF-16 surrogate`;
      stack.push({ v: child, path: `${path}${propertyPath(key)}`, depth: depth + 1 });
    }
  }
  return null;
}

/** Whether `value` is a stream value (see `valueProblem`). */
export function isValue(value: unknown): value is Value {
  return valueProblem(value) === null;
}

/**
 * The text form of a value (see the module header).
 * @example
 * valueText("hi");                         // "hi"
 * valueText({ a: 1 });                     // '{"a":1}'
 * valueText(new Uint8Array([0xff, 0x00])); // "/wA="
 */
export function valueText(value: Value): string {
  if (typeof value === "string") return value;
  if (value instanceof Uint8Array) return bytesText(value);
  return JSON.stringify(valueToJson(value));
}

/** The value with every byte string replaced by its base64 string, ready for `JSON.stringify`
 * (for example in `{"seq":…,"ts":…,"value":…}` lines). */
export function valueToJson(value: Value): JsonValue {
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64");
  if (Array.isArray(value)) return value.map(valueToJson);
  if (value !== null && typeof value === "object") {
    const out: { [key: string]: JsonValue } = {};
    for (const [key, child] of Object.entries(value)) out[key] = valueToJson(child);
    return out;
  }
  return value;
}

function bytesText(bytes: Uint8Array): string {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return isUtf8(buf) ? buf.toString("utf8") : buf.toString("base64");
}

function describe(v: unknown): string {
  if (v === undefined) return "undefined";
  if (typeof v === "bigint") return "a bigint; send it as a string or a number";
  if (typeof v === "function") return "a function";
  if (typeof v === "symbol") return "a symbol";
  const name = (v as { constructor?: { name?: unknown } }).constructor?.name;
  return typeof name === "string" && name !== "" ? `a ${name}` : "an object";
}

function propertyPath(key: string): string {
  return /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`;
}
