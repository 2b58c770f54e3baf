/**
 * The relay's switchboard: every connection and every session of a hotlink server, and the
 * rules of protocol.ts ("Session flow", "Errors") applied to each message a connection sends.
 * server.ts owns the listening socket, authentication and the users/ACL files; this module
 * owns the state, so it can be reasoned about (and reloaded) in one place.
 *
 * Messages. Each binary message is parsed once (size, CBOR, schema). Data is forwarded as the
 * bytes the sender wrote, never re-encoded: that is the hot path. Open, Accept and Signal are
 * re-encoded, because the server sets `frm`; a sender's Close is forwarded as it came (its
 * `lst` is for the receivers). Close and Reject for a sid the server no longer knows are
 * ignored: both ask for what has already happened (a sender's Close crossing the server's, say).
 * Data with a `pth` outside the session's path (itself or below it, as a daemon's IPC channel
 * sends) is refused: access is granted per session, so a frame cannot be labelled with a path
 * the session was not opened for. A text frame or a message that does not decode
 * gets Error and the connection is closed (1008, or 1009 for size); nothing a peer sends
 * touches another connection, and every handler is total: a bug becomes Error "internal" and
 * the close of that one connection.
 *
 * Invariants.
 * - A session is in `#sessions` exactly while it is in its sender's `sending` and in each of
 *   its receivers' `receiving`. Ending a session (or removing a receiver) updates all of them
 *   before any message about it is sent, so a send that fails in the middle — and detaches
 *   the connection it failed on — never meets half a session.
 * - A connection that is detached ("gone": closed, failed, or closed by us) is in no session
 *   and no index, blocks nobody and is blocked by nobody. The server holds no session whose
 *   connections are gone.
 *
 * Backpressure (never a silent drop). After a send, a receiver whose WebSocket buffer is over
 * `highWaterBytes` blocks the connection the message came from: that connection is paused
 * (the server stops reading it, so TCP pushes back to the sending daemon) until every receiver
 * blocking it has drained to `highWaterBytes / 2` (the gap keeps a flow from flapping between
 * paused and running). A receiver that stays over the mark for `stuckTimeoutMs` is removed from
 * its sessions with Close "receiver too slow", which reaches the sender when it was the last
 * receiver. A send Bun refuses (its own buffer limit, or a socket already closing) fails that
 * receiver's connection with a reason: its sessions end as on a disconnect.
 *
 * Limits per user (protocol.ts). A connection counts from the upgrade, Hello or not: in
 * `stoa_hotlink_connections{state}` and against its user's `maxConnectionsPerUser` (server.ts
 * asks `refuseConnection` before upgrading; `opened` checks again, should upgrades ever cross).
 * One without Hello after `helloTimeoutMs` is closed (Error "timeout", 1008). Sessions count
 * against their sender's connection and user (`maxSessionsPerConnection`, `maxSessionsPerUser`);
 * an Open over either is rejected. Every refusal is counted in `stoa_hotlink_refused_total{reason}`.
 */
import { Buffer } from "node:buffer";
import { joinBytes } from "../core/bytes.ts";
import { FRAME_HEADER_BYTES, type FrameParts, messageStart } from "../core/frame.ts";
import { StoaError, describeError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import type { Counter, CounterSeries, Gauge, Registry } from "../core/metrics.ts";
import type { Acl } from "./acl.ts";
import type { PendingAttach, StreamPairer } from "./relay-stream.ts";
import {
  type AcceptMessage,
  type CloseMessage,
  type DataMessage,
  type HotlinkMessageInput,
  HELLO_TIMEOUT_MS,
  MAX_CONNECTIONS_PER_USER,
  MAX_ENVELOPE_BYTES,
  MAX_MESSAGE_BYTES,
  MAX_REASON_LENGTH,
  MAX_SESSIONS_PER_CONNECTION,
  MAX_SESSIONS_PER_USER,
  MessageType,
  type OpenMessage,
  PROTOCOL_VERSION,
  type RejectMessage,
  type SignalMessage,
  encodeMessage,
  parseDataFast,
  safeParseMessage,
} from "./protocol.ts";

/** WebSocket close codes (RFC 6455 §7.4.1). */
const CLOSE_POLICY = 1008;
const CLOSE_TOO_BIG = 1009;
const CLOSE_INTERNAL = 1011;
/** A close reason is at most 123 bytes of UTF-8 (RFC 6455 §5.5: control frames ≤ 125 bytes). */
const MAX_CLOSE_REASON_BYTES = 123;

/** What the switchboard needs of a connection's WebSocket (Bun's `ServerWebSocket`). */
interface Link {
  /** >0: bytes sent; -1: queued behind earlier data; 0: dropped (Bun's buffer limit, or closed). */
  sendBinary(data: Uint8Array): number;
  /**
   * A framed link's: sends `frame` — a message with its 4-byte length header in front, as it
   * came in on a framed link — as it is. Same answers as `sendBinary`.
   */
  sendFrame?(frame: Uint8Array | FrameParts): number;
  getBufferedAmount(): number;
  pause(): void;
  resume(): void;
  close(code?: number, reason?: string): void;
}

/** One authenticated WebSocket connection. Created by the server when it upgrades a request. */
export class SwitchboardConn {
  /** "new" until Hello, "ready" after, "gone" once detached. */
  state: "new" | "ready" | "gone" = "new";
  link: Link | undefined;
  /** Sessions this connection opened, by sid. */
  readonly sending = new Map<string, Session>();
  /** Sessions offered to (pending) or accepted by this connection, by sid. */
  readonly receiving = new Map<string, Session>();
  /** Receivers whose buffers are over the high-water mark because of this connection's messages. */
  readonly blockedBy = new Set<SwitchboardConn>();
  /** Connections paused because this one's buffer is over the high-water mark. */
  readonly blocking = new Set<SwitchboardConn>();
  stuckTimer: ReturnType<typeof setTimeout> | undefined;
  /** Closes the connection if it is still "new" when it fires (`helloTimeoutMs`). */
  helloTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    readonly id: number,
    readonly user: string,
    /** Kept so a reload can tell whether the token still works (removed or replaced users). */
    readonly token: string,
    readonly remote: string,
  ) {}
}

