/**
 * Where a (kind, pub_id) goes: explicit registrations first, then the run-dir convention
 * `<run_dir>/pub/<pub_id>/<kind>.sock` (protocol.ts; the layout is core/paths.ts'). The main
 * thread owns the authoritative table and sends every change to the workers as a `RouteUpdate`,
 * which each applies to its copy.
 *
 * A conventional target is only ever a socket in the publishers' subtree: callers pass only
 * validated pub_ids (no `/`, never starting with `.`), so the path cannot leave `<run_dir>/pub/`,
 * and before connecting one the router asks `conventionalTargetProblem`, which lstat()s (never
 * following a symlink) the pub_id's directory and the socket: a real directory and a real socket,
 * both owned by the expected uid (the gateway's effective uid), or it is not a publisher (404).
 * So nothing else in the run dir — the control socket, a hotlink daemon's socket, a leftover of
 * the old `<run_dir>/<pub_id>/` layout, a file, a symlink, another user's socket — is reachable.
 */
import { lstatSync, type Stats } from "node:fs";
import { lstat, readdir } from "node:fs/promises";
import { publisherDir, publisherHandoffPath, publishersDir, publisherSocketPath } from "../core/paths.ts";
import { isValidPubId } from "../stream/names.ts";
import { KINDS, type Kind, parseTarget, type Registration, type Target } from "./protocol.ts";
import { errnoCode, describeError } from "../core/errors.ts";

/** Whom a publisher's directory and sockets must belong to: the gateway's own effective uid. */
export const PUBLISHER_UID: number = process.geteuid?.() ?? -1;

/** A change to the table, applied in the same order on the main thread and in every worker. */
export type RouteUpdate =
  | { op: "set"; registration: Registration }
  | { op: "delete"; pubId: string; kind: Kind | null }
  | { op: "replace"; registrations: Registration[] };

/** A resolved target and where it came from. */
interface Resolved {
  source: "explicit" | "convention";
  target: Target;
}

interface Explicit {
  registration: Registration;
  target: Target;
}

