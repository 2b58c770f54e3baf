/**
 * The bytes of a direct connection (direct.ts) that are its own: the sender's hello and the
 * receiver's acknowledgements. After the hello, sender → receiver carries HLNK frames (hlnk.ts).
 *
 *   sender → receiver   "HLD1 <sid> <tok>\n", once, first: "HLD1", a space, the session id
 *                       (protocol.ts `SessionId`: 1–`MAX_SID_LENGTH` of [A-Za-z0-9_-]), a space,
 *                       the offer's one-time token (`MIN_DIRECT_TOKEN_LENGTH`–
 *                       `MAX_DIRECT_TOKEN_LENGTH` of [A-Za-z0-9_-], Signal direct_offer `tok`),
 *                       LF. Nothing else: no CR, no other whitespace; at most
 *                       `MAX_DIRECT_HELLO_BYTES` with the LF.
 *   receiver → sender   acknowledgements, 8 bytes each (`DIRECT_ACK_BYTES`): a u64 big-endian,
 *                       the highest seq delivered in order so far. Each one is above the one
 *                       before (a receiver acknowledges only when that advanced), so the first
 *                       is at least 1, and none is over 2^53-1 (protocol.ts `seq`).
 *
 * Both readers are streaming state machines fed whatever the socket delivers: each byte is
 * checked as it arrives, so a wrong byte fails at once, whatever the chunking. `HelloReader`
 * holds at most the hello (one `MAX_DIRECT_HELLO_BYTES` buffer, allocated with the reader);
 * `AckReader` at most the 7 bytes of a split acknowledgement. Neither throws on input: a
 * violation is a result carrying a `StoaError` ("decode" for a wrong byte or value, "too_large"
 * for a field over its limit), and the reader stays failed, because what follows a broken hello
 * or acknowledgement cannot be trusted: close the connection.
 */
import { StoaError } from "../core/errors.ts";
import { MAX_DIRECT_TOKEN_LENGTH, MAX_SID_LENGTH, MIN_DIRECT_TOKEN_LENGTH } from "./protocol.ts";

/** What a direct hello starts with. */
const DIRECT_HELLO_PREFIX = "HLD1 ";

/** The longest hello: prefix, the longest sid, a space, the longest token, LF. */
export const MAX_DIRECT_HELLO_BYTES = DIRECT_HELLO_PREFIX.length + MAX_SID_LENGTH + 1 + MAX_DIRECT_TOKEN_LENGTH + 1;

/** Bytes in one acknowledgement: a u64 big-endian seq. */
export const DIRECT_ACK_BYTES = 8;

const SPACE = 0x20;
const LF = 0x0a;
const PREFIX = Buffer.from(DIRECT_HELLO_PREFIX, "latin1");
const HELLO_FORM = `a direct connection starts with "${DIRECT_HELLO_PREFIX}<sid> <tok>\\n"`;
/** The high 32 bits of a seq up to 2^53-1. */
const MAX_SEQ_HIGH = Math.floor(Number.MAX_SAFE_INTEGER / 0x1_0000_0000);

