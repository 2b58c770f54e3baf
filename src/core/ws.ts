/**
 * A WebSocket client that stays connected: every subsystem that dials (pub/sub subscriber,
 * hotlink client, ...) uses it.
 *
 * Contract:
 * - Dials at once on construction, over Bun's global `WebSocket`: `ws://`, `wss://` and
 *   `ws+unix:///path/to.sock:/request/path` for a Unix socket. Binary messages arrive as
 *   `ArrayBuffer`.
 * - Every attempt that fails to open, times out (`connectTimeoutMs`) or closes later ends in
 *   exactly one `onClose(code, reason, willRetry)`; then, unless stopped, it waits
 *   `backoffDelay(attempts)` and dials again. `attempts` counts dials since the last stable
 *   connection — one that stayed open `stableAfterMs` — so a server that accepts and drops at
 *   once is not hammered; after `maxAttempts` such dials it gives up.
 * - Backoff is exponential (`minDelayMs · factor^(attempt-1)`, capped at `maxDelayMs`) with
 *   "equal jitter" by default: a delay in [d/2, d]. Jitter spreads the reconnect storm after a
 *   server restart; keeping half of d keeps a floor so a dead server is not dialled in a loop.
 * - `send` while not open queues into a bounded outbox (`outboxBytes`, off by default) flushed
 *   after `onOpen`, so a handshake sent from `onOpen` still goes first. It returns false when
 *   the message was neither sent nor queued, and throws `StoaError("closed")` after `close()`.
 * - `close()` stops for good: no timers stay behind, and `closed` resolves once the socket is
 *   gone. After `close()` the only callback left is the `onClose(…, false)` of a connection that
 *   was open, once its close handshake ends. Giving up after `maxAttempts` resolves `closed` too.
 * - Refused upgrades: Bun's `WebSocket` hides a non-101 answer (a close 1006, or "Expected 101
 *   status code: 502" and no body). Where the answer matters (`onRefused` given, and
 *   `dialWebSocket` for one-shot clients), the dial goes through the `ws` package's client
 *   (Bun ships its own implementation of it), which hands over the response: its status and
 *   up to `MAX_REFUSAL_BODY_BYTES` of body become an `UpgradeRefusal` — `error`/`message` when
 *   it is the JSON `{"error","message"}` a stoa gateway or publisher answers — reported before
 *   the attempt's `onClose`, whose reason is then `describeRefusal(…)`.
 * - Bounds of a `dialWebSocket` dial: the response head is bounded by Bun's HTTP client (about
 *   16 KiB; a longer one fails the dial, and `ws`'s `maxHeaderSize` is not honoured), a refused
 *   upgrade's body by `MAX_REFUSAL_BODY_BYTES`, a message by `DialOptions.maxPayload`.
 *   `onUpgrade` sees a 101's headers (e.g. to tell which server upgraded).
 */
import WsClient from "ws";
import { StoaError, describeError } from "./errors.ts";

interface BackoffOptions {
  minDelayMs: number;
  maxDelayMs: number;
  factor: number;
  /** "equal": [d/2, d] (default); "full": [0, d]; "none": d. */
  jitter: "equal" | "full" | "none";
}

export const DEFAULT_BACKOFF: Readonly<BackoffOptions> = {
  minDelayMs: 100,
  maxDelayMs: 10_000,
  factor: 2,
  jitter: "equal",
};

/** A connect that has not opened by then is abandoned and retried. */
const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
/** A connection open this long counts as a success and resets the backoff. */
const DEFAULT_STABLE_AFTER_MS = 5_000;
/** After `close()`, a peer that does not answer the close handshake is cut off after this. */
const CLOSE_HANDSHAKE_TIMEOUT_MS = 2_000;

const SCHEMES = new Set(["ws:", "wss:", "ws+unix:", "wss+unix:"]);

/** Body of a refused upgrade read at most: a stoa error body is a few hundred bytes. */
export const MAX_REFUSAL_BODY_BYTES = 4096;
/** Time to read a refused upgrade's body before reporting what arrived. */
const REFUSAL_BODY_TIMEOUT_MS = 2_000;

/** A server's non-101 answer to an upgrade. */
export interface UpgradeRefusal {
  status: number;
  /** The `error` of a JSON `{"error","message"}` body (stoa's gateway and publishers), else undefined. */
  error: string | undefined;
  /** Its `message`, else the body as text (cut at `MAX_REFUSAL_BODY_BYTES`), else "". */
  message: string;
}

