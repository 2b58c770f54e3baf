/**
 * Confirmation: one ping to a publisher through the gateway of its host, the path every remote
 * client takes — `ws://[host]:<ping port>/pub/<pub_id>`, text `ping`, one text reply
 * `{"value", "seq", "ts"}` (src/stream/protocol.ts: `PingReply`, `MAX_PING_REPLY_BYTES`).
 *
 * A small WebSocket client of its own rather than the global `WebSocket`: that one reports every
 * failure as "Failed to connect" or "Expected 101 status code", while a user needs to hear
 * whether the gateway does not know the pub_id (404), the publisher behind it is down (502), or
 * it accepted and stayed silent. Every read is bounded (`MAX_RESPONSE_HEAD_BYTES`,
 * `MAX_ERROR_BODY_BYTES`, `MAX_PING_REPLY_BYTES`) and the whole round trip by one deadline. It
 * never throws: the outcome is a value, and the reason is a sentence for the user.
 *
 * Not a port scanner. `host` and the ping port come from whoever registered, so the reason must
 * not tell an attacker anything about a service that is not a stoa gateway: only two kinds of
 * answer are told apart —
 * - a stoa gateway's routing error (src/gateway/protocol.ts: an HTTP error whose JSON body's
 *   `error` is one of `ROUTE_ERRORS` with its status) is named by its code, never quoted;
 * - a `101` that is a valid WebSocket upgrade and names the pub_id asked for
 *   (`PUB_ID_HEADER`, src/stream/protocol.ts) is the publisher; what it then does wrong is
 *   named too (no reply, not JSON, wrong fields, closed), its bytes are not quoted.
 * Everything else — refused, reset, unreachable, a name that does not resolve, closed, silent
 * until the deadline, not HTTP, any other HTTP answer, a foreign WebSocket — is one reason,
 * `notAGateway`, with the same wording and the same `timedOut: false`, given only when the
 * deadline passes however soon it was known (a refused port and a silent one take as long).
 */
import type { Socket } from "bun";
import { StoaError } from "../core/errors.ts";
import { ROUTE_ERRORS } from "../gateway/protocol.ts";
import { MAX_PING_REPLY_BYTES, PingReply, PUB_ID_HEADER } from "../stream/protocol.ts";
import { publisherUrls, urlHost } from "./protocol.ts";

/** Largest HTTP response head from a gateway; the gateway's own cap on request heads is 8 KiB. */
const MAX_RESPONSE_HEAD_BYTES = 16 * 1024;
/** Enough of an error body to quote the gateway's `{error, message}`. */
const MAX_ERROR_BODY_BYTES = 4 * 1024;
/** RFC 6455 §1.3: the GUID the server appends to the key for Sec-WebSocket-Accept. */
const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const OP_CONTINUATION = 0x0;
const OP_TEXT = 0x1;
const OP_BINARY = 0x2;
const OP_CLOSE = 0x8;
const OP_PING = 0x9;

export interface PingTarget {
  host: string;
  /** The gateway's ping port on that host. */
  port: number;
  pubId: string;
}

export type PingOutcome =
  | { ok: true; reply: PingReply }
  | { ok: false; timedOut: boolean; reason: string };

export interface PingOptions {
  timeoutMs: number;
  /** Aborting ends the attempt at once (the metaserver is shutting down). */
  signal?: AbortSignal;
}

/** A confirmation function: the server's default is `pingThroughGateway`; tests may swap it. */
export type Pinger = (target: PingTarget, options: PingOptions) => Promise<PingOutcome>;

/** `foreign`: what answered is not a stoa gateway; the outcome waits for the deadline. */
type Phase = "connect" | "response" | "body" | "reply" | "foreign" | "done";

/**
 * Pings a publisher through its host's gateway. Never throws.
 *
 * @example
 * ```ts
 * const out = await pingThroughGateway({ host: "fd00::1", port: 8083, pubId: "abc" }, { timeoutMs: 3000 });
 * if (!out.ok) console.error(out.reason); // "could not reach ws://[fd00::1]:8083/pub/abc: connection refused — …"
 * ```
 */
export function pingThroughGateway(target: PingTarget, options: PingOptions): Promise<PingOutcome> {
  return new Promise<PingOutcome>((resolve) => new PingAttempt(target, options, resolve).start());
}

class PingAttempt {
  private phase: Phase = "connect";
  private socket: Socket<undefined> | null = null;
  private readonly inbox = new Inbox();
  private readonly pending: Uint8Array[] = [];
  private readonly key = Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("base64");
  private readonly url: string;
  private readonly timer: Timer;
  private status = 0;
  private contentLength: number | null = null;
  private fragments: Uint8Array[] = [];
  private fragmentBytes = 0;
  private readonly onAbort = () => this.fail("the metaserver is shutting down");

