/**
 * `startGateway`: the gateway as a library — routers on the three ports, the control socket,
 * handover from a running gateway, drain and close. The CLI (`stoa gateway`, `stoa up`) is a
 * thin layer over this. Protocols and the restart sequence are in protocol.ts.
 *
 * States: serving → draining (stopped accepting; existing connections go on) → closed.
 * `closed` resolves once, with why: "handover" (a successor took over), "drain" (`drain()`,
 * e.g. on SIGTERM) or "close" (`close()`, everything cut at once).
 */
import { availableParallelism } from "node:os";
import { z } from "zod";
import { buildInfo } from "../core/buildinfo.ts";
import { StoaError, describeError } from "../core/errors.ts";
import { createLogger, type Logger, type LogLevel } from "../core/log.ts";
import { metrics as sharedRegistry, type Registry } from "../core/metrics.ts";
import { gatewayControlPath } from "../core/paths.ts";
import { controlRequest, type ControlServer, startControlServer } from "./control.ts";
import { choosePorts, findPrevious, longestServablePubId, warnOldLayout } from "./startup.ts";
import { loadTlsPair, type TlsPair } from "./tls.ts";
import { HealthTable } from "./health.ts";
import {
  CONNECT_TIMEOUT_MS,
  type ControlRequest,
  type ControlResponse,
  DEFAULT_DRAIN_TIMEOUT_MS,
  DEFAULT_LISTEN,
  DEFAULT_PORTS,
  FIRST_LINE_TIMEOUT_MS,
  HANDOVER_TIMEOUT_MS,
  KINDS,
  MAX_FIRST_LINE_BYTES,
  MAX_LIST_ENTRIES,
  MAX_REGISTRATIONS,
  MAX_WORKERS,
  parseTarget,
  formatTarget,
  type Ports,
  PortsSchema,
  type Registration,
  type ResponseFor,
  type RouteEntry,
} from "./protocol.ts";
import type { DataPath, RouterConfig } from "./router.ts";
import { type RouteUpdate, RouteTable, scanRunDir } from "./routes.ts";
import { SWEEP_INTERVAL_MS, sweepDeadPublishers } from "./sweep.ts";
import { GatewayMetrics, type GatewayStats } from "./stats.ts";
import { localRouter, type RouterPort, workerRouter } from "./workers.ts";
import type { ActivatedSockets } from "./activation.ts";

/** How often worker counters are folded into the Prometheus registry. */
const METRICS_COLLECT_MS = 1_000;

export interface GatewayOptions {
  /** Holds the control socket and the publishers' sockets (`<run_dir>/pub/<pub_id>/<kind>.sock`). */
  runDir: string;
  /** Addresses to listen on; default `["::"]` (dual-stack). Brackets are optional. */
  listen?: readonly string[];
  /** Ports per kind; default 8081/8082/8083. 0 picks a free port (read it from `ports`). */
  ports?: Partial<Ports>;
  /** Routers sharing each port (1 main thread + N-1 Workers); default one per core. */
  workers?: number;
  /** Bound on a drain before remaining connections are cut; default 30 s. */
  drainTimeoutMs?: number;
  /** Time a client has for its first line; default 5 s. */
  firstLineTimeoutMs?: number;
  /** Time a TCP target has to accept; default 5 s. */
  connectTimeoutMs?: number;
  /** PEM files: terminate TLS on the external ports. */
  tls?: { cert: string; key: string };
  /**
   * How routed bytes move: "epoll" (default) on raw fds in a splicer thread per router, "bun"
   * through Bun's sockets. TLS connections always use "bun". See router.ts.
   */
  dataPath?: DataPath;
  /**
   * Give plain-TCP connections to publishers that listen on handoff.sock (handoff.ts; default
   * true); false keeps the gateway in every connection's data path.
   */
  handoff?: boolean;
  /**
   * Socket activation: serve on these inherited sockets (gateway/activation.ts) instead of
   * binding `listen` × `ports`, which are then ignored.
   */
  activated?: ActivatedSockets;
  /** Take over from a gateway serving the same run dir (default true); false: fail instead. */
  takeOver?: boolean;
  log?: Logger;
  /** Where the gateway's metrics go; default the process-wide registry. */
  registry?: Registry;
}