/**
 * One line for a refused upgrade.
 * @example
 * describeRefusal({ status: 502, error: "target_down", message: "publisher cam1 is not running" });
 * // "502 target_down: publisher cam1 is not running"
 */
export function describeRefusal(refusal: UpgradeRefusal): string {
  const what = refusal.error === undefined ? `${refusal.status}` : `${refusal.status} ${refusal.error}`;
  return refusal.message === "" ? what : `${what}: ${refusal.message}`;
}

/** Parses a refused upgrade's body (see `UpgradeRefusal`); never throws. */
export function parseRefusal(status: number, body: Uint8Array): UpgradeRefusal {
  const text = Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString("utf8").trim();
  try {
    const json: unknown = JSON.parse(text);
    if (json !== null && typeof json === "object" && !Array.isArray(json)) {
      const { error, message } = json as Record<string, unknown>;
      if (typeof error === "string" || typeof message === "string") {
        return { status, error: typeof error === "string" ? error : undefined, message: typeof message === "string" ? message : "" };
      }
    }
  } catch {
    // not JSON: the text itself
  }
  return { status, error: undefined, message: text.replace(/[\x00-\x1f\x7f]+/g, " ") };
}

/** The `error.code` of the `error` event of a message over `DialOptions.maxPayload`. */
export const WS_PAYLOAD_TOO_LARGE = "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH";

/** How `dialWebSocket` dials; every field is optional. */
export interface DialOptions {
  headers?: Record<string, string>;
  protocols?: string | string[];
  /**
   * Largest message accepted, in bytes. Checked on each frame's header (a message's fragments
   * add up) before its payload is buffered; a larger one fails the connection: an `error` whose
   * `wsErrorCode` is `WS_PAYLOAD_TOO_LARGE`, then close 1006. Default: the `ws` package's 100 MiB.
   */
  maxPayload?: number;
  /**
   * The headers of a `101` answer (names in lower case), before its handshake is checked:
   * `open` follows only when it is a valid upgrade (Sec-WebSocket-Accept, protocol, extensions).
   */
  onUpgrade?: (headers: Readonly<Record<string, string | string[] | undefined>>) => void;
}

/**
 * The `ws` package's code for what failed a connection (`WS_ERR_…` for a protocol violation by
 * the server, e.g. `WS_ERR_UNEXPECTED_MASK`; a system code such as `ECONNRESET`), taken from an
 * `error` event of a `dialWebSocket` socket; undefined when it has none.
 */
export function wsErrorCode(event: Event): string | undefined {
  const error: unknown = "error" in event ? event.error : undefined;
  if (error === null || typeof error !== "object" || !("code" in error)) return undefined;
  return typeof error.code === "string" ? error.code : undefined;
}

/**
 * Opens a WebSocket (the `ws` package's client, as `WebSocket`'s interface) that reports a
 * refused upgrade to `onRefused` before its `error` and `close` events (see the module header).
 *
 * @example
 * ```ts
 * const ws = dialWebSocket("ws://[::1]:8083/pub/cam1", {}, (r) => console.error(describeRefusal(r)));
 * ws.onopen = () => ws.send("ping");
 * ```
 */
export function dialWebSocket(
  url: string,
  init: DialOptions,
  onRefused: (refusal: UpgradeRefusal) => void,
): WebSocket {
  const ws = new WsClient(url, init.protocols, {
    headers: init.headers ?? {},
    perMessageDeflate: false,
    followRedirects: false, // the default, said out loud: a redirect is a refusal, never followed
    ...(init.maxPayload === undefined ? {} : { maxPayload: init.maxPayload }),
  });
  // An `error` with no listener would be thrown (EventEmitter), e.g. closing while connecting
  // after the caller set `onerror = null`: errors reach `onerror` when one is set, else nobody.
  ws.on("error", () => {});
  const onUpgrade = init.onUpgrade;
  if (onUpgrade !== undefined) ws.on("upgrade", (res) => onUpgrade(res.headers));
  ws.on("unexpected-response", (_req, res) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let reported = false;
    const report = (): void => {
      if (reported) return;
      reported = true;
      clearTimeout(timer);
      onRefused(parseRefusal(res.statusCode ?? 0, Buffer.concat(chunks)));
      res.destroy();
      ws.terminate();
    };
    const timer = setTimeout(report, REFUSAL_BODY_TIMEOUT_MS);
    res.on("data", (chunk: Buffer) => {
      const room = MAX_REFUSAL_BODY_BYTES - size;
      if (room > 0) chunks.push(chunk.subarray(0, room));
      size += chunk.byteLength;
      if (size >= MAX_REFUSAL_BODY_BYTES) report();
    });
    res.on("end", report);
    res.on("error", report);
    res.on("close", report);
  });
  // The interface both clients share (onopen/onmessage/onerror/onclose, send, close,
  // terminate, readyState, bufferedAmount, binaryType "arraybuffer").
  return ws as unknown as WebSocket;
}

