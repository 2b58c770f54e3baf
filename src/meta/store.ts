/**
 * Where the metaserver keeps its registrations: the `Store` every store implements, and
 * `openStore` for a `--store` spec — `sqlite:PATH` (sqlite-store.ts: one metaserver per file,
 * `stoa up`'s and the default) or `redis://HOST:PORT[/DB]` (redis-store.ts: any number of
 * metaservers over one Redis serve the same registry).
 *
 * Contract, for both:
 * - Every method is one atomic step on the store: it never waits on anything but the store, so
 *   none holds a lock or transaction across a ping. Confirmation reads with `get`, takes the
 *   confirmation lease (`lease`), pings, then writes with `markLive`/`removeIf`, which only act
 *   on the same registration (its `generation`) and report when it changed meanwhile.
 * - Rule violations reject with `MetaApiError` (the rule in words); the HTTP layer only maps
 *   codes. A store that cannot be reached rejects with `MetaApiError` "store_unavailable" (503).
 * - Owners and quotas (owners.ts) are checked inside the same step as the write they guard.
 * - Every change is an event (`onEvent`) for /v1/watch: on Redis, every metaserver hears the
 *   changes made through any of them.
 */
import { join } from "node:path";
import { StoaError } from "../core/errors.ts";
import { MetaApiError } from "./protocol.ts";
import type { Logger } from "../core/log.ts";
import type { Quotas, Writer } from "./owners.ts";
import type { PublisherInfo, PublisherState, Registration, TreeNode } from "./protocol.ts";

/** A registration as stored: the API's view plus what confirmation and sweeping need. */
export interface StoredPublisher {
  info: PublisherInfo;
  /** Identifies this registration; a re-registration of the same pub_id gets a new one. */
  generation: number;
  lastSeen: number;
  owner: string;
}

/** One page of a list: the publishers, and the name to continue after (null on the last page). */
export interface Page {
  publishers: PublisherInfo[];
  next: string | null;
}

export interface SweepResult {
  staled: PublisherInfo[];
  removed: PublisherInfo[];
  /** Pending registrations never confirmed within the pending expiry. */
  expired: PublisherInfo[];
}

/** What /v1/watch streams: a registration appeared, was confirmed, turned stale, or went away. */
export type StoreEventType = "registered" | "confirmed" | "stale" | "removed";

export interface StoreEvent {
  type: StoreEventType;
  /** The registration as it is after the change (for "removed": as it was). */
  publisher: PublisherInfo;
}

export interface StoreOptions {
  /** Milliseconds since the epoch; tests move time by hand. */
  clock?: () => number;
  /** Most registrations held at once (default `MAX_PUBLISHERS`). */
  maxPublishers?: number;
  /** Quotas (defaults from protocol.ts), for tests that cannot register tens of thousands. */
  quotas?: Partial<Quotas>;
  /** How long a registration may stay pending (default `PENDING_EXPIRY_MS`). */
  pendingExpiryMs?: number;
  /** The owner key of the admin token: its registrations do not count against non-admin quotas. */
  adminOwner?: string;
  /**
   * Redis only: how long after its removal deadline a registration's key expires by itself
   * (the sweeper normally removes it first, with its event). Tests set it short.
   */
  keyGraceMs?: number;
  /** Redis only: the prefix of every key and channel (default "stoa:meta:"), e.g. one per test. */
  keyPrefix?: string;
  /**
   * Redis only: how long a registration is kept after its last heartbeat — the TTL plus the
   * deregister delay — which with `keyGraceMs` sets its key's expiry.
   */
  retainMs?: number;
  /** Redis only: how long opening waits for Redis to answer (default 10 s). */
  connectWaitMs?: number;
  /** Where a store says that its backend went away and came back (Redis). */
  log?: Logger;
}