  constructor(
    private readonly target: PingTarget,
    private readonly options: PingOptions,
    private readonly resolve: (outcome: PingOutcome) => void,
  ) {
    this.url = publisherUrls(target.host, { service: 1, string: 1, ping: target.port }, target.pubId).ping;
    this.timer = setTimeout(() => this.timeout(), options.timeoutMs);
  }

  start(): void {
    if (this.options.signal?.aborted) return this.onAbort();
    this.options.signal?.addEventListener("abort", this.onAbort, { once: true });
    Bun.connect<undefined>({
      hostname: this.target.host,
      port: this.target.port,
      socket: {
        open: (socket) => {
          if (this.phase === "done") return void socket.terminate();
          this.socket = socket;
          this.phase = "response";
          this.write(new TextEncoder().encode(this.upgradeRequest()));
        },
        data: (_socket, data) => this.onData(data),
        drain: () => this.flush(),
        end: () => this.onClosed(),
        close: () => this.onClosed(),
        error: () => (this.phase === "reply" ? this.fail(`the connection to publisher ${this.target.pubId} at ${this.url} failed`) : this.foreign()),
        connectError: () => {}, // reported through the rejected promise below
      },
    }).catch(() => this.foreign());
  }

  private upgradeRequest(): string {
    return [
      `GET /pub/${this.target.pubId} HTTP/1.1`,
      `Host: ${urlHost(this.target.host)}:${this.target.port}`,
      "Upgrade: websocket",
      "Connection: Upgrade",
      `Sec-WebSocket-Key: ${this.key}`,
      "Sec-WebSocket-Version: 13",
      "User-Agent: stoa-meta",
      "",
      "",
    ].join("\r\n");
  }

  /**
   * What answered is not a stoa gateway (or nothing did): drop the connection now, but say so
   * only at the deadline, so how soon the answer came (refused at once, a banner, silence) tells
   * nothing about the service either.
   */
  private foreign(): void {
    if (this.phase === "done" || this.phase === "foreign") return;
    this.phase = "foreign";
    this.socket?.terminate();
    this.inbox.clear();
  }

  /** The one reason for every answer that is not a stoa gateway's or the publisher's. */
  private notAGateway(): string {
    const at = `${urlHost(this.target.host)}:${this.target.port}`;
    return (
      `no stoa gateway answered at ${at} (nothing listening, unreachable, silent, or another service); ` +
      `check the registered host and ping port, and that stoa gateway (or stoa up) runs there`
    );
  }

  private timeout(): void {
    if (this.phase === "body") this.finishHttpError(); // what came of the body is all there is
    if (this.phase === "done") return;
    if (this.phase !== "reply") return this.fail(this.notAGateway()); // foreign, connect, response
    this.settle({
      ok: false,
      timedOut: true,
      reason: `publisher ${this.target.pubId} accepted the WebSocket at ${this.url} but did not answer the ping within ${this.options.timeoutMs / 1000}s`,
    });
  }

  private onData(data: Uint8Array): void {
    if (this.phase === "done" || this.phase === "foreign") return;
    this.inbox.push(data);
    try {
      if (this.phase === "response") this.readHead();
      if (this.phase === "body") this.readBody();
      if (this.phase === "reply") this.readFrames();
    } catch (err) {
      // Before the publisher is identified, what went wrong is the foreign service's business.
      if (this.phase === "reply" && err instanceof Error) this.fail(err.message);
      else this.foreign();
    }
  }

  private onClosed(): void {
    if (this.phase === "done" || this.phase === "foreign") return;
    if (this.phase === "body") return this.finishHttpError();
    if (this.phase === "reply") this.fail(`publisher ${this.target.pubId} closed the connection at ${this.url} without answering the ping`);
    else this.foreign();
  }

