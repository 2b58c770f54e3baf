/**
 * Where a (kind, pub_id) goes: explicit registrations first, then the run-dir convention
 * `<run_dir>/<pub_id>/<kind>.sock` (protocol.ts). The main thread owns the authoritative table
 * and sends every change to the workers as a `RouteUpdate`, which each applies to its copy.
 * Callers pass only validated pub_ids: a pub_id cannot contain `/` or start with `.`, so the
 * convention path never leaves the run dir.
 */
import { readdir } from "node:fs/promises";
import { publisherDir, publisherSocketPath } from "../core/paths.ts";
import { isValidPubId } from "../stream/names.ts";
import { KINDS, type Kind, parseTarget, type Registration, type Target } from "./protocol.ts";

/** A change to the table, applied in the same order on the main thread and in every worker. */
export type RouteUpdate =
  | { op: "set"; registration: Registration }
  | { op: "delete"; pubId: string; kind: Kind | null }
  | { op: "replace"; registrations: Registration[] };

/** A resolved target and where it came from. */
export interface Resolved {
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

/** A conventional socket found in the run dir. */
export interface ConventionEntry {
  pubId: string;
  kind: Kind;
  path: string;
}

/**
 * The conventional sockets present in `runDir`, at most `limit` of them (`truncated` when more
 * may exist). Directories whose names are not valid pub_ids are skipped: no path outside the
 * run dir is ever built.
 */
export async function scanRunDir(runDir: string, limit: number): Promise<{ entries: ConventionEntry[]; truncated: boolean }> {
  const entries: ConventionEntry[] = [];
  let dirs: string[];
  try {
    dirs = (await readdir(runDir, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name);
  } catch {
    return { entries, truncated: false }; // no run dir yet: nothing published
  }
  dirs.sort();
  for (const pubId of dirs) {
    if (!isValidPubId(pubId)) continue;
    let names: Set<string>;
    try {
      names = new Set(await readdir(publisherDir(runDir, pubId)));
    } catch {
      continue; // removed meanwhile, or not ours to read
    }
    for (const kind of KINDS) {
      if (!names.has(`${kind}.sock`)) continue;
      if (entries.length >= limit) return { entries, truncated: true };
      entries.push({ pubId, kind, path: publisherSocketPath(runDir, pubId, kind) });
    }
  }
  return { entries, truncated: false };
}
