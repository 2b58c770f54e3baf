/**
 * The framed relay link: the same hotlink messages as the WebSocket (protocol.ts), each in one
 * length-delimited frame (core/frame.ts) over plain TCP, for daemons whose relay offers it.
 * Bun's WebSocket was the ceiling of the relay's throughput (a bare WebSocket chain of the
 * relay's shape carries less than the bare TCP chain); a frame costs a 4-byte header, no
 * masking, and a frame the relay forwards is written as it arrived, header and all, in one write.
 *
 * Offer. `GET /v1/hotlink` with the usual `Authorization`, no upgrade, and `Stoa-Link: tcp`
 * (`LINK_OFFER_HEADER`) is answered, after the same token check and connection cap as an
 * upgrade, with 200 `{"v":1,"tcp":PORT}` by a relay serving framed links
 * (`stoa hotlink serve --link-listen`), or 426 as before by one that does not. The daemon dials
 * PORT on the host of its relay URL — only for a `ws://` URL: a `wss://` relay's link stays on
 * TLS (a plain TCP link would give its encryption away), so it stays on the WebSocket.
 *
 * Wire, after TCP connect:
 *   client → server   frame: the `Authorization` value, "Bearer <user>:<token>" (at most
 *                     `MAX_AUTH_FRAME_BYTES`), within the Hello deadline of the connect
 *   server → client   frame: "<status> <text>" in UTF-8 — "200 ok", or 401/429/503 with the
 *                     same text an HTTP refusal carries, then the server closes. The client
 *                     sends nothing more before it has read "200".
 *   both ways         frames of one CBOR hotlink message each (Hello → Welcome first, as on
 *                     the WebSocket, and every limit of protocol.ts holds)
 *   either way        close frame: 0xFF, a u16 big-endian close code (the WebSocket's codes),
 *                     the reason in UTF-8; then the sender ends its side. 0xFF never begins a
 *                     CBOR map, so it cannot be a message. A connection that ends without one
 *                     closed with 1006.
 * The server pings a connection silent for half of `LINK_IDLE_TIMEOUT_MS` (a hotlink Ping, which
 * every daemon answers) and closes one silent for all of it (1001 "idle timeout"), as Bun does
 * on the WebSocket.
 *
 * Pieces. `RelaySocket` is the client's connection with the interface of a `WebSocket` (what
 * core/ws.ts `ReconnectingWebSocket` and link.ts use of it), so the reconnect logic is the one
 * of every stoa client: in "auto" mode each dial asks for the offer and opens a framed
 * connection or a WebSocket. `serveFramedLinks` is the relay's listener; each connection becomes
 * a switchboard `Link` (switchboard.ts) like a Bun `ServerWebSocket`: `sendBinary` returns the
 * bytes taken, -1 when they are queued behind earlier ones, 0 when dropped (over
 * `maxQueuedBytes`, or closing); `pause`/`resume` stop and start reading (TCP pushes back to the
 * sender); `drain` reports a drained queue.
 */
import type { Socket, TCPSocketListener } from "bun";
import { describeError, listenError } from "../core/errors.ts";
import { FdWatch } from "../core/fdguard.ts";
import { overFdBudget } from "../core/fdlimit.ts";
import { socketFd, takeSocketFd } from "../core/fdsplice.ts";
import { copyBytes, joinBytes } from "../core/bytes.ts";
import { FRAME_HEADER_BYTES, FrameDecoder, type FrameParts, writeFrameHeader } from "../core/frame.ts";
import type { Logger } from "../core/log.ts";
import { CopyingOutbox } from "../core/outbox.ts";
import { urlHost } from "../core/endpoint.ts";
import { MessageType, encodeMessage } from "./protocol.ts";
import type { PendingAttach } from "./relay-stream.ts";

/** The request header that asks a relay for its framed link. */
export const LINK_OFFER_HEADER = "Stoa-Link";
/** Largest authorization frame (users.ts bounds the header itself below this). */
export const MAX_AUTH_FRAME_BYTES = 1024;
/** First byte of a close frame. */
const CLOSE_FRAME_TAG = 0xff;
/** Largest status or close frame a side reads: a code and a reason of at most 1 KiB. */
const MAX_STATUS_FRAME_BYTES = 1024;
/** A connection silent this long is closed (Bun's WebSocket idle timeout on the relay is 60 s);
 * one silent half as long is pinged first. */
export const LINK_IDLE_TIMEOUT_MS = 60_000;
/** TCP keepalive's first probe on both sides. */
const KEEPALIVE_MS = LINK_IDLE_TIMEOUT_MS / 2;
/** How long a closing side waits for its queue to flush before cutting the connection. */
const CLOSE_FLUSH_MS = 2_000;
/** Largest message frame a client takes from its relay (the relay's own limit is at most 1 GiB). */
const CLIENT_MAX_FRAME_BYTES = 1024 * 1024 * 1024 + 1024 * 1024;
/** Time for the offer request; a relay that does not answer it gets the WebSocket. */
const OFFER_TIMEOUT_MS = 5_000;

