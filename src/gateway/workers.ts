/**
 * The routers of one gateway, behind one interface whether they run on the main thread or in a
 * Bun Worker (the design is in protocol.ts, "Workers").
 *
 * Main ↔ worker messages (structured clones; both ends are this file's code, so they are typed
 * rather than validated):
 *   → start {config, routes, logLevel}      ← ready | failed {code, message}
 *   → routes {id, update}                    ← reply {id}          (after applying it)
 *   → snapshot {id}                          ← reply {id, snapshot}
 *   → stop {id}                              ← reply {id}, later idle (no connection left)
 *   → terminate {id}                         ← reply {id, cut}
 *   → close {id}                             ← reply {id}   (connections cut, splicer stopped)
 *   → tls {id, tls}                          ← reply {id, error?}  (new connections get it)
 *   → logLevel {id, level}                   ← reply {id}
 *                                            ← health {event} | log {level, msg, fields}
 */
import type { ErrorCode } from "../core/errors.ts";
import { StoaError } from "../core/errors.ts";
import { workerEntry } from "../core/worker-entry.ts";
import type { LogFields, Logger, LogLevel } from "../core/log.ts";
import type { HealthEvent } from "./health.ts";
import type { Registration } from "./protocol.ts";
import { Router, type RouterConfig } from "./router.ts";
import type { RouteTable, RouteUpdate } from "./routes.ts";
import type { RouterSnapshot } from "./stats.ts";

/** How long a worker may take to start (load modules, bind) or to answer a request. */
const WORKER_REPLY_TIMEOUT_MS = 10_000;

export type ToWorker =
  | { type: "start"; config: RouterConfig; routes: Registration[]; logLevel: LogLevel }
  | { type: "routes"; id: number; update: RouteUpdate }
  | { type: "snapshot"; id: number }
  | { type: "stop"; id: number }
  | { type: "terminate"; id: number }
  | { type: "close"; id: number }
  | { type: "tls"; id: number; tls: { cert: string; key: string } }
  | { type: "logLevel"; id: number; level: LogLevel };

export type FromWorker =
  | { type: "ready" }
  | { type: "failed"; code: ErrorCode; message: string }
  | { type: "reply"; id: number; snapshot?: RouterSnapshot; cut?: number; error?: { code: ErrorCode; message: string } }
  | { type: "health"; event: HealthEvent }
  | { type: "idle" }
  | { type: "log"; level: LogLevel; msg: string; fields: LogFields };

/** What the main thread needs from each router. */
export interface RouterPort {
  readonly id: number;
  /** Applies a route change (a no-op for router 0, which shares the main table). */
  update(update: RouteUpdate): Promise<void>;
  snapshot(): Promise<RouterSnapshot | null>;
  stopAccepting(): Promise<void>;
  /** Resolves once stopped and without connections. */
  readonly idle: Promise<void>;
  /** Cuts every connection; resolves with how many there were. */
  terminateAll(): Promise<number>;
  /** New connections get this PEM pair (Router.reloadTls); rejects, changing nothing, on failure. */
  reloadTls(tls: { cert: string; key: string }): Promise<void>;
  /** The level below which the router's log entries are dropped (router 0: the main logger's). */
  setLogLevel(level: LogLevel): Promise<void>;
  dispose(): Promise<void>;
}

interface PortHooks {
  log: Logger;
  onHealth(event: HealthEvent): void;
}

/** Router 0, on the main thread, sharing the main route table. */
export function localRouter(config: RouterConfig, routes: RouteTable, hooks: PortHooks): RouterPort {
  const idle = Promise.withResolvers<void>();
  const router = new Router(config, routes, { log: hooks.log, onHealth: hooks.onHealth, onIdle: () => idle.resolve() });
  router.start();
  return {
    id: config.router,
    update: async () => {},
    snapshot: async () => router.snapshot(),
    stopAccepting: async () => router.stopAccepting(),
    idle: idle.promise,
    terminateAll: async () => router.terminateAll(),
    reloadTls: async (tls) => router.reloadTls(tls),
    setLogLevel: async () => {}, // the main thread's logger, reconfigured by its owner
    dispose: () => router.close(),
  };
}