  private readHead(): void {
    const end = indexOfHeadEnd(this.inbox.bytes);
    if (end < 0) {
      if (this.inbox.bytes.length > MAX_RESPONSE_HEAD_BYTES) throw new StoaError("too_large", "no end of the response head");
      return;
    }
    const head = new TextDecoder().decode(this.inbox.bytes.subarray(0, end));
    this.inbox.consume(end + 4);
    const [statusLine = "", ...lines] = head.split("\r\n");
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine);
    if (!m) throw new StoaError("decode", "not HTTP");
    this.status = Number(m[1]);
    const headers = new Map<string, string>();
    for (const line of lines) {
      const colon = line.indexOf(":");
      if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
    }
    if (this.status !== 101) {
      const length = Number(headers.get("content-length") ?? Number.NaN);
      this.contentLength = Number.isInteger(length) && length >= 0 ? length : null;
      this.phase = "body";
      return;
    }
    const accept = new Bun.CryptoHasher("sha1").update(this.key + WS_GUID).digest("base64");
    if (headers.get("sec-websocket-accept") !== accept) throw new StoaError("decode", "not a WebSocket upgrade");
    // Only the publisher asked for may answer: a foreign WebSocket server is not confirmed.
    if (headers.get(PUB_ID_HEADER.toLowerCase()) !== this.target.pubId) throw new StoaError("decode", "not this publisher");
    this.phase = "reply";
    this.write(clientFrame(OP_TEXT, new TextEncoder().encode("ping")));
  }

  private readBody(): void {
    const want = Math.min(this.contentLength ?? MAX_ERROR_BODY_BYTES, MAX_ERROR_BODY_BYTES);
    if (this.inbox.bytes.length >= want) this.finishHttpError();
  }

  private finishHttpError(): void {
    const code = gatewayErrorCode(this.status, this.inbox.bytes.subarray(0, MAX_ERROR_BODY_BYTES));
    const host = this.target.host;
    const pubId = this.target.pubId;
    if (code === null) return this.foreign();
    if (code === "unknown_pub_id") {
      return this.fail(`the stoa gateway on host ${host} does not serve publisher ${pubId} (404); is it running there, with the same --run-dir as the gateway?`);
    }
    if (code === "target_down") {
      return this.fail(`the stoa gateway on host ${host} knows publisher ${pubId} but its ping socket does not answer (502)`);
    }
    this.fail(`the stoa gateway on host ${host} refused the ping with ${this.status} ${code}`);
  }

  private readFrames(): void {
    for (;;) {
      const frame = parseServerFrame(this.inbox.bytes, this.url);
      if (frame === null) return;
      this.inbox.consume(frame.size);
      switch (frame.opcode) {
        case OP_PING:
          this.write(clientFrame(0xa, frame.payload));
          continue;
        case OP_CLOSE: {
          const code = frame.payload.length >= 2 ? (frame.payload[0] ?? 0) * 256 + (frame.payload[1] ?? 0) : 1005;
          return this.fail(`publisher ${this.target.pubId} closed the WebSocket (code ${code}) instead of answering the ping`);
        }
        case OP_BINARY:
          return this.fail(`publisher ${this.target.pubId} answered the ping with a binary frame; its ping endpoint answers text`);
        case OP_TEXT:
        case OP_CONTINUATION: {
          this.fragmentBytes += frame.payload.length;
          if (this.fragmentBytes > MAX_PING_REPLY_BYTES) {
            return this.fail(`publisher ${this.target.pubId}'s ping reply is larger than ${MAX_PING_REPLY_BYTES} bytes`);
          }
          this.fragments.push(frame.payload.slice()); // the inbox reuses its memory
          if (frame.fin) return this.finishReply();
          continue;
        }
        default:
          continue; // pong and reserved control frames carry nothing for us
      }
    }
  }

  private finishReply(): void {
    let json: unknown;
    try {
      json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(concat(...this.fragments)));
    } catch {
      return this.fail(`publisher ${this.target.pubId} answered the ping with something that is not JSON`);
    }
    const reply = PingReply.safeParse(json);
    if (!reply.success) {
      return this.fail(`publisher ${this.target.pubId} answered the ping without the fields {value, seq, ts}`);
    }
    // Settle first: ending the socket may run the close handler synchronously.
    this.settle({ ok: true, reply: reply.data }, false);
    // Close politely (1000); the answer is in hand, so do not wait for the peer's close frame.
    this.write(clientFrame(OP_CLOSE, Uint8Array.of(0x03, 0xe8)));
    this.socket?.end();
  }

  private write(bytes: Uint8Array): void {
    this.pending.push(bytes);
    this.flush();
  }

  // Bun's write() may take only part of the bytes: keep the rest until drain.
  private flush(): void {
    const socket = this.socket;
    while (socket !== null && this.pending.length > 0) {
      const head = this.pending[0] as Uint8Array;
      const n = socket.write(head);
      if (n < head.length) {
        this.pending[0] = head.subarray(Math.max(0, n));
        return;
      }
      this.pending.shift();
    }
  }

  private fail(reason: string): void {
    this.settle({ ok: false, timedOut: false, reason });
  }

  private settle(outcome: PingOutcome, terminate = true): void {
    if (this.phase === "done") return;
    this.phase = "done";
    clearTimeout(this.timer);
    this.options.signal?.removeEventListener("abort", this.onAbort);
    if (terminate) this.socket?.terminate();
    this.inbox.clear();
    this.fragments = [];
    this.resolve(outcome);
  }
}

