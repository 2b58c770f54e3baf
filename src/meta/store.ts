/**
 * The metaserver's registrations on SQLite (bun:sqlite): a file for `stoa meta --db PATH`, or
 * `:memory:` for tests and throwaway nodes.
 *
 * Contract:
 * - A file database is opened in WAL mode with an exclusive lock, so a second metaserver on the
 *   same file fails at start ("in_use") instead of both corrupting each other's view. Every
 *   write is committed before the call returns; a restart loses no registration.
 * - Every method is synchronous and short: the store never waits on the network, so nothing
 *   here can hold a transaction across a ping. Callers that need a round trip (confirmation)
 *   read with `get`, release, ping, then write with `markLive`/`removeIf`, which only act on
 *   the same registration (its `generation`) and report when it changed meanwhile.
 * - Rule violations throw `MetaApiError` with the rule in words; the HTTP layer only maps codes.
 * - Opening the store restarts every TTL clock: the metaserver's own downtime does not count
 *   against publishers, whose heartbeats could not reach it. (The pending clock of an
 *   unconfirmed registration, `PENDING_EXPIRY_MS` from `registered_at`, is not restarted.)
 * - Each registration has an owner: `t:<hex SHA-256 of the token>` that made it, `a:<address>`
 *   for one made under --no-auth, or "" (written by schema 1). Only a `t:` owner is enforced;
 *   the others are taken over only by the admin (`mayWrite`, `claim`). Quotas (protocol.ts)
 *   count registrations by owner; "pending" there means never confirmed, whatever the state.
 */
