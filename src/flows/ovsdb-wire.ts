/**
 * The OVSDB wire (RFC 7047 §4): JSON-RPC 1.0 texts back to back on a stream socket, with no
 * length prefix and no delimiter — ovsdb-server writes one JSON object after another and
 * nothing says where one ends but the JSON itself. `JsonSplitter` finds those ends.
 *
 * It is a byte-level state machine over four states: BETWEEN texts (whitespace is skipped;
 * anything but `{` or `[` is garbage), IN_VALUE (counting `{[` against `}]`), IN_STRING and
 * IN_ESCAPE (a brace inside a string, or an escaped quote, counts for nothing). A text is
 * complete when its depth returns to 0; only then are its bytes decoded (UTF-8, fatal: a
 * character split across two reads is whole by then) and parsed. Limits are checked on every
 * byte, before anything more is buffered: `MAX_OVSDB_MESSAGE_BYTES` per text and
 * `MAX_OVSDB_JSON_DEPTH` of nesting. Every failure — garbage between texts, a text over a limit,
 * bytes that are not UTF-8, brackets that do not match, JSON.parse refusing — is a
 * `JsonSplitError`, and the splitter stays failed: the stream has lost its framing, so the
 * connection must be closed.
 *
 * Below the splitter: the JSON-RPC envelopes (`RpcRequest`, `RpcReply`), the shapes of the
 * transact results and monitor updates the client reads, and OVSDB's datum notation (sets,
 * uuids) as zod schemas and helpers — the client's one source for what ovsdb-server sends.
 *
 * @example
 * const splitter = new JsonSplitter();
 * socket.data = (_s, chunk) => splitter.push(chunk, handle); // a JsonSplitError: close the connection
 */
import { z } from "zod";
import { describeError, type ErrorCode, StoaError } from "../core/errors.ts";

/**
 * The largest single JSON-RPC text accepted from ovsdb-server. The big ones are `monitor`
 * replies and updates: 20,000 Interface rows of a few columns are ~5 MiB; all columns, or a
 * whole-database dump, several times that. 64 MiB leaves room and still bounds memory.
 */
export const MAX_OVSDB_MESSAGE_BYTES = 64 * 1024 * 1024;
/** OVSDB's own data nests about 6 deep (reply → result → table → row → column → set → pair); 128 bounds JSON.parse's recursion. */
export const MAX_OVSDB_JSON_DEPTH = 128;

/** Every failure of the OVSDB client: a refused connection, an op error, a timeout, a broken stream. */
export class OvsdbError extends StoaError {
  constructor(message: string, options: { code?: ErrorCode; cause?: unknown } = {}) {
    super(options.code ?? "io", message, { cause: options.cause });
  }
}

/** The stream is not a sequence of JSON texts, or one is over a limit. */
export class JsonSplitError extends OvsdbError {
  constructor(code: "decode" | "too_large", message: string, options: { cause?: unknown } = {}) {
    super(message, { code, cause: options.cause });
  }
}

/** The splitter's states (see the header). */
const State = { Between: 0, InValue: 1, InString: 2, InEscape: 3 } as const;
type State = (typeof State)[keyof typeof State];

const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const SPACE = 0x20;
const TAB = 0x09;
const LF = 0x0a;
const CR = 0x0d;

function printable(byte: number): string {
  return byte >= 0x20 && byte < 0x7f ? `'${String.fromCharCode(byte)}'` : `0x${byte.toString(16).padStart(2, "0")}`;
}

export class JsonSplitter {
  readonly #maxBytes: number;
  readonly #decoder = new TextDecoder("utf-8", { fatal: true });
  #state: State = State.Between;
  #depth = 0;
  /** Copies of the current text's bytes so far (a reader's buffer may be reused after push returns). */
  #parts: Uint8Array[] = [];
  #length = 0;
  #failed: JsonSplitError | null = null;

  constructor(options: { maxBytes?: number } = {}) {
    this.#maxBytes = options.maxBytes ?? MAX_OVSDB_MESSAGE_BYTES;
  }

  /** Bytes of an incomplete text held so far. */
  get buffered(): number {
    return this.#length;
  }

