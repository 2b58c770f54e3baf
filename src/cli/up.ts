import { join } from "node:path";
import { configFlag, defineCommand, list, str } from "./command.ts";
import { HostPort, logFlags, portsFlag, serveMetrics, splitList, startService } from "./common.ts";
import { runDirFlag, stateDirFlag } from "./flags.ts";
import { authFlags, metaAuth, reloadMetaOnHangup } from "./meta-auth.ts";
import { defaultRunDir, defaultStateDir } from "../core/paths.ts";
import { onShutdown, shutdown } from "../core/shutdown.ts";
import { startGateway } from "../gateway/gateway.ts";
import { DEFAULT_META_PORT } from "../meta/protocol.ts";
import { announceReady } from "../core/daemon.ts";
import { isLoopback } from "../core/hostaddr.ts";
import { defaultStoreSpec } from "../meta/store.ts";
import { startMetaThread } from "../meta/thread.ts";

/**
 * Where `stoa up` listens unless told otherwise: loopback only. Serving other hosts is a choice
 * (`--listen ::`, `--meta-listen [::]:8090`), said in the banner either way.
 */
const UP_LOOPBACK = ["::1", "127.0.0.1"] as const;

/** `stoa up` drains faster than a standalone gateway: it is the interactive, Ctrl-C'd one. */
const UP_DRAIN_MS = 5_000;

export default defineCommand({
  name: "up",
  summary: "run a whole host node: gateway + metaserver in one process",
  description:
    "The main job on embedded defaults: a gateway on the three fixed ports and a metaserver\n" +
    "(SQLite in the state dir) in one process, the metaserver on its own thread. Prints the URLs\n" +
    "and how to publish and subscribe. Writes to the metaserver need its token (see stoa meta\n" +
    "--help); stoa pub on this host finds it in the state dir. Ctrl-C stops it cleanly. SIGHUP\n" +
    "re-reads --tokens-file and the --config file (log level and format, --tokens-file; other\n" +
    "changes are logged as needing a restart).",
  config: true,
  flags: {
    listen: list("gateway address (repeatable or comma-separated; default ::1 and 127.0.0.1, loopback only; :: for all addresses)", { placeholder: "addr" }),
    ports: portsFlag("gateway service,string,ping ports"),
    metaListen: str("metaserver address and port ([::]:8090 for all addresses)", { default: `[::1]:${DEFAULT_META_PORT}`, placeholder: "host:port", schema: HostPort }),
    stateDir: stateDirFlag("where the metaserver keeps meta.db and meta.token"),
    runDir: runDirFlag("where publishers' sockets live"),
    metricsListen: str("serve Prometheus /metrics on this HOST:PORT (the metaserver also serves /metrics)", { placeholder: "host:port", schema: HostPort }),
    readyFile: str("once serving, write this file (JSON: pid, ports, metaserver URL) atomically; removed at exit", { placeholder: "file" }),
    ...authFlags(),
    ...logFlags(),
    config: configFlag(),
  },
  examples: ["stoa up", "stoa up --listen :: --meta-listen [::]:8090   # serve other hosts too", "stoa up --listen fd00::1 --meta-listen [fd00::1]:8090", "stoa up --ports 9081,9082,9083 --meta-listen 127.0.0.1:9090 --state-dir /tmp/s --run-dir /tmp/r"],
  async run(ctx) {
    const { flags } = ctx;
    const log = startService("up", flags, { shutdownTimeoutMs: UP_DRAIN_MS + 5_000, daemon: true });
    const runDir = flags.runDir ?? defaultRunDir();
    const stateDir = flags.stateDir ?? defaultStateDir();
    const listen = splitList(flags.listen);
    const { auth, banner } = metaAuth(flags, stateDir, log.child({ part: "meta" }));
    // Its own thread: a slow query or a big list page never holds up router 0 on this one.
    const meta = await startMetaThread(
      { listen: flags.metaListen, store: defaultStoreSpec(stateDir), auth },
      { level: flags.logLevel, format: flags.logFormat, name: "up", fields: { part: "meta" } },
      (reason) => {
        log.error(reason);
        void shutdown(reason, 1);
      },
    );
    onShutdown("metaserver", () => meta.close());
    const gw = await startGateway({
      runDir,
      listen: listen.length > 0 ? listen : [...UP_LOOPBACK],
      ports: flags.ports,
      drainTimeoutMs: UP_DRAIN_MS,
      log: log.child({ part: "gateway" }),
    });
    onShutdown("gateway", async () => {
      await gw.drain();
    });
    // SIGHUP: the config file's log settings (on every thread), the writer tokens; anything else
    // in the file is logged as needing a restart.
    reloadMetaOnHangup(ctx, log, meta, [
      {
        keys: ["logLevel", "logFormat"],
        apply: async (next) => {
          meta.setLog({ level: next.logLevel, format: next.logFormat });
          await gw.setLogLevel(next.logLevel);
        },
      },
    ]);
    serveMetrics(flags.metricsListen, log, () => gw.stats());
    const { service, string, ping } = gw.ports;
    const opts = `--meta ${meta.url}${flags.runDir ? ` --run-dir ${runDir}` : ""}${flags.stateDir ? ` --state-dir ${stateDir}` : ""}`;
    const reach = (loopback: boolean, flag: string) => (loopback ? `loopback only; ${flag} for other hosts` : "reachable from other hosts");
    process.stdout.write(
      [
        `stoa up: gateway on ${gw.listen.join(", ")} ports service ${service}, string ${string}, ping ${ping} (${reach(gw.listen.every(isLoopback), "--listen ::")}; run dir ${runDir})`,
        `         metaserver ${meta.url}/v1 (${reach(isLoopback(flags.metaListen.hostname), "--meta-listen [::]:8090")}; db ${join(stateDir, "meta.db")}; ${banner})`,
        `try:     seq 1 100 | stoa pub demo/counter --stay ${opts}`,
        `         stoa sub demo/counter --meta ${meta.url}`,
        "",
      ].join("\n"),
    );
    // Every listener answers: the ready file and systemd's READY=1 at this one moment.
    announceReady({
      status: `gateway on ${service},${string},${ping}; metaserver ${meta.url}`,
      readyFile: flags.readyFile,
      fields: { ports: gw.ports, listen: gw.listen, meta: meta.url, run_dir: runDir },
    });
    const closed = await gw.closed;
    return await shutdown(closed.reason === "handover" ? "gateway handed over" : "gateway stopped");
  },
});

