/**
 * One JSON-RPC 1.0 session with ovsdb-server over its Unix socket (RFC 7047 §4), the machinery
 * under the OVSDB client (ovsdb.ts): one persistent connection, request ids and deadlines,
 * `echo` answered, reconnect with backoff, monitors set up again after a reconnect.
 *
 * - Requests carry numeric ids; each has a timeout (`timeoutMs`, default
 *   `OVSDB_REQUEST_TIMEOUT_MS`) that covers waiting for a connection too: a request made while
 *   the session reconnects is sent once it is connected, or fails at its deadline saying
 *   ovsdb-server is unreachable and why.
 * - ovsdb-server's `echo` requests (its inactivity probe) are answered at once.
 * - A lost connection fails every request already sent (ovsdb-server may or may not have run
 *   it: the caller decides whether to try again), then the session reconnects with jittered
 *   exponential backoff (`RECONNECT_MIN_MS` to `RECONNECT_MAX_MS`) until `close()`. Each monitor
 *   is set up again on the new connection, and its `apply` gets the full current state.
 * - Bytes in are split into JSON texts by ovsdb-wire.ts's `JsonSplitter`; garbage closes the
 *   connection (and is a reconnect, like any other loss). Bytes out queue in a core `Outbox`.
 */
import type { Socket } from "bun";
import { describeError, errnoCode } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { Outbox } from "../core/outbox.ts";
import { JsonSplitter, OvsdbError, RpcReply, RpcRequest } from "./ovsdb-wire.ts";

/** A request's deadline; ovsdb-server answers a transact on a few thousand rows in milliseconds. */
const OVSDB_REQUEST_TIMEOUT_MS = 10_000;
/** Reconnect backoff: first retry after this, doubling (±20 % jitter) up to RECONNECT_MAX_MS. */
const RECONNECT_MIN_MS = 100;
const RECONNECT_MAX_MS = 5_000;
/** Bytes of requests ovsdb-server has not read yet before the connection is given up as stuck. */
const MAX_QUEUED_BYTES = 64 * 1024 * 1024;

export interface SessionOptions {
  timeoutMs?: number;
  log?: Logger;
}

interface Pending {
  method: string;
  /** The request's text; dropped once written. */
  text: string | null;
  resolve(result: unknown): void;
  reject(err: Error): void;
  timer: Timer;
}

interface Monitor {
  /** The monitor's params (RFC 7047 §4.1.5): database, monitor id, requests. */
  params: [string, string, object];
  /** Applies table updates: the whole state when `initial` (the monitor reply), else a change. */
  apply(updates: unknown, initial: boolean): void;
}

export class OvsdbSession {
  /** ovsdb-server's socket. */
  readonly path: string;
  readonly #timeoutMs: number;
  readonly #log: Logger | undefined;
  #socket: Socket | null = null;
  #outbox: Outbox | null = null;
  #connecting = false;
  #closed = false;
  #lastError = "not connected yet";
  #backoffMs = RECONNECT_MIN_MS;
  #retry: Timer | null = null;
  #nextId = 1;
  readonly #pending = new Map<number, Pending>();
  readonly #monitors = new Map<string, Monitor>();
  #nextMonitor = 1;

  private constructor(path: string, opts: SessionOptions) {
    this.path = path;
    this.#timeoutMs = opts.timeoutMs ?? OVSDB_REQUEST_TIMEOUT_MS;
    this.#log = opts.log;
  }

  /** Connects to the socket at `path`; only this first connection's failure is thrown (an OvsdbError saying ovsdb-server is not running there). */
  static async open(path: string, opts: SessionOptions = {}): Promise<OvsdbSession> {
    const session = new OvsdbSession(path, opts);
    await session.#dial(true);
    return session;
  }

