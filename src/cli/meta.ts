import { join } from "node:path";
import { bool, configFlag, defineCommand, str } from "./command.ts";
import { HostPort, logFlags, type Reloadable, reloadConfigOnHangup, startService } from "./common.ts";
import { Duration } from "../core/duration.ts";
import type { LogFormat, Logger, LogLevel } from "../core/log.ts";
import { defaultStateDir } from "../core/paths.ts";
import { isLoopback } from "../core/hostaddr.ts";
import { onShutdown } from "../core/shutdown.ts";
import { announceReady, onReload } from "../core/daemon.ts";
import { loadAuth, readWriters, type AuthConfig } from "../meta/auth.ts";
import { DEFAULT_META_PORT, META_TOKEN_FILE } from "../meta/protocol.ts";
import { startMeta } from "../meta/server.ts";

/** The metaserver's authentication flags, shared by `stoa meta` and `stoa up`. */
export function authFlags() {
  return {
    tokenFile: str(`admin token file, mode 0600 (default: $STOA_META_TOKEN, else <state dir>/${META_TOKEN_FILE}, created when missing)`, { placeholder: "file" }),
    tokensFile: str("extra writer tokens: one 'sha256:<hex of the token's SHA-256> [label]' per line (example below)", { placeholder: "file" }),
    readTokenFile: str("reads (GET) need this token, the admin's or a writer's; default: reads are open", { placeholder: "file" }),
    noAuth: bool("no tokens at all: anyone who reaches the port may register, replace and delete (quotas per address)"),
  };
}

/**
 * The metaserver's AuthConfig from its flags, a warning when authentication is off, and the
 * banner's words for where the token is (never the token).
 */
export function metaAuth(
  flags: { tokenFile?: string; tokensFile?: string; readTokenFile?: string; noAuth: boolean },
  stateDir: string,
  log: Logger,
): { auth: AuthConfig; banner: string } {
  const { config, where, created } = loadAuth({ ...flags, stateDir });
  if (!config.required) {
    log.warn("authentication is off (--no-auth): anyone who reaches the metaserver can register, replace and delete publishers");
    return { auth: config, banner: "no auth: anyone may write" };
  }
  if (created) log.info("created the admin token", { file: where });
  const reads = config.read === null ? "reads open" : "reads need a token";
  return { auth: config, banner: `writes need the token in ${where}; ${reads}` };
}

/**
 * What SIGHUP reloads on a metaserver: the `--config` file (log level and format, which
 * `--tokens-file` to read; anything else is logged as needing a restart), then the writer
 * tokens file (a bad file is logged and the old writers kept).
 */
export function reloadMetaOnHangup<V extends { logLevel: LogLevel; logFormat: LogFormat; tokensFile?: string; noAuth: boolean }>(
  ctx: { flags: V; config?: { file: string; reread(): V } },
  log: Logger,
  meta: { setWriters(writers: readonly string[]): void },
  more: readonly Reloadable<V>[] = [],
): void {
  if (ctx.flags.noAuth) {
    reloadConfigOnHangup(ctx, log, more);
    return;
  }
  let file = ctx.flags.tokensFile;
  reloadConfigOnHangup(ctx, log, [
    ...more,
    {
      keys: ["tokensFile"],
      apply: (next) => {
        const writers = next.tokensFile === undefined ? [] : readWriters(next.tokensFile); // throws: old file kept
        meta.setWriters(writers);
        file = next.tokensFile;
      },
    },
  ]);
  if (file === undefined && ctx.config === undefined) return;
  onReload("writer tokens", () => {
    if (file === undefined) return "none";
    const writers = readWriters(file);
    meta.setWriters(writers);
    return `${writers.length} from ${file}`;
  });
}

export default defineCommand({
  name: "meta",
  summary: "run the metaserver: who publishes what, on which host",
  description:
    "Serves the registry of publishers over HTTP+JSON under /v1 (errors are {error, message}):\n" +
    "registration, confirmation pinged through the publisher's gateway, TTL heartbeats, lookup\n" +
    "by name or prefix (paginated), /v1/health and /metrics. Registrations are kept in SQLite (--db).\n" +
    "Writes need a bearer token: the admin token (--token-file, $STOA_META_TOKEN, or\n" +
    `<state dir>/${META_TOKEN_FILE}, created 0600 when missing) or a writer token (--tokens-file,\n` +
    "re-read on SIGHUP, with the --config file: log level and format, --tokens-file; other changes\n" +
    "are logged as needing a restart). stoa pub on this host finds the state dir's token by itself; elsewhere\n" +
    "give it --token-file.",
  config: true,
  flags: {
    listen: str("address and port to serve on (default loopback only; [::]:8090 for all addresses)", { default: `[::1]:${DEFAULT_META_PORT}`, placeholder: "host:port", schema: HostPort }),
    db: str("SQLite file, or :memory: (default: <state dir>/meta.db)", { placeholder: "path" }),
    stateDir: str("where meta.db and meta.token live (default: /var/lib/stoa as root, else ~/.local/state/stoa)", { placeholder: "dir" }),
    ttl: str("a publisher that sends no heartbeat for this long turns stale", { default: "15s", placeholder: "duration", schema: Duration }),
    deregisterAfter: str("a stale publisher is removed after this much more silence", { default: "60s", placeholder: "duration", schema: Duration }),
    ...authFlags(),
    ...logFlags(),
    config: configFlag(),
  },
  examples: [
    "stoa meta --listen [::]:8090   # serve other hosts (the default is loopback only)",
    "stoa meta --listen 127.0.0.1:8090 --db /var/lib/stoa/meta.db --ttl 30s",
    "stoa meta --token-file /etc/stoa/meta.token --tokens-file /etc/stoa/writers.txt",
    "# a writer token for host-a: the token to host-a (stoa pub --token-file host-a.token), its hash to writers.txt\n" +
      "  t=stm_$(head -c 32 /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d =); (umask 077; echo \"$t\" > host-a.token)\n" +
      "  echo \"sha256:$(printf %s \"$t\" | sha256sum | cut -d' ' -f1) host-a\" >> /etc/stoa/writers.txt",
    "curl -s 'http://127.0.0.1:8090/v1/publishers?prefix=sensors&limit=100' | jq",
  ],
  async run(ctx) {
    const { flags } = ctx;
    const log = startService("meta", flags, { daemon: true });
    const stateDir = flags.stateDir ?? defaultStateDir();
    const { auth, banner } = metaAuth(flags, stateDir, log);
    const meta = startMeta({
      listen: flags.listen,
      db: flags.db ?? join(stateDir, "meta.db"),
      ttlMs: flags.ttl,
      deregisterAfterMs: flags.deregisterAfter,
      auth,
      log,
    });
    onShutdown("metaserver", () => meta.close());
    reloadMetaOnHangup(ctx, log, meta);
    log.info("metaserver listening", { url: meta.url });
    announceReady({ status: `metaserver ${meta.url}` });
    process.stdout.write(`metaserver: ${meta.url}/v1 (${isLoopback(flags.listen.hostname) ? "loopback only; --listen [::]:8090 for other hosts" : "reachable from other hosts"}; ${banner})\n`);
    await new Promise(() => {}); // runs until a signal; shutdown exits the process
  },
});
