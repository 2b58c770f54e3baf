import { bool, defineCommand, list, str } from "./command.ts";
import { clientLogFlags, clientLogLevel, splitList, startService } from "./common.ts";
import { runDirFlag, stateDirFlag } from "./flags.ts";
import { Duration } from "../core/duration.ts";
import { StoaError } from "../core/errors.ts";
import { defaultRunDir, defaultStateDir } from "../core/paths.ts";
import { WAIT_FIRST_RETRY_MS, WAIT_MAX_RETRY_MS } from "../core/wait.ts";
import { clientToken } from "../meta/client.ts";
import { DEFAULT_META_PORT } from "../meta/protocol.ts";
import { collectStatus, type StatusReport } from "../status/status.ts";

const DEFAULT_META_URL = `http://[::1]:${DEFAULT_META_PORT}`;

export default defineCommand({
  name: "status",
  summary: "show this host's gateway, publishers, hotlink daemons and relay; exit 0 when healthy",
  description:
    "Asks this host's gateway (its control socket in the run dir) for its ports, routes with their\n" +
    "health and open connections, the metaserver for its publishers (name, pub_id, state, URL),\n" +
    "every hotlink daemon of the run dir for its relay connection and channels, and the packet\n" +
    "relay (stoa supervisor run) for its workers when its control socket is there. Exits 0 only\n" +
    "when all of it is healthy; otherwise 1, with one line on stderr per problem: no gateway, a\n" +
    "route down, a publisher of this gateway not live, a hotlink daemon off its relay, a metaserver\n" +
    "named with --meta that does not answer, a relay worker not running, a --hotlink user with no\n" +
    "daemon. --wait D asks again until healthy or D has passed, so 'stoa up & stoa status --wait\n" +
    "10s' is how a script waits for a node, and --hotlink alice,bob also for daemons started in\n" +
    "the background.",
  flags: {
    json: bool("the whole report as one JSON object (also when unhealthy)"),
    wait: str("ask again until healthy, for up to this long", { default: "0", placeholder: "duration", schema: Duration }),
    runDir: runDirFlag("run dir of the gateway, hotlink daemons and relay"),
    meta: str(`metaserver URL (default ${DEFAULT_META_URL}, not a problem when nothing answers there)`, { placeholder: "url" }),
    tokenFile: str("token for a metaserver whose reads need one", { placeholder: "file" }),
    stateDir: stateDirFlag("where a local stoa up/meta keeps meta.token"),
    hotlink: list("a user whose hotlink daemon must run here, on its relay (repeat, or comma-separated)", { placeholder: "user" }),
    ...clientLogFlags(),
  },
  examples: [
    "stoa status",
    "stoa up & stoa status --wait 10s && run-the-smoke-test",
    "stoa hotlink connect --user alice … & stoa status --wait 10s --hotlink alice",
    "stoa status --json | jq '.meta.publishers[].name'",
  ],
  async run({ flags }) {
    startService("status", { logLevel: clientLogLevel(flags), logFormat: flags.logFormat });
    const metaUrl = flags.meta ?? DEFAULT_META_URL;
    const options = {
      runDir: flags.runDir ?? defaultRunDir(),
      metaUrl,
      metaRequired: flags.meta !== undefined,
      metaToken: clientToken({ metaUrl, tokenFile: flags.tokenFile, stateDir: flags.stateDir ?? defaultStateDir() }),
      hotlinkUsers: splitList(flags.hotlink),
    };
    const deadline = performance.now() + flags.wait;
    let pause = WAIT_FIRST_RETRY_MS;
    let report = await collectStatus(options);
    while (!report.healthy && performance.now() < deadline) {
      await Bun.sleep(Math.min(pause, Math.max(1, deadline - performance.now())));
      pause = Math.min(WAIT_MAX_RETRY_MS, pause * 2);
      report = await collectStatus(options);
    }
    process.stdout.write(flags.json ? `${JSON.stringify(report)}\n` : render(report));
    if (report.healthy) return 0;
    for (const p of report.problems.slice(0, -1)) process.stderr.write(`stoa status: ${p}\n`);
    const waited = flags.wait > 0 ? ` (after waiting ${flags.wait / 1000}s)` : "";
    throw new StoaError("closed", `not healthy${waited}: ${report.problems.at(-1) ?? "unknown"}`);
  },
});

/** The report as a person reads it: one block per part, tables with aligned columns. */
function render(r: StatusReport): string {
  const out: string[] = [];
  const g = r.gateway;
  if ("error" in g) out.push(`gateway     down: ${g.error}`);
  else {
    const p = g.info.ports;
    out.push(
      `gateway     ${g.health.status}, pid ${g.info.pid}, version ${g.info.version}, up ${Math.round(g.health.uptime_ms / 1000)}s, ` +
        `${g.health.connections_open} connection(s) open; ports service ${p.service}, string ${p.string}, ping ${p.ping} ` +
        `on ${g.info.listen.join(", ")}${g.info.tls ? " (TLS)" : ""}; run dir ${g.run_dir}`,
    );
    out.push(`routes      ${g.routes.length}${g.truncated ? "+" : ""} (${g.health.targets.up} up, ${g.health.targets.down} down)`);
    out.push(...table(["PUB_ID", "KIND", "TARGET", "HEALTH"], g.routes.map((e) => [e.pub_id, e.kind, e.target, e.health.state + (e.health.error ? ` (${e.health.error})` : "")])));
  }
  const m = r.meta;
  if ("error" in m) out.push(`metaserver  ${m.url}: ${m.error}`);
  else {
    const c = m.health.publishers;
    out.push(`metaserver  ${m.url}: ${c.live} live, ${c.pending} pending, ${c.stale} stale`);
    out.push(...table(["NAME", "PUB_ID", "STATE", "URL"], m.publishers.map((p) => [p.name, p.pub_id, p.state, p.urls.service])));
    if (m.more) out.push(`  … and more (stoa status --json, or GET ${m.url}/v1/publishers)`);
  }
  if (r.hotlink.length > 0) {
    out.push("hotlink");
    for (const h of r.hotlink) {
      if ("error" in h) out.push(`  ${h.socket}: ${h.error}`);
      else {
        const s = h.status;
        const link = s.relay_link === "tcp" ? " (framed TCP link)" : s.relay_link === "ws" ? " (WebSocket)" : "";
        out.push(`  ${s.user} via ${s.server}: ${s.connected ? `connected${link}` : "NOT connected"}, ${s.tunnels.length} tunnel(s), ${s.ipc.length} ipc channel(s)`);
      }
    }
  }
  const sup = r.supervisor;
  if (sup !== null) {
    if ("error" in sup) out.push(`supervisor  ${sup.socket}: ${sup.error}`);
    else {
      const data = sup.workers.filter((w) => w.role === "data");
      out.push(`supervisor  pid ${sup.pid}, up ${Math.round(sup.uptime_ms / 1000)}s, ${data.length} data-plane worker(s); control ${sup.socket}`);
      out.push(...table(["ROLE", "INDEX", "PID", "STATE", "RESTARTS"], sup.workers.map((w) => [w.role, String(w.index), String(w.pid), w.state, String(w.restarts)])));
    }
  }
  out.push(r.healthy ? "healthy" : `NOT healthy: ${r.problems.length} problem(s)`);
  return `${out.join("\n")}\n`;
}

function table(head: string[], rows: string[][]): string[] {
  if (rows.length === 0) return [];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? "").length)));
  const line = (cells: string[]) => `  ${cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join("  ")}`;
  return [line(head), ...rows.map(line)];
}
