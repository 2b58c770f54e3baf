/**
 * What `stoa status` reports about this host, gathered through the clients that exist already:
 * the gateway's control socket (`info`, `health`, `list`: ports, routes with health,
 * connections), the metaserver's API (publishers, every page), and the control socket of each
 * hotlink daemon under `<run dir>/hotlink/`, and the supervisor's (`stoa supervisor run`) when
 * its control socket is in the run dir.
 *
 * `problems` says, one line each, what is not healthy: no gateway (or one draining), a route
 * marked down, a publisher routed here that the metaserver does not show live, an unreachable
 * metaserver that was asked for by URL, a hotlink daemon without its relay, a supervisor that
 * does not answer or has a worker not running (restarting after a crash), a hotlink user asked
 * for (`--hotlink USER`) with no daemon in the run dir. No problems is the exit status 0 of
 * `stoa status`.
 */
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describeError } from "../core/errors.ts";
import { RUN_DIR_SUBTREES, supervisorControlPath } from "../core/paths.ts";
import { controlRequest } from "../gateway/control.ts";
import type { ResponseFor, RouteEntry } from "../gateway/protocol.ts";
import { hotlinkControlRequest } from "../hotlink/control.ts";
import type { DaemonStatus } from "../hotlink/protocol.ts";
import { MetaClient, type MetaToken } from "../meta/client.ts";
import { supervisorRequest } from "../supervisor/control-client.ts";
import type { WorkerInfo } from "../supervisor/protocol.ts";
import type { Health, PublisherInfo } from "../meta/protocol.ts";

/** Most publishers a status report lists (the metaserver may hold far more: the rest are counted). */
const MAX_STATUS_PUBLISHERS = 1_000;
/** How long each control socket or the metaserver may take to answer a status request. */
const STATUS_REQUEST_TIMEOUT_MS = 3_000;

interface StatusOptions {
  runDir: string;
  metaUrl: string;
  /** Whether the metaserver was named (`--meta`): then not reaching it is a problem. */
  metaRequired: boolean;
  metaToken?: MetaToken;
  /** Users whose hotlink daemon must be there (and on its relay): a script that started them in the background waits for them. */
  hotlinkUsers?: readonly string[];
}

export interface StatusReport {
  healthy: boolean;
  problems: string[];
  gateway:
    | { run_dir: string; info: ResponseFor<"info">; health: ResponseFor<"health">; routes: RouteEntry[]; truncated: boolean }
    | { run_dir: string; error: string };
  meta: { url: string; health: Health; publishers: PublisherInfo[]; more: boolean } | { url: string; error: string };
  hotlink: ({ socket: string; status: DaemonStatus } | { socket: string; error: string })[];
  /** `stoa supervisor run`'s, when its control socket is in the run dir. */
  supervisor: { socket: string; pid: number; uptime_ms: number; workers: WorkerInfo[] } | { socket: string; error: string } | null;
}

/** Gathers the report; never throws for what it finds down (that is in `problems`). */
export async function collectStatus(options: StatusOptions): Promise<StatusReport> {
  const problems: string[] = [];
  const [gateway, meta, hotlink, supervisor] = await Promise.all([gatewayPart(options.runDir), metaPart(options), hotlinkPart(options.runDir), supervisorPart(options.runDir)]);
  if ("error" in gateway) problems.push(gateway.error);
  else {
    if (gateway.health.status !== "serving") problems.push(`the gateway (pid ${gateway.health.pid}) is ${gateway.health.status}`);
    for (const r of gateway.routes) {
      if (r.health.state === "down") problems.push(`route ${r.pub_id} ${r.kind} → ${r.target} is down${r.health.error ? `: ${r.health.error}` : ""}`);
    }
  }
  if ("error" in meta) {
    if (options.metaRequired) problems.push(meta.error);
  } else if (!("error" in gateway)) {
    const routed = new Set(gateway.routes.map((r) => r.pub_id));
    for (const p of meta.publishers) {
      if (routed.has(p.pub_id) && p.state !== "live") problems.push(`publisher ${p.name} (${p.pub_id}) on this gateway is ${p.state}`);
    }
  }
  for (const h of hotlink) {
    if ("error" in h) problems.push(h.error);
    else if (!h.status.connected) problems.push(`hotlink daemon of ${h.status.user} is not connected to its relay ${h.status.server}`);
  }
  if (supervisor !== null) {
    if ("error" in supervisor) problems.push(supervisor.error);
    else {
      for (const w of supervisor.workers) {
        if (w.state !== "running") problems.push(`supervisor (pid ${supervisor.pid}): the ${w.role} worker ${w.index} is ${w.state} (${w.restarts} restart(s))`);
      }
    }
  }
  for (const user of options.hotlinkUsers ?? []) {
    if (!hotlink.some((h) => "status" in h && h.status.user === user)) problems.push(`no hotlink daemon of ${user} runs in ${options.runDir} (yet?)`);
  }
  return { healthy: problems.length === 0, problems, gateway, meta, hotlink, supervisor };
}