/**
 * Delay before reconnect attempt `attempt` (1-based; values below 1 count as 1).
 *
 * @example
 * ```ts
 * backoffDelay(3, { ...DEFAULT_BACKOFF, jitter: "none" }); // 400
 * backoffDelay(3, DEFAULT_BACKOFF, () => 0);             // 200: equal jitter keeps half
 * ```
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = DEFAULT_BACKOFF,
  random: () => number = Math.random,
): number {
  const n = Math.max(1, attempt);
  // Math.min first: factor ** n overflows to Infinity for large n, which min() absorbs.
  const ceiling = Math.min(options.maxDelayMs, options.minDelayMs * options.factor ** (n - 1));
  switch (options.jitter) {
    case "none":
      return ceiling;
    case "full":
      return random() * ceiling;
    case "equal":
      return ceiling / 2 + (random() * ceiling) / 2;
  }
}

export type WsState = "connecting" | "open" | "waiting" | "closing" | "closed";
type WsData = string | ArrayBuffer | Uint8Array;

export interface ReconnectOptions extends Partial<BackoffOptions> {
  headers?: Record<string, string>;
  protocols?: string | string[];
  /** Dials without a stable connection before giving up; Infinity by default. */
  maxAttempts?: number;
  connectTimeoutMs?: number;
  stableAfterMs?: number;
  /** Bytes `send` may queue while not connected; 0 (default) disables queueing. */
  outboxBytes?: number;
  /** Source of jitter, for deterministic tests. */
  random?: () => number;
  /** A connection opened; `attempt` is 1 when it opened on the first dial. */
  onOpen?: (ws: WebSocket, attempt: number) => void;
  onMessage?: (data: string | ArrayBuffer) => void;
  /** An attempt ended; `willRetry` is false once it has stopped for good. */
  onClose?: (code: number, reason: string, willRetry: boolean) => void;
  /** A connect failed (`io`) or timed out (`timeout`). */
  onError?: (err: StoaError) => void;
  /**
   * The server answered an upgrade with something other than 101 (see the module header);
   * called before that attempt's `onClose`. Giving it dials with the `ws` package's client.
   */
  onRefused?: (refusal: UpgradeRefusal) => void;
  /** The URL for each dial (e.g. to resume where the last connection stopped); default `url`. */
  urlFor?: () => string | URL;
  /**
   * Opens each connection instead of Bun's `WebSocket`: an object with the part of its
   * interface used here (on* handlers, send, close, terminate, readyState, bufferedAmount,
   * binaryType) — hotlink's framed relay link (hotlink/framed-link.ts). Not with `onRefused`.
   */
  dial?: (url: string, headers: Record<string, string>) => WebSocket;
}

/**
 * A WebSocket client that reconnects with jittered exponential backoff.
 *
 * @example
 * ```ts
 * const conn = new ReconnectingWebSocket("ws+unix:///run/stoa/gw.sock:/sub/cam1", {
 *   onOpen: (ws) => ws.send(encode({ type: "hello" })),
 *   onMessage: (data) => handle(data),
 *   onClose: (code, reason, willRetry) => log.warn("disconnected", { code, reason, willRetry }),
 * });
 * onShutdown("subscriber", () => conn.close());
 * ```
 */
export class ReconnectingWebSocket {
  /** Resolves once the client has stopped for good (after `close()` or giving up). */
  readonly closed: Promise<void>;

  readonly #url: string;
  readonly #backoff: BackoffOptions;
  readonly #maxAttempts: number;
  readonly #connectTimeoutMs: number;
  readonly #stableAfterMs: number;
  readonly #outboxLimit: number;
  readonly #random: () => number;
  readonly #options: ReconnectOptions;

