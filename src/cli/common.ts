/**
 * Flags and wiring shared by the long-running commands (gateway, meta, up, pub, …): logging
 * flags, the logger built from them, `--wait`, the gateway's `--ports`, graceful shutdown on
 * SIGINT/SIGTERM, and the daemon conventions of core/daemon.ts (SIGHUP, systemd notify and
 * watchdog). Flags without wiring (`--run-dir`, `--state-dir`) are in flags.ts.
 */
import { z } from "zod";
import { bool, str } from "./command.ts";
import { Duration } from "../core/duration.ts";
import { DEFAULT_WAIT_MS } from "../core/wait.ts";
import { parseEndpoint } from "../core/endpoint.ts";
import { fdReserve, raiseFdLimit } from "../core/fdlimit.ts";
import { LogFormat, LogLevel, type Logger, createLogger, reconfigureLogger } from "../core/log.ts";
import { kebab } from "../core/config.ts";
import { describeError } from "../core/errors.ts";
import { KINDS } from "../core/paths.ts";
import { DEFAULT_PORTS, parsePorts } from "../gateway/protocol.ts";
import { CONTENT_TYPE, metrics } from "../core/metrics.ts";
import { installSignalHandlers, onShutdown } from "../core/shutdown.ts";
import { installDaemon, onReload, readiness } from "../core/daemon.ts";
import { adaptRuntimeThreads } from "../core/runtime.ts";
import { guardServer, outOfFdsResponse } from "../core/fdguard.ts";

/** `--log-level` and `--log-format`, spread into a command's flags. */
export function logFlags() {
  return {
    logLevel: str("debug|info|warn|error; debug also prints stack traces", { default: "info", choices: LogLevel.options }),
    logFormat: str("text, or json for one object per line", { default: "text", choices: LogFormat.options }),
  };
}

/**
 * The log flags of a client command (`sub`, `pub`, `hotlink user add`): data goes to stdout and
 * only warnings to stderr, unless `-v`/`--verbose` (info) or an explicit `--log-level`.
 */
export function clientLogFlags() {
  return {
    logLevel: str("debug|info|warn|error; debug also prints stack traces (default: warn, info with -v)", { choices: LogLevel.options }),
    logFormat: str("text, or json for one object per line", { default: "text", choices: LogFormat.options }),
    verbose: bool("also log what happens (connections, registrations) at info level", { short: "v" }),
  };
}

/** The level of a client's logger from `clientLogFlags()`. */
export function clientLogLevel(flags: { logLevel?: LogLevel; verbose: boolean }): LogLevel {
  return flags.logLevel ?? (flags.verbose ? "info" : "warn");
}

/** `--wait D`: how long a client waits for what it needs (gateway, metaserver, relay, publisher). */
export function waitFlag(what: string) {
  return {
    wait: str(`wait up to this long for ${what} to answer, then fail (0: do not wait)`, {
      default: `${DEFAULT_WAIT_MS / 1000}s`,
      placeholder: "duration",
      schema: Duration,
    }),
  };
}

/** `--ports S,T,P` value → {service, string, ping} (gateway/protocol.ts `parsePorts`). */
const Ports = z.string().transform((text, ctx) => {
  try {
    return parsePorts(text);
  } catch (err) {
    ctx.addIssue({ code: "custom", message: describeError(err) });
    return z.NEVER;
  }
});

/**
 * `--ports S,T,P`: the gateway's service, string and ping ports, for `what`; the default is
 * DEFAULT_PORTS in KINDS' (port) order, 8081,8082,8083.
 */
export function portsFlag(what: string) {
  return str(what, { default: KINDS.map((kind) => DEFAULT_PORTS[kind]).join(","), placeholder: "S,T,P", schema: Ports });
}

