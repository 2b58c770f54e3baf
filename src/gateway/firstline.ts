/**
 * The streaming parser for a gateway client's first line (the rules are in protocol.ts).
 *
 * A state machine fed with whatever the socket delivers: it checks each byte as it arrives
 * (fixed prefix, then printable ASCII up to the LF), so a wrong byte fails at once and nothing
 * beyond `maxBytes` of line is ever held. When the LF arrives the whole line is checked and the
 * result says which publisher and which bytes to send it first. It never throws for any input;
 * the only exception is calling `push` again after a terminal result (a caller bug).
 */
import { StoaError } from "../core/errors.ts";
import { isValidPubId } from "../stream/names.ts";
import {
  HEALTH_LINES,
  type HealthCheck,
  HTTP_PREFIX,
  HTTP_VERSION,
  MAX_FIRST_LINE_BYTES,
  PRELUDE_PREFIX,
  type RouteError,
} from "./protocol.ts";

/** The outcome of feeding bytes to the parser. */
export type FirstLineResult =
  | { state: "more" }
  | {
      state: "done";
      mode: "http" | "prelude";
      pubId: string;
      /** Bytes to send the target first: the whole input (http) or what followed the prelude. */
      forward: Uint8Array;
    }
  /** `GET /ready` or `GET /healthz`: the router answers it itself. */
  | { state: "health"; check: HealthCheck }
  | { state: "error"; error: Extract<RouteError, "bad_request_line" | "invalid_pub_id" | "first_line_too_long">; message: string };

const LF = 0x0a;
const CR = 0x0d;
const HTTP = Buffer.from(HTTP_PREFIX, "latin1");
const PRELUDE = Buffer.from(PRELUDE_PREFIX, "latin1");
/** Whole request lines matched as fixed prefixes; the line must end right after them. */
const HEALTH = new Map<Buffer, HealthCheck>(
  (Object.entries(HEALTH_LINES) as [HealthCheck, string][]).map(([check, line]) => [Buffer.from(line, "latin1"), check]),
);
/** Every fixed start a first line may have; the first byte and then each next one narrow it. */
const PREFIXES: readonly Buffer[] = [HTTP, PRELUDE, ...HEALTH.keys()];
const MORE: FirstLineResult = { state: "more" };
const FORMS = `send "GET /pub/<pub_id> HTTP/1.1" or the prelude "STOA1 <pub_id>\\n" (or GET /ready, GET /healthz)`;

/** Parser states: matching the fixed prefix, reading the rest of the line, settled. */
const PREFIX = 0;
const LINE = 1;
const FINISHED = 2;

export class FirstLineParser {
  readonly #maxBytes: number;
  #state: number = PREFIX;
  #prefix: Buffer | null = null;
  /** Copies of earlier chunks, all of them line bytes (no LF yet). */
  #chunks: Uint8Array[] = [];
  /** Bytes of the line seen so far. */
  #length = 0;
  #sawCR = false;

  constructor(maxBytes = MAX_FIRST_LINE_BYTES) {
    this.#maxBytes = maxBytes;
  }

  /** Bytes held for the unfinished line (at most `maxBytes`). */
  get buffered(): number {
    return this.#state === FINISHED ? 0 : this.#length;
  }