export class RouteTable {
  readonly #byKind: Record<Kind, Map<string, Explicit>> = {
    service: new Map(),
    string: new Map(),
    ping: new Map(),
  };

  /** Number of explicit registrations. */
  get size(): number {
    return this.#byKind.service.size + this.#byKind.string.size + this.#byKind.ping.size;
  }

  /** Whether (kind, pub_id) has an explicit registration. */
  has(kind: Kind, pubId: string): boolean {
    return this.#byKind[kind].has(pubId);
  }

  /** Applies an update; returns the registrations it removed (for `delete`). */
  apply(update: RouteUpdate): Registration[] {
    switch (update.op) {
      case "set": {
        const r = update.registration;
        this.#byKind[r.kind].set(r.pub_id, { registration: r, target: parseTarget(r.target) });
        return [];
      }
      case "delete": {
        const removed: Registration[] = [];
        for (const kind of update.kind === null ? KINDS : [update.kind]) {
          const found = this.#byKind[kind].get(update.pubId);
          if (found === undefined) continue;
          this.#byKind[kind].delete(update.pubId);
          removed.push(found.registration);
        }
        return removed;
      }
      case "replace": {
        for (const kind of KINDS) this.#byKind[kind].clear();
        for (const r of update.registrations) this.apply({ op: "set", registration: r });
        return [];
      }
    }
  }

  /** Every explicit registration, kinds in port order. */
  all(): Registration[] {
    return KINDS.flatMap((kind) => [...this.#byKind[kind].values()].map((e) => e.registration));
  }

  /** The target for a validated pub_id: its registration, else its conventional socket. */
  resolve(kind: Kind, pubId: string, runDir: string): Resolved {
    const explicit = this.#byKind[kind].get(pubId);
    if (explicit !== undefined) return { source: "explicit", target: explicit.target };
    return { source: "convention", target: { kind: "unix", path: publisherSocketPath(runDir, pubId, kind) } };
  }
}

/**
 * Why the conventional target of (pubId, kind) must not be connected, or null when it may: its
 * directory must be a directory and the target a socket, neither a symlink, both owned by `uid`.
 * Two lstat() calls, no following of symlinks below `<run_dir>/pub/`. A file replaced between
 * this check and the connect could only be by someone who may write the publisher's directory.
 */
export function conventionalTargetProblem(runDir: string, pubId: string, kind: Kind, uid = PUBLISHER_UID): string | null {
  try {
    const dir = lstatSync(publisherDir(runDir, pubId), { throwIfNoEntry: false });
    if (dir === undefined) return "no such publisher directory";
    if (!dir.isDirectory()) return "the publisher's path is not a directory";
    if (dir.uid !== uid) return `the publisher directory belongs to uid ${dir.uid}, not ${uid}`;
    const sock = lstatSync(publisherSocketPath(runDir, pubId, kind), { throwIfNoEntry: false });
    return socketProblem(sock, uid);
  } catch (err) {
    return `cannot inspect it (${errnoCode(err) || describeError(err)})`;
  }
}

/**
 * Whether a publisher takes connections over (gateway/handoff.ts): null when
 * `<run_dir>/pub/<pub_id>/handoff.sock` is a real socket owned by `uid`, else why not. Asked
 * after `conventionalTargetProblem` passed for the kind, which vouched for the directory.
 */
export function handoffTargetProblem(runDir: string, pubId: string, uid = PUBLISHER_UID): string | null {
  try {
    return socketProblem(lstatSync(publisherHandoffPath(runDir, pubId), { throwIfNoEntry: false }), uid);
  } catch (err) {
    return `cannot inspect it (${errnoCode(err) || describeError(err)})`;
  }
}

function socketProblem(st: Stats | undefined, uid: number): string | null {
  if (st === undefined) return "no such socket";
  if (!st.isSocket()) return "not a socket";
  if (st.uid !== uid) return `the socket belongs to uid ${st.uid}, not ${uid}`;
  return null;
}

/** A conventional socket found in the publishers' subtree. */
interface ConventionEntry {
  pubId: string;
  kind: Kind;
  path: string;
}

/**
 * The conventional sockets in `<run_dir>/pub/`, at most `limit` of them (`truncated` when more
 * may exist): exactly those the router would connect (see `conventionalTargetProblem`). Names
 * that are not valid pub_ids are skipped, so no path outside the subtree is ever built; the rest
 * of the run dir (other subsystems, leftovers of the old layout) is never looked at.
 */
export async function scanRunDir(
  runDir: string,
  limit: number,
  uid = PUBLISHER_UID,
): Promise<{ entries: ConventionEntry[]; truncated: boolean }> {
  const entries: ConventionEntry[] = [];
  let dirs: string[];
  try {
    // A Dirent of a symlink is not a directory: symlinked publisher directories are skipped.
    dirs = (await readdir(publishersDir(runDir), { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name);
  } catch {
    return { entries, truncated: false }; // no publishers' subtree yet: nothing published
  }
  dirs.sort();
  for (const pubId of dirs) {
    if (!isValidPubId(pubId)) continue;
    let names: Set<string>;
    try {
      if ((await lstat(publisherDir(runDir, pubId))).uid !== uid) continue;
      names = new Set(await readdir(publisherDir(runDir, pubId)));
    } catch {
      continue; // removed meanwhile, or not ours to read
    }
    for (const kind of KINDS) {
      if (!names.has(`${kind}.sock`)) continue;
      const path = publisherSocketPath(runDir, pubId, kind);
      if (socketProblem(await lstat(path).catch(() => undefined), uid) !== null) continue;
      if (entries.length >= limit) return { entries, truncated: true };
      entries.push({ pubId, kind, path });
    }
  }
  return { entries, truncated: false };
}

