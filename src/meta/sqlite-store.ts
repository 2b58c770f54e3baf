/**
 * The metaserver's registrations on SQLite (bun:sqlite): a file for `stoa meta --store
 * sqlite:PATH` (or `--db PATH`), or `:memory:` for tests and throwaway nodes. store.ts has the
 * contract every store keeps; on top of it:
 * - A file database is opened in WAL mode with an exclusive lock, so a second metaserver on the
 *   same file fails at start ("in_use") instead of both corrupting each other's view. Every
 *   write is committed before the call returns; a restart loses no registration.
 * - Every method's work is synchronous and short (the promise only wraps it): the store never
 *   waits on the network, so nothing here can hold a transaction across a ping.
 * - Opening the store restarts every TTL clock: the metaserver's own downtime does not count
 *   against publishers, whose heartbeats could not reach it. (The pending clock of an
 *   unconfirmed registration, `PENDING_EXPIRY_MS` from `registered_at`, is not restarted.)
 * - Each registration has an owner: `t:<hex SHA-256 of the token>` that made it, `a:<address>`
 *   for one made under --no-auth, or "" (written by schema 1). Only a `t:` owner is enforced;
 *   the others are taken over only by the admin (`mayWrite`, `claim`). Quotas (protocol.ts)
 *   count registrations by owner; "pending" there means never confirmed, whatever the state.
 */
