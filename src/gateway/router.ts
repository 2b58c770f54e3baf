/**
 * The hot path: one `Router` per thread, listening on the three external ports.
 *
 * Life of a client connection (rules and error responses in protocol.ts):
 *   open     TCP_NODELAY, first-line timer started
 *   line     bytes go to a `FirstLineParser`; an error is answered at once, and so is a
 *            health check (`GET /ready`, `GET /healthz`: protocol.ts)
 *   dialing  the client is paused; the target (explicit or conventional) is connected
 *   handed   the publisher takes connections over (it listens on handoff.sock: handoff.ts), so
 *            the client's socket itself was sent to it with the forwarded bytes; the gateway
 *            holds nothing more of this connection
 *   spliced  both sockets were handed to the router's `FdSplicer` (core/fdsplice.ts): the data
 *            path runs on raw fds in the splicer's thread, starting with the forwarded bytes
 *   piping   the fallback data path (TLS, `dataPath: "bun"`, or anything unusual at hand-over):
 *            a core `Pipe` splices the Bun sockets
 *   rejecting an error response was written; the client's input is discarded until it closes
 *            or `ERROR_LINGER_MS` passes (`REFUSAL_LINGER_MS` for a 503 out_of_fds)
 * Out of file descriptors (protocol.ts): a client accepted into the reserve is refused at open,
 * a connect that fails for want of descriptors is a 503, and an `FdWatch` closes the listeners
 * while the limit is reached (Bun would spin in accept) and binds them again after.
 * Every handler is total: nothing a client sends can throw out of it, and a handler that fails
 * anyway (Bun's `error` event) costs that one connection. Listeners use SO_REUSEPORT so that
 * workers and a successor gateway share the ports.
 */