/**
 * The command's logger, on stderr, and SIGINT/SIGTERM handlers that log through it and give
 * the registered cleanups `shutdownTimeoutMs` in all (a gateway's drain needs more than the
 * default 5 s). Also raises the file descriptor limit to the hard limit (core/fdlimit.ts):
 * every connection of a daemon costs one.
 * `daemon: true` (servers): SIGHUP runs the `onReload` hooks and never exits, and the systemd
 * watchdog is pinged when `$WATCHDOG_USEC` asks; the command calls `announceReady()` once it
 * serves. Otherwise (clients: pub, sub) SIGHUP, a terminal hangup, shuts down like SIGINT.
 * The runtime's background threads follow the load (core/runtime.ts `adaptRuntimeThreads`).
 */
export function startService(
  name: string,
  flags: { logLevel: LogLevel; logFormat: LogFormat },
  options: { shutdownTimeoutMs?: number; daemon?: boolean } = {},
): Logger {
  const log = createLogger({ level: flags.logLevel, format: flags.logFormat, name });
  installSignalHandlers({ log, timeoutMs: options.shutdownTimeoutMs });
  installDaemon(log, options.daemon === true ? "daemon" : "client");
  // The runtime's compiler and purge threads never keep a woken event loop waiting (core/runtime.ts).
  // An optimisation only: a refusal (a seccomp filter, a container without the capability) is told
  // at debug level.
  adaptRuntimeThreads((error) => log.debug("could not set the scheduling policy of the runtime's background threads", { error }));
  try {
    const { from, to, hard, error } = raiseFdLimit();
    if (error !== undefined) log.warn("could not raise the file descriptor limit", { from, hard, error });
    else log.debug("file descriptor limit", { from, to, reserve: fdReserve(to) });
  } catch (err) {
    log.warn("could not read the file descriptor limit", { err });
  }
  return log;
}

/**
 * Serves `GET /metrics` (the shared Prometheus registry) on `listen`; `refresh` runs before
 * each scrape (e.g. to fold in counters from worker threads). No-op without `listen`. Also:
 *   GET /healthz   200 `ok` while the process is alive (liveness)
 *   GET /ready     200 `ready` once the daemon announced it serves (core/daemon.ts), 503
 *                  `starting` before and `draining` from the start of shutdown (readiness)
 * The listener stays up until the process exits, so a load balancer sees the drain as 503.
 */
export function serveMetrics(listen: { hostname: string; port: number } | undefined, log: Logger, refresh?: () => Promise<unknown>): void {
  if (listen === undefined) return;
  const serve = (port: number) =>
    Bun.serve({
      hostname: listen.hostname,
      port,
      async fetch(req) {
        const path = new URL(req.url).pathname;
        if (path === "/healthz") return new Response("ok\n", { headers: { "content-type": "text/plain; charset=utf-8" } });
        if (path === "/ready") {
          const state = readiness();
          return new Response(`${state === "serving" ? "ready" : state}\n`, {
            status: state === "serving" ? 200 : 503,
            headers: { "content-type": "text/plain; charset=utf-8" },
          });
        }
        if (path !== "/metrics") return new Response("not found: try /metrics, /ready or /healthz\n", { status: 404 });
        await refresh?.();
        return new Response(metrics.render(), { headers: { "content-type": CONTENT_TYPE } });
      },
    });
  let server = serve(listen.port);
  const port = server.port ?? listen.port;
  // Like every listener: no accept spin at the descriptor limit (core/fdguard.ts). A scrape is
  // short, so it goes on into the reserve, where the daemon's own listeners already refuse.
  const guard = guardServer({
    what: "metrics listener",
    log,
    hostname: listen.hostname,
    port,
    margin: Math.floor(fdReserve() / 4),
    response: outOfFdsResponse("text/plain; charset=utf-8", "server out of file descriptors; try again shortly\n"),
    pause: () => void server.stop(true),
    resume: () => {
      server = serve(port);
    },
  });
  // Not stopped at shutdown: /ready answers 503 through the drain; the exit closes it.
  onShutdown("metrics guard", () => guard.stop());
}

/**
 * Settings a daemon can change while it runs: these flag keys (read together, e.g. a
 * certificate and its key) are applied by `apply` with the new and the running values. A throw
 * keeps the running values of those keys (logged; the next SIGHUP tries again).
 */
export interface Reloadable<V> {
  keys: readonly (keyof V & string)[];
  apply(next: V, running: V): string | void | Promise<string | void>;
}

