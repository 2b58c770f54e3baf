/**
 * The subscriber side: a stream that stays subscribed across disconnects, and the one-shot
 * "latest value" ping.
 *
 * Contract of `subscribe` (service kind):
 * - Dials with core/ws.ts (reconnect with jittered backoff) a `ws://…/pub/<pub_id>` gateway URL
 *   or a direct `ws+unix:///…/service.sock:/` URL. Every connection starts with a hello frame;
 *   `onOpen` runs once it arrived. A first frame that is not a valid hello means the URL is not
 *   a stoa service endpoint: `onError` gets a "decode" error and the subscription stops.
 * - Values reach `onValue` in seq order, each at most once. Every hole in the sequence is
 *   reported to `onGap` before the value after it, with the seq that comes next and how many
 *   were lost and why: "dropped" (the publisher dropped them, this subscriber being too slow),
 *   "disconnected" (published while we were reconnecting), "restarted" (a new publisher
 *   instance: seq began again at 1, `dropped` counts the new instance's values we missed; what
 *   the old one published after we lost it is unknown), "skipped" (a frame we could not decode
 *   and dropped, reported to `onError` as well).
 * - A malformed frame after the hello is reported to `onError` and skipped; the connection
 *   stays up.
 * - Where it starts: `from` (protocol.ts `?from=`; default "latest", the latest value first).
 *   Every reconnect resumes at the seq it expects next (`?from=<seq>&epoch=<epoch>`), so values
 *   the publisher's history still holds are not lost; older ones are reported as a gap.
 * - An upgrade the gateway or publisher refuses (404 unknown_pub_id, 502 target_down, ...) goes
 *   to `onRefused` with its status and message (core/ws.ts), and the subscription retries.
 *
 * Kind "string" delivers each text frame to `onText`: no seq, so no gap detection; it starts at
 * `from` and resumes with live values after a reconnect.
 */
import { StoaError, describeError } from "../core/errors.ts";
import { dialWebSocket, describeRefusal, ReconnectingWebSocket, type ReconnectOptions, type UpgradeRefusal, type WsState } from "../core/ws.ts";
import {
  type From,
  MAX_PING_REPLY_BYTES,
  MAX_TEXT_BYTES,
  PING_REQUEST,
  PingReply,
  safeDecodeServiceFrame,
  type ServiceMessage,
  subscribeQuery,
} from "./protocol.ts";
import type { Value } from "./value.ts";

/** One value as a subscriber receives it. */
export interface Received {
  seq: number;
  /** RFC 3339 publish time. */
  ts: string;
  value: Value;
}

/** Values this subscriber will never see: `dropped` of them, before seq `next`. */
export interface Gap {
  next: number;
  dropped: number;
  reason: "dropped" | "disconnected" | "restarted" | "skipped";
}

/** What a (re)connection found, from the publisher's hello. */
export interface OpenInfo {
  /** 1 when the connection opened on the first dial since the last stable one. */
  attempt: number;
  /** The publisher instance. */
  epoch: string;
  /** The seq of the next value this connection gets. */
  next: number;
}

/** Reconnect tuning, from core/ws.ts. */
type ReconnectTuning = Pick<
  ReconnectOptions,
  "minDelayMs" | "maxDelayMs" | "factor" | "jitter" | "maxAttempts" | "connectTimeoutMs" | "stableAfterMs" | "random"
>;

interface CommonOptions {
  /** An attempt ended; `willRetry` is false once the subscription has stopped for good. */
  onClose?: (code: number, reason: string, willRetry: boolean) => void;
  /** Connect failures, timeouts and malformed frames. Nothing is thrown to the caller. */
  onError?: (err: StoaError) => void;
  reconnect?: ReconnectTuning;
  /** Extra request headers (for a proxy in front of the gateway). */
  headers?: Record<string, string>;
  /** Where the first connection starts; default the latest value (protocol.ts). */
  from?: From;
  /** The gateway or publisher refused an upgrade (its status and message); it retries. */
  onRefused?: (refusal: UpgradeRefusal) => void;
}