import type { Socket, SocketHandler, TCPSocketListener, TCPSocketListenOptions } from "bun";
import { StoaError, describeError, errnoCode, listenError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { FdSplicer, socketFd, takeSocketFd } from "../core/fdsplice.ts";
import { FdWatch, MAX_LINGERING_REFUSALS, REFUSAL_LINGER_MS } from "../core/fdguard.ts";
import { Outbox } from "../core/outbox.ts";
import { canAffordAnswer, fdPressure, fdReserve, isFdExhaustion, overFdBudget, RefusalLog } from "../core/fdlimit.ts";
import { libc } from "../ffi/libc.ts";
import { dupFd } from "../ffi/sockets.ts";
import { Pipe, pipeHandlers, type PipeEnd, type PipeStats, hasEarlyEvents } from "../core/pipe.ts";
import { FirstLineParser } from "./firstline.ts";
import { MAX_HANDOFF_PREFIX_BYTES, connectHandoff, encodeHandoff, sendHandoff } from "./handoff.ts";
import { OwnedFd } from "../ffi/fdpass.ts";
import { publisherHandoffPath } from "../core/paths.ts";
import { HealthReporter, type HealthEvent } from "./health.ts";
import {
  ERROR_LINGER_MS,
  KINDS,
  type Kind,
  type Ports,
  type RouteError,
  healthResponse,
  routeErrorResponse,
  type Target,
} from "./protocol.ts";
import { conventionalTargetProblem, handoffTargetProblem, type RouteTable } from "./routes.ts";
import { type RouterSnapshot, Tally } from "./stats.ts";
import { urlHost } from "../core/endpoint.ts";

/** Everything a router needs; structured-clonable, so a worker can receive it. */
export interface RouterConfig {
  router: number;
  runDir: string;
  listen: readonly string[];
  /** Bound ports (never 0 here: the main thread resolved them). */
  ports: Ports;
  /** PEM text, not paths: read once by the main thread. */
  tls: { cert: string; key: string } | null;
  /**
   * Socket activation: listen on these inherited sockets (a copy each, so a stop never closes
   * the original) instead of binding `listen` × `ports`. Descriptors are process-wide, so
   * every router's thread can use them.
   */
  fds?: Record<Kind, number[]> | null;
  firstLineTimeoutMs: number;
  connectTimeoutMs: number;
  maxFirstLineBytes: number;
  /**
   * "epoll": once routed, a connection's bytes move on raw fds in a splicer thread (fast);
   * "bun": through Bun's sockets (`Pipe`). TLS connections always take the Bun path.
   */
  dataPath: DataPath;
  /** Hand plain-TCP connections to publishers that listen on handoff.sock (handoff.ts). */
  handoff: boolean;
}

export type DataPath = "epoll" | "bun";

interface RouterHooks {
  log: Logger;
  onHealth(event: HealthEvent): void;
  /** Called once, when the router is draining and its last connection closed. */
  onIdle(): void;
}

type Phase = "line" | "dialing" | "piping" | "spliced" | "handed" | "rejecting";

/** Per-client state, in `socket.data`; a `PipeEnd` so the Pipe can find itself. */
interface RouterConn extends PipeEnd {
  readonly kind: Kind;
  phase: Phase;
  closed: boolean;
  parser: FirstLineParser | null;
  timer: ReturnType<typeof setTimeout> | undefined;
  pubId: string;
  /** Input that arrived while dialing (the socket is paused, so at most a read or two). */
  pending: Uint8Array[] | null;
  clientEnded: boolean;
  /** An error or health answer the socket did not take all of yet; null when none is waiting. */
  unsent: Outbox | null;
  /** Pipe byte counts already added to the tally. */
  countedIn: number;
  countedOut: number;
  /** Refused for want of descriptors, and counted in `#lingeringRefusals` until it closes. */
  refusedForFds: boolean;
}

type Client = Socket<RouterConn>;

export class Router {
  readonly #config: RouterConfig;
  readonly #routes: RouteTable;
  readonly #log: Logger;
  readonly #hooks: RouterHooks;
  readonly #health: HealthReporter;
  readonly #tally: Tally;
  readonly #conns = new Set<Client>();
  readonly #upstream = pipeHandlers<PipeEnd>();
  /** Created on the first routed connection when the epoll data path is on. */
  #splicer: FdSplicer | null = null;
  /** Connections handed to the splicer, by splice id. */
  readonly #spliced = new Map<number, RouterConn>();
  /** Splicer byte totals already added to the tally, per kind. */
  readonly #splicedCounted = { in: [0, 0, 0], out: [0, 0, 0] };
  #listeners: { kind: Kind; listener: TCPSocketListener<RouterConn> }[] = [];
  #draining = false;
  #idleSent = false;
  /** Closes the listeners while the process is out of descriptors; made by `start()`. */
  #fdWatch: FdWatch | null = null;
  /** Clients answered 503 out_of_fds that have not closed yet (bounded: each holds a descriptor). */
  #lingeringRefusals = 0;
  /** Upstream connects started and not settled: each is about to take a descriptor. */
  #dialing = 0;
  readonly #fdRefusals: RefusalLog;

  constructor(config: RouterConfig, routes: RouteTable, hooks: RouterHooks) {
    this.#config = config;
    this.#routes = routes;
    this.#hooks = hooks;
    this.#log = hooks.log;
    this.#health = new HealthReporter((event) => hooks.onHealth(event));
    this.#tally = new Tally(config.router);
    this.#fdRefusals = new RefusalLog(this.#log, `router ${config.router}: refusing connections, out of file descriptors (answered 503 out_of_fds)`);
  }

  /**
   * Binds every (kind, address) listener and watches the descriptors (they are closed while the
   * process is out of them). Throws `StoaError` "in_use"/"io", binding nothing.
   */
  start(): void {
    this.#bind();
    this.#fdWatch = new FdWatch({
      pauseAt: "limit",
      pause: () => {
        for (const { listener } of this.#listeners) listener.stop(false);
        this.#listeners = [];
      },
      resume: () => {
        if (this.#draining) return true; // stopped meanwhile: nothing to resume
        try {
          this.#bind();
          return true;
        } catch (err) {
          this.#log.debug("could not listen again yet", { err });
          return false;
        }
      },
      log: this.#log,
      what: `gateway router ${this.#config.router}`,
    });
  }

  /** Binds every listener, or none (throws). */
  #bind(): void {
    const { listen, ports, tls, fds } = this.#config;
    try {
      for (const kind of KINDS) {
        const socket = this.#handlers(kind);
        for (const fd of fds?.[kind] ?? []) {
          // `fd` is missing from Bun's listen types but honoured (measured on 1.4.5).
          const options = { fd: dupFd(fd), allowHalfOpen: true, socket, ...(tls === null ? {} : { tls }) };
          try {
            this.#listeners.push({ kind, listener: Bun.listen<RouterConn>(options as unknown as TCPSocketListenOptions<RouterConn>) });
          } catch (err) {
            throw bindError(err, `inherited fd ${fd}`, ports[kind], kind);
          }
        }
        if (fds) continue;
        for (const hostname of listen) {
          // reusePort is missing from Bun's listen types but honoured (measured).
          const options: TCPSocketListenOptions<RouterConn> & { reusePort: boolean } = {
            hostname,
            port: ports[kind],
            reusePort: true,
            allowHalfOpen: true,
            socket,
            ...(tls === null ? {} : { tls }),
          };
          try {
            this.#listeners.push({ kind, listener: Bun.listen<RouterConn>(options) });
          } catch (err) {
            throw bindError(err, hostname, ports[kind], kind);
          }
        }
      }
    } catch (err) {
      for (const { listener } of this.#listeners) listener.stop(true);
      this.#listeners = [];
      throw err;
    }
  }

  /**
   * New connections get `tls` (PEM text, checked by the caller) from now on; established ones
   * keep their session. Bun cannot change a listener's TLS context (`reload()` takes handlers
   * only, measured on 1.4.5), so each listener is replaced by a new one on a copy of the same
   * kernel socket, then the old one stops: the port never closes, so its accept queue is never
   * reset (binding a second SO_REUSEPORT socket and closing the first reset 813 of 3,305
   * connections over 500 swaps under load; the copy lost none, measured). All or nothing: a failure
   * throws and leaves the old listeners serving. While out of descriptors (listeners paused)
   * or draining, only the PEM for the next bind changes.
   */
  reloadTls(tls: { cert: string; key: string }): void {
    if (this.#config.tls === null) throw new StoaError("config", "this gateway serves without TLS; start it with --tls-cert and --tls-key to use them");
    const next: { kind: Kind; listener: TCPSocketListener<RouterConn> }[] = [];
    try {
      for (const { kind, listener } of this.#listeners) {
        const fd: unknown = Reflect.get(listener, "fd"); // missing from Bun's types, present (1.4.5)
        if (typeof fd !== "number" || fd < 0) throw new StoaError("internal", `a ${kind} listener has no descriptor`);
        const options = { fd: dupFd(fd), allowHalfOpen: true, socket: this.#handlers(kind), tls };
        next.push({ kind, listener: Bun.listen<RouterConn>(options as unknown as TCPSocketListenOptions<RouterConn>) });
      }
    } catch (err) {
      for (const { listener } of next) listener.stop(true); // a copy's stop closes only the copy
      throw err instanceof StoaError ? err : new StoaError("io", `could not listen with the new certificate: ${describeError(err)}`, { cause: err });
    }
    for (const { listener } of this.#listeners) listener.stop(false);
    this.#listeners = next;
    this.#config.tls = tls;
  }

  /** Client connections open now. */
  get open(): number {
    return this.#conns.size + this.#spliced.size;
  }

  /** Stops accepting; open connections go on. `onIdle` fires once the last one closes. */
  stopAccepting(): void {
    this.#fdWatch?.stop();
    this.#fdRefusals.stop();
    for (const { listener } of this.#listeners) listener.stop(false);
    this.#listeners = [];
    this.#draining = true;
    this.#checkIdle();
  }

  /** Cuts every open connection now; returns how many there were. */
  terminateAll(): number {
    const cut = this.#conns.size + this.#spliced.size;
    if (this.#spliced.size > 0) void this.#splicer?.destroyAll("the gateway stopped before this connection ended");
    for (const sock of [...this.#conns]) {
      const pipe = sock.data.pipe;
      if (pipe !== null) pipe.destroy(new StoaError("closed", "the gateway stopped before this connection ended"));
      else sock.terminate();
    }
    return cut;
  }

  /** Counters so far (see stats.ts); also folds in the bytes of connections still open. */
  snapshot(): RouterSnapshot {
    for (const sock of this.#conns) this.#countBytes(sock.data);
    this.#countSpliced();
    return this.#tally.snapshot();
  }

  /** Cuts every connection and stops the splicer thread. */
  async close(): Promise<void> {
    this.stopAccepting();
    this.terminateAll();
    const splicer = this.#splicer;
    this.#splicer = null;
    await splicer?.close();
  }

  #handlers(kind: Kind): SocketHandler<RouterConn> {
    const handlers: SocketHandler<RouterConn> = {
      open: (sock) => this.#onOpen(sock, kind),
      data: (sock, chunk) => this.#onData(sock, chunk),
      drain: (sock) => this.#onDrain(sock),
      end: (sock) => this.#onEnd(sock),
      close: (sock, err) => this.#onClose(sock, err),
      error: (sock, err) => this.#onError(sock, err),
    };
    // With a handshake handler Bun calls `open` at accept rather than after the handshake, so
    // the first-line timer also bounds a client that never finishes its TLS handshake.
    if (this.#config.tls !== null) handlers.handshake = () => {};
    return handlers;
  }

  #onOpen(sock: Client, kind: Kind): void {
    const conn: RouterConn = {
      pipe: null,
      side: "a",
      kind,
      phase: "line",
      closed: false,
      parser: new FirstLineParser(this.#config.maxFirstLineBytes),
      timer: undefined,
      pubId: "",
      pending: null,
      clientEnded: false,
      unsent: null,
      countedIn: 0,
      countedOut: 0,
      refusedForFds: false,
    };
    sock.data = conn;
    this.#conns.add(sock);
    this.#tally.accepted[kind]++;
    this.#tally.open[kind]++;
    // In the descriptor reserve, by its own number or by the count in use: refused at once.
    if (overFdBudget(socketFd(sock))) return this.#refuseForFds(sock);
    sock.setNoDelay(true);
    conn.timer = setTimeout(() => this.#onFirstLineTimeout(sock), this.#config.firstLineTimeoutMs);
  }

  /** A client accepted into the descriptor reserve: a 503 at once, or just closed (protocol.ts). */
  #refuseForFds(sock: Client): void {
    const conn = sock.data;
    conn.parser = null;
    this.#fdRefusals.count({ kind: conn.kind });
    if (this.#config.tls !== null || this.#lingeringRefusals >= MAX_LINGERING_REFUSALS || !canAffordAnswer()) {
      this.#tally.error("out_of_fds");
      sock.terminate();
      return;
    }
    conn.refusedForFds = true;
    this.#lingeringRefusals++;
    this.#reject(sock, "out_of_fds", OUT_OF_FDS_MESSAGE, REFUSAL_LINGER_MS);
  }

  #onData(sock: Client, chunk: Uint8Array): void {
    const conn = sock.data;
    switch (conn.phase) {
      case "piping":
        conn.pipe?.onData("a", chunk);
        return;
      case "line": {
        const result = conn.parser?.push(chunk) ?? { state: "more" };
        if (result.state === "more") return;
        clearTimeout(conn.timer);
        conn.parser = null;
        if (result.state === "error") return this.#reject(sock, result.error, result.message);
        if (result.state === "health") return this.#answer(sock, healthResponse(result.check, !this.#draining), ERROR_LINGER_MS);
        conn.phase = "dialing";
        conn.pubId = result.pubId;
        sock.pause();
        void this.#dial(sock, result.forward);
        return;
      }
      case "dialing":
        // Bun may deliver what it had already read after pause(); keep it for the target.
        (conn.pending ??= []).push(new Uint8Array(chunk));
        return;
      case "rejecting":
        // Discarded: the client is being turned away. A refusal for descriptors closes as soon
        // as its answer is out and what the client sent is read (no unread bytes: a FIN, not a
        // reset that would eat the answer), to free its descriptor before the linger ends.
        if (conn.refusedForFds && conn.unsent === null) sock.end();
        return;
    }
  }

  #onDrain(sock: Client): void {
    const conn = sock.data;
    if (conn.phase === "piping") conn.pipe?.onDrain("a");
    else if (conn.phase === "rejecting") this.#flushUnsent(sock);
  }

  #onEnd(sock: Client): void {
    const conn = sock.data;
    switch (conn.phase) {
      case "piping":
        conn.pipe?.onEnd("a");
        return;
      case "dialing":
        conn.clientEnded = true;
        return;
      case "line":
        if ((conn.parser?.buffered ?? 0) === 0) {
          clearTimeout(conn.timer);
          sock.end();
          return;
        }
        return this.#reject(sock, "bad_request_line", "the client half-closed the connection before the first line ended");
      case "rejecting":
        if (conn.unsent === null) sock.end();
        return;
    }
  }

  #onClose(sock: Client, err?: Error): void {
    const conn = sock.data as RouterConn | undefined;
    if (conn === undefined || conn.closed) return;
    conn.closed = true;
    clearTimeout(conn.timer);
    this.#conns.delete(sock);
    if (conn.refusedForFds) this.#lingeringRefusals--;
    // Handed over: the socket Bun closed is a second descriptor; the connection lives on.
    if (conn.phase === "spliced" || conn.phase === "handed") return;
    if (conn.phase === "piping") conn.pipe?.onClose("a", err);
    conn.parser = null;
    conn.pending = null;
    this.#tally.open[conn.kind]--;
    this.#checkIdle();
  }

  #onError(sock: Client, err: Error): void {
    // Bun's error event: a handler threw (a bug) or the TLS session failed. Drop this client.
    const conn = sock.data as RouterConn | undefined;
    this.#log.debug("client connection failed", { kind: conn?.kind, pub_id: conn?.pubId || undefined, err });
    if (conn?.pipe) conn.pipe.destroy(err);
    else sock.terminate();
  }

  #onFirstLineTimeout(sock: Client): void {
    const conn = sock.data;
    if (conn.phase !== "line" || conn.closed) return;
    conn.parser = null;
    this.#reject(
      sock,
      "first_line_timeout",
      `no complete first line within ${this.#config.firstLineTimeoutMs} ms; send "GET /pub/<pub_id> HTTP/1.1" or "STOA1 <pub_id>\\n" right after connecting`,
    );
  }

  async #dial(sock: Client, forward: Uint8Array): Promise<void> {
    const conn = sock.data;
    const { kind, pubId } = conn;
    // Half the reserve stays for accepting (and refusing) and for the rest of the process; the
    // connects in flight count as taken (a burst of first lines would otherwise all pass at once
    // and overshoot into what the metaserver beside us keeps for itself).
    if (fdPressure(Math.ceil(fdReserve() / 2) + this.#dialing)) {
      this.#fdRefusals.count({ kind });
      return this.#reject(sock, "out_of_fds", OUT_OF_FDS_MESSAGE, REFUSAL_LINGER_MS);
    }
    try {
      const resolved = this.#routes.resolve(kind, pubId, this.#config.runDir);
      if (resolved.source === "convention") {
        // Only a publisher's own socket is routed (routes.ts); anything else is nobody: 404, not down.
        const problem = conventionalTargetProblem(this.#config.runDir, pubId, kind);
        if (problem !== null) {
          if (this.#log.enabled("debug")) this.#log.debug("not a publisher socket", { kind, pub_id: pubId, problem });
          return this.#reject(sock, "unknown_pub_id", `no publisher "${pubId}" with a ${kind} endpoint on this host`);
        }
        if (this.#handOff(sock, forward)) return;
      }
      const started = performance.now();
      let upstream: Socket<PipeEnd>;
      try {
        this.#dialing++;
        try {
          upstream = await this.#connect(resolved.target);
        } finally {
          this.#dialing--;
        }
      } catch (err) {
        if (conn.closed) return;
        const code = errnoCode(err);
        // Our own EMFILE (Bun calls it ECONNREFUSED): not the target's fault, so not marked down.
        if (isFdExhaustion(code)) {
          this.#fdRefusals.count({ kind });
          return this.#reject(sock, "out_of_fds", OUT_OF_FDS_MESSAGE, REFUSAL_LINGER_MS);
        }
        if (resolved.source === "convention" && (code === "ENOENT" || code === "ENOTDIR")) {
          return this.#reject(sock, "unknown_pub_id", `no publisher "${pubId}" with a ${kind} endpoint on this host`);
        }
        const why = code || describeError(err);
        this.#health.report(kind, pubId, "down", why);
        return this.#reject(
          sock,
          "target_down",
          `publisher "${pubId}" did not accept the ${kind} connection (${why}); it may have stopped or be restarting`,
        );
      }
      this.#tally.connected(kind, pubId, (performance.now() - started) / 1000);
      this.#health.report(kind, pubId, "up", null);
      if (conn.closed) {
        upstream.terminate();
        return;
      }
      // Nagle is a TCP matter: on a Unix socket the option only costs a failing syscall.
      if (resolved.target.kind === "tcp") upstream.setNoDelay(true);
      const pending = conn.pending;
      conn.pending = null;
      const initial = pending === null ? forward : concat(forward, pending);
      if (this.#splice(sock, upstream, initial)) {
        if (this.#log.enabled("debug")) {
          this.#log.debug("routed", { kind, pub_id: pubId, peer: sock.remoteAddress, target: describeTarget(resolved.target), data_path: "epoll" });
        }
        return;
      }
      conn.phase = "piping";
      const pipe = new Pipe(sock, upstream, {
        initial,
        // Both sockets' chunks come straight from Bun's data events (see PipeOptions).
        freshChunks: true,
      });
      if (conn.clientEnded) pipe.onEnd("a");
      void pipe.done.then(() => this.#countBytes(conn));
      if (this.#log.enabled("debug")) {
        this.#log.debug("routed", { kind, pub_id: pubId, peer: sock.remoteAddress, target: describeTarget(resolved.target) });
      }
    } catch (err) {
      // Only a bug gets here; it costs this connection, never the gateway.
      this.#log.error("routing failed unexpectedly", { kind, pub_id: pubId, err });
      sock.terminate();
    }
  }

  /**
   * Gives the client's connection to the publisher when it takes hand-offs (handoff.ts); false
   * (nothing changed) when it does not, or cannot now: the caller routes it as before. Runs
   * before the first await of `#dial`, so nothing arrived after `forward`.
   */
  #handOff(sock: Client, forward: Uint8Array): boolean {
    const conn = sock.data;
    if (!this.#config.handoff || this.#config.tls !== null || conn.pending !== null) return false;
    if (forward.byteLength > MAX_HANDOFF_PREFIX_BYTES) return false;
    const { pubId, kind } = conn;
    if (handoffTargetProblem(this.#config.runDir, pubId) !== null) return false;
    const path = publisherHandoffPath(this.#config.runDir, pubId);
    const link = connectHandoff(path);
    if (typeof link === "string") {
      if (this.#log.enabled("debug")) this.#log.debug("hand-off declined; proxying", { kind, pub_id: pubId, why: link });
      return false;
    }
    try {
      conn.phase = "handed"; // before takeSocketFd: Bun fires close() from inside it
      const fd = takeSocketFd(sock);
      if (fd < 0) {
        // No descriptor for the copy (EMFILE) and Bun still holds the client: route it as before.
        if (socketFd(sock) >= 0) {
          conn.phase = "dialing";
          return false;
        }
        this.#endHandoff(conn);
        return true;
      }
      const client = new OwnedFd(fd, "a handed-off client connection");
      const failed = sendHandoff(link, encodeHandoff({ kind, pubId, prefix: forward }), client);
      client.close();
      if (failed !== null) {
        // The publisher went away between connect and send: this connection is lost with it.
        this.#tally.handoffFailures++;
        this.#log.warn("hand-off failed; the client's connection is closed", { kind, pub_id: pubId, why: failed });
      } else {
        this.#tally.handedOff++;
        this.#tally.routedTo(kind, pubId);
        if (this.#log.enabled("debug")) this.#log.debug("routed", { kind, pub_id: pubId, data_path: "handoff" });
      }
      this.#endHandoff(conn);
      return true;
    } finally {
      link.close();
    }
  }

  #endHandoff(conn: RouterConn): void {
    this.#tally.open[conn.kind]--;
    this.#checkIdle();
  }

  /**
   * Hands both sockets to the splicer; false (nothing changed) when this connection must take
   * the Bun path: TLS, the "bun" data path, or a target that already sent or closed something
   * (rare; `Pipe` replays such early events faithfully).
   */
  #splice(sock: Client, upstream: Socket<PipeEnd>, initial: Uint8Array): boolean {
    if (this.#config.dataPath !== "epoll" || this.#config.tls !== null) return false;
    if (hasEarlyEvents(upstream)) return false;
    let splicer = this.#splicer;
    if (splicer === null) {
      try {
        splicer = new FdSplicer();
      } catch (err) {
        this.#log.warn("the epoll data path is unavailable; using Bun sockets", { err });
        this.#config.dataPath = "bun";
        return false;
      }
      this.#splicer = splicer;
    }
    const conn = sock.data;
    const clientEnded = conn.clientEnded;
    conn.phase = "spliced"; // before takeSocketFd: Bun fires close() from inside it
    const b = takeSocketFd(upstream);
    if (b < 0 && socketFd(upstream) >= 0) {
      // No descriptor for the copy (EMFILE), nothing taken yet: Bun's path needs none.
      conn.phase = "dialing";
      return false;
    }
    const a = b < 0 ? -1 : takeSocketFd(sock);
    if (a < 0 || b < 0) {
      // Cannot happen for open sockets; if it does, this connection is lost, not the router.
      if (b >= 0) libc().close(b);
      upstream.terminate();
      sock.terminate();
      this.#finishSpliced(conn, null);
      return true;
    }
    const { id, done } = splicer.splice(a, b, { tag: KIND_TAG[conn.kind], toB: initial, aEnded: clientEnded });
    this.#tally.spliced++;
    this.#spliced.set(id, conn);
    void done.then((stats) => {
      this.#spliced.delete(id);
      this.#finishSpliced(conn, stats);
    });
    return true;
  }

  #finishSpliced(conn: RouterConn, stats: PipeStats | null): void {
    this.#tally.open[conn.kind]--;
    if (stats?.error && this.#log.enabled("debug")) {
      this.#log.debug("connection ended with an error", { kind: conn.kind, pub_id: conn.pubId, err: stats.error });
    }
    this.#checkIdle();
  }

  /** Adds what the splicer moved since the last call to the tally. */
  #countSpliced(): void {
    const splicer = this.#splicer;
    if (splicer === null) return;
    for (const kind of KINDS) {
      const tag = KIND_TAG[kind];
      const t = splicer.totals(tag);
      this.#tally.bytesIn[kind] += t.aToB - (this.#splicedCounted.in[tag] ?? 0);
      this.#tally.bytesOut[kind] += t.bToA - (this.#splicedCounted.out[tag] ?? 0);
      this.#splicedCounted.in[tag] = t.aToB;
      this.#splicedCounted.out[tag] = t.bToA;
    }
  }

  #connect(target: Target): Promise<Socket<PipeEnd>> {
    const data: PipeEnd = { pipe: null, side: "b" };
    if (target.kind === "unix") {
      return Bun.connect<PipeEnd>({ unix: target.path, allowHalfOpen: true, data, socket: this.#upstream });
    }
    const attempt = Bun.connect<PipeEnd>({
      hostname: target.host,
      port: target.port,
      allowHalfOpen: true,
      data,
      socket: this.#upstream,
    });
    const ms = this.#config.connectTimeoutMs;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        attempt.then((s) => s.terminate(), () => {});
        reject(new StoaError("timeout", `no answer within ${ms} ms`));
      }, ms);
    });
    return Promise.race([attempt, timeout]).finally(() => clearTimeout(timer));
  }

  #reject(sock: Client, error: RouteError, message: string, lingerMs = ERROR_LINGER_MS): void {
    const conn = sock.data;
    this.#tally.error(error);
    if (this.#log.enabled("debug")) {
      this.#log.debug("rejected", { kind: conn.kind, peer: sock.remoteAddress, error, message });
    }
    this.#answer(sock, routeErrorResponse(error, message), lingerMs);
  }

  /** Writes `response`, then reads and discards until the client closes or `lingerMs` passes. */
  #answer(sock: Client, response: Uint8Array, lingerMs: number): void {
    const conn = sock.data;
    conn.phase = "rejecting";
    conn.pending = null;
    clearTimeout(conn.timer);
    conn.unsent = new Outbox(sock);
    this.#flushUnsent(sock, response);
    sock.resume(); // read and discard, so closing does not turn into a reset that eats the reply
    conn.timer = setTimeout(() => {
      if (conn.unsent !== null) sock.terminate();
      else sock.end();
    }, lingerMs);
  }

  /** Writes `answer`, or on drain what is left of it; once all of it is out, half-closes. */
  #flushUnsent(sock: Client, answer?: Uint8Array): void {
    const conn = sock.data;
    const unsent = conn.unsent;
    if (unsent === null || conn.closed) return;
    if (answer !== undefined) unsent.write(answer);
    else unsent.flush();
    if (unsent.queued > 0) return;
    conn.unsent = null;
    sock.shutdown();
  }

  #countBytes(conn: RouterConn): void {
    const pipe = conn.pipe;
    if (pipe === null) return;
    const stats = pipe.stats;
    this.#tally.bytesIn[conn.kind] += stats.bytesAtoB - conn.countedIn;
    this.#tally.bytesOut[conn.kind] += stats.bytesBtoA - conn.countedOut;
    conn.countedIn = stats.bytesAtoB;
    conn.countedOut = stats.bytesBtoA;
  }

  #checkIdle(): void {
    if (!this.#draining || this.#idleSent || this.#conns.size > 0 || this.#spliced.size > 0) return;
    this.#idleSent = true;
    queueMicrotask(() => this.#hooks.onIdle());
  }
}

/** The 503's message: what a client of an out-of-descriptors gateway reads. */
const OUT_OF_FDS_MESSAGE = "server out of file descriptors; try again shortly";

/** The splicer's counter slot per kind. */
const KIND_TAG: Record<Kind, number> = { service: 0, string: 1, ping: 2 };

function concat(first: Uint8Array, rest: Uint8Array[]): Uint8Array {
  let length = first.length;
  for (const r of rest) length += r.length;
  const out = new Uint8Array(length);
  out.set(first);
  let at = first.length;
  for (const r of rest) {
    out.set(r, at);
    at += r.length;
  }
  return out;
}


function describeTarget(target: Target): string {
  return target.kind === "unix" ? `unix:${target.path}` : `tcp:${target.host}:${target.port}`;
}

function bindError(err: unknown, hostname: string, port: number, kind: Kind): StoaError {
  return listenError(err, `${urlHost(hostname)}:${port} (${kind})`, { inUse: "stop its owner or choose other --ports", other: "check --listen and --ports" });
}