function gatewayWorkerEntry(): string {
  return workerEntry(new URL("./worker.ts", import.meta.url), "gateway/worker.js", "run the gateway with --workers 1");
}

type ReplyOf = Extract<FromWorker, { type: "reply" }>;

/** Starts a router in a new Worker; resolves once it listens. */
export async function workerRouter(config: RouterConfig, routes: Registration[], hooks: PortHooks): Promise<RouterPort> {
  const worker = new Worker(gatewayWorkerEntry());
  const log = hooks.log.child({ router: config.router });
  const idle = Promise.withResolvers<void>();
  const ready = Promise.withResolvers<void>();
  const pending = new Map<number, { resolve: (r: ReplyOf) => void; reject: (e: Error) => void }>();
  let nextId = 1;
  let alive = true;

  const died = (why: string): void => {
    if (!alive) return;
    alive = false;
    const error = new StoaError("closed", `gateway worker ${config.router} stopped: ${why}`);
    ready.reject(error);
    for (const p of pending.values()) p.reject(error);
    pending.clear();
    idle.resolve();
  };

  worker.addEventListener("message", (event: MessageEvent<FromWorker>) => {
    const msg = event.data;
    switch (msg.type) {
      case "ready":
        ready.resolve();
        return;
      case "failed":
        ready.reject(new StoaError(msg.code, msg.message));
        return;
      case "reply":
        if (msg.error !== undefined) pending.get(msg.id)?.reject(new StoaError(msg.error.code, msg.error.message));
        else pending.get(msg.id)?.resolve(msg);
        pending.delete(msg.id);
        return;
      case "health":
        hooks.onHealth(msg.event);
        return;
      case "idle":
        idle.resolve();
        return;
      case "log":
        log[msg.level](msg.msg, msg.fields);
        return;
    }
  });
  worker.addEventListener("error", (event) => {
    const message = event instanceof ErrorEvent ? event.message : "unknown error";
    if (alive) log.error("gateway worker failed; its connections are lost", { err: message });
    died(message);
  });
  worker.addEventListener("close", () => died("exited"));

  type Request =
    | { type: "routes"; update: RouteUpdate }
    | { type: "tls"; tls: { cert: string; key: string } }
    | { type: "logLevel"; level: LogLevel }
    | { type: "snapshot" | "stop" | "terminate" | "close" };
  const request = (msg: Request): Promise<ReplyOf> => {
    if (!alive) return Promise.reject(new StoaError("closed", `gateway worker ${config.router} is gone`));
    const id = nextId++;
    const reply = new Promise<ReplyOf>((resolve, reject) => pending.set(id, { resolve, reject }));
    worker.postMessage({ ...msg, id } satisfies ToWorker);
    return withTimeout(reply, `gateway worker ${config.router} did not answer ${msg.type}`);
  };

  worker.postMessage({ type: "start", config, routes, logLevel: hooks.log.level } satisfies ToWorker);
  try {
    await withTimeout(ready.promise, `gateway worker ${config.router} did not start`);
  } catch (err) {
    alive = false;
    worker.terminate();
    if (err instanceof StoaError) throw err;
    throw new StoaError("internal", `gateway worker ${config.router} failed to start: ${String(err)}`);
  }

  return {
    id: config.router,
    update: async (update) => {
      if (alive) await request({ type: "routes", update });
    },
    snapshot: async () => (alive ? ((await request({ type: "snapshot" })).snapshot ?? null) : null),
    stopAccepting: async () => {
      if (alive) await request({ type: "stop" });
    },
    idle: idle.promise,
    terminateAll: async () => (alive ? ((await request({ type: "terminate" })).cut ?? 0) : 0),
    reloadTls: async (tls) => {
      if (alive) await request({ type: "tls", tls });
    },
    setLogLevel: async (level) => {
      if (alive) await request({ type: "logLevel", level });
    },
    dispose: async () => {
      // Let the router stop its splicer thread; a worker that does not answer is cut anyway.
      if (alive) await request({ type: "close" }).catch(() => {});
      alive = false;
      worker.terminate();
      idle.resolve();
    },
  };
}

function withTimeout<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StoaError("timeout", `${what} within ${WORKER_REPLY_TIMEOUT_MS} ms`)), WORKER_REPLY_TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
