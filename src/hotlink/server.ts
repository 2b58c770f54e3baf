/**
 * The hotlink relay server (`stoa hotlink serve`): a `Bun.serve` WebSocket endpoint at
 * `/v1/hotlink` that authenticates each connection before the upgrade and hands its messages to
 * the switchboard (switchboard.ts), which applies the session rules of protocol.ts.
 *
 * HTTP. `GET /v1/hotlink` with `Authorization: Bearer <user>:<token>` (users.ts) upgrades;
 * a missing or wrong token gets 401 with `WWW-Authenticate` before anything else, so an
 * unauthenticated client never reaches the WebSocket layer; an authenticated request that is not
 * a WebSocket upgrade gets 426. A user already holding `maxConnectionsPerUser` connections
 * (protocol.ts `MAX_CONNECTIONS_PER_USER`) gets 429 before the upgrade, with a body that says so.
 * `GET /v1/health` answers 200 JSON. Everything else is 404.
 *
 * Out of file descriptors (core/fdlimit.ts). Every request, before anything else, gets 503
 * "server out of file descriptors" while the descriptors in use reach the reserve; and while
 * that lasts the listener itself gives way to a refuser that answers the same 503 at
 * accept and closes (core/fdguard.ts `guardServer`: Bun.serve would hold idle connections until
 * its timeout, and spin in accept at the limit). Counted as `stoa_hotlink_refused_total
 * {reason="out_of_fds"}`, logged once per 10 s; the relay listens again once descriptors are free.
 *
 * Files. The users file is required; without an ACL file only the owner rule applies (acl.ts).
 * `reload()` re-reads both (SIGHUP in the CLI): a bad file is logged and the old one kept.
 * After a reload, connections whose token no longer verifies (user removed or token replaced)
 * are closed with Error "forbidden", and every session is checked against the ACL again.
 *
 * WebSocket settings. Bun accepts messages up to `maxMessageBytes + OVERSIZE_SLACK_BYTES`, so
 * a message a little over the limit reaches the switchboard and gets Error "too_large" (Bun
 * closes with 1009 beyond that). Bun's per-connection buffer limit sits far above the
 * high-water mark at which the switchboard pauses senders, so Bun drops nothing in normal
 * operation, and if it ever does, the switchboard treats it as a failed receiver. No
 * compression (it costs latency and the payloads are the application's). Bun pings idle
 * connections and closes those that stop answering after `IDLE_TIMEOUT_S`.
 */
import { type IceServer, formatIceServers } from "./ice-servers.ts";
import type { Server } from "bun";
import { StoaError, describeError, listenError } from "../core/errors.ts";
import { type Logger, createLogger } from "../core/log.ts";
import { type Registry, metrics as sharedMetrics } from "../core/metrics.ts";
import { guardServer, outOfFdsResponse } from "../core/fdguard.ts";
import { fdPressure, RefusalLog } from "../core/fdlimit.ts";
import { type Acl, loadAcl, parseAcl } from "./acl.ts";
import {
  HELLO_TIMEOUT_MS,
  HOTLINK_WS_PATH,
  MAX_CONNECTIONS_PER_USER,
  MAX_ENVELOPE_BYTES,
  MAX_MESSAGE_BYTES,
  MAX_SESSIONS_PER_CONNECTION,
  MAX_SESSIONS_PER_USER,
  PROTOCOL_VERSION,
} from "./protocol.ts";
import { Switchboard, type SwitchboardConn, type SwitchboardStats } from "./switchboard.ts";
import { LINK_OFFER_HEADER, offerBody, serveFramedLinks } from "./framed-link.ts";
import { StreamPairer } from "./relay-stream.ts";
import { loadUsers, parseAuthorization } from "./users.ts";
import { urlHost } from "../core/endpoint.ts";
import { FRAME_HEADER_BYTES } from "../core/frame.ts";

/** Default buffered bytes for one receiver over which its senders are paused: a few 1 MiB
 * messages in flight keep a fast link busy; more only adds latency and memory. */
const DEFAULT_HIGH_WATER_BYTES = 4 * 1024 * 1024;

/** Default time a receiver may stay over the high-water mark before it leaves its sessions. */
const DEFAULT_STUCK_TIMEOUT_MS = 30_000;

