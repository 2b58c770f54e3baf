/**
 * Flags and wiring shared by the long-running commands (gateway, meta, up, pub, …): logging
 * flags, the logger built from them, and graceful shutdown on SIGINT/SIGTERM.
 */
import { z } from "zod";
import { str } from "./command.ts";
import { parseEndpoint } from "../core/endpoint.ts";
import { fdReserve, raiseFdLimit } from "../core/fdlimit.ts";
import { type LogFormat, type LogLevel, type Logger, createLogger } from "../core/log.ts";
import { CONTENT_TYPE, metrics } from "../core/metrics.ts";
import { installSignalHandlers, onShutdown } from "../core/shutdown.ts";
import { guardServer, outOfFdsResponse } from "../core/fdguard.ts";

/** `--log-level` and `--log-format`, spread into a command's flags. */
export function logFlags() {
  return {
    logLevel: str<LogLevel>("debug|info|warn|error; debug also prints stack traces", {
      default: "info",
      choices: ["debug", "info", "warn", "error"],
    }),
    logFormat: str<LogFormat>("text, or json for one object per line", { default: "text", choices: ["text", "json"] }),
  };
}

/**
 * The command's logger, on stderr, and SIGINT/SIGTERM handlers that log through it and give
 * the registered cleanups `shutdownTimeoutMs` in all (a gateway's drain needs more than the
 * default 5 s). Also raises the file descriptor limit to the hard limit (core/fdlimit.ts):
 * every connection of a daemon costs one.
 */
export function startService(
  name: string,
  flags: { logLevel: LogLevel; logFormat: LogFormat },
  options: { shutdownTimeoutMs?: number } = {},
): Logger {
  const log = createLogger({ level: flags.logLevel, format: flags.logFormat, name });
  installSignalHandlers({ log, timeoutMs: options.shutdownTimeoutMs });
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
 * Serves `GET /metrics` (the shared Prometheus registry) on `listen` until shutdown; `refresh`
 * runs before each scrape (e.g. to fold in counters from worker threads). No-op without `listen`.
 */
export function serveMetrics(listen: { hostname: string; port: number } | undefined, log: Logger, refresh?: () => Promise<unknown>): void {
  if (listen === undefined) return;
  const serve = (port: number) =>
    Bun.serve({
      hostname: listen.hostname,
      port,
      async fetch(req) {
        if (new URL(req.url).pathname !== "/metrics") return new Response("not found: try /metrics\n", { status: 404 });
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
  onShutdown("metrics", () => {
    guard.stop();
    return server.stop(true);
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
