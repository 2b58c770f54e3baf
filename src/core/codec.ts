/**
 * CBOR message codec: the one way stoa turns a message into bytes and bytes from a peer back
 * into a typed, validated value.
 *
 * Contract
 * - `encode` writes plain, interoperable CBOR (RFC 8949): objects become text-keyed maps with
 *   the shortest length headers, no cbor-x records, no packing, no tags except for bigints.
 * - `decodeMessage` checks the size limit before looking at a byte, then checks that the bytes
 *   are one well-formed item in stoa's data model (below) with nothing after it, then lets
 *   cbor-x build the value, then validates it with the caller's zod schema. Every failure is a
 *   `StoaError`: "too_large", "decode" (malformed, unsupported or trailing bytes) or "schema".
 *
 * Data model (what a message may contain)
 * - null, undefined, booleans, strings (UTF-8 is checked), arrays;
 * - maps with text keys, decoded as plain objects. A `__proto__` key or a duplicate key makes
 *   the message malformed, so a peer can neither touch a prototype nor make two decoders
 *   disagree about a field's value;
 * - byte strings (and RFC 8746 tag 64, which cbor-x peers may send), decoded as fresh
 *   `Uint8Array` copies that never alias the input;
 * - numbers. Integers from -2^32 to 2^32-1 are sent as CBOR integers (-0 as 0), all other
 *   numbers as float64, so every number but -0 comes back unchanged;
 * - bigints: stoa sends them in CBOR's 8-byte integer form (or tags 2/3 beyond 64 bits) and
 *   every 8-byte-form integer decodes as a bigint, shorter forms as a number. So a bigint
 *   round-trips as a bigint, but a u64 written by another CBOR encoder arrives as a number
 *   when it is small: schemas for u64 fields should accept both, e.g.
 *   `z.union([z.bigint(), z.number().int()]).transform(BigInt)`.
 * Anything else (dates, sets, cbor-x records, shared references, packed values, other tags,
 * indefinite lengths, other simple values) is rejected: a peer cannot make us build objects
 * with surprising prototypes, cycles, or values that expand far beyond the bytes it sent.
 */
import { Decoder, Encoder } from "cbor-x";
import type { z } from "zod";
import { checkWellFormed } from "./cbor-scan.ts";
import { StoaError, describeError } from "./errors.ts";

/** Default largest encoded message, in bytes (1 MiB): far above any control message, small
 * enough that a hostile peer cannot make us hold much. Bulk data belongs in frames/streams. */
export const MAX_MESSAGE_BYTES = 1024 * 1024;

/** Options for the size limit; `maxBytes` defaults to `MAX_MESSAGE_BYTES`. */
export interface CodecOptions {
  maxBytes?: number;
}

/** The outcome of a decode that does not throw. */
export type DecodeResult<T> = { ok: true; value: T } | { ok: false; error: StoaError };

// useTag259ForMaps is missing from cbor-x's types; without it a Map would be wrapped in tag 259.
const encoderOptions = {
  useRecords: false,
  mapsAsObjects: true,
  variableMapSize: true,
  tagUint8Array: false,
  useTag259ForMaps: false,
};
const encoder = new Encoder(encoderOptions);
// copyBuffers: decoded byte strings must not pin or alias the caller's input buffer.
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true, copyBuffers: true });

/**
 * Encodes a value of stoa's data model as CBOR. The result is a fresh buffer.
 * Throws `StoaError` "too_large" over `maxBytes` (the peer would refuse it) and "internal" for
 * a value outside the data model (a Date, a Set, a cycle, ...): that is a bug in the caller.
 */
export function encode(value: unknown, options: CodecOptions = {}): Uint8Array {
  const maxBytes = checkMaxBytes(options.maxBytes);
  let out: Uint8Array;
  try {
    // cbor-x returns a view into its pooled buffer; copy so the result owns its memory.
    out = new Uint8Array(encoder.encode(value));
  } catch (err) {
    // cbor-x recurses without tracking what it has seen, so a cycle ends in a stack overflow.
    const reason = err instanceof RangeError ? "the value is cyclic or nested too deeply" : messageOf(err);
    throw new StoaError("internal", `cannot encode message: ${reason}`, { cause: err });
  }
  if (out.byteLength > maxBytes) {
    throw new StoaError(
      "too_large",
      `message is ${out.byteLength} bytes, over the ${maxBytes}-byte limit; send less per message or raise the limit on both ends`,
    );
  }
  const problem = checkWellFormed(out);
  if (problem !== null) {
    throw new StoaError(
      "internal",
      `cannot encode message: ${problem}; use plain objects, arrays, strings, numbers, bigints, booleans, null and Uint8Array`,
    );
  }
  return out;
}

