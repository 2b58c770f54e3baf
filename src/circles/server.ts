/**
 * The circles server: one Bun.serve on one port for every circle, JSON-RPC 2.0 over a WebSocket
 * per client (protocol.ts), plays handed to the TaskQueue (queue.ts) and answered by id.
 *
 * Routing (every refusal is JSON `{"error","message"}`, and comes before any upgrade):
 *
 *   GET /                 the browser console (console.html, its script bundled by Bun)
 *   GET /circles          {"circles":[canonical keys],"auth":bool}: what the console offers
 *   GET /health           200 {"ok":true,…} when the queue can take plays, else 503 {"ok":false,…}
 *   GET /metrics          Prometheus text of the registry (connections, plays by outcome,
 *                         play latency, authentication failures, refused upgrades)
 *   GET /auth/nonce?public_key=PK
 *                         {"nonce","expires_at"}: a nonce for PK not bound to a connection (below)
 *   GET /<circle_pk>      the WebSocket. The key in any form auth.ts `parsePublicKey` takes
 *                         (compressed or not, 0x or not, either case); compared canonically.
 *                         Not a key (or more path segments): 400. A key this server does not
 *                         serve: 404 {"error":"Circle not found","message":"Circle '<pk>' is not
 *                         available on this server"}. A known circle without a WebSocket
 *                         upgrade: 426. While stopping: 503.
 *
 * Authentication. `fetch_nonce` issues a nonce bound to the connection, the circle and the
 * pubkey (auth.ts NonceStore). `GET /auth/nonce` issues one bound to the pubkey only — good for
 * one `authenticate` by that pubkey on any connection to any circle of this server, within
 * NONCE_TTL_MS, single use. `authenticate {pubkey, signature}` tries the connection's own nonces
 * for that pubkey first; only when it holds none are the HTTP-issued ones of that pubkey tried.
 * Either way every nonce tried is used up. HTTP-issued nonces are held for at most
 * MAX_HTTP_NONCE_KEYS pubkeys (MAX_NONCES_PER_CONNECTION each); beyond that the oldest pubkey's
 * are dropped. Success sets the connection's caller (the script's CALLER_ID); with
 * `enableAuth`, `play` before it answers -32001.
 *
 * Plays. At most MAX_INFLIGHT_PER_CONNECTION plays of one connection run at once; more answer
 * -32000 at once. Answers go out in completion order. The queue settles every play within its
 * timeout (queue.ts); an answer for a connection that closed meanwhile is dropped (counted).
 *
 * `close(graceMs)`: stop accepting connections; new plays answer -32000 "server stopping"; plays
 * in flight get their answer until `graceMs`, then -32000 "server stopping"; then every socket
 * is closed 1001. The queue is the caller's: close it after the server.
 *
 * Cost of a connection: a small record (Conn) and Bun's own socket; an idle connection holds no
 * timer. Bun pings idle sockets and closes the ones that stop answering after IDLE_TIMEOUT_S.
 * Like every Bun.serve listener of stoa, the port is guarded against descriptor exhaustion
 * (core/fdguard.ts): new requests get 503 while the process is in its descriptor reserve.
 */
import type { Server, ServerWebSocket } from "bun";
import { StoaError, describeError, listenError } from "../core/errors.ts";
import { guardServer, outOfFdsResponse } from "../core/fdguard.ts";
import { fdPressure, RefusalLog } from "../core/fdlimit.ts";
import type { Logger } from "../core/log.ts";
import { CONTENT_TYPE, type Registry, metrics as sharedMetrics } from "../core/metrics.ts";
import { NonceStore, type PublicKey, parsePublicKey, verifySignature } from "./auth.ts";
import {
  type AuthenticateParams,
  type ErrorResponse,
  type Id,
  MAX_INFLIGHT_PER_CONNECTION,
  MAX_MESSAGE_BYTES,
  MAX_RESPONSE_BYTES,
  RPC_ERROR,
  type Response as RpcResponse,
  decodeRequest,
  encodeResponse,
  errorResponse,
  resultResponse,
} from "./protocol.ts";
import { type PlayOutcome, STOPPING, type TaskQueue } from "./queue.ts";
import consolePage from "./console.html";
import { urlHost } from "../core/endpoint.ts";