async function gatewayPart(runDir: string): Promise<StatusReport["gateway"]> {
  const opts = { timeoutMs: STATUS_REQUEST_TIMEOUT_MS };
  try {
    const info = await controlRequest(runDir, { type: "info" }, opts);
    const health = await controlRequest(runDir, { type: "health" }, opts);
    const { entries, truncated } = await controlRequest(runDir, { type: "list" }, opts);
    return { run_dir: runDir, info, health, routes: entries, truncated };
  } catch (err) {
    return { run_dir: runDir, error: `gateway: ${describeError(err)}` };
  }
}

async function metaPart(options: StatusOptions): Promise<StatusReport["meta"]> {
  const client = new MetaClient(options.metaUrl, { token: options.metaToken, timeoutMs: STATUS_REQUEST_TIMEOUT_MS });
  try {
    const health = await client.health();
    const publishers: PublisherInfo[] = [];
    let more = false;
    // Page by page, as the client does, but bounded: a status line is not an export.
    for (let cursor: string | null = null; ; ) {
      const page = await client.page("", { limit: 500, cursor });
      publishers.push(...page.publishers);
      if (page.next_cursor === null || page.next_cursor === cursor) break;
      if (publishers.length >= MAX_STATUS_PUBLISHERS) {
        more = true;
        break;
      }
      cursor = page.next_cursor;
    }
    return { url: client.baseUrl, health, publishers: publishers.slice(0, MAX_STATUS_PUBLISHERS), more };
  } catch (err) {
    return { url: client.baseUrl, error: `metaserver: ${describeError(err)}` };
  }
}

async function hotlinkPart(runDir: string): Promise<StatusReport["hotlink"]> {
  const dir = join(runDir, RUN_DIR_SUBTREES.hotlink);
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith(".sock")).sort();
  } catch {
    return []; // no daemon has run here
  }
  return await Promise.all(
    names.map(async (name) => {
      const socket = join(dir, name);
      try {
        const { status } = await hotlinkControlRequest(socket, { type: "ls" }, { timeoutMs: STATUS_REQUEST_TIMEOUT_MS });
        return { socket, status };
      } catch (err) {
        return { socket, error: describeError(err) };
      }
    }),
  );
}

async function supervisorPart(runDir: string): Promise<StatusReport["supervisor"]> {
  const socket = supervisorControlPath(runDir);
  if (!existsSync(socket)) return null; // no supervisor has run here
  try {
    const [ping, list] = await Promise.all([
      supervisorRequest(socket, { type: "ping" }, STATUS_REQUEST_TIMEOUT_MS),
      supervisorRequest(socket, { type: "list_workers" }, STATUS_REQUEST_TIMEOUT_MS),
    ]);
    return { socket, pid: ping.pid, uptime_ms: ping.uptime_ms, workers: list.workers };
  } catch (err) {
    return { socket, error: `supervisor: ${describeError(err)}` };
  }
}