  #current: WebSocket | undefined;
  #currentState: WsState = "connecting";
  #attemptCount = 0;
  #openedAt: number | undefined;
  #stopped = false;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #connectTimer: ReturnType<typeof setTimeout> | undefined;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  #outbox: WsData[] = [];
  #outboxSize = 0;
  #resolveClosed: () => void = () => {};

  constructor(url: string | URL, options: ReconnectOptions = {}) {
    this.#url = String(url);
    let scheme: string;
    try {
      scheme = new URL(this.#url).protocol;
    } catch {
      scheme = "";
    }
    if (!SCHEMES.has(scheme)) {
      throw new StoaError(
        "endpoint",
        `cannot dial ${JSON.stringify(this.#url)}: use ws://host:port/path, wss://… or ws+unix:///path/to.sock:/path`,
      );
    }
    this.#backoff = {
      minDelayMs: options.minDelayMs ?? DEFAULT_BACKOFF.minDelayMs,
      maxDelayMs: options.maxDelayMs ?? Math.max(DEFAULT_BACKOFF.maxDelayMs, options.minDelayMs ?? 0),
      factor: options.factor ?? DEFAULT_BACKOFF.factor,
      jitter: options.jitter ?? DEFAULT_BACKOFF.jitter,
    };
    const b = this.#backoff;
    if (!(b.minDelayMs >= 0 && b.maxDelayMs >= b.minDelayMs && b.factor >= 1)) {
      throw new StoaError(
        "internal",
        `bad backoff ${JSON.stringify(b)}: need 0 <= minDelayMs <= maxDelayMs and factor >= 1`,
      );
    }
    this.#maxAttempts = options.maxAttempts ?? Number.POSITIVE_INFINITY;
    if (!(this.#maxAttempts >= 1)) throw new StoaError("internal", `maxAttempts must be >= 1, got ${this.#maxAttempts}`);
    this.#connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.#stableAfterMs = options.stableAfterMs ?? DEFAULT_STABLE_AFTER_MS;
    this.#outboxLimit = options.outboxBytes ?? 0;
    this.#random = options.random ?? Math.random;
    this.#options = options;
    this.closed = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    this.#dial();
  }

  get state(): WsState {
    return this.#currentState;
  }

  /** Dials since the last stable connection, including the current one. */
  get attempts(): number {
    return this.#attemptCount;
  }

  /**
   * Send now when open, else queue if the outbox has room. Returns false if the message was
   * dropped; throws `StoaError("closed")` after `close()` or giving up.
   */
  send(data: WsData): boolean {
    if (this.#stopped) {
      throw new StoaError("closed", `websocket ${this.#url} is closed; create a new client to send again`);
    }
    if (this.#currentState === "open" && this.#current !== undefined) {
      this.#current.send(data);
      return true;
    }
    const size = typeof data === "string" ? Buffer.byteLength(data) : data.byteLength;
    if (this.#outboxSize + size > this.#outboxLimit) return false;
    // Copy binary data: the caller may reuse its buffer before we reconnect.
    this.#outbox.push(typeof data === "string" ? data : copyBytes(data));
    this.#outboxSize += size;
    return true;
  }

  /** Stop for good: close the connection (if any), cancel retries, drop the outbox. */
  close(code = 1000, reason = ""): void {
    if (this.#stopped) return;
    if (code !== 1000 && !(code >= 3000 && code <= 4999)) {
      throw new StoaError("internal", `close code ${code} not allowed: use 1000 or 3000-4999`);
    }
    this.#stopped = true;
    this.#outbox = [];
    this.#outboxSize = 0;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#connectTimer);
    const ws = this.#current;
    if (ws !== undefined && this.#currentState === "open") {
      this.#currentState = "closing";
      ws.close(code, reason);
      this.#closeTimer = setTimeout(() => {
        if (this.#current !== ws) return;
        ws.terminate();
        this.#abandon(ws);
        this.#ended(1006, "close handshake timeout");
      }, CLOSE_HANDSHAKE_TIMEOUT_MS);
      return;
    }
    if (ws !== undefined) this.#abandon(ws);
    this.#finish();
  }

  #dial(): void {
    this.#attemptCount++;
    this.#currentState = "connecting";
    this.#openedAt = undefined;
    let ws: WebSocket;
    /** Set when this attempt's upgrade was refused: the close's reason. */
    let refused: string | undefined;
    const url = this.#options.urlFor === undefined ? this.#url : String(this.#options.urlFor());
    try {
      const onRefused = this.#options.onRefused;
      const init: Bun.WebSocketOptions = { headers: this.#options.headers ?? {} };
      if (this.#options.dial !== undefined) {
        ws = this.#options.dial(url, this.#options.headers ?? {});
      } else if (onRefused !== undefined) {
        ws = dialWebSocket(url, { headers: this.#options.headers, protocols: this.#options.protocols }, (refusal) => {
          if (this.#current !== ws) return;
          refused = describeRefusal(refusal);
          onRefused(refusal);
        });
      } else {
        ws =
          this.#options.protocols === undefined
            ? new WebSocket(url, init)
            : new WebSocket(url, { ...init, protocols: this.#options.protocols });
      }
    } catch (err) {
      this.#options.onError?.(new StoaError("io", `websocket ${url}: ${messageOf(err)}`, { cause: err }));
      this.#ended(1006, messageOf(err));
      return;
    }
    ws.binaryType = "arraybuffer";
    this.#current = ws;
    this.#connectTimer = setTimeout(() => {
      if (this.#current !== ws || this.#currentState !== "connecting") return;
      this.#abandon(ws);
      this.#options.onError?.(
        new StoaError(
          "timeout",
          `websocket ${this.#url} did not open within ${this.#connectTimeoutMs} ms; is the server up and reachable?`,
        ),
      );
      this.#ended(1006, "connect timeout");
    }, this.#connectTimeoutMs);

    ws.onopen = () => {
      clearTimeout(this.#connectTimer);
      this.#currentState = "open";
      this.#openedAt = performance.now();
      this.#options.onOpen?.(ws, this.#attemptCount);
      this.#flush(ws);
    };
    ws.onmessage = (event) => {
      const data: unknown = event.data;
      if (typeof data === "string" || data instanceof ArrayBuffer) this.#options.onMessage?.(data);
    };
    ws.onerror = (event) => {
      if (refused !== undefined) return; // reported to onRefused already
      const message = "message" in event && typeof event.message === "string" ? event.message : "connection error";
      this.#options.onError?.(new StoaError("io", `websocket ${url}: ${message}`));
    };
    ws.onclose = (event) => {
      this.#abandon(ws);
      this.#ended(event.code, refused ?? event.reason);
    };
  }

  #flush(ws: WebSocket): void {
    // onOpen may have closed us, or the socket may already be gone.
    while (this.#outbox.length > 0 && this.#current === ws && this.#currentState === "open") {
      const data = this.#outbox.shift();
      if (data === undefined) break;
      this.#outboxSize -= typeof data === "string" ? Buffer.byteLength(data) : data.byteLength;
      ws.send(data);
    }
  }

  /** Forget a socket: no more events from it reach us. */
  #abandon(ws: WebSocket): void {
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close();
    if (this.#current === ws) this.#current = undefined;
    clearTimeout(this.#connectTimer);
  }

  /** One attempt is over: report it, then retry or stop. */
  #ended(code: number, reason: string): void {
    if (this.#openedAt !== undefined && performance.now() - this.#openedAt >= this.#stableAfterMs) {
      this.#attemptCount = 0;
    }
    this.#openedAt = undefined;
    const willRetry = !this.#stopped && this.#attemptCount < this.#maxAttempts;
    if (willRetry) {
      this.#currentState = "waiting";
      const delay = backoffDelay(this.#attemptCount, this.#backoff, this.#random);
      this.#retryTimer = setTimeout(() => this.#dial(), delay);
    } else {
      this.#stopped = true;
      this.#outbox = [];
      this.#outboxSize = 0;
    }
    this.#options.onClose?.(code, reason, willRetry);
    if (!willRetry) this.#finish();
  }

  #finish(): void {
    clearTimeout(this.#closeTimer);
    this.#currentState = "closed";
    this.#resolveClosed();
  }
}

function copyBytes(data: ArrayBuffer | Uint8Array): Uint8Array {
  return data instanceof ArrayBuffer
    ? new Uint8Array(data.slice(0))
    : data.slice();
}

function messageOf(err: unknown): string {
  return describeError(err);
}
