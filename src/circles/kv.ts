/**
 * A circle's db: the key-value store a play reaches as `db.get/set/del/list`.
 *
 * Two backends behind one interface, `CircleKv`:
 * - `SqliteKv` (embedded): one SQLite file per circle, `<dir>/<circle>.sqlite`, WAL, created 0600
 *   (SQLite gives its -wal and -shm files the database file's mode), table
 *   `kv(key TEXT PRIMARY KEY, value TEXT)`. Synchronous: bun:sqlite answers at once.
 * - `RedisKv` (distributed): one hash per circle, `circle_db:<circle>`, through Bun's `RedisClient`
 *   (owned by the caller, shared by every circle of a process). Asynchronous.
 *
 * Keys (non-empty) and values are strings without NUL, within `KV_LIMITS`; `list(prefix)` answers
 * the keys that start with `prefix`, sorted by code point (= UTF-8 byte order, SQLite's BINARY
 * collation), at most `KV_LIMITS.listKeys` of them. A SQLite file is capped at
 * `KV_LIMITS.circleBytes` (a write past it is a StoaError "too_large": the db is full, delete
 * keys); a Redis hash has no quota of its own (Redis's `maxmemory` is the bound). A circle's store
 * never names another circle's: the circle id is part of the file name or the hash name and
 * nothing else is shared.
 */
import { Database, type Statement } from "bun:sqlite";
import type { RedisClient } from "bun";
import { closeSync, mkdirSync, openSync } from "node:fs";
import { join } from "node:path";
import { StoaError, describeError, errnoCode } from "../core/errors.ts";

export const KV_LIMITS = {
  /** Longest key, UTF-8 bytes: room for a structured name ("user:<pk>:score"), not for data. */
  keyBytes: 512,
  /** Longest value, UTF-8 bytes: a JSON record; 64 KiB keeps one play's writes well under its memory. */
  valueBytes: 64 * 1024,
  /** Most keys one `list` answers: a page a script can hold and print within its limits. */
  listKeys: 1000,
  /**
   * Bytes of keys and values one play may write (its overlay, held by the host until the play
   * ends): without it a `db.set` loop grows the worker's own heap by ~300 MB/s until the timeout.
   */
  playWriteBytes: 8 * 1024 * 1024,
  /**
   * A circle's SQLite file, at most (PRAGMA max_page_count): a circle cannot fill the state
   * dir's disk. A play whose writes would go over fails and writes nothing.
   */
  circleBytes: 256 * 1024 * 1024,
} as const;

/** A value now (SQLite) or later (Redis): the sandbox uses the first kind without waiting. */
type MaybePromise<T> = T | Promise<T>;

export interface CircleKv {
  /** What the store is, for messages: "SQLite /path/…", "Redis hash circle_db:…". */
  readonly label: string;
  get(key: string): MaybePromise<string | null>;
  set(key: string, value: string): MaybePromise<void>;
  /** True when the key existed. */
  del(key: string): MaybePromise<boolean>;
  /** Keys starting with `prefix` ("" = all), sorted, at most `KV_LIMITS.listKeys`. */
  list(prefix: string): MaybePromise<string[]>;
  /** Applies a play's writes (null = delete) all or none, where the store can (SQLite: one transaction). */
  applyAll?(writes: ReadonlyMap<string, string | null>): void;
  close(): void;
}

/** Throws a `too_large`/`usage` StoaError unless `key` is a non-empty string within the limit, without NUL. */
export function checkKey(key: string): void {
  if (key.length === 0) throw new StoaError("usage", "db key is empty: use a non-empty string");
  // SQLite's length() and substr(), which list() uses, stop at a NUL: "a\0b" would list as "a".
  if (key.includes("\0")) throw new StoaError("usage", "db key contains NUL (\\u0000): use another separator");
  if (Buffer.byteLength(key) > KV_LIMITS.keyBytes) {
    throw new StoaError("too_large", `db key is over ${KV_LIMITS.keyBytes} bytes: use a shorter key`);
  }
}

/** Throws a `too_large` StoaError when `value` is over the limit, a `usage` one when it holds a NUL. */
export function checkValue(value: string): void {
  // QuickJS's strings cross to and from the host as C strings: a value would come back cut at its NUL.
  if (value.includes("\0")) throw new StoaError("usage", "db value contains NUL (\\u0000): encode it first (JSON.stringify escapes it)");
  if (Buffer.byteLength(value) > KV_LIMITS.valueBytes) {
    throw new StoaError("too_large", `db value is over ${KV_LIMITS.valueBytes} bytes: split it over several keys`);
  }
}

/** Circle ids become file and hash names: only these characters, so no path can be formed. */
const CIRCLE_ID = /^[0-9A-Za-z_-]{1,256}$/;

function checkCircle(circle: string): void {
  if (!CIRCLE_ID.test(circle)) throw new StoaError("usage", `circle id ${JSON.stringify(circle)} is not a hex public key`);
}