import { Database } from "bun:sqlite";
import { chmodSync, existsSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { StoaError, describeError, errnoCode } from "../core/errors.ts";
import { ANYONE, checkQuotas, DEFAULT_QUOTAS, mayWrite, notOwner, type Quotas, type Writer } from "./owners.ts";
import {
  MAX_PUBLISHERS,
  MetaApiError,
  PENDING_EXPIRY_MS,
  type PublisherInfo,
  publisherUrls,
  type PublisherState,
  type Registration,
  type TreeNode,
} from "./protocol.ts";

/**
 * Bumped when the table layout changes; a newer file is refused rather than misread, an older
 * one migrated (`MIGRATIONS`). 2 added `owner`.
 */
export const SCHEMA_VERSION = 2;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS publishers (
  generation    INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: identifies one registration
  pub_id        TEXT NOT NULL UNIQUE,
  name          TEXT NOT NULL UNIQUE,              -- the index serves prefix range scans too
  host          TEXT NOT NULL,
  port_service  INTEGER NOT NULL,
  port_string   INTEGER NOT NULL,
  port_ping     INTEGER NOT NULL,
  state         TEXT NOT NULL CHECK (state IN ('pending', 'live', 'stale')),
  confirmed     INTEGER NOT NULL DEFAULT 0,        -- ever confirmed: where a heartbeat brings a stale one back
  registered_at INTEGER NOT NULL,                  -- ms since the epoch
  last_seen     INTEGER NOT NULL,                  -- ms: last register, confirm or heartbeat
  owner         TEXT NOT NULL DEFAULT ''           -- who may write it, and whose quota it counts in
) STRICT;
CREATE INDEX IF NOT EXISTS publishers_last_seen ON publishers (last_seen);
CREATE INDEX IF NOT EXISTS publishers_owner ON publishers (owner, state);
CREATE INDEX IF NOT EXISTS publishers_owner_unconfirmed ON publishers (owner, confirmed);
CREATE INDEX IF NOT EXISTS publishers_unconfirmed ON publishers (confirmed, registered_at);
CREATE INDEX IF NOT EXISTS publishers_state ON publishers (state);
`;

/** From version N (the key) to N+1, run before SCHEMA (which adds what is new, e.g. indexes). */
const MIGRATIONS: Record<number, string> = {
  1: "ALTER TABLE publishers ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
};

interface Row {
  generation: number;
  pub_id: string;
  name: string;
  host: string;
  port_service: number;
  port_string: number;
  port_ping: number;
  state: PublisherState;
  confirmed: number;
  registered_at: number;
  last_seen: number;
  owner: string;
}

/** A registration as stored: the API's view plus what confirmation and sweeping need. */
interface StoredPublisher {
  info: PublisherInfo;
  /** Identifies this registration; a re-registration of the same pub_id gets a new one. */
  generation: number;
  lastSeen: number;
  owner: string;
}

/** One page of a list: the publishers, and the name to continue after (null on the last page). */
interface Page {
  publishers: PublisherInfo[];
  next: string | null;
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
}


interface SweepResult {
  staled: PublisherInfo[];
  removed: PublisherInfo[];
  /** Pending registrations never confirmed within the pending expiry. */
  expired: PublisherInfo[];
}

const COLUMNS =
  "generation, pub_id, name, host, port_service, port_string, port_ping, state, confirmed, registered_at, last_seen, owner";

// Names are ASCII and '0' follows '/' in byte order, so everything strictly below `p` (`p/...`)
// sorts in [p + "/", p + "0"): a range scan on the name index, with no LIKE escaping of '_'.
function belowRange(prefix: string): [string, string] {
  return [`${prefix}/`, `${prefix}0`];
}

/**
 * The registrations, on SQLite.
 *
 * @example
 * ```ts
 * const store = MetaStore.open(":memory:");
 * const { info } = store.register({ name: "lab/temp", pub_id: "t1", host: "fd00::1", ports });
 * store.list("lab"); // [info]
 * store.close();
 * ```
 */
export class MetaStore {
  readonly #now: () => number;
  readonly #maxPublishers: number;
  readonly #quotas: Quotas;
  readonly #adminOwner: string;
  readonly pendingExpiryMs: number;
  readonly #db: Database;

  private constructor(db: Database, options: StoreOptions) {
    this.#db = db;
    this.#now = options.clock ?? Date.now;
    this.#maxPublishers = options.maxPublishers ?? MAX_PUBLISHERS;
    this.pendingExpiryMs = options.pendingExpiryMs ?? PENDING_EXPIRY_MS;
    this.#adminOwner = options.adminOwner ?? "";
    this.#quotas = { ...DEFAULT_QUOTAS, ...options.quotas };
  }

  /** Opens (creating if needed) the database at `path`, or an in-memory one for `:memory:`. */
  static open(path: string, options: StoreOptions = {}): MetaStore {
    let db: Database;
    try {
      if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
      db = new Database(path, { create: true, strict: true });
    } catch (err) {
      throw new StoaError("io", `cannot open the metaserver database ${path}: ${errorText(err)}; check the --db path and its permissions`, {
        cause: err,
      });
    }
    try {
      if (path !== ":memory:") {
        // Exclusive: one metaserver per file. It must be set before WAL is first used.
        db.exec("PRAGMA locking_mode = EXCLUSIVE");
        db.exec("PRAGMA journal_mode = WAL");
        // NORMAL in WAL mode survives a crash of this process; only power loss may drop the
        // last commits, and publishers re-register when a heartbeat answers 404.
        db.exec("PRAGMA synchronous = NORMAL");
        // Only the metaserver's user reads who registered what (owner hashes included), whatever
        // the directory's mode; the WAL and shared-memory files SQLite made go the same way.
        for (const file of [path, `${path}-wal`, `${path}-shm`]) {
          if (existsSync(file)) chmodSync(file, 0o600);
        }
      }
      db.exec("PRAGMA busy_timeout = 0");
      db.exec("BEGIN IMMEDIATE"); // takes the exclusive lock now, not at the first request
      const version = db.query<{ user_version: number }, []>("PRAGMA user_version").get()?.user_version ?? 0;
      if (version > SCHEMA_VERSION) {
        throw new StoaError("config", `${path} was written by a newer stoa (schema ${version}, this one knows ${SCHEMA_VERSION}); upgrade stoa or use another --db`);
      }
      const tables = db.query<{ n: number }, []>("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'publishers'").get();
      if ((tables?.n ?? 0) > 0) {
        for (let v = Math.max(version, 1); v < SCHEMA_VERSION; v++) {
          const step = MIGRATIONS[v];
          if (step === undefined) throw new StoaError("internal", `no migration of the metaserver schema from version ${v}`);
          db.exec(step);
        }
      }
      db.exec(SCHEMA);
      db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
      const store = new MetaStore(db, options);
      db.query("UPDATE publishers SET last_seen = max(last_seen, ?)").run(store.#now());
      db.exec("COMMIT");
      return store;
    } catch (err) {
      db.close();
      if (err instanceof StoaError) throw err;
      const busy = errnoCode(err).startsWith("SQLITE_BUSY");
      if (busy) {
        throw new StoaError("in_use", `the metaserver database ${path} is in use by another process (another stoa meta or stoa up?); stop it or pass another --db`, { cause: err });
      }
      throw new StoaError("io", `cannot use the metaserver database ${path}: ${errorText(err)}`, { cause: err });
    }
  }

  /**
   * Adds a registration, or replaces the one with the same pub_id and name (a restarted
   * publisher), or takes over the name of a stale one. `created` is false for a replacement.
   * Only the registration's owner or the admin may replace it or take its stale name (403).
   * Throws `MetaApiError` for duplicates (409), name rules (400), quotas (429) and a full
   * store (503).
   */
  register(reg: Registration & { pub_id: string }, writer: Writer = ANYONE): { info: PublisherInfo; created: boolean } {
    const run = this.#db.transaction((): { info: PublisherInfo; created: boolean } => {
      const now = this.#now();
      const byId = this.#rowByPubId(reg.pub_id);
      if (byId !== null && mayWrite(byId.owner, writer) === "no") throw notOwner(byId.pub_id, byId.name);
      if (byId !== null && byId.name !== reg.name) {
        throw new MetaApiError(
          "duplicate_pub_id",
          `pub_id ${reg.pub_id} is already registered as ${byId.name}; omit pub_id to get a fresh one`,
        );
      }
      const byName = byId ?? this.#db.query<Row, [string]>(`SELECT ${COLUMNS} FROM publishers WHERE name = ?`).get(reg.name);
      if (byName !== null && byName.pub_id !== reg.pub_id) {
        if (byName.state !== "stale" || mayWrite(byName.owner, writer) === "no") {
          const ago = Math.max(0, Math.round((now - byName.last_seen) / 1000));
          const wait = byName.state === "stale" ? "wait until it is removed" : "wait until it misses its heartbeats and turns stale";
          throw new MetaApiError(
            "duplicate_name",
            `name ${reg.name} is registered by pub_id ${byName.pub_id} (${byName.state}, last heard from ${ago}s ago); ` +
              `choose another name, deregister that one, or ${wait}`,
          );
        }
        this.#db.query("DELETE FROM publishers WHERE generation = ?").run(byName.generation);
      }
      this.#checkLeaf(reg.name);
      const replaced = byName !== null && byName.pub_id === reg.pub_id;
      if (replaced) this.#db.query("DELETE FROM publishers WHERE generation = ?").run(byName.generation);
      // Registering again does not restart the pending clock of one never confirmed: otherwise
      // re-registering every few seconds would keep an unconfirmable entry forever.
      const since = replaced && byName.confirmed === 0 ? byName.registered_at : now;
      checkQuotas(this.#db, { ...this.#quotas, maxPublishers: this.#maxPublishers, adminOwner: this.#adminOwner }, writer, replaced);
      const row = this.#db
        .query<Row, [string, string, string, number, number, number, number, number, string]>(
          `INSERT INTO publishers (pub_id, name, host, port_service, port_string, port_ping, state, confirmed, registered_at, last_seen, owner)
           VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?) RETURNING ${COLUMNS}`,
        )
        .get(reg.pub_id, reg.name, reg.host, reg.ports.service, reg.ports.string, reg.ports.ping, since, now, writer.owner);
      if (row === null) throw new StoaError("internal", "INSERT … RETURNING returned no row");
      return { info: toInfo(row), created: !replaced };
    });
    return run.immediate();
  }

  /** Gives a registration without a token owner to `owner` (the first authenticated write). */
  claim(pubId: string, owner: string): void {
    this.#db.query("UPDATE publishers SET owner = ? WHERE pub_id = ? AND owner NOT LIKE 't:%'").run(owner, pubId);
  }

  /** The registration with this pub_id, or null. */
  get(pubId: string): StoredPublisher | null {
    const row = this.#rowByPubId(pubId);
    return row === null ? null : { info: toInfo(row), generation: row.generation, lastSeen: row.last_seen, owner: row.owner };
  }

  /**
   * Registrations whose name is `prefix` or lies below it ("" for all), ordered by name: at most
   * `limit` of them after the name `after` (null: from the start).
   */
  page(prefix: string, limit: number, after: string | null): Page {
    const rows: Row[] = [];
    const from = after ?? "";
    // limit + 1 rows say whether there is a next page.
    if (prefix === "") {
      rows.push(...this.#db.query<Row, [string, number]>(`SELECT ${COLUMNS} FROM publishers WHERE name > ? ORDER BY name LIMIT ?`).all(from, limit + 1));
    } else {
      // `prefix` itself sorts before everything below it; names between the two ("a-x" for "a")
      // are not scanned: two index lookups instead of one range with a filter.
      if (prefix > from) {
        const exact = this.#db.query<Row, [string]>(`SELECT ${COLUMNS} FROM publishers WHERE name = ?`).get(prefix);
        if (exact !== null) rows.push(exact);
      }
      const [lo, hi] = belowRange(prefix);
      rows.push(
        ...this.#db
          .query<Row, [string, string, string, number]>(
            `SELECT ${COLUMNS} FROM publishers WHERE name >= ? AND name > ? AND name < ? ORDER BY name LIMIT ?`,
          )
          .all(lo, from, hi, limit + 1 - rows.length),
      );
    }
    const more = rows.length > limit;
    const shown = more ? rows.slice(0, limit) : rows;
    return { publishers: shown.map(toInfo), next: more ? (shown.at(-1)?.name ?? null) : null };
  }

  /** Every registration under `prefix` ("" for all), by name; for tests and small registries. */
  list(prefix: string): PublisherInfo[] {
    const out: PublisherInfo[] = [];
    for (let after: string | null = null; ; ) {
      const { publishers, next } = this.page(prefix, 10_000, after);
      out.push(...publishers);
      if (next === null) return out;
      after = next;
    }
  }

  /** The registration named exactly `name`, or null. */
  byName(name: string): PublisherInfo | null {
    const row = this.#db.query<Row, [string]>(`SELECT ${COLUMNS} FROM publishers WHERE name = ?`).get(name);
    return row === null ? null : toInfo(row);
  }

  /**
   * The names of one page (`page`'s arguments) as nested directory nodes with publishers as
   * leaves, and where the next page starts.
   */
  tree(prefix: string, limit = Number.MAX_SAFE_INTEGER, after: string | null = null): { tree: TreeNode[]; next: string | null } {
    const root: TreeNode[] = [];
    const { publishers, next } = this.page(prefix, Math.min(limit, 1_000_000), after);
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
    return { tree: root, next };
  }

  /**
   * Records a heartbeat: restarts the TTL clock and brings a stale registration back (`live`
   * if it was ever confirmed, else `pending`). Null when there is no such registration; 403
   * when `writer` does not own it.
   */
  heartbeat(pubId: string, writer: Writer = ANYONE): PublisherInfo | null {
    if (!this.authorize(pubId, writer)) return null;
    const row = this.#db
      .query<Row, [number, string]>(
        `UPDATE publishers SET last_seen = ?,
           state = CASE WHEN state = 'stale' THEN (CASE WHEN confirmed = 1 THEN 'live' ELSE 'pending' END) ELSE state END
         WHERE pub_id = ? RETURNING ${COLUMNS}`,
      )
      .get(this.#now(), pubId);
    return row === null ? null : toInfo(row);
  }

  /** Marks that registration live after a successful confirmation; null if it changed or went away. */
  markLive(pubId: string, generation: number): PublisherInfo | null {
    const row = this.#db
      .query<Row, [number, string, number]>(
        `UPDATE publishers SET state = 'live', confirmed = 1, last_seen = ?
         WHERE pub_id = ? AND generation = ? RETURNING ${COLUMNS}`,
      )
      .get(this.#now(), pubId, generation);
    return row === null ? null : toInfo(row);
  }

  /** Removes that registration (after a failed confirmation); false if it changed or went away. */
  removeIf(pubId: string, generation: number): boolean {
    return this.#db.query("DELETE FROM publishers WHERE pub_id = ? AND generation = ?").run(pubId, generation).changes > 0;
  }

  /** Removes the registration with this pub_id and returns it as it was, or null; 403 when `writer` does not own it. */
  remove(pubId: string, writer: Writer = ANYONE): PublisherInfo | null {
    if (!this.authorize(pubId, writer)) return null;
    const row = this.#db.query<Row, [string]>(`DELETE FROM publishers WHERE pub_id = ? RETURNING ${COLUMNS}`).get(pubId);
    return row === null ? null : toInfo(row);
  }

  /**
   * Applies the TTL: registrations not heard from for `ttlMs` turn stale; those not heard from
   * for `ttlMs + deregisterAfterMs` are removed.
   */
  sweep(ttlMs: number, deregisterAfterMs: number): SweepResult {
    const run = this.#db.transaction((): SweepResult => {
      const now = this.#now();
      const removed = this.#db
        .query<Row, [number]>(`DELETE FROM publishers WHERE last_seen <= ? RETURNING ${COLUMNS}`)
        .all(now - ttlMs - deregisterAfterMs)
        .map(toInfo);
      // Never confirmed in time: removed whatever heartbeats say (only the register counts).
      const expired = this.#db
        .query<Row, [number]>(
          `DELETE FROM publishers WHERE confirmed = 0 AND registered_at <= ? RETURNING ${COLUMNS}`,
        )
        .all(now - this.pendingExpiryMs)
        .map(toInfo);
      const staled = this.#db
        .query<Row, [number]>(
          `UPDATE publishers SET state = 'stale' WHERE state != 'stale' AND last_seen <= ? RETURNING ${COLUMNS}`,
        )
        .all(now - ttlMs)
        .map(toInfo);
      return { staled, removed, expired };
    });
    return run.immediate();
  }

  /** How many registrations are in each state. */
  counts(): Record<PublisherState, number> {
    const out: Record<PublisherState, number> = { pending: 0, live: 0, stale: 0 };
    const rows = this.#db
      .query<{ state: PublisherState; n: number }, []>("SELECT state, count(*) AS n FROM publishers GROUP BY state")
      .all();
    for (const { state, n } of rows) out[state] = n;
    return out;
  }

  /** Closes the database (a file database is checkpointed and its lock released). */
  close(): void {
    this.#db.close();
  }

  /**
   * Whether the registration exists and `writer` may change it (taking it over when it has no
   * token owner); throws the 403 when it may not. Synchronous: nothing runs between this check
   * and the caller's write.
   */
  authorize(pubId: string, writer: Writer): boolean {
    const row = this.#rowByPubId(pubId);
    if (row === null) return false;
    const may = mayWrite(row.owner, writer);
    if (may === "no") throw notOwner(row.pub_id, row.name);
    if (may === "claim") this.claim(pubId, writer.owner);
    return true;
  }

  #rowByPubId(pubId: string): Row | null {
    return this.#db.query<Row, [string]>(`SELECT ${COLUMNS} FROM publishers WHERE pub_id = ?`).get(pubId);
  }


  /** Names are leaves: nothing registered above `name`, nothing below it. */
  #checkLeaf(name: string): void {
    const segments = name.split("/");
    const ancestors = segments.slice(0, -1).map((_, i) => segments.slice(0, i + 1).join("/"));
    if (ancestors.length > 0) {
      const parent = this.#db
        .query<{ name: string; pub_id: string }, string[]>(
          `SELECT name, pub_id FROM publishers WHERE name IN (${ancestors.map(() => "?").join(", ")}) ORDER BY name LIMIT 1`,
        )
        .get(...ancestors);
      if (parent !== null) {
        throw new MetaApiError(
          "parent_is_publisher",
          `name ${name} lies below publisher ${parent.name} (pub_id ${parent.pub_id}); publishers are leaves, so choose a name outside ${parent.name}/`,
        );
      }
    }
    const [from, to] = belowRange(name);
    const below = this.#db
      .query<{ name: string }, [string, string]>("SELECT name FROM publishers WHERE name >= ? AND name < ? ORDER BY name LIMIT 4")
      .all(from, to)
      .map((r) => r.name);
    if (below.length > 0) {
      const shown = below.length > 3 ? `${below.slice(0, 3).join(", ")}, …` : below.join(", ");
      throw new MetaApiError(
        "name_is_directory",
        `name ${name} is a directory holding other publishers (${shown}); publishers are leaves, so choose a name such as ${name}/<something>`,
      );
    }
  }
}

function toInfo(row: Row): PublisherInfo {
  const ports = { service: row.port_service, string: row.port_string, ping: row.port_ping };
  return {
    name: row.name,
    pub_id: row.pub_id,
    host: row.host,
    ports,
    urls: publisherUrls(row.host, ports, row.pub_id),
    state: row.state,
    registered_at: new Date(row.registered_at).toISOString(),
  };
}

// Rows arrive in full-name order, where "b-c" sorts before "b/x"; people read segment order.
function sortTree(nodes: TreeNode[]): void {
  nodes.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const node of nodes) if (node.children) sortTree(node.children);
}

function errorText(err: unknown): string {
  return describeError(err);
}
