/**
 * The publisher: serves one stream on three WebSocket endpoints (protocol.ts) and fans every
 * published value out to its subscribers through bounded per-subscriber queues
 * (subscriber-queue.ts).
 *
 * Contract:
 * - `createPublisher` binds `<run_dir>/pub/<pub_id>/{service,string,ping}.sock` with core/unixsock.ts:
 *   a stale directory left by a killed publisher is reclaimed, a live publisher's sockets are
 *   never touched (`in_use`, and nothing of ours is left behind). With `internal: "tcp"` it
 *   listens on `[::1]` ephemeral ports instead, and touches no files.
 * - `publish(value)` is synchronous: it checks and encodes the value once per kind, keeps it in
 *   the bounded history (`history` values, `historyBytes`; protocol.ts), hands the shared
 *   frames to every subscriber's queue and returns the value's seq.
 * - A subscriber starts where its upgrade's query says (`?from=`, protocol.ts): the history it
 *   asks for is replayed through its queue ahead of live values. It never waits for a
 *   subscriber; a slow one only costs a queue push, then drops or a disconnect (policy `slow`).
 * - `close()` stops new connections (socket files removed first), closes ping clients, lets
 *   subscribers drain their queues for up to `CLOSE_DRAIN_TIMEOUT_MS`, closes them with 1001
 *   "going away", stops the servers and removes the publisher's directory. Idempotent.
 */