/** Options for a subscription to service.sock: exact values, seq and gaps. */
interface ServiceSubscribeOptions extends CommonOptions {
  kind?: "service";
  onValue: (value: Received) => void;
  onGap?: (gap: Gap) => void;
  onOpen?: (info: OpenInfo) => void;
}

/** Options for a subscription to string.sock: one text per value. */
interface StringSubscribeOptions extends CommonOptions {
  kind: "string";
  onText: (text: string) => void;
  onOpen?: (info: { attempt: number }) => void;
}

export type SubscribeOptions = ServiceSubscribeOptions | StringSubscribeOptions;

interface Subscription {
  readonly state: WsState;
  /** The seq of the last value delivered, 0 before the first (service kind). */
  readonly lastSeq: number;
  /** Resolves once the subscription has stopped for good. */
  readonly closed: Promise<void>;
  /** Stop for good; no callback but a final `onClose` runs after it. */
  close(): void;
  [Symbol.dispose](): void;
}

/**
 * Subscribes to a stream; it keeps reconnecting until `close()` (or `reconnect.maxAttempts`).
 * Throws `StoaError` "endpoint" at once for a URL that is not ws://, wss:// or ws+unix://;
 * everything later goes to the callbacks.
 *
 * @example
 * ```ts
 * const sub = subscribe("ws://[2001:db8::7]:8081/pub/cam1", {
 *   onValue: ({ seq, value }) => console.log(seq, value),
 *   onGap: ({ next, dropped, reason }) => console.warn(`missed ${dropped} before ${next} (${reason})`),
 * });
 * // later
 * sub.close();
 * ```
 */
export function subscribe(url: string | URL, options: SubscribeOptions): Subscription {
  return options.kind === "string" ? subscribeText(url, options) : subscribeService(url, options);
}

function subscribeService(url: string | URL, options: ServiceSubscribeOptions): Subscription {
  const where = String(url);
  /** The current connection's hello has arrived. */
  let greeted = false;
  const from = options.from ?? { at: "latest" };
  // Asked for a seq: what the publisher no longer holds of it is a gap like after a reconnect.
  let epoch: string | undefined = from.at === "seq" ? from.epoch : undefined;
  /** The seq we expect next, once we have seen a hello (or asked for one). */
  let expected: number | undefined = from.at === "seq" ? from.seq : undefined;
  let lastSeq = 0;

  const gap = (next: number, dropped: number, reason: Gap["reason"]): void => {
    options.onGap?.({ next, dropped, reason });
  };

  const onHello = (hello: Extract<ServiceMessage, { t: "hello" }>, attempt: number): void => {
    if (expected !== undefined) {
      if (epoch !== undefined && hello.epoch !== epoch) gap(hello.next, hello.next - 1, "restarted");
      else if (hello.next > expected) gap(hello.next, hello.next - expected, "disconnected");
    }
    epoch = hello.epoch;
    expected = hello.next;
    greeted = true;
    options.onOpen?.({ attempt, epoch: hello.epoch, next: hello.next });
  };

  let attempt = 0;
  const conn: ReconnectingWebSocket = new ReconnectingWebSocket(url, {
    ...options.reconnect,
    headers: options.headers,
    urlFor: () => {
      if (expected === undefined) return withFrom(url, from);
      return withFrom(url, { at: "seq", seq: expected, epoch: epoch !== undefined && RESUMABLE_EPOCH.test(epoch) ? epoch : undefined });
    },
    onRefused: (refusal) => options.onRefused?.(refusal),
    onOpen: (_ws, n) => {
      greeted = false;
      attempt = n;
    },
    onMessage: (data) => {
      if (typeof data === "string") {
        fail(new StoaError("decode", `${where} sent a text frame: is it a string endpoint? subscribe to a service endpoint (port 8081, service.sock) or use kind "string"`));
        return;
      }
      const result = safeDecodeServiceFrame(data);
      if (!result.ok) {
        fail(new StoaError(result.error.code, `${where}: ${result.error.message}`, { cause: result.error }));
        return;
      }
      const msg = result.value;
      if (!greeted) {
        if (msg.t !== "hello") {
          fail(new StoaError("decode", `${where} did not start with a hello frame: is it a stoa service endpoint?`));
          return;
        }
        onHello(msg, attempt);
        return;
      }
      switch (msg.t) {
        case "hello":
          options.onError?.(new StoaError("decode", `${where} sent a second hello frame; ignored`));
          return;
        case "gap":
          if (expected !== undefined && msg.next > expected) gap(msg.next, msg.next - expected, "dropped");
          expected = Math.max(expected ?? 0, msg.next);
          return;
        case "v":
          if (expected !== undefined && msg.seq < expected) {
            options.onError?.(new StoaError("decode", `${where} sent seq ${msg.seq} after ${expected - 1}; ignored`));
            return;
          }
          if (expected !== undefined && msg.seq > expected) gap(msg.seq, msg.seq - expected, "skipped");
          expected = msg.seq + 1;
          lastSeq = msg.seq;
          options.onValue({ seq: msg.seq, ts: msg.ts, value: msg.value });
      }
    },
    onClose: options.onClose,
    onError: options.onError,
  });

  /** A frame we cannot use: before the hello, the endpoint is wrong and retrying cannot help. */
  const fail = (err: StoaError): void => {
    options.onError?.(err);
    if (!greeted) conn.close();
  };

  return handle(conn, () => lastSeq);
}

