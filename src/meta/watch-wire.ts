/**
 * The bytes of `GET /v1/watch` (watch.ts serves them, client.ts reads them): Server-Sent Events,
 * one event per change of a registration.
 *
 *   event: watching                         first, once the watch is in place
 *   data: {"type":"watching","prefix":"lab"}
 *
 *   event: confirmed                        then one per change: registered, confirmed, stale, removed
 *   data: {"type":"confirmed","publisher":{…PublisherInfo…}}
 *
 *   : keepalive                             a comment now and then, so a dead connection shows
 *
 * Contract of the decoder (`SseDecoder`): a state machine over bytes in any split. Lines end
 * with LF, CRLF or CR (a CR at the end of one chunk and an LF at the start of the next are one
 * line end); `field: value` lines (one space after the colon dropped), `:` comments ignored, a
 * blank line dispatches the event. A line longer than `MAX_SSE_LINE_BYTES`, an event larger
 * than `MAX_SSE_EVENT_BYTES` or bytes that are not UTF-8 fail it with a StoaError ("too_large",
 * "decode"), checked before anything is kept; once failed it stays failed. `watchEventOf` turns
 * an event into a `WatchEvent`, checked against the protocol's schemas: null for an event name
 * it does not know (a newer server's), a StoaError "decode"/"schema" for a known one that is wrong.
 */
import { z } from "zod";
import { StoaError } from "../core/errors.ts";
import { PublisherInfo } from "./protocol.ts";
import type { StoreEvent } from "./store.ts";

/** How often the server comments on an idle watch, so a client can tell a quiet stream from a dead one. */
export const WATCH_KEEPALIVE_MS = 15_000;
/** A watch that sent nothing, not even a keepalive, for this long is dead (a half-open connection). */
export const WATCH_IDLE_MS = 3 * WATCH_KEEPALIVE_MS;

/** Longest line read: a PublisherInfo is under 1 KiB of JSON, its longest name and host included. */
export const MAX_SSE_LINE_BYTES = 16 * 1024;
/** Largest event (all its lines): one registration's change. */
export const MAX_SSE_EVENT_BYTES = 32 * 1024;

/** One event as it came: its `event:` name ("message" without one) and its `data:` lines, joined by LF. */
export interface SseEvent {
  event: string;
  data: string;
}

export const WatchingEvent = z.object({ type: z.literal("watching"), prefix: z.string() });
export const ChangeEvent = z.object({
  type: z.enum(["registered", "confirmed", "stale", "removed"]),
  publisher: PublisherInfo,
});
/** What a watch delivers: that it is in place, or one change. */
export type WatchEvent = z.infer<typeof WatchingEvent> | ChangeEvent;
export type ChangeEvent = z.infer<typeof ChangeEvent>;

const CHANGE_TYPES: ReadonlySet<string> = new Set(["registered", "confirmed", "stale", "removed"]);

/** The stream's first event. */
export function encodeWatching(prefix: string): string {
  return `event: watching\ndata: ${JSON.stringify({ type: "watching", prefix })}\n\n`;
}

/** One change as an event (JSON has no raw line breaks, so `data` is one line). */
export function encodeChange(event: StoreEvent): string {
  return `event: ${event.type}\ndata: ${JSON.stringify({ type: event.type, publisher: event.publisher })}\n\n`;
}

export const KEEPALIVE = ": keepalive\n\n";

const LF = 0x0a;
const CR = 0x0d;

/**
 * Server-Sent Events from bytes, chunk by chunk.
 *
 * @example
 * ```ts
 * const decoder = new SseDecoder();
 * for (const event of decoder.push(chunk)) handle(event); // throws StoaError on garbage
 * ```
 */
export class SseDecoder {
  /** "line": inside a line; "afterCr": a line just ended with CR (an LF next is part of it); "failed". */
  #state: "line" | "afterCr" | "failed" = "line";
  #line: Uint8Array[] = [];
  #lineBytes = 0;
  #eventBytes = 0;
  #event = "";
  #data: string[] | null = null;
  #failure: StoaError | null = null;
  readonly #utf8 = new TextDecoder("utf-8", { fatal: true });