import type { ServerWebSocket } from "bun";
import { StoaError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { metrics as sharedMetrics, type Registry } from "../core/metrics.ts";
import { defaultRunDir } from "../core/paths.ts";
import { type EndpointServer, type InternalEndpoint, type Listening, type TcpListen, listenEndpoints } from "./listen.ts";
import { isValidPubId, KINDS, type Kind } from "./names.ts";
import { type Frame, SubscriberQueue } from "./subscriber-queue.ts";
import {
  CLOSE_DRAIN_TIMEOUT_MS,
  CLOSE_GOING_AWAY,
  DEFAULT_HISTORY,
  DEFAULT_QUEUE,
  type From,
  MAX_HISTORY,
  MAX_HISTORY_BYTES,
  encodeServiceMessage,
  encodeValueMessage,
  MAX_CLIENT_MESSAGE_BYTES,
  MAX_PENDING_PINGS,
  MAX_SERVICE_FRAME_BYTES,
  MAX_TEXT_BYTES,
  parseSubscribeQuery,
  PING_REQUEST,
  PROTOCOL_VERSION,
  type QueueLimits,
  type SlowPolicy,
  PUB_ID_HEADER,
} from "./protocol.ts";
import { type Value, valueProblem, valueText, valueToJson } from "./value.ts";

/** The kinds that carry the stream (ping.sock only answers pings). */
type StreamKind = Exclude<Kind, "ping">;
const STREAM_KINDS: readonly StreamKind[] = ["service", "string"];

export type { InternalEndpoint } from "./listen.ts";

export interface PublisherOptions {
  /** The stream's pub_id (names.ts rules). */
  pubId: string;
  /** Run dir holding `pub/<pub_id>/`; default core/paths.ts `defaultRunDir()`. Unused for "tcp". */
  runDir?: string;
  /**
   * "unix" (default): sockets in the run dir; "tcp": loopback `[::1]` ephemeral ports; or an
   * address and ports of its own (a publisher reached directly, without a gateway).
   */
  internal?: "unix" | "tcp" | TcpListen;
  /** What happens to a subscriber whose queue overflows; default "drop-oldest". */
  slow?: SlowPolicy;
  /** Per-subscriber queue bounds; default `DEFAULT_QUEUE`. */
  queue?: Partial<QueueLimits>;
  /** Values kept for subscribers that start before now (1–`MAX_HISTORY`); default 1, the latest. */
  history?: number;
  /** Bytes the history holds at most (the latest value is always kept); default `MAX_HISTORY_BYTES`. */
  historyBytes?: number;
  log?: Logger;
  /** Where the `stoa_pub_*` metrics live; default the shared registry. */
  metrics?: Registry;
}

/** The latest published value. */
interface Latest {
  readonly seq: number;
  /** RFC 3339 publish time. */
  readonly ts: string;
  readonly value: Value;
}

interface PublisherStats {
  /** Values published so far (= the latest seq). */
  published: number;
  /** Connections open now, per endpoint. */
  subscribers: Record<Kind, number>;
  /** Values dropped for slow subscribers under drop-oldest (one per subscriber per value). */
  dropped: Record<StreamKind, number>;
  /** Subscribers closed for being too slow under disconnect. */
  disconnected: Record<StreamKind, number>;
}

export interface Publisher {
  readonly pubId: string;
  /** This instance's identity in hello frames; a restarted publisher has another. */
  readonly epoch: string;
  /** Where each endpoint listens: what a gateway routes to. */
  readonly endpoints: Readonly<Record<Kind, InternalEndpoint>>;
  /** A URL that reaches each endpoint directly (`ws+unix://…:/` or `ws://[::1]:port/`). */
  readonly urls: Readonly<Record<Kind, string>>;
  /** The directory holding the sockets; undefined with `internal: "tcp"`. */
  readonly dir: string | undefined;
  /** The latest value, or undefined before the first publish. */
  readonly latest: Latest | undefined;
  /** A snapshot of the counters. */
  readonly stats: PublisherStats;
  /**
   * Publishes one value to every subscriber and returns its seq. Throws `StoaError` "schema"
   * for something that is not a stream value (value.ts), "too_large" over the size limits,
   * "closed" after `close()`.
   */
  publish(value: Value): number;
  /** Stops serving and removes the sockets and directory (see the module header). */
  close(drainTimeoutMs?: number): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts a publisher.
 *
 * @example
 * ```ts
 * const pub = await createPublisher({ pubId: "cam1", runDir: "/run/stoa" });
 * pub.publish({ frame: 1, objects: ["cat"] }); // 1
 * pub.publish(new Uint8Array([1, 2, 3]));      // 2
 * console.log(pub.endpoints.service);          // { kind: "unix", path: "/run/stoa/pub/cam1/service.sock" }
 * await pub.close();
 * ```
 */
export async function createPublisher(options: PublisherOptions): Promise<Publisher> {
  const { pubId } = options;
  if (!isValidPubId(pubId)) {
    throw new StoaError(
      "usage",
      `invalid pub_id ${JSON.stringify(pubId)}: use 1-64 characters of [A-Za-z0-9._-] starting with a letter or digit`,
    );
  }
  const limits: QueueLimits = { ...DEFAULT_QUEUE, ...options.queue };
  if (!(Number.isSafeInteger(limits.maxMessages) && limits.maxMessages >= 1)) {
    throw new StoaError("config", `queue.maxMessages must be a whole number >= 1, got ${limits.maxMessages}`);
  }
  if (!(Number.isSafeInteger(limits.maxBytes) && limits.maxBytes >= 1)) {
    throw new StoaError("config", `queue.maxBytes must be a whole number >= 1, got ${limits.maxBytes}`);
  }
  const history = options.history ?? DEFAULT_HISTORY;
  if (!(Number.isSafeInteger(history) && history >= 1 && history <= MAX_HISTORY)) {
    throw new StoaError("config", `history must be a whole number from 1 to ${MAX_HISTORY}, got ${history}`);
  }
  const historyBytes = options.historyBytes ?? MAX_HISTORY_BYTES;
  if (!(Number.isSafeInteger(historyBytes) && historyBytes >= 1 && historyBytes <= MAX_HISTORY_BYTES)) {
    throw new StoaError("config", `historyBytes must be a whole number from 1 to ${MAX_HISTORY_BYTES}, got ${historyBytes}`);
  }
  const pub = new StreamPublisher(pubId, limits, { history, historyBytes }, options);
  const listening = await listenEndpoints(pubId, options.internal ?? "unix", options.runDir ?? defaultRunDir(), (kind) =>
    pub.serverFor(kind),
  );
  pub.listening(listening);
  return pub;
}

/** One WebSocket client's state (a subscriber's, or a ping client's), in `ws.data`. */
interface SubscriberConn {
  readonly kind: Kind;
  /** Where a service or string subscriber starts. */
  readonly from?: From;
  /** Service and string subscribers: the bounded queue. */
  queue?: SubscriberQueue;
  /** Ping clients: a reply is waiting in the socket, and pings received meanwhile. */
  pingBlocked?: boolean;
  pendingPings?: number;
}

type Ws = ServerWebSocket<SubscriberConn>;

/** A text frame of string.sock. */
interface TextFrame extends Frame {
  readonly data: string;
}

interface Entry extends Latest {
  readonly service: Frame;
  text?: TextFrame;
}

class StreamPublisher implements Publisher {
  readonly epoch = Buffer.from(crypto.getRandomValues(new Uint8Array(12))).toString("base64url");
  #net!: Listening;

  readonly #policy: SlowPolicy;
  readonly #log: Logger | undefined;
  readonly #conns: Record<Kind, Set<Ws>> = { service: new Set(), string: new Set(), ping: new Set() };
  readonly #dropped: Record<StreamKind, number> = { service: 0, string: 0 };
  readonly #disconnected: Record<StreamKind, number> = { service: 0, string: 0 };
  #seq = 0;
  #last: Entry | undefined;
  /** The history, oldest first, from `#historyHead` on (a queue in an array, compacted now and then). */
  #history: (Entry | undefined)[] = [];
  #historyHead = 0;
  #historyBytes = 0;
  #closing: Promise<void> | undefined;
  /** Called when the last subscriber connection is gone while closing. */
  #onAllClosed: (() => void) | undefined;

  readonly #m: {
    published: ReturnType<Registry["counter"]>;
    dropped: ReturnType<Registry["counter"]>;
    disconnects: ReturnType<Registry["counter"]>;
    subscribers: ReturnType<Registry["gauge"]>;
  };
  readonly #limits: QueueLimits;
  readonly #keep: { history: number; historyBytes: number };

  constructor(
    readonly pubId: string,
    limits: QueueLimits,
    keep: { history: number; historyBytes: number },
    options: PublisherOptions,
  ) {
    this.#limits = limits;
    this.#keep = keep;
    this.#policy = options.slow ?? "drop-oldest";
    this.#log = options.log?.child({ pub_id: pubId });
    const registry = options.metrics ?? sharedMetrics;
    this.#m = {
      published: registry.counter("stoa_pub_published_total", "Values published.", ["pub_id"]),
      dropped: registry.counter(
        "stoa_pub_dropped_total",
        "Values dropped for slow subscribers (policy drop-oldest), one per subscriber and value.",
        ["pub_id", "kind"],
      ),
      disconnects: registry.counter(
        "stoa_pub_slow_disconnects_total",
        "Subscribers closed for being too slow (policy disconnect).",
        ["pub_id", "kind"],
      ),
      subscribers: registry.gauge("stoa_pub_subscribers", "Open connections per endpoint.", ["pub_id", "kind"]),
    };
    // Every series exists from the start, so dashboards see zeros rather than gaps.
    this.#m.published.inc({ pub_id: pubId }, 0);
    for (const kind of KINDS) {
      this.#m.subscribers.set({ pub_id: pubId, kind }, 0);
      if (kind !== "ping") {
        this.#m.dropped.inc({ pub_id: pubId, kind }, 0);
        this.#m.disconnects.inc({ pub_id: pubId, kind }, 0);
      }
    }
  }

  get latest(): Latest | undefined {
    const last = this.#last;
    return last === undefined ? undefined : { seq: last.seq, ts: last.ts, value: last.value };
  }

  get stats(): PublisherStats {
    return {
      published: this.#seq,
      subscribers: { service: this.#conns.service.size, string: this.#conns.string.size, ping: this.#conns.ping.size },
      dropped: { ...this.#dropped },
      disconnected: { ...this.#disconnected },
    };
  }

  get endpoints(): Readonly<Record<Kind, InternalEndpoint>> {
    return this.#net.endpoints;
  }

  get urls(): Readonly<Record<Kind, string>> {
    return this.#net.urls;
  }

  get dir(): string | undefined {
    return this.#net.dir;
  }

  /** Called once by `createPublisher`, when the endpoints are bound. */
  listening(net: Listening): void {
    this.#net = net;
    this.#log?.info("publisher listening", { epoch: this.epoch, ...net.urls });
  }

  publish(value: Value): number {
    if (this.#closing !== undefined) {
      throw new StoaError("closed", `publisher ${this.pubId} is closed; start a new one to publish again`);
    }
    const problem = valueProblem(value);
    if (problem !== null) {
      throw new StoaError("schema", `cannot publish: ${problem}; publish strings, finite numbers, booleans, null, Uint8Array, arrays and plain objects`);
    }
    const seq = this.#seq + 1;
    const ts = new Date().toISOString();
    const data = encodeValueMessage(seq, ts, value);
    const entry: Entry = { seq, ts, value, service: { seq, data, size: data.byteLength } };
    // Byte strings' text is computed when first needed (it is bounded: base64 is 4/3 of
    // MAX_VALUE_BYTES); JSON text is checked now, so a value is refused whoever listens.
    if (typeof value === "string") entry.text = { seq, data: value, size: Buffer.byteLength(value) };
    else if (!(value instanceof Uint8Array)) entry.text = textFrame(seq, valueText(value));
    this.#seq = seq;
    this.#last = entry;
    this.#remember(entry);
    this.#m.published.inc({ pub_id: this.pubId });
    for (const ws of this.#conns.service) ws.data.queue?.offer(entry.service);
    if (this.#conns.string.size > 0) {
      const text = this.#textOf(entry);
      for (const ws of this.#conns.string) ws.data.queue?.offer(text);
    }
    return seq;
  }

  close(drainTimeoutMs = CLOSE_DRAIN_TIMEOUT_MS): Promise<void> {
    this.#closing ??= this.#shutdown(drainTimeoutMs);
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #shutdown(drainTimeoutMs: number): Promise<void> {
    // Nobody new finds us while the rest winds down.
    this.#net.unlink();
    for (const ws of [...this.#conns.ping]) ws.close(CLOSE_GOING_AWAY, "publisher stopping");
    for (const kind of STREAM_KINDS) for (const ws of [...this.#conns[kind]]) this.#closeIfDrained(ws);
    if (this.#streamConns() > 0) {
      const { promise, resolve } = Promise.withResolvers<void>();
      this.#onAllClosed = resolve;
      const timer = setTimeout(resolve, drainTimeoutMs);
      await promise;
      clearTimeout(timer);
      this.#onAllClosed = undefined;
    }
    for (const kind of STREAM_KINDS) {
      for (const ws of [...this.#conns[kind]]) {
        // Bun keeps flushing a closed socket's buffer, so a reader that wakes up gets the rest.
        ws.data.queue?.flushAll();
        ws.data.queue?.stop();
        ws.close(CLOSE_GOING_AWAY, "publisher stopping");
      }
    }
    const kept = await this.#net.stop();
    if (kept !== undefined) this.#log?.warn("cannot remove publisher directory", { dir: this.dir, error: kept });
    // Forget this publisher's series: a process that starts and stops many publishers must not
    // accumulate one set per pub_id it ever had.
    this.#m.published.remove({ pub_id: this.pubId });
    for (const kind of KINDS) this.#m.subscribers.remove({ pub_id: this.pubId, kind });
    for (const kind of STREAM_KINDS) {
      this.#m.dropped.remove({ pub_id: this.pubId, kind });
      this.#m.disconnects.remove({ pub_id: this.pubId, kind });
    }
    this.#log?.info("publisher stopped", { published: this.#seq });
  }

  /** Adds the newest entry to the history and trims it to its bounds (it keeps at least this one). */
  #remember(entry: Entry): void {
    this.#history.push(entry);
    this.#historyBytes += entrySize(entry);
    while (this.#history.length - this.#historyHead > this.#keep.history || (this.#historyBytes > this.#keep.historyBytes && this.#history.length - this.#historyHead > 1)) {
      const old = this.#history[this.#historyHead];
      this.#history[this.#historyHead] = undefined;
      this.#historyHead++;
      if (old !== undefined) this.#historyBytes -= entrySize(old);
    }
    if (this.#historyHead >= 1024 && this.#historyHead * 2 >= this.#history.length) {
      this.#history = this.#history.slice(this.#historyHead);
      this.#historyHead = 0;
    }
  }

  /** The history entries a subscriber starting at `from` gets, oldest first. */
  #backlog(from: From): Entry[] {
    const oldest = this.#history[this.#historyHead];
    if (oldest === undefined || from.at === "now") return [];
    if (from.at === "latest") return this.#last === undefined ? [] : [this.#last];
    // The history holds consecutive seqs, oldest first. Another instance's seq means nothing
    // here: it starts at our oldest.
    const start = from.at === "seq" && (from.epoch === undefined || from.epoch === this.epoch) ? Math.max(0, from.seq - oldest.seq) : 0;
    return this.#history.slice(this.#historyHead + start) as Entry[];
  }

  #streamConns(): number {
    return this.#conns.service.size + this.#conns.string.size;
  }

  /** While closing: close a subscriber once everything queued for it has left the socket. */
  #closeIfDrained(ws: Ws): void {
    const queue = ws.data.queue;
    if (queue !== undefined && !queue.closed && (!queue.idle || ws.getBufferedAmount() > 0)) return;
    queue?.stop();
    ws.close(CLOSE_GOING_AWAY, "publisher stopping");
  }

  #textOf(entry: Entry): TextFrame {
    entry.text ??= textFrame(entry.seq, valueText(entry.value));
    return entry.text;
  }

  #pingReply(): string {
    const last = this.#last;
    if (last === undefined) return JSON.stringify({ value: null, seq: 0, ts: new Date().toISOString(), json: null });
    return JSON.stringify({ value: this.#textOf(last).data, seq: last.seq, ts: last.ts, json: valueToJson(last.value) });
  }

  /** The fetch and WebSocket handlers of one endpoint. */
  serverFor(kind: Kind): EndpointServer<SubscriberConn> {
    const websocket: EndpointServer<SubscriberConn>["websocket"] = {
      maxPayloadLength: MAX_CLIENT_MESSAGE_BYTES,
      // Above anything we hand a socket (one frame, a gap notice, a queue flushed on close),
      // so Bun never silently drops a frame for us.
      backpressureLimit: Math.min(0xffff_ffff, this.#limits.maxBytes + 4 * MAX_TEXT_BYTES + MAX_SERVICE_FRAME_BYTES),
      perMessageDeflate: false,
      open: (ws) => this.#opened(ws),
      message: (ws, message) => this.#received(ws, message),
      drain: (ws) => this.#drained(ws),
      close: (ws, code, reason) => this.#closed(ws, code, reason),
    };
    return {
      fetch: (req, server) => {
        let from: From | undefined;
        if (kind !== "ping") {
          const query = parseSubscribeQuery(new URL(req.url).search);
          if (!query.ok) {
            return Response.json({ error: "bad_query", message: `${query.message}; use ?from=latest, now or oldest` }, { status: 400 });
          }
          from = query.from;
        }
        if (server.upgrade(req, { data: { kind, from }, headers: { [PUB_ID_HEADER]: this.pubId } })) return undefined;
        return Response.json(
          { error: "upgrade_required", message: `this is the ${kind} endpoint of a stoa publisher: connect with a WebSocket client` },
          { status: 426, headers: { Upgrade: "websocket" } },
        );
      },
      websocket,
    };
  }

  #opened(ws: Ws): void {
    const { kind } = ws.data;
    if (this.#closing !== undefined) {
      ws.close(CLOSE_GOING_AWAY, "publisher stopping");
      return;
    }
    this.#conns[kind].add(ws);
    this.#m.subscribers.inc({ pub_id: this.pubId, kind });
    this.#log?.debug("subscriber connected", { kind });
    if (kind === "ping") return;
    const backlog = this.#backlog(ws.data.from ?? { at: "latest" });
    if (kind === "service") {
      const next = backlog[0]?.seq ?? this.#seq + 1;
      ws.sendBinary(encodeServiceMessage({ t: "hello", v: PROTOCOL_VERSION, epoch: this.epoch, next }));
    }
    let warned = false;
    ws.data.queue = new SubscriberQueue(
      {
        send: (data) => (typeof data === "string" ? ws.sendText(data) : ws.sendBinary(data)),
        close: (code, reason) => ws.close(code, reason),
      },
      {
        limits: this.#limits,
        policy: this.#policy,
        gapFrame: (next, dropped) => (kind === "service" ? encodeServiceMessage({ t: "gap", next, dropped }) : null),
        onDrop: (n) => {
          this.#dropped[kind] += n;
          this.#m.dropped.inc({ pub_id: this.pubId, kind }, n);
          if (!warned) {
            warned = true;
            this.#log?.warn("subscriber too slow: dropping its oldest values", { kind });
          }
        },
        onOverflow: () => {
          this.#disconnected[kind]++;
          this.#m.disconnects.inc({ pub_id: this.pubId, kind });
          this.#log?.warn("subscriber too slow: disconnecting it", { kind });
        },
      },
    );
    ws.data.queue.replay(kind === "service" ? backlog.map((e) => e.service) : backlog.map((e) => this.#textOf(e)));
  }

  #received(ws: Ws, message: string | Buffer): void {
    if (ws.data.kind !== "ping") return; // subscribers have nothing to say yet
    if (typeof message !== "string") {
      ws.close(1003, `send the text frame "${PING_REQUEST}"`);
      return;
    }
    if (message !== PING_REQUEST) {
      ws.close(1008, `unknown request; send the text frame "${PING_REQUEST}"`);
      return;
    }
    const conn = ws.data;
    if (conn.pingBlocked === true) {
      // Answered on drain. Bun still delivers what it read before pause(), so bound it.
      conn.pendingPings = (conn.pendingPings ?? 0) + 1;
      if (conn.pendingPings > MAX_PENDING_PINGS) {
        ws.close(1008, `more than ${MAX_PENDING_PINGS} pings sent without reading the replies`);
      }
      return;
    }
    this.#answerPing(ws);
  }

  /** Replies to one ping; a client whose replies back up is not read until it catches up. */
  #answerPing(ws: Ws): void {
    if (ws.sendText(this.#pingReply()) === -1) {
      ws.data.pingBlocked = true;
      ws.pause();
    }
  }

  #drained(ws: Ws): void {
    const conn = ws.data;
    if (conn.kind === "ping") {
      conn.pingBlocked = false;
      while ((conn.pendingPings ?? 0) > 0 && !conn.pingBlocked) {
        conn.pendingPings = (conn.pendingPings ?? 0) - 1;
        this.#answerPing(ws);
      }
      if (!conn.pingBlocked) ws.resume();
      return;
    }
    ws.data.queue?.drain();
    if (this.#closing !== undefined) this.#closeIfDrained(ws);
  }

  #closed(ws: Ws, code: number, reason: string): void {
    const { kind } = ws.data;
    ws.data.queue?.stop();
    if (!this.#conns[kind].delete(ws)) return;
    this.#m.subscribers.dec({ pub_id: this.pubId, kind });
    this.#log?.debug("subscriber disconnected", { kind, code, reason });
    if (this.#closing !== undefined && this.#streamConns() === 0) this.#onAllClosed?.();
  }
}

/** What an entry costs the history: its service frame, and its text frame when publish built it
 * (a byte value's text is built later, for string subscribers, and bounded by MAX_TEXT_BYTES). */
function entrySize(entry: Entry): number {
  return entry.service.size + (entry.value instanceof Uint8Array ? 0 : (entry.text?.size ?? 0));
}

function textFrame(seq: number, text: string): TextFrame {
  const size = Buffer.byteLength(text);
  if (size > MAX_TEXT_BYTES) {
    throw new StoaError(
      "too_large",
      `cannot publish a value whose text form is ${size} bytes: the limit is ${MAX_TEXT_BYTES}; split it into smaller values`,
    );
  }
  return { seq, data: text, size };
}
