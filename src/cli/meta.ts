import { join } from "node:path";
import { configFlag, defineCommand, str } from "./command.ts";
import { HostPort, logFlags, startService } from "./common.ts";
import { Duration } from "../core/duration.ts";
import { defaultStateDir } from "../core/paths.ts";
import { onShutdown } from "../core/shutdown.ts";
import { DEFAULT_META_PORT } from "../meta/protocol.ts";
import { startMeta } from "../meta/server.ts";

export default defineCommand({
  name: "meta",
  summary: "run the metaserver: who publishes what, on which host",
  description:
    "Serves the registry of publishers over HTTP+JSON under /v1 (see src/meta/protocol.ts):\n" +
    "registration, confirmation pinged through the publisher's gateway, TTL heartbeats, lookup\n" +
    "by name or prefix, /v1/health and /metrics. Registrations are kept in SQLite (--db).",
  config: true,
  flags: {
    listen: str("address and port to serve on", { default: `[::]:${DEFAULT_META_PORT}`, placeholder: "host:port", schema: HostPort }),
    db: str("SQLite file, or :memory: (default: <state dir>/meta.db)", { placeholder: "path" }),
    ttl: str("a publisher that sends no heartbeat for this long turns stale", { default: "15s", placeholder: "duration", schema: Duration }),
    deregisterAfter: str("a stale publisher is removed after this much more silence", { default: "60s", placeholder: "duration", schema: Duration }),
    ...logFlags(),
    config: configFlag(),
  },
  examples: [
    "stoa meta",
    "stoa meta --listen 127.0.0.1:8090 --db /var/lib/stoa/meta.db --ttl 30s",
    "curl -s http://127.0.0.1:8090/v1/publishers?prefix=sensors | jq",
  ],
  async run({ flags }) {
    const log = startService("meta", flags);
    const meta = startMeta({
      listen: flags.listen,
      db: flags.db ?? join(defaultStateDir(), "meta.db"),
      ttlMs: flags.ttl,
      deregisterAfterMs: flags.deregisterAfter,
      log,
    });
    onShutdown("metaserver", () => meta.close());
    log.info("metaserver listening", { url: meta.url });
    process.stdout.write(`metaserver: ${meta.url}/v1\n`);
    await new Promise(() => {}); // runs until a signal; shutdown exits the process
  },
});