const utf8 = new TextDecoder("utf-8", { fatal: false });
const utf8Encoder = new TextEncoder();

/** A frame of `payload`: header and payload in one new buffer. */
function frameOf(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(FRAME_HEADER_BYTES + payload.byteLength);
  writeFrameHeader(out, 0, payload.byteLength);
  out.set(payload, FRAME_HEADER_BYTES);
  return out;
}

/** A frame of UTF-8 `text`. */
export function textFrame(text: string): Uint8Array {
  return frameOf(utf8Encoder.encode(text));
}

/** First byte of a stream's attach frame (relay-stream.ts): never the first of a CBOR map either. */
export const ATTACH_FRAME_TAG = 0xfe;
/** An attach: the tag, the sid, and for a receiver a space and its key (relay-stream.ts). */
const ATTACH_RE = /^([A-Za-z0-9_-]{1,64})(?: ([A-Za-z0-9_-]{16,64}))?$/;

/** The attach frame for session `sid`, a receiver's with its `key`. */
export function attachFrame(sid: string, key?: string): Uint8Array {
  const text = utf8Encoder.encode(key === undefined ? sid : `${sid} ${key}`);
  const body = new Uint8Array(1 + text.byteLength);
  body[0] = ATTACH_FRAME_TAG;
  body.set(text, 1);
  return frameOf(body);
}

/** The sid and key (null: the sender's) of an attach frame, from its header on; null when it is no valid one. */
export function parseAttachFrame(frame: Uint8Array): { sid: string; key: string | null } | null {
  if (frame[FRAME_HEADER_BYTES] !== ATTACH_FRAME_TAG || frame.byteLength > FRAME_HEADER_BYTES + 1 + 64 + 1 + 64) return null;
  const m = ATTACH_RE.exec(utf8.decode(frame.subarray(FRAME_HEADER_BYTES + 1)));
  return m === null ? null : { sid: m[1] ?? "", key: m[2] ?? null };
}

/** A close frame: tag, code, reason cut to fit. */
export function closeFrame(code: number, reason: string): Uint8Array {
  const text = utf8Encoder.encode(reason).subarray(0, MAX_STATUS_FRAME_BYTES - 3);
  const body = new Uint8Array(3 + text.byteLength);
  body[0] = CLOSE_FRAME_TAG;
  body[1] = (code >>> 8) & 0xff;
  body[2] = code & 0xff;
  body.set(text, 3);
  return frameOf(body);
}

/** A close frame's code and reason, or null when `frame` is not one. */
export function parseCloseFrame(frame: Uint8Array, at = 0): { code: number; reason: string } | null {
  if (frame.byteLength - at < 3 || frame[at] !== CLOSE_FRAME_TAG) return null;
  const code = ((frame[at + 1] ?? 0) << 8) | (frame[at + 2] ?? 0);
  return { code, reason: clean(utf8.decode(frame.subarray(at + 3, at + MAX_STATUS_FRAME_BYTES))) };
}

/** The first byte after the header of a frame that spanned reads (its first part may be the header alone). */
/** The first byte of a frame's payload (after its header). */
function firstByte(frame: Uint8Array | FrameParts): number | undefined {
  return frame instanceof Uint8Array ? frame[FRAME_HEADER_BYTES] : payloadByte(frame);
}

function payloadByte(frame: FrameParts): number | undefined {
  let at = FRAME_HEADER_BYTES;
  for (const part of frame.parts) {
    if (at < part.byteLength) return part[at];
    at -= part.byteLength;
  }
  return undefined;
}

/** A status frame's parts: "<3 digits> <text>". Null for anything else. */
export function parseStatusFrame(frame: Uint8Array): { status: number; text: string } | null {
  if (frame.byteLength > MAX_STATUS_FRAME_BYTES) return null;
  const match = /^([1-5][0-9]{2})(?: ([^]*))?$/.exec(utf8.decode(frame));
  if (match === null) return null;
  return { status: Number(match[1]), text: clean(match[2] ?? "") };
}

/** Control characters out of a peer's text before it reaches a log. */
function clean(text: string): string {
  return text.replace(/[\x00-\x1f\x7f]+/g, " ").trim();
}

/**
 * The first frame of a connection (the client's authorization, the relay's status), read
 * before the stream's own decoder takes over: at most `max` bytes of payload, never more
 * buffered. `push` answers null until the frame is complete, then the frame and the bytes of
 * that read past it (which belong to the next decoder); "too_large" for a longer one.
 */
export class FirstFrame {
  readonly #buf: Uint8Array;
  #fill = 0;

  constructor(max: number) {
    this.#buf = new Uint8Array(FRAME_HEADER_BYTES + max);
  }