interface GatewayClosed {
  reason: "handover" | "drain" | "close";
  /** Connections still open at the end, and cut. */
  cut: number;
}

export interface Gateway {
  /** The bound ports (resolved when 0 was asked for). */
  readonly ports: Ports;
  readonly listen: readonly string[];
  readonly runDir: string;
  readonly controlPath: string;
  /** Routers per port (main thread + workers). */
  readonly workers: number;
  readonly tls: boolean;
  /** The pid of the gateway this one took over from, or null. */
  readonly tookOverFrom: number | null;
  readonly state: "serving" | "draining" | "closed";
  /** Resolves once the gateway has stopped, whatever stopped it. */
  readonly closed: Promise<GatewayClosed>;
  /** Counters over all routers (also refreshes the Prometheus registry). */
  stats(): Promise<GatewayStats>;
  /** Explicit and conventional routes with their health, as the control socket's `list`. */
  list(): Promise<{ entries: RouteEntry[]; truncated: boolean }>;
  /** Stop accepting, release the control socket, let connections finish (bounded), stop. */
  drain(): Promise<GatewayClosed>;
  /** Stop now, cutting every connection. */
  close(): Promise<void>;
  /**
   * SIGHUP's TLS part: reads and checks the pair (the same files, or `paths`) once, then every
   * router serves new connections with it; established connections keep theirs. A bad pair
   * throws `StoaError("config")` and nothing changes. Resolves with the pair now served and
   * whether it changed. Throws `config` for a gateway started without TLS.
   */
  reloadTls(paths?: { cert: string; key: string }): Promise<{ changed: boolean; pair: TlsPair }>;
  /** Workers' log entries below `level` are dropped from now on (the main logger is the caller's). */
  setLogLevel(level: LogLevel): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

const Duration = z.number().int().min(1).max(7 * 24 * 3600 * 1000);
const Options = z.object({
  runDir: z.string().min(1),
  listen: z.array(z.string().min(1).max(255)).min(1).max(64).default([...DEFAULT_LISTEN]),
  ports: PortsSchema.partial().default({}),
  workers: z.number().int().min(1).max(MAX_WORKERS).optional(),
  drainTimeoutMs: Duration.default(DEFAULT_DRAIN_TIMEOUT_MS),
  firstLineTimeoutMs: Duration.default(FIRST_LINE_TIMEOUT_MS),
  connectTimeoutMs: Duration.default(CONNECT_TIMEOUT_MS),
  tls: z.object({ cert: z.string().min(1), key: z.string().min(1) }).optional(),
  takeOver: z.boolean().default(true),
  dataPath: z.enum(["epoll", "bun"]).default("epoll"),
  handoff: z.boolean().default(true),
});

/**
 * Starts a gateway: binds the three ports on every listen address (taking over from a gateway
 * already serving `runDir`, if any), starts the workers and serves the control socket.
 * Throws `StoaError`: "config" (options, TLS files), "in_use" (a port owned by another program,
 * or a gateway that cannot be taken over), "io".
 * @example
 * const gw = await startGateway({ runDir: "/run/stoa", ports: { service: 0, string: 0, ping: 0 } });
 * console.log(gw.ports);               // { service: 41234, string: 41235, ping: 41236 }
 * onShutdown("gateway", () => gw.drain().then(() => {}));
 * await gw.closed;                      // after a handover to a new gateway, or a drain
 */
export async function startGateway(options: GatewayOptions): Promise<Gateway> {
  const parsed = Options.safeParse(options); // log and registry are not data: zod strips them
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new StoaError("config", `invalid gateway option ${issue?.path.join(".") ?? ""}: ${issue?.message ?? "invalid"}`);
  }
  const o = parsed.data;
  const log = options.log ?? createLogger({ name: "gateway" });
  const activated = options.activated;
  const listen = activated?.listen ?? o.listen.map((a) => (a.startsWith("[") && a.endsWith("]") ? a.slice(1, -1) : a));
  const wanted: Ports = { ...DEFAULT_PORTS, ...o.ports };
  const tls = o.tls === undefined ? null : loadTlsPair(o.tls);
  const workers = o.workers ?? Math.max(1, Math.min(MAX_WORKERS, availableParallelism()));

