import { availableParallelism } from "node:os";
import { z } from "zod";
import { configFlag, defineCommand, list, str } from "./command.ts";
import { HostPort, logFlags, portsFlag, reloadConfigOnHangup, serveMetrics, splitList, startService } from "./common.ts";
import { runDirFlag } from "./flags.ts";
import { Duration } from "../core/duration.ts";
import { StoaError } from "../core/errors.ts";
import { defaultRunDir } from "../core/paths.ts";
import { onShutdown, shutdown } from "../core/shutdown.ts";
import { type Gateway, startGateway } from "../gateway/gateway.ts";
import type { LogFormat, Logger, LogLevel } from "../core/log.ts";
import { announceReady, listenFds, onReload } from "../core/daemon.ts";
import { assignActivatedSockets } from "../gateway/activation.ts";
import { MAX_WORKERS } from "../gateway/protocol.ts";

/**
 * What SIGHUP reloads on a gateway: the `--config` file (log level and format, the TLS file
 * paths; anything else is logged as needing a restart), then the TLS pair, which every router
 * serves to new connections from then on (open ones keep theirs). A bad pair or file is logged
 * and nothing changes.
 */
function reloadOnHangup<V extends { logLevel: LogLevel; logFormat: LogFormat; tlsCert?: string; tlsKey?: string }>(
  gw: Gateway,
  log: Logger,
  ctx: { flags: V; config?: { file: string; reread(): V } },
): void {
  reloadConfigOnHangup(ctx, log, [
    { keys: ["logLevel"], apply: (next) => gw.setLogLevel(next.logLevel) },
    {
      keys: ["tlsCert", "tlsKey"],
      apply: async (next) => {
        if (next.tlsCert === undefined || next.tlsKey === undefined || !gw.tls) {
          throw new StoaError("config", "turning TLS on or off needs a restart (--tls-cert and --tls-key go together)");
        }
        await gw.reloadTls({ cert: next.tlsCert, key: next.tlsKey });
      },
    },
  ]);
  if (gw.tls) {
    onReload("tls", async () => {
      const { changed, pair } = await gw.reloadTls();
      return changed ? `new certificate sha256 ${pair.fingerprint}` : "unchanged";
    });
  }
}

/** Extra time the shutdown budget gives beyond the drain, for the rest of the cleanups. */
const SHUTDOWN_SLACK_MS = 5_000;