  push(chunk: Uint8Array): { frame: Uint8Array; rest: Uint8Array } | null | "too_large" {
    const buf = this.#buf;
    const before = this.#fill;
    const take = Math.min(chunk.byteLength, buf.byteLength - before);
    buf.set(chunk.subarray(0, take), before);
    this.#fill += take;
    if (this.#fill < FRAME_HEADER_BYTES) return null;
    const length = (buf[0] ?? 0) * 0x100_0000 + ((buf[1] ?? 0) << 16) + ((buf[2] ?? 0) << 8) + (buf[3] ?? 0);
    if (length > buf.byteLength - FRAME_HEADER_BYTES) return "too_large";
    const end = FRAME_HEADER_BYTES + length;
    if (this.#fill < end) return null;
    // The frame ended inside this chunk, at its byte end - before.
    return { frame: buf.slice(FRAME_HEADER_BYTES, end), rest: chunk.subarray(end - before) };
  }
}

// --- the client: a WebSocket-shaped connection -------------------------------------------

/** "auto": the framed link when the relay offers it (ws:// only), else the WebSocket; "ws": always the WebSocket. */
export type RelayLinkMode = "auto" | "ws";

/** What `RelaySocket` hands its handlers (the fields of the DOM events link.ts and core/ws.ts read). */
interface SocketEvents {
  onopen: ((event: Event) => void) | null;
  onmessage: ((event: { data: ArrayBuffer | string }) => void) | null;
  onerror: ((event: { message: string }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
}

/**
 * One dial of the relay: the offer request, then a framed connection, or the WebSocket when
 * none is offered. Has the part of `WebSocket`'s interface stoa's clients use.
 * @example
 * const conn = new ReconnectingWebSocket(url, { headers, dial: (u, h) => new RelaySocket(u, h, "auto") as unknown as WebSocket, ... });
 */
export class RelaySocket implements SocketEvents {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSING = 2;
  static readonly CLOSED = 3;
  readonly CONNECTING = 0;
  readonly OPEN = 1;
  readonly CLOSING = 2;
  readonly CLOSED = 3;
  onopen: ((event: Event) => void) | null = null;
  onmessage: ((event: { data: ArrayBuffer | string }) => void) | null = null;
  onerror: ((event: { message: string }) => void) | null = null;
  /**
   * The framed link's frames as they are decoded, each with its 4-byte header in front (the
   * message follows it) — the read itself when it is one frame, else a view of it (or a copy,
   * for a small frame in a large read or one whose header was split); nobody
   * writes a read again, so the handler may keep it — instead of `onmessage`'s ArrayBuffer (no
   * wrapping per message).
   */
  onframe: ((frame: Uint8Array) => void) | null = null;
  /**
   * With `onframe`: a frame that spanned reads, header first, as the views of each
   * (core/frame.ts `FrameParts`, `byteLength` bytes in all), which the handler may keep; unset,
   * such a frame is joined and goes to `onframe`.
   */
  onparts: ((message: FrameParts) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  binaryType = "arraybuffer";
  /** "tcp" once a framed connection carries it, "ws" once a WebSocket does, "" before. */
  kind: "" | "tcp" | "ws" = "";
  /** The framed connection's address (where relay streams attach too), once dialled. */
  framedAt: { hostname: string; port: number } | null = null;
  /** A framed connection's queue emptied (a WebSocket has no such event: poll `bufferedAmount`). */
  ondrain: (() => void) | null = null;

  #state = 0;
  #ws: WebSocket | null = null;
  #sock: Socket<undefined> | null = null;
  #out: CopyingOutbox | null = null;
  /** The relay's status frame, until it is read; then the messages' decoder. */
  #status: FirstFrame | null = null;
  #decoder: FrameDecoder | null = null;
  #authed = false;
  #paused = false;
  #ended = false;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  /** The code and reason of the close frame said or heard first. */
  #closeCode: { code: number; reason: string } | null = null;
  readonly #offerAbort = new AbortController();
  /** Reused for a message that was not framed in place. */
  #scratch = new Uint8Array(0);

  constructor(
    readonly url: string,
    readonly headers: Record<string, string>,
    mode: RelayLinkMode,
  ) {
    const parsed = new URL(url);
    if (mode === "ws" || parsed.protocol !== "ws:") {
      queueMicrotask(() => this.#openWebSocket());
      return;
    }
    void this.#ask(parsed);
  }

  get readyState(): number {
    return this.#state;
  }

  get bufferedAmount(): number {
    if (this.#ws !== null) return this.#ws.bufferedAmount;
    return this.#out?.queued ?? 0;
  }

  send(data: Uint8Array | ArrayBuffer | string): void {
    if (this.#ws !== null) {
      this.#ws.send(data);
      return;
    }
    if (this.#state !== RelaySocket.OPEN || this.#out === null) return;
    // No text frames here: a string goes as its UTF-8 bytes (the relay reads a message from them, or refuses it).
    const bytes = typeof data === "string" ? utf8Encoder.encode(data) : data instanceof Uint8Array ? data : new Uint8Array(data);
    const need = FRAME_HEADER_BYTES + bytes.byteLength;
    if (this.#scratch.byteLength < need) this.#scratch = new Uint8Array(Math.max(need, 64 * 1024));
    const frame = this.#scratch.subarray(0, need);
    writeFrameHeader(frame, 0, bytes.byteLength);
    frame.set(bytes, FRAME_HEADER_BYTES);
    // What waits is copied: the scratch is reused.
    this.#out.write(frame);
  }

  /**
   * Sends a frame its caller built whole — the 4-byte length header, then the message
   * (protocol.ts `encodeDataMessage` with `framed`) — as it is, in one write; what the socket
   * does not take is copied (the caller may reuse its buffer). `rest`: the frame's last bytes,
   * written right after (a large payload after its head, protocol.ts `encodeDataHead`: no copy
   * into one buffer first). Only on the framed link (`kind` "tcp"); false when it is not open.
   * The queue has no cap here (the link's users hold back on `bufferedAmount`), so a frame is
   * never cut between its pieces.
   */
  sendFrame(frame: Uint8Array, rest?: Uint8Array): boolean {
    if (this.#state !== RelaySocket.OPEN || this.#out === null) return false;
    this.#out.write(frame);
    if (rest !== undefined) this.#out.write(rest);
    return true;
  }

  /** Stops reading (also before the connection opens); true, as Bun's WebSocket answers. */
  pause(): boolean {
    this.#paused = true;
    this.#ws?.pause();
    this.#sock?.pause();
    return true;
  }

  resume(): void {
    this.#paused = false;
    this.#ws?.resume();
    this.#sock?.resume();
  }

  close(code = 1000, reason = ""): void {
    if (this.#ws !== null) {
      this.#ws.close(code, reason);
      return;
    }
    if (this.#state >= RelaySocket.CLOSING) return;
    const sock = this.#sock;
    if (sock === null) {
      this.#offerAbort.abort();
      this.#finish(1006, reason || "closed before it opened");
      return;
    }
    this.#state = RelaySocket.CLOSING;
    if (this.#authed && this.#out !== null) this.#out.write(closeFrame(code, reason));
    this.#endWhenFlushed(sock, code, reason);
  }

  terminate(): void {
    if (this.#ws !== null) {
      this.#ws.terminate();
      return;
    }
    this.#offerAbort.abort();
    this.#sock?.terminate();
    this.#finish(1006, "terminated");
  }

  async #ask(parsed: URL): Promise<void> {
    const http = new URL(parsed);
    http.protocol = "http:";
    let port: number | null = null;
    try {
      const signal = AbortSignal.any([this.#offerAbort.signal, AbortSignal.timeout(OFFER_TIMEOUT_MS)]);
      const res = await fetch(http, { headers: { ...this.headers, [LINK_OFFER_HEADER]: "tcp" }, signal, redirect: "manual" });
      const body = await res.text();
      if (this.#state !== RelaySocket.CONNECTING) return;
      if (res.status === 200) port = parseOffer(body);
      else if (res.status !== 426 && res.status !== 404) {
        // A refusal says what the WebSocket upgrade would have: report it the same way.
        this.#fail(`${res.status} ${clean(body).slice(0, 200)}`);
        return;
      }
    } catch (err) {
      if (this.#state !== RelaySocket.CONNECTING) return;
      this.#fail(describeError(err));
      return;
    }
    if (port === null) {
      this.#openWebSocket();
      return;
    }
    this.#dialTcp(parsed.hostname.replace(/^\[(.*)\]$/, "$1"), port);
  }

  #openWebSocket(): void {
    if (this.#state !== RelaySocket.CONNECTING) return;
    const ws = new WebSocket(this.url, { headers: this.headers });
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    this.kind = "ws";
    ws.onopen = (event) => {
      this.#state = RelaySocket.OPEN;
      if (this.#paused) ws.pause();
      this.onopen?.(event);
    };
    ws.onmessage = (event) => this.onmessage?.(event as { data: ArrayBuffer | string });
    ws.onerror = (event) => this.onerror?.({ message: "message" in event && typeof event.message === "string" ? event.message : "connection error" });
    ws.onclose = (event) => {
      this.#state = RelaySocket.CLOSED;
      this.onclose?.({ code: event.code, reason: event.reason });
    };
  }

  #dialTcp(hostname: string, port: number): void {
    this.kind = "tcp";
    this.framedAt = { hostname, port };
    const authorization = this.headers.Authorization ?? this.headers.authorization ?? "";
    Bun.connect<undefined>({
      hostname,
      port,
      socket: {
        open: (sock) => {
          if (this.#state !== RelaySocket.CONNECTING) {
            sock.terminate();
            return;
          }
          this.#sock = sock;
          this.#out = new CopyingOutbox(sock);
          this.#status = new FirstFrame(MAX_STATUS_FRAME_BYTES);
          sock.setNoDelay(true);
          sock.setKeepAlive(true, KEEPALIVE_MS);
          if (this.#paused) sock.pause();
          this.#out.write(textFrame(authorization));
        },
        data: (sock, chunk) => this.#data(sock, chunk),
        drain: (sock) => {
          const out = this.#out;
          if (out === null || !out.flush()) return;
          if (this.#ended) sock.end();
          else this.ondrain?.();
        },
        close: (_sock, err) => this.#finish(1006, err === undefined ? "" : describeError(err)),
        error: (_sock, err) => this.onerror?.({ message: describeError(err) }),
        connectError: (_sock, err) => {
          this.#fail(`framed link ${urlHost(hostname)}:${port}: ${describeError(err)}`);
        },
      },
    }).catch((err: unknown) => {
      if (this.#state === RelaySocket.CONNECTING && this.#sock === null) this.#fail(`framed link ${urlHost(hostname)}:${port}: ${describeError(err)}`);
    });
  }

  #data(sock: Socket<undefined>, chunk: Uint8Array): void {
    if (this.#state >= RelaySocket.CLOSED) return;
    if (!this.#authed) {
      const first = this.#status?.push(chunk) ?? null;
      if (first === null) return;
      const status = first === "too_large" ? null : parseStatusFrame(first.frame);
      if (first === "too_large" || status === null || status.status !== 200) {
        const why = status === null ? "the relay answered the framed link with no status" : `${status.status} ${status.text}`;
        this.onerror?.({ message: why });
        sock.terminate();
        this.#finish(1006, why);
        return;
      }
      this.#authed = true;
      this.#status = null;
      // A Bun socket's chunks are fresh and never written again: frames are views of them,
      // header and all (a read that is one frame is that read: no view of it made).
      this.#decoder = new FrameDecoder({ maxBytes: CLIENT_MAX_FRAME_BYTES, views: true, withHeader: true });
      this.#state = RelaySocket.OPEN;
      this.onopen?.(new Event("open"));
      if (first.rest.byteLength === 0 || this.#state !== RelaySocket.OPEN) return;
      chunk = first.rest;
    }
    const decoder = this.#decoder;
    if (decoder === null) return;
    let frames: (Uint8Array | FrameParts)[];
    try {
      frames = decoder.pushViews(chunk);
    } catch (err) {
      this.onerror?.({ message: `the relay broke the framing: ${describeError(err)}` });
      sock.terminate();
      this.#finish(1002, "framing error");
      return;
    }
    for (let piece of frames) {
      if (this.#state !== RelaySocket.OPEN) return;
      if (!(piece instanceof Uint8Array)) {
        // Data, nearly always: its payload stays the views of the reads. A close frame, or any
        // message without a handler for parts, is joined.
        const onparts = this.onparts;
        if (onparts !== null && this.onframe !== null && payloadByte(piece) !== CLOSE_FRAME_TAG) {
          onparts(piece);
          continue;
        }
        piece = joinBytes(piece.parts, piece.byteLength);
      }
      const frame = piece;
      const close = parseCloseFrame(frame, FRAME_HEADER_BYTES);
      if (close !== null) {
        this.#state = RelaySocket.CLOSING;
        this.#endWhenFlushed(sock, close.code, close.reason);
        return;
      }
      const onframe = this.onframe;
      if (onframe !== null) {
        onframe(frame);
        continue;
      }
      // The message, after its header, as a copy of its own (not `slice`, which is a view of
      // the same memory on a Buffer).
      const data = copyBytes(frame.subarray(FRAME_HEADER_BYTES)).buffer;
      this.onmessage?.({ data: data as ArrayBuffer });
    }
  }

  /** Ends our side once what waits is written; the close then reports `code` and `reason`. */
  #endWhenFlushed(sock: Socket<undefined>, code: number, reason: string): void {
    this.#ended = true;
    this.#closeCode ??= { code, reason };
    if ((this.#out?.queued ?? 0) === 0) sock.end();
    this.#closeTimer ??= setTimeout(() => sock.terminate(), CLOSE_FLUSH_MS);
  }

  #fail(message: string): void {
    this.onerror?.({ message });
    this.#finish(1006, message);
  }

  #finish(code: number, reason: string): void {
    if (this.#state === RelaySocket.CLOSED) return;
    this.#state = RelaySocket.CLOSED;
    clearTimeout(this.#closeTimer);
    this.#out?.clear();
    const said = this.#closeCode;
    this.onclose?.(said ?? { code, reason });
  }
}

/** The port of an offer body `{"v":1,"tcp":PORT}`, or null for anything else. */
export function parseOffer(body: string): number | null {
  if (body.length > 256) return null;
  try {
    const json: unknown = JSON.parse(body);
    if (json === null || typeof json !== "object") return null;
    const { v, tcp } = json as Record<string, unknown>;
    if (v !== 1 || typeof tcp !== "number" || !Number.isInteger(tcp) || tcp < 1 || tcp > 65_535) return null;
    return tcp;
  } catch {
    return null;
  }
}

// --- the relay's listener -----------------------------------------------------------------

/** What `authorize` answers: a connection to serve, or a refusal to send before closing. */
export type Admission<C> = { conn: C } | { status: number; text: string };

/** What the listener tells its owner (the switchboard's handlers, as for Bun's WebSocket). */
interface FramedLinkHandlers<C> {
  /** The `Authorization` value and the peer's address; called once per connection. */
  authorize(authorization: string, remote: string): Admission<C>;
  opened(conn: C, link: FramedLink): void;
  /**
   * One message, from its 4-byte length header on, the message after it: a view of the read it
   * came in, or (it spanned reads) the views of each (`FrameParts`). Bun's reads are fresh
   * buffers nobody writes again, so the handler may keep them.
   */
  message(conn: C, frame: Uint8Array | FrameParts): void;
  /**
   * The connection's first frame was a stream attach for `sid` (relay-stream.ts): from here the
   * connection is no link (`closed` is not called for it); its socket is paused, and `pending`
   * answers it or hands it over. Without this handler an attach is refused (404).
   */
  attach?(conn: C, sid: string, key: string | null, pending: PendingAttach): void;
  drained(conn: C): void;
  closed(conn: C, code: number, reason: string): void;
}

interface FramedLinkServerOptions<C> extends FramedLinkHandlers<C> {
  hostname: string;
  port: number;
  /** Largest message frame a client may send (a larger one closes the connection, 1009). */
  maxFrameBytes: number;
  /** Bytes a connection's send queue may hold; past it a send is dropped (Bun's backpressure limit). */
  maxQueuedBytes: number;
  /** Time from connect to the authorization frame. */
  authTimeoutMs: number;
  /** Silence after which a connection is closed (half of it: pinged); default `LINK_IDLE_TIMEOUT_MS`. */
  idleTimeoutMs?: number;
  log: Logger;
  /** Counted (and logged once per 10 s) when a connection is refused for want of descriptors. */
  onOutOfFds(): void;
}

interface FramedLinkServer {
  readonly port: number;
  /** Stops accepting; connections stay until their owner closes them. */
  stop(): void;
}

interface ConnData {
  link: FramedLink | null;
  /** An attach waiting for its answer (relay-stream.ts): the socket is paused and nothing may come. */
  stream: PendingAttach | null;
  /** The authorization frame until it is complete (null once read or refused). */
  auth: FirstFrame | null;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** One framed connection, as the switchboard sees it (its `Link`). */
export class FramedLink {
  readonly #sock: Socket<ConnData>;
  readonly #out: CopyingOutbox;
  readonly #decoder: FrameDecoder;
  readonly #maxFrameBytes: number;
  readonly #maxQueuedBytes: number;
  #closing = false;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  /** Reads so far (counted, not timed: no clock per read); the idle sweep notes when it changes. */
  reads = 0;
  /** Frames taken so far (only the first may be a stream attach). */
  framesSeen = 0;
  /** The sweep's: `reads` when it last looked, and since when it has not changed. */
  seenReads = 0;
  quietSince = performance.now();
  pinged = false;

  constructor(sock: Socket<ConnData>, maxFrameBytes: number, maxQueuedBytes: number) {
    this.#sock = sock;
    this.#maxQueuedBytes = maxQueuedBytes;
    this.#out = new CopyingOutbox(sock, { maxQueuedBytes });
    // Views of Bun's fresh reads, from each frame's header on: forwarded as they came, never
    // gathered into a buffer of their own (what the socket does not take is copied).
    this.#decoder = new FrameDecoder({ maxBytes: maxFrameBytes, withHeader: true, views: true });
    this.#maxFrameBytes = maxFrameBytes;
  }

  get closing(): boolean {
    return this.#closing;
  }

  /** A message (the relay's own, or one from a WebSocket): framed, then written. */
  sendBinary(data: Uint8Array): number {
    if (this.#closing) return 0;
    if (!this.#out.write(frameOf(data))) return 0;
    return this.#out.queued > 0 ? -1 : data.byteLength;
  }

  /**
   * A frame that came in on a framed link goes out as it came: header and all, one write (one
   * per read it spanned). Refused whole (0) if its bytes would go over the queue's cap.
   */
  sendFrame(frame: Uint8Array | FrameParts): number {
    if (this.#closing) return 0;
    if (frame instanceof Uint8Array) {
      if (!this.#out.write(frame)) return 0;
    } else {
      if (this.#out.queued + frame.byteLength > this.#maxQueuedBytes) return 0;
      for (const part of frame.parts) this.#out.write(part);
    }
    return this.#out.queued > 0 ? -1 : frame.byteLength - FRAME_HEADER_BYTES;
  }

  getBufferedAmount(): number {
    return this.#out.queued;
  }

  pause(): void {
    this.#sock.pause();
  }

  resume(): void {
    this.#sock.resume();
  }

  close(code = 1000, reason = ""): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#out.write(closeFrame(code, reason));
    if (this.#out.queued === 0) this.#sock.end();
    this.#closeTimer = setTimeout(() => this.#sock.terminate(), CLOSE_FLUSH_MS);
    this.#closeTimer.unref?.();
  }

  /** The frames of a read; throws `StoaError` "too_large" when one is over the limit. */
  frames(chunk: Uint8Array): (Uint8Array | FrameParts)[] {
    this.reads++;
    return this.#decoder.pushViews(chunk);
  }

  get maxFrameBytes(): number {
    return this.#maxFrameBytes;
  }

  /** Bytes of a frame not complete yet. */
  get pendingBytes(): number {
    return this.#decoder.buffered;
  }

  /** The socket drained: write what waits; true when nothing does. */
  flush(): boolean {
    const empty = this.#out.flush();
    if (empty && this.#closing) this.#sock.end();
    return empty;
  }

  /** The socket is gone. */
  gone(): void {
    clearTimeout(this.#closeTimer);
    this.#out.clear();
  }

  terminate(): void {
    this.#sock.terminate();
  }
}

/**
 * Serves framed relay links on `hostname:port` (see the module header). Throws `StoaError`
 * "in_use" or "io" when it cannot listen.
 */
export function serveFramedLinks<C>(options: FramedLinkServerOptions<C>): FramedLinkServer {
  const { log } = options;
  const conns = new Map<Socket<ConnData>, C>();
  const remoteOf = (sock: Socket<ConnData>): string => (sock.remoteAddress.includes(":") ? `[${sock.remoteAddress}]` : sock.remoteAddress);
  const refuse = (sock: Socket<ConnData>, status: number, text: string): void => {
    // The answer fits any socket buffer; then nothing more is read.
    sock.write(textFrame(`${status} ${text}`));
    sock.end();
  };

  const onAuthorized = (sock: Socket<ConnData>, authorization: string, rest: Uint8Array): void => {
    const admission = options.authorize(authorization, `${remoteOf(sock)}:${sock.remotePort}`);
    if ("status" in admission) {
      refuse(sock, admission.status, admission.text);
      return;
    }
    const link = new FramedLink(sock, options.maxFrameBytes, options.maxQueuedBytes);
    sock.data.link = link;
    conns.set(sock, admission.conn);
    sock.write(textFrame("200 ok"));
    options.opened(admission.conn, link);
    if (rest.byteLength > 0) onFrames(sock, link, admission.conn, rest);
  };

  const onFrames = (sock: Socket<ConnData>, link: FramedLink, conn: C, chunk: Uint8Array): void => {
    let frames: (Uint8Array | FrameParts)[];
    try {
      frames = link.frames(chunk);
    } catch (err) {
      const text = `message over the ${link.maxFrameBytes}-byte limit; the connection is closed`;
      log.debug("framed link: frame too large", { error: describeError(err) });
      link.close(1009, text);
      options.closed(conn, 1009, text);
      return;
    }
    for (const frame of frames) {
      if (link.closing) return;
      if (link.framesSeen++ === 0 && firstByte(frame) === ATTACH_FRAME_TAG) {
        onAttach(sock, conn, frame, frames.length === 1 && link.pendingBytes === 0);
        return;
      }
      // A close frame is small: one that spanned reads is joined to be read.
      const close =
        frame instanceof Uint8Array
          ? parseCloseFrame(frame, FRAME_HEADER_BYTES)
          : payloadByte(frame) === CLOSE_FRAME_TAG
            ? parseCloseFrame(joinBytes(frame.parts, frame.byteLength), FRAME_HEADER_BYTES)
            : null;
      if (close !== null) {
        link.close(1000, "");
        options.closed(conn, close.code, close.reason);
        return;
      }
      options.message(conn, frame);
    }
  };

  /** A stream attach (relay-stream.ts): the connection leaves the links, its owner answers it. */
  const onAttach = (sock: Socket<ConnData>, conn: C, frame: Uint8Array | FrameParts, alone: boolean): void => {
    sock.pause();
    sock.data.link?.gone();
    sock.data.link = null;
    const parsed = parseAttachFrame(frame instanceof Uint8Array ? frame : joinBytes(frame.parts, frame.byteLength));
    conns.delete(sock);
    const attach = options.attach;
    if (parsed === null || !alone || attach === undefined) {
      options.closed(conn, 1002, "stream attach refused");
      const text =
        parsed === null
          ? "400 an attach frame is 0xFE, a session id (1-64 of A-Z a-z 0-9 _ -) and, from a receiver, a space and its key (16-64 of them)"
          : !alone
            ? "400 nothing may follow an attach before its answer"
            : "404 this relay pairs no streams";
      refuse(sock, Number(text.slice(0, 3)), text.slice(4));
      return;
    }
    let answered = false;
    const pending: PendingAttach = {
      take: () => {
        if (answered || sock.data.stream !== pending) return -1;
        answered = true;
        sock.data.stream = null;
        return takeSocketFd(sock);
      },
      refuse: (status, text) => {
        if (answered) return;
        answered = true;
        sock.data.stream = null;
        refuse(sock, status, text);
        // Whoever holds it lets go (the pairer, when the refusal is not its own).
        const gone = pending.onGone;
        pending.onGone = null;
        gone?.();
      },
      onGone: null,
    };
    sock.data.stream = pending;
    attach(conn, parsed.sid, parsed.key, pending);
  };

  const onData = (sock: Socket<ConnData>, chunk: Uint8Array): void => {
    const d = sock.data;
    if (d.stream !== null) {
      // Paused, yet Bun may deliver what it had read: a client that does not wait for the answer.
      d.stream.refuse(400, "nothing may follow an attach before its answer");
      return;
    }
    const link = d.link;
    if (link !== null) {
      const conn = conns.get(sock);
      if (conn !== undefined) onFrames(sock, link, conn, chunk);
      return;
    }
    if (d.auth === null) return; // refused: nothing more is read
    const first = d.auth.push(chunk);
    if (first === null) return;
    d.auth = null;
    clearTimeout(d.timer);
    d.timer = undefined;
    if (first === "too_large") {
      refuse(sock, 401, "unauthorized: the first frame must be 'Bearer <user>:<token>'");
      return;
    }
    onAuthorized(sock, utf8.decode(first.frame), first.rest);
  };

  let listener: TCPSocketListener<ConnData> | null = null;
  const listen = (port: number): TCPSocketListener<ConnData> =>
    Bun.listen<ConnData>({
      hostname: options.hostname,
      port,
      socket: {
        open: (sock) => {
          sock.data = { link: null, stream: null, auth: new FirstFrame(MAX_AUTH_FRAME_BYTES), timer: undefined };
          if (overFdBudget(socketFd(sock))) {
            options.onOutOfFds();
            refuse(sock, 503, "server out of file descriptors; try again shortly");
            return;
          }
          sock.setNoDelay(true);
          sock.setKeepAlive(true, KEEPALIVE_MS);
          sock.data.timer = setTimeout(() => {
            sock.data.timer = undefined;
            sock.data.auth = null;
            refuse(sock, 408, `no authorization within ${options.authTimeoutMs} ms of the connect`);
          }, options.authTimeoutMs);
        },
        data: (sock, chunk) => {
          try {
            onData(sock, chunk);
          } catch (err) {
            log.error("bug in the framed relay link: closing the connection", { error: describeError(err) });
            sock.terminate();
          }
        },
        drain: (sock) => {
          const link = sock.data.link;
          if (link === null || !link.flush()) return;
          const conn = conns.get(sock);
          if (conn !== undefined) options.drained(conn);
        },
        close: (sock, err) => {
          clearTimeout(sock.data.timer);
          const stream = sock.data.stream;
          sock.data.stream = null;
          stream?.onGone?.();
          sock.data.link?.gone();
          const conn = conns.get(sock);
          conns.delete(sock);
          if (conn !== undefined) options.closed(conn, 1006, err === undefined ? "" : describeError(err));
        },
        error: (_sock, err) => log.debug("framed relay link error", { error: describeError(err) }),
      },
    });
  try {
    listener = listen(options.port);
  } catch (err) {
    throw listenError(err, `${urlHost(options.hostname)}:${options.port}`, { inUse: "pick another with --link-listen" });
  }
  const port = listener.port;
  const watch = new FdWatch({
    pauseAt: "limit",
    what: "hotlink framed links",
    log,
    pause: () => {
      listener?.stop(false);
      listener = null;
    },
    resume: () => {
      try {
        listener = listen(port);
        return true;
      } catch {
        return false;
      }
    },
  });
  // Idle connections: a Ping after half the idle timeout of silence, the close after all of it.
  const idleMs = options.idleTimeoutMs ?? LINK_IDLE_TIMEOUT_MS;
  const ping = encodeMessage({ t: MessageType.Ping, n: 0 });
  const idle = setInterval(() => {
    const now = performance.now();
    for (const [sock, conn] of conns) {
      const link = sock.data.link;
      if (link === null || link.closing) continue;
      if (link.reads !== link.seenReads) {
        link.seenReads = link.reads;
        link.quietSince = now;
        link.pinged = false;
      }
      const silent = now - link.quietSince;
      if (silent >= idleMs) {
        link.close(1001, "idle timeout");
        options.closed(conn, 1006, "idle timeout");
      } else if (silent >= idleMs / 2 && !link.pinged) {
        link.pinged = true;
        link.sendBinary(ping);
      }
    }
  }, Math.max(10, idleMs / 12));
  idle.unref?.();
  return {
    port,
    stop() {
      watch.stop();
      clearInterval(idle);
      listener?.stop(false);
      listener = null;
    },
  };
}

/** The body of an offer. */
export function offerBody(port: number): string {
  return JSON.stringify({ v: 1, tcp: port });
}