interface Session {
  readonly sid: string;
  readonly pth: string;
  readonly sender: SwitchboardConn;
  readonly pending: Set<SwitchboardConn>;
  readonly accepted: Set<SwitchboardConn>;
  /**
   * Opened with `stm` on a framed link (relay-stream.ts): null otherwise, and once its first
   * Accept came without it. `receiver`: the one receiver that accepted with `stm` (then no other
   * is admitted).
   */
  stream: { receiver: SwitchboardConn | null } | null;
}

interface SwitchboardOptions {
  acl: Acl;
  log: Logger;
  registry: Registry;
  maxMessageBytes: number;
  /** ICE servers for Welcome (ice-servers.ts form). */
  ice?: string;
  highWaterBytes: number;
  stuckTimeoutMs: number;
  /** Default `HELLO_TIMEOUT_MS`. */
  helloTimeoutMs?: number;
  /** Default `MAX_CONNECTIONS_PER_USER`. */
  maxConnectionsPerUser?: number;
  /** Default `MAX_SESSIONS_PER_USER`. */
  maxSessionsPerUser?: number;
  /** Default `MAX_SESSIONS_PER_CONNECTION`. */
  maxSessionsPerConnection?: number;
  /** Pairs stream attaches on the framed links (relay-stream.ts); without it no session has a stream. */
  streams?: StreamPairer;
}

/** Why the relay refused a connection or session, or closed one, for a limit (the metric's label). */
type RefusedReason = "user_connections" | "user_sessions" | "connection_sessions" | "hello_timeout";

/** Counters of a running relay, for `stats()` and tests. */
export interface SwitchboardStats {
  /** Connections upgraded and not gone, Hello or not. */
  connections: number;
  /** Those of them that have not said Hello yet. */
  awaitingHello: number;
  /** Connections and sessions refused, and connections closed, for a limit (by reason). */
  refused: Record<RefusedReason, number>;
  sessions: number;
  /** Connections paused because a receiver is behind. */
  pausedSenders: number;
  /** Data messages relayed (one per receiver) and their bytes. */
  relayedMessages: number;
  relayedBytes: number;
  /** Error messages sent to clients. */
  errors: number;
  /** Bytes queued in the server for all connections right now (what a slow receiver costs). */
  bufferedBytes: number;
}

const TYPE_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(MessageType).map(([name, t]) => [t, name.toLowerCase()]),
);
/** The `type` label of each message type, one constant object each (core/metrics.ts keys a repeated label object without rebuilding it). */
const TYPE_LABELS: Readonly<Record<number, { type: string }>> = Object.fromEntries(Object.entries(TYPE_NAMES).map(([t, name]) => [t, { type: name }]));
const UNKNOWN_TYPE = { type: "unknown" };