/** Bun pings a socket idle this long and closes it when the pong does not come. */
export const IDLE_TIMEOUT_S = 120;
/** With --enable-auth, a connection that has not authenticated this long after opening is closed (1008). */
export const AUTH_DEADLINE_MS = 60_000;
/** Pubkeys holding HTTP-issued nonces (`GET /auth/nonce`) at once; the oldest is dropped beyond. */
const MAX_HTTP_NONCE_KEYS = 4096;
/** Bytes queued for a client that does not read its answers before it is disconnected. */
const BACKPRESSURE_LIMIT_BYTES = 4 * MAX_RESPONSE_BYTES;
/** The NonceStore connection id of a pubkey's HTTP-issued nonces (connection ids are decimal). */
const HTTP_NONCE_CONN = "http:";
/** The circle HTTP-issued nonces are bound to: none. */
const ANY_CIRCLE = "";
/** Latency buckets of a play, in seconds: a QuickJS play is sub-millisecond, a timeout seconds. */
const PLAY_SECONDS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Longest part of a refused path shown back in its error message. */
const MAX_SHOWN_PATH_CHARS = 140;
const JSON_TYPE = "application/json; charset=utf-8";

interface CirclesServerOptions {
  /** Address to listen on; port 0 picks a free one (see `port` on the handle). */
  host: string;
  port: number;
  /** The circles served, parsed (auth.ts `parsePublicKey`); at least one. */
  circles: readonly PublicKey[];
  /** Refuse `play` (-32001) until the connection authenticated. */
  enableAuth: boolean;
  queue: TaskQueue;
  /** The time limit of each play (PlaySubmission.timeoutMs). */
  taskTimeoutMs: number;
  /** PEM text of a certificate and its key: serve https/wss. */
  tls?: { cert: string; key: string };
  log: Logger;
  /** Where metrics go (default the process's shared registry). */
  metrics?: Registry;
  /** The nonces' clock (ms since the epoch), for tests; default Date.now. */
  now?: () => number;
  /** With `enableAuth`: close connections not authenticated this long after opening (default AUTH_DEADLINE_MS). */
  authDeadlineMs?: number;
}

export interface CirclesServer {
  /** Base URL of the console and the HTTP endpoints, e.g. `http://127.0.0.1:8080`. */
  readonly url: string;
  /** Base URL of the WebSockets: `<wsUrl>/<circle_pk>`, e.g. `ws://127.0.0.1:8080`. */
  readonly wsUrl: string;
  readonly port: number;
  /** Open WebSocket connections. */
  readonly connections: number;
  /** Stops the server (see the module header); idempotent. */
  close(graceMs: number): Promise<void>;
}

/** One WebSocket connection's state: kept small, there may be many idle ones. */
interface Conn {
  /** Decimal connection number: the NonceStore's connection id. */
  readonly id: string;
  /** The circle's canonical key. */
  readonly circle: string;
  /** The authenticated caller's canonical key, or "". */
  caller: string;
  /** Plays being worked on. */
  inflight: number;
  open: boolean;
  /** With auth on: closes the connection unless it authenticates in time. */
  authDeadline: ReturnType<typeof setTimeout> | undefined;
}

/** A play waiting for its outcome; `done` once answered (by the queue or by close). */
interface PendingPlay {
  readonly ws: ServerWebSocket<Conn>;
  readonly id: Id;
  readonly started: number;
  done: boolean;
}

/**
 * Serves the circles (see the module header). Throws StoaError "in_use" or "io" when the port
 * cannot be had, "config" when no circle is given.
 * @example
 * const server = startCirclesServer({ host: "127.0.0.1", port: 8080, circles: [parsePublicKey(pk)], enableAuth: true, queue, taskTimeoutMs: 5000, log });
 * onShutdown("circles", async () => { await server.close(5000); await queue.close(5000); });
 */