  /**
   * Feeds the next bytes. Returns `more` until the line is complete or wrong; after a `done` or
   * `error` result the parser is spent. The caller may reuse `chunk` once this returns.
   */
  push(chunk: Uint8Array): FirstLineResult {
    if (this.#state === FINISHED) {
      throw new StoaError("internal", "FirstLineParser.push called after the first line was settled");
    }
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i] as number;
      if (this.#length >= this.#maxBytes) {
        return this.#fail(
          "first_line_too_long",
          `the first line is longer than ${this.#maxBytes} bytes; ${FORMS} with a shorter path`,
        );
      }
      if (this.#state === PREFIX) {
        const problem = this.#prefixByte(b);
        if (problem !== null) return this.#fail("bad_request_line", problem);
      } else if (b === LF) {
        return this.#finish(chunk, i);
      } else if (this.#sawCR) {
        return this.#fail("bad_request_line", "a CR in the first line must be followed by LF");
      } else if (b === CR) {
        this.#sawCR = true;
      } else if (b < 0x20 || b > 0x7e) {
        return this.#fail("bad_request_line", `byte 0x${b.toString(16).padStart(2, "0")} is not allowed in the first line; ${FORMS}`);
      }
      this.#length++;
    }
    if (chunk.length > 0) this.#chunks.push(chunk.slice());
    return MORE;
  }

  /** Checks one byte of the fixed prefix; returns the problem or null. */
  #prefixByte(b: number): string | null {
    const at = this.#length;
    if (this.#prefix === null) {
      const first = PREFIXES.find((p) => p[0] === b);
      if (first === undefined) return `the first line is neither an HTTP request nor a stoa prelude; ${FORMS}`;
      this.#prefix = first;
    }
    let prefix = this.#prefix;
    if (b !== prefix[at]) {
      // Another fixed start with the same bytes so far (`GET /` of /pub/, /ready, /healthz)?
      const seen = prefix.subarray(0, at);
      const other = PREFIXES.find((p) => p.length > at && p[at] === b && p.subarray(0, at).equals(seen));
      if (other !== undefined) prefix = this.#prefix = other;
    }
    if (b !== prefix[at]) {
      if (prefix === PRELUDE) return `expected the prelude "STOA1 <pub_id>"; ${FORMS}`;
      if (at < 4) return `only GET requests are routed; ${FORMS}`;
      return `the request path must start with /pub/<pub_id>; ${FORMS}`;
    }
    if (at + 1 === prefix.length) this.#state = LINE;
    return null;
  }

  /** The LF is at `chunk[lf]`: check the whole line and settle. */
  #finish(chunk: Uint8Array, lf: number): FirstLineResult {
    const lineEnd = this.#sawCR ? lf - 1 : lf; // index in `chunk` where the line text ends
    const text = this.#lineText(chunk, lineEnd);
    const check = this.#prefix === null ? undefined : HEALTH.get(this.#prefix);
    if (check !== undefined) {
      if (text !== HEALTH_LINES[check]) {
        return this.#fail("bad_request_line", `a health check is exactly "${HEALTH_LINES[check]}"; ${FORMS}`);
      }
      this.#state = FINISHED;
      this.#chunks = [];
      return { state: "health", check };
    }
    const http = this.#prefix === HTTP;
    let pubId: string;
    if (http) {
      const targetEnd = text.indexOf(" ", HTTP_PREFIX.length);
      if (targetEnd < 0 || text.slice(targetEnd + 1) !== HTTP_VERSION) {
        return this.#fail("bad_request_line", `the request line must end with " ${HTTP_VERSION}"; ${FORMS}`);
      }
      const rest = text.slice(HTTP_PREFIX.length, targetEnd);
      const slash = rest.indexOf("/");
      const query = rest.indexOf("?");
      const end = Math.min(slash < 0 ? rest.length : slash, query < 0 ? rest.length : query);
      pubId = rest.slice(0, end);
      // Only the first segment routes, but a proxy in front may normalise `a/../b` to `b` and
      // authorise it as `b` while we route to `a`: refuse paths two readers could disagree on.
      // `%25` is an encoded `%`: refusing it refuses every double (or deeper) encoding at once,
      // `%252e%252e` as much as `%25252f`, and no stoa path ever needs a literal `%`.
      const path = query < 0 ? rest : rest.slice(0, query);
      if (path.split("/").some((seg) => seg === "." || seg === "..") || /%2e|%2f|%5c|%25|\\/i.test(path)) {
        return this.#fail("invalid_pub_id", "the path must not hold '.' or '..' segments, or encoded '.', '/', '\\' or '%'");
      }
    } else {
      pubId = text.slice(PRELUDE_PREFIX.length);
    }
    const problem = pubIdProblem(pubId);
    if (problem !== null) return this.#fail("invalid_pub_id", problem);
    this.#state = FINISHED;
    const forward = http ? this.#concat(chunk, chunk.length) : chunk.slice(lf + 1);
    this.#chunks = [];
    return { state: "done", mode: http ? "http" : "prelude", pubId, forward };
  }

  /** The line as text: earlier chunks plus `chunk[0, end)`. All bytes are printable ASCII. */
  #lineText(chunk: Uint8Array, end: number): string {
    // `end` is -1 when the CR was the last byte of an earlier chunk.
    const all = this.#concat(chunk, Math.max(end, 0));
    const text = Buffer.from(all.buffer, all.byteOffset, all.byteLength).toString("latin1");
    return end < 0 ? text.slice(0, -1) : text;
  }

  /** Earlier chunks followed by `chunk[0, end)`, in one new buffer. */
  #concat(chunk: Uint8Array, end: number): Uint8Array {
    let total = end;
    for (const c of this.#chunks) total += c.length;
    const out = new Uint8Array(total);
    let at = 0;
    for (const c of this.#chunks) {
      out.set(c, at);
      at += c.length;
    }
    out.set(chunk.subarray(0, end), at);
    return out;
  }

  #fail(error: Extract<FirstLineResult, { state: "error" }>["error"], message: string): FirstLineResult {
    this.#state = FINISHED;
    this.#chunks = [];
    return { state: "error", error, message };
  }
}

/** Why `pubId` (from a first line) cannot be routed, or null. */
function pubIdProblem(pubId: string): string | null {
  if (pubId === "") return "the pub_id is empty; use /pub/<pub_id> or STOA1 <pub_id>";
  const shown = JSON.stringify(pubId.length > 64 ? `${pubId.slice(0, 64)}…` : pubId);
  if (pubId.includes("%")) {
    return `pub_id ${shown} is percent-encoded; pub_ids never need encoding, send it as registered`;
  }
  if (!isValidPubId(pubId)) {
    return `pub_id ${shown} is not valid: 1-64 characters of [A-Za-z0-9._-] starting with a letter or digit`;
  }
  return null;
}