/** Smallest `maxMessageBytes`: every control message (a Signal may be 64 KiB) plus 1 KiB of payload. */
export const MIN_MESSAGE_BYTES = MAX_ENVELOPE_BYTES + 1024;

/** Largest `maxMessageBytes`: Bun buffers a whole message before handing it over. */
export const MAX_MESSAGE_BYTES_LIMIT = 1024 * 1024 * 1024;

/** How far over the limit Bun still delivers a message, so that it gets Error "too_large". */
const OVERSIZE_SLACK_BYTES = 1024 * 1024;

/** Bun's buffer limit per connection, in messages of the largest size beyond the high-water
 * mark: a paused sender still delivers what was already read (up to a socket read and one
 * message), and several senders may feed one receiver. */
const BACKPRESSURE_MESSAGES = 16;

/** Seconds of silence before Bun pings, then closes, a connection (Bun's range is 8–960). */
const IDLE_TIMEOUT_S = 60;

/** How long `close()` waits for connections to finish their close handshake before cutting them. */
const CLOSE_GRACE_MS = 2_000;

const U32_MAX = 0xffff_ffff;

/** What a client of a relay out of file descriptors reads (fetch, or the refuser of fdguard.ts). */
const OUT_OF_FDS_TEXT = "server out of file descriptors; try again shortly\n";
const OUT_OF_FDS_RESPONSE = outOfFdsResponse("text/plain; charset=utf-8", OUT_OF_FDS_TEXT);

export interface HotlinkServerOptions {
  hostname: string;
  /** 0 picks a free port (see `port` on the result). */
  port: number;
  usersFile: string;
  /** Without it only the owner rule applies. */
  aclFile?: string;
  /** Largest message accepted (default `MAX_MESSAGE_BYTES` of protocol.ts). */
  maxMessageBytes?: number;
  /** A receiver's buffered bytes over which its senders are paused (default 4 MiB). */
  highWaterBytes?: number;
  /** A receiver over the mark this long leaves its sessions with Close "receiver too slow" (default 30 s). */
  stuckTimeoutMs?: number;
  /** Time from the upgrade to Hello, then the connection is closed (default `HELLO_TIMEOUT_MS`, 5 s). */
  helloTimeoutMs?: number;
  /** Connections one user may hold, Hello or not (default `MAX_CONNECTIONS_PER_USER`, 64). */
  maxConnectionsPerUser?: number;
  /** Sessions one user may send across its connections (default `MAX_SESSIONS_PER_USER`, 8,192). */
  maxSessionsPerUser?: number;
  /** Sessions one connection may send (default `MAX_SESSIONS_PER_CONNECTION`, 4,096). */
  maxSessionsPerConnection?: number;
  /** Also serve framed relay links (framed-link.ts) on this address; port 0 picks a free one. */
  linkListen?: { hostname: string; port: number };
  /** A framed link silent this long is closed, half of it pinged (default `LINK_IDLE_TIMEOUT_MS`, 60 s). */
  linkIdleTimeoutMs?: number;
  /** ICE servers (ice-servers.ts) sent to every client in Welcome, for daemons not given their own. */
  iceServers?: IceServer[];
  /** Default: warnings and errors on stderr. */
  log?: Logger;
  /** Where metrics go (default the process's shared registry). */
  registry?: Registry;
}

/** `stats()` of a running server. */
/** The switchboard's counters, and the relay streams' (relay-stream.ts; zero without a framed-link port). */
type HotlinkStats = SwitchboardStats & { streams: { paired: number; active: number; waiting: number; bytes: number; resets: number } };

export interface HotlinkServer {
  /** `ws://host:port/v1/hotlink`; an unspecified listen address is shown as loopback. */
  readonly url: string;
  readonly hostname: string;
  readonly port: number;
  /** The framed links' port (`linkListen`), or undefined. */
  readonly linkPort: number | undefined;
  readonly sessionCount: number;
  stats(): HotlinkStats;
  /**
   * Re-reads the users and ACL files; a file that is bad is logged and its old content kept.
   * Returns the problems (empty when both were read).
   */
  /**
   * Re-reads the users and ACL files — the ones it started with, or `files` from now on (a
   * config reload); a file that fails keeps what was loaded before, and its old path.
   */
  reload(files?: { usersFile: string; aclFile?: string }): { ok: boolean; errors: string[] };
  /** Stops accepting, closes every connection (1001), and stops the server. */
  close(): Promise<void>;
}

