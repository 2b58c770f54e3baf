/**
 * Where stoa keeps its sockets and state, by convention (every command takes a flag to
 * override): the run dir holds Unix sockets and is lost at reboot, the state dir holds data that
 * must survive restarts (the metaserver's SQLite file).
 *
 *   run dir:   /run/stoa as root, else $XDG_RUNTIME_DIR/stoa, else /tmp/stoa-<uid>
 *   state dir: /var/lib/stoa as root, else $XDG_STATE_HOME/stoa, else ~/.local/state/stoa
 *
 * Inside the run dir: `gateway.sock` (the gateway's control socket) and one directory per
 * publisher, `<pub_id>/` (mode 0700), holding `service.sock`, `string.sock` and `ping.sock`.
 */
import { homedir } from "node:os";
import { join } from "node:path";
import type { Kind } from "../stream/names.ts";

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

/** `<run_dir>/gateway.sock`: the gateway's control socket. */
export function gatewayControlPath(runDir: string): string {
  return join(runDir, "gateway.sock");
}

/** `<run_dir>/<pub_id>/`: a publisher's directory. The caller has validated pub_id. */
export function publisherDir(runDir: string, pubId: string): string {
  return join(runDir, pubId);
}

/** `<run_dir>/<pub_id>/<kind>.sock`. */
export function publisherSocketPath(runDir: string, pubId: string, kind: Kind): string {
  return join(runDir, pubId, `${kind}.sock`);
}