function subscribeText(url: string | URL, options: StringSubscribeOptions): Subscription {
  const where = String(url);
  let opened = false;
  const conn = new ReconnectingWebSocket(url, {
    ...options.reconnect,
    headers: options.headers,
    urlFor: () => withFrom(url, opened ? { at: "now" } : (options.from ?? { at: "latest" })),
    onRefused: (refusal) => options.onRefused?.(refusal),
    onOpen: (_ws, attempt) => {
      opened = true;
      options.onOpen?.({ attempt });
    },
    onMessage: (data) => {
      if (typeof data !== "string") {
        options.onError?.(new StoaError("decode", `${where} sent a binary frame: is it a service endpoint? use kind "service" there`));
        return;
      }
      // Bun has already buffered it; the check keeps a peer from feeding callers without bound.
      if (data.length > MAX_TEXT_BYTES) {
        options.onError?.(new StoaError("too_large", `${where} sent a ${data.length}-character text frame, over the ${MAX_TEXT_BYTES}-byte limit; skipped`));
        return;
      }
      options.onText(data);
    },
    onClose: options.onClose,
    onError: options.onError,
  });
  return handle(conn, () => 0);
}

/** Epochs that may go in a query (protocol.ts); another publisher's odd epoch resumes by seq alone. */
const RESUMABLE_EPOCH = /^[A-Za-z0-9_-]{1,64}$/;

/** `url` with the query for `from` (in place of any `from`/`epoch` it had; other parameters stay). */
function withFrom(url: string | URL, from: From): string {
  const u = new URL(String(url));
  u.searchParams.delete("from");
  u.searchParams.delete("epoch");
  for (const [key, value] of new URLSearchParams(subscribeQuery(from))) u.searchParams.append(key, value);
  return u.href;
}

function handle(conn: ReconnectingWebSocket, lastSeq: () => number): Subscription {
  return {
    get state() {
      return conn.state;
    },
    get lastSeq() {
      return lastSeq();
    },
    closed: conn.closed,
    close: () => conn.close(),
    [Symbol.dispose]: () => conn.close(),
  };
}

/** Default wait for a ping reply. */
const DEFAULT_PING_TIMEOUT_MS = 5_000;