/**
 * Decodes one CBOR message from a peer and validates it with `schema`.
 * Throws `StoaError` "too_large", "decode" or "schema" for what the peer sent; no other kind
 * of exception escapes, whatever the bytes.
 * @example
 * const Hello = z.object({ type: z.literal("hello"), version: z.number().int() });
 * const hello = decodeMessage(frame, Hello); // { type: "hello", version: number }
 */
export function decodeMessage<S extends z.ZodType>(
  bytes: Uint8Array,
  schema: S,
  options: CodecOptions = {},
): z.output<S> {
  const result = safeDecodeMessage(bytes, schema, options);
  if (!result.ok) throw result.error;
  return result.value;
}

/** Like `decodeMessage`, but returns the error instead of throwing it. */
export function safeDecodeMessage<S extends z.ZodType>(
  bytes: Uint8Array,
  schema: S,
  options: CodecOptions = {},
): DecodeResult<z.output<S>> {
  const maxBytes = checkMaxBytes(options.maxBytes);
  if (bytes.byteLength > maxBytes) {
    return fail(
      "too_large",
      `message of ${bytes.byteLength} bytes is over the ${maxBytes}-byte limit; the peer must send smaller messages`,
    );
  }
  const problem = checkWellFormed(bytes);
  if (problem !== null) {
    return fail("decode", `malformed message: ${problem}; check that the peer speaks this protocol`);
  }
  let raw: unknown;
  try {
    // A private plain view: cbor-x caches a DataView on its source object, and a plain
    // Uint8Array source makes byte strings come back as Uint8Array rather than Buffer.
    raw = decoder.decode(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch (err) {
    return fail("decode", `malformed message: ${messageOf(err)}`, err);
  }
  let parsed: z.ZodSafeParseResult<z.output<S>>;
  try {
    parsed = schema.safeParse(raw);
  } catch (err) {
    // Only a schema with a throwing or async refinement gets here: a bug on our side.
    return { ok: false, error: new StoaError("internal", `message schema failed: ${messageOf(err)}`, { cause: err }) };
  }
  if (!parsed.success) {
    return fail(
      "schema",
      `message does not match the schema: ${summarizeIssues(parsed.error.issues)}; check that both ends run compatible versions`,
      parsed.error,
    );
  }
  return { ok: true, value: parsed.data };
}

/** A codec bound to one schema and size limit. */
interface Codec<S extends z.ZodType> {
  encode(value: z.input<S>): Uint8Array;
  decode(bytes: Uint8Array): z.output<S>;
  safeDecode(bytes: Uint8Array): DecodeResult<z.output<S>>;
}

/**
 * Binds a schema and a size limit once, for a protocol's message type.
 * @example
 * const codec = createCodec(ClientMessage, { maxBytes: 64 * 1024 });
 * socket.write(encodeFrame(codec.encode({ type: "ping", seq: 1 })));
 * const msg = codec.decode(frame); // typed ClientMessage, or throws StoaError
 */
export function createCodec<S extends z.ZodType>(schema: S, options: CodecOptions = {}): Codec<S> {
  const maxBytes = checkMaxBytes(options.maxBytes);
  return {
    encode: (value) => encode(value, { maxBytes }),
    decode: (bytes) => decodeMessage(bytes, schema, { maxBytes }),
    safeDecode: (bytes) => safeDecodeMessage(bytes, schema, { maxBytes }),
  };
}

function checkMaxBytes(maxBytes: number | undefined): number {
  if (maxBytes === undefined) return MAX_MESSAGE_BYTES;
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) {
    throw new StoaError("config", `message size limit must be a whole number of bytes, got ${maxBytes}`);
  }
  return maxBytes;
}

function fail(code: "too_large" | "decode" | "schema", message: string, cause?: unknown): { ok: false; error: StoaError } {
  return { ok: false, error: new StoaError(code, message, cause === undefined ? undefined : { cause }) };
}

function messageOf(err: unknown): string {
  return describeError(err);
}

function summarizeIssues(issues: readonly z.core.$ZodIssue[]): string {
  const shown = issues.slice(0, 3).map((issue) => {
    const where = issue.path.length === 0 ? "(message)" : issue.path.map(String).join(".");
    return `${where}: ${issue.message}`;
  });
  const more = issues.length - shown.length;
  return shown.join("; ") + (more > 0 ? `; and ${more} more` : "");
}
