/**
 * A running metaserver: the store, the API served by `Bun.serve`, and the sweeper that turns
 * silent publishers stale and then removes them. `stoa meta` and `stoa up` start it with
 * `startMeta` and stop it with `close()`.
 */
import type { Server } from "bun";
import { listenError } from "../core/errors.ts";
import { guardServer, outOfFdsResponse } from "../core/fdguard.ts";
import { fdReserve, RefusalLog } from "../core/fdlimit.ts";
import type { Logger } from "../core/log.ts";
import { metrics as sharedMetrics, type Registry } from "../core/metrics.ts";
import { createApi } from "./api.ts";
import { type AuthConfig, Authority, NO_AUTH } from "./auth.ts";
import { type Pinger, pingThroughGateway } from "./confirm.ts";
import {
  CONFIRM_TIMEOUT_MS,
  DEFAULT_DEREGISTER_AFTER_MS,
  DEFAULT_TTL_MS,
  MAX_BODY_BYTES,
  MetaApiError,
} from "./protocol.ts";
import { openStore, type StoreOptions, type StoreSpec } from "./store.ts";
import { urlHost } from "../core/endpoint.ts";

/** What a client gets while the metaserver is out of file descriptors. */
const OUT_OF_FDS_BODY = JSON.stringify({ error: "out_of_fds", message: "server out of file descriptors; try again shortly" });

/** How long `close()` lets requests in flight finish before cutting their connections. */
const CLOSE_GRACE_MS = 5_000;

/**
 * What a request's handlers may ask of its connection, only when they need it: the client's
 * address (`requestIP` costs a system call and an object, a fifth of a lookup's CPU: only
 * writes and authenticated reads ask), and lifting the idle timeout for a response that streams
 * (a watch: Bun's idle timeout counts from the request, not the last write).
 */
class Peer {
  readonly #server: Server<undefined>;
  readonly #request: Request;

  constructor(server: Server<undefined>, request: Request) {
    this.#server = server;
    this.#request = request;
  }

  ip(): string | undefined {
    return this.#server.requestIP(this.#request)?.address;
  }

  keepOpen(): void {
    this.#server.timeout(this.#request, 0);
  }
}

export interface MetaOptions {
  /** Where to listen; port 0 picks a free one (see `port` on the handle). */
  listen: { hostname: string; port: number };
  /** Where registrations are kept: SQLite (a file, created with its directory, or `:memory:`) or Redis. */
  store: StoreSpec;
  /** Store settings for tests (Redis key prefix and key grace). */
  storeOptions?: Pick<StoreOptions, "keyPrefix" | "keyGraceMs">;
  /** Heartbeat TTL (default 15 s). */
  ttlMs?: number;
  /** How long a stale registration is kept before removal (default 60 s). */
  deregisterAfterMs?: number;
  log: Logger;
  /** Confirmation: the ping timeout (default 3 s) and, for tests, the ping itself. */
  confirm?: { timeoutMs?: number; ping?: Pinger };
  /** How often TTLs are applied (default a fifth of the TTL, between 50 ms and 1 s). */
  sweepIntervalMs?: number;
  /** Most registrations held (default `MAX_PUBLISHERS`). */
  maxPublishers?: number;
  /** Quotas and pending expiry other than protocol.ts's, for tests. */
  quotas?: StoreOptions["quotas"];
  pendingExpiryMs?: number;
  /** Who may write and read (auth.ts's `loadAuth`); default `NO_AUTH`, as with --no-auth. */
  auth?: AuthConfig;
  /** Where metrics go (default the process's shared registry). */
  metrics?: Registry;
}

export interface MetaServer {
  /** Base URL for clients, e.g. `http://[::1]:8090`; an unspecified listen address becomes loopback. */
  readonly url: string;
  readonly hostname: string;
  readonly port: number;
  /** The store as shown in logs: `sqlite:PATH` or the Redis URL without its password. */
  readonly store: string;
  /** Stops accepting, ends confirmations in flight, lets requests finish, closes the database. */
  close(): Promise<void>;
  /** Replaces the writer tokens (digests, hex) for the next requests: SIGHUP re-reads `--tokens-file`. */
  setWriters(writers: readonly string[]): void;
}

/**
 * Opens the store and serves the API. Rejects with `StoaError` ("in_use", "io", "config") when the store or the port cannot be had.
 *
 * @example
 * ```ts
 * const meta = await startMeta({ listen: { hostname: "::", port: 8090 }, store: { kind: "sqlite", path: "/var/lib/stoa/meta.db" }, log });
 * console.log(`metaserver on ${meta.url}`);
 * onShutdown("meta", () => meta.close());
 * ```
 */