/** A byte of [A-Za-z0-9_-], the alphabet of sids and tokens. */
function isIdByte(b: number): boolean {
  return (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b === 0x2d || b === 0x5f;
}

function describeByte(b: number): string {
  return `0x${b.toString(16).padStart(2, "0")}`;
}

/** The hello a sender writes first; `sid` and `tok` as the schema checked them. */
export function encodeDirectHello(sid: string, tok: string): Uint8Array {
  return Buffer.from(`${DIRECT_HELLO_PREFIX}${sid} ${tok}\n`, "latin1");
}

/** One acknowledgement: `seq`, the highest delivered in order. */
export function encodeDirectAck(seq: number): Uint8Array {
  const ack = new Uint8Array(DIRECT_ACK_BYTES);
  new DataView(ack.buffer).setBigUint64(0, BigInt(seq));
  return ack;
}

/** The outcome of feeding bytes to a `HelloReader`. */
export type HelloResult =
  | { state: "more" }
  /** `rest`: what followed the LF in the last chunk (HLNK frames), a view of that chunk. */
  | { state: "done"; sid: string; tok: string; rest: Uint8Array }
  | { state: "error"; error: StoaError };

/** Where a `HelloReader` is: in the prefix, the sid, the token, or settled (done or failed). */
type HelloState = "prefix" | "sid" | "token" | "settled";

const MORE: HelloResult = { state: "more" };

/**
 * Reads the hello at the start of a direct connection, whatever the chunking.
 * @example
 * const r = reader.push(chunk);
 * if (r.state === "error") return socket.terminate();      // r.error says what was wrong
 * if (r.state === "done") accept(r.sid, r.tok, r.rest);    // rest: the first HLNK bytes
 */
export class HelloReader {
  #state: HelloState = "prefix";
  /** The hello's bytes so far; the limit is checked before each byte is stored. */
  readonly #line = new Uint8Array(MAX_DIRECT_HELLO_BYTES);
  #fill = 0;
  /** Where the sid ends (the index of its space), once it has. */
  #sidEnd = 0;
  #result: HelloResult = MORE;

  /** Bytes held for an unfinished hello (at most `MAX_DIRECT_HELLO_BYTES`). */
  get buffered(): number {
    return this.#state === "settled" ? 0 : this.#fill;
  }

  /**
   * Feeds the next bytes. Returns `more` until the hello is complete or wrong; once settled it
   * returns the same `error` again, and `done` is reported once (later bytes are not a hello's:
   * a caller bug, answered with an "internal" error).
   */
  push(chunk: Uint8Array): HelloResult {
    if (this.#state === "settled") {
      if (this.#result.state === "error") return this.#result;
      return this.#fail(new StoaError("internal", "HelloReader.push called after the hello was read"));
    }
    for (let i = 0; i < chunk.length; i++) {
      const step = this.#byte(chunk[i] as number);
      if (step instanceof StoaError) return this.#fail(step);
      if (step === "end") {
        this.#state = "settled";
        const text = Buffer.from(this.#line.buffer, 0, this.#fill).toString("latin1");
        const sid = text.slice(PREFIX.length, this.#sidEnd);
        const tok = text.slice(this.#sidEnd + 1);
        return (this.#result = { state: "done", sid, tok, rest: chunk.subarray(i + 1) });
      }
    }
    return MORE;
  }

  /** Checks and stores one byte of an unsettled hello: the violation, "end" for its LF, or null. */
  #byte(b: number): StoaError | "end" | null {
    if (this.#state === "prefix") {
      if (b !== PREFIX[this.#fill]) return new StoaError("decode", `byte ${describeByte(b)} at ${this.#fill} is not a direct hello; ${HELLO_FORM}`);
      this.#line[this.#fill++] = b;
      if (this.#fill === PREFIX.length) this.#state = "sid";
      return null;
    }
    if (this.#state === "sid") {
      const length = this.#fill - PREFIX.length;
      if (b === SPACE) {
        if (length === 0) return new StoaError("decode", `the direct hello has an empty sid; ${HELLO_FORM}`);
        this.#sidEnd = this.#fill;
        this.#line[this.#fill++] = b;
        this.#state = "token";
        return null;
      }
      if (!isIdByte(b)) return new StoaError("decode", `byte ${describeByte(b)} is not allowed in the direct hello's sid (A-Z a-z 0-9 _ -)`);
      if (length === MAX_SID_LENGTH) return new StoaError("too_large", `the direct hello's sid is longer than ${MAX_SID_LENGTH} characters`);
      this.#line[this.#fill++] = b;
      return null;
    }
    // "token": push never feeds a settled reader.
    const length = this.#fill - this.#sidEnd - 1;
    if (b === LF) {
      if (length >= MIN_DIRECT_TOKEN_LENGTH) return "end";
      return new StoaError("decode", `the direct hello's token has ${length} characters; an offer's token has ${MIN_DIRECT_TOKEN_LENGTH}–${MAX_DIRECT_TOKEN_LENGTH}`);
    }
    if (!isIdByte(b)) return new StoaError("decode", `byte ${describeByte(b)} is not allowed in the direct hello's token (A-Z a-z 0-9 _ -, then LF)`);
    if (length === MAX_DIRECT_TOKEN_LENGTH) return new StoaError("too_large", `the direct hello's token is longer than ${MAX_DIRECT_TOKEN_LENGTH} characters`);
    this.#line[this.#fill++] = b;
    return null;
  }

  #fail(error: StoaError): HelloResult {
    this.#state = "settled";
    this.#fill = 0;
    return (this.#result = { state: "error", error });
  }
}

/** The outcome of feeding bytes to an `AckReader`: the highest seq acknowledged so far (0: none). */
export type AckResult = { ok: true; acked: number } | { ok: false; error: StoaError };

/** Where an `AckReader` is: between acknowledgements, inside a split one, or failed. */
type AckState = "between" | "partial" | "failed";

/**
 * Reads the acknowledgement stream of a direct connection, whatever the chunking.
 * @example
 * const r = acks.push(chunk);
 * if (!r.ok) return cut(r.error);
 * release(r.acked); // every frame with seq <= r.acked
 */
export class AckReader {
  #state: AckState = "between";
  /** A split acknowledgement's first bytes. */
  readonly #partial = new Uint8Array(DIRECT_ACK_BYTES);
  #fill = 0;
  #acked = 0;
  #failure: StoaError | null = null;

  /** Bytes held of a split acknowledgement (at most 7). */
  get buffered(): number {
    return this.#fill;
  }

  /** The highest seq acknowledged so far; 0 before the first acknowledgement. */
  get acked(): number {
    return this.#acked;
  }

  /** Feeds the next bytes; the caller may reuse `chunk` once this returns. */
  push(chunk: Uint8Array): AckResult {
    if (this.#state === "failed" && this.#failure !== null) return { ok: false, error: this.#failure };
    let at = 0;
    if (this.#state === "partial") {
      const take = Math.min(DIRECT_ACK_BYTES - this.#fill, chunk.byteLength);
      this.#partial.set(chunk.subarray(0, take), this.#fill);
      this.#fill += take;
      at = take;
      if (this.#fill < DIRECT_ACK_BYTES) return { ok: true, acked: this.#acked };
      const error = this.#take(this.#partial, 0);
      if (error !== null) return this.#fail(error);
      this.#fill = 0;
      this.#state = "between";
    }
    for (; at + DIRECT_ACK_BYTES <= chunk.byteLength; at += DIRECT_ACK_BYTES) {
      const error = this.#take(chunk, at);
      if (error !== null) return this.#fail(error);
    }
    if (at < chunk.byteLength) {
      this.#partial.set(chunk.subarray(at));
      this.#fill = chunk.byteLength - at;
      this.#state = "partial";
    }
    return { ok: true, acked: this.#acked };
  }

  /** Checks the acknowledgement at `bytes[at, at + 8)` and takes it; returns the violation or null. */
  #take(bytes: Uint8Array, at: number): StoaError | null {
    const view = new DataView(bytes.buffer, bytes.byteOffset + at, DIRECT_ACK_BYTES);
    const high = view.getUint32(0);
    if (high > MAX_SEQ_HIGH) return new StoaError("decode", `an acknowledgement of seq ${view.getBigUint64(0)} is over 2^53-1, the largest seq`);
    const seq = high * 0x1_0000_0000 + view.getUint32(4);
    if (seq <= this.#acked) {
      return new StoaError("decode", `an acknowledgement of seq ${seq} does not advance past ${this.#acked}; a receiver acknowledges only progress`);
    }
    this.#acked = seq;
    return null;
  }

  #fail(error: StoaError): AckResult {
    this.#state = "failed";
    this.#fill = 0;
    this.#failure = error;
    return { ok: false, error };
  }
}