  const servable = longestServablePubId(o.runDir);
  if (servable < 64) {
    log.warn("the run dir is so deep that long pub_ids cannot have sockets there; use a shorter --run-dir", {
      run_dir: o.runDir,
      longest_pub_id: servable,
    });
  }
  warnOldLayout(o.runDir, log);
  const previous = await findPrevious(o.runDir, o.takeOver);
  const runtime = new Runtime({
    runDir: o.runDir,
    listen,
    workers,
    drainTimeoutMs: o.drainTimeoutMs,
    tls: tls === null || o.tls === undefined ? null : { paths: o.tls, pair: tls },
    log,
    registry: options.registry ?? sharedRegistry,
  });
  if (previous !== null) runtime.preload(previous.explicit);
  const ports = activated?.ports ?? (await choosePorts(listen, wanted, previous?.info.ports ?? null));
  try {
    await runtime.startRouters({
      runDir: o.runDir,
      listen,
      ports,
      tls: tls === null ? null : { cert: tls.cert, key: tls.key },
      fds: activated?.fds ?? null,
      firstLineTimeoutMs: o.firstLineTimeoutMs,
      connectTimeoutMs: o.connectTimeoutMs,
      maxFirstLineBytes: MAX_FIRST_LINE_BYTES,
      dataPath: o.dataPath,
      handoff: o.handoff,
    });
    if (previous !== null) {
      const answer = await controlRequest(
        o.runDir,
        { type: "handover", pid: process.pid, version: buildInfo().version },
        { timeoutMs: HANDOVER_TIMEOUT_MS },
      );
      await runtime.adopt(answer.registrations, previous.info.pid);
    }
    await runtime.serveControl(previous !== null);
  } catch (err) {
    await runtime.close();
    throw err;
  }
  log.info("gateway listening", {
    listen: listen.join(","),
    ports: `${ports.service},${ports.string},${ports.ping}`,
    workers,
    tls: tls !== null,
    tls_sha256: tls?.fingerprint,
    tls_not_after: tls?.notAfter,
    run_dir: o.runDir,
    took_over_from: previous?.info.pid,
  });
  // Crashed publishers' pub/<pub_id>/ directories: reclaimed now and then while serving (sweep.ts).
  void sweepDeadPublishers(o.runDir, log);
  const sweeper = setInterval(() => void sweepDeadPublishers(o.runDir, log), SWEEP_INTERVAL_MS);
  sweeper.unref();
  void runtime.closed.then(() => clearInterval(sweeper));
  return runtime;
}

interface RuntimeSettings {
  runDir: string;
  listen: readonly string[];
  workers: number;
  drainTimeoutMs: number;
  /** The files and the pair served now (replaced by `reloadTls`). */
  tls: { paths: { cert: string; key: string }; pair: TlsPair } | null;
  log: Logger;
  registry: Registry;
}

class Runtime implements Gateway {
  readonly listen: readonly string[];
  readonly runDir: string;
  readonly controlPath: string;
  readonly workers: number;
  readonly tls: boolean;
  ports: Ports = { ...DEFAULT_PORTS };
  tookOverFrom: number | null = null;
  state: "serving" | "draining" | "closed" = "serving";
  readonly #settings: RuntimeSettings;
  readonly #log: Logger;
  readonly #routes = new RouteTable();
  readonly #health = new HealthTable();
  readonly #metrics: GatewayMetrics;
  readonly #startedAt = Date.now();
  readonly #closed = Promise.withResolvers<GatewayClosed>();
  #routers: RouterPort[] = [];
  #control: ControlServer | null = null;
  #collector: ReturnType<typeof setInterval> | undefined;
  #collecting: Promise<void> = Promise.resolve();
  #finished = false;
  #closing = false;