/**
 * SIGHUP re-reads the `--config` file of a daemon started with one (no-op otherwise): the
 * flags are resolved again (same command line and environment) and validated by the same
 * schemas — a bad file is logged and nothing changes. Then what changed is applied: the log
 * level and format (always, on `log` and everything sharing it), and each `reloadable` entry;
 * a changed setting no entry covers (ports, listen addresses, run dir, …) is logged as needing
 * a restart, and the daemon keeps running with its old value. Register it before the hooks
 * that re-read files it may repoint (TLS, tokens), so they read the new ones.
 *
 * @example
 * ```ts
 * reloadConfigOnHangup(ctx, log, [
 *   { keys: ["tlsCert", "tlsKey"], apply: (next) => gw.reloadTls({ cert: next.tlsCert, key: next.tlsKey }) },
 * ]);
 * ```
 */
export function reloadConfigOnHangup<V extends { logLevel: LogLevel; logFormat: LogFormat }>(
  ctx: { flags: V; config?: { file: string; reread(): V } },
  log: Logger,
  reloadable: readonly Reloadable<V>[] = [],
): void {
  const config = ctx.config;
  if (config === undefined) return;
  const running: V = { ...ctx.flags };
  const entries: Reloadable<V>[] = [
    {
      keys: ["logLevel", "logFormat"],
      apply: (next) => void reconfigureLogger(log, { level: next.logLevel, format: next.logFormat }),
    },
    ...reloadable,
  ];
  const covered = new Set<string>(entries.flatMap((e) => e.keys));
  onReload("config", async () => {
    const next = config.reread(); // throws on a bad file: logged by the reload, nothing changed
    const changed = Object.keys(next).filter((key) => key !== "config" && !Bun.deepEquals(next[key as keyof V], running[key as keyof V]));
    const restart = changed.filter((key) => !covered.has(key)).map(kebab);
    const applied: string[] = [];
    const failed: string[] = [];
    for (const entry of entries) {
      if (!entry.keys.some((key) => changed.includes(key))) continue;
      const names = entry.keys.filter((key) => changed.includes(key) && !applied.includes(kebab(key))).map(kebab).join(",");
      try {
        await entry.apply(next, running);
        for (const key of entry.keys) running[key] = next[key];
        if (names !== "") applied.push(names);
      } catch (err) {
        failed.push(`${names}: ${describeError(err)}`);
      }
    }
    if (applied.length > 0) log.info("config: applied changed settings", { file: config.file, applied: applied.join(",") });
    // After applying: in the new log format, if that changed too.
    if (restart.length > 0) {
      log.warn("config: changed settings that need a restart; still running with the old values", { file: config.file, needs_restart: restart.join(",") });
    }
    if (failed.length > 0) throw new Error(`config ${config.file}: kept the running values of ${failed.join("; ")}`);
    const parts = [applied.length > 0 ? `applied ${applied.join(",")}` : "", restart.length > 0 ? `needs restart: ${restart.join(",")}` : ""].filter(Boolean);
    return `${config.file}: ${parts.join("; ") || "unchanged"}`;
  });
}

/** Values of a repeatable flag that may also be comma-separated: `--listen a,b --listen c`. */
export function splitList(values: readonly string[]): string[] {
  return values.flatMap((v) => v.split(",")).map((v) => v.trim()).filter(Boolean);
}

/**
 * A `HOST:PORT` flag value (`[::]:8090`, `127.0.0.1:8090`, `localhost:8090`, or `:8090` for
 * every address) → `{hostname, port}` for Bun.serve / Bun.listen.
 */
export const HostPort = z.string().transform((text, ctx) => {
  const spec = text.startsWith(":") ? `[::]${text}` : text;
  try {
    const endpoint = parseEndpoint(`tcp:${spec}`);
    if (endpoint.kind !== "tcp") throw new Error("not a TCP address");
    return { hostname: endpoint.host, port: endpoint.port };
  } catch {
    ctx.addIssue({ code: "custom", message: "expected HOST:PORT, e.g. [::]:8090, 127.0.0.1:8090 or :8090" });
    return z.NEVER;
  }
});