export interface Store {
  /** The store as logs and /v1/health show it: `sqlite:PATH` or the Redis URL without its password. */
  readonly description: string;
  readonly pendingExpiryMs: number;
  /**
   * Adds a registration, or replaces the one with the same pub_id and name (a restarted
   * publisher), or takes over the name of a stale one. `created` is false for a replacement.
   * Only the registration's owner or the admin may replace it or take its stale name (403).
   * Rejects with `MetaApiError` for duplicates (409), name rules (400), quotas (429) and a full
   * store (503).
   */
  register(reg: Registration & { pub_id: string }, writer?: Writer): Promise<{ info: PublisherInfo; created: boolean }>;
  /** The registration with this pub_id, or null. */
  get(pubId: string): Promise<StoredPublisher | null>;
  /**
   * Whether the registration exists and `writer` may change it (taking it over when it has no
   * token owner); rejects with the 403 when it may not.
   */
  authorize(pubId: string, writer: Writer): Promise<boolean>;
  /**
   * Registrations whose name is `prefix` or lies below it ("" for all), ordered by name: at most
   * `limit` of them after the name `after` (null: from the start).
   */
  page(prefix: string, limit: number, after: string | null): Promise<Page>;
  /** The registration named exactly `name`, or null. */
  byName(name: string): Promise<PublisherInfo | null>;
  /**
   * Records a heartbeat: restarts the TTL clock and brings a stale registration back (`live`
   * if it was ever confirmed, else `pending`). Null when there is no such registration; 403
   * when `writer` does not own it.
   */
  heartbeat(pubId: string, writer?: Writer): Promise<PublisherInfo | null>;
  /**
   * Takes the confirmation lease of this registration for `ms` (false: another metaserver is
   * pinging it). It ends by itself, so a metaserver that dies mid-ping blocks nobody for long.
   */
  lease(pubId: string, generation: number, ms: number): Promise<boolean>;
  /** Gives the lease back early (after the ping and its write). */
  release(pubId: string, generation: number): Promise<void>;
  /** Marks that registration live after a successful confirmation; null if it changed or went away. */
  markLive(pubId: string, generation: number): Promise<PublisherInfo | null>;
  /** Removes that registration (after a failed confirmation); false if it changed or went away. */
  removeIf(pubId: string, generation: number): Promise<boolean>;
  /** Removes the registration with this pub_id and returns it as it was, or null; 403 when `writer` does not own it. */
  remove(pubId: string, writer?: Writer): Promise<PublisherInfo | null>;
  /**
   * Applies the TTL: registrations not heard from for `ttlMs` turn stale; those not heard from
   * for `ttlMs + deregisterAfterMs` are removed, and pending ones past the pending expiry.
   */
  sweep(ttlMs: number, deregisterAfterMs: number): Promise<SweepResult>;
  /** How many registrations are in each state. */
  counts(): Promise<Record<PublisherState, number>>;
  /** Calls `listener` with every change from now on (on Redis: made through any metaserver); returns the unsubscribe. */
  onEvent(listener: (event: StoreEvent) => void): () => void;
  /**
   * Calls `listener` when the event feed broke and changes may have been missed (Redis: the
   * subscription connection dropped): watchers should end their streams, so their clients
   * reconnect and look up again. Returns the unsubscribe. SQLite never calls it.
   */
  onLost(listener: () => void): () => void;
  /** Whether changes are heard now (Redis: the subscription is connected); a watch needs it. */
  readonly eventsUp: boolean;
  /** Closes the store (SQLite: checkpointed and unlocked; Redis: connections closed). */
  close(): Promise<void>;
}

/** A `--store` spec, parsed. */
export type StoreSpec = { kind: "sqlite"; path: string } | { kind: "redis"; url: string };

/**
 * `sqlite:PATH`, `sqlite::memory:`, `redis://[user:pass@]HOST:PORT[/DB]` or `rediss://…`; a bare
 * path (no scheme) is SQLite, as `--db` takes it. Throws StoaError "usage" for anything else.
 */
export function parseStoreSpec(text: string): StoreSpec {
  if (text.startsWith("redis://") || text.startsWith("rediss://")) {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new StoaError("usage", `--store ${text}: not a URL; expected redis://HOST:PORT[/DB]`);
    }
    if (url.hostname === "") throw new StoaError("usage", `--store ${text}: no host; expected redis://HOST:PORT[/DB]`);
    const db = url.pathname.replace(/^\//, "");
    if (db !== "" && !/^([0-9]|1[0-5])$/.test(db)) {
      throw new StoaError("usage", `--store ${text}: the database is a number 0-15 after the port (redis://HOST:PORT/3), not "${db}"`);
    }
    if (url.search !== "" || url.hash !== "") throw new StoaError("usage", `--store ${text}: no ?query or #fragment is understood`);
    return { kind: "redis", url: text };
  }
  if (text.startsWith("sqlite:")) {
    const path = text.slice("sqlite:".length);
    if (path === "") throw new StoaError("usage", "--store sqlite: needs a path: sqlite:/var/lib/stoa/meta.db or sqlite::memory:");
    return { kind: "sqlite", path };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) {
    throw new StoaError("usage", `--store ${text}: unknown store; use sqlite:PATH or redis://HOST:PORT[/DB]`);
  }
  if (text === "") throw new StoaError("usage", "--store needs sqlite:PATH or redis://HOST:PORT[/DB]");
  return { kind: "sqlite", path: text };
}

/** The default: SQLite in the state dir. */
export function defaultStoreSpec(stateDir: string): StoreSpec {
  return { kind: "sqlite", path: join(stateDir, "meta.db") };
}

/**
 * Opens the store a spec names. Rejects with StoaError ("in_use", "io", "config")
 * when it cannot be had.
 */
export async function openStore(spec: StoreSpec, options: StoreOptions = {}): Promise<Store> {
  if (spec.kind === "sqlite") {
    const { SqliteStore } = await import("./sqlite-store.ts");
    return SqliteStore.open(spec.path, options);
  }
  const { RedisStore } = await import("./redis-store.ts");
  return RedisStore.open(spec.url, options);
}