  constructor(settings: RuntimeSettings) {
    this.#settings = settings;
    this.#log = settings.log;
    this.listen = settings.listen;
    this.runDir = settings.runDir;
    this.controlPath = gatewayControlPath(settings.runDir);
    this.workers = settings.workers;
    this.tls = settings.tls !== null;
    this.#metrics = new GatewayMetrics(settings.registry);
  }

  get closed(): Promise<GatewayClosed> {
    return this.#closed.promise;
  }

  /** Routes known before listening: a predecessor's explicit registrations. */
  preload(entries: readonly RouteEntry[]): void {
    this.#routes.apply({ op: "replace", registrations: this.#valid(entries) });
  }

  async startRouters(base: Omit<RouterConfig, "router">): Promise<void> {
    this.ports = base.ports;
    const hooks = { log: this.#log, onHealth: (e: Parameters<HealthTable["record"]>[0]) => this.#health.record(e) };
    this.#routers.push(localRouter({ ...base, router: 0 }, this.#routes, hooks));
    const started = await Promise.allSettled(
      Array.from({ length: this.workers - 1 }, (_, i) => workerRouter({ ...base, router: i + 1 }, this.#routes.all(), hooks)),
    );
    let failure: unknown = null;
    for (const s of started) {
      if (s.status === "fulfilled") this.#routers.push(s.value);
      else failure ??= s.reason;
    }
    if (failure !== null) {
      const why = describeError(failure);
      throw failure instanceof StoaError && failure.code !== "internal" && failure.code !== "timeout"
        ? failure
        : new StoaError("internal", `${why}; a compiled stoa needs src/gateway/worker.ts as a build entrypoint, or use --workers 1`);
    }
    this.#collector = setInterval(() => void this.#collect(), METRICS_COLLECT_MS);
    this.#collector.unref();
  }

  /** After a handover: the predecessor's final registrations and their health. */
  async adopt(entries: readonly RouteEntry[], from: number): Promise<void> {
    await this.#update({ op: "replace", registrations: this.#valid(entries) });
    for (const e of entries) {
      if (e.health.state === "unknown") continue;
      const at = e.health.since === null ? Date.now() : Date.parse(e.health.since);
      this.#health.record({ kind: e.kind, pubId: e.pub_id, state: e.health.state, error: e.health.error, at: Number.isFinite(at) ? at : Date.now() });
    }
    this.tookOverFrom = from;
  }

  async serveControl(afterHandover: boolean): Promise<void> {
    // The predecessor unlinks its socket before answering `handover`; retry briefly anyway.
    for (let attempt = 0; ; attempt++) {
      try {
        this.#control = await startControlServer(this.controlPath, (req) => this.#handle(req), this.#log);
        return;
      } catch (err) {
        if (!afterHandover || attempt >= 20 || !(err instanceof StoaError) || err.code !== "in_use") throw err;
        await Bun.sleep(100);
      }
    }
  }

  async stats(): Promise<GatewayStats> {
    await this.#collect();
    return this.#metrics.stats();
  }

  async list(): Promise<{ entries: RouteEntry[]; truncated: boolean }> {
    const entries: RouteEntry[] = this.#routes
      .all()
      .slice(0, MAX_LIST_ENTRIES)
      .map((r) => ({ ...r, source: "explicit", health: this.#health.view(r.kind, r.pub_id) }));
    const scan = await scanRunDir(this.runDir, MAX_LIST_ENTRIES - entries.length);
    for (const c of scan.entries) {
      if (this.#routes.has(c.kind, c.pubId)) continue;
      entries.push({ pub_id: c.pubId, kind: c.kind, target: `unix:${c.path}`, source: "convention", health: this.#health.view(c.kind, c.pubId) });
    }
    return { entries, truncated: scan.truncated || this.#routes.size > MAX_LIST_ENTRIES };
  }

  async drain(): Promise<GatewayClosed> {
    if (this.state === "serving") {
      this.state = "draining";
      this.#log.info("draining", { drain_timeout_ms: this.#settings.drainTimeoutMs });
      await this.#stopAccepting();
      void this.#finishDrain("drain");
    }
    return this.closed;
  }

  async close(): Promise<void> {
    if (this.#finished) return;
    this.#closing = true;
    this.state = "draining";
    await this.#stopAccepting();
    const cut = await this.#terminateAll();
    await this.#finish("close", cut);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async reloadTls(paths?: { cert: string; key: string }): Promise<{ changed: boolean; pair: TlsPair }> {
    const current = this.#settings.tls;
    if (current === null) throw new StoaError("config", "this gateway serves without TLS; start it with --tls-cert and --tls-key to use them");
    const files = paths ?? current.paths;
    const pair = loadTlsPair(files); // throws on a bad pair: nothing changed
    if (pair.cert === current.pair.cert && pair.key === current.pair.key) {
      current.paths = files;
      return { changed: false, pair };
    }
    const pem = { cert: pair.cert, key: pair.key };
    // Router 0 first: a failure there (the likeliest, out of descriptors) leaves every router as it was.
    const [first, ...rest] = this.#routers;
    await first?.reloadTls(pem);
    const results = await Promise.allSettled(rest.map((r) => r.reloadTls(pem)));
    const failed = results.flatMap((r, i) => (r.status === "rejected" ? [`router ${rest[i]?.id}: ${describeError(r.reason)}`] : []));
    this.#settings.tls = { paths: files, pair };
    this.#log.info("TLS certificate reloaded: new connections get it, open ones keep theirs", {
      cert: files.cert,
      sha256: pair.fingerprint,
      not_after: pair.notAfter,
      subject: pair.subject,
      routers: this.#routers.length - failed.length,
    });
    if (failed.length > 0) throw new StoaError("io", `some routers kept the old certificate: ${failed.join("; ")}`);
    return { changed: true, pair };
  }

  async setLogLevel(level: LogLevel): Promise<void> {
    await Promise.allSettled(this.#routers.map((r) => r.setLogLevel(level)));
  }

  async #handle(req: ControlRequest): Promise<ControlResponse> {
    switch (req.type) {
      case "info":
        return this.#info();
      case "health": {
        const stats = await this.stats();
        return {
          type: "health",
          status: this.state === "serving" ? "serving" : "draining",
          pid: process.pid,
          uptime_ms: Date.now() - this.#startedAt,
          connections_open: KINDS.reduce((n, k) => n + stats.connections[k].open, 0),
          targets: this.#health.counts(),
        };
      }
      case "list":
        return { type: "list", ...(await this.list()) };
      case "register": {
        this.#assertServing();
        if (!this.#routes.has(req.kind, req.pub_id) && this.#routes.size >= MAX_REGISTRATIONS) {
          throw new StoaError("too_large", `the gateway holds ${MAX_REGISTRATIONS} registrations already; deregister unused ones`);
        }
        const entry: Registration = { pub_id: req.pub_id, kind: req.kind, target: req.target };
        await this.#update({ op: "set", registration: entry });
        this.#health.forget(req.kind, req.pub_id);
        this.#log.info("registered", { pub_id: req.pub_id, kind: req.kind, target: req.target });
        return { type: "register", entry };
      }
      case "deregister": {
        this.#assertServing();
        const removed = await this.#update({ op: "delete", pubId: req.pub_id, kind: req.kind ?? null });
        for (const r of removed) this.#health.forget(r.kind, r.pub_id);
        if (removed.length > 0) this.#log.info("deregistered", { pub_id: req.pub_id, kind: req.kind });
        return { type: "deregister", removed: removed.length };
      }
      case "handover":
        return this.#handOver(req.pid, req.version);
    }
  }

  #info(): ResponseFor<"info"> {
    return {
      type: "info",
      ports: { ...this.ports },
      listen: [...this.listen],
      pid: process.pid,
      version: buildInfo().version,
      tls: this.tls,
      workers: this.workers,
    };
  }

  async #handOver(pid: number, version: string): Promise<ResponseFor<"handover">> {
    this.#assertServing();
    this.state = "draining";
    this.#log.info("handing over to a new gateway; draining", { to_pid: pid, to_version: version, drain_timeout_ms: this.#settings.drainTimeoutMs });
    await this.#stopAccepting();
    const registrations = this.#routes.all().map((r) => ({ ...r, source: "explicit" as const, health: this.#health.view(r.kind, r.pub_id) }));
    // Started after this answer is written (a macrotask later), so it is never cut short.
    setTimeout(() => void this.#finishDrain("handover"), 0);
    return { type: "handover", registrations };
  }

  #assertServing(): void {
    if (this.state !== "serving") {
      throw new StoaError("closed", "this gateway is draining (handed over or stopping); send requests to its successor");
    }
  }

  async #update(update: RouteUpdate): Promise<Registration[]> {
    const removed = this.#routes.apply(update);
    // Router 0 shares the table; workers apply the same update and acknowledge it.
    await Promise.all(this.#routers.map((r) => r.update(update)));
    return removed;
  }

  #valid(entries: readonly RouteEntry[]): Registration[] {
    const out: Registration[] = [];
    for (const e of entries) {
      if (e.source !== "explicit") continue;
      try {
        out.push({ pub_id: e.pub_id, kind: e.kind, target: formatTarget(parseTarget(e.target)) });
      } catch (err) {
        this.#log.warn("ignoring an inherited registration", { pub_id: e.pub_id, kind: e.kind, err });
      }
    }
    return out;
  }

  #collect(): Promise<void> {
    // Serialized: snapshots must be applied in the order they were taken.
    this.#collecting = this.#collecting.then(async () => {
      const snaps = await Promise.allSettled(this.#routers.map((r) => r.snapshot()));
      for (const s of snaps) if (s.status === "fulfilled" && s.value !== null) this.#metrics.apply(s.value);
    });
    return this.#collecting;
  }

  async #stopAccepting(): Promise<void> {
    await Promise.allSettled(this.#routers.map((r) => r.stopAccepting()));
    await this.#control?.release();
  }

  async #terminateAll(): Promise<number> {
    const cuts = await Promise.allSettled(this.#routers.map((r) => r.terminateAll()));
    return cuts.reduce((n, c) => n + (c.status === "fulfilled" ? c.value : 0), 0);
  }

  async #finishDrain(reason: "handover" | "drain"): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const idle = Promise.all(this.#routers.map((r) => r.idle)).then(() => "idle" as const);
    const deadline = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), this.#settings.drainTimeoutMs);
    });
    const outcome = await Promise.race([idle, deadline]);
    clearTimeout(timer);
    if (this.#closing) return; // close() took over
    const cut = outcome === "timeout" ? await this.#terminateAll() : 0;
    if (cut > 0) this.#log.warn("drain timeout: cut the remaining connections", { cut });
    await this.#finish(reason, cut);
  }

  async #finish(reason: GatewayClosed["reason"], cut: number): Promise<void> {
    if (this.#finished) return;
    this.#finished = true;
    clearInterval(this.#collector);
    await this.#collect().catch(() => {});
    await this.#control?.close();
    await Promise.allSettled(this.#routers.map((r) => r.dispose()));
    for (const r of this.#routers) this.#metrics.forget(r.id);
    this.state = "closed";
    if (this.#control !== null) this.#log.info("gateway stopped", { reason, cut });
    this.#closed.resolve({ reason, cut });
  }
}
