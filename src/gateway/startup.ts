/**
 * What a gateway checks before it serves: a predecessor on the same run dir (to take over
 * from), the ports (shared only with that predecessor, never with a stranger), the TLS files,
 * and the run dir (how long a pub_id fits; publishers an older stoa left outside `pub/`). Used
 * by `startGateway` (gateway.ts).
 */
import { readFileSync } from "node:fs";
import { StoaError, describeError } from "../core/errors.ts";
import { MAX_UNIX_PATH_BYTES, urlHost } from "../core/endpoint.ts";
import type { Logger } from "../core/log.ts";
import { gatewayControlPath, oldLayoutPublisherDirs, publishersDir, publisherSocketPath } from "../core/paths.ts";
import { controlRequest } from "./control.ts";
import { KINDS, type Kind, type Ports, type ResponseFor, type RouteEntry } from "./protocol.ts";

/** From the pub_id rule in src/stream/names.ts: 1-64 characters. */
const MAX_PUB_ID_LENGTH = 64;

/** A gateway already serving the run dir: what it said, and its explicit routes. */
interface Previous {
  info: ResponseFor<"info">;
  explicit: RouteEntry[];
}

/** The gateway serving `runDir`, or null; throws `in_use` when it may not be taken over. */
export async function findPrevious(runDir: string, takeOver: boolean): Promise<Previous | null> {
  const path = gatewayControlPath(runDir);
  let info: ResponseFor<"info">;
  try {
    info = await controlRequest(runDir, { type: "info" });
  } catch (err) {
    // No socket, a stale one, or a gateway hanging up because it is stopping: nothing to take over.
    if (err instanceof StoaError && err.code === "closed") return null;
    const why = describeError(err);
    throw new StoaError("in_use", `${path} is served by something that does not answer like a gateway (${why}); stop it or choose another run dir`, { cause: err });
  }
  if (!takeOver) {
    throw new StoaError("in_use", `a gateway (pid ${info.pid}) already serves ${runDir}; stop it or let this one take over`);
  }
  let explicit: RouteEntry[] = [];
  try {
    explicit = (await controlRequest(runDir, { type: "list" })).entries.filter((e) => e.source === "explicit");
  } catch {
    // The handover answer carries the registrations too; this early copy only narrows a gap.
  }
  return { info, explicit };
}

/**
 * The ports to bind. A port the predecessor holds is shared (SO_REUSEPORT); any other must be
 * free, checked with a plain bind, so we never silently share a port with a stranger. 0 becomes
 * a free port (the same one on every listen address).
 */
export async function choosePorts(listen: readonly string[], wanted: Ports, previous: Ports | null): Promise<Ports> {
  const chosen: Ports = { ...wanted };
  const held: { stop(closeActiveConnections?: boolean): void }[] = [];
  try {
    for (const kind of KINDS) {
      const port = wanted[kind];
      if (port !== 0 && previous !== null && previous[kind] === port) continue;
      chosen[kind] = port === 0 ? pickFreePort(listen, held, kind) : checkFree(listen, port, kind, held);
    }
  } finally {
    // Held until every port is chosen, so the kernel cannot hand out one port twice.
    for (const h of held) h.stop(true);
  }
  return chosen;
}

function probeListen(hostname: string, port: number): { port: number; stop(closeActiveConnections?: boolean): void } {
  return Bun.listen({ hostname, port, socket: { data() {} } });
}

function checkFree(listen: readonly string[], port: number, kind: Kind, held: { stop(c?: boolean): void }[]): number {
  for (const hostname of listen) {
    try {
      held.push(probeListen(hostname, port));
    } catch (err) {
      const code = typeof err === "object" && err !== null && "code" in err ? String(err.code) : "";
      const where = `${urlHost(hostname)}:${port}`;
      if (code === "EADDRINUSE") {
        throw new StoaError("in_use", `port ${where} (${kind}) is in use by another program; stop it or choose other --ports`, { cause: err });
      }
      throw new StoaError("io", `cannot listen on ${where} (${kind}): ${describeError(err)}; check --listen`, { cause: err });
    }
  }
  return port;
}

function pickFreePort(listen: readonly string[], held: { stop(c?: boolean): void }[], kind: Kind): number {
  const [first = "::", ...rest] = listen;
  for (let attempt = 0; attempt < 10; attempt++) {
    const probe = probeListen(first, 0);
    held.push(probe);
    try {
      for (const hostname of rest) held.push(probeListen(hostname, probe.port));
      return probe.port;
    } catch {
      // Free on the first address only: try another.
    }
  }
  throw new StoaError("in_use", `could not find a port free on every address of ${listen.join(", ")} for ${kind}; give --ports explicitly`);
}

/** Reads the PEM files once (workers get the text); throws `config` naming the flag. */
export function readTls(tls: { cert: string; key: string }): { cert: string; key: string } {
  const read = (path: string, what: string, flag: string): string => {
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch (err) {
      throw new StoaError("config", `cannot read the TLS ${what} ${path}: ${describeError(err)}; check ${flag}`);
    }
    if (!text.includes("-----BEGIN")) throw new StoaError("config", `${path} is not a PEM ${what}; check ${flag}`);
    return text;
  };
  return { cert: read(tls.cert, "certificate", "--tls-cert"), key: read(tls.key, "key", "--tls-key") };
}

/**
 * The longest pub_id whose sockets fit in a Unix socket path under `runDir` (at most 64, the
 * pub_id limit). A deep run dir silently makes long pub_ids unreachable; the caller warns.
 */
export function longestServablePubId(runDir: string): number {
  // "service" is the longest kind name; a one-byte placeholder keeps the pub_id's own segment.
  const fixed = Buffer.byteLength(publisherSocketPath(runDir, "x", "service")) - 1;
  return Math.max(0, Math.min(MAX_PUB_ID_LENGTH, MAX_UNIX_PATH_BYTES - fixed));
}

/**
 * Warns once about publisher directories an older stoa left directly in the run dir: this
 * gateway routes only to `<run_dir>/pub/`, so a publisher still serving there is unreachable
 * until it is restarted (`stoa doctor` names them too).
 */
export function warnOldLayout(runDir: string, log: Logger): void {
  const old = oldLayoutPublisherDirs(runDir);
  if (old.length === 0) return;
  log.warn("the run dir holds publisher directories of an older stoa; they are not routed: restart those publishers (they now serve in pub/) and remove the directories", {
    run_dir: runDir,
    publishers_dir: publishersDir(runDir),
    old: old.slice(0, 10).join(","),
    count: old.length,
  });
}