/** Received bytes not yet consumed. Grows by doubling, so a large reply costs O(n) copying. */
class Inbox {
  private store = new Uint8Array(4096);
  private start = 0;
  private end = 0;

  get bytes(): Uint8Array {
    return this.store.subarray(this.start, this.end);
  }

  push(data: Uint8Array): void {
    if (this.end + data.length > this.store.length) {
      const length = this.end - this.start;
      const needed = length + data.length;
      if (needed > this.store.length) {
        const grown = new Uint8Array(Math.max(needed, this.store.length * 2));
        grown.set(this.bytes);
        this.store = grown;
      } else {
        this.store.copyWithin(0, this.start, this.end);
      }
      this.start = 0;
      this.end = length;
    }
    this.store.set(data, this.end);
    this.end += data.length;
  }

  consume(n: number): void {
    this.start += n;
    if (this.start >= this.end) this.start = this.end = 0;
  }

  clear(): void {
    this.store = new Uint8Array(0);
    this.start = this.end = 0;
  }
}

interface Frame {
  fin: boolean;
  opcode: number;
  payload: Uint8Array;
  /** Bytes the frame took in the buffer. */
  size: number;
}

/** One complete server frame at the start of `buf`, null if more bytes are needed. */
function parseServerFrame(buf: Uint8Array, url: string): Frame | null {
  if (buf.length < 2) return null;
  const b0 = buf[0] ?? 0;
  const b1 = buf[1] ?? 0;
  if ((b1 & 0x80) !== 0) throw new StoaError("decode", `${url} sent a masked frame; a WebSocket server must not`);
  let length = b1 & 0x7f;
  let offset = 2;
  if (length === 126) {
    if (buf.length < 4) return null;
    length = ((buf[2] ?? 0) << 8) | (buf[3] ?? 0);
    offset = 4;
  } else if (length === 127) {
    if (buf.length < 10) return null;
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const big = view.getBigUint64(2);
    length = big > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(big);
    offset = 10;
  }
  // Checked on the header, before buffering the payload.
  if (length > MAX_PING_REPLY_BYTES) {
    throw new StoaError("too_large", `${url} announced a ${length}-byte frame; a ping reply is at most ${MAX_PING_REPLY_BYTES} bytes`);
  }
  if (buf.length < offset + length) return null;
  return { fin: (b0 & 0x80) !== 0, opcode: b0 & 0x0f, payload: buf.subarray(offset, offset + length), size: offset + length };
}

/** A client frame: FIN set, masked as RFC 6455 §5.3 requires of clients. */
function clientFrame(opcode: number, payload: Uint8Array): Uint8Array {
  const extended = payload.length < 126 ? 0 : payload.length < 65536 ? 2 : 8;
  const out = new Uint8Array(2 + extended + 4 + payload.length);
  out[0] = 0x80 | opcode;
  const view = new DataView(out.buffer);
  if (extended === 0) out[1] = 0x80 | payload.length;
  else if (extended === 2) {
    out[1] = 0x80 | 126;
    view.setUint16(2, payload.length);
  } else {
    out[1] = 0x80 | 127;
    view.setBigUint64(2, BigInt(payload.length));
  }
  const maskAt = 2 + extended;
  out.set(crypto.getRandomValues(new Uint8Array(4)), maskAt);
  for (let i = 0; i < payload.length; i++) out[maskAt + 4 + i] = (payload[i] ?? 0) ^ (out[maskAt + (i % 4)] ?? 0);
  return out;
}

function indexOfHeadEnd(buf: Uint8Array): number {
  for (let i = 0; i + 3 < buf.length; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
  }
  return -1;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  let length = 0;
  for (const p of parts) length += p.length;
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * The routing error code of a stoa gateway's error answer (`status` and a JSON body
 * `{"error": code, …}` with `ROUTE_ERRORS[code] === status`), or null for anything else.
 */
function gatewayErrorCode(status: number, body: Uint8Array): string | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
  } catch {
    return null;
  }
  if (typeof parsed !== "object" || parsed === null || !("error" in parsed) || typeof parsed.error !== "string") return null;
  const code = parsed.error;
  return Object.hasOwn(ROUTE_ERRORS, code) && (ROUTE_ERRORS as Record<string, number>)[code] === status ? code : null;
}