  /**
   * Feeds `chunk`: each text it completes is parsed and handed to `onMessage` at once, in order —
   * the texts before garbage in the same read are delivered before the JsonSplitError is thrown
   * (and thrown again by every later push). `onMessage` must not throw.
   */
  push(chunk: Uint8Array, onMessage: (message: unknown) => void): void {
    if (this.#failed !== null) throw this.#failed;
    try {
      this.#push(chunk, onMessage);
    } catch (err) {
      if (err instanceof JsonSplitError) {
        this.#failed = err;
        this.#parts = [];
        this.#length = 0;
      }
      throw err;
    }
  }

  #push(chunk: Uint8Array, onMessage: (message: unknown) => void): void {
    let start = -1; // where the current text starts in this chunk, -1 while between texts
    if (this.#state !== State.Between) start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const byte = chunk[i] as number;
      switch (this.#state) {
        case State.Between:
          if (byte === SPACE || byte === LF || byte === CR || byte === TAB) continue;
          if (byte !== OPEN_BRACE && byte !== OPEN_BRACKET) {
            throw new JsonSplitError("decode", `OVSDB stream: expected a JSON object or array, got ${printable(byte)}: the peer is not ovsdb-server or the stream is corrupt`);
          }
          start = i;
          this.#state = State.InValue;
          this.#depth = 1;
          break;
        case State.InValue:
          if (byte === QUOTE) this.#state = State.InString;
          else if (byte === OPEN_BRACE || byte === OPEN_BRACKET) {
            if (++this.#depth > MAX_OVSDB_JSON_DEPTH) {
              throw new JsonSplitError("decode", `OVSDB stream: a JSON text nests deeper than ${MAX_OVSDB_JSON_DEPTH} levels (MAX_OVSDB_JSON_DEPTH)`);
            }
          } else if ((byte === CLOSE_BRACE || byte === CLOSE_BRACKET) && --this.#depth === 0) {
            this.#state = State.Between;
          }
          break;
        case State.InString:
          if (byte === QUOTE) this.#state = State.InValue;
          else if (byte === BACKSLASH) this.#state = State.InEscape;
          break;
        case State.InEscape:
          this.#state = State.InString;
          break;
      }
      if (this.#length + (i - start + 1) > this.#maxBytes) {
        throw new JsonSplitError("too_large", `OVSDB stream: a JSON text is over ${this.#maxBytes} bytes (MAX_OVSDB_MESSAGE_BYTES)`);
      }
      if (this.#state === State.Between) {
        onMessage(this.#finish(chunk.subarray(start, i + 1)));
        start = -1;
      }
    }
    if (start >= 0 && start < chunk.length) {
      // `new Uint8Array(view)` copies: Bun may reuse a data event's buffer.
      const rest = new Uint8Array(chunk.subarray(start));
      this.#parts.push(rest);
      this.#length += rest.length;
    }
  }

  #finish(last: Uint8Array): unknown {
    let bytes = last;
    if (this.#parts.length > 0) {
      bytes = new Uint8Array(this.#length + last.length);
      let at = 0;
      for (const part of this.#parts) {
        bytes.set(part, at);
        at += part.length;
      }
      bytes.set(last, at);
      this.#parts = [];
      this.#length = 0;
    }
    let text: string;
    try {
      text = this.#decoder.decode(bytes);
    } catch (err) {
      throw new JsonSplitError("decode", "OVSDB stream: a JSON text is not valid UTF-8", { cause: err });
    }
    try {
      return JSON.parse(text);
    } catch (err) {
      throw new JsonSplitError("decode", `OVSDB stream: not valid JSON (${describeError(err)}): ${JSON.stringify(text.slice(0, 80))}`, { cause: err });
    }
  }
}

/**
 * JSON-RPC 1.0 as RFC 7047 §4 uses it. A request (either way: ovsdb-server asks `echo`) has a
 * method, params and an id; a notification (`update`) has `id: null`; a reply has the id of its
 * request, a result and an error, one of them null.
 */
export const RpcRequest = z.object({ method: z.string(), params: z.array(z.unknown()).default([]), id: z.unknown() });
export const RpcReply = z.object({ id: z.unknown(), result: z.unknown().default(null), error: z.unknown().default(null) });

/** An op's error in a transact reply (RFC 7047 §5.2): `{"error": "constraint violation", "details": "…"}`. */
export const OpError = z.object({ error: z.string(), details: z.string().optional() });
/** A select's result: rows of the asked-for columns. */
export const SelectResult = z.object({ rows: z.array(z.record(z.string(), z.unknown())) });
/** A mutate's or update's result. */
export const CountResult = z.object({ count: z.number() });
/** `<table-updates>` of a monitor reply or `update` notification (RFC 7047 §4.1.6): table → uuid → old/new row. */
export const TableUpdates = z.record(
  z.string(),
  z.record(z.string(), z.object({ old: z.record(z.string(), z.unknown()).optional(), new: z.record(z.string(), z.unknown()).optional() })),
);

/**
 * The members of a set datum (RFC 7047 §5.1): `["set", [a, b]]`, or a lone atom for a set of one.
 * @example
 * setMembers(["set", [["uuid", "u1"], ["uuid", "u2"]]]); // [["uuid", "u1"], ["uuid", "u2"]]
 * setMembers(["uuid", "u1"]);                           // [["uuid", "u1"]]
 */
export function setMembers(datum: unknown): unknown[] {
  if (Array.isArray(datum) && datum[0] === "set" && Array.isArray(datum[1])) return datum[1] as unknown[];
  return datum === undefined ? [] : [datum];
}

/** The UUIDs of a set-of-uuid (or single uuid) datum. */
export function uuidsOf(datum: unknown): string[] {
  const out: string[] = [];
  for (const atom of setMembers(datum)) {
    if (Array.isArray(atom) && atom[0] === "uuid" && typeof atom[1] === "string") out.push(atom[1]);
  }
  return out;
}

/** An optional integer column (Interface.ofport): the integer, or undefined for the empty set. */
export function optionalInteger(datum: unknown): number | undefined {
  const [atom] = setMembers(datum);
  return typeof atom === "number" && Number.isInteger(atom) ? atom : undefined;
}