  /** The events completed by `bytes`, in order; throws a StoaError once the input is not SSE within the limits. */
  push(bytes: Uint8Array): SseEvent[] {
    if (this.#state === "failed") throw this.#failure ?? new StoaError("decode", "the event stream failed earlier");
    const out: SseEvent[] = [];
    try {
      let start = 0;
      for (let i = 0; i < bytes.length; i++) {
        const b = bytes[i];
        if (this.#state === "afterCr") {
          this.#state = "line";
          if (b === LF) {
            start = i + 1;
            continue;
          }
        }
        if (b !== LF && b !== CR) continue;
        this.#append(bytes.subarray(start, i));
        this.#endLine(out);
        if (b === CR) this.#state = "afterCr";
        start = i + 1;
      }
      this.#append(bytes.subarray(start));
    } catch (err) {
      this.#state = "failed";
      this.#failure = err instanceof StoaError ? err : new StoaError("decode", `the event stream could not be read: ${String(err)}`);
      throw this.#failure;
    }
    return out;
  }

  #append(part: Uint8Array): void {
    if (part.length === 0) return;
    if (this.#lineBytes + part.length > MAX_SSE_LINE_BYTES) {
      throw new StoaError("too_large", `the event stream sent a line longer than ${MAX_SSE_LINE_BYTES} bytes; is it a stoa metaserver's /v1/watch?`);
    }
    if (this.#eventBytes + this.#lineBytes + part.length > MAX_SSE_EVENT_BYTES) {
      throw new StoaError("too_large", `the event stream sent an event larger than ${MAX_SSE_EVENT_BYTES} bytes; is it a stoa metaserver's /v1/watch?`);
    }
    this.#line.push(part.slice());
    this.#lineBytes += part.length;
  }

  #endLine(out: SseEvent[]): void {
    const size = this.#lineBytes;
    const text = this.#text();
    if (size === 0) {
      if (this.#data !== null) out.push({ event: this.#event === "" ? "message" : this.#event, data: this.#data.join("\n") });
      this.#event = "";
      this.#data = null;
      this.#eventBytes = 0;
      return;
    }
    this.#eventBytes += size;
    if (text.startsWith(":")) return;
    const colon = text.indexOf(":");
    const field = colon === -1 ? text : text.slice(0, colon);
    let value = colon === -1 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.#event = value;
    else if (field === "data") (this.#data ??= []).push(value);
    // id, retry and unknown fields: nothing a watch uses.
  }

  /** The line collected so far as text (UTF-8, fatal on anything else), and a fresh line. */
  #text(): string {
    const parts = this.#line;
    this.#line = [];
    this.#lineBytes = 0;
    if (parts.length === 0) return "";
    const joined = parts.length === 1 ? (parts[0] as Uint8Array) : Buffer.concat(parts);
    try {
      return this.#utf8.decode(joined);
    } catch {
      throw new StoaError("decode", "the event stream sent bytes that are not UTF-8; is it a stoa metaserver's /v1/watch?");
    }
  }
}

/** A decoded event as a watch event; null for an event name this version does not know. */
export function watchEventOf(event: SseEvent): WatchEvent | null {
  if (event.event !== "watching" && !CHANGE_TYPES.has(event.event)) return null;
  let json: unknown;
  try {
    json = JSON.parse(event.data);
  } catch {
    throw new StoaError("decode", `the watch's ${event.event} event carries data that is not JSON`);
  }
  const parsed = event.event === "watching" ? WatchingEvent.safeParse(json) : ChangeEvent.safeParse(json);
  if (!parsed.success || parsed.data.type !== event.event) {
    throw new StoaError("schema", `the watch's ${event.event} event does not match the protocol; is the metaserver of this version?`);
  }
  return parsed.data;
}