/** Code point order, the order of UTF-8 bytes (JavaScript's default sort compares UTF-16 units). */
function byCodePoint(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** SQLite waits this long for another connection's write lock before failing (a second worker of one circle). */
const SQLITE_BUSY_TIMEOUT_MS = 5000;
/** SQLite's default page size, should the file not say its own. */
const SQLITE_DEFAULT_PAGE_BYTES = 4096;

export class SqliteKv implements CircleKv {
  readonly path: string;
  readonly label: string;
  #db: Database;
  #get: Statement<{ value: string }, [string]>;
  #set: Statement<unknown, [string, string]>;
  #del: Statement<unknown, [string]>;
  #list: Statement<{ key: string }, [string, number]>;
  readonly #quotaBytes: number;

  /**
   * Opens (creating 0700 `dir` and the 0600 file if needed) the db of `circle`, its file capped
   * at `quotaBytes` (default `KV_LIMITS.circleBytes`).
   */
  constructor(dir: string, circle: string, quotaBytes: number = KV_LIMITS.circleBytes) {
    checkCircle(circle);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.path = join(dir, `${circle}.sqlite`);
    this.label = `SQLite ${this.path}`;
    // Create the file with its mode before SQLite does (SQLite would use the umask's).
    closeSync(openSync(this.path, "a", 0o600));
    this.#db = new Database(this.path, { strict: true });
    // First: a pool's threads open one file at once, and the switch to WAL and the schema take its lock.
    this.#db.run(`PRAGMA busy_timeout = ${SQLITE_BUSY_TIMEOUT_MS}`);
    this.#db.run("PRAGMA journal_mode = WAL");
    // WAL with synchronous=NORMAL: a commit survives a crash of the process, not of the machine; no fsync per play.
    this.#db.run("PRAGMA synchronous = NORMAL");
    this.#quotaBytes = quotaBytes;
    // The file's own page size (4096 unless it was made otherwise): max_page_count counts pages.
    const pageBytes = this.#db.query<{ page_size: number }, []>("PRAGMA page_size").get()?.page_size ?? SQLITE_DEFAULT_PAGE_BYTES;
    this.#db.run(`PRAGMA max_page_count = ${Math.max(1, Math.floor(quotaBytes / pageBytes))}`);
    this.#db.run("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)");
    this.#get = this.#db.query("SELECT value FROM kv WHERE key = ?");
    this.#set = this.#db.query("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value");
    this.#del = this.#db.query("DELETE FROM kv WHERE key = ?");
    // The range start uses the primary key's index; substr() keeps exactly the keys with the prefix.
    this.#list = this.#db.query("SELECT key FROM kv WHERE key >= ?1 AND substr(key, 1, length(?1)) = ?1 ORDER BY key LIMIT ?2");
  }

  get(key: string): string | null {
    checkKey(key);
    return this.#get.get(key)?.value ?? null;
  }

  set(key: string, value: string): void {
    checkKey(key);
    checkValue(value);
    this.#full(() => this.#set.run(key, value));
  }

  applyAll(writes: ReadonlyMap<string, string | null>): void {
    for (const [key, value] of writes) {
      checkKey(key);
      if (value !== null) checkValue(value);
    }
    this.#full(() =>
      this.#db.transaction(() => {
        for (const [key, value] of writes) value === null ? this.#del.run(key) : this.#set.run(key, value);
      })(),
    );
  }

  /** Runs a write; SQLITE_FULL (the quota's max_page_count, or the disk) becomes a StoaError "too_large" saying what to do. */
  #full(write: () => unknown): void {
    try {
      write();
    } catch (err) {
      if (errnoCode(err) !== "SQLITE_FULL") throw err;
      throw new StoaError(
        "too_large",
        `the circle's db is full (its quota is ${this.#quotaBytes} bytes, or the disk is full): delete keys before writing more`,
        { cause: err },
      );
    }
  }

  del(key: string): boolean {
    checkKey(key);
    return this.#del.run(key).changes > 0;
  }

  list(prefix: string): string[] {
    return this.#list.all(prefix, KV_LIMITS.listKeys).map((row) => row.key);
  }

  close(): void {
    this.#db.close();
  }
}

/** Keys HSCAN asks for per round trip while listing. */
const HSCAN_COUNT = "1000";

/** `*`, `?`, `[`, `]` and `\` are glob syntax in HSCAN MATCH; a prefix matches them literally. */
function globPrefix(prefix: string): string {
  return `${prefix.replace(/[*?[\]\\]/g, "\\$&")}*`;
}

export class RedisKv implements CircleKv {
  readonly hash: string;
  readonly label: string;
  #redis: RedisClient;

  /** The db of `circle` in the hash `circle_db:<circle>`; `redis` stays the caller's to close. */
  constructor(redis: RedisClient, circle: string) {
    checkCircle(circle);
    this.#redis = redis;
    this.hash = `circle_db:${circle}`;
    this.label = `Redis hash ${this.hash}`;
  }

  async #send<T>(command: string, args: string[]): Promise<T> {
    try {
      return (await this.#redis.send(command, args)) as T;
    } catch (err) {
      throw new StoaError("closed", `Redis ${command} on ${this.hash} failed: ${describeError(err)} — check that redis-server is up`, { cause: err });
    }
  }

  async get(key: string): Promise<string | null> {
    checkKey(key);
    return await this.#send<string | null>("HGET", [this.hash, key]);
  }

  async set(key: string, value: string): Promise<void> {
    checkKey(key);
    checkValue(value);
    await this.#send("HSET", [this.hash, key, value]);
  }

  async del(key: string): Promise<boolean> {
    checkKey(key);
    return (await this.#send<number>("HDEL", [this.hash, key])) > 0;
  }

  /** Scans the whole hash (Redis keeps no order), then sorts and caps. */
  async list(prefix: string): Promise<string[]> {
    const match = globPrefix(prefix);
    const keys = new Set<string>();
    let cursor = "0";
    do {
      const [next, flat] = await this.#send<[string, string[]]>("HSCAN", [this.hash, cursor, "MATCH", match, "COUNT", HSCAN_COUNT]);
      for (let i = 0; i < flat.length; i += 2) {
        const key = flat[i];
        if (key !== undefined && key.startsWith(prefix)) keys.add(key);
      }
      cursor = next;
    } while (cursor !== "0");
    return [...keys].sort(byCodePoint).slice(0, KV_LIMITS.listKeys);
  }

  /** Nothing to release: the client is the caller's. */
  close(): void {}
}