/** The relay's state and message handling (see the module header). */
export class Switchboard {
  readonly #acl: Acl;
  readonly #log: Logger;
  readonly #parseOptions: { maxBytes?: number };
  readonly #maxMessageBytes: number;
  readonly #ice: string | undefined;
  readonly #highWater: number;
  readonly #lowWater: number;
  readonly #stuckTimeoutMs: number;
  readonly #sessions = new Map<string, Session>();
  /** Ready connections by user: who an Open can be offered to. */
  readonly #byUser = new Map<string, Set<SwitchboardConn>>();
  /** Every connection that is open and not gone (including those before Hello). */
  readonly #conns = new Set<SwitchboardConn>();
  /** Per user with a connection or a session: its connections (from the upgrade) and the sessions it sends. */
  readonly #users = new Map<string, { conns: number; sending: number }>();
  readonly #helloTimeoutMs: number;
  readonly #maxConnectionsPerUser: number;
  readonly #maxSessionsPerUser: number;
  readonly #maxSessionsPerConnection: number;
  readonly #streams: StreamPairer | undefined;
  #nextId = 1;
  #awaitingHello = 0;
  #paused = 0;
  #relayedMessages = 0;
  #relayedBytes = 0;
  #errors = 0;
  readonly #refused: Record<RefusedReason, number> = { user_connections: 0, user_sessions: 0, connection_sessions: 0, hello_timeout: 0 };
  readonly #m: {
    connections: Gauge;
    sessions: Gauge;
    messages: Counter;
    bytes: Counter;
    errors: Counter;
    paused: Gauge;
    refused: Counter;
  };
  /** Hot series of #m (one addition per message). */
  readonly #byType: (CounterSeries | undefined)[] = [];
  readonly #bytesSeries: CounterSeries;

  constructor(options: SwitchboardOptions) {
    this.#acl = options.acl;
    this.#log = options.log;
    this.#maxMessageBytes = options.maxMessageBytes;
    this.#ice = options.ice;
    // The default limit lets protocol.ts use its prebuilt codec.
    this.#parseOptions = options.maxMessageBytes === MAX_MESSAGE_BYTES ? {} : { maxBytes: options.maxMessageBytes };
    this.#highWater = options.highWaterBytes;
    this.#lowWater = Math.floor(options.highWaterBytes / 2);
    this.#stuckTimeoutMs = options.stuckTimeoutMs;
    this.#helloTimeoutMs = options.helloTimeoutMs ?? HELLO_TIMEOUT_MS;
    this.#maxConnectionsPerUser = options.maxConnectionsPerUser ?? MAX_CONNECTIONS_PER_USER;
    this.#maxSessionsPerUser = options.maxSessionsPerUser ?? MAX_SESSIONS_PER_USER;
    this.#maxSessionsPerConnection = options.maxSessionsPerConnection ?? MAX_SESSIONS_PER_CONNECTION;
    this.#streams = options.streams;
    const r = options.registry;
    this.#m = {
      connections: r.gauge(
        "stoa_hotlink_connections",
        "Hotlink WebSocket connections from the upgrade on, by state (awaiting_hello, ready).",
        ["state"],
      ),
      sessions: r.gauge("stoa_hotlink_sessions", "Hotlink sessions open on the relay."),
      messages: r.counter("stoa_hotlink_messages_total", "Hotlink messages received from clients, by type.", ["type"]),
      bytes: r.counter("stoa_hotlink_bytes_total", "Bytes of Data messages relayed to receivers (each copy counted)."),
      errors: r.counter("stoa_hotlink_errors_total", "Hotlink Error messages sent to clients, by code.", ["code"]),
      paused: r.gauge("stoa_hotlink_paused_senders", "Hotlink connections not read because a receiver is behind."),
      refused: r.counter(
        "stoa_hotlink_refused_total",
        "Hotlink connections and sessions refused, and connections closed, for a limit, by reason.",
        ["reason"],
      ),
    };
    this.#bytesSeries = this.#m.bytes.series();
    // Both states from the start, so that a scrape shows 0 rather than nothing.
    this.#m.connections.inc({ state: "awaiting_hello" }, 0);
    this.#m.connections.inc({ state: "ready" }, 0);
  }

  /** A connection for an authenticated upgrade; it joins when `opened` is called. */
  createConn(user: string, token: string, remote: string): SwitchboardConn {
    return new SwitchboardConn(this.#nextId++, user, token, remote);
  }

  get sessionCount(): number {
    return this.#sessions.size;
  }

  stats(): SwitchboardStats {
    let bufferedBytes = 0;
    for (const conn of this.#conns) bufferedBytes += conn.link?.getBufferedAmount() ?? 0;
    return {
      connections: this.#conns.size,
      awaitingHello: this.#awaitingHello,
      refused: { ...this.#refused },
      sessions: this.#sessions.size,
      pausedSenders: this.#paused,
      relayedMessages: this.#relayedMessages,
      relayedBytes: this.#relayedBytes,
      errors: this.#errors,
      bufferedBytes,
    };
  }

  /**
   * Why a new connection of `user` is refused (its user is at `maxConnectionsPerUser`), counted;
   * null when it may connect. The server asks before the upgrade.
   */
  refuseConnection(user: string): string | null {
    const held = this.#users.get(user)?.conns ?? 0;
    if (held < this.#maxConnectionsPerUser) return null;
    this.#refuse("user_connections");
    this.#log.info("refused a connection: the user holds the most connections allowed", { user, connections: held });
    return `too many connections: ${user} already holds ${held} connections to this relay, the most allowed; close some first`;
  }

  /** Bun's `open`: the connection counts from here, and has `helloTimeoutMs` to say Hello. */
  opened(conn: SwitchboardConn, link: Link): void {
    conn.link = link;
    // Checked again here in case upgrades of one user ever cross in flight (Bun 1.4 runs `open`
    // right after `fetch` returns, so the check before the upgrade already saw every earlier one).
    const refusal = this.refuseConnection(conn.user);
    if (refusal !== null) {
      conn.state = "gone";
      link.close(CLOSE_POLICY, closeReason(refusal));
      return;
    }
    this.#conns.add(conn);
    this.#userRecord(conn.user).conns++;
    this.#awaitingHello++;
    this.#m.connections.inc({ state: "awaiting_hello" });
    conn.helloTimer = setTimeout(() => this.#helloTimeout(conn), this.#helloTimeoutMs);
    conn.helloTimer.unref?.();
    this.#log.debug("connection open", { conn: conn.id, user: conn.user, remote: conn.remote });
  }

  /** The messages counter's series of type `t`, made on first use (one addition per message after). */
  #typeSeries(t: number): CounterSeries {
    let series = this.#byType[t];
    if (series === undefined) {
      series = this.#m.messages.series(TYPE_LABELS[t] ?? UNKNOWN_TYPE);
      if (TYPE_LABELS[t] !== undefined) this.#byType[t] = series;
    }
    return series;
  }

  /**
   * Bun's `message`, or a framed link's frame (a view, or the views of the reads it spanned:
   * `FrameParts`). Never throws. `at`: where the message starts in `data` (a frame's header
   * length, or 0).
   */
  message(conn: SwitchboardConn, data: string | Uint8Array | FrameParts, at = 0): void {
    try {
      this.#message(conn, data, at);
    } catch (err) {
      this.#log.error("bug in the hotlink relay: closing the connection", { conn: conn.id, user: conn.user, error: describeError(err) });
      this.#fatal(conn, "internal", "the relay failed on this message; the connection is closed", CLOSE_INTERNAL);
    }
  }

  /** Bun's `drain`: the connection's buffer went down; resume what it blocked once it is low. */
  drained(conn: SwitchboardConn): void {
    try {
      if (conn.blocking.size === 0 || conn.link === undefined || conn.link.getBufferedAmount() > this.#lowWater) return;
      this.#release(conn);
    } catch (err) {
      this.#log.error("bug in the hotlink relay (drain)", { conn: conn.id, error: describeError(err) });
    }
  }

  /** Bun's `close`. */
  closed(conn: SwitchboardConn, code: number, reason: string): void {
    try {
      if (conn.state === "gone") return;
      this.#log.info("disconnected", { conn: conn.id, user: conn.user, code, reason: reason || undefined, sessions: conn.sending.size + conn.receiving.size });
      this.#detach(conn, "peer gone");
    } catch (err) {
      this.#log.error("bug in the hotlink relay (close)", { conn: conn.id, error: describeError(err) });
    }
  }

  /**
   * A framed connection's first frame was a stream attach (relay-stream.ts): it is no link (it
   * leaves the connections quietly); the attach is answered here, or paired.
   */
  attach(conn: SwitchboardConn, sid: string, key: string | null, pending: PendingAttach): void {
    try {
      this.#detach(conn, undefined);
      const s = this.#sessions.get(sid);
      if (this.#streams === undefined) return pending.refuse(404, "this relay pairs no streams");
      if (s === undefined || s.stream === null) return pending.refuse(404, "no session with this sid has a stream (it may have ended)");
      // The sender attaches once it has the Accept; a receiver may come before the relay read
      // its Accept, so any receiver the session was offered to may wait — only the key of the
      // one that accepted gets paired.
      const receiver = s.stream.receiver;
      const party =
        key === null
          ? conn.user === s.sender.user
          : receiver !== null
            ? receiver.user === conn.user
            : [...s.pending].some((r) => r.user === conn.user);
      if (!party) return pending.refuse(403, `you are not the ${key === null ? "sender" : "receiver"} of this session`);
      this.#log.debug("stream attach", { sid, user: conn.user, role: key === null ? "sender" : "receiver" });
      this.#streams.attach(sid, key, pending);
    } catch (err) {
      this.#log.error("bug in the hotlink relay (stream attach)", { conn: conn.id, error: describeError(err) });
      pending.refuse(500, "internal error");
    }
  }

  /**
   * Closes every connection for which `revoked(user, token)` is true (its token was removed or
   * replaced), with Error "forbidden". Returns how many.
   */
  revoke(revoked: (user: string, token: string) => boolean): number {
    let n = 0;
    for (const conn of [...this.#conns]) {
      if (conn.state === "gone" || !revoked(conn.user, conn.token)) continue;
      n++;
      this.#log.info("token no longer valid: closing the connection", { conn: conn.id, user: conn.user });
      this.#fatal(conn, "forbidden", "your token was removed or replaced on the server; get a new one", CLOSE_POLICY);
    }
    return n;
  }

  /**
   * Applies the ACL (after a reload) to every session: a sender that lost write ends its session,
   * a receiver that lost read leaves it; each with Error "forbidden" and Close "forbidden".
   * Sessions are checked here, the only time access can change, not on every Data message.
   */
  recheckAccess(): void {
    for (const s of [...this.#sessions.values()]) {
      if (!this.#sessions.has(s.sid)) continue; // ended by an earlier step of this loop
      if (!this.#acl.canWrite(s.sender.user, s.pth)) {
        this.#error(s.sender, "forbidden", `you lost write access to ${s.pth}; the session is closed`, s.sid);
        this.#endSession(s, "forbidden");
        continue;
      }
      for (const r of [...s.pending, ...s.accepted]) {
        if (r.state === "gone" || this.#acl.canRead(r.user, s.pth)) continue;
        this.#removeReceiver(s, r, MessageType.Close, "forbidden");
        this.#error(r, "forbidden", `you lost read access to ${s.pth}; the session is closed`, s.sid);
        this.#send(null, r, this.#encode({ t: MessageType.Close, sid: s.sid, rsn: "forbidden" }));
      }
    }
  }

  /** Closes every connection (server stopping) without per-session messages: all sides go. */
  closeAll(code: number, reason: string): void {
    for (const conn of [...this.#conns]) {
      this.#detach(conn, undefined);
      conn.link?.close(code, reason);
    }
  }

  // --- messages -------------------------------------------------------------------------

  #message(conn: SwitchboardConn, whole: string | Uint8Array | FrameParts, at: number): void {
    if (conn.state === "gone") return;
    if (typeof whole !== "string" && !(whole instanceof Uint8Array)) {
      // Data that spanned reads, its fields in the first: forwarded as those views. Anything
      // else (or a Data whose fields were cut) is joined and read as one.
      const { part: first, at: start } = at === FRAME_HEADER_BYTES ? messageStart(whole) : { part: whole.parts[0], at };
      const head = conn.state === "new" || first === undefined ? null : parseDataFast(first, this.#parseOptions.maxBytes, start, false, whole.byteLength - at);
      if (head === null) {
        this.#message(conn, joinBytes(whole.parts, whole.byteLength), at);
        return;
      }
      this.#typeSeries(MessageType.Data).inc();
      this.#data(conn, head, whole, at);
      return;
    }
    if (typeof whole === "string") {
      this.#fatal(conn, "decode", "text frames are not hotlink messages; send each message as one binary frame of CBOR", CLOSE_POLICY);
      return;
    }
    // Data: its routing fields only, no view of its payload (it is forwarded as received).
    const fast = conn.state === "new" ? null : parseDataFast(whole, this.#parseOptions.maxBytes, at, false);
    if (fast !== null) {
      this.#typeSeries(MessageType.Data).inc();
      this.#data(conn, fast, whole, at);
      return;
    }
    const data = at === 0 ? whole : whole.subarray(at);
    const parsed = safeParseMessage(data, this.#parseOptions);
    if (!parsed.ok) {
      const code = parsed.error.code;
      this.#fatal(conn, code === "too_large" || code === "decode" || code === "schema" ? code : "internal", parsed.error.message, code === "too_large" ? CLOSE_TOO_BIG : CLOSE_POLICY);
      return;
    }
    const msg = parsed.value;
    this.#typeSeries(msg.t).inc();
    if (conn.state === "new") {
      if (msg.t === MessageType.Hello) this.#hello(conn, msg.v, msg.agt);
      else this.#error(conn, "protocol", "send Hello first");
      return;
    }
    switch (msg.t) {
      case MessageType.Data:
        this.#data(conn, msg, data, 0);
        return;
      case MessageType.Open:
        this.#open(conn, msg);
        return;
      case MessageType.Accept:
        this.#accept(conn, msg);
        return;
      case MessageType.Reject:
        this.#reject(conn, msg);
        return;
      case MessageType.Close:
        this.#close(conn, msg, data);
        return;
      case MessageType.Signal:
        this.#signal(conn, msg);
        return;
      case MessageType.Ping:
        this.#send(conn, conn, this.#encode({ t: MessageType.Pong, n: msg.n }));
        return;
      case MessageType.Pong:
        return; // we send no Ping of our own: Bun's WebSocket pings keep the connection alive
      case MessageType.Error:
        this.#log.debug("client reported an error", { conn: conn.id, user: conn.user, code: msg.code, msg: msg.msg, sid: msg.sid });
        return;
      case MessageType.Hello:
        this.#error(conn, "protocol", "Hello was already received on this connection");
        return;
      case MessageType.Welcome:
        this.#error(conn, "protocol", "Welcome is sent by the server, not to it");
        return;
    }
  }

  #hello(conn: SwitchboardConn, version: number, agent: string | undefined): void {
    if (version !== PROTOCOL_VERSION) {
      this.#fatal(conn, "version", `this server speaks hotlink protocol version ${PROTOCOL_VERSION}, not ${version}; upgrade the older side`, CLOSE_POLICY);
      return;
    }
    conn.state = "ready";
    clearTimeout(conn.helloTimer);
    conn.helloTimer = undefined;
    let same = this.#byUser.get(conn.user);
    if (same === undefined) {
      same = new Set();
      this.#byUser.set(conn.user, same);
    }
    same.add(conn);
    this.#awaitingHello--;
    this.#m.connections.dec({ state: "awaiting_hello" });
    this.#m.connections.inc({ state: "ready" });
    this.#log.info("connected", { conn: conn.id, user: conn.user, remote: conn.remote, agent });
    const mpb = Math.max(0, this.#maxMessageBytes - MAX_ENVELOPE_BYTES);
    const ice = this.#ice === undefined ? {} : { ice: this.#ice };
    const stm = this.#streams !== undefined && framed(conn) ? { stm: true } : {};
    this.#send(conn, conn, this.#encode({ t: MessageType.Welcome, v: PROTOCOL_VERSION, usr: conn.user, mmb: this.#maxMessageBytes, mpb, ...ice, ...stm }));
  }

  #open(conn: SwitchboardConn, msg: OpenMessage): void {
    const { sid, pth, to } = msg;
    const refuse = (rsn: string): void => void this.#send(conn, conn, this.#encode({ t: MessageType.Reject, sid, rsn }));
    if (this.#sessions.has(sid)) return refuse("sid in use");
    if (!this.#acl.canWrite(conn.user, pth)) return refuse("forbidden");
    if (conn.sending.size >= this.#maxSessionsPerConnection) {
      this.#refuse("connection_sessions");
      return refuse(`too many sessions: a connection may open at most ${this.#maxSessionsPerConnection}; close some first`);
    }
    const owner = this.#userRecord(conn.user);
    if (owner.sending >= this.#maxSessionsPerUser) {
      this.#refuse("user_sessions");
      return refuse(`too many sessions: ${conn.user} has ${owner.sending} open on this relay across its connections, the most allowed; close some first`);
    }
    const receivers: SwitchboardConn[] = [];
    const offer = (user: string, conns: Set<SwitchboardConn>): void => {
      if (user !== conn.user && this.#acl.canRead(user, pth)) receivers.push(...conns);
    };
    if (to !== undefined) {
      const conns = this.#byUser.get(to);
      if (conns !== undefined) offer(to, conns);
    } else {
      for (const [user, conns] of this.#byUser) offer(user, conns);
    }
    if (receivers.length === 0) return refuse("no receiver");
    const stream = msg.stm === true && this.#streams !== undefined && framed(conn) ? { receiver: null } : null;
    const session: Session = { sid, pth, sender: conn, pending: new Set(receivers), accepted: new Set(), stream };
    this.#sessions.set(sid, session);
    conn.sending.set(sid, session);
    owner.sending++;
    for (const r of receivers) r.receiving.set(sid, session);
    this.#m.sessions.inc();
    this.#log.debug("session open", { sid, pth, from: conn.user, to, receivers: receivers.length });
    const open: HotlinkMessageInput = { t: MessageType.Open, sid, pth, ...(to === undefined ? {} : { to }), frm: conn.user };
    const bytes = this.#encode(open);
    // `stm` only to receivers that can attach (their link is framed too).
    const streamBytes = stream === null ? bytes : this.#encode({ ...open, stm: true });
    for (const r of receivers) this.#send(conn, r, framed(r) ? streamBytes : bytes);
  }

  #accept(conn: SwitchboardConn, msg: AcceptMessage): void {
    const s = this.#sessions.get(msg.sid);
    if (s === undefined || (!s.pending.has(conn) && !s.accepted.has(conn))) {
      this.#error(conn, "unknown_session", "no session with this sid was offered to you (it may have ended)", msg.sid);
      return;
    }
    if (s.accepted.has(conn)) {
      this.#error(conn, "protocol", "you already accepted this session", msg.sid);
      return;
    }
    if (!this.#acl.canRead(conn.user, s.pth)) {
      this.#removeReceiver(s, conn, MessageType.Reject, "forbidden");
      this.#error(conn, "forbidden", `you have no read access to ${s.pth}`, s.sid);
      return;
    }
    const stream = s.stream;
    const key = msg.stm === true ? msg.stk : undefined;
    if (stream === null && msg.stm === true) {
      // Its daemon would wait for a stream that will not be paired: no Data would reach it either.
      this.#removeReceiver(s, conn, MessageType.Reject, "the session has no stream (its first receiver took Data)");
      this.#error(conn, "protocol", "this session has no stream: accept it without stm", s.sid);
      return;
    }
    if (stream !== null && (stream.receiver !== null || (msg.stm === true && (!framed(conn) || key === undefined)))) {
      // A stream has one receiver, and only a framed link with a key can attach.
      this.#removeReceiver(s, conn, MessageType.Reject, "the session's stream has its receiver");
      this.#error(conn, "protocol", stream.receiver !== null ? "the session's stream has its receiver already" : "a stream is accepted on a framed link, with stk", s.sid);
      return;
    }
    if (stream !== null && key === undefined) {
      // Its receiver takes Data: a session as any other (an early attach is refused).
      s.stream = null;
      this.#streams?.ended(s.sid, false);
    } else if (stream !== null && key !== undefined) {
      stream.receiver = conn;
      this.#streams?.accepted(s.sid, key);
    }
    s.pending.delete(conn);
    s.accepted.add(conn);
    this.#send(conn, s.sender, this.#encode({ t: MessageType.Accept, sid: s.sid, frm: conn.user, ...(s.stream === null ? {} : { stm: true }) }));
  }

  #reject(conn: SwitchboardConn, msg: RejectMessage): void {
    const s = this.#sessions.get(msg.sid);
    if (s === undefined) return; // already over
    if (s.pending.has(conn) || s.accepted.has(conn)) {
      this.#removeReceiver(s, conn, MessageType.Reject, msg.rsn);
      return;
    }
    this.#error(conn, s.sender === conn ? "protocol" : "unknown_session", "only a receiver the session was offered to can reject it; a sender sends Close", msg.sid);
  }

  #close(conn: SwitchboardConn, msg: CloseMessage, bytes: Uint8Array): void {
    const s = this.#sessions.get(msg.sid);
    if (s === undefined) return; // already over
    if (s.sender === conn) {
      // As it came: an orderly Close carries fields (`lst`) that only the receivers interpret.
      this.#endSession(s, msg.rsn, bytes);
    } else if (s.pending.has(conn) || s.accepted.has(conn)) {
      this.#removeReceiver(s, conn, MessageType.Close, msg.rsn);
    } else {
      this.#error(conn, "not_sender", "you are not a party to this session", msg.sid);
    }
  }

  /** `bytes` from `at` on is the message (`at` > 0: a frame's header before it). */
  #data(conn: SwitchboardConn, msg: DataMessage, bytes: Uint8Array | FrameParts, at: number): void {
    const s = this.#sessions.get(msg.sid);
    if (s === undefined) {
      this.#error(conn, "unknown_session", "no such session (it may have ended); open a new one", msg.sid);
      return;
    }
    if (s.sender !== conn) {
      this.#error(conn, "not_sender", "only the session's sender may send Data; open your own session to send", msg.sid);
      return;
    }
    if (s.accepted.size === 0) {
      this.#error(conn, "protocol", "no receiver has accepted this session yet; send Data after an Accept", msg.sid);
      return;
    }
    if (msg.pth !== undefined && msg.pth !== s.pth && !msg.pth.startsWith(`${s.pth}/`)) {
      this.#error(conn, "forbidden", `a Data pth must be the session's path ${s.pth} or below it; the message was not relayed`, msg.sid);
      return;
    }
    const length = bytes.byteLength - at;
    for (const r of s.accepted) {
      if (this.#send(conn, r, bytes, at)) {
        this.#relayedMessages++;
        this.#relayedBytes += length;
        this.#bytesSeries.inc(length);
      }
    }
  }

  #signal(conn: SwitchboardConn, msg: SignalMessage): void {
    const s = this.#sessions.get(msg.sid);
    if (s === undefined) {
      this.#error(conn, "unknown_session", "no such session (it may have ended)", msg.sid);
      return;
    }
    if (s.sender === conn) {
      const targets = [...s.accepted].filter((r) => msg.to === undefined || r.user === msg.to);
      if (targets.length === 0) {
        this.#error(conn, "protocol", msg.to === undefined ? "no receiver has accepted this session" : `${msg.to} has not accepted this session`, msg.sid);
        return;
      }
      const bytes = this.#encode({ ...msg, frm: conn.user });
      for (const r of targets) this.#send(conn, r, bytes);
    } else if (s.accepted.has(conn)) {
      const { to: _to, ...rest } = msg;
      this.#send(conn, s.sender, this.#encode({ ...rest, frm: conn.user }));
    } else if (s.pending.has(conn)) {
      this.#error(conn, "protocol", "accept the session before signalling", msg.sid);
    } else {
      this.#error(conn, "unknown_session", "no session with this sid was offered to you", msg.sid);
    }
  }

  // --- session lifecycle --------------------------------------------------------------

  /** The sender ends the session (or it goes): every receiver gets Close (`bytes` if given). */
  #endSession(s: Session, rsn: string | undefined, bytes?: Uint8Array): void {
    const receivers = this.#forget(s, rsn === undefined);
    const close = bytes ?? this.#encode({ t: MessageType.Close, sid: s.sid, ...(rsn === undefined ? {} : { rsn }) });
    for (const r of receivers) this.#send(null, r, close);
  }

  /** One receiver leaves; when it was the last, the sender gets its Reject or Close. */
  #removeReceiver(s: Session, r: SwitchboardConn, kind: typeof MessageType.Reject | typeof MessageType.Close, rsn: string | undefined): void {
    if (s.stream !== null && s.stream.receiver === r) {
      // A stream has its one receiver: when it goes, so does the session (and the stream).
      const others = [...s.pending].filter((p) => p !== r);
      for (const p of others) {
        s.pending.delete(p);
        p.receiving.delete(s.sid);
      }
      const close = this.#encode({ t: MessageType.Close, sid: s.sid, rsn: "the session's stream receiver left" });
      for (const p of others) this.#send(null, p, close);
    }
    s.pending.delete(r);
    s.accepted.delete(r);
    r.receiving.delete(s.sid);
    if (s.pending.size > 0 || s.accepted.size > 0) return;
    this.#forget(s, false);
    const message: HotlinkMessageInput =
      kind === MessageType.Reject
        ? { t: MessageType.Reject, sid: s.sid, rsn: rsn || "rejected" }
        : { t: MessageType.Close, sid: s.sid, ...(rsn === undefined ? {} : { rsn }) };
    this.#send(null, s.sender, this.#encode(message));
  }

  /**
   * Removes a session from every index; returns the receivers it had. Its stream, if any,
   * finishes by itself after an `orderly` end (the sender's Close), else it is reset.
   */
  #forget(s: Session, orderly: boolean): SwitchboardConn[] {
    if (this.#sessions.get(s.sid) !== s) return [];
    this.#sessions.delete(s.sid);
    if (s.stream !== null) this.#streams?.ended(s.sid, orderly);
    this.#m.sessions.dec();
    s.sender.sending.delete(s.sid);
    this.#userLeft(s.sender.user, 0, 1);
    const receivers = [...s.pending, ...s.accepted];
    for (const r of receivers) r.receiving.delete(s.sid);
    s.pending.clear();
    s.accepted.clear();
    this.#log.debug("session closed", { sid: s.sid, pth: s.pth });
    return receivers;
  }

  /**
   * Takes a connection out of everything. `rsn`: the Close reason the other side of each of its
   * sessions gets; undefined sends nothing (the whole server is stopping).
   */
  #detach(conn: SwitchboardConn, rsn: string | undefined): void {
    if (conn.state === "gone") return;
    const wasReady = conn.state === "ready";
    conn.state = "gone";
    clearTimeout(conn.helloTimer);
    conn.helloTimer = undefined;
    if (this.#conns.delete(conn)) {
      this.#userLeft(conn.user, 1, 0);
      if (wasReady) this.#m.connections.dec({ state: "ready" });
      else {
        this.#awaitingHello--;
        this.#m.connections.dec({ state: "awaiting_hello" });
      }
    }
    if (wasReady) {
      const same = this.#byUser.get(conn.user);
      same?.delete(conn);
      if (same?.size === 0) this.#byUser.delete(conn.user);
    }
    const wasPaused = conn.blockedBy.size > 0;
    this.#release(conn);
    for (const receiver of conn.blockedBy) {
      receiver.blocking.delete(conn);
      if (receiver.blocking.size === 0 && receiver.stuckTimer !== undefined) {
        clearTimeout(receiver.stuckTimer);
        receiver.stuckTimer = undefined;
      }
    }
    conn.blockedBy.clear();
    if (wasPaused) this.#setPaused(-1);
    for (const s of [...conn.sending.values()]) {
      if (rsn === undefined) this.#forget(s, false);
      else this.#endSession(s, rsn);
    }
    for (const s of [...conn.receiving.values()]) {
      if (rsn === undefined) this.#forget(s, false);
      else this.#removeReceiver(s, conn, MessageType.Close, rsn);
    }
  }

  // --- limits ---------------------------------------------------------------------------

  #userRecord(user: string): { conns: number; sending: number } {
    let record = this.#users.get(user);
    if (record === undefined) {
      record = { conns: 0, sending: 0 };
      this.#users.set(user, record);
    }
    return record;
  }

  /** `user` lost `conns` connections and `sessions` sessions; forgotten once it holds none. */
  #userLeft(user: string, conns: number, sessions: number): void {
    const record = this.#users.get(user);
    if (record === undefined) return;
    record.conns -= conns;
    record.sending -= sessions;
    if (record.conns <= 0 && record.sending <= 0) this.#users.delete(user);
  }

  #refuse(reason: RefusedReason): void {
    this.#refused[reason]++;
    this.#m.refused.inc({ reason });
  }

  /** A connection still without Hello when its timer fires: Error "timeout", then 1008. */
  #helloTimeout(conn: SwitchboardConn): void {
    try {
      conn.helloTimer = undefined;
      if (conn.state !== "new") return;
      this.#refuse("hello_timeout");
      this.#fatal(conn, "timeout", `no Hello within ${this.#helloTimeoutMs} ms of the upgrade; send Hello first`, CLOSE_POLICY);
    } catch (err) {
      this.#log.error("bug in the hotlink relay (Hello deadline)", { conn: conn.id, error: describeError(err) });
    }
  }

  // --- sending and backpressure -------------------------------------------------------

  /**
   * Sends `bytes` to `to`; `from` is the connection whose message caused it (null: the server's
   * own), which `to`'s backpressure pauses. Returns whether the bytes were taken. `at` > 0:
   * the message starts there, after its frame header (it came in on a framed link); a framed
   * link sends it as it is, a WebSocket the message alone.
   */
  #send(from: SwitchboardConn | null, to: SwitchboardConn, bytes: Uint8Array | FrameParts, at = 0): boolean {
    const link = to.link;
    if (to.state === "gone" || link === undefined) return false;
    let status: number;
    if (link.sendFrame !== undefined && at !== 0) status = link.sendFrame(bytes);
    else {
      // A WebSocket takes one buffer: the views of a frame that spanned reads are joined for it.
      const whole = bytes instanceof Uint8Array ? bytes : joinBytes(bytes.parts, bytes.byteLength);
      status = link.sendBinary(at === 0 ? whole : whole.subarray(at));
    }
    if (status === 0) {
      // Bun refused the message (its buffer limit, or the socket is closing): the receiver
      // cannot get this stream intact any more, so it leaves every session, with a reason.
      this.#log.warn("send refused: closing the receiving connection", { conn: to.id, user: to.user, buffered: link.getBufferedAmount() });
      link.close(CLOSE_POLICY, "send buffer overflow: read faster");
      this.#detach(to, "receiver too slow");
      return false;
    }
    if (status === -1 && from !== null && from.state !== "gone" && link.getBufferedAmount() > this.#highWater) this.#block(from, to);
    return true;
  }

  #block(sender: SwitchboardConn, receiver: SwitchboardConn): void {
    if (receiver.blocking.has(sender)) return;
    receiver.blocking.add(sender);
    sender.blockedBy.add(receiver);
    if (sender.blockedBy.size === 1) {
      sender.link?.pause();
      this.#setPaused(1);
    }
    receiver.stuckTimer ??= setTimeout(() => this.#stuck(receiver), this.#stuckTimeoutMs);
  }

  /**
   * `conn` no longer holds anyone back: resume every connection only it was blocking. (A gone
   * sender is in no one's `blocking`, except a connection blocking itself while it detaches,
   * whose paused count `#detach` settles.)
   */
  #release(conn: SwitchboardConn): void {
    if (conn.stuckTimer !== undefined) {
      clearTimeout(conn.stuckTimer);
      conn.stuckTimer = undefined;
    }
    for (const sender of conn.blocking) {
      sender.blockedBy.delete(conn);
      if (sender.blockedBy.size === 0 && sender.state !== "gone") {
        sender.link?.resume();
        this.#setPaused(-1);
      }
    }
    conn.blocking.clear();
  }

  #stuck(receiver: SwitchboardConn): void {
    try {
      receiver.stuckTimer = undefined;
      if (receiver.state === "gone" || receiver.blocking.size === 0) return;
      const buffered = receiver.link?.getBufferedAmount() ?? 0;
      if (buffered <= this.#lowWater) {
        this.#release(receiver);
        return;
      }
      this.#log.warn("receiver too slow: removing it from its sessions", {
        conn: receiver.id,
        user: receiver.user,
        buffered,
        sessions: receiver.receiving.size,
      });
      const close = (sid: string): Uint8Array => this.#encode({ t: MessageType.Close, sid, rsn: "receiver too slow" });
      for (const s of [...receiver.receiving.values()]) {
        this.#removeReceiver(s, receiver, MessageType.Close, "receiver too slow");
        this.#send(null, receiver, close(s.sid));
      }
      this.#release(receiver);
    } catch (err) {
      this.#log.error("bug in the hotlink relay (stuck receiver)", { conn: receiver.id, error: describeError(err) });
    }
  }

  #setPaused(delta: number): void {
    this.#paused += delta;
    this.#m.paused.inc(delta);
  }

  // --- errors ---------------------------------------------------------------------------

  #error(conn: SwitchboardConn, code: string, msg: string, sid?: string): void {
    this.#errors++;
    this.#m.errors.inc({ code });
    this.#log.debug("error sent to client", { conn: conn.id, user: conn.user, code, msg, sid });
    const text = msg.length > MAX_REASON_LENGTH ? `${msg.slice(0, MAX_REASON_LENGTH - 1)}…` : msg;
    this.#send(conn, conn, this.#encode({ t: MessageType.Error, code, msg: text, ...(sid === undefined ? {} : { sid }) }));
  }

  /** Error, then the connection is closed and its sessions with it. */
  #fatal(conn: SwitchboardConn, code: string, msg: string, closeCode: number): void {
    if (conn.state === "gone") return;
    this.#log.info("closing connection after a protocol error", { conn: conn.id, user: conn.user, code, msg });
    this.#error(conn, code, msg);
    conn.link?.close(closeCode, closeReason(`${code}: ${msg}`));
    this.#detach(conn, "peer gone");
  }

  #encode(message: HotlinkMessageInput): Uint8Array {
    try {
      // The default limit: what the server itself writes is a control message, far below it.
      return encodeMessage(message);
    } catch (err) {
      throw new StoaError("internal", `cannot encode a ${TYPE_NAMES[message.t] ?? "?"} message: ${describeError(err)}`, { cause: err });
    }
  }
}

/** `text` cut to what a WebSocket close frame can carry, on a character boundary. */
/** The connection is a framed link (it can attach streams). */
function framed(conn: SwitchboardConn): boolean {
  return conn.link?.sendFrame !== undefined;
}

function closeReason(text: string): string {
  if (Buffer.byteLength(text, "utf8") <= MAX_CLOSE_REASON_BYTES) return text;
  let cut = text.slice(0, MAX_CLOSE_REASON_BYTES - 3);
  while (Buffer.byteLength(`${cut}...`, "utf8") > MAX_CLOSE_REASON_BYTES || !cut.isWellFormed()) cut = cut.slice(0, -1);
  return `${cut}...`;
}
