/**
 * A client daemon's connection to the relay server: one connection (core/ws.ts, reconnecting
 * with jittered backoff) — the framed TCP link when the relay offers it and `linkMode` is
 * "auto" (framed-link.ts), else the WebSocket — Hello → Welcome, then hotlink messages both ways.
 *
 * Contract:
 * - `onUp(welcome)` after every successful Hello/Welcome; `onDown(reason)` when that connection
 *   is lost. The server closes a connection's sessions when it goes, so after `onDown` every
 *   session is gone and the daemon must end them locally (protocol.ts).
 * - `send` returns false when the link is down (the message is not queued: a session message
 *   belongs to the connection it was opened on).
 * - Flow control, both ways. Outgoing: `busy` is true while the socket holds more than
 *   `LINK_HIGH_WATER` unsent bytes; `whenWritable(fn)` calls `fn` once it is below
 *   `LINK_LOW_WATER` (Bun's client WebSocket has no drain event, so this polls, only while
 *   someone waits; the framed link's drain calls it). Incoming: `pause()` stops reading the socket (also across a reconnect)
 *   until `resume()`; sessions.ts `SessionTable.hold` uses it.
 * - It is the relay rung's `Transport` (transport.ts), shared by every session on it; it knows
 *   nothing of sessions (sessions.ts keeps them, in the daemon's `SessionTable`).
 */
import { joinBytes } from "../core/bytes.ts";
import { FRAME_HEADER_BYTES, type FrameParts, messageStart } from "../core/frame.ts";
import type { Logger } from "../core/log.ts";
import { backoffDelay, ReconnectingWebSocket } from "../core/ws.ts";
import { RelaySocket, type RelayLinkMode } from "./framed-link.ts";
import type { PathData, Transport } from "./transport.ts";
import type { StreamEndpoint } from "./relay-stream.ts";
import { formatAuthorization } from "./users.ts";
import {
  type HotlinkMessage,
  type HotlinkMessageInput,
  MessageType,
  PROTOCOL_VERSION,
  type WelcomeMessage,
  encodeMessage,
  type DataMessage,
  type EncodeScratch,
  encodeDataMessage,
  encodeDataHead,
  InPlaceData,
  lastPayload,
  payloadLength,
  parseDataFast,
  safeParseMessage,
} from "./protocol.ts";

/** Unsent bytes on the relay socket above which senders stop reading their sources. */
const LINK_HIGH_WATER = 4 * 1024 * 1024;
/** On the framed link a Data payload this large goes as a write of its own after its head
 * (protocol.ts `encodeDataHead`): copying 64 KiB costs more than a second write. */
const UNCOPIED_PAYLOAD_BYTES = 64 * 1024;
/** ... and below which they start again. */
const LINK_LOW_WATER = 1024 * 1024;
const POLL_MS = 1;

interface LinkOptions {
  /** ws:// or wss:// URL of the server's /v1/hotlink. */
  url: string;
  user: string;
  token: string;
  log: Logger;
  onUp(welcome: WelcomeMessage): void;
  onDown(reason: string): void;
  onMessage(message: HotlinkMessage): void;
  /** Reconnect backoff floor, ms (tests use small values). */
  minDelayMs?: number;
  /** "auto" (default): the framed link when the relay offers it; "ws": the WebSocket always. */
  linkMode?: RelayLinkMode;
}

export class RelayLink implements Transport {
  readonly rung = "relay";
  readonly #options: LinkOptions;
  readonly #conn: ReconnectingWebSocket;
  #stopping = false;
  #ws: WebSocket | null = null;
  /** The connection is a framed link: Data is encoded with its frame header in front. */
  #framed = false;
  #welcome: WelcomeMessage | null = null;
  #refused = false;
  /** Why the last dial failed, and the backoff step last said at info (0: none since the last Welcome). */
  #lastFailure = "";
  #saidStep = 0;
  #waiters: (() => void)[] = [];
  #poll: ReturnType<typeof setTimeout> | undefined;
  #paused = false;
  readonly #scratch: EncodeScratch = { buffer: new Uint8Array(0) };
  /** Messages on this link. */
  readonly messages = { tx: 0, txBytes: 0, rx: 0, rxBytes: 0 };