/**
 * Loads the users (and ACL) file and starts serving. Throws `StoaError`: "config" for a bad
 * file or option, "in_use" when the port is taken, "io" when it cannot listen.
 * @example
 * const relay = startHotlinkServer({ hostname: "::", port: 8470, usersFile: "/etc/stoa/hotlink-users.json", log });
 * process.on("SIGHUP", () => relay.reload());
 * onShutdown("hotlink", () => relay.close());
 */
export function startHotlinkServer(options: HotlinkServerOptions): HotlinkServer {
  const maxMessageBytes = checkInt("maxMessageBytes", options.maxMessageBytes ?? MAX_MESSAGE_BYTES, MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES_LIMIT);
  const highWaterBytes = checkInt("highWaterBytes", options.highWaterBytes ?? DEFAULT_HIGH_WATER_BYTES, 1, U32_MAX);
  const stuckTimeoutMs = checkInt("stuckTimeoutMs", options.stuckTimeoutMs ?? DEFAULT_STUCK_TIMEOUT_MS, 1, 2 ** 31 - 1);
  const log = options.log ?? createLogger({ level: "warn", name: "hotlink" });
  let usersFile = options.usersFile;
  let users = loadUsers(usersFile);
  const acl: Acl = options.aclFile === undefined ? parseAcl({ rules: [] }) : loadAcl(options.aclFile);
  // Relay streams ride the framed-link port (relay-stream.ts): only with one.
  const streams = options.linkListen === undefined ? undefined : new StreamPairer(log, options.registry ?? sharedMetrics);
  const board = new Switchboard({
    ...(streams === undefined ? {} : { streams }),
    acl,
    log,
    registry: options.registry ?? sharedMetrics,
    maxMessageBytes,
    highWaterBytes,
    stuckTimeoutMs,
    ...(options.iceServers === undefined || options.iceServers.length === 0 ? {} : { ice: formatIceServers(options.iceServers) }),
    helloTimeoutMs: checkInt("helloTimeoutMs", options.helloTimeoutMs ?? HELLO_TIMEOUT_MS, 1, 2 ** 31 - 1),
    maxConnectionsPerUser: checkInt("maxConnectionsPerUser", options.maxConnectionsPerUser ?? MAX_CONNECTIONS_PER_USER, 1, U32_MAX),
    maxSessionsPerUser: checkInt("maxSessionsPerUser", options.maxSessionsPerUser ?? MAX_SESSIONS_PER_USER, 1, U32_MAX),
    maxSessionsPerConnection: checkInt("maxSessionsPerConnection", options.maxSessionsPerConnection ?? MAX_SESSIONS_PER_CONNECTION, 1, U32_MAX),
  });
  let closing = false;
  // Same declaration as the switchboard's, so both count into one metric.
  const refused = (options.registry ?? sharedMetrics).counter(
    "stoa_hotlink_refused_total",
    "Hotlink connections and sessions refused, and connections closed, for a limit, by reason.",
    ["reason"],
  );
  const fdRefusals = new RefusalLog(log, "hotlink relay: refusing requests, out of file descriptors (answered 503)");
  const countOutOfFds = (): void => {
    refused.inc({ reason: "out_of_fds" });
    fdRefusals.count();
  };
  const outOfFds = (): Response => {
    countOutOfFds();
    return new Response(OUT_OF_FDS_TEXT, { status: 503, headers: { "Retry-After": "1", Connection: "close" } });
  };

  /** The checks every connection passes, WebSocket or framed, in this order; null when it may connect. */
  const refusal = (authorization: string | null): { status: number; text: string; headers?: Record<string, string> } | null => {
    // Authentication comes first: nothing else is said to a client without a valid token.
    const auth = parseAuthorization(authorization);
    if (auth === null || !users.verify(auth.user, auth.token)) {
      return {
        status: 401,
        text: "unauthorized: send Authorization: Bearer <user>:<token> with a token from 'stoa hotlink user add'\n",
        headers: { "WWW-Authenticate": 'Bearer realm="stoa hotlink"' },
      };
    }
    if (closing) return { status: 503, text: "the relay is stopping; try again shortly\n" };
    const full = board.refuseConnection(auth.user);
    if (full !== null) return { status: 429, text: `${full}\n`, headers: { "Retry-After": "5" } };
    return null;
  };

  let links: ReturnType<typeof serveFramedLinks<SwitchboardConn>> | undefined;

  const fetch = (req: Request, server: Server<SwitchboardConn>): Response | undefined => {
    // Before anything else: a WebSocket costs a descriptor for as long as it lives (fdlimit.ts).
    if (fdPressure()) return outOfFds();
    const path = new URL(req.url).pathname;
    if (path === "/v1/health") return Response.json({ ok: !closing, v: PROTOCOL_VERSION });
    if (path !== HOTLINK_WS_PATH) return new Response(`not found: the hotlink endpoint is ${HOTLINK_WS_PATH}\n`, { status: 404 });
    const authorization = req.headers.get("authorization");
    const auth = parseAuthorization(authorization);
    const no = refusal(authorization);
    if (no !== null && no.status !== 429) return new Response(no.text, { status: no.status, headers: no.headers });
    if (req.method !== "GET") return new Response("method not allowed: use GET with a WebSocket upgrade\n", { status: 405, headers: { Allow: "GET" } });
    if (no !== null) return new Response(no.text, { status: no.status, headers: no.headers });
    if (auth === null) throw new StoaError("internal", "authorization passed the check but does not parse");
    // The framed link's offer (framed-link.ts): asked for without an upgrade.
    if (links !== undefined && req.headers.get(LINK_OFFER_HEADER)?.toLowerCase() === "tcp" && req.headers.get("upgrade") === null) {
      return new Response(offerBody(links.port), { status: 200, headers: { "Content-Type": "application/json", "Cache-Control": "no-store" } });
    }
    const ip = server.requestIP(req);
    const remote = ip === null ? "?" : ip.family === "IPv6" ? `[${ip.address}]:${ip.port}` : `${ip.address}:${ip.port}`;
    if (server.upgrade(req, { data: board.createConn(auth.user, auth.token, remote) })) return undefined;
    return new Response("upgrade required: connect with a WebSocket client\n", { status: 426, headers: { Upgrade: "websocket" } });
  };

  let server: Server<SwitchboardConn>;
  // A function: under descriptor pressure the listener is closed and later served anew (fdguard.ts).
  const serve = (port: number): Server<SwitchboardConn> =>
    Bun.serve<SwitchboardConn>({
      hostname: options.hostname,
      port,
      fetch,
      websocket: {
        maxPayloadLength: Math.min(U32_MAX, maxMessageBytes + OVERSIZE_SLACK_BYTES),
        backpressureLimit: Math.min(U32_MAX, highWaterBytes + BACKPRESSURE_MESSAGES * maxMessageBytes),
        closeOnBackpressureLimit: false,
        perMessageDeflate: false,
        idleTimeout: IDLE_TIMEOUT_S,
        sendPings: true,
        open: (ws) => board.opened(ws.data, ws),
        message: (ws, message) => board.message(ws.data, message),
        drain: (ws) => board.drained(ws.data),
        close: (ws, code, reason) => board.closed(ws.data, code, reason),
        error: (err, ws) => log.error("hotlink WebSocket handler failed", { conn: ws.data.id, error: describeError(err) }),
      },
    });
  try {
    server = serve(options.port);
  } catch (err) {
    throw listenError(err, `${urlHost(options.hostname)}:${options.port}`, { inUse: "pick another with --listen" });
  }
  const port = server.port ?? options.port;
  const fdGuard = guardServer({
    what: "hotlink relay",
    log,
    hostname: options.hostname,
    port,
    response: OUT_OF_FDS_RESPONSE,
    onRefused: () => countOutOfFds(),
    pause: () => void server.stop(false),
    resume: () => {
      server = serve(port);
    },
  });
  if (options.linkListen !== undefined) {
    try {
      links = serveFramedLinks<SwitchboardConn>({
        hostname: options.linkListen.hostname,
        port: options.linkListen.port,
        maxFrameBytes: maxMessageBytes + OVERSIZE_SLACK_BYTES,
        maxQueuedBytes: Math.min(U32_MAX, highWaterBytes + BACKPRESSURE_MESSAGES * maxMessageBytes),
        authTimeoutMs: checkInt("helloTimeoutMs", options.helloTimeoutMs ?? HELLO_TIMEOUT_MS, 1, 2 ** 31 - 1),
        ...(options.linkIdleTimeoutMs === undefined ? {} : { idleTimeoutMs: checkInt("linkIdleTimeoutMs", options.linkIdleTimeoutMs, 20, 2 ** 31 - 1) }),
        log,
        onOutOfFds: countOutOfFds,
        authorize: (authorization, remote) => {
          if (fdPressure()) {
            countOutOfFds();
            return { status: 503, text: OUT_OF_FDS_TEXT.trim() };
          }
          const no = refusal(authorization);
          if (no !== null) return { status: no.status, text: no.text.trim() };
          const auth = parseAuthorization(authorization);
          if (auth === null) return { status: 401, text: "unauthorized" };
          return { conn: board.createConn(auth.user, auth.token, remote) };
        },
        opened: (conn, link) => board.opened(conn, link),
        message: (conn, frame) => board.message(conn, frame, FRAME_HEADER_BYTES),
        attach: (conn, sid, key, pending) => board.attach(conn, sid, key, pending),
        drained: (conn) => board.drained(conn),
        closed: (conn, code, reason) => board.closed(conn, code, reason),
      });
    } catch (err) {
      fdGuard.stop();
      void server.stop(true);
      throw err;
    }
  }
  const shown = options.hostname === "::" ? "::1" : options.hostname === "0.0.0.0" ? "127.0.0.1" : options.hostname;
  let stopped: Promise<void> | undefined;

  return {
    url: `ws://${urlHost(shown)}:${port}${HOTLINK_WS_PATH}`,
    hostname: options.hostname,
    port,
    linkPort: links?.port,
    get sessionCount() {
      return board.sessionCount;
    },
    stats: () => ({
      ...board.stats(),
      streams: { ...(streams?.stats ?? { paired: 0, bytes: 0, resets: 0 }), active: streams?.active ?? 0, waiting: streams?.waiting ?? 0 },
    }),
    reload(files) {
      const errors: string[] = [];
      let usersReloaded = false;
      try {
        const file = files?.usersFile ?? usersFile;
        users = loadUsers(file);
        usersFile = file;
        usersReloaded = true;
      } catch (err) {
        errors.push(describeError(err));
        log.error("users file not reloaded; keeping the users loaded before", { error: describeError(err) });
      }
      const aclFile = files === undefined ? acl.source : files.aclFile;
      if (aclFile === undefined && acl.source !== undefined) {
        errors.push(`the relay keeps the ACL of ${acl.source}: removing --acl needs a restart`);
      } else if (aclFile !== undefined) {
        try {
          acl.reload(aclFile);
        } catch (err) {
          errors.push(describeError(err));
          log.error("ACL file not reloaded; keeping the rules loaded before", { error: describeError(err) });
        }
      }
      const current = users;
      const revoked = usersReloaded ? board.revoke((user, token) => !current.verify(user, token)) : 0;
      board.recheckAccess();
      log.info("reloaded", { users: users.names().length, rules: acl.size, revoked, ok: errors.length === 0 });
      return { ok: errors.length === 0, errors };
    },
    close() {
      stopped ??= (async () => {
        closing = true;
        fdGuard.stop();
        links?.stop();
        fdRefusals.stop();
        board.closeAll(1001, "relay stopping");
        await streams?.close();
        const graceful = server.stop(false);
        const late = new Promise<"late">((resolve) => setTimeout(() => resolve("late"), CLOSE_GRACE_MS).unref());
        if ((await Promise.race([graceful.then(() => "done" as const), late])) === "late") await server.stop(true);
      })();
      return stopped;
    },
  };
}

function checkInt(name: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new StoaError("config", `hotlink server option ${name} must be an integer from ${min} to ${max}, got ${value}`);
  }
  return value;
}

