import { StoaError } from "../core/errors.ts";
import { configFlag, defineCommand, str } from "./command.ts";
import { HostPort, logFlags, startService } from "./common.ts";
import { stateDirFlag } from "./flags.ts";
import { authFlags, metaAuth, reloadMetaOnHangup } from "./meta-auth.ts";
import { Duration } from "../core/duration.ts";
import { defaultStateDir } from "../core/paths.ts";
import { isLoopback } from "../core/hostaddr.ts";
import { onShutdown } from "../core/shutdown.ts";
import { announceReady } from "../core/daemon.ts";
import { DEFAULT_META_PORT, META_TOKEN_FILE } from "../meta/protocol.ts";
import { startMeta } from "../meta/server.ts";
import { defaultStoreSpec, parseStoreSpec } from "../meta/store.ts";

export default defineCommand({
  name: "meta",
  summary: "run the metaserver: who publishes what, on which host",
  description:
    "Serves the registry of publishers over HTTP+JSON under /v1 (errors are {error, message}):\n" +
    "registration, confirmation pinged through the publisher's gateway, TTL heartbeats, lookup\n" +
    "by name or prefix (paginated), changes as Server-Sent Events (/v1/watch), /v1/health and /metrics.\n" +
    "Registrations are kept in SQLite (--store sqlite:PATH, the default in the state dir; one\n" +
    "metaserver per file) or in Redis (--store redis://HOST:PORT[/DB]: any number of metaservers\n" +
    "over one Redis serve the same registry; give them all the same token files).\n" +
    "Writes need a bearer token: the admin token (--token-file, $STOA_META_TOKEN, or\n" +
    `<state dir>/${META_TOKEN_FILE}, created 0600 when missing) or a writer token (--tokens-file,\n` +
    "re-read on SIGHUP, with the --config file: log level and format, --tokens-file; other changes\n" +
    "are logged as needing a restart). stoa pub on this host finds the state dir's token by itself; elsewhere\n" +
    "give it --token-file.",
  config: true,
  flags: {
    listen: str("address and port to serve on (default loopback only; [::]:8090 for all addresses)", { default: `[::1]:${DEFAULT_META_PORT}`, placeholder: "host:port", schema: HostPort }),
    store: str("where registrations are kept: sqlite:PATH, sqlite::memory: or redis://HOST:PORT[/DB] (default: sqlite:<state dir>/meta.db)", { placeholder: "spec" }),
    db: str("SQLite file, or :memory: (shorthand for --store sqlite:PATH)", { placeholder: "path" }),
    stateDir: stateDirFlag("where meta.db and meta.token live"),
    ttl: str("a publisher that sends no heartbeat for this long turns stale", { default: "15s", placeholder: "duration", schema: Duration }),
    deregisterAfter: str("a stale publisher is removed after this much more silence", { default: "60s", placeholder: "duration", schema: Duration }),
    ...authFlags(),
    ...logFlags(),
    config: configFlag(),
  },
  examples: [
    "stoa meta --listen [::]:8090   # serve other hosts (the default is loopback only)",
    "stoa meta --listen 127.0.0.1:8090 --store sqlite:/var/lib/stoa/meta.db --ttl 30s",
    "stoa meta --listen [::]:8090 --store redis://10.0.0.5:6379/0 --token-file /etc/stoa/meta.token   # one of several",
    "curl -sN 'http://127.0.0.1:8090/v1/watch?prefix=sensors'   # registered, confirmed, stale, removed",
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
    if (flags.store !== undefined && flags.db !== undefined) {
      throw new StoaError("usage", "stoa meta: give --store or --db, not both (--db PATH is --store sqlite:PATH)");
    }
    const store = flags.store !== undefined ? parseStoreSpec(flags.store) : flags.db !== undefined ? { kind: "sqlite" as const, path: flags.db } : defaultStoreSpec(stateDir);
    const { auth, banner } = metaAuth(flags, stateDir, log);
    const meta = await startMeta({
      listen: flags.listen,
      store,
      ttlMs: flags.ttl,
      deregisterAfterMs: flags.deregisterAfter,
      auth,
      log,
    });
    onShutdown("metaserver", () => meta.close());
    reloadMetaOnHangup(ctx, log, meta);
    log.info("metaserver listening", { url: meta.url, store: meta.store });
    announceReady({ status: `metaserver ${meta.url}` });
    process.stdout.write(`metaserver: ${meta.url}/v1 (${isLoopback(flags.listen.hostname) ? "loopback only; --listen [::]:8090 for other hosts" : "reachable from other hosts"}; ${banner}; store ${meta.store})\n`);
    await new Promise(() => {}); // runs until a signal; shutdown exits the process
  },
});