/**
 * One ping round trip (protocol.ts): the latest value's text form, seq and time. `value` is
 * null and `seq` 0 when nothing was published yet. Throws `StoaError` "timeout" when no reply
 * came in time, "io" when the connection failed or closed first, "decode"/"schema"/"too_large"
 * for a reply that is not one, "endpoint" for a URL that is not ws://, wss:// or ws+unix://.
 *
 * @example
 * ```ts
 * const { value, seq } = await latest("ws://[::1]:8083/pub/cam1");
 * ```
 */
export function latest(
  url: string | URL,
  options: { timeoutMs?: number; headers?: Record<string, string> } = {},
): Promise<PingReply> {
  const where = String(url);
  const timeoutMs = options.timeoutMs ?? DEFAULT_PING_TIMEOUT_MS;
  let scheme = "";
  try {
    scheme = new URL(where).protocol;
  } catch {
    // reported below
  }
  if (!["ws:", "wss:", "ws+unix:", "wss+unix:"].includes(scheme)) {
    return Promise.reject(
      new StoaError("endpoint", `cannot ping ${JSON.stringify(where)}: use ws://host:port/pub/<pub_id> or ws+unix:///path/ping.sock:/`),
    );
  }
  const { promise, resolve, reject } = Promise.withResolvers<PingReply>();
  let ws: WebSocket;
  try {
    ws = dialWebSocket(where, { headers: options.headers }, (refusal) => {
      finish(new StoaError(refusal.status === 404 ? "not_found" : "io", `${where} refused the ping: ${describeRefusal(refusal)}`));
    });
  } catch (err) {
    return Promise.reject(new StoaError("io", `cannot ping ${where}: ${messageOf(err)}`, { cause: err }));
  }
  let settled = false;
  const finish = (outcome: PingReply | StoaError): void => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    if (ws.readyState === WebSocket.OPEN) ws.close(1000);
    else if (ws.readyState === WebSocket.CONNECTING) ws.terminate();
    if (outcome instanceof StoaError) reject(outcome);
    else resolve(outcome);
  };
  const timer = setTimeout(
    () => finish(new StoaError("timeout", `no ping reply from ${where} within ${timeoutMs} ms; is the publisher (and its gateway) running?`)),
    timeoutMs,
  );
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(PING_REQUEST);
  ws.onmessage = (event: MessageEvent) => {
    const data: unknown = event.data;
    if (typeof data !== "string") {
      finish(new StoaError("decode", `${where} answered the ping with a binary frame: is it a ping endpoint (port 8083, ping.sock)?`));
      return;
    }
    if (data.length > MAX_PING_REPLY_BYTES) {
      finish(new StoaError("too_large", `${where} sent a ${data.length}-character ping reply, over the ${MAX_PING_REPLY_BYTES}-byte limit`));
      return;
    }
    let raw: unknown;
    try {
      raw = JSON.parse(data);
    } catch {
      finish(new StoaError("decode", `${where} answered the ping with something that is not JSON: is it a ping endpoint?`));
      return;
    }
    const parsed = PingReply.safeParse(raw);
    finish(
      parsed.success
        ? parsed.data
        : new StoaError("schema", `${where} answered the ping with JSON that is not a ping reply: ${parsed.error.issues[0]?.message ?? "bad shape"}`),
    );
  };
  ws.onerror = (event) => {
    const detail = event instanceof ErrorEvent && event.message !== "" ? `: ${event.message}` : "";
    finish(new StoaError("io", `cannot ping ${where}${detail}; is the publisher (and its gateway) running?`));
  };
  ws.onclose = (event) => {
    const why = event.reason === "" ? `code ${event.code}` : `code ${event.code}, ${event.reason}`;
    finish(new StoaError("io", `${where} closed the connection before answering the ping (${why}); is the pub_id right?`));
  };
  return promise;
}

function messageOf(err: unknown): string {
  return describeError(err);
}