/**
 * The names of one page as nested directory nodes with publishers as leaves, sorted by
 * segment (a page comes sorted by full name, where "b-c" sorts before "b/x").
 */
export function treeOf(publishers: readonly PublisherInfo[]): TreeNode[] {
  const root: TreeNode[] = [];
  for (const info of publishers) {
    const segments = info.name.split("/");
    let level = root;
    segments.forEach((segment, i) => {
      const path = segments.slice(0, i + 1).join("/");
      const leaf = i === segments.length - 1;
      // Rows come sorted by name, so a node's children arrive together: check the last one.
      let node = level.at(-1);
      if (node?.name !== segment) {
        node = leaf ? { name: segment, path, pub_id: info.pub_id, state: info.state } : { name: segment, path, children: [] };
        level.push(node);
      }
      level = node.children ?? [];
    });
  }
  sortTree(root);
  return root;
}

function sortTree(nodes: TreeNode[]): void {
  nodes.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const node of nodes) if (node.children) sortTree(node.children);
}

/** Several listeners of a store's events; a listener that throws does not stop the others. */
export class EventFanout {
  readonly #listeners = new Set<(event: StoreEvent) => void>();

  add(listener: (event: StoreEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  emit(type: StoreEventType, publisher: PublisherInfo): void {
    for (const listener of this.#listeners) {
      try {
        listener({ type, publisher });
      } catch {
        // a watcher's failure is its own (watch.ts closes it)
      }
    }
  }

  get size(): number {
    return this.#listeners.size;
  }
}

/** The name and pub_id rules' errors, worded the same whatever the store. */
export const ruleErrors = {
  duplicatePubId: (pubId: string, name: string) =>
    new MetaApiError("duplicate_pub_id", `pub_id ${pubId} is already registered as ${name}; omit pub_id to get a fresh one`),
  duplicateName(name: string, holder: { pub_id: string; state: PublisherState; lastSeen: number }, now: number): MetaApiError {
    const ago = Math.max(0, Math.round((now - holder.lastSeen) / 1000));
    const wait = holder.state === "stale" ? "wait until it is removed" : "wait until it misses its heartbeats and turns stale";
    return new MetaApiError(
      "duplicate_name",
      `name ${name} is registered by pub_id ${holder.pub_id} (${holder.state}, last heard from ${ago}s ago); ` +
        `choose another name, deregister that one, or ${wait}`,
    );
  },
  parentIsPublisher: (name: string, parent: { name: string; pub_id: string }) =>
    new MetaApiError(
      "parent_is_publisher",
      `name ${name} lies below publisher ${parent.name} (pub_id ${parent.pub_id}); publishers are leaves, so choose a name outside ${parent.name}/`,
    ),
  nameIsDirectory(name: string, below: readonly string[]): MetaApiError {
    const shown = below.length > 3 ? `${below.slice(0, 3).join(", ")}, …` : below.join(", ");
    return new MetaApiError(
      "name_is_directory",
      `name ${name} is a directory holding other publishers (${shown}); publishers are leaves, so choose a name such as ${name}/<something>`,
    );
  },
};

/** The ancestors of a name, shortest first: "a/b/c" → ["a", "a/b"]. */
export function ancestorsOf(name: string): string[] {
  const segments = name.split("/");
  return segments.slice(0, -1).map((_, i) => segments.slice(0, i + 1).join("/"));
}

/**
 * Names are ASCII and '0' follows '/' in byte order, so everything strictly below `p` (`p/...`)
 * sorts in [p + "/", p + "0"): a range scan, with no pattern escaping.
 */
export function belowRange(prefix: string): [string, string] {
  return [`${prefix}/`, `${prefix}0`];
}

/** Every registration under `prefix` ("" for all), by name, page after page: for tests and small registries. */
export async function listAll(store: Store, prefix: string): Promise<PublisherInfo[]> {
  const out: PublisherInfo[] = [];
  for (let after: string | null = null; ; ) {
    const { publishers, next } = await store.page(prefix, 10_000, after);
    out.push(...publishers);
    if (next === null) return out;
    after = next;
  }
}

/**
 * A store's `PublisherInfo`s by generation: within one registration (generation) only the state
 * changes, so the view (URLs, ISO date) is built once per registration and state, not per
 * lookup — a tenth of a lookup's CPU. Bounded: emptied when full. Callers never change an info.
 */
export class InfoCache {
  readonly #infos = new Map<number, PublisherInfo>();
  readonly #max: number;

  constructor(max = 20_000) {
    this.#max = max;
  }

  of(generation: number, state: PublisherState, build: () => PublisherInfo): PublisherInfo {
    const hit = this.#infos.get(generation);
    if (hit !== undefined && hit.state === state) return hit;
    if (this.#infos.size >= this.#max) this.#infos.clear();
    const info = build();
    this.#infos.set(generation, info);
    return info;
  }
}