export async function startMeta(options: MetaOptions): Promise<MetaServer> {
  const ttlMs = options.ttlMs ?? DEFAULT_TTL_MS;
  const deregisterAfterMs = options.deregisterAfterMs ?? DEFAULT_DEREGISTER_AFTER_MS;
  const confirmTimeoutMs = options.confirm?.timeoutMs ?? CONFIRM_TIMEOUT_MS;
  const registry = options.metrics ?? sharedMetrics;
  const log = options.log;
  const auth = new Authority(options.auth ?? NO_AUTH);
  const store = await openStore(options.store, {
    ...options.storeOptions,
    retainMs: ttlMs + deregisterAfterMs,
    log,
    maxPublishers: options.maxPublishers,
    quotas: options.quotas,
    pendingExpiryMs: options.pendingExpiryMs,
    adminOwner: auth.adminOwner,
  });
  const shutdown = new AbortController();
  const app = createApi({
    auth,
    store,
    log,
    metrics: registry,
    ttlMs,
    deregisterAfterMs,
    confirmTimeoutMs,
    ping: options.confirm?.ping ?? pingThroughGateway,
    shutdown: shutdown.signal,
  });

  const serve = (port: number) =>
    Bun.serve({
      hostname: options.listen.hostname,
      port,
      fetch: (req, srv) => app.fetch(req, new Peer(srv, req)),
      // Our reader answers 413 with a JSON body up to MAX_BODY_BYTES; this is Bun's backstop.
      maxRequestBodySize: MAX_BODY_BYTES * 16,
      // A confirmation may take the whole ping timeout; the connection must outlive it.
      idleTimeout: Math.min(255, Math.max(10, Math.ceil(confirmTimeoutMs / 1000) + 5)),
    });
  const fdRefusals = new RefusalLog(log, "out of file descriptors: answering new connections 503");
  let server: ReturnType<typeof Bun.serve>;
  try {
    server = serve(options.listen.port);
  } catch (err) {
    await store.close();
    throw listenError(err, `${urlHost(options.listen.hostname)}:${options.listen.port}`, {
      inUse: "another stoa meta or stoa up? pick another with --listen",
    });
  }
  const port = server.port ?? options.listen.port;
  // Near the descriptor limit Bun.serve would spin in accept: a refuser takes the port meanwhile,
  // and the connections it held are closed (they are short requests, or a flood's idle ones).
  // From an eighth of the reserve on: in `stoa up` the gateway beside it refuses new clients
  // from the reserve on, connects to publishers into its first half and answers its refusals
  // (503 out_of_fds) until a quarter is left (canAffordAnswer) — so the gateway alone never
  // takes the descriptors where the metaserver would pause, and the registry goes on answering.
  // (At a quarter, as before, a flood's refusals reached it: fd-exhaustion.test.ts saw 503.)
  const fdGuard = guardServer({
    what: "metaserver",
    log,
    hostname: options.listen.hostname,
    port,
    response: outOfFdsResponse("application/json; charset=utf-8", OUT_OF_FDS_BODY),
    onRefused: () => fdRefusals.count(),
    margin: Math.floor(fdReserve() / 8),
    pause: () => void server.stop(true),
    resume: () => {
      server = serve(port);
    },
  });

  const expired = registry.counter("stoa_meta_expired_total", "Registrations that missed their TTL, by what happened.", ["to"]);
  const sweepEvery = options.sweepIntervalMs ?? Math.min(1_000, Math.max(50, Math.floor(ttlMs / 5)));
  // One sweep at a time (a slow store must not pile them up); a store that cannot be reached is
  // logged once when it goes and once when it is back.
  let sweeping = false;
  let storeDown: string | null = null;
  const sweeper = setInterval(async () => {
    if (sweeping) return;
    sweeping = true;
    try {
      const { staled, removed, expired: unconfirmed } = await store.sweep(ttlMs, deregisterAfterMs);
      if (storeDown !== null) log.info("the store answers again", { store: store.description });
      storeDown = null;
      for (const info of unconfirmed) log.info("removed: never confirmed", { publisher: info.name, pub_id: info.pub_id });
      if (unconfirmed.length > 0) expired.inc({ to: "unconfirmed" }, unconfirmed.length);
      for (const info of staled) log.info("stale: no heartbeat within the TTL", { publisher: info.name, pub_id: info.pub_id });
      for (const info of removed) log.info("removed: stale for too long", { publisher: info.name, pub_id: info.pub_id });
      if (staled.length > 0) expired.inc({ to: "stale" }, staled.length);
      if (removed.length > 0) expired.inc({ to: "removed" }, removed.length);
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      if (err instanceof MetaApiError && err.error === "store_unavailable") {
        if (storeDown === null) log.warn("sweep: the store cannot be reached; retrying", { store: store.description, error: why });
        storeDown = why;
      } else {
        log.error("sweep failed", { error: err });
      }
    } finally {
      sweeping = false;
    }
  }, sweepEvery);
  sweeper.unref();

  const hostname = options.listen.hostname;
  const shown = hostname === "::" ? "::1" : hostname === "0.0.0.0" ? "127.0.0.1" : hostname;
  let closing: Promise<void> | null = null;
  return {
    url: `http://${urlHost(shown)}:${port}`,
    hostname,
    port,
    store: store.description,
    setWriters: (writers) => auth.setWriters(writers),
    close() {
      closing ??= (async () => {
        clearInterval(sweeper);
        fdGuard.stop();
        fdRefusals.stop();
        shutdown.abort();
        const graceful = server.stop(false);
        const timer = new Promise<"late">((r) => setTimeout(() => r("late"), CLOSE_GRACE_MS).unref());
        if ((await Promise.race([graceful.then(() => "done" as const), timer])) === "late") await server.stop(true);
        while (sweeping) await Bun.sleep(5);
        await store.close();
      })();
      return closing;
    },
  };
}