  constructor(options: LinkOptions) {
    this.#options = options;
    const log = options.log;
    const backoff = { minDelayMs: options.minDelayMs ?? 200, maxDelayMs: 5_000, factor: 2, jitter: "none" as const };
    const mode = options.linkMode ?? "auto";
    this.#conn = new ReconnectingWebSocket(options.url, {
      headers: { Authorization: formatAuthorization(options.user, options.token) },
      dial: (url, headers) => new RelaySocket(url, headers, mode) as unknown as WebSocket,
      minDelayMs: backoff.minDelayMs,
      maxDelayMs: backoff.maxDelayMs,
      onOpen: (ws) => {
        this.#ws = ws;
        const sock = ws as unknown as RelaySocket;
        this.#framed = sock.kind === "tcp";
        // The framed link says when its queue empties; the WebSocket is polled (whenWritable).
        if (this.#framed) {
          sock.ondrain = () => this.#check();
          sock.onframe = (frame) => this.#onFrame(frame);
          sock.onparts = (message) => this.#onParts(message);
        }
        ws.send(encodeMessage({ t: MessageType.Hello, v: PROTOCOL_VERSION, agt: "stoa" }));
      },
      onMessage: (data) => this.#onData(data),
      onClose: (code, reason, willRetry) => {
        const was = this.#welcome !== null;
        this.#ws = null;
        this.#framed = false;
        this.#welcome = null;
        if (was) {
          // Our own close (the daemon stopping) is no loss worth a warning.
          if (this.#stopping) log.debug("closed the relay server connection", { code, reason });
          else log.warn("lost the relay server", { code, reason, retrying: willRetry });
          options.onDown(reason || `connection closed (${code})`);
        } else if (code === 1006 || code === 1002) {
          // At the default level, once per backoff step (then the step stays at its ceiling):
          // a daemon that cannot reach its relay says so, without a line per dial.
          const step = backoffDelay(this.#conn?.attempts ?? 1, backoff);
          const fields = { server: options.url, reason: this.#lastFailure || reason || `connection closed (${code})`, retrying: willRetry, retry_in_ms: step };
          if (step !== this.#saidStep && willRetry) {
            this.#saidStep = step;
            log.info("relay server not reachable; retrying", fields);
          } else log.debug("relay server not reachable", fields);
        }
        this.#wake();
      },
      onError: (err) => {
        // A refused token will not fix itself: say so loudly (once per outage), not at debug.
        if (/\b401\b/.test(err.message)) {
          if (!this.#refused) log.error("the relay server refused this user's token (401); check --user and --token-file", { server: options.url });
          this.#refused = true;
        } else log.debug("relay connection failed", { err });
        this.#lastFailure = err.message;
      },
    });
  }

  /** Why the last dial since the last Welcome failed ("" when none has). */
  get lastFailure(): string {
    return this.#lastFailure;
  }

  /** What carries the link now: "tcp" (the framed link), "ws", or "" while down. */
  get transport(): "" | "tcp" | "ws" {
    return this.#ws === null ? "" : this.#framed ? "tcp" : "ws";
  }

  /** True between Welcome and the loss of that connection. */
  get up(): boolean {
    return this.#welcome !== null;
  }

  get welcome(): WelcomeMessage | null {
    return this.#welcome;
  }

  /**
   * Where this daemon attaches relay streams (relay-stream.ts): on a framed link whose relay
   * said `stm` in its Welcome; else null.
   */
  get streamEndpoint(): StreamEndpoint | null {
    const at = this.#framed && this.#welcome?.stm === true ? (this.#ws as unknown as RelaySocket | null)?.framedAt : null;
    if (at === null || at === undefined) return null;
    return { ...at, authorization: formatAuthorization(this.#options.user, this.#options.token) };
  }

  /** Largest Data payload the server takes (from Welcome). */
  get maxPayload(): number {
    return this.#welcome?.mpb ?? 0;
  }

  send(message: HotlinkMessageInput): boolean {
    return this.sendEncoded(encodeMessage(message, { maxBytes: this.#welcome?.mmb }));
  }

  /**
   * Data built from checked values (sessions.ts): encoded without the schema pass, into one
   * buffer reused message after message (the client WebSocket's send() copies what it is given,
   * measured: no allocation, page faults or garbage per message; on the framed link the encoder
   * writes the frame header in front and the frame goes as it is, copied only where the socket
   * did not take it).
   */
  sendData(message: DataMessage): boolean {
    const ws = this.#ws;
    if (ws === null || this.#welcome === null) return false;
    if (!this.#framed) return this.sendEncoded(encodeDataMessage(message, this.#welcome.mmb, this.#scratch));
    const sock = ws as unknown as RelaySocket;
    const length = payloadLength(message);
    if (length >= UNCOPIED_PAYLOAD_BYTES) {
      // Its head, then the payload as it is: two writes, but no copy of the payload.
      const head = encodeDataHead(message, this.#welcome.mmb, this.#scratch);
      if (!sock.sendFrame(head, message.pay)) return false;
      this.messages.tx++;
      this.messages.txBytes += head.byteLength - FRAME_HEADER_BYTES + length;
      return true;
    }
    const frame = encodeDataMessage(message, this.#welcome.mmb, this.#scratch, true);
    if (!sock.sendFrame(frame)) return false;
    this.messages.tx++;
    this.messages.txBytes += frame.byteLength - FRAME_HEADER_BYTES;
    return true;
  }

  sendEncoded(bytes: Uint8Array): boolean {
    const ws = this.#ws;
    if (ws === null || this.#welcome === null) return false;
    ws.send(bytes);
    this.messages.tx++;
    this.messages.txBytes += bytes.byteLength;
    return true;
  }

  get buffered(): number {
    return this.#ws?.bufferedAmount ?? 0;
  }

  get busy(): boolean {
    return this.buffered > LINK_HIGH_WATER;
  }

  /** Calls `fn` once the socket's unsent bytes are below the low-water mark (or the link is down). */
  whenWritable(fn: () => void): void {
    this.#waiters.push(fn);
    if (this.#framed && this.buffered > 0) return; // its drain calls #check
    if (this.#poll === undefined) this.#poll = setTimeout(() => this.#check(), POLL_MS);
  }

  /** Stop reading from the server until `resume()`, also on the next connection. */
  pause(): void {
    this.#paused = true;
    this.#ws?.pause();
  }

  resume(): void {
    this.#paused = false;
    this.#ws?.resume();
  }

  close(): Promise<void> {
    this.#stopping = true;
    this.#conn.close(1000, "daemon stopping");
    clearTimeout(this.#poll);
    this.#poll = undefined;
    return this.#conn.closed;
  }

  #check(): void {
    clearTimeout(this.#poll);
    this.#poll = undefined;
    if (this.#ws !== null && this.buffered > LINK_LOW_WATER) {
      if (!this.#framed) this.#poll = setTimeout(() => this.#check(), POLL_MS);
      return;
    }
    this.#wake();
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const fn of waiters) fn();
  }

  #onData(data: string | ArrayBuffer): void {
    if (typeof data === "string") {
      this.#options.log.warn("the relay server sent a text frame; ignored");
      return;
    }
    this.#onBytes(new Uint8Array(data));
  }

  /**
   * A message from the relay that spanned the link's reads: a Data whose fields lie in the first
   * read goes on as `PathData` with its payload the views of the reads (never joined on the way
   * to a tunnel or an IPC application); anything else is joined and read as one.
   */
  #onParts(message: FrameParts): void {
    const { parts, byteLength } = message;
    // Each frame from its header on (the framed link's decoder keeps them: see `#onFrame`); the
    // header alone is the first part when it ended a read.
    const { part: first, at, next } = messageStart(message);
    const total = byteLength - FRAME_HEADER_BYTES;
    const head = this.#welcome === null || first === undefined ? null : parseDataFast(first, this.#welcome.mmb, at, true, total);
    if (head === null) {
      this.#onBytes(joinBytes(parts, byteLength).subarray(FRAME_HEADER_BYTES));
      return;
    }
    this.messages.rx++;
    this.messages.rxBytes += total;
    const pieces = head.pay.byteLength > 0 ? [head.pay, ...parts.slice(next)] : parts.slice(next);
    let length = 0;
    for (const p of pieces) length += p.byteLength;
    let joined: Uint8Array | null = null;
    const data: PathData = {
      t: MessageType.Data,
      sid: head.sid,
      seq: head.seq,
      get pay() {
        joined ??= joinBytes(pieces, length);
        return joined;
      },
      pth: head.pth,
      etg: head.etg,
      parts: pieces,
      length,
    };
    this.#options.onMessage(data);
  }

  /**
   * A frame of the framed link, its header in front: a Data goes on read in place
   * (`InPlaceData`, no view of the read made), anything else as its message.
   */
  #onFrame(frame: Uint8Array): void {
    const fast = this.#welcome === null ? null : parseDataFast(frame, this.#welcome.mmb, FRAME_HEADER_BYTES, false);
    if (fast === null) {
      this.#onBytes(frame.subarray(FRAME_HEADER_BYTES));
      return;
    }
    this.messages.rx++;
    this.messages.rxBytes += frame.byteLength - FRAME_HEADER_BYTES;
    this.#options.onMessage(new InPlaceData(fast.sid, fast.seq, fast.pth, fast.etg, frame, lastPayload.at, lastPayload.length));
  }

  /** One message from the relay, in a buffer of its own. */
  #onBytes(data: Uint8Array): void {
    this.messages.rx++;
    this.messages.rxBytes += data.byteLength;
    // Data, the bulk of the traffic, without copying its payload (a message's buffer is fresh).
    const fast = this.#welcome === null ? null : parseDataFast(data, this.#welcome.mmb);
    if (fast !== null) {
      this.#options.onMessage(fast);
      return;
    }
    const result = safeParseMessage(data, { maxBytes: this.#welcome?.mmb });
    if (!result.ok) {
      this.#options.log.warn("the relay server sent a message this daemon cannot read; ignored", { err: result.error });
      return;
    }
    const message = result.value;
    if (message.t === MessageType.Welcome) {
      if (this.#welcome !== null) return;
      this.#welcome = message;
      this.#refused = false;
      this.#saidStep = 0;
      this.#lastFailure = "";
      if (this.#paused) this.#ws?.pause();
      this.#options.onUp(message);
      return;
    }
    if (message.t === MessageType.Ping) {
      this.send({ t: MessageType.Pong, n: message.n });
      return;
    }
    if (this.#welcome === null) return;
    this.#options.onMessage(message);
  }
}