export default defineCommand({
  name: "gateway",
  summary: "route three fixed ports to this host's publishers",
  description:
    "Listens on the service, string and ping ports (8081, 8082, 8083) and routes each connection\n" +
    "by the pub_id in its first line (GET /pub/<pub_id> … or the raw prelude 'STOA1 <pub_id>') to\n" +
    "the publisher's Unix socket <run dir>/pub/<pub_id>/<kind>.sock (only a socket owned by the\n" +
    "gateway's own user, reached without following symlinks; anything else is 404), or to a target\n" +
    "registered on the control socket <run dir>/gateway.sock. A publisher that also listens on\n" +
    "<run dir>/pub/<pub_id>/handoff.sock (SOCK_SEQPACKET) is given each plain-TCP connection itself\n" +
    "(SCM_RIGHTS, with the bytes read so far) and serves it directly; the gateway is then out of\n" +
    "its data path (--handoff off: always proxy). Starting a gateway on the ports and\n" +
    "run dir of a running one takes over without dropping connections: the old one drains and exits.\n" +
    "GET /ready and GET /healthz on the ports are answered by the gateway itself. SIGHUP re-reads\n" +
    "the TLS files (checked as a pair; new connections get the new certificate on every worker,\n" +
    "open ones keep theirs; a bad pair is logged and the old one kept) and the --config file (log\n" +
    "level and format, TLS paths; other changes are logged as needing a restart). Under systemd: READY=1/STOPPING=1/WATCHDOG=1 and socket activation\n" +
    "(stoa service unit gateway gateway.socket).",
  config: true,
  flags: {
    listen: list("address to listen on (repeatable or comma-separated; default [::], all addresses)", { placeholder: "addr" }),
    ports: portsFlag("service,string,ping ports"),
    runDir: runDirFlag("where publishers' sockets and the control socket live"),
    workers: str("routers sharing each port (SO_REUSEPORT)", {
      default: String(Math.min(availableParallelism(), MAX_WORKERS)),
      placeholder: "n",
      schema: z.coerce.number().int().min(1).max(MAX_WORKERS),
    }),
    drainTimeout: str("on stop or takeover, how long open connections may finish", { default: "30s", placeholder: "duration", schema: Duration }),
    tlsCert: str("PEM certificate: terminate TLS on the three ports (with --tls-key)", { placeholder: "file" }),
    tlsKey: str("PEM private key for --tls-cert", { placeholder: "file" }),
    dataPath: str("how routed bytes move: epoll (raw sockets in a splicer thread per worker) or bun (Bun's sockets; always used with TLS)", {
      default: "epoll",
      choices: ["epoll", "bun"],
    }),
    handoff: str("give a plain-TCP connection to its publisher when the publisher listens on <run dir>/pub/<pub_id>/handoff.sock (the gateway then leaves its data path), or always proxy", {
      default: "on",
      choices: ["on", "off"],
    }),
    metricsListen: str("serve Prometheus /metrics on this HOST:PORT", { placeholder: "host:port", schema: HostPort }),
    readyFile: str("once serving, write this file (JSON: pid, ports, listen, run dir) atomically; removed at exit", { placeholder: "file" }),
    ...logFlags(),
    config: configFlag(),
  },
  examples: [
    "stoa gateway",
    "stoa gateway --listen fd00::1 --ports 9081,9082,9083 --run-dir /tmp/stoa --workers 1",
    "stoa gateway --tls-cert cert.pem --tls-key key.pem --metrics-listen 127.0.0.1:9100",
  ],
  async run(ctx) {
    const { flags, path } = ctx;
    if ((flags.tlsCert === undefined) !== (flags.tlsKey === undefined)) {
      throw new StoaError("usage", `${path}: --tls-cert and --tls-key go together`);
    }
    const log = startService("gateway", flags, { shutdownTimeoutMs: flags.drainTimeout + SHUTDOWN_SLACK_MS, daemon: true });
    const listen = splitList(flags.listen);
    // Under a .socket unit (stoa service unit gateway.socket) systemd holds the ports.
    const inherited = listenFds();
    const activated = inherited.length > 0 ? assignActivatedSockets(inherited) : undefined;
    if (activated !== undefined) log.info("socket activation: serving on the sockets systemd passed", { fds: inherited.length });
    const gw = await startGateway({
      activated,
      runDir: flags.runDir ?? defaultRunDir(),
      listen: listen.length > 0 ? listen : undefined,
      ports: flags.ports,
      workers: flags.workers,
      drainTimeoutMs: flags.drainTimeout,
      tls: flags.tlsCert && flags.tlsKey ? { cert: flags.tlsCert, key: flags.tlsKey } : undefined,
      dataPath: flags.dataPath,
      handoff: flags.handoff === "on",
      log,
    });
    onShutdown("gateway", async () => {
      await gw.drain();
    });
    reloadOnHangup(gw, log, ctx);
    serveMetrics(flags.metricsListen, log, () => gw.stats());
    const { service, string, ping } = gw.ports;
    process.stdout.write(
      `gateway: service ${service}, string ${string}, ping ${ping} on ${gw.listen.join(", ")}${gw.tls ? " (TLS)" : ""}; ` +
        `run dir ${gw.runDir}; ${gw.workers} worker(s)${gw.tookOverFrom !== null ? `; took over from pid ${gw.tookOverFrom}` : ""}\n`,
    );
    // Every listener answers: the ready file and systemd's READY=1 at this one moment.
    announceReady({
      status: `gateway on ${service},${string},${ping}`,
      readyFile: flags.readyFile,
      fields: { ports: gw.ports, listen: gw.listen, run_dir: gw.runDir },
    });
    const closed = await gw.closed;
    return await shutdown(closed.reason === "handover" ? "handed over to a new gateway" : "gateway stopped");
  },
});
