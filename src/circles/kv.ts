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
 * Keys and values are strings within `KV_LIMITS`; `list(prefix)` answers the keys that start
 * with `prefix`, sorted by code point (= UTF-8 byte order, SQLite's BINARY collation), at most
 * `KV_LIMITS.listKeys` of them. A circle's store never names another circle's: the circle id is
 * part of the file name or the hash name and nothing else is shared.
 */
import { Database, type Statement } from "bun:sqlite";
import type { RedisClient } from "bun";
import { closeSync, mkdirSync, openSync } from "node:fs";
import { join } from "node:path";
import { StoaError, describeError } from "../core/errors.ts";

export const KV_LIMITS = {
  /** Longest key, UTF-8 bytes: room for a structured name ("user:<pk>:score"), not for data. */
  keyBytes: 512,
  /** Longest value, UTF-8 bytes: a JSON record; 64 KiB keeps one play's writes well under its memory. */
  valueBytes: 64 * 1024,
  /** Most keys one `list` answers: a page a script can hold and print within its limits. */
  listKeys: 1000,
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
  close(): void;
}

/** Throws a `too_large`/`usage` StoaError unless `key` is a non-empty string within the limit. */
export function checkKey(key: string): void {
  if (key.length === 0) throw new StoaError("usage", "db key is empty: use a non-empty string");
  if (Buffer.byteLength(key) > KV_LIMITS.keyBytes) {
    throw new StoaError("too_large", `db key is over ${KV_LIMITS.keyBytes} bytes: use a shorter key`);
  }
}

/** Throws a `too_large` StoaError when `value` is over the limit. */
export function checkValue(value: string): void {
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

export class SqliteKv implements CircleKv {
  readonly path: string;
  readonly label: string;
  #db: Database;
  #get: Statement<{ value: string }, [string]>;
  #set: Statement<unknown, [string, string]>;
  #del: Statement<unknown, [string]>;
  #list: Statement<{ key: string }, [string, number]>;

  /** Opens (creating 0700 `dir` and the 0600 file if needed) the db of `circle`. */
  constructor(dir: string, circle: string) {
    checkCircle(circle);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.path = join(dir, `${circle}.sqlite`);
    this.label = `SQLite ${this.path}`;
    // Create the file with its mode before SQLite does (SQLite would use the umask's).
    closeSync(openSync(this.path, "a", 0o600));
    this.#db = new Database(this.path, { strict: true });
    this.#db.run("PRAGMA journal_mode = WAL");
    // WAL with synchronous=NORMAL: a commit survives a crash of the process, not of the machine; no fsync per play.
    this.#db.run("PRAGMA synchronous = NORMAL");
    this.#db.run(`PRAGMA busy_timeout = ${SQLITE_BUSY_TIMEOUT_MS}`);
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
    this.#set.run(key, value);
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