import { Database, type SQLQueryBindings } from "bun:sqlite";
import { chmodSync, existsSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { StoaError, describeError, errnoCode } from "../core/errors.ts";
import { ANYONE, checkQuotas, DEFAULT_QUOTAS, mayWrite, notOwner, type Quotas, type Writer } from "./owners.ts";
import { ancestorsOf, belowRange, EventFanout, InfoCache, type Page, ruleErrors, type Store, type StoreEvent, type StoredPublisher, type StoreOptions, type SweepResult } from "./store.ts";
import {
  MAX_PUBLISHERS,
  MetaApiError,
  PENDING_EXPIRY_MS,
  type PublisherInfo,
  publisherUrls,
  type PublisherState,
  type Registration,
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

const COLUMNS =
  "generation, pub_id, name, host, port_service, port_string, port_ping, state, confirmed, registered_at, last_seen, owner";
// The lookups every request makes, as constants: built once, so bun:sqlite's statement cache
// finds them without a new string per call.
const BY_NAME = `SELECT ${COLUMNS} FROM publishers WHERE name = ?`;
const BY_PUB_ID = `SELECT ${COLUMNS} FROM publishers WHERE pub_id = ?`;
/** Rows the read cache holds at most. */
const ROW_CACHE_MAX = 20_000;

/**
 * The registrations, on SQLite.
 *
 * @example
 * ```ts
 * const store = SqliteStore.open(":memory:");
 * const { info } = await store.register({ name: "lab/temp", pub_id: "t1", host: "fd00::1", ports });
 * await store.list("lab"); // [info]
 * await store.close();
 * ```
 */
export class SqliteStore implements Store {
  readonly #now: () => number;
  readonly #maxPublishers: number;
  readonly #quotas: Quotas;
  readonly #adminOwner: string;
  readonly pendingExpiryMs: number;
  readonly description: string;
  readonly #db: Database;
  readonly #events = new EventFanout();
  readonly #infos = new InfoCache();
  /** Heartbeats waiting for this turn's commit (`heartbeat`). */
  readonly #beats: { pubId: string; writer: Writer; resolve: (info: PublisherInfo | null) => void; reject: (error: unknown) => void }[] = [];
  /**
   * Rows read lately, by pub_id and by name: this process is the file's only writer (the
   * exclusive lock), and every write forgets the rows it touches, so a hit is the row as stored
   * — a lookup without a query (a sixth of its CPU). Only rows that exist; emptied when full.
   */
  readonly #byId = new Map<string, Row>();
  readonly #byName = new Map<string, Row>();
  /** Confirmation leases: key → when it ends (one process: the API's own in-flight map does the rest). */
  readonly #leases = new Map<string, number>();

  private constructor(db: Database, path: string, options: StoreOptions) {
    this.#db = db;
    this.description = `sqlite:${path}`;
    this.#now = options.clock ?? Date.now;
    this.#maxPublishers = options.maxPublishers ?? MAX_PUBLISHERS;
    this.pendingExpiryMs = options.pendingExpiryMs ?? PENDING_EXPIRY_MS;
    this.#adminOwner = options.adminOwner ?? "";
    this.#quotas = { ...DEFAULT_QUOTAS, ...options.quotas };
  }

  /** Opens (creating if needed) the database at `path`, or an in-memory one for `:memory:`. */
  static open(path: string, options: StoreOptions = {}): SqliteStore {
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
      const store = new SqliteStore(db, path, options);
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

  async register(reg: Registration & { pub_id: string }, writer: Writer = ANYONE): Promise<{ info: PublisherInfo; created: boolean }> {
    const taken: PublisherInfo[] = [];
    const run = this.#db.transaction((): { info: PublisherInfo; created: boolean } => {
      const now = this.#now();
      const byId = this.#rowByPubId(reg.pub_id);
      if (byId !== null && mayWrite(byId.owner, writer) === "no") throw notOwner(byId.pub_id, byId.name);
      if (byId !== null && byId.name !== reg.name) throw ruleErrors.duplicatePubId(reg.pub_id, byId.name);
      const byName = byId ?? this.#rowByName(reg.name);
      if (byName !== null && byName.pub_id !== reg.pub_id) {
        if (byName.state !== "stale" || mayWrite(byName.owner, writer) === "no") {
          throw ruleErrors.duplicateName(reg.name, { pub_id: byName.pub_id, state: byName.state, lastSeen: byName.last_seen }, now);
        }
        this.#db.query("DELETE FROM publishers WHERE generation = ?").run(byName.generation);
        this.#forget(byName);
        taken.push(this.#info(byName));
      }
      this.#checkLeaf(reg.name);
      const replaced = byName !== null && byName.pub_id === reg.pub_id;
      if (replaced) {
        this.#db.query("DELETE FROM publishers WHERE generation = ?").run(byName.generation);
        this.#forget(byName);
      }
      // Registering again does not restart the pending clock of one never confirmed: otherwise
      // re-registering every few seconds would keep an unconfirmable entry forever.
      const since = replaced && byName.confirmed === 0 ? byName.registered_at : now;
      checkQuotas(this.#db, { ...this.#quotas, maxPublishers: this.#maxPublishers, adminOwner: this.#adminOwner }, writer, replaced);
      const row = this.#returning(
          `INSERT INTO publishers (pub_id, name, host, port_service, port_string, port_ping, state, confirmed, registered_at, last_seen, owner)
           VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?) RETURNING ${COLUMNS}`,
          reg.pub_id, reg.name, reg.host, reg.ports.service, reg.ports.string, reg.ports.ping, since, now, writer.owner,
        );
      if (row === null) throw new StoaError("internal", "INSERT … RETURNING returned no row");
      return { info: this.#info(row), created: !replaced };
    });
    const result = run.immediate();
    for (const info of taken) this.#events.emit("removed", info);
    this.#events.emit("registered", result.info);
    return result;
  }

  async get(pubId: string): Promise<StoredPublisher | null> {
    const row = this.#rowByPubId(pubId);
    return row === null ? null : { info: this.#info(row), generation: row.generation, lastSeen: row.last_seen, owner: row.owner };
  }

  async page(prefix: string, limit: number, after: string | null): Promise<Page> {
    const rows: Row[] = [];
    const from = after ?? "";
    // limit + 1 rows say whether there is a next page.
    if (prefix === "") {
      rows.push(...this.#db.query<Row, [string, number]>(`SELECT ${COLUMNS} FROM publishers WHERE name > ? ORDER BY name LIMIT ?`).all(from, limit + 1));
    } else {
      // `prefix` itself sorts before everything below it; names between the two ("a-x" for "a")
      // are not scanned: two index lookups instead of one range with a filter.
      if (prefix > from) {
        const exact = this.#db.query<Row, [string]>(BY_NAME).get(prefix);
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

  async byName(name: string): Promise<PublisherInfo | null> {
    const row = this.#rowByName(name);
    return row === null ? null : this.#info(row);
  }

  /**
   * Heartbeats are committed together: those that arrive in one turn of the event loop share
   * one transaction (a commit costs more than the update itself), each answered once it is
   * committed, each failing alone (403) without the others.
   */
  heartbeat(pubId: string, writer: Writer = ANYONE): Promise<PublisherInfo | null> {
    return new Promise((resolve, reject) => {
      this.#beats.push({ pubId, writer, resolve, reject });
      if (this.#beats.length === 1) setImmediate(() => this.#commitBeats());
    });
  }

  #commitBeats(): void {
    const batch = this.#beats.splice(0);
    if (batch.length === 0) return;
    const outcomes: ({ ok: true; info: PublisherInfo | null; revived: boolean } | { ok: false; error: unknown })[] = [];
    try {
      this.#db
        .transaction(() => {
          for (const beat of batch) {
            try {
              outcomes.push({ ok: true, ...this.#beat(beat.pubId, beat.writer) });
            } catch (error) {
              outcomes.push({ ok: false, error });
            }
          }
        })
        .immediate();
    } catch (error) {
      for (const beat of batch) beat.reject(error);
      return;
    }
    batch.forEach((beat, i) => {
      const outcome = outcomes[i];
      if (outcome === undefined) return beat.reject(new StoaError("internal", "a heartbeat of the batch has no outcome"));
      if (!outcome.ok) return beat.reject(outcome.error);
      const { info, revived } = outcome;
      if (info !== null && revived) this.#events.emit(info.state === "live" ? "confirmed" : "registered", info);
      beat.resolve(info);
    });
  }

  /** One heartbeat, inside the batch's transaction: the row after it, and whether it was stale. */
  #beat(pubId: string, writer: Writer): { info: PublisherInfo | null; revived: boolean } {
    const before = this.#authorize(pubId, writer);
    if (before === null) return { info: null, revived: false };
    const row = this.#returning(
      `UPDATE publishers SET last_seen = ?,
         state = CASE WHEN state = 'stale' THEN (CASE WHEN confirmed = 1 THEN 'live' ELSE 'pending' END) ELSE state END
       WHERE pub_id = ? RETURNING ${COLUMNS}`,
      this.#now(),
      pubId,
    );
    return { info: row === null ? null : this.#info(row), revived: before.state === "stale" };
  }


  async lease(pubId: string, generation: number, ms: number): Promise<boolean> {
    const key = `${pubId}#${generation}`;
    const now = this.#now();
    const until = this.#leases.get(key);
    if (until !== undefined && until > now) return false;
    if (this.#leases.size > 10_000) for (const [k, t] of this.#leases) if (t <= now) this.#leases.delete(k);
    this.#leases.set(key, now + ms);
    return true;
  }

  async release(pubId: string, generation: number): Promise<void> {
    this.#leases.delete(`${pubId}#${generation}`);
  }

  async markLive(pubId: string, generation: number): Promise<PublisherInfo | null> {
    const row = this.#returning(
      `UPDATE publishers SET state = 'live', confirmed = 1, last_seen = ?
       WHERE pub_id = ? AND generation = ? RETURNING ${COLUMNS}`,
      this.#now(),
      pubId,
      generation,
    );
    if (row === null) return null;
    const info = this.#info(row);
    this.#events.emit("confirmed", info);
    return info;
  }

  async removeIf(pubId: string, generation: number): Promise<boolean> {
    const row = this.#returning(`DELETE FROM publishers WHERE pub_id = ? AND generation = ? RETURNING ${COLUMNS}`, pubId, generation);
    if (row === null) return false;
    this.#events.emit("removed", this.#info(row));
    return true;
  }

  async remove(pubId: string, writer: Writer = ANYONE): Promise<PublisherInfo | null> {
    if (this.#authorize(pubId, writer) === null) return null;
    const row = this.#returning(`DELETE FROM publishers WHERE pub_id = ? RETURNING ${COLUMNS}`, pubId);
    if (row === null) return null;
    const info = this.#info(row);
    this.#events.emit("removed", info);
    return info;
  }

  async sweep(ttlMs: number, deregisterAfterMs: number): Promise<SweepResult> {
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
    const result = run.immediate();
    for (const info of [...result.removed, ...result.expired, ...result.staled]) this.#forget(info);
    for (const info of [...result.removed, ...result.expired]) this.#events.emit("removed", info);
    for (const info of result.staled) this.#events.emit("stale", info);
    return result;
  }

  async counts(): Promise<Record<PublisherState, number>> {
    const out: Record<PublisherState, number> = { pending: 0, live: 0, stale: 0 };
    const rows = this.#db
      .query<{ state: PublisherState; n: number }, []>("SELECT state, count(*) AS n FROM publishers GROUP BY state")
      .all();
    for (const { state, n } of rows) out[state] = n;
    return out;
  }

  onEvent(listener: (event: StoreEvent) => void): () => void {
    return this.#events.add(listener);
  }

  readonly eventsUp = true;

  /** In one process every change is heard: the feed never breaks. */
  onLost(_listener: () => void): () => void {
    return () => {};
  }

  /** Closes the database (a file database is checkpointed and its lock released). */
  async close(): Promise<void> {
    this.#commitBeats(); // heartbeats already asked for are committed, not dropped
    this.#db.close();
  }

  async authorize(pubId: string, writer: Writer): Promise<boolean> {
    return this.#authorize(pubId, writer) !== null;
  }

  /** `authorize`, synchronous (nothing runs between this check and the caller's write): the row, or null. */
  #authorize(pubId: string, writer: Writer): Row | null {
    const row = this.#rowByPubId(pubId);
    if (row === null) return null;
    const may = mayWrite(row.owner, writer);
    if (may === "no") throw notOwner(row.pub_id, row.name);
    // No token owner yet (made under --no-auth, or by schema 1): the admin takes it over.
    if (may === "claim") {
      this.#db.query("UPDATE publishers SET owner = ? WHERE pub_id = ? AND owner NOT LIKE 't:%'").run(writer.owner, pubId);
      this.#forget(row);
    }
    return row;
  }

  /**
   * The one row a write with RETURNING gives, or null. Always `.all()`: a RETURNING statement
   * stepped once (`.get()`) stays active and holds a read snapshot, so no checkpoint can
   * restart the WAL, which then grows by every write (420 MB after 20,000 heartbeats).
   */
  #returning(sql: string, ...args: SQLQueryBindings[]): Row | null {
    const row = this.#db.query<Row, SQLQueryBindings[]>(sql).all(...args)[0] ?? null;
    if (row !== null) this.#forget(row);
    return row;
  }

  /** The API's view of a row, built once per registration and state. */
  #info(row: Row): PublisherInfo {
    return this.#infos.of(row.generation, row.state, () => toInfo(row));
  }

  #rowByPubId(pubId: string): Row | null {
    const hit = this.#byId.get(pubId);
    if (hit !== undefined) return hit;
    const row = this.#db.query<Row, [string]>(BY_PUB_ID).get(pubId);
    if (row !== null) this.#remember(row);
    return row;
  }

  #rowByName(name: string): Row | null {
    const hit = this.#byName.get(name);
    if (hit !== undefined) return hit;
    const row = this.#db.query<Row, [string]>(BY_NAME).get(name);
    if (row !== null) this.#remember(row);
    return row;
  }

  #remember(row: Row): void {
    if (this.#byId.size >= ROW_CACHE_MAX) {
      this.#byId.clear();
      this.#byName.clear();
    }
    this.#byId.set(row.pub_id, row);
    this.#byName.set(row.name, row);
  }

  /** After every write to a row (its pub_id and name never change within it). */
  #forget(row: Pick<Row, "pub_id" | "name">): void {
    this.#byId.delete(row.pub_id);
    this.#byName.delete(row.name);
  }

  /** Names are leaves: nothing registered above `name`, nothing below it. */
  #checkLeaf(name: string): void {
    const ancestors = ancestorsOf(name);
    if (ancestors.length > 0) {
      const parent = this.#db
        .query<{ name: string; pub_id: string }, string[]>(
          `SELECT name, pub_id FROM publishers WHERE name IN (${ancestors.map(() => "?").join(", ")}) ORDER BY name LIMIT 1`,
        )
        .get(...ancestors);
      if (parent !== null) throw ruleErrors.parentIsPublisher(name, parent);
    }
    const [from, to] = belowRange(name);
    const below = this.#db
      .query<{ name: string }, [string, string]>("SELECT name FROM publishers WHERE name >= ? AND name < ? ORDER BY name LIMIT 4")
      .all(from, to)
      .map((r) => r.name);
    if (below.length > 0) throw ruleErrors.nameIsDirectory(name, below);
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

function errorText(err: unknown): string {
  return describeError(err);
}