  /** Sends one JSON-RPC request and resolves with its result; an error reply rejects with an OvsdbError. */
  request(method: string, params: unknown[]): Promise<unknown> {
    if (this.#closed) return Promise.reject(new OvsdbError(`the OVSDB client for ${this.path} is closed`, { code: "closed" }));
    const id = this.#nextId++;
    const { promise, resolve, reject } = Promise.withResolvers<unknown>();
    const timer = setTimeout(() => {
      this.#pending.delete(id);
      reject(this.#timeoutError(method, entry.text === null));
    }, this.#timeoutMs);
    const entry: Pending = { method, text: JSON.stringify({ method, params, id }), resolve, reject, timer };
    this.#pending.set(id, entry);
    if (this.#socket !== null) this.#write(entry);
    return promise;
  }

  /**
   * Starts a `monitor` (RFC 7047 §4.1.5) of `database` for `requests`, named after `name`:
   * `apply` gets the initial state (`initial` true) before this resolves, each `update` after,
   * and the full state again after every reconnect. Returns the cancel.
   */
  async monitor(database: string, name: string, requests: object, apply: Monitor["apply"]): Promise<() => void> {
    const id = `${name}-${this.#nextMonitor++}`;
    const monitor: Monitor = { params: [database, id, requests], apply };
    this.#monitors.set(id, monitor);
    try {
      await this.#startMonitor(id, monitor);
    } catch (err) {
      this.#monitors.delete(id);
      throw err;
    }
    return () => {
      if (!this.#monitors.delete(id) || this.#socket === null) return;
      this.request("monitor_cancel", [id]).catch((err: unknown) => this.#log?.debug("ovsdb monitor_cancel failed", { err: describeError(err) }));
    };
  }

  /** Closes the connection and stops reconnecting; what is pending fails. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#retry !== null) clearTimeout(this.#retry);
    this.#monitors.clear();
    this.#failPending(() => new OvsdbError(`the OVSDB client for ${this.path} was closed`, { code: "closed" }), true);
    this.#socket?.end();
    this.#drop();
  }

  async #startMonitor(id: string, monitor: Monitor): Promise<void> {
    const initial = await this.request("monitor", monitor.params);
    if (this.#monitors.get(id) === monitor) monitor.apply(initial, true);
  }

  async #dial(first: boolean): Promise<void> {
    this.#connecting = true;
    const splitter = new JsonSplitter();
    try {
      await Bun.connect({
        unix: this.path,
        socket: {
          // Adopted in `open`, before the promise resolves: nothing the server sends first is missed.
          open: (sock) => this.#adopt(sock, first),
          data: (sock, chunk) => {
            if (sock !== this.#socket) return;
            try {
              splitter.push(chunk, (message) => this.#handle(sock, message));
            } catch (err) {
              this.#lost(sock, describeError(err));
              sock.terminate();
            }
          },
          drain: (sock) => {
            if (sock === this.#socket) this.#outbox?.flush();
          },
          close: (sock, err) => this.#lost(sock, err === undefined ? "ovsdb-server closed the connection" : describeError(err)),
          error: (sock, err) => this.#lost(sock, describeError(err)),
        },
      });
    } catch (err) {
      this.#connecting = false;
      this.#lastError = connectFailure(this.path, err);
      if (first) throw new OvsdbError(this.#lastError, { code: "closed", cause: err });
      this.#scheduleReconnect();
    }
  }

  /** A new connection: send what waited for it, set the monitors up again. */
  #adopt(sock: Socket, first: boolean): void {
    this.#connecting = false;
    if (this.#closed) {
      sock.end();
      return;
    }
    this.#socket = sock;
    this.#outbox = new Outbox(sock, { maxQueuedBytes: MAX_QUEUED_BYTES });
    this.#backoffMs = RECONNECT_MIN_MS;
    if (!first) this.#log?.info("ovsdb reconnected", { path: this.path });
    for (const entry of this.#pending.values()) this.#write(entry);
    for (const [id, monitor] of this.#monitors) {
      this.#startMonitor(id, monitor).catch((err: unknown) => this.#log?.warn("ovsdb monitor not set up again", { path: this.path, err: describeError(err) }));
    }
  }

  #write(entry: Pending): void {
    const { text } = entry;
    if (text === null || this.#outbox === null || this.#socket === null) return;
    entry.text = null;
    if (!this.#outbox.write(new TextEncoder().encode(text))) {
      this.#lost(this.#socket, `ovsdb-server stopped reading: over ${MAX_QUEUED_BYTES} bytes of requests wait for it`);
      this.#socket.terminate();
    }
  }

  #handle(sock: Socket, message: unknown): void {
    const request = RpcRequest.safeParse(message);
    if (request.success) {
      const { method, params, id } = request.data;
      if (method === "echo") {
        this.#send(sock, { id, result: params, error: null });
        this.#log?.debug("ovsdb echo answered", { path: this.path });
      } else if (method === "update") {
        const [monitorId, updates] = params;
        try {
          if (typeof monitorId === "string") this.#monitors.get(monitorId)?.apply(updates, false);
        } catch (err) {
          // A bad update or a throwing callback costs that update, not the connection.
          this.#log?.error("ovsdb monitor update not applied", { path: this.path, monitor: monitorId, err: describeError(err) });
        }
      } else if (id !== null && id !== undefined) {
        this.#send(sock, { id, result: null, error: `unknown method ${method}` });
      }
      return;
    }
    const reply = RpcReply.safeParse(message);
    const id = reply.success ? reply.data.id : undefined;
    const entry = typeof id === "number" ? this.#pending.get(id) : undefined;
    if (!reply.success || entry === undefined || typeof id !== "number") {
      this.#log?.debug("ovsdb reply to no pending request", { path: this.path, id: String(id) });
      return;
    }
    this.#pending.delete(id);
    clearTimeout(entry.timer);
    if (reply.data.error === null) entry.resolve(reply.data.result);
    else entry.reject(new OvsdbError(`ovsdb-server at ${this.path} refused ${entry.method}: ${JSON.stringify(reply.data.error)}`));
  }

  #send(sock: Socket, message: object): void {
    if (sock === this.#socket) this.#outbox?.write(new TextEncoder().encode(JSON.stringify(message)));
  }

  /** The connection `sock` is gone (reported once, whichever event comes first). */
  #lost(sock: Socket, reason: string): void {
    if (sock !== this.#socket) return;
    this.#drop();
    this.#lastError = `lost the connection to ovsdb-server at ${this.path}: ${reason}`;
    if (this.#closed) return;
    this.#log?.warn("ovsdb connection lost; reconnecting", { path: this.path, reason });
    this.#failPending((method) => new OvsdbError(`${this.#lastError}, before it answered ${method}; it may or may not have been applied: read the state again and retry`, { code: "closed" }), false);
    this.#scheduleReconnect();
  }

  #drop(): void {
    this.#outbox?.clear();
    this.#outbox = null;
    this.#socket = null;
  }

  /** Rejects the requests already sent (and, with `all`, those still waiting to be). */
  #failPending(error: (method: string) => OvsdbError, all: boolean): void {
    for (const [id, entry] of this.#pending) {
      if (!all && entry.text !== null) continue;
      this.#pending.delete(id);
      clearTimeout(entry.timer);
      entry.reject(error(entry.method));
    }
  }

  #scheduleReconnect(): void {
    if (this.#closed || this.#connecting || this.#retry !== null) return;
    const delay = this.#backoffMs * (0.8 + Math.random() * 0.4);
    this.#backoffMs = Math.min(this.#backoffMs * 2, RECONNECT_MAX_MS);
    this.#retry = setTimeout(() => {
      this.#retry = null;
      void this.#dial(false);
    }, delay);
  }

  #timeoutError(method: string, sent: boolean): OvsdbError {
    if (sent) return new OvsdbError(`ovsdb-server at ${this.path} did not answer ${method} within ${this.#timeoutMs} ms`, { code: "timeout" });
    return new OvsdbError(`could not send ${method} within ${this.#timeoutMs} ms: ${this.#lastError}`, { code: "timeout" });
  }
}

/** What to tell a user whose connection to `path` failed. */
function connectFailure(path: string, err: unknown): string {
  const code = errnoCode(err);
  if (code === "EACCES" || code === "EPERM") return `cannot connect to ovsdb-server at ${path}: permission denied; run as root (or a user that may open the socket)`;
  const why = code === "" ? describeError(err) : code;
  return `ovsdb-server is not running at ${path} (${why}): install and start Open vSwitch (apt-get install openvswitch-switch; systemctl start openvswitch-switch), or point --ovsdb at its socket`;
}