export function startCirclesServer(options: CirclesServerOptions): CirclesServer {
  if (options.circles.length === 0) throw new StoaError("config", "no circle to serve: give at least one public key (-k PK)");
  const { log, queue, enableAuth, taskTimeoutMs } = options;
  const circles = new Set(options.circles.map((key) => key.hex));
  const nonces = new NonceStore({ now: options.now });
  /** Pubkeys with HTTP-issued nonces, oldest first (re-inserted on each issue). */
  const httpNonceKeys = new Set<string>();
  const sockets = new Set<ServerWebSocket<Conn>>();
  const pending = new Set<PendingPlay>();
  let settledAll: (() => void) | undefined;
  let nextConn = 0;
  let closing = false;

  const registry = options.metrics ?? sharedMetrics;
  const connectionsGauge = registry.gauge("stoa_circles_connections", "Open circles WebSocket connections.");
  const connectionsTotal = registry.counter("stoa_circles_connections_total", "Circles WebSocket connections accepted.");
  const authDeadlineMs = options.authDeadlineMs ?? AUTH_DEADLINE_MS;
  const playsInFlight = registry.gauge("stoa_circles_plays_in_flight", "Plays submitted to the queue and not answered yet.");
  const plays = registry.counter("stoa_circles_plays_total", "Plays answered, by outcome (ok, error, timeout, rejected).", ["outcome"]);
  const playSeconds = registry.histogram("stoa_circles_play_seconds", "Time from a play's request to its outcome.", PLAY_SECONDS_BUCKETS);
  const dropped = registry.counter("stoa_circles_answers_dropped_total", "Play answers not sent: the client had disconnected.");
  const authFailures = registry.counter("stoa_circles_auth_failures_total", "Failed authenticate requests, by reason.", ["reason"]);
  const refusedUpgrades = registry.counter("stoa_circles_refused_total", "Requests for a circle refused before the upgrade, by reason.", ["reason"]);
  const fdRefusals = new RefusalLog(log, "circles server: refusing requests, out of file descriptors (answered 503)");

  const send = (ws: ServerWebSocket<Conn>, response: RpcResponse): void => {
    if (ws.data.open) ws.send(encodeResponse(response));
  };

  const answerPlay = (play: PendingPlay, outcome: PlayOutcome): void => {
    if (play.done) return;
    play.done = true;
    pending.delete(play);
    playsInFlight.dec();
    const conn = play.ws.data;
    conn.inflight--;
    playSeconds.observe((performance.now() - play.started) / 1000);
    plays.inc({ outcome: outcome.ok ? "ok" : outcome.kind === "timeout" ? "timeout" : "error" });
    if (!conn.open) {
      dropped.inc();
      log.debug("play answer dropped: the client disconnected", { conn: conn.id, id: play.id });
    } else if (outcome.ok) {
      send(play.ws, resultResponse(play.id, { output: outcome.output }));
    } else {
      send(play.ws, errorResponse(play.id, outcome.kind === "timeout" ? RPC_ERROR.timeout : RPC_ERROR.execution, outcome.message));
    }
    if (pending.size === 0) settledAll?.();
  };

  const rejectPlay = (ws: ServerWebSocket<Conn>, response: ErrorResponse): void => {
    plays.inc({ outcome: "rejected" });
    send(ws, response);
  };

  const authenticate = (ws: ServerWebSocket<Conn>, id: Id, params: AuthenticateParams): void => {
    const conn = ws.data;
    const pubkey = params.pubkey.hex;
    const signs = (nonce: string) => verifySignature(params.pubkey, nonce, params.signature);
    let redeemed = nonces.redeem(conn.id, conn.circle, pubkey, signs);
    if (!redeemed.ok && redeemed.reason === "none" && httpNonceKeys.has(pubkey)) {
      // Uses up every nonce of that pubkey's HTTP pseudo-connection (one circle: ANY_CIRCLE).
      redeemed = nonces.redeem(HTTP_NONCE_CONN + pubkey, ANY_CIRCLE, pubkey, signs);
      httpNonceKeys.delete(pubkey);
    }
    if (!redeemed.ok) {
      authFailures.inc({ reason: redeemed.reason });
      log.debug("authentication failed", { conn: conn.id, circle: conn.circle, pubkey, reason: redeemed.reason });
      send(ws, errorResponse(id, RPC_ERROR.invalidCredentials, `invalid credentials: ${redeemed.message}`));
      return;
    }
    conn.caller = pubkey;
    clearTimeout(conn.authDeadline);
    conn.authDeadline = undefined;
    log.debug("authenticated", { conn: conn.id, circle: conn.circle, pubkey });
    send(ws, resultResponse(id, { authenticated: true }));
  };

  const play = (ws: ServerWebSocket<Conn>, id: Id, script: string): void => {
    const conn = ws.data;
    if (enableAuth && conn.caller === "") {
      rejectPlay(ws, errorResponse(id, RPC_ERROR.authRequired, "authentication required: call fetch_nonce, sign the nonce, then authenticate"));
      return;
    }
    if (closing) {
      rejectPlay(ws, errorResponse(id, RPC_ERROR.execution, `${STOPPING}: the play was not started; try again on another server or later`));
      return;
    }
    if (conn.inflight >= MAX_INFLIGHT_PER_CONNECTION) {
      rejectPlay(
        ws,
        errorResponse(
          id,
          RPC_ERROR.execution,
          `too many plays in flight on this connection (limit ${MAX_INFLIGHT_PER_CONNECTION}): wait for answers before sending more`,
        ),
      );
      return;
    }
    conn.inflight++;
    const entry: PendingPlay = { ws, id, started: performance.now(), done: false };
    pending.add(entry);
    playsInFlight.inc();
    void queue
      .submit({ circle: conn.circle, caller: conn.caller, script, timeoutMs: taskTimeoutMs })
      .then(
        (outcome) => answerPlay(entry, outcome),
        // The queue never rejects (queue.ts); should it, the client still gets an answer.
        (err: unknown) => answerPlay(entry, { ok: false, kind: "execution", message: `the queue failed: ${describeError(err)}` }),
      );
  };

  const message = (ws: ServerWebSocket<Conn>, data: string | Buffer): void => {
    const decoded = decodeRequest(data);
    if (!decoded.ok) {
      send(ws, decoded.response);
      return;
    }
    const request = decoded.request;
    const conn = ws.data;
    switch (request.method) {
      case "fetch_nonce":
        send(ws, resultResponse(request.id, nonces.issue(conn.id, conn.circle, request.params.pubkey.hex)));
        return;
      case "authenticate":
        authenticate(ws, request.id, request.params);
        return;
      case "play":
        play(ws, request.id, request.params.script);
        return;
    }
  };

  const json = (status: number, body: Record<string, unknown>, headers: Record<string, string> = {}): Response =>
    new Response(`${JSON.stringify(body)}\n`, { status, headers: { "content-type": JSON_TYPE, ...headers } });

  const issueHttpNonce = (url: URL): Response => {
    const text = url.searchParams.get("public_key");
    if (text === null || text === "") {
      return json(400, { error: "Bad request", message: "give the caller's public key: GET /auth/nonce?public_key=<hex>" });
    }
    let pubkey: PublicKey;
    try {
      pubkey = parsePublicKey(text);
    } catch (err) {
      return json(400, { error: "Bad request", message: describeError(err) });
    }
    httpNonceKeys.delete(pubkey.hex);
    httpNonceKeys.add(pubkey.hex);
    for (const oldest of httpNonceKeys) {
      if (httpNonceKeys.size <= MAX_HTTP_NONCE_KEYS) break;
      httpNonceKeys.delete(oldest);
      nonces.dropConnection(HTTP_NONCE_CONN + oldest);
    }
    return json(200, nonces.issue(HTTP_NONCE_CONN + pubkey.hex, ANY_CIRCLE, pubkey.hex));
  };

  const fetch = async (req: Request, server: Server<Conn>): Promise<Response | undefined> => {
    // Before anything else: a WebSocket costs a descriptor for as long as it lives (fdlimit.ts).
    if (fdPressure()) {
      fdRefusals.count();
      return json(503, { error: "Out of file descriptors", message: "server out of file descriptors; try again shortly" }, { "Retry-After": "1" });
    }
    const url = new URL(req.url);
    const path = url.pathname;
    if (req.method !== "GET" && req.method !== "HEAD") {
      return json(405, { error: "Method not allowed", message: `${req.method} ${path.slice(0, MAX_SHOWN_PATH_CHARS)}: use GET` }, { Allow: "GET" });
    }
    switch (path) {
      case "/health": {
        const health = closing ? { ok: false, detail: STOPPING } : await queue.healthy();
        return json(health.ok ? 200 : 503, { ok: health.ok, detail: health.detail, circles: circles.size, connections: sockets.size });
      }
      case "/metrics":
        return new Response(registry.render(), { headers: { "content-type": CONTENT_TYPE } });
      case "/circles":
        return json(200, { circles: [...circles], auth: enableAuth });
      case "/auth/nonce":
        return issueHttpNonce(url);
    }
    const segment = path.slice(1);
    const shown = segment.length > MAX_SHOWN_PATH_CHARS ? `${segment.slice(0, MAX_SHOWN_PATH_CHARS)}…` : segment;
    let circle: PublicKey;
    try {
      if (segment.includes("/")) throw new StoaError("decode", "the path has more than one segment");
      circle = parsePublicKey(segment);
    } catch (err) {
      refusedUpgrades.inc({ reason: "bad_path" });
      return json(400, {
        error: "Bad request",
        message: `the path '/${shown}' does not name a circle (${describeError(err)}): connect to /<circle public key in hex>`,
      });
    }
    if (!circles.has(circle.hex)) {
      refusedUpgrades.inc({ reason: "not_found" });
      return json(404, { error: "Circle not found", message: `Circle '${segment}' is not available on this server` });
    }
    if (closing) {
      refusedUpgrades.inc({ reason: "stopping" });
      return json(503, { error: "Service unavailable", message: `${STOPPING}; try again shortly` }, { "Retry-After": "1" });
    }
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      refusedUpgrades.inc({ reason: "not_websocket" });
      return json(
        426,
        {
          error: "Upgrade required",
          message: `Circle '${segment}' speaks JSON-RPC 2.0 over a WebSocket: connect with a WebSocket client (stoa circles play --url ws://…/${segment})`,
        },
        { Upgrade: "websocket" },
      );
    }
    const conn: Conn = { id: String(nextConn++), circle: circle.hex, caller: "", inflight: 0, open: false, authDeadline: undefined };
    if (server.upgrade(req, { data: conn })) return undefined;
    refusedUpgrades.inc({ reason: "bad_handshake" });
    return json(400, { error: "Bad request", message: "not a valid WebSocket handshake (Sec-WebSocket-Key, Sec-WebSocket-Version 13)" });
  };

  const serve = (port: number): Server<Conn> =>
    Bun.serve<Conn>({
      hostname: options.host,
      port,
      development: false,
      ...(options.tls === undefined ? {} : { tls: options.tls }),
      routes: { "/": consolePage },
      fetch,
      websocket: {
        maxPayloadLength: MAX_MESSAGE_BYTES,
        backpressureLimit: BACKPRESSURE_LIMIT_BYTES,
        closeOnBackpressureLimit: true,
        perMessageDeflate: false,
        idleTimeout: IDLE_TIMEOUT_S,
        sendPings: true,
        open(ws) {
          ws.data.open = true;
          sockets.add(ws);
          if (options.enableAuth) {
            // Unauthenticated connections cost a descriptor each and do nothing: not forever.
            ws.data.authDeadline = setTimeout(() => {
              authFailures.inc({ reason: "deadline" });
              ws.close(1008, `authenticate within ${Math.round(authDeadlineMs / 1000)} s of connecting`);
            }, authDeadlineMs);
          }
          connectionsGauge.inc();
          connectionsTotal.inc();
          log.debug("connected", { conn: ws.data.id, circle: ws.data.circle });
        },
        message,
        close(ws, code) {
          ws.data.open = false;
          clearTimeout(ws.data.authDeadline);
          sockets.delete(ws);
          connectionsGauge.dec();
          nonces.dropConnection(ws.data.id);
          log.debug("disconnected", { conn: ws.data.id, code, inflight: ws.data.inflight });
        },
      },
    });

  let server: Server<Conn>;
  try {
    server = serve(options.port);
  } catch (err) {
    throw listenError(err, `${urlHost(options.host)}:${options.port}`, { inUse: "pick another with --port" });
  }
  const port = server.port ?? options.port;
  const fdGuard = guardServer({
    what: "circles server",
    log,
    hostname: options.host,
    port,
    response: outOfFdsResponse(JSON_TYPE, JSON.stringify({ error: "Out of file descriptors", message: "server out of file descriptors; try again shortly" })),
    onRefused: () => fdRefusals.count(),
    pause: () => void server.stop(false),
    resume: () => {
      server = serve(port);
    },
  });

  const shown = options.host === "::" ? "::1" : options.host === "0.0.0.0" ? "127.0.0.1" : options.host;
  const secure = options.tls !== undefined;
  let stopped: Promise<void> | undefined;
  return {
    url: `${secure ? "https" : "http"}://${urlHost(shown)}:${port}`,
    wsUrl: `${secure ? "wss" : "ws"}://${urlHost(shown)}:${port}`,
    port,
    get connections() {
      return sockets.size;
    },
    close(graceMs) {
      stopped ??= (async () => {
        closing = true;
        fdGuard.stop();
        fdRefusals.stop();
        void server.stop(false);
        if (pending.size > 0) {
          const settled = new Promise<void>((resolve) => {
            settledAll = resolve;
          });
          let timer: ReturnType<typeof setTimeout> | undefined;
          const late = new Promise<void>((resolve) => {
            timer = setTimeout(resolve, Math.max(0, graceMs));
          });
          await Promise.race([settled, late]);
          clearTimeout(timer);
        }
        for (const entry of [...pending]) {
          answerPlay(entry, { ok: false, kind: "execution", message: `${STOPPING}: the play did not finish within the ${graceMs} ms grace period` });
        }
        for (const ws of sockets) ws.close(1001, STOPPING);
        await server.stop(true);
        log.debug("circles server stopped", { port });
      })();
      return stopped;
    },
  };
}

