/**
 * Where stoa keeps its sockets and state, by convention (every command takes a flag to
 * override): the run dir holds Unix sockets and is lost at reboot, the state dir holds data that
 * must survive restarts (the metaserver's SQLite file).
 *
 *   run dir:   /run/stoa as root, else $XDG_RUNTIME_DIR/stoa, else /tmp/stoa-<uid>
 *   state dir: /var/lib/stoa as root, else $XDG_STATE_HOME/stoa, else ~/.local/state/stoa
 *
 * This module owns the run dir's layout: every other file builds run-dir paths through it, so
 * no two subsystems can ever name the same file. Each subsystem has its own subtree, and a name
 * a client chooses (a pub_id, a hotlink user) is only ever a path segment inside that subtree:
 *
 *   <run_dir>/                      created 0700 by its first user (core/unixsock.ts)
 *   ├── gateway.sock                the gateway's control socket (src/gateway/control.ts)
 *   ├── pub/                        publishers (src/stream/listen.ts); the only subtree the
 *   │   └── <pub_id>/               gateway routes to (src/gateway/routes.ts)
 *   │       ├── service.sock
 *   │       ├── string.sock
 *   │       └── ping.sock
 *   ├── hotlink/<user>.sock         hotlink daemons' control sockets (src/hotlink/control.ts)
 *   ├── addr/owned.json, owned.lock addresses stoa added (src/addr/model.ts)
 *   ├── circles/                    reserved for stoa circles
 *   ├── flows/                      reserved for stoa flows
 *   └── supervisor/control.sock     stoa supervisor run's control socket (src/supervisor/supervisor.ts)
 *
 * Before this layout publishers lived in `<run_dir>/<pub_id>/`; such leftovers are ignored
 * (never routed, never listed) and can be removed.
 */
import { readdirSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

/**
 * The three endpoints every publisher serves, in port order (8081, 8082, 8083 by default), each
 * a `<kind>.sock` in the publisher's directory. Defined here, with the layout that names the
 * sockets, so the core never imports a subsystem; `stream/names.ts` re-exports them.
 */
export const KINDS = ["service", "string", "ping"] as const;
export type Kind = (typeof KINDS)[number];

function uid(): number {
  return process.getuid?.() ?? -1;
}

export function defaultRunDir(env: NodeJS.ProcessEnv = process.env): string {
  if (uid() === 0) return "/run/stoa";
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, "stoa");
  return `/tmp/stoa-${uid()}`;
}

export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (uid() === 0) return "/var/lib/stoa";
  if (env.XDG_STATE_HOME) return join(env.XDG_STATE_HOME, "stoa");
  return join(homedir(), ".local", "state", "stoa");
}

/** Each subsystem's own directory in the run dir (see the tree above). */
export const RUN_DIR_SUBTREES = {
  publishers: "pub",
  hotlink: "hotlink",
  addr: "addr",
  circles: "circles",
  flows: "flows",
  supervisor: "supervisor",
} as const;
type RunDirSubtree = keyof typeof RUN_DIR_SUBTREES;

/** `<run_dir>/<subtree>/`: the directory of one subsystem. */
export function subtreeDir(runDir: string, subtree: RunDirSubtree): string {
  return join(runDir, RUN_DIR_SUBTREES[subtree]);
}

/** `<run_dir>/gateway.sock`: the gateway's control socket. */
export function gatewayControlPath(runDir: string): string {
  return join(runDir, "gateway.sock");
}

/** `<run_dir>/pub/`: where every publisher's directory is, and nothing else. */
export function publishersDir(runDir: string): string {
  return subtreeDir(runDir, "publishers");
}

/** `<run_dir>/pub/<pub_id>/`: a publisher's directory. The caller has validated pub_id. */
export function publisherDir(runDir: string, pubId: string): string {
  return join(runDir, RUN_DIR_SUBTREES.publishers, pubId);
}

/** `<run_dir>/pub/<pub_id>/<kind>.sock`. The caller has validated pub_id. */
export function publisherSocketPath(runDir: string, pubId: string, kind: Kind): string {
  return join(runDir, RUN_DIR_SUBTREES.publishers, pubId, `${kind}.sock`);
}

/**
 * `<run_dir>/pub/<pub_id>/handoff.sock`: where a publisher that takes its connections over
 * from the gateway listens (SOCK_SEQPACKET; gateway/handoff.ts). The caller has validated pub_id.
 */
export function publisherHandoffPath(runDir: string, pubId: string): string {
  return join(runDir, RUN_DIR_SUBTREES.publishers, pubId, "handoff.sock");
}

/** `<run_dir>/hotlink/<user>.sock`: the control socket of `user`'s hotlink daemon. */
export function hotlinkControlPath(runDir: string, user: string): string {
  return join(runDir, RUN_DIR_SUBTREES.hotlink, `${user}.sock`);
}

/** `<run_dir>/supervisor/control.sock`: `stoa supervisor run`'s control socket. */
export function supervisorControlPath(runDir: string): string {
  return join(runDir, RUN_DIR_SUBTREES.supervisor, "control.sock");
}

/** The socket names of a publisher's directory, one per kind. */
const PUBLISHER_SOCKETS: readonly `${Kind}.sock`[] = KINDS.map((kind) => `${kind}.sock` as const);

/**
 * Leftovers of the layout before `pub/`: directories directly in the run dir, other than the
 * subtrees, that hold a publisher's socket name. Nothing routes to them; `stoa doctor` and a
 * starting gateway name them so that a publisher still serving there is not silently lost.
 */
export function oldLayoutPublisherDirs(runDir: string): string[] {
  const subtrees = new Set<string>(Object.values(RUN_DIR_SUBTREES));
  let dirs: string[];
  try {
    dirs = readdirSync(runDir, { withFileTypes: true })
      .filter((d) => d.isDirectory() && !subtrees.has(d.name))
      .map((d) => d.name);
  } catch {
    return []; // no run dir: nothing left over
  }
  return dirs.sort().filter((name) => {
    try {
      return readdirSync(join(runDir, name)).some((n) => (PUBLISHER_SOCKETS as readonly string[]).includes(n));
    } catch {
      return false;
    }
  });
}
